#!/usr/bin/env python3
"""Clients come and go behind the firewall VM, for long (issue 12 item 3;
`make test-firewall-cycles`, not in `make test`). One rig boot: moat's
`firewall` (configs/firewall-<type>.cfg, its uplink on dom0's bridge) and
the rig's Linux PV client domU behind it (configs/firewall-client-pv.cfg,
10.137.0.10, probing dom0:8080 every second through the firewall). Then:

- N cycles (--cycles, default 1000, or as many as --budget seconds allow)
  of a second vif of the client: `xl network-attach client-a
  backend=firewall ip=10.137.0.11 ...`, wait until both ends are
  `Connected` (Linux's netfront takes a hot-plugged vif by itself), `xl
  network-detach client-a <devid>`, which must succeed (libxl gives up
  after 10 s if the firewall has not removed its backend directory) and
  leave neither directory behind;
- the firewall's `resources:` lines (free frames, heap in use, free grant
  references, grants mapped, open event channels; printed after each
  client closed) after the first cycle and after the last: grants, mapped
  grants, event channels and free frames must be back where they were,
  the heap within --heap-slack bytes (the client's probes keep making
  conntrack entries meanwhile);
- the firewall's own uplink detached and attached again (`xl
  network-detach firewall 0`, `xl network-attach firewall bridge=xenbr0
  ...` with the same mac and ip): the firewall must get its uplink back and
  the client's probes of dom0:8080 must get through again, with the
  client's own vif never touched (its flows are kept by the firewall
  across the outage).

Prints every failed check, `bench:` lines (cycle rate, resources at start
and end, uplink outage), then `test_firewall_cycles: N passed, M failed`;
exit 1 on any failure. Needs `make images` and the rig cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_firewall as tf  # noqa: E402  (its constants and the Linux domU)
import xenrig  # noqa: E402

REPO = tf.REPO
CYCLED_IP = "10.137.0.11"
CYCLED_MAC = "00:16:3e:6d:6f:22"
UPLINK = "bridge=xenbr0 mac=00:16:3e:6d:6f:10 ip=10.99.0.10"

SCRIPT = r"""
set -u
log() { echo "RIG $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
# wait_for FILE REGEX SECONDS
wait_for() {
  n=$(($3 * 5)); i=0
  while [ $i -lt $n ]; do grep -q -E -- "$2" "$1" 2>/dev/null && return 0; sleep 0.2; i=$((i + 1)); done
  return 1
}
# wait_count FILE REGEX N SECONDS: until N lines match
wait_count() {
  n=$(($4 * 5)); i=0
  while [ $i -lt $n ]; do [ "$(grep -c -E -- "$2" "$1" 2>/dev/null)" -ge "$3" ] && return 0; sleep 0.2; i=$((i + 1)); done
  return 1
}
printf '#!/bin/sh\necho served-by-dom0\n' > /tmp/answer; chmod +x /tmp/answer
(while :; do nc -ll -p @ALLOWED@ -e /tmp/answer; sleep 0.2; done) >/dev/null 2>&1 &
flog=/var/log/xen/console/guest-firewall.log
clog=/var/log/xen/console/guest-client-a.log
rm -f $flog $clog
log create firewall-@TYPE@ $(up)
xl create /guest/firewall-@TYPE@.cfg
if wait_for $flog "firewall: forwarding:" 90; then log forwarding ok $(up); else log forwarding FAIL; fi
fw=$(xl domid firewall)
base=/local/domain/$fw/qubesdb/qubes-firewall/@ENC@
xenstore-write $base/policy drop $base/0000 "action=accept proto=tcp dstports=@ALLOWED@-@ALLOWED@" $base ""
xl create /guest/firewall-client-pv.cfg \
  'extra="console=hvc0 quiet moat.ip=@IP@/24 moat.gw=10.137.0.1 moat.probe=@DOM0@:@ALLOWED@"'
if wait_for $clog "probe @DOM0@:@ALLOWED@ ok" 240; then log allowed ok $(up); else log allowed FAIL; fi
cid=$(xl domid client-a)
# The cycles: a second vif of the client, attached and detached.
t0=$(up); k=0
while [ $k -lt @CYCLES@ ]; do
  if [ "$(awk -v a="$t0" -v b="$(up)" 'BEGIN { print (b - a > @BUDGET@) }')" = 1 ]; then
    log budget-spent $k; break
  fi
  k=$((k + 1))
  ta=$(up)
  # devids 1 and 2 in turn: Linux's xenbus handles a device's removal
  # and a new device at the same path as one watch path, so a re-attach at
  # the devid just removed can land before the guest has dropped the old
  # device, which then shadows the new one (it stays Initialising).
  dev=$((1 + k % 2))
  if ! out=$(timeout 60 xl network-attach client-a devid=$dev backend=firewall ip=@CIP@ mac=@CMAC@ 2>&1); then
    log cycle FAIL $k attach "$out"; break
  fi
  b=/local/domain/$fw/backend/vif/$cid/$dev
  f=/local/domain/$cid/device/vif/$dev
  i=0
  while [ $i -lt 300 ]; do
    [ "$(xenstore-read $b/state 2>/dev/null)" = 4 ] && [ "$(xenstore-read $f/state 2>/dev/null)" = 4 ] && break
    sleep 0.1; i=$((i + 1))
  done
  if [ $i -ge 300 ]; then
    log cycle FAIL $k not-connected dev=$dev back=$(xenstore-read $b/state 2>&1) front=$(xenstore-read $f/state 2>&1)
    xenstore-ls -f $f 2>&1 | sed 's/^/FRONT /'
    xenstore-ls -f $b 2>&1 | sed 's/^/BACK /'
    tail -n 5 $flog | sed 's/^/FWNOW /'
    break
  fi
  td=$(up)
  if ! out=$(timeout 60 xl network-detach client-a $dev 2>&1); then
    log cycle FAIL $k detach "$out" back=$(xenstore-read $b/state 2>&1) front=$(xenstore-read $f/state 2>&1)
    tail -n 5 $flog | sed 's/^/FWNOW /'
    break
  fi
  if xenstore-read $b/state >/dev/null 2>&1 || xenstore-read $f/state >/dev/null 2>&1; then
    log cycle FAIL $k left back=$(xenstore-read $b/state 2>&1) front=$(xenstore-read $f/state 2>&1)
    break
  fi
  echo "$ta $td $(up)" >> /tmp/cycle-times
  [ $((k % 50)) = 0 ] && log progress $k $t0 $(up)
done
# attach (until both Connected) and detach times, s: min mean max
awk '{ a = $2 - $1; d = $3 - $2; n++; sa += a; sd += d
       if (n == 1 || a < amin) amin = a; if (a > amax) amax = a
       if (n == 1 || d < dmin) dmin = d; if (d > dmax) dmax = d }
     END { if (n) printf "RIG times attach %.2f %.2f %.2f detach %.2f %.2f %.2f\n", amin, sa / n, amax, dmin, sd / n, dmax }' /tmp/cycle-times
