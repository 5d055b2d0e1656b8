"""Bounded HTTP/1.1 and DNS test traffic, run inside a pod's namespace.

usage:
  l7_traffic.py http-server PORT [--timeout S]
      answers GET /status/<code>, /delay/<ms>, /big (6000-byte body), anything else 200;
      keep-alive and pipelined requests are answered in order. Prints "ready".
  l7_traffic.py http-client HOST PORT --requests JSON [--pipeline] [--host NAME]
      one connection; JSON is a list of {"path", "headers"?}; prints a JSON list of
      {"path", "code", "latency_ms"} measured from the request's send to its response.
  l7_traffic.py raw-client HOST PORT --hex BYTES   sends bytes, reads until close
  l7_traffic.py dns-query SERVER NAME TYPE [--tcp]  prints JSON {"rcode", "answers"}
Every mode stops by itself, after its work or --timeout seconds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import struct
import sys
import time

REASONS = {200: "OK", 201: "Created", 404: "Not Found", 500: "Internal Server Error",
           503: "Service Unavailable", 302: "Found", 400: "Bad Request"}


async def _serve_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            if length:
                await reader.readexactly(length)
            code, body = 200, b"hello\n"
            path = path.split("?", 1)[0]
            if path.startswith("/status/"):
                code = int(path.split("/")[2])
            elif path.startswith("/delay/"):
                await asyncio.sleep(int(path.split("/")[2]) / 1000)
            elif path.startswith("/big"):
                body = b"b" * 6000
            writer.write(f"HTTP/1.1 {code} {REASONS.get(code, 'Status')}\r\n"
                         f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                         f"Set-Cookie: session=s3cr3t\r\n\r\n".encode() + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def http_server(a: argparse.Namespace) -> None:
    server = await asyncio.start_server(_serve_conn, host=["0.0.0.0", "::"], port=a.port,
                                        limit=1 << 16)
    print("ready", flush=True)
    async with server:
        await asyncio.sleep(a.timeout)


def _read_response(f) -> int:  # type: ignore[no-untyped-def]
    status = f.readline()
    code = int(status.split()[1])
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    f.read(length)
    return code


def http_client(a: argparse.Namespace) -> None:
    reqs = json.loads(a.requests)
    c = socket.create_connection((a.host, a.port), timeout=a.timeout)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = c.makefile("rb")
    host = a.host_header or f"{a.host}:{a.port}"

    def encode(r: dict) -> bytes:
        hdrs = "".join(f"{k}: {v}\r\n" for k, v in (r.get("headers") or {}).items())
        return f"GET {r['path']} HTTP/1.1\r\nHost: {host}\r\n{hdrs}\r\n".encode()
    out = []
    if a.pipeline:
        t0 = time.monotonic()
        c.sendall(b"".join(encode(r) for r in reqs))
        for r in reqs:
            code = _read_response(f)
            out.append({"path": r["path"], "code": code,
                        "latency_ms": (time.monotonic() - t0) * 1000})
    else:
        for r in reqs:
            t0 = time.monotonic()
            c.sendall(encode(r))
            code = _read_response(f)
            out.append({"path": r["path"], "code": code,
                        "latency_ms": (time.monotonic() - t0) * 1000})
            if a.pause:
                time.sleep(a.pause)
    c.close()
    print(json.dumps(out), flush=True)


def raw_client(a: argparse.Namespace) -> None:
    c = socket.create_connection((a.host, a.port), timeout=a.timeout)
    c.sendall(bytes.fromhex(a.hex))
    c.shutdown(socket.SHUT_WR)
    try:
        while c.recv(65536):
            pass
    except OSError:
        pass
    c.close()


QTYPES = {"A": 1, "AAAA": 28, "CNAME": 5}


def _name(data: bytes, off: int) -> tuple[str, int]:
    labels, jumped, end = [], False, off
    while True:
        n = data[off]
        if n & 0xC0 == 0xC0:
            if not jumped:
                end = off + 2
            off, jumped = ((n & 0x3F) << 8) | data[off + 1], True
            continue
        if n == 0:
            return ".".join(labels) + ".", (end if jumped else off + 1)
        labels.append(data[off + 1:off + 1 + n].decode())
        off += 1 + n


def dns_query(a: argparse.Namespace) -> None:
    qid = random.randrange(1, 65535)
    q = struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes((len(p),)) + p.encode() for p in a.name.strip(".").split(".")) + b"\0"
    q += struct.pack("!2H", QTYPES[a.qtype], 1)
    fam = socket.AF_INET6 if ":" in a.server else socket.AF_INET
    if a.tcp:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(a.timeout)
        s.connect((a.server, 53))
        s.sendall(struct.pack("!H", len(q)) + q)
        n = struct.unpack("!H", s.recv(2))[0]
        data = b""
        while len(data) < n:
            data += s.recv(n - len(data))
        s.close()
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(a.timeout)
        s.sendto(q, (a.server, 53))
        data = s.recv(4096)
    _, flags, qd, an, _, _ = struct.unpack_from("!6H", data)
    off = 12
    for _ in range(qd):
        _, off = _name(data, off)
        off += 4
    answers = []
    for _ in range(an):
        _, off = _name(data, off)
        t, _, ttl, ln = struct.unpack_from("!HHIH", data, off)
        off += 10
        rd = data[off:off + ln]
        if t == 1:
            answers.append(socket.inet_ntop(socket.AF_INET, rd))
        elif t == 28:
            answers.append(socket.inet_ntop(socket.AF_INET6, rd))
        elif t == 5:
            answers.append(_name(data, off)[0])
        off += ln
    print(json.dumps({"rcode": flags & 0xF, "answers": answers}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    p.add_argument("args", nargs="*")
    p.add_argument("--requests", default="[]")
    p.add_argument("--pipeline", action="store_true")
    p.add_argument("--pause", type=float, default=0.0)
    p.add_argument("--host-header", default="")
    p.add_argument("--hex", default="")
    p.add_argument("--tcp", action="store_true")
    p.add_argument("--timeout", type=float, default=20.0)
    a = p.parse_args()
    if a.mode == "http-server":
        a.port = int(a.args[0])
        asyncio.run(http_server(a))
    elif a.mode in ("http-client", "raw-client"):
        a.host, a.port = a.args[0], int(a.args[1])
        (http_client if a.mode == "http-client" else raw_client)(a)
    elif a.mode == "dns-query":
        a.server, a.name, a.qtype = a.args
        dns_query(a)
    else:
        sys.exit(f"unknown mode {a.mode}")


if __name__ == "__main__":
    main()
