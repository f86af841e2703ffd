/*
 * sync.c - the city API link, main-process side: supervises the sync worker and
 * turns its messages into database changes (see sync.h for the design).
 *
 * Trust: the worker parses network data and may be wrong or hostile. Every message
 * passed syncmsg_decode()'s schema; here every record is checked again for meaning
 * (ids, dates, compartments, values), and anything out of line kills the worker
 * rather than being half applied. A page is applied only as a whole, together with
 * its cursor.
 */
#include "daemon/sync.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/opendata.h"
#include "daemon/syncmsg.h"
#include "daemon/syncworker.h"
#include "daemon/timeutil.h"

#define WORKER_FD       3
#define PAGE_MAX        500 /* items per page the worker may send (it asks for 500) */
#define BATCH_MAX       100 /* events per upload (the contract's limit) */
#define BODY_MAX        190000
#define UPLOAD_DELAY_MS 500 /* lets the events of one tap travel together */
#define RESTART_MIN_MS  1000
#define RESTART_MAX_MS  60000
#define STABLE_MS       60000 /* a worker that lived this long resets the back-off */
#define PEM_MAX         65536
/* The daily open-data summary ([opendata] push, docs/api.md "Daily usage summary"). */
#define USAGE_META       "opendata.pushed_through" /* the last day the city confirmed */
#define USAGE_DAYS_BACK  7                         /* never more days than this */
#define USAGE_AFTER_MS   INT64_C(120000)           /* the timer: this long after midnight */
#define USAGE_RECHECK_MS INT64_C(3600000)          /* and at least hourly (clock changes) */

enum op { OP_CONFIG, OP_RESERVATIONS, OP_CREDENTIALS, OP_EVENTS, OP_HEARTBEAT, OP_USAGE, OP_COUNT };
static const char *const op_names[OP_COUNT] = {"config", "reservations", "credentials",
                                               "events", "heartbeat",    "usage"};

struct op_state {
    int64_t last_ok_ms;  /* wall clock; 0 = never */
    int64_t last_err_ms; /* 0 = never */
    int http;            /* of the last error, 0 for a network error */
    char error[256];
    int64_t retry_ms; /* the worker's next attempt after an error, 0 = none */
};

struct sync {
    const struct config *cfg;
    struct loop *loop;
    struct store *store;
    struct station *station;
    char exe[PATH_MAX]; /* this binary, resolved at start (valgrind-proof) */

    /* The worker. */
    pid_t pid;
    int fd;
    int fd_watch;
    int restart_timer;
    int64_t restart_backoff_ms;
    int64_t started_mono_ms;
    int64_t restarts;
    char worker_error[512]; /* why the worker is not running, "" while it is */

    /* The page being received. */
    int page_feed;
    struct city_reservation *res;
    struct city_credential *cred;
    int nitems;

    /* The upload in flight. */
    int64_t batch;
    bool in_flight;
    char (*batch_ids)[37];
    int nbatch;
    int batch_limit; /* BATCH_MAX, less while a batch refused as a whole is split */
    int batch_cap;   /* what batch_limit grows back to: less after a 413 */
    int upload_timer;
    bool halted; /* 401/403/404: waits for `sync now` or a reload */
    char halt_reason[300];

    int heartbeat_timer;
    int64_t heartbeat_s;

    /* The daily open-data summary: one day in flight at a time, the next one only
     * after the city confirmed it (or refused it for good). */
    bool usage_in_flight;
    char usage_date[OPENDATA_DATE_LEN];
    int usage_timer;
    char usage_refused[OPENDATA_DATE_LEN]; /* the last day given up, "" = none */
    char usage_refused_error[300];

    int64_t cycle_asked, cycle_done;
    bool cycle_ok;
    struct op_state ops[OP_COUNT];
    char station_name[128];

    uint8_t rbuf[SYNCMSG_MAX];
    uint8_t wbuf[SYNCMSG_MAX];
    struct syncmsg msg;
    struct syncmsg item; /* one item of an SM_ITEMS message */
};

static void worker_stop(struct sync *sy, const char *why);
static void worker_schedule_restart(struct sync *sy);
static void upload_schedule(struct sync *sy, int64_t delay_ms);
static void heartbeat_schedule(struct sync *sy);
static void usage_push(struct sync *sy);
static void usage_schedule(struct sync *sy);

static bool enabled(const struct sync *sy)
{
    return sy->cfg->sync_url[0] != '\0';
}

static void meta_key(char *buf, size_t len, const char *what, int feed)
{
    snprintf(buf, len, "sync.%s.%s", what,
             feed == SYNC_FEED_RESERVATIONS ? "reservations" : "credentials");
}

/* ---------------------------------------------------------------- sending */

static bool send_msg(struct sync *sy, struct syncmsg_builder *b)
{
    int64_t len = syncmsg_finish(b);
    if (len < 0) {
        log_errx("sync: a %s message does not fit",
                 syncmsg_type_name((enum syncmsg_type)b->buf[1]));
        return false;
    }
    /* Nonblocking: a worker that stops reading is stuck, and the loop must never
     * wait for it. */
    if (syncmsg_send(sy->fd, b->buf, (size_t)len, true) < 0) {
        char why[128];
        snprintf(why, sizeof why, "cannot send to the worker: %s", strerror(errno));
        worker_stop(sy, why);
        return false;
    }
    return true;
}

/* Reads a whole PEM file; "" and a message in err on failure. */
static char *read_pem(const char *path, const char *what, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        snprintf(err, errlen, "cannot read %s %s: %s", what, path, strerror(errno));
        return NULL;
    }
    char *buf = xcalloc(1, PEM_MAX + 1);
    size_t n = fread(buf, 1, PEM_MAX + 1, f);
    bool bad = ferror(f) || n == 0 || n > PEM_MAX;
    fclose(f);
    if (bad || strstr(buf, "-----BEGIN ") == NULL) {
        snprintf(err, errlen, "%s %s is not a PEM file of at most %d bytes", what, path, PEM_MAX);
        free(buf);
        return NULL;
    }
    return buf;
}

/* The station's private key must be its own: a key others can read is refused, not
 * used, so that the mistake is fixed rather than carried on. */
static bool key_private(const char *path, char *err, size_t errlen)
{
    struct stat sb;
    if (stat(path, &sb) == 0 && (sb.st_mode & 0077) != 0) {
        snprintf(err, errlen, "[api] key %.300s is readable by others (mode %o): chmod 600 it",
                 path, (unsigned)(sb.st_mode & 0777));
        return false;
    }
    return true;
}

