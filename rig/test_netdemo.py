#!/usr/bin/env python3
"""Real-Xen test of moat's netfront through the netdemo image.

One rig boot (rig/xenrig.py); in dom0, rig/dom0/netcase.sh starts
configs/netdemo-<type>.cfg (one vif on the bridge xenbr0, Linux netback in
dom0) and, from dom0: pings it, checks TCP and UDP echo, pulls MIB MiB
from its TCP source and pushes MIB MiB of random data into its TCP sink,
comparing CRC-32s computed on both sides, and (PV) detaches and
re-attaches the vif while a ping runs, then restarts dom0's netback for
the vif (sysfs unbind + bind, and the hotplug script). Prints every failed assertion, the
throughput figures (never asserted) and `N passed, M failed`.

With --bridge MIB, netdemo also runs behind moat's driver domain netbridge
(configs/netbridge-pv.cfg, `vif=['backend=netbridge-pv,...']`): moat
netfront <-> moat netback.

With --linux, a Debian Linux PV domU (configs/linux-pv.cfg, the initramfs of
rig/domu/linux_domu.py, serving the same ports as netdemo) is the reference:
on xenbr0 (Linux netfront <-> Linux netback) the same ping and TCP jobs,
domU -> domU TCP from netdemo-pv through dom0's bridge, and 64-byte UDP
frames from dom0's pktgen into netdemo-pv and into it; with --bridge as
well, the Linux domU behind netbridge (Linux netfront <-> moat netback,
`vif=['backend=netbridge-pv,...']` in its config, or with --linux-attach
given by `xl network-attach ... backend=netbridge-pv` once it booted):
ping, TCP each way, and domU -> domU TCP from the netdemo behind netbridge
through netbridge. The CRCs and counts are asserted; a table puts moat's
figures beside Linux's from the same run (printed, never asserted).

With --linux-bridged (and --bridge), only that Linux domU behind netbridge
runs, with its checks and none of the references (what `make test` runs).
Behind netbridge (--linux or --linux-bridged), the Linux domU also takes
another MAC than its vif's for a moment: its pings must fail and netbridge
print the drop (each vif is bound to its `mac`), and work again with its
own MAC back.

usage: python3 rig/test_netdemo.py [--image PATH] [--types pv,pvh]
          [--mib N] [--pvh-mib N] [--pings N] [--bridge MIB]
          [--linux [--linux-attach] | --linux-bridged]
          [--timeout S] [--log FILE]
Exit status: 0 when every assertion held, 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xenrig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "domu"))
import linux_domu  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


#: The netdemo behind the moat driver domain (--bridge).
BRIDGED = "netdemo-bridged"
BRIDGED_IP = "10.99.0.3"
BRIDGED_MAC = "00:16:3e:6d:6f:03"

#: The Linux domU on xenbr0 (--linux) and behind netbridge (--linux --bridge).
LINUX = "linux-pv"
LINUX_IP = "10.99.0.4"
LINUX_MAC = "00:16:3e:6d:6f:04"
LINUX_BRIDGED = "linux-bridged"
LINUX_BRIDGED_IP = "10.99.0.5"
LINUX_BRIDGED_MAC = "00:16:3e:6d:6f:05"
#: Pings to the Linux domU (a check, not a benchmark: kept short).
LINUX_PINGS = 200
#: netcase.sh's settings for the Linux domU (rig/domu/init).
LINUX_ENV = "NETCASE_READY='linuxdomu: ready' NETCASE_READY_WAIT=150 NETCASE_UDP=0 NETCASE_KEEP=1"
#: netdemo-pv's address and MAC (configs/netdemo-pv.cfg).
NETDEMO_IP = "10.99.0.2"
NETDEMO_MAC = "00:16:3e:6d:6f:01"

BRIDGE_START = r"""
echo "RIG create netbridge-pv"
xl create /guest/netbridge-pv.cfg
blog=/var/log/xen/console/guest-netbridge-pv.log
i=0
while [ $i -lt 300 ]; do grep -q "netbridge: uplink" $blog 2>/dev/null && break; sleep 0.2; i=$((i + 1)); done
"""

BRIDGE_END = r"""
blog=/var/log/xen/console/guest-netbridge-pv.log
sed 's/^/BRIDGE /' $blog
xl destroy netbridge-pv
echo "RIG end netbridge-pv"
"""


#: A MAC the Linux domU behind netbridge takes for a moment (--linux-bridged):
#: its vif is bound to LINUX_BRIDGED_MAC, so netbridge must drop its frames
#: and say so once (issue 14 item 2).
SPOOF_MAC = "00:16:3e:5e:00:99"

#: The spoofing check, run in the Linux domU through its console
#: (rig/domu/init's `@ID COMMAND`): its eth* takes SPOOF_MAC and pings the
#: bridged netdemo (must fail), takes its own MAC back and pings again (must
#: work). Prints `RIG spoof linux-bridged PING_RC DROPPED_LINES` and
#: `RIG unspoof linux-bridged PING_RC`.
SPOOF_BRIDGED = r"""
dlog=/var/log/xen/console/guest-linux-bridged.log
blog=/var/log/xen/console/guest-netbridge-pv.log
tty=$(xenstore-read /local/domain/$(xl domid linux-bridged)/console/tty)
spoof() {
  printf '@%s %s\n' "$1" "$2" >"$tty"
  i=0; while [ $i -lt 300 ] && ! grep -aq "linuxdomu: cmd $1 rc=" $dlog; do sleep 0.2; i=$((i + 1)); done
  grep -a "linuxdomu: cmd $1: ping-rc=" $dlog | tail -n 1 | tr -d '\r' | sed 's/.*ping-rc=//'
}
r=$(spoof spoof 'i=$(ls /sys/class/net | grep ^eth | head -n 1); ip link set $i down; ip link set $i address @SPOOF@; ip link set $i up; ping -c 3 -W 1 @IP@ >/dev/null 2>&1; echo ping-rc=$?')
echo "RIG spoof linux-bridged ${r:-none} $(grep -ac 'frame from @SPOOF@ dropped: its Ethernet source' $blog)"
r=$(spoof unspoof 'i=$(ls /sys/class/net | grep ^eth | head -n 1); ip link set $i down; ip link set $i address @MAC@; ip link set $i up; ping -c 3 -W 2 @IP@ >/dev/null 2>&1; echo ping-rc=$?')
echo "RIG unspoof linux-bridged ${r:-none}"
"""


def netcase_limit(mib: int) -> int:
    """dom0's limit for one netcase.sh run moving MIB MiB each way, seconds:
    about ten times what a loaded rig needs (pings, echo, both transfers,
    a detach and a netback restart), so that only a hang reaches it."""
    return 300 + 12 * mib


def dom0_cases(types: list, mib: dict, pings: dict, detach: dict, bridge: int, linux: bool = False,
               linux_attach: bool = False, linux_bridged: bool = False,
               sink_crc: Optional[dict] = None) -> list:
    """The cases of the dom0 script (xenrig.Case): one netcase.sh run per guest
    type; with `bridge` MiB, also one through the moat driver domain; with
    `linux`, the Linux domU beside netdemo-pv (and beside the bridged
    netdemo). With `linux_attach`, the Linux domU behind netbridge boots
    without a vif and gets it by `xl network-attach` once its netfront is
    loaded. With `linux_bridged` (and `bridge`), only the Linux domU behind
    netbridge runs, without the Linux references on xenbr0. With `sink_crc`
    ({MiB: CRC-32 of MiB/16 copies of /guest/sinkdata}), every netcase.sh
    run sends that file to the sink and takes its CRC from there.

    Each run is a case of rig/dom0/case.sh under its own limit: one that
    hangs is cut there, fails with what was running, and the rest go on."""
    cases = []
    keep = "NETCASE_KEEP=1 " if linux or linux_bridged else ""
    for t in types:
        cases.append(xenrig.Case(f"netdemo-{t}", netcase_limit(mib[t]), [
            f"bash /guest/netcase.sh netdemo-{t} /guest/netdemo-{t}.cfg "
            f"{mib[t]} {pings[t]} {1 if detach[t] else 0}"
        ]))
        if t == "pv" and linux:
            cases.append(xenrig.Case(LINUX, netcase_limit(mib[t]), [
                f"NETCASE_IP={LINUX_IP} NETCASE_MAC={LINUX_MAC} {LINUX_ENV} bash /guest/netcase.sh "
                f"{LINUX} /guest/linux-pv.cfg {mib[t]} {LINUX_PINGS} 0"
            ]))
            # a fresh netdemo-pv for the pair (the one above had its vif
            # detached and re-attached)
            cases.append(xenrig.Case("pair-pv", netcase_limit(mib[t]), [
                "bash /guest/netbench.sh start netdemo-pv /guest/netdemo-pv.cfg 'netdemo: ready' 60",
                f"bash /guest/netbench.sh pull {LINUX} {LINUX_IP} netdemo-pv {NETDEMO_IP} {mib[t]}",
                f"bash /guest/netbench.sh pps netdemo-pv {NETDEMO_IP} {NETDEMO_MAC} netdemo",
                f"bash /guest/netbench.sh pps {LINUX} {LINUX_IP} {LINUX_MAC} linux",
                f"bash /guest/netbench.sh iperf3 netdemo-pv {NETDEMO_IP} {IPERF3_SECONDS}",
                f"bash /guest/netbench.sh iperf3 {LINUX} {LINUX_IP} {IPERF3_SECONDS}",
            ], after=LINUX))
            cases.append(xenrig.Case("pair-pv-end", 120, [f"xl destroy {LINUX}; xl destroy netdemo-pv"]))
    if bridge:
        cases.append(xenrig.Case("netbridge-start", 180, BRIDGE_START.strip().splitlines(), setup=True))
        cases.append(xenrig.Case(BRIDGED, netcase_limit(bridge), [
            f"{keep}NETCASE_IP={BRIDGED_IP} NETCASE_MAC={BRIDGED_MAC} bash /guest/netcase.sh {BRIDGED} "
            f"/guest/netdemo-pv.cfg {bridge} 200 0 "
            f"'vif=[\"backend=netbridge-pv,mac={BRIDGED_MAC}\"]' 'extra=\"netdemo.ip={BRIDGED_IP}/24\"'"
        ], after="netbridge-start"))
        if linux or linux_bridged:
            if linux_attach:
                vif = "'vif=[]'"
                attach = (f"NETCASE_ATTACH='backend=netbridge-pv mac={LINUX_BRIDGED_MAC}' "
                          "NETCASE_ATTACH_AFTER='linuxdomu: waiting for eth0' ")
            else:
                vif = f"'vif=[\"backend=netbridge-pv,mac={LINUX_BRIDGED_MAC}\"]'"
                attach = ""
            cases.append(xenrig.Case(LINUX_BRIDGED, netcase_limit(bridge), [
                f"NETCASE_IP={LINUX_BRIDGED_IP} NETCASE_MAC={LINUX_BRIDGED_MAC} {LINUX_ENV} {attach}"
                f"bash /guest/netcase.sh {LINUX_BRIDGED} /guest/linux-pv.cfg {bridge} 200 0 {vif} "
                f"'extra=\"console=hvc0 quiet moat.ip={LINUX_BRIDGED_IP}/24\"'"
            ], after="netbridge-start"))
            cases.append(xenrig.Case("pull-bridged", netcase_limit(bridge), [
                f"bash /guest/netbench.sh pull {LINUX_BRIDGED} {LINUX_BRIDGED_IP} {BRIDGED} {BRIDGED_IP} {bridge}"
            ], after=LINUX_BRIDGED))
            spoof = (SPOOF_BRIDGED.replace("@SPOOF@", SPOOF_MAC).replace("@MAC@", LINUX_BRIDGED_MAC)
                     .replace("@IP@", BRIDGED_IP))
            cases.append(xenrig.Case("spoof-bridged", 150, spoof.strip().splitlines(), after=LINUX_BRIDGED))
            cases.append(xenrig.Case("bridged-end", 120, [f"xl destroy {LINUX_BRIDGED}; xl destroy {BRIDGED}"]))
        cases.append(xenrig.Case("netbridge-end", 120, BRIDGE_END.strip().splitlines()))
    if sink_crc:
        def with_crc(m: re.Match) -> str:
            return f"NETCASE_SINK_CRC={sink_crc[int(m.group(1))]} {m.group(0)}"
        for c in cases:
            c.body = [re.sub(r"bash /guest/netcase\.sh \S+ \S+ (\d+) ", with_crc, l) for l in c.body]
    return cases


def dom0_script(*args, **kwargs) -> str:
    """The dom0 script of dom0_cases(*args, **kwargs)."""
    return xenrig.cases_script(dom0_cases(*args, **kwargs),
                               header=["# generated by rig/test_netdemo.py", "set -u"], footer=["xl list"])


#: Bytes of /guest/sinkdata: netcase.sh sends MIB/16 copies to the sink.
SINK_DATA_BYTES = 16 << 20


def sink_crcs(data: bytes, mibs: list) -> dict:
    """{MiB: zlib CRC-32 of MiB/16 copies of `data`} (what the sink must
    report)."""
    out = {}
    for m in set(mibs):
        crc = 0
        for _ in range(m // 16):
            crc = zlib.crc32(data, crc)
        out[m] = f"{crc:08x}"
    return out


def segment(texts: list, name: str) -> list:
    """Lines from `RIG create NAME` to `RIG end NAME`."""
    out, inside = [], False
    for line in texts:
        if line == f"RIG create {name}":
            inside = True
        if inside:
            out.append(line)
            if line == f"RIG end {name}":
                break
    return out


def rig_fields(seg: list, what: str, name: str) -> list:
    """Fields after `RIG WHAT NAME` of the first such line, or []."""
    prefix = f"RIG {what} {name}"
    for line in seg:
        if line == prefix or line.startswith(prefix + " "):
            return line[len(prefix):].split()
    return []


def check_type(name: str, texts: list, mib: int, pings: int, detach: bool, bench: list,
               figures: Optional[dict] = None, kind: str = "netdemo") -> tuple:
    """Assertions for one netcase.sh run: (passed, failures). `kind` is
    "netdemo" or "linux" (the Linux domU of rig/domu: its lines start with
    `linuxdomu:` and it has no UDP echo). Throughput goes to `bench` as
    text and to `figures` as {(name, "sink"|"source"|"ready"): value}."""
    figures = {} if figures is None else figures
    tag = "linuxdomu" if kind == "linux" else "netdemo"
    seg = segment(texts, name)
    guest = [l[len("GUEST "):] for l in seg if l.startswith("GUEST ")]
    passed, failures = 0, []

    def check(ok: bool, what: str) -> None:
        nonlocal passed
        if ok:
            passed += 1
        else:
            failures.append(f"{name}: {what}")

    check(bool(seg), "netcase.sh never started it")
    ready = rig_fields(seg, "ready", name)
    check(bool(ready), f"no `{tag}: ready` on its console")
    if not ready:
        return passed, failures + [f"{name}: guest log: {guest[-10:]}"]
    bench.append(f"{name}: xl create -> ready {ready[0]} s")
    figures[(name, "ready")] = float(ready[0])
    p = rig_fields(seg, "ping", name)
    drops = [l[len(f"RIG ping-drops {name} "):] for l in seg if l.startswith(f"RIG ping-drops {name} ")]
    check(p == [str(pings), str(pings)], f"{pings} pings, all answered (sent, received = {p})"
          + (f"; dom0 interfaces that dropped frames: {drops}" if drops else ""))
    check(rig_fields(seg, "tcp-echo", name) == ["ok"], "TCP echo on port 7")
    udp = rig_fields(seg, "udp-echo", name)
    if kind == "linux":
        check(udp == ["skipped"], f"UDP echo skipped for the Linux domU (busybox nc has no UDP): {udp}")
    else:
        check(udp == ["ok"], "UDP echo on port 7")
    nbytes = mib * 1048576

    src = rig_fields(seg, "source", name)
    gsrc = [m for m in (re.search(tag + r": source: (\d+) bytes crc32 ([0-9a-f]{8})", l) for l in guest) if m]
    check(len(src) == 3 and src[0] == str(nbytes), f"dom0 received {nbytes} bytes from the source (got {src})")
    src_ok = bool(gsrc) and len(src) == 3 and gsrc[0].group(1) == str(nbytes) and gsrc[0].group(2) == src[1]
    check(src_ok, f"source CRC-32: guest sent {[g.group(0) for g in gsrc]}, dom0 received {src[1:2]}")
    if src_ok and float(src[2]) > 0:
        figures[(name, "source")] = nbytes * 8 / float(src[2]) / 1e6
        bench.append(f"{name}: guest -> dom0 TCP {figures[(name, 'source')]:.1f} Mbit/s ({mib} MiB in {src[2]} s)")

    snk = rig_fields(seg, "sink", name)
    gsnk = [m for m in (re.search(tag + r": sink: (\d+) bytes crc32 ([0-9a-f]{8})", l) for l in guest) if m]
    snk_ok = bool(gsnk) and len(snk) == 3 and gsnk[0].group(1) == str(nbytes) and gsnk[0].group(2) == snk[1]
    check(snk_ok, f"sink CRC-32: dom0 sent {snk[:2]}, guest received {[g.group(0) for g in gsnk]}")
    if snk_ok and float(snk[2]) > 0:
        figures[(name, "sink")] = nbytes * 8 / float(snk[2]) / 1e6
        bench.append(f"{name}: dom0 -> guest TCP {figures[(name, 'sink')]:.1f} Mbit/s ({mib} MiB in {snk[2]} s)")

    if detach:
        r = rig_fields(seg, "reattach", name)
        check(r[:1] == ["reconnected"], f"vif detach + attach: the guest reconnected ({r})")
        a = rig_fields(seg, "after-reattach", name)
        check(a and int(a[0]) >= 19, f"pings after re-attach: {a} of 20 answered")
        d = rig_fields(seg, "during-reattach", name)
        if r[:1] == ["reconnected"]:
            bench.append(f"{name}: vif re-attached, guest reconnected after {r[1]} s; background ping {d}")
        r = rig_fields(seg, "netback-restart", name)
        states = " ".join(rig_fields(seg, "netback-restart-states", name))
        # "kept": netback re-attached to the rings the guest still offered
        # (the guest never saw it go InitWait); Linux's netfront relies on
        # that too. Either way the pings below prove the new data path.
        check(r[:1] in (["reconnected"], ["kept"]),
              f"dom0 netback restart (unbind + bind): the guest reconnected or kept its rings"
              f" ({r}{'; ' + states if states else ''})")
        a = rig_fields(seg, "after-restart", name)
        check(a and int(a[0]) >= 19, f"pings after the netback restart: {a} of 20 answered")
        if r[:1] in (["reconnected"], ["kept"]):
            bench.append(f"{name}: dom0 netback restarted, guest {r[0]} after {r[1]} s")
    panics = [l for l in guest if "panicked" in l or "FATAL" in l or "Kernel panic" in l or "FAIL" in l]
    check(not panics, f"guest panicked or failed: {panics}")
    return passed, failures


def check_spoof(texts: list) -> tuple:
    """The Linux domU behind netbridge with another MAC than its vif's: its
    pings fail and netbridge prints the drop; with its own MAC back they
    work (SPOOF_BRIDGED)."""
    passed, failures = 0, []
    spoof = rig_fields(texts, "spoof", LINUX_BRIDGED)
    if len(spoof) == 2 and spoof[0] not in ("0", "none") and spoof[1].isdigit() and int(spoof[1]) >= 1:
        passed += 1
    else:
        failures.append(f"{LINUX_BRIDGED}: with MAC {SPOOF_MAC} its pings must fail and netbridge print "
                        f"the drop once (ping rc, drop lines): {spoof}")
    unspoof = rig_fields(texts, "unspoof", LINUX_BRIDGED)
    if unspoof == ["0"]:
        passed += 1
    else:
        failures.append(f"{LINUX_BRIDGED}: with its own MAC back its pings must work (ping rc): {unspoof}")
    return passed, failures


def check_pull(client: str, server: str, texts: list, mib: int, bench: list, figures: dict) -> tuple:
    """Assertions for one `netbench.sh pull` (domU -> domU TCP): the client
    received MIB MiB + 7 bytes whose CRC-32 is the one the server printed."""
    f = rig_fields(texts, "pull", client)
    nbytes = mib * 1048576 + 7
    ok = len(f) == 5 and f[0] == server and f[1] == str(nbytes) and f[2] == f[4] and re.fullmatch(r"[0-9a-f]{8}", f[2])
    if len(f) == 5 and ok and float(f[3]) > 0:
        figures[(client, "pull")] = nbytes * 8 / float(f[3]) / 1e6
        bench.append(f"{server} -> {client} TCP {figures[(client, 'pull')]:.1f} Mbit/s ({nbytes} bytes in {f[3]} s)")
    if ok:
        return 1, []
    return 0, [f"{client}: pulled {nbytes} bytes from {server}'s source, CRC as the server's "
               f"(SERVER BYTES CRC SECONDS SERVER_CRC = {f})"]


def check_pps(name: str, texts: list, bench: list, figures: dict) -> tuple:
    """Assertions for one `netbench.sh pps`: pktgen sent frames and the
    guest counted some of them (never more than were sent)."""
    f = rig_fields(texts, "pps", name)
    ok = len(f) == 3 and all(x.isdigit() for x in f) and int(f[0]) > 0 and 0 < int(f[2]) <= int(f[0])
    if ok and int(f[1]) > 0:
        sent, usec, got = (int(x) for x in f)
        figures[(name, "pps")] = got / (usec / 1e6)
        bench.append(f"{name}: 64-byte UDP from dom0's pktgen: sent {sent} in {usec / 1e6:.2f} s "
                     f"({sent / (usec / 1e6):.0f}/s), guest counted {got} ({figures[(name, 'pps')]:.0f}/s)")
        return 1, []
    return 0, [f"{name}: 64-byte UDP flood: pktgen sent some, the guest counted some (SENT USEC RECEIVED = {f})"]


#: Seconds of each iperf3 run (each direction, each guest).
IPERF3_SECONDS = 10


def check_iperf3(name: str, texts: list, bench: list, figures: dict) -> tuple:
    """Assertions for one `netbench.sh iperf3`: dom0's iperf3 completed a
    test each way against the guest's iperf3 server."""
    passed, failures = 0, []
    for direction in ("to-guest", "from-guest"):
        f = next((l.split()[4:] for l in texts if l.startswith(f"RIG iperf3 {name} {direction} ")), [])
        try:
            rate = float(f[0]) if len(f) == 1 else None
        except ValueError:
            rate = None
        if rate is None:
            failures.append(f"{name}: iperf3 {direction}: dom0's iperf3 completed a test ({f})")
            continue
        passed += 1
        figures[(name, f"iperf3-{direction}")] = rate
        bench.append(f"{name}: iperf3 {direction} {rate:.1f} Mbit/s ({IPERF3_SECONDS} s, dom0's iperf3 client)")
    return passed, failures


