# dom0 side of rig/bench_firewall_vm.py (make bench-firewall-vm): moat's
# firewall VM and a Linux firewall domU (rig/domu/router-init), each with a
# Linux client domU behind it (rig/domu/bench-client), measured alike.
# Sourced by the generated dom0 script, which also defines, per rule set S
# (1, 10, 100, check), `moat_rules_S BASE` (writes the rules under the
# moat firewall's qubesdb/qubes-firewall/<client>/ with xenstore-write)
# and has /guest/fwrules-S.nft (the same rules as the Linux firewall
# loads them).
#
# Lines for the host (every one starts with "RIG " or "CMDOUT "):
#   RIG first KIND T_CREATE T_READY T_ATTACHED T_FIRST   dom0 uptimes
#   RIG rules KIND N ok|fail
#   CMDOUT KIND N TEST LINE         the client's iperf3 summary lines
#   RIG cpu KIND N TEST FW CLIENT DOM0   mean CPU % from xentop -b
#   RIG trial KIND MEM ok|fail WHY
#   RIG minmem KIND OK FAILED       smallest memory= that passed (MiB) and
#                                   the largest that failed (0: none did)
#   RIG fail KIND WHY
#   FW KIND LINE / CLIENT KIND LINE  consoles, on failure and at the end

DOM0=10.99.0.1
CIP=10.137.0.10
CENC=10-137-0-10
CMAC=00:16:3e:6d:6f:20
CGW=10.137.0.1

up() { cut -d' ' -f1 /proc/uptime; }
log() { echo "RIG $*"; }
clog() { echo "/var/log/xen/console/guest-$1.log"; }
# uptime in whole seconds, without a fork
secs_now() { local t _r; read -r t _r </proc/uptime; echo "${t%.*}"; }
# wait_for FILE REGEX SECONDS (by the clock: under TCG a poll loop's forks
# take longer than its sleeps)
wait_for() {
  local end=$(($(secs_now) + $3))
  while :; do
    grep -q -E -- "$2" "$1" 2>/dev/null && return 0
    [ "$(secs_now)" -lt "$end" ] || return 1
    sleep 0.2
  done
}

# wait_fw FW REGEX SECONDS: like wait_for on FW's console, but gives up
# as soon as the domain crashed or is gone (a too small memory= crashes
# Linux while it boots)
wait_fw() {
  local end=$(($(secs_now) + $3)) i=0 st
  while :; do
    grep -q -E -- "$2" "$(clog "$1")" 2>/dev/null && return 0
    if [ $((i % 5)) = 4 ]; then
      st=$(xl list "$1" 2>/dev/null | awk 'NR == 2 { print $5 }')
      case "$st" in
      '') fw_why="domain gone"; return 1 ;;
      *c*) fw_why="domain crashed"; return 1 ;;
      esac
    fi
    [ "$(secs_now)" -lt "$end" ] || { fw_why="timed out"; return 1; }
    sleep 0.2
    i=$((i + 1))
  done
}

# The servers the clients and the Linux firewall use, all on dom0:
# iperf3 (5201), commands (9000: answers the asking domain's /tmp/cmd.NAME),
# files (9001: /guest/NAME), 8080/8081 (a line), 8082 (logs the time and
# the client's name, from its line `first NAME`, of each connection to
# /tmp/first.log: the first forwarded packet; a client of the other
# firewall may still be connecting when one side starts).
fwbench_servers() {
  cat >/tmp/cmdsrv <<'EOF'
#!/bin/sh
read -r who
case "$who" in '' | *[!A-Za-z0-9-]*) exit 0 ;; esac
cat "/tmp/cmd.$who" 2>/dev/null
EOF
  cat >/tmp/filesrv <<'EOF'
#!/bin/sh
read -r f
case "$f" in '' | .* | *[!A-Za-z0-9._-]*) exit 0 ;; esac
cat "/guest/$f" 2>/dev/null
EOF
  cat >/tmp/firstsrv <<'EOF'
#!/bin/sh
read -r _ who
t=$(cut -d' ' -f1 /proc/uptime)
case "$who" in *[!A-Za-z0-9-]*) who=- ;; esac
echo "$t ${who:--}" >>/tmp/first.log
echo first
EOF
  printf '#!/bin/sh\necho served-by-dom0\n' >/tmp/answer
  chmod +x /tmp/cmdsrv /tmp/filesrv /tmp/firstsrv /tmp/answer
  serve() { (while :; do nc -ll -p "$1" -e "$2"; sleep 0.2; done) >/dev/null 2>&1 & }
  serve 9000 /tmp/cmdsrv
  serve 9001 /tmp/filesrv
  serve 8080 /tmp/answer
  serve 8081 /tmp/answer
  serve 8082 /tmp/firstsrv
  (while :; do iperf3 -s >/dev/null 2>&1; sleep 0.2; done) &
  sleep 1
  log servers up
}

