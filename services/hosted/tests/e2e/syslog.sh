#!/bin/bash
# Remote syslog of the hosted firewall against a real collector: Debian's
# rsyslogd in a network namespace of its own, listening on UDP and TCP
# (octet-counted frames), reached over a veth pair from the firewall's
# namespace. A client namespace pings the uplink's namespace through the
# firewall while the collector is killed and restarted.
#
# Checks: the start message over UDP with its RFC 5424 fields as rsyslog
# parsed them; over TCP at level warn an error arrives and no info
# message does; with the collector gone the firewall still forwards, the
# queue (4 messages) overflows and counts its drops, and once rsyslogd is
# back the queued messages and one drop notice arrive.
#
# Usage: syslog.sh PATH/TO/hosted-firewall    (needs root, /dev/net/tun, rsyslogd)
set -u
BIN=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
RSYSLOGD=$(command -v rsyslogd || echo /usr/sbin/rsyslogd)
WORK=$(mktemp -d /tmp/moat-syslog.XXXXXX)
chmod 755 "$WORK"
P=msl$$
NS_FW=${P}f NS_COLL=${P}c NS_B=${P}b NS_UP=${P}u
TAP_B=${P}-b TAP_UP=${P}-u
FAILS=0
PIDS=()
FW_PID=
COLL_PID=

