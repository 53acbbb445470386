#!/usr/bin/env python3
"""The VPN gateway VM on real Xen (issue 15 item 4): moat's `vpn` image
started with `xl create configs/vpn-<type>.cfg` as users start it, its
uplink on dom0's bridge; the remote WireGuard peer is dom0's Linux kernel
WireGuard (wireguard.ko from the rig's kernel package, `wg` from
wireguard-tools) on 10.99.0.1:51820 with the tunnel addresses 10.64.0.1 and
fd64::1, where dom0 serves HTTP (a random file) and DNS (dnsmasq: every
name under vpn.test is 10.64.0.1). A Debian Linux PV client domU (rig/domu/,
configs/vpn-client-pv.cfg, 10.137.0.20 and fd09::20) sits behind the VPN
VM for the whole run. In one rig boot:

- the client is created first, without a vif (its boot under TCG is the
  longest wait of the run: it overlaps dom0's setup and the VM's start);
  its vif is attached (`xl network-attach ... backend=vpn`) once a VM is
  up, and detached and attached again whenever the VM is replaced;
- a capture (tcpdump) of every frame on dom0's bridge runs from before the
  first VM starts to after the last one is gone.

Per type (the VM's):

- pvh: the VM created paused, its wg-quick file written by dom0 with stock
  `xenstore-write` into /local/domain/<vpn>/vpn/wg-quick, then started: it
  says `vpn: tunnel from xenstore vpn/wg-quick`; pv: the file on a 64 KiB
  raw disk (`disk=` added on xl create's command line), read at boot: `vpn:
  tunnel from the disk`;
- the client downloads the file from 10.64.0.1 (reachable only through the
  tunnel) with size and sha256 equal to dom0's; dom0's `wg` shows a
  handshake with the VM;
- MSS: the client's interface keeps MTU 1500 (its SYNs say mss 1460); a
  capture of dom0's wg0 shows every SYN from the tunnel address with mss
  1380 (the tunnel's MTU 1420 - 40), and the VM's `mss-clamped=` counter
  moved;
- DNS: the client asks Qubes' virtual servers 10.139.1.1 and 10.139.1.2 and
  an arbitrary address on port 53 (192.0.2.53): each is answered, dnsmasq
  logs each query from 10.64.0.2 (the tunnel address), wg0's capture shows
  them to 10.64.0.1 port 53;
- IPv6 tunnelled: the tunnel has the address fd64::2; the client's ping6 to
  fd64::1 is answered and wg0's capture shows the echo requests from
  fd64::2 (masqueraded). The client's route to the gateway fd09::1 uses a
  static neighbour entry with the gateway MAC fe:ff:ff:ff:ff:ff (the VM
  answers no neighbour solicitations; Qubes' setup-ip sets the same entry
  in client qubes), set with iproute2's `ip` packed into the client;
- the peer down (dom0's wg0 down) for 30 s (--peer-down) while the client
  keeps sending (TCP with a cleartext marker, ping, DNS for a marker name,
  ping6); the peer back: the client's download works again without
  restarting anything;
- the VM restarted with the client running and sending: `xl destroy`, the
  client's vif detached, the VM created again with a file that has no IPv6
  Address, the vif attached again: the client's download works again; its
  ping6 is now dropped and counted (`no-tunnel-address=`), and nothing IPv6
  comes out of the tunnel;
- a bad configuration written to the key (xenstore wins over the disk):
  the console says `not forwarding: bad wg-quick configuration`, and the VM
  sends nothing for --silent seconds (capture) while the client keeps
  sending.

Then, over the bridge capture of the whole run: every frame from the VM's
MAC is ARP or UDP 10.99.0.30.51820 -> 10.99.0.1.51820, no frame on the
bridge carries the client's addresses or MAC or the cleartext marker.

`make test` runs one type (pv, the file from the disk: a PVH VM of this
image triple-faulted once under QEMU's emulated SVM, docs/vpn.md);
`make test-vpn` both. dom0's tools that the rig lacks (wg, tcpdump,
ip from iproute2) are taken from this host (Debian bookworm, the rig's
release) with their libraries and run through their own ld.so; the kernel
modules come from the rig's cached linux-image package. Prints `test_vpn: N
passed, M failed`; exit 1 on any failure. Needs `make images`
(target/images/amd64/vpn)."""

from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xenrig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "domu"))
import linux_domu  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
#: Modules dom0 loads for its WireGuard peer (dependencies added).
MODULES = ["wireguard"]
#: Host programs put into dom0 (with their libraries).
PROGRAMS = ["/usr/bin/wg", "/usr/bin/tcpdump", "/usr/sbin/ip"]
#: Put into the client (with its libraries, under /kit): iproute2's ip, for
#: the gateway's static IPv6 neighbour entry (busybox's ip cannot add one).
CLIENT_PROGRAMS = ["/usr/sbin/ip"]
VPN_MAC = "00:16:3e:6d:6f:30"
CLIENT_IP = "10.137.0.20"
CLIENT_IP6 = "fd09::20"
CLIENT_MAC = "00:16:3e:6d:6f:40"

