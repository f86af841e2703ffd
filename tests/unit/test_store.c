/*
 * test_store.c - unit tests for daemon/store.c.
 *
 * Tests that need raw SQL (tampering, acknowledging outbox rows, bumping the schema
 * version) use a real file in a fresh mkdtemp() directory, which also exercises WAL,
 * and open a second SQLite connection on it the way a technician's sqlite3 shell
 * would. The rest use ":memory:".
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

#include <openssl/evp.h>
#include <sqlite3.h>

#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/store.h"

struct fixture {
    char dir[64];
    char path[128];
    struct store *s;
};

static int setup_file(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/test_store.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/lockerd.db", f->dir);
    char err[256] = "";
    f->s = store_open(f->path, err, sizeof err);
    assert_non_null(f->s);
    *state = f;
    return 0;
}

static int setup_memory(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    char err[256] = "";
    f->s = store_open(":memory:", err, sizeof err);
    assert_non_null(f->s);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    store_close(f->s);
    if (f->dir[0] != '\0') {
        static const char *const suffixes[] = {"", "-wal", "-shm"};
        for (int i = 0; i < 3; i++) {
            char p[160];
            snprintf(p, sizeof p, "%s%s", f->path, suffixes[i]);
            unlink(p);
        }
        rmdir(f->dir);
    }
    free(f);
    return 0;
}

/* A second connection, without foreign keys, as an outside tool would have. */
static sqlite3 *raw_open(const char *path)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 2000);
    return db;
}

static void raw_exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg);
}

static int64_t raw_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void raw_text(sqlite3 *db, const char *sql, char *buf, size_t len)
{
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    const unsigned char *t = sqlite3_column_text(st, 0);
    snprintf(buf, len, "%s", t != NULL ? (const char *)t : "(null)");
    sqlite3_finalize(st);
}

static int64_t add_simple(struct store *s, const char *type)
{
    struct event ev = {.type = type};
    return store_event_add(s, &ev);
}

static void assert_verify_ok(struct store *s)
{
    int64_t bad = -1;
    char why[256] = "x";
    int rc = store_events_verify(s, &bad, why, sizeof why);
    if (rc != STORE_OK)
        fail_msg("verify: rc %d, bad seq %lld: %s", rc, (long long)bad, why);
    assert_int_equal(bad, 0);
}

/* ---- schema ---- */

static void test_roles(void **state)
{
    (void)state;
    enum member_role r;
    assert_string_equal(role_name(ROLE_MEMBER), "member");
    assert_string_equal(role_name(ROLE_MANAGER), "manager");
    assert_string_equal(role_name(ROLE_TECHNICIAN), "technician");
    assert_true(role_parse("technician", &r));
    assert_int_equal(r, ROLE_TECHNICIAN);
    assert_true(role_parse("member", &r));
    assert_int_equal(r, ROLE_MEMBER);
    assert_false(role_parse("admin", &r));
    assert_false(role_parse("", &r));
    assert_false(role_parse(NULL, &r));
}

static void test_migrations(void **state)
{
    struct fixture *f = *state;
    char err[256] = "";

    assert_int_equal(store_meta_set(f->s, "k", "v"), STORE_OK);
    sqlite3 *db = raw_open(f->path);
    int64_t version = raw_int(db, "PRAGMA user_version");
    assert_true(version >= 1);
    char mode[16];
    raw_text(db, "PRAGMA journal_mode", mode, sizeof mode);
    assert_string_equal(mode, "wal");
    assert_int_equal(raw_int(db, "SELECT count(*) FROM sqlite_master WHERE name IN ('meta', "
                                 "'clubs', 'members', 'member_clubs', 'credentials', "
                                 "'bookings', 'compartments', 'events', 'outbox', "
                                 "'chain_checkpoint')"),
                     10);
    sqlite3_close(db);

    /* Reopening an up-to-date database changes nothing and keeps the data. */
    store_close(f->s);
    f->s = store_open(f->path, err, sizeof err);
    assert_non_null(f->s);
    char v[8];
    assert_int_equal(store_meta_get(f->s, "k", v, sizeof v), STORE_OK);
    assert_string_equal(v, "v");
    store_close(f->s);
    f->s = NULL;

    /* A schema from a newer lockerd is refused, not half understood. */
    db = raw_open(f->path);
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %lld", (long long)version + 1);
    raw_exec(db, sql);
    sqlite3_close(db);
    err[0] = '\0';
    assert_null(store_open(f->path, err, sizeof err));
    assert_non_null(strstr(err, "newer"));

    /* Put it back so the database opens again. */
    db = raw_open(f->path);
    snprintf(sql, sizeof sql, "PRAGMA user_version = %lld", (long long)version);
    raw_exec(db, sql);
    sqlite3_close(db);
    f->s = store_open(f->path, err, sizeof err);
    assert_non_null(f->s);
}

