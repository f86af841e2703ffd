/*
 * station.h - the station engine: one state machine per compartment.
 *
 * The station owns the GPIO and reader devices, turns their events into state
 * machine events, asks the policy about taps, and writes every decision to the
 * store before it acts on the hardware (log before act). All transitions go through
 * one function that logs "compartment N: old -> new".
 *
 * Error convention: int functions return 0 or a negative STATION_E* code; the
 * caller turns it into a message with station_strerror().
 */
#ifndef LOCKERD_STATION_H
#define LOCKERD_STATION_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "daemon/config.h"
#include "daemon/loop.h"
#include "daemon/policy.h"
#include "daemon/store.h"
#include "hal/hal.h"

#define STATION_EINVAL  (-1) /* no such compartment, bad argument */
#define STATION_EBUSY   (-2) /* compartment is unlocking or open */
#define STATION_ESTORE  (-3) /* the event could not be committed: nothing was done */
#define STATION_EHW     (-4) /* hardware call failed */
#define STATION_ENOTSIM (-5) /* a sim command on real hardware */
#define STATION_ESTATE  (-6) /* not possible in the current state */
#define STATION_EPIN    (-7) /* granted, waiting for the PIN: nothing unlocked yet */

const char *station_strerror(int err);

enum comp_state {
    CS_LOCKED_FULL,    /* door closed, lock off, key in */
    CS_LOCKED_EMPTY,   /* door closed, lock off, key out */
    CS_UNLOCKING,      /* coil energised, waiting for the door (purpose says why) */
    CS_OPEN_PICKUP,    /* door open for a pickup */
    CS_OPEN_RETURN,    /* door open for a return */
    CS_OPEN_SERVICE,   /* door open for a service open */
    CS_HELD_OPEN,      /* open longer than door_open_alarm (purpose kept) */
    CS_FORCED_OPEN,    /* door opened while locked */
    CS_SENSOR_FAULT,   /* a sensor contradicted itself: out of service until cleared */
    CS_OUT_OF_SERVICE, /* taken out of service by a technician */
};
#define CS_COUNT (CS_OUT_OF_SERVICE + 1)

const char *comp_state_name(enum comp_state st);

struct station;

/* Called after every event is committed (for `lockerctl events --follow`). */
typedef void (*station_event_cb)(int64_t seq, void *arg);
/* Called with the outcome of every tap (for enrolment and, later, the kiosk). */
typedef void (*station_tap_cb)(const struct decision *d, const uint8_t uid_hmac[32],
                               const struct card_read *card, void *arg);

/* Opens the hardware backends chosen by cfg, requests all lines, drives every lock
 * inactive and registers the device fds on loop. site_key is copied. Returns NULL
 * with a message in err. The station keeps pointers to cfg, store and loop: they
 * must outlive it. */
struct station *station_new(const struct config *cfg, struct store *store, struct loop *loop,
                            const uint8_t *site_key, size_t site_key_len, char *err, size_t errlen);
/* Drives every lock inactive, closes the devices and frees. Accepts NULL. */
void station_free(struct station *st);
/* Rebuilds each compartment from its sensors and stored intent and logs
 * station.started (and station.uncleanShutdown when the last run did not end
 * cleanly). Returns 0 or STATION_ESTORE. */
int station_start(struct station *st);
/* Marks the shutdown clean in the store (call just before station_free on SIGTERM). */
void station_mark_clean_shutdown(struct station *st);
/* Takes over timings and policy from a reloaded config. The caller guarantees that
 * the hardware settings (backends, lines, compartments, state_dir) are unchanged:
 * those need a restart. cfg replaces the pointer given to station_new and must stay
 * valid. */
void station_reconfigure(struct station *st, const struct config *cfg);

void station_set_event_listener(struct station *st, station_event_cb cb, void *arg);
/* When a tap callback is set, the next taps go to it instead of the policy
 * (card enrolment); pass NULL to return to normal operation. */
