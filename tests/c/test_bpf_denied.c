/*
 * Workers that may make no bpf() call: on Linux 5.14-5.18 with
 * kernel.unprivileged_bpf_disabled set, every bpf() command of a process without CAP_BPF
 * fails with EPERM, even on a map fd it inherited. This kernel cannot show that, so a
 * seccomp filter makes bpf() fail with EPERM in the workers.
 *
 * What must hold (the decision, docs/design.md "Faults"): a worker never fails to serve
 * because bpf() is denied.
 * - Worker 0 adopts as root, then drops privileges and loses bpf(): it beats, serves,
 *   and retires (no bpf call on that path), its queue migrating to its sibling.
 * - Worker 1 has no bpf() even before it binds (harsher than any real kernel): the
 *   bind succeeds, its slot claim fails with a warning naming the bpf map update, and it
 *   serves whatever the program does not steer elsewhere (everything, once worker 0
 *   left: the kernel then hashes among the sockets the program does not choose).
 * Every one of the connections made is accepted: none is lost.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

#include "checks.h"

#if defined(__x86_64__)
#define THIS_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define THIS_ARCH AUDIT_ARCH_AARCH64
#else
#error "add this architecture's AUDIT_ARCH_ value"
#endif

typedef struct {
    uint64_t accepted[2];
    int bpf_denied[2];   /* the filter works: a raw bpf() failed with EPERM */
    char warning[512];   /* the library's warning about the claim, from worker 1 */
} shared_state;

static shared_state *shared;
static volatile sig_atomic_t stop, leave;

static void on_term(int sig) { (void)sig; stop = 1; }
static void on_usr1(int sig) { (void)sig; leave = 1; }

/* bpf(2) fails with EPERM from now on, for this process and its children. */
static void deny_bpf(void)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, THIS_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_bpf, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { .len = sizeof f / sizeof f[0], .filter = f };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        perror("seccomp");
        _exit(2);
    }
}

static int bpf_is_denied(void)
{
    char attr[128] = { 0 };
    return syscall(__NR_bpf, 0 /* BPF_MAP_CREATE */, attr, sizeof attr) < 0 && errno == EPERM;
}

static void on_log(int level, const char *message, void *user)
{
    (void)user;
    if (level <= REUSEPORT_LOG_WARN && strstr(message, "steering map") && shared->warning[0] == 0)
        snprintf(shared->warning, sizeof shared->warning, "%s", message);
}

