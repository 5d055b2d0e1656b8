// webb datapath: payload capture for L7 visibility (HTTP/1.x, DNS).
//
// Which connections are parsed is decided once per direction, when it is new (or
// when the agent bumps the revision): l7_sel says, per endpoint interface, which
// ports on which side carry which protocol. The choice is kept in the direction's
// agg_map entry, so a direction not selected costs one byte test per packet.
//
// A selected direction sends the first bytes of its payload packets to user space
// (l7_events): for DNS every message; for HTTP the first payload of the direction
// and then only segments that start like an HTTP/1.x head, so body segments stay in
// the kernel. l7_events is a BPF ring buffer (one for all CPUs, drained by the agent
// on its timer, no wake-ups): the record is built in a per-CPU scratch (the header,
// then the payload's first bytes loaded with bpf_skb_load_bytes) and copied out with
// one bpf_ringbuf_output of its used length. Measured here (bench/l7_bench.py (c)),
// that costs less per captured packet than bpf_perf_event_output of the skb did.
#ifndef WEBB_L7_H
#define WEBB_L7_H

#define L7_NONE 0
#define L7_HTTP 1
#define L7_DNS 2
#define L7_KIND_MASK 0x0f
#define L7_RESPONSE_SIDE 0x10  // this direction carries the server's answers

#ifndef L7_PREFIX
#define L7_PREFIX 1024
#endif

// mode: observation point (bit 0) | L7_MODE_SPORT when `port` is the packet's source
// port (the server's answers) rather than its destination port (requests).
#define L7_MODE_SPORT 2

struct l7_sel_key {
    u32 ifindex;
    u16 port;
    u8 proto;
    u8 mode;
};

// Keep in sync with services/agent/datapath/event.py (L7_EVENT_STRUCT).
struct l7_event {
    u64 ts;
    u8 saddr[16];
    u8 daddr[16];
    u16 sport;
    u16 dport;
    u32 ifindex;
    u32 seq;          // TCP sequence number of the payload's first byte
    u32 payload_len;  // whole payload of the packet (the capture may be shorter)
    u16 payload_off;  // where the payload starts in the captured bytes (0: the capture
                      // starts at the payload; the packet's headers are not sent)
    u16 cap_len;      // captured bytes that follow this header
    u8 family;
    u8 proto;
    u8 point;
    u8 l7;            // kind | L7_RESPONSE_SIDE
    u8 is_reply;
    u8 tcp_flags;
    u8 pad[6];    // to sizeof's 8-byte multiple: the captured bytes follow at 72
};

BPF_HASH(l7_sel, struct l7_sel_key, u8, L7_SEL_SIZE);
#ifndef L7_RING_PAGES
#define L7_RING_PAGES 1024  // the loader passes its size: a power of two of pages
#endif
#ifndef L7_CAP_SIZE
#define L7_CAP_SIZE 1024  // the loader passes the power of two >= L7_PREFIX
#endif
// A record: the header, then the first cap_len (<= L7_PREFIX) bytes of the payload.
struct l7_record {
    struct l7_event ev;
    u8 data[L7_CAP_SIZE];
};

BPF_RINGBUF_OUTPUT(l7_events, L7_RING_PAGES);
// The record under construction (too big for the stack).
BPF_PERCPU_ARRAY(l7_scratch, struct l7_record, 1);

#define SIG4(a, b, c, d) ((u32)(a) | ((u32)(b) << 8) | ((u32)(c) << 16) | ((u32)(d) << 24))

static __always_inline int http_head_start(u32 sig) {
    return sig == SIG4('G', 'E', 'T', ' ') || sig == SIG4('P', 'O', 'S', 'T') ||
           sig == SIG4('P', 'U', 'T', ' ') || sig == SIG4('H', 'E', 'A', 'D') ||
           sig == SIG4('H', 'T', 'T', 'P') || sig == SIG4('D', 'E', 'L', 'E') ||
           sig == SIG4('P', 'A', 'T', 'C') || sig == SIG4('O', 'P', 'T', 'I') ||
           sig == SIG4('C', 'O', 'N', 'N') || sig == SIG4('T', 'R', 'A', 'C');
}

#endif
