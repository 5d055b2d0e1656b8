"""Names from Cilium's monitor API that Hubble and `cilium monitor` print and parse:
event (message) types, trace observation points, drop reasons, policy match types,
reserved identities (ICMP names are in webb.icmp)."""
from __future__ import annotations

# Message types (event_type.type of a flow).
DROP, DEBUG, CAPTURE, TRACE, POLICY_VERDICT, RECORDER, TRACE_SOCK = 1, 2, 3, 4, 5, 6, 7
ACCESS_LOG, AGENT = 129, 130

MESSAGE_TYPE_NAMES = {
    "drop": DROP, "debug": DEBUG, "capture": CAPTURE, "trace": TRACE,
    "policy-verdict": POLICY_VERDICT, "recorder": RECORDER, "trace-sock": TRACE_SOCK,
    "l7": ACCESS_LOG, "agent": AGENT,
}
# What `observe --type` offers (agent, debug and recorder have their own commands upstream).
FLOW_EVENT_TYPES = ["capture", "drop", "l7", "policy-verdict", "trace", "trace-sock"]

# Trace observation points (event_type.sub_type of trace events).
TRACE_OBSERVATION_POINTS = {
    0: "to-endpoint", 1: "to-proxy", 2: "to-host", 3: "to-stack", 4: "to-overlay",
    5: "from-endpoint", 6: "from-proxy", 7: "from-host", 8: "from-stack", 9: "from-overlay",
    10: "from-network", 11: "to-network", 12: "from-crypto", 13: "to-crypto",
}
TRACE_SUBTYPE_HELP_ORDER = [5, 7, 10, 9, 6, 8, 12, 0, 2, 11, 4, 1, 3, 13]

AGENT_EVENT_SUBTYPES = {
    "unspecified": 0, "message": 1, "agent-started": 2, "policy-updated": 5,
    "policy-deleted": 6, "endpoint-regenerate-success": 3, "endpoint-regenerate-failure": 4,
    "endpoint-created": 7, "endpoint-deleted": 8, "ipcache-upserted": 9, "ipcache-deleted": 10,
}

DROP_REASONS = {
    0: "Success", 2: "Invalid packet", 3: "Interface", 4: "Interface Decrypted",
    5: "LB, sock cgroup: No backend slot entry found", 6: "LB, sock cgroup: No backend entry found",
    7: "LB, sock cgroup: Reverse entry update failed", 8: "LB, sock cgroup: Reverse entry stale",
    9: "Fragmented packet", 10: "Fragmented packet entry update failed",
    130: "Invalid source mac", 131: "Invalid destination mac", 132: "Invalid source ip",
    133: "Policy denied", 134: "Invalid packet", 135: "CT: Truncated or invalid header",
    136: "CT: Missing TCP ACK flag", 137: "CT: Unknown L4 protocol",
    138: "CT: Can't create entry from packet", 139: "Unsupported L3 protocol",
    140: "Missed tail call", 141: "Error writing to packet", 142: "Unknown L4 protocol",
    143: "Unknown ICMPv4 code", 144: "Unknown ICMPv4 type", 145: "Unknown ICMPv6 code",
    146: "Unknown ICMPv6 type", 147: "Error retrieving tunnel key",
    148: "Error retrieving tunnel options", 149: "Invalid Geneve option",
    150: "Unknown L3 target address", 151: "Stale or unroutable IP",
    152: "No matching local container found", 153: "Error while correcting L3 checksum",
    154: "Error while correcting L4 checksum", 155: "CT: Map insertion failed",
    156: "Invalid IPv6 extension header", 157: "IP fragmentation not supported",
    158: "Service backend not found", 160: "No tunnel/encapsulation endpoint (datapath BUG!)",
    161: "Failed to insert into proxymap", 162: "Reached EDT rate-limiting drop horizon",
    163: "Unknown connection tracking state", 164: "Local host is unreachable",
    165: "No configuration available to perform policy decision", 166: "Unsupported L2 protocol",
    167: "No mapping for NAT masquerade", 168: "Unsupported protocol for NAT masquerade",
    169: "FIB lookup failed", 170: "Encapsulation traffic is prohibited", 171: "Invalid identity",
    172: "Unknown sender", 173: "NAT not needed", 174: "Is a ClusterIP",
    175: "First logical datagram fragment not found", 176: "Forbidden ICMPv6 message",
    177: "Denied by LB src range check", 178: "Socket lookup failed", 179: "Socket assign failed",
    180: "Proxy redirection not supported for protocol", 181: "Policy denied by denylist",
    182: "VLAN traffic disallowed by VLAN filter", 183: "Incorrect VNI from VTEP",
    184: "Failed to update or lookup TC buffer", 185: "No SID was found for the IP address",
    186: "SRv6 state was removed during tail call",
    187: "L3 translation from IPv4 to IPv6 failed (NAT46)",
    188: "L3 translation from IPv6 to IPv4 failed (NAT64)", 189: "Authentication required",
    190: "No conntrack map found", 191: "No nat map found", 192: "Invalid ClusterID",
    193: "Unsupported packet protocol for DSR encapsulation", 194: "No egress gateway found",
    195: "Traffic is unencrypted", 196: "TTL exceeded", 197: "No node ID found",
    198: "Rate limited", 199: "IGMP handled", 200: "IGMP subscribed", 201: "Multicast handled",
    202: "Host datapath not ready", 203: "Endpoint policy program not available",
    204: "No Egress IP configured", 205: "Punt to proxy",
}

POLICY_MATCH_TYPES = {0: "none", 1: "L3-Only", 2: "L3-L4", 3: "L4-Only", 4: "all"}

# Reserved security identities, Cilium's numbers.
RESERVED_IDENTITIES = {
    "host": 1, "world": 2, "unmanaged": 3, "health": 4, "init": 5, "remote-node": 6,
    "kube-apiserver": 7, "ingress": 8, "world-ipv4": 9, "world-ipv6": 10,
}
RESERVED_IDENTITY_NAMES = {0: "unknown", **{v: k for k, v in RESERVED_IDENTITIES.items()}}


def observation_point(sub_type: int) -> str:
    sub = sub_type & 0xFF
    return TRACE_OBSERVATION_POINTS.get(sub, str(sub))


def drop_reason(code: int, ext_error: int = 0) -> str:
    code &= 0xFF
    name = DROP_REASONS.get(code)
    if name is None:
        return f"{code}, {ext_error}" if ext_error else str(code)
    return f"{name}, {ext_error}" if ext_error else name


def policy_match_type(value: int) -> str:
    return POLICY_MATCH_TYPES.get(value, "unknown")


def identity_name(identity: int) -> str:
    """NumericIdentity.String(): the reserved name, else the number."""
    return RESERVED_IDENTITY_NAMES.get(identity, str(identity))


def parse_identity(text: str) -> int:
    """A numeric identity or a reserved identity name ("world")."""
    if text in RESERVED_IDENTITIES:
        return RESERVED_IDENTITIES[text]
    if text.isdigit():
        value = int(text)
        if value < 2**32:
            return value
    raise ValueError(f"invalid security identity, expected one of "
                     f"[{' '.join(RESERVED_IDENTITIES)}] or a numeric value")
