/*
 * control.c - the control socket: lockerctl (and later the kiosk and the manager
 * console) talk to lockerd here.
 *
 * Each client connection is read line by line; each line is one request, answered
 * by one line. Commands are a table of {name, minimum role, handler}. Handlers
 * validate their arguments completely and answer bad input with a reason, never
 * with a crash: a request line is untrusted input.
 *
 * Privacy: `card add` carries a UID; it is turned into the credential HMAC at once
 * and never logged or stored.
 */
#include "daemon/control.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/opendata.h"
#include "daemon/report.h"
#include "daemon/selftest.h"
#include "daemon/sync.h"
#include "daemon/timeutil.h"

#define LINE_MAX_BYTES    65536
#define OUT_MAX_BYTES     (32u << 20)
#define EVENTS_PAGE       1000
#define ENROLL_DEFAULT_MS 60000

struct client {
    struct control *ctl;
    int fd;
    int watch;
    uid_t uid;
    char user[64];
    enum member_role role;      /* of the current request */
    enum member_role conn_role; /* of the Unix user */
    bool console;               /* may act for its accounts ([control] consoles) */
    const char *op;             /* operator of the current request: user or op_buf */
    char op_buf[96];            /* "console:ACCOUNT" */
    char in[LINE_MAX_BYTES];
    size_t inlen;
    char *out;
    size_t outlen, outcap;
    bool follow;
    int64_t follow_seq;
    bool dead;
    struct client *next;
};

struct enrolment {
    struct client *client; /* NULL when no enrolment is waiting */
    bool issue;            /* card issue: personalise the card, then enrol it */
    char member[STORE_ID_LEN];
    char card_type[16];
    char op[96]; /* the operator who asked */
    int timer;
};

struct control {
    const struct config *cfg;
    struct loop *loop;
    struct station *st;
    struct store *store;
    struct sync *sync;
    int fd;
    int watch;
    struct client *clients;
    struct enrolment enrol;
    struct selftest *selftest;      /* the running self-test, NULL if none */
    struct client *selftest_client; /* who gets its result */
    bool unlink_on_free;
};

/* A command's error: code for machines, message for people. */
struct cmd_err {
    const char *code;
    char message[256];
};

typedef json_t *(*cmd_fn)(struct client *cl, json_t *args, struct cmd_err *err);

static void client_close(struct client *cl);
static void client_flush(struct client *cl);

/* ------------------------------------------------------------ output */

static void client_send_line(struct client *cl, json_t *obj)
{
    char *text = json_dumps(obj, JSON_COMPACT);
    if (!text)
        return;
    size_t n = strlen(text);
    if (cl->outlen + n + 1 > OUT_MAX_BYTES) {
        /* A client that does not read (a stuck follower) must not grow our memory. */
        log_warnx("control: client %s is not reading; dropping it", cl->user);
        free(text);
        cl->dead = true;
        return;
    }
    if (cl->outlen + n + 1 > cl->outcap) {
        size_t cap = cl->outcap ? cl->outcap : 4096;
        while (cap < cl->outlen + n + 1)
            cap *= 2;
        char *p = realloc(cl->out, cap);
        if (!p)
            fatalx("out of memory");
        cl->out = p;
        cl->outcap = cap;
    }
    memcpy(cl->out + cl->outlen, text, n);
    cl->out[cl->outlen + n] = '\n';
    cl->outlen += n + 1;
    free(text);
    client_flush(cl);
}

static void reply_ok(struct client *cl, json_t *result)
{
    json_t *r = json_pack("{s:b,s:o}", "ok", 1, "result", result ? result : json_null());
    client_send_line(cl, r);
    json_decref(r);
}

static void reply_err(struct client *cl, const char *code, const char *message)
{
    json_t *r = json_pack("{s:b,s:{s:s,s:s}}", "ok", 0, "error", "code", code, "message", message);
    client_send_line(cl, r);
    json_decref(r);
}

static void client_flush(struct client *cl)
{
    while (cl->outlen > 0 && !cl->dead) {
        ssize_t n = send(cl->fd, cl->out, cl->outlen, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            cl->dead = true;
            break;
        }
        memmove(cl->out, cl->out + n, cl->outlen - (size_t)n);
        cl->outlen -= (size_t)n;
    }
    loop_mod_fd(cl->ctl->loop, cl->watch, EPOLLIN | (cl->outlen ? EPOLLOUT : 0));
}

/* ------------------------------------------------------------ argument helpers */

static __attribute__((format(printf, 3, 4))) json_t *fail(struct cmd_err *err, const char *code,
                                                          const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    err->code = code;
    return NULL;
}

/* Required string argument, length 1..max-1, printable. */
static const char *arg_str(json_t *args, const char *name, size_t max, struct cmd_err *err)
{
    json_t *v = json_object_get(args, name);
    if (!json_is_string(v)) {
        fail(err, "bad_request", "missing argument '%s'", name);
        return NULL;
    }
    const char *s = json_string_value(v);
    size_t len = strlen(s);
    if (len == 0 || len >= max) {
        fail(err, "bad_request", "argument '%s' must be 1 to %zu characters", name, max - 1);
        return NULL;
    }
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            fail(err, "bad_request", "argument '%s' contains control characters", name);
            return NULL;
        }
    }
    return s;
}

/* Identifiers: letters, digits, '-', '_', '.', at most STORE_ID_LEN-1. */
static const char *arg_id(json_t *args, const char *name, struct cmd_err *err)
{
    const char *s = arg_str(args, name, STORE_ID_LEN, err);
    if (!s)
        return NULL;
    for (const char *p = s; *p; p++) {
        if (!(*p >= 'a' && *p <= 'z') && !(*p >= 'A' && *p <= 'Z') && !(*p >= '0' && *p <= '9') &&
            *p != '-' && *p != '_' && *p != '.') {
            fail(err, "bad_request", "'%s' may contain only letters, digits, '-', '_' and '.'",
                 name);
            return NULL;
        }
    }
    return s;
}

static bool arg_compartment(struct client *cl, json_t *args, int *out, struct cmd_err *err)
{
    json_t *v = json_object_get(args, "compartment");
    if (!json_is_integer(v)) {
        fail(err, "bad_request", "missing argument 'compartment' (a number)");
        return false;
    }
    json_int_t n = json_integer_value(v);
    if (n < 1 || n > CONFIG_MAX_COMPARTMENTS || !config_compartment(cl->ctl->cfg, (int)n)) {
        fail(err, "no_such_compartment", "this station has no compartment %lld", (long long)n);
        return false;
    }
    *out = (int)n;
    return true;
}

static bool arg_time(json_t *args, const char *name, int64_t *out, struct cmd_err *err)
{
    const char *s = arg_str(args, name, 64, err);
    if (!s)
        return false;
    if (!time_parse_iso(s, out)) {
        fail(err, "bad_request",
             "'%s' is not a time like 2026-11-28T18:00+01:00 (or local 2026-11-28T18:00)", s);
        return false;
    }
    return true;
}

static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A card UID in hex (colons allowed): 4, 7 or 10 bytes. The message never
 * repeats the UID. */
static bool arg_uid(json_t *args, uint8_t *uid, size_t *len, struct cmd_err *err)
{
    const char *s = arg_str(args, "uid", 64, err);
    if (!s)
        return false;
    size_t n = 0;
    int hi = -1;
    for (const char *p = s; *p; p++) {
        if (*p == ':')
            continue;
        int v = hex_nibble(*p);
        if (v < 0 || n == HAL_UID_MAX) {
            fail(err, "bad_request", "uid must be 4, 7 or 10 bytes in hex");
            return false;
        }
        if (hi < 0) {
            hi = v;
        } else {
            uid[n++] = (uint8_t)(hi << 4 | v);
            hi = -1;
        }
    }
    if (hi >= 0 || (n != 4 && n != 7 && n != 10)) {
        fail(err, "bad_request", "uid must be 4, 7 or 10 bytes in hex");
        return false;
    }
    *len = n;
    return true;
}

static bool arg_card_type(json_t *args, const char **type, struct cmd_err *err)
{
    json_t *v = json_object_get(args, "card");
    *type = "desfire";
    if (!v)
        return true;
    const char *s = json_string_value(v);
    if (!s || (strcmp(s, "desfire") != 0 && strcmp(s, "uid") != 0)) {
        fail(err, "bad_request", "card type must be 'desfire' or 'uid'");
        return false;
    }
    *type = s;
    return true;
}

