
/*
 * SO_REUSEPORT listeners run through the reuseport library.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#if (NGX_HAVE_REUSEPORT)

#include <reuseport.h>


static ngx_int_t ngx_reuseport_open_set(ngx_cycle_t *cycle);
static void ngx_reuseport_disown_inherited(ngx_cycle_t *cycle);
static void ngx_reuseport_share_plain(ngx_cycle_t *cycle);
static ngx_listening_t *ngx_reuseport_find(ngx_cycle_t *cycle,
    ngx_listening_t *ls, ngx_uint_t managed);
static void ngx_reuseport_log(int level, const char *message, void *user);
static void ngx_reuseport_cleanup(void *data);
static void ngx_reuseport_set_fds(ngx_cycle_t *cycle);
static void ngx_reuseport_watch_signal(int signo);
static void ngx_reuseport_arm(ngx_cycle_t *cycle, int ms);
static void ngx_reuseport_retire_handler(ngx_event_t *ev);
static void ngx_reuseport_keep_accepting(ngx_cycle_t *cycle);
static void ngx_reuseport_stop_accepting(ngx_cycle_t *cycle, ngx_int_t rc);


#define NGX_REUSEPORT_QUIT_TICK  250


sig_atomic_t  ngx_reuseport_watch_due;

static timer_t      ngx_reuseport_timer;
static ngx_event_t  ngx_reuseport_retire_ev;
static int          ngx_reuseport_timer_ms = -1;

/*
 * a leaving worker's listening sockets, by the library's listener index:
 * nginx accepts on them until the retire closes them
 */
static ngx_listening_t  **ngx_reuseport_accepting;
static ngx_uint_t         ngx_reuseport_naccepting;


/*
 * while a cycle is being initialized, library messages go to its log (the
 * error_log it configures), not yet to ngx_cycle's
 */
static ngx_log_t  *ngx_reuseport_init_log;


ngx_int_t
ngx_reuseport_open(ngx_cycle_t *cycle)
{
    ngx_int_t  rc;

    ngx_reuseport_init_log = cycle->log;
    rc = ngx_reuseport_open_set(cycle);

    if (rc == NGX_OK) {
        ngx_reuseport_disown_inherited(cycle);
    }

    ngx_reuseport_init_log = NULL;

    return rc;
}


/*
 * an upgrade from a binary without the library (stock nginx) passes its
 * reuseport sockets in NGINX=, one per worker, in the same groups as the
 * sockets this cycle just opened.  Nobody here accepts from them: they are
 * left to nginx's own close of the old cycle's sockets (right after this,
 * before any worker is forked) instead of being kept.  They leave their
 * groups when the old binary's processes close them too, and what is queued
 * on them then moves to the library's sockets.  Until then they are the
 * program's fallback: should this binary's workers all leave first (the
 * upgrade reverted: HUP to the old master, QUIT to this one), new
 * connections go to them, not to the leaving sockets
 */

static void
ngx_reuseport_disown_inherited(ngx_cycle_t *cycle)
{
    ngx_uint_t        i;
    ngx_cycle_t      *old;
    ngx_listening_t  *ls;

    old = cycle->old_cycle;

    if (old == NULL || old->reuseport != NULL || ngx_test_config) {
        return;
    }

    ls = old->listening.elts;
    for (i = 0; i < old->listening.nelts; i++) {

        if (!ngx_reuseport_managed(&ls[i]) || ls[i].fd == (ngx_socket_t) -1) {
            continue;
        }

        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                      "reuseport listener %V: the inherited socket #%d of a "
                      "binary without the library is closed, the library's "
                      "sockets take its place", &ls[i].addr_text, ls[i].fd);

        if (reuseport_set_add_fallback(cycle->reuseport, ls[i].fd) < 0) {
            ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                          "reuseport listener %V: %s", &ls[i].addr_text,
                          reuseport_last_error());
        }

        /* not the library's: nginx's close of the old cycle's sockets */
        ls[i].reuseport = 0;
    }
}


