// webb datapath: packets of endpoints that the kernel dropped, from the
// skb:kfree_skb tracepoint and its drop reason.
//
// bcc compiles this against whatever headers are installed, which need not be the
// running kernel's: every offset into kernel structures and the tracepoint record,
// and every drop reason value, comes from the running kernel (BTF, the tracepoint's
// format file) through -D macros the agent computes at start:
//   TP_SKBADDR TP_PROTOCOL TP_REASON            offsets in the tracepoint record
//   SKB_DEV SKB_HEAD SKB_NETWORK_HEADER SKB_MAC_HEADER SKB_MARK   struct sk_buff
//   SKB_SK SK_NET                               sk_buff.sk, sock.__sk_common.skc_net
//   DEV_NET NET_INUM                            net_device.nd_net, net.ns.inum
//   R_TC_INGRESS R_TC_EGRESS R_NO_SOCKET
// Reasons that are no drop a user would care about (consumed, no reason given, a
// socket's queue purged at close, TCP duplicates...) are in kd_skip, by value.
// Only packets to or from a local endpoint address (kd_endpoints) are reported, in
// the endpoint's own namespace or the node's, aggregated like flow.c's drops.

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "event.h"

#define WEBB_DROP_MARK 0x7765626d  // flow.c's own drops: reported there already

#define KD_CONF_REPORT_NS 0
#define KD_CONF_NODE_NETNS 1

struct kd_key {
    u8 addr[16];
};

struct kd_ep {
    u32 ifindex;  // host-side interface, for the flow's interface field
    u32 netns;    // inode of the endpoint's network namespace (0: not known)
};

struct kd_agg_key {
    u8 saddr[16];
    u8 daddr[16];
    u32 reason;
    u16 dport;
    u8 proto;
    u8 family;
};

struct kd_agg_val {
    u64 packets;
    u64 reported;
    u64 last_report;
};

BPF_HASH(kd_endpoints, struct kd_key, struct kd_ep, 8192);
BPF_HASH(kd_skip, u32, u8, 256);
BPF_TABLE("lru_hash", struct kd_agg_key, struct kd_agg_val, kd_agg, 16384);
BPF_PERF_OUTPUT(kd_events);
BPF_ARRAY(kd_config, u64, 2);
BPF_PERCPU_ARRAY(kd_scratch, struct flow_event, 1);
BPF_PERCPU_ARRAY(kd_stats, u64, 2);  // 0: drops seen for endpoints, 1: events

static __always_inline u64 kd_conf(int idx) {
    u64 *v = kd_config.lookup(&idx);
    return v ? *v : 0;
}

static __always_inline void kd_stat(int idx) {
    u64 *v = kd_stats.lookup(&idx);
    if (v)
        *v += 1;
}

