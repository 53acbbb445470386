"""Send one UDP datagram with TTL 1 towards DST and print the source of
the ICMP time-exceeded that comes back within 2 s, or "none".
Usage: ttl_probe.py DST (needs root: a raw ICMP socket listens)"""
import socket
import sys
import time

dst = sys.argv[1]
listen = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
listen.settimeout(0.5)
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)
probe.sendto(b"moat-ttl", (dst, 33434))
deadline = time.time() + 2
while time.time() < deadline:
    try:
        packet, peer = listen.recvfrom(2048)
    except socket.timeout:
        continue
    icmp = packet[(packet[0] & 0x0F) * 4:]
    if icmp[0] == 11:
        print(peer[0])
        sys.exit(0)
print("none")
sys.exit(1)
