/*
 * feedback.h - the station's LED and buzzer: a pattern per situation.
 *
 * The station's observer (station_set_observer) tells what happens; each situation
 * has a pattern in feedback.c's table: a sequence of steps {colour, buzzer, ms}
 * played `repeat` times, timed by loop timers (no threads, no sleeps). A new
 * pattern replaces the running one; when a pattern ends the steady light resumes:
 * green (ready) or red (out of service), silent, and without any timer.
 *
 * Lines come from [feedback] (led_red/led_green/led_blue or led, buzzer), all
 * optional: with none, the engine is inert. A single LED is on for every colour
 * but "off".
 */
#ifndef LOCKERD_FEEDBACK_H
#define LOCKERD_FEEDBACK_H

#include <stdbool.h>
#include <stddef.h>

#include "daemon/config.h"
#include "daemon/loop.h"
#include "daemon/station.h"

enum fb_colour { FB_OFF, FB_RED, FB_GREEN, FB_BLUE, FB_YELLOW, FB_CYAN, FB_WHITE };

struct fb_step {
    enum fb_colour colour;
    bool buzz;
    int ms;
};

#define FB_MAX_STEPS 24

struct fb_pattern {
    const char *name;
    struct fb_step steps[FB_MAX_STEPS];
    int nsteps;
    int repeat; /* times the steps are played, at least 1 */
};

/* Refusal classes: distinct patterns per class. */
enum fb_refusal_class { FB_REFUSED_CARD, FB_REFUSED_BOOKING, FB_REFUSED_KEY, FB_REFUSED_SERVICE };
#define FB_REFUSED_COUNT (FB_REFUSED_SERVICE + 1)
enum fb_refusal_class fb_refusal_class(enum refusal r);

/* The pattern for a situation (for SIT_REFUSED, by the reason's class). For
 * SIT_GRANTED the table's pattern is followed by one short blink per compartment
 * number (at most FB_MAX_BLINKS), silent. Never NULL. */
#define FB_MAX_BLINKS 9
const struct fb_pattern *fb_pattern_for(enum station_situation sit, enum refusal reason);
/* Every pattern of the table, for tests: count through *n. */
const struct fb_pattern *fb_patterns(size_t *n);

struct feedback;

/* Requests the [feedback] lines on the station's GPIO device and becomes the
 * station's observer. NULL with a message in err when a line cannot be requested.
 * cfg, loop and st must outlive it. */
struct feedback *feedback_new(const struct config *cfg, struct loop *loop, struct station *st,
                              char *err, size_t errlen);
/* Stops the pattern, drives every line inactive, leaves the station. Accepts NULL. */
void feedback_free(struct feedback *fb);

#endif
