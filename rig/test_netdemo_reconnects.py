#!/usr/bin/env python3
"""Many netfront reconnections, with flat grant and frame counts (issue 14
item 1; `make test-netdemo-reconnects`, not in `make test`). One rig boot:
moat's `netdemo` (configs/netdemo-<type>.cfg, one vif on dom0's bridge,
Linux xen-netback in dom0). Then N cycles (--cycles, default 1000, or as
many as --budget seconds allow) of a dom0 netback restart, as in
rig/dom0/netcase.sh: `unbind` (netback unmaps the rings), `bind` (back to
InitWait) and the hotplug script, then wait until netdemo printed
`netdemo: reconnected` once more, or until both ends are `Connected` again
and netdemo answers a ping without a reconnection (netback took the rings
netdemo still offered: "kept").

netdemo prints a `netdemo: resources:` line after its first connection and
after each reconnection: free frames, free and live grant references,
frames deferred now and ever, deferred frames freed later, open event
channels (the line after the first connection comes before netdemo
allocated its sockets' buffers, so it is printed but not compared). The
line after the first reconnection and the line after the last must be
equal in frames-free, grants-free, grants-live, deferred and
evtchns: no frame and no grant lost over the cycles (docs/drivers.md,
"Grant ownership"). A ping of 20 at the end must get answers.

Prints every failed check, `bench:` lines (cycles, seconds per cycle,
reconnected/kept counts, the resources at start and end, deferred-total
and freed-late), then `test_netdemo_reconnects: N passed, M failed`; exit 1
on any failure. Needs `make images` and the rig cache."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xenrig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
IP = "10.99.0.2"

SCRIPT = r"""
set -u
log() { echo "RIG $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
wait_for() {
  n=$(($3 * 5)); i=0
  while [ $i -lt $n ]; do grep -q -E -- "$2" "$1" 2>/dev/null && return 0; sleep 0.2; i=$((i + 1)); done
  return 1
}
name=netdemo-@TYPE@
glog=/var/log/xen/console/guest-$name.log
rm -f $glog
xl create /guest/$name.cfg
if wait_for $glog "netdemo: ready" 90; then log ready ok $(up); else log ready FAIL; tail -n 20 $glog | sed 's/^/GUEST /'; fi
grep "grant table:" $glog | sed 's/^/RIG granttable /'
dom=$(xl domid $name)
dev=$(ls /sys/bus/xen-backend/drivers/vif/ | grep "^vif-$dom-" | head -n 1)
devid=${dev##*-}
t0=$(up); k=0; rec=0; kept=0
while [ $k -lt @CYCLES@ ]; do
  if [ "$(awk -v a="$t0" -v b="$(up)" 'BEGIN { print (b - a > @BUDGET@) }')" = 1 ]; then
    log budget-spent $k; break
  fi
  k=$((k + 1))
  n0=$(grep -c "netdemo: reconnected" $glog)
  if ! timeout 60 sh -c "echo $dev > /sys/bus/xen-backend/drivers/vif/unbind"; then
    log cycle FAIL $k unbind-hung backend=$(xenstore-read backend/vif/$dom/$devid/state 2>&1) \
      frontend=$(xenstore-read /local/domain/$dom/device/vif/$devid/state 2>&1)
    dmesg | tail -n 15 | sed 's/^/DMESG /'; tail -n 10 $glog | sed 's/^/GUEST /'
    break
  fi
  sleep 0.5
  if ! timeout 60 sh -c "echo $dev > /sys/bus/xen-backend/drivers/vif/bind"; then
    log cycle FAIL $k bind-hung; dmesg | tail -n 15 | sed 's/^/DMESG /'; break
  fi
  XENBUS_PATH=backend/vif/$dom/$devid XENBUS_TYPE=vif XENBUS_BASE_PATH=backend vif=vif$dom.$devid \
    timeout 60 bash /etc/xen/scripts/vif-bridge online >/dev/null 2>&1
  tc=$(up)
  r=stuck kept_since= i=0
  while [ $i -lt 300 ]; do
    if [ "$(grep -c "netdemo: reconnected" $glog)" -gt "$n0" ]; then r=reconnected; break; fi
    if [ "$(xenstore-read backend/vif/$dom/$devid/state 2>/dev/null)" = 4 ] &&
      [ "$(xenstore-read /local/domain/$dom/device/vif/$devid/state 2>/dev/null)" = 4 ] &&
      ping -c 1 -W 1 @IP@ >/dev/null 2>&1; then
      [ -n "$kept_since" ] || kept_since=$(up)
      if [ "$(awk -v a="$kept_since" -v b="$(up)" 'BEGIN { print (b - a >= 2) }')" = 1 ]; then r=kept; break; fi
    else
      kept_since=
    fi
    sleep 0.2; i=$((i + 1))
  done
  echo "$tc $(up)" >> /tmp/cycle-times
  case $r in
    reconnected) rec=$((rec + 1)) ;;
    kept) kept=$((kept + 1)) ;;
    *) log cycle FAIL $k stuck backend=$(xenstore-read backend/vif/$dom/$devid/state 2>&1) \
         frontend=$(xenstore-read /local/domain/$dom/device/vif/$devid/state 2>&1)
       tail -n 10 $glog | sed 's/^/GUEST /'; dmesg | tail -n 15 | sed 's/^/DMESG /'
       break ;;
  esac
  log cyc $k $r $(awk -v a="$tc" -v b="$(up)" 'BEGIN { printf "%.2f", b - a }')
