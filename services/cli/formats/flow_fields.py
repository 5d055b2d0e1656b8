"""The pieces of a flow every human format shows, worded as Hubble's printer words them:
"ns/pod:port" hosts, "(ID:1234)" identities, the TYPE ("to-endpoint", "Policy denied",
"http-request", "policy-verdict:L3-L4 INGRESS"), the VERDICT and the SUMMARY."""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb

from .. import datapath_names as names
from .color import Colorer

_CONTROL = {c: f"^{chr(c + 64)}" for c in range(0x20) if c not in (0x09,)}
_CONTROL[0x7F] = "^?"
_CONTROL.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})  # C1 controls (8-bit CSI, ...)


def safe(text: str) -> str:
    """Flow contents cannot move the cursor or change colors of the terminal."""
    return text.translate(_CONTROL) if text else text


def join_host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ports(f: fpb.Flow) -> tuple[str, str]:
    l4 = f.l4
    kind = l4.WhichOneof("protocol") if f.HasField("l4") else None
    if kind in ("TCP", "UDP", "SCTP"):
        p = getattr(l4, kind)
        return str(p.source_port), str(p.destination_port)
    return "", ""


def _path_join(ns: str, name: str) -> str:
    return "/".join(x for x in (ns, name) if x)


def hostname(c: Colorer, ip: str, port: str, ns: str, pod: str, svc: str,
             dns_names: list[str], translate: bool) -> str:
    host = ip
    if translate:
        if pod:
            host = _path_join(ns, pod)
        elif svc:
            host = _path_join(ns, svc)
        elif dns_names:
            host = ",".join(dns_names)
    host = safe(host)
    if port and port != "0":
        return join_host_port(host, c.port(port))
    return host


def host_names(f: fpb.Flow, c: Colorer, translate: bool = True) -> tuple[str, str]:
    if not f.HasField("IP"):
        if f.HasField("ethernet"):
            return c.host(safe(f.ethernet.source)), c.host(safe(f.ethernet.destination))
        return "", ""
    src_ns, src_pod = f.source.namespace, f.source.pod_name
    dst_ns, dst_pod = f.destination.namespace, f.destination.pod_name
    src_svc = dst_svc = ""
    if f.HasField("source_service"):
        src_ns, src_svc = f.source_service.namespace, f.source_service.name
    if f.HasField("destination_service"):
        dst_ns, dst_svc = f.destination_service.namespace, f.destination_service.name
    sport, dport = ports(f)
    src = hostname(c, f.IP.source, sport, src_ns, src_pod, src_svc, list(f.source_names), translate)
    dst = hostname(c, f.IP.destination, dport, dst_ns, dst_pod, dst_svc,
                   list(f.destination_names), translate)
    return c.host(src), c.host(dst)


def identity(c: Colorer, ident: int) -> str:
    if ident in names.RESERVED_IDENTITY_NAMES:
        return c.identity(f"({names.RESERVED_IDENTITY_NAMES[ident]})")
    return c.identity(f"(ID:{ident})")


def enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


_SOCK_XLATE = {1: "pre-xlate-fwd", 2: "post-xlate-fwd", 3: "pre-xlate-rev", 4: "post-xlate-rev"}


def flow_type(f: fpb.Flow) -> str:
    if f.HasField("l7"):
        l7 = f.l7
        proto, kind = "l7", enum_name(fpb.L7FlowType, l7.type).lower()
        record = l7.WhichOneof("record")
        if record == "http":
            proto = "http"
        elif record == "dns":
            proto = "dns"
            kind += " " + l7.dns.observation_source
        elif record == "kafka":
            proto = "kafka"
        return safe(f"{proto}-{kind}")
    et = f.event_type
    if et.type == names.TRACE:
        return names.observation_point(et.sub_type)
    if et.type == names.DROP:
        return names.drop_reason(et.sub_type)
    if et.type == names.POLICY_VERDICT:
        return (f"policy-verdict:{names.policy_match_type(f.policy_match_type)} "
                f"{enum_name(fpb.TrafficDirection, f.traffic_direction)}")
    if et.type == names.CAPTURE:
        return enum_name(fpb.DebugCapturePoint, f.debug_capture_point)
    if et.type == names.TRACE_SOCK:
        return _SOCK_XLATE.get(f.sock_xlate_point,
                               enum_name(fpb.SocketTranslationPoint, f.sock_xlate_point))
    return "UNKNOWN"


def _policy_names(f: fpb.Flow) -> str:
    """" BY a (Kind), b (Kind)": the policies behind a policy verdict."""
    if f.event_type.type != names.POLICY_VERDICT:
        return ""
    allowed = f.verdict in (fpb.FORWARDED, fpb.REDIRECTED)
    egress = f.traffic_direction == fpb.EGRESS
    if allowed:
        policies = f.egress_allowed_by if egress else f.ingress_allowed_by
    else:
        policies = f.egress_denied_by if egress else f.ingress_denied_by
    if not policies:
        return ""
    return " BY " + ", ".join(safe(f"{p.name} ({p.kind})") for p in policies)


def verdict(f: fpb.Flow, c: Colorer, policy_names: bool = False) -> str:
    v = f.verdict
    msg = enum_name(fpb.Verdict, v)
    pv = f.event_type.type == names.POLICY_VERDICT
    by = _policy_names(f) if policy_names else ""
    if v in (fpb.FORWARDED, fpb.REDIRECTED):
        return c.forwarded(("ALLOWED" if pv else msg) + by)
    if v in (fpb.DROPPED, fpb.ERROR):
        return c.dropped(("DENIED" if pv else msg) + by)
    if v == fpb.AUDIT:
        return c.audit(("AUDITED" if pv else msg) + by)
    if v in (fpb.TRACED, fpb.TRANSLATED):
        return c.audit(msg)
    return msg


def summary(f: fpb.Flow, c: Colorer) -> str:
    out = ""
    if f.HasField("ip_trace_id") and f.ip_trace_id.trace_id > 0:
        out += f"IP Trace ID: {f.ip_trace_id.trace_id}; "
    out += safe(f.Summary)
    auth = f.auth_type
    if auth != fpb.DISABLED:
        name = enum_name(fpb.AuthType, auth)
        out += "; " + (c.auth_failed(name) if auth == fpb.TEST_ALWAYS_FAIL else c.auth_enabled(name))
    return out
