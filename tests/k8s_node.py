"""A real one-node Kubernetes cluster for tests: the control plane of k8s_cluster.py
plus kube-scheduler, and a node: containerd (Debian's, with runc) + kubelet + kube-proxy
(iptables mode), pods wired by Debian's CNI plugins (`bridge` or `ptp`, host-local IPAM).

    from k8s_node import kube_node

    with kube_node(tmp_path, cni="bridge") as node:
        node.kubectl("apply", "-f", manifest)       # the real kubectl
        node.wait_pod_ready("default", "web")
        node.kc.api("GET", "/api/v1/nodes")         # admin access, as in k8s_cluster

Isolation from the host and from everything else running on it:
- The node is a network namespace of its own (`<tag>-knode`), joined to the host by
  one veth pair, in a /16 of 10.223-254.0.0 that the host routes nowhere (chosen under
  a machine-wide lock, so nodes of several checkouts can run at once). containerd, the kubelet and
  kube-proxy run in it, so the CNI's bridge and veths, ip_forward, and every iptables
  chain kube-proxy writes live there and vanish with it; the host's iptables are
  never touched. The node has no default route: nothing leaves the machine; the host
  routes only the pod subnet back to the node (for pods that call the API server).
  The Service range goes to a dead-end device in the node, so a ClusterIP without a
  rule goes nowhere.
- The node's processes share a private mount namespace (a holder process keeps it):
  a tmpfs on /run (containerd's sockets and shims, the pods' /run/netns), the test's
  directories bound on /var/log (/var/log/pods, /var/log/containers) and
  /var/lib/kubelet. Every mount there dies with the namespace: nothing to unmount on
  the host, even after a crash.
- cgroups: the pods under /webb-<tag>-kubepods (the kubelet's cgroupRoot), the node's
  own processes (and the runtime's shims, their children) under /webb-<tag>-node; on
  teardown everything in both is killed and the cgroups removed.
- Host sysctls the kubelet sets at start (vm.overcommit_memory, vm.panic_on_oom,
  kernel.panic, kernel.panic_on_oops, kernel.keys.root_max*) are put back as soon as
  the node is Ready and again on teardown.

Images come from scripts/build_images.py (built offline, cached per machine) and are
imported into the node's containerd; pods use them with imagePullPolicy IfNotPresent
or Never. Everything is torn down on exit, also when start-up fails.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from k8s_cluster import (SERVICE_CIDR, KubeAPIError, KubeBinariesMissing, KubeCluster,
                         kube_bin_dir, kube_cluster)

ROOT = Path(__file__).resolve().parents[1]
CNI_BIN = "/usr/lib/cni"
# Each node takes one /16 that nothing on the host routes (nodes of other checkouts
# running at the same time included): its .255.0/30 links the node to the host (.255.1
# host side, .255.2 node side), the pods get .1.0/24 (bridge) or .2.0/24 (ptp).
NET_CANDIDATES = [ipaddress.ip_network(f"10.{i}.0.0/16") for i in range(223, 255)]
POD_SUBNET = {"bridge": 1, "ptp": 2}
ALLOC_LOCK = "/run/lock/webb-kube-node.lock"
CLUSTER_DNS = "10.96.0.10"
PAUSE_IMAGE = "webb.test/pause:3.4"
# Host settings the kubelet changes at start (pkg/kubelet/cm setupKernelTunables).
KUBELET_SYSCTLS = ["vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                   "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"]
NODE_READY_TIMEOUT = 120.0
# Shell: detach (in a private mount namespace) every mount under /run and every network
# namespace mount, deepest first.
DETACH_RUN = ("awk '$2 ~ \"^/run/\" || $3 == \"nsfs\" {print $2}' /proc/self/mounts "
              "| sort -r | xargs -r -n1 umount -l")


def tag() -> str:
    return os.environ.get("WEBB_TEST_PREFIX_TAG", "wt")


def node_binaries() -> dict[str, str]:
    d = kube_bin_dir()
    found = {n: str(d / n) for n in ("kubelet", "kube-proxy", "kube-scheduler", "kubectl")}
    for n in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "nsenter", "unshare",
              "iptables", "ip"):
        found[n] = shutil.which(n) or ""
    for n in ("bridge", "ptp", "host-local", "loopback"):
        found["cni-" + n] = f"{CNI_BIN}/{n}"
    missing = [n for n, p in found.items() if not p or not os.access(p, os.X_OK)]
    if missing:
        raise KubeBinariesMissing(
            f"missing {', '.join(missing)}: run `make setup` (scripts/build_kube.sh builds the "
            "Kubernetes binaries; scripts/setup.sh installs containerd, runc, "
            "containernetworking-plugins and iptables)")
    return found


def build_images(names: list[str]) -> dict[str, str]:
    """{name: docker-save archive} from scripts/build_images.py (no-op when cached)."""
    res = subprocess.run([sys.executable, str(ROOT / "scripts/build_images.py"), "--only", *names],
                         capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"scripts/build_images.py failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout)


def sh(args: list[str], check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess:
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {res.returncode}: {(res.stderr or res.stdout).strip()[-2000:]}")
    return res


# ---------------------------------------------------------------- cgroups (v1 and v2)
def _hierarchies() -> list[Path]:
    """Mounted cgroup hierarchies: every v1 controller mount, or the v2 root."""
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            _, mnt, fstype, *_ = line.split()
            if fstype in ("cgroup", "cgroup2") and mnt.startswith("/sys/fs/cgroup"):
                out.append(Path(mnt))
    return out


def _make_cgroup(name: str, only: str | None = None) -> None:
    for h in _hierarchies():
        if only and h.name != only:
            continue
        d = h / name
        d.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset starts empty
            if (d / knob).exists() and not (d / knob).read_text().strip():
                (d / knob).write_text((h / knob).read_text())


def _cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for h in _hierarchies():
        top = h / name
        if not top.is_dir():
            continue
        for dirpath, _, files in os.walk(top):
            if "cgroup.procs" in files:
                try:
                    pids.update(int(x) for x in (Path(dirpath) / "cgroup.procs").read_text().split())
                except OSError:
                    pass
    return pids


def _remove_cgroup(name: str) -> list[str]:
    """Kill what is left in the cgroup tree, then remove it (deepest first); returns
    the directories that could not be removed."""
    deadline = time.monotonic() + 20
    while True:
        pids = _cgroup_pids(name)
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    left = []
    for h in _hierarchies():
        top = h / name
        if not top.is_dir():
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            for _ in range(50):
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                left.append(dirpath)
    return left


def _tracking_hierarchy() -> str:
    names = [h.name for h in _hierarchies()]
    return "pids" if "pids" in names else names[0]


def _join_cgroup(name: str) -> Callable[[], None]:
    paths = [h / name / "cgroup.procs" for h in _hierarchies() if (h / name).is_dir()]

    def join() -> None:  # in the child, before exec
        for p in paths:
            with open(p, "w") as f:
                f.write(str(os.getpid()))
    return join


# ---------------------------------------------------------------- the node
@dataclass
class KubeNode:
    kc: KubeCluster
    dir: Path
    name: str
    cni: str
    pod_cidr: str
    netns: str
    bins: dict[str, str]
    holder: subprocess.Popen | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    node_ip: str = ""
    host_ip: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    # -- running things in the node
    def in_node(self, args: list[str]) -> list[str]:
        """argv that runs `args` in the node's network and mount namespaces."""
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--", *args]

    def node_path(self, path: str) -> Path:
        """A path as the node's processes see it (its /run, /var/log, ...)."""
        assert self.holder is not None
        return Path(f"/proc/{self.holder.pid}/root") / path.lstrip("/")

    def run(self, args: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return sh(self.in_node(args), check=check, timeout=timeout)

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60,
                input: str | None = None) -> str:
        res = subprocess.run([self.bins["kubectl"], f"--kubeconfig={self.kc.kubeconfig}", *args],
                             capture_output=True, text=True, timeout=timeout, input=input)
        if check and res.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {res.stderr.strip()[-2000:]}")
        return res.stdout

    def apply(self, docs: list[dict] | str) -> str:
        text = docs if isinstance(docs, str) else yaml.safe_dump_all(docs)
        return self.kubectl("apply", "-f", "-", input=text)

    def check_running(self) -> None:
        self.kc.check_running()
        for n, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{n} exited with {p.returncode}: {self.log(n)[-3000:]}")

    def log(self, name: str) -> str:
        try:
            return (self.dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def wait(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            self.check_running()
            try:
                last = pred()
                if last:
                    return last
            except (KubeAPIError, OSError, RuntimeError, subprocess.SubprocessError) as e:
                last = e
            time.sleep(0.25)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")

    def pod(self, ns: str, name: str) -> dict:
        return self.kc.api("GET", f"/api/v1/namespaces/{ns}/pods/{name}")

    def wait_pod_ready(self, ns: str, name: str, timeout: float = 120) -> dict:
        def ready() -> dict | None:
            p = self.pod(ns, name)
            conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions", [])}
            return p if conds.get("Ready") == "True" else None
        try:
            return self.wait(ready, timeout, f"pod {ns}/{name} Ready")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.describe(ns, name)}") from None

    def describe(self, ns: str, name: str) -> str:
        out = self.kubectl("describe", "pod", "-n", ns, name, check=False)
        logs = self.kubectl("logs", "-n", ns, name, "--all-containers", "--tail=40", check=False)
        return f"{out[-3000:]}\n--- logs ---\n{logs[-3000:]}"

    def pods_ready(self, ns: str, selector: str, count: int, timeout: float = 180) -> list[dict]:
        def ready() -> list[dict] | None:
            items = self.kc.api("GET", f"/api/v1/namespaces/{ns}/pods",
                                query={"labelSelector": selector})["items"]
            ok = [p for p in items if p["metadata"].get("deletionTimestamp") is None and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", []))]
            return ok if len(ok) >= count else None
        return self.wait(ready, timeout, f"{count} ready pod(s) {selector} in {ns}")


def _kubeconfig(path: Path, server: str, ca: Path, crt: Path, key: Path, user: str) -> None:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "node",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(crt),
                                          "client-key-data": b64(key)}}],
        "contexts": [{"name": "node", "context": {"cluster": "c", "user": user}}]}))
    path.chmod(0o600)


