/*
 * test_lifecycle.c: the C lifecycle test, through the C ABI, as an nginx-style prefork
 * server uses it: the master opens, the first worker adopts the master's sockets, the
 * master releases, later workers bind their own; all three then serve one reuseport group.
 *
 * What is asserted is what the kernel and /proc say, not what the library reports: inodes
 * (same socket or not), getsockopt (configured or not), /proc/PID/fd (who holds what), and
 * real connections (every worker gets some on both addresses).
 *
 * Loopback and port 0 only: no root, no network namespace. Every process arms alarm(30).
 *
 *   gcc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -I include tests/c/test_lifecycle.c \
 *       target/debug/libreuseport.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o /tmp/x
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* ppoll, accept4, pipe2 */
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "reuseport.h"
#include "proc_sockets.h"

enum { NLISTEN = 2, NWORKERS = 3, MAX_CONNECTIONS = 3000, WATCHDOG_SECONDS = 30 };

static const char *const SPECS[NLISTEN] = {
    "127.0.0.1:0 rcvbuf=256k deferred so_keepalive=30m:10s:5 fastopen=16 backlog=1024",
    "[::1]:0 sndbuf=128k so_keepalive=on",
};
enum { V4 = 0, V6 = 1, RCVBUF = 256 * 1024, SNDBUF = 128 * 1024 };

/* ---- checks ------------------------------------------------------------------------- */

static int passed, failed;
static char who[64] = "master";

__attribute__((format(printf, 6, 7)))
static void check_(int ok, const char *file, int line, const char *expr, const char *liberr, const char *fmt, ...)
{
    if (ok) {
        passed++;
        return;
    }
    failed++;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "FAIL [%s] %s:%d: %s: %s\n", who, file, line, expr, msg);
    if (liberr && *liberr)
        fprintf(stderr, "     reuseport_last_error(): %s\n", liberr);
}

#define CHECK(cond, ...) check_(!!(cond), __FILE__, __LINE__, #cond, NULL, __VA_ARGS__)
/* After a library call: the library's last error says why it failed. */
#define CHECK_LIB(cond, ...) check_(!!(cond), __FILE__, __LINE__, #cond, reuseport_last_error(), __VA_ARGS__)
#define CHECK_RC(call, want)                                                                \
    do {                                                                                    \
        int rc_ = (call), want_ = (want);                                                   \
        char got_[64], exp_[64];                                                            \
        check_(rc_ == want_, __FILE__, __LINE__, #call, rc_ < 0 ? reuseport_last_error() : NULL, \
               "returned %s, expected %s", rc_text(rc_, got_), rc_text(want_, exp_));       \
    } while (0)

/* "-22 (Invalid argument)" for the library's negative errnos, the number otherwise. */
static const char *rc_text(int rc, char buf[64])
{
    if (rc < 0)
        snprintf(buf, 64, "%d (%s)", rc, strerror(-rc));
    else
        snprintf(buf, 64, "%d", rc);
    return buf;
}

/* On paths that run once per connection: only a failure counts, so N stays the same
 * from run to run. */
#define EXPECT(cond, ...)          \
    do {                           \
        if (!(cond))               \
            CHECK(cond, __VA_ARGS__); \
    } while (0)

static int sockopt(int fd, int level, int name)
{
    int v = 0;
    socklen_t len = sizeof v;
    return getsockopt(fd, level, name, &v, &len) == 0 ? v : -1;
}

#define CHECK_OPT(fd, level, name, op, want)                                                \
    do {                                                                                    \
        int v_ = sockopt((fd), (level), (name));                                            \
        CHECK(v_ op (want), "fd %d: " #name " is %d, expected " #op " %d", (fd), v_, (want)); \
    } while (0)

/* ---- what the master knows, inherited by every worker --------------------------------- */

static int rcvbuf_expect, sndbuf_expect;
static unsigned short port[NLISTEN];
static unsigned long master_inode[NLISTEN];
static pid_t worker_pid[NWORKERS];

/* Linux doubles SO_RCVBUF/SO_SNDBUF (room for its bookkeeping) after capping the request
 * at net.core.rmem_max/wmem_max: this is what a correctly applied option reads back as. */
static int kernel_buffer(int request, const char *max_path)
{
    long max = 0;
    FILE *f = fopen(max_path, "re");
    if (f) {
        if (fscanf(f, "%ld", &max) != 1)
            max = 0;
        fclose(f);
    }
    return 2 * (max > 0 && max < request ? (int)max : request);
}

static unsigned short local_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return 0;
    return ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                          : ((struct sockaddr_in *)&ss)->sin_port);
}

