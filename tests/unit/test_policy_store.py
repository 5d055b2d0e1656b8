"""A policy is a cluster object: applied or deleted through one agent's admin API (real
gRPC), every agent watching the cluster's policy store enforces the change; `local`
narrows it to the agent asked."""
from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from webb.api.admin import admin_pb2 as apb
from webb.api.admin import admin_pb2_grpc
from webb_agent.api.admin import AdminService
from webb_agent.stores.endpoints import EndpointRegistry, NodeInfo, parse_endpoint
from webb_agent.stores.identities import IdentityAllocator
from webb_agent.policy.engine import PolicyEngine, watch_policy_dir
from webb_agent.policy.store import PolicyStore

REVIEWS = (Path(__file__).resolve().parents[2] / "examples" / "reviews-l4.yaml").read_text()
NODES = [NodeInfo("n1", ("10.99.0.1",)), NodeInfo("n2", ("10.99.0.2",))]
PODS = [{"name": "reviews-v1", "namespace": "bookinfo", "labels": {"app": "reviews"},
         "ips": ["10.0.1.10"], "interface": "lxc1", "node": "n1"},
        {"name": "reviews-v2", "namespace": "bookinfo", "labels": {"app": "reviews"},
         "ips": ["10.0.2.10"], "interface": "lxc2", "node": "n2"}]


class Agent:
    """An agent's policy engine and admin API, watching the shared store."""

    def __init__(self, node: str, store_dir: str | None) -> None:
        self.node = node
        self.registry = EndpointRegistry(node, IdentityAllocator(None))
        self.engine = PolicyEngine(self.registry, [n.ips[0] for n in NODES if n.name == node])
        self.registry.subscribe(self.engine.on_endpoint)
        self.store_dir = store_dir
        self.store = PolicyStore(store_dir, self.engine) if store_dir else None
        self.server = grpc.aio.server()
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminService(self.registry, lambda ep: (True, ""), self.engine, store=self.store),
            self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        await self.registry.sync_file([parse_endpoint(p) for p in PODS], NODES)
        await self.server.start()
        if self.store_dir:
            self.tasks.append(asyncio.create_task(
                watch_policy_dir(self.store_dir, self.engine, interval=0.02)))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.stop(None)

    def enforcing(self) -> bool:
        ep = next(e for e in self.registry.list() if self.registry.is_local(e))
        return self.engine.endpoint_status(ep)[0]

    async def call(self, method: str, req):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            return await getattr(admin_pb2_grpc.AdminStub(ch), method)(req, timeout=5)


async def until(cond, what: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):  # bounded: the watchers scan every 20 ms
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def cluster(tmp_path):
    agents = [Agent(n.name, str(tmp_path / "policies")) for n in NODES]
    for a in agents:
        await a.start()
    try:
        yield agents
    finally:
        for a in agents:
            await a.stop()


async def test_apply_and_delete_through_one_agent_reach_every_agent(cluster):
    n1, n2 = cluster
    resp = await n1.call("ApplyPolicies", apb.ApplyPoliciesRequest(documents=REVIEWS))
    assert [p.name for p in resp.policies] == ["reviews"]
    assert n1.enforcing()  # the agent asked answers with what it enforces
    await until(n2.enforcing, "n2 to enforce the policy applied through n1")
    listed = await n2.call("ListPolicies", apb.ListPoliciesRequest())
    assert [(p.kind, p.namespace, p.name) for p in listed.policies] == [
        ("CiliumNetworkPolicy", "bookinfo", "reviews")]
    # applying it again through the other agent changes nothing anywhere
    rev = (n1.engine.revision, n2.engine.revision)
    again = await n2.call("ApplyPolicies", apb.ApplyPoliciesRequest(documents=REVIEWS))
    assert [p.revision for p in again.policies] == [listed.policies[0].revision]
    await asyncio.sleep(0.1)  # several watch rounds: nothing may move
    assert (n1.engine.revision, n2.engine.revision) == rev
    # deleted through n2: gone on both
    gone = await n2.call("DeletePolicy", apb.DeletePolicyRequest(name="reviews",
                                                                 namespace="bookinfo"))
    assert [p.name for p in gone.deleted] == ["reviews"]
    assert not n2.enforcing()
    await until(lambda: not n1.enforcing() and not n1.engine.policies,
                "n1 to drop the policy deleted through n2")


async def test_local_narrows_to_the_agent_asked(cluster):
    n1, n2 = cluster
    await n1.call("ApplyPolicies", apb.ApplyPoliciesRequest(documents=REVIEWS, local=True))
    assert n1.enforcing()
    await asyncio.sleep(0.1)  # several watch rounds of n2
    assert not n2.enforcing() and not n2.engine.policies
    assert not list(Path(n1.store_dir).iterdir())  # nothing reached the store
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await n2.call("DeletePolicy", apb.DeletePolicyRequest(
            name="reviews", namespace="bookinfo", local=True))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    await n1.call("DeletePolicy", apb.DeletePolicyRequest(name="reviews", namespace="bookinfo",
                                                          local=True))
    assert not n1.enforcing()


async def test_a_malformed_policy_reaches_no_agent(cluster):
    n1, n2 = cluster
    bad = REVIEWS.replace("port: \"9080\"", "port: \"http\"")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await n1.call("ApplyPolicies", apb.ApplyPoliciesRequest(documents=REVIEWS + "---\n" + bad.replace("name: reviews", "name: other")))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "named port" in e.value.details()
    assert not list(Path(n1.store_dir).iterdir())
    assert not n1.engine.policies and not n2.engine.policies


async def test_an_agent_without_a_store_is_its_own_cluster(tmp_path):
    a = Agent("n1", None)
    await a.start()
    try:
        await a.call("ApplyPolicies", apb.ApplyPoliciesRequest(documents=REVIEWS))
        assert a.enforcing() and a.engine.list()[0].source == "api"
    finally:
        await a.stop()
