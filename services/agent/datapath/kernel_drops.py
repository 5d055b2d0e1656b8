"""Kernel drops: packets of local endpoints that the kernel freed with a drop reason
(the skb:kfree_skb tracepoint), reported as DROPPED flows.

Everything version-specific comes from the running kernel at start: the values and
names of `enum skb_drop_reason` and the sk_buff / net_device / net member offsets
from BTF (/sys/kernel/btf/vmlinux), the tracepoint record's layout from its format
file. bpf/drop.c gets them as -D macros. Consumed packets and drops without a
reason (NOT_SPECIFIED) are never reported; neither are webb's own policy drops.

The tracepoint lives in tracefs, which must be reached from the host's mount
namespace (`ip netns exec` remounts /sys without it); the agent mounts tracefs at
/sys/kernel/tracing if nothing has.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

from .btf import BTF, vmlinux

log = logging.getLogger(__name__)

TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
TRACEPOINT = "skb/kfree_skb"
REASON_PREFIX = "SKB_DROP_REASON_"

# Frees that are no drop a user should see: consumed, no reason given, queues purged
# when a socket closes, TCP segments already received or merged, copies a socket
# filter declined, frames for other hosts on a shared segment, a RST doing its job.
BORING = ("NOT_DROPPED_YET", "CONSUMED", "NOT_SPECIFIED", "QUEUE_PURGE", "TCP_OFOMERGE",
          "TCP_OLD_DATA", "TCP_OLD_ACK", "TCP_TOO_OLD_ACK", "TCP_OLD_SEQUENCE", "DUP_FRAG",
          "SOCKET_FILTER", "OTHERHOST", "UNICAST_IN_L2_MULTICAST", "TCP_RESET",
          "PACKET_SOCK_ERROR")

# Hubble DropReason values used below (proto/flow/flow.proto).
DROP_REASON_UNKNOWN = 0
INVALID_SOURCE_IP = 132
POLICY_DENIED = 133
INVALID_PACKET_DROPPED = 134
CT_TRUNCATED_OR_INVALID_HEADER = 135
UNSUPPORTED_L3_PROTOCOL = 139
UNKNOWN_L4_PROTOCOL = 142
UNKNOWN_L3_TARGET_ADDRESS = 150
FIB_LOOKUP_FAILED = 169
FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND = 175
SOCKET_LOOKUP_FAILED = 178
INVALID_IPV6_EXTENSION_HEADER = 156
DROP_RATE_LIMITED = 198

# Kernel reason -> the closest Hubble DropReason (the kernel's name stays in the flow).
_EXACT = {
    "NO_SOCKET": SOCKET_LOOKUP_FAILED, "SOCKET_CLOSE": SOCKET_LOOKUP_FAILED,
    "NETFILTER_DROP": POLICY_DENIED, "BPF_CGROUP_EGRESS": POLICY_DENIED,
    "XFRM_POLICY": POLICY_DENIED, "SECURITY_HOOK": POLICY_DENIED,
    "IP_RPFILTER": INVALID_SOURCE_IP, "IP_INVALID_SOURCE": INVALID_SOURCE_IP,
    "IP_LOCAL_SOURCE": INVALID_SOURCE_IP, "MAC_INVALID_SOURCE": INVALID_SOURCE_IP,
    "IP_NOPROTO": UNKNOWN_L4_PROTOCOL, "INVALID_PROTO": UNKNOWN_L4_PROTOCOL,
    "UNHANDLED_PROTO": UNSUPPORTED_L3_PROTOCOL,
    "IP_OUTNOROUTES": FIB_LOOKUP_FAILED, "IP_INNOROUTES": FIB_LOOKUP_FAILED,
    "OTHERHOST": UNKNOWN_L3_TARGET_ADDRESS, "IP_INADDRERRORS": UNKNOWN_L3_TARGET_ADDRESS,
    "IP_INVALID_DEST": UNKNOWN_L3_TARGET_ADDRESS, "IP_LOCALNET": UNKNOWN_L3_TARGET_ADDRESS,
    "PKT_TOO_SMALL": CT_TRUNCATED_OR_INVALID_HEADER, "HDR_TRUNC": CT_TRUNCATED_OR_INVALID_HEADER,
    "IP_INHDR": CT_TRUNCATED_OR_INVALID_HEADER, "DEV_HDR": CT_TRUNCATED_OR_INVALID_HEADER,
    "IPV6_BAD_EXTHDR": INVALID_IPV6_EXTENSION_HEADER,
    "FRAG_REASM_TIMEOUT": FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND,
    "FRAG_TOO_FAR": FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND,
    "DUP_FRAG": FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND,
}
# By name pattern: checksums and malformed packets, full queues and buffers.
_PATTERNS = (
    (re.compile(r"CSUM$"), INVALID_PACKET_DROPPED),
    (re.compile(r"^TCP_"), INVALID_PACKET_DROPPED),
    (re.compile(r"^IPV6_NDISC_"), INVALID_PACKET_DROPPED),
    (re.compile(r"^(QDISC_|FQ_|CAKE_)|BACKLOG$|RCVBUFF$|^FULL_RING$|^CPU_BACKLOG$|"
                r"^PROTO_MEM$|^NOMEM$|QUEUEFULL$|LISTEN_OVERFLOW$"), DROP_RATE_LIMITED),
)


def hubble_reason(name: str) -> int:
    """The Hubble DropReason closest to a kernel drop reason name (without prefix)."""
    if name in _EXACT:
        return _EXACT[name]
    if name == "TCP_LISTEN_OVERFLOW":
        return DROP_RATE_LIMITED
    for pattern, code in _PATTERNS:
        if pattern.search(name):
            if code == INVALID_PACKET_DROPPED and name.endswith("OVERFLOW"):
                return DROP_RATE_LIMITED
            return code
    return DROP_REASON_UNKNOWN


def drop_reasons(btf: BTF | None = None, format_text: str = "") -> dict[int, str]:
    """Values and names of the running kernel's drop reasons: from BTF, else from the
    tracepoint's print fmt."""
    try:
        enum = (btf or vmlinux()).enum("skb_drop_reason")
        out = {}
        for name, value in enum.items():
            if name.startswith(REASON_PREFIX):
                name = name[len(REASON_PREFIX):]
            elif name.startswith("SKB_"):
                name = name[4:]
            out.setdefault(value, name)
        return out
    except Exception as e:
        log.info("drop reasons from BTF failed (%s); reading the tracepoint format", e)
    return {int(v): n for v, n in re.findall(r'\{\s*(\d+),\s*"(\w+)"\s*\}', format_text)}