static void addr_text(int i, char *buf, size_t len)
{
    snprintf(buf, len, i == V4 ? "127.0.0.1:%u" : "[::1]:%u", port[i]);
}

static void check_common(int fd)
{
    CHECK_OPT(fd, SOL_SOCKET, SO_REUSEPORT, ==, 1);
    CHECK_OPT(fd, SOL_SOCKET, SO_ACCEPTCONN, ==, 1);
    CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC, "fd %d is not close-on-exec", fd);
    CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK, "fd %d is not non-blocking", fd);
}

/* The master's sockets: bound and listening, nothing configured (the first worker does). */
static void check_unconfigured(const int fd[NLISTEN])
{
    for (int i = 0; i < NLISTEN; i++)
        check_common(fd[i]);
    CHECK_OPT(fd[V4], IPPROTO_TCP, TCP_DEFER_ACCEPT, ==, 0);
    CHECK_OPT(fd[V4], SOL_SOCKET, SO_KEEPALIVE, ==, 0);
    CHECK_OPT(fd[V4], IPPROTO_TCP, TCP_KEEPIDLE, !=, 1800);
    CHECK_OPT(fd[V4], IPPROTO_TCP, TCP_FASTOPEN, ==, 0);
    CHECK_OPT(fd[V4], SOL_SOCKET, SO_RCVBUF, !=, rcvbuf_expect);
    CHECK_OPT(fd[V6], SOL_SOCKET, SO_SNDBUF, !=, sndbuf_expect);
    CHECK_OPT(fd[V6], SOL_SOCKET, SO_KEEPALIVE, ==, 0);
    CHECK_OPT(fd[V6], IPPROTO_IPV6, IPV6_V6ONLY, ==, 1);
}

/* A worker's sockets, adopted or bound: each spec's options, and only its own. */
static void check_configured(const int fd[NLISTEN])
{
    for (int i = 0; i < NLISTEN; i++) {
        check_common(fd[i]);
        CHECK(local_port(fd[i]) == port[i], "fd %d is bound to port %u, the group's is %u", fd[i], local_port(fd[i]), port[i]);
    }
    CHECK_OPT(fd[V4], IPPROTO_TCP, TCP_DEFER_ACCEPT, >, 0);
    CHECK_OPT(fd[V4], SOL_SOCKET, SO_KEEPALIVE, ==, 1);
    CHECK_OPT(fd[V4], IPPROTO_TCP, TCP_KEEPIDLE, ==, 1800);
    CHECK_OPT(fd[V4], IPPROTO_TCP, TCP_KEEPINTVL, ==, 10);
    CHECK_OPT(fd[V4], IPPROTO_TCP, TCP_KEEPCNT, ==, 5);
    CHECK_OPT(fd[V4], IPPROTO_TCP, TCP_FASTOPEN, ==, 16);
    CHECK_OPT(fd[V4], SOL_SOCKET, SO_RCVBUF, ==, rcvbuf_expect);
    CHECK_OPT(fd[V6], SOL_SOCKET, SO_SNDBUF, ==, sndbuf_expect);
    CHECK_OPT(fd[V6], SOL_SOCKET, SO_KEEPALIVE, ==, 1);
    CHECK_OPT(fd[V6], IPPROTO_TCP, TCP_DEFER_ACCEPT, ==, 0);
    CHECK_OPT(fd[V6], IPPROTO_TCP, TCP_FASTOPEN, ==, 0);
    CHECK_OPT(fd[V6], IPPROTO_IPV6, IPV6_V6ONLY, ==, 1);
}

/* ---- workers ------------------------------------------------------------------------ */

