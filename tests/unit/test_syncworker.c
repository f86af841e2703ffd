/*
 * test_syncworker.c - the sync worker (daemon/syncworker.c): its pure parsers with
 * good and bad input, and, when the reference server tests/cityapi/server.py and
 * python3 are there, the worker end to end: forked on one end of a SOCK_SEQPACKET
 * socketpair, configured, polled, given an upload with a duplicate, then closed.
 *
 * Nothing sleeps: the end-to-end test waits for the server's ready line and for the
 * worker's messages with poll() and a generous timeout that only matters when a test
 * is failing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "daemon/syncmsg.h"
#include "daemon/syncworker.h"

#define BASE    "https://127.0.0.1:8443/keystation/v1"
#define WAIT_MS 30000

/* ------------------------------------------------------------ RFC 3339 */

static int64_t ts(const char *s)
{
    int64_t ms = -1;
    if (!sync_parse_rfc3339(s, &ms))
        fail_msg("refused %s", s);
    return ms;
}

static void test_rfc3339_good(void **state)
{
    (void)state;
    assert_int_equal(ts("2026-11-28T17:00:00Z"), INT64_C(1795885200000));
    assert_int_equal(ts("2026-11-28t17:00:00z"), INT64_C(1795885200000));
    assert_int_equal(ts("2026-11-28T18:00:00+01:00"), INT64_C(1795885200000));
    assert_int_equal(ts("2026-11-28T16:30:00-00:30"), INT64_C(1795885200000));
    assert_int_equal(ts("2026-11-28T17:00:00-00:00"), INT64_C(1795885200000));
    assert_int_equal(ts("2026-11-28T17:00:00.1Z"), INT64_C(1795885200100));
    assert_int_equal(ts("2026-11-28T17:00:00.12Z"), INT64_C(1795885200120));
    assert_int_equal(ts("2026-11-28T17:00:00.123Z"), INT64_C(1795885200123));
    /* Beyond milliseconds: truncated, not rounded. */
    assert_int_equal(ts("2026-11-28T17:00:00.123999999Z"), INT64_C(1795885200123));
    assert_int_equal(ts("1970-01-01T00:00:00Z"), 0);
    assert_int_equal(ts("1970-01-01T00:59:59+01:00"), -1000);
    assert_int_equal(ts("2024-02-29T23:59:59Z"), INT64_C(1709251199000));
    assert_int_equal(ts("2000-02-29T00:00:00Z"), INT64_C(951868800000) - 86400000);
    /* A leap second reads as the last millisecond before it. */
    assert_int_equal(ts("2016-12-31T23:59:60Z"), ts("2016-12-31T23:59:59.999Z"));
    /* Day boundaries through offsets. */
    assert_int_equal(ts("2026-01-01T00:30:00+01:00"), ts("2025-12-31T23:30:00Z"));
}

static void test_rfc3339_bad(void **state)
{
    static const char *const bad[] = {
        "",
        "2026-11-28",
        "2026-11-28T17:00:00",   /* no offset */
        "2026-11-28T17:00Z",     /* no seconds */
        "2026-11-28 17:00:00Z",  /* space */
        "2026-11-28T17:00:00.Z", /* empty fraction */
        "2026-11-28T17:00:00.1234567890Z",
        "2026-02-29T00:00:00Z", /* not a leap year */
        "1900-02-29T00:00:00Z", /* century, not a leap year */
        "2026-04-31T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-00-01T00:00:00Z",
        "2026-11-00T00:00:00Z",
        "2026-11-28T24:00:00Z",
        "2026-11-28T17:60:00Z",
        "2026-11-28T17:00:61Z",
        "2026-11-28T17:00:00+24:00",
        "2026-11-28T17:00:00+01:60",
        "2026-11-28T17:00:00+0100",
        "2026-11-28T17:00:00+01",
        "2026-11-28T17:00:00ZZ",
        "2026-11-28T17:00:00Z ",
        "+2026-11-28T17:00:00Z",
        "2026-1-28T17:00:00Z",
        "20261128T170000Z",
        "2026-11-28T17:00:00\xc3\xa9",
    };
    int64_t ms;
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (sync_parse_rfc3339(bad[i], &ms))
            fail_msg("accepted \"%s\"", bad[i]);
    }
}

/* ------------------------------------------------------------ URLs */

static void test_url_under(void **state)
{
    (void)state;
    assert_true(
        sync_url_under(BASE "/stations/st-12/reservations?afterTimestamp=1&afterId=r-1", BASE));
    assert_true(sync_url_under(BASE "/x", BASE "/"));
    assert_true(sync_url_under("HTTPS://127.0.0.1:8443/keystation/v1/x", BASE));
    assert_true(sync_url_under("https://city.example/keystation/v1/x",
                               "https://city.example:443/keystation/v1"));
    assert_true(sync_url_under("https://CITY.example/keystation/v1/x",
                               "https://city.example/keystation/v1"));

    assert_false(sync_url_under("https://evil.example/keystation/v1/x", BASE));
    assert_false(sync_url_under("https://127.0.0.1:8444/keystation/v1/x", BASE));
    assert_false(sync_url_under("http://127.0.0.1:8443/keystation/v1/x", BASE));
    assert_false(sync_url_under("ftp://127.0.0.1:8443/keystation/v1/x", BASE));
    assert_false(sync_url_under("https://127.0.0.1:8443/keystation/v10/x", BASE));
    assert_false(sync_url_under("https://127.0.0.1:8443/keystation/v1", BASE));
    assert_false(sync_url_under("https://127.0.0.1:8443/other/x", BASE));
    assert_false(sync_url_under(BASE "/../../admin", BASE));
    assert_false(sync_url_under(BASE "/./x", BASE));
    assert_false(sync_url_under(BASE "/x/..", BASE));
    assert_false(sync_url_under(BASE "/%2e%2e/%2E%2E/admin", BASE));
    assert_false(sync_url_under(BASE "/a%2fb", BASE));
    assert_false(sync_url_under("https://user:pw@127.0.0.1:8443/keystation/v1/x", BASE));
    assert_false(sync_url_under("https://127.0.0.1:8443@evil.example/keystation/v1/x", BASE));
    assert_false(sync_url_under(BASE "/x#frag", BASE));
    assert_false(sync_url_under(BASE "/x y", BASE));
    assert_false(sync_url_under(BASE "/x\\y", BASE));
    assert_false(sync_url_under(BASE "/x\n", BASE));
    assert_false(sync_url_under("//127.0.0.1:8443/keystation/v1/x", BASE));
    assert_false(sync_url_under("", BASE));
}

