#!/usr/bin/env python3
"""Checks that the service images are bit-for-bit reproducible: clones the
checkout's HEAD twice, into two directories of different names and depths,
runs `make images` in each (each clone with its own target directory), and
compares every image (amd64 ELFs and arm32 zImages) byte for byte.

Prints one row per image (size, sha256, same or DIFFERENT) and, for an
image that differs, the first differing bytes (`cmp -l`) and the section
the first difference falls in. Exit status 0 when every image is identical,
1 when any differs or is missing, 2 when a build fails.

With --reuse-target DIR, the images already built in DIR (a `make images`
target directory) stand for the first build and only one clone is built:
the cheaper form `make test` runs. It is skipped (exit 0, said so) when the
checkout has uncommitted changes: its images then carry a `-dirty` commit
that no clone can match.

usage: python3 scripts/reproduce.py [--workdir DIR] [--keep]
                                    [--reuse-target DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARCHES = {
    # arch directory under images/ -> the cargo target whose ELF it comes from
    "amd64": "x86_64-unknown-none",
    "arm32": "armv7a-none-eabihf",
}


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def sections(elf: bytes) -> list:
    """(name, file offset, size, address) of every section of a
    little-endian ELF32 or ELF64 file; raises ValueError otherwise."""
    if elf[:4] != b"\x7fELF" or elf[5] != 1:
        raise ValueError("not a little-endian ELF file")
    if elf[4] == 2:
        shoff, = struct.unpack_from("<Q", elf, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
        fmt = "<IIQQQQ"  # name, type, flags, addr, offset, size
    elif elf[4] == 1:
        shoff, = struct.unpack_from("<I", elf, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x2E)
        fmt = "<IIIIII"
    else:
        raise ValueError("unknown ELF class")
    raw = [struct.unpack_from(fmt, elf, shoff + i * shentsize) for i in range(shnum)]
    strtab_off, strtab_size = raw[shstrndx][4], raw[shstrndx][5]
    strtab = elf[strtab_off:strtab_off + strtab_size]
    out = []
    for name, _type, _flags, addr, offset, size in raw:
        end = strtab.find(b"\0", name)
        out.append((strtab[name:end].decode(errors="replace"), offset, size, addr))
    return out


def section_at(elf_path: Path, offset: int, zimage: bool) -> str:
    """The section holding byte `offset` of an image: a file offset of the
    ELF itself (amd64), or of the zImage made from it (arm32: the zImage
    starts at the ELF's entry address, arm32/zimage.py)."""
    try:
        elf = elf_path.read_bytes()
        secs = sections(elf)
        if zimage:
            entry, = struct.unpack_from("<I", elf, 0x18)
            addr = entry + offset
            for name, _off, size, saddr in secs:
                if name and saddr <= addr < saddr + size:
                    return f"{name} (address {addr:#x})"
            return f"no section (address {addr:#x})"
        for name, soff, size, _addr in secs:
            if name and soff <= offset < soff + size:
                return f"{name} (+{offset - soff:#x})"
        return "no section (ELF/program headers or padding)"
    except (OSError, ValueError, struct.error) as e:
        return f"unknown ({elf_path}: {e})"


def build_info(elf_path: Path) -> str:
    """The `.moat.build` section's strings, joined by spaces."""
    try:
        elf = elf_path.read_bytes()
        for name, off, size, _addr in sections(elf):
            if name == ".moat.build":
                parts = elf[off:off + size].split(b"\0")
                return " ".join(p.decode(errors="replace") for p in parts if p)
    except (OSError, ValueError, struct.error):
        pass
    return "(no .moat.build section)"


def build(checkout: Path, target: Path, log: Path, cargo_home: Path | None = None) -> float:
    """`make images` in `checkout` with its own target directory (and
    CARGO_HOME, if given); returns the wall time in seconds, exits 2 on
    failure."""
    env = dict(os.environ)
    if cargo_home:
        env["CARGO_HOME"] = str(cargo_home)
    # A parent make's variables (make reproduce TARGET_DIR=...) must not
    # reach the clones' builds.
    for k in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "CARGO_TARGET_DIR"):
        env.pop(k, None)
    print(f"reproduce: building {checkout} (log {log})", flush=True)
    start = time.monotonic()
    with open(log, "w") as f:
        rc = subprocess.run(
            ["make", "-C", str(checkout), "images", f"TARGET_DIR={target}"],
            env=env, stdout=f, stderr=subprocess.STDOUT,
        ).returncode
    took = time.monotonic() - start
    if rc != 0:
        print(f"reproduce: make images failed in {checkout} (exit {rc}); "
              f"last lines of {log}:")
        print("\n".join(log.read_text(errors="replace").splitlines()[-20:]))
        sys.exit(2)
    print(f"reproduce: built in {took:.0f} s", flush=True)
    return took


