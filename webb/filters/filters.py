"""The one place where per-field filters are combined (Hubble's filters.go).

- Inside one FlowFilter every set field must match (AND); inside one field
  the listed values are alternatives (OR).
- A list of FlowFilters matches when any of them does (OR).
- A flow passes when the whitelist is empty or matches, and no blacklist
  filter matches.
- A FlowFilter with no fields set matches every flow.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from webb.filters import (
    cluster_name,
    drop_reason,
    encrypted,
    event_type,
    flow_uuid,
    fqdn,
    http,
    identity,
    ip,
    ip_trace_id,
    ip_version,
    k8s,
    labels,
    network_interface,
    node_name,
    port,
    protocol,
    reply,
    tcp,
    trace_id,
    traffic_direction,
    verdict,
    workload,
)
from webb.filters._common import FilterFunc
from webb.filters.errors import FilterError

# (module, FlowFilter fields it handles), in Hubble's DefaultFilters order.
_FILTERS = (
    (flow_uuid, ("uuid",)),
    (event_type, ("event_type",)),
    (verdict, ("verdict",)),
    (drop_reason, ("drop_reason_desc",)),
    (reply, ("reply",)),
    (encrypted, ("encrypted",)),
    (identity, ("source_identity", "destination_identity")),
    (protocol, ("protocol",)),
    (ip, ("source_ip", "destination_ip", "source_ip_xlated")),
    (k8s, ("source_pod", "destination_pod", "source_service", "destination_service")),
    (workload, ("source_workload", "destination_workload")),
    (fqdn, ("source_fqdn", "destination_fqdn", "dns_query")),
    (labels, ("source_label", "destination_label", "node_labels")),
    (port, ("source_port", "destination_port")),
    (http, ("http_status_code", "http_method", "http_path", "http_url", "http_header")),
    (tcp, ("tcp_flags",)),
    (node_name, ("node_name",)),
    (cluster_name, ("source_cluster_name", "destination_cluster_name")),
    (ip_version, ("ip_version",)),
    (trace_id, ("trace_id",)),
    (traffic_direction, ("traffic_direction",)),
    (network_interface, ("interface",)),
    (ip_trace_id, ("ip_trace_id",)),
)
_HANDLED = frozenset(name for _, names in _FILTERS for name in names)


def _always(flow) -> bool:
    return True


def _all_of(fs: Sequence[FilterFunc]) -> FilterFunc:
    if not fs:
        return _always
    if len(fs) == 1:
        return fs[0]
    if len(fs) == 2:
        a, b = fs
        return lambda flow: a(flow) and b(flow)
    if len(fs) == 3:
        a, b, c = fs
        return lambda flow: a(flow) and b(flow) and c(flow)
    fs = tuple(fs)

    def all_match(flow) -> bool:
        for f in fs:
            if not f(flow):
                return False
        return True
    return all_match


def _any_of(fs: Sequence[FilterFunc]) -> FilterFunc:
    if len(fs) == 1:
        return fs[0]
    if len(fs) == 2:
        a, b = fs
        return lambda flow: a(flow) or b(flow)
    fs = tuple(fs)

    def any_match(flow) -> bool:
        for f in fs:
            if f(flow):
                return True
        return False
    return any_match


def _check_supported(ff: Any) -> None:
    for desc, value in ff.ListFields():
        if desc.name in _HANDLED:
            continue
        if desc.name == "experimental":
            if any(getattr(value, "cel_expression", ())):
                raise FilterError("CEL expression filters (experimental.cel_expression) "
                                  "are not supported")
            continue
        raise FilterError(f"filtering by {desc.name} is not supported")


def build_flow_filter(ff: Any) -> FilterFunc:
    """The predicate for a single FlowFilter (all set fields AND together)."""
    _check_supported(ff)
    fs: list[FilterFunc] = []
    for module, _ in _FILTERS:
        fs.extend(module.build(ff))
    return _all_of(fs)


def build_filter_list(filters: Optional[Iterable[Any]]) -> list[FilterFunc]:
    """One predicate per FlowFilter of ``filters``."""
    return [build_flow_filter(ff) for ff in (filters or ())]


def build_filter(whitelist: Optional[Iterable[Any]] = None,
                 blacklist: Optional[Iterable[Any]] = None) -> FilterFunc:
    """Compile Hubble whitelist/blacklist FlowFilters into ``f(flow) -> bool``.

    Raises FilterError on a malformed filter. The returned function does no
    parsing: everything is compiled here.
    """
    allow = build_filter_list(whitelist)
    deny = build_filter_list(blacklist)
    if not deny:
        return _any_of(allow) if allow else _always
    denied = _any_of(deny)
    if not allow:
        return lambda flow: not denied(flow)
    allowed = _any_of(allow)
    return lambda flow: allowed(flow) and not denied(flow)
