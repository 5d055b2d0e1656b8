// udpgen: bounded UDP traffic for bench/agent_bench.py, run inside a pod's network
// namespace with `ip netns exec`.
//
//   udpgen churn DST_IP --src SRC_IP [--first I] [--dport-lo P --dports N] ...
//       Datagram k (k = 0, 1, ...) is tuple number I+k: destination port
//       dport_lo + t % N, source port 1024 + (t / N) % 64512 -- a 5-tuple not used
//       by any other tuple number below 64512*N, so every datagram is a new flow
//       direction for the datapath while the receiver listens on only N ports.
//       Sent from one raw socket (IPPROTO_RAW: the IPv4 and UDP headers are built
//       here; UDP checksum 0, allowed over IPv4), in sendmmsg() batches.
//   udpgen single DST_IP [--dport-lo P] [--sport-base P] ...
//       One UDP socket, one destination port: a single long-lived flow.
//   udpgen sink [--dport-lo P --dports N] [--duration S]
//       Receives on N ports with recvmmsg() until SIGTERM/SIGINT or --duration,
//       so that the traffic is consumed by sockets like real traffic (no kernel
//       drops). Prints "ready" once bound.
//
// Common: --count N (datagrams), --rate R (datagrams/s, 0 = as fast as possible),
// --duration S, --payload B (default 22: 64-byte Ethernet frames), --batch N.
// Senders stop after --count datagrams or --duration seconds, whichever is first;
// every mode is capped at 30 s. Output, one line: "sent=N elapsed=S errors=E cpu=S"
// or "received=N elapsed=S cpu=S" (cpu: user+system time of this process, which on
// a veth includes the softirq work of the packets it sends).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 256
#define MAX_PORTS 256
#define MAX_SECONDS 30.0
#define SPORTS 64512  // 1024..65535

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

struct opts {
    long long count, first;
    double rate, duration;
    int payload, batch, dports;
    unsigned dport_lo, sport_base;
    struct in_addr src;
};

