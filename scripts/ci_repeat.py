#!/usr/bin/env python3
"""Runs CI's command (`CI=1 bash .ci/run`) several times in a row, each on a
fresh clone of the repository's committed HEAD, and prints one line per run:
its result, wall time and slowest stage, plus a table of every stage.

This is how docs/testing.md's table of consecutive `make test` runs is
made (issue 18: five green runs in a row, two of them with an empty rig
cache).

usage: python3 scripts/ci_repeat.py [--runs N] [--cold 1,2] [--dir DIR]
                                    [--repo PATH] [--keep-going]

--cold lists the runs (1-based) that get an empty rig cache (MOAT_CACHE in
the run's own directory), so rig/fetch.sh downloads and builds everything
as on a new machine; the others use the usual cache (~/.cache/moat).
Each run's whole output, every line prefixed with the seconds since the run
started, is kept in DIR/run-N.log. Without --keep-going the series stops at
the first failed run (a series is only worth something unbroken).
Exit status: 0 when every run passed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: A stage starts at the first line matching its pattern (make echoes each
#: recipe line before running it). Order does not matter.
STAGES = [
    ("deps+fmt", re.compile(r"cargo fmt --all")),
    ("clippy", re.compile(r"cargo clippy --workspace")),
    ("host tests", re.compile(r"cargo test --workspace")),
    ("fuzz", re.compile(r"fuzz/run\.sh")),
    ("images", re.compile(r"cargo build --release .*--target x86_64-unknown-none")),
    ("selftest", re.compile(r"rig/test_selftest\.py")),
    ("netdemo", re.compile(r"rig/test_netdemo\.py")),
    ("blkdemo", re.compile(r"rig/test_blkdemo\.py")),
    ("firewall", re.compile(r"rig/test_firewall\.py")),
    ("arm32", re.compile(r"rig/test_arm32\.py")),
]

#: Lines worth repeating in the summary: each rig test's verdict.
VERDICT = re.compile(r"^(\S+: )?\d+ passed, \d+ failed|passed \d+|FAILED|^make: \*\*\*")


def stage_table(marks: list, end: float) -> list:
    """[(stage, seconds)] from the (time, stage) marks, in run order."""
    marks = sorted(marks)
    out = []
    for i, (t, name) in enumerate(marks):
        nxt = marks[i + 1][0] if i + 1 < len(marks) else end
        out.append((name, nxt - t))
    return out


def one_run(n: int, cold: bool, base: Path, repo: Path) -> dict:
    """Clones `repo` into base/run-N, runs CI there, returns its figures."""
    work = base / f"run-{n}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", str(repo), str(work / "moat")], check=True)
    head = subprocess.run(["git", "-C", str(work / "moat"), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    env = dict(os.environ, CI="1")
    if cold:
        env["MOAT_CACHE"] = str(work / "cache")
    log = base / f"run-{n}.log"
    start = time.monotonic()
    marks: list = []
    seen = set()
    verdicts = []
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", ".ci/run"], cwd=work / "moat", env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for raw in proc.stdout:
            t = time.monotonic() - start
            line = raw.decode("utf-8", "replace").rstrip("\n")
            out.write(f"[{t:8.1f}] {line}\n")
            out.flush()
            for name, rx in STAGES:
                if name not in seen and rx.search(line):
                    seen.add(name)
                    marks.append((t, name))
            if VERDICT.search(line):
                verdicts.append(line.strip())
        rc = proc.wait()
    wall = time.monotonic() - start
    stages = stage_table(marks, wall)
    slowest = max(stages, key=lambda s: s[1]) if stages else ("?", 0.0)
    return {"n": n, "head": head, "cold": cold, "rc": rc, "wall": wall, "stages": stages,
            "slowest": slowest, "verdicts": verdicts, "log": log}


def fmt_time(s: float) -> str:
    """Seconds as 12m34s."""
    return f"{int(s) // 60}m{int(s) % 60:02d}s"


def main(argv=None) -> int:
    """The command line of the module's doc."""
    ap = argparse.ArgumentParser(description="Run CI several times on fresh clones.")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold", default="1,2", help="runs (1-based) with an empty rig cache")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/moat-ci-runs"))
    ap.add_argument("--repo", type=Path, default=REPO)
    ap.add_argument("--keep-going", action="store_true")
    args = ap.parse_args(argv)
    cold = {int(x) for x in args.cold.split(",") if x.strip()}
    args.dir.mkdir(parents=True, exist_ok=True)
    results = []
    for n in range(1, args.runs + 1):
        print(f"ci_repeat: run {n} of {args.runs} ({'empty' if n in cold else 'warm'} rig cache) "
              f"started {time.strftime('%H:%M:%S')}", flush=True)
        r = one_run(n, n in cold, args.dir, args.repo)
        results.append(r)
        verdict = "passed" if r["rc"] == 0 else f"FAILED (rc {r['rc']})"
        print(f"ci_repeat: run {n} {r['head']} {verdict} in {fmt_time(r['wall'])}; slowest stage "
              f"{r['slowest'][0]} {fmt_time(r['slowest'][1])}; log {r['log']}", flush=True)
        for v in r["verdicts"]:
            print(f"    {v}", flush=True)
        print("    stages: " + ", ".join(f"{s} {fmt_time(t)}" for s, t in r["stages"]), flush=True)
        if r["rc"] != 0 and not args.keep_going:
            break
    print("\n| run | commit | rig cache | result | wall time | slowest stage |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['n']} | {r['head']} | {'empty' if r['cold'] else 'warm'} | "
              f"{'passed' if r['rc'] == 0 else 'failed'} | {fmt_time(r['wall'])} | "
              f"{r['slowest'][0]} ({fmt_time(r['slowest'][1])}) |")
    return 0 if results and all(r["rc"] == 0 for r in results) and len(results) == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
