// The service map: cards (HTML) and arrows (SVG) placed by the server's layered
// layout, with pan (drag) and zoom (wheel, buttons); the transform is kept in the URL.
import { esc, fmtCount, ago } from "./util.js";
import { formatTerm, withDirection } from "./terms.js";

const SVGNS = "http://www.w3.org/2000/svg";
const MARGIN = 60;

const mapEl = document.getElementById("map");
const viewport = document.getElementById("viewport");
const svg = document.getElementById("arrows");
const pathsG = document.getElementById("arrow-paths");
const labelsG = document.getElementById("arrow-labels");
const cardsEl = document.getElementById("cards");
const emptyEl = document.getElementById("map-empty");
const statsEl = document.getElementById("map-stats");
const pop = document.getElementById("arrow-pop");

let t = { x: 0, y: 0, k: 1 };
let userMoved = false;
let data = null;
let opts = { onSelectCard: () => {}, onFilter: () => {}, onViewChange: () => {}, selected: () => [] };
let pinned = null; // arrow id whose popover is pinned

function apply() {
  viewport.style.transform = `translate(${t.x}px, ${t.y}px) scale(${t.k})`;
}

export function getTransform() { return { ...t }; }

export function setTransform(v) {
  t = { ...v };
  userMoved = true;
  apply();
}

export function fit() {
  if (!data || !data.cards.length) return;
  const b = data.bounds;
  const w = mapEl.clientWidth, h = mapEl.clientHeight;
  const k = Math.min(1.25, Math.max(0.15, Math.min((w - 2 * MARGIN) / (b.width || 1), (h - 2 * MARGIN) / (b.height || 1))));
  t = { k, x: (w - b.width * k) / 2, y: (h - b.height * k) / 2 };
  apply();
}

function zoomAt(factor, cx, cy) {
  const k = Math.min(3, Math.max(0.1, t.k * factor));
  const f = k / t.k;
  t = { k, x: cx - (cx - t.x) * f, y: cy - (cy - t.y) * f };
  userMoved = true;
  apply();
  opts.onViewChange(getTransform());
}

function initPanZoom() {
  mapEl.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = mapEl.getBoundingClientRect();
    zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });
  let drag = null;
  mapEl.addEventListener("pointerdown", (e) => {
    if (e.button !== 0 || e.target.closest(".card, g.alabel, path.arrow-hit, .popover")) return;
    drag = { x: e.clientX, y: e.clientY, tx: t.x, ty: t.y, moved: false };
    mapEl.setPointerCapture(e.pointerId);
    mapEl.classList.add("panning");
  });
  mapEl.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    t = { ...t, x: drag.tx + dx, y: drag.ty + dy };
    apply();
  });
  const end = () => {
    if (!drag) return;
    mapEl.classList.remove("panning");
    if (drag.moved) { userMoved = true; opts.onViewChange(getTransform()); }
    else hidePopover(true);
    drag = null;
  };
  mapEl.addEventListener("pointerup", end);
  mapEl.addEventListener("pointercancel", end);
  const center = () => [mapEl.clientWidth / 2, mapEl.clientHeight / 2];
  document.getElementById("zoom-in").onclick = () => zoomAt(1.25, ...center());
  document.getElementById("zoom-out").onclick = () => zoomAt(0.8, ...center());
  document.getElementById("zoom-fit").onclick = () => { fit(); userMoved = false; opts.onViewChange(null); };
  mapEl.addEventListener("keydown", (e) => {
    if (e.key === "+" || e.key === "=") zoomAt(1.25, ...center());
    else if (e.key === "-") zoomAt(0.8, ...center());
    else if (e.key === "0") { fit(); userMoved = false; opts.onViewChange(null); }
  });
  window.addEventListener("resize", () => { if (!userMoved) fit(); });
}

// -- drawing -----------------------------------------------------------------------

function pathD(points) {
  if (!points.length) return "";
  let d = `M${points[0][0]},${points[0][1]}`;
  for (let i = 1; i < points.length; i++) {
    const [ax, ay] = points[i - 1], [bx, by] = points[i];
    const mx = (ax + bx) / 2;
    d += ` C${mx},${ay} ${mx},${by} ${bx},${by}`;
  }
  return d;
}

