/*
 * Privileges: what a worker may do before and after it drops them. Runs as root in a
 * private network namespace (in-netns.sh), so it can bind port 80 and setuid.
 *
 * - a worker that binds before setuid() joins the group and serves after dropping root;
 * - a worker that binds after setuid() gets -EACCES on a privileged port, and -EADDRINUSE
 *   on an unprivileged port whose group root owns, each with a message naming the fix;
 * - the probe sees CAP_BPF as root and reports EPERM with the fix after setuid().
 */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <grp.h>

#include "reuseport.h"
#include "checks.h"

/* Runs fn in a child and returns its exit status (the child's checks decide it). */
static int in_child(void (*fn)(reuseport_set *), reuseport_set *set)
{
    pid_t pid = fork();
    if (pid == 0) {
        alarm(20);
        passed = failed = 0;
        fn(set);
        fprintf(stderr, "  child %d: %d passed, %d failed\n", getpid(), passed, failed);
        _exit(failed ? 1 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int pipe_fd[2];

/* Worker 0: adopts the master's socket and serves one connection as nobody. */
static void adopting_worker(reuseport_set *set)
{
    CHECK(reuseport_worker_adopt(set) == 0, "adopt as root");
    drop_privileges();
    char ok = 'y';
    CHECK(write(pipe_fd[1], &ok, 1) == 1, "ready");
    pause();
}

/* Worker bound before dropping privileges: must join the group and keep serving. */
static void binds_then_drops(reuseport_set *set)
{
    CHECK(reuseport_worker_bind(set) == 0, "bind as root before setuid");
    drop_privileges();
    int fd = reuseport_listener_get_fd(set, 0);
    CHECK(fd >= 0, "fd held after setuid: %d", fd);
    int v = 0;
    socklen_t len = sizeof v;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0 && v == 1, "still listening as nobody");
}

static void drops_then_binds_privileged(reuseport_set *set)
{
    drop_privileges();
    int rc = reuseport_worker_bind(set);
    CHECK(rc == -EACCES, "bind port 80 after setuid: rc %d", rc);
    CHECK(strstr(reuseport_last_error(), "127.0.0.1:80") != NULL, "names the address");
    CHECK(strstr(reuseport_last_error(), "CAP_NET_BIND_SERVICE") != NULL, "names the capability");
    CHECK(strstr(reuseport_last_error(), "before dropping privileges") != NULL, "names the fix");
    CHECK(reuseport_set_get_role(set) == REUSEPORT_ROLE_RELEASED, "role unchanged after failure");
}

static void drops_then_binds_root_group(reuseport_set *set)
{
    drop_privileges();
    int rc = reuseport_worker_bind(set);
    CHECK(rc == -EADDRINUSE, "join root's group as nobody: rc %d", rc);
    CHECK(strstr(reuseport_last_error(), "uid 0") != NULL, "names the owner");
    CHECK(strstr(reuseport_last_error(), "uid 65534") != NULL, "names this process's uid");
    CHECK(strstr(reuseport_last_error(), "before dropping privileges") != NULL, "names the fix");
}

static void probe_as_nobody(reuseport_set *set)
{
    (void)set;
    drop_privileges();
    reuseport_probe_info info;
    char notes[2048];
    CHECK(reuseport_probe(&info, sizeof info, notes, sizeof notes) > 0, "probe");
    CHECK(info.bpf_reuseport == 0 && info.bpf_errno == EPERM, "no bpf as nobody: %d %d", info.bpf_reuseport, info.bpf_errno);
    CHECK(strstr(notes, "CAP_BPF") != NULL, "notes name CAP_BPF: %s", notes);
    CHECK(info.so_reuseport == 1, "SO_REUSEPORT available");
}

int main(void)
{
    alarm(60);
    setvbuf(stdout, NULL, _IONBF, 0); /* children must not repeat buffered output */
    if (getuid() != 0) {
        printf("SKIPPED: test_privileges needs root\n");
        return 77;
    }

    reuseport_probe_info info;
    char notes[2048];
    CHECK(reuseport_probe(&info, sizeof info, notes, sizeof notes) > 0, "probe as root");
    CHECK(info.bpf_reuseport == 1, "root loads the reuseport program: errno %d, %s", info.bpf_errno, notes);
    CHECK(info.tcp_migrate_req == 0, "fresh namespace starts with tcp_migrate_req = 0: %d", info.tcp_migrate_req);
    CHECK(in_child(probe_as_nobody, NULL) == 0, "probe as nobody");

    /* A privileged port, opened by a root master. */
    reuseport_set *set = reuseport_set_new();
    CHECK(reuseport_set_add(set, "127.0.0.1:80") == 1, "add");
    CHECK(reuseport_master_open(set) == 0, "master opens port 80 as root");
    CHECK(pipe(pipe_fd) == 0, "pipe");
    pid_t w0 = fork();
    if (w0 == 0) {
        alarm(20);
        adopting_worker(set);
        _exit(failed ? 1 : 0);
    }
    char ready = 0;
    CHECK(read(pipe_fd[0], &ready, 1) == 1 && ready == 'y', "worker 0 adopted");
    CHECK(reuseport_master_release(set) == 0, "release");
    CHECK(in_child(binds_then_drops, set) == 0, "worker binds before setuid");
    CHECK(in_child(drops_then_binds_privileged, set) == 0, "worker binds after setuid (port 80)");

    /* The group still serves through worker 0, now running as nobody. */
    int c = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(80) };
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(c, (struct sockaddr *)&sin, sizeof sin) == 0, "connect to port 80: %s", strerror(errno));
    close(c);
    kill(w0, SIGTERM);
    waitpid(w0, NULL, 0);
    reuseport_set_free(set);

    /* An unprivileged port whose group root owns: `owner` keeps the group alive, as a
     * first worker would, while a worker with its own (released-like) set tries to join. */
    reuseport_set *owner = reuseport_set_new();
    CHECK(reuseport_set_add(owner, "127.0.0.1:0") == 1, "add port 0");
    CHECK(reuseport_master_open(owner) == 0, "open");
    char spec[128];
    CHECK(reuseport_listener_get_spec(owner, 0, spec, sizeof spec) > 0, "spec text");
    set = reuseport_set_new();
    CHECK(reuseport_set_add(set, spec) == 1, "add %s", spec);
    CHECK(in_child(drops_then_binds_root_group, set) == 0, "worker binds root's group after setuid");
    reuseport_set_free(set);
    reuseport_set_free(owner);

    /* A master that is not root cannot open a privileged port. */
    set = reuseport_set_new();
    CHECK(reuseport_set_add(set, "127.0.0.1:81") == 1, "add 81");
    pid_t p = fork();
    if (p == 0) {
        drop_privileges();
        int rc = reuseport_master_open(set);
        _exit(rc == -EACCES && strstr(reuseport_last_error(), "CAP_NET_BIND_SERVICE") ? 0 : 1);
    }
    int status = 0;
    waitpid(p, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "unprivileged master_open of port 81 gives -EACCES");
    reuseport_set_free(set);

    printf("test_privileges: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
