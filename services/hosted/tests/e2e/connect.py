"""Open a TCP connection to HOST:PORT and print how it went: "connected",
or the errno name (EHOSTUNREACH is what ICMP admin-prohibited turns into, EACCES for
ICMPv6,
ECONNREFUSED a TCP reset, "timeout" a silent drop).
Usage: connect.py HOST PORT"""
import errno
import socket
import sys

family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
sock = socket.socket(family, socket.SOCK_STREAM)
sock.settimeout(2)
try:
    sock.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except socket.timeout:
    print("timeout")
except OSError as error:
    print(errno.errorcode.get(error.errno, str(error.errno)))
