"""--color auto|always|never: the ANSI colors Hubble gives hosts, ports, identities and
verdicts (compact and dict only; tables are never colored)."""
from __future__ import annotations

import os
from typing import TextIO

COLOR_MODES = ("auto", "always", "never")

_CODES = {"red": 31, "green": 32, "yellow": 33, "blue": 34, "magenta": 35, "cyan": 36}


def enabled(mode: str, stream: TextIO) -> bool:
    """auto: on for a terminal, unless NO_COLOR is set or TERM=dumb (as fatih/color)."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Colorer:
    def __init__(self, on: bool) -> None:
        self.on = on

    def _wrap(self, color: str, text: str) -> str:
        return f"\x1b[{_CODES[color]}m{text}\x1b[0m" if self.on else text

    def host(self, s: str) -> str:
        return self._wrap("cyan", s)

    def port(self, s: str) -> str:
        return self._wrap("yellow", s)

    def identity(self, s: str) -> str:
        return self._wrap("magenta", s)

    def forwarded(self, s: str) -> str:
        return self._wrap("green", s)

    def dropped(self, s: str) -> str:
        return self._wrap("red", s)

    def audit(self, s: str) -> str:
        return self._wrap("yellow", s)

    def auth_failed(self, s: str) -> str:
        return self._wrap("red", s)

    def auth_enabled(self, s: str) -> str:
        return self._wrap("green", s)
