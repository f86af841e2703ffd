/*
 * syncworker.h - the sync worker: the only code that speaks HTTP and TLS to the city
 * API and parses what it sends (docs/api.md).
 *
 * lockerd starts it as a separate process (`lockerd --sync-worker FD`, see sync.c)
 * that runs as an unprivileged sandbox: no access to GPIO, the reader or the
 * database. It owns one event loop with curl's multi interface on it and talks to
 * the main process only through syncmsg messages on FD. Everything it learns from
 * the network it turns into typed messages; the main process validates them again
 * and decides what to store.
 */
#ifndef LOCKERD_SYNCWORKER_H
#define LOCKERD_SYNCWORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Runs the worker on the socket fd until the main process closes it. Returns the
 * process exit status. */
int syncworker_main(int fd);

/* Applies the worker's sandbox to the calling process: drops to the unprivileged user
 * when running as root, sets no_new_privs and restricts file access with Landlock
 * to reading what name resolution needs (see syncworker.c). Returns 0, or -1 if a
 * step that the kernel supports failed. */
int syncworker_sandbox(void);

/* `lockerd --sandbox-probe PATH...`: applies the sandbox, then tries to open each
 * path read-write and read-only and prints one line per path. For tests. */
int syncworker_probe(int argc, char **argv);

/* ---- pure parsers: no I/O, no globals; for the worker, its unit tests and fuzzers ----
 *
 * Error convention for this section: int functions return 0 on success and -1 with
 * a reason (clean UTF-8, no control characters) in err; bool functions return false
 * on any malformed input. Nothing here logs.
 */

#define SYNC_BODY_MAX         (8u << 20) /* larger response bodies are refused */
#define SYNC_PAGE_ITEMS_MAX   500        /* the contract's largest `limit` */
#define SYNC_ID_MAX           63
#define SYNC_NAME_MAX         127
#define SYNC_COMPARTMENTS_MAX 32
#define SYNC_CLUBS_MAX        16
#define SYNC_URL_MAX          2048
#define SYNC_BATCH_MAX        100
#define SYNC_EVENT_ID_LEN     36
#define SYNC_INTERVAL_MIN     5
#define SYNC_INTERVAL_MAX     86400

/* One validated RPDE item. A deleted item has only id, modified and deleted set. */
struct sync_item {
    char id[SYNC_ID_MAX + 1];
    int64_t modified; /* ms since the epoch, >= 0 */
    bool deleted;
    char status[16]; /* "confirmed"/"cancelled" or "active"/"revoked" */
    /* reservations */
    int64_t start, end; /* ms since the epoch, end > start */
    char club[SYNC_ID_MAX + 1];
    char club_name[SYNC_NAME_MAX + 1];
    int compartments[SYNC_COMPARTMENTS_MAX]; /* 1..32, distinct, in the order sent */
    int ncompartments;                       /* >= 1 */
    /* credentials */
    uint8_t uid_hmac[32];
    char card_type[16]; /* "desfire" or "uid" */
    char member[SYNC_ID_MAX + 1];
    char member_name[SYNC_NAME_MAX + 1];
    char clubs[SYNC_CLUBS_MAX][SYNC_ID_MAX + 1];
    int nclubs;
    int64_t valid_from, valid_until; /* ms, 0 = none */
};

/* One validated page. items is owned by the page: free with sync_page_free(). */
struct sync_page {
    struct sync_item *items;
    size_t count;
    char next[SYNC_URL_MAX + 1];
    bool last_page; /* items was empty */
};

/* RFC 3339 date-time ("2026-11-28T17:00:00Z", "...T17:00:00.123+01:00") to ms since
 * the epoch. Fractional digits beyond milliseconds are truncated; a leap second
 * (:60) reads as .999 of the second before it. */
bool sync_parse_rfc3339(const char *s, int64_t *ms);

/* True when url is an https URL under base_url: same scheme, host and port, a path
 * below base_url's path, no user info, no fragment, no dot segments, no encoded
 * dots or slashes, only printable ASCII. */
bool sync_url_under(const char *url, const char *base_url);

/* Parses and validates a whole RPDE page of feed (SYNC_FEED_RESERVATIONS or
 * SYNC_FEED_CREDENTIALS, syncmsg.h): every item, their (modified, id) order, and
 * that `next` lies under base_url. On failure nothing is left to free. */
int sync_parse_page(const char *body, size_t len, int feed, const char *base_url,
                    struct sync_page *page, char *err, size_t errlen);
void sync_page_free(struct sync_page *page);

/* The station config (GET /stations/{id}); intervals are clamped to
 * [SYNC_INTERVAL_MIN, SYNC_INTERVAL_MAX] seconds. station_id: the id the body must
 * name, or NULL to accept any. */
struct sync_station {
    char name[SYNC_NAME_MAX + 1];
    int64_t interval_res, interval_cred, interval_config, interval_heartbeat;
};
int sync_parse_station(const char *body, size_t len, const char *station_id,
                       struct sync_station *st, char *err, size_t errlen);

enum sync_result { SYNC_RESULT_CREATED, SYNC_RESULT_DUPLICATE, SYNC_RESULT_REJECTED };
const char *sync_result_name(enum sync_result r);

/* The 200 answer to an event upload of ids[0..nids): results[i] receives the result
 * for ids[i]. Every id must have exactly one result and no result may name an id
 * outside the batch (any order is accepted). */
int sync_parse_upload(const char *body, size_t len, const char *const *ids, size_t nids,
                      enum sync_result *results, char *err, size_t errlen);

/* "title: detail" of an RFC 9457 problem body, sanitised as by sync_sanitize().
 * Returns false (out = "") when the body is no problem object. */
bool sync_problem_text(const char *body, size_t len, char *out, size_t outlen);

/* Copies in[0..len) to out as valid UTF-8 without control characters (C0, DEL, C1):
 * invalid bytes become '?', controls a space; cut at a character boundary so that
 * it fits outlen (>= 1) with its NUL. */
void sync_sanitize(const char *in, size_t len, char *out, size_t outlen);

#endif
