"""What the benches that compare webb's server with a bare grpcio one share: the ABBA
rounds, the bare server's GetFlows (the same pre-encoded responses, nothing else), the
length-prefixed file those responses travel in, and a process's CPU time."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable


def write_framed(path: str, msgs: Iterable[bytes]) -> None:
    with open(path, "wb") as f:
        for m in msgs:
            f.write(len(m).to_bytes(4, "big") + m)


def read_framed(path: str) -> list[bytes]:
    data = Path(path).read_bytes()
    msgs, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "big")
        msgs.append(data[i + 4:i + 4 + n])
        i += 4 + n
    return msgs


def add_bare_getflows(server: Any, msgs: list[bytes]) -> None:
    """observer.Observer/GetFlows on a grpc.aio server, streaming `msgs` as they are."""
    import grpc

    async def get_flows(req, ctx):  # type: ignore[no-untyped-def]
        for m in msgs:
            yield m
    h = grpc.unary_stream_rpc_method_handler(get_flows, request_deserializer=lambda b: b,
                                             response_serializer=lambda b: b)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "observer.Observer", {"GetFlows": h}),))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_profiled(main, profile: str) -> None:  # type: ignore[no-untyped-def]
    """asyncio.run(main()), under cProfile when `profile` names an output file."""
    import asyncio
    if not profile:
        asyncio.run(main())
        return
    import cProfile
    import pstats
    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(main())
    prof.disable()
    with open(profile, "w") as f:
        pstats.Stats(prof, stream=f).sort_stats("tottime").print_stats(25)


def abba_rounds(read: Callable[[str], tuple[float, float]], rounds: int
                ) -> tuple[list[float], dict[str, list[float]], dict[str, list[float]]]:
    """`read(mode)` -> (messages/s, server CPU µs per message) for mode "webb" or "bare".
    After one warm-up read of each, `rounds` rounds of webb, bare, bare, webb: the ratio
    webb/bare per round (the order cancels a drift within the round), every rate and CPU."""
    read("webb"), read("bare")  # warm-up (first connection, caches)
    ratios: list[float] = []
    rate: dict[str, list[float]] = {"webb": [], "bare": []}
    cpu: dict[str, list[float]] = {"webb": [], "bare": []}
    for _ in range(rounds):
        got: dict[str, list[float]] = {"webb": [], "bare": []}
        for mode in ("webb", "bare", "bare", "webb"):
            r, c = read(mode)
            got[mode].append(r)
            cpu[mode].append(c)
        rate["webb"] += got["webb"]
        rate["bare"] += got["bare"]
        ratios.append(sum(got["webb"]) / sum(got["bare"]))
    return ratios, rate, cpu
