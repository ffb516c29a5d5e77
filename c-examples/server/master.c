/* rpserver's master: nginx's process model and signals, with the listeners run through
 * the reuseport library.
 *
 *   HUP    reload: re-read the config, open the (new) addresses, start a new generation of
 *          workers, then gracefully stop the old ones. While an upgrade is in progress
 *          (a new master runs), HUP instead starts workers again without re-reading the
 *          config: the first way to revert an upgrade.
 *   USR2   binary upgrade: rename the pid file to .oldbin and exec the binary again; the
 *          new master opens its own sockets (nothing passes through the environment).
 *   WINCH  gracefully stop this master's workers (after USR2, leaves the new master serving).
 *   QUIT   graceful shutdown.   TERM, INT  fast shutdown.
 *
 * When the new master of an upgrade exits (the second way to revert: TERM to it), the old
 * master takes its pid file back and, if it had no workers left, starts them again. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "server.h"

typedef struct {
    pid_t pid;
    unsigned generation;
    int slot;
    int stopping;  /* sent QUIT or TERM: do not respawn */
} worker;

/* The environment variable that carries the migration program's fd across an upgrade's
 * exec. Listen sockets never cross: the new master opens its own. */
#define RP_PROGRAM_ENV "RPSERVER_REUSEPORT_PROGRAM_FD"

static volatile sig_atomic_t sig_reload, sig_upgrade, sig_winch, sig_quit, sig_terminate, sig_child;

static void on_signal(int sig)
{
    switch (sig) {
    case SIGHUP: sig_reload = 1; break;
    case SIGUSR2: sig_upgrade = 1; break;
    case SIGWINCH: sig_winch = 1; break;
    case SIGQUIT: sig_quit = 1; break;
    case SIGTERM:
    case SIGINT: sig_terminate = 1; break;
    case SIGCHLD: sig_child = 1; break;
    }
}

static rp_config cf;
static char **saved_argv;
static char exe_path[PATH_MAX];
static rp_shared *shared;
static worker workers[RP_MAX_WORKERS * 4];
static int n_workers;
static unsigned generation;
static reuseport_set *set;
/* Config spec text → canonical text of the opened listener, so that a reload keeps the
 * port the kernel chose for a `:0` spec instead of choosing a new one. */
static char resolved_from[RP_MAX_LISTEN][RP_SPEC_LEN], resolved_to[RP_MAX_LISTEN][RP_SPEC_LEN];
static int n_resolved;
static pid_t new_binary;  /* the new master of an upgrade in progress */
static int shutting_down, workers_stopped_by_winch;

static int free_slot(void)
{
    for (int s = 0; s < (int)(sizeof shared->slot / sizeof shared->slot[0]); s++) {
        int used = 0;
        for (int i = 0; i < n_workers && !used; i++)
            used = workers[i].slot == s;
        if (!used)
            return s;
    }
    return -1;
}

static void spawn_worker(void)
{
    int slot = free_slot();
    if (slot < 0 || n_workers == (int)(sizeof workers / sizeof workers[0])) {
        rp_log("cannot start a worker: too many processes");
        return;
    }
    /* The library decides the worker's part from where the set stands: a set the master
     * still holds is adopted (first worker), a released one is bound anew (the others). */
    int first = reuseport_set_get_role(set) == REUSEPORT_ROLE_MASTER_OPEN;
    memset(&shared->slot[slot], 0, sizeof shared->slot[slot]);
    pid_t pid = fork();
    if (pid < 0) {
        rp_log("fork: %s", strerror(errno));
        return;
    }
    if (pid == 0) {
        /* Signals stay blocked until the worker has its own handlers: a QUIT sent right
         * after fork must reach the worker's handler, not the master's inherited one. */
        rp_worker_run(&cf, set, first, generation, &shared->slot[slot]);
    }
    workers[n_workers++] = (worker){ .pid = pid, .generation = generation, .slot = slot };
    rp_log("event=spawn pid=%d gen=%u role=%s", (int)pid, generation, first ? "adopt" : "bind");
    /* Failures are already in the log: the library reports them through rp_log_library.
     * With shared_socket on, every worker of the generation adopts the master's socket
     * (one accept queue for all, a benchmark baseline); start_generation() releases. */
    if (first && !cf.shared_socket)
        reuseport_master_release(set);
}

