/*
 * feedback.c - LED and buzzer patterns (see feedback.h and lockerd(8), FEEDBACK).
 *
 * The patterns are data: table[] below. What tells them apart by ear is the rhythm
 * of the buzzer (an active buzzer has one tone): every pattern has its own sequence
 * of beep and pause lengths (tests/unit/test_feedback.c checks that they are
 * pairwise distinct), and "ready" is the only silent one. The light says the same
 * in colour and blinking, for those who cannot hear it.
 *
 * Which compartment opened is blinked after a grant: one short green blink per
 * compartment number, silent, up to FB_MAX_BLINKS; beyond that (and always, in
 * words) the screen says it, and the door that opened can be felt and heard.
 */
#include "daemon/feedback.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"

#define B true  /* buzzer on */
#define S false /* silent */

static const struct fb_pattern table[] = {
    /* The steady states' entry: green, silent (the only silent pattern). */
    {"ready", {{FB_GREEN, S, 600}}, 1, 1},
    /* A card was read: one tick, blue until the decision replaces it. */
    {"reading", {{FB_BLUE, B, 40}, {FB_BLUE, S, 1500}}, 2, 1},
    /* Granted: one long beep, green (then the compartment blinks). */
    {"granted", {{FB_GREEN, B, 400}, {FB_GREEN, S, 400}}, 2, 1},
    /* Enter your PIN: two ticks, blue. */
    {"pin-wanted",
     {{FB_BLUE, B, 40}, {FB_BLUE, S, 160}, {FB_BLUE, B, 40}, {FB_BLUE, S, 1000}},
     4,
     1},
    /* Refused, the card (unknown, blocked, expired, not secure, wrong PIN): three
     * short beeps, red. */
    {"refused-card",
     {{FB_RED, B, 100},
      {FB_OFF, S, 100},
      {FB_RED, B, 100},
      {FB_OFF, S, 100},
      {FB_RED, B, 100},
      {FB_RED, S, 1000}},
     6,
     1},
    /* Refused, the booking (none now, too early or late): two long beeps, red. */
    {"refused-booking",
     {{FB_RED, B, 300}, {FB_OFF, S, 200}, {FB_RED, B, 300}, {FB_RED, S, 1000}},
     4,
     1},
    /* Refused, the key (out already, compartment busy): one very long beep, yellow. */
    {"refused-key", {{FB_YELLOW, B, 800}, {FB_YELLOW, S, 1000}}, 2, 1},
    /* Refused, the station (out of service, data too old, internal error):
     * short-short-long, red. */
    {"refused-service",
     {{FB_RED, B, 100},
      {FB_OFF, S, 100},
      {FB_RED, B, 100},
      {FB_OFF, S, 100},
      {FB_RED, B, 600},
      {FB_RED, S, 1000}},
     6,
     1},
    /* Key returned: long-short, cyan. */
    {"return-accepted",
     {{FB_CYAN, B, 300}, {FB_CYAN, S, 100}, {FB_CYAN, B, 100}, {FB_CYAN, S, 1000}},
     4,
     1},
    /* Alarm: fast beeping, red and white, 6 s. */
    {"alarm", {{FB_RED, B, 150}, {FB_WHITE, S, 150}}, 2, 20},
    /* Out of service: one beep of 1.5 s, red (then steady red). */
    {"out-of-service", {{FB_RED, B, 1500}, {FB_RED, S, 500}}, 2, 1},
};
#define N_PATTERNS (sizeof(table) / sizeof(table[0]))

enum {
    P_READY,
    P_READING,
    P_GRANTED,
    P_PIN,
    P_REF_CARD,
    P_REF_BOOKING,
    P_REF_KEY,
    P_REF_SERVICE,
    P_RETURN,
    P_ALARM,
    P_OOS
};

const struct fb_pattern *fb_patterns(size_t *n)
{
    *n = N_PATTERNS;
    return table;
}

enum fb_refusal_class fb_refusal_class(enum refusal r)
{
    switch (r) {
    case REFUSE_NONE:
    case REFUSE_INSECURE_CARD:
    case REFUSE_CARD_AUTH_FAILED:
    case REFUSE_UNKNOWN_CARD:
    case REFUSE_REVOKED:
    case REFUSE_EXPIRED:
    case REFUSE_PIN_NOT_SET:
    case REFUSE_PIN_LOCKED_OUT:
    case REFUSE_PIN_WRONG:
        return FB_REFUSED_CARD;
    case REFUSE_NO_BOOKING:
    case REFUSE_OUTSIDE_WINDOW:
        return FB_REFUSED_BOOKING;
    case REFUSE_KEY_ALREADY_OUT:
    case REFUSE_BUSY:
        return FB_REFUSED_KEY;
    case REFUSE_OUT_OF_SERVICE:
    case REFUSE_DATA_TOO_OLD:
    case REFUSE_INTERNAL:
        return FB_REFUSED_SERVICE;
    }
    return FB_REFUSED_SERVICE;
}

const struct fb_pattern *fb_pattern_for(enum station_situation sit, enum refusal reason)
{
    switch (sit) {
    case SIT_READY:
        return &table[P_READY];
    case SIT_READING:
        return &table[P_READING];
    case SIT_GRANTED:
        return &table[P_GRANTED];
    case SIT_PIN_WANTED:
        return &table[P_PIN];
    case SIT_REFUSED:
        switch (fb_refusal_class(reason)) {
        case FB_REFUSED_CARD:
            return &table[P_REF_CARD];
        case FB_REFUSED_BOOKING:
            return &table[P_REF_BOOKING];
        case FB_REFUSED_KEY:
            return &table[P_REF_KEY];
        case FB_REFUSED_SERVICE:
            return &table[P_REF_SERVICE];
        }
        return &table[P_REF_SERVICE];
    case SIT_RETURN_ACCEPTED:
        return &table[P_RETURN];
    case SIT_ALARM:
        return &table[P_ALARM];
    case SIT_OUT_OF_SERVICE:
        return &table[P_OOS];
    }
    return &table[P_READY];
}

