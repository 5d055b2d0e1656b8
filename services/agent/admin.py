"""webb.admin.Admin: endpoints and identities of this agent (webb's own API)."""
from __future__ import annotations

import grpc

from webb.api.admin import admin_pb2 as apb
from webb.api.admin import admin_pb2_grpc

from .endpoint import Endpoint, EndpointError, EndpointRegistry, parse_endpoint


def endpoint_to_pb(ep: Endpoint, attached: bool, error: str = "") -> apb.Endpoint:
    return apb.Endpoint(
        id=ep.id, name=ep.name, namespace=ep.namespace, labels=dict(ep.labels),
        ips=list(ep.ips), interface=ep.interface, node=ep.node,
        service_account=ep.service_account,
        workload=apb.Workload(name=ep.workload_name, kind=ep.workload_kind),
        identity=ep.identity, identity_labels=list(ep.identity_labels),
        attached=attached, attach_error=error)


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, registry: EndpointRegistry, attach_state) -> None:  # type: ignore[no-untyped-def]
        self.registry = registry
        self.attach_state = attach_state  # callable: Endpoint -> (attached, error)

    def _pb(self, ep: Endpoint) -> apb.Endpoint:
        attached, err = self.attach_state(ep)
        return endpoint_to_pb(ep, attached, err)

    async def ListEndpoints(self, request, context):  # type: ignore[no-untyped-def]
        return apb.ListEndpointsResponse(endpoints=[self._pb(e) for e in self.registry.list()])

    async def PutEndpoint(self, request, context):  # type: ignore[no-untyped-def]
        e = request.endpoint
        raw = {"name": e.name, "namespace": e.namespace or "default", "labels": dict(e.labels),
               "ips": list(e.ips), "interface": e.interface, "node": e.node,
               "service_account": e.service_account or "default",
               "workload": {"name": e.workload.name, "kind": e.workload.kind}, "id": e.id}
        try:
            ep = parse_endpoint(raw)
        except EndpointError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        stored = await self.registry.upsert(ep)
        return apb.PutEndpointResponse(endpoint=self._pb(stored))

    async def DeleteEndpoint(self, request, context):  # type: ignore[no-untyped-def]
        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name is required")
        old = await self.registry.remove(f"{request.namespace or 'default'}/{request.name}")
        return apb.DeleteEndpointResponse(deleted=old is not None)

    async def ListIdentities(self, request, context):  # type: ignore[no-untyped-def]
        return apb.ListIdentitiesResponse(identities=[
            apb.Identity(id=i.id, labels=list(i.labels)) for i in self.registry.identities.all()])

    async def GetIdentity(self, request, context):  # type: ignore[no-untyped-def]
        ident = self.registry.identities.get(request.id)
        if ident is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"identity {request.id} not found")
        return apb.Identity(id=ident.id, labels=list(ident.labels))
