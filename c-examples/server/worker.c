/* A worker: takes its listen sockets through the library (adopt or bind), drops
 * privileges, then serves HTTP/1.1 from an epoll loop until told to stop.
 *
 * QUIT (graceful): close the listen sockets at once, then finish every connection that
 * has a request coming or a response going; close idle keep-alive connections. TERM/INT
 * (fast): exit now; the master counts what was in flight from the shared counters. */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server.h"

enum { KIND_LISTEN = 1, KIND_CONN = 2 };

typedef struct {
    int kind;
    int fd;
} listener;

typedef struct conn {
    int kind;
    int fd;
    int in_use;
    int in_flight;      /* counted in stats->in_flight */
    int requests;       /* served on this connection so far */
    int keepalive;
    int writing;
    int close_after;
    int64_t deadline;   /* monotonic ms */
    int64_t last_active;
    size_t in_len;
    size_t out_len, out_off;
    char in[8192];
    char out[512];
} conn;

static volatile sig_atomic_t quit_requested, terminate_requested;
static void on_quit(int sig) { (void)sig; quit_requested = 1; }
static void on_terminate(int sig) { (void)sig; terminate_requested = 1; }

static const rp_config *cf;
static rp_worker_stats *stats;
static unsigned generation;
static int ep;
static conn *conns;
static int n_conns, active_conns;
static listener listeners[RP_MAX_LISTEN * 4];
static int n_listeners, accepting;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set_in_flight(conn *c, int on)
{
    if (c->in_flight != on) {
        c->in_flight = on;
        __atomic_add_fetch(&stats->in_flight, on ? 1 : -1, __ATOMIC_RELAXED);
    }
}

static void conn_close(conn *c)
{
    set_in_flight(c, 0);
    close(c->fd);  /* also removes it from the epoll set */
    c->in_use = 0;
    c->fd = -1;
    active_conns--;
}

static void listeners_enable(int on)
{
    if (accepting == on)
        return;
    for (int i = 0; i < n_listeners; i++) {
        struct epoll_event ev = { .events = on ? EPOLLIN : 0, .data.ptr = &listeners[i] };
        epoll_ctl(ep, EPOLL_CTL_MOD, listeners[i].fd, &ev);
    }
    accepting = on;
}

/* Room for one more connection: a free slot, or the oldest idle one closed (nginx reuses
 * idle keep-alive connections the same way), so a flood of idle clients cannot stop it
 * from accepting. */
static conn *conn_slot(void)
{
    conn *oldest = NULL;
    for (int i = 0; i < n_conns; i++) {
        if (!conns[i].in_use)
            return &conns[i];
        if (conns[i].in_len == 0 && !conns[i].writing
            && (!oldest || conns[i].last_active < oldest->last_active))
            oldest = &conns[i];
    }
    if (oldest)
        conn_close(oldest);
    return oldest;
}

static int queue_response(conn *c, int status, const char *reason, int keepalive)
{
    char body[128];
    int blen = status == 200
        ? snprintf(body, sizeof body, "worker %d gen %u\n", (int)getpid(), generation)
        : snprintf(body, sizeof body, "%d %s\n", status, reason);
    c->out_len = (size_t)snprintf(c->out, sizeof c->out,
                                  "HTTP/1.1 %d %s\r\nServer: rpserver\r\nContent-Type: text/plain\r\n"
                                  "Content-Length: %d\r\nConnection: %s\r\n\r\n%s",
                                  status, reason, blen, keepalive ? "keep-alive" : "close", body);
    c->out_off = 0;
    c->writing = 1;
    c->close_after = !keepalive;
    return 0;
}

/* Finds "\r\n\r\n" (or a bare "\n\n"); returns the header length or 0. */
static size_t header_end(const char *p, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        if (p[i] == '\n' && p[i + 1] == '\n')
            return i + 2;
        if (i + 3 < len && p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n')
            return i + 4;
    }
    return 0;
}

