"""HTTP filters on L7 flows: http_status_code, http_method, http_path,
http_url, http_header.

- status codes: "200" (exact, 100-599) or a prefix "5+" / "40+" (first digit
  1-5, at most two digits before "+"); anything else ("5x", "600", "2") is an
  error. Flows without a response code never match.
- methods: case-insensitive equality.
- path: regexes searched in the path of the request URL (as Go's
  url.ParseRequestURI would give it; unparsable URLs never match).
- url: regexes searched in the full URL.
- header: a flow header equal (key and value) to one of the given ones.

Like Hubble, any of these is rejected when the same FlowFilter restricts
event_type to types that exclude L7 (access log, type 129) events.
"""
from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote

from webb.filters._common import MESSAGE_TYPE_ACCESS_LOG, FilterFunc, compile_go_regexp, values
from webb.filters.errors import FilterError

_STATUS_FULL = re.compile(r"[1-5][0-9]{2}")
_STATUS_PREFIX = re.compile(r"[1-5][0-9]?\+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _l7_compatible(ff) -> bool:
    types = values(ff, "event_type")
    return not types or any(t.type == MESSAGE_TYPE_ACCESS_LOG for t in types)


@lru_cache(maxsize=1 << 14)
def request_path(url: str):
    """The decoded path of ``url`` read as an HTTP request target (absolute
    path or absolute URI), or None where Go's url.ParseRequestURI fails."""
    if not url or any(ord(c) < 0x20 or c == "\x7f" for c in url):
        return None
    if url == "*":
        return "*"
    rest = url.split("?", 1)[0]
    if not rest.startswith("/"):
        scheme, colon, after = rest.partition(":")
        if not colon or not _SCHEME.fullmatch(scheme):
            return None
        rest = after
        if not rest.startswith("/"):
            return ""  # opaque URI ("mailto:x"): no path
        if rest.startswith("//"):
            authority, slash, tail = rest[2:].partition("/")
            rest = slash + tail
    if _BAD_ESCAPE.search(rest):
        return None
    return unquote(rest, errors="surrogateescape")


def _status_filter(entries: list[str]) -> FilterFunc:
    full, prefixes = set(), []
    for entry in entries:
        if _STATUS_FULL.fullmatch(entry):
            full.add(entry)
        elif _STATUS_PREFIX.fullmatch(entry):
            prefixes.append(entry[:-1])
        else:
            raise FilterError(f"invalid http_status_code filter: invalid status code prefix: {entry!r}"
                              " (want e.g. \"404\" or \"5+\")")
    full_codes = frozenset(int(c) for c in full)
    prefixes = tuple(prefixes)

    def by_status(flow) -> bool:
        l7 = flow.l7
        if not l7.HasField("http"):
            return False
        code = l7.http.code
        if not code:
            return False
        if code in full_codes:
            return True
        if prefixes:
            text = "%03d" % code
            for p in prefixes:
                if text.startswith(p):
                    return True
        return False

    return by_status


def _method_filter(entries: list[str]) -> FilterFunc:
    wanted = frozenset(m.lower() for m in entries)

    def by_method(flow) -> bool:
        l7 = flow.l7
        if not l7.HasField("http"):
            return False
        method = l7.http.method
        return bool(method) and method.lower() in wanted

    return by_method


def _path_filter(entries: list[str]) -> FilterFunc:
    regexes = tuple(compile_go_regexp(p, "invalid http_path filter") for p in entries)

    def by_path(flow) -> bool:
        l7 = flow.l7
        if not l7.HasField("http"):
            return False
        url = l7.http.url
        if not url:
            return False
        path = request_path(url)
        if path is None:
            return False
        for r in regexes:
            if r.search(path):
                return True
        return False

    return by_path


def _url_filter(entries: list[str]) -> FilterFunc:
    regexes = tuple(compile_go_regexp(p, "invalid http_url filter") for p in entries)

    def by_url(flow) -> bool:
        l7 = flow.l7
        if not l7.HasField("http"):
            return False
        url = l7.http.url
        if not url:
            return False
        for r in regexes:
            if r.search(url):
                return True
        return False

    return by_url


def _header_filter(entries: list) -> FilterFunc:
    wanted = frozenset((h.key, h.value) for h in entries)

    def by_header(flow) -> bool:
        l7 = flow.l7
        if not l7.HasField("http"):
            return False
        for h in l7.http.headers:
            if (h.key, h.value) in wanted:
                return True
        return False

    return by_header


_BUILDERS = (
    ("http_status_code", "http status code", _status_filter),
    ("http_method", "http method", _method_filter),
    ("http_path", "http path", _path_filter),
    ("http_url", "http url", _url_filter),
    ("http_header", "http headers", _header_filter),
)


def build(ff) -> list[FilterFunc]:
    fs = []
    for field, what, make in _BUILDERS:
        entries = values(ff, field)
        if not entries:
            continue
        if not _l7_compatible(ff):
            raise FilterError(f"filtering by {what} requires the event type filter "
                              "to only match 'l7' events")
        fs.append(make(entries))
    return fs
