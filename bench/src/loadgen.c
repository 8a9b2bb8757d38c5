/*
 * loadgen: single-threaded epoll TCP load generator for echo servers, driven by
 * bench/run.py (pyserve's benchmark suite).  One thread so that it needs exactly
 * one CPU; run.py checks it against the native c_echo server to show how far
 * the harness itself can go (the "harness limit" row of the report).
 *
 * Modes:
 *   echo      N persistent connections; each sends an S-byte message and waits
 *             for the full S-byte echo, then sends the next one, for T seconds.
 *   connrate  keep C concurrent sessions of connect -> send S -> read S -> close
 *             for T seconds.
 *   idle      open K connections, hold them idle for T seconds, then verify that
 *             (a sample of) them still echo.  With -i K (all at once) this is the
 *             "burst" scenario: every connection is offered in one go and the
 *             open phase's length says how long the server took to serve them.
 *
 * Every echoed byte is compared with what was sent; mismatches count as errors.
 * Output: one JSON line on stdout.  With -m, "#mark start" / "#mark end" lines are
 * written to stderr at the start / end of the measurement window (a runner can
 * sample server CPU/RSS at those instants); after "#mark end" the connections are
 * kept open for -H milliseconds before anything else happens.
 *
 * Messages are S bytes of printable pseudo-random data (distinct per connection
 * and per message) ending in '\n', so line-oriented servers (readline) work.
 *
 * All loops are bounded by wall-clock deadlines.  Only 127.0.0.0/8 targets are
 * accepted.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NS 1000000000ull

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static double cpu_self_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* ---------------------------------------------------------------- options */
static const char *g_mode = NULL;
static const char *g_host = "127.0.0.1";
static int g_port = 0;
static int g_conns = 1;
static int g_size = 64;
static double g_duration = 5.0;
static double g_warmup = 0.5;
static double g_conn_timeout = 15.0;  /* connect phase deadline (echo/idle) */
static double g_verify_timeout = 10.0; /* idle: wait for verification echoes */
static double g_stall = 2.0;          /* idle: end open phase after this long without progress */
static int g_sample = 0;              /* idle: how many conns to verify (0=all) */
static int g_inflight = 64;           /* idle: max connections being opened at once */
static int g_marks = 0;
static int g_hold_ms = 300;

static struct sockaddr_in g_sa;

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen MODE -p PORT [-h HOST] [-c CONNS] [-s SIZE] [-d SECONDS]\n"
            "               [-w WARMUP] [-C CONNECT_TIMEOUT] [-V VERIFY_TIMEOUT]\n"
            "               [-n SAMPLE] [-i INFLIGHT] [-m] [-H HOLD_MS] [-P LO:HI]\n"
            "  -P LO:HI  choose client source ports explicitly, round-robin in LO..HI\n"
            "  -S SECS   idle: end the open phase after SECS without a newly served conn\n"
            "  MODE: echo | connrate | idle\n");
    exit(2);
}

static void mark(const char *what) {
    if (!g_marks) return;
    fprintf(stderr, "#mark %s\n", what);
    fflush(stderr);
}