static const char *header_value(const char *hdr, size_t len, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    for (const char *p = hdr; p < hdr + len;) {
        const char *eol = memchr(p, '\n', (size_t)(hdr + len - p));
        if (!eol)
            break;
        if ((size_t)(eol - p) > nlen && strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
            const char *v = p + nlen + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *e = eol;
            while (e > v && (e[-1] == '\r' || e[-1] == ' '))
                e--;
            *vlen = (size_t)(e - v);
            return v;
        }
        p = eol + 1;
    }
    return NULL;
}

/* Parses one request from c->in; queues a response. Returns 1 when a request was
 * consumed, 0 when more bytes are needed. */
static int handle_request(conn *c)
{
    size_t hlen = header_end(c->in, c->in_len);
    if (hlen == 0) {
        if (c->in_len == sizeof c->in)
            return queue_response(c, 431, "Request Header Fields Too Large", 0), 1;
        return 0;
    }
    /* Request line: METHOD SP TARGET SP HTTP/1.x */
    const char *sp1 = memchr(c->in, ' ', hlen);
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', hlen - (size_t)(sp1 + 1 - c->in)) : NULL;
    const char *eol = memchr(c->in, '\n', hlen);
    int valid = sp1 && sp2 && eol && sp1 > c->in && sp2 > sp1 + 1 && sp2 < eol;
    for (const char *p = c->in; valid && p < sp1; p++)
        valid = *p >= 'A' && *p <= 'Z';
    int minor = -1;
    if (valid && eol - sp2 >= 9 && strncmp(sp2 + 1, "HTTP/1.", 7) == 0 && (sp2[8] == '0' || sp2[8] == '1'))
        minor = sp2[8] - '0';
    if (!valid || minor < 0)
        return queue_response(c, 400, "Bad Request", 0), 1;
    /* /block?ms=N and /spin?ms=N hold this worker for N ms (slow.c) */
    if (rp_slow_request(sp1 + 1, (size_t)(sp2 - sp1 - 1)) < 0)
        return queue_response(c, 400, "Bad Request", 0), 1;

    size_t vlen;
    const char *v = header_value(eol + 1, hlen - (size_t)(eol + 1 - c->in), "Transfer-Encoding", &vlen);
    if (v)
        return queue_response(c, 501, "Not Implemented", 0), 1;
    size_t body = 0;
    v = header_value(eol + 1, hlen - (size_t)(eol + 1 - c->in), "Content-Length", &vlen);
    if (v) {
        char num[24] = { 0 };
        memcpy(num, v, vlen < sizeof num - 1 ? vlen : sizeof num - 1);
        char *end;
        long n = strtol(num, &end, 10);
        if (end == num || *end || n < 0)
            return queue_response(c, 400, "Bad Request", 0), 1;
        if (hlen + (size_t)n > sizeof c->in)
            return queue_response(c, 413, "Request Entity Too Large", 0), 1;
        body = (size_t)n;
        if (c->in_len < hlen + body)
            return 0;
    }
    int keepalive = minor == 1;
    v = header_value(eol + 1, hlen - (size_t)(eol + 1 - c->in), "Connection", &vlen);
    if (v && vlen == 5 && strncasecmp(v, "close", 5) == 0)
        keepalive = 0;
    if (v && vlen == 10 && strncasecmp(v, "keep-alive", 10) == 0)
        keepalive = 1;
    if (quit_requested)
        keepalive = 0;
    /* Keep pipelined bytes for the next request. */
    size_t used = hlen + body;
    memmove(c->in, c->in + used, c->in_len - used);
    c->in_len -= used;
    queue_response(c, 200, "OK", keepalive);
    return 1;
}

static void conn_write(conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = c };
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            return;
        }
        if (n <= 0) {
            conn_close(c);
            return;
        }
        c->out_off += (size_t)n;
    }
    c->writing = 0;
    c->requests++;
    stats->served++;
    if (c->close_after) {
        /* Half-close first so the client reads the whole response before our FIN. */
        shutdown(c->fd, SHUT_WR);
        conn_close(c);
        return;
    }
    set_in_flight(c, c->in_len > 0);
    c->deadline = now_ms() + cf->keepalive_timeout_ms;
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    if (c->in_len > 0 && handle_request(c))
        conn_write(c);
}

