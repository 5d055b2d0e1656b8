// Live updates: one EventSource per view, a watchdog, and the connection indicator.
//   browser <-> UI server: EventSource (reconnects; we reopen it if it gives up)
//   UI server <-> relay:   the "status" events (connected / unreachable + error)
const el = document.getElementById("conn");
const text = el.querySelector(".conn-text");

let es = null;
let handlers = {};
let query = "";
let lastEvent = 0;
let serverUp = false;
let relay = null;
let view = null;
let retryTimer = null;
let watchdog = null;

function show(kind, msg, title = "") {
  el.className = `conn conn-${kind}`;
  text.textContent = msg;
  el.title = title || msg;
  el.dataset.state = kind;
}

function render() {
  if (!serverUp) {
    show(lastEvent ? "down" : "connecting",
      lastEvent ? "UI server unreachable — reconnecting…" : "Connecting…");
    return;
  }
  if (!relay) { show("connecting", "Connecting…"); return; }
  if (relay.state === "unreachable") {
    show("down", `Relay unreachable — retrying (${relay.address})`, relay.error);
    return;
  }
  if (relay.state !== "connected") { show("connecting", `Connecting to relay ${relay.address}…`); return; }
  const s = relay.server || {};
  const nodes = relay.nodes || [];
  const down = nodes.filter((n) => n.state !== "connected");
  const up = s.connected_nodes ?? nodes.length - down.length;
  const total = up + (s.unavailable_nodes ?? down.length);
  let msg = `Live · relay ${relay.address}`;
  if (total) msg += ` · ${up}/${total} nodes`;
  if (s.flows_rate !== undefined) msg += ` · ${Math.round(s.flows_rate)} flows/s`;
  const title = [`relay ${relay.address} (${s.version || "?"})`,
    ...nodes.map((n) => `node ${n.name}: ${n.state} ${n.address || ""}`)].join("\n");
  if (view && (view.state === "error" || view.state === "retrying")) {
    show(view.state === "error" ? "down" : "degraded", `View: ${view.error || view.state}`, view.error);
    return;
  }
  if (down.length || (s.unavailable && s.unavailable.length)) {
    const names = down.map((n) => n.name).concat(s.unavailable || []);
    show("degraded", `${msg} · unavailable: ${[...new Set(names)].join(", ")}`, title);
    return;
  }
  show("live", msg, title);
}

function open() {
  close();
  es = new EventSource(`/api/events${query ? "?" + query : ""}`);
  for (const [name, fn] of Object.entries(handlers)) {
    es.addEventListener(name, (ev) => {
      lastEvent = Date.now();
      if (!serverUp) { serverUp = true; render(); }
      let data;
      try { data = JSON.parse(ev.data); } catch { return; }
      if (name === "status") { relay = data.relay; view = data.view; render(); }
      fn(data);
    });
  }
  es.onerror = () => {
    serverUp = false;
    render();
    if (es && es.readyState === EventSource.CLOSED) scheduleReopen();
  };
}

function scheduleReopen() {
  clearTimeout(retryTimer);
  retryTimer = setTimeout(open, 2000);
}

function close() {
  clearTimeout(retryTimer);
  if (es) { es.close(); es = null; }
}

// start(query, {status, map, flows}) opens (or reopens) the live stream of a view.
export function start(q, h) {
  query = q;
  handlers = h;
  relay = null; view = null;
  open();
  clearInterval(watchdog);
  // status events come at least every 5 s: silence means a dead connection
  watchdog = setInterval(() => {
    if (lastEvent && Date.now() - lastEvent > 12000 && serverUp) {
      serverUp = false;
      render();
      open();
    }
  }, 2000);
}

export function stop() { close(); clearInterval(watchdog); }
