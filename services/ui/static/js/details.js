// The details panel: the whole flow, summarised and as JSON (like `hubble observe -o json`).
import { esc, fmtTime } from "./util.js";

const panel = document.getElementById("details");
const body = document.getElementById("details-body");
let current = "";
let onClose = () => {};

function endpointHTML(title, e, ip, port) {
  if (!e) return "";
  const labels = (e.labels || []).map((l) => `<div class="mono">${esc(l)}</div>`).join("");
  const wl = (e.workloads || []).map((w) => `${esc(w.kind || "")}/${esc(w.name)}`).join(", ");
  return `<h4>${title}</h4><dl>` +
    (e.pod_name ? `<dt>pod</dt><dd>${esc(e.namespace || "")}/${esc(e.pod_name)}</dd>` : "") +
    `<dt>IP</dt><dd class="mono">${esc(ip || "")}${port ? `:${port}` : ""}</dd>` +
    `<dt>identity</dt><dd>${esc(e.identity ?? 0)}</dd>` +
    (wl ? `<dt>workloads</dt><dd>${wl}</dd>` : "") +
    (labels ? `<dt>labels</dt><dd>${labels}</dd>` : "") + `</dl>`;
}

function l4Of(f) {
  const l4 = f.l4 || {};
  const [proto, v] = Object.entries(l4)[0] || ["", {}];
  return { proto, sport: v.source_port, dport: v.destination_port, flags: v.flags, icmp: proto.startsWith("ICMP") ? v : null };
}

function render(f, row, source) {
  const l4 = l4Of(f);
  const ip = f.IP || {};
  const flags = l4.flags ? Object.keys(l4.flags).filter((k) => l4.flags[k]).join(", ") : "";
  const l7 = f.l7 ? `<h4>L7</h4><pre>${esc(JSON.stringify(f.l7, null, 2))}</pre>` : "";
  body.innerHTML = `<dl>` +
    `<dt>time</dt><dd class="mono">${esc(f.time || (row ? fmtTime(row.time) : ""))}</dd>` +
    `<dt>verdict</dt><dd class="verdict-${esc(f.verdict)}">${esc(f.verdict || "")}` +
    `${f.drop_reason_desc ? ` · ${esc(f.drop_reason_desc)}` : ""}</dd>` +
    `<dt>node</dt><dd>${esc(f.node_name || "")}</dd>` +
    `<dt>protocol</dt><dd>${esc(l4.proto)} ${flags ? `<span class="mono">[${esc(flags)}]</span>` : ""}</dd>` +
    `<dt>direction</dt><dd>${esc(f.traffic_direction || "")}${f.is_reply ? " (reply)" : ""}</dd>` +
    `<dt>observed at</dt><dd>${esc(f.trace_observation_point || "")}${f.interface ? ` on ${esc(f.interface.name || "")}` : ""}</dd>` +
    `<dt>type</dt><dd>${esc(f.Type || "")}</dd>` +
    `<dt>summary</dt><dd>${esc(f.Summary || "")}</dd>` +
    `<dt>uuid</dt><dd class="mono">${esc(f.uuid || "")}</dd></dl>` +
    endpointHTML("Source", f.source, ip.source, l4.sport) +
    endpointHTML("Destination", f.destination, ip.destination, l4.dport) + l7 +
    `<h4>JSON <span class="muted">(from the ${esc(source)})</span></h4><pre id="details-json">${esc(JSON.stringify(f, null, 2))}</pre>`;
}

export async function open(id, row, query) {
  current = id;
  panel.hidden = false;
  body.innerHTML = `<p class="muted">Loading flow ${esc(id)}…</p>`;
  try {
    const r = await fetch(`/api/flows/${encodeURIComponent(id)}${query ? "?" + query : ""}`);
    if (current !== id) return;
    if (!r.ok) {
      const msg = (await r.json().catch(() => ({}))).detail || r.statusText;
      body.innerHTML = `<p class="muted">${esc(msg)}</p>` + (row ? `<pre>${esc(JSON.stringify(row, null, 2))}</pre>` : "");
      return;
    }
    const data = await r.json();
    if (current === id) render(data.flow, row, data.source === "relay" ? "relay's history" : "UI's window");
  } catch (e) {
    body.innerHTML = `<p class="muted">could not load the flow: ${esc(e)}</p>`;
  }
}

export function close() {
  current = "";
  panel.hidden = true;
}

export function init(o) {
  onClose = o.onClose || onClose;
  document.getElementById("details-close").onclick = () => { close(); onClose(); };
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && current) { close(); onClose(); } });
}
