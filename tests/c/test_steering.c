/*
 * Health-aware steering through the C API, in a private network namespace, as root:
 * a master and two unprivileged workers that beat once per loop; one worker is
 * SIGSTOPped with connections queued on it. The master's reuseport_watch() marks its
 * slot stalled, its queued connections are served by the other worker, new connections
 * go to the other worker only, and after SIGCONT the slot is healthy and served again.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#include "checks.h"

#define THRESHOLD_MS 50

typedef struct {
    volatile uint64_t accepted[2];
} counters;

static counters *shared;
static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A worker: adopt or bind, drop privileges, then beat and accept until SIGTERM. */
static void worker(reuseport_set *set, int index)
{
    signal(SIGTERM, on_term);
    int rc = index == 0 ? reuseport_worker_adopt(set) : reuseport_worker_bind(set);
    if (rc < 0) {
        fprintf(stderr, "worker %d: %s\n", index, reuseport_last_error());
        _exit(2);
    }
    drop_privileges();
    int fd = reuseport_listener_get_fd(set, 0);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    while (!stop) {
        reuseport_heartbeat(set);
        int c;
        while ((c = accept4(fd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
            __atomic_add_fetch(&shared->accepted[index], 1, __ATOMIC_RELAXED);
            close(c);
        }
        usleep(2000);
    }
    reuseport_set_free(set);
    _exit(0);
}

/* The state of the slot held by `pid`, or -1. */
static int slot_state(reuseport_set *set, pid_t pid, struct reuseport_slot *copy)
{
    struct reuseport_slot slots[8];
    int n = reuseport_listener_get_slots(set, 0, slots, 8, sizeof slots[0]);
    for (int i = 0; i < n && i < 8; i++)
        if (slots[i].pid == pid) {
            if (copy)
                *copy = slots[i];
            return slots[i].state;
        }
    return -1;
}

/* Runs the master's watch for up to `ms`, until pred() holds. */
static int watch_until(reuseport_set *set, int ms, int (*pred)(void *), void *arg)
{
    int64_t deadline = now_ms() + ms;
    while (now_ms() < deadline) {
        int next = reuseport_watch(set);
        if (next <= 0)
            return 0;
        if (pred(arg))
            return 1;
        usleep((useconds_t)next * 1000);
    }
    return pred(arg);
}

struct want {
    reuseport_set *set;
    pid_t pid;
    int state;
};

static int slot_is(void *p)
{
    struct want *w = p;
    return slot_state(w->set, w->pid, NULL) == w->state;
}

static uint64_t expected_total;
static int all_accepted(void *p)
{
    (void)p;
    return shared->accepted[0] + shared->accepted[1] >= expected_total;
}

static int no_slots(void *set)
{
    return reuseport_listener_get_slots(set, 0, NULL, 0, 0) == 0;
}

static void connect_n(uint16_t port, int n, int *fds)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(fds[i], (struct sockaddr *)&sa, sizeof sa) != 0)
            fprintf(stderr, "connect: %s\n", strerror(errno));
    }
}

