"""Go's time.Duration text forms, which Hubble users type and read.

parse_duration("1h30m") == 5400 * 10**9 (nanoseconds), like time.ParseDuration;
format_duration(100 * 10**9) == "1m40s", like time.Duration.String.
"""
from __future__ import annotations

import re
from fractions import Fraction

_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
            "s": 1_000_000_000, "m": 60 * 1_000_000_000, "h": 3600 * 1_000_000_000}
_PART = re.compile(r"(\d*)(?:\.(\d*))?(ns|us|µs|μs|ms|s|m|h)")
_MAX_NS = 2**63 - 1


def parse_duration(text: str) -> int:
    """Nanoseconds of a Go duration ("300ms", "-1.5h", "2h45m"); ValueError if invalid."""
    s = text
    sign = 1
    if s[:1] in "+-" and s:
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total = Fraction(0)
    pos = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m or (not m.group(1) and not m.group(2)):
            raise ValueError(f"invalid duration {text!r}")
        whole, frac, unit = m.group(1) or "0", m.group(2) or "", m.group(3)
        value = Fraction(int(whole)) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)
        total += value * _UNIT_NS[unit]
        pos = m.end()
    if total > _MAX_NS:
        raise ValueError(f"invalid duration {text!r}")
    return sign * int(total)


def _frac(v: int, prec: int) -> tuple[str, int]:
    """Go's fmtFrac: the fraction digits of v/10**prec, trailing zeros dropped."""
    digits = ""
    printed = False
    for _ in range(prec):
        d = v % 10
        printed = printed or d != 0
        if printed:
            digits = str(d) + digits
        v //= 10
    return ("." + digits if printed else ""), v


def format_duration(ns: int) -> str:
    """time.Duration(ns).String(): "0s", "1.5ms", "1m40s", "2h0m0s"."""
    if ns == 0:
        return "0s"
    neg = ns < 0
    u = -ns if neg else ns
    if u < 1_000_000_000:
        if u < 1_000:
            out = f"{u}ns"
        elif u < 1_000_000:
            frac, whole = _frac(u, 3)
            out = f"{whole}{frac}µs"
        else:
            frac, whole = _frac(u, 6)
            out = f"{whole}{frac}ms"
    else:
        frac, secs = _frac(u, 9)
        out = f"{secs % 60}{frac}s"
        mins = secs // 60
        if mins:
            out = f"{mins % 60}m" + out
            hours = mins // 60
            if hours:
                out = f"{hours}h" + out
    return "-" + out if neg else out


def duration_arg(text: str) -> float:
    """An argparse type for duration flags: seconds, from "1m30s"/"500ms" or a plain
    number of seconds; never negative."""
    import argparse

    t = text.strip()
    try:
        value = float(t)
    except ValueError:
        try:
            value = parse_duration(t) / 1e9
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 1m, 30s, 500ms)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: negative")
    return value