static void test_open_bad_path(void **state)
{
    (void)state;
    char err[256] = "";
    assert_null(store_open("/nonexistent-dir/lockerd.db", err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent-dir/lockerd.db"));
    store_close(NULL);
}

/* ---- meta, clubs, members, credentials ---- */

static void test_meta(void **state)
{
    struct fixture *f = *state;
    char buf[16];
    assert_int_equal(store_meta_get(f->s, "clean_shutdown", buf, sizeof buf), STORE_NOTFOUND);
    assert_int_equal(store_meta_set(f->s, "clean_shutdown", "1"), STORE_OK);
    assert_int_equal(store_meta_get(f->s, "clean_shutdown", buf, sizeof buf), STORE_OK);
    assert_string_equal(buf, "1");
    assert_int_equal(store_meta_set(f->s, "clean_shutdown", "0"), STORE_OK);
    assert_int_equal(store_meta_get(f->s, "clean_shutdown", buf, sizeof buf), STORE_OK);
    assert_string_equal(buf, "0");
    /* A value that does not fit is an error, never silently cut. */
    assert_int_equal(store_meta_set(f->s, "cursor", "https://city.example/feed?after=1234"),
                     STORE_OK);
    assert_int_equal(store_meta_get(f->s, "cursor", buf, sizeof buf), STORE_ERR);
}

static void test_clubs_members(void **state)
{
    struct fixture *f = *state;
    struct club c = {.id = "club-42", .name = "SV Warnemünde"};
    assert_int_equal(store_club_add(f->s, &c), STORE_OK);
    assert_int_equal(store_club_add(f->s, &c), STORE_CONFLICT);
    struct club c0 = {.id = "club-07", .name = "TSV"};
    assert_int_equal(store_club_add(f->s, &c0), STORE_OK);

    struct club got;
    assert_int_equal(store_club_get(f->s, "club-42", &got), STORE_OK);
    assert_string_equal(got.id, "club-42");
    assert_string_equal(got.name, "SV Warnemünde");
    assert_int_equal(store_club_get(f->s, "nope", &got), STORE_NOTFOUND);

    struct member m = {.id = "m-5", .name = "A. Trainer", .role = ROLE_MANAGER};
    assert_int_equal(store_member_add(f->s, &m), STORE_OK);
    assert_int_equal(store_member_add(f->s, &m), STORE_CONFLICT);
    struct member gm;
    assert_int_equal(store_member_get(f->s, "m-5", &gm), STORE_OK);
    assert_string_equal(gm.name, "A. Trainer");
    assert_int_equal(gm.role, ROLE_MANAGER);
    assert_int_equal(store_member_get(f->s, "m-6", &gm), STORE_NOTFOUND);

    assert_int_equal(store_member_join(f->s, "m-5", "club-42"), STORE_OK);
    assert_int_equal(store_member_join(f->s, "m-5", "club-42"), STORE_OK); /* idempotent */
    assert_int_equal(store_member_join(f->s, "m-5", "club-07"), STORE_OK);
    assert_int_equal(store_member_join(f->s, "m-5", "club-99"), STORE_NOTFOUND);
    assert_int_equal(store_member_join(f->s, "m-9", "club-42"), STORE_NOTFOUND);

    char clubs[4][STORE_ID_LEN];
    assert_int_equal(store_member_clubs(f->s, "m-5", clubs, 4), 2);
    assert_string_equal(clubs[0], "club-07");
    assert_string_equal(clubs[1], "club-42");
    assert_int_equal(store_member_clubs(f->s, "m-5", clubs, 1), 1);
    assert_string_equal(clubs[0], "club-07");
    assert_int_equal(store_member_clubs(f->s, "m-9", clubs, 4), 0);
}

static void hmac_fill(uint8_t h[STORE_HMAC_LEN], uint8_t v)
{
    for (int i = 0; i < STORE_HMAC_LEN; i++)
        h[i] = (uint8_t)(v + i);
}

static void test_credentials(void **state)
{
    struct fixture *f = *state;
    struct member m = {.id = "m-5", .name = "A. Trainer", .role = ROLE_MEMBER};
    assert_int_equal(store_member_add(f->s, &m), STORE_OK);

    struct credential c = {.id = "cred-77",
                           .member_id = "m-5",
                           .card_type = "desfire",
                           .valid_from_ms = 1000,
                           .valid_until_ms = 2000,
                           .status = CRED_ACTIVE,
                           .source = "city",
                           .synced_at_ms = 1500};
    hmac_fill(c.uid_hmac, 1);
    assert_int_equal(store_credential_add(f->s, &c), STORE_OK);

    struct credential got;
    assert_int_equal(store_credential_by_hmac(f->s, c.uid_hmac, &got), STORE_OK);
    assert_string_equal(got.id, "cred-77");
    assert_string_equal(got.member_id, "m-5");
    assert_memory_equal(got.uid_hmac, c.uid_hmac, STORE_HMAC_LEN);
    assert_string_equal(got.card_type, "desfire");
    assert_int_equal(got.valid_from_ms, 1000);
    assert_int_equal(got.valid_until_ms, 2000);
    assert_int_equal(got.status, CRED_ACTIVE);
    assert_string_equal(got.source, "city");
    assert_int_equal(got.synced_at_ms, 1500);

    /* Same card under another id, same id for another card, unknown member. */
    struct credential dup = c;
    snprintf(dup.id, sizeof dup.id, "cred-78");
    assert_int_equal(store_credential_add(f->s, &dup), STORE_CONFLICT);
    dup = c;
    hmac_fill(dup.uid_hmac, 2);
    assert_int_equal(store_credential_add(f->s, &dup), STORE_CONFLICT);
    snprintf(dup.id, sizeof dup.id, "cred-79");
    snprintf(dup.member_id, sizeof dup.member_id, "m-404");
    assert_int_equal(store_credential_add(f->s, &dup), STORE_NOTFOUND);
    assert_int_equal(store_credential_by_hmac(f->s, dup.uid_hmac, &got), STORE_NOTFOUND);

    assert_int_equal(store_credential_revoke(f->s, "cred-77"), STORE_OK);
    assert_int_equal(store_credential_by_hmac(f->s, c.uid_hmac, &got), STORE_OK);
    assert_int_equal(got.status, CRED_REVOKED);
    assert_int_equal(store_credential_revoke(f->s, "cred-404"), STORE_NOTFOUND);
}

/* ---- bookings ---- */

static struct booking mkbooking(const char *id, const char *club, int comp, int64_t start,
                                int64_t end)
{
    struct booking b = {.compartment = comp, .start_ms = start, .end_ms = end};
    /* The precision keeps gcc -O3 sure that nothing is cut. */
    snprintf(b.id, sizeof b.id, "%.*s", STORE_ID_LEN - 1, id);
    snprintf(b.club_id, sizeof b.club_id, "%.*s", STORE_ID_LEN - 1, club);
    snprintf(b.source, sizeof b.source, "local");
    b.status = BOOKING_ACTIVE;
    return b;
}

static void test_bookings(void **state)
{
    struct fixture *f = *state;
    struct booking b;

    b = mkbooking("b1", "k1", 1, 1000, 2000);
    assert_int_equal(store_booking_add(f->s, &b), STORE_OK);
    b = mkbooking("b2", "k1", 1, 1500, 2500);
    assert_int_equal(store_booking_add(f->s, &b), STORE_CONFLICT); /* overlaps b1 */
    b = mkbooking("b2", "k1", 1, 500, 1001);
    assert_int_equal(store_booking_add(f->s, &b), STORE_CONFLICT); /* by one ms */
    b = mkbooking("b3", "k1", 1, 2000, 3000);
    assert_int_equal(store_booking_add(f->s, &b), STORE_OK); /* adjacent after */
    b = mkbooking("b4", "k2", 1, 500, 1000);
    assert_int_equal(store_booking_add(f->s, &b), STORE_OK); /* adjacent before */
    b = mkbooking("b5", "k1", 2, 1000, 2000);
    assert_int_equal(store_booking_add(f->s, &b), STORE_OK); /* other compartment */
    b = mkbooking("b1", "k1", 3, 5000, 6000);
    assert_int_equal(store_booking_add(f->s, &b), STORE_CONFLICT); /* id taken */

    /* A cancelled booking frees its slot and never conflicts. */
    assert_int_equal(store_booking_cancel(f->s, "b1"), STORE_OK);
    assert_int_equal(store_booking_cancel(f->s, "b404"), STORE_NOTFOUND);
    b = mkbooking("b6", "k2", 1, 1200, 1800);
    assert_int_equal(store_booking_add(f->s, &b), STORE_OK);
    b = mkbooking("b7", "k2", 1, 1000, 3000);
    b.status = BOOKING_CANCELLED;
    snprintf(b.source, sizeof b.source, "city");
    assert_int_equal(store_booking_add(f->s, &b), STORE_OK);

    struct booking got;
    assert_int_equal(store_booking_get(f->s, "b1", &got), STORE_OK);
    assert_int_equal(got.status, BOOKING_CANCELLED);
    assert_int_equal(store_booking_get(f->s, "b3", &got), STORE_OK);
    assert_string_equal(got.club_id, "k1");
    assert_int_equal(got.compartment, 1);
    assert_int_equal(got.start_ms, 2000);
    assert_int_equal(got.end_ms, 3000);
    assert_int_equal(got.status, BOOKING_ACTIVE);
    assert_string_equal(got.source, "local");
    assert_int_equal(got.collected_ms, 0);
    assert_int_equal(store_booking_get(f->s, "b404", &got), STORE_NOTFOUND);

    assert_int_equal(store_booking_set_collected(f->s, "b3", 2100), STORE_OK);
    assert_int_equal(store_booking_set_collected(f->s, "b404", 2100), STORE_NOTFOUND);
    assert_int_equal(store_booking_get(f->s, "b3", &got), STORE_OK);
    assert_int_equal(got.collected_ms, 2100);

    /* Active bookings of k1 in a wide window, by start: b5 (1000), b3 (2000). */
    char clubs[2][STORE_ID_LEN] = {"k1", "k2"};
    struct booking out[8];
    assert_int_equal(store_bookings_for_clubs(f->s, clubs, 1, 0, 10000, out, 8), 2);
    assert_string_equal(out[0].id, "b5");
    assert_string_equal(out[1].id, "b3");
    /* Window [2000, 2500): b3 only; b5 ends at 2000 (exclusive), b6/b4 earlier. */
    assert_int_equal(store_bookings_for_clubs(f->s, clubs, 2, 2000, 2500, out, 8), 1);
    assert_string_equal(out[0].id, "b3");
    /* Both clubs, whole day: b4 (500), b5 (1000), b6 (1200), b3 (2000); max 3. */
    assert_int_equal(store_bookings_for_clubs(f->s, clubs, 2, 0, 10000, out, 3), 3);
    assert_string_equal(out[0].id, "b4");
    assert_string_equal(out[1].id, "b5");
    assert_string_equal(out[2].id, "b6");
    assert_int_equal(store_bookings_for_clubs(f->s, clubs, 0, 0, 10000, out, 8), 0);

    /* JSON: everything ending after 1000 (b4 ends at 1000: left out). */
    json_t *arr = store_bookings_json(f->s, 1000);
    assert_non_null(arr);
    assert_int_equal(json_array_size(arr), 5); /* b1 b5 b7 b6 b3 */
    json_t *first = json_array_get(arr, 0);
    assert_string_equal(json_string_value(json_object_get(first, "id")), "b1");
    assert_string_equal(json_string_value(json_object_get(first, "status")), "cancelled");
    assert_string_equal(json_string_value(json_object_get(first, "club")), "k1");
    assert_int_equal(json_integer_value(json_object_get(first, "start")), 1000);
    assert_int_equal(json_integer_value(json_object_get(first, "end")), 2000);
    assert_int_equal(json_integer_value(json_object_get(first, "compartment")), 1);
    assert_string_equal(json_string_value(json_object_get(first, "source")), "local");
    assert_null(json_object_get(first, "collected"));
    json_t *last = json_array_get(arr, 4);
    assert_string_equal(json_string_value(json_object_get(last, "id")), "b3");
    assert_string_equal(json_string_value(json_object_get(last, "status")), "active");
    assert_int_equal(json_integer_value(json_object_get(last, "collected")), 2100);
    json_decref(arr);
}

static void test_bookings_many_clubs(void **state)
{
    struct fixture *f = *state;
    /* 20 clubs, more than one query binds: the chunks' results must be merged in
     * start order. Club i books compartment i at 1000 * (20 - i). */
    char clubs[20][STORE_ID_LEN];
    for (int i = 0; i < 20; i++) {
        snprintf(clubs[i], STORE_ID_LEN, "club-%02d", i);
        char id[16];
        snprintf(id, sizeof id, "b-%02d", i);
        struct booking b = mkbooking(id, clubs[i], i + 1, 1000 * (20 - i), 1000 * (20 - i) + 500);
        assert_int_equal(store_booking_add(f->s, &b), STORE_OK);
    }
    struct booking out[32];
    assert_int_equal(store_bookings_for_clubs(f->s, clubs, 20, 0, 100000, out, 32), 20);
    for (int i = 0; i < 20; i++)
        assert_int_equal(out[i].start_ms, 1000 * (i + 1));
    assert_int_equal(store_bookings_for_clubs(f->s, clubs, 20, 0, 100000, out, 5), 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(out[i].start_ms, 1000 * (i + 1));
    assert_string_equal(out[0].id, "b-19"); /* in the second chunk */
    /* Only clubs 17..19 (second chunk) have bookings before 3600. */
    assert_int_equal(store_bookings_for_clubs(f->s, clubs, 20, 0, 3600, out, 32), 3);
}

/* ---- compartments ---- */

static void test_comp(void **state)
{
    struct fixture *f = *state;
    struct comp_row r;
    memset(&r, 0xff, sizeof r);
    assert_int_equal(store_comp_get(f->s, 3, &r), STORE_NOTFOUND);
    assert_int_equal(r.number, 3);
    assert_false(r.out_of_service);
    assert_string_equal(r.purpose, "");
    assert_string_equal(r.holder_member, "");
    assert_int_equal(r.due_ms, 0);

    struct comp_row w;
    memset(&w, 0, sizeof w);
    w.number = 3;
    w.out_of_service = true;
    snprintf(w.oos_reason, sizeof w.oos_reason, "door sensor stuck");
    snprintf(w.purpose, sizeof w.purpose, "pickup");
    snprintf(w.pending_member, sizeof w.pending_member, "m-5");
    snprintf(w.pending_credential, sizeof w.pending_credential, "cred-77");
    snprintf(w.pending_club, sizeof w.pending_club, "club-42");
    snprintf(w.pending_booking, sizeof w.pending_booking, "r-881");
    snprintf(w.holder_member, sizeof w.holder_member, "m-6");
    snprintf(w.holder_club, sizeof w.holder_club, "club-43");
    snprintf(w.holder_booking, sizeof w.holder_booking, "r-882");
    w.holder_since_ms = 1764352800123;
    w.due_ms = 1764360000000;
    w.overdue_reported = true;
    assert_int_equal(store_comp_save(f->s, &w), STORE_OK);

    assert_int_equal(store_comp_get(f->s, 3, &r), STORE_OK);
    assert_int_equal(r.number, 3);
    assert_true(r.out_of_service);
    assert_string_equal(r.oos_reason, w.oos_reason);
    assert_string_equal(r.purpose, w.purpose);
    assert_string_equal(r.pending_member, w.pending_member);
    assert_string_equal(r.pending_credential, w.pending_credential);
    assert_string_equal(r.pending_club, w.pending_club);
    assert_string_equal(r.pending_booking, w.pending_booking);
    assert_string_equal(r.holder_member, w.holder_member);
    assert_string_equal(r.holder_club, w.holder_club);
    assert_string_equal(r.holder_booking, w.holder_booking);
    assert_int_equal(r.holder_since_ms, w.holder_since_ms);
    assert_int_equal(r.due_ms, w.due_ms);
    assert_true(r.overdue_reported);

    /* Saving again replaces the row. */
    memset(&w, 0, sizeof w);
    w.number = 3;
    assert_int_equal(store_comp_save(f->s, &w), STORE_OK);
    assert_int_equal(store_comp_get(f->s, 3, &r), STORE_OK);
    assert_false(r.out_of_service);
    assert_string_equal(r.purpose, "");
    assert_string_equal(r.holder_member, "");
    assert_false(r.overdue_reported);
    assert_int_equal(store_comp_get(f->s, 4, &r), STORE_NOTFOUND);
}

/* ---- events ---- */

static bool is_hex(const char *s, size_t len)
{
    if (strlen(s) != len)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

static void test_events(void **state)
{
    struct fixture *f = *state;
    json_t *detail = json_pack("{s:i, s:s}", "b", 1, "a", "x");
    struct event e1 = {.type = "station.started", .detail = detail};
    assert_int_equal(store_event_add(f->s, &e1), 1);
    json_decref(detail);
    struct event e2 = {.type = "key.checkedOut",
                       .compartment = 2,
                       .member_id = "m-5",
                       .credential_id = "cred-77",
                       .club_id = "club-42",
                       .booking_id = "r-881"};
    assert_int_equal(store_event_add(f->s, &e2), 2);
    struct event e3 = {.type = "access.denied", .member_id = "", .reason = "no-booking"};
    assert_int_equal(store_event_add(f->s, &e3), 3);

    /* Invalid events are refused and do not use up a seq. */
    struct event bad = {.type = NULL};
    assert_int_equal(store_event_add(f->s, &bad), STORE_ERR);
    json_t *arr_detail = json_array();
    struct event bad2 = {.type = "x", .detail = arr_detail};
    assert_int_equal(store_event_add(f->s, &bad2), STORE_ERR);
    json_decref(arr_detail);
    struct event e4 = {.type = "service.open", .compartment = 1, .operator_name = "tech"};
    assert_int_equal(store_event_add(f->s, &e4), 4);

    assert_int_equal(store_last_seq(f->s), 4);
    assert_int_equal(store_event_count(f->s, NULL), 4);
    assert_int_equal(store_event_count(f->s, "access.denied"), 1);
    assert_int_equal(store_event_count(f->s, "door.forced"), 0);
    assert_int_equal(store_outbox_depth(f->s), 4);

    json_t *arr = store_events_json(f->s, 0, 0);
    assert_non_null(arr);
    assert_int_equal(json_array_size(arr), 4);
    json_t *j1 = json_array_get(arr, 0);
    json_t *j2 = json_array_get(arr, 1);
    json_t *j3 = json_array_get(arr, 2);
    json_t *j4 = json_array_get(arr, 3);

    assert_int_equal(json_integer_value(json_object_get(j1, "seq")), 1);
    assert_string_equal(json_string_value(json_object_get(j1, "type")), "station.started");
    const char *eid = json_string_value(json_object_get(j1, "eventId"));
    assert_non_null(eid);
    assert_int_equal(strlen(eid), 36);
    assert_int_equal(eid[8], '-');
    assert_int_equal(eid[14], '7');           /* version */
    assert_non_null(strchr("89ab", eid[19])); /* variant */
    assert_string_not_equal(eid, json_string_value(json_object_get(j2, "eventId")));
    const char *when = json_string_value(json_object_get(j1, "occurredAt"));
    assert_non_null(when);
    assert_int_equal(when[strlen(when) - 1], 'Z');
    assert_true(json_is_boolean(json_object_get(json_object_get(j1, "clock"), "synced")));
    assert_true(json_is_string(json_object_get(j1, "bootId")));
    assert_true(json_is_integer(json_object_get(j1, "monoMs")));
    assert_null(json_object_get(j1, "compartment"));
    assert_null(json_object_get(j1, "member"));
    assert_null(json_object_get(j1, "reason"));
    json_t *d = json_object_get(j1, "detail");
    assert_true(json_is_object(d));
    assert_string_equal(json_string_value(json_object_get(d, "a")), "x");
    assert_int_equal(json_integer_value(json_object_get(d, "b")), 1);
    const char *prev1 = json_string_value(json_object_get(j1, "prevHash"));
    const char *hash1 = json_string_value(json_object_get(j1, "hash"));
    assert_true(is_hex(prev1, 64));
    assert_true(is_hex(hash1, 64));
    assert_string_equal(prev1, "0000000000000000000000000000000000000000000000000000000000000000");
    assert_string_equal(json_string_value(json_object_get(j2, "prevHash")), hash1);

    assert_int_equal(json_integer_value(json_object_get(j2, "compartment")), 2);
    assert_string_equal(json_string_value(json_object_get(j2, "member")), "m-5");
    assert_string_equal(json_string_value(json_object_get(j2, "credential")), "cred-77");
    assert_string_equal(json_string_value(json_object_get(j2, "club")), "club-42");
    assert_string_equal(json_string_value(json_object_get(j2, "booking")), "r-881");
    assert_null(json_object_get(j2, "detail"));
    assert_null(json_object_get(j3, "member")); /* "" is not applicable */
    assert_string_equal(json_string_value(json_object_get(j3, "reason")), "no-booking");
    assert_string_equal(json_string_value(json_object_get(j4, "operator")), "tech");
    json_decref(arr);

    arr = store_events_json(f->s, 1, 2);
    assert_int_equal(json_array_size(arr), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(arr, 0), "seq")), 2);
    json_decref(arr);
    arr = store_events_json(f->s, 4, 0);
    assert_int_equal(json_array_size(arr), 0);
    json_decref(arr);

    assert_verify_ok(f->s);

    /* The stored detail is compact with sorted keys: it is what the hash covers. */
    sqlite3 *db = raw_open(f->path);
    char text[64];
    raw_text(db, "SELECT detail FROM events WHERE seq = 1", text, sizeof text);
    assert_string_equal(text, "{\"a\":\"x\",\"b\":1}");
    assert_int_equal(raw_int(db, "SELECT compartment IS NULL FROM events WHERE seq = 1"), 1);
    /* Edits are refused by the schema itself. */
    assert_int_not_equal(
        sqlite3_exec(db, "UPDATE events SET type = 'x' WHERE seq = 1", NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
}

static void test_tamper_detail(void **state)
{
    struct fixture *f = *state;
    for (int i = 0; i < 5; i++) {
        json_t *detail = json_pack("{s:i}", "n", i);
        struct event ev = {.type = "key.returned", .compartment = 1, .detail = detail};
        assert_int_equal(store_event_add(f->s, &ev), i + 1);
        json_decref(detail);
    }
    assert_verify_ok(f->s);

    /* An attacker with the file can drop the trigger; the chain still notices. */
    sqlite3 *db = raw_open(f->path);
    raw_exec(db, "DROP TRIGGER events_append_only;"
                 "UPDATE events SET detail = '{\"n\":99}' WHERE seq = 3");
    sqlite3_close(db);

    int64_t bad = 0;
    char why[256] = "";
    assert_int_equal(store_events_verify(f->s, &bad, why, sizeof why), STORE_CONFLICT);
    assert_int_equal(bad, 3);
    assert_non_null(strstr(why, "row 3"));
    assert_non_null(strstr(why, "content"));
}

static void test_tamper_null_vs_empty(void **state)
{
    struct fixture *f = *state;
    struct event ev = {.type = "access.denied", .reason = "unknown-card"};
    assert_int_equal(store_event_add(f->s, &ev), 1);
    assert_int_equal(store_event_add(f->s, &ev), 2);
    sqlite3 *db = raw_open(f->path);
    raw_exec(db, "DROP TRIGGER events_append_only; DROP TRIGGER events_erase_only;"
                 "UPDATE events SET member_id = '' WHERE seq = 2");
    sqlite3_close(db);
    int64_t bad = 0;
    char why[256] = "";
    assert_int_equal(store_events_verify(f->s, &bad, why, sizeof why), STORE_CONFLICT);
    assert_int_equal(bad, 2);
}

static void test_delete_middle(void **state)
{
    struct fixture *f = *state;
    for (int i = 1; i <= 5; i++)
        assert_int_equal(add_simple(f->s, "key.checkedOut"), i);
    sqlite3 *db = raw_open(f->path);
    raw_exec(db, "DELETE FROM outbox WHERE seq = 3; DELETE FROM events WHERE seq = 3");
    sqlite3_close(db);

    int64_t bad = 0;
    char why[256] = "";
    assert_int_equal(store_events_verify(f->s, &bad, why, sizeof why), STORE_CONFLICT);
    assert_int_equal(bad, 4);
    assert_non_null(strstr(why, "row 4"));
}

static void test_delete_head_without_checkpoint(void **state)
{
    struct fixture *f = *state;
    for (int i = 1; i <= 3; i++)
        assert_int_equal(add_simple(f->s, "key.checkedOut"), i);
    sqlite3 *db = raw_open(f->path);
    raw_exec(db, "DELETE FROM outbox WHERE seq = 1; DELETE FROM events WHERE seq = 1");
    sqlite3_close(db);
    int64_t bad = 0;
    char why[256] = "";
    assert_int_equal(store_events_verify(f->s, &bad, why, sizeof why), STORE_CONFLICT);
    assert_int_equal(bad, 2);
}

static void test_prune(void **state)
{
    struct fixture *f = *state;
    for (int i = 1; i <= 10; i++)
        assert_int_equal(add_simple(f->s, "key.checkedOut"), i);

    /* The city acknowledged 1-5 and 7; 6, 8, 9 and 10 are still unsent. Retention
     * wins: all ten go, and the log.pruned event says how many were unsent. */
    sqlite3 *db = raw_open(f->path);
    raw_exec(db, "DELETE FROM outbox WHERE seq <= 5 OR seq = 7");
    sqlite3_close(db);

    int64_t future = clock_wall_ms() + 60000;
    assert_int_equal(store_prune(f->s, future), 10);
    assert_verify_ok(f->s);
    assert_int_equal(store_last_seq(f->s), 11);
    assert_int_equal(store_event_count(f->s, NULL), 1);
    assert_int_equal(store_event_count(f->s, "log.pruned"), 1);
    assert_int_equal(store_outbox_depth(f->s), 1); /* the log.pruned event itself */

    json_t *arr = store_events_json(f->s, 0, 0);
    json_t *last = json_array_get(arr, 0);
    assert_string_equal(json_string_value(json_object_get(last, "type")), "log.pruned");
    json_t *d = json_object_get(last, "detail");
    assert_int_equal(json_integer_value(json_object_get(d, "upToSeq")), 10);
    assert_int_equal(json_integer_value(json_object_get(d, "count")), 10);
    assert_int_equal(json_integer_value(json_object_get(d, "unsent")), 4);
    json_decref(arr);

    db = raw_open(f->path);
    assert_int_equal(raw_int(db, "SELECT seq FROM chain_checkpoint WHERE id = 1"), 10);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM outbox WHERE seq NOT IN "
                                 "(SELECT seq FROM events)"),
                     0);
    sqlite3_close(db);

    /* Nothing older than the cut left but the first log.pruned: it goes too, and
     * verification starts from the new checkpoint. */
    assert_int_equal(store_prune(f->s, future), 1);
    assert_int_equal(store_event_count(f->s, NULL), 1);
    assert_int_equal(store_last_seq(f->s), 12);
    assert_verify_ok(f->s);

    /* The chain continues across a restart. */
    char err[256];
    store_close(f->s);
    f->s = store_open(f->path, err, sizeof err);
    assert_non_null(f->s);
    assert_int_equal(add_simple(f->s, "station.started"), 13);
    assert_verify_ok(f->s);
}

static void test_prune_keeps_recent(void **state)
{
    struct fixture *f = *state;
    for (int i = 1; i <= 4; i++)
        assert_int_equal(add_simple(f->s, "key.returned"), i);
    /* Nothing older than the cut: nothing pruned, no log.pruned event. */
    assert_int_equal(store_prune(f->s, clock_wall_ms() - 60000), 0);
    assert_int_equal(store_event_count(f->s, NULL), 4);
    assert_int_equal(store_outbox_depth(f->s), 4);
    assert_int_equal(store_event_count(f->s, "log.pruned"), 0);
    assert_verify_ok(f->s);
}

static void test_prune_by_time(void **state)
{
    struct fixture *f = *state;
    clock_sim_enable(true);
    for (int i = 1; i <= 3; i++)
        assert_int_equal(add_simple(f->s, "key.checkedOut"), i);
    assert_true(clock_sim_advance(3600 * 1000));
    int64_t cut = clock_wall_ms();
    for (int i = 4; i <= 6; i++)
        assert_int_equal(add_simple(f->s, "key.returned"), i);
    sqlite3 *db = raw_open(f->path);
    raw_exec(db, "DELETE FROM outbox");
    sqlite3_close(db);

    assert_int_equal(store_prune(f->s, cut), 3);
    assert_int_equal(store_event_count(f->s, "key.checkedOut"), 0);
    assert_int_equal(store_event_count(f->s, "key.returned"), 3);
    assert_verify_ok(f->s);
    clock_sim_enable(false);
}

static void test_chain_from_checkpoint_only(void **state)
{
    struct fixture *f = *state;
    for (int i = 1; i <= 3; i++)
        assert_int_equal(add_simple(f->s, "key.checkedOut"), i);
    store_close(f->s);
    f->s = NULL;

    /* An empty log with a checkpoint (everything pruned by hand the way store_prune
     * would): the next event continues after the checkpoint, seq is not reused. */
    sqlite3 *db = raw_open(f->path);
    raw_exec(db, "INSERT INTO chain_checkpoint (id, seq, hash, pruned_at)"
                 " SELECT 1, seq, hash, 0 FROM events WHERE seq = 3;"
                 "DELETE FROM outbox; DELETE FROM events");
    sqlite3_close(db);
    char err[256];
    f->s = store_open(f->path, err, sizeof err);
    assert_non_null(f->s);
    assert_int_equal(add_simple(f->s, "station.started"), 4);
    assert_verify_ok(f->s);
}

static void test_transactions(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(add_simple(f->s, "station.started"), 1);

    /* Nested commit, outer rollback: nothing of it stays. */
    assert_int_equal(store_begin(f->s), STORE_OK);
    assert_int_equal(add_simple(f->s, "key.checkedOut"), 2);
    assert_int_equal(store_begin(f->s), STORE_OK);
    assert_int_equal(add_simple(f->s, "key.returned"), 3);
    assert_int_equal(store_commit(f->s), STORE_OK);
    store_rollback(f->s);
    assert_int_equal(store_last_seq(f->s), 1);
    assert_int_equal(store_outbox_depth(f->s), 1);
    /* The in-memory chain head was put back: the next event chains to seq 1. */
    assert_int_equal(add_simple(f->s, "key.checkedOut"), 2);
    assert_verify_ok(f->s);

    /* Inner rollback dooms the whole transaction. */
    assert_int_equal(store_begin(f->s), STORE_OK);
    struct club c = {.id = "club-1", .name = "One"};
    assert_int_equal(store_club_add(f->s, &c), STORE_OK);
    assert_int_equal(add_simple(f->s, "key.checkedOut"), 3);
    assert_int_equal(store_begin(f->s), STORE_OK);
    assert_int_equal(add_simple(f->s, "key.returned"), 4);
    store_rollback(f->s);
    assert_int_equal(add_simple(f->s, "key.returned"), STORE_ERR);
    struct club c2 = {.id = "club-2", .name = "Two"};
    assert_int_equal(store_club_add(f->s, &c2), STORE_ERR);
    assert_int_equal(store_begin(f->s), STORE_ERR);
    assert_int_equal(store_commit(f->s), STORE_ERR);
    struct club got;
    assert_int_equal(store_club_get(f->s, "club-1", &got), STORE_NOTFOUND);
    assert_int_equal(store_club_get(f->s, "club-2", &got), STORE_NOTFOUND);
    assert_int_equal(store_last_seq(f->s), 2);
    assert_int_equal(add_simple(f->s, "key.returned"), 3);
    assert_verify_ok(f->s);

    /* An expected outcome (conflict) does not spoil the transaction. */
    assert_int_equal(store_begin(f->s), STORE_OK);
    assert_int_equal(store_club_add(f->s, &c), STORE_OK);
    assert_int_equal(store_club_add(f->s, &c), STORE_CONFLICT);
    assert_int_equal(store_begin(f->s), STORE_OK);
    assert_int_equal(add_simple(f->s, "key.checkedOut"), 4);
    assert_int_equal(store_commit(f->s), STORE_OK);
    assert_int_equal(store_commit(f->s), STORE_OK);
    assert_int_equal(store_club_get(f->s, "club-1", &got), STORE_OK);
    assert_int_equal(store_last_seq(f->s), 4);

    /* Unbalanced calls are refused. */
    assert_int_equal(store_commit(f->s), STORE_ERR);
    store_rollback(f->s);
    assert_int_equal(add_simple(f->s, "key.returned"), 5);
    assert_verify_ok(f->s);

    /* Committed transactions survive a reopen. */
    char err[256];
    store_close(f->s);
    f->s = store_open(f->path, err, sizeof err);
    assert_non_null(f->s);
    assert_int_equal(store_last_seq(f->s), 5);
    assert_int_equal(store_club_get(f->s, "club-1", &got), STORE_OK);
    assert_verify_ok(f->s);
}

static void test_close_inside_transaction(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(store_begin(f->s), STORE_OK);
    assert_int_equal(add_simple(f->s, "key.checkedOut"), 1);
    char err[256];
    store_close(f->s);
    f->s = store_open(f->path, err, sizeof err);
    assert_non_null(f->s);
    assert_int_equal(store_last_seq(f->s), 0);
    assert_int_equal(add_simple(f->s, "key.checkedOut"), 1);
    assert_verify_ok(f->s);
}

static void test_integrity(void **state)
{
    struct fixture *f = *state;
    for (int i = 0; i < 20; i++)
        assert_true(add_simple(f->s, "key.checkedOut") > 0);
    char why[256] = "x";
    assert_int_equal(store_integrity_check(f->s, why, sizeof why), STORE_OK);
    assert_string_equal(why, "");
}

/* ---- subject digests, erasure, export, migration ---- */

/* SHA-256 through OpenSSL's EVP interface, written out independently of store.c. */
static EVP_MD_CTX *sha_init(void)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    assert_non_null(c);
    assert_int_equal(EVP_DigestInit_ex(c, EVP_sha256(), NULL), 1);
    return c;
}

static void sha_update(EVP_MD_CTX *c, const void *p, size_t n)
{
    assert_int_equal(EVP_DigestUpdate(c, p, n), 1);
}

static void sha_final(EVP_MD_CTX *c, unsigned char out[32])
{
    unsigned int len = 0;
    assert_int_equal(EVP_DigestFinal_ex(c, out, &len), 1);
    assert_int_equal(len, 32);
    EVP_MD_CTX_free(c);
}

/* enc() of the chain encoding. */
static void enc(EVP_MD_CTX *c, const unsigned char *p, int n)
{
    if (p == NULL) {
        sha_update(c, "\0", 1);
        return;
    }
    unsigned char head[5] = {1, (unsigned char)(n >> 24), (unsigned char)(n >> 16),
                             (unsigned char)(n >> 8), (unsigned char)n};
    sha_update(c, head, 5);
    sha_update(c, p, (size_t)n);
}

/* Hash of one row as documented: version 1 hashes columns 0..14 as they are;
 * version 2 puts hex(subject_digest) in place of member_id and credential_id. */
static void doc_hash(sqlite3_stmt *st, const unsigned char prev[32], int version,
                     unsigned char out[32])
{
    EVP_MD_CTX *c = sha_init();
    sha_update(c, prev, 32);
    for (int i = 0; i < 15; i++) {
        if (version == 2 && i == 9)
            continue;
        if (version == 2 && i == 8) {
            const unsigned char *d = sqlite3_column_blob(st, 16);
            char h[65];
            for (int k = 0; d != NULL && k < 32; k++)
                snprintf(h + 2 * k, 3, "%02x", d[k]);
            enc(c, d != NULL ? (const unsigned char *)h : NULL, 64);
            continue;
        }
        const unsigned char *t = sqlite3_column_text(st, i);
        enc(c, t, sqlite3_column_bytes(st, i));
    }
    sha_final(c, out);
}

static void add_member_with_card(struct store *s, const char *mid, const char *name,
                                 const char *cid, uint8_t hmac_byte)
{
    struct member m = {.role = ROLE_MEMBER};
    snprintf(m.id, sizeof m.id, "%s", mid);
    snprintf(m.name, sizeof m.name, "%s", name);
    assert_int_equal(store_member_add(s, &m), STORE_OK);
    assert_int_equal(store_member_join(s, mid, "club-1"), STORE_OK);
    struct credential c = {.status = CRED_ACTIVE};
    snprintf(c.id, sizeof c.id, "%s", cid);
    snprintf(c.member_id, sizeof c.member_id, "%s", mid);
    memset(c.uid_hmac, hmac_byte, sizeof c.uid_hmac);
    snprintf(c.card_type, sizeof c.card_type, "desfire");
    snprintf(c.source, sizeof c.source, "local");
    assert_int_equal(store_credential_add(s, &c), STORE_OK);
}

static void test_subject_digest(void **state)
{
    struct fixture *f = *state;
    struct event e1 = {.type = "station.started"};
    struct event e2 = {.type = "key.checkedOut",
                       .compartment = 1,
                       .member_id = "m-1",
                       .credential_id = "c-1",
                       .club_id = "club-1",
                       .booking_id = "b-1"};
    struct event e3 = {.type = "card.revoked", .credential_id = "c-1", .operator_name = "ops"};
    assert_int_equal(store_event_add(f->s, &e1), 1);
    assert_int_equal(store_event_add(f->s, &e2), 2);
    assert_int_equal(store_event_add(f->s, &e3), 3);
    assert_verify_ok(f->s);

    /* The stored hashes are the documented encoding. */
    sqlite3 *db = raw_open(f->path);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT seq, event_id, type, occurred_ms, mono_ms,"
                                        " clock_synced, boot_id, compartment, member_id,"
                                        " credential_id, club_id, booking_id, reason, operator,"
                                        " detail, subject_salt, subject_digest, prev_hash, hash"
                                        " FROM events ORDER BY seq",
                                        -1, &st, NULL),
                     SQLITE_OK);
    unsigned char prev[32] = {0};
    int rows = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        unsigned char want[32];
        doc_hash(st, prev, 2, want);
        assert_int_equal(sqlite3_column_bytes(st, 18), 32);
        assert_memory_equal(sqlite3_column_blob(st, 18), want, 32);
        /* Salt and digest exactly when there is a subject; digest as documented. */
        bool subject =
            sqlite3_column_type(st, 8) != SQLITE_NULL || sqlite3_column_type(st, 9) != SQLITE_NULL;
        assert_int_equal(sqlite3_column_type(st, 15) != SQLITE_NULL, subject);
        assert_int_equal(sqlite3_column_type(st, 16) != SQLITE_NULL, subject);
        if (subject) {
            unsigned char d[32];
            EVP_MD_CTX *c = sha_init();
            assert_int_equal(sqlite3_column_bytes(st, 15), 16);
            sha_update(c, sqlite3_column_blob(st, 15), 16);
            enc(c, sqlite3_column_text(st, 8), sqlite3_column_bytes(st, 8));
            enc(c, sqlite3_column_text(st, 9), sqlite3_column_bytes(st, 9));
            sha_final(c, d);
            assert_memory_equal(sqlite3_column_blob(st, 16), d, 32);
        }
        memcpy(prev, sqlite3_column_blob(st, 18), 32);
        rows++;
    }
    sqlite3_finalize(st);
    assert_int_equal(rows, 3);

    /* Events JSON shows the ids and the digest. */
    json_t *arr = store_events_json(f->s, 1, 1);
    json_t *e = json_array_get(arr, 0);
    assert_string_equal(json_string_value(json_object_get(e, "member")), "m-1");
    assert_string_equal(json_string_value(json_object_get(e, "credential")), "c-1");
    assert_int_equal(strlen(json_string_value(json_object_get(e, "subjectDigest"))), 64);
    assert_int_equal(strlen(json_string_value(json_object_get(e, "subjectSalt"))), 32);
    json_decref(arr);

    /* Swapping the member id is caught by the digest, not only by the chain. */
    raw_exec(db, "DROP TRIGGER events_append_only; DROP TRIGGER events_erase_only;"
                 "UPDATE events SET member_id = 'm-2' WHERE seq = 2");
    sqlite3_close(db);
    int64_t bad = 0;
    char why[256] = "";
    assert_int_equal(store_events_verify(f->s, &bad, why, sizeof why), STORE_CONFLICT);
    assert_int_equal(bad, 2);
    assert_non_null(strstr(why, "subject digest"));
}

