#!/usr/bin/env python3
"""Host-only unit tests of the rig (no QEMU): the per-run initramfs writer,
guest argument parsing, test_selftest's assertions on synthetic serial
output, rig/dom0/xlcase.sh run against a fake xl, and rig/stress.py's
parsing (with rig/dom0/fpucheck.c run on the host CPU).

usage: python3 rig/test_rig_unit.py [-v]
"""

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stress  # noqa: E402
import test_selftest  # noqa: E402
import xenrig  # noqa: E402


class RunInitramfsTest(unittest.TestCase):
    """The cpio archive must be one Linux and GNU cpio both read."""

    @unittest.skipUnless(shutil.which("cpio"), "needs GNU cpio")
    def test_gnu_cpio_extracts_the_files_with_their_modes(self):
        archive = xenrig.build_run_initramfs(
            [("run.sh", b"echo hi\n", True), ("cfg", b"odd-length", False)]
        )
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                ["cpio", "-id", "--quiet"], input=gzip.decompress(archive), cwd=tmp, check=True
            )
            run = Path(tmp, "guest/run.sh")
            cfg = Path(tmp, "guest/cfg")
            self.assertEqual(run.read_bytes(), b"echo hi\n")
            self.assertEqual(cfg.read_bytes(), b"odd-length")
            self.assertTrue(run.stat().st_mode & 0o111)
            self.assertFalse(cfg.stat().st_mode & 0o111)

    def test_entries_are_four_byte_aligned(self):
        raw = gzip.decompress(xenrig.build_run_initramfs([("a", b"123", False)]))
        self.assertEqual(len(raw) % 4, 0)
        self.assertTrue(raw.startswith(b"070701"))
        self.assertIn(b"TRAILER!!!\0", raw)

    def test_rejects_names_with_slashes(self):
        with self.assertRaises(ValueError):
            xenrig.build_run_initramfs([("../etc/passwd", b"", False)])


class GuestArgTest(unittest.TestCase):
    def test_name_defaults_to_base_name(self):
        self.assertEqual(xenrig.parse_guest_arg("a/b/c.cfg"), (Path("a/b/c.cfg"), "c.cfg"))

    def test_explicit_name(self):
        self.assertEqual(xenrig.parse_guest_arg("/p/q:selftest"), (Path("/p/q"), "selftest"))


class ControlCharsTest(unittest.TestCase):
    def test_terminal_resets_and_escapes_are_removed(self):
        self.assertEqual(xenrig._CONTROL.sub("", "\x1bc(XEN) a\x1b[2Jb\r"), "(XEN) ab")


def synthetic_run(name, checks, summary, idle=("0.0", "3.00"), end="gone", reason=0):
    """Serial lines of one normal selftest run, as the rig would see them."""
    lines = [f"RIG create {name}", "Parsing config from /guest/x.cfg", "moat: hello"]
    lines += [f"selftest: {c}: ok" + (" (aead=avx2 sse=on)" if c == "simd" else "") for c in checks]
    lines += [f"RIG watch-fired {name}", summary]
    if idle:
        lines.append(f"RIG idle-cpu {name} {idle[0]} over {idle[1]}")
    lines += [
        f"RIG end {name} {end}",
        f"RIG xl-log {name}: Domain 1 has shut down, reason code {reason} 0x{reason}",
        f"RIG listed {name} no",
    ]
    return [(float(i), l) for i, l in enumerate(lines)]


