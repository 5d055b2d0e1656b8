// webb datapath: L3/L4 flow events and network policy, from TC hooks on endpoint
// interfaces.
//
// Compiled at run time by bcc. Only UAPI structures (__sk_buff, IP/TCP/UDP headers)
// are used, so the program does not depend on the exact kernel header version.
//
// Per-packet work stays in the kernel: each direction of a connection, per
// observation point, has an entry in agg_map; a perf event is emitted only when
// something a user would see changes (first packet of the direction, a TCP flag
// combination not yet reported, or a periodic report for long connections).
//
// Policy (policy.h): a packet leaving the endpoint is checked against its egress
// policy, one entering it against its ingress policy. A direction whose opposite
// direction passed this interface first is a reply and passes (the agg_map entry is
// the connection tracking; a TCP SYN starts a new connection on a closed one's tuple,
// see handle()). Other directions are checked on their first packet and
// again whenever the agent bumps the policy revision; denied packets are dropped
// (TC_ACT_SHOT) and reported like traces, aggregated in drop_map.
// L7 policy: a connection that an allow entry with MATCH_PROXY lets in goes to the
// agent's transparent proxy instead of the endpoint. At the endpoint's interface
// (TC egress, towards the pod) its packets get WEBB_PROXY_MARK, their destination MAC
// set to the interface's own, and are redirected into the same interface's ingress;
// there tc_from_endpoint assigns them to the proxy's socket (bpf_sk_assign: the
// connection's own socket, else the listener), and the node's routing delivers them
// locally (`ip rule fwmark WEBB_PROXY_MARK lookup 100`, a local default route in
// table 100). No proxy listening means a drop (SOCKET_LOOKUP_FAILED): policy never
// fails open. Packets of the proxy's own connections to endpoints carry
// WEBB_UPSTREAM_MARK (SO_MARK) and are neither checked again nor redirected.
// Egress L7 policy (the rules of the client's endpoint): the client's packets enter
// the node at its interface's TC ingress, where they are given at once to the proxy's
// egress listener (CONF_PROXY_EGRESS_PORT) or its socket for the connection. The
// proxy connects to the server from the client's own address (IP_TRANSPARENT), so the
// server's answers come back towards the client's interface; there (TC egress, a new
// direction nobody sent the other way at this interface, on an endpoint with
// EP_PROXY_EGRESS) a socket of the node owning the tuple means the proxy's upstream
// connection: the packets go back in like to_proxy's and are assigned to that socket.
// Directions without L7 rules pay one compare of skb->mark.
//
// An established direction touches no policy map (not even ep_map) while the
// revision it stored is current: the agent bumps the revision after every change of
// the policy maps and of ep_map.

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
#include <net/sock.h>

#include "event.h"
#include "policy.h"
#include "l7.h"

#define REASON_NEW 0
#define REASON_FLAGS 1
#define REASON_REPORT 2

#define STAT_PACKETS 0  // no longer counted (per-packet cost); the slot stays for the layout
#define STAT_EVENTS 1
#define STAT_PARSE_ERRORS 2
#define STAT_POLICY_DROPS 3
#define STAT_L7_EVENTS 4
#define STAT_L7_LOST 5  // L7 records the ring buffer had no room for
#define STAT_MAX 6

// config slots 0 and 1 (report intervals) are compile-time constants now, see below.
#define CONF_POLICY_REVISION 2
#define CONF_PROXY_PORT 3
#define CONF_PROXY_EGRESS_PORT 4

// Hubble's DropReason for a packet the policy denied.
#define DROP_POLICY_DENIED 133
// Marks a packet this program drops, so that the kernel-drop tracepoint (drop.c)
// does not report it a second time. Keep in sync with datapath/event.py.
#define WEBB_DROP_MARK 0x7765626d
// Keep in sync with services/agent/l7proxy/steering.py.
#define WEBB_PROXY_MARK 0x77650001
#define WEBB_UPSTREAM_MARK 0x77650002
#define DROP_SOCKET_LOOKUP_FAILED 178
#define DROP_SOCKET_ASSIGN_FAILED 179
// agg_val.proxy (bits)
#define PROXY_REDIRECT 1  // the direction goes to the proxy (to_proxy, then proxy_assign)
#define PROXY_UPSTREAM 2  // the proxy's own connection to the endpoint
#define PROXY_ASSIGN 4    // egress: the client's direction, assigned to the proxy here
#define PROXY_REPLY 8     // the other direction of a proxied connection
#define PROXY_UP_REPLY 16 // the endpoint's answers to the proxy's upstream socket
// Decided when the direction was first seen, kept across policy revisions.
#define PROXY_KEEP (PROXY_UPSTREAM | PROXY_REPLY)

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
    u32 is_reply;    // as flows report it (TCP flags may decide)
    u32 ct_reply;    // the opposite direction passed here first: a reply, policy-wise
    u64 policy_rev;  // policy revision the direction was last checked against
    u8 l7;           // L7 parsing of this direction (l7.h): kind | L7_RESPONSE_SIDE
    u8 l7_seen;      // a payload of the direction went to user space already
    u8 proxy;        // PROXY_REDIRECT / PROXY_UPSTREAM
    u8 pad[5];
    u64 last_seen;   // not TCP: the direction's last packet; TCP: its last SYN (coarse
                     // clock), for their expiry
};

