// webb datapath: network policy lookups for the TC programs in flow.c.
//
// The agent compiles policies (services/agent/policy/) into these maps:
//   ipcache       LPM trie: address -> security identity (endpoints, nodes, policy CIDRs);
//                 no match means world.
//   policy_deny   LPM trie: (endpoint, direction, remote identity, protocol, port prefix)
//   policy_allow  the same for allow entries. Identity 0 stands for "any identity", a
//                 key that stops before the protocol for "any protocol", and a port
//                 prefix shorter than 16 bits for a port range. Deny and allow live in
//                 separate maps so that a deny wins whatever the specificity of an allow.
//   ep_map        hash: host-side ifindex -> endpoint id and per-direction enforcement.
// Keep the layouts in sync with services/agent/policy/maps.py.
#ifndef WEBB_POLICY_H
#define WEBB_POLICY_H

#define DIR_INGRESS 0
#define DIR_EGRESS 1

#define EP_ENFORCE_INGRESS 1  // default deny at ingress: only allowed traffic passes
#define EP_ENFORCE_EGRESS 2
#define EP_POLICY_INGRESS 4   // some policy selects the endpoint: deny entries apply
#define EP_POLICY_EGRESS 8
#define EP_PROXY_EGRESS 16   // egress L7 rules: answers to the proxy may come (flow.c)

#define IDENTITY_WORLD 2

// Verdicts of policy_check.
#define VERDICT_ALLOW 0          // an allow entry matched
#define VERDICT_PASS 1           // not enforced in this direction, no deny entry
#define VERDICT_DENY 2           // a deny entry matched
#define VERDICT_DEFAULT_DENY 3   // enforced, nothing allowed it

#define MATCH_NONE 0
// Set in policy_val.match_type by the agent on allow entries whose port has L7 (HTTP)
// rules: connections they allow go through the agent's proxy (flow.c, to_proxy).
#define MATCH_PROXY 0x80
// Set by the agent on allow entries of toFQDNs addresses whose DNS answer expired while
// connections may still use them (Cilium keeps such IPs for its live connections): they
// allow directions already established, never a new one.
#define MATCH_ESTABLISHED 0x40

// Set by the agent: the ids of the policies behind an endpoint's default deny, per
// direction, go into drop events of default-denied packets.
struct ep_info {
    u32 ep_id;
    u32 flags;
    u32 ingress_set;
    u32 egress_set;
};

struct ipcache_key {
    u32 prefixlen;  // 32 (family) + address bits
    u32 family;     // 4 or 6
    u8 addr[16];
};

struct ipcache_val {
    u32 identity;
    u32 pad;
};

struct policy_key {
    u32 prefixlen;  // 96 up to the identity; 104 with the protocol; 112 + port bits
    u32 ep_id;
    u8 dir;
    u8 pad[3];
    u32 identity;
    u8 proto;
    u8 pad2;
    u16 dport;      // network byte order, so that a prefix is a port range
};

#define POLICY_FULL_PREFIX 128

struct policy_val {
    u32 set_id;     // which policies the entry came from (the agent names them)
    u8 match_type;  // Cilium's policy match type, for policy verdict flows
    u8 pad[3];
};

BPF_HASH(ep_map, u32, struct ep_info, EP_MAP_SIZE);
BPF_LPM_TRIE(ipcache, struct ipcache_key, struct ipcache_val, IPCACHE_SIZE);
BPF_LPM_TRIE(policy_allow, struct policy_key, struct policy_val, POLICY_MAP_SIZE);
BPF_LPM_TRIE(policy_deny, struct policy_key, struct policy_val, POLICY_MAP_SIZE);

static __always_inline u32 lookup_identity(u8 family, u8 *addr) {
    struct ipcache_key k = {};
    k.prefixlen = family == 4 ? 64 : 160;
    k.family = family;
    __builtin_memcpy(k.addr, addr, 16);
    struct ipcache_val *v = ipcache.lookup(&k);
    return v ? v->identity : IDENTITY_WORLD;
}

struct policy_result {
    u32 set_id;
    u8 match_type;
    u8 proxy;  // the allow entry says: through the proxy
};

// Deny entries first (for the identity, then for any identity), then, if the
// direction is enforced, allow entries the same way.
static __always_inline int policy_check(u32 ep_id, u8 dir, u32 identity, u8 proto, u16 dport,
                                        int enforce, u32 default_set,
                                        struct policy_result *res, u8 established) {
    struct policy_key k = {};
    k.prefixlen = POLICY_FULL_PREFIX;
    k.ep_id = ep_id;
    k.dir = dir;
    k.identity = identity;
    k.proto = proto;
    k.dport = bpf_htons(dport);
    struct policy_val *v = policy_deny.lookup(&k);
    if (!v) {
        k.identity = 0;
        v = policy_deny.lookup(&k);
    }
    if (v) {
        res->set_id = v->set_id;
        res->match_type = v->match_type;
        return VERDICT_DENY;
    }
    if (!enforce)
        return VERDICT_PASS;
    k.identity = identity;
    v = policy_allow.lookup(&k);
    if (v && (v->match_type & MATCH_ESTABLISHED) && !established)
        v = 0;  // an expired toFQDNs address: not for a new connection
    if (!v) {
        k.identity = 0;
        v = policy_allow.lookup(&k);
    }
    if (v) {
        res->set_id = v->set_id;
        res->match_type = v->match_type & ~(MATCH_PROXY | MATCH_ESTABLISHED);
        res->proxy = v->match_type & MATCH_PROXY ? 1 : 0;
        return VERDICT_ALLOW;
    }
    res->set_id = default_set;
    res->match_type = MATCH_NONE;
    return VERDICT_DEFAULT_DENY;
}

// Neighbour discovery and MLD keep IPv6 working whatever the policy (as in Cilium).
static __always_inline int policy_exempt(u8 proto, u8 icmp_type) {
    if (proto != 58)
        return 0;
    return (icmp_type >= 130 && icmp_type <= 137) || icmp_type == 143;
}

#endif