class SelftestAssertionsTest(unittest.TestCase):
    """test_selftest must pass a good run and catch each kind of bad one."""

    N = len(test_selftest.EXPECTED_CHECKS)

    def tally(self, lines):
        t = test_selftest.Tally("pv")
        test_selftest.assert_normal(t, lines, "selftest-pv")
        return t

    def test_good_run_passes(self):
        t = self.tally(synthetic_run("selftest-pv", test_selftest.EXPECTED_CHECKS,
                                     f"selftest: summary: {self.N} passed, 0 failed"))
        self.assertEqual(t.failures, [])
        self.assertGreater(t.passed, self.N)

    def test_missing_check_wrong_count_and_busy_idle_fail(self):
        t = self.tally(synthetic_run("selftest-pv", test_selftest.EXPECTED_CHECKS[:-1],
                                     f"selftest: summary: {self.N - 1} passed, 0 failed",
                                     idle=("0.9", "3.00")))
        text = "\n".join(t.failures)
        self.assertIn(f"selftest: {test_selftest.EXPECTED_CHECKS[-1]}: ok", text)
        self.assertIn("summary", text)
        self.assertIn("idle CPU", text)

    def test_amd64_aead_without_simd_route_fails(self):
        lines = synthetic_run("selftest-pv", test_selftest.EXPECTED_CHECKS,
                              f"selftest: summary: {self.N} passed, 0 failed")
        lines = [(t, l.replace("aead=avx2", "aead=portable")) for t, l in lines]
        self.assertTrue(any("no SIMD route" in f for f in self.tally(lines).failures))

    def test_arm32_with_neon_must_take_the_neon_route(self):
        lines = synthetic_run("selftest-arm32", test_selftest.EXPECTED_CHECKS,
                              f"selftest: summary: {self.N} passed, 0 failed")
        lines = [(t, l.replace("aead=avx2 sse=on", "aead=portable neon=yes")
                  .replace("selftest-pv", "selftest-arm32")) for t, l in lines]
        t = test_selftest.Tally("arm32")
        test_selftest.assert_normal(t, lines, "selftest-arm32")
        self.assertTrue(any("NEON but not the NEON route" in f for f in t.failures), t.failures)

    def test_out_of_order_checks_fail(self):
        checks = list(reversed(test_selftest.EXPECTED_CHECKS))
        t = self.tally(synthetic_run("selftest-pv", checks,
                                     f"selftest: summary: {self.N} passed, 0 failed"))
        self.assertTrue(any("order" in f for f in t.failures))

    def test_fail_line_and_crash_fail(self):
        lines = synthetic_run("selftest-pv", test_selftest.EXPECTED_CHECKS,
                              f"selftest: summary: {self.N} passed, 0 failed", end="crashed", reason=3)
        lines.insert(3, (2.5, "selftest: grant-copy: FAIL copied bytes differ"))
        text = "\n".join(self.tally(lines).failures)
        self.assertIn("FAIL lines", text)
        self.assertIn("did not go away", text)
        self.assertIn("want [0]", text)

    def test_reason_from_xl_list_when_xl_log_is_missing(self):
        lines = synthetic_run("selftest-pv", test_selftest.EXPECTED_CHECKS,
                              f"selftest: summary: {self.N} passed, 0 failed", end="shutdown-unreaped")
        lines = [(t, l) for t, l in lines if "xl-log" not in l]
        lines.insert(-2, (99.0, "RIG shutdown selftest-pv reason 0"))
        self.assertEqual(self.tally(lines).failures, [])

    def test_segments_stop_at_the_next_guest(self):
        lines = synthetic_run("selftest-pv", ["cmdline"], "x") + synthetic_run("selftest-pvh", ["frames"], "y")
        seg = [l for _, l in test_selftest.segment(lines, "selftest-pv")]
        self.assertIn("selftest: cmdline: ok", seg)
        self.assertNotIn("selftest: frames: ok", seg)

    def test_first_guest_line_skips_dom0_lines(self):
        lines = synthetic_run("selftest-pv", ["cmdline"], "x")
        self.assertEqual(test_selftest.first_guest_line(lines)[1], "moat: hello")

    def test_panic_and_reboot_cases(self):
        panic = [(0.0, "RIG create p"), (1.0, "panicked at src/x.rs:1:1:"),
                 (2.0, "RIG end p crashed"), (3.0, "RIG listed p no")]
        t = test_selftest.Tally("pv")
        test_selftest.assert_panic(t, panic, "p")
        self.assertEqual(t.failures, [])
        reboot = [(0.0, "RIG create r"), (1.0, "RIG xl-log r: Domain 3 has shut down, reason code 0 0x0"),
                  (2.0, "RIG listed r no")]
        t = test_selftest.Tally("pv")
        test_selftest.assert_reboot(t, reboot, "r")
        self.assertEqual(len(t.failures), 1)

    def test_fault_runs(self):
        """A fault run passes with its report and a crash; fails without the
        report, with the probe returning (FAIL), or without a crash."""
        def run(gtype, probe, report, end="crashed", reason=3):
            name = test_selftest.case_names(gtype)[probe]
            lines = [f"RIG create {name}", f"selftest: fault: {probe}: provoking", report,
                     f"RIG shutdown {name} reason {reason}", f"RIG end {name} {end}", f"RIG listed {name} no"]
            t = test_selftest.Tally(gtype)
            test_selftest.assert_fault(t, [(float(i), l) for i, l in enumerate(lines)], gtype, probe)
            return t.failures
        self.assertEqual(run("pvh", "write-text",
                             "moat: fatal: page fault: W^X: write to read-only text at 0x10a000 (rip 0x10a000)"), [])
        self.assertEqual(run("pvh", "write-text", "moat: fatal: page fault: W^X: write to read-only text or "
                             "rodata (CR2 gave no address) (rip 0x1269e7, error code 0x3)"), [])
        # Only PVH may leave the address out (the rig's CR2 finding).
        self.assertEqual(len(run("pv", "write-text", "moat: fatal: page fault: W^X: write to read-only text or "
                                 "rodata (CR2 gave no address) (rip 0x1269e7, error code 0x3)")), 1)
        self.assertEqual(run("arm32", "exec-data",
                             "moat arm32: fatal: prefetch abort: W^X: execute from non-executable data at 0x4003c008"),
                         [])
        self.assertEqual(run("pvh", "stack-overflow", "moat: fatal: double fault: stack overflow: the boot "
                             "stack ran into its guard page at 0x146ff8 (rip 0x1)"), [])
        self.assertEqual(run("pv", "stack-overflow",
                             "(XEN) domain_crash_sync called from entry.S: fault at ffff82d04033e790"), [])
        # PV's stack overflow is Xen's report, not a guest line.
        self.assertEqual(len(run("pv", "stack-overflow", "moat: fatal: stack overflow: the boot stack ran into "
                                 "its guard page at 0x146ff8")), 1)
        self.assertEqual(len(run("pv", "exec-data", "moat: fatal: page fault: read at 0x0")), 1)
        self.assertEqual(len(run("pv", "write-text", "selftest: fault: FAIL (write-text did not fault)")), 2)
        # No crash: the domain went away by itself.
        self.assertEqual(len(run("pvh", "exec-data", "W^X: execute from non-executable data at 0x1", end="gone",
                                 reason=0)), 1)


