"""Bounded test traffic, run inside a pod's namespace with `ip netns exec`.

usage:
  traffic.py tcp-server PORT [--count N]       accept N connections, read until EOF, reply "ok"
  traffic.py tcp-client HOST PORT [--writes N --size B]
  traffic.py udp-send HOST PORT [--count N --ports P]   N datagrams spread over P ports
  traffic.py udp-echo PORT [--count N]
Every mode stops by itself: after its count, or after --timeout seconds.
"""
from __future__ import annotations

import argparse
import socket
import sys
import time


def family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def tcp_server(a: argparse.Namespace) -> None:
    fam = socket.AF_INET6 if a.ipv6 else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if a.ipv6 else "0.0.0.0", a.port))
    s.listen(128)
    s.settimeout(a.timeout)
    print("ready", flush=True)
    for _ in range(a.count):
        c, _ = s.accept()
        c.settimeout(a.timeout)
        while c.recv(65536):
            pass
        c.sendall(b"ok")
        c.close()


def tcp_client(a: argparse.Namespace) -> None:
    c = socket.create_connection((a.host, a.port), timeout=a.timeout)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = b"x" * a.size
    for _ in range(a.writes):
        c.sendall(payload)
        if a.pace:
            time.sleep(a.pace)
    c.shutdown(socket.SHUT_WR)
    c.recv(16)
    c.close()


def udp_send(a: argparse.Namespace) -> None:
    s = socket.socket(family(a.host), socket.SOCK_DGRAM)
    for i in range(a.count):
        s.sendto(b"x" * a.size, (a.host, a.port + (i % a.ports)))
        if a.pace:
            time.sleep(a.pace)


def udp_echo(a: argparse.Namespace) -> None:
    s = socket.socket(socket.AF_INET6 if a.ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("::" if a.ipv6 else "0.0.0.0", a.port))
    s.settimeout(a.timeout)
    print("ready", flush=True)
    for _ in range(a.count):
        data, peer = s.recvfrom(65536)
        s.sendto(data, peer)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    p.add_argument("args", nargs="*")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--writes", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--ports", type=int, default=1)
    p.add_argument("--pace", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--ipv6", action="store_true")
    a = p.parse_args()
    if a.mode in ("tcp-server", "udp-echo"):
        a.port = int(a.args[0])
    else:
        a.host, a.port = a.args[0], int(a.args[1])
    {"tcp-server": tcp_server, "tcp-client": tcp_client, "udp-send": udp_send,
     "udp-echo": udp_echo}[a.mode](a)


if __name__ == "__main__":
    try:
        main()
    except socket.timeout:
        sys.exit("timed out")
