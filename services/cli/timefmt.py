"""Times as Hubble reads and prints them.

- parse_time(): --since/--until values: a Go duration back from now ("5m",
  "1h30m") or one of Hubble's layouts (2006-01-02, 2006-01-02T15Z07:00,
  2006-01-02T15:04Z07:00, RFC3339 with any fraction, RFC1123Z).
- format_time(): --time-format names (StampMilli, RFC3339, ...) applied to a
  protobuf Timestamp in UTC, as Go's timestamppb.AsTime().Format(layout).
"""
from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from webb.durations import parse_duration

FORMAT_NAMES = ["YearMonthDay", "YearMonthDayHour", "YearMonthDayHourMinute", "StampMilli",
                "RFC3339", "RFC3339Milli", "RFC3339Micro", "RFC3339Nano", "RFC1123Z"]
DEFAULT_FORMAT = "StampMilli"

# Go reference layouts, shown in --help exactly as Hubble shows them.
LAYOUTS = {
    "StampMilli": "Jan _2 15:04:05.000",
    "YearMonthDay": "2006-01-02",
    "YearMonthDayHour": "2006-01-02T15Z07:00",
    "YearMonthDayHourMinute": "2006-01-02T15:04Z07:00",
    "RFC3339": "2006-01-02T15:04:05Z07:00",
    "RFC3339Milli": "2006-01-02T15:04:05.999Z07:00",
    "RFC3339Micro": "2006-01-02T15:04:05.999999Z07:00",
    "RFC3339Nano": "2006-01-02T15:04:05.999999999Z07:00",
    "RFC1123Z": "Mon, 02 Jan 2006 15:04:05 -0700",
}

_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_MIN_SECONDS = -62135596800  # 0001-01-01T00:00:00Z
_MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z


def canonical_format(name: str) -> str | None:
    """The canonical spelling of a --time-format name (case-insensitive), or None."""
    for n in FORMAT_NAMES:
        if n.lower() == name.lower():
            return n
    return None


def _valid(ts: Timestamp | None) -> bool:
    return (ts is not None and _MIN_SECONDS <= ts.seconds <= _MAX_SECONDS
            and 0 <= ts.nanos < 1_000_000_000)


def _trimmed_fraction(nanos: int, digits: int) -> str:
    frac = f"{nanos:09d}"[:digits].rstrip("0")
    return "." + frac if frac else ""


def format_time(ts: Timestamp | None, name: str = DEFAULT_FORMAT) -> str:
    """Format like Hubble: UTC, "N/A" for a missing or invalid timestamp."""
    if not _valid(ts):
        return "N/A"
    assert ts is not None
    t = datetime.fromtimestamp(0, timezone.utc) + timedelta(seconds=ts.seconds)
    nanos = ts.nanos
    date = f"{t.year:04d}-{t.month:02d}-{t.day:02d}"
    clock = f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    if name == "YearMonthDay":
        return date
    if name == "YearMonthDayHour":
        return f"{date}T{t.hour:02d}Z"
    if name == "YearMonthDayHourMinute":
        return f"{date}T{t.hour:02d}:{t.minute:02d}Z"
    if name == "RFC3339":
        return f"{date}T{clock}Z"
    if name == "RFC3339Milli":
        return f"{date}T{clock}{_trimmed_fraction(nanos, 3)}Z"
    if name == "RFC3339Micro":
        return f"{date}T{clock}{_trimmed_fraction(nanos, 6)}Z"
    if name == "RFC3339Nano":
        return f"{date}T{clock}{_trimmed_fraction(nanos, 9)}Z"
    if name == "RFC1123Z":
        return f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} {clock} +0000"
    # StampMilli: "Jan _2 15:04:05.000"
    return f"{_MONTHS[t.month - 1]} {t.day:>2d} {clock}.{nanos // 1_000_000:03d}"


_TZ = r"(?P<tz>Z|[+-]\d{2}:\d{2})"
_DATE = r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
_LAYOUT_RES = [
    re.compile(rf"^{_DATE}$"),
    re.compile(rf"^{_DATE}T(?P<h>\d{{2}}){_TZ}$"),
    re.compile(rf"^{_DATE}T(?P<h>\d{{2}}):(?P<mi>\d{{2}}){_TZ}$"),
    re.compile(rf"^{_DATE}T(?P<h>\d{{2}}):(?P<mi>\d{{2}}):(?P<s>\d{{2}})(?:\.(?P<f>\d{{1,9}}))?{_TZ}$"),
]
_RFC1123Z = re.compile(
    r"^(?P<wd>Mon|Tue|Wed|Thu|Fri|Sat|Sun), (?P<d>\d{2}) (?P<mon>[A-Z][a-z]{2}) (?P<y>\d{4}) "
    r"(?P<h>\d{2}):(?P<mi>\d{2}):(?P<s>\d{2}) (?P<off>[+-]\d{4})$")


def _to_timestamp(dt: datetime, nanos: int = 0) -> Timestamp:
    secs = int((dt - datetime(1970, 1, 1, tzinfo=timezone.utc)).total_seconds())
    return Timestamp(seconds=secs, nanos=nanos)


def _offset(tz: str) -> timezone:
    if tz == "Z":
        return timezone.utc
    sign = -1 if tz[0] == "-" else 1
    hours, minutes = int(tz[1:3]), int(tz[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_time(text: str, now: float | None = None) -> Timestamp:
    """A Timestamp from a relative duration (back from now) or an absolute time."""
    now_ns = time.time_ns() if now is None else int(round(now * 1_000_000)) * 1000
    try:
        ns = parse_duration(text)
    except ValueError:
        pass
    else:
        t_ns = now_ns - ns
        return Timestamp(seconds=t_ns // 1_000_000_000, nanos=t_ns % 1_000_000_000)
    try:
        for rx in _LAYOUT_RES:
            m = rx.match(text)
            if not m:
                continue
            g = m.groupdict()
            tz = _offset(g["tz"]) if g.get("tz") else timezone.utc
            dt = datetime(int(g["y"]), int(g["mo"]), int(g["d"]), int(g.get("h") or 0),
                          int(g.get("mi") or 0), int(g.get("s") or 0), tzinfo=tz)
            frac = g.get("f") or ""
            nanos = int(frac.ljust(9, "0")) if frac else 0
            ts = _to_timestamp(dt.astimezone(timezone.utc), nanos)
            if _valid(ts):
                return ts
        m = _RFC1123Z.match(text)
        if m and m["mon"] in _MONTHS:
            off = m["off"]
            tz = _offset(f"{off[:3]}:{off[3:]}")
            dt = datetime(int(m["y"]), _MONTHS.index(m["mon"]) + 1, int(m["d"]), int(m["h"]),
                          int(m["mi"]), int(m["s"]), tzinfo=tz)
            if _DAYS[dt.weekday()] == m["wd"]:
                return _to_timestamp(dt.astimezone(timezone.utc))
    except ValueError:  # e.g. month 13
        pass
    raise ValueError(f"failed to convert {text} to time")
