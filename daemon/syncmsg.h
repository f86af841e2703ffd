/*
 * syncmsg.h - typed, length-checked messages between lockerd and its sync worker.
 *
 * All HTTP, TLS and JSON parsing of the city API's data happens in a separate,
 * unprivileged process (daemon/syncworker.c). It talks to the main process over a
 * SOCK_SEQPACKET socketpair: one datagram is one message, so framing comes from the
 * kernel. A message is
 *
 *     u8 version (SYNCMSG_VERSION) | u8 type | u16 count | count x field
 *     field = u16 tag | u32 length | length bytes          (little endian)
 *
 * and every message type has a schema: which tags it may carry, which are required,
 * which may repeat, and the kind and size limits of each (integers are exactly 8
 * bytes, strings are valid UTF-8 without NUL or control characters, blobs have a
 * fixed or maximum length). syncmsg_decode() rejects anything that does not match,
 * so that a confused or compromised worker cannot hand the main process a malformed
 * record; the main process still validates the meaning (dates, ranges) again.
 *
 * Error convention: functions return 0 on success and -1 on failure with a reason in
 * the caller's buffer (decode) or errno (send/recv).
 */
#ifndef LOCKERD_SYNCMSG_H
#define LOCKERD_SYNCMSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SYNCMSG_VERSION 1
/* Largest datagram either side sends or accepts. */
#define SYNCMSG_MAX 262144 /* 256 KiB */
/* Most fields in one message (an upload batch: 100 event ids plus a few). */
#define SYNCMSG_MAX_FIELDS 240
/* Largest item message (a credential with 16 clubs is about 1.5 KiB), and most items
 * in one SM_ITEMS message. */
#define SYNCMSG_ITEM_MAX  4096
#define SYNCMSG_ITEMS_MAX 100

enum syncmsg_type {
    /* main -> worker */
    SM_CONFIG = 1, /* URL STATION VERSION CA_PEM CERT_PEM KEY_PEM [CURSOR_RES] [CURSOR_CRED] [ETAG]
                      [INTERVAL_RES] [INTERVAL_CRED] */
    SM_POLL,       /* CYCLE: run a whole cycle now (config, feeds, heartbeat), back-off reset */
    SM_UPLOAD,     /* BATCH BODY EVENT_ID*: POST this batch of events (JSON built by main) */
    SM_HEARTBEAT,  /* BODY: PUT this status */
    /* worker -> main */
    SM_ITEM_RES,    /* one reservation item (see syncmsg.c for the fields) */
    SM_ITEM_CRED,   /* one credential item */
    SM_PAGE_END,    /* FEED NEXT LAST_PAGE: apply the page's items with this cursor */
    SM_FEED_GONE,   /* FEED: 410, the cursor is older than the server's retention */
    SM_STATION,     /* ETAG NAME INTERVAL x4: the station config changed */
    SM_UPLOAD_DONE, /* BATCH OUTCOME [HTTP] [ERROR] (EVENT_ID RESULT)* */
    SM_REPORT,      /* OP SUCCESS [HTTP] [ERROR] [RETRY_MS]: how a request went */
    SM_CYCLE_DONE,  /* CYCLE SUCCESS: the cycle asked for by SM_POLL has ended */
    /* main -> worker */
    SM_USAGE, /* DATE BODY: PUT this day's open-data summary (replaces one still pending) */
    /* worker -> main */
    SM_USAGE_DONE, /* DATE OUTCOME [HTTP] [ERROR]: the day's summary was taken ("done") or
                      refused for good with 400/422 ("dead") */
    SM_ITEMS,      /* ITEM+: several items of one page, each a whole SM_ITEM_RES or
                      SM_ITEM_CRED message checked like one sent alone (one datagram per
                      item would cost the two processes a system call each) */
    SM_TYPE_MAX
};