static bool send_config(struct sync *sy, char *err, size_t errlen)
{
    char *ca = read_pem(sy->cfg->sync_ca_file, "[api] ca", err, errlen);
    char *cert = ca ? read_pem(sy->cfg->sync_cert_file, "[api] cert", err, errlen) : NULL;
    char *key = cert && key_private(sy->cfg->sync_key_file, err, errlen)
                    ? read_pem(sy->cfg->sync_key_file, "[api] key", err, errlen)
                    : NULL;
    bool ok = false;
    if (key != NULL) {
        struct syncmsg_builder b;
        syncmsg_start(&b, sy->wbuf, sizeof sy->wbuf, SM_CONFIG);
        syncmsg_put_str(&b, F_URL, sy->cfg->sync_url);
        syncmsg_put_str(&b, F_STATION, sy->cfg->station_id);
        syncmsg_put_str(&b, F_VERSION, LOCKERD_VERSION);
        syncmsg_put_str(&b, F_CA_PEM, ca);
        syncmsg_put_str(&b, F_CERT_PEM, cert);
        syncmsg_put_str(&b, F_KEY_PEM, key);
        char mk[64], cursor[2100], etag[300];
        meta_key(mk, sizeof mk, "cursor", SYNC_FEED_RESERVATIONS);
        if (store_meta_get(sy->store, mk, cursor, sizeof cursor) == STORE_OK && cursor[0])
            syncmsg_put_str(&b, F_CURSOR_RES, cursor);
        meta_key(mk, sizeof mk, "cursor", SYNC_FEED_CREDENTIALS);
        if (store_meta_get(sy->store, mk, cursor, sizeof cursor) == STORE_OK && cursor[0])
            syncmsg_put_str(&b, F_CURSOR_CRED, cursor);
        if (store_meta_get(sy->store, "sync.etag", etag, sizeof etag) == STORE_OK && etag[0])
            syncmsg_put_str(&b, F_ETAG, etag);
        /* Until the city's station config names its own intervals. */
        syncmsg_put_int(&b, F_INTERVAL_RES, sy->cfg->sync_poll_ms / 1000);
        syncmsg_put_int(&b, F_INTERVAL_CRED, sy->cfg->sync_poll_ms / 1000);
        ok = send_msg(sy, &b);
        if (!ok)
            snprintf(err, errlen, "cannot hand the configuration to the worker");
        /* The key's copy in our buffer is not needed any more. */
        explicit_bzero(sy->wbuf, b.len);
        explicit_bzero(key, strlen(key));
    }
    free(ca);
    free(cert);
    free(key);
    return ok;
}

/* ---------------------------------------------------------------- worker life */

static void page_reset(struct sync *sy)
{
    sy->page_feed = 0;
    sy->nitems = 0;
}

/* Ends the worker. It keeps no state of its own (everything it was doing is redone
 * from the database by the next one), so one that has not exited by now is killed
 * at once: waiting for it would stall the event loop, and with it a coil's off
 * timer. A killed process is gone within microseconds, so the wait is short. */
static void worker_reap(struct sync *sy)
{
    if (sy->pid <= 0)
        return;
    int status = 0;
    bool killed = false;
    pid_t got = waitpid(sy->pid, &status, WNOHANG);
    if (got == 0) {
        kill(sy->pid, SIGKILL);
        killed = true;
        do {
            got = waitpid(sy->pid, &status, 0);
        } while (got < 0 && errno == EINTR);
    }
    if (got == sy->pid && WIFSIGNALED(status) && !(killed && WTERMSIG(status) == SIGKILL))
        log_warnx("sync: worker %d killed by %s", (int)sy->pid, strsignal(WTERMSIG(status)));
    else if (got == sy->pid && WIFEXITED(status) && WEXITSTATUS(status) != 0)
        log_warnx("sync: worker %d exited with status %d", (int)sy->pid, WEXITSTATUS(status));
    sy->pid = 0;
}

static void worker_stop(struct sync *sy, const char *why)
{
    if (sy->fd_watch > 0)
        loop_remove(sy->loop, sy->fd_watch);
    sy->fd_watch = 0;
    if (sy->fd >= 0)
        close(sy->fd);
    sy->fd = -1;
    if (why != NULL && sy->pid > 0)
        kill(sy->pid, SIGKILL); /* misbehaving: no grace */
    worker_reap(sy);
    page_reset(sy);
    sy->in_flight = false;       /* the batch stays in the outbox and is sent again */
    sy->usage_in_flight = false; /* the day is sent again to the next worker */
    if (sy->upload_timer > 0)
        loop_remove(sy->loop, sy->upload_timer);
    sy->upload_timer = 0;
    if (why != NULL) {
        log_errx("sync: stopping the worker: %s", why);
        snprintf(sy->worker_error, sizeof sy->worker_error, "%s", why);
    }
}

static void on_worker_msg(int fd, uint32_t events, void *arg);

static void worker_start(struct sync *sy)
{
    char err[512];
    if (!enabled(sy) || sy->fd >= 0)
        return;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        snprintf(sy->worker_error, sizeof sy->worker_error, "socketpair: %s", strerror(errno));
        worker_schedule_restart(sy);
        return;
    }
    int size = SYNCMSG_MAX * 4;
    for (int i = 0; i < 2; i++) {
        setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        setsockopt(sv[i], SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    }
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(sy->worker_error, sizeof sy->worker_error, "fork: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        worker_schedule_restart(sy);
        return;
    }
    if (pid == 0) {
        /* The child execs at once: a fresh process image holds none of our memory
         * (site key, database pages) and none of our descriptors. */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (dup2(sv[1], WORKER_FD) < 0)
            _exit(127);
        if (sv[1] == WORKER_FD)
            fcntl(WORKER_FD, F_SETFD, 0);
        for (int fd = WORKER_FD + 1; fd < 1024; fd++)
            close(fd);
        char fdarg[8];
        snprintf(fdarg, sizeof fdarg, "%d", WORKER_FD);
        char *argv[] = {"lockerd", "--sync-worker", fdarg, NULL};
        execv(sy->exe, argv);
        _exit(127);
    }
    close(sv[1]);
    sy->pid = pid;
    sy->fd = sv[0];
    fcntl(sy->fd, F_SETFL, fcntl(sy->fd, F_GETFL) | O_NONBLOCK);
    sy->started_mono_ms = clock_mono_ms();
    int id = loop_add_fd(sy->loop, sy->fd, EPOLLIN, on_worker_msg, sy);
    if (id < 0) {
        worker_stop(sy, "cannot watch the worker's socket");
        worker_schedule_restart(sy);
        return;
    }
    sy->fd_watch = id;
    if (!send_config(sy, err, sizeof err)) {
        /* TLS files missing: nothing to retry until a reload or `sync now`. */
        worker_stop(sy, NULL);
        snprintf(sy->worker_error, sizeof sy->worker_error, "%s", err);
        log_errx("sync: %s", err);
        return;
    }
    sy->worker_error[0] = '\0';
    log_info("sync: worker %d started for %s", (int)pid, sy->cfg->sync_url);
    upload_schedule(sy, 0);
    usage_push(sy);
}

static void on_restart(void *arg)
{
    struct sync *sy = arg;
    sy->restart_timer = 0;
    worker_start(sy);
}

static void worker_schedule_restart(struct sync *sy)
{
    if (sy->restart_timer > 0 || !enabled(sy))
        return;
    if (clock_mono_ms() - sy->started_mono_ms > STABLE_MS)
        sy->restart_backoff_ms = RESTART_MIN_MS;
    int64_t delay = sy->restart_backoff_ms;
    sy->restart_backoff_ms =
        sy->restart_backoff_ms * 2 > RESTART_MAX_MS ? RESTART_MAX_MS : sy->restart_backoff_ms * 2;
    sy->restarts++;
    int id = loop_add_timer(sy->loop, delay, on_restart, sy);
    if (id > 0)
        sy->restart_timer = id;
    log_notice("sync: restarting the worker in %" PRId64 " ms", delay);
}

