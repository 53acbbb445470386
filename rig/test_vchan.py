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

With --firewall IMAGE, one more case: the firewall VM (PV, or PVH with
--firewall-type pvh) as a Qubes qube (firewall.qubes=on): a
vchan-socket-proxy server on port 111 replays
dom0's QubesDB full sync (hand-encoded qdb_hdr messages); the firewall
must configure itself from it, load the client's rules, write back
/qubes-firewall-handled/<ip> and /qubes-iptables-error, answer ping on its
uplink, and its qrexec agent must shake hands with a proxy playing dom0's
qrexec-daemon and answer a qubes.GetDate call whose data vchan a third
proxy serves.

usage: python3 rig/test_vchan.py [--image PATH] [--types pv,pvh] [--mib N]
          [--roles server,client] [--case-limit S] [--timeout S] [--log FILE]
          [--firewall IMAGE [--firewall-type pv|pvh]]
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

QUBES_FUNCS = r"""
# qdb TYPE PATH VALUE: one QubesDB message (qubesdb.h struct qdb_hdr: u8
# type, char path[64], 3 bytes of padding, u32 data_len little endian,
# then the value), as dom0's qubesdb-daemon sends it.
qdb() {
  printf "\\$(printf %03o "$1")"
  printf '%s' "$2"; head -c $((64 - ${#2})) /dev/zero
  head -c 3 /dev/zero
  n=${#3}
  printf "\\$(printf %03o $((n & 255)))\\$(printf %03o $((n >> 8)))\\000\\000"
  printf '%s' "$3"
}
# qmsg TYPE LEN: a qrexec msg_header (u32 type, u32 len, little endian).
qmsg() {
  printf "\\$(printf %03o $(($1 & 255)))\\$(printf %03o $(($1 >> 8)))\\000\\000"
  printf "\\$(printf %03o $(($2 & 255)))\\$(printf %03o $(($2 >> 8)))\\000\\000"
}
# qdb_sync: dom0's answer to the VM's full sync (a sys-firewall's network
# keys, one client 10.137.0.10 allowed to port 80), then the end marker.
qdb_sync() {
  qdb 11 /qubes-ip 10.99.0.10
  qdb 11 /qubes-gateway 10.99.0.1
  qdb 11 /qubes-primary-dns 10.99.0.1
  qdb 11 /qubes-netvm-gateway 10.137.0.1
  qdb 11 /qubes-netvm-primary-dns 10.139.1.1
  qdb 11 /connected-ips 10.137.0.10
  qdb 11 /qubes-firewall/10.137.0.10/policy drop
  qdb 11 /qubes-firewall/10.137.0.10/0000 'action=accept proto=tcp dstports=80-80'
  qdb 11 /qubes-firewall/10.137.0.10 ''
  qdb 11 '' ''
}
# qubes_case CONFIG: the firewall VM with firewall.qubes=on, dom0's QubesDB
# daemon played by vchan-socket-proxy (libxenvchan server on port 111)
# replaying a full sync, dom0's qrexec-daemon and qrexec-client by two
# more proxies (client of the agent's port 512; server of port 513 for a
# qubes.GetDate call). Prints RIG qfw-<check> ok|FAIL and the console.
qubes_case() {
  cfg=$1 name=qfw
  flog=/var/log/xen/console/guest-$name.log
  rm -f $flog /tmp/q*
  echo "RIG create $name"
  xl create -p "$cfg" "name=\"$name\"" 'extra="firewall.qubes=on"' >/dev/null 2>&1
  domid=$(xl domid $name 2>/dev/null)
  [ -z "$domid" ] && { echo "RIG qfw-create FAIL"; return; }
  qdb_sync >/tmp/qdb-in
  mkfifo /tmp/qdb-fifo
  sleep 100000 >/tmp/qdb-fifo &
  s1=$!
  $PROXY -m server $domid data/vchan/$domid/111 - </tmp/qdb-fifo >/tmp/qdb-out 2>/tmp/qdb-err &
  p1=$!
  cat /tmp/qdb-in >/tmp/qdb-fifo &
  t=$(now)
  xl unpause $name
  if wait_log $flog "firewall: forwarding: uplink 10.99.0.10 gateway 10.99.0.1" 120; then
    echo "RIG qfw-forwarding ok $(elapsed "$t")"; else echo "RIG qfw-forwarding FAIL"; fi
  if wait_log $flog "rules of 10.137.0.10: 1 rules" 30; then echo "RIG qfw-rules ok"; else echo "RIG qfw-rules FAIL"; fi
  i=0
  while [ $i -lt 150 ] && ! grep -a -q qubes-iptables-error /tmp/qdb-out 2>/dev/null; do sleep 0.2; i=$((i + 1)); done
  echo "RIG qfw-request $(head -c 1 /tmp/qdb-out | od -An -tu1 | tr -d ' ')"
  if grep -a -q '/qubes-firewall-handled/10.137.0.10' /tmp/qdb-out; then echo "RIG qfw-handled ok"; else echo "RIG qfw-handled FAIL"; fi
  if grep -a -q '/qubes-iptables-error' /tmp/qdb-out; then echo "RIG qfw-error-key ok"; else echo "RIG qfw-error-key FAIL"; fi
  if ping -c 3 -W 5 10.99.0.10 >/dev/null 2>&1; then echo "RIG qfw-ping ok"; else echo "RIG qfw-ping FAIL"; fi
  # qrexec: the agent's control vchan, then one qubes.GetDate call.
  if wait_log $flog "firewall: qubesdb: connected" 5 && xenstore-read /local/domain/$domid/data/vchan/0/512/event-channel >/dev/null 2>&1; then
    echo "RIG qfw-agent-listening ok"; else echo "RIG qfw-agent-listening FAIL"; fi
  { qmsg 768 4; printf '\003\000\000\000'; qmsg 400 0; } >/tmp/qdata-in
  mkfifo /tmp/qdata-fifo
  sleep 100000 >/tmp/qdata-fifo &
  s3=$!
  $PROXY -m server $domid data/vchan/$domid/513 - </tmp/qdata-fifo >/tmp/qdata-out 2>/tmp/qdata-err &
  p2=$!
  cat /tmp/qdata-in >/tmp/qdata-fifo &
  cmd='user:QUBESRPC qubes.GetDate dom0'
  { qmsg 768 4; printf '\003\000\000\000'
    qmsg 512 $((8 + ${#cmd} + 1)); printf '\000\000\000\000\001\002\000\000%s\000' "$cmd"
  } >/tmp/qctl-in
  mkfifo /tmp/qctl-fifo
  sleep 100000 >/tmp/qctl-fifo &
  s2=$!
  $PROXY -m client $domid /local/domain/$domid/data/vchan/0/512 - </tmp/qctl-fifo >/tmp/qctl-out 2>/tmp/qctl-err &
  p3=$!
  cat /tmp/qctl-in >/tmp/qctl-fifo &
  # The call is over when the agent told the daemon (MSG_CONNECTION_
  # TERMINATED on the control vchan) and the data proxy ended.
  i=0
  while [ $i -lt 600 ] && { kill -0 $p2 2>/dev/null || ! od -An -tx1 /tmp/qctl-out | tr -d '\n' | grep -q '11 02 00 00'; }; do
    sleep 0.2; i=$((i + 1))
  done
  echo "RIG qfw-hello $(head -c 12 /tmp/qctl-out | od -An -tx1 | tr -s ' ')"
  echo "RIG qfw-date $(tr -c '0-9T:+-' ' ' </tmp/qdata-out | grep -o '[0-9]\{4\}-[0-9][0-9]-[0-9][0-9]T[0-9:]*+00:00' | head -n 1)"
  echo "RIG qfw-terminated $(od -An -tx1 /tmp/qctl-out | tr -d '\n' | grep -c '11 02 00 00')"
  # dom0's QubesDB daemon restarts (its proxy killed: its keys stay,
  # its port and grant go), the new one replays the sync and then writes
  # the client's reload trigger.
  kill $p1 2>/dev/null; wait $p1 2>/dev/null
  { qdb_sync; qdb 1 /qubes-firewall/10.137.0.10 ''; } >/tmp/qdb-in2
  mkfifo /tmp/qdb-fifo2
  sleep 100000 >/tmp/qdb-fifo2 &
  s4=$!
  sleep 2
  $PROXY -m server $domid data/vchan/$domid/111 - </tmp/qdb-fifo2 >/tmp/qdb-out2 2>/tmp/qdb-err2 &
  p4=$!
  cat /tmp/qdb-in2 >/tmp/qdb-fifo2 &
  i=0
  while [ $i -lt 600 ] && ! grep -a -q qubes-firewall-handled /tmp/qdb-out2 2>/dev/null; do sleep 0.2; i=$((i + 1)); done
  echo "RIG qfw-reconnect $(grep -a -c 'qubesdb: connected' $flog) $(grep -a -c qubes-firewall-handled /tmp/qdb-out2)"
  xl list $name >/dev/null 2>&1 && ! grep -a -q panicked $flog && echo "RIG qfw-alive ok" || echo "RIG qfw-alive FAIL"
  kill $p1 $p2 $p3 $p4 $s1 $s2 $s3 $s4 2>/dev/null
  xl destroy $name
  sed 's/^/QFW /' $flog | tr -d '\r'
  echo "RIG end $name"
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


def qubes_checks(texts: list, check) -> None:
    """The firewall in Qubes mode (qubes_case)."""
    seg = segment(texts, "qfw")
    for what in ("forwarding", "rules", "handled", "error-key", "ping", "agent-listening", "alive"):
        ok = any(l.startswith(f"RIG qfw-{what} ok") for l in seg)
        check(ok, f"qubes-firewall: {what} ({[l for l in seg if l.startswith(f'RIG qfw-{what}')][:1]})")
    req = [l.split()[2] for l in seg if l.startswith("RIG qfw-request") and len(l.split()) > 2]
    check(req == ["2"], f"qubes-firewall: the VM's first message is QDB_CMD_MULTIREAD (type 2): {req}")
    hello = [l for l in seg if l.startswith("RIG qfw-hello")]
    check(bool(hello) and hello[0].split()[2:] == "00 03 00 00 04 00 00 00 04 00 00 00".split(),
          f"qubes-firewall: the agent's MSG_HELLO offers version 4 ({hello[:1]})")
    date = [l.split()[2] for l in seg if l.startswith("RIG qfw-date") and len(l.split()) > 2]
    check(bool(date), f"qubes-firewall: qubes.GetDate printed the wall clock ({date})")
    rec = [l.split()[2:] for l in seg if l.startswith("RIG qfw-reconnect")]
    check(bool(rec) and len(rec[0]) == 2 and int(rec[0][0]) >= 2 and int(rec[0][1]) >= 1,
          f"qubes-firewall: after dom0's QubesDB daemon restarted the link connected again and the reload was handled ({rec})")
    term = [l.split()[2] for l in seg if l.startswith("RIG qfw-terminated") and len(l.split()) > 2]
    check(term != [] and term[0] != "0", f"qubes-firewall: MSG_CONNECTION_TERMINATED after the call ({term})")
    for l in seg:
        if l.startswith("RIG qfw-") or l.startswith("QFW firewall: q"):
            print(f"rig: {l}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(REPO / "target/images/amd64/vchantest"))
    ap.add_argument("--types", default="pv,pvh")
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--roles", default="server,client", help="moat's roles to test (comma-separated)")
    ap.add_argument("--extra", default="", help="more vchantest.* settings for the guest")
    ap.add_argument("--case-limit", type=int, default=900, help="seconds per case")
    ap.add_argument("--timeout", type=float, default=2400)
    ap.add_argument("--firewall", help="also run the firewall image in Qubes mode (firewall.qubes=on) "
                    "against a replayed QubesDB and one qrexec call")
    ap.add_argument("--firewall-type", default="pv", choices=("pv", "pvh"),
                    help="guest type of the Qubes-mode firewall case")
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
    if args.firewall:
        cfg = f"firewall-{args.firewall_type}.cfg"
        guests += [(Path(args.firewall), "firewall"), (REPO / "configs" / cfg, cfg)]
        cases.append(xenrig.Case("qubes-firewall", 300, [f"qubes_case /guest/{cfg}"]))
    header = ["# generated by rig/test_vchan.py", "set -u", f"LIMIT={args.case_limit}", DOM0_FUNCS, VCHAN_FUNCS, QUBES_FUNCS]
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
        if name == "qubes-firewall":
            qubes_checks(texts, check)
            continue
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
