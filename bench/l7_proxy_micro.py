#!/usr/bin/env python3
"""The L7 proxy's own per-request cost, without the datapath: the proxy's connection
handler (l7proxy/connection.py, its HTTP parsing, rules and L7 flow building) between a
client and a server over real loopback sockets. Prints requests/s and the proxy
process's CPU per request (the client and the server run in another process), with the
load noted; --profile adds cProfile's top functions. Asserts nothing.

Run as root from the repository (the upstream socket is IP_TRANSPARENT, as in the agent):
  .venv/bin/python bench/l7_proxy_micro.py            # ~10 s; --requests, --profile
  .venv/bin/python bench/l7_proxy_micro.py --no-sockets   # the Python alone, ~5 s

--no-sockets: the same connection handler on transports that only count the bytes
written, fed the request and the answer by direct calls, and the two L7 messages per
request built afterwards as the agent's ingest builds them (a batch of cold flows):
the Python per request without a system call, as the best of several runs. Steadier
than the socket run on a shared machine (no wake-ups, no scheduling), so it is the
figure for comparing two versions of the proxy's Python (PYTHONPATH=DIR for another
revision's webb_agent, as l7_bench.py --compare-agent does).

What it leaves out, measured by l7_policy_bench.py: the eBPF steering, veths and
namespaces, and the agent's ingest of the flows (here they are built and dropped).
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from l7_policy_bench import REQUEST, RESPONSE  # noqa: E402  the same messages


def _peer(requests: int) -> None:
    """Server and client (threads of this process): prints the server's port, reads the
    proxy's, runs the client on one keep-alive connection, prints the elapsed seconds."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        c, _ = srv.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        while data := c.recv(65536):
            buf += data
            n = buf.count(b"\r\n\r\n")
            if n:
                buf = buf[buf.rfind(b"\r\n\r\n") + 4:]
                c.sendall(RESPONSE * n)
    threading.Thread(target=serve, daemon=True).start()
    print(srv.getsockname()[1], flush=True)
    port = int(sys.stdin.readline())
    c = socket.create_connection(("127.0.0.1", port))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t0 = 0.0
    for i in range(requests + 500):
        if i == 500:  # after the warm-up
            t0 = time.perf_counter()
            print("go", flush=True)
        c.sendall(REQUEST)
        got = 0
        while got < len(RESPONSE):
            chunk = c.recv(65536)
            if not chunk:
                raise SystemExit("the proxy closed the connection")
            got += len(chunk)
    print(time.perf_counter() - t0, flush=True)
    c.close()


def _policy(direction: int, port: int) -> tuple[Any, Any]:
    """The proxy's policy engine and endpoint registry, as small as the bench needs (it
    measures the proxy, not them): one local endpoint (id 1) whose rule for `port` in
    `direction` lets identity 5 (every peer) GET /api/.*."""
    from webb_agent.policy.compile import L7Entry, PolicyRef
    from webb_agent.policy.model import HTTPRule

    class Endpoint:
        id = 1

    class Registry:
        def by_ip(self, ip: str) -> Endpoint:
            return Endpoint()

        def is_local(self, ep: Endpoint) -> bool:
            return True

    class Engine:
        class compiled:
            l7: dict = {}

        def identity_of(self, ip: str) -> int:
            return 5

    ref = PolicyRef("CiliumNetworkPolicy", "bench", "srv", 1, ())
    Engine.compiled.l7[(1, direction, port)] = (
        L7Entry(frozenset({5}), (HTTPRule(method="GET", path="/api/.*"),), ref),)
    return Engine(), Registry()