def reason_name(reasons: dict[int, str], value: int) -> str:
    name = reasons.get(value)
    if name is not None:
        return name
    if value >> 16:  # subsystem-specific reasons (mac80211, openvswitch...)
        return f"SUBSYS_{value >> 16}_{value & 0xFFFF}"
    return f"REASON_{value}"


def tracefs() -> str:
    """The tracefs mount, mounting it at /sys/kernel/tracing if there is none."""
    for d in TRACEFS_DIRS:
        if os.path.isdir(os.path.join(d, "events")):
            return d
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", TRACEFS_DIRS[0].encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mounting tracefs at {TRACEFS_DIRS[0]}: {os.strerror(err)}")
    log.info("mounted tracefs at %s", TRACEFS_DIRS[0])
    return TRACEFS_DIRS[0]


def tracepoint_format(root: str) -> str:
    return Path(root, "events", TRACEPOINT, "format").read_text()


def field_offsets(fmt: str) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) of a tracepoint record's fields."""
    out = {}
    for m in re.finditer(r"field:([^;]*?)\s*([\w]+)(\[\d*\])?;\s*offset:(\d+);\s*size:(\d+);", fmt):
        out[m.group(2)] = (int(m.group(4)), int(m.group(5)))
    return out


def compile_flags(btf: BTF, fmt: str, reasons: dict[int, str]) -> list[str]:
    fields = field_offsets(fmt)
    for name, size in (("skbaddr", 8), ("protocol", 2), ("reason", 4)):
        if name not in fields or fields[name][1] != size:
            raise RuntimeError(f"{TRACEPOINT}: field {name} of {size} bytes not in its format")
    by_name = {n: v for v, n in reasons.items()}
    flags = {
        "TP_SKBADDR": fields["skbaddr"][0], "TP_PROTOCOL": fields["protocol"][0],
        "TP_REASON": fields["reason"][0],
        "SKB_DEV": btf.member_offset("sk_buff", "dev"),
        "SKB_HEAD": btf.member_offset("sk_buff", "head"),
        "SKB_NETWORK_HEADER": btf.member_offset("sk_buff", "network_header"),
        "SKB_MAC_HEADER": btf.member_offset("sk_buff", "mac_header"),
        "SKB_MARK": btf.member_offset("sk_buff", "mark"),
        "SKB_LEN": btf.member_offset("sk_buff", "len"),
        "SKB_SK": btf.member_offset("sk_buff", "sk"),
        "SK_NET": btf.member_offset("sock", "__sk_common.skc_net"),
        "DEV_NET": btf.member_offset("net_device", "nd_net"),
        "NET_INUM": btf.member_offset("net", "ns.inum"),
    }
    for key, name in (("R_TC_INGRESS", "TC_INGRESS"), ("R_TC_EGRESS", "TC_EGRESS"),
                      ("R_NO_SOCKET", "NO_SOCKET")):
        flags[key] = by_name.get(name, 0xFFFFFFFF)  # absent: a value no drop has
    return [f"-D{k}={v}" for k, v in flags.items()] + ["-w"]


