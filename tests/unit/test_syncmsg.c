/*
 * test_syncmsg.c - the sync worker message codec (daemon/syncmsg.c): round trips and
 * every refusal of the decoder, and that syncmsg_send() never sends what the decoder
 * would refuse.
 *
 * Bad messages are made by building a good one and then changing single bytes, so
 * each test breaks exactly one rule.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/syncmsg.h"

static uint8_t buf[SYNCMSG_MAX + 16];
static struct syncmsg msg;
static char why[200];

static size_t finish(struct syncmsg_builder *b)
{
    int64_t n = syncmsg_finish(b);
    assert_true(n > 0);
    return (size_t)n;
}

static int decode(size_t len)
{
    why[0] = '\0';
    return syncmsg_decode(buf, len, &msg, why, sizeof(why));
}

/* Expects decode to fail with a reason containing `part`. */
static void refused(size_t len, const char *part)
{
    assert_int_equal(decode(len), -1);
    if (strstr(why, part) == NULL)
        fail_msg("reason \"%s\" lacks \"%s\"", why, part);
}

/* A minimal valid SM_REPORT: op, ok. */
static size_t build_report(void)
{
    struct syncmsg_builder b;
    syncmsg_start(&b, buf, sizeof(buf), SM_REPORT);
    syncmsg_put_str(&b, F_OP, "events");
    syncmsg_put_int(&b, F_SUCCESS, 1);
    return finish(&b);
}

