"""HTTP/1.x as the proxy needs it: heads parsed strictly, bodies relayed as they come.

A head is read whole (up to MAX_HEAD bytes: larger is 431, as Envoy answers); a
body is never held: `Body` follows its framing (Content-Length, chunked, or until
the connection closes) over the pieces as they arrive and says how much of each
belongs to it, so the proxy forwards every piece at once (connection.py).
Ambiguous framing (both Content-Length and Transfer-Encoding, several different
lengths, a transfer coding other than chunked last) is refused: it is how request
smuggling works. So are lenient chunk forms (bare LF, no CRLF after a chunk's data,
blanks around the size, malformed trailer lines): a server reading them otherwise
than the proxy would see a request the proxy never judged.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

MAX_HEAD = 60 * 1024  # Envoy's default max_request_headers_kb
MAX_HEADERS = 100
MAX_CHUNK_LINE = 4096

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# chunk = size [BWS ";" extensions] CRLF: no sign, 0x, _ or leading blank that int() would
# take, no bare LF; what Envoy accepts, so both ends of the proxy cut the body alike
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:[ \t]*;[^\r\n]*)?\r\n")
_TRAILER_FIELD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n]*\r\n")
# Values are decoded as Latin-1: str.strip() and isdigit() would take NBSP and NEL
# for blanks and superscript digits for digits, which no server does ("chunked\xa0"
# is another coding to it), so list items are trimmed of HTTP's own blanks only.
_OWS = " \t"
_LENGTH = re.compile("[0-9]{1,15}")


class HTTPError(Exception):
    """A message that cannot be relayed: status to answer with (0: just close)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Head:
    start: tuple[str, str, str]        # request: method, target, version; response: version, code, reason
    headers: list[tuple[str, str]]     # (name as sent, value), wire order
    raw: bytes                         # the head as received, blank line included
    body: int                          # >= 0 length, CHUNKED, or TO_CLOSE
    keep_alive: bool
    # The request as its L7 flows show it, built once for the request's flow and
    # reused by its answer's (flows.py).
    flow_view: Any = field(default=None, compare=False, repr=False)

    def header(self, name: str) -> str | None:
        n = name.lower()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return None


CHUNKED, TO_CLOSE = -1, -2


def _headers(lines: list[bytes]) -> list[tuple[str, str]]:
    if len(lines) > MAX_HEADERS:
        raise HTTPError(431, "too many header fields")
    out = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise HTTPError(400, "malformed header field")
        if _CTL.search(value) is not None:
            raise HTTPError(400, "control character in a header value")
        out.append((name.decode("ascii"), value.strip(b" \t").decode("latin-1")))
    return out


def _split(raw: bytes) -> list[bytes]:
    lines = raw[:-4].split(b"\r\n") if raw.endswith(b"\r\n\r\n") else raw.split(b"\n")
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def _framing(headers: list[tuple[str, str]]) -> int | None:
    """Body framing from the headers; None when neither length nor coding is given."""
    te = [v for k, v in headers if k.lower() == "transfer-encoding"]
    cl = [v for k, v in headers if k.lower() == "content-length"]
    if te:
        if cl:
            raise HTTPError(400, "both Content-Length and Transfer-Encoding")
        codings = [c.strip(_OWS).lower() for v in te for c in v.split(",") if c.strip(_OWS)]
        if not codings or codings[-1] != "chunked":
            raise HTTPError(501, "transfer coding other than chunked")
        return CHUNKED
    if cl:
        values = {c.strip(_OWS) for v in cl for c in v.split(",")}
        if len(values) != 1:
            raise HTTPError(400, "conflicting Content-Length values")
        v = values.pop()
        if _LENGTH.fullmatch(v) is None:
            raise HTTPError(400, "invalid Content-Length")
        return int(v)
    return None


