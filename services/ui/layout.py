"""Layered layout of the service map (callers left, callees right), Sugiyama style.

``_geometry`` runs six named steps over one ``_Graph``:

1. ``_break_cycles``: the lighter half of every two-way pair, then the back edges a
   DFS finds (from sources first, busiest edges first), are reversed;
2. ``_assign_layers``: longest-path layering, sources pulled next to their callees;
3. ``_add_dummies``: a dummy node in every layer a long arrow crosses, so it runs
   between cards instead of through them;
4. ``_order_layers``: each layer ordered as a DFS from the left discovers it, then
   improved by up to 8 barycenter sweeps, keeping the order with fewest crossings.
   Counting crossings costs O(E²) per pair of layers, so graphs with more than
   ``SWEEP_MAX_EDGES`` arrows between distinct cards keep the DFS order (no sweeps);
5. ``_place_vertically``: cards near the average height of their neighbours without
   overlapping, in alternating sweeps;
6. ``_route_arrows``: from the caller's right edge to the port row on the callee's
   left edge, through the dummies.

Card geometry (rows and their offsets) is decided here too, so the browser draws each
row where the arrows expect it; so are the sizes of arrow labels (``LABEL``: the page
draws labels with these metrics, ``layout`` sends them in the bounds).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CARD_W = 260
COL_GAP = 200
ROW_GAP = 36
DUMMY_H = 12
DUMMY_GAP = 10
HEADER_H = 34
LINE_H = 18
PORT_H = 22
PAD = 8
MAX_LABEL_ROWS = 3
MAX_PORT_ROWS = 8
KIND_ORDER = {"world": 0, "host": 1, "reserved": 2, "service": 3, "unknown": 4}
SWEEP_MAX_EDGES = 600  # above this, layers keep their DFS order (see _order_layers)
# Arrow labels: monospace lines (11px in app.css) in a padded box. One definition for
# the overlap checks here and the drawing in map.js (sent as bounds["label"]).
LABEL = {"char_w": 6.7, "pad_x": 10.0, "line_h": 15.0, "pad_y": 4.0, "baseline": 14.0}


def label_size(lines: list[str]) -> tuple[float, float]:
    """Width and height of an arrow label's box."""
    return (LABEL["pad_x"] + LABEL["char_w"] * max((len(x) for x in lines), default=1),
            LABEL["line_h"] * len(lines) + LABEL["pad_y"])


def _short(items: list[str], limit: int = 3) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f" +{len(items) - limit}"