static void test_roundtrip_config(void **state)
{
    struct syncmsg_builder b;
    char s[128];
    (void)state;

    syncmsg_start(&b, buf, sizeof(buf), SM_CONFIG);
    syncmsg_put_str(&b, F_URL, "https://127.0.0.1:8443/keystation/v1");
    syncmsg_put_str(&b, F_STATION, "st-12");
    syncmsg_put_str(&b, F_VERSION, "0.1.0");
    syncmsg_put_str(&b, F_CA_PEM, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    syncmsg_put_str(&b, F_CERT_PEM, "cert\r\n\tx");
    syncmsg_put_str(&b, F_KEY_PEM, "key");
    syncmsg_put_str(&b, F_ETAG, "\"abc\"");
    size_t n = finish(&b);
    assert_int_equal(decode(n), 0);
    assert_int_equal(msg.type, SM_CONFIG);
    assert_int_equal(msg.count, 7);
    assert_true(syncmsg_str(&msg, F_STATION, s, sizeof(s)));
    assert_string_equal(s, "st-12");
    assert_true(syncmsg_str(&msg, F_ETAG, s, sizeof(s)));
    assert_string_equal(s, "\"abc\"");
    assert_false(syncmsg_has(&msg, F_CURSOR_RES));
    assert_int_equal(syncmsg_get(&msg, F_KEY_PEM)->len, 3);
    /* A too small out buffer is refused, not cut. */
    assert_false(syncmsg_str(&msg, F_STATION, s, 5));
    assert_string_equal(syncmsg_type_name(SM_CONFIG), "config");
    assert_string_equal(syncmsg_type_name(SM_TYPE_MAX), "?");
}

static void test_roundtrip_items(void **state)
{
    struct syncmsg_builder b;
    uint8_t hmac[32];
    char s[64];
    int pos = 0;
    const struct syncmsg_field *f;
    (void)state;

    syncmsg_start(&b, buf, sizeof(buf), SM_ITEM_RES);
    syncmsg_put_str(&b, F_ID, "r-881");
    syncmsg_put_int(&b, F_MODIFIED, INT64_C(1764352800123));
    syncmsg_put_int(&b, F_DELETED, 0);
    syncmsg_put_int(&b, F_START, -5);
    syncmsg_put_int(&b, F_END, INT64_MAX);
    syncmsg_put_str(&b, F_CLUB, "club-42");
    syncmsg_put_str(&b, F_CLUB_NAME, "SV Warnem\xc3\xbcnde");
    syncmsg_put_int(&b, F_COMPARTMENT, 2);
    syncmsg_put_int(&b, F_COMPARTMENT, 7);
    syncmsg_put_str(&b, F_STATUS, "confirmed");
    assert_int_equal(decode(finish(&b)), 0);
    assert_int_equal(syncmsg_int(&msg, F_MODIFIED, 0), INT64_C(1764352800123));
    assert_int_equal(syncmsg_int(&msg, F_START, 0), -5);
    assert_int_equal(syncmsg_int(&msg, F_END, 0), INT64_MAX);
    assert_int_equal(syncmsg_int(&msg, F_VALID_FROM, 99), 99);
    f = syncmsg_next(&msg, F_COMPARTMENT, &pos);
    assert_non_null(f);
    assert_int_equal(syncmsg_field_int(f), 2);
    f = syncmsg_next(&msg, F_COMPARTMENT, &pos);
    assert_non_null(f);
    assert_int_equal(syncmsg_field_int(f), 7);
    assert_null(syncmsg_next(&msg, F_COMPARTMENT, &pos));

    memset(hmac, 0xa5, sizeof(hmac));
    syncmsg_start(&b, buf, sizeof(buf), SM_ITEM_CRED);
    syncmsg_put_str(&b, F_ID, "cred-77");
    syncmsg_put_int(&b, F_MODIFIED, 1);
    syncmsg_put_int(&b, F_DELETED, 0);
    syncmsg_put_blob(&b, F_UID_HMAC, hmac, sizeof(hmac));
    syncmsg_put_str(&b, F_MEMBER_NAME, ""); /* names may be empty */
    syncmsg_put_str(&b, F_CLUB, "a");
    syncmsg_put_str(&b, F_CLUB, "b");
    assert_int_equal(decode(finish(&b)), 0);
    assert_memory_equal(syncmsg_get(&msg, F_UID_HMAC)->data, hmac, 32);
    assert_true(syncmsg_str(&msg, F_MEMBER_NAME, s, sizeof(s)));
    assert_string_equal(s, "");
}

/* One reservation item as a whole message in out; its length. */
static size_t build_item(uint8_t *out, size_t cap, const char *id)
{
    struct syncmsg_builder b;
    syncmsg_start(&b, out, cap, SM_ITEM_RES);
    syncmsg_put_str(&b, F_ID, id);
    syncmsg_put_int(&b, F_MODIFIED, 1);
    syncmsg_put_int(&b, F_DELETED, 1);
    return finish(&b);
}

/* An SM_ITEMS message in buf with the one embedded message m[0..n); its length. */
static size_t items_of_one(const uint8_t *m, size_t n)
{
    struct syncmsg_builder b;
    syncmsg_start(&b, buf, sizeof(buf), SM_ITEMS);
    syncmsg_put_blob(&b, F_ITEM, m, n);
    return finish(&b);
}

/* SM_ITEMS: items travel whole inside one message, each checked by its own schema. */
static void test_items_batch(void **state)
{
    struct syncmsg_builder b;
    static uint8_t item[SYNCMSG_ITEM_MAX];
    static struct syncmsg inner;
    char id[16], s[16];
    int pos = 0;
    const struct syncmsg_field *f;
    (void)state;

    syncmsg_start(&b, buf, sizeof(buf), SM_ITEMS);
    for (int i = 0; i < SYNCMSG_ITEMS_MAX; i++) {
        snprintf(id, sizeof id, "r-%d", i);
        size_t n = build_item(item, sizeof item, id);
        syncmsg_put_blob(&b, F_ITEM, item, n);
    }
    assert_int_equal(decode(finish(&b)), 0);
    assert_int_equal(msg.type, SM_ITEMS);
    for (int i = 0; (f = syncmsg_next(&msg, F_ITEM, &pos)) != NULL; i++) {
        assert_int_equal(syncmsg_decode(f->data, f->len, &inner, why, sizeof why), 0);
        assert_int_equal(inner.type, SM_ITEM_RES);
        assert_true(syncmsg_str(&inner, F_ID, s, sizeof s));
        snprintf(id, sizeof id, "r-%d", i);
        assert_string_equal(s, id);
    }

    /* One item more than SYNCMSG_ITEMS_MAX. */
    size_t n = build_item(item, sizeof item, "r-x");
    syncmsg_start(&b, buf, sizeof(buf), SM_ITEMS);
    for (int i = 0; i <= SYNCMSG_ITEMS_MAX; i++)
        syncmsg_put_blob(&b, F_ITEM, item, n);
    refused(finish(&b), "101 items");

    /* An embedded item that breaks its own schema: no id. */
    struct syncmsg_builder ib;
    syncmsg_start(&ib, item, sizeof item, SM_ITEM_RES);
    syncmsg_put_int(&ib, F_MODIFIED, 1);
    syncmsg_put_int(&ib, F_DELETED, 1);
    refused(items_of_one(item, finish(&ib)), "missing field id");

    /* An embedded message of another type. */
    syncmsg_start(&ib, item, sizeof item, SM_REPORT);
    syncmsg_put_str(&ib, F_OP, "events");
    syncmsg_put_int(&ib, F_SUCCESS, 1);
    refused(items_of_one(item, finish(&ib)), "a report message");

    /* A batch inside a batch, though every item in it is valid: not even looked
     * into. */
    static uint8_t valid[256], nested[512];
    n = build_item(valid, sizeof valid, "r-1");
    syncmsg_start(&ib, nested, sizeof nested, SM_ITEMS);
    syncmsg_put_blob(&ib, F_ITEM, valid, n);
    refused(items_of_one(nested, finish(&ib)), "a items message");

    /* An empty batch. */
    syncmsg_start(&b, buf, sizeof(buf), SM_ITEMS);
    refused(finish(&b), "missing field item");
}

static void test_roundtrip_upload_done(void **state)
{
    struct syncmsg_builder b;
    char id[37];
    (void)state;

    /* The largest answer: 100 pairs plus batch, outcome, http, error. */
    syncmsg_start(&b, buf, sizeof(buf), SM_UPLOAD_DONE);
    syncmsg_put_int(&b, F_BATCH, 3);
    syncmsg_put_str(&b, F_OUTCOME, "done");
    syncmsg_put_int(&b, F_HTTP, 200);
    syncmsg_put_str(&b, F_ERROR, "");
    for (int i = 0; i < 100; i++) {
        snprintf(id, sizeof(id), "01890a5d-ac96-774b-bcce-%012u", (unsigned)i);
        syncmsg_put_str(&b, F_EVENT_ID, id);
        syncmsg_put_str(&b, F_RESULT, "duplicate");
    }
    assert_int_equal(decode(finish(&b)), 0);
    assert_int_equal(msg.count, 204);
}

/* The daily usage summary: SM_USAGE out, SM_USAGE_DONE back, both naming the day. */
static void test_usage_messages(void **state)
{
    struct syncmsg_builder b;
    char s[64];
    (void)state;

    syncmsg_start(&b, buf, sizeof(buf), SM_USAGE);
    syncmsg_put_str(&b, F_DATE, "2026-11-28");
    syncmsg_put_str(&b, F_BODY, "{\"date\": \"2026-11-28\"}\n");
    assert_int_equal(decode(finish(&b)), 0);
    assert_int_equal(msg.type, SM_USAGE);
    assert_true(syncmsg_str(&msg, F_DATE, s, sizeof(s)));
    assert_string_equal(s, "2026-11-28");
    assert_string_equal(syncmsg_type_name(SM_USAGE), "usage");

    syncmsg_start(&b, buf, sizeof(buf), SM_USAGE_DONE);
    syncmsg_put_str(&b, F_DATE, "2026-11-28");
    syncmsg_put_str(&b, F_OUTCOME, "dead");
    syncmsg_put_int(&b, F_HTTP, 422);
    syncmsg_put_str(&b, F_ERROR, "Unprocessable Entity: x");
    assert_int_equal(decode(finish(&b)), 0);
    assert_int_equal(syncmsg_int(&msg, F_HTTP, 0), 422);
    assert_string_equal(syncmsg_type_name(SM_USAGE_DONE), "usage_done");

    /* The date is required, exactly 10 characters and a clean string. */
    syncmsg_start(&b, buf, sizeof(buf), SM_USAGE);
    syncmsg_put_str(&b, F_BODY, "{}");
    refused(finish(&b), "missing field date");
    syncmsg_start(&b, buf, sizeof(buf), SM_USAGE);
    syncmsg_put_str(&b, F_DATE, "2026-11-8");
    syncmsg_put_str(&b, F_BODY, "{}");
    refused(finish(&b), "length 9");
    syncmsg_start(&b, buf, sizeof(buf), SM_USAGE);
    syncmsg_put_str(&b, F_DATE, "2026-11-28\n");
    syncmsg_put_str(&b, F_BODY, "{}");
    refused(finish(&b), "length 11");
    syncmsg_start(&b, buf, sizeof(buf), SM_USAGE);
    syncmsg_put_str(&b, F_DATE, "2026\n11-28");
    syncmsg_put_str(&b, F_BODY, "{}");
    refused(finish(&b), "not clean UTF-8");
    /* No body without a date, no outcome without a date, no body in the answer. */
    syncmsg_start(&b, buf, sizeof(buf), SM_USAGE_DONE);
    syncmsg_put_str(&b, F_OUTCOME, "done");
    refused(finish(&b), "missing field date");
    syncmsg_start(&b, buf, sizeof(buf), SM_USAGE_DONE);
    syncmsg_put_str(&b, F_DATE, "2026-11-28");
    syncmsg_put_str(&b, F_OUTCOME, "done");
    syncmsg_put_str(&b, F_BODY, "{}");
    refused(finish(&b), "unexpected field tag");
    syncmsg_start(&b, buf, sizeof(buf), SM_USAGE_DONE);
    syncmsg_put_str(&b, F_DATE, "2026-11-28");
    syncmsg_put_str(&b, F_DATE, "2026-11-29");
    syncmsg_put_str(&b, F_OUTCOME, "done");
    refused(finish(&b), "repeated");
}

static void test_builder_overflow(void **state)
{
    struct syncmsg_builder b;
    uint8_t small[16];
    (void)state;

    syncmsg_start(&b, small, sizeof(small), SM_REPORT);
    syncmsg_put_str(&b, F_OP, "reservations");
    assert_int_equal(syncmsg_finish(&b), -1);

    /* More fields than SYNCMSG_MAX_FIELDS. */
    syncmsg_start(&b, buf, sizeof(buf), SM_UPLOAD_DONE);
    for (int i = 0; i < SYNCMSG_MAX_FIELDS + 1; i++)
        syncmsg_put_str(&b, F_RESULT, "created");
    assert_int_equal(syncmsg_finish(&b), -1);
}

static void test_refuse_length_version_type(void **state)
{
    size_t n = build_report();
    (void)state;

    refused(3, "message length");
    refused(SYNCMSG_MAX + 1, "message length");
    buf[0] = 2;
    refused(n, "version");
    buf[0] = SYNCMSG_VERSION;
    buf[1] = 0;
    refused(n, "unknown message type");
    buf[1] = SM_TYPE_MAX;
    refused(n, "unknown message type");
    buf[1] = SM_REPORT;
    assert_int_equal(decode(n), 0);
}

static void test_refuse_truncation(void **state)
{
    size_t n = build_report();
    (void)state;

    /* Cut inside the last field's header and inside its data. */
    refused(n - 8 - 3, "truncated");
    refused(n - 1, "runs past the end");
    /* Count says more fields than there are. */
    buf[2] = 3;
    refused(n, "truncated");
    buf[2] = 2;
    /* Too many fields claimed. */
    buf[2] = (uint8_t)(SYNCMSG_MAX_FIELDS + 1);
    buf[3] = (uint8_t)((SYNCMSG_MAX_FIELDS + 1) >> 8);
    refused(n, "fields");
}

static void test_refuse_trailing(void **state)
{
    size_t n = build_report();
    (void)state;

    buf[n] = 0;
    refused(n + 1, "trailing");
}

static void test_refuse_bad_tag(void **state)
{
    size_t n = build_report();
    (void)state;

    /* The first field's tag: F_OP -> 0, -> beyond F_TAG_MAX, -> a tag SM_REPORT has not. */
    buf[4] = 0;
    refused(n, "unexpected field tag");
    buf[4] = F_TAG_MAX;
    refused(n, "unexpected field tag");
    buf[4] = F_URL;
    refused(n, "unexpected field tag");
}

static void test_refuse_repeated_and_missing(void **state)
{
    struct syncmsg_builder b;
    (void)state;

    syncmsg_start(&b, buf, sizeof(buf), SM_REPORT);
    syncmsg_put_str(&b, F_OP, "events");
    syncmsg_put_int(&b, F_SUCCESS, 1);
    syncmsg_put_int(&b, F_SUCCESS, 0);
    refused(finish(&b), "repeated");

    syncmsg_start(&b, buf, sizeof(buf), SM_REPORT);
    syncmsg_put_str(&b, F_OP, "events");
    refused(finish(&b), "missing field ok");

    /* SOME: an upload needs at least one event id. */
    syncmsg_start(&b, buf, sizeof(buf), SM_UPLOAD);
    syncmsg_put_int(&b, F_BATCH, 1);
    syncmsg_put_str(&b, F_BODY, "{}");
    refused(finish(&b), "missing field event_id");
}

static void test_refuse_int_length(void **state)
{
    struct syncmsg_builder b;
    uint8_t four[4] = {1, 0, 0, 0};
    (void)state;

    syncmsg_start(&b, buf, sizeof(buf), SM_POLL);
    syncmsg_put_blob(&b, F_CYCLE, four, sizeof(four));
    refused(finish(&b), "length 4");

    /* A fixed-length blob, one byte short. */
    uint8_t hmac[31] = {0};
    syncmsg_start(&b, buf, sizeof(buf), SM_ITEM_CRED);
    syncmsg_put_str(&b, F_ID, "c");
    syncmsg_put_int(&b, F_MODIFIED, 1);
    syncmsg_put_int(&b, F_DELETED, 0);
    syncmsg_put_blob(&b, F_UID_HMAC, hmac, sizeof(hmac));
    refused(finish(&b), "uid_hmac");
}

static void test_refuse_string_rules(void **state)
{
    static const char *const bad[] = {
        "a\x01",            /* C0 control */
        "a\x7f",            /* DEL */
        "a\xc2\x85",        /* C1 control (NEL) */
        "\xc0\xaf",         /* overlong */
        "\xed\xa0\x80",     /* surrogate */
        "\xf4\x90\x80\x80", /* above U+10FFFF */
        "\xe2\x82",         /* cut sequence */
        "\x80",             /* lone continuation */
        "\xff",
    };
    struct syncmsg_builder b;
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        syncmsg_start(&b, buf, sizeof(buf), SM_REPORT);
        syncmsg_put_str(&b, F_OP, "events");
        syncmsg_put_int(&b, F_SUCCESS, 0);
        syncmsg_put_str(&b, F_ERROR, bad[i]);
        refused(finish(&b), "not clean UTF-8");
    }
    /* Tab and newline: refused in strings, allowed in text (PEM, bodies). */
    syncmsg_start(&b, buf, sizeof(buf), SM_REPORT);
    syncmsg_put_str(&b, F_OP, "events");
    syncmsg_put_int(&b, F_SUCCESS, 0);
    syncmsg_put_str(&b, F_ERROR, "a\tb");
    refused(finish(&b), "not clean UTF-8");
    syncmsg_start(&b, buf, sizeof(buf), SM_HEARTBEAT);
    syncmsg_put_str(&b, F_BODY, "{\n\t\"a\": 1\r\n}");
    assert_int_equal(decode(finish(&b)), 0);
    /* NUL is a control character in text too. */
    syncmsg_start(&b, buf, sizeof(buf), SM_HEARTBEAT);
    syncmsg_put_blob(&b, F_BODY, "{\0}", 3);
    refused(finish(&b), "not clean UTF-8");
    /* Good multibyte text. */
    syncmsg_start(&b, buf, sizeof(buf), SM_STATION);
    syncmsg_put_str(&b, F_ETAG, "\"e\"");
    syncmsg_put_str(&b, F_NAME, "Sporthalle \xe2\x82\xac \xf0\x9f\x94\x91");
    syncmsg_put_int(&b, F_INTERVAL_RES, 60);
    syncmsg_put_int(&b, F_INTERVAL_CRED, 60);
    syncmsg_put_int(&b, F_INTERVAL_CONFIG, 60);
    syncmsg_put_int(&b, F_INTERVAL_HEARTBEAT, 60);
    assert_int_equal(decode(finish(&b)), 0);
}