/* ------------------------------------------------------------ pages */

#define NEXT_JSON "\"next\": \"" BASE "/stations/st-12/reservations?afterTimestamp=9&afterId=r-2\""

#define RES_DATA(id, extra)                                                                        \
    "{\"identifier\": \"" id "\", \"startDate\": \"2026-11-28T17:00:00Z\","                        \
    " \"endDate\": \"2026-11-28T19:00:00Z\","                                                      \
    " \"organizer\": {\"identifier\": \"club-42\", \"name\": \"SV Warnem\\u00fcnde\"},"            \
    " \"compartments\": [2, 5], \"reservationStatus\": \"confirmed\"" extra "}"

#define RES_ITEM(id, mod, extra)                                                                   \
    "{\"state\": \"updated\", \"kind\": \"HallReservation\", \"id\": \"" id                        \
    "\", \"modified\": " #mod ", \"data\": " RES_DATA(id, extra) "}"

static int page(const char *body, int feed, struct sync_page *pg, char *err)
{
    return sync_parse_page(body, strlen(body), feed, BASE, pg, err, 256);
}

static void test_page_reservations_good(void **state)
{
    struct sync_page pg;
    char err[256];
    (void)state;

    /* r-1 and r-2 share modified 9: the tie is broken by id. */
    const char *body = "{" NEXT_JSON ", \"items\": [" RES_ITEM("r-0", 8, "") ", " RES_ITEM(
        "r-1", 9, "") ", {\"state\": \"deleted\", \"kind\": \"HallReservation\", \"id\": \"r-2\","
                      " \"modified\": 9}], \"license\": \"x\"}";
    if (page(body, SYNC_FEED_RESERVATIONS, &pg, err) < 0)
        fail_msg("%s", err);
    assert_int_equal(pg.count, 3);
    assert_false(pg.last_page);
    assert_string_equal(pg.items[0].id, "r-0");
    assert_false(pg.items[0].deleted);
    assert_int_equal(pg.items[0].start, INT64_C(1795885200000));
    assert_int_equal(pg.items[0].end, INT64_C(1795885200000) + 7200000);
    assert_string_equal(pg.items[0].club, "club-42");
    assert_string_equal(pg.items[0].club_name, "SV Warnem\xc3\xbcnde");
    assert_int_equal(pg.items[0].ncompartments, 2);
    assert_int_equal(pg.items[0].compartments[0], 2);
    assert_int_equal(pg.items[0].compartments[1], 5);
    assert_string_equal(pg.items[0].status, "confirmed");
    assert_true(pg.items[2].deleted);
    assert_int_equal(pg.items[2].modified, 9);
    assert_string_equal(pg.next, BASE "/stations/st-12/reservations?afterTimestamp=9&afterId=r-2");
    sync_page_free(&pg);

    /* The last page. */
    if (page("{" NEXT_JSON ", \"items\": []}", SYNC_FEED_RESERVATIONS, &pg, err) < 0)
        fail_msg("%s", err);
    assert_int_equal(pg.count, 0);
    assert_true(pg.last_page);
    sync_page_free(&pg);
}

struct bad_page {
    const char *body;
    const char *reason; /* a part of the error message */
};

