// The flows table: Hubble UI's columns (chooser), newest first, live, pause/resume,
// and a bounded number of rows in memory and in the DOM.
import { esc, fmtTime, fmtCount } from "./util.js";

const ep = (e) => e.pod ? `<span class="ns">${esc(e.namespace)}/</span>${esc(e.pod)}` :
  esc(e.service || e.ip || "");
const svc = (e) => e.namespace ? `<span class="ns">${esc(e.namespace)}/</span>${esc(e.service)}` : esc(e.service);
const portText = (r) => r.protocol.startsWith("ICMP") && r.icmp ? `${r.protocol} ${r.icmp.type}/${r.icmp.code}` :
  (r.dport ? `${r.dport}/${r.protocol}` : r.protocol);

export const COLUMNS = [
  { id: "src-svc", title: "Source Service", html: (r) => svc(r.src) },
  { id: "src-pod", title: "Source Pod", html: (r) => ep(r.src) },
  { id: "src-ip", title: "Source IP", html: (r) => esc(r.src.ip), cls: "mono" },
  { id: "src-id", title: "Source Identity", html: (r) => esc(r.src.identity) },
  { id: "dst-svc", title: "Destination Service", html: (r) => svc(r.dst) },
  { id: "dst-pod", title: "Destination Pod", html: (r) => ep(r.dst) },
  { id: "dst-ip", title: "Destination IP", html: (r) => esc(r.dst.ip), cls: "mono" },
  { id: "dst-id", title: "Destination Identity", html: (r) => esc(r.dst.identity) },
  { id: "dport", title: "Destination Port", html: (r) => esc(portText(r)), cls: "mono" },
  { id: "l7", title: "L7 info", html: (r) => esc(r.l7) },
  { id: "direction", title: "Direction", html: (r) => esc(r.direction) + (r.reply ? " <span class=\"ns\">(reply)</span>" : "") },
  { id: "verdict", title: "Verdict", html: (r) => esc(r.verdict) + (r.drop_reason ? ` <span class="ns">${esc(r.drop_reason)}</span>` : "") },
  { id: "flags", title: "TCP Flags", html: (r) => esc(r.flags), cls: "mono" },
  { id: "node", title: "Node", html: (r) => esc(r.node) },
  { id: "summary", title: "Summary", html: (r) => esc(r.summary) },
  { id: "time", title: "Timestamp", html: (r) => esc(fmtTime(r.time)), cls: "mono" },
];
export const DEFAULT_COLUMNS = ["src-pod", "dst-pod", "dport", "l7", "direction", "verdict", "flags", "time"];

const table = document.getElementById("flows");
const thead = table.querySelector("thead tr");
const tbody = table.querySelector("tbody");
const countEl = document.getElementById("flow-count");
const pausedEl = document.getElementById("paused-note");
const pauseBtn = document.getElementById("pause");
const menu = document.getElementById("columns-menu");

let maxRows = 1000;
let rows = [];        // newest first, at most maxRows
let pending = [];     // newest first, rows that came while paused (bounded too)
let pendingCount = 0; // all flows that came while paused, also those not kept
let skippedTotal = 0;
let paused = false;
let holding = false;  // the pointer is on the rows: keep them still so they can be clicked
let columns = DEFAULT_COLUMNS;
let active = "";
let opts = { onSelect: () => {}, onColumns: () => {} };

function rowHTML(r) {
  const cls = `flow-row v-${esc(r.verdict)}${r.id === active ? " active" : ""}`;
  const cells = columns.map((id) => COLUMNS.find((c) => c.id === id)).filter(Boolean)
    .map((c) => `<td class="c-${c.id}${c.cls ? " " + c.cls : ""}">${c.html(r)}</td>`).join("");
  return `<tr class="${cls}" data-id="${esc(r.id)}" data-verdict="${esc(r.verdict)}" ` +
    `data-src-card="${esc(r.src.card)}" data-dst-card="${esc(r.dst.card)}">${cells}</tr>`;
}

function renderHead() {
  thead.innerHTML = columns.map((id) => COLUMNS.find((c) => c.id === id)).filter(Boolean)
    .map((c) => `<th class="c-${c.id}">${esc(c.title)}</th>`).join("");
}