static void test_refuse_string_length(void **state)
{
    struct syncmsg_builder b;
    char longid[128];
    (void)state;

    memset(longid, 'a', 64);
    longid[64] = '\0';
    syncmsg_start(&b, buf, sizeof(buf), SM_FEED_GONE);
    syncmsg_put_int(&b, F_FEED, 1);
    assert_int_equal(decode(finish(&b)), 0);

    syncmsg_start(&b, buf, sizeof(buf), SM_ITEM_RES);
    syncmsg_put_str(&b, F_ID, longid);
    syncmsg_put_int(&b, F_MODIFIED, 1);
    syncmsg_put_int(&b, F_DELETED, 1);
    refused(finish(&b), "length 64");

    syncmsg_start(&b, buf, sizeof(buf), SM_ITEM_RES);
    syncmsg_put_str(&b, F_ID, "");
    syncmsg_put_int(&b, F_MODIFIED, 1);
    syncmsg_put_int(&b, F_DELETED, 1);
    refused(finish(&b), "length 0");

    /* Event ids are exactly 36 characters. */
    syncmsg_start(&b, buf, sizeof(buf), SM_UPLOAD);
    syncmsg_put_int(&b, F_BATCH, 1);
    syncmsg_put_str(&b, F_BODY, "{}");
    syncmsg_put_str(&b, F_EVENT_ID, "short");
    refused(finish(&b), "event_id");

    /* A field length larger than the message. */
    size_t n = build_report();
    buf[4 + 2 + 3] = 0x7f;
    refused(n, "runs past the end");
}

