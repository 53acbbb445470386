#!/bin/bash
# End-to-end test of the hosted WireGuard VPN gateway against wireguard-go.
#
#   client ns --TAP-- hosted-vpn --TAP-- remote ns (wireguard-go, wg0) --veth-- server ns
#   10.138.0.10       (root ns)          192.0.2.1, endpoint 198.51.100.1      10.200.0.80
#
# The gateway process owns both TAP devices (their kernel sides are moved
# into the client and remote namespaces) and does its own ARP/IPv4/UDP on
# the uplink, 192.0.2.2/24 via 192.0.2.1. tcpdump records everything on the
# uplink. Phases: traffic through the tunnel (HTTP, DNS via 10.139.1.1, IPv6
# dropped); wireguard-go stopped for 30 s while the client keeps trying;
# wireguard-go restarted with the same keys, HTTP works again without
# restarting the gateway. Then the capture is checked by pcap_check.py.
#
# The remote allows only the gateway's tunnel address (10.64.0.2), as a VPN
# provider does: the gateway masquerades the client.
#
# Usage: run.sh PATH/TO/hosted-vpn     (needs root, /dev/net/tun, wireguard-go,
#        wg, tcpdump, curl, python3). DOWN_SECS overrides the 30 s outage.
set -u
BIN=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
E2E=$HERE/../e2e
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
DOWN_SECS=${DOWN_SECS:-30}
WORK=$(mktemp -d /tmp/moat-vpn-e2e.XXXXXX)
chmod 755 "$WORK"
P=mvp$$                       # unique prefix: several runs may share a host
NS_C=${P}c NS_R=${P}r NS_S=${P}s
TAP_C=${P}-c TAP_U=${P}-u VETH_R=${P}-vr VETH_S=${P}-vs
WG=${P}wg
GW_MAC=02:6d:6f:61:74:76
SECRET="hello from behind the peer $$"
URL=http://10.200.0.80:8080/
FAILS=0
PIDS=()
GW_PID= WG_PID= DUMP_PID= COUNT_PID=

