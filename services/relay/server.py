"""The relay's gRPC server: observer.Observer, health and reflection, plaintext or TLS.

Health follows Hubble Relay: "", Hubble's "hubble.server.Observer" (what `hubble
status` asks) and "observer.Observer" are SERVING while at
least one agent is connected (and, with a peer service, while its stream is
up), NOT_SERVING otherwise.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from webb.api.observer import observer_pb2, observer_pb2_grpc
from webb.api.stream import stream_pb2, stream_pb2_grpc
from webb.grpc_bytes import add_with_byte_responses
from webb.health import HUBBLE_OBSERVER
from webb.timeouts import wait_for

from .pool import PeerPool

log = logging.getLogger(__name__)

OBSERVER_SERVICE = observer_pb2.DESCRIPTOR.services_by_name["Observer"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# The names whose status follows the peers.
FLOW_STREAM_SERVICE = stream_pb2.DESCRIPTOR.services_by_name["FlowStream"].full_name
HEALTH_NAMES = ("", HUBBLE_OBSERVER, OBSERVER_SERVICE, FLOW_STREAM_SERVICE)


def grpc_address(listen: str) -> str:
    """Hubble-style ':4245' means every address."""
    return f"[::]{listen}" if listen.startswith(":") else listen


async def start_server(observer: observer_pb2_grpc.ObserverServicer, listen: str,
                       credentials: grpc.ServerCredentials | None = None
                       ) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    # GetFlows yields the agents' response bytes as they came
    add_with_byte_responses(observer_pb2_grpc.add_ObserverServicer_to_server, observer, server,
                            OBSERVER_SERVICE, ["GetFlows"])
    stream_pb2_grpc.add_FlowStreamServicer_to_server(observer, server)
    health_srv = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_srv, server)
    reflection.enable_server_reflection(
        (OBSERVER_SERVICE, FLOW_STREAM_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    addr = grpc_address(listen)
    try:
        if credentials is not None:
            port = server.add_secure_port(addr, credentials)
        else:
            port = server.add_insecure_port(addr)
    except RuntimeError as e:  # grpc's "Failed to bind"
        raise OSError(f"cannot listen on {listen}: address in use or not available") from e
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    for name in HEALTH_NAMES:
        await health_srv.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    return server, health_srv, port


async def track_health(health_srv: health.aio.HealthServicer, pool: PeerPool,
                       discovery_up: Callable[[], bool], interval: float = 1.0) -> None:
    """Keeps the health status in line with the pool (on change and every `interval`)."""
    changed = asyncio.Event()
    pool.watch(changed)
    last: int | None = None
    try:
        while True:
            changed.clear()
            ok = discovery_up() and any(p.connected for p in pool.list())
            status = (health_pb2.HealthCheckResponse.SERVING if ok
                      else health_pb2.HealthCheckResponse.NOT_SERVING)
            if status != last:
                for name in HEALTH_NAMES:
                    await health_srv.set(name, status)
                log.info("health: %s", health_pb2.HealthCheckResponse.ServingStatus.Name(status))
                last = status
            try:
                await wait_for(changed.wait(), interval)
            except asyncio.TimeoutError:
                pass
    finally:
        pool.unwatch(changed)