static int accept_all(int fd, int index)
{
    int c, n = 0;
    while ((c = accept4(fd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
        __atomic_add_fetch(&shared->accepted[index], 1, __ATOMIC_RELAXED);
        close(c);
        n++;
    }
    return n;
}

/* Takes a connection a retire accepted on its way out. */
static int take(int fd, size_t index, void *user)
{
    (void)index;
    __atomic_add_fetch(&shared->accepted[*(int *)user], 1, __ATOMIC_RELAXED);
    close(fd);
    return 0;
}

static void worker(reuseport_set *set, int index)
{
    signal(SIGTERM, on_term);
    signal(SIGUSR1, on_usr1);
    if (index == 1)
        deny_bpf(); /* before the bind: not even the slot claim may use bpf() */
    int rc = index == 0 ? reuseport_worker_adopt(set) : reuseport_worker_bind(set);
    if (rc < 0) {
        fprintf(stderr, "worker %d: %s\n", index, reuseport_last_error());
        _exit(3);
    }
    drop_privileges();
    if (index == 0)
        deny_bpf(); /* after the drop, as unprivileged_bpf_disabled does on 5.14-5.18 */
    shared->bpf_denied[index] = bpf_is_denied();
    int fd = reuseport_listener_get_fd(set, 0);
    while (!stop && !leave) {
        reuseport_heartbeat(set);
        accept_all(fd, index);
        usleep(2000);
    }
    if (leave) {
        /* Retire as a server does: beat and serve between calls; it never blocks. */
        int next;
        while ((next = reuseport_retire(set, take, &index)) > 0) {
            reuseport_heartbeat(set);
            struct pollfd p = { .fd = fd, .events = POLLIN };
            poll(&p, 1, next);
        }
        if (next < 0) {
            fprintf(stderr, "worker %d: retire: %s\n", index, reuseport_last_error());
            _exit(4);
        }
    }
    reuseport_set_free(set);
    _exit(0);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t total(void)
{
    return __atomic_load_n(&shared->accepted[0], __ATOMIC_RELAXED)
         + __atomic_load_n(&shared->accepted[1], __ATOMIC_RELAXED);
}

/* Connects n clients (failures counted), then runs the watch until all are accepted or
 * 5 s passed; returns how many connects failed. */
static int connect_and_wait(reuseport_set *set, uint16_t port, int n, uint64_t expect)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int failed_connects = 0;
    int *fds = calloc((size_t)n, sizeof *fds);
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        failed_connects += connect(fds[i], (struct sockaddr *)&sa, sizeof sa) != 0;
    }
    int64_t deadline = now_ms() + 5000;
    while (total() < expect && now_ms() < deadline) {
        int next = reuseport_watch(set);
        usleep((useconds_t)(next > 0 ? next : 10) * 1000);
    }
    for (int i = 0; i < n; i++)
        close(fds[i]);
    free(fds);
    return failed_connects;
}

int main(void)
{
    if (geteuid() != 0) {
        fprintf(stderr, "SKIP: needs root (in-netns.sh runs it in a namespace)\n");
        return 77;
    }
    shared = mmap(NULL, sizeof *shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    reuseport_log_set_callback(on_log, NULL, REUSEPORT_LOG_WARN);
    reuseport_set *set = reuseport_set_new();
    CHECK(reuseport_set_add(set, "127.0.0.1:0") == 1, "add");
    CHECK(reuseport_set_set_strategy(set, REUSEPORT_STRATEGY_BPF) == 0, "strategy");
    CHECK(reuseport_master_open(set) == 0, "open");
    CHECK(reuseport_listener_is_steered(set, 0) == 1, "the group is steered");
    uint16_t port = port_of(set);

    pid_t w[2];
    for (int i = 0; i < 2; i++) {
        w[i] = fork();
        if (w[i] == 0)
            worker(set, i);
        if (i == 0) {
            CHECK(reuseport_master_release(set) == 0, "release");
            usleep(200 * 1000); /* worker 0 adopts before worker 1 binds */
        }
    }
    int64_t deadline = now_ms() + 3000;
    while (!(shared->bpf_denied[0] && shared->bpf_denied[1]) && now_ms() < deadline)
        usleep(10 * 1000);
    CHECK(shared->bpf_denied[0] && shared->bpf_denied[1], "bpf() fails with EPERM in both workers (%d, %d)",
          shared->bpf_denied[0], shared->bpf_denied[1]);
    CHECK(strstr(shared->warning, "bpf") != NULL, "worker 1's failed claim is logged, naming bpf: \"%s\"",
          shared->warning);
    CHECK(reuseport_listener_get_slots(set, 0, NULL, 0, 0) == 1, "one slot claimed (worker 0's): %d",
          reuseport_listener_get_slots(set, 0, NULL, 0, 0));

    int bad = connect_and_wait(set, port, 200, 200);
    CHECK(bad == 0 && total() == 200, "200 connections accepted with bpf() denied: %llu by worker 0, %llu by 1, "
          "%d connects failed", (unsigned long long)shared->accepted[0], (unsigned long long)shared->accepted[1], bad);

    /* Worker 0 retires without bpf(): what it held migrates; worker 1 takes over. */
    kill(w[0], SIGUSR1);
    int status = -1;
    waitpid(w[0], &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker 0 retired without bpf() (status %d)", status);
    bad = connect_and_wait(set, port, 200, 400);
    CHECK(bad == 0 && total() == 400, "200 more accepted by worker 1 alone: %llu by worker 0, %llu by 1, "
          "%d connects failed", (unsigned long long)shared->accepted[0], (unsigned long long)shared->accepted[1], bad);

    kill(w[1], SIGTERM);
    waitpid(w[1], &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker 1 exits cleanly (status %d)", status);
    reuseport_set_free(set);
    printf("test_bpf_denied: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
