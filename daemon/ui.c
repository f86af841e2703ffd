/*
 * ui.c - the kiosk screen's server (see ui.h and docs/kiosk.md).
 *
 * libmicrohttpd runs without threads of its own (MHD_USE_EPOLL, external polling):
 * its epoll fd sits in lockerd's loop, MHD_run() is called when that fd is ready or
 * MHD's timeout (a loop timer) passes. Server-Sent Events connections are suspended
 * while there is nothing to send and resumed when there is: a resume wakes MHD's
 * epoll fd through its inter-thread channel, so the loop calls MHD_run() again.
 *
 * What reaches the screen: after a commit that made events durable, the store's
 * append hook arms a 0 ms timer (the hook may not touch the store, and the station
 * only enters the new state after the commit); the timer reads the new events,
 * keeps the public fields of those a screen shows and sends them with a fresh
 * status. Opening a door records no event, so while a compartment is unlocking or
 * open the status is looked at every POLL_MS and sent when it changed.
 *
 * A kiosk stands in a public place: nothing sent here names a member, club,
 * booking, credential or operator, and the hash chain stays with lockerctl.
 *
 * Server-side failures are logged and never stop the station: the screen is
 * feedback, not part of the safety path.
 */
#include "daemon/ui.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <microhttpd.h>
#include <openssl/crypto.h>

#include "daemon/clock.h"
#include "daemon/log.h"

#define UI_MAX_CLIENTS  4                    /* SSE streams: one screen, plus room for a reload */
#define UI_MAX_CONNS    16                   /* all HTTP connections */
#define UI_CONN_TIMEOUT 30                   /* seconds without traffic before MHD closes */
#define UI_HEARTBEAT_MS 15000                /* SSE comment; also finds clients that went away */
#define UI_POLL_MS      250                  /* status look while a door is unlocking or open */
#define UI_CLIENT_BUF   ((size_t)256 * 1024) /* a client further behind than this is dropped */
#define UI_EVENT_BATCH  64
#define UI_SPEAK_MAX    600  /* bytes of text per spoken prompt */
#define UI_RETRY_MS     2000 /* EventSource reconnect delay */
#define UI_BODY_MAX     2048 /* bytes of a PIN or note request (JSON) */

struct sse_client {
    struct ui *ui;
    struct MHD_Connection *conn;
    char *buf;
    size_t len, cap;
    bool suspended;
    bool closing;
    struct sse_client *next;
};

/* When the current state of a compartment was first seen, for the countdowns. */
struct comp_track {
    char state[24];
    int64_t since_ms;
};

struct ui {
    const struct config *cfg;
    struct loop *loop;
    struct store *store;
    struct station *st;

    /* The settings the running server was started with (cfg may be replaced). */
    bool enabled;
    char listen[sizeof(((struct config *)0)->ui_listen)];
    char dir[PATH_MAX];

    struct MHD_Daemon *mhd;
    int dirfd;
    int mhd_watch, mhd_timer;
    bool hooked;
    bool stopping;

    struct sse_client *clients;
    int nclients;
    int flush_timer, heartbeat_timer, poll_timer;
    int64_t last_seq;
    char *last_sig; /* compartments and alarms of the last status sent */
    struct comp_track track[CONFIG_MAX_COMPARTMENTS];

    /* espeak-ng: one prompt at a time; a newer one replaces a queued one. */
    pid_t speech_pid;
    int speech_pidfd, speech_watch;
    char *speech_next;
    char speech_next_lang[4];
    bool speech_missing_logged;
};

/* A POST body being received. */
struct upload {
    char buf[UI_BODY_MAX + 1];
    size_t len;
    bool too_big;
};

static void server_stop(struct ui *ui);
static void sse_broadcast(struct ui *ui, const char *event, int64_t id, const char *data);

/* ------------------------------------------------------------ public views */

/* Fields of an event a screen may show, and only for the types it shows. */
static const char *const shown_events[] = {
    "access.granted",      "access.denied",       "key.checkedOut",   "key.returned",
    "pickup.aborted",      "return.incomplete",   "door.forced",      "door.closed",
    "door.heldOpen",       "key.overdue",         "sensor.fault",     "station.tamper",
    "service.open",        "service.cleared",     "service.disabled", "station.started",
    "access.pinRequested", "access.pinCancelled",
};

json_t *ui_public_event(const json_t *ev)
{
    const char *type = json_string_value(json_object_get(ev, "type"));
    bool shown = false;

    if (type == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof(shown_events) / sizeof(shown_events[0]); i++)
        shown = shown || strcmp(type, shown_events[i]) == 0;
    if (!shown)
        return NULL;
    json_t *out = json_pack("{s:O,s:s}", "seq", json_object_get(ev, "seq"), "type", type);
    if (out == NULL)
        return NULL;
    static const char *const copy[] = {"occurredAt", "compartment", "reason"};
    for (size_t i = 0; i < sizeof(copy) / sizeof(copy[0]); i++) {
        json_t *v = json_object_get(ev, copy[i]);
        if (v != NULL)
            json_object_set(out, copy[i], v);
    }
    /* The purpose of a grant and a refused club's next booking; never the card type
     * or an operator's free text. */
    json_t *detail = json_object_get(ev, "detail"), *pub = json_object();
    static const char *const detail_copy[] = {"purpose",     "nextBookingStart", "attemptsLeft",
                                              "lockedUntil", "lockoutMs",        "timeoutMs"};
    for (size_t i = 0; i < sizeof(detail_copy) / sizeof(detail_copy[0]); i++) {
        json_t *v = json_object_get(detail, detail_copy[i]);
        if (json_is_string(v) || json_is_integer(v))
            json_object_set(pub, detail_copy[i], v);
    }
    json_object_set_new(out, "detail", pub);
    return out;
}

