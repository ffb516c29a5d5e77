/* steercost: what the group's reuseport program costs per new connection, with N workers.
 *
 *   steercost --workers N [--connections M] [--program steer|migrate|helper|select-none|select-hash|none]
 *
 * The process is a master: it opens 127.0.0.1:0 through the library (steer: the steering
 * program, sized for N workers; migrate: steering off, the plain two-instruction migration
 * program; helper, select-none, select-hash: the migration program replaced, once every
 * worker has joined, by a reference program (load_reference_program() says which does what);
 * none: strategy none, no program at all), forks N workers (the first
 * adopts, the others bind, as rpserver does) which accept and close in a poll loop with a
 * heartbeat, then makes M connections one after the other (closed with RST, so no port
 * stays in TIME_WAIT). It prints one JSON line: connections per second, how many workers
 * accepted at least one, the name and length of the program it holds (so the benchmark can
 * check it measured the program it meant to), and the kernel's own counters for it (run_cnt,
 * run_time_ns from /proc/self/fdinfo, the figures `bpftool prog show` prints; they count
 * only while the kernel's BPF run-time statistics are on: this process turns them on with
 * BPF_ENABLE_STATS for as long as it runs, and scripts/bench-steer.sh also sets sysctl
 * kernel.bpf_stats_enabled=1 for kernels without it). Root (CAP_BPF, CAP_SYS_ADMIN) and a
 * private network namespace: see scripts/bench-steer.sh. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <stddef.h>
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
    volatile int failed; /* workers that could not start (they said why) */
    volatile int attach; /* a reference program: worker 0 attaches it now */
    volatile int attached; /* 1 once attached, -errno if it failed */
    volatile uint64_t served[MAX_WORKERS];
} shared_counts;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The reference programs, each attached in place of the group's program once every worker
 * has joined, and each leaving the choice to the kernel when it selects nothing, as the
 * migration program does. They tell what any program pays per connection on this host from
 * what the library's own logic adds:
 *   helper       one trivial helper call (bpf_get_prandom_u32), nothing selected;
 *   select-none  one bpf_sk_select_reuseport() call with a key past the end of its map: the
 *                call's own cost, no socket read (it fails at its first check);
 *   select-hash  one bpf_sk_select_reuseport() call with the key hash % workers, each worker's
 *                socket at its index: the least any program that selects a socket does.
 * The fd is -1 when loading failed (the verifier's log is printed). */
#define INSN(c, d, s, o, i) ((struct bpf_insn){ .code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i) })

static int load_reference_program(const char *which, int map_fd, int workers)
{
    struct bpf_insn insns[16];
    int n = 0;
    if (strcmp(which, "helper") == 0) {
        insns[n++] = INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_prandom_u32);
    } else {
        insns[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_6, BPF_REG_1, 0, 0);
        if (strcmp(which, "select-hash") == 0) {
            insns[n++] = INSN(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_2, BPF_REG_1, offsetof(struct sk_reuseport_md, hash), 0);
            insns[n++] = INSN(BPF_ALU | BPF_MOD | BPF_K, BPF_REG_2, 0, 0, workers);
        } else {
            insns[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_2, 0, 0, workers); /* past the end */
        }
        insns[n++] = INSN(BPF_STX | BPF_MEM | BPF_W, BPF_REG_10, BPF_REG_2, -4, 0);
        insns[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_1, BPF_REG_6, 0, 0);
        insns[n++] = INSN(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_2, BPF_PSEUDO_MAP_FD, 0, map_fd);
        insns[n++] = INSN(0, 0, 0, 0, 0);
        insns[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_3, BPF_REG_10, 0, 0);
        insns[n++] = INSN(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_3, 0, 0, -4);
        insns[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_4, 0, 0, 0);
        insns[n++] = INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_select_reuseport);
    }
    insns[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, SK_PASS);
    insns[n++] = INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);

    char log[4096] = "";
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_SK_REUSEPORT;
    attr.expected_attach_type = BPF_SK_REUSEPORT_SELECT_OR_MIGRATE;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.insn_cnt = (unsigned)n;
    attr.license = (uint64_t)(uintptr_t)"GPL";
    snprintf(attr.prog_name, sizeof attr.prog_name, "rp_%s", which);
    for (char *c = attr.prog_name; *c; c++)
        *c = *c == '-' ? '_' : *c; /* a program name is [A-Za-z0-9_.] */
    int fd = (int)syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr);
    if (fd < 0) {
        int load_errno = errno;
        /* Again with the verifier's log, for the message. */
        attr.log_buf = (uint64_t)(uintptr_t)log;
        attr.log_size = sizeof log;
        attr.log_level = 1;
        int again = (int)syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr);
        if (again >= 0)
            close(again);
        fprintf(stderr, "steercost: loading the %s program: %s\n%s", which, strerror(load_errno), log);
    }
    return fd;
}