/* A misbehaving worker: killed, and a new one started after back-off. */
static void worker_fail(struct sync *sy, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void worker_fail(struct sync *sy, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    worker_stop(sy, why);
    worker_schedule_restart(sy);
}

/* ---------------------------------------------------------------- feeds */

static bool id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= STORE_ID_LEN)
        return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("._:-", c) != NULL))
            return false;
    }
    return true;
}

/* 2000-01-01 .. 2200-01-01: anything outside is a broken record. */
static bool time_ok(int64_t ms)
{
    return ms >= INT64_C(946684800000) && ms < INT64_C(7258118400000);
}

static bool str_field(const struct syncmsg *m, enum syncmsg_tag tag, char *out, size_t len)
{
    out[0] = '\0';
    return !syncmsg_has(m, tag) || syncmsg_str(m, tag, out, len);
}

static bool take_reservation(struct sync *sy, const struct syncmsg *m, char *why, size_t wlen)
{
    struct city_reservation *r = &sy->res[sy->nitems];
    memset(r, 0, sizeof *r);
    r->deleted = syncmsg_int(m, F_DELETED, 0) != 0;
    if (!syncmsg_str(m, F_ID, r->id, sizeof r->id) || !id_ok(r->id))
        return snprintf(why, wlen, "reservation with a bad id"), false;
    if (r->deleted)
        return true;
    char status[16];
    r->start_ms = syncmsg_int(m, F_START, 0);
    r->end_ms = syncmsg_int(m, F_END, 0);
    if (!str_field(m, F_CLUB, r->club_id, sizeof r->club_id) || !id_ok(r->club_id) ||
        !str_field(m, F_CLUB_NAME, r->club_name, sizeof r->club_name) ||
        !str_field(m, F_STATUS, status, sizeof status))
        return snprintf(why, wlen, "reservation %s: bad club or status", r->id), false;
    if (!time_ok(r->start_ms) || !time_ok(r->end_ms) || r->end_ms <= r->start_ms)
        return snprintf(why, wlen, "reservation %s: bad period", r->id), false;
    if (strcmp(status, "confirmed") != 0 && strcmp(status, "cancelled") != 0)
        return snprintf(why, wlen, "reservation %s: status '%s'", r->id, status), false;
    r->cancelled = strcmp(status, "cancelled") == 0;
    int pos = 0;
    const struct syncmsg_field *f;
    while ((f = syncmsg_next(m, F_COMPARTMENT, &pos)) != NULL) {
        int64_t c = syncmsg_field_int(f);
        if (c < 1 || c > CITY_MAX_COMPARTMENTS || r->ncompartments == CITY_MAX_COMPARTMENTS)
            return snprintf(why, wlen, "reservation %s: compartment %" PRId64, r->id, c), false;
        for (int i = 0; i < r->ncompartments; i++) {
            if (r->compartments[i] == c)
                return snprintf(why, wlen, "reservation %s: compartment %" PRId64 " twice", r->id,
                                c),
                       false;
        }
        r->compartments[r->ncompartments++] = (int)c;
    }
    if (r->ncompartments == 0)
        return snprintf(why, wlen, "reservation %s: no compartment", r->id), false;
    return true;
}

static bool take_credential(struct sync *sy, const struct syncmsg *m, char *why, size_t wlen)
{
    struct city_credential *c = &sy->cred[sy->nitems];
    memset(c, 0, sizeof *c);
    c->deleted = syncmsg_int(m, F_DELETED, 0) != 0;
    if (!syncmsg_str(m, F_ID, c->id, sizeof c->id) || !id_ok(c->id))
        return snprintf(why, wlen, "credential with a bad id"), false;
    if (c->deleted)
        return true;
    const struct syncmsg_field *h = syncmsg_get(m, F_UID_HMAC);
    char status[16];
    if (h == NULL || h->len != STORE_HMAC_LEN)
        return snprintf(why, wlen, "credential %s: no uidHmac", c->id), false;
    memcpy(c->uid_hmac, h->data, STORE_HMAC_LEN);
    if (!str_field(m, F_CARD_TYPE, c->card_type, sizeof c->card_type) ||
        (strcmp(c->card_type, "desfire") != 0 && strcmp(c->card_type, "uid") != 0))
        return snprintf(why, wlen, "credential %s: bad card type", c->id), false;
    if (!str_field(m, F_MEMBER, c->member_id, sizeof c->member_id) || !id_ok(c->member_id) ||
        !str_field(m, F_MEMBER_NAME, c->member_name, sizeof c->member_name))
        return snprintf(why, wlen, "credential %s: bad member", c->id), false;
    if (!str_field(m, F_STATUS, status, sizeof status) ||
        (strcmp(status, "active") != 0 && strcmp(status, "revoked") != 0))
        return snprintf(why, wlen, "credential %s: bad status", c->id), false;
    c->status = strcmp(status, "active") == 0 ? CRED_ACTIVE : CRED_REVOKED;
    c->valid_from_ms = syncmsg_int(m, F_VALID_FROM, 0);
    c->valid_until_ms = syncmsg_int(m, F_VALID_UNTIL, 0);
    if ((c->valid_from_ms != 0 && !time_ok(c->valid_from_ms)) ||
        (c->valid_until_ms != 0 && !time_ok(c->valid_until_ms)))
        return snprintf(why, wlen, "credential %s: bad validity", c->id), false;
    int pos = 0;
    const struct syncmsg_field *f;
    while ((f = syncmsg_next(m, F_CLUB, &pos)) != NULL) {
        if (c->nclubs == CITY_MAX_CLUBS ||
            !syncmsg_field_str(f, c->clubs[c->nclubs], STORE_ID_LEN) || !id_ok(c->clubs[c->nclubs]))
            return snprintf(why, wlen, "credential %s: bad club list", c->id), false;
        c->nclubs++;
    }
    return true;
}

static void on_item(struct sync *sy, const struct syncmsg *m)
{
    int feed = m->type == SM_ITEM_RES ? SYNC_FEED_RESERVATIONS : SYNC_FEED_CREDENTIALS;
    char why[160];
    if (sy->page_feed != 0 && sy->page_feed != feed)
        return worker_fail(sy, "items of two feeds in one page");
    if (sy->nitems >= PAGE_MAX)
        return worker_fail(sy, "a page of more than %d items", PAGE_MAX);
    sy->page_feed = feed;
    bool ok = feed == SYNC_FEED_RESERVATIONS ? take_reservation(sy, m, why, sizeof why)
                                             : take_credential(sy, m, why, sizeof why);
    if (!ok)
        return worker_fail(sy, "invalid record: %s", why);
    sy->nitems++;
}

/* Several items in one message: each is decoded and checked as if sent alone. */
static void on_items(struct sync *sy, const struct syncmsg *m)
{
    int pos = 0, fd = sy->fd;
    const struct syncmsg_field *f;
    char why[160];
    while (sy->fd == fd && (f = syncmsg_next(m, F_ITEM, &pos)) != NULL) {
        if (syncmsg_decode(f->data, f->len, &sy->item, why, sizeof why) < 0)
            return worker_fail(sy, "a malformed item: %s", why);
        if (sy->item.type != SM_ITEM_RES && sy->item.type != SM_ITEM_CRED)
            return worker_fail(sy, "a %s message among items", syncmsg_type_name(sy->item.type));
        on_item(sy, &sy->item);
    }
}