SETUP = r"""
set -u
log() { echo "RIG $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
# uptime in whole seconds, without a fork
secs_now() { local t _r; read -r t _r </proc/uptime; echo "${t%.*}"; }
# wait_for FILE REGEX SECONDS (by the clock: under TCG a poll loop's forks
# take longer than its sleeps)
wait_for() {
  local end=$(($(secs_now) + $3))
  while :; do
    grep -a -q -E -- "$2" "$1" 2>/dev/null && return 0
    [ "$(secs_now)" -lt "$end" ] || return 1
    sleep 0.2
  done
}
nlines() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }
# wait_after FILE N REGEX SECONDS: REGEX in FILE after its first N lines
wait_after() {
  local end=$(($(secs_now) + $4))
  while :; do
    tail -n +$(($2 + 1)) "$1" 2>/dev/null | grep -a -q -E -- "$3" && return 0
    [ "$(secs_now)" -lt "$end" ] || return 1
    sleep 0.2
  done
}
send() {
  [ -s /tmp/tty-$1 ] || xenstore-read /local/domain/$(xl domid $1 2>/dev/null)/console/tty >/tmp/tty-$1 2>/dev/null
  if [ ! -s /tmp/tty-$1 ]; then echo "RIG send $1 $2: no console tty"; return 1; fi
  printf '@%s %s\n' "$2" "$3" >"$(cat /tmp/tty-$1)"
}
result() {
  _log=/var/log/xen/console/guest-$1.log
  if wait_for $_log "linuxdomu: cmd $2 rc=" $3; then
    rc=$(grep -a "linuxdomu: cmd $2 rc=" $_log | tail -n 1 | tr -d '\r' | sed 's/.*rc=//')
  else
    rc=none
  fi
  out=$(grep -a "linuxdomu: cmd $2: " $_log | tr -d '\r' | sed "s/.*linuxdomu: cmd $2: //" | tr '\n' ' ')
}
# cmd DOMAIN ID SECONDS COMMAND: runs COMMAND in the client (ID unique in
# the run); sets rc and out
cmd() { if send "$1" "$2" "$4"; then result "$1" "$2" "$3"; else rc=none; out="not sent"; fi; }
# statv NAME FILE: counter NAME of the last `vpn: stats:` line in FILE
statv() { grep -a "vpn: stats:" "$2" | tail -n 1 | tr -d '\r' | sed -n "s/.* $1=\([0-9]*\).*/\1/p"; }

vlog=/var/log/xen/console/guest-vpn.log
clog=/var/log/xen/console/guest-vpn-client.log
rm -f $vlog $clog /tmp/tty-*
t_start=$(up)
# The client first, without a vif: its boot overlaps everything up to the
# first VM's start (the vif is attached then).
(xl create /guest/vpn-client-pv.cfg 'vif=[]' 'ramdisk="/guest/vpn-client.cpio.gz"' @CLIENT_MEMORY@ \
  "extra=\"console=hvc0 quiet moat.ip=@CLIENT_IP@/24 moat.gw=10.137.0.1 moat.ip6=@CLIENT_IP6@/64 moat.gw6=fd09::1\"" \
  >/tmp/xl-client.out 2>&1; echo "rc=$?" >/tmp/xl-client.rc) &

# the kit: host programs with their libraries, run through their own ld.so
mkdir -p /tmp/kit && tar -xzf /guest/wgkit.tgz -C /tmp/kit || log kit FAIL "untar"
K=/tmp/kit
run() { $K/lib/ld-linux-x86-64.so.2 --library-path $K/lib "$@"; }
wg() { run $K/bin/wg "$@"; }
ipr() { run $K/bin/ip "$@"; }
# (Debian's tcpdump drops to a user `tcpdump` dom0 does not have, also for -r)
tcpd() { run $K/bin/tcpdump -Z root "$@"; }
for m in $(cat $K/mods/order); do insmod $K/mods/$m || log kit FAIL "insmod $m"; done
ipr link add wg0 type wireguard || log kit FAIL "ip link add wg0 type wireguard"
wg setconf wg0 /guest/dom0-wg.conf || log kit FAIL "wg setconf"
ipr addr add 10.64.0.1/24 dev wg0
# (Linux drops a link's IPv6 addresses when it goes down unless told to
# keep them: the peer-down step would take fd64::1 away for the next type)
echo 1 > /proc/sys/net/ipv6/conf/wg0/keep_addr_on_down || log kit FAIL "keep_addr_on_down"
ipr addr add fd64::1/64 dev wg0
ipr link set wg0 up
if wg show wg0 listen-port | grep -q 51820; then log wg-up ok; else log wg-up FAIL "$(wg show wg0 2>&1 | tr '\n' ' ')"; fi

# the servers behind the peer (on its tunnel address only)
mkdir -p /tmp/www
head -c $((@BLOB_MIB@ * 1048576)) /dev/urandom > /tmp/www/blob
blobsum=$(sha256sum /tmp/www/blob | cut -d' ' -f1)
blobsize=$(wc -c < /tmp/www/blob)
httpd -p 10.64.0.1:80 -h /tmp/www
dlog=/tmp/dnsmasq.log
dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --user=root --group=root --pid-file=/tmp/dnsmasq.pid \
  --listen-address=10.64.0.1 --bind-interfaces --local=/vpn.test/ --address=/vpn.test/10.64.0.1 \
  --log-queries --log-facility=$dlog || log dnsmasq FAIL

# the capture: every frame on the bridge, the whole run
# (ld.so started directly: $! is tcpdump itself)
$K/lib/ld-linux-x86-64.so.2 --library-path $K/lib $K/bin/tcpdump -Z root -i xenbr0 -n -U -s 256 -w /tmp/bridge.pcap \
  >/tmp/tcpdump.log 2>&1 &
cap=$!
sleep 1
if kill -0 $cap 2>/dev/null; then log capture ok; else log capture FAIL "$(tr '\n' ' ' < /tmp/tcpdump.log)"; fi
nattach=0

# the VM's wg-quick files (first with an IPv6 Address, then without)
full=/guest/vm-wg0.conf
v4only=/guest/vm-wg0-v4.conf

# attach: the client's vif on the VM now running; the client configures
# the new interface (`ready` the first time, `configured again` after),
# then gets the gateway's IPv6 neighbour entry. Says why on failure.
attach() {
  local n
  wait_for /tmp/xl-client.rc . 150 && grep -q rc=0 /tmp/xl-client.rc ||
    { echo "client not created: $(cat /tmp/xl-client.rc 2>/dev/null) $(tail -n 4 /tmp/xl-client.out | tr '\n' ' ')"; return 1; }
  wait_for $clog "linuxdomu: waiting for eth0" 150 || { echo "client not waiting for eth0"; return 1; }
  n=$(nlines $clog)
  xl network-attach vpn-client backend=vpn "ip=@CLIENT_IP@ @CLIENT_IP6@" mac=@CLIENT_MAC@ >/tmp/xl-attach.out 2>&1 ||
    { echo "xl network-attach: $(tail -n 3 /tmp/xl-attach.out | tr '\n' ' ')"; return 1; }
  wait_after $clog $n "linuxdomu: (ready:|net: .* configured again)" 120 ||
    { echo "no interface configured: $(tail -n +$((n + 1)) $clog | grep -a linuxdomu: | tr -d '\r' | tail -n 4 | tr '\n' '|')"; return 1; }
  nattach=$((nattach + 1))
  cmd vpn-client nb$nattach 30 "/kit/neigh fd09::1"
  [ "$rc" = 0 ] || { echo "neighbour entry: rc=$rc $out"; return 1; }
}
# detach: every vif of the client (after its backend, the VM, is gone)
detach() {
  local d v
  d=$(xl domid vpn-client)
  for v in $(xenstore-list /local/domain/$d/device/vif 2>/dev/null); do
    timeout 60 xl network-detach vpn-client $v >/tmp/xl-detach.out 2>&1 ||
      echo "RIG detach-note vif $v rc=$?: $(tail -n 2 /tmp/xl-detach.out | tr '\n' ' ')"
  done
}
# get WORD ID: the client downloads the file through the tunnel (a
# cleartext marker in its URL), waiting first for the tunnel to answer a ping
get() {
  local s0
  s0=$(up)
  cmd vpn-client $2 150 "timeout 100 sh -c 'until ping -c 1 -W 2 10.64.0.1 >/dev/null; do :; done'; timeout 60 wget -q -O /tmp/b 'http://10.64.0.1/blob?MOATLEAKMARKER'; r=\$?; echo bytes \$(wc -c </tmp/b) \$(sha256sum </tmp/b | cut -d' ' -f1); rm -f /tmp/b; exit \$r"
  case "$out" in
  *"bytes $blobsize $blobsum"*) log $1 ok $s0 $(up) $blobsize ;;
  *) log $1 FAIL "rc=$rc expected $blobsize $blobsum: $out" ;;
  esac
}
# keep ID SECONDS: the client keeps sending for SECONDS in the background:
# TCP with the marker, ping, DNS of a marker name, ping6
keep() {
  send vpn-client $1 "e=\$((\$(cut -d. -f1 /proc/uptime) + $2)); while [ \$(cut -d. -f1 /proc/uptime) -lt \$e ]; do echo MOATLEAKMARKER | nc -w 1 10.64.0.1 80 >/dev/null 2>&1; ping -c 1 -W 1 10.64.0.1 >/dev/null; timeout 2 nslookup MOATLEAKMARKER.vpn.test 10.139.1.1 >/dev/null 2>&1; ping6 -c 1 -W 1 fd64::1 >/dev/null 2>&1; sleep 0.5; done; echo kept"
}
# wg0cap NAME: a capture on dom0's wg0 (the tunnel's inside) of SYNs, DNS
# and ICMPv6, into /tmp/wg0-NAME.pcap; wg0cap_end NAME: stops it and
# leaves the decoded lines in /tmp/wg0-NAME.txt
wg0cap() {
  $K/lib/ld-linux-x86-64.so.2 --library-path $K/lib $K/bin/tcpdump -Z root -i wg0 -n -U -s 160 -w /tmp/wg0-$1.pcap \
    '(tcp[tcpflags] & tcp-syn != 0) or (udp port 53) or icmp6' >/tmp/tcpdump-wg0-$1.log 2>&1 &
  wcap=$!
  sleep 1
}
wg0cap_end() {
  sleep 1
  kill $wcap 2>/dev/null
  wait $wcap 2>/dev/null
  tcpd -r /tmp/wg0-$1.pcap -n > /tmp/wg0-$1.txt 2>/dev/null
}
"""

