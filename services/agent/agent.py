"""The agent: wires registry, datapath, ingest, ring and the gRPC services."""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import webb
from webb.tls import server_credentials

from .api.admin import AdminService
from .api.agent_events import AgentEventLog
from .pipeline.counters import agent_counters, bounded_state_counters
from .datapath.kernel_drops import KernelDrops, current_netns_inode, netns_inodes
from .datapath.loader import AttachError, Datapath
from .stores.endpoints import Endpoint, EndpointRegistry, NodeInfo, packed_ip, watch_registry_file
from .api.flow_batches import FlowStreamService
from .stores.history.hooks import PersistConfig, Persistence
from .stores.identities import IdentityAllocator
from .pipeline.ingest import Ingest
from .pipeline.l7.encode import L7Encoder
from .pipeline.l7.fqdn import FQDNCache
from .pipeline.l7.redact import RedactSettings
from .pipeline.l7.http import scanner as http_scanner
from .pipeline.l7.tracker import loop as tracker_loop
from .pipeline.l7.tracker import L7Tracker
from .l7proxy.dnsproxy import DNSFlow
from .l7proxy.flows import dns_message, l7_message
from .l7proxy.proxy import L7Proxy, ProxyFlow
from .l7proxy.steering import UPSTREAM_PORTS
from .pipeline.l7.visibility import ANNOTATION, DEFAULT_RULES, parse_visibility, selection_keys
from .memory import release_freed_heap
from .api.observer import NodeState, ObserverService
from .pipeline.wire_cache import FlowWireCache
from .api.peer import PeerDirectory, PeerService
from .policy.engine import PolicyEngine, watch_policy_dir
from .policy.store import PolicyStore
from .policy.model import Policy
from .stores.ring import Ring
from .api.server import start_server

if TYPE_CHECKING:
    from .k8s.client import KubeClient

log = logging.getLogger(__name__)

VERSION = f"{webb.__version__}+webb"


