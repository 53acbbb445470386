#!/bin/bash
# Benchmarks between guests that rig/dom0/netcase.sh left running
# (NETCASE_KEEP=1), for rig/test_netdemo.py. Figures only; the test asserts
# the CRCs and counts, never the speeds.
#
# usage:
#   bash netbench.sh start NAME CONFIG READY_PATTERN SECONDS [XL_KEY=VALUE...]
#       xl create CONFIG as NAME (with the overrides) and wait up to SECONDS
#       for READY_PATTERN on its console. Prints `RIG started NAME SECONDS`
#       or `RIG start-failed NAME` (then its console log, prefixed GUEST).
#   bash netbench.sh pull CLIENT CLIENT_IP SERVER SERVER_IP MIB
#       domU -> domU TCP: asks the Linux domU CLIENT (rig/domu/init, port
#       5003) to pull MIB MiB + 7 bytes from the netdemo SERVER's source
#       (port 5002). Prints
#       RIG pull CLIENT SERVER BYTES CRC SECONDS SERVER_CRC
#       (what CLIENT received and how long it took, and the CRC the server
#       printed for what it sent; SERVER_CRC is "none" when it printed none)
#   bash netbench.sh pps NAME IP MAC KIND [SECONDS]
#       64-byte UDP frames to port 9 of guest NAME for SECONDS (default 5),
#       made by the kernel's pktgen (/guest/pktgen.ko) straight into NAME's
#       vif in dom0 (Linux netback). KIND says how the guest counts them:
#       netdemo (udp-discarded= of its `netdemo: stats:` lines) or linux
#       (UDP NoPorts from rig/domu/init's port 5004). Prints
#       RIG pps NAME SENT MICROSECONDS RECEIVED
#       or `RIG pps NAME failed WHY`.
#   bash netbench.sh iperf3 NAME IP [SECONDS]
#       dom0's iperf3 client against the iperf3 server of guest NAME (port
#       5201: netdemo's own, or `iperf3 -s` in the Linux domU), SECONDS
#       (default 10) each way: `iperf3 -c IP` (dom0 -> guest) and
#       `iperf3 -c IP -R` (guest -> dom0). Prints, per direction,
#       RIG iperf3 NAME to-guest|from-guest MBITS
#       (the receiver's figure) or `RIG iperf3 NAME DIRECTION failed WHY`.
set -u
console() { echo "/var/log/xen/console/guest-$1.log"; }
now() { read -r t _ </proc/uptime; echo "$t"; }

start() {
  local name=$1 cfg=$2 ready=$3 secs=$4 t0 i=0
  shift 4
  rm -f "$(console "$name")"
  t0=$(now)
  if xl create "$cfg" "name=\"$name\"" "$@" >/dev/null 2>&1; then
    while [ $i -lt $((secs * 5)) ]; do
      if grep -q "$ready" "$(console "$name")" 2>/dev/null; then
        echo "RIG started $name $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')"
        return
      fi
      sleep 0.2
      i=$((i + 1))
    done
  fi
  echo "RIG start-failed $name"
  sed 's/^/GUEST /' "$(console "$name")" 2>/dev/null
}

pull() {
  local client=$1 cip=$2 server=$3 sip=$4 mib=$5
  local bytes=$((mib * 1048576 + 7)) out scrc i
  # (the guest gives up after 300 s; this is the backstop)
  out=$(echo "$sip 5002 $bytes" | timeout 330 nc "$cip" 5003)
  set -- $out
  scrc=none
  i=0
  while [ $i -lt 25 ]; do
    scrc=$(sed -n "s/.*netdemo: source: $bytes bytes crc32 \([0-9a-f]*\).*/\1/p" "$(console "$server")" | tail -1)
    [ -n "$scrc" ] && break
    scrc=none
    sleep 0.2
    i=$((i + 1))
  done
  echo "RIG pull $client $server ${1:-0} ${2:-none} ${3:-0} $scrc"
  grep -h -e "linuxdomu: pull" -e "linuxdomu: FAIL" "$(console "$client")" | sed 's/^/GUEST /'
}