static void test_page_reservations_bad(void **state)
{
    static const struct bad_page bad[] = {
        {"", "malformed JSON"},
        {"[]", "not an object"},
        {"{\"items\": [], \"next\": 5}", "next URL"},
        {"{\"items\": []}", "next URL"},
        {"{\"next\": \"https://evil.example/keystation/v1/stations/st-12/reservations\","
         " \"items\": []}",
         "not under the configured base URL"},
        {"{\"next\": \"" BASE "/../x\", \"items\": []}", "not under"},
        {"{" NEXT_JSON "}", "items array"},
        {"{" NEXT_JSON ", \"items\": {}}", "items array"},
        {"{" NEXT_JSON ", \"items\": [], \"items\": []}", "duplicate"},
        /* the tie-break the wrong way round, and a repeated item */
        {"{" NEXT_JSON ", \"items\": [" RES_ITEM("r-2", 9, "") ", " RES_ITEM("r-1", 9, "") "]}",
         "item 1 (r-1): out of (modified, id) order"},
        {"{" NEXT_JSON ", \"items\": [" RES_ITEM("r-1", 9, "") ", " RES_ITEM("r-1", 9, "") "]}",
         "out of (modified, id) order"},
        {"{" NEXT_JSON ", \"items\": [" RES_ITEM("r-1", 9, "") ", " RES_ITEM("r-2", 8, "") "]}",
         "out of (modified, id) order"},
        /* ids sort bytewise: "r-10" < "r-9" */
        {"{" NEXT_JSON ", \"items\": [" RES_ITEM("r-9", 9, "") ", " RES_ITEM("r-10", 9, "") "]}",
         "out of (modified, id) order"},
        {"{" NEXT_JSON ", \"items\": [" RES_ITEM("r 1", 9, "") "]}", "bad id"},
        {"{" NEXT_JSON ", \"items\": [" RES_ITEM(
             "r-0123456789012345678901234567890123456789012345678901234567890123", 9, "") "]}",
         "bad id"},
        {"{" NEXT_JSON ", \"items\": [" RES_ITEM("r-1", -1, "") "]}", "bad modified"},
        {"{" NEXT_JSON ", \"items\": [" RES_ITEM("r-1", 1.5, "") "]}", "bad modified"},
        {"{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"Credential\", \"id\":"
         " \"r-1\", \"modified\": 1, \"data\": " RES_DATA("r-1", "") "}]}",
         "wrong kind"},
        {"{" NEXT_JSON ", \"items\": [{\"state\": \"gone\", \"kind\": \"HallReservation\", \"id\":"
         " \"r-1\", \"modified\": 1}]}",
         "bad state"},
        {"{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"HallReservation\","
         " \"id\": \"r-1\", \"modified\": 1}]}",
         "without data"},
        {"{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"HallReservation\","
         " \"id\": \"r-1\", \"modified\": 1, \"data\": " RES_DATA("r-2", "") "}]}",
         "data.identifier differs"},
        {"{" NEXT_JSON ", \"items\": [" RES_ITEM("r-1", 1, ", \"endDate\": 1") "]}", "duplicate"},
        {"{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"HallReservation\","
         " \"id\": \"r-1\", \"modified\": 1, \"data\": {\"identifier\": \"r-1\", \"startDate\":"
         " \"2026-11-28T19:00:00Z\", \"endDate\": \"2026-11-28T19:00:00Z\", \"organizer\":"
         " {\"identifier\": \"c\"}, \"compartments\": [1], \"reservationStatus\": "
         "\"confirmed\"}}]}",
         "endDate not after startDate"},
        {"{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"HallReservation\","
         " \"id\": \"r-1\", \"modified\": 1, \"data\": {\"identifier\": \"r-1\", \"startDate\":"
         " \"2026-11-28T19:00:00\", \"endDate\": \"2026-11-28T20:00:00Z\", \"organizer\":"
         " {\"identifier\": \"c\"}, \"compartments\": [1], \"reservationStatus\": "
         "\"confirmed\"}}]}",
         "bad startDate"},
        {"{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"HallReservation\","
         " \"id\": \"r-1\", \"modified\": 1, \"data\": {\"identifier\": \"r-1\", \"startDate\":"
         " \"2026-11-28T19:00:00Z\", \"endDate\": \"2026-11-28T20:00:00Z\", \"organizer\":"
         " {\"identifier\": \"c\", \"name\": \"a\\u0007b\"}, \"compartments\": [1],"
         " \"reservationStatus\": \"confirmed\"}}]}",
         "bad organizer name"},
        {"{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"HallReservation\","
         " \"id\": \"r-1\", \"modified\": 1, \"data\": {\"identifier\": \"r-1\", \"startDate\":"
         " \"2026-11-28T19:00:00Z\", \"endDate\": \"2026-11-28T20:00:00Z\", \"organizer\":"
         " {\"identifier\": \"c\", \"name\": \"a\\u0085b\"}, \"compartments\": [1],"
         " \"reservationStatus\": \"confirmed\"}}]}",
         "bad organizer name"},
        {"{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"HallReservation\","
         " \"id\": \"r-1\", \"modified\": 1, \"data\": {\"identifier\": \"r-1\", \"startDate\":"
         " \"2026-11-28T19:00:00Z\", \"endDate\": \"2026-11-28T20:00:00Z\", \"organizer\":"
         " {\"identifier\": \"c\", \"name\": \"a\\u0000b\"}, \"compartments\": [1],"
         " \"reservationStatus\": \"confirmed\"}}]}",
         "malformed JSON"},
        {"{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"HallReservation\","
         " \"id\": \"r-1\", \"modified\": 1, \"data\": {\"identifier\": \"r-1\", \"startDate\":"
         " \"2026-11-28T19:00:00Z\", \"endDate\": \"2026-11-28T20:00:00Z\", \"organizer\":"
         " {\"identifier\": \"c\"}, \"compartments\": [], \"reservationStatus\": \"confirmed\"}}]}",
         "compartments must be 1..32 entries"},
        {"{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"HallReservation\","
         " \"id\": \"r-1\", \"modified\": 1, \"data\": {\"identifier\": \"r-1\", \"startDate\":"
         " \"2026-11-28T19:00:00Z\", \"endDate\": \"2026-11-28T20:00:00Z\", \"organizer\":"
         " {\"identifier\": \"c\"}, \"compartments\": [33], \"reservationStatus\": "
         "\"confirmed\"}}]}",
         "compartment outside 1..32"},
        {"{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"HallReservation\","
         " \"id\": \"r-1\", \"modified\": 1, \"data\": {\"identifier\": \"r-1\", \"startDate\":"
         " \"2026-11-28T19:00:00Z\", \"endDate\": \"2026-11-28T20:00:00Z\", \"organizer\":"
         " {\"identifier\": \"c\"}, \"compartments\": [0], \"reservationStatus\": "
         "\"confirmed\"}}]}",
         "compartment outside 1..32"},
        {"{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"HallReservation\","
         " \"id\": \"r-1\", \"modified\": 1, \"data\": {\"identifier\": \"r-1\", \"startDate\":"
         " \"2026-11-28T19:00:00Z\", \"endDate\": \"2026-11-28T20:00:00Z\", \"organizer\":"
         " {\"identifier\": \"c\"}, \"compartments\": [3, 3], \"reservationStatus\": "
         "\"confirmed\"}}]}",
         "compartment listed twice"},
        {"{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"HallReservation\","
         " \"id\": \"r-1\", \"modified\": 1, \"data\": {\"identifier\": \"r-1\", \"startDate\":"
         " \"2026-11-28T19:00:00Z\", \"endDate\": \"2026-11-28T20:00:00Z\", \"organizer\":"
         " {\"identifier\": \"c\"}, \"compartments\": [3], \"reservationStatus\": \"maybe\"}}]}",
         "bad reservationStatus"},
    };
    struct sync_page pg;
    char err[256];
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        if (page(bad[i].body, SYNC_FEED_RESERVATIONS, &pg, err) == 0)
            fail_msg("case %zu accepted", i);
        if (strstr(err, bad[i].reason) == NULL)
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err, bad[i].reason);
        assert_null(pg.items);
    }
}

