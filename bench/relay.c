/* bench/l7_policy_bench.py's "relay" mode: the least a proxy in user space can do.
   Every connection to LISTEN_PORT is copied both ways to SERVER_IP:SERVER_PORT by two
   blocking threads (recv/send, no parsing, no policy). It exits when its stdin ends
   (a pipe from the bench), however the bench ends. Built by the bench with gcc. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* One connection: the client's and the server's socket, and how many of its two pumps
   still run. The last one to stop closes both (the other may still be in recv/send on
   them until then) and frees it. */
struct conn { int fd[2]; int running; };
struct pair { int from, to; struct conn *c; };

static void *pump(void *arg) {
    struct pair *p = arg;
    char buf[65536];
    for (;;) {
        ssize_t n = recv(p->from, buf, sizeof buf, 0);
        if (n <= 0)
            break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = send(p->to, buf + off, n - off, MSG_NOSIGNAL);
            if (w <= 0)
                goto out;
            off += w;
        }
    }
out:
    shutdown(p->from, SHUT_RDWR);  /* wakes the other pump */
    shutdown(p->to, SHUT_RDWR);
    struct conn *c = p->c;
    if (__atomic_sub_fetch(&c->running, 1, __ATOMIC_ACQ_REL) == 0) {
        close(c->fd[0]);
        close(c->fd[1]);
        free(c);
    }
    return NULL;
}

static void *watch_stdin(void *arg) {
    char c;
    (void)arg;
    while (read(0, &c, 1) > 0)
        ;
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: relay LISTEN_PORT SERVER_IP SERVER_PORT\n");
        return 2;
    }
    int one = 1;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    struct sockaddr_in s = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    if (inet_pton(AF_INET, argv[2], &s.sin_addr) != 1 ||
        bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 16)) {
        perror("relay");
        return 1;
    }
    pthread_t w;
    pthread_create(&w, NULL, watch_stdin, NULL);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int c = accept(ls, NULL, NULL);
        if (c < 0)
            continue;
        int u = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(u, (struct sockaddr *)&s, sizeof s)) {
            close(c);
            close(u);
            continue;
        }
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        /* one allocation: the connection and its two pumps' arguments */
        struct conn *k = malloc(sizeof *k + 2 * sizeof(struct pair));
        struct pair *p = (struct pair *)(k + 1);
        *k = (struct conn){{c, u}, 2};
        p[0] = (struct pair){c, u, k};
        p[1] = (struct pair){u, c, k};
        pthread_t t;
        pthread_create(&t, NULL, pump, &p[0]);
        pthread_detach(t);
        pthread_create(&t, NULL, pump, &p[1]);
        pthread_detach(t);
    }
}
