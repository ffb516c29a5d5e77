/*
 * loadclient.c - connection-per-request HTTP load client for reload tests.
 *
 * Opens a NEW TCP connection for every request, at a target rate with
 * bounded concurrency, for a fixed duration / request count / until a file
 * appears, then stops by itself and reports every outcome by kind:
 *
 *   ok       complete "200" response read (EOF, or Content-Length satisfied)
 *   refused  ECONNREFUSED on connect (no listener for the port)
 *   reset    ECONNRESET / EPIPE, or EOF before a complete response
 *   timeout  connect + response not done within --timeout ms
 *   other    anything else (errno name or "http_<status>" is recorded)
 *
 * The response body is searched for "worker <pid> gen <n>" (or just
 * "worker <pid>") and ok responses are counted per worker pid, so a test can
 * see which processes served traffic across a reload / upgrade.
 *
 * With --timeline MS, ok completions are also counted per MS-wide bucket of
 * completion time since the client's start; the JSON output always carries
 * that start (t0_ns, CLOCK_MONOTONIC, the clock of Python's
 * time.monotonic_ns()), so a test can line up its own events (a signal sent
 * at some instant) with the throughput around them.
 *
 * Self-contained: C11 + Linux (epoll) + libc only; does not link the library.
 *   gcc -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror \
 *       c-examples/loadclient.c -o loadclient
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Limits                                                                   */

#define MAX_DURATION_S 600.0 /* hard cap so the client always stops       */
#define MAX_CONCURRENCY 16384
#define MAX_TIMEOUT_MS 600000L
#define RESP_BUF 4096 /* bytes of each response kept for parsing    */
/* Latency samples kept: every request's up to this many (percentiles exact to p999 and
 * beyond for runs of up to 2M requests, 100 s at 20k/s), reservoir sampling past it. */
#define RESERVOIR 2000000
#define MAX_FAIL_DETAILS 5
#define MAX_FAIL_RECORDS 256 /* failures kept with their times for the JSON */
#define UNTIL_POLL_NS 50000000LL /* --until-file polled at most every 50 ms */
#define MAX_OTHER_KINDS 32
#define LOCAL_ERR_BACKOFF_NS 1000000LL /* see start_request()              */
#define MAX_TIMELINE_MS 600000L /* widest --timeline bucket                     */

static const char REQUEST[] = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
#define REQUEST_LEN (sizeof(REQUEST) - 1)
/* --slow-every N --slow-path P: every Nth request asks for P instead of "/" (a mix of
 * cheap and slow requests, e.g. rpserver's /block?ms=20). */
static unsigned long long slow_every;
static char slow_request[512];
static size_t slow_request_len;

/* ------------------------------------------------------------------------ */
/* Types                                                                    */

enum kind { K_OK, K_REFUSED, K_RESET, K_TIMEOUT, K_OTHER, K_COUNT };
static const char *const kind_name[K_COUNT] = {"ok", "refused", "reset", "timeout", "other"};

enum state { S_FREE, S_CONNECTING, S_SENDING, S_READING };
static const char *const phase_name[] = {"socket", "connect", "send", "response"};

struct target {
    struct sockaddr_storage addr;
    socklen_t len;
    char text[80];
};

struct slot {
    int fd;
    enum state state;
    unsigned target;
    int64_t start_ns;      /* when the request was started (before socket()) */
    size_t sent;           /* bytes of the request sent                       */
    bool slow;             /* asks for --slow-path                            */
    size_t have;           /* bytes kept in buf                               */
    size_t header_len;     /* 0 until the header end was seen                 */
    int status;            /* HTTP status, 0 until parsed                     */
    long long content_len; /* -1 when no Content-Length header                */
    long long body_bytes;  /* body bytes received (including those not kept) */
    int prev, next;        /* in-flight list, ordered by start time           */
    char *buf;             /* RESP_BUF + 1 bytes                              */
};

struct worker {
    long pid;
    long gen; /* last generation seen, -1 if the body had none */
    long gen_changes;
    uint64_t count;
};

struct gen_count {
    long gen;
    uint64_t count;
};

struct other_kind {
    char name[40];
    uint64_t count;
};

/* ------------------------------------------------------------------------ */
/* Globals (a small single-threaded program)                                */

static struct target *targets;
static unsigned ntargets, next_target;

static struct slot *slots;
static int *free_stack;
static int nfree;
static int inflight_head = -1, inflight_tail = -1, ninflight;

static int epfd = -1;
static int64_t t0_ns;

static uint64_t counts[K_COUNT];
static uint64_t started, finished, unattributed;

static struct worker *workers;
static size_t nworkers, cap_workers;
static struct gen_count *gens;
static size_t ngens, cap_gens;
static struct other_kind other_kinds[MAX_OTHER_KINDS];
static size_t nother_kinds;

static uint64_t *timeline; /* ok completions per bucket; NULL when off    */
static uint64_t *timeline_slow; /* ...of which took at least slow_ns          */
static int64_t slow_ns = 20 * 1000000LL;
static size_t ntimeline;
static int64_t timeline_ns;

static double *reservoir;
static uint64_t nlat;
static double lat_max_ms;
static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static int64_t max_start_lag_ns;
static uint64_t fail_details_printed;

/* The first failures, so that a test can line each up with its own events (a listener
 * closing): kind, phase, and when the connection started and failed (ns since t0). */
