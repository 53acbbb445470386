#!/usr/bin/env python3
"""Stress test of the real-Xen rig's dom0 userland, with Xen's lazy or
eager FPU switching of PV vCPUs (docs/testing.md, "dom0 userland
corruption: root cause").

Each boot runs rig/dom0/stress.sh in dom0 for --seconds: `xl create` /
`xl destroy` cycles of the selftest image plus loops whose results are
checked against answers computed here on the host (busybox awk sums,
sha256/md5/crc32 of a fixed file, xenstore write/read round trips, `xl
list`) and rig/dom0/fpucheck.c (built here with `gcc -static`), which
checks that SSE registers hold what a process loaded into them. It counts
every fault: a wrong result, a command killed by a signal, an xl abort, a
dom0 kernel "segfault"/"general protection" line, a loop whose shell died,
an fpucheck run that read back registers it did not load.

usage: python3 rig/stress.py [--boots N] [--mode lazy|eager|both]
                             [--seconds S] [--parallel 1|2]
                             [--until HH:MM] [--logdir DIR] [--guest selftest|none]
                             [--cpu MODEL] [--pin] [--loops "awk sum ..."]
                             [--image target/images/amd64/selftest]

--boots N is per mode. --mode both interleaves the modes; with --parallel 2
a lazy and an eager boot run at the same time, so both see the same host
load. A mode is set with Xen's command line (MOAT_XEN_CMDLINE_EXTRA, read by
rig/xenrig.py): lazy = `spec-ctrl=no-eager-fpu` (Xen's default on the
AMD-looking `-cpu max`), eager = `spec-ctrl=eager-fpu`. Each boot's mode is
taken from Xen's own boot log (`Support for PV VMs: ... EAGER_FPU`), never
assumed; a boot whose log disagrees with the request is marked.
--until stops starting new boots when the next round would end after
HH:MM (local time). --cpu sets QEMU's CPU model (MOAT_QEMU_CPU, read by
rig/xenrig.py; default max), e.g. `max,-xsave`. --pin pins both dom0
vCPUs to one physical CPU (Xen then switches between them all the time);
--loops picks stress.sh's loops (default all: create awk sum xs xllist fpu).

Every boot prints one summary line; at the end a table and totals per
mode. Serial logs of every boot are kept in --logdir. Exit status: 0 when
every requested boot ran (faults or not: this is an experiment), 1 when a
boot's mode could not be verified or the rig failed, 2 on bad usage.

Only the Python standard library is used.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xenrig  # noqa: E402  (the rig driver beside this file)

REPO = Path(__file__).resolve().parent.parent
RIG = REPO / "rig"

#: Xen command-line words of each mode (Xen takes the last of repeated
#: options; xen/arch/x86/spec_ctrl.c parses `eager-fpu` with
#: parse_boolean, so `no-eager-fpu` is false).
MODE_WORDS = {"lazy": "spec-ctrl=no-eager-fpu", "eager": "spec-ctrl=eager-fpu"}

#: Xen's spec-ctrl summary line, which names EAGER_FPU when it is on.
PV_SUPPORT_LINE = re.compile(r"\(XEN\)\s+Support for PV VMs:(.*)$")
XEN_CMDLINE_LINE = re.compile(r"\(XEN\)\s+Command line:\s*(.*)$")
RESULT_LINE = re.compile(r"STRESS-RESULT (.*)$")
DOM0_READY = re.compile(r"RIG dom0 ready")

FAULT_KINDS = ["wrong", "signal", "xlabort", "dmesg", "loopdied", "fpu"]
LOOPS = ["create", "awk", "sum", "xs", "xllist", "fpu"]
#: Lines that say which CPU Xen saw and how dom0's kernel switches FPU state.
CPU_VENDOR_LINE = re.compile(r"\(XEN\) CPU Vendor: (.*)$")
DOM0_FPU_LINE = re.compile(r"x86/fpu: (Enabled xstate features.*|x87 FPU will use .*)$")

#: The fixed file whose checksums dom0 computes again and again.
BLOB_SIZE = 1 << 20
BLOB_SEED = 18


def make_inputs(workdir: Path) -> list:
    """Writes /guest/blob and /guest/expected.env (the answers dom0's loops
    check against) into workdir and returns their (host path, name)."""
    blob = random.Random(BLOB_SEED).randbytes(BLOB_SIZE)
    (workdir / "blob").write_bytes(blob)
    awk_int = sum(i * i for i in range(1, 20001))
    t = 0.0
    for i in range(1, 20001):
        t += 1 / i  # the same order of IEEE double additions as dom0's awk
    env = (
        f"AWK_INT={awk_int}\n"
        f"AWK_FLOAT={t:.17g}\n"
        f"SHA256={hashlib.sha256(blob).hexdigest()}\n"
        f"MD5={hashlib.md5(blob).hexdigest()}\n"
        f"CRC32={zlib.crc32(blob):08x}\n"
    )
    (workdir / "expected.env").write_text(env)
    return [(workdir / "blob", "blob"), (workdir / "expected.env", "expected.env")]


def parse_boot(lines: list) -> dict:
    """What one boot's serial lines say: the FPU mode Xen reports, its
    command line, dom0-ready time, the STRESS-RESULT counts and the fault
    lines."""
    out: dict = {"mode_seen": "unknown", "xen_pv_line": None, "xen_cmdline": None,
                 "cpu_vendor": None, "dom0_fpu": None,
                 "dom0_ready_s": None, "result": None, "faults": [], "code": []}
    for t, line in lines:
        m = CPU_VENDOR_LINE.search(line)
        if m and out["cpu_vendor"] is None:
            out["cpu_vendor"] = m.group(1).strip()
        m = DOM0_FPU_LINE.search(line)
        if m and out["dom0_fpu"] is None:
            out["dom0_fpu"] = m.group(1).strip()
        m = PV_SUPPORT_LINE.search(line)
        if m and out["xen_pv_line"] is None:
            out["xen_pv_line"] = m.group(1).strip()
            out["mode_seen"] = "eager" if "EAGER_FPU" in m.group(1).split() else "lazy"
        m = XEN_CMDLINE_LINE.search(line)
        if m and out["xen_cmdline"] is None:
            out["xen_cmdline"] = m.group(1).strip()
        if out["dom0_ready_s"] is None and DOM0_READY.search(line):
            out["dom0_ready_s"] = round(t, 1)
        if "STRESS-FAULT " in line:
            out["faults"].append(line.split("STRESS-FAULT ", 1)[1])
        if "STRESS-CODE " in line:
            out["code"].append(line.split("STRESS-CODE ", 1)[1])
        m = RESULT_LINE.search(line)
        if m:
            out["result"] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}
    return out


def build_fpucheck(out_dir: Path) -> tuple:
    """Builds rig/dom0/fpucheck.c statically; (path, "") or (None, why)."""
    gcc = shutil.which("gcc")
    if not gcc:
        return None, "no gcc on the host"
    exe = out_dir / "fpucheck"
    p = subprocess.run([gcc, "-static", "-O2", "-Wall", "-o", str(exe), str(RIG / "dom0" / "fpucheck.c")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        return None, f"gcc failed: {p.stdout[-300:]}"
    return exe, ""


def dom0_script(seconds: int, guest: str, pin: bool, loops: str) -> str:
    """The dom0 command line that runs stress.sh."""
    env = []
    if guest == "selftest":
        env.append("STRESS_GUEST=selftest")
    if pin:
        env.append("STRESS_PIN=1")
    if loops:
        env.append(f"STRESS_LOOPS='{loops}'")
    return " ".join(env + ["sh", "/guest/stress.sh", str(seconds)]) + "\n"


DEFAULT_IMAGE = REPO / "target" / "images" / "amd64" / "selftest"


def one_boot(mode: str, seconds: int, log: Path, guest: str, cpu: str = "", pin: bool = False,
             loops: str = "", image: Path = DEFAULT_IMAGE) -> dict:
    """Runs one stressed boot in this process (Xen's command line and QEMU's
    CPU come from the environment, so each boot is its own process) and
    returns its record."""
    extra = os.environ.get(xenrig.XEN_CMDLINE_EXTRA_ENV, "")
    os.environ[xenrig.XEN_CMDLINE_EXTRA_ENV] = f"{extra} {MODE_WORDS[mode]}".strip()
    if cpu:
        os.environ[xenrig.QEMU_CPU_ENV] = cpu
    started = time.time()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="moat-stress-") as tmp:
        guests = make_inputs(Path(tmp))
        guests.append((RIG / "dom0" / "stress.sh", "stress.sh"))
        exe, why = build_fpucheck(Path(tmp))
        if exe:
            guests.append((exe, "fpucheck"))
        else:
            print(f"stress: fpucheck not built ({why}); its loop is skipped", flush=True)
        if guest == "selftest":
            guests.append((image, "selftest"))
            guests.append((REPO / "configs" / "selftest-pv.cfg", "selftest-pv.cfg"))
        script = dom0_script(seconds, guest, pin, loops)
        r = xenrig.run_script(script, guests=guests, timeout=seconds + 420, log=log, echo=False)
    rec = parse_boot(r.lines)
    rec.update({
        "mode": mode, "cpu": os.environ.get(xenrig.QEMU_CPU_ENV, "max"), "pin": pin,
        "rc": r.rc, "timed_out": r.timed_out,
        "start": datetime.datetime.fromtimestamp(started).strftime("%H:%M:%S"),
        "wall_s": round(time.time() - started, 1),
        "load_start": round(load0[0], 2), "load_end": round(os.getloadavg()[0], 2),
        "log": str(log),
    })
    return rec


def classify(rec: dict) -> str:
    """A boot's verdict: FAULT (any fault counted, or the dom0 script died),
    clean, or RIG (the rig failed before the stress could say anything)."""
    res = rec.get("result")
    if res is None:
        if rec["rc"] in (xenrig.RC_RIG_FAILED,) and rec.get("dom0_ready_s") is None:
            return "RIG"
        return "FAULT"  # the script or dom0's shell died, or it hung
    if any(res.get(k, 0) for k in FAULT_KINDS):
        return "FAULT"
    return "clean"


def summary_line(n: int, rec: dict) -> str:
    res = rec.get("result") or {}
    kinds = " ".join(f"{k}={res.get(k, '-')}" for k in FAULT_KINDS + ["timeout"])
    mode = rec["mode"] if rec["mode_seen"] == rec["mode"] else f"{rec['mode']}(xen says {rec['mode_seen']})"
    return (f"STRESS-BOOT {n:3d} mode={mode} verdict={classify(rec)} {kinds} "
            f"iters={res.get('iters', '-')} nonfpu={res.get('nonfpu', '-')} "
            f"fpubad={res.get('fpubad', '-')}/{res.get('fpurounds', '-')} "
            f"rc={rec['rc']} ready={rec['dom0_ready_s']}s "
            f"wall={rec['wall_s']}s load={rec['load_start']}->{rec['load_end']} log={rec['log']}")


def run_child(mode: str, seconds: int, log: Path, guest: str, cpu: str = "", pin: bool = False,
              loops: str = "", image: Path = DEFAULT_IMAGE) -> dict:
    """Runs one boot in a child process (its own Xen command line) and
    returns its record; kills it if it overruns."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one-boot", mode,
           "--seconds", str(seconds), "--log-file", str(log), "--guest", guest,
           "--image", str(image)]
    if cpu:
        cmd += ["--cpu", cpu]
    if pin:
        cmd += ["--pin"]
    if loops:
        cmd += ["--loops", loops]
    started = time.time()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=seconds + 480, text=True)
        out = p.stdout
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    for line in reversed(out.splitlines()):
        if line.startswith("STRESS-BOOT-JSON "):
            return json.loads(line[len("STRESS-BOOT-JSON "):])
    return {"mode": mode, "mode_seen": "unknown", "cpu": cpu or "max", "pin": pin,
            "cpu_vendor": None, "dom0_fpu": None, "rc": -1, "timed_out": True, "result": None,
            "dom0_ready_s": None, "faults": [f"stress.py child failed: {out[-300:]!r}"], "code": [],
            "start": datetime.datetime.fromtimestamp(started).strftime("%H:%M:%S"),
            "wall_s": round(time.time() - started, 1), "load_start": -1, "load_end": -1,
            "log": str(log), "xen_pv_line": None, "xen_cmdline": None}


