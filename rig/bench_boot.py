#!/usr/bin/env python3
"""Boot benchmark of moat's selftest image on the real-Xen rig (printed,
never asserted).

One rig boot runs the selftest image, as PV and as PVH, at decreasing
`memory=` sizes (with `selftest.idle=0`), and prints per guest type:
  - the image's size on disk and in memory (ELF PT_LOAD sizes);
  - guest-side time from the first instruction to the service's start
    (`selftest: bench: entry-to-ready-us=`, from the TSC and the PV clock's
    TSC rate);
  - time from the `xl create` command in dom0 to the guest's first console
    line (host-side timestamps of the serial lines);
  - the smallest `memory=` (MiB) at which every check passes.
Everything runs under TCG emulation: compare figures within one run.

usage: python3 rig/bench_boot.py [--image PATH] [--mem 32,16,8,6,4]
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xenrig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def load_size(path: Path) -> int:
    """Sum of the PT_LOAD segments' memory sizes of an ELF64 image."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise SystemExit(f"{path}: not an ELF64 file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    total = 0
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", data, phoff + i * phentsize)
        if p_type == 1:
            total += struct.unpack_from("<Q", data, phoff + i * phentsize + 0x28)[0]
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, default=REPO / "target/images/amd64/selftest")
    ap.add_argument("--mem", default="32,16,8,6,4,3", help="memory= sizes in MiB, largest first")
    ap.add_argument("--timeout", type=float, default=1500)
    args = ap.parse_args()
    mems = [int(m) for m in args.mem.split(",")]
    if not args.image.is_file():
        print(f"bench: no image at {args.image}; run `make images`", file=sys.stderr)
        return 2

    cases = []
    script = ["set -u"]
    for kind in ("pv", "pvh"):
        for mem in mems:
            name = f"bench-{kind}-{mem}"
            cases.append((kind, mem, name))
            script.append(
                f"sh /guest/xlcase.sh {name} /guest/selftest-{kind}.cfg 90 "
                f"memory={mem} 'extra=\"selftest.idle=0\"'"
            )
            script.append(f"xl destroy {name} 2>/dev/null; true")
    guests = [
        (args.image, "selftest"),
        (REPO / "configs/selftest-pv.cfg", "selftest-pv.cfg"),
        (REPO / "configs/selftest-pvh.cfg", "selftest-pvh.cfg"),
        (REPO / "rig/dom0/xlcase.sh", "xlcase.sh"),
    ]
    result = xenrig.run_script("\n".join(script) + "\n", guests, timeout=args.timeout, echo=False)
    lines = result.lines

    print(f"bench: image {args.image.name}: {args.image.stat().st_size} bytes on disk, "
          f"{load_size(args.image)} bytes loaded")
    for kind in ("pv", "pvh"):
        smallest = None
        print(f"bench: {kind.upper()}")
        print(f"  {'memory':>7} {'result':>12} {'entry-to-ready':>15} {'xl create -> 1st line':>22}")
        for k, mem, name in cases:
            if k != kind:
                continue
            created = next((t for t, l in lines if l.strip() == f"RIG create {name}"), None)
            idx = next((i for i, (t, l) in enumerate(lines) if l.strip() == f"RIG create {name}"), None)
            ok = False
            ready = "-"
            first = "-"
            if idx is not None:
                for t, l in lines[idx + 1:]:
                    if l.startswith("RIG end"):
                        break
                    if first == "-" and ("INFO" in l or l.startswith("selftest:")):
                        first = f"{t - created:.2f} s"
                    m = re.search(r"selftest: summary: (\d+) passed, (\d+) failed", l)
                    if m:
                        ok = m.group(2) == "0" and int(m.group(1)) > 0
                    m = re.search(r"entry-to-ready-us=(\d+)", l)
                    if m:
                        ready = f"{int(m.group(1))} us"
            if ok:
                smallest = mem
            print(f"  {mem:>5}Mi {'pass' if ok else 'fail':>12} {ready:>15} {first:>22}")
        print(f"bench: {kind.upper()} smallest memory= that passes: "
              f"{smallest if smallest is not None else 'none'} MiB")
    return 0 if result.rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
