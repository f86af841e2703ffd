/*
 * station.c - the station engine: one explicit state machine per compartment.
 *
 * Inputs: card taps (reader), door and key sensor edges (GPIO), timers (coil limit,
 * door held open, key overdue) and operator commands (service open, clear, disable).
 * Every input becomes a comp_event fed to comp_fsm(); every state change goes
 * through enter_state(), which logs "old -> new" and keeps the hardware invariants:
 *
 *   - the coil is energised only in CS_UNLOCKING, and only after the event that
 *     authorises it is committed to the store (log before act);
 *   - the door-held timer runs only while the door is open in a normal open state;
 *   - the coil timer runs only in CS_UNLOCKING, bounded by max_energize.
 *
 * What must survive a crash (why a door may be open, who holds a key) is kept in
 * the store's compartment row, written in the same transaction as the event that
 * changes it; everything else is rebuilt from the sensors at start.
 */
#include "daemon/station.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/timeutil.h"

#define HOUSEKEEPING_MS     (24LL * 3600 * 1000)
#define SITE_KEY_MAX        64
#define CHECKPOINT_DELAY_MS 2000

enum comp_event {
    CE_UNLOCK, /* an unlock was committed: energise the coil */
    CE_DOOR_OPEN,
    CE_DOOR_CLOSE,
    CE_KEY_IN,
    CE_KEY_OUT,
    CE_ENERGIZE_TIMEOUT, /* max_energize passed without the door opening */
    CE_HELD_TIMEOUT,     /* door_open_alarm passed with the door open */
    CE_CLEAR,            /* technician clears a fault or out-of-service */
    CE_DISABLE,          /* technician takes the compartment out of service */
};

struct comp {
    struct station *st;
    int number;
    const struct compartment_cfg *cfg;
    gpio_line lock, door, key;
    enum comp_state state;
    bool door_open;   /* last sensor reading */
    bool key_present; /* last sensor reading */
    struct comp_row row;
    int energize_timer, held_timer, overdue_timer; /* loop watch ids, 0 = none */
    int64_t pulse_ms;    /* set around a self-test unlock: a shorter coil time */
    int64_t energize_ms; /* coil time of the current unlock */
    unsigned door_opens; /* door-open edges seen, for the self-test */
};

struct station {
    const struct config *cfg;
    struct store *store;
    struct loop *loop;
    const struct gpio_ops *gops;
    struct gpio_dev *gdev;
    int gpio_watch;
    const struct reader_ops *rops;
    struct reader_dev *rdev;
    int reader_watch;
    uint8_t site_key[SITE_KEY_MAX];
    size_t site_key_len;
    gpio_line tamper;
    bool tamper_active;
    int ncomps;
    struct comp comps[CONFIG_MAX_COMPARTMENTS];
    station_event_cb event_cb;
    void *event_arg;
    station_tap_cb tap_hook;
    void *tap_arg;
    int housekeeping_timer;
    int checkpoint_timer;
    struct decision last_decision; /* outcome of the last tap, for `lockerctl sim tap` */
    int last_unlock_rc;
    bool ignore_edges; /* while the simulated cabinet is being set up */
    station_observer_cb observer;
    void *observer_arg;
    bool was_out_of_service; /* the steady state last told to the observer */
    struct {
        bool active;
        char nonce[STATION_NONCE_LEN + 1];
        struct decision d;
        /* The tap, kept to decide again when the PIN is right: the card may have
         * been revoked or the booking cancelled or ended while the pad waited. */
        uint8_t hmac[32];
        struct card_read card;
        int timer;
        int64_t deadline_ms; /* monotonic */
        int attempts_left;
    } pin;
    struct {
        bool active;
        int compartment;
        char nonce[STATION_NONCE_LEN + 1];
        int64_t until_ms; /* monotonic */
        unsigned used;    /* bit per note code */
    } note;
};

static void notify(struct station *st, enum station_situation sit, int n, enum refusal reason)
{
    if (st->observer)
        st->observer(sit, n, reason, st->observer_arg);
}

static void note_open(struct station *st, int n);
static void notify_steady(struct station *st);

static void comp_fsm(struct comp *c, enum comp_event ev);

const char *station_strerror(int err)
{
    switch (err) {
    case 0:
        return "ok";
    case STATION_EINVAL:
        return "no such compartment or bad argument";
    case STATION_EBUSY:
        return "compartment is busy (unlocking or open)";
    case STATION_ESTORE:
        return "the event could not be stored; nothing was done";
    case STATION_EHW:
        return "hardware error";
    case STATION_ENOTSIM:
        return "only possible with simulated hardware";
    case STATION_ESTATE:
        return "not possible in the compartment's current state";
    case STATION_EPIN:
        return "waiting for the PIN; nothing unlocked yet";
    default:
        return "unknown error";
    }
}

const char *comp_state_name(enum comp_state st)
{
    switch (st) {
    case CS_LOCKED_FULL:
        return "locked_full";
    case CS_LOCKED_EMPTY:
        return "locked_empty";
    case CS_UNLOCKING:
        return "unlocking";
    case CS_OPEN_PICKUP:
        return "open_pickup";
    case CS_OPEN_RETURN:
        return "open_return";
    case CS_OPEN_SERVICE:
        return "open_service";
    case CS_HELD_OPEN:
        return "held_open";
    case CS_FORCED_OPEN:
        return "forced_open";
    case CS_SENSOR_FAULT:
        return "sensor_fault";
    case CS_OUT_OF_SERVICE:
        return "out_of_service";
    }
    return "?";
}

static const char *comp_event_name(enum comp_event ev)
{
    switch (ev) {
    case CE_UNLOCK:
        return "unlock";
    case CE_DOOR_OPEN:
        return "door_open";
    case CE_DOOR_CLOSE:
        return "door_close";
    case CE_KEY_IN:
        return "key_in";
    case CE_KEY_OUT:
        return "key_out";
    case CE_ENERGIZE_TIMEOUT:
        return "energize_timeout";
    case CE_HELD_TIMEOUT:
        return "held_timeout";
    case CE_CLEAR:
        return "clear";
    case CE_DISABLE:
        return "disable";
    }
    return "?";
}

/* ------------------------------------------------------------ events */

static void checkpoint_fired(void *arg)
{
    struct station *st = arg;
    st->checkpoint_timer = 0;
    store_checkpoint(st->store);
}

/* Appends an event; inside a transaction it becomes durable at commit. */
static int64_t emit(struct station *st, const struct event *ev)
{
    int64_t seq = store_event_add(st->store, ev);
    /* Fold the WAL into the database once things are quiet, so that SQLite's own
     * checkpoint rarely lands on a tap. */
    if (seq > 0 && st->checkpoint_timer == 0) {
        int id = loop_add_timer(st->loop, CHECKPOINT_DELAY_MS, checkpoint_fired, st);
        st->checkpoint_timer = id > 0 ? id : 0;
    }
    if (seq > 0 && st->event_cb)
        st->event_cb(seq, st->event_arg);
    return seq;
}

/* A simple event for one compartment, committed on its own. */
static int64_t emit_comp(struct comp *c, const char *type, const char *reason, json_t *detail)
{
    struct event ev = {
        .type = type,
        .compartment = c->number,
        .reason = reason,
        .detail = detail,
    };
    int64_t seq = emit(c->st, &ev);
    if (detail)
        json_decref(detail);
    if (seq < 0)
        log_errx("compartment %d: could not record %s", c->number, type);
    return seq;
}

/* ------------------------------------------------------------ hardware */

static void set_coil(struct comp *c, bool on)
{
    int rc = c->st->gops->set(c->st->gdev, c->lock, on ? 1 : 0);
    if (rc < 0)
        log_errx("compartment %d: cannot drive lock %s: %s", c->number, c->cfg->lock.name,
                 strerror(-rc));
}

static void energize_timeout(void *arg)
{
    struct comp *c = arg;
    c->energize_timer = 0;
    comp_fsm(c, CE_ENERGIZE_TIMEOUT);
}

static void held_timeout(void *arg)
{
    struct comp *c = arg;
    c->held_timer = 0;
    comp_fsm(c, CE_HELD_TIMEOUT);
}

static void cancel_timer(struct comp *c, int *id)
{
    if (*id) {
        loop_remove(c->st->loop, *id);
        *id = 0;
    }
}

static bool is_open_state(enum comp_state s)
{
    return s == CS_OPEN_PICKUP || s == CS_OPEN_RETURN || s == CS_OPEN_SERVICE ||
           s == CS_FORCED_OPEN;
}

/* The one place where a compartment changes state, and where the coil and the
 * timers follow the state. */
