/*
 * launch_unprivileged ENV USER COMMAND [ARG...]
 *
 * Loads the library's migration program as root, keeps its fd open across exec under the
 * environment variable ENV, drops to USER and execs COMMAND: how an unprivileged master
 * gets a program it could not load itself. Used by the `unprivileged` scenario.
 */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "reuseport.h"

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: launch_unprivileged ENV USER COMMAND [ARG...]\n");
        return 2;
    }
    /* The program is loaded by opening a throwaway listener with the bpf strategy. */
    reuseport_set *set = reuseport_set_new();
    if (reuseport_set_set_strategy(set, REUSEPORT_STRATEGY_BPF) < 0 || reuseport_set_add(set, "127.0.0.1:0") < 0
        || reuseport_single_open(set) < 0) {
        fprintf(stderr, "launch_unprivileged: %s\n", reuseport_last_error());
        return 1;
    }
    int keep = dup(reuseport_set_get_program_fd(set)); /* dup() clears FD_CLOEXEC */
    reuseport_set_free(set);
    char num[16];
    snprintf(num, sizeof num, "%d", keep);
    setenv(argv[1], num, 1);

    struct passwd *pw = getpwnam(argv[2]);
    if (!pw || initgroups(pw->pw_name, pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
        fprintf(stderr, "launch_unprivileged: cannot become %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    execvp(argv[3], argv + 3);
    fprintf(stderr, "launch_unprivileged: exec %s: %s\n", argv[3], strerror(errno));
    return 1;
}