def _host_nets() -> list[ipaddress.IPv4Network]:
    """Every IPv4 destination the host routes (all tables), the default route aside."""
    out = []
    for line in sh(["ip", "-4", "route", "show", "table", "all"]).stdout.splitlines():
        words = line.split()
        dst = words[1] if words[0] in ("broadcast", "local", "unreachable", "blackhole",
                                       "prohibit", "unicast") else words[0]
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if net.version == 4 and net.prefixlen > 0:
            out.append(net)
    return out


def _free_net() -> ipaddress.IPv4Network:
    """The first candidate /16 the host does not route (call with ALLOC_LOCK held, and
    keep it until the node's route is in place)."""
    used = _host_nets()
    start = sum(tag().encode()) % len(NET_CANDIDATES)  # checkouts start apart
    for net in NET_CANDIDATES[start:] + NET_CANDIDATES[:start]:
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free /16 among 10.223-254.0.0/16 for a test node: every one "
                       "overlaps a route of the host (`ip route show table all`)")


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name


def containerd_config(d: Path, cni_conf_dir: Path) -> str:
    return f"""version = 2
root = "{d}/containerd/root"
state = "/run/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "/run/containerd/containerd.sock"
[ttrpc]
  address = "/run/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # root here lacks CAP_SYS_RESOURCE: without this runc fails with
  # "can't get final child's PID from pipe: EOF" (it cannot lower oom_score_adj)
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni_conf_dir}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"""


