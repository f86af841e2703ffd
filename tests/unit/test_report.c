/*
 * test_report.c - unit tests for daemon/report.c (and the store's report query).
 *
 * Bookings go in through the store; the events the report reads are inserted with
 * raw SQL so that their times are exact (the report reads type, compartment,
 * booking, time and order, not the chain). The station's zone is Europe/Berlin, and
 * the expected figures below are worked out by hand in the comments.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "daemon/config.h"
#include "daemon/log.h"
#include "daemon/opendata.h"
#include "daemon/report.h"
#include "daemon/store.h"
#include "daemon/timeutil.h"

#define MIN  INT64_C(60000)
#define HOUR (60 * MIN)

struct fixture {
    char dir[64];
    char path[128];
    struct store *s;
    sqlite3 *raw;
    struct config cfg;
    int64_t seq;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_true(tz_set("Europe/Berlin"));
    snprintf(f->dir, sizeof f->dir, "/tmp/test_report.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/lockerd.db", f->dir);
    char err[256] = "";
    f->s = store_open(f->path, err, sizeof err);
    assert_non_null(f->s);
    assert_int_equal(sqlite3_open(f->path, &f->raw), SQLITE_OK);
    sqlite3_busy_timeout(f->raw, 2000);

    config_defaults(&f->cfg);
    snprintf(f->cfg.station_id, sizeof f->cfg.station_id, "st-test");
    f->cfg.n_compartments = 3;
    for (int i = 0; i < 3; i++)
        f->cfg.compartments[i].number = i + 1;
    snprintf(f->cfg.compartments[0].hall, sizeof f->cfg.compartments[0].hall, "hall-a");
    snprintf(f->cfg.compartments[1].hall, sizeof f->cfg.compartments[1].hall, "hall-b");
    /* compartment 3 has no hall */

    static const char *const clubs[][2] = {{"c1", "Club One"}, {"c2", "Club Two"}};
    for (int i = 0; i < 2; i++) {
        struct club c;
        snprintf(c.id, sizeof c.id, "%s", clubs[i][0]);
        snprintf(c.name, sizeof c.name, "%s", clubs[i][1]);
        assert_int_equal(store_club_add(f->s, &c), STORE_OK);
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    sqlite3_close(f->raw);
    store_close(f->s);
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        char p[160];
        snprintf(p, sizeof p, "%s%s", f->path, suffixes[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

static int64_t at(const char *iso)
{
    int64_t ms;
    if (!time_parse_iso(iso, &ms))
        fail_msg("bad time in test: %s", iso);
    return ms;
}

static void booking(struct fixture *f, const char *id, const char *club, int comp, const char *from,
                    const char *to, bool cancelled)
{
    struct booking b = {.compartment = comp, .status = BOOKING_ACTIVE};
    snprintf(b.id, sizeof b.id, "%s", id);
    snprintf(b.club_id, sizeof b.club_id, "%s", club);
    snprintf(b.source, sizeof b.source, "local");
    b.start_ms = at(from);
    b.end_ms = at(to);
    assert_int_equal(store_booking_add(f->s, &b), STORE_OK);
    if (cancelled)
        assert_int_equal(store_booking_cancel(f->s, id), STORE_OK);
}

/* An event at an exact time, in log order. */
static void event(struct fixture *f, const char *type, int comp, const char *booking,
                  const char *when)
{
    char sql[512];
    f->seq++;
    snprintf(sql, sizeof sql,
             "INSERT INTO events (seq, event_id, type, occurred_ms, mono_ms, clock_synced,"
             " boot_id, compartment, booking_id, prev_hash, hash)"
             " VALUES (%lld, 'e-%lld', '%s', %lld, 0, 1, 'boot', %d, %s%s%s, x'00', x'00')",
             (long long)f->seq, (long long)f->seq, type, (long long)at(when), comp,
             booking ? "'" : "", booking ? booking : "NULL", booking ? "'" : "");
    char *msg = NULL;
    if (sqlite3_exec(f->raw, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg);
}

static json_t *build(struct fixture *f, const char *from, const char *to, const char *now)
{
    char err[128] = "";
    json_t *r = report_build(f->s, &f->cfg, at(from), at(to), at(now), err, sizeof err);
    if (r == NULL)
        fail_msg("report_build: %s", err);
    return r;
}

static json_int_t num(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        fail_msg("'%s' is not an integer", key);
    return json_integer_value(v);
}

/* Finds the element of a group array whose fields match. */
static json_t *find(json_t *arr, const char *key, const char *value, int compartment)
{
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o)
    {
        json_t *k = key ? json_object_get(o, key) : NULL;
        bool kmatch = key == NULL || (value == NULL ? json_is_null(k)
                                                    : json_is_string(k) &&
                                                          strcmp(json_string_value(k), value) == 0);
        bool cmatch = compartment == 0 || num(o, "compartment") == compartment;
        if (kmatch && cmatch)
            return o;
    }
    fail_msg("no group %s=%s compartment %d", key ? key : "-", value ? value : "null", compartment);
    return NULL;
}

/*
 * The week of Monday 2 March 2026 (CET, UTC+1), seen on Sunday 8 March 12:00:
 *   b1 c1 #1 Mon 18-20  taken 17:50 (before the start: delay 0), back 19:55
 *   b2 c1 #1 Tue 18-20  taken 18:10 (10 min), overdue 20:15, back 20:40 (late)
 *   b3 c1 #1 Wed 18-20  never taken: no-show
 *   b4 c2 #2 Thu 18-19  taken 18:20 (20 min), back 18:50, taken again 18:52, back 19:00
 *   b5 c2 #2 Fri 18-19  cancelled
 *   b6 c3 #1 Sat 10-11  taken 10:05 (5 min), still out at "now" (25 h 55 min)
 *   b7 c1 #2 Sun 11:50-13:00, not taken yet but still in the pickup window: pending
 *   b8 c1 #3 Sun 08-09  taken 08:00, back 09:00 (compartment without hall)
 *   b0 c1 #1 the Sunday before: outside the period
 * plus a service pickup without booking and returns of other compartments in
 * between, which must not be taken for these bookings' returns.
 */
static void fill_week(struct fixture *f)
{
    booking(f, "b0", "c1", 1, "2026-03-01T18:00+01:00", "2026-03-01T20:00+01:00", false);
    booking(f, "b1", "c1", 1, "2026-03-02T18:00+01:00", "2026-03-02T20:00+01:00", false);
    booking(f, "b2", "c1", 1, "2026-03-03T18:00+01:00", "2026-03-03T20:00+01:00", false);
    booking(f, "b3", "c1", 1, "2026-03-04T18:00+01:00", "2026-03-04T20:00+01:00", false);
    booking(f, "b4", "c2", 2, "2026-03-05T18:00+01:00", "2026-03-05T19:00+01:00", false);
    booking(f, "b5", "c2", 2, "2026-03-06T18:00+01:00", "2026-03-06T19:00+01:00", true);
    booking(f, "b6", "c3", 1, "2026-03-07T10:00+01:00", "2026-03-07T11:00+01:00", false);
    booking(f, "b7", "c1", 2, "2026-03-08T11:50+01:00", "2026-03-08T13:00+01:00", false);
    booking(f, "b8", "c1", 3, "2026-03-08T08:00+01:00", "2026-03-08T09:00+01:00", false);

    event(f, "key.checkedOut", 1, "b0", "2026-03-01T18:00+01:00");
    event(f, "key.returned", 1, NULL, "2026-03-01T19:00+01:00");
    event(f, "key.checkedOut", 1, "b1", "2026-03-02T17:50+01:00");
    event(f, "key.returned", 2, NULL, "2026-03-02T19:00+01:00"); /* another compartment */
    event(f, "key.returned", 1, NULL, "2026-03-02T19:55+01:00");
    event(f, "key.checkedOut", 1, "b2", "2026-03-03T18:10+01:00");
    event(f, "key.overdue", 1, "b2", "2026-03-03T20:15+01:00");
    event(f, "key.returned", 1, NULL, "2026-03-03T20:40+01:00");
    event(f, "key.checkedOut", 1, NULL, "2026-03-04T09:00+01:00"); /* service */
    event(f, "key.returned", 1, NULL, "2026-03-04T09:30+01:00");
    event(f, "key.checkedOut", 2, "b4", "2026-03-05T18:20+01:00");
    event(f, "key.returned", 2, NULL, "2026-03-05T18:50+01:00");
    event(f, "key.checkedOut", 2, "b4", "2026-03-05T18:52+01:00");
    event(f, "key.returned", 2, NULL, "2026-03-05T19:00+01:00");
    event(f, "key.checkedOut", 1, "b6", "2026-03-07T10:05+01:00");
    event(f, "key.checkedOut", 3, "b8", "2026-03-08T08:00+01:00");
    event(f, "key.returned", 3, NULL, "2026-03-08T09:00+01:00");
}

static void test_metrics(void **state)
{
    struct fixture *f = *state;
    fill_week(f);
    json_t *r =
        build(f, "2026-03-02T00:00+01:00", "2026-03-08T12:00+01:00", "2026-03-08T12:00+01:00");

    /* Total: booked b1 b2 b3 b4 b6 b7 b8 = 7; collected b1 b2 b4 b6 b8 = 5; delays
     * 0, 10, 20, 5, 0 min -> sorted 0 0 5 10 20: median 5 min, worst 20 min. */
    json_t *t = json_object_get(r, "total");
    assert_int_equal(num(t, "booked"), 7);
    assert_int_equal(num(t, "collected"), 5);
    assert_int_equal(num(t, "noShows"), 1);
    assert_int_equal(num(t, "pending"), 1);
    assert_int_equal(num(t, "cancelled"), 1);
    assert_int_equal(num(t, "lateReturns"), 1);
    assert_int_equal(num(t, "overdue"), 1);
    assert_int_equal(num(t, "medianDelayMs"), 5 * MIN);
    assert_int_equal(num(t, "worstDelayMs"), 20 * MIN);
    /* Booked: 2 + 2 + 2 + 1 + 1 h + 70 min + 1 h = 10 h 10 min. Out: b1 2 h 05, b2
     * 2 h 30, b4 30 + 8 min, b6 from Sat 10:05 to Sun 12:00 = 25 h 55, b8 1 h. */
    assert_int_equal(num(t, "bookedMs"), 10 * HOUR + 10 * MIN);
    assert_int_equal(num(t, "keyOutMs"), 2 * HOUR + 5 * MIN + 2 * HOUR + 30 * MIN + 38 * MIN +
                                             25 * HOUR + 55 * MIN + HOUR);

    /* Club c1: b1 b2 b3 b7 b8; delays 0, 10, 0 -> median 0, worst 10. */
    json_t *c1 = find(json_object_get(r, "byClub"), "club", "c1", 0);
    assert_string_equal(json_string_value(json_object_get(c1, "clubName")), "Club One");
    assert_int_equal(num(c1, "booked"), 5);
    assert_int_equal(num(c1, "collected"), 3);
    assert_int_equal(num(c1, "noShows"), 1);
    assert_int_equal(num(c1, "pending"), 1);
    assert_int_equal(num(c1, "medianDelayMs"), 0);
    assert_int_equal(num(c1, "worstDelayMs"), 10 * MIN);
    /* c2: b4 only (b5 cancelled); one delay, so median = worst = 20 min. */
    json_t *c2 = find(json_object_get(r, "byClub"), "club", "c2", 0);
    assert_int_equal(num(c2, "booked"), 1);
    assert_int_equal(num(c2, "cancelled"), 1);
    assert_int_equal(num(c2, "medianDelayMs"), 20 * MIN);
    assert_int_equal(num(c2, "keyOutMs"), 38 * MIN);
    /* c3 is not in the clubs table. */
    json_t *c3 = find(json_object_get(r, "byClub"), "club", "c3", 0);
    assert_true(json_is_null(json_object_get(c3, "clubName")));
    assert_int_equal(json_array_size(json_object_get(r, "byClub")), 3);

    /* Halls: a = #1 (b1 b2 b3 b6), b = #2 (b4 b5 b7), none = #3 (b8). Two delays in
     * hall a besides 0: 0 5 10 -> median 5. */
    json_t *ha = find(json_object_get(r, "byHall"), "hall", "hall-a", 0);
    assert_int_equal(num(ha, "booked"), 4);
    assert_int_equal(num(ha, "medianDelayMs"), 5 * MIN);
    json_t *hb = find(json_object_get(r, "byHall"), "hall", "hall-b", 0);
    assert_int_equal(num(hb, "booked"), 2);
    assert_int_equal(num(hb, "pending"), 1);
    json_t *hn = find(json_object_get(r, "byHall"), "hall", NULL, 0);
    assert_int_equal(num(hn, "booked"), 1);

    /* Rows: (a, 1, c1) b1 b2 b3: median of 0 and 10 is their mean. */
    json_t *rows = json_object_get(r, "rows");
    assert_int_equal(json_array_size(rows), 5);
    json_t *row = find(rows, "club", "c1", 1);
    assert_string_equal(json_string_value(json_object_get(row, "hall")), "hall-a");
    assert_int_equal(num(row, "booked"), 3);
    assert_int_equal(num(row, "medianDelayMs"), 5 * MIN);
    row = find(rows, "club", "c1", 2);
    assert_int_equal(num(row, "pending"), 1);
    assert_true(json_is_null(json_object_get(row, "medianDelayMs")));
    assert_int_equal(num(find(json_object_get(r, "byCompartment"), NULL, NULL, 2), "cancelled"), 1);

    /* One week, Monday 2 March. */
    json_t *weeks = json_object_get(r, "weeks");
    assert_int_equal(json_array_size(weeks), 1);
    json_t *w = json_array_get(weeks, 0);
    assert_string_equal(json_string_value(json_object_get(w, "week")), "2026-W10");
    assert_string_equal(json_string_value(json_object_get(w, "start")),
                        "2026-03-02T00:00:00+01:00");
    assert_int_equal(json_array_size(json_object_get(w, "clubs")), 3);
    assert_int_equal(num(find(json_object_get(w, "clubs"), "club", "c1", 0), "collected"), 3);
    assert_string_equal(json_string_value(json_object_get(r, "from")), "2026-03-02T00:00:00+01:00");
    json_decref(r);

    /* Two hours later b7's pickup window is over: a no-show. */
    r = build(f, "2026-03-02T00:00+01:00", "2026-03-08T12:00+01:00", "2026-03-08T14:00+01:00");
    t = json_object_get(r, "total");
    assert_int_equal(num(t, "noShows"), 2);
    assert_int_equal(num(t, "pending"), 0);
    json_decref(r);
}

static void test_empty(void **state)
{
    struct fixture *f = *state;
    json_t *r =
        build(f, "2026-03-02T00:00+01:00", "2026-03-16T00:00+01:00", "2026-03-20T00:00+01:00");
    json_t *t = json_object_get(r, "total");
    assert_int_equal(num(t, "booked"), 0);
    assert_true(json_is_null(json_object_get(t, "medianDelayMs")));
    assert_int_equal(json_array_size(json_object_get(r, "rows")), 0);
    assert_int_equal(json_array_size(json_object_get(r, "byClub")), 0);
    /* Every week of the period is listed, even without bookings. */
    json_t *weeks = json_object_get(r, "weeks");
    assert_int_equal(json_array_size(weeks), 2);
    assert_int_equal(json_array_size(json_object_get(json_array_get(weeks, 1), "clubs")), 0);
    json_decref(r);
}

/*
 * Weeks across the changes to and from summer time (Europe/Berlin): on Sunday
 * 29 March 2026 02:00 CET clocks go to 03:00 CEST, on Sunday 25 October 03:00 CEST
 * back to 02:00 CET. A booking on Monday 00:30 local is Sunday 22:30 or 23:30 UTC: a
 * week cut in UTC would put it in the week before.
 */
static void test_weeks_dst(void **state)
{
    struct fixture *f = *state;
    booking(f, "s1", "c1", 1, "2026-03-29T23:00+02:00", "2026-03-29T23:45+02:00", false);
    booking(f, "s2", "c1", 1, "2026-03-30T00:30+02:00", "2026-03-30T01:30+02:00", false);
    booking(f, "a1", "c2", 2, "2026-10-25T23:00+01:00", "2026-10-25T23:45+01:00", false);
    booking(f, "a2", "c2", 2, "2026-10-26T00:15+01:00", "2026-10-26T01:00+01:00", false);
    event(f, "key.checkedOut", 2, "a2", "2026-10-26T00:15+01:00");

    json_t *r =
        build(f, "2026-03-23T00:00+01:00", "2026-11-01T23:59+01:00", "2026-11-10T00:00+01:00");
    json_t *weeks = json_object_get(r, "weeks");
    /* 23 March to 1 November: 32 Mondays. */
    assert_int_equal(json_array_size(weeks), 32);
    json_t *w13 = json_array_get(weeks, 0);
    json_t *w14 = json_array_get(weeks, 1);
    assert_string_equal(json_string_value(json_object_get(w13, "week")), "2026-W13");
    assert_string_equal(json_string_value(json_object_get(w13, "start")),
                        "2026-03-23T00:00:00+01:00");
    assert_string_equal(json_string_value(json_object_get(w14, "week")), "2026-W14");
    assert_string_equal(json_string_value(json_object_get(w14, "start")),
                        "2026-03-30T00:00:00+02:00");
    assert_int_equal(num(json_array_get(json_object_get(w13, "clubs"), 0), "booked"), 1);
    assert_int_equal(num(json_array_get(json_object_get(w14, "clubs"), 0), "booked"), 1);
    json_t *w43 = json_array_get(weeks, 30);
    json_t *w44 = json_array_get(weeks, 31);
    assert_string_equal(json_string_value(json_object_get(w43, "start")),
                        "2026-10-19T00:00:00+02:00");
    assert_string_equal(json_string_value(json_object_get(w44, "start")),
                        "2026-10-26T00:00:00+01:00");
    assert_int_equal(num(json_array_get(json_object_get(w43, "clubs"), 0), "booked"), 1);
    assert_int_equal(num(json_array_get(json_object_get(w44, "clubs"), 0), "collected"), 1);
    /* Weeks are seven calendar days: 167 h into summer time, 169 h out of it. */
    assert_int_equal(report_week_start(at("2026-03-29T23:59+02:00")), at("2026-03-23T00:00+01:00"));
    assert_int_equal(at("2026-03-30T00:00+02:00") - at("2026-03-23T00:00+01:00"), 167 * HOUR);
    assert_int_equal(at("2026-10-26T00:00+01:00") - at("2026-10-19T00:00+02:00"), 169 * HOUR);
    json_decref(r);
}

static void test_bounds(void **state)
{
    (void)state;
    int64_t ms;
    assert_true(report_parse_bound("2026-03-29", false, &ms));
    assert_int_equal(ms, at("2026-03-29T00:00+01:00"));
    /* The end of a 23-hour and of a 25-hour day. */
    assert_true(report_parse_bound("2026-03-29", true, &ms));
    assert_int_equal(ms, at("2026-03-30T00:00+02:00"));
    assert_true(report_parse_bound("2026-10-25", true, &ms));
    assert_int_equal(ms, at("2026-10-26T00:00+01:00"));
    assert_true(report_parse_bound("2026-12-31", true, &ms));
    assert_int_equal(ms, at("2027-01-01T00:00+01:00"));
    /* A time is taken as it is, also as the end. */
    assert_true(report_parse_bound("2026-03-29T18:00+02:00", true, &ms));
    assert_int_equal(ms, at("2026-03-29T16:00Z"));
    static const char *const bad[] = {
        "",          "2026-02-30", "2026-3-1", "2026-03-01x",
        "yesterday", "2026-13-01", "20260301", "2026-03-29T02:30" /* skipped by the change */};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (report_parse_bound(bad[i], false, &ms) || report_parse_bound(bad[i], true, &ms))
            fail_msg("'%s' was accepted", bad[i]);
    }
    assert_false(report_parse_bound(NULL, false, &ms));

    /* Default: 00:00 28 days before now's date, until now; across the change. */
    int64_t from, to;
    report_default_period(at("2026-04-10T15:00+02:00"), &from, &to);
    assert_int_equal(from, at("2026-03-13T00:00+01:00"));
    assert_int_equal(to, at("2026-04-10T15:00+02:00"));
}

/* The open-data documents carry the same facts per slot, and nothing personal. */
static void test_opendata(void **state)
{
    struct fixture *f = *state;
    /* hall-a: collected 10 min late, key back 30 min after the 16:00 end (grace 15
     * min: late); a no-show; hall-b: cancelled; compartment 3 (no hall): pending. */
    booking(f, "b1", "c1", 1, "2026-03-02T14:00+01:00", "2026-03-02T16:00+01:00", false);
    booking(f, "b2", "c2", 1, "2026-03-03T14:00+01:00", "2026-03-03T16:00+01:00", false);
    booking(f, "b3", "c1", 2, "2026-03-04T14:00+01:00", "2026-03-04T16:00+01:00", true);
    booking(f, "b4", "c2", 3, "2026-03-05T18:00+01:00", "2026-03-05T20:00+01:00", false);
    event(f, "key.checkedOut", 1, "b1", "2026-03-02T14:10+01:00");
    event(f, "key.returned", 1, NULL, "2026-03-02T16:30+01:00");

    char err[128] = "";
    json_t *d =
        opendata_build(f->s, &f->cfg, at("2026-03-01T00:00+01:00"), at("2026-03-08T00:00+01:00"),
                       at("2026-03-05T12:00+01:00"), false, err, sizeof err);
    assert_non_null(d);
    json_t *things = json_object_get(json_object_get(d, "sensorthings"), "Things");
    assert_int_equal(json_array_size(things), 3); /* hall-a, hall-b, compartment-3 */
    json_t *a = json_array_get(things, 0);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(a, "properties"), "hall")), "hall-a");
    json_t *ds = json_object_get(a, "Datastreams");
    json_t *slots = json_object_get(json_array_get(ds, 0), "Observations");
    assert_int_equal(json_array_size(slots), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(slots, 0), "result")),
                        "collected");
    json_t *par = json_object_get(json_array_get(slots, 0), "parameters");
    assert_int_equal(json_integer_value(json_object_get(par, "pickupDelaySeconds")), 600);
    assert_int_equal(json_integer_value(json_object_get(par, "keyOutSeconds")), 140 * 60);
    assert_null(json_object_get(par, "club"));
    assert_string_equal(json_string_value(json_object_get(json_array_get(slots, 1), "result")),
                        "no-show");
    json_t *removed = json_object_get(json_array_get(ds, 1), "Observations");
    assert_int_equal(json_array_size(removed), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(removed, 0), "result")),
                        "removed");
    json_t *sessions = json_object_get(json_array_get(ds, 2), "Observations");
    assert_int_equal(json_array_size(sessions), 1);
    json_t *s0 = json_array_get(sessions, 0);
    assert_int_equal(json_integer_value(json_object_get(s0, "result")), 140 * 60);
    assert_true(json_is_true(json_object_get(json_object_get(s0, "parameters"), "returnedLate")));
    assert_string_equal(json_string_value(json_object_get(s0, "phenomenonTime")),
                        "2026-03-02T13:10:00.000Z/2026-03-02T15:30:00.000Z");

    json_t *b = json_array_get(things, 1);
    json_t *bslots =
        json_object_get(json_array_get(json_object_get(b, "Datastreams"), 0), "Observations");
    assert_string_equal(json_string_value(json_object_get(json_array_get(bslots, 0), "result")),
                        "cancelled");
    json_t *c = json_array_get(things, 2);
    json_t *cslots =
        json_object_get(json_array_get(json_object_get(c, "Datastreams"), 0), "Observations");
    assert_string_equal(json_string_value(json_object_get(json_array_get(cslots, 0), "result")),
                        "pending");

    /* NGSI-LD: the station, then one entity per slot. */
    json_t *ld = json_object_get(d, "ngsiLd");
    assert_int_equal(json_array_size(ld), 5);
    json_t *e1 = json_array_get(ld, 1);
    assert_string_equal(json_string_value(json_object_get(e1, "id")),
                        "urn:ngsi-ld:HallSlotUsage:st-test:b1");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(e1, "usageStatus"), "value")),
        "collected");
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(e1, "lateReturns"), "value")), 1);
    assert_null(json_object_get(e1, "club"));
    char *text = json_dumps(d, 0);
    assert_null(strstr(text, "c1")); /* no club anywhere without publish_club */
    free(text);
    json_decref(d);

    d = opendata_build(f->s, &f->cfg, at("2026-03-01T00:00+01:00"), at("2026-03-08T00:00+01:00"),
                       at("2026-03-05T12:00+01:00"), true, err, sizeof err);
    e1 = json_array_get(json_object_get(d, "ngsiLd"), 1);
    assert_string_equal(json_string_value(json_object_get(json_object_get(e1, "club"), "value")),
                        "c1");
    json_decref(d);
}

int main(void)
{
    log_init("test_report", LOG_LVL_WARNING);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_metrics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_weeks_dst, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_opendata, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