async def _proxy(requests: int, profile: cProfile.Profile | None) -> None:
    from webb_agent.l7proxy.flows import l7_message
    from webb_agent.l7proxy.connection import ClientConnection
    from webb_agent.l7proxy.proxy import L7Proxy
    from webb_agent.policy.compile import DIR_EGRESS

    class Datapath:
        async def in_netns(self, fn):  # this process's namespace is the "node's"
            return fn()

    peer = subprocess.Popen([sys.executable, __file__, "--mode", "peer", "--requests",
                             str(requests)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert peer.stdout is not None and peer.stdin is not None
        server = ("127.0.0.1", int(peer.stdout.readline()))
        proxy = L7Proxy(*_policy(DIR_EGRESS, server[1]), Datapath())
        flows = 0

        def on_flow(f) -> None:  # built as the agent builds them, then dropped
            nonlocal flows
            l7_message(f, 1)
            flows += 1
        proxy.on_flow = on_flow

        class Conn(ClientConnection):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                self.server = server  # the original destination (the datapath's part)
        loop = asyncio.get_running_loop()
        lst = await loop.create_server(lambda: Conn(proxy, True), "127.0.0.1", 0)
        peer.stdin.write(f"{lst.sockets[0].getsockname()[1]}\n")
        peer.stdin.flush()
        assert await loop.run_in_executor(None, peer.stdout.readline) == "go\n"
        c0 = time.process_time()
        if profile is not None:
            profile.enable()
        seconds = float(await loop.run_in_executor(None, peer.stdout.readline))
        if profile is not None:
            profile.disable()
        cpu = time.process_time() - c0
        lst.close()
        print(f"load average: {os.getloadavg()[0]:.2f}; event loop: {type(loop).__module__}")
        print(f"{requests} requests on one keep-alive connection: {requests / seconds:.0f} req/s, "
              f"proxy CPU {cpu / requests * 1e6:.1f} us/request ({flows} flows built)")
    finally:
        peer.kill()
        peer.wait()


class _CountingTransport:
    """What ClientConnection and Upstream use of a transport; writes are counted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def get_extra_info(self, key: str):  # type: ignore[no-untyped-def]
        return {"socket": self.sock, "peername": ("10.244.1.10", 40000),
                "sockname": ("10.244.1.11", 8080)}[key]

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


async def _no_sockets(requests: int, runs: int) -> None:
    import timeit

    from webb.gc_tune import freeze_and_raise
    from webb_agent.l7proxy.connection import ClientConnection, Upstream
    from webb_agent.l7proxy.flows import l7_message
    from webb_agent.l7proxy.proxy import L7Proxy
    from webb_agent.policy.compile import DIR_INGRESS

    freeze_and_raise("WEBB_BENCH_GC")  # the agent's collector settings (memory.py)

    proxy = L7Proxy(*_policy(DIR_INGRESS, 8080), None)
    flows: list = []
    proxy.on_flow = flows.append
    sock = socket.socket()
    conn = ClientConnection(proxy, False)
    conn.connection_made(_CountingTransport(sock))  # type: ignore[arg-type]
    up = Upstream(conn)
    up.connection_made(_CountingTransport(sock))  # type: ignore[arg-type]
    conn.up = up

    def one() -> None:
        conn.data_received(REQUEST)
        up.data_received(RESPONSE)

    best = best_flows = float("inf")
    for _ in range(runs):
        best = min(best, timeit.timeit(one, number=requests) / requests)
        t0 = time.perf_counter()
        for f in flows:
            l7_message(f, 1)
        best_flows = min(best_flows, (time.perf_counter() - t0) / requests)
        flows.clear()
    assert conn.transport.written == runs * requests * len(RESPONSE)  # type: ignore[union-attr]
    sock.close()
    print(f"load average: {os.getloadavg()[0]:.2f}; no sockets, best of {runs} runs of "
          f"{requests} requests")
    print(f"proxy Python per request: {best * 1e6:.2f} us; its two L7 messages built "
          f"afterwards: {best_flows * 1e6:.2f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--profile", action="store_true", help="cProfile the proxy (slower)")
    ap.add_argument("--event-loop", choices=["uvloop", "asyncio"], default="uvloop",
                    help="the proxy's event loop (the agent's default: uvloop)")
    ap.add_argument("--no-sockets", action="store_true",
                    help="the proxy's Python alone: counting transports, no system calls")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.no_sockets:
        asyncio.run(_no_sockets(a.requests, 7))
        return
    if a.mode == "peer":
        _peer(a.requests)
        return
    prof = cProfile.Profile() if a.profile else None
    if a.event_loop == "uvloop":
        import uvloop

        uvloop.run(_proxy(a.requests, prof))
    else:
        asyncio.run(_proxy(a.requests, prof))
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
