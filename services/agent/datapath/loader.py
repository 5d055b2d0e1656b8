"""Loads bpf/flow.c with bcc and attaches it to endpoint interfaces with TC clsact.

Our filters use their own priority so that programs of a CNI on the same
interface are left alone; the clsact qdisc is removed only if we created it.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import ringbuf
from .event import (STAT_EVENTS, STAT_L7_EVENTS, STAT_L7_LOST, STAT_PARSE_ERRORS,
                    STAT_POLICY_DROPS)
from .netns import netlink_executor

log = logging.getLogger(__name__)

BPF_DIR = Path(os.environ.get("WEBB_BPF_DIR", Path(__file__).resolve().parents[3] / "bpf"))
TC_INGRESS = "ffff:fff2"
TC_EGRESS = "ffff:fff3"
FILTER_PRIO = 0xC0DE & 0x7FFF  # ours, distinct from the default 49152
FILTER_HANDLE = 0xC0DE

# Slots 0 and 1 of the config map (report intervals) are unused: the intervals are
# compiled into the programs (-DREPORT_NS, -DDROP_REPORT_NS).
CONF_POLICY_REVISION = 2
CONF_PROXY_PORT = 3  # the L7 proxy's listening port (0: none, policed connections drop)
CONF_PROXY_EGRESS_PORT = 4  # its listener for egress-policed connections


class AttachError(RuntimeError):
    pass


_LOCAL_INCLUDE = re.compile(rb'^#include "([\w.]+)"[ \t]*$', re.M)


def bpf_source(name: str) -> bytes:
    """A bpf/ source with its local includes ("event.h", "policy.h") pasted in.

    bcc rewrites its table syntax (`map.lookup(...)`) only in the main file, so
    headers that use maps cannot be left to the preprocessor.
    """
    seen: set[str] = set()

    def expand(fname: str) -> bytes:
        seen.add(fname)
        text = (BPF_DIR / fname).read_bytes()

        def sub(m: "re.Match[bytes]") -> bytes:
            inc = m.group(1).decode()
            return b"" if inc in seen else expand(inc)
        return _LOCAL_INCLUDE.sub(sub, text)
    return expand(name)


def possible_cpus() -> int:
    from bcc.utils import get_possible_cpus

    return len(get_possible_cpus())


def l7_ring_pages(pages_per_cpu: int, cpus: int) -> int:
    """The L7 ring buffer's size in pages: one ring for all CPUs, as much as per-CPU
    buffers of pages_per_cpu would hold, rounded up to the power of two the kernel
    wants (--l7-perf-pages 1024 on 2 CPUs: 2048 pages, 8 MiB; on 6 CPUs: 8192)."""
    return _pow2(max(1, pages_per_cpu) * max(1, cpus))


def _pow2(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << (n - 1).bit_length()


# agg_val.flags_seen has bit n set when the TCP flag combination n (flags & 0x3f) was
# seen: these bits are the combinations with FIN (0x01) or RST (0x04).
_FIN_OR_RST = sum(1 << n for n in range(64) if n & 0x05)


@dataclass
class Attachment:
    ifname: str
    ifindex: int
    created_qdisc: bool


class Datapath:
    """One loaded copy of the programs and maps, shared by every endpoint interface."""

    def __init__(self, netns: str | None = None, report_interval_s: float = 10.0,
                 agg_entries: int = 131072, drop_report_interval_s: float = 1.0,
                 policy_entries: int = 65536, ipcache_entries: int = 65536,
                 l7_prefix: int = 1024, l7_pages: int = 1024,
                 ct_timeout_any_s: float = 60.0, ct_timeout_syn_s: float = 60.0) -> None:
        """l7_pages: the L7 ring buffer's pages per possible CPU (see l7_ring_pages)."""
        from bcc import BPF  # imported here so that tools without bcc can import the agent

        self._BPF = BPF
        self.netns = netns
        self.l7_ring_pages = l7_ring_pages(l7_pages, possible_cpus())
        self._l7_ring: ringbuf.RingBuf | None = None
        self._l7_sink: tuple[Callable[[list[bytes]], None], Callable[[int], None]] | None = None
        self._l7_lost_seen = 0
        self.bpf = BPF(text=bpf_source("flow.c"), cflags=[
            f"-DAGG_MAP_SIZE={agg_entries}", f"-DDROP_MAP_SIZE={agg_entries // 4}",
            "-DEP_MAP_SIZE=4096", f"-DIPCACHE_SIZE={ipcache_entries}",
            f"-DPOLICY_MAP_SIZE={policy_entries}",
            f"-DREPORT_NS={int(report_interval_s * 1e9)}ULL",
            f"-DDROP_REPORT_NS={int(drop_report_interval_s * 1e9)}ULL",
            f"-DCT_TIMEOUT_ANY_NS={int(ct_timeout_any_s * 1e9)}ULL",
            f"-DCT_TIMEOUT_SYN_NS={int(ct_timeout_syn_s * 1e9)}ULL",
            f"-DL7_PREFIX={int(l7_prefix)}", f"-DL7_CAP_SIZE={_pow2(int(l7_prefix))}",
            f"-DL7_RING_PAGES={self.l7_ring_pages}",
            "-DL7_SEL_SIZE=16384", "-w"])
        self._prog_from = self.bpf.load_func(b"tc_from_endpoint", BPF.SCHED_CLS)
        self._prog_to = self.bpf.load_func(b"tc_to_endpoint", BPF.SCHED_CLS)
        self._ipr: Any = None
        self._nl = netlink_executor(netns)
        self.attached: dict[str, Attachment] = {}
        # Called in the netlink thread with (ifname, ifindex) before the programs go
        # on an interface, and after they came off: the policy writes the endpoint's
        # enforcement first, so that no packet passes an unconfigured program.
        self.before_attach: Callable[[str, int], None] | None = None
        self.after_detach: Callable[[str, int], None] | None = None
        # The kernel's revision is the policy engine's plus the L7 selection's changes:
        # a bump of either makes established directions look again (flow.c).
        self._policy_revision = 0
        self._l7_changes = 0
        self._l7_sel: dict[tuple[int, int, int, int], int] = {}

    def table(self, name: str) -> Any:
        return self.bpf[name.encode()]

    def set_policy_revision(self, revision: int) -> None:
        self._policy_revision = revision
        self._write_revision()

    def _write_revision(self) -> None:
        rev = self._policy_revision + self._l7_changes
        self.bpf[b"config"][ctypes.c_int(CONF_POLICY_REVISION)] = ctypes.c_uint64(rev)

    def set_proxy_port(self, port: int, egress_port: int = 0) -> None:
        self.bpf[b"config"][ctypes.c_int(CONF_PROXY_PORT)] = ctypes.c_uint64(port)
        self.bpf[b"config"][ctypes.c_int(CONF_PROXY_EGRESS_PORT)] = ctypes.c_uint64(egress_port)

    def set_l7_selection(self, entries: dict[tuple[int, int, int, int], int]) -> bool:
        """Makes l7_sel hold exactly entries: (ifindex, port, proto, mode) -> kind.

        Returns whether anything changed (then established directions re-select)."""
        if entries == self._l7_sel:
            return False
        table = self.bpf[b"l7_sel"]
        for k in self._l7_sel.keys() - entries.keys():
            try:
                del table[table.Key(*k)]
            except KeyError:
                pass
        for k, kind in entries.items():
            if self._l7_sel.get(k) != kind:
                table[table.Key(*k)] = ctypes.c_uint8(kind)
        self._l7_sel = dict(entries)
        self._l7_changes += 1
        self._write_revision()
        return True

    def live_peers(self, addrs: set[bytes]) -> set[bytes]:
        """Which of these remote addresses (16 bytes, IPv4 in the first four) a
        connection of a local endpoint still uses, from the connection tracking
        (agg_map): a TCP connection no direction of which has seen FIN or RST, or
        another whose packets grew since the last call. Reads the whole map: called
        from a worker thread, every few seconds, only while expired toFQDNs addresses
        are kept for their connections."""
        table = self.bpf[b"agg_map"]
        tcp: dict[tuple[Any, ...], bytes] = {}
        closed: set[tuple[Any, ...]] = set()
        alive: set[bytes] = set()
        counts: dict[bytes, int] = {}
        last = getattr(self, "_live_counts", {})
        for k, v in table.items():
            s, d = bytes(k.saddr), bytes(k.daddr)
            peer = d if d in addrs else s if s in addrs else None
            if peer is None:
                continue
            if k.proto == 6:
                conn = (k.ifindex, *sorted(((s, k.sport), (d, k.dport))))
                if v.flags_seen & _FIN_OR_RST:
                    closed.add(conn)
                else:
                    tcp[conn] = peer
            else:
                key = bytes(k)
                counts[key] = v.packets
                if last.get(key) != v.packets:
                    alive.add(peer)
        self._live_counts = counts
        alive.update(peer for conn, peer in tcp.items() if conn not in closed)
        return alive

    async def in_netns(self, fn: Callable[[], Any]) -> Any:
        """Runs fn in the netlink thread (the node's namespace)."""
        return await asyncio.get_running_loop().run_in_executor(self._nl, fn)

    def netlink(self) -> Any:
        """The netlink socket of the node's namespace; only from the netlink thread."""
        return self._netlink()

    def _netlink(self) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    async def attach(self, ifname: str) -> Attachment:
        return await asyncio.get_running_loop().run_in_executor(self._nl, self._attach, ifname)

    async def detach(self, ifname: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self._nl, self._detach, ifname)

    async def addresses(self) -> list[str]:
        """The node's own addresses: global and link-local ones of the namespace's
        interfaces (a pod's IPv6 gateway is the node's link-local address on its veth)."""
        def read() -> list[str]:
            return [a.get_attr("IFA_ADDRESS") for a in self._netlink().get_addr()
                    if a.get_attr("IFA_ADDRESS") and a["scope"] in (0, 253)]
        return await asyncio.get_running_loop().run_in_executor(self._nl, read)

    def _attach(self, ifname: str) -> Attachment:
        if ifname in self.attached:
            return self.attached[ifname]
        ipr = self._netlink()
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise AttachError(f"interface {ifname} not found")
        idx = found[0]
        if self.before_attach is not None:
            try:
                self.before_attach(ifname, idx)
            except Exception as e:
                raise AttachError(f"{ifname}: preparing its policy: {e}") from e
        created = False
        try:
            ipr.tc("add", "clsact", idx)
            created = True
        except Exception as e:  # an existing clsact (ours from a crash, or a CNI's) is fine
            if getattr(e, "code", None) != errno.EEXIST:
                raise AttachError(f"{ifname}: adding clsact: {e}") from e
        for parent, prog in ((TC_INGRESS, self._prog_from), (TC_EGRESS, self._prog_to)):
            try:
                self._del_filter(idx, parent)
                ipr.tc("add-filter", "bpf", idx, FILTER_HANDLE, fd=prog.fd, name=prog.name,
                       parent=parent, prio=FILTER_PRIO, classid=1, direct_action=True)
            except Exception as e:
                raise AttachError(f"{ifname}: attaching {prog.name!r}: {e}") from e
        att = Attachment(ifname, idx, created)
        self.attached[ifname] = att
        log.info("attached to %s (ifindex %d)", ifname, idx)
        return att

    def _del_filter(self, idx: int, parent: str) -> None:
        try:
            self._netlink().tc("del-filter", "bpf", idx, FILTER_HANDLE, parent=parent,
                               prio=FILTER_PRIO)
        except Exception:
            pass

    def _detach(self, ifname: str) -> None:
        att = self.attached.pop(ifname, None)
        if att is None:
            return
        ipr = self._netlink()
        if not ipr.link_lookup(ifname=ifname):
            self._after_detach(att)
            return  # the interface went away and took its qdisc with it
        for parent in (TC_INGRESS, TC_EGRESS):
            self._del_filter(att.ifindex, parent)
        self._after_detach(att)
        if att.created_qdisc:
            try:
                ipr.tc("del", "clsact", att.ifindex)
            except Exception as e:
                log.warning("%s: removing clsact: %s", ifname, e)
        log.info("detached from %s", ifname)

    def _after_detach(self, att: Attachment) -> None:
        if self.after_detach is not None:
            try:
                self.after_detach(att.ifname, att.ifindex)
            except Exception as e:
                log.warning("%s: clearing its policy: %s", att.ifname, e)

    def ifindex_names(self) -> dict[int, str]:
        return {a.ifindex: a.ifname for a in self.attached.values()}

    def open_events(self, on_event: Callable[[int, int, int], None],
                    on_lost: Callable[[int], None], page_cnt: int, wakeup_events: int) -> None:
        self.bpf[b"events"].open_perf_buffer(on_event, page_cnt=page_cnt, lost_cb=on_lost,
                                             wakeup_events=wakeup_events)

    def open_l7_events(self, on_batch: Callable[[list[bytes]], None],
                       on_lost: Callable[[int], None]) -> None:
        """Each drain (consume) gives the L7 ring buffer's records to on_batch, and the
        count of records the ring had no room for since the last drain to on_lost."""
        table = self.bpf[b"l7_events"]
        self._l7_ring = ringbuf.RingBuf(table.map_fd, self.l7_ring_pages * mmap.PAGESIZE)
        self._l7_sink = (on_batch, on_lost)
        stats = self.bpf[b"stats"]
        self._stats_fd = stats.map_fd
        self._lost_key = ctypes.c_int(STAT_L7_LOST)
        self._lost_val = (ctypes.c_uint64 * possible_cpus())()
        self._l7_lost_seen = self._l7_lost()
        log.info("L7 ring buffer: %d pages (%d MiB) for all CPUs, read in %s",
                 self.l7_ring_pages, self.l7_ring_pages * mmap.PAGESIZE >> 20, ringbuf.reader())

    def _l7_lost(self) -> int:
        """STAT_L7_LOST summed over CPUs: one syscall, no bcc table object per read."""
        from bcc.libbcc import lib

        if lib.bpf_lookup_elem(self._stats_fd, ctypes.byref(self._lost_key), self._lost_val) < 0:
            return self._l7_lost_seen
        return sum(self._lost_val)

    def consume(self) -> None:
        if self._l7_ring is not None and self._l7_sink is not None:
            on_batch, on_lost = self._l7_sink
            out: list[bytes] = []
            self._l7_ring.drain(out)
            lost = self._l7_lost()
            if lost > self._l7_lost_seen:
                on_lost(lost - self._l7_lost_seen)
                self._l7_lost_seen = lost
            if out:
                on_batch(out)
        self.bpf.perf_buffer_consume()

    def stats(self) -> dict[str, int]:
        table = self.bpf[b"stats"]
        out = {}
        for name, idx in (("events", STAT_EVENTS),
                          ("parse_errors", STAT_PARSE_ERRORS), ("policy_drops", STAT_POLICY_DROPS),
                          ("l7_events", STAT_L7_EVENTS), ("l7_lost", STAT_L7_LOST)):
            out[name] = int(sum(table[ctypes.c_int(idx)]))
        return out

    def close(self) -> None:
        def detach_all() -> None:
            for ifname in list(self.attached):
                try:
                    self._detach(ifname)
                except Exception as e:
                    log.warning("detaching %s: %s", ifname, e)
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None
        self._nl.submit(detach_all).result(timeout=30)
        self._nl.shutdown()
        if self._l7_ring is not None:
            self._l7_ring.close()  # before bcc closes the map
            self._l7_ring = None
        self.bpf.cleanup()