static bool timed_state(const char *state, int64_t *limit_ms, const struct config *cfg)
{
    if (strcmp(state, "unlocking") == 0) {
        *limit_ms = cfg->max_energize_ms;
        return true;
    }
    if (strcmp(state, "open_pickup") == 0 || strcmp(state, "open_return") == 0 ||
        strcmp(state, "open_service") == 0) {
        *limit_ms = cfg->door_open_alarm_ms;
        return true;
    }
    return false;
}

/* Builds the public status and returns whether a compartment is in a timed state
 * (unlocking or open), which is when the poll timer runs. */
static json_t *public_status(struct ui *ui, bool *active, char **sig)
{
    json_t *full = station_status_json(ui->st);
    json_t *station = json_object_get(full, "station");
    json_t *comps = json_array(), *alarms = json_array();
    int64_t now = clock_mono_ms();
    size_t i;
    json_t *c, *a;

    *active = false;
    json_array_foreach(json_object_get(full, "compartments"), i, c)
    {
        static const char *const copy[] = {"number", "state", "door", "key", "keyLabel", "hall"};
        const char *state = json_string_value(json_object_get(c, "state"));
        json_t *o = json_object();
        for (size_t k = 0; k < sizeof(copy) / sizeof(copy[0]); k++) {
            json_t *v = json_object_get(c, copy[k]);
            if (v != NULL)
                json_object_set(o, copy[k], v);
        }
        if (state != NULL && i < CONFIG_MAX_COMPARTMENTS) {
            struct comp_track *t = &ui->track[i];
            int64_t limit;
            if (strcmp(t->state, state) != 0) {
                snprintf(t->state, sizeof(t->state), "%s", state);
                t->since_ms = now;
            }
            if (timed_state(state, &limit, ui->cfg)) {
                int64_t left = t->since_ms + limit - now;
                json_object_set_new(o, "remainingMs", json_integer(left > 0 ? left : 0));
                json_object_set_new(o, "limitMs", json_integer(limit));
                *active = true;
            }
        }
        json_array_append_new(comps, o);
    }
    json_array_foreach(json_object_get(full, "alarms"), i, a)
    {
        json_t *o = json_pack("{s:O}", "type", json_object_get(a, "type"));
        json_t *n = json_object_get(a, "compartment");
        if (o == NULL)
            continue;
        if (n != NULL)
            json_object_set(o, "compartment", n);
        json_array_append_new(alarms, o);
    }
    /* An awaited PIN and an open note window, each with the nonce the page must
     * send back (see serve_pin()). */
    struct station_pin_info pin;
    struct station_note_info note;
    json_t *jpin = json_null(), *jnote = json_null();
    if (station_pin_pending(ui->st, &pin))
        jpin = json_pack("{s:i,s:s,s:I,s:I,s:i}", "compartment", pin.compartment, "nonce",
                         pin.nonce, "remainingMs", (json_int_t)pin.remaining_ms, "limitMs",
                         (json_int_t)ui->cfg->pin_timeout_ms, "attemptsLeft", pin.attempts_left);
    if (station_note_pending(ui->st, &note))
        jnote = json_pack("{s:i,s:s,s:I}", "compartment", note.compartment, "nonce", note.nonce,
                          "remainingMs", (json_int_t)note.remaining_ms);
    if (sig != NULL) {
        /* What a change worth sending is: the countdown is kept by the page. */
        json_t *sc = json_deep_copy(comps);
        size_t n;
        json_array_foreach(sc, n, c)
        {
            json_object_del(c, "remainingMs");
        }
        json_t *s = json_pack("{s:o,s:O,s:s?,s:i,s:s?}", "c", sc, "a", alarms, "p",
                              json_is_null(jpin) ? NULL : pin.nonce, "pa",
                              json_is_null(jpin) ? 0 : pin.attempts_left, "n",
                              json_is_null(jnote) ? NULL : note.nonce);
        *sig = json_dumps(s, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(s);
    }

    json_t *out = json_pack(
        "{s:{s:O,s:O,s:O,s:O},s:{s:s,s:b,s:I,s:I,s:I},s:o,s:o}", "station", "name",
        json_object_get(station, "name"), "timezone", json_object_get(station, "timezone"), "time",
        json_object_get(station, "time"), "version", json_object_get(station, "version"), "ui",
        "language", ui->cfg->ui_language, "speech", ui->cfg->ui_speech, "maxEnergizeMs",
        (json_int_t)ui->cfg->max_energize_ms, "doorOpenAlarmMs",
        (json_int_t)ui->cfg->door_open_alarm_ms, "pickupWindowMs",
        (json_int_t)ui->cfg->pickup_window_ms, "compartments", comps, "alarms", alarms);
    json_object_set_new(out, "pin", jpin);
    json_object_set_new(out, "note", jnote);
    json_decref(full);
    return out;
}

json_t *ui_public_status(struct ui *ui)
{
    bool active;
    return public_status(ui, &active, NULL);
}

/* ------------------------------------------------------------ MHD in the loop */

static void mhd_rearm(struct ui *ui);

static void mhd_run(struct ui *ui)
{
    if (ui->mhd == NULL)
        return;
    MHD_run(ui->mhd);
    mhd_rearm(ui);
}

static void on_mhd_timer(void *arg)
{
    struct ui *ui = arg;
    ui->mhd_timer = 0;
    mhd_run(ui);
}

static void on_mhd_fd(int fd, uint32_t events, void *arg)
{
    (void)fd;
    (void)events;
    mhd_run(arg);
}

static void mhd_rearm(struct ui *ui)
{
    MHD_UNSIGNED_LONG_LONG ms;

    if (ui->mhd_timer) {
        loop_remove(ui->loop, ui->mhd_timer);
        ui->mhd_timer = 0;
    }
    if (ui->mhd == NULL || MHD_get_timeout(ui->mhd, &ms) != MHD_YES)
        return;
    int id = loop_add_timer(ui->loop, (int64_t)(ms > INT32_MAX ? INT32_MAX : ms), on_mhd_timer, ui);
    if (id < 0)
        log_errx("ui: cannot arm the HTTP timer: %s", strerror(-id));
    else
        ui->mhd_timer = id;
}

/* MHD processes a resumed connection on its next MHD_run(); with external polling
 * nothing wakes MHD's epoll fd for it, so run it on the next loop pass. */
static void mhd_kick(struct ui *ui)
{
    if (ui->mhd == NULL || ui->stopping)
        return;
    if (ui->mhd_timer)
        loop_remove(ui->loop, ui->mhd_timer);
    ui->mhd_timer = 0;
    int id = loop_add_timer(ui->loop, 0, on_mhd_timer, ui);
    if (id > 0)
        ui->mhd_timer = id;
}

/* ------------------------------------------------------------ responses */

static void add_common_headers(struct MHD_Response *r)
{
    /* The page is three local files: nothing inline, nothing from elsewhere. */
    MHD_add_response_header(r, "Content-Security-Policy",
                            "default-src 'self'; script-src 'self'; style-src 'self'; "
                            "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "X-Frame-Options", "DENY");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned int code, const char *type,
                             const char *body)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (r == NULL)
        return MHD_NO;
    add_common_headers(r);
    MHD_add_response_header(r, "Content-Type", type);
    if (code == MHD_HTTP_SERVICE_UNAVAILABLE)
        MHD_add_response_header(r, "Retry-After", "5");
    enum MHD_Result ret = MHD_queue_response(conn, code, r);
    MHD_destroy_response(r);
    return ret;
}

/* Answers code with j as JSON; takes j. */
static enum MHD_Result reply_code_json(struct MHD_Connection *conn, unsigned int code, json_t *j)
{
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (text == NULL)
        return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain", "internal error\n");
    enum MHD_Result r = reply(conn, code, "application/json", text);
    free(text);
    return r;
}

static const char *content_type(const char *path)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        {".html", "text/html; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".json", "application/json"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".ico", "image/x-icon"},
        {".txt", "text/plain; charset=utf-8"},
    };
    const char *dot = strrchr(path, '.');
    if (dot == NULL || strchr(dot, '/') != NULL)
        return NULL;
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (strcmp(dot, types[i].ext) == 0)
            return types[i].type;
    }
    return NULL;
}

