#!/usr/bin/env python3
"""Host-only tests of rig/test_vpn.py (make test-vpn, and its one-type run
in make test): its dom0 scripts are generated with every placeholder
filled and parse as shell (dash's `sh -n`), the verdicts are read from
RIG lines as meant. No QEMU, no rig cache.

usage: python3 rig/test_vpn_unit.py   (well under a second)
"""

from __future__ import annotations

import re
import subprocess
import sys
import unittest
from pathlib import Path

RIG = Path(__file__).resolve().parent
sys.path.insert(0, str(RIG))
import test_vpn  # noqa: E402


def parses_as_shell(text: str) -> str:
    """'' when `sh -n` accepts the script, else its complaint."""
    p = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True)
    return p.stderr if p.returncode else ""


class TestVpnScript(unittest.TestCase):
    def test_one_type_and_both_fill_every_placeholder_and_parse(self):
        for types in (["pvh"], ["pv", "pvh"]):
            text = test_vpn.dom0_script(types, 1, 16, 128, 30, 6)
            self.assertEqual(re.findall(r"@[A-Z_0-9]+@", text), [])
            self.assertEqual(parses_as_shell(text), "")
            self.assertEqual(text.count("log end "), len(types))
            # the client is created once, before the kit, without a vif
            self.assertEqual(text.count("xl create /guest/vpn-client-pv.cfg 'vif=[]'"), 1)
            self.assertLess(text.index("vpn-client-pv.cfg 'vif=[]'"), text.index("tar -xzf /guest/wgkit.tgz"))
            self.assertIn("memory=16", text)
            self.assertIn("memory=128", text)

    def test_pv_reads_the_disk_pvh_xenstore(self):
        text = test_vpn.dom0_script(["pv", "pvh"], 1, 0, 0, 30, 6)
        pv, pvh = text.split("log create vpn-pv ")[1].split("log create vpn-pvh ")
        self.assertIn("if [ disk = disk ]", text)
        self.assertIn("if [ xenstore = disk ]", text)
        self.assertLess(text.index("if [ disk = disk ]"), text.index("log create vpn-pv "))
        self.assertIn("get restart-download get3pv", pv)
        self.assertIn("get restart-download get3pvh", pvh)

    def test_ids_of_client_commands_are_unique_per_type(self):
        text = test_vpn.dom0_script(["pv", "pvh"], 1, 0, 0, 30, 6)
        ids = re.findall(r"^(?:cmd vpn-client|keep|get \S+) (\S+)", text, re.M)
        ids = [i for i in ids if not i.startswith("$")]
        self.assertEqual(len(ids), len(set(ids)), ids)

    def test_conf_files(self):
        v6 = test_vpn.vm_conf("K", "P", ipv6=True)
        v4 = test_vpn.vm_conf("K", "P", ipv6=False)
        self.assertIn("Address = 10.64.0.2/32, fd64::2/128\n", v6)
        self.assertIn("Address = 10.64.0.2/32\n", v4)
        for c in (v4, v6):
            self.assertIn("AllowedIPs = 0.0.0.0/0, ::/0\n", c)
            self.assertIn("Endpoint = 10.99.0.1:51820\n", c)

    def test_verdicts(self):
        ok = [f"RIG {w} ok 1 2" for w in test_vpn.GLOBAL_WORDS]
        part = ["RIG create vpn-pvh 1.0"] + [f"RIG {w} ok" for w in test_vpn.WORDS] + ["RIG end pvh 1 2"]
        passed, failures = test_vpn.verdicts(ok + part, ["pvh"], 0)
        self.assertEqual((passed, failures), (len(test_vpn.GLOBAL_WORDS) + len(test_vpn.WORDS), []))
        # a FAIL, a missing word and the rig's rc each count
        bad = part[:]
        bad[bad.index("RIG mss ok")] = "RIG mss FAIL 1 SYNs"
        bad.remove("RIG ipv6 ok")
        passed, failures = test_vpn.verdicts(ok + bad, ["pvh"], 124)
        self.assertEqual(len(failures), 3, failures)
        self.assertTrue(any("pvh: mss: RIG mss FAIL" in f for f in failures))
        self.assertTrue(any("pvh: ipv6: no result" in f for f in failures))
        # a word of another type's part does not count for this one
        passed, failures = test_vpn.verdicts(ok + part, ["pv", "pvh"], 0)
        self.assertEqual(failures, ["pv: never started"])


if __name__ == "__main__":
    unittest.main()