static void conn_read(conn *c)
{
    for (;;) {
        if (c->in_len == sizeof c->in) {
            if (handle_request(c))
                conn_write(c);
            return;
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            conn_close(c);
            return;
        }
        c->in_len += (size_t)n;
        c->last_active = now_ms();
        set_in_flight(c, 1);
        if (c->in_len == (size_t)n)  /* a new request starts: it must complete in time */
            c->deadline = c->last_active + cf->header_timeout_ms;
        if (handle_request(c)) {
            conn_write(c);
            return;
        }
    }
}

static void conn_start(conn *c, int fd, int counted)
{
    memset(c, 0, offsetof(conn, in));
    c->kind = KIND_CONN;
    c->fd = fd;
    c->in_use = 1;
    c->last_active = now_ms();
    c->deadline = c->last_active + cf->header_timeout_ms;
    active_conns++;
    stats->accepted++;
    if (counted)
        c->in_flight = 1;  /* stats->in_flight already includes it */
    else
        set_in_flight(c, 1);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    conn_read(c);  /* with deferred accept the request is already here */
}

static void accept_from(listener *l)
{
    for (int i = 0; i < 64; i++) {
        conn *c = conn_slot();
        if (!c) {
            listeners_enable(0);  /* every connection is busy: let the queue hold the rest */
            return;
        }
        /* Count the connection as ours before the kernel hands it over: killed inside
         * accept4(), this worker has taken it off the queue all the same. */
        __atomic_add_fetch(&stats->in_flight, 1, __ATOMIC_RELAXED);
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            __atomic_sub_fetch(&stats->in_flight, 1, __ATOMIC_RELAXED);
            if (errno == EMFILE || errno == ENFILE)
                listeners_enable(0);
            return;
        }
        conn_start(c, fd, 1);
    }
}

/* A retire hands over connections it accepted while the worker leaves its groups: a
 * drain's, and those that arrive before the close. */
static int take_drained(int fd, size_t index, void *user)
{
    (void)index;
    (void)user;
    conn *c = conn_slot();
    if (!c)
        return -1;  /* the library closes it */
    conn_start(c, fd, 0);
    return 0;
}

static void expire(int64_t now)
{
    for (int i = 0; i < n_conns; i++) {
        conn *c = &conns[i];
        if (!c->in_use)
            continue;
        /* Graceful stop: idle keep-alive connections go now; a fresh connection's first
         * request is still awaited (its client is waiting on it). */
        if (now >= c->deadline || (quit_requested && c->requests > 0 && c->in_len == 0 && !c->writing))
            conn_close(c);
    }
}

