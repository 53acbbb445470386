#!/usr/bin/env python3
"""Host-only tests of rig/test_vpn.py (make test-vpn, and its one-type run
in make test) and rig/bench_vpn_vm.py (make bench-vpn-vm): their dom0
scripts are generated with every placeholder filled and parse as shell
(dash's `sh -n`), the verdicts and figures are read from RIG lines as
meant, the table has moat/Linux per row. No QEMU, no rig cache.

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
import bench_vpn_vm as bench  # noqa: E402
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
            # the client's vif detached between types, not after the last
            self.assertEqual(text.count("\ndetach\n"), len(types) - 1)
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


class BenchVpnScript(unittest.TestCase):
    def test_script_parses_and_has_every_case(self):
        text, names = bench.dom0_script(["moat", "linux"], 8, {"moat": 3, "linux": 2}, 16)
        self.assertEqual(names, ["servers", "bench", "moat-mem", "linux-mem"])
        self.assertEqual(re.findall(r"@[A-Z_0-9]+@", text), [])
        self.assertIn("MOAT_MEM=16", text)
        self.assertIn("rig_case -s servers 120 ", text)
        self.assertIn("bench_pair 8", text)
        self.assertIn("min_mem moat 0 32 3", text)
        self.assertIn("min_mem linux 0 256 2", text)
        self.assertEqual(parses_as_shell(text), "")
        text, names = bench.dom0_script(["linux"], 8, {"linux": 0}, 0)
        self.assertEqual(names, ["servers", "linux-bench"])
        self.assertEqual(parses_as_shell(text), "")

    def test_figures_and_table(self):
        lines = [
            "CMDOUT moat tcp-up [  5]   0.00-8.00   sec   400 MBytes   420 Mbits/sec                  receiver",
            "CMDOUT moat tcp-up [  5]   0.00-8.00   sec   401 MBytes   421 Mbits/sec    3             sender",
            "CMDOUT linux tcp-up [  5]   0.00-8.00   sec   300 MBytes   210 Mbits/sec                  receiver",
            "CMDOUT moat udp-up [  5]   0.00-8.00   sec  1.00 MBytes  1.0 Mbits/sec  0.01 ms  100/48100 (0.2%)  receiver",
            "CMDOUT linux udp-up [  5]   0.00-8.00   sec  1.00 MBytes  1.0 Mbits/sec  0.01 ms  0/24000 (0%)  receiver",
            "RIG cpu moat tcp-up 35.5 80.0 20.1",
            "RIG first moat 10.0 12.0 12.5 13.0",
            "RIG first linux 10.0 30.0 31.0 33.0",
            "RIG trial moat 16 ok",
            "RIG trial moat 8 fail gateway not ready: domain crashed",
            "RIG minmem moat 16 8",
            "RIG minmem linux 128 64",
        ]
        fig = bench.parse(lines)
        self.assertEqual(fig[("moat", "tcp-up")], 420.0)
        self.assertEqual(fig[("linux", "tcp-up")], 210.0)
        self.assertEqual(fig[("moat", "udp-up")], 48000 / 8)
        self.assertEqual(fig[("linux", "udp-up")], 24000 / 8)
        self.assertEqual(fig[("cpu", "moat", "tcp-up")], ("35.5", "80.0", "20.1"))
        self.assertEqual(fig[("first", "moat")], 3.0)
        self.assertEqual(fig[("ready", "linux")], 20.0)
        self.assertEqual(fig[("minmem", "moat")], (16, 8))
        self.assertEqual(fig[("trials", "moat")], ["16 ok", "8 fail"])
        rows = bench.table(fig, {"moat": "16", "linux": "256"})
        tcp = next(r for r in rows if r.startswith("TCP client -> dom0"))
        self.assertTrue(tcp.split()[-1] == "2.00", tcp)
        udp = next(r for r in rows if r.startswith("UDP 64 B client -> dom0"))
        self.assertTrue(udp.split()[-1] == "2.00", udp)
        first = next(r for r in rows if r.startswith("xl create -> first packet"))
        self.assertTrue(first.split()[-1] == "0.13", first)
        mem = next(r for r in rows if r.startswith("smallest memory="))
        self.assertTrue(mem.split()[-1] == "0.12", mem)
        down = next(r for r in rows if r.startswith("TCP dom0 -> client"))
        self.assertTrue(down.split()[-1] == "-", down)


if __name__ == "__main__":
    unittest.main()
