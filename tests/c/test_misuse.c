/*
 * test_misuse.c: the C API under misuse.
 *
 * Every wrong call must return the exact negative errno the header documents and leave a
 * message in reuseport_last_error() that starts with the function's name and names the
 * problem; no wrong call may leak a socket or memory (CI runs this under valgrind with
 * --leak-check=full) or change the set it was given.
 *
 * Loopback only, no root, bounded by alarm(30). Prints "test_misuse: N passed, 0 failed"
 * and exits 0, or names every failed check and exits 1.
 */

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "reuseport.h"

static int passed;
static int failed;

static void report_failure(const char *file, int line, const char *what)
{
    failed++;
    fprintf(stderr, "FAIL %s:%d: %s\n    last_error: \"%s\"\n", file, line, what, reuseport_last_error());
}

/* For a check made in a child: its own diagnostics are on stderr above, and this
 * process's last error has nothing to do with it. */
static void report_child_failure(const char *file, int line, const char *what)
{
    failed++;
    fprintf(stderr, "FAIL %s:%d: %s (the child's diagnostics, if any, are above)\n", file, line, what);
}

/* One failed CHECK: file:line, the condition, the "expected ... got ..." detail and the
 * library's last error. */
__attribute__((format(printf, 4, 5))) static void check_failed(const char *file, int line, const char *cond,
                                                               const char *fmt, ...)
{
    va_list ap;
    failed++;
    fprintf(stderr, "FAIL %s:%d: %s: ", file, line, cond);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n    last_error: \"%s\"\n", reuseport_last_error());
}

/* CHECK(cond, fmt, ...): one check, counted; on failure says why. */
#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        if (cond)                                                                            \
            passed++;                                                                        \
        else                                                                                 \
            check_failed(__FILE__, __LINE__, #cond, __VA_ARGS__);                            \
    } while (0)

/* Checks the message a failing call left: non-empty, prefixed with "FUNCTION:" (so it is
 * this call's message, not an older one) and containing `word`. */
static void check_message(const char *file, int line, const char *expr, const char *word)
{
    const char *msg = reuseport_last_error();
    char fn[128];
    size_t n = strcspn(expr, "(");
    if (n >= sizeof fn)
        n = sizeof fn - 1;
    memcpy(fn, expr, n);
    fn[n] = '\0';
    size_t fl = strlen(fn);
    int ok = msg != NULL && msg[0] != '\0' && strncmp(msg, fn, fl) == 0 && msg[fl] == ':' &&
             strstr(msg, word) != NULL;
    if (ok) {
        passed++;
    } else {
        char what[1024];
        snprintf(what, sizeof what, "%s: expected a message from %s() containing \"%s\"", expr, fn, word);
        report_failure(file, line, what);
    }
}

/* EXPECT_ERR(call, -ERRNO, "word"): two checks, the exact return value and the message. */
#define EXPECT_ERR(call, want, word)                                                         \
    do {                                                                                     \
        int got_ = (call);                                                                   \
        if (got_ == (want))                                                                  \
            passed++;                                                                        \
        else                                                                                 \
            check_failed(__FILE__, __LINE__, #call, "expected %d (%s), got %d (%s)", (want), \
                         strerror(-(want)), got_, got_ < 0 ? strerror(-got_) : "not an error"); \
        check_message(__FILE__, __LINE__, #call, (word));                                    \
    } while (0)

/* EXPECT_OK(call, value): the call succeeds with exactly this value. */
#define EXPECT_OK(call, want)                                                                \
    do {                                                                                     \
        int got_ = (call);                                                                   \
        if (got_ == (want))                                                                  \
            passed++;                                                                        \
        else                                                                                 \
            check_failed(__FILE__, __LINE__, #call, "expected %d, got %d (%s)", (want), got_, \
                         got_ < 0 ? strerror(-got_) : "no error");                            \
    } while (0)

/* Open file descriptors of this process, not counting the one used to count them. */
static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL) {
        perror("opendir /proc/self/fd");
        exit(2);
    }
    int self = dirfd(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (atoi(e->d_name) == self)
            continue;
        n++;
    }
    closedir(d);
    return n;
}

static reuseport_set *new_set(void)
{
    reuseport_set *s = reuseport_set_new();
    if (s == NULL) {
        fprintf(stderr, "reuseport_set_new() returned NULL\n");
        exit(2);
    }
    return s;
}

/* A set that holds nothing but its listen sockets: with the default strategy a root
 * process also holds the migration program's fd, which the exact fd counts below would
 * have to allow for. (The final count still checks that program fds are freed.) */