# A stand-in for xl and xenstore-read/-write, so rig/dom0/xlcase.sh runs on
# the host. State lives in files under $FAKE_XEN; the guest's behaviour is
# $FAKE_XEN/guest.sh, run by `xl create -c` as if its console were attached.
FAKE_XL = r"""#!/bin/sh
F=$FAKE_XEN
cmd=$1; shift
case "$cmd" in
  create)
    [ "$1" = -c ] && shift
    cfg=$1; shift
    name=$(echo "$1" | sed 's/^name="\(.*\)"$/\1/'); shift
    echo "$*" >"$F/overrides"
    echo "Parsing config from $cfg"
    echo "$name" >"$F/name"; echo r----- >"$F/state"; echo 0.1 >"$F/cpu"; echo - >"$F/reason"
    exec sh "$F/guest.sh" "$name" ;;
  list)
    [ "$1" = -v ] && shift
    { [ -f "$F/state" ] && [ "$1" = "$(cat "$F/name")" ]; } || exit 1
    echo "Name ID Mem VCPUs State Time(s) UUID Reason-Code Security-Label"
    echo "$1 1 32 1 $(cat "$F/state") $(cat "$F/cpu") 0000-01 $(cat "$F/reason") -" ;;
  destroy)
    rm -f "$F/state"; echo destroy >>"$F/events" ;;
  *) exit 2 ;;
esac
"""
FAKE_XS_READ = '#!/bin/sh\ncat "$FAKE_XEN/xs/$(basename "$1")" 2>/dev/null\n'
FAKE_XS_WRITE = '#!/bin/sh\necho "$2" >"$FAKE_XEN/xs/$(basename "$1")"\n'

