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
import fcntl
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


#: QEMU's CPU model for the amd64 rig, from the environment (experiments,
#: e.g. MOAT_QEMU_CPU="max,-xsave" in rig/stress.py --cpu); default "max".
QEMU_CPU_ENV = "MOAT_QEMU_CPU"


def qemu_cpu_amd64() -> str:
    """QEMU's -cpu for this run: $MOAT_QEMU_CPU, or max."""
    return os.environ.get(QEMU_CPU_ENV, "").strip() or "max"


#: dom0 Linux's command line: console on Xen's console (hvc0).
DOM0_CMDLINE = "console=hvc0 earlyprintk=xen"


def _amd64_qemu_args(boot: Path, initrd: Path) -> list:
    modules = ",".join(
        [_multiboot_module(boot / "vmlinuz", DOM0_CMDLINE), _multiboot_module(initrd, "")]
    )
    return [
        # KVM here cannot run Xen (see docs/testing.md); TCG's -cpu max
        # emulates SVM with nested paging, which PVH guests need.
        "-accel", "tcg,thread=multi", "-cpu", qemu_cpu_amd64(),
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


#: Words added to Xen's command line on the arm32 rig (the device tree's
#: /chosen xen,xen-bootargs, written by rig/fetch.sh). Xen on Arm defaults
#: to XSM's SILO mode, which lets a domU share grants and event channels
#: only with dom0: a driver domain's clients (a client vif whose backend is
#: the firewall VM) fail with EPERM at evtchn_alloc_unbound. `xsm=dummy`
#: is the policy amd64 Xen runs with (docs/firewall.md, "arm32").
ARM_XEN_EXTRA = "xsm=dummy"


def _arm32_qemu_args(boot: Path, initrd: Path) -> list:
    dtb = initrd.parent / "virt.dtb"
    dtb.write_bytes((boot / "virt.dtb").read_bytes())
    kernel = boot / "vmlinuz"
    for args in arm_module_nodes(kernel.stat().st_size, initrd.stat().st_size):
        subprocess.run(["fdtput", str(dtb)] + args, check=True)
    bootargs = subprocess.run(["fdtget", str(dtb), "/chosen", "xen,xen-bootargs"], check=True,
                              capture_output=True, text=True).stdout.strip()
    if ARM_XEN_EXTRA not in bootargs.split():
        subprocess.run(["fdtput", "-t", "s", str(dtb), "/chosen", "xen,xen-bootargs",
                        f"{bootargs} {ARM_XEN_EXTRA}"], check=True)
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


#: Seconds a case may run past its own limit before the host side calls dom0
#: wedged: dom0's timeout handling (process tree, kill, `xl destroy` of the
#: case's domains under `timeout 30`) must fit in it, under TCG and load.
CASE_GRACE = 90.0
#: How often one run may reboot the rig after a wedged case.
MAX_REBOOTS = 2

_CASE_BEGIN = re.compile(r"^RIG case-begin (\S+) (\d+)")
_CASE_END = re.compile(r"^RIG case-end (\S+) rc=(-?\d+)")
_CASE_TIMEOUT = re.compile(r"^RIG case-timeout (\S+) ")
_CASE_SKIP = re.compile(r"^RIG case-skip (\S+) ?(.*)")
_CASE_DETAIL = re.compile(r"^RIG (case-running|case-stack|case-destroy|case-domains) (\S+) (.*)")
_CASE_FAULT = re.compile(r"^RIG (?:case-fault (\S+):|tool-killed (\S+)) (.*)")
#: Lines that say a dom0 tool died, whoever printed them (xl's
#: "daemonizing child ... died due to fatal signal", ash's "Segmentation
#: fault", glibc's heap checks). Guest consoles that test scripts print
#: with a GUEST/BRIDGE prefix are not dom0's.
TOOL_DEATH = re.compile(
    r"died due to fatal signal|Segmentation fault|Illegal instruction|Bus error|"
    r"corrupted double-linked list|corrupted size vs|malloc\(\): |free\(\): |double free or corruption"
)
_NOT_DOM0 = re.compile(r"^(GUEST |BRIDGE )")


@dataclasses.dataclass
class CaseResult:
    """One case of a dom0 script run by rig_case (rig/dom0/case.sh)."""

    name: str
    #: dom0's time limit, seconds (0 when never begun).
    limit: int = 0
    #: running (begun, no end seen), ended, timeout (dom0 killed it at its
    #: limit), wedged (no end within limit + CASE_GRACE: the host rebooted
    #: the rig), skipped (rig_case did not run it), unfinished (the run
    #: ended while it ran: QEMU died or the whole run's time limit).
    status: str = "running"
    rc: Optional[int] = None
    #: Which boot of the run (1, 2, ...) it ran in.
    boot: int = 0
    #: Seconds since the first QEMU start.
    begin: float = 0.0
    end: Optional[float] = None
    #: Why it was skipped, wedged or unfinished.
    reason: str = ""
    #: What dom0 reported at a timeout: the process tree, the domains
    #: destroyed.
    details: list = dataclasses.field(default_factory=list)
    #: Lines that say a dom0 tool died or the kernel saw a crash.
    faults: list = dataclasses.field(default_factory=list)

    @property
    def completed(self) -> bool:
        """The case ran to its end within its limit."""
        return self.status == "ended"

    def problem(self) -> Optional[str]:
        """None when the case ran to its end in time and no dom0 tool died;
        otherwise one line saying what went wrong."""
        if self.status == "ended":
            if self.faults:
                return f"a dom0 tool died during the case: {' | '.join(self.faults[:3])}"
            return None
        if self.status == "timeout":
            running = [d for d in self.details if d.startswith("case-running")]
            procs = "; ".join(" ".join(d.split()[4:]) for d in running[-6:]) or "nothing listed"
            destroyed = [" ".join(d.split()[2:]) for d in self.details if d.startswith("case-destroy")]
            return (f"timed out in dom0 after its limit of {self.limit} s; running then: {procs}"
                    + (f"; destroyed {', '.join(destroyed)}" if destroyed else ""))
        if self.status == "wedged":
            return f"dom0 wedged: {self.reason}"
        if self.status == "skipped":
            return f"not run: {self.reason}"
        return f"did not finish: {self.reason or 'no case-end line'}"


class CaseWatch:
    """Follows `RIG case-*` lines (rig/dom0/case.sh) of the serial output:
    which case runs, since when, how each ended; says when the open case
    has gone past its limit plus `grace` without an end (dom0 wedged)."""

    def __init__(self, grace: float = CASE_GRACE):
        self.grace = grace
        self.cases: dict = {}
        self.open: Optional[CaseResult] = None
        self.boot = 1

    def new_boot(self) -> None:
        """A new boot of the rig begins: no case is open."""
        self.boot += 1
        self.open = None

    def feed(self, t: float, line: str) -> None:
        """Takes one serial line seen at `t`."""
        if not line.startswith("RIG "):
            if self.open and not _NOT_DOM0.match(line) and TOOL_DEATH.search(line):
                self.open.faults.append(line.strip())
            return
        m = _CASE_BEGIN.match(line)
        if m:
            c = CaseResult(name=m.group(1), limit=int(m.group(2)), boot=self.boot, begin=t)
            self.cases[c.name] = c
            self.open = c
            return
        m = _CASE_END.match(line)
        if m:
            c = self.cases.get(m.group(1))
            if c is not None:
                c.rc, c.end = int(m.group(2)), t
                if c.status == "running":
                    c.status = "ended"
            if self.open is c:
                self.open = None
            return
        m = _CASE_TIMEOUT.match(line)
        if m and m.group(1) in self.cases:
            self.cases[m.group(1)].status = "timeout"
            return
        m = _CASE_SKIP.match(line)
        if m:
            c = self.cases.get(m.group(1))
            if c is None or c.status == "skipped":
                self.cases[m.group(1)] = CaseResult(name=m.group(1), status="skipped", boot=self.boot,
                                                    begin=t, reason=m.group(2))
            return
        m = _CASE_DETAIL.match(line)
        if m and m.group(2) in self.cases:
            self.cases[m.group(2)].details.append(f"{m.group(1)} {m.group(2)} {m.group(3)}")
            return
        m = _CASE_FAULT.match(line)
        if m:
            c = self.cases.get(m.group(1) or m.group(2))
            if c is not None:
                c.faults.append(line[len("RIG "):])
            return

    def wedged(self, now: float) -> Optional[CaseResult]:
        """The open case, if it has gone past its limit plus the grace."""
        c = self.open
        if c is not None and now > c.begin + c.limit + self.grace:
            return c
        return None

    def skip_file(self) -> bytes:
        """The /guest/rig-skip of the next boot: `done NAME` for each case
        that ended or was skipped, `wedged NAME` for those that wedged."""
        out = []
        for c in self.cases.values():
            if c.status == "wedged":
                out.append(f"wedged {c.name}\n")
            elif c.status != "running":
                out.append(f"done {c.name}\n")
        return "".join(out).encode()


@dataclasses.dataclass
class Case:
    """One case of a dom0 script, run by rig_case (rig/dom0/case.sh)."""

    #: Its name (unique in the script; `RIG case-* NAME` lines).
    name: str
    #: dom0's time limit, seconds: at that point the case's processes are
    #: killed and the domains it created destroyed.
    limit: int
    #: Shell lines of its body (a function of the generated script, so
    #: environment assignments and pipes work as written).
    body: Sequence[str]
    #: A setup case (e.g. starting a driver domain): after a reboot of the
    #: rig it runs again, since what it set up is gone.
    setup: bool = False
    #: Run only if this case ended in time in the same boot.
    after: Optional[str] = None


def cases_script(cases: Sequence[Case], header: Sequence[str] = (), footer: Sequence[str] = ()) -> str:
    """A dom0 script running each of `cases` under its own limit: the case
    library, one shell function per case, then one `rig_case` line per
    case. `header` and `footer` lines run outside any case."""
    out = ["# generated for rig/xenrig.py's run_script", ". ${RIG_GUEST:-/guest}/case.sh"]
    out += list(header)
    seen = set()
    for i, c in enumerate(cases):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", c.name) or c.name in seen:
            raise ValueError(f"case name {c.name!r}: not unique or not [A-Za-z0-9_.-]+")
        seen.add(c.name)
        out.append(f"rig_case_{i}() {{")
        out += [f"  {line}" for line in c.body]
        out.append("}")
    for i, c in enumerate(cases):
        flags = ("-s " if c.setup else "") + (f"-a {c.after} " if c.after else "")
        out.append(f"rig_case {flags}{c.name} {int(c.limit)} rig_case_{i}")
    out += list(footer)
    return "\n".join(out) + "\n"


def case_report(result: "RunResult", names: Iterable[str]) -> tuple:
    """(failures, notes) of the cases `names` of a run: a case that timed
    out, wedged dom0, was skipped or never ran, and one during which a dom0
    tool died (killed by a signal, a glibc heap abort, a kernel-reported
    segfault: the rig's own fault, which must not happen since Xen switches
    the FPU eagerly, docs/testing.md), is a failure with its reason. The
    notes list the cases' wall times."""
    failures, notes = [], []
    for name in names:
        c = result.case(name)
        problem = c.problem()
        if problem is not None:
            failures.append(f"case {name}: {problem}")
        if c.end is not None:
            notes.append(f"case {name}: {c.end - c.begin:.1f} s of its {c.limit} s")
    return failures, notes


@dataclasses.dataclass
class RunResult:
    """What one rig run produced."""

    #: The script's exit status, RC_TIMEOUT or RC_RIG_FAILED.
    rc: int
    #: Every serial line as (seconds since QEMU started, text without
    #: control characters), of every boot; the host's own notes start with
    #: "xenrig: ".
    lines: list
    #: True when the run hit its time limit.
    timed_out: bool
    #: The cases of rig_case (rig/dom0/case.sh) by name.
    cases: dict = dataclasses.field(default_factory=dict)
    #: How many times the rig booted (1 + reboots after wedged cases).
    boots: int = 1

    def first(self, pattern: str) -> Optional[tuple]:
        """The first (timestamp, line) whose line matches the regex."""
        rx = re.compile(pattern)
        return next(((t, l) for t, l in self.lines if rx.search(l)), None)

    def case(self, name: str) -> CaseResult:
        """The case `name`; one with status "missing" if it never began."""
        c = self.cases.get(name)
        if c is None:
            why = "the run ended before it" if self.rc != 0 else "the dom0 script never ran it"
            c = CaseResult(name=name, status="missing",
                           reason=f"never began ({why}; run rc {self.rc}{', timeout' if self.timed_out else ''})")
        return c


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


def _prepare(arch: str, files: Sequence[tuple], workdir: Path) -> list:
    """Fetches the boot files, writes this run's initramfs (with `files`,
    see build_run_initramfs) into `workdir` and returns the QEMU command
    line."""
    spec = ARCHES.get(arch)
    if spec is None:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHES)}")
    boot = fetch(arch, quiet=True)
    initrd = workdir / "dom0-initrd.cpio.gz"
    with open(initrd, "wb") as out:
        out.write((boot / "dom0-base.cpio.gz").read_bytes())
        out.write(build_run_initramfs(files))
    return [spec.qemu] + spec.qemu_args(boot, initrd)