/* New random id with a prefix: "m-3fa85f64". */
static void new_id(const char *prefix, char *out, size_t len)
{
    uint8_t r[4];
    if (RAND_bytes(r, sizeof(r)) != 1)
        fatalx("RAND_bytes failed");
    snprintf(out, len, "%s-%02x%02x%02x%02x", prefix, r[0], r[1], r[2], r[3]);
}

/* Records an administrative change in the event log with its operator. */
static bool audit(struct client *cl, const char *type, const struct event *base)
{
    struct event ev = *base;
    ev.type = type;
    ev.operator_name = cl->op;
    if (store_event_add(cl->ctl->store, &ev) < 0)
        return false;
    log_info("%s by %s", type, cl->op);
    return true;
}

/* ------------------------------------------------------------ commands */

static json_t *cmd_status(struct client *cl, json_t *args, struct cmd_err *err)
{
    (void)args;
    (void)err;
    json_t *r = station_status_json(cl->ctl->st);
    if (r != NULL && cl->ctl->sync != NULL)
        json_object_set_new(r, "sync", sync_status_json(cl->ctl->sync, true));
    return r;
}

static json_t *cmd_events(struct client *cl, json_t *args, struct cmd_err *err)
{
    struct store *s = cl->ctl->store;
    if (json_is_true(json_object_get(args, "verify"))) {
        int64_t bad = 0;
        char why[256] = "";
        int rc = store_events_verify(s, &bad, why, sizeof(why));
        if (rc == STORE_ERR)
            return fail(err, "internal_error", "the event log could not be read");
        json_t *r = json_pack("{s:b,s:I,s:I,s:I}", "intact", rc == STORE_OK, "events",
                              (json_int_t)store_event_count(s, NULL), "lastSeq",
                              (json_int_t)store_last_seq(s), "erased",
                              (json_int_t)store_event_erased_count(s));
        if (rc != STORE_OK) {
            json_object_set_new(r, "firstBadSeq", json_integer(bad));
            json_object_set_new(r, "reason", json_string(why));
        }
        return r;
    }
    json_int_t since = 0;
    json_t *v = json_object_get(args, "since");
    if (v && (!json_is_integer(v) || json_integer_value(v) < 0))
        return fail(err, "bad_request", "'since' must be a sequence number >= 0");
    if (v)
        since = json_integer_value(v);
    json_t *events = store_events_json(s, since, EVENTS_PAGE);
    if (!events)
        return fail(err, "internal_error", "the event log could not be read");
    if (json_is_true(json_object_get(args, "follow"))) {
        cl->follow = true;
        size_t n = json_array_size(events);
        cl->follow_seq =
            n ? json_integer_value(json_object_get(json_array_get(events, n - 1), "seq"))
              : (since ? since : store_last_seq(s));
    }
    return json_pack("{s:o,s:I,s:b}", "events", events, "lastSeq", (json_int_t)store_last_seq(s),
                     "more", json_array_size(events) == EVENTS_PAGE);
}

/* "compartment 2 already has booking b-1a2b3c4d of club-a, Tue 2026-12-01 18:00-20:00" */
static json_t *conflict(struct cmd_err *err, const struct booking *other)
{
    char from[40], to[40];
    time_format_local(other->start_ms, from, sizeof(from));
    time_format_local(other->end_ms, to, sizeof(to));
    return fail(err, "conflict",
                "overlapping: compartment %d already has the %s booking %s of club '%s' from %s "
                "to %s",
                other->compartment, strcmp(other->source, "local") == 0 ? "local" : "city's",
                other->id, other->club_id, from, to);
}

/* The local date of a time, "2026-12-01". */
static void local_date(int64_t ms, char *buf, size_t len)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%d", &tm);
}

/* The same local wall time `weeks` weeks later, in the station's time zone: 18:00
 * stays 18:00 across a change of daylight saving time. */
static int64_t weeks_later(int64_t ms, int weeks)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    tm.tm_mday += 7 * weeks;
    tm.tm_isdst = -1;
    return (int64_t)mktime(&tm) * 1000 + ms % 1000;
}

static bool is_date(const char *s)
{
    int y, m, d;
    char tail;
    return s && strlen(s) == 10 && sscanf(s, "%4d-%2d-%2d%c", &y, &m, &d, &tail) == 3 && m >= 1 &&
           m <= 12 && d >= 1 && d <= 31;
}

#define REPEAT_MAX 160 /* weekly for three years */

/* booking.add: one booking, or with "repeat": {"until": DATE, "except": [DATE...]}
 * the same slot every week up to and including DATE (local dates of the station),
 * without the dates in "except". All or nothing: one conflict refuses the whole
 * series, naming the booking in the way. */
static json_t *cmd_booking_add(struct client *cl, json_t *args, struct cmd_err *err)
{
    struct booking b;
    memset(&b, 0, sizeof(b));
    const char *club = arg_id(args, "club", err);
    if (!club || !arg_compartment(cl, args, &b.compartment, err) ||
        !arg_time(args, "from", &b.start_ms, err) || !arg_time(args, "to", &b.end_ms, err))
        return NULL;
    if (b.end_ms <= b.start_ms)
        return fail(err, "bad_request", "the booking must end after it starts");
    if (b.end_ms - b.start_ms > 7 * 86400000LL)
        return fail(err, "bad_request", "a booking lasts at most 7 days");
    json_t *repeat = json_object_get(args, "repeat");
    const char *until = NULL;
    json_t *except = NULL;
    if (repeat) {
        until = json_string_value(json_object_get(repeat, "until"));
        except = json_object_get(repeat, "except");
        if (!json_is_object(repeat) || !is_date(until))
            return fail(err, "bad_request", "'repeat' needs 'until', a date like 2027-06-30");
        if (except && !json_is_array(except))
            return fail(err, "bad_request", "'except' must be a list of dates like 2026-12-24");
        size_t i;
        json_t *v;
        json_array_foreach(except, i, v)
        {
            if (!is_date(json_string_value(v)))
                return fail(err, "bad_request", "'except' must be a list of dates like 2026-12-24");
        }
        if (b.end_ms - b.start_ms > 86400000LL)
            return fail(err, "bad_request", "a weekly slot lasts at most a day");
    }
    struct club c;
    int rc = store_club_get(cl->ctl->store, club, &c);
    if (rc == STORE_NOTFOUND)
        return fail(err, "not_found", "no club '%s' (add it with: lockerctl club add)", club);
    if (rc != STORE_OK)
        return fail(err, "internal_error", "database error");
    char series[16];
    new_id("b", series, sizeof(series));
    snprintf(b.club_id, sizeof(b.club_id), "%s", club);
    snprintf(b.source, sizeof(b.source), "local");
    b.status = BOOKING_ACTIVE;

    struct store *s = cl->ctl->store;
    json_t *ids = json_array(), *skipped = json_array();
    int64_t first_start = b.start_ms, first_end = b.end_ms;
    if (store_begin(s) != STORE_OK)
        goto err_db;
    for (int week = 0; week < REPEAT_MAX; week++) {
        char date[16];
        b.start_ms = weeks_later(first_start, week);
        b.end_ms = weeks_later(first_end, week);
        local_date(b.start_ms, date, sizeof(date));
        if (repeat && strcmp(date, until) > 0)
            break;
        bool skip = false;
        size_t i;
        json_t *v;
        json_array_foreach(except, i, v) skip = skip || strcmp(json_string_value(v), date) == 0;
        if (skip) {
            json_array_append_new(skipped, json_string(date));
        } else {
            if (repeat)
                snprintf(b.id, sizeof(b.id), "%s.%d", series, week + 1);
            else
                snprintf(b.id, sizeof(b.id), "%s", series);
            struct booking other;
            rc = store_booking_conflict(s, b.compartment, b.start_ms, b.end_ms, NULL, &other);
            if (rc == STORE_OK) {
                store_rollback(s);
                json_decref(ids);
                json_decref(skipped);
                return conflict(err, &other);
            }
            struct event ev = {.compartment = b.compartment, .club_id = club, .booking_id = b.id};
            if (rc != STORE_NOTFOUND || store_booking_add(s, &b) != STORE_OK ||
                !audit(cl, "booking.created", &ev))
                goto err_rollback;
            json_array_append_new(ids, json_string(b.id));
        }
        if (!repeat)
            break;
        if (week == REPEAT_MAX - 1) {
            store_rollback(s);
            json_decref(ids);
            json_decref(skipped);
            return fail(err, "bad_request", "a series has at most %d weeks", REPEAT_MAX);
        }
    }
    if (json_array_size(ids) == 0) {
        store_rollback(s);
        json_decref(ids);
        json_decref(skipped);
        return fail(err, "bad_request", "no occurrence is left between the first date and 'until'");
    }
    if (store_commit(s) != STORE_OK)
        goto err_db;
    json_t *r = json_pack("{s:O}", "id", json_array_get(ids, 0));
    if (repeat) {
        json_object_set_new(r, "series", json_string(series));
        json_object_set_new(r, "ids", ids);
        json_object_set_new(r, "skipped", skipped);
    } else {
        json_decref(ids);
        json_decref(skipped);
    }
    return r;

err_rollback:
    store_rollback(s);
err_db:
    json_decref(ids);
    json_decref(skipped);
    return fail(err, "internal_error", "database error");
}

