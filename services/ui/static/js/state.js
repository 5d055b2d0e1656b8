// The view's state lives in the URL so that it can be shared and reloaded:
//   ?namespace=bookinfo&filter=from:label=app=reviews&filter=!verdict=FORWARDED
//    &columns=src-pod,dst-pod,...&flow=<uuid>&view=<x>,<y>,<zoom>
const listeners = new Set();

function read() {
  const q = new URLSearchParams(location.search);
  const view = (q.get("view") || "").split(",").map(Number);
  return {
    namespace: q.get("namespace") || "",
    filters: q.getAll("filter").filter((f) => f.trim()),
    columns: q.get("columns") ? q.get("columns").split(",").filter(Boolean) : null,
    flow: q.get("flow") || "",
    view: view.length === 3 && view.every(Number.isFinite) ? { x: view[0], y: view[1], k: view[2] } : null,
  };
}

export const state = read();

function url() {
  const q = new URLSearchParams();
  if (state.namespace) q.set("namespace", state.namespace);
  for (const f of state.filters) q.append("filter", f);
  if (state.columns) q.set("columns", state.columns.join(","));
  if (state.flow) q.set("flow", state.flow);
  if (state.view) q.set("view", [state.view.x, state.view.y, state.view.k].map((v) => +v.toFixed(3)).join(","));
  const s = q.toString();
  return location.pathname + (s ? "?" + s : "");
}

// Query string of the server-side view (namespace + filters) for API calls.
export function viewQuery() {
  const q = new URLSearchParams();
  if (state.namespace) q.set("namespace", state.namespace);
  for (const f of state.filters) q.append("filter", f);
  return q.toString();
}

// update({...}): changes of namespace/filters are history entries (Back works);
// the rest replaces the current entry.
export function update(patch, { push = false } = {}) {
  const viewChanged = ("namespace" in patch && patch.namespace !== state.namespace) ||
    ("filters" in patch && JSON.stringify(patch.filters) !== JSON.stringify(state.filters));
  Object.assign(state, patch);
  const u = url();
  if (u !== location.pathname + location.search) {
    if (push || viewChanged) history.pushState(null, "", u);
    else history.replaceState(null, "", u);
  }
  for (const fn of listeners) fn(patch, viewChanged);
}

export function onChange(fn) { listeners.add(fn); }

window.addEventListener("popstate", () => {
  const before = viewQuery();
  Object.assign(state, read());
  const viewChanged = viewQuery() !== before;
  for (const fn of listeners) fn({ ...state }, viewChanged);
});