static void enter_state(struct comp *c, enum comp_state next)
{
    enum comp_state prev = c->state;
    struct station *st = c->st;

    if (prev == CS_UNLOCKING && next != CS_UNLOCKING) {
        set_coil(c, false);
        cancel_timer(c, &c->energize_timer);
    }
    if (is_open_state(prev) && !is_open_state(next))
        cancel_timer(c, &c->held_timer);

    c->state = next;
    if (prev != next)
        log_info("compartment %d: %s -> %s", c->number, comp_state_name(prev),
                 comp_state_name(next));

    if (next == CS_UNLOCKING && prev != CS_UNLOCKING) {
        /* A self-test pulse may be shorter than max_energize, never longer. */
        c->energize_ms = st->cfg->max_energize_ms;
        if (c->pulse_ms > 0 && c->pulse_ms < c->energize_ms)
            c->energize_ms = c->pulse_ms;
        int id = loop_add_timer(st->loop, c->energize_ms, energize_timeout, c);
        if (id < 0) {
            /* Without a timer the coil could stay on: do not energise at all. */
            log_errx("compartment %d: cannot arm coil timer; not unlocking", c->number);
            c->state = prev;
            return;
        }
        c->energize_timer = id;
        set_coil(c, true);
    }
    if (is_open_state(next) && !is_open_state(prev) && c->held_timer == 0) {
        int id = loop_add_timer(st->loop, st->cfg->door_open_alarm_ms, held_timeout, c);
        c->held_timer = id > 0 ? id : 0;
    }
    notify_steady(st);
}

/* Locked state that matches the key sensor. */
static enum comp_state locked_state(const struct comp *c)
{
    return c->key_present ? CS_LOCKED_FULL : CS_LOCKED_EMPTY;
}

/* ------------------------------------------------------------ overdue */

static void overdue_fired(void *arg);

static void arm_overdue(struct comp *c)
{
    cancel_timer(c, &c->overdue_timer);
    if (c->row.due_ms == 0 || c->row.overdue_reported || c->row.holder_member[0] == '\0')
        return;
    int64_t delay = c->row.due_ms - clock_wall_ms();
    int id = loop_add_timer(c->st->loop, delay > 0 ? delay : 0, overdue_fired, c);
    c->overdue_timer = id > 0 ? id : 0;
}

static void overdue_fired(void *arg)
{
    struct comp *c = arg;
    c->overdue_timer = 0;
    if (c->key_present || c->row.holder_member[0] == '\0' || c->row.overdue_reported)
        return;
    /* The wall clock may have been stepped back since the timer was armed. */
    if (clock_wall_ms() < c->row.due_ms) {
        arm_overdue(c);
        return;
    }
    struct station *st = c->st;
    json_t *detail = json_pack("{s:I}", "dueMs", (json_int_t)c->row.due_ms);
    struct event ev = {
        .type = "key.overdue",
        .compartment = c->number,
        .member_id = c->row.holder_member,
        .club_id = c->row.holder_club,
        .booking_id = c->row.holder_booking[0] ? c->row.holder_booking : NULL,
        .detail = detail,
    };
    if (store_begin(st->store) == STORE_OK) {
        c->row.overdue_reported = true;
        if (emit(st, &ev) > 0 && store_comp_save(st->store, &c->row) == STORE_OK &&
            store_commit(st->store) == STORE_OK) {
            log_warnx("compartment %d: key overdue (holder %s)", c->number, c->row.holder_member);
        } else {
            store_rollback(st->store);
            c->row.overdue_reported = false;
        }
    }
    json_decref(detail);
}

/* ------------------------------------------------------------ completions */

static void clear_pending(struct comp_row *row)
{
    row->purpose[0] = '\0';
    row->pending_member[0] = '\0';
    row->pending_credential[0] = '\0';
    row->pending_club[0] = '\0';
    row->pending_booking[0] = '\0';
}

static void clear_holder(struct comp_row *row)
{
    row->holder_member[0] = '\0';
    row->holder_club[0] = '\0';
    row->holder_booking[0] = '\0';
    row->holder_since_ms = 0;
    row->due_ms = 0;
    row->overdue_reported = false;
}

/*
 * Door closed (or found closed at start) after an unlock with a purpose: decide what
 * happened from the key sensor and record it together with the new compartment row.
 * recovered marks completions found at start after a crash.
 */
static void complete(struct comp *c, bool recovered)
{
    struct station *st = c->st;
    struct comp_row next = c->row;
    const char *type = NULL;
    const char *reason = NULL;
    const char *purpose = c->row.purpose;
    int64_t now = clock_wall_ms();

    clear_pending(&next);
    if (strcmp(purpose, "pickup") == 0) {
        if (!c->key_present) {
            type = "key.checkedOut";
            snprintf(next.holder_member, sizeof(next.holder_member), "%s", c->row.pending_member);
            snprintf(next.holder_club, sizeof(next.holder_club), "%s", c->row.pending_club);
            snprintf(next.holder_booking, sizeof(next.holder_booking), "%s",
                     c->row.pending_booking);
            next.holder_since_ms = now;
            next.overdue_reported = false;
            next.due_ms = 0;
            struct booking b;
            if (c->row.pending_booking[0] &&
                store_booking_get(st->store, c->row.pending_booking, &b) == STORE_OK)
                next.due_ms = b.end_ms + st->cfg->return_grace_ms;
        } else {
            type = "pickup.aborted";
            reason = "key-not-taken";
        }
    } else if (strcmp(purpose, "return") == 0) {
        if (c->key_present) {
            type = "key.returned";
            clear_holder(&next);
        } else {
            type = "return.incomplete";
            reason = "key-not-detected";
        }
    } else { /* service */
        bool had_holder = c->row.holder_member[0] != '\0';
        if (c->key_present && had_holder) {
            type = "key.returned";
            clear_holder(&next);
        } else if (!c->key_present && !had_holder) {
            type = "key.checkedOut";
            snprintf(next.holder_member, sizeof(next.holder_member), "%s",
                     c->row.pending_member[0] ? c->row.pending_member : "service");
            next.holder_since_ms = now;
            next.due_ms = 0;
        }
    }

    json_t *detail = json_object();
    json_object_set_new(detail, "purpose", json_string(purpose[0] ? purpose : "unknown"));
    if (recovered)
        json_object_set_new(detail, "recoveredAtStart", json_true());
    if (type && strcmp(type, "key.returned") == 0 && c->row.holder_since_ms)
        json_object_set_new(detail, "outMs", json_integer(now - c->row.holder_since_ms));

    struct event ev = {
        .type = type,
        .compartment = c->number,
        .member_id = c->row.pending_member[0] ? c->row.pending_member : NULL,
        .credential_id = c->row.pending_credential[0] ? c->row.pending_credential : NULL,
        .club_id = c->row.pending_club[0] ? c->row.pending_club : NULL,
        .booking_id = c->row.pending_booking[0] ? c->row.pending_booking : NULL,
        .reason = reason,
        .detail = detail,
    };
    bool ok = store_begin(st->store) == STORE_OK;
    if (ok && type)
        ok = emit(st, &ev) > 0;
    if (ok && type && strcmp(type, "key.checkedOut") == 0 && c->row.pending_booking[0])
        ok = store_booking_set_collected(st->store, c->row.pending_booking, now) == STORE_OK;
    if (ok)
        ok = store_comp_save(st->store, &next) == STORE_OK;
    if (ok)
        ok = store_commit(st->store) == STORE_OK;
    else
        store_rollback(st->store);
    json_decref(detail);
    if (!ok) {
        /* The hardware state is what it is; keep the intent so a restart retries. */
        log_errx("compartment %d: could not record %s", c->number, type ? type : "completion");
        return;
    }
    if (type)
        log_info("compartment %d: %s", c->number, type);
    if (type && strcmp(type, "key.returned") == 0 && strcmp(purpose, "return") == 0 && !recovered) {
        notify(st, SIT_RETURN_ACCEPTED, c->number, REFUSE_NONE);
        note_open(st, c->number);
    }
    c->row = next;
    arm_overdue(c);
}

/* A sensor reported something that cannot happen in the current state. */
static void sensor_fault(struct comp *c, const char *what)
{
    json_t *detail = json_pack("{s:s,s:b,s:b}", "state", comp_state_name(c->state), "door",
                               c->door_open, "key", c->key_present);
    struct station *st = c->st;
    struct event ev = {
        .type = "sensor.fault",
        .compartment = c->number,
        .reason = what,
        .detail = detail,
    };
    c->row.out_of_service = true;
    snprintf(c->row.oos_reason, sizeof(c->row.oos_reason), "sensor:%s", what);
    if (store_begin(st->store) != STORE_OK || emit(st, &ev) < 0 ||
        store_comp_save(st->store, &c->row) != STORE_OK || store_commit(st->store) != STORE_OK) {
        store_rollback(st->store);
        log_errx("compartment %d: could not record sensor fault", c->number);
    }
    json_decref(detail);
    log_warnx("compartment %d: sensor fault (%s): out of service until cleared", c->number, what);
    enter_state(c, CS_SENSOR_FAULT);
    notify(st, SIT_ALARM, c->number, REFUSE_NONE);
}

/* ------------------------------------------------------------ the state machine */

static enum comp_state open_state_for(const char *purpose)
{
    if (strcmp(purpose, "pickup") == 0)
        return CS_OPEN_PICKUP;
    if (strcmp(purpose, "return") == 0)
        return CS_OPEN_RETURN;
    return CS_OPEN_SERVICE;
}

static void update_sensor(struct comp *c, enum comp_event ev)
{
    switch (ev) {
    case CE_DOOR_OPEN:
        c->door_open = true;
        c->door_opens++;
        break;
    case CE_DOOR_CLOSE:
        c->door_open = false;
        break;
    case CE_KEY_IN:
        c->key_present = true;
        break;
    case CE_KEY_OUT:
        c->key_present = false;
        break;
    case CE_UNLOCK:
    case CE_ENERGIZE_TIMEOUT:
    case CE_HELD_TIMEOUT:
    case CE_CLEAR:
    case CE_DISABLE:
        break;
    }
}

