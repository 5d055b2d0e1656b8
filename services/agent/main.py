"""webb-agent: eBPF flows of this node's endpoints, served over Hubble's API."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

from webb.durations import duration_arg
from webb.tls import TLSConfigError, server_credentials

from .agent import Agent, AgentConfig
from .l7proxy.steering import UPSTREAM_PORTS
from .stores.history import hooks as persist_flags
from .pipeline.l7.redact import DEFAULT_DENY_HEADERS, DEFAULT_SENSITIVE_QUERY_PARAMS, RedactSettings
from .pipeline.l7.visibility import DEFAULT_RULES, VisibilityError, parse_visibility
from .memory import tune_gc
from .stores.ring import valid_capacity


def parse_args(argv: list[str] | None = None) -> AgentConfig:
    p = argparse.ArgumentParser(
        prog="webb-agent",
        description="Attach webb's eBPF programs to this node's endpoint interfaces and "
                    "serve the flows over Hubble's observer.Observer API.",
        epilog="example: webb-agent --endpoints endpoints.yaml --listen-address :4244")
    p.add_argument("--listen-address", default=":4244",
                   help="gRPC address for observer, peer and health (default :4244; '' disables)")
    p.add_argument("--unix-socket", default="/var/run/webb/hubble.sock",
                   help="also serve on this unix socket ('' disables)")
    p.add_argument("--node-name", default=os.environ.get("WEBB_NODE_NAME") or socket.gethostname(),
                   help="name of this node in flows (default: host name)")
    p.add_argument("--ring-capacity", type=int, default=65535,
                   help="flows kept in memory; must be 2^n-1 (default 65535)")
    p.add_argument("--endpoints", default="",
                   help="endpoint registry file (YAML), watched for changes")
    p.add_argument("--netns", default="",
                   help="network namespace holding the endpoint interfaces (default: the agent's)")
    p.add_argument("--node-ip", action="append", default=[],
                   help="an address of this node (reserved:host); default: the addresses "
                        "of the interfaces in --netns")
    p.add_argument("--peer-address", default="",
                   help="address other components use to reach this agent "
                        "(default: 127.0.0.1 and the listen port)")
    p.add_argument("--identity-file", default="",
                   help="identity allocation file shared by agents on one host")
    p.add_argument("--report-interval", type=float, default=10.0,
                   help="seconds between reports of a long-lived connection (default 10)")
    p.add_argument("--perf-pages", type=int, default=2048,
                   help="perf buffer pages per CPU (default 2048 = 8 MiB)")
    p.add_argument("--policy-dir", default="",
                   help="directory of policy files (CiliumNetworkPolicy, NetworkPolicy YAML), "
                        "watched for changes; policies also come from `webb policy apply`")
    p.add_argument("--policy-store", default="", metavar="DIR",
                   help="the cluster's policy store without Kubernetes: a directory every "
                        "agent of the cluster watches; `webb policy apply/delete` through any "
                        "agent write it, so every agent enforces the change (the demo's)")
    p.add_argument("--allow-localhost", default="always", choices=["always", "policy"],
                   help="always (default, as Cilium): this node may always reach its endpoints; "
                        "policy: only if a policy allows the host entity")
    p.add_argument("--tofqdns-min-ttl", type=float, default=0.0, metavar="SECONDS",
                   help="the least time addresses from a DNS answer stay allowed to toFQDNs "
                        "rules, whatever the answer's TTL (default 0: the TTL, as Cilium)")
    p.add_argument("--tofqdns-idle-connection-grace-period", type=float, default=0.0,
                   metavar="SECONDS",
                   help="how long an expired toFQDNs address stays allowed to connections "
                        "established while it was, after the last one was seen (default 0, "
                        "as Cilium)")
    p.add_argument("--dnsproxy-concurrency-limit", type=_positive_int, default=256,
                   metavar="N",
                   help="DNS queries the DNS proxy asks servers at once (one socket each; "
                        "default 256); more are answered SERVFAIL at once, as Cilium's flag")
    p.add_argument("--drop-report-interval", type=float, default=1.0,
                   help="seconds between reports of repeated drops of one peer and port "
                        "(default 1); drops in between are counted")
    p.add_argument("--bpf-ct-timeout-regular-any", type=duration_arg, default=60.0,
                   metavar="DURATION",
                   help="a UDP (non-TCP) flow idle this long is a new one (its own policy "
                        "check and verdict): seconds or a Go duration (default 1m, as Cilium)")
    p.add_argument("--bpf-ct-timeout-regular-tcp-syn", type=duration_arg, default=60.0,
                   metavar="DURATION",
                   help="a TCP connection attempt that got no further than SYNs this long "
                        "ago is a new one at its next SYN (its own policy check and verdict): "
                        "seconds or a Go duration (default 1m, as Cilium)")
    p.add_argument("--no-kernel-drops", action="store_true",
                   help="do not report packets the kernel drops (skb:kfree_skb)")
    g = p.add_argument_group("L7 visibility (HTTP/1.x and DNS, read from packets, no proxy)")
    g.add_argument("--l7-visibility", default=DEFAULT_RULES, metavar="RULES",
                   help="rules for every endpoint, in Cilium's proxy-visibility syntax, e.g. "
                        "'<Ingress/9080/TCP/HTTP>,<Egress/53/UDP/DNS>' (default: DNS on 53; "
                        "'' for none); an endpoint adds its own with the annotation "
                        "policy.cilium.io/proxy-visibility")
    g.add_argument("--l7-prefix", type=int, default=1024, metavar="BYTES",
                   help="payload bytes captured per message (default 1024)")
    g.add_argument("--l7-perf-pages", type=int, default=1024, metavar="PAGES",
                   help="L7 ring buffer pages per CPU (default 1024 = 4 MiB): the L7 records "
                        "go through one BPF ring buffer for all CPUs of PAGES x possible CPUs, "
                        "rounded up to a power of two (8 MiB on 2 CPUs)")
    g.add_argument("--l7-proxy", default="true", choices=["true", "false"],
                   help="run the transparent proxy that enforces HTTP rules of policies "
                        "(default true); with false, connections those rules police are "
                        "dropped (SOCKET_LOOKUP_FAILED), never let through unchecked")
    g.add_argument("--l7-proxy-port", type=int, default=0, metavar="PORT",
                   help="the proxy's port on 127.0.0.1 and ::1 of the node's namespace "
                        "(default: a free one)")
    p.add_argument("--event-loop", default="uvloop", choices=["uvloop", "asyncio"],
                   help="the agent's event loop: uvloop (default; the L7 proxy's "
                        "requests cost about half as much CPU) or Python's own")
    g.add_argument("--l7-proxy-upstream-ports", type=_port_range,
                   default="%d-%d" % UPSTREAM_PORTS, metavar="LO-HI",
                   help="source ports of the proxy's connections from clients' addresses, in "
                        "the node's namespace (default %d-%d): keep them below the pods' "
                        "ephemeral range and clear of ports node services listen on"
                        % UPSTREAM_PORTS)
    g.add_argument("--l7-proxy-idle-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="a proxied connection without a complete request head for this "
                        "long is closed (default 60)")
    g.add_argument("--redact-enabled", default="true", choices=["true", "false"],
                   help="redact HTTP header values (default true: the deny list below)")
    g.add_argument("--redact-http-headers-allow", default="", metavar="H1,H2",
                   help="show only these headers' values, redact the rest")
    g.add_argument("--redact-http-headers-deny", default=",".join(sorted(DEFAULT_DENY_HEADERS)),
                   metavar="H1,H2", help="redact these headers' values (default: credentials "
                                         "and cookies)")
    g.add_argument("--redact-http-urlquery", action="store_true",
                   help="drop URL queries from HTTP flows entirely")
    g.add_argument("--redact-http-query-params",
                   default=",".join(sorted(DEFAULT_SENSITIVE_QUERY_PARAMS)), metavar="P1,P2",
                   help="redact the values of these URL query parameters")
    g.add_argument("--redact-http-userinfo", default="true", choices=["true", "false"],
                   help="redact passwords in URLs (default true)")
    g = p.add_argument_group("Kubernetes mode (endpoints, identities, nodes, Services and "
                             "policies from the API server; docs/kubernetes.md)")
    g.add_argument("--k8s", action="store_true",
                   help="watch the Kubernetes API instead of an endpoints file")
    g.add_argument("--kubeconfig", default="",
                   help="kubeconfig file (default: in-cluster configuration, else $KUBECONFIG "
                        "or ~/.kube/config)")
    g.add_argument("--cluster-name", default="default",
                   help="cluster name in flows and identities (default 'default')")
    g.add_argument("--no-install-crds", action="store_true",
                   help="do not create the webbidentities.webb.io CRD when it is missing")
    g.add_argument("--identity-gc-interval", type=duration_arg, default=60.0, metavar="DURATION",
                   help="time between identity garbage collections: seconds or a Go "
                        "duration (default 1m)")
    g.add_argument("--identity-gc-grace", type=duration_arg, default=900.0, metavar="DURATION",
                   help="an identity no pod uses is deleted after this long: seconds or a "
                        "Go duration (default 15m, Cilium's identity GC interval)")
    g = p.add_argument_group("TLS on the TCP address (plaintext unless --tls-cert/--tls-key)")
    g.add_argument("--tls-cert", default="", help="server certificate (PEM)")
    g.add_argument("--tls-key", default="", help="server private key (PEM)")
    g.add_argument("--tls-client-ca", default="",
                   help="require client certificates signed by this CA (mTLS)")
    p.add_argument("--disable-batch-service", action="store_true",
                   help="do not serve webb.stream.FlowStream (GetFlows in batches, used by "
                        "webb's relay, UI and exporter); they then fall back to GetFlows as "
                        "with a plain Hubble server")
    persist_flags.add_args(p)  # --history-* and --export-*
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    a = p.parse_args(argv)
    persist = persist_flags.config_from_args(a, p)
    if not valid_capacity(a.ring_capacity):
        p.error(f"--ring-capacity must be 2^n-1 (e.g. 4095, 65535), got {a.ring_capacity}")
    if a.report_interval <= 0:
        p.error("--report-interval must be positive")
    if a.perf_pages <= 0 or a.perf_pages & (a.perf_pages - 1):
        p.error("--perf-pages must be a power of two")
    if a.drop_report_interval <= 0:
        p.error("--drop-report-interval must be positive")
    # Compiled into the datapath as signed nanoseconds (as a Go duration): 1 ns to
    # ~292 years; beyond, the compare in flow.c would see it negative (every UDP packet
    # a new flow) or the compile would fail; inf/nan would crash the loader.
    for flag in ("any", "tcp_syn"):
        if not 1e-9 <= getattr(a, f"bpf_ct_timeout_regular_{flag}") < 2**63 / 1e9:
            p.error(f"--bpf-ct-timeout-regular-{flag.replace('_', '-')} must be between 1ns "
                    "and 292 years")
    if a.k8s and a.endpoints:
        p.error("--k8s and --endpoints are two sources of endpoints: give one")
    if a.k8s and a.identity_file:
        p.error("--identity-file is for agents on one host; with --k8s identities live in "
                "the API server")
    if a.identity_gc_interval <= 0 or a.identity_gc_grace < 0:
        p.error("--identity-gc-interval must be positive and --identity-gc-grace not negative")
    try:
        server_credentials(a.tls_cert, a.tls_key, a.tls_client_ca)
    except TLSConfigError as e:
        p.error(str(e))
    try:
        parse_visibility(a.l7_visibility)
    except VisibilityError as e:
        p.error(f"--l7-visibility: {e}")
    if not 64 <= a.l7_prefix <= 4096:
        p.error("--l7-prefix must be between 64 and 4096")
    if a.l7_perf_pages <= 0 or a.l7_perf_pages & (a.l7_perf_pages - 1):
        p.error("--l7-perf-pages must be a power of two")

    def names(text: str) -> frozenset[str]:
        return frozenset(n.strip() for n in text.split(",") if n.strip())
    redact = RedactSettings(
        headers_enabled=a.redact_enabled == "true", headers_allow=names(a.redact_http_headers_allow),
        headers_deny=names(a.redact_http_headers_deny), http_urlquery=a.redact_http_urlquery,
        query_params=names(a.redact_http_query_params),
        http_userinfo=a.redact_http_userinfo == "true")
    logging.basicConfig(level=a.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pyroute2").setLevel(logging.WARNING)  # it logs every netlink message
    return AgentConfig(
        listen_address=a.listen_address, unix_socket=a.unix_socket, node_name=a.node_name,
        ring_capacity=a.ring_capacity, endpoints_file=a.endpoints, netns=a.netns,
        node_ips=a.node_ip, peer_address=a.peer_address, identity_file=a.identity_file,
        report_interval=a.report_interval, perf_pages=a.perf_pages, policy_dir=a.policy_dir,
        policy_store=a.policy_store,
        allow_localhost=a.allow_localhost == "always", kernel_drops=not a.no_kernel_drops,
        drop_report_interval=a.drop_report_interval,
        ct_timeout_any=a.bpf_ct_timeout_regular_any,
        ct_timeout_syn=a.bpf_ct_timeout_regular_tcp_syn, l7_visibility=a.l7_visibility,
        l7_prefix=a.l7_prefix, l7_perf_pages=a.l7_perf_pages, redact=redact,
        l7_proxy=a.l7_proxy == "true", l7_proxy_port=a.l7_proxy_port,
        l7_proxy_idle_timeout=a.l7_proxy_idle_timeout,
        l7_proxy_upstream_ports=a.l7_proxy_upstream_ports, tofqdns_min_ttl=a.tofqdns_min_ttl,
        tofqdns_idle_connection_grace_period=a.tofqdns_idle_connection_grace_period,
        dnsproxy_concurrency_limit=a.dnsproxy_concurrency_limit,
        k8s=a.k8s, kubeconfig=a.kubeconfig, cluster_name=a.cluster_name,
        install_crds=not a.no_install_crds, identity_gc_interval=a.identity_gc_interval,
        identity_gc_grace=a.identity_gc_grace, tls_cert=a.tls_cert, tls_key=a.tls_key,
        tls_client_ca=a.tls_client_ca, batch_service=not a.disable_batch_service,
        persist=persist, event_loop=a.event_loop)


async def _run(cfg: AgentConfig) -> None:
    agent = Agent(cfg)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    tune_gc()
    try:
        await stop.wait()
    finally:
        await agent.stop()


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {n}")
    return n


def _port_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        got = (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port range LO-HI: {text!r}") from None
    if not 1 <= got[0] <= got[1] <= 65535:
        raise argparse.ArgumentTypeError(f"not a port range within 1-65535: {text!r}")
    return got


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    try:
        if cfg.event_loop == "uvloop":
            import uvloop

            uvloop.run(_run(cfg))
        else:
            asyncio.run(_run(cfg))
    except Exception as e:  # start-up errors: one clear line, non-zero exit
        logging.getLogger("webb-agent").error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    main()
