#!/usr/bin/env python3
"""toFQDNs: what one new DNS answer costs the agent's event loop, by number of names
already learned, the current engine (B: an answer updates only its addresses'
entries) against the former code (A: a whole recompile per answer, or per burst),
ABBA in one run.

Run from the repository:  .venv/bin/python bench/fqdn_learn_bench.py   (about 1 min;
no root, no namespaces: the policy engine in-process with NullTables, so the figures
are the Python side only, the BPF map writes of the new entries come on top)

World: 4 local endpoints, one CiliumNetworkPolicy with three toFQDNs selectors (a
matchPattern `*.example.com`, a `**.svc.example.com` and one matchName). For each N,
N names (`h<i>.example.com`, one address each) are learned first, then
  sequential  --answers new answers, each awaited before the next (a client resolving
              one name after another): ms per answer (wall, which for B includes the
              2-ms coalescing wait, and CPU, what the event loop spent)
  burst       --answers new answers at once (many clients, or one resolving many
              names): ms for the whole burst, per answer
Each answer is awaited until its addresses are in the maps, as the DNS proxy does
before it sends the answer on.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import statistics
import sys
import time


from webb_agent.pipeline.l7.dns import DNSMessage
from webb_agent.policy.engine import PolicyEngine
from webb_agent.stores.endpoints import EndpointRegistry, NodeInfo, parse_endpoint
from webb_agent.stores.identities import IdentityAllocator

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fq, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toFQDNs: [{matchPattern: "*.example.com"}, {matchPattern: "**.svc.example.com"},
              {matchName: "api.github.com"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"""


class FormerEngine(PolicyEngine):
    """As before this change (b1ff055): every batch of answers (2 ms) recompiled every
    policy against every learned address and compared the whole map state."""

    def _fqdn_update(self) -> None:  # type: ignore[override]
        if self.fqdn.take_changed():
            self._recompile()


def addr(i: int) -> str:
    return str(ipaddress.ip_address("100.64.0.0") + i)


async def world(cls: type[PolicyEngine]) -> PolicyEngine:
    reg = EndpointRegistry("n1", IdentityAllocator())
    eng = cls(reg, ["10.99.0.1"])
    reg.subscribe(eng.on_endpoint)
    await reg.sync_file([parse_endpoint({"name": f"c{i}", "namespace": "default",
                                         "labels": {"app": "client" if i < 2 else "srv"},
                                         "ips": [f"10.244.1.{10 + i}"],
                                         "interface": f"veth-c{i}"}) for i in range(4)],
                        [NodeInfo("n1", ("10.99.0.1",))], {})
    for i, e in enumerate(reg.list(), start=10):
        eng.before_attach(e.interface, i)
    await eng.apply_text(POLICY)
    return eng


def answer(i: int) -> DNSMessage:
    return DNSMessage(i & 0xFFFF, True, 0, 0, f"h{i}.example.com.", ("A",), (addr(i),), ttl=3600)


async def run(cls: type[PolicyEngine], n: int, k: int) -> tuple[float, float, float]:
    eng = await world(cls)
    for i in range(n):  # the names already learned (one recompile at the end)
        eng.fqdn.learn([f"h{i}.example.com."], [addr(i)], 3600)
    eng._recompile()
    t, c = time.perf_counter(), time.process_time()
    for i in range(n, n + k):
        await eng.learn_dns(1, answer(i))
    seq, cpu = (time.perf_counter() - t) / k, (time.process_time() - c) / k
    t = time.perf_counter()
    await asyncio.gather(*(eng.learn_dns(1, answer(i)) for i in range(n + k, n + 2 * k)))
    burst = (time.perf_counter() - t) / k
    assert len(eng.fqdn) == n + 2 * k
    if eng._fqdn_task is not None:
        eng._fqdn_task.cancel()
    return seq, burst, cpu


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--names", default="100,1000,3000")
    ap.add_argument("--answers", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2, help="ABBA rounds")
    a = ap.parse_args()
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1, 5 min), "
          f"{os.cpu_count()} CPUs")
    print(f"{'names':>6} {'A seq ms':>9} {'B seq ms':>9} {'A/B':>6} {'A cpu':>6} {'B cpu':>6} "
          f"{'A burst ms':>11} {'B burst ms':>11} {'A/B':>6}   (per answer, median)")
    for n in [int(x) for x in a.names.split(",")]:
        got: dict[str, list[tuple[float, float, float]]] = {"A": [], "B": []}
        for _ in range(a.rounds):
            for side in "ABBA":
                cls = FormerEngine if side == "A" else PolicyEngine
                got[side].append(await run(cls, n, a.answers))
        med = {s: tuple(statistics.median(x[i] for x in v) for i in range(3))
               for s, v in got.items()}
        print(f"{n:>6} {med['A'][0] * 1e3:>9.2f} {med['B'][0] * 1e3:>9.2f} "
              f"{med['A'][0] / med['B'][0]:>6.1f} {med['A'][2] * 1e3:>6.2f} "
              f"{med['B'][2] * 1e3:>6.2f} {med['A'][1] * 1e3:>11.2f} "
              f"{med['B'][1] * 1e3:>11.2f} {med['A'][1] / med['B'][1]:>6.1f}")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