static void test_page_too_many_items(void **state)
{
    struct sync_page pg;
    char err[256];
    size_t cap = 64 + (SYNC_PAGE_ITEMS_MAX + 1) * 120 + 512;
    char *body = malloc(cap);
    (void)state;

    assert_non_null(body);
    size_t n = (size_t)snprintf(body, cap, "{" NEXT_JSON ", \"items\": [");
    for (int i = 0; i <= SYNC_PAGE_ITEMS_MAX; i++)
        n += (size_t)snprintf(body + n, cap - n,
                              "%s{\"state\": \"deleted\", \"kind\": \"HallReservation\", "
                              "\"id\": \"r-%04d\", \"modified\": 1}",
                              i > 0 ? ", " : "", i);
    snprintf(body + n, cap - n, "]}");
    assert_int_equal(page(body, SYNC_FEED_RESERVATIONS, &pg, err), -1);
    assert_non_null(strstr(err, "items (at most 500)"));
    free(body);
}

#define HMAC64 "00112233445566778899aabbccddeeffFFEEDDCCBBAA99887766554433221100"
/* The server wants lowercase hex. */
#define HMAC64_LC "00112233445566778899aabbccddeeffffeeddccbbaa99887766554433221100"

#define CRED(extra, clubs, from)                                                                   \
    "{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"Credential\", \"id\":"       \
    " \"cred-77\", \"modified\": 5, \"data\": {\"identifier\": \"cred-77\", \"uidHmac\": "         \
    "\"" HMAC64 "\", \"cardType\": \"desfire\", \"member\": {\"identifier\": \"m-5\", \"name\":"   \
    " \"A. Trainer\"}, \"clubs\": " clubs ", \"validFrom\": " from                                 \
    ", \"validUntil\": \"2027-01-01T00:00:00Z\", \"status\": \"active\"" extra "}}]}"

static void test_page_credentials(void **state)
{
    struct sync_page pg;
    char err[256];
    (void)state;

    if (page(CRED("", "[\"club-42\", \"club-7\"]", "null"), SYNC_FEED_CREDENTIALS, &pg, err) < 0)
        fail_msg("%s", err);
    assert_int_equal(pg.count, 1);
    const struct sync_item *it = &pg.items[0];
    assert_string_equal(it->id, "cred-77");
    assert_int_equal(it->uid_hmac[0], 0x00);
    assert_int_equal(it->uid_hmac[1], 0x11);
    assert_int_equal(it->uid_hmac[16], 0xff);
    assert_int_equal(it->uid_hmac[31], 0x00);
    assert_string_equal(it->card_type, "desfire");
    assert_string_equal(it->member, "m-5");
    assert_string_equal(it->member_name, "A. Trainer");
    assert_int_equal(it->nclubs, 2);
    assert_string_equal(it->clubs[1], "club-7");
    assert_int_equal(it->valid_from, 0);
    assert_int_equal(it->valid_until, ts("2027-01-01T00:00:00Z"));
    assert_string_equal(it->status, "active");
    sync_page_free(&pg);

    /* A reservation item in the credentials feed. */
    assert_int_equal(page("{" NEXT_JSON ", \"items\": [" RES_ITEM("r-1", 1, "") "]}",
                          SYNC_FEED_CREDENTIALS, &pg, err),
                     -1);
    assert_non_null(strstr(err, "wrong kind"));

    static const struct bad_page bad[] = {
        {CRED(", \"cardType\": \"mifare\"", "[]", "null"), "duplicate"},
        {CRED("", "[\"a b\"]", "null"), "bad club identifier"},
        {CRED("", "[1]", "null"), "bad club identifier"},
        {CRED("", "\"club-42\"", "null"), "clubs is not an array"},
        {CRED("",
              "[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\",\"12\","
              "\"13\",\"14\",\"15\",\"16\",\"17\"]",
              "null"),
         "more than 16 clubs"},
        {CRED("", "[]", "\"2027-01-01T00:00:00Z\""), "validUntil not after validFrom"},
        {CRED("", "[]", "\"yesterday\""), "bad validFrom"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        if (page(bad[i].body, SYNC_FEED_CREDENTIALS, &pg, err) == 0)
            fail_msg("case %zu accepted", i);
        if (strstr(err, bad[i].reason) == NULL)
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err, bad[i].reason);
    }

    /* Field-level refusals built by hand: uidHmac and cardType. */
    const char *uid_short =
        "{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"Credential\", \"id\": "
        "\"c\", \"modified\": 5, \"data\": {\"identifier\": \"c\", \"uidHmac\": \"0011\", "
        "\"cardType\": \"uid\", \"member\": {\"identifier\": \"m\"}, \"status\": \"active\"}}]}";
    assert_int_equal(page(uid_short, SYNC_FEED_CREDENTIALS, &pg, err), -1);
    assert_non_null(strstr(err, "uidHmac"));
    const char *uid_nonhex =
        "{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"Credential\", \"id\": "
        "\"c\", \"modified\": 5, \"data\": {\"identifier\": \"c\", \"uidHmac\": "
        "\"g0112233445566778899aabbccddeeffFFEEDDCCBBAA99887766554433221100\", "
        "\"cardType\": \"uid\", \"member\": {\"identifier\": \"m\"}, \"status\": \"active\"}}]}";
    assert_int_equal(page(uid_nonhex, SYNC_FEED_CREDENTIALS, &pg, err), -1);
    assert_non_null(strstr(err, "uidHmac"));
    const char *card_bad =
        "{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"Credential\", \"id\": "
        "\"c\", \"modified\": 5, \"data\": {\"identifier\": \"c\", \"uidHmac\": \"" HMAC64 "\", "
        "\"cardType\": \"mifare\", \"member\": {\"identifier\": \"m\"}, \"status\": \"active\"}}]}";
    assert_int_equal(page(card_bad, SYNC_FEED_CREDENTIALS, &pg, err), -1);
    assert_non_null(strstr(err, "bad cardType"));
    const char *minimal =
        "{" NEXT_JSON ", \"items\": [{\"state\": \"updated\", \"kind\": \"Credential\", \"id\": "
        "\"c\", \"modified\": 5, \"data\": {\"identifier\": \"c\", \"uidHmac\": \"" HMAC64 "\", "
        "\"cardType\": \"uid\", \"member\": {\"identifier\": \"m\"}, \"status\": \"revoked\"}}]}";
    if (page(minimal, SYNC_FEED_CREDENTIALS, &pg, err) < 0)
        fail_msg("%s", err);
    assert_int_equal(pg.items[0].nclubs, 0);
    assert_string_equal(pg.items[0].member_name, "");
    sync_page_free(&pg);
}