#: The benchmark table: (job, moat's figure key, Linux's figure key, unit).
TABLE = [
    ("dom0 -> guest TCP, iperf3 both ends, dom0's Linux netback; netfront moat vs Linux",
     ("netdemo-pv", "iperf3-to-guest"), (LINUX, "iperf3-to-guest"), "Mbit/s"),
    ("guest -> dom0 TCP, iperf3 both ends, dom0's Linux netback; netfront moat vs Linux",
     ("netdemo-pv", "iperf3-from-guest"), (LINUX, "iperf3-from-guest"), "Mbit/s"),
    # nc-based rows: busybox nc caps the Linux side (kept for the
    # CRC-checked transfers' figures; the iperf3 rows above are the fair
    # comparison).
    ("dom0 -> guest TCP, nc sink (Linux capped by busybox nc)", ("netdemo-pv", "sink"), (LINUX, "sink"), "Mbit/s"),
    ("guest -> dom0 TCP, nc source (Linux capped by busybox nc)", ("netdemo-pv", "source"), (LINUX, "source"),
     "Mbit/s"),
    ("domU -> domU TCP (netdemo -> Linux domU); driver domain netbridge vs dom0 Linux",
     (LINUX_BRIDGED, "pull"), (LINUX, "pull"), "Mbit/s"),
    ("dom0 -> Linux domU TCP; its netback moat netbridge vs dom0 Linux",
     (LINUX_BRIDGED, "sink"), (LINUX, "sink"), "Mbit/s"),
    ("Linux domU -> dom0 TCP; its netback moat netbridge vs dom0 Linux",
     (LINUX_BRIDGED, "source"), (LINUX, "source"), "Mbit/s"),
    ("dom0 -> guest 64-byte UDP, dom0's Linux netback; netfront moat vs Linux",
     ("netdemo-pv", "pps"), (LINUX, "pps"), "packets/s"),
    ("xl create -> serving (s; lower is better)", ("netdemo-pv", "ready"), (LINUX, "ready"), "s"),
]


