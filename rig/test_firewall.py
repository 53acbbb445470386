#!/usr/bin/env python3
"""The firewall VM on real Xen (issue 12 item 6): moat's `firewall` image
started with `xl create configs/firewall-<type>.cfg` as users start it, its
uplink on dom0's bridge, and two Debian Linux PV client domUs behind it (the
rig's Linux domU, rig/domu/, from configs/firewall-client-pv.cfg): A
(10.137.0.10 and fd09::10) and B (10.137.0.11). dom0 serves TCP ports 8080
and 8081 (busybox nc), HTTP (busybox httpd on 10.99.0.1, 10.99.0.2 and
fd99::1: a random BLOB_MIB MiB file) and DNS (Debian's dnsmasq on
10.99.0.1, the firewall's upstream resolver: web.moat.test is 10.99.0.2).
Everything is checked with real tools from inside the clients: client A
tries dom0's two TCP ports every second (`moat.probe=`); other commands are
typed on a client's console (rig/domu/init runs `@ID COMMAND` lines and
prints their output and status). In one rig boot, for each type:

- the firewall is created paused, gets its IPv6 uplink address, gateway
  and client-side gateway through its qubesdb keys (qubes-ip6 fd99::10,
  qubes-gateway6 fd99::1, qubes-netvm-gateway6 fd09::1), and starts; its
  IPv4 uplink comes from its vif's `ip` and `extra=`;
- rules written by dom0 with stock `xenstore-write` under
  /local/domain/<firewall>/qubesdb/qubes-firewall/<addr>/ are loaded through
  the watch; A's include `dsthost=web.moat.test`, which the firewall
  resolves through dnsmasq (its query seen in dnsmasq's log);
- A reaches dom0:8080 (allowed, NATed); dom0:8081 is rejected ("No route to
  host": ICMP admin-prohibited from the firewall, not a timeout);
- A downloads the file from 10.99.0.2 (allowed by the dsthost= rule) with
  its size and sha256 equal to dom0's; the same from 10.99.0.1, which the
  name does not cover, is rejected;
- A resolves web.moat.test through the virtual resolver 10.139.1.1 with
  busybox nslookup (answered by dnsmasq, which logs the query);
- A sends pings from a spoofed source (10.137.0.99, an address whose rules
  would accept them): no answer, dom0's ICMP echo counter does not move,
  the firewall's `spoofed=` counter does; pings from A's own address are
  answered and counted by dom0 (the control);
- A cannot open a TCP connection to B's echo port (which B itself reaches),
  although A's rules accept 10.137.0.0/24; the firewall's `inter-client=`
  counter rises;
- IPv6: A downloads the file from [fd99::1] (a `dst6=` rule) with its
  sha256 equal, and [fd99::1]:8080 is rejected (ICMPv6 admin-prohibited:
  "Permission denied");
- B (policy accept) downloads the file too;
- a rule change (accept tcp 8081) written from dom0 takes effect without a
  restart: A's next probe of 8081 succeeds (time from the write printed);
- the firewall's uplink detached and attached again (`xl network-detach
  firewall 0`, `xl network-attach` with the same mac and ip) while A holds
  a TCP connection to dom0:8092 that carries a line a second for 20 s:
  the firewall's uplink comes back and the same connection delivers all
  20 lines (the flow's conntrack and NAT kept across the outage);
- the firewall restarted: `xl destroy firewall`, `xl create` again (new
  qubesdb keys and rules; this time its uplink vif has no `ip=` and
  `extra=` names no address, gateway or resolver, so it configures the
  uplink from dnsmasq's DHCP lease, which the console's `firewall: dhcp:
  lease` line must show: 10.99.0.10/24, router and resolver 10.99.0.1),
  each client's vif detached and attached again
  (docs/firewall.md, "Restarting the firewall"); both clients configure
  the new interface, A reaches dom0:8080 and both download the file again
  with the sha256 equal (on failure both ends' xenstore states and the
  clients' interfaces and dmesg are printed);
- a vif without `ip=` (`xl network-attach client-b backend=firewall`) is
  refused and counted by the new firewall (in the background during the
  downloads);
- with --uplink-restart [N] (not in make test): dom0's netback lets go of
  the firewall's uplink and takes it again (sysfs unbind + bind, as
  rig/dom0/netcase.sh does), N times: each time the firewall reconnects
  its uplink (or netback takes the rings it still offers and both ends
  stay Connected: "kept"), and the client still gets through afterwards;
- with --detach (in make test): a moat client (netdemo) behind the firewall gets
  its vif detached with `xl network-detach` (libxl gives up after 10 s if
  the backend directory is still there): the detach must succeed and both
  directories be gone; on failure both states, traced every 0.2 s, are
  printed;
- with --hostile TYPES (pvh in make test): for those types, the `hostile`
  image (services/hostile) gets seven vifs behind the firewall, one attack
  each (bad grants, malformed requests, ring indices, a UDP flood, a flood
  of new TCP flows, never-completed fragments, a stalled RX ring), twice,
  HOSTILE_SECONDS each: client A's download (sha256) and pings must go
  through during the first round, the vifs of the fatal attacks must be
  closed by the firewall and those of well-formed floods served, the
  firewall must stay up, and its resources after the hostile domain is
  gone (free frames plus the heap's memory, free grants, maps, event
  channels; the heap in use within 512 KiB, which conntrack entries of
  the flows still alive may take) must be the same after both rounds;
- with --cycles N (not in make test): a netdemo behind the firewall is
  created and destroyed N times (each must come up and its backend
  directory be removed); the firewall's `resources:` lines at the first
  and the last client close are printed.

Each check prints `RIG <check> ok ...` or `RIG <check> FAIL <why>` in dom0.
Prints every failed check, `bench:` lines, then `test_firewall: N passed, M
failed`; exit 1 on any failure. Needs `make images`
(target/images/amd64/firewall, and netdemo beside it for --detach and
--cycles) and the rig cache (rig/fetch.sh, run by xenrig)."""

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
#: dom0's slow stream (a line a second), for a flow held across the uplink's outage
TICK = 8092
#: The size of the file the clients download through the firewall.
BLOB_MIB = 4
#: How long each vif of --hostile attacks (from its first connection).
HOSTILE_SECONDS = 12
#: The attacks of the hostile image's vifs, in order (services/hostile).
HOSTILE_ATTACKS = ["bad-grant", "malformed", "index", "flood", "flows", "frags", "rx-stall"]

