#!/bin/sh
# Runs one guest in the rig's dom0 and reports what happened to it.
#
# usage: sh xlcase.sh NAME CONFIG LIMIT_SECONDS [KEY=VALUE...]
#
# Starts CONFIG with `xl create -c` under the name NAME (KEY=VALUE pairs are
# xl's config overrides, e.g. 'extra="selftest.end=panic"'), so the guest's
# console goes to dom0's console and from there to the rig's serial. While
# the guest runs, it:
#   - answers the selftest's xenstore watch handshake: once
#     data/selftest/watch-ready reads 1, it writes data/selftest/watch;
#   - samples the guest's CPU time (xl list's Time(s)) when the guest prints
#     `selftest: idle: begin` and again at `selftest: idle: end`;
#   - notices the domain crashing (state c, kept by on_crash="preserve") or
#     going away, or LIMIT_SECONDS passing.
# Then it prints its reports and xl's log of the domain; only `RIG create` is
# printed while the guest runs, so no report splits a guest console line.
# Every line it prints starts with "RIG " and names the guest;
# rig/test_selftest.py parses them:
#   RIG create NAME                          right before `xl create`
#   RIG watch-fired NAME                     after the xenstore-write
#   RIG idle-cpu NAME CPU_S over WALL_S      guest CPU seconds over wall seconds
#   RIG idle-cpu-unmeasured NAME ...          the samples failed
#   RIG shutdown NAME reason N               the domain shut down with reason code N
#   RIG monitor-missing NAME: ...            xl's monitor did not reap it; the rig destroyed it
#   RIG end NAME gone|crashed|shutdown-unreaped|timeout|create-failed
#   RIG xl-log NAME: ...                     /var/log/xen/xl-NAME.log
#   RIG listed NAME yes|no                   whether xl list still shows it at the end

name=$1
cfg=$2
limit=$3
shift 3

# Overridable so rig/test_rig_unit.py can run this script on the host
# against a fake xl.
log_dir=${XLCASE_LOG_DIR:-/var/log/xen}
tty=${XLCASE_TTY:-/dev/console}
reap_seconds=${XLCASE_REAP_SECONDS:-10}
conlog=$log_dir/console/guest-$name.log
xllog=$log_dir/xl-$name.log
# Reports made while the guest's console is attached wait in this file: an
# echo to the shared console could land in the middle of a guest line.
notes=${TMPDIR:-/tmp}/xlcase-$name.notes
rm -f "$conlog" "$xllog" "$notes"
note() { echo "RIG $*" >>"$notes"; }

# The loop below runs every few tenths of a second in an emulated dom0,
# where each process started costs; so it uses shell builtins where it can.
set -f  # `set -- $row` below splits words and must not expand globs
# Sets $now to dom0's uptime in seconds (two decimals).
read_now() { read -r now _ </proc/uptime; }

echo "RIG create $name"
# xenconsole needs a terminal on stdin; a background job would get /dev/null.
xl create -c "$cfg" "name=\"$name\"" "$@" <"$tty" &
console_pid=$!

# The guest's CPU seconds so far (xl list's Time(s) column).
cpu_now() { xl list "$name" 2>/dev/null | awk 'NR == 2 { print $6 }'; }

read_now
start=$now
seen=0
shut_at=""
watch_done=0
idle=0
end=""
while :; do
  read_now
  if [ $((${now%.*} - ${start%.*})) -gt "$limit" ]; then
    end=timeout
    break
  fi
  # While the guest idles, only sample its CPU time and look for the end of
  # the idle phase: every extra process dom0 starts here delays the samples
  # under TCG. The guest may power off right after `idle: end`, so the last
  # sample taken while it existed is kept.
  if [ $idle = 1 ]; then
    sample_cpu=$(cpu_now)
    read_now
    if [ -n "$sample_cpu" ]; then
      idle_cpu1=$sample_cpu
      idle_wall1=$now
    fi
    if grep -q 'selftest: idle: end' "$conlog" 2>/dev/null || [ -z "$sample_cpu" ]; then
      if [ -n "$idle_cpu0" ] && [ -n "$idle_cpu1" ]; then
        note "idle-cpu $name $(awk -v a="$idle_cpu1" -v b="$idle_cpu0" 'BEGIN { printf "%.1f", a - b }')" \
          "over $(awk -v a="$idle_wall1" -v b="$idle_wall0" 'BEGIN { printf "%.2f", a - b }')"
      else
        note "idle-cpu-unmeasured $name (xl list had no row)"
      fi
      idle=2
    fi
    continue
  fi
  # -v adds the UUID and the shutdown reason code (columns 7 and 8).
  row=$(xl list -v "$name" 2>/dev/null | awk 'NR == 2')
  if [ -z "$row" ]; then
    if [ $seen = 1 ]; then end=gone; break; fi
    if ! kill -0 $console_pid 2>/dev/null; then end=create-failed; break; fi
  else
    seen=1
    # shellcheck disable=SC2086  # split the row into its columns
    set -- $row
    domid=$2
    state=$5
    reason=$8
    case "$state" in
      *c*)
        note "shutdown $name reason $reason"
        end=crashed
        break
        ;;
      *s*)
        # Shut down. xl's monitoring process normally destroys the domain
        # at once (on_poweroff/on_reboot="destroy"); if that process died
        # (seen in about 1 of 10 starts: glibc "corrupted double-linked list" in xl's
        # daemonizing child), nobody will, so the rig does it after
        # $reap_seconds.
        if [ -z "$shut_at" ]; then
          shut_at=$now
          note "shutdown $name reason $reason"
        elif [ $((${now%.*} - ${shut_at%.*})) -ge "$reap_seconds" ]; then
          note "monitor-missing $name: xl's monitor did not destroy the shut-down domain"
          end=shutdown-unreaped
          break
        fi
        ;;
    esac
    if [ $watch_done = 0 ] &&
       [ "$(xenstore-read "/local/domain/$domid/data/selftest/watch-ready" 2>/dev/null)" = 1 ]; then
      if xenstore-write "/local/domain/$domid/data/selftest/watch" fired-by-dom0; then
        note "watch-fired $name"
      else
        note "watch-write-failed $name"
      fi
      watch_done=1
    fi
    if [ $idle = 0 ] && grep -q 'selftest: idle: begin' "$conlog" 2>/dev/null; then
      # Sampled after the begin line is seen, so the window holds idle time only.
      idle_cpu0=$(cpu_now)
      read_now
      idle_wall0=$now
      idle_cpu1=""
      idle=1
      continue
    fi
  fi
  sleep 0.3
done

if [ "$end" != gone ]; then
  xl destroy "$name" 2>/dev/null
fi
kill $console_pid 2>/dev/null
wait $console_pid 2>/dev/null
[ -f "$notes" ] && cat "$notes"
echo "RIG end $name $end"
# xl's monitoring process writes its last lines as the domain goes away.
sleep 1
if [ -f "$xllog" ]; then
  sed "s/^/RIG xl-log $name: /" "$xllog"
fi
if xl list "$name" >/dev/null 2>&1; then
  echo "RIG listed $name yes"
else
  echo "RIG listed $name no"
fi
