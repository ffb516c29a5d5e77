/* The outside program of every consumer test: what a C server does first with the
 * library, through the installed (or added) header and library only. Exit 0 when the
 * header and the library agree and a listener opens. */
#include <reuseport.h>
#include <stdio.h>
#include <string.h>

int main(void)
{
    /* The header's version is the library's. */
    if (strcmp(reuseport_version(), REUSEPORT_VERSION) != 0) {
        fprintf(stderr, "header %s, library %s\n", REUSEPORT_VERSION, reuseport_version());
        return 1;
    }
#if REUSEPORT_VERSION_NUMBER != REUSEPORT_VERSION_MAJOR * 10000 + REUSEPORT_VERSION_MINOR * 100 + REUSEPORT_VERSION_PATCH
#error "REUSEPORT_VERSION_NUMBER disagrees with MAJOR, MINOR, PATCH"
#endif

    struct reuseport_listen_options opts;
    if (reuseport_listen_options_init(&opts, sizeof opts) < 0) {
        fprintf(stderr, "options: %s\n", reuseport_last_error());
        return 1;
    }
    opts.backlog = 64;

    reuseport_set *set = reuseport_set_new();
    char spec[128];
    if (set == NULL || reuseport_set_add(set, "127.0.0.1:0") != 1 || reuseport_single_open(set) < 0
        || reuseport_listener_get_fd(set, 0) < 0
        || reuseport_listener_get_spec(set, 0, spec, sizeof spec) <= 0) {
        fprintf(stderr, "reuseport: %s\n", reuseport_last_error());
        return 1;
    }
    printf("consumer: reuseport %s, listening on %s\n", reuseport_version(), spec);
    reuseport_set_free(set);
    return 0;
}
