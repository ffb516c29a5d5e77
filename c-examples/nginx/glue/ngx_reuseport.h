
/*
 * SO_REUSEPORT listeners run through the reuseport library: one socket per
 * address, opened unconfigured by the master, adopted and configured by the
 * first worker, bound anew by every other worker before it drops privileges,
 * and closed by the master once the first worker holds it.
 *
 * New connections go to the workers that accept: each worker beats once per
 * event loop iteration, and the master's watch steers around a worker that
 * stops beating while connections wait for it, and hands what it had queued
 * to the others.
 */


#ifndef _NGX_REUSEPORT_H_INCLUDED_
#define _NGX_REUSEPORT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <nginx.h>


#if (NGX_HAVE_REUSEPORT)

/*
 * UDP reuseport listeners (QUIC among them) keep nginx's own per-worker
 * sockets, and so do MPTCP ones (listen ... multipath, nginx 1.29.7): the
 * library opens plain TCP sockets
 */
#if (nginx_version >= 1029007)
#define ngx_reuseport_managed(ls)                                             \
    ((ls)->reuseport && (ls)->type == SOCK_STREAM && (ls)->protocol == 0)
#else
#define ngx_reuseport_managed(ls)                                             \
    ((ls)->reuseport && (ls)->type == SOCK_STREAM)
#endif

ngx_int_t ngx_reuseport_open(ngx_cycle_t *cycle);
ngx_int_t ngx_reuseport_start_workers(ngx_cycle_t *cycle);
void ngx_reuseport_release(ngx_cycle_t *cycle);
ngx_int_t ngx_reuseport_init_worker(ngx_cycle_t *cycle);
void ngx_reuseport_close(ngx_cycle_t *cycle);
void ngx_reuseport_heartbeat(ngx_cycle_t *cycle);
void ngx_reuseport_watch(ngx_cycle_t *cycle);
void ngx_reuseport_reclaim(ngx_cycle_t *cycle);
ngx_uint_t ngx_reuseport_joins_group(ngx_cycle_t *cycle, ngx_listening_t *ls);

/*
 * reuseport_health_threshold: how long connections may wait on a worker that
 * stopped beating before the others take its share; 0 turns those verdicts
 * off (new connections still avoid leaving workers' sockets)
 */
#define NGX_REUSEPORT_HEALTH_THRESHOLD      50
#define NGX_REUSEPORT_HEALTH_THRESHOLD_MAX  60000

/* the master's health watch ticks on this signal (a POSIX timer) */
#define NGX_REUSEPORT_WATCH_SIGNAL  (SIGRTMIN + 1)

extern sig_atomic_t  ngx_reuseport_watch_due;

#else

#define ngx_reuseport_managed(ls)  0

#endif


#endif /* _NGX_REUSEPORT_H_INCLUDED_ */
