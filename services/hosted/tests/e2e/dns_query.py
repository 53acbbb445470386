"""Resolve NAME's A record through SERVER over UDP; print the address.
Usage: dns_query.py SERVER NAME. Exit 1 without an answer within 2 s."""
import random
import socket
import struct
import sys

server, name = sys.argv[1], sys.argv[2]
ident = random.randrange(65536)
question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
query = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", 1, 1)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(2)
sock.sendto(query, (server, 53))
try:
    reply, peer = sock.recvfrom(512)
except OSError as error:
    print(f"no answer: {error}")
    sys.exit(1)
if peer[0] != server or struct.unpack("!H", reply[:2])[0] != ident:
    print(f"unexpected reply from {peer}")
    sys.exit(1)
ancount = struct.unpack("!H", reply[6:8])[0]
if ancount < 1:
    print("no address")
    sys.exit(1)
print(socket.inet_ntoa(reply[-4:]))
