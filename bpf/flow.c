// webb datapath: L3/L4 flow events from TC hooks on endpoint interfaces.
//
// Compiled at run time by bcc. Only UAPI structures (__sk_buff, IP/TCP/UDP headers)
// are used, so the program does not depend on the exact kernel header version.
//
// Per-packet work stays in the kernel: each direction of a connection, per
// observation point, has an entry in agg_map; a perf event is emitted only when
// something a user would see changes (first packet of the direction, a TCP flag
// combination not yet reported, or a periodic report for long connections).

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/icmpv6.h>
#include <uapi/linux/pkt_cls.h>

// Observation points, as seen from the endpoint: a packet entering the host-side
// interface (TC ingress) is leaving the endpoint.
#define POINT_FROM_ENDPOINT 0
#define POINT_TO_ENDPOINT 1

#define EVENT_TRACE 1

#define REASON_NEW 0
#define REASON_FLAGS 1
#define REASON_REPORT 2

#define STAT_PACKETS 0
#define STAT_EVENTS 1
#define STAT_PARSE_ERRORS 2
#define STAT_MAX 4

#define CONF_REPORT_NS 0

struct agg_key {
    u8 saddr[16];
    u8 daddr[16];
    u16 sport;
    u16 dport;
    u32 ifindex;
    u8 proto;
    u8 family;
    u8 point;
    u8 pad;
};

struct agg_val {
    u64 packets;
    u64 bytes;
    u64 last_report;
    u64 flags_seen;  // bit (tcp_flags & 0x3f): combinations already reported
    u64 is_reply;
};

// Keep in sync with services/agent/datapath/event.py (EVENT_STRUCT).
struct flow_event {
    u64 ts;
    u64 packets;
    u64 bytes;
    u8 saddr[16];
    u8 daddr[16];
    u8 smac[6];
    u8 dmac[6];
    u16 sport;
    u16 dport;
    u32 ifindex;
    u32 pkt_len;
    u8 event_type;
    u8 reason;
    u8 family;
    u8 proto;
    u8 tcp_flags;
    u8 point;
    u8 is_reply;
    u8 icmp_type;
    u8 icmp_code;
    u8 pad[7];
};

BPF_TABLE("lru_hash", struct agg_key, struct agg_val, agg_map, AGG_MAP_SIZE);
BPF_PERF_OUTPUT(events);
BPF_PERCPU_ARRAY(stats, u64, STAT_MAX);
BPF_ARRAY(config, u64, 4);

static __always_inline void stat_inc(int idx) {
    u64 *v = stats.lookup(&idx);
    if (v)
        *v += 1;
}

struct parsed {
    struct agg_key key;
    u8 smac[6];
    u8 dmac[6];
    u8 tcp_flags;
    u8 icmp_type;
    u8 icmp_code;
};

static __always_inline int parse_l4(struct __sk_buff *skb, u32 off, struct parsed *p) {
    if (p->key.proto == IPPROTO_TCP) {
        struct tcphdr th = {};
        if (bpf_skb_load_bytes(skb, off, &th, sizeof(th)) < 0)
            return -1;
        p->key.sport = bpf_ntohs(th.source);
        p->key.dport = bpf_ntohs(th.dest);
        // Byte 13 of the TCP header holds CWR..FIN.
        p->tcp_flags = ((u8 *)&th)[13];
    } else if (p->key.proto == IPPROTO_UDP) {
        struct udphdr uh = {};
        if (bpf_skb_load_bytes(skb, off, &uh, sizeof(uh)) < 0)
            return -1;
        p->key.sport = bpf_ntohs(uh.source);
        p->key.dport = bpf_ntohs(uh.dest);
    } else if (p->key.proto == IPPROTO_ICMP || p->key.proto == IPPROTO_ICMPV6) {
        u8 tc[2] = {};
        if (bpf_skb_load_bytes(skb, off, tc, 2) < 0)
            return -1;
        p->icmp_type = tc[0];
        p->icmp_code = tc[1];
        // ICMP has no ports; the type stands in for one so that echo request and
        // reply are kept apart from errors in the aggregation.
        p->key.sport = tc[0];
        p->key.dport = 0;
    }
    return 0;
}

static __always_inline int parse(struct __sk_buff *skb, struct parsed *p) {
    struct ethhdr eth = {};
    if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
        return -1;
    __builtin_memcpy(p->smac, eth.h_source, 6);
    __builtin_memcpy(p->dmac, eth.h_dest, 6);
    u16 proto = bpf_ntohs(eth.h_proto);
    if (proto == ETH_P_IP) {
        struct iphdr iph = {};
        if (bpf_skb_load_bytes(skb, ETH_HLEN, &iph, sizeof(iph)) < 0)
            return -1;
        p->key.family = 4;
        p->key.proto = iph.protocol;
        __builtin_memcpy(p->key.saddr, &iph.saddr, 4);
        __builtin_memcpy(p->key.daddr, &iph.daddr, 4);
        // Only the first fragment carries the L4 header.
        if (iph.frag_off & bpf_htons(0x1fff))
            return 0;
        return parse_l4(skb, ETH_HLEN + iph.ihl * 4, p);
    } else if (proto == ETH_P_IPV6) {
        struct ipv6hdr ip6 = {};
        if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
            return -1;
        p->key.family = 6;
        __builtin_memcpy(p->key.saddr, &ip6.saddr, 16);
        __builtin_memcpy(p->key.daddr, &ip6.daddr, 16);
        u8 next = ip6.nexthdr;
        u32 off = ETH_HLEN + sizeof(ip6);
        // Skip a few extension headers (hop-by-hop on MLD reports, routing,
        // destination options); a non-first fragment has no L4 header.
#pragma unroll
        for (int i = 0; i < 4; i++) {
            if (next == 0 || next == 43 || next == 60) {
                u8 ext[2] = {};
                if (bpf_skb_load_bytes(skb, off, ext, 2) < 0)
                    return -1;
                next = ext[0];
                off += (ext[1] + 1) * 8;
            } else if (next == 44) {
                u8 frag[4] = {};
                if (bpf_skb_load_bytes(skb, off, frag, 4) < 0)
                    return -1;
                next = frag[0];
                off += 8;
                if ((((u16)frag[2] << 8) | frag[3]) & 0xfff8) {
                    p->key.proto = next;
                    return 0;
                }
            }
        }
        p->key.proto = next;
        return parse_l4(skb, off, p);
    }
    return 1;  // not IP: nothing to report
}

