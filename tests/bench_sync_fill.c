/*
 * bench_sync_fill.c - fills a station's outbox for tests/bench_sync.py.
 *
 * Appends N events to the event log of an existing station database (lockerd
 * stopped) through store_event_add(), the path every real event takes: each gets
 * its UUIDv7, its place in the hash chain and its outbox entry. The events are the
 * kind a station piles up while offline: refused taps of unknown cards and held-open
 * doors, spread over the compartments. They are committed 1,000 to a transaction
 * (filling is not what is measured).
 *
 * usage: bench_sync_fill DB N
 * Prints the outbox depth afterwards.
 */
#include <stdio.h>
#include <stdlib.h>

#include "daemon/log.h"
#include "daemon/store.h"

static void must(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "bench_sync_fill: %s failed\n", what);
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: bench_sync_fill DB N\n");
        return 2;
    }
    long n = atol(argv[2]);
    must(n > 0, "N");
    log_init("bench_sync_fill", LOG_LVL_WARNING);

    char err[256];
    struct store *s = store_open(argv[1], err, sizeof(err));
    must(s != NULL, err);
    must(store_begin(s) == STORE_OK, "begin");
    for (long i = 0; i < n; i++) {
        struct event e = {.compartment = 1 + (int)(i % 4)};
        if (i % 10 == 9) {
            e.type = "door.heldOpen";
        } else {
            e.type = "access.denied";
            e.reason = "unknown-card";
        }
        must(store_event_add(s, &e) > 0, "store_event_add");
        if (i % 1000 == 999) {
            must(store_commit(s) == STORE_OK, "commit");
            must(store_begin(s) == STORE_OK, "begin");
        }
    }
    must(store_commit(s) == STORE_OK, "commit");
    printf("%lld\n", (long long)store_outbox_depth(s));
    store_close(s);
    return 0;
}
