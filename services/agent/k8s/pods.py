"""Pods as endpoints: name, namespace, identity-relevant labels, IPs, node, workload.

Like Cilium, labels that change with every rollout or name one pod (pod-template-hash,
controller-revision-hash, the StatefulSet pod name, Job controller uids) are left
out of the security labels; otherwise each rollout would mint new identities.
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Any

from ..stores.endpoints import Endpoint
from ..pipeline.l7.visibility import ANNOTATION, VisibilityError, parse_visibility

log = logging.getLogger(__name__)

# Label keys (exact) and key prefixes that never count for identity, after Cilium's
# default label filter.
EXCLUDED_KEYS = frozenset({"pod-template-hash", "controller-revision-hash",
                           "pod-template-generation", "controller-uid", "job-name",
                           "statefulset.kubernetes.io/pod-name"})
EXCLUDED_PREFIXES = ("io.kubernetes", "kubernetes.io/", "batch.kubernetes.io/",
                     "controller.kubernetes.io/", "statefulset.kubernetes.io/",
                     "pod-template-generation")

WORKLOAD_KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob",
                  "ReplicationController")


def identity_labels(labels: dict[str, Any] | None) -> tuple[tuple[str, str], ...]:
    out = []
    for k, v in (labels or {}).items():
        k = str(k)
        if k in EXCLUDED_KEYS or k.startswith(EXCLUDED_PREFIXES):
            continue
        out.append((k, str(v)))
    return tuple(sorted(out))


def pod_ips(pod: dict[str, Any]) -> tuple[str, ...]:
    """status.podIPs (dual stack), else status.podIP; malformed entries are skipped."""
    st = pod.get("status") or {}
    raw = [p.get("ip") for p in st.get("podIPs") or [] if isinstance(p, dict)]
    if not raw and st.get("podIP"):
        raw = [st["podIP"]]
    ips = []
    for ip in raw:
        try:
            norm = str(ipaddress.ip_address(str(ip)))
        except ValueError:
            continue
        if norm not in ips:
            ips.append(norm)
    return tuple(ips)


def is_endpoint(pod: dict[str, Any]) -> bool:
    """Whether a pod is a network endpoint of its own: it has an address, is not on
    the host network (its address is the node's) and has not terminated."""
    spec, st = pod.get("spec") or {}, pod.get("status") or {}
    if spec.get("hostNetwork"):
        return False
    if st.get("phase") in ("Succeeded", "Failed"):
        return False
    return bool(pod_ips(pod))


def owner_workload(pod: dict[str, Any],
                   replicaset_owner: dict[tuple[str, str], tuple[str, str]] | None = None
                   ) -> tuple[str, str]:
    """(name, kind) of the workload that controls a pod, or ("", "").

    A ReplicaSet owned by a Deployment is reported as the Deployment: from the
    ReplicaSet's own owner when known (`replicaset_owner`: (namespace, rs name) ->
    (name, kind)), else because its name is the Deployment's plus the pod's
    pod-template-hash, which is how the Deployment controller names it.
    """
    meta = pod.get("metadata") or {}
    refs = [r for r in meta.get("ownerReferences") or [] if isinstance(r, dict)]
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if ref is None or not ref.get("name") or not ref.get("kind"):
        return "", ""
    name, kind = str(ref["name"]), str(ref["kind"])
    if kind == "ReplicaSet":
        known = (replicaset_owner or {}).get((meta.get("namespace") or "default", name))
        if known is not None:
            return known if known[0] else (name, kind)
        h = str((meta.get("labels") or {}).get("pod-template-hash") or "")
        if h and name.endswith(f"-{h}"):
            return name[: -len(h) - 1], "Deployment"
    return name, kind


def webb_annotations(pod: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The pod annotations the agent reads (L7 visibility); a malformed one is
    ignored with a warning rather than breaking the endpoint."""
    meta = pod.get("metadata") or {}
    value = (meta.get("annotations") or {}).get(ANNOTATION)
    if value is None:
        return ()
    try:
        parse_visibility(str(value))
    except VisibilityError as e:
        log.warning("pod %s/%s: annotation %s ignored: %s", meta.get("namespace"),
                    meta.get("name"), ANNOTATION, e)
        return ()
    return ((ANNOTATION, str(value)),)


def pod_endpoint(pod: dict[str, Any], cluster: str, interface: str = "",
                 replicaset_owner: dict[tuple[str, str], tuple[str, str]] | None = None
                 ) -> Endpoint | None:
    """The endpoint of a pod, or None if the pod is no endpoint (yet)."""
    if not is_endpoint(pod):
        return None
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    name = meta.get("name")
    if not name:
        return None
    wl_name, wl_kind = owner_workload(pod, replicaset_owner)
    return Endpoint(
        name=str(name), namespace=str(meta.get("namespace") or "default"),
        labels=identity_labels(meta.get("labels")), ips=pod_ips(pod), interface=interface,
        node=str(spec.get("nodeName") or ""),
        service_account=str(spec.get("serviceAccountName") or "default"),
        workload_name=wl_name, workload_kind=wl_kind, cluster=cluster,
        annotations=webb_annotations(pod))


def pod_key(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"