/* What a worker tells the parent: once when ready to serve, once when done. */
struct report {
    enum { READY = 1, DONE = 2 } kind;
    int passed, failed;
    unsigned long inode[NLISTEN];
    int served[NLISTEN];
};

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static void worker_watchdog(int sig)
{
    (void)sig;
    static const char m[] = "test_lifecycle: worker watchdog fired (never told to stop)\n";
    ssize_t w = write(2, m, sizeof m - 1);
    (void)w;
    _exit(3);
}

/* One request line in, one line out. The client always sends first: on the deferred
 * (TCP_DEFER_ACCEPT) listener a connection is not even accepted before data arrives,
 * and reading the request means close() sends a FIN, not a reset. */
static int answer(int c, int n)
{
    struct timeval tv = {2, 0};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char req[64];
    size_t got = 0;
    while (got < sizeof req) {
        ssize_t r = recv(c, req + got, sizeof req - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
        if (memchr(req, '\n', got))
            break;
    }
    char line[32];
    int len = snprintf(line, sizeof line, "worker %d\n", n);
    int ok = send(c, line, (size_t)len, MSG_NOSIGNAL) == len;
    close(c);
    return ok;
}

static void serve(int n, const int fd[NLISTEN], int served[NLISTEN])
{
    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_BLOCK, &term, &old);
    while (!stop) {
        struct pollfd p[NLISTEN];
        for (int i = 0; i < NLISTEN; i++)
            p[i] = (struct pollfd){.fd = fd[i], .events = POLLIN};
        /* SIGTERM is unblocked only inside ppoll: one arriving between the test of
         * `stop` and the wait interrupts the wait instead of being missed. */
        if (ppoll(p, NLISTEN, NULL, &old) < 0) {
            EXPECT(errno == EINTR, "ppoll: %s", strerror(errno));
            if (errno != EINTR)
                break;
            continue;
        }
        for (int i = 0; i < NLISTEN; i++) {
            if (!(p[i].revents & POLLIN))
                continue;
            int c;
            while ((c = accept4(fd[i], NULL, NULL, SOCK_CLOEXEC)) >= 0)
                served[i] += answer(c, n);
            EXPECT(errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED, "accept on fd %d: %s", fd[i], strerror(errno));
        }
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
}

static _Noreturn void worker(int n, struct reuseport_set *set, int report_fd)
{
    signal(SIGALRM, worker_watchdog);
    alarm(WATCHDOG_SECONDS);
    signal(SIGTERM, on_term);
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* a parent killed by its watchdog takes us along */
    snprintf(who, sizeof who, "worker %d, pid %ld", n, (long)getpid());
    passed = failed = 0; /* the parent adds ours to its own */

    if (n == 0) {
        CHECK_RC(reuseport_worker_adopt(set), 0);
        CHECK_RC(reuseport_set_get_role(set), REUSEPORT_ROLE_ADOPTED);
    } else {
        CHECK_RC(reuseport_worker_bind(set), 0);
        CHECK_RC(reuseport_set_get_role(set), REUSEPORT_ROLE_BOUND);
    }
    struct report r = {.kind = READY};
    int fd[NLISTEN];
    for (int i = 0; i < NLISTEN; i++) {
        fd[i] = reuseport_listener_get_fd(set, (size_t)i);
        CHECK_LIB(fd[i] >= 0, "reuseport_listener_get_fd(%d) = %d", i, fd[i]);
        r.inode[i] = proc_fd_inode(fd[i]);
        if (n == 0)
            CHECK(r.inode[i] == master_inode[i], "listener %d: inode %lu, the master opened %lu: not the same socket", i, r.inode[i], master_inode[i]);
        else
            CHECK(r.inode[i] != master_inode[i], "listener %d: inode %lu is the master's: not a socket of its own", i, r.inode[i]);
    }
    if (!failed)
        check_configured(fd);
    r.passed = passed, r.failed = failed;
    CHECK(write(report_fd, &r, sizeof r) == sizeof r, "report ready: %s", strerror(errno));
    if (!failed)
        serve(n, fd, r.served);
    reuseport_set_free(set);
    r.kind = DONE, r.passed = passed, r.failed = failed;
    if (write(report_fd, &r, sizeof r) != sizeof r)
        fprintf(stderr, "FAIL [%s] report done: %s\n", who, strerror(errno));
    _exit(failed ? 1 : 0);
}

/* Forks worker n; returns the read end of its report pipe, or -1. */
static int spawn(int n, struct reuseport_set *set)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        CHECK(0, "pipe2: %s", strerror(errno));
        return -1;
    }
    fflush(NULL); /* a child must not flush the parent's buffered output again */
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        worker(n, set, p[1]);
    }
    close(p[1]);
    CHECK(pid > 0, "fork: %s", strerror(errno));
    worker_pid[n] = pid;
    return pid > 0 ? p[0] : (close(p[0]), -1);
}

