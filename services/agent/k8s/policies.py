"""Network policies from the API server into the agent's policy engine.

Each policy object is its own source in the engine (`k8s:<kind>/<ns>/<name>`), so an
update replaces exactly that object's rules and a deletion removes them, the way a
policy file's do. A policy the engine rejects is logged with the reason and its
previous version (if any) stays in force, as for files.
"""
from __future__ import annotations

import logging
from typing import Any

from ..policy.engine import PolicyEngine
from ..policy.model import KIND_CCNP, KIND_CNP, KIND_KNP, PolicyError, parse_policy
from .client import Resource
from .informer import DELETED

log = logging.getLogger(__name__)

# (kind, where it is served)
POLICY_RESOURCES: tuple[tuple[str, Resource], ...] = (
    (KIND_KNP, Resource("networking.k8s.io/v1", "networkpolicies")),
    (KIND_CNP, Resource("cilium.io/v2", "ciliumnetworkpolicies")),
    (KIND_CCNP, Resource("cilium.io/v2", "ciliumclusterwidenetworkpolicies", namespaced=False)),
)


def policy_document(kind: str, group_version: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The object as a policy document: list items carry no apiVersion/kind, and the
    server's bookkeeping (managedFields) is no part of the policy."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "apiVersion": group_version, "kind": kind, "metadata": meta}


def source_of(kind: str, obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace") or ""
    return f"k8s:{kind}/{ns + '/' if ns else ''}{meta.get('name', '')}"


class PolicyFeed:
    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine
        self.rejected: dict[str, str] = {}  # source -> why

    def handler(self, kind: str, res: Resource):  # type: ignore[no-untyped-def]
        async def on_event(event: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
            src = source_of(kind, obj)
            if event == DELETED:
                self.rejected.pop(src, None)
                await self.engine.apply([], source=src, replace_source=True)
                return
            try:
                pol = parse_policy(policy_document(kind, res.group_version, obj))
                await self.engine.apply([pol], source=src, replace_source=True)
                self.rejected.pop(src, None)
            except PolicyError as e:
                self.rejected[src] = str(e)
                log.error("%s rejected, its previous version (if any) stays in force: %s",
                          src[4:], e)
        return on_event
