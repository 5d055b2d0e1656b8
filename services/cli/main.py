"""`webb`: the command line. Subcommands register themselves on the parser."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .demo.run import DEFAULT_STATE


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


COMMANDS = {"demo": _demo}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="webb", description="webb: Hubble-style network observability")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    p = build_parser()
    a = p.parse_args(argv)
    if not a.command:
        p.print_help()
        sys.exit(2)
    sys.exit(COMMANDS[a.command](a))


if __name__ == "__main__":
    main()
