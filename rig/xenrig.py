#!/usr/bin/env python3
"""The real-Xen test rig: boots Debian's Xen under QEMU (TCG) with a Debian
Linux PV dom0, runs a shell script in dom0 and reports its serial output.

Command line:

    python3 rig/xenrig.py [--arch amd64|arm32] [--guest HOSTPATH[:NAME]]...
                          [--script FILE | --interactive]
                          [--timeout SECONDS] [--log FILE]

Each --guest file is placed in dom0 as /guest/NAME (NAME defaults to the
file's base name), together with the --script as /guest/run.sh, in a small
per-run initramfs appended to the base one built by rig/fetch.sh. dom0's
/init (rig/dom0/init) runs the script, prints `MOAT-RIG-EXIT <rc>` and powers
off. Every serial line is printed with the seconds since QEMU started. The
exit status is the script's rc, 124 on timeout, and 125 when the rig itself
failed (QEMU exited early, or dom0 could not be set up). Without --script or
--interactive, the script is `xl info; xl list`, a smoke test of the rig.

As a library: `run_script(...)` returns a `RunResult` with every
(timestamp, line) pair, for tests to assert on.

Only the Python standard library is used.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import io
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

RIG_DIR = Path(__file__).resolve().parent

#: Exit status when the run hit its time limit (the same as timeout(1)).
RC_TIMEOUT = 124
#: Exit status when the rig failed: QEMU exited before the marker, or dom0's
#: setup failed (its /init prints this rc then).
RC_RIG_FAILED = 125

#: What dom0's /init prints when /guest/run.sh has finished.
EXIT_MARKER = re.compile(r"MOAT-RIG-EXIT (\d+)")

#: The script run when neither --script nor --interactive is given.
SMOKE_SCRIPT = "xl info\nxl list\n"

# Control characters other than tab: terminal escapes from the firmware and
# stray carriage returns, removed from the lines handed to callers (the raw
# log keeps them).
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[^[]|[\x00-\x08\x0b-\x1f\x7f]")


def cache_dir(arch: str) -> Path:
    """Where rig/fetch.sh keeps the packages and boot files of `arch`."""
    base = os.environ.get("MOAT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "moat")
    return Path(base) / f"rig-{arch}"


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """How to boot the rig on one architecture: amd64 (multiboot modules)
    or arm32 (a device tree naming modules QEMU's loader places in RAM)."""

    #: Debian architecture name, as in the cache directory.
    name: str
    #: The QEMU system emulator.
    qemu: str
    #: Builds the QEMU argument list from the boot directory and the
    #: complete dom0 initramfs of this run.
    qemu_args: Callable[[Path, Path], list]


def _multiboot_module(path: Path, cmdline: str) -> str:
    """One `-initrd` multiboot module: its path and command line. QEMU
    separates modules with commas, so a literal comma is doubled."""
    if " " in str(path):
        raise ValueError(f"QEMU's multiboot module list cannot hold a path with spaces: {path}")
    return f"{path} {cmdline}".strip().replace(",", ",,")


#: Xen's command line: serial console, a fixed dom0 size, every log line,
#: and eager FPU switching: with Xen's default on this (AMD-looking) CPU,
#: lazy switching of PV vCPUs' FPU state, dom0's userland is corrupted under
#: TCG (docs/testing.md, "dom0 userland corruption").
XEN_CMDLINE_AMD64 = (
    "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M "
    "loglvl=all guest_loglvl=all noreboot spec-ctrl=eager-fpu"
)

#: Extra words for Xen's command line, from the environment (experiments,
#: e.g. MOAT_XEN_CMDLINE_EXTRA="spec-ctrl=no-eager-fpu"); later words win.
XEN_CMDLINE_EXTRA_ENV = "MOAT_XEN_CMDLINE_EXTRA"


def xen_cmdline_amd64() -> str:
    """Xen's command line for this run: XEN_CMDLINE_AMD64 plus the words of
    $MOAT_XEN_CMDLINE_EXTRA (Xen takes the last of repeated options)."""
    extra = os.environ.get(XEN_CMDLINE_EXTRA_ENV, "").strip()
    return f"{XEN_CMDLINE_AMD64} {extra}".strip()
#: dom0 Linux's command line: console on Xen's console (hvc0).
DOM0_CMDLINE = "console=hvc0 earlyprintk=xen"


def _amd64_qemu_args(boot: Path, initrd: Path) -> list:
    modules = ",".join(
        [_multiboot_module(boot / "vmlinuz", DOM0_CMDLINE), _multiboot_module(initrd, "")]
    )
    return [
        # KVM here cannot run Xen (see docs/testing.md); TCG's -cpu max
        # emulates SVM with nested paging, which PVH guests need.
        "-accel", "tcg,thread=multi", "-cpu", "max",
        "-m", "2048", "-smp", "2",
        "-nographic", "-nic", "none", "-no-reboot",
        "-kernel", str(boot / "xen"),
        "-append", xen_cmdline_amd64(),
        "-initrd", modules,
    ]


#: Where the arm32 rig places dom0's kernel and initramfs in guest RAM
#: (QEMU virt's RAM starts at 0x40000000; Xen's zImage goes lower).
ARM_DOM0_KERNEL_ADDR = 0x42000000
ARM_DOM0_INITRD_ADDR = 0x44000000
#: QEMU's machine and options for arm32; rig/fetch.sh dumps the device tree
#: (boot/virt.dtb) with the same ones, so they must stay in step.
ARM_MACHINE = "virt,virtualization=on,gic-version=2"
ARM_QEMU = ["-cpu", "cortex-a15", "-m", "1024", "-smp", "2",
            "-nographic", "-nic", "none", "-no-reboot"]


def arm_module_nodes(kernel_size: int, initrd_size: int) -> list:
    """The fdtput commands (argument lists, without the program and file)
    that describe dom0's kernel and initramfs to Xen as multiboot modules
    under /chosen (docs/misc/arm/device-tree/booting.txt in Xen)."""
    if initrd_size > 0x10000000 or kernel_size > ARM_DOM0_INITRD_ADDR - ARM_DOM0_KERNEL_ADDR:
        raise ValueError("dom0 kernel or initramfs too large for the rig's layout")
    out = []
    for addr, size, kind in (
        (ARM_DOM0_KERNEL_ADDR, kernel_size, "multiboot,kernel"),
        (ARM_DOM0_INITRD_ADDR, initrd_size, "multiboot,ramdisk"),
    ):
        node = f"/chosen/module@{addr:x}"
        out.append(["-p", "-t", "s", node, "compatible", kind, "multiboot,module"])
        out.append(["-t", "x", node, "reg", "0", f"{addr:x}", "0", f"{size:x}"])
    return out


def _arm32_qemu_args(boot: Path, initrd: Path) -> list:
    dtb = initrd.parent / "virt.dtb"
    dtb.write_bytes((boot / "virt.dtb").read_bytes())
    kernel = boot / "vmlinuz"
    for args in arm_module_nodes(kernel.stat().st_size, initrd.stat().st_size):
        subprocess.run(["fdtput", str(dtb)] + args, check=True)
    return [
        "-M", ARM_MACHINE, "-accel", "tcg,thread=multi",
        *ARM_QEMU,
        "-dtb", str(dtb),
        # An "ARM boot executable zImage": QEMU enters it in Hyp mode.
        "-kernel", str(boot / "xen"),
        "-device", f"loader,file={kernel},addr={ARM_DOM0_KERNEL_ADDR:#x},force-raw=on",
        "-device", f"loader,file={initrd},addr={ARM_DOM0_INITRD_ADDR:#x},force-raw=on",
    ]


ARCHES = {
    "amd64": ArchSpec(name="amd64", qemu="qemu-system-x86_64", qemu_args=_amd64_qemu_args),
    "arm32": ArchSpec(name="arm32", qemu="qemu-system-arm", qemu_args=_arm32_qemu_args),
}


# ---------------------------------------------------------------- cpio ---


def _newc_entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    """One entry of a cpio archive in the "newc" format that Linux's
    initramfs unpacker reads: a 110-byte ASCII header, the NUL-terminated
    name and the data, each padded to 4 bytes."""
    fields = [
        ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0,
    ]  # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = bytearray(header + name.encode() + b"\0")
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return bytes(out)


def build_run_initramfs(files: Sequence[tuple]) -> bytes:
    """A gzip'd cpio archive holding `files`, a list of (name in /guest,
    content bytes, executable). Linux unpacks it over the base initramfs
    when the two are concatenated."""
    entries = [_newc_entry("guest", 0o040755, b"", 1)]
    for ino, (name, data, executable) in enumerate(files, start=2):
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"guest file name must be a plain file name: {name!r}")
        mode = 0o100755 if executable else 0o100644
        entries.append(_newc_entry(f"guest/{name}", mode, data, ino))
    entries.append(_newc_entry("TRAILER!!!", 0, b"", 0))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        gz.write(b"".join(entries))
    return buf.getvalue()