static void hold_after_end(void) {
    if (!g_marks || g_hold_ms <= 0) return;
    struct timespec ts = {g_hold_ms / 1000, (long)(g_hold_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---------------------------------------------------------------- helpers */
static void fill_msg(unsigned char *buf, int n, uint32_t id, uint32_t seq) {
    uint32_t x = (id + 1) * 2654435761u ^ (seq + 1) * 40503u;
    for (int i = 0; i + 1 < n; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (unsigned char)('A' + ((x >> 16) % 58)); /* 'A'..'z', never '\n' */
    }
    buf[n - 1] = '\n';
}

static int g_srcport_lo = 0, g_srcport_hi = 0; /* -P LO:HI explicit source ports */
static int g_srcport_next = 0;
static uint64_t g_port_retries = 0;

static int mk_sock(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Create a socket and start connecting it.  Returns 0 connected, 1 in progress,
 * -1 error (errno set); *pfd is the socket (or -1).
 *
 * With -P LO:HI the source port is chosen explicitly, round-robin over the range
 * (SO_REUSEADDR, 127.0.0.1 source).  This spreads TIME_WAIT sockets over a much
 * larger port range than the kernel's connect() autobind (which uses about half of
 * ip_local_port_range) and avoids its port search, so the client-side TIME_WAIT
 * pool does not cap the connection rate as early.  A 4-tuple still in a young
 * TIME_WAIT gives EADDRNOTAVAIL; we then move on to the next port. */
static int open_conn(int *pfd) {
    for (int attempt = 0; attempt < 64; attempt++) {
        int fd = mk_sock();
        *pfd = fd;
        if (fd < 0) return -1;
        if (g_srcport_lo > 0) {
            int one = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            struct sockaddr_in src;
            memset(&src, 0, sizeof src);
            src.sin_family = AF_INET;
            src.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            int port = g_srcport_next;
            if (port < g_srcport_lo || port > g_srcport_hi) port = g_srcport_lo;
            g_srcport_next = port + 1;
            if (port == g_port) { close(fd); *pfd = -1; continue; }
            src.sin_port = htons((uint16_t)port);
            if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
                g_port_retries++;
                close(fd); *pfd = -1;
                continue;
            }
        }
        if (connect(fd, (struct sockaddr *)&g_sa, sizeof g_sa) == 0) return 0;
        if (errno == EINPROGRESS) return 1;
        if (g_srcport_lo > 0 && (errno == EADDRNOTAVAIL || errno == EADDRINUSE)) {
            g_port_retries++;
            close(fd); *pfd = -1;
            continue;
        }
        return -1;
    }
    errno = EADDRNOTAVAIL;
    return -1;
}

static int sock_error(int fd) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
    return err;
}

typedef struct {
    uint64_t *v;
    size_t n, cap;
} lat_t;

static void lat_add(lat_t *l, uint64_t x) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : (1u << 16);
        l->v = realloc(l->v, l->cap * sizeof(uint64_t));
        if (!l->v) { perror("realloc"); exit(1); }
    }
    l->v[l->n++] = x;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_us(lat_t *l, double p) {
    if (l->n == 0) return -1;
    size_t idx = (size_t)(p * (double)l->n);
    if (idx >= l->n) idx = l->n - 1;
    return l->v[idx] / 1000.0;
}

static void lat_json(lat_t *l, const char *prefix) {
    if (l->n) qsort(l->v, l->n, sizeof(uint64_t), cmp_u64);
    double sum = 0;
    for (size_t i = 0; i < l->n; i++) sum += l->v[i];
    printf("\"%sp50_us\":%.1f,\"%sp99_us\":%.1f,\"%sp999_us\":%.1f,\"%smax_us\":%.1f,"
           "\"%smean_us\":%.1f",
           prefix, pct_us(l, 0.50), prefix, pct_us(l, 0.99), prefix, pct_us(l, 0.999),
           prefix, l->n ? l->v[l->n - 1] / 1000.0 : -1.0, prefix,
           l->n ? sum / l->n / 1000.0 : -1.0);
}

static int ep_ctl(int ep, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(ep, op, fd, &ev);
}

static int timeout_ms_until(uint64_t now, uint64_t deadline, int cap) {
    if (deadline <= now) return 0;
    uint64_t ms = (deadline - now + 999999) / 1000000;
    return ms > (uint64_t)cap ? cap : (int)ms;
}

/* ================================================================== echo */
enum { E_CONNECTING, E_ACTIVE, E_DONE, E_DEAD };

typedef struct {
    int fd, state, want_out;
    uint32_t id, seq;
    int sent, rcvd;
    uint64_t t0, cnt_win;
    unsigned char *msg, *rbuf;
} econn_t;

static struct {
    uint64_t connect_err, connect_timeout, mismatch, eof, io_err;
} E;

static void e_kill(econn_t *c, int ep) {
    (void)ep;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = E_DEAD;
}

static void e_try_send(econn_t *c, int ep) {
    while (c->sent < g_size) {
        ssize_t n = send(c->fd, c->msg + c->sent, g_size - c->sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (int)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out) {
                c->want_out = 1;
                ep_ctl(ep, EPOLL_CTL_MOD, c->fd, EPOLLIN | EPOLLOUT, c->id);
            }
            return;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            E.io_err++;
            e_kill(c, ep);
            return;
        }
    }
    if (c->want_out) {
        c->want_out = 0;
        ep_ctl(ep, EPOLL_CTL_MOD, c->fd, EPOLLIN, c->id);
    }
}

static void e_send_next(econn_t *c, int ep, uint64_t now) {
    fill_msg(c->msg, g_size, c->id, c->seq);
    c->sent = 0;
    c->rcvd = 0;
    c->t0 = now;
    e_try_send(c, ep);
}