def _guest_files(guests: Iterable[tuple], script: Optional[str]) -> list:
    """The /guest files of a run: the guests, the case library, run.sh."""
    files = [(name, Path(host).read_bytes(), True) for host, name in guests]
    files.append(("case.sh", (RIG_DIR / "dom0" / "case.sh").read_bytes(), False))
    if script is not None:
        files.append(("run.sh", script.encode(), True))
    return files


def _monitor(sock: Path, command: str, timeout: float = 10.0) -> str:
    """`command` on QEMU's human monitor at `sock`; its answer (text up to
    the next prompt), or why there is none."""
    import socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            buf = b""
            while not buf.endswith(b"(qemu) "):
                chunk = s.recv(65536)
                if not chunk:
                    return "monitor closed"
                buf += chunk
            s.sendall(command.encode() + b"\n")
            buf = b""
            while not buf.endswith(b"(qemu) "):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except OSError as e:
        return f"monitor: {e}"
    text = _CONTROL.sub("", buf.decode("utf-8", "replace").replace("\r", ""))
    lines = [l for l in text.split("\n") if l.strip() and not l.startswith("(qemu)")]
    # The first line echoes the command.
    return "\n".join(lines[1:] if lines and command in lines[0] else lines)


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process `pid` so far, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wedge_probe(proc: subprocess.Popen, sock: Path) -> list:
    """What a silent rig is doing, for the failure's record: whether QEMU
    still burns CPU (vCPUs spinning) or sleeps (everything waiting), and
    where each vCPU is (`info cpus`, and RIP/PC with the privilege level
    from `info registers -a`: Xen, dom0's kernel or dom0's userland)."""
    out = []
    try:
        a = _cpu_seconds(proc.pid)
        time.sleep(3.0)
        b = _cpu_seconds(proc.pid)
        out.append(f"QEMU used {b - a:.2f} s of CPU in 3 s (about {(b - a) / 3:.1f} host CPUs busy)")
    except (OSError, ValueError, IndexError) as e:
        out.append(f"QEMU CPU time unreadable: {e}")
    out += [f"info cpus: {l}" for l in _monitor(sock, "info cpus").split("\n")]
    regs = _monitor(sock, "info registers -a")
    keep = re.compile(r"^(CPU#|RIP=|RAX=|CS =|CR0=|R15=|PC=|PSR=|CPSR=)")
    out += [f"registers: {l}" for l in regs.split("\n") if keep.search(l.strip())][:40]
    return out


