// Namespace picker, filter chips and the quick verdict / HTTP-status pickers.
import { esc } from "./util.js";
import { grammar, parseTerm, formatTerm, splitTerms } from "./terms.js";

const nsSel = document.getElementById("namespace");
const chips = document.getElementById("chips");
const input = document.getElementById("filter-input");
const errEl = document.getElementById("filter-error");
const verdictSel = document.getElementById("quick-verdict");
const statusSel = document.getElementById("quick-status");
let opts = { onNamespace: () => {}, onFilters: () => {}, get: () => ({ namespace: "", filters: [] }),
  alias: () => "" };
let known = [];

export function showError(msg) {
  errEl.hidden = !msg;
  errEl.textContent = msg || "";
}

export function setNamespaces(list) {
  known = list;
  render();
}

function chipHTML(f, i) {
  const t = parseTerm(f);
  const dir = t.direction !== "either" ? `<span class="dir">${esc(t.direction)}:</span>` : "";
  // a card's own filter reads as the service it selects
  const alias = opts.alias(formatTerm({ ...t, negate: false, direction: "either" }));
  const body = alias ? `service=${esc(alias)}` : `${esc(t.kind)}=${esc(t.value)}`;
  return `<span class="chip${t.negate ? " negated" : ""}" data-i="${i}" title="${esc(f)}">` +
    `${t.negate ? "!" : ""}${dir}${body}` +
    `<button data-i="${i}" aria-label="remove filter ${esc(f)}">×</button></span>`;
}

export function render() {
  const { namespace, filters } = opts.get();
  const names = [...new Set([...known, ...(namespace ? [namespace] : [])])].sort();
  nsSel.innerHTML = `<option value="">All namespaces</option>` +
    names.map((n) => `<option value="${esc(n)}"${n === namespace ? " selected" : ""}>${esc(n)}</option>`).join("");
  nsSel.value = namespace;
  chips.innerHTML = filters.map(chipHTML).join("");
  const plain = (kind) => filters.map(parseTerm).filter((t) => t.kind === kind && !t.negate);
  const v = plain("verdict");
  verdictSel.value = v.length === 1 ? v[0].value.toUpperCase() : "";
  const s = plain("http-status");
  statusSel.value = s.length === 1 && [...statusSel.options].some((o) => o.value === s[0].value) ? s[0].value : "";
}

function setKind(kind, value) {
  const { filters } = opts.get();
  const rest = filters.filter((f) => { const t = parseTerm(f); return !(t.kind === kind && !t.negate); });
  opts.onFilters(value ? [...rest, formatTerm({ kind, value, direction: "either", negate: false })] : rest);
}

export function init(o) {
  opts = { ...opts, ...o };
  nsSel.onchange = () => opts.onNamespace(nsSel.value);
  chips.addEventListener("click", (e) => {
    const b = e.target.closest("button[data-i]");
    if (!b) return;
    const { filters } = opts.get();
    opts.onFilters(filters.filter((_, i) => i !== +b.dataset.i));
  });
  input.addEventListener("keydown", async (e) => {
    if (e.key === "Backspace" && !input.value) {
      const { filters } = opts.get();
      if (filters.length) opts.onFilters(filters.slice(0, -1));
      return;
    }
    if (e.key !== "Enter") return;
    const text = input.value.trim();
    if (!text) return;
    const { namespace, filters } = opts.get();
    const next = [...filters, ...splitTerms(text)];
    // the server is the judge of the syntax: ask it before applying
    const q = new URLSearchParams();
    if (namespace) q.set("namespace", namespace);
    for (const f of next) q.append("filter", f);
    const r = await fetch(`/api/filters?${q}`);
    if (!r.ok) {
      showError((await r.json().catch(() => ({}))).detail || "invalid filter");
      return;
    }
    showError("");
    input.value = "";
    opts.onFilters(next);
  });
  verdictSel.onchange = () => setKind("verdict", verdictSel.value);
  statusSel.onchange = () => setKind("http-status", statusSel.value);
  const help = document.getElementById("help");
  document.getElementById("help-syntax").textContent = grammar.syntax;
  document.getElementById("help-kinds").innerHTML = grammar.kinds.map((k) =>
    `<code>${esc(k.name)}</code>${k.hint ? ` (<i>${esc(k.hint)}</i>)` : ""}`).join(" ");
  document.getElementById("filter-help").onclick = () => { help.hidden = !help.hidden; };
}