#: Run once per rig boot, before the types: dom0's servers.
SETUP = r"""
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
# nlines FILE: its line count (0 when it does not exist)
nlines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }
# since FILE LINE: the lines of FILE after line LINE
since() { tail -n +$(($2 + 1)) "$1" 2>/dev/null; }
# wait_after FILE LINE REGEX SECONDS: until a line after line LINE matches
wait_after() {
  n=$(($4 * 5)); i=0
  while [ $i -lt $n ]; do since "$1" "$2" | grep -q -E -- "$3" && return 0; sleep 0.2; i=$((i + 1)); done
  return 1
}
# snmp PROTO FIELD: dom0's counter from /proc/net/snmp (e.g. Icmp InEchos)
snmp() {
  awk -v p="$1:" -v k="$2" '$1 == p { if (!h) { for (i = 2; i <= NF; i++) n[i] = $i; h = 1 }
                                      else for (i = 2; i <= NF; i++) if (n[i] == k) print $i }' /proc/net/snmp
}
# send CLIENT ID COMMAND: COMMAND run in CLIENT's shell: rig/domu/init reads
# `@ID COMMAND` lines on its console (the pty `xl console` uses)
send() {
  [ -s /tmp/tty-$1 ] || xenstore-read /local/domain/$(xl domid $1 2>/dev/null)/console/tty >/tmp/tty-$1 2>/dev/null
  if [ ! -s /tmp/tty-$1 ]; then echo "RIG send $1 $2: no console tty"; return 1; fi
  printf '@%s %s\n' "$2" "$3" >"$(cat /tmp/tty-$1)"
}
# result CLIENT ID SECONDS: waits for the command's end; sets $rc (`none`:
# no answer) and $out (its output, lines joined by spaces)
result() {
  _log=/var/log/xen/console/guest-$1.log
  if wait_for $_log "linuxdomu: cmd $2 rc=" $3; then
    rc=$(grep -a "linuxdomu: cmd $2 rc=" $_log | tail -n 1 | tr -d '\r' | sed 's/.*rc=//')
  else
    rc=none
  fi
  out=$(grep -a "linuxdomu: cmd $2: " $_log | tr -d '\r' | sed "s/.*linuxdomu: cmd $2: //" | tr '\n' ' ')
}
# cmd CLIENT ID SECONDS COMMAND: send, then result
cmd() {
  if send "$1" "$2" "$4"; then result "$1" "$2" "$3"; else rc=none; out="not sent"; fi
}
# get_send CLIENT ID URL: CLIENT downloads URL into tmpfs and prints the
# time it took, the size and the sha256 (get_check judges)
get_send() {
  send $1 $2 "s=\$(cut -d' ' -f1 /proc/uptime); timeout 60 wget -q -O /tmp/$2 '$3'; r=\$?; \
e=\$(cut -d' ' -f1 /proc/uptime); echo \"took \$s \$e bytes \$(wc -c </tmp/$2) \$(sha256sum </tmp/$2 | cut -d' ' -f1)\"; \
rm -f /tmp/$2; exit \$r"
}
# get_check WORD CLIENT ID: the download's size and sha256 must be dom0's
get_check() {
  result $2 $3 90
  case "$out" in
  *"bytes $blobsize $blobsum"*) log $1 ok $(echo "$out" | sed -n 's/.*took \([0-9.]*\) \([0-9.]*\).*/\1 \2/p') $blobsize ;;
  *) log $1 FAIL "rc=$rc expected $blobsize bytes sha256 $blobsum: $out" ;;
  esac
}
# refused WORD CLIENT ID URL REASON: the connection must fail at once with
# REASON (an ICMP error's errno), not time out
refused() {
  cmd $2 $3 40 "timeout 20 wget -q -O /dev/null '$4'"
  case "$rc $out" in
  0*|none*) log $1 FAIL "rc=$rc (expected a refusal: $5): $out" ;;
  *"$5"*) log $1 ok ;;
  *) log $1 FAIL "rc=$rc (expected $5): $out" ;;
  esac
}

# dom0's servers: TCP ports (nc), HTTP (busybox httpd), DNS (dnsmasq)
printf '#!/bin/sh\necho served-by-dom0\n' > /tmp/answer; chmod +x /tmp/answer
for port in @ALLOWED@ @DENIED@; do
  (while :; do nc -ll -p $port -e /tmp/answer; sleep 0.2; done) >/dev/null 2>&1 &
done
# a slow stream on @TICK@: one line a second for 20 s per connection
printf '#!/bin/sh\ni=1\nwhile [ $i -le 20 ]; do echo tick-$i; i=$((i + 1)); sleep 1; done\n' > /tmp/ticker
chmod +x /tmp/ticker
(while :; do nc -ll -p @TICK@ -e /tmp/ticker; sleep 0.2; done) >/dev/null 2>&1 &
# a second IPv4 address (the one web.moat.test names) and IPv6 on the
# firewall's uplink bridge
echo 0 > /proc/sys/net/ipv6/conf/xenbr0/accept_dad
ip addr add 10.99.0.2/24 dev xenbr0
ip -6 addr add fd99::1/64 dev xenbr0
mkdir -p /tmp/www
head -c $((@BLOB_MIB@ * 1048576)) /dev/urandom > /tmp/www/blob
echo hello-from-dom0 > /tmp/www/hello
blobsum=$(sha256sum /tmp/www/blob | cut -d' ' -f1)
blobsize=$(wc -c < /tmp/www/blob)
httpd -p 80 -h /tmp/www
dlog=/tmp/dnsmasq.log
dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --user=root --group=root --pid-file=/tmp/dnsmasq.pid \
  --listen-address=10.99.0.1 --bind-interfaces --local=/moat.test/ --address=/web.moat.test/10.99.0.2 \
  --log-queries --log-facility=$dlog \
  --dhcp-range=10.99.0.100,10.99.0.150,255.255.255.0,2m --dhcp-host=00:16:3e:6d:6f:10,10.99.0.10 \
  --dhcp-leasefile=/tmp/dnsmasq.leases
r=$?
a=$(nslookup -type=a web.moat.test 10.99.0.1 2>&1 | tr '\n' ' ')
case "$r $a" in
0*"10.99.0.2"*) log dnsmasq ok ;;
*) log dnsmasq FAIL "rc=$r nslookup: $a $(cat $dlog 2>/dev/null | tr '\n' ' ')" ;;
esac
h4=$(wget -q -O - http://10.99.0.2/hello 2>&1)
h6=$(wget -q -O - 'http://[fd99::1]/hello' 2>&1)
if [ "$h4" = hello-from-dom0 ] && [ "$h6" = hello-from-dom0 ]; then log servers ok; else
  log servers FAIL "http from dom0 itself: ipv4 '$h4' ipv6 '$h6'"
fi
"""

