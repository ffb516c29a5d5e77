/* faultshim: faults injected into a running server from inside it, by LD_PRELOAD (the
 * fault scenarios of tests/e2e/scenarios/faults.py). Nothing on the machine changes: the
 * shim acts on the process it is loaded into (and its children) only.
 *
 * FAULTSHIM_CLOCK="MONO_NS:OFFSET_S[,MONO_NS:OFFSET_S...]"
 *     A clock jump. From each CLOCK_MONOTONIC instant MONO_NS on (the test's
 *     time.monotonic_ns()), CLOCK_REALTIME (and _COARSE, CLOCK_TAI), gettimeofday() and
 *     time() read OFFSET_S seconds away from the real time: "T:3600,U:-3600" jumps an
 *     hour forward at T and two hours back at U. The instants are absolute, so a master,
 *     the workers it forks and a binary it execs jump together. CLOCK_MONOTONIC and
 *     CLOCK_BOOTTIME are left alone: a time namespace offsets those (unshare --time).
 *
 * FAULTSHIM_DENY_BPF=seccomp|caps
 *     On SIGPWR the process loses the means to create BPF objects, as a server whose
 *     privileges change mid-life: "seccomp" installs a filter making bpf(BPF_MAP_CREATE)
 *     and bpf(BPF_PROG_LOAD) fail with EPERM (every other bpf() command still works);
 *     "caps" drops CAP_BPF and CAP_SYS_ADMIN from the bounding, permitted, effective,
 *     inheritable and ambient sets, so that a binary it execs does not get them back
 *     either. Both outlive exec; the test sees them in /proc/PID/status. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <linux/audit.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct timeval;  /* gettimeofday() below, without <sys/time.h>'s prototype */
struct timeval_ {
    long tv_sec;
    long tv_usec;
};

#if defined(__x86_64__)
#define THIS_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define THIS_ARCH AUDIT_ARCH_AARCH64
#else
#error "faultshim: add this architecture's AUDIT_ARCH"
#endif

/* ---- the clock ------------------------------------------------------------------------ */

#define MAX_JUMPS 16
static struct {
    long long at_ns, offset_s;
} jumps[MAX_JUMPS];
static int n_jumps;
static int (*real_clock_gettime)(clockid_t, struct timespec *);

static void resolve_real(void)
{
    if (!real_clock_gettime)
        real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
}

static long long offset_now(void)
{
    struct timespec m;
    real_clock_gettime(CLOCK_MONOTONIC, &m);
    long long ns = (long long)m.tv_sec * 1000000000LL + m.tv_nsec, off = 0;
    for (int i = 0; i < n_jumps; i++)
        if (ns >= jumps[i].at_ns)
            off = jumps[i].offset_s;
    return off;
}

int clock_gettime(clockid_t id, struct timespec *ts)
{
    resolve_real();
    int rc = real_clock_gettime(id, ts);
    if (rc == 0 && n_jumps && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE || id == CLOCK_TAI))
        ts->tv_sec += offset_now();
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return -1;
    if (tv) {
        ((struct timeval_ *)tv)->tv_sec = ts.tv_sec;
        ((struct timeval_ *)tv)->tv_usec = ts.tv_nsec / 1000;
    }
    if (tz)
        memset(tz, 0, 2 * sizeof(int));
    return 0;
}

time_t time(time_t *t)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t)
        *t = ts.tv_sec;
    return ts.tv_sec;
}

static void parse_jumps(const char *spec)
{
    while (spec && *spec && n_jumps < MAX_JUMPS) {
        char *end;
        long long at = strtoll(spec, &end, 10);
        if (*end != ':')
            break;
        long long off = strtoll(end + 1, &end, 10);
        jumps[n_jumps].at_ns = at;
        jumps[n_jumps].offset_s = off;
        n_jumps++;
        spec = *end == ',' ? end + 1 : NULL;
    }
}

/* ---- BPF creation denied ------------------------------------------------------------- */

static int deny_how;  /* 1 seccomp, 2 caps */

static void say(const char *what)
{
    char line[160];
    int n = snprintf(line, sizeof line, "faultshim: pid %d: %s\n", (int)getpid(), what);
    if (n > 0 && write(2, line, (size_t)n) < 0) {
        /* nothing to do about it */
    }
}

static void deny_seccomp(void)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, THIS_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_bpf, 0, 4),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, BPF_MAP_CREATE, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, BPF_PROG_LOAD, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof filter / sizeof filter[0], .filter = filter};
    /* As root (CAP_SYS_ADMIN) no_new_privs is not needed: an exec'ed binary keeps root. */
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0)
        say("seccomp filter FAILED");
    else
        say("bpf(BPF_MAP_CREATE) and bpf(BPF_PROG_LOAD) now fail with EPERM (seccomp)");
}

static void deny_caps(void)
{
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct d[2];
    int ok = prctl(PR_CAPBSET_DROP, CAP_BPF, 0, 0, 0) == 0 && prctl(PR_CAPBSET_DROP, CAP_SYS_ADMIN, 0, 0, 0) == 0
             && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) == 0
             && syscall(SYS_capget, &h, d) == 0;
    if (ok) {
        for (int i = 0; i < 2; i++) {
            unsigned drop = 0;
            if (CAP_TO_INDEX(CAP_BPF) == i)
                drop |= CAP_TO_MASK(CAP_BPF);
            if (CAP_TO_INDEX(CAP_SYS_ADMIN) == i)
                drop |= CAP_TO_MASK(CAP_SYS_ADMIN);
            d[i].effective &= ~drop;
            d[i].permitted &= ~drop;
            d[i].inheritable &= ~drop;
        }
        ok = syscall(SYS_capset, &h, d) == 0;
    }
    say(ok ? "CAP_BPF and CAP_SYS_ADMIN dropped (bounding, permitted, effective, inheritable, ambient)"
           : "dropping CAP_BPF FAILED");
}

static void on_sigpwr(int sig)
{
    (void)sig;
    int saved = errno;
    if (deny_how == 1)
        deny_seccomp();
    else if (deny_how == 2)
        deny_caps();
    errno = saved;
}

__attribute__((constructor)) static void faultshim_init(void)
{
    resolve_real();
    parse_jumps(getenv("FAULTSHIM_CLOCK"));
    const char *how = getenv("FAULTSHIM_DENY_BPF");
    if (how) {
        deny_how = strcmp(how, "seccomp") == 0 ? 1 : strcmp(how, "caps") == 0 ? 2 : 0;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_sigpwr;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGPWR, &sa, NULL);
    }
}
