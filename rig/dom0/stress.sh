#!/bin/sh
# dom0 side of rig/stress.py: loads dom0 for a fixed time and counts every
# sign of corrupted userland state (docs/testing.md, "dom0 userland
# corruption: root cause").
#
# usage: sh stress.sh SECONDS
# Needs in /guest: expected.env (host-computed answers, sourced below),
# blob (a fixed file whose checksums expected.env holds), fpucheck (built
# from rig/dom0/fpucheck.c; the fpu loop is skipped without it) and, unless
# STRESS_GUEST is empty, the guest image and its xl config.
# Environment: STRESS_LOOPS (default "create awk sum xs xllist fpu"; create
# only with STRESS_GUEST set), STRESS_PIN=1 pins both dom0 vCPUs to
# physical CPU 0 first (so Xen switches between them all the time).
#
# For SECONDS it runs these loops at once:
#   create  `xl create` / `xl destroy` of a small guest, again and again
#   awk     busybox awk sums (integer and floating point) against the answer
#   sum     sha256sum, md5sum and crc32 of /guest/blob against the host's
#   xs      xenstore-write then xenstore-read of a fresh value, compared
#   xllist  `xl list`: exit status 0 and a Domain-0 row
#   fpu     /guest/fpucheck: one `xrstor`, one `yield` and two `sleep`
#           copies at a time, 5 s each (SSE registers compared with what
#           was loaded into them)
# Every command runs under `timeout`, so nothing can hang the run. Faults,
# one line each in $dir/faults:
#   wrong   a command's result differed from the known answer
#   signal  a command was killed by a signal (exit status > 128, not our
#           own timeout's SIGTERM)
#   timeout a command hit its time limit (reported, not a fault by itself)
#   xlabort xl printed a glibc abort or a dead child ("corrupted", "fatal
#           signal", "Aborted", ...), on its stderr or in /var/log/xen/xl-*.log
#   dmesg   a dom0 kernel line "segfault at" / "general protection" / "trap"
#   loopdied a whole loop (its shell) died with a signal
#   fpu     an fpucheck run saw registers that differ from what it loaded
#           (its first FPUCHECK-BAD line is kept)
# At the end it prints the fault lines and the dmesg evidence, then one line
#   STRESS-RESULT iters=N create=N awk=N sum=N xs=N xllist=N fpuruns=N
#     fpurounds=N fpubad=N nonfpu=N wrong=N signal=N xlabort=N dmesg=N
#     loopdied=N fpu=N timeout=N
# where nonfpu counts the faults (not timeouts) of everything but fpucheck.
# which rig/stress.py parses.