static __always_inline u8 reply_by_flags(struct parsed *p, u8 *known) {
    *known = 0;
    if (p->key.proto == IPPROTO_TCP && (p->tcp_flags & 0x02)) {  // SYN
        *known = 1;
        return (p->tcp_flags & 0x10) ? 1 : 0;  // SYN-ACK answers
    }
    if (p->key.proto == IPPROTO_ICMP) {
        if (p->icmp_type == 8) { *known = 1; return 0; }  // echo request
        if (p->icmp_type == 0) { *known = 1; return 1; }  // echo reply
    }
    if (p->key.proto == IPPROTO_ICMPV6) {
        if (p->icmp_type == 128) { *known = 1; return 0; }
        if (p->icmp_type == 129) { *known = 1; return 1; }
    }
    return 0;
}

static __always_inline int handle(struct __sk_buff *skb, u8 point) {
    struct parsed p = {};
    stat_inc(STAT_PACKETS);
    int rc = parse(skb, &p);
    if (rc != 0) {
        if (rc < 0)
            stat_inc(STAT_PARSE_ERRORS);
        return TC_ACT_OK;
    }
    p.key.ifindex = skb->ifindex;
    p.key.point = point;

    u64 now = bpf_ktime_get_ns();
    u8 reason = REASON_NEW;
    u64 packets = 1, bytes = skb->len;
    u8 is_reply = 0;
    struct agg_val *v = agg_map.lookup(&p.key);
    if (v) {
        packets = __sync_fetch_and_add(&v->packets, 1) + 1;
        bytes = __sync_fetch_and_add(&v->bytes, skb->len) + skb->len;
        is_reply = v->is_reply;
        u64 bit = 1ULL << (p.tcp_flags & 0x3f);
        int key0 = CONF_REPORT_NS;
        u64 *interval = config.lookup(&key0);
        if (p.key.proto == IPPROTO_TCP && !(v->flags_seen & bit)) {
            __sync_fetch_and_or(&v->flags_seen, bit);
            reason = REASON_FLAGS;
        } else if (interval && *interval && now - v->last_report >= *interval) {
            reason = REASON_REPORT;
        } else {
            return TC_ACT_OK;
        }
        v->last_report = now;
    } else {
        // A new direction: it is the reply side if the opposite direction is already
        // known at this interface (flags such as SYN-ACK decide when they can).
        u8 known = 0;
        is_reply = reply_by_flags(&p, &known);
        if (!known) {
            struct agg_key rev = p.key;
            __builtin_memcpy(rev.saddr, p.key.daddr, 16);
            __builtin_memcpy(rev.daddr, p.key.saddr, 16);
            rev.sport = p.key.dport;
            rev.dport = p.key.sport;
            rev.point = point ^ 1;
            if (p.key.proto == IPPROTO_ICMP || p.key.proto == IPPROTO_ICMPV6) {
                rev.sport = p.key.sport;
                rev.dport = 0;
            }
            struct agg_val *rv = agg_map.lookup(&rev);
            is_reply = rv ? 1 : 0;
        }
        struct agg_val nv = {};
        nv.packets = 1;
        nv.bytes = skb->len;
        nv.last_report = now;
        nv.is_reply = is_reply;
        if (p.key.proto == IPPROTO_TCP)
            nv.flags_seen = 1ULL << (p.tcp_flags & 0x3f);
        agg_map.update(&p.key, &nv);
    }

    struct flow_event ev = {};
    ev.ts = now;
    ev.packets = packets;
    ev.bytes = bytes;
    __builtin_memcpy(ev.saddr, p.key.saddr, 16);
    __builtin_memcpy(ev.daddr, p.key.daddr, 16);
    __builtin_memcpy(ev.smac, p.smac, 6);
    __builtin_memcpy(ev.dmac, p.dmac, 6);
    ev.sport = p.key.sport;
    ev.dport = p.key.dport;
    if (p.key.proto == IPPROTO_ICMP || p.key.proto == IPPROTO_ICMPV6)
        ev.sport = 0;
    ev.ifindex = p.key.ifindex;
    ev.pkt_len = skb->len;
    ev.event_type = EVENT_TRACE;
    ev.reason = reason;
    ev.family = p.key.family;
    ev.proto = p.key.proto;
    ev.tcp_flags = p.tcp_flags;
    ev.point = point;
    ev.is_reply = is_reply;
    ev.icmp_type = p.icmp_type;
    ev.icmp_code = p.icmp_code;
    events.perf_submit(skb, &ev, sizeof(ev));
    stat_inc(STAT_EVENTS);
    return TC_ACT_OK;
}

int tc_from_endpoint(struct __sk_buff *skb) {
    return handle(skb, POINT_FROM_ENDPOINT);
}

int tc_to_endpoint(struct __sk_buff *skb) {
    return handle(skb, POINT_TO_ENDPOINT);
}