#: One type's run (after SETUP).
SCRIPT = r"""
# vm_start FILE: the VM created with the wg-quick FILE, from xenstore (pvh)
# or a disk (pv); sets t_create and want (its console line once configured)
vm_start() {
  rm -f $vlog
  t_create=$(up)
  if [ @SOURCE@ = disk ]; then
    # the file on a small raw disk (the rest zeros), read once at boot
    dd if=/dev/zero of=/tmp/wg0.disk bs=1024 count=64 2>/dev/null
    dd if=$1 of=/tmp/wg0.disk conv=notrunc 2>/dev/null
    xl create /guest/vpn-@TYPE@.cfg @MEMORY@ "disk=['format=raw,vdev=xvda,access=ro,target=/tmp/wg0.disk']" \
      >/tmp/xl-vpn.out 2>&1 || log created FAIL "xl create: $(tail -n 4 /tmp/xl-vpn.out | tr '\n' ' ')"
    want="vpn: tunnel from the disk"
  else
    xl create -p /guest/vpn-@TYPE@.cfg @MEMORY@ >/tmp/xl-vpn.out 2>&1 ||
      log created FAIL "xl create -p: $(tail -n 4 /tmp/xl-vpn.out | tr '\n' ' ')"
    xenstore-write /local/domain/$(xl domid vpn)/vpn/wg-quick "$(cat $1)"
    xl unpause vpn
    want="vpn: tunnel from xenstore vpn/wg-quick"
  fi
}

t0=$(up)
log create vpn-@TYPE@ $t0
vm_start $full
if wait_for $vlog "$want" 60; then log configured ok $t0 $(up) @SOURCE@; else
  log configured FAIL "$(tail -n 20 $vlog | tr -d '\r' | tr '\n' '|')"
fi
why=$(attach)
if [ -z "$why" ]; then log client-ready ok $t0 $(up); else log client-ready FAIL "$why"; fi
# nattach is set in attach's subshell: count here
nattach=$((nattach + 1))

# the download, DNS and IPv6, with wg0's inside captured
wg0cap 1-@TYPE@
# DNS and IPv6 alongside the download (the client runs each command in
# the background)
send vpn-client dns@TYPE@ "for s in 10.139.1.1 10.139.1.2 192.0.2.53; do n=q\$(echo \$s | tr . -)-@TYPE@.vpn.test; r=\$(timeout 10 nslookup -type=a \$n \$s 2>&1); case \"\$r\" in *10.64.0.1*) echo \"answer \$s\" ;; *) echo \"no-answer \$s: \$r\" | tr '\n' ' '; echo ;; esac; done"
send vpn-client v6@TYPE@ "ping6 -c 3 -W 5 fd64::1"
get download get1@TYPE@
hs=$(wg show wg0 latest-handshakes | awk '{print $2}')
if [ -n "$hs" ] && [ "$hs" != 0 ]; then log handshake ok; else log handshake FAIL "$(wg show wg0 | tr '\n' ' ')"; fi
result vpn-client dns@TYPE@ 60
dnsout=$out
dnsok=1
for s in 10.139.1.1 10.139.1.2 192.0.2.53; do
  n=q$(echo $s | tr . -)-@TYPE@.vpn.test
  case "$dnsout" in *"answer $s"*) case "$dnsout" in *"no-answer $s"*) dnsok=0 ;; esac ;; *) dnsok=0 ;; esac
  grep -q "query\[A\] $n from 10.64.0.2" $dlog || dnsok=0
done
result vpn-client v6@TYPE@ 40
v6out=$out
# (answered: at least one reply; busybox's ping says rc 1 when fewer than -c)
v6got=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
wg0cap_end 1-@TYPE@
syns=$(grep -c -E '10\.64\.0\.2\.[0-9]+ > 10\.64\.0\.1\.80: Flags \[S\]' /tmp/wg0-1-@TYPE@.txt)
unclamped=$(grep -E '10\.64\.0\.2\.[0-9]+ > 10\.64\.0\.1\.80: Flags \[S\]' /tmp/wg0-1-@TYPE@.txt | grep -c -v 'mss 1380[],]')
dnsq=$(grep -c -E '10\.64\.0\.2\.[0-9]+ > 10\.64\.0\.1\.53: ' /tmp/wg0-1-@TYPE@.txt)
v6req=$(grep -c 'fd64::2 > fd64::1: ICMP6, echo request' /tmp/wg0-1-@TYPE@.txt)
if [ $dnsok = 1 ] && [ "$dnsq" -ge 3 ]; then log dns ok $dnsq; else
  log dns FAIL "client: $dnsout; dnsmasq: $(grep -a 'vpn.test' $dlog | tail -n 6 | tr '\n' '|'); $dnsq queries to 10.64.0.1.53 on wg0"
fi
if [ "${v6got:-0}" -ge 1 ] && [ "$v6req" -ge 1 ]; then log ipv6 ok $v6got $v6req; else
  log ipv6 FAIL "ping6: $v6out; $v6req echo requests from fd64::2 on wg0: $(grep ICMP6 /tmp/wg0-1-@TYPE@.txt | head -n 3 | tr '\n' '|')"
fi

# the peer down for --peer-down seconds while the client keeps trying
keep keep1@TYPE@ $((@PEER_DOWN@ + 4))
ipr link set wg0 down
log peer-down $(up)
sleep @PEER_DOWN@
ipr link set wg0 up
log peer-up $(up)
get resumed get2@TYPE@

# The VM restarted with the client running and sending: a client's vif
# belongs to the backend domain it was attached to, so it is detached
# (the backend is gone) and attached again once the new VM is up.
keep keep2@TYPE@ 20
t_r=$(up)
xl destroy vpn
mv $vlog /tmp/vpn-@TYPE@-1.log
(detach; echo "RIG detached $(up)") >/tmp/detach.out 2>&1 &
dp=$!
# the first VM's counters: SYNs clamped, DNS redirected
mssc=$(statv mss-clamped /tmp/vpn-@TYPE@-1.log)
dnsr=$(statv dns-redirected /tmp/vpn-@TYPE@-1.log)
if [ "$syns" -ge 1 ] && [ "$unclamped" = 0 ] && [ "${mssc:-0}" -ge 1 ]; then log mss ok $syns $mssc; else
  log mss FAIL "$syns SYNs on wg0, $unclamped without mss 1380: $(grep 'Flags \[S\]' /tmp/wg0-1-@TYPE@.txt | head -n 3 | tr '\n' '|'); mss-clamped=${mssc:-none}"
fi
grep -a "vpn: stats:" /tmp/vpn-@TYPE@-1.log | tail -n 1 | tr -d '\r' | sed 's/^/VPNSTATS1 /'
vm_start $v4only
if wait_for $vlog "$want" 60; then log restart-configured ok $t_r $(up); else
  log restart-configured FAIL "$(tail -n 20 $vlog | tr -d '\r' | tr '\n' '|')"
fi
wait $dp
cat /tmp/detach.out
why=$(attach)
if [ -z "$why" ]; then log restart-attach ok $t_r $(up); else log restart-attach FAIL "$why"; fi
nattach=$((nattach + 1))
wg0cap 2-@TYPE@
get restart-download get3@TYPE@
# no IPv6 Address in the tunnel now: the client's IPv6 is dropped and counted
cmd vpn-client nov6@TYPE@ 40 "ping6 -c 2 -W 3 fd64::1"
v6got=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
wg0cap_end 2-@TYPE@
v6any=$(grep -c 'ICMP6' /tmp/wg0-2-@TYPE@.txt)
if wait_for $vlog "vpn: stats: .* no-tunnel-address=[1-9]" 25 && [ "$v6got" = 0 ] && [ "$v6any" = 0 ]; then
  log ipv6-dropped ok $(statv no-tunnel-address $vlog); else
  log ipv6-dropped FAIL "ping6 answers ${v6got:-none}, no-tunnel-address=$(statv no-tunnel-address $vlog), $v6any ICMPv6 packets on wg0"
fi
log restart-end $t_r $(up)

# a bad configuration: the VM says why and sends nothing more, while the
# client keeps sending
keep keep3@TYPE@ $((@SILENT@ + 8))
xenstore-write /local/domain/$(xl domid vpn)/vpn/wg-quick "[Interface]
PrivateKey = not-a-key"
if wait_for $vlog "vpn: not forwarding: bad wg-quick configuration" 20; then log bad-config ok; else
  log bad-config FAIL "$(tail -n 5 $vlog | tr -d '\r' | tr '\n' '|')"
fi
sleep 1
n_before=$(tcpd -r /tmp/bridge.pcap -n ether src @VPN_MAC@ 2>/dev/null | wc -l)
sleep @SILENT@
n_after=$(tcpd -r /tmp/bridge.pcap -n ether src @VPN_MAC@ 2>/dev/null | wc -l)
if [ "$n_before" -gt 0 ] && [ "$n_after" = "$n_before" ]; then log bad-config-silent ok $n_before; else
  log bad-config-silent FAIL "$n_before frames from the VM before, $n_after @SILENT@ s later"
fi
grep -a "vpn: stats:" $vlog | tail -n 1 | tr -d '\r' | sed 's/^/VPNSTATS2 /'
if grep -a -q -E "panicked|PANIC" $vlog /tmp/vpn-@TYPE@-1.log; then log no-panic FAIL; else log no-panic ok; fi
xl destroy vpn
(tr -d '\r' < /tmp/vpn-@TYPE@-1.log; tr -d '\r' < $vlog) | sed 's/^/GUEST vpn: /' | tail -n 40
# (the client's vif for the next type's VM; after the last, the client goes)
@DETACH@
log end @TYPE@ $t0 $(up)
"""

