/*
 * syncmsg.c - encoding, schema checks and decoding of sync worker messages.
 *
 * The schema is two tables: what kind of value each tag holds (and how long it may
 * be), and which tags each message type carries. The decoder walks the fields once,
 * checks each against both tables, and counts occurrences so that missing required
 * fields and repeated single fields are refused.
 */
#include "daemon/syncmsg.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "daemon/log.h"

enum kind {
    K_INT,  /* 8 bytes, little endian, signed */
    K_STR,  /* UTF-8, no control characters */
    K_TEXT, /* UTF-8, control characters only \t \n \r (PEM, JSON bodies) */
    K_BLOB, /* bytes */
    K_ITEM, /* a whole SM_ITEM_RES or SM_ITEM_CRED message, checked by its own schema */
};

struct tag_spec {
    const char *name;
    enum kind kind;
    uint32_t min, max; /* byte length bounds (K_INT: always 8) */
};

#define ID_MAX 63
static const struct tag_spec tags[F_TAG_MAX] = {
    [F_URL] = {"url", K_STR, 8, 1024},
    [F_STATION] = {"station", K_STR, 1, ID_MAX},
    [F_VERSION] = {"version", K_STR, 1, 32},
    [F_CA_PEM] = {"ca_pem", K_TEXT, 1, 65536},
    [F_CERT_PEM] = {"cert_pem", K_TEXT, 1, 65536},
    [F_KEY_PEM] = {"key_pem", K_TEXT, 1, 16384},
    [F_CURSOR_RES] = {"cursor_res", K_STR, 1, 2048},
    [F_CURSOR_CRED] = {"cursor_cred", K_STR, 1, 2048},
    [F_ETAG] = {"etag", K_STR, 1, 256},
    [F_CYCLE] = {"cycle", K_INT, 8, 8},
    [F_BATCH] = {"batch", K_INT, 8, 8},
    [F_BODY] = {"body", K_TEXT, 2, 200000},
    [F_EVENT_ID] = {"event_id", K_STR, 36, 36},
    [F_RESULT] = {"result", K_STR, 1, 16},
    [F_OUTCOME] = {"outcome", K_STR, 1, 16},
    [F_FEED] = {"feed", K_INT, 8, 8},
    [F_ID] = {"id", K_STR, 1, ID_MAX},
    [F_MODIFIED] = {"modified", K_INT, 8, 8},
    [F_DELETED] = {"deleted", K_INT, 8, 8},
    [F_START] = {"start", K_INT, 8, 8},
    [F_END] = {"end", K_INT, 8, 8},
    [F_CLUB] = {"club", K_STR, 1, ID_MAX},
    [F_CLUB_NAME] = {"club_name", K_STR, 0, 127},
    [F_COMPARTMENT] = {"compartment", K_INT, 8, 8},
    [F_STATUS] = {"status", K_STR, 1, 16},
    [F_UID_HMAC] = {"uid_hmac", K_BLOB, 32, 32},
    [F_CARD_TYPE] = {"card_type", K_STR, 1, 15},
    [F_MEMBER] = {"member", K_STR, 1, ID_MAX},
    [F_MEMBER_NAME] = {"member_name", K_STR, 0, 127},
    [F_VALID_FROM] = {"valid_from", K_INT, 8, 8},
    [F_VALID_UNTIL] = {"valid_until", K_INT, 8, 8},
    [F_NEXT] = {"next", K_STR, 1, 2048},
    [F_LAST_PAGE] = {"last_page", K_INT, 8, 8},
    [F_NAME] = {"name", K_STR, 0, 127},
    [F_INTERVAL_RES] = {"interval_res", K_INT, 8, 8},
    [F_INTERVAL_CRED] = {"interval_cred", K_INT, 8, 8},
    [F_INTERVAL_CONFIG] = {"interval_config", K_INT, 8, 8},
    [F_INTERVAL_HEARTBEAT] = {"interval_heartbeat", K_INT, 8, 8},
    [F_OP] = {"op", K_STR, 1, 16},
    [F_SUCCESS] = {"ok", K_INT, 8, 8},
    [F_HTTP] = {"http", K_INT, 8, 8},
    [F_ERROR] = {"error", K_STR, 0, 255},
    [F_RETRY_MS] = {"retry_ms", K_INT, 8, 8},
    [F_DATE] = {"date", K_STR, 10, 10},
    [F_ITEM] = {"item", K_ITEM, 4, SYNCMSG_ITEM_MAX},
};

/* How often a tag may occur in a message type. */
enum occurs { NEVER = 0, OPT, REQ, MANY /* 0..n */, SOME /* 1..n */ };