static int run_echo(void) {
    int N = g_conns;
    econn_t *cs = calloc(N, sizeof *cs);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event *evs = calloc(1024, sizeof *evs);
    lat_t lat = {0};
    uint64_t rt_total = 0, rt_win = 0;
    int connected = 0, pending = 0;

    uint64_t t_begin = now_ns();
    for (int i = 0; i < N; i++) {
        econn_t *c = &cs[i];
        c->id = i;
        c->msg = malloc(g_size);
        c->rbuf = malloc(g_size);
        int r = open_conn(&c->fd);
        if (r < 0) { E.connect_err++; e_kill(c, ep); continue; }
        c->state = E_CONNECTING;
        ep_ctl(ep, EPOLL_CTL_ADD, c->fd, EPOLLOUT, i);
        pending++;
    }
    /* connect phase */
    uint64_t cdl = t_begin + (uint64_t)(g_conn_timeout * NS);
    while (pending > 0) {
        uint64_t now = now_ns();
        if (now >= cdl) break;
        int n = epoll_wait(ep, evs, 1024, timeout_ms_until(now, cdl, 50));
        for (int k = 0; k < n; k++) {
            econn_t *c = &cs[evs[k].data.u64];
            if (c->state != E_CONNECTING) continue;
            pending--;
            if (sock_error(c->fd) != 0) { E.connect_err++; e_kill(c, ep); continue; }
            c->state = E_ACTIVE;
            connected++;
            ep_ctl(ep, EPOLL_CTL_MOD, c->fd, EPOLLIN, c->id);
        }
    }
    for (int i = 0; i < N; i++)
        if (cs[i].state == E_CONNECTING) { E.connect_timeout++; e_kill(&cs[i], ep); }
    double connect_s = (now_ns() - t_begin) / 1e9;

    uint64_t t_start = now_ns();
    uint64_t t_win0 = t_start + (uint64_t)(g_warmup * NS);
    uint64_t t_end = t_win0 + (uint64_t)(g_duration * NS);
    int in_window = 0;
    double cpu0 = 0, cpu1 = 0;
    for (int i = 0; i < N; i++)
        if (cs[i].state == E_ACTIVE) e_send_next(&cs[i], ep, t_start);

    for (;;) {
        uint64_t now = now_ns();
        if (!in_window && now >= t_win0) {
            in_window = 1;
            cpu0 = cpu_self_s();
            mark("start");
        }
        if (now >= t_end) break;
        int n = epoll_wait(ep, evs, 1024,
                           timeout_ms_until(now, in_window ? t_end : t_win0, 20));
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); break; }
        for (int k = 0; k < n; k++) {
            econn_t *c = &cs[evs[k].data.u64];
            if (c->state != E_ACTIVE) continue;
            if ((evs[k].events & EPOLLOUT) && c->sent < g_size) {
                e_try_send(c, ep);
                if (c->state != E_ACTIVE) continue;
            }
            if (!(evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            ssize_t r = recv(c->fd, c->rbuf + c->rcvd, g_size - c->rcvd, 0);
            if (r == 0) { E.eof++; e_kill(c, ep); continue; }
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
                E.io_err++; e_kill(c, ep); continue;
            }
            c->rcvd += (int)r;
            if (c->rcvd < g_size) continue;
            if (c->sent < g_size || memcmp(c->rbuf, c->msg, g_size) != 0) {
                E.mismatch++; e_kill(c, ep); continue;
            }
            uint64_t t = now_ns();
            rt_total++;
            if (t >= t_win0 && t < t_end) {
                rt_win++;
                c->cnt_win++;
                lat_add(&lat, t - c->t0);
            }
            if (t < t_end) {
                c->seq++;
                e_send_next(c, ep, t);
            } else {
                c->state = E_DONE;
            }
        }
    }
    uint64_t t_stop = now_ns();
    if (!in_window) { cpu0 = cpu_self_s(); }
    cpu1 = cpu_self_s();
    mark("end");
    hold_after_end();

    double win_s = (t_stop - t_win0) / 1e9;
    int stalled = 0, alive = 0;
    for (int i = 0; i < N; i++) {
        if (cs[i].state == E_ACTIVE || cs[i].state == E_DONE) {
            alive++;
            if (cs[i].cnt_win == 0) stalled++;
        }
    }
    uint64_t errors = E.connect_err + E.connect_timeout + E.mismatch + E.eof + E.io_err;
    printf("{\"mode\":\"echo\",\"conns\":%d,\"size\":%d,\"connected\":%d,\"connect_s\":%.3f,"
           "\"window_s\":%.3f,\"rt\":%llu,\"rps\":%.1f,\"rt_total\":%llu,",
           N, g_size, connected, connect_s, win_s, (unsigned long long)rt_win,
           rt_win / win_s, (unsigned long long)rt_total);
    lat_json(&lat, "");
    printf(",\"errors\":%llu,\"err_connect\":%llu,\"err_connect_timeout\":%llu,"
           "\"err_mismatch\":%llu,\"err_eof\":%llu,\"err_io\":%llu,"
           "\"alive_conns\":%d,\"stalled_conns\":%d,"
           "\"client_cpu_s\":%.3f,\"client_cpu_util\":%.3f}\n",
           (unsigned long long)errors, (unsigned long long)E.connect_err,
           (unsigned long long)E.connect_timeout, (unsigned long long)E.mismatch,
           (unsigned long long)E.eof, (unsigned long long)E.io_err, alive, stalled,
           cpu1 - cpu0, (cpu1 - cpu0) / win_s);
    fflush(stdout);
    /* Drain: let in-flight echoes arrive (bounded) so that closing sends FIN, not
       RST (closing with unread data resets the connection, which makes stdlib
       handlers log tracebacks).  Happens after the measurement window. */
    uint64_t ddl = now_ns() + 1000000000ull;
    for (;;) {
        int busy = 0;
        for (int i = 0; i < N; i++)
            if ((cs[i].state == E_ACTIVE) && cs[i].rcvd < g_size &&
                cs[i].sent == g_size)
                busy++;
        uint64_t now = now_ns();
        if (!busy || now >= ddl) break;
        int n = epoll_wait(ep, evs, 1024, timeout_ms_until(now, ddl, 50));
        for (int k = 0; k < n; k++) {
            econn_t *c = &cs[evs[k].data.u64];
            if (c->state != E_ACTIVE) continue;
            ssize_t r = recv(c->fd, c->rbuf + c->rcvd, g_size - c->rcvd, 0);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                e_kill(c, ep);
                continue;
            }
            c->rcvd += (int)r;
            if (c->rcvd >= g_size) c->state = E_DONE;
        }
    }
    for (int i = 0; i < N; i++)
        if (cs[i].fd >= 0) close(cs[i].fd);
    return 0;
}