struct fail_record {
    enum kind kind;
    enum state phase;
    int64_t start_ns, end_ns;
};
static struct fail_record fail_records[MAX_FAIL_RECORDS];
static size_t nfail_records;
static bool quiet_errors;

static volatile sig_atomic_t got_signal;

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static const char *errno_name(int e) {
    static char fallback[24];
    const char *n = strerrorname_np(e);
    if (n)
        return n;
    snprintf(fallback, sizeof fallback, "E%d", e);
    return fallback;
}

static uint64_t xorshift64(void) {
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static void on_signal(int sig) {
    if (got_signal)
        _exit(128 + sig); /* second signal: give up immediately */
    got_signal = 1;
}

static void usage(FILE *out) {
    fprintf(out,
        "usage: loadclient [options] HOST:PORT [HOST:PORT ...]\n"
        "\n"
        "Opens a NEW TCP connection per request (GET / HTTP/1.1, Connection: close),\n"
        "reads until EOF and classifies each outcome. Targets are IPv4 \"127.0.0.1:8080\"\n"
        "or IPv6 \"[::1]:8080\"; several targets are used round-robin.\n"
        "\n"
        "options:\n"
        "  -c, --concurrency N   max connections in flight (default 16, max %d)\n"
        "  -r, --rate N          target new connections per second; 0 = as fast as\n"
        "                        concurrency allows (default 0). Request i is scheduled\n"
        "                        at t0 + i/N; when all slots are busy, late requests\n"
        "                        start as soon as a slot frees (they are not dropped).\n"
        "  -d, --duration SECS   stop starting requests after SECS (float; default 5,\n"
        "                        capped at %.0f)\n"
        "  -n, --requests N      stop after N requests started (default unlimited;\n"
        "                        whichever of -d / -n / --until-file comes first)\n"
        "  -t, --timeout MS      per-request timeout, connect + response (default 2000)\n"
        "      --timeline MS     count ok completions per MS-wide bucket of completion\n"
        "                        time since the start (JSON \"timeline\"; 0 = off, the\n"
        "                        default; max %ld)\n"
        "      --slow-ms MS      with --timeline, also count per bucket the ok completions\n"
        "                        that took at least MS (JSON \"timeline_slow\"; default 20)\n"
        "      --slow-every N    every Nth request asks for --slow-path instead of /\n"
        "      --slow-path PATH  e.g. \"/block?ms=20\" (rpserver's slow requests)\n"
        "      --until-file PATH also stop starting requests once PATH exists\n"
        "                        (polled at most every 50 ms)\n"
        "  -j, --json            print a JSON object instead of the one-line summary\n"
        "  -q, --quiet-errors    do not print the first %d failure details to stderr\n"
        "  -h, --help            this text\n"
        "\n"
        "outcomes: ok (HTTP 200, complete: EOF or Content-Length satisfied),\n"
        "  refused (ECONNREFUSED on connect), reset (ECONNRESET/EPIPE, or EOF before\n"
        "  a complete response), timeout (not done within -t), other (anything else,\n"
        "  e.g. EADDRNOTAVAIL or a non-200 status; the reason is recorded).\n"
        "ok bodies are searched for \"worker <pid> [gen <n>]\" and counted per pid.\n"
        "The JSON output gives the start as t0_ns (CLOCK_MONOTONIC nanoseconds, as\n"
        "Python's time.monotonic_ns()); with --timeline also \"timeline_ms\" and\n"
        "\"timeline\": [ok completions in [t0 + i*MS, t0 + (i+1)*MS) for each i], up to\n"
        "the end of the run (the drain after the stop included), and \"timeline_slow\"\n"
        "(those of them that took at least --slow-ms). \"failures\" lists\n"
        "the first %d failures: kind, phase, start_ns and end_ns (since t0).\n"
        "After the stop, requests in flight get at most -t ms, then count as timeout.\n"
        "SIGINT/SIGTERM also stop new requests and print the summary; a second one\n"
        "kills the client.\n"
        "\n"
        "latency: from the start of the connect to the complete response, of ok\n"
        "requests; p50, p99, p999 (nearest rank) and max, exact up to %d requests.\n"
        "\n"
        "output: requests=N ok=N refused=N reset=N timeout=N other=N duration=S.SS\n"
        "        rate=R/s p50=Xms p99=Xms p999=Xms max=Xms workers=K pid:count ...\n"
        "        (one line; or JSON with -j: \"latency_ms\" has the same figures)\n"
        "exit status: 0 every request ok, 1 some failed (or none was started),\n"
        "             2 usage error.\n"
        "\n"
        "ephemeral ports: every request uses a new local port. The side that closes\n"
        "first keeps the 4-tuple in TIME_WAIT for 60 s. With the default port range\n"
        "(net.ipv4.ip_local_port_range, ~28k ports) that is ~28000/60 s = ~470\n"
        "conn/s per target if the client's ports stay blocked. On loopback this\n"
        "normally does not happen: a server that closes first holds the TIME_WAIT\n"
        "itself, and client-side TIME_WAIT is reused when net.ipv4.tcp_tw_reuse is\n"
        "1 or 2 (2, loopback only, is the default). With tcp_tw_reuse=0 and a server\n"
        "that waits for the client to close, ports run out. Exhaustion is NOT worked\n"
        "around: it shows up as other=N (EADDRNOTAVAIL). Several targets (ports or\n"
        "127.0.0.x addresses) multiply the available 4-tuples.\n",
        MAX_CONCURRENCY, MAX_DURATION_S, MAX_TIMELINE_MS, MAX_FAIL_DETAILS, MAX_FAIL_RECORDS,
        RESERVOIR);
}

static bool parse_target(const char *s, struct target *t) {
    char host[64];
    const char *port_s;
    memset(t, 0, sizeof *t);
    if (strlen(s) >= sizeof t->text)
        return false;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':' || (size_t)(end - s - 1) >= sizeof host)
            return false;
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = '\0';
        port_s = end + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= sizeof host)
            return false;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
        port_s = colon + 1;
    }
    char *endp;
    errno = 0;
    long port = strtol(port_s, &endp, 10);
    if (errno || endp == port_s || *endp || port < 1 || port > 65535)
        return false;
    struct sockaddr_in *in4 = (struct sockaddr_in *)&t->addr;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&t->addr;
    if (s[0] != '[' && inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        t->len = sizeof *in4;
    } else if (s[0] == '[' && inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        t->len = sizeof *in6;
    } else {
        return false;
    }
    snprintf(t->text, sizeof t->text, "%s", s);
    return true;
}