struct type_spec {
    const char *name;
    unsigned char occurs[F_TAG_MAX];
};

static const struct type_spec types[SM_TYPE_MAX] = {
    [SM_CONFIG] = {"config",
                   {[F_URL] = REQ,
                    [F_STATION] = REQ,
                    [F_VERSION] = REQ,
                    [F_CA_PEM] = REQ,
                    [F_CERT_PEM] = REQ,
                    [F_KEY_PEM] = REQ,
                    [F_CURSOR_RES] = OPT,
                    [F_CURSOR_CRED] = OPT,
                    [F_ETAG] = OPT,
                    [F_INTERVAL_RES] = OPT,
                    [F_INTERVAL_CRED] = OPT}},
    [SM_POLL] = {"poll", {[F_CYCLE] = REQ}},
    [SM_UPLOAD] = {"upload", {[F_BATCH] = REQ, [F_BODY] = REQ, [F_EVENT_ID] = SOME}},
    [SM_HEARTBEAT] = {"heartbeat", {[F_BODY] = REQ}},
    /* Deleted items carry only ID and MODIFIED; the main process checks that an
     * updated item has the rest (the schema cannot say "required unless"). */
    [SM_ITEM_RES] = {"item_res",
                     {[F_ID] = REQ,
                      [F_MODIFIED] = REQ,
                      [F_DELETED] = REQ,
                      [F_START] = OPT,
                      [F_END] = OPT,
                      [F_CLUB] = OPT,
                      [F_CLUB_NAME] = OPT,
                      [F_COMPARTMENT] = MANY,
                      [F_STATUS] = OPT}},
    [SM_ITEM_CRED] = {"item_cred",
                      {[F_ID] = REQ,
                       [F_MODIFIED] = REQ,
                       [F_DELETED] = REQ,
                       [F_UID_HMAC] = OPT,
                       [F_CARD_TYPE] = OPT,
                       [F_MEMBER] = OPT,
                       [F_MEMBER_NAME] = OPT,
                       [F_CLUB] = MANY,
                       [F_VALID_FROM] = OPT,
                       [F_VALID_UNTIL] = OPT,
                       [F_STATUS] = OPT}},
    [SM_PAGE_END] = {"page_end", {[F_FEED] = REQ, [F_NEXT] = REQ, [F_LAST_PAGE] = REQ}},
    [SM_FEED_GONE] = {"feed_gone", {[F_FEED] = REQ}},
    [SM_STATION] = {"station",
                    {[F_ETAG] = REQ,
                     [F_NAME] = REQ,
                     [F_INTERVAL_RES] = REQ,
                     [F_INTERVAL_CRED] = REQ,
                     [F_INTERVAL_CONFIG] = REQ,
                     [F_INTERVAL_HEARTBEAT] = REQ}},
    [SM_UPLOAD_DONE] = {"upload_done",
                        {[F_BATCH] = REQ,
                         [F_OUTCOME] = REQ,
                         [F_HTTP] = OPT,
                         [F_ERROR] = OPT,
                         [F_EVENT_ID] = MANY,
                         [F_RESULT] = MANY}},
    [SM_REPORT] =
        {"report",
         {[F_OP] = REQ, [F_SUCCESS] = REQ, [F_HTTP] = OPT, [F_ERROR] = OPT, [F_RETRY_MS] = OPT}},
    [SM_CYCLE_DONE] = {"cycle_done", {[F_CYCLE] = REQ, [F_SUCCESS] = REQ}},
    [SM_USAGE] = {"usage", {[F_DATE] = REQ, [F_BODY] = REQ}},
    [SM_USAGE_DONE] = {"usage_done",
                       {[F_DATE] = REQ, [F_OUTCOME] = REQ, [F_HTTP] = OPT, [F_ERROR] = OPT}},
    /* At most SYNCMSG_ITEMS_MAX: checked in syncmsg_decode(). */
    [SM_ITEMS] = {"items", {[F_ITEM] = SOME}},
};

const char *syncmsg_type_name(enum syncmsg_type type)
{
    if ((int)type <= 0 || type >= SM_TYPE_MAX || types[type].name == NULL)
        return "?";
    return types[type].name;
}

/* ---- building ---- */

static void put_bytes(struct syncmsg_builder *b, const void *p, size_t n)
{
    if (b->overflow || b->cap - b->len < n) {
        b->overflow = true;
        return;
    }
    if (n > 0) /* p may be NULL for an empty field */
        memcpy(b->buf + b->len, p, n);
    b->len += n;
}

