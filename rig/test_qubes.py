#!/usr/bin/env python3
"""The firewall VM as a Qubes sys-firewall against a Qubes-shaped dom0 on
the rig (issue 13 item 6, docs/qubes.md): one rig boot, the firewall
started the way qubesd starts a qube, dom0's QubesDB and qrexec daemons
speaking the real protocols, two Debian Linux PV clients behind it.

dom0's side is `moat-qubes-dom0` (rig/qubes-dom0, a static binary built on
the host: `make qubes-dom0`) over Debian's vchan-socket-proxy
(libxenvchan): `qubesdb-daemon` is the vchan server on port 111 for the
VM, `qrexec-daemon` the client of the agent's port 512 and the server of
each call's data vchan. In one boot (a few minutes on a quiet machine):

- layout: the Qubes kernel directory `make images` produced
  (images/qubes/moat-firewall: vmlinuz, initramfs, default-kernelopts-
  common.txt, default-kernelopts-nopci.txt) is installed as
  /var/lib/qubes/vm-kernels/moat-firewall in dom0; the command line is
  what qubes-core-admin makes of it (kernelopts_common, then the
  kernelopts default of a qube without PCI devices): `firewall.qubes=on`;
- the firewall `sys-moat` is created paused from that directory as
  libvirt would (kernel, ramdisk, command line, memory = maxmem, PVH,
  tsc_mode native, its uplink vif on dom0's bridge), its QubesDB daemon
  started with the entries qubesd writes for a ProxyVM (create_qdb_entries,
  the r3compatibility and services extensions, /connected-ips empty),
  unpaused, then its qrexec daemon started (qvm-start waits for the
  agent's hello when the qube has the `qrexec` feature: time printed);
- sync: the VM asks for the full database; it forwards with the uplink
  address and gateway from QubesDB;
- each client as qubesd starts a qube whose netvm is sys-moat: before the
  client's vif exists, /connected-ips, /mapped-ip/<ip>/... and its rules
  (`reload_firewall_for_vm`: the directory removed, policy and numbered
  rules written, then the empty write of /qubes-firewall/<ip>) go through
  the QubesDB daemon; the VM must write /qubes-firewall-handled/<ip> = 1
  back (time printed); then the client is created with its vif's backend
  sys-moat;
- client A (policy drop, accept tcp 8080, dsthost=web.moat.test:80, dns,
  icmp) reaches dom0:8080 and is refused on dom0:8081 ("No route to
  host": ICMP admin-prohibited); client B (policy accept) reaches 8081;
  A downloads http://10.99.0.2/blob (the dsthost rule) with dom0's size
  and sha256;
- the DNS write-back: /dns/10.137.0.10/web.moat.test = {'10.99.0.2/32'};
- a rule reload through QubesDB as qubesd makes it (accept 8081 added):
  /qubes-firewall-handled/10.137.0.10 becomes 2 and A's next probe of
  8081 succeeds (time printed);
- qrexec through the daemon: qubes.WaitForSession (exit 0),
  qubes.SetDateTime with 2031-05-06T07:08:09+00:00 (exit 0), then
  qubes.GetDate prints that date (exit 0), qubes.VMShell is refused with
  127; each call ends with MSG_CONNECTION_TERMINATED for its port;
- no protocol violation seen by either daemon;
- without a QubesDB daemon: a second firewall with the same command line
  and no daemon must say "no configuration from dom0 after N s:
  forwarding nothing" and never forward;
- shutdown: the clients destroyed, then `xl shutdown -F sys-moat` (what
  qubesd runs for qvm-shutdown): the firewall must say the toolstack asked
  for a poweroff and that it exited with it, and the domain be gone
  (on_crash is preserve, so a crash would stay listed), without a panic.

Prints every failed check, `bench:` lines, then `test_qubes: N passed, M
failed`; exit 1 on any failure. Needs `make images` and `make qubes-dom0`.

usage: python3 rig/test_qubes.py [--kernel-dir DIR] [--dom0-tool PATH]
          [--type pv|pvh] [--timeout S] [--log FILE]
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_firewall  # noqa: E402  (dom0's servers and shell helpers)
import xenrig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "domu"))
import linux_domu  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FW = "sys-moat"
#: The date qubes.SetDateTime gives the VM.
DATE = "2031-05-06T07:08:09+00:00"


def keys(seed: bytes) -> str:
    """What qubesd writes into a ProxyVM's QubesDB before it runs
    (qubes/vm/qubesvm.py create_qdb_entries, qubes/ext/r3compatibility.py,
    qubes/ext/services.py, qubes/vm/mix/net.py; no client running yet).
    The rig's sys-net is dom0's bridge: our uplink 10.99.0.10, its gateway
    10.99.0.1, whose dnsmasq stands for the resolver sys-net redirects
    10.139.1.1 to."""
    entries = [
        ("/name", FW),
        ("/type", "StandaloneVM"),
        ("/default-user", "user"),
        ("/qubes-vm-updateable", "True"),
        ("/qubes-vm-persistence", "full"),
        ("/qubes-debug-mode", "0"),
        ("/qubes-base-template", ""),
        ("/qubes-random-seed", base64.b64encode(seed).decode()),
        ("/qubes-netvm-network", "10.99.0.10"),
        ("/qubes-netvm-gateway", "10.99.0.10"),
        ("/qubes-netvm-netmask", "255.255.255.255"),
        ("/qubes-netvm-primary-dns", "10.139.1.1"),
        ("/qubes-netvm-secondary-dns", "10.139.1.2"),
        ("/qubes-mac", "00:16:3e:5e:6c:00"),
        ("/qubes-ip", "10.99.0.10"),
        ("/qubes-netmask", "255.255.255.255"),
        ("/qubes-gateway", "10.99.0.1"),
        ("/qubes-primary-dns", "10.99.0.1"),
        ("/qubes-timezone", "UTC"),
        ("/qubes-block-devices", ""),
        ("/qubes-usb-devices", ""),
        ("/qubes-vm-type", "ProxyVM"),
        ("/qubes-iptables-error", ""),
        ("/qubes-service/meminfo-writer", "0"),
        ("/connected-ips", ""),
        ("/connected-ips6", ""),
    ]
    return "".join(f"{p} {v}\n" for p, v in entries)


#: The rules of client A (10.137.0.10), as qubes.firewall's qdb_entries
#: numbers them; RULES_A2 adds tcp 8081 (the reload).
RULES_A = [
    "action=accept proto=tcp dstports=8080-8080",
    "action=accept proto=tcp dsthost=web.moat.test dstports=80-80",
    "action=accept specialtarget=dns",
    "action=accept proto=icmp",
]
RULES_A2 = RULES_A + ["action=accept proto=tcp dstports=8081-8081"]


def reload_lines(ip: str, policy: str, rules: list) -> str:
    """The FIFO lines for qubesd's reload_firewall_for_vm: the directory
    removed, policy and rules written, then the empty trigger."""
    out = [f"rm /qubes-firewall/{ip}/", f"write /qubes-firewall/{ip}/policy {policy}"]
    out += [f"write /qubes-firewall/{ip}/{n:04} {r}" for n, r in enumerate(rules)]
    out.append(f"write /qubes-firewall/{ip} ")
    return "\n".join(out) + "\n"


SCRIPT = r"""
FW=@FW@
KDIR=/var/lib/qubes/vm-kernels/moat-firewall
QDB=/tmp/qdb.log
QRX=/tmp/qrexec.log
flog=/var/log/xen/console/guest-$FW.log
clog=/var/log/xen/console/guest-client-a.log
blog=/var/log/xen/console/guest-client-b.log
rm -f $flog $clog $blog /tmp/tty-*
# qdb_handled IP N SECONDS: until the VM wrote /qubes-firewall-handled/IP = N
qdb_handled() { wait_for $QDB "^qdb: vm write /qubes-firewall-handled/$1 \"$2\"" $3; }
# qdb_send FILE: qubesd's changes (ctl lines) to the QubesDB daemon
qdb_send() { cat "$1" >/tmp/qdb.ctl; }

