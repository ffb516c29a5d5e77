/*
 * rpserver: an nginx-style prefork HTTP server that runs its SO_REUSEPORT listeners
 * through the reuseport library. Reference for how a C server uses the library, and the
 * yardstick the lifecycle scenarios are measured with.
 */
#ifndef RPSERVER_H
#define RPSERVER_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "reuseport.h"

#define RP_MAX_LISTEN 32
#define RP_MAX_WORKERS 64
#define RP_SPEC_LEN 256

typedef struct {
    char path[4096];          /* the config file; "" when everything came from the command line */
    int worker_processes;
    char user[64];            /* workers drop to this user when the master runs as root */
    char pid_path[4096];
    char error_log[4096];     /* "" or "stderr": standard error */
    int log_level;            /* error_log's level, syslog's numbers: REUSEPORT_LOG_ERROR (3) to _DEBUG (7) */
    int n_listen;
    char listen[RP_MAX_LISTEN][RP_SPEC_LEN];
    int keepalive_timeout_ms; /* idle keep-alive connections are closed after this */
    int header_timeout_ms;    /* a request must arrive within this */
    int worker_connections;   /* per worker; the oldest idle connection makes room */
    int shutdown_timeout_ms;  /* a gracefully stopping worker gives up after this */
    int strategy;             /* reuseport_strategy: how a leaving worker's queue is kept */
    int drain_grace_ms, drain_max_ms;
    unsigned drain_flags;     /* REUSEPORT_DRAIN_KEEP_BACKLOG or 0 */
    int health_threshold_ms;  /* steer around a worker not accepting for this long; 0: off */
    int shared_socket;        /* benchmark baseline: every worker adopts the master's one socket */
} rp_config;

/* Per-worker counters in memory shared with the master (MAP_SHARED before fork), so the
 * master can tell, when a worker dies, what it had in flight: the connections a killed
 * process loses (what still waited in a listen queue is not in here). */
typedef struct {
    volatile pid_t pid;
    volatile uint32_t generation;
    volatile int64_t in_flight;  /* accepted, response not yet fully written */
    volatile uint64_t accepted;
    volatile uint64_t served;
} rp_worker_stats;

typedef struct {
    rp_worker_stats slot[RP_MAX_WORKERS * 4];
} rp_shared;

/* config.c */
int rp_config_load(rp_config *cf, const char *path, char *err, size_t errlen);
void rp_config_defaults(rp_config *cf);

/* log.c */
/* slow.c: /block?ms=N and /spin?ms=N hold the worker for N ms. Returns 1 when `target`
 * (len bytes) was one of them (done), 0 when not, -1 when malformed. */
int rp_slow_request(const char *target, size_t len);

void rp_log_open(const char *path);
void rp_log_set_level(int level);
void rp_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void rp_log_library(int level, const char *message, void *user);

/* worker.c: runs one worker to the end; never returns. */
void rp_worker_run(const rp_config *cf, reuseport_set *set, int first, unsigned generation,
                   rp_worker_stats *stats) __attribute__((noreturn));

#endif
