/*
 * selftest.h - `lockerctl selftest`: the station checks its own hardware and data.
 *
 * A run checks, in this order: the card reader (present, firmware), every
 * compartment (sensors read, and the lock pulsed when the compartment is idle with
 * its door closed), the database (SQLite integrity check), the event log's hash
 * chain, clock synchronisation, disk space of the state directory, and the city API
 * (one sync cycle, when one is configured). Each check ends pass, warn, skip, fail
 * or, for a lock pulse whose door stayed closed, confirm: only a person standing at
 * the cabinet can tell whether the lock clicked, and lockerctl asks them.
 *
 * A run lives on the event loop: lock pulses and the wait for the city API are
 * timers, never sleeps. It records one station.selftest event with its summary and
 * then hands the result to the caller.
 *
 * Ownership: the run borrows loop, store, station and sync (they outlive it) and
 * copies what it needs of the config (a reload may replace it meanwhile).
 */
#ifndef LOCKERD_SELFTEST_H
#define LOCKERD_SELFTEST_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "daemon/config.h"
#include "daemon/loop.h"
#include "daemon/station.h"
#include "daemon/store.h"

/* Worst last: a run is as good as its worst check. */
enum selftest_status {
    SELFTEST_PASS,
    SELFTEST_SKIP,
    SELFTEST_WARN,
    SELFTEST_CONFIRM, /* the lock was pulsed, the door stayed closed: ask a person */
    SELFTEST_FAIL,
};

/* "pass", "skip", "warn", "confirm", "fail". */
const char *selftest_status_name(enum selftest_status s);

/* Free space of the state directory: fail below 50 MB or 5 % of the file system,
 * warn below 200 MB or 10 % (MB = 10^6 bytes). avail is what lockerd may use
 * (f_bavail), total the file system's size; total 0 fails. */
#define SELFTEST_DISK_FAIL_BYTES (50ULL * 1000 * 1000)
#define SELFTEST_DISK_WARN_BYTES (200ULL * 1000 * 1000)
#define SELFTEST_DISK_FAIL_PCT   5
#define SELFTEST_DISK_WARN_PCT   10
enum selftest_status selftest_disk_status(uint64_t avail, uint64_t total);

/* How long a lock is pulsed (bounded by max_energize) and how long after the pulse
 * the door is still watched before the next compartment. */
#define SELFTEST_PULSE_MS  1000
#define SELFTEST_SETTLE_MS 200
#define SELFTEST_GAP_MS    500
/* Longest wait for the city API's sync cycle. */
#define SELFTEST_API_WAIT_MS 30000

struct selftest;
struct sync;

/* Called once when a run ends: result is {"ok": bool, "checks": [...]}, a new
 * reference the callee owns. The run is freed after the callback returns. */
typedef void (*selftest_done_cb)(json_t *result, void *arg);

struct selftest_opts {
    bool locks;                /* false: read the sensors, pulse no lock */
    const char *operator_name; /* recorded with the pulses and the summary; copied */
};

/* Starts a run; the first check runs from the loop, never inside this call. sy may
 * be NULL (no city link). Returns NULL only when a timer cannot be armed. */
struct selftest *selftest_start(const struct config *cfg, struct loop *loop, struct store *store,
                                struct station *st, struct sync *sy,
                                const struct selftest_opts *opts, selftest_done_cb done, void *arg);
/* Ends a run whose caller went away: no callback, no summary event. A lock being
 * pulsed goes off by the station's own coil timer. Accepts NULL. */
void selftest_cancel(struct selftest *t);

#endif
