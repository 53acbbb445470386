#!/usr/bin/env python3
"""The firewall VM on real Xen (issue 12): moat's `firewall` image started
with `xl create configs/firewall-<type>.cfg` as users start it, its uplink on
dom0's bridge, and a Debian Linux PV client domU behind it (the rig's Linux
domU, rig/domu/, started from configs/firewall-client-pv.cfg:
`vif=['backend=firewall,ip=10.137.0.10,...']`). dom0 serves two TCP ports
(8080, 8081); the client tries both every second (`moat.probe=`) and prints
each result when it changes. Checked, in one rig boot per type:

- the firewall boots, takes its uplink address from its vif's `ip` and its
  gateway/DNS from `extra=` (`firewall: forwarding: ...`);
- rules written by dom0 with stock `xenstore-write` under
  /local/domain/<firewall>/qubesdb/qubes-firewall/10-137-0-10/ (policy
  drop, 0000 accept tcp 8080) are loaded through the watch;
- the client reaches dom0:8080 through the firewall (allowed, NATed);
- dom0:8081 is rejected: the client's nc sees "No route to host" (ICMP
  admin-prohibited from the firewall), not a timeout;
- a rule change (0001 accept tcp 8081) written from dom0 takes effect
  without a restart: the client's next probe of 8081 succeeds (time from
  the write printed);
- with --uplink-restart [N] (not in make test): dom0's netback lets go of
  the firewall's uplink and takes it again (sysfs unbind + bind, as
  rig/dom0/netcase.sh does), N times: each time the firewall reconnects
  its uplink (or netback takes the rings it still offers and both ends
  stay Connected: "kept"), and the client still gets through afterwards;
- a vif without `ip=` (`xl network-attach client-a backend=firewall`) is
  refused and counted by the firewall;
- with --detach (not in make test: fails until the firewall removes a
  detached vif's backend directory without waiting for the frontend's,
  see docs/firewall.md): a moat client (netdemo) behind the firewall gets
  its vif detached with `xl network-detach` (libxl gives up after 10 s if
  the backend directory is still there): the detach must succeed and both
  directories be gone; on failure both states, traced every 0.2 s, are
  printed;
- with --cycles N (not in make test): a netdemo behind the firewall is
  created and destroyed N times (each must come up and its backend
  directory be removed); the firewall's `resources:` lines at the first
  and the last client close are printed.

Prints every failed check, then `test_firewall: N passed, M failed`; exit 1
on any failure. Needs `make images` (target/images/amd64/firewall, and
netdemo beside it for --detach and --cycles) and the rig cache
(rig/fetch.sh, run by xenrig)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xenrig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "domu"))
import linux_domu  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLIENT_IP = "10.137.0.10"
CLIENT_ENC = "10-137-0-10"
DOM0 = "10.99.0.1"
ALLOWED, DENIED = 8080, 8081

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
for port in @ALLOWED@ @DENIED@; do
  (while :; do nc -ll -p $port -e /tmp/answer; sleep 0.2; done) >/dev/null 2>&1 &
done
flog=/var/log/xen/console/guest-firewall.log
clog=/var/log/xen/console/guest-client-a.log
# (xenconsoled appends: each type starts with empty logs)
rm -f $flog $clog
log create firewall-@TYPE@ $(up)
xl create /guest/firewall-@TYPE@.cfg
if wait_for $flog "firewall: forwarding:" 90; then log forwarding ok $(up); else log forwarding FAIL; fi
fw=$(xl domid firewall)
base=/local/domain/$fw/qubesdb/qubes-firewall/@ENC@
xenstore-write $base/policy drop $base/0000 "action=accept proto=tcp dstports=@ALLOWED@-@ALLOWED@" $base ""
if wait_for $flog "rules of @IP@: 1 rules" 30; then log rules ok; else log rules FAIL; fi
log create client-a $(up)
xl create /guest/firewall-client-pv.cfg \
  'extra="console=hvc0 quiet moat.ip=@IP@/24 moat.gw=10.137.0.1 moat.probe=@DOM0@:@ALLOWED@,@DOM0@:@DENIED@"'
if wait_for $clog "probe @DOM0@:@ALLOWED@ ok" 240; then log allowed ok $(up); else
  log allowed FAIL
  xl list
  tail -n 30 $flog | sed 's/^/FWNOW /'
fi
if wait_for $clog "probe @DOM0@:@DENIED@ fail" 30; then log denied ok; else log denied FAIL; fi
t=$(up)
xenstore-write $base/0001 "action=accept proto=tcp dstports=@DENIED@-@DENIED@" $base ""
if wait_for $clog "probe @DOM0@:@DENIED@ ok" 30; then log rule-change ok $t $(up); else log rule-change FAIL; fi
if [ @UPLINK@ -gt 0 ]; then
# The uplink's backend restarted: dom0's xen-netback lets go of the vif and
# takes it again (as rig/dom0/netcase.sh does; the hotplug script run as
# libxl would), @UPLINK@ times. The firewall reconnects its uplink, serving
# the client meanwhile; the client's probes go on. Or netback takes the
# rings the firewall still offers and the firewall never sees it go
# ("kept", as Linux's netfront expects): then both ends must be Connected.
dev=$(ls /sys/bus/xen-backend/drivers/vif/ | grep "^vif-$fw-" | head -n 1)
devid=${dev##*-}
r=0
while [ $r -lt @UPLINK@ ]; do
r=$((r + 1))
lost0=$(grep -c "firewall: uplink lost" $flog)
on0=$(grep -c -E "firewall: uplink [0-9a-f:]+ on" $flog)
t=$(up)
echo "$dev" > /sys/bus/xen-backend/drivers/vif/unbind
sleep 1
echo "$dev" > /sys/bus/xen-backend/drivers/vif/bind
XENBUS_PATH=backend/vif/$fw/$devid XENBUS_TYPE=vif XENBUS_BASE_PATH=backend vif=vif$fw.$devid \
  bash /etc/xen/scripts/vif-bridge online
bstate() { xenstore-read backend/vif/$fw/$devid/state 2>&1; }
fstate() { xenstore-read /local/domain/$fw/device/vif/$devid/state 2>&1; }
if wait_count $flog "firewall: uplink lost" $((lost0 + 1)) 20; then
  if wait_count $flog "firewall: uplink [0-9a-f:]+ on" $((on0 + 1)) 60; then
    log uplink-restart ok $t $(up) reconnected $r
  else
    log uplink-restart FAIL $r backend=$(bstate) online=$(xenstore-read backend/vif/$fw/$devid/online 2>&1) \
      hotplug=$(xenstore-read backend/vif/$fw/$devid/hotplug-status 2>&1) frontend=$(fstate)
    tail -n 5 $flog | sed 's/^/FWNOW /'
  fi
elif [ "$(bstate)" = 4 ] && [ "$(fstate)" = 4 ]; then
  log uplink-restart ok $t $(up) kept $r
else
  log uplink-restart FAIL $r not-lost backend=$(bstate) frontend=$(fstate)
fi
sleep 8
last=$(grep "probe @DOM0@:@ALLOWED@" $clog | tail -n 1)
case "$last" in *" ok "*) log after-uplink-restart ok $r ;; *) log after-uplink-restart FAIL $r "$last" ;; esac
done
fi
timeout 60 xl network-attach client-a backend=firewall mac=00:16:3e:6d:6f:21
log attach-noip rc=$?
if wait_for $flog "firewall: vif [^ ]* refused" 20; then log refused ok; else log refused FAIL; fi
if [ @DETACH@ = 1 ]; then
  # A moat client's vif detached: its netfront must not write its state
  # into the directory libxl removed (the firewall removes the backend
  # directory only once the frontend's is gone, and libxl waits 10 s).
  dlog=/var/log/xen/console/guest-det.log
  rm -f $dlog
  xl create /guest/netdemo-pv.cfg 'name="det"' 'vif=["backend=firewall,ip=10.137.0.21,mac=00:16:3e:6d:6f:31"]' \
    'extra="netdemo.ip=10.137.0.21/24 netdemo.gw=10.137.0.1"' >/dev/null 2>&1
  if wait_for $dlog "netdemo: ready" 60; then
    did=$(xl domid det)
    t=$(up)
    # the frontend's and the backend's state every 0.2 s, for a failure
    touch /tmp/det-on
    (while [ -e /tmp/det-on ]; do echo "$(up) front=$(xenstore-read /local/domain/$did/device/vif/0/state 2>/dev/null || echo gone)" \
      "back=$(xenstore-read /local/domain/$fw/backend/vif/$did/0/state 2>/dev/null || echo gone)"; sleep 0.2; done > /tmp/det-trace) &
    timeout 30 xl network-detach det 0; rc=$?
    sleep 1
    rm -f /tmp/det-on
    front=$(xenstore-read /local/domain/$did/device/vif/0/state 2>/dev/null || echo gone)
    back=$(xenstore-read /local/domain/$fw/backend/vif/$did/0/state 2>/dev/null || echo gone)
    if [ $rc = 0 ] && [ "$front" = gone ] && [ "$back" = gone ]; then log detach ok $t $(up); else
      log detach FAIL rc=$rc front=$front back=$back
      sed 's/^/DETNOW /' $dlog | tail -n 10
      uniq -f1 /tmp/det-trace | sed 's/^/DETTRACE /'
    fi
  else
    log detach FAIL not-ready
  fi
  xl destroy det
fi
if [ @CYCLES@ -gt 0 ]; then
  # Clients come and go: a netdemo behind the firewall is created and
  # destroyed @CYCLES@ times; the firewall prints its resources after each
  # client closed. (`xl network-detach` is checked above.)
  nlog=/var/log/xen/console/guest-cyc.log
  t=$(up); k=0
  while [ $k -lt @CYCLES@ ]; do
    k=$((k + 1))
    rm -f $nlog
    xl create /guest/netdemo-pv.cfg 'name="cyc"' 'vif=["backend=firewall,ip=10.137.0.20,mac=00:16:3e:6d:6f:30"]' \
      'extra="netdemo.ip=10.137.0.20/24 netdemo.gw=10.137.0.1"' >/dev/null 2>&1
    wait_for $nlog "netdemo: ready" 60 || { log cycle-ready FAIL $k; xl destroy cyc; break; }
    timeout 60 xl destroy cyc || { log cycle-destroy FAIL $k; break; }
  done
  log cycles $k @CYCLES@ $t $(up)
  sleep 2
fi
xenstore-ls /local/domain/$fw/qubesdb | sed 's/^/RIG store /'
sed 's/^/FW /' $flog
sed 's/^/CLIENT /' $clog
xl list
xl destroy client-a
xl destroy firewall
log end @TYPE@
"""