#: One type's run (after SETUP).
SCRIPT = r"""
flog=/var/log/xen/console/guest-firewall.log
clog=/var/log/xen/console/guest-client-a.log
blog=/var/log/xen/console/guest-client-b.log
# (xenconsoled appends: each type starts with empty logs)
rm -f $flog $clog $blog /tmp/firewall-1.log /tmp/tty-*
d0=$(nlines $dlog)
# fw_start: the firewall created paused, its IPv6 uplink given through its
# qubesdb keys, then started; sets $fw
# fw_start [dhcp]: with dhcp, the uplink vif has no ip= and extra= names no
# address, gateway or resolver: the firewall takes all three from
# dnsmasq's lease (a static one for its MAC).
fw_start() {
  if [ "${1:-}" = dhcp ]; then
    xl create -p /guest/firewall-@TYPE@.cfg 'vif=["bridge=xenbr0,mac=00:16:3e:6d:6f:10"]' \
      'extra="firewall.client-gw=10.137.0.1"' || return 1
  else
    xl create -p /guest/firewall-@TYPE@.cfg || return 1
  fi
  fw=$(xl domid firewall)
  q=/local/domain/$fw/qubesdb
  xenstore-write $q/qubes-ip6 fd99::10 $q/qubes-gateway6 fd99::1 $q/qubes-netvm-gateway6 fd09::1
  xl unpause firewall
}
# rules: the clients' rules, written by dom0 into the firewall's qubesdb
rules() {
  qf=/local/domain/$fw/qubesdb/qubes-firewall
  qa=$qf/@ENC@
  xenstore-write $qa/policy drop \
    $qa/0000 "action=accept proto=tcp dstports=@ALLOWED@-@ALLOWED@" \
    $qa/0001 "action=accept proto=tcp dsthost=web.moat.test dstports=80-80" \
    $qa/0002 "action=accept specialtarget=dns" \
    $qa/0003 "action=accept proto=icmp" \
    $qa/0004 "action=accept dst4=10.137.0.0/24" \
    $qa/0005 "action=accept proto=tcp dstports=@TICK@-@TICK@" \
    $qa ""
  xenstore-write $qf/fd09__10/policy drop $qf/fd09__10/0000 "action=accept dst6=fd99::1/128 proto=tcp dstports=80-80" \
    $qf/fd09__10 ""
  xenstore-write $qf/10-137-0-11/policy accept $qf/10-137-0-11 ""
  # the address A spoofs: were its packets let through, these would pass them
  xenstore-write $qf/10-137-0-99/policy accept $qf/10-137-0-99 ""
}
# statv KEY LINE: KEY's value in the last `firewall: stats:` line after
# line LINE of the firewall's log (empty: none)
statv() { since $flog $2 | grep -a "firewall: stats:" | tail -n 1 | tr -d '\r' | tr ' ' '\n' | sed -n "s/^$1=//p"; }
AVIF='vif=["backend=firewall,ip=@IP@ fd09::10,mac=00:16:3e:6d:6f:20"]'
BVIF='vif=["backend=firewall,ip=10.137.0.11,mac=00:16:3e:6d:6f:22"]'

log create firewall-@TYPE@ $(up)
fw_start || log forwarding FAIL "xl create -p"
if wait_for $flog "firewall: forwarding:" 90; then log forwarding ok $(up); else log forwarding FAIL; fi
rules
if wait_for $flog "rules of @IP@: 6 rules" 30 && wait_for $flog "rules of fd09::10: 1 rules" 10; then log rules ok; else
  log rules FAIL "$(grep -a 'rules of' $flog | tr -d '\r' | tr '\n' ' ')"
fi
if wait_after $dlog $d0 "query\[A\] web.moat.test from 10.99.0.10" 30; then log dsthost-query ok; else
  log dsthost-query FAIL "dnsmasq saw no query for web.moat.test from the firewall: $(since $dlog $d0 | tr '\n' ' ')"
fi
log create clients $(up)
xl create /guest/firewall-client-pv.cfg "$AVIF" \
  'extra="console=hvc0 quiet moat.ip=@IP@/24 moat.gw=10.137.0.1 moat.ip6=fd09::10/64 moat.gw6=fd09::1 moat.probe=@DOM0@:@ALLOWED@,@DOM0@:@DENIED@"'
xl create /guest/firewall-client-pv.cfg 'name="client-b"' "$BVIF" \
  'extra="console=hvc0 quiet moat.ip=10.137.0.11/24 moat.gw=10.137.0.1"'
if wait_for $clog "probe @DOM0@:@ALLOWED@ ok" 240; then log allowed ok $(up); else
  log allowed FAIL
  xl list
  tail -n 30 $flog | sed 's/^/FWNOW /'
fi
if wait_for $clog "probe @DOM0@:@DENIED@ fail" 30; then log denied ok; else log denied FAIL; fi
if wait_for $blog "linuxdomu: ready" 120; then log client-b-ready ok $(up); else log client-b-ready FAIL; fi
get_send client-b getb http://@DOM0@/blob
get_send client-a geta http://10.99.0.2/blob
get_check dsthost-allowed client-a geta
get_check client-b-get client-b getb
refused dsthost-other-denied client-a den4 http://@DOM0@/blob "No route to host"
d1=$(nlines $dlog)
cmd client-a dns 30 "nslookup -type=a web.moat.test 10.139.1.1"
case "$rc $out" in
0*"10.99.0.2"*)
  if since $dlog $d1 | grep -q "query\[A\] web.moat.test from 10.99.0.10"; then log dns ok; else
    log dns FAIL "answered, but dnsmasq logged no query from the firewall: $(since $dlog $d1 | tr '\n' ' ')"
  fi ;;
*) log dns FAIL "rc=$rc: $out" ;;
esac
# A spoofed source: nothing reaches dom0, the firewall counts it
l0=$(nlines $flog)
s0=$(statv spoofed 0)
e0=$(snmp Icmp InEchos)
cmd client-a spoof 40 "ip addr add 10.137.0.99/32 dev eth0 && ping -c 3 -W 3 -I 10.137.0.99 @DOM0@; r=\$?; ip addr del 10.137.0.99/32 dev eth0; exit \$r"
spoof_rc=$rc spoof_out=$out
e1=$(snmp Icmp InEchos)
l1=$(nlines $flog)
cmd client-a ping 40 "ping -c 2 -W 3 @DOM0@"
e2=$(snmp Icmp InEchos)
if [ "$spoof_rc" != 0 ] && [ "$spoof_rc" != none ] && [ "$e1" = "$e0" ] && [ "$rc" = 0 ] && [ "$e2" -ge $((e1 + 2)) ]; then
  log spoof ok
else
  log spoof FAIL "spoofed ping rc=$spoof_rc ($spoof_out), dom0's InEchos $e0 -> $e1; own ping rc=$rc ($out), InEchos -> $e2"
fi
# client A to client B: B's echo answers B itself, not A
cmd client-b echo-self 30 "echo moat-echo | nc -w 3 10.137.0.11 7"
b_rc=$rc b_out=$out
l2=$(nlines $flog)
i0=$(statv inter-client 0)
cmd client-a a2b 30 "echo moat-echo | nc -w 3 10.137.0.11 7"
case "$b_rc $b_out" in
0*moat-echo*)
  case "$rc $out" in
  0*|none*|*moat-echo*) log a-to-b FAIL "A reached B's echo port: rc=$rc $out" ;;
  *) log a-to-b ok "$out" ;;
  esac ;;
*) log a-to-b FAIL "B's echo port does not answer B itself: rc=$b_rc $b_out" ;;
esac
l3=$(nlines $flog)
# IPv6 through the firewall (dst6= rule)
get_send client-a get6 'http://[fd99::1]/blob'
get_check ipv6-allowed client-a get6
refused ipv6-denied client-a den6 'http://[fd99::1]:@ALLOWED@/' "Permission denied"
# A rule change written from dom0: the next probe of the denied port succeeds
t=$(up)
xenstore-write $qa/0006 "action=accept proto=tcp dstports=@DENIED@-@DENIED@" $qa ""
if wait_for $clog "probe @DOM0@:@DENIED@ ok" 30; then log rule-change ok $t $(up); else log rule-change FAIL; fi
# the counters, from stats lines printed after each check (every 10 s)
if wait_after $flog $l1 "firewall: stats:" 20; then
  s1=$(statv spoofed $l1)
  if [ "${s1:-0}" -ge $((${s0:-0} + 3)) ]; then log spoof-counted ok ${s0:-0} $s1; else
    log spoof-counted FAIL "spoofed= ${s0:-0} before, ${s1:-none} after 3 spoofed pings"
  fi
else log spoof-counted FAIL "no stats line"; fi
if wait_after $flog $l3 "firewall: stats:" 20; then
  i1=$(statv inter-client $l3)
  if [ "${i1:-0}" -gt "${i0:-0}" ]; then log a-to-b-counted ok ${i0:-0} $i1; else
    log a-to-b-counted FAIL "inter-client= ${i0:-0} before, ${i1:-none} after"
  fi
else log a-to-b-counted FAIL "no stats line"; fi
"""