static void signal_workers(int sig, int only_older_than_current)
{
    for (int i = 0; i < n_workers; i++) {
        if (only_older_than_current && workers[i].generation >= generation)
            continue;
        if (kill(workers[i].pid, sig) == 0)
            workers[i].stopping = 1;
    }
}

/* A new set from the config: specs already opened keep their resolved text (and port).
 * It takes over from the running set (reuseport_set_inherit: the migration program, the
 * steering of the addresses both have, the close token), or, in a new binary, from the
 * program handed over across exec, so a master that could load it once never needs the
 * privilege again. */
static int inherited_program = -1;

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static reuseport_set *build_set(const rp_config *c)
{
    reuseport_set *s = reuseport_set_new();
    if (s && (reuseport_set_set_strategy(s, c->strategy) < 0
              || reuseport_set_set_drain(s, (unsigned)c->drain_grace_ms, (unsigned)c->drain_max_ms, c->drain_flags) < 0
              || reuseport_set_set_health_threshold(s, (unsigned)c->health_threshold_ms) < 0
              || reuseport_set_set_max_workers(s, (unsigned)c->worker_processes) < 0)) {
        reuseport_set_free(s);
        return NULL;
    }
    for (int i = 0; s && i < c->n_listen; i++) {
        const char *spec = c->listen[i];
        for (int r = 0; r < n_resolved; r++)
            if (strcmp(resolved_from[r], spec) == 0)
                spec = resolved_to[r];
        if (reuseport_set_add(s, spec) < 0) {
            rp_log("listen \"%s\" rejected", c->listen[i]);
            reuseport_set_free(s);
            return NULL;
        }
    }
    if (s && (set ? reuseport_set_inherit(s, set) < 0
                  : inherited_program >= 0 && reuseport_set_set_program_fd(s, inherited_program) < 0)) {
        reuseport_set_free(s);
        return NULL;
    }
    return s;
}

static void remember_resolved(const rp_config *c, reuseport_set *s)
{
    n_resolved = 0;
    if (reuseport_set_get_count(s) != c->n_listen)
        return;  /* a host name expanded to several listeners: no one-to-one mapping */
    for (int i = 0; i < c->n_listen; i++) {
        snprintf(resolved_from[n_resolved], RP_SPEC_LEN, "%s", c->listen[i]);
        reuseport_listener_get_spec(s, (size_t)i, resolved_to[n_resolved], RP_SPEC_LEN);
        n_resolved++;
    }
}

/* Opens the set and starts a full generation: the first worker adopts, the master
 * releases, the others bind their own. */
static int start_generation(void)
{
    if (reuseport_set_get_role(set) != REUSEPORT_ROLE_MASTER_OPEN && reuseport_master_open(set) < 0) {
        rp_log("cannot open the listeners: no workers started");
        return -1;
    }
    remember_resolved(&cf, set);
    generation++;
    for (int i = 0; i < reuseport_set_get_count(set); i++) {
        char spec[RP_SPEC_LEN];
        reuseport_listener_get_spec(set, (size_t)i, spec, sizeof spec);
        rp_log("event=strategy gen=%u listen=%s strategy=%s", generation, strtok(spec, " "),
               reuseport_strategy_name(reuseport_listener_get_strategy(set, (size_t)i)));
    }
    for (int i = 0; i < cf.worker_processes; i++)
        spawn_worker();
    if (cf.shared_socket)
        reuseport_master_release(set);
    rp_log("event=generation gen=%u workers=%d listeners=%d", generation, cf.worker_processes, reuseport_set_get_count(set));
    return 0;
}

static int live_workers(int gen_only)
{
    int n = 0;
    for (int i = 0; i < n_workers; i++)
        n += !gen_only || workers[i].generation == generation;
    return n;
}

