/*
 * test_policy.c - every refusal reason and every grant of policy_decide(), against
 * a real (in-memory) store.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "daemon/config.h"
#include "daemon/policy.h"
#include "daemon/store.h"

#define H   (3600LL * 1000)
#define MIN (60LL * 1000)
#define NOW (1795885200000LL) /* 2026-11-28T17:00:00Z */

struct fixture {
    struct config cfg;
    struct store *store;
    struct comp_view comps[4];
    struct card_read card;
};

static uint8_t hmac_a[32] = {1};
static uint8_t hmac_b[32] = {2};
static uint8_t hmac_unknown[32] = {9};

static void add_member(struct store *s, const char *id, const char *club)
{
    struct member m = {.role = ROLE_MEMBER};
    snprintf(m.id, sizeof(m.id), "%s", id);
    snprintf(m.name, sizeof(m.name), "Member %s", id);
    assert_int_equal(store_member_add(s, &m), STORE_OK);
    assert_int_equal(store_member_join(s, id, club), STORE_OK);
}

static void add_cred(struct store *s, const char *id, const char *member, const uint8_t *hmac)
{
    struct credential c = {.status = CRED_ACTIVE};
    snprintf(c.id, sizeof(c.id), "%s", id);
    snprintf(c.member_id, sizeof(c.member_id), "%s", member);
    memcpy(c.uid_hmac, hmac, 32);
    snprintf(c.card_type, sizeof(c.card_type), "desfire");
    snprintf(c.source, sizeof(c.source), "local");
    assert_int_equal(store_credential_add(s, &c), STORE_OK);
}

static void add_booking(struct store *s, const char *id, const char *club, int comp, int64_t start,
                        int64_t end)
{
    struct booking b = {.compartment = comp, .start_ms = start, .end_ms = end};
    snprintf(b.id, sizeof(b.id), "%s", id);
    snprintf(b.club_id, sizeof(b.club_id), "%s", club);
    snprintf(b.source, sizeof(b.source), "local");
    assert_int_equal(store_booking_add(s, &b), STORE_OK);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    char err[256];
    config_defaults(&f->cfg);
    f->store = store_open(":memory:", err, sizeof(err));
    assert_non_null(f->store);
    struct club a = {.id = "club-a", .name = "A"}, b = {.id = "club-b", .name = "B"};
    assert_int_equal(store_club_add(f->store, &a), STORE_OK);
    assert_int_equal(store_club_add(f->store, &b), STORE_OK);
    add_member(f->store, "m-a", "club-a");
    add_member(f->store, "m-b", "club-b");
    add_cred(f->store, "c-a", "m-a", hmac_a);
    add_cred(f->store, "c-b", "m-b", hmac_b);
    for (int i = 0; i < 4; i++) {
        f->comps[i].number = i + 1;
        f->comps[i].key_present = true;
    }
    f->card.kind = CARD_KIND_DESFIRE;
    f->card.authenticated = true;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    store_close(f->store);
    free(f);
    return 0;
}

static struct decision decide(struct fixture *f, const uint8_t *hmac, int64_t now)
{
    struct decision d;
    policy_decide(&f->cfg, f->store, hmac, &f->card, f->comps, 4, now, &d);
    return d;
}

static void test_pickup_granted(void **state)
{
    struct fixture *f = *state;
    add_booking(f->store, "b1", "club-a", 2, NOW, NOW + 2 * H);
    struct decision d = decide(f, hmac_a, NOW + 5 * MIN);
    assert_int_equal(d.action, POLICY_PICKUP);
    assert_int_equal(d.compartment, 2);
    assert_string_equal(d.booking.id, "b1");
    assert_string_equal(d.club_id, "club-a");
    assert_string_equal(d.member.id, "m-a");
}

static void test_pickup_window(void **state)
{
    struct fixture *f = *state;
    add_booking(f->store, "b1", "club-a", 2, NOW, NOW + 2 * H);
    /* 15 minutes before is the edge of the default window. */
    assert_int_equal(decide(f, hmac_a, NOW - 15 * MIN).action, POLICY_PICKUP);
    struct decision d = decide(f, hmac_a, NOW - 16 * MIN);
    assert_int_equal(d.action, POLICY_REFUSE);
    assert_int_equal(d.reason, REFUSE_OUTSIDE_WINDOW);
    assert_int_equal(d.next_start_ms, NOW);
    /* Late tolerance: 30 minutes after the start the key is no longer handed out. */
    assert_int_equal(decide(f, hmac_a, NOW + 29 * MIN).action, POLICY_PICKUP);
    d = decide(f, hmac_a, NOW + 30 * MIN);
    assert_int_equal(d.reason, REFUSE_OUTSIDE_WINDOW);
    /* Configurable. */
    f->cfg.pickup_window_ms = 60 * MIN;
    f->cfg.late_tolerance_ms = 2 * H;
    assert_int_equal(decide(f, hmac_a, NOW - 59 * MIN).action, POLICY_PICKUP);
    assert_int_equal(decide(f, hmac_a, NOW + 90 * MIN).action, POLICY_PICKUP);
    /* Never after the end of the slot, whatever the tolerance. */
    assert_int_equal(decide(f, hmac_a, NOW + 2 * H).reason, REFUSE_NO_BOOKING);
}

