#!/usr/bin/env python3
"""The VPN gateway VM on real Xen (issue 15): moat's `vpn` image started with
`xl create configs/vpn-<type>.cfg` as users start it, its uplink on dom0's
bridge; the remote WireGuard peer is dom0's Linux kernel WireGuard
(wireguard.ko from the rig's kernel package, `wg` from wireguard-tools) on
10.99.0.1:51820 with the tunnel address 10.64.0.1, where dom0 serves HTTP (a
random file) and DNS (dnsmasq: web.vpn.test). A Debian Linux PV client domU
(rig/domu/, configs/vpn-client-pv.cfg) sits behind the VPN VM. In one rig
boot, per type:

- pvh: the VM created paused, its wg-quick file written by dom0 with stock
  `xenstore-write` into /local/domain/<vpn>/vpn/wg-quick, then started: it
  says `vpn: tunnel from xenstore vpn/wg-quick`; pv: the file on a 64 KiB
  raw disk (`disk=` added on xl create's command line), read at boot: `vpn:
  tunnel from the disk`;
- the client downloads the file from 10.64.0.1 (reachable only through the
  tunnel) with size and sha256 equal to dom0's; dom0's `wg` shows a
  handshake with the VM;
- the client resolves web.vpn.test through Qubes' virtual DNS 10.139.1.1
  (answered by dnsmasq on the tunnel address, which logs the query);
- leak check: a capture (tcpdump) on dom0's bridge of every frame from the
  VM's MAC during the whole run holds only ARP and UDP 10.99.0.30.51820 ->
  10.99.0.1.51820, and no frame on the bridge carries the client's address
  or the cleartext marker the client sent;
- the peer down (dom0's wg0 down) for 30 s while the client keeps sending:
  still only WireGuard from the VM; the peer back: the client's download
  works again without restarting anything;
- a bad configuration written to the key (xenstore wins over the disk):
  the console says `not forwarding: bad wg-quick configuration`, and the VM
  sends nothing more for 10 s (capture).

dom0's tools that the rig lacks (wg, tcpdump, ip from iproute2) are taken
from this host (Debian bookworm, the rig's release) with their libraries and
run through their own ld.so; the kernel modules come from the rig's cached
linux-image package. Prints `test_vpn: N passed, M failed`; exit 1 on any
failure. Needs `make images` (target/images/amd64/vpn)."""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xenrig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "domu"))
import linux_domu  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
#: Modules dom0 loads for its WireGuard peer (dependencies added).
MODULES = ["wireguard"]
#: Host programs put into dom0 (with their libraries).
PROGRAMS = ["/usr/bin/wg", "/usr/bin/tcpdump", "/usr/sbin/ip"]
VPN_MAC = "00:16:3e:6d:6f:30"
CLIENT_IP = "10.137.0.20"