function renderAll() {
  renderHead();
  tbody.innerHTML = rows.map(rowHTML).join("");
  renderCount();
}

function renderCount() {
  countEl.textContent = `${rows.length} shown` + (skippedTotal ? ` · ${fmtCount(skippedTotal)} more went by too fast to show` : "");
  pausedEl.hidden = !(paused || (holding && pendingCount));
  const n = `${fmtCount(pendingCount)} new flow${pendingCount === 1 ? "" : "s"}`;
  pausedEl.textContent = paused ? `Paused · ${n}` : `${n} · held while the pointer is on the table`;
}

function prepend(newRows) {
  // newRows: newest first
  if (!newRows.length) return;
  rows = newRows.concat(rows).slice(0, maxRows);
  tbody.insertAdjacentHTML("afterbegin", newRows.slice(0, maxRows).map(rowHTML).join(""));
  while (tbody.rows.length > maxRows) tbody.deleteRow(-1);
}

// add(rows oldest-first, skipped): live rows from the server
export function add(batch, skipped = 0) {
  const newest = batch.slice().reverse();
  if (paused || holding) {
    pending = newest.concat(pending).slice(0, maxRows);
    pendingCount += batch.length + skipped;
  } else {
    skippedTotal += skipped;
    prepend(newest);
  }
  renderCount();
}

export function reset(batch = []) {
  rows = batch.slice().reverse().slice(0, maxRows);
  pending = [];
  pendingCount = 0;
  skippedTotal = 0;
  renderAll();
}

function flush() {
  if (paused || holding) return;
  if (pending.length) prepend(pending);
  pending = [];
  pendingCount = 0;
  renderCount();
}

export function setPaused(p) {
  paused = p;
  pauseBtn.textContent = p ? "Resume" : "Pause";
  pauseBtn.setAttribute("aria-pressed", String(p));
  flush();
  renderCount();
}

export function isPaused() { return paused; }

export function setMaxRows(n) { if (n > 0) maxRows = n; }

export function setColumns(ids) {
  columns = ids && ids.length ? ids.filter((id) => COLUMNS.some((c) => c.id === id)) : DEFAULT_COLUMNS;
  renderAll();
  renderMenu();
}

export function setActive(id) {
  active = id || "";
  for (const tr of tbody.querySelectorAll("tr.active")) tr.classList.remove("active");
  if (active) {
    const tr = tbody.querySelector(`tr[data-id="${CSS.escape(active)}"]`);
    if (tr) tr.classList.add("active");
  }
}

export function find(id) { return rows.find((r) => r.id === id) || pending.find((r) => r.id === id) || null; }

function renderMenu() {
  menu.innerHTML = COLUMNS.map((c) => `<label><input type="checkbox" value="${c.id}"` +
    `${columns.includes(c.id) ? " checked" : ""}> ${esc(c.title)}</label>`).join("") +
    `<label><button class="btn" data-act="reset">Default columns</button></label>`;
}

export function init(o) {
  opts = { ...opts, ...o };
  maxRows = o.maxRows || maxRows;
  renderMenu();
  renderAll();
  pauseBtn.onclick = () => setPaused(!paused);
  document.getElementById("columns-btn").onclick = (e) => { e.stopPropagation(); menu.hidden = !menu.hidden; };
  document.addEventListener("click", (e) => { if (!e.target.closest(".col-chooser")) menu.hidden = true; });
  menu.addEventListener("change", () => {
    const picked = [...menu.querySelectorAll("input:checked")].map((i) => i.value);
    columns = COLUMNS.map((c) => c.id).filter((id) => picked.includes(id));
    renderAll();
    opts.onColumns(columns);
  });
  menu.addEventListener("click", (e) => {
    if (e.target.dataset.act === "reset") { setColumns(DEFAULT_COLUMNS); opts.onColumns(null); }
  });
  tbody.addEventListener("mouseenter", () => { holding = true; });
  tbody.addEventListener("mouseleave", () => { holding = false; flush(); });
  tbody.addEventListener("click", (e) => {
    const tr = e.target.closest("tr.flow-row");
    if (tr) opts.onSelect(tr.dataset.id);
  });
}
