/*
 * test_pin.c - card + PIN: the PIN hash (policy.c), its storage and lockout state
 * (store.c, member_pins), the back-off and which compartments need a PIN.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "daemon/config.h"
#include "daemon/policy.h"
#include "daemon/store.h"

static void test_pin_format(void **state)
{
    (void)state;
    assert_true(policy_pin_valid("1234"));
    assert_true(policy_pin_valid("12345678"));
    assert_false(policy_pin_valid("123"));
    assert_false(policy_pin_valid("123456789"));
    assert_false(policy_pin_valid("12a4"));
    assert_false(policy_pin_valid(""));
    assert_false(policy_pin_valid("1234\n"));
}

static void test_hash_and_verify(void **state)
{
    (void)state;
    char h1[POLICY_PIN_HASH_MAX], h2[POLICY_PIN_HASH_MAX];
    assert_true(policy_pin_hash("4711", h1, sizeof(h1)));
    assert_true(policy_pin_hash("4711", h2, sizeof(h2)));
    /* Salted: the same PIN hashes differently; the work factor is in the hash. */
    assert_string_not_equal(h1, h2);
    char want[40];
    snprintf(want, sizeof(want), "pbkdf2-sha256$%d$", POLICY_PIN_ITER);
    assert_memory_equal(h1, want, strlen(want));
    assert_null(strstr(h1, "4711"));
    assert_true(policy_pin_verify(h1, "4711"));
    assert_true(policy_pin_verify(h2, "4711"));
    assert_false(policy_pin_verify(h1, "4712"));
    assert_false(policy_pin_verify(h1, "47110"));
    assert_false(policy_pin_verify(h1, NULL));
    assert_false(policy_pin_hash("12", h2, sizeof(h2)));
    /* Malformed or tampered hashes never verify. */
    assert_false(policy_pin_verify("", "4711"));
    assert_false(policy_pin_verify("pbkdf2-sha256$50000$", "4711"));
    assert_false(policy_pin_verify("pbkdf2-sha256$1$AAAA$AAAA", "4711"));
    char bad[POLICY_PIN_HASH_MAX];
    snprintf(bad, sizeof(bad), "%s", h1);
    /* The first character of the hash: all six of its bits are data (near the end,
     * a base64 character's low bits may be padding that a decoder ignores, which
     * made this test fail now and then). */
    char *first = strrchr(bad, '$') + 1;
    *first = *first == 'A' ? 'B' : 'A';
    assert_false(policy_pin_verify(bad, "4711"));
    /* A lower stored work factor still verifies (it is read from the hash). */
    snprintf(bad, sizeof(bad), "%s", h1);
    assert_false(policy_pin_verify("sha256$x$y$z", "4711"));
}

static void test_lockout_backoff(void **state)
{
    (void)state;
    assert_int_equal(policy_pin_lockout_ms(0), 60 * 1000);
    assert_int_equal(policy_pin_lockout_ms(1), 120 * 1000);
    assert_int_equal(policy_pin_lockout_ms(2), 240 * 1000);
    assert_int_equal(policy_pin_lockout_ms(5), 1920 * 1000);
    assert_int_equal(policy_pin_lockout_ms(6), 3600 * 1000);
    assert_int_equal(policy_pin_lockout_ms(40), 3600 * 1000);
    assert_int_equal(POLICY_PIN_ATTEMPTS, 3);
}

static void test_pin_required(void **state)
{
    (void)state;
    static struct config cfg;
    config_defaults(&cfg);
    cfg.n_compartments = 2;
    cfg.compartments[0].number = 1;
    cfg.compartments[1].number = 2;
    cfg.compartments[1].pin = true;
    assert_false(policy_pin_required(&cfg, 1));
    assert_true(policy_pin_required(&cfg, 2));
    cfg.pin_required = true;
    assert_true(policy_pin_required(&cfg, 1));
    assert_int_equal(cfg.pin_timeout_ms, 30000);
}

static void test_store_pins(void **state)
{
    (void)state;
    char err[256], hash[POLICY_PIN_HASH_MAX];
    struct store *s = store_open(":memory:", err, sizeof(err));
    assert_non_null(s);
    struct club c = {.id = "club-a", .name = "A"};
    assert_int_equal(store_club_add(s, &c), STORE_OK);
    struct member m = {.id = "m1", .name = "M", .role = ROLE_MEMBER};
    assert_int_equal(store_member_add(s, &m), STORE_OK);
    struct pin_row pr;
    assert_int_equal(store_pin_get(s, "m1", &pr), STORE_NOTFOUND);
    assert_true(policy_pin_hash("2468", hash, sizeof(hash)));
    assert_int_equal(store_pin_set(s, "nobody", hash, 1), STORE_NOTFOUND);
    assert_int_equal(store_pin_set(s, "m1", hash, 1), STORE_OK);
    assert_int_equal(store_pin_get(s, "m1", &pr), STORE_OK);
    assert_string_equal(pr.hash, hash);
    assert_true(policy_pin_verify(pr.hash, "2468"));
    assert_int_equal(pr.failures, 0);
    assert_int_equal(store_pin_attempts(s, "m1", 2, 1, 12345), STORE_OK);
    assert_int_equal(store_pin_get(s, "m1", &pr), STORE_OK);
    assert_int_equal(pr.failures, 2);
    assert_int_equal(pr.lockouts, 1);
    assert_int_equal(pr.locked_until_ms, 12345);
    /* Setting a new PIN resets the lockout. */
    assert_int_equal(store_pin_set(s, "m1", hash, 2), STORE_OK);
    assert_int_equal(store_pin_get(s, "m1", &pr), STORE_OK);
    assert_int_equal(pr.lockouts, 0);
    assert_int_equal(pr.locked_until_ms, 0);
    /* Erasing the member erases the PIN. */
    struct erase_result er;
    assert_int_equal(store_member_erase(s, "m1", &er), STORE_OK);
    assert_int_equal(store_pin_get(s, "m1", &pr), STORE_NOTFOUND);
    assert_int_equal(store_pin_set(s, "m1", NULL, 3), STORE_NOTFOUND);
    store_close(s);
}

int main(void)
{
    log_init("test_pin", LOG_LVL_WARNING);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pin_format),      cmocka_unit_test(test_hash_and_verify),
        cmocka_unit_test(test_lockout_backoff), cmocka_unit_test(test_pin_required),
        cmocka_unit_test(test_store_pins),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