static reuseport_set *new_sockets_only_set(void)
{
    reuseport_set *s = new_set();
    if (reuseport_set_set_strategy(s, REUSEPORT_STRATEGY_NONE) != 0) {
        fprintf(stderr, "reuseport_set_set_strategy(NONE) failed: %s\n", reuseport_last_error());
        exit(2);
    }
    return s;
}

/* ---- log callback ---------------------------------------------------------------- */

struct log_capture {
    int calls;
    int errors;
    int last_level;
    char last[1024];
};

static void capture_log(int level, const char *message, void *user)
{
    struct log_capture *c = user;
    c->calls++;
    if (level == REUSEPORT_LOG_ERROR)
        c->errors++;
    c->last_level = level;
    snprintf(c->last, sizeof c->last, "%s", message ? message : "(null)");
}

/* ---- sections ------------------------------------------------------------------------ */

static void test_null_handles(void)
{
    char buf[64];
    const char *before;
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    EXPECT_ERR(reuseport_set_add(NULL, "127.0.0.1:0"), -EINVAL, "NULL");
    EXPECT_ERR(reuseport_set_add_addr(NULL, (const struct sockaddr *)&sin, sizeof sin, NULL), -EINVAL, "NULL");
    EXPECT_ERR(reuseport_master_open(NULL), -EINVAL, "NULL");
    EXPECT_ERR(reuseport_master_release(NULL), -EINVAL, "NULL");
    EXPECT_ERR(reuseport_worker_adopt(NULL), -EINVAL, "NULL");
    EXPECT_ERR(reuseport_worker_bind(NULL), -EINVAL, "NULL");
    EXPECT_ERR(reuseport_single_open(NULL), -EINVAL, "NULL");
    EXPECT_ERR(reuseport_set_get_count(NULL), -EINVAL, "NULL");
    EXPECT_ERR(reuseport_listener_get_fd(NULL, 0), -EINVAL, "NULL");
    EXPECT_ERR(reuseport_listener_get_spec(NULL, 0, buf, sizeof buf), -EINVAL, "NULL");
    EXPECT_ERR(reuseport_set_get_role(NULL), -EINVAL, "NULL");
    EXPECT_ERR(reuseport_probe(NULL, sizeof(struct reuseport_probe_info), NULL, 0), -EINVAL, "NULL");

    /* Freeing NULL is a no-op: no crash, and the last error is untouched. */
    before = reuseport_last_error();
    char saved[512];
    snprintf(saved, sizeof saved, "%s", before);
    reuseport_set_free(NULL);
    CHECK(strcmp(reuseport_last_error(), saved) == 0, "reuseport_set_free(NULL) changed last_error");

    /* listen_options_init(NULL) is refused (and does not crash). */
    EXPECT_ERR(reuseport_listen_options_init(NULL, sizeof(struct reuseport_listen_options)), -EINVAL, "NULL");

    /* A NULL spec string in a real set. */
    reuseport_set *s = new_set();
    EXPECT_ERR(reuseport_set_add(s, NULL), -EINVAL, "NULL");
    EXPECT_ERR(reuseport_set_add_addr(s, NULL, sizeof sin, NULL), -EINVAL, "NULL");
    EXPECT_OK(reuseport_set_get_count(s), 0);
    reuseport_set_free(s);
}

static void test_bad_specs(void)
{
    reuseport_set *s = new_set();
    EXPECT_ERR(reuseport_set_add(s, "127.0.0.1:8080 frobnicate=1"), -EINVAL, "frobnicate");
    EXPECT_ERR(reuseport_set_add(s, "127.0.0.1:8080 frobnicate=1"), -EINVAL, "unknown option");
    EXPECT_ERR(reuseport_set_add(s, "127.0.0.1:99999"), -EINVAL, "99999");
    EXPECT_ERR(reuseport_set_add(s, "[::1:80"), -EINVAL, "[::1:80");
    EXPECT_ERR(reuseport_set_add(s, "[::1:80"), -EINVAL, "]");
    EXPECT_ERR(reuseport_set_add(s, "300.1.2.3:80"), -EINVAL, "300.1.2.3");
    EXPECT_ERR(reuseport_set_add(s, "no-such-host.invalid:80"), -EINVAL, "no-such-host.invalid");
    EXPECT_ERR(reuseport_set_add(s, "no-such-host.invalid:80"), -EINVAL, "resolve");
    EXPECT_ERR(reuseport_set_add(s, ""), -EINVAL, "empty");
    EXPECT_ERR(reuseport_set_add(s, "127.0.0.1:8080 backlog=0"), -EINVAL, "backlog=0");
    EXPECT_ERR(reuseport_set_add(s, "127.0.0.1:8080 ipv6only=on"), -EINVAL, "ipv6only");
    /* None of them added anything. */
    EXPECT_OK(reuseport_set_get_count(s), 0);
    CHECK(reuseport_set_get_role(s) == REUSEPORT_ROLE_EMPTY, "role %d", reuseport_set_get_role(s));

    /* A duplicate address is refused, the first one kept. */
    EXPECT_OK(reuseport_set_add(s, "127.0.0.1:8080"), 1);
    EXPECT_ERR(reuseport_set_add(s, "127.0.0.1:8080"), -EINVAL, "already in the set");
    EXPECT_OK(reuseport_set_get_count(s), 1);
    reuseport_set_free(s);
}

