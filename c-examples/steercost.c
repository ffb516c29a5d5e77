/* steercost: what the group's reuseport program costs per new connection, with N workers.
 *
 *   steercost --workers N [--connections M] [--program steer|migrate|none]
 *
 * The process is a master: it opens 127.0.0.1:0 through the library (steer: the steering
 * program, sized for N workers; migrate: steering off, the plain two-instruction migration
 * program; none: strategy none, no program at all), forks N workers (the first
 * adopts, the others bind, as rpserver does) which accept and close in a poll loop with a
 * heartbeat, then makes M connections one after the other (closed with RST, so no port
 * stays in TIME_WAIT). It prints one JSON line: connections per second, how many workers
 * accepted at least one, the name and length of the program it holds (so the benchmark can
 * check it measured the program it meant to), and the kernel's own counters for it (run_cnt,
 * run_time_ns from /proc/self/fdinfo, the figures `bpftool prog show` prints; they count
 * only while sysctl kernel.bpf_stats_enabled=1, which scripts/bench-steer.sh sets and
 * restores). Root (CAP_BPF) and a private network namespace: see scripts/bench-steer.sh. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "reuseport.h"

#define MAX_WORKERS 4096

typedef struct {
    volatile int ready;
    volatile uint64_t served[MAX_WORKERS];
} shared_counts;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void worker(reuseport_set *set, int first, int index, shared_counts *counts)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if ((first ? reuseport_worker_adopt(set) : reuseport_worker_bind(set)) < 0) {
        fprintf(stderr, "steercost: worker %d: %s\n", index, reuseport_last_error());
        _exit(3);
    }
    int fd = reuseport_listener_get_fd(set, 0);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    __atomic_add_fetch(&counts->ready, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        reuseport_heartbeat(set);
        struct pollfd p = { .fd = fd, .events = POLLIN };
        poll(&p, 1, 100);
        int c;
        while ((c = accept4(fd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
            close(c);
            counts->served[index]++;
        }
    }
}

/* The kernel's counters of the reuseport program this process holds (the busiest one),
 * and, when name is not NULL, its name and instruction count (as translated). */
static void program_stats(unsigned long long *cnt, unsigned long long *ns, char *name, size_t name_len,
                          unsigned *insns)
{
    *cnt = *ns = 0;
    int best = -1;
    DIR *d = opendir("/proc/self/fdinfo");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char path[300], line[256];
        snprintf(path, sizeof path, "/proc/self/fdinfo/%s", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        unsigned long long type = 0, c = 0, t = 0;
        while (fgets(line, sizeof line, f)) {
            sscanf(line, "prog_type: %llu", &type);
            sscanf(line, "run_cnt: %llu", &c);
            sscanf(line, "run_time_ns: %llu", &t);
        }
        fclose(f);
        if (type == 21 /* BPF_PROG_TYPE_SK_REUSEPORT */ && c >= *cnt) {
            *cnt = c;
            *ns = t;
            best = atoi(e->d_name);
        }
    }
    if (d)
        closedir(d);
    if (!name)
        return;
    snprintf(name, name_len, "none");
    *insns = 0;
    if (best < 0)
        return;
    struct bpf_prog_info info;
    memset(&info, 0, sizeof info);
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.info.bpf_fd = (unsigned)best;
    attr.info.info_len = sizeof info;
    attr.info.info = (uint64_t)(uintptr_t)&info;
    if (syscall(SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr, sizeof attr) == 0) {
        snprintf(name, name_len, "%.*s", (int)sizeof info.name, info.name);
        *insns = info.xlated_prog_len / 8;
    }
}