/* select-*: the workers' sockets, each at its worker's index (a REUSEPORT_SOCKARRAY). */
static int create_socket_map(int workers)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_REUSEPORT_SOCKARRAY;
    attr.key_size = 4;
    attr.value_size = 8;
    attr.max_entries = (unsigned)workers;
    int fd = (int)syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr);
    if (fd < 0)
        fprintf(stderr, "steercost: creating the socket map: %s\n", strerror(errno));
    return fd;
}

static int put_socket(int map_fd, unsigned index, int sock)
{
    uint64_t value = (uint64_t)sock;
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_fd = (unsigned)map_fd;
    attr.key = (uint64_t)(uintptr_t)&index;
    attr.value = (uint64_t)(uintptr_t)&value;
    attr.flags = BPF_ANY;
    return (int)syscall(SYS_bpf, BPF_MAP_UPDATE_ELEM, &attr, sizeof attr);
}

static int map_fd = -1;
static int reference_fd = -1; /* the reference program, when one is measured */

static void worker(reuseport_set *set, int first, int index, shared_counts *counts)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if ((first ? reuseport_worker_adopt(set) : reuseport_worker_bind(set)) < 0) {
        fprintf(stderr, "steercost: worker %d: %s\n", index, reuseport_last_error());
        __atomic_add_fetch(&counts->failed, 1, __ATOMIC_SEQ_CST);
        _exit(3);
    }
    int fd = reuseport_listener_get_fd(set, 0);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    if (map_fd >= 0 && put_socket(map_fd, (unsigned)index, fd) < 0) {
        fprintf(stderr, "steercost: worker %d: its socket into the map: %s\n", index, strerror(errno));
        __atomic_add_fetch(&counts->failed, 1, __ATOMIC_SEQ_CST);
        _exit(3);
    }
    __atomic_add_fetch(&counts->ready, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        reuseport_heartbeat(set);
        if (index == 0 && counts->attach && !counts->attached) {
            /* Attached last, once every worker has joined: it replaces the group's program. */
            int r = setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &reference_fd, sizeof reference_fd);
            counts->attached = r == 0 ? 1 : -errno;
        }
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
                          unsigned *insns, int only_fd)
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
        if (type == 21 /* BPF_PROG_TYPE_SK_REUSEPORT */ && c >= *cnt && (only_fd < 0 || atoi(e->d_name) == only_fd)) {
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
            fprintf(stderr, "usage: steercost --workers N [--connections M] [--program steer|migrate|helper|select-none|select-hash|none]\n");
            return 2;
        }
    }
    if (workers < 1 || workers > MAX_WORKERS || connections < 1 || connections > 1000000) {
        fprintf(stderr, "steercost: 1..%d workers, 1..1000000 connections\n", MAX_WORKERS);
        return 2;
    }
    /* Statistics on while this fd is open: the kernel turns them off again when the
     * process exits, however it exits. The busiest program is the one the group holds. */
    union bpf_attr stats;
    memset(&stats, 0, sizeof stats);
    stats.enable_stats.type = BPF_STATS_RUN_TIME;
    int stats_fd = (int)syscall(SYS_bpf, BPF_ENABLE_STATS, &stats, sizeof stats);
    if (stats_fd < 0)
        fprintf(stderr, "steercost: BPF_ENABLE_STATS: %s (counting on kernel.bpf_stats_enabled=1)\n", strerror(errno));
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

    int selects = strcmp(program, "select-none") == 0 || strcmp(program, "select-hash") == 0;
    if (selects && (map_fd = create_socket_map(workers)) < 0)
        return 1;
    if ((selects || strcmp(program, "helper") == 0)
        && (reference_fd = load_reference_program(program, map_fd, workers)) < 0)
        return 1;
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
    while (counts->ready < workers && !counts->failed && now_ns() < deadline)
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

    if (reference_fd >= 0) {
        counts->attach = 1;
        int64_t attach_deadline = now_ns() + 10 * 1000000000LL;
        while (!counts->attached && now_ns() < attach_deadline)
            usleep(1000);
        if (counts->attached != 1) {
            fprintf(stderr, "steercost: attaching the reference program: %s\n",
                    counts->attached ? strerror(-counts->attached) : "worker 0 did not answer");
            for (int i = 0; i < workers; i++)
                kill(pids[i], SIGKILL);
            return 1;
        }
    }
    unsigned long long cnt0, ns0, cnt1, ns1;
    program_stats(&cnt0, &ns0, NULL, 0, NULL, reference_fd);
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
    program_stats(&cnt1, &ns1, held, sizeof held, &insns, reference_fd);
    /* The workers take what is queued: with a thousand of them on two CPUs, one may not
     * run for a while; wait (10 s at most) until every connection made was accepted. */
    int served;
    uint64_t total, most;
    int64_t drain_deadline = now_ns() + 10 * 1000000000LL;
    for (;;) {
        served = 0;
        total = most = 0;
        for (int i = 0; i < workers; i++) {
            served += counts->served[i] > 0;
            total += counts->served[i];
            most = counts->served[i] > most ? counts->served[i] : most;
        }
        if (total >= (uint64_t)ok || now_ns() > drain_deadline)
            break;
        usleep(10000);
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