# The fake guest: prints the checks, does the watch handshake through the
# fake xenstore, idles (busy or not), then shuts down with $REASON; with
# MONITOR=1 a fake xl monitor reaps it and logs the reason as xl does.
FAKE_GUEST = r"""F=$FAKE_XEN
con="$F/log/console/guest-$1.log"
say() { echo "$1"; echo "$1" >>"$con"; }
say "moat: hello"
for c in $CHECKS; do
  if [ "$c" = simd ]; then say "selftest: $c: ok (aead=avx2 sse=on)"; else say "selftest: $c: ok"; fi
done
echo 1 >"$F/xs/watch-ready"
i=0
while [ ! -f "$F/xs/watch" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
say "selftest: xenstore-watch saw $(cat "$F/xs/watch" 2>/dev/null)"
say "selftest: summary: $N passed, 0 failed"
say "selftest: idle: begin 2"
i=0
while [ $i -lt 10 ]; do
  sleep 0.2
  [ "$BUSY" = 1 ] && awk '{ print $1 + 0.2 }' "$F/cpu" >"$F/cpu.new" && mv "$F/cpu.new" "$F/cpu"
  i=$((i + 1))
done
say "selftest: idle: end"
[ "$REASON" = 3 ] && say "panicked at src/main.rs:1:1:"
echo "$REASON" >"$F/reason"
if [ "$REASON" = 3 ]; then echo --c--- >"$F/state"; else echo ---s-- >"$F/state"; fi
if [ "$MONITOR" = 1 ] && [ "$REASON" != 3 ]; then
  sleep 0.3
  rm -f "$F/state"
  echo "Domain 1 has shut down, reason code $REASON 0x$REASON" >>"$F/log/xl-$1.log"
fi
"""