static void test_send_checks_schema(void **state)
{
    int sv[2];
    struct syncmsg_builder b;
    uint8_t in[SYNCMSG_MAX];
    (void)state;

    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    size_t n = build_report();
    assert_int_equal(syncmsg_send(sv[0], buf, n, true), 0);
    assert_int_equal(recv(sv[1], in, sizeof(in), 0), (ssize_t)n);
    assert_memory_equal(in, buf, n);

    /* Missing a required field: refused on the sender's side, nothing sent. */
    syncmsg_start(&b, buf, sizeof(buf), SM_REPORT);
    syncmsg_put_str(&b, F_OP, "events");
    n = finish(&b);
    errno = 0;
    assert_int_equal(syncmsg_send(sv[0], buf, n, true), -1);
    assert_int_equal(errno, EPROTO);
    assert_int_equal(recv(sv[1], in, sizeof(in), MSG_DONTWAIT), -1);
    assert_int_equal(errno, EAGAIN);

    /* A closed peer: EPIPE, no SIGPIPE. */
    close(sv[1]);
    n = build_report();
    assert_int_equal(syncmsg_send(sv[0], buf, n, true), -1);
    assert_int_equal(errno, EPIPE);
    close(sv[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_config),
        cmocka_unit_test(test_roundtrip_items),
        cmocka_unit_test(test_items_batch),
        cmocka_unit_test(test_roundtrip_upload_done),
        cmocka_unit_test(test_usage_messages),
        cmocka_unit_test(test_builder_overflow),
        cmocka_unit_test(test_refuse_length_version_type),
        cmocka_unit_test(test_refuse_truncation),
        cmocka_unit_test(test_refuse_trailing),
        cmocka_unit_test(test_refuse_bad_tag),
        cmocka_unit_test(test_refuse_repeated_and_missing),
        cmocka_unit_test(test_refuse_int_length),
        cmocka_unit_test(test_refuse_string_rules),
        cmocka_unit_test(test_refuse_string_length),
        cmocka_unit_test(test_send_checks_schema),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