@dataclass
class AgentConfig:
    listen_address: str = ":4244"
    unix_socket: str = ""
    node_name: str = "node"
    ring_capacity: int = 65535
    endpoints_file: str = ""
    netns: str = ""
    node_ips: list[str] = field(default_factory=list)
    peer_address: str = ""
    identity_file: str = ""
    report_interval: float = 10.0
    perf_pages: int = 2048
    wakeup_events: int = 64
    drain_interval: float = 0.01
    policy_dir: str = ""
    policy_store: str = ""  # the cluster's policy directory (demo, shared hosts)
    allow_localhost: bool = True
    kernel_drops: bool = True
    drop_report_interval: float = 1.0
    ct_timeout_any: float = 60.0  # s: a non-TCP flow idle this long is new again
    ct_timeout_syn: float = 60.0  # s: a TCP attempt (SYNs only) this old is new at its next SYN
    persist: PersistConfig = field(default_factory=PersistConfig)  # flow history and export
    l7_visibility: str = DEFAULT_RULES  # applies to every endpoint; annotations add more
    l7_prefix: int = 1024
    # The L7 ring buffer, per possible CPU (one ring of this x CPUs, rounded up to a power
    # of two: 8 MiB on 2 CPUs): bursts of L7 messages, not their rate, fill it.
    l7_perf_pages: int = 1024
    l7_proxy: bool = True      # enforce HTTP rules; off: connections they police drop
    l7_proxy_port: int = 0     # 0: any free port
    l7_proxy_idle_timeout: float = 60.0
    # Source ports of the proxy's connections from clients' addresses (l7proxy/steering.py)
    l7_proxy_upstream_ports: tuple[int, int] = UPSTREAM_PORTS
    tofqdns_min_ttl: float = 0.0
    tofqdns_idle_connection_grace_period: float = 0.0
    dnsproxy_concurrency_limit: int = 256  # DNS queries asked upstream at once
    redact: RedactSettings = field(default_factory=RedactSettings)
    # Kubernetes mode (k8s/): pods, nodes, namespaces, Services and policies from the
    # API server, identities allocated cluster-wide through it.
    k8s: bool = False
    kubeconfig: str = ""
    cluster_name: str = "default"
    install_crds: bool = True
    identity_gc_interval: float = 60.0
    identity_gc_grace: float = 900.0
    # TLS on the TCP address (webb.tls); the unix socket stays plaintext.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # webb.stream.FlowStream (batched GetFlows for webb's own components); off, the
    # agent answers UNIMPLEMENTED there like a plain Hubble server.
    batch_service: bool = True
    event_loop: str = "uvloop"  # or "asyncio" (main.py runs the agent on it)


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.identities = IdentityAllocator(cfg.identity_file or None)
        self.kube = None  # the KubeSource, in Kubernetes mode
        if cfg.k8s:  # numbers every node agrees on, from the API server
            from .k8s.identity_crd import CRDIdentityAllocator

            self.identities = CRDIdentityAllocator()
        self.registry = EndpointRegistry(cfg.node_name, self.identities)
        # History opens first: the ring continues its sequence numbers.
        self.persist = Persistence(cfg.persist)
        self.ring: Ring = Ring(cfg.ring_capacity, self.persist.start_seq)
        self.datapath: Datapath | None = None
        self.policy: PolicyEngine | None = None
        self.kernel_drops: KernelDrops | None = None
        self.l7proxy: L7Proxy | None = None
        self._proxy_flows: list[ProxyFlow | DNSFlow] = []
        self.attach_errors: dict[str, str] = {}
        self.agent_events = AgentEventLog()
        self.peers = PeerDirectory(cfg.cluster_name if cfg.tls_cert else "")
        self._tasks: list[asyncio.Task[None]] = []
        self.server = None
        port = cfg.listen_address.rsplit(":", 1)[-1] if cfg.listen_address else ""
        self.address = cfg.peer_address or (f"127.0.0.1:{port}" if port else "")

    async def start(self) -> None:
        cfg = self.cfg
        credentials = server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        kube_client = None
        if cfg.k8s:  # a bad kubeconfig fails here, before seconds of compiling programs
            from .k8s.client import KubeClient

            kube_client = await KubeClient.connect(cfg.kubeconfig)
        self.datapath = Datapath(cfg.netns or None, cfg.report_interval,
                                 drop_report_interval_s=cfg.drop_report_interval,
                                 l7_prefix=cfg.l7_prefix, l7_pages=cfg.l7_perf_pages,
                                 ct_timeout_any_s=cfg.ct_timeout_any,
                                 ct_timeout_syn_s=cfg.ct_timeout_syn)
        node_ips = set(cfg.node_ips) or set(await self.datapath.addresses())
        self.policy = PolicyEngine(self.registry, node_ips, allow_localhost=cfg.allow_localhost,
                                   fqdn_min_ttl=cfg.tofqdns_min_ttl,
                                   fqdn_idle_grace=cfg.tofqdns_idle_connection_grace_period)
        self.policy.on_change = self._on_policy
        self.policy.bind_datapath(self.datapath)
        self.ingest = Ingest(self.ring, self.registry, {packed_ip(ip) for ip in node_ips})
        self.ingest.cidr_endpoint = self.policy.cidr_endpoint
        self.wire_cache = FlowWireCache(cfg.node_name, {}, VERSION)
        self.wire_cache.encoder.policies = self.policy.policies_field
        self.fqdn = FQDNCache()
        self.l7_rules = parse_visibility(cfg.l7_visibility)
        self.ingest.l7 = L7Tracker(self.fqdn)
        # which HTTP head scanner runs: C (scripts/build_ext.py) or its Python twin
        log.info("L7 HTTP head scanner: %s", http_scanner())
        log.info("L7 tracker loop: %s", tracker_loop())
        self.wire_cache.l7 = L7Encoder(cfg.node_name, VERSION, cfg.redact, self.fqdn)
        self.wire_cache.encoder.fqdn = self.fqdn
        self.wire_cache.l7.policies = self.policy.policies_field
        if cfg.l7_proxy:
            await self._start_l7proxy()
        self.node = NodeState(cfg.node_name, VERSION, self.address, self.ring,
                              lambda: self.ingest.seen_events)
        self.ingest.on_batch = self.persist.bind(self.wire_cache, cfg.node_name, self.node.note_batch)
        self.datapath.open_events(self.ingest.on_event, self.ingest.on_lost,
                                  cfg.perf_pages, cfg.wakeup_events)
        self.datapath.open_l7_events(self.ingest.on_l7_batch, self.ingest.on_lost)
        if cfg.kernel_drops:
            await self._start_kernel_drops()
        release_freed_heap()  # what LLVM freed after compiling the programs
        # The policy listener goes first: an endpoint's enforcement is in the maps
        # before its programs are attached.
        self.registry.subscribe(self.policy.on_endpoint)
        self.registry.subscribe(self._on_endpoint)
        self.registry.subscribe_nodes(self._on_nodes)
        self.registry.subscribe_nodes(self.policy.on_nodes)
        self._on_nodes([])
        if kube_client is not None:
            await self._start_kube(kube_client)
        observer = ObserverService(self.node, self.wire_cache, self.agent_events)
        self.persist.serve(observer)
        self.server, self.health = await start_server(
            observer, PeerService(self.peers),
            AdminService(self.registry, self._attach_state, self.policy,
                         store=(PolicyStore(cfg.policy_store, self.policy)
                                if cfg.policy_store and self.policy is not None else None),
                         status=lambda: (cfg.node_name, VERSION,
                                         {**agent_counters(self.datapath, self.ingest),
                                          **bounded_state_counters(self.node,
                                                                   self.wire_cache.encoder),
                                          **self._proxy_counters(),
                                          **self._fqdn_counters()})),
            cfg.listen_address, cfg.unix_socket, credentials,
            FlowStreamService(observer) if cfg.batch_service else None)
        self.agent_events.agent_started()
        self._spawn(self.ingest.run(self._consume, cfg.drain_interval), "ingest")
        for name, task in self.persist.tasks():
            self._spawn(task, name)
        self._spawn(self._retry_attach(), "attach")
        if cfg.endpoints_file:
            self._spawn(watch_registry_file(cfg.endpoints_file, self.registry), "registry")
        if cfg.policy_dir:
            self._spawn(watch_policy_dir(cfg.policy_dir, self.policy), "policy-dir")
        if cfg.policy_store:
            self._spawn(watch_policy_dir(cfg.policy_store, self.policy), "policy-store")
        log.info("agent %s serving on %s%s", cfg.node_name, cfg.listen_address or "-",
                 f" and unix://{cfg.unix_socket}" if cfg.unix_socket else "")

    async def _start_l7proxy(self) -> None:
        assert self.datapath is not None and self.policy is not None
        proxy = L7Proxy(self.policy, self.registry, self.datapath, self.cfg.l7_proxy_port,
                        self.cfg.l7_proxy_idle_timeout,
                        upstream_ports=self.cfg.l7_proxy_upstream_ports)
        # A bound list.append: what the proxy reports per request costs no Python
        # frame; ingest builds the messages with its next drain (_proxy_messages).
        proxy.on_flow = proxy.dns.on_flow = self._proxy_flows.append
        self.ingest.l7_source = self._proxy_messages
        proxy.dns.on_answer = self.policy.learn_dns
        proxy.dns.on_names = self._proxy_dns_names
        proxy.dns.max_upstream = self.cfg.dnsproxy_concurrency_limit
        try:
            await proxy.start()
        except Exception as e:  # policy stays closed: policed connections drop
            log.error("L7 proxy could not start, connections that HTTP rules police will be "
                      "dropped: %s", e)
            await proxy.stop()
            return
        self.l7proxy = proxy

    def _fqdn_counters(self) -> dict[str, int]:
        """toFQDNs: names learned, (name, address) pairs not learned because the table
        was full, expired addresses kept for their connections, and how often those
        connections were looked at."""
        p = self.policy
        if p is None:
            return {}
        return {"policy.fqdn_names": len(p.fqdn), "policy.fqdn_refused": p.fqdn.answers.refused,
                "policy.fqdn_kept": len(p.fqdn.kept()),
                "policy.fqdn_kept_checks": p.fqdn_kept_checks}

    def _proxy_counters(self) -> dict[str, int]:
        """The L7 proxy's counters for GetStatus: "l7proxy.<name>"."""
        p = self.l7proxy
        if p is None:
            return {}
        st = p.stats
        out = {"l7proxy.port": p.port, "l7proxy.egress_port": p.egress_port,
               "l7proxy.connections": st.connections,
               "l7proxy.active_connections": st.active, "l7proxy.requests": st.requests,
               "l7proxy.denied": st.denied, "l7proxy.dns_queries": st.dns_queries,
               "l7proxy.dns_denied": st.dns_denied,
               "l7proxy.dns_upstream_active": p.dns.upstream_active}
        out.update({f"l7proxy.error_{k}": v for k, v in st.errors.items()})
        return out

    def _proxy_dns_names(self, answer: Any, time_ns: int) -> None:
        """An answer the DNS proxy let through names the flows to its addresses."""
        self.fqdn.learn([answer.query, *answer.cnames], list(answer.ips), answer.ttl, time_ns)

    def _proxy_messages(self) -> list:
        """The L7 proxy's flows since the last drain, as L7 messages (ingest writes them
        with the datapath's records, in time order)."""
        if not self._proxy_flows:
            return []
        fs = self._proxy_flows.copy()
        self._proxy_flows.clear()  # the same list: the proxy holds its append
        assert self.policy is not None
        intern = self.policy.sets.intern
        out = []
        # A connection's flows carry the same policies tuple (rules.decide's cached
        # answer) one after the other: intern it once per run of them, not per flow
        # (hashing the frozen PolicyRefs costs ~0.4 us a flow).
        last: object = None
        num = 0
        for f in fs:
            if f.policies is not last:
                last, num = f.policies, intern(f.policies)
            out.append((dns_message if isinstance(f, DNSFlow) else l7_message)(  # type: ignore[arg-type]
                f, num))
        return out

    async def _start_kernel_drops(self) -> None:
        assert self.datapath is not None
        try:
            kd = KernelDrops(self.cfg.drop_report_interval)
        except Exception as e:  # the flows and the policy work without it
            log.warning("kernel drops will not be reported: %s", e)
            return
        kd.set_node_netns(await self.datapath.in_netns(current_netns_inode))
        kd.open_events(self.ingest.on_event, self.ingest.on_lost, max(self.cfg.perf_pages // 8, 64),
                       self.cfg.wakeup_events)
        self.wire_cache.encoder.kernel_reason = kd.reason
        self.kernel_drops = kd

    async def _start_kube(self, client: "KubeClient") -> None:
        """Kubernetes mode: the API server feeds the registry, the policy engine and
        the Services on flows (k8s/watcher.py)."""
        from .k8s.interfaces import host_interface
        from .k8s.services import ServiceMap
        from .k8s.watcher import KubeOptions, KubeSource

        cfg, dp = self.cfg, self.datapath
        assert dp is not None and self.policy is not None
        services = ServiceMap()
        self.wire_cache.encoder.services = services.fields
        port = cfg.listen_address.rsplit(":", 1)[-1] if cfg.listen_address else ""
        opts = KubeOptions(node_name=cfg.node_name, cluster=cfg.cluster_name,
                           agent_port=int(port) if port.isdigit() else 4244,
                           peer_address=cfg.peer_address, install_crds=cfg.install_crds,
                           identity_gc_interval=cfg.identity_gc_interval,
                           identity_gc_grace=cfg.identity_gc_grace)

        async def find_interface(ips: tuple[str, ...]) -> str:
            return await dp.in_netns(lambda: host_interface(dp.netlink(), ips, cfg.netns))

        self.kube = KubeSource(client, opts, self.registry, self.identities,  # type: ignore[arg-type]
                               self.policy, services, find_interface, self._on_node_ips)
        try:
            await self.kube.start()
        except BaseException:
            await self.kube.stop()  # its watches and HTTP session, before the agent exits
            self.kube = None
            raise

    def _on_node_ips(self, ips: set[str]) -> None:
        """This node's addresses from its Node object are reserved:host too."""
        assert self.policy is not None
        new = ips - self.policy.node_ips
        if new:
            self.policy.node_ips |= new
            self.ingest.node_ips |= {packed_ip(ip) for ip in new}
            self.policy.on_nodes(self.registry.nodes)

    def _consume(self) -> None:
        assert self.datapath is not None
        self.datapath.consume()
        if self.kernel_drops is not None:
            self.kernel_drops.consume()

    async def _sync_kernel_drops(self) -> None:
        """Tells drop.c which addresses are local endpoints, in which namespaces."""
        dp, kd = self.datapath, self.kernel_drops
        if dp is None or kd is None:
            return
        inodes = await dp.in_netns(lambda: netns_inodes(dp.netlink()))
        eps: dict[bytes, tuple[int, int]] = {}
        for ep in self.registry.list():
            att = dp.attached.get(ep.interface) if self.registry.is_local(ep) else None
            if att is not None:
                for ip in ep.ips:
                    eps[packed_ip(ip)] = (att.ifindex, inodes.get(ep.interface, 0))
        kd.set_endpoints(eps)

    def _sync_l7(self) -> None:
        """Tells flow.c which ports of which attached endpoints are parsed at L7."""
        dp = self.datapath
        if dp is None:
            return
        entries: dict[tuple[int, int, int, int], int] = {}
        for ep in self.registry.list():
            att = dp.attached.get(ep.interface) if self.registry.is_local(ep) else None
            if att is None:
                continue
            # parse_endpoint validated the annotation already
            rules = self.l7_rules + parse_visibility(dict(ep.annotations).get(ANNOTATION, ""))
            entries.update(selection_keys(att.ifindex, rules))
        if dp.set_l7_selection(entries):
            log.info("L7 visibility: %d selector entries", len(entries))

    def _on_policy(self, p: Policy, deleted: bool) -> None:
        assert self.policy is not None
        self.agent_events.policy_changed(p.labels(), self.policy.revision, p.rule_count(), deleted)

    def _spawn(self, coro, name: str) -> None:  # type: ignore[no-untyped-def]
        self._tasks.append(asyncio.create_task(coro, name=name))

    def _on_nodes(self, nodes: list[NodeInfo]) -> None:
        self.ingest.remote_node_ips = {packed_ip(ip) for n in nodes
                                       if n.name != self.cfg.node_name for ip in n.ips}
        peers = {n.name: n.agent_address for n in nodes if n.agent_address}
        # In Kubernetes mode this node's address comes from its Node object like the
        # others' (InternalIP and the agent port), unless --peer-address says otherwise.
        if self.address and (self.cfg.peer_address or not self.cfg.k8s
                             or self.cfg.node_name not in peers):
            peers[self.cfg.node_name] = self.address
        self.peers.set(peers)

    def _attach_state(self, ep: Endpoint) -> tuple[bool, str]:
        if not self.registry.is_local(ep) or self.datapath is None:
            return False, ""
        return ep.interface in self.datapath.attached, self.attach_errors.get(ep.interface, "")

    async def _on_endpoint(self, old: Endpoint | None, new: Endpoint | None) -> None:
        assert self.datapath is not None
        local_old = old is not None and self.registry.is_local(old)
        local_new = new is not None and self.registry.is_local(new)
        if local_old and (not local_new or old.interface != new.interface):  # type: ignore[union-attr]
            await self.datapath.detach(old.interface)  # type: ignore[union-attr]
            self.attach_errors.pop(old.interface, None)  # type: ignore[union-attr]
        if local_new:
            await self._try_attach(new.interface)  # type: ignore[union-attr]
        if local_old or local_new:
            await self._sync_kernel_drops()
            self._sync_l7()
        # Events are about this node's endpoints, as Cilium's (another node's pods are
        # names for addresses here, with no endpoint ID).
        owned_old = old is not None and self.registry.owns(old)
        owned_new = new is not None and self.registry.owns(new)
        if owned_old != owned_new:
            self.agent_events.endpoint_changed(old if owned_old else None,
                                               new if owned_new else None)

    async def _try_attach(self, ifname: str) -> None:
        assert self.datapath is not None
        try:
            await self.datapath.attach(ifname)
            self.attach_errors.pop(ifname, None)
        except AttachError as e:
            if self.attach_errors.get(ifname) != str(e):
                log.warning("%s (will retry)", e)
            self.attach_errors[ifname] = str(e)
        self.wire_cache.ifnames.clear()
        self.wire_cache.ifnames.update(self.datapath.ifindex_names())

    async def _retry_attach(self) -> None:
        """Interfaces that did not exist yet (a pod still starting) are retried."""
        while True:
            await asyncio.sleep(1.0)
            retried = False
            for ep in self.registry.list():
                if self.registry.is_local(ep) and ep.interface in self.attach_errors:
                    await self._try_attach(ep.interface)
                    retried = True
            if retried:
                await self._sync_kernel_drops()
                self._sync_l7()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.persist.close(self.ring.next_seq)
        if self.kube is not None:
            await self.kube.stop()
        if self.server is not None:
            await self.server.stop(grace=0.5)
        if self.kernel_drops is not None:
            self.kernel_drops.close()
        if self.l7proxy is not None:
            await self.l7proxy.stop()
        if self.datapath is not None:
            self.datapath.close()
        if self.cfg.unix_socket and os.path.exists(self.cfg.unix_socket):
            os.unlink(self.cfg.unix_socket)