class XlcaseOnHostTest(unittest.TestCase):
    """rig/dom0/xlcase.sh against a fake xl: the handshake, the idle
    measurement and the ways a domain can end, in seconds instead of a
    two-minute boot."""

    def run_case(self, name, reason=0, busy=False, monitor=True):
        with tempfile.TemporaryDirectory() as tmp:
            fake = Path(tmp)
            (fake / "bin").mkdir()
            (fake / "xs").mkdir()
            (fake / "log/console").mkdir(parents=True)
            for tool, text in (("xl", FAKE_XL), ("xenstore-read", FAKE_XS_READ),
                               ("xenstore-write", FAKE_XS_WRITE)):
                (fake / "bin" / tool).write_text(text)
                (fake / "bin" / tool).chmod(0o755)
            (fake / "guest.sh").write_text(FAKE_GUEST)
            env = dict(os.environ)
            env.update(
                PATH=f"{fake / 'bin'}:{env['PATH']}", FAKE_XEN=str(fake), TMPDIR=str(fake),
                XLCASE_LOG_DIR=str(fake / "log"), XLCASE_TTY="/dev/null", XLCASE_REAP_SECONDS="1",
                CHECKS=" ".join(test_selftest.EXPECTED_CHECKS), N=str(len(test_selftest.EXPECTED_CHECKS)),
                REASON=str(reason), BUSY="1" if busy else "0", MONITOR="1" if monitor else "0",
            )
            out = subprocess.run(
                ["sh", str(Path(xenrig.RIG_DIR, "dom0/xlcase.sh")), name, "/guest/x.cfg", "60",
                 "extra=\"selftest.end=x\""],
                env=env, capture_output=True, text=True, timeout=90,
            )
            events = (fake / "events").read_text() if (fake / "events").exists() else ""
            overrides = (fake / "overrides").read_text()
        lines = [(float(i), l) for i, l in enumerate(out.stdout.splitlines())]
        return lines, events, overrides

    def test_normal_run_passes_the_selftest_assertions(self):
        lines, events, overrides = self.run_case("selftest-pv")
        texts = [l for _, l in lines]
        self.assertIn("selftest: xenstore-watch saw fired-by-dom0", texts)
        self.assertIn('extra="selftest.end=x"', overrides)
        self.assertEqual(events, "")
        t = test_selftest.Tally("pv")
        test_selftest.assert_normal(t, lines, "selftest-pv")
        self.assertEqual(t.failures, [])

    def test_busy_idle_is_measured_and_fails(self):
        lines, _, _ = self.run_case("selftest-pv", busy=True)
        idle = [l for _, l in lines if l.startswith("RIG idle-cpu selftest-pv ")]
        self.assertEqual(len(idle), 1)
        self.assertGreater(float(idle[0].split()[3]), 0.5)
        t = test_selftest.Tally("pv")
        test_selftest.assert_normal(t, lines, "selftest-pv")
        self.assertTrue(any("idle CPU" in f for f in t.failures), t.failures)

    def test_dead_monitor_is_reaped_by_the_rig(self):
        lines, events, _ = self.run_case("selftest-pv", monitor=False)
        texts = [l for _, l in lines]
        self.assertIn("RIG end selftest-pv shutdown-unreaped", texts)
        self.assertIn("RIG shutdown selftest-pv reason 0", texts)
        self.assertIn("destroy", events)
        t = test_selftest.Tally("pv")
        test_selftest.assert_normal(t, lines, "selftest-pv")
        self.assertEqual(t.failures, [])

    def test_crash_is_seen_and_destroyed(self):
        lines, events, _ = self.run_case("selftest-pv-panic", reason=3)
        texts = [l for _, l in lines]
        self.assertIn("RIG end selftest-pv-panic crashed", texts)
        self.assertIn("destroy", events)
        t = test_selftest.Tally("pv")
        test_selftest.assert_panic(t, lines, "selftest-pv-panic")
        self.assertEqual(t.failures, [])

    def test_reboot_reason_reaches_the_assertion(self):
        lines, _, _ = self.run_case("selftest-pv-reboot", reason=1)
        t = test_selftest.Tally("pv")
        test_selftest.assert_reboot(t, lines, "selftest-pv-reboot")
        self.assertEqual(t.failures, [])


class ArmDeviceTree(unittest.TestCase):
    """The arm32 rig's module nodes: what Xen's multiboot DT binding needs."""

    def test_module_nodes_name_addresses_and_sizes(self):
        cmds = xenrig.arm_module_nodes(0x545000, 0x44e1a9)
        self.assertEqual(len(cmds), 4)
        self.assertEqual(cmds[0][3], "/chosen/module@42000000")
        self.assertEqual(cmds[0][5:], ["multiboot,kernel", "multiboot,module"])
        self.assertEqual(cmds[1][4:], ["0", "42000000", "0", "545000"])
        self.assertEqual(cmds[2][5:], ["multiboot,ramdisk", "multiboot,module"])
        self.assertEqual(cmds[3][4:], ["0", "44000000", "0", "44e1a9"])

    def test_a_kernel_overlapping_the_initramfs_is_refused(self):
        with self.assertRaises(ValueError):
            xenrig.arm_module_nodes(0x2000001, 100)

    @unittest.skipUnless(shutil.which("fdtput") and shutil.which("fdtget")
                         and shutil.which("dtc"), "device-tree-compiler not installed")
    def test_fdtput_accepts_the_nodes(self):
        with tempfile.TemporaryDirectory() as tmp:
            src, dtb = Path(tmp) / "t.dts", Path(tmp) / "t.dtb"
            src.write_text("/dts-v1/; / { chosen { #address-cells = <2>; #size-cells = <2>; }; };")
            subprocess.run(["dtc", "-I", "dts", "-O", "dtb", "-o", str(dtb), str(src)], check=True)
            for args in xenrig.arm_module_nodes(0x1000, 0x2000):
                subprocess.run(["fdtput", str(dtb)] + args, check=True)
            reg = subprocess.run(["fdtget", "-t", "x", str(dtb), "/chosen/module@44000000", "reg"],
                                 check=True, capture_output=True, text=True).stdout.split()
            self.assertEqual(reg, ["0", "44000000", "0", "2000"])


