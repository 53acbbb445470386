#!/bin/bash
# Runs moat's netdemo image (or the Linux domU of rig/domu) in the rig's dom0 and exercises it from dom0
# through Linux netback and the bridge xenbr0 (10.99.0.1/24).
#
# usage: bash netcase.sh NAME CONFIG MIB PINGS DETACH [XL_KEY=VALUE...]
#   MIB     MiB sent each way over TCP (a multiple of 16)
#   PINGS   pings at 10 ms intervals
#   DETACH  1: detach and re-attach the vif while a ping runs
#
# Every report is one line starting with "RIG " (parsed by
# rig/test_netdemo.py); the guest's console log follows, each line
# prefixed "GUEST ".
#   RIG create NAME
#   RIG ready NAME SECONDS                   `netdemo: ready` seen after SECONDS
#   RIG not-ready NAME
#   RIG ping NAME SENT RECEIVED
#   RIG tcp-echo NAME ok|bad
#   RIG udp-echo NAME ok|bad|skipped
#   RIG source NAME BYTES CRC SECONDS        what dom0 received from port 5002
#   RIG sink-data NAME SIZE x N crc CRC      the random data sent to the sink
#   RIG sink NAME BYTES CRC SECONDS          what dom0 sent to port 5001
#   RIG reattach NAME reconnected|stuck SECONDS
#   RIG path-after-reattach NAME SECONDS      until dom0 reached it again
#   RIG after-reattach NAME PING_RECEIVED_OF_20
#   RIG during-reattach NAME SENT RECEIVED   the background ping's totals
#   RIG netback-restart NAME reconnected|kept|stuck SECONDS
#                                            dom0's xen-netback let go of the
#                                            vif and took it again (DETACH=1)
#   RIG after-restart NAME PING_RECEIVED_OF_20
#   RIG end NAME
#   XL_KEY=VALUE  xl config overrides (e.g. another vif=, extra=)
# The guest's address and MAC come from NETCASE_IP / NETCASE_MAC
# (default 10.99.0.2, 00:16:3e:6d:6f:01, as in configs/netdemo-*.cfg).
# For other guests (the Linux domU of rig/domu):
#   NETCASE_READY       console line that says the guest serves (default
#                       "netdemo: ready")
#   NETCASE_READY_WAIT  seconds to wait for it (default 60)
#   NETCASE_UDP=0       no UDP echo test: prints `RIG udp-echo NAME skipped`
#   NETCASE_KEEP=1      leave the guest running at the end (the caller
#                       destroys it), e.g. for domU -> domU runs
#   NETCASE_SINK_CRC    with /guest/sinkdata (16 MiB): send MIB/16 copies of
#                       it to the sink; this is their CRC-32, computed by
#                       the caller (default: random data made and summed
#                       in dom0)
#   NETCASE_ATTACH="KEY=VALUE..."  `xl network-attach NAME KEY=VALUE...` once
#                       the console shows NETCASE_ATTACH_AFTER (e.g. a vif
#                       from a driver domain given after the guest booted);
#                       prints `RIG attach NAME ok|failed|no-prompt`
set -u
name=$1 cfg=$2 mib=$3 pings=$4 detach=$5
shift 5
ip=${NETCASE_IP:-10.99.0.2}
mac=${NETCASE_MAC:-00:16:3e:6d:6f:01}
ready=${NETCASE_READY:-netdemo: ready}
ready_wait=${NETCASE_READY_WAIT:-60}
udp=${NETCASE_UDP:-1}
keep=${NETCASE_KEEP:-0}
log=/var/log/xen/console/guest-$name.log
rm -f "$log"

