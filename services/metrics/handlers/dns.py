"""dns: DNS queries, responses and response record types.

  hubble_dns_queries_total{rcode,qtypes,ips_returned[,query]}
  hubble_dns_responses_total{rcode,qtypes,ips_returned[,query]}
  hubble_dns_response_types_total{type,qtypes[,query]}

Options: query (add the queried name as label 'query'), ignoreAAAA (skip
AAAA-only queries and their responses). A query dropped by policy is counted as a
query with rcode "Policy denied".
"""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb

from ..api import NAMESPACE, Handler
from ..series import SeriesStore

# RFC 6895 names as Hubble prints them.
RCODES = {
    0: "No Error", 1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain",
    4: "Not Implemented", 5: "Query Refused", 6: "Name Exists when it should not",
    7: "RR Set Exists when it should not", 8: "RR Set that should exist does not",
    9: "Not Authorized", 10: "Name not contained in zone", 11: "DSO-TYPE Not Implemented",
    16: "Bad OPT Version", 17: "Key not recognized", 18: "Signature out of time window",
    19: "Bad TKEY Mode", 20: "Duplicate key name", 21: "Algorithm not supported",
    22: "Bad Truncation", 23: "Bad/missing Server Cookie",
}
POLICY_DENIED = "Policy denied"


class DNSHandler(Handler):
    name = "dns"
    handler_options = {"query": "add the query name as label 'query'",
                       "ignoreaaaa": "ignore AAAA-only requests and responses"}

    def init(self, store: SeriesStore) -> None:
        self.include_query = self.flag("query")
        self.ignore_aaaa = self.flag("ignoreaaaa")
        ctx = self.context.label_names()
        query = ["query"] if self.include_query else []
        self.queries = store.counter(f"{NAMESPACE}_dns_queries_total", "Number of DNS queries observed",
                                     [*ctx, "rcode", "qtypes", "ips_returned", *query])
        self.responses = store.counter(f"{NAMESPACE}_dns_responses_total",
                                       "Number of DNS responses observed",
                                       [*ctx, "rcode", "qtypes", "ips_returned", *query])
        self.response_types = store.counter(f"{NAMESPACE}_dns_response_types_total",
                                            "Number of DNS response types",
                                            [*ctx, "type", "qtypes", *query])
        self.vecs += [self.queries, self.responses, self.response_types]

    def status(self) -> str:
        flags = [n for n, on in (("query", self.include_query), ("ignoreAAAA", self.ignore_aaaa)) if on]
        return ",".join(flags + [self.context.status()])

    def process(self, flow: fpb.Flow) -> None:
        if not flow.HasField("l7") or flow.l7.WhichOneof("record") != "dns":
            return
        dns = flow.l7.dns
        qtypes_list = list(dns.qtypes)
        if self.ignore_aaaa and qtypes_list == ["AAAA"]:
            return
        ctx, bound = self.context.values(flow)
        qtypes = ",".join(qtypes_list)
        ips = str(len(dns.ips))
        query = (dns.query,) if self.include_query else ()
        if flow.verdict == fpb.DROPPED:
            self.queries.inc((*ctx, POLICY_DENIED, qtypes, ips, *query), bound)
        elif not flow.is_reply.value:
            self.queries.inc((*ctx, "", qtypes, ips, *query), bound)
        else:
            rcode = RCODES.get(dns.rcode, "")
            self.responses.inc((*ctx, rcode, qtypes, ips, *query), bound)
            for rrtype in dns.rrtypes:
                self.response_types.inc((*ctx, rrtype, qtypes, *query), bound)