#: The uplink taken away and given back under an established flow.
UPLINK_FLOW = r"""
# The firewall's uplink detached and attached again (`xl network-detach` /
# `-attach`, as when the uplink's backend domain is replaced) while client A
# holds a TCP connection to dom0 that carries a line a second: the firewall
# keeps the flow's state (conntrack, NAT) across the outage, so the same
# connection must deliver all 20 lines.
send client-a tick "(sleep 60 2>/dev/null | nc @DOM0@ @TICK@ > /tmp/ticks 2>&1 &); i=0; \
while [ \$i -lt 50 ] && ! grep -q tick-20 /tmp/ticks; do sleep 1; i=\$((i + 1)); done; \
echo lines \$(grep -c tick- /tmp/ticks) last \$(tail -n 1 /tmp/ticks)"
sleep 4
on0=$(grep -c -E "firewall: uplink [0-9a-f:]+ on" $flog)
t=$(up)
out=$(timeout 60 xl network-detach firewall 0 2>&1); rc1=$?
sleep 1
out2=$(timeout 60 xl network-attach firewall bridge=xenbr0 mac=00:16:3e:6d:6f:10 ip=10.99.0.10 2>&1); rc2=$?
if [ $rc1 = 0 ] && [ $rc2 = 0 ] && wait_count $flog "firewall: uplink [0-9a-f:]+ on" $((on0 + 1)) 60; then
  log uplink-back ok $t $(up)
else
  log uplink-back FAIL "detach rc=$rc1 $out attach rc=$rc2 $out2: $(grep -a 'firewall: uplink' $flog | tail -n 3 | tr -d '\r' | tr '\n' ' ')"
fi
result client-a tick 60
case "$out" in *"lines 20 last tick-20"*) log uplink-flow ok $out ;; *) log uplink-flow FAIL "rc=$rc $out" ;; esac
"""

#: --hostile-uplink: the uplink served by the hostile image's netback.
HOSTILE_UPLINK = r"""
if [ @HUPLINK@ = 1 ]; then
# The firewall's uplink served by a hostile backend (a malicious sys-net):
# the hostile image as the uplink's driver domain, each connection of the
# firewall's netfront meeting the next attack (tx-bad-id rx-bad-id
# rx-bad-size index flood keep-maps stall). The firewall must notice each
# violation and connect again, and keep answering client A meanwhile (its
# pings of the firewall's client-side address); once the hostile domain is
# gone and the real uplink is back, A's probes get through again and the
# firewall's grants, mappings, event channels and memory are back where they
# were (the pages the hostile backend kept mapped freed once Xen unmapped
# them with the domain).
blog_=/var/log/xen/console/guest-hostile-back.log
rm -f $blog_
res0=$(grep -a "firewall: resources:" $flog | tail -n 1 | tr -d '\r' | sed 's/.*firewall: resources: //')
l0=$(nlines $flog)
t=$(up)
xl create /guest/hostile-pv.cfg 'name="hostile-back"' 'vif=[]' 'extra="hostile.back=all"' >/dev/null 2>&1
if wait_for $blog_ "hostile: serving vifs" 30; then log hostile-uplink-start ok $t $(up); else
  log hostile-uplink-start FAIL "$(tail -n 5 $blog_ 2>/dev/null | tr -d '\r' | tr '\n' ' ')"
fi
timeout 60 xl network-detach firewall 0
xl network-attach firewall backend=hostile-back mac=00:16:3e:6d:6f:10 ip=10.99.0.10
send client-a hsping "ping -c 80 -i 0.5 -W 1 10.137.0.1 | grep -E 'seq=|transmitted|round-trip'"
if wait_for $blog_ "pass 1 done" 120; then
  log hostile-uplink-pass ok $t $(up) $(grep -a -o "pass 1 done.*" $blog_ | tr -d '\r')
else
  log hostile-uplink-pass FAIL "$(grep -a 'hostile: back' $blog_ | tail -n 8 | tr -d '\r' | tr '\n' ' ')"
fi
grep -a "hostile: back " $blog_ | tr -d '\r' | sed 's/^.*hostile: back /RIG hostile-back /'
result client-a hsping 60
# (judged by check_hostile_uplink: the answers' count and times)
echo "RIG hostile-uplink-ping rc=$rc $out"
since $flog $l0 | grep -a -E "firewall: (uplink|no uplink)" | tr -d '\r' | sed 's/^.*firewall: /RIG hostile-fw /'
xl destroy hostile-back
timeout 60 xl network-detach firewall 0 >/dev/null 2>&1
on0=$(grep -c -E "firewall: uplink [0-9a-f:]+ on" $flog)
xl network-attach firewall bridge=xenbr0 mac=00:16:3e:6d:6f:10 ip=10.99.0.10
if wait_count $flog "firewall: uplink [0-9a-f:]+ on" $((on0 + 1)) 60; then log hostile-uplink-back ok $t $(up); else
  log hostile-uplink-back FAIL "$(since $flog $l0 | grep -a 'firewall: ' | grep -v stats | tail -n 6 | tr -d '\r' | tr '\n' ' ')"
fi
l1=$(nlines $clog)
if wait_after $clog $l1 "probe @DOM0@:@ALLOWED@ ok" 40; then log hostile-uplink-probe ok; else log hostile-uplink-probe FAIL; fi
# the resources printed at the uplink's return, after the hostile domain's death
sleep 2
echo "RIG hostile-uplink-res0 $res0"
echo "RIG hostile-uplink-res1 $(grep -a 'firewall: resources:' $flog | tail -n 1 | tr -d '\r' | sed 's/.*firewall: resources: //')"
fi
"""

