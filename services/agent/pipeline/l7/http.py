"""HTTP/1.x request/response heads from a bounded payload prefix.

The datapath copies only the first N bytes of a segment, so the parser must
decide from a prefix: a head whose start line is complete is reported, with
``headers_complete`` telling whether the blank line was seen. Anything that is
not plainly HTTP/1.x (TLS, the HTTP/2 preface, binary, a start line cut off by
the prefix) yields an ``Unparsable`` with a reason the agent counts, so the
packet degrades to an L3/L4 flow instead of a wrong L7 one.

Output follows flow.proto's HTTP message: method, url
(``http://host/path?query``), protocol ("HTTP/1.1"), code, and headers as
{key, value} with Go's canonical key spelling, sorted by key like Hubble.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import NamedTuple, Union

from .redact import RedactSettings, redact_header_value, redact_url

__all__ = ["HTTPHeader", "HTTPRequest", "HTTPResponse", "Unparsable", "HTTPParseResult",
           "parse_http", "canonical_header_key", "http_record", "http_summary",
           "MAX_MESSAGES", "MAX_HEADERS"]

# Bounds so a hostile payload cannot make one call expensive.
MAX_MESSAGES = 32          # pipelined heads reported per payload
MAX_HEADERS = 100          # header lines per head (Go's default limit is by bytes; this is simpler)
MAX_START_LINE = 8192

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_METHOD = re.compile(rb"[A-Z][A-Z_\-]{0,31}")
_VERSION = re.compile(rb"HTTP/1\.[01]")
_TARGET = re.compile(rb"[\x21-\x7e]+")          # visible ASCII, no spaces
_STATUS = re.compile(rb"(HTTP/1\.[01]) ([1-9][0-9]{2})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but HT: not in a value
# A whole block of well-formed CRLF header lines (token ":" value without control
# characters but HT), checked in one match instead of line by line.
_HEADER_BLOCK = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
# Start lines that the general parser would accept, CRLF-ended (the fast path, see
# _parse_fast): each group is exactly what it reads from the line. A method and a
# target hold no space, CR or LF, so the first LF is the one matched here and the
# line splits into these three parts and no other; a method cannot start "HTTP/".
_REQUEST_LINE = re.compile(rb"([A-Z][A-Z_\-]{0,31}) ([\x21-\x7e]+) (HTTP/1\.[01])\r\n")
_STATUS_LINE = re.compile(rb"(HTTP/1\.[01]) ([1-9][0-9]{2})(?: ([\t\x20-\x7e\x80-\xff]*))?\r\n")


@dataclass(slots=True, unsafe_hash=True)  # frozen's __init__ costs 3x (one per flow field)
class HTTPHeader:
    key: str
    value: str


@dataclass(slots=True, unsafe_hash=True)  # frozen's __init__ costs 3x (one per flow field)
class HTTPRequest:
    method: str
    target: str                       # request-target as sent
    protocol: str                     # "HTTP/1.1" / "HTTP/1.0"
    headers: tuple[HTTPHeader, ...]   # wire order, canonical keys
    url: str                          # http://host/path?query (unredacted)
    headers_complete: bool
    length: int                       # bytes of head (+ body when known) consumed

    def header(self, key: str) -> str | None:
        return _first(self.headers, key)


@dataclass(slots=True, unsafe_hash=True)  # frozen's __init__ costs 3x (one per flow field)
class HTTPResponse:
    protocol: str
    code: int
    reason: str
    headers: tuple[HTTPHeader, ...]
    headers_complete: bool
    length: int

    def header(self, key: str) -> str | None:
        return _first(self.headers, key)


@dataclass(frozen=True)
class Unparsable:
    """Why a payload (or the rest of it) is not HTTP/1.x.

    reason: "empty", "tls", "http2", "binary", "truncated" (start line beyond the
    prefix), "malformed" (text but not an HTTP/1.x head).
    """
    reason: str
    offset: int = 0


HTTPMessage = Union[HTTPRequest, HTTPResponse]


class HTTPParseResult(NamedTuple):  # one per captured head: a frozen dataclass costs 1 us
    messages: tuple[HTTPMessage, ...] = ()
    # Set when parsing stopped on something that is not HTTP (at ``offset``);
    # None when the payload was consumed or the rest is an unknown-length body.
    unparsable: Unparsable | None = None

    @property
    def ok(self) -> bool:
        return bool(self.messages)


def _first(headers: tuple[HTTPHeader, ...], key: str) -> str | None:
    k = key.lower()
    for h in headers:
        if h.key.lower() == k:
            return h.value
    return None


def _canonical_value(headers: list[HTTPHeader], canon: str) -> str | None:
    """_first for a key in Go's canonical spelling, within parsed headers: their keys
    are ASCII tokens, all in canonical spelling, so an exact compare finds the same."""
    for h in headers:
        if h.key == canon:
            return h.value
    return None


_CANONICAL: dict[str, str] = {}  # header names repeat: each is spelled out once
_CANONICAL_MAX = 4096


def canonical_header_key(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey: "content-type" -> "Content-Type".

    Hubble's header keys come from Go's http.Header, so this spelling is what
    its JSON shows. Keys with characters outside a token are left as they are,
    as Go does.
    """
    got = _CANONICAL.get(name)
    if got is not None:
        return got
    if not name or _TOKEN.fullmatch(name.encode("latin-1", "replace")) is None:
        return name
    out, upper = [], True
    for c in name:
        out.append(c.upper() if upper else c.lower())
        upper = c == "-"
    canon = "".join(out)
    if len(_CANONICAL) < _CANONICAL_MAX:
        _CANONICAL[name] = canon
    return canon


