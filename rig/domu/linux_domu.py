#!/usr/bin/env python3
"""Builds the rig's Linux PV domU: Debian's kernel (the rig's boot/vmlinuz,
the same one dom0 runs) with a small initramfs made here from the rig cache
(rig/fetch.sh): the static busybox of dom0's tree with a symlink per applet,
xen-netfront.ko, dom0's iperf3 with its libraries (amd64), and
rig/domu/init as /init. Also extracts pktgen.ko from the
cached linux-image package, for dom0 to generate 64-byte UDP floods.

Command line (prints the paths):

    python3 rig/domu/linux_domu.py

As a library: `build()` returns a `LinuxDomU` with the paths. The initramfs
is rebuilt when any input changed (well under a second); pktgen.ko is kept
per kernel package. Only the Python standard library is used.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import subprocess
import sys
from pathlib import Path

RIG_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(RIG_DIR))
import xenrig  # noqa: E402

#: The domU's /init.
INIT = RIG_DIR / "domu" / "init"


@dataclasses.dataclass(frozen=True)
class LinuxDomU:
    """Host paths of the Linux domU's pieces."""

    #: The PV kernel (the rig's dom0 kernel).
    kernel: Path
    #: The gzip'd newc initramfs.
    ramdisk: Path
    #: dom0's pktgen.ko, for the same kernel.
    pktgen: Path
    #: The kernel's release, e.g. 6.1.0-56-amd64.
    kernel_version: str


def newc(name: str, mode: int, data: bytes, ino: int, rdev: tuple = (0, 0)) -> bytes:
    """One entry of a "newc" cpio archive (Linux's initramfs format): a
    110-byte ASCII header, the NUL-terminated name and the data, each padded
    to 4 bytes. `rdev` is (major, minor) of a device node; a symlink's data
    is its target."""
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    out = bytearray(b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0")
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return bytes(out)


def applets(busybox: Path) -> list:
    """The applet names the busybox binary was built with."""
    out = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True).stdout
    names = [a for a in out.split() if a and "/" not in a and a not in (".", "..")]
    assert "nc" in names and "crc32" in names and "ip" in names and "insmod" in names, \
        f"{busybox} lacks an applet the domU needs (nc, crc32, ip, insmod): {names}"
    return names


def needed_libs(elf: Path, root: Path, libdir: str) -> list:
    """The shared libraries `elf` needs, recursively, as paths in dom0's
    tree `root` (rig/fetch.sh copied them to /`libdir`)."""
    out: list = []

    def walk(f: Path) -> None:
        text = subprocess.run(["readelf", "-d", str(f)], check=True, capture_output=True, text=True).stdout
        for line in text.splitlines():
            if "(NEEDED)" not in line:
                continue
            name = line.split("[", 1)[1].split("]", 1)[0]
            lib = root / libdir / name
            assert lib.is_file(), f"{name} (needed by {f.name}) not in {root / libdir}"
            if lib not in out:
                out.append(lib)
                walk(lib)
    walk(elf)
    return out


#: dom0's library directory (rig/fetch.sh) and the loader's path.
LIBDIR = "lib/x86_64-linux-gnu"
LOADER = "lib64/ld-linux-x86-64.so.2"


def initramfs(busybox: Path, netfront: Path, init: bytes, iperf3: Path | None = None) -> bytes:
    """The domU's initramfs, gzip'd. With `iperf3` (dom0's, in its tree),
    also iperf3, its libraries and the loader, for `iperf3 -s`."""
    entries = []
    ino = 1
    for d in ("bin", "dev", "lib", "proc", "sys", "tmp"):
        entries.append(newc(d, 0o040755, b"", ino))
        ino += 1
    if iperf3 is not None:
        root = iperf3.parent.parent.parent
        for d in ("usr", "usr/bin", "lib/x86_64-linux-gnu", "lib64"):
            entries.append(newc(d, 0o040755, b"", ino))
            ino += 1
        entries.append(newc("usr/bin/iperf3", 0o100755, iperf3.read_bytes(), ino))
        ino += 1
        loader = root / LIBDIR / "ld-linux-x86-64.so.2"
        libs = needed_libs(iperf3, root, LIBDIR)
        for lib in libs + ([loader] if loader not in libs else []):
            entries.append(newc(f"{LIBDIR}/{lib.name}", 0o100755, lib.read_bytes(), ino))
            ino += 1
        entries.append(newc(LOADER, 0o120777, f"/{LIBDIR}/ld-linux-x86-64.so.2".encode(), ino))
        ino += 1
    # the kernel opens /dev/console for init before anything is mounted
    entries.append(newc("dev/console", 0o020600, b"", ino, (5, 1)))
    ino += 1
    entries.append(newc("init", 0o100755, init, ino))
    ino += 1
    entries.append(newc("bin/busybox", 0o100755, busybox.read_bytes(), ino))
    ino += 1
    for a in applets(busybox):
        if a == "busybox":
            continue
        entries.append(newc(f"bin/{a}", 0o120777, b"busybox", ino))
        ino += 1
    entries.append(newc("lib/xen-netfront.ko", 0o100644, netfront.read_bytes(), ino))
    entries.append(newc("TRAILER!!!", 0, b"", 0))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(b"".join(entries))
    return buf.getvalue()


