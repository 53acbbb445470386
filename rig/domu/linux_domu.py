#!/usr/bin/env python3
"""Builds the rig's Linux PV domU: Debian's kernel (the rig's boot/vmlinuz,
the same one dom0 runs) with a small initramfs made here from the rig cache
(rig/fetch.sh): the static busybox of dom0's tree with a symlink per applet,
xen-netfront.ko, dom0's iperf3 with its libraries (amd64), and
rig/domu/init as /init. Also extracts pktgen.ko from the
cached linux-image package, for dom0 to generate 64-byte UDP floods.

`build(router=True)` also makes two variants, each the plain initramfs
with a second cpio archive appended (Linux unpacks both; the plain one is
not changed):

- the Linux firewall domU (rig/bench_firewall_vm.py): rig/domu/router-init
  (started with `rdinit=/router-init`), xen-netback and the netfilter
  modules it needs with their dependencies (from the cached linux-image
  package), Debian's nft with its libraries (packages rig/fetch.sh
  downloads) and dom0's xenstore tools;
- its benchmark client: rig/domu/bench-client (`rdinit=/bench-client`),
  which runs the plain /init and asks dom0 for iperf3 jobs.

Command line (prints the paths):

    python3 rig/domu/linux_domu.py [--router]

As a library: `build()` returns a `LinuxDomU` with the paths. The initramfs
is rebuilt when any input changed (well under a second); pktgen.ko and the
router's modules are kept per kernel package. Only the Python standard
library is used.
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
    #: With build(router=True): the Linux firewall domU's initramfs (boot
    #: it with `rdinit=/router-init`).
    router_ramdisk: Path | None = None
    #: With build(router=True): the benchmark client's initramfs (boot it
    #: with `rdinit=/bench-client`).
    bench_ramdisk: Path | None = None


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


def build(arch: str = "amd64", router: bool = False) -> LinuxDomU:
    """Fetches the rig (a no-op when current), then (re)builds what changed.
    With `router` (amd64 only), also the firewall domU's and its benchmark
    client's initramfs (see the module's doc)."""
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
    if not router:
        return LinuxDomU(kernel=boot / "vmlinuz", ramdisk=ramdisk, pktgen=pktgen, kernel_version=kver)
    assert arch == "amd64", "the router variant is amd64 only"
    routerfs, benchfs = build_router(cache, kver, ramdisk, out)
    return LinuxDomU(kernel=boot / "vmlinuz", ramdisk=ramdisk, pktgen=pktgen, kernel_version=kver,
                     router_ramdisk=routerfs, bench_ramdisk=benchfs)


#: The router's /init, and the benchmark client's.
ROUTER_INIT = RIG_DIR / "domu" / "router-init"
BENCH_CLIENT = RIG_DIR / "domu" / "bench-client"

#: Kernel modules the Linux firewall domU loads (their dependencies are
#: added): netback for its clients' vifs, nf_tables with conntrack, NAT,
#: masquerade, reject and the software flowtable that Qubes' rules use.
ROUTER_MODULES = ["xen-netback", "nf_tables", "nf_conntrack", "nft_ct", "nft_chain_nat", "nft_nat",
                  "nft_masq", "nft_reject_ipv4", "nf_flow_table_inet", "nft_flow_offload"]

#: Debian packages of nft and its libraries (rig/fetch.sh downloads them
#: into the cache's debs/ for amd64).
NFT_PACKAGES = ["nftables", "libnftables1", "libedit2", "libbsd0", "libmd0", "libmnl0", "libnftnl11",
                "libxtables12", "libjansson4", "libgmp10"]


def newest_deb(debs: Path, package: str) -> Path:
    """The newest cached .deb of `package` (apt-get download's file name)."""
    found = sorted(debs.glob(f"{package}_*.deb"))
    assert found, f"no {package} package in {debs}: run rig/fetch.sh (it downloads it for amd64)"
    return found[-1]


def router_modules(cache: Path, kver: str, out: Path) -> list:
    """Copies ROUTER_MODULES and their dependencies out of the cached
    linux-image package into `out` (flat) and returns their file names in
    load order. Kept per kernel and module list (a stamp in `out`)."""
    stamp = out / "order"
    want = f"{kver} {' '.join(ROUTER_MODULES)}\n"
    if stamp.is_file() and (out / "key").is_file() and (out / "key").read_text() == want:
        return stamp.read_text().split()
    import shutil
    import tempfile
    deb = newest_deb(cache / "debs", f"linux-image-{kver}")
    with tempfile.TemporaryDirectory(prefix="moat-router-mods-", dir=cache) as tmp:
        stage = Path(tmp)
        tar = subprocess.Popen(["dpkg", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(stage), "--wildcards", f"./lib/modules/{kver}/*"],
                       stdin=tar.stdout, check=True)
        tar.stdout.close()
        assert tar.wait() == 0, f"dpkg --fsys-tarfile {deb} failed"
        subprocess.run(["depmod", "-b", str(stage), kver], check=True)
        order: list = []
        for m in ROUTER_MODULES:
            text = subprocess.run(["modprobe", "-d", str(stage), "-S", kver, "--show-depends", m],
                                  check=True, capture_output=True, text=True).stdout
            for line in text.splitlines():
                words = line.split()
                if words[:1] == ["insmod"] and words[1] not in order:
                    order.append(words[1])
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        names = []
        for ko in order:
            name = Path(ko).name
            assert name not in names, f"two modules named {name}"
            names.append(name)
            shutil.copyfile(ko, out / name)
    stamp.write_text("\n".join(names) + "\n")
    (out / "key").write_text(want)
    return names


def unpack_debs(cache: Path, packages: list, out: Path) -> None:
    """dpkg -x of the newest cached .deb of each package into `out`, redone
    when the set of .deb files changed."""
    import shutil
    debs = [newest_deb(cache / "debs", p) for p in packages]
    key = "\n".join(d.name for d in debs) + "\n"
    if (out / ".key").is_file() and (out / ".key").read_text() == key:
        return
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for d in debs:
        subprocess.run(["dpkg", "-x", str(d), str(out)], check=True)
    (out / ".key").write_text(key)


def find_libs(elf: Path, dirs: list) -> list:
    """The shared libraries `elf` needs, recursively, each found in the
    first of `dirs` that has it."""
    out: list = []

    def walk(f: Path) -> None:
        text = subprocess.run(["readelf", "-d", str(f)], check=True, capture_output=True, text=True).stdout
        for line in text.splitlines():
            if "(NEEDED)" not in line:
                continue
            name = line.split("[", 1)[1].split("]", 1)[0]
            lib = next((d / name for d in dirs if (d / name).is_file()), None)
            assert lib is not None, f"{name} (needed by {f.name}) in none of {[str(d) for d in dirs]}"
            if lib.name not in [l.name for l in out]:
                out.append(lib)
                walk(lib)
    walk(elf)
    return out


def overlay(files: list, symlinks: list = ()) -> bytes:
    """A gzip'd newc archive to append to the plain initramfs: `files` as
    (name, mode, bytes), `symlinks` as (name, target); the directories
    they need are added first."""
    dirs: list = []
    for name, *_ in list(files) + list(symlinks):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.append(d)
    entries, ino = [], 1000
    for d in dirs:
        entries.append(newc(d, 0o040755, b"", ino))
        ino += 1
    for name, mode, data in files:
        entries.append(newc(name, 0o100000 | mode, data, ino))
        ino += 1
    for name, target in symlinks:
        entries.append(newc(name, 0o120777, target.encode(), ino))
        ino += 1
    entries.append(newc("TRAILER!!!", 0, b"", 0))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(b"".join(entries))
    return buf.getvalue()


def build_router(cache: Path, kver: str, plain: Path, out: Path) -> tuple:
    """(router initramfs, bench client initramfs), each `plain` + an
    overlay; rebuilt when an input changed."""
    root = cache / "dom0-root"
    mods_dir = out / f"router-modules-{kver}"
    mods = router_modules(cache, kver, mods_dir)
    nft_root = out / "nft-root"
    unpack_debs(cache, NFT_PACKAGES, nft_root)
    nft = nft_root / "usr" / "sbin" / "nft"
    xs = root / "usr" / "bin" / "xenstore"
    for f in (nft, xs):
        assert f.is_file(), f"{f} missing"
    dirs = [nft_root / "usr" / LIBDIR, nft_root / LIBDIR, root / LIBDIR]
    libs = find_libs(nft, dirs) + find_libs(xs, dirs)
    loader = root / LIBDIR / "ld-linux-x86-64.so.2"

    files = [("router-init", 0o755, ROUTER_INIT.read_bytes()),
             ("usr/sbin/nft", 0o755, nft.read_bytes()),
             ("usr/bin/xenstore", 0o755, xs.read_bytes()),
             ("lib/router/order", 0o644, ("\n".join(mods) + "\n").encode())]
    files += [(f"lib/router/{m}", 0o644, (mods_dir / m).read_bytes()) for m in mods]
    seen = set()
    for lib in libs + [loader]:
        if lib.name not in seen:
            seen.add(lib.name)
            files.append((f"{LIBDIR}/{lib.name}", 0o755, lib.read_bytes()))
    links = [(f"usr/bin/xenstore-{t}", "xenstore") for t in ("read", "write", "ls", "list", "rm")]
    links.append((LOADER, f"/{LIBDIR}/ld-linux-x86-64.so.2"))

    outs = []
    for name, parts, lnk in (("router", files, links),
                             ("bench-client", [("bench-client", 0o755, BENCH_CLIENT.read_bytes())], [])):
        key = hashlib.sha256(plain.read_bytes())
        for n, mode, data in parts:
            key.update(n.encode() + b"\0" + hashlib.sha256(data).digest())
        for n, t in lnk:
            key.update(f"{n}->{t}".encode())
        ramdisk = out / f"{name}.cpio.gz"
        stamp = out / f"{name}.key"
        if not ramdisk.is_file() or not stamp.is_file() or stamp.read_text() != key.hexdigest():
            tmp = ramdisk.with_suffix(".tmp")
            tmp.write_bytes(plain.read_bytes() + overlay(parts, lnk))
            tmp.replace(ramdisk)
            stamp.write_text(key.hexdigest())
        outs.append(ramdisk)
    return tuple(outs)


if __name__ == "__main__":
    d = build(router="--router" in sys.argv[1:])
    print(f"kernel  {d.kernel} ({d.kernel_version})\nramdisk {d.ramdisk}\npktgen  {d.pktgen}")
    if d.router_ramdisk:
        print(f"router  {d.router_ramdisk}\nclient  {d.bench_ramdisk}")