static bool parse_u64(const char *s, unsigned long long lo, unsigned long long hi,
                      unsigned long long *out) {
    char *end;
    if (!*s || *s == '-')
        return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_double(const char *s, double lo, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= 1e15)) /* also rejects NaN, inf */
        return false;
    *out = v;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Accounting                                                               */

static void note_other(const char *name) {
    for (size_t i = 0; i < nother_kinds; i++) {
        if (strcmp(other_kinds[i].name, name) == 0) {
            other_kinds[i].count++;
            return;
        }
    }
    /* table full: the last entry collects everything else as "more" */
    size_t i = nother_kinds;
    if (i == MAX_OTHER_KINDS - 1)
        name = "more";
    else if (i == MAX_OTHER_KINDS)
        i = MAX_OTHER_KINDS - 1;
    if (i == nother_kinds) {
        snprintf(other_kinds[i].name, sizeof other_kinds[i].name, "%s", name);
        other_kinds[i].count = 0;
        nother_kinds++;
    }
    other_kinds[i].count++;
}

static void note_worker(long pid, long gen) {
    struct worker *w = NULL;
    for (size_t i = 0; i < nworkers; i++) {
        if (workers[i].pid == pid) {
            w = &workers[i];
            break;
        }
    }
    if (!w) {
        if (nworkers == cap_workers) {
            size_t ncap = cap_workers ? cap_workers * 2 : 16;
            struct worker *nw = realloc(workers, ncap * sizeof *nw);
            if (!nw) {
                unattributed++;
                return;
            }
            workers = nw;
            cap_workers = ncap;
        }
        w = &workers[nworkers++];
        w->pid = pid;
        w->gen = gen;
        w->gen_changes = 0;
        w->count = 0;
    } else if (w->gen != gen) {
        w->gen = gen;
        w->gen_changes++;
    }
    w->count++;

    struct gen_count *g = NULL;
    for (size_t i = 0; i < ngens; i++) {
        if (gens[i].gen == gen) {
            g = &gens[i];
            break;
        }
    }
    if (!g) {
        if (ngens == cap_gens) {
            size_t ncap = cap_gens ? cap_gens * 2 : 8;
            struct gen_count *ng = realloc(gens, ncap * sizeof *ng);
            if (!ng)
                return;
            gens = ng;
            cap_gens = ncap;
        }
        g = &gens[ngens++];
        g->gen = gen;
        g->count = 0;
    }
    g->count++;
}

static void note_latency(int64_t ns) {
    double ms = (double)ns / 1e6;
    if (ms > lat_max_ms)
        lat_max_ms = ms;
    if (nlat < RESERVOIR) {
        reservoir[nlat] = ms;
    } else {
        uint64_t j = xorshift64() % (nlat + 1);
        if (j < RESERVOIR)
            reservoir[j] = ms;
    }
    nlat++;
}

static void fail_detail(enum kind k, const struct slot *s, int err, const char *what,
                        int64_t now) {
    if (quiet_errors)
        return;
    fail_details_printed++;
    if (fail_details_printed > MAX_FAIL_DETAILS) {
        if (fail_details_printed == MAX_FAIL_DETAILS + 1)
            fprintf(stderr, "loadclient: further failure details suppressed\n");
        return;
    }
    char errtext[128] = "";
    if (err)
        snprintf(errtext, sizeof errtext, " errno=%s (%s)", errno_name(err), strerror(err));
    fprintf(stderr, "loadclient: failure #%" PRIu64 ": %s target=%s phase=%s t=%.3fs%s%s%s\n",
            fail_details_printed, kind_name[k], targets[s->target].text, phase_name[s->state],
            (double)(now - t0_ns) / 1e9, errtext, what ? ": " : "", what ? what : "");
}

/* ------------------------------------------------------------------------ */
/* Slots                                                                    */

static void inflight_unlink(int i) {
    struct slot *s = &slots[i];
    if (s->prev >= 0)
        slots[s->prev].next = s->next;
    else
        inflight_head = s->next;
    if (s->next >= 0)
        slots[s->next].prev = s->prev;
    else
        inflight_tail = s->prev;
    s->prev = s->next = -1;
    ninflight--;
}

static void inflight_append(int i) {
    struct slot *s = &slots[i];
    s->prev = inflight_tail;
    s->next = -1;
    if (inflight_tail >= 0)
        slots[inflight_tail].next = i;
    else
        inflight_head = i;
    inflight_tail = i;
    ninflight++;
}