static int sink(struct opts *o) {
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    int fds[MAX_PORTS];
    for (int i = 0; i < o->dports; i++) {
        fds[i] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (fds[i] < 0) die("socket");
        int sz = 2 << 20;  // x up to 256 ports
        setsockopt(fds[i], SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz));
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(o->dport_lo + i)};
        if (bind(fds[i], (struct sockaddr *)&a, sizeof(a)) < 0) die("bind");
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) die("epoll_ctl");
    }
    static char bufs[MAX_BATCH][64];
    static struct iovec iov[MAX_BATCH];
    static struct mmsghdr msgs[MAX_BATCH];
    for (int i = 0; i < MAX_BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = sizeof(bufs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    printf("ready\n");
    fflush(stdout);
    long long received = 0;
    double t0 = now_s();
    while (!stop && now_s() - t0 < o->duration) {
        struct epoll_event evs[MAX_PORTS];
        int n = epoll_wait(ep, evs, MAX_PORTS, 100);
        for (int e = 0; e < n; e++) {
            int fd = fds[evs[e].data.u32];
            for (;;) {
                int r = recvmmsg(fd, msgs, MAX_BATCH, MSG_DONTWAIT, NULL);
                if (r <= 0) break;
                received += r;
            }
        }
        // Let datagrams pile up a little (2 MB buffers): big batches, few wake-ups,
        // so the sink takes little CPU from the agent.
        struct timespec ts = {0, 2000000};
        if (n > 0) nanosleep(&ts, NULL);
    }
    printf("received=%lld elapsed=%.6f cpu=%.6f\n", received, now_s() - t0, cpu_s());
    return 0;
}

static int send_loop(struct opts *o, int churn, int fd, struct sockaddr_in *dst) {
    static char bufs[MAX_BATCH][1500];
    static struct sockaddr_in addrs[MAX_BATCH];
    static struct iovec iov[MAX_BATCH];
    static struct mmsghdr msgs[MAX_BATCH];
    size_t hdr = churn ? sizeof(struct iphdr) + sizeof(struct udphdr) : 0;
    for (int i = 0; i < MAX_BATCH; i++) {
        memset(bufs[i], 'w', sizeof(bufs[i]));
        addrs[i] = *dst;
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = hdr + o->payload;
        msgs[i].msg_hdr.msg_name = &addrs[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(addrs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        if (churn) {
            struct iphdr *ip = (struct iphdr *)bufs[i];
            memset(ip, 0, hdr);
            ip->version = 4;
            ip->ihl = 5;
            ip->tot_len = htons(hdr + o->payload);  // the kernel fills it in as well
            ip->frag_off = htons(IP_DF);
            ip->ttl = 64;
            ip->protocol = IPPROTO_UDP;
            ip->saddr = o->src.s_addr;
            ip->daddr = dst->sin_addr.s_addr;
            struct udphdr *uh = (struct udphdr *)(ip + 1);
            uh->len = htons(sizeof(struct udphdr) + o->payload);
            uh->check = 0;
        }
    }
    long long sent = 0, errors = 0;
    double t0 = now_s(), deadline = t0 + o->duration;
    while (sent < o->count && !stop) {
        double t = now_s();
        if (t >= deadline) break;
        if (o->rate > 0) {
            double due = t0 + sent / o->rate;
            if (due > t) {
                double wait = due - t;
                if (wait > 200e-6) {
                    struct timespec ts = {0, (long)((wait - 100e-6) * 1e9)};
                    nanosleep(&ts, NULL);
                }
                continue;  // re-read the clock (and the deadline)
            }
        }
        long long n = o->batch;
        if (n > o->count - sent) n = o->count - sent;
        if (churn) {
            for (long long i = 0; i < n; i++) {
                long long tup = o->first + sent + i;
                struct udphdr *uh = (struct udphdr *)(bufs[i] + sizeof(struct iphdr));
                uh->dest = htons(o->dport_lo + tup % o->dports);
                uh->source = htons(1024 + (tup / o->dports) % SPORTS);
            }
        }
        int r = sendmmsg(fd, msgs, (unsigned)n, 0);
        if (r < 0) {
            if (++errors > 1000000) break;
            continue;
        }
        if (r < n) errors++;  // the rest goes out with the next batch
        sent += r;
    }
    printf("sent=%lld elapsed=%.6f errors=%lld cpu=%.6f\n", sent, now_s() - t0, errors, cpu_s());
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: udpgen churn|single DST_IP [options] | udpgen sink [options]\n");
        return 2;
    }
    const char *mode = argv[1];
    int is_sink = !strcmp(mode, "sink"), churn = !strcmp(mode, "churn");
    if (!is_sink && !churn && strcmp(mode, "single")) {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    struct opts o = {.count = 1000000, .first = 0, .rate = 0, .duration = 3.0, .payload = 22,
                     .batch = 64, .dports = 1, .dport_lo = 5000, .sport_base = 20000};
    int argi = is_sink ? 2 : 3;
    if (!is_sink && argc < 3) return 2;
    for (int i = argi; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--count")) o.count = atoll(v);
        else if (!strcmp(k, "--first")) o.first = atoll(v);
        else if (!strcmp(k, "--rate")) o.rate = atof(v);
        else if (!strcmp(k, "--duration")) o.duration = atof(v);
        else if (!strcmp(k, "--payload")) o.payload = atoi(v);
        else if (!strcmp(k, "--batch")) o.batch = atoi(v);
        else if (!strcmp(k, "--dport-lo")) o.dport_lo = atoi(v);
        else if (!strcmp(k, "--dports")) o.dports = atoi(v);
        else if (!strcmp(k, "--sport-base")) o.sport_base = atoi(v);
        else if (!strcmp(k, "--src")) {
            if (inet_pton(AF_INET, v, &o.src) != 1) return 2;
        } else {
            fprintf(stderr, "unknown option %s\n", k);
            return 2;
        }
    }
    // Hard bounds whatever the caller asks for.
    if (o.duration > MAX_SECONDS || o.duration <= 0) o.duration = MAX_SECONDS;
    if (o.count > 20000000) o.count = 20000000;
    if (o.batch < 1) o.batch = 1;
    if (o.batch > MAX_BATCH) o.batch = MAX_BATCH;
    if (o.payload < 0 || o.payload > 1400) o.payload = 22;
    if (o.dports < 1 || o.dports > MAX_PORTS || o.dport_lo + o.dports > 65536) return 2;
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    if (is_sink) return sink(&o);

    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(o.dport_lo)};
    if (inet_pton(AF_INET, argv[2], &dst.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[2]);
        return 2;
    }
    int fd;
    if (churn) {
        if (!o.src.s_addr) {
            fprintf(stderr, "churn needs --src\n");
            return 2;
        }
        fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
        if (fd < 0) die("raw socket");
        dst.sin_port = 0;
    } else {
        fd = socket(AF_INET, SOCK_DGRAM, 0);
        if (fd < 0) die("socket");
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(o.sport_base)};
        if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) die("bind");
    }
    int r = send_loop(&o, churn, fd, &dst);
    close(fd);
    return r;
}
