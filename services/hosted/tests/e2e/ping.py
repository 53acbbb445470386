"""Send one ICMP echo request to DST; exit 0 on a matching reply within
2 s. Usage: ping.py DST"""
import os
import socket
import struct
import sys
import time


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


dst = sys.argv[1]
ident = os.getpid() & 0xFFFF
body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"moat-ping"
packet = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.settimeout(0.5)
sock.sendto(packet, (dst, 0))
deadline = time.time() + 2
while time.time() < deadline:
    try:
        reply, peer = sock.recvfrom(2048)
    except socket.timeout:
        continue
    header_len = (reply[0] & 0x0F) * 4
    icmp = reply[header_len:]
    if peer[0] == dst and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
        print(f"reply from {dst}")
        sys.exit(0)
print("no reply")
sys.exit(1)