static void reload(void)
{
    if (new_binary) {
        /* Revert an upgrade: workers again, with the config this master already has. */
        rp_log("event=revert_hup");
        workers_stopped_by_winch = 0;
        if (live_workers(1) == 0)
            start_generation();
        return;
    }
    rp_config next;
    char err[1024];
    if (cf.path[0] && rp_config_load(&next, cf.path, err, sizeof err) != 0) {
        rp_log("reload failed, keeping the running configuration: %s", err);
        return;
    }
    if (!cf.path[0])
        next = cf;
    reuseport_set *s = build_set(&next);
    if (!s)
        return;
    if (reuseport_master_open(s) < 0) {
        rp_log("reload failed, keeping the running configuration");
        reuseport_set_free(s);
        return;
    }
    /* The new set holds what it needs of the old one; the old workers may go. */
    reuseport_set_free(set);
    set = s;
    cf = next;
    rp_log_open(cf.error_log);
    rp_log_set_level(cf.log_level);
    workers_stopped_by_winch = 0;
    start_generation();
    signal_workers(SIGQUIT, 1);
    rp_log("event=reload gen=%u", generation);
}

static void write_pid_file(void)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", cf.pid_path);
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0 || rename(tmp, cf.pid_path) != 0)
        rp_log("cannot write pid file %s: %s", cf.pid_path, strerror(errno));
}

static void remove_own_pid_file(const char *path)
{
    FILE *f = fopen(path, "r");
    int pid = 0;
    if (!f)
        return;
    if (fscanf(f, "%d", &pid) != 1)
        pid = 0;
    fclose(f);
    if (pid == (int)getpid())
        unlink(path);
}

static void upgrade(void)
{
    if (new_binary) {
        rp_log("upgrade already in progress (new master %d)", (int)new_binary);
        return;
    }
    char old[PATH_MAX + 8];
    snprintf(old, sizeof old, "%s.oldbin", cf.pid_path);
    if (rename(cf.pid_path, old) != 0) {
        rp_log("upgrade: rename %s to %s: %s", cf.pid_path, old, strerror(errno));
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        /* The migration program (not a listen socket) crosses exec, so that a new binary
         * started without CAP_BPF can still attach it. */
        int prog = reuseport_set_get_program_fd(set);
        if (prog >= 0) {
            int keep = dup(prog);  /* dup() clears FD_CLOEXEC */
            char num[16];
            snprintf(num, sizeof num, "%d", keep);
            if (keep >= 0)
                setenv(RP_PROGRAM_ENV, num, 1);
        }
        /* The signal mask stays blocked across exec (the handlers reset to default); the
         * new master installs its own before it unblocks them. Every fd the library made is close-on-exec: the new master inherits no listener
         * and opens its own, joining the same groups. */
        execv(exe_path, saved_argv);
        rp_log("upgrade: exec %s: %s", exe_path, strerror(errno));
        _exit(1);
    }
    if (pid < 0) {
        rp_log("upgrade: fork: %s", strerror(errno));
        rename(old, cf.pid_path);
        return;
    }
    new_binary = pid;
    rp_log("event=upgrade new_master=%d", (int)pid);
}

static void reap(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        char how[32];
        if (WIFSIGNALED(status))
            snprintf(how, sizeof how, "signal:%d", WTERMSIG(status));
        else
            snprintf(how, sizeof how, "exit:%d", WEXITSTATUS(status));
        if (pid == new_binary) {
            new_binary = 0;
            char old[PATH_MAX + 8];
            snprintf(old, sizeof old, "%s.oldbin", cf.pid_path);
            rename(old, cf.pid_path);
            rp_log("event=new_master_exit pid=%d status=%s", (int)pid, how);
            /* Its steering program stays in the groups: ours serves them again. */
            if (reuseport_master_reclaim(set) < 0)
                rp_log("reuseport_master_reclaim: %s", reuseport_last_error());
            if (!shutting_down && live_workers(0) == 0)
                start_generation();
            continue;
        }
        for (int i = 0; i < n_workers; i++) {
            if (workers[i].pid != pid)
                continue;
            worker w = workers[i];
            rp_worker_stats *st = &shared->slot[w.slot];
            /* What this worker had accepted and not answered is lost with it (only a
             * killed or fast-stopped worker leaves any). */
            rp_log("event=worker_exit pid=%d gen=%u status=%s in_flight=%lld accepted=%llu served=%llu",
                   (int)pid, w.generation, how, (long long)st->in_flight, (unsigned long long)st->accepted,
                   (unsigned long long)st->served);
            workers[i] = workers[--n_workers];
            int crashed = !w.stopping && !shutting_down && !workers_stopped_by_winch;
            if (crashed && w.generation == generation) {
                rp_log("worker %d died unexpectedly (%s): starting another", (int)pid, how);
                spawn_worker();
            }
            break;
        }
    }
}