class StressParsingTest(unittest.TestCase):
    """rig/stress.py's reading of a boot's serial lines, its verdicts and
    plans, and the answers dom0's loops check against."""

    LAZY = [
        (0.5, "(XEN) Command line: console=com1 spec-ctrl=eager-fpu spec-ctrl=no-eager-fpu"),
        (0.6, "(XEN) CPU Vendor: AMD, Family 6 (0x6), Model 6 (0x6), Stepping 3 (raw 00000663)"),
        (0.9, "(XEN)   Support for PV VMs: None"),
        (9.0, "[    1.49] x86/fpu: Enabled xstate features 0x7, context size is 832 bytes, using 'standard' format."),
        (27.8, "RIG dom0 ready: 14.1 s; running /guest/run.sh"),
        (90.0, "STRESS-FAULT signal awk rc=139 sig=11 awk int"),
        (90.1, "STRESS-FAULT dmesg [   40.42] exe[180]: segfault at 0 ip 00000000004a4d02"),
        (90.2, "STRESS-CODE [   40.42] Code: 64 48 8b 00 <48> 8b 00"),
        (90.3, "STRESS-RESULT iters=13 create=3 awk=2 sum=2 xs=3 xllist=3 fpuruns=6 fpurounds=900 "
               "fpubad=4 wrong=0 signal=1 xlabort=0 dmesg=1 loopdied=0 fpu=2 timeout=0"),
    ]

    def test_lazy_boot_with_faults(self):
        rec = stress.parse_boot(self.LAZY)
        self.assertEqual(rec["mode_seen"], "lazy")
        self.assertTrue(rec["xen_cmdline"].endswith("spec-ctrl=no-eager-fpu"))
        self.assertTrue(rec["cpu_vendor"].startswith("AMD"))
        self.assertTrue(rec["dom0_fpu"].startswith("Enabled xstate features 0x7"))
        self.assertEqual(rec["dom0_ready_s"], 27.8)
        self.assertEqual(rec["result"]["signal"], 1)
        self.assertEqual(rec["result"]["fpubad"], 4)
        self.assertEqual(rec["result"]["fpurounds"], 900)
        self.assertEqual(len(rec["faults"]), 2)
        self.assertEqual(rec["code"], ["[   40.42] Code: 64 48 8b 00 <48> 8b 00"])
        rec.update(rc=0, mode="lazy")
        self.assertEqual(stress.classify(rec), "FAULT")

    def test_eager_boot_clean_and_missing_result(self):
        lines = [(0.9, "(XEN)   Support for PV VMs: MSR_SPEC_CTRL EAGER_FPU"),
                 (20.0, "RIG dom0 ready: 13 s"),
                 (80.0, "STRESS-RESULT iters=11 wrong=0 signal=0 xlabort=0 dmesg=0 loopdied=0 "
                        "fpu=0 timeout=2")]
        rec = stress.parse_boot(lines)
        rec["rc"] = 0
        self.assertEqual(rec["mode_seen"], "eager")
        self.assertEqual(stress.classify(rec), "clean")  # timeouts alone are no fault
        died = stress.parse_boot(lines[:2])
        died["rc"] = 0
        self.assertEqual(stress.classify(died), "FAULT")  # the script never finished
        rig = stress.parse_boot(lines[:1])
        rig["rc"] = xenrig.RC_RIG_FAILED
        self.assertEqual(stress.classify(rig), "RIG")

    def test_plans(self):
        self.assertEqual(stress.plan("both", 2, 2), [["lazy", "eager"], ["lazy", "eager"]])
        self.assertEqual(stress.plan("both", 2, 1), [["lazy"], ["eager"], ["eager"], ["lazy"]])
        self.assertEqual(stress.plan("eager", 3, 2), [["eager", "eager"], ["eager"]])

    def test_dom0_script(self):
        self.assertEqual(stress.dom0_script(60, "selftest", False, ""),
                         "STRESS_GUEST=selftest sh /guest/stress.sh 60\n")
        self.assertEqual(stress.dom0_script(30, "none", True, "fpu awk"),
                         "STRESS_PIN=1 STRESS_LOOPS='fpu awk' sh /guest/stress.sh 30\n")

    def test_expected_answers_match_busybox(self):
        """The host's answers are what the rig's busybox computes (when the
        rig cache is there to run it)."""
        busybox = xenrig.cache_dir("amd64") / "dom0-root" / "bin" / "busybox"
        if not busybox.is_file():
            self.skipTest("no rig cache")
        with tempfile.TemporaryDirectory() as tmp:
            stress.make_inputs(Path(tmp))
            env = dict(l.split("=", 1) for l in Path(tmp, "expected.env").read_text().split())

            def bb(*args):
                return subprocess.run([str(busybox), *args], capture_output=True, text=True,
                                      check=True, cwd=tmp).stdout.split()[0]

            self.assertEqual(bb("awk", "BEGIN { s = 0; for (i = 1; i <= 20000; i++) s += i * i; print s }"),
                             env["AWK_INT"])
            self.assertEqual(bb("awk", 'BEGIN { t = 0; for (i = 1; i <= 20000; i++) t += 1 / i; '
                                       'printf "%.17g\\n", t }'), env["AWK_FLOAT"])
            self.assertEqual(bb("crc32", "blob"), env["CRC32"])
            self.assertEqual(bb("md5sum", "blob"), env["MD5"])
            self.assertEqual(bb("sha256sum", "blob"), env["SHA256"])

    @unittest.skipUnless(shutil.which("gcc"), "needs gcc")
    def test_fpucheck_is_clean_on_the_host_cpu(self):
        with tempfile.TemporaryDirectory() as tmp:
            exe, why = stress.build_fpucheck(Path(tmp))
            self.assertIsNotNone(exe, why)
            for mode in ("xrstor", "yield"):
                out = subprocess.run([str(exe), mode, "0.3"], capture_output=True, text=True).stdout
                self.assertRegex(out, rf"FPUCHECK mode={mode} .* bad=0\n")