def module_depends(ko: Path) -> list:
    """The modules `ko` needs loaded first (modinfo's depends field)."""
    out = subprocess.run(["modinfo", "-F", "depends", str(ko)], check=True,
                         capture_output=True, text=True).stdout.strip()
    return [m for m in out.split(",") if m]


def extract_pktgen(cache: Path, kver: str, out: Path) -> None:
    """Copies pktgen.ko of kernel `kver` out of the cached linux-image
    package (rig/fetch.sh keeps the .debs) into `out`."""
    debs = sorted((cache / "debs").glob(f"linux-image-{kver}_*.deb"))
    assert debs, f"no linux-image-{kver} package in {cache / 'debs'}: run rig/fetch.sh"
    member = f"./lib/modules/{kver}/kernel/net/core/pktgen.ko"
    tar = subprocess.Popen(["dpkg", "--fsys-tarfile", str(debs[-1])], stdout=subprocess.PIPE)
    data = subprocess.run(["tar", "-xO", member], stdin=tar.stdout, check=True, capture_output=True).stdout
    tar.stdout.close()
    assert tar.wait() == 0, f"dpkg --fsys-tarfile {debs[-1]} failed"
    assert data[:4] == b"\x7fELF", f"{member} in {debs[-1]} is not an ELF module"
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)


def build(arch: str = "amd64") -> LinuxDomU:
    """Fetches the rig (a no-op when current), then (re)builds what changed."""
    boot = xenrig.fetch(arch, quiet=True)
    cache = xenrig.cache_dir(arch)
    kver = (boot / "kernel-version").read_text().strip()
    root = cache / "dom0-root"
    busybox = root / "bin" / "busybox"
    netfront = root / "lib" / "modules" / kver / "kernel" / "drivers" / "net" / "xen-netfront.ko"
    for f in (boot / "vmlinuz", busybox, netfront):
        assert f.is_file(), f"{f} missing: run rig/fetch.sh"
    deps = module_depends(netfront)
    assert not deps, f"xen-netfront.ko needs {deps}: rig/domu/linux_domu.py loads it alone"
    out = cache / "linux-domu"
    out.mkdir(exist_ok=True)

    init = INIT.read_bytes()
    iperf3 = root / "usr" / "bin" / "iperf3"
    iperf3 = iperf3 if iperf3.is_file() and arch == "amd64" else None
    key = hashlib.sha256()
    parts = [init, busybox.read_bytes(), netfront.read_bytes(), Path(__file__).read_bytes()]
    if iperf3 is not None:
        parts.append(iperf3.read_bytes())
    for part in parts:
        key.update(hashlib.sha256(part).digest())
    ramdisk = out / "initramfs.cpio.gz"
    stamp = out / "initramfs.key"
    if not ramdisk.is_file() or not stamp.is_file() or stamp.read_text() != key.hexdigest():
        tmp = ramdisk.with_suffix(".tmp")
        tmp.write_bytes(initramfs(busybox, netfront, init, iperf3))
        tmp.replace(ramdisk)
        stamp.write_text(key.hexdigest())

    pktgen = out / f"pktgen-{kver}.ko"
    if not pktgen.is_file():
        extract_pktgen(cache, kver, pktgen)
    return LinuxDomU(kernel=boot / "vmlinuz", ramdisk=ramdisk, pktgen=pktgen, kernel_version=kver)


if __name__ == "__main__":
    d = build()
    print(f"kernel  {d.kernel} ({d.kernel_version})\nramdisk {d.ramdisk}\npktgen  {d.pktgen}")
