"""Hubble flow filter semantics (FlowFilter whitelists / blacklists).

    from webb.filters import build_filter, FilterError
    f = build_filter(whitelist, blacklist)   # Sequence[flow_pb2.FlowFilter]
    f(flow) -> bool

One module per filter kind (ip, k8s, labels, http, ...); they are combined
only in ``webb.filters.filters``.
"""
from webb.filters.errors import FilterError
from webb.filters.filters import build_filter, build_filter_list, build_flow_filter

__all__ = ["FilterError", "build_filter", "build_filter_list", "build_flow_filter"]