#: The firewall restarted with both clients behind it (after the options
#: that need the first firewall).
RESTART = r"""
# The firewall restarted: a client's vif belongs to the backend domain it
# was created with, so each is detached (the backend is gone) and attached
# again once the new firewall is up (docs/firewall.md).
t0=$(up)
xl destroy firewall
mv $flog /tmp/firewall-1.log
(timeout 60 xl network-detach client-a 0; echo "RIG detach-a rc=$? $(up)") > /tmp/det-a 2>&1 &
pa=$!
(timeout 60 xl network-detach client-b 0; echo "RIG detach-b rc=$? $(up)") > /tmp/det-b 2>&1 &
pb=$!
# The new firewall's uplink address, gateway and resolver from DHCP.
fw_start dhcp || log restart-forwarding FAIL "xl create -p"
if wait_for $flog "firewall: forwarding:" 90; then log restart-forwarding ok $t0 $(up); else log restart-forwarding FAIL; fi
if grep -q -E "firewall: dhcp: lease 10\.99\.0\.10(/24)? router 10\.99\.0\.1 dns 10\.99\.0\.1 from 10\.99\.0\.1 " $flog; then
  log dhcp ok $(grep -a -o -E "firewall: dhcp: lease .*" $flog | head -n 1 | tr -d '\r')
else
  log dhcp FAIL "$(grep -a -E 'firewall: (dhcp|uplink)' $flog | tr -d '\r' | tr '\n' ' ') dnsmasq: $(grep -i dhcp $dlog | tail -n 5 | tr '\n' ' ')"
fi
rules
wait $pa $pb
cat /tmp/det-a /tmp/det-b
ra=$(sed -n 's/^RIG detach-a rc=\([0-9]*\).*/\1/p' /tmp/det-a)
rb=$(sed -n 's/^RIG detach-b rc=\([0-9]*\).*/\1/p' /tmp/det-b)
fa=$(xenstore-read /local/domain/$(xl domid client-a)/device/vif/0/state 2>/dev/null || echo gone)
fb=$(xenstore-read /local/domain/$(xl domid client-b)/device/vif/0/state 2>/dev/null || echo gone)
# (when both detaches had ended)
te=$(cat /tmp/det-a /tmp/det-b | sed -n 's/^RIG detach-[ab] rc=[0-9]* //p' | sort -n | tail -n 1)
if [ "$ra" = 0 ] && [ "$rb" = 0 ] && [ $fa = gone ] && [ $fb = gone ]; then log restart-detach ok $t0 $te; else
  log restart-detach FAIL "xl network-detach rc $ra $rb, frontend state $fa $fb"
fi
ca=$(nlines $clog)
cb=$(nlines $blog)
t1=$(up)
xl network-attach client-a backend=firewall "ip=@IP@ fd09::10" mac=00:16:3e:6d:6f:20; xa=$?
xl network-attach client-b backend=firewall ip=10.137.0.11 mac=00:16:3e:6d:6f:22; xb=$?
if wait_after $clog $ca "linuxdomu: net: .* configured again" 60 && wait_after $blog $cb "linuxdomu: net: .* configured again" 30; then
  log restart-attach ok $t1 $(up)
else
  log restart-attach FAIL "xl network-attach rc $xa $xb; A: $(since $clog $ca | grep -a 'net:' | tr -d '\r' | tr '\n' ' ') B: $(since $blog $cb | grep -a 'net:' | tr -d '\r' | tr '\n' ' ')"
  # both ends' states, and the clients' own view
  for c in client-a client-b; do
    d=$(xl domid $c)
    for v in $(xenstore-list /local/domain/$d/device/vif 2>/dev/null); do
      echo "RIG vif-state $c vif $v frontend=$(xenstore-read /local/domain/$d/device/vif/$v/state 2>&1)" \
        "backend=$(xenstore-read /local/domain/$fw/backend/vif/$d/$v/state 2>&1)"
    done
    cmd $c diag-$c 30 "ls /sys/class/net; dmesg | tail -n 15"
    echo "RIG diag $c rc=$rc $out"
  done
fi
# A vif without ip= is refused (libxl waits 10 s for it: in the background)
(timeout 60 xl network-attach client-b backend=firewall mac=00:16:3e:6d:6f:21; echo "RIG attach-noip rc=$?") &
noip=$!
cmd client-a again 40 "for i in 1 2 3; do echo probe | nc -w 3 @DOM0@ @ALLOWED@ && break; sleep 1; done"
case "$out" in *served-by-dom0*) log restart-tcp ok ;; *) log restart-tcp FAIL "rc=$rc $out" ;; esac
get_send client-b rgetb http://@DOM0@/blob
get_send client-a rgeta http://10.99.0.2/blob
get_check restart-get-a client-a rgeta
get_check restart-get-b client-b rgetb
log restart-end $t0 $(up)
wait $noip
if wait_for $flog "firewall: vif [^ ]* refused" 20; then log refused ok; else log refused FAIL; fi
"""

#: The end of one type's run: the logs, everything destroyed.
END = r"""
xenstore-ls /local/domain/$fw/qubesdb | sed 's/^/RIG store /'
[ -f /tmp/firewall-1.log ] && sed 's/^/FW /' /tmp/firewall-1.log
sed 's/^/FW /' $flog
sed 's/^/CLIENT /' $clog
sed 's/^/CLIENTB /' $blog
since $dlog $d0 | sed 's/^/DNS /'
xl list
xl destroy client-a
xl destroy client-b
xl destroy firewall
log end @TYPE@
"""

