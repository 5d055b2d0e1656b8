"""webb.admin.Admin: endpoints, identities and policies of this agent (webb's own API)."""
from __future__ import annotations

import json
import logging
from typing import Callable

import grpc

from webb.api.admin import admin_pb2 as apb
from webb.api.admin import admin_pb2_grpc

from ..stores.endpoints import Endpoint, EndpointError, EndpointRegistry, parse_endpoint
from ..policy.engine import PolicyEngine
from ..policy.model import Policy, PolicyError, parse_documents
from ..policy.store import PolicyStore

log = logging.getLogger(__name__)

# GetStatus's source: () -> (node name, version, counters by "<group>.<name>").
StatusSource = Callable[[], tuple[str, str, dict[str, int]]]


def endpoint_to_pb(ep: Endpoint, attached: bool, error: str = "",
                   policy: tuple[bool, bool, tuple[str, ...], tuple[str, ...]] | None = None
                   ) -> apb.Endpoint:
    ing, eg, ing_pols, eg_pols = policy or (False, False, (), ())
    return apb.Endpoint(
        policy_enforcement_ingress=ing, policy_enforcement_egress=eg,
        ingress_policies=list(ing_pols), egress_policies=list(eg_pols),
        id=ep.id, name=ep.name, namespace=ep.namespace, labels=dict(ep.labels),
        ips=list(ep.ips), interface=ep.interface, node=ep.node,
        service_account=ep.service_account,
        workload=apb.Workload(name=ep.workload_name, kind=ep.workload_kind),
        identity=ep.identity, identity_labels=list(ep.identity_labels),
        attached=attached, attach_error=error, annotations=dict(ep.annotations))


def policy_to_pb(p: Policy, engine: PolicyEngine | None = None) -> apb.Policy:
    ing: list[str] = []
    eg: list[str] = []
    if engine is not None:
        for ep in engine.registry.list():
            _, _, ip, ep_ = engine.endpoint_status(ep)
            ref = p.ref if p.kind != "NetworkPolicy" else f"{p.ref} (NetworkPolicy)"
            if ref in ip:
                ing.append(ep.key)
            if ref in ep_:
                eg.append(ep.key)
    return apb.Policy(kind=p.kind, name=p.name, namespace=p.namespace, revision=p.revision,
                      document=json.dumps(p.document, sort_keys=True), labels=p.labels(),
                      source=p.source, ingress_endpoints=ing, egress_endpoints=eg,
                      rule_count=p.rule_count())


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, registry: EndpointRegistry, attach_state,  # type: ignore[no-untyped-def]
                 policy: PolicyEngine | None = None, status: StatusSource | None = None,
                 store: PolicyStore | None = None) -> None:
        self.registry = registry
        self.attach_state = attach_state  # callable: Endpoint -> (attached, error)
        self.policy = policy
        # The cluster's policy store: apply/delete act on the cluster unless `local`.
        self.store = store
        self.status = status

    def _pb(self, ep: Endpoint) -> apb.Endpoint:
        attached, err = self.attach_state(ep)
        status = self.policy.endpoint_status(ep) if self.policy is not None else None
        return endpoint_to_pb(ep, attached, err, status)

    async def ListEndpoints(self, request, context):  # type: ignore[no-untyped-def]
        # This node's endpoints only, like `cilium endpoint list`.
        return apb.ListEndpointsResponse(endpoints=[self._pb(e) for e in self.registry.local()])

    async def PutEndpoint(self, request, context):  # type: ignore[no-untyped-def]
        e = request.endpoint
        raw = {"name": e.name, "namespace": e.namespace or "default", "labels": dict(e.labels),
               "ips": list(e.ips), "interface": e.interface, "node": e.node,
               "service_account": e.service_account or "default",
               "workload": {"name": e.workload.name, "kind": e.workload.kind}, "id": e.id,
               "annotations": dict(e.annotations)}
        try:
            ep = parse_endpoint(raw)
            stored = await self.registry.upsert(ep)
        except EndpointError as err:  # malformed, or its ID is another endpoint's
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        return apb.PutEndpointResponse(endpoint=self._pb(stored))

    async def DeleteEndpoint(self, request, context):  # type: ignore[no-untyped-def]
        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name is required")
        old = await self.registry.remove(f"{request.namespace or 'default'}/{request.name}")
        return apb.DeleteEndpointResponse(deleted=old is not None)

    def _local_identities(self) -> dict[int, tuple[str, ...]]:
        """CIDR identities of policies (node-local, like Cilium's)."""
        return self.policy.local_identities() if self.policy is not None else {}

    async def ListIdentities(self, request, context):  # type: ignore[no-untyped-def]
        out = [apb.Identity(id=i.id, labels=list(i.labels)) for i in self.registry.identities.all()]
        out += [apb.Identity(id=n, labels=list(labels))
                for n, labels in sorted(self._local_identities().items())]
        return apb.ListIdentitiesResponse(identities=out)

    async def GetIdentity(self, request, context):  # type: ignore[no-untyped-def]
        local = self._local_identities().get(request.id)
        if local is not None:
            return apb.Identity(id=request.id, labels=list(local))
        ident = self.registry.identities.get(request.id)
        if ident is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"identity {request.id} not found")
        return apb.Identity(id=ident.id, labels=list(ident.labels))

    # -- policies ------------------------------------------------------------------------
    async def _engine(self, context) -> PolicyEngine:  # type: ignore[no-untyped-def]
        if self.policy is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this agent enforces no policy")
        return self.policy  # type: ignore[return-value]

    async def ApplyPolicies(self, request, context):  # type: ignore[no-untyped-def]
        engine = await self._engine(context)
        try:
            policies = parse_documents(request.documents)
            if request.dry_run:
                pass
            elif self.store is not None and not request.local:
                policies = await self.store.apply(policies)
            else:
                policies = await engine.apply(policies)
        except PolicyError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return apb.ApplyPoliciesResponse(policies=[policy_to_pb(p, engine) for p in policies],
                                         revision=engine.revision)

    async def ListPolicies(self, request, context):  # type: ignore[no-untyped-def]
        engine = await self._engine(context)
        pols = [p for p in engine.list()
                if not request.namespace or p.namespace == request.namespace]
        return apb.ListPoliciesResponse(policies=[policy_to_pb(p, engine) for p in pols],
                                        revision=engine.revision)

    async def DeletePolicy(self, request, context):  # type: ignore[no-untyped-def]
        engine = await self._engine(context)
        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name is required")
        try:
            if self.store is not None and not request.local:
                gone = await self.store.delete(request.name, request.namespace, request.kind)
            else:
                gone = await engine.delete(request.name, request.namespace, request.kind)
        except PolicyError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if not gone:
            ns = request.namespace or "default"
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"policy {ns}/{request.name} not found")
        return apb.DeletePolicyResponse(deleted=[policy_to_pb(p) for p in gone],
                                        revision=engine.revision)

    # -- status --------------------------------------------------------------------------
    async def GetStatus(self, request, context):  # type: ignore[no-untyped-def]
        if self.status is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this agent keeps no counters")
        try:
            node, version, counters = self.status()  # type: ignore[misc]
        except Exception as e:  # noqa: BLE001 - report it, keep serving
            log.exception("collecting the agent's counters")
            await context.abort(grpc.StatusCode.INTERNAL, f"collecting counters: {e}")
        # uint64 on the wire: a negative value would be a bug, not a reason to fail.
        return apb.AgentStatus(node_name=node, version=version,
                               counters={k: max(0, int(v)) for k, v in counters.items()})