def _qemu_booter(arch: str, workdir: Path) -> Callable:
    """A boot function for _run_boots: starts QEMU with `files` in /guest,
    its human monitor on a socket in `workdir` (for wedge_probe)."""
    boots = [0]

    def boot(files: list) -> tuple:
        cmd = _prepare(arch, files, workdir)
        boots[0] += 1
        sock = workdir / f"monitor-{boots[0]}.sock"
        cmd += ["-monitor", f"unix:{sock},server=on,wait=off"]
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        return proc, lambda: _stop(proc), lambda: wedge_probe(proc, sock)
    return boot


#: Rigs (QEMU) that may run at once on this machine, over every process
#: (`MOAT_RIG_SLOTS`, default 2): each rig is a 2-vCPU TCG guest, and on a
#: 2-core machine five at once made every one 5-10 times slower and
#: tripped their time limits. A run waits for a free slot before it boots;
#: its timeout counts from then. 0 means no limit.
RIG_SLOTS_DIR = Path(os.environ.get("MOAT_RIG_SLOTS_DIR", "/tmp/moat-rig-slots"))


def _rig_slots() -> int:
    try:
        return max(0, int(os.environ.get("MOAT_RIG_SLOTS", "2")))
    except ValueError:
        return 2


def acquire_rig_slot(echo: bool = True):
    """Take one of the machine's rig slots (an flock'd file, released when
    the returned file is closed or the process dies); waits while all are
    taken. None when slots are unlimited."""
    n = _rig_slots()
    if n == 0:
        return None
    RIG_SLOTS_DIR.mkdir(parents=True, exist_ok=True)
    waited = None
    while True:
        for k in range(n):
            f = open(RIG_SLOTS_DIR / f"slot-{k}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()} {' '.join(sys.argv)[:200]}\n")
            f.flush()
            if waited is not None and echo:
                print(f"xenrig: got rig slot {k} after {time.monotonic() - waited:.0f} s", flush=True)
            return f
        if waited is None:
            waited = time.monotonic()
            if echo:
                print(f"xenrig: all {n} rig slots of this machine are taken ({RIG_SLOTS_DIR}); waiting",
                      flush=True)
        time.sleep(2)


