#!/usr/bin/env python3
"""`make run`: moat's firewall VM on real Xen, as a short guided demo.

Boots the rig (Xen 4.17 and a Debian Linux dom0 in QEMU, rig/xenrig.py),
then in dom0:

- serves HTTP on 10.99.0.1:80 (busybox httpd) and a TCP service on
  10.99.0.1:8081 (busybox nc), dom0's address on the bridge xenbr0;
- starts the firewall VM as users start it, `xl create firewall-pvh.cfg`
  (its uplink on xenbr0), and shows its console;
- writes the client's rules with the stock `xenstore-write` (policy drop,
  TCP port 80 allowed) under the firewall's xenstore directory
  (docs/firewall.md);
- starts a Debian Linux PV client behind it from firewall-client-pv.cfg
  (`vif=['backend=firewall,ip=10.137.0.10,...']`, the rig's domU of
  rig/domu/ with a shell on its console, `moat.shell=`), and types into
  that shell: a `wget` of dom0's page (allowed), an `nc` to port 8081
  (refused: the firewall answers ICMP admin-prohibited, which nc reports as
  "No route to host"), then, after dom0 wrote a rule allowing 8081, the
  same `nc` again (it gets through: no restart).

Every step prints what it does and whether it did it. When stdin is a
terminal, the demo then leaves the user at a shell in dom0 (the rig's
serial console), with a short cheat sheet: `xl console client-a` for the
client's shell, the xenstore paths of the rules, how to leave QEMU
(`exit` powers the rig off, or Ctrl-A X). Otherwise (CI, pipes) it exits
after the demo: status 0 only if every step did what it said, 1 if one
did not, the rig's 124 (time limit) or 125 (rig failure) before the end.

    python3 rig/run_firewall.py [--image target/images/amd64/firewall]
                                [--timeout SECONDS] [--log FILE] [--verbose]

Needs `make images` and the rig cache (rig/fetch.sh, run on first use).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

RIG = Path(__file__).resolve().parent
sys.path.insert(0, str(RIG))
sys.path.insert(0, str(RIG / "domu"))
import linux_domu  # noqa: E402
import test_firewall  # noqa: E402  (the client's address and dom0's, as the test uses them)
import xenrig  # noqa: E402

REPO = RIG.parent
CLIENT = "client-a"
HTTP, DENIED = 80, 8081

#: The steps the dom0 script reports (`RIG step-ok NAME ...`), in order:
#: the demo passed when each of them said ok.
STEPS = ("firewall", "rules", "client", "allowed", "denied", "rule-change")

#: The demo in dom0 (/guest/run.sh). Protocol with the host: `RIG say TEXT`
#: narration, `RIG cmd TEXT` a dom0 command shown as typed, `RIG step-ok
#: NAME TEXT` / `RIG step-fail NAME TEXT` a step's verdict, `FW LINE` and
#: `CLIENT LINE` the guests' consoles, `XL LINE` xl's output, `RIG
#: demo-end N` (N steps failed), then either the exit (no terminal) or
#: `RIG demo-shell` and a shell on the console (/guest/interactive).
SCRIPT = r"""
set -u
say() { echo "RIG say $*"; }
cmd() { echo "RIG cmd $*"; }
fails=0
ok() { echo "RIG step-ok $*"; }
bad() { echo "RIG step-fail $*"; fails=$((fails + 1)); }
up() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.1f", b - a }'; }
# wait_for FILE REGEX SECONDS
wait_for() {
  n=$(($3 * 5)); i=0
  while [ $i -lt $n ]; do grep -q -E -- "$2" "$1" 2>/dev/null && return 0; sleep 0.2; i=$((i + 1)); done
  return 1
}
# xlrun ARGS...: xl with its output shown as XL lines; its status
xlrun() {
  xl "$@" >/tmp/xl.out 2>&1; r=$?
  sed 's/^/XL /' /tmp/xl.out
  return $r
}
# relay FILE SEEN PREFIX: FILE's lines as they come (once FILE exists),
# copied to SEEN as they are shown: the checks read SEEN, so that a verdict
# never comes before the console lines it is about (tail -f polls once a
# second and TCG is slow; a read loop, not sed, which holds each line back
# until the next one comes)
relay() {
  wait_for "$1" . 30 || return
  tail -n +1 -f "$1" | tee "$2" | while IFS= read -r l; do echo "$3 $l"; done &
}
# wait_count FILE REGEX N SECONDS: until N lines match
wait_count() {
  n=$(($4 * 5)); i=0
  while [ $i -lt $n ]; do [ "$(grep -c -E -- "$2" "$1" 2>/dev/null)" -ge "$3" ] && return 0; sleep 0.2; i=$((i + 1)); done
  return 1
}
# client SECONDS COMMAND: types COMMAND into the client's shell (its
# console's pty, as `xl console` would) once its prompt is back, and waits
# for its end; the status is COMMAND's
k=0
client() {
  k=$((k + 1))
  wait_count "$cseen" "@CLIENT@:/# " $k 10
  printf '%s; echo "rc=$? end=$((%d))"\n' "$2" "$k" >"$ctty"
  wait_for "$cseen" "rc=[0-9]+ end=$k([^0-9]|\$)" "$1" || return 124
  return "$(grep -E -o "rc=[0-9]+ end=$k([^0-9]|\$)" "$cseen" | tail -n 1 | sed 's/rc=\([0-9]*\).*/\1/')"
}
flog=/var/log/xen/console/guest-firewall.log
clog=/var/log/xen/console/guest-@CLIENT@.log
fseen=/tmp/firewall.seen
cseen=/tmp/@CLIENT@.seen

