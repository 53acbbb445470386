#!/usr/bin/env python3
"""Host-only tests of the rig's Linux domU (rig/domu) and of the --linux
parts of rig/test_netdemo.py. No QEMU: the initramfs is built and read back,
rig/domu/init's connection handlers run under the rig's static busybox on
this host, and test_netdemo's checks run on synthetic dom0 output.

usage: python3 rig/test_linux_domu_unit.py   (needs rig/fetch.sh's cache)
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
import unittest
import zlib
from pathlib import Path

RIG = Path(__file__).resolve().parent
sys.path.insert(0, str(RIG))
sys.path.insert(0, str(RIG / "domu"))
import linux_domu as build  # noqa: E402
import test_netdemo  # noqa: E402
import xenrig  # noqa: E402

BUSYBOX = xenrig.cache_dir("amd64") / "dom0-root" / "bin" / "busybox"


def read_newc(data: bytes) -> dict:
    """name -> (mode, rdev major, rdev minor, content) of a newc archive."""
    out, pos = {}, 0
    while True:
        h = data[pos:pos + 110]
        assert h[:6] == b"070701", f"bad magic at {pos}"
        f = [int(h[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, rmaj, rmin, body)


class Initramfs(unittest.TestCase):
    def test_contents(self):
        self.assertTrue(BUSYBOX.is_file(), f"{BUSYBOX} missing: run rig/fetch.sh")
        with tempfile.TemporaryDirectory() as tmp:
            ko = Path(tmp) / "xen-netfront.ko"
            ko.write_bytes(b"\x7fELF fake module")
            archive = read_newc(gzip.decompress(build.initramfs(BUSYBOX, ko, b"#!/bin/sh\n")))
        self.assertEqual(archive["dev/console"][:3], (0o020600, 5, 1))
        self.assertEqual(archive["init"], (0o100755, 0, 0, b"#!/bin/sh\n"))
        self.assertEqual(archive["lib/xen-netfront.ko"][3], b"\x7fELF fake module")
        self.assertEqual(archive["bin/busybox"][3], BUSYBOX.read_bytes())
        for applet in ("sh", "nc", "crc32", "ip", "insmod", "mkfifo", "tee", "awk"):
            self.assertEqual(archive[f"bin/{applet}"][0] & 0o170000, 0o120000, applet)
            self.assertEqual(archive[f"bin/{applet}"][3], b"busybox", applet)
        for d in ("proc", "sys", "tmp", "dev", "bin", "lib"):
            self.assertEqual(archive[d][0], 0o040755, d)

    def test_real_netfront_has_no_dependencies(self):
        kver = (xenrig.cache_dir("amd64") / "boot" / "kernel-version").read_text().strip()
        ko = xenrig.cache_dir("amd64") / "dom0-root" / "lib" / "modules" / kver / "kernel/drivers/net/xen-netfront.ko"
        self.assertEqual(build.module_depends(ko), [])


class Handlers(unittest.TestCase):
    """rig/domu/init's per-connection handlers, stdin/stdout as nc -e gives
    them, under the rig's busybox."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        d = Path(self.tmp.name)
        (d / "bin").mkdir()
        out = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True).stdout
        for a in out.split():
            os.symlink(BUSYBOX, d / "bin" / a)
        self.console = d / "console"
        self.data = d / "r16m"
        self.data.write_bytes(os.urandom(2 * 1048576 + 3))
        self.env = dict(os.environ, LINUXDOMU_PATH=str(d / "bin"), LINUXDOMU_CONSOLE=str(self.console),
                        LINUXDOMU_DATA=str(self.data))

    def tearDown(self):
        self.tmp.cleanup()

    def run_handler(self, name: str, stdin: bytes) -> bytes:
        return subprocess.run([str(BUSYBOX), "sh", str(RIG / "domu" / "init"), name], input=stdin,
                              env=self.env, capture_output=True, check=True, timeout=60).stdout

    def test_sink(self):
        payload = os.urandom(3 * 1048576 + 5)
        self.assertEqual(self.run_handler("serve-sink", payload), b"")
        self.assertEqual(self.console.read_text(),
                         f"linuxdomu: sink: {len(payload)} bytes crc32 {zlib.crc32(payload):08x}\n")

    def test_source(self):
        out = self.run_handler("serve-source", b"2000001\n")
        self.assertEqual(out, self.data.read_bytes()[:2000001])
        self.assertEqual(self.console.read_text(),
                         f"linuxdomu: source: 2000001 bytes crc32 {zlib.crc32(out):08x}\n")

    def test_source_beyond_the_data_repeats_its_first_mib(self):
        out = self.run_handler("serve-source", b"3500001\n")
        self.assertEqual(out, (self.data.read_bytes()[:1048576] * 4)[:3500001])
        self.assertEqual(self.console.read_text(),
                         f"linuxdomu: source: 3500001 bytes crc32 {zlib.crc32(out):08x}\n")

    def test_source_bad_request(self):
        self.assertEqual(self.run_handler("serve-source", b"12x\n"), b"")
        self.assertEqual(self.console.read_text(), "linuxdomu: source: bad request\n")

    def test_counters(self):
        out = self.run_handler("serve-counters", b"\n").decode()
        self.assertRegex(out, r"^udp-in=\d+ udp-noports=\d+\n$")


