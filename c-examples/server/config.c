/* The config file: nginx's syntax, a few of its directives.
 *
 *   worker_processes 4;            # or auto
 *   user nobody;                   # workers setuid to it when the master is root
 *   pid /run/rpserver.pid;
 *   error_log /var/log/rpserver.log;   # then the library's level: debug, info (default), warn, error
 *   listen 127.0.0.1:8080 deferred backlog=1024;   # any reuseport listen spec; repeatable
 *   keepalive_timeout 5s;
 *   worker_connections 4096;
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server.h"

void rp_config_defaults(rp_config *cf)
{
    memset(cf, 0, sizeof *cf);
    cf->worker_processes = 1;
    cf->log_level = REUSEPORT_LOG_INFO;
    snprintf(cf->pid_path, sizeof cf->pid_path, "rpserver.pid");
    cf->keepalive_timeout_ms = 5000;
    cf->header_timeout_ms = 10000;
    cf->worker_connections = 4096;
    cf->shutdown_timeout_ms = 10000;
    cf->strategy = REUSEPORT_STRATEGY_AUTO;
    cf->drain_grace_ms = 20;
    cf->drain_max_ms = 1000;
    cf->health_threshold_ms = 50;
}

/* "5s", "500ms", "2m", "7" (seconds) */
static int parse_ms(const char *v, int *out)
{
    char *end;
    long n = strtol(v, &end, 10);
    if (end == v || n < 0)
        return -1;
    if (strcmp(end, "ms") == 0)
        *out = (int)n;
    else if (*end == '\0' || strcmp(end, "s") == 0)
        *out = (int)(n * 1000);
    else if (strcmp(end, "m") == 0)
        *out = (int)(n * 60000);
    else
        return -1;
    return 0;
}

/* nginx's level names, as syslog's numbers (REUSEPORT_LOG_*; notice is 5); -1 if none. */
static int parse_log_level(const char *name)
{
    static const struct {
        const char *name;
        int level;
    } levels[] = {{"error", REUSEPORT_LOG_ERROR}, {"warn", REUSEPORT_LOG_WARN}, {"notice", 5 /* syslog's */},
                  {"info", REUSEPORT_LOG_INFO}, {"debug", REUSEPORT_LOG_DEBUG}};
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++)
        if (strcmp(name, levels[i].name) == 0)
            return levels[i].level;
    return -1;
}