static void fsm_locked(struct comp *c, enum comp_event ev, bool key_was_present)
{
    switch (ev) {
    case CE_UNLOCK:
        enter_state(c, CS_UNLOCKING);
        break;
    case CE_DOOR_OPEN:
        emit_comp(c, "door.forced", NULL, json_pack("{s:b}", "keyPresent", key_was_present));
        log_warnx("compartment %d: door forced open", c->number);
        enter_state(c, CS_FORCED_OPEN);
        notify(c->st, SIT_ALARM, c->number, REFUSE_NONE);
        break;
    case CE_KEY_IN:
    case CE_KEY_OUT:
        /* A key cannot move behind a closed, locked door. */
        sensor_fault(c, ev == CE_KEY_IN ? "key-appeared-door-closed" : "key-vanished-door-closed");
        break;
    case CE_DISABLE:
        enter_state(c, CS_OUT_OF_SERVICE);
        break;
    case CE_DOOR_CLOSE:
    case CE_ENERGIZE_TIMEOUT:
    case CE_HELD_TIMEOUT:
    case CE_CLEAR:
        break;
    }
}

static void fsm_unlocking(struct comp *c, enum comp_event ev)
{
    switch (ev) {
    case CE_DOOR_OPEN:
        enter_state(c, open_state_for(c->row.purpose));
        break;
    case CE_ENERGIZE_TIMEOUT: {
        const char *purpose = c->row.purpose;
        const char *type = strcmp(purpose, "pickup") == 0   ? "pickup.aborted"
                           : strcmp(purpose, "return") == 0 ? "return.incomplete"
                                                            : NULL;
        struct station *st = c->st;
        struct comp_row next = c->row;
        clear_pending(&next);
        json_t *detail = json_pack("{s:s}", "purpose", purpose);
        struct event ev_rec = {
            .type = type,
            .compartment = c->number,
            .member_id = c->row.pending_member[0] ? c->row.pending_member : NULL,
            .credential_id = c->row.pending_credential[0] ? c->row.pending_credential : NULL,
            .club_id = c->row.pending_club[0] ? c->row.pending_club : NULL,
            .booking_id = c->row.pending_booking[0] ? c->row.pending_booking : NULL,
            .reason = "door-not-opened",
            .detail = detail,
        };
        /* Relock first: the coil limit holds even if the store fails. */
        enter_state(c, locked_state(c));
        bool ok = store_begin(st->store) == STORE_OK && (!type || emit(st, &ev_rec) > 0) &&
                  store_comp_save(st->store, &next) == STORE_OK &&
                  store_commit(st->store) == STORE_OK;
        if (!ok)
            store_rollback(st->store);
        else
            c->row = next;
        json_decref(detail);
        log_info("compartment %d: door not opened within %lld ms, relocked", c->number,
                 (long long)c->energize_ms);
        break;
    }
    case CE_KEY_IN:
    case CE_KEY_OUT:
        sensor_fault(c, ev == CE_KEY_IN ? "key-appeared-door-closed" : "key-vanished-door-closed");
        break;
    case CE_DISABLE:
        enter_state(c, CS_OUT_OF_SERVICE);
        break;
    case CE_UNLOCK:
    case CE_DOOR_CLOSE:
    case CE_HELD_TIMEOUT:
    case CE_CLEAR:
        break;
    }
}

static void fsm_open(struct comp *c, enum comp_event ev)
{
    switch (ev) {
    case CE_DOOR_CLOSE:
        if (c->state == CS_FORCED_OPEN) {
            emit_comp(c, "door.closed", NULL,
                      json_pack("{s:s,s:b}", "after", "forced", "keyPresent", c->key_present));
            enter_state(c, locked_state(c));
            break;
        }
        complete(c, false);
        enter_state(c, locked_state(c));
        break;
    case CE_HELD_TIMEOUT:
        emit_comp(c, "door.heldOpen", NULL,
                  json_pack("{s:s,s:I}", "purpose",
                            c->state == CS_FORCED_OPEN ? "forced" : c->row.purpose, "afterMs",
                            (json_int_t)c->st->cfg->door_open_alarm_ms));
        log_warnx("compartment %d: door held open", c->number);
        if (c->state != CS_FORCED_OPEN)
            enter_state(c, CS_HELD_OPEN);
        notify(c->st, SIT_ALARM, c->number, REFUSE_NONE);
        break;
    case CE_KEY_IN:
    case CE_KEY_OUT:
        log_debug("compartment %d: key %s", c->number, ev == CE_KEY_IN ? "in" : "out");
        break;
    case CE_DISABLE:
        enter_state(c, CS_OUT_OF_SERVICE);
        break;
    case CE_UNLOCK:
    case CE_DOOR_OPEN:
    case CE_ENERGIZE_TIMEOUT:
    case CE_CLEAR:
        break;
    }
}

static void fsm_out_of_service(struct comp *c, enum comp_event ev)
{
    switch (ev) {
    case CE_CLEAR: /* the row was saved by station_clear() with its event */
        if (c->door_open)
            enter_state(c, CS_FORCED_OPEN);
        else
            enter_state(c, locked_state(c));
        break;
    case CE_DISABLE:
        enter_state(c, CS_OUT_OF_SERVICE);
        break;
    case CE_UNLOCK:
    case CE_DOOR_OPEN:
    case CE_DOOR_CLOSE:
    case CE_KEY_IN:
    case CE_KEY_OUT:
    case CE_ENERGIZE_TIMEOUT:
    case CE_HELD_TIMEOUT:
        break; /* sensors are tracked, nothing else happens until cleared */
    }
}

static void comp_fsm(struct comp *c, enum comp_event ev)
{
    bool key_was_present = c->key_present;
    log_debug("compartment %d: %s in %s", c->number, comp_event_name(ev),
              comp_state_name(c->state));
    update_sensor(c, ev);

    switch (c->state) {
    case CS_LOCKED_FULL:
    case CS_LOCKED_EMPTY:
        fsm_locked(c, ev, key_was_present);
        break;
    case CS_UNLOCKING:
        fsm_unlocking(c, ev);
        break;
    case CS_OPEN_PICKUP:
    case CS_OPEN_RETURN:
    case CS_OPEN_SERVICE:
    case CS_HELD_OPEN:
    case CS_FORCED_OPEN:
        fsm_open(c, ev);
        break;
    case CS_SENSOR_FAULT:
    case CS_OUT_OF_SERVICE:
        fsm_out_of_service(c, ev);
        break;
    }
}

/* ------------------------------------------------------------ unlocking */

struct unlock_req {
    const char *purpose;
    const char *member_id, *credential_id, *club_id, *booking_id;
    const char *operator_name, *reason;
    const char *event_type;
    json_t *detail;
};

/* Log before act: the authorising event and the intent are committed in one
 * transaction, and only then is the coil energised. */
static int comp_unlock(struct comp *c, const struct unlock_req *req)
{
    struct station *st = c->st;
    if (c->state != CS_LOCKED_FULL && c->state != CS_LOCKED_EMPTY)
        return c->state == CS_SENSOR_FAULT || c->state == CS_OUT_OF_SERVICE ? STATION_ESTATE
                                                                            : STATION_EBUSY;
    struct comp_row next = c->row;
    snprintf(next.purpose, sizeof(next.purpose), "%s", req->purpose);
    snprintf(next.pending_member, sizeof(next.pending_member), "%s",
             req->member_id ? req->member_id : "");
    snprintf(next.pending_credential, sizeof(next.pending_credential), "%s",
             req->credential_id ? req->credential_id : "");
    snprintf(next.pending_club, sizeof(next.pending_club), "%s", req->club_id ? req->club_id : "");
    snprintf(next.pending_booking, sizeof(next.pending_booking), "%s",
             req->booking_id ? req->booking_id : "");

    struct event ev = {
        .type = req->event_type,
        .compartment = c->number,
        .member_id = req->member_id,
        .credential_id = req->credential_id,
        .club_id = req->club_id,
        .booking_id = req->booking_id,
        .reason = req->reason,
        .operator_name = req->operator_name,
        .detail = req->detail,
    };
    if (store_begin(st->store) != STORE_OK)
        return STATION_ESTORE;
    if (emit(st, &ev) < 0 || store_comp_save(st->store, &next) != STORE_OK) {
        store_rollback(st->store);
        return STATION_ESTORE;
    }
    if (store_commit(st->store) != STORE_OK)
        return STATION_ESTORE;
    c->row = next;
    comp_fsm(c, CE_UNLOCK);
    return c->state == CS_UNLOCKING ? 0 : STATION_EHW;
}

/* ------------------------------------------------------------ taps */

static struct comp *comp_by_number(struct station *st, int n)
{
    for (int i = 0; i < st->ncomps; i++) {
        if (st->comps[i].number == n)
            return &st->comps[i];
    }
    return NULL;
}

int station_issue_next(struct station *st, bool on)
{
    return st->rops->issue_next(st->rdev, on) == 0 ? 0 : STATION_EINVAL;
}