log cycles $k $t0 $(up)
sleep 2
log removed $(grep -c -E "firewall: vif backend/vif/$cid/[0-9]+ removed" $flog) \
  closed $(grep -c -E "firewall: vif backend/vif/$cid/[0-9]+ closed" $flog) \
  retried $(grep -c -E "firewall: vif backend/vif/$cid/[0-9]+: .*retrying later" $flog)
grep "firewall: resources:" $flog | grep -v " closed=0" | sed -n '1p' | sed 's/^/RIG res-start /'
grep "firewall: resources:" $flog | tail -n 1 | sed 's/^/RIG res-end /'
# The uplink detached and attached again, the client's probes going on.
on0=$(grep -c -E "firewall: uplink [0-9a-f:]+ on" $flog)
t=$(up)
out=$(timeout 60 xl network-detach firewall 0 2>&1); rc1=$?
log uplink-detach rc=$rc1 $t $(up) $out
sleep 1
out=$(timeout 60 xl network-attach firewall @UPLINK@ 2>&1); rc2=$?
log uplink-attach rc=$rc2 $(up) $out
if wait_count $flog "firewall: uplink [0-9a-f:]+ on" $((on0 + 1)) 90; then
  log uplink-back ok $t $(up)
else
  log uplink-back FAIL
  xl network-list firewall | sed 's/^/RIG netlist /'
  tail -n 10 $flog | sed 's/^/FWNOW /'
