# Per-case time limits for the rig's dom0 scripts (docs/testing.md, "Cases").
# rig/xenrig.py puts this file in /guest; the scripts the tests generate
# source it (`. /guest/case.sh`) and run each case with
#
#   rig_case [-s] [-a PREV] NAME LIMIT CMD [ARG...]
#
# CMD (usually a shell function of the script) runs in a background
# subshell; a watchdog gives it LIMIT seconds. It prints, one line each:
#   RIG case-begin NAME LIMIT
#   RIG case-timeout NAME after LIMIT s          the limit passed: then
#   RIG case-running NAME pid PID STATE WCHAN ARGS   what was running (its
#   RIG case-stack NAME pid PID ...                  process tree; kernel
#                                                   stacks of D-state ones),
#   RIG case-destroy NAME domid N rc=RC          every domain created since
#                                                case-begin, destroyed,
#   RIG case-domains NAME ...                    what xenstore lists after
#   RIG case-fault NAME: LINE                    dom0 kernel lines since
#                                                case-begin that tell of a
#                                                crashed or stuck process
#   RIG tool-killed NAME signal N: WHAT          the case's last command, or
#                                                one run by rig_tool, died
#                                                of a signal
#   RIG case-end NAME rc=RC                      always (rc 124: timed out)
# or, instead of all that,
#   RIG case-skip NAME WHY
# when ${RIG_GUEST:-/guest}/rig-skip (written by rig/xenrig.py when it
# rebooted a wedged rig) says `done NAME` or `wedged NAME`, or when -a PREV
# was given and PREV did not end in time in this boot. -s marks a setup
# case (e.g. starting a driver domain): after a reboot it runs again even
# though it was done before, since what it set up is gone; it is still
# skipped if it was the one that wedged.
#
# The timeout kills the case's whole process tree (stopped first, so nothing
# forks while it is killed) and destroys every domain whose domid is above
# the highest that existed at case-begin (Xen hands out domids in
# increasing order), each `xl destroy` under `timeout`. Domains started
# before the case (e.g. a driver domain) stay.
#
# Runs under busybox ash (dom0), dash and bash.

rig_guest_dir=${RIG_GUEST:-/guest}
# What ended in time in this boot (for -a).
rig_case_ok=${RIG_CASE_STATE:-/tmp/rig-case-ok}
: >"$rig_case_ok"

# rig_tool CMD [ARG...]: runs CMD; if a signal killed it, says so (a dom0
# tool's crash fails its case, see rig/xenrig.py). Returns CMD's status.
rig_tool() {
  "$@"
  set -- $? "$@"
  if [ "$1" -gt 128 ] && [ "$1" -lt 160 ]; then
    echo "RIG tool-killed ${RIG_CASE_NAME:-?} signal $(($1 - 128)): $2 $3 $4"
  fi
  return "$1"
}

# The domids xenstore lists, ascending (xl list as a fallback).
rig__domids() {
  local ids
  ids=$(timeout -s KILL 15 xenstore-list /local/domain 2>/dev/null)
  [ -n "$ids" ] || ids=$(timeout -s KILL 30 xl list 2>/dev/null | awk 'NR > 1 { print $2 }')
  for d in $ids; do echo "$d"; done | sort -n
}