void station_set_tap_hook(struct station *st, station_tap_cb cb, void *arg);

/* Asks the reader to personalise the next card for this site (on) or to go back to
 * reading (off). The result arrives at the tap hook in card->issue_result.
 * Returns 0 or STATION_EINVAL when the reader cannot issue cards. */
int station_issue_next(struct station *st, bool on);

/* A card tap (called by the reader callback; public for tests). */
void station_card(struct station *st, const struct card_read *card);
/* HMAC-SHA256(site key, uid). */
void station_uid_hmac(const struct station *st, const uint8_t *uid, size_t len, uint8_t out[32]);

/* Service open by an operator (role checked by the caller): logs service.open and
 * unlocks. */
int station_service_open(struct station *st, int n, const char *operator_name, const char *reason);
/* Clears a sensor fault or manual out-of-service and rebuilds from the sensors. */
int station_clear(struct station *st, int n, const char *operator_name, const char *reason);
/* Takes a compartment out of service (technician). */
int station_disable(struct station *st, int n, const char *operator_name, const char *reason);

/* ---- self-test (daemon/selftest.c) ---- */

/* What the self-test reads of one compartment. */
struct comp_check {
    enum comp_state state;
    bool door_open, key_present; /* last debounced sensor readings */
    bool lock_on;                /* the lock output as the GPIO backend reads it back */
    unsigned door_opens;         /* door-open edges since start: compare before/after */
    char oos_reason[64];         /* why it is out of service, if it is */
};
int station_comp_check(struct station *st, int n, struct comp_check *out);
/* reader_ops.info of the station's reader: 0 and a description, or -errno and why
 * the reader is not available. */
int station_reader_info(struct station *st, char *buf, size_t len);
/* Pulses the lock of an idle compartment for pulse_ms (at most max_energize):
 * logs service.selftest and the intent, then energises, as any unlock. A door that
 * opens makes it an open service compartment (closed again by the technician);
 * otherwise the lock goes off when the pulse ends. Returns 0, STATION_EBUSY
 * (unlocking or open), STATION_ESTATE (out of service) or STATION_ESTORE. */
int station_selftest_pulse(struct station *st, int n, const char *operator_name, int64_t pulse_ms);
/* Records the self-test's summary (station.selftest). Returns its seq or -1. */
int64_t station_selftest_record(struct station *st, const char *operator_name, json_t *detail);

/* ---- observer: what the station's LED and buzzer tell (daemon/feedback.c) ---- */

enum station_situation {
    SIT_READY,           /* steady: ready for a card (also after a PIN timeout or cancel) */
    SIT_READING,         /* a card was read; called before the policy decides */
    SIT_GRANTED,         /* a tap unlocked compartment N (pickup or return) */
    SIT_PIN_WANTED,      /* granted, but the PIN must be entered first */
    SIT_REFUSED,         /* refused; reason says why (also a wrong PIN, a lockout) */
    SIT_RETURN_ACCEPTED, /* a key was returned: key.returned recorded */
    SIT_ALARM,           /* door forced or held open, sensor fault, tamper */
    SIT_OUT_OF_SERVICE,  /* steady: no compartment can be served */
};
#define SIT_COUNT (SIT_OUT_OF_SERVICE + 1)
const char *station_situation_name(enum station_situation sit);

/* compartment is 0 when the situation concerns no single compartment; reason is
 * REFUSE_NONE except for SIT_REFUSED. */
typedef void (*station_observer_cb)(enum station_situation sit, int compartment,
                                    enum refusal reason, void *arg);
/* One observer; NULL removes it. It is called from inside the station's handlers:
 * it must not call back into the station except for the getters below and
 * station_output_set(). */
void station_set_observer(struct station *st, station_observer_cb cb, void *arg);
/* True when every compartment is out of service or faulted. */
bool station_out_of_service(const struct station *st);

/* Extra output lines on the station's GPIO device (LED, buzzer): requested
 * inactive; driven inactive by the backend when the station is freed. Returns a
 * handle >= 0 or -errno. */