static ngx_int_t
ngx_reuseport_open_set(ngx_cycle_t *cycle)
{
    int                              rc;
    ngx_uint_t                       i, n;
    ngx_listening_t                 *ls;
    ngx_core_conf_t                 *ccf;
    ngx_pool_cleanup_t              *cln;
    reuseport_set                   *set;
    struct reuseport_listen_options  opts;

    n = 0;
    ls = cycle->listening.elts;
    for (i = 0; i < cycle->listening.nelts; i++) {
        if (ngx_reuseport_managed(&ls[i]) && !ls[i].ignore) {
            n++;
        }
    }

    if (n == 0) {
        return NGX_OK;
    }

    reuseport_log_set_callback(ngx_reuseport_log, NULL, REUSEPORT_LOG_INFO);

    set = reuseport_set_new();
    if (set == NULL) {
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(cycle->pool, 0);
    if (cln == NULL) {
        reuseport_set_free(set);
        return NGX_ERROR;
    }

    cln->handler = ngx_reuseport_cleanup;
    cln->data = set;
    cycle->reuseport = set;

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    if (reuseport_set_set_health_threshold(set,
                                           ccf->reuseport_health_threshold)
        < 0)
    {
        return NGX_ERROR;
    }

    for (i = 0; i < cycle->listening.nelts; i++) {

        if (!ngx_reuseport_managed(&ls[i]) || ls[i].ignore) {
            continue;
        }

        reuseport_listen_options_init(&opts, sizeof(opts));

        opts.backlog = ls[i].backlog;
        opts.rcvbuf = ls[i].rcvbuf > 0 ? ls[i].rcvbuf : 0;
        opts.sndbuf = ls[i].sndbuf > 0 ? ls[i].sndbuf : 0;

#if (NGX_HAVE_KEEPALIVE_TUNABLE)
        if (ls[i].keepalive) {
            opts.keepalive = (ls[i].keepalive == 1) ? 1 : 0;

            if (ls[i].keepalive == 1) {
                opts.keepidle = ls[i].keepidle;
                opts.keepintvl = ls[i].keepintvl;
                opts.keepcnt = ls[i].keepcnt;
            }
        }
#else
        if (ls[i].keepalive) {
            opts.keepalive = (ls[i].keepalive == 1) ? 1 : 0;
        }
#endif

#if (NGX_HAVE_DEFERRED_ACCEPT && defined TCP_DEFER_ACCEPT)
        opts.deferred = ls[i].deferred_accept;
#endif

#if (NGX_HAVE_TCP_FASTOPEN)
        opts.fastopen = ls[i].fastopen > 0 ? ls[i].fastopen : 0;
#endif

#if (NGX_HAVE_INET6)
        if (ls[i].sockaddr->sa_family == AF_INET6) {
            opts.ipv6only = ls[i].ipv6only;
        }
#endif

        if (reuseport_set_add_addr(set, ls[i].sockaddr, ls[i].socklen, &opts)
            < 0)
        {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                          "reuseport listener %V: %s", &ls[i].addr_text,
                          reuseport_last_error());
            return NGX_ERROR;
        }
    }

    ngx_reuseport_share_plain(cycle);

    /*
     * with a master, the first worker adopts these sockets and configures
     * them; without one, this process opens and configures them at once
     */

    /*
     * a reload's set takes over from the running cycle's: the migration
     * program, the steering of the addresses both have, the close token
     */

    if (!ngx_is_init_cycle(ngx_cycle) && ngx_cycle->reuseport
        && reuseport_set_inherit(set, ngx_cycle->reuseport) < 0)
    {
        return NGX_ERROR;
    }

    if (ccf->master && !ngx_test_config) {
        rc = reuseport_master_open(set);

    } else {
        rc = reuseport_single_open(set);
    }

    if (rc < 0) {
        /* the library has logged why */
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "reuseport listeners could not be opened");
        return NGX_ERROR;
    }

    ngx_reuseport_set_fds(cycle);

    for (i = 0, n = 0; i < cycle->listening.nelts; i++) {
        if (ngx_reuseport_managed(&ls[i]) && !ls[i].ignore) {
            ngx_log_error(NGX_LOG_INFO, cycle->log, 0,
                          "reuseport listener %V: strategy %s",
                          &ls[i].addr_text,
                          reuseport_strategy_name(
                              reuseport_listener_get_strategy(set, n++)));
        }
    }

    return NGX_OK;
}


/* the master, before it forks a generation of workers */

ngx_int_t
ngx_reuseport_start_workers(ngx_cycle_t *cycle)
{
    if (cycle->reuseport == NULL
        || reuseport_set_get_role(cycle->reuseport) != REUSEPORT_ROLE_RELEASED)
    {
        return NGX_OK;
    }

    /* workers again after their sockets were released: reverting an upgrade */

    if (reuseport_master_open(cycle->reuseport) < 0) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "reuseport listeners could not be opened again");
        return NGX_ERROR;
    }

    ngx_reuseport_set_fds(cycle);

    return NGX_OK;
}


