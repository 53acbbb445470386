#!/usr/bin/env bash
# Installs what moat needs on a Debian 12 (bookworm) machine, idempotently.
# Called by `make` before building or testing; does nothing when all is present.
#
# Why these packages:
# - rustc-web/cargo-web 1.96 + rust-web-src: bare-metal targets need core/alloc
#   built from source (-Zbuild-std); rustup cannot fetch targets here, and
#   Debian ships the matching standard library source.
# - rust-web-llvm (rust-lld) and lld-22: the linker for the kernel images.
# - qemu-system-x86 10 from bookworm-backports: the test rig runs real Xen
#   under TCG (bookworm's QEMU 7.2 lacks what the recipe was measured with).
# - libxen-dev: Xen's public headers, for the ABI layout test.
# - cpio, kmod, e2fsprogs, python3: building the dom0 initramfs.
# - g++: libFuzzer (fuzz/) and the tun-tap crate build C/C++.
# - gcc, libc6-dev: rig/test_blkdemo.py builds rig/dom0/blk_loopbs.c static.
# - iproute2, curl, iperf3, nftables: the hosted firewall's namespace tests
#   and its benchmark against Linux forwarding.
# - wireguard-go, wireguard-tools, tcpdump: the hosted VPN gateway's
#   end-to-end test (a real WireGuard peer, and a capture of the uplink).
# - qemu-system-arm (bookworm-backports), device-tree-compiler (fdtput,
#   fdtget): the arm32 Xen rig.
# - python3-pyelftools: make tcb reads the images' DWARF line tables
#   (scripts/tcb.py; Debian's package rather than pip, as bookworm's Python
#   is externally managed and everything else here comes from apt).
# - rsyslog: the real collector of the remote-syslog end-to-end test
#   (services/hosted/tests/e2e/syslog.sh); run in a namespace by the test,
#   never as the machine's daemon.
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

pkgs_main=(rustc-web cargo-web rust-web-src rust-web-llvm lld-22 rust-web-clippy rustfmt-web libxen-dev
           cpio kmod e2fsprogs gcc libc6-dev g++ make python3 gzip xz-utils binutils
           iproute2 curl iperf3 nftables wireguard-go wireguard-tools tcpdump device-tree-compiler
           python3-pyelftools rsyslog)
pkgs_bpo=(qemu-system-x86 qemu-system-arm)

missing=()
for p in "${pkgs_main[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
need_qemu=0
if ! command -v qemu-system-x86_64 >/dev/null 2>&1 ||
   ! qemu-system-x86_64 --version | grep -Eq 'version (9|1[0-9])\.' ||
   ! command -v qemu-system-arm >/dev/null 2>&1 ||
   ! qemu-system-arm --version | grep -Eq 'version (9|1[0-9])\.'; then
  need_qemu=1
fi

if [ ${#missing[@]} -eq 0 ] && [ $need_qemu = 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]} $([ $need_qemu = 1 ] && echo qemu-system-x86 qemu-system-arm/bookworm-backports)" >&2
if [ $need_qemu = 1 ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian bookworm-backports main" |
    $SUDO tee /etc/apt/sources.list.d/moat-backports.list >/dev/null
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ $need_qemu = 1 ]; then
  $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports "${pkgs_bpo[@]}"
fi