say "dom0 (10.99.0.1 on its bridge xenbr0) serves HTTP on port @HTTP@ (busybox httpd) and TCP on port @DENIED@ (nc)"
mkdir -p /srv/www
echo "hello from the httpd in dom0 (@DOM0@:@HTTP@)" >/srv/www/index.html
httpd -p @HTTP@ -h /srv/www
printf '#!/bin/sh\necho "dom0 port @DENIED@ answers: the new rule let you in"\n' >/tmp/answer
chmod +x /tmp/answer
(while :; do nc -ll -p @DENIED@ -e /tmp/answer; sleep 0.2; done) >/dev/null 2>&1 &

say "starting the firewall VM (moat, PVH, 32 MiB) with its uplink on xenbr0 as 10.99.0.10"
cmd "xl create firewall-pvh.cfg"
t=$(up)
cd /guest
if xlrun create firewall-pvh.cfg; then
  relay $flog $fseen FW
  if wait_for $fseen "firewall: forwarding:" 90; then
    ok firewall "the firewall is up and forwarding, $(since $t) s after xl create"
  else
    bad firewall "no 'firewall: forwarding:' line 90 s after xl create"
  fi
else
  bad firewall "xl create firewall-pvh.cfg failed"
fi
fw=$(xl domid firewall 2>/dev/null || echo none)

say "rules for the client @IP@, written by dom0 into the firewall's xenstore directory: drop all but TCP port @HTTP@"
cmd "fw=/local/domain/\$(xl domid firewall)/qubesdb/qubes-firewall/@ENC@"
cmd "xenstore-write \$fw/policy drop \$fw/0000 'action=accept proto=tcp dstports=@HTTP@-@HTTP@' \$fw ''"
base=/local/domain/$fw/qubesdb/qubes-firewall/@ENC@
if xenstore-write $base/policy drop $base/0000 "action=accept proto=tcp dstports=@HTTP@-@HTTP@" $base "" &&
  wait_for $fseen "rules of @IP@: 1 rules" 30; then
  ok rules "the firewall loaded them through its xenstore watch"
else
  bad rules "no 'rules of @IP@: 1 rules' line from the firewall"
fi

say "starting a Debian Linux PV client behind the firewall: its vif says backend=firewall,ip=@IP@"
cmd "xl create firewall-client-pv.cfg"
t=$(up)
if xlrun create firewall-client-pv.cfg \
  'extra="console=hvc0 quiet moat.ip=@IP@/24 moat.gw=10.137.0.1 moat.shell=@CLIENT@"'; then
  relay $clog $cseen CLIENT
  if wait_for $cseen "linuxdomu: ready" 240 && wait_for $cseen "@CLIENT@:/# " 30; then
    ok client "the client is up, its shell on its console, $(since $t) s after xl create"
  else
    bad client "the client's shell did not come up within 270 s"
  fi
else
  bad client "xl create firewall-client-pv.cfg failed"
fi
cid=$(xl domid @CLIENT@ 2>/dev/null || echo none)
ctty=$(xenstore-read /local/domain/$cid/console/tty 2>/dev/null || echo /dev/null)