#: --hostile (after the main checks, with the first firewall): a domain
#: whose vifs attack the firewall (services/hostile), twice.
HOSTILE = r"""
if [ @HOSTILE@ = 1 ]; then
# Seven vifs, one attack each (bad-grant malformed index flood flows frags
# rx-stall), with addresses whose policy is accept: their well-formed frames
# go through conntrack and NAT to dom0. Client A downloads the file while
# the first attack runs. The firewall's resources after the hostile domain
# is gone are compared between the two rounds: an attack that leaked would
# show in the second.
hv='vif=["backend=firewall,ip=10.137.0.41,mac=00:16:3e:6d:6f:41","backend=firewall,ip=10.137.0.42,mac=00:16:3e:6d:6f:42","backend=firewall,ip=10.137.0.43,mac=00:16:3e:6d:6f:43","backend=firewall,ip=10.137.0.44,mac=00:16:3e:6d:6f:44","backend=firewall,ip=10.137.0.45,mac=00:16:3e:6d:6f:45","backend=firewall,ip=10.137.0.46,mac=00:16:3e:6d:6f:46","backend=firewall,ip=10.137.0.47,mac=00:16:3e:6d:6f:47"]'
for a in 41 42 43 44 45 46 47; do xenstore-write $qf/10-137-0-$a/policy accept $qf/10-137-0-$a ""; done
hlog=/var/log/xen/console/guest-hostile.log
for round in 1 2; do
  rm -f $hlog
  l0=$(nlines $flog)
  t=$(up)
  xl create /guest/hostile-pv.cfg "$hv" 'extra="hostile.seconds=@HSECS@"' >/dev/null 2>&1
  hid=$(xl domid hostile 2>/dev/null)
  if wait_for $hlog "hostile: attacking for" 30; then log hostile-start-$round ok $t $(up); else
    log hostile-start-$round FAIL "$(tail -n 5 $hlog 2>/dev/null | tr -d '\r' | tr '\n' ' ')"
  fi
  if [ $round = 1 ]; then
    get_send client-a hget http://10.99.0.2/blob
    get_check hostile-get client-a hget
    cmd client-a hping 40 "ping -c 5 -W 3 @DOM0@"
    if [ "$rc" = 0 ]; then log hostile-ping ok; else log hostile-ping FAIL "rc=$rc $out"; fi
  fi
  wait_for $hlog "hostile: done" $((@HSECS@ + 100)) || log hostile-done-$round FAIL
  grep -a "hostile: report" $hlog | tr -d '\r' | sed "s/^.*hostile: report /RIG hostile-report $round /"
  xl destroy hostile
  # every vif of it closed and its directory removed (the toolstack is done)
  # (60 s: xl destroy has libxl wait for our Closed of each of the seven
  # vifs; one run on a quiet machine had the seventh removed after 30 s)
  # Counted in xenstore (the backend directories left under ours), not
  # from the console's "removed" lines: one of those went missing in two
  # quiet runs while round 2 found every directory gone at once.
  left() { xenstore-list /local/domain/$fw/backend/vif/$hid 2>/dev/null | wc -l; }
  n=0; td=$(up)
  while [ $n -lt 300 ]; do
    [ "$(left)" = 0 ] && break
    sleep 0.2; n=$((n + 1))
  done
  echo "RIG hostile-removed $round $td $(up) console-lines $(since $flog $l0 | grep -a -c "vif backend/vif/$hid/[0-9]* removed")"
  sleep 1
  res=$(since $flog $l0 | grep -a "firewall: resources:" | tail -n 1 | tr -d '\r' | sed 's/.*firewall: resources: //')
  echo "RIG hostile-resources $round $((7 - $(left))) $res"
  since $flog $l0 | grep -a "vif backend/vif/$hid/" | grep -a "closed" | tr -d '\r' | sed "s/^.*firewall: /RIG hostile-closed $round /"
  if xl list firewall >/dev/null 2>&1; then log hostile-firewall-up-$round ok; else log hostile-firewall-up-$round FAIL; fi
done
fi
"""

#: --uplink-restart (after the main checks, with the first firewall).
UPLINK = r"""
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
"""

#: --detach and --cycles (after the restart).
OPTIONS = r"""
if [ @DETACH@ = 1 ]; then
  # A moat client's vif detached with xl network-detach: libxl waits for
  # the firewall to remove the backend directory, then removes the
  # frontend's. (detlog, not dlog: dlog is dnsmasq's log, read again by
  # the next type's DNS checks.)
  detlog=/var/log/xen/console/guest-det.log
  rm -f $detlog
  xl create /guest/netdemo-pv.cfg 'name="det"' 'vif=["backend=firewall,ip=10.137.0.21,mac=00:16:3e:6d:6f:31"]' \
    'extra="netdemo.ip=10.137.0.21/24 netdemo.gw=10.137.0.1"' >/dev/null 2>&1
  if wait_for $detlog "netdemo: ready" 60; then
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
      sed 's/^/DETNOW /' $detlog | tail -n 10
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
"""


def _fill(s: str, t: str, cycles: int = 0, uplink_restart: int = 0, detach: bool = False,
          hostile: bool = False, hostile_uplink: bool = False) -> str:
    for k, v in {"TYPE": t, "CYCLES": str(cycles), "UPLINK": str(uplink_restart),
                 "DETACH": "1" if detach else "0", "HOSTILE": "1" if hostile else "0",
                 "HUPLINK": "1" if hostile_uplink else "0",
                 "HSECS": str(HOSTILE_SECONDS), "IP": CLIENT_IP, "ENC": CLIENT_ENC, "DOM0": DOM0,
                 "ALLOWED": str(ALLOWED), "DENIED": str(DENIED), "TICK": str(TICK), "BLOB_MIB": str(BLOB_MIB)}.items():
        s = s.replace(f"@{k}@", v)
    return s


def script(t: str, cycles: int = 0, uplink_restart: int = 0, detach: bool = False,
           hostile: bool = False, hostile_uplink: bool = False) -> str:
    """One type's part of the dom0 script (after `setup()`)."""
    return _fill(SCRIPT + HOSTILE + UPLINK + UPLINK_FLOW + HOSTILE_UPLINK + RESTART + OPTIONS + END, t,
                 cycles, uplink_restart, detach, hostile, hostile_uplink)


def setup() -> str:
    """The dom0 script's start: helpers and dom0's servers."""
    return _fill(SETUP, "")


