"""Redaction of sensitive L7 values, with Hubble's semantics.

Hubble (pkg/hubble/parser/seven/http.go) knows these settings:
  --hubble-redact-enabled            master switch for header redaction
  --hubble-redact-http-headers-allow header names kept; all others redacted
  --hubble-redact-http-headers-deny  header names redacted; all others kept
  --hubble-redact-http-urlquery      drop the URL query and fragment
  --hubble-redact-http-userinfo      replace a URL password (default on)
  --hubble-redact-kafka-apikey       (Kafka; no Kafka parser here)
Redacted values become the literal ``HUBBLE_REDACTED``.

webb differs in its *defaults* only, because issue 8 asks for sensitive
values to be hidden out of the box: header redaction is on with a deny list
of credential-bearing headers, and a list of sensitive query parameters has
its values redacted (a webb addition; Hubble can only drop the whole query).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import SplitResult, unquote_plus, urlsplit, urlunsplit

__all__ = ["REDACTED", "DEFAULT_DENY_HEADERS", "DEFAULT_SENSITIVE_QUERY_PARAMS",
           "RedactSettings", "redact_header_value", "redact_url", "redact_query"]

# Hubble's pkg/hubble/defaults.SensitiveValueRedacted.
REDACTED = "HUBBLE_REDACTED"

# Lower-case names; headers that carry credentials or session state.
DEFAULT_DENY_HEADERS: frozenset[str] = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie",
    "x-api-key", "x-auth-token", "x-csrf-token", "x-xsrf-token",
    "x-amz-security-token",
})

# Lower-case query parameter names whose values are redacted by default.
DEFAULT_SENSITIVE_QUERY_PARAMS: frozenset[str] = frozenset({
    "access_token", "id_token", "refresh_token", "token", "api_key", "apikey",
    "key", "password", "passwd", "pwd", "secret", "client_secret", "auth",
    "authorization", "signature", "sig", "session", "sessionid", "code",
})


def _lower_set(names: object) -> frozenset[str]:
    return frozenset(str(n).lower() for n in names)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RedactSettings:
    """What to hide. Header name and query parameter matching is case-insensitive.

    ``headers_enabled`` with both lists empty redacts every header value, as
    Hubble does. An allow list wins over the deny list (Hubble checks allow first
    and, when an allow list exists, redacts everything not on it).
    """
    headers_enabled: bool = True
    headers_allow: frozenset[str] = frozenset()
    headers_deny: frozenset[str] = DEFAULT_DENY_HEADERS
    http_urlquery: bool = False
    query_params: frozenset[str] = DEFAULT_SENSITIVE_QUERY_PARAMS
    http_userinfo: bool = True

    def __post_init__(self) -> None:
        # Normalise once so per-header checks are a single set lookup.
        object.__setattr__(self, "headers_allow", _lower_set(self.headers_allow))
        object.__setattr__(self, "headers_deny", _lower_set(self.headers_deny))
        object.__setattr__(self, "query_params", _lower_set(self.query_params))

    @classmethod
    def hubble_defaults(cls) -> "RedactSettings":
        """Hubble's own defaults: only the URL password is hidden."""
        return cls(headers_enabled=False, headers_deny=frozenset(), query_params=frozenset())

    @classmethod
    def disabled(cls) -> "RedactSettings":
        return cls(headers_enabled=False, headers_deny=frozenset(), query_params=frozenset(),
                   http_userinfo=False)


def redact_header_value(key: str, value: str, settings: RedactSettings) -> str:
    """The value to show for header ``key`` (Hubble's filterHeader decision order)."""
    if not settings.headers_enabled:
        return value
    allow, deny = settings.headers_allow, settings.headers_deny
    if not allow and not deny:
        return REDACTED
    k = key.lower()
    if k in allow:
        return value
    if k in deny:
        return REDACTED
    return REDACTED if allow else value


def redact_query(query: str, params: frozenset[str]) -> str:
    """Replace the values of sensitive ``params`` in a raw query, keeping the rest raw."""
    if not params or not query:
        return query
    out = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        # Decode the name only for matching so "api%5Fkey" cannot slip through.
        if unquote_plus(name).lower() in params:
            out.append(f"{name}={REDACTED}" if sep else part)  # no value: nothing to hide
        else:
            out.append(part)
    return "&".join(out)


def _redact_userinfo(netloc: str) -> str:
    userinfo, at, hostport = netloc.rpartition("@")
    if not at:
        return netloc
    user, colon, _ = userinfo.partition(":")
    # Like Go's url.UserPassword: only a present password is replaced.
    return f"{user}:{REDACTED}@{hostport}" if colon else netloc


# URLs repeat and splitting one costs microseconds: short ones are cached. Longer ones
# (a proxied head may be 60 KiB) rarely repeat and would make the cache's 4096 entries
# hundreds of MB: worked out each time.
CACHED_URL = 256


def redact_url(url: str, settings: RedactSettings) -> str:
    """Apply userinfo and query redaction to ``url``; never raises."""
    if len(url) <= CACHED_URL:
        return _redact_url_cached(url, settings)
    return _redact_url(url, settings)


def _redact_url(url: str, settings: RedactSettings) -> str:
    try:
        parts: SplitResult = urlsplit(url)
    except ValueError:
        # Unsplittable (e.g. bad IPv6 literal): fail closed on the parts we hide.
        if settings.http_urlquery or settings.query_params:
            url = url.split("?", 1)[0].split("#", 1)[0]
        if settings.http_userinfo and "@" in url:
            scheme, sep, rest = url.partition("://")
            url = scheme + sep + rest.rpartition("@")[2] if sep else url
        return url
    netloc, query, fragment = parts.netloc, parts.query, parts.fragment
    if settings.http_userinfo:
        netloc = _redact_userinfo(netloc)
    if settings.http_urlquery:
        query, fragment = "", ""
    else:
        query = redact_query(query, settings.query_params)
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url  # untouched: return the original bytes, not a re-serialisation
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


_redact_url_cached = lru_cache(maxsize=4096)(_redact_url)