/* the master, right after it forked the first worker */

void
ngx_reuseport_release(ngx_cycle_t *cycle)
{
    if (cycle->reuseport == NULL
        || reuseport_set_get_role(cycle->reuseport) != REUSEPORT_ROLE_MASTER_OPEN)
    {
        return;
    }

    (void) reuseport_master_release(cycle->reuseport);

    ngx_reuseport_set_fds(cycle);
}


/* a worker, before it drops privileges */

ngx_int_t
ngx_reuseport_init_worker(ngx_cycle_t *cycle)
{
    int  rc;

    if (cycle->reuseport == NULL) {
        return NGX_OK;
    }

    if (reuseport_set_get_role(cycle->reuseport) == REUSEPORT_ROLE_MASTER_OPEN) {
        rc = reuseport_worker_adopt(cycle->reuseport);

    } else {
        rc = reuseport_worker_bind(cycle->reuseport);
    }

    if (rc < 0) {
        return NGX_ERROR;
    }

    ngx_reuseport_set_fds(cycle);

    return NGX_OK;
}


/* any process closing its listening sockets */

void
ngx_reuseport_close(ngx_cycle_t *cycle)
{
    int  role;

    if (cycle->reuseport == NULL) {
        return;
    }

    role = reuseport_set_get_role(cycle->reuseport);

    if (role == REUSEPORT_ROLE_ADOPTED || role == REUSEPORT_ROLE_BOUND
        || role == REUSEPORT_ROLE_SINGLE)
    {
        /*
         * with migration the kernel moves the queues to the other workers;
         * the retire never blocks: it goes on from a timer while this worker
         * finishes its requests, and the worker exits only once it is done
         */

        ngx_reuseport_keep_accepting(cycle);

        ngx_reuseport_retire_ev.handler = ngx_reuseport_retire_handler;
        ngx_reuseport_retire_ev.data = cycle;
        ngx_reuseport_retire_ev.log = cycle->log;

        ngx_reuseport_retire_handler(&ngx_reuseport_retire_ev);

    } else {
        /* no retire here: end any accept event at once, as nginx would have */
        ngx_reuseport_keep_accepting(cycle);
        ngx_reuseport_stop_accepting(cycle, -1);

        if (role == REUSEPORT_ROLE_MASTER_OPEN) {
            (void) reuseport_master_release(cycle->reuseport);
        }
    }

    ngx_reuseport_set_fds(cycle);
}


static void
ngx_reuseport_retire_handler(ngx_event_t *ev)
{
    int           rc;
    ngx_cycle_t  *cycle;

    cycle = ev->data;

    rc = reuseport_retire(cycle->reuseport, NULL, NULL);

    ngx_reuseport_stop_accepting(cycle, rc);

    if (rc > 0) {
        /* not cancelable: the worker waits for it before it exits */
        ngx_add_timer(ev, (ngx_msec_t) rc);
        return;
    }

    if (rc < 0) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "reuseport listeners closed without migration, "
                      "queued connections may be reset: run the master "
                      "as root or set net.ipv4.tcp_migrate_req=1");
        (void) reuseport_master_release(cycle->reuseport);
    }
}


/*
 * ngx_close_listening_sockets() leaves the accept events of the library's
 * listeners in place: what is queued on a leaving worker's socket, and what
 * the program sent it just before it left the choice, is served by this
 * worker instead of waiting for the close and moving to another
 */

static void
ngx_reuseport_keep_accepting(ngx_cycle_t *cycle)
{
    ngx_uint_t        i, n;
    ngx_listening_t  *ls;

    ls = cycle->listening.elts;

    for (i = 0, n = 0; i < cycle->listening.nelts; i++) {
        if (ngx_reuseport_managed(&ls[i]) && !ls[i].ignore) {
            n++;
        }
    }

    ngx_reuseport_naccepting = 0;
    ngx_reuseport_accepting = ngx_pcalloc(cycle->pool,
                                          (n ? n : 1) * sizeof(ngx_listening_t *));
    if (ngx_reuseport_accepting == NULL) {
        return;
    }

    for (i = 0; i < cycle->listening.nelts; i++) {
        if (ngx_reuseport_managed(&ls[i]) && !ls[i].ignore) {
            ngx_reuseport_accepting[ngx_reuseport_naccepting++] = &ls[i];
        }
    }
}