static void test_add_addr(void)
{
    reuseport_set *s = new_set();
    struct reuseport_listen_options o;
    struct sockaddr_in sin;
    struct sockaddr_un sun;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons(8081);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;

    /* The defaults, as documented. */
    memset(&o, 0x55, sizeof o);
    reuseport_listen_options_init(&o, sizeof o);
    CHECK(o.backlog == 511, "backlog %d", o.backlog);
    CHECK(o.keepalive == -1 && o.ipv6only == -1, "keepalive %d ipv6only %d", o.keepalive, o.ipv6only);
    CHECK(o.rcvbuf == 0 && o.sndbuf == 0 && o.deferred == 0 && o.fastopen == 0, "non-zero default");

    EXPECT_ERR(reuseport_set_add_addr(s, (const struct sockaddr *)&sun, sizeof sun, NULL), -EINVAL, "AF_UNIX");
    /* A buffer shorter than sa_family itself must not be read (valgrind watches). */
    unsigned char *tiny = malloc(1);
    tiny[0] = 0;
    EXPECT_ERR(reuseport_set_add_addr(s, (const struct sockaddr *)tiny, 1, NULL), -EINVAL, "too short for any address");
    free(tiny);
    EXPECT_ERR(reuseport_set_add_addr(s, (const struct sockaddr *)&sin, sizeof sin - 1, NULL), -EINVAL, "too short");
    EXPECT_ERR(reuseport_set_add_addr(s, (const struct sockaddr *)&sin, 0, NULL), -EINVAL, "too short");

    o.keepalive = 0;
    o.keepidle = 5;
    EXPECT_ERR(reuseport_set_add_addr(s, (const struct sockaddr *)&sin, sizeof sin, &o), -EINVAL, "keepalive is 0");
    reuseport_listen_options_init(&o, sizeof o);
    o.keepalive = 7;
    EXPECT_ERR(reuseport_set_add_addr(s, (const struct sockaddr *)&sin, sizeof sin, &o), -EINVAL, "keepalive = 7");
    reuseport_listen_options_init(&o, sizeof o);
    o.ipv6only = 1;
    EXPECT_ERR(reuseport_set_add_addr(s, (const struct sockaddr *)&sin, sizeof sin, &o), -EINVAL, "ipv6only");
    reuseport_listen_options_init(&o, sizeof o);
    o.rcvbuf = -5;
    EXPECT_ERR(reuseport_set_add_addr(s, (const struct sockaddr *)&sin, sizeof sin, &o), -EINVAL, "rcvbuf");
    reuseport_listen_options_init(&o, sizeof o);
    o.backlog = 0;
    EXPECT_ERR(reuseport_set_add_addr(s, (const struct sockaddr *)&sin, sizeof sin, &o), -EINVAL, "backlog");
    reuseport_listen_options_init(&o, sizeof o);
    o.keepidle = 10; /* keepalive left at -1 */
    EXPECT_ERR(reuseport_set_add_addr(s, (const struct sockaddr *)&sin, sizeof sin, &o), -EINVAL, "keepalive");
    EXPECT_OK(reuseport_set_get_count(s), 0);

    /* And a good one goes in, shown canonically. */
    reuseport_listen_options_init(&o, sizeof o);
    o.backlog = 1024;
    EXPECT_OK(reuseport_set_add_addr(s, (const struct sockaddr *)&sin, sizeof sin, &o), 1);
    char buf[64];
    EXPECT_OK(reuseport_listener_get_spec(s, 0, buf, sizeof buf), (int)strlen("127.0.0.1:8081 backlog=1024"));
    CHECK(strcmp(buf, "127.0.0.1:8081 backlog=1024") == 0, "spec \"%s\"", buf);
    reuseport_set_free(s);
}

