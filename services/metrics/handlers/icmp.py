"""icmp: hubble_icmp_total{family,type} -- ICMP messages by family and type(code)."""
from __future__ import annotations

from webb.api.flow import flow_pb2 as fpb

from ..api import NAMESPACE, Handler
from ..series import SeriesStore

# Names and codes as gopacket spells them (Hubble renders types with gopacket).
_ICMP4 = {
    0: ("EchoReply", None),
    3: ("DestinationUnreachable", {0: "Net", 1: "Host", 2: "Protocol", 3: "Port",
                                   4: "FragmentationNeeded", 5: "SourceRoutingFailed",
                                   6: "NetUnknown", 7: "HostUnknown", 8: "SourceIsolated",
                                   9: "NetAdminProhibited", 10: "HostAdminProhibited",
                                   11: "NetTOS", 12: "HostTOS", 13: "CommAdminProhibited",
                                   14: "HostPrecedence", 15: "PrecedenceCutoff"}),
    4: ("SourceQuench", None),
    5: ("Redirect", {0: "Net", 1: "Host", 2: "TOS+Net", 3: "TOS+Host"}),
    8: ("EchoRequest", None),
    9: ("RouterAdvertisement", None),
    10: ("RouterSolicitation", None),
    11: ("TimeExceeded", {0: "TTLExceeded", 1: "FragmentReassemblyTimeExceeded"}),
    12: ("ParameterProblem", {0: "PointerIndicatesError", 1: "MissingOption", 2: "BadLength"}),
    13: ("TimestampRequest", None),
    14: ("TimestampReply", None),
    15: ("InfoRequest", None),
    16: ("InfoReply", None),
    17: ("AddressMaskRequest", None),
    18: ("AddressMaskReply", None),
}
_ICMP6 = {
    1: ("DestinationUnreachable", {0: "NoRouteToDst", 1: "AdminProhibited", 2: "BeyondScopeOfSrc",
                                   3: "AddressUnreachable", 4: "PortUnreachable",
                                   5: "SrcAddressFailedPolicy", 6: "RejectRouteToDst"}),
    2: ("PacketTooBig", None),
    3: ("TimeExceeded", {0: "HopLimitExceeded", 1: "FragmentReassemblyTimeExceeded"}),
    4: ("ParameterProblem", {0: "ErroneousHeaderField", 1: "UnrecognizedNextHeader",
                             2: "UnrecognizedNextHeader"}),
    128: ("EchoRequest", None),
    129: ("EchoReply", None),
    133: ("RouterSolicitation", None),
    134: ("RouterAdvertisement", None),
    135: ("NeighborSolicitation", None),
    136: ("NeighborAdvertisement", None),
    137: ("Redirect", None),
}


def type_code_name(table: dict, typ: int, code: int) -> str:
    info = table.get(typ)
    if info is None:
        return f"{typ}({code})"
    name, codes = info
    if codes is None:
        return name if code == 0 else f"{name}(Code: {code})"
    code_name = codes.get(code)
    return f"{name}({code_name})" if code_name else f"{name}(Code: {code})"


class ICMPHandler(Handler):
    name = "icmp"

    def init(self, store: SeriesStore) -> None:
        self.icmp = store.counter(f"{NAMESPACE}_icmp_total", "Number of ICMP messages",
                                  ["family", "type", *self.context.label_names()])
        self.vecs.append(self.icmp)

    def process(self, flow: fpb.Flow) -> None:
        which = flow.l4.WhichOneof("protocol") if flow.HasField("l4") else None
        if which == "ICMPv4":
            m = flow.l4.ICMPv4
            family, name = "IPv4", type_code_name(_ICMP4, m.type, m.code)
        elif which == "ICMPv6":
            # Hubble labelled these IPv4 until cilium/cilium#41427 fixed it.
            m = flow.l4.ICMPv6
            family, name = "IPv6", type_code_name(_ICMP6, m.type, m.code)
        else:
            return
        ctx, bound = self.context.values(flow)
        self.icmp.inc((family, name, *ctx), bound)
