"""webb.labels: Cilium's label syntax, and the two defaults for a text without a source."""
from __future__ import annotations

import ipaddress

from webb.labels import LabelSet, parse_label, parse_select_label


def test_a_label_without_source_is_unspec():
    assert parse_label("k8s:app=foo") == ("k8s", "app", "foo")
    assert parse_label("reserved:host") == ("reserved", "host", "")
    assert parse_label("$host") == ("reserved", "host", "")
    assert parse_label("reserved.host") == ("reserved", "host", "")
    assert parse_label("reserved:=host") == ("reserved", "host", "")
    assert parse_label("app=a:b") == ("app=a", "b", "")  # Cilium: the first colon ends the source
    assert parse_label("plain") == ("unspec", "plain", "")
    assert parse_label("app=reviews") == ("unspec", "app", "reviews")
    assert parse_label("k8s.app=x", delim=".") == ("k8s", "app", "x")
    assert parse_label("k8s.app", delim=".") == ("k8s", "app", "")
    # the caller may name another default explicitly
    assert parse_label("app=reviews", default_source="container") == ("container", "app", "reviews")


def test_a_selector_key_without_source_selects_any():
    assert parse_select_label("app") == ("any", "app", "")
    assert parse_select_label("app=reviews") == ("any", "app", "reviews")
    assert parse_select_label("unspec:app") == ("any", "app", "")  # Cilium's parseSelectLabel
    assert parse_select_label(":app") == ("any", "app", "")
    assert parse_select_label("k8s:app") == ("k8s", "app", "")
    assert parse_select_label("any.app", delim=".") == ("any", "app", "")
    assert parse_select_label("$world") == ("reserved", "world", "")


def test_label_set_first_all_and_by_source():
    ls = LabelSet(["container:app=c", "k8s:app=reviews", "k8s:version=v1", "reserved:host",
                   "cidr:10.0.0.0/8", "cidr:10.1.0.0/16=x"])
    assert ls.get("any", "app") == "c"          # Hubble's filters: the first of the key
    assert ls.get("k8s", "app") == "reviews"
    assert ls.get("k8s", "nope") is None and ls.get("any", "nope") is None
    assert ls.values("any", "app") == ["c", "reviews"]  # the policy engine: every one
    assert ls.values("k8s", "app") == ["reviews"]
    assert ls.values("reserved", "host") == [""]
    assert ls.cidrs() == [(ipaddress.ip_network("10.0.0.0/8"), ""),
                          (ipaddress.ip_network("10.1.0.0/16"), "x")]
    assert LabelSet(["plain"]).get("unspec", "plain") == ""
