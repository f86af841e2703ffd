/*
 * syncworker.c - the sync worker process: HTTPS to the city API (docs/api.md,
 * spec/sync-contract.md), RPDE feeds, event uploads and heartbeats.
 *
 * Everything the network sends is untrusted and parsed here, in a process that has
 * dropped its privileges and can read only what name resolution needs. The worker
 * keeps no state beyond what the main process tells it (SM_CONFIG carries the
 * cursors); what it learns goes back as typed syncmsg messages, a whole validated
 * page at a time, so the main process never sees half a page.
 *
 * Structure: one event loop (loop.c) carries both the socket to the main process and
 * curl's multi interface (CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION); nothing
 * blocks. There are five operations (config, the two feeds, event upload,
 * heartbeat), each with at most one transfer in flight and one timer.
 *
 * Memory is bounded by one page: a response body is capped at SYNC_BODY_MAX, and a
 * feed fetches its next page only after the messages of the previous one have left
 * the outgoing queue.
 *
 * Error convention: the pure parsers return 0 / -1 with a reason in the caller's
 * buffer (see syncworker.h); the worker reports request failures to the main process
 * as SM_REPORT and ends with status 2 on a malformed message from it.
 */
#include "daemon/syncworker.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/landlock.h>
#include <linux/seccomp.h>

#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/loop.h"
#include "daemon/syncmsg.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SYNCWORKER_SANITIZED 1
#endif
#endif

/* Rights newer than the build host's <linux/landlock.h>; masked by the running ABI. */
#ifndef LANDLOCK_ACCESS_FS_REFER
#define LANDLOCK_ACCESS_FS_REFER (1ULL << 13)
#endif
#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)
#endif
#ifndef LANDLOCK_ACCESS_FS_IOCTL_DEV
#define LANDLOCK_ACCESS_FS_IOCTL_DEV (1ULL << 15)
#endif

#define CONNECT_TIMEOUT_MS 10000
#define TOTAL_TIMEOUT_MS   60000
#define BACKOFF_BASE_MS    1000
#define BACKOFF_CAP_MS     300000
#define LASTPAGE_FIRST_MS  5000
#define RETRY_AFTER_MAX_S  86400
/* The outgoing queue normally holds at most one page; more means the main process
 * has stopped reading, and the worker gives up rather than grow. */
#define OUTQ_MAX_BYTES (32u << 20)

/* ======================================================================
 * Pure parsers
 * ====================================================================== */

static int perr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int perr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* Decodes one UTF-8 sequence at p[0..n); returns its length and the code point, or 0
 * when it is not strict UTF-8 (the same rules as syncmsg.c's check). */
static size_t utf8_next(const unsigned char *p, size_t n, uint32_t *cp)
{
    unsigned char c = p[0];
    size_t more;
    uint32_t v, min;

    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if ((c & 0xe0) == 0xc0) {
        more = 1, v = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        more = 2, v = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        more = 3, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n <= more)
        return 0;
    for (size_t k = 1; k <= more; k++) {
        if ((p[k] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (p[k] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return more + 1;
}

static bool is_control(uint32_t cp)
{
    return cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp < 0xa0);
}

void sync_sanitize(const char *in, size_t len, char *out, size_t outlen)
{
    const unsigned char *p = (const unsigned char *)in;
    size_t i = 0, o = 0;

    if (outlen == 0)
        return;
    while (i < len) {
        uint32_t cp;
        size_t n = utf8_next(p + i, len - i, &cp);
        const char *rep = NULL;
        if (n == 0) {
            rep = "?", n = 1;
        } else if (is_control(cp)) {
            rep = " ";
        }
        size_t outn = rep != NULL ? 1 : n;
        if (o + outn >= outlen)
            break;
        memcpy(out + o, rep != NULL ? rep : (const char *)p + i, outn);
        o += outn;
        i += n;
    }
    out[o] = '\0';
}

static bool valid_id(const char *s, size_t n)
{
    if (n < 1 || n > SYNC_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!isalnum(c) && c != '.' && c != '_' && c != ':' && c != '-')
            return false;
    }
    return true;
}

/* Names: 0..127 bytes of UTF-8 without control characters (jansson has already
 * refused invalid UTF-8 and NUL; checked again so the parser does not depend on it). */
static bool valid_name(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;

    if (n > SYNC_NAME_MAX)
        return false;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = utf8_next(p + i, n - i, &cp);
        if (k == 0 || cp == 0 || is_control(cp))
            return false;
        i += k;
    }
    return true;
}

static bool digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

bool sync_parse_rfc3339(const char *s, int64_t *ms)
{
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int year, mon, day, hour, min, sec, frac = 0, offset_min = 0;
    const char *p = s;

    /* date-time = full-date "T" full-time; exactly these widths (RFC 3339 5.6). */
    if (strlen(s) < 20 || !digits(p, 4, &year) || p[4] != '-' || !digits(p + 5, 2, &mon) ||
        p[7] != '-' || !digits(p + 8, 2, &day) || (p[10] != 'T' && p[10] != 't') ||
        !digits(p + 11, 2, &hour) || p[13] != ':' || !digits(p + 14, 2, &min) || p[16] != ':' ||
        !digits(p + 17, 2, &sec))
        return false;
    p += 19;
    if (*p == '.') {
        int n = 0;
        p++;
        while (*p >= '0' && *p <= '9') {
            /* Milliseconds from the first three digits; the rest is truncated. */
            if (n < 3)
                frac = frac * 10 + (*p - '0');
            n++, p++;
        }
        if (n == 0 || n > 9)
            return false;
        for (int k = n; k < 3; k++)
            frac *= 10;
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (!digits(p + 1, 2, &oh) || p[3] != ':' || !digits(p + 4, 2, &om) || oh > 23 || om > 59)
            return false;
        offset_min = (oh * 60 + om) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return false;
    }
    if (*p != '\0')
        return false;

    if (mon < 1 || mon > 12 || day < 1 || hour > 23 || min > 59 || sec > 60)
        return false;
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day > mdays[mon - 1] + (mon == 2 && leap ? 1 : 0))
        return false;
    if (sec == 60) {
        /* POSIX time has no leap seconds; keep the order within the minute. */
        sec = 59;
        frac = 999;
    }

    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = year - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = day;
    tm.tm_hour = hour;
    tm.tm_min = min;
    tm.tm_sec = sec;
    time_t t = timegm(&tm);
    *ms = ((int64_t)t - (int64_t)offset_min * 60) * 1000 + frac;
    return true;
}

/* Printable ASCII without space, backslash or fragment marker. */
static bool url_chars_ok(const char *u)
{
    for (const unsigned char *p = (const unsigned char *)u; *p != '\0'; p++) {
        if (*p <= 0x20 || *p >= 0x7f || *p == '\\' || *p == '#')
            return false;
    }
    return true;
}

struct url_parts {
    char *scheme, *host, *port, *path, *user, *password, *options, *fragment;
};

static void url_parts_free(struct url_parts *u)
{
    curl_free(u->scheme);
    curl_free(u->host);
    curl_free(u->port);
    curl_free(u->path);
    curl_free(u->user);
    curl_free(u->password);
    curl_free(u->options);
    curl_free(u->fragment);
}

static bool url_split(const char *url, struct url_parts *u)
{
    CURLU *h = curl_url();
    bool ok;

    memset(u, 0, sizeof(*u));
    if (h == NULL)
        return false;
    ok = curl_url_set(h, CURLUPART_URL, url, 0) == CURLUE_OK &&
         curl_url_get(h, CURLUPART_SCHEME, &u->scheme, 0) == CURLUE_OK &&
         curl_url_get(h, CURLUPART_HOST, &u->host, 0) == CURLUE_OK &&
         curl_url_get(h, CURLUPART_PORT, &u->port, CURLU_DEFAULT_PORT) == CURLUE_OK &&
         curl_url_get(h, CURLUPART_PATH, &u->path, 0) == CURLUE_OK;
    /* These are absent in a good URL; their getters fail with "no such part". */
    curl_url_get(h, CURLUPART_USER, &u->user, 0);
    curl_url_get(h, CURLUPART_PASSWORD, &u->password, 0);
    curl_url_get(h, CURLUPART_OPTIONS, &u->options, 0);
    curl_url_get(h, CURLUPART_FRAGMENT, &u->fragment, 0);
    curl_url_cleanup(h);
    if (!ok)
        url_parts_free(u);
    return ok;
}

/* The raw path (between authority and query) has no "." or ".." segment and no
 * percent-encoded '.', '/' or '\': curl would normalise those into another path. */
static bool raw_path_plain(const char *url)
{
    const char *p = strstr(url, "://");
    if (p == NULL)
        return false;
    p = strchr(p + 3, '/');
    if (p == NULL)
        return true;
    const char *end = strchr(p, '?');
    size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '/') {
            size_t k = i + 1;
            size_t dots = 0;
            while (k < n && p[k] == '.')
                k++, dots++;
            if ((dots == 1 || dots == 2) && (k == n || p[k] == '/'))
                return false;
        }
        if (p[i] == '%' && i + 2 < n) {
            char a = p[i + 1], b = (char)tolower((unsigned char)p[i + 2]);
            if ((a == '2' && (b == 'e' || b == 'f')) || (a == '5' && b == 'c'))
                return false;
        }
    }
    return true;
}

bool sync_url_under(const char *url, const char *base_url)
{
    struct url_parts u, b;
    bool ok = false;

    if (strlen(url) > SYNC_URL_MAX || !url_chars_ok(url) || !raw_path_plain(url) ||
        strncasecmp(url, "https://", 8) != 0)
        return false;
    if (!url_split(url, &u))
        return false;
    if (!url_split(base_url, &b)) {
        url_parts_free(&u);
        return false;
    }
    if (u.user != NULL || u.password != NULL || u.options != NULL || u.fragment != NULL)
        goto out;
    if (strcasecmp(u.scheme, "https") != 0 || strcasecmp(b.scheme, "https") != 0 ||
        strcasecmp(u.host, b.host) != 0 || strcmp(u.port, b.port) != 0)
        goto out;
    /* Path prefix on a segment boundary: /keystation/v1 covers /keystation/v1/x, not
     * /keystation/v10. */
    size_t bl = strlen(b.path);
    while (bl > 0 && b.path[bl - 1] == '/')
        bl--;
    ok = strncmp(u.path, b.path, bl) == 0 && u.path[bl] == '/';
out:
    url_parts_free(&u);
    url_parts_free(&b);
    return ok;
}

/* A string member of obj, or NULL when absent or not a string. */
static const char *jstr(json_t *obj, const char *key, size_t *len)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_string(v))
        return NULL;
    *len = json_string_length(v);
    return json_string_value(v);
}

static bool copy_id(json_t *obj, const char *key, char *out)
{
    size_t n;
    const char *s = jstr(obj, key, &n);
    if (s == NULL || !valid_id(s, n))
        return false;
    memcpy(out, s, n + 1);
    return true;
}