// Denied packets are aggregated by peer and destination port, not source port, so
// that a flood of SYNs from ever new ports stays a handful of events.
struct drop_key {
    u8 saddr[16];
    u8 daddr[16];
    u16 dport;
    u8 proto;
    u8 family;
    u32 ifindex;
    u8 point;
    u8 pad[3];
};

struct drop_val {
    u64 packets;
    u64 reported;
    u64 last_report;
};

BPF_TABLE("lru_hash", struct agg_key, struct agg_val, agg_map, AGG_MAP_SIZE);
BPF_TABLE("lru_hash", struct drop_key, struct drop_val, drop_map, DROP_MAP_SIZE);
BPF_PERF_OUTPUT(events);
BPF_PERCPU_ARRAY(stats, u64, STAT_MAX);
BPF_ARRAY(config, u64, 5);
// The event under construction: too big for the stack next to everything else.
BPF_PERCPU_ARRAY(scratch, struct flow_event, 1);

// Report intervals are fixed for the life of the programs: the loader passes them as
// -DREPORT_NS / -DDROP_REPORT_NS, so that no packet reads them from a map.
#ifndef REPORT_NS
#define REPORT_NS 10000000000ULL
#endif
// A UDP (any non-TCP) direction idle this long is gone: its next packet starts a new
// one, as Cilium's CT entry expires (--bpf-ct-timeout-regular-any, default 1 min).
#ifndef CT_TIMEOUT_ANY_NS
#define CT_TIMEOUT_ANY_NS 60000000000ULL
#endif
// A TCP direction that has sent only SYNs (SYN-ACKs) this long is a new attempt at its
// next one (Cilium: --bpf-ct-timeout-regular-tcp-syn, default 1 min).
#ifndef CT_TIMEOUT_SYN_NS
#define CT_TIMEOUT_SYN_NS 60000000000ULL
#endif
#ifndef DROP_REPORT_NS
#define DROP_REPORT_NS 1000000000ULL
#endif

// Headers are read straight from the packet (skb->data) when they are in its linear
// part, which they normally are; else through bpf_skb_load_bytes. Offsets are clamped
// for the verifier.
#define PKT_MAX_OFF 0x3ff

static __always_inline u8 *pkt_ptr(struct __sk_buff *skb, u32 off, u32 len) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    if (off > PKT_MAX_OFF)
        return 0;
    off &= PKT_MAX_OFF;
    u8 *ptr = data + off;
    if ((void *)(ptr + len) > end)
        return 0;
    return ptr;
}

static __always_inline void stat_inc(int idx) {
    u64 *v = stats.lookup(&idx);
    if (v)
        *v += 1;
}

static __always_inline u64 config_get(int idx) {
    u64 *v = config.lookup(&idx);
    return v ? *v : 0;
}

struct parsed {
    struct agg_key key;
    u8 smac[6];
    u8 dmac[6];
    u8 tcp_flags;
    u8 icmp_type;
    u8 icmp_code;
    u8 l4hlen;  // TCP header length
    u16 l4off;  // where the L4 header starts (0: none)
};