/* True if needle occurs in the file (any case-sensitive byte match). */
static bool file_contains(const char *path, const char *needle)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return false;
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf != NULL && (n = fread(buf + len, 1, cap - len, fp)) > 0) {
        len += n;
        if (len == cap) {
            char *p = realloc(buf, cap * 2);
            if (p == NULL)
                break;
            buf = p;
            cap *= 2;
        }
    }
    fclose(fp);
    bool found = buf != NULL && memmem(buf, len, needle, strlen(needle)) != NULL;
    free(buf);
    return found;
}

static void test_erase(void **state)
{
    struct fixture *f = *state;
    struct club c = {.id = "club-1", .name = "One"};
    assert_int_equal(store_club_add(f->s, &c), STORE_OK);
    add_member_with_card(f->s, "m-77aa01", "Zelda Quartermain", "c-77cc01", 0x5a);
    add_member_with_card(f->s, "m-other", "Other Person", "c-other", 0x33);
    struct credential c2 = {.status = CRED_REVOKED};
    snprintf(c2.id, sizeof c2.id, "c-77cc02");
    snprintf(c2.member_id, sizeof c2.member_id, "m-77aa01");
    memset(c2.uid_hmac, 0x6b, sizeof c2.uid_hmac);
    snprintf(c2.card_type, sizeof c2.card_type, "uid");
    snprintf(c2.source, sizeof c2.source, "local");
    assert_int_equal(store_credential_add(f->s, &c2), STORE_OK);

    struct event evs[] = {
        {.type = "member.created", .member_id = "m-77aa01", .operator_name = "ops"},
        {.type = "card.added", .member_id = "m-77aa01", .credential_id = "c-77cc01"},
        {.type = "key.checkedOut",
         .compartment = 1,
         .member_id = "m-77aa01",
         .credential_id = "c-77cc01",
         .club_id = "club-1",
         .booking_id = "b-1"},
        {.type = "key.checkedOut",
         .compartment = 2,
         .member_id = "m-other",
         .credential_id = "c-other",
         .club_id = "club-1"},
        {.type = "card.revoked", .credential_id = "c-77cc02"},
        {.type = "station.started"},
    };
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
        assert_int_equal(store_event_add(f->s, &evs[i]), (int64_t)i + 1);

    /* Export: member, clubs, both cards with their HMAC, the four events. */
    int rc = 0;
    json_t *x = store_member_export(f->s, "m-77aa01", &rc);
    assert_int_equal(rc, STORE_OK);
    assert_non_null(x);
    assert_string_equal(json_string_value(json_object_get(json_object_get(x, "member"), "name")),
                        "Zelda Quartermain");
    assert_int_equal(json_array_size(json_object_get(x, "clubs")), 1);
    json_t *creds = json_object_get(x, "credentials");
    assert_int_equal(json_array_size(creds), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(creds, 0), "uidHmac")),
                        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a");
    json_t *xe = json_object_get(x, "events");
    assert_int_equal(json_array_size(xe), 4);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(xe, 3), "seq")), 5);
    json_decref(x);
    assert_null(store_member_export(f->s, "m-nobody", &rc));
    assert_int_equal(rc, STORE_NOTFOUND);

    /* A member who holds a key cannot be erased: the return needs the id. */
    struct comp_row row = {.number = 1};
    snprintf(row.holder_member, sizeof row.holder_member, "m-77aa01");
    assert_int_equal(store_comp_save(f->s, &row), STORE_OK);
    struct erase_result er;
    assert_int_equal(store_member_erase(f->s, "m-77aa01", &er), STORE_CONFLICT);
    assert_int_equal(er.compartment, 1);
    row.holder_member[0] = '\0';
    assert_int_equal(store_comp_save(f->s, &row), STORE_OK);

    assert_int_equal(store_member_erase(f->s, "m-nobody", &er), STORE_NOTFOUND);
    assert_int_equal(store_member_erase(f->s, "m-77aa01", &er), STORE_OK);
    assert_int_equal(er.events, 4);
    assert_int_equal(er.credentials, 2);
    assert_int_equal(er.clubs, 1);
    assert_verify_ok(f->s);
    assert_int_equal(store_event_erased_count(f->s), 4);
    assert_null(store_member_export(f->s, "m-77aa01", &rc));
    assert_int_equal(rc, STORE_NOTFOUND);
    struct member m;
    assert_int_equal(store_member_get(f->s, "m-other", &m), STORE_OK);

    json_t *arr = store_events_json(f->s, 0, 0);
    assert_string_equal(json_string_value(json_object_get(json_array_get(arr, 2), "member")),
                        STORE_ERASED_ID);
    assert_string_equal(json_string_value(json_object_get(json_array_get(arr, 2), "credential")),
                        STORE_ERASED_ID);
    assert_null(json_object_get(json_array_get(arr, 2), "subjectSalt"));
    assert_string_equal(json_string_value(json_object_get(json_array_get(arr, 3), "member")),
                        "m-other");
    assert_string_equal(json_string_value(json_object_get(json_array_get(arr, 4), "credential")),
                        STORE_ERASED_ID);
    assert_null(json_object_get(json_array_get(arr, 4), "member"));
    json_decref(arr);

    /* Nothing of the member is left in the files once the WAL is checkpointed. */
    assert_int_equal(store_checkpoint(f->s), STORE_OK);
    char wal[160];
    snprintf(wal, sizeof wal, "%s-wal", f->path);
    static const char *const gone[] = {"Zelda Quartermain", "m-77aa01", "c-77cc01", "c-77cc02"};
    for (size_t i = 0; i < sizeof gone / sizeof gone[0]; i++) {
        if (file_contains(f->path, gone[i]) || file_contains(wal, gone[i]))
            fail_msg("'%s' is still in the database files", gone[i]);
    }
    assert_true(file_contains(f->path, "Other Person"));

    /* The triggers allow erasing and nothing else. */
    sqlite3 *db = raw_open(f->path);
    assert_int_not_equal(
        sqlite3_exec(db, "UPDATE events SET member_id = 'm-x' WHERE seq = 4", NULL, NULL, NULL),
        SQLITE_OK);
    assert_int_not_equal(
        sqlite3_exec(db, "UPDATE events SET member_id = 'erased' WHERE seq = 4", NULL, NULL, NULL),
        SQLITE_OK); /* the salt must go with it */
    assert_int_not_equal(
        sqlite3_exec(db, "UPDATE events SET reason = 'x' WHERE seq = 3", NULL, NULL, NULL),
        SQLITE_OK);
    /* Someone who drops the triggers and puts an id on an erased row is caught. */
    raw_exec(db, "DROP TRIGGER events_erase_only;"
                 "UPDATE events SET member_id = 'm-77aa01' WHERE seq = 3");
    sqlite3_close(db);
    int64_t bad = 0;
    char why[256] = "";
    assert_int_equal(store_events_verify(f->s, &bad, why, sizeof why), STORE_CONFLICT);
    assert_int_equal(bad, 3);
    assert_non_null(strstr(why, "erased"));
}