#: After the last type.
FINISH = r"""
sleep 1
kill $cap; sleep 1
# the leak check over the whole capture
tcpd -r /tmp/bridge.pcap -n -e ether src @VPN_MAC@ > /tmp/vpn-frames.txt 2>/dev/null
total=$(wc -l < /tmp/vpn-frames.txt)
other=$(grep -v -E 'ethertype ARP|10\.99\.0\.30\.51820 > 10\.99\.0\.1\.51820: UDP' /tmp/vpn-frames.txt | wc -l)
wgcount=$(grep -c -E '10\.99\.0\.30\.51820 > 10\.99\.0\.1\.51820: UDP' /tmp/vpn-frames.txt)
ls -l /tmp/bridge.pcap | sed 's/^/CAPTURE /'; tr '\n' ' ' < /tmp/tcpdump.log | sed 's/^/CAPTURE /'; echo
if [ "$total" -gt 0 ] && [ "$other" = 0 ] && [ "$wgcount" -gt 0 ]; then log only-wireguard ok $total $wgcount; else
  log only-wireguard FAIL "$total frames from the VM, $wgcount WireGuard, $other other: $(grep -v -E 'ethertype ARP|51820 > 10\.99\.0\.1\.51820: UDP' /tmp/vpn-frames.txt | head -n 5 | tr '\n' '|')"
fi
all=$(tcpd -r /tmp/bridge.pcap -n 2>/dev/null | wc -l)
client=$(tcpd -r /tmp/bridge.pcap -n host @CLIENT_IP@ or host @CLIENT_IP6@ or ether host @CLIENT_MAC@ 2>/dev/null | wc -l)
marker=$(tcpd -r /tmp/bridge.pcap -n -A 2>/dev/null | grep -c -i MOATLEAKMARKER)
if [ "$all" -gt 0 ] && [ "$client" = 0 ] && [ "$marker" = 0 ]; then log no-cleartext ok $all; else
  log no-cleartext FAIL "$all frames captured, $client with the client's addresses or MAC, $marker with the marker"
fi
xl destroy vpn-client
log finish $t_start $(up)
"""