def run_script(
    script: str,
    guests: Iterable[tuple] = (),
    arch: str = "amd64",
    timeout: float = 300.0,
    log: Optional[Path] = None,
    echo: bool = True,
    case_grace: float = CASE_GRACE,
    max_reboots: int = MAX_REBOOTS,
) -> RunResult:
    """Boots the rig, runs `script` in dom0 as /guest/run.sh with `guests`
    ((host path, name) pairs) and rig/dom0/case.sh in /guest, and returns
    its output. With `echo`, every line is also printed as `[  SS.ss] line`.

    When a case of rig_case (rig/dom0/case.sh) has not ended `case_grace`
    seconds after its own limit, dom0 is wedged: the rig is booted again
    (at most `max_reboots` times) with /guest/rig-skip naming the cases
    that already ran, and the script goes on after them. `timeout` bounds
    the whole run, all boots together. QEMU is always killed before this
    returns."""
    files = _guest_files(guests, script)
    slot = acquire_rig_slot(echo)
    try:
        with tempfile.TemporaryDirectory(prefix="moat-rig-") as tmp:
            return _run_boots(_qemu_booter(arch, Path(tmp)), files, timeout, log, echo, case_grace,
                              max_reboots)
    finally:
        if slot is not None:
            slot.close()


def _run_boots(boot: Callable, files: list, timeout: float, log: Optional[Path], echo: bool,
               case_grace: float, max_reboots: int) -> RunResult:
    """The run loop of run_script, over boots: `boot(files)` starts one and
    returns (a Popen whose stdout is the serial line, a function that stops
    it)."""
    start = time.monotonic()
    lines: list = []
    watch = CaseWatch(case_grace)
    logf = open(log, "wb") if log else None

    def note(text: str) -> None:
        now = time.monotonic() - start
        lines.append((now, text))
        if echo:
            print(f"[{now:7.2f}] {text}", flush=True)
        if logf:
            logf.write(f"\n{text}\n".encode())
            logf.flush()

    try:
        boots = 0
        while True:
            boots += 1
            extra = [("rig-skip", watch.skip_file(), False)] if boots > 1 else []
            proc, stop, *probe = boot(files + extra)
            seen: list = []
            try:
                rc, how = _follow(proc, start, timeout, lines, watch, logf, echo)
                if how == "wedged" and probe:
                    seen = probe[0]()
                    for line in seen:
                        note(f"xenrig: wedge-probe: {line}")
            finally:
                stop()
            if how == "exit":
                return RunResult(rc=rc, lines=lines, timed_out=False, cases=watch.cases, boots=boots)
            c = watch.open
            if how == "timeout":
                note(f"xenrig: timeout after {timeout:.0f} s")
                if c is not None:
                    c.status, c.reason = "unfinished", f"the whole run's limit of {timeout:.0f} s passed"
                return RunResult(rc=RC_TIMEOUT, lines=lines, timed_out=True, cases=watch.cases, boots=boots)
            # wedged, or QEMU exited before the marker
            if c is None:
                note(f"xenrig: QEMU exited (status {proc.returncode}) before {EXIT_MARKER.pattern}")
                return RunResult(rc=RC_RIG_FAILED, lines=lines, timed_out=False, cases=watch.cases, boots=boots)
            last = [l for _, l in lines if not l.startswith("xenrig: ")][-8:]
            if how == "wedged":
                where = [l.split("registers: ", 1)[1].split(" RFL")[0] + (" HLT" if "HLT=1" in l else "")
                         for l in seen if re.search(r"registers: (RIP|PC)=", l)]
                probed = (f"; {seen[0]}; vCPUs at {', '.join(where) or 'unknown'}" if seen else "")
                why = (f"no `RIG case-end {c.name}` within its limit of {c.limit} s + {case_grace:.0f} s "
                       f"(boot {boots}){probed}; last lines: {' | '.join(last)}")
            else:
                why = f"QEMU exited (status {proc.returncode}) during the case; last lines: {' | '.join(last)}"
            c.status, c.reason = "wedged", why
            note(f"xenrig: case {c.name} wedged dom0: {why}")
            if boots > max_reboots:
                note(f"xenrig: not rebooting again ({max_reboots} reboots already)")
                return RunResult(rc=RC_TIMEOUT if how == "wedged" else RC_RIG_FAILED, lines=lines,
                                 timed_out=False, cases=watch.cases, boots=boots)
            note(f"xenrig: killed QEMU; booting the rig again, skipping the {len(watch.cases)} cases that began")
            watch.new_boot()
    finally:
        if logf:
            logf.close()