/* A name that may be absent (then ""). */
static bool copy_name(json_t *obj, const char *key, char *out)
{
    size_t n;
    json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v)) {
        out[0] = '\0';
        return true;
    }
    const char *s = jstr(obj, key, &n);
    if (s == NULL || !valid_name(s, n))
        return false;
    memcpy(out, s, n + 1);
    return true;
}

static bool one_of(const char *s, const char *a, const char *b)
{
    return s != NULL && (strcmp(s, a) == 0 || strcmp(s, b) == 0);
}

static bool jdate(json_t *obj, const char *key, bool nullable, int64_t *ms)
{
    json_t *v = json_object_get(obj, key);
    if (nullable && (v == NULL || json_is_null(v))) {
        *ms = 0;
        return true;
    }
    /* Dates before 1970 or after 9999 mean nothing to a station. */
    return json_is_string(v) && sync_parse_rfc3339(json_string_value(v), ms) && *ms > 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)tolower((unsigned char)c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static const char *parse_reservation(json_t *d, struct sync_item *it)
{
    size_t n;
    const char *s;

    if (!jdate(d, "startDate", false, &it->start))
        return "bad startDate";
    if (!jdate(d, "endDate", false, &it->end))
        return "bad endDate";
    if (it->end <= it->start)
        return "endDate not after startDate";
    json_t *org = json_object_get(d, "organizer");
    if (!json_is_object(org))
        return "no organizer";
    if (!copy_id(org, "identifier", it->club))
        return "bad organizer identifier";
    if (!copy_name(org, "name", it->club_name))
        return "bad organizer name";
    json_t *comps = json_object_get(d, "compartments");
    if (!json_is_array(comps) || json_array_size(comps) < 1 ||
        json_array_size(comps) > SYNC_COMPARTMENTS_MAX)
        return "compartments must be 1..32 entries";
    for (size_t i = 0; i < json_array_size(comps); i++) {
        json_t *c = json_array_get(comps, i);
        if (!json_is_integer(c) || json_integer_value(c) < 1 || json_integer_value(c) > 32)
            return "compartment outside 1..32";
        int v = (int)json_integer_value(c);
        for (int k = 0; k < it->ncompartments; k++) {
            if (it->compartments[k] == v)
                return "compartment listed twice";
        }
        it->compartments[it->ncompartments++] = v;
    }
    s = jstr(d, "reservationStatus", &n);
    if (!one_of(s, "confirmed", "cancelled"))
        return "bad reservationStatus";
    memcpy(it->status, s, n + 1);
    return NULL;
}

static const char *parse_credential(json_t *d, struct sync_item *it)
{
    size_t n;
    const char *s = jstr(d, "uidHmac", &n);

    if (s == NULL || n != 64)
        return "uidHmac must be 64 hex digits";
    for (size_t i = 0; i < 32; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return "uidHmac must be 64 hex digits";
        it->uid_hmac[i] = (uint8_t)(hi << 4 | lo);
    }
    s = jstr(d, "cardType", &n);
    if (!one_of(s, "desfire", "uid"))
        return "bad cardType";
    memcpy(it->card_type, s, n + 1);
    json_t *mem = json_object_get(d, "member");
    if (!json_is_object(mem))
        return "no member";
    if (!copy_id(mem, "identifier", it->member))
        return "bad member identifier";
    if (!copy_name(mem, "name", it->member_name))
        return "bad member name";
    json_t *clubs = json_object_get(d, "clubs");
    if (clubs != NULL && !json_is_array(clubs))
        return "clubs is not an array";
    if (json_array_size(clubs) > SYNC_CLUBS_MAX)
        return "more than 16 clubs";
    for (size_t i = 0; i < json_array_size(clubs); i++) {
        json_t *c = json_array_get(clubs, i);
        if (!json_is_string(c) || !valid_id(json_string_value(c), json_string_length(c)))
            return "bad club identifier";
        memcpy(it->clubs[it->nclubs++], json_string_value(c), json_string_length(c) + 1);
    }
    if (!jdate(d, "validFrom", true, &it->valid_from))
        return "bad validFrom";
    if (!jdate(d, "validUntil", true, &it->valid_until))
        return "bad validUntil";
    if (it->valid_from != 0 && it->valid_until != 0 && it->valid_until <= it->valid_from)
        return "validUntil not after validFrom";
    s = jstr(d, "status", &n);
    if (!one_of(s, "active", "revoked"))
        return "bad status";
    memcpy(it->status, s, n + 1);
    return NULL;
}

/* Fills *it from one RPDE item; returns NULL or what is wrong with it. */
static const char *parse_item(json_t *j, int feed, struct sync_item *it)
{
    size_t n;
    const char *state, *kind;

    if (!json_is_object(j))
        return "not an object";
    if (!copy_id(j, "id", it->id))
        return "bad id";
    json_t *mod = json_object_get(j, "modified");
    if (!json_is_integer(mod) || json_integer_value(mod) < 0)
        return "bad modified";
    it->modified = json_integer_value(mod);
    kind = jstr(j, "kind", &n);
    if (kind == NULL ||
        strcmp(kind, feed == SYNC_FEED_RESERVATIONS ? "HallReservation" : "Credential") != 0)
        return "wrong kind for this feed";
    state = jstr(j, "state", &n);
    if (!one_of(state, "updated", "deleted"))
        return "bad state";
    if (strcmp(state, "deleted") == 0) {
        it->deleted = true;
        return NULL;
    }
    json_t *d = json_object_get(j, "data");
    if (!json_is_object(d))
        return "updated item without data";
    const char *ident = jstr(d, "identifier", &n);
    if (ident == NULL || strcmp(ident, it->id) != 0)
        return "data.identifier differs from id";
    return feed == SYNC_FEED_RESERVATIONS ? parse_reservation(d, it) : parse_credential(d, it);
}

static json_t *load_object(const char *body, size_t len, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root;

    /* Duplicate keys are refused: two parsers could otherwise read two meanings. */
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        char clean[160];
        sync_sanitize(jerr.text, strlen(jerr.text), clean, sizeof(clean));
        perr(err, errlen, "malformed JSON at byte %d: %s", jerr.position, clean);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        perr(err, errlen, "JSON body is not an object");
        return NULL;
    }
    return root;
}

int sync_parse_page(const char *body, size_t len, int feed, const char *base_url,
                    struct sync_page *page, char *err, size_t errlen)
{
    json_t *root, *items;
    const char *next;
    size_t n;
    int r = -1;

    memset(page, 0, sizeof(*page));
    if (feed != SYNC_FEED_RESERVATIONS && feed != SYNC_FEED_CREDENTIALS)
        return perr(err, errlen, "unknown feed %d", feed);
    if (len > SYNC_BODY_MAX)
        return perr(err, errlen, "page larger than %u bytes", SYNC_BODY_MAX);
    root = load_object(body, len, err, errlen);
    if (root == NULL)
        return -1;
    next = jstr(root, "next", &n);
    if (next == NULL || n == 0 || n > SYNC_URL_MAX || strlen(next) != n) {
        perr(err, errlen, "page without a usable next URL");
        goto out;
    }
    if (!sync_url_under(next, base_url)) {
        perr(err, errlen, "next URL is not under the configured base URL");
        goto out;
    }
    items = json_object_get(root, "items");
    if (!json_is_array(items)) {
        perr(err, errlen, "page without an items array");
        goto out;
    }
    if (json_array_size(items) > SYNC_PAGE_ITEMS_MAX) {
        perr(err, errlen, "page with %zu items (at most %d)", json_array_size(items),
             SYNC_PAGE_ITEMS_MAX);
        goto out;
    }
    page->count = json_array_size(items);
    page->items = calloc(page->count > 0 ? page->count : 1, sizeof(*page->items));
    if (page->items == NULL)
        fatalx("out of memory");
    for (size_t i = 0; i < page->count; i++) {
        struct sync_item *it = &page->items[i];
        const char *why = parse_item(json_array_get(items, i), feed, it);
        if (why != NULL) {
            /* The id is shown only once it is known to be a clean identifier. */
            if (it->id[0] != '\0')
                perr(err, errlen, "item %zu (%s): %s", i, it->id, why);
            else
                perr(err, errlen, "item %zu: %s", i, why);
            goto out;
        }
        /* RPDE order is (modified, id), strictly increasing: a page that breaks it
         * would make the cursor skip or repeat items. Ids compare bytewise, like the
         * server's SQL. */
        if (i > 0) {
            const struct sync_item *prev = &page->items[i - 1];
            if (it->modified < prev->modified ||
                (it->modified == prev->modified && strcmp(it->id, prev->id) <= 0)) {
                perr(err, errlen, "item %zu (%s): out of (modified, id) order", i, it->id);
                goto out;
            }
        }
    }
    memcpy(page->next, next, n + 1);
    page->last_page = page->count == 0;
    r = 0;
out:
    json_decref(root);
    if (r < 0)
        sync_page_free(page);
    return r;
}

void sync_page_free(struct sync_page *page)
{
    if (page == NULL)
        return;
    free(page->items);
    page->items = NULL;
    page->count = 0;
}

static bool interval(json_t *iv, const char *key, int64_t dflt, int64_t *out)
{
    json_t *v = json_object_get(iv, key);
    if (v == NULL) {
        *out = dflt;
        return true;
    }
    if (!json_is_integer(v))
        return false;
    json_int_t s = json_integer_value(v);
    *out = s < SYNC_INTERVAL_MIN   ? SYNC_INTERVAL_MIN
           : s > SYNC_INTERVAL_MAX ? SYNC_INTERVAL_MAX
                                   : s;
    return true;
}

int sync_parse_station(const char *body, size_t len, const char *station_id,
                       struct sync_station *st, char *err, size_t errlen)
{
    json_t *root, *iv;
    const char *id;
    size_t n;
    int r = -1;

    memset(st, 0, sizeof(*st));
    root = load_object(body, len, err, errlen);
    if (root == NULL)
        return -1;
    id = jstr(root, "stationId", &n);
    if (id == NULL || !valid_id(id, n)) {
        perr(err, errlen, "station config without a valid stationId");
        goto out;
    }
    if (station_id != NULL && strcmp(id, station_id) != 0) {
        perr(err, errlen, "station config is for station %s", id);
        goto out;
    }
    if (!copy_name(root, "name", st->name)) {
        perr(err, errlen, "bad station name");
        goto out;
    }
    iv = json_object_get(root, "pollIntervals");
    if (iv != NULL && !json_is_object(iv)) {
        perr(err, errlen, "pollIntervals is not an object");
        goto out;
    }
    if (!interval(iv, "reservations", 60, &st->interval_res) ||
        !interval(iv, "credentials", 300, &st->interval_cred) ||
        !interval(iv, "config", 3600, &st->interval_config) ||
        !interval(iv, "heartbeat", 300, &st->interval_heartbeat)) {
        perr(err, errlen, "poll interval is not an integer");
        goto out;
    }
    r = 0;
out:
    json_decref(root);
    return r;
}