/* ============================================================== connrate */
enum { S_IDLE, S_CONNECTING, S_SENDING, S_READING };

typedef struct {
    int fd, state;
    uint32_t gen, seq;
    int sent, rcvd;
    uint64_t t0, retry_at;
    unsigned char *msg, *rbuf;
} sconn_t;

static struct {
    uint64_t connect_err, addrnotavail, mismatch, eof, io_err, refused, reset;
} R;

#define SDATA(i, gen) (((uint64_t)(gen) << 32) | (uint32_t)(i))

static void s_close(sconn_t *c, uint64_t now, uint64_t backoff_ns) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = S_IDLE;
    c->retry_at = now + backoff_ns;
}

static void s_try_send(sconn_t *c, int i, int ep, uint64_t now) {
    while (c->sent < g_size) {
        ssize_t n = send(c->fd, c->msg + c->sent, g_size - c->sent, MSG_NOSIGNAL);
        if (n > 0) { c->sent += (int)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ep_ctl(ep, EPOLL_CTL_MOD, c->fd, EPOLLIN | EPOLLOUT, SDATA(i, c->gen));
            c->state = S_SENDING;
            return;
        }
        if (errno == ECONNRESET || errno == EPIPE) R.reset++; else R.io_err++;
        s_close(c, now, 1000000);
        return;
    }
    c->state = S_READING;
    ep_ctl(ep, EPOLL_CTL_MOD, c->fd, EPOLLIN, SDATA(i, c->gen));
}

static void s_start(sconn_t *c, int i, int ep, uint64_t now) {
    c->gen++;
    c->seq++;
    c->t0 = now;
    c->sent = c->rcvd = 0;
    fill_msg(c->msg, g_size, (uint32_t)i, c->seq);
    int r = open_conn(&c->fd);
    if (r < 0) {
        int e = errno;
        if (e == EADDRNOTAVAIL) { R.addrnotavail++; s_close(c, now, 1000000); }
        else if (e == ECONNREFUSED) { R.refused++; s_close(c, now, 1000000); }
        else { R.connect_err++; s_close(c, now, 1000000); }
        return;
    }
    ep_ctl(ep, EPOLL_CTL_ADD, c->fd, EPOLLOUT | EPOLLIN, SDATA(i, c->gen));
    if (r == 0) {
        s_try_send(c, i, ep, now);
    } else {
        c->state = S_CONNECTING;
    }
}

