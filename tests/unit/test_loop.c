/*
 * test_loop.c - the event loop, the station clock and timeutil.
 *
 * Nothing here sleeps: timers are either made due by advancing the simulated clock
 * or waited for with loop_run(), which returns when they fire. Timeouts passed to
 * loop_run_once() are safety nets that only matter when a test is failing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "daemon/clock.h"
#include "daemon/loop.h"
#include "daemon/timeutil.h"

#define SAFETY_MS 5000

struct recorder {
    struct loop *loop;
    int order[16];
    int n;
    int remove_id;  /* watch to remove from the first callback, 0: none */
    int quit_after; /* loop_quit() after this many callbacks, 0: never */
};

struct tag {
    struct recorder *rec;
    int value;
};

static void record(struct recorder *rec, int value)
{
    assert_true(rec->n < 16);
    rec->order[rec->n++] = value;
    if (rec->remove_id != 0) {
        loop_remove(rec->loop, rec->remove_id);
        rec->remove_id = 0;
    }
    if (rec->quit_after != 0 && rec->n == rec->quit_after)
        loop_quit(rec->loop, 40 + rec->n);
}

static void timer_cb(void *arg)
{
    struct tag *t = arg;
    record(t->rec, t->value);
}

static void fd_cb(int fd, uint32_t events, void *arg)
{
    struct tag *t = arg;
    char c;

    assert_true(events & EPOLLIN);
    assert_int_equal(read(fd, &c, 1), 1);
    record(t->rec, t->value);
}

static int setup_clock(void **state)
{
    (void)state;
    clock_sim_enable(true);
    clock_sim_reset();
    return 0;
}

static int teardown_clock(void **state)
{
    (void)state;
    clock_sim_enable(false);
    return 0;
}

/* Real timers, waited for by loop_run(): fire earliest first, then loop_quit(). */
static void test_timers_in_order(void **state)
{
    struct loop *loop = loop_new();
    struct recorder rec = {.loop = loop, .quit_after = 4};
    struct tag t[4] = {{&rec, 30}, {&rec, 10}, {&rec, 20}, {&rec, 31}};

    (void)state;
    assert_non_null(loop);
    assert_true(loop_add_timer(loop, 30, timer_cb, &t[0]) > 0);
    assert_true(loop_add_timer(loop, 10, timer_cb, &t[1]) > 0);
    assert_true(loop_add_timer(loop, 20, timer_cb, &t[2]) > 0);
    /* Same deadline as t[0]: ties fire in the order they were added. */
    assert_true(loop_add_timer(loop, 30, timer_cb, &t[3]) > 0);

    assert_int_equal(loop_run(loop), 44);
    assert_int_equal(rec.n, 4);
    assert_int_equal(rec.order[0], 10);
    assert_int_equal(rec.order[1], 20);
    assert_int_equal(rec.order[2], 30);
    assert_int_equal(rec.order[3], 31);
    loop_free(loop);
}

/* Timers due in the same pass fire in deadline order; one-shots are gone afterwards. */
static void test_sim_order_and_oneshot(void **state)
{
    struct loop *loop = loop_new();
    struct recorder rec = {.loop = loop};
    struct tag t[3] = {{&rec, 3}, {&rec, 1}, {&rec, 2}};

    (void)state;
    assert_true(loop_add_timer(loop, 3 * 3600000, timer_cb, &t[0]) > 0);
    assert_true(loop_add_timer(loop, 1 * 3600000, timer_cb, &t[1]) > 0);
    assert_true(loop_add_timer(loop, 2 * 3600000, timer_cb, &t[2]) > 0);
    assert_true(clock_sim_advance(4 * 3600000));
    loop_clock_changed(loop);
    assert_int_equal(loop_run_once(loop, SAFETY_MS), 3);
    assert_int_equal(rec.n, 3);
    assert_int_equal(rec.order[0], 1);
    assert_int_equal(rec.order[1], 2);
    assert_int_equal(rec.order[2], 3);

    /* Nothing left: a non-blocking pass runs nothing. */
    assert_int_equal(loop_run_once(loop, 0), 0);
    assert_int_equal(rec.n, 3);
    loop_free(loop);
}

