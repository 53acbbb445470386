#!/usr/bin/env python3
"""Host-only tests of rig/run_firewall.py (`make run`), no QEMU: the
presenter's verdict on synthetic serial output, the dom0 script's syntax
under the rig's busybox, and its `client` function (typing a command into
a client's console and reading its status back) against a fake console.
The busybox parts are skipped without the rig cache (rig/fetch.sh)."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

RIG = Path(__file__).resolve().parent
sys.path.insert(0, str(RIG))
import run_firewall  # noqa: E402
import xenrig  # noqa: E402

BUSYBOX = xenrig.cache_dir("amd64") / "dom0-root" / "bin" / "busybox"


def passing_run() -> list:
    """Serial lines of a demo in which every step passed."""
    return (["RIG dom0 ready: 40 s; running /guest/run.sh", "RIG say starting the firewall"]
            + [f"RIG step-ok {s} fine" for s in run_firewall.STEPS]
            + ["RIG stats clients=1 out=6", "RIG demo-end 0", "MOAT-RIG-EXIT 0"])


class PresenterTest(unittest.TestCase):
    def feed(self, lines: list) -> tuple:
        p = run_firewall.Presenter()
        shown = [p.feed(float(i), l) for i, l in enumerate(lines)]
        return p, [s for s in shown if s is not None]

    def test_every_step_ok_passes(self):
        p, shown = self.feed(passing_run())
        self.assertEqual(p.failures(0), [])
        self.assertEqual(p.demo_end, 0)
        self.assertEqual(sum(1 for s in shown if " ok: " in s), len(run_firewall.STEPS))

    def test_a_failed_or_missing_step_fails(self):
        lines = passing_run()
        lines[3] = lines[3].replace("step-ok", "step-fail")
        p, shown = self.feed(lines)
        self.assertEqual(p.failures(1), [f"step {run_firewall.STEPS[1]}: failed"])
        self.assertTrue(any("FAILED: fine" in s for s in shown))
        p, _ = self.feed([l for l in passing_run() if "rule-change" not in l])
        self.assertEqual(p.failures(0), ["step rule-change: never reported"])

    def test_script_status_counts_when_steps_passed(self):
        p, _ = self.feed(passing_run())
        self.assertEqual(p.failures(3), ["the dom0 script ended with status 3"])

    def test_client_commands_shown_without_their_end_marker(self):
        p, shown = self.feed([
            'CLIENT client-a:/# wget -q -O- http://10.99.0.1/; echo "rc=$? end=$((1))"',
            "CLIENT hello", "CLIENT rc=0 end=1", "CLIENT linuxdomu: dmesg: [ 0.1] xen",
            "FW firewall: stats: clients=1", "FW firewall: forwarding: uplink", "[ 1.0] Xen boot noise",
        ])
        self.assertEqual(len(shown), 3, shown)
        self.assertTrue(shown[0].endswith("client-a | client-a:/# wget -q -O- http://10.99.0.1/"))
        self.assertTrue(shown[1].endswith("client-a | hello"))
        self.assertIn("firewall | firewall: forwarding:", shown[2])
        self.assertEqual(len(p.last), 7)

    def test_shell_marker(self):
        p, _ = self.feed(["RIG demo-end 0", "RIG demo-shell"])
        self.assertTrue(p.shell)


@unittest.skipUnless(BUSYBOX.is_file(), f"no rig busybox at {BUSYBOX} (rig/fetch.sh)")
class ScriptTest(unittest.TestCase):
    def test_script_parses_and_is_filled_in(self):
        s = run_firewall.script()
        self.assertEqual(re.findall(r"@[A-Z]+@", s), [])
        with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
            f.write(s)
            f.flush()
            r = subprocess.run([str(BUSYBOX), "sh", "-n", f.name], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_client_types_and_returns_the_status(self):
        """`client` waits for the prompt, writes the command with its end
        marker to the console, and returns the status the marker shows;
        124 when no marker comes."""
        s = run_firewall.script()
        funcs = "\n".join(re.findall(r"^(?:wait_for|wait_count)\(\) \{\n.*?^\}\n", s, re.S | re.M))
        client = re.search(r"^k=0\nclient\(\) \{\n.*?^\}\n", s, re.S | re.M).group(0)
        with tempfile.TemporaryDirectory() as d:
            test = f"""{funcs}
{client}
cseen={d}/seen; ctty={d}/tty
printf 'client-a:/# ' >$cseen
( sleep 1; printf 'wget; echo "rc=$? end=$((1))"\\r\\nhello\\r\\nrc=0 end=1\\r\\nclient-a:/# ' >>$cseen
  sleep 1; printf 'nc; echo "rc=$? end=$((2))"\\r\\nNo route to host\\r\\nrc=1 end=2\\r\\nclient-a:/# ' >>$cseen ) &
client 10 "wget"; echo "r1=$? $(cat $ctty)"
client 10 "nc"; echo "r2=$?"
client 1 "never"; echo "r3=$?"
"""
            r = subprocess.run([str(BUSYBOX), "sh", "-c", test], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('r1=0 wget; echo "rc=$? end=$((1))"', r.stdout)
        self.assertIn("r2=1", r.stdout)
        self.assertIn("r3=124", r.stdout)


if __name__ == "__main__":
    unittest.main()
