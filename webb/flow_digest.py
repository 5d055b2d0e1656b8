"""Reduced flow.Flow types: decode only the fields a consumer reads, in C.

A consumer (the exporter's handlers, the UI's service map) names the fields it reads;
``reduced_response_class`` builds, with ``descriptor_pool``, a message with the same
field numbers and types as ``observer.GetFlowsResponse`` -> ``flow.Flow`` minus every
other field. upb parses an encoded GetFlowsResponse into it, keeping what it does not
declare as unknown fields; ``DiscardUnknownFields`` drops them, and the message
serialized again is a *digest*: the bytes of a valid flow.Flow that holds only the
read fields. Flows with equal digests are the same to that consumer, and
``flow.Flow.FromString(digest)`` is a flow it treats exactly as each of them.

A sub-message whose presence the consumer never tests (an endpoint, a trace context)
may be declared ``BYTES``: it is then copied undecoded.

Per batch rather than per flow: each upb call costs ~0.1-0.3 µs whatever the message, so
a consumer that digests every flow parses, strips and serializes a whole batch in one
call each (``reduced_batch_class``, ``encode_entries``, ``split_entries``) and is left
with only what it must decide flow by flow.
"""
from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf import timestamp_pb2, wrappers_pb2

from webb.api.flow import flow_pb2 as fpb
from webb.api.stream import stream_pb2 as spb

BYTES = "bytes"   # the whole field, carried undecoded
KEEP = "keep"     # the field as declared

Reads = dict[str, dict[str, str]]


def reduced_response_class(reads: Reads, name: str) -> type:
    """A GetFlowsResponse-compatible message whose only field is ``flow`` (1), a
    flow.Flow reduced to ``reads``: message name (in package flow) -> field -> KEEP or
    BYTES; messages not named keep all their fields. ``name``: a package name of its
    own (one per consumer)."""
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto()
    fpb.DESCRIPTOR.CopyToProto(fdp)
    by_name = {m.name: m for m in fdp.message_type}
    for msg_name, fields in reads.items():
        msg = by_name.get(msg_name)
        if msg is None:
            raise RuntimeError(f"{name}: flow.proto has no message {msg_name}")
        missing = set(fields) - {f.name for f in msg.field}
        if missing:
            raise RuntimeError(f"{name}: flow.{msg_name} has no field(s) {sorted(missing)}")
        kept = []
        for f in msg.field:
            how = fields.get(f.name)
            if how is None:
                continue
            if how == BYTES:
                f.type = F.TYPE_BYTES
                f.ClearField("type_name")
            kept.append(f)
        del msg.field[:]
        msg.field.extend(kept)
    pool = descriptor_pool.DescriptorPool()
    for dep in (any_pb2, wrappers_pb2, timestamp_pb2):
        p = descriptor_pb2.FileDescriptorProto()
        dep.DESCRIPTOR.CopyToProto(p)
        pool.Add(p)
    pool.Add(fdp)
    resp = descriptor_pb2.FileDescriptorProto(name=f"{name}.proto", package=name,
                                              dependency=[fdp.name], syntax="proto3")
    m = resp.message_type.add(name="Response")
    m.field.add(name="flow", number=1, type=F.TYPE_MESSAGE, type_name=".flow.Flow",
                label=F.LABEL_OPTIONAL)
    pool.Add(resp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{name}.Response"))


def reduced_batch_class(response: type, name: str) -> type:
    """A message whose only field is ``responses`` (1), repeated ``response`` (a class from
    ``reduced_response_class``). webb.stream.FlowBatch carries its entries as field 1
    too, so ``encode_entries(raws)`` (or a FlowBatch's own encoding: its other fields are
    unknown here) parses into it in one call, every entry reduced."""
    F = descriptor_pb2.FieldDescriptorProto
    d = response.DESCRIPTOR
    fdp = descriptor_pb2.FileDescriptorProto(name=f"{name}.proto", package=name,
                                             dependency=[d.file.name], syntax="proto3")
    m = fdp.message_type.add(name="Batch")
    m.field.add(name="responses", number=1, type=F.TYPE_MESSAGE, type_name=f".{d.full_name}",
                label=F.LABEL_REPEATED)
    d.file.pool.Add(fdp)
    return message_factory.GetMessageClass(d.file.pool.FindMessageTypeByName(f"{name}.Batch"))


def encode_entries(raws: list[bytes]) -> bytes:
    """Each encoded entry as field 1, concatenated: a FlowBatch that holds only them, and
    what ``reduced_batch_class`` messages parse from (one C call for the list)."""
    return spb.FlowBatch(responses=raws).SerializeToString()


def split_entries(data: bytes) -> list[bytes]:
    """A ``reduced_batch_class`` message's encoding back into its entries' encodings."""
    return list(spb.FlowBatch.FromString(data).responses)
