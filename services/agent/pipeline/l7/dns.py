"""DNS messages from UDP payloads (or TCP, with the 2-byte length prefix).

Fills flow.proto's DNS message: query (first question, with the trailing dot
Hubble shows: "cilium.io."), qtypes, and for responses rcode, ips (A/AAAA),
ttl (the smallest answer TTL), cnames and rrtypes (one per answer record).

Input is untrusted: compression pointers must point strictly backwards and
their number is capped, so no pointer chain can loop; a message cut off by the
capture prefix yields the answers read so far (``partial``), and anything that
is not a plausible DNS message yields None. Nothing here raises.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = ["DNSMessage", "parse_dns", "dns_record", "dns_summary", "qtype_name", "rcode_name"]

MAX_NAME_LEN = 255          # RFC 1035 wire limit
MAX_POINTERS = 32           # compression jumps per name
MAX_QUESTIONS = 8           # real resolvers send exactly one
MAX_ANSWERS = 256

_TYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
    28: "AAAA", 33: "SRV", 35: "NAPTR", 39: "DNAME", 41: "OPT", 43: "DS", 46: "RRSIG",
    47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 52: "TLSA", 64: "SVCB", 65: "HTTPS",
    99: "SPF", 252: "AXFR", 255: "ANY", 257: "CAA",
}

# gopacket's layers.DNSResponseCode strings, which Hubble's summaries print.
_RCODES = {
    0: "No Error", 1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain",
    4: "Not Implemented", 5: "Query Refused", 6: "YXDomain", 7: "YXRRSet", 8: "NXRRSet",
    9: "Not Authorized", 10: "NotZone",
}


def qtype_name(t: int) -> str:
    # RFC 3597 spelling for types without a mnemonic.
    return _TYPES.get(t, f"TYPE{t}")


def rcode_name(rcode: int) -> str:
    return _RCODES.get(rcode, f"RCODE{rcode}")


@dataclass(frozen=True)
class DNSMessage:
    id: int
    is_response: bool
    opcode: int
    rcode: int
    query: str                      # first question name, "cilium.io."
    qtypes: tuple[str, ...]
    ips: tuple[str, ...] = ()
    ttl: int = 0                    # minimum TTL over answers
    cnames: tuple[str, ...] = ()
    rrtypes: tuple[str, ...] = ()
    truncated: bool = False         # TC bit: the server truncated it
    partial: bool = False           # our capture cut it: answers may be missing

    @property
    def rcode_name(self) -> str:
        return rcode_name(self.rcode)


class _Short(Exception):
    """Input ended inside a field (capture prefix or garbage)."""


class _Bad(Exception):
    """Structurally invalid."""


def _u16(data: bytes, off: int) -> int:
    if off + 2 > len(data):
        raise _Short
    return (data[off] << 8) | data[off + 1]


def _label_text(label: bytes) -> str:
    # miekg/dns style: printable ASCII as is, '.' and '\' escaped, others \DDD.
    out = []
    for b in label:
        if b in (0x2e, 0x5c):
            out.append("\\" + chr(b))
        elif 0x21 <= b <= 0x7e:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


def _read_name(data: bytes, off: int) -> tuple[str, int]:
    """Name at ``off``; returns (text with trailing dot, offset after the name in place)."""
    labels: list[str] = []
    wire_len = 0
    end: int | None = None        # where the name ends in place (before the first jump)
    jumps = 0
    pos = off
    while True:
        if pos >= len(data):
            raise _Short
        n = data[pos]
        if n & 0xC0 == 0xC0:
            ptr = _u16(data, pos) & 0x3FFF
            if end is None:
                end = pos + 2
            jumps += 1
            # Strictly backwards: every jump lands before the previous one, so
            # a chain cannot revisit a byte; the cap bounds the work anyway.
            if ptr >= pos or jumps > MAX_POINTERS:
                raise _Bad
            pos = ptr
            continue
        if n & 0xC0:
            raise _Bad                               # 0x40/0x80: reserved label types
        if n == 0:
            if end is None:
                end = pos + 1
            break
        if pos + 1 + n > len(data):
            raise _Short
        wire_len += n + 1
        if wire_len > MAX_NAME_LEN:
            raise _Bad
        labels.append(_label_text(data[pos + 1: pos + 1 + n]))
        pos += 1 + n
    return ("".join(l + "." for l in labels) or "."), end


def _read_questions(data: bytes, off: int, count: int) -> tuple[str, list[str], int]:
    query, qtypes = "", []
    for i in range(count):
        name, off = _read_name(data, off)
        qtype = _u16(data, off)
        _u16(data, off + 2)                          # qclass: must be present
        off += 4
        if i == 0:
            query = name
        qtypes.append(qtype_name(qtype))
    return query, qtypes, off


@dataclass
class _Answers:
    ips: list[str]
    cnames: list[str]
    rrtypes: list[str]
    ttl: int | None = None
    partial: bool = False


def _read_answers(data: bytes, off: int, count: int) -> _Answers:
    ans = _Answers([], [], [])
    try:
        for _ in range(count):
            off = _read_rr(data, off, ans)
    except _Short:
        ans.partial = True                           # keep what came before the cut
    return ans


def _read_rr(data: bytes, off: int, ans: _Answers) -> int:
    _, off = _read_name(data, off)
    if off + 10 > len(data):
        raise _Short
    rtype, _rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, off)
    rdata_off = off + 10
    if rdata_off + rdlen > len(data):
        raise _Short
    rdata = data[rdata_off: rdata_off + rdlen]
    if rtype == 1 and rdlen == 4:
        ans.ips.append(str(ipaddress.IPv4Address(rdata)))
    elif rtype == 28 and rdlen == 16:
        ans.ips.append(str(ipaddress.IPv6Address(rdata)))
    elif rtype == 5:
        target, _ = _read_name(data, rdata_off)      # may point anywhere earlier
        ans.cnames.append(target)
    elif rtype in (1, 28):
        raise _Bad                                   # address of the wrong size
    ans.rrtypes.append(qtype_name(rtype))
    ans.ttl = ttl if ans.ttl is None else min(ans.ttl, ttl)
    return rdata_off + rdlen


def parse_dns(payload: bytes, *, tcp: bool = False) -> DNSMessage | None:
    """Parse one DNS message; None when it is not (plausibly) DNS. Never raises.

    With ``tcp`` the payload starts with RFC 1035's 2-byte length; only the
    first message of the segment is read.
    """
    try:
        data = bytes(payload)
        if tcp:
            if len(data) < 2:
                return None
            length = _u16(data, 0)
            data = data[2: 2 + length]
        return _parse(data)
    except (_Short, _Bad, ValueError, struct.error):
        return None
    except Exception:  # noqa: BLE001 - a parser bug must not take the agent down
        return None


def _parse(data: bytes) -> DNSMessage | None:
    if len(data) < 12:
        return None
    ident, flags, qd, an, _ns, _ar = struct.unpack_from("!6H", data, 0)
    is_response = bool(flags & 0x8000)
    opcode = (flags >> 11) & 0xF
    rcode = flags & 0xF
    # Plausibility, so random bytes on port 53 do not become DNS flows.
    if not 1 <= qd <= MAX_QUESTIONS or an > MAX_ANSWERS or opcode > 6:
        return None
    if not is_response and (an or rcode):
        return None
    query, qtypes, off = _read_questions(data, 12, qd)
    ans = _read_answers(data, off, an) if is_response else _Answers([], [], [])
    return DNSMessage(
        id=ident, is_response=is_response, opcode=opcode, rcode=rcode, query=query,
        qtypes=tuple(qtypes), ips=tuple(ans.ips), ttl=ans.ttl or 0, cnames=tuple(ans.cnames),
        rrtypes=tuple(ans.rrtypes), truncated=bool(flags & 0x0200), partial=ans.partial)


def dns_record(msg: DNSMessage, observation_source: str = "") -> dict:
    """flow.proto ``DNS`` as a JSON-style dict; requests carry only query fields, as Hubble's."""
    rec: dict = {"query": msg.query}
    if msg.is_response:
        if msg.ips:
            rec["ips"] = list(msg.ips)
        if msg.ttl:
            rec["ttl"] = msg.ttl
        if msg.cnames:
            rec["cnames"] = list(msg.cnames)
    if observation_source:
        rec["observation_source"] = observation_source
    if msg.is_response and msg.rcode:
        rec["rcode"] = msg.rcode
    if msg.qtypes:
        rec["qtypes"] = list(msg.qtypes)
    if msg.is_response and msg.rrtypes:
        rec["rrtypes"] = list(msg.rrtypes)
    return rec


def dns_summary(msg: DNSMessage) -> str:
    """Hubble's summaries: "DNS Query cilium.io. A" / "DNS Answer "1.2.3.4" TTL: 30 (Query cilium.io. A)"."""
    qt = ",".join(msg.qtypes)
    if not msg.is_response:
        return f"DNS Query {msg.query} {qt}"
    if msg.rcode:
        answer = f"RCode: {msg.rcode_name}"
    else:
        parts = []
        if msg.ips:
            parts.append('"' + ",".join(msg.ips) + '"')
        if msg.cnames:
            parts.append('CNAMEs: "' + ",".join(msg.cnames) + '"')
        answer = " ".join(parts)
    return f"DNS Answer {answer} TTL: {msg.ttl} (Query {msg.query} {qt})"