/* "/kiosk.js" -> "kiosk.js": letters, digits and -_. and /, no empty or dot-leading
 * component, so the path can only name a file under dir. */
static bool static_path(const char *url, char *out, size_t len)
{
    const char *p = url + 1;

    if (url[0] != '/')
        return false;
    if (*p == '\0')
        p = "index.html";
    if (strlen(p) >= len || strlen(p) > 200)
        return false;
    for (const char *s = p; *s != '\0'; s++) {
        bool ok = (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
                  (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' || *s == '.' || *s == '/';
        if (!ok)
            return false;
        if ((s == p || s[-1] == '/') && (*s == '.' || *s == '/'))
            return false;
    }
    snprintf(out, len, "%s", p);
    return true;
}

static enum MHD_Result serve_file(struct ui *ui, struct MHD_Connection *conn, const char *url)
{
    char rel[256];
    const char *type;
    struct stat sb;

    if (!static_path(url, rel, sizeof(rel)) || (type = content_type(rel)) == NULL)
        return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain", "not found\n");
    int fd = openat(ui->dirfd, rel, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain", "not found\n");
    if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain", "not found\n");
    }
    /* MHD owns fd from here, also when it fails. */
    struct MHD_Response *r = MHD_create_response_from_fd((uint64_t)sb.st_size, fd);
    if (r == NULL) {
        close(fd);
        return MHD_NO;
    }
    add_common_headers(r);
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

/* A page from anywhere else, reached through a name that resolves to 127.0.0.1
 * (DNS rebinding), carries its own name in Host: refuse it. */
static bool host_ok(struct MHD_Connection *conn)
{
    const char *host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Host");
    char name[64];
    struct in_addr a;

    if (host == NULL)
        return false;
    if (host[0] == '[')
        return strncmp(host, "[::1]", 5) == 0 && (host[5] == '\0' || host[5] == ':');
    snprintf(name, sizeof(name), "%.*s", (int)strcspn(host, ":"), host);
    if (strcmp(name, "localhost") == 0)
        return true;
    return inet_pton(AF_INET, name, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

/* ------------------------------------------------------------ SSE */

static void client_append(struct sse_client *c, const char *text, size_t n)
{
    if (c->closing)
        return;
    if (c->len + n > UI_CLIENT_BUF) {
        log_warnx("ui: a screen is not reading its event stream; closing it");
        c->closing = true;
        c->len = 0;
    } else {
        if (c->len + n > c->cap) {
            size_t cap = c->cap ? c->cap : 4096;
            while (cap < c->len + n)
                cap *= 2;
            char *nb = realloc(c->buf, cap);
            if (nb == NULL) {
                c->closing = true;
                c->len = 0;
                goto wake;
            }
            c->buf = nb;
            c->cap = cap;
        }
        memcpy(c->buf + c->len, text, n);
        c->len += n;
    }
wake:
    if (c->suspended) {
        c->suspended = false;
        MHD_resume_connection(c->conn);
        mhd_kick(c->ui);
    }
}

static void client_send(struct sse_client *c, const char *event, int64_t id, const char *data)
{
    char *msg = NULL;
    int n;

    if (id > 0)
        n = asprintf(&msg, "event: %s\nid: %lld\ndata: %s\n\n", event, (long long)id, data);
    else
        n = asprintf(&msg, "event: %s\ndata: %s\n\n", event, data);
    if (n < 0)
        return;
    client_append(c, msg, (size_t)n);
    free(msg);
}

static void sse_broadcast(struct ui *ui, const char *event, int64_t id, const char *data)
{
    for (struct sse_client *c = ui->clients; c != NULL; c = c->next)
        client_send(c, event, id, data);
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct sse_client *c = cls;
    (void)pos;

    if (c->closing || c->ui->stopping)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    if (c->len == 0) {
        /* Nothing to say: park the connection until client_append() resumes it. */
        c->suspended = true;
        MHD_suspend_connection(c->conn);
        return 0;
    }
    size_t n = c->len < max ? c->len : max;
    memcpy(buf, c->buf, n);
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
    return (ssize_t)n;
}

static void heartbeat_arm(struct ui *ui);

/* Unlinks client c from ui's list and frees it. */
static void client_free(struct ui *ui, struct sse_client *c)
{
    for (struct sse_client **pp = &ui->clients; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            ui->nclients--;
            break;
        }
    }
    free(c->buf);
    free(c);
    if (ui->nclients == 0 && ui->heartbeat_timer) {
        loop_remove(ui->loop, ui->heartbeat_timer);
        ui->heartbeat_timer = 0;
    }
}

/* MHD's free callback of an event stream's response: its connection ended. */
static void sse_free(void *cls)
{
    struct sse_client *c = cls;
    client_free(c->ui, c);
}

static void on_heartbeat(void *arg)
{
    struct ui *ui = arg;
    static const char beat[] = ": keep-alive\n\n";

    ui->heartbeat_timer = 0;
    for (struct sse_client *c = ui->clients; c != NULL; c = c->next)
        client_append(c, beat, sizeof(beat) - 1);
    heartbeat_arm(ui);
}

static void heartbeat_arm(struct ui *ui)
{
    if (ui->heartbeat_timer || ui->nclients == 0)
        return;
    int id = loop_add_timer(ui->loop, UI_HEARTBEAT_MS, on_heartbeat, ui);
    if (id > 0)
        ui->heartbeat_timer = id;
}

static void poll_arm(struct ui *ui);

/* Sends the status if it changed since the last one sent (or always with force). */
static void send_status(struct ui *ui, bool force)
{
    bool active;
    char *sig = NULL;
    json_t *j = public_status(ui, &active, &sig);
    char *text = json_dumps(j, JSON_COMPACT);

    json_decref(j);
    if (text != NULL && sig != NULL &&
        (force || ui->last_sig == NULL || strcmp(sig, ui->last_sig) != 0)) {
        sse_broadcast(ui, "status", 0, text);
        free(ui->last_sig);
        ui->last_sig = sig;
        sig = NULL;
    }
    free(sig);
    free(text);
    if (active)
        poll_arm(ui);
}

static void on_poll(void *arg)
{
    struct ui *ui = arg;
    ui->poll_timer = 0;
    if (ui->nclients > 0)
        send_status(ui, false);
}

static void poll_arm(struct ui *ui)
{
    if (ui->poll_timer || ui->nclients == 0)
        return;
    int id = loop_add_timer(ui->loop, UI_POLL_MS, on_poll, ui);
    if (id > 0)
        ui->poll_timer = id;
}

static void on_flush(void *arg)
{
    struct ui *ui = arg;

    ui->flush_timer = 0;
    if (ui->nclients == 0) {
        int64_t last = store_last_seq(ui->store);
        if (last >= 0)
            ui->last_seq = last;
        return;
    }
    for (;;) {
        json_t *events = store_events_json(ui->store, ui->last_seq, UI_EVENT_BATCH);
        size_t i, n = json_array_size(events);
        json_t *ev;
        json_array_foreach(events, i, ev)
        {
            int64_t seq = json_integer_value(json_object_get(ev, "seq"));
            json_t *pub = ui_public_event(ev);
            if (seq > ui->last_seq)
                ui->last_seq = seq;
            if (pub == NULL)
                continue;
            char *text = json_dumps(pub, JSON_COMPACT);
            json_decref(pub);
            if (text != NULL)
                sse_broadcast(ui, "station", seq, text);
            free(text);
        }
        json_decref(events);
        if (n < UI_EVENT_BATCH)
            break;
    }
    send_status(ui, true);
}

/* Store append hook: may not touch the store, and the station enters its new state
 * only after the commit; look on the next loop pass. */
static void on_append(void *arg)
{
    struct ui *ui = arg;
    if (ui->flush_timer || ui->mhd == NULL)
        return;
    int id = loop_add_timer(ui->loop, 0, on_flush, ui);
    if (id > 0)
        ui->flush_timer = id;
}

static enum MHD_Result serve_events(struct ui *ui, struct MHD_Connection *conn)
{
    if (ui->nclients >= UI_MAX_CLIENTS)
        return reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain", "too many screens\n");
    struct sse_client *c = xcalloc(1, sizeof(*c));
    c->ui = ui;
    c->conn = conn;
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, c, sse_free);
    if (r == NULL) {
        free(c);
        return MHD_NO;
    }
    c->next = ui->clients;
    ui->clients = c;
    ui->nclients++;
    if (ui->nclients == 1) {
        /* Events committed while nobody watched are history, not news. */
        int64_t last = store_last_seq(ui->store);
        if (last >= 0)
            ui->last_seq = last;
    }

    char retry[32];
    int n = snprintf(retry, sizeof(retry), "retry: %d\n\n", UI_RETRY_MS);
    client_append(c, retry, (size_t)n);
    bool active;
    json_t *j = public_status(ui, &active, NULL);
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (text != NULL)
        client_send(c, "status", 0, text);
    free(text);

    add_common_headers(r);
    MHD_add_response_header(r, "Content-Type", "text/event-stream; charset=utf-8");
    MHD_add_response_header(r, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r); /* sse_free() runs when the connection ends */
    heartbeat_arm(ui);
    if (active)
        poll_arm(ui);
    return ret;
}

/* ------------------------------------------------------------ speech */

static void speech_start(struct ui *ui, const char *lang, const char *text);

static void on_speech_exit(int fd, uint32_t events, void *arg)
{
    struct ui *ui = arg;
    int status;
    (void)fd;
    (void)events;

    if (ui->speech_pid <= 0 || waitpid(ui->speech_pid, &status, WNOHANG) == 0)
        return;
    loop_remove(ui->loop, ui->speech_watch);
    close(ui->speech_pidfd);
    ui->speech_watch = 0;
    ui->speech_pidfd = -1;
    ui->speech_pid = 0;
    if (ui->speech_next != NULL) {
        char *text = ui->speech_next;
        ui->speech_next = NULL;
        speech_start(ui, ui->speech_next_lang, text);
        free(text);
    }
}

static void speech_start(struct ui *ui, const char *lang, const char *text)
{
    extern char **environ;
    char voice[4];
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, dfl;
    pid_t pid;

    if (ui->speech_pid > 0) {
        /* The screen moved on: stop the old prompt, say the new one after it. */
        free(ui->speech_next);
        ui->speech_next = xstrdup(text);
        snprintf(ui->speech_next_lang, sizeof(ui->speech_next_lang), "%s", lang);
        kill(ui->speech_pid, SIGTERM);
        return;
    }
    snprintf(voice, sizeof(voice), "%s", lang);
    char *argv[] = {"espeak-ng", "-v", voice, "-s", "150", "--", (char *)text, NULL};
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    posix_spawnattr_init(&attr);
    /* The loop blocks the signals it reads through signalfd; lockerd ignores
     * SIGPIPE. The child gets neither. */
    sigemptyset(&none);
    sigemptyset(&dfl);
    sigaddset(&dfl, SIGPIPE);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &dfl);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    int r = posix_spawnp(&pid, "espeak-ng", &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (r != 0) {
        if (!ui->speech_missing_logged)
            log_warnx("ui: cannot run espeak-ng for spoken prompts: %s", strerror(r));
        ui->speech_missing_logged = true;
        return;
    }
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    int watch = pidfd >= 0 ? loop_add_fd(ui->loop, pidfd, EPOLLIN, on_speech_exit, ui) : -1;
    if (watch < 0) {
        /* Cannot be told when it ends: do not leave it to become a zombie. */
        log_warnx("ui: cannot watch espeak-ng; prompt dropped");
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        if (pidfd >= 0)
            close(pidfd);
        return;
    }
    ui->speech_pid = pid;
    ui->speech_pidfd = pidfd;
    ui->speech_watch = watch;
}

static void speech_stop(struct ui *ui)
{
    free(ui->speech_next);
    ui->speech_next = NULL;
    if (ui->speech_pid <= 0)
        return;
    kill(ui->speech_pid, SIGKILL);
    waitpid(ui->speech_pid, NULL, 0);
    loop_remove(ui->loop, ui->speech_watch);
    close(ui->speech_pidfd);
    ui->speech_pid = 0;
    ui->speech_pidfd = -1;
    ui->speech_watch = 0;
}

static enum MHD_Result serve_speak(struct ui *ui, struct MHD_Connection *conn, struct upload *up)
{
    const char *lang = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "lang");
    const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");

    if (!ui->cfg->ui_speech)
        return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain", "speech is off ([ui] speech)\n");
    /* Only the page itself: a browser sends Origin with a POST from another page. */
    if (origin != NULL && strncmp(origin, "http://127.", 11) != 0 &&
        strncmp(origin, "http://localhost", 16) != 0 && strncmp(origin, "http://[::1]", 12) != 0)
        return reply(conn, MHD_HTTP_FORBIDDEN, "text/plain", "forbidden\n");
    if (lang == NULL || (strcmp(lang, "de") != 0 && strcmp(lang, "en") != 0))
        return reply(conn, MHD_HTTP_BAD_REQUEST, "text/plain", "lang must be de or en\n");
    if (up->too_big)
        return reply(conn, MHD_HTTP_CONTENT_TOO_LARGE, "text/plain", "text too long\n");
    up->buf[up->len] = '\0';
    for (size_t i = 0; i < up->len; i++) {
        if ((unsigned char)up->buf[i] < 0x20)
            up->buf[i] = ' ';
    }
    if (up->len > 0 && up->buf[0] != '-')
        speech_start(ui, lang, up->buf);
    return reply(conn, MHD_HTTP_NO_CONTENT, "text/plain", "");
}

/* ------------------------------------------------------------ PIN and notes */

/* Input from the screen changes what the station does, so it must come from the
 * page itself: JSON (a cross-site form cannot send it without a CORS preflight,
 * which this server never answers), an Origin that is this server, and the nonce
 * of the current tap or return, which only a page reading the event stream (same
 * origin) can know. */
static const char *input_check(struct MHD_Connection *conn, json_t **out, const struct upload *up)
{
    const char *type = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
    const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
    const char *host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Host");
    char want[96];

    *out = NULL;
    if (type == NULL || strncmp(type, "application/json", 16) != 0)
        return "415";
    snprintf(want, sizeof(want), "http://%s", host ? host : "");
    if (origin == NULL || strcmp(origin, want) != 0)
        return "403";
    if (up->too_big)
        return "413";
    *out = json_loadb(up->buf, up->len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return "400";
    }
    return NULL;
}

static enum MHD_Result input_refused(struct MHD_Connection *conn, const char *why)
{
    if (strcmp(why, "415") == 0)
        return reply(conn, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, "text/plain",
                     "application/json only\n");
    if (strcmp(why, "403") == 0)
        return reply(conn, MHD_HTTP_FORBIDDEN, "text/plain", "forbidden\n");
    if (strcmp(why, "413") == 0)
        return reply(conn, MHD_HTTP_CONTENT_TOO_LARGE, "text/plain", "too large\n");
    return reply(conn, MHD_HTTP_BAD_REQUEST, "text/plain", "bad request\n");
}

/* POST /api/pin {"nonce": N, "pin": "1234"} or {"nonce": N, "cancel": true} */
static enum MHD_Result serve_pin(struct ui *ui, struct MHD_Connection *conn, struct upload *up)
{
    json_t *req;
    const char *why = input_check(conn, &req, up);
    if (why != NULL)
        return input_refused(conn, why);
    const char *nonce = json_string_value(json_object_get(req, "nonce"));
    const char *pin = json_string_value(json_object_get(req, "pin"));
    json_t *res = NULL;
    unsigned int code = MHD_HTTP_OK;

    if (json_is_true(json_object_get(req, "cancel"))) {
        int rc = station_pin_cancel(ui->st, nonce);
        res = json_pack("{s:s}", "result", rc == 0 ? "cancelled" : "stale");
        code = rc == 0 ? MHD_HTTP_OK : MHD_HTTP_CONFLICT;
    } else {
        int left;
        int64_t lockout;
        enum station_pin_result r = station_pin_enter(ui->st, nonce, pin, &left, &lockout);
        switch (r) {
        case STATION_PIN_OK:
            res = json_pack("{s:s}", "result", "ok");
            break;
        case STATION_PIN_WRONG:
            res = json_pack("{s:s,s:i}", "result", "wrong", "attemptsLeft", left);
            break;
        case STATION_PIN_LOCKED_OUT:
            res = json_pack("{s:s,s:I}", "result", "lockedOut", "lockoutMs", (json_int_t)lockout);
            break;
        case STATION_PIN_STALE:
            res = json_pack("{s:s}", "result", "stale");
            code = MHD_HTTP_CONFLICT;
            break;
        case STATION_PIN_FAILED:
            res = json_pack("{s:s}", "result", "failed");
            code = MHD_HTTP_SERVICE_UNAVAILABLE;
            break;
        case STATION_PIN_REFUSED: /* the access.denied event tells the screen why */
            res = json_pack("{s:s}", "result", "refused");
            break;
        }
    }
    if (up->len > 0)
        OPENSSL_cleanse(up->buf, up->len);
    json_decref(req);
    return reply_code_json(conn, code, res);
}

/* POST /api/note {"nonce": N, "code": "floor-wet", "text": "..."} */
static enum MHD_Result serve_note(struct ui *ui, struct MHD_Connection *conn, struct upload *up)
{
    json_t *req;
    const char *why = input_check(conn, &req, up);
    if (why != NULL)
        return input_refused(conn, why);
    int rc = station_condition_note(ui->st, json_string_value(json_object_get(req, "nonce")),
                                    json_string_value(json_object_get(req, "code")),
                                    json_string_value(json_object_get(req, "text")));
    json_decref(req);
    switch (rc) {
    case 0:
        return reply_code_json(conn, MHD_HTTP_OK, json_pack("{s:s}", "result", "recorded"));
    case STATION_EINVAL:
        return reply_code_json(conn, MHD_HTTP_BAD_REQUEST, json_pack("{s:s}", "result", "invalid"));
    case STATION_ESTATE:
        return reply_code_json(conn, MHD_HTTP_CONFLICT, json_pack("{s:s}", "result", "stale"));
    default:
        return reply_code_json(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
                               json_pack("{s:s}", "result", "failed"));
    }
}

/* ------------------------------------------------------------ request dispatch */

static const char ping_svg[] = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1\" "
                               "height=\"1\"/>";

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    struct ui *ui = cls;
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    (void)version;

    bool post = strcmp(method, "POST") == 0;
    if (post && (strcmp(url, "/api/speak") == 0 || strcmp(url, "/api/pin") == 0 ||
                 strcmp(url, "/api/note") == 0)) {
        struct upload *up = *con_cls;
        size_t max = strcmp(url, "/api/speak") == 0 ? UI_SPEAK_MAX : UI_BODY_MAX;
        if (up == NULL) {
            *con_cls = xcalloc(1, sizeof(*up));
            return MHD_YES;
        }
        if (*upload_size > 0) {
            if (up->len + *upload_size > max)
                up->too_big = true;
            else {
                memcpy(up->buf + up->len, upload_data, *upload_size);
                up->len += *upload_size;
            }
            *upload_size = 0;
            return MHD_YES;
        }
        if (!host_ok(conn))
            return reply(conn, MHD_HTTP_MISDIRECTED_REQUEST, "text/plain", "wrong host\n");
        if (strcmp(url, "/api/pin") == 0)
            return serve_pin(ui, conn, up);
        if (strcmp(url, "/api/note") == 0)
            return serve_note(ui, conn, up);
        return serve_speak(ui, conn, up);
    }
    if (!host_ok(conn))
        return reply(conn, MHD_HTTP_MISDIRECTED_REQUEST, "text/plain", "wrong host\n");
    if (!get)
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n");
    if (strcmp(url, "/api/status") == 0)
        return reply_code_json(conn, MHD_HTTP_OK, ui_public_status(ui));
    if (strcmp(url, "/api/events") == 0)
        return serve_events(ui, conn);
    if (strcmp(url, "/api/ping") == 0) {
        struct MHD_Response *r = MHD_create_response_from_buffer(
            sizeof(ping_svg) - 1, (void *)ping_svg, MHD_RESPMEM_PERSISTENT);
        if (r == NULL)
            return MHD_NO;
        /* Loaded as an image by the offline page (a file: URL), so no CSP here. */
        MHD_add_response_header(r, "Content-Type", "image/svg+xml");
        MHD_add_response_header(r, "Cache-Control", "no-store");
        MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
        enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return ret;
    }
    if (strncmp(url, "/api/", 5) == 0)
        return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain", "not found\n");
    return serve_file(ui, conn, url);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    if (*con_cls != NULL)
        OPENSSL_cleanse(*con_cls, sizeof(struct upload)); /* a PIN may be in it */
    free(*con_cls);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char buf[256];
    (void)cls;
    vsnprintf(buf, sizeof(buf), fmt, ap);
    buf[strcspn(buf, "\n")] = '\0';
    log_warnx("ui: %s", buf);
}

/* ------------------------------------------------------------ start and stop */

static bool server_start(struct ui *ui, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    char why[256];
    unsigned int flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;

    if (!config_listen_parse(ui->listen, &ss, why, sizeof(why))) {
        snprintf(err, errlen, "[ui] listen %s: %s", ui->listen, why);
        return false;
    }
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    ui->dirfd = open(ui->dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (ui->dirfd < 0) {
        snprintf(err, errlen, "[ui] dir %s: %s", ui->dir, strerror(errno));
        return false;
    }
    ui->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, ui, MHD_OPTION_SOCK_ADDR,
                               (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
                               (unsigned int)UI_MAX_CONNS, MHD_OPTION_CONNECTION_TIMEOUT,
                               (unsigned int)UI_CONN_TIMEOUT, MHD_OPTION_NOTIFY_COMPLETED,
                               on_completed, ui, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, ui,
                               MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned int)1, MHD_OPTION_END);
    if (ui->mhd == NULL) {
        snprintf(err, errlen, "[ui] cannot serve the kiosk screen on %s (address in use?)",
                 ui->listen);
        close(ui->dirfd);
        ui->dirfd = -1;
        return false;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(ui->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    int id = info ? loop_add_fd(ui->loop, info->epoll_fd, EPOLLIN, on_mhd_fd, ui) : -EINVAL;
    if (id < 0) {
        snprintf(err, errlen, "[ui] cannot watch the HTTP server: %s", strerror(-id));
        server_stop(ui);
        return false;
    }
    ui->mhd_watch = id;
    if (!ui->hooked && store_add_append_hook(ui->store, on_append, ui) == STORE_OK)
        ui->hooked = true;
    int64_t last = store_last_seq(ui->store);
    ui->last_seq = last > 0 ? last : 0;
    mhd_rearm(ui);
    log_notice("kiosk screen on http://%s/ (files from %s)", ui->listen, ui->dir);
    return true;
}

static void server_stop(struct ui *ui)
{
    if (ui->mhd != NULL) {
        /* MHD must not be stopped with suspended connections: wake them, and the
         * content reader ends each stream on this last run. */
        ui->stopping = true;
        for (struct sse_client *c = ui->clients; c != NULL; c = c->next) {
            c->closing = true;
            if (c->suspended) {
                c->suspended = false;
                MHD_resume_connection(c->conn);
            }
        }
        MHD_run(ui->mhd);
        loop_remove(ui->loop, ui->mhd_watch);
        ui->mhd_watch = 0;
        MHD_stop_daemon(ui->mhd); /* frees every response, so every client */
        ui->mhd = NULL;
        ui->stopping = false;
    }
    while (ui->clients != NULL)
        client_free(ui, ui->clients);
    static const size_t timers[] = {
        offsetof(struct ui, mhd_timer), offsetof(struct ui, flush_timer),
        offsetof(struct ui, heartbeat_timer), offsetof(struct ui, poll_timer)};
    for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++) {
        int *t = (int *)(void *)((char *)ui + timers[i]);
        if (*t)
            loop_remove(ui->loop, *t);
        *t = 0;
    }
    if (ui->hooked) {
        store_remove_append_hook(ui->store, on_append, ui);
        ui->hooked = false;
    }
    if (ui->dirfd >= 0)
        close(ui->dirfd);
    ui->dirfd = -1;
    free(ui->last_sig);
    ui->last_sig = NULL;
    memset(ui->track, 0, sizeof(ui->track));
}

static void take_settings(struct ui *ui, const struct config *cfg)
{
    ui->cfg = cfg;
    ui->enabled = cfg->ui_enabled;
    snprintf(ui->listen, sizeof(ui->listen), "%s", cfg->ui_listen);
    snprintf(ui->dir, sizeof(ui->dir), "%s", cfg->ui_dir);
}

struct ui *ui_new(const struct config *cfg, struct loop *loop, struct store *store,
                  struct station *st, char *err, size_t errlen)
{
    struct ui *ui = xcalloc(1, sizeof(*ui));

    ui->loop = loop;
    ui->store = store;
    ui->st = st;
    ui->dirfd = -1;
    ui->speech_pidfd = -1;
    take_settings(ui, cfg);
    if (ui->enabled && !server_start(ui, err, errlen)) {
        ui_free(ui);
        return NULL;
    }
    return ui;
}

void ui_reconfigure(struct ui *ui, const struct config *cfg)
{
    char err[512];
    bool restart = ui->enabled != cfg->ui_enabled || strcmp(ui->listen, cfg->ui_listen) != 0 ||
                   strcmp(ui->dir, cfg->ui_dir) != 0;

    if (!cfg->ui_speech)
        speech_stop(ui);
    if (!restart) {
        ui->cfg = cfg;
        if (ui->mhd != NULL)
            send_status(ui, true); /* language, speech, timings */
        return;
    }
    server_stop(ui);
    take_settings(ui, cfg);
    if (ui->enabled && !server_start(ui, err, sizeof(err)))
        log_errx("reload: %s; the kiosk screen is off", err);
    else if (!ui->enabled)
        log_notice("kiosk screen off");
}

void ui_free(struct ui *ui)
{
    if (ui == NULL)
        return;
    server_stop(ui);
    speech_stop(ui);
    free(ui);
}
