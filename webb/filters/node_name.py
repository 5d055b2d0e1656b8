"""node_name: ``[cluster/]node`` glob patterns (see patterns.py).

A flow node name without a cluster part is taken to be in cluster "default"
(Cilium's default cluster name). Flows without a node name never match.
"""
from __future__ import annotations

from webb.filters._common import FilterFunc, values
from webb.filters.patterns import compile_node_name_patterns

DEFAULT_CLUSTER = "default"


def build(ff) -> list[FilterFunc]:
    patterns = values(ff, "node_name")
    if not patterns:
        return []
    fullmatch = compile_node_name_patterns(patterns, "node_name").fullmatch
    prefix = DEFAULT_CLUSTER + "/"

    def by_node_name(flow) -> bool:
        name = flow.node_name
        if not name:
            return False
        if "/" not in name:
            name = prefix + name
        return fullmatch(name) is not None

    return [by_node_name]