int main(int argc, char **argv)
{
    int workers = 2, connections = 20000;
    const char *program = "steer";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--workers") == 0)
            workers = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--connections") == 0)
            connections = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--program") == 0)
            program = argv[i + 1];
        else {
            fprintf(stderr, "usage: steercost --workers N [--connections M] [--program steer|migrate|none]\n");
            return 2;
        }
    }
    if (workers < 1 || workers > MAX_WORKERS || connections < 1 || connections > 1000000) {
        fprintf(stderr, "steercost: 1..%d workers, 1..1000000 connections\n", MAX_WORKERS);
        return 2;
    }
    struct rlimit rl = { 65536, 65536 };
    setrlimit(RLIMIT_NOFILE, &rl);

    reuseport_set *set = reuseport_set_new();
    int rc = reuseport_set_add(set, "127.0.0.1:0 backlog=4096"); /* how many it added */
    rc = rc < 0 ? rc : 0;
    if (rc == 0 && strcmp(program, "steer") != 0)
        rc = reuseport_set_set_steering(set, 0);
    if (rc == 0 && strcmp(program, "none") == 0)
        rc = reuseport_set_set_strategy(set, REUSEPORT_STRATEGY_NONE);
    if (rc == 0)
        rc = reuseport_set_set_max_workers(set, (unsigned)workers);
    if (rc == 0)
        rc = reuseport_master_open(set);
    if (rc < 0) {
        fprintf(stderr, "steercost: %s\n", reuseport_last_error());
        return 1;
    }
    struct sockaddr_in addr;
    socklen_t alen = sizeof addr;
    getsockname(reuseport_listener_get_fd(set, 0), (struct sockaddr *)&addr, &alen);

    shared_counts *counts = mmap(NULL, sizeof *counts, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (counts == MAP_FAILED)
        return 1;
    memset(counts, 0, sizeof *counts);
    static pid_t pids[MAX_WORKERS];
    for (int i = 0; i < workers; i++) {
        pid_t pid = pids[i] = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0)
            worker(set, i == 0, i, counts);
        if (i == 0)
            reuseport_master_release(set);
    }
    int64_t deadline = now_ns() + 60 * 1000000000LL;
    while (counts->ready < workers && now_ns() < deadline)
        usleep(10000);
    if (strcmp(program, "steer") == 0)
        while (reuseport_listener_get_slots(set, 0, NULL, 0, sizeof(reuseport_slot)) < workers && now_ns() < deadline)
            usleep(10000);
    if (counts->ready < workers) {
        fprintf(stderr, "steercost: only %d of %d workers started\n", counts->ready, workers);
        for (int i = 0; i < workers; i++)
            kill(pids[i], SIGKILL);
        return 1;
    }

    unsigned long long cnt0, ns0, cnt1, ns1;
    program_stats(&cnt0, &ns0, NULL, 0, NULL);
    int ok = 0, failed = 0;
    int64_t t0 = now_ns();
    for (int i = 0; i < connections; i++) {
        int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(c, (struct sockaddr *)&addr, sizeof addr) == 0) {
            ok++;
        } else {
            failed++;
        }
        struct linger lg = { 1, 0 };
        setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(c);
    }
    double secs = (double)(now_ns() - t0) / 1e9;
    char held[32];
    unsigned insns;
    program_stats(&cnt1, &ns1, held, sizeof held, &insns);
    usleep(300000); /* the workers take what is queued */
    int served = 0;
    uint64_t total = 0, most = 0;
    for (int i = 0; i < workers; i++) {
        served += counts->served[i] > 0;
        total += counts->served[i];
        most = counts->served[i] > most ? counts->served[i] : most;
    }
    unsigned long long runs = cnt1 - cnt0, run_ns = ns1 - ns0;
    printf("{\"program\":\"%s\",\"held\":\"%s\",\"insns\":%u,\"workers\":%d,\"connections\":%d,\"ok\":%d,\"failed\":%d,\"seconds\":%.3f,"
           "\"conn_per_s\":%.0f,\"served_workers\":%d,\"accepted\":%llu,\"most_per_worker\":%llu,"
           "\"run_cnt\":%llu,\"run_time_ns\":%llu,\"ns_per_run\":%.1f}\n",
           program, held, insns, workers, connections, ok, failed, secs, ok / secs, served, (unsigned long long)total,
           (unsigned long long)most, runs, run_ns, runs ? (double)run_ns / (double)runs : 0.0);
    fflush(stdout);
    for (int i = 0; i < workers; i++)
        kill(pids[i], SIGKILL);
    for (int i = 0; i < workers; i++)
        waitpid(pids[i], NULL, 0);
    reuseport_set_free(set);
    return 0;
}