static void set_meta_ms(struct sync *sy, const char *key, int64_t ms)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, ms);
    store_meta_set(sy->store, key, buf);
}

/* The base of the station's API: a `next` cursor must stay under it. The same
 * parsed comparison as the worker's (sync_url_under), so that the two never
 * disagree about a cursor and kill each other over it. */
static bool cursor_ok(const struct sync *sy, const char *next)
{
    return sync_url_under(next, sy->cfg->sync_url);
}

static void on_page_end(struct sync *sy, const struct syncmsg *m)
{
    int feed = (int)syncmsg_int(m, F_FEED, 0);
    bool last = syncmsg_int(m, F_LAST_PAGE, 0) != 0;
    char next[2100], mk[64];
    if (feed != SYNC_FEED_RESERVATIONS && feed != SYNC_FEED_CREDENTIALS)
        return worker_fail(sy, "page end for feed %d", feed);
    if (sy->nitems > 0 && sy->page_feed != feed)
        return worker_fail(sy, "page end for another feed than its items");
    if (!syncmsg_str(m, F_NEXT, next, sizeof next) || !cursor_ok(sy, next))
        return worker_fail(sy, "a cursor outside %s", sy->cfg->sync_url);

    int64_t now = clock_wall_ms();
    if (store_begin(sy->store) != STORE_OK)
        return worker_fail(sy, "cannot store a page: the database refused a transaction");
    bool ok = true;
    for (int i = 0; ok && i < sy->nitems; i++) {
        ok = (feed == SYNC_FEED_RESERVATIONS
                  ? store_city_reservation_apply(sy->store, &sy->res[i], now)
                  : store_city_credential_apply(sy->store, &sy->cred[i], now)) == STORE_OK;
    }
    meta_key(mk, sizeof mk, "cursor", feed);
    ok = ok && store_meta_set(sy->store, mk, next) == STORE_OK;
    char resync[32];
    meta_key(mk, sizeof mk, "resync", feed);
    bool resyncing = ok && store_meta_get(sy->store, mk, resync, sizeof resync) == STORE_OK;
    if (ok && last) {
        /* Read to the end: everything of this feed is current now. */
        set_meta_ms(sy,
                    feed == SYNC_FEED_RESERVATIONS ? STORE_META_CONFIRMED_RESERVATIONS
                                                   : STORE_META_CONFIRMED_CREDENTIALS,
                    now);
        if (resyncing) {
            int n = store_city_sweep(sy->store, feed == SYNC_FEED_CREDENTIALS,
                                     strtoll(resync, NULL, 10));
            ok = n >= 0 && store_meta_set(sy->store, mk, "") == STORE_OK;
            if (ok)
                log_notice("sync: %s resynchronised; %d records the server no longer has removed",
                           feed == SYNC_FEED_RESERVATIONS ? "reservations" : "credentials", n);
        }
    }
    /* Exactly one of commit (which rolls back by itself when it fails) or rollback
     * ends the transaction: one left open would swallow every later event's commit. */
    if (!ok)
        store_rollback(sy->store);
    if (ok && store_commit(sy->store) == STORE_OK) {
        if (sy->nitems > 0)
            log_info("sync: applied %d %s", sy->nitems,
                     feed == SYNC_FEED_RESERVATIONS ? "reservations" : "credentials");
        page_reset(sy);
        return;
    }
    /* The worker has moved past this page; a new one starts from the stored cursor. */
    worker_fail(sy, "cannot store a page of %s",
                feed == SYNC_FEED_RESERVATIONS ? "reservations" : "credentials");
}

static void on_feed_gone(struct sync *sy, const struct syncmsg *m)
{
    int feed = (int)syncmsg_int(m, F_FEED, 0);
    char mk[64];
    if (feed != SYNC_FEED_RESERVATIONS && feed != SYNC_FEED_CREDENTIALS)
        return worker_fail(sy, "feed gone for feed %d", feed);
    page_reset(sy);
    /* Remember when the resync began, in case lockerd restarts before it ends. */
    meta_key(mk, sizeof mk, "resync", feed);
    char have[32];
    if (store_meta_get(sy->store, mk, have, sizeof have) != STORE_OK || have[0] == '\0')
        set_meta_ms(sy, mk, clock_wall_ms());
    meta_key(mk, sizeof mk, "cursor", feed);
    store_meta_set(sy->store, mk, "");
    log_warnx("sync: the server no longer has our %s cursor (410): resynchronising from the start",
              feed == SYNC_FEED_RESERVATIONS ? "reservations" : "credentials");
}

static void on_station(struct sync *sy, const struct syncmsg *m)
{
    char etag[300];
    if (!syncmsg_str(m, F_ETAG, etag, sizeof etag) ||
        !syncmsg_str(m, F_NAME, sy->station_name, sizeof sy->station_name))
        return worker_fail(sy, "bad station config message");
    int64_t hb = syncmsg_int(m, F_INTERVAL_HEARTBEAT, sy->heartbeat_s);
    if (hb < 5 || hb > 86400)
        return worker_fail(sy, "heartbeat interval %" PRId64 " s", hb);
    store_meta_set(sy->store, "sync.etag", etag);
    if (hb != sy->heartbeat_s) {
        sy->heartbeat_s = hb;
        heartbeat_schedule(sy);
    }
}

/* ---------------------------------------------------------------- uploads */

/* A stored event as the contract's event: no member id and no name ever leave the
 * station; a booking row of a multi-compartment reservation names the reservation. */
static json_t *wire_event(json_t *e)
{
    json_t *o = json_object();
    static const char *const copy[] = {
        "eventId",     "seq",    "type",     "occurredAt", "clock",         "bootId", "monoMs",
        "compartment", "reason", "operator", "detail",     "subjectDigest", "hash",   "prevHash"};
    for (size_t i = 0; i < sizeof copy / sizeof copy[0]; i++) {
        json_t *v = json_object_get(e, copy[i]);
        if (v != NULL)
            json_object_set(o, copy[i], v);
    }
    /* A condition note's free text is typed at a public screen and may name anyone:
     * it stays on the station (for the facility manager, until retention); the city
     * gets the note's code. */
    const char *type = json_string_value(json_object_get(e, "type"));
    json_t *detail = json_object_get(o, "detail");
    if (type != NULL && strcmp(type, "hall.conditionNote") == 0 && json_is_object(detail) &&
        json_object_get(detail, "text") != NULL) {
        json_t *slim = json_copy(detail);
        json_object_del(slim, "text");
        json_object_set_new(o, "detail", slim);
    }
    const char *booking = json_string_value(json_object_get(e, "booking"));
    if (booking != NULL)
        json_object_set_new(o, "reservationId", json_stringn(booking, strcspn(booking, "@")));
    const char *cred = json_string_value(json_object_get(e, "credential"));
    if (cred != NULL)
        json_object_set_new(o, "credentialId", json_string(cred));
    const char *club = json_string_value(json_object_get(e, "club"));
    if (club != NULL)
        json_object_set_new(o, "clubId", json_string(club));
    return o;
}

