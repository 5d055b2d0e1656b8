"""Connections one after another from a pod, for the L7 proxy's upstream source ports
(it opens one upstream per connection): each carries one DNS query over TCP (dns) or one
HTTP/1.1 GET kept alive (http: the server never closes first), its answer is read whole,
then this side closes.

usage: conn_sequence.py dns|http SERVER PORT COUNT SECONDS [NAME_OR_PATH]
Stops after COUNT connections or SECONDS in all (3 s at most per connection). Prints
JSON {"answered": n, "outcomes": {outcome: count}}, an outcome being "rcode N" (dns),
"status N" (http), "closed", "timeout", "reset" or "error: ...".
"""
import json
import os
import socket
import struct
import sys
import time

mode, server, port, count, seconds = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
                                      int(sys.argv[4]), float(sys.argv[5]))
what = sys.argv[6] if len(sys.argv) > 6 else ("example.com" if mode == "dns" else "/")
fam = socket.AF_INET6 if ":" in server else socket.AF_INET


def read_exactly(f, n: int) -> bytes:
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return data


def dns(f, s: socket.socket) -> str:
    ident = int.from_bytes(os.urandom(2), "big")
    q = struct.pack("!6H", ident, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l.encode() for l in what.rstrip(".").split(".")) + b"\0"
    q += struct.pack("!HH", 1, 1)
    s.sendall(struct.pack("!H", len(q)) + q)
    data = read_exactly(f, struct.unpack("!H", read_exactly(f, 2))[0])
    rid, flags = struct.unpack_from("!2H", data)
    return f"rcode {flags & 0xF}" if rid == ident else "error: another id"


def http(f, s: socket.socket) -> str:
    s.sendall(f"GET {what} HTTP/1.1\r\nHost: server\r\n\r\n".encode())
    status = f.readline().split(b" ", 2)
    if len(status) < 2:
        raise EOFError
    length = 0
    while (h := f.readline()) not in (b"\r\n", b""):
        k, _, v = h.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    read_exactly(f, length)
    return f"status {int(status[1])}"


outcomes: dict[str, int] = {}
answered = 0
end = time.monotonic() + seconds
for _ in range(count):
    if (left := end - time.monotonic()) <= 0:
        break
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(min(left, 3.0))
    try:
        s.connect((server, port))
        with s.makefile("rb") as f:
            got = (dns if mode == "dns" else http)(f, s)
        answered += not got.startswith("error")
    except EOFError:
        got = "closed"
    except socket.timeout:
        got = "timeout"
    except ConnectionResetError:
        got = "reset"
    except OSError as e:
        got = f"error: {e}"
    finally:
        s.close()
    outcomes[got] = outcomes.get(got, 0) + 1
print(json.dumps({"answered": answered, "outcomes": outcomes}))
