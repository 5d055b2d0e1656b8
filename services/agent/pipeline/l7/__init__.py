"""L7 visibility without a proxy: user-space parsers for payload prefixes.

The TC programs copy a bounded prefix of each selected packet's payload; the
agent hands those bytes to these pure functions. Nothing here does I/O, and
nothing raises on arbitrary input: what cannot be parsed comes back as
``None`` / an ``Unparsable`` result so the flow degrades to L3/L4.
"""
from __future__ import annotations

from .dns import DNSMessage, dns_record, dns_summary, parse_dns
from .http import (HTTPHeader, HTTPParseResult, HTTPRequest, HTTPResponse, Unparsable,
                   canonical_header_key, http_record, http_summary, parse_http)
from .redact import REDACTED, RedactSettings, redact_header_value, redact_url

__all__ = [
    "DNSMessage", "dns_record", "dns_summary", "parse_dns",
    "HTTPHeader", "HTTPParseResult", "HTTPRequest", "HTTPResponse", "Unparsable",
    "canonical_header_key", "http_record", "http_summary", "parse_http",
    "REDACTED", "RedactSettings", "redact_header_value", "redact_url",
]
