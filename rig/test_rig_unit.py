#!/usr/bin/env python3
"""Host-only unit tests of the rig's pure parts (no QEMU): the per-run
initramfs writer, guest argument parsing, and test_selftest's assertions on
synthetic serial output.

usage: python3 rig/test_rig_unit.py [-v]
"""

import gzip
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
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
    lines += [f"selftest: {c}: ok" for c in checks]
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
        self.assertIn("selftest: executor: ok", text)
        self.assertIn("summary", text)
        self.assertIn("idle CPU", text)

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


if __name__ == "__main__":
    unittest.main()