/* Moves a local booking that has not ended to other times (same compartment or
 * another); the city's bookings are read-only. */
static json_t *cmd_booking_move(struct client *cl, json_t *args, struct cmd_err *err)
{
    const char *id = arg_id(args, "id", err);
    int64_t from, to;
    if (!id || !arg_time(args, "from", &from, err) || !arg_time(args, "to", &to, err))
        return NULL;
    if (to <= from)
        return fail(err, "bad_request", "the booking must end after it starts");
    if (to - from > 7 * 86400000LL) /* the same limit as booking.add */
        return fail(err, "bad_request", "a booking lasts at most 7 days");
    struct store *s = cl->ctl->store;
    struct booking b, other;
    int rc = store_booking_get(s, id, &b);
    if (rc == STORE_NOTFOUND)
        return fail(err, "not_found", "no booking '%s'", id);
    if (rc != STORE_OK)
        return fail(err, "internal_error", "database error");
    if (strcmp(b.source, "local") != 0)
        return fail(err, "read_only",
                    "booking '%s' comes from the city's booking service; move it there", id);
    if (b.status == BOOKING_CANCELLED)
        return fail(err, "conflict", "booking '%s' is cancelled", id);
    if (b.end_ms <= clock_wall_ms())
        return fail(err, "conflict", "booking '%s' is over; it stays as it was", id);
    int comp = b.compartment;
    if (b.collected_ms)
        return fail(err, "conflict", "the key of booking '%s' has been taken; it cannot move", id);
    rc = store_booking_conflict(s, comp, from, to, id, &other);
    if (rc == STORE_OK)
        return conflict(err, &other);
    if (rc != STORE_NOTFOUND)
        return fail(err, "internal_error", "database error");
    char f0[40], t0[40];
    time_format_local(b.start_ms, f0, sizeof(f0));
    time_format_local(b.end_ms, t0, sizeof(t0));
    json_t *detail =
        json_pack("{s:s,s:s,s:i}", "oldFrom", f0, "oldTo", t0, "oldCompartment", b.compartment);
    struct event ev = {
        .compartment = comp, .club_id = b.club_id, .booking_id = id, .detail = detail};
    bool ok = store_begin(s) == STORE_OK;
    ok = ok && store_booking_move(s, id, from, to) == STORE_OK && audit(cl, "booking.moved", &ev) &&
         store_commit(s) == STORE_OK;
    json_decref(detail);
    if (!ok) {
        store_rollback(s);
        return fail(err, "internal_error", "database error");
    }
    return json_pack("{s:s}", "id", id);
}

static json_t *cmd_booking_list(struct client *cl, json_t *args, struct cmd_err *err)
{
    /* By default what is still to come or running; --all shows history too. */
    int64_t from = json_is_true(json_object_get(args, "all")) ? 0 : clock_wall_ms();
    json_t *list = store_bookings_json(cl->ctl->store, from);
    if (!list)
        return fail(err, "internal_error", "database error");
    return json_pack("{s:o}", "bookings", list);
}

static json_t *cmd_booking_cancel(struct client *cl, json_t *args, struct cmd_err *err)
{
    const char *id = arg_id(args, "id", err);
    if (!id)
        return NULL;
    struct store *s = cl->ctl->store;
    struct booking b;
    int rc = store_booking_get(s, id, &b);
    if (rc == STORE_NOTFOUND)
        return fail(err, "not_found", "no booking '%s'", id);
    if (rc != STORE_OK)
        return fail(err, "internal_error", "database error");
    if (b.status == BOOKING_CANCELLED)
        return fail(err, "conflict", "booking '%s' is already cancelled", id);
    if (strcmp(b.source, "local") != 0)
        return fail(err, "read_only",
                    "booking '%s' comes from the city's booking service; "
                    "cancel it there",
                    id);
    struct event ev = {.compartment = b.compartment, .club_id = b.club_id, .booking_id = id};
    if (store_begin(s) != STORE_OK || store_booking_cancel(s, id) != STORE_OK ||
        !audit(cl, "booking.cancelled", &ev) || store_commit(s) != STORE_OK) {
        store_rollback(s);
        return fail(err, "internal_error", "database error");
    }
    return json_pack("{s:s}", "id", id);
}

static json_t *cmd_club_add(struct client *cl, json_t *args, struct cmd_err *err)
{
    struct club c;
    const char *id = arg_id(args, "id", err);
    const char *name = id ? arg_str(args, "name", sizeof(c.name), err) : NULL;
    if (!name)
        return NULL;
    snprintf(c.id, sizeof(c.id), "%s", id);
    snprintf(c.name, sizeof(c.name), "%s", name);
    struct store *s = cl->ctl->store;
    struct event ev = {.club_id = id};
    if (store_begin(s) != STORE_OK)
        return fail(err, "internal_error", "database error");
    int rc = store_club_add(s, &c);
    if (rc == STORE_CONFLICT) {
        store_rollback(s);
        return fail(err, "conflict", "club '%s' exists already", id);
    }
    if (rc != STORE_OK || !audit(cl, "club.created", &ev) || store_commit(s) != STORE_OK) {
        store_rollback(s);
        return fail(err, "internal_error", "database error");
    }
    return json_pack("{s:s}", "id", id);
}

/* Adds a member to the clubs listed in args "clubs" (array) inside a transaction. */
static json_t *join_clubs(struct client *cl, const char *member, json_t *clubs, struct cmd_err *err)
{
    size_t i;
    json_t *v;
    json_array_foreach(clubs, i, v)
    {
        const char *club = json_string_value(v);
        int rc = club ? store_member_join(cl->ctl->store, member, club) : STORE_NOTFOUND;
        if (rc == STORE_NOTFOUND)
            return fail(err, "not_found", "no club '%s'", club ? club : "?");
        if (rc != STORE_OK)
            return fail(err, "internal_error", "database error");
    }
    return json_true();
}

static json_t *cmd_member_add(struct client *cl, json_t *args, struct cmd_err *err)
{
    struct member m;
    memset(&m, 0, sizeof(m));
    json_t *clubs = json_object_get(args, "clubs");
    if (!json_is_array(clubs) || json_array_size(clubs) == 0 || json_array_size(clubs) > 16)
        return fail(err, "bad_request", "give 1 to 16 clubs (--club CLUB)");
    const char *name = arg_str(args, "name", sizeof(m.name), err);
    if (!name)
        return NULL;
    m.role = ROLE_MEMBER;
    json_t *role = json_object_get(args, "role");
    if (role && !role_parse(json_string_value(role) ? json_string_value(role) : "", &m.role))
        return fail(err, "bad_request", "role must be member, manager or technician");
    if (m.role != ROLE_MEMBER && cl->role != ROLE_TECHNICIAN)
        return fail(err, "forbidden", "only a technician may create managers and technicians");
    new_id("m", m.id, sizeof(m.id));
    snprintf(m.name, sizeof(m.name), "%s", name);

    struct store *s = cl->ctl->store;
    struct event ev = {.member_id = m.id};
    if (store_begin(s) != STORE_OK)
        return fail(err, "internal_error", "database error");
    if (store_member_add(s, &m) != STORE_OK) {
        store_rollback(s);
        return fail(err, "internal_error", "database error");
    }
    json_t *ok = join_clubs(cl, m.id, clubs, err);
    if (!ok || !audit(cl, "member.created", &ev) || store_commit(s) != STORE_OK) {
        store_rollback(s);
        return ok ? fail(err, "internal_error", "database error") : NULL;
    }
    return json_pack("{s:s}", "id", m.id);
}