# The kernel directory, as a Qubes user installs it (docs/qubes.md).
mkdir -p $KDIR
cp /guest/qubes-vmlinuz $KDIR/vmlinuz
cp /guest/qubes-initramfs $KDIR/initramfs
cp /guest/qubes-kernelopts-common.txt $KDIR/default-kernelopts-common.txt
cp /guest/qubes-kernelopts-nopci.txt $KDIR/default-kernelopts-nopci.txt
# qubes-core-admin: kernelopts_common (default-kernelopts-common.txt) then
# kernelopts (default-kernelopts-nopci.txt for a qube without PCI devices)
opts="$(cat $KDIR/default-kernelopts-common.txt)$(sed 's/^[ \t]*//;s/[ \t]*$//' $KDIR/default-kernelopts-nopci.txt)"
if [ "$opts" = "firewall.qubes=on" ] && [ -s $KDIR/vmlinuz ]; then log layout ok "$opts"; else log layout FAIL "kernelopts '$opts'"; fi
cat >/tmp/$FW.cfg <<EOF
name="$FW"
type="@TYPE@"
kernel="$KDIR/vmlinuz"
ramdisk="$KDIR/initramfs"
extra="$opts"
memory=32
maxmem=32
vcpus=1
vif=['bridge=xenbr0,mac=00:16:3e:5e:6c:00,ip=10.99.0.10']
on_poweroff="destroy"
on_reboot="destroy"
on_crash="preserve"
tsc_mode="native"
EOF
mkfifo /tmp/qdb.ctl /tmp/qrexec.ctl