const char *sync_result_name(enum sync_result r)
{
    switch (r) {
    case SYNC_RESULT_CREATED:
        return "created";
    case SYNC_RESULT_DUPLICATE:
        return "duplicate";
    case SYNC_RESULT_REJECTED:
        return "rejected";
    }
    return "?";
}

int sync_parse_upload(const char *body, size_t len, const char *const *ids, size_t nids,
                      enum sync_result *results, char *err, size_t errlen)
{
    json_t *root, *arr;
    bool seen[SYNC_BATCH_MAX] = {false};
    int r = -1;

    if (nids > SYNC_BATCH_MAX)
        return perr(err, errlen, "batch of %zu events", nids);
    root = load_object(body, len, err, errlen);
    if (root == NULL)
        return -1;
    arr = json_object_get(root, "results");
    if (!json_is_array(arr)) {
        perr(err, errlen, "response without a results array");
        goto out;
    }
    if (json_array_size(arr) != nids) {
        perr(err, errlen, "%zu results for %zu events", json_array_size(arr), nids);
        goto out;
    }
    for (size_t i = 0; i < nids; i++) {
        json_t *res = json_array_get(arr, i);
        size_t n, k;
        const char *eid, *status;
        if (!json_is_object(res) || (eid = jstr(res, "eventId", &n)) == NULL) {
            perr(err, errlen, "result %zu without an eventId", i);
            goto out;
        }
        for (k = 0; k < nids; k++) {
            if (strlen(ids[k]) == n && memcmp(ids[k], eid, n) == 0)
                break;
        }
        if (k == nids) {
            perr(err, errlen, "result %zu names an event not in the batch", i);
            goto out;
        }
        if (seen[k]) {
            perr(err, errlen, "two results for event %s", ids[k]);
            goto out;
        }
        seen[k] = true;
        status = jstr(res, "status", &n);
        if (status != NULL && strcmp(status, "created") == 0) {
            results[k] = SYNC_RESULT_CREATED;
        } else if (status != NULL && strcmp(status, "duplicate") == 0) {
            results[k] = SYNC_RESULT_DUPLICATE;
        } else if (status != NULL && strcmp(status, "rejected") == 0) {
            results[k] = SYNC_RESULT_REJECTED;
        } else {
            perr(err, errlen, "result for event %s has a bad status", ids[k]);
            goto out;
        }
    }
    /* nids results, each for a distinct id of the batch: every id has one. */
    r = 0;
out:
    json_decref(root);
    return r;
}

bool sync_problem_text(const char *body, size_t len, char *out, size_t outlen)
{
    json_error_t jerr;
    json_t *root;
    const char *title, *detail;
    size_t tn = 0, dn = 0;
    char raw[1024];

    if (outlen > 0)
        out[0] = '\0';
    if (body == NULL || len == 0 || len > SYNC_BODY_MAX)
        return false;
    root = json_loadb(body, len, 0, &jerr);
    if (!json_is_object(root)) {
        json_decref(root);
        return false;
    }
    title = jstr(root, "title", &tn);
    detail = jstr(root, "detail", &dn);
    if (title != NULL && tn > 0 && detail != NULL && dn > 0)
        snprintf(raw, sizeof(raw), "%s: %s", title, detail);
    else if (title != NULL && tn > 0)
        snprintf(raw, sizeof(raw), "%s", title);
    else if (detail != NULL && dn > 0)
        snprintf(raw, sizeof(raw), "%s", detail);
    else
        raw[0] = '\0';
    json_decref(root);
    /* snprintf may have cut a character in two; sync_sanitize() turns that into '?'. */
    sync_sanitize(raw, strlen(raw), out, outlen);
    return out[0] != '\0';
}

/* ======================================================================
 * The worker
 * ====================================================================== */

enum op { OP_CONFIG, OP_RES, OP_CRED, OP_EVENTS, OP_HEARTBEAT, OP_USAGE, OP_COUNT };

static const char *const op_names[OP_COUNT] = {"config", "reservations", "credentials",
                                               "events", "heartbeat",    "usage"};

struct worker;

/* One HTTP request in flight. */
struct xfer {
    struct worker *w;
    enum op op;
    CURL *easy;
    struct curl_slist *headers;
    char *url;
    char errbuf[CURL_ERROR_SIZE];
    char *body; /* response body, NUL-terminated */
    size_t len, cap;
    bool too_big;
};

/* One message waiting for the socket. */
struct outmsg {
    struct outmsg *next;
    size_t len;
    uint8_t data[];
};

struct blob {
    uint8_t *p;
    size_t n;
};

struct worker {
    int fd;
    int fd_watch;
    bool fd_wants_out;
    struct loop *loop;
    CURLM *multi;
    int curl_timer;
    bool stopping;

    /* SM_CONFIG */
    bool configured;
    char *base; /* without trailing '/' */
    char station[SYNC_ID_MAX + 1];
    char version[40];
    struct blob ca, cert, key;
    char *etag;
    int64_t interval_s[OP_COUNT];

    /* per operation */
    struct xfer *xfer[OP_COUNT];
    int timer[OP_COUNT];
    int failures[OP_COUNT]; /* consecutive, for the back-off */

    /* feeds (OP_RES, OP_CRED) */
    char *cursor[OP_COUNT];
    int64_t lastpage_ms[OP_COUNT];
    bool wait_drain[OP_COUNT];
    bool again[OP_COUNT]; /* in flight when the cycle began: fetch again after it */
    int64_t drain_delay[OP_COUNT];

    /* the one pending upload */
    bool up_pending;
    int64_t up_batch;
    char *up_body;
    size_t up_len;
    char **up_ids;
    size_t up_n;

    char *hb_body;
    size_t hb_len;

    /* the one pending daily usage summary (SM_USAGE) */
    bool us_pending;
    char us_date[16];
    char *us_body;
    size_t us_len;

    /* 401/403/404: no periodic work until SM_POLL or SM_CONFIG */
    bool halted;

    /* SM_POLL */
    bool cycle_active;
    int64_t cycle;
    bool cycle_ok;
    unsigned cycle_parts; /* bit per op still running */

    struct outmsg *outq;
    struct outmsg **outq_tail;
    size_t outq_bytes;

    uint8_t *buf;   /* SYNCMSG_MAX, for building */
    uint8_t *inbuf; /* SYNCMSG_MAX, for receiving: fields point into it */
    struct syncmsg *msg;
    struct syncmsg *check;
    uint64_t rng;
};

static void start_op(struct worker *w, enum op op);
static void flush_out(struct worker *w);
static void schedule(struct worker *w, enum op op, int64_t delay_ms);
static void feed_schedule(struct worker *w, enum op op, int64_t delay_ms);

static void stop(struct worker *w, int status)
{
    w->stopping = true;
    loop_quit(w->loop, status);
}

static uint64_t rnd(struct worker *w)
{
    /* xorshift64*: jitter only, nothing secret. */
    w->rng ^= w->rng >> 12;
    w->rng ^= w->rng << 25;
    w->rng ^= w->rng >> 27;
    return w->rng * UINT64_C(2685821657736338717);
}

static char *xmemdup(const void *p, size_t n)
{
    char *s = xmalloc(n + 1);
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

static void blob_clear(struct blob *b)
{
    if (b->p != NULL) {
        /* Key material: gone from memory, not only freed. */
        explicit_bzero(b->p, b->n);
        free(b->p);
    }
    b->p = NULL;
    b->n = 0;
}

/* ---------------------------------------------------------------- messages out */

/* Builds a checked copy of the message in b, or NULL if it fails its schema. */
static struct outmsg *msg_take(struct worker *w, struct syncmsg_builder *b)
{
    char why[160];
    int64_t len = syncmsg_finish(b);

    if (len < 0) {
        log_errx("sync: a %s message does not fit", syncmsg_type_name(b->buf[1]));
        return NULL;
    }
    if (syncmsg_decode(b->buf, (size_t)len, w->check, why, sizeof(why)) < 0) {
        log_errx("sync: refusing to send a bad message: %s", why);
        return NULL;
    }
    struct outmsg *m = xmalloc(sizeof(*m) + (size_t)len);
    m->next = NULL;
    m->len = (size_t)len;
    memcpy(m->data, b->buf, (size_t)len);
    return m;
}

static void outq_append(struct worker *w, struct outmsg *m)
{
    *w->outq_tail = m;
    w->outq_tail = &m->next;
    w->outq_bytes += m->len;
}

static void outq_free_list(struct outmsg *m)
{
    while (m != NULL) {
        struct outmsg *next = m->next;
        free(m);
        m = next;
    }
}

/* Queues the message being built in w->buf and tries to send. */
static void emit(struct worker *w, struct syncmsg_builder *b)
{
    struct outmsg *m = msg_take(w, b);
    if (m == NULL)
        return;
    outq_append(w, m);
    flush_out(w);
}

static void report(struct worker *w, enum op op, bool ok, long http, const char *error,
                   int64_t retry_ms)
{
    struct syncmsg_builder b;
    char clean[256];

    syncmsg_start(&b, w->buf, SYNCMSG_MAX, SM_REPORT);
    syncmsg_put_str(&b, F_OP, op_names[op]);
    syncmsg_put_int(&b, F_SUCCESS, ok ? 1 : 0);
    if (http > 0)
        syncmsg_put_int(&b, F_HTTP, http);
    if (error != NULL && error[0] != '\0') {
        sync_sanitize(error, strlen(error), clean, sizeof(clean));
        syncmsg_put_str(&b, F_ERROR, clean);
    }
    if (retry_ms >= 0)
        syncmsg_put_int(&b, F_RETRY_MS, retry_ms);
    emit(w, &b);
    if (ok)
        log_debug("sync: %s ok (HTTP %ld)", op_names[op], http);
    else
        log_warnx("sync: %s failed: %s", op_names[op], error != NULL ? error : "?");
}

/* ---------------------------------------------------------------- cycles */

static void cycle_finish(struct worker *w)
{
    struct syncmsg_builder b;

    if (!w->cycle_active)
        return;
    w->cycle_active = false;
    w->cycle_parts = 0;
    syncmsg_start(&b, w->buf, SYNCMSG_MAX, SM_CYCLE_DONE);
    syncmsg_put_int(&b, F_CYCLE, w->cycle);
    syncmsg_put_int(&b, F_SUCCESS, w->cycle_ok ? 1 : 0);
    emit(w, &b);
}

/* The part of the current cycle that op stands for has ended. */
static void part_done(struct worker *w, enum op op, bool ok)
{
    if (!w->cycle_active || (w->cycle_parts & (1u << op)) == 0)
        return;
    /* The request that just ended was sent before the cycle was asked for, so it may
     * not have seen what changed since: fetch once more within the cycle. */
    if (ok && w->again[op]) {
        w->again[op] = false;
        if (op == OP_RES || op == OP_CRED)
            feed_schedule(w, op, 0);
        else
            schedule(w, op, 0);
        return;
    }
    w->cycle_parts &= ~(1u << op);
    if (!ok)
        w->cycle_ok = false;
    if (w->cycle_parts == 0)
        cycle_finish(w);
}

/* ---------------------------------------------------------------- curl glue */

static void check_done(struct worker *w);

static void on_curl_socket(int fd, uint32_t events, void *arg)
{
    struct worker *w = arg;
    int flags = 0, running;

    if (events & EPOLLIN)
        flags |= CURL_CSELECT_IN;
    if (events & EPOLLOUT)
        flags |= CURL_CSELECT_OUT;
    if (events & (EPOLLERR | EPOLLHUP))
        flags |= CURL_CSELECT_ERR;
    curl_multi_socket_action(w->multi, fd, flags, &running);
    check_done(w);
}

static int curl_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct worker *w = userp;
    int id = (int)(intptr_t)socketp;
    uint32_t events = 0;

    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (id > 0)
            loop_remove(w->loop, id);
        curl_multi_assign(w->multi, s, NULL);
        return 0;
    }
    if (what & CURL_POLL_IN)
        events |= EPOLLIN;
    if (what & CURL_POLL_OUT)
        events |= EPOLLOUT;
    if (id > 0) {
        int r = loop_mod_fd(w->loop, id, events);
        if (r < 0) {
            log_warnx("sync: epoll mod: %s", strerror(-r));
            return -1;
        }
        return 0;
    }
    id = loop_add_fd(w->loop, s, events, on_curl_socket, w);
    if (id < 0) {
        log_warnx("sync: epoll add: %s", strerror(-id));
        return -1;
    }
    curl_multi_assign(w->multi, s, (void *)(intptr_t)id);
    return 0;
}