static void upload_send(struct sync *sy)
{
    if (sy->fd < 0 || sy->in_flight || sy->halted)
        return;
    int limit = sy->batch_limit;
    json_t *events;
    char *body = NULL;
    for (;;) {
        events = store_outbox_json(sy->store, limit);
        if (events == NULL || json_array_size(events) == 0) {
            json_decref(events);
            return;
        }
        json_t *arr = json_array();
        size_t i;
        json_t *e;
        json_array_foreach(events, i, e) json_array_append_new(arr, wire_event(e));
        json_t *doc = json_pack("{s:o}", "events", arr);
        body = json_dumps(doc, JSON_COMPACT);
        json_decref(doc);
        if (body != NULL && strlen(body) <= BODY_MAX)
            break;
        free(body);
        body = NULL;
        json_decref(events);
        if (limit == 1) {
            log_errx("sync: an event does not fit in an upload; it stays in the outbox");
            return;
        }
        limit /= 2;
    }
    struct syncmsg_builder b;
    syncmsg_start(&b, sy->wbuf, sizeof sy->wbuf, SM_UPLOAD);
    syncmsg_put_int(&b, F_BATCH, ++sy->batch);
    syncmsg_put_str(&b, F_BODY, body);
    sy->nbatch = 0;
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        snprintf(sy->batch_ids[sy->nbatch], sizeof sy->batch_ids[0], "%s",
                 json_string_value(json_object_get(e, "eventId")));
        syncmsg_put_str(&b, F_EVENT_ID, sy->batch_ids[sy->nbatch]);
        sy->nbatch++;
    }
    free(body);
    json_decref(events);
    if (send_msg(sy, &b)) {
        sy->in_flight = true;
        log_debug("sync: upload batch %" PRId64 " with %d events", sy->batch, sy->nbatch);
    }
}

static void on_upload_timer(void *arg)
{
    struct sync *sy = arg;
    sy->upload_timer = 0;
    upload_send(sy);
}

static void upload_schedule(struct sync *sy, int64_t delay_ms)
{
    if (sy->upload_timer > 0 || sy->in_flight || sy->fd < 0 || sy->halted)
        return;
    int id = loop_add_timer(sy->loop, delay_ms, on_upload_timer, sy);
    if (id > 0)
        sy->upload_timer = id;
}

static void on_append(void *arg)
{
    upload_schedule(arg, UPLOAD_DELAY_MS);
}

static int batch_index(const struct sync *sy, const char *id)
{
    for (int i = 0; i < sy->nbatch; i++) {
        if (strcmp(sy->batch_ids[i], id) == 0)
            return i;
    }
    return -1;
}

static void on_upload_done(struct sync *sy, const struct syncmsg *m)
{
    char outcome[16], error[256] = "";
    int http = (int)syncmsg_int(m, F_HTTP, 0);
    if (!sy->in_flight || syncmsg_int(m, F_BATCH, -1) != sy->batch ||
        !syncmsg_str(m, F_OUTCOME, outcome, sizeof outcome) ||
        !str_field(m, F_ERROR, error, sizeof error))
        return worker_fail(sy, "an upload result for no batch in flight");
    int64_t now = clock_wall_ms();
    bool halt = strcmp(outcome, "halt") == 0;
    if (!halt && store_begin(sy->store) != STORE_OK) {
        log_errx("sync: cannot record an upload result; the batch will be sent again");
        sy->in_flight = false;
        upload_schedule(sy, UPLOAD_DELAY_MS);
        return;
    }
    bool ok = true;
    if (strcmp(outcome, "done") == 0) {
        /* Pairs of event id and result, one for every event of the batch. */
        bool seen[BATCH_MAX] = {false};
        int pos_id = 0, pos_res = 0, n = 0;
        const struct syncmsg_field *fi, *fr;
        while (ok && (fi = syncmsg_next(m, F_EVENT_ID, &pos_id)) != NULL) {
            fr = syncmsg_next(m, F_RESULT, &pos_res);
            char id[40], res[16];
            if (fr == NULL || !syncmsg_field_str(fi, id, sizeof id) ||
                !syncmsg_field_str(fr, res, sizeof res)) {
                store_rollback(sy->store);
                return worker_fail(sy, "an upload result without its status");
            }
            int k = batch_index(sy, id);
            if (k < 0 || seen[k]) {
                store_rollback(sy->store);
                return worker_fail(sy, "an upload result for an event not in the batch");
            }
            seen[k] = true;
            n++;
            if (strcmp(res, "created") == 0 || strcmp(res, "duplicate") == 0)
                ok = store_outbox_ack(sy->store, id) != STORE_ERR;
            else if (strcmp(res, "rejected") == 0)
                ok = store_outbox_dead(sy->store, id, 200,
                                       error[0] ? error : "rejected by the server",
                                       now) != STORE_ERR;
            else {
                store_rollback(sy->store);
                return worker_fail(sy, "upload result '%s'", res);
            }
        }
        if (ok && n != sy->nbatch) {
            store_rollback(sy->store);
            return worker_fail(sy, "%d results for %d events", n, sy->nbatch);
        }
        /* Back towards full batches after a batch was refused as a whole. */
        sy->batch_limit = sy->batch_limit * 2 < sy->batch_cap ? sy->batch_limit * 2 : sy->batch_cap;
    } else if (strcmp(outcome, "dead") == 0 && sy->nbatch > 1) {
        /* Refused as a whole (400, 413, 422): most likely one event is to blame.
         * The batch goes again in halves, down to one event, so that only the
         * events the server refuses on their own become dead letters. A 413 says
         * the server takes less than this at once: batches stay below it until
         * lockerd is restarted or reloaded, instead of every other one being
         * refused again. */
        sy->batch_limit = sy->nbatch / 2;
        if (http == 413 && sy->batch_cap > sy->batch_limit)
            sy->batch_cap = sy->batch_limit;
        log_warnx("sync: the server refused a batch of %d events as a whole (HTTP %d: %s): "
                  "sending it again in batches of %d",
                  sy->nbatch, http, error, sy->batch_limit);
    } else if (strcmp(outcome, "dead") == 0) {
        ok = store_outbox_dead(sy->store, sy->batch_ids[0], http, error, now) != STORE_ERR;
        log_errx("sync: the server refused event %s for good (HTTP %d: %s): kept as a dead letter",
                 sy->batch_ids[0], http, error);
    } else if (halt) {
        sy->halted = true;
        snprintf(sy->halt_reason, sizeof sy->halt_reason, "HTTP %d: %s", http, error);
        log_errx("sync: uploads halted: HTTP %d: %s (fix it, then `lockerctl sync now`)", http,
                 error);
    } else {
        store_rollback(sy->store);
        return worker_fail(sy, "upload outcome '%s'", outcome);
    }
    /* Exactly one of commit (which rolls back by itself when it fails) or rollback
     * ends the transaction: one left open would swallow every later event's commit. */
    if (!halt && !ok)
        store_rollback(sy->store);
    if (!halt && (!ok || store_commit(sy->store) != STORE_OK)) {
        /* Nothing was dropped from the outbox: the batch goes again, and the
         * server answers "duplicate" for what it already has. */
        log_errx("sync: cannot record an upload result; the batch will be sent again");
    }
    sy->in_flight = false;
    upload_schedule(sy, 0);
}

/* ---------------------------------------------------------------- reports, heartbeat */