void station_uid_hmac(const struct station *st, const uint8_t *uid, size_t len, uint8_t out[32])
{
    unsigned int outlen = 32;
    if (!HMAC(EVP_sha256(), st->site_key, (int)st->site_key_len, uid, len, out, &outlen))
        memset(out, 0, 32); /* cannot happen with SHA-256; an all-zero id matches nothing */
}

static void build_views(struct station *st, struct comp_view *views)
{
    for (int i = 0; i < st->ncomps; i++) {
        const struct comp *c = &st->comps[i];
        struct comp_view *v = &views[i];
        memset(v, 0, sizeof(*v));
        v->number = c->number;
        v->key_present = c->key_present;
        v->out_of_service = c->state == CS_SENSOR_FAULT || c->state == CS_OUT_OF_SERVICE;
        v->busy =
            !(c->state == CS_LOCKED_FULL || c->state == CS_LOCKED_EMPTY) && !v->out_of_service;
        snprintf(v->holder_member, sizeof(v->holder_member), "%s", c->row.holder_member);
        snprintf(v->holder_club, sizeof(v->holder_club), "%s", c->row.holder_club);
    }
}

static void record_refusal(struct station *st, const struct decision *d,
                           const struct card_read *card, json_t *extra)
{
    json_t *detail = json_object();
    if (card)
        json_object_set_new(detail, "card",
                            json_string(card->kind == CARD_KIND_DESFIRE ? "desfire" : "uid"));
    if (extra)
        json_object_update(detail, extra);
    if (d->next_start_ms) {
        char when[40];
        time_format_utc(d->next_start_ms, when, sizeof(when));
        json_object_set_new(detail, "nextBookingStart", json_string(when));
    }
    struct event ev = {
        .type = "access.denied",
        .compartment = d->compartment,
        .member_id = d->have_credential ? d->member.id : NULL,
        .credential_id = d->have_credential ? d->credential.id : NULL,
        .club_id = d->club_id[0] ? d->club_id : NULL,
        .reason = refusal_code(d->reason),
        .detail = detail,
    };
    if (emit(st, &ev) < 0)
        log_errx("could not record a refusal (%s)", refusal_code(d->reason));
    json_decref(detail);
    log_info("tap refused: %s%s%s", refusal_code(d->reason), d->have_credential ? ", member " : "",
             d->have_credential ? d->member.id : "");
    notify(st, SIT_REFUSED, d->compartment, d->reason);
}

/* ------------------------------------------------------------ card + PIN */

static void random_nonce(char out[STATION_NONCE_LEN + 1])
{
    uint8_t raw[STATION_NONCE_LEN / 2];
    static const char digits[] = "0123456789abcdef";
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        memset(raw, 0, sizeof(raw)); /* cannot happen; a known nonce still needs the PIN */
    for (size_t i = 0; i < sizeof(raw); i++) {
        out[2 * i] = digits[raw[i] >> 4];
        out[2 * i + 1] = digits[raw[i] & 15];
    }
    out[STATION_NONCE_LEN] = '\0';
}

static bool nonce_ok(const char *want, const char *got)
{
    return got != NULL && strlen(got) == STATION_NONCE_LEN &&
           CRYPTO_memcmp(want, got, STATION_NONCE_LEN) == 0;
}

/* An event about the awaited PIN's tap, with its member and booking. */
static int64_t pin_event(struct station *st, const char *type, const char *reason, json_t *detail)
{
    const struct decision *d = &st->pin.d;
    struct event ev = {
        .type = type,
        .compartment = d->compartment,
        .member_id = d->member.id,
        .credential_id = d->credential.id,
        .club_id = d->club_id[0] ? d->club_id : NULL,
        .booking_id = d->have_booking ? d->booking.id : NULL,
        .reason = reason,
        .detail = detail,
    };
    int64_t seq = emit(st, &ev);
    if (seq < 0)
        log_errx("could not record %s", type);
    return seq;
}

/* Ends the awaited PIN without an unlock; why is the reason of access.pinCancelled,
 * or NULL when the end is recorded otherwise (a lockout). */
static void pin_end(struct station *st, const char *why)
{
    if (!st->pin.active)
        return;
    if (st->pin.timer)
        loop_remove(st->loop, st->pin.timer);
    st->pin.timer = 0;
    if (why) {
        json_t *detail = json_pack("{s:s}", "purpose", "pickup");
        pin_event(st, "access.pinCancelled", why, detail);
        json_decref(detail);
        log_info("compartment %d: PIN not entered (%s); nothing unlocked", st->pin.d.compartment,
                 why);
    }
    st->pin.active = false;
    OPENSSL_cleanse(st->pin.nonce, sizeof(st->pin.nonce));
    OPENSSL_cleanse(st->pin.hmac, sizeof(st->pin.hmac));
    OPENSSL_cleanse(&st->pin.card, sizeof(st->pin.card));
    if (why)
        notify(st, SIT_READY, 0, REFUSE_NONE);
}

static void pin_timeout(void *arg)
{
    struct station *st = arg;
    st->pin.timer = 0;
    pin_end(st, "timeout");
}

static void refuse_pin(struct station *st, struct decision *d, const struct card_read *card,
                       enum refusal why, json_t *extra)
{
    d->action = POLICY_REFUSE;
    d->reason = why;
    record_refusal(st, d, card, extra);
}

static json_t *locked_until_json(int64_t until_ms, int64_t lockout_ms)
{
    char when[40];
    time_format_utc(until_ms, when, sizeof(when));
    json_t *j = json_pack("{s:s}", "lockedUntil", when);
    if (lockout_ms > 0)
        json_object_set_new(j, "lockoutMs", json_integer(lockout_ms));
    return j;
}

/* A granted pickup that needs a PIN: check the member can give one, then wait. */
static void pin_request(struct station *st, struct decision *d, const struct card_read *card)
{
    struct pin_row pr;
    int rc = store_pin_get(st->store, d->member.id, &pr);
    if (rc == STORE_NOTFOUND) {
        refuse_pin(st, d, card, REFUSE_PIN_NOT_SET, NULL);
        return;
    }
    if (rc != STORE_OK) {
        refuse_pin(st, d, card, REFUSE_INTERNAL, NULL);
        return;
    }
    if (pr.locked_until_ms > clock_wall_ms()) {
        json_t *extra = locked_until_json(pr.locked_until_ms, 0);
        refuse_pin(st, d, card, REFUSE_PIN_LOCKED_OUT, extra);
        json_decref(extra);
        return;
    }
    int id = loop_add_timer(st->loop, st->cfg->pin_timeout_ms, pin_timeout, st);
    if (id < 0) {
        refuse_pin(st, d, card, REFUSE_INTERNAL, NULL);
        return;
    }
    st->pin.active = true;
    st->pin.d = *d;
    st->pin.card = *card;
    station_uid_hmac(st, card->uid, card->uid_len, st->pin.hmac);
    st->pin.timer = id;
    st->pin.deadline_ms = clock_mono_ms() + st->cfg->pin_timeout_ms;
    st->pin.attempts_left = POLICY_PIN_ATTEMPTS - pr.failures;
    if (st->pin.attempts_left < 1)
        st->pin.attempts_left = 1;
    random_nonce(st->pin.nonce);
    json_t *detail =
        json_pack("{s:s,s:I,s:i}", "purpose", "pickup", "timeoutMs",
                  (json_int_t)st->cfg->pin_timeout_ms, "attemptsLeft", st->pin.attempts_left);
    int64_t seq = pin_event(st, "access.pinRequested", NULL, detail);
    json_decref(detail);
    if (seq < 0) {
        /* Not logged: do not wait for a PIN that could unlock without a record. */
        st->pin.active = false;
        loop_remove(st->loop, st->pin.timer);
        st->pin.timer = 0;
        st->last_unlock_rc = STATION_ESTORE;
        return;
    }
    st->last_unlock_rc = STATION_EPIN;
    log_info("tap granted: pickup, compartment %d, member %s: waiting for the PIN", d->compartment,
             d->member.id);
    notify(st, SIT_PIN_WANTED, d->compartment, REFUSE_NONE);
}

bool station_pin_pending(const struct station *st, struct station_pin_info *out)
{
    if (!st->pin.active)
        return false;
    out->compartment = st->pin.d.compartment;
    snprintf(out->nonce, sizeof(out->nonce), "%s", st->pin.nonce);
    int64_t left = st->pin.deadline_ms - clock_mono_ms();
    out->remaining_ms = left > 0 ? left : 0;
    out->attempts_left = st->pin.attempts_left;
    return true;
}