function cardRow(r) {
  const style = `top:${r.y}px`;
  if (r.type === "port") {
    const port = r.port ? `${r.port}/${r.protocol}` : r.protocol;
    const l7 = r.l7.map((p) => `<span class="badge l7">${esc(p)}</span>`).join("");
    return `<div class="row r-port" style="${style}" data-port="${r.port}" data-protocol="${esc(r.protocol)}">` +
      `<span class="port-num">${esc(port)}</span>${l7}<span class="pflows" title="flows to this port">${fmtCount(r.flows)}</span></div>`;
  }
  const icons = { namespace: "namespace", workload: "workload" };
  const prefix = icons[r.type] ? `<span class="muted">${icons[r.type]}</span> ` : "";
  return `<div class="row r-${r.type}" style="${style}" title="${esc(r.text)}">${prefix}<b>${esc(r.text)}</b></div>`;
}

const KIND_ICON = { service: "S", world: "W", host: "H", reserved: "R", unknown: "?" };

function cardTitle(c) {
  return [`${c.namespace ? c.namespace + "/" : ""}${c.name}`,
    c.identities.length ? `identities: ${c.identities.join(", ")}` : "",
    c.workloads.length ? `workloads: ${c.workloads.join(", ")}` : "",
    c.pod_names && c.pod_names.length ? `pods: ${c.pod_names.join(", ")}` : "",
    c.labels.length ? "labels:\n  " + c.labels.map(([k, v]) => `${k}=${v.join(",")}`).join("\n  ") : "",
    "click to filter by this service"].filter(Boolean).join("\n");
}

function cardInner(c) {
  return `<div class="card-head"><span class="kind-icon">${KIND_ICON[c.kind] || "?"}</span>` +
    `<span class="card-name">${esc(c.name)}</span>` +
    `<span class="card-io" title="flows in / out">↘${fmtCount(c.flows_in)} ↗${fmtCount(c.flows_out)}</span></div>` +
    c.rows.map(cardRow).join("");
}

// Elements are updated in place, keyed by id, so that a click or hover that spans a
// redraw (every second) stays on the same element.
const cardEls = new Map();   // id -> {el, html, key}
const arrowEls = new Map();  // id -> {g, path, hit, key}
const labelEls = new Map();  // id -> {g, key}

function svgEl(tag, attrs) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function updateCards(cards, selected) {
  const seen = new Set();
  for (const c of cards) {
    seen.add(c.id);
    let rec = cardEls.get(c.id);
    if (!rec) {
      const el = document.createElement("div");
      el.dataset.id = c.id;
      cardsEl.append(el);
      rec = { el, html: "", key: "" };
      cardEls.set(c.id, rec);
    }
    const cls = `card kind-${c.kind}${selected.has(c.id) ? " selected" : ""}`;
    const style = `left:${c.x}px;top:${c.y}px;width:${c.w}px;height:${c.h}px`;
    const key = cls + style;
    if (rec.key !== key) {
      rec.el.className = cls;
      rec.el.setAttribute("style", style);
      rec.el.dataset.name = c.name;
      rec.el.dataset.namespace = c.namespace;
      rec.key = key;
    }
    const html = cardInner(c);
    if (rec.html !== html) {
      rec.el.innerHTML = html;
      rec.html = html;
      rec.el.title = cardTitle(c);
    }
  }
  for (const [id, rec] of cardEls) if (!seen.has(id)) { rec.el.remove(); cardEls.delete(id); }
}

function updateArrows(arrows) {
  const seen = new Set(), seenLabels = new Set();
  for (const a of arrows) {
    if (!a.points || !a.points.length) continue;
    seen.add(a.id);
    let rec = arrowEls.get(a.id);
    if (!rec) {
      const g = svgEl("g", {});
      const path = svgEl("path", {});
      const hit = svgEl("path", { class: "arrow-hit" });
      Object.assign(path.dataset, { id: a.id, source: a.source, target: a.target, port: a.port });
      hit.dataset.id = a.id;
      g.append(path, hit);
      pathsG.append(g);
      rec = { g, path, hit, key: "" };
      arrowEls.set(a.id, rec);
    }
    const d = pathD(a.points);
    const width = Math.min(4.5, 1.4 + Math.log10(1 + a.flows.total) * 0.7).toFixed(2);
    const key = `${d}|${a.verdict}|${width}`;
    if (rec.key !== key) {
      const head = ["forwarded", "dropped", "mixed"].includes(a.verdict) ? a.verdict : "other";
      rec.path.setAttribute("d", d);
      rec.path.setAttribute("class", `arrow ${a.verdict}`);
      rec.path.setAttribute("style", `stroke-width:${width}px`);
      rec.path.setAttribute("marker-end", `url(#head-${head})`);
      rec.path.dataset.verdict = a.verdict;
      rec.hit.setAttribute("d", d);
      rec.key = key;
    }
    const lines = a.label || [];
    if (!lines.length) continue;
    seenLabels.add(a.id);
    let lrec = labelEls.get(a.id);
    if (!lrec) {
      const g = svgEl("g", {});
      g.dataset.id = a.id;
      labelsG.append(g);
      lrec = { g, key: "" };
      labelEls.set(a.id, lrec);
    }
    const [lx, ly] = a.label_at || a.points[0];
    const lkey = `${lx},${ly}|${a.verdict}|${lines.join("\n")}`;
    if (lrec.key !== lkey) {
      // the box the server's layout sized and kept clear of cards and other labels
      const [w, h] = a.label_size;
      const m = data.bounds.label;
      lrec.g.setAttribute("class", `alabel ${a.verdict}`);
      const parts = [svgEl("rect", { x: lx - w / 2, y: ly - h / 2, width: w, height: h, rx: 4 })];
      lines.forEach((line, i) => {
        const t = svgEl("text", { x: lx, y: ly - h / 2 + m.baseline + m.line_h * i, "text-anchor": "middle" });
        if (i > 0) t.setAttribute("class", "l7");
        t.textContent = line;
        parts.push(t);
      });
      lrec.g.replaceChildren(...parts);
      lrec.key = lkey;
    }
  }
  for (const [id, rec] of arrowEls) if (!seen.has(id)) { rec.g.remove(); arrowEls.delete(id); }
  for (const [id, rec] of labelEls) if (!seenLabels.has(id)) { rec.g.remove(); labelEls.delete(id); }
}

