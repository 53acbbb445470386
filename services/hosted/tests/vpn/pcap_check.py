"""Checks a capture of the VPN gateway's uplink (classic pcap, Ethernet).

Every frame the gateway sends (source MAC = the gateway's) must be ARP for
its own address or a UDP datagram from its address and WireGuard port to the
peer's endpoint, carrying a well-formed WireGuard message. No frame in either
direction may carry a client address, IPv6, or the HTTP page in clear.
Frames towards the gateway may be ARP, WireGuard from the peer, or ICMP errors
from the peer (its port is closed while it is down): these are counted.

Usage: pcap_check.py PCAP GW_MAC GW_IP PORT PEER_IP PEER_PORT CLIENT_NET
       SECRET [PHASE=START,END]...
(CLIENT_NET as a.b.c.d/len; SECRET: bytes that must never appear in clear;
each PHASE names a window of Unix times, e.g. down=1700000000.1,1700000030.2;
frames outside every window belong to phase `up`.)
Prints per-phase counts, one `name value` per line, then `PCAP: ok` or the
violations; exit 1 on any violation.
"""
import ipaddress
import struct
import sys

(path, gw_mac, gw_ip, port, peer_ip, peer_port, client_net, secret) = sys.argv[1:9]
phases = []
for arg in sys.argv[9:]:
    name, window = arg.split("=", 1)
    start, end = window.split(",")
    phases.append((name, float(start), float(end)))
gw_mac = bytes.fromhex(gw_mac.replace(":", ""))
gw_ip = ipaddress.IPv4Address(gw_ip)
peer_ip = ipaddress.IPv4Address(peer_ip)
port, peer_port = int(port), int(peer_port)
client_net = ipaddress.IPv4Network(client_net)
secret = secret.encode()

# Expected sizes of WireGuard messages: initiation, response, cookie reply;
# transport data is 16 bytes of header, a 16-byte tag and the plaintext
# (padded to 16 bytes, but never beyond the MTU, so any length can occur).
WG_FIXED = {1: 148, 2: 92, 3: 64}


def wireguard_kind(payload):
    if len(payload) < 4 or payload[1:4] != b"\0\0\0":
        return None
    kind = payload[0]
    if kind in WG_FIXED:
        return {1: "initiation", 2: "response", 3: "cookie"}[kind] if len(payload) == WG_FIXED[kind] else None
    if kind == 4 and len(payload) >= 32:
        return "keepalive" if len(payload) == 32 else "data"
    return None


counts = {}
violations = []


def count(name):
    counts[name] = counts.get(name, 0) + 1


with open(path, "rb") as f:
    data = f.read()
if len(data) < 24:
    print("PCAP: empty capture")
    sys.exit(1)
magic = struct.unpack("<I", data[:4])[0]
if magic == 0xA1B2C3D4:
    endian, tsdiv = "<", 1e6
elif magic == 0xA1B23C4D:
    endian, tsdiv = "<", 1e9
else:
    print(f"PCAP: unknown magic {magic:#x}")
    sys.exit(1)
if struct.unpack(endian + "I", data[20:24])[0] != 1:
    print("PCAP: not an Ethernet capture")
    sys.exit(1)

at = 24
index = 0
while at + 16 <= len(data):
    sec, frac, caplen, _ = struct.unpack(endian + "IIII", data[at:at + 16])
    frame = data[at + 16:at + 16 + caplen]
    at += 16 + caplen
    index += 1
    t = sec + frac / tsdiv
    phase = next((name for name, start, end in phases if start <= t < end), "up")
    count("frames")
    if secret in frame:
        violations.append(f"frame {index}: the HTTP page in clear")
    if len(frame) < 14:
        violations.append(f"frame {index}: runt")
        continue
    src_mac, ethertype = frame[6:12], struct.unpack("!H", frame[12:14])[0]
    body = frame[14:]
    from_gw = src_mac == gw_mac
    direction = "from_gw" if from_gw else "to_gw"
    if ethertype == 0x0806:
        count(f"{direction}_arp")
        if from_gw and (len(body) < 28 or ipaddress.IPv4Address(body[14:18]) != gw_ip):
            violations.append(f"frame {index}: gateway ARP not for its own address")
        continue
    if ethertype == 0x86DD:
        count(f"{direction}_ipv6")
        violations.append(f"frame {index}: IPv6 on the uplink ({direction})")
        continue
    if ethertype != 0x0800 or len(body) < 20:
        count(f"{direction}_other")
        violations.append(f"frame {index}: ethertype {ethertype:#x} ({direction})")
        continue
    ihl = (body[0] & 0x0F) * 4
    proto = body[9]
    src = ipaddress.IPv4Address(body[12:16])
    dst = ipaddress.IPv4Address(body[16:20])
    if src in client_net or dst in client_net:
        count(f"{phase}_cleartext_client")
        violations.append(f"frame {index}: client address in clear ({src} -> {dst}, {phase})")
        continue
    l4 = body[ihl:]
    if from_gw:
        sport, dport = struct.unpack("!HH", l4[:4]) if len(l4) >= 8 else (0, 0)
        kind = wireguard_kind(l4[8:]) if proto == 17 else None
        if (proto, src, sport, dst, dport) != (17, gw_ip, port, peer_ip, peer_port) or kind is None:
            count(f"{phase}_from_gw_not_wireguard")
            violations.append(
                f"frame {index}: gateway sent proto {proto} {src} -> {dst} that is not WireGuard to the peer")
            continue
        count(f"{phase}_from_gw_wg_{kind}")
    else:
        if proto == 17 and src == peer_ip and dst == gw_ip and len(l4) >= 8:
            kind = wireguard_kind(l4[8:])
            count(f"{phase}_to_gw_wg_{kind or 'malformed'}")
        elif proto == 1 and src == peer_ip and l4[:1] == b"\x03":
            count(f"{phase}_to_gw_icmp_unreachable")
        else:
            count(f"{phase}_to_gw_other")

for name in sorted(counts):
    print(f"{name} {counts[name]}")
if violations:
    for v in violations[:20]:
        print("VIOLATION:", v)
    print(f"PCAP: {len(violations)} violations")
    sys.exit(1)
print("PCAP: ok")