static json_t *cmd_member_join(struct client *cl, json_t *args, struct cmd_err *err)
{
    const char *member = arg_id(args, "member", err);
    if (!member)
        return NULL;
    json_t *clubs = json_object_get(args, "clubs");
    if (!json_is_array(clubs) || json_array_size(clubs) == 0)
        return fail(err, "bad_request", "give at least one club (--club CLUB)");
    struct member m;
    int rc = store_member_get(cl->ctl->store, member, &m);
    if (rc == STORE_NOTFOUND)
        return fail(err, "not_found", "no member '%s'", member);
    struct store *s = cl->ctl->store;
    struct event ev = {.member_id = member};
    if (rc != STORE_OK || store_begin(s) != STORE_OK)
        return fail(err, "internal_error", "database error");
    json_t *ok = join_clubs(cl, member, clubs, err);
    if (!ok || !audit(cl, "member.joined", &ev) || store_commit(s) != STORE_OK) {
        store_rollback(s);
        return ok ? fail(err, "internal_error", "database error") : NULL;
    }
    return json_pack("{s:s}", "id", member);
}

/* A member's PIN for card + PIN pickups ([policy] pin_required, [compartment.N]
 * pin). It arrives over the control socket (0660, group lockerd-admin), is checked
 * and hashed here (PBKDF2, as lockerd -P does) and never logged; "" removes it.
 * Setting a PIN ends a lockout. The change is an event (member.pinSet or
 * member.pinRemoved, with the operator), the PIN itself is in none. */
static json_t *cmd_member_pin(struct client *cl, json_t *args, struct cmd_err *err)
{
    const char *member = arg_id(args, "member", err);
    if (!member)
        return NULL;
    const char *pin = json_string_value(json_object_get(args, "pin"));
    if (pin == NULL)
        return fail(err, "bad_request", "give the PIN (\"pin\"; an empty one removes it)");
    bool set = pin[0] != '\0';
    if (set && !policy_pin_valid(pin))
        return fail(err, "bad_request", "a PIN is 4 to 8 digits");
    struct store *s = cl->ctl->store;
    struct member m;
    int rc = store_member_get(s, member, &m);
    if (rc == STORE_NOTFOUND)
        return fail(err, "not_found", "no member '%s'", member);
    if (rc != STORE_OK)
        return fail(err, "internal_error", "database error");
    char hash[POLICY_PIN_HASH_MAX] = "";
    if (set && !policy_pin_hash(pin, hash, sizeof hash))
        return fail(err, "internal_error", "cannot hash the PIN");
    struct event ev = {.member_id = member};
    bool ok = store_begin(s) == STORE_OK, had = true;
    if (ok) {
        rc = store_pin_set(s, member, set ? hash : NULL, clock_wall_ms());
        had = rc != STORE_NOTFOUND; /* removing a PIN there was not changes nothing */
        ok =
            (rc == STORE_OK || !had) &&
            (!had || (set ? audit(cl, "member.pinSet", &ev) : audit(cl, "member.pinRemoved", &ev)));
        /* A failed commit has rolled back by itself. */
        if (!ok)
            store_rollback(s);
        else
            ok = store_commit(s) == STORE_OK;
    }
    OPENSSL_cleanse(hash, sizeof hash);
    if (!ok)
        return fail(err, "internal_error", "database error");
    return json_pack("{s:s,s:s}", "id", member, "pin", set ? "set" : had ? "removed" : "none");
}

/* Right of access: everything held about a member. The export itself is recorded
 * (member.exported), so that who looked at whose data is accountable. */
static json_t *cmd_member_export(struct client *cl, json_t *args, struct cmd_err *err)
{
    const char *member = arg_id(args, "member", err);
    if (!member)
        return NULL;
    struct store *s = cl->ctl->store;
    int rc;
    json_t *out = store_member_export(s, member, &rc);
    if (rc == STORE_NOTFOUND)
        return fail(err, "not_found", "no member '%s'", member);
    struct event ev = {.member_id = member};
    if (!out || !audit(cl, "member.exported", &ev)) {
        json_decref(out);
        return fail(err, "internal_error", "database error");
    }
    return out;
}

/* Right to erasure: the member, memberships and cards go; their events stay with
 * the ids replaced (see store_member_erase()). The member.erased event names no
 * one: only the operator, the reason and the counts. */
static json_t *cmd_member_erase(struct client *cl, json_t *args, struct cmd_err *err)
{
    const char *member = arg_id(args, "member", err);
    const char *reason = member ? arg_str(args, "reason", 200, err) : NULL;
    if (!reason)
        return NULL;
    if (cl->ctl->enrol.client && strcmp(cl->ctl->enrol.member, member) == 0)
        return fail(err, "conflict",
                    "a card enrolment for member '%s' is waiting; let it end first", member);
    struct store *s = cl->ctl->store;
    struct erase_result er;
    if (store_begin(s) != STORE_OK)
        return fail(err, "internal_error", "database error");
    int rc = store_member_erase(s, member, &er);
    if (rc != STORE_OK) {
        store_rollback(s);
        if (rc == STORE_NOTFOUND)
            return fail(err, "not_found", "no member '%s'", member);
        if (rc == STORE_CONFLICT)
            return fail(err, "conflict",
                        "member '%s' holds the key of compartment %d or it is being opened for "
                        "them; erase after the key is back",
                        member, er.compartment);
        return fail(err, "internal_error", "database error");
    }
    json_t *detail = json_pack("{s:I,s:i,s:i}", "events", (json_int_t)er.events, "cards",
                               er.credentials, "clubs", er.clubs);
    struct event ev = {.reason = reason, .detail = detail};
    bool ok = detail && audit(cl, "member.erased", &ev) && store_commit(s) == STORE_OK;
    json_decref(detail);
    if (!ok) {
        store_rollback(s);
        return fail(err, "internal_error", "database error");
    }
    /* The old row versions may still be in the WAL: move them out now. */
    store_checkpoint(s);
    return json_pack("{s:s,s:I,s:i,s:i}", "id", member, "events", (json_int_t)er.events, "cards",
                     er.credentials, "clubs", er.clubs);
}

/* Registers a credential for a member from an HMAC (card add, card enroll). */
static json_t *add_credential(struct client *cl, const char *member, const uint8_t hmac[32],
                              const char *card_type, struct cmd_err *err)
{
    struct credential c;
    memset(&c, 0, sizeof(c));
    new_id("c", c.id, sizeof(c.id));
    snprintf(c.member_id, sizeof(c.member_id), "%s", member);
    memcpy(c.uid_hmac, hmac, 32);
    snprintf(c.card_type, sizeof(c.card_type), "%s", card_type);
    snprintf(c.source, sizeof(c.source), "local");
    c.status = CRED_ACTIVE;

    struct store *s = cl->ctl->store;
    struct event ev = {.member_id = member, .credential_id = c.id};
    if (store_begin(s) != STORE_OK)
        return fail(err, "internal_error", "database error");
    int rc = store_credential_add(s, &c);
    if (rc == STORE_CONFLICT) {
        store_rollback(s);
        return fail(err, "conflict", "this card is already registered");
    }
    if (rc != STORE_OK || !audit(cl, "card.added", &ev) || store_commit(s) != STORE_OK) {
        store_rollback(s);
        return fail(err, "internal_error", "database error");
    }
    if (strcmp(card_type, "uid") == 0)
        log_warnx("card %s of member %s is UID-only: it can be cloned", c.id, member);
    json_t *r = json_pack("{s:s,s:s,s:s}", "id", c.id, "member", member, "card", card_type);
    if (strcmp(card_type, "uid") == 0 && cl->ctl->cfg->auth == CARD_AUTH_DESFIRE)
        json_object_set_new(r, "warning",
                            json_string("UID-only card: refused while [reader] auth = desfire"));
    return r;
}

static bool member_exists(struct client *cl, const char *member, struct cmd_err *err)
{
    struct member m;
    int rc = store_member_get(cl->ctl->store, member, &m);
    if (rc == STORE_NOTFOUND)
        fail(err, "not_found", "no member '%s'", member);
    else if (rc != STORE_OK)
        fail(err, "internal_error", "database error");
    return rc == STORE_OK;
}

static json_t *cmd_card_add(struct client *cl, json_t *args, struct cmd_err *err)
{
    uint8_t uid[HAL_UID_MAX], hmac[32];
    size_t len;
    const char *type;
    const char *member = arg_id(args, "member", err);
    if (!member || !arg_card_type(args, &type, err) || !member_exists(cl, member, err))
        return NULL;
    if (!arg_uid(args, uid, &len, err))
        return NULL;
    station_uid_hmac(cl->ctl->st, uid, len, hmac);
    OPENSSL_cleanse(uid, sizeof(uid));
    return add_credential(cl, member, hmac, type, err);
}

static void enrol_finish(struct control *ctl)
{
    station_set_tap_hook(ctl->st, NULL, NULL);
    if (ctl->enrol.issue)
        station_issue_next(ctl->st, false);
    if (ctl->enrol.timer)
        loop_remove(ctl->loop, ctl->enrol.timer);
    memset(&ctl->enrol, 0, sizeof(ctl->enrol));
}