enum station_pin_result station_pin_enter(struct station *st, const char *nonce, const char *pin,
                                          int *attempts_left, int64_t *lockout_ms)
{
    *attempts_left = 0;
    *lockout_ms = 0;
    if (!st->pin.active || !nonce_ok(st->pin.nonce, nonce))
        return STATION_PIN_STALE;
    struct decision *d = &st->pin.d;
    struct pin_row pr;
    if (store_pin_get(st->store, d->member.id, &pr) != STORE_OK) {
        pin_end(st, "internal-error");
        return STATION_PIN_FAILED;
    }
    int64_t now = clock_wall_ms();
    if (pin != NULL && policy_pin_verify(pr.hash, pin)) {
        struct comp *c = comp_by_number(st, d->compartment);
        if (store_pin_attempts(st->store, d->member.id, 0, 0, 0) != STORE_OK)
            log_errx("could not reset the PIN attempts of %s", d->member.id);
        if (st->pin.timer)
            loop_remove(st->loop, st->pin.timer);
        st->pin.timer = 0;
        st->pin.active = false;
        OPENSSL_cleanse(st->pin.nonce, sizeof(st->pin.nonce));
        /* Decide again, as if the card were tapped now: only the same pickup of the
         * same compartment goes ahead. */
        struct comp_view views[CONFIG_MAX_COMPARTMENTS];
        struct decision again;
        build_views(st, views);
        policy_decide(st->cfg, st->store, st->pin.hmac, &st->pin.card, views, st->ncomps, now,
                      &again);
        OPENSSL_cleanse(st->pin.hmac, sizeof(st->pin.hmac));
        if (again.action != POLICY_PICKUP || again.compartment != d->compartment) {
            if (again.action != POLICY_REFUSE) {
                again.action = POLICY_REFUSE;
                again.reason = REFUSE_BUSY;
            }
            record_refusal(st, &again, &st->pin.card, NULL);
            OPENSSL_cleanse(&st->pin.card, sizeof(st->pin.card));
            st->last_decision = again;
            log_info("PIN right, but the tap no longer grants compartment %d (%s); nothing "
                     "unlocked",
                     d->compartment, refusal_code(again.reason));
            notify(st, SIT_REFUSED, d->compartment, again.reason);
            return STATION_PIN_REFUSED;
        }
        OPENSSL_cleanse(&st->pin.card, sizeof(st->pin.card));
        json_t *detail = json_pack("{s:s,s:b}", "purpose", "pickup", "pin", 1);
        struct unlock_req req = {
            .purpose = "pickup",
            .member_id = d->member.id,
            .credential_id = d->credential.id,
            .club_id = d->club_id[0] ? d->club_id : NULL,
            .booking_id = d->have_booking ? d->booking.id : NULL,
            .event_type = "access.granted",
            .detail = detail,
        };
        int rc = c ? comp_unlock(c, &req) : STATION_EINVAL;
        json_decref(detail);
        st->last_unlock_rc = rc;
        if (rc != 0) {
            log_errx("PIN right (compartment %d) but not unlocked: %s", d->compartment,
                     station_strerror(rc));
            notify(st, SIT_REFUSED, d->compartment, REFUSE_BUSY);
            return STATION_PIN_FAILED;
        }
        log_info("PIN right: pickup, compartment %d, member %s", d->compartment, d->member.id);
        notify(st, SIT_GRANTED, d->compartment, REFUSE_NONE);
        return STATION_PIN_OK;
    }

    /* Wrong: count it, and lock out after POLICY_PIN_ATTEMPTS in a row. */
    int failures = pr.failures + 1, lockouts = pr.lockouts;
    int64_t until = 0, lock_ms = 0;
    if (failures >= POLICY_PIN_ATTEMPTS) {
        lock_ms = policy_pin_lockout_ms(lockouts);
        until = now + lock_ms;
        lockouts++;
        failures = 0;
    }
    json_t *extra = lock_ms ? locked_until_json(until, lock_ms)
                            : json_pack("{s:i}", "attemptsLeft", POLICY_PIN_ATTEMPTS - failures);
    struct decision refused = *d;
    refused.action = POLICY_REFUSE;
    refused.reason = lock_ms ? REFUSE_PIN_LOCKED_OUT : REFUSE_PIN_WRONG;
    bool ok = store_begin(st->store) == STORE_OK &&
              store_pin_attempts(st->store, d->member.id, failures, lockouts, until) == STORE_OK;
    if (ok) {
        record_refusal(st, &refused, NULL, extra);
        ok = store_commit(st->store) == STORE_OK;
    } else {
        store_rollback(st->store);
    }
    json_decref(extra);
    if (!ok) {
        pin_end(st, "internal-error");
        return STATION_PIN_FAILED;
    }
    if (lock_ms) {
        log_warnx("member %s: %d wrong PINs, locked out for %lld s", d->member.id,
                  POLICY_PIN_ATTEMPTS, (long long)(lock_ms / 1000));
        pin_end(st, NULL);
        *lockout_ms = lock_ms;
        return STATION_PIN_LOCKED_OUT;
    }
    st->pin.attempts_left = POLICY_PIN_ATTEMPTS - failures;
    *attempts_left = st->pin.attempts_left;
    return STATION_PIN_WRONG;
}

int station_pin_cancel(struct station *st, const char *nonce)
{
    if (!st->pin.active || !nonce_ok(st->pin.nonce, nonce))
        return STATION_ESTATE;
    pin_end(st, "cancelled");
    return 0;
}

/* ------------------------------------------------------------ condition notes */

static const char *const note_codes[] = {"lights-broken", "floor-wet", "equipment-missing",
                                         "other"};

static void note_open(struct station *st, int n)
{
    st->note.active = true;
    st->note.compartment = n;
    st->note.until_ms = clock_mono_ms() + (int64_t)STATION_NOTE_WINDOW_MS;
    st->note.used = 0;
    random_nonce(st->note.nonce);
}

bool station_note_pending(const struct station *st, struct station_note_info *out)
{
    int64_t left = st->note.until_ms - clock_mono_ms();
    if (!st->note.active || left <= 0)
        return false;
    out->compartment = st->note.compartment;
    snprintf(out->nonce, sizeof(out->nonce), "%s", st->note.nonce);
    out->remaining_ms = left;
    return true;
}

int station_condition_note(struct station *st, const char *nonce, const char *code,
                           const char *text)
{
    size_t k = 0, nk = sizeof(note_codes) / sizeof(note_codes[0]);
    while (k < nk && (code == NULL || strcmp(code, note_codes[k]) != 0))
        k++;
    if (k == nk)
        return STATION_EINVAL;
    /* Control characters out; the length in characters (UTF-8 lead bytes). */
    char clean[STATION_NOTE_TEXT_MAX * 4 + 1];
    size_t len = 0, chars = 0;
    for (const unsigned char *p = (const unsigned char *)(text ? text : ""); *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            continue;
        if ((*p & 0xc0) != 0x80)
            chars++;
        if (chars > STATION_NOTE_TEXT_MAX || len + 1 >= sizeof(clean))
            return STATION_EINVAL;
        clean[len++] = (char)*p;
    }
    clean[len] = '\0';
    while (len > 0 && clean[len - 1] == ' ')
        clean[--len] = '\0';
    if (strcmp(code, "other") == 0 && len == 0)
        return STATION_EINVAL;
    json_t *jtext = json_string(clean); /* NULL when it is not UTF-8 */
    if (jtext == NULL)
        return STATION_EINVAL;
    struct station_note_info info;
    if (!station_note_pending(st, &info) || !nonce_ok(st->note.nonce, nonce) ||
        (st->note.used & (1u << k))) {
        json_decref(jtext);
        return STATION_ESTATE;
    }
    const struct compartment_cfg *cc = config_compartment(st->cfg, info.compartment);
    json_t *detail = json_pack("{s:s,s:s}", "code", code, "hall", cc ? cc->hall : "");
    if (len > 0)
        json_object_set_new(detail, "text", jtext);
    else
        json_decref(jtext);
    struct event ev = {
        .type = "hall.conditionNote",
        .compartment = info.compartment,
        .reason = code,
        .detail = detail,
    };
    int64_t seq = emit(st, &ev);
    json_decref(detail);
    if (seq < 0)
        return STATION_ESTORE;
    st->note.used |= 1u << k;
    log_info("compartment %d: condition note %s", info.compartment, code);
    return 0;
}

/* ------------------------------------------------------------ observer, outputs */

const char *station_situation_name(enum station_situation sit)
{
    switch (sit) {
    case SIT_READY:
        return "ready";
    case SIT_READING:
        return "reading";
    case SIT_GRANTED:
        return "granted";
    case SIT_PIN_WANTED:
        return "pin-wanted";
    case SIT_REFUSED:
        return "refused";
    case SIT_RETURN_ACCEPTED:
        return "return-accepted";
    case SIT_ALARM:
        return "alarm";
    case SIT_OUT_OF_SERVICE:
        return "out-of-service";
    }
    return "?";
}

void station_set_observer(struct station *st, station_observer_cb cb, void *arg)
{
    st->observer = cb;
    st->observer_arg = arg;
}

bool station_out_of_service(const struct station *st)
{
    for (int i = 0; i < st->ncomps; i++) {
        if (st->comps[i].state != CS_SENSOR_FAULT && st->comps[i].state != CS_OUT_OF_SERVICE)
            return false;
    }
    return st->ncomps > 0;
}

/* Tells the observer when the steady state (ready or out of service) changes. */
static void notify_steady(struct station *st)
{
    bool oos = station_out_of_service(st);
    if (oos == st->was_out_of_service)
        return;
    st->was_out_of_service = oos;
    notify(st, oos ? SIT_OUT_OF_SERVICE : SIT_READY, 0, REFUSE_NONE);
}

int station_output_request(struct station *st, const struct line_cfg *line)
{
    int h = st->gops->request(st->gdev, line, GPIO_OUTPUT);
    if (h >= 0 && st->gops->set(st->gdev, h, 0) < 0)
        log_errx("cannot drive %s inactive", line->name);
    return h;
}