SETUP = r"""
set -u
log() { echo "RIG $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
wait_for() {
  n=$(($3 * 5)); i=0
  while [ $i -lt $n ]; do grep -a -q -E -- "$2" "$1" 2>/dev/null && return 0; sleep 0.2; i=$((i + 1)); done
  return 1
}
send() {
  [ -s /tmp/tty-$1 ] || xenstore-read /local/domain/$(xl domid $1 2>/dev/null)/console/tty >/tmp/tty-$1 2>/dev/null
  if [ ! -s /tmp/tty-$1 ]; then echo "RIG send $1 $2: no console tty"; return 1; fi
  printf '@%s %s\n' "$2" "$3" >"$(cat /tmp/tty-$1)"
}
result() {
  _log=/var/log/xen/console/guest-$1.log
  if wait_for $_log "linuxdomu: cmd $2 rc=" $3; then
    rc=$(grep -a "linuxdomu: cmd $2 rc=" $_log | tail -n 1 | tr -d '\r' | sed 's/.*rc=//')
  else
    rc=none
  fi
  out=$(grep -a "linuxdomu: cmd $2: " $_log | tr -d '\r' | sed "s/.*linuxdomu: cmd $2: //" | tr '\n' ' ')
}
cmd() { if send "$1" "$2" "$4"; then result "$1" "$2" "$3"; else rc=none; out="not sent"; fi; }

# the kit: host programs with their libraries, run through their own ld.so
mkdir -p /tmp/kit && tar -xzf /guest/wgkit.tgz -C /tmp/kit || log kit FAIL "untar"
K=/tmp/kit
run() { $K/lib/ld-linux-x86-64.so.2 --library-path $K/lib "$@"; }
wg() { run $K/bin/wg "$@"; }
ipr() { run $K/bin/ip "$@"; }
# (Debian's tcpdump drops to a user `tcpdump` dom0 does not have, also for -r)
tcpd() { run $K/bin/tcpdump -Z root "$@"; }
for m in $(cat $K/mods/order); do insmod $K/mods/$m || log kit FAIL "insmod $m"; done
ipr link add wg0 type wireguard || log kit FAIL "ip link add wg0 type wireguard"
wg setconf wg0 /guest/dom0-wg.conf || log kit FAIL "wg setconf"
ipr addr add 10.64.0.1/24 dev wg0
ipr link set wg0 up
if wg show wg0 listen-port | grep -q 51820; then log wg-up ok; else log wg-up FAIL "$(wg show wg0 2>&1 | tr '\n' ' ')"; fi

# the servers behind the peer (on its tunnel address only)
mkdir -p /tmp/www
head -c $((@BLOB_MIB@ * 1048576)) /dev/urandom > /tmp/www/blob
blobsum=$(sha256sum /tmp/www/blob | cut -d' ' -f1)
blobsize=$(wc -c < /tmp/www/blob)
httpd -p 10.64.0.1:80 -h /tmp/www
dlog=/tmp/dnsmasq.log
dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --user=root --group=root --pid-file=/tmp/dnsmasq.pid \
  --listen-address=10.64.0.1 --bind-interfaces --local=/vpn.test/ --address=/web.vpn.test/10.64.0.1 \
  --log-queries --log-facility=$dlog || log dnsmasq FAIL

"""

