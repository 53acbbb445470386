#!/usr/bin/env bash
# Fetches Debian's real Xen, a Debian Linux kernel for dom0 and the dom0
# toolstack, and builds the boot files of the test rig:
#
#   $MOAT_CACHE/rig-<arch>/boot/xen                 Xen (amd64: multiboot ELF, armhf: zImage;
#                                                   both for QEMU -kernel)
#   $MOAT_CACHE/rig-<arch>/boot/vmlinuz             the dom0 Linux kernel
#   $MOAT_CACHE/rig-<arch>/boot/dom0-base.cpio.gz   the dom0 initramfs (busybox, xl, xenstored, ...)
#   $MOAT_CACHE/rig-arm32/boot/virt.dtb             arm32 only: QEMU virt's device tree with
#                                                   Xen's command lines (xenrig.py adds the modules)
#
# Nothing is installed on the host: packages are fetched with `apt-get
# download` and unpacked with `dpkg -x`. The result is keyed by the package
# versions and by the sources of this script and of the dom0 /init, so a
# second run does nothing (a stamp file records the key).
#
# usage: rig/fetch.sh [--arch amd64|arm32|armhf] [--force]
# arm32 (alias armhf, Debian's name; the cache is rig-arm32) enables
# dpkg's armhf architecture and runs `apt-get update` once when apt has
# no armhf lists yet.
set -euo pipefail

ARCH=amd64
FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH="${2:?--arch needs a value}"; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "fetch.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

[ "$ARCH" = armhf ] && ARCH=arm32
RIG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${MOAT_CACHE:-$HOME/.cache/moat}/rig-$ARCH"
DEBS="$CACHE/debs"
STAGE="$CACHE/stage"
ROOT="$CACHE/dom0-root"
BOOT="$CACHE/boot"
STAMP="$CACHE/stamp"

# One build at a time per cache (tests may start in parallel); boot files
# are replaced by rename, so a QEMU already running keeps its copy.
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock 9

T_START=$(date +%s.%N)
# Runs one named step and prints how long it took.
step() {
  local name="$1"; shift
  local t0 t1
  t0=$(date +%s.%N)
  echo "fetch: $name ..."
  "$@"
  t1=$(date +%s.%N)
  printf 'fetch: %s done in %.1f s\n' "$name" "$(awk "BEGIN{print $t1-$t0}")"
}

case "$ARCH" in
  amd64)
    MULTIARCH=x86_64-linux-gnu
    XEN_PKG=xen-hypervisor-4.17-amd64
    KFLAVOUR=amd64
    PKGSUFFIX=""
    ;;
  arm32)
    MULTIARCH=arm-linux-gnueabihf
    XEN_PKG=xen-hypervisor-4.17-armhf
    KFLAVOUR=armmp-lpae
    PKGSUFFIX=":armhf"
    ;;
  *)
    echo "fetch.sh: unknown arch $ARCH (amd64, arm32 alias armhf)" >&2
    exit 2
    ;;
esac

# armhf packages come from apt's armhf lists: enable the architecture
# once. `apt-get update` may report a failed index (bookworm-security's
# armhf list was caught mid-sync once); what matters is whether the
# packages below have candidates afterwards, which is checked there.
# (Outputs are read into variables first: grep -q closing a pipe early
# would fail the pipeline under pipefail.)
enable_armhf() {
  local foreign policy
  foreign="$(dpkg --print-foreign-architectures)"
  if ! grep -qx armhf <<<"$foreign"; then
    dpkg --add-architecture armhf
  fi
  policy="$(apt-cache policy "$XEN_PKG:armhf" 2>/dev/null)"
  if ! grep -q 'Candidate: [0-9]' <<<"$policy"; then
    echo "fetch: apt has no armhf lists yet; apt-get update"
    apt-get update -q || echo "fetch: apt-get update reported errors (continuing with the lists it got)"
  fi
}

# The rig sources the result depends on.
KEY_FILES=("$RIG_DIR/fetch.sh" "$RIG_DIR/dom0/init")
[ "$ARCH" = arm32 ] && KEY_FILES+=("$RIG_DIR/dom0/init-armhf")

