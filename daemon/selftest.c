/*
 * selftest.c - the station checks itself (`lockerctl selftest`, see selftest.h).
 *
 * The run is a small sequence driven by loop timers: reader, then one compartment
 * after another (a pulse is a timer: the station energises the coil through its
 * normal unlock path, log before act, and ends the pulse with its own coil timer;
 * this module only looks at the door sensor afterwards), then the checks that
 * answer at once, then the city API, whose sync cycle is polled with a timer.
 *
 * A compartment is only pulsed when it is idle (locked_full or locked_empty) with
 * its door closed: a pickup or a return in progress is skipped, never disturbed.
 */
#include "daemon/selftest.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/sync.h"
#include "daemon/timeutil.h"

#define API_POLL_MS 100
#define DETAIL_LEN  256

struct selftest {
    struct loop *loop;
    struct store *store;
    struct station *st;
    struct sync *sy;
    /* copied from the config: a reload may free it during the run */
    int ncomps;
    int numbers[CONFIG_MAX_COMPARTMENTS];
    char state_dir[PATH_MAX];
    bool api_configured;

    bool locks;
    char operator_name[64];
    selftest_done_cb done;
    void *arg;

    json_t *checks;
    int timer;   /* loop watch id, 0 = none */
    int next;    /* index of the next compartment to check */
    int pulsing; /* compartment being pulsed, 0 = none */
    unsigned opens_before;
    int64_t api_cycle; /* sync cycle asked for, -1 = none */
    int64_t api_deadline;
};

const char *selftest_status_name(enum selftest_status s)
{
    switch (s) {
    case SELFTEST_PASS:
        return "pass";
    case SELFTEST_SKIP:
        return "skip";
    case SELFTEST_WARN:
        return "warn";
    case SELFTEST_CONFIRM:
        return "confirm";
    case SELFTEST_FAIL:
        return "fail";
    }
    return "?";
}

enum selftest_status selftest_disk_status(uint64_t avail, uint64_t total)
{
    if (total == 0 || avail > total)
        return SELFTEST_FAIL;
    /* avail * 100 cannot overflow for any file system of fewer than 1.8e17 bytes. */
    if (avail < SELFTEST_DISK_FAIL_BYTES || avail * 100 < total * SELFTEST_DISK_FAIL_PCT)
        return SELFTEST_FAIL;
    if (avail < SELFTEST_DISK_WARN_BYTES || avail * 100 < total * SELFTEST_DISK_WARN_PCT)
        return SELFTEST_WARN;
    return SELFTEST_PASS;
}

/* ------------------------------------------------------------ results */