static void test_spec_and_fd_accessors(void)
{
    reuseport_set *s = new_set();
    const char *full = "127.0.0.1:8082 backlog=1024 deferred";
    int full_len = (int)strlen(full);
    char buf[64]; /* larger than the full text: the "exactly full_len" case writes that much */

    EXPECT_OK(reuseport_set_add(s, "127.0.0.1:8082 deferred backlog=1024"), 1);
    EXPECT_ERR(reuseport_listener_get_spec(s, 0, NULL, 5), -EINVAL, "NULL");
    EXPECT_ERR(reuseport_listener_get_spec(s, 1, buf, sizeof buf), -ENOENT, "out of range");
    EXPECT_ERR(reuseport_listener_get_spec(s, (size_t)-1, buf, sizeof buf), -ENOENT, "out of range");
    EXPECT_ERR(reuseport_listener_get_fd(s, 1), -ENOENT, "out of range");
    EXPECT_ERR(reuseport_listener_get_fd(s, 0), -EBADF, "no socket");

    /* NULL with len 0: just the length. */
    EXPECT_OK(reuseport_listener_get_spec(s, 0, NULL, 0), full_len);
    /* len 0 with a buffer: nothing written. */
    memset(buf, 'X', sizeof buf);
    EXPECT_OK(reuseport_listener_get_spec(s, 0, buf, 0), full_len);
    CHECK(buf[0] == 'X', "len 0 wrote buf[0] = 0x%02x", (unsigned char)buf[0]);
    /* A tiny buffer: cut, NUL-terminated, nothing past len touched, full length returned. */
    memset(buf, 'X', sizeof buf);
    EXPECT_OK(reuseport_listener_get_spec(s, 0, buf, 5), full_len);
    CHECK(memcmp(buf, full, 4) == 0 && buf[4] == '\0', "cut text \"%.5s\"", buf);
    CHECK(buf[5] == 'X' && buf[31] == 'X', "wrote past len: buf[5] = 0x%02x", (unsigned char)buf[5]);
    memset(buf, 'X', sizeof buf);
    EXPECT_OK(reuseport_listener_get_spec(s, 0, buf, 1), full_len);
    CHECK(buf[0] == '\0' && buf[1] == 'X', "len 1: buf[0] = 0x%02x buf[1] = 0x%02x", (unsigned char)buf[0],
          (unsigned char)buf[1]);
    /* Exactly full_len bytes: the last character is cut for the NUL. */
    memset(buf, 'X', sizeof buf);
    EXPECT_OK(reuseport_listener_get_spec(s, 0, buf, (size_t)full_len), full_len);
    CHECK(strlen(buf) == (size_t)full_len - 1 && strncmp(buf, full, (size_t)full_len - 1) == 0, "got \"%s\"", buf);
    char big[64];
    EXPECT_OK(reuseport_listener_get_spec(s, 0, big, sizeof big), full_len);
    CHECK(strcmp(big, full) == 0, "expected \"%s\", got \"%s\"", full, big);

    CHECK(strcmp(reuseport_role_name(REUSEPORT_ROLE_MASTER_OPEN), "master-open") == 0, "%s",
          reuseport_role_name(REUSEPORT_ROLE_MASTER_OPEN));
    CHECK(strcmp(reuseport_role_name(42), "invalid") == 0, "%s", reuseport_role_name(42));
    CHECK(strcmp(reuseport_role_name(-1), "invalid") == 0, "%s", reuseport_role_name(-1));
    reuseport_set_free(s);
}