export function render(snapshot) {
  data = snapshot;
  const terms = new Set(opts.selected());
  const selected = new Set(snapshot.cards.filter((c) => terms.has(c.filter)).map((c) => c.id));
  updateCards(snapshot.cards, selected);
  updateArrows(snapshot.arrows);
  const b = snapshot.bounds;
  svg.setAttribute("width", Math.max(1, b.width));
  svg.setAttribute("height", Math.max(1, b.height));
  emptyEl.hidden = snapshot.cards.length > 0;
  statsEl.textContent = `${snapshot.cards.length} services · ${snapshot.arrows.length} arrows · ${fmtCount(snapshot.flows_seen)} flows`;
  if (!userMoved) fit();
  if (pinned) {
    const a = snapshot.arrows.find((x) => x.id === pinned);
    if (a) highlight(data.arrows.filter((o) => o.source === a.source && o.target === a.target).map((o) => o.id));
    else hidePopover(true);
  }
  svg.classList.toggle("focus", !!pinned);
}

// what the empty map says: waiting for the relay, or no flows match
export function setStatus(st) {
  const r = st.relay || {}, v = st.view || {};
  if (r.state === "unreachable") emptyEl.textContent = `Waiting for the relay at ${r.address}: ${r.error || "unreachable"}`;
  else if (v.state === "empty") emptyEl.textContent = "These filters can never match a flow.";
  else if (v.state === "error") emptyEl.textContent = `The relay refused this view: ${v.error}`;
  else emptyEl.textContent = "No flows for this view yet.";
}

export function clear() {
  data = null;
  cardsEl.replaceChildren();
  pathsG.replaceChildren();
  labelsG.replaceChildren();
  cardEls.clear();
  arrowEls.clear();
  labelEls.clear();
  hidePopover(true);
}

// -- arrow details ---------------------------------------------------------------

function highlight(ids) {
  const set = new Set([].concat(ids));
  for (const el of svg.querySelectorAll("path.arrow, g.alabel")) el.classList.toggle("hl", set.has(el.dataset.id));
}

function hidePopover(force) {
  if (pinned && !force) return;
  pinned = null;
  pop.hidden = true;
  svg.classList.remove("focus");
  for (const el of svg.querySelectorAll(".hl")) el.classList.remove("hl");
}

function statusesText(st) {
  return Object.entries(st).map(([k, v]) => `${k}×${fmtCount(v)}`).join(" ") || "—";
}

function latText(l) {
  return l ? `avg ${l.avg_ms.toFixed(1)} ms · p95 ≤${l.p95_ms} ms · max ${l.max_ms.toFixed(1)} ms` : "—";
}