/* ------------------------------------------------------------ other parsers */

static void test_station(void **state)
{
    struct sync_station st;
    char err[256];
    const char *good = "{\"stationId\": \"st-12\", \"name\": \"Sporthalle Reutershagen\","
                       " \"pollIntervals\": {\"reservations\": 1, \"credentials\": 300,"
                       " \"config\": 999999, \"heartbeat\": 5},"
                       " \"compartments\": [{\"number\": 1, \"hall\": \"h-1\"}]}";
    (void)state;

    assert_int_equal(sync_parse_station(good, strlen(good), "st-12", &st, err, sizeof(err)), 0);
    assert_string_equal(st.name, "Sporthalle Reutershagen");
    assert_int_equal(st.interval_res, 5); /* clamped up */
    assert_int_equal(st.interval_cred, 300);
    assert_int_equal(st.interval_config, 86400); /* clamped down */
    assert_int_equal(st.interval_heartbeat, 5);

    assert_int_equal(sync_parse_station(good, strlen(good), "st-13", &st, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "st-12"));
    const char *bad_iv = "{\"stationId\": \"st-12\", \"name\": \"x\","
                         " \"pollIntervals\": {\"reservations\": \"60\"}}";
    assert_int_equal(sync_parse_station(bad_iv, strlen(bad_iv), NULL, &st, err, sizeof(err)), -1);
    const char *no_iv = "{\"stationId\": \"st-12\"}";
    assert_int_equal(sync_parse_station(no_iv, strlen(no_iv), NULL, &st, err, sizeof(err)), 0);
    assert_int_equal(st.interval_res, 60);
    assert_int_equal(st.interval_config, 3600);
    assert_int_equal(sync_parse_station("{}", 2, NULL, &st, err, sizeof(err)), -1);
}

static void test_upload_response(void **state)
{
    const char *ids[3] = {"01890a5d-ac96-774b-bcce-b302099a0001",
                          "01890a5d-ac96-774b-bcce-b302099a0002",
                          "01890a5d-ac96-774b-bcce-b302099a0003"};
    enum sync_result res[3];
    char err[256];
    char body[1024];
    (void)state;

    /* Any order is accepted; results land at their id's index. */
    snprintf(body, sizeof(body),
             "{\"results\": [{\"eventId\": \"%s\", \"status\": \"duplicate\"},"
             " {\"eventId\": \"%s\", \"status\": \"created\"},"
             " {\"eventId\": \"%s\", \"status\": \"rejected\", \"problem\": {\"title\": \"x\"}}],"
             " \"serverTime\": \"2026-11-28T17:00:00Z\"}",
             ids[2], ids[0], ids[1]);
    if (sync_parse_upload(body, strlen(body), ids, 3, res, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    assert_int_equal(res[0], SYNC_RESULT_CREATED);
    assert_int_equal(res[1], SYNC_RESULT_REJECTED);
    assert_int_equal(res[2], SYNC_RESULT_DUPLICATE);
    assert_string_equal(sync_result_name(res[2]), "duplicate");

    /* One missing. */
    snprintf(body, sizeof(body),
             "{\"results\": [{\"eventId\": \"%s\", \"status\": \"created\"},"
             " {\"eventId\": \"%s\", \"status\": \"created\"}]}",
             ids[0], ids[1]);
    assert_int_equal(sync_parse_upload(body, strlen(body), ids, 3, res, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "2 results for 3 events"));
    /* One twice (so one other missing). */
    snprintf(body, sizeof(body),
             "{\"results\": [{\"eventId\": \"%s\", \"status\": \"created\"},"
             " {\"eventId\": \"%s\", \"status\": \"created\"}]}",
             ids[0], ids[0]);
    assert_int_equal(sync_parse_upload(body, strlen(body), ids, 2, res, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "two results"));
    /* An id not in the batch. */
    snprintf(body, sizeof(body), "{\"results\": [{\"eventId\": \"%s\", \"status\": \"created\"}]}",
             ids[2]);
    assert_int_equal(sync_parse_upload(body, strlen(body), ids, 1, res, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "not in the batch"));
    /* A bad status, a bad shape. */
    snprintf(body, sizeof(body), "{\"results\": [{\"eventId\": \"%s\", \"status\": \"ok\"}]}",
             ids[0]);
    assert_int_equal(sync_parse_upload(body, strlen(body), ids, 1, res, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "bad status"));
    assert_int_equal(sync_parse_upload("{}", 2, ids, 1, res, err, sizeof(err)), -1);
    assert_int_equal(sync_parse_upload("{\"results\": [", 13, ids, 1, res, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "malformed JSON"));
}

static void test_problem_and_sanitize(void **state)
{
    char out[256];
    const char *p = "{\"type\": \"about:blank\", \"title\": \"Service Unavailable\","
                    " \"status\": 503, \"detail\": \"try\\nlater\\u0085!\"}";
    (void)state;

    assert_true(sync_problem_text(p, strlen(p), out, sizeof(out)));
    assert_string_equal(out, "Service Unavailable: try later !");
    assert_true(sync_problem_text("{\"title\": \"T\"}", 14, out, sizeof(out)));
    assert_string_equal(out, "T");
    assert_false(sync_problem_text("<html>", 6, out, sizeof(out)));
    assert_string_equal(out, "");
    assert_false(sync_problem_text(NULL, 0, out, sizeof(out)));

    sync_sanitize("a\xff\x01z", 4, out, sizeof(out));
    assert_string_equal(out, "a? z");
    /* Cut at a character boundary: "\xc3\xbc" does not fit in 2 bytes plus NUL. */
    sync_sanitize("a\xc3\xbc", 3, out, 3);
    assert_string_equal(out, "a");
    sync_sanitize("abc", 3, out, 1);
    assert_string_equal(out, "");
}

/* ------------------------------------------------------------ end to end */

struct server {
    pid_t pid;
    char dir[64];
    char base[256];
    char admin[128];
};

static bool read_file(const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return false;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *out = malloc((size_t)n + 1);
    assert_non_null(*out);
    assert_int_equal(fread(*out, 1, (size_t)n, f), (size_t)n);
    (*out)[n] = '\0';
    *len = (size_t)n;
    fclose(f);
    return true;
}

static size_t sink(char *p, size_t size, size_t n, void *arg)
{
    json_t **out = arg;
    json_decref(*out);
    *out = json_loadb(p, size * n, 0, NULL);
    return size * n;
}

/* A blocking admin request (plain HTTP on loopback); returns the HTTP status. */
static long admin(struct server *s, const char *method, const char *path, const char *body)
{
    char url[256];
    json_t *answer = NULL;
    long code = 0;
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");

    snprintf(url, sizeof(url), "%s%s", s->admin, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)WAIT_MS);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &answer);
    if (body != NULL)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    json_decref(answer);
    return code;
}

