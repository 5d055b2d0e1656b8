"""A real Kubernetes control plane for tests: etcd, kube-apiserver and
kube-controller-manager on loopback, no kubelet.

    from k8s_cluster import kube_cluster

    with kube_cluster(tmp_path) as kc:
        kc.kubeconfig   # admin kubeconfig (str path)
        kc.server       # https://127.0.0.1:<port>
        kc.api("GET", "/api/v1/namespaces")   # JSON in, JSON out, admin credentials

The binaries are Kubernetes 1.20.2 built from Debian's source package by
scripts/build_kube.sh (run by scripts/setup.sh) into /var/cache/webb/kube-1.20.2/bin
(or $WEBB_KUBE_BIN); etcd is Debian's etcd-server. Without them the helper raises
KubeBinariesMissing, naming the script: tests fail, they are not skipped.

Everything listens on 127.0.0.1 at free ports, lives in a temporary directory under
the given base, and is stopped and removed on exit, also when start-up fails.
The controller manager runs the usual controllers (EndpointSlices, ServiceAccounts
and their tokens, Deployments, ReplicaSets, garbage collection, namespaces) except
node lifecycle: with no kubelet the nodes never report, and that controller would
mark every pod not ready and evict it.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from ports import free_port

KUBE_VERSION = "1.20.2"
DEFAULT_BIN = f"/var/cache/webb/kube-{KUBE_VERSION}/bin"
SERVICE_CIDR = "10.96.0.0/16"  # allocated only: nothing routes it
READY_TIMEOUT = 90.0


class KubeBinariesMissing(RuntimeError):
    pass


class KubeAPIError(RuntimeError):
    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.body = body


def kube_bin_dir() -> Path:
    return Path(os.environ.get("WEBB_KUBE_BIN", DEFAULT_BIN))


def binaries() -> dict[str, str]:
    """Paths of etcd, kube-apiserver, kube-controller-manager; raises with the fix."""
    d = kube_bin_dir()
    found = {"etcd": shutil.which("etcd") or "",
             "kube-apiserver": str(d / "kube-apiserver"),
             "kube-controller-manager": str(d / "kube-controller-manager")}
    missing = [n for n, p in found.items() if not p or not os.access(p, os.X_OK)]
    if missing:
        raise KubeBinariesMissing(
            f"missing {', '.join(missing)} (looked in {d} and $PATH): run scripts/build_kube.sh "
            f"(scripts/setup.sh does) to build Kubernetes {KUBE_VERSION} from Debian's source "
            "package and install etcd-server")
    return found


def _openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {res.stderr.strip()}")


@dataclass
class CertAuthority:
    """A throwaway CA (openssl) that signs server and client certificates."""

    dir: Path
    name: str = "webb-test-ca"
    cert: Path = field(init=False)
    key: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = self.dir / f"{self.name}.crt", self.dir / f"{self.name}.key"
        if not self.cert.exists():
            _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                     "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "3",
                     "-subj", f"/CN={self.name}", cwd=self.dir)

    def issue(self, name: str, cn: str, org: str = "", dns: tuple[str, ...] = (),
              ips: tuple[str, ...] = (), client: bool = False) -> tuple[Path, Path]:
        """(certificate, key) signed by this CA; servers get the SANs given."""
        key, csr, crt = (self.dir / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        subj = (f"/O={org}" if org else "") + f"/CN={cn}"
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(key), "-out", str(csr), "-subj", subj, cwd=self.dir)
        ext = self.dir / f"{name}.ext"
        lines = [f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}",
                 "keyUsage=critical,digitalSignature,keyEncipherment"]
        sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-CAcreateserial", "-out", str(crt), "-days", "3", "-extfile", str(ext),
                 cwd=self.dir)
        return crt, key


@dataclass
class KubeCluster:
    dir: Path
    server: str = ""
    kubeconfig: str = ""
    ca_file: str = ""
    admin_cert: str = ""
    admin_key: str = ""
    ca: CertAuthority | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.load_cert_chain(self.admin_cert, self.admin_key)
        return ctx

    def api(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None,
            content_type: str = "application/json", timeout: float = 30.0) -> Any:
        """One request as the cluster admin; KubeAPIError for a non-2xx answer."""
        url = self.server + path
        if query:
            url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": content_type,
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
            msg = doc.get("message", "") if isinstance(doc, dict) else raw[:300].decode("utf-8", "replace")
            raise KubeAPIError(e.code, f"{method} {path}: {msg}", doc) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:  # /readyz, /healthz answer plain text
            return raw.decode("utf-8", "replace")

    def check_running(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}: "
                                   f"{self.log(name)[-3000:]}")

    def log(self, name: str) -> str:
        try:
            return (self.dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def wait(self, pred: Any, timeout: float = 30.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            self.check_running()
            try:
                last = pred()
                if last:
                    return last
            except (KubeAPIError, OSError) as e:
                last = e
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def _start(kc: KubeCluster, name: str, args: list[str]) -> None:
    log = open(kc.dir / f"{name}.log", "ab")
    try:
        kc.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
    finally:
        log.close()


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(10)


def _write_kubeconfig(kc: KubeCluster, path: Path) -> None:
    def b64(p: str) -> str:
        return base64.b64encode(Path(p).read_bytes()).decode()
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "webb-test",
        "clusters": [{"name": "webb-test", "cluster": {
            "server": kc.server, "certificate-authority-data": b64(kc.ca_file)}}],
        "users": [{"name": "admin", "user": {
            "client-certificate-data": b64(kc.admin_cert), "client-key-data": b64(kc.admin_key)}}],
        "contexts": [{"name": "webb-test", "context": {"cluster": "webb-test", "user": "admin"}}],
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)


@contextmanager
def kube_cluster(base: Path | str, timeout: float = READY_TIMEOUT, *, address: str = "127.0.0.1",
                 with_nodes: bool = False) -> Iterator[KubeCluster]:
    """etcd + kube-apiserver + kube-controller-manager, ready (/readyz) on entry,
    stopped and deleted on exit.

    with_nodes: for a cluster that gets a kubelet (tests/k8s_node.py): the API server
    listens on `address` (where the node reaches it), keeps the `kubernetes` Service's
    endpoints (lease reconciler) for pods, and can reach kubelets (logs, exec,
    port-forward) with a client certificate; the node lifecycle controller runs (it
    lifts the not-ready taint once the node is Ready); kube-scheduler runs too."""
    bins = binaries()
    if with_nodes:
        bins["kube-scheduler"] = str(kube_bin_dir() / "kube-scheduler")
        if not os.access(bins["kube-scheduler"], os.X_OK):
            raise KubeBinariesMissing(f"missing {bins['kube-scheduler']}: run scripts/build_kube.sh")
    d = Path(tempfile.mkdtemp(prefix="kube-", dir=str(base)))
    kc = KubeCluster(d)
    try:
        pki = d / "pki"
        ca = kc.ca = CertAuthority(pki, "kube-ca")
        srv_crt, srv_key = ca.issue("apiserver", "kube-apiserver",
                                    dns=("localhost", "kubernetes", "kubernetes.default",
                                         "kubernetes.default.svc"),
                                    ips=tuple(dict.fromkeys(("127.0.0.1", address, "10.96.0.1"))))
        adm_crt, adm_key = ca.issue("admin", "admin", org="system:masters", client=True)
        kl_crt, kl_key = ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                  org="system:masters", client=True)
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
        kc.ca_file, kc.admin_cert, kc.admin_key = str(ca.cert), str(adm_crt), str(adm_key)

        etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port(address)
        _start(kc, "etcd", [
            bins["etcd"], "--name", "webb-test", "--data-dir", str(d / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"webb-test=http://127.0.0.1:{etcd_peer}",
            "--listen-metrics-urls", "", "--log-level", "warn", "--logger", "zap"])
        kc.server = f"https://{address}:{api_port}"
        _start(kc, "kube-apiserver", [
            bins["kube-apiserver"], f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={address}", f"--advertise-address={address}",
            f"--kubelet-client-certificate={kl_crt}", f"--kubelet-client-key={kl_key}",
            "--kubelet-preferred-address-types=InternalIP",
            f"--secure-port={api_port}", "--insecure-port=0",
            f"--tls-cert-file={srv_crt}", f"--tls-private-key-file={srv_key}",
            f"--client-ca-file={ca.cert}", "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--cert-dir={d / 'apiserver-certs'}", "--profiling=false",
            f"--endpoint-reconciler-type={'lease' if with_nodes else 'none'}", "--v=0"])
        kc.kubeconfig = str(d / "admin.kubeconfig")
        _write_kubeconfig(kc, Path(kc.kubeconfig))

        def ready() -> bool:
            try:
                kc.api("GET", "/readyz", timeout=5)
                return True
            except (KubeAPIError, OSError, ValueError):
                return False
        kc.wait(ready, timeout, "kube-apiserver /readyz")
        _start(kc, "kube-controller-manager", [
            bins["kube-controller-manager"], f"--kubeconfig={kc.kubeconfig}",
            "--bind-address=127.0.0.1", "--secure-port=0", "--port=0", "--leader-elect=false",
            "--controllers=*,-cloud-node-lifecycle"
            + ("" if with_nodes else ",-nodelifecycle"),
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={ca.cert}", "--use-service-account-credentials=false",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--v=0"])
        # The controllers are up once they have made the default ServiceAccount.
        kc.wait(lambda: kc.api("GET", "/api/v1/namespaces/default/serviceaccounts/default"),
                timeout, "kube-controller-manager (the default ServiceAccount)")
        if with_nodes:
            _start(kc, "kube-scheduler", [
                bins["kube-scheduler"], f"--kubeconfig={kc.kubeconfig}", "--leader-elect=false",
                "--bind-address=127.0.0.1", "--port=0", "--secure-port=0", "--v=0"])
        yield kc
    finally:
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            p = kc.procs.get(name)
            if p is not None:
                _stop(p)
        shutil.rmtree(d, ignore_errors=True)
