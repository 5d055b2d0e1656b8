"""Option sets worth naming.

RECOMMENDED is Hubble's recommended set (Cilium docs, hubble.metrics.enabled).

DASHBOARDS is what webb's Grafana dashboards (charts/webb/dashboards) need: the
recommended set plus the namespace labels on the L3/L4 families and workload
contexts on flow, as Cilium's own namespace dashboards ask for. The demo runs it.
"""
from __future__ import annotations

RECOMMENDED = (
    "dns:query;ignoreAAAA,drop,tcp,flow,port-distribution,icmp,"
    "httpV2:exemplars=true;labelsContext=source_ip,source_namespace,source_workload,"
    "destination_ip,destination_namespace,destination_workload,traffic_direction",
)

_NS = "labelsContext=source_namespace,destination_namespace"
DASHBOARDS = (
    f"dns:query;ignoreAAAA;{_NS}",
    f"drop:{_NS}",
    f"tcp:{_NS}",
    f"flow:{_NS};sourceContext=workload-name|reserved-identity;"
    "destinationContext=workload-name|reserved-identity",
    f"port-distribution:{_NS}",
    f"icmp:{_NS}",
    "httpV2:exemplars=true;labelsContext=source_ip,source_namespace,source_workload,"
    "destination_ip,destination_namespace,destination_workload,traffic_direction",
)


def command_line(server: str = "127.0.0.1:4245", listen: str = "127.0.0.1:9965",
                 metrics: tuple[str, ...] = DASHBOARDS) -> list[str]:
    args = ["webb-metrics", "--server", server, "--listen-address", listen, "--enable-openmetrics"]
    for m in metrics:
        args += ["--metrics", m]
    return args

PRESETS: dict[str, tuple[str, ...]] = {"recommended": RECOMMENDED, "dashboards": DASHBOARDS}
