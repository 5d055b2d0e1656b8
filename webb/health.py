"""Service names in the standard gRPC health service (grpc.health.v1.Health).

Hubble's servers register "hubble.server.Observer" (v1.ObserverServiceName in
Cilium's pkg/hubble/api/v1): the agent's Hubble server sets it SERVING, Hubble
Relay sets it and "" by whether peers are reachable, and `hubble status` asks
exactly that name. webb registers it beside its own names so Hubble's clients and
webb's work against webb and against Cilium alike.
"""
from __future__ import annotations

HUBBLE_OBSERVER = "hubble.server.Observer"