now() { read -r t _ </proc/uptime; echo "$t"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# wait_log PATTERN SECONDS [COUNT]: until the guest's console log has
# PATTERN (on COUNT lines, default 1).
wait_log() {
  local i=0
  while [ $i -lt $(($2 * 5)) ]; do
    [ "$(grep -c "$1" "$log" 2>/dev/null)" -ge "${3:-1}" ] && return 0
    sleep 0.2; i=$((i + 1))
  done
  return 1
}
# ping_count N: pings answered of N at 0.1 s intervals.
ping_count() {
  local out
  out=$(ping -q -c "$1" -i 0.1 -W 2 "$ip" 2>&1)
  set -- $(echo "$out" | sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) packets received.*/\1 \2/p')
  echo "${2:-0}"
}
# wait_path: until dom0 reaches the guest again (30 s at most).
wait_path() {
  local i=0
  while [ $i -lt 30 ] && ! ping -c 1 -W 1 "$ip" >/dev/null 2>&1; do i=$((i + 1)); done
}
finish() {
  sed 's/^/GUEST /' "$log" 2>/dev/null
  [ "$keep" = 1 ] || xl destroy "$name" 2>/dev/null
  echo "RIG end $name"
}

echo "RIG create $name"
t0=$(now)
if ! xl create "$cfg" "name=\"$name\"" "$@" >/dev/null 2>&1; then
  echo "RIG not-ready $name"; finish; exit 0
fi
if [ -n "${NETCASE_ATTACH:-}" ]; then
  if ! wait_log "${NETCASE_ATTACH_AFTER:-}" "$ready_wait"; then
    r=no-prompt
  elif xl network-attach "$name" $NETCASE_ATTACH; then
    r=ok
  else
    r=failed
  fi
  echo "RIG attach $name $r"
fi
if ! wait_log "$ready" "$ready_wait"; then
  echo "RIG not-ready $name"; finish; exit 0
fi
echo "RIG ready $name $(elapsed "$t0")"

# After its last request busybox's ping (like iputils') waits twice the
# longest round trip it saw, not -W (that is only for "no answer at
# all"): on a starved rig a late answer counts as lost.
out=$(ping -q -c "$pings" -i 0.01 -W 2 "$ip" 2>&1)
set -- $(echo "$out" | sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) packets received.*/\1 \2/p')
echo "RIG ping $name ${1:-0} ${2:-0}"
if [ "${1:-0}" != "${2:-0}" ]; then
  # Where they went: every dom0 interface that dropped frames.
  for d in /sys/class/net/*; do
    s=$d/statistics
    set -- "$(cat $s/rx_dropped 2>/dev/null)" "$(cat $s/tx_dropped 2>/dev/null)"
    [ "$1$2" = 00 ] || echo "RIG ping-drops $name ${d##*/} rx_dropped=$1 tx_dropped=$2"
  done
fi

word=moat-echo-$RANDOM
[ "$(echo "$word" | nc -w 3 "$ip" 7)" = "$word" ] && r=ok || r=bad
echo "RIG tcp-echo $name $r"
# busybox nc has no UDP: bash's /dev/udp connects a datagram socket; cat
# (not read, which takes a datagram per byte) gets the whole answer.
r=bad
if [ "$udp" = 0 ]; then
  r=skipped
elif exec 3<>"/dev/udp/$ip/7"; then
  echo "$word" >&3
  [ "$(timeout 3 cat <&3)" = "$word" ] && r=ok
  exec 3<&-
fi
echo "RIG udp-echo $name $r"

bytes=$((mib * 1048576))
t=$(now)
# a stalled transfer ends (and fails its CRC check) instead of the whole run
limit=$((60 + mib * 20))
crc=$(echo "$bytes" | timeout "$limit" nc "$ip" 5002 | crc32)
# (the guest's CRC of what it sent matching this one also checks the length)
echo "RIG source $name $bytes $crc $(elapsed "$t")"

# (the Linux domU prints its CRC a little after the connection closed)
wait_log "source: $bytes bytes" 30
reps=$((mib / 16))
if [ -n "${NETCASE_SINK_CRC:-}" ] && [ -f /guest/sinkdata ]; then
  # The caller put 16 MiB of random data in /guest and computed the CRC of
  # REPS copies on the host: no reference computed by dom0's userland,
  # which under TCG load has crashed now and then.
  data=/guest/sinkdata sent=$NETCASE_SINK_CRC
else
  data=/tmp/r16
  head -c 16777216 /dev/urandom > $data
  # dom0's busybox has, rarely and under load, printed nothing here: retry
  # the reference CRC (rig-side, the guest's figure is not involved) and
  # show dom0's kernel log when that happened.
  for try in 1 2 3; do
    sent=$(for i in $(seq $reps); do cat $data; done | crc32)
    echo "$sent" | grep -qE '^[0-9a-f]{8}$' && break
    echo "RIG rig-fault $name crc32 printed '$sent' (try $try)"; dmesg | tail -n 5
  done
