"""ABBA rounds shared by the benches that compare webb's server with a bare grpcio one."""
from __future__ import annotations

from typing import Callable


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