def _classify_garbage(data: bytes) -> str:
    """Reason for a payload that did not start with an HTTP/1.x start line."""
    if len(data) >= 3 and data[0] in (0x14, 0x15, 0x16, 0x17) and data[1] == 0x03 and data[2] <= 0x04:
        return "tls"                               # TLS record header
    if _H2_PREFACE.startswith(data[: len(_H2_PREFACE)]) and data[:3] == b"PRI":
        return "http2"
    head = data[:64]
    if any(b < 0x09 or 0x0d < b < 0x20 or b >= 0x7f for b in head):
        return "binary"
    return "malformed"


def _split_line(data: bytes, start: int, limit: int) -> tuple[bytes, int] | None:
    """One line starting at ``start`` (LF or CRLF ended) and the next offset, or None."""
    end = data.find(b"\n", start, min(len(data), start + limit + 1))
    if end < 0:
        return None
    line = data[start:end]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line, end + 1


def _parse_headers(data: bytes, pos: int) -> tuple[list[HTTPHeader], int, bool] | None:
    """Header lines from ``pos``; (headers, next offset, complete) or None if malformed."""
    got = _header_block(data, pos)
    if got is not None:
        return got[0], got[1], True
    return _parse_header_lines(data, pos)


# Header lines repeat from message to message (a client sends the same Host, User-Agent,
# Accept on each request): each distinct short line is decoded once. HTTPHeader objects
# are shared between messages and never changed.
_HEADER_LINES: dict[bytes, HTTPHeader] = {}
_HEADER_LINES_MAX = 4096
_HEADER_LINE_CACHED = 256  # longer lines (cookies, tokens) are rarely repeated: not kept


def _header_block(data: bytes, pos: int) -> tuple[list[HTTPHeader], int] | None:
    """The common case in one pass: a complete head of well-formed CRLF lines from
    ``pos`` within the prefix, as (headers, offset after the blank line); None for
    anything else (_parse_header_lines rejects it or reads it the same way)."""
    end = data.find(b"\r\n\r\n", pos - 2 if pos >= 2 else 0)
    if end < pos - 2 or end + 2 - pos > MAX_START_LINE:
        return None
    block = data[pos:end + 2]  # the header lines, each with its CRLF
    if _HEADER_BLOCK.fullmatch(block) is None or block.count(b"\n") != block.count(b"\r"):
        return None
    lines = block.split(b"\r\n")
    lines.pop()  # after the last CRLF
    if len(lines) > MAX_HEADERS:
        return None
    out = []
    known = _HEADER_LINES.get
    for line in lines:
        h = known(line)
        if h is None:
            h = _header_line(line)
        out.append(h)
    return out, end + 4