/* Turns a fresh database of the current version back into version 1 as it was
 * shipped: none of version 3's sync tables, no subject columns, the old trigger,
 * hashes in the old encoding. */
static void downgrade_to_v1(const char *path, bool break_row_2)
{
    sqlite3 *db = raw_open(path);
    raw_exec(db, "DROP TABLE IF EXISTS member_pins;"); /* version 4 */
    raw_exec(db, "DROP TABLE dead_letters; DROP INDEX credentials_source;"
                 "DROP INDEX bookings_source; ALTER TABLE credentials DROP COLUMN clubs;");
    raw_exec(db, "DROP TRIGGER events_append_only; DROP TRIGGER events_erase_only;"
                 "DROP INDEX events_booking; DROP INDEX events_returns; DROP INDEX bookings_start;"
                 "ALTER TABLE events DROP COLUMN subject_salt;"
                 "ALTER TABLE events DROP COLUMN subject_digest;");
    sqlite3_stmt *st, *up;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT seq, event_id, type, occurred_ms, mono_ms,"
                                        " clock_synced, boot_id, compartment, member_id,"
                                        " credential_id, club_id, booking_id, reason, operator,"
                                        " detail FROM events ORDER BY seq",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "UPDATE events SET prev_hash = ?2, hash = ?3"
                                        " WHERE seq = ?1",
                                        -1, &up, NULL),
                     SQLITE_OK);
    unsigned char prev[32] = {0};
    while (sqlite3_step(st) == SQLITE_ROW) {
        unsigned char h[32];
        doc_hash(st, prev, 1, h);
        sqlite3_reset(up);
        sqlite3_bind_int64(up, 1, sqlite3_column_int64(st, 0));
        sqlite3_bind_blob(up, 2, prev, 32, SQLITE_TRANSIENT);
        sqlite3_bind_blob(up, 3, h, 32, SQLITE_TRANSIENT);
        assert_int_equal(sqlite3_step(up), SQLITE_DONE);
        memcpy(prev, h, 32);
    }
    sqlite3_finalize(st);
    sqlite3_finalize(up);
    if (break_row_2)
        raw_exec(db, "UPDATE events SET reason = 'edited' WHERE seq = 2");
    raw_exec(db, "CREATE TRIGGER events_append_only BEFORE UPDATE ON events"
                 "  BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;"
                 "PRAGMA user_version = 1");
    sqlite3_close(db);
}

