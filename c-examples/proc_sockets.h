/*
 * proc_sockets.h: which listening TCP sockets a process holds, read from /proc.
 *
 * Shared by tests/c/test_lifecycle.c and c-examples/lifecycle_demo.c. Header-only (static
 * functions), C11 + Linux, libc only. Needs _GNU_SOURCE or _DEFAULT_SOURCE for readlinkat.
 *
 * The library's own accessors only tell what a set *thinks* it holds; /proc tells what the
 * process really holds, which is what a lifecycle test must check (a released master must
 * hold nothing, the first worker the master's very sockets).
 */
#ifndef REUSEPORT_PROC_SOCKETS_H
#define REUSEPORT_PROC_SOCKETS_H

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

struct proc_socket {
    int fd;
    unsigned long inode;
    char addr[64]; /* "127.0.0.1:PORT" or "[::1]:PORT" */
};

struct proc_listener_table {
    size_t n, cap;
    struct {
        unsigned long inode;
        char addr[64];
    } *e;
};

/* The inode of one of this process's fds: /proc/net/tcp names sockets by it, and it is
 * the same in every process sharing the open file description (an fd number is not). */
static inline unsigned long proc_fd_inode(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? (unsigned long)st.st_ino : 0;
}

/* Reads the LISTEN rows of /proc/net/tcp or tcp6. /proc/net is /proc/self/net: the
 * network namespace of the caller, which is where the test's processes live. A missing
 * file (IPv6 disabled) is an empty table, not an error. */
static int proc_read_listeners_(const char *path, int v6, struct proc_listener_table *t)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return errno == ENOENT ? 0 : -errno;
    char line[512];
    if (!fgets(line, sizeof line, f)) { /* header */
        fclose(f);
        return 0;
    }
    while (fgets(line, sizeof line, f)) {
        char local[64];
        unsigned st, port;
        unsigned long inode;
        /* sl local rem st tx:rx tr:when retrnsmt uid timeout inode */
        if (sscanf(line, " %*s %63s %*s %x %*s %*s %*s %*s %*s %lu", local, &st, &inode) != 3 || st != 0x0A)
            continue;
        char *colon = strrchr(local, ':');
        if (!colon || sscanf(colon + 1, "%x", &port) != 1)
            continue;
        *colon = '\0';
        /* The kernel prints each 32-bit word of the address with %08X, i.e. in host byte
         * order of the network-order bytes: parsing into a u32 restores the bytes. */
        char host[INET6_ADDRSTRLEN];
        if (v6) {
            struct in6_addr a;
            unsigned w[4];
            if (strlen(local) != 32 || sscanf(local, "%8x%8x%8x%8x", &w[0], &w[1], &w[2], &w[3]) != 4)
                continue;
            memcpy(&a, w, sizeof a);
            inet_ntop(AF_INET6, &a, host, sizeof host);
        } else {
            struct in_addr a;
            unsigned w;
            if (sscanf(local, "%x", &w) != 1)
                continue;
            a.s_addr = w;
            inet_ntop(AF_INET, &a, host, sizeof host);
        }
        if (t->n == t->cap) {
            size_t cap = t->cap ? 2 * t->cap : 64;
            void *e = realloc(t->e, cap * sizeof *t->e);
            if (!e) {
                fclose(f);
                return -ENOMEM;
            }
            t->e = e;
            t->cap = cap;
        }
        t->e[t->n].inode = inode;
        snprintf(t->e[t->n].addr, sizeof t->e[t->n].addr, v6 ? "[%s]:%u" : "%s:%u", host, port);
        t->n++;
    }
    fclose(f);
    return 0;
}

static int proc_cmp_fd_(const void *a, const void *b)
{
    const struct proc_socket *x = a, *y = b;
    return (x->fd > y->fd) - (x->fd < y->fd);
}

/* Lists the listening TCP sockets `pid` holds (0: this process), sorted by fd, into
 * `out` (up to `max`). Returns how many it holds, which may exceed `max`, or -errno.
 * Reading another process's /proc/PID/fd needs the same uid (or ptrace rights). */
static int proc_listen_sockets(pid_t pid, struct proc_socket *out, int max)
{
    struct proc_listener_table t = {0, 0, NULL};
    int rc = proc_read_listeners_("/proc/net/tcp", 0, &t);
    if (rc == 0)
        rc = proc_read_listeners_("/proc/net/tcp6", 1, &t);
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%ld/fd", pid ? (long)pid : (long)getpid());
    DIR *d = rc == 0 ? opendir(dir) : NULL;
    if (rc == 0 && !d)
        rc = -errno;
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char link[64];
        unsigned long inode;
        ssize_t len = readlinkat(dirfd(d), de->d_name, link, sizeof link - 1);
        if (len < 0)
            continue; /* closed while we looked */
        link[len] = '\0';
        if (sscanf(link, "socket:[%lu]", &inode) != 1)
            continue;
        for (size_t i = 0; i < t.n; i++) {
            if (t.e[i].inode != inode)
                continue;
            if (n < max) {
                out[n].fd = atoi(de->d_name);
                out[n].inode = inode;
                snprintf(out[n].addr, sizeof out[n].addr, "%s", t.e[i].addr);
            }
            n++;
            break;
        }
    }
    if (d)
        closedir(d);
    free(t.e);
    if (rc < 0)
        return rc;
    /* readdir order is not guaranteed: sort so tables and comparisons are stable */
    if (n > 0 && max > 0)
        qsort(out, (size_t)(n < max ? n : max), sizeof *out, proc_cmp_fd_);
    return n;
}

#endif /* REUSEPORT_PROC_SOCKETS_H */