def _follow(proc: subprocess.Popen, start: float, timeout: float, lines: list, watch: CaseWatch,
            logf, echo: bool) -> tuple:
    """Reads one boot's serial output into `lines` until dom0's exit marker
    ("exit", rc), the run's time limit ("timeout"), a wedged case
    ("wedged") or the end of the output ("eof")."""
    pending = b""
    fd = proc.stdout.fileno()
    while True:
        now = time.monotonic() - start
        if now >= timeout:
            return None, "timeout"
        if watch.wedged(now) is not None:
            return None, "wedged"
        ready, _, _ = select.select([fd], [], [], min(timeout - now, 1.0))
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if logf:
            logf.write(chunk)
            logf.flush()
        if not chunk:
            return None, "eof"
        pending += chunk
        *complete, pending = pending.split(b"\n")
        now = time.monotonic() - start
        for raw in complete:
            text = _CONTROL.sub("", raw.decode("utf-8", "replace"))
            lines.append((now, text))
            if echo:
                print(f"[{now:7.2f}] {text}", flush=True)
            watch.feed(now, text)
            m = EXIT_MARKER.search(text)
            if m:
                return int(m.group(1)), "exit"


def run_interactive(guests: Iterable[tuple], arch: str = "amd64") -> int:
    """Boots the rig with the terminal on the serial console and no script,
    so dom0 ends in a shell. QEMU's escape is Ctrl-A X."""
    with tempfile.TemporaryDirectory(prefix="moat-rig-") as tmp:
        cmd = _prepare(arch, _guest_files(guests, None), Path(tmp))
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