static int send_signal(const char *name)
{
    static const struct { const char *name; int sig; } names[] = {
        { "reload", SIGHUP }, { "quit", SIGQUIT }, { "stop", SIGTERM }, { "reopen", SIGUSR1 },
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(name, names[i].name) != 0)
            continue;
        FILE *f = fopen(cf.pid_path, "r");
        int pid = 0;
        if (!f || fscanf(f, "%d", &pid) != 1 || pid <= 0) {
            fprintf(stderr, "rpserver: cannot read a pid from %s\n", cf.pid_path);
            return 1;
        }
        fclose(f);
        if (kill(pid, names[i].sig) != 0) {
            fprintf(stderr, "rpserver: kill(%d, %s): %s\n", pid, name, strerror(errno));
            return 1;
        }
        return 0;
    }
    fprintf(stderr, "rpserver: unknown signal \"%s\" (reload, quit, stop, reopen)\n", name);
    return 2;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: rpserver [-c FILE] [-l SPEC]... [-w N] [-P PIDFILE] [-u USER] [-s SIGNAL] [-t]\n"
            "  -c FILE    config file (nginx syntax: worker_processes, user, pid, error_log, listen...)\n"
            "  -l SPEC    a listen spec, e.g. \"127.0.0.1:8080 deferred\" (repeatable; instead of -c)\n"
            "  -w N       worker processes (with -l)\n"
            "  -P FILE    pid file (with -l)\n"
            "  -u USER    user the workers run as when the master is root (with -l)\n"
            "  -s SIGNAL  send reload, quit, stop or reopen to the running master, then exit\n"
            "  -t         check the config and exit\n");
}

