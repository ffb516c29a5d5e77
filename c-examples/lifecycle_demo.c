/*
 * lifecycle_demo.c: an nginx-style prefork lifecycle on one reuseport group, step by step,
 * with what each process really holds (read from /proc) after each step.
 *
 *   master:    open (bound, listening, unconfigured) --fork worker 0--> release
 *   worker 0:  adopt: the master's very sockets, now configured
 *   workers 1, 2 (forked after the release): bind sockets of their own into the group
 *
 * Then it sends 60 connections to each address, shows who served them, stops the workers
 * and exits. Usage: lifecycle_demo [SPEC...]   (default "127.0.0.1:0 deferred" "[::1]:0")
 *
 *   gcc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -I include c-examples/lifecycle_demo.c \
 *       target/debug/libreuseport.a -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o /tmp/demo
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* ppoll, accept4, pipe2 */
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
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

enum { MAXL = 8, NWORKERS = 3, CONNECTIONS = 60, WATCHDOG_SECONDS = 10 };

static int nl;                                /* listeners in the set */
static unsigned long master_inode[MAXL];
static struct sockaddr_storage target[MAXL]; /* where the client connects */
static pid_t worker_pid[NWORKERS];

static void on_log(int level, const char *message, void *user)
{
    (void)user;
    static const char *const names[] = {[3] = "error", [4] = "warn", [6] = "info", [7] = "debug"};
    printf("        [%ld %s] %s\n", (long)getpid(), level >= 3 && level <= 7 && names[level] ? names[level] : "?", message);
}

static void stop_workers(int sig)
{
    for (int n = 0; n < NWORKERS; n++)
        if (worker_pid[n] > 0)
            kill(worker_pid[n], sig);
}

static void watchdog(int sig)
{
    (void)sig;
    static const char m[] = "lifecycle_demo: watchdog: still running after 10 s, giving up\n";
    ssize_t w = write(2, m, sizeof m - 1);
    (void)w;
    stop_workers(SIGKILL);
    _exit(1);
}

/* The library's message names the function, the address and what to do: print it as is. */
static void die(void)
{
    fprintf(stderr, "lifecycle_demo: %s\n", reuseport_last_error());
    stop_workers(SIGTERM);
    exit(1);
}

/* One line of the table: what `pid` (0: the master itself) holds, from /proc/PID/fd and
 * /proc/net/tcp{,6}: the kernel's view, not the library's. */
static void show(const char *step, const char *who, pid_t pid)
{
    struct proc_socket s[MAXL];
    int n = proc_listen_sockets(pid, s, MAXL), same = n > 0;
    printf("%-7s %-26s ", step, who);
    if (n < 0)
        printf("(cannot read /proc/%ld/fd: %s)", (long)pid, strerror(-n));
    else if (n == 0)
        printf("(no listen socket)");
    for (int i = 0; i < n && i < MAXL; i++) {
        printf("%sfd %d inode %lu %s", i ? " | " : "", s[i].fd, s[i].inode, s[i].addr);
        same &= i < nl && s[i].inode == master_inode[i];
    }
    if (pid != 0 && n > 0)
        printf(same ? "  (the master's sockets)" : "  (its own sockets)");
    printf("\n");
}

/* ---- a worker: answer "worker N" to each connection until SIGTERM -------------------- */

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static _Noreturn void worker(int n, struct reuseport_set *set, int report_fd)
{
    signal(SIGALRM, SIG_DFL);
    alarm(WATCHDOG_SECONDS);
    signal(SIGTERM, on_term);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    int rc = n == 0 ? reuseport_worker_adopt(set) : reuseport_worker_bind(set);
    if (rc < 0) {
        fprintf(stderr, "worker %d: %s\n", n, reuseport_last_error());
        _exit(1);
    }
    int served[MAXL] = {0};
    struct pollfd p[MAXL];
    for (int i = 0; i < nl; i++)
        p[i] = (struct pollfd){.fd = reuseport_listener_get_fd(set, (size_t)i), .events = POLLIN};
    if (write(report_fd, served, sizeof served) != sizeof served) /* "ready" */
        _exit(1);
    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_BLOCK, &term, &old);
    while (!stop) {
        if (ppoll(p, (nfds_t)nl, NULL, &old) < 0) /* SIGTERM gets in only here: never lost */
            continue;
        for (int i = 0; i < nl; i++) {
            int c;
            while ((p[i].revents & POLLIN) && (c = accept4(p[i].fd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
                /* Read the request first: a deferred listener only accepts once data came,
                 * and closing with unread data would send a reset instead of our line. */
                char buf[64], line[32];
                struct timeval tv = {1, 0};
                setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
                ssize_t r = recv(c, buf, sizeof buf, 0);
                int len = snprintf(line, sizeof line, "worker %d\n", n);
                served[i] += r > 0 && send(c, line, (size_t)len, MSG_NOSIGNAL) == len;
                close(c);
            }
        }
    }
    reuseport_set_free(set);
    _exit(write(report_fd, served, sizeof served) == sizeof served ? 0 : 1);
}

static int spawn(int n, struct reuseport_set *set)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        worker(n, set, p[1]);
    }
    close(p[1]);
    worker_pid[n] = pid;
    int served[MAXL];
    struct pollfd w = {.fd = p[0], .events = POLLIN};
    if (pid < 0 || poll(&w, 1, 5000) != 1 || read(p[0], served, sizeof served) != sizeof served) {
        fprintf(stderr, "lifecycle_demo: worker %d did not start\n", n);
        stop_workers(SIGTERM);
        exit(1);
    }
    return p[0];
}

/* ---- the client --------------------------------------------------------------------- */

