/*
 * What the root-only C tests share: a CHECK that counts instead of stopping (so one run
 * reports every failure), the switch to nobody that workers make, and the port a set's
 * first listener was bound to.
 */
#ifndef REUSEPORT_TEST_CHECKS_H
#define REUSEPORT_TEST_CHECKS_H

#include <grp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "reuseport.h"

#define NOBODY 65534

static int passed, failed;

#define CHECK(cond, ...)                                                             \
    do {                                                                             \
        if (cond) {                                                                  \
            passed++;                                                                \
        } else {                                                                     \
            failed++;                                                                \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                            \
            fprintf(stderr, " (last error: %s)\n", reuseport_last_error());          \
        }                                                                            \
    } while (0)

static inline void drop_privileges(void)
{
    if (setgroups(0, NULL) != 0 || setgid(NOBODY) != 0 || setuid(NOBODY) != 0) {
        perror("drop privileges");
        _exit(2);
    }
}

/* The port of listener 0 (opened on port 0: the kernel chose it). */
static inline uint16_t port_of(reuseport_set *set)
{
    char spec[128];
    reuseport_listener_get_spec(set, 0, spec, sizeof spec);
    return (uint16_t)atoi(strrchr(spec, ':') + 1);
}

#endif