static void test_lifecycle_order(void)
{
    int fds0 = count_fds();

    /* No specs at all. */
    reuseport_set *e = new_set();
    EXPECT_ERR(reuseport_master_open(e), -EINVAL, "no listen specs");
    EXPECT_ERR(reuseport_worker_bind(e), -EINVAL, "no listen specs");
    EXPECT_ERR(reuseport_single_open(e), -EINVAL, "no listen specs");
    EXPECT_ERR(reuseport_master_release(e), -EINVAL, "no sockets");
    EXPECT_ERR(reuseport_worker_adopt(e), -EINVAL, "no inherited sockets");
    CHECK(reuseport_set_get_role(e) == REUSEPORT_ROLE_EMPTY, "role %d", reuseport_set_get_role(e));
    reuseport_set_free(e);

    reuseport_set *s = new_sockets_only_set();
    EXPECT_OK(reuseport_set_add(s, "127.0.0.1:0"), 1);

    /* Before any open. */
    EXPECT_ERR(reuseport_master_release(s), -EINVAL, "master_open");
    EXPECT_ERR(reuseport_worker_adopt(s), -EINVAL, "no inherited sockets");
    EXPECT_ERR(reuseport_worker_bind(s), -EINVAL, "port 0");
    CHECK(reuseport_set_get_role(s) == REUSEPORT_ROLE_EMPTY, "role %d", reuseport_set_get_role(s));
    CHECK(count_fds() == fds0, "fds %d, expected %d", count_fds(), fds0);

    /* Open, then everything that needs a set without sockets. */
    EXPECT_OK(reuseport_master_open(s), 0);
    CHECK(reuseport_set_get_role(s) == REUSEPORT_ROLE_MASTER_OPEN, "role %d", reuseport_set_get_role(s));
    int fd = reuseport_listener_get_fd(s, 0);
    CHECK(fd >= 0, "set_fd %d", fd);
    CHECK(count_fds() == fds0 + 1, "fds %d, expected %d", count_fds(), fds0 + 1);
    char spec[64];
    reuseport_listener_get_spec(s, 0, spec, sizeof spec);
    CHECK(strncmp(spec, "127.0.0.1:", 10) == 0 && strcmp(spec, "127.0.0.1:0") != 0, "spec after open \"%s\"", spec);

    EXPECT_ERR(reuseport_master_open(s), -EALREADY, "already holds sockets");
    EXPECT_ERR(reuseport_single_open(s), -EALREADY, "already holds sockets");
    EXPECT_ERR(reuseport_worker_bind(s), -EALREADY, "already holds sockets");
    EXPECT_ERR(reuseport_set_add(s, "127.0.0.1:0"), -EALREADY, "already holds sockets");
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_ERR(reuseport_set_add_addr(s, (const struct sockaddr *)&sin, sizeof sin, NULL), -EALREADY,
               "already holds sockets");
    /* Adopting in the process that opened: the caller forgot to fork. */
    EXPECT_ERR(reuseport_worker_adopt(s), -EINVAL, "master");
    /* None of that changed the set. */
    CHECK(reuseport_set_get_role(s) == REUSEPORT_ROLE_MASTER_OPEN, "role %d", reuseport_set_get_role(s));
    CHECK(reuseport_listener_get_fd(s, 0) == fd, "fd %d, expected %d", reuseport_listener_get_fd(s, 0), fd);
    EXPECT_OK(reuseport_set_get_count(s), 1);
    CHECK(count_fds() == fds0 + 1, "fds %d, expected %d", count_fds(), fds0 + 1);

    /* Release, then twice. */
    EXPECT_OK(reuseport_master_release(s), 0);
    CHECK(reuseport_set_get_role(s) == REUSEPORT_ROLE_RELEASED, "role %d", reuseport_set_get_role(s));
    CHECK(count_fds() == fds0, "fds %d after release, expected %d", count_fds(), fds0);
    EXPECT_ERR(reuseport_master_release(s), -EALREADY, "twice");
    EXPECT_ERR(reuseport_listener_get_fd(s, 0), -EBADF, "no socket");
    EXPECT_ERR(reuseport_worker_adopt(s), -EINVAL, "no inherited sockets");
    /* The chosen port survives the release. */
    char spec2[64];
    reuseport_listener_get_spec(s, 0, spec2, sizeof spec2);
    CHECK(strcmp(spec, spec2) == 0, "spec \"%s\" became \"%s\"", spec, spec2);
    reuseport_set_free(s);
    CHECK(count_fds() == fds0, "fds %d, expected %d", count_fds(), fds0);
}

/* Runs `body` in a child and checks that it exits 0. Under valgrind a child with a memory
 * error exits 99, which fails here too. */
static void run_child(const char *file, int line, const char *name, int (*body)(reuseport_set *), reuseport_set *s)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        alarm(10);
        exit(body(s));
    }
    int status = 0;
    pid_t w;
    do {
        w = waitpid(pid, &status, 0);
    } while (w < 0 && errno == EINTR);
    int ok = w == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (ok) {
        passed++;
    } else {
        char what[256];
        snprintf(what, sizeof what, "child \"%s\": expected exit 0, got %s %d", name,
                 WIFEXITED(status) ? "exit" : "signal", WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        report_child_failure(file, line, what);
    }
}

