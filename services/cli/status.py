"""`webb status`: is the server healthy, and how full is its flow buffer (hubble status).

Talking to an agent (not the relay), the output goes on with webb's own counters
from webb.admin.Admin/GetStatus (agent_counters.py): what the datapath sent and
why some HTTP/DNS traffic gave no L7 flow. Hubble's lines stay exactly as they are.
"""
from __future__ import annotations

import argparse

from grpc_health.v1 import health_pb2, health_pb2_grpc

from webb.api.observer import observer_pb2 as opb
from webb.api.observer import observer_pb2_grpc
from webb.health import HUBBLE_OBSERVER

from .agent_counters import agent_status, format_counters
from .cli_parser import add_command
from .connection import add_server_flags, open_connection, unary
from .errors import CLIError
from .formats.printer import PrintOptions, Printer

# The name Hubble's CLI asks, so `webb status` also works against Cilium's servers.
OBSERVER_SERVICE = HUBBLE_OBSERVER
OUTPUTS = {"compact": "compact", "dict": "dict", "json": "jsonpb", "JSON": "jsonpb",
           "jsonpb": "jsonpb", "tab": "table", "table": "table"}

DESCRIPTION = """\
Show the status of the server: its gRPC health, then the flows in its buffer (current
and maximum), flows seen, the flow rate, uptime and, through the relay, the connected
and unavailable nodes. A basic connectivity check: the exit status is non-zero when
the server cannot be reached or is not serving.

On a webb agent (--server <agent>:4244), compact and dict output go on with the
agent's counters: datapath events and losses, and the L7 section (HTTP requests and
responses, what could not be parsed and why, DNS, names from DNS answers)."""

EXAMPLES = """
  webb status
  webb status -o dict
  webb status --server localhost:4244        # one agent
  webb status --server tls://relay.example:4245 --tls-ca-cert-files ca.pem"""


def add_parser(sub) -> None:
    p = add_command(sub, "status", "health and flow buffer of the server (hubble status)",
                    DESCRIPTION, EXAMPLES)
    p.add_argument("-o", "--output", default="compact", metavar="FORMAT",
                   help="output format, one of:\n"
                        "  compact:  human readable lines (default)\n"
                        "  dict:     KEY: value lines\n"
                        "  json:     JSON encoded ServerStatusResponse\n"
                        "  table:    tab-aligned columns")
    add_server_flags(p)


def run(a: argparse.Namespace) -> int:
    output = OUTPUTS.get(a.output)
    if output is None:
        raise CLIError(f"invalid output format: {a.output}", 2)
    with open_connection(a) as conn:
        health = health_pb2_grpc.HealthStub(conn.channel)
        try:
            resp = unary(conn, health.Check, health_pb2.HealthCheckRequest(service=OBSERVER_SERVICE))
        except CLIError as e:
            raise CLIError(f"failed getting status: {e}") from None
        healthy = resp.status == health_pb2.HealthCheckResponse.SERVING
        state = "Ok" if healthy else (
            "Unavailable: " + health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
        if output == "compact":
            print(f"Healthcheck (via {conn.target}): {state}", flush=True)
        if not healthy:
            raise CLIError("not healthy")
        try:
            st = unary(conn, observer_pb2_grpc.ObserverStub(conn.channel).ServerStatus,
                       opb.ServerStatusRequest())
        except CLIError as e:
            raise CLIError(f"failed to get hubble server status: {e}") from None
        # json and table stay one ServerStatusResponse, as scripts parsing them expect.
        counters = agent_status(conn) if output in ("compact", "dict") else None
    printer = Printer(PrintOptions(output=output))
    printer.write_server_status(st)
    printer.close()
    if counters is not None:
        print(format_counters(counters, dict_style=output == "dict"), end="", flush=True)
    return 0