say "the client fetches dom0's page: TCP port @HTTP@ is allowed"
client 60 "wget -q -O- http://@DOM0@/"; r=$?
if [ $r = 0 ] && grep -q "hello from the httpd in dom0" $cseen; then
  ok allowed "the page came through the firewall"
else
  bad allowed "wget ended with status $r"
fi

say "the client tries port @DENIED@: the rules drop it, the firewall answers ICMP admin-prohibited"
client 60 "nc -w 5 @DOM0@ @DENIED@ </dev/null"; r=$?
if [ $r != 0 ] && grep -q "No route to host" $cseen; then
  ok denied "refused at once: nc says 'No route to host' (ICMP admin-prohibited), not a timeout"
else
  bad denied "nc ended with status $r, no 'No route to host'"
fi

say "dom0 adds a rule allowing port @DENIED@; the firewall reloads it through its watch, no restart"
cmd "xenstore-write \$fw/0001 'action=accept proto=tcp dstports=@DENIED@-@DENIED@' \$fw ''"
t=$(up)
xenstore-write $base/0001 "action=accept proto=tcp dstports=@DENIED@-@DENIED@" $base ""
wait_for $fseen "rules of @IP@: 2 rules" 30
say "the client tries port @DENIED@ again"
j=0
while :; do
  j=$((j + 1))
  if client 60 "nc -w 5 @DOM0@ @DENIED@ </dev/null" && grep -q "the new rule let you in" $cseen; then
    ok rule-change "port @DENIED@ answers now, $(since $t) s after dom0 wrote the rule"
    break
  fi
  if [ $j -ge 3 ]; then
    bad rule-change "port @DENIED@ still refused after 3 tries"
    break
  fi
  sleep 1
done

sleep 1
echo "RIG stats $(grep 'firewall: stats:' $flog | tail -n 1 | sed 's/.*firewall: stats: //')"
echo "RIG demo-end $fails"
if [ -f /guest/interactive ]; then
  kill $(pidof tail) 2>/dev/null
  sleep 0.5
  echo "RIG demo-shell"
  read -r rows cols </guest/interactive && stty rows "$rows" cols "$cols" 2>/dev/null
  cat <<EOF

You are root in dom0 of the rig (Xen 4.17 in QEMU):
$(xl list)

  xl console @CLIENT@     the client's shell (Ctrl-] back to dom0); try
                          wget -q -O- http://@DOM0@/   or   nc @DOM0@ @DENIED@ </dev/null
  xl console firewall     the firewall's console (Ctrl-] back)
  The client @IP@'s rules live in xenstore (docs/firewall.md; \$fw is set): tried
  in order 0000, 0001, ..., the first match decides, the policy the rest; write the
  directory key \$fw last, it makes the firewall reload:
    xenstore-ls \$fw
    xenstore-write \$fw/0000 'action=drop proto=tcp dstports=@HTTP@-@HTTP@' \$fw ''
    xenstore-rm \$fw/0001; xenstore-write \$fw ''
    xenstore-write \$fw/policy accept \$fw ''
  Their console logs: /var/log/xen/console/guest-firewall.log, guest-@CLIENT@.log
  Leave: exit (powers the rig off), or Ctrl-A X (quits QEMU at once)

EOF
  export fw=$base
  cd /root 2>/dev/null || cd /
  exec setsid cttyhack sh
fi
exit $fails
"""


def script() -> str:
    """The dom0 script with this demo's names and addresses."""
    s = SCRIPT
    for k, v in {"CLIENT": CLIENT, "IP": test_firewall.CLIENT_IP, "ENC": test_firewall.CLIENT_ENC,
                 "DOM0": test_firewall.DOM0, "HTTP": str(HTTP), "DENIED": str(DENIED)}.items():
        s = s.replace(f"@{k}@", v)
    return s


#: The end marker that `client` in SCRIPT adds to a command, as echoed by
#: the client's shell, and the line it prints.
_MARKER_ECHO = re.compile(r'; echo "rc=\$\? end=\$\(\(\d+\)\)"')
_MARKER = re.compile(r"rc=\d+ end=\d+$")