static int read_report(int rfd, struct report *r, int timeout_ms)
{
    struct pollfd p = {.fd = rfd, .events = POLLIN};
    if (rfd < 0 || poll(&p, 1, timeout_ms) != 1)
        return 0;
    return read(rfd, r, sizeof *r) == sizeof *r;
}

/* ---- the parent as a client ----------------------------------------------------------- */

/* One connection: returns the worker number that answered, or -1 (said on stderr unless
 * `quiet`). */
static int fetch(int i, int quiet)
{
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(port[i])};
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(port[i]), .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    a4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int s = socket(i == V4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct timeval tv = {2, 0}; /* SO_SNDTIMEO also bounds connect() */
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int rc = i == V4 ? connect(s, (struct sockaddr *)&a4, sizeof a4) : connect(s, (struct sockaddr *)&a6, sizeof a6);
    const char *step = "connect";
    char buf[64];
    size_t got = 0;
    if (rc == 0) {
        step = "send";
        if (send(s, "hello\n", 6, MSG_NOSIGNAL) == 6) {
            step = "recv";
            ssize_t r;
            while (got < sizeof buf - 1 && (r = recv(s, buf + got, sizeof buf - 1 - got, 0)) > 0)
                got += (size_t)r;
        }
    }
    int err = errno;
    close(s);
    buf[got] = '\0';
    int n = -1;
    char nl = 0;
    if (sscanf(buf, "worker %d%c", &n, &nl) == 2 && nl == '\n' && n >= 0 && n < NWORKERS)
        return n;
    if (quiet)
        return -1;
    char at[64];
    addr_text(i, at, sizeof at);
    fprintf(stderr, "     connection to %s: %s: %s, got \"%s\"\n", at, step, strerror(err), buf);
    return -1;
}

/* ---- the master ----------------------------------------------------------------------- */

static void master_watchdog(int sig)
{
    (void)sig;
    static const char m[] = "test_lifecycle: watchdog fired after 30 s: FAILED\n";
    ssize_t w = write(2, m, sizeof m - 1);
    (void)w;
    for (int n = 0; n < NWORKERS; n++)
        if (worker_pid[n] > 0)
            kill(worker_pid[n], SIGKILL);
    _exit(1);
}