static void enrol_tapped(const struct decision *d, const uint8_t hmac[32],
                         const struct card_read *card, void *arg)
{
    (void)d;
    struct control *ctl = arg;
    struct client *cl = ctl->enrol.client;
    struct cmd_err err = {0};
    json_t *r = NULL;
    bool secure = card->kind == CARD_KIND_DESFIRE && card->authenticated;

    if (ctl->enrol.issue && !card->issue_attempted) {
        /* A card that was already being read when the request came: wait for the
         * next one. */
        log_info("card issue: a card was read instead of issued; tap again");
        return;
    }
    if (ctl->enrol.issue && card->issue_result != 0) {
        int res = card->issue_result;
        fail(&err, res == -EEXIST ? "conflict" : "card_error", "%s",
             res == -EEXIST    ? "this card already has the station's application; enrol it "
                                 "with: lockerctl card enroll"
             : res == -EACCES  ? "the card is not factory-fresh (its master key is not the "
                                 "default): it cannot be issued"
             : res == -ENOTSUP ? "only MIFARE DESFire EV1/EV2/EV3 cards can be issued"
                               : "the card left the field or stopped answering; try again");
    } else if (!secure && ctl->cfg->auth == CARD_AUTH_DESFIRE) {
        fail(&err, "card_error",
             card->kind == CARD_KIND_DESFIRE
                 ? "this DESFire card was not issued for this site (lockerctl card issue)"
                 : "a UID-only card cannot be used while [reader] auth = desfire");
    } else {
        /* The connection may have sent other requests since: the operator is the
         * one who asked for the enrolment. */
        snprintf(cl->op_buf, sizeof(cl->op_buf), "%s", ctl->enrol.op);
        cl->op = cl->op_buf;
        r = add_credential(cl, ctl->enrol.member, hmac, secure ? "desfire" : "uid", &err);
    }
    if (r)
        reply_ok(cl, r);
    else
        reply_err(cl, err.code, err.message);
    enrol_finish(ctl);
}

static void enrol_timeout(void *arg)
{
    struct control *ctl = arg;
    ctl->enrol.timer = 0;
    reply_err(ctl->enrol.client, "timeout", "no card was tapped in time");
    enrol_finish(ctl);
}

/* Deferred reply: the answer comes when a card is tapped or the wait ends. */
static json_t *wait_for_card(struct client *cl, json_t *args, bool issue, struct cmd_err *err)
{
    struct control *ctl = cl->ctl;
    const char *member = arg_id(args, "member", err);
    if (!member || !member_exists(cl, member, err))
        return NULL;
    if (ctl->enrol.client)
        return fail(err, "busy", "another enrolment is waiting for a card");
    int64_t wait = ENROLL_DEFAULT_MS;
    json_t *t = json_object_get(args, "timeoutMs");
    if (json_is_integer(t) && json_integer_value(t) > 0 && json_integer_value(t) <= 600000)
        wait = json_integer_value(t);
    ctl->enrol.client = cl;
    snprintf(ctl->enrol.member, sizeof(ctl->enrol.member), "%s", member);
    snprintf(ctl->enrol.op, sizeof(ctl->enrol.op), "%s", cl->op);
    int id = loop_add_timer(ctl->loop, wait, enrol_timeout, ctl);
    if (id < 0) {
        memset(&ctl->enrol, 0, sizeof(ctl->enrol));
        return fail(err, "internal_error", "cannot arm timer");
    }
    ctl->enrol.timer = id;
    if (issue && station_issue_next(ctl->st, true) != 0) {
        loop_remove(ctl->loop, id);
        memset(&ctl->enrol, 0, sizeof(ctl->enrol));
        return fail(err, "not_supported", "this reader cannot issue cards (auth = uid-insecure?)");
    }
    ctl->enrol.issue = issue;
    station_set_tap_hook(ctl->st, enrol_tapped, ctl);
    log_info("%s for member %s: waiting for a card", issue ? "card issue" : "enrolment", member);
    return json_incref(json_null()); /* marker: reply later */
}

static json_t *cmd_card_enroll(struct client *cl, json_t *args, struct cmd_err *err)
{
    return wait_for_card(cl, args, false, err);
}

static json_t *cmd_card_issue(struct client *cl, json_t *args, struct cmd_err *err)
{
    return wait_for_card(cl, args, true, err);
}

static json_t *cmd_card_revoke(struct client *cl, json_t *args, struct cmd_err *err)
{
    const char *id = arg_id(args, "id", err);
    if (!id)
        return NULL;
    struct store *s = cl->ctl->store;
    struct event ev = {.credential_id = id};
    if (store_begin(s) != STORE_OK)
        return fail(err, "internal_error", "database error");
    int rc = store_credential_revoke(s, id);
    if (rc == STORE_NOTFOUND) {
        store_rollback(s);
        return fail(err, "not_found", "no card '%s'", id);
    }
    if (rc != STORE_OK || !audit(cl, "card.revoked", &ev) || store_commit(s) != STORE_OK) {
        store_rollback(s);
        return fail(err, "internal_error", "database error");
    }
    return json_pack("{s:s}", "id", id);
}

static json_t *station_result(int rc, int n, struct cmd_err *err)
{
    if (rc == 0)
        return json_pack("{s:i}", "compartment", n);
    const char *code = rc == STATION_EBUSY     ? "busy"
                       : rc == STATION_ESTATE  ? "wrong_state"
                       : rc == STATION_EINVAL  ? "bad_request"
                       : rc == STATION_ENOTSIM ? "not_simulated"
                                               : "internal_error";
    return fail(err, code, "compartment %d: %s", n, station_strerror(rc));
}

static json_t *cmd_open(struct client *cl, json_t *args, struct cmd_err *err)
{
    int n;
    if (!arg_compartment(cl, args, &n, err))
        return NULL;
    const char *reason = arg_str(args, "reason", 200, err);
    if (!reason)
        return NULL;
    if (!policy_may_service_open(cl->role))
        return fail(err, "forbidden", "only managers and technicians may open compartments");
    return station_result(station_service_open(cl->ctl->st, n, cl->op, reason), n, err);
}

static json_t *cmd_clear(struct client *cl, json_t *args, struct cmd_err *err)
{
    int n;
    const char *reason;
    if (!arg_compartment(cl, args, &n, err) || !(reason = arg_str(args, "reason", 200, err)))
        return NULL;
    return station_result(station_clear(cl->ctl->st, n, cl->op, reason), n, err);
}

static json_t *cmd_disable(struct client *cl, json_t *args, struct cmd_err *err)
{
    int n;
    const char *reason;
    if (!arg_compartment(cl, args, &n, err) || !(reason = arg_str(args, "reason", 200, err)))
        return NULL;
    return station_result(station_disable(cl->ctl->st, n, cl->op, reason), n, err);
}

static json_t *cmd_prune(struct client *cl, json_t *args, struct cmd_err *err)
{
    (void)args;
    int64_t n = station_housekeeping(cl->ctl->st);
    if (n < 0)
        return fail(err, "internal_error", "pruning failed");
    return json_pack("{s:I}", "pruned", (json_int_t)n);
}

/* An optional period bound; *given tells whether it was there. */
static bool arg_bound(json_t *args, const char *name, bool end, int64_t *out, bool *given,
                      struct cmd_err *err)
{
    *given = json_object_get(args, name) != NULL;
    if (!*given)
        return true;
    const char *s = arg_str(args, name, 64, err);
    if (!s)
        return false;
    if (!report_parse_bound(s, end, out)) {
        fail(err, "bad_request",
             "--%s '%s' is not a date like 2026-03-01 or a time like 2026-03-01T18:00+01:00 (in "
             "the station's time zone it may not exist)",
             name, s);
        return false;
    }
    return true;
}

/* The period of report and opendata: --from/--to, by default the last four weeks;
 * --to alone: the four weeks before it. False with err filled in. */
static bool report_period(json_t *args, int64_t now, int64_t *from, int64_t *to,
                          struct cmd_err *err)
{
    int64_t dummy;
    bool have_from, have_to;
    report_default_period(now, from, to);
    if (!arg_bound(args, "from", false, from, &have_from, err) ||
        !arg_bound(args, "to", true, to, &have_to, err))
        return false;
    if (have_to && !have_from)
        report_default_period(*to, from, &dummy);
    if (*from >= *to) {
        fail(err, "bad_request", "the period is empty: --from must be before --to");
        return false;
    }
    if (*to - *from > (int64_t)REPORT_MAX_DAYS * 86400000) {
        fail(err, "bad_request", "a report covers at most %d days", REPORT_MAX_DAYS);
        return false;
    }
    return true;
}

