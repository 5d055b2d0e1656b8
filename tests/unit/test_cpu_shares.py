"""bench/cpu_shares.py gives the agent and the workload the CPU weights a kubelet gives
pods for their CPU requests: the same numbers as kubelet's MilliCPUToShares and
CPUSharesToCPUWeight."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from cpu_shares import CHART_AGENT_MILLICPU, shares, weight  # noqa: E402


def test_shares_as_kubelet():
    assert shares(CHART_AGENT_MILLICPU) == 102
    assert shares(1000) == 1024
    assert shares(250) == 256
    assert shares(1) == 2 and shares(0) == 2  # kubelet's minimum


def test_weight_as_kubelet():
    assert weight(1000) == 39
    assert weight(CHART_AGENT_MILLICPU) == 4
    assert weight(0) == 1


def test_chart_request_is_the_one_the_bench_uses():
    import yaml

    values = yaml.safe_load((Path(__file__).resolve().parents[2] / "charts" / "webb"
                             / "values.yaml").read_text())
    assert values["agent"]["resources"]["requests"]["cpu"] == f"{CHART_AGENT_MILLICPU}m"


def test_l7_bench_refuses_weights_it_does_not_know():
    """--weights other than equal/chart (or none alone) is an error: such a series ran
    with the agent in the workload's group, reported under its own name and described as
    the chart's weights."""
    import subprocess

    bench = Path(__file__).resolve().parents[2] / "bench" / "l7_bench.py"

    def run(weights: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(bench), "--weights", weights, "--skip",
                               "http,paced,kernel,decode"], capture_output=True, text=True,
                              timeout=60)
    for bad in ("fast", "none,chart", "equal,"):
        got = run(bad)
        assert got.returncode == 2, (bad, got.stdout, got.stderr)
        assert "argument --weights" in got.stderr and repr(bad) in got.stderr, got.stderr
    assert run("chart,equal").returncode == 0


def test_l7_bench_refuses_spin_with_the_chart_weights():
    """--spin's SCHED_IDLE loops take a cgroup's whole share: with the chart's weights
    the agent starved (its GetNodes timed out), so the bench refuses the pair."""
    import subprocess

    bench = Path(__file__).resolve().parents[2] / "bench" / "l7_bench.py"
    got = subprocess.run([sys.executable, str(bench), "--spin", "--skip",
                          "http,paced,kernel,decode"], capture_output=True, text=True,
                         timeout=60)
    assert got.returncode == 2 and "--spin cannot run with --weights chart" in got.stderr, \
        got.stderr
    ok = subprocess.run([sys.executable, str(bench), "--spin", "--weights", "equal", "--skip",
                         "http,paced,kernel,decode"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
