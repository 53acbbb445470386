#!/usr/bin/env python3
"""Host-only tests of rig/test_qubes.py (no QEMU, about 1 s): the QubesDB
entries it feeds dom0's daemon pass the daemon's path and value checks,
qubesd's reload sequence has its shape, the generated dom0 script parses
under the rig's busybox sh (or /bin/sh without the rig cache), and the
verdict on the qrexec calls fails when it should.

usage: python3 rig/test_qubes_unit.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_firewall  # noqa: E402
import test_qubes  # noqa: E402
import xenrig  # noqa: E402

#: qubesdb's verify_path plus qubesdb_insert: an entry path.
ENTRY = re.compile(r"^/[A-Za-z0-9_/.:@-]{0,62}$")


def call_line(name: str, code: str, stdout: str = "", terminated: str = "true") -> str:
    return (f"QRX qrexec: call {name} exit {code} stdout \"{stdout}\" stderr \"\" streams-ended true "
            f"terminated {terminated} vchan-closed true in 0.50 s (proxy exit status: 0)")


GOOD = [call_line("wfs", "0"), call_line("setdate", "0"),
        call_line("getdate", "0", f"{test_qubes.DATE}\\n"), call_line("vmshell", "127")]


class Entries(unittest.TestCase):
    def test_keys_are_entries_the_daemon_accepts(self):
        lines = test_qubes.keys(b"\xff" * 64).splitlines()
        self.assertEqual(len(lines), 26)
        for line in lines:
            path, _, value = line.partition(" ")
            self.assertRegex(path, ENTRY)
            self.assertFalse(path.endswith("/"))
            self.assertLess(len(value), 3072)
            self.assertNotIn("\0", value)
        self.assertIn("/qubes-ip 10.99.0.10", lines)
        self.assertIn("/connected-ips ", lines)

    def test_reload_is_qubesd_s_sequence(self):
        lines = test_qubes.reload_lines("10.137.0.10", "drop", test_qubes.RULES_A2).splitlines()
        self.assertEqual(lines[0], "rm /qubes-firewall/10.137.0.10/")
        self.assertEqual(lines[1], "write /qubes-firewall/10.137.0.10/policy drop")
        self.assertEqual(lines[-1], "write /qubes-firewall/10.137.0.10 ")
        self.assertEqual(lines[-2], "write /qubes-firewall/10.137.0.10/0004 action=accept proto=tcp dstports=8081-8081")
        for line in lines:
            self.assertRegex(line.split(" ")[1], ENTRY.pattern[:-1] + "/?$")


class Script(unittest.TestCase):
    def test_the_dom0_script_parses(self):
        script = test_firewall.setup() + test_qubes.SCRIPT.replace("@FW@", test_qubes.FW) \
            .replace("@TYPE@", "pv").replace("@DATE@", test_qubes.DATE)
        self.assertEqual(re.findall(r"@[A-Z0-9_]+@", script), [], "every placeholder filled")
        busybox = xenrig.cache_dir("amd64") / "dom0-root" / "bin" / "busybox"
        shell = [str(busybox), "sh"] if busybox.is_file() else ["/bin/sh"]
        with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
            f.write(script)
            f.flush()
            r = subprocess.run(shell + ["-n", f.name], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)


class Verdict(unittest.TestCase):
    def test_good_calls_pass(self):
        self.assertEqual(test_qubes.check_calls(GOOD), (5, []))

    def test_bad_calls_fail(self):
        for i, bad in [(3, call_line("vmshell", "0")),
                       (0, call_line("wfs", "0", terminated="false")),
                       (2, call_line("getdate", "0", "2026-12-07T00:00:00+00:00\\n"))]:
            lines = list(GOOD)
            lines[i] = bad
            passed, failures = test_qubes.check_calls(lines)
            self.assertEqual((passed, len(failures)), (4, 1), (bad, failures))
        passed, failures = test_qubes.check_calls(GOOD[:2])
        self.assertEqual(len(failures), 3)


if __name__ == "__main__":
    unittest.main()
