"""Checks a GetFlowsRequest before it fans out, with the agents' rules, so that a
bad request fails once with INVALID_ARGUMENT instead of once per node."""
from __future__ import annotations

from google.protobuf import field_mask_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.filters import FilterError, build_filter

from .number import ts_ns


class InvalidRequest(ValueError):
    pass


def validate(req: opb.GetFlowsRequest) -> None:
    if req.first and req.follow:
        raise InvalidRequest("first cannot be specified with follow")
    since = ts_ns(req.since) if req.HasField("since") else None
    until = ts_ns(req.until) if req.HasField("until") else None
    if req.number and since is not None and not req.first:
        raise InvalidRequest("number cannot be specified with since unless first is set")
    if since is not None and until is not None and since > until:
        raise InvalidRequest("since must be before until")
    for ts, what in ((req.since, "since"), (req.until, "until")):
        if not _valid_timestamp(ts):
            raise InvalidRequest(f"invalid {what} timestamp")
    try:
        build_filter(req.whitelist, req.blacklist)
    except (FilterError, ValueError) as e:
        raise InvalidRequest(str(e)) from e
    paths = list(req.field_mask.paths) if req.HasField("field_mask") else []
    if paths and not field_mask_pb2.FieldMask(paths=paths).IsValidForDescriptor(fpb.Flow.DESCRIPTOR):
        raise InvalidRequest(f"invalid field mask: {', '.join(paths)}")


def _valid_timestamp(ts: Timestamp) -> bool:
    # google.protobuf.Timestamp's documented range: years 1 to 9999.
    return -62135596800 <= ts.seconds <= 253402300799 and 0 <= ts.nanos < 1_000_000_000