#: One type's run (after SETUP).
SCRIPT = r"""
# the capture: every frame on the bridge, the whole run of this type
tcpd -i xenbr0 -n -U -s 256 -w /tmp/bridge.pcap >/tmp/tcpdump.log 2>&1 &
cap=$!
sleep 2
if kill -0 $cap 2>/dev/null; then log capture ok; else log capture FAIL "$(tr '\n' ' ' < /tmp/tcpdump.log)"; fi

vlog=/var/log/xen/console/guest-vpn.log
clog=/var/log/xen/console/guest-vpn-client.log
rm -f $vlog $clog /tmp/tty-*
log create vpn-@TYPE@ $(up)
if [ @SOURCE@ = disk ]; then
  # the file on a small raw disk (the rest zeros), read once at boot
  dd if=/dev/zero of=/tmp/wg0.disk bs=1024 count=64 2>/dev/null
  dd if=/guest/vm-wg0.conf of=/tmp/wg0.disk conv=notrunc 2>/dev/null
  xl create /guest/vpn-@TYPE@.cfg @MEMORY@ "disk=['format=raw,vdev=xvda,access=ro,target=/tmp/wg0.disk']" || log created FAIL "xl create"
  vpn=$(xl domid vpn)
  want="vpn: tunnel from the disk"
else
  xl create -p /guest/vpn-@TYPE@.cfg @MEMORY@ || log created FAIL "xl create -p"
  vpn=$(xl domid vpn)
  xenstore-write /local/domain/$vpn/vpn/wg-quick "$(cat /guest/vm-wg0.conf)"
  xl unpause vpn
  want="vpn: tunnel from xenstore vpn/wg-quick"
fi
if wait_for $vlog "$want" 60; then log configured ok $(up) @SOURCE@; else
  log configured FAIL "$(tail -n 20 $vlog | tr -d '\r' | tr '\n' '|')"
fi
xl create /guest/vpn-client-pv.cfg
if wait_for $clog "linuxdomu: ready" 180; then log client-ready ok $(up); else log client-ready FAIL; fi
send vpn-client mtu "ip link set eth0 mtu 1420"
# a cleartext marker in the client's requests: it must never appear on the bridge
s0=$(up)
cmd vpn-client get 120 "timeout 90 wget -q -O /tmp/b 'http://10.64.0.1/blob?MOATLEAKMARKER'; r=\$?; echo bytes \$(wc -c </tmp/b) \$(sha256sum </tmp/b | cut -d' ' -f1); rm -f /tmp/b; exit \$r"
s1=$(up)
case "$out" in
*"bytes $blobsize $blobsum"*) log download ok $s0 $s1 $blobsize ;;
*) log download FAIL "rc=$rc expected $blobsize $blobsum: $out" ;;
esac
hs=$(wg show wg0 latest-handshakes | awk '{print $2}')
if [ -n "$hs" ] && [ "$hs" != 0 ]; then log handshake ok; else log handshake FAIL "$(wg show wg0 | tr '\n' ' ')"; fi
cmd vpn-client dns 40 "nslookup -type=a web.vpn.test 10.139.1.1"
case "$rc $out" in
0*"10.64.0.1"*) if grep -q "query\[A\] web.vpn.test from 10.64.0.2" $dlog; then log dns ok; else
  log dns FAIL "answered but dnsmasq logged no query from the tunnel: $(tr '\n' ' ' < $dlog)"; fi ;;
*) log dns FAIL "rc=$rc: $out" ;;
esac
# the peer down for 30 s while the client keeps trying
send vpn-client keep "for i in \$(seq 1 30); do echo MOATLEAKMARKER | nc -w 1 10.64.0.1 80 >/dev/null 2>&1; ping -c 1 -W 1 10.64.0.1 >/dev/null; done; echo kept"
ipr link set wg0 down
log peer-down $(up)
sleep 30
ipr link set wg0 up
log peer-up $(up)
echo hello > /tmp/www/hello
cmd vpn-client again 150 "timeout 100 sh -c 'until ping -c 1 -W 2 10.64.0.1 >/dev/null; do :; done'; timeout 40 wget -q -O /tmp/b http://10.64.0.1/blob; r=\$?; echo bytes \$(wc -c </tmp/b) \$(sha256sum </tmp/b | cut -d' ' -f1); rm -f /tmp/b; exit \$r"
case "$out" in
*"bytes $blobsize $blobsum"*) log resumed ok $(up) ;;
*) log resumed FAIL "rc=$rc: $out" ;;
esac
# a bad configuration: the VM says why and sends nothing more
xenstore-write /local/domain/$vpn/vpn/wg-quick "[Interface]
PrivateKey = not-a-key"
if wait_for $vlog "vpn: not forwarding: bad wg-quick configuration" 20; then log bad-config ok; else
  log bad-config FAIL "$(tail -n 5 $vlog | tr -d '\r' | tr '\n' '|')"
fi
sleep 2
kill -USR2 $cap 2>/dev/null
n_before=$(tcpd -r /tmp/bridge.pcap -n ether src @VPN_MAC@ 2>/dev/null | wc -l)
sleep 10
n_after=$(tcpd -r /tmp/bridge.pcap -n ether src @VPN_MAC@ 2>/dev/null | wc -l)
kill $cap; sleep 1
if [ "$n_before" -gt 0 ] && [ "$n_after" = "$n_before" ]; then log bad-config-silent ok $n_before; else
  log bad-config-silent FAIL "$n_before frames from the VM before, $n_after 10 s later"
fi
# the leak check over the whole capture
tcpd -r /tmp/bridge.pcap -n -e ether src @VPN_MAC@ > /tmp/vpn-frames.txt 2>/dev/null
total=$(wc -l < /tmp/vpn-frames.txt)
other=$(grep -v -E 'ethertype ARP|10\.99\.0\.30\.51820 > 10\.99\.0\.1\.51820: UDP' /tmp/vpn-frames.txt | wc -l)
wgcount=$(grep -c -E '10\.99\.0\.30\.51820 > 10\.99\.0\.1\.51820: UDP' /tmp/vpn-frames.txt)
ls -l /tmp/bridge.pcap | sed 's/^/CAPTURE /'; tr '\n' ' ' < /tmp/tcpdump.log | sed 's/^/CAPTURE /'; echo
if [ "$total" -gt 0 ] && [ "$other" = 0 ] && [ "$wgcount" -gt 0 ]; then log only-wireguard ok $total $wgcount; else
  log only-wireguard FAIL "$total frames from the VM, $wgcount WireGuard, $other other: $(grep -v -E 'ethertype ARP|51820 > 10\.99\.0\.1\.51820: UDP' /tmp/vpn-frames.txt | head -n 5 | tr '\n' '|')"
fi
all=$(tcpd -r /tmp/bridge.pcap -n 2>/dev/null | wc -l)
clientip=$(tcpd -r /tmp/bridge.pcap -n host @CLIENT_IP@ 2>/dev/null | wc -l)
marker=$(tcpd -r /tmp/bridge.pcap -n -A 2>/dev/null | grep -c MOATLEAKMARKER)
if [ "$all" -gt 0 ] && [ "$clientip" = 0 ] && [ "$marker" = 0 ]; then log no-cleartext ok $all; else
  log no-cleartext FAIL "$all frames captured, $clientip with the client's address, $marker with the marker"
fi
grep -a "vpn: stats:" $vlog | tail -n 1 | tr -d '\r' | sed 's/^/VPNSTATS /'
grep -a -E "panicked|PANIC" $vlog && log no-panic FAIL || log no-panic ok
xl destroy vpn-client; xl destroy vpn
tr -d '\r' < $vlog | sed 's/^/GUEST vpn: /' | tail -n 60
log end @TYPE@
"""

