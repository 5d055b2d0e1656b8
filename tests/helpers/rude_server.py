"""A TCP server that misbehaves right after accepting, for the L7 proxy's upstream
error paths: `close` closes each connection at once (FIN), `reset` resets it (RST),
`greet` sends a line that is not HTTP and closes, `early` answers `429` before
reading anything (as an overloaded server may) and closes.

usage: rude_server.py PORT MODE      (prints "ready" once listening, dual stack)
"""
import socket
import struct
import sys

port, mode = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", port))
s.listen(512)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    if mode == "reset":
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif mode == "greet":
        c.sendall(b"220 not http\r\n")
    elif mode == "early":
        c.sendall(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 4\r\n"
                  b"Connection: close\r\n\r\nbusy")
    c.close()