int on_kfree_skb(void *ctx) {
    u32 reason = 0;
    bpf_probe_read_kernel(&reason, sizeof(reason), (char *)ctx + TP_REASON);
    if (kd_skip.lookup(&reason))
        return 0;
    u16 protocol = 0;
    // The tracepoint records skb->protocol in host byte order already.
    bpf_probe_read_kernel(&protocol, sizeof(protocol), (char *)ctx + TP_PROTOCOL);
    if (protocol != ETH_P_IP && protocol != ETH_P_IPV6)
        return 0;
    u64 skb = 0;
    bpf_probe_read_kernel(&skb, sizeof(skb), (char *)ctx + TP_SKBADDR);
    if (!skb)
        return 0;
    if (reason == R_TC_INGRESS || reason == R_TC_EGRESS) {
        u32 mark = 0;
        bpf_probe_read_kernel(&mark, sizeof(mark), (void *)(skb + SKB_MARK));
        if (mark == WEBB_DROP_MARK)
            return 0;
    }
    u64 head = 0;
    u16 nh = 0, mh = 0;
    bpf_probe_read_kernel(&head, sizeof(head), (void *)(skb + SKB_HEAD));
    bpf_probe_read_kernel(&nh, sizeof(nh), (void *)(skb + SKB_NETWORK_HEADER));
    bpf_probe_read_kernel(&mh, sizeof(mh), (void *)(skb + SKB_MAC_HEADER));
    if (!head || nh == 0xffff)
        return 0;

    int zero = 0;
    struct flow_event *ev = kd_scratch.lookup(&zero);
    if (!ev)
        return 0;
    __builtin_memset(ev, 0, sizeof(*ev));
    u32 l4off = 0;
    if (protocol == ETH_P_IP) {
        struct iphdr iph = {};
        if (bpf_probe_read_kernel(&iph, sizeof(iph), (void *)(head + nh)) < 0)
            return 0;
        if (iph.version != 4)
            return 0;
        ev->family = 4;
        ev->proto = iph.protocol;
        __builtin_memcpy(ev->saddr, &iph.saddr, 4);
        __builtin_memcpy(ev->daddr, &iph.daddr, 4);
        l4off = (iph.frag_off & bpf_htons(0x1fff)) ? 0 : iph.ihl * 4;
    } else {
        struct ipv6hdr ip6 = {};
        if (bpf_probe_read_kernel(&ip6, sizeof(ip6), (void *)(head + nh)) < 0)
            return 0;
        if (ip6.version != 6)
            return 0;
        ev->family = 6;
        ev->proto = ip6.nexthdr;
        __builtin_memcpy(ev->saddr, &ip6.saddr, 16);
        __builtin_memcpy(ev->daddr, &ip6.daddr, 16);
        l4off = sizeof(ip6);
    }

    // ICMP without a socket: an echo reply that a raw socket (ping) already took a
    // copy of, or an error nobody waits for. Not a drop a user loses anything to.
    if (reason == R_NO_SOCKET && (ev->proto == IPPROTO_ICMP || ev->proto == IPPROTO_ICMPV6))
        return 0;

    // Only endpoints' packets: to one (the drop hit it on ingress) or from one.
    struct kd_key k = {};
    __builtin_memcpy(k.addr, ev->daddr, 16);
    struct kd_ep *ep = kd_endpoints.lookup(&k);
    ev->point = POINT_TO_ENDPOINT;
    if (!ep) {
        __builtin_memcpy(k.addr, ev->saddr, 16);
        ep = kd_endpoints.lookup(&k);
        ev->point = POINT_FROM_ENDPOINT;
    }
    if (!ep)
        return 0;
    if (ep->netns) {
        // The same addresses may exist in other namespaces of the host (other
        // clusters, tests): the drop must happen in the endpoint's or the node's,
        // known from the device, else from the socket.
        u64 dev = 0, sk = 0, net = 0;
        u32 inum = 0;
        bpf_probe_read_kernel(&dev, sizeof(dev), (void *)(skb + SKB_DEV));
        if (dev) {
            bpf_probe_read_kernel(&net, sizeof(net), (void *)(dev + DEV_NET));
        } else {
            bpf_probe_read_kernel(&sk, sizeof(sk), (void *)(skb + SKB_SK));
            if (sk)
                bpf_probe_read_kernel(&net, sizeof(net), (void *)(sk + SK_NET));
        }
        if (net)
            bpf_probe_read_kernel(&inum, sizeof(inum), (void *)(net + NET_INUM));
        if (inum != ep->netns && inum != (u32)kd_conf(KD_CONF_NODE_NETNS))
            return 0;
    }
    kd_stat(0);

    if (l4off) {
        void *l4 = (void *)(head + nh + l4off);
        if (ev->proto == IPPROTO_TCP) {
            u8 th[14] = {};
            if (bpf_probe_read_kernel(th, sizeof(th), l4) == 0) {
                ev->sport = ((u16)th[0] << 8) | th[1];
                ev->dport = ((u16)th[2] << 8) | th[3];
                ev->tcp_flags = th[13];
            }
            // Without a socket, only a connection attempt (SYN, no ACK) is a drop a
            // user loses something to; other segments are stragglers of connections
            // that already closed, which the kernel answers with a RST.
            if (reason == R_NO_SOCKET && (ev->tcp_flags & 0x12) != 0x02)
                return 0;
        } else if (ev->proto == IPPROTO_UDP) {
            u8 uh[4] = {};
            if (bpf_probe_read_kernel(uh, sizeof(uh), l4) == 0) {
                ev->sport = ((u16)uh[0] << 8) | uh[1];
                ev->dport = ((u16)uh[2] << 8) | uh[3];
            }
        } else if (ev->proto == IPPROTO_ICMP || ev->proto == IPPROTO_ICMPV6) {
            u8 tc[2] = {};
            if (bpf_probe_read_kernel(tc, sizeof(tc), l4) == 0) {
                ev->icmp_type = tc[0];
                ev->icmp_code = tc[1];
            }
        }
    }

    u64 now = bpf_ktime_get_ns();
    struct kd_agg_key ak = {};
    __builtin_memcpy(ak.saddr, ev->saddr, 16);
    __builtin_memcpy(ak.daddr, ev->daddr, 16);
    ak.reason = reason;
    ak.dport = ev->dport;
    ak.proto = ev->proto;
    ak.family = ev->family;
    u64 count = 1;
    struct kd_agg_val *av = kd_agg.lookup(&ak);
    if (av) {
        u64 n = __sync_fetch_and_add(&av->packets, 1) + 1;
        if (now - av->last_report < kd_conf(KD_CONF_REPORT_NS))
            return 0;
        count = n - av->reported;
        av->reported = n;
        av->last_report = now;
    } else {
        struct kd_agg_val nv = {};
        nv.packets = 1;
        nv.reported = 1;
        nv.last_report = now;
        kd_agg.update(&ak, &nv);
    }

    if (mh != 0xffff && mh < nh && nh - mh >= 14) {
        u8 eth[12] = {};
        if (bpf_probe_read_kernel(eth, sizeof(eth), (void *)(head + mh)) == 0) {
            __builtin_memcpy(ev->dmac, eth, 6);
            __builtin_memcpy(ev->smac, eth + 6, 6);
        }
    }
    u32 len = 0;
    bpf_probe_read_kernel(&len, sizeof(len), (void *)(skb + SKB_LEN));
    ev->ts = now;
    ev->packets = count;
    ev->bytes = len;
    ev->pkt_len = len;
    ev->ifindex = ep->ifindex;
    ev->event_type = EVENT_KERNEL_DROP;
    ev->drop_reason = reason;
    kd_events.perf_submit(ctx, ev, sizeof(*ev));
    kd_stat(1);
    return 0;
}