/*
 * after a retire step: the accept events of the listeners the library has
 * closed go (the kernel dropped the closed sockets from epoll: no delete);
 * rc < 0 (the retire failed, the sockets are about to be closed) and rc == 0
 * (all closed) end them all
 */

static void
ngx_reuseport_stop_accepting(ngx_cycle_t *cycle, ngx_int_t rc)
{
    ngx_uint_t         k;
    ngx_listening_t   *ls;
    ngx_connection_t  *c;

    for (k = 0; k < ngx_reuseport_naccepting; k++) {
        ls = ngx_reuseport_accepting[k];
        c = ls->connection;

        if (c == NULL) {
            continue;
        }

        if (rc > 0 && reuseport_listener_get_fd(cycle->reuseport, k) >= 0) {
            continue;
        }

        if (rc < 0 && c->read->active) {
            ngx_del_event(c->read, NGX_READ_EVENT, 0);
        }

        ngx_free_connection(c);

        c->fd = (ngx_socket_t) -1;
        ls->connection = NULL;
    }
}


/* a worker, once per event loop iteration: an atomic add in shared memory */

void
ngx_reuseport_heartbeat(ngx_cycle_t *cycle)
{
    if (cycle->reuseport) {
        (void) reuseport_heartbeat(cycle->reuseport);
    }
}


/*
 * the master, after starting workers and on each tick of its timer: marks
 * the workers that stopped accepting, so that new connections go to the
 * others, and moves what they had queued
 */

void
ngx_reuseport_watch(ngx_cycle_t *cycle)
{
    int  ms;

    ngx_reuseport_watch_due = 0;

    if (cycle->reuseport == NULL || ngx_terminate) {
        ms = 0;

    } else {
        ms = reuseport_watch(cycle->reuseport);
    }

    /*
     * a gracefully quitting master (e.g. the old one after an upgrade) still
     * moves the queue of a stalled worker to the new workers; as every wakeup
     * of the master cycle signals the workers again, it ticks more slowly
     */

    if (ngx_quit && ms > 0 && ms < NGX_REUSEPORT_QUIT_TICK) {
        ms = NGX_REUSEPORT_QUIT_TICK;
    }

    ngx_reuseport_arm(cycle, ms > 0 ? ms : 0);
}


/* the master, when the new binary of an upgrade exited */

void
ngx_reuseport_reclaim(ngx_cycle_t *cycle)
{
    if (cycle->reuseport && !ngx_terminate && !ngx_quit) {
        (void) reuseport_master_reclaim(cycle->reuseport);
    }
}


static void
ngx_reuseport_arm(ngx_cycle_t *cycle, int ms)
{
    sigset_t           set;
    struct sigevent    sev;
    struct sigaction   sa;
    struct itimerspec  its;

    if (ms == ngx_reuseport_timer_ms) {
        return;
    }

    if (ngx_reuseport_timer_ms == -1) {
        if (ms == 0) {
            return;
        }

        /* delivered only inside sigsuspend(), like nginx's own signals */

        sigemptyset(&set);
        sigaddset(&set, NGX_REUSEPORT_WATCH_SIGNAL);

        if (sigprocmask(SIG_BLOCK, &set, NULL) == -1) {
            ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_errno,
                          "sigprocmask() failed");
            return;
        }

        ngx_memzero(&sa, sizeof(struct sigaction));
        sa.sa_handler = ngx_reuseport_watch_signal;
        sigemptyset(&sa.sa_mask);

        if (sigaction(NGX_REUSEPORT_WATCH_SIGNAL, &sa, NULL) == -1) {
            ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_errno,
                          "sigaction(SIGRTMIN+1) failed");
            return;
        }

        ngx_memzero(&sev, sizeof(struct sigevent));
        sev.sigev_notify = SIGEV_SIGNAL;
        sev.sigev_signo = NGX_REUSEPORT_WATCH_SIGNAL;

        if (timer_create(CLOCK_MONOTONIC, &sev, &ngx_reuseport_timer) == -1) {
            ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_errno,
                          "timer_create() failed, "
                          "stalled workers will not be steered around");
            return;
        }
    }

    its.it_value.tv_sec = ms / 1000;
    its.it_value.tv_nsec = (ms % 1000) * 1000000;
    its.it_interval = its.it_value;

    if (timer_settime(ngx_reuseport_timer, 0, &its, NULL) == -1) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_errno,
                      "timer_settime() failed");
        return;
    }

    ngx_reuseport_timer_ms = ms;
}


static void
ngx_reuseport_watch_signal(int signo)
{
    ngx_reuseport_watch_due = 1;
}