function arrowSection(a) {
  let h = `<table><tr><th>port</th><td class="mono">${a.port ? a.port + "/" : ""}${esc(a.protocol)}</td></tr>` +
    `<tr><th>verdict</th><td class="verdict-${a.verdict.toUpperCase()}">${esc(a.verdict)}</td></tr>` +
    `<tr><th>flows</th><td>${a.flows.forwarded} forwarded · ${a.flows.dropped} dropped${a.flows.other ? ` · ${a.flows.other} other` : ""}</td></tr>`;
  for (const [r, n] of Object.entries(a.drop_reasons || {})) h += `<tr><th>drop reason</th><td>${esc(r)} ×${n}</td></tr>`;
  h += `<tr><th>last flow</th><td>${ago(a.last_seen)}</td></tr></table>`;
  if (a.http) {
    h += `<h4 style="margin-top:8px">HTTP · ${a.http.requests} requests · ${statusesText(a.http.statuses)}</h4>` +
      `<div class="muted">${latText(a.http.latency)}</div><table><tr><th>method</th><th>path</th><th>status</th><th>latency</th></tr>`;
    for (const r of a.http.routes) {
      h += `<tr><td>${esc(r.method)}</td><td class="mono">${esc(r.path)}</td><td>${statusesText(r.statuses)}</td>` +
        `<td>${r.latency ? `avg ${r.latency.avg_ms.toFixed(1)} ms` : "—"}</td></tr>`;
    }
    h += "</table>";
  }
  if (a.dns) {
    h += `<h4 style="margin-top:8px">DNS · ${a.dns.requests} queries · ${statusesText(a.dns.rcodes)}</h4><table>`;
    for (const [q, n] of Object.entries(a.dns.queries)) h += `<tr><td class="mono">${esc(q)}</td><td>${n}</td></tr>`;
    h += "</table>";
  }
  return h;
}

function popoverHTML(list) {
  const cards = Object.fromEntries(data.cards.map((c) => [c.id, c]));
  const a = list[0];
  const src = cards[a.source], dst = cards[a.target];
  let h = `<h4>${esc(src ? src.name : a.source)} → ${esc(dst ? dst.name : a.target)}</h4>`;
  h += list.slice(0, 6).map(arrowSection).join('<hr style="border:0;border-top:1px solid #e3e7ee">');
  if (list.length > 6) h += `<div class="muted">+${list.length - 6} more ports</div>`;
  h += `<div class="actions"><button class="btn" data-act="flows">Show these flows</button>` +
    `<button class="btn" data-act="close">Close</button></div>`;
  return h;
}

function showPopover(a, x, y, pin) {
  const list = [a, ...data.arrows.filter((o) => o !== a && o.source === a.source && o.target === a.target)];
  pop.innerHTML = popoverHTML(list);
  pop.hidden = false;
  const panel = mapEl.getBoundingClientRect();
  const px = Math.min(x + 14, panel.width - pop.offsetWidth - 8);
  const py = Math.min(y + 14, panel.height - pop.offsetHeight - 8);
  pop.style.left = `${Math.max(4, px)}px`;
  pop.style.top = `${Math.max(4, py)}px`;
  if (pin) pinned = a.id;
  highlight(list.map((o) => o.id));
  svg.classList.toggle("focus", !!pin);
  pop.onclick = (e) => {
    const act = e.target.dataset.act;
    if (act === "close") hidePopover(true);
    if (act === "flows") {
      const terms = [];
      if (src(a)) terms.push(withDirection(src(a).filter, "from"));
      if (dst(a)) terms.push(withDirection(dst(a).filter, "to"));
      if (a.port && list.length === 1) {
        terms.push(formatTerm({ negate: false, direction: "to", kind: "port", value: String(a.port) }));
      }
      hidePopover(true);
      opts.onFilter(terms);
    }
  };
}

const src = (a) => data.cards.find((c) => c.id === a.source);
const dst = (a) => data.cards.find((c) => c.id === a.target);

function arrowAt(e) {
  const el = e.target.closest("path.arrow-hit, g.alabel");
  if (!el || !data) return null;
  return data.arrows.find((a) => a.id === el.dataset.id) || null;
}

export function init(o) {
  opts = { ...opts, ...o };
  initPanZoom();
  cardsEl.addEventListener("click", (e) => {
    const card = e.target.closest(".card");
    if (!card || !data) return;
    const c = data.cards.find((x) => x.id === card.dataset.id);
    if (c) opts.onSelectCard(c, data.cards);
  });
  svg.addEventListener("mousemove", (e) => {
    if (pinned) return;
    const a = arrowAt(e);
    const r = mapEl.getBoundingClientRect();
    if (a) showPopover(a, e.clientX - r.left, e.clientY - r.top, false);
    else hidePopover(false);
  });
  svg.addEventListener("mouseleave", () => hidePopover(false));
  svg.addEventListener("click", (e) => {
    const a = arrowAt(e);
    const r = mapEl.getBoundingClientRect();
    if (a) { e.stopPropagation(); showPopover(a, e.clientX - r.left, e.clientY - r.top, true); }
  });
}
