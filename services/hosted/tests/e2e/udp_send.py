"""Send one UDP datagram with a chosen source address, through a raw
socket (so a spoofed source is possible). Usage: udp_send.py SRC DST PORT"""
import socket
import struct
import sys

src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
payload = b"moat-udp"
udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
ip = struct.pack(
    "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x1234, 0, 64, 17, 0,
    socket.inet_aton(src), socket.inet_aton(dst),
)
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
sock.sendto(ip + udp, (dst, 0))