log create $FW $(up)
xl create -p /tmp/$FW.cfg || log create FAIL "xl create -p"
fw=$(xl domid $FW)
/guest/moat-qubes-dom0 qubesdb-daemon --domid $fw --keys /guest/qubes-keys --ctl /tmp/qdb.ctl >$QDB 2>&1 &
qdbpid=$!
t_unpause=$(up)
xl unpause $FW
# qubesd starts the qrexec daemon once the qube runs; qvm-start returns
# when the agent said hello (the `qrexec` feature)
/guest/moat-qubes-dom0 qrexec-daemon --domid $fw --ctl /tmp/qrexec.ctl >$QRX 2>&1 &
qrxpid=$!
if wait_for $QDB "^qdb: vm synced" 60; then log sync ok; else log sync FAIL "$(tail -n 3 $QDB | tr '\n' ' ')"; fi
if wait_for $flog "firewall: forwarding: uplink 10.99.0.10 gateway 10.99.0.1" 60; then log forwarding ok $t_unpause $(up); else
  log forwarding FAIL
  xl list | sed 's/^/XLNOW /'
  tail -n 20 $flog | tr -d '\r' | sed 's/^/FWNOW /'
fi
if wait_for $QRX "^qrexec: agent hello version" 60; then log qrexec-hello ok $t_unpause $(up); else log qrexec-hello FAIL "$(tail -n 3 $QRX | tr '\n' ' ')"; fi

# Client A starts: qubesd's domain-pre-spawn of a qube whose netvm is us
t=$(up)
qdb_send /guest/qubes-start-a
if qdb_handled 10.137.0.10 1 30; then log handled-a ok $t $(up); else log handled-a FAIL "$(grep -a 'qdb: vm' $QDB | tail -n 3 | tr '\n' ' ')"; fi
xl create /guest/firewall-client-pv.cfg 'vif=["backend=@FW@,ip=10.137.0.10,mac=00:16:3e:6d:6f:20"]' \
  'extra="console=hvc0 quiet moat.ip=10.137.0.10/24 moat.gw=10.137.0.1 moat.probe=10.99.0.1:8080,10.99.0.1:8081"'
# Client B
qdb_send /guest/qubes-start-b
if qdb_handled 10.137.0.11 1 30; then log handled-b ok; else log handled-b FAIL; fi
xl create /guest/firewall-client-pv.cfg 'name="client-b"' 'vif=["backend=@FW@,ip=10.137.0.11,mac=00:16:3e:6d:6f:22"]' \
  'extra="console=hvc0 quiet moat.ip=10.137.0.11/24 moat.gw=10.137.0.1"'