/* A long timer fires at once after the simulated clock jumps past it. */
static void test_sim_advance_long_timer(void **state)
{
    struct loop *loop = loop_new();
    struct recorder rec = {.loop = loop, .quit_after = 1};
    struct tag t = {&rec, 7};
    int64_t before = clock_mono_ns_raw();

    (void)state;
    assert_true(loop_add_timer(loop, 7 * 86400000LL, timer_cb, &t) > 0);
    /* Not due yet. */
    assert_int_equal(loop_run_once(loop, 0), 0);
    assert_true(clock_sim_advance(7 * 86400000LL));
    loop_clock_changed(loop);
    assert_int_equal(loop_run(loop), 41);
    assert_int_equal(rec.order[0], 7);
    /* It really did not wait: well under the safety margin. */
    assert_true(clock_mono_ns_raw() - before < (int64_t)SAFETY_MS * 1000000);
    loop_free(loop);
}

/* The first of two due timers removes the second: it must not run. */
static void test_remove_timer_during_dispatch(void **state)
{
    struct loop *loop = loop_new();
    struct recorder rec = {.loop = loop};
    struct tag t[3] = {{&rec, 1}, {&rec, 2}, {&rec, 3}};
    int id2;

    (void)state;
    assert_true(loop_add_timer(loop, 1000, timer_cb, &t[0]) > 0);
    id2 = loop_add_timer(loop, 2000, timer_cb, &t[1]);
    assert_true(id2 > 0);
    assert_true(loop_add_timer(loop, 3000, timer_cb, &t[2]) > 0);
    rec.remove_id = id2;
    assert_true(clock_sim_advance(5000));
    loop_clock_changed(loop);
    assert_int_equal(loop_run_once(loop, SAFETY_MS), 2);
    assert_int_equal(rec.n, 2);
    assert_int_equal(rec.order[0], 1);
    assert_int_equal(rec.order[1], 3);
    /* Removing again, or removing a fired one-shot, is harmless. */
    loop_remove(loop, id2);
    loop_remove(loop, 12345);
    loop_free(loop);
}

/* Two readable pipes are returned by the same epoll_wait; whichever callback runs
 * first removes both watches, so the other callback must not run although epoll has
 * already handed over its event (ASan catches a use after free). */
struct pair {
    struct loop *loop;
    int id[2];
    int ran[2];
};

struct pair_tag {
    struct pair *p;
    int idx;
};

static void pair_cb(int fd, uint32_t events, void *arg)
{
    struct pair_tag *t = arg;
    char c;

    (void)events;
    assert_int_equal(read(fd, &c, 1), 1);
    t->p->ran[t->idx]++;
    loop_remove(t->p->loop, t->p->id[1 - t->idx]);
    loop_remove(t->p->loop, t->p->id[t->idx]); /* itself, while running */
}

static void test_remove_fd_during_dispatch(void **state)
{
    struct pair p = {0};
    struct pair_tag t[2] = {{&p, 0}, {&p, 1}};
    int a[2], b[2];

    (void)state;
    p.loop = loop_new();
    assert_non_null(p.loop);
    assert_int_equal(pipe(a), 0);
    assert_int_equal(pipe(b), 0);
    p.id[0] = loop_add_fd(p.loop, a[0], EPOLLIN, pair_cb, &t[0]);
    p.id[1] = loop_add_fd(p.loop, b[0], EPOLLIN, pair_cb, &t[1]);
    assert_true(p.id[0] > 0 && p.id[1] > 0 && p.id[0] != p.id[1]);
    assert_int_equal(write(a[1], "x", 1), 1);
    assert_int_equal(write(b[1], "y", 1), 1);

    assert_int_equal(loop_run_once(p.loop, SAFETY_MS), 1);
    assert_int_equal(p.ran[0] + p.ran[1], 1);

    /* Both are gone for good. */
    assert_int_equal(write(a[1], "x", 1), 1);
    assert_int_equal(write(b[1], "y", 1), 1);
    assert_int_equal(loop_run_once(p.loop, 0), 0);
    assert_int_equal(p.ran[0] + p.ran[1], 1);

    loop_free(p.loop);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
}

