"""`webb`: the command line. Subcommands register themselves on the parser; each verb
lives in its own module (observe, status, list_cmd, monitor, identity, endpoint)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

# Only when this process is the `webb` command (not when a test or a service imports it):
# - Ctrl-C while the modules below load leaves quietly, not with a traceback;
# - gRPC's own C-core logging (e.g. GOAWAY notices) stays out of our one-line errors.
_AS_COMMAND = os.path.basename(sys.argv[0] if sys.argv else "") == "webb"
_QUIET_GRPC = _AS_COMMAND and "GRPC_VERBOSITY" not in os.environ
if _AS_COMMAND:
    try:
        signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    except ValueError:  # not the main thread
        pass
if _QUIET_GRPC:
    os.environ["GRPC_VERBOSITY"] = "NONE"

import webb  # noqa: E402

from . import endpoint, identity, list_cmd, monitor, observe, policy, status  # noqa: E402
from .cli_parser import CLIParser, HelpFormatter  # noqa: E402
from .demo.run import DEFAULT_STATE  # noqa: E402
from .errors import CLIError  # noqa: E402


def _add_demo(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "demo", help="run the bookinfo demo cluster on this host (root)",
        description="Build a small cluster of network namespaces on this host with the bookinfo "
                    "application, run webb on it, and tear it all down on Ctrl-C.",
        epilog="examples:\n  webb demo\n  webb demo --duration 120 --rate 5\n"
               "  webb demo scale details --replicas 2\n"
               "  webb demo exec details -- curl -s http://reviews:9080/reviews/0\n"
               "  webb demo clean",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--state-dir", type=Path, default=DEFAULT_STATE,
                   help=f"where the running demo keeps its state and logs (default {DEFAULT_STATE})")
    d.add_argument("--rate", type=float, default=2.0, help="productpage requests per second (default 2)")
    d.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    d.add_argument("--nodes", type=int, default=2, help="number of nodes (default 2)")
    d.add_argument("--agent-port", type=int, default=4244, help="agents' port, one loopback address per node (default 4244)")
    d.add_argument("--relay-port", type=int, default=4245, help="relay port on 127.0.0.1 (default 4245)")
    d.add_argument("--metrics-port", type=int, default=9965, help="metrics port on 127.0.0.1 (default 9965)")
    d.add_argument("--ui-port", type=int, default=12000, help="UI port on 127.0.0.1 (default 12000)")
    # Tests run demos beside each other: a name prefix of their own for every namespace.
    d.add_argument("--prefix", default="wbd", help=argparse.SUPPRESS)
    ds = d.add_subparsers(dest="demo_cmd")
    sc = ds.add_parser("scale", help="change the replicas of a workload, like kubectl scale",
                       epilog="example: webb demo scale details --replicas 2")
    sc.add_argument("workload", help="workload (details, ratings, reviews-v2, ...)")
    sc.add_argument("--replicas", type=int, required=True)
    ex = ds.add_parser("exec", help="run a command in a pod's network namespace, like kubectl exec",
                       epilog="example: webb demo exec details -- curl -s http://reviews:9080/reviews/0")
    ex.add_argument("pod", help="pod name or a prefix of it (e.g. details)")
    ex.add_argument("cmd_args", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command and its arguments")
    ds.add_parser("clean", help="remove what a crashed demo left behind")


def _demo(a: argparse.Namespace) -> int:
    from .demo import run

    if a.demo_cmd == "scale":
        return run.scale(a.state_dir, a.workload, a.replicas)
    if a.demo_cmd == "exec":
        cmd = a.cmd_args[1:] if a.cmd_args[:1] == ["--"] else a.cmd_args
        return run.exec_in_pod(a.state_dir, a.pod, cmd)
    if a.demo_cmd == "clean":
        return run.clean_cmd(a.state_dir, a.prefix)
    ports = run.Ports(agent=a.agent_port, relay=a.relay_port, metrics=a.metrics_port, ui=a.ui_port)
    return run.run_demo(a.state_dir, a.rate, a.duration, a.nodes, ports, a.prefix)


COMMANDS = {"demo": _demo, "observe": observe.run, "status": status.run, "list": list_cmd.run,
            "monitor": monitor.run, "identity": identity.run, "endpoint": endpoint.run,
            "policy": policy.run}
# Verbs that talk to a server: their failures are one line on stderr.
SERVER_VERBS = (observe, status, list_cmd, monitor, identity, endpoint, policy)

DESCRIPTION = """\
webb: Hubble-style network observability. Flows between workloads (pods,
namespaces, labels, security identities), their verdicts, L7 requests, read over
Hubble's gRPC API from the relay (localhost:4245) or from one agent (localhost:4244)."""

EXAMPLES = """\
examples:
  webb status                                    # is the relay up, how full are the buffers
  webb observe --namespace bookinfo --verdict DROPPED
  webb observe -f --to-pod bookinfo/reviews -o json
  webb list nodes
  webb monitor --type drop
  webb identity get 22047
  webb endpoint list
  webb policy apply -f reviews-l4.yaml              # the whole cluster
  webb demo                                      # a bookinfo cluster on this host (root)

Run 'webb COMMAND --help' for the flags of a command."""


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog="webb", description=DESCRIPTION, epilog=EXAMPLES,
                  formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"webb {webb.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for verb in SERVER_VERBS:
        verb.add_parser(sub)
    # The demo keeps plain argparse behaviour (usage on errors, abbreviated flags).
    sub._parser_class = argparse.ArgumentParser
    _add_demo(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    if _AS_COMMAND:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    p = build_parser()
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in COMMANDS:
        p.command_hint = args[0]  # type: ignore[attr-defined]
    a = p.parse_args(args)
    if not a.command:
        p.print_help()
        sys.exit(2)
    if a.command == "demo":
        if _QUIET_GRPC:  # the demo's agents and relay log as they always do
            os.environ.pop("GRPC_VERBOSITY", None)
        sys.exit(COMMANDS[a.command](a))
    try:
        code = COMMANDS[a.command](a)
    except CLIError as e:
        sys.stdout.flush()
        sys.stderr.write(f"Error: {e}\n")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # e.g. `webb observe --all | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
    sys.exit(code)


if __name__ == "__main__":
    main()