class Checks(unittest.TestCase):
    """test_netdemo's --linux checks on synthetic dom0 output."""

    def linux_seg(self, name: str, crc_guest: str = "0badcafe") -> list:
        n = 16 * 1048576
        return [
            f"RIG create {name}", f"RIG ready {name} 61.2", f"RIG ping {name} 1000 1000",
            f"RIG tcp-echo {name} ok", f"RIG udp-echo {name} skipped",
            f"RIG source {name} {n} 0badcafe 4.00", f"RIG sink-data {name} {n} x 1 crc 12345678",
            f"RIG sink {name} {n} 12345678 2.00",
            f"GUEST linuxdomu: source: {n} bytes crc32 {crc_guest}",
            f"GUEST linuxdomu: sink: {n} bytes crc32 12345678", f"RIG end {name}",
        ]

    def test_linux_type_passes_and_figures(self):
        bench, fig = [], {}
        p, f = test_netdemo.check_type("linux-pv", self.linux_seg("linux-pv"), 16, 1000, False, bench, fig, "linux")
        self.assertEqual(f, [])
        self.assertEqual(p, 9)
        self.assertAlmostEqual(fig[("linux-pv", "source")], 16 * 1048576 * 8 / 4 / 1e6)
        self.assertAlmostEqual(fig[("linux-pv", "sink")], 16 * 1048576 * 8 / 2 / 1e6)

    def test_linux_type_crc_mismatch_fails(self):
        _, f = test_netdemo.check_type("linux-pv", self.linux_seg("linux-pv", "00000001"), 16, 1000, False, [], {},
                                       "linux")
        self.assertEqual(len(f), 1)
        self.assertIn("source CRC-32", f[0])

    def test_linux_type_udp_must_be_skipped(self):
        seg = [l.replace("udp-echo linux-pv skipped", "udp-echo linux-pv bad") for l in self.linux_seg("linux-pv")]
        _, f = test_netdemo.check_type("linux-pv", seg, 16, 1000, False, [], {}, "linux")
        self.assertEqual(len(f), 1)

    def test_pull(self):
        n = 16 * 1048576 + 7
        fig = {}
        ok = [f"RIG pull linux-pv netdemo-pv {n} 89abcdef 8.00 89abcdef"]
        self.assertEqual(test_netdemo.check_pull("linux-pv", "netdemo-pv", ok, 16, [], fig), (1, []))
        self.assertAlmostEqual(fig[("linux-pv", "pull")], n * 8 / 8 / 1e6)
        for bad in ([f"RIG pull linux-pv netdemo-pv {n} 89abcdef 8.00 none"],
                    [f"RIG pull linux-pv netdemo-pv {n - 1} 89abcdef 8.00 89abcdef"],
                    [f"RIG pull linux-pv netdemo-pv {n} 89abcdef 8.00 89abcdee"], []):
            self.assertEqual(test_netdemo.check_pull("linux-pv", "netdemo-pv", bad, 16, [], {})[0], 0, bad)

    def test_pps(self):
        fig = {}
        self.assertEqual(test_netdemo.check_pps("linux-pv", ["RIG pps linux-pv 50000 5000000 20000"], [], fig), (1, []))
        self.assertAlmostEqual(fig[("linux-pv", "pps")], 4000.0)
        for bad in (["RIG pps linux-pv 50000 5000000 0"], ["RIG pps linux-pv 50000 5000000 50001"],
                    ["RIG pps linux-pv failed no-vif"], []):
            self.assertEqual(test_netdemo.check_pps("linux-pv", bad, [], {})[0], 0, bad)

    def test_table_ratio(self):
        rows = test_netdemo.table({("netdemo-pv", "sink"): 50.0, (test_netdemo.LINUX, "sink"): 100.0})
        row = next(r for r in rows if r.startswith("dom0 -> guest TCP"))
        self.assertEqual(row.split()[-3:], ["50.0", "100.0", "0.50"])
        # a row with only Linux's figure shows moat's as missing
        row = next(r for r in rows if r.startswith("dom0 -> Linux domU TCP"))
        self.assertEqual(row.split()[-3:], ["-", "100.0", "-"])
        self.assertFalse(any(r.startswith("guest -> dom0") for r in rows))

    def test_script_runs_linux_beside_netdemo_pv_before_pvh(self):
        s = test_netdemo.dom0_script(["pv", "pvh"], {"pv": 16, "pvh": 16}, {"pv": 1000, "pvh": 100},
                                     {"pv": True, "pvh": False}, 16, True)
        lines = s.splitlines()
        i_pv = next(i for i, l in enumerate(lines) if "netcase.sh netdemo-pv " in l)
        i_linux = next(i for i, l in enumerate(lines) if "netcase.sh linux-pv " in l)
        i_start = next(i for i, l in enumerate(lines) if "netbench.sh start netdemo-pv " in l)
        i_destroy = next(i for i, l in enumerate(lines) if "xl destroy netdemo-pv" in l)
        i_pvh = next(i for i, l in enumerate(lines) if "netcase.sh netdemo-pvh " in l)
        self.assertTrue(i_pv < i_linux < i_start < i_destroy < i_pvh)
        self.assertNotIn("NETCASE_KEEP=1", lines[i_pv])
        self.assertIn("NETCASE_KEEP=1", lines[i_linux])
        self.assertIn("backend=netbridge-pv,mac=00:16:3e:6d:6f:05", s)
        self.assertNotIn("linux", test_netdemo.dom0_script(["pv"], {"pv": 16}, {"pv": 10}, {"pv": True}, 16))


if __name__ == "__main__":
    unittest.main()