#: Checks made once per run, and per type.
GLOBAL_WORDS = ["wg-up", "capture", "only-wireguard", "no-cleartext"]
WORDS = ["configured", "client-ready", "download", "handshake", "dns", "ipv6", "resumed", "mss",
         "restart-configured", "restart-attach", "restart-download", "ipv6-dropped", "bad-config",
         "bad-config-silent", "no-panic"]

#: The client's helper for the gateway's IPv6 neighbour entry (/kit/neigh
#: ADDR): on every eth* (the vif is replaced when the VM restarts).
NEIGH = """#!/bin/sh
for d in /sys/class/net/eth*; do
  [ -e "$d" ] || continue
  /kit/lib/ld-linux-x86-64.so.2 --library-path /kit/lib /kit/ip -6 neigh replace "$1" \\
    lladdr fe:ff:ff:ff:ff:ff dev "${d##*/}" nud permanent || exit 1
done
"""


def extract_modules(cache: Path, kver: str, out: Path) -> None:
    """MODULES and their dependencies from the rig's cached linux-image
    package into `out`, with `order` listing them in load order."""
    deb = linux_domu.newest_deb(cache / "debs", f"linux-image-{kver}")
    with tempfile.TemporaryDirectory(prefix="moat-vpn-mods-") as tmp:
        stage = Path(tmp)
        tar = subprocess.Popen(["dpkg", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(stage), "--wildcards", f"./lib/modules/{kver}/*"],
                       stdin=tar.stdout, check=True)
        tar.stdout.close()
        assert tar.wait() == 0, f"dpkg --fsys-tarfile {deb} failed"
        subprocess.run(["depmod", "-b", str(stage), kver], check=True)
        order: list = []
        for m in MODULES:
            text = subprocess.run(["modprobe", "-d", str(stage), "-S", kver, "--show-depends", m],
                                  check=True, capture_output=True, text=True).stdout
            for line in text.splitlines():
                words = line.split()
                if words[:1] == ["insmod"] and words[1] not in order:
                    order.append(words[1])
        out.mkdir(parents=True, exist_ok=True)
        names = []
        for ko in order:
            names.append(Path(ko).name)
            shutil.copyfile(ko, out / Path(ko).name)
    (out / "order").write_text("\n".join(names) + "\n")


