#!/bin/bash
# End-to-end test of the hosted firewall against real Linux network stacks.
#
# Three network namespaces: client A (IPv4 and IPv6), client B (IPv4) and
# the uplink (IPv4 and IPv6, with HTTP servers, a DNS server and a UDP
# sink). The firewall process owns one TAP device per link; each device's
# kernel side is moved into its namespace.
#
# Usage: run.sh PATH/TO/hosted-firewall        (needs root and /dev/net/tun)
set -u
BIN=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
WORK=$(mktemp -d /tmp/moat-e2e.XXXXXX)
P=mfw$$                       # unique prefix: several runs may share a host
NS_A=${P}a NS_B=${P}b NS_UP=${P}u
TAP_A=${P}-a TAP_B=${P}-b TAP_UP=${P}-u
FAILS=0
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    wait 2>/dev/null
    for ns in $NS_A $NS_B $NS_UP; do ip netns del "$ns" 2>/dev/null; done
    for tap in $TAP_A $TAP_B $TAP_UP; do ip link del "$tap" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
in_a() { ip netns exec "$NS_A" "$@"; }
in_b() { ip netns exec "$NS_B" "$@"; }
in_up() { ip netns exec "$NS_UP" "$@"; }
counter() { awk -v k="$1:" '$1 == k { gsub(",", "", $2); print $2 }' "$WORK/stats"; }

write_rules() {   # $1: the extra rules for client A, one per line
    cat > "$WORK/qubesdb.new" <<CONF
/qubes-ip 10.137.0.6
/qubes-gateway 10.137.0.1
/qubes-netvm-gateway 10.138.0.1
/qubes-primary-dns 192.0.2.53
/qubes-ip6 2001:db8::6
/qubes-gateway6 2001:db8::1
/qubes-netvm-gateway6 fd09:24ef:4179::a89:1
/hosted/uplink $TAP_UP
/hosted/uplink-mac 02:6d:6f:61:74:01
/hosted/client/$TAP_A 10.138.0.10 fd09:24ef:4179::a8a:a
/qubes-firewall/fd09:24ef:4179::a8a:a/policy drop
/qubes-firewall/fd09:24ef:4179::a8a:a/0000 action=accept dst6=2001:db8:80::/64 proto=tcp dstports=80-80
/hosted/client/$TAP_B 10.138.0.11
/qubes-firewall/10.138.0.10/policy drop
$1
/qubes-firewall/10.138.0.11/policy accept
CONF
    mv "$WORK/qubesdb.new" "$WORK/qubesdb"
}

RULES_1="/qubes-firewall/10.138.0.10/0000 action=accept specialtarget=dns
/qubes-firewall/10.138.0.10/0001 action=accept proto=icmp
/qubes-firewall/10.138.0.10/0003 action=accept dst4=192.0.2.80 proto=tcp dstports=80-80
/qubes-firewall/10.138.0.10/0004 action=accept dsthost=allowed.test proto=tcp dstports=8082-8082
/qubes-firewall/10.138.0.10/0005 action=accept dsthost=elsewhere.test proto=tcp dstports=8083-8083
/qubes-firewall/10.138.0.10/0007 action=accept proto=udp dstports=9999-9999"
# The rule change: port 80 refused, 8081 allowed.
RULES_2="/qubes-firewall/10.138.0.10/0000 action=accept specialtarget=dns
/qubes-firewall/10.138.0.10/0001 action=drop dst4=192.0.2.80 proto=tcp dstports=80-80
/qubes-firewall/10.138.0.10/0002 action=accept proto=tcp dstports=8081-8081"

# --- links and namespaces ---
for tap in $TAP_A $TAP_B $TAP_UP; do ip tuntap add dev "$tap" mode tap || exit 1; done
write_rules "$RULES_1"
"$BIN" "$WORK/qubesdb" "$WORK/stats" 2> "$WORK/firewall.log" &
PIDS+=($!)
sleep 0.5
for ns in $NS_A $NS_B $NS_UP; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link set "$TAP_A" netns "$NS_A"
ip link set "$TAP_B" netns "$NS_B"
ip link set "$TAP_UP" netns "$NS_UP"
# Clients as Qubes configures them: a /32 and a route to the gateway.
for spec in "$NS_A $TAP_A 10.138.0.10" "$NS_B $TAP_B 10.138.0.11"; do
    set -- $spec
    ip -n "$1" link set "$2" up
    ip -n "$1" addr add "$3/32" dev "$2"
    ip -n "$1" route add 10.138.0.1 dev "$2"
    ip -n "$1" route add default via 10.138.0.1