static void on_report(struct sync *sy, const struct syncmsg *m)
{
    char op[16];
    int k;
    if (!syncmsg_str(m, F_OP, op, sizeof op))
        return worker_fail(sy, "report without op");
    for (k = 0; k < OP_COUNT && strcmp(op_names[k], op) != 0; k++)
        ;
    if (k == OP_COUNT)
        return worker_fail(sy, "report for op '%s'", op);
    struct op_state *o = &sy->ops[k];
    int64_t now = clock_wall_ms();
    if (syncmsg_int(m, F_SUCCESS, 0) != 0) {
        o->last_ok_ms = now;
        o->retry_ms = 0;
        store_meta_set(sy->store, "sync.last_success", op);
        set_meta_ms(sy, "sync.last_success_ms", now);
        return;
    }
    o->last_err_ms = now;
    o->http = (int)syncmsg_int(m, F_HTTP, 0);
    str_field(m, F_ERROR, o->error, sizeof o->error);
    o->retry_ms = syncmsg_int(m, F_RETRY_MS, 0);
    log_warnx("sync: %s failed: %s%s", op, o->error, o->retry_ms ? " (will retry)" : "");
}

static void on_cycle_done(struct sync *sy, const struct syncmsg *m)
{
    int64_t cycle = syncmsg_int(m, F_CYCLE, 0);
    if (cycle < 1 || cycle > sy->cycle_asked)
        return worker_fail(sy, "cycle %" PRId64 " was never asked for", cycle);
    sy->cycle_done = cycle;
    sy->cycle_ok = syncmsg_int(m, F_SUCCESS, 0) != 0;
    usage_push(sy);
}

/* ---------------------------------------------------------------- daily usage summary */

static bool usage_on(const struct sync *sy)
{
    return enabled(sy) && sy->cfg->opendata_push;
}

/* The last day the city has, or "" (and false) when never set or unreadable. */
static bool usage_through(struct sync *sy, char out[OPENDATA_DATE_LEN])
{
    char buf[32];
    int64_t a, b;
    out[0] = '\0';
    if (store_meta_get(sy->store, USAGE_META, buf, sizeof buf) != STORE_OK ||
        !opendata_day_bounds(buf, &a, &b))
        return false;
    memcpy(out, buf, OPENDATA_DATE_LEN); /* day_bounds checked: 10 characters */
    return true;
}

/* Sends the oldest day the city does not have yet: days before today (local), after
 * the last confirmed one, at most USAGE_DAYS_BACK back. The first time push is on,
 * the last confirmed day is taken as the day before yesterday: yesterday is the
 * first day pushed, not years of history. */
static void usage_push(struct sync *sy)
{
    if (!usage_on(sy) || sy->fd < 0 || sy->halted || sy->usage_in_flight)
        return;
    int64_t now = clock_wall_ms();
    char today[OPENDATA_DATE_LEN], oldest[OPENDATA_DATE_LEN], through[OPENDATA_DATE_LEN];
    opendata_date(now, 0, today);
    opendata_date(now, -USAGE_DAYS_BACK, oldest);
    if (!usage_through(sy, through)) {
        opendata_date(now, -2, through);
        if (store_meta_set(sy->store, USAGE_META, through) != STORE_OK) {
            log_errx("sync: cannot record where the usage summaries start");
            return;
        }
    }
    /* A day too large for one message is given up like a refused one, and the loop
     * goes on with the next. */
    for (int guard = 0; guard <= USAGE_DAYS_BACK + 1; guard++) {
        char day[OPENDATA_DATE_LEN], err[160];
        int64_t from, to;
        if (!opendata_day_bounds(through, &from, &to))
            return;
        opendata_date(to, 0, day);
        if (strcmp(day, oldest) < 0)
            snprintf(day, sizeof day, "%s", oldest);
        if (strcmp(day, today) >= 0)
            return; /* today is not over */
        json_t *doc = opendata_day_document(sy->store, sy->cfg, day, now, err, sizeof err);
        if (doc == NULL) {
            /* A database error: tried again on the next occasion. */
            log_errx("sync: usage summary of %s: %s", day, err);
            return;
        }
        char *body = json_dumps(doc, JSON_COMPACT);
        json_decref(doc);
        if (body == NULL)
            return;
        if (strlen(body) <= BODY_MAX) {
            struct syncmsg_builder b;
            syncmsg_start(&b, sy->wbuf, sizeof sy->wbuf, SM_USAGE);
            syncmsg_put_str(&b, F_DATE, day);
            syncmsg_put_str(&b, F_BODY, body);
            free(body);
            if (send_msg(sy, &b)) {
                sy->usage_in_flight = true;
                snprintf(sy->usage_date, sizeof sy->usage_date, "%s", day);
                log_debug("sync: usage summary of %s sent to the worker", day);
            }
            return;
        }
        free(body);
        log_errx("sync: the usage summary of %s is larger than %d bytes: not sent", day, BODY_MAX);
        snprintf(sy->usage_refused, sizeof sy->usage_refused, "%s", day);
        snprintf(sy->usage_refused_error, sizeof sy->usage_refused_error, "larger than %d bytes",
                 BODY_MAX);
        if (store_meta_set(sy->store, USAGE_META, day) != STORE_OK)
            return;
        snprintf(through, sizeof through, "%s", day);
    }
}

static void on_usage_done(struct sync *sy, const struct syncmsg *m)
{
    char date[OPENDATA_DATE_LEN], outcome[16], error[256] = "";
    int http = (int)syncmsg_int(m, F_HTTP, 0);
    if (!sy->usage_in_flight || !syncmsg_str(m, F_DATE, date, sizeof date) ||
        strcmp(date, sy->usage_date) != 0 || !syncmsg_str(m, F_OUTCOME, outcome, sizeof outcome) ||
        !str_field(m, F_ERROR, error, sizeof error))
        return worker_fail(sy, "a usage result for no day in flight");
    if (strcmp(outcome, "dead") == 0) {
        /* The same document would be refused again; later days must not wait for it. */
        log_errx("sync: the city refused the usage summary of %s for good (HTTP %d: %s); "
                 "going on with the next day",
                 date, http, error);
        snprintf(sy->usage_refused, sizeof sy->usage_refused, "%s", date);
        snprintf(sy->usage_refused_error, sizeof sy->usage_refused_error, "HTTP %d: %s", http,
                 error);
    } else if (strcmp(outcome, "done") == 0) {
        log_info("sync: usage summary of %s delivered", date);
    } else {
        return worker_fail(sy, "usage outcome '%s'", outcome);
    }
    sy->usage_in_flight = false;
    if (store_meta_set(sy->store, USAGE_META, date) != STORE_OK) {
        /* Not recorded: the day goes again on the next occasion (a PUT replaces). */
        log_errx("sync: cannot record the usage summary of %s as delivered", date);
        return;
    }
    usage_push(sy);
}

static void on_usage_timer(void *arg)
{
    struct sync *sy = arg;
    sy->usage_timer = 0;
    usage_push(sy);
    usage_schedule(sy);
}

/* Shortly after the next local midnight, and at least hourly so that a changed wall
 * clock (NTP, the simulated clock) is noticed. */
