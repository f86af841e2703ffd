/*
 * test_station.c - the compartment state machine driven through the simulated
 * hardware and the simulated clock: every path of pickup and return, every alarm,
 * and the rebuild after a crash.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon/clock.h"
#include "daemon/config.h"
#include "daemon/loop.h"
#include "daemon/station.h"
#include "daemon/store.h"

#define MIN (60LL * 1000)
#define H   (60 * MIN)

static const uint8_t UID_A[7] = {0x04, 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6};
static const uint8_t UID_X[4] = {0xDE, 0xAD, 0xBE, 0xEF};
static const uint8_t SITE_KEY[32] = {42};

struct fx {
    char dir[64];
    char db[128];
    struct config cfg;
    struct store *store;
    struct loop *loop;
    struct station *st;
};

static void line(struct line_cfg *l, const char *name)
{
    snprintf(l->name, sizeof(l->name), "%s", name);
}

static void start_station(struct fx *f)
{
    char err[256];
    f->store = store_open(f->db, err, sizeof(err));
    assert_non_null(f->store);
    f->loop = loop_new();
    assert_non_null(f->loop);
    f->st = station_new(&f->cfg, f->store, f->loop, SITE_KEY, sizeof(SITE_KEY), err, sizeof(err));
    assert_non_null(f->st);
    assert_int_equal(station_start(f->st), 0);
}

static void stop_station(struct fx *f, bool clean)
{
    if (clean)
        station_mark_clean_shutdown(f->st);
    station_free(f->st);
    store_close(f->store);
    loop_free(f->loop);
}

/* Runs every callback that is due now (timers after a clock jump). */
static void settle(struct fx *f)
{
    while (loop_run_once(f->loop, 0) > 0)
        ;
}

static void advance(struct fx *f, int64_t ms)
{
    assert_int_equal(station_sim_clock_advance(f->st, ms), 0);
    settle(f);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/lockerd-test-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->db, sizeof(f->db), "%s/lockerd.db", f->dir);

    config_defaults(&f->cfg);
    snprintf(f->cfg.station_id, sizeof(f->cfg.station_id), "test-1");
    snprintf(f->cfg.state_dir, sizeof(f->cfg.state_dir), "%s", f->dir);
    f->cfg.sim_clock = true;
    f->cfg.n_compartments = 2;
    for (int i = 0; i < 2; i++) {
        char n[32];
        struct compartment_cfg *c = &f->cfg.compartments[i];
        c->number = i + 1;
        snprintf(n, sizeof(n), "LOCK%d", i + 1);
        line(&c->lock, n);
        snprintf(n, sizeof(n), "DOOR%d", i + 1);
        line(&c->door, n);
        snprintf(n, sizeof(n), "KEY%d", i + 1);
        line(&c->key, n);
    }
    line(&f->cfg.tamper, "TAMPER");
    clock_sim_reset();
    clock_sim_enable(true);
    start_station(f);

    /* One club, one member with a card, a booking from now for two hours. */
    struct club club = {.id = "club-42", .name = "SV Warnemuende"};
    struct member m = {.id = "m-1", .name = "Anna", .role = ROLE_MEMBER};
    struct credential cr = {.id = "c-1",
                            .member_id = "m-1",
                            .status = CRED_ACTIVE,
                            .card_type = "desfire",
                            .source = "local"};
    station_uid_hmac(f->st, UID_A, sizeof(UID_A), cr.uid_hmac);
    struct booking b = {.id = "b-1",
                        .club_id = "club-42",
                        .compartment = 2,
                        .start_ms = clock_wall_ms(),
                        .end_ms = clock_wall_ms() + 2 * H,
                        .source = "local"};
    assert_int_equal(store_club_add(f->store, &club), STORE_OK);
    assert_int_equal(store_member_add(f->store, &m), STORE_OK);
    assert_int_equal(store_member_join(f->store, "m-1", "club-42"), STORE_OK);
    assert_int_equal(store_credential_add(f->store, &cr), STORE_OK);
    assert_int_equal(store_booking_add(f->store, &b), STORE_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    char cmd[160];
    stop_station(f, true);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    clock_sim_reset();
    free(f);
    return 0;
}

static int64_t count(struct fx *f, const char *type)
{
    return store_event_count(f->store, type);
}

/* Lock output value of compartment n, read from the simulated hardware. */
static int lock_value(struct fx *f, int n)
{
    char *text = station_sim_outputs(f->st);
    char needle[32];
    snprintf(needle, sizeof(needle), "\"line\":\"LOCK%d\"", n);
    char *p = strstr(text, needle);
    assert_non_null(p);
    p = strstr(p, "\"value\":");
    int v = p[8] - '0';
    free(text);
    return v;
}

static void tap(struct fx *f, const uint8_t *uid, size_t len)
{
    assert_int_equal(station_sim_tap(f->st, uid, len, CARD_KIND_DESFIRE, true), 0);
}

