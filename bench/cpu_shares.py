"""CPU weights as a kubelet gives them to pods, for benches that measure what the agent
costs a workload.

On Kubernetes every pod runs in a cgroup whose CPU weight comes from its containers'
CPU requests (cgroup v1: cpu.shares = milliCPU * 1024 / 1000, at least 2; v2:
cpu.weight mapped from those shares). The chart requests 100m for the agent, so under
contention a workload that requests a whole CPU outweighs it about ten to one, and a
workload task that wakes up preempts the agent instead of waiting behind it. A bench
that runs the agent and the workload as plain processes of one group measures the
agent at the workload's own weight, which no pod gets unless it requests as much CPU.

`CpuShares` makes two groups under the machine's cpu controller, one for the workload
(this process and what it starts afterwards: server, clients) and one for the agent,
and moves the agent between "chart" (its own group, the chart's request) and "equal"
(inside the workload's group: one task among equals, as without cgroups).
"""
from __future__ import annotations

import os
from pathlib import Path

CHART_AGENT_MILLICPU = 100  # charts/webb/values.yaml agent.resources.requests.cpu


def shares(millicpu: int) -> int:
    """kubelet's MilliCPUToShares."""
    return max(2, millicpu * 1024 // 1000)


def weight(millicpu: int) -> int:
    """cgroup v2 cpu.weight for those shares (kubelet's CPUSharesToCPUWeight)."""
    return 1 + ((shares(millicpu) - 2) * 9999) // 262142


class CpuShares:
    def __init__(self, tag: str, workload_millicpu: int,
                 agent_millicpu: int = CHART_AGENT_MILLICPU) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        if v2.exists() and "cpu" in v2.read_text().split():
            self.v2, root = True, Path("/sys/fs/cgroup")
            # the cpu controller must be on for the root's children
            (root / "cgroup.subtree_control").write_text("+cpu")
        elif Path("/sys/fs/cgroup/cpu/cpu.shares").exists():
            self.v2, root = False, Path("/sys/fs/cgroup/cpu")
        else:
            raise RuntimeError("no cgroup cpu controller (v1 cpu.shares or v2 cpu.weight)")
        self.root = root
        self.base = root / f"webb-bench-{tag}"
        self.workload = self.base / "workload"
        self.agent = self.base / "agent"
        self.millicpu = {"workload": workload_millicpu, "agent": agent_millicpu}
        self._home = self._group_of(os.getpid())

    def _group_of(self, pid: int) -> Path:
        for line in open(f"/proc/{pid}/cgroup"):
            hier, controllers, path = line.rstrip("\n").split(":", 2)
            if (self.v2 and hier == "0") or (not self.v2 and "cpu" in controllers.split(",")):
                return self.root / path.lstrip("/")
        return self.root

    def setup(self) -> None:
        self.teardown()  # what a crashed earlier run left
        for name, group in (("workload", self.workload), ("agent", self.agent)):
            group.mkdir(parents=True, exist_ok=True)
            if self.v2:
                if group.parent == self.base:
                    (self.base / "cgroup.subtree_control").write_text("+cpu")
                (group / "cpu.weight").write_text(str(weight(self.millicpu[name])))
            else:
                (group / "cpu.shares").write_text(str(shares(self.millicpu[name])))
        self.move(os.getpid(), self.workload)  # what this process starts from now on too

    @staticmethod
    def move(pid: int, group: Path) -> None:
        (group / "cgroup.procs").write_text(str(pid))  # every thread of the process

    def place_agent(self, pid: int, how: str) -> None:
        """how: "chart" (the agent's own group) or "equal" (among the workload's tasks)."""
        self.move(pid, self.agent if how == "chart" else self.workload)

    def describe(self, how: str) -> str:
        if how == "equal":
            return "agent and workload tasks in one CPU group (equal weight per task)"
        unit = "cpu.weight" if self.v2 else "cpu.shares"
        val = weight if self.v2 else shares
        return (f"agent group {unit} {val(self.millicpu['agent'])} (requests "
                f"{self.millicpu['agent']}m, the chart's), workload group {unit} "
                f"{val(self.millicpu['workload'])} (requests {self.millicpu['workload']}m)")

    def teardown(self) -> None:
        """Back home with everything; the groups removed (a group with tasks cannot be)."""
        if not self.base.exists():
            return
        for group in (self.agent, self.workload):
            procs = group / "cgroup.procs"
            if procs.exists():
                for pid in procs.read_text().split():
                    try:
                        self.move(int(pid), self._home)
                    except OSError:
                        pass  # exited meanwhile
            if group.exists():
                group.rmdir()
        self.base.rmdir()