static void migrate_from_v1(struct fixture *f, bool broken)
{
    struct event e1 = {.type = "station.started"};
    struct event e2 = {.type = "key.checkedOut",
                       .compartment = 1,
                       .member_id = "m-1",
                       .credential_id = "c-1",
                       .club_id = "club-1",
                       .booking_id = "b-1"};
    struct event e3 = {.type = "access.denied", .member_id = "m-1", .reason = "no-booking"};
    assert_int_equal(store_event_add(f->s, &e1), 1);
    assert_int_equal(store_event_add(f->s, &e2), 2);
    assert_int_equal(store_event_add(f->s, &e3), 3);
    store_close(f->s);
    f->s = NULL;
    downgrade_to_v1(f->path, broken);

    char err[256] = "";
    f->s = store_open(f->path, err, sizeof err);
    if (f->s == NULL)
        fail_msg("open after downgrade: %s", err);
    sqlite3 *db = raw_open(f->path);
    assert_int_equal(raw_int(db, "PRAGMA user_version"), 4);
    char old[80];
    raw_text(db, "SELECT hex(hash) FROM events WHERE seq = 3", old, sizeof old);
    sqlite3_close(db);
    /* The rehashed log verifies, and says what happened. */
    assert_verify_ok(f->s);
    json_t *arr = store_events_json(f->s, 0, 0);
    assert_int_equal(json_array_size(arr), 4);
    json_t *e = json_array_get(arr, 3);
    assert_string_equal(json_string_value(json_object_get(e, "type")), "log.rechained");
    json_t *d = json_object_get(e, "detail");
    assert_int_equal(json_integer_value(json_object_get(d, "count")), 3);
    assert_int_equal(json_integer_value(json_object_get(d, "fromSeq")), 1);
    assert_int_equal(json_integer_value(json_object_get(d, "toSeq")), 3);
    assert_int_equal(strlen(json_string_value(json_object_get(d, "oldHash"))), 64);
    assert_int_equal(json_is_true(json_object_get(d, "oldChainIntact")), !broken);
    if (broken)
        assert_int_equal(json_integer_value(json_object_get(d, "oldFirstBadSeq")), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(arr, 1), "member")),
                        "m-1");
    json_decref(arr);

    /* Only once. */
    store_close(f->s);
    f->s = store_open(f->path, err, sizeof err);
    assert_non_null(f->s);
    assert_int_equal(store_event_count(f->s, "log.rechained"), 1);
    assert_verify_ok(f->s);
}

