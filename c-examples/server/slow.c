/* Slow request paths, for measuring how new connections are spread when one worker is
 * busy (docs/benchmarks.md, the busy-worker benchmark):
 *
 *   GET /block?ms=N   the worker sleeps N ms in the request (as a blocking disk read or
 *                     library call would): its event loop stops, its CPU is free
 *   GET /spin?ms=N    the worker burns N ms of CPU in the request
 *
 * N is capped at RP_SLOW_MAX_MS so that a request cannot hold a worker for long. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server.h"

#define RP_SLOW_MAX_MS 10000

static long parse_ms(const char *q, size_t len)
{
    char num[16] = { 0 };
    if (len < 4 || strncmp(q, "?ms=", 4) != 0 || len - 4 >= sizeof num)
        return -1;
    memcpy(num, q + 4, len - 4);
    char *end;
    long ms = strtol(num, &end, 10);
    if (end == num || *end || ms < 0)
        return -1;
    return ms > RP_SLOW_MAX_MS ? RP_SLOW_MAX_MS : ms;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int rp_slow_request(const char *target, size_t len)
{
    static const char block[] = "/block", spin[] = "/spin";
    if (len > sizeof block - 1 && strncmp(target, block, sizeof block - 1) == 0) {
        long ms = parse_ms(target + sizeof block - 1, len - (sizeof block - 1));
        if (ms < 0)
            return -1;
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) != 0)
            ; /* a signal: sleep the rest (signals are blocked outside epoll_pwait anyway) */
        return 1;
    }
    if (len > sizeof spin - 1 && strncmp(target, spin, sizeof spin - 1) == 0) {
        long ms = parse_ms(target + sizeof spin - 1, len - (sizeof spin - 1));
        if (ms < 0)
            return -1;
        int64_t until = mono_ns() + (int64_t)ms * 1000000;
        while (mono_ns() < until)
            ;
        return 1;
    }
    return 0;
}