# rig__tree PID: PID and all its descendants (from /proc), one a line.
rig__tree() {
  local d l r
  for d in /proc/[0-9]*; do
    read -r l <"$d/stat" 2>/dev/null || continue
    r=${l##*) }
    # shellcheck disable=SC2086  # state ppid ...
    set -- $r
    echo "${d#/proc/} $2"
  done | awk -v root="$1" '
    { pp[$1] = $2 }
    END {
      if (!(root in pp)) exit
      want[root] = 1
      do {
        more = 0
        for (p in pp) if (!(p in want) && (pp[p] in want)) { want[p] = 1; more = 1 }
      } while (more)
      for (p in want) print p
    }' | sort -n
}

# rig__describe NAME PID: one line per process of PID's tree.
rig__describe() {
  local p l r st wc args
  for p in $(rig__tree "$2"); do
    read -r l <"/proc/$p/stat" 2>/dev/null || continue
    r=${l##*) }
    st=${r%% *}
    read -r wc <"/proc/$p/wchan" 2>/dev/null || wc=-
    args=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)
    echo "RIG case-running $1 pid $p $st ${wc:--} ${args:-[${l#* (}}"
    if [ "$st" = D ] && [ -r "/proc/$p/stack" ]; then
      head -n 8 "/proc/$p/stack" | sed "s/^/RIG case-stack $1 pid $p /"
    fi
  done
}

# rig__kill_tree PID: stops PID's tree until no new process appears, then
# kills every process it saw.
rig__kill_tree() {
  local all="" t i=0
  while [ $i -lt 5 ]; do
    t=$(rig__tree "$1")
    [ -n "$t" ] || break
    # shellcheck disable=SC2086
    kill -STOP $t 2>/dev/null
    [ "$t" = "$all" ] && break
    all=$t
    i=$((i + 1))
  done
  # shellcheck disable=SC2086
  [ -n "$all" ] && kill -KILL $all 2>/dev/null
  return 0
}

# rig__faults NAME SINCE: dom0 kernel lines after uptime SINCE that tell of
# a process that crashed or hung.
rig__faults() {
  dmesg 2>/dev/null | awk -v since="$2" -v name="$1" '
    /segfault at|traps:|general protection|invalid opcode|Out of memory|Killed process|blocked for more than|BUG:|Oops/ {
      t = $0
      if (t !~ /^\[ *[0-9]+\.[0-9]+\]/) next
      sub(/^\[ */, "", t); sub(/\].*/, "", t)
      if (t + 0 < since + 0) next
      if (++n <= 10) print "RIG case-fault " name ": " $0
    }'
}

rig_case() {
  local setup=0 after="" name limit pid wd rc t0 maxdom
  while :; do
    case "${1:-}" in
      -s) setup=1; shift ;;
      -a) after=$2; shift 2 ;;
      *) break ;;
    esac
  done
  name=$1 limit=$2
  shift 2
  if [ -f "$rig_guest_dir/rig-skip" ]; then
    if grep -qx "wedged $name" "$rig_guest_dir/rig-skip"; then
      echo "RIG case-skip $name it wedged dom0 before the reboot"
      return 0
    fi
    if [ $setup = 0 ] && grep -qx "done $name" "$rig_guest_dir/rig-skip"; then
      echo "RIG case-skip $name it ran before the reboot"
      return 0
    fi
  fi
  if [ -n "$after" ] && ! grep -qx "$after" "$rig_case_ok"; then
    echo "RIG case-skip $name needs $after, which did not end in time in this boot"
    return 0
  fi
  read -r t0 _ </proc/uptime
  maxdom=$(rig__domids | tail -n 1)
  echo "RIG case-begin $name $limit"
  rm -f "/tmp/rig-case-timeout.$name"
  (
    RIG_CASE_NAME=$name
    export RIG_CASE_NAME
    "$@"
  ) &
  pid=$!
  (
    trap 'kill $s 2>/dev/null; exit 0' TERM
    sleep "$limit" &
    s=$!
    wait $s
    trap '' TERM
    : >"/tmp/rig-case-timeout.$name"
    echo "RIG case-timeout $name after $limit s; running then:"
    rig__describe "$name" "$pid"
    rig__kill_tree "$pid"
    for d in $(rig__domids); do
      [ "$d" -gt "${maxdom:-0}" ] || continue
      (
        timeout -s KILL 30 xl destroy "$d" >/dev/null 2>&1
        echo "RIG case-destroy $name domid $d rc=$?"
      ) &
    done
    wait
    echo "RIG case-domains $name after the cleanup: $(rig__domids | tr '\n' ' ')"
  ) &
  wd=$!
  wait $pid
  rc=$?
  kill $wd 2>/dev/null
  wait $wd 2>/dev/null
  if [ -f "/tmp/rig-case-timeout.$name" ]; then
    rm -f "/tmp/rig-case-timeout.$name"
    rc=124
  else
    echo "$name" >>"$rig_case_ok"
    if [ $rc -gt 128 ] && [ $rc -lt 160 ]; then
      echo "RIG tool-killed $name signal $((rc - 128)): the case's last command"
    fi
  fi
  rig__faults "$name" "$t0"
  echo "RIG case-end $name rc=$rc"
  return 0
}