static void on_curl_timer(void *arg)
{
    struct worker *w = arg;
    int running;

    w->curl_timer = 0;
    curl_multi_socket_action(w->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(w);
}

static int curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct worker *w = userp;

    (void)multi;
    if (w->curl_timer > 0)
        loop_remove(w->loop, w->curl_timer);
    w->curl_timer = 0;
    /* Even 0 goes through the loop: curl must not be re-entered from its callback. */
    if (timeout_ms >= 0) {
        int id = loop_add_timer(w->loop, timeout_ms, on_curl_timer, w);
        if (id < 0) {
            log_warnx("sync: timer: %s", strerror(-id));
            return -1;
        }
        w->curl_timer = id;
    }
    return 0;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    struct xfer *x = arg;
    size_t n = size * nmemb;

    if (n > SYNC_BODY_MAX - x->len) {
        x->too_big = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (x->len + n + 1 > x->cap) {
        size_t cap = x->cap > 0 ? x->cap : 16384;
        while (cap < x->len + n + 1)
            cap *= 2;
        char *p = realloc(x->body, cap);
        if (p == NULL)
            fatalx("out of memory");
        x->body = p;
        x->cap = cap;
    }
    memcpy(x->body + x->len, data, n);
    x->len += n;
    x->body[x->len] = '\0';
    return n;
}

static void xfer_free(struct xfer *x)
{
    if (x == NULL)
        return;
    if (x->easy != NULL) {
        curl_multi_remove_handle(x->w->multi, x->easy);
        curl_easy_cleanup(x->easy);
    }
    curl_slist_free_all(x->headers);
    free(x->url);
    free(x->body);
    free(x);
}

/* Aborts op's transfer in flight, if any; nothing is reported for it. */
static void xfer_abort(struct worker *w, enum op op)
{
    xfer_free(w->xfer[op]);
    w->xfer[op] = NULL;
}

static void cancel_timer(struct worker *w, enum op op)
{
    if (w->timer[op] > 0)
        loop_remove(w->loop, w->timer[op]);
    w->timer[op] = 0;
}

#define SETOPT(x, opt, val)                                                                        \
    do {                                                                                           \
        if (curl_easy_setopt((x)->easy, opt, val) != CURLE_OK)                                     \
            goto err;                                                                              \
    } while (0)

/* Starts a request for op. method: "GET", "POST" or "PUT" (body given). */
static bool xfer_start(struct worker *w, enum op op, const char *url, const char *method,
                       const char *body, size_t bodylen, const char *if_none_match)
{
    struct xfer *x = xmalloc(sizeof(*x));
    char ua[64], inm[300];

    memset(x, 0, sizeof(*x));
    x->w = w;
    x->op = op;
    x->url = xstrdup(url);
    x->easy = curl_easy_init();
    if (x->easy == NULL)
        goto err;

    SETOPT(x, CURLOPT_URL, x->url);
    SETOPT(x, CURLOPT_PRIVATE, x);
    SETOPT(x, CURLOPT_ERRORBUFFER, x->errbuf);
    SETOPT(x, CURLOPT_NOSIGNAL, 1L);
    SETOPT(x, CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(x, CURLOPT_WRITEDATA, x);
    SETOPT(x, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)SYNC_BODY_MAX);
    /* https only, no redirects, no proxies from the environment. */
    SETOPT(x, CURLOPT_PROTOCOLS_STR, "https");
    SETOPT(x, CURLOPT_REDIR_PROTOCOLS_STR, "https");
    SETOPT(x, CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(x, CURLOPT_PROXY, "");
    SETOPT(x, CURLOPT_CONNECTTIMEOUT_MS, (long)CONNECT_TIMEOUT_MS);
    SETOPT(x, CURLOPT_TIMEOUT_MS, (long)TOTAL_TIMEOUT_MS);
    /* TLS: verify against the configured CA only (no system store), client cert. */
    SETOPT(x, CURLOPT_SSL_VERIFYPEER, 1L);
    SETOPT(x, CURLOPT_SSL_VERIFYHOST, 2L);
    SETOPT(x, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    SETOPT(x, CURLOPT_CAINFO, NULL);
    SETOPT(x, CURLOPT_CAPATH, NULL);
    struct curl_blob ca = {w->ca.p, w->ca.n, CURL_BLOB_COPY};
    struct curl_blob cert = {w->cert.p, w->cert.n, CURL_BLOB_COPY};
    struct curl_blob key = {w->key.p, w->key.n, CURL_BLOB_COPY};
    SETOPT(x, CURLOPT_CAINFO_BLOB, &ca);
    SETOPT(x, CURLOPT_SSLCERT_BLOB, &cert);
    SETOPT(x, CURLOPT_SSLCERTTYPE, "PEM");
    SETOPT(x, CURLOPT_SSLKEY_BLOB, &key);
    SETOPT(x, CURLOPT_SSLKEYTYPE, "PEM");

    snprintf(ua, sizeof(ua), "lockerd/%s", w->version);
    SETOPT(x, CURLOPT_USERAGENT, ua);
    x->headers = curl_slist_append(x->headers, "Accept: application/json");
    /* No "100 continue" round trip before a body. */
    x->headers = curl_slist_append(x->headers, "Expect:");
    if (body != NULL)
        x->headers = curl_slist_append(x->headers, "Content-Type: application/json");
    if (if_none_match != NULL) {
        snprintf(inm, sizeof(inm), "If-None-Match: %s", if_none_match);
        x->headers = curl_slist_append(x->headers, inm);
    }
    if (x->headers == NULL)
        goto err;
    SETOPT(x, CURLOPT_HTTPHEADER, x->headers);
    if (body != NULL) {
        /* The body stays owned by the worker until the transfer is done. */
        SETOPT(x, CURLOPT_POSTFIELDS, body);
        SETOPT(x, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)bodylen);
        if (strcmp(method, "POST") != 0)
            SETOPT(x, CURLOPT_CUSTOMREQUEST, method);
    }
    if (curl_multi_add_handle(w->multi, x->easy) != CURLM_OK)
        goto err;
    w->xfer[op] = x;
    return true;

err:
    log_errx("sync: cannot set up a %s request", op_names[op]);
    xfer_free(x);
    return false;
}

/* ---------------------------------------------------------------- scheduling */

static void on_op_timer(void *arg);

/* Timer args: one static slot per operation carries (worker, op). */
struct op_ref {
    struct worker *w;
    enum op op;
};
static struct op_ref op_refs[OP_COUNT];

static void schedule(struct worker *w, enum op op, int64_t delay_ms)
{
    cancel_timer(w, op);
    op_refs[op].w = w;
    op_refs[op].op = op;
    int id = loop_add_timer(w->loop, delay_ms, on_op_timer, &op_refs[op]);
    if (id < 0) {
        log_errx("sync: timer: %s", strerror(-id));
        stop(w, 2);
        return;
    }
    w->timer[op] = id;
}

static void on_op_timer(void *arg)
{
    struct op_ref *ref = arg;
    ref->w->timer[ref->op] = 0;
    start_op(ref->w, ref->op);
}

/* A feed's next fetch waits while the outgoing queue holds more than
 * FEED_AHEAD_BYTES: the next page is fetched while lockerd applies this one (the
 * socket's buffer holds less than a page of 500 small messages), and memory stays
 * bounded by a few pages whatever the feed's size. */
#define FEED_AHEAD_BYTES (512u << 10)
static void feed_schedule(struct worker *w, enum op op, int64_t delay_ms)
{
    if (w->outq != NULL && w->outq_bytes > FEED_AHEAD_BYTES) {
        w->wait_drain[op] = true;
        w->drain_delay[op] = delay_ms;
        return;
    }
    schedule(w, op, delay_ms);
}

static int64_t backoff_ms(struct worker *w, enum op op, int64_t at_least_ms)
{
    int n = w->failures[op] < 30 ? w->failures[op] : 30;
    int64_t ceil = (int64_t)BACKOFF_BASE_MS << n;
    if (ceil > BACKOFF_CAP_MS)
        ceil = BACKOFF_CAP_MS;
    w->failures[op]++;
    int64_t d = (int64_t)(rnd(w) % (uint64_t)(ceil + 1));
    return d < at_least_ms ? at_least_ms : d;
}

/* Retry-After as delta seconds or an HTTP date, in ms (0 when absent). */
static int64_t retry_after_ms(CURL *easy)
{
    struct curl_header *h;
    int64_t s = 0;

    if (curl_easy_header(easy, "Retry-After", 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
        return 0;
    const char *v = h->value;
    if (*v >= '0' && *v <= '9') {
        for (; *v >= '0' && *v <= '9'; v++) {
            s = s * 10 + (*v - '0');
            if (s > RETRY_AFTER_MAX_S)
                s = RETRY_AFTER_MAX_S;
        }
    } else {
        time_t t = curl_getdate(v, NULL);
        if (t < 0)
            return 0;
        s = (int64_t)t - clock_wall_ms() / 1000;
        s = s < 0 ? 0 : s > RETRY_AFTER_MAX_S ? RETRY_AFTER_MAX_S : s;
    }
    return s * 1000;
}

static char *feed_start_url(struct worker *w, enum op op)
{
    char url[SYNC_URL_MAX + 1];
    snprintf(url, sizeof(url), "%s/stations/%s/%s?limit=500", w->base, w->station,
             op == OP_RES ? "reservations" : "credentials");
    return xstrdup(url);
}

static int feed_of(enum op op)
{
    return op == OP_RES ? SYNC_FEED_RESERVATIONS : SYNC_FEED_CREDENTIALS;
}

static void start_op(struct worker *w, enum op op)
{
    char url[SYNC_URL_MAX + 1];
    bool ok = true;

    if (!w->configured || w->stopping || w->xfer[op] != NULL)
        return;
    if (w->halted && op != OP_HEARTBEAT)
        return;
    cancel_timer(w, op);
    switch (op) {
    case OP_CONFIG:
        snprintf(url, sizeof(url), "%s/stations/%s", w->base, w->station);
        ok = xfer_start(w, op, url, "GET", NULL, 0, w->etag);
        break;
    case OP_RES:
    case OP_CRED:
        w->wait_drain[op] = false;
        ok = xfer_start(w, op, w->cursor[op], "GET", NULL, 0, NULL);
        break;
    case OP_EVENTS:
        if (!w->up_pending)
            return;
        snprintf(url, sizeof(url), "%s/stations/%s/events", w->base, w->station);
        ok = xfer_start(w, op, url, "POST", w->up_body, w->up_len, NULL);
        break;
    case OP_HEARTBEAT:
        if (w->hb_body == NULL)
            return;
        snprintf(url, sizeof(url), "%s/stations/%s/status", w->base, w->station);
        ok = xfer_start(w, op, url, "PUT", w->hb_body, w->hb_len, NULL);
        break;
    case OP_USAGE:
        if (!w->us_pending)
            return;
        snprintf(url, sizeof(url), "%s/stations/%s/usage/%s", w->base, w->station, w->us_date);
        ok = xfer_start(w, op, url, "PUT", w->us_body, w->us_len, NULL);
        break;
    case OP_COUNT:
        return;
    }
    if (!ok) {
        /* Only a curl that cannot allocate gets here; try again later. */
        report(w, op, false, 0, "cannot set up the request", BACKOFF_CAP_MS);
        if (op != OP_HEARTBEAT)
            schedule(w, op, BACKOFF_CAP_MS);
        part_done(w, op, false);
    }
}

/* ---------------------------------------------------------------- outcomes */

static void upload_clear(struct worker *w)
{
    for (size_t i = 0; i < w->up_n; i++)
        free(w->up_ids[i]);
    free(w->up_ids);
    free(w->up_body);
    w->up_ids = NULL;
    w->up_body = NULL;
    w->up_n = 0;
    w->up_len = 0;
    w->up_pending = false;
}

static void usage_clear(struct worker *w)
{
    free(w->us_body);
    w->us_body = NULL;
    w->us_len = 0;
    w->us_date[0] = '\0';
    w->us_pending = false;
}

/* The OUTCOME [HTTP] [ERROR] fields every answer to main carries. */
static void put_outcome(struct syncmsg_builder *b, const char *outcome, long http,
                        const char *error)
{
    char clean[256];
    syncmsg_put_str(b, F_OUTCOME, outcome);
    if (http > 0)
        syncmsg_put_int(b, F_HTTP, http);
    if (error != NULL) {
        sync_sanitize(error, strlen(error), clean, sizeof(clean));
        syncmsg_put_str(b, F_ERROR, clean);
    }
}

/* The pending day's summary has an answer: "done" or "dead" (refused for good). */
static void usage_done(struct worker *w, const char *outcome, long http, const char *error)
{
    struct syncmsg_builder b;

    syncmsg_start(&b, w->buf, SYNCMSG_MAX, SM_USAGE_DONE);
    syncmsg_put_str(&b, F_DATE, w->us_date);
    put_outcome(&b, outcome, http, error);
    emit(w, &b);
    usage_clear(w);
}

/* 401/403/404: the station is not (or no longer) known as itself; retrying cannot
 * help until someone changes something. */
static void halt(struct worker *w)
{
    w->halted = true;
    for (int op = 0; op < OP_COUNT; op++) {
        if (op == OP_HEARTBEAT)
            continue;
        cancel_timer(w, (enum op)op);
        w->wait_drain[op] = false;
        /* A running upload finishes and is answered; everything else stops now. */
        if (op != OP_EVENTS)
            xfer_abort(w, (enum op)op);
        if (op != OP_EVENTS || w->xfer[op] == NULL)
            part_done(w, (enum op)op, false);
    }
    log_warnx("sync: halted until the next sync request or configuration");
}

static void upload_done(struct worker *w, const char *outcome, long http, const char *error,
                        const enum sync_result *results)
{
    struct syncmsg_builder b;

    syncmsg_start(&b, w->buf, SYNCMSG_MAX, SM_UPLOAD_DONE);
    syncmsg_put_int(&b, F_BATCH, w->up_batch);
    put_outcome(&b, outcome, http, error);
    for (size_t i = 0; results != NULL && i < w->up_n; i++) {
        syncmsg_put_str(&b, F_EVENT_ID, w->up_ids[i]);
        syncmsg_put_str(&b, F_RESULT, sync_result_name(results[i]));
    }
    emit(w, &b);
    upload_clear(w);
}

/* A failure that is retried with back-off (network, TLS, 408, 429, 5xx, bad body). */
static void fail_retry(struct worker *w, enum op op, long http, const char *error, int64_t ra_ms)
{
    int64_t delay = -1;

    if (op == OP_HEARTBEAT) {
        report(w, op, false, http, error, -1); /* the next heartbeat is the retry */
    } else {
        delay = backoff_ms(w, op, ra_ms);
        if (op == OP_RES || op == OP_CRED)
            feed_schedule(w, op, delay);
        else
            schedule(w, op, delay);
        report(w, op, false, http, error, delay);
    }
    part_done(w, op, false);
}

static void done_config(struct worker *w, struct xfer *x, long http)
{
    struct sync_station st;
    struct curl_header *h;
    char err[256], etag[257];

    if (http == 304) {
        w->failures[OP_CONFIG] = 0;
        report(w, OP_CONFIG, true, http, NULL, -1);
        schedule(w, OP_CONFIG, w->interval_s[OP_CONFIG] * 1000);
        part_done(w, OP_CONFIG, true);
        return;
    }
    if (sync_parse_station(x->body != NULL ? x->body : "", x->len, w->station, &st, err,
                           sizeof(err)) < 0) {
        fail_retry(w, OP_CONFIG, http, err, 0);
        return;
    }
    if (curl_easy_header(x->easy, "ETag", 0, CURLH_HEADER, -1, &h) != CURLHE_OK ||
        h->value[0] == '\0' || strlen(h->value) > 256) {
        fail_retry(w, OP_CONFIG, http, "station config without a usable ETag", 0);
        return;
    }
    sync_sanitize(h->value, strlen(h->value), etag, sizeof(etag));
    if (strcmp(etag, h->value) != 0) {
        fail_retry(w, OP_CONFIG, http, "station config with a malformed ETag", 0);
        return;
    }
    free(w->etag);
    w->etag = xstrdup(etag);
    w->interval_s[OP_CONFIG] = st.interval_config;
    w->interval_s[OP_RES] = st.interval_res;
    w->interval_s[OP_CRED] = st.interval_cred;
    w->interval_s[OP_HEARTBEAT] = st.interval_heartbeat;

    struct syncmsg_builder b;
    syncmsg_start(&b, w->buf, SYNCMSG_MAX, SM_STATION);
    syncmsg_put_str(&b, F_ETAG, etag);
    syncmsg_put_str(&b, F_NAME, st.name);
    syncmsg_put_int(&b, F_INTERVAL_RES, st.interval_res);
    syncmsg_put_int(&b, F_INTERVAL_CRED, st.interval_cred);
    syncmsg_put_int(&b, F_INTERVAL_CONFIG, st.interval_config);
    syncmsg_put_int(&b, F_INTERVAL_HEARTBEAT, st.interval_heartbeat);
    emit(w, &b);

    w->failures[OP_CONFIG] = 0;
    report(w, OP_CONFIG, true, http, NULL, -1);
    schedule(w, OP_CONFIG, w->interval_s[OP_CONFIG] * 1000);
    part_done(w, OP_CONFIG, true);
}

/* One item as a whole SM_ITEM_RES or SM_ITEM_CRED message in buf; its length, or
 * -1 when it does not fit. */
static int64_t item_message(enum op op, const struct sync_item *it, uint8_t *buf, size_t cap)
{
    struct syncmsg_builder b;

    syncmsg_start(&b, buf, cap, op == OP_RES ? SM_ITEM_RES : SM_ITEM_CRED);
    syncmsg_put_str(&b, F_ID, it->id);
    syncmsg_put_int(&b, F_MODIFIED, it->modified);
    syncmsg_put_int(&b, F_DELETED, it->deleted ? 1 : 0);
    if (!it->deleted && op == OP_RES) {
        syncmsg_put_int(&b, F_START, it->start);
        syncmsg_put_int(&b, F_END, it->end);
        syncmsg_put_str(&b, F_CLUB, it->club);
        syncmsg_put_str(&b, F_CLUB_NAME, it->club_name);
        for (int k = 0; k < it->ncompartments; k++)
            syncmsg_put_int(&b, F_COMPARTMENT, it->compartments[k]);
        syncmsg_put_str(&b, F_STATUS, it->status);
    } else if (!it->deleted) {
        syncmsg_put_blob(&b, F_UID_HMAC, it->uid_hmac, sizeof(it->uid_hmac));
        syncmsg_put_str(&b, F_CARD_TYPE, it->card_type);
        syncmsg_put_str(&b, F_MEMBER, it->member);
        syncmsg_put_str(&b, F_MEMBER_NAME, it->member_name);
        for (int k = 0; k < it->nclubs; k++)
            syncmsg_put_str(&b, F_CLUB, it->clubs[k]);
        syncmsg_put_int(&b, F_VALID_FROM, it->valid_from);
        syncmsg_put_int(&b, F_VALID_UNTIL, it->valid_until);
        syncmsg_put_str(&b, F_STATUS, it->status);
    }
    return syncmsg_finish(&b);
}

/* The messages for one page, built and checked before any is queued: the items in
 * SM_ITEMS messages of up to SYNCMSG_ITEMS_MAX (msg_take() checks each embedded item
 * against its own schema), then SM_PAGE_END. */
static struct outmsg *page_messages(struct worker *w, enum op op, const struct sync_page *pg)
{
    struct outmsg *head = NULL, **tail = &head, *m;
    struct syncmsg_builder b;
    uint8_t ibuf[SYNCMSG_ITEM_MAX];

    for (size_t i = 0; i < pg->count; i += SYNCMSG_ITEMS_MAX) {
        syncmsg_start(&b, w->buf, SYNCMSG_MAX, SM_ITEMS);
        for (size_t k = i; k < pg->count && k < i + SYNCMSG_ITEMS_MAX; k++) {
            int64_t n = item_message(op, &pg->items[k], ibuf, sizeof(ibuf));
            if (n < 0) {
                log_errx("sync: item %s does not fit a message", pg->items[k].id);
                goto err;
            }
            syncmsg_put_blob(&b, F_ITEM, ibuf, (size_t)n);
        }
        if ((m = msg_take(w, &b)) == NULL)
            goto err;
        *tail = m;
        tail = &m->next;
    }
    syncmsg_start(&b, w->buf, SYNCMSG_MAX, SM_PAGE_END);
    syncmsg_put_int(&b, F_FEED, feed_of(op));
    syncmsg_put_str(&b, F_NEXT, pg->next);
    syncmsg_put_int(&b, F_LAST_PAGE, pg->last_page ? 1 : 0);
    if ((m = msg_take(w, &b)) == NULL)
        goto err;
    *tail = m;
    return head;
err:
    outq_free_list(head);
    return NULL;
}

static void done_feed(struct worker *w, struct xfer *x, enum op op, long http)
{
    struct sync_page pg;
    char err[256];

    if (sync_parse_page(x->body != NULL ? x->body : "", x->len, feed_of(op), w->base, &pg, err,
                        sizeof(err)) < 0) {
        fail_retry(w, op, http, err, 0);
        return;
    }
    /* A non-empty page whose next is the URL just fetched would loop forever. */
    if (!pg.last_page && strcmp(pg.next, x->url) == 0) {
        sync_page_free(&pg);
        fail_retry(w, op, http, "non-empty page whose next URL is the page itself", 0);
        return;
    }
    struct outmsg *list = page_messages(w, op, &pg);
    if (list == NULL) {
        sync_page_free(&pg);
        fail_retry(w, op, http, "page does not fit the message schema", 0);
        return;
    }
    for (struct outmsg *m = list, *next; m != NULL; m = next) {
        next = m->next;
        m->next = NULL;
        outq_append(w, m);
    }
    free(w->cursor[op]);
    w->cursor[op] = xstrdup(pg.next);
    w->failures[op] = 0;
    bool last = pg.last_page;
    log_debug("sync: %s: %zu items%s", op_names[op], pg.count, last ? " (last page)" : "");
    sync_page_free(&pg);
    report(w, op, true, http, NULL, -1); /* also flushes the page */

    if (last) {
        int64_t delay = w->lastpage_ms[op];
        int64_t cap = w->interval_s[op] * 1000;
        w->lastpage_ms[op] = delay * 2 > cap ? cap : delay * 2;
        feed_schedule(w, op, delay);
        part_done(w, op, true);
    } else {
        w->lastpage_ms[op] = LASTPAGE_FIRST_MS;
        feed_schedule(w, op, 0);
    }
}

static void done_feed_gone(struct worker *w, struct xfer *x, enum op op, long http,
                           const char *problem)
{
    char *start = feed_start_url(w, op);
    char msg[300];

    if (strcmp(x->url, start) == 0) {
        /* The start of the feed cannot be too old: the server is confused. */
        free(start);
        snprintf(msg, sizeof(msg), "HTTP 410 for the start of the feed: %s", problem);
        fail_retry(w, op, http, msg, 0);
        return;
    }
    struct syncmsg_builder b;
    syncmsg_start(&b, w->buf, SYNCMSG_MAX, SM_FEED_GONE);
    syncmsg_put_int(&b, F_FEED, feed_of(op));
    emit(w, &b);
    free(w->cursor[op]);
    w->cursor[op] = start;
    w->lastpage_ms[op] = LASTPAGE_FIRST_MS;
    snprintf(msg, sizeof(msg), "HTTP 410: %s; resyncing from the start", problem);
    /* Handled as the contract says: not a failure of the cycle. */
    report(w, op, true, http, msg, -1);
    feed_schedule(w, op, 0);
}

static void done_upload(struct worker *w, struct xfer *x, long http)
{
    /* sync_parse_upload() fills every entry or fails (each id has exactly one
     * result); the initialiser is for the static analyser, which cannot see that. */
    enum sync_result results[SYNC_BATCH_MAX] = {SYNC_RESULT_CREATED};
    char err[256];

    if (sync_parse_upload(x->body != NULL ? x->body : "", x->len, (const char *const *)w->up_ids,
                          w->up_n, results, err, sizeof(err)) < 0) {
        fail_retry(w, OP_EVENTS, http, err, 0);
        return;
    }
    w->failures[OP_EVENTS] = 0;
    upload_done(w, "done", 0, NULL, results);
    report(w, OP_EVENTS, true, http, NULL, -1);
    part_done(w, OP_EVENTS, true);
}

static void on_xfer_done(struct worker *w, struct xfer *x, CURLcode rc)
{
    enum op op = x->op;
    long http = 0;
    char problem[200], msg[256];

    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &http);
    if (rc != CURLE_OK) {
        if (x->too_big || rc == CURLE_FILESIZE_EXCEEDED)
            snprintf(msg, sizeof(msg), "response larger than %u bytes", SYNC_BODY_MAX);
        else
            snprintf(msg, sizeof(msg), "%s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
        fail_retry(w, op, http, msg, 0);
        return;
    }
    bool ok_status = (op == OP_CONFIG && (http == 200 || http == 304)) ||
                     ((op == OP_RES || op == OP_CRED || op == OP_EVENTS) && http == 200) ||
                     ((op == OP_HEARTBEAT || op == OP_USAGE) && (http == 200 || http == 204));
    if (ok_status) {
        switch (op) {
        case OP_CONFIG:
            done_config(w, x, http);
            return;
        case OP_RES:
        case OP_CRED:
            done_feed(w, x, op, http);
            return;
        case OP_EVENTS:
            done_upload(w, x, http);
            return;
        case OP_HEARTBEAT:
            report(w, op, true, http, NULL, -1);
            return;
        case OP_USAGE:
            w->failures[op] = 0;
            usage_done(w, "done", http, NULL);
            report(w, op, true, http, NULL, -1);
            return;
        case OP_COUNT:
            return;
        }
    }
    /* Only a failed request's body is read for problem details: a feed page parsed
     * twice once cost the worker half its time. */
    if (!sync_problem_text(x->body, x->len, problem, sizeof(problem)))
        snprintf(problem, sizeof(problem), "(no problem details)");
    snprintf(msg, sizeof(msg), "HTTP %ld: %s", http, problem);
    if (http == 401 || http == 403 || http == 404) {
        if (op == OP_EVENTS)
            upload_done(w, "halt", http, problem, NULL);
        report(w, op, false, http, msg, -1);
        halt(w);
        part_done(w, op, false);
        return;
    }
    if (op == OP_USAGE && http >= 400 && http < 500 && http != 408 && http != 429) {
        /* The city refuses this day's document (400, 413, 415, 422, ...): the same PUT
         * would fail again, so the main process gives the day up and goes on. */
        usage_done(w, "dead", http, problem);
        report(w, op, false, http, msg, -1);
        return;
    }
    if ((op == OP_RES || op == OP_CRED) && http == 410) {
        done_feed_gone(w, x, op, http, problem);
        return;
    }
    if (http == 400 || http == 422 || (op == OP_EVENTS && http == 413)) {
        /* The server refuses what we send; the same request would fail again. For
         * a batch of events lockerd decides what that means: it sends the batch
         * again in halves until one event alone is refused (a dead letter), so
         * that one bad or oversized event does not take the others with it. */
        if (op == OP_EVENTS) {
            upload_done(w, "dead", http, problem, NULL);
            report(w, op, false, http, msg, -1);
        } else if (op == OP_HEARTBEAT) {
            report(w, op, false, http, msg, -1);
        } else {
            int64_t delay = w->interval_s[op] * 1000;
            schedule(w, op, delay);
            report(w, op, false, http, msg, delay);
        }
        part_done(w, op, false);
        return;
    }
    /* 408, 429, 5xx and anything unexpected. */
    fail_retry(w, op, http, msg, retry_after_ms(x->easy));
}

static void check_done(struct worker *w)
{
    CURLMsg *cm;
    int left;

    while ((cm = curl_multi_info_read(w->multi, &left)) != NULL) {
        if (cm->msg != CURLMSG_DONE)
            continue;
        struct xfer *x = NULL;
        CURLcode rc = cm->data.result;
        curl_easy_getinfo(cm->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        if (x == NULL || w->xfer[x->op] != x)
            continue;
        w->xfer[x->op] = NULL;
        curl_multi_remove_handle(w->multi, x->easy);
        if (!w->stopping)
            on_xfer_done(w, x, rc);
        xfer_free(x);
    }
}

/* ---------------------------------------------------------------- messages in */

static void config_clear(struct worker *w)
{
    for (int op = 0; op < OP_COUNT; op++) {
        xfer_abort(w, (enum op)op);
        cancel_timer(w, (enum op)op);
        free(w->cursor[op]);
        w->cursor[op] = NULL;
        w->wait_drain[op] = false;
        w->again[op] = false;
        w->failures[op] = 0;
    }
    free(w->base);
    w->base = NULL;
    free(w->etag);
    w->etag = NULL;
    blob_clear(&w->ca);
    blob_clear(&w->cert);
    blob_clear(&w->key);
    free(w->hb_body);
    w->hb_body = NULL;
    usage_clear(w);
    w->configured = false;
}

static void blob_from(struct blob *b, const struct syncmsg_field *f)
{
    b->p = xmalloc(f->len + 1);
    memcpy(b->p, f->data, f->len);
    b->n = f->len;
}

static void on_config(struct worker *w, const struct syncmsg *m)
{
    char url[1025], station[SYNC_ID_MAX + 1], cursor[SYNC_URL_MAX + 1];

    config_clear(w);
    if (w->cycle_active) {
        w->cycle_ok = false;
        cycle_finish(w);
    }
    w->halted = false;
    if (!syncmsg_str(m, F_URL, url, sizeof(url)) ||
        !syncmsg_str(m, F_STATION, station, sizeof(station)) ||
        !syncmsg_str(m, F_VERSION, w->version, sizeof(w->version))) {
        report(w, OP_CONFIG, false, 0, "invalid sync configuration", -1);
        return;
    }
    size_t n = strlen(url);
    while (n > 0 && url[n - 1] == '/')
        url[--n] = '\0';
    if (strncasecmp(url, "https://", 8) != 0 || !url_chars_ok(url) || n > 512) {
        report(w, OP_CONFIG, false, 0, "sync url must be an https URL", -1);
        return;
    }
    if (!valid_id(station, strlen(station))) {
        report(w, OP_CONFIG, false, 0, "invalid station id", -1);
        return;
    }
    w->base = xstrdup(url);
    memcpy(w->station, station, sizeof(station));
    blob_from(&w->ca, syncmsg_get(m, F_CA_PEM));
    blob_from(&w->cert, syncmsg_get(m, F_CERT_PEM));
    blob_from(&w->key, syncmsg_get(m, F_KEY_PEM));
    if (syncmsg_has(m, F_ETAG)) {
        char etag[257];
        if (syncmsg_str(m, F_ETAG, etag, sizeof(etag)))
            w->etag = xstrdup(etag);
    }
    static const enum syncmsg_tag cursor_tag[OP_COUNT] = {
        [OP_RES] = F_CURSOR_RES, [OP_CRED] = F_CURSOR_CRED};
    for (enum op op = OP_RES; op <= OP_CRED; op++) {
        if (syncmsg_str(m, cursor_tag[op], cursor, sizeof(cursor)) &&
            sync_url_under(cursor, w->base)) {
            w->cursor[op] = xstrdup(cursor);
        } else {
            if (syncmsg_has(m, cursor_tag[op]))
                log_warnx("sync: stored %s cursor is not under %s; starting over", op_names[op],
                          w->base);
            w->cursor[op] = feed_start_url(w, op);
        }
        w->lastpage_ms[op] = LASTPAGE_FIRST_MS;
    }
    w->interval_s[OP_CONFIG] = 3600;
    w->interval_s[OP_RES] = 60;
    w->interval_s[OP_CRED] = 300;
    w->interval_s[OP_HEARTBEAT] = 300;
    /* [api] poll_interval, until the city's station config says otherwise. */
    static const enum syncmsg_tag interval_tag[OP_COUNT] = {
        [OP_RES] = F_INTERVAL_RES, [OP_CRED] = F_INTERVAL_CRED};
    for (enum op op = OP_RES; op <= OP_CRED; op++) {
        int64_t v = syncmsg_int(m, interval_tag[op], w->interval_s[op]);
        w->interval_s[op] = v < 5 ? 5 : v > 86400 ? 86400 : v;
    }
    w->configured = true;
    log_info("sync: configured for station %s at %s", w->station, w->base);
    start_op(w, OP_CONFIG);
    start_op(w, OP_RES);
    start_op(w, OP_CRED);
    start_op(w, OP_EVENTS); /* a batch that was waiting, sent again (ids are idempotent) */
}

static void on_poll(struct worker *w, const struct syncmsg *m)
{
    if (w->cycle_active) {
        w->cycle_ok = false;
        cycle_finish(w);
    }
    w->cycle = syncmsg_int(m, F_CYCLE, 0);
    w->cycle_active = true;
    w->cycle_ok = true;
    w->cycle_parts = 0;
    if (!w->configured) {
        report(w, OP_CONFIG, false, 0, "sync is not configured", -1);
        w->cycle_ok = false;
        cycle_finish(w);
        return;
    }
    w->halted = false;
    w->cycle_parts = 1u << OP_CONFIG | 1u << OP_RES | 1u << OP_CRED;
    if (w->up_pending)
        w->cycle_parts |= 1u << OP_EVENTS;
    for (int op = 0; op < OP_COUNT; op++) {
        w->failures[op] = 0;
        if (op == OP_RES || op == OP_CRED)
            w->lastpage_ms[op] = LASTPAGE_FIRST_MS;
        w->again[op] = false;
        if (op == OP_HEARTBEAT)
            continue;
        if (w->xfer[op] != NULL) {
            /* Part of the cycle, but it must be followed by a fresh request. */
            w->again[op] = op != OP_EVENTS && op != OP_USAGE;
            continue;
        }
        if (w->wait_drain[op])
            continue; /* starts when its page has been delivered */
        start_op(w, (enum op)op);
    }
}

static void on_upload(struct worker *w, const struct syncmsg *m)
{
    const struct syncmsg_field *f;
    size_t n = 0;
    int pos = 0;

    if (w->up_pending) {
        log_warnx("sync: a new upload batch replaces batch %" PRId64 " still pending", w->up_batch);
        xfer_abort(w, OP_EVENTS);
        cancel_timer(w, OP_EVENTS);
        upload_clear(w);
    }
    w->up_batch = syncmsg_int(m, F_BATCH, 0);
    while (syncmsg_next(m, F_EVENT_ID, &pos) != NULL)
        n++;
    if (n > SYNC_BATCH_MAX) {
        /* The contract allows 100 events; the answer could not carry more. */
        upload_done(w, "dead", 0, "batch of more than 100 events", NULL);
        return;
    }
    f = syncmsg_get(m, F_BODY);
    w->up_body = xmemdup(f->data, f->len);
    w->up_len = f->len;
    w->up_ids = xcalloc(n, sizeof(char *));
    pos = 0;
    while ((f = syncmsg_next(m, F_EVENT_ID, &pos)) != NULL)
        w->up_ids[w->up_n++] = xmemdup(f->data, f->len);
    w->up_pending = true;
    if (!w->configured || w->halted) {
        report(w, OP_EVENTS, false, 0,
               w->halted ? "sync is halted until the next sync request" : "sync is not configured",
               -1);
        return;
    }
    start_op(w, OP_EVENTS);
}

static void on_heartbeat(struct worker *w, const struct syncmsg *m)
{
    const struct syncmsg_field *f = syncmsg_get(m, F_BODY);

    if (!w->configured || w->halted) {
        report(w, OP_HEARTBEAT, false, 0,
               w->halted ? "sync is halted until the next sync request" : "sync is not configured",
               -1);
        return;
    }
    xfer_abort(w, OP_HEARTBEAT); /* the newer status wins */
    free(w->hb_body);
    w->hb_body = xmemdup(f->data, f->len);
    w->hb_len = f->len;
    start_op(w, OP_HEARTBEAT);
}

static void on_usage(struct worker *w, const struct syncmsg *m)
{
    const struct syncmsg_field *f = syncmsg_get(m, F_BODY);
    char date[sizeof(w->us_date)];

    if (!syncmsg_str(m, F_DATE, date, sizeof(date))) {
        log_errx("sync: a usage summary without its date");
        stop(w, 2);
        return;
    }
    if (w->us_pending) {
        log_warnx("sync: the usage summary of %s replaces that of %s still pending", date,
                  w->us_date);
        xfer_abort(w, OP_USAGE);
        cancel_timer(w, OP_USAGE);
        usage_clear(w);
    }
    memcpy(w->us_date, date, sizeof(date));
    w->us_body = xmemdup(f->data, f->len);
    w->us_len = f->len;
    w->us_pending = true;
    if (!w->configured || w->halted) {
        /* Kept: sent with the next sync request (SM_POLL starts every op). */
        report(w, OP_USAGE, false, 0,
               w->halted ? "sync is halted until the next sync request" : "sync is not configured",
               -1);
        return;
    }
    start_op(w, OP_USAGE);
}

static void handle_message(struct worker *w, const struct syncmsg *m)
{
    switch (m->type) {
    case SM_CONFIG:
        on_config(w, m);
        return;
    case SM_POLL:
        on_poll(w, m);
        return;
    case SM_UPLOAD:
        on_upload(w, m);
        return;
    case SM_HEARTBEAT:
        on_heartbeat(w, m);
        return;
    case SM_USAGE:
        on_usage(w, m);
        return;
    case SM_ITEM_RES:
    case SM_ITEM_CRED:
    case SM_ITEMS:
    case SM_PAGE_END:
    case SM_FEED_GONE:
    case SM_STATION:
    case SM_UPLOAD_DONE:
    case SM_REPORT:
    case SM_CYCLE_DONE:
    case SM_USAGE_DONE:
    case SM_TYPE_MAX:
        break;
    }
    log_errx("sync: main process sent a %s message, which only the worker sends",
             syncmsg_type_name(m->type));
    stop(w, 2);
}

static void flush_out(struct worker *w)
{
    while (w->outq != NULL && !w->stopping) {
        struct outmsg *m = w->outq;
        if (syncmsg_send(w->fd, m->data, m->len, true) < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!w->fd_wants_out && loop_mod_fd(w->loop, w->fd_watch, EPOLLIN | EPOLLOUT) == 0)
                    w->fd_wants_out = true;
                return;
            }
            if (errno != EPROTO) {
                /* The main process is gone: nothing left to do. */
                log_info("sync: main process closed the socket: %s", strerror(errno));
                stop(w, 0);
                return;
            }
            /* EPROTO: a bug, logged by syncmsg_send; the message is dropped. */
        }
        w->outq = m->next;
        w->outq_bytes -= m->len;
        free(m);
    }
    if (w->outq != NULL)
        return;
    w->outq_tail = &w->outq;
    if (w->fd_wants_out && loop_mod_fd(w->loop, w->fd_watch, EPOLLIN) == 0)
        w->fd_wants_out = false;
    for (enum op op = OP_RES; op <= OP_CRED; op++) {
        if (w->wait_drain[op]) {
            w->wait_drain[op] = false;
            schedule(w, op, w->drain_delay[op]);
        }
    }
}

static void on_socket(int fd, uint32_t events, void *arg)
{
    struct worker *w = arg;
    char why[200];

    if (w->stopping)
        return;
    if (events & EPOLLOUT)
        flush_out(w);
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)) || w->stopping)
        return;
    struct iovec iov = {w->inbuf, SYNCMSG_MAX};
    struct msghdr mh;
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        /* ECONNRESET: the main process closed with our messages unread. */
        if (errno == ECONNRESET)
            log_info("sync: main process closed the socket; exiting");
        else
            log_warn("sync: recv");
        stop(w, 0);
        return;
    }
    if (n == 0) {
        log_info("sync: main process closed the socket; exiting");
        stop(w, 0);
        return;
    }
    if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        log_errx("sync: message from the main process larger than %d bytes", SYNCMSG_MAX);
        stop(w, 2);
        return;
    }
    if (syncmsg_decode(w->inbuf, (size_t)n, w->msg, why, sizeof(why)) < 0) {
        log_errx("sync: bad message from the main process: %s", why);
        stop(w, 2);
        return;
    }
    handle_message(w, w->msg);
    if (w->outq_bytes > OUTQ_MAX_BYTES) {
        log_errx("sync: main process is not reading its messages");
        stop(w, 2);
    }
}

