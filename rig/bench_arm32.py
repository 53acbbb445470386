#!/usr/bin/env python3
"""Boot benchmark of moat's selftest image on arm32 beside amd64 (printed,
never asserted).

Boots the arm32 rig (and, unless --no-amd64, the amd64 rig) and runs the
selftest image there at decreasing `memory=` sizes with
`selftest.idle=0`, then prints one table:
  - the image's size on disk (arm32: the zImage; amd64: the ELF) and in
    memory (what the guest reports: image plus .bss, page-rounded);
  - guest-side time from the first instruction to the service's start
    (`selftest: bench: entry-to-ready-us=`; arm32 reads the generic
    timer, amd64 the TSC);
  - time from `xl create` in dom0 to the guest's first console line;
  - the smallest `memory=` (MiB) at which every check passes.
Everything runs under TCG emulation, each architecture in its own QEMU:
compare the shape, not absolute figures.

usage: python3 rig/bench_arm32.py [--arm32-image PATH] [--amd64-image PATH]
                                  [--mem 32,16,8,4] [--no-amd64]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xenrig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def dom0_script(kinds: list, mems: list) -> str:
    """xlcase.sh runs of every (kind, memory) pair."""
    out = ["set -u"]
    for kind in kinds:
        for mem in mems:
            name = f"bench-{kind}-{mem}"
            out.append(
                f"sh /guest/xlcase.sh {name} /guest/selftest-{kind}.cfg 90 "
                f"memory={mem} 'extra=\"selftest.idle=0\"'"
            )
            out.append(f"xl destroy {name} 2>/dev/null; true")
    return "\n".join(out) + "\n"


def parse_case(lines: list, name: str) -> dict:
    """What one run printed: pass, entry-to-ready (us), image bytes in
    memory, seconds from `xl create` to the first guest line."""
    out: dict = {"ok": False, "ready_us": None, "mem_bytes": None, "first_s": None}
    start = next((i for i, (_, l) in enumerate(lines) if l.strip() == f"RIG create {name}"), None)
    if start is None:
        return out
    t0 = lines[start][0]
    for t, l in lines[start + 1:]:
        if l.startswith("RIG end") or l.startswith("RIG create"):
            break
        if out["first_s"] is None and (l.startswith("moat") or "INFO" in l or l.startswith("selftest:")):
            out["first_s"] = t - t0
        m = re.search(r"selftest: summary: (\d+) passed, (\d+) failed", l)
        if m:
            out["ok"] = m.group(2) == "0" and int(m.group(1)) > 0
        m = re.search(r"entry-to-ready-us=(\d+) image-memory-bytes=(\d+)", l)
        if m:
            out["ready_us"], out["mem_bytes"] = int(m.group(1)), int(m.group(2))
    return out


def run_arch(arch: str, image: Path, kinds: list, mems: list, timeout: float) -> list:
    """Rows (label, disk bytes, results per memory size) of one rig boot."""
    guests = [(image, "selftest"), (REPO / "rig/dom0/xlcase.sh", "xlcase.sh")]
    guests += [(REPO / f"configs/selftest-{k}.cfg", f"selftest-{k}.cfg") for k in kinds]
    result = xenrig.run_script(dom0_script(kinds, mems), guests, arch=arch, timeout=timeout,
                               echo=False)
    if result.rc != 0:
        print(f"bench: the {arch} rig run ended with rc {result.rc}", file=sys.stderr)
    dom0 = next((t for t, l in result.lines if l.startswith("RIG dom0 ready")), None)
    rows = []
    for kind in kinds:
        runs = {mem: parse_case(result.lines, f"bench-{kind}-{mem}") for mem in mems}
        rows.append((f"{arch}/{kind}", image.stat().st_size, runs, dom0))
    return rows


def fmt(v: Optional[float], unit: str) -> str:
    """A figure, or `-` when the run did not report it."""
    return "-" if v is None else f"{v:.0f} {unit}" if unit == "us" else f"{v:.2f} {unit}"


def main(argv=None) -> int:
    """Runs the benchmark; see the module doc."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm32-image", type=Path, default=REPO / "target/images/arm32/selftest")
    ap.add_argument("--amd64-image", type=Path, default=REPO / "target/images/amd64/selftest")
    ap.add_argument("--mem", default="32,16,8,4", help="memory= sizes in MiB, largest first")
    ap.add_argument("--no-amd64", action="store_true", help="only the arm32 rig")
    ap.add_argument("--timeout", type=float, default=1200)
    args = ap.parse_args(argv)
    mems = [int(m) for m in args.mem.split(",") if m]
    plan = [("arm32", args.arm32_image, ["arm32"])]
    if not args.no_amd64:
        plan.append(("amd64", args.amd64_image, ["pv", "pvh"]))
    for _, image, _ in plan:
        if not image.is_file():
            print(f"bench: no image at {image}; run `make images`", file=sys.stderr)
            return 2

    rows = []
    for arch, image, kinds in plan:
        rows += run_arch(arch, image, kinds, mems, args.timeout)

    big = mems[0]
    print("bench: selftest image, arm32 beside amd64 (QEMU TCG; each arch in its own QEMU)")
    print(f"  {'guest':<11} {'disk':>9} {'in memory':>10} {'entry->ready':>13} "
          f"{'xl create->1st line':>20} {'smallest memory=':>17} {'dom0 ready':>11}")
    for label, disk, runs, dom0 in rows:
        r = runs[big]
        passing = [m for m in mems if runs[m]["ok"]]
        mem_b = r["mem_bytes"]
        print(f"  {label:<11} {disk:>9} {mem_b if mem_b is not None else '-':>10} "
              f"{fmt(r['ready_us'], 'us'):>13} {fmt(r['first_s'], 's'):>20} "
              f"{(str(min(passing)) + ' MiB') if passing else 'none':>17} {fmt(dom0, 's'):>11}")
    print(f"  (entry->ready and xl create->1st line at memory={big} MiB; "
          f"disk: arm32 zImage, amd64 ELF)")
    for label, _, runs, _ in rows:
        per = ", ".join(f"{m}Mi {'pass' if runs[m]['ok'] else 'fail'} {fmt(runs[m]['ready_us'], 'us')}"
                        for m in mems)
        print(f"  {label}: {per}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