static int apply(rp_config *cf, char *name, char *args, char *err, size_t errlen)
{
    char *end;
    if (strcmp(name, "worker_processes") == 0) {
        if (strcmp(args, "auto") == 0) {
            long n = sysconf(_SC_NPROCESSORS_ONLN);
            cf->worker_processes = n > 0 ? (int)n : 1;
            return 0;
        }
        long n = strtol(args, &end, 10);
        if (*end || n < 1 || n > RP_MAX_WORKERS) {
            snprintf(err, errlen, "worker_processes \"%.200s\": a number from 1 to %d, or auto", args, RP_MAX_WORKERS);
            return -1;
        }
        cf->worker_processes = (int)n;
    } else if (strcmp(name, "user") == 0) {
        if (strlen(args) >= sizeof cf->user) {
            snprintf(err, errlen, "user \"%.40s...\": too long", args);
            return -1;
        }
        snprintf(cf->user, sizeof cf->user, "%.63s", args);
    } else if (strcmp(name, "pid") == 0) {
        snprintf(cf->pid_path, sizeof cf->pid_path, "%s", args);
    } else if (strcmp(name, "error_log") == 0) {
        char *level = args + strcspn(args, " \t");
        if (*level) {
            *level++ = '\0';
            level += strspn(level, " \t");
            if ((cf->log_level = parse_log_level(level)) < 0) {
                snprintf(err, errlen, "error_log level \"%.200s\": debug, info, notice, warn or error", level);
                return -1;
            }
        }
        snprintf(cf->error_log, sizeof cf->error_log, "%s", args);
    } else if (strcmp(name, "listen") == 0) {
        if (cf->n_listen == RP_MAX_LISTEN) {
            snprintf(err, errlen, "more than %d listen directives", RP_MAX_LISTEN);
            return -1;
        }
        if (strlen(args) >= RP_SPEC_LEN) {
            snprintf(err, errlen, "listen \"%.40s...\": longer than %d characters", args, RP_SPEC_LEN - 1);
            return -1;
        }
        snprintf(cf->listen[cf->n_listen++], RP_SPEC_LEN, "%.255s", args);
    } else if (strcmp(name, "keepalive_timeout") == 0) {
        if (parse_ms(args, &cf->keepalive_timeout_ms) != 0) {
            snprintf(err, errlen, "keepalive_timeout \"%.200s\": a time such as 5s or 500ms", args);
            return -1;
        }
    } else if (strcmp(name, "client_header_timeout") == 0) {
        if (parse_ms(args, &cf->header_timeout_ms) != 0) {
            snprintf(err, errlen, "client_header_timeout \"%.200s\": a time such as 10s", args);
            return -1;
        }
    } else if (strcmp(name, "worker_shutdown_timeout") == 0) {
        if (parse_ms(args, &cf->shutdown_timeout_ms) != 0) {
            snprintf(err, errlen, "worker_shutdown_timeout \"%.200s\": a time such as 10s", args);
            return -1;
        }
    } else if (strcmp(name, "reuseport_strategy") == 0) {
        int st = reuseport_strategy_parse(args);
        if (st < 0) {
            snprintf(err, errlen, "reuseport_strategy \"%.200s\": auto, bpf, sysctl, drain or none", args);
            return -1;
        }
        cf->strategy = st;
    } else if (strcmp(name, "reuseport_drain") == 0) {
        char grace[32], max[32], flag[32] = "";
        int n = sscanf(args, "%31s %31s %31s", grace, max, flag);
        if (n < 2 || parse_ms(grace, &cf->drain_grace_ms) != 0 || parse_ms(max, &cf->drain_max_ms) != 0
            || (n == 3 && strcmp(flag, "keep_backlog") != 0)) {
            snprintf(err, errlen, "reuseport_drain \"%.200s\": a grace period, a maximum and optionally keep_backlog,"
                     " e.g. 20ms 1s", args);
            return -1;
        }
        cf->drain_flags = n == 3 ? REUSEPORT_DRAIN_KEEP_BACKLOG : 0;
    } else if (strcmp(name, "shared_socket") == 0) {
        /* one accept queue shared by every worker (what a server without SO_REUSEPORT
         * does): a baseline for the benchmarks; a respawned worker binds its own */
        if (strcmp(args, "on") != 0 && strcmp(args, "off") != 0) {
            snprintf(err, errlen, "shared_socket \"%.200s\": on or off", args);
            return -1;
        }
        cf->shared_socket = strcmp(args, "on") == 0;
    } else if (strcmp(name, "reuseport_health_threshold") == 0) {
        if (parse_ms(args, &cf->health_threshold_ms) != 0) {
            snprintf(err, errlen, "reuseport_health_threshold \"%.200s\": a time such as 50ms, or 0 for no health verdicts",
                     args);
            return -1;
        }
    } else if (strcmp(name, "worker_connections") == 0) {
        long n = strtol(args, &end, 10);
        if (*end || n < 16 || n > 1000000) {
            snprintf(err, errlen, "worker_connections \"%.200s\": a number from 16 to 1000000", args);
            return -1;
        }
        cf->worker_connections = (int)n;
    } else {
        snprintf(err, errlen, "unknown directive \"%.200s\"", name);
        return -1;
    }
    return 0;
}

int rp_config_load(rp_config *cf, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    rp_config_defaults(cf);
    snprintf(cf->path, sizeof cf->path, "%s", path);
    char stmt[4096];
    size_t len = 0;
    int line = 1, stmt_line = 1, c, in_comment = 0, rc = 0;
    while ((c = fgetc(f)) != EOF) {
        if (c == '\n') {
            line++;
            in_comment = 0;
        }
        if (in_comment)
            continue;
        if (c == '#') {
            in_comment = 1;
            continue;
        }
        if (c != ';') {
            if (len == 0 && isspace(c))
                continue;
            if (len == 0)
                stmt_line = line;
            if (len + 1 >= sizeof stmt) {
                snprintf(err, errlen, "%s:%d: statement too long", path, stmt_line);
                rc = -1;
                break;
            }
            stmt[len++] = (char)(c == '\n' || c == '\t' ? ' ' : c);
            continue;
        }
        stmt[len] = '\0';
        while (len > 0 && isspace((unsigned char)stmt[len - 1]))
            stmt[--len] = '\0';
        char *name = stmt, *args = stmt;
        while (*args && !isspace((unsigned char)*args))
            args++;
        if (*args)
            *args++ = '\0';
        while (isspace((unsigned char)*args))
            args++;
        char msg[512];
        if (*args == '\0') {
            snprintf(err, errlen, "%s:%d: \"%.200s\" needs a value", path, stmt_line, name);
            rc = -1;
            break;
        }
        if (apply(cf, name, args, msg, sizeof msg) != 0) {
            snprintf(err, errlen, "%s:%d: %s", path, stmt_line, msg);
            rc = -1;
            break;
        }
        len = 0;
    }
    if (rc == 0 && len > 0) {
        stmt[len] = '\0';
        snprintf(err, errlen, "%s:%d: missing \";\" after \"%.200s\"", path, stmt_line, stmt);
        rc = -1;
    }
    if (rc == 0 && cf->n_listen == 0) {
        snprintf(err, errlen, "%s: no listen directive", path);
        rc = -1;
    }
    fclose(f);
    return rc;
}
