#!/usr/bin/env python3
"""Real-Xen arm32 test: moat's selftest and netdemo images as Xen arm32
guests, in one boot of the arm32 rig (rig/xenrig.py --arch arm32: Debian's
armhf Xen 4.17 under qemu-system-arm -M virt,virtualization=on, TCG, with
Debian's armmp-lpae Linux as dom0 and the real toolstack).

In dom0, one after the other:
  - the selftest runs of rig/test_selftest.py for guest type `arm32`
    (configs/selftest-arm32.cfg: normal, panic, reboot and the three
    W^X/guard-page fault runs; the same assertions as on amd64);
  - rig/dom0/netcase.sh with configs/netdemo-arm32.cfg: ping, TCP and UDP
    echo and MIB MiB each way over TCP from dom0 through Linux netback,
    asserted by rig/test_netdemo.py's checks;
  - blkdemo with configs/blkdemo-arm32.cfg on a file-backed disk through
    Linux blkback, as rig/test_blkdemo.py runs it: MIB MiB of a seeded
    pattern written, read back, and read back again by a new domain;
  - the firewall VM (configs/firewall-arm32.cfg, rig/dom0/fwsmoke.sh): it
    boots and forwards, answers dom0's pings at its uplink address, serves
    a netdemo client behind it (backend=firewall) and closes and removes
    that vif when the client is destroyed (the arm32 rig has no Linux
    client domU to send traffic through it: that is checked on amd64).
Prints every failed assertion, the figures (never asserted) and
`N passed, M failed`.

usage: python3 rig/test_arm32.py [--selftest PATH] [--netdemo PATH|none]
          [--blkdemo PATH|none] [--firewall PATH|none] [--mib N] [--pings N] [--timeout S]
          [--log FILE] [--quiet]
The images default to target/images/arm32/{selftest,netdemo,blkdemo,firewall}
(zImages).
Exit status: 0 when every assertion held, 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_blkdemo  # noqa: E402
import test_netdemo  # noqa: E402
import test_selftest  # noqa: E402
import xenrig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
#: The netdemo domain's name (netcase.sh's NAME).
NETDEMO = "netdemo-arm32"


#: The firewall smoke case's name.
FIREWALL = "firewall-arm32"
#: Its checks (`RIG fwsmoke-<word> ok`), from rig/dom0/fwsmoke.sh.
FIREWALL_WORDS = ["forwarding", "ping", "client", "client-gone", "alive"]


def dom0_cases(netdemo: bool, blkdemo: bool, mib: int, pings: int, firewall: bool = False) -> list:
    """The cases (xenrig.Case): the selftest runs, then (with `netdemo`) one
    netcase.sh run, then (with `blkdemo`) the blkdemo write and verify
    runs, then (with `firewall`, which needs netdemo) the firewall smoke
    run."""
    cases = test_selftest.dom0_cases(["arm32"])
    if netdemo:
        cases.append(xenrig.Case(NETDEMO, test_netdemo.netcase_limit(mib), [
            f"bash /guest/netcase.sh {NETDEMO} /guest/{NETDEMO}.cfg {mib} {pings} 0"
        ]))
    if blkdemo:
        cases += test_blkdemo.dom0_cases(["arm32"], mib, False)
    if firewall and netdemo:
        cases.append(xenrig.Case(FIREWALL, 360, [
            f"bash /guest/fwsmoke.sh /guest/{FIREWALL}.cfg /guest/{NETDEMO}.cfg"
        ]))
    return cases


def dom0_script(netdemo: bool, blkdemo: bool, mib: int, pings: int, firewall: bool = False) -> str:
    """The dom0 script of dom0_cases()."""
    return xenrig.cases_script(dom0_cases(netdemo, blkdemo, mib, pings, firewall),
                               header=test_blkdemo.dom0_header(), footer=["xl list"])


def check_blkdemo(tally, texts: list, mib: int, bench: list) -> None:
    """The blkdemo assertions (as rig/test_blkdemo.py makes them)."""
    rx = r"blkdemo: %s: (\d+) bytes crc32 ([0-9a-f]{8}) in (\d+) us(?:: (.*))?"
    w = test_blkdemo.segment(texts, "blkdemo-arm32-write")
    v = test_blkdemo.segment(texts, "blkdemo-arm32-verify")
    nbytes = mib << 20

    def found(seg: list, what: str) -> list:
        return [m for m in (re.search(rx % what, line) for line in seg) if m]

    wl, vw, vv = found(w, "write"), found(w, "verify"), found(v, "verify")
    tally.check(any(l.startswith("blkdemo: disk: ") for l in w), "the disk connected (`blkdemo: disk:`)")
    tally.check(bool(wl) and int(wl[0].group(1)) == nbytes, f"wrote {nbytes} bytes")
    tally.check(bool(vw) and vw[0].group(4) == "ok", "read back equal to what was written")
    tally.check(bool(vv) and bool(wl) and vv[0].group(4) == "ok" and vv[0].group(2) == wl[0].group(2),
                "after a restart the disk still holds the pattern")
    for seg, name in ((w, "write"), (v, "verify")):
        n = f"blkdemo-arm32-{name}"
        tally.check(f"RIG end {n}" in seg and f"RIG crashed {n}" not in seg
                    and f"RIG timeout {n}" not in seg, f"the {name} run powered off by itself")
    if wl and vw:
        bench.append(f"blkdemo-arm32: write {nbytes / int(wl[0].group(3)):.1f} MB/s (incl. flush), "
                     f"read {nbytes / int(vw[0].group(3)):.1f} MB/s")


def main(argv=None) -> int:
    """Runs the test; see the module doc."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--selftest", type=Path, default=REPO / "target/images/arm32/selftest")
    ap.add_argument("--netdemo", type=Path, default=REPO / "target/images/arm32/netdemo",
                    help="the netdemo image; `none` skips the network test")
    ap.add_argument("--blkdemo", type=Path, default=REPO / "target/images/arm32/blkdemo",
                    help="the blkdemo image; `none` skips the disk test")
    ap.add_argument("--firewall", type=Path, default=REPO / "target/images/arm32/firewall",
                    help="the firewall image; `none` skips the firewall smoke test (needs netdemo)")
    ap.add_argument("--mib", type=int, default=16,
                    help="MiB each way over TCP and onto the disk (multiple of 16)")
    ap.add_argument("--pings", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=1200.0)
    ap.add_argument("--log", type=Path)
    ap.add_argument("--quiet", action="store_true", help="do not stream the serial output")
    args = ap.parse_args(argv)
    with_net = str(args.netdemo) != "none"
    with_blk = str(args.blkdemo) != "none"
    with_fw = str(args.firewall) != "none" and with_net
    if args.mib % 16 or args.mib <= 0 or args.pings <= 0:
        ap.error("--mib takes a positive multiple of 16, --pings a positive count")
    for image in ([args.selftest] + ([args.netdemo] if with_net else []) + ([args.blkdemo] if with_blk else [])
                  + ([args.firewall] if with_fw else [])):
        if not image.is_file():
            print(f"test_arm32: no image at {image}; run `make images`", file=sys.stderr)
            return 2

    guests = [
        (args.selftest, "selftest"),
        (REPO / "rig/dom0/xlcase.sh", "xlcase.sh"),
        (REPO / "configs/selftest-arm32.cfg", "selftest-arm32.cfg"),
    ]
    if with_net:
        guests += [
            (args.netdemo, "netdemo"),
            (REPO / "rig/dom0/netcase.sh", "netcase.sh"),
            (REPO / f"configs/{NETDEMO}.cfg", f"{NETDEMO}.cfg"),
        ]
    if with_blk:
        guests += [(args.blkdemo, "blkdemo"), (REPO / "configs/blkdemo-arm32.cfg", "blkdemo-arm32.cfg")]
    if with_fw:
        guests += [(args.firewall, "firewall"), (REPO / "rig/dom0/fwsmoke.sh", "fwsmoke.sh"),
                   (REPO / f"configs/{FIREWALL}.cfg", f"{FIREWALL}.cfg")]
    xenrig.exit_on_sigterm()
    result = xenrig.run_script(
        dom0_script(with_net, with_blk, args.mib, args.pings, with_fw), guests, arch="arm32",
        timeout=args.timeout, log=args.log, echo=not args.quiet,
    )

    rig = test_selftest.Tally("rig")
    rig.check(result.rc == 0, f"the dom0 script ended with rc {result.rc}"
              + (" (timeout)" if result.timed_out else ""))
    case_failures, case_times = xenrig.case_report(
        result, [c.name for c in dom0_cases(with_net, with_blk, args.mib, args.pings, with_fw)
                 if c.name != test_selftest.HANG_PROBE])
    for f in case_failures:
        rig.check(False, f)
    test_selftest.assert_hang_probe(rig, result)
    for w in case_times:
        print(f"rig: {w}")
    st = test_selftest.Tally("selftest-arm32")
    names = test_selftest.case_names("arm32")
    test_selftest.assert_normal(st, result.lines, names["normal"])
    test_selftest.assert_panic(st, result.lines, names["panic"])
    test_selftest.assert_reboot(st, result.lines, names["reboot"])
    test_selftest.assert_faults(st, result.lines, "arm32")
    # The arm32 entry prints the attributes its MMU map gives Xen's shared
    # pages (read back from the translation table) and SCTLR's cache bits.
    seg = [l for _, l in test_selftest.segment(result.lines, names["normal"])]
    for page in ("shared info", "console ring"):
        want = (f"moat arm32: {page} page: Normal inner WB-WA outer WB-WA inner-shareable "
                "(MMU on, D-cache on, I-cache on)")
        st.check(want in seg, f"no `{want}` line")
    tallies = [rig, st]
    bench: list = []
    texts = [l for _, l in result.lines]
    if with_net:
        net = test_selftest.Tally(NETDEMO)
        passed, failures = test_netdemo.check_type(NETDEMO, texts, args.mib, args.pings, False, bench)
        net.passed, net.failures = passed, failures
        tallies.append(net)
    if with_blk:
        blk = test_selftest.Tally("blkdemo-arm32")
        check_blkdemo(blk, texts, args.mib, bench)
        tallies.append(blk)

    if with_fw:
        fw = test_selftest.Tally(FIREWALL)
        for word in FIREWALL_WORDS:
            got = [l.split()[2:] for l in texts if l.startswith(f"RIG fwsmoke-{word} ")]
            fw.check(bool(got) and got[0][:1] == ["ok"], f"fwsmoke-{word}: {got[:1] or 'not reached'}")
            if word == "forwarding" and got and got[0][:1] == ["ok"] and len(got[0]) == 3:
                bench.append(f"{FIREWALL}: xl create -> forwarding: {float(got[0][2]) - float(got[0][1]):.1f} s")
        tallies.append(fw)
    test_selftest.print_benchmarks(result.lines, ["arm32"])
    for b in bench:
        print(f"  bench {b}")
    failures = [f for t in tallies for f in t.failures]
    if failures:
        print(f"FAILED assertions ({len(failures)}):")
        for f in failures:
            print(f"  - {f}")
    for t in tallies:
        print(f"{t.label}: {t.passed} passed, {len(t.failures)} failed")
    print(f"{sum(t.passed for t in tallies)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
