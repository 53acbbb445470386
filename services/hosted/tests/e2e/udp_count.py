"""Count UDP datagrams arriving at ADDR:PORT for SECONDS; print the
sources. Usage: udp_count.py ADDR PORT SECONDS"""
import socket
import sys
import time

addr, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:  # room for a burst (the VPN test delivers 256 queued datagrams at once)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUFFORCE, 1 << 22)
except (OSError, AttributeError):
    pass
sock.bind((addr, port))
sock.settimeout(0.2)
deadline = time.time() + seconds
sources = []
while time.time() < deadline:
    try:
        _, peer = sock.recvfrom(2048)
        sources.append(peer[0])
    except socket.timeout:
        pass
print(" ".join(sources))