fi
i=0; ok=0
while [ $i -lt 60 ]; do
  last=$(grep "probe @DOM0@:@ALLOWED@" $clog | tail -n 1)
  case "$last" in *" ok "*) ok=1; break ;; esac
  sleep 1; i=$((i + 1))
done
if [ $ok = 1 ]; then log after-uplink ok $t $(up); else log after-uplink FAIL "$last"; fi
grep "probe @DOM0@:@ALLOWED@" $clog | sed 's/^/RIG probe /'
grep "firewall: resources:" $flog | tail -n 1 | sed 's/^/RIG res-uplink /'
grep -E "firewall: (uplink|stats)" $flog | tail -n 8 | sed 's/^/FW /'
grep -c "panicked" $flog | sed 's/^/RIG panics /'
xl list
# xl destroy of the client (its vif removed by libxl with force): the
# firewall's lines from then on, for a failure
n0=$(wc -l < $flog)
t=$(up)
timeout 60 xl destroy client-a; log destroy-client rc=$? $t $(up)
sleep 3
tail -n +$((n0 + 1)) $flog | grep -v "firewall: stats:" | sed 's/^/FWAFTER /'
xl destroy firewall
log end @TYPE@
"""


def script(t: str, cycles: int, budget: float) -> str:
    s = SCRIPT
    for k, v in {"TYPE": t, "CYCLES": str(cycles), "BUDGET": str(int(budget)), "IP": tf.CLIENT_IP,
                 "ENC": tf.CLIENT_ENC, "DOM0": tf.DOM0, "ALLOWED": str(tf.ALLOWED), "CIP": CYCLED_IP,
                 "CMAC": CYCLED_MAC, "UPLINK": UPLINK}.items():
        s = s.replace(f"@{k}@", v)
    return s


def check(texts: list, cycles: int, heap_slack: int) -> tuple:
    """(passed, failures)."""
    passed, failures = 0, []

    def rig(word: str) -> list:
        return [l.split()[2:] for l in texts if l.startswith(f"RIG {word} ")]

    for word in ["forwarding", "allowed", "uplink-back", "after-uplink"]:
        r = rig(word)
        if r and r[0] and r[0][0] == "ok":
            passed += 1
        else:
            failures.append(f"{word}: {r}")
    fails = rig("cycle")
    c = rig("cycles")
    done = int(c[0][0]) if c else 0
    if c and not fails and (done == cycles or rig("budget-spent")):
        passed += 1
        secs = float(c[0][2]) - float(c[0][1])
        print(f"bench: {done} attach/detach cycles of a client vif behind the firewall in {secs:.1f} s "
              f"({secs / max(done, 1):.2f} s per cycle){'' if done == cycles else f' (of {cycles}: time budget spent)'}")
    else:
        failures.append(f"cycles: {c} {fails}")
    rm = rig("removed")
    if rm and int(rm[0][0]) == done and int(rm[0][2]) == done:
        passed += 1
    else:
        failures.append(f"{done} cycles but removed/closed/retried: {rm}")
    start = [l for l in texts if l.startswith("RIG res-start ")]
    end = [l for l in texts if l.startswith("RIG res-end ")]
    if start and end and done >= 2:
        a, b = tf.resources(start[0]), tf.resources(end[0])
        print(f"bench: resources after the first cycle: {start[0][len('RIG res-start '):]}")
        print(f"bench: resources after the last cycle:  {end[0][len('RIG res-end '):]}")
        exact = ["frames-free", "grants-free", "maps", "evtchns", "clients"]
        moved = [k for k in exact if a.get(k) != b.get(k)]
        heap = b.get("heap-in-use", 0) - a.get("heap-in-use", 0)
        if moved or any(k not in a for k in exact):
            failures.append(f"resources not back where they started: {moved} ({a} -> {b})")
        elif abs(heap) > heap_slack:
            failures.append(f"heap in use moved by {heap} bytes over {done} cycles (slack {heap_slack})")
        else:
            passed += 1
            print(f"bench: heap in use moved by {heap} bytes over {done - 1} cycles")
    else:
        failures.append(f"no resources lines to compare ({len(start)}, {len(end)}, {done} cycles)")
    d, a2, back = rig("uplink-detach"), rig("uplink-attach"), rig("uplink-back")
    if d and a2 and d[0][0] == "rc=0" and a2[0][0] == "rc=0":
        passed += 1
    else:
        failures.append(f"uplink detach/attach: {d} {a2}")
    if back and back[0][0] == "ok" and len(back[0]) == 3:
        print(f"bench: uplink detached and attached -> the firewall's uplink back in "
              f"{float(back[0][2]) - float(back[0][1]):.1f} s")
    after = rig("after-uplink")
    if after and after[0][0] == "ok" and len(after[0]) == 3:
        print(f"bench: the client's probe through the firewall ok again "
              f"{float(after[0][2]) - float(after[0][1]):.1f} s after the uplink's detach")
    res = [l for l in texts if l.startswith("RIG res-uplink ")]
    if res:
        print(f"bench: resources with the uplink back: {res[0][len('RIG res-uplink '):]}")
    times = rig("times")
    if times:
        print(f"bench: per cycle, attach until both ends Connected min/mean/max {'/'.join(times[0][1:4])} s, "
              f"xl network-detach {'/'.join(times[0][5:8])} s")
    p = rig("panics")
    if p and p[0][0] == "0":
        passed += 1
    else:
        failures.append(f"the firewall panicked: {p}")
    return passed, failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(REPO / "target/images/amd64/firewall"))
    ap.add_argument("--type", default="pvh", choices=["pv", "pvh"], help="the firewall's type")
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--budget", type=float, default=6000,
                    help="stop cycling after this many seconds (the count done is reported)")
    ap.add_argument("--heap-slack", type=int, default=16384,
                    help="bytes the firewall's heap in use may move over the cycles")
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--log")
    args = ap.parse_args()
    image = Path(args.image)
    if not image.is_file():
        print(f"no image at {image}: run `make images`", file=sys.stderr)
        return 2
    domu = tf.linux_domu.build()
    guests = [
        (image, "firewall"),
        (REPO / "configs/firewall-client-pv.cfg", "firewall-client-pv.cfg"),
        (domu.kernel, "vmlinuz"),
        (domu.ramdisk, "linux-domu.cpio.gz"),
        (REPO / f"configs/firewall-{args.type}.cfg", f"firewall-{args.type}.cfg"),
    ]
    xenrig.exit_on_sigterm()
    result = xenrig.run_script(script(args.type, args.cycles, args.budget), guests=guests,
                               timeout=args.timeout, log=Path(args.log) if args.log else None)
    texts = [l for _, l in result.lines]
    passed, failures = check(texts, args.cycles, args.heap_slack)
    if result.rc != 0:
        failures.append(f"rig: dom0 script ended with rc {result.rc} (timeout 124, rig failure 125)")
    for f in failures:
        print(f"FAIL: {f}")
    print(f"test_firewall_cycles: {passed} passed, {len(failures)} failed")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
