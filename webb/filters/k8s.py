"""source_pod / destination_pod / source_service / destination_service.

Entries are ``[namespace/][name-prefix]``:
  "xwing"               pods in namespace "default" whose name starts with xwing
  "kube-system/coredns-" pods in kube-system starting with coredns-
  "kube-system/"        every pod in kube-system
An entry with neither namespace nor name ("" or "/") is rejected. Flows whose
endpoint has neither namespace nor name never match.
"""
from __future__ import annotations

from webb.filters._common import FilterFunc, values
from webb.filters.errors import FilterError

DEFAULT_NAMESPACE = "default"


def parse_namespaced_name(text: str) -> tuple[str, str]:
    """Split like Hubble's k8s.ParseNamespaceName: anything after a second
    slash is ignored, a bare name lives in the default namespace."""
    parts = text.split("/")
    if len(parts) > 1:
        return parts[0], parts[1]
    if parts[0] == "":
        return "", ""
    return DEFAULT_NAMESPACE, parts[0]


def compile_names(entries: list[str], field: str) -> tuple:
    specs = []
    for entry in entries:
        ns, prefix = parse_namespaced_name(entry)
        if not ns and not prefix:
            raise FilterError(
                f"invalid {field} filter: must be [namespace/][<name>], got {entry!r}")
        specs.append((ns, prefix))
    return tuple(dict.fromkeys(specs))


def _pod_filter(specs: tuple, side: str) -> FilterFunc:
    def by_pod(flow) -> bool:
        ep = getattr(flow, side)
        ns, name = ep.namespace, ep.pod_name
        if not ns and not name:
            return False
        for want_ns, prefix in specs:
            if want_ns == ns and name.startswith(prefix):
                return True
        return False

    return by_pod


def _service_filter(specs: tuple, side: str) -> FilterFunc:
    def by_service(flow) -> bool:
        svc = getattr(flow, side)
        ns, name = svc.namespace, svc.name
        if not ns and not name:
            return False
        for want_ns, prefix in specs:
            if want_ns == ns and name.startswith(prefix):
                return True
        return False

    return by_service


def build(ff) -> list[FilterFunc]:
    fs = []
    for field, side in (("source_pod", "source"), ("destination_pod", "destination")):
        entries = values(ff, field)
        if entries:
            fs.append(_pod_filter(compile_names(entries, field), side))
    for field, side in (("source_service", "source_service"),
                        ("destination_service", "destination_service")):
        entries = values(ff, field)
        if entries:
            fs.append(_service_filter(compile_names(entries, field), side))
    return fs


def pod_matches(specs: tuple, ns: str, name: str) -> bool:
    if not ns and not name:
        return False
    for want_ns, prefix in specs:
        if want_ns == ns and name.startswith(prefix):
            return True
    return False