def parse_guest_arg(arg: str) -> tuple:
    """`HOSTPATH[:NAME]` -> (Path, NAME); NAME defaults to the base name."""
    host, sep, name = arg.rpartition(":")
    if not sep or "/" in name or not host:
        host, name = arg, os.path.basename(arg)
    return Path(host), name


# ----------------------------------------------------------------- run ---


@dataclasses.dataclass
class RunResult:
    """What one rig run produced."""

    #: The script's exit status, RC_TIMEOUT or RC_RIG_FAILED.
    rc: int
    #: Every serial line as (seconds since QEMU started, text without
    #: control characters).
    lines: list
    #: True when the run hit its time limit.
    timed_out: bool

    def first(self, pattern: str) -> Optional[tuple]:
        """The first (timestamp, line) whose line matches the regex."""
        rx = re.compile(pattern)
        return next(((t, l) for t, l in self.lines if rx.search(l)), None)


def fetch(arch: str = "amd64", quiet: bool = False) -> Path:
    """Runs rig/fetch.sh (a no-op when its cache is current) and returns the
    boot directory."""
    out = subprocess.DEVNULL if quiet else None
    subprocess.run([str(RIG_DIR / "fetch.sh"), "--arch", arch], check=True, stdout=out)
    return cache_dir(arch) / "boot"