/* The first worker, normally: adopt works (the control for the next child). */
static int child_adopt_ok(reuseport_set *s)
{
    int rc = reuseport_worker_adopt(s);
    int role = reuseport_set_get_role(s);
    reuseport_set_free(s);
    if (rc != 0) {
        fprintf(stderr, "child_adopt_ok: adopt returned %d: %s\n", rc, reuseport_last_error());
        return 10;
    }
    if (role != REUSEPORT_ROLE_ADOPTED) {
        fprintf(stderr, "child_adopt_ok: role %d after adopt\n", role);
        return 11;
    }
    return 0;
}

/* A first worker that closed an inherited fd before adopting, and whose fd number was
 * then reused for another file: adopt fails, the set lets go of the inherited sockets
 * without touching the reused number, and the worker can fall back to binding its own. */
static int child_adopt_closed(reuseport_set *s)
{
    int fd = reuseport_listener_get_fd(s, 0);
    if (fd < 0) {
        fprintf(stderr, "child_adopt_closed: no fd: %d\n", fd);
        return 20;
    }
    close(fd);
    int reused = open("/dev/null", O_RDONLY | O_CLOEXEC);  /* lowest free number: fd */
    if (reused != fd) {
        fprintf(stderr, "child_adopt_closed: /dev/null got fd %d, expected %d\n", reused, fd);
        return 24;
    }
    int rc = reuseport_worker_adopt(s);
    const char *msg = reuseport_last_error();
    int code = 0;
    if (rc != -EBADF) {
        fprintf(stderr, "child_adopt_closed: adopt returned %d, expected %d: %s\n", rc, -EBADF, msg);
        code = 21;
    } else if (strncmp(msg, "reuseport_worker_adopt:", 23) != 0 || strstr(msg, "closed") == NULL) {
        fprintf(stderr, "child_adopt_closed: message \"%s\" does not say the fd was closed\n", msg);
        code = 22;
    } else if (reuseport_set_get_role(s) != REUSEPORT_ROLE_RELEASED) {
        fprintf(stderr, "child_adopt_closed: role %d after a failed adopt, expected released\n", reuseport_set_get_role(s));
        code = 23;
    } else if (fcntl(reused, F_GETFD) < 0) {
        fprintf(stderr, "child_adopt_closed: the library closed fd %d, which is no longer its socket\n", reused);
        code = 25;
    } else if ((rc = reuseport_worker_bind(s)) != 0) {
        fprintf(stderr, "child_adopt_closed: falling back to worker_bind failed: %d %s\n", rc, reuseport_last_error());
        code = 26;
    }
    reuseport_set_free(s);
    if (code == 0 && fcntl(reused, F_GETFD) < 0) {
        fprintf(stderr, "child_adopt_closed: reuseport_set_free closed fd %d, which is not its socket\n", reused);
        code = 27;
    }
    close(reused);
    fflush(stderr);
    _exit(code);
}

static void test_adopt_after_fork(void)
{
    int fds0 = count_fds();
    reuseport_set *s = new_sockets_only_set();
    EXPECT_OK(reuseport_set_add(s, "127.0.0.1:0"), 1);
    EXPECT_OK(reuseport_set_add(s, "127.0.0.1:0 backlog=16"), 1);
    EXPECT_OK(reuseport_master_open(s), 0);
    run_child(__FILE__, __LINE__, "adopt", child_adopt_ok, s);
    run_child(__FILE__, __LINE__, "adopt after close", child_adopt_closed, s);
    /* The children's closes did not touch the master's copies. */
    CHECK(reuseport_set_get_role(s) == REUSEPORT_ROLE_MASTER_OPEN, "role %d", reuseport_set_get_role(s));
    CHECK(count_fds() == fds0 + 2, "fds %d, expected %d", count_fds(), fds0 + 2);
    EXPECT_OK(reuseport_master_release(s), 0);
    reuseport_set_free(s);
    CHECK(count_fds() == fds0, "fds %d, expected %d", count_fds(), fds0);
}