/* Starts the reference server and waits for its ready line. */
static bool server_start(struct server *s, const char *station)
{
    int pipefd[2];
    char db[128], certs[128], line[2048];
    size_t n = 0;

    strcpy(s->dir, "/tmp/test_syncworker.XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    snprintf(db, sizeof(db), "%s/city.db", s->dir);
    snprintf(certs, sizeof(certs), "%s/certs", s->dir);
    assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
    s->pid = fork();
    assert_true(s->pid >= 0);
    if (s->pid == 0) {
        dup2(pipefd[1], STDOUT_FILENO);
        execlp("python3", "python3", "tests/cityapi/server.py", "--db", db, "--certs", certs,
               "--port", "0", "--admin-port", "0", "--station", station, (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    while (n < sizeof(line) - 1) {
        struct pollfd p = {pipefd[0], POLLIN, 0};
        if (poll(&p, 1, WAIT_MS) <= 0)
            break;
        ssize_t r = read(pipefd[0], line + n, 1);
        if (r <= 0)
            break;
        if (line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    close(pipefd[0]);
    json_t *ready = json_loads(line, 0, NULL);
    if (!json_is_true(json_object_get(ready, "ready"))) {
        json_decref(ready);
        return false;
    }
    snprintf(s->base, sizeof(s->base), "%s", json_string_value(json_object_get(ready, "baseUrl")));
    snprintf(s->admin, sizeof(s->admin), "%s",
             json_string_value(json_object_get(ready, "adminUrl")));
    json_decref(ready);
    return true;
}

static void server_stop(struct server *s)
{
    char cmd[128];
    int status;

    if (s->pid > 0) {
        kill(s->pid, SIGTERM);
        waitpid(s->pid, &status, 0);
    }
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", s->dir);
}

/* Waits for the next message from the worker. */
static void next_msg(int fd, uint8_t *buf, struct syncmsg *m)
{
    char why[200];
    struct pollfd p = {fd, POLLIN, 0};

    if (poll(&p, 1, WAIT_MS) != 1)
        fail_msg("no message from the worker within %d ms", WAIT_MS);
    ssize_t n = recv(fd, buf, SYNCMSG_MAX, 0);
    assert_true(n > 0);
    if (syncmsg_decode(buf, (size_t)n, m, why, sizeof(why)) < 0)
        fail_msg("bad message from the worker: %s", why);
}

struct seen {
    int res, res_deleted, cred, pages_res, pages_cred, last_res, last_cred, station;
    char station_name[128];
    char first_res[64], second_res[64];
    int reports_failed;
    char last_error[256];
};

static void note(struct seen *s, const struct syncmsg *m)
{
    char str[256];

    switch (m->type) {
    case SM_ITEM_RES:
        if (syncmsg_int(m, F_DELETED, 0))
            s->res_deleted++;
        assert_true(syncmsg_str(m, F_ID, str, sizeof(str)));
        if (s->res == 0)
            strcpy(s->first_res, str);
        else if (s->res == 1)
            strcpy(s->second_res, str);
        s->res++;
        break;
    case SM_ITEM_CRED:
        s->cred++;
        assert_int_equal(syncmsg_get(m, F_UID_HMAC)->len, 32);
        break;
    case SM_ITEMS: {
        /* Each embedded item as if it had come alone (they never nest). */
        static struct syncmsg inner;
        const struct syncmsg_field *f;
        char why[200];
        int pos = 0;
        while ((f = syncmsg_next(m, F_ITEM, &pos)) != NULL) {
            if (syncmsg_decode(f->data, f->len, &inner, why, sizeof(why)) < 0)
                fail_msg("bad item from the worker: %s", why);
            assert_true(inner.type == SM_ITEM_RES || inner.type == SM_ITEM_CRED);
            note(s, &inner);
        }
        break;
    }
    case SM_PAGE_END:
        if (syncmsg_int(m, F_FEED, 0) == SYNC_FEED_RESERVATIONS) {
            s->pages_res++;
            s->last_res += (int)syncmsg_int(m, F_LAST_PAGE, 0);
        } else {
            s->pages_cred++;
            s->last_cred += (int)syncmsg_int(m, F_LAST_PAGE, 0);
        }
        break;
    case SM_STATION:
        s->station++;
        assert_true(syncmsg_str(m, F_NAME, s->station_name, sizeof(s->station_name)));
        assert_int_equal(syncmsg_int(m, F_INTERVAL_RES, 0), 5); /* 1 clamped */
        break;
    case SM_REPORT:
        if (!syncmsg_int(m, F_SUCCESS, 0)) {
            s->reports_failed++;
            syncmsg_str(m, F_ERROR, s->last_error, sizeof(s->last_error));
        }
        break;
    case SM_CONFIG:
    case SM_POLL:
    case SM_UPLOAD:
    case SM_HEARTBEAT:
    case SM_FEED_GONE:
    case SM_UPLOAD_DONE:
    case SM_CYCLE_DONE:
    case SM_USAGE:
    case SM_USAGE_DONE:
    case SM_TYPE_MAX:
        break;
    }
}

static void send_msg(int fd, struct syncmsg_builder *b)
{
    int64_t n = syncmsg_finish(b);
    assert_true(n > 0);
    assert_int_equal(syncmsg_send(fd, b->buf, (size_t)n, false), 0);
}

/* Runs one cycle; returns its ok flag. */
static int cycle(int fd, uint8_t *buf, struct syncmsg *m, int64_t no, struct seen *s)
{
    struct syncmsg_builder b;
    uint8_t out[64];

    syncmsg_start(&b, out, sizeof(out), SM_POLL);
    syncmsg_put_int(&b, F_CYCLE, no);
    send_msg(fd, &b);
    for (;;) {
        next_msg(fd, buf, m);
        if (m->type == SM_CYCLE_DONE && syncmsg_int(m, F_CYCLE, 0) == no)
            return (int)syncmsg_int(m, F_SUCCESS, -1);
        note(s, m);
    }
}

static const char *event_json(char *out, size_t len, const char *id, int seq)
{
    snprintf(out, len,
             "{\"eventId\": \"%s\", \"seq\": %d, \"type\": \"key.checkedOut\","
             " \"occurredAt\": \"2026-11-28T17:02:11.123Z\", \"clock\": {\"synced\": true},"
             " \"bootId\": \"boot-1\", \"monoMs\": 1234, \"compartment\": 2,"
             " \"hash\": \"%064d\", \"prevHash\": \"%064d\"}",
             id, seq, seq, seq - 1);
    return out;
}

/* Uploads events ids[0..n) as one batch; returns the UPLOAD_DONE results joined by ','. */
static void upload(int fd, uint8_t *buf, struct syncmsg *m, int64_t batch, const char *const *ids,
                   int n, char *results, size_t rlen)
{
    struct syncmsg_builder b;
    static uint8_t out[65536];
    char body[8192], ev[1024], s[64];
    size_t off = (size_t)snprintf(body, sizeof(body), "{\"events\": [");

    for (int i = 0; i < n; i++)
        off += (size_t)snprintf(body + off, sizeof(body) - off, "%s%s", i > 0 ? ", " : "",
                                event_json(ev, sizeof(ev), ids[i], i + 1));
    snprintf(body + off, sizeof(body) - off, "]}");
    syncmsg_start(&b, out, sizeof(out), SM_UPLOAD);
    syncmsg_put_int(&b, F_BATCH, batch);
    syncmsg_put_str(&b, F_BODY, body);
    for (int i = 0; i < n; i++)
        syncmsg_put_str(&b, F_EVENT_ID, ids[i]);
    send_msg(fd, &b);
    for (;;) {
        next_msg(fd, buf, m);
        if (m->type == SM_UPLOAD_DONE)
            break;
    }
    assert_int_equal(syncmsg_int(m, F_BATCH, 0), batch);
    assert_true(syncmsg_str(m, F_OUTCOME, s, sizeof(s)));
    assert_string_equal(s, "done");
    results[0] = '\0';
    int pe = 0, pr = 0;
    for (int i = 0; i < n; i++) {
        const struct syncmsg_field *fe = syncmsg_next(m, F_EVENT_ID, &pe);
        const struct syncmsg_field *fr = syncmsg_next(m, F_RESULT, &pr);
        assert_non_null(fe);
        assert_non_null(fr);
        assert_true(syncmsg_field_str(fe, s, sizeof(s)));
        assert_string_equal(s, ids[i]);
        assert_true(syncmsg_field_str(fr, s, sizeof(s)));
        if (i > 0)
            strncat(results, ",", rlen - strlen(results) - 1);
        strncat(results, s, rlen - strlen(results) - 1);
    }
}

/* PUTs a daily usage summary for date with an observation's parameters par; returns
 * the SM_USAGE_DONE outcome and its HTTP status. */
static void usage_put(int fd, uint8_t *buf, struct syncmsg *m, const char *date, const char *par,
                      char *outcome, size_t olen, int64_t *http)
{
    struct syncmsg_builder b;
    static uint8_t out[16384];
    char body[4096], s[16];

    snprintf(body, sizeof(body),
             "{\"date\": \"%s\", \"timezone\": \"Europe/Berlin\", \"sensorthings\": "
             "{\"Things\": [{\"name\": \"h-1 (E2E)\", \"description\": \"a hall\", "
             "\"properties\": {\"stationId\": \"st-e2e\", \"hall\": \"h-1\"}, "
             "\"Datastreams\": [{\"name\": \"booked slots\", \"Observations\": [{"
             "\"phenomenonTime\": \"%sT17:00:00.000Z/%sT19:00:00.000Z\", "
             "\"resultTime\": \"%sT23:00:00.000Z\", \"result\": \"collected\", "
             "\"parameters\": {%s}}]}]}]}}",
             date, date, date, date, par);
    syncmsg_start(&b, out, sizeof(out), SM_USAGE);
    syncmsg_put_str(&b, F_DATE, date);
    syncmsg_put_str(&b, F_BODY, body);
    send_msg(fd, &b);
    for (;;) {
        next_msg(fd, buf, m);
        if (m->type == SM_USAGE_DONE)
            break;
    }
    assert_true(syncmsg_str(m, F_DATE, s, sizeof(s)));
    assert_string_equal(s, date);
    assert_true(syncmsg_str(m, F_OUTCOME, outcome, olen));
    *http = syncmsg_int(m, F_HTTP, 0);
}

/* The server outlives a failing assertion: the teardown stops it. */
static struct server srv;

static int e2e_teardown(void **state)
{
    (void)state;
    if (srv.dir[0] != '\0')
        server_stop(&srv);
    memset(&srv, 0, sizeof(srv));
    return 0;
}

static void test_end_to_end(void **state)
{
    struct syncmsg_builder b;
    static uint8_t out[SYNCMSG_MAX], buf[SYNCMSG_MAX];
    static struct syncmsg m;
    struct seen seen;
    char path[256], results[256];
    char *ca, *cert, *key;
    size_t calen, certlen, keylen;
    int sv[2], status;
    (void)state;

    if (access("tests/cityapi/server.py", R_OK) != 0 || system("python3 -c '' 2>/dev/null") != 0)
        skip(); /* cmocka prints the skip */
    memset(&srv, 0, sizeof(srv));
    if (!server_start(&srv, "st-e2e"))
        fail_msg("the reference server did not start");

    /* The city's side: a station config, three reservations (two share a modified, so
     * the tie-break decides their order), one cancelled later, two credentials. */
    assert_int_equal(admin(&srv, "PUT", "/admin/stations/st-e2e/config",
                           "{\"name\": \"Sporthalle E2E\", \"pollIntervals\": {\"reservations\": 1,"
                           " \"credentials\": 300, \"config\": 3600, \"heartbeat\": 300},"
                           " \"compartments\": [{\"number\": 1, \"hall\": \"h-1\", \"label\": "
                           "\"Halle 1\"}]}"),
                     200);
    assert_int_equal(admin(&srv, "POST", "/admin/reservations",
                           "{\"items\": [" RES_DATA("r-b", "") ", " RES_DATA("r-a", "") "]}"),
                     200);
    assert_int_equal(admin(&srv, "POST", "/admin/reservations", RES_DATA("r-c", "")), 200);
    assert_int_equal(admin(&srv, "DELETE", "/admin/reservations/r-c", NULL), 200);
    assert_int_equal(
        admin(&srv, "POST", "/admin/credentials",
              "{\"items\": [{\"identifier\": \"cred-1\", \"uidHmac\": \"" HMAC64_LC
              "\", \"cardType\":"
              " \"desfire\", \"member\": {\"identifier\": \"m-1\", \"name\": \"A. Trainer\"},"
              " \"clubs\": [\"club-42\"], \"validFrom\": null, \"validUntil\": null, \"status\":"
              " \"active\"}, {\"identifier\": \"cred-2\", \"uidHmac\": \"" HMAC64_LC
              "\", \"cardType\":"
              " \"uid\", \"member\": {\"identifier\": \"m-2\", \"name\": \"B\"}, \"clubs\": [],"
              " \"validFrom\": null, \"validUntil\": null, \"status\": \"revoked\"}]}"),
        200);

    snprintf(path, sizeof(path), "%s/certs/server-ca.pem", srv.dir);
    assert_true(read_file(path, &ca, &calen));
    snprintf(path, sizeof(path), "%s/certs/client.pem", srv.dir);
    assert_true(read_file(path, &cert, &certlen));
    snprintf(path, sizeof(path), "%s/certs/client.key", srv.dir);
    assert_true(read_file(path, &key, &keylen));

    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(sv[0]);
        exit(syncworker_main(sv[1]));
    }
    close(sv[1]);

    syncmsg_start(&b, out, sizeof(out), SM_CONFIG);
    syncmsg_put_str(&b, F_URL, srv.base);
    syncmsg_put_str(&b, F_STATION, "st-e2e");
    syncmsg_put_str(&b, F_VERSION, "0.1.0-test");
    syncmsg_put_blob(&b, F_CA_PEM, ca, calen);
    syncmsg_put_blob(&b, F_CERT_PEM, cert, certlen);
    syncmsg_put_blob(&b, F_KEY_PEM, key, keylen);
    send_msg(sv[0], &b);
    free(ca);
    free(cert);
    free(key);

    memset(&seen, 0, sizeof(seen));
    int ok = cycle(sv[0], buf, &m, 1, &seen);
    if (ok != 1)
        fail_msg("cycle failed: %d reports failed, last: %s", seen.reports_failed, seen.last_error);
    /* The config may have come before SM_POLL (SM_CONFIG starts the work at once). */
    assert_true(seen.station >= 1);
    assert_string_equal(seen.station_name, "Sporthalle E2E");
    assert_int_equal(seen.res, 3);
    assert_int_equal(seen.res_deleted, 1);
    assert_string_equal(seen.first_res, "r-a"); /* same modified: id order */
    assert_string_equal(seen.second_res, "r-b");
    assert_int_equal(seen.cred, 2);
    assert_true(seen.last_res >= 1);
    assert_true(seen.last_cred >= 1);

    /* A second cycle: the config is unchanged (304), the feeds have nothing new. */
    memset(&seen, 0, sizeof(seen));
    assert_int_equal(cycle(sv[0], buf, &m, 2, &seen), 1);
    assert_int_equal(seen.station, 0);
    assert_int_equal(seen.res, 0);

    /* Uploads: the second batch repeats the first one's event. */
    const char *e1 = "01890a5d-ac96-774b-bcce-b302099a0001";
    const char *e2 = "01890a5d-ac96-774b-bcce-b302099a0002";
    const char *batch1[] = {e1};
    const char *batch2[] = {e1, e2};
    upload(sv[0], buf, &m, 1, batch1, 1, results, sizeof(results));
    assert_string_equal(results, "created");
    upload(sv[0], buf, &m, 2, batch2, 2, results, sizeof(results));
    assert_string_equal(results, "duplicate,created");

    /* A daily usage summary is taken (204), again (a PUT replaces); one with a
     * personal field in its parameters is refused for good (422: "dead"). */
    char outcome[16];
    int64_t http;
    usage_put(sv[0], buf, &m, "2026-11-28", "\"reservationId\": \"r-a\", \"compartment\": 1",
              outcome, sizeof(outcome), &http);
    assert_string_equal(outcome, "done");
    assert_int_equal(http, 204);
    usage_put(sv[0], buf, &m, "2026-11-28", "\"reservationId\": \"r-a\"", outcome, sizeof(outcome),
              &http);
    assert_string_equal(outcome, "done");
    usage_put(sv[0], buf, &m, "2026-11-29", "\"memberId\": \"m-1\"", outcome, sizeof(outcome),
              &http);
    assert_string_equal(outcome, "dead");
    assert_int_equal(http, 422);

    /* EOF ends the worker with status 0. */
    close(sv[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc3339_good),
        cmocka_unit_test(test_rfc3339_bad),
        cmocka_unit_test(test_url_under),
        cmocka_unit_test(test_page_reservations_good),
        cmocka_unit_test(test_page_reservations_bad),
        cmocka_unit_test(test_page_too_many_items),
        cmocka_unit_test(test_page_credentials),
        cmocka_unit_test(test_station),
        cmocka_unit_test(test_upload_response),
        cmocka_unit_test(test_problem_and_sanitize),
        cmocka_unit_test_teardown(test_end_to_end, e2e_teardown),
    };
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return r;
}