static void usage_schedule(struct sync *sy)
{
    if (sy->usage_timer > 0)
        loop_remove(sy->loop, sy->usage_timer);
    sy->usage_timer = 0;
    if (!usage_on(sy))
        return;
    int64_t now = clock_wall_ms(), from, to, delay = USAGE_RECHECK_MS;
    char today[OPENDATA_DATE_LEN];
    opendata_date(now, 0, today);
    if (opendata_day_bounds(today, &from, &to) && to + USAGE_AFTER_MS - now < delay)
        delay = to + USAGE_AFTER_MS - now;
    if (delay < 1000)
        delay = 1000;
    int id = loop_add_timer(sy->loop, delay, on_usage_timer, sy);
    if (id > 0)
        sy->usage_timer = id;
}

static const char *comp_field(json_t *c, const char *key)
{
    const char *v = json_string_value(json_object_get(c, key));
    return v != NULL ? v : "unknown";
}

static void heartbeat_send(struct sync *sy)
{
    if (sy->fd < 0)
        return;
    char when[40];
    time_format_utc(clock_wall_ms(), when, sizeof when);
    json_t *status = station_status_json(sy->station);
    json_t *comps = json_array();
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(status, "compartments"), i, c)
    {
        json_array_append_new(
            comps, json_pack("{s:O?,s:s,s:s,s:s,s:b}", "number", json_object_get(c, "number"),
                             "state", comp_field(c, "state"), "door", comp_field(c, "door"), "key",
                             comp_field(c, "key"), "outOfService",
                             json_object_get(c, "outOfServiceReason") != NULL));
    }
    json_decref(status);
    json_t *doc = json_pack(
        "{s:s,s:s,s:s,s:s,s:{s:b},s:I,s:I,s:o}", "stationId", sy->cfg->station_id, "version",
        LOCKERD_VERSION, "bootId", store_boot_id(sy->store), "sentAt", when, "clock", "synced",
        clock_synced(), "outboxDepth", (json_int_t)store_outbox_depth(sy->store), "deadLetters",
        (json_int_t)store_dead_letter_count(sy->store), "compartments", comps);
    char *body = doc != NULL ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (body == NULL)
        return;
    struct syncmsg_builder b;
    syncmsg_start(&b, sy->wbuf, sizeof sy->wbuf, SM_HEARTBEAT);
    syncmsg_put_str(&b, F_BODY, body);
    free(body);
    send_msg(sy, &b);
}

static void on_heartbeat_timer(void *arg)
{
    struct sync *sy = arg;
    sy->heartbeat_timer = 0;
    heartbeat_send(sy);
    heartbeat_schedule(sy);
}

static void heartbeat_schedule(struct sync *sy)
{
    if (sy->heartbeat_timer > 0)
        loop_remove(sy->loop, sy->heartbeat_timer);
    sy->heartbeat_timer = 0;
    if (!enabled(sy))
        return;
    int id = loop_add_timer(sy->loop, sy->heartbeat_s * 1000, on_heartbeat_timer, sy);
    if (id > 0)
        sy->heartbeat_timer = id;
}

/* ---------------------------------------------------------------- receiving */

static void dispatch(struct sync *sy, const struct syncmsg *m)
{
    switch (m->type) {
    case SM_ITEM_RES:
    case SM_ITEM_CRED:
        on_item(sy, m);
        return;
    case SM_ITEMS:
        on_items(sy, m);
        return;
    case SM_PAGE_END:
        on_page_end(sy, m);
        return;
    case SM_FEED_GONE:
        on_feed_gone(sy, m);
        return;
    case SM_STATION:
        on_station(sy, m);
        return;
    case SM_UPLOAD_DONE:
        on_upload_done(sy, m);
        return;
    case SM_REPORT:
        on_report(sy, m);
        return;
    case SM_CYCLE_DONE:
        on_cycle_done(sy, m);
        return;
    case SM_USAGE_DONE:
        on_usage_done(sy, m);
        return;
    case SM_CONFIG:
    case SM_POLL:
    case SM_UPLOAD:
    case SM_HEARTBEAT:
    case SM_USAGE:
    case SM_TYPE_MAX:
        break;
    }
    worker_fail(sy, "message %s is not for the main process", syncmsg_type_name(m->type));
}

static void on_worker_msg(int fd, uint32_t events, void *arg)
{
    struct sync *sy = arg;
    (void)events;
    /* A bounded number per wakeup, so that a chatty worker cannot starve taps. */
    for (int i = 0; i < 64 && sy->fd == fd; i++) {
        struct iovec iov = {sy->rbuf, sizeof sy->rbuf};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            char why[128];
            snprintf(why, sizeof why, "the worker went away%s%s", n < 0 ? ": " : "",
                     n < 0 ? strerror(errno) : "");
            log_warnx("sync: %s", why);
            worker_stop(sy, NULL);
            snprintf(sy->worker_error, sizeof sy->worker_error, "%s", why);
            worker_schedule_restart(sy);
            return;
        }
        char why[160];
        if (mh.msg_flags & MSG_TRUNC)
            return worker_fail(sy, "a message longer than %d bytes", SYNCMSG_MAX);
        if (syncmsg_decode(sy->rbuf, (size_t)n, &sy->msg, why, sizeof why) < 0)
            return worker_fail(sy, "a malformed message: %s", why);
        dispatch(sy, &sy->msg);
        /* A page applied is enough for one turn: a tap waiting meanwhile goes first
         * (the socket stays readable, so the loop comes back). */
        if (sy->msg.type == SM_PAGE_END)
            return;
    }
}

/* ---------------------------------------------------------------- public */

struct sync *sync_new(const struct config *cfg, struct loop *loop, struct store *store,
                      struct station *station, char *err, size_t errlen)
{
    struct sync *sy = xcalloc(1, sizeof *sy);
    sy->cfg = cfg;
    sy->loop = loop;
    sy->store = store;
    sy->station = station;
    sy->fd = -1;
    sy->restart_backoff_ms = RESTART_MIN_MS;
    sy->batch_limit = sy->batch_cap = BATCH_MAX;
    sy->heartbeat_s = cfg->sync_heartbeat_ms / 1000;
    sy->res = xcalloc(PAGE_MAX, sizeof *sy->res);
    sy->cred = xcalloc(PAGE_MAX, sizeof *sy->cred);
    sy->batch_ids = xcalloc(BATCH_MAX, sizeof *sy->batch_ids);
    /* Tests put a misbehaving worker in its place (lockerd(8), ENVIRONMENT). */
    const char *other = getenv("LOCKERD_SYNC_WORKER");
    ssize_t n = other != NULL && other[0] == '/' && strlen(other) < sizeof sy->exe
                    ? (ssize_t)strlen(strcpy(sy->exe, other))
                    : readlink("/proc/self/exe", sy->exe, sizeof sy->exe - 1);
    if (n <= 0) {
        snprintf(err, errlen, "sync: cannot find my own executable: %s", strerror(errno));
        sync_free(sy);
        return NULL;
    }
    sy->exe[n] = '\0';
    if (store_add_append_hook(store, on_append, sy) != STORE_OK) {
        snprintf(err, errlen, "sync: cannot watch the outbox");
        sync_free(sy);
        return NULL;
    }
    if (enabled(sy)) {
        worker_start(sy);
        heartbeat_schedule(sy);
        usage_schedule(sy);
    }
    return sy;
}