static int fetch(int i)
{
    struct sockaddr_storage *a = &target[i];
    int s = socket(a->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {2, 0};
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    socklen_t len = a->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    char buf[32] = "";
    int ok = connect(s, (struct sockaddr *)a, len) == 0 && send(s, "hello\n", 6, MSG_NOSIGNAL) == 6 &&
             recv(s, buf, sizeof buf - 1, 0) > 0 && strncmp(buf, "worker ", 7) == 0;
    close(s);
    return ok;
}

int main(int argc, char **argv)
{
    static const char *const defaults[] = {"127.0.0.1:0 deferred", "[::1]:0"};
    const char *const *specs = argc > 1 ? (const char *const *)argv + 1 : defaults;
    int nspecs = argc > 1 ? argc - 1 : 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGALRM, watchdog);
    signal(SIGPIPE, SIG_IGN);
    alarm(WATCHDOG_SECONDS);

    struct reuseport_probe_info pi;
    char notes[2048];
    if (reuseport_probe(&pi, sizeof pi, notes, sizeof notes) < 0)
        die();
    printf("reuseport %s lifecycle demo, pid %ld, uid %ld\n", reuseport_version(), (long)getpid(), (long)getuid());
    printf("probe   kernel %s | SO_REUSEPORT %s | tcp_migrate_req %d | bpf reuseport %s%s%s\n", pi.kernel_release,
           pi.so_reuseport ? "yes" : "no", pi.tcp_migrate_req, pi.bpf_reuseport ? "yes" : "no (",
           pi.bpf_reuseport ? "" : strerror(pi.bpf_errno), pi.bpf_reuseport ? "" : ")");
    for (char *note = strtok(notes, "\n"); note; note = strtok(NULL, "\n"))
        printf("        note: %s\n", note);
    reuseport_log_set_callback(on_log, NULL, REUSEPORT_LOG_DEBUG);

    struct reuseport_set *set = reuseport_set_new();
    if (!set)
        die();
    for (int i = 0; i < nspecs; i++)
        if (reuseport_set_add(set, specs[i]) < 0)
            die();
    nl = reuseport_set_get_count(set);
    if (nl > MAXL) {
        fprintf(stderr, "lifecycle_demo: %d listeners, this demo shows at most %d\n", nl, MAXL);
        return 1;
    }
    if (reuseport_master_open(set) < 0)
        die();
    for (int i = 0; i < nl; i++) {
        int fd = reuseport_listener_get_fd(set, (size_t)i);
        socklen_t len = sizeof target[i];
        master_inode[i] = proc_fd_inode(fd);
        getsockname(fd, (struct sockaddr *)&target[i], &len);
        /* A wildcard listener ("*:80", "[::]:80") is reached on loopback. */
        if (target[i].ss_family == AF_INET && ((struct sockaddr_in *)&target[i])->sin_addr.s_addr == htonl(INADDR_ANY))
            ((struct sockaddr_in *)&target[i])->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (target[i].ss_family == AF_INET6 && IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&target[i])->sin6_addr))
            ((struct sockaddr_in6 *)&target[i])->sin6_addr = in6addr_loopback;
    }
    char who[64];
    snprintf(who, sizeof who, "master %ld opened:", (long)getpid());
    show("step 1", who, 0);

    /* A real master releases right after the fork; the demo waits for worker 0 to be
     * ready so that the table shows the steps in order. */
    int rfd[NWORKERS];
    rfd[0] = spawn(0, set);
    snprintf(who, sizeof who, "worker 0 (%ld) adopted:", (long)worker_pid[0]);
    show("step 2", who, worker_pid[0]);
    if (reuseport_master_release(set) < 0)
        die();
    snprintf(who, sizeof who, "master %ld released:", (long)getpid());
    show("step 3", who, 0);
    for (int n = 1; n < NWORKERS; n++) {
        rfd[n] = spawn(n, set);
        snprintf(who, sizeof who, "worker %d (%ld) bound:", n, (long)worker_pid[n]);
        show(n == 1 ? "step 4" : "step 5", who, worker_pid[n]);
    }

    int failed = 0;
    for (int k = 0; k < CONNECTIONS * nl; k++)
        failed += !fetch(k % nl);
    printf("clients %d connections to each address, %d failed\n", CONNECTIONS, failed);
    stop_workers(SIGTERM);
    int bad = failed > 0;
    for (int n = 0; n < NWORKERS; n++) {
        int status = 0, served[MAXL] = {0};
        waitpid(worker_pid[n], &status, 0);
        int got = read(rfd[n], served, sizeof served) == sizeof served;
        printf("        worker %d (%ld) served", n, (long)worker_pid[n]);
        for (int i = 0; i < nl; i++) {
            char host[INET6_ADDRSTRLEN];
            int v6 = target[i].ss_family == AF_INET6;
            void *ip = v6 ? (void *)&((struct sockaddr_in6 *)&target[i])->sin6_addr : (void *)&((struct sockaddr_in *)&target[i])->sin_addr;
            unsigned port = ntohs(v6 ? ((struct sockaddr_in6 *)&target[i])->sin6_port : ((struct sockaddr_in *)&target[i])->sin_port);
            inet_ntop(target[i].ss_family, ip, host, sizeof host);
            printf("%s%3d on %s%s%s:%u", i ? "," : "", served[i], v6 ? "[" : "", host, v6 ? "]" : "", port);
        }
        int ok = got && WIFEXITED(status) && WEXITSTATUS(status) == 0;
        printf("%s\n", ok ? "" : "  (did not exit cleanly)");
        bad |= !ok;
        worker_pid[n] = 0;
    }
    reuseport_set_free(set);
    printf("done    all workers stopped (SIGTERM)%s\n", bad ? "; something went wrong above" : "");
    return bad;
}