def cni_config(cni: str, pod_cidr: str, ipam_dir: Path) -> dict:
    ipam = {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(ipam_dir)}
    if cni == "bridge":
        plugin = {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
                  "hairpinMode": True, "ipam": ipam}
    elif cni == "ptp":
        plugin = {"type": "ptp", "ipMasq": False, "ipam": ipam}
    else:
        raise ValueError(f"unknown CNI {cni!r} (bridge or ptp)")
    return {"cniVersion": "0.4.0", "name": f"webb-{cni}", "plugins": [plugin]}


# containerd roots with the images imported and unpacked, one per set of image archives:
# importing ~2 GB of layers takes minutes on a busy disk, a hard-linked copy seconds.
SEEDS = Path(os.environ.get("WEBB_CONTAINERD_SEEDS", "/var/cache/webb/containerd-seeds"))
SEEDS_KEPT = 2
# The bolt databases are written in place: each node gets its own copy of those.
SEED_DBS = ("io.containerd.metadata.v1.bolt/meta.db", "io.containerd.snapshotter.v1.overlayfs/metadata.db")


def _seed_key(archives: dict[str, str]) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(sorted(archives.items())).encode()).hexdigest()[:24]


def _seed_root(archives: dict[str, str], root: Path) -> bool:
    """Fill `root` from the seed of these archives (hard links; the databases copied);
    False when there is none yet. Committed snapshots are only ever overlay lower
    layers and blobs are never rewritten, so sharing their inodes is safe."""
    seed = SEEDS / _seed_key(archives)
    if not (seed / "done").exists():
        return False
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    sh(["cp", "-al", str(seed / "root"), str(root)], timeout=600)
    for db in SEED_DBS:
        (root / db).unlink()
        shutil.copy2(seed / "root" / db, root / db)
    os.utime(seed / "done")  # most recently used
    return True