static void test_migrate_v1(void **state)
{
    migrate_from_v1(*state, false);
}

static void test_migrate_v1_broken(void **state)
{
    migrate_from_v1(*state, true);
}

/* The status of booking id, which must exist. */
static enum booking_status status_of(struct store *s, const char *id)
{
    struct booking b;
    assert_int_equal(store_booking_get(s, id, &b), STORE_OK);
    return b.status;
}

/* City records: upsert, several compartments, move, tombstones, local records
 * untouched, the credential's own clubs, the sweep after a full resync. */
static void test_city_records(void **state)
{
    struct fixture *f = *state;
    struct city_reservation r = {.id = "r-1",
                                 .club_id = "club-42",
                                 .club_name = "SV",
                                 .start_ms = 1000,
                                 .end_ms = 2000,
                                 .compartments = {2},
                                 .ncompartments = 1};
    assert_int_equal(store_city_reservation_apply(f->s, &r, 10), STORE_OK);
    struct booking b;
    assert_int_equal(store_booking_get(f->s, "r-1", &b), STORE_OK);
    assert_int_equal(b.compartment, 2);
    assert_string_equal(b.source, "city");
    struct club c;
    assert_int_equal(store_club_get(f->s, "club-42", &c), STORE_OK);
    assert_string_equal(c.name, "SV");

    /* Moved to two compartments: "r-1" is cancelled, r-1@1 and r-1@3 are active. */
    r.compartments[0] = 1;
    r.compartments[1] = 3;
    r.ncompartments = 2;
    r.start_ms = 3000;
    r.end_ms = 4000;
    assert_int_equal(store_city_reservation_apply(f->s, &r, 20), STORE_OK);
    assert_int_equal(store_booking_get(f->s, "r-1", &b), STORE_OK);
    assert_int_equal(b.status, BOOKING_CANCELLED);
    assert_int_equal(store_booking_get(f->s, "r-1@3", &b), STORE_OK);
    assert_int_equal(b.status, BOOKING_ACTIVE);
    assert_int_equal(b.start_ms, 3000);

    /* And back to one compartment: "r-1" is active again, both parts cancelled. */
    r.compartments[0] = 4;
    r.ncompartments = 1;
    assert_int_equal(store_city_reservation_apply(f->s, &r, 25), STORE_OK);
    assert_int_equal(store_booking_get(f->s, "r-1", &b), STORE_OK);
    assert_int_equal(b.status, BOOKING_ACTIVE);
    assert_int_equal(b.compartment, 4);
    assert_int_equal(status_of(f->s, "r-1@1"), BOOKING_CANCELLED);
    assert_int_equal(status_of(f->s, "r-1@3"), BOOKING_CANCELLED);

    /* A local booking with a city id is never replaced. */
    struct booking local = {.id = "r-9",
                            .club_id = "club-1",
                            .compartment = 4,
                            .start_ms = 5000,
                            .end_ms = 6000,
                            .source = "local"};
    assert_int_equal(store_booking_add(f->s, &local), STORE_OK);
    struct city_reservation r9 = {.id = "r-9",
                                  .club_id = "club-42",
                                  .start_ms = 1,
                                  .end_ms = 2,
                                  .compartments = {1},
                                  .ncompartments = 1};
    assert_int_equal(store_city_reservation_apply(f->s, &r9, 20), STORE_OK);
    assert_int_equal(store_booking_get(f->s, "r-9", &b), STORE_OK);
    assert_string_equal(b.source, "local");
    assert_int_equal(b.compartment, 4);

    /* Tombstone. */
    struct city_reservation gone = {.id = "r-1", .deleted = true};
    assert_int_equal(store_city_reservation_apply(f->s, &gone, 30), STORE_OK);
    assert_int_equal(status_of(f->s, "r-1@1"), BOOKING_CANCELLED);
    assert_int_equal(status_of(f->s, "r-1"), BOOKING_CANCELLED);

    /* Credentials with their clubs; a second credential of the same card wins. */
    struct city_credential cr = {.id = "cred-1",
                                 .card_type = "desfire",
                                 .member_id = "m-5",
                                 .member_name = "A. Trainer",
                                 .clubs = {"club-42", "club-7"},
                                 .nclubs = 2,
                                 .status = CRED_ACTIVE};
    hmac_fill(cr.uid_hmac, 9);
    assert_int_equal(store_city_credential_apply(f->s, &cr, 40), STORE_OK);
    char clubs[4][STORE_ID_LEN];
    bool scoped = false;
    assert_int_equal(store_credential_clubs(f->s, "cred-1", clubs, 4, &scoped), 2);
    assert_true(scoped);
    assert_string_equal(clubs[1], "club-7");
    struct member m;
    assert_int_equal(store_member_get(f->s, "m-5", &m), STORE_OK);
    assert_string_equal(m.name, "A. Trainer");
    struct city_credential cr2 = cr;
    snprintf(cr2.id, sizeof cr2.id, "cred-2");
    cr2.nclubs = 0;
    assert_int_equal(store_city_credential_apply(f->s, &cr2, 50), STORE_OK);
    struct credential got;
    assert_int_equal(store_credential_by_hmac(f->s, cr.uid_hmac, &got), STORE_OK);
    assert_string_equal(got.id, "cred-2");
    assert_int_equal(store_credential_clubs(f->s, "cred-2", clubs, 4, &scoped), 0);
    assert_true(scoped); /* an empty list opens nothing */

    /* A full resync confirmed only what it saw after 45: cred-2 stays, r-1@3 and
     * r-9's city twin do not exist, r-1@1 was cancelled already. */
    assert_int_equal(store_city_sweep(f->s, true, 45), 0);
    assert_int_equal(store_city_sweep(f->s, false, 45), 0);
    r.ncompartments = 1;
    r.compartments[0] = 2;
    snprintf(r.id, sizeof r.id, "r-2");
    assert_int_equal(store_city_reservation_apply(f->s, &r, 60), STORE_OK);
    assert_int_equal(store_city_sweep(f->s, false, 70), 1);
    assert_int_equal(store_booking_get(f->s, "r-2", &b), STORE_OK);
    assert_int_equal(b.status, BOOKING_CANCELLED);
    assert_int_equal(store_city_sweep(f->s, true, 70), 1);
    assert_int_equal(store_credential_by_hmac(f->s, cr.uid_hmac, &got), STORE_NOTFOUND);
}

