"""HTTP/1.1 test client for the L7 policy tests, run inside a pod's namespace.

usage: http_client.py HOST PORT TIMEOUT [SPORT] < JSON
SPORT: connect from this source port (SO_REUSEADDR) and end with a reset (SO_LINGER 0),
so that no state of the connection is left and the next run can take the same port.
JSON (on stdin) is a list of steps on ONE connection, each {"send": "<raw request text>"} or
{"read": n} (read n responses), or {"pipeline": [...raw requests...]} (all sent at
once, then every answer read), or {"raw": "<text>"} (send, then read until close), or
{"wait": PATH} (create PATH.waiting, then wait up to 60 s for PATH to exist).
Prints a JSON list: per response {"status", "headers", "body"}, per raw step
{"raw": text read until close}; "timeout", "refused" or "closed" end it early.
"""
import json
import os
import socket
import struct
import sys
import time


def read_response(f):
    line = f.readline()
    if not line:
        return None
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers = {}
    while True:
        h = f.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    body = b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                f.readline()
                break
            body += f.read(size)
            f.readline()
    elif "content-length" in headers:
        n = int(headers["content-length"])
        body = f.read(n)
        if len(body) < n:
            return {"status": int(parts[1]), "headers": headers, "body": body.decode("latin-1"),
                    "cut": True}
    return {"status": int(parts[1]), "headers": headers, "body": body.decode("latin-1")}


def main():
    host, port, timeout, steps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), json.load(sys.stdin)
    out = []
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if len(sys.argv) > 4:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", int(sys.argv[4])))
    try:
        s.connect((host, port))
        f = s.makefile("rb")
        for step in steps:
            if "send" in step:
                s.sendall(step["send"].encode("latin-1"))
                r = read_response(f)
                if r is None:
                    out.append("closed")
                    break
                out.append(r)
            elif "pipeline" in step:
                s.sendall("".join(step["pipeline"]).encode("latin-1"))
                for _ in step["pipeline"]:
                    r = read_response(f)
                    out.append(r if r is not None else "closed")
            elif "wait" in step:
                # Holds the connection: says so (PATH.waiting), then waits for PATH.
                path = step["wait"]
                open(path + ".waiting", "w").close()
                for _ in range(1200):
                    if os.path.exists(path):
                        break
                    time.sleep(0.05)
            elif "raw" in step:
                s.sendall(step["raw"].encode("latin-1"))
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                out.append({"raw": data.decode("latin-1")})
    except socket.timeout:
        out.append("timeout")
    except ConnectionRefusedError:
        out.append("refused")
    except ConnectionResetError:
        out.append("reset")
    print(json.dumps(out))


main()
