/* The error log: one line per event, with time and pid, to a file or standard error.
 * Lines are written with one write() each so that master and workers never interleave. */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "server.h"

static int log_fd = 2;

/* The error_log's level filters the library's messages (the server's own lines, its
 * events and errors, are always written): the library is asked for nothing past it, so
 * it formats no message that would be dropped. */
void rp_log_set_level(int level)
{
    reuseport_log_set_callback(rp_log_library, NULL, level);
}

void rp_log_open(const char *path)
{
    if (!path || !*path || strcmp(path, "stderr") == 0) {
        log_fd = 2;
        return;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        rp_log("cannot open error_log %s, logging to stderr", path);
        return;
    }
    if (log_fd > 2)
        close(log_fd);
    log_fd = fd;
}

static void emit(const char *level, const char *fmt, va_list ap)
{
    char buf[2048];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    localtime_r(&tv.tv_sec, &tm);
    int n = snprintf(buf, sizeof buf, "%04d/%02d/%02d %02d:%02d:%02d.%03d [%s] %d: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000),
                     level, (int)getpid());
    if (n < 0 || (size_t)n >= sizeof buf)
        return;
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    if (m < 0)
        return;
    n += m;
    if ((size_t)n > sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t w = write(log_fd, buf, (size_t)n);
    (void)w;
}

void rp_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit("notice", fmt, ap);
    va_end(ap);
}

static void log_str(const char *level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(level, fmt, ap);
    va_end(ap);
}

/* The library's messages, with nginx's level names. */
void rp_log_library(int level, const char *message, void *user)
{
    (void)user;
    const char *name = level <= REUSEPORT_LOG_ERROR ? "error"
                     : level == REUSEPORT_LOG_WARN  ? "warn"
                     : level == REUSEPORT_LOG_INFO  ? "info"
                                                    : "debug";
    log_str(name, "reuseport: %s", message);
}