int main(int argc, char **argv)
{
    saved_argv = argv;
    rp_config_defaults(&cf);
    const char *conf_path = NULL, *signal_name = NULL;
    int test_only = 0, opt;
    while ((opt = getopt(argc, argv, "c:l:w:P:u:s:th")) != -1) {
        switch (opt) {
        case 'c': conf_path = optarg; break;
        case 'l':
            if (cf.n_listen == RP_MAX_LISTEN) {
                fprintf(stderr, "rpserver: too many -l\n");
                return 2;
            }
            snprintf(cf.listen[cf.n_listen++], RP_SPEC_LEN, "%s", optarg);
            break;
        case 'w': cf.worker_processes = atoi(optarg); break;
        case 'P': snprintf(cf.pid_path, sizeof cf.pid_path, "%s", optarg); break;
        case 'u': snprintf(cf.user, sizeof cf.user, "%s", optarg); break;
        case 's': signal_name = optarg; break;
        case 't': test_only = 1; break;
        default: usage(); return 2;
        }
    }
    if (conf_path) {
        char err[1024];
        if (rp_config_load(&cf, conf_path, err, sizeof err) != 0) {
            fprintf(stderr, "rpserver: %s\n", err);
            return 1;
        }
    } else if (cf.n_listen == 0 && !signal_name) {
        usage();
        return 2;
    }
    if (cf.worker_processes < 1 || cf.worker_processes > RP_MAX_WORKERS) {
        fprintf(stderr, "rpserver: worker_processes must be 1 to %d\n", RP_MAX_WORKERS);
        return 2;
    }
    if (signal_name)
        return send_signal(signal_name);

    rp_log_set_level(cf.log_level);
    const char *handed = getenv(RP_PROGRAM_ENV);
    if (handed) {
        inherited_program = atoi(handed);
        unsetenv(RP_PROGRAM_ENV);
    }
    set = build_set(&cf);
    if (inherited_program >= 0) {
        close(inherited_program);  /* the set keeps its own duplicate */
        inherited_program = -1;
    }
    if (!set)
        return 1;
    if (test_only) {
        printf("rpserver: the configuration is ok (%d listeners)\n", reuseport_set_get_count(set));
        reuseport_set_free(set);
        return 0;
    }
    /* The path to exec on upgrade: whatever binary is there by then. */
    if (!realpath(argv[0], exe_path))
        snprintf(exe_path, sizeof exe_path, "%s", argv[0]);
    rp_log_open(cf.error_log);

    /* Workers may hold many idle connections: allow as many fds as the hard limit. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    shared = mmap(NULL, sizeof *shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) {
        rp_log("mmap: %s", strerror(errno));
        return 1;
    }

    /* Signals are handled only inside sigsuspend(), like nginx's master cycle. */
    sigset_t handled, wait_mask;
    sigemptyset(&handled);
    int sigs[] = { SIGHUP, SIGUSR2, SIGWINCH, SIGQUIT, SIGTERM, SIGINT, SIGCHLD };
    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        sigaddset(&handled, sigs[i]);
        sigaction(sigs[i], &sa, NULL);
    }
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    /* Whatever mask was inherited (an upgrading master execs with these blocked), block
     * exactly the handled signals and wait with none blocked. */
    sigprocmask(SIG_SETMASK, &handled, NULL);
    sigemptyset(&wait_mask);

    if (start_generation() != 0)
        return 1;
    write_pid_file();
    rp_log("event=master_start pid=%d workers=%d", (int)getpid(), cf.worker_processes);

    /* Signals are taken while waiting (like sigsuspend()), which also ends at the next tick
     * of the library's health watch over the workers. */
    int64_t next_watch = 0;
    for (;;) {
        if (shutting_down && n_workers == 0)
            break;
        int64_t now = monotonic_ms();
        if (next_watch >= 0 && now >= next_watch) {
            int ms = reuseport_watch(set);
            next_watch = ms > 0 ? now + ms : -1; /* 0: nothing steered, nothing to watch */
            if (ms < 0)
                rp_log("reuseport_watch: %s", reuseport_last_error());
        }
        struct timespec tick = { 0, 0 };
        if (next_watch >= 0) {
            int64_t left = next_watch - monotonic_ms();
            if (left > 0)
                tick = (struct timespec){ left / 1000, (left % 1000) * 1000000L };
        }
        ppoll(NULL, 0, next_watch >= 0 ? &tick : NULL, &wait_mask);
        if (sig_child) {
            sig_child = 0;
            reap();
        }
        if (sig_terminate) {
            sig_terminate = 0;
            shutting_down = 1;
            signal_workers(SIGTERM, 0);
            rp_log("event=stop");
        }
        if (sig_quit) {
            sig_quit = 0;
            shutting_down = 1;
            signal_workers(SIGQUIT, 0);
            rp_log("event=quit");
        }
        if (shutting_down)
            continue;
        if (sig_reload) {
            sig_reload = 0;
            reload();
            next_watch = 0; /* the new generation's set: steered or not */
        }
        if (sig_upgrade) {
            sig_upgrade = 0;
            upgrade();
        }
        if (sig_winch) {
            sig_winch = 0;
            workers_stopped_by_winch = 1;
            signal_workers(SIGQUIT, 0);
            rp_log("event=winch");
        }
    }
    /* Remove our pid file: the .oldbin one while an upgrade's new master owns the other. */
    remove_own_pid_file(cf.pid_path);
    char old[PATH_MAX + 8];
    snprintf(old, sizeof old, "%s.oldbin", cf.pid_path);
    remove_own_pid_file(old);
    reuseport_set_free(set);
    rp_log("event=exit");
    return 0;
}