/* The outbox: acknowledged events leave it, refused ones become dead letters, and
 * the append hook fires once per committed transaction with events. */
static int hook_calls;
static void count_hook(void *arg)
{
    (void)arg;
    hook_calls++;
}

static void test_outbox(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(store_add_append_hook(f->s, count_hook, NULL), STORE_OK);
    hook_calls = 0;
    struct event e = {.type = "station.started"};
    assert_true(store_event_add(f->s, &e) > 0);
    assert_int_equal(hook_calls, 1);
    assert_int_equal(store_begin(f->s), STORE_OK);
    assert_true(store_event_add(f->s, &e) > 0);
    assert_true(store_event_add(f->s, &e) > 0);
    assert_int_equal(hook_calls, 1);
    assert_int_equal(store_commit(f->s), STORE_OK);
    assert_int_equal(hook_calls, 2);
    assert_int_equal(store_begin(f->s), STORE_OK);
    assert_true(store_event_add(f->s, &e) > 0);
    store_rollback(f->s);
    assert_int_equal(hook_calls, 2);

    json_t *batch = store_outbox_json(f->s, 2);
    assert_int_equal(json_array_size(batch), 2);
    const char *id1 = json_string_value(json_object_get(json_array_get(batch, 0), "eventId"));
    const char *id2 = json_string_value(json_object_get(json_array_get(batch, 1), "eventId"));
    assert_int_equal(store_outbox_ack(f->s, id1), STORE_OK);
    assert_int_equal(store_outbox_ack(f->s, id1), STORE_NOTFOUND);
    assert_int_equal(store_outbox_dead(f->s, id2, 422, "bad", 5), STORE_OK);
    json_decref(batch);
    assert_int_equal(store_outbox_depth(f->s), 1);
    assert_int_equal(store_dead_letter_count(f->s), 1);
    store_remove_append_hook(f->s, count_hook, NULL);
    assert_true(store_event_add(f->s, &e) > 0);
    assert_int_equal(hook_calls, 2);
}