def _save_seed(archives: dict[str, str], root: Path) -> None:
    import fcntl
    SEEDS.mkdir(parents=True, exist_ok=True)
    with open(SEEDS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        seed = SEEDS / _seed_key(archives)
        if (seed / "done").exists():
            return
        shutil.rmtree(seed, ignore_errors=True)
        seed.mkdir()
        sh(["cp", "-a", str(root), str(seed / "root")], timeout=1200)
        (seed / "done").write_text(json.dumps(archives))
        # keep the most recently used few (image archives change with webb's code)
        done = sorted((p for p in SEEDS.glob("*/done")), key=lambda p: p.stat().st_mtime)
        for old in done[:-SEEDS_KEPT]:
            shutil.rmtree(old.parent, ignore_errors=True)


def _stop(p: subprocess.Popen, grace: float = 10) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(10)


def cleanup_leftovers() -> None:
    """What a killed earlier run of this tag left: its processes (by cgroup), its
    cgroups, its node namespace and link. Safe when there is nothing."""
    t = tag()
    for cg in (f"webb-{t}-kubepods", f"webb-{t}-node"):
        _remove_cgroup(cg)
    sh(["ip", "netns", "del", f"{t}-knode"], check=False)
    sh(["ip", "link", "del", f"{t}-knh"], check=False)


@contextmanager
def kube_node(base: Path | str, cni: str = "bridge", images: tuple[str, ...] = ("pause", "busybox"),
              timeout: float = NODE_READY_TIMEOUT) -> Iterator[KubeNode]:
    """A control plane and one Ready node whose pods the given CNI wires; the images
    named are imported into its containerd."""
    t0 = time.monotonic()
    bins = node_binaries()
    archives = build_images(sorted(set(images) | {"pause"}))
    cleanup_leftovers()
    t = tag()
    netns, host_veth = f"{t}-knode", f"{t}-knh"
    cg_pods, cg_node = f"webb-{t}-kubepods", f"webb-{t}-node"
    d = Path(tempfile.mkdtemp(prefix="kube-node-", dir=str(base)))
    saved_sysctls = {n: _sysctl_path(n).read_text() for n in KUBELET_SYSCTLS if _sysctl_path(n).exists()}

    def restore_sysctls() -> None:
        for n, v in saved_sysctls.items():
            try:
                if _sysctl_path(n).read_text() != v:
                    _sysctl_path(n).write_text(v)
            except OSError:
                pass

    with ExitStack() as stack:
        # Registered first, so it runs last: the test's directory.
        stack.callback(shutil.rmtree, d, True)
        stack.callback(restore_sysctls)

        # -- the node's network namespace and its one link to the host
        def del_net() -> None:
            sh(["ip", "netns", "del", netns], check=False)
            sh(["ip", "link", "del", host_veth], check=False)
        stack.callback(del_net)
        import fcntl
        os.makedirs(os.path.dirname(ALLOC_LOCK), exist_ok=True)
        lock = open(ALLOC_LOCK, "w")
        stack.callback(lock.close)
        fcntl.flock(lock, fcntl.LOCK_EX)  # until the node's routes are in place
        net = _free_net()
        host_ip, node_ip = str(net[255 * 256 + 1]), str(net[255 * 256 + 2])
        pod_cidr = str(ipaddress.ip_network(f"{net[POD_SUBNET[cni] * 256]}/24"))
        sh(["ip", "netns", "add", netns])
        sh(["ip", "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        sh(["ip", "addr", "add", f"{host_ip}/30", "dev", host_veth])
        sh(["ip", "link", "set", host_veth, "up"])
        nx = ["ip", "netns", "exec", netns]
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", f"{node_ip}/30", "dev", "eth0"],
                    ["ip", "link", "set", "eth0", "up"],
                    # ClusterIPs: a route for the node's own connections (hostNetwork
                    # pods), which kube-proxy's rules translate; untranslated, they end
                    # on a veth whose peer is down (no dummy module on every kernel)
                    ["ip", "link", "add", "svc0", "type", "veth", "peer", "name", "svc0-sink"],
                    ["ip", "link", "set", "svc0", "up"],
                    ["ip", "route", "add", SERVICE_CIDR, "dev", "svc0"],
                    ["sysctl", "-qw", "net.ipv4.ip_forward=1"]):
            sh(nx + cmd)
        # Replies from the API server to pods (the `kubernetes` Service) go back to the node.
        sh(["ip", "route", "add", pod_cidr, "via", node_ip, "dev", host_veth])
        lock.close()

        # -- cgroups: the pods' tree (kubelet's cgroupRoot) and the node's processes
        stack.callback(_remove_cgroup, cg_node)
        stack.callback(_remove_cgroup, cg_pods)
        _make_cgroup(cg_pods)
        # The node's processes are only tracked (pids controller, or the v2 tree), not
        # moved out of the test's other cgroups (its memory limit stays theirs).
        _make_cgroup(cg_node, only=_tracking_hierarchy())

        # -- the control plane, reachable from the node at host_ip
        kc = stack.enter_context(kube_cluster(d, address=host_ip, with_nodes=True))
        node = KubeNode(kc=kc, dir=d, name=f"webb-{t}-node", cni=cni, pod_cidr=pod_cidr,
                        netns=netns, bins=bins, node_ip=node_ip, host_ip=host_ip)
        node.timings["control plane"] = time.monotonic() - t0

        # -- certificates and kubeconfigs of the node's components
        assert kc.ca is not None
        pki = d / "pki"
        kl_crt, kl_key = kc.ca.issue("kubelet-client", f"system:node:{node.name}",
                                     org="system:nodes", client=True)
        srv_crt, srv_key = kc.ca.issue("kubelet-server", node.name, dns=(node.name,), ips=(node_ip,))
        kp_crt, kp_key = kc.ca.issue("kube-proxy", "system:kube-proxy", client=True)
        _kubeconfig(d / "kubelet.kubeconfig", kc.server, kc.ca.cert, kl_crt, kl_key, "kubelet")
        _kubeconfig(d / "kube-proxy.kubeconfig", kc.server, kc.ca.cert, kp_crt, kp_key, "kube-proxy")

        # -- the node's mount namespace, kept by a holder process
        for sub in ("log", "kubelet", "cni/net.d", "cni/ipam", "containerd"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        if not os.path.lexists("/var/lib/kubelet"):  # a mount point only, removed after
            os.mkdir("/var/lib/kubelet")

            def rm_kubelet_dir() -> None:
                try:
                    os.rmdir("/var/lib/kubelet")
                except OSError:
                    pass
            stack.callback(rm_kubelet_dir)
        setup = " && ".join([
            # The copies of the host's mounts under /run go first: hidden under the tmpfs
            # they would still be found as the mount of /run/netns, and copies of other
            # tests' netns mounts would keep those namespaces alive after they delete them.
            DETACH_RUN,
            "mount -t tmpfs -o mode=0755 webb-node-run /run",
            # shared, so that the pods' netns mounts reach the agent (HostToContainer)
            "mount --make-rshared /run",
            "mkdir -p /run/netns /run/containerd",
            f"mount --bind {d}/log /var/log",
            f"mount --bind {d}/kubelet /var/lib/kubelet",
            "mount --make-rshared /var/lib/kubelet",
            "echo ready",
            "exec sleep 2147483647"])
        holder = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{netns}", "unshare", "--mount", "--propagation",
             "private", "sh", "-c", setup],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            preexec_fn=_join_cgroup(cg_node))
        node.holder = holder
        stack.callback(_stop, holder, 2)
        line = holder.stdout.readline() if holder.stdout else ""
        if line.strip() != "ready":
            raise RuntimeError(f"node mount namespace: {line} {holder.stderr.read() if holder.stderr else ''}")

        def start(name: str, args: list[str]) -> None:
            log = open(d / f"{name}.log", "ab")
            try:
                node.procs[name] = subprocess.Popen(
                    node.in_node(args), stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, preexec_fn=_join_cgroup(cg_node))
            finally:
                log.close()
            stack.callback(_stop, node.procs[name])

        # -- containerd, its CNI configuration, the images
        (d / "cni/net.d/10-webb.conflist").write_text(json.dumps(cni_config(cni, pod_cidr, d / "cni/ipam")))
        (d / "containerd.toml").write_text(containerd_config(d, d / "cni/net.d"))
        t1 = time.monotonic()
        seeded = _seed_root(archives, d / "containerd/root")

        def start_containerd() -> None:
            start("containerd", [bins["containerd"], "--config", str(d / "containerd.toml")])
            node.wait(lambda: node.run(["ctr", "version"], check=False).returncode == 0, 60,
                      "containerd answering")
        start_containerd()
        # Unwinding: kube-proxy and the kubelet stop, then the pods die (by cgroup) while
        # containerd still runs, then containerd, the holder and the rest.
        stack.callback(_remove_cgroup, cg_pods)
        if not seeded:
            for name, archive in archives.items():
                node.run(["ctr", "-n", "k8s.io", "images", "import", archive], timeout=600)
            _stop(node.procs.pop("containerd"))  # a consistent root to keep as the seed
            _save_seed(archives, d / "containerd/root")
            start_containerd()
        node.timings["images"] = time.monotonic() - t1

        # -- kubelet
        (d / "resolv.conf").write_text("# pods of dnsPolicy Default: no upstream DNS here\n")
        kubelet_config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": node_ip, "port": 10250, "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1",
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(kc.ca.cert)}},
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(srv_crt), "tlsPrivateKeyFile": str(srv_key),
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{cg_pods}",
            "failSwapOn": False, "makeIPTablesUtilChains": False, "oomScoreAdj": 0,
            "clusterDNS": [CLUSTER_DNS], "clusterDomain": "cluster.local",
            "resolvConf": str(d / "resolv.conf"),
            # a shared disk: never evict or collect images because of what others store
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False, "maxPods": 40,
            "nodeStatusUpdateFrequency": "4s", "syncFrequency": "10s",
        }
        (d / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config))
        start("kubelet", [bins["kubelet"], f"--config={d / 'kubelet.yaml'}",
                          f"--kubeconfig={d / 'kubelet.kubeconfig'}",
                          "--container-runtime=remote",
                          "--container-runtime-endpoint=unix:///run/containerd/containerd.sock",
                          f"--node-ip={node_ip}", f"--hostname-override={node.name}",
                          f"--cert-dir={pki}", "--v=1"])

        def node_ready() -> bool:
            n = kc.api("GET", f"/api/v1/nodes/{node.name}")
            return any(c["type"] == "Ready" and c["status"] == "True"
                       for c in n.get("status", {}).get("conditions", []))
        node.wait(node_ready, timeout, f"node {node.name} Ready")
        restore_sysctls()  # the kubelet sets them once, at start
        node.timings["node Ready"] = time.monotonic() - t0

        # -- kube-proxy, iptables mode, in the node's namespace only
        proxy_config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(d / "kube-proxy.kubeconfig")},
            "mode": "iptables", "clusterCIDR": pod_cidr, "hostnameOverride": node.name,
            "bindAddress": node_ip, "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249", "oomScoreAdj": 0,
            # conntrack limits and timeouts are host-wide knobs: leave them alone
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
        }
        (d / "kube-proxy.yaml").write_text(yaml.safe_dump(proxy_config))
        start("kube-proxy", [bins["kube-proxy"], f"--config={d / 'kube-proxy.yaml'}", "--v=1"])
        node.wait(lambda: "KUBE-SERVICES" in node.run(["iptables-save", "-t", "nat"]).stdout, 60,
                  "kube-proxy's KUBE-SERVICES chain")
        node.timings["kube-proxy"] = time.monotonic() - t0

        yield node