# A cheap key for the warm path: apt's package lists (their names, sizes and
# times change with `apt-get update`) and the rig's own sources. Asking
# apt-cache for versions costs about 1.5 s, so it is done only when this
# key changed.
quick_key() {
  { ls -l --time-style=+%s /var/lib/apt/lists/ 2>/dev/null
    sha256sum "${KEY_FILES[@]}"
    echo "$ARCH"; } | sha256sum | cut -d' ' -f1
}
QUICK_KEY="$(quick_key)"
boot_files_present() {
  [ -f "$BOOT/xen" ] && [ -f "$BOOT/vmlinuz" ] && [ -f "$BOOT/dom0-base.cpio.gz" ] &&
    { [ "$ARCH" != arm32 ] || [ -f "$BOOT/virt.dtb" ]; }
}
elapsed() { awk "BEGIN{printf \"%.2f\", $(date +%s.%N)-$T_START}"; }
if [ $FORCE = 0 ] && [ -f "$STAMP.quick" ] && [ "$(cat "$STAMP.quick")" = "$QUICK_KEY" ] && boot_files_present; then
  echo "fetch: $BOOT is up to date ($(cat "$BOOT/kernel-version" 2>/dev/null), apt lists unchanged), nothing to do ($(elapsed) s)"
  exit 0
fi

[ "$ARCH" = arm32 ] && enable_armhf

# The newest Debian 6.1 kernel of this flavour that apt knows about.
kernel_pkg() {
  apt-cache pkgnames "linux-image-6.1.0-" | grep -E "^linux-image-6\\.1\\.0-[0-9]+-$KFLAVOUR\$" |
    sort -V | tail -n 1
}
KPKG="$(kernel_pkg)"
if [ -z "$KPKG" ]; then
  echo "fetch.sh: no linux-image-6.1.0-*-$KFLAVOUR in apt's lists (run apt-get update)" >&2
  exit 1
fi
KVER="${KPKG#linux-image-}"

# Xen, its toolstack and libraries, the dom0 kernel, busybox, and the
# libraries and tools the toolstack and its hotplug scripts need (bash,
# flock, coreutils stat, libgcc_s for xl's pthread_cancel).
PKGS=(
  "$XEN_PKG" xen-utils-4.17 xen-utils-common xenstore-utils
  libxencall1 libxendevicemodel1 libxenevtchn1 libxenforeignmemory1 libxengnttab1
  libxenhypfs1 libxenmisc4.17 libxenstore4 libxentoolcore1 libxentoollog1 libyajl2
  "$KPKG" busybox-static
  libc6 libgcc-s1 libtinfo6 libncurses6 libuuid1 zlib1g liblzma5 libzstd1 libbz2-1.0
  libext2fs2 libcom-err2 libselinux1 libpcre2-8-0 libacl1 libattr1 bash util-linux coreutils
)
if [ "$ARCH" = amd64 ]; then
  # iperf3 in dom0: the same client measures netdemo (its iperf3 server)
  # and a Linux domU running iperf3 -s (make bench-net, docs/testing.md).
  PKGS+=(iperf3 libiperf0 libsctp1 libssl3)
  # dnsmasq in dom0: the real resolver behind the firewall VM's virtual
  # DNS and its dsthost= lookups (rig/test_firewall.py), with the
  # libraries it links
  PKGS+=(dnsmasq-base libdbus-1-3 libsystemd0 libcap2 libgcrypt20 libgpg-error0 liblz4-1 libidn2-0
         libunistring2 libnetfilter-conntrack3 libnfnetlink0 libmnl0 libnettle8 libhogweed6 libgmp10
         libnftables1 libnftnl11 libxtables12 libjansson4)
  # nft for the Linux firewall domU (rig/domu/linux_domu.py unpacks it from
  # debs/ with the libraries above; dom0 does not use it)
  PKGS+=(nftables libedit2 libbsd0 libmd0)