static void test_no_booking(void **state)
{
    struct fixture *f = *state;
    /* The other club's booking does not help. */
    add_booking(f->store, "b1", "club-b", 2, NOW, NOW + 2 * H);
    struct decision d = decide(f, hmac_a, NOW);
    assert_int_equal(d.action, POLICY_REFUSE);
    assert_int_equal(d.reason, REFUSE_NO_BOOKING);
    assert_true(d.have_credential);
    /* A booking next week is not "outside the window" but gives the next start. */
    add_booking(f->store, "b2", "club-a", 3, NOW + 72 * H, NOW + 74 * H);
    d = decide(f, hmac_a, NOW);
    assert_int_equal(d.reason, REFUSE_NO_BOOKING);
    assert_int_equal(d.next_start_ms, NOW + 72 * H);
}

static void test_cancelled_booking(void **state)
{
    struct fixture *f = *state;
    add_booking(f->store, "b1", "club-a", 2, NOW, NOW + 2 * H);
    assert_int_equal(store_booking_cancel(f->store, "b1"), STORE_OK);
    assert_int_equal(decide(f, hmac_a, NOW).reason, REFUSE_NO_BOOKING);
}

static void test_unknown_card(void **state)
{
    struct fixture *f = *state;
    struct decision d = decide(f, hmac_unknown, NOW);
    assert_int_equal(d.reason, REFUSE_UNKNOWN_CARD);
    assert_false(d.have_credential);
}

static void test_insecure_card(void **state)
{
    struct fixture *f = *state;
    add_booking(f->store, "b1", "club-a", 2, NOW, NOW + 2 * H);
    f->card.kind = CARD_KIND_UID;
    f->card.authenticated = false;
    assert_int_equal(decide(f, hmac_a, NOW).reason, REFUSE_INSECURE_CARD);
    /* A DESFire card that failed authentication is a clone or a stranger. */
    f->card.kind = CARD_KIND_DESFIRE;
    assert_int_equal(decide(f, hmac_a, NOW).reason, REFUSE_CARD_AUTH_FAILED);
    /* uid-insecure is an explicit opt-in. */
    f->cfg.auth = CARD_AUTH_UID_INSECURE;
    f->card.kind = CARD_KIND_UID;
    assert_int_equal(decide(f, hmac_a, NOW).action, POLICY_PICKUP);
}

static void test_revoked(void **state)
{
    struct fixture *f = *state;
    add_booking(f->store, "b1", "club-a", 2, NOW, NOW + 2 * H);
    assert_int_equal(store_credential_revoke(f->store, "c-a"), STORE_OK);
    assert_int_equal(decide(f, hmac_a, NOW).reason, REFUSE_REVOKED);
}

static void test_expired(void **state)
{
    struct fixture *f = *state;
    uint8_t h[32] = {7};
    struct credential c = {
        .status = CRED_ACTIVE, .valid_from_ms = NOW - 10 * H, .valid_until_ms = NOW - H};
    snprintf(c.id, sizeof(c.id), "c-old");
    snprintf(c.member_id, sizeof(c.member_id), "m-a");
    memcpy(c.uid_hmac, h, 32);
    snprintf(c.card_type, sizeof(c.card_type), "desfire");
    snprintf(c.source, sizeof(c.source), "local");
    assert_int_equal(store_credential_add(f->store, &c), STORE_OK);
    add_booking(f->store, "b1", "club-a", 2, NOW, NOW + 2 * H);
    assert_int_equal(decide(f, h, NOW).reason, REFUSE_EXPIRED);
    /* Not yet valid is refused with the same reason. */
    assert_int_equal(decide(f, h, NOW - 11 * H).reason, REFUSE_EXPIRED);
    /* Valid two hours before the slot: refused only for being early. */
    assert_int_equal(decide(f, h, NOW - 2 * H).reason, REFUSE_OUTSIDE_WINDOW);
}