static json_t *cmd_report(struct client *cl, json_t *args, struct cmd_err *err)
{
    int64_t now = clock_wall_ms(), from, to;
    if (!report_period(args, now, &from, &to, err))
        return NULL;
    char why[128] = "";
    json_t *r = report_build(cl->ctl->store, cl->ctl->cfg, from, to, now, why, sizeof(why));
    return r ? r : fail(err, "internal_error", "report: %s", why);
}

/* The report's facts as open data (opendata.h), for the same period arguments. */
static json_t *cmd_opendata(struct client *cl, json_t *args, struct cmd_err *err)
{
    int64_t now = clock_wall_ms(), from, to;
    if (!report_period(args, now, &from, &to, err))
        return NULL;
    char why[128] = "";
    json_t *r = opendata_build(cl->ctl->store, cl->ctl->cfg, from, to, now,
                               cl->ctl->cfg->opendata_publish_club, why, sizeof(why));
    return r ? r : fail(err, "internal_error", "open data: %s", why);
}

static json_t *cmd_sync_status(struct client *cl, json_t *args, struct cmd_err *err)
{
    (void)args;
    json_t *r = cl->ctl->sync != NULL ? sync_status_json(cl->ctl->sync, false) : NULL;
    return r ? r : fail(err, "internal_error", "sync status unavailable");
}

/* Starts a cycle and answers at once with its number: lockerctl waits for it in
 * sync.status (the control socket never blocks on the network). */
static json_t *cmd_sync_now(struct client *cl, json_t *args, struct cmd_err *err)
{
    (void)args;
    int64_t cycle = cl->ctl->sync != NULL ? sync_poll_now(cl->ctl->sync) : -1;
    if (cycle < 0)
        return fail(err, "not_configured",
                    "this station has no city API configured ([sync] url); it runs on local "
                    "bookings");
    return json_pack("{s:I}", "cycle", (json_int_t)cycle);
}

/* Deferred reply: the result comes when the run ends (lock pulses and the city
 * API's sync cycle take seconds; the loop keeps serving meanwhile). */
static void selftest_done(json_t *result, void *arg)
{
    struct control *ctl = arg;
    struct client *cl = ctl->selftest_client;
    ctl->selftest = NULL;
    ctl->selftest_client = NULL;
    reply_ok(cl, result);
}

static json_t *cmd_selftest(struct client *cl, json_t *args, struct cmd_err *err)
{
    struct control *ctl = cl->ctl;
    json_t *locks = json_object_get(args, "locks");
    if (locks && !json_is_boolean(locks))
        return fail(err, "bad_request", "'locks' must be true or false");
    if (ctl->selftest)
        return fail(err, "busy", "a self-test is running already");
    struct selftest_opts opts = {
        .locks = locks == NULL || json_is_true(locks),
        .operator_name = cl->op,
    };
    ctl->selftest_client = cl;
    ctl->selftest = selftest_start(ctl->cfg, ctl->loop, ctl->store, ctl->st, ctl->sync, &opts,
                                   selftest_done, ctl);
    if (!ctl->selftest) {
        ctl->selftest_client = NULL;
        return fail(err, "internal_error", "cannot arm timer");
    }
    return json_incref(json_null()); /* marker: reply later */
}

/* ---- simulation ---- */

static json_t *tap_result(struct client *cl)
{
    int rc;
    const struct decision *d = station_last_tap(cl->ctl->st, &rc);
    const char *outcome = d->action == POLICY_PICKUP   ? "pickup"
                          : d->action == POLICY_RETURN ? "return"
                                                       : "refused";
    json_t *r = json_pack("{s:s}", "outcome", outcome);
    if (d->compartment)
        json_object_set_new(r, "compartment", json_integer(d->compartment));
    if (d->action == POLICY_REFUSE)
        json_object_set_new(r, "reason", json_string(refusal_code(d->reason)));
    else if (rc != 0)
        json_object_set_new(r, "unlockError", json_string(station_strerror(rc)));
    if (d->have_credential)
        json_object_set_new(r, "member", json_string(d->member.id));
    if (d->next_start_ms) {
        char when[40];
        time_format_local(d->next_start_ms, when, sizeof(when));
        json_object_set_new(r, "nextBooking", json_string(when));
    }
    return r;
}

static json_t *cmd_sim_tap(struct client *cl, json_t *args, struct cmd_err *err)
{
    uint8_t uid[HAL_UID_MAX];
    size_t len;
    const char *type;
    /* "clone": a DESFire card without the site's key, as a copied UID looks. */
    json_t *card = json_object_get(args, "card");
    bool clone = json_is_string(card) && strcmp(json_string_value(card), "clone") == 0;
    if (clone)
        type = "desfire";
    else if (!arg_card_type(args, &type, err))
        return NULL;
    if (!arg_uid(args, uid, &len, err))
        return NULL;
    bool enrolling = cl->ctl->enrol.client != NULL;
    int rc = station_sim_tap(cl->ctl->st, uid, len,
                             strcmp(type, "uid") == 0 ? CARD_KIND_UID : CARD_KIND_DESFIRE, !clone);
    OPENSSL_cleanse(uid, sizeof(uid));
    if (rc != 0)
        return fail(err, rc == STATION_ENOTSIM ? "not_simulated" : "bad_request", "%s",
                    station_strerror(rc));
    if (enrolling)
        return json_pack("{s:s}", "outcome", "enrolment");
    return tap_result(cl);
}

static json_t *cmd_sim_remove(struct client *cl, json_t *args, struct cmd_err *err)
{
    (void)args;
    int rc = station_sim_remove(cl->ctl->st);
    return rc ? fail(err, "not_simulated", "%s", station_strerror(rc)) : json_object();
}

static json_t *cmd_sim_door(struct client *cl, json_t *args, struct cmd_err *err)
{
    int n;
    if (!arg_compartment(cl, args, &n, err))
        return NULL;
    const char *state = json_string_value(json_object_get(args, "state"));
    if (!state || (strcmp(state, "open") != 0 && strcmp(state, "close") != 0))
        return fail(err, "bad_request", "door state must be 'open' or 'close'");
    int rc = station_sim_door(cl->ctl->st, n, strcmp(state, "open") == 0);
    if (rc)
        return station_result(rc, n, err);
    return json_pack("{s:i,s:s}", "compartment", n, "state",
                     comp_state_name(station_comp_state(cl->ctl->st, n)));
}

static json_t *cmd_sim_key(struct client *cl, json_t *args, struct cmd_err *err)
{
    int n;
    if (!arg_compartment(cl, args, &n, err))
        return NULL;
    const char *action = json_string_value(json_object_get(args, "action"));
    if (!action || (strcmp(action, "take") != 0 && strcmp(action, "put") != 0))
        return fail(err, "bad_request", "key action must be 'take' or 'put'");
    int rc = station_sim_key(cl->ctl->st, n, strcmp(action, "put") == 0);
    if (rc)
        return station_result(rc, n, err);
    return json_pack("{s:i,s:s}", "compartment", n, "state",
                     comp_state_name(station_comp_state(cl->ctl->st, n)));
}

static json_t *cmd_sim_tamper(struct client *cl, json_t *args, struct cmd_err *err)
{
    const char *state = json_string_value(json_object_get(args, "state"));
    if (!state || (strcmp(state, "open") != 0 && strcmp(state, "close") != 0))
        return fail(err, "bad_request", "tamper state must be 'open' or 'close'");
    int rc = station_sim_tamper(cl->ctl->st, strcmp(state, "open") == 0);
    if (rc == STATION_EINVAL)
        return fail(err, "bad_request", "no tamper line configured ([gpio] tamper)");
    return rc ? fail(err, "not_simulated", "%s", station_strerror(rc)) : json_object();
}

static json_t *cmd_sim_outputs(struct client *cl, json_t *args, struct cmd_err *err)
{
    (void)args;
    char *text = station_sim_outputs(cl->ctl->st);
    if (!text)
        return fail(err, "not_simulated", "only possible with simulated hardware");
    json_t *lines = json_loads(text, 0, NULL);
    free(text);
    return lines ? json_pack("{s:o}", "lines", lines)
                 : fail(err, "internal_error", "bad output description");
}

static json_t *cmd_sim_clock(struct client *cl, json_t *args, struct cmd_err *err)
{
    int64_t ms;
    const char *by = arg_str(args, "advance", 32, err);
    if (!by)
        return NULL;
    if (!duration_parse(by, &ms) || ms <= 0)
        return fail(err, "bad_request", "'%s' is not a duration like 90s, 15m or 2h", by);
    if (station_sim_clock_advance(cl->ctl->st, ms) != 0)
        return fail(err, "not_simulated", "the simulated clock is off ([station] sim_clock)");
    char now[40];
    time_format_local(clock_wall_ms(), now, sizeof(now));
    return json_pack("{s:s}", "now", now);
}