/* one epoll event of a connrate session; completed sessions are counted (and their
   latency recorded) when they finish inside [t_win0, t_end) */
static void s_event(sconn_t *cs, int ep, struct epoll_event *e, uint64_t now, lat_t *lat,
                    uint64_t t_win0, uint64_t t_end, uint64_t *done_total, uint64_t *done_win) {
    int i = (int)(uint32_t)e->data.u64;
    uint32_t gen = (uint32_t)(e->data.u64 >> 32);
    sconn_t *c = &cs[i];
    if (c->state == S_IDLE || c->gen != gen) return;
    uint32_t ev = e->events;
    if (c->state == S_CONNECTING) {
        if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
        int err = sock_error(c->fd);
        if (err != 0) {
            if (err == ECONNREFUSED) R.refused++; else R.connect_err++;
            s_close(c, now, 1000000);
            return;
        }
        s_try_send(c, i, ep, now);
        return;
    }
    if (c->state == S_SENDING) {
        if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) s_try_send(c, i, ep, now);
        if (c->state != S_READING) return;
    }
    /* S_READING */
    if (!(ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    ssize_t r = recv(c->fd, c->rbuf + c->rcvd, g_size - c->rcvd, 0);
    if (r == 0) { R.eof++; s_close(c, now, 1000000); return; }
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        if (errno == ECONNRESET) R.reset++; else R.io_err++;
        s_close(c, now, 1000000);
        return;
    }
    c->rcvd += (int)r;
    if (c->rcvd < g_size) return;
    if (memcmp(c->rbuf, c->msg, g_size) != 0) {
        R.mismatch++; s_close(c, now, 0); return;
    }
    uint64_t t = now_ns();
    (*done_total)++;
    if (t >= t_win0 && t < t_end) {
        (*done_win)++;
        lat_add(lat, t - c->t0);
    }
    s_close(c, t, 0); /* client closes first; next session starts at loop top */
}

static int run_connrate(void) {
    int C = g_conns;
    sconn_t *cs = calloc(C, sizeof *cs);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event *evs = calloc(1024, sizeof *evs);
    lat_t lat = {0};
    uint64_t done_total = 0, done_win = 0;

    for (int i = 0; i < C; i++) {
        cs[i].fd = -1;
        cs[i].msg = malloc(g_size);
        cs[i].rbuf = malloc(g_size);
    }
    uint64_t t_start = now_ns();
    uint64_t t_win0 = t_start + (uint64_t)(g_warmup * NS);
    uint64_t t_end = t_win0 + (uint64_t)(g_duration * NS);
    int in_window = 0;
    double cpu0 = 0, cpu1;

    for (;;) {
        uint64_t now = now_ns();
        if (!in_window && now >= t_win0) {
            in_window = 1;
            cpu0 = cpu_self_s();
            mark("start");
        }
        if (now >= t_end) break;
        uint64_t next_retry = t_end;
        for (int i = 0; i < C; i++) {
            if (cs[i].state != S_IDLE) continue;
            if (cs[i].retry_at <= now) s_start(&cs[i], i, ep, now);
            if (cs[i].state == S_IDLE && cs[i].retry_at < next_retry)
                next_retry = cs[i].retry_at;
        }
        uint64_t wake = in_window ? t_end : t_win0;
        if (next_retry < wake) wake = next_retry;
        int n = epoll_wait(ep, evs, 1024, timeout_ms_until(now, wake, 20));
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); break; }
        now = now_ns();
        for (int k = 0; k < n; k++)
            s_event(cs, ep, &evs[k], now, &lat, t_win0, t_end, &done_total, &done_win);
    }
    uint64_t t_stop = now_ns();
    if (!in_window) cpu0 = cpu_self_s();
    cpu1 = cpu_self_s();
    mark("end");
    int unfinished = 0;
    for (int i = 0; i < C; i++) if (cs[i].state != S_IDLE) unfinished++;
    hold_after_end();
    double win_s = (t_stop - t_win0) / 1e9;
    uint64_t errors = R.connect_err + R.mismatch + R.eof + R.io_err + R.refused + R.reset;
    printf("{\"mode\":\"connrate\",\"conns\":%d,\"size\":%d,\"window_s\":%.3f,"
           "\"sessions\":%llu,\"sps\":%.1f,\"sessions_total\":%llu,",
           C, g_size, win_s, (unsigned long long)done_win, done_win / win_s,
           (unsigned long long)done_total);
    lat_json(&lat, "");
    printf(",\"errors\":%llu,\"err_connect\":%llu,\"err_refused\":%llu,\"err_reset\":%llu,"
           "\"err_mismatch\":%llu,\"err_eof\":%llu,\"err_io\":%llu,"
           "\"eaddrnotavail\":%llu,\"srcport_retries\":%llu,\"unfinished_at_end\":%d,"
           "\"client_cpu_s\":%.3f,\"client_cpu_util\":%.3f}\n",
           (unsigned long long)errors, (unsigned long long)R.connect_err,
           (unsigned long long)R.refused, (unsigned long long)R.reset,
           (unsigned long long)R.mismatch, (unsigned long long)R.eof,
           (unsigned long long)R.io_err, (unsigned long long)R.addrnotavail,
           (unsigned long long)g_port_retries, unfinished,
           cpu1 - cpu0, (cpu1 - cpu0) / win_s);
    fflush(stdout);
    /* Drain (after the window, bounded to 1 s): let in-flight sessions finish so
       that no socket is closed with unread data (that sends RST and makes
       stdlib handlers log ConnectionResetError tracebacks). Not counted. */
    uint64_t ddl = now_ns() + 1000000000ull, dummy_t = 0, dummy_w = 0;
    lat_t dummy_lat = {0};
    for (;;) {
        int busy = 0;
        for (int i = 0; i < C; i++) if (cs[i].state != S_IDLE) busy++;
        uint64_t now = now_ns();
        if (!busy || now >= ddl) break;
        int n = epoll_wait(ep, evs, 1024, timeout_ms_until(now, ddl, 20));
        now = now_ns();
        for (int k = 0; k < n; k++)
            s_event(cs, ep, &evs[k], now, &dummy_lat, 0, 0, &dummy_t, &dummy_w);
    }
    for (int i = 0; i < C; i++) if (cs[i].fd >= 0) close(cs[i].fd);
    return 0;
}