class Presenter:
    """Turns the rig's serial lines into the demo's output: narration,
    the dom0 commands, the guests' consoles and each step's verdict;
    everything else (Xen's and dom0's boot) stays in the log, or is shown
    with `verbose`."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self.results: dict = {}
        self.stats = ""
        self.demo_end: Optional[int] = None
        self.dom0_ready: Optional[float] = None
        self.shell = False
        #: The last serial lines, shown when the demo fails.
        self.last: collections.deque = collections.deque(maxlen=30)

    def feed(self, t: float, line: str) -> Optional[str]:
        """What to print for one serial line seen `t` s after QEMU started
        (None: nothing)."""
        stamp = f"[{t:5.0f}s]"
        line = line.rstrip()
        if line.strip():
            self.last.append(line)
        if line.startswith("RIG dom0 ready"):
            self.dom0_ready = t
            return f"{stamp} dom0 is up"
        if line.startswith("RIG dom0 setup failed"):
            return f"{stamp} {line[4:]}"
        if line.startswith("RIG say "):
            return f"{stamp} {line[8:]}"
        if line.startswith("RIG cmd "):
            return f"{stamp}   dom0# {line[8:]}"
        m = re.match(r"RIG step-(ok|fail) (\S+) ?(.*)", line)
        if m:
            self.results[m.group(2)] = m.group(1) == "ok"
            return f"{stamp} {'ok' if m.group(1) == 'ok' else 'FAILED'}: {m.group(3)}"
        if line.startswith("RIG stats "):
            self.stats = line[len("RIG stats "):]
            return f"{stamp} the firewall's counters: {self.stats}" if self.stats else None
        m = re.match(r"RIG demo-end (\d+)", line)
        if m:
            self.demo_end = int(m.group(1))
            return None
        if line == "RIG demo-shell":
            self.shell = True
            return None
        if line.startswith("FW "):
            text = line[3:]
            if "firewall: stats:" in text and not self.verbose:
                return None
            return f"{stamp}     firewall | {text}" if text.strip() else None
        if line.startswith("CLIENT "):
            # the commands typed into its shell without their end marker
            text = _MARKER_ECHO.sub("", line[7:])
            if _MARKER.match(text) or not text.strip() or ("linuxdomu: dmesg:" in text and not self.verbose):
                return None
            return f"{stamp}     {CLIENT} | {text}"
        if line.startswith("XL "):
            return f"{stamp}       {line[3:]}"
        if self.verbose:
            return f"[{t:7.2f}] {line}"
        return None

    def failures(self, rc: Optional[int]) -> list:
        """What went wrong: steps that failed or never reported, the dom0
        script's status."""
        out = [f"step {s}: {'failed' if s in self.results else 'never reported'}"
               for s in STEPS if not self.results.get(s)]
        if rc is not None and rc != 0 and not out:
            out.append(f"the dom0 script ended with status {rc}")
        return out


def follow(proc: subprocess.Popen, start: float, timeout: float, presenter: Presenter, logf,
           until_shell: bool) -> tuple:
    """Reads the serial output, printing what the presenter makes of it,
    until the exit marker ("exit", rc, b""), the demo's shell ("shell",
    None, the bytes after its line), the time limit ("timeout") or QEMU's
    end ("eof")."""
    pending = b""
    fd = proc.stdout.fileno()
    while True:
        now = time.monotonic() - start
        if now >= timeout:
            return "timeout", None, b""
        ready, _, _ = select.select([fd], [], [], min(timeout - now, 1.0))
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if logf:
            logf.write(chunk)
            logf.flush()
        if not chunk:
            return "eof", None, b""
        pending += chunk
        now = time.monotonic() - start
        while b"\n" in pending:
            raw, pending = pending.split(b"\n", 1)
            text = xenrig._CONTROL.sub("", raw.decode("utf-8", "replace"))
            out = presenter.feed(now, text)
            if out is not None:
                print(out, flush=True)
            m = xenrig.EXIT_MARKER.search(text)
            if m:
                return "exit", int(m.group(1)), b""
            if until_shell and presenter.shell:
                return "shell", None, pending


