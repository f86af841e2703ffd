/*
 * test_selftest.c - the self-test's disk space thresholds (a full disk cannot be
 * arranged in a scenario test): fail below 50 MB or 5 %, warn below 200 MB or 10 %.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "daemon/selftest.h"

#define MB (1000ULL * 1000)
#define GB (1000ULL * MB)

static void test_disk_absolute_limits(void **state)
{
    (void)state;
    /* A large file system: only the absolute limits matter. */
    uint64_t total = 10000 * GB;
    assert_int_equal(selftest_disk_status(0, total), SELFTEST_FAIL);
    assert_int_equal(selftest_disk_status(50 * MB - 1, 1000 * MB * 1000), SELFTEST_FAIL);
    assert_int_equal(selftest_disk_status(2000 * GB, total), SELFTEST_PASS);
    /* 100 MB of a 1 GB file system: 10 % but under 200 MB. */
    assert_int_equal(selftest_disk_status(100 * MB, 1 * GB), SELFTEST_WARN);
    assert_int_equal(selftest_disk_status(50 * MB - 1, 1 * GB), SELFTEST_FAIL);
    assert_int_equal(selftest_disk_status(50 * MB, 1 * GB), SELFTEST_WARN);
    assert_int_equal(selftest_disk_status(200 * MB - 1, 1 * GB), SELFTEST_WARN);
    assert_int_equal(selftest_disk_status(200 * MB, 1 * GB), SELFTEST_PASS);
}

static void test_disk_percentages(void **state)
{
    (void)state;
    /* 100 GB file system: 5 % = 5 GB, 10 % = 10 GB. */
    uint64_t total = 100 * GB;
    assert_int_equal(selftest_disk_status(5 * GB - 1, total), SELFTEST_FAIL);
    assert_int_equal(selftest_disk_status(5 * GB, total), SELFTEST_WARN);
    assert_int_equal(selftest_disk_status(10 * GB - 1, total), SELFTEST_WARN);
    assert_int_equal(selftest_disk_status(10 * GB, total), SELFTEST_PASS);
    assert_int_equal(selftest_disk_status(total, total), SELFTEST_PASS);
}

static void test_disk_nonsense(void **state)
{
    (void)state;
    assert_int_equal(selftest_disk_status(0, 0), SELFTEST_FAIL);
    assert_int_equal(selftest_disk_status(2 * GB, 1 * GB), SELFTEST_FAIL);
}

static void test_status_names(void **state)
{
    (void)state;
    assert_string_equal(selftest_status_name(SELFTEST_PASS), "pass");
    assert_string_equal(selftest_status_name(SELFTEST_WARN), "warn");
    assert_string_equal(selftest_status_name(SELFTEST_SKIP), "skip");
    assert_string_equal(selftest_status_name(SELFTEST_CONFIRM), "confirm");
    assert_string_equal(selftest_status_name(SELFTEST_FAIL), "fail");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_disk_absolute_limits),
        cmocka_unit_test(test_disk_percentages),
        cmocka_unit_test(test_disk_nonsense),
        cmocka_unit_test(test_status_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