int station_output_set(struct station *st, int handle, int value)
{
    return st->gops->set(st->gdev, handle, value);
}

void station_card(struct station *st, const struct card_read *card)
{
    uint8_t hmac[32];
    station_uid_hmac(st, card->uid, card->uid_len, hmac);

    if (card->issue_attempted && !st->tap_hook) {
        log_info("an issued card arrived after its request ended; ignored");
        return;
    }
    if (st->tap_hook) {
        struct decision none;
        memset(&none, 0, sizeof(none));
        st->tap_hook(&none, hmac, card, st->tap_arg);
        return;
    }

    notify(st, SIT_READING, 0, REFUSE_NONE);
    if (st->pin.active)
        pin_end(st, "new-tap");

    struct comp_view views[CONFIG_MAX_COMPARTMENTS];
    struct decision d;
    build_views(st, views);
    policy_decide(st->cfg, st->store, hmac, card, views, st->ncomps, clock_wall_ms(), &d);
    st->last_unlock_rc = 0;

    if (d.action == POLICY_PICKUP && policy_pin_required(st->cfg, d.compartment))
        pin_request(st, &d, card); /* may turn d into a refusal */
    else if (d.action == POLICY_REFUSE)
        record_refusal(st, &d, card, NULL);
    else {
        struct comp *c = comp_by_number(st, d.compartment);
        const char *purpose = d.action == POLICY_PICKUP ? "pickup" : "return";
        json_t *detail = json_pack("{s:s}", "purpose", purpose);
        struct unlock_req req = {
            .purpose = purpose,
            .member_id = d.member.id,
            .credential_id = d.credential.id,
            .club_id = d.club_id[0] ? d.club_id : NULL,
            .booking_id = d.have_booking ? d.booking.id : NULL,
            .event_type = "access.granted",
            .detail = detail,
        };
        int rc = c ? comp_unlock(c, &req) : STATION_EINVAL;
        json_decref(detail);
        st->last_unlock_rc = rc;
        if (rc == 0) {
            log_info("tap granted: %s, compartment %d, member %s", purpose, d.compartment,
                     d.member.id);
            notify(st, SIT_GRANTED, d.compartment, REFUSE_NONE);
        } else
            log_errx("tap granted (%s, compartment %d) but not unlocked: %s", purpose,
                     d.compartment, station_strerror(rc));
    }
    st->last_decision = d;
}

/* ------------------------------------------------------------ device callbacks */

static void on_gpio_edge(gpio_line line, int value, void *arg)
{
    struct station *st = arg;
    if (st->ignore_edges)
        return;
    if (line == st->tamper && st->tamper >= 0) {
        bool active = value != 0;
        if (active && !st->tamper_active) {
            struct event ev = {.type = "station.tamper"};
            emit(st, &ev);
            log_warnx("enclosure tamper switch triggered");
            notify(st, SIT_ALARM, 0, REFUSE_NONE);
        }
        st->tamper_active = active;
        return;
    }
    for (int i = 0; i < st->ncomps; i++) {
        struct comp *c = &st->comps[i];
        if (line == c->door) {
            comp_fsm(c, value ? CE_DOOR_OPEN : CE_DOOR_CLOSE);
            return;
        }
        if (line == c->key) {
            comp_fsm(c, value ? CE_KEY_IN : CE_KEY_OUT);
            return;
        }
    }
}

static void on_reader_event(enum reader_event_type type, const struct card_read *card, void *arg)
{
    struct station *st = arg;
    switch (type) {
    case READER_CARD:
        station_card(st, card);
        break;
    case READER_CARD_REMOVED:
        log_debug("card removed");
        break;
    case READER_FAULT:
        log_warnx("card reader fault");
        break;
    }
}

static void gpio_readable(int fd, uint32_t events, void *arg)
{
    (void)fd;
    (void)events;
    struct station *st = arg;
    int rc = st->gops->dispatch(st->gdev);
    if (rc < 0)
        log_errx("gpio: reading events failed: %s", strerror(-rc));
}

static void reader_readable(int fd, uint32_t events, void *arg)
{
    (void)fd;
    (void)events;
    struct station *st = arg;
    int rc = st->rops->dispatch(st->rdev);
    if (rc < 0)
        log_errx("reader: reading events failed: %s", strerror(-rc));
}

/* ------------------------------------------------------------ life cycle */

static int request_line(struct station *st, const struct line_cfg *line, enum gpio_dir dir,
                        const char *what, int n, char *err, size_t errlen)
{
    int h = st->gops->request(st->gdev, line, dir);
    if (h < 0)
        snprintf(err, errlen, "compartment %d: cannot request %s line '%s': %s", n, what,
                 line->name, strerror(-h));
    return h;
}

struct station *station_new(const struct config *cfg, struct store *store, struct loop *loop,
                            const uint8_t *site_key, size_t site_key_len, char *err, size_t errlen)
{
    struct station *st = xcalloc(1, sizeof(*st));
    int rc = 0;

    st->cfg = cfg;
    st->store = store;
    st->loop = loop;
    st->tamper = -1;
    if (site_key_len == 0 || site_key_len > SITE_KEY_MAX) {
        snprintf(err, errlen, "site key must be 1..%d bytes", SITE_KEY_MAX);
        goto err_free;
    }
    memcpy(st->site_key, site_key, site_key_len);
    st->site_key_len = site_key_len;

    st->gops = hal_gpio_ops(cfg->gpio_backend);
    st->rops = hal_reader_ops(cfg->reader_backend);
    if (!st->gops || !st->rops) {
        snprintf(err, errlen, "%s backend not built into this lockerd",
                 st->gops ? "reader" : "gpio");
        goto err_free;
    }
    st->gdev = st->gops->open(cfg, on_gpio_edge, st, &rc);
    if (!st->gdev) {
        snprintf(err, errlen, "gpio backend %s: %s", st->gops->name, strerror(-rc));
        goto err_free;
    }
    /* Locks first, so they are driven inactive before anything else can fail. */
    st->ncomps = cfg->n_compartments;
    for (int i = 0; i < st->ncomps; i++) {
        struct comp *c = &st->comps[i];
        c->st = st;
        c->cfg = &cfg->compartments[i];
        c->number = c->cfg->number;
        c->lock = request_line(st, &c->cfg->lock, GPIO_OUTPUT, "lock", c->number, err, errlen);
        if (c->lock < 0)
            goto err_close_gpio;
        if (st->gops->set(st->gdev, c->lock, 0) < 0) {
            snprintf(err, errlen, "compartment %d: cannot drive lock inactive", c->number);
            goto err_close_gpio;
        }
    }
    for (int i = 0; i < st->ncomps; i++) {
        struct comp *c = &st->comps[i];
        c->door = request_line(st, &c->cfg->door, GPIO_INPUT, "door", c->number, err, errlen);
        if (c->door < 0)
            goto err_close_gpio;
        c->key = request_line(st, &c->cfg->key, GPIO_INPUT, "key", c->number, err, errlen);
        if (c->key < 0)
            goto err_close_gpio;
    }
    if (cfg->tamper.name[0]) {
        st->tamper = request_line(st, &cfg->tamper, GPIO_INPUT, "tamper", 0, err, errlen);
        if (st->tamper < 0)
            goto err_close_gpio;
    }

    st->rdev = st->rops->open(cfg, on_reader_event, st, &rc);
    if (!st->rdev) {
        snprintf(err, errlen, "reader backend %s: %s", st->rops->name, strerror(-rc));
        goto err_close_gpio;
    }
    if (st->gops->event_fd(st->gdev) >= 0) {
        st->gpio_watch =
            loop_add_fd(loop, st->gops->event_fd(st->gdev), EPOLLIN, gpio_readable, st);
        if (st->gpio_watch < 0) {
            snprintf(err, errlen, "cannot watch gpio events: %s", strerror(-st->gpio_watch));
            goto err_close_reader;
        }
    }
    st->reader_watch =
        loop_add_fd(loop, st->rops->event_fd(st->rdev), EPOLLIN, reader_readable, st);
    if (st->reader_watch < 0) {
        snprintf(err, errlen, "cannot watch reader events: %s", strerror(-st->reader_watch));
        goto err_remove_gpio_watch;
    }
    return st;

err_remove_gpio_watch:
    loop_remove(loop, st->gpio_watch);
err_close_reader:
    st->rops->close(st->rdev);
err_close_gpio:
    for (int i = 0; i < st->ncomps; i++) {
        if (st->comps[i].lock >= 0 && st->comps[i].cfg)
            st->gops->set(st->gdev, st->comps[i].lock, 0);
    }
    st->gops->close(st->gdev);
err_free:
    OPENSSL_cleanse(st->site_key, sizeof(st->site_key));
    free(st);
    return NULL;
}

