/*
 * Security properties, as tests (in a private network namespace, as root):
 * - another user cannot join or take over a group: a socket of uid nobody binding a root
 *   group's port gets EADDRINUSE (the kernel's reuseport uid check), through the library
 *   too, with a message saying why;
 * - no library fd survives an exec: every fd a master holding a steered set has (sockets,
 *   the program, the maps, the slot memory) is close-on-exec, and a child that execs
 *   holds none of them;
 * - the slot memory and maps are reachable only by the server's processes: another
 *   process of the workers' own uid (nobody) can neither open a worker's or the master's
 *   fds through /proc, nor take them with pidfd_getfd(2), nor get the maps by id.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <dirent.h>

#include "checks.h"

/* Runs fn in a child as nobody; returns its exit status (0: what it checked held). */
static int as_nobody(int (*fn)(void *), void *arg)
{
    pid_t p = fork();
    if (p == 0) {
        drop_privileges();
        _exit(fn(arg));
    }
    int status = -1;
    waitpid(p, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

static int bind_as_other_user(void *arg)
{
    uint16_t port = *(uint16_t *)arg;
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = bind(s, (struct sockaddr *)&sa, sizeof sa);
    return rc < 0 && errno == EADDRINUSE ? 0 : 1;
}

static int library_bind_as_other_user(void *arg)
{
    reuseport_set *set = arg;  /* this child's copy, released by the master */
    int rc = reuseport_worker_bind(set);
    if (rc != -EADDRINUSE)
        return 1;
    return strstr(reuseport_last_error(), "uid") ? 0 : 2;
}

struct target {
    pid_t pid;
    int fds[64];
    int n;
};

/* Another process of uid nobody tries every fd of the target: /proc/PID/fd/N and
 * pidfd_getfd. Returns how many it got. */
static int steal(void *arg)
{
    struct target *t = arg;
    int got = 0;
    int pidfd = (int)syscall(SYS_pidfd_open, t->pid, 0);
    for (int i = 0; i < t->n; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)t->pid, t->fds[i]);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            got++;
            close(fd);
        }
        if (pidfd >= 0) {
            fd = (int)syscall(SYS_pidfd_getfd, pidfd, t->fds[i], 0);
            if (fd >= 0) {
                got++;
                close(fd);
            }
        }
    }
    return got > 100 ? 100 : got;
}

/* BPF objects by id (how a process without the fds would reach them): map ids 1..4096. */
static int maps_by_id(void *arg)
{
    (void)arg;
    for (uint32_t id = 1; id < 4096; id++) {
        union bpf_attr a;
        memset(&a, 0, sizeof a);
        a.map_id = id;
        int fd = (int)syscall(SYS_bpf, BPF_MAP_GET_FD_BY_ID, &a, sizeof a);
        if (fd >= 0) {
            close(fd);
            return 1;
        }
    }
    return 0;
}

/* The fds of this process other than 0-2 (and the directory being read). */
static int own_fds(int *out, int cap)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] != '.' && fd > 2 && fd != dirfd(d) && n < cap)
            out[n++] = fd;
    }
    if (d)
        closedir(d);
    return n;
}

int main(void)
{
    if (geteuid() != 0) {
        fprintf(stderr, "SKIP: needs root (in-netns.sh runs it in a namespace)\n");
        return 77;
    }
    /* What this process inherited (from ctest, a shell) is not the library's. */
    int inherited[64];
    int n_inherited = own_fds(inherited, 64);
    reuseport_set *set = reuseport_set_new();
    CHECK(reuseport_set_add(set, "127.0.0.1:0") == 1, "add");
    CHECK(reuseport_set_set_strategy(set, REUSEPORT_STRATEGY_BPF) == 0, "strategy");
    CHECK(reuseport_master_open(set) == 0, "open");
    CHECK(reuseport_listener_is_steered(set, 0) == 1, "steered: the set holds a program, maps and slot memory");
    uint16_t port = port_of(set);

    /* 1. Another user cannot join the group. */
    CHECK(as_nobody(bind_as_other_user, &port) == 0, "a socket of uid nobody gets EADDRINUSE on root's group");

    /* 2. Close-on-exec: every fd the master holds now is the library's, and each has
     *    FD_CLOEXEC; a child that execs holds none of them. */
    struct target master = { .pid = getpid() };
    int all[64];
    int n_all = own_fds(all, 64);
    for (int i = 0; i < n_all; i++) {
        int old = 0;
        for (int k = 0; k < n_inherited; k++)
            old |= inherited[k] == all[i];
        if (!old)
            master.fds[master.n++] = all[i];
    }
    CHECK(master.n >= 4, "the master holds the socket, the program and the maps (%d fds)", master.n);
    int without = 0;
    for (int i = 0; i < master.n; i++)
        if (!(fcntl(master.fds[i], F_GETFD) & FD_CLOEXEC)) {
            char path[64], target[256] = "";
            snprintf(path, sizeof path, "/proc/self/fd/%d", master.fds[i]);
            readlink(path, target, sizeof target - 1);
            fprintf(stderr, "fd %d (%s) lacks FD_CLOEXEC\n", master.fds[i], target);
            without++;
        }
    CHECK(without == 0, "%d of the library's %d fds lack FD_CLOEXEC", without, master.n);
    int pipefd[2];
    CHECK(pipe2(pipefd, O_CLOEXEC) == 0, "pipe");
    pid_t p = fork();
    if (p == 0) {
        dup2(pipefd[1], 1);
        execl("/bin/ls", "ls", "-l", "/proc/self/fd/", (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    char listing[8192] = { 0 };
    size_t got = 0;
    for (ssize_t r; (r = read(pipefd[0], listing + got, sizeof listing - 1 - got)) > 0;)
        got += (size_t)r;
    close(pipefd[0]);
    waitpid(p, NULL, 0);
    CHECK(got > 0 && !strstr(listing, "socket:") && !strstr(listing, "bpf") && !strstr(listing, "anon_inode"),
          "an exec'ed child holds no socket and no bpf object:\n%s", listing);

    /* 3. Reachable only by the server's processes. A worker (nobody, after the bind). */
    int ready[2];
    CHECK(pipe(ready) == 0, "pipe");
    pid_t w = fork();
    if (w == 0) {
        close(ready[0]);
        if (reuseport_worker_adopt(set) < 0)
            _exit(2);
        drop_privileges();
        if (write(ready[1], "1", 1) != 1)
            _exit(3);
        pause();
        _exit(0);
    }
    close(ready[1]);
    char c;
    CHECK(read(ready[0], &c, 1) == 1, "the worker adopted and dropped privileges");
    close(ready[0]);
    CHECK(reuseport_master_release(set) == 0, "release");
    struct target worker = { .pid = w };
    /* The worker holds what the master held (inherited); try every fd number up to 64. */
    for (int fd = 3; fd < 64; fd++)
        worker.fds[worker.n++] = fd;
    CHECK(as_nobody(steal, &worker) == 0, "another nobody process takes none of the worker's fds");
    CHECK(as_nobody(steal, &master) == 0, "a nobody process takes none of the master's fds");
    CHECK(as_nobody(maps_by_id, NULL) == 0, "a nobody process gets no BPF map by id");

    /* A nobody process with a copy of the released set cannot join root's group either. */
    CHECK(as_nobody(library_bind_as_other_user, set) == 0,
          "reuseport_worker_bind as nobody: -EADDRINUSE, the message naming the uids");

    kill(w, SIGTERM);
    waitpid(w, NULL, 0);
    reuseport_set_free(set);
    printf("test_security: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