static void pickup(struct fx *f)
{
    tap(f, UID_A, sizeof(UID_A));
    assert_int_equal(station_comp_state(f->st, 2), CS_UNLOCKING);
    assert_int_equal(lock_value(f, 2), 1);
    assert_int_equal(station_sim_door(f->st, 2, true), 0);
    assert_int_equal(station_comp_state(f->st, 2), CS_OPEN_PICKUP);
    assert_int_equal(lock_value(f, 2), 0); /* coil off as soon as the door opens */
    assert_int_equal(station_sim_key(f->st, 2, false), 0);
    assert_int_equal(station_sim_door(f->st, 2, false), 0);
    assert_int_equal(station_comp_state(f->st, 2), CS_LOCKED_EMPTY);
}

static void test_pickup_and_return(void **state)
{
    struct fx *f = *state;
    assert_int_equal(station_comp_state(f->st, 2), CS_LOCKED_FULL);
    pickup(f);
    assert_int_equal(count(f, "access.granted"), 1);
    assert_int_equal(count(f, "key.checkedOut"), 1);
    struct booking b;
    assert_int_equal(store_booking_get(f->store, "b-1", &b), STORE_OK);
    assert_true(b.collected_ms > 0);

    tap(f, UID_A, sizeof(UID_A));
    assert_int_equal(station_comp_state(f->st, 2), CS_UNLOCKING);
    assert_int_equal(station_sim_door(f->st, 2, true), 0);
    assert_int_equal(station_comp_state(f->st, 2), CS_OPEN_RETURN);
    assert_int_equal(station_sim_key(f->st, 2, true), 0);
    assert_int_equal(station_sim_door(f->st, 2, false), 0);
    assert_int_equal(station_comp_state(f->st, 2), CS_LOCKED_FULL);
    assert_int_equal(count(f, "key.returned"), 1);
    assert_int_equal(count(f, "access.granted"), 2);
    int64_t bad;
    char why[128];
    assert_int_equal(store_events_verify(f->store, &bad, why, sizeof(why)), STORE_OK);
}

static void test_door_never_opened(void **state)
{
    struct fx *f = *state;
    tap(f, UID_A, sizeof(UID_A));
    assert_int_equal(lock_value(f, 2), 1);
    /* Margins of a second: real time also passes while the test runs. */
    advance(f, f->cfg.max_energize_ms - 1000);
    assert_int_equal(lock_value(f, 2), 1);
    advance(f, 2000);
    assert_int_equal(lock_value(f, 2), 0);
    assert_int_equal(station_comp_state(f->st, 2), CS_LOCKED_FULL);
    assert_int_equal(count(f, "pickup.aborted"), 1);
    /* The booking was not consumed: the next tap opens again. */
    pickup(f);
    assert_int_equal(count(f, "key.checkedOut"), 1);
}

static void test_door_closed_with_key_inside(void **state)
{
    struct fx *f = *state;
    tap(f, UID_A, sizeof(UID_A));
    station_sim_door(f->st, 2, true);
    station_sim_door(f->st, 2, false);
    assert_int_equal(station_comp_state(f->st, 2), CS_LOCKED_FULL);
    assert_int_equal(count(f, "pickup.aborted"), 1);
    assert_int_equal(count(f, "key.checkedOut"), 0);
    struct booking b;
    assert_int_equal(store_booking_get(f->store, "b-1", &b), STORE_OK);
    assert_int_equal(b.collected_ms, 0);
    pickup(f);
}

static void test_return_incomplete(void **state)
{
    struct fx *f = *state;
    pickup(f);
    tap(f, UID_A, sizeof(UID_A));
    station_sim_door(f->st, 2, true);
    station_sim_door(f->st, 2, false);
    assert_int_equal(count(f, "return.incomplete"), 1);
    assert_int_equal(station_comp_state(f->st, 2), CS_LOCKED_EMPTY);
    /* Still the holder's key: a second try works. */
    tap(f, UID_A, sizeof(UID_A));
    station_sim_door(f->st, 2, true);
    station_sim_key(f->st, 2, true);
    station_sim_door(f->st, 2, false);
    assert_int_equal(count(f, "key.returned"), 1);
}

static void test_forced_and_held_open(void **state)
{
    struct fx *f = *state;
    station_sim_door(f->st, 1, true);
    assert_int_equal(station_comp_state(f->st, 1), CS_FORCED_OPEN);
    assert_int_equal(count(f, "door.forced"), 1);
    station_sim_door(f->st, 1, false);
    assert_int_equal(station_comp_state(f->st, 1), CS_LOCKED_FULL);

    tap(f, UID_A, sizeof(UID_A));
    station_sim_door(f->st, 2, true);
    advance(f, f->cfg.door_open_alarm_ms - 1000);
    assert_int_equal(count(f, "door.heldOpen"), 0);
    advance(f, 2000);
    assert_int_equal(count(f, "door.heldOpen"), 1);
    assert_int_equal(station_comp_state(f->st, 2), CS_HELD_OPEN);
    /* Closing still completes the pickup it was opened for. */
    station_sim_key(f->st, 2, false);
    station_sim_door(f->st, 2, false);
    assert_int_equal(count(f, "key.checkedOut"), 1);
}