static void test_fd_watch(void **state)
{
    struct loop *loop = loop_new();
    struct recorder rec = {.loop = loop};
    struct tag t = {&rec, 5};
    int fds[2];
    int id;

    (void)state;
    assert_int_equal(pipe(fds), 0);
    id = loop_add_fd(loop, fds[0], EPOLLIN, fd_cb, &t);
    assert_true(id > 0);
    /* Same fd twice is refused by epoll. */
    assert_int_equal(loop_add_fd(loop, fds[0], EPOLLIN, fd_cb, &t), -EEXIST);

    assert_int_equal(loop_run_once(loop, 0), 0);
    assert_int_equal(write(fds[1], "a", 1), 1);
    assert_int_equal(loop_run_once(loop, SAFETY_MS), 1);
    assert_int_equal(rec.n, 1);
    assert_int_equal(rec.order[0], 5);

    /* Masked out: the byte waits. */
    assert_int_equal(loop_mod_fd(loop, id, 0), 0);
    assert_int_equal(write(fds[1], "b", 1), 1);
    assert_int_equal(loop_run_once(loop, 0), 0);
    assert_int_equal(loop_mod_fd(loop, id, EPOLLIN), 0);
    assert_int_equal(loop_run_once(loop, SAFETY_MS), 1);
    assert_int_equal(rec.n, 2);

    loop_remove(loop, id);
    assert_int_equal(loop_mod_fd(loop, id, EPOLLIN), -ENOENT);
    assert_int_equal(write(fds[1], "c", 1), 1);
    assert_int_equal(loop_run_once(loop, 0), 0);
    assert_int_equal(rec.n, 2);

    loop_free(loop);
    close(fds[0]);
    close(fds[1]);
}

static int signal_seen;

static void signal_cb(int signo, void *arg)
{
    (void)arg;
    signal_seen = signo;
}

static void test_signal(void **state)
{
    struct loop *loop = loop_new();
    sigset_t cur;
    int id;

    (void)state;
    id = loop_add_signal(loop, SIGUSR1, signal_cb, NULL);
    assert_true(id > 0);
    assert_int_equal(sigprocmask(SIG_BLOCK, NULL, &cur), 0);
    assert_int_equal(sigismember(&cur, SIGUSR1), 1);

    /* Blocked, so it waits as pending until the signalfd hands it over. */
    assert_int_equal(raise(SIGUSR1), 0);
    assert_int_equal(loop_run_once(loop, SAFETY_MS), 1);
    assert_int_equal(signal_seen, SIGUSR1);

    /* Removing the last watch gives the signal back unblocked, as it was found. */
    loop_remove(loop, id);
    assert_int_equal(sigprocmask(SIG_BLOCK, NULL, &cur), 0);
    assert_int_equal(sigismember(&cur, SIGUSR1), 0);
    loop_free(loop);
}

/* No timers, no fds: a pass with timeout 0 counts a wakeup and runs nothing. */
static void test_idle_wakeups(void **state)
{
    struct loop *loop = loop_new();
    struct recorder rec = {.loop = loop};
    struct tag t = {&rec, 1};
    int id;

    (void)state;
    assert_int_equal(loop_wakeups(loop), 0);
    assert_int_equal(loop_run_once(loop, 0), 0);
    assert_int_equal(loop_wakeups(loop), 1);
    /* A removed timer never fires. */
    id = loop_add_timer(loop, 1000, timer_cb, &t);
    loop_remove(loop, id);
    assert_true(clock_sim_advance(2000));
    loop_clock_changed(loop);
    assert_int_equal(loop_run_once(loop, 0), 0);
    assert_int_equal(rec.n, 0);
    loop_free(loop);
}

