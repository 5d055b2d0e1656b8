"""Grafana dashboards, checked without Grafana: structure, variables, and that every panel
asks for metrics and labels the exporter serves with the dashboards' option set.
(tests/e2e/test_metrics.py runs every panel's PromQL through a real Prometheus.)"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from webb_metrics.config import parse_metrics
from webb_metrics.handlers import PLUGINS
from webb_metrics.pipeline import Pipeline
from webb_metrics.presets import DASHBOARDS

ROOT = Path(__file__).resolve().parents[2]
BOARDS = sorted((ROOT / "charts" / "webb" / "dashboards").glob("*.json"))
TARGET_LABELS = {"cluster", "job", "instance"}
# The exporter's own families (self_metrics.py) and their labels.
OWN = {"webb_metrics_source_up": {"server"}, "webb_metrics_series": {"metric"},
       "webb_metrics_flows_received_total": {"outcome"}}

SELECTOR = re.compile(r"\b([a-z_:][a-z0-9_:]*)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"")
BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def served_families() -> dict[str, set[str]]:
    p = Pipeline(parse_metrics(DASHBOARDS, PLUGINS))
    out: dict[str, set[str]] = {}
    for vec in p.store.vecs:
        labels = set(vec.labelnames)
        if vec.kind == "histogram":
            out[vec.name + "_bucket"] = labels | {"le"}
            out[vec.name + "_sum"] = out[vec.name + "_count"] = labels
        else:
            out[vec.name] = labels
    return {**out, **OWN}


def panels(board: dict) -> list[dict]:
    out = []
    for p in board["panels"]:
        out.extend(p.get("panels", []) if p["type"] == "row" else [p])
    return out


def exprs():
    for path in BOARDS:
        board = json.loads(path.read_text())
        for p in panels(board):
            for t in p["targets"]:
                yield pytest.param(path.name, p["title"], t["expr"], id=f"{path.stem}:{p['title']}")


def test_the_four_dashboards_exist():
    assert [p.name for p in BOARDS] == ["webb-cluster-overview.json", "webb-dns.json", "webb-http.json",
                                        "webb-namespace.json"]


@pytest.mark.parametrize("path", BOARDS, ids=lambda p: p.stem)
def test_structure_and_variables(path):
    board = json.loads(path.read_text())
    assert board["uid"] == path.stem and board["title"].startswith("webb / ")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["cluster"]["includeAll"] and variables["cluster"]["allValue"] == ".*"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels(board):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            assert 'cluster=~"$cluster"' in t["expr"], (p["title"], t["expr"])
            # Data must come from the exporter: no constant fallbacks that are never empty.
            assert "vector(" not in t["expr"], (p["title"], t["expr"])
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24


@pytest.mark.parametrize("board,title,expr", list(exprs()))
def test_panel_uses_served_metrics_and_labels(board, title, expr):
    families = served_families()
    used = SELECTOR.findall(expr)
    assert used, expr
    available = set(TARGET_LABELS)
    for metric, matchers in used:
        assert metric in families, f"{metric} is not served with the dashboards' option set"
        labels = families[metric] | TARGET_LABELS
        available |= labels
        for label, _ in MATCHER.findall(matchers):
            assert label in labels, f"{metric} has no label {label}"
    for group in BY.findall(expr):
        for label in (x.strip() for x in group.split(",") if x.strip()):
            assert label in available, f"by ({label}) in {expr}"
