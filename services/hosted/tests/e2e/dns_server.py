"""A tiny authoritative DNS server for the end-to-end test: answers A
queries for the names given on the command line (name=address), NXDOMAIN
otherwise. Usage: dns_server.py BIND_ADDR name=addr..."""
import socket
import struct
import sys

bind = sys.argv[1]
table = dict(arg.split("=", 1) for arg in sys.argv[2:])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((bind, 53))
while True:
    query, peer = sock.recvfrom(512)
    if len(query) < 12:
        continue
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    labels, at = [], 12
    while at < len(query) and query[at] != 0:
        length = query[at]
        labels.append(query[at + 1:at + 1 + length].decode(errors="replace"))
        at += 1 + length
    question = query[12:at + 5]
    name = ".".join(labels).lower()
    qtype = struct.unpack("!H", query[at + 1:at + 3])[0] if at + 3 <= len(query) else 0
    address = table.get(name)
    if address and qtype == 1:
        answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
        header = struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0)
        sock.sendto(header + question + answer, peer)
    else:
        rcode = 3 if not address else 0
        header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, 0, 0, 0)
        sock.sendto(header + question, peer)