static void test_loop_quit_status(void **state)
{
    struct loop *loop = loop_new();
    struct recorder rec = {.loop = loop, .quit_after = 2};
    struct tag t[2] = {{&rec, 1}, {&rec, 2}};

    (void)state;
    assert_true(loop_add_timer(loop, 0, timer_cb, &t[0]) > 0);
    assert_true(loop_add_timer(loop, 1, timer_cb, &t[1]) > 0);
    assert_int_equal(loop_run(loop), 42);
    /* The loop can be run again and quits with the new status. */
    rec.quit_after = 3;
    assert_true(loop_add_timer(loop, 0, timer_cb, &t[0]) > 0);
    assert_int_equal(loop_run(loop), 43);
    loop_free(loop);
}

/* ---- clock ---- */

static void test_clock_sim(void **state)
{
    int64_t mono, wall;

    (void)state;
    clock_sim_enable(false);
    assert_false(clock_sim_advance(1000));
    clock_sim_enable(true);
    assert_true(clock_sim_enabled());
    assert_false(clock_sim_advance(0));
    mono = clock_mono_ms();
    wall = clock_wall_ms();
    assert_true(clock_sim_advance(3600000));
    assert_true(clock_mono_ms() - mono >= 3600000);
    assert_true(clock_wall_ms() - wall >= 3600000);
    clock_sim_reset();
    assert_true(clock_mono_ms() - mono < 3600000);
    /* Depends on the machine; it must only answer. */
    (void)clock_synced();
}

/* ---- timeutil ---- */

static int64_t parsed(const char *s)
{
    int64_t ms = -42;
    if (!time_parse_iso(s, &ms))
        fail_msg("time_parse_iso(\"%s\") failed", s);
    return ms;
}

static void test_time_parse(void **state)
{
    static const char *const bad[] = {
        "",
        "2026-11-28",
        "2026-11-28T18",
        "2026-11-28T18:00+01:00x",
        "2026-02-29T10:00Z", /* not a leap year */
        "2026-13-01T10:00Z",
        "2026-11-28T24:00Z",
        "2026-11-28T18:60Z",
        "2026-11-28T18:00:00.Z",
        "2026-11-28X18:00Z",
        "26-11-28T18:00Z",
        "2026-11-28T18:00+1",
    };
    int64_t ms;

    (void)state;
    assert_true(tz_set("Europe/Berlin"));
    assert_int_equal(parsed("2026-11-28T18:00+01:00"), 1795885200000LL);
    assert_int_equal(parsed("2025-11-28T18:00+01:00"), 1764349200000LL);
    assert_int_equal(parsed("2026-11-28T17:00Z"), 1795885200000LL);
    assert_int_equal(parsed("2026-11-28T17:00:00.123Z"), 1795885200123LL);
    assert_int_equal(parsed("2026-11-28T17:00:00.5Z"), 1795885200500LL);
    assert_int_equal(parsed("2026-11-28T12:30-0430"), 1795885200000LL);
    assert_int_equal(parsed("2026-11-28T18:00:30+01"), 1795885230000LL);
    assert_int_equal(parsed("2024-02-29T00:00Z"), 1709164800000LL);
    /* Local time in the process zone, with 'T' or a space. */
    assert_int_equal(parsed("2026-11-28T18:00"), 1795885200000LL);
    assert_int_equal(parsed("2026-11-28 18:00"), 1795885200000LL);
    /* Clocks went forward at 02:00 that night: 03:30 is CEST, 01:30Z. */
    assert_int_equal(parsed("2026-03-29T03:30"), 1774747800000LL);
    /* 02:30 does not exist that night. */
    assert_false(time_parse_iso("2026-03-29T02:30", &ms));
    /* 02:30 happens twice on 25 October: the first one (CEST, 00:30Z). */
    assert_int_equal(parsed("2026-10-25T02:30"), 1792888200000LL);

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (time_parse_iso(bad[i], &ms))
            fail_msg("time_parse_iso(\"%s\") accepted", bad[i]);
    }
}