int station_output_request(struct station *st, const struct line_cfg *line);
int station_output_set(struct station *st, int handle, int value);

/* ---- card + PIN (docs/kiosk.md) ----
 * A granted pickup from a compartment that needs a PIN logs access.pinRequested
 * and waits [policy] pin_timeout for the PIN; only the right PIN unlocks, through
 * access.granted as any unlock. The screen gets a nonce per tap and must send it
 * with the PIN. */
#define STATION_NONCE_LEN 32 /* hex digits */
struct station_pin_info {
    int compartment;
    char nonce[STATION_NONCE_LEN + 1];
    int64_t remaining_ms;
    int attempts_left;
};
/* True (and out filled) while a PIN is awaited. */
bool station_pin_pending(const struct station *st, struct station_pin_info *out);
enum station_pin_result {
    STATION_PIN_OK,         /* right: access.granted recorded, the compartment unlocks */
    STATION_PIN_WRONG,      /* wrong; *attempts_left more before a lockout */
    STATION_PIN_LOCKED_OUT, /* wrong, and now locked out for *lockout_ms: tap ended */
    STATION_PIN_STALE,      /* no PIN awaited, or not with this nonce */
    STATION_PIN_FAILED,     /* store or hardware failure: nothing unlocked */
    STATION_PIN_REFUSED,    /* right, but decided again the tap no longer grants the
                               compartment (revoked, booking gone): access.denied */
};
enum station_pin_result station_pin_enter(struct station *st, const char *nonce, const char *pin,
                                          int *attempts_left, int64_t *lockout_ms);
/* Ends the awaited PIN (access.pinCancelled, reason "cancelled"). STATION_ESTATE
 * when no PIN with this nonce is awaited. */
int station_pin_cancel(struct station *st, const char *nonce);

/* ---- condition notes after a return ----
 * For STATION_NOTE_WINDOW_MS after a return the screen may send notes on the
 * hall's condition: each code once, recorded as hall.conditionNote. */
#define STATION_NOTE_WINDOW_MS (2 * 60 * 1000)
#define STATION_NOTE_TEXT_MAX  200 /* characters of free text */
struct station_note_info {
    int compartment;
    char nonce[STATION_NONCE_LEN + 1];
    int64_t remaining_ms;
};
bool station_note_pending(const struct station *st, struct station_note_info *out);
/* code: "lights-broken", "floor-wet", "equipment-missing" or "other" (which needs
 * text); text may be NULL, control characters are dropped, at most
 * STATION_NOTE_TEXT_MAX characters. Returns 0, STATION_EINVAL (bad code or text),
 * STATION_ESTATE (no note window with this nonce, or this code was sent) or
 * STATION_ESTORE. */
int station_condition_note(struct station *st, const char *nonce, const char *code,
                           const char *text);

/* Current state, for status output. New reference. */
json_t *station_status_json(struct station *st);
enum comp_state station_comp_state(const struct station *st, int n);

/* Simulation controls (STATION_ENOTSIM on real hardware). */
int station_sim_tap(struct station *st, const uint8_t *uid, size_t len, enum card_kind kind,
                    bool authenticated);
int station_sim_remove(struct station *st);
int station_sim_door(struct station *st, int n, bool open);
int station_sim_key(struct station *st, int n, bool present);
int station_sim_tamper(struct station *st, bool active);
char *station_sim_outputs(struct station *st); /* malloc'd JSON text */
int station_sim_clock_advance(struct station *st, int64_t ms);
/* Calls hook on every simulated output change (latency benchmark). */
int station_sim_output_hook(struct station *st, void (*hook)(gpio_line, int, void *), void *arg);

/* Outcome of the most recent tap (policy decision and, for a grant, the unlock
 * result). */
const struct decision *station_last_tap(const struct station *st, int *unlock_rc);

/* Runs daily housekeeping now (retention pruning). Returns pruned count or -1. */
int64_t station_housekeeping(struct station *st);

#endif
