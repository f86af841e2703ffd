/*
 * test_feedback.c - the LED and buzzer pattern table (daemon/feedback.c): every
 * situation and every refusal reason has a pattern, every pattern is well formed,
 * and the patterns are pairwise distinct in sound (the rhythm of the buzzer) as
 * well as in light.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "daemon/feedback.h"

/* The sound of a pattern: beep and pause lengths, equal neighbours merged, the
 * trailing pause dropped ("B40" / "B100 _100 B100 ..."). */
static void sound(const struct fb_pattern *p, char *out, size_t len)
{
    bool cur = false, any = false;
    int ms = 0;
    size_t n = 0;
    out[0] = '\0';
    for (int r = 0; r < p->repeat; r++) {
        for (int i = 0; i < p->nsteps; i++) {
            const struct fb_step *s = &p->steps[i];
            if (any && s->buzz == cur) {
                ms += s->ms;
                continue;
            }
            if (any)
                n += (size_t)snprintf(out + n, len - n, "%s%d ", cur ? "B" : "_", ms);
            cur = s->buzz;
            ms = s->ms;
            any = true;
        }
    }
    if (any && cur)
        n += (size_t)snprintf(out + n, len - n, "B%d", ms);
    while (n > 0 && out[n - 1] == ' ')
        out[--n] = '\0';
    /* A pattern that starts silent and is silent throughout has no sound. */
    if (n > 0 && out[0] == '_' && strchr(out, 'B') == NULL)
        out[0] = '\0';
}

static void light(const struct fb_pattern *p, char *out, size_t len)
{
    size_t n = 0;
    out[0] = '\0';
    for (int i = 0; i < p->nsteps; i++)
        n += (size_t)snprintf(out + n, len - n, "%d:%d ", (int)p->steps[i].colour, p->steps[i].ms);
    snprintf(out + n, len - n, "x%d", p->repeat);
}

static void test_every_situation_has_a_pattern(void **state)
{
    (void)state;
    size_t n;
    const struct fb_pattern *all = fb_patterns(&n);
    for (int sit = 0; sit < SIT_COUNT; sit++) {
        const struct fb_pattern *p = fb_pattern_for((enum station_situation)sit, REFUSE_NONE);
        assert_non_null(p);
        assert_true(p >= all && p < all + n);
    }
    /* Every refusal reason maps to a class, and the four classes to four patterns. */
    const struct fb_pattern *by_class[FB_REFUSED_COUNT] = {0};
    for (int r = REFUSE_NONE; r <= REFUSE_PIN_WRONG; r++) {
        const struct fb_pattern *p = fb_pattern_for(SIT_REFUSED, (enum refusal)r);
        enum fb_refusal_class c = fb_refusal_class((enum refusal)r);
        if (by_class[c] == NULL)
            by_class[c] = p;
        assert_ptr_equal(by_class[c], p);
    }
    for (int c = 0; c < FB_REFUSED_COUNT; c++)
        assert_non_null(by_class[c]);
    assert_int_equal(fb_refusal_class(REFUSE_UNKNOWN_CARD), FB_REFUSED_CARD);
    assert_int_equal(fb_refusal_class(REFUSE_NO_BOOKING), FB_REFUSED_BOOKING);
    assert_int_equal(fb_refusal_class(REFUSE_OUTSIDE_WINDOW), FB_REFUSED_BOOKING);
    assert_int_equal(fb_refusal_class(REFUSE_KEY_ALREADY_OUT), FB_REFUSED_KEY);
    assert_int_equal(fb_refusal_class(REFUSE_BUSY), FB_REFUSED_KEY);
    assert_int_equal(fb_refusal_class(REFUSE_OUT_OF_SERVICE), FB_REFUSED_SERVICE);
    assert_int_equal(fb_refusal_class(REFUSE_DATA_TOO_OLD), FB_REFUSED_SERVICE);
}

static void test_patterns_well_formed(void **state)
{
    (void)state;
    size_t n;
    const struct fb_pattern *all = fb_patterns(&n);
    for (size_t i = 0; i < n; i++) {
        const struct fb_pattern *p = &all[i];
        int64_t total = 0;
        assert_non_null(p->name);
        assert_true(p->nsteps >= 1 && p->nsteps <= FB_MAX_STEPS);
        assert_true(p->repeat >= 1);
        /* room for the grant's compartment blinks */
        if (strcmp(p->name, "granted") == 0)
            assert_true(p->nsteps + 2 * FB_MAX_BLINKS <= FB_MAX_STEPS);
        for (int k = 0; k < p->nsteps; k++) {
            assert_true(p->steps[k].ms >= 20 && p->steps[k].ms <= 5000);
            total += p->steps[k].ms;
        }
        /* A pattern ends (then the steady light resumes), and not after too long. */
        assert_true(total * p->repeat <= 10000);
        /* Never ends with the buzzer on: the last step of a round is silent. */
        assert_false(p->steps[p->nsteps - 1].buzz);
    }
}

static void test_pairwise_distinct_in_sound_and_light(void **state)
{
    (void)state;
    size_t n;
    const struct fb_pattern *all = fb_patterns(&n);
    char a[512], b[512];
    int silent = 0;
    for (size_t i = 0; i < n; i++) {
        sound(&all[i], a, sizeof(a));
        if (a[0] == '\0')
            silent++;
        for (size_t j = i + 1; j < n; j++) {
            sound(&all[j], b, sizeof(b));
            if (strcmp(a, b) == 0)
                fail_msg("%s and %s sound the same: %s", all[i].name, all[j].name, a);
            char la[512], lb[512];
            light(&all[i], la, sizeof(la));
            light(&all[j], lb, sizeof(lb));
            assert_string_not_equal(la, lb);
        }
    }
    /* Only "ready" is silent: a beep always means something happened. */
    assert_int_equal(silent, 1);
    sound(fb_pattern_for(SIT_READY, REFUSE_NONE), a, sizeof(a));
    assert_string_equal(a, "");
    sound(fb_pattern_for(SIT_READING, REFUSE_NONE), a, sizeof(a));
    assert_string_equal(a, "B40");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_situation_has_a_pattern),
        cmocka_unit_test(test_patterns_well_formed),
        cmocka_unit_test(test_pairwise_distinct_in_sound_and_light),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