enum syncmsg_tag {
    F_URL = 1,
    F_STATION,
    F_VERSION,
    F_CA_PEM,
    F_CERT_PEM,
    F_KEY_PEM,
    F_CURSOR_RES,
    F_CURSOR_CRED,
    F_ETAG,
    F_CYCLE,
    F_BATCH,
    F_BODY,
    F_EVENT_ID,
    F_RESULT,  /* "created", "duplicate", "rejected" */
    F_OUTCOME, /* "done", "dead" (400/422: dead letters), "halt" (401/403/404) */
    F_FEED,    /* 1 reservations, 2 credentials */
    F_ID,
    F_MODIFIED,
    F_DELETED, /* 0/1 */
    F_START,   /* ms */
    F_END,
    F_CLUB,
    F_CLUB_NAME,
    F_COMPARTMENT,
    F_STATUS, /* "confirmed"/"cancelled" or "active"/"revoked" */
    F_UID_HMAC,
    F_CARD_TYPE,
    F_MEMBER,
    F_MEMBER_NAME,
    F_VALID_FROM, /* ms, 0 = none */
    F_VALID_UNTIL,
    F_NEXT,
    F_LAST_PAGE,
    F_NAME,
    F_INTERVAL_RES, /* seconds */
    F_INTERVAL_CRED,
    F_INTERVAL_CONFIG,
    F_INTERVAL_HEARTBEAT,
    F_OP,      /* "config", "reservations", "credentials", "events", "heartbeat", "usage" */
    F_SUCCESS, /* 0/1 (not F_OK: unistd.h has that) */
    F_HTTP,
    F_ERROR,
    F_RETRY_MS,
    F_DATE, /* "YYYY-MM-DD", a local calendar day of the station */
    F_ITEM, /* an embedded SM_ITEM_RES or SM_ITEM_CRED message */
    F_TAG_MAX
};

enum { SYNC_FEED_RESERVATIONS = 1, SYNC_FEED_CREDENTIALS = 2 };

struct syncmsg_field {
    uint16_t tag;
    uint32_t len;
    const uint8_t *data; /* points into the buffer given to syncmsg_decode() */
};

/* A decoded message. Field data borrows the decoded buffer. */
struct syncmsg {
    enum syncmsg_type type;
    int count;
    struct syncmsg_field fields[SYNCMSG_MAX_FIELDS];
};

/* ---- building (sender side) ---- */

/* A message being built in a caller-provided buffer. */
struct syncmsg_builder {
    uint8_t *buf;
    size_t cap, len;
    int count;
    bool overflow; /* set when a field did not fit; syncmsg_finish() then fails */
};

void syncmsg_start(struct syncmsg_builder *b, uint8_t *buf, size_t cap, enum syncmsg_type type);
void syncmsg_put_str(struct syncmsg_builder *b, enum syncmsg_tag tag, const char *s);
void syncmsg_put_int(struct syncmsg_builder *b, enum syncmsg_tag tag, int64_t v);
void syncmsg_put_blob(struct syncmsg_builder *b, enum syncmsg_tag tag, const void *p, size_t n);
/* Returns the message length, or -1 if it did not fit or has too many fields. The
 * result is not checked against the schema here: syncmsg_send() does that, so a
 * sender bug shows up on the sender's side. */
int64_t syncmsg_finish(struct syncmsg_builder *b);

/* ---- decoding (receiver side) ---- */

/* Parses and checks buf[0..len) against the schema of its type. On failure returns
 * -1 with a reason in why. */
int syncmsg_decode(const uint8_t *buf, size_t len, struct syncmsg *out, char *why, size_t whylen);

/* Accessors for a decoded message. For a field that occurs several times, the first
 * one; _next variants walk from an index (start with *pos = 0). Strings are copied
 * NUL-terminated into out (the schema bounds their length; a too-small out is a bug
 * and yields false). */
bool syncmsg_has(const struct syncmsg *m, enum syncmsg_tag tag);
bool syncmsg_str(const struct syncmsg *m, enum syncmsg_tag tag, char *out, size_t outlen);
int64_t syncmsg_int(const struct syncmsg *m, enum syncmsg_tag tag, int64_t dflt);
const struct syncmsg_field *syncmsg_get(const struct syncmsg *m, enum syncmsg_tag tag);
const struct syncmsg_field *syncmsg_next(const struct syncmsg *m, enum syncmsg_tag tag, int *pos);
/* Copies a string field's bytes NUL-terminated; false if it does not fit. */
bool syncmsg_field_str(const struct syncmsg_field *f, char *out, size_t outlen);
int64_t syncmsg_field_int(const struct syncmsg_field *f);

const char *syncmsg_type_name(enum syncmsg_type type);

/* ---- transport ---- */

/* Checks the message against its schema (a sender bug is caught here, logged, and
 * nothing is sent), then sends it as one datagram with MSG_DONTWAIT when nonblock.
 * Returns 0, or -1 with errno (EAGAIN when the peer is not reading, EPROTO for a
 * message that fails its own schema). */
int syncmsg_send(int fd, const uint8_t *buf, size_t len, bool nonblock);

#endif