class RigSlotsTest(unittest.TestCase):
    """xenrig's machine-wide rig slots: a second taker waits until the
    first lets go; 0 slots means no limit."""

    def test_a_second_run_waits_for_the_slot(self):
        with tempfile.TemporaryDirectory() as d:
            env = dict(os.environ, MOAT_RIG_SLOTS="1", MOAT_RIG_SLOTS_DIR=d)
            old = {k: os.environ.get(k) for k in ("MOAT_RIG_SLOTS", "MOAT_RIG_SLOTS_DIR")}
            os.environ.update(MOAT_RIG_SLOTS="1", MOAT_RIG_SLOTS_DIR=d)
            try:
                xenrig.RIG_SLOTS_DIR = Path(d)
                held = xenrig.acquire_rig_slot(echo=False)
                child = subprocess.Popen(
                    [sys.executable, "-c", "import time, xenrig; t = time.monotonic(); "
                     "xenrig.acquire_rig_slot(echo=False); print(round(time.monotonic() - t, 1))"],
                    cwd=str(Path(__file__).resolve().parent), env=env, stdout=subprocess.PIPE, text=True)
                time.sleep(3)
                self.assertIsNone(child.poll(), "the second taker did not wait")
                held.close()
                out, _ = child.communicate(timeout=30)
                self.assertGreaterEqual(float(out), 2.5)
                os.environ["MOAT_RIG_SLOTS"] = "0"
                self.assertIsNone(xenrig.acquire_rig_slot(echo=False))
            finally:
                for k, v in old.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
                xenrig.RIG_SLOTS_DIR = Path(os.environ.get("MOAT_RIG_SLOTS_DIR", "/tmp/moat-rig-slots"))


if __name__ == "__main__":
    unittest.main()