# send_cmd NAME SECONDS COMMAND: has domain NAME (polling port 9000) run
# COMMAND; waits up to SECONDS for its end. The command's id in $cmd_id.
send_cmd() {
  local name=$1 secs=$2
  shift 2
  cmd_id=$(($(cat /tmp/cmd-id 2>/dev/null || echo 0) + 1))
  echo $cmd_id >/tmp/cmd-id
  echo "$cmd_id $*" >"/tmp/cmd.$name.tmp"
  mv "/tmp/cmd.$name.tmp" "/tmp/cmd.$name"
  wait_for "$(clog "$name")" ": cmd $cmd_id end" "$secs"
}
# the output lines of command $cmd_id of NAME (the console log has CR LF)
cmd_out() { sed -n "s/.*: cmd $cmd_id: //p" "$(clog "$1")" | tr -d '\r'; }

# mean CPU % of domain $1 over the xentop -b samples in $2, the first
# sample (no previous one to compare with) left out
xt_mean() {
  awk -v n="$1" '$1 == n { c++; if (c > 1) { s += $4; k++ } }
                 END { if (k) printf "%.1f", s / k; else print "-" }' "$2"
}

# run_test KIND FW CLIENT N TEST SECS COMMAND: one iperf3 run by the client,
# with xentop sampling every second while it runs.
run_test() {
  local kind=$1 fw=$2 cl=$3 n=$4 test=$5 secs=$6 xp
  shift 6
  rm -f /tmp/xt
  cmd_id=$(($(cat /tmp/cmd-id 2>/dev/null || echo 0) + 1))
  echo $cmd_id >/tmp/cmd-id
  echo "$cmd_id $*" >"/tmp/cmd.$cl.tmp"
  mv "/tmp/cmd.$cl.tmp" "/tmp/cmd.$cl"
  if ! wait_for "$(clog "$cl")" ": cmd $cmd_id begin" 20; then
    log fail "$kind" "$n $test: the client never took the command"
    return 1
  fi
  xentop -b -d 1 -i $((secs + 1)) >/tmp/xt 2>/dev/null &
  xp=$!
  wait_for "$(clog "$cl")" ": cmd $cmd_id end" $((secs + 60)) || log fail "$kind" "$n $test: no end"
  wait $xp
  cmd_out "$cl" | sed "s/^/CMDOUT $kind $n $test /"
  log cpu "$kind" "$n" "$test" "$(xt_mean "$fw" /tmp/xt)" "$(xt_mean "$cl" /tmp/xt)" "$(xt_mean Domain-0 /tmp/xt)"
}

# load_rules KIND FW N: the client's rules set N, by the firewall's own means
load_rules() {
  local kind=$1 fw=$2 n=$3 base
  if [ "$kind" = moat ]; then
    base=/local/domain/$(xl domid "$fw")/qubesdb/qubes-firewall/$CENC
    "moat_rules_$n" "$base"
    if wait_for "$(clog "$fw")" "rules of $CIP: $n rules" 30; then log rules "$kind" "$n" ok; else log rules "$kind" "$n" fail; fi
  else
    send_cmd "$fw" 60 "load_rules fwrules-$n.nft"
    if cmd_out "$fw" | grep -qx "rc=0"; then log rules "$kind" "$n" ok; else
      log rules "$kind" "$n" fail
      cmd_out "$fw" | sed "s/^/FW $kind /"
    fi
  fi
}