def script(t: str, cycles: int = 0, uplink_restart: int = 0, detach: bool = False) -> str:
    s = SCRIPT
    for k, v in {"TYPE": t, "CYCLES": str(cycles), "UPLINK": str(uplink_restart),
                 "DETACH": "1" if detach else "0", "IP": CLIENT_IP, "ENC": CLIENT_ENC, "DOM0": DOM0,
                 "ALLOWED": str(ALLOWED), "DENIED": str(DENIED)}.items():
        s = s.replace(f"@{k}@", v)
    return s


def check(texts: list, t: str, cycles: int = 0, uplink_restart: int = 0, detach: bool = False) -> tuple:
    """(passed, failures) for one type's run."""
    passed, failures = 0, []

    def rig(word: str) -> list:
        return [l.split()[2:] for l in texts if l.startswith(f"RIG {word} ")]

    words = ["forwarding", "rules", "allowed", "denied", "rule-change", "refused"]
    if detach:
        words += ["detach"]
    for word in words:
        r = rig(word)
        if r and r[0] and r[0][0] == "ok":
            passed += 1
        else:
            failures.append(f"{t}: {word}: {r}")
    client = [l[len("CLIENT "):] for l in texts if l.startswith("CLIENT ")]
    denied = [l for l in client if f"probe {DOM0}:{DENIED} fail" in l]
    if denied and "No route to host" in denied[0]:
        passed += 1
    else:
        failures.append(f"{t}: the denied port was not rejected with ICMP admin-prohibited: {denied[:1]}")
    fw = [l[len("FW "):] for l in texts if l.startswith("FW ")]
    if any(re.search(r"firewall: vif \S+ refused", l) for l in fw):
        passed += 1
    else:
        failures.append(f"{t}: no 'vif ... refused' line from the firewall")
    bad = [l for l in fw if "panicked" in l]
    if bad:
        failures.append(f"{t}: the firewall panicked: {bad}")
    else:
        passed += 1
    rc = rig("rule-change")
    if rc and rc[0][0] == "ok" and len(rc[0]) == 3:
        print(f"bench: {t}: rule change written -> probe of the newly allowed port succeeded: "
              f"{float(rc[0][2]) - float(rc[0][1]):.1f} s (client probes once a second)")
    if cycles:
        c = rig("cycles")
        if c and c[0][0] == str(cycles):
            passed += 1
            print(f"bench: {t}: {cycles} create/destroy cycles of a netdemo behind the firewall in "
                  f"{float(c[0][3]) - float(c[0][2]):.1f} s")
        else:
            failures.append(f"{t}: create/destroy cycles: {c} {rig('cycle-ready')} {rig('cycle-destroy')}")
        removed = [l for l in fw if re.search(r"firewall: vif backend/vif/\d+/0 removed", l)]
        if len(removed) >= cycles:
            passed += 1
        else:
            failures.append(f"{t}: {len(removed)} backend directories removed after {cycles} cycles")
        res = [l for l in fw if "firewall: resources:" in l and "closed=0" not in l]
        if res:
            print(f"bench: {t}: resources at the first client close: {res[0]}")
            print(f"bench: {t}: resources at the last client close:  {res[-1]}")
    for word in ["uplink-restart", "after-uplink-restart"] if uplink_restart else []:
        r = rig(word)
        oks = [x for x in r if x and x[0] == "ok"]
        if len(oks) == uplink_restart and len(r) == uplink_restart:
            passed += 1
        else:
            failures.append(f"{t}: {word}: {len(oks)} of {uplink_restart} ok: {[x for x in r if x[:1] != ['ok']]}")
    d = rig("detach")
    if d and d[0][0] == "ok" and len(d[0]) == 3:
        print(f"bench: {t}: xl network-detach of a netdemo behind the firewall: "
              f"{float(d[0][2]) - float(d[0][1]):.1f} s")
    for ur in rig("uplink-restart"):
        if ur and ur[0] == "ok" and len(ur) == 5:
            print(f"bench: {t}: dom0 netback restart {ur[4]} of the uplink -> firewall's uplink "
                  f"{'back' if ur[3] == 'reconnected' else 'kept'}: {float(ur[2]) - float(ur[1]):.1f} s")
    return passed, failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(REPO / "target/images/amd64/firewall"))
    ap.add_argument("--types", default="pv", help="pv and/or pvh (the firewall's type; the client is PV)")
    ap.add_argument("--uplink-restart", type=int, nargs="?", const=1, default=0, metavar="N",
                    help="also restart dom0's netback of the firewall's uplink, N times per type "
                         "(default 1; not in make test, about 20 s each; see docs/firewall.md)")
    ap.add_argument("--cycles", type=int, default=0,
                    help="create/destroy cycles of a netdemo client, resources printed (not in make test)")
    ap.add_argument("--netdemo", help="the netdemo image, for --detach and --cycles "
                                       "(default: netdemo beside --image)")
    ap.add_argument("--detach", action="store_true",
                    help="also xl network-detach a netdemo's vif behind the firewall (not in make test: "
                         "fails until the firewall removes the backend directory by itself, docs/firewall.md)")
    ap.add_argument("--timeout", type=float, default=1500)
    ap.add_argument("--log")
    args = ap.parse_args()
    types = [t for t in args.types.split(",") if t]
    if not types or any(t not in ("pv", "pvh") for t in types):
        print("--types takes pv and/or pvh", file=sys.stderr)
        return 2
    image = Path(args.image)
    if not image.is_file():
        print(f"no image at {image}: run `make images`", file=sys.stderr)
        return 2
    domu = linux_domu.build()
    guests = [
        (image, "firewall"),
        (REPO / "configs/firewall-client-pv.cfg", "firewall-client-pv.cfg"),
        (domu.kernel, "vmlinuz"),
        (domu.ramdisk, "linux-domu.cpio.gz"),
    ] + [(REPO / f"configs/firewall-{t}.cfg", f"firewall-{t}.cfg") for t in types]
    detach = args.detach
    if args.cycles or detach:
        netdemo = Path(args.netdemo) if args.netdemo else image.parent / "netdemo"
        if not netdemo.is_file():
            print(f"no netdemo image at {netdemo}: run `make images`", file=sys.stderr)
            return 2
        guests += [(netdemo, "netdemo"), (REPO / "configs/netdemo-pv.cfg", "netdemo-pv.cfg")]
    xenrig.exit_on_sigterm()
    result = xenrig.run_script("\n".join(script(t, args.cycles, args.uplink_restart, detach) for t in types), guests=guests,
                               timeout=args.timeout, log=Path(args.log) if args.log else None)
    texts = [l for _, l in result.lines]
    passed, failures = 0, []
    if result.rc != 0:
        failures.append(f"rig: dom0 script ended with rc {result.rc} (timeout 124, rig failure 125)")
    for t in types:
        # each type's lines lie between its `RIG create firewall-<t>` and `RIG end <t>`
        try:
            a = next(i for i, l in enumerate(texts) if l.startswith(f"RIG create firewall-{t}"))
        except StopIteration:
            failures.append(f"{t}: never started")
            continue
        b = next((i for i, l in enumerate(texts) if l.startswith(f"RIG end {t}")), len(texts))
        p, f = check(texts[a:b + 1], t, args.cycles, args.uplink_restart, detach)
        passed += p
        failures += f
    for f in failures:
        print(f"FAIL: {f}")
    print(f"test_firewall: {passed} passed, {len(failures)} failed")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