static void close_n(int n, int *fds)
{
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

int main(void)
{
    if (geteuid() != 0) {
        fprintf(stderr, "SKIP: needs root (in-netns.sh runs it in a namespace)\n");
        return 77;
    }
    struct reuseport_probe_info info;
    CHECK(reuseport_probe(&info, sizeof info, NULL, 0) > 0, "probe");
    CHECK(info.steering == 1, "root can create the steering program (errno %d)", info.steering_errno);
    CHECK(info.rescue == 1, "root may move a stalled worker's queue");

    shared = mmap(NULL, sizeof *shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    reuseport_set *set = reuseport_set_new();
    CHECK(reuseport_set_add(set, "127.0.0.1:0") == 1, "add");
    CHECK(reuseport_set_set_health_threshold(set, THRESHOLD_MS) == 0, "threshold");
    CHECK(reuseport_master_open(set) == 0, "open");
    CHECK(reuseport_listener_is_steered(set, 0) == 1, "the group is steered");
    CHECK(reuseport_listener_is_steered(set, 1) == -ENOENT, "bad index");
    CHECK(reuseport_listener_get_slots(set, 0, NULL, 0, 0) == 0, "no worker yet, no slot");

    uint16_t port = port_of(set);

    pid_t w[2];
    for (int i = 0; i < 2; i++) {
        w[i] = fork();
        if (w[i] == 0)
            worker(set, i);
        if (i == 0)
            CHECK(reuseport_master_release(set) == 0, "release");
    }

    struct want healthy1 = { set, w[1], REUSEPORT_SLOT_HEALTHY };
    struct want healthy0 = { set, w[0], REUSEPORT_SLOT_HEALTHY };
    CHECK(watch_until(set, 3000, slot_is, &healthy0) && watch_until(set, 3000, slot_is, &healthy1),
          "both workers' slots healthy (states %d, %d)", slot_state(set, w[0], NULL), slot_state(set, w[1], NULL));
    struct reuseport_slot s;
    CHECK(slot_state(set, w[1], &s) >= 0 && s.beats > 0, "worker 1 beats (%llu)", (unsigned long long)s.beats);
    CHECK(reuseport_listener_get_slots(set, 0, NULL, 0, 0) == 2, "two slots claimed");

    /* Stall worker 1 with connections queued on it. */
    kill(w[1], SIGSTOP);
    int fds[200];
    connect_n(port, 100, fds);
    expected_total = 100;
    struct want stalled1 = { set, w[1], REUSEPORT_SLOT_STALLED };
    CHECK(watch_until(set, 3000, slot_is, &stalled1), "the stopped worker's slot is stalled (state %d)",
          slot_state(set, w[1], NULL));
    CHECK(watch_until(set, 3000, all_accepted, NULL), "all 100 connections served: %llu by worker 0, %llu by 1",
          (unsigned long long)shared->accepted[0], (unsigned long long)shared->accepted[1]);
    CHECK(shared->accepted[1] == 0, "the stopped worker accepted nothing (%llu)",
          (unsigned long long)shared->accepted[1]);
    close_n(100, fds);

    /* New connections go to the healthy worker only. */
    uint64_t before0 = shared->accepted[0];
    connect_n(port, 100, fds);
    expected_total = 200;
    CHECK(watch_until(set, 3000, all_accepted, NULL) && shared->accepted[0] - before0 == 100,
          "100 new connections, all to worker 0: %llu", (unsigned long long)(shared->accepted[0] - before0));
    close_n(100, fds);

    /* It resumes: healthy again, and served again. */
    kill(w[1], SIGCONT);
    CHECK(watch_until(set, 3000, slot_is, &healthy1), "healthy again after SIGCONT (state %d)",
          slot_state(set, w[1], NULL));
    uint64_t before1 = shared->accepted[1];
    connect_n(port, 200, fds);
    expected_total = 400;
    CHECK(watch_until(set, 3000, all_accepted, NULL), "all served");
    CHECK(shared->accepted[1] - before1 >= 40, "the resumed worker gets its share again: %llu of 200",
          (unsigned long long)(shared->accepted[1] - before1));
    close_n(200, fds);

    for (int i = 0; i < 2; i++) {
        kill(w[i], SIGTERM);
        int st;
        waitpid(w[i], &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d exit status %d", i, st);
    }
    CHECK(watch_until(set, 1000, no_slots, set), "the workers' slots are freed when they exit (%d left)",
          reuseport_listener_get_slots(set, 0, NULL, 0, 0));

    /* A socket of another binary in the group becomes a fallback target. */
    int other = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port) };
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(other, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    CHECK(bind(other, (struct sockaddr *)&sin, sizeof sin) == 0 && listen(other, 16) == 0, "a foreign member");
    CHECK(reuseport_set_add_fallback(set, other) == 1, "added as a fallback: %s", reuseport_last_error());
    int elsewhere = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(reuseport_set_add_fallback(set, elsewhere) == 0, "an address of no listener: not added");
    int p[2];
    CHECK(pipe(p) == 0 && reuseport_set_add_fallback(set, p[0]) == -ENOTSOCK, "not a socket: %s", reuseport_last_error());
    CHECK(reuseport_set_add_fallback(set, -1) == -EBADF, "not an fd");
    CHECK(reuseport_set_add_fallback(NULL, other) == -EINVAL, "NULL set");
    close(p[0]);
    close(p[1]);
    close(elsewhere);
    close(other);

    /* Steering off: the plain migration program, nothing to watch. */
    reuseport_set *plain = reuseport_set_new();
    reuseport_set_add(plain, "127.0.0.1:0");
    CHECK(reuseport_set_set_steering(plain, 0) == 0, "steering off");
    CHECK(reuseport_master_open(plain) == 0, "open without steering");
    CHECK(reuseport_set_set_steering(plain, 1) == -EALREADY, "decided at open");
    CHECK(reuseport_listener_is_steered(plain, 0) == 0, "not steered");
    CHECK(reuseport_listener_get_slots(plain, 0, NULL, 0, 0) == -ENOTSUP, "no slots to report");
    CHECK(reuseport_watch(plain) == 0, "nothing to watch");
    int member = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in plain_sin = { .sin_family = AF_INET, .sin_port = htons(port_of(plain)) };
    plain_sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(member, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    CHECK(bind(member, (struct sockaddr *)&plain_sin, sizeof plain_sin) == 0 && listen(member, 16) == 0, "a member");
    CHECK(reuseport_set_add_fallback(plain, member) == 0, "not steered: no fallback");
    close(member);
    CHECK(reuseport_heartbeat(NULL) == -EINVAL, "NULL set");
    CHECK(reuseport_set_set_steering(NULL, 0) == -EINVAL, "NULL set");
    reuseport_set_free(plain);

    /* Threshold 0: steered (leaving sockets get nothing new), no verdicts, a tick a second. */
    reuseport_set *unjudged = reuseport_set_new();
    reuseport_set_add(unjudged, "127.0.0.1:0");
    reuseport_set_set_health_threshold(unjudged, 0);
    CHECK(reuseport_master_open(unjudged) == 0, "open with threshold 0");
    CHECK(reuseport_listener_is_steered(unjudged, 0) == 1, "still steered");
    CHECK(reuseport_watch(unjudged) == 1000, "housekeeping once a second (%d)", reuseport_watch(unjudged));
    reuseport_set_free(unjudged);
    reuseport_set_free(set);

    printf("test_steering: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