# fw_create KIND FW MEM RULES: xl create of the firewall (memory= MEM,
# or the config's when empty) with the client's rules set RULES from the
# start; waits for it to be ready. Sets t_create, t_ready.
fw_create() {
  local kind=$1 fw=$2 mem=$3 rules=$4 base
  # (a new domain must not run the last command its predecessor was given)
  rm -f "$(clog "$fw")" "/tmp/cmd.$fw"
  fw_why=""
  t_create=$(up)
  if [ "$kind" = moat ]; then
    xl create /guest/firewall-moat.cfg ${mem:+"memory=$mem"} >/tmp/xl-create.out 2>&1 || {
      log fail "$kind" "xl create: $(tail -n 6 /tmp/xl-create.out | tr '\n' ' ')"; return 1; }
    base=/local/domain/$(xl domid "$fw")/qubesdb/qubes-firewall/$CENC
    "moat_rules_$rules" "$base"
    wait_fw "$fw" "firewall: forwarding:" 120 || { log fail "$kind" "no forwarding line: $fw_why"; return 1; }
  else
    xl create /guest/firewall-linux-pv.cfg ${mem:+"memory=$mem"} \
      "extra=\"console=hvc0 quiet rdinit=/router-init moat.ip=10.99.0.11/24 moat.gw=$DOM0 moat.clientgw=$CGW moat.dns=$DOM0 moat.name=$fw moat.cmd=$DOM0:9000 moat.rules=fwrules-$rules.nft moat.flowtable=${FLOWTABLE:-1}\"" \
      >/tmp/xl-create.out 2>&1 || { log fail "$kind" "xl create: $(tail -n 6 /tmp/xl-create.out | tr '\n' ' ')"; return 1; }
    wait_fw "$fw" "linuxfw: (ready|FAIL)" 180 && grep -q "linuxfw: ready" "$(clog "$fw")" ||
      { log fail "$kind" "not ready: ${fw_why:-it failed}"; return 1; }
  fi
  t_ready=$(up)
}

# client_create NAME EXTRA_WORDS [VIF]: the Linux client (bench-client);
# without VIF it has none yet (its netfront waits for one).
client_create() {
  local cl=$1 words=$2 vif=${3:-}
  rm -f "$(clog "$cl")" "/tmp/cmd.$cl"
  xl create /guest/firewall-client-pv.cfg "name=\"$cl\"" 'ramdisk="/guest/bench-client.cpio.gz"' memory=160 \
    "vif=[${vif:+\"$vif\"}]" \
    "extra=\"console=hvc0 quiet rdinit=/bench-client moat.ip=$CIP/24 moat.gw=$CGW moat.name=$cl $words\"" \
    >/tmp/xl-client.out 2>&1 || { log fail client "xl create: $(tail -n 2 /tmp/xl-client.out | tr '\n' ' ')"; return 1; }
}

show_consoles() {
  sed "s/^/FW $1 /" "$(clog "$2")" 2>/dev/null | tail -n "${4:-40}"
  sed "s/^/CLIENT $1 /" "$(clog "$3")" 2>/dev/null | grep -v ": cmd [0-9]*: " | tail -n "${4:-40}"
}

# bench_side KIND FW CLIENT SECS N...: the client up first (no vif yet),
# then the firewall created and the client's vif attached to it as soon as
# it is ready: xl create -> first packet at dom0; then for each rule set N
# the four iperf3 runs.
bench_side() {
  local kind=$1 fw=$2 cl=$3 secs=$4 n t_att t_first
  shift 4
  client_create "$cl" "moat.first=$DOM0:8082 moat.cmd=$DOM0:9000" || return 1
  if ! wait_for "$(clog "$cl")" "linuxdomu: waiting for eth0" 120; then
    log fail "$kind" "client not up"; show_consoles "$kind" "$fw" "$cl"; xl destroy "$cl"; return 1
  fi
  log step "$kind" client-waiting "$(up)"
  : >/tmp/first.log
  if ! fw_create "$kind" "$fw" "$(run_mem "$kind")" "$1"; then
    show_consoles "$kind" "$fw" "$cl"; xl destroy "$cl"; xl destroy "$fw"; return 1
  fi
  timeout 60 xl network-attach "$cl" "backend=$fw" "ip=$CIP" "mac=$CMAC" >/tmp/xl-attach.out 2>&1 ||
    log fail "$kind" "network-attach: $(tail -n 2 /tmp/xl-attach.out | tr '\n' ' ')"
  t_att=$(up)
  log step "$kind" attached "$t_ready" "$t_att"
  if wait_for /tmp/first.log " $cl\$" 120; then
    t_first=$(awk -v c="$cl" '$2 == c { print $1; exit }' /tmp/first.log)
    log first "$kind" "$t_create" "$t_ready" "$t_att" "$t_first"
  else
    log fail "$kind" "no packet from the client at dom0"
    show_consoles "$kind" "$fw" "$cl"
    xl destroy "$cl"; xl destroy "$fw"; return 1
  fi
  wait_for "$(clog "$cl")" "linuxdomu: ready" 120 || log fail "$kind" "client not ready"
  wait_for "$(clog "$cl")" "linuxdomu: cmd-loop" 60 || log fail "$kind" "client's command loop not seen"
  log step "$kind" client-ready "$(up)"
  for n in "$@"; do
    [ "$n" = "$1" ] || load_rules "$kind" "$fw" "$n"
    [ "$n" = "$1" ] && log rules "$kind" "$n" ok
    run_test "$kind" "$fw" "$cl" "$n" tcp-up "$secs" \
      "iperf3 -c $DOM0 -t $secs -f m 2>&1 | grep -E 'sender|receiver|error'"
    run_test "$kind" "$fw" "$cl" "$n" tcp-down "$secs" \
      "iperf3 -c $DOM0 -t $secs -f m -R 2>&1 | grep -E 'sender|receiver|error'"
    run_test "$kind" "$fw" "$cl" "$n" udp-up "$secs" \
      "iperf3 -c $DOM0 -t $secs -u -l 18 -b 0 2>&1 | grep -E 'sender|receiver|error'"
    run_test "$kind" "$fw" "$cl" "$n" udp-down "$secs" \
      "iperf3 -c $DOM0 -t $secs -u -l 18 -b 0 -R 2>&1 | grep -E 'sender|receiver|error'"
  done
  show_consoles "$kind" "$fw" "$cl" 25
  xl list | sed "s/^/RIG xl-list $kind /"
  xl destroy "$cl"
  xl destroy "$fw"
}