#: dom0's checks before the types.
SETUP_WORDS = ["dnsmasq", "servers"]
#: Each type's checks (`RIG <word> ok|FAIL ...`), in order.
WORDS = ["forwarding", "rules", "dsthost-query", "allowed", "denied", "client-b-ready", "dsthost-allowed",
         "client-b-get", "dsthost-other-denied", "dns", "spoof", "a-to-b", "ipv6-allowed", "ipv6-denied",
         "rule-change", "spoof-counted", "a-to-b-counted", "uplink-back", "uplink-flow", "restart-forwarding", "dhcp", "restart-detach",
         "restart-attach", "restart-tcp", "restart-get-a", "restart-get-b", "refused"]
#: --hostile-uplink's checks.
HOSTILE_UPLINK_WORDS = ["hostile-uplink-start", "hostile-uplink-pass", "hostile-uplink-back",
                        "hostile-uplink-probe"]
#: Of client A's 80 pings of the firewall during the hostile uplink's
#: attacks, the share that must be answered (the firewall stalled by its
#: uplink would answer none; a loaded rig loses a few).
HOSTILE_UPLINK_PING_MIN = 0.9
#: --hostile's checks.
HOSTILE_WORDS = ["hostile-start-1", "hostile-get", "hostile-ping", "hostile-firewall-up-1",
                 "hostile-start-2", "hostile-firewall-up-2"]


def rig_lines(texts: list, word: str) -> list:
    """The words after `RIG <word> ` of each such line."""
    return [l.split()[2:] for l in texts if l.startswith(f"RIG {word} ")]


def check_words(texts: list, prefix: str, words: list) -> tuple:
    """(passed, failures): each word's first `RIG <word>` line must say ok."""
    passed, failures = 0, []
    for word in words:
        r = rig_lines(texts, word)
        if r and r[0] and r[0][0] == "ok":
            passed += 1
        else:
            failures.append(f"{prefix}{word}: {' '.join(r[0]) if r else 'never checked'}")
    return passed, failures


def resources(line: str) -> dict:
    """The key=value pairs with integer values of a line (a `firewall:
    resources:` line, a hostile report), as a dict."""
    return {k: int(v) for k, v in re.findall(r"([a-z-]+)=(\d+)", line)}


def check_hostile(texts: list, t: str) -> tuple:
    """(passed, failures) of --hostile's two rounds (HOSTILE)."""
    rig = lambda word: rig_lines(texts, word)  # noqa: E731
    passed, failures = 0, []
    for rnd in ("1", "2"):
        reports = {r[2]: r for r in rig("hostile-report") if r[:1] == [rnd] and len(r) >= 3}
        for attack in HOSTILE_ATTACKS:
            r = reports.get(attack)
            if not r:
                failures.append(f"{t}: hostile round {rnd}: no report of {attack}")
                continue
            f = resources(" ".join(r[3:]))
            print(f"bench: {t}: hostile round {rnd}: {attack}: {' '.join(r[3:])}")
            if attack in ("bad-grant", "malformed", "index"):
                # every one of these is fatal to the vif sooner or later
                ok = f.get("closed", 0) >= 1 and f.get("connects", 0) >= 1
                why = "the firewall never closed the vif"
            elif attack in ("flood", "flows", "frags"):
                # well-formed frames: never a reason to close the vif, and
                # the firewall keeps taking them
                ok = f.get("connects") == 1 and f.get("closed") == 0 and f.get("ok", 0) > 0
                why = "a well-formed flood must be served (and dropped or forwarded), not closed"
            else:
                ok = f.get("connects", 0) >= 1
                why = "never connected"
            if ok:
                passed += 1
            else:
                failures.append(f"{t}: hostile round {rnd}: {attack}: {why}: {' '.join(r[3:])}")
        for c in rig("hostile-closed"):
            if c[:1] == [rnd]:
                print(f"bench: {t}: hostile round {rnd}: firewall: {' '.join(c[1:])}")
    res = {r[0]: r for r in rig("hostile-resources") if r}
    if "1" in res and "2" in res and len(res["1"]) > 2 and len(res["2"]) > 2:
        a, b = resources(" ".join(res["1"][2:])), resources(" ".join(res["2"][2:]))
        print(f"bench: {t}: firewall resources after hostile round 1: {' '.join(res['1'][2:])}")
        print(f"bench: {t}: firewall resources after hostile round 2: {' '.join(res['2'][2:])}")
        same = [k for k in ("grants-free", "maps", "evtchns") if a.get(k) != b.get(k) or k not in a]
        # Frames: the heap grows by taking free frames and keeps them (its
        # high-water mark: the queues of a flood are bounded, and round 2
        # may go higher than round 1), so free frames plus the heap's
        # memory must come back exactly.
        if "frames-free" not in a or (a["frames-free"] * 4096 + a.get("heap-managed", 0)
                                      != b.get("frames-free", 0) * 4096 + b.get("heap-managed", 0)):
            same.append("frames-free + heap-managed")
        heap = b.get("heap-in-use", 0) - a.get("heap-in-use", 0)
        # Grants, maps and event channels must come back exactly; the heap
        # in use may hold the connection tracking of the flood's flows
        # (bounded: 4096 per client), which may still be alive.
        if res["1"][1] == "7" and res["2"][1] == "7" and not same and heap < 512 * 1024:
            passed += 1
        else:
            failures.append(f"{t}: hostile: resources moved between the rounds ({same or 'heap'} "
                            f"{heap:+} B heap; vif directories removed {res['1'][1]}, {res['2'][1]} of 7)")
    else:
        failures.append(f"{t}: hostile: no resources lines: {res}")
    return passed, failures