def plan(mode: str, boots: int, parallel: int) -> list:
    """Rounds of boots: each round is a list of modes run at the same time.
    With both modes and one at a time, the order alternates lazy-eager,
    eager-lazy, ... so neither mode always runs first."""
    if mode != "both":
        return [[mode] * min(parallel, boots - i) for i in range(0, boots, parallel)]
    if parallel >= 2:
        return [["lazy", "eager"] for _ in range(boots)]
    rounds = []
    for i in range(boots):
        pair = ["lazy", "eager"] if i % 2 == 0 else ["eager", "lazy"]
        rounds.extend([[pair[0]], [pair[1]]])
    return rounds


def print_table(recs: list) -> None:
    print()
    hdr = (f"{'#':>3} {'start':8} {'mode':5} {'xen':5} {'verdict':7} " +
           " ".join(f"{k:>8}" for k in FAULT_KINDS + ["timeout"]) +
           f" {'iters':>6} {'nonfpu':>6} {'fpubad':>7} {'fpurounds':>10} {'ready':>6} {'wall':>6} {'load':>11}")
    print(hdr)
    for n, rec in enumerate(recs, 1):
        res = rec.get("result") or {}
        print(f"{n:3d} {rec['start']:8} {rec['mode']:5} {rec['mode_seen'][:5]:5} {classify(rec):7} " +
              " ".join(f"{res.get(k, '-'):>8}" for k in FAULT_KINDS + ["timeout"]) +
              f" {res.get('iters', '-'):>6} {res.get('nonfpu', '-'):>6} {res.get('fpubad', '-'):>7}"
              f" {res.get('fpurounds', '-'):>10}"
              f" {str(rec['dom0_ready_s']):>6} {rec['wall_s']:>6}"
              f" {rec['load_start']:>5}-{rec['load_end']:<5}")
    print()
    print("totals per mode (mode as Xen's boot log reports it):")
    for mode in ("lazy", "eager", "unknown"):
        rs = [r for r in recs if r["mode_seen"] == mode]
        if not rs:
            continue
        faulted = sum(1 for r in rs if classify(r) == "FAULT")
        rig = sum(1 for r in rs if classify(r) == "RIG")
        # Boots with a fault outside fpucheck (or whose script died).
        userland = sum(1 for r in rs if classify(r) == "FAULT" and
                       (r.get("result") is None or r["result"].get("nonfpu", 1) > 0))
        fpu = sum(1 for r in rs if (r.get("result") or {}).get("fpubad", 0) > 0)
        sums = {k: sum((r.get("result") or {}).get(k, 0) for r in rs)
                for k in FAULT_KINDS + ["timeout", "iters", "nonfpu", "fpubad", "fpurounds"]}
        loads = [r["load_start"] for r in rs if r["load_start"] >= 0] + \
                [r["load_end"] for r in rs if r["load_end"] >= 0]
        load = f"{min(loads):.2f}-{max(loads):.2f}" if loads else "-"
        print(f"  {mode:7} boots={len(rs)} faulted={faulted} faulted-outside-fpucheck={userland} "
              f"fpucheck-bad-boots={fpu} rig-failed={rig} " +
              " ".join(f"{k}={v}" for k, v in sums.items()) + f" host-load-1m={load}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Stress dom0 userland with lazy/eager FPU switching.")
    ap.add_argument("--boots", type=int, default=1, help="boots per mode")
    ap.add_argument("--mode", choices=["lazy", "eager", "both"], default="both")
    ap.add_argument("--seconds", type=int, default=60, help="seconds of stress per boot")
    ap.add_argument("--parallel", type=int, choices=[1, 2], default=1)
    ap.add_argument("--until", help="HH:MM: start no round that would end after this")
    ap.add_argument("--logdir", type=Path, help="serial logs (default /tmp/moat-stress-TIME)")
    ap.add_argument("--guest", choices=["selftest", "none"], default="selftest",
                    help="guest of the xl create/destroy loop")
    ap.add_argument("--json", type=Path, help="also write every boot's record here (JSON lines)")
    ap.add_argument("--cpu", default="", help="QEMU -cpu model (default max), e.g. max,-xsave")
    ap.add_argument("--pin", action="store_true", help="pin both dom0 vCPUs to physical CPU 0")
    ap.add_argument("--loops", default="", help="stress.sh's loops (default: all)")
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="the selftest image")
    ap.add_argument("--one-boot", choices=["lazy", "eager"], help=argparse.SUPPRESS)
    ap.add_argument("--log-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.one_boot:
        xenrig.exit_on_sigterm()
        rec = one_boot(args.one_boot, args.seconds, args.log_file, args.guest, args.cpu, args.pin,
                       args.loops, args.image.resolve())
        print("STRESS-BOOT-JSON " + json.dumps(rec), flush=True)
        return 0

    if args.guest == "selftest" and not args.image.is_file():
        ap.error(f"{args.image} missing: run `make images` (or --guest none)")
    logdir = args.logdir or Path(f"/tmp/moat-stress-{time.strftime('%Y%m%d-%H%M%S')}")
    logdir.mkdir(parents=True, exist_ok=True)
    xenrig.fetch("amd64", quiet=True)
    deadline = None
    if args.until:
        hh, mm = map(int, args.until.split(":"))
        now = datetime.datetime.now()
        deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()
    print(f"stress: {args.boots} boot(s) per mode, mode {args.mode}, {args.seconds} s each, "
          f"{args.parallel} at a time, -cpu {args.cpu or 'max'}{', dom0 pinned' if args.pin else ''}"
          f"{', loops ' + args.loops if args.loops else ''}; logs in {logdir}", flush=True)
    recs: list = []
    round_times: list = []
    n = 0
    for rnd in plan(args.mode, args.boots, args.parallel):
        if deadline and round_times:
            expect = max(round_times[-3:])
            if time.time() + expect > deadline:
                print(f"stress: stopping: the next round (about {expect:.0f} s) would end after {args.until}",
                      flush=True)
                break
        t0 = time.time()
        results: dict = {}
        threads = []
        for k, mode in enumerate(rnd):
            n += 1
            log = logdir / f"boot{n:03d}-{mode}.log"
            th = threading.Thread(target=lambda k=k, m=mode, lg=log: results.__setitem__(
                k, run_child(m, args.seconds, lg, args.guest, args.cpu, args.pin, args.loops,
                             args.image.resolve())))
            th.start()
            threads.append(th)
        for th in threads:
            th.join()
        round_times.append(time.time() - t0)
        for k in range(len(rnd)):
            rec = results[k]
            recs.append(rec)
            print(summary_line(len(recs), rec), flush=True)
            for f in rec.get("faults", [])[:8]:
                print(f"    fault: {f}", flush=True)
            for c in rec.get("code", [])[:3]:
                print(f"    code: {c}", flush=True)
            if args.json:
                with open(args.json, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
    print_table(recs)
    bad = [r for r in recs if r["mode_seen"] != r["mode"] or classify(r) == "RIG"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
