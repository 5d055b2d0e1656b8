"""The agent with exactly the privileges the Helm chart gives it, and the agent image's way
of finding kernel headers.

The agent runs as root (as in the image) but with its capability bounding set cut down to
the chart's default agent.capabilities (setpriv), through the image's entrypoint
(images/agent/entrypoint.sh) on a node without headers for its kernel, so bcc compiles
the real datapath against the image's generic headers (Debian's, merged into one tree
as the Dockerfile does). It must attach to the endpoints and report flows of real
traffic. Its effective capabilities are read back from /proc to show the limit held.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from support import AgentProc, lab_prefix, pod_endpoint, run_in, start_in, wait_for, write_endpoints
from webb.api.flow import flow_pb2 as fpb
from webb.netlab import NetLab

import helm_python as helm  # helm-python-sdk, in the test extra

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
PREFIX = lab_prefix("wcap")

# Bit numbers of the capabilities the chart may name (linux/capability.h).
CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "KILL": 5, "NET_BIND_SERVICE": 10, "NET_RAW": 13,
            "NET_ADMIN": 12, "IPC_LOCK": 14, "SYS_MODULE": 16, "SYS_PTRACE": 19,
            "SYS_ADMIN": 21, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}


def chart_capabilities() -> list[str]:
    with helm.Chart.load(ROOT / "charts" / "webb") as chart:
        out = chart.render(name="webb", namespace="webb")
    ds = next(d for d in yaml.safe_load_all(out["webb/templates/agent/daemonset.yaml"]) if d)
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    return c["securityContext"]["capabilities"]["add"]


def generic_headers(dst: Path) -> Path:
    """The agent image's /opt/webb/kernel-headers: Debian's -common and -<arch> trees merged."""
    src = Path("/usr/src")
    common = sorted(src.glob("linux-headers-*-common"))
    arch = sorted(p for p in src.glob("linux-headers-*-amd64"))
    if not common or not arch:
        pytest.fail("Debian's linux-headers-amd64 is needed (scripts/setup.sh installs it)")
    dst.mkdir()
    for tree in (common[-1], arch[-1]):  # the Dockerfile's two `cp -a`
        subprocess.run(["cp", "-a", f"{tree}/.", f"{dst}/"], check=True, timeout=120)
    return dst


def _caps(status: str, field: str) -> int:
    return int(next(l for l in status.splitlines() if l.startswith(field + ":")).split()[1], 16)


@pytest.fixture(scope="module")
def lab():
    lab = NetLab(PREFIX)
    lab.cleanup()
    try:
        n1 = lab.add_node("n1", 1)
        lab.add_pod(n1, "client", 10)
        lab.add_pod(n1, "server", 11)
        yield lab
    finally:
        lab.cleanup()


def test_agent_runs_with_the_charts_capabilities_and_generic_headers(lab, tmp_path):
    caps = chart_capabilities()
    assert set(caps) <= set(CAP_BITS), f"add the bit numbers of {set(caps) - set(CAP_BITS)}"
    headers = generic_headers(tmp_path / "kernel-headers")
    no_modules = tmp_path / "modules"  # a node without headers for its kernel
    no_modules.mkdir()

    eps = tmp_path / "endpoints.yaml"
    p = lab.pods
    write_endpoints(eps, [pod_endpoint(p["client"], "client"), pod_endpoint(p["server"], "server")])
    agent = AgentProc(tmp_path, "n1", lab.nodes["n1"].netns, eps)
    bounding = ",".join(["-all"] + [f"+{c.lower()}" for c in caps])
    agent.args = ["env", f"WEBB_MODULES_DIR={no_modules}", f"WEBB_GENERIC_HEADERS={headers}",
                  "setpriv", f"--bounding-set={bounding}", "--",
                  "sh", str(ROOT / "images" / "agent" / "entrypoint.sh"), *agent.args]
    try:
        agent.start(timeout=120)
        assert agent.proc is not None
        status = Path(f"/proc/{agent.proc.pid}/status").read_text()
        eff = _caps(status, "CapEff")
        # what the chart grants, within what this machine lets its processes have at all
        # (this sandbox's bounding set lacks SYS_RESOURCE, for example)
        own = _caps(Path("/proc/self/status").read_text(), "CapBnd")
        assert eff == sum(1 << CAP_BITS[c] for c in caps) & own, f"CapEff {eff:#x}"
        log = agent.log.read_text()
        assert f"using the image's generic headers {headers}" in log

        agent.wait_attached(["client", "server"], timeout=60)
        srv = start_in(lab, p["server"].netns, "tcp-server", "8080", "--count", "1")
        run_in(lab, p["client"].netns, "tcp-client", p["server"].ip4, "8080",
               "--writes", "10", "--size", "100")
        srv.wait(10)

        def seen() -> list[fpb.Flow]:
            return [f for f in agent.flows(number=100)
                    if f.l4.TCP.destination_port == 8080 and f.verdict == fpb.FORWARDED
                    and f.source.pod_name == "client"]
        assert wait_for(seen, 20, 0.3, "flows of the client's connection")
    finally:
        agent.stop()