/* ================================================================== idle */
/* Open phase: each connection connects, sends one message and waits for its echo
 * (so the server has really accepted and served it); at most -i connections are
 * "opening" at a time, which keeps the server's accept queue below its backlog
 * (no SYN drops / retransmission timers).  Then hold all served connections idle
 * for T seconds (any readability = the server dropped it), emit "#mark end", and
 * finally verify that (a sample of) them still echo. */
enum { I_NEW, I_CONNECTING, I_HANDSHAKE, I_OPEN, I_VERIFYING, I_VERIFIED, I_DEAD };

typedef struct {
    int fd, state;
    int rcvd;
    unsigned char *rbuf;
} iconn_t;

static void i_kill(iconn_t *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = I_DEAD;
    free(c->rbuf);
    c->rbuf = NULL;
}

/* read into c->rbuf; returns 1 when a full message is there, 0 not yet, -1 EOF/error */
static int i_read(iconn_t *c) {
    ssize_t r = recv(c->fd, c->rbuf + c->rcvd, g_size - c->rcvd, 0);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
    if (r <= 0) return -1;
    c->rcvd += (int)r;
    return c->rcvd == g_size;
}

static int run_idle(void) {
    int K = g_conns;
    iconn_t *cs = calloc(K, sizeof *cs);
    unsigned char *msg = malloc(g_size), *msg2 = malloc(g_size);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event *evs = calloc(1024, sizeof *evs);
    uint64_t connect_err = 0, not_served = 0, dropped_hold = 0, not_started = 0;
    uint64_t mismatch = 0, h_eof = 0, v_eof = 0, v_err = 0, no_reply = 0, alive = 0;
    int next = 0, opening = 0, open_n = 0, tcp_connected = 0;

    fill_msg(msg, g_size, 0x1d1e, 1);
    fill_msg(msg2, g_size, 0x1d1e, 2);
    for (int i = 0; i < K; i++) cs[i].fd = -1;
    uint64_t t_begin = now_ns();
    uint64_t cdl = t_begin + (uint64_t)(g_conn_timeout * NS);
    uint64_t last_progress = t_begin, stall_ns = (uint64_t)(g_stall * NS);
    int stalled = 0;
    for (;;) {
        uint64_t now = now_ns();
        if (now >= cdl) break;
        if (opening > 0 && now - last_progress >= stall_ns) { stalled = 1; break; }
        while (next < K && opening < g_inflight) {
            iconn_t *c = &cs[next];
            int r = open_conn(&c->fd);
            if (r < 0) { connect_err++; i_kill(c); next++; continue; }
            c->state = I_CONNECTING;
            opening++;
            ep_ctl(ep, EPOLL_CTL_ADD, c->fd, EPOLLOUT, next);
            next++;
        }
        if (next >= K && opening == 0) break;
        int n = epoll_wait(ep, evs, 1024, timeout_ms_until(now, cdl, 50));
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u64;
            iconn_t *c = &cs[i];
            if (c->state == I_CONNECTING) {
                if (sock_error(c->fd) != 0) { connect_err++; opening--; i_kill(c); continue; }
                tcp_connected++;
                if (send(c->fd, msg, g_size, MSG_NOSIGNAL) != g_size) {
                    v_err++; opening--; i_kill(c); continue;
                }
                c->state = I_HANDSHAKE;
                c->rcvd = 0;
                c->rbuf = malloc(g_size);
                ep_ctl(ep, EPOLL_CTL_MOD, c->fd, EPOLLIN, i);
            } else if (c->state == I_HANDSHAKE) {
                int r = i_read(c);
                if (r == 0) continue;
                opening--;
                if (r < 0) { h_eof++; i_kill(c); continue; }
                if (memcmp(c->rbuf, msg, g_size) != 0) { mismatch++; i_kill(c); continue; }
                free(c->rbuf);
                c->rbuf = NULL;
                c->state = I_OPEN;
                open_n++;
                last_progress = now_ns();
                ep_ctl(ep, EPOLL_CTL_MOD, c->fd, EPOLLIN | EPOLLRDHUP, i);
            } else if (c->state == I_OPEN) {
                dropped_hold++; open_n--; i_kill(c);
            }
        }
    }
    uint64_t t_open = now_ns();
    for (int i = 0; i < K; i++) {
        if (cs[i].state == I_CONNECTING || cs[i].state == I_HANDSHAKE) {
            not_served++; i_kill(&cs[i]);
        } else if (cs[i].state == I_NEW) {
            not_started++; cs[i].state = I_DEAD;
        }
    }
    int served = open_n;
    double connect_s = (t_open - t_begin) / 1e9;

    /* hold phase: an idle connection must never become readable */
    mark("start");
    uint64_t t_hold_end = t_open + (uint64_t)(g_duration * NS);
    for (;;) {
        uint64_t now = now_ns();
        if (now >= t_hold_end) break;
        int n = epoll_wait(ep, evs, 1024, timeout_ms_until(now, t_hold_end, 100));
        for (int k = 0; k < n; k++) {
            iconn_t *c = &cs[evs[k].data.u64];
            if (c->state != I_OPEN) continue;
            dropped_hold++; open_n--; i_kill(c);
        }
    }
    mark("end");
    hold_after_end();

    /* verify phase */
    int open_now = open_n;
    int step = 1;
    if (g_sample > 0 && open_now > g_sample) step = open_now / g_sample;
    int sampled = 0, outstanding = 0, seen = 0;
    for (int i = 0; i < K; i++) {
        iconn_t *c = &cs[i];
        if (c->state != I_OPEN) continue;
        if (seen++ % step != 0) continue;
        if (g_sample > 0 && sampled >= g_sample) break;
        sampled++;
        if (send(c->fd, msg2, g_size, MSG_NOSIGNAL) != g_size) { v_err++; i_kill(c); continue; }
        c->state = I_VERIFYING;
        c->rcvd = 0;
        c->rbuf = malloc(g_size);
        outstanding++;
        ep_ctl(ep, EPOLL_CTL_MOD, c->fd, EPOLLIN, i);
    }
    uint64_t t_v0 = now_ns();
    uint64_t vdl = t_v0 + (uint64_t)(g_verify_timeout * NS);
    while (outstanding > 0) {
        uint64_t now = now_ns();
        if (now >= vdl) break;
        int n = epoll_wait(ep, evs, 1024, timeout_ms_until(now, vdl, 50));
        for (int k = 0; k < n; k++) {
            iconn_t *c = &cs[evs[k].data.u64];
            if (c->state == I_OPEN) { dropped_hold++; i_kill(c); continue; }
            if (c->state != I_VERIFYING) continue;
            int r = i_read(c);
            if (r == 0) continue;
            outstanding--;
            if (r < 0) { v_eof++; i_kill(c); continue; }
            if (memcmp(c->rbuf, msg2, g_size) != 0) { mismatch++; i_kill(c); continue; }
            c->state = I_VERIFIED;
            alive++;
        }
    }
    double verify_s = (now_ns() - t_v0) / 1e9;
    no_reply = outstanding;
    uint64_t errors = connect_err + not_served + not_started + h_eof + dropped_hold +
                      mismatch + v_eof + v_err + no_reply;
    printf("{\"mode\":\"idle\",\"conns\":%d,\"size\":%d,\"tcp_connected\":%d,"
           "\"served\":%d,\"open_phase_stalled\":%d,\"connect_s\":%.3f,\"hold_s\":%.3f,\"open_after_hold\":%d,"
           "\"sampled\":%d,\"alive\":%llu,\"alive_frac\":%.4f,\"verify_s\":%.3f,"
           "\"errors\":%llu,\"err_connect\":%llu,\"not_served\":%llu,\"not_started\":%llu,"
           "\"err_handshake_eof\":%llu,\"dropped_hold\":%llu,\"err_mismatch\":%llu,"
           "\"err_eof\":%llu,\"err_io\":%llu,\"no_reply\":%llu,\"srcport_retries\":%llu}\n",
           K, g_size, tcp_connected, served, stalled, connect_s, g_duration, open_now, sampled,
           (unsigned long long)alive, sampled ? (double)alive / sampled : 0.0, verify_s,
           (unsigned long long)errors, (unsigned long long)connect_err,
           (unsigned long long)not_served, (unsigned long long)not_started,
           (unsigned long long)h_eof, (unsigned long long)dropped_hold,
           (unsigned long long)mismatch, (unsigned long long)v_eof,
           (unsigned long long)v_err, (unsigned long long)no_reply,
           (unsigned long long)g_port_retries);
    fflush(stdout);
    for (int i = 0; i < K; i++) if (cs[i].fd >= 0) close(cs[i].fd);
    return 0;
}