class KernelDrops:
    """bpf/drop.c on skb:kfree_skb, and the endpoints whose drops it reports."""

    def __init__(self, report_interval_s: float = 1.0) -> None:
        from bcc import BPF

        from .loader import bpf_source

        root = tracefs()
        fmt = tracepoint_format(root)
        btf = vmlinux()
        self.reasons = drop_reasons(btf, fmt)
        cflags = compile_flags(btf, fmt, self.reasons)
        del btf  # ~11 MiB that nothing needs after this (btf.py)
        self.bpf = BPF(text=bpf_source("drop.c"), cflags=cflags)
        self.bpf.attach_tracepoint(tp=b"skb:kfree_skb", fn_name=b"on_kfree_skb")
        cfg = self.bpf[b"kd_config"]
        cfg[ctypes.c_int(0)] = ctypes.c_uint64(int(report_interval_s * 1e9))
        skip = self.bpf[b"kd_skip"]
        for value, name in self.reasons.items():
            if name in BORING:
                skip[skip.Key(value)] = skip.Leaf(1)
        self._eps: dict[bytes, tuple[int, int]] = {}
        self._reason_cache: dict[int, tuple[str, int]] = {}

    def set_node_netns(self, inode: int) -> None:
        self.bpf[b"kd_config"][ctypes.c_int(1)] = ctypes.c_uint64(inode)

    def reason(self, value: int) -> tuple[str, int]:
        """(kernel reason name, closest Hubble DropReason) of a reason value."""
        r = self._reason_cache.get(value)
        if r is None:
            name = reason_name(self.reasons, value)
            r = self._reason_cache[value] = (name, hubble_reason(name))
        return r

    def set_endpoints(self, eps: dict[bytes, tuple[int, int]]) -> None:
        """Packed address (16 bytes) -> (host-side ifindex, endpoint netns inode)."""
        t = self.bpf[b"kd_endpoints"]
        for addr, (ifindex, netns) in eps.items():
            if self._eps.get(addr) != (ifindex, netns):
                k = t.Key()
                ctypes.memmove(ctypes.addressof(k.addr), addr, 16)
                v = t.Leaf()
                v.ifindex, v.netns = ifindex, netns
                t[k] = v
        for addr in [a for a in self._eps if a not in eps]:
            k = t.Key()
            ctypes.memmove(ctypes.addressof(k.addr), addr, 16)
            try:
                del t[k]
            except KeyError:
                pass
        self._eps = dict(eps)

    def open_events(self, on_event: Callable[[int, int, int], None],
                    on_lost: Callable[..., None], page_cnt: int, wakeup_events: int) -> None:
        self.bpf[b"kd_events"].open_perf_buffer(on_event, page_cnt=page_cnt, lost_cb=on_lost,
                                                wakeup_events=wakeup_events)

    def consume(self) -> None:
        self.bpf.perf_buffer_consume()

    def stats(self) -> dict[str, int]:
        t = self.bpf[b"kd_stats"]
        return {"kernel_drops": int(sum(t[ctypes.c_int(0)])),
                "kernel_drop_events": int(sum(t[ctypes.c_int(1)]))}

    def close(self) -> None:
        self.bpf.cleanup()


def netns_inodes(ipr: Any) -> dict[str, int]:
    """Host-side veth name -> inode of the namespace its peer lives in.

    Runs in the node's namespace; sees the namespaces named in /var/run/netns (ip
    netns, container runtimes), which is where pods' namespaces are.
    """
    out: dict[str, int] = {}
    try:
        for item in ipr.get_netns_info():
            inode = item.get("inode") if hasattr(item, "get") else None
            if inode is None:
                inode = item["inode"]
            for name, value in item["attrs"]:
                if name == "NSINFO_PEER":
                    out[value] = int(inode)
    except Exception as e:  # no /var/run/netns, old kernel: filter by address only
        log.debug("reading namespaces of endpoint peers: %s", e)
    return out


def current_netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino
