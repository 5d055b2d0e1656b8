// Filter terms as the server understands them: [!][from:|to:|either:]kind=value
export const KINDS = ["namespace", "pod", "label", "identity", "ip", "port", "protocol", "verdict",
  "http-status", "http-method", "http-path", "dns", "workload", "node"];

export function parseTerm(text) {
  let s = text.trim();
  const negate = s.startsWith("!");
  if (negate) s = s.slice(1).trim();
  let direction = "either";
  const eq = s.indexOf("=");
  const colon = s.indexOf(":");
  if (colon >= 0 && (eq < 0 || colon < eq)) {
    direction = s.slice(0, colon).toLowerCase();
    if (direction === "both") direction = "either";
    s = s.slice(colon + 1);
  }
  const i = s.indexOf("=");
  return { negate, direction, kind: i < 0 ? s : s.slice(0, i), value: i < 0 ? "" : s.slice(i + 1) };
}

export function formatTerm(t) {
  const dir = t.direction && t.direction !== "either" ? `${t.direction}:` : "";
  return `${t.negate ? "!" : ""}${dir}${t.kind}=${t.value}`;
}

// "from:pod=a to:port=80" -> two terms; spaces inside a value (label selectors such as
// "app in (a, b)") stay, since a new term must start with [!][dir:]kind=
const START = new RegExp(`\\s+(?=!?\\s*(?:(?:from|to|either|both):)?(?:${KINDS.join("|")}|ns|status|cidr|proto|method|path)=)`, "i");
export function splitTerms(text) {
  return text.trim().split(START).map((s) => s.trim()).filter(Boolean);
}