static void test_all_or_nothing(void)
{
    /* A plain listener, without SO_REUSEPORT, on a port the kernel chooses. */
    int blocker = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (blocker < 0) {
        perror("socket");
        exit(2);
    }
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(blocker, (struct sockaddr *)&sin, sizeof sin) != 0 || listen(blocker, 1) != 0 ||
        getsockname(blocker, (struct sockaddr *)&sin, &len) != 0) {
        perror("blocker");
        exit(2);
    }
    unsigned port = ntohs(sin.sin_port);
    char spec[64], portstr[16];
    snprintf(spec, sizeof spec, "127.0.0.1:%u", port);
    snprintf(portstr, sizeof portstr, "%u", port);

    reuseport_set *s = new_sockets_only_set();
    EXPECT_OK(reuseport_set_add(s, "127.0.0.1:0"), 1);
    EXPECT_OK(reuseport_set_add(s, spec), 1);

    int before = count_fds();
    EXPECT_ERR(reuseport_master_open(s), -EADDRINUSE, "without SO_REUSEPORT");
    CHECK(strstr(reuseport_last_error(), spec) != NULL, "message does not name %s", spec);
    CHECK(strstr(reuseport_last_error(), "bind") != NULL, "message does not name the step");
    int after = count_fds();
    CHECK(after == before, "fds %d after the failed open, expected %d (first socket not closed)", after, before);
    CHECK(reuseport_set_get_role(s) == REUSEPORT_ROLE_EMPTY, "role %s after the failed open",
          reuseport_role_name(reuseport_set_get_role(s)));
    EXPECT_ERR(reuseport_listener_get_fd(s, 0), -EBADF, "no socket");
    char text[64];
    reuseport_listener_get_spec(s, 0, text, sizeof text);
    CHECK(strcmp(text, "127.0.0.1:0") == 0, "first spec became \"%s\" after the failed open", text);

    /* Same through single_open (opens and configures). */
    EXPECT_ERR(reuseport_single_open(s), -EADDRINUSE, portstr);
    CHECK(count_fds() == before, "fds %d after the failed single_open, expected %d", count_fds(), before);
    CHECK(reuseport_set_get_role(s) == REUSEPORT_ROLE_EMPTY, "role %d", reuseport_set_get_role(s));

    /* Once the port is free, the same set opens. */
    close(blocker);
    before = count_fds();
    EXPECT_OK(reuseport_master_open(s), 0);
    CHECK(reuseport_set_get_role(s) == REUSEPORT_ROLE_MASTER_OPEN, "role %d", reuseport_set_get_role(s));
    CHECK(count_fds() == before + 2, "fds %d, expected %d", count_fds(), before + 2);
    CHECK(reuseport_listener_get_fd(s, 0) >= 0 && reuseport_listener_get_fd(s, 1) >= 0, "fds %d %d", reuseport_listener_get_fd(s, 0),
          reuseport_listener_get_fd(s, 1));
    reuseport_listener_get_spec(s, 1, text, sizeof text);
    CHECK(strcmp(text, spec) == 0, "expected \"%s\", got \"%s\"", spec, text);
    reuseport_set_free(s);
    CHECK(count_fds() == before, "fds %d after free, expected %d", count_fds(), before);
}

static void test_log_callback(void)
{
    struct log_capture cap;
    memset(&cap, 0, sizeof cap);
    reuseport_set *s = new_set();

    reuseport_log_set_callback(capture_log, &cap, REUSEPORT_LOG_ERROR);
    EXPECT_ERR(reuseport_set_add(s, "127.0.0.1:99999"), -EINVAL, "99999");
    CHECK(cap.calls == 1 && cap.errors == 1, "calls %d errors %d, expected 1 1", cap.calls, cap.errors);
    CHECK(cap.last_level == REUSEPORT_LOG_ERROR, "level %d", cap.last_level);
    CHECK(strcmp(cap.last, reuseport_last_error()) == 0, "logged \"%s\"", cap.last);
    EXPECT_ERR(reuseport_master_release(s), -EINVAL, "master_open");
    CHECK(cap.calls == 2 && cap.errors == 2, "calls %d errors %d, expected 2 2", cap.calls, cap.errors);
    CHECK(strstr(cap.last, "reuseport_master_release") != NULL, "logged \"%s\"", cap.last);

    /* Info and debug messages (the chosen port, the release) stay below max_level. */
    EXPECT_OK(reuseport_set_add(s, "127.0.0.1:0"), 1);
    EXPECT_OK(reuseport_master_open(s), 0);
    EXPECT_OK(reuseport_master_release(s), 0);
    CHECK(cap.calls == 2, "calls %d at max_level ERROR after a successful open/release, expected 2", cap.calls);

    /* Removed: silent. */
    reuseport_log_set_callback(NULL, NULL, REUSEPORT_LOG_DEBUG);
    EXPECT_ERR(reuseport_master_release(s), -EALREADY, "twice");
    EXPECT_ERR(reuseport_set_add(s, ""), -EINVAL, "empty");
    CHECK(cap.calls == 2, "calls %d after removing the callback, expected 2", cap.calls);
    reuseport_set_free(s);
}