/* Classify and release a slot. err/what are for the failure detail. */
static void finish(int i, enum kind k, int err, const char *other_name, const char *what,
                   int64_t now) {
    struct slot *s = &slots[i];
    counts[k]++;
    finished++;
    if (k == K_OK && timeline && now >= t0_ns) {
        uint64_t b = (uint64_t)((now - t0_ns) / timeline_ns);
        if (b < ntimeline) { /* sized for the whole run: always true */
            timeline[b]++;
            if (now - s->start_ns >= slow_ns)
                timeline_slow[b]++;
        }
    }
    if (k == K_OTHER)
        note_other(other_name ? other_name : (err ? errno_name(err) : "unknown"));
    if (k != K_OK) {
        fail_detail(k, s, err, what, now);
        if (nfail_records < MAX_FAIL_RECORDS)
            fail_records[nfail_records++] =
                (struct fail_record){k, s->state, s->start_ns - t0_ns, now - t0_ns};
    }
    if (s->fd >= 0) {
        close(s->fd); /* normal close, also removes it from the epoll set */
        s->fd = -1;
    }
    if (s->state != S_FREE) {
        inflight_unlink(i);
        s->state = S_FREE;
        free_stack[nfree++] = i;
    }
}

/* Count a failure that happened before a slot was taken (socket() failed). */
static void fail_unslotted(unsigned target, int err, int64_t now) {
    struct slot tmp = {.fd = -1, .state = S_FREE, .target = target};
    counts[K_OTHER]++;
    finished++;
    note_other(errno_name(err));
    fail_detail(K_OTHER, &tmp, err, "socket() failed", now);
}

static enum kind classify_errno(int err) {
    switch (err) {
    case ECONNREFUSED:
        return K_REFUSED;
    case ECONNRESET:
    case EPIPE:
        return K_RESET;
    case ETIMEDOUT:
        return K_TIMEOUT;
    default:
        return K_OTHER;
    }
}

/* Returns true when the connection was opened, false when it failed at once
 * with a local error (so the caller may back off). */
static bool start_request(int64_t now, bool *local_error) {
    unsigned ti = next_target;
    next_target = (next_target + 1) % ntargets;
    started++;
    *local_error = false;

    int fd = socket(targets[ti].addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        fail_unslotted(ti, e, now);
        *local_error = true;
        return false;
    }
    int i = free_stack[--nfree];
    struct slot *s = &slots[i];
    s->fd = fd;
    s->state = S_CONNECTING;
    s->target = ti;
    s->start_ns = now;
    s->sent = s->have = s->header_len = 0;
    s->slow = slow_every && started % slow_every == 0;
    s->status = 0;
    s->content_len = -1;
    s->body_bytes = 0;
    inflight_append(i);

    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int e = errno;
        finish(i, K_OTHER, e, NULL, "epoll_ctl(ADD) failed", now);
        *local_error = true;
        return false;
    }
    if (connect(fd, (struct sockaddr *)&targets[ti].addr, targets[ti].len) < 0) {
        int e = errno;
        if (e == EINPROGRESS || e == EINTR)
            return true; /* completion is reported via EPOLLOUT */
        enum kind k = classify_errno(e);
        if (e == EADDRNOTAVAIL || e == EAGAIN || e == ENOBUFS || e == ENOMEM)
            *local_error = true;
        finish(i, k, e, NULL, NULL, now);
        return false;
    }
    s->state = S_SENDING; /* connected at once; EPOLLOUT follows */
    return true;
}

/* Find the header end and parse status / Content-Length. */
static void parse_head(struct slot *s) {
    char *b = s->buf;
    char *end = memmem(b, s->have, "\r\n\r\n", 4);
    size_t hl;
    if (end) {
        hl = (size_t)(end - b) + 4;
    } else {
        end = memmem(b, s->have, "\n\n", 2);
        if (!end)
            return;
        hl = (size_t)(end - b) + 2;
    }
    s->header_len = hl;
    s->body_bytes += (long long)(s->have - hl);

    /* status line: HTTP/1.x NNN */
    if (hl >= 12 && memcmp(b, "HTTP/", 5) == 0) {
        char *sp = memchr(b, ' ', hl);
        if (sp && sp + 4 <= b + hl && sp[1] >= '0' && sp[1] <= '9' && sp[2] >= '0' &&
            sp[2] <= '9' && sp[3] >= '0' && sp[3] <= '9')
            s->status = (sp[1] - '0') * 100 + (sp[2] - '0') * 10 + (sp[3] - '0');
    }
    if (s->status == 0)
        s->status = -1; /* not HTTP */

    /* headers */
    char *p = memchr(b, '\n', hl);
    while (p && p < b + hl) {
        p++;
        size_t left = (size_t)(b + hl - p);
        if (left > 15 && strncasecmp(p, "content-length:", 15) == 0) {
            char *q = p + 15;
            while (*q == ' ' || *q == '\t')
                q++;
            char *qe;
            long long v = strtoll(q, &qe, 10);
            if (qe != q && v >= 0)
                s->content_len = v;
        }
        p = memchr(p, '\n', left);
    }
}

static bool response_complete(const struct slot *s) {
    return s->header_len > 0 && s->content_len >= 0 && s->body_bytes >= s->content_len;
}