static void put_u16(struct syncmsg_builder *b, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    put_bytes(b, x, 2);
}

static void put_u32(struct syncmsg_builder *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put_bytes(b, x, 4);
}

void syncmsg_start(struct syncmsg_builder *b, uint8_t *buf, size_t cap, enum syncmsg_type type)
{
    b->buf = buf;
    b->cap = cap;
    b->len = 0;
    b->count = 0;
    b->overflow = false;
    uint8_t head[2] = {SYNCMSG_VERSION, (uint8_t)type};
    put_bytes(b, head, 2);
    put_u16(b, 0); /* count, patched by syncmsg_finish() */
}

void syncmsg_put_blob(struct syncmsg_builder *b, enum syncmsg_tag tag, const void *p, size_t n)
{
    if (n > UINT32_MAX || b->count >= SYNCMSG_MAX_FIELDS) {
        b->overflow = true;
        return;
    }
    put_u16(b, (uint16_t)tag);
    put_u32(b, (uint32_t)n);
    put_bytes(b, p, n);
    b->count++;
}

void syncmsg_put_str(struct syncmsg_builder *b, enum syncmsg_tag tag, const char *s)
{
    syncmsg_put_blob(b, tag, s, strlen(s));
}

void syncmsg_put_int(struct syncmsg_builder *b, enum syncmsg_tag tag, int64_t v)
{
    uint8_t x[8];
    uint64_t u = (uint64_t)v;
    for (int i = 0; i < 8; i++)
        x[i] = (uint8_t)(u >> (8 * i));
    syncmsg_put_blob(b, tag, x, sizeof x);
}

int64_t syncmsg_finish(struct syncmsg_builder *b)
{
    if (b->overflow || b->len < 4)
        return -1;
    b->buf[2] = (uint8_t)b->count;
    b->buf[3] = (uint8_t)(b->count >> 8);
    return (int64_t)b->len;
}

/* ---- decoding ---- */

static bool fail(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static bool fail(char *why, size_t whylen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
    return false;
}

/* Strict UTF-8 (no overlongs, no surrogates, at most U+10FFFF); control characters
 * refused except \t \n \r when text. */
static bool utf8_ok(const uint8_t *p, size_t n, bool text)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) {
            if ((c < 0x20 || c == 0x7f) && !(text && (c == '\t' || c == '\n' || c == '\r')))
                return false;
            i++;
            continue;
        }
        int more;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) {
            more = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            more = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            more = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i <= (size_t)more)
            return false;
        for (int k = 1; k <= more; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ||
            (cp >= 0x80 && cp < 0xa0))
            return false;
        i += (size_t)more + 1;
    }
    return true;
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static bool check_field(const struct syncmsg_field *f, char *why, size_t whylen)
{
    const struct tag_spec *t = &tags[f->tag];
    if (f->len < t->min || f->len > t->max)
        return fail(why, whylen, "field %s: length %u outside %u..%u", t->name, (unsigned)f->len,
                    (unsigned)t->min, (unsigned)t->max);
    switch (t->kind) {
    case K_INT:
    case K_BLOB:
        return true;
    case K_STR:
    case K_TEXT:
        if (!utf8_ok(f->data, f->len, t->kind == K_TEXT))
            return fail(why, whylen, "field %s: not clean UTF-8 text", t->name);
        return true;
    case K_ITEM: {
        /* The type is checked before the decoding: an item's own schema has no
         * F_ITEM, so this never goes deeper than one level. The struct is large for
         * the stack of a fuzzer or a sanitizer build, hence static (each process
         * decodes from one thread, and the level below never comes back here). */
        static struct syncmsg inner;
        char iwhy[120];
        if (f->data[1] != SM_ITEM_RES && f->data[1] != SM_ITEM_CRED)
            return fail(why, whylen, "field %s: a %s message", t->name,
                        syncmsg_type_name((enum syncmsg_type)f->data[1]));
        if (syncmsg_decode(f->data, f->len, &inner, iwhy, sizeof iwhy) < 0)
            return fail(why, whylen, "field %s: %s", t->name, iwhy);
        return true;
    }
    }
    return fail(why, whylen, "field %s: unknown kind", t->name);
}