static void drop_privileges(void)
{
    if (getuid() != 0 || cf->user[0] == '\0')
        return;
    struct passwd *pw = getpwnam(cf->user);
    if (!pw) {
        rp_log("worker: user \"%s\" not found", cf->user);
        _exit(2);
    }
    if (initgroups(pw->pw_name, pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
        rp_log("worker: cannot switch to user \"%s\": %s", cf->user, strerror(errno));
        _exit(2);
    }
}

void rp_worker_run(const rp_config *config, reuseport_set *set, int first, unsigned gen, rp_worker_stats *st)
{
    cf = config;
    stats = st;
    generation = gen;
    stats->pid = getpid();
    stats->generation = gen;
    stats->in_flight = 0;

    struct sigaction sa = { .sa_handler = on_quit };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGQUIT, &sa, NULL);
    sa.sa_handler = on_terminate;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    sigaction(SIGWINCH, &sa, NULL);
    sigaction(SIGPIPE, &sa, NULL);
    sa.sa_handler = SIG_DFL;
    sigaction(SIGCHLD, &sa, NULL);

    /* The library call must come before the privilege drop: a reuseport group only admits
     * sockets of the same user, and ports below 1024 need root. */
    int rc = first ? reuseport_worker_adopt(set) : reuseport_worker_bind(set);
    if (rc < 0) {
        rp_log("worker: no listen sockets, exiting");  /* the library logged why */
        _exit(3);
    }
    drop_privileges();

    ep = epoll_create1(EPOLL_CLOEXEC);
    n_listeners = reuseport_set_get_count(set);
    for (int i = 0; i < n_listeners; i++) {
        listeners[i].kind = KIND_LISTEN;
        listeners[i].fd = reuseport_listener_get_fd(set, (size_t)i);
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &listeners[i] };
        epoll_ctl(ep, EPOLL_CTL_ADD, listeners[i].fd, &ev);
    }
    accepting = 1;
    n_conns = cf->worker_connections;
    conns = calloc((size_t)n_conns, sizeof *conns);
    if (!conns) {
        rp_log("worker: out of memory for %d connections", n_conns);
        _exit(2);
    }
    rp_log("event=worker_start gen=%u role=%s listeners=%d", gen, first ? "adopted" : "bound", n_listeners);

    /* Signals are delivered only inside epoll_pwait, so a flag set by a handler is always
     * seen before the next wait. One sent before this point is still pending (the master
     * forked us with them blocked) and arrives at the first wait. */
    sigset_t blocked, during_wait;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGQUIT);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigprocmask(SIG_SETMASK, &blocked, NULL);
    sigemptyset(&during_wait);

    int64_t quit_deadline = 0, next_sweep = now_ms() + 200, retire_again = 0;
    for (;;) {
        if (terminate_requested)
            _exit(0);
        if (set)
            /* the master steers around a worker that stops beating; the program prefers
             * the worker with fewer open connections (and fewer sent to it since) */
            reuseport_heartbeat_load(set, (unsigned)active_conns);
        if (quit_requested && set && (retire_again == 0 || now_ms() >= retire_again)) {
            /* Leave the groups first. With migration the library closes the listeners and
             * the kernel moves their queues to the other members; with drain it hands us
             * what is queued until the queue stays empty, then closes. */
            if (retire_again == 0)
                listeners_enable(1);
            int rc = reuseport_retire(set, take_drained, NULL);
            if (rc > 0) {
                retire_again = now_ms() + rc;
            } else {
                reuseport_set_free(set);
                set = NULL;
                n_listeners = 0;
                quit_deadline = now_ms() + cf->shutdown_timeout_ms;
                rp_log("event=worker_quit gen=%u connections=%d", gen, active_conns);
            }
        }
        if (quit_requested && !set && (active_conns == 0 || now_ms() >= quit_deadline)) {
            if (active_conns)
                rp_log("worker: shutdown timeout with %d connections open", active_conns);
            _exit(0);
        }
        if (!accepting && set && active_conns < n_conns)
            listeners_enable(1);

        /* A retire never blocks: it says when to call it again, and meanwhile this loop
         * serves what it had accepted. */
        int timeout = 100;
        if (set && quit_requested) {
            int64_t left = retire_again - now_ms();
            timeout = left <= 0 ? 0 : left < 100 ? (int)left : 100;
        }
        struct epoll_event evs[64];
        int n = epoll_pwait(ep, evs, 64, timeout, &during_wait);
        for (int i = 0; i < n; i++) {
            int kind = *(int *)evs[i].data.ptr;
            if (kind == KIND_LISTEN) {
                if (set && quit_requested)
                    retire_again = 1;  /* the retire accepts and hands it over, next turn */
                else if (set)
                    accept_from(evs[i].data.ptr);
                continue;
            }
            conn *c = evs[i].data.ptr;
            if (!c->in_use)
                continue;  /* closed earlier in this batch */
            if (c->writing)
                conn_write(c);
            else
                conn_read(c);
        }
        int64_t now = now_ms();
        if (now >= next_sweep || quit_requested) {
            expire(now);
            next_sweep = now + 200;
        }
    }
}