def card_rows(card: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The card's rows with their y offsets, and its height."""
    rows: list[dict[str, Any]] = []
    y = HEADER_H

    def line(kind: str, text: str) -> None:
        nonlocal y
        rows.append({"type": kind, "text": text, "y": y, "h": LINE_H})
        y += LINE_H

    if card["namespace"]:
        line("namespace", card["namespace"])
    ids = [str(i) for i in card["identities"]]
    if ids:
        line("identity", ("identity " if len(ids) == 1 else "identities ") + _short(ids, 4))
    if card["workloads"]:
        line("workload", _short([w.split("/", 1)[-1] for w in card["workloads"]], 2))
    if card["pods"]:
        n = card["pods"]
        nodes = card.get("nodes") or []
        line("pods", f"{n} pod{'s' if n != 1 else ''}" + (f" on {_short(nodes, 3)}" if nodes else ""))
    if card["ips"]:
        line("ips", _short(card["ips"], 2))
    labels = card["labels"]
    for k, vals in labels[:MAX_LABEL_ROWS]:
        line("label", f"{k}={','.join(vals)}" if vals and any(vals) else k)
    if len(labels) > MAX_LABEL_ROWS:
        line("label", f"+{len(labels) - MAX_LABEL_ROWS} more labels")
    ports = card["ports"]
    if ports:
        y += 6
        for p in ports[:MAX_PORT_ROWS]:
            rows.append({"type": "port", "port": p["port"], "protocol": p["protocol"],
                         "l7": p["l7"], "flows": p["flows"], "y": y, "h": PORT_H})
            y += PORT_H
        if len(ports) > MAX_PORT_ROWS:
            rows.append({"type": "more-ports", "text": f"+{len(ports) - MAX_PORT_ROWS} more ports",
                         "y": y, "h": LINE_H})
            y += LINE_H
    return rows, y + PAD


def _port_offset(card: dict[str, Any], port: int, protocol: str) -> float:
    """y of the middle of the card's row for this port, from the card's top."""
    last = None
    for r in card["rows"]:
        if r["type"] == "port":
            last = r
            if r["port"] == port and r["protocol"] == protocol:
                return r["y"] + r["h"] / 2
        elif r["type"] == "more-ports":
            return r["y"] + r["h"] / 2
    if last is not None:
        return last["y"] + last["h"] / 2
    return card["h"] / 2


class _Boxes:
    """Axis-aligned boxes (centre, size) in a coarse grid, for overlap queries."""

    CELL = 80.0

    def __init__(self) -> None:
        self.grid: dict[tuple[int, int], list[tuple[float, float, float, float]]] = {}

    def _cells(self, x: float, y: float, w: float, h: float) -> list[tuple[int, int]]:
        c = self.CELL
        return [(i, j) for i in range(int((x - w / 2) // c), int((x + w / 2) // c) + 1)
                for j in range(int((y - h / 2) // c), int((y + h / 2) // c) + 1)]

    def add(self, x: float, y: float, w: float, h: float) -> None:
        for cell in self._cells(x, y, w, h):
            self.grid.setdefault(cell, []).append((x, y, w, h))

    def free(self, x: float, y: float, w: float, h: float) -> bool:
        for cell in self._cells(x, y, w, h):
            for bx, by, bw, bh in self.grid.get(cell, ()):
                if abs(bx - x) * 2 < bw + w and abs(by - y) * 2 < bh + h:
                    return False
        return True


def _crossings(order: list[list[Any]], succ: dict[Any, list[Any]]) -> int:
    total = 0
    for i in range(len(order) - 1):
        pos = {n: j for j, n in enumerate(order[i + 1])}
        edges = sorted((a, pos[b]) for a, n in enumerate(order[i])
                       for b in succ.get(n, ()) if b in pos)
        for x in range(len(edges)):
            for y in range(x + 1, len(edges)):
                if edges[x][0] < edges[y][0] and edges[x][1] > edges[y][1]:
                    total += 1
    return total


Node = Any  # a card id, or ("dummy", source, target, layer)


@dataclass
class _Graph:
    by_id: dict[str, dict[str, Any]]
    names: list[str]                       # cards, in a stable order (kind, namespace, name)
    rank: dict[str, int]                   # position in names
    pairs: list[tuple[str, str]]           # distinct (source, target) cards, no self-loops
    weight: dict[tuple[str, str], int]     # flows per pair
    out: dict[str, list[str]]              # kept edges before cycle breaking
    inn: dict[str, list[str]]
    reversed_edges: set[tuple[str, str]] = field(default_factory=set)
    dag: list[tuple[str, str]] = field(default_factory=list)
    succ: dict[Node, list[Node]] = field(default_factory=dict)
    pred: dict[Node, list[Node]] = field(default_factory=dict)
    layer: dict[Node, int] = field(default_factory=dict)
    heights: dict[Node, float] = field(default_factory=dict)
    routes: dict[tuple[str, str], list[Node]] = field(default_factory=dict)
    order: list[list[Node]] = field(default_factory=list)
    top: dict[Node, float] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.order)


def _graph(cards: list[dict[str, Any]], arrows: list[dict[str, Any]]) -> _Graph:
    by_id = {c["id"]: c for c in cards}
    names = sorted(by_id, key=lambda k: (KIND_ORDER.get(by_id[k]["kind"], 9),
                                         by_id[k]["namespace"], by_id[k]["name"], k))
    rank = {n: i for i, n in enumerate(names)}
    pairs = sorted({(a["source"], a["target"]) for a in arrows
                    if a["source"] != a["target"] and a["source"] in by_id and a["target"] in by_id},
                   key=lambda e: (rank[e[0]], rank[e[1]]))
    # how much flows on each pair of cards: the busy direction of a cycle stays forward
    weight: dict[tuple[str, str], int] = {}
    for a in arrows:
        k = (a["source"], a["target"])
        weight[k] = weight.get(k, 0) + (a["flows"]["total"] if "flows" in a else 1)
    g = _Graph(by_id, names, rank, pairs, weight,
               out={n: [] for n in names}, inn={n: [] for n in names})
    for s, t in pairs:
        back = weight.get((t, s))
        if back is not None and (weight[(s, t)] < back or (weight[(s, t)] == back and rank[s] > rank[t])):
            g.reversed_edges.add((s, t))  # the lighter half of a two-way pair (ICMPv6 NDP, ...)
            continue
        g.out[s].append(t)
        g.inn[t].append(s)
    for n in names:
        g.out[n].sort(key=lambda t: (-weight[(n, t)], rank[t]))
    return g


def _break_cycles(g: _Graph) -> None:
    """Step 1: reverse DFS back edges; g.dag, g.succ, g.pred are the acyclic result."""
    out, inn, rank = g.out, g.inn, g.rank
    # callers first: more flows out than in
    caller = {n: sum(g.weight[(n, t)] for t in out[n]) - sum(g.weight[(m, n)] for m in inn[n])
              for n in g.names}
    state: dict[str, int] = {}
    starts = sorted(g.names, key=lambda n: (bool(inn[n]), -caller[n], rank[n]))
    for root in starts:
        if root in state:
            continue
        stack = [(root, iter(out[root]))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                g.reversed_edges.add((node, nxt))
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(out[nxt])))
    g.dag = sorted({(t, s) if (s, t) in g.reversed_edges else (s, t) for s, t in g.pairs},
                   key=lambda e: (rank[e[0]], rank[e[1]]))
    g.succ = {n: [] for n in g.names}
    g.pred = {n: [] for n in g.names}
    for s, t in g.dag:
        if t not in g.succ[s]:
            g.succ[s].append(t)
            g.pred[t].append(s)


def _assign_layers(g: _Graph) -> None:
    """Step 2: longest-path layering (Kahn order), then sources next to their callees."""
    succ, pred = g.succ, g.pred
    indeg = {n: len(pred[n]) for n in g.names}
    queue = [n for n in g.names if indeg[n] == 0]
    layer: dict[Node, int] = {n: 0 for n in g.names}
    i = 0
    while i < len(queue):
        n = queue[i]
        i += 1
        for t in succ[n]:
            layer[t] = max(layer[t], layer[n] + 1)
            indeg[t] -= 1
            if indeg[t] == 0:
                queue.append(t)
    for n in g.names:
        if not pred[n] and succ[n]:
            layer[n] = max(0, min(layer[t] for t in succ[n]) - 1)
    g.layer = layer


def _add_dummies(g: _Graph) -> None:
    """Step 3: chains of dummy nodes for arrows spanning more than one layer."""
    succ, pred, layer = g.succ, g.pred, g.layer
    g.heights = {n: g.by_id[n]["h"] for n in g.names}
    for s, t in g.dag:
        chain: list[Node] = [s]
        for lay in range(layer[s] + 1, layer[t]):
            d = ("dummy", s, t, lay)
            layer[d] = lay
            g.heights[d] = DUMMY_H
            succ[d], pred[d] = [], []
            chain.append(d)
        chain.append(t)
        if len(chain) > 2:
            succ[s].remove(t)
            pred[t].remove(s)
            for a, b in zip(chain, chain[1:]):
                succ[a].append(b)
                pred[b].append(a)
        g.routes[(s, t)] = chain


def _initial_order(g: _Graph) -> list[list[Node]]:
    """Each layer as a DFS from the leftmost layer discovers it."""
    n_layers = max(g.layer.values(), default=0) + 1
    order: list[list[Node]] = [[] for _ in range(n_layers)]
    placed: set[Node] = set()

    def visit(root: Node) -> None:
        stack = [root]
        while stack:
            n = stack.pop()
            if n in placed:
                continue
            placed.add(n)
            order[g.layer[n]].append(n)
            stack.extend(reversed(g.succ[n]))

    for n in sorted((n for n in g.names if g.layer[n] == 0), key=lambda n: g.rank[n]):
        visit(n)
    for n in g.names:
        visit(n)
    return order


def _barycenter_sweeps(order: list[list[Node]], g: _Graph, sweeps: int = 8) -> list[list[Node]]:
    """Alternating down/up sweeps sorting each layer by the mean position of its
    neighbours in the previous layer; the order with fewest crossings wins."""
    n_layers = len(order)
    best = [list(o) for o in order]
    best_x = _crossings(order, g.succ)
    if best_x == 0:
        return best
    for sweep in range(sweeps):
        down = sweep % 2 == 0
        for li in (range(1, n_layers) if down else range(n_layers - 2, -1, -1)):
            ref = order[li - 1] if down else order[li + 1]
            pos = {n: j for j, n in enumerate(ref)}
            nbrs = g.pred if down else g.succ

            def bary(item: tuple[int, Node]) -> float:
                j, n = item
                ps = [pos[m] for m in nbrs[n] if m in pos]
                return sum(ps) / len(ps) if ps else j * len(ref) / max(1, len(order[li]))
            order[li] = [n for _, n in sorted(enumerate(order[li]), key=lambda it: (bary(it), it[0]))]
        x = _crossings(order, g.succ)
        if x < best_x:
            best, best_x = [list(o) for o in order], x
    return best


def _order_layers(g: _Graph) -> None:
    """Step 4: DFS order, improved by barycenter sweeps unless the graph is large."""
    order = _initial_order(g)
    if len(g.dag) <= SWEEP_MAX_EDGES:
        order = _barycenter_sweeps(order, g)
    g.order = order


def _gap(a: Node, b: Node) -> float:
    return DUMMY_GAP if isinstance(a, tuple) or isinstance(b, tuple) else ROW_GAP


def _place_layer(g: _Graph, li: int, desired: dict[Node, float]) -> None:
    """Tops for one layer: as close to `desired` as the order and gaps allow."""
    top, heights, order = g.top, g.heights, g.order[li]
    prev = None
    for n in order:
        want = desired.get(n, top.get(n, 0.0))
        t = want if prev is None else max(want, top[prev] + heights[prev] + _gap(prev, n))
        top[n] = t
        prev = n
    # a uniform shift keeps the order and gaps, and centres the column on its wishes
    if order:
        shift = sum(desired.get(n, top[n]) - top[n] for n in order) / len(order)
        if shift < 0:
            for n in order:
                top[n] += shift


def _place_vertically(g: _Graph, sweeps: int = 6) -> None:
    """Step 5: stacked tops, then sweeps pulling each node to its neighbours' centre."""
    top, heights = g.top, g.heights
    for layer_nodes in g.order:
        y = 0.0
        for j, n in enumerate(layer_nodes):
            if j:
                y += _gap(layer_nodes[j - 1], n)
            top[n] = y
            y += heights[n]
    for it in range(sweeps):
        rng = range(g.n_layers) if it % 2 == 0 else range(g.n_layers - 1, -1, -1)
        nbrs = g.pred if it % 2 == 0 else g.succ
        for li in rng:
            desired = {}
            for n in g.order[li]:
                cs = [top[m] + heights[m] / 2 for m in nbrs[n]]
                if cs:
                    desired[n] = sum(cs) / len(cs) - heights[n] / 2
            _place_layer(g, li, desired)
    min_top = min(top.values(), default=0.0)
    for n in top:
        top[n] -= min_top


def _col_x(li: int) -> float:
    return li * (CARD_W + COL_GAP)


def _route_arrows(g: _Graph, arrows: list[dict[str, Any]]) -> dict[str, Any]:
    """Step 6: card coordinates, and each arrow's kind and polyline."""
    by_id, top, layer, routes = g.by_id, g.top, g.layer, g.routes
    pos = {n: (_col_x(layer[n]), round(top[n], 1), layer[n]) for n in g.names}
    # spread the starts of each card's outgoing routes along its right edge
    starts_y: dict[tuple[str, str], float] = {}
    outgoing: dict[str, list[str]] = {}
    for s_, t_ in g.pairs:
        if (s_, t_) not in g.reversed_edges:
            outgoing.setdefault(s_, []).append(t_)
    for n in g.names:
        c = by_id[n]
        y0 = pos[n][1]
        fwd = outgoing.get(n, [])
        fwd.sort(key=lambda t: top[routes[(n, t)][1]])
        for k, t in enumerate(fwd):
            starts_y[(n, t)] = y0 + HEADER_H / 2 + (c["h"] - HEADER_H) * (k + 1) / (len(fwd) + 1)
    routes_out: dict[str, tuple[str, list[list[float]]]] = {}
    for a in arrows:
        s, t = a["source"], a["target"]
        if s not in by_id or t not in by_id:
            continue
        (sx, sy, _), (tx, ty0, _) = pos[s], pos[t]
        cs = by_id[s]
        ty = ty0 + _port_offset(by_id[t], a["port"], a["protocol"])
        if s == t:  # a service calling itself: a loop over the card's top
            kind = "self"
            pts = [[sx + CARD_W, sy + HEADER_H / 2], [sx + CARD_W + 30, sy - 30], [sx - 30, sy - 30], [sx, ty]]
        elif (s, t) in g.reversed_edges:  # against the columns: right-to-left, into the right edge
            kind = "back"
            pts = [[sx, sy + cs["h"] / 2]]
            for d in reversed(routes[(t, s)][1:-1]):
                yc = top[d] + DUMMY_H / 2
                pts += [[_col_x(layer[d]) + CARD_W, yc], [_col_x(layer[d]), yc]]
            pts.append([tx + CARD_W, ty])
        else:
            kind = "forward"
            pts = [[sx + CARD_W, starts_y.get((s, t), sy + cs["h"] / 2)]]
            for d in routes[(s, t)][1:-1]:
                yc = top[d] + DUMMY_H / 2
                pts += [[_col_x(layer[d]), yc], [_col_x(layer[d]) + CARD_W, yc]]
            pts.append([tx, ty])
        routes_out[a["id"]] = (kind, [[round(x, 1), round(y, 1)] for x, y in pts])
    width = _col_x(g.n_layers - 1) + CARD_W if g.names else 0
    height = max((pos[n][1] + by_id[n]["h"] for n in g.names), default=0)
    return {"cards": pos, "arrows": routes_out,
            "bounds": {"width": width, "height": height, "columns": g.n_layers, "label": dict(LABEL)}}


def _geometry(cards: list[dict[str, Any]], arrows: list[dict[str, Any]]) -> dict[str, Any]:
    """Positions of the cards and routes of the arrows (steps 1-6)."""
    g = _graph(cards, arrows)
    _break_cycles(g)
    _assign_layers(g)
    _add_dummies(g)
    _order_layers(g)
    _place_vertically(g)
    return _route_arrows(g, arrows)


def _signature(cards: list[dict[str, Any]], arrows: list[dict[str, Any]]) -> tuple:
    """What the geometry depends on: cards, their heights and port rows, arrows."""
    return (tuple(sorted((c["id"], c["kind"], c["h"], tuple((r["type"], r.get("port"), r.get("protocol"))
                                                         for r in c["rows"] if r["type"] == "port"))
                         for c in cards)),
            tuple(sorted(a["id"] for a in arrows)))


def _place_labels(cards: list[dict[str, Any]], arrows: list[dict[str, Any]]) -> None:
    """Puts each arrow label (arrows with a non-empty "label") at the middle of its
    route, moved up or down to the nearest spot that overlaps no card and no label."""
    placed = _Boxes()
    for c in cards:
        placed.add(c["x"] + CARD_W / 2, c["y"] + c["h"] / 2, CARD_W + 8, c["h"] + 8)
    for a in sorted(arrows, key=lambda a: a["id"]):
        lines = a.get("label")
        pts = a.get("points")
        if not lines or not pts:
            continue
        k = (len(pts) - 2) // 2
        lx, ly = (pts[k][0] + pts[k + 1][0]) / 2, (pts[k][1] + pts[k + 1][1]) / 2
        w, h = a.get("label_size") or label_size(lines)
        step = 8.0
        for i in range(120):
            dy = (i + 1) // 2 * step * (1 if i % 2 else -1)
            if placed.free(lx, ly + dy, w, h):
                ly += dy
                break
        placed.add(lx, ly, w, h)
        a["label_at"] = [round(lx, 1), round(ly, 1)]


def layout(cards: list[dict[str, Any]], arrows: list[dict[str, Any]],
           cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """Adds x, y, w, h, column and rows to every card, and kind, points and label_at to
    every arrow (in place); returns the bounding box. With a ``cache`` dict the
    geometry is computed again only when cards, their port rows or arrows changed."""
    for c in cards:
        c["rows"], c["h"] = card_rows(c)
        c["w"] = CARD_W
    sig = _signature(cards, arrows)
    if cache is not None and cache.get("sig") == sig:
        geo = cache["geo"]
    else:
        geo = _geometry(cards, arrows)
        if cache is not None:
            cache["sig"], cache["geo"] = sig, geo
    for c in cards:
        c["x"], c["y"], c["column"] = geo["cards"][c["id"]]
    for a in arrows:
        a["kind"], a["points"] = geo["arrows"].get(a["id"], ("none", []))
        if a.get("label"):
            a["label_size"] = [round(v, 1) for v in label_size(a["label"])]
    # label positions depend on the geometry and on the labels' sizes only
    sizes = tuple((a["id"], len(a["label"]), max(map(len, a["label"]))) for a in arrows if a.get("label"))
    placed = geo.get("labels")
    if placed is not None and placed[0] == sizes:
        for a in arrows:
            if a["id"] in placed[1]:
                a["label_at"] = placed[1][a["id"]]
    else:
        _place_labels(cards, arrows)
        geo["labels"] = (sizes, {a["id"]: a["label_at"] for a in arrows if "label_at" in a})
    return dict(geo["bounds"])