def libraries(program: str) -> list:
    """The shared libraries `program` loads (ldd), the loader included."""
    text = subprocess.run(["ldd", program], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in text.splitlines():
        words = line.split()
        if "=>" in words and len(words) > words.index("=>") + 1 and words[words.index("=>") + 1].startswith("/"):
            libs.append(words[words.index("=>") + 1])
        elif words and words[0].startswith("/"):
            libs.append(words[0])
    return libs


def kit(cache: Path, kver: str, out: Path) -> Path:
    """wgkit.tgz: bin/ (PROGRAMS), lib/ (their libraries and ld.so), mods/."""
    with tempfile.TemporaryDirectory(prefix="moat-vpn-kit-") as tmp:
        root = Path(tmp)
        extract_modules(cache, kver, root / "mods")
        (root / "bin").mkdir()
        (root / "lib").mkdir()
        for p in PROGRAMS:
            shutil.copyfile(p, root / "bin" / Path(p).name)
            (root / "bin" / Path(p).name).chmod(0o755)
            for lib in libraries(p):
                name = "ld-linux-x86-64.so.2" if "ld-linux" in lib else Path(lib).name
                shutil.copyfile(lib, root / "lib" / name)
                (root / "lib" / name).chmod(0o755)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for sub in ("bin", "lib", "mods"):
                t.add(root / sub, arcname=sub)
        out.write_bytes(buf.getvalue())
    return out


def keypair() -> tuple:
    private = subprocess.run(["wg", "genkey"], check=True, capture_output=True, text=True).stdout.strip()
    public = subprocess.run(["wg", "pubkey"], input=private, check=True, capture_output=True,
                            text=True).stdout.strip()
    return private, public


def client_ramdisk(plain: Path, out: Path) -> Path:
    """The client's initramfs: the rig's plain Linux domU one with an
    overlay (linux_domu.overlay) holding CLIENT_PROGRAMS with their
    libraries and loader under /kit, and /kit/neigh (NEIGH)."""
    files = [("kit/neigh", 0o755, NEIGH.encode())]
    seen = set()
    for p in CLIENT_PROGRAMS:
        files.append((f"kit/{Path(p).name}", 0o755, Path(p).read_bytes()))
        for lib in libraries(p):
            name = "ld-linux-x86-64.so.2" if "ld-linux" in lib else Path(lib).name
            if name not in seen:
                seen.add(name)
                files.append((f"kit/lib/{name}", 0o755, Path(lib).read_bytes()))
    out.write_bytes(plain.read_bytes() + linux_domu.overlay(files))
    return out


def vm_conf(vm_priv: str, d0_pub: str, ipv6: bool) -> str:
    """The VM's wg-quick file: tunnel address 10.64.0.2 (and fd64::2 with
    `ipv6`), everything through dom0's peer."""
    address = "10.64.0.2/32, fd64::2/128" if ipv6 else "10.64.0.2/32"
    return (f"[Interface]\nPrivateKey = {vm_priv}\nAddress = {address}\nDNS = 10.64.0.1\nMTU = 1420\n"
            f"[Peer]\nPublicKey = {d0_pub}\nEndpoint = 10.99.0.1:51820\nAllowedIPs = 0.0.0.0/0, ::/0\n")


def dom0_script(types: list, blob_mib: int, memory: int, client_memory: int, peer_down: int,
                silent: int) -> str:
    """The whole dom0 script: SETUP, SCRIPT per type, FINISH."""
    common = {"@BLOB_MIB@": str(blob_mib), "@VPN_MAC@": VPN_MAC, "@CLIENT_IP@": CLIENT_IP,
              "@CLIENT_IP6@": CLIENT_IP6, "@CLIENT_MAC@": CLIENT_MAC,
              "@MEMORY@": f"memory={memory}" if memory else "",
              "@CLIENT_MEMORY@": f"memory={client_memory}" if client_memory else "",
              "@PEER_DOWN@": str(peer_down), "@SILENT@": str(silent)}

    def fill(text: str, extra: dict) -> str:
        for k, v in {**common, **extra}.items():
            text = text.replace(k, v)
        return text
    parts = [fill(SETUP, {})]
    for t in types:
        parts.append(fill(SCRIPT, {"@TYPE@": t, "@SOURCE@": "disk" if t == "pv" else "xenstore",
                                   "@DETACH@": "detach" if t != types[-1] else ":"}))
    parts.append(fill(FINISH, {}))
    text = "\n".join(parts)
    left = re.findall(r"@[A-Z_0-9]+@", text)
    assert not left, f"placeholders not filled: {left}"
    return text


def verdicts(texts: list, types: list, rc: int) -> tuple:
    """(passed, failures) from the run's lines: GLOBAL_WORDS once, WORDS
    once per type (the last `RIG <word> ok|FAIL` of each)."""
    passed, failures = 0, []
    if rc != 0:
        failures.append(f"rig: dom0 script ended with rc {rc} (timeout 124, rig failure 125)")
    failures += [l for l in texts if l.startswith("RIG kit FAIL") or l.startswith("RIG created FAIL")]
    for w in GLOBAL_WORDS:
        lines = [l for l in texts if l.startswith(f"RIG {w} ")]
        if lines and lines[-1].split()[2] == "ok":
            passed += 1
        else:
            failures.append(f"{w}: {lines[-1] if lines else 'no result'}")
    for t in types:
        try:
            a = next(i for i, l in enumerate(texts) if l.startswith(f"RIG create vpn-{t} "))
        except StopIteration:
            failures.append(f"{t}: never started")
            continue
        b = next((i for i, l in enumerate(texts) if l.startswith(f"RIG end {t} ")), len(texts))
        part = texts[a:b + 1]
        for w in WORDS:
            lines = [l for l in part if l.startswith(f"RIG {w} ")]
            if lines and lines[-1].split()[2] == "ok":
                passed += 1
            else:
                failures.append(f"{t}: {w}: {lines[-1] if lines else 'no result'}")
    return passed, failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(REPO / "target/images/amd64/vpn"))
    ap.add_argument("--types", default="pvh", help="pv and/or pvh (the VPN VM's type; the client is PV); "
                    "the pv VM reads its wg-quick file from a disk, the pvh one from xenstore")
    ap.add_argument("--blob-mib", type=int, default=2)
    ap.add_argument("--memory", type=int, default=0,
                    help="the VM's memory= in MiB (default: the config's, 32)")
    ap.add_argument("--client-memory", type=int, default=0,
                    help="the client's memory= in MiB (default: its config's, 256)")
    ap.add_argument("--peer-down", type=int, default=30, help="seconds dom0's peer is down (default 30)")
    ap.add_argument("--silent", type=int, default=6,
                    help="seconds the VM must send nothing after a bad configuration (default 6)")
    ap.add_argument("--timeout", type=float, default=1200)
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
    for p in PROGRAMS + CLIENT_PROGRAMS:
        if not Path(p).is_file():
            print(f"{p} missing on this host (wireguard-tools, tcpdump, iproute2)", file=sys.stderr)
            return 2
    domu = linux_domu.build()
    cache = xenrig.cache_dir("amd64")
    work = Path(tempfile.mkdtemp(prefix="moat-test-vpn-"))
    try:
        kitfile = kit(cache, domu.kernel_version, work / "wgkit.tgz")
        ramdisk = client_ramdisk(domu.ramdisk, work / "vpn-client.cpio.gz")
        vm_priv, vm_pub = keypair()
        d0_priv, d0_pub = keypair()
        (work / "vm-wg0.conf").write_text(vm_conf(vm_priv, d0_pub, ipv6=True))
        (work / "vm-wg0-v4.conf").write_text(vm_conf(vm_priv, d0_pub, ipv6=False))
        (work / "dom0-wg.conf").write_text(
            f"[Interface]\nPrivateKey = {d0_priv}\nListenPort = 51820\n"
            f"[Peer]\nPublicKey = {vm_pub}\nAllowedIPs = 10.64.0.2/32, fd64::2/128\n")
        guests = [
            (image, "vpn"),
            (REPO / "configs/vpn-client-pv.cfg", "vpn-client-pv.cfg"),
            (domu.kernel, "vmlinuz"),
            (ramdisk, "vpn-client.cpio.gz"),
            (kitfile, "wgkit.tgz"),
            (work / "vm-wg0.conf", "vm-wg0.conf"),
            (work / "vm-wg0-v4.conf", "vm-wg0-v4.conf"),
            (work / "dom0-wg.conf", "dom0-wg.conf"),
        ] + [(REPO / f"configs/vpn-{t}.cfg", f"vpn-{t}.cfg") for t in types]
        text = dom0_script(types, args.blob_mib, args.memory, args.client_memory, args.peer_down, args.silent)
        xenrig.exit_on_sigterm()
        result = xenrig.run_script(text, guests=guests, timeout=args.timeout,
                                   log=Path(args.log) if args.log else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    texts = [l for _, l in result.lines]
    passed, failures = verdicts(texts, types, result.rc)
    for t in types:
        a = next((i for i, l in enumerate(texts) if l.startswith(f"RIG create vpn-{t} ")), None)
        if a is None:
            continue
        b = next((i for i, l in enumerate(texts) if l.startswith(f"RIG end {t} ")), len(texts))
        part = texts[a:b + 1]
        for w in ("download", "resumed", "restart-download"):
            d = [l.split() for l in part if l.startswith(f"RIG {w} ok")]
            if d and len(d[0]) == 6:
                secs = float(d[0][4]) - float(d[0][3])
                print(f"bench: {t}: {w} through the VPN VM and dom0's kernel WireGuard (busybox wget, "
                      f"after a ping answered): {int(d[0][5])} bytes in {secs:.2f} s")
        for l in part:
            w = l.split()
            # (each: dom0's uptime at the phase's start and at the line)
            span = {"RIG configured ok": 3, "RIG client-ready ok": 3, "RIG restart-configured ok": 3,
                    "RIG restart-attach ok": 3, "RIG restart-end ": 2, "RIG end ": 3}
            k = next((k for k in span if l.startswith(k)), None)
            if k is not None and len(w) >= span[k] + 2:
                a, b = float(w[span[k]]), float(w[span[k] + 1])
                print(f"{t}: {' '.join(w[1:span[k]])}: {b - a:.1f} s (dom0 uptime {a:.1f} -> {b:.1f})")
            if l.startswith(("VPNSTATS", "RIG mss ok", "RIG dns ok", "RIG ipv6")):
                print(f"{t}: {l}")
    for l in texts:
        if l.startswith(("RIG only-wireguard ok", "RIG no-cleartext ok", "RIG finish", "RIG detach-note")):
            print(l)
    end = next((tm for tm, l in result.lines if xenrig.EXIT_MARKER.search(l)), None)
    if end is not None:
        print(f"rig time: {end:.0f} s from QEMU's start to the dom0 script's end")
    for f in failures:
        print(f"FAIL: {f}")
    print(f"test_vpn: {passed} passed, {len(failures)} failed")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
