"""Hubble's printer for GetFlowsResponse and ServerStatusResponse in the four -o
formats: compact (one line per flow), dict (KEY: value blocks), table (aligned
columns, printed at the end) and jsonpb (one JSON object per line). Relay node status
events go to stderr (only errors and unavailable nodes unless --debug); lost events
are shown in line with the flows."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from webb import protojson
from webb.api.flow import flow_pb2 as fpb
from webb.api.observer import observer_pb2 as opb
from webb.api.relay import relay_pb2 as rpb
from webb.durations import format_duration

from ..tabwriter import TabWriter
from ..timefmt import DEFAULT_FORMAT, format_time
from . import flow_fields as ff
from .color import Colorer

OUTPUTS = {"compact": "compact", "dict": "dict", "json": "jsonpb", "JSON": "jsonpb",
           "jsonpb": "jsonpb", "tab": "table", "table": "table"}
DICT_SEPARATOR = "------------"
NODE_NAMES_CUTOFF = 50


@dataclass
class PrintOptions:
    output: str = "compact"  # compact | dict | jsonpb | table
    time_format: str = DEFAULT_FORMAT
    color: bool = False
    node_name: bool = False
    ip_translation: bool = True
    policy_names: bool = False
    debug: bool = False
    silent_errors: bool = False


def group_digits(n: int) -> str:
    """1000000 -> "1,000,000" (Hubble's uint64Grouping)."""
    return f"{n:,}"


def join_with_cutoff(elems: list[str], sep: str, target: int) -> str:
    total, end = 0, len(elems)
    for i, e in enumerate(elems):
        total += len(e) + len(sep)
        if total > target and i > 0:
            end = i
            break
    joined = sep.join(elems[:end])
    omitted = len(elems) - end
    return f"{joined} (and {omitted} more)" if omitted else joined


class Printer:
    def __init__(self, opts: PrintOptions, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        self.o = opts
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        # Tables are never colored (the tab writer would count the escapes).
        self.c = Colorer(opts.color and opts.output in ("compact", "dict"))
        self.line = 0
        self.tab = TabWriter(2, 3) if opts.output == "table" else None

    def close(self) -> None:
        if self.tab is not None:
            self.out.write(self.tab.render())
            self.tab = TabWriter(2, 3)
        self.out.flush()

    def _ts(self, ts) -> str:
        return format_time(ts, self.o.time_format)

    def _error(self, text: str) -> None:
        if not self.o.silent_errors:
            self.err.write(text)
            self.err.flush()

    # -- GetFlows -------------------------------------------------------------------
    def write_response(self, res: opb.GetFlowsResponse) -> None:
        kind = res.WhichOneof("response_types")
        if kind == "flow":
            self.write_flow(res)
        elif kind == "node_status":
            self.write_node_status(res)
        elif kind == "lost_events":
            self.write_lost_events(res)

    def write_flow(self, res: opb.GetFlowsResponse) -> None:
        f = res.flow
        o, c = self.o, self.c
        if o.output == "jsonpb":
            self.out.write(protojson.message_json(res) + "\n")
            return
        src, dst = ff.host_names(f, c, o.ip_translation)
        ts = self._ts(f.time if f.HasField("time") else None)
        node = ff.safe(f.node_name)
        if o.output == "table":
            assert self.tab is not None
            if self.line == 0:
                self.tab.write("TIMESTAMP\t" + ("NODE\t" if o.node_name else "")
                               + "SOURCE\tDESTINATION\tTYPE\tVERDICT\tSUMMARY\n")
            self.tab.write(ts + "\t" + (node + "\t" if o.node_name else "")
                           + f"{src}\t{dst}\t{ff.flow_type(f)}\t"
                           f"{ff.verdict(f, c, o.policy_names)}\t{ff.summary(f, c)}\n")
        elif o.output == "dict":
            if self.line != 0:
                self.out.write(DICT_SEPARATOR + "\n")
            text = f"  TIMESTAMP: {ts}\n"
            if o.node_name:
                text += f"       NODE: {node}\n"
            text += (f"     SOURCE: {src}\n"
                     f"DESTINATION: {dst}\n"
                     f"       TYPE: {ff.flow_type(f)}\n"
                     f"    VERDICT: {ff.verdict(f, c, o.policy_names)}\n"
                     f"    SUMMARY: {ff.summary(f, c)}\n")
            self.out.write(text)
        else:  # compact
            sid, did = ff.identity(c, f.source.identity), ff.identity(c, f.destination.identity)
            arrow = "->"
            if not f.HasField("is_reply"):
                arrow = "<>"  # direction unknown
            elif f.is_reply.value:
                src, dst, sid, did, arrow = dst, src, did, sid, "<-"
            prefix = f"{ts} [{node}]" if o.node_name else ts
            self.out.write(f"{prefix}: {src} {sid} {arrow} {dst} {did} {ff.flow_type(f)} "
                           f"{ff.verdict(f, c, o.policy_names)} ({ff.summary(f, c)})\n")
        self.line += 1

    def write_node_status(self, res: opb.GetFlowsResponse) -> None:
        s = res.node_status
        if not self.o.debug and s.state_change not in (rpb.NODE_ERROR, rpb.NODE_UNAVAILABLE):
            return
        if self.o.output == "jsonpb":
            self._error(protojson.message_json(res) + "\n")
            return
        nodes = join_with_cutoff([ff.safe(n) for n in s.node_names], ", ", NODE_NAMES_CUTOFF)
        ts = self._ts(res.time if res.HasField("time") else None)
        if self.o.output == "dict":
            text = DICT_SEPARATOR + "\n" if self.line != 0 else ""
            if self.line == 0:
                self.line += 1
            message = protojson.dumps(s.message) if s.message else "N/A"
            self._error(text + f"  TIMESTAMP: {ts}\n"
                               f"      STATE: {ff.enum_name(rpb.NodeState, s.state_change)}\n"
                               f"      NODES: {nodes}\n"
                               f"    MESSAGE: {message}\n")
            return
        n = len(s.node_names)
        prefix = f"{ts} [{ff.safe(res.node_name)}]"
        msgs = {
            rpb.NODE_CONNECTED: f"{prefix}: Receiving flows from {n} nodes: {nodes}",
            rpb.NODE_UNAVAILABLE: f"{prefix}: {n} nodes are unavailable: {nodes}",
            rpb.NODE_GONE: f"{prefix}: {n} nodes removed from cluster: {nodes}",
            rpb.NODE_ERROR: f"{prefix}: Error {protojson.dumps(ff.safe(s.message))} on {n} "
                            f"nodes: {nodes}",
        }
        self._error(msgs.get(s.state_change, f"{prefix}: unknown node status event: "
                                             f"{protojson.message_json(s)}") + "\n")

    def write_lost_events(self, res: opb.GetFlowsResponse) -> None:
        le = res.lost_events
        o = self.o
        if o.output == "jsonpb":
            self.out.write(protojson.message_json(res) + "\n")
            return
        source = ff.enum_name(fpb.LostEventSource, le.source)
        cpu = le.cpu.value if le.HasField("cpu") else 0
        if o.output == "table":
            assert self.tab is not None
            if self.line == 0:
                self.tab.write("TIMESTAMP\t" + ("NODE\t" if o.node_name else "")
                               + "SOURCE\tDESTINATION\tTYPE\tVERDICT\tSUMMARY\n")
            self.tab.write("\t" + ("\t" if o.node_name else "")
                           + f"{source}\t\tEVENTS LOST\t\tCPU({cpu}) - {le.num_events_lost}\n")
        elif o.output == "dict":
            if self.line != 0:
                self.out.write(DICT_SEPARATOR + "\n")
            text = "  TIMESTAMP: \n"
            if o.node_name:
                text += "       NODE: \n"
            text += (f"     SOURCE: {source}\n"
                     f"       TYPE: EVENTS LOST\n"
                     f"    VERDICT: \n"
                     f"    SUMMARY: CPU({cpu}) - {le.num_events_lost}\n")
            self.out.write(text)
        else:
            self.out.write(f"EVENTS LOST: {source} CPU({cpu}) {le.num_events_lost}\n")
        self.line += 1

    # -- ServerStatus ---------------------------------------------------------------
    def write_server_status(self, res: opb.ServerStatusResponse) -> None:
        connected = (str(res.num_connected_nodes.value) if res.HasField("num_connected_nodes")
                     else "N/A")
        unavailable = (str(res.num_unavailable_nodes.value)
                       if res.HasField("num_unavailable_nodes") else "N/A")
        rate = f"{res.flows_rate:.2f}" if res.flows_rate > 0 else "N/A"
        out = self.o.output
        if out == "jsonpb":
            self.out.write(protojson.message_json(res) + "\n")
        elif out == "table":
            assert self.tab is not None
            self.tab.write(
                "NUM FLOWS\tMAX FLOWS\tSEEN FLOWS\tFLOWS PER SECOND\tUPTIME\tNUM CONNECTED NODES\t"
                "NUM UNAVAILABLE NODES\tVERSION\n"
                f"{group_digits(res.num_flows)}\t{group_digits(res.max_flows)}\t"
                f"{group_digits(res.seen_flows)}\t{rate}\t{uptime(res.uptime_ns)}\t{connected}\t"
                f"{unavailable}\t{ff.safe(res.version)}\n")
        elif out == "dict":
            self.out.write(
                f"          NUM FLOWS: {group_digits(res.num_flows)}\n"
                f"          MAX FLOWS: {group_digits(res.max_flows)}\n"
                f"         SEEN FLOWS: {group_digits(res.seen_flows)}\n"
                f"   FLOWS PER SECOND: {rate}\n"
                f"             UPTIME: {uptime(res.uptime_ns)}\n"
                f"NUM CONNECTED NODES: {connected}\n"
                f" NUM UNAVAIL. NODES: {unavailable}\n"
                f"            VERSION: {ff.safe(res.version)}\n")
        else:
            ratio = (f" ({res.num_flows / res.max_flows * 100:.2f}%)" if res.max_flows > 0 else "")
            text = (f"Current/Max Flows: {group_digits(res.num_flows)}/"
                    f"{group_digits(res.max_flows)}{ratio}\n")
            secs = res.uptime_ns / 1e9
            if rate == "N/A" and secs > 0:
                rate = f"{res.seen_flows / secs:.2f}"
            text += f"Flows/s: {rate}\n"
            if res.HasField("num_connected_nodes"):
                total = ""
                if res.HasField("num_unavailable_nodes"):
                    total = f"/{res.num_unavailable_nodes.value + res.num_connected_nodes.value}"
                text += f"Connected Nodes: {res.num_connected_nodes.value}{total}\n"
            if res.HasField("num_unavailable_nodes") and res.num_unavailable_nodes.value > 0:
                names = sorted(ff.safe(n) for n in res.unavailable_nodes)
                n_unavail = res.num_unavailable_nodes.value
                if names:
                    if n_unavail > len(names):
                        names.append(f"and {n_unavail - len(names)} more...")
                    text += f"Unavailable Nodes: {n_unavail}\n  - " + "\n  - ".join(names) + "\n"
                else:
                    text += f"Unavailable Nodes: {n_unavail}\n"
            self.out.write(text)


def uptime(ns: int) -> str:
    if ns > 2**63 - 1:
        return f"{ns}ns"
    return format_duration(ns)