/* ---- the manager console ---- */

/* Acknowledges an open alarm: the alarm stays until its cause is gone (the door
 * closed, the key back, a technician's clear); the acknowledgement records who saw
 * it and when (alarm.acknowledged, reason: the alarm's type). */
static json_t *cmd_alarm_ack(struct client *cl, json_t *args, struct cmd_err *err)
{
    const char *type = arg_str(args, "type", 32, err);
    if (!type)
        return NULL;
    int n = 0;
    if (json_object_get(args, "compartment") && !arg_compartment(cl, args, &n, err))
        return NULL;
    const char *note = NULL;
    if (json_object_get(args, "note") && !(note = arg_str(args, "note", 200, err)))
        return NULL;
    json_t *status = station_status_json(cl->ctl->st);
    bool open = false;
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(status, "alarms"), i, a)
    {
        json_int_t c = json_integer_value(json_object_get(a, "compartment"));
        if (strcmp(json_string_value(json_object_get(a, "type")), type) == 0 && c == n)
            open = true;
    }
    json_decref(status);
    if (!open)
        return fail(err, "not_found", "no open alarm %s%s%.0d", type, n ? " of compartment " : "",
                    n);
    json_t *detail = note ? json_pack("{s:s}", "note", note) : NULL;
    struct event ev = {.compartment = n, .reason = type, .detail = detail};
    bool ok = audit(cl, "alarm.acknowledged", &ev);
    json_decref(detail);
    if (!ok)
        return fail(err, "internal_error", "database error");
    return json_pack("{s:s,s:i,s:s}", "type", type, "compartment", n, "by", cl->op);
}

static json_t *cmd_directory(struct client *cl, json_t *args, struct cmd_err *err)
{
    (void)args;
    json_t *r = store_directory_json(cl->ctl->store);
    return r ? r : fail(err, "internal_error", "database error");
}

/* club.rename and member.rename: {id, name}. */
static json_t *rename_record(struct client *cl, json_t *args, struct cmd_err *err, bool club)
{
    const char *id = arg_id(args, "id", err);
    const char *name = id ? arg_str(args, "name", 128, err) : NULL;
    if (!name)
        return NULL;
    struct store *s = cl->ctl->store;
    struct event ev = {.club_id = club ? id : NULL, .member_id = club ? NULL : id};
    if (store_begin(s) != STORE_OK)
        return fail(err, "internal_error", "database error");
    int rc = club ? store_club_rename(s, id, name) : store_member_rename(s, id, name);
    if (rc == STORE_NOTFOUND) {
        store_rollback(s);
        return fail(err, "not_found", "no %s '%s'", club ? "club" : "member", id);
    }
    bool logged = club ? audit(cl, "club.updated", &ev) : audit(cl, "member.updated", &ev);
    if (rc != STORE_OK || !logged || store_commit(s) != STORE_OK) {
        store_rollback(s);
        return fail(err, "internal_error", "database error");
    }
    return json_pack("{s:s}", "id", id);
}

static json_t *cmd_club_rename(struct client *cl, json_t *args, struct cmd_err *err)
{
    return rename_record(cl, args, err, true);
}

static json_t *cmd_member_rename(struct client *cl, json_t *args, struct cmd_err *err)
{
    return rename_record(cl, args, err, false);
}

struct command {
    const char *name;
    enum member_role min_role;
    cmd_fn fn;
};

static const struct command commands[] = {
    {"status", ROLE_MEMBER, cmd_status},
    {"events", ROLE_MEMBER, cmd_events},
    {"booking.add", ROLE_MANAGER, cmd_booking_add},
    {"booking.list", ROLE_MEMBER, cmd_booking_list},
    {"booking.cancel", ROLE_MANAGER, cmd_booking_cancel},
    {"booking.move", ROLE_MANAGER, cmd_booking_move},
    {"alarm.ack", ROLE_MANAGER, cmd_alarm_ack},
    {"directory", ROLE_MANAGER, cmd_directory},
    {"club.rename", ROLE_MANAGER, cmd_club_rename},
    {"member.rename", ROLE_MANAGER, cmd_member_rename},
    {"club.add", ROLE_MANAGER, cmd_club_add},
    {"member.add", ROLE_MANAGER, cmd_member_add},
    {"member.join", ROLE_MANAGER, cmd_member_join},
    {"member.pin", ROLE_MANAGER, cmd_member_pin},
    {"member.export", ROLE_MANAGER, cmd_member_export},
    {"member.erase", ROLE_TECHNICIAN, cmd_member_erase},
    {"report", ROLE_MANAGER, cmd_report},
    {"opendata", ROLE_MANAGER, cmd_opendata},
    {"card.add", ROLE_MANAGER, cmd_card_add},
    {"card.enroll", ROLE_MANAGER, cmd_card_enroll},
    {"card.issue", ROLE_TECHNICIAN, cmd_card_issue},
    {"card.revoke", ROLE_MANAGER, cmd_card_revoke},
    {"open", ROLE_MANAGER, cmd_open},
    {"clear", ROLE_TECHNICIAN, cmd_clear},
    {"disable", ROLE_TECHNICIAN, cmd_disable},
    {"prune", ROLE_TECHNICIAN, cmd_prune},
    {"sync.status", ROLE_MEMBER, cmd_sync_status},
    {"sync.now", ROLE_MANAGER, cmd_sync_now},
    {"selftest", ROLE_TECHNICIAN, cmd_selftest},
    {"sim.tap", ROLE_MEMBER, cmd_sim_tap},
    {"sim.remove", ROLE_MEMBER, cmd_sim_remove},
    {"sim.door", ROLE_MEMBER, cmd_sim_door},
    {"sim.key", ROLE_MEMBER, cmd_sim_key},
    {"sim.tamper", ROLE_MEMBER, cmd_sim_tamper},
    {"sim.outputs", ROLE_MEMBER, cmd_sim_outputs},
    {"sim.clock", ROLE_MEMBER, cmd_sim_clock},
};

static int role_rank(enum member_role r)
{
    switch (r) {
    case ROLE_MEMBER:
        return 0;
    case ROLE_MANAGER:
        return 1;
    case ROLE_TECHNICIAN:
        return 2;
    }
    return 0;
}

/* {"as": {"account": NAME, "role": ROLE}}: a console acts for one of its accounts.
 * Every request starts from the connection's own user and role; with "as" the role
 * is the account's, capped at the console user's own, and the operator recorded in
 * the log is "console:NAME". Only users in [control] consoles may do this. */
static bool apply_as(struct client *cl, json_t *as, char *why, size_t whylen)
{
    cl->role = cl->conn_role;
    cl->op = cl->user;
    if (as == NULL)
        return true;
    if (!cl->console) {
        snprintf(why, whylen, "user %s may not act on behalf of others ([control] consoles)",
                 cl->user);
        return false;
    }
    const char *account = json_string_value(json_object_get(as, "account"));
    const char *role = json_string_value(json_object_get(as, "role"));
    enum member_role r;
    size_t len = account ? strlen(account) : 0;
    bool name_ok = len > 0 && len <= 48;
    for (size_t i = 0; name_ok && i < len; i++) {
        char c = account[i];
        name_ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_' || c == '.';
    }
    if (!json_is_object(as) || !name_ok || !role || !role_parse(role, &r)) {
        snprintf(why, whylen,
                 "'as' must be {\"account\": NAME (letters, digits, '-', '_', '.'), \"role\": "
                 "member|manager|technician}");
        return false;
    }
    if (role_rank(r) < role_rank(cl->conn_role))
        cl->role = r;
    snprintf(cl->op_buf, sizeof(cl->op_buf), "console:%s", account);
    cl->op = cl->op_buf;
    return true;
}

