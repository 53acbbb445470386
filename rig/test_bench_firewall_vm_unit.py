#!/usr/bin/env python3
"""Host-only tests of rig/bench_firewall_vm.py (make bench-firewall-vm) and
of the router overlay of rig/domu/linux_domu.py: the Qubes rules turned
into nft as qubesagent/firewall.py does, the rule sets, the parsing of
iperf3's summary lines and of the dom0 script's RIG lines, the table, and
the appended cpio archive read back. No QEMU, no rig cache.

usage: python3 rig/test_bench_firewall_vm_unit.py   (well under a second)
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import unittest
from pathlib import Path

RIG = Path(__file__).resolve().parent
sys.path.insert(0, str(RIG))
sys.path.insert(0, str(RIG / "domu"))
import bench_firewall_vm as bench  # noqa: E402
import linux_domu  # noqa: E402


def read_newc(data: bytes) -> dict:
    """name -> (mode, content) of a newc archive."""
    out, pos = {}, 0
    while True:
        h = data[pos:pos + 110]
        assert h[:6] == b"070701", f"bad magic at {pos}"
        f = [int(h[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def rule(text: str) -> dict:
    return dict(kv.split("=", 1) for kv in text.split())


class NftRules(unittest.TestCase):
    """Qubes rule -> nft, as qubesagent/firewall.py's NftablesWorker
    (prepare_rules) writes them for an IPv4 client."""

    def test_drop_is_a_reject_with_admin_prohibited(self):
        self.assertEqual(bench.nft_rule(rule("action=drop dst4=10.0.0.0/8")),
                         ["ip daddr 10.0.0.0/8 reject with icmp type admin-prohibited"])

    def test_one_port_range_is_one_port(self):
        self.assertEqual(bench.nft_rule(rule("action=accept proto=tcp dst4=10.1.2.3/32 dstports=443-443")),
                         ["ip protocol tcp ip daddr 10.1.2.3/32 tcp dport 443 accept"])
        self.assertEqual(bench.nft_rule(rule("action=accept proto=udp dstports=1000-2000")),
                         ["ip protocol udp udp dport 1000-2000 accept"])

    def test_ports_without_proto_give_tcp_and_udp(self):
        self.assertEqual(bench.nft_rule(rule("action=accept dstports=53-53")),
                         ["tcp dport 53 accept", "udp dport 53 accept"])

    def test_specialtarget_dns(self):
        self.assertEqual(bench.nft_rule(rule("action=accept specialtarget=dns")),
                         ["ip daddr @dns-addr tcp dport 53 accept", "ip daddr @dns-addr udp dport 53 accept"])
        # another port than 53 with specialtarget=dns: the rule is skipped
        self.assertEqual(bench.nft_rule(rule("action=accept specialtarget=dns dstports=80-80")), [])

    def test_icmptype(self):
        self.assertEqual(bench.nft_rule(rule("action=accept proto=icmp icmptype=8")),
                         ["ip protocol icmp icmp type 8 accept"])

    def test_file_hooks_the_chain_and_ends_with_the_policy(self):
        text = bench.nft_file("10.137.0.10", ["action=accept dst4=10.99.0.0/24"])
        self.assertIn("add rule ip qubes-firewall qubes-forward ip saddr 10.137.0.10 jump qbs-10-137-0-10\n", text)
        self.assertIn("flush chain ip qubes-firewall qubes-forward\n", text)
        self.assertIn("add element ip qubes-firewall dns-addr { 10.99.0.1 }\n", text)
        body = text.split("chain qbs-10-137-0-10 {\n", 1)[1].split("\n  }", 1)[0].split("\n")
        self.assertEqual([l.strip() for l in body],
                         ["ip daddr 10.99.0.0/24 accept", "reject with icmp type admin-prohibited"])


class RuleSets(unittest.TestCase):
    def test_counts_and_the_last_rule_lets_the_traffic_through(self):
        for n in (1, 10, 100):
            rules = bench.rule_set(str(n))
            self.assertEqual(len(rules), n)
            self.assertEqual(rules[-1], "action=accept dst4=10.99.0.0/24")
            # no filler matches dom0's network
            for r in rules[:-1]:
                self.assertNotIn("10.99.", r)
                self.assertNotIn("dst4=10.99", r)
            self.assertEqual(len(set(rules)), n)

    def test_check_set_allows_the_probe_commands_and_iperf3_only(self):
        ports = [rule(r)["dstports"] for r in bench.rule_set("check")]
        self.assertEqual(ports, ["8080-8080", "9000-9000", "5201-5201"])

    def test_moat_function_writes_the_directory_last(self):
        f = bench.moat_function("2", bench.rule_set("2"))
        lines = f.splitlines()
        self.assertEqual(lines[0], "moat_rules_2() {")
        self.assertIn('"$1/policy" drop', lines[1])
        self.assertIn("\"$1/0001\" 'action=accept dst4=10.99.0.0/24'", lines[1])
        self.assertEqual(lines[2].strip(), 'xenstore-write "$1" ""')
        # the function is valid shell
        subprocess.run(["sh", "-n"], input=f.encode(), check=True)

    def test_script_has_every_case(self):
        s, names = bench.dom0_script(["moat", "linux"], [1, 10], 5, {"moat": 3, "linux": 0})
        self.assertEqual(names, ["servers", "bench", "moat-mem"])
        self.assertIn("bench_pair 5 1 10", s)
        subprocess.run(["sh", "-n"], input=s.encode(), check=True)
        s, names = bench.dom0_script(["moat", "linux"], [1, 10], 5, {"moat": 3, "linux": 0}, sequential=True)
        self.assertEqual(names, ["servers", "moat-bench", "linux-bench", "moat-mem"])
        self.assertIn("bench_side moat firewall client-m 5 1 10", s)
        self.assertIn("min_mem moat firewall client-m 0 32 3", s)
        subprocess.run(["sh", "-n"], input=s.encode(), check=True)


class Parse(unittest.TestCase):
    LINES = [
        "CMDOUT moat 1 tcp-up [  5]   0.00-8.00   sec  30.5 MBytes  32.0 Mbits/sec  12             sender",
        "CMDOUT moat 1 tcp-up [  5]   0.00-8.04   sec  30.1 MBytes  31.4 Mbits/sec                  receiver",
        "CMDOUT linux 1 tcp-up [  5]   0.00-8.02   sec  60.0 MBytes  62.8 Mbits/sec                  receiver",
        "CMDOUT moat 1 udp-up [  5]   0.00-8.00   sec   965 KBytes   988 Kbits/sec  0.000 ms  0/54900 (0%)  sender",
        "CMDOUT moat 1 udp-up [  5]   0.00-8.00   sec   900 KBytes   921 Kbits/sec  0.099 ms  4900/54900 (8.9%)  receiver",
        "CMDOUT linux 1 udp-up [  5]   0.00-10.00  sec   1.0 MBytes   1.0 Mbits/sec  0.099 ms  1000/26000 (3.8%)  receiver",
        "RIG cpu moat 1 tcp-up 45.3 88.0 60.1",
        "RIG cpu linux 1 tcp-up 71.0 90.0 55.0",
        "RIG first moat 100.0 108.5 109.0 112.25",
        "RIG first linux 200.0 240.0 241.0 245.0",
        "RIG trial moat 16 ok",
        "RIG trial moat 8 fail firewall not ready: domain crashed",
        "RIG minmem moat 16 8",
        "RIG minmem linux 96 64",
    ]

    def test_figures(self):
        fig = bench.parse(self.LINES)
        self.assertEqual(fig[("moat", 1, "tcp-up")], 31.4)
        self.assertEqual(fig[("linux", 1, "tcp-up")], 62.8)
        self.assertAlmostEqual(fig[("moat", 1, "udp-up")], 50000 / 8)
        self.assertAlmostEqual(fig[("linux", 1, "udp-up")], 2500.0)
        self.assertEqual(fig[("cpu", "moat", 1, "tcp-up")], ("45.3", "88.0", "60.1"))
        self.assertAlmostEqual(fig[("first", "moat")], 12.25)
        self.assertAlmostEqual(fig[("ready", "linux")], 40.0)
        self.assertEqual(fig[("minmem", "linux")], (96, 64))
        self.assertEqual(fig[("trials", "moat")], ["16 ok", "8 fail"])

    def test_table(self):
        rows = bench.table(bench.parse(self.LINES), [1, 10], {"moat": "32", "linux": "256"})
        tcp = next(r for r in rows if r.startswith("TCP client -> dom0") and r.split()[-6] == "1")
        self.assertEqual(tcp.split()[-6:], ["1", "31.4", "45.3", "62.8", "71.0", "0.50"])
        missing = next(r for r in rows if r.startswith("TCP client -> dom0") and r.split()[-6] == "10")
        self.assertEqual(missing.split()[-5:], ["-", "-", "-", "-", "-"])
        first = next(r for r in rows if r.startswith("xl create -> first packet"))
        self.assertEqual(first.split()[-3:], ["12.2", "45.0", "0.27"])
        mem = next(r for r in rows if r.startswith("smallest memory="))
        self.assertEqual(mem.split()[-3:], ["16", "96", "0.17"])


class Overlay(unittest.TestCase):
    def test_dirs_files_and_links(self):
        data = gzip.decompress(linux_domu.overlay([("usr/sbin/nft", 0o755, b"ELF"), ("lib/router/order", 0o644, b"a\n")],
                                                  [("usr/bin/xenstore-read", "xenstore")]))
        a = read_newc(data)
        for d in ("usr", "usr/sbin", "usr/bin", "lib", "lib/router"):
            self.assertEqual(a[d][0], 0o040755, d)
        self.assertEqual(a["usr/sbin/nft"], (0o100755, b"ELF"))
        self.assertEqual(a["lib/router/order"], (0o100644, b"a\n"))
        self.assertEqual(a["usr/bin/xenstore-read"], (0o120777, b"xenstore"))
        names = list(a)
        self.assertLess(names.index("usr/sbin"), names.index("usr/sbin/nft"))


if __name__ == "__main__":
    unittest.main()
