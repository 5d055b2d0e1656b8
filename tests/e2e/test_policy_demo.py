"""The tutorial's security part replayed on `webb demo`: the `reviews` L4 policy lets
only productpage talk to reviews on 9080; details -> reviews is dropped in the
kernel and seen over the relay as a DROPPED flow with "Policy denied".

`webb policy` is used as the tutorial types it, without flags: the demo's first agent
is the default server (as 127.0.0.1:4244 is in `make demo`), and a policy is a
cluster object, so it reaches the reviews pods of both nodes."""
from __future__ import annotations

import json
import os
import subprocess

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from support import BIN, ROOT, lab_prefix, running_demo, wait_for
from webb.api.admin import admin_pb2 as apb
from webb.api.admin import admin_pb2_grpc
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc

pytestmark = pytest.mark.root

PREFIX = lab_prefix("wtp")

# The tutorial's L4 policy, as shipped for users (README).
REVIEWS_POLICY = (ROOT / "examples" / "reviews-l4.yaml").read_text()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    with running_demo(tmp_path_factory.mktemp("policy-demo"), PREFIX) as info:
        info["relay"] = grpc.insecure_channel(f"127.0.0.1:{info['ports']['relay']}")
        info["agents"] = [grpc.insecure_channel(f"127.0.0.{i}:{info['ports']['agent']}")
                          for i in (1, 2)]
        try:
            yield info
        finally:
            for ch in (info["relay"], *info["agents"]):
                ch.close()


def exec_in(demo, pod: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "webb"), "demo", "--state-dir", str(demo["state"]), "exec",
                           pod, "--", *cmd], capture_output=True, text=True, timeout=timeout)