void sync_free(struct sync *sy)
{
    if (sy == NULL)
        return;
    store_remove_append_hook(sy->store, on_append, sy);
    worker_stop(sy, NULL);
    if (sy->restart_timer > 0)
        loop_remove(sy->loop, sy->restart_timer);
    if (sy->heartbeat_timer > 0)
        loop_remove(sy->loop, sy->heartbeat_timer);
    if (sy->usage_timer > 0)
        loop_remove(sy->loop, sy->usage_timer);
    free(sy->res);
    free(sy->cred);
    free(sy->batch_ids);
    free(sy);
}

void sync_reconfigure(struct sync *sy, const struct config *cfg)
{
    sy->cfg = cfg;
    sy->heartbeat_s = cfg->sync_heartbeat_ms / 1000;
    worker_stop(sy, NULL);
    if (sy->restart_timer > 0)
        loop_remove(sy->loop, sy->restart_timer);
    sy->restart_timer = 0;
    sy->restart_backoff_ms = RESTART_MIN_MS;
    sy->halted = false;
    sy->worker_error[0] = '\0';
    sy->batch_limit = sy->batch_cap = BATCH_MAX; /* a new server may take more */
    worker_start(sy);
    heartbeat_schedule(sy);
    usage_schedule(sy);
}

int64_t sync_poll_now(struct sync *sy)
{
    if (!enabled(sy))
        return -1;
    sy->halted = false;
    sy->halt_reason[0] = '\0';
    if (sy->fd < 0) {
        if (sy->restart_timer > 0)
            loop_remove(sy->loop, sy->restart_timer);
        sy->restart_timer = 0;
        sy->restart_backoff_ms = RESTART_MIN_MS;
        worker_start(sy);
    }
    int64_t cycle = ++sy->cycle_asked;
    if (sy->fd < 0) {
        /* No worker (TLS files missing): the cycle ends at once, failed. */
        sy->cycle_done = cycle;
        sy->cycle_ok = false;
        return cycle;
    }
    struct syncmsg_builder b;
    syncmsg_start(&b, sy->wbuf, sizeof sy->wbuf, SM_POLL);
    syncmsg_put_int(&b, F_CYCLE, cycle);
    if (!send_msg(sy, &b)) {
        sy->cycle_done = cycle;
        sy->cycle_ok = false;
        return cycle;
    }
    upload_schedule(sy, 0);
    heartbeat_send(sy);
    return cycle;
}

static void json_ms(json_t *o, const char *key, int64_t ms)
{
    char buf[40];
    if (ms <= 0) {
        json_object_set_new(o, key, json_null());
        return;
    }
    time_format_utc(ms, buf, sizeof buf);
    json_object_set_new(o, key, json_string(buf));
}

static int64_t meta_ms(struct sync *sy, const char *key)
{
    char buf[32];
    if (store_meta_get(sy->store, key, buf, sizeof buf) != STORE_OK)
        return 0;
    return strtoll(buf, NULL, 10);
}

json_t *sync_status_json(struct sync *sy, bool brief)
{
    json_t *o = json_object();
    json_object_set_new(o, "mode", json_string(enabled(sy) ? "city" : "local"));
    json_object_set_new(o, "configured", json_boolean(enabled(sy)));
    json_object_set_new(o, "outboxDepth", json_integer(store_outbox_depth(sy->store)));
    json_object_set_new(o, "deadLetters", json_integer(store_dead_letter_count(sy->store)));
    json_ms(o, "lastSuccess", meta_ms(sy, "sync.last_success_ms"));
    /* The most recent error of any operation. */
    const struct op_state *worst = NULL;
    for (int k = 0; k < OP_COUNT; k++) {
        const struct op_state *op = &sy->ops[k];
        if (op->last_err_ms > op->last_ok_ms &&
            (worst == NULL || op->last_err_ms > worst->last_err_ms))
            worst = op;
    }
    if (sy->worker_error[0] != '\0' && enabled(sy))
        json_object_set_new(o, "lastError",
                            json_pack("{s:s,s:s}", "op", "worker", "message", sy->worker_error));
    else if (sy->halted)
        json_object_set_new(o, "lastError",
                            json_pack("{s:s,s:s}", "op", "events", "message", sy->halt_reason));
    else if (worst != NULL)
        json_object_set_new(o, "lastError",
                            json_pack("{s:s,s:i,s:s}", "op", op_names[worst - sy->ops], "http",
                                      worst->http, "message", worst->error));
    else
        json_object_set_new(o, "lastError", json_null());
    json_object_set_new(o, "halted", json_boolean(sy->halted));
    if (brief || !enabled(sy))
        return o;

    json_object_set_new(o, "url", json_string(sy->cfg->sync_url));
    json_object_set_new(o, "stationName", json_string(sy->station_name));
    json_object_set_new(o, "worker",
                        json_pack("{s:b,s:i,s:I}", "running", sy->fd >= 0, "pid", (int)sy->pid,
                                  "restarts", (json_int_t)sy->restarts));
    json_t *cursor = json_object();
    for (int feed = SYNC_FEED_RESERVATIONS; feed <= SYNC_FEED_CREDENTIALS; feed++) {
        char mk[64], buf[2100];
        meta_key(mk, sizeof mk, "cursor", feed);
        json_t *v = store_meta_get(sy->store, mk, buf, sizeof buf) == STORE_OK && buf[0]
                        ? json_string(buf)
                        : json_null();
        json_object_set_new(cursor, feed == SYNC_FEED_RESERVATIONS ? "reservations" : "credentials",
                            v);
    }
    json_object_set_new(o, "cursor", cursor);
    json_t *confirmed = json_object();
    json_ms(confirmed, "reservations", meta_ms(sy, STORE_META_CONFIRMED_RESERVATIONS));
    json_ms(confirmed, "credentials", meta_ms(sy, STORE_META_CONFIRMED_CREDENTIALS));
    json_object_set_new(o, "confirmed", confirmed);
    json_t *ops = json_object();
    for (int k = 0; k < OP_COUNT; k++) {
        const struct op_state *op = &sy->ops[k];
        json_t *j = json_object();
        json_ms(j, "lastSuccess", op->last_ok_ms);
        json_ms(j, "lastError", op->last_err_ms);
        if (op->last_err_ms > 0) {
            json_object_set_new(j, "http", json_integer(op->http));
            json_object_set_new(j, "error", json_string(op->error));
        }
        json_object_set_new(ops, op_names[k], j);
    }
    json_object_set_new(o, "operations", ops);
    json_object_set_new(o, "cycle",
                        json_pack("{s:I,s:I,s:b}", "asked", (json_int_t)sy->cycle_asked, "done",
                                  (json_int_t)sy->cycle_done, "ok", sy->cycle_ok));
    json_object_set_new(o, "uploadInFlight", json_boolean(sy->in_flight));
    char through[OPENDATA_DATE_LEN];
    json_t *usage = json_pack("{s:b}", "push", usage_on(sy));
    json_object_set_new(usage, "pushedThrough",
                        usage_through(sy, through) ? json_string(through) : json_null());
    json_object_set_new(usage, "inFlight",
                        sy->usage_in_flight ? json_string(sy->usage_date) : json_null());
    json_object_set_new(usage, "lastRefused",
                        sy->usage_refused[0] ? json_pack("{s:s,s:s}", "date", sy->usage_refused,
                                                         "error", sy->usage_refused_error)
                                             : json_null());
    json_object_set_new(o, "usage", usage);
    return o;
}