def _keep_alive(version: str, headers: list[tuple[str, str]]) -> bool:
    conn = ",".join(v for k, v in headers if k.lower() == "connection").lower()
    tokens = {t.strip(_OWS) for t in conn.split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def _start_and_headers(raw: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    lines = _split(raw)
    return lines[0], _headers(lines[1:])


def _parse_request_strict(raw: bytes) -> Head:
    start, headers = _start_and_headers(raw)
    parts = start.split(b" ")
    if len(parts) != 3 or _TOKEN.fullmatch(parts[0]) is None or _TARGET.fullmatch(parts[1]) is None:
        raise HTTPError(400, "malformed request line")
    version = parts[2].decode("ascii", "replace")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HTTPError(505 if version.startswith("HTTP/") else 400, "not HTTP/1.x")
    body = _framing(headers)
    return Head((parts[0].decode("ascii"), parts[1].decode("ascii"), version), headers, raw,
                0 if body is None else body, _keep_alive(version, headers))


def _parse_response_strict(raw: bytes, method: str) -> Head:
    start, headers = _start_and_headers(raw)
    parts = start.split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or not (
            len(parts[1]) == 3 and parts[1].isdigit()):
        raise HTTPError(502, "malformed status line from the server")
    version = parts[0].decode("ascii")
    code = int(parts[1])
    if method == "HEAD" or 100 <= code < 200 or code in (204, 304):
        body = 0
    else:
        framed = _framing(headers)
        body = TO_CLOSE if framed is None else framed
    keep = _keep_alive(version, headers) and body != TO_CLOSE
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    return Head((version, str(code), reason), headers, raw, body, keep)


# The plain head, whole, in one match: a start line the strict parse accepts as it
# is (each group exactly what it reads from the line), then well-formed CRLF header
# lines. One match of the decoded head and one findall of its fields, and no Python
# loop over the lines: the proxy parses two heads per request. Whatever does not
# match goes to the strict parse above, which gives the same result or the error
# (tests/unit/test_l7proxy.py compares the two).
_TCHAR = "!#$%&'*+\\-.^_`|~0-9A-Za-z"
_HLINE = f"[{_TCHAR}]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n"
_PLAIN_REQUEST = re.compile(f"([{_TCHAR}]+) ([\x21-\x7e]+) (HTTP/1\\.[01])\r\n((?:{_HLINE})*)\r\n")
_PLAIN_RESPONSE = re.compile(f"(HTTP/1\\.[01]) ([0-9]{{3}})(?: ([^\r\n]*))?\r\n((?:{_HLINE})*)\r\n")
# A field of a validated block: the value without the blanks around it (no lazy
# quantifier: it backtracks only over trailing blanks).
_PLAIN_FIELD = re.compile(f"([{_TCHAR}]+):[ \t]*((?:[^\r\n]*[^ \t\r\n])?)[ \t]*\r\n")


def _plain_framing(version: str, block: str, headers: list[tuple[str, str]],
                   framed: bool = True) -> tuple[int | None, bool]:
    """_framing (if `framed`) and _keep_alive of a plain head; a head that names none
    of their fields anywhere (the usual GET) skips the scans of its fields."""
    lo = block.lower()
    body = _framing(headers) if framed and (
        "transfer-encoding" in lo or "content-length" in lo) else None
    return body, _keep_alive(version, headers) if "connection" in lo else version != "HTTP/1.0"


def parse_request(raw: bytes) -> Head:
    text = raw.decode("latin-1")  # every byte; a valid start line and names are ASCII
    m = _PLAIN_REQUEST.fullmatch(text)
    if m is None:
        return _parse_request_strict(raw)
    b0, b1 = m.span(4)
    headers = _PLAIN_FIELD.findall(text, b0, b1)
    if len(headers) > MAX_HEADERS:
        return _parse_request_strict(raw)
    body, keep = _plain_framing(m.group(3), m.group(4), headers)
    return Head(m.group(1, 2, 3), headers, raw, 0 if body is None else body, keep)


def parse_response(raw: bytes, method: str) -> Head:
    text = raw.decode("latin-1")
    m = _PLAIN_RESPONSE.fullmatch(text)
    if m is None:
        return _parse_response_strict(raw, method)
    b0, b1 = m.span(4)
    headers = _PLAIN_FIELD.findall(text, b0, b1)
    if len(headers) > MAX_HEADERS:
        return _parse_response_strict(raw, method)
    version, status, reason, block = m.group(1, 2, 3, 4)
    code = int(status)
    bodyless = method == "HEAD" or 100 <= code < 200 or code in (204, 304)
    framed, keep = _plain_framing(version, block, headers, not bodyless)
    body = 0 if bodyless else TO_CLOSE if framed is None else framed
    return Head((version, str(code), reason or ""), headers, raw, body,
                keep and body != TO_CLOSE)


class Body:
    """Where one message's body ends, told its bytes piece by piece as they arrive.

    `feed` says how many bytes of a piece belong to the body; the caller forwards
    (or drops) exactly those, and the rest is the next message. Only a chunk-size or
    trailer line cut between two pieces is kept (at most MAX_CHUNK_LINE bytes)."""

    __slots__ = ("left", "mode", "line", "trailers", "done", "wire")

    _SIZED, _TO_CLOSE, _SIZE_LINE, _DATA, _DATA_END, _TRAILER = range(6)

    def __init__(self, framing: int) -> None:
        self.wire = 0          # bytes of the body seen so far
        self.line = b""        # a size or trailer line cut between pieces
        self.trailers = 0
        self.left = 0
        self.done = framing == 0
        if framing >= 0:
            self.mode, self.left = self._SIZED, framing
        elif framing == TO_CLOSE:
            self.mode = self._TO_CLOSE
        else:
            self.mode = self._SIZE_LINE

    def feed(self, buf: bytes, pos: int = 0) -> int:
        """How many bytes of buf[pos:] belong to this body (done: `self.done`).
        HTTPError: malformed chunked framing."""
        end = len(buf)
        i = pos
        mode = self.mode
        if mode == self._SIZED:
            i += min(self.left, end - i)
            self.left -= i - pos
            self.done = self.left == 0
        elif mode == self._TO_CLOSE:
            i = end
        else:
            while i < end and not self.done:
                if mode == self._DATA:
                    take = min(self.left, end - i)
                    i += take
                    self.left -= take
                    if not self.left:
                        mode, self.left = self._DATA_END, 2
                    continue
                if mode == self._DATA_END:  # exactly CRLF after the data, maybe cut in two
                    if buf[i] != b"\r\n"[2 - self.left]:
                        raise HTTPError(400, "chunk data not followed by CRLF")
                    i += 1
                    self.left -= 1
                    if not self.left:
                        mode = self._SIZE_LINE
                    continue
                nl = buf.find(b"\n", i, i + MAX_CHUNK_LINE + 1)
                if nl < 0:  # the line goes on in the next piece
                    self.line += buf[i:end]
                    i = end
                    if len(self.line) > MAX_CHUNK_LINE:
                        raise HTTPError(400, "chunk size line too long" if mode == self._SIZE_LINE
                                        else "trailer line too long")
                    break
                line = self.line + buf[i:nl + 1] if self.line else buf[i:nl + 1]
                self.line = b""
                i = nl + 1
                if len(line) > MAX_CHUNK_LINE:
                    raise HTTPError(400, "chunk size line too long")
                if mode == self._TRAILER:  # trailer fields, up to the blank line
                    self.trailers += len(line)
                    if line == b"\r\n":
                        self.done = True
                    elif _TRAILER_FIELD.fullmatch(line) is None:
                        raise HTTPError(400, "malformed trailer line")
                    elif self.trailers > MAX_HEAD:
                        raise HTTPError(431, "trailers too large")
                    continue
                m = _CHUNK_SIZE.fullmatch(line)
                if m is None:
                    raise HTTPError(400, "malformed chunk size line")
                size = int(m.group(1), 16)
                if size == 0:
                    mode = self._TRAILER
                else:
                    mode, self.left = self._DATA, size
            self.mode = mode
        self.wire += i - pos
        return i - pos

    def eof(self) -> bool:
        """The connection closed: True when that ends this body normally."""
        if self.mode == self._TO_CLOSE:
            self.done = True
        return self.done


def find_head(buf: bytes, pos: int, scanned: int) -> int:
    """The end of the head that starts at buf[pos] (just past its blank line), or -1;
    `scanned`: where the search may start (what an earlier call saw, less 3 bytes)."""
    end = buf.find(b"\r\n\r\n", max(pos, scanned))
    return end + 4 if end >= 0 else -1
