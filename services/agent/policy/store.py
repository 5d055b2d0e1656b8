"""The cluster's policy store without Kubernetes: one directory every agent watches.

A policy is a cluster object. On Kubernetes the API server holds it and every agent
watches it (k8s/policies.py); in the demo, or on hosts that share a directory, this
store plays that part: one file per policy (`<kind>.<namespace>.<name>.yaml`), written
atomically, read by every agent's `watch_policy_dir`. An agent that is asked through
its admin API to apply or delete a policy (`webb policy apply`, like `kubectl apply`)
changes the store, so the whole cluster enforces it; it also applies the change to
itself at once, so its answer says what it enforces (created / configured / unchanged,
or the datapath's error). The other agents follow within their watch interval.
"""
from __future__ import annotations

import hashlib
import logging
import os
import yaml

from .engine import POLICY_FILE_SUFFIXES, PolicyEngine
from .model import Policy

log = logging.getLogger(__name__)

MAX_FILE_NAME = 240  # below every file system's 255-byte limit, with room for ".tmp"


class PolicyStore:
    def __init__(self, directory: str, engine: PolicyEngine) -> None:
        self.dir = directory
        self.engine = engine
        os.makedirs(directory, exist_ok=True)

    def path_of(self, p: Policy) -> str:
        """The policy's file: one per (kind, namespace, name), like an API object."""
        name = f"{p.kind}.{p.namespace or '_'}.{p.name}.yaml"
        if len(name) > MAX_FILE_NAME:  # names may have 253 characters
            digest = hashlib.sha256(f"{p.namespace}/{p.name}".encode()).hexdigest()
            name = f"{p.kind}.{digest}.yaml"
        return os.path.join(self.dir, name)

    def holds(self, p: Policy) -> bool:
        """Whether a policy the engine holds came from this store."""
        return os.path.dirname(p.source) == self.dir and p.source.endswith(POLICY_FILE_SUFFIXES)

    async def apply(self, policies: list[Policy]) -> list[Policy]:
        """Applies each policy here first (a policy the datapath refuses goes no
        further: PolicyError), then writes it for the cluster."""
        out = []
        for p in policies:
            path = self.path_of(p)
            out += await self.engine.apply([p], source=path, replace_source=True)
            _write_atomic(path, yaml.safe_dump(p.document, sort_keys=False))
        return out

    async def delete(self, name: str, namespace: str = "", kind: str = "") -> list[Policy]:
        """Deletes matching policies here and, for those of the store, in the cluster."""
        gone = await self.engine.delete(name, namespace, kind)
        for p in gone:
            if self.holds(p):
                try:
                    os.unlink(p.source)
                except FileNotFoundError:
                    pass
        return gone


def _write_atomic(path: str, text: str) -> None:
    # Watchers read whole files: a rename never shows them half of one.
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