WORDS = ["wg-up", "capture", "configured", "client-ready", "download", "handshake", "dns", "resumed",
         "bad-config", "bad-config-silent", "only-wireguard", "no-cleartext", "no-panic"]


def extract_modules(cache: Path, kver: str, out: Path) -> None:
    """MODULES and their dependencies from the rig's cached linux-image
    package into `out`, with `order` listing them in load order."""
    deb = linux_domu.newest_deb(cache / "debs", f"linux-image-{kver}")
    with tempfile.TemporaryDirectory(prefix="moat-vpn-mods-") as tmp:
        stage = Path(tmp)
        tar = subprocess.Popen(["dpkg", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(stage), "--wildcards", f"./lib/modules/{kver}/*"],
                       stdin=tar.stdout, check=True)
        tar.stdout.close()
        assert tar.wait() == 0, f"dpkg --fsys-tarfile {deb} failed"
        subprocess.run(["depmod", "-b", str(stage), kver], check=True)
        order: list = []
        for m in MODULES:
            text = subprocess.run(["modprobe", "-d", str(stage), "-S", kver, "--show-depends", m],
                                  check=True, capture_output=True, text=True).stdout
            for line in text.splitlines():
                words = line.split()
                if words[:1] == ["insmod"] and words[1] not in order:
                    order.append(words[1])
        out.mkdir(parents=True, exist_ok=True)
        names = []
        for ko in order:
            names.append(Path(ko).name)
            shutil.copyfile(ko, out / Path(ko).name)
    (out / "order").write_text("\n".join(names) + "\n")