if wait_for $clog "probe 10.99.0.1:8080 ok" 240; then log allowed ok $(up); else log allowed FAIL; tail -n 20 $flog | sed 's/^/FWNOW /'; fi
if wait_for $clog "probe 10.99.0.1:8081 fail" 30; then log denied ok; else log denied FAIL; fi
if wait_for $blog "linuxdomu: ready" 120; then log client-b-ready ok; else log client-b-ready FAIL; fi
cmd client-b b8081 40 "for i in 1 2 3; do echo probe | nc -w 3 10.99.0.1 8081 && break; sleep 1; done"
case "$out" in *served-by-dom0*) log b-accept ok ;; *) log b-accept FAIL "rc=$rc $out" ;; esac
get_send client-a geta http://10.99.0.2/blob
get_check dsthost-get client-a geta
if wait_for $QDB "^qdb: vm write /dns/10.137.0.10/web.moat.test \"\\{'10.99.0.2/32'\\}\"" 30; then log dns-writeback ok; else
  log dns-writeback FAIL "$(grep -a '/dns/' $QDB | tr '\n' ' ')"
fi

# The reload: qubesd rewrites A's rules (accept 8081 added)
t=$(up)
qdb_send /guest/qubes-reload-a
if qdb_handled 10.137.0.10 2 30; then log reload-handled ok $t $(up); else log reload-handled FAIL; fi
if wait_for $clog "probe 10.99.0.1:8081 ok" 30; then log reload ok $t $(up); else log reload FAIL; fi

# qrexec: the calls dom0 makes
{ echo "call wfs user qubes.WaitForSession"
  echo "call setdate root qubes.SetDateTime @DATE@"
  echo "call getdate root qubes.GetDate"
  echo "call vmshell user qubes.VMShell"
} >/tmp/qrexec.ctl
if wait_for $QRX "^qrexec: call vmshell exit" 120; then log qrexec-calls ok; else log qrexec-calls FAIL "$(tail -n 4 $QRX | tr '\n' ' ')"; fi

# qvm-shutdown: the clients first (qubesd refuses to stop a netvm in use),
# then `xl shutdown -F` as qubesd runs it
xl destroy client-a
xl destroy client-b
t=$(up)
xl shutdown -F $FW
n=0
while [ $n -lt 150 ] && xl list $FW >/dev/null 2>&1; do sleep 0.2; n=$((n + 1)); done
if ! xl list $FW >/dev/null 2>&1 && ! grep -a -q panicked $flog && grep -a -q "firewall: Poweroff requested by the toolstack" $flog \
   && grep -a -q "service exited: Poweroff" $flog; then log shutdown ok $t $(up); else
  log shutdown FAIL "$(xl list 2>&1 | tr '\n' ' ') $(tail -n 3 $flog | tr -d '\r' | tr '\n' ' ')"
fi
# firewall.qubes=on where dom0 runs no QubesDB daemon for the qube: it
# must stay closed and say so on its console (docs/qubes.md)
nlog=/var/log/xen/console/guest-nodb.log
rm -f $nlog
t=$(up)
xl create /tmp/$FW.cfg 'name="nodb"' 'vif=["bridge=xenbr0,mac=00:16:3e:5e:6c:01,ip=10.99.0.11"]' >/dev/null 2>&1
if wait_for $nlog "firewall: qubesdb: no configuration from dom0 after [0-9]+ s: forwarding nothing" 60 \
   && ! grep -a -q "firewall: forwarding:" $nlog; then log no-qubesdb ok $t $(up); else
  log no-qubesdb FAIL "$(tail -n 5 $nlog 2>/dev/null | tr -d '\r' | tr '\n' ' ')"
