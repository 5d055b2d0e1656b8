"""Byte sizes as operators type them in flags and Helm values: "300MB", "1.5GiB", "4096".

Decimal units (KB, MB, GB, TB; also K, M, G, T as Kubernetes quantities) are powers
of 1000, binary units (KiB/Ki, MiB/Mi, GiB/Gi, TiB/Ti) powers of 1024, a bare
number is bytes.
"""
from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1,
          "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4,
          "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
          "ti": 1024**4, "tib": 1024**4}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """Bytes of a size such as "300MB"; ValueError with the accepted forms otherwise."""
    m = _SIZE.fullmatch(text)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise ValueError(f"invalid size {text!r}: use a number of bytes or a number with "
                         "a unit such as 300MB, 512MiB, 2GB")
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(n: int) -> str:
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if n >= factor:
            return f"{n / factor:.1f}{unit}"
    return f"{n}B"