def libraries(program: str) -> list:
    """The shared libraries `program` loads (ldd), the loader included."""
    text = subprocess.run(["ldd", program], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in text.splitlines():
        words = line.split()
        if "=>" in words and len(words) > words.index("=>") + 1 and words[words.index("=>") + 1].startswith("/"):
            libs.append(words[words.index("=>") + 1])
        elif words and words[0].startswith("/"):
            libs.append(words[0])
    return libs


def kit(cache: Path, kver: str, out: Path) -> Path:
    """wgkit.tgz: bin/ (PROGRAMS), lib/ (their libraries and ld.so), mods/."""
    with tempfile.TemporaryDirectory(prefix="moat-vpn-kit-") as tmp:
        root = Path(tmp)
        extract_modules(cache, kver, root / "mods")
        (root / "bin").mkdir()
        (root / "lib").mkdir()
        for p in PROGRAMS:
            shutil.copyfile(p, root / "bin" / Path(p).name)
            (root / "bin" / Path(p).name).chmod(0o755)
            for lib in libraries(p):
                name = "ld-linux-x86-64.so.2" if "ld-linux" in lib else Path(lib).name
                shutil.copyfile(lib, root / "lib" / name)
                (root / "lib" / name).chmod(0o755)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for sub in ("bin", "lib", "mods"):
                t.add(root / sub, arcname=sub)
        out.write_bytes(buf.getvalue())
    return out


def keypair() -> tuple:
    private = subprocess.run(["wg", "genkey"], check=True, capture_output=True, text=True).stdout.strip()
    public = subprocess.run(["wg", "pubkey"], input=private, check=True, capture_output=True,
                            text=True).stdout.strip()
    return private, public


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(REPO / "target/images/amd64/vpn"))
    ap.add_argument("--types", default="pvh", help="pv and/or pvh (the VPN VM's type; the client is PV); "
                    "the pv VM reads its wg-quick file from a disk, the pvh one from xenstore")
    ap.add_argument("--blob-mib", type=int, default=2)
    ap.add_argument("--memory", type=int, default=0,
                    help="the VM's memory= in MiB (default: the config's, 32)")
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--log")
    args = ap.parse_args()
    types = [t for t in args.types.split(",") if t]
    if not types or any(t not in ("pv", "pvh") for t in types):
        print("--types takes pv and/or pvh", file=sys.stderr)
        return 2
    image = Path(args.image)
    if not image.is_file():
        print(f"no image at {image}: run `make images`", file=sys.stderr)
        return 2
    for p in PROGRAMS:
        if not Path(p).is_file():
            print(f"{p} missing on this host (wireguard-tools, tcpdump, iproute2)", file=sys.stderr)
            return 2
    domu = linux_domu.build()
    cache = xenrig.cache_dir("amd64")
    work = Path(tempfile.mkdtemp(prefix="moat-test-vpn-"))
    try:
        kitfile = kit(cache, domu.kernel_version, work / "wgkit.tgz")
        vm_priv, vm_pub = keypair()
        d0_priv, d0_pub = keypair()
        (work / "vm-wg0.conf").write_text(
            f"[Interface]\nPrivateKey = {vm_priv}\nAddress = 10.64.0.2/32\nDNS = 10.64.0.1\nMTU = 1420\n"
            f"[Peer]\nPublicKey = {d0_pub}\nEndpoint = 10.99.0.1:51820\nAllowedIPs = 0.0.0.0/0\n")
        (work / "dom0-wg.conf").write_text(
            f"[Interface]\nPrivateKey = {d0_priv}\nListenPort = 51820\n"
            f"[Peer]\nPublicKey = {vm_pub}\nAllowedIPs = 10.64.0.2/32\n")
        guests = [
            (image, "vpn"),
            (REPO / "configs/vpn-client-pv.cfg", "vpn-client-pv.cfg"),
            (domu.kernel, "vmlinuz"),
            (domu.ramdisk, "linux-domu.cpio.gz"),
            (kitfile, "wgkit.tgz"),
            (work / "vm-wg0.conf", "vm-wg0.conf"),
            (work / "dom0-wg.conf", "dom0-wg.conf"),
        ] + [(REPO / f"configs/vpn-{t}.cfg", f"vpn-{t}.cfg") for t in types]
        text = SETUP.replace("@BLOB_MIB@", str(args.blob_mib)) + "\n".join(SCRIPT.replace("@TYPE@", t).replace("@SOURCE@", "disk" if t == "pv" else "xenstore").replace("@BLOB_MIB@", str(args.blob_mib))
                         .replace("@MEMORY@", f"memory={args.memory}" if args.memory else "")
                         .replace("@VPN_MAC@", VPN_MAC).replace("@CLIENT_IP@", CLIENT_IP) for t in types)
        xenrig.exit_on_sigterm()
        result = xenrig.run_script(text, guests=guests, timeout=args.timeout,
                                   log=Path(args.log) if args.log else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    texts = [l for _, l in result.lines]
    passed, failures = 0, []
    if result.rc != 0:
        failures.append(f"rig: dom0 script ended with rc {result.rc} (timeout 124, rig failure 125)")
    failures += [l for l in texts if l.startswith("RIG kit FAIL")]
    for t in types:
        try:
            a = next(i for i, l in enumerate(texts) if l.startswith(f"RIG create vpn-{t}"))
        except StopIteration:
            failures.append(f"{t}: never started")
            continue
        b = next((i for i, l in enumerate(texts) if l.startswith(f"RIG end {t}")), len(texts))
        part = texts[a:b + 1]
        for w in WORDS:
            lines = [l for l in texts[:b + 1] if l.startswith(f"RIG {w} ")]
            if w not in ("wg-up", "capture"):
                lines = [l for l in part if l.startswith(f"RIG {w} ")]
            if lines and lines[-1].split()[2] == "ok":
                passed += 1
            else:
                failures.append(f"{t}: {w}: {lines[-1] if lines else 'no result'}")
        d = [l.split() for l in part if l.startswith("RIG download ok")]
        if d and len(d[0]) == 6:
            secs = float(d[0][4]) - float(d[0][3])
            print(f"bench: {t}: download through the VPN VM and dom0's kernel WireGuard (busybox wget): "
                  f"{int(d[0][5])} bytes in {secs:.2f} s = {int(d[0][5]) * 8 / secs / 1e6:.2f} Mbit/s")
        for l in part:
            if l.startswith("RIG only-wireguard ok") or l.startswith("VPNSTATS"):
                print(f"{t}: {l}")
    for f in failures:
        print(f"FAIL: {f}")
    print(f"test_vpn: {passed} passed, {len(failures)} failed")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