def table(figures: dict) -> list:
    """The benchmark rows as text: moat's figure, Linux's, moat / Linux."""
    out = [f"{'job':<84} {'moat':>10} {'Linux':>10} {'moat/Linux':>10}"]
    for job, m, l, unit in TABLE:
        a, b = figures.get(m), figures.get(l)
        if a is None and b is None:
            continue
        fa = f"{a:.1f}" if a is not None else "-"
        fb = f"{b:.1f}" if b is not None else "-"
        ratio = f"{a / b:.2f}" if a is not None and b else "-"
        out.append(f"{job + ' (' + unit + ')':<84} {fa:>10} {fb:>10} {ratio:>10}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(REPO / "target/images/amd64/netdemo"))
    ap.add_argument("--types", default="pv,pvh")
    ap.add_argument("--mib", type=int, default=64, help="MiB each way for PV (PVH: a quarter)")
    ap.add_argument("--pvh-mib", type=int, help="MiB each way for PVH (default: a quarter of --mib)")
    ap.add_argument("--pings", type=int, default=1000, help="pings for PV (PVH: a tenth)")
    ap.add_argument("--bridge", type=int, default=0, metavar="MIB",
                    help="also run netdemo behind the moat driver domain (netbridge), MIB each way")
    ap.add_argument("--bridge-image", default=str(REPO / "target/images/amd64/netbridge"))
    ap.add_argument("--linux", action="store_true",
                    help="also run the Linux domU reference (needs pv in --types; behind netbridge too with --bridge)")
    ap.add_argument("--linux-attach", action="store_true",
                    help="give the Linux domU behind netbridge its vif with `xl network-attach` after it "
                         "booted, not in its config (netbridge gives up on a vif whose frontend takes over "
                         "20 s to connect: a Linux boot under TCG)")
    ap.add_argument("--linux-bridged", action="store_true",
                    help="with --bridge: a Linux domU behind netbridge (Linux netfront <-> moat netback), "
                         "without the Linux references of --linux")
    ap.add_argument("--timeout", type=float, default=1500)
    ap.add_argument("--log")
    args = ap.parse_args(argv)
    types = [t for t in args.types.split(",") if t]
    if not types or any(t not in ("pv", "pvh") for t in types) or args.mib % 16 or args.bridge % 16:
        print("--types takes pv and/or pvh; --mib a multiple of 16", file=sys.stderr)
        return 2
    if args.linux_bridged and not args.bridge:
        print("--linux-bridged needs --bridge", file=sys.stderr)
        return 2
    if args.linux and "pv" not in types:
        print("--linux runs beside netdemo-pv: --types must hold pv", file=sys.stderr)
        return 2
    image = Path(args.image)
    if not image.is_file():
        print(f"no image at {image}: run `make images`", file=sys.stderr)
        return 2
    pvh_mib = args.pvh_mib if args.pvh_mib is not None else max(16, args.mib // 4 // 16 * 16)
    if pvh_mib < 16 or pvh_mib % 16:
        print("--pvh-mib: a multiple of 16", file=sys.stderr)
        return 2
    mib = {"pv": args.mib, "pvh": pvh_mib}
    pings = {"pv": args.pings, "pvh": max(10, args.pings // 10)}
    detach = {"pv": True, "pvh": False}
    guests = [(image, "netdemo"), (REPO / "rig/dom0/netcase.sh", "netcase.sh")]
    guests += [(REPO / f"configs/netdemo-{t}.cfg", f"netdemo-{t}.cfg") for t in set(types) | ({"pv"} if args.bridge else set())]
    if args.bridge:
        if not Path(args.bridge_image).is_file():
            print(f"no image at {args.bridge_image}: run `make images`", file=sys.stderr)
            return 2
        guests += [(Path(args.bridge_image), "netbridge"), (REPO / "configs/netbridge-pv.cfg", "netbridge-pv.cfg")]
    if args.linux or args.linux_bridged:
        domu = linux_domu.build()
        guests += [
            (domu.kernel, "vmlinuz"),
            (domu.ramdisk, "linux-domu.cpio.gz"),
            (domu.pktgen, "pktgen.ko"),
            (REPO / "configs/linux-pv.cfg", "linux-pv.cfg"),
            (REPO / "rig/dom0/netbench.sh", "netbench.sh"),
        ]
    xenrig.exit_on_sigterm()
    # The sink's data is made and summed here, not by dom0's userland.
    data = os.urandom(SINK_DATA_BYTES)
    crcs = sink_crcs(data, list(mib.values()) + ([args.bridge] if args.bridge else []))
    with tempfile.TemporaryDirectory(prefix="moat-netdemo-") as tmp:
        (Path(tmp) / "sinkdata").write_bytes(data)
        cases = dom0_cases(types, mib, pings, detach, args.bridge, args.linux,
                           args.linux_attach, args.linux_bridged, sink_crc=crcs)
        case_names = [c.name for c in cases]
        result = xenrig.run_script(
            xenrig.cases_script(cases, header=["# generated by rig/test_netdemo.py", "set -u"],
                                footer=["xl list"]),
            guests=guests + [(Path(tmp) / "sinkdata", "sinkdata")],
            timeout=args.timeout,
            log=Path(args.log) if args.log else None,
        )
    texts = [l for _, l in result.lines]
    passed, failures, bench, figures = 0, [], [], {}
    if result.rc != 0:
        failures.append(f"rig: dom0 script ended with rc {result.rc} (timeout 124, rig failure 125)")
    case_failures, case_times = xenrig.case_report(result, case_names)
    failures += case_failures

    def add(pf: tuple) -> None:
        nonlocal passed, failures
        passed += pf[0]
        failures += pf[1]

    for t in types:
        add(check_type(f"netdemo-{t}", texts, mib[t], pings[t], detach[t], bench, figures))
    if args.linux:
        add(check_type(LINUX, texts, mib["pv"], LINUX_PINGS, False, bench, figures, kind="linux"))
        started = rig_fields(texts, "started", "netdemo-pv")
        add((1, []) if started else (0, ["netdemo-pv: restarted beside the Linux domU (`RIG started`)"]))
        add(check_pull(LINUX, "netdemo-pv", texts, mib["pv"], bench, figures))
        add(check_pps("netdemo-pv", texts, bench, figures))
        add(check_pps(LINUX, texts, bench, figures))
        add(check_iperf3("netdemo-pv", texts, bench, figures))
        add(check_iperf3(LINUX, texts, bench, figures))
    if args.bridge:
        add(check_type(BRIDGED, texts, args.bridge, 200, False, bench, figures))
        if args.linux or args.linux_bridged:
            if args.linux_attach:
                a = rig_fields(texts, "attach", LINUX_BRIDGED)
                add((1, []) if a == ["ok"] else (0, [f"{LINUX_BRIDGED}: xl network-attach backend=netbridge-pv: {a}"]))
            add(check_type(LINUX_BRIDGED, texts, args.bridge, 200, False, bench, figures, kind="linux"))
            add(check_pull(LINUX_BRIDGED, BRIDGED, texts, args.bridge, bench, figures))
            add(check_spoof(texts))
        blines = [l[len("BRIDGE "):] for l in texts if l.startswith("BRIDGE ")]
        ok = any(re.search(r"netbridge: vif \S+ connected", l) for l in blines)
        passed, failures = (passed + 1, failures) if ok else (passed, failures + ["netbridge: no vif connected"])
        bad = [l for l in blines if "panicked" in l]
        passed, failures = (passed + 1, failures) if not bad else (passed, failures + [f"netbridge panicked: {bad}"])
    for b in bench:
        print(f"bench: {b}")
    if args.linux:
        print("bench: moat beside the Debian Linux domU, same rig boot (QEMU TCG: compare ratios, not absolutes)")
        for row in table(figures):
            print(f"bench: {row}")
    for w in case_times:
        print(f"rig: {w}")
    for f in failures:
        print(f"FAIL: {f}")
    print(f"test_netdemo: {passed} passed, {len(failures)} failed")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