def check_hostile_uplink(texts: list, t: str) -> tuple:
    """(passed, failures): each violation of the hostile uplink noticed by
    the firewall, every endured attack survived, and the resources back."""
    passed, failures = 0, []
    back = [l[len("RIG hostile-back "):] for l in texts if l.startswith("RIG hostile-back ")]
    for l in back:
        print(f"bench: {t}: hostile uplink: {l}")
    for l in [l for l in texts if l.startswith("RIG hostile-fw ")]:
        print(f"bench: {t}: firewall under the hostile uplink: {l[len('RIG hostile-fw '):]}")
    verdicts = {}
    for l in back:
        m = re.match(r"\S+ \((\S+)\): (.*)", l)
        if m and "connected" != m.group(2):
            verdicts.setdefault(m.group(1), m.group(2))
    for attack in ["tx-bad-id", "rx-bad-id", "rx-bad-size", "index"]:
        v = verdicts.get(attack, "")
        if "noticed" in v:
            passed += 1
        else:
            failures.append(f"{t}: hostile uplink: the firewall did not close over {attack}: {v or 'no line'}")
    for attack in ["flood", "keep-maps", "stall"]:
        v = verdicts.get(attack, "")
        if "endured" in v:
            passed += 1
        else:
            failures.append(f"{t}: hostile uplink: {attack} not endured: {v or 'no line'}")
    ping = [l for l in texts if l.startswith("RIG hostile-uplink-ping ")]
    seqs = sorted({int(m) for m in re.findall(r"seq=(\d+)", ping[0])}) if ping else []
    times = [float(m) for m in re.findall(r"time=([0-9.]+) ms", ping[0])] if ping else []
    lost = sorted(set(range(80)) - set(seqs))
    slow = sum(1 for x in times if x > 1000)
    print(f"bench: {t}: client A's 80 pings of the firewall under the hostile uplink: {len(seqs)} answered, "
          f"lost seqs {lost}, {slow} slower than 1 s, max {max(times, default=0):.0f} ms")
    if len(seqs) >= HOSTILE_UPLINK_PING_MIN * 80:
        passed += 1
    else:
        failures.append(f"{t}: hostile uplink: only {len(seqs)} of 80 pings of the firewall answered: "
                        f"{ping[0][:300] if ping else 'no ping line'}")
    r0 = [l[len("RIG hostile-uplink-res0 "):] for l in texts if l.startswith("RIG hostile-uplink-res0 ")]
    r1 = [l[len("RIG hostile-uplink-res1 "):] for l in texts if l.startswith("RIG hostile-uplink-res1 ")]
    if r0 and r1:
        a, b = resources(r0[0]), resources(r1[0])
        print(f"bench: {t}: resources before the hostile uplink: {r0[0]}")
        print(f"bench: {t}: resources with the real uplink back:  {r1[0]}")
        moved = [k for k in ["grants-free", "maps", "evtchns"] if k not in a or a.get(k) != b.get(k)]
        if moved:
            failures.append(f"{t}: hostile uplink: resources not back: {moved} ({a} -> {b})")
        else:
            passed += 1
    else:
        failures.append(f"{t}: hostile uplink: no resources lines")
    return passed, failures


def check(texts: list, t: str, cycles: int = 0, uplink_restart: int = 0, detach: bool = False,
          hostile: bool = False, hostile_uplink: bool = False) -> tuple:
    """(passed, failures) for one type's run."""
    rig = lambda word: rig_lines(texts, word)  # noqa: E731

    passed, failures = check_words(texts, f"{t}: ", WORDS + (["detach"] if detach else [])
                                   + (HOSTILE_WORDS if hostile else [])
                                   + (HOSTILE_UPLINK_WORDS if hostile_uplink else []))
    if hostile:
        p, f = check_hostile(texts, t)
        passed += p
        failures += f
    if hostile_uplink:
        p, f = check_hostile_uplink(texts, t)
        passed += p
        failures += f
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
    for word, what in [("dsthost-allowed", "A, IPv4"), ("client-b-get", "B, IPv4, beside A's"),
                       ("ipv6-allowed", "A, IPv6"), ("restart-get-a", "A after the restart"),
                       ("restart-get-b", "B after the restart, beside A's")]:
        g = rig(word)
        if g and g[0][0] == "ok" and len(g[0]) == 4:
            secs = float(g[0][2]) - float(g[0][1])
            print(f"bench: {t}: download through the firewall ({what}, busybox wget): {int(g[0][3])} bytes "
                  f"in {secs:.2f} s" + (f" = {int(g[0][3]) * 8 / secs / 1e6:.1f} Mbit/s" if secs > 0 else ""))
    for word, what in [("restart-forwarding", "xl destroy of the firewall -> the new one forwarding"),
                       ("restart-detach", "xl destroy of the firewall -> both clients' vifs detached"),
                       ("restart-attach", "xl network-attach -> both clients' interfaces configured")]:
        r = rig(word)
        if r and r[0][0] == "ok" and len(r[0]) == 3:
            print(f"bench: {t}: {what}: {float(r[0][2]) - float(r[0][1]):.1f} s")
    e = rig("restart-end")
    if e and len(e[0]) == 2:
        print(f"bench: {t}: firewall restart, from xl destroy to both clients' downloads checked: "
              f"{float(e[0][1]) - float(e[0][0]):.1f} s")
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
    ap.add_argument("--types", default="pv", help="pv and/or pvh (the firewall's type; the clients are PV)")
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
    ap.add_argument("--hostile", default="", metavar="TYPES",
                    help="for these of the types (pv, pvh), also run the hostile image's seven attacks "
                         "against the firewall, twice, while client A downloads (about 70 s each)")
    ap.add_argument("--hostile-uplink", default="", metavar="TYPES",
                    help="for these of the types, also serve the firewall's uplink from the hostile image's "
                         "netback (seven attacks in turn) while client A pings the firewall (about 60 s)")
    ap.add_argument("--timeout", type=float, default=1500)
    ap.add_argument("--log")
    args = ap.parse_args()
    types = [t for t in args.types.split(",") if t]
    hostile_types = [t for t in args.hostile.split(",") if t]
    huplink_types = [t for t in args.hostile_uplink.split(",") if t]
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
    if hostile_types or huplink_types:
        hostile = image.parent / "hostile"
        if not hostile.is_file():
            print(f"no hostile image at {hostile}: run `make images`", file=sys.stderr)
            return 2
        guests += [(hostile, "hostile"), (REPO / "configs/hostile-pv.cfg", "hostile-pv.cfg")]
    xenrig.exit_on_sigterm()
    text = setup() + "\n".join(script(t, args.cycles, args.uplink_restart, detach, t in hostile_types,
                                      t in huplink_types)
                               for t in types)
    result = xenrig.run_script(text, guests=guests, timeout=args.timeout,
                               log=Path(args.log) if args.log else None)
    texts = [l for _, l in result.lines]
    passed, failures = 0, []
    if result.rc != 0:
        failures.append(f"rig: dom0 script ended with rc {result.rc} (timeout 124, rig failure 125)")
    p, f = check_words(texts, "dom0: ", SETUP_WORDS)
    passed += p
    failures += f
    for t in types:
        # each type's lines lie between its `RIG create firewall-<t>` and `RIG end <t>`
        try:
            a = next(i for i, l in enumerate(texts) if l.startswith(f"RIG create firewall-{t}"))
        except StopIteration:
            failures.append(f"{t}: never started")
            continue
        b = next((i for i, l in enumerate(texts) if l.startswith(f"RIG end {t}")), len(texts))
        p, f = check(texts[a:b + 1], t, args.cycles, args.uplink_restart, detach, t in hostile_types,
                     t in huplink_types)
        passed += p
        failures += f
    for f in failures:
        print(f"FAIL: {f}")
    print(f"test_firewall: {passed} passed, {len(failures)} failed")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