fi
xl destroy nodb
sleep 1
sed 's/^/QDB /' $QDB
sed 's/^/QRX /' $QRX
sed 's/^/FW /' $flog | tr -d '\r'
sed 's/^/CLIENT /' $clog | tr -d '\r'
kill $qdbpid $qrxpid 2>/dev/null
xl list
log end
"""

#: The checks, in order (`RIG <word> ok|FAIL ...`).
WORDS = ["layout", "sync", "forwarding", "qrexec-hello", "handled-a", "handled-b", "allowed",
         "denied", "client-b-ready", "b-accept", "dsthost-get", "dns-writeback", "reload-handled", "reload",
         "qrexec-calls", "shutdown", "no-qubesdb"]


def check_calls(texts: list) -> tuple:
    """(passed, failures) of the qrexec calls' results."""
    passed, failures = 0, []
    calls = {}
    for line in texts:
        m = re.match(r"QRX qrexec: call (\S+) exit (\S+) stdout (\".*?\") stderr (\".*?\") streams-ended (\S+) "
                     r"terminated (\S+) vchan-closed (\S+) in ([0-9.]+) s", line)
        if m:
            calls[m.group(1)] = m
    for name, code, what in [("wfs", "0", "qubes.WaitForSession exits 0"),
                             ("setdate", "0", "qubes.SetDateTime exits 0"),
                             ("getdate", "0", "qubes.GetDate exits 0"),
                             ("vmshell", "127", "an unknown service exits 127")]:
        m = calls.get(name)
        ok = m is not None and m.group(2) == code and m.group(5) == "true" and m.group(6) == "true"
        if ok:
            passed += 1
            print(f"bench: qrexec call {name}: {float(m.group(8)):.2f} s (exit code, MSG_CONNECTION_TERMINATED, "
                  f"data vchan closed)")
        else:
            failures.append(f"{what}, its streams ended and MSG_CONNECTION_TERMINATED came: "
                            f"{m.group(0) if m else 'no result'}")
    g = calls.get("getdate")
    if g and DATE[:17] in g.group(3):
        passed += 1
    else:
        failures.append(f"qubes.GetDate prints the date qubes.SetDateTime set ({DATE[:17]}...): "
                        f"{g.group(3) if g else 'no result'}")
    return passed, failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel-dir", default=str(REPO / "target/images/qubes/moat-firewall"),
                    help="the Qubes kernel directory make images built")
    ap.add_argument("--dom0-tool", default=str(REPO / "target/x86_64-unknown-linux-gnu/release/moat-qubes-dom0"),
                    help="the static moat-qubes-dom0 binary (make qubes-dom0)")
    ap.add_argument("--type", default="pv", choices=("pv", "pvh"),
                    help="the firewall's type: Qubes runs it PVH; pv by default because on the rig a PVH "
                         "QubesDB link (a vchan client) has hung the emulated machine (docs/qubes.md)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--log")
    args = ap.parse_args(argv)
    kdir, tool = Path(args.kernel_dir), Path(args.dom0_tool)
    need = [kdir / f for f in ("vmlinuz", "initramfs", "default-kernelopts-common.txt",
                               "default-kernelopts-nopci.txt")] + [tool]
    missing = [str(p) for p in need if not p.is_file()]
    if missing:
        print(f"missing {', '.join(missing)}: run `make images qubes-dom0`", file=sys.stderr)
        return 2
    domu = linux_domu.build()
    # qubesd's changes before each client starts (domain-pre-spawn):
    # reload_connected_ips, set_mapped_ip_info_for_vm, reload_firewall_for_vm
    start_a = ("write /connected-ips 10.137.0.10\nwrite /connected-ips6 \n"
               "write /mapped-ip/10.137.0.10/visible-ip 10.137.0.10\n"
               "write /mapped-ip/10.137.0.10/visible-gateway 10.99.0.10\n"
               + reload_lines("10.137.0.10", "drop", RULES_A))
    start_b = ("write /connected-ips 10.137.0.10 10.137.0.11\nwrite /connected-ips6 \n"
               "write /mapped-ip/10.137.0.11/visible-ip 10.137.0.11\n"
               "write /mapped-ip/10.137.0.11/visible-gateway 10.99.0.10\n"
               + reload_lines("10.137.0.11", "accept", []))
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"test_qubes.{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    generated = {"qubes-keys": keys(os.urandom(64)), "qubes-start-a": start_a, "qubes-start-b": start_b,
                 "qubes-reload-a": reload_lines("10.137.0.10", "drop", RULES_A2)}
    for name, text in generated.items():
        (tmp / name).write_text(text)
    guests = [
        (kdir / "vmlinuz", "qubes-vmlinuz"),
        (kdir / "initramfs", "qubes-initramfs"),
        (kdir / "default-kernelopts-common.txt", "qubes-kernelopts-common.txt"),
        (kdir / "default-kernelopts-nopci.txt", "qubes-kernelopts-nopci.txt"),
        (tool, "moat-qubes-dom0"),
        (REPO / "configs/firewall-client-pv.cfg", "firewall-client-pv.cfg"),
        (domu.kernel, "vmlinuz"),
        (domu.ramdisk, "linux-domu.cpio.gz"),
    ] + [(tmp / n, n) for n in generated]
    script = test_firewall.setup() + SCRIPT.replace("@FW@", FW).replace("@TYPE@", args.type).replace("@DATE@", DATE)
    xenrig.exit_on_sigterm()
    result = xenrig.run_script(script, guests=guests, timeout=args.timeout,
                               log=Path(args.log) if args.log else None)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    texts = [l for _, l in result.lines]
    passed, failures = 0, []
    if result.rc != 0:
        failures.append(f"rig: dom0 script ended with rc {result.rc} (timeout 124, rig failure 125)")
    p, f = test_firewall.check_words(texts, "dom0: ", test_firewall.SETUP_WORDS + WORDS)
    passed += p
    failures += f
    p, f = check_calls(texts)
    passed += p
    failures += f
    violations = [l for l in texts if re.match(r"(QDB qdb|QRX qrexec): .*violation", l)]
    if violations:
        failures.append(f"dom0's daemons saw protocol violations: {violations[:3]}")
    else:
        passed += 1
    client = [l for l in texts if l.startswith("CLIENT ") and "probe 10.99.0.1:8081 fail" in l]
    if client and "No route to host" in client[0]:
        passed += 1
    else:
        failures.append(f"A's denied port was not rejected with ICMP admin-prohibited: {client[:1]}")
    if any(l.startswith("FW ") and "panicked" in l for l in texts):
        failures.append("the firewall panicked")
    else:
        passed += 1
    rig = lambda word: test_firewall.rig_lines(texts, word)  # noqa: E731
    for word, what in [("forwarding", "xl unpause -> forwarding (QubesDB synced)"),
                       ("handled-a", "A's rules written -> /qubes-firewall-handled back in dom0"),
                       ("reload-handled", "rule reload written -> /qubes-firewall-handled = 2"),
                       ("reload", "rule reload written -> A's probe of the newly allowed port succeeded"),
                       ("shutdown", "xl shutdown -F -> domain gone"),
                       ("no-qubesdb", "firewall.qubes=on without a QubesDB daemon: xl create -> its warning")]:
        r = rig(word)
        if r and r[0][0] == "ok" and len(r[0]) == 3:
            print(f"bench: {args.type}: {what}: {float(r[0][2]) - float(r[0][1]):.1f} s")
    g = rig("dsthost-get")
    if g and g[0][0] == "ok" and len(g[0]) == 4:
        secs = float(g[0][2]) - float(g[0][1])
        print(f"bench: {args.type}: A's download through the firewall: {int(g[0][3])} bytes in {secs:.2f} s")
    hello = [m for m in (re.match(r"QRX qrexec: agent hello version \d+ after ([0-9.]+) s", l) for l in texts) if m]
    if hello:
        print(f"bench: {args.type}: qrexec-daemon started at xl unpause -> the agent's hello (what qvm-start "
              f"waits for): {float(hello[0].group(1)):.1f} s")
    for l in texts:
        if l.startswith("QDB qdb: vm synced"):
            print(f"rig: {l}")
    for f in failures:
        print(f"FAIL: {f}")
    print(f"test_qubes: {passed} passed, {len(failures)} failed")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
