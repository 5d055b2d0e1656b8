// webb UI: wires the URL state, the filter bar, the map, the table, the details panel
// and the live stream together.
import { state, update, onChange, viewQuery } from "./state.js";
import * as live from "./live.js";
import * as map from "./map.js";
import * as table from "./table.js";
import * as details from "./details.js";
import * as filterbar from "./filterbar.js";
import { grammar, withDirection } from "./terms.js";

let snapshot = null;

function selectedTerms() {
  return snapshot ? snapshot.filters : [];
}

async function validate() {
  const r = await fetch(`/api/filters?${viewQuery()}`);
  if (r.ok) { filterbar.showError(""); return true; }
  const detail = (await r.json().catch(() => ({}))).detail || r.statusText;
  filterbar.showError(`Filters not applied: ${detail}`);
  return false;
}

async function openView() {
  filterbar.render();
  map.clear();
  table.reset();
  snapshot = null;
  if (!(await validate())) { live.stop(); return; }
  live.start(viewQuery(), {
    map: (snap) => {
      const had = snapshot;
      snapshot = snap;
      map.render(snap);
      if (!had) filterbar.render();  // chips of card filters read as service names
    },
    status: (st) => map.setStatus(st),
    flows: (msg) => {
      if (msg.initial) {
        table.setMaxRows(msg.max_rows);
        table.reset(msg.rows);
      } else table.add(msg.rows, msg.skipped);
    },
  });
}

async function loadNamespaces() {
  try {
    const r = await fetch("/api/namespaces");
    if (r.ok) filterbar.setNamespaces((await r.json()).namespaces);
  } catch { /* the indicator says what is wrong */ }
}

function init() {
  filterbar.init({
    get: () => ({ namespace: state.namespace, filters: state.filters }),
    onNamespace: (namespace) => update({ namespace }),
    onFilters: (filters) => update({ filters }),
    alias: (term) => {
      const c = snapshot && snapshot.cards.find((x) => x.filter === term);
      return c ? (c.namespace ? `${c.namespace}/${c.name}` : c.name) : "";
    },
  });
  map.init({
    selected: selectedTerms,
    onSelectCard: (card, cards) => {
      // one selected service at a time: clicking it again clears the selection
      const cardTerms = new Set(cards.map((c) => c.filter));
      const had = (snapshot?.filters || []).includes(card.filter);
      const rest = state.filters.filter((f) => !cardTerms.has(f) &&
        !cardTerms.has(withDirection(f, grammar.default_direction)));
      update({ filters: had ? rest : [...rest, card.filter] });
    },
    onFilter: (terms) => update({ filters: [...state.filters, ...terms.filter((t) => !state.filters.includes(t))] }),
    onViewChange: (v) => update({ view: v }),
  });
  table.init({
    maxRows: 1000,
    onSelect: (id) => { update({ flow: id }); },
    onColumns: (cols) => update({ columns: cols }),
  });
  details.init({ onClose: () => update({ flow: "" }) });
  if (state.columns) table.setColumns(state.columns);
  if (state.view) map.setTransform(state.view);
  onChange((patch, viewChanged) => {
    if (viewChanged) openView();
    if ("columns" in patch) table.setColumns(state.columns);
    if ("flow" in patch) {
      table.setActive(state.flow);
      if (state.flow) details.open(state.flow, table.find(state.flow), viewQuery());
      else details.close();
    }
    if ("view" in patch && patch.view && !viewChanged && patch.view !== null && "x" in patch.view &&
        JSON.stringify(patch.view) !== JSON.stringify(map.getTransform())) map.setTransform(patch.view);
  });
  openView();
  if (state.flow) details.open(state.flow, null, viewQuery());
  loadNamespaces();
  setInterval(loadNamespaces, 15000);
}

init();
