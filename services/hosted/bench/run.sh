#!/bin/bash
# Benchmark (prints figures, asserts nothing): TCP Mbit/s and small-UDP
# packets/s from a client namespace to an uplink namespace, through
#   (1) the hosted moat firewall on TAP devices, and
#   (2) Linux forwarding with nftables (conntrack, masquerade and the same
#       per-client rules, as the Linux sys-firewall sets them up),
# with 1, 10 and 100 rules per client, in the same run, and their ratio.
#
# Usage: run.sh PATH/TO/hosted-firewall [SECONDS]   (root; needs iperf3, nft)
set -u
BIN=$(realpath "$1")
SECS=${2:-3}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
P=mfb$$
C=${P}c U=${P}u R=${P}r
WORK=$(mktemp -d /tmp/moat-bench.XXXXXX)
FW_PID=
IPERF_PID=

cleanup() {
    [ -n "$FW_PID" ] && kill "$FW_PID" 2>/dev/null
    [ -n "$IPERF_PID" ] && kill "$IPERF_PID" 2>/dev/null
    wait 2>/dev/null
    for ns in $C $U $R; do ip netns del "$ns" 2>/dev/null; done
    for dev in ${P}-c ${P}-u; do ip link del "$dev" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in iperf3 nft; do
    command -v $tool > /dev/null || { echo "bench: $tool missing (apt-get install iperf3 nftables)"; exit 1; }
done

# The client's rule set: N-1 rules that do not match, then the accept.
qubes_rules() {
    local n=$1 i
    for ((i = 0; i < n - 1; i++)); do
        printf '/qubes-firewall/10.138.0.10/%04d action=drop dst4=198.51.%d.%d proto=tcp\n' "$i" $((i / 250)) $((i % 250 + 1))
    done
    printf '/qubes-firewall/10.138.0.10/%04d action=accept\n' $((n - 1))
}
nft_rules() {
    local n=$1 i
    for ((i = 0; i < n - 1; i++)); do
        printf '    ip daddr 198.51.%d.%d ip protocol tcp reject with icmp type admin-prohibited\n' $((i / 250)) $((i % 250 + 1))
    done
    printf '    accept\n'
}

uplink_ns() {   # the uplink side: gateway address and the iperf3 server
    ip netns add $U
    ip -n $U link set lo up
    ip -n $U addr add 192.0.2.80/32 dev lo
}
client_ns() {
    ip netns add $C
    ip -n $C link set lo up
}
start_iperf() {
    ip netns exec $U iperf3 -s -B 192.0.2.80 -D -I "$WORK/iperf.pid" > /dev/null 2>&1
    sleep 0.5
    IPERF_PID=$(cat "$WORK/iperf.pid")
}
measure() {   # prints "Mbit/s pps"
    local tcp udp
    tcp=$(ip netns exec $C iperf3 -c 192.0.2.80 -t "$SECS" -J 2>/dev/null)
    udp=$(ip netns exec $C iperf3 -c 192.0.2.80 -u -b 0 -l 64 -t "$SECS" -J 2>/dev/null)
    "$PY" - "$tcp" "$udp" <<'PYEOF'
import json, sys
def get(text, path):
    try:
        value = json.loads(text)
        for key in path:
            value = value[key]
        return value
    except Exception:
        return None
bps = get(sys.argv[1], ["end", "sum_received", "bits_per_second"])
udp = get(sys.argv[2], ["end", "sum"])
pps = None
if udp:
    received = udp["packets"] - udp["lost_packets"]
    pps = received / udp["seconds"] if udp["seconds"] else None
print(f"{bps / 1e6:.1f}" if bps else "nan", f"{pps:.0f}" if pps else "nan")
PYEOF
}

run_moat() {   # $1: rules per client
    client_ns; uplink_ns
    for tap in ${P}-c ${P}-u; do ip tuntap add dev $tap mode tap; done
    {
        echo "/qubes-ip 10.137.0.6"
        echo "/qubes-gateway 10.137.0.1"
        echo "/qubes-netvm-gateway 10.138.0.1"
        echo "/qubes-primary-dns 192.0.2.53"
        echo "/hosted/uplink ${P}-u"
        echo "/hosted/client/${P}-c 10.138.0.10"
        echo "/qubes-firewall/10.138.0.10/policy drop"
        qubes_rules "$1"
    } > "$WORK/qubesdb"
    "$BIN" "$WORK/qubesdb" 2> "$WORK/fw.log" &
    FW_PID=$!
    sleep 0.5
    ip link set ${P}-c netns $C
    ip link set ${P}-u netns $U
    ip -n $C link set ${P}-c up
    ip -n $C addr add 10.138.0.10/32 dev ${P}-c
    ip -n $C route add 10.138.0.1 dev ${P}-c
    ip -n $C route add default via 10.138.0.1
    ip -n $U link set ${P}-u up
    ip -n $U addr add 10.137.0.1/24 dev ${P}-u
    start_iperf
    measure
    kill "$FW_PID"; wait "$FW_PID" 2>/dev/null; FW_PID=
    kill "$IPERF_PID" 2>/dev/null; IPERF_PID=
    for ns in $C $U; do ip netns del $ns; done
}

run_linux() {   # $1: rules per client
    client_ns; uplink_ns
    ip netns add $R
    ip -n $R link set lo up
    ip link add ${P}-c netns $C type veth peer name rc netns $R
    ip link add ${P}-u netns $U type veth peer name ru netns $R
    ip -n $C link set ${P}-c up
    ip -n $C addr add 10.138.0.10/32 dev ${P}-c
    ip -n $C route add 10.138.0.1 dev ${P}-c
    ip -n $C route add default via 10.138.0.1
    ip -n $R link set rc up
    ip -n $R link set ru up
    ip -n $R addr add 10.138.0.1/32 dev rc
    ip -n $R route add 10.138.0.10 dev rc
    ip -n $R addr add 10.137.0.6/24 dev ru
    ip -n $R route add default via 10.137.0.1
    ip netns exec $R sysctl -qw net.ipv4.ip_forward=1
    ip -n $U link set ${P}-u up
    ip -n $U addr add 10.137.0.1/24 dev ${P}-u
    {
        echo "table ip qubes {"
        echo "  chain forward {"
        echo "    type filter hook forward priority 0; policy drop;"
        echo "    ct state established,related accept"
        echo "    iifname \"ru\" accept"
        echo "    ip saddr 10.138.0.10 jump client"
        echo "  }"
        echo "  chain client {"
        nft_rules "$1"
        echo "  }"
        echo "  chain postrouting {"
        echo "    type nat hook postrouting priority srcnat;"
        echo "    oifname \"ru\" masquerade"
        echo "  }"
        echo "}"
    } > "$WORK/rules.nft"
    ip netns exec $R nft -f "$WORK/rules.nft" || { echo "nft failed"; cat "$WORK/rules.nft"; }
    start_iperf
    measure
    kill "$IPERF_PID" 2>/dev/null; IPERF_PID=
    for ns in $C $U $R; do ip netns del $ns; done
}

printf '%-6s %12s %12s %12s %12s %9s %9s\n' rules moat_Mbit/s linux_Mbit/s moat_pps linux_pps Mbit_ratio pps_ratio
for n in 1 10 100; do
    run_moat $n > "$WORK/moat.out"
    run_linux $n > "$WORK/linux.out"
    read -r moat_bps moat_pps < "$WORK/moat.out"
    read -r linux_bps linux_pps < "$WORK/linux.out"
    ratio() { "$PY" -c "import sys; a, b = sys.argv[1:]; print(f'{float(a) / float(b):.3f}' if b not in ('nan', '0') and a != 'nan' else 'nan')" "$1" "$2"; }
    printf '%-6s %12s %12s %12s %12s %9s %9s\n' "$n" "$moat_bps" "$linux_bps" "$moat_pps" "$linux_pps" \
        "$(ratio "$moat_bps" "$linux_bps")" "$(ratio "$moat_pps" "$linux_pps")"
done