secs=${1:-60}
. /guest/expected.env
dir=/tmp/stress
mkdir -p $dir
rm -f $dir/*
guest_cfg=${STRESS_GUEST_CFG:-/guest/selftest-pv.cfg}

read_now() { read -r now _ </proc/uptime; now=${now%.*}; }
read_now
end=$((now + secs))

fault() { echo "$*" >>$dir/faults; }

# Classifies a command's exit status. $1 loop, $2 rc, $3 what ran.
# Returns 0 when the command exited normally (any status <= 128).
check_rc() {
  case $2 in
    124|143) fault "timeout $1 rc=$2 $3"; return 1 ;;
  esac
  if [ "$2" -gt 128 ]; then
    fault "signal $1 rc=$2 sig=$(($2 - 128)) $3"
    return 1
  fi
  return 0
}

# Looks for glibc/xl abort messages in a file of xl output.
check_xl_out() {
  if grep -q -E 'corrupted|fatal signal|Aborted|Segmentation|malloc\(\)|free\(\)|double free|stack smashing' "$2" 2>/dev/null; then
    fault "xlabort $1 $(grep -E 'corrupted|fatal signal|Aborted|Segmentation|malloc\(\)|free\(\)|double free|stack smashing' "$2" | head -n 2 | tr '\n' ' ')"
  fi
}

loop_create() {
  i=0
  while read_now; [ $now -lt $end ]; do
    i=$((i + 1))
    n=st$i
    timeout 60 xl create "$guest_cfg" "name=\"$n\"" >$dir/create.out 2>&1
    rc=$?
    check_rc create $rc "xl create $n"
    check_xl_out create $dir/create.out
    sleep 2
    timeout 60 xl destroy "$n" >$dir/destroy.out 2>&1
    rc=$?
    check_rc create $rc "xl destroy $n"
    check_xl_out create $dir/destroy.out
    echo . >>$dir/create.n
  done
}

loop_awk() {
  while read_now; [ $now -lt $end ]; do
    got=$(timeout 60 awk 'BEGIN { s = 0; for (i = 1; i <= 20000; i++) s += i * i; print s }')
    rc=$?
    if check_rc awk $rc "awk int"; then
      [ "$got" = "$AWK_INT" ] || fault "wrong awk int got=$got want=$AWK_INT"
    fi
    got=$(timeout 60 awk 'BEGIN { t = 0; for (i = 1; i <= 20000; i++) t += 1 / i; printf "%.17g\n", t }')
    rc=$?
    if check_rc awk $rc "awk float"; then
      [ "$got" = "$AWK_FLOAT" ] || fault "wrong awk float got=$got want=$AWK_FLOAT"
    fi
    echo . >>$dir/awk.n
  done
}

loop_sum() {
  while read_now; [ $now -lt $end ]; do
    got=$(timeout 60 sha256sum /guest/blob)
    rc=$?
    if check_rc sum $rc sha256sum; then
      [ "${got%% *}" = "$SHA256" ] || fault "wrong sum sha256 got=${got%% *}"
    fi
    got=$(timeout 60 md5sum /guest/blob)
    rc=$?
    if check_rc sum $rc md5sum; then
      [ "${got%% *}" = "$MD5" ] || fault "wrong sum md5 got=${got%% *}"
    fi
    got=$(timeout 60 crc32 /guest/blob)
    rc=$?
    if check_rc sum $rc crc32; then
      [ "${got%% *}" = "$CRC32" ] || fault "wrong sum crc32 got=${got%% *}"
    fi
    echo . >>$dir/sum.n
  done
}

loop_xs() {
  i=0
  while read_now; [ $now -lt $end ]; do
    i=$((i + 1))
    v="value-$i-$now"
    timeout 60 xenstore-write /local/domain/0/stress/k "$v" 2>>$dir/xs.err
    rc=$?
    if check_rc xs $rc xenstore-write; then
      [ $rc = 0 ] || fault "wrong xs write rc=$rc"
      got=$(timeout 60 xenstore-read /local/domain/0/stress/k 2>>$dir/xs.err)
      rc=$?
      if check_rc xs $rc xenstore-read; then
        [ "$got" = "$v" ] || fault "wrong xs read rc=$rc got=$got want=$v"
      fi
    fi
    echo . >>$dir/xs.n
  done
}

# One fpucheck run: $1 mode, $2 a tag for its output file.
# Reads the output with the shell alone: grep and awk are among the
# programs that crash here.
fpu_one() {
  out=$dir/fpu.run.$1.$$.$2
  timeout 60 /guest/fpucheck $1 5 >$out 2>&1
  rc=$?
  check_rc fpu $rc "fpucheck $1" || return
  line="" first=""
  while read -r l; do
    case $l in
      "FPUCHECK mode"*) line=$l ;;
      FPUCHECK-BAD*) [ -n "$first" ] || first=$l ;;
    esac
  done <$out
  [ -n "$line" ] || { fault "wrong fpu no result from fpucheck $1 rc=$rc"; return; }
  echo "$line" >>$dir/fpu.results
  case " $line " in
    *" bad=0 "*) ;;
    *) fault "fpu $line; first: $first" ;;
  esac
}

loop_fpu() {
  [ -x /guest/fpucheck ] || { echo "STRESS-INFO no /guest/fpucheck: fpu loop skipped"; return 0; }
  k=0
  while read_now; [ $now -lt $end ]; do
    k=$((k + 1))
    fpu_one xrstor $k &
    fpu_one yield $k &
    fpu_one sleep $k &
    fpu_one sleep $k.2 &
    wait
    echo . >>$dir/fpu.n
  done
}

loop_xllist() {
  while read_now; [ $now -lt $end ]; do
    timeout 60 xl list >$dir/xllist.out 2>&1
    rc=$?
    if check_rc xllist $rc "xl list"; then
      [ $rc = 0 ] || fault "wrong xllist rc=$rc $(head -n 1 $dir/xllist.out)"
      grep -q '^Domain-0 ' $dir/xllist.out || fault "wrong xllist no Domain-0 row"
    fi
    check_xl_out xllist $dir/xllist.out
    echo . >>$dir/xllist.n
  done
}

dmesg >$dir/dmesg.before 2>/dev/null
# What dom0's kernel uses to switch tasks' FPU state (XSAVE, XSAVEOPT,
# XSAVES or FXSAVE) and what the CPU offers it.
echo "STRESS-INFO cpu flags: $(grep -m 1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(fpu|fxsr|xsave|xsaveopt|xsavec|xsaves|avx|avx2|avx512f)$' | tr '\n' ' ')"
grep 'x86/fpu' $dir/dmesg.before | sed 's/^/STRESS-INFO /'
if [ "$STRESS_PIN" = 1 ]; then
  xl vcpu-pin Domain-0 all 0 && echo "STRESS-INFO dom0 vCPUs pinned to CPU 0: $(xl vcpu-list Domain-0 | tr -s ' ' | tr '\n' '|')"
fi
loops=${STRESS_LOOPS:-create awk sum xs xllist fpu}
[ -n "$STRESS_GUEST" ] || loops=$(echo " $loops " | sed 's/ create / /')
echo "STRESS-BEGIN seconds=$secs guest=${STRESS_GUEST:-none} loops=$(echo $loops)"
pids=""
for l in $loops; do
  loop_$l &
  pids="$pids $l:$!"
done
# Waits for each loop; a loop still running 120 s after the end is killed
# (its commands have 60 s limits each, so this only happens if its shell
# is stuck).
for p in $pids; do
  l=${p%%:*}
  pid=${p#*:}
  while kill -0 $pid 2>/dev/null; do
    read_now
    if [ $now -gt $((end + 120)) ]; then
      fault "timeout $l loop still running at end+120s; killed"
      kill -9 $pid 2>/dev/null
      break
    fi
    sleep 1
  done
  wait $pid
  rc=$?
  if [ $rc -gt 128 ] && [ $rc != 137 ]; then
    fault "loopdied $l rc=$rc"
  fi
done
# Domains the create loop left behind.
for d in $(xl list 2>/dev/null | awk 'NR > 1 && $1 != "Domain-0" { print $1 }'); do
  timeout 30 xl destroy "$d" >/dev/null 2>&1
done
sleep 1
# The daemonized xl monitors log their aborts in their own logs.
for f in /var/log/xen/xl-*.log; do
  [ -f "$f" ] && check_xl_out "monitor:${f##*/}" "$f"
