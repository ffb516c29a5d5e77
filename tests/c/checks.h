/*
 * What the root-only C tests share: a CHECK that counts instead of stopping (so one run
 * reports every failure), and the switch to nobody that workers make.
 */
#ifndef REUSEPORT_TEST_CHECKS_H
#define REUSEPORT_TEST_CHECKS_H

#include <grp.h>
#include <stdio.h>
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

#endif