static void test_offline_data_too_old(void **state)
{
    struct fixture *f = *state;
    uint8_t h[32] = {8};
    struct credential c = {.status = CRED_ACTIVE, .synced_at_ms = NOW - 73 * H};
    snprintf(c.id, sizeof(c.id), "c-city");
    snprintf(c.member_id, sizeof(c.member_id), "m-a");
    memcpy(c.uid_hmac, h, 32);
    snprintf(c.card_type, sizeof(c.card_type), "desfire");
    snprintf(c.source, sizeof(c.source), "city");
    assert_int_equal(store_credential_add(f->store, &c), STORE_OK);
    add_booking(f->store, "b1", "club-a", 2, NOW, NOW + 2 * H);
    assert_int_equal(decide(f, h, NOW).reason, REFUSE_DATA_TOO_OLD);
    f->cfg.offline_max_age_ms = 96 * H;
    assert_int_equal(decide(f, h, NOW).action, POLICY_PICKUP);

    /* A city booking synced too long ago is not trusted either. */
    struct booking b = {.compartment = 3,
                        .start_ms = NOW + 3 * H,
                        .end_ms = NOW + 4 * H,
                        .synced_at_ms = NOW - 100 * H};
    snprintf(b.id, sizeof(b.id), "r-1");
    snprintf(b.club_id, sizeof(b.club_id), "club-b");
    snprintf(b.source, sizeof(b.source), "city");
    assert_int_equal(store_booking_add(f->store, &b), STORE_OK);
    assert_int_equal(decide(f, hmac_b, NOW + 3 * H).reason, REFUSE_DATA_TOO_OLD);
}

static void test_key_already_out(void **state)
{
    struct fixture *f = *state;
    add_booking(f->store, "b1", "club-a", 2, NOW, NOW + 2 * H);
    f->comps[1].key_present = false; /* taken by a service open: no holder */
    struct decision d = decide(f, hmac_a, NOW);
    assert_int_equal(d.reason, REFUSE_KEY_ALREADY_OUT);
    assert_int_equal(d.compartment, 2);
}

static void test_out_of_service_and_busy(void **state)
{
    struct fixture *f = *state;
    add_booking(f->store, "b1", "club-a", 2, NOW, NOW + 2 * H);
    f->comps[1].out_of_service = true;
    assert_int_equal(decide(f, hmac_a, NOW).reason, REFUSE_OUT_OF_SERVICE);
    f->comps[1].out_of_service = false;
    f->comps[1].busy = true;
    assert_int_equal(decide(f, hmac_a, NOW).reason, REFUSE_BUSY);
}

static void test_return_by_holder_and_club(void **state)
{
    struct fixture *f = *state;
    f->comps[2].key_present = false;
    snprintf(f->comps[2].holder_member, STORE_ID_LEN, "m-a");
    snprintf(f->comps[2].holder_club, STORE_ID_LEN, "club-a");
    /* The holder returns, even long after the slot and without any booking. */
    struct decision d = decide(f, hmac_a, NOW + 48 * H);
    assert_int_equal(d.action, POLICY_RETURN);
    assert_int_equal(d.compartment, 3);
    /* A member of another club may not. */
    assert_int_equal(decide(f, hmac_b, NOW).reason, REFUSE_NO_BOOKING);
    /* A co-trainer of the same club may. */
    uint8_t h[32] = {5};
    add_member(f->store, "m-a2", "club-a");
    add_cred(f->store, "c-a2", "m-a2", h);
    assert_int_equal(decide(f, h, NOW).action, POLICY_RETURN);
    /* A card revoked while its key was out may still bring the key back... */
    assert_int_equal(store_credential_revoke(f->store, "c-a"), STORE_OK);
    assert_int_equal(decide(f, hmac_a, NOW).action, POLICY_RETURN);
    /* ...but an unknown card may not. */
    assert_int_equal(decide(f, hmac_unknown, NOW).reason, REFUSE_UNKNOWN_CARD);
}

static void test_several_clubs(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(store_member_join(f->store, "m-a", "club-b"), STORE_OK);
    add_booking(f->store, "b1", "club-b", 4, NOW, NOW + H);
    struct decision d = decide(f, hmac_a, NOW);
    assert_int_equal(d.action, POLICY_PICKUP);
    assert_int_equal(d.compartment, 4);
    assert_string_equal(d.club_id, "club-b");
}

static void test_refusal_codes_distinct(void **state)
{
    (void)state;
    for (int a = REFUSE_NONE; a <= REFUSE_INTERNAL; a++) {
        for (int b = a + 1; b <= REFUSE_INTERNAL; b++)
            assert_string_not_equal(refusal_code(a), refusal_code(b));
    }
    assert_false(policy_may_service_open(ROLE_MEMBER));
    assert_true(policy_may_service_open(ROLE_MANAGER));
    assert_true(policy_may_service_open(ROLE_TECHNICIAN));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pickup_granted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pickup_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_booking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancelled_booking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_card, setup, teardown),
        cmocka_unit_test_setup_teardown(test_insecure_card, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revoked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expired, setup, teardown),
        cmocka_unit_test_setup_teardown(test_offline_data_too_old, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_already_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_of_service_and_busy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_return_by_holder_and_club, setup, teardown),
        cmocka_unit_test_setup_teardown(test_several_clubs, setup, teardown),
        cmocka_unit_test(test_refusal_codes_distinct),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