# the client's iperf3 command of test $1 (tcp-up, tcp-down, udp-up,
# udp-down), $2 seconds
# (under `timeout`: a stalled run must not hold the client's command loop)
test_cmd() {
  local i="timeout $(($2 + 40)) iperf3 -c $DOM0 -t $2" g="2>&1 | grep -E 'sender|receiver|error'"
  case "$1" in
  tcp-up) echo "$i -f m $g" ;;
  tcp-down) echo "$i -f m -R $g" ;;
  udp-up) echo "$i -u -l 18 -b 0 $g" ;;
  udp-down) echo "$i -u -l 18 -b 0 -R $g" ;;
  esac
}

# run_mem KIND: the memory= of KIND's benchmark runs (empty: its config's)
run_mem() { if [ "$1" = moat ]; then echo "${MOAT_MEM:-}"; fi; }

# side_up KIND FW CLIENT RULES: with CLIENT up and waiting for its vif:
# xl create of the firewall (rule set RULES from the start), the client's
# vif attached once it is ready, the first packet at dom0.
side_up() {
  local kind=$1 fw=$2 cl=$3 t_att t_first
  : >/tmp/first.log
  fw_create "$kind" "$fw" "$(run_mem "$kind")" "$4" || return 1
  timeout 60 xl network-attach "$cl" "backend=$fw" "ip=$CIP" "mac=$CMAC" >/tmp/xl-attach.out 2>&1 ||
    log fail "$kind" "network-attach: $(tail -n 2 /tmp/xl-attach.out | tr '\n' ' ')"
  t_att=$(up)
  log step "$kind" attached "$t_ready" "$t_att"
  if wait_for /tmp/first.log " $cl\$" 150; then
    t_first=$(awk -v c="$cl" '$2 == c { print $1; exit }' /tmp/first.log)
    log first "$kind" "$t_create" "$t_ready" "$t_att" "$t_first"
  else
    log fail "$kind" "no packet from the client at dom0"
    return 1
  fi
  wait_for "$(clog "$cl")" "linuxdomu: cmd-loop" 150 || { log fail "$kind" "client's command loop not seen"; return 1; }
  log step "$kind" client-ready "$(up)"
}