def _header_line(line: bytes) -> HTTPHeader:
    """A well-formed header line (token ":" value) not in _HEADER_LINES: decoded, and
    kept there if short."""
    name, _, value = line.partition(b":")
    key = name.decode("ascii")
    h = HTTPHeader(_CANONICAL.get(key) or canonical_header_key(key),
                   value.strip(b" \t").decode("latin-1"))
    if len(line) <= _HEADER_LINE_CACHED:
        if len(_HEADER_LINES) >= _HEADER_LINES_MAX:
            _HEADER_LINES.clear()  # bounded; the lines in use come back at once
        _HEADER_LINES[line] = h
    return h


def _parse_header_lines(data: bytes, pos: int) -> tuple[list[HTTPHeader], int, bool] | None:
    """_parse_headers line by line: LF-only lines, a head cut by the prefix, anything
    the one-pass check did not accept (which this rejects or reads the same way)."""
    headers: list[HTTPHeader] = []
    while len(headers) <= MAX_HEADERS:
        got = _split_line(data, pos, MAX_START_LINE)
        if got is None:
            return headers, len(data), False       # head continues beyond the prefix
        line, nxt = got
        if not line:
            return headers, nxt, True
        if line[0] in (0x20, 0x09):
            # obs-fold is forbidden by RFC 9112; Go rejects it, and so do we.
            return None
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            return None
        if _CTL.search(value) is not None:
            return None
        headers.append(HTTPHeader(canonical_header_key(name.decode("ascii")),
                                  value.strip(b" \t").decode("latin-1")))
        pos = nxt
    return None                                     # too many headers: not trusted


def _body_length(headers: list[HTTPHeader], *, request: bool, code: int = 0) -> int | None:
    """Body length where it is known from the head; None if it is not (chunked, to-close)."""
    if not request and (100 <= code < 200 or code in (204, 304)):
        return 0
    te = _canonical_value(headers, "Transfer-Encoding")
    if te is not None:
        return None
    cl = _canonical_value(headers, "Content-Length")
    if cl is None:
        return 0 if request else None
    # HTTP's blanks and ASCII digits only (values are Latin-1 text): str.strip() and
    # isdigit() also take NBSP/NEL for blanks and '²' for a digit (int() then raises).
    cl = cl.strip(" \t")
    return int(cl) if cl.isascii() and cl.isdigit() and len(cl) <= 15 else None


def _build_url(target: str, host: str | None, default_host: str | None) -> str:
    if "://" in target and not target.startswith("/"):
        return target                               # absolute-form (proxy request)
    h = host if host else (default_host or "")
    if target == "*" or not target.startswith("/"):
        return f"http://{h}" if target != "*" else f"http://{h}*"
    return f"http://{h}{target}"


def _parse_one(data: bytes, pos: int, default_host: str | None) -> HTTPMessage | Unparsable:
    got = _split_line(data, pos, MAX_START_LINE)
    if got is None:
        rest = data[pos:]
        reason = _classify_garbage(rest)
        # A text prefix that could still become a start line is a truncation.
        if reason == "malformed" and len(rest) <= MAX_START_LINE and _looks_like_start(rest):
            reason = "truncated"
        return Unparsable(reason, pos)
    line, nxt = got
    if line.startswith(b"HTTP/"):
        return _parse_response(data, line, nxt, pos)
    return _parse_request(data, line, nxt, pos, default_host)


def _looks_like_start(rest: bytes) -> bool:
    first = rest.split(b" ", 1)[0]
    return bool(first) and (_METHOD.fullmatch(first) is not None or b"HTTP/".startswith(first[:5])
                            or first.startswith(b"HTTP/"))


