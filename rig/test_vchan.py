#!/usr/bin/env python3
"""Real-Xen test of moat's vchan (qubes::vchan) against dom0's libxenvchan.

One rig boot (rig/xenrig.py). For each guest type, dom0 runs the vchantest
image (services/vchantest) twice, with Debian's `vchan-socket-proxy`
(xen-utils, linked with libxenvchan) at the other end, its stdin and stdout
on files:
  1. moat as the vchan server (Qubes' path /local/domain/<moat>/data/vchan/0/
     5000, 64 KiB rings, as qrexec's data channels), the proxy as client;
  2. moat as the client of the proxy's server (/local/domain/0/data/vchan/
     <moat>/5001, libxenvchan's in-page rings of 1024 and 2048 bytes).
Each time dom0 sends MIB MiB of /dev/urandom through the proxy; moat echoes
every byte back, waits until the proxy has read the last one, and closes.
So MIB MiB went each way; dom0 compares the md5 of what it sent with the
md5 of what came back. The proxy's stdin is a FIFO that stays open (it
stops reading the vchan at its stdin's EOF), so the proxy ends when moat
closes the vchan.

Prints every failed assertion, the figures (never asserted) and
`N passed, M failed`.

usage: python3 rig/test_vchan.py [--image PATH] [--types pv,pvh] [--mib N]
          [--roles server,client] [--case-limit S] [--timeout S] [--log FILE]
Exit status: 0 when every assertion held, 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xenrig  # noqa: E402
from test_blkdemo import DOM0_FUNCS  # noqa: E402  (reap, now, elapsed)
from test_netdemo import segment  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

VCHAN_FUNCS = r"""
PROXY=/usr/lib/xen-4.17/bin/vchan-socket-proxy
# vchan_case NAME CONFIG ROLE MIB PORT [EXTRA]: start vchantest NAME in ROLE,
# run the proxy in the other role with MIB MiB of random bytes on its
# stdin, compare.
vchan_case() {
  name=$1 cfg=$2 role=$3 mib=$4 port=$5 more=${6:-}
  rm -f /tmp/vin /tmp/vout /tmp/vfifo
  head -c $((mib * 1048576)) /dev/urandom >/tmp/vin
  echo "RIG sum-in $name $(md5sum </tmp/vin | cut -d' ' -f1) $(stat -c %s /tmp/vin)"
  mkfifo /tmp/vfifo
  echo "RIG create $name"
  xl create -c "$cfg" "name=\"$name\"" \
    "extra=\"vchantest.role=$role vchantest.mib=$mib vchantest.port=$port $more\"" </dev/console &
  xlpid=$!
  i=0 domid=""
  while [ $i -lt 100 ] && [ -z "$domid" ]; do
    domid=$(xl domid "$name" 2>/dev/null) || domid=""
    [ -z "$domid" ] && sleep 0.2
    i=$((i + 1))
  done
  if [ -z "$domid" ]; then echo "RIG no-domid $name"; reap "$name" $xlpid; return; fi
  if [ "$role" = server ]; then
    args="-m client $domid /local/domain/$domid/data/vchan/0/$port"
  else
    args="-m server $domid data/vchan/$domid/$port"
  fi
  # The sleeper keeps the FIFO open after cat is done, so the proxy never
  # sees EOF on its stdin; it ends when the vchan closes.
  sleep 100000 >/tmp/vfifo &
  sleeper=$!
  cat /tmp/vin >/tmp/vfifo &
  t=$(now)
  $PROXY $args - </tmp/vfifo >/tmp/vout &
  proxy=$!
  # A guest that crashed (or triple-faulted: Xen then reboots it, which
  # on_reboot=destroy ends) never closes the vchan: stop the proxy then.
  gone=0
  while kill -0 $proxy 2>/dev/null; do
    case $(xl list "$name" 2>/dev/null | awk 'NR == 2 { print $5 }') in
      *c*) echo "RIG guest-crashed $name $(elapsed "$t")"; kill $proxy ;;
      "") gone=$((gone + 1))
          if [ $gone -ge 10 ]; then echo "RIG guest-crashed $name gone $(elapsed "$t")"; kill $proxy; fi ;;
    esac
    sleep 1
  done
  wait $proxy
  echo "RIG proxy $name rc $? $(elapsed "$t")"
  kill $sleeper 2>/dev/null
  echo "RIG sum-out $name $(md5sum </tmp/vout | cut -d' ' -f1) $(stat -c %s /tmp/vout)"
  rm -f /tmp/vin /tmp/vout /tmp/vfifo
  reap "$name" $xlpid
}
"""

#: (role of moat, port) per case.
ROLES = (("server", 5000), ("client", 5001))


def dom0_cases(types: list, mib: int, limit: int, roles: tuple = ("server", "client"), extra: str = "") -> list:
    """One case per guest type and role of moat."""
    out = []
    for t in types:
        for role, port in ROLES:
            if role not in roles:
                continue
            name = f"vchantest-{t}-{role}"
            out.append(xenrig.Case(name, limit, [f"vchan_case {name} /guest/vchantest-{t}.cfg {role} {mib} {port} '{extra}'"]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(REPO / "target/images/amd64/vchantest"))
    ap.add_argument("--types", default="pv,pvh")
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--roles", default="server,client", help="moat's roles to test (comma-separated)")
    ap.add_argument("--extra", default="", help="more vchantest.* settings for the guest")
    ap.add_argument("--case-limit", type=int, default=900, help="seconds per case")
    ap.add_argument("--timeout", type=float, default=2400)
    ap.add_argument("--log")
    args = ap.parse_args(argv)
    types = [t for t in args.types.split(",") if t]
    roles = tuple(r for r in args.roles.split(",") if r)
    if not types or any(t not in ("pv", "pvh") for t in types) or args.mib < 1 or not roles or any(
        r not in ("server", "client") for r in roles
    ):
        print("--types takes pv and/or pvh; --roles server and/or client; --mib at least 1", file=sys.stderr)
        return 2
    image = Path(args.image)
    if not image.is_file():
        print(f"no image at {image}: run `make test-vchan`", file=sys.stderr)
        return 2
    guests = [(image, "vchantest")] + [(REPO / f"configs/vchantest-{t}.cfg", f"vchantest-{t}.cfg") for t in types]
    xenrig.exit_on_sigterm()
    cases = dom0_cases(types, args.mib, args.case_limit, roles, args.extra)
    header = ["# generated by rig/test_vchan.py", "set -u", f"LIMIT={args.case_limit}", DOM0_FUNCS, VCHAN_FUNCS]
    result = xenrig.run_script(
        xenrig.cases_script(cases, header=header, footer=["xl list"]),
        guests=guests,
        timeout=args.timeout,
        log=Path(args.log) if args.log else None,
    )
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
    for c in cases:
        name = c.name
        role = name.rsplit("-", 1)[1]
        seg = segment(texts, name)
        sum_in = next((l.split()[3:] for l in texts if l.startswith(f"RIG sum-in {name} ")), [])
        sum_out = next((l.split()[3:] for l in seg if l.startswith(f"RIG sum-out {name} ")), [])
        proxy = next((l.split()[4:] for l in seg if l.startswith(f"RIG proxy {name} rc ")), [])
        if role == "server":
            up = [l for l in seg if re.match(r"vchantest: listening at /local/domain/\d+/data/vchan/0/5000 \(rings 65536/65536 bytes\)", l)]
            check(bool(up), f"{name}: moat published its vchan with 64 KiB rings")
            check(any(l == "vchantest: peer connected" for l in seg), f"{name}: libxenvchan's client connected")
        else:
            up = [l for l in seg if re.match(r"vchantest: connected to /local/domain/0/data/vchan/\d+/5001 \(rings 2048/1024 bytes\)", l)]
            check(bool(up), f"{name}: moat connected to libxenvchan's server (in-page rings 2048/1024)")
        echoed = [m for m in (re.search(r"vchantest: echoed (\d+) bytes in (\d+) us \((\d+) waits\)", l) for l in seg) if m]
        check(bool(echoed) and int(echoed[0].group(1)) == nbytes, f"{name}: moat echoed {nbytes} bytes ({[m.group(0) for m in echoed]})")
        check(len(sum_in) == 2 and sum_in[1] == str(nbytes), f"{name}: dom0 sent {nbytes} bytes ({sum_in})")
        check(
            len(sum_out) == 2 and len(sum_in) == 2 and sum_out == sum_in,
            f"{name}: what came back has the md5 and size of what was sent ({sum_in} / {sum_out})",
        )
        check(bool(proxy) and proxy[0] == "0", f"{name}: vchan-socket-proxy ended by itself with rc 0 when moat closed ({proxy})")
        check(not any(l.startswith("vchantest: error") for l in seg), f"{name}: no error ({[l for l in seg if 'error' in l][:3]})")
        crashed = [l for l in seg if l.startswith(f"RIG guest-crashed {name}") or "Triple fault" in l]
        check(not crashed, f"{name}: the guest did not crash ({crashed[:2]})")
        check(
            f"RIG end {name}" in seg and f"RIG crashed {name}" not in seg and f"RIG timeout {name}" not in seg,
            f"{name}: moat powered off by itself",
        )
        closed = [l for l in seg if l.startswith("vchantest: closed")]
        if echoed:
            us = int(echoed[0].group(2))
            bench.append(
                f"{name}: {args.mib} MiB each way in {us / 1e6:.1f} s = {nbytes / us:.2f} MB/s each way "
                f"(moat's clock, {echoed[0].group(3)} waits); proxy {proxy[1] if len(proxy) > 1 else '?'} s; {closed[:1]}"
            )
    for b in bench:
        print(f"bench: {b}")
    for f in failures:
        print(f"FAIL: {f}")
    print(f"test_vchan: {passed} passed, {len(failures)} failed")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
