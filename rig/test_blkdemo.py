#!/usr/bin/env python3
"""Real-Xen test of moat's blkfront through the blkdemo image.

One rig boot (rig/xenrig.py). In dom0, for each guest type, a file-backed
disk (/tmp/disk.img, Linux blkback over a loop device) is attached to
configs/blkdemo-<type>.cfg twice:
  1. write: MIB MiB of a seeded pattern, flush, read back and compare
     (and, with --bench, sequential MB/s and 4 KiB random-read IOPS);
  2. a new domain that only reads back and compares: the data survived the
     guest's restart.
Then, for each type of --extra-types (default: those of --types; empty: none):
  3. detach/attach during I/O: blkdemo.detach writes DETACH_MIB MiB over
     and over; dom0 runs `xl block-detach` then `xl block-attach` while it
     writes and again while it reads; blkdemo reconnects each time, retries,
     flushes, and its final read-back and a new domain's must match;
  4. 4096-byte sectors: a disk on a loop device whose logical block size
     rig/dom0/blk_loopbs.c (built here with `gcc -static`, run in dom0) set
     to 4096, given to xl as target=/dev/loopN; blkdemo must see
     `sector-size` 4096, write, flush, read back, and a new domain verify.
Prints every failed assertion, the figures (never asserted) and
`N passed, M failed`.

usage: python3 rig/test_blkdemo.py [--image PATH] [--types pv,pvh]
          [--mib N] [--bench] [--extra-types pv,pvh] [--timeout S] [--log FILE]
Exit status: 0 when every assertion held, 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xenrig  # noqa: E402
from test_netdemo import segment  # noqa: E402  (lines from `RIG create NAME` to `RIG end NAME`)

REPO = Path(__file__).resolve().parent.parent

#: A domain gets this long (seconds) to power off by itself.
CASE_LIMIT = 300
#: MiB written and read per pass in the detach/attach case.
DETACH_MIB = 16
#: MiB of the 4096-byte-sector case.
SECTOR4K_MIB = 16
#: libxl gives a frontend this long (s) to close before it forces the removal.
LIBXL_DESTROY_TIMEOUT = 10

DOM0_FUNCS = r"""
# reap NAME PID: wait until domain NAME has shut down, then destroy it (xl's
# monitor sometimes does not), or destroy it after the limit.
reap() {
  i=0 down=0
  while [ $i -lt $((LIMIT * 5)) ]; do
    state=$(xl list "$1" 2>/dev/null | awk 'NR == 2 { print $5 }')
    [ -z "$state" ] && break
    # xl's monitor destroys a domain that powered off: give it 10 s first
    # (both destroying at once fail each other's hotplug scripts).
    case $state in
      *s*) [ $down -eq 0 ] && echo "RIG shutdown $1"
           down=$((down + 1))
           [ $down -ge 50 ] && { xl destroy "$1"; break; } ;;
      *c*) echo "RIG crashed $1"; xl destroy "$1"; break ;;
    esac
    sleep 0.2; i=$((i + 1))
  done
  [ $i -ge $((LIMIT * 5)) ] && { echo "RIG timeout $1"; xl destroy "$1"; }
  wait $2 2>/dev/null
  echo "RIG end $1"
}
# run NAME CONFIG EXTRA [XLCONF]: xl create -c (XLCONF: one more config
# line, e.g. a disk), then reap.
run() {
  echo "RIG create $1"
  xl create -c "$2" "name=\"$1\"" "extra=\"$3\"" ${4:+"$4"} </dev/console &
  reap "$1" $!
}
now() { read -r t _ </proc/uptime; echo "$t"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# wait_log FILE PATTERN SECONDS: until FILE has a line matching PATTERN.
wait_log() {
  i=0
  while [ $i -lt $(($3 * 5)) ]; do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.2; i=$((i + 1))
  done
  return 1
}
# cycle NAME PHASE TARGET: once the guest prints `blkdemo: PHASE: pass 1`,
# detach its disk and attach it again (TARGET), timing both.
# xl_result RC: ok, failed, or crashed-SIGNAL (xl itself died: dom0's
# userland under TCG load has segfaulted now and then, xl included, after
# doing its work; the guest's own lines then tell what happened).
xl_result() {
  if [ "$1" = 0 ]; then echo ok; elif [ "$1" -gt 128 ]; then echo "crashed-$(($1 - 128))"; else echo failed; fi
}
cycle() {
  if ! wait_log "/var/log/xen/console/guest-$1.log" "blkdemo: $2: pass 1" 120; then
    echo "RIG no-phase $1 $2"; return
  fi
  sleep 1
  t=$(now)
  xl block-detach "$1" xvda; r=$(xl_result $?)
  echo "RIG detach $1 $2 $r $(elapsed "$t")"
  t=$(now)
  xl block-attach "$1" "format=raw,vdev=xvda,access=rw,target=$3"; r=$(xl_result $?)
  echo "RIG attach $1 $2 $r $(elapsed "$t")"
}
# detach_run NAME CONFIG EXTRA TARGET: run, with a detach/attach cycle while
# the guest writes and another while it reads.
detach_run() {
  rm -f "/var/log/xen/console/guest-$1.log"
  echo "RIG create $1"
  xl create -c "$2" "name=\"$1\"" "extra=\"$3\"" </dev/console &
  pid=$!
  cycle "$1" writing "$4"
  cycle "$1" reading "$4"
  reap "$1" $pid
}
"""


def dom0_cases(types: list, mib: int, bench: bool, extra_types: tuple = (), loopbs: bool = False) -> list:
    """The cases of the dom0 script (xenrig.Case): the main cases per type,
    then per `extra_types` the detach/attach case and (if `loopbs`, the
    helper was built) the 4096-byte-sector case. A verify run needs its
    write run to have ended in time. rig/test_arm32.py reuses it (main
    cases only). The functions they call are in dom0_header()."""
    out = []
    # A domain gets LIMIT to power off; the case adds xl's start and clean-up.
    limit = CASE_LIMIT + 120
    for i, t in enumerate(types):
        seed = 7 + i
        cfg = f"/guest/blkdemo-{t}.cfg"
        extra = f"blkdemo.mib={mib} blkdemo.seed={seed}" + (" blkdemo.bench" if bench else "")
        out.append(xenrig.Case(f"blkdemo-{t}-write", limit, [
            "rm -f /tmp/disk.img; truncate -s $(( %d + 16 ))M /tmp/disk.img" % mib,
            f"run blkdemo-{t}-write {cfg} '{extra}'",
        ]))
        out.append(xenrig.Case(f"blkdemo-{t}-verify", limit, [
            f"run blkdemo-{t}-verify {cfg} 'blkdemo.mib={mib} blkdemo.seed={seed} blkdemo.mode=verify'"
        ], after=f"blkdemo-{t}-write"))
    for t in extra_types:
        cfg = f"/guest/blkdemo-{t}.cfg"
        # 3. Detach and attach while writing, then while reading.
        args = f"blkdemo.mib={DETACH_MIB} blkdemo.seed=21"
        out.append(xenrig.Case(f"blkdemo-{t}-detach", limit, [
            "rm -f /tmp/disk.img; truncate -s $(( %d + 16 ))M /tmp/disk.img" % DETACH_MIB,
            f"detach_run blkdemo-{t}-detach {cfg} '{args} blkdemo.detach' /tmp/disk.img",
        ]))
        out.append(xenrig.Case(f"blkdemo-{t}-detach-verify", limit, [
            f"run blkdemo-{t}-detach-verify {cfg} '{args} blkdemo.mode=verify'",
            "rm -f /tmp/disk.img",
        ], after=f"blkdemo-{t}-detach"))
        # 4. A loop device with 4096-byte logical blocks: one case (the
        # loop device lives from its set-up to its removal).
        if loopbs:
            args = f"blkdemo.mib={SECTOR4K_MIB} blkdemo.seed=33"
            out.append(xenrig.Case(f"blkdemo-{t}-4k-case", 2 * limit, [
                "truncate -s $(( %d + 16 ))M /tmp/disk4k.img" % SECTOR4K_MIB,
                "loop=$(losetup -f)",
                "losetup \"$loop\" /tmp/disk4k.img && /guest/blk_loopbs \"$loop\" 4096",
                f"echo \"RIG loop {t} $loop bs $(cat /sys/block/${{loop#/dev/}}/queue/logical_block_size)\"",
                "disk=\"disk=['format=raw,vdev=xvda,access=rw,target=$loop']\"",
                f"run blkdemo-{t}-4k {cfg} '{args}' \"$disk\"",
                f"run blkdemo-{t}-4k-verify {cfg} '{args} blkdemo.mode=verify' \"$disk\"",
                'losetup -d "$loop"; rm -f /tmp/disk4k.img',
            ]))
    return out


def dom0_header() -> list:
    """The lines before the cases: the shell functions they call."""
    return ["# generated by rig/test_blkdemo.py", "set -u", f"LIMIT={CASE_LIMIT}", DOM0_FUNCS]


def dom0_script(*args, **kwargs) -> str:
    """The dom0 script of dom0_cases(*args, **kwargs)."""
    return xenrig.cases_script(dom0_cases(*args, **kwargs), header=dom0_header(), footer=["xl list"])


def build_loopbs(out_dir: Path) -> tuple[Path | None, str]:
    """Build rig/dom0/blk_loopbs.c statically; (path, "") or (None, why)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None, "gcc not found: the 4096-byte-sector case needs gcc and libc6-dev (apt-get install gcc libc6-dev)"
    exe = out_dir / "blk_loopbs"
    r = subprocess.run(
        [gcc, "-static", "-O2", "-Wall", "-o", str(exe), str(REPO / "rig/dom0/blk_loopbs.c")],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        return None, f"gcc -static failed (libc6-dev installed?): {r.stderr.strip()[-500:]}"
    return exe, ""


def pattern_lines(seg: list) -> tuple:
    """The write and verify lines of a segment, as regex matches."""
    wl = [m for m in (re.search(r"blkdemo: write: (\d+) bytes crc32 ([0-9a-f]{8}) in (\d+) us", l) for l in seg) if m]
    vl = [m for m in (re.search(r"blkdemo: verify: (\d+) bytes crc32 ([0-9a-f]{8}) in (\d+) us: (.*)", l) for l in seg) if m]
    return wl, vl


def first_index(seg: list, needle: str) -> int:
    """Index of the first line of `seg` containing `needle`, or -1."""
    return next((i for i, l in enumerate(seg) if needle in l), -1)


def xl_done(result: str) -> bool:
    """An xl command's RIG result: `ok`. `crashed-N` (xl killed by a
    signal) is a failure: dom0's tools crashed under Xen's lazy FPU
    switching, which the rig no longer uses (docs/testing.md), so a crash
    now is a new fault to look at, not one to step around."""
    return result == "ok"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(REPO / "target/images/amd64/blkdemo"))
    ap.add_argument("--types", default="pv,pvh")
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--bench", action="store_true")
    ap.add_argument(
        "--extra-types",
        default=None,
        help="guest types of the detach/attach and 4096-byte-sector cases (comma-separated; default: --types; empty: none)",
    )
    ap.add_argument("--timeout", type=float, default=1500)
    ap.add_argument("--log")
    args = ap.parse_args(argv)
    types = [t for t in args.types.split(",") if t]
    extra_types = types if args.extra_types is None else [t for t in args.extra_types.split(",") if t]
    if not types or any(t not in ("pv", "pvh") for t in types + extra_types) or args.mib < 1:
        print("--types and --extra-types take pv and/or pvh; --mib at least 1", file=sys.stderr)
        return 2
    image = Path(args.image)
    if not image.is_file():
        print(f"no image at {image}: run `make images`", file=sys.stderr)
        return 2
    cfg_types = list(dict.fromkeys(types + extra_types))
    guests = [(image, "blkdemo")] + [(REPO / f"configs/blkdemo-{t}.cfg", f"blkdemo-{t}.cfg") for t in cfg_types]
    tmp = tempfile.TemporaryDirectory(prefix="moat-blkdemo-")
    loopbs, loopbs_error = (None, "")
    if extra_types:
        loopbs, loopbs_error = build_loopbs(Path(tmp.name))
        if loopbs is not None:
            guests.append((loopbs, "blk_loopbs"))
    xenrig.exit_on_sigterm()
    cases = dom0_cases(types, args.mib, args.bench, extra_types, loopbs is not None)
    result = xenrig.run_script(
        xenrig.cases_script(cases, header=dom0_header(), footer=["xl list"]),
        guests=guests,
        timeout=args.timeout,
        log=Path(args.log) if args.log else None,
    )
    tmp.cleanup()
    texts = [l for _, l in result.lines]
    passed, failures, bench = 0, [], []

    def check(ok: bool, what: str) -> None:
        nonlocal passed
        if ok:
            passed += 1
        else:
            failures.append(what)

    check(result.rc == 0, f"rig: dom0 script ended with rc {result.rc}")
    case_failures, case_times = xenrig.case_report(result, [c.name for c in cases])
    for f in case_failures:
        check(False, f)
    for w in case_times:
        print(f"rig: {w}")
    nbytes = args.mib << 20
    for t in types:
        w = segment(texts, f"blkdemo-{t}-write")
        v = segment(texts, f"blkdemo-{t}-verify")
        check(any(l.startswith("blkdemo: disk: ") for l in w), f"{t}: the disk connected (`blkdemo: disk:`)")
        wl = [m for m in (re.search(r"blkdemo: write: (\d+) bytes crc32 ([0-9a-f]{8}) in (\d+) us", l) for l in w) if m]
        check(bool(wl) and int(wl[0].group(1)) == nbytes, f"{t}: wrote {nbytes} bytes ({[m.group(0) for m in wl]})")
        vw = [m for m in (re.search(r"blkdemo: verify: (\d+) bytes crc32 ([0-9a-f]{8}) in (\d+) us: (.*)", l) for l in w) if m]
        vv = [m for m in (re.search(r"blkdemo: verify: (\d+) bytes crc32 ([0-9a-f]{8}) in (\d+) us: (.*)", l) for l in v) if m]
        check(bool(vw) and vw[0].group(4) == "ok", f"{t}: read back equal to what was written ({[m.group(0) for m in vw]})")
        check(
            bool(vv) and bool(wl) and vv[0].group(4) == "ok" and vv[0].group(2) == wl[0].group(2),
            f"{t}: after a restart the disk still holds the pattern ({[m.group(0) for m in vv]})",
        )
        for seg, name in ((w, "write"), (v, "verify")):
            n = f"blkdemo-{t}-{name}"
            check(
                f"RIG end {n}" in seg and f"RIG crashed {n}" not in seg and f"RIG timeout {n}" not in seg,
                f"{t}: the {name} run powered off by itself",
            )
        if wl:
            bench.append(f"blkdemo-{t}: write {nbytes / int(wl[0].group(3)):.1f} MB/s (incl. flush)")
        if vw:
            bench.append(f"blkdemo-{t}: read+compare {nbytes / int(vw[0].group(3)):.1f} MB/s")
        for l in w:
            m = re.search(r"blkdemo: bench: (.*)", l)
            if m:
                bench.append(f"blkdemo-{t}: {m.group(1)}")
    for t in extra_types:
        # 3. Detach/attach during I/O.
        name = f"blkdemo-{t}-detach"
        d = segment(texts, name)
        dv = segment(texts, f"{name}-verify")
        dbytes = DETACH_MIB << 20
        for phase in ("writing", "reading"):
            m = [re.search(rf"RIG detach {name} {phase} (\S+) ([\d.]+)", l) for l in d]
            m = [x for x in m if x]
            check(bool(m) and xl_done(m[0].group(1)), f"{t}: `xl block-detach` while {phase} ({[x.group(0) for x in m]})")
            if m:
                bench.append(f"{name}: xl block-detach while {phase}: {m[0].group(2)} s")
            a = [x for x in (re.search(rf"RIG attach {name} {phase} (\S+) ([\d.]+)", l) for l in d) if x]
            check(bool(a) and xl_done(a[0].group(1)), f"{t}: `xl block-attach` while {phase} ({[x.group(0) for x in a]})")
        gone = [i for i, l in enumerate(d) if "blkdemo: backend gone (" in l and "reconnecting" in l]
        # libxl waits LIBXL_DESTROY_TIMEOUT for the backend to close, which
        # Linux blkback does once the frontend is Closed: we must be quicker.
        closed = [x for x in (re.search(r"blkdemo: closed in (\d+) ms \((\d+) grants", l) for l in d) if x]
        check(
            len(closed) == 2 and all(int(x.group(1)) < LIBXL_DESTROY_TIMEOUT * 1000 for x in closed),
            f"{t}: the frontend closed within libxl's {LIBXL_DESTROY_TIMEOUT} s both times ({[x.group(0) for x in closed]})",
        )
        back = [re.search(r"blkdemo: reconnected in (\d+) ms", l) for l in d]
        back = [x for x in back if x]
        check(len(gone) == 2 and len(back) == 2, f"{t}: two `backend gone ... reconnecting` and two `reconnected` ({len(gone)}, {len(back)})")
        wl, vl = pattern_lines(d)
        w_at, v_at = first_index(d, "blkdemo: write: "), first_index(d, "blkdemo: verify: ")
        check(
            len(gone) >= 2 and w_at >= 0 and v_at >= 0 and gone[0] < w_at < gone[1] < v_at,
            f"{t}: one reconnection during the write pass, one during the read pass",
        )
        check(bool(wl) and int(wl[0].group(1)) == dbytes, f"{t}: detach case wrote {dbytes} bytes ({[x.group(0) for x in wl]})")
        check(
            bool(vl) and bool(wl) and vl[0].group(4) == "ok" and vl[0].group(2) == wl[0].group(2),
            f"{t}: after the detaches the whole pattern reads back equal ({[x.group(0) for x in vl]})",
        )
        _, vvl = pattern_lines(dv)
        check(
            bool(vvl) and bool(wl) and vvl[0].group(4) == "ok" and vvl[0].group(2) == wl[0].group(2),
            f"{t}: a new domain reads the detach case's pattern back equal ({[x.group(0) for x in vvl]})",
        )
        for n, seg in ((name, d), (f"{name}-verify", dv)):
            check(
                f"RIG end {n}" in seg and f"RIG crashed {n}" not in seg and f"RIG timeout {n}" not in seg,
                f"{t}: {n} powered off by itself",
            )
        for i, c, x in zip(gone, closed, back):
            fl = re.search(r"(\d+) requests in flight", d[i])
            bench.append(
                f"{name}: backend gone ({fl.group(1) if fl else '?'} requests in flight) -> closed in {c.group(1)} ms "
                f"({c.group(2)} grants leaked) -> reconnected in {x.group(1)} ms (guest clock, xl's detach and attach included)"
            )
        # 4. 4096-byte logical sectors.
        check(loopbs_error == "", f"{t}: 4096-byte sectors: {loopbs_error}")
        if not loopbs_error:
            name = f"blkdemo-{t}-4k"
            k = segment(texts, name)
            kv = segment(texts, f"{name}-verify")
            check(
                any(re.search(rf"^RIG loop {t} /dev/loop\d+ bs 4096$", l) for l in texts),
                f"{t}: the loop device has 4096-byte logical blocks",
            )
            disk = [l for l in k if l.startswith("blkdemo: disk: ")]
            check(bool(disk) and " sectors of 4096 bytes," in disk[0], f"{t}: blkdemo saw sector-size 4096 ({disk[:1]})")
            kbytes = SECTOR4K_MIB << 20
            wl, vl = pattern_lines(k)
            _, vvl = pattern_lines(kv)
            check(bool(wl) and int(wl[0].group(1)) == kbytes, f"{t}: 4k case wrote {kbytes} bytes ({[x.group(0) for x in wl]})")
            check(
                bool(vl) and bool(wl) and vl[0].group(4) == "ok" and vl[0].group(2) == wl[0].group(2),
                f"{t}: 4k case read back equal ({[x.group(0) for x in vl]})",
            )
            check(
                bool(vvl) and bool(wl) and vvl[0].group(4) == "ok" and vvl[0].group(2) == wl[0].group(2),
                f"{t}: 4k case: a new domain reads it back equal ({[x.group(0) for x in vvl]})",
            )
            for n, seg in ((name, k), (f"{name}-verify", kv)):
                check(
                    f"RIG end {n}" in seg and f"RIG crashed {n}" not in seg and f"RIG timeout {n}" not in seg,
                    f"{t}: {n} powered off by itself",
                )
    for b in bench:
        print(f"bench: {b}")
    for f in failures:
        print(f"FAIL: {f}")
    print(f"test_blkdemo: {passed} passed, {len(failures)} failed")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