static void test_overdue(void **state)
{
    struct fx *f = *state;
    pickup(f);
    struct booking b;
    assert_int_equal(store_booking_get(f->store, "b-1", &b), STORE_OK);
    advance(f, b.end_ms + f->cfg.return_grace_ms - clock_wall_ms() - MIN);
    assert_int_equal(count(f, "key.overdue"), 0);
    advance(f, 2 * MIN);
    assert_int_equal(count(f, "key.overdue"), 1);
    advance(f, H); /* reported once */
    assert_int_equal(count(f, "key.overdue"), 1);
}

static void test_sensor_fault_and_clear(void **state)
{
    struct fx *f = *state;
    station_sim_key(f->st, 2, false); /* key vanishes behind a closed door */
    assert_int_equal(station_comp_state(f->st, 2), CS_SENSOR_FAULT);
    assert_int_equal(count(f, "sensor.fault"), 1);
    tap(f, UID_A, sizeof(UID_A));
    int rc;
    const struct decision *d = station_last_tap(f->st, &rc);
    assert_int_equal(d->reason, REFUSE_OUT_OF_SERVICE);
    assert_int_equal(lock_value(f, 2), 0);
    assert_int_equal(station_clear(f->st, 2, "tech", "sensor replaced"), 0);
    assert_int_equal(station_comp_state(f->st, 2), CS_LOCKED_EMPTY);
    assert_int_equal(station_clear(f->st, 2, "tech", "again"), STATION_ESTATE);
}

static void test_tamper(void **state)
{
    struct fx *f = *state;
    assert_int_equal(station_sim_tamper(f->st, true), 0);
    assert_int_equal(count(f, "station.tamper"), 1);
    station_sim_tamper(f->st, false);
    station_sim_tamper(f->st, true);
    assert_int_equal(count(f, "station.tamper"), 2);
}

static void test_service_open(void **state)
{
    struct fx *f = *state;
    assert_int_equal(station_service_open(f->st, 1, "alice", "key tag replaced"), 0);
    assert_int_equal(count(f, "service.open"), 1);
    assert_int_equal(lock_value(f, 1), 1);
    station_sim_door(f->st, 1, true);
    assert_int_equal(station_comp_state(f->st, 1), CS_OPEN_SERVICE);
    station_sim_door(f->st, 1, false);
    assert_int_equal(station_comp_state(f->st, 1), CS_LOCKED_FULL);
    assert_int_equal(station_service_open(f->st, 9, "alice", "x"), STATION_EINVAL);
}

static void test_refusal_logged(void **state)
{
    struct fx *f = *state;
    tap(f, UID_X, sizeof(UID_X));
    assert_int_equal(count(f, "access.denied"), 1);
    assert_int_equal(lock_value(f, 1) + lock_value(f, 2), 0);
}

/* A crash after the grant was committed but before the door opened: at restart
 * the locks are off, the unclean shutdown is logged and the pickup is aborted from
 * the sensors. */
static void test_crash_rebuild(void **state)
{
    struct fx *f = *state;
    tap(f, UID_A, sizeof(UID_A));
    station_sim_door(f->st, 2, true);
    station_sim_key(f->st, 2, false);
    /* "Crash": no clean-shutdown mark. The door is closed while lockerd is down. */
    stop_station(f, false);
    start_station(f);
    assert_int_equal(count(f, "station.uncleanShutdown"), 1);
    assert_int_equal(station_comp_state(f->st, 2), CS_OPEN_PICKUP);
    assert_int_equal(lock_value(f, 2), 0);
    station_sim_door(f->st, 2, false);
    assert_int_equal(count(f, "key.checkedOut"), 1);

    /* Crash right after a return grant; the door never opened. */
    tap(f, UID_A, sizeof(UID_A));
    stop_station(f, false);
    start_station(f);
    assert_int_equal(count(f, "station.uncleanShutdown"), 2);
    assert_int_equal(count(f, "return.incomplete"), 1);
    assert_int_equal(station_comp_state(f->st, 2), CS_LOCKED_EMPTY);
    assert_int_equal(lock_value(f, 2), 0);

    /* A clean stop logs no unclean shutdown. */
    stop_station(f, true);
    start_station(f);
    assert_int_equal(count(f, "station.uncleanShutdown"), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pickup_and_return, setup, teardown),
        cmocka_unit_test_setup_teardown(test_door_never_opened, setup, teardown),
        cmocka_unit_test_setup_teardown(test_door_closed_with_key_inside, setup, teardown),
        cmocka_unit_test_setup_teardown(test_return_incomplete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forced_and_held_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overdue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sensor_fault_and_clear, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tamper, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusal_logged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_rebuild, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