static void test_time_format(void **state)
{
    char buf[40];

    (void)state;
    assert_true(tz_set("Europe/Berlin"));
    time_format_utc(1795885200123LL, buf, sizeof(buf));
    assert_string_equal(buf, "2026-11-28T17:00:00.123Z");
    time_format_utc(-1, buf, sizeof(buf));
    assert_string_equal(buf, "1969-12-31T23:59:59.999Z");
    time_format_local(1795885200123LL, buf, sizeof(buf));
    assert_string_equal(buf, "2026-11-28T18:00:00+01:00");
    time_format_local(1774747800000LL, buf, sizeof(buf));
    assert_string_equal(buf, "2026-03-29T03:30:00+02:00");
    /* What we print, we read back. */
    assert_int_equal(parsed(buf), 1774747800000LL);

    assert_true(tz_set("America/St_Johns"));
    time_format_local(1795885200000LL, buf, sizeof(buf));
    assert_string_equal(buf, "2026-11-28T13:30:00-03:30");
    assert_true(tz_set("UTC"));
    time_format_local(1795885200000LL, buf, sizeof(buf));
    assert_string_equal(buf, "2026-11-28T17:00:00+00:00");
    assert_true(tz_set("Europe/Berlin"));
}

static void test_tz(void **state)
{
    (void)state;
    assert_true(tz_exists("Europe/Berlin"));
    assert_true(tz_exists("UTC"));
    assert_false(tz_exists(""));
    assert_false(tz_exists("Europe/Atlantis"));
    assert_false(tz_exists("/usr/share/zoneinfo/UTC"));
    assert_false(tz_exists("../zoneinfo/UTC"));
    assert_false(tz_exists("Europe/../UTC"));
    assert_false(tz_exists("Europe/"));
    assert_false(tz_exists("Europe"));   /* a directory */
    assert_false(tz_exists("zone.tab")); /* a table, not a zone */
    assert_false(tz_set("Nowhere/City"));
}

static void test_duration(void **state)
{
    static const struct {
        const char *text;
        int64_t ms;
    } good[] = {
        {"500ms", 500},    {"5s", 5000},  {"2m", 120000}, {"2min", 120000}, {"1h", 3600000},
        {"7d", 604800000}, {"90", 90000}, {"0", 0},       {"0ms", 0},       {"365d", 31536000000LL},
    };
    static const char *const bad[] = {
        "",
        "s",
        "-5s",
        "+5s",
        "5 s",
        "5x",
        "5sec",
        "1.5s",
        "5S",
        "99999999999999999999",
        "9223372036854775807s",
    };
    static const struct {
        int64_t ms;
        const char *text;
    } fmt[] = {
        {0, "0s"},      {500, "500ms"},  {1500, "1500ms"}, {5000, "5s"},
        {90000, "90s"}, {900000, "15m"}, {7200000, "2h"},  {2592000000LL, "30d"},
    };
    char buf[24];
    int64_t ms;

    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (!duration_parse(good[i].text, &ms))
            fail_msg("duration_parse(\"%s\") failed", good[i].text);
        assert_int_equal(ms, good[i].ms);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (duration_parse(bad[i], &ms))
            fail_msg("duration_parse(\"%s\") accepted", bad[i]);
    }
    for (size_t i = 0; i < sizeof(fmt) / sizeof(fmt[0]); i++) {
        duration_format(fmt[i].ms, buf, sizeof(buf));
        assert_string_equal(buf, fmt[i].text);
        assert_true(duration_parse(buf, &ms));
        assert_int_equal(ms, fmt[i].ms);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timers_in_order),
        cmocka_unit_test(test_sim_order_and_oneshot),
        cmocka_unit_test(test_sim_advance_long_timer),
        cmocka_unit_test(test_remove_timer_during_dispatch),
        cmocka_unit_test(test_remove_fd_during_dispatch),
        cmocka_unit_test(test_fd_watch),
        cmocka_unit_test(test_signal),
        cmocka_unit_test(test_idle_wakeups),
        cmocka_unit_test(test_loop_quit_status),
        cmocka_unit_test(test_clock_sim),
        cmocka_unit_test(test_time_parse),
        cmocka_unit_test(test_time_format),
        cmocka_unit_test(test_tz),
        cmocka_unit_test(test_duration),
    };
    return cmocka_run_group_tests(tests, setup_clock, teardown_clock);
}