done
ip -n "$NS_A" addr add fd09:24ef:4179::a8a:a/128 dev "$TAP_A" nodad
ip -n "$NS_A" route add fd09:24ef:4179::a89:1 dev "$TAP_A"
ip -n "$NS_A" route add default via fd09:24ef:4179::a89:1
# The uplink: the gateway address, and "internet" services on 192.0.2.0/24.
ip -n "$NS_UP" link set "$TAP_UP" up
ip -n "$NS_UP" addr add 10.137.0.1/24 dev "$TAP_UP"
ip -n "$NS_UP" addr add 192.0.2.80/32 dev lo
ip -n "$NS_UP" addr add 192.0.2.53/32 dev lo
ip -n "$NS_UP" addr add 2001:db8::1/64 dev "$TAP_UP" nodad
ip -n "$NS_UP" addr add 2001:db8:80::80/128 dev lo
mkdir -p "$WORK/www" && echo "hello from the uplink" > "$WORK/www/index.html"
for port in 80 8081 8082 8083; do
    (cd "$WORK/www" && exec ip netns exec "$NS_UP" "$PY" -m http.server --bind 192.0.2.80 "$port") > /dev/null 2>&1 &
    PIDS+=($!)
done
ip netns exec "$NS_B" "$PY" -m http.server --bind 10.138.0.11 80 > /dev/null 2>&1 &
PIDS+=($!)
for port in 80 8081; do
    (cd "$WORK/www" && exec ip netns exec "$NS_UP" "$PY" -m http.server --bind 2001:db8:80::80 "$port") > /dev/null 2>&1 &
    PIDS+=($!)
done
PIDS+=($!)
ip netns exec "$NS_UP" "$PY" "$HERE/dns_server.py" 192.0.2.53 allowed.test=192.0.2.80 elsewhere.test=192.0.2.99 &
PIDS+=($!)
sleep 1

# The firewall resolves client A's dsthost= names itself, through the
# uplink's DNS server (which started after the firewall), when it loads the
# rules, and installs them once both answered (until then A has no rules).
for _ in $(seq 50); do
    [ "$(counter answers)" -ge 2 ] 2>/dev/null && break
    sleep 0.2
done
sleep 0.3

# --- checks ---
if in_a "$PY" "$HERE/ping.py" 192.0.2.80 > /dev/null; then pass "ping through the firewall"; else fail "ping through the firewall"; fi