cleanup() {
    for pid in $WG_PID $DUMP_PID $GW_PID $COUNT_PID "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    wait 2>/dev/null
    for ns in $NS_C $NS_R $NS_S; do ip netns del "$ns" 2>/dev/null; done
    for link in $TAP_C $TAP_U; do ip link del "$link" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
in_c() { ip netns exec "$NS_C" "$@"; }
stat_of() { awk -v k="$1" '$1 == k { print $2 }' "$WORK/stats"; }
now() { date +%s.%N; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
fetch() { in_c curl -sS --max-time "${1:-2}" "$URL" 2>/dev/null; }

# --- keys and configurations ---
GW_PRIV=$(wg genkey); GW_PUB=$(echo "$GW_PRIV" | wg pubkey)
R_PRIV=$(wg genkey); R_PUB=$(echo "$R_PRIV" | wg pubkey)
echo "$R_PRIV" > "$WORK/remote.key"
cat > "$WORK/wg0.conf" <<CONF
# The gateway's tunnel, as a VPN provider hands it out (wg-quick format).
[Interface]
PrivateKey = $GW_PRIV
Address = 10.64.0.2/32
DNS = 10.200.0.80
ListenPort = 51820
MTU = 1420

[Peer]
PublicKey = $R_PUB
Endpoint = 198.51.100.1:51820
AllowedIPs = 0.0.0.0/0
CONF

start_peer() {   # wireguard-go in the remote namespace, always the same keys
    ip netns exec "$NS_R" env WG_PROCESS_FOREGROUND=1 wireguard-go "$WG" >> "$WORK/wireguard-go.log" 2>&1 &
    WG_PID=$!
    for _ in $(seq 50); do ip -n "$NS_R" link show "$WG" > /dev/null 2>&1 && break; sleep 0.1; done
    # Like a VPN provider: no endpoint (the peer learns the gateway's
    # address from its handshake), and only the gateway's tunnel address is
    # allowed (the gateway masquerades its clients).
    ip netns exec "$NS_R" wg set "$WG" private-key "$WORK/remote.key" listen-port 51820 \
        peer "$GW_PUB" allowed-ips 10.64.0.2/32 || return 1
    ip -n "$NS_R" addr add 10.64.0.1/24 dev "$WG"
    ip -n "$NS_R" link set "$WG" up
}

# --- links and namespaces ---
for tap in $TAP_C $TAP_U; do ip tuntap add dev "$tap" mode tap || exit 1; done
"$BIN" --config "$WORK/wg0.conf" --uplink "$TAP_U" --uplink-ip 192.0.2.2/24 \
    --uplink-gateway 192.0.2.1 --uplink-mac "$GW_MAC" --clients "$TAP_C" \
    --client-gateway 10.138.0.1 --stats "$WORK/stats" 2> "$WORK/gateway.log" &
GW_PID=$!
sleep 0.3
for ns in $NS_C $NS_R $NS_S; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link set "$TAP_C" netns "$NS_C"
ip link set "$TAP_U" netns "$NS_R"
# The uplink carries only what the gateway sends and what the remote
# answers: no IPv6 autoconfiguration noise from the remote's kernel.
ip netns exec "$NS_R" sysctl -qw "net.ipv6.conf.$TAP_U.disable_ipv6=1"
ip -n "$NS_R" addr add 192.0.2.1/24 dev "$TAP_U"
ip -n "$NS_R" addr add 198.51.100.1/32 dev lo
ip -n "$NS_R" link set "$TAP_U" up
ip netns exec "$NS_R" sysctl -qw net.ipv4.ip_forward=1
# The client as Qubes configures it: a /32 and a route to the gateway; IPv6
# through the gateway too (it must drop it: AllowedIPs has no IPv6).
ip -n "$NS_C" link set "$TAP_C" up
ip -n "$NS_C" addr add 10.138.0.10/32 dev "$TAP_C"
ip -n "$NS_C" route add 10.138.0.1 dev "$TAP_C"
ip -n "$NS_C" route add default via 10.138.0.1
ip -n "$NS_C" addr add fd09:24ef:4179::a8a:a/128 dev "$TAP_C" nodad
ip -n "$NS_C" neigh add fe80::1 lladdr fe:ff:ff:ff:ff:ff dev "$TAP_C" nud permanent
ip -n "$NS_C" -6 route add default via fe80::1 dev "$TAP_C"
# The server behind the peer.
ip link add "$VETH_R" netns "$NS_R" type veth peer name "$VETH_S" netns "$NS_S"
ip -n "$NS_R" addr add 10.200.0.1/24 dev "$VETH_R"
ip -n "$NS_R" link set "$VETH_R" up
ip -n "$NS_S" addr add 10.200.0.80/24 dev "$VETH_S"
ip -n "$NS_S" link set "$VETH_S" up
ip -n "$NS_S" route add default via 10.200.0.1
mkdir -p "$WORK/www" && echo "$SECRET" > "$WORK/www/index.html"
head -c 300000 /dev/urandom > "$WORK/www/big.bin"
(cd "$WORK/www" && exec ip netns exec "$NS_S" "$PY" -m http.server --bind 10.200.0.80 8080) > "$WORK/http.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NS_S" "$PY" "$E2E/dns_server.py" 10.200.0.80 server.vpn.test=10.200.0.80 &
PIDS+=($!)

ip netns exec "$NS_R" tcpdump -Z root -U --immediate-mode -B 32768 -n -i "$TAP_U" -w "$WORK/uplink.pcap" 2> "$WORK/tcpdump.log" &
DUMP_PID=$!
for _ in $(seq 50); do grep -q "listening on" "$WORK/tcpdump.log" && break; sleep 0.1; done

# --- phase 0: cold start, no peer yet: client packets wait in the bounded queue ---
ip netns exec "$NS_S" "$PY" "$E2E/udp_count.py" 10.200.0.80 9999 12 > "$WORK/udp_sources" &
COUNT_PID=$!
sleep 0.3
cold_start=$(now)
in_c "$PY" -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(300):
    s.sendto(b'queued %d' % i, ('10.200.0.80', 9999))"
sleep 1
queued=$(stat_of peer0_queued_packets) dropped=$(stat_of gw_tunnel_dropped)
if [ "$queued" = 256 ] && [ "$dropped" -ge 44 ]; then
    pass "no session: 300 client datagrams, $queued held in the queue, $dropped dropped and counted"
else fail "no session: queued=$queued dropped=$dropped"; fi
peer_start_ns=$(date +%s%N)
cold_end=$(now)
start_peer || fail "wireguard-go did not start"
for _ in $(seq 100); do [ "$(stat_of peer0_handshakes)" -ge 1 ] && break; sleep 0.1; done
echo "first handshake $(ms_since "$peer_start_ns") ms after wireguard-go started (the gateway retries every 5 s)"
wait "$COUNT_PID"
delivered=$(wc -w < "$WORK/udp_sources")
# wireguard-go's UDP socket (default receive buffer) may overflow on the
# burst of 256; those losses are the peer's, counted by its kernel.
peer_lost=$(ip netns exec "$NS_R" awk '$1 == "Udp:" { if (n++) print $(i) ; else for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") break }' /proc/net/snmp)
if [ "$delivered" = "$queued" ]; then
    pass "the $delivered queued datagrams were delivered through the tunnel after the handshake"
elif [ $((delivered + peer_lost)) = "$queued" ]; then
    pass "the $queued queued datagrams were sent after the handshake: $delivered delivered, $peer_lost lost in wireguard-go's socket buffer"
else fail "queued $queued, delivered $delivered, lost by the peer's socket $peer_lost"; fi

# --- phase 1: through the tunnel ---
t0=$(date +%s%N)
out=""
for _ in $(seq 10); do out=$(fetch 2) && break; done
if [ "$out" = "$SECRET" ]; then
    pass "HTTP through the tunnel ($(ms_since "$t0") ms)"
else fail "HTTP through the tunnel: '$out'"; fi
want=$(sha256sum < "$WORK/www/big.bin")
t0=$(date +%s%N)
got=$(in_c curl -sS --max-time 10 "${URL}big.bin" | sha256sum)
if [ "$got" = "$want" ]; then
    pass "300 kB download through the tunnel intact ($(ms_since "$t0") ms)"
else fail "300 kB download: sha256 $got, want $want"; fi
if in_c "$PY" "$E2E/ping.py" 10.200.0.80 > /dev/null; then
    pass "ping through the tunnel (ICMP echo id masqueraded and mapped back)"
else fail "ping through the tunnel"; fi
# UDP to a closed port: the server's ICMP port-unreachable, addressed to the
# tunnel address, is translated back to the client (quoted header included).
out=$(in_c "$PY" -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect(('10.200.0.80', 9))
s.send(b'anyone?')
try:
    s.recv(100)
    print('answer')
except ConnectionRefusedError:
    print('refused')
except OSError as e:
    print(e)")
[ "$out" = "refused" ] && pass "ICMP port unreachable from behind the peer reaches the client" || fail "ICMP error through NAT: $out"
if out=$(in_c "$PY" "$E2E/dns_query.py" 10.139.1.1 server.vpn.test) && [ "$out" = "10.200.0.80" ]; then
    pass "DNS to 10.139.1.1 answered by the tunnel's DNS server"
else fail "DNS via 10.139.1.1: $out"; fi
if out=$(in_c "$PY" "$E2E/dns_query.py" 9.9.9.9 server.vpn.test) && [ "$out" = "10.200.0.80" ]; then
    pass "DNS to another server on port 53 goes into the tunnel too"
else fail "DNS via 9.9.9.9: $out"; fi
in_c "$PY" -c "
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for _ in range(3):
    s.sendto(b'ipv6 must not leak', ('2001:db8::99', 9999))"
# A plain TCP connection to the uplink's own network: into the tunnel, not out.
in_c curl -sS --max-time 1 http://192.0.2.1/ > /dev/null 2>&1
# Forged datagrams to the gateway's port from the uplink: refused, counted.
ip netns exec "$NS_R" "$PY" -c "
import os, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b'not wireguard at all', ('192.0.2.2', 51820))
s.sendto(struct.pack('<II', 4, 0x101) + os.urandom(8 + 48), ('192.0.2.2', 51820))
s.sendto(struct.pack('<I', 1) + os.urandom(144), ('192.0.2.2', 51820))"
sleep 0.5
[ "$(stat_of gw_uplink_rejected)" -ge 3 ] && pass "forged datagrams refused ($(stat_of gw_uplink_rejected))" || fail "gw_uplink_rejected=$(stat_of gw_uplink_rejected)"
if grep -q '^10\.64\.0\.2 .*GET /' "$WORK/http.log" && ! grep -q '^10\.138\.' "$WORK/http.log"; then
    pass "the server saw the tunnel address 10.64.0.2, never the client's"
else fail "server log: $(head -3 "$WORK/http.log")"; fi
[ "$(stat_of peer0_handshakes)" -ge 1 ] && pass "handshake with wireguard-go" || fail "handshakes=$(stat_of peer0_handshakes)"
[ "$(stat_of gw_dns_redirected)" -ge 2 ] && pass "DNS redirected ($(stat_of gw_dns_redirected))" || fail "gw_dns_redirected=$(stat_of gw_dns_redirected)"
# (The tunnel has no IPv6 Address: masquerading, IPv6 is dropped before
# routing, counted as no_tunnel_address.)
[ "$(stat_of gw_no_tunnel_address)" -ge 3 ] && pass "IPv6 dropped and counted ($(stat_of gw_no_tunnel_address))" || fail "gw_no_tunnel_address=$(stat_of gw_no_tunnel_address)"
[ "$(stat_of gw_mss_clamped)" -ge 1 ] && pass "TCP MSS clamped ($(stat_of gw_mss_clamped))" || fail "gw_mss_clamped=$(stat_of gw_mss_clamped)"
cp "$WORK/stats" "$WORK/stats.before"

# --- phase 2: the peer is down; the client keeps trying ---
kill "$WG_PID"; wait "$WG_PID" 2>/dev/null; WG_PID=
for _ in $(seq 50); do ip -n "$NS_R" link show "$WG" > /dev/null 2>&1 || break; sleep 0.1; done
down_start=$(now)
down_ns=$(date +%s%N)
tries=0 got=0
while [ $(( ($(date +%s%N) - down_ns) / 1000000000 )) -lt "$DOWN_SECS" ]; do
    tries=$((tries + 1))
    out=$(fetch 1) && got=$((got + 1))
    in_c "$PY" "$E2E/dns_query.py" 10.139.1.1 server.vpn.test > /dev/null 2>&1 &
    sleep 0.2
done
wait_dns=$!
wait "$wait_dns" 2>/dev/null
down_end=$(now)
cp "$WORK/stats" "$WORK/stats.down"
if [ $tries -ge 10 ] && [ $got -eq 0 ]; then
    pass "peer down ${DOWN_SECS} s: $tries HTTP attempts (plus as many DNS queries), none answered"
else fail "peer down: $tries attempts, $got answered"; fi
rx_before=$(awk '$1 == "clients_rx_packets" { print $2 }' "$WORK/stats.before")
rx_down=$(awk '$1 == "clients_rx_packets" { print $2 }' "$WORK/stats.down")
echo "client packets into the gateway while the peer was down: $((rx_down - rx_before))"

# --- phase 3: the peer comes back with the same keys ---
restart_ns=$(date +%s%N)
start_peer || fail "wireguard-go did not restart"
out=""
while [ $(( ($(date +%s%N) - restart_ns) / 1000000000 )) -lt 40 ]; do
    out=$(fetch 2) && break
    sleep 0.2
done
resume_ms=$(ms_since "$restart_ns")
if [ "$out" = "$SECRET" ]; then
    pass "traffic resumed ${resume_ms} ms after the peer restarted, gateway not restarted"
else fail "no traffic ${resume_ms} ms after the peer restarted"; fi
kill -0 "$GW_PID" 2>/dev/null && pass "the same gateway process ($GW_PID) is running" || fail "the gateway died"
sleep 0.3
[ "$(stat_of peer0_handshakes)" -ge 2 ] && pass "new handshake after the restart ($(stat_of peer0_handshakes) in all)" || fail "handshakes=$(stat_of peer0_handshakes)"

# --- the capture ---
# Counters first, capture stopped after: every datagram the gateway counted
# as sent by then must be in the capture.
sleep 1
sent=$(stat_of uplink_tx_datagrams) received=$(stat_of uplink_rx_datagrams)
sleep 0.5
kill -INT "$DUMP_PID"; wait "$DUMP_PID" 2>/dev/null; DUMP_PID=
grep -E "packets (captured|received|dropped)" "$WORK/tcpdump.log"
grep -q "^0 packets dropped by kernel" "$WORK/tcpdump.log" && pass "tcpdump dropped nothing" || fail "tcpdump dropped packets"
echo "--- uplink capture ---"
if "$PY" "$HERE/pcap_check.py" "$WORK/uplink.pcap" "$GW_MAC" 192.0.2.2 51820 198.51.100.1 51820 \
    10.138.0.0/24 "$SECRET" "cold=$cold_start,$cold_end" "down=$down_start,$down_end" > "$WORK/pcap.txt"; then
    pass "uplink capture: only ARP and WireGuard UDP to/from the peer, no cleartext"
else fail "uplink capture"; fi
cat "$WORK/pcap.txt"
pc() { awk -v k="$1" '$1 == k { print $2 }' "$WORK/pcap.txt"; }
captured=$(awk '$1 ~ /_from_gw_wg_/ { n += $2 } END { print n + 0 }' "$WORK/pcap.txt")
[ "$captured" -ge "$sent" ] && pass "the capture holds all $sent datagrams the gateway sent ($captured by the end)" \
    || fail "the gateway sent $sent datagrams, the capture holds $captured"
[ "${pc_down:=$(pc down_cleartext_client)}" = "" ] && pass "zero cleartext client packets while the peer was down" || fail "cleartext while down: $pc_down"
[ "$(pc down_from_gw_wg_initiation)" -ge 2 ] 2>/dev/null && pass "handshake retried while the peer was down ($(pc down_from_gw_wg_initiation) initiations)" || fail "no handshake retries while down"
[ -z "$(pc cold_from_gw_wg_data)" ] && [ "$(pc cold_from_gw_wg_initiation)" -ge 1 ] 2>/dev/null && pass "no session: only initiations left ($(pc cold_from_gw_wg_initiation))" || fail "cold start capture"
[ "$(pc up_from_gw_wg_data)" -ge 1 ] 2>/dev/null && [ "$(pc up_to_gw_wg_data)" -ge 1 ] 2>/dev/null && pass "encrypted data both ways" || fail "no encrypted data on the uplink"

echo "--- counters before the outage ---"; cat "$WORK/stats.before"
echo "--- counters at the end ---"; cat "$WORK/stats"
echo "--- gateway log ---"; cat "$WORK/gateway.log"
if [ $FAILS -eq 0 ]; then echo "VPN E2E: all checks passed"; else echo "VPN E2E: $FAILS checks failed"; fi
exit $FAILS