int main(void)
{
    log_init("test_store", LOG_LVL_WARNING);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roles),
        cmocka_unit_test_setup_teardown(test_migrations, setup_file, teardown),
        cmocka_unit_test(test_open_bad_path),
        cmocka_unit_test_setup_teardown(test_meta, setup_memory, teardown),
        cmocka_unit_test_setup_teardown(test_clubs_members, setup_memory, teardown),
        cmocka_unit_test_setup_teardown(test_credentials, setup_memory, teardown),
        cmocka_unit_test_setup_teardown(test_bookings, setup_memory, teardown),
        cmocka_unit_test_setup_teardown(test_bookings_many_clubs, setup_memory, teardown),
        cmocka_unit_test_setup_teardown(test_comp, setup_memory, teardown),
        cmocka_unit_test_setup_teardown(test_city_records, setup_memory, teardown),
        cmocka_unit_test_setup_teardown(test_outbox, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_events, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_tamper_detail, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_tamper_null_vs_empty, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_delete_middle, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_delete_head_without_checkpoint, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_prune, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_prune_keeps_recent, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_prune_by_time, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_chain_from_checkpoint_only, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_transactions, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_close_inside_transaction, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_integrity, setup_memory, teardown),
        cmocka_unit_test_setup_teardown(test_subject_digest, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_erase, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_v1, setup_file, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_v1_broken, setup_file, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