/* ------------------------------------------------------------ the engine */

enum { L_RED, L_GREEN, L_BLUE, L_LED, L_BUZZER, L_COUNT };

struct feedback {
    const struct config *cfg;
    struct loop *loop;
    struct station *st;
    int line[L_COUNT]; /* station output handles, -1 = not wired */
    bool any;
    struct fb_pattern cur;
    int step, round;
    int timer;
    bool buzzing;
};

static void set_line(struct feedback *fb, int which, bool on)
{
    if (fb->line[which] < 0)
        return;
    int r = station_output_set(fb->st, fb->line[which], on ? 1 : 0);
    if (r < 0)
        log_errx("feedback: cannot drive a line: %s", strerror(-r));
}

static void apply(struct feedback *fb, enum fb_colour c, bool buzz)
{
    bool r = c == FB_RED || c == FB_YELLOW || c == FB_WHITE;
    bool g = c == FB_GREEN || c == FB_YELLOW || c == FB_CYAN || c == FB_WHITE;
    bool b = c == FB_BLUE || c == FB_CYAN || c == FB_WHITE;
    set_line(fb, L_RED, r);
    set_line(fb, L_GREEN, g);
    set_line(fb, L_BLUE, b);
    set_line(fb, L_LED, c != FB_OFF);
    set_line(fb, L_BUZZER, buzz);
    fb->buzzing = buzz;
}

static void stop_timer(struct feedback *fb)
{
    if (fb->timer)
        loop_remove(fb->loop, fb->timer);
    fb->timer = 0;
}

/* Steady: no timer, so an idle station has no wakeups for its light. */
static void steady(struct feedback *fb)
{
    stop_timer(fb);
    apply(fb, station_out_of_service(fb->st) ? FB_RED : FB_GREEN, false);
}

static void run_step(struct feedback *fb);

static void on_timer(void *arg)
{
    struct feedback *fb = arg;
    fb->timer = 0;
    if (++fb->step == fb->cur.nsteps) {
        fb->step = 0;
        if (++fb->round >= fb->cur.repeat) {
            steady(fb);
            return;
        }
    }
    run_step(fb);
}

static void run_step(struct feedback *fb)
{
    const struct fb_step *s = &fb->cur.steps[fb->step];
    apply(fb, s->colour, s->buzz);
    int id = loop_add_timer(fb->loop, s->ms, on_timer, fb);
    if (id < 0) {
        /* Never leave the buzzer sounding for want of a timer. */
        log_errx("feedback: cannot arm a timer: %s", strerror(-id));
        steady(fb);
        return;
    }
    fb->timer = id;
}

static void play(struct feedback *fb, const struct fb_pattern *p, int blinks)
{
    stop_timer(fb);
    /* A beep cut short by the next pattern ends audibly (and in the sim log). */
    if (fb->buzzing) {
        set_line(fb, L_BUZZER, false);
        fb->buzzing = false;
    }
    fb->cur = *p;
    if (blinks > FB_MAX_BLINKS)
        blinks = FB_MAX_BLINKS;
    for (int i = 0; i < blinks && fb->cur.nsteps + 2 <= FB_MAX_STEPS; i++) {
        fb->cur.steps[fb->cur.nsteps++] = (struct fb_step){FB_OFF, false, 200};
        fb->cur.steps[fb->cur.nsteps++] = (struct fb_step){FB_GREEN, false, 200};
    }
    fb->step = 0;
    fb->round = 0;
    run_step(fb);
}

static void on_situation(enum station_situation sit, int compartment, enum refusal reason,
                         void *arg)
{
    struct feedback *fb = arg;
    log_debug("feedback: %s (compartment %d, %s)", station_situation_name(sit), compartment,
              refusal_code(reason));
    play(fb, fb_pattern_for(sit, reason), sit == SIT_GRANTED ? compartment : 0);
}

struct feedback *feedback_new(const struct config *cfg, struct loop *loop, struct station *st,
                              char *err, size_t errlen)
{
    struct feedback *fb = xcalloc(1, sizeof(*fb));
    const struct {
        const struct line_cfg *line;
        const char *key;
    } lines[L_COUNT] = {
        [L_RED] = {&cfg->fb_red, "led_red"},      [L_GREEN] = {&cfg->fb_green, "led_green"},
        [L_BLUE] = {&cfg->fb_blue, "led_blue"},   [L_LED] = {&cfg->fb_led, "led"},
        [L_BUZZER] = {&cfg->fb_buzzer, "buzzer"},
    };

    fb->cfg = cfg;
    fb->loop = loop;
    fb->st = st;
    for (int i = 0; i < L_COUNT; i++) {
        fb->line[i] = -1;
        if (lines[i].line->name[0] == '\0')
            continue;
        int h = station_output_request(st, lines[i].line);
        if (h < 0) {
            snprintf(err, errlen, "[feedback] %s: cannot request line '%s': %s", lines[i].key,
                     lines[i].line->name, strerror(-h));
            feedback_free(fb);
            return NULL;
        }
        fb->line[i] = h;
        fb->any = true;
    }
    if (fb->any)
        station_set_observer(st, on_situation, fb);
    return fb;
}

void feedback_free(struct feedback *fb)
{
    if (fb == NULL)
        return;
    stop_timer(fb);
    if (fb->any) {
        station_set_observer(fb->st, NULL, NULL);
        apply(fb, FB_OFF, false);
    }
    free(fb);
}