/* ================================================================== main */
int main(int argc, char **argv) {
    if (argc < 2) usage();
    g_mode = argv[1];
    optind = 2;
    int opt;
    while ((opt = getopt(argc, argv, "h:p:c:s:d:w:C:V:n:i:mH:P:S:")) != -1) {
        switch (opt) {
        case 'h': g_host = optarg; break;
        case 'p': g_port = atoi(optarg); break;
        case 'c': g_conns = atoi(optarg); break;
        case 's': g_size = atoi(optarg); break;
        case 'd': g_duration = atof(optarg); break;
        case 'w': g_warmup = atof(optarg); break;
        case 'C': g_conn_timeout = atof(optarg); break;
        case 'V': g_verify_timeout = atof(optarg); break;
        case 'n': g_sample = atoi(optarg); break;
        case 'i': g_inflight = atoi(optarg); break;
        case 'm': g_marks = 1; break;
        case 'H': g_hold_ms = atoi(optarg); break;
        case 'S': g_stall = atof(optarg); break;
        case 'P':
            if (sscanf(optarg, "%d:%d", &g_srcport_lo, &g_srcport_hi) != 2 || g_srcport_lo < 1024 ||
                g_srcport_hi > 65535 || g_srcport_hi <= g_srcport_lo)
                usage();
            break;
        default: usage();
        }
    }
    if (g_port <= 0 || g_port > 65535 || g_conns < 1 || g_size < 1 || g_size > (1 << 20) ||
        g_duration <= 0 || g_duration > 600 || g_warmup < 0 || g_warmup > 60 ||
        g_conn_timeout <= 0 || g_conn_timeout > 120 || g_verify_timeout <= 0 ||
        g_verify_timeout > 120 || g_inflight < 1 || g_stall <= 0)
        usage();
    memset(&g_sa, 0, sizeof g_sa);
    g_sa.sin_family = AF_INET;
    g_sa.sin_port = htons((uint16_t)g_port);
    if (inet_pton(AF_INET, g_host, &g_sa.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad host %s (IPv4 literal required)\n", g_host);
        return 2;
    }
    if ((ntohl(g_sa.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "loadgen: refusing non-loopback target %s\n", g_host);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (!strcmp(g_mode, "echo")) return run_echo();
    if (!strcmp(g_mode, "connrate")) return run_connrate();
    if (!strcmp(g_mode, "idle")) return run_idle();
    usage();
    return 2;
}