def _die_with_parent() -> None:
    """Runs in the QEMU child before exec: asks Linux to SIGKILL it when
    this Python process dies, even by SIGKILL, so no QEMU is left behind."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: _stop() in the parent still ends QEMU


def _stop(proc: subprocess.Popen) -> None:
    """Ends QEMU: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _prepare(arch: str, guests: Iterable[tuple], script: Optional[str], workdir: Path) -> list:
    """Fetches the boot files, writes this run's initramfs into `workdir`
    and returns the QEMU command line."""
    spec = ARCHES.get(arch)
    if spec is None:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHES)}")
    boot = fetch(arch, quiet=True)
    files = []
    for host, name in guests:
        files.append((name, Path(host).read_bytes(), True))
    if script is not None:
        files.append(("run.sh", script.encode(), True))
    initrd = workdir / "dom0-initrd.cpio.gz"
    with open(initrd, "wb") as out:
        out.write((boot / "dom0-base.cpio.gz").read_bytes())
        out.write(build_run_initramfs(files))
    return [spec.qemu] + spec.qemu_args(boot, initrd)


def run_script(
    script: str,
    guests: Iterable[tuple] = (),
    arch: str = "amd64",
    timeout: float = 300.0,
    log: Optional[Path] = None,
    echo: bool = True,
) -> RunResult:
    """Boots the rig, runs `script` in dom0 as /guest/run.sh with `guests`
    ((host path, name) pairs) in /guest, and returns its output. With `echo`,
    every line is also printed as `[  SS.ss] line`. QEMU is always killed
    before this returns."""
    with tempfile.TemporaryDirectory(prefix="moat-rig-") as tmp:
        cmd = _prepare(arch, guests, script, Path(tmp))
        logf = open(log, "wb") if log else None
        lines: list = []
        start = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        rc: Optional[int] = None
        timed_out = False
        pending = b""
        try:
            fd = proc.stdout.fileno()
            while rc is None:
                left = start + timeout - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                ready, _, _ = select.select([fd], [], [], min(left, 1.0))
                if not ready:
                    continue
                chunk = os.read(fd, 65536)
                if logf:
                    logf.write(chunk)
                    logf.flush()
                if not chunk:
                    break  # QEMU exited
                pending += chunk
                *complete, pending = pending.split(b"\n")
                now = time.monotonic() - start
                for raw in complete:
                    text = _CONTROL.sub("", raw.decode("utf-8", "replace"))
                    lines.append((now, text))
                    if echo:
                        print(f"[{now:7.2f}] {text}", flush=True)
                    m = EXIT_MARKER.search(text)
                    if m:
                        rc = int(m.group(1))
                        break
        finally:
            _stop(proc)
            if logf:
                logf.close()
        if timed_out:
            if echo:
                print(f"[{time.monotonic() - start:7.2f}] xenrig: timeout after {timeout:.0f} s", flush=True)
            return RunResult(rc=RC_TIMEOUT, lines=lines, timed_out=True)
        if rc is None:
            if echo:
                print(f"xenrig: QEMU exited (status {proc.returncode}) before {EXIT_MARKER.pattern}", flush=True)
            return RunResult(rc=RC_RIG_FAILED, lines=lines, timed_out=False)
        return RunResult(rc=rc, lines=lines, timed_out=False)