int syncmsg_decode(const uint8_t *buf, size_t len, struct syncmsg *out, char *why, size_t whylen)
{
    out->count = 0;
    if (len < 4 || len > SYNCMSG_MAX)
        return fail(why, whylen, "message length %zu", len), -1;
    if (buf[0] != SYNCMSG_VERSION)
        return fail(why, whylen, "message version %u", buf[0]), -1;
    unsigned type = buf[1];
    if (type == 0 || type >= SM_TYPE_MAX || types[type].name == NULL)
        return fail(why, whylen, "unknown message type %u", type), -1;
    out->type = (enum syncmsg_type)type;
    const struct type_spec *ts = &types[type];
    unsigned count = get_u16(buf + 2);
    if (count > SYNCMSG_MAX_FIELDS)
        return fail(why, whylen, "%s: %u fields", ts->name, count), -1;

    int seen[F_TAG_MAX] = {0};
    size_t off = 4;
    for (unsigned i = 0; i < count; i++) {
        if (len - off < 6)
            return fail(why, whylen, "%s: field %u truncated", ts->name, i), -1;
        struct syncmsg_field *f = &out->fields[i];
        f->tag = get_u16(buf + off);
        f->len = get_u32(buf + off + 2);
        off += 6;
        if (f->len > len - off)
            return fail(why, whylen, "%s: field %u runs past the end", ts->name, i), -1;
        f->data = buf + off;
        off += f->len;
        if (f->tag == 0 || f->tag >= F_TAG_MAX || ts->occurs[f->tag] == NEVER)
            return fail(why, whylen, "%s: unexpected field tag %u", ts->name, f->tag), -1;
        if (!check_field(f, why, whylen))
            return -1;
        seen[f->tag]++;
        enum occurs o = (enum occurs)ts->occurs[f->tag];
        if ((o == OPT || o == REQ) && seen[f->tag] > 1)
            return fail(why, whylen, "%s: field %s repeated", ts->name, tags[f->tag].name), -1;
    }
    if (off != len)
        return fail(why, whylen, "%s: %zu trailing bytes", ts->name, len - off), -1;
    if (seen[F_ITEM] > SYNCMSG_ITEMS_MAX)
        return fail(why, whylen, "%s: %d items", ts->name, seen[F_ITEM]), -1;
    for (int t = 1; t < F_TAG_MAX; t++) {
        enum occurs o = (enum occurs)ts->occurs[t];
        if ((o == REQ || o == SOME) && seen[t] == 0)
            return fail(why, whylen, "%s: missing field %s", ts->name, tags[t].name), -1;
    }
    out->count = (int)count;
    return 0;
}

const struct syncmsg_field *syncmsg_next(const struct syncmsg *m, enum syncmsg_tag tag, int *pos)
{
    for (; *pos < m->count; (*pos)++) {
        if (m->fields[*pos].tag == tag)
            return &m->fields[(*pos)++];
    }
    return NULL;
}

const struct syncmsg_field *syncmsg_get(const struct syncmsg *m, enum syncmsg_tag tag)
{
    int pos = 0;
    return syncmsg_next(m, tag, &pos);
}

bool syncmsg_has(const struct syncmsg *m, enum syncmsg_tag tag)
{
    return syncmsg_get(m, tag) != NULL;
}

bool syncmsg_field_str(const struct syncmsg_field *f, char *out, size_t outlen)
{
    if (f == NULL || outlen == 0 || f->len >= outlen)
        return false;
    memcpy(out, f->data, f->len);
    out[f->len] = '\0';
    return true;
}

int64_t syncmsg_field_int(const struct syncmsg_field *f)
{
    uint64_t u = 0;
    for (int i = 7; i >= 0; i--)
        u = (u << 8) | f->data[i];
    return (int64_t)u;
}

bool syncmsg_str(const struct syncmsg *m, enum syncmsg_tag tag, char *out, size_t outlen)
{
    return syncmsg_field_str(syncmsg_get(m, tag), out, outlen);
}

int64_t syncmsg_int(const struct syncmsg *m, enum syncmsg_tag tag, int64_t dflt)
{
    const struct syncmsg_field *f = syncmsg_get(m, tag);
    return f != NULL && f->len == 8 ? syncmsg_field_int(f) : dflt;
}

/* ---- transport ---- */

int syncmsg_send(int fd, const uint8_t *buf, size_t len, bool nonblock)
{
    /* The decoder is the schema: a message that would not decode is never sent. The
     * struct is large, so it is static; each process sends from one thread. */
    static struct syncmsg check;
    char why[160];
    if (syncmsg_decode(buf, len, &check, why, sizeof why) < 0) {
        log_errx("sync: refusing to send a bad message: %s", why);
        errno = EPROTO;
        return -1;
    }
    ssize_t n;
    do {
        n = send(fd, buf, len, MSG_NOSIGNAL | (nonblock ? MSG_DONTWAIT : 0));
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -1;
    if ((size_t)n != len) {
        errno = EMSGSIZE;
        return -1;
    }
    return 0;
}
