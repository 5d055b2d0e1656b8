"""source_fqdn / destination_fqdn (glob patterns, see patterns.py) and
dns_query (regular expressions searched in the DNS query, which carries its
trailing dot, e.g. "cilium.io.")."""
from __future__ import annotations

from webb.filters._common import FilterFunc, compile_go_regexp, values
from webb.filters.patterns import compile_fqdn_patterns


def _by_names(regex, attr: str) -> FilterFunc:
    fullmatch = regex.fullmatch

    def by_fqdn(flow) -> bool:
        for name in getattr(flow, attr):
            if fullmatch(name):
                return True
        return False

    return by_fqdn


def _by_dns_query(regexes: tuple) -> FilterFunc:
    def by_dns_query(flow) -> bool:
        l7 = flow.l7
        if not l7.HasField("dns"):
            return False
        query = l7.dns.query
        for r in regexes:
            if r.search(query):
                return True
        return False

    return by_dns_query


def build(ff) -> list[FilterFunc]:
    fs = []
    for field, attr in (("source_fqdn", "source_names"), ("destination_fqdn", "destination_names")):
        patterns = values(ff, field)
        if patterns:
            fs.append(_by_names(compile_fqdn_patterns(patterns, field), attr))
    queries = values(ff, "dns_query")
    if queries:
        fs.append(_by_dns_query(tuple(
            compile_go_regexp(q, "invalid dns_query filter") for q in queries)))
    return fs