def run_interactive(guests: Iterable[tuple], arch: str = "amd64") -> int:
    """Boots the rig with the terminal on the serial console and no script,
    so dom0 ends in a shell. QEMU's escape is Ctrl-A X."""
    with tempfile.TemporaryDirectory(prefix="moat-rig-") as tmp:
        cmd = _prepare(arch, guests, None, Path(tmp))
        print("xenrig: interactive; type Ctrl-A X to quit QEMU", flush=True)
        proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent)
        try:
            return proc.wait()
        finally:
            _stop(proc)


def exit_on_sigterm() -> None:
    """Turns SIGTERM (e.g. a CI job's timeout) into SystemExit, so the
    `finally` blocks that kill QEMU run."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(RC_TIMEOUT))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line described in the module's doc."""
    ap = argparse.ArgumentParser(description="Boot real Xen in QEMU and run a script in dom0.")
    ap.add_argument("--arch", default="amd64", choices=sorted(ARCHES))
    ap.add_argument("--guest", action="append", default=[], metavar="HOSTPATH[:NAME]",
                    help="a file to place in dom0 as /guest/NAME")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--script", type=Path, help="shell script run in dom0 (sh)")
    mode.add_argument("--interactive", action="store_true", help="a dom0 shell on this terminal")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    ap.add_argument("--log", type=Path, help="write the raw serial output here")
    args = ap.parse_args(argv)

    guests = [parse_guest_arg(g) for g in args.guest]
    for host, _ in guests:
        if not host.is_file():
            ap.error(f"--guest {host}: no such file")
    if args.interactive:
        return run_interactive(guests, args.arch)
    script = args.script.read_text() if args.script else SMOKE_SCRIPT
    exit_on_sigterm()
    result = run_script(script, guests, args.arch, args.timeout, args.log)
    return result.rc


if __name__ == "__main__":
    sys.exit(main())