static void handle_line(struct client *cl, const char *line)
{
    json_error_t jerr;
    json_t *req = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(req)) {
        reply_err(cl, "bad_request", "each request is one JSON object on one line");
        json_decref(req);
        return;
    }
    const char *name = json_string_value(json_object_get(req, "cmd"));
    json_t *args = json_object_get(req, "args");
    if (!args)
        args = json_object();
    else
        json_incref(args);
    char why[160];
    if (!apply_as(cl, json_object_get(req, "as"), why, sizeof(why))) {
        reply_err(cl, "forbidden", why);
        json_decref(args);
        json_decref(req);
        return;
    }
    const struct command *cmd = NULL;
    for (size_t i = 0; name && i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(commands[i].name, name) == 0)
            cmd = &commands[i];
    }
    if (!cmd) {
        reply_err(cl, "unknown_command", "unknown command");
    } else if (!json_is_object(args)) {
        reply_err(cl, "bad_request", "'args' must be an object");
    } else if (role_rank(cl->role) < role_rank(cmd->min_role)) {
        char msg[160];
        snprintf(msg, sizeof(msg), "'%s' needs the role %s; %s is a %s", cmd->name,
                 role_name(cmd->min_role), cl->op, role_name(cl->role));
        reply_err(cl, "forbidden", msg);
    } else {
        struct cmd_err err = {.code = "internal_error", .message = "failed"};
        json_t *result = cmd->fn(cl, args, &err);
        if (!result)
            reply_err(cl, err.code, err.message);
        else if (json_is_null(result)) /* deferred */
            json_decref(result);
        else
            reply_ok(cl, result);
    }
    json_decref(args);
    json_decref(req);
}

/* ------------------------------------------------------------ connections */

static void client_readable(int fd, uint32_t events, void *arg)
{
    struct client *cl = arg;
    (void)fd;
    if (events & EPOLLOUT)
        client_flush(cl);
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        ssize_t n = recv(cl->fd, cl->in + cl->inlen, sizeof(cl->in) - cl->inlen, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            cl->dead = true;
        } else if (n > 0) {
            cl->inlen += (size_t)n;
            char *nl;
            while (!cl->dead && (nl = memchr(cl->in, '\n', cl->inlen))) {
                *nl = '\0';
                handle_line(cl, cl->in);
                size_t used = (size_t)(nl - cl->in) + 1;
                memmove(cl->in, cl->in + used, cl->inlen - used);
                cl->inlen -= used;
            }
            if (cl->inlen == sizeof(cl->in)) {
                reply_err(cl, "bad_request", "request line too long");
                cl->dead = true;
            }
        }
    }
    if (cl->dead)
        client_close(cl);
}

static enum member_role role_of(const struct config *cfg, uid_t uid, const char *user)
{
    if (uid == 0 || uid == geteuid())
        return ROLE_TECHNICIAN;
    for (int i = 0; i < cfg->n_technicians; i++) {
        if (strcmp(cfg->technicians[i], user) == 0)
            return ROLE_TECHNICIAN;
    }
    for (int i = 0; i < cfg->n_managers; i++) {
        if (strcmp(cfg->managers[i], user) == 0)
            return ROLE_MANAGER;
    }
    return ROLE_MEMBER;
}

static void on_accept(int fd, uint32_t events, void *arg)
{
    struct control *ctl = arg;
    (void)events;
    int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) {
        if (errno != EAGAIN)
            log_warn("control: accept");
        return;
    }
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        log_warn("control: SO_PEERCRED");
        close(cfd);
        return;
    }
    struct client *cl = xcalloc(1, sizeof(*cl));
    cl->ctl = ctl;
    cl->fd = cfd;
    cl->uid = cred.uid;
    struct passwd pw, *res = NULL;
    char buf[1024];
    if (getpwuid_r(cred.uid, &pw, buf, sizeof(buf), &res) == 0 && res)
        snprintf(cl->user, sizeof(cl->user), "%s", pw.pw_name);
    else
        snprintf(cl->user, sizeof(cl->user), "uid%u", (unsigned)cred.uid);
    cl->conn_role = role_of(ctl->cfg, cred.uid, cl->user);
    cl->role = cl->conn_role;
    cl->op = cl->user;
    for (int i = 0; i < ctl->cfg->n_consoles; i++) {
        if (strcmp(ctl->cfg->consoles[i], cl->user) == 0)
            cl->console = true;
    }
    cl->watch = loop_add_fd(ctl->loop, cfd, EPOLLIN, client_readable, cl);
    if (cl->watch < 0) {
        close(cfd);
        free(cl);
        return;
    }
    cl->next = ctl->clients;
    ctl->clients = cl;
}

static void client_close(struct client *cl)
{
    struct control *ctl = cl->ctl;
    if (ctl->enrol.client == cl)
        enrol_finish(ctl);
    if (ctl->selftest_client == cl) {
        selftest_cancel(ctl->selftest);
        ctl->selftest = NULL;
        ctl->selftest_client = NULL;
    }
    for (struct client **p = &ctl->clients; *p; p = &(*p)->next) {
        if (*p == cl) {
            *p = cl->next;
            break;
        }
    }
    loop_remove(ctl->loop, cl->watch);
    close(cl->fd);
    free(cl->out);
    free(cl);
}

/* New events go to every `events --follow` client. */
static void on_event(int64_t seq, void *arg)
{
    struct control *ctl = arg;
    (void)seq;
    for (struct client *cl = ctl->clients; cl; cl = cl->next) {
        if (!cl->follow || cl->dead)
            continue;
        json_t *events = store_events_json(ctl->store, cl->follow_seq, EVENTS_PAGE);
        size_t i;
        json_t *ev;
        json_array_foreach(events, i, ev)
        {
            json_t *line = json_pack("{s:O}", "event", ev);
            client_send_line(cl, line);
            json_decref(line);
            cl->follow_seq = json_integer_value(json_object_get(ev, "seq"));
        }
        json_decref(events);
    }
    /* Clients that died while being written to are closed outside the loop above. */
    struct client *cl = ctl->clients;
    while (cl) {
        struct client *next = cl->next;
        if (cl->dead)
            client_close(cl);
        cl = next;
    }
}

struct control *control_new(const struct config *cfg, struct loop *loop, struct station *st,
                            struct store *store, char *err, size_t errlen)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(cfg->socket_path) >= sizeof(addr.sun_path)) {
        snprintf(err, errlen, "socket path too long: %s", cfg->socket_path);
        return NULL;
    }
    memcpy(addr.sun_path, cfg->socket_path, strlen(cfg->socket_path) + 1);

    struct control *ctl = xcalloc(1, sizeof(*ctl));
    ctl->cfg = cfg;
    ctl->loop = loop;
    ctl->st = st;
    ctl->store = store;
    ctl->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ctl->fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        goto err_free;
    }
    /* A socket file that nobody answers on is left over from a crash. */
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0 && connect(probe, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
        close(probe);
        snprintf(err, errlen, "another lockerd is running on %s", cfg->socket_path);
        goto err_close;
    }
    if (probe >= 0)
        close(probe);
    unlink(cfg->socket_path);

    mode_t old = umask(0117);
    int rc = bind(ctl->fd, (struct sockaddr *)&addr, sizeof(addr));
    umask(old);
    if (rc < 0) {
        snprintf(err, errlen, "bind %s: %s", cfg->socket_path, strerror(errno));
        goto err_close;
    }
    ctl->unlink_on_free = true;
    if (chmod(cfg->socket_path, 0660) < 0)
        log_warn("chmod %s", cfg->socket_path);
    struct group *gr = getgrnam(cfg->socket_group);
    if (gr && chown(cfg->socket_path, (uid_t)-1, gr->gr_gid) < 0)
        log_warn("chown %s to group %s", cfg->socket_path, cfg->socket_group);
    if (!gr)
        log_debug("group %s does not exist; control socket keeps the daemon's group",
                  cfg->socket_group);
    if (listen(ctl->fd, 16) < 0) {
        snprintf(err, errlen, "listen: %s", strerror(errno));
        goto err_unlink;
    }
    ctl->watch = loop_add_fd(loop, ctl->fd, EPOLLIN, on_accept, ctl);
    if (ctl->watch < 0) {
        snprintf(err, errlen, "cannot watch control socket: %s", strerror(-ctl->watch));
        goto err_unlink;
    }
    station_set_event_listener(st, on_event, ctl);
    return ctl;

err_unlink:
    unlink(cfg->socket_path);
err_close:
    close(ctl->fd);
err_free:
    free(ctl);
    return NULL;
}

void control_free(struct control *ctl)
{
    if (!ctl)
        return;
    station_set_event_listener(ctl->st, NULL, NULL);
    struct client *cl = ctl->clients;
    while (cl) {
        struct client *next = cl->next;
        client_close(cl);
        cl = next;
    }
    loop_remove(ctl->loop, ctl->watch);
    close(ctl->fd);
    if (ctl->unlink_on_free)
        unlink(ctl->cfg->socket_path);
    free(ctl);
}

void control_reconfigure(struct control *ctl, const struct config *cfg)
{
    ctl->cfg = cfg;
}

void control_set_sync(struct control *ctl, struct sync *sy)
{
    ctl->sync = sy;
}