done
dmesg >$dir/dmesg.after 2>/dev/null
# Only the kernel lines that appeared during the stress.
n0=$(wc -l <$dir/dmesg.before)
tail -n +$((n0 + 1)) $dir/dmesg.after >$dir/dmesg.new
grep -E 'segfault at|general protection|traps:|trap invalid opcode|trap divide error|stack segment' \
  $dir/dmesg.new >$dir/dmesg.faults
while read -r line; do
  fault "dmesg $line"
done <$dir/dmesg.faults

count() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }
kind() { if [ -f $dir/faults ]; then grep -c "^$1 " $dir/faults; else echo 0; fi; }
if [ -f $dir/faults ]; then
  head -n 40 $dir/faults | sed 's/^/STRESS-FAULT /'
  # The faulting instructions' bytes (x86 prints a "Code:" line after the
  # segfault line), for telling where it broke.
  grep -E -A 1 'segfault at|general protection|traps:' $dir/dmesg.new | grep 'Code:' |
    head -n 10 | sed 's/^/STRESS-CODE /'
fi
c=$(count $dir/create.n)
a=$(count $dir/awk.n)
s=$(count $dir/sum.n)
x=$(count $dir/xs.n)
y=$(count $dir/xllist.n)
f=$(count $dir/fpu.n)
# fpucheck's totals, summed in the shell (awk is one of the things tested).
fr=0 fb=0 fn=0
if [ -f $dir/fpu.results ]; then
  while read -r line; do
    fn=$((fn + 1))
    for w in $line; do
      case $w in
        rounds=*) fr=$((fr + ${w#rounds=})) ;;
        bad=*) fb=$((fb + ${w#bad=})) ;;
      esac
    done
  done <$dir/fpu.results
fi
# Faults of everything but fpucheck (its own loop, its dmesg lines) and
# timeouts: the userland corruption the rig's tests meet.
nonfpu=0
if [ -f $dir/faults ]; then
  while read -r k l rest; do
    case "$k $l $rest" in
      "timeout "*|"fpu "*|*" fpu "*|*"fpucheck["*) ;;
      *) nonfpu=$((nonfpu + 1)) ;;
    esac
  done <$dir/faults
fi
echo "STRESS-RESULT iters=$((c + a + s + x + y + f)) create=$c awk=$a sum=$s xs=$x xllist=$y" \
  "fpuruns=$fn fpurounds=$fr fpubad=$fb nonfpu=$nonfpu" \
  "wrong=$(kind wrong) signal=$(kind signal) xlabort=$(kind xlabort) dmesg=$(kind dmesg)" \
  "loopdied=$(kind loopdied) fpu=$(kind fpu) timeout=$(kind timeout)"
exit 0