void station_free(struct station *st)
{
    if (!st)
        return;
    for (int i = 0; i < st->ncomps; i++) {
        struct comp *c = &st->comps[i];
        cancel_timer(c, &c->energize_timer);
        cancel_timer(c, &c->held_timer);
        cancel_timer(c, &c->overdue_timer);
        if (st->gops->set(st->gdev, c->lock, 0) < 0)
            log_errx("compartment %d: cannot drive lock inactive at exit", c->number);
    }
    if (st->pin.timer)
        loop_remove(st->loop, st->pin.timer);
    if (st->housekeeping_timer)
        loop_remove(st->loop, st->housekeeping_timer);
    if (st->checkpoint_timer)
        loop_remove(st->loop, st->checkpoint_timer);
    loop_remove(st->loop, st->reader_watch);
    if (st->gpio_watch)
        loop_remove(st->loop, st->gpio_watch);
    st->rops->close(st->rdev);
    st->gops->close(st->gdev);
    OPENSSL_cleanse(st->site_key, sizeof(st->site_key));
    free(st);
}

static void housekeeping_fired(void *arg)
{
    struct station *st = arg;
    st->housekeeping_timer = 0;
    station_housekeeping(st);
    int id = loop_add_timer(st->loop, HOUSEKEEPING_MS, housekeeping_fired, st);
    st->housekeeping_timer = id > 0 ? id : 0;
}

int64_t station_housekeeping(struct station *st)
{
    int64_t n = store_prune(st->store, clock_wall_ms() - st->cfg->retention_ms);
    if (n > 0)
        log_info("pruned %lld events older than the retention period", (long long)n);
    return n;
}

/* Rebuilds one compartment at start from its sensors and its stored intent. */
static void rebuild(struct comp *c)
{
    struct station *st = c->st;
    int door = st->gops->get(st->gdev, c->door);
    int key = st->gops->get(st->gdev, c->key);
    c->door_open = door > 0;
    c->key_present = key > 0;
    if (store_comp_get(st->store, c->number, &c->row) == STORE_ERR)
        log_errx("compartment %d: cannot read stored state", c->number);
    c->row.number = c->number;
    c->state = locked_state(c);

    if (c->row.out_of_service) {
        c->state =
            strncmp(c->row.oos_reason, "sensor:", 7) == 0 ? CS_SENSOR_FAULT : CS_OUT_OF_SERVICE;
    } else if (c->row.purpose[0]) {
        /* We went down during an unlock. The coil is off (driven off at open). */
        if (c->door_open) {
            c->state = open_state_for(c->row.purpose);
            int id = loop_add_timer(st->loop, st->cfg->door_open_alarm_ms, held_timeout, c);
            c->held_timer = id > 0 ? id : 0;
        } else {
            complete(c, true);
            c->state = locked_state(c);
        }
    } else if (c->door_open) {
        c->state = CS_FORCED_OPEN;
        emit_comp(c, "door.forced", "open-at-start",
                  json_pack("{s:b}", "keyPresent", c->key_present));
        int id = loop_add_timer(st->loop, st->cfg->door_open_alarm_ms, held_timeout, c);
        c->held_timer = id > 0 ? id : 0;
    } else if (c->key_present && c->row.holder_member[0]) {
        /* The key is back although no return was recorded: the door must have been
         * opened while we were down. Record the return and the anomaly. */
        json_t *detail = json_pack("{s:b}", "recoveredAtStart", 1);
        struct event ev = {.type = "key.returned",
                           .compartment = c->number,
                           .member_id = c->row.holder_member,
                           .club_id = c->row.holder_club,
                           .reason = "returned-while-down",
                           .detail = detail};
        clear_holder(&c->row);
        if (store_begin(st->store) != STORE_OK || emit(st, &ev) < 0 ||
            store_comp_save(st->store, &c->row) != STORE_OK || store_commit(st->store) != STORE_OK)
            store_rollback(st->store);
        json_decref(detail);
    } else if (!c->key_present && c->row.holder_member[0] == '\0') {
        c->state = CS_LOCKED_EMPTY;
        sensor_fault(c, "key-missing-unrecorded");
    }
    log_info("compartment %d: %s (door %s, key %s)", c->number, comp_state_name(c->state),
             c->door_open ? "open" : "closed", c->key_present ? "in" : "out");
    arm_overdue(c);
}

int station_start(struct station *st)
{
    char running[8] = "";
    bool unclean = store_meta_get(st->store, "running", running, sizeof(running)) == STORE_OK &&
                   strcmp(running, "1") == 0;

    /* A new simulated cabinet arrives with every key in its compartment. */
    if (st->gops == &gpio_sim_ops && gpio_sim_fresh(st->gdev)) {
        for (int i = 0; i < st->ncomps; i++)
            gpio_sim_set_input(st->gdev, st->comps[i].cfg->key.name, 1);
        /* These edges are the initial state, read below by rebuild(): drop them. */
        st->ignore_edges = true;
        st->gops->dispatch(st->gdev);
        st->ignore_edges = false;
        log_info("simulated hardware created: all keys in place");
    }

    if (unclean) {
        struct event ev = {.type = "station.uncleanShutdown"};
        if (emit(st, &ev) < 0)
            return STATION_ESTORE;
        log_warnx("the previous run did not shut down cleanly");
    }
    if (store_meta_set(st->store, "running", "1") != STORE_OK)
        return STATION_ESTORE;

    bool insecure = st->cfg->auth == CARD_AUTH_UID_INSECURE;
    json_t *detail = json_pack("{s:s,s:i,s:s,s:s,s:s}", "version", LOCKERD_VERSION, "compartments",
                               st->ncomps, "gpio", st->gops->name, "reader", st->rops->name, "auth",
                               insecure ? "uid-insecure" : "desfire");
    if (insecure)
        json_object_set_new(detail, "warning",
                            json_string("cards are identified by their UID alone, which can "
                                        "be cloned"));
    struct event ev = {.type = "station.started", .detail = detail};
    int64_t seq = emit(st, &ev);
    json_decref(detail);
    if (seq < 0)
        return STATION_ESTORE;

    for (int i = 0; i < st->ncomps; i++)
        rebuild(&st->comps[i]);
    if (st->tamper >= 0)
        st->tamper_active = st->gops->get(st->gdev, st->tamper) > 0;

    housekeeping_fired(st);
    st->was_out_of_service = station_out_of_service(st);
    notify(st, st->was_out_of_service ? SIT_OUT_OF_SERVICE : SIT_READY, 0, REFUSE_NONE);
    return 0;
}

void station_mark_clean_shutdown(struct station *st)
{
    if (store_meta_set(st->store, "running", "0") != STORE_OK)
        log_errx("cannot record the clean shutdown");
}

void station_reconfigure(struct station *st, const struct config *cfg)
{
    st->cfg = cfg;
    for (int i = 0; i < st->ncomps; i++)
        st->comps[i].cfg = &cfg->compartments[i];
    log_info("reload: timings and policy updated");
}

void station_set_event_listener(struct station *st, station_event_cb cb, void *arg)
{
    st->event_cb = cb;
    st->event_arg = arg;
}

void station_set_tap_hook(struct station *st, station_tap_cb cb, void *arg)
{
    st->tap_hook = cb;
    st->tap_arg = arg;
}

/* ------------------------------------------------------------ operator commands */

int station_service_open(struct station *st, int n, const char *operator_name, const char *reason)
{
    struct comp *c = comp_by_number(st, n);
    if (!c)
        return STATION_EINVAL;
    json_t *detail = json_pack("{s:s}", "purpose", "service");
    struct unlock_req req = {
        .purpose = "service",
        .operator_name = operator_name,
        .reason = reason,
        .event_type = "service.open",
        .detail = detail,
    };
    int rc = comp_unlock(c, &req);
    json_decref(detail);
    if (rc == 0)
        log_notice("compartment %d: service open by %s: %s", n, operator_name, reason);
    return rc;
}

int station_selftest_pulse(struct station *st, int n, const char *operator_name, int64_t pulse_ms)
{
    struct comp *c = comp_by_number(st, n);
    if (!c || pulse_ms <= 0)
        return STATION_EINVAL;
    if (c->door_open)
        return STATION_EBUSY;
    json_t *detail = json_pack(
        "{s:s,s:I}", "purpose", "selftest", "pulseMs",
        (json_int_t)(pulse_ms < st->cfg->max_energize_ms ? pulse_ms : st->cfg->max_energize_ms));
    struct unlock_req req = {
        .purpose = "selftest",
        .operator_name = operator_name,
        .event_type = "service.selftest",
        .detail = detail,
    };
    c->pulse_ms = pulse_ms;
    int rc = comp_unlock(c, &req);
    c->pulse_ms = 0;
    json_decref(detail);
    if (rc == 0)
        log_info("compartment %d: self-test pulse by %s", n, operator_name);
    return rc;
}

int64_t station_selftest_record(struct station *st, const char *operator_name, json_t *detail)
{
    struct event ev = {
        .type = "station.selftest",
        .operator_name = operator_name,
        .detail = detail,
    };
    int64_t seq = emit(st, &ev);
    if (seq < 0)
        log_errx("could not record the self-test");
    return seq;
}

int station_comp_check(struct station *st, int n, struct comp_check *out)
{
    struct comp *c = comp_by_number(st, n);
    if (!c)
        return STATION_EINVAL;
    memset(out, 0, sizeof(*out));
    out->state = c->state;
    out->door_open = c->door_open;
    out->key_present = c->key_present;
    out->lock_on = st->gops->get(st->gdev, c->lock) > 0;
    out->door_opens = c->door_opens;
    snprintf(out->oos_reason, sizeof(out->oos_reason), "%s", c->row.oos_reason);
    return 0;
}

