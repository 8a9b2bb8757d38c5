/*
 * c_echo: single-threaded, level-triggered epoll echo server on 127.0.0.1.
 * The native reference of pyserve's benchmarks: if the load generator drives this
 * server much faster than any Python server, the harness is not the bottleneck.
 *
 * usage: c_echo PORT [BACKLOG]      (BACKLOG default 128)
 *
 * Echoes bytes back on each connection until EOF.  If a write is partial the
 * remainder is buffered and reading from that connection pauses until drained.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
    char *buf;
    size_t len, off;
} pend_t;

static pend_t *pend;
static size_t npend;

static void drop(int ep, int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    if ((size_t)fd < npend && pend[fd].buf) {
        free(pend[fd].buf);
        pend[fd].buf = NULL;
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: c_echo PORT [BACKLOG]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    int backlog = argc > 2 ? atoi(argv[2]) : 128;
    signal(SIGPIPE, SIG_IGN);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    npend = (size_t)rl.rlim_cur + 1;
    pend = calloc(npend, sizeof *pend);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, backlog) < 0) {
        perror("bind/listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);

    static char buf[65536];
    struct epoll_event evs[512];
    for (;;) {
        int n = epoll_wait(ep, evs, 512, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 1;
        }
        for (int k = 0; k < n; k++) {
            int fd = evs[k].data.fd;
            if (fd == ls) {
                for (;;) {
                    int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0) break; /* EAGAIN, or EMFILE etc.: retry on next event */
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event e = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
                }
                continue;
            }
            pend_t *p = &pend[fd];
            if (p->buf) { /* waiting to drain a partial write */
                if (!(evs[k].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) continue;
                ssize_t w = write(fd, p->buf + p->off, p->len - p->off);
                if (w < 0) {
                    if (errno == EAGAIN || errno == EINTR) continue;
                    drop(ep, fd);
                    continue;
                }
                p->off += (size_t)w;
                if (p->off == p->len) {
                    free(p->buf);
                    p->buf = NULL;
                    struct epoll_event e = {.events = EPOLLIN, .data.fd = fd};
                    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &e);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r == 0) { drop(ep, fd); continue; }
            if (r < 0) {
                if (errno == EAGAIN || errno == EINTR) continue;
                drop(ep, fd);
                continue;
            }
            ssize_t w = write(fd, buf, (size_t)r);
            if (w == r) continue;
            if (w < 0) {
                if (errno != EAGAIN && errno != EINTR) { drop(ep, fd); continue; }
                w = 0;
            }
            p->len = (size_t)(r - w);
            p->off = 0;
            p->buf = malloc(p->len);
            memcpy(p->buf, buf + w, p->len);
            struct epoll_event e = {.events = EPOLLOUT, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_MOD, fd, &e);
        }
    }
}
