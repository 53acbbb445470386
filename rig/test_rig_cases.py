#!/usr/bin/env python3
"""Host-only tests of the rig's per-case time limits (no QEMU): the case
library rig/dom0/case.sh run by the host's shell, and rig/xenrig.py's run
loop over a fake "rig" (a shell running the generated dom0 script in a
directory standing in for /guest) that hangs and wedges on purpose.

What must hold (docs/testing.md, "Cases"): a case that passes its limit is
killed, fails with its reason and the script goes on with the next case; a
dom0 so stuck that even its watchdog cannot report is detected by the host
(no case-end within limit + grace), the rig is booted again with the cases
already run skipped, and the run ends with every case accounted for.

usage: python3 rig/test_rig_cases.py [-v]
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xenrig  # noqa: E402

SHELLS = [s for s in ("bash", "dash", "busybox") if shutil.which(s)]


def fake_booter(tmp: Path, shell: str = "bash"):
    """A boot function for xenrig._run_boots: each boot writes `files` to
    a fresh directory (the rig's /guest) and runs run.sh there in its own
    session, printing the exit marker as dom0's /init does."""
    boots = []

    def boot(files):
        guest = tmp / f"boot{len(boots) + 1}"
        guest.mkdir()
        for name, data, _executable in files:
            (guest / name).write_bytes(data)
        env = dict(os.environ, RIG_GUEST=str(guest), RIG_CASE_STATE=str(guest / "case-ok"))
        cmd = [shell, "-c", f'{shell} "$RIG_GUEST/run.sh"; echo MOAT-RIG-EXIT $?']
        if shell == "busybox":
            cmd = ["busybox", "sh", "-c", 'busybox sh "$RIG_GUEST/run.sh"; echo MOAT-RIG-EXIT $?']
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        boots.append(guest)

        def stop():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            proc.stdout.close()
        return proc, stop
    return boot, boots


def run(cases, tmp, grace=3.0, timeout=60.0, shell="bash", max_reboots=2):
    files = [("case.sh", (xenrig.RIG_DIR / "dom0/case.sh").read_bytes(), False),
             ("run.sh", xenrig.cases_script(cases, header=["set -u"], footer=["echo footer-ran"]).encode(), True)]
    boot, boots = fake_booter(tmp, shell)
    result = xenrig._run_boots(boot, files, timeout, None, False, grace, max_reboots)
    return result, boots


class CaseLimitTest(unittest.TestCase):
    """rig_case in dom0: limits, kill, go on."""

    def test_a_hung_case_fails_with_its_reason_and_the_next_runs(self):
        for shell in SHELLS:
            with self.subTest(shell=shell), tempfile.TemporaryDirectory() as tmp:
                started = time.monotonic()
                result, boots = run([
                    xenrig.Case("first", 20, ["echo first-ran"]),
                    # A child that ignores SIGTERM and a grandchild: the whole
                    # tree must go.
                    xenrig.Case("hangs", 2, ["trap '' TERM", "sleep 1000 &", "sleep 1000"]),
                    xenrig.Case("after-hang", 20, ["echo third-ran"]),
                    xenrig.Case("needs-hangs", 20, ["echo must-not-run"], after="hangs"),
                ], Path(tmp), shell=shell)
                elapsed = time.monotonic() - started
                texts = [l for _, l in result.lines]
                self.assertEqual(result.rc, 0, texts)
                self.assertEqual(result.boots, 1)
                self.assertLess(elapsed, 30, "the hung case was cut at its limit")
                self.assertIn("first-ran", texts)
                self.assertIn("third-ran", texts)
                self.assertIn("footer-ran", texts)
                self.assertNotIn("must-not-run", texts)
                self.assertEqual(result.case("first").status, "ended")
                hung = result.case("hangs")
                self.assertEqual(hung.status, "timeout")
                self.assertEqual(hung.rc, 124)
                self.assertIn("limit of 2 s", hung.problem())
                self.assertIn("sleep 1000", hung.problem(), "the process tree is named")
                self.assertEqual(result.case("needs-hangs").status, "skipped")
                failures, _ = xenrig.case_report(result, ["first", "hangs", "after-hang", "needs-hangs"])
                self.assertEqual(len(failures), 2, failures)
                # Nothing of the case's tree is left running.
                left = subprocess.run(["pgrep", "-f", "sleep 1000"], capture_output=True, text=True)
                mine = [p for p in left.stdout.split()
                        if Path(f"/proc/{p}/environ").exists()
                        and tmp.encode() in Path(f"/proc/{p}/environ").read_bytes()]
                self.assertEqual(mine, [])

    def test_a_case_killed_by_a_signal_is_named(self):
        with tempfile.TemporaryDirectory() as tmp:
            result, _ = run([xenrig.Case("crashes", 20, ["sh -c 'kill -SEGV $$'"])], Path(tmp))
            c = result.case("crashes")
            self.assertEqual(c.status, "ended")
            self.assertEqual(c.rc, 139)
            self.assertTrue(any("signal 11" in f for f in c.faults), c.faults)
            failures, notes = xenrig.case_report(result, ["crashes"])
            self.assertEqual(len(failures), 1, "a dom0 tool's death fails its case")
            self.assertIn("signal 11", failures[0])
            self.assertEqual(len(notes), 1)

    def test_a_case_that_never_began_is_a_failure(self):
        with tempfile.TemporaryDirectory() as tmp:
            result, _ = run([xenrig.Case("only", 20, ["true"])], Path(tmp))
            failures, _ = xenrig.case_report(result, ["only", "typo"])
            self.assertEqual(len(failures), 1)
            self.assertIn("never began", failures[0])


class WedgedDom0Test(unittest.TestCase):
    """The host's side: dom0 silent past a case's limit + grace."""

    def test_a_wedged_dom0_is_rebooted_and_the_run_goes_on(self):
        with tempfile.TemporaryDirectory() as tmp:
            result, boots = run([
                xenrig.Case("setup", 20, ["echo setup-ran"], setup=True),
                xenrig.Case("before", 20, ["echo before-ran"]),
                # Stops every process of the session, the watchdog too: no
                # line will ever come, as when dom0's kernel hangs.
                xenrig.Case("wedges", 1, ["kill -STOP 0"]),
                xenrig.Case("after", 20, ["echo after-ran"]),
            ], Path(tmp), grace=2.0)
            texts = [l for _, l in result.lines]
            self.assertEqual(result.rc, 0, texts)
            self.assertEqual(result.boots, 2)
            self.assertEqual(len(boots), 2)
            skip = (boots[1] / "rig-skip").read_text().split("\n")
            self.assertIn("done before", skip)
            self.assertIn("wedged wedges", skip)
            self.assertEqual(texts.count("setup-ran"), 2, "a setup case runs again after a reboot")
            self.assertEqual(texts.count("before-ran"), 1, "a case that ran is not run again")
            self.assertEqual(texts.count("after-ran"), 1)
            w = result.case("wedges")
            self.assertEqual(w.status, "wedged")
            self.assertIn("dom0 wedged", w.problem())
            self.assertIn("limit of 1 s", w.problem())
            failures, _ = xenrig.case_report(result, ["setup", "before", "wedges", "after"])
            self.assertEqual(failures, [f"case wedges: {w.problem()}"])

    def test_reboots_are_bounded(self):
        with tempfile.TemporaryDirectory() as tmp:
            cases = [xenrig.Case(f"w{i}", 1, ["kill -STOP 0"]) for i in range(4)]
            result, boots = run(cases, Path(tmp), grace=1.0, max_reboots=1)
            self.assertEqual(result.boots, 2)
            self.assertEqual(result.rc, xenrig.RC_TIMEOUT)
            self.assertEqual([result.case(f"w{i}").status for i in range(4)],
                             ["wedged", "wedged", "missing", "missing"])

    def test_the_whole_run_limit_still_holds(self):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.monotonic()
            result, _ = run([xenrig.Case("long", 100, ["sleep 100"])], Path(tmp), timeout=3.0)
            self.assertLess(time.monotonic() - started, 10)
            self.assertTrue(result.timed_out)
            self.assertEqual(result.case("long").status, "unfinished")


class ScriptTest(unittest.TestCase):
    def test_names_must_be_unique_and_plain(self):
        with self.assertRaises(ValueError):
            xenrig.cases_script([xenrig.Case("a", 1, ["true"]), xenrig.Case("a", 1, ["true"])])
        with self.assertRaises(ValueError):
            xenrig.cases_script([xenrig.Case("a b", 1, ["true"])])


if __name__ == "__main__":
    unittest.main()