def passthrough(proc: subprocess.Popen, first: bytes, logf) -> None:
    """The terminal on the rig's serial console (raw: keys go to dom0,
    QEMU's Ctrl-A escapes work) until dom0 powers off or QEMU ends."""
    import termios
    import tty

    out = sys.stdout.buffer
    out.write(first)
    out.flush()
    fd_in, fd_out = sys.stdin.fileno(), proc.stdout.fileno()
    saved = termios.tcgetattr(fd_in)
    termios.tcflush(fd_in, termios.TCIFLUSH)  # keys typed during the demo
    tty.setraw(fd_in)
    seen = first[-64:]
    try:
        while True:
            ready, _, _ = select.select([fd_out, fd_in], [], [])
            if fd_out in ready:
                chunk = os.read(fd_out, 65536)
                if not chunk:
                    return
                if logf:
                    logf.write(chunk)
                    logf.flush()
                out.write(chunk)
                out.flush()
                seen = (seen + chunk)[-64:]
                if xenrig.EXIT_MARKER.search(seen.decode("utf-8", "replace")):
                    return
            if fd_in in ready:
                keys = os.read(fd_in, 1024)
                if not keys:
                    return
                try:
                    proc.stdin.write(keys)
                    proc.stdin.flush()
                except BrokenPipeError:
                    return
    finally:
        termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
        print("\r", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(REPO / "target/images/amd64/firewall"))
    ap.add_argument("--timeout", type=float, default=900,
                    help="seconds for the demo (boot to its last step; default 900); "
                         "the shell after it has none")
    ap.add_argument("--log", type=Path, help="write the raw serial output here")
    ap.add_argument("--verbose", action="store_true", help="show every serial line")
    ap.add_argument("--no-shell", action="store_true", help="exit after the demo even on a terminal")
    args = ap.parse_args()
    image = Path(args.image)
    if not image.is_file():
        print(f"no image at {image}: run `make images`", file=sys.stderr)
        return 2
    interactive = sys.stdin.isatty() and not args.no_shell
    began = time.monotonic()
    print("make run: moat's firewall VM on real Xen. Booting Xen 4.17 and a Debian dom0 in QEMU "
          "(software emulation: the demo takes about four minutes on two cores; the first run "
          "also fetches Debian's packages into the rig cache)", flush=True)
    domu = linux_domu.build()
    guests = [
        (image, "firewall"),
        (REPO / "configs/firewall-pvh.cfg", "firewall-pvh.cfg"),
        (REPO / "configs/firewall-client-pv.cfg", "firewall-client-pv.cfg"),
        (domu.kernel, "vmlinuz"),
        (domu.ramdisk, "linux-domu.cpio.gz"),
    ]
    files = xenrig._guest_files(guests, script())
    if interactive:
        size = shutil.get_terminal_size((80, 24))
        files.append(("interactive", f"{size.lines} {size.columns}\n".encode(), False))
    presenter = Presenter(args.verbose)
    xenrig.exit_on_sigterm()
    logf = open(args.log, "wb") if args.log else None
    how, rc = "eof", None
    try:
        with tempfile.TemporaryDirectory(prefix="moat-run-") as tmp:
            cmd = xenrig._prepare("amd64", files, Path(tmp))
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    preexec_fn=xenrig._die_with_parent)
            start = time.monotonic()
            try:
                how, rc, rest = follow(proc, start, args.timeout, presenter, logf, interactive)
                took = time.monotonic() - began
                failures = presenter.failures(rc if how == "exit" else None)
                if how in ("timeout", "eof"):
                    failures.append("the rig's time limit passed" if how == "timeout"
                                    else f"QEMU ended (status {proc.poll()}) before the demo did")
                if failures:
                    for f in failures:
                        print(f"make run: FAILED: {f}", flush=True)
                    if not args.verbose and presenter.demo_end is None:
                        print("make run: the last lines of the serial console"
                              + (f" (all of them in {args.log}):" if args.log else ":"))
                        print("\n".join("  " + l for l in presenter.last), flush=True)
                print(f"make run: demo {'passed' if not failures else 'FAILED'}: "
                      f"{sum(presenter.results.values())} of {len(STEPS)} steps ok, "
                      f"{took:.0f} s from the start", flush=True)
                if how == "shell":
                    passthrough(proc, rest, logf)
                    return 0 if not failures else 1
            finally:
                xenrig._stop(proc)
    finally:
        if logf:
            logf.close()
    if how == "timeout":
        return xenrig.RC_TIMEOUT
    if how == "eof":
        return xenrig.RC_RIG_FAILED
    return 0 if not presenter.failures(rc) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C during the demo (QEMU is stopped by then)
        print("\nmake run: interrupted", file=sys.stderr)
        sys.exit(130)
