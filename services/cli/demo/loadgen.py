"""The tutorial's curl loop: GET productpage at a fixed rate, for a bounded time."""
from __future__ import annotations

import argparse
import asyncio
import signal
import time

from aiohttp import ClientTimeout

from webb.timeouts import wait_for

from .bookinfo import client_session


async def ping(host: str) -> None:
    """One ICMP echo, so the ICMP panels and flows have something to show."""
    proc = await asyncio.create_subprocess_exec("ping", "-c", "1", "-W", "1", host,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    await proc.wait()


async def run(url: str, rate: float, duration: float, max_requests: int,
              ping_every: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    deadline = time.monotonic() + duration
    sent = ok = 0
    next_ping = time.monotonic()
    host = url.split("//", 1)[1].split(":", 1)[0].split("/", 1)[0]
    print("ready", flush=True)
    async with client_session(ClientTimeout(total=5)) as s:
        while not stop.is_set() and time.monotonic() < deadline and sent < max_requests:
            sent += 1
            if ping_every and time.monotonic() >= next_ping:
                next_ping = time.monotonic() + ping_every
                await ping(host)
            try:
                async with s.get(url) as r:
                    await r.read()
                    ok += r.status == 200
            except Exception:
                pass
            try:
                await wait_for(stop.wait(), 1.0 / rate)
            except asyncio.TimeoutError:
                pass
    print(f"sent {sent} requests, {ok} ok", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="http://productpage.bookinfo:9080/productpage")
    p.add_argument("--rate", type=float, default=2.0, help="requests per second")
    p.add_argument("--duration", type=float, default=3600.0, help="seconds, at most")
    p.add_argument("--max-requests", type=int, default=1_000_000)
    p.add_argument("--ping-every", type=float, default=5.0, help="seconds between pings (0: none)")
    a = p.parse_args()
    asyncio.run(run(a.url, a.rate, a.duration, a.max_requests, a.ping_every))


if __name__ == "__main__":
    main()
