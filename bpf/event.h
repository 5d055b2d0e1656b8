// webb datapath: the record every program writes to its perf buffer.
//
// Keep in sync with services/agent/datapath/event.py (EVENT_STRUCT).
#ifndef WEBB_EVENT_H
#define WEBB_EVENT_H

// event_type: what produced the record.
#define EVENT_TRACE 1           // a packet passed an observation point
#define EVENT_DROP 2            // the datapath dropped it (policy); drop_reason is Hubble's code
#define EVENT_POLICY_VERDICT 3  // first packet of an allowed connection of a policed endpoint
#define EVENT_KERNEL_DROP 4     // the kernel freed it with a drop reason (skb:kfree_skb)

// Observation points, as seen from the endpoint: a packet entering the host-side
// interface (TC ingress) is leaving the endpoint.
#define POINT_FROM_ENDPOINT 0
#define POINT_TO_ENDPOINT 1

// EVENT_POLICY_VERDICT's reason: the allowed connection goes to the L7 proxy (Cilium's
// policy-verdict action "redirect", Hubble's verdict REDIRECTED).
#define VERDICT_REDIRECT 1

struct flow_event {
    u64 ts;
    u64 packets;   // trace: packets of the direction so far; drops: drops since the last event
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
    u8 reason;     // trace reason (new, flags, report); policy verdicts: VERDICT_REDIRECT
    u8 family;
    u8 proto;
    u8 tcp_flags;
    u8 point;
    u8 is_reply;
    u8 icmp_type;
    u8 icmp_code;
    u8 match_type; // policy verdicts: Cilium's policy match type
    u16 proxy_port; // traces: the packet went to the L7 proxy, on this port (Hubble's TO_PROXY)
    u32 drop_reason;  // EVENT_DROP: Hubble drop reason; EVENT_KERNEL_DROP: the kernel's value
    u32 policy_set;   // agent's id of the policies that allowed/denied (0: none)
    u32 remote_id;    // security identity of the peer as the policy saw it (0: not evaluated)
};

#endif