/* Appends a check. extra (stolen, may be NULL) holds further fields. */
static __attribute__((format(printf, 6, 7))) void add_check(struct selftest *t, const char *name,
                                                            enum selftest_status status,
                                                            int compartment, json_t *extra,
                                                            const char *fmt, ...)
{
    char detail[DETAIL_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    json_t *c = json_pack("{s:s,s:s,s:s}", "name", name, "status", selftest_status_name(status),
                          "detail", detail);
    if (compartment > 0)
        json_object_set_new(c, "compartment", json_integer(compartment));
    if (extra) {
        json_object_update(c, extra);
        json_decref(extra);
    }
    json_array_append_new(t->checks, c);
    log_info("selftest: %s%s%.0d: %s: %s", name, compartment > 0 ? " " : "", compartment,
             selftest_status_name(status), detail);
}

static void free_run(struct selftest *t)
{
    if (t->timer)
        loop_remove(t->loop, t->timer);
    json_decref(t->checks);
    free(t);
}

static void finish(struct selftest *t)
{
    int counts[SELFTEST_FAIL + 1] = {0};
    json_t *problems = json_array();
    size_t i;
    json_t *c;
    json_array_foreach(t->checks, i, c)
    {
        const char *s = json_string_value(json_object_get(c, "status"));
        for (int k = SELFTEST_PASS; k <= SELFTEST_FAIL; k++) {
            if (strcmp(s, selftest_status_name((enum selftest_status)k)) == 0)
                counts[k]++;
        }
        /* In the event the check is "check", not "name": an event's detail goes to
         * the city, and "name" there would read as a person's. */
        if (strcmp(s, "pass") != 0 && strcmp(s, "skip") != 0) {
            json_t *p = json_deep_copy(c);
            json_object_set(p, "check", json_object_get(c, "name"));
            json_object_del(p, "name");
            json_array_append_new(problems, p);
        }
    }
    bool ok = counts[SELFTEST_FAIL] == 0;
    json_t *detail = json_pack("{s:b,s:i,s:i,s:i,s:i,s:i,s:b,s:o}", "ok", ok, "pass",
                               counts[SELFTEST_PASS], "warn", counts[SELFTEST_WARN], "skip",
                               counts[SELFTEST_SKIP], "confirm", counts[SELFTEST_CONFIRM], "fail",
                               counts[SELFTEST_FAIL], "locks", t->locks, "problems", problems);
    station_selftest_record(t->st, t->operator_name, detail);
    json_decref(detail);
    log_notice("selftest by %s: %s (%d pass, %d warn, %d skip, %d to confirm, %d failed)",
               t->operator_name, ok ? "ok" : "FAILED", counts[SELFTEST_PASS], counts[SELFTEST_WARN],
               counts[SELFTEST_SKIP], counts[SELFTEST_CONFIRM], counts[SELFTEST_FAIL]);

    json_t *result = json_pack("{s:b,s:O}", "ok", ok, "checks", t->checks);
    t->timer = 0;
    selftest_done_cb done = t->done;
    void *arg = t->arg;
    free_run(t);
    done(result, arg);
}

/* ------------------------------------------------------------ the checks */

static void check_reader(struct selftest *t)
{
    char info[160];
    int rc = station_reader_info(t->st, info, sizeof(info));
    if (rc == 0)
        add_check(t, "reader", SELFTEST_PASS, 0, NULL, "%s", info);
    else
        add_check(t, "reader", SELFTEST_FAIL, 0, NULL, "%s", info);
}

static json_t *sensors_json(const struct comp_check *cc)
{
    return json_pack("{s:s,s:s,s:s}", "state", comp_state_name(cc->state), "door",
                     cc->door_open ? "open" : "closed", "key", cc->key_present ? "in" : "out");
}

static void step(void *arg);

static void arm(struct selftest *t, int64_t ms, void (*fn)(void *))
{
    int id = loop_add_timer(t->loop, ms, fn, t);
    if (id < 0) {
        /* Without a timer the run cannot go on: end it with what it has. */
        log_errx("selftest: cannot arm a timer; ending the run");
        add_check(t, "selftest", SELFTEST_FAIL, 0, NULL, "cannot arm a timer");
        finish(t);
        return;
    }
    t->timer = id;
}

/* The pulse is over (the station's coil timer fired SELFTEST_SETTLE_MS ago, or the
 * door opened and ended it): what did the door do? */
static void pulse_watched(void *arg)
{
    struct selftest *t = arg;
    t->timer = 0;
    int n = t->pulsing;
    t->pulsing = 0;
    struct comp_check cc;
    if (station_comp_check(t->st, n, &cc) != 0) {
        add_check(t, "compartment", SELFTEST_FAIL, n, NULL, "compartment vanished");
    } else if (cc.lock_on) {
        add_check(t, "compartment", SELFTEST_FAIL, n, sensors_json(&cc),
                  "the lock is still energised after the pulse");
    } else if (cc.door_opens != t->opens_before) {
        add_check(t, "compartment", SELFTEST_PASS, n, sensors_json(&cc),
                  "lock pulsed, the door opened%s; key %s",
                  cc.door_open ? " (close it again)" : " and is closed again",
                  cc.key_present ? "in" : "out");
    } else {
        add_check(t, "compartment", SELFTEST_CONFIRM, n, sensors_json(&cc),
                  "lock pulsed, the door stayed closed: did the lock click? door closed, key %s",
                  cc.key_present ? "in" : "out");
    }
    arm(t, t->next < t->ncomps ? SELFTEST_GAP_MS : 0, step);
}

/* Checks one compartment. Returns true when a pulse is under way (the run goes on
 * from its timer). */
static bool check_compartment(struct selftest *t, int n)
{
    struct comp_check cc;
    if (station_comp_check(t->st, n, &cc) != 0) {
        add_check(t, "compartment", SELFTEST_FAIL, n, NULL, "no such compartment");
        return false;
    }
    const char *door = cc.door_open ? "open" : "closed";
    const char *key = cc.key_present ? "in" : "out";
    switch (cc.state) {
    case CS_SENSOR_FAULT:
        add_check(t, "compartment", SELFTEST_FAIL, n, sensors_json(&cc),
                  "sensor fault (%s): out of service until cleared; door %s, key %s", cc.oos_reason,
                  door, key);
        return false;
    case CS_OUT_OF_SERVICE:
        add_check(t, "compartment", SELFTEST_FAIL, n, sensors_json(&cc),
                  "out of service (%s); door %s, key %s", cc.oos_reason, door, key);
        return false;
    case CS_FORCED_OPEN:
        add_check(t, "compartment", SELFTEST_FAIL, n, sensors_json(&cc),
                  "door forced open (alarm); key %s", key);
        return false;
    case CS_UNLOCKING:
    case CS_OPEN_PICKUP:
    case CS_OPEN_RETURN:
    case CS_OPEN_SERVICE:
    case CS_HELD_OPEN:
        add_check(t, "compartment", SELFTEST_SKIP, n, sensors_json(&cc),
                  "in use (%s): not disturbed; door %s, key %s", comp_state_name(cc.state), door,
                  key);
        return false;
    case CS_LOCKED_FULL:
    case CS_LOCKED_EMPTY:
        break;
    }
    if (cc.lock_on) {
        add_check(t, "compartment", SELFTEST_FAIL, n, sensors_json(&cc),
                  "the lock is energised while the compartment is locked");
        return false;
    }
    if (cc.door_open) {
        add_check(t, "compartment", SELFTEST_SKIP, n, sensors_json(&cc),
                  "door open: lock not pulsed; key %s", key);
        return false;
    }
    if (!t->locks) {
        add_check(t, "compartment", SELFTEST_SKIP, n, sensors_json(&cc),
                  "lock not pulsed (--no-locks); door closed, key %s", key);
        return false;
    }
    t->opens_before = cc.door_opens;
    int rc = station_selftest_pulse(t->st, n, t->operator_name, SELFTEST_PULSE_MS);
    if (rc == STATION_EBUSY) {
        add_check(t, "compartment", SELFTEST_SKIP, n, sensors_json(&cc),
                  "in use: not disturbed; door %s, key %s", door, key);
        return false;
    }
    if (rc != 0) {
        add_check(t, "compartment", SELFTEST_FAIL, n, sensors_json(&cc),
                  "cannot pulse the lock: %s", station_strerror(rc));
        return false;
    }
    t->pulsing = n;
    arm(t, SELFTEST_PULSE_MS + SELFTEST_SETTLE_MS, pulse_watched);
    return true;
}

static void check_database(struct selftest *t)
{
    char why[256] = "";
    int rc = store_integrity_check(t->store, why, sizeof(why));
    if (rc == STORE_OK)
        add_check(t, "database", SELFTEST_PASS, 0, NULL, "SQLite integrity check ok");
    else if (rc == STORE_CONFLICT)
        add_check(t, "database", SELFTEST_FAIL, 0, NULL, "integrity check: %s", why);
    else
        add_check(t, "database", SELFTEST_FAIL, 0, NULL, "the database cannot be read");

    int64_t bad = 0;
    why[0] = '\0';
    rc = store_events_verify(t->store, &bad, why, sizeof(why));
    if (rc == STORE_OK)
        add_check(t, "eventlog", SELFTEST_PASS, 0, NULL, "hash chain intact (%lld events)",
                  (long long)store_event_count(t->store, NULL));
    else if (rc == STORE_CONFLICT)
        add_check(t, "eventlog", SELFTEST_FAIL, 0, NULL, "hash chain broken at seq %lld: %s",
                  (long long)bad, why);
    else
        add_check(t, "eventlog", SELFTEST_FAIL, 0, NULL, "the event log cannot be read");
}

static void check_clock(struct selftest *t)
{
    if (clock_synced())
        add_check(t, "clock", SELFTEST_PASS, 0, NULL, "synchronised");
    else
        add_check(t, "clock", SELFTEST_WARN, 0, NULL,
                  "not synchronised (NTP): booking and event times may be off");
}

static void check_disk(struct selftest *t)
{
    struct statvfs sv;
    if (statvfs(t->state_dir, &sv) < 0) {
        add_check(t, "disk", SELFTEST_FAIL, 0, NULL, "%s: %s", t->state_dir, strerror(errno));
        return;
    }
    uint64_t unit = sv.f_frsize ? sv.f_frsize : sv.f_bsize;
    uint64_t avail = (uint64_t)sv.f_bavail * unit;
    uint64_t total = (uint64_t)sv.f_blocks * unit;
    enum selftest_status s = selftest_disk_status(avail, total);
    json_t *extra = json_pack("{s:I,s:I}", "availableBytes", (json_int_t)avail, "totalBytes",
                              (json_int_t)total);
    add_check(t, "disk", s, 0, extra, "%s: %llu MB free of %llu MB (%llu %%)%s", t->state_dir,
              (unsigned long long)(avail / 1000000), (unsigned long long)(total / 1000000),
              (unsigned long long)(total ? avail * 100 / total : 0),
              s == SELFTEST_FAIL   ? ": too little (at least 50 MB and 5 % needed)"
              : s == SELFTEST_WARN ? ": getting low (below 200 MB or 10 %)"
                                   : "");
}

/* "last success <time>" and the last error, from sync status. */
static void describe_sync(json_t *status, char *buf, size_t len)
{
    const char *last = json_string_value(json_object_get(status, "lastSuccess"));
    json_t *e = json_object_get(status, "lastError");
    if (json_is_object(e))
        snprintf(buf, len, "last success %s; last error (%s): %s", last ? last : "never",
                 json_string_value(json_object_get(e, "op")),
                 json_string_value(json_object_get(e, "message")));
    else
        snprintf(buf, len, "last success %s", last ? last : "never");
}

static void api_poll(void *arg)
{
    struct selftest *t = arg;
    t->timer = 0;
    json_t *status = sync_status_json(t->sy, false);
    json_t *cycle = json_object_get(status, "cycle");
    char what[DETAIL_LEN - 40];
    describe_sync(status, what, sizeof(what));
    if (json_integer_value(json_object_get(cycle, "done")) >= t->api_cycle) {
        bool ok = json_is_true(json_object_get(cycle, "ok"));
        add_check(t, "api", ok ? SELFTEST_PASS : SELFTEST_FAIL, 0, NULL, "sync cycle %s: %s",
                  ok ? "complete" : "FAILED", what);
    } else if (clock_mono_ms() >= t->api_deadline) {
        add_check(t, "api", SELFTEST_FAIL, 0, NULL, "no answer within %d s: %s",
                  SELFTEST_API_WAIT_MS / 1000, what);
    } else {
        json_decref(status);
        arm(t, API_POLL_MS, api_poll);
        return;
    }
    json_decref(status);
    finish(t);
}

/* Called when the last compartment is done. */
static void check_rest(struct selftest *t)
{
    check_database(t);
    check_clock(t);
    check_disk(t);
    if (!t->api_configured || t->sy == NULL) {
        add_check(t, "api", SELFTEST_SKIP, 0, NULL, "no city API configured ([api] url)");
        finish(t);
        return;
    }
    json_t *status = sync_status_json(t->sy, false);
    if (json_is_true(json_object_get(status, "halted"))) {
        /* A halt is lifted by a person with `lockerctl sync now`, not by a test. */
        char what[DETAIL_LEN - 40];
        describe_sync(status, what, sizeof(what));
        add_check(t, "api", SELFTEST_FAIL, 0, NULL, "uploads halted: %s", what);
        json_decref(status);
        finish(t);
        return;
    }
    json_decref(status);
    t->api_cycle = sync_poll_now(t->sy);
    if (t->api_cycle < 0) {
        add_check(t, "api", SELFTEST_SKIP, 0, NULL, "no city API configured ([api] url)");
        finish(t);
        return;
    }
    t->api_deadline = clock_mono_ms() + SELFTEST_API_WAIT_MS;
    arm(t, API_POLL_MS, api_poll);
}

/* One step of the run: the reader first, then the compartments one by one. */
static void step(void *arg)
{
    struct selftest *t = arg;
    t->timer = 0;
    if (t->next == 0 && json_array_size(t->checks) == 0)
        check_reader(t);
    while (t->next < t->ncomps) {
        if (check_compartment(t, t->numbers[t->next++]))
            return;
    }
    check_rest(t);
}

/* ------------------------------------------------------------ life cycle */

struct selftest *selftest_start(const struct config *cfg, struct loop *loop, struct store *store,
                                struct station *st, struct sync *sy,
                                const struct selftest_opts *opts, selftest_done_cb done, void *arg)
{
    struct selftest *t = xcalloc(1, sizeof(*t));
    t->loop = loop;
    t->store = store;
    t->st = st;
    t->sy = sy;
    t->ncomps = cfg->n_compartments;
    for (int i = 0; i < t->ncomps; i++)
        t->numbers[i] = cfg->compartments[i].number;
    snprintf(t->state_dir, sizeof(t->state_dir), "%s", cfg->state_dir);
    t->api_configured = cfg->sync_url[0] != '\0';
    t->locks = opts->locks;
    snprintf(t->operator_name, sizeof(t->operator_name), "%s", opts->operator_name);
    t->done = done;
    t->arg = arg;
    t->api_cycle = -1;
    t->checks = json_array();
    int id = loop_add_timer(loop, 0, step, t);
    if (id < 0) {
        json_decref(t->checks);
        free(t);
        return NULL;
    }
    t->timer = id;
    log_info("selftest started by %s%s", t->operator_name, t->locks ? "" : " (no lock pulses)");
    return t;
}

void selftest_cancel(struct selftest *t)
{
    if (!t)
        return;
    log_info("selftest by %s: abandoned by its caller", t->operator_name);
    free_run(t);
}