def clone(dest: Path, commit: str) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(REPO), str(dest)], check=True)
    subprocess.run(["git", "-c", "advice.detachedHead=false", "checkout", "-q", commit],
                   cwd=dest, check=True)
    return dest


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(target_a: Path, target_b: Path) -> bool:
    """Prints the table; True when every image is identical."""
    ok = True
    rows = []
    details = []
    for arch, triple in ARCHES.items():
        dir_a, dir_b = target_a / "images" / arch, target_b / "images" / arch
        names = sorted({p.name for p in dir_a.glob("*")} | {p.name for p in dir_b.glob("*")})
        if not names:
            ok = False
            rows.append((arch, "(none)", "-", "-", "MISSING"))
        for name in names:
            a, b = dir_a / name, dir_b / name
            if not a.is_file() or not b.is_file():
                ok = False
                rows.append((arch, name, "-", "-", "MISSING in " + ("first" if not a.is_file() else "second")))
                continue
            ha, hb = sha256(a), sha256(b)
            same = ha == hb
            size = str(a.stat().st_size) if a.stat().st_size == b.stat().st_size else \
                f"{a.stat().st_size}/{b.stat().st_size}"
            rows.append((arch, name, size, ha[:16], "same" if same else "DIFFERENT"))
            if same:
                continue
            ok = False
            cmp = subprocess.run(["cmp", "-l", str(a), str(b)], capture_output=True, text=True)
            lines = cmp.stdout.splitlines()
            first = int(lines[0].split()[0]) - 1 if lines else min(a.stat().st_size, b.stat().st_size)
            elf = (target_a / triple / "release" / name) if arch == "arm32" else a
            details.append(
                f"{arch}/{name}: {len(lines)} bytes differ"
                + ("" if a.stat().st_size == b.stat().st_size else " (and the sizes)")
                + f"; first at offset {first:#x}, in {section_at(elf, first, arch == 'arm32')}\n"
                + "  cmp -l (offset, first build's byte, second's, octal):\n"
                + "\n".join("    " + l for l in lines[:8])
            )
    widths = [max(len(r[i]) for r in rows + [("arch", "image", "bytes", "sha256", "")]) for i in range(5)]
    print()
    for r in [("arch", "image", "bytes", "sha256", "")] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for d in details:
        print()
        print(d)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, help="where the clones go (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the clones and their builds")
    ap.add_argument("--reuse-target", type=Path,
                    help="a target directory whose images stand for the first build (clean checkout only)")
    args = ap.parse_args()

    commit = git("rev-parse", "HEAD")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="moat-reproduce-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"reproduce: commit {commit}, work directory {workdir}")
    times = []
    try:
        if args.reuse_target:
            if git("status", "--porcelain", "--untracked-files=no"):
                print("reproduce: SKIPPED: the checkout has uncommitted changes, so its images "
                      "carry a -dirty commit no clean clone matches (CI's checkout is clean; "
                      "make reproduce compares two clean clones)")
                return 0
            target_a = args.reuse_target.resolve()
            print(f"reproduce: first build: the images in {target_a}")
        else:
            first = clone(workdir / "a" / "moat", commit)
            target_a = first / "target"
            times.append(build(first, target_a, workdir / "build-a.log"))
        # A second checkout at another depth, with a longer name, so that any
        # path that leaks into an image changes its bytes and its layout.
        second = clone(workdir / "second-build" / "checkout-of-moat", commit)
        target_b = workdir / "second-build" / "separate-target-dir"
        # Another CARGO_HOME too (as another user would have), sharing the
        # first one's downloaded crates: the registry's sources then sit
        # under another path.
        home = Path(os.environ.get("CARGO_HOME") or Path.home() / ".cargo")
        cargo_home = workdir / "second-build" / "another-cargo-home"
        cargo_home.mkdir(parents=True, exist_ok=True)
        if (home / "registry").is_dir() and not (cargo_home / "registry").exists():
            (cargo_home / "registry").symlink_to(home / "registry")
        times.append(build(second, target_b, workdir / "build-b.log", cargo_home))

        ok = compare(target_a, target_b)
        print()
        print("reproduce: build times " + ", ".join(f"{t:.0f} s" for t in times))
        print("reproduce: " + build_info(target_b / "images" / "amd64" / "selftest"))
        print("reproduce: " + ("every image is identical" if ok else "IMAGES DIFFER"))
        return 0 if ok else 1
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