/* ---------------------------------------------------------------- main */

int syncworker_main(int fd)
{
    struct worker w;
    CURLcode cc;
    int status = 1;

    log_init("lockerd-sync", log_get_level());
    if (syncworker_sandbox() < 0) {
        log_errx("sync: cannot sandbox the worker; not running");
        return 1;
    }
    memset(&w, 0, sizeof(w));
    w.fd = fd;
    w.outq_tail = &w.outq;
    if (getrandom(&w.rng, sizeof(w.rng), GRND_NONBLOCK) != (ssize_t)sizeof(w.rng))
        w.rng = (uint64_t)clock_mono_ns_raw();
    w.rng |= 1; /* xorshift must not start at 0 */
    w.buf = xmalloc(SYNCMSG_MAX);
    w.inbuf = xmalloc(SYNCMSG_MAX);
    /* Sends use MSG_NOSIGNAL; this covers anything else writing to a closed peer. */
    signal(SIGPIPE, SIG_IGN);
    w.msg = xmalloc(sizeof(*w.msg));
    w.check = xmalloc(sizeof(*w.check));

    if ((cc = curl_global_init(CURL_GLOBAL_DEFAULT)) != CURLE_OK) {
        log_errx("sync: curl_global_init: %s", curl_easy_strerror(cc));
        goto out_free;
    }
    w.loop = loop_new();
    if (w.loop == NULL) {
        log_warn("sync: loop_new");
        goto out_curl;
    }
    w.multi = curl_multi_init();
    if (w.multi == NULL) {
        log_errx("sync: curl_multi_init failed");
        goto out_loop;
    }
    curl_multi_setopt(w.multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
    curl_multi_setopt(w.multi, CURLMOPT_SOCKETDATA, &w);
    curl_multi_setopt(w.multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
    curl_multi_setopt(w.multi, CURLMOPT_TIMERDATA, &w);

    w.fd_watch = loop_add_fd(w.loop, fd, EPOLLIN, on_socket, &w);
    if (w.fd_watch < 0) {
        log_errx("sync: cannot watch fd %d: %s", fd, strerror(-w.fd_watch));
        goto out_multi;
    }
    log_debug("sync: worker running (pid %d)", (int)getpid());
    status = loop_run(w.loop);
    if (status < 0) {
        log_errx("sync: event loop: %s", strerror(-status));
        status = 1;
    }

out_multi:
    w.stopping = true;
    config_clear(&w);
    upload_clear(&w);
    curl_multi_cleanup(w.multi);
out_loop:
    loop_free(w.loop);
out_curl:
    curl_global_cleanup();
out_free:
    outq_free_list(w.outq);
    free(w.buf);
    free(w.inbuf);
    free(w.msg);
    free(w.check);
    return status;
}

/* ======================================================================
 * Sandbox
 * ====================================================================== */

/* All capabilities go, also those a non-root service user may have been given. */
static int drop_capabilities(void)
{
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];

    memset(data, 0, sizeof(data));
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    if (syscall(SYS_capset, &hdr, data) < 0) {
        log_warn("sandbox: capset");
        return -1;
    }
    return 0;
}

static int drop_root(void)
{
    struct passwd *pw;

    if (geteuid() != 0)
        return 0;
    pw = getpwnam("nobody");
    if (pw == NULL || pw->pw_uid == 0) {
        log_errx("sandbox: no user \"nobody\" to run as");
        return -1;
    }
    uid_t uid = pw->pw_uid;
    gid_t gid = pw->pw_gid;
    if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0) {
        log_warn("sandbox: dropping to nobody");
        return -1;
    }
    /* Make sure there is no way back. */
    if (setuid(0) == 0 || seteuid(0) == 0 || setgid(0) == 0 || getuid() == 0 || geteuid() == 0 ||
        getgid() == 0 || getegid() == 0) {
        log_errx("sandbox: could regain root after dropping it");
        return -1;
    }
    return 0;
}

