#!/usr/bin/env python3
"""What the L7 proxy pays per connection upstream for its source port: the socket made
in a thread standing for the agent's netlink thread (as Datapath.in_netns), bound to a
port of the range, connected from an event loop (uvloop, as the agent) to a server in
another process, then reset. ABBA rounds in one run: "new" = steering.connect_upstream
(SO_REUSEADDR, connect() retried on a taken 4-tuple), "old" = the explicit bind()
without SO_REUSEADDR the proxy had before (kept here to compare, same range). Both
reset their connections (SO_LINGER 0) so the old one never meets its TIME_WAIT
exhaustion: this measures the cost, not that bug. Prints connections/s and this
process's CPU per connection, with the load; asserts nothing.

Run as root (IP_TRANSPARENT) from the repository; it runs in a network namespace of
its own (unshare -n), loopback only:
  .venv/bin/python bench/upstream_connect_bench.py       # ~20 s; --conns, --rounds
"""
from __future__ import annotations

import argparse
import asyncio
import errno
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from abba import abba_rounds  # noqa: E402

LINGER0 = struct.pack("ii", 1, 0)


def _old_socket(family: int, client_ip: str, order: Iterator[int]) -> socket.socket:
    """The proxy's upstream socket before SO_REUSEADDR (steering.py at ab59915)."""
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _, port in zip(range(64), order):
            try:
                s.bind((client_ip, port))
                break
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
        else:
            raise OSError(errno.EADDRINUSE, "no source port free")
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


class _Netns:
    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1)

    async def in_netns(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn)


async def _connections(mode: str, n: int, dst: tuple[str, int], dp: _Netns) -> float:
    from webb_agent.l7proxy.steering import (UPSTREAM_PORTS, connect_upstream, netns_socket,
                                             port_order)
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    for _ in range(n):
        if mode == "webb":
            s = await connect_upstream(dp, socket.AF_INET, "127.0.0.2", dst)
        else:
            order = port_order(UPSTREAM_PORTS)
            s = await netns_socket(dp, lambda: _old_socket(socket.AF_INET, "127.0.0.2", order))
            try:
                await asyncio.wait_for(loop.sock_connect(s, dst), 10)
            except BaseException:
                s.close()
                raise
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        s.close()
    return time.perf_counter() - t0


def _serve() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    print(srv.getsockname()[1], flush=True)
    while True:
        c, _ = srv.accept()
        c.close()


def _inner(a: argparse.Namespace) -> None:
    import uvloop
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        dst = ("127.0.0.1", int(server.stdout.readline()))
        dp = _Netns()
        loop = uvloop.new_event_loop()

        def read(mode: str) -> tuple[float, float]:
            c0 = time.process_time()  # all threads of this process, finer than /proc ticks
            secs = loop.run_until_complete(_connections(mode, a.conns, dst, dp))
            return a.conns / secs, (time.process_time() - c0) / a.conns * 1e6
        ratios, rate, cpu = abba_rounds(read, a.rounds)
        loop.close()
    finally:
        server.kill()
        server.wait()
    med = statistics.median
    print(f"load average {os.getloadavg()[0]:.2f} (uptime), {a.conns} connections per read, "
          f"{a.rounds} ABBA rounds")
    print(f"new (connect_upstream): {med(rate['webb']):,.0f} connections/s, "
          f"{med(cpu['webb']):.1f} us CPU each (this process: loop + thread)")
    print(f"old (explicit bind):    {med(rate['bare']):,.0f} connections/s, "
          f"{med(cpu['bare']):.1f} us CPU each")
    print("new/old rate per round: " + " ".join(f"{r:.3f}" for r in ratios)
          + f"; median {med(ratios):.3f}")
    print(f"new/old CPU (medians): {med(cpu['webb']) / med(cpu['bare']):.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conns", type=int, default=2000, help="connections per read")
    p.add_argument("--rounds", type=int, default=5, help="ABBA rounds")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve:
        _serve()
    elif a.inner:
        _inner(a)
    else:
        sys.exit(subprocess.call(["unshare", "-n", sys.executable, __file__, "--inner",
                                  "--conns", str(a.conns), "--rounds", str(a.rounds)]))


if __name__ == "__main__":
    main()