fi
echo "RIG sink-data $name $(wc -c <$data) x $reps crc $sent"
t=$(now)
for i in $(seq $reps); do cat $data; done | timeout "$limit" nc "$ip" 5001
echo "RIG sink $name $bytes $sent $(elapsed "$t")"
wait_log "sink: $bytes bytes" 30
rm -f /tmp/r16

if [ "$detach" = 1 ]; then
  ping -c 600 -i 0.05 -W 1 "$ip" > /tmp/bg.ping 2>&1 &
  bg=$!
  sleep 2
  t=$(now)
  xl network-detach "$name" 0
  wait_log "netdemo: backend gone" 30
  sleep 1
  xl network-attach "$name" bridge=xenbr0 "mac=$mac"
  if wait_log "netdemo: reconnected" 60; then r=reconnected; else r=stuck; fi
  echo "RIG reattach $name $r $(elapsed "$t")"
  # The guest may reconnect before dom0's hotplug script has put the new
  # vif on the bridge: wait (30 s at most) for the path, then count.
  t=$(now)
  wait_path
  echo "RIG path-after-reattach $name $(elapsed "$t")"
  echo "RIG after-reattach $name $(ping_count 20)"
  kill -INT $bg 2>/dev/null; wait $bg 2>/dev/null
  set -- $(sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) packets received.*/\1 \2/p' /tmp/bg.ping)
  echo "RIG during-reattach $name ${1:-0} ${2:-0}"

  # A dom0 netback restart: xen-netback lets go of the vif (unbind: it
  # unmaps the rings and deletes hotplug-status, but leaves the backend
  # state alone because netback allows rebinding) and probes it again
  # (bind: back to InitWait). Nothing runs the hotplug script then, and
  # netback holds the connection until hotplug-status says "connected", so
  # dom0 runs the script as libxl would. (`rmmod xen-netback` is refused
  # while a vif exists.)
  dom=$(xl domid "$name")
  dev=$(ls /sys/bus/xen-backend/drivers/vif/ | grep "^vif-$dom-" | head -n 1)
  devid=${dev##*-}
  t=$(now)
  echo "$dev" > /sys/bus/xen-backend/drivers/vif/unbind
  sleep 1
  echo "$dev" > /sys/bus/xen-backend/drivers/vif/bind
  XENBUS_PATH=backend/vif/$dom/$devid XENBUS_TYPE=vif XENBUS_BASE_PATH=backend vif=vif$dom.$devid \
    bash /etc/xen/scripts/vif-bridge online
  # Two good outcomes. The frontend saw netback's InitWait and connected
  # again ("reconnected"), or it missed that state (netdemo reads it once a
  # second, and netback goes InitWait -> Connected as soon as the hotplug
  # script is done) and netback attached to the rings the frontend still
  # offers, as Linux's netfront expects it to ("kept"): both ends
  # Connected, the guest answering, for 2 s in a row with no reconnection.
  r=stuck kept_since=
  i=0
  while [ $i -lt 300 ]; do
    if [ "$(grep -c "netdemo: reconnected" "$log" 2>/dev/null)" -ge 2 ]; then r=reconnected; break; fi
    if [ "$(xenstore-read backend/vif/$dom/$devid/state 2>/dev/null)" = 4 ] &&
      [ "$(xenstore-read /local/domain/$dom/device/vif/$devid/state 2>/dev/null)" = 4 ] &&
      ping -c 1 -W 1 "$ip" >/dev/null 2>&1; then
      [ -n "$kept_since" ] || kept_since=$(now)
      if [ "$(elapsed "$kept_since" | cut -d. -f1)" -ge 2 ]; then r=kept; break; fi
    else
      kept_since=
    fi
    sleep 0.2; i=$((i + 1))
  done
  echo "RIG netback-restart $name $r $(elapsed "$t")"
  if [ "$r" = stuck ]; then
    # Both ends' states, for the failure's message.
    echo "RIG netback-restart-states $name backend=$(xenstore-read backend/vif/$dom/$devid/state 2>&1)" \
      "online=$(xenstore-read backend/vif/$dom/$devid/online 2>&1)" \
      "hotplug=$(xenstore-read backend/vif/$dom/$devid/hotplug-status 2>&1)" \
      "frontend=$(xenstore-read /local/domain/$dom/device/vif/$devid/state 2>&1)"
  fi
  wait_path
  echo "RIG after-restart $name $(ping_count 20)"
fi
finish