struct ll_ruleset_attr {
    uint64_t handled_access_fs;
};

struct ll_path_beneath {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

static int ll_allow(int ruleset, const char *path, uint64_t access)
{
    struct ll_path_beneath pb;
    int fd = open(path, O_PATH | O_CLOEXEC);

    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    pb.allowed_access = access;
    pb.parent_fd = fd;
    int r = (int)syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &pb, 0);
    int saved = errno;
    close(fd);
    errno = saved;
    return r;
}

static int landlock(void)
{
    int abi = (int)syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    if (abi < 0) {
        if (errno == ENOSYS || errno == EOPNOTSUPP) {
            log_warnx("sandbox: the kernel has no Landlock; file access is not restricted");
            return 0;
        }
        log_warn("sandbox: landlock version");
        return -1;
    }
    uint64_t fs =
        LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_READ_FILE |
        LANDLOCK_ACCESS_FS_READ_DIR | LANDLOCK_ACCESS_FS_REMOVE_DIR |
        LANDLOCK_ACCESS_FS_REMOVE_FILE | LANDLOCK_ACCESS_FS_MAKE_CHAR |
        LANDLOCK_ACCESS_FS_MAKE_DIR | LANDLOCK_ACCESS_FS_MAKE_REG | LANDLOCK_ACCESS_FS_MAKE_SOCK |
        LANDLOCK_ACCESS_FS_MAKE_FIFO | LANDLOCK_ACCESS_FS_MAKE_BLOCK | LANDLOCK_ACCESS_FS_MAKE_SYM;
    if (abi >= 2)
        fs |= LANDLOCK_ACCESS_FS_REFER;
    if (abi >= 3)
        fs |= LANDLOCK_ACCESS_FS_TRUNCATE;
    if (abi >= 5)
        fs |= LANDLOCK_ACCESS_FS_IOCTL_DEV;
    struct ll_ruleset_attr attr = {fs};
    int rs = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof(attr), 0);
    if (rs < 0) {
        log_warn("sandbox: landlock_create_ruleset");
        return -1;
    }
    /* Name resolution reads nsswitch.conf, hosts, resolv.conf and the NSS modules;
     * OpenSSL reads its config. Nothing is written and nothing executed. */
    const uint64_t ro_dir = LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR;
    static const char *const dirs[] = {"/etc", "/usr", "/lib", "/lib64"};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        if (ll_allow(rs, dirs[i], ro_dir) < 0) {
            log_warn("sandbox: landlock rule for %s", dirs[i]);
            close(rs);
            return -1;
        }
    }
