"""Hubble's JSON: protojson with proto field names ("source_port", "is_reply",
"Summary", "IP"), enum names, unset fields left out, fields in .proto declaration
order (as Go's protojson emits them), map keys sorted, printed compactly by Go's
json.Encoder (which also escapes <, > and & as \\u003c, \\u003e, \\u0026)."""
from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

# Well-known types whose JSON form is not an object of their fields.
_WKT = {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.Any",
        "google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue",
        "google.protobuf.FieldMask", "google.protobuf.BoolValue", "google.protobuf.BytesValue",
        "google.protobuf.DoubleValue", "google.protobuf.FloatValue", "google.protobuf.Int32Value",
        "google.protobuf.Int64Value", "google.protobuf.StringValue", "google.protobuf.UInt32Value",
        "google.protobuf.UInt64Value", "google.protobuf.Empty"}


def _is_repeated(f: FieldDescriptor) -> bool:
    # protobuf >= 5 has is_repeated; older versions only label.
    rep = getattr(f, "is_repeated", None)
    return bool(rep) if rep is not None else f.label == FieldDescriptor.LABEL_REPEATED


def _reorder(desc: Descriptor, obj: Any) -> Any:
    if desc.full_name in _WKT or not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    for f in desc.fields:  # declaration order
        if f.name not in obj:
            continue
        v = obj[f.name]
        mt = f.message_type
        if mt is not None and mt.GetOptions().map_entry:
            vf = mt.fields_by_name["value"]
            out[f.name] = {k: (_reorder(vf.message_type, v[k]) if vf.message_type else v[k])
                           for k in sorted(v)}
        elif mt is not None and _is_repeated(f):
            out[f.name] = [_reorder(mt, x) for x in v]
        elif mt is not None:
            out[f.name] = _reorder(mt, v)
        else:
            out[f.name] = v
    return out


def to_obj(msg: Message) -> dict[str, Any]:
    """The JSON object of a message as Hubble's protojson settings produce it."""
    d = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return _reorder(msg.DESCRIPTOR, d)


def _go_escape(s: str) -> str:
    return (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def dumps(obj: Any) -> str:
    """Compact JSON as Go's encoding/json writes it (no trailing newline)."""
    return _go_escape(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))


def dumps_indent(obj: Any) -> str:
    """json.MarshalIndent(v, "", "  "); a nil slice is "null" in Go."""
    if obj is None or obj == []:
        return "null"
    return _go_escape(json.dumps(obj, ensure_ascii=False, indent=2))


def message_json(msg: Message) -> str:
    return dumps(to_obj(msg))


def parse_messages(text: str, cls: type) -> list[Message]:
    """Every JSON value in text (one or several, concatenated), parsed into cls."""
    dec = json.JSONDecoder()
    out = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        obj, end = dec.raw_decode(text, pos)
        msg = cls()
        json_format.ParseDict(obj, msg)
        out.append(msg)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out
