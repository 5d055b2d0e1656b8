"""Response models of the JSON API (they make the OpenAPI document at /docs)."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Port(_Open):
    port: int
    protocol: str = Field(description="TCP, UDP, SCTP, ICMPv4, ICMPv6 or IP")
    l7: list[str] = Field(description="L7 protocols seen on this port (HTTP, DNS)")
    flows: int


class Card(_Open):
    id: str = Field(description="namespace/app, or reserved:<name> for world, host, ...")
    kind: str = Field(description="service | world | host | reserved | unknown")
    name: str
    namespace: str
    filter: str = Field(description="filter term that selects this card's flows")
    identities: list[int]
    workloads: list[str]
    labels: list[list[Any]] = Field(description="[key, [values]] pairs")
    pods: int
    ports: list[Port]
    flows_in: int
    flows_out: int
    x: float = 0
    y: float = 0
    w: float = 0
    h: float = 0
    rows: list[dict[str, Any]] = Field(default_factory=list, description="rows of the card with y offsets")


class ArrowFlows(BaseModel):
    forwarded: int
    dropped: int
    other: int
    total: int


class Arrow(_Open):
    id: str
    source: str
    target: str
    port: int
    protocol: str
    verdict: str = Field(description="forwarded | dropped | mixed | other")
    flows: ArrowFlows
    drop_reasons: dict[str, int]
    http: Optional[dict[str, Any]] = Field(None, description="requests, statuses, latency, routes (method/path)")
    dns: Optional[dict[str, Any]] = None
    points: list[list[float]] = Field(default_factory=list, description="route of the arrow")
    label: list[str] = Field(default_factory=list)
    label_at: Optional[list[float]] = Field(None, description="centre of the label's box")
    label_size: Optional[list[float]] = Field(None, description="width and height of the label's box")


class ServiceMap(_Open):
    namespace: str
    filters: list[str]
    cards: list[Card]
    arrows: list[Arrow]
    bounds: dict[str, Any] = Field(description="width, height, columns; label: the metrics of arrow labels")
    flows_seen: int
    request: dict[str, Any] = Field(description="the FlowFilters sent to the relay")
    view: dict[str, Any]


class FlowEndpoint(_Open):
    pod: str
    namespace: str
    ip: str
    identity: int
    service: str
    workload: str


class FlowRow(_Open):
    id: str
    time: float = Field(description="seconds since the epoch")
    node: str
    verdict: str
    drop_reason: str
    src: FlowEndpoint
    dst: FlowEndpoint
    protocol: str
    sport: int
    dport: int
    flags: str
    l7: str
    direction: str
    reply: Optional[bool]
    summary: str


class Flows(_Open):
    rows: list[FlowRow]
    skipped: int
    seq: int
    request: dict[str, Any]
    view: dict[str, Any]


class Namespaces(BaseModel):
    namespaces: list[str]


class Status(_Open):
    relay: dict[str, Any]
    views: list[dict[str, Any]]
    process: dict[str, Any]


class FilterRequest(BaseModel):
    namespace: str
    filters: list[str]
    whitelist: list[dict[str, Any]]
    blacklist: list[dict[str, Any]]
    matches_nothing: bool