#if defined(__SANITIZE_ADDRESS__) || defined(SYNCWORKER_SANITIZED)
    /* Sanitizer builds only: LeakSanitizer reads /proc/self/task and maps at exit. */
    if (ll_allow(rs, "/proc/self", ro_dir) < 0)
        log_warn("sandbox: landlock rule for /proc/self");
#endif
    /* Where systemd-resolved manages it, /etc/resolv.conf links into /run: that one
     * file is allowed too, read-only, or DNS would fail. */
    char *real = realpath("/etc/resolv.conf", NULL);
    if (real != NULL && strncmp(real, "/etc/", 5) != 0 && strncmp(real, "/usr/", 5) != 0 &&
        ll_allow(rs, real, LANDLOCK_ACCESS_FS_READ_FILE) < 0)
        log_warn("sandbox: landlock rule for %s", real);
    free(real);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
        syscall(SYS_landlock_restrict_self, rs, 0) < 0) {
        log_warn("sandbox: landlock_restrict_self");
        close(rs);
        return -1;
    }
    close(rs);
    return 0;
}

/* ---- seccomp: what Landlock cannot forbid ----
 *
 * Under systemd the worker runs as lockerd's own user, so it could connect to the
 * control socket (a pathname Unix socket: Landlock does not govern connect(2)) and
 * be a technician there, or signal and trace lockerd. A seccomp filter closes that:
 * no new Unix sockets (the worker has its socketpair; name resolution falls back
 * from nscd and nss-resolve to DNS over UDP/TCP), signals only to itself, no
 * ptrace, no access to other processes' memory, no exec. Other architectures'
 * system call numbers are refused outright (x32 on x86_64). */