fi
if [ "$ARCH" = arm32 ]; then
  # Xen on Arm's toolstack also links libfdt; everything is the armhf build.
  PKGS+=(libfdt1 libncursesw6)
  PKGS=("${PKGS[@]/%/$PKGSUFFIX}")
fi

# "name=version" for every package, from apt's candidate versions.
package_versions() {
  apt-cache policy "${PKGS[@]}" | awk '
    /^[^ ]/ { sub(":$", "", $1); name = $1 }
    /^  Candidate:/ { print name "=" $2 }'
}
VERSIONS="$(package_versions)"
if [ "$(echo "$VERSIONS" | grep -vc '=(none)$')" != "${#PKGS[@]}" ]; then
  echo "fetch.sh: apt has no candidate for some packages:" >&2
  echo "$VERSIONS" | grep '=(none)$' >&2 || true
  exit 1
fi
KEY="$( { echo "$VERSIONS"; sha256sum "${KEY_FILES[@]}"; } | sha256sum | cut -d' ' -f1)"

if [ $FORCE = 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && boot_files_present; then
  echo "$QUICK_KEY" >"$STAMP.quick"
  echo "fetch: $BOOT is up to date (same package versions, $KPKG), nothing to do ($(elapsed) s)"
  exit 0
fi

# The downloaded .deb of package $1 at version $2, or nothing.
# apt-get download names files name_version_arch.deb with ':' as %3a.
deb_path() {
  local matches=("$DEBS/${1%"$PKGSUFFIX"}_${2//:/%3a}_"*.deb)
  [ -e "${matches[0]}" ] && echo "${matches[0]}"
  return 0
}

download() {
  mkdir -p "$DEBS"
  local missing=() p v
  while IFS='=' read -r p v; do
    [ -n "$(deb_path "$p" "$v")" ] || missing+=("$p=$v")
  done <<<"$VERSIONS"
  if [ ${#missing[@]} -gt 0 ]; then
    echo "fetch: downloading ${#missing[@]} packages: ${missing[*]}"
    (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "${missing[@]}")
  else
    echo "fetch: all ${#PKGS[@]} packages already in $DEBS"
  fi
}

unpack() {
  rm -rf "$STAGE"
  mkdir -p "$STAGE"
  local p v
  while IFS='=' read -r p v; do
    dpkg -x "$(deb_path "$p" "$v")" "$STAGE"
  done <<<"$VERSIONS"
  # The linux-image package ships no modules.dep; modprobe needs it.
  depmod -b "$STAGE" "$KVER"
}

# The device tree QEMU's virt machine builds for the rig's QEMU options
# (rig/xenrig.py's ARM_MACHINE and ARM_QEMU must match), with PCIe off (as
# in Xen's CI) and Xen's and dom0's command lines in /chosen. xenrig.py adds
# the module nodes per run, since the initramfs size changes.
ARM_MACHINE="virt,virtualization=on,gic-version=2"
ARM_QEMU=(-cpu cortex-a15 -m 1024 -smp 2 -nographic -nic none -no-reboot)
arm_dtb() {
  local dtb="$BOOT/virt.dtb.tmp"
  qemu-system-arm -M "$ARM_MACHINE,dumpdtb=$dtb" "${ARM_QEMU[@]}" >/dev/null 2>&1
  fdtput -p -t s "$dtb" /pcie@10000000 status disabled
  fdtput -t x "$dtb" /chosen '#address-cells' 2
  fdtput -t x "$dtb" /chosen '#size-cells' 2
  fdtput -t s "$dtb" /chosen xen,xen-bootargs \
    "console=dtuart dtuart=/pl011@9000000 dom0_mem=512M bootscrub=0 loglvl=all guest_loglvl=all noreboot"
  fdtput -t s "$dtb" /chosen xen,dom0-bootargs "console=hvc0 earlycon=xenboot clk_ignore_unused rdinit=/init"
  mv "$dtb" "$BOOT/virt.dtb"
}

boot_files() {
  mkdir -p "$BOOT"
  if [ "$ARCH" = arm32 ]; then
    # An "ARM boot executable zImage": QEMU -kernel enters it in Hyp mode.
    cp "$STAGE/boot/xen-4.17-armhf" "$BOOT/xen.tmp"
    arm_dtb
  else
    # QEMU's multiboot loader takes the uncompressed 32-bit ELF.
    zcat "$STAGE/boot/xen-4.17-amd64.gz" >"$BOOT/xen.tmp"
  fi
  mv "$BOOT/xen.tmp" "$BOOT/xen"
  cp "$STAGE/boot/vmlinuz-$KVER" "$BOOT/vmlinuz.tmp"
  mv "$BOOT/vmlinuz.tmp" "$BOOT/vmlinuz"
  echo "$KVER" >"$BOOT/kernel-version"
}

# Library search path inside the staged packages, in ld.so's order.
LIBDIRS=("lib/$MULTIARCH" "usr/lib/$MULTIARCH" "usr/lib/xen-4.17/lib/$MULTIARCH" lib64)

# Copies the shared libraries an ELF file needs (recursively) from the stage
# into the dom0 root.
copy_needed_libs() {
  local elf="$1" lib d found
  for lib in $(readelf -d "$elf" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    [ -e "$ROOT/lib/$MULTIARCH/$lib" ] && continue
    found=""
    for d in "${LIBDIRS[@]}"; do
      if [ -e "$STAGE/$d/$lib" ]; then found="$STAGE/$d/$lib"; break; fi
    done
    if [ -z "$found" ]; then
      echo "fetch.sh: $lib (needed by ${elf#"$ROOT"}) is in none of the fetched packages; add its package to PKGS" >&2
      exit 1
    fi
    cp -L "$found" "$ROOT/lib/$MULTIARCH/$lib"
    copy_needed_libs "$ROOT/lib/$MULTIARCH/$lib"
  done
}

dom0_root() {
  rm -rf "$ROOT"
  mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,lib/$MULTIARCH,lib64,etc,dev,proc,sys,run,tmp,root,guest}
  mkdir -p "$ROOT"/var/{lock,log/xen/console,lib/xen}
  ln -s /run "$ROOT/var/run"
  # busybox and its applets (only where no real tool is installed below)
  cp "$STAGE/bin/busybox" "$ROOT/bin/busybox"
  # the toolstack: /usr/lib/xen-4.17/bin goes on PATH directly (the
  # /usr/sbin wrappers only pick the Xen version, which is fixed here)
  mkdir -p "$ROOT/usr/lib/xen-4.17"
  cp -a "$STAGE/usr/lib/xen-4.17/bin" "$ROOT/usr/lib/xen-4.17/bin"
  rm -f "$ROOT/usr/lib/xen-4.17/bin/pygrub" "$ROOT/usr/lib/xen-4.17/bin/oxenstored"
  if [ -d "$STAGE/usr/lib/xen-4.17/boot" ]; then   # amd64 only
    cp -a "$STAGE/usr/lib/xen-4.17/boot" "$ROOT/usr/lib/xen-4.17/boot"
  fi
  cp -a "$STAGE"/usr/bin/xenstore* "$ROOT/usr/bin/"
  rm -f "$ROOT/usr/bin/xenstore-control"   # a wrapper symlink; the real one is in xen-4.17/bin
  cp -a "$STAGE/etc/xen" "$ROOT/etc/xen"
  # the hotplug scripts need bash, flock and coreutils stat (busybox's
  # stat lacks -L -c %D.%i as locking.sh uses it)
  cp "$STAGE/bin/bash" "$ROOT/bin/bash"
  cp "$STAGE/usr/bin/flock" "$STAGE/usr/bin/stat" "$ROOT/usr/bin/"
  if [ -e "$STAGE/usr/bin/iperf3" ]; then
    cp "$STAGE/usr/bin/iperf3" "$ROOT/usr/bin/"
  fi
  if [ -e "$STAGE/usr/sbin/dnsmasq" ]; then
    cp "$STAGE/usr/sbin/dnsmasq" "$ROOT/usr/sbin/"
  fi
  local applet
  if [ "$ARCH" = arm32 ]; then
    # The host cannot run the armhf busybox to list its applets: /init
    # (rig/dom0/init-armhf) runs `busybox --install -s` first, which
    # leaves the real tools copied here in place.
    ln -s busybox "$ROOT/bin/sh"
  else
    for applet in $("$ROOT/bin/busybox" --list-full); do
      [ -e "$ROOT/$applet" ] || [ -L "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
    done
  fi
  # the dynamic loader, then every library the ELF files need; libgcc_s is
  # dlopen()ed by glibc's pthread_cancel, which xl uses (no NEEDED entry)
  if [ "$ARCH" = arm32 ]; then
    cp -L "$STAGE/lib/$MULTIARCH/ld-linux-armhf.so.3" "$ROOT/lib/$MULTIARCH/"
    ln -s /lib/$MULTIARCH/ld-linux-armhf.so.3 "$ROOT/lib/ld-linux-armhf.so.3"
  else
    cp -L "$STAGE/lib/$MULTIARCH/ld-linux-x86-64.so.2" "$ROOT/lib/$MULTIARCH/"
    ln -s /lib/$MULTIARCH/ld-linux-x86-64.so.2 "$ROOT/lib64/ld-linux-x86-64.so.2"
  fi
  cp -L "$STAGE/lib/$MULTIARCH/libgcc_s.so.1" "$ROOT/lib/$MULTIARCH/"
  local f
  while IFS= read -r f; do
    if head -c 4 "$f" | grep -q 'ELF'; then copy_needed_libs "$f"; fi
  done < <(find "$ROOT" -type f -not -path "$ROOT/lib/*")
  echo "/lib/$MULTIARCH" >"$ROOT/etc/ld.so.conf"
  # kernel modules with their dependencies, and a modules.dep for them
  local mods=(xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs xen-netback xen-blkback
              bridge tun loop xen-netfront xen-blkfront ext4 crc32c_generic)
  local ko m
  for m in "${mods[@]}"; do
    for ko in $(modprobe -d "$STAGE" -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" {print $2}'); do
      mkdir -p "$ROOT/$(dirname "${ko#"$STAGE"}")"
      cp "$ko" "$ROOT/${ko#"$STAGE"}"
    done
  done
  cp "$STAGE/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$ROOT/lib/modules/$KVER/" 2>/dev/null || true
  depmod -b "$ROOT" "$KVER"
  # small /etc files the tools look for
  echo "root:x:0:0:root:/root:/bin/sh" >"$ROOT/etc/passwd"
  echo "root:x:0:" >"$ROOT/etc/group"
  echo "dom0" >"$ROOT/etc/hostname"
  if [ "$ARCH" = arm32 ]; then
    install -m 0755 "$RIG_DIR/dom0/init-armhf" "$ROOT/init"
    install -m 0755 "$RIG_DIR/dom0/init" "$ROOT/init.rig"
  else
    install -m 0755 "$RIG_DIR/dom0/init" "$ROOT/init"
  fi
}

initramfs() {
  (cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) |
    gzip -6 >"$BOOT/dom0-base.cpio.gz.tmp"
  mv "$BOOT/dom0-base.cpio.gz.tmp" "$BOOT/dom0-base.cpio.gz"
}

echo "fetch: building the $ARCH rig in $CACHE ($KPKG, $(echo "$VERSIONS" | grep "^$XEN_PKG$PKGSUFFIX=" | cut -d= -f2))"
step "download packages" download
step "unpack packages" unpack
step "boot files (xen, vmlinuz)" boot_files
step "dom0 root tree" dom0_root
step "dom0 initramfs" initramfs
# The unpacked packages (about 470 MB, mostly kernel modules) are rebuilt
# from the .debs on every build, so they are not kept.
rm -rf "$STAGE"
echo "$KEY" >"$STAMP"
echo "$QUICK_KEY" >"$STAMP.quick"
ls -l "$BOOT"
echo "fetch: done in $(elapsed) s"