/* Called when the response is complete (EOF or Content-Length satisfied). */
static void finish_response(int i, int64_t now) {
    struct slot *s = &slots[i];
    if (s->status != 200) {
        char name[40], what[64];
        if (s->status < 0) {
            snprintf(name, sizeof name, "bad_response");
            snprintf(what, sizeof what, "response is not HTTP");
        } else {
            snprintf(name, sizeof name, "http_%d", s->status);
            snprintf(what, sizeof what, "HTTP status %d", s->status);
        }
        finish(i, K_OTHER, 0, name, what, now);
        return;
    }
    /* body: look for "worker <pid>" optionally followed by " gen <n>" */
    const char *body = s->buf + s->header_len;
    size_t blen = s->have - s->header_len;
    long pid = -1, gen = -1;
    const char *p = body;
    while (blen > 0) {
        const char *w = memmem(p, blen - (size_t)(p - body), "worker ", 7);
        if (!w)
            break;
        const char *q = w + 7;
        while (*q == ' ')
            q++;
        if (*q >= '0' && *q <= '9') {
            char *qe;
            pid = strtol(q, &qe, 10);
            q = qe;
            while (*q == ' ' || *q == '\t' || *q == ':' || *q == ',')
                q++;
            if (strncmp(q, "gen", 3) == 0) {
                q += 3;
                while (*q == ' ' || *q == '=' || *q == ':')
                    q++;
                if (*q >= '0' && *q <= '9')
                    gen = strtol(q, NULL, 10);
            }
            break;
        }
        p = w + 7;
    }
    note_latency(now - s->start_ns);
    if (pid >= 0)
        note_worker(pid, gen);
    else
        unattributed++;
    finish(i, K_OK, 0, NULL, NULL, now);
}

static void do_send(int i, int64_t now) {
    struct slot *s = &slots[i];
    const char *req = s->slow ? slow_request : REQUEST;
    size_t req_len = s->slow ? slow_request_len : REQUEST_LEN;
    while (s->sent < req_len) {
        ssize_t n = send(s->fd, req + s->sent, req_len - s->sent, MSG_NOSIGNAL);
        if (n < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            if (e == EAGAIN || e == EWOULDBLOCK)
                return;
            finish(i, classify_errno(e), e, NULL, NULL, now);
            return;
        }
        s->sent += (size_t)n;
    }
    s->state = S_READING;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, s->fd, &ev) < 0) {
        int e = errno;
        finish(i, K_OTHER, e, NULL, "epoll_ctl(MOD) failed", now);
    }
}

static void do_read(int i, int64_t now) {
    struct slot *s = &slots[i];
    char scratch[16384];
    for (;;) {
        char *dst;
        size_t room;
        if (s->have < RESP_BUF) {
            dst = s->buf + s->have;
            room = RESP_BUF - s->have;
        } else {
            dst = scratch;
            room = sizeof scratch;
        }
        ssize_t n = read(s->fd, dst, room);
        if (n > 0) {
            if (dst == scratch) {
                if (s->header_len == 0) {
                    finish(i, K_OTHER, 0, "header_too_large", "response header larger than buffer",
                           now);
                    return;
                }
                s->body_bytes += n;
            } else {
                s->have += (size_t)n;
                s->buf[s->have] = '\0';
                if (s->header_len == 0)
                    parse_head(s);
                else
                    s->body_bytes += n;
            }
            continue;
        }
        if (n == 0) { /* EOF */
            if (s->header_len == 0) {
                char what[80];
                snprintf(what, sizeof what, "EOF after %zu bytes, before the response header ended",
                         s->have);
                finish(i, K_RESET, 0, NULL, what, now);
            } else if (s->content_len >= 0 && s->body_bytes < s->content_len) {
                char what[96];
                snprintf(what, sizeof what, "EOF after %lld of %lld body bytes", s->body_bytes,
                         s->content_len);
                finish(i, K_RESET, 0, NULL, what, now);
            } else {
                finish_response(i, now);
            }
            return;
        }
        int e = errno;
        if (e == EINTR)
            continue;
        if (e == EAGAIN || e == EWOULDBLOCK) {
            if (response_complete(s))
                finish_response(i, now);
            return;
        }
        if (response_complete(s)) {
            /* the whole response arrived, then e.g. a RST: the client got its answer */
            finish_response(i, now);
            return;
        }
        finish(i, classify_errno(e), e, NULL, NULL, now);
        return;
    }
}