static void test_probe(void)
{
    int before = count_fds();
    struct reuseport_probe_info info;
    memset(&info, 0, sizeof info);
    char notes[2048];
    int len = reuseport_probe(&info, sizeof info, notes, sizeof notes);
    CHECK(len > 0 && (size_t)len == strlen(notes), "probe returns the notes' length: %d", len);
    CHECK(strncmp(notes, "strategy auto -> ", 17) == 0, "notes start with the strategy: %s", notes);
    /* snprintf-style: cut and NUL-terminated, the full length returned. */
    char cut[8];
    EXPECT_OK(reuseport_probe(&info, sizeof info, cut, sizeof cut), len);
    CHECK(strlen(cut) == sizeof cut - 1, "cut notes: %s", cut);
    CHECK(info.so_reuseport == 1, "so_reuseport %d", info.so_reuseport);
    CHECK(info.kernel_release[0] != '\0', "empty kernel_release");
    CHECK(count_fds() == before, "fds %d after probe, expected %d", count_fds(), before);
}

/* The ABI rules: structs that grow, sizes the caller states, one internal error code. */
static void test_abi_rules(void)
{
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    reuseport_set *s = reuseport_set_new();

    /* An options struct from a newer header: a bigger struct, its unknown tail zero, is
     * accepted; a field this library does not know, set, is refused. */
    struct {
        struct reuseport_listen_options o;
        int newer_field;
    } big;
    memset(&big, 0x55, sizeof big);
    EXPECT_OK(reuseport_listen_options_init(&big.o, sizeof big), 0);
    CHECK(big.o.sz == sizeof big && big.newer_field == 0, "init zeroes the caller's whole struct");
    CHECK(big.o.backlog == 511, "defaults written: backlog %d", big.o.backlog);
    EXPECT_OK(reuseport_set_add_addr(s, (const struct sockaddr *)&sin, sizeof sin, &big.o), 1);
    big.newer_field = 1;
    EXPECT_ERR(reuseport_set_add_addr(s, (const struct sockaddr *)&sin, sizeof sin, &big.o), -EINVAL, "newer");

    /* A size below the first release's, or a struct never initialised, is refused. */
    struct reuseport_listen_options o;
    EXPECT_ERR(reuseport_listen_options_init(&o, REUSEPORT_LISTEN_OPTIONS_SIZE_V1 - 1), -EINVAL, "smallest");
    memset(&o, 0, sizeof o);
    EXPECT_ERR(reuseport_set_add_addr(s, (const struct sockaddr *)&sin, sizeof sin, &o), -EINVAL, "_init");
    CHECK(sizeof(struct reuseport_listen_options) >= REUSEPORT_LISTEN_OPTIONS_SIZE_V1, "V1 size");

    /* Output: a bigger caller struct gets zeroes beyond what the library knows; a smaller
     * one than the first release's is refused. */
    struct {
        struct reuseport_probe_info info;
        int newer_field;
    } out;
    memset(&out, 0x55, sizeof out);
    CHECK(reuseport_probe(&out.info, sizeof out, NULL, 0) > 0, "probe into a bigger struct");
    CHECK(out.newer_field == 0, "the unknown tail is zeroed: %d", out.newer_field);
    EXPECT_ERR(reuseport_probe(&out.info, REUSEPORT_PROBE_INFO_SIZE_V1 - 1, NULL, 0), -EINVAL, "smallest");

    struct reuseport_slot slot;
    EXPECT_ERR(reuseport_listener_get_slots(s, 99, &slot, 1, sizeof slot), -ENOENT, "out of range");

    /* The internal error code is beyond the errno range: never a system error. */
    CHECK(REUSEPORT_EINTERNAL > 133 && REUSEPORT_EINTERNAL < 4096, "EINTERNAL %d", REUSEPORT_EINTERNAL);
    reuseport_set_free(s);
}

int main(void)
{
    alarm(30);
    setvbuf(stdout, NULL, _IOLBF, 0);
    int fds_start = count_fds();

    CHECK(reuseport_last_error() != NULL && reuseport_last_error()[0] == '\0', "last_error before any failure");
    CHECK(reuseport_version() != NULL && reuseport_version()[0] != '\0', "version");

    test_null_handles();
    test_bad_specs();
    test_add_addr();
    test_spec_and_fd_accessors();
    test_lifecycle_order();
    test_adopt_after_fork();
    test_all_or_nothing();
    test_log_callback();
    test_probe();
    test_abi_rules();

    int fds_end = count_fds();
    CHECK(fds_end == fds_start, "open fds %d at the end, %d at the start", fds_end, fds_start);

    printf("test_misuse: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