def policy_cli(demo, *args: str) -> subprocess.CompletedProcess:
    """`webb policy ARGS`, no server flag: the default agent is the demo's n1."""
    env = {**os.environ, "WEBB_AGENT_SERVER": f"127.0.0.1:{demo['ports']['agent']}"}
    return subprocess.run([str(BIN / "webb"), "policy", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def held(demo, name: str = "reviews", ns: str = "bookinfo") -> list[str]:
    """The document of the policy each agent enforces ('' where it has none)."""
    out = []
    for ch in demo["agents"]:
        pols = admin_pb2_grpc.AdminStub(ch).ListPolicies(apb.ListPoliciesRequest(),
                                                          timeout=5).policies
        out.append(next((p.document for p in pols if (p.namespace, p.name) == (ns, name)), ""))
    return out


def wait_everywhere(demo, present: bool = True) -> None:
    """Until both nodes' agents hold the same version of the policy (or none)."""
    def ok() -> bool:
        docs = held(demo)
        return (docs[0] != "" and docs[0] == docs[1]) if present else docs == ["", ""]
    wait_for(ok, 15, 0.1, "both agents to hold the policy" if present
             else "both agents to drop the policy")


def reviews_pods(demo) -> list[dict]:
    pods = json.loads((demo["state"] / "state.json").read_text())["pods"]
    out = [p for p in pods if p["workload"].startswith("reviews-")]
    assert {p["node"] for p in out} == {"n1", "n2"}  # the demo spreads them
    return out


def endpoints(demo) -> list[apb.Endpoint]:
    out = []
    for ch in demo["agents"]:
        out += [e for e in admin_pb2_grpc.AdminStub(ch).ListEndpoints(
            apb.ListEndpointsRequest(), timeout=5).endpoints if e.attached]
    return out


def relay_flows(demo, since: Timestamp, **filt) -> list[fpb.Flow]:
    req = opb.GetFlowsRequest(since=since, whitelist=[fpb.FlowFilter(**filt)])
    return [r.flow for r in observer_pb2_grpc.ObserverStub(demo["relay"]).GetFlows(req, timeout=10)
            if r.HasField("flow")]


def test_reviews_l4_policy_drops_details_and_keeps_productpage(demo, tmp_path):
    out = policy_cli(demo, "apply", "-f", str(ROOT / "examples" / "reviews-l4.yaml"))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ciliumnetworkpolicy.cilium.io/reviews created\n", out.stdout
    wait_everywhere(demo)

    # Like `kubectl get cep`: the reviews endpoints enforce ingress, nothing else does.
    eps = endpoints(demo)
    enforcing = {e.name for e in eps if e.policy_enforcement_ingress}
    assert enforcing == {e.name for e in eps if e.labels.get("app") == "reviews"}
    assert len(enforcing) == 3 and not any(e.policy_enforcement_egress for e in eps)

    t0 = Timestamp()
    t0.GetCurrentTime()
    # Each reviews pod, on both nodes: productpage still gets its reviews, details may not.
    for pod in reviews_pods(demo):
        url = f"http://{pod['ip4']}:9080/reviews/0"
        ok = exec_in(demo, "productpage", "curl", "-s", "-m", "5", url)
        assert ok.returncode == 0, (pod, ok.stderr)
        assert json.loads(ok.stdout)["podname"] == pod["name"]
        denied = exec_in(demo, "details", "curl", "-s", "-m", "3", url)
        assert denied.returncode == 28, (pod, denied.returncode, denied.stdout)  # timed out

    drops = wait_for(lambda: relay_flows(demo, t0, verdict=[fpb.DROPPED],
                                         source_label=["k8s:app=details"]), 20, 0.5,
                     "the DROPPED flow over the relay")
    d = drops[0]
    details = next(e for e in endpoints(demo) if e.labels.get("app") == "details")
    reviews_ids = {e.identity for e in endpoints(demo) if e.labels.get("app") == "reviews"}
    assert d.drop_reason_desc == fpb.POLICY_DENIED and d.verdict == fpb.DROPPED
    assert d.source.identity == details.identity and d.destination.identity in reviews_ids
    assert d.source.namespace == "bookinfo" and d.destination.namespace == "bookinfo"
    assert "k8s:app=reviews" in d.destination.labels
    assert d.l4.TCP.destination_port == 9080 and d.traffic_direction == fpb.INGRESS
    assert [(p.name, p.namespace) for p in d.ingress_denied_by] == [("reviews", "bookinfo")]

    # productpage -> reviews: allowed by the policy (policy verdict flows).
    pvs = wait_for(lambda: relay_flows(demo, t0, event_type=[fpb.EventTypeFilter(type=5)],
                                       source_label=["k8s:app=productpage"],
                                       destination_label=["k8s:app=reviews"]), 20, 0.5,
                   "policy verdicts for productpage -> reviews")
    assert all(p.verdict == fpb.FORWARDED and p.policy_match_type == 2 for p in pvs)

    # The CLI a user types: observe --verdict DROPPED over the relay.
    obs = subprocess.run([str(BIN / "webb"), "observe", "--server",
                          f"127.0.0.1:{demo['ports']['relay']}", "--verdict", "DROPPED",
                          "--last", "1000", "-o", "json"], capture_output=True, text=True,
                         timeout=60)
    assert obs.returncode == 0, obs.stderr
    seen = []
    for line in obs.stdout.splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        flow = obj.get("flow", obj)
        seen.append(flow)
    assert seen and all(x.get("verdict") == "DROPPED" for x in seen)
    hit = [x for x in seen if x.get("drop_reason_desc") == "POLICY_DENIED"
           and x["source"].get("identity") == details.identity]
    assert hit and hit[0]["destination"]["identity"] in reviews_ids

    listed = policy_cli(demo, "get", "-A")
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert listed.returncode == 0 and [r[:3] for r in rows] == [
        ["bookinfo", "reviews", "CiliumNetworkPolicy"]], listed.stdout
    # Deleting the policy, again without flags, opens the way on both nodes.
    out = policy_cli(demo, "delete", "bookinfo/reviews")
    assert out.returncode == 0 and out.stdout.count("deleted") == 1, (out.stdout, out.stderr)
    wait_everywhere(demo, present=False)
    assert not any(e.policy_enforcement_ingress for e in endpoints(demo))
    for pod in reviews_pods(demo):
        again = exec_in(demo, "details", "curl", "-s", "-m", "5",
                        f"http://{pod['ip4']}:9080/reviews/0")
        assert again.returncode == 0, (pod, again.stderr)


def test_local_narrows_a_policy_to_one_agent(demo):
    """`--local --server <agent>`: that node only (debugging); the other keeps its state."""
    n2 = f"127.0.0.2:{demo['ports']['agent']}"
    out = policy_cli(demo, "apply", "-f", str(ROOT / "examples" / "reviews-l4.yaml"),
                     "--local", "--server", n2)
    try:
        assert out.returncode == 0, out.stderr
        assert held(demo)[0] == "" and held(demo)[1] != ""
        assert not list((demo["state"] / "policies").glob("*.yaml"))  # not in the store
    finally:
        policy_cli(demo, "delete", "bookinfo/reviews", "--local", "--server", n2)
    assert held(demo) == ["", ""]


REVIEWS_L7 = (ROOT / "examples" / "reviews-l7.yaml").read_text()


def http_code(demo, pod: str, url: str, *curl: str) -> str:
    out = exec_in(demo, pod, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "3",
                  *curl, url)
    return out.stdout


def test_reviews_l7_policy_answers_403_where_l4_drops(demo, tmp_path):
    """The tutorial's last step: details -> reviews gets 000 (dropped) under the L4
    policy and 403 under the L7 one; productpage -> reviews answers 200 under both."""
    url = "http://reviews:9080/reviews/0"
    for name, text in (("reviews-l4.yaml", REVIEWS_POLICY), ("reviews-l7.yaml", REVIEWS_L7)):
        (tmp_path / name).write_text(text)
    try:
        out = policy_cli(demo, "apply", "-f", str(tmp_path / "reviews-l4.yaml"))
        assert out.returncode == 0, out.stderr
        wait_everywhere(demo)
        assert http_code(demo, "details", url) == "000"
        assert [http_code(demo, "productpage", url) for _ in range(3)] == ["200"] * 3
        out = policy_cli(demo, "apply", "-f", str(tmp_path / "reviews-l7.yaml"))
        assert out.returncode == 0, out.stderr
        assert out.stdout == "ciliumnetworkpolicy.cilium.io/reviews configured\n", out.stdout
        wait_everywhere(demo)
        t0 = Timestamp()
        t0.GetCurrentTime()
        assert [http_code(demo, "details", url) for _ in range(3)] == ["403"] * 3
        assert [http_code(demo, "productpage", url) for _ in range(3)] == ["200"] * 3
        assert http_code(demo, "productpage", url, "-X", "POST") == "403"
        # Anyone may GET /nopathallowed: it reaches reviews, which has no such page.
        assert http_code(demo, "details", "http://reviews:9080/nopathallowed") == "404"
        denied = wait_for(lambda: relay_flows(demo, t0, verdict=[fpb.DROPPED],
                                              source_label=["k8s:app=details"],
                                              event_type=[fpb.EventTypeFilter(type=129)]),
                          20, 0.5, "the denied request over the relay")
        d = denied[0]
        assert d.l7.type == fpb.REQUEST and d.l7.http.method == "GET"
        assert d.l7.http.url == url
        assert [(p.name, p.namespace) for p in d.ingress_denied_by] == [("reviews", "bookinfo")]
        obs = subprocess.run([str(BIN / "webb"), "observe", "--server",
                              f"127.0.0.1:{demo['ports']['relay']}", "--type", "l7",
                              "--verdict", "DROPPED", "--since", "1m"],
                             capture_output=True, text=True, timeout=60)
        assert f"http-request DROPPED (HTTP/1.1 GET {url})" in obs.stdout, obs.stdout
    finally:
        policy_cli(demo, "delete", "bookinfo/reviews")