# received packets so far, as the guest counts them
udp_count() {
  local name=$1 ip=$2 kind=$3
  if [ "$kind" = linux ]; then
    echo | nc -w 5 "$ip" 5004 | sed -n 's/.*udp-noports=\([0-9]*\).*/\1/p'
  else
    local n
    n=$(sed -n 's/.*netdemo: stats: .*udp-discarded=\([0-9]*\).*/\1/p' "$(console "$name")" | tail -1)
    echo "${n:-0}"
  fi
}

pps() {
  local name=$1 ip=$2 mac=$3 kind=$4 secs=${5:-5}
  local pg=/proc/net/pktgen dom dev before after res c
  if [ ! -d $pg ] && ! insmod /guest/pktgen.ko; then
    echo "RIG pps $name failed insmod-pktgen"; return
  fi
  dom=$(xl domid "$name")
  dev=$(ls /sys/class/net | grep -e "^vif$dom\.[0-9]*$" | tail -1)
  if [ -z "$dom" ] || [ -z "$dev" ]; then
    echo "RIG pps $name failed no-vif domid=[$dom] netdevs=[$(ls /sys/class/net | tr '\n' ' ')]"
    xl list
    return
  fi
  before=$(udp_count "$name" "$ip" "$kind")
  echo "rem_device_all" >$pg/kpktgend_0
  echo "add_device $dev" >$pg/kpktgend_0
  for c in "count 0" "clone_skb 0" "pkt_size 64" "delay 0" "dst $ip" "dst_mac $mac" \
           "src_min 10.99.0.1" "src_max 10.99.0.1" "udp_src_min 9" "udp_src_max 9" \
           "udp_dst_min 9" "udp_dst_max 9" "flag UDPCSUM"; do
    echo "$c" >$pg/"$dev" || { echo "RIG pps $name failed pktgen-$c"; return; }
  done
  echo start >$pg/pgctrl &
  sleep "$secs"
  echo stop >$pg/pgctrl
  wait
  # e.g. "Result: OK: 5001234(c4990000+d11234) usec, 123456 (64byte,0frags)"
  res=$(sed -n 's/.*Result: OK: \([0-9]*\)(.*usec, \([0-9]*\) (.*/\2 \1/p' $pg/"$dev")
  grep -h -e "Result:" -e "errors:" $pg/"$dev" | sed "s/^/RIG pktgen $name /"
  echo "rem_device_all" >$pg/kpktgend_0
  # netdemo prints its counters at most every 10 s
  [ "$kind" = linux ] && sleep 1 || sleep 11
  after=$(udp_count "$name" "$ip" "$kind")
  if [ -z "$res" ] || [ -z "$before" ] || [ -z "$after" ]; then
    echo "RIG pps $name failed result=[$res] before=[$before] after=[$after]"; return
  fi
  echo "RIG pps $name $res $((after - before))"
}

iperf3_run() {
  local name=$1 ip=$2 secs=${3:-10} dir flag out rate
  for dir in to-guest from-guest; do
    flag=""
    [ "$dir" = from-guest ] && flag=-R
    out=$(timeout $((secs + 60)) iperf3 -c "$ip" -t "$secs" -f m $flag 2>&1)
    # "[  5]   0.00-10.00  sec  28.6 MBytes  24.0 Mbits/sec    receiver"
    rate=$(echo "$out" | awk '/receiver$/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i - 1) }')
    if [ -n "$rate" ]; then
      echo "RIG iperf3 $name $dir $rate"
    else
      echo "RIG iperf3 $name $dir failed $(echo "$out" | tail -n 2 | tr '\n' ' ')"
    fi
  done
}

case "${1:-}" in
start) shift; start "$@" ;;
pull) shift; pull "$@" ;;
pps) shift; pps "$@" ;;
iperf3) shift; iperf3_run "$@" ;;
*) echo "usage: netbench.sh start|pull|pps|iperf3 ..." >&2; exit 2 ;;
esac
