#!/usr/bin/env python3
"""Remote syslog from an image on real Xen (issue 17 item 3).

One rig boot: dom0 listens on TCP port 601 of its bridge address
(10.99.0.1, busybox nc, the raw stream kept in a file), netdemo (PV) starts
from configs/netdemo-pv.cfg with `syslog=tcp:10.99.0.1:601` added to its
command line, and once it printed `netdemo: ready` dom0 shows what arrived
(hexdump, so that the octet counts survive the serial console). The host
then splits the stream by its octet counts (RFC 6587) and checks the
messages as RFC 5424: the ready line at severity info from APP-NAME moat
with MSGID netdemo, a timestamp from Xen's wallclock. The collector is
then killed and netdemo must keep answering pings (the remote log never
blocks the service).

Then the firewall VM (PVH, configs/firewall-pvh.cfg) starts with
`syslog=udp:10.99.0.1:5514`; dom0's busybox has no UDP listener, so
rig/dom0/udp_sink.c (built here with `gcc -static`) prints each datagram
it gets as hex, and the host checks them as RFC 5424 messages: the
firewall's `forwarding` line among them, from its uplink.

usage: python3 rig/test_syslog.py [--image PATH] [--timeout S] [--log FILE]
Prints `N passed, M failed`; exit status 0 when every check held.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "rig"))
import xenrig  # noqa: E402

SCRIPT = r"""
(nc -l -p 601 > /tmp/syslog.tcp 2>/dev/null) &
NC=$!
sleep 1
xl create /guest/netdemo-pv.cfg 'extra="netdemo.ip=10.99.0.2/24 netdemo.gw=10.99.0.1 syslog=tcp:10.99.0.1:601 syslog.level=info"'
log=/var/log/xen/console/guest-netdemo-pv.log
i=0; while [ $i -lt 300 ] && ! grep -aq 'netdemo: ready' $log 2>/dev/null; do sleep 0.2; i=$((i + 1)); done
grep -a 'netdemo: ready' $log | head -n 1 | sed 's/^/RIG console /'
i=0; while [ $i -lt 100 ] && ! grep -aq 'netdemo: ready' /tmp/syslog.tcp 2>/dev/null; do sleep 0.2; i=$((i + 1)); done
echo "RIG stream bytes $(wc -c < /tmp/syslog.tcp)"
hexdump -v -e '32/1 "%02x" "\n"' /tmp/syslog.tcp | sed 's/^/RIG hex /'
kill $NC 2>/dev/null
sleep 2
ping -c 5 -W 2 10.99.0.2 >/dev/null 2>&1; echo "RIG ping-after-collector-gone rc=$?"
xl destroy netdemo-pv
(/guest/udp_sink 5514 90 > /tmp/syslog.udp 2>&1) &
sleep 1
xl create /guest/firewall-pvh.cfg 'extra="firewall.gw=10.99.0.1 firewall.dns=10.99.0.1 firewall.client-gw=10.137.0.1 syslog=udp:10.99.0.1:5514"'
flog=/var/log/xen/console/guest-firewall.log
i=0; while [ $i -lt 300 ] && ! grep -aq 'firewall: forwarding' $flog 2>/dev/null; do sleep 0.2; i=$((i + 1)); done
grep -a 'firewall: forwarding' $flog | head -n 1 | sed 's/^/RIG fwconsole /'
i=0; while [ $i -lt 100 ] && ! grep -q . /tmp/syslog.udp 2>/dev/null; do sleep 0.2; i=$((i + 1)); done
sleep 2
sed 's/^/RIG /' /tmp/syslog.udp
xl destroy firewall
"""


def messages(stream: bytes) -> list:
    """The messages of an octet-counted stream (RFC 6587 3.4.1)."""
    out = []
    while stream:
        sp = stream.find(b" ")
        if sp <= 0 or not stream[:sp].isdigit():
            raise ValueError(f"not an octet count at {stream[:20]!r}")
        n = int(stream[:sp])
        body = stream[sp + 1:sp + 1 + n]
        if len(body) != n:
            raise ValueError("truncated frame")
        out.append(body.decode("utf-8", "replace"))
        stream = stream[sp + 1 + n:]
    return out


#: An RFC 5424 message as moat writes it: PRI, version, TIMESTAMP (RFC 3339
#: UTC or -), HOSTNAME, APP-NAME, PROCID, MSGID, no structured data, MSG.
RFC5424 = re.compile(r"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) - (.*)$", re.S)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(REPO / "target/images/amd64/netdemo"))
    ap.add_argument("--firewall", default=str(REPO / "target/images/amd64/firewall"))
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--log")
    a = ap.parse_args(argv)
    ap_sink = Path(tempfile.mkdtemp(prefix="moat-syslog-")) / "udp_sink"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(ap_sink), str(REPO / "rig/dom0/udp_sink.c")], check=True)
    guests = [(a.image, "netdemo"), (str(REPO / "configs/netdemo-pv.cfg"), "netdemo-pv.cfg"),
              (a.firewall, "firewall"), (str(REPO / "configs/firewall-pvh.cfg"), "firewall-pvh.cfg"),
              (str(ap_sink), "udp_sink")]
    r = xenrig.run_script(SCRIPT, guests, timeout=a.timeout, log=Path(a.log) if a.log else None)
    passed = failed = 0

    def check(ok: bool, what: str) -> None:
        nonlocal passed, failed
        print(f"{'PASS' if ok else 'FAIL'}: {what}")
        if ok:
            passed += 1
        else:
            failed += 1

    hexdata = "".join(l.split("RIG hex ", 1)[1].strip() for _, l in r.lines if "RIG hex " in l)
    stream = bytes.fromhex(hexdata) if hexdata else b""
    check(r.first(r"RIG console .*netdemo: ready") is not None, "netdemo started with syslog= on its command line")
    try:
        msgs = messages(stream)
        check(bool(msgs), f"the TCP stream splits into {len(msgs)} octet-counted messages")
    except ValueError as e:
        msgs = []
        check(False, f"the TCP stream is octet-counted: {e}")
    ready = [m for m in msgs if "netdemo: ready" in m]
    check(bool(ready), "the ready line reached the collector")
    for m in ready[:1]:
        f = RFC5424.match(m)
        check(f is not None, f"RFC 5424 header: {m[:100]!r}")
        if f:
            pri, ts, host, app, procid, msgid, text = f.groups()
            check(pri == "30", f"PRI {pri} = daemon.info (30)")
            check(app == "moat" and msgid == "netdemo", f"APP-NAME {app}, MSGID {msgid}")
            check(re.match(r"^20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", ts) is not None,
                  f"TIMESTAMP {ts} from Xen's wallclock")
    check(r.first(r"RIG ping-after-collector-gone rc=0") is not None,
          "netdemo answers pings after the collector went away")
    check(r.first(r"RIG fwconsole .*firewall: forwarding") is not None,
          "the firewall started with syslog=udp:... on its command line")
    datagrams = [bytes.fromhex(l.split("RIG udp ", 1)[1].strip()).decode("utf-8", "replace")
                 for _, l in r.lines if "RIG udp " in l]
    check(bool(datagrams), f"{len(datagrams)} UDP datagrams reached dom0's port 5514")
    fwd = [m for m in datagrams if "firewall: forwarding" in m]
    check(bool(fwd), "the firewall's forwarding line among them")
    for m in fwd[:1]:
        f = RFC5424.match(m)
        check(f is not None and f.group(1) == "30" and f.group(4) == "moat" and f.group(6) == "firewall",
              f"as RFC 5424 daemon.info from moat, MSGID firewall: {m[:110]!r}")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