static void handle_event(int i, uint32_t events, int64_t now) {
    struct slot *s = &slots[i];
    if (s->state == S_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
            err = errno;
        if (err) {
            finish(i, classify_errno(err), err, NULL, NULL, now);
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        s->state = S_SENDING;
    }
    if (s->state == S_SENDING) {
        do_send(i, now);
        return;
    }
    if (s->state == S_READING)
        do_read(i, now);
}

/* ------------------------------------------------------------------------ */
/* Output                                                                   */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int cmp_worker(const void *a, const void *b) {
    long x = ((const struct worker *)a)->pid, y = ((const struct worker *)b)->pid;
    return (x > y) - (x < y);
}

static int cmp_gen(const void *a, const void *b) {
    long x = ((const struct gen_count *)a)->gen, y = ((const struct gen_count *)b)->gen;
    return (x > y) - (x < y);
}

static double percentile(const double *sorted, size_t n, double p) {
    if (n == 0)
        return 0.0;
    double want = p / 100.0 * (double)n; /* nearest-rank: ceil(want) */
    size_t idx = (size_t)want;
    if ((double)idx < want)
        idx++;
    if (idx < 1)
        idx = 1;
    if (idx > n)
        idx = n;
    return sorted[idx - 1];
}

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    unsigned long long concurrency = 16, max_requests = 0;
    double rate = 0.0, duration = 5.0;
    long timeout_ms = 2000, timeline_ms = 0;
    bool json = false;
    const char *until_file = NULL;

    static const struct option longopts[] = {
        {"concurrency", required_argument, NULL, 'c'},
        {"rate", required_argument, NULL, 'r'},
        {"duration", required_argument, NULL, 'd'},
        {"requests", required_argument, NULL, 'n'},
        {"timeout", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},
        {"quiet-errors", no_argument, NULL, 'q'},
        {"until-file", required_argument, NULL, 'U'},
        {"timeline", required_argument, NULL, 'T'},
        {"slow-ms", required_argument, NULL, 'W'},
        {"slow-every", required_argument, NULL, 'S'},
        {"slow-path", required_argument, NULL, 'P'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    unsigned long long v;
    while ((opt = getopt_long(argc, argv, "c:r:d:n:t:jqh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            if (!parse_u64(optarg, 1, MAX_CONCURRENCY, &concurrency)) {
                fprintf(stderr, "loadclient: bad --concurrency '%s' (1..%d)\n", optarg,
                        MAX_CONCURRENCY);
                usage(stderr);
                return 2;
            }
            break;
        case 'r':
            if (!parse_double(optarg, 0.0, &rate) || rate > 1e7) {
                fprintf(stderr, "loadclient: bad --rate '%s'\n", optarg);
                usage(stderr);
                return 2;
            }
            break;
        case 'd':
            if (!parse_double(optarg, 0.0, &duration) || duration <= 0.0) {
                fprintf(stderr, "loadclient: bad --duration '%s' (> 0)\n", optarg);
                usage(stderr);
                return 2;
            }
            if (duration > MAX_DURATION_S) {
                fprintf(stderr, "loadclient: --duration capped at %.0f s\n", MAX_DURATION_S);
                duration = MAX_DURATION_S;
            }
            break;
        case 'n':
            if (!parse_u64(optarg, 1, ULLONG_MAX, &max_requests)) {
                fprintf(stderr, "loadclient: bad --requests '%s' (>= 1)\n", optarg);
                usage(stderr);
                return 2;
            }
            break;
        case 't':
            if (!parse_u64(optarg, 1, MAX_TIMEOUT_MS, &v)) {
                fprintf(stderr, "loadclient: bad --timeout '%s' (1..%ld ms)\n", optarg,
                        MAX_TIMEOUT_MS);
                usage(stderr);
                return 2;
            }
            timeout_ms = (long)v;
            break;
        case 'S':
            if (!parse_u64(optarg, 1, ULLONG_MAX, &slow_every)) {
                fprintf(stderr, "loadclient: bad --slow-every '%s' (>= 1)\n", optarg);
                return 2;
            }
            break;
        case 'P': {
            int n = snprintf(slow_request, sizeof slow_request,
                             "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", optarg);
            if (optarg[0] != '/' || n < 0 || (size_t)n >= sizeof slow_request) {
                fprintf(stderr, "loadclient: bad --slow-path '%s' (a path starting with /)\n", optarg);
                return 2;
            }
            slow_request_len = (size_t)n;
            break;
        }
        case 'j':
            json = true;
            break;
        case 'q':
            quiet_errors = true;
            break;
        case 'U':
            until_file = optarg;
            break;
        case 'T':
            if (!parse_u64(optarg, 0, MAX_TIMELINE_MS, &v)) {
                fprintf(stderr, "loadclient: bad --timeline '%s' (0..%ld ms)\n", optarg,
                        MAX_TIMELINE_MS);
                usage(stderr);
                return 2;
            }
            timeline_ms = (long)v;
            break;
        case 'W':
            if (!parse_u64(optarg, 1, 600000, &v)) {
                fprintf(stderr, "loadclient: bad --slow-ms '%s' (1..600000)\n", optarg);
                usage(stderr);
                return 2;
            }
            slow_ns = (int64_t)v * 1000000LL;
            break;
        case 'h':
            usage(stdout);
            return 2;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (slow_every && !slow_request_len) {
        fprintf(stderr, "loadclient: --slow-every needs --slow-path\n");
        return 2;
    }
    if (optind >= argc) {
        fprintf(stderr, "loadclient: no target given\n");
        usage(stderr);
        return 2;
    }
    ntargets = (unsigned)(argc - optind);
    targets = calloc(ntargets, sizeof *targets);
    if (!targets) {
        perror("loadclient: calloc");
        return 1;
    }
    for (unsigned i = 0; i < ntargets; i++) {
        if (!parse_target(argv[optind + (int)i], &targets[i])) {
            fprintf(stderr, "loadclient: bad target '%s' (want 1.2.3.4:PORT or [::1]:PORT)\n",
                    argv[optind + (int)i]);
            usage(stderr);
            return 2;
        }
    }

    /* enough descriptors for the slots (+ stdio, epoll) */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < concurrency + 32) {
        rlim_t want = concurrency + 32;
        if (rl.rlim_max != RLIM_INFINITY && want > rl.rlim_max)
            want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0 || want < concurrency + 32)
            fprintf(stderr,
                    "loadclient: warning: RLIMIT_NOFILE too low for -c %llu; expect EMFILE\n",
                    concurrency);
    }

    int nslots = (int)concurrency;
    slots = calloc((size_t)nslots, sizeof *slots);
    free_stack = calloc((size_t)nslots, sizeof *free_stack);
    char *bufs = malloc((size_t)nslots * (RESP_BUF + 1));
    reservoir = malloc(RESERVOIR * sizeof *reservoir);
    struct epoll_event *evs = calloc((size_t)nslots, sizeof *evs);
    if (timeline_ms) {
        /* Completions come until the drain after the stop: at most the duration
         * (capped at MAX_DURATION_S) plus one timeout, and a little lag. */
        timeline_ns = (int64_t)timeline_ms * 1000000LL;
        ntimeline = (size_t)((duration * 1000.0 + (double)timeout_ms) / (double)timeline_ms) + 2;
        timeline = calloc(ntimeline, sizeof *timeline);
        timeline_slow = calloc(ntimeline, sizeof *timeline_slow);
    }
    if (!slots || !free_stack || !bufs || !reservoir || !evs || (timeline_ms && (!timeline || !timeline_slow))) {
        perror("loadclient: malloc");
        return 1;
    }
    for (int i = 0; i < nslots; i++) {
        slots[i].fd = -1;
        slots[i].state = S_FREE;
        slots[i].prev = slots[i].next = -1;
        slots[i].buf = bufs + (size_t)i * (RESP_BUF + 1);
        free_stack[i] = nslots - 1 - i; /* pop order 0, 1, 2, ... */
    }
    nfree = nslots;

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        perror("loadclient: epoll_create1");
        return 1;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: epoll_wait returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    const int64_t timeout_ns = (int64_t)timeout_ms * 1000000LL;
    const double period_ns = rate > 0 ? 1e9 / rate : 0.0;
    t0_ns = now_ns();
    const int64_t stop_at = t0_ns + (int64_t)(duration * 1e9);
    int64_t next_poll = t0_ns;
    int64_t backoff_until = 0;
    int64_t drain_deadline = INT64_MAX;
    bool stopping = false;

    for (;;) {
        int64_t now = now_ns();

        /* 1. decide whether to stop starting requests */
        if (!stopping) {
            bool stop = got_signal || now >= stop_at ||
                        (max_requests && started >= max_requests);
            if (!stop && until_file && now >= next_poll) {
                next_poll = now + UNTIL_POLL_NS;
                if (access(until_file, F_OK) == 0)
                    stop = true;
            }
            if (stop) {
                stopping = true;
                drain_deadline = now + timeout_ns;
            }
        }

        /* 2. expire requests past their deadline (oldest first) */
        while (inflight_head >= 0) {
            struct slot *s = &slots[inflight_head];
            if (now < s->start_ns + timeout_ns && now < drain_deadline)
                break;
            char what[64];
            snprintf(what, sizeof what, "no %s within %ld ms", phase_name[s->state], timeout_ms);
            finish(inflight_head, K_TIMEOUT, 0, NULL, what, now);
        }

        if (stopping && ninflight == 0)
            break;

        /* 3. start requests that are due */
        int64_t next_start = INT64_MAX;
        if (!stopping) {
            /* Bounded per round: instant failures (e.g. a synchronous
             * ECONNREFUSED) free their slot at once and must not starve
             * event handling, timeouts and the stop checks. */
            int budget = nslots < 64 ? 64 : nslots;
            while (nfree > 0 && now >= backoff_until &&
                   (!max_requests || started < max_requests)) {
                if (budget-- == 0) {
                    next_start = now; /* more are due: poll without sleeping */
                    break;
                }
                int64_t due = rate > 0 ? t0_ns + (int64_t)((double)started * period_ns) : now;
                if (due > now) {
                    next_start = due;
                    break;
                }
                if (now - due > max_start_lag_ns)
                    max_start_lag_ns = now - due;
                bool local_error;
                start_request(now, &local_error);
                if (local_error && rate <= 0) {
                    /* Out of ports / descriptors: without a rate we would spin
                     * and count millions of instant failures; pause briefly.
                     * Every attempt made is still counted. */
                    backoff_until = now + LOCAL_ERR_BACKOFF_NS;
                }
                now = now_ns();
                if (now >= stop_at)
                    break;
            }
            if (nfree > 0 && now < backoff_until && backoff_until < next_start)
                next_start = backoff_until;
        }

        /* 4. wait for I/O or the next timer */
        int64_t wake = next_start;
        if (inflight_head >= 0) {
            int64_t d = slots[inflight_head].start_ns + timeout_ns;
            if (d < wake)
                wake = d;
        }
        if (!stopping) {
            if (stop_at < wake)
                wake = stop_at;
            if (until_file && next_poll < wake)
                wake = next_poll;
        } else if (drain_deadline < wake) {
            wake = drain_deadline;
        }
        int timeout;
        if (wake == INT64_MAX) {
            timeout = 1000;
        } else if (wake <= now) {
            timeout = 0;
        } else {
            int64_t ms = (wake - now + 999999) / 1000000; /* round up */
            timeout = ms > 1000 ? 1000 : (int)ms;
        }
        int n = epoll_wait(epfd, evs, nslots, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("loadclient: epoll_wait");
            return 1;
        }
        now = now_ns();
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            if (slots[i].state != S_FREE)
                handle_event(i, evs[k].events, now);
        }
    }

    int64_t end_ns = now_ns();
    double elapsed = (double)(end_ns - t0_ns) / 1e9;
    uint64_t requests = finished;
    uint64_t failed = requests - counts[K_OK];
    double rps = elapsed > 0 ? (double)requests / elapsed : 0.0;

    qsort(workers, nworkers, sizeof *workers, cmp_worker);
    qsort(gens, ngens, sizeof *gens, cmp_gen);
    size_t nsamples = nlat < RESERVOIR ? (size_t)nlat : RESERVOIR;
    qsort(reservoir, nsamples, sizeof *reservoir, cmp_double);

    if (json) {
        printf("{\"requests\":%" PRIu64 ",\"ok\":%" PRIu64 ",\"refused\":%" PRIu64
               ",\"reset\":%" PRIu64 ",\"timeout\":%" PRIu64 ",\"other\":%" PRIu64
               ",\"failed\":%" PRIu64 ",\"duration_s\":%.3f,\"rate_per_s\":%.1f",
               requests, counts[K_OK], counts[K_REFUSED], counts[K_RESET], counts[K_TIMEOUT],
               counts[K_OTHER], failed, elapsed, rps);
        printf(",\"workers\":{");
        for (size_t i = 0; i < nworkers; i++)
            printf("%s\"%ld\":%" PRIu64, i ? "," : "", workers[i].pid, workers[i].count);
        printf("},\"worker_gen\":{");
        for (size_t i = 0; i < nworkers; i++)
            printf("%s\"%ld\":%ld", i ? "," : "", workers[i].pid, workers[i].gen);
        printf("},\"generations\":{");
        for (size_t i = 0; i < ngens; i++)
            printf("%s\"%ld\":%" PRIu64, i ? "," : "", gens[i].gen, gens[i].count);
        printf("},\"unattributed\":%" PRIu64 ",\"other_kinds\":{", unattributed);
        for (size_t i = 0; i < nother_kinds; i++) {
            if (i)
                putchar(',');
            json_string(other_kinds[i].name);
            printf(":%" PRIu64, other_kinds[i].count);
        }
        printf("},\"latency_ms\":{\"p50\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f,"
               "\"samples\":%zu,\"exact\":%s}",
               percentile(reservoir, nsamples, 50), percentile(reservoir, nsamples, 99),
               percentile(reservoir, nsamples, 99.9), lat_max_ms, nsamples,
               nlat <= RESERVOIR ? "true" : "false");
        printf(",\"config\":{\"concurrency\":%llu,\"rate\":%.1f,\"duration_s\":%.3f,",
               concurrency, rate, duration);
        if (max_requests)
            printf("\"requests\":%llu,", max_requests);
        else
            printf("\"requests\":null,");
        printf("\"timeout_ms\":%ld,\"targets\":[", timeout_ms);
        for (unsigned i = 0; i < ntargets; i++) {
            if (i)
                putchar(',');
            json_string(targets[i].text);
        }
        printf("]},\"max_start_lag_ms\":%.3f,\"t0_ns\":%" PRId64, (double)max_start_lag_ns / 1e6,
               t0_ns);
        printf(",\"failures\":[");
        for (size_t i = 0; i < nfail_records; i++)
            printf("%s{\"kind\":\"%s\",\"phase\":\"%s\",\"start_ns\":%" PRId64
                   ",\"end_ns\":%" PRId64 "}",
                   i ? "," : "", kind_name[fail_records[i].kind], phase_name[fail_records[i].phase],
                   fail_records[i].start_ns, fail_records[i].end_ns);
        putchar(']');
        if (timeline) {
            size_t n = (size_t)((end_ns - t0_ns) / timeline_ns) + 1;
            if (n > ntimeline)
                n = ntimeline;
            printf(",\"timeline_ms\":%ld,\"timeline\":[", timeline_ms);
            for (size_t i = 0; i < n; i++)
                printf("%s%" PRIu64, i ? "," : "", timeline[i]);
            printf("],\"slow_ms\":%" PRId64 ",\"timeline_slow\":[", (int64_t)(slow_ns / 1000000));
            for (size_t i = 0; i < n; i++)
                printf("%s%" PRIu64, i ? "," : "", timeline_slow[i]);
            putchar(']');
        }
        printf("}\n");
    } else {
        printf("requests=%" PRIu64 " ok=%" PRIu64 " refused=%" PRIu64 " reset=%" PRIu64
               " timeout=%" PRIu64 " other=%" PRIu64 " duration=%.2f rate=%.1f/s"
               " p50=%.2fms p99=%.2fms p999=%.2fms max=%.2fms workers=%zu",
               requests, counts[K_OK], counts[K_REFUSED], counts[K_RESET], counts[K_TIMEOUT],
               counts[K_OTHER], elapsed, rps, percentile(reservoir, nsamples, 50),
               percentile(reservoir, nsamples, 99), percentile(reservoir, nsamples, 99.9),
               lat_max_ms, nworkers);
        for (size_t i = 0; i < nworkers; i++)
            printf(" %ld:%" PRIu64, workers[i].pid, workers[i].count);
        putchar('\n');
        if (nother_kinds && !quiet_errors) {
            fprintf(stderr, "loadclient: other:");
            for (size_t i = 0; i < nother_kinds; i++)
                fprintf(stderr, " %s=%" PRIu64, other_kinds[i].name, other_kinds[i].count);
            fputc('\n', stderr);
        }
    }
    fflush(stdout);

    close(epfd);
    free(evs);
    free(reservoir);
    free(timeline);
    free(timeline_slow);
    free(bufs);
    free(free_stack);
    free(slots);
    free(workers);
    free(gens);
    free(targets);

    if (requests == 0) {
        fprintf(stderr, "loadclient: no request was started\n");
        return 1;
    }
    return failed ? 1 : 0;
}