static int finish(void)
{
    printf("test_lifecycle: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

int main(void)
{
    signal(SIGALRM, master_watchdog);
    alarm(WATCHDOG_SECONDS);
    signal(SIGPIPE, SIG_IGN);
    rcvbuf_expect = kernel_buffer(RCVBUF, "/proc/sys/net/core/rmem_max");
    sndbuf_expect = kernel_buffer(SNDBUF, "/proc/sys/net/core/wmem_max");

    /* 1. The master opens: bound, listening, unconfigured. */
    struct reuseport_set *set = reuseport_set_new();
    CHECK(set != NULL, "reuseport_set_new returned NULL");
    if (!set)
        return finish();
    for (int i = 0; i < NLISTEN; i++)
        CHECK_RC(reuseport_set_add(set, SPECS[i]), 1);
    CHECK_RC(reuseport_master_open(set), 0);
    CHECK_RC(reuseport_set_get_role(set), REUSEPORT_ROLE_MASTER_OPEN);
    if (failed) {
        reuseport_set_free(set);
        return finish();
    }
    int mfd[NLISTEN];
    char spec[NLISTEN][256];
    for (int i = 0; i < NLISTEN; i++) {
        mfd[i] = reuseport_listener_get_fd(set, (size_t)i);
        CHECK_LIB(mfd[i] >= 0, "reuseport_listener_get_fd(%d) = %d", i, mfd[i]);
        master_inode[i] = proc_fd_inode(mfd[i]);
        port[i] = local_port(mfd[i]);
        CHECK(port[i] != 0, "listener %d has no port", i);
        int len = reuseport_listener_get_spec(set, (size_t)i, spec[i], sizeof spec[i]);
        CHECK_LIB(len > 0 && len < (int)sizeof spec[i], "reuseport_listener_get_spec(%d) = %d", i, len);
    }
    /* The spec text shows the port the kernel chose, and each option in canonical form. */
    char want[NLISTEN][256];
    snprintf(want[V4], sizeof want[V4], "127.0.0.1:%u backlog=1024 rcvbuf=262144 deferred fastopen=16 so_keepalive=1800:10:5", port[V4]);
    snprintf(want[V6], sizeof want[V6], "[::1]:%u sndbuf=131072 so_keepalive=on", port[V6]);
    for (int i = 0; i < NLISTEN; i++)
        CHECK(strcmp(spec[i], want[i]) == 0, "spec %d is \"%s\", expected \"%s\"", i, spec[i], want[i]);
    check_unconfigured(mfd);
    struct proc_socket held[8];
    int nheld = proc_listen_sockets(0, held, 8);
    CHECK(nheld == NLISTEN, "the master holds %d listening sockets, expected %d", nheld, NLISTEN);
    for (int i = 0; i < NLISTEN && i < nheld; i++) {
        char at[64];
        addr_text(i, at, sizeof at);
        CHECK(held[i].fd == mfd[i] && held[i].inode == master_inode[i] && strcmp(held[i].addr, at) == 0,
              "/proc shows fd %d inode %lu %s, expected fd %d inode %lu %s", held[i].fd, held[i].inode, held[i].addr, mfd[i], master_inode[i], at);
    }
    printf("master %ld opened: %s (inode %lu) | %s (inode %lu)\n", (long)getpid(), spec[V4], master_inode[V4], spec[V6], master_inode[V6]);

    /* 2. The first worker adopts the master's sockets. */
    int rfd[NWORKERS];
    rfd[0] = spawn(0, set);

    /* 3. The master releases right away, as nginx's would: the worker's copies keep the
     *    group alive whether or not it has adopted yet. */
    CHECK_RC(reuseport_master_release(set), 0);
    CHECK_RC(reuseport_set_get_role(set), REUSEPORT_ROLE_RELEASED);
    for (int i = 0; i < NLISTEN; i++)
        CHECK_RC(reuseport_listener_get_fd(set, (size_t)i), -EBADF);
    nheld = proc_listen_sockets(0, held, 8);
    CHECK(nheld == 0, "the released master still holds %d listening sockets (fd %d inode %lu %s)", nheld,
          nheld > 0 ? held[0].fd : -1, nheld > 0 ? held[0].inode : 0, nheld > 0 ? held[0].addr : "");
    for (int i = 0; i < NLISTEN; i++) {
        char again[256];
        reuseport_listener_get_spec(set, (size_t)i, again, sizeof again);
        CHECK(strcmp(again, spec[i]) == 0, "after release spec %d is \"%s\", was \"%s\"", i, again, spec[i]);
    }
    CHECK_RC(reuseport_master_release(set), -EALREADY);
    CHECK(reuseport_last_error()[0] != '\0', "a second release left no error message");

    /* 4. Later workers bind sockets of their own in the released set. */
    for (int n = 1; n < NWORKERS; n++)
        rfd[n] = spawn(n, set);

    struct report ready[NWORKERS] = {{0}}, done[NWORKERS] = {{0}};
    for (int n = 0; n < NWORKERS; n++)
        CHECK(read_report(rfd[n], &ready[n], 10000) && ready[n].kind == READY, "worker %d not ready within 10 s", n);
    for (int n = 0; n < NWORKERS; n++)
        printf("worker %d (%ld) %-8s inodes %lu, %lu\n", n, (long)worker_pid[n], n == 0 ? "adopted:" : "bound:", ready[n].inode[V4], ready[n].inode[V6]);
    for (int i = 0; i < NLISTEN; i++) {
        CHECK(ready[0].inode[i] == master_inode[i], "worker 0 listener %d: inode %lu, the master's was %lu", i, ready[0].inode[i], master_inode[i]);
        for (int n = 1; n < NWORKERS; n++) {
            CHECK(ready[n].inode[i] != master_inode[i], "worker %d listener %d holds the master's inode %lu", n, i, master_inode[i]);
            for (int m = 1; m < n; m++)
                CHECK(ready[n].inode[i] != ready[m].inode[i] || ready[n].inode[i] == 0, "workers %d and %d share inode %lu", m, n, ready[n].inode[i]);
        }
    }
    /* What each worker really holds: its two listeners and nothing else listening. */
    for (int n = 0; n < NWORKERS; n++) {
        nheld = proc_listen_sockets(worker_pid[n], held, 8);
        CHECK(nheld == NLISTEN, "worker %d holds %d listening sockets, expected %d", n, nheld, NLISTEN);
        for (int i = 0; i < NLISTEN && i < nheld; i++) {
            char at[64];
            addr_text(i, at, sizeof at);
            CHECK(held[i].inode == ready[n].inode[i] && strcmp(held[i].addr, at) == 0,
                  "worker %d: /proc shows inode %lu %s, expected inode %lu %s", n, held[i].inode, held[i].addr, ready[n].inode[i], at);
        }
    }

    /* 5. The group serves: every worker answers on both addresses. */
    int seen[NLISTEN][NWORKERS] = {{0}}, conns = 0, failures = 0, all = 0;
    /* Enough failures to have failed already end the loop early; 5 are shown. */
    while (!all && conns < MAX_CONNECTIONS && failures < 50) {
        int i = conns++ % NLISTEN, n = fetch(i, failures >= 5);
        if (n < 0) {
            failures++;
            continue;
        }
        seen[i][n]++;
        all = 1;
        for (int j = 0; j < NLISTEN; j++)
            for (int m = 0; m < NWORKERS; m++)
                all &= seen[j][m] > 0;
    }
    CHECK(failures == 0, "%d of %d connections failed", failures, conns);
    for (int i = 0; i < NLISTEN; i++) {
        char at[64];
        addr_text(i, at, sizeof at);
        printf("%-16s answered by worker 0: %d, 1: %d, 2: %d\n", at, seen[i][0], seen[i][1], seen[i][2]);
        for (int n = 0; n < NWORKERS; n++)
            CHECK(seen[i][n] > 0, "worker %d never answered on %s in %d connections", n, at, conns);
    }

    /* 6. Stop: every worker exits 0 and served exactly what the client saw. */
    for (int n = 0; n < NWORKERS; n++)
        if (worker_pid[n] > 0)
            kill(worker_pid[n], SIGTERM);
    for (int n = 0; n < NWORKERS; n++) {
        int status = 0;
        if (worker_pid[n] <= 0)
            continue;
        CHECK(waitpid(worker_pid[n], &status, 0) == worker_pid[n], "waitpid worker %d: %s", n, strerror(errno));
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker %d: %s %d", n,
              WIFEXITED(status) ? "exit status" : "killed by signal", WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        worker_pid[n] = 0;
        struct report *r = &ready[n];
        if (read_report(rfd[n], &done[n], 0) && done[n].kind == DONE) {
            r = &done[n];
            for (int i = 0; i < NLISTEN; i++)
                CHECK(done[n].served[i] == seen[i][n], "worker %d served %d on listener %d, the client saw %d", n, done[n].served[i], i, seen[i][n]);
        } else {
            CHECK(0, "worker %d sent no final report", n);
        }
        passed += r->passed, failed += r->failed;
        close(rfd[n]);
    }
    reuseport_set_free(set);
    return finish();
}