def _parse_request(data: bytes, line: bytes, nxt: int, pos: int,
                   default_host: str | None) -> HTTPMessage | Unparsable:
    parts = line.split(b" ")
    if len(parts) != 3 or _METHOD.fullmatch(parts[0]) is None or _TARGET.fullmatch(parts[1]) is None:
        return Unparsable(_classify_garbage(data[pos:]), pos)
    if _VERSION.fullmatch(parts[2]) is None:
        return Unparsable("http2" if parts[2] == b"HTTP/2.0" else "malformed", pos)
    parsed = _parse_headers(data, nxt)
    if parsed is None:
        return Unparsable("malformed", pos)
    headers, end, complete = parsed
    method, target = parts[0].decode("ascii"), parts[1].decode("ascii")
    url = _build_url(target, _canonical_value(headers, "Host"), default_host)
    body = _body_length(headers, request=True) if complete else None
    length = end - pos + body if body is not None else len(data) - pos
    return HTTPRequest(method, target, parts[2].decode("ascii"), tuple(headers), url,
                       complete, length)


def _parse_response(data: bytes, line: bytes, nxt: int, pos: int) -> HTTPMessage | Unparsable:
    m = _STATUS.fullmatch(line)
    if m is None:
        return Unparsable("http2" if line.startswith(b"HTTP/2") else "malformed", pos)
    parsed = _parse_headers(data, nxt)
    if parsed is None:
        return Unparsable("malformed", pos)
    headers, end, complete = parsed
    code = int(m.group(2))
    body = _body_length(headers, request=False, code=code) if complete else None
    length = end - pos + body if body is not None else len(data) - pos
    return HTTPResponse(m.group(1).decode("ascii"), code, (m.group(3) or b"").decode("latin-1"),
                        tuple(headers), complete, length)


def parse_http(payload: bytes, *, default_host: str | None = None) -> HTTPParseResult:
    """Parse the HTTP/1.x heads in ``payload`` (a prefix of a TCP segment's data).

    Pipelined messages are followed while each one's extent is known (complete
    head and a Content-Length or no body). ``default_host`` (e.g. "10.0.0.2:80",
    the destination) fills the URL when there is no Host header. Never raises.
    """
    try:
        data = bytes(payload)
        return _fast(data, default_host) or _parse_all(data, default_host)
    except Exception:  # noqa: BLE001 - a parser bug must not take the agent down
        return HTTPParseResult((), Unparsable("error", 0))


def _parse_fast(data: bytes, default_host: str | None) -> HTTPParseResult | None:
    """_parse_all for payloads of complete CRLF heads only (what the datapath sends,
    nearly always), with fewer steps; None for anything else, which _parse_all then
    reads. Where it answers, it answers exactly as _parse_all
    (tests/unit/test_l7_http.py compares the two on generated payloads)."""
    if not data:
        return None
    messages: list[HTTPMessage] = []
    pos, n = 0, len(data)
    while pos < n and len(messages) < MAX_MESSAGES:
        m = _REQUEST_LINE.match(data, pos)
        request = m is not None
        if m is None:
            m = _STATUS_LINE.match(data, pos)
            if m is None:
                return None
        nxt = m.end()
        if nxt - 1 - pos > MAX_START_LINE:
            return None
        got = _header_block(data, nxt)
        if got is None:
            return None
        headers, end = got
        if request:
            target = m.group(2).decode("ascii")
            url = _build_url(target, _canonical_value(headers, "Host"), default_host)
            body = _body_length(headers, request=True)
            length = end - pos + body if body is not None else n - pos
            messages.append(HTTPRequest(m.group(1).decode("ascii"), target,
                                        m.group(3).decode("ascii"), tuple(headers), url, True,
                                        length))
        else:
            code = int(m.group(2))
            body = _body_length(headers, request=False, code=code)
            length = end - pos + body if body is not None else n - pos
            messages.append(HTTPResponse(m.group(1).decode("ascii"), code,
                                         (m.group(3) or b"").decode("latin-1"), tuple(headers),
                                         True, length))
        pos += length
    return HTTPParseResult(tuple(messages), None)