if out=$(in_a curl -sS --max-time 5 http://192.0.2.80/ 2>&1) && [ "$out" = "hello from the uplink" ]; then
    pass "allowed HTTP flows"
else fail "allowed HTTP: $out"; fi

start=$(date +%s%N)
out=$(in_a "$PY" "$HERE/connect.py" 192.0.2.80 8081)
ms=$(( ($(date +%s%N) - start) / 1000000 ))
if [ "$out" = "EHOSTUNREACH" ] && [ $ms -lt 1500 ]; then
    pass "denied TCP refused at once with admin-prohibited ($out after $ms ms)"
else fail "denied TCP: $out after $ms ms"; fi
if ! in_a curl -sS --max-time 5 http://192.0.2.80:8081/ > /dev/null 2>&1; then
    pass "denied HTTP fails for curl too"
else fail "denied HTTP got through"; fi

if out=$(in_a curl -sS --max-time 5 http://192.0.2.80:8082/ 2>&1) && [ "$out" = "hello from the uplink" ]; then
    pass "dsthost=allowed.test rule allows its resolved address"
else fail "dsthost allowed: $out"; fi
out=$(in_a "$PY" "$HERE/connect.py" 192.0.2.80 8083)
if [ "$out" = "EHOSTUNREACH" ]; then
    pass "dsthost=elsewhere.test rule does not allow another address"
else fail "dsthost elsewhere: $out"; fi

if out=$(in_a curl -sS -g --max-time 5 "http://[2001:db8:80::80]/" 2>&1) && [ "$out" = "hello from the uplink" ]; then
    pass "allowed IPv6 HTTP flows (dst6 rule)"
else fail "allowed IPv6 HTTP: $out"; fi
out=$(in_a "$PY" "$HERE/connect.py" 2001:db8:80::80 8081)
if [ "$out" = "EACCES" ]; then
    pass "denied IPv6 TCP refused with ICMPv6 admin-prohibited ($out)"
else fail "denied IPv6 TCP: $out"; fi

if out=$(in_a "$PY" "$HERE/dns_query.py" 10.139.1.1 allowed.test) && [ "$out" = "192.0.2.80" ]; then
    pass "DNS via 10.139.1.1 answered by the uplink's resolver"
else fail "DNS via 10.139.1.1: $out"; fi

in_up "$PY" "$HERE/udp_count.py" 192.0.2.80 9999 2 > "$WORK/udp_sources" &
sleep 0.3
in_a "$PY" "$HERE/udp_send.py" 10.138.0.10 192.0.2.80 9999
in_a "$PY" "$HERE/udp_send.py" 10.138.0.99 192.0.2.80 9999
in_a "$PY" "$HERE/udp_send.py" 10.138.0.11 192.0.2.80 9999
wait $!
sources=$(cat "$WORK/udp_sources")
if [ "$sources" = "10.137.0.6" ]; then
    pass "only the unspoofed datagram arrived (translated to 10.137.0.6)"
else fail "spoofing: the uplink saw sources '$sources'"; fi

if in_a curl -sS --max-time 2 http://10.138.0.11/ > /dev/null 2>&1; then
    fail "client A reached client B"
else pass "client A cannot connect to client B"; fi
out=$(in_a "$PY" "$HERE/connect.py" 10.138.0.11 80)
[ "$out" = "timeout" ] && pass "A to B is dropped silently" || fail "A to B: $out"
if in_b curl -sS --max-time 5 http://192.0.2.80/ > /dev/null 2>&1; then
    pass "client B (accept-all) reaches the uplink"
else fail "client B to the uplink"; fi

write_rules "$RULES_2"
sleep 0.5
if out=$(in_a curl -sS --max-time 5 http://192.0.2.80:8081/ 2>&1) && [ "$out" = "hello from the uplink" ]; then
    pass "rule change: newly allowed port works without restart"
else fail "rule change, newly allowed: $out"; fi
out=$(in_a "$PY" "$HERE/connect.py" 192.0.2.80 80)
if [ "$out" = "EHOSTUNREACH" ]; then pass "rule change: newly refused port is refused"; else fail "rule change, newly refused: $out"; fi

write_rules "/qubes-firewall/10.138.0.10/0000 action=accept proto=sctp"
sleep 0.5
out=$(in_a "$PY" "$HERE/connect.py" 192.0.2.80 8081)
if [ "$out" = "EHOSTUNREACH" ] && grep -q "qubes-iptables-error: Failed to parse rules for 10.138.0.10" "$WORK/firewall.log"; then
    pass "a parse error blocks the client and is reported"
else fail "parse error: $out"; fi

# The firewall itself, as Linux's input chain and ip_forward treat a vif
# (docs/firewall.md, Semantics). Errors to one client are limited to one a
# second after a burst of six, as in Linux: let the budget refill first.
sleep 3
if in_a "$PY" "$HERE/ping.py" 10.138.0.1 > /dev/null; then pass "the firewall answers pings"; else fail "ping to the firewall"; fi
out=$(in_a "$PY" "$HERE/connect.py" 10.138.0.1 22)
[ "$out" = "EHOSTUNREACH" ] && pass "TCP to the firewall is rejected host-prohibited" || fail "TCP to the firewall: $out"
out=$(in_a "$PY" "$HERE/connect.py" 10.137.0.6 22)
[ "$out" = "EHOSTUNREACH" ] && pass "TCP to the firewall's uplink address is rejected, not forwarded" || fail "TCP to the uplink address: $out"
out=$(in_a "$PY" "$HERE/ttl_probe.py" 192.0.2.80)
[ "$out" = "10.138.0.1" ] && pass "an expiring TTL gets time exceeded from the firewall ($out)" || fail "TTL 1: $out"

sleep 0.3
echo "--- counters ---"; cat "$WORK/stats"
[ "$(counter dropped_spoofed)" -ge 2 ] && pass "spoofed packets counted" || fail "dropped_spoofed=$(counter dropped_spoofed)"
[ "$(counter dropped_inter_client)" -ge 1 ] && pass "inter-client packets counted" || fail "dropped_inter_client=$(counter dropped_inter_client)"
[ "$(counter admin_prohibited_sent)" -ge 3 ] && pass "admin-prohibited sent" || fail "admin_prohibited_sent=$(counter admin_prohibited_sent)"
echo "--- firewall log ---"; cat "$WORK/firewall.log"
if [ $FAILS -eq 0 ]; then echo "E2E: all checks passed"; else echo "E2E: $FAILS checks failed"; fi
exit $FAILS