done
log cycles $k $t0 $(up) reconnected $rec kept $kept
awk '{ d = $2 - $1; n++; s += d; if (n == 1 || d < mn) mn = d; if (d > mx) mx = d }
     END { if (n) printf "RIG times %.2f %.2f %.2f\n", mn, s / n, mx }' /tmp/cycle-times
sleep 2
grep "netdemo: resources:" $glog | sed -n '1p' | sed 's/^/RIG res-boot /'
grep "netdemo: resources:" $glog | sed -n '2p' | sed 's/^/RIG res-start /'
grep "netdemo: resources:" $glog | tail -n 1 | sed 's/^/RIG res-end /'
set -- $(ping -c 20 -i 0.2 -W 1 @IP@ | sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) \(packets \)*received.*/\1 \2/p')
log ping ${1:-0} ${2:-0}
grep -c "panicked" $glog | sed 's/^/RIG panics /'
grep -E "netdemo: (reconnect failed|cannot connect)" $glog | tail -n 5 | sed 's/^/GUEST /'
xl destroy $name
log end
"""


def script(t: str, cycles: int, budget: float) -> str:
    s = SCRIPT
    for k, v in {"TYPE": t, "CYCLES": str(cycles), "BUDGET": str(int(budget)), "IP": IP}.items():
        s = s.replace(f"@{k}@", v)
    return s


def resources(line: str) -> dict:
    """The key=value pairs of a `netdemo: resources:` line."""
    return {k: int(v) for k, v in re.findall(r"([a-z-]+)=(\d+)", line)}


def check(texts: list, cycles: int) -> tuple:
    """(passed, failures)."""
    passed, failures = 0, []

    def rig(word: str) -> list:
        return [l.split()[2:] for l in texts if l.startswith(f"RIG {word} ")]

    r = rig("ready")
    if r and r[0][0] == "ok":
        passed += 1
    else:
        failures.append(f"netdemo not ready: {r}")
    for g in rig("granttable"):
        print(f"bench: {' '.join(g)}")
    c = rig("cycles")
    fails = rig("cycle")
    done = int(c[0][0]) if c else 0
    if c and not fails and (done == cycles or rig("budget-spent")):
        passed += 1
        secs = float(c[0][2]) - float(c[0][1])
        print(f"bench: {done} netback restarts in {secs:.1f} s ({secs / max(done, 1):.2f} s each): "
              f"{c[0][4]} reconnected, {c[0][6]} kept the old rings"
              f"{'' if done == cycles else f' (of {cycles}: time budget spent)'}")
    else:
        failures.append(f"cycles: {c} {fails}")
    times = rig("times")
    if times:
        print(f"bench: per restart, bind until netdemo reconnected (or kept) min/mean/max "
              f"{'/'.join(times[0][:3])} s")
    boot = [l for l in texts if l.startswith("RIG res-boot ")]
    if boot:
        print(f"bench: resources after the first connection:   {boot[0][len('RIG res-boot '):]}")
    start = [l for l in texts if l.startswith("RIG res-start ")]
    end = [l for l in texts if l.startswith("RIG res-end ")]
    if start and end:
        a, b = resources(start[0]), resources(end[0])
        print(f"bench: resources after the first reconnection: {start[0][len('RIG res-start '):]}")
        print(f"bench: resources after the last reconnection:  {end[0][len('RIG res-end '):]}")
        exact = ["frames-free", "grants-free", "grants-live", "deferred", "evtchns"]
        moved = [k for k in exact if k not in a or a.get(k) != b.get(k)]
        if moved:
            failures.append(f"resources not flat: {moved} ({a} -> {b})")
        else:
            passed += 1
    else:
        failures.append(f"no resources lines to compare ({len(start)}, {len(end)}; {done} cycles)")
    p = rig("ping")
    if p and int(p[0][1]) >= 15:
        passed += 1
    else:
        failures.append(f"ping after the cycles: {p}")
    p = rig("panics")
    if p and p[0][0] == "0":
        passed += 1
    else:
        failures.append(f"netdemo panicked: {p}")
    return passed, failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(REPO / "target/images/amd64/netdemo"))
    ap.add_argument("--type", default="pv", choices=["pv", "pvh"])
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--budget", type=float, default=6000,
                    help="stop cycling after this many seconds (the count done is reported)")
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--log")
    args = ap.parse_args()
    image = Path(args.image)
    if not image.is_file():
        print(f"no image at {image}: run `make images`", file=sys.stderr)
        return 2
    guests = [(image, "netdemo"), (REPO / f"configs/netdemo-{args.type}.cfg", f"netdemo-{args.type}.cfg")]
    xenrig.exit_on_sigterm()
    result = xenrig.run_script(script(args.type, args.cycles, args.budget), guests=guests,
                               timeout=args.timeout, log=Path(args.log) if args.log else None)
    texts = [l for _, l in result.lines]
    passed, failures = check(texts, args.cycles)
    if result.rc != 0:
        failures.append(f"rig: dom0 script ended with rc {result.rc} (timeout 124, rig failure 125)")
    for f in failures:
        print(f"FAIL: {f}")
    print(f"test_netdemo_reconnects: {passed} passed, {len(failures)} failed")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