cleanup() {
    for pid in "${PIDS[@]}" $FW_PID $COLL_PID; do kill "$pid" 2>/dev/null; done
    wait 2>/dev/null
    for ns in $NS_FW $NS_COLL $NS_B $NS_UP; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
stat_of() { awk -v k="$1" '$1 == k { print $2 }' "$WORK/stats" 2>/dev/null; }
# wait_for PATTERN FILE [TENTHS]: until a line of FILE matches.
wait_for() {
    for _ in $(seq "${3:-100}"); do
        grep -qE "$1" "$2" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

write_config() {   # $1: an extra line (a bad one makes the file invalid)
    cat > "$WORK/qubesdb.new" <<CONF
/qubes-ip 10.137.0.6
/qubes-gateway 10.137.0.1
/qubes-netvm-gateway 10.138.0.1
/qubes-primary-dns 192.0.2.53
/hosted/uplink $TAP_UP
/hosted/uplink-mac 02:6d:6f:61:74:01
/hosted/client/$TAP_B 10.138.0.11
/qubes-firewall/10.138.0.11/policy accept
$1
CONF
    mv "$WORK/qubesdb.new" "$WORK/qubesdb"
}

start_collector() {
    cat > "$WORK/rsyslog.conf" <<CONF
global(workDirectory="$WORK")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="198.51.100.2" port="5514")
input(type="imtcp" address="198.51.100.2" port="5514")
template(name="fields" type="string"
  string="%inputname% %syslogseverity-text% %hostname% %app-name% %procid% %msgid% %timereported:::date-rfc3339% %msg%\n")
*.* action(type="omfile" file="$WORK/collected" template="fields")
CONF
    ip netns exec "$NS_COLL" "$RSYSLOGD" -n -f "$WORK/rsyslog.conf" -i "$WORK/rsyslogd.pid" \
        > "$WORK/rsyslogd.out" 2>&1 &
    COLL_PID=$!
    # Listening once the TCP port answers.
    for _ in $(seq 50); do
        ip netns exec "$NS_COLL" bash -c 'exec 3<>/dev/tcp/198.51.100.2/5514' 2>/dev/null && return 0
        sleep 0.1
    done
    echo "rsyslogd did not start:"; cat "$WORK/rsyslogd.out"
    return 1
}

stop_collector() {
    kill "$COLL_PID" 2>/dev/null
    wait "$COLL_PID" 2>/dev/null
    COLL_PID=
}

# start_firewall ARGS...: the firewall in its namespace with fresh TAPs.
start_firewall() {
    for tap in $TAP_B $TAP_UP; do
        ip -n "$NS_FW" link del "$tap" 2>/dev/null
        ip -n "$NS_B" link del "$tap" 2>/dev/null
        ip -n "$NS_UP" link del "$tap" 2>/dev/null
        ip -n "$NS_FW" tuntap add dev "$tap" mode tap || return 1
    done
    write_config ""
    rm -f "$WORK/stats"
    ip netns exec "$NS_FW" "$BIN" "$@" "$WORK/qubesdb" "$WORK/stats" 2> "$WORK/firewall.log" &
    FW_PID=$!
    sleep 0.5
    ip -n "$NS_FW" link set "$TAP_B" netns "$NS_B"
    ip -n "$NS_FW" link set "$TAP_UP" netns "$NS_UP"
    ip -n "$NS_B" link set "$TAP_B" up
    ip -n "$NS_B" addr add 10.138.0.11/32 dev "$TAP_B"
    ip -n "$NS_B" route add 10.138.0.1 dev "$TAP_B"
    ip -n "$NS_B" route add default via 10.138.0.1
    ip -n "$NS_UP" link set "$TAP_UP" up
    ip -n "$NS_UP" addr add 10.137.0.1/24 dev "$TAP_UP"
}

stop_firewall() {
    kill "$FW_PID" 2>/dev/null
    wait "$FW_PID" 2>/dev/null
    FW_PID=
}

# --- namespaces: the firewall's, the collector's (a veth between them),
# a client's and the uplink's.
for ns in $NS_FW $NS_COLL $NS_B $NS_UP; do ip netns add "$ns" || exit 1; ip -n "$ns" link set lo up; done
ip -n "$NS_FW" link add "${P}-l" type veth peer name "${P}-c" netns "$NS_COLL" || exit 1
ip -n "$NS_FW" addr add 198.51.100.1/24 dev "${P}-l"
ip -n "$NS_FW" link set "${P}-l" up
ip -n "$NS_COLL" addr add 198.51.100.2/24 dev "${P}-c"
ip -n "$NS_COLL" link set "${P}-c" up
start_collector || exit 1

# --- 1. UDP, level info: the start message and a configuration change.
start_firewall --syslog=udp:198.51.100.2:5514
if wait_for '^imudp info .* hosted-firewall [0-9]+ hosted-firewall [0-9T:.-]+(Z|[+-][0-9:]+) hosted-firewall running: uplink' "$WORK/collected"; then
    pass "UDP: the start message arrived with its RFC 5424 fields (severity, app-name, procid, msgid, timestamp)"
else
    fail "UDP: no start message at the collector"
fi
write_config "/qubes-firewall/10.138.0.11/0000 action=accept proto=icmp"
if wait_for '^imudp info .* config .* configuration changed' "$WORK/collected"; then
    pass "UDP: the configuration change was logged remotely"
else
    fail "UDP: no configuration-change message"
fi
stop_firewall

# --- 2. TCP, level warn, a queue of 4.
: > "$WORK/collected.tcp"
start_firewall --syslog=tcp:198.51.100.2:5514 --syslog-level=warn --syslog-queue=4
write_config "this is not a key and value"
if wait_for '^imtcp err .* hosted-firewall [0-9]+ config .*update rejected' "$WORK/collected"; then
    pass "TCP: the rejected update was logged remotely as an error (octet-counted frames)"
else
    fail "TCP: no error message over TCP"
fi
if grep -E '^imtcp info' "$WORK/collected" >/dev/null; then
    fail "TCP at level warn: an info message was sent"
else
    pass "TCP at level warn: no info message was sent"
fi

# The collector goes away; the firewall keeps forwarding while its
# messages overflow the queue.
stop_collector
before=$(grep -c '^imtcp' "$WORK/collected")
for i in $(seq 12); do
    write_config "bad line number $i"
    sleep 0.25
    write_config ""
    sleep 0.25
done
if ip netns exec "$NS_B" "$PY" "$HERE/ping.py" 10.137.0.1 > "$WORK/ping" 2>&1; then
    pass "the firewall forwards (a ping through it) while the collector is down"
else
    fail "no forwarding while the collector is down: $(tail -2 "$WORK/ping")"
fi
dropped=$(stat_of syslog_dropped)
if [ "${dropped:-0}" -gt 0 ] 2>/dev/null; then
    pass "the full queue dropped and counted $dropped messages"
else
    fail "no drops counted (stats: $(grep syslog "$WORK/stats" 2>/dev/null | tr '\n' ' '))"
fi
start_collector || exit 1
if wait_for '^imtcp warning .* syslog .*log messages dropped' "$WORK/collected" 150; then
    pass "after the collector came back: $(grep -o '[0-9]* log messages dropped' "$WORK/collected" | tail -1) reported to it"
else
    fail "no drop notice after the collector came back"
fi
after=$(grep -c '^imtcp' "$WORK/collected")
if [ "$after" -gt "$((before + 1))" ]; then
    pass "queued messages delivered after the outage ($((after - before)) messages)"
else
    fail "nothing delivered after the outage"
fi
ip netns exec "$NS_B" "$PY" "$HERE/ping.py" 10.137.0.1 > /dev/null 2>&1
sleep 0.3
echo "stats: $(grep syslog "$WORK/stats" | tr '\n' ' ')"
stop_firewall

echo "--- collected:"
cat "$WORK/collected"
if [ "$FAILS" -eq 0 ]; then
    echo "SYSLOG E2E: all checks passed"
else
    echo "SYSLOG E2E: $FAILS checks failed"
    echo "--- firewall log:"; cat "$WORK/firewall.log"
    exit 1
fi