# bench_pair SECS N...: both firewalls up at once, each with its own client
# (same address, separate vifs, NATed to each firewall's uplink address),
# and every iperf3 run made for moat and then for Linux, so that a change
# in the host's load falls on both alike.
bench_pair() {
  local secs=$1 n t k ok_m=0 ok_l=0
  shift
  client_create client-m "moat.first=$DOM0:8082 moat.cmd=$DOM0:9000" || return 1
  client_create client-l "moat.first=$DOM0:8082 moat.cmd=$DOM0:9000" || return 1
  wait_for "$(clog client-m)" "linuxdomu: waiting for eth0" 180 || log fail moat "client not up"
  wait_for "$(clog client-l)" "linuxdomu: waiting for eth0" 180 || log fail linux "client not up"
  log step both clients-waiting "$(up)" "free-MiB $(xl info | awk '/^free_memory/ { print $3 }')"
  side_up moat firewall client-m "$1" && ok_m=1
  side_up linux fwlinux client-l "$1" && ok_l=1
  for n in "$@"; do
    if [ "$n" = "$1" ]; then
      log rules moat "$n" ok
      log rules linux "$n" ok
    else
      [ $ok_m = 1 ] && load_rules moat firewall "$n"
      [ $ok_l = 1 ] && load_rules linux fwlinux "$n"
    fi
    for t in tcp-up tcp-down udp-up udp-down; do
      # The other side's firewall and client are paused while one side
      # runs: idle, they would still take vCPU time (timer ticks, the
      # client's job polling) from the side measured, and the two sides'
      # idle costs differ. 2 s after the switch for the unpaused side's
      # timers to catch up.
      if [ $ok_m = 1 ]; then
        xl pause fwlinux; xl pause client-l; sleep 2
        run_test moat firewall client-m "$n" "$t" "$secs" "$(test_cmd "$t" "$secs")"
        xl unpause fwlinux; xl unpause client-l
      fi
      if [ $ok_l = 1 ]; then
        xl pause firewall; xl pause client-m; sleep 2
        run_test linux fwlinux client-l "$n" "$t" "$secs" "$(test_cmd "$t" "$secs")"
        xl unpause firewall; xl unpause client-m
      fi
    done
  done
  for k in moat linux; do
    if [ $k = moat ]; then show_consoles moat firewall client-m 25; else show_consoles linux fwlinux client-l 25; fi
  done
  xl list | sed "s/^/RIG xl-list /"
  xl destroy client-m
  xl destroy client-l
  xl destroy firewall
  xl destroy fwlinux
}

# mem_trial KIND FW CLIENT MEM: the firewall with memory=MEM passes the
# checks: its client reaches dom0:8080, dom0:8081 is refused with ICMP
# admin-prohibited ("No route to host"), a 3 s iperf3 each way completes.
# The client boots (without a vif) while the firewall does; its vif is
# attached once the firewall is ready.
mem_trial() {
  local kind=$1 fw=$2 cl=$3 mem=$4 why=""
  client_create "$cl" "moat.probe=$DOM0:8080,$DOM0:8081 moat.cmd=$DOM0:9000" || why="client not created"
  if [ -z "$why" ] && ! fw_create "$kind" "$fw" "$mem" check; then why="firewall not ready: $fw_why"; fi
  if [ -z "$why" ] && ! wait_for "$(clog "$cl")" "linuxdomu: waiting for eth0" 120; then why="client not up"; fi
  if [ -z "$why" ] && ! timeout 60 xl network-attach "$cl" "backend=$fw" "ip=$CIP" "mac=$CMAC" >/tmp/xl-attach.out 2>&1; then
    why="network-attach: $(tail -n 2 /tmp/xl-attach.out | tr '\n' ' ')"; fi
  if [ -z "$why" ] && ! wait_for "$(clog "$cl")" "probe $DOM0:8080 ok" 150; then why="allowed port not reached"; fi
  if [ -z "$why" ] && ! wait_for "$(clog "$cl")" "probe $DOM0:8081 fail .*No route to host" 30; then
    why="denied port not rejected"; fi
  if [ -z "$why" ]; then
    send_cmd "$cl" 120 "timeout 40 iperf3 -c $DOM0 -t 3 -f m 2>&1 | grep receiver; timeout 40 iperf3 -c $DOM0 -t 3 -f m -R 2>&1 | grep receiver"
    [ "$(cmd_out "$cl" | grep -c 'Mbits/sec.*receiver')" = 2 ] || why="iperf3 failed: $(cmd_out "$cl" | tr '\n' ' ')"
  fi
  if [ -z "$why" ]; then
    log trial "$kind" "$mem" ok
  else
    log trial "$kind" "$mem" fail "$why"
    show_consoles "$kind" "$fw" "$cl" 12
  fi
  xl destroy "$cl" 2>/dev/null
  xl destroy "$fw" 2>/dev/null
  [ -z "$why" ]
}

# min_mem KIND FW CLIENT LO HI STEPS: bisects memory= between LO (taken as
# failing) and HI (taken as passing: the benchmark ran with it), STEPS trials.
min_mem() {
  local kind=$1 fw=$2 cl=$3 lo=$4 hi=$5 steps=$6 i=0 mid
  while [ $i -lt "$steps" ]; do
    mid=$(((lo + hi) / 2))
    [ "$mid" -le "$lo" ] && break
    if mem_trial "$kind" "$fw" "$cl" "$mid"; then hi=$mid; else lo=$mid; fi
    i=$((i + 1))
  done
  log minmem "$kind" "$hi" "$lo"
}
