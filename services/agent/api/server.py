"""The agent's gRPC server: Hubble's services plus health, reflection and admin,
on a TCP address and a unix socket."""
from __future__ import annotations

import os

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from webb.api.admin import admin_pb2, admin_pb2_grpc
from webb.api.observer import observer_pb2, observer_pb2_grpc
from webb.api.peer import peer_pb2, peer_pb2_grpc
from webb.api.stream import stream_pb2, stream_pb2_grpc
from webb.grpc_bytes import add_with_byte_responses
from webb.health import HUBBLE_OBSERVER


def add_observer(observer: object, server: grpc.aio.Server) -> None:
    """Registers observer.Observer; GetFlows responses may be bytes already."""
    add_with_byte_responses(observer_pb2_grpc.add_ObserverServicer_to_server, observer, server,
                            observer_pb2.DESCRIPTOR.services_by_name["Observer"].full_name,
                            ["GetFlows"])


def grpc_address(listen: str) -> str:
    """Hubble-style ':4244' means every address."""
    return f"[::]{listen}" if listen.startswith(":") else listen


async def start_server(observer: object, peer: object, admin: object, listen: str,
                       unix_socket: str, credentials: grpc.ServerCredentials | None = None,
                       flow_stream: object | None = None
                       ) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """With credentials (webb.tls.server_credentials) the TCP address serves TLS or
    mTLS; the unix socket stays plaintext (only local users reach it, as Hubble's).
    Without flow_stream (--disable-batch-service) webb.stream.FlowStream is not
    served: clients get UNIMPLEMENTED, as from a plain Hubble server."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    add_observer(observer, server)
    if flow_stream is not None:
        stream_pb2_grpc.add_FlowStreamServicer_to_server(flow_stream, server)
    peer_pb2_grpc.add_PeerServicer_to_server(peer, server)
    admin_pb2_grpc.add_AdminServicer_to_server(admin, server)
    health_srv = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_srv, server)
    names = (
        observer_pb2.DESCRIPTOR.services_by_name["Observer"].full_name,
        peer_pb2.DESCRIPTOR.services_by_name["Peer"].full_name,
        admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    if flow_stream is not None:
        names += (stream_pb2.DESCRIPTOR.services_by_name["FlowStream"].full_name,)
    reflection.enable_server_reflection(names, server)
    if listen and credentials is not None:
        server.add_secure_port(grpc_address(listen), credentials)
    elif listen:
        server.add_insecure_port(grpc_address(listen))
    if unix_socket:
        os.makedirs(os.path.dirname(unix_socket) or ".", exist_ok=True)
        if os.path.exists(unix_socket):
            os.unlink(unix_socket)
        server.add_insecure_port(f"unix://{unix_socket}")
    await server.start()
    # "" and Hubble's own name (what `hubble status` asks) as a Hubble server does,
    # plus the services by their gRPC names.
    for name in ("", HUBBLE_OBSERVER, *names[:2], *names[5:]):
        await health_srv.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, health_srv