#if defined(__x86_64__)
#define SECCOMP_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define SECCOMP_ARCH AUDIT_ARCH_AARCH64
#elif defined(__arm__)
#define SECCOMP_ARCH AUDIT_ARCH_ARM
#elif defined(__i386__)
#define SECCOMP_ARCH AUDIT_ARCH_I386
#endif

/* The low 32 bits of argument n (pids and address families fit). */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ARG_LO(n) (offsetof(struct seccomp_data, args) + (n) * sizeof(uint64_t))
#else
#define ARG_LO(n) (offsetof(struct seccomp_data, args) + (n) * sizeof(uint64_t) + 4)
#endif

#define DENY_ERRNO (SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA))
/* Two instructions: syscall nr is refused. */
#define SC_DENY(nr)                                                                                \
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), BPF_STMT(BPF_RET | BPF_K, DENY_ERRNO)
/* Five instructions: syscall nr is allowed only when argument arg equals val. */
#define SC_ONLY_IF(nr, arg, val)                                                                   \
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 4),                                               \
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(arg)),                                           \
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (val), 0, 1),                                          \
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW), BPF_STMT(BPF_RET | BPF_K, DENY_ERRNO)
/* Five instructions: syscall nr is refused when argument arg equals val. */
#define SC_DENY_IF(nr, arg, val)                                                                   \
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 4),                                               \
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(arg)),                                           \
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (val), 0, 1), BPF_STMT(BPF_RET | BPF_K, DENY_ERRNO),   \
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)

static int seccomp_confine(void)
{
#ifdef SECCOMP_ARCH
#ifndef __SANITIZE_ADDRESS__
    uint32_t self = (uint32_t)getpid();
#endif
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SECCOMP_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        /* x32 system calls on x86_64 carry bit 30: another table, refused. */
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        SC_DENY_IF(__NR_socket, 0, AF_UNIX),
        SC_DENY(__NR_socketpair),
        SC_DENY(__NR_execve),
        SC_DENY(__NR_execveat),
        SC_DENY(__NR_process_vm_readv),
        SC_DENY(__NR_process_vm_writev),
        SC_DENY(__NR_pidfd_open),
        SC_DENY(__NR_pidfd_send_signal),
        SC_DENY(__NR_tkill),
#ifndef __SANITIZE_ADDRESS__
        /* LeakSanitizer stops the world with ptrace and signals at exit; the
         * sanitizer build keeps these (the filter above still guards the socket). */
        SC_DENY(__NR_ptrace),
        SC_ONLY_IF(__NR_kill, 0, self),
        SC_ONLY_IF(__NR_tgkill, 0, self),
#endif
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = (unsigned short)(sizeof filter / sizeof filter[0]),
                              .filter = filter};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) {
        log_warn("sandbox: seccomp");
        return -1;
    }
    return 0;
#else
    log_warnx("sandbox: no seccomp filter for this architecture");
    return 0;
#endif
}

int syncworker_sandbox(void)
{
    if (drop_root() < 0)
        return -1;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        log_warn("sandbox: no_new_privs");
        return -1;
    }
    if (drop_capabilities() < 0)
        return -1;
    if (landlock() < 0)
        return -1;
    return seccomp_confine();
}

static const char *open_result(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC);
    if (fd >= 0) {
        close(fd);
        return "ok";
    }
    const char *name = strerrorname_np(errno);
    return name != NULL ? name : "?";
}

static const char *errno_result(int rc)
{
    if (rc == 0)
        return "ok";
    const char *name = strerrorname_np(errno);
    return name != NULL ? name : "?";
}

/* "unix:PATH" connects to a Unix socket; "signal:PID" sends signal 0 to a process;
 * anything else is a file opened read-write and read-only. */
static void probe_one(const char *arg)
{
    if (strncmp(arg, "unix:", 5) == 0) {
        int rc = -1;
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0) {
            struct sockaddr_un sa = {.sun_family = AF_UNIX};
            snprintf(sa.sun_path, sizeof sa.sun_path, "%s", arg + 5);
            rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
            int saved = errno;
            close(fd);
            errno = saved;
        }
        printf("%s connect=%s\n", arg, errno_result(rc));
    } else if (strncmp(arg, "signal:", 7) == 0) {
        printf("%s kill=%s\n", arg, errno_result(kill((pid_t)atoi(arg + 7), 0)));
    } else {
        const char *rw = open_result(arg, O_RDWR);
        printf("%s rw=%s ro=%s\n", arg, rw, open_result(arg, O_RDONLY));
    }
}

int syncworker_probe(int argc, char **argv)
{
    if (syncworker_sandbox() < 0)
        return 1;
    for (int i = 0; i < argc; i++)
        probe_one(argv[i]);
    fflush(stdout);
    return 0;
}
