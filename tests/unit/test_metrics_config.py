"""Hubble's metrics option syntax, the config file, and start-up errors of webb-metrics."""
from __future__ import annotations

import subprocess

import pytest

from support import BIN
from webb_metrics.config import load_config_file, parse_metrics
from webb_metrics.errors import ConfigError
from webb_metrics.handlers import PLUGINS
from webb_metrics.pipeline import Pipeline

RECOMMENDED = ("dns:query;ignoreAAAA,drop,tcp,flow,port-distribution,icmp,httpV2:exemplars=true;"
               "labelsContext=source_ip,source_namespace,source_workload,destination_ip,"
               "destination_namespace,destination_workload,traffic_direction")


def parse(*texts: str):
    return [(s.name, s.options) for s in parse_metrics(texts, PLUGINS)]


def test_recommended_set_with_comma_separated_labels_context():
    assert parse(RECOMMENDED) == [
        ("dns", {"query": "", "ignoreAAAA": ""}), ("drop", {}), ("tcp", {}), ("flow", {}),
        ("port-distribution", {}), ("icmp", {}),
        ("httpV2", {"exemplars": "true",
                    "labelsContext": "source_ip,source_namespace,source_workload,destination_ip,"
                                     "destination_namespace,destination_workload,traffic_direction"}),
    ]


def test_spaces_escaped_commas_and_repeats():
    assert parse("dns:query drop", "flow:labelsContext=source_ip\\,traffic_direction;sourceContext=pod") == [
        ("dns", {"query": ""}), ("drop", {}),
        ("flow", {"labelsContext": "source_ip,traffic_direction", "sourceContext": "pod"})]


def test_labels_context_continues_until_next_option_or_metric():
    assert parse("flow:labelsContext=source_ip,destination_ip;destinationContext=dns|ip,tcp") == [
        ("flow", {"labelsContext": "source_ip,destination_ip", "destinationContext": "dns|ip"}),
        ("tcp", {})]


@pytest.mark.parametrize("text,msg", [
    ("flow,dorp", "metric 'dorp' does not exist"),
    ("flow,flow", "metric 'flow' enabled twice"),
    ("flow:sourceContext=pod;sourceContext=ip", "option 'sourceContext' given twice"),
    ("tcp,source_ip", "metric 'source_ip' does not exist"),
])
def test_parse_errors(text, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_metrics([text], PLUGINS)


@pytest.mark.parametrize("text,msg", [
    ("http,httpV2", "plugin http conflicts with plugin httpV2"),
    ("dns:bogus", "metric 'dns': unknown option 'bogus'"),
    ("httpV2:exemplars=yes", "exemplars must be true or false"),
    ("tcp:sourceContext=pods", "unknown context 'pods'"),
    ("flow:labelsContext=source_ip,dorp", "invalid labelsContext value: 'dorp'"),
])
def test_handler_option_errors(text, msg):
    with pytest.raises(ConfigError, match=msg):
        Pipeline(parse_metrics([text], PLUGINS))


def test_config_file(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("""
metrics:
- name: httpV2
  contextOptions:
  - {name: labelsContext, values: [source_namespace, destination_namespace]}
  - {name: exemplars, values: ["true"]}
- name: dns
  contextOptions:
  - {name: query}
  - {name: sourceContext, values: [workload-name, ip]}
  excludeFilters: [{destination_port: ["5353"]}]
""")
    specs = load_config_file(f, PLUGINS)
    assert [(s.name, s.options) for s in specs] == [
        ("httpV2", {"labelsContext": "source_namespace,destination_namespace", "exemplars": "true"}),
        ("dns", {"query": "", "sourceContext": "workload-name|ip"})]
    assert list(specs[1].exclude[0].destination_port) == ["5353"]
    Pipeline(specs)


@pytest.mark.parametrize("body,msg", [
    ("metrics: [{name: nope}]", "metric 'nope' does not exist"),
    ("foo: 1", "no 'metrics' list"),
    ("metrics: [{name: flow, includeFilters: [{no_such_field: 1}]}]", "bad includeFilters entry"),
    ("metrics: [{name: flow, includeFilters: [{source_ip: ['10.0.0.0/33']}]}]", "bad filter"),
    ("metrics: [", "metrics config"),
])
def test_config_file_errors(tmp_path, body, msg):
    f = tmp_path / "m.yaml"
    f.write_text(body)
    with pytest.raises(ConfigError, match=msg):
        Pipeline(load_config_file(f, PLUGINS))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "webb-metrics"), *args], capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("args,msg", [
    (["--metrics", "flow,dorp"], "webb-metrics: metric 'dorp' does not exist"),
    (["--metrics", "dns:query;sourceContext=nope"], "webb-metrics: unknown context 'nope'"),
    (["--metrics", "http,httpV2"], "webb-metrics: plugin http conflicts with plugin httpV2"),
    ([], "webb-metrics: no metrics enabled"),
    (["--metrics", "flow", "--listen-address", "9965"], "webb-metrics: --listen-address"),
    (["--metrics", "flow", "--series-grace-period", "soon"], "invalid duration 'soon'"),
])
def test_bad_options_are_a_one_line_start_up_error(args, msg):
    r = run_cli(*args)
    assert r.returncode == 2, r
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], r.stderr


def test_help_lists_metrics():
    r = run_cli("--help")
    assert r.returncode == 0
    assert "httpV2" in r.stdout and "--server" in r.stdout
