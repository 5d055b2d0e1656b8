// Filter terms, [!][from:|to:|either:]kind=value. The grammar is defined once, on the
// server (services/ui/query.py); this module reads it from /api/filters/grammar before
// anything else runs, and parses, splits and formats with it.
export const grammar = await (await fetch("/api/filters/grammar")).json();

const TERM = new RegExp(grammar.term_pattern);
const SPLIT = new RegExp(grammar.split_pattern, "i");
const DIRECTIONAL = new Set(grammar.kinds.filter((k) => k.directional).map((k) => k.name));

function canonicalKind(kind) {
  const k = kind.trim().toLowerCase();
  return grammar.aliases[k] || k;
}

// { negate, direction, kind, value }; the server judges validity (kind "" or unknown
// kinds come back as typed).
export function parseTerm(text) {
  const m = TERM.exec(text.trim());
  if (!m) {
    const s = text.trim();
    const negate = s.startsWith(grammar.negate);
    return { negate, direction: grammar.default_direction, kind: negate ? s.slice(1).trim() : s, value: "" };
  }
  let direction = grammar.default_direction;
  if (m[2] !== undefined) {
    const d = m[2].trim().toLowerCase();
    direction = grammar.direction_aliases[d] || d;
  }
  return { negate: m[1] !== undefined, direction, kind: canonicalKind(m[3]), value: m[4].trim() };
}

export function formatTerm(t) {
  const dir = t.direction && t.direction !== grammar.default_direction && DIRECTIONAL.has(t.kind)
    ? t.direction + grammar.direction_sep : "";
  return `${t.negate ? grammar.negate : ""}${dir}${t.kind}${grammar.value_sep}${t.value}`;
}

// The same term with another direction ("from:" + a card's "label=app=x").
export function withDirection(term, direction) {
  return formatTerm({ ...parseTerm(term), direction });
}

// "from:pod=a to:port=80" -> two terms; spaces inside a value (label selectors such as
// "app in (a, b)") stay, since a new term must start with [!][dir:]kind=
export function splitTerms(text) {
  return text.trim().split(SPLIT).map((s) => s.trim()).filter(Boolean);
}