def _parse_all(data: bytes, default_host: str | None) -> HTTPParseResult:
    if not data:
        return HTTPParseResult((), Unparsable("empty", 0))
    messages: list[HTTPMessage] = []
    pos = 0
    while pos < len(data) and len(messages) < MAX_MESSAGES:
        msg = _parse_one(data, pos, default_host)
        if isinstance(msg, Unparsable):
            return HTTPParseResult(tuple(messages), msg)
        messages.append(msg)
        if not msg.headers_complete:
            break                                   # the head itself goes on beyond the prefix
        # An unknown-length body was given length "to the end", so this also
        # stops there rather than reading body bytes as a next message.
        pos += msg.length
    return HTTPParseResult(tuple(messages), None)


# --- flow.proto rendering -------------------------------------------------

def _hubble_headers(headers: tuple[HTTPHeader, ...], settings: RedactSettings) -> list[dict]:
    # Hubble sorts by key (stable, so repeated keys keep their wire order).
    ordered = sorted(headers, key=lambda h: h.key)
    return [{"key": h.key, "value": redact_header_value(h.key, h.value, settings)} for h in ordered]


def http_record(msg: HTTPMessage, settings: RedactSettings | None = None,
                request: HTTPRequest | None = None) -> dict:
    """flow.proto ``HTTP`` as a JSON-style dict, redacted.

    A response carries method and url of its paired ``request`` as Hubble's do.
    Empty fields are omitted, as protobuf JSON does.
    """
    settings = settings or RedactSettings()
    req = msg if isinstance(msg, HTTPRequest) else request
    rec: dict = {}
    if isinstance(msg, HTTPResponse):
        rec["code"] = msg.code
    if req is not None:
        rec["method"] = req.method
        rec["url"] = redact_url(req.url, settings)
    rec["protocol"] = msg.protocol
    headers = _hubble_headers(msg.headers, settings)
    if headers:
        rec["headers"] = headers
    return rec


def http_summary(msg: HTTPMessage, settings: RedactSettings | None = None,
                 request: HTTPRequest | None = None, latency_ns: int = 0) -> str:
    """Hubble's summary: "HTTP/1.1 GET http://h/p" or "HTTP/1.1 200 3ms (GET http://h/p)"."""
    settings = settings or RedactSettings()
    req = msg if isinstance(msg, HTTPRequest) else request
    what = f"{req.method} {redact_url(req.url, settings)}" if req is not None else ""
    if isinstance(msg, HTTPRequest):
        return f"{msg.protocol} {what}"
    return f"{msg.protocol} {msg.code} {latency_ns // 1_000_000}ms ({what})"


def slot_fields(cls: type) -> tuple[object, tuple[tuple[str, object], ...]]:
    """(MISSING, ((name, default or MISSING), ...)) of a dataclass(slots=True), for
    _httpscan.c, which builds such instances by setting their slots (what the generated
    __init__ does, without running it): only plain fields, no __post_init__."""
    if not getattr(cls, "__slots__", None) or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: not a plain dataclass(slots=True)")
    out = []
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING or not f.init:
            raise TypeError(f"{cls.__name__}.{f.name}: not a plain field")
        out.append((f.name, f.default))
    return dataclasses.MISSING, tuple(out)


# _parse_fast in C where it was built (scripts/setup.sh, images/install.sh compile
# _httpscan.c); it answers exactly as _parse_fast (tests/unit/test_l7_http.py) and
# hands the rare cases back to the functions above. Without it, _parse_fast runs.
try:
    from . import _httpscan
    if not hasattr(_httpscan, "track"):  # built from an older _httpscan.c: rebuild it
        raise ImportError("_httpscan is older than its source")
except ImportError:  # not built: the Python path
    _httpscan = None  # type: ignore[assignment]
    _fast = _parse_fast
else:
    _httpscan.configure(HTTPRequest, HTTPResponse, HTTPParseResult, _header_line,
                        _HEADER_LINES, _build_url, _body_length, *slot_fields(HTTPRequest),
                        slot_fields(HTTPResponse)[1])
    _fast = _httpscan.parse_fast


def scanner() -> str:
    """Which head scanner parse_http uses: "c" or "python" (logged at start)."""
    return "c" if _fast is not _parse_fast else "python"
