"""A Kubernetes label-selector parser (apimachinery grammar and validation).

Grammar: comma-separated requirements, each one of
    key                  key exists
    !key                 key does not exist
    key = v, key == v    value equals
    key != v             key absent or value differs
    key in (a, b)        value in set
    key notin (a, b)     key absent or value not in set
    key > 3, key < 3     integer comparison
The empty selector selects everything.

``parse`` returns a tuple of ``Requirement``; how a key is looked up in a
label set is the caller's business (see labels.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

EXISTS = "exists"
NOT_EXISTS = "!"
EQUALS = "="
NOT_EQUALS = "!="
IN = "in"
NOT_IN = "notin"
GREATER = ">"
LESS = "<"


class SelectorError(ValueError):
    pass


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str
    values: frozenset
    number: int = 0  # for GREATER / LESS


# --- lexer -----------------------------------------------------------------

_T_END, _T_IDENT, _T_IN, _T_NOTIN = "end of string", "identifier", "in", "notin"
_T_OPEN, _T_CLOSE, _T_COMMA = "(", ")", ","
_T_NOT, _T_EQ, _T_DEQ, _T_NEQ, _T_GT, _T_LT = "!", "=", "==", "!=", ">", "<"
_SYMBOLS = {")": _T_CLOSE, ",": _T_COMMA, "!": _T_NOT, "==": _T_DEQ, "=": _T_EQ,
            ">": _T_GT, "<": _T_LT, "!=": _T_NEQ, "(": _T_OPEN}
_SPECIAL = frozenset("=!(),><")
_SPACE = frozenset(" \t\r\n")
_KEYWORDS = {"in": _T_IN, "notin": _T_NOTIN}


def _lex(text: str) -> list[tuple[str, str]]:
    tokens = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n:
            tokens.append((_T_END, ""))
            return tokens
        c = text[i]
        if c in _SPECIAL:
            # longest run of special characters that is still a symbol
            j, best = i, None
            while j < n and text[j] in _SPECIAL:
                j += 1
                if text[i:j] in _SYMBOLS:
                    best = j
                elif best is not None:
                    break
            if best is None:
                raise SelectorError(f"unexpected symbol {text[i:j]!r}")
            tokens.append((_SYMBOLS[text[i:best]], text[i:best]))
            i = best
        else:
            j = i
            while j < n and text[j] not in _SPECIAL and text[j] not in _SPACE:
                j += 1
            word = text[i:j]
            tokens.append((_KEYWORDS.get(word, _T_IDENT), word))
            i = j


# --- validation (k8s.io/apimachinery/pkg/util/validation) -------------------

_NAME = re.compile(r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")
_VALUE = re.compile(r"(?:(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_INT = re.compile(r"[+-]?[0-9]+")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _validate_key(key: str) -> None:
    parts = key.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            raise SelectorError(f"invalid label key {key!r}: prefix part must be non-empty")
        if len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix):
            raise SelectorError(f"invalid label key {key!r}: prefix part must be a lowercase "
                                "DNS subdomain")
    else:
        raise SelectorError(f"invalid label key {key!r}: at most one '/' is allowed")
    if not name:
        raise SelectorError(f"invalid label key {key!r}: name part must be non-empty")
    if len(name) > 63:
        raise SelectorError(f"invalid label key {key!r}: name part must be at most 63 characters")
    if not _NAME.fullmatch(name):
        raise SelectorError(f"invalid label key {key!r}: name part must consist of alphanumerics, "
                            "'-', '_' or '.', and start and end with an alphanumeric")


def _validate_value(value: str) -> None:
    if len(value) > 63:
        raise SelectorError(f"invalid label value {value!r}: must be at most 63 characters")
    if not _VALUE.fullmatch(value):
        raise SelectorError(f"invalid label value {value!r}: must be empty or consist of "
                            "alphanumerics, '-', '_' or '.', and start and end with an alphanumeric")


def parse_int64(text: str):
    """Go strconv.ParseInt(text, 10, 64), or None."""
    if not _INT.fullmatch(text):
        return None
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


# --- parser ------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str):
        self.tokens = _lex(text)
        self.pos = 0

    def peek(self, values_ctx: bool = True) -> tuple[str, str]:
        tok, lit = self.tokens[self.pos]
        if values_ctx and tok in (_T_IN, _T_NOTIN):
            tok = _T_IDENT
        return tok, lit

    def take(self, values_ctx: bool = True) -> tuple[str, str]:
        tok = self.peek(values_ctx)
        if self.pos < len(self.tokens) - 1:
            self.pos += 1
        return tok

    def parse(self) -> tuple[Requirement, ...]:
        reqs = []
        while True:
            tok, lit = self.peek()
            if tok == _T_END:
                return tuple(reqs)
            if tok not in (_T_IDENT, _T_NOT):
                raise SelectorError(f"found {lit!r}, expected: !, identifier, or 'end of string'")
            reqs.append(self.requirement())
            tok, lit = self.take()
            if tok == _T_END:
                return tuple(reqs)
            if tok != _T_COMMA:
                raise SelectorError(f"found {lit!r}, expected: ',' or 'end of string'")
            if self.peek()[0] not in (_T_IDENT, _T_NOT):
                raise SelectorError(f"found {self.peek()[1]!r}, expected: identifier after ','")

    def requirement(self) -> Requirement:
        negate = False
        tok, lit = self.take()
        if tok == _T_NOT:
            negate = True
            tok, lit = self.take()
        if tok != _T_IDENT:
            raise SelectorError(f"found {lit!r}, expected: identifier")
        key = lit
        _validate_key(key)
        if self.peek()[0] in (_T_END, _T_COMMA):
            return Requirement(key, NOT_EXISTS if negate else EXISTS, frozenset())
        if negate:
            raise SelectorError(f"found {self.peek()[1]!r}, expected: ',' or 'end of string' "
                                f"after !{key}")

        tok, lit = self.take(values_ctx=False)
        if tok in (_T_IN, _T_NOTIN):
            op = IN if tok == _T_IN else NOT_IN
            vals = self.value_set()
        elif tok in (_T_EQ, _T_DEQ, _T_NEQ, _T_GT, _T_LT):
            op = {_T_EQ: EQUALS, _T_DEQ: EQUALS, _T_NEQ: NOT_EQUALS, _T_GT: GREATER,
                  _T_LT: LESS}[tok]
            vals = self.exact_value()
        else:
            raise SelectorError(f"found {lit!r}, expected: one of =, ==, !=, in, notin, >, <")

        number = 0
        if op in (GREATER, LESS):
            (text,) = vals
            parsed = parse_int64(text)
            if parsed is None:
                raise SelectorError(f"for '>', '<' operators the value must be an integer, "
                                    f"got {text!r}")
            number = parsed
        for v in vals:
            _validate_value(v)
        return Requirement(key, op, frozenset(vals), number)

    def value_set(self) -> set[str]:
        tok, lit = self.take()
        if tok != _T_OPEN:
            raise SelectorError(f"found {lit!r}, expected: '('")
        tok, lit = self.peek()
        if tok == _T_CLOSE:
            self.take()
            return {""}
        if tok not in (_T_IDENT, _T_COMMA):
            raise SelectorError(f"found {lit!r}, expected: ',', ')' or identifier")
        vals: set[str] = set()
        while True:
            tok, lit = self.take()
            if tok == _T_IDENT:
                vals.add(lit)
                nxt, nlit = self.peek()
                if nxt == _T_COMMA:
                    continue
                if nxt == _T_CLOSE:
                    break
                raise SelectorError(f"found {nlit!r}, expected: ',' or ')'")
            elif tok == _T_COMMA:
                if not vals:
                    vals.add("")  # "(,"
                nxt = self.peek()[0]
                if nxt == _T_CLOSE:
                    vals.add("")  # ",)"
                    break
                if nxt == _T_COMMA:
                    self.take()
                    vals.add("")  # ",,"
            else:
                raise SelectorError(f"found {lit!r}, expected: ',', or identifier")
        tok, lit = self.take()
        if tok != _T_CLOSE:
            raise SelectorError(f"found {lit!r}, expected: ')'")
        return vals

    def exact_value(self) -> set[str]:
        tok, lit = self.peek()
        if tok in (_T_END, _T_COMMA):
            return {""}
        tok, lit = self.take()
        if tok == _T_IDENT:
            return {lit}
        raise SelectorError(f"found {lit!r}, expected: identifier")


def parse(selector: str) -> tuple[Requirement, ...]:
    """Parse a Kubernetes label selector; raises SelectorError."""
    return _Parser(selector).parse()