int station_reader_info(struct station *st, char *buf, size_t len)
{
    return st->rops->info(st->rdev, buf, len);
}

int station_clear(struct station *st, int n, const char *operator_name, const char *reason)
{
    struct comp *c = comp_by_number(st, n);
    if (!c)
        return STATION_EINVAL;
    if (c->state != CS_SENSOR_FAULT && c->state != CS_OUT_OF_SERVICE)
        return STATION_ESTATE;
    /* A key that is gone without anyone holding it is put on the service account in
     * the same transaction, as a service removal would be: a restart must find the
     * state the technician cleared to, not a new fault. */
    struct comp_row next = c->row;
    bool unaccounted = !c->key_present && c->row.holder_member[0] == '\0';
    if (unaccounted) {
        snprintf(next.holder_member, sizeof(next.holder_member), "service");
        next.holder_since_ms = clock_wall_ms();
        next.due_ms = 0;
    }
    next.out_of_service = false;
    next.oos_reason[0] = '\0';
    json_t *detail = json_pack("{s:b}", "keyPresent", c->key_present);
    if (unaccounted)
        json_object_set_new(detail, "keyHeldBy", json_string("service"));
    struct event ev = {
        .type = "service.cleared",
        .compartment = c->number,
        .operator_name = operator_name,
        .reason = reason,
        .detail = detail,
    };
    bool ok = store_begin(st->store) == STORE_OK && emit(st, &ev) > 0 &&
              store_comp_save(st->store, &next) == STORE_OK && store_commit(st->store) == STORE_OK;
    if (!ok)
        store_rollback(st->store);
    json_decref(detail);
    if (!ok)
        return STATION_ESTORE;
    c->row = next;
    comp_fsm(c, CE_CLEAR);
    return 0;
}

int station_disable(struct station *st, int n, const char *operator_name, const char *reason)
{
    struct comp *c = comp_by_number(st, n);
    if (!c)
        return STATION_EINVAL;
    if (c->state == CS_OUT_OF_SERVICE || c->state == CS_SENSOR_FAULT)
        return STATION_ESTATE;
    struct comp_row next = c->row;
    next.out_of_service = true;
    snprintf(next.oos_reason, sizeof(next.oos_reason), "manual");
    struct event ev = {
        .type = "service.disabled",
        .compartment = c->number,
        .operator_name = operator_name,
        .reason = reason,
    };
    if (store_begin(st->store) != STORE_OK || emit(st, &ev) < 0 ||
        store_comp_save(st->store, &next) != STORE_OK || store_commit(st->store) != STORE_OK) {
        store_rollback(st->store);
        return STATION_ESTORE;
    }
    c->row = next;
    comp_fsm(c, CE_DISABLE);
    return 0;
}

/* ------------------------------------------------------------ status */

enum comp_state station_comp_state(const struct station *st, int n)
{
    for (int i = 0; i < st->ncomps; i++) {
        if (st->comps[i].number == n)
            return st->comps[i].state;
    }
    return CS_OUT_OF_SERVICE;
}

static json_t *time_json(int64_t ms)
{
    char buf[40];
    if (ms == 0)
        return json_null();
    time_format_local(ms, buf, sizeof(buf));
    return json_string(buf);
}

json_t *station_status_json(struct station *st)
{
    json_t *comps = json_array();
    json_t *alarms = json_array();
    int64_t now = clock_wall_ms();

    for (int i = 0; i < st->ncomps; i++) {
        const struct comp *c = &st->comps[i];
        int lock = st->gops->get(st->gdev, c->lock);
        json_t *o =
            json_pack("{s:i,s:s,s:s,s:s,s:s,s:s,s:s}", "number", c->number, "state",
                      comp_state_name(c->state), "door", c->door_open ? "open" : "closed", "key",
                      c->key_present ? "in" : "out", "lock", lock > 0 ? "energised" : "off",
                      "keyLabel", c->cfg->key_label, "hall", c->cfg->hall);
        if (c->row.holder_member[0]) {
            json_object_set_new(o, "holder",
                                json_pack("{s:s,s:s,s:s}", "member", c->row.holder_member, "club",
                                          c->row.holder_club, "booking", c->row.holder_booking));
            json_object_set_new(o, "since", time_json(c->row.holder_since_ms));
            json_object_set_new(o, "due", time_json(c->row.due_ms));
        }
        if (c->row.out_of_service)
            json_object_set_new(o, "outOfServiceReason", json_string(c->row.oos_reason));
        json_array_append_new(comps, o);

        const char *alarm = NULL;
        switch (c->state) {
        case CS_HELD_OPEN:
            alarm = "door.heldOpen";
            break;
        case CS_FORCED_OPEN:
            alarm = "door.forced";
            break;
        case CS_SENSOR_FAULT:
            alarm = "sensor.fault";
            break;
        case CS_LOCKED_FULL:
        case CS_LOCKED_EMPTY:
        case CS_UNLOCKING:
        case CS_OPEN_PICKUP:
        case CS_OPEN_RETURN:
        case CS_OPEN_SERVICE:
        case CS_OUT_OF_SERVICE:
            break;
        }
        if (alarm)
            json_array_append_new(alarms,
                                  json_pack("{s:s,s:i}", "type", alarm, "compartment", c->number));
        if (c->row.overdue_reported && !c->key_present)
            json_array_append_new(
                alarms, json_pack("{s:s,s:i}", "type", "key.overdue", "compartment", c->number));
    }
    if (st->tamper_active)
        json_array_append_new(alarms, json_pack("{s:s}", "type", "station.tamper"));

    json_t *station =
        json_pack("{s:s,s:s,s:o,s:s,s:b,s:s,s:s,s:s}", "id", st->cfg->station_id, "name",
                  st->cfg->station_name, "time", time_json(now), "timezone", st->cfg->timezone,
                  "clockSynced", clock_synced(), "gpio", st->gops->name, "reader", st->rops->name,
                  "version", LOCKERD_VERSION);
    json_object_set_new(
        station, "auth",
        json_string(st->cfg->auth == CARD_AUTH_UID_INSECURE ? "uid-insecure" : "desfire"));
    if (st->cfg->auth == CARD_AUTH_UID_INSECURE)
        json_object_set_new(station, "warning",
                            json_string("auth = uid-insecure: cards are identified by their UID "
                                        "alone, which can be cloned"));
    json_t *sync = json_pack("{s:s,s:I}", "mode", "local", "outboxDepth",
                             (json_int_t)store_outbox_depth(st->store));
    return json_pack("{s:o,s:o,s:o,s:o}", "station", station, "compartments", comps, "alarms",
                     alarms, "sync", sync);
}

/* ------------------------------------------------------------ simulation */

static bool is_sim(const struct station *st)
{
    return st->gops == &gpio_sim_ops && st->rops == &reader_sim_ops;
}

int station_sim_tap(struct station *st, const uint8_t *uid, size_t len, enum card_kind kind,
                    bool authenticated)
{
    if (st->rops != &reader_sim_ops)
        return STATION_ENOTSIM;
    if (reader_sim_tap(st->rdev, uid, len, kind, authenticated) < 0)
        return STATION_EINVAL;
    /* Deliver now, so the command's answer can say what the tap did. */
    st->rops->dispatch(st->rdev);
    return 0;
}

int station_sim_remove(struct station *st)
{
    if (st->rops != &reader_sim_ops)
        return STATION_ENOTSIM;
    reader_sim_remove(st->rdev);
    st->rops->dispatch(st->rdev);
    return 0;
}

static int sim_input(struct station *st, const struct line_cfg *line, bool value)
{
    if (st->gops != &gpio_sim_ops)
        return STATION_ENOTSIM;
    if (gpio_sim_set_input(st->gdev, line->name, value) < 0)
        return STATION_EHW;
    st->gops->dispatch(st->gdev);
    return 0;
}

int station_sim_door(struct station *st, int n, bool open)
{
    struct comp *c = comp_by_number(st, n);
    return c ? sim_input(st, &c->cfg->door, open) : STATION_EINVAL;
}

int station_sim_key(struct station *st, int n, bool present)
{
    struct comp *c = comp_by_number(st, n);
    return c ? sim_input(st, &c->cfg->key, present) : STATION_EINVAL;
}

int station_sim_tamper(struct station *st, bool active)
{
    if (!st->cfg->tamper.name[0])
        return STATION_EINVAL;
    return sim_input(st, &st->cfg->tamper, active);
}

char *station_sim_outputs(struct station *st)
{
    if (st->gops != &gpio_sim_ops)
        return NULL;
    return gpio_sim_describe(st->gdev);
}

int station_sim_clock_advance(struct station *st, int64_t ms)
{
    if (!is_sim(st) || !clock_sim_advance(ms))
        return STATION_ENOTSIM;
    /* Overdue timers were armed on the wall clock; both clocks moved together. */
    loop_clock_changed(st->loop);
    return 0;
}

int station_sim_output_hook(struct station *st, void (*hook)(gpio_line, int, void *), void *arg)
{
    if (st->gops != &gpio_sim_ops)
        return STATION_ENOTSIM;
    gpio_sim_set_output_hook(st->gdev, hook, arg);
    return 0;
}

const struct decision *station_last_tap(const struct station *st, int *unlock_rc)
{
    *unlock_rc = st->last_unlock_rc;
    return &st->last_decision;
}
