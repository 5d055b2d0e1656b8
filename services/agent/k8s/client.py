"""A thin asynchronous Kubernetes API client on kubernetes-asyncio's ApiClient.

The agent reads objects as plain JSON dictionaries rather than generated models:
policies must reach the policy parser exactly as written (camelCase, unknown
fields intact), custom resources (CiliumNetworkPolicy, WebbIdentity) have no
models, and the EndpointSlice API exists in two versions (discovery.k8s.io/v1 on
current clusters, v1beta1 on 1.20) that the generated client does not both carry.
kubernetes-asyncio still does the parts that are easy to get wrong: kubeconfig
and in-cluster configuration, client certificates, token refresh.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, AsyncIterator

from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

log = logging.getLogger(__name__)

IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
MAX_EVENT_BYTES = 16 << 20  # etcd caps objects at 1.5 MiB; JSON and the envelope add some


class KubeError(RuntimeError):
    """An API request that failed; `status` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API: /api/v1/pods, /apis/<group>/<version>/<plural>."""

    group_version: str  # "v1", "discovery.k8s.io/v1"
    plural: str
    namespaced: bool = True

    def path(self, namespace: str = "", name: str = "") -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        ns = f"/namespaces/{namespace}" if namespace and self.namespaced else ""
        return f"{base}{ns}/{self.plural}" + (f"/{name}" if name else "")


class KubeClient:
    def __init__(self, api: k8s_client.ApiClient) -> None:
        self.api = api

    @classmethod
    async def connect(cls, kubeconfig: str = "") -> "KubeClient":
        """In-cluster configuration when running in a pod (and no kubeconfig is given),
        else the kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config)."""
        conf = k8s_client.Configuration()
        try:
            if not kubeconfig and os.path.exists(IN_CLUSTER_TOKEN):
                k8s_config.load_incluster_config(client_configuration=conf)
            else:
                path = kubeconfig or os.environ.get("KUBECONFIG", "") or None
                await k8s_config.load_kube_config(config_file=path, client_configuration=conf,
                                                  persist_config=False)
        except (k8s_config.ConfigException, OSError, ValueError) as e:
            raise KubeError(0, f"no usable Kubernetes configuration "
                               f"({kubeconfig or 'in-cluster/$KUBECONFIG/~/.kube/config'}): {e}") from None
        return cls(k8s_client.ApiClient(conf))

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)

    async def close(self) -> None:
        await self.api.close()

    async def _send(self, method: str, path: str, query: dict[str, Any] | None = None,
                    body: Any = None, content_type: str = "application/json",
                    timeout: float | tuple[float, float] | None = 30.0) -> Any:
        """The raw aiohttp response (its body not read yet)."""
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        try:
            return await self.api.call_api(
                path, method, query_params=list((query or {}).items()), header_params=headers,
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # connection refused, TLS errors, timeouts
            raise KubeError(0, f"{method} {path}: {e.__class__.__name__}: {e}") from None

    async def request(self, method: str, path: str, query: dict[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json") -> Any:
        """The decoded JSON answer; KubeError for any status outside 2xx."""
        resp = await self._send(method, path, query, body, content_type)
        try:
            data = await resp.read()
        finally:
            resp.release()
        doc: Any = None
        if data:
            try:
                doc = json.loads(data)
            except ValueError:
                doc = None
        if not 200 <= resp.status < 300:
            msg = doc.get("message", "") if isinstance(doc, dict) else data[:200].decode("utf-8", "replace")
            reason = doc.get("reason", "") if isinstance(doc, dict) else ""
            raise KubeError(resp.status, f"{method} {path}: {msg}", reason)
        return doc

    async def get(self, path: str, **query: Any) -> Any:
        return await self.request("GET", path, query)

    async def create(self, path: str, body: dict[str, Any]) -> Any:
        return await self.request("POST", path, body=body)

    async def delete(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return await self.request("DELETE", path, body=body)

    async def served(self, group_version: str, plural: str) -> bool:
        """Whether the API server serves a resource (discovery); False if not."""
        path = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        try:
            doc = await self.get(path)
        except KubeError as e:
            if e.status == 404:
                return False
            raise
        return any(r.get("name") == plural for r in (doc or {}).get("resources", []))

    async def list(self, res: Resource) -> tuple[list[dict[str, Any]], str]:
        """Every object of a kind (all namespaces), and the list's resourceVersion.

        Pages through large lists with `limit`/`continue` so that no single answer
        holds a whole large cluster."""
        items: list[dict[str, Any]] = []
        query: dict[str, Any] = {"limit": 500}
        rv = ""
        for _ in range(100_000):  # bounded: a cluster of 50M objects is out of scope
            doc = await self.get(res.path(), **query)
            items.extend(doc.get("items") or [])
            meta = doc.get("metadata") or {}
            rv = meta.get("resourceVersion", "")
            if not meta.get("continue"):
                break
            query["continue"] = meta["continue"]
        return items, rv

    async def watch(self, res: Resource, resource_version: str,
                    timeout_s: int = 300) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(type, object) events from resource_version on, until the server ends the
        watch (after about timeout_s). Raises WatchExpired on 410 Gone."""
        query = {"watch": "true", "resourceVersion": resource_version,
                 "timeoutSeconds": timeout_s, "allowWatchBookmarks": "true"}
        resp = await self._send("GET", res.path(), query, timeout=(30.0, timeout_s + 30.0))
        try:
            if resp.status == 410:
                raise WatchExpired()
            if not 200 <= resp.status < 300:
                text = (await resp.read())[:300].decode("utf-8", "replace")
                raise KubeError(resp.status, f"watch {res.path()}: {text}")
            async for line in _lines(resp.content, MAX_EVENT_BYTES, res.path()):
                if not line.strip():
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    log.warning("watch %s: undecodable event skipped", res.path())
                    continue
                kind, obj = ev.get("type", ""), ev.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise WatchExpired()
                    raise KubeError(int(obj.get("code") or 0), f"watch {res.path()}: "
                                    f"{obj.get('message', '')}", obj.get("reason", ""))
                yield kind, obj
        finally:
            resp.release()


async def _lines(content: Any, max_bytes: int, what: str) -> AsyncIterator[bytes]:
    """The lines of a watch stream (one event each), however aiohttp chunks it: objects
    can exceed aiohttp's own line limit, and its readuntil(max_size=) is recent."""
    buf = bytearray()
    async for chunk in content.iter_any():
        buf += chunk
        while True:
            i = buf.find(b"\n")
            if i < 0:
                break
            line = bytes(buf[:i])
            del buf[:i + 1]
            yield line
        if len(buf) > max_bytes:
            raise KubeError(0, f"watch {what}: an event larger than {max_bytes} bytes")
    if buf.strip():
        yield bytes(buf)  # the server ended the watch after an unterminated event