static void
ngx_reuseport_set_fds(ngx_cycle_t *cycle)
{
    int               fd;
    ngx_uint_t        i, n;
    ngx_listening_t  *ls;

    ls = cycle->listening.elts;
    for (i = 0, n = 0; i < cycle->listening.nelts; i++) {

        if (!ngx_reuseport_managed(&ls[i]) || ls[i].ignore) {
            continue;
        }

        fd = reuseport_listener_get_fd(cycle->reuseport, n++);

        ls[i].fd = (fd >= 0) ? fd : (ngx_socket_t) -1;
    }
}


static void
ngx_reuseport_log(int level, const char *message, void *user)
{
    ngx_uint_t  nlevel;

    switch (level) {
    case REUSEPORT_LOG_ERROR:
        nlevel = NGX_LOG_ERR;
        break;
    case REUSEPORT_LOG_WARN:
        nlevel = NGX_LOG_WARN;
        break;
    case REUSEPORT_LOG_INFO:
        nlevel = NGX_LOG_INFO;
        break;
    default:
        nlevel = NGX_LOG_DEBUG;
    }

    ngx_log_error(nlevel, ngx_reuseport_init_log ? ngx_reuseport_init_log
                                                 : ngx_cycle->log,
                  0, "reuseport: %s", message);
}


/*
 * `reuseport` added to a listen by a reload: the running cycle's socket for
 * that address has no SO_REUSEPORT, and the kernel lets a socket join a group
 * only if every socket bound there has it.  Set on the bound socket, it lets
 * the library's bind (stock nginx does the same: add_reuseport).  The old
 * socket closes with the old cycle, and what is queued on it then moves to
 * the library's sockets
 */

static void
ngx_reuseport_share_plain(ngx_cycle_t *cycle)
{
    int               one;
    ngx_uint_t        i;
    ngx_listening_t  *ls, *ols;

    if (ngx_test_config) {
        return;
    }

    ls = cycle->listening.elts;
    for (i = 0; i < cycle->listening.nelts; i++) {

        if (!ngx_reuseport_managed(&ls[i]) || ls[i].ignore) {
            continue;
        }

        ols = ngx_reuseport_find(cycle->old_cycle, &ls[i], 0);

        if (ols == NULL || ols->fd == (ngx_socket_t) -1) {
            continue;
        }

        one = 1;

        if (setsockopt(ols->fd, SOL_SOCKET, SO_REUSEPORT,
                       (const void *) &one, sizeof(int))
            == -1)
        {
            ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_socket_errno,
                          "setsockopt(SO_REUSEPORT) %V failed",
                          &ols->addr_text);
            continue;
        }

        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                      "reuseport listener %V: takes over from the socket "
                      "without reuseport", &ls[i].addr_text);
    }
}


/*
 * `reuseport` removed from a listen by a reload: the running cycle's workers
 * hold the library's sockets for that address, all with SO_REUSEPORT, so the
 * new shared socket needs it too to bind (the hook in
 * ngx_open_listening_sockets asks this before it binds a socket)
 */

ngx_uint_t
ngx_reuseport_joins_group(ngx_cycle_t *cycle, ngx_listening_t *ls)
{
    ngx_cycle_t  *old;

    old = cycle->old_cycle;

    if (ngx_reuseport_managed(ls) || old == NULL || old->reuseport == NULL) {
        return 0;
    }

    return ngx_reuseport_find(old, ls, 1) != NULL;
}


/* the listening of `cycle` at the address of `ls`, managed or not */

static ngx_listening_t *
ngx_reuseport_find(ngx_cycle_t *cycle, ngx_listening_t *ls,
    ngx_uint_t managed)
{
    ngx_uint_t        i;
    ngx_listening_t  *ols;

    if (cycle == NULL || ngx_is_init_cycle(cycle)) {
        return NULL;
    }

    ols = cycle->listening.elts;
    for (i = 0; i < cycle->listening.nelts; i++) {

        if (ols[i].ignore || ols[i].type != ls->type
            || (ngx_reuseport_managed(&ols[i]) ? 1 : 0) != managed)
        {
            continue;
        }

        if (ngx_cmp_sockaddr(ols[i].sockaddr, ols[i].socklen,
                             ls->sockaddr, ls->socklen, 1)
            == NGX_OK)
        {
            return &ols[i];
        }
    }

    return NULL;
}


static void
ngx_reuseport_cleanup(void *data)
{
    reuseport_set_free(data);
}

#endif