static __always_inline int parse_l4(struct __sk_buff *skb, u32 off, struct parsed *p) {
    p->l4off = off;
    if (p->key.proto == IPPROTO_TCP) {
        u8 *h = pkt_ptr(skb, off, sizeof(struct tcphdr));
        if (h) {
            p->key.sport = ((u16)h[0] << 8) | h[1];
            p->key.dport = ((u16)h[2] << 8) | h[3];
            p->tcp_flags = h[13];
            p->l4hlen = (h[12] >> 4) * 4;
            return 0;
        }
        struct tcphdr th = {};
        if (bpf_skb_load_bytes(skb, off, &th, sizeof(th)) < 0)
            return -1;
        p->key.sport = bpf_ntohs(th.source);
        p->key.dport = bpf_ntohs(th.dest);
        // Byte 13 of the TCP header holds CWR..FIN.
        p->tcp_flags = ((u8 *)&th)[13];
        p->l4hlen = th.doff * 4;
    } else if (p->key.proto == IPPROTO_UDP) {
        u8 *h = pkt_ptr(skb, off, sizeof(struct udphdr));
        if (h) {
            p->key.sport = ((u16)h[0] << 8) | h[1];
            p->key.dport = ((u16)h[2] << 8) | h[3];
            return 0;
        }
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

static __always_inline int parse_slow(struct __sk_buff *skb, struct parsed *p);

static __always_inline int parse(struct __sk_buff *skb, struct parsed *p) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct iphdr *iph = data + ETH_HLEN;
    if ((void *)(iph + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
        return parse_slow(skb, p);
    __builtin_memcpy(p->smac, eth->h_source, 6);
    __builtin_memcpy(p->dmac, eth->h_dest, 6);
    p->key.family = 4;
    p->key.proto = iph->protocol;
    __builtin_memcpy(p->key.saddr, &iph->saddr, 4);
    __builtin_memcpy(p->key.daddr, &iph->daddr, 4);
    if (iph->frag_off & bpf_htons(0x1fff))
        return 0;
    return parse_l4(skb, ETH_HLEN + iph->ihl * 4, p);
}

// Everything else (IPv6, headers outside the linear data, non-IP) the careful way.
static __always_inline int parse_slow(struct __sk_buff *skb, struct parsed *p) {
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

// An ICMP error (unreachable, time exceeded, parameter problem; "packet too big" for
// path MTU discovery) about a packet that passed this interface the other way is
// related to an allowed connection, and passes like a reply.
static __always_inline int icmp_related(struct __sk_buff *skb, struct parsed *p, u8 point) {
    u8 t = p->icmp_type;
    int err4 = p->key.proto == IPPROTO_ICMP && (t == 3 || t == 11 || t == 12);
    int err6 = p->key.proto == IPPROTO_ICMPV6 && t >= 1 && t <= 4;
    if ((!err4 && !err6) || !p->l4off)
        return 0;
    u32 off = p->l4off + 8;
    struct agg_key k = {};
    if (err4) {
        struct iphdr ih = {};
        if (bpf_skb_load_bytes(skb, off, &ih, sizeof(ih)) < 0)
            return 0;
        k.family = 4;
        k.proto = ih.protocol;
        __builtin_memcpy(k.saddr, &ih.saddr, 4);
        __builtin_memcpy(k.daddr, &ih.daddr, 4);
        off += ih.ihl * 4;
    } else {
        struct ipv6hdr ih = {};
        if (bpf_skb_load_bytes(skb, off, &ih, sizeof(ih)) < 0)
            return 0;
        k.family = 6;
        k.proto = ih.nexthdr;
        __builtin_memcpy(k.saddr, &ih.saddr, 16);
        __builtin_memcpy(k.daddr, &ih.daddr, 16);
        off += sizeof(ih);
    }
    if (k.proto != IPPROTO_TCP && k.proto != IPPROTO_UDP)
        return 0;
    u8 ports[4] = {};
    if (bpf_skb_load_bytes(skb, off, ports, 4) < 0)
        return 0;
    k.sport = ((u16)ports[0] << 8) | ports[1];
    k.dport = ((u16)ports[2] << 8) | ports[3];
    k.ifindex = p->key.ifindex;
    k.point = point ^ 1;
    return agg_map.lookup(&k) ? 1 : 0;
}

// Fills the scratch event with what every kind of record carries.
static __always_inline struct flow_event *new_event(struct __sk_buff *skb, struct parsed *p,
                                                    u8 point, u64 now, u8 event_type) {
    int zero = 0;
    struct flow_event *ev = scratch.lookup(&zero);
    if (!ev)
        return 0;
    __builtin_memset(ev, 0, sizeof(*ev));
    ev->ts = now;
    __builtin_memcpy(ev->saddr, p->key.saddr, 16);
    __builtin_memcpy(ev->daddr, p->key.daddr, 16);
    __builtin_memcpy(ev->smac, p->smac, 6);
    __builtin_memcpy(ev->dmac, p->dmac, 6);
    ev->sport = p->key.sport;
    ev->dport = p->key.dport;
    if (p->key.proto == IPPROTO_ICMP || p->key.proto == IPPROTO_ICMPV6)
        ev->sport = 0;
    ev->ifindex = p->key.ifindex;
    ev->pkt_len = skb->len;
    ev->event_type = event_type;
    ev->family = p->key.family;
    ev->proto = p->key.proto;
    ev->tcp_flags = p->tcp_flags;
    ev->point = point;
    ev->icmp_type = p->icmp_type;
    ev->icmp_code = p->icmp_code;
    return ev;
}

static __always_inline int datapath_drop(struct __sk_buff *skb, struct parsed *p, u8 point,
                                         u64 now, u32 identity, struct policy_result *res,
                                         u32 reason) {
    skb->mark = WEBB_DROP_MARK;
    stat_inc(STAT_POLICY_DROPS);
    struct drop_key dk = {};
    __builtin_memcpy(dk.saddr, p->key.saddr, 16);
    __builtin_memcpy(dk.daddr, p->key.daddr, 16);
    dk.dport = p->key.dport;
    dk.proto = p->key.proto;
    dk.family = p->key.family;
    dk.ifindex = p->key.ifindex;
    dk.point = point;
    u64 count = 1;
    struct drop_val *dv = drop_map.lookup(&dk);
    if (dv) {
        u64 n = __sync_fetch_and_add(&dv->packets, 1) + 1;
        if (now - dv->last_report < DROP_REPORT_NS)
            return TC_ACT_SHOT;
        count = n - dv->reported;
        dv->reported = n;
        dv->last_report = now;
    } else {
        struct drop_val nv = {};
        nv.packets = 1;
        nv.reported = 1;
        nv.last_report = now;
        drop_map.update(&dk, &nv);
    }
    struct flow_event *ev = new_event(skb, p, point, now, EVENT_DROP);
    if (!ev)
        return TC_ACT_SHOT;
    ev->packets = count;
    ev->bytes = skb->len;
    ev->drop_reason = reason;
    ev->policy_set = res->set_id;
    ev->match_type = res->match_type;
    ev->remote_id = identity;
    events.perf_submit(skb, ev, sizeof(*ev));
    stat_inc(STAT_EVENTS);
    return TC_ACT_SHOT;
}

static __always_inline int policy_drop(struct __sk_buff *skb, struct parsed *p, u8 point,
                                       u64 now, u32 identity, struct policy_result *res) {
    return datapath_drop(skb, p, point, now, identity, res, DROP_POLICY_DENIED);
}

// Towards the proxy: back into the node through the interface's own ingress, where
// tc_from_endpoint (proxy_assign) gives the packet to the proxy's socket.
static __always_inline int to_proxy(struct __sk_buff *skb, struct parsed *p) {
    // The interface's address is the frame's source (the node sends to the pod):
    // as destination it makes the frame PACKET_HOST when it comes back in.
    bpf_skb_store_bytes(skb, 0, p->smac, 6, 0);
    skb->mark = WEBB_PROXY_MARK;
    return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

// The packet's own tuple for the kernel's socket lookups (network order); its size.
static __always_inline u32 packet_tuple(struct bpf_sock_tuple *t, const struct parsed *p) {
    if (p->key.family == 4) {
        __builtin_memcpy(&t->ipv4.saddr, p->key.saddr, 4);
        __builtin_memcpy(&t->ipv4.daddr, p->key.daddr, 4);
        t->ipv4.sport = bpf_htons(p->key.sport);
        t->ipv4.dport = bpf_htons(p->key.dport);
        return sizeof(t->ipv4);
    }
    __builtin_memcpy(t->ipv6.saddr, p->key.saddr, 16);
    __builtin_memcpy(t->ipv6.daddr, p->key.daddr, 16);
    t->ipv6.sport = bpf_htons(p->key.sport);
    t->ipv6.dport = bpf_htons(p->key.dport);
    return sizeof(t->ipv6);
}

// The tuple's destination made the proxy's listener: 127.0.0.1 / ::1 on port.
static __always_inline void to_listener(struct bpf_sock_tuple *t, const struct parsed *p,
                                        u16 port) {
    if (p->key.family == 4) {
        t->ipv4.daddr = bpf_htonl(0x7f000001);
        t->ipv4.dport = bpf_htons(port);
    } else {
        __builtin_memset(t->ipv6.daddr, 0, 16);
        t->ipv6.daddr[3] = bpf_htonl(1);
        t->ipv6.dport = bpf_htons(port);
    }
}

// A packet to_proxy sent back in (slot CONF_PROXY_PORT, reported at the endpoint it
// was headed to), or a client's packet of an egress-proxied connection (slot
// CONF_PROXY_EGRESS_PORT, reported where it came from): the proxy's socket for its
// connection, else the proxy's listener (127.0.0.1 / ::1 on the slot's port);
// neither: dropped.
static __always_inline int proxy_assign(struct __sk_buff *skb, struct parsed *p, int slot,
                                        u8 drop_point) {
    struct bpf_sock_tuple t = {};
    struct bpf_sock *sk = 0;
    struct policy_result res = {};
    u32 reason = DROP_SOCKET_LOOKUP_FAILED;
    u16 port = (u16)config_get(slot);
    if (!port)
        goto drop;
    u32 size = packet_tuple(&t, p);
    if (p->key.proto == IPPROTO_UDP) {
        // A server's answer to a query the DNS proxy asked from the client's address:
        // the proxy's socket for it (connected: not a node service's).
        sk = bpf_sk_lookup_udp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
        if (sk && sk->dst_port != 0)
            goto assign;
        if (sk) {
            bpf_sk_release(sk);
            sk = 0;
        }
        // DNS (egress): every datagram to the proxy's UDP socket on the same port; it
        // learns the original destination from IP_ORIGDSTADDR.
        if (slot != CONF_PROXY_EGRESS_PORT)
            goto drop;
        to_listener(&t, p, port);
        sk = bpf_sk_lookup_udp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
        if (!sk)
            goto drop;
        goto assign;
    }
    if (p->key.proto != IPPROTO_TCP)
        goto drop;
    // A new connection whose tuple the proxy's side still holds in TIME_WAIT (the
    // proxy closed first) goes to the listener, not to the dead socket.
    u8 syn = (p->tcp_flags & 0x12) == 0x02;
    sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
    if (sk && (sk->state == BPF_TCP_LISTEN || (syn && sk->state == BPF_TCP_TIME_WAIT))) {
        bpf_sk_release(sk);
        sk = 0;
    }
    if (!sk) {
        to_listener(&t, p, port);
        sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
    }
    if (!sk)
        goto drop;
assign:;
    long err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (err == 0) {
        skb->mark = WEBB_PROXY_MARK;  // the node routes it locally (steering.py)
        return TC_ACT_OK;
    }
    reason = DROP_SOCKET_ASSIGN_FAILED;
drop:
    return datapath_drop(skb, p, drop_point, bpf_ktime_get_ns(), 0, &res, reason);
}

// An answer towards a client whose tuple a socket of the node owns: the egress proxy's
// upstream connection (it connected from the client's address). Only asked for the
// first packet of a direction nobody sent the other way at this interface.
// UDP: the DNS proxy's connected socket for a query it asks from the client's address.
static __always_inline int upstream_answer(struct __sk_buff *skb, struct parsed *p) {
    struct bpf_sock_tuple t = {};
    struct bpf_sock *sk;
    u32 size = packet_tuple(&t, p);
    int found;
    if (p->key.proto == IPPROTO_UDP) {
        sk = bpf_sk_lookup_udp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
        if (!sk)
            return 0;
        found = sk->dst_port != 0;  // connected (the proxy's), not a node service's
    } else {
        sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
        if (!sk)
            return 0;
        found = sk->state != BPF_TCP_LISTEN;
    }
    bpf_sk_release(sk);
    return found;
}

// Which L7 parser (if any) the direction of p at this point goes to: the request side
// matches its destination port, the answering side its source port.
static __always_inline u8 l7_select(struct parsed *p, u8 point) {
    if (p->key.proto != IPPROTO_TCP && p->key.proto != IPPROTO_UDP)
        return L7_NONE;
    struct l7_sel_key k = {};
    k.ifindex = p->key.ifindex;
    k.proto = p->key.proto;
    k.port = p->key.dport;
    k.mode = point;
    u8 *kind = l7_sel.lookup(&k);
    if (kind)
        return *kind;
    k.port = p->key.sport;
    k.mode = point | L7_MODE_SPORT;
    kind = l7_sel.lookup(&k);
    return kind ? (*kind | L7_RESPONSE_SIDE) : L7_NONE;
}

// Sends the packet's first bytes to user space when the payload is worth parsing;
// *seen is the direction's "a payload was sent already".
static __always_inline void l7_capture(struct __sk_buff *skb, struct parsed *p, u8 point,
                                       u8 l7, u8 *seen, u8 is_reply) {
    if (!p->l4off)
        return;
    u32 off = p->l4off + (p->key.proto == IPPROTO_TCP ? p->l4hlen : 8);
    u32 len = skb->len;
    if (len <= off || off > 0xffff)
        return;
    if ((l7 & L7_KIND_MASK) == L7_HTTP && *seen) {
        u32 sig = 0;
        if (bpf_skb_load_bytes(skb, off, &sig, 4) < 0 || !http_head_start(sig))
            return;
    }
    *seen = 1;
    int zero = 0;
    struct l7_record *rec = l7_scratch.lookup(&zero);
    if (!rec)
        return;
    struct l7_event *ev = &rec->ev;
    ev->ts = bpf_ktime_get_ns();
    __builtin_memcpy(ev->saddr, p->key.saddr, 16);
    __builtin_memcpy(ev->daddr, p->key.daddr, 16);
    ev->sport = p->key.sport;
    ev->dport = p->key.dport;
    ev->ifindex = p->key.ifindex;
    ev->seq = 0;
    if (p->key.proto == IPPROTO_TCP) {
        u32 seq = 0;
        if (bpf_skb_load_bytes(skb, p->l4off + 4, &seq, 4) == 0)
            ev->seq = bpf_ntohl(seq);
    }
    ev->payload_len = len - off;
    ev->payload_off = 0;  // only the payload is captured
    u32 cap = len - off;
    if (cap > L7_PREFIX)
        cap = L7_PREFIX;
    ev->cap_len = cap;
    ev->family = p->key.family;
    ev->proto = p->key.proto;
    ev->point = point;
    ev->l7 = l7;
    ev->is_reply = is_reply;
    ev->tcp_flags = p->tcp_flags;
    // cap is in [1, L7_PREFIX] (len > off). The verifier is told so by a mask it cannot
    // lose (LLVM folds range checks into forms it does not follow): with cap in that
    // range, ((cap - 1) & (L7_CAP_SIZE - 1)) + 1 is cap.
    u64 n = cap;
    asm volatile("" : "+r"(n));
    n = ((n - 1) & (L7_CAP_SIZE - 1)) + 1;
    if (bpf_skb_load_bytes(skb, off, rec->data, n) < 0)
        return;
    if (l7_events.ringbuf_output(rec, sizeof(*ev) + n, BPF_RB_NO_WAKEUP) < 0) {
        stat_inc(STAT_L7_LOST);  // the ring is full: user space reports lost events
        return;
    }
    stat_inc(STAT_L7_EVENTS);
}

// Policy of the endpoint behind ifindex in direction dir: 0 none, else bits 1 (deny
// entries apply) and 2 (default deny).
struct ep_policy {
    u32 pflags;
    u32 ep_id;
    u32 default_set;
    u32 flags;  // ep_info.flags as they are
};

static __always_inline void ep_policy_get(u32 ifindex, u8 dir, struct parsed *p,
                                          struct ep_policy *e) {
    struct ep_info *ep = ep_map.lookup(&ifindex);
    if (!ep)
        return;
    u32 f = ep->flags;
    e->flags = f;
    e->ep_id = ep->ep_id;
    if (dir == DIR_INGRESS) {
        e->pflags = ((f & EP_POLICY_INGRESS) ? 1 : 0) | ((f & EP_ENFORCE_INGRESS) ? 2 : 0);
        e->default_set = ep->ingress_set;
    } else {
        e->pflags = ((f & EP_POLICY_EGRESS) ? 1 : 0) | ((f & EP_ENFORCE_EGRESS) ? 2 : 0);
        e->default_set = ep->egress_set;
    }
    if (e->pflags && policy_exempt(p->key.proto, p->icmp_type))
        e->pflags = 0;
}

// The key of the opposite direction of p's (its answers, or what it answers).
static __always_inline void reverse_key(struct parsed *p, u8 point, struct agg_key *rk) {
    *rk = p->key;
    __builtin_memcpy(rk->saddr, p->key.daddr, 16);
    __builtin_memcpy(rk->daddr, p->key.saddr, 16);
    rk->sport = p->key.dport;
    rk->dport = p->key.sport;
    rk->point = point ^ 1;
    if (p->key.proto == IPPROTO_ICMP || p->key.proto == IPPROTO_ICMPV6) {
        // Echo replies answer echo requests (ICMP keys carry the type as sport).
        u8 t = p->icmp_type;
        if (p->key.proto == IPPROTO_ICMP && t == 0)
            t = 8;
        else if (p->key.proto == IPPROTO_ICMPV6 && t == 129)
            t = 128;
        rk->sport = t;
        rk->dport = 0;
    }
}

static __always_inline int handle(struct __sk_buff *skb, u8 point) {
    struct parsed p = {};
    int rc = parse(skb, &p);
    if (rc != 0) {
        if (rc < 0)
            stat_inc(STAT_PARSE_ERRORS);
        return TC_ACT_OK;
    }
    u32 ifindex = skb->ifindex;
    p.key.ifindex = ifindex;
    p.key.point = point;
    u32 mark = skb->mark;
    if (point == POINT_FROM_ENDPOINT && mark == WEBB_PROXY_MARK)
        // sent back in by to_proxy: not the pod's packet
        return proxy_assign(skb, &p, CONF_PROXY_PORT, POINT_TO_ENDPOINT);
    u8 upstream = point == POINT_TO_ENDPOINT && mark == WEBB_UPSTREAM_MARK;

    // The revision is read before any policy map: the agent bumps it after every
    // change of ep_map and the policy maps, so a direction that stores it has been
    // checked against maps at least that new.
    u64 rev = config_get(CONF_POLICY_REVISION);
    u8 dir = point == POINT_FROM_ENDPOINT ? DIR_EGRESS : DIR_INGRESS;
    u8 *remote = dir == DIR_EGRESS ? p.key.daddr : p.key.saddr;
    struct ep_policy pol = {};
    struct policy_result res = {};

    u8 reason = REASON_NEW;
    u64 now;
    u64 packets = 1, bytes = skb->len;
    u8 is_reply = 0;
    u8 verdict_event = 0;
    u32 identity = 0;
    int act = TC_ACT_OK;
    u8 proxy_bits = 0;  // the direction's agg_val.proxy, for its trace event
    // A TCP connection's first packet (SYN, no ACK): never a reply (a reverse entry
    // with its tuple is an old connection's, see below).
    u8 syn = p.key.proto == IPPROTO_TCP && (p.tcp_flags & 0x12) == 0x02;
    // Of ICMP only echo replies answer (errors: icmp_related). The reverse key of any
    // other type is the same type the other way: an echo request of the peer's would
    // make this endpoint's own echo request its "reply", past its egress policy.
    u8 icmp = p.key.proto == IPPROTO_ICMP || p.key.proto == IPPROTO_ICMPV6;
    u8 answers_nothing =
        syn || (icmp && !(p.key.proto == IPPROTO_ICMP ? p.icmp_type == 0 : p.icmp_type == 129));
    struct agg_val *v = agg_map.lookup(&p.key);
    // A SYN or SYN-ACK on a direction that has sent anything else (ACK, data, FIN, RST)
    // opens a new connection on an old one's tuple (the kernel gives a closed
    // connection's port again): as Cilium reopens a closing CT entry, it is a new
    // direction (policy check, verdict event, fresh state), not the old one's.
    // Retransmitted SYNs (and SYN-ACKs) repeat the one combination seen and stay.
    if (v && p.key.proto == IPPROTO_TCP && (p.tcp_flags & 0x02) &&
        (v->flags_seen & ~(1ULL << (p.tcp_flags & 0x3f))))
        v = 0;
    // The coarse clock, read once: the report check below uses it too.
    u64 coarse = 0;
    // A repeated SYN (SYN-ACK) is a retransmission only within the establishment
    // timeout (Cilium's --bpf-ct-timeout-regular-tcp-syn): an attempt that got no
    // further (refused: the RST is the other direction's; timed out) leaves its entry,
    // and the same tuple given again later is a new attempt with its own verdict.
    if (v && p.key.proto == IPPROTO_TCP && (p.tcp_flags & 0x02)) {
        coarse = bpf_ktime_get_coarse_ns();
        if ((s64)(coarse - v->last_seen) > (s64)CT_TIMEOUT_SYN_NS)
            v = 0;
        else
            v->last_seen = coarse;
    }
    // Not TCP (no SYN to tell): a direction idle past its lifetime is new again.
    // The flow lives while either direction is active (Cilium: one CT entry for both):
    // a direction quiet while its opposite one goes on is not new (else a client's
    // next packet on a flow the server kept busy would become a "reply" to the
    // server's direction, reported as one and past the client's policy).
    if (v && p.key.proto != IPPROTO_TCP) {
        coarse = bpf_ktime_get_coarse_ns();
        if ((s64)(coarse - v->last_seen) > (s64)CT_TIMEOUT_ANY_NS) {
            struct agg_key ok = {};
            reverse_key(&p, point, &ok);
            struct agg_val *ov = answers_nothing ? 0 : agg_map.lookup(&ok);
            if (!ov || (s64)(coarse - ov->last_seen) > (s64)CT_TIMEOUT_ANY_NS)
                v = 0;
        }
        if (v)
            v->last_seen = coarse;
    }
    if (v) {
        // Established direction: the endpoint's policy is consulted again only when
        // the revision changed since the direction was last checked.
        if (v->policy_rev != rev) {
            u8 proxy = v->proxy & PROXY_KEEP ? v->proxy : 0;
            if (!v->ct_reply && !upstream) {
                ep_policy_get(ifindex, dir, &p, &pol);
                if (pol.pflags) {
                    identity = lookup_identity(p.key.family, remote);
                    int verdict = policy_check(pol.ep_id, dir, identity, p.key.proto,
                                               p.key.dport, pol.pflags & 2, pol.default_set,
                                               &res, 1);
                    if (verdict >= VERDICT_DENY)
                        return policy_drop(skb, &p, point, bpf_ktime_get_ns(), identity, &res);
                    if (res.proxy)
                        proxy = dir == DIR_INGRESS ? PROXY_REDIRECT : PROXY_ASSIGN;
                }
            }
            v->proxy = proxy;
            // The agent bumps the revision for L7 changes too. Proxied connections
            // are the proxy's to report: the passive capture steps aside.
            v->l7 = proxy ? L7_NONE : l7_select(&p, point);
            v->policy_rev = rev;
        }
        if (v->proxy & PROXY_REDIRECT)
            act = to_proxy(skb, &p);
        else if (v->proxy & PROXY_ASSIGN) {
            act = proxy_assign(skb, &p, CONF_PROXY_EGRESS_PORT, POINT_FROM_ENDPOINT);
            if (act != TC_ACT_OK)
                return act;
        } else if (v->proxy & PROXY_UP_REPLY) {
            act = proxy_assign(skb, &p, CONF_PROXY_PORT, POINT_FROM_ENDPOINT);
            if (act != TC_ACT_OK)
                return act;
        }
        if (v->l7)
            l7_capture(skb, &p, point, v->l7, &v->l7_seen, v->is_reply);
        packets = __sync_fetch_and_add(&v->packets, 1) + 1;
        bytes = __sync_fetch_and_add(&v->bytes, skb->len) + skb->len;
        is_reply = v->is_reply;
        u64 bit = 1ULL << (p.tcp_flags & 0x3f);
        if (p.key.proto == IPPROTO_TCP && !(v->flags_seen & bit)) {
            __sync_fetch_and_or(&v->flags_seen, bit);
            reason = REASON_FLAGS;
            now = bpf_ktime_get_ns();
        } else {
            // The coarse clock (same base, tick resolution) is enough to tell
            // whether a report is due; signed, as it may lag last_report a little.
            if (!REPORT_NS ||
                (s64)((coarse ? coarse : bpf_ktime_get_coarse_ns()) - v->last_report) <
                    (s64)REPORT_NS)
                return act;
            reason = REASON_REPORT;
            now = bpf_ktime_get_ns();
        }
        v->last_report = now;
        proxy_bits = v->proxy;
    } else {
        now = bpf_ktime_get_ns();
        ep_policy_get(ifindex, dir, &p, &pol);
        // A new direction. It is a reply if the opposite direction already passed
        // this interface; flows may know better from TCP flags or ICMP types.
        struct agg_key rev_key = {};
        reverse_key(&p, point, &rev_key);
        // A SYN answers nothing: the reverse entry of its tuple, if any, is a closed
        // connection's (taken for this one's, the new connection would pass unchecked
        // as its reply). Its SYN-ACK then reopens that entry (above). Nor does an ICMP
        // echo request (above).
        struct agg_val *rv = answers_nothing ? 0 : agg_map.lookup(&rev_key);
        if (rv && p.key.proto != IPPROTO_TCP && (s64)(now - rv->last_seen) > (s64)CT_TIMEOUT_ANY_NS)
            rv = 0;  // expired: no reply to it
        u8 ct_reply = rv ? 1 : 0;
        u8 proxy = upstream ? PROXY_UPSTREAM : 0;
        if (rv && (rv->proxy & PROXY_UPSTREAM)) {
            // The endpoint's answers to the ingress proxy, which connected from the
            // client's address: given to its socket here, wherever the client is.
            proxy = PROXY_UPSTREAM;
            if (point == POINT_FROM_ENDPOINT) {
                proxy |= PROXY_UP_REPLY;
                act = proxy_assign(skb, &p, CONF_PROXY_PORT, POINT_FROM_ENDPOINT);
                if (act != TC_ACT_OK)
                    return act;
            }
        }
        else if (rv && (rv->proxy & PROXY_ASSIGN))
            proxy = PROXY_REPLY;     // the egress proxy's answers to the client
        else if (!rv && point == POINT_TO_ENDPOINT && (pol.flags & EP_PROXY_EGRESS) &&
                 (p.key.proto == IPPROTO_TCP || p.key.proto == IPPROTO_UDP) &&
                 upstream_answer(skb, &p)) {
            // The server answers the egress proxy, which connected from the client's
            // address: to the proxy's socket, past the client's ingress policy.
            proxy = PROXY_REDIRECT | PROXY_REPLY;
            ct_reply = 1;
            act = to_proxy(skb, &p);
        }
        u8 known = 0;
        is_reply = reply_by_flags(&p, &known);
        if (!known)
            is_reply = ct_reply;
        if (pol.pflags && !ct_reply && icmp_related(skb, &p, point))
            ct_reply = 1;
        if (pol.pflags && !ct_reply && !upstream) {
            identity = lookup_identity(p.key.family, remote);
            int verdict = policy_check(pol.ep_id, dir, identity, p.key.proto, p.key.dport,
                                       pol.pflags & 2, pol.default_set, &res, 0);
            if (verdict >= VERDICT_DENY)
                return policy_drop(skb, &p, point, now, identity, &res);
            verdict_event = verdict == VERDICT_ALLOW;
            if (res.proxy && dir == DIR_INGRESS) {
                proxy = PROXY_REDIRECT;
                act = to_proxy(skb, &p);
            } else if (res.proxy) {
                proxy = PROXY_ASSIGN;
                act = proxy_assign(skb, &p, CONF_PROXY_EGRESS_PORT, POINT_FROM_ENDPOINT);
                if (act != TC_ACT_OK)
                    return act;
            }
        }
        struct agg_val nv = {};
        nv.packets = 1;
        nv.bytes = skb->len;
        nv.last_report = now;
        nv.last_seen = now;
        nv.is_reply = is_reply;
        nv.ct_reply = ct_reply;
        nv.policy_rev = rev;
        if (p.key.proto == IPPROTO_TCP)
            nv.flags_seen = 1ULL << (p.tcp_flags & 0x3f);
        nv.proxy = proxy;
        nv.l7 = proxy ? L7_NONE : l7_select(&p, point);
        if (nv.l7)
            l7_capture(skb, &p, point, nv.l7, &nv.l7_seen, is_reply);
        agg_map.update(&p.key, &nv);
        proxy_bits = proxy;
    }

    struct flow_event *ev;
    if (verdict_event) {
        ev = new_event(skb, &p, point, now, EVENT_POLICY_VERDICT);
        if (ev) {
            ev->packets = 1;
            ev->bytes = skb->len;
            ev->policy_set = res.set_id;
            ev->match_type = res.match_type;
            ev->remote_id = identity;
            // Only the first packet of a policed direction gets here.
            ev->reason = res.proxy ? VERDICT_REDIRECT : 0;
            events.perf_submit(skb, ev, sizeof(*ev));
            stat_inc(STAT_EVENTS);
        }
    }
    ev = new_event(skb, &p, point, now, EVENT_TRACE);
    if (!ev)
        return act;
    ev->packets = packets;
    ev->bytes = bytes;
    ev->reason = reason;
    ev->is_reply = is_reply;
    ev->remote_id = identity;
    // A client's direction that policy steers to the proxy goes there, not on: its
    // traces (first packet, new TCP flags, reports: per connection, never per packet)
    // say so with the proxy's port (Hubble's TO_PROXY; the point still tells the
    // direction). The answers of the proxies' upstream connections are not steered.
    if ((proxy_bits & (PROXY_REDIRECT | PROXY_ASSIGN)) && !(proxy_bits & PROXY_REPLY))
        ev->proxy_port = (u16)config_get(point == POINT_TO_ENDPOINT ? CONF_PROXY_PORT
                                                                    : CONF_PROXY_EGRESS_PORT);
    events.perf_submit(skb, ev, sizeof(*ev));
    stat_inc(STAT_EVENTS);
    return act;
}

int tc_from_endpoint(struct __sk_buff *skb) {
    return handle(skb, POINT_FROM_ENDPOINT);
}

int tc_to_endpoint(struct __sk_buff *skb) {
    return handle(skb, POINT_TO_ENDPOINT);
}
