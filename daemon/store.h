/*
 * store.h - the station's SQLite database (STATE_DIR/lockerd.db).
 *
 * One connection, owned by the main process. WAL journal with synchronous=FULL, so a
 * committed transaction survives power loss; schema versioned with PRAGMA
 * user_version and applied by forward migrations at open. Every statement is a
 * prepared statement with bound parameters.
 *
 * The event log is append-only and hash-chained: each row stores
 * hash = SHA-256(prev_hash || canonical encoding of the row), where the first row's
 * prev_hash is 32 zero bytes, or the hash kept in the chain checkpoint when older
 * rows were pruned. Every event is also queued in the outbox for the city API in the
 * same transaction.
 *
 * The chain does not cover an event's member and credential ids directly but their
 * "subject digest", SHA-256 over a random per-row salt and the two ids (see
 * store.c). Erasing a member (store_member_erase) replaces the ids by "erased" and
 * deletes the salt: the digest, and with it the chain, stays verifiable, and nobody
 * can tell from the digest whose it was.
 *
 * Error convention: int functions return STORE_OK (0) or a positive STORE_* code for
 * an expected outcome (not found, conflict) and STORE_ERR (-1) for a database error,
 * which is logged here with the SQLite message. Strings in the structs below are
 * copies owned by the struct.
 *
 * Privacy: the store never sees raw card UIDs, only HMAC-SHA256(site key, UID).
 */
#ifndef LOCKERD_STORE_H
#define LOCKERD_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define STORE_OK       0
#define STORE_NOTFOUND 1
#define STORE_CONFLICT 2 /* unique id taken, or a booking overlapping another */
#define STORE_ERR      (-1)

#define STORE_ID_LEN   64
#define STORE_HMAC_LEN 32
#define STORE_HASH_LEN 32

struct store;

/* Opens (creating if needed) and migrates. path ":memory:" works for tests.
 * Returns NULL and writes a message into err on failure. */
struct store *store_open(const char *path, char *err, size_t errlen);
/* Closes the database (checkpointing the WAL). Accepts NULL. */
void store_close(struct store *s);

/* Explicit transactions group a state change with its events. Calls nest: only the
 * outermost begin/commit touch SQLite. Every store_* write outside an explicit
 * transaction commits on its own. store_commit() returns STORE_ERR (and rolls back)
 * if the commit fails; after that the caller must not act on the change. Inside an
 * explicit transaction, a store_rollback() at any level or a STORE_ERR from any write
 * rolls back the whole transaction at once: further writes fail and the outermost
 * store_commit() returns STORE_ERR. */
int store_begin(struct store *s);
int store_commit(struct store *s);
void store_rollback(struct store *s);

/* ---- key/value metadata (clean-shutdown flag, boot id, last sync, ...) ---- */
int store_meta_get(struct store *s, const char *key, char *buf, size_t len); /* OK/NOTFOUND/ERR */
int store_meta_set(struct store *s, const char *key, const char *value);

/* ---- clubs, members, credentials ---- */
struct club {
    char id[STORE_ID_LEN];
    char name[128];
};

enum member_role { ROLE_MEMBER, ROLE_MANAGER, ROLE_TECHNICIAN };
const char *role_name(enum member_role role);
bool role_parse(const char *s, enum member_role *out);

struct member {
    char id[STORE_ID_LEN];
    char name[128];
    enum member_role role;
};

enum credential_status { CRED_ACTIVE, CRED_REVOKED };

struct credential {
    char id[STORE_ID_LEN];
    char member_id[STORE_ID_LEN];
    uint8_t uid_hmac[STORE_HMAC_LEN];
    char card_type[16];     /* "desfire" or "uid" */
    int64_t valid_from_ms;  /* 0 = no lower bound */
    int64_t valid_until_ms; /* 0 = no upper bound */
    enum credential_status status;
    char source[16];      /* "local" or "city" */
    int64_t synced_at_ms; /* for source "city": when the data was last confirmed */
};

int store_club_add(struct store *s, const struct club *c);             /* CONFLICT if id taken */
int store_club_get(struct store *s, const char *id, struct club *out); /* OK/NOTFOUND/ERR */
int store_member_add(struct store *s, const struct member *m);         /* CONFLICT if id taken */
int store_member_get(struct store *s, const char *id, struct member *out);
/* Adds the member to a club (idempotent). NOTFOUND if member or club is unknown. */
int store_member_join(struct store *s, const char *member_id, const char *club_id);
/* Club ids of a member, up to max. Returns the count (>= 0) or STORE_ERR. */
int store_member_clubs(struct store *s, const char *member_id, char clubs[][STORE_ID_LEN], int max);
/* CONFLICT if the id or the uid_hmac is already registered, NOTFOUND if the member
 * is unknown. */
int store_credential_add(struct store *s, const struct credential *c);
int store_credential_by_hmac(struct store *s, const uint8_t hmac[STORE_HMAC_LEN],
                             struct credential *out);
int store_credential_revoke(struct store *s, const char *id); /* OK/NOTFOUND/ERR */

/* What the station holds about a member, as a JSON object: {member: {id, name,
 * role}, clubs: [{id, name}], credentials: [{id, type, status, validFrom?,
 * validUntil?, source, syncedAt?, uidHmac (hex)}], compartments: [{number, holds,
 * pending}] (a key held or an unlock in progress), events: [as store_events_json]}.
 * Events are those naming the member or one of their credentials. NULL with *rc
 * STORE_NOTFOUND for an unknown member, STORE_ERR on a database error. */
json_t *store_member_export(struct store *s, const char *member_id, int *rc);

/* The id that replaces an erased member's or credential's id in events. */
#define STORE_ERASED_ID "erased"

struct erase_result {
    int64_t events;  /* events whose member or credential id was replaced */
    int credentials; /* deleted */
    int clubs;       /* memberships deleted */
    int compartment; /* with STORE_CONFLICT: the compartment the member holds or opens */
};

/* Right to erasure: deletes the member, their memberships and credentials, and in
 * their events replaces the member and credential ids by STORE_ERASED_ID and
 * deletes the subject salt, so that the chain still verifies. STORE_CONFLICT (and
 * out->compartment set) while the member holds a key or a compartment is being
 * opened for them: the station still needs the id for the return. NOTFOUND for an
 * unknown member. Runs in the caller's transaction if there is one, so that the
 * caller can record member.erased with it. Deleted content is overwritten
 * (secure_delete); call store_checkpoint() afterwards so that the WAL holds no old
 * copy either. */
int store_member_erase(struct store *s, const char *member_id, struct erase_result *out);

/* ---- bookings ---- */
enum booking_status { BOOKING_ACTIVE, BOOKING_CANCELLED };

struct booking {
    char id[STORE_ID_LEN];
    char club_id[STORE_ID_LEN];
    int compartment;
    int64_t start_ms, end_ms; /* UTC, end exclusive */
    enum booking_status status;
    char source[16];      /* "local" or "city" */
    int64_t collected_ms; /* first key.checkedOut in this slot, 0 = not collected */
    int64_t synced_at_ms;
};

/* CONFLICT if the id is taken or an active booking of the same compartment
 * overlaps [start, end). end must be > start (else STORE_ERR is not used: the
 * caller validates). */
int store_booking_add(struct store *s, const struct booking *b);
int store_booking_get(struct store *s, const char *id, struct booking *out);
int store_booking_cancel(struct store *s, const char *id); /* OK/NOTFOUND/ERR */
int store_booking_set_collected(struct store *s, const char *id, int64_t when_ms);
/* Active bookings of any of the clubs that end after from_ms and start before
 * to_ms, ordered by start. Returns the count (<= max) or STORE_ERR. */
int store_bookings_for_clubs(struct store *s, char clubs[][STORE_ID_LEN], int nclubs,
                             int64_t from_ms, int64_t to_ms, struct booking *out, int max);
/* All bookings (active and cancelled) ending after from_ms, as a JSON array of objects
 * {id, club, compartment, start, end, status, source, collected}; times are UTC ms;
 * status is "active" or "cancelled"; collected is omitted while 0.
 * New reference, NULL on error. */
json_t *store_bookings_json(struct store *s, int64_t from_ms);

/* ---- compartments: what must survive a restart ---- */
struct comp_row {
    int number;
    bool out_of_service; /* latched sensor fault or manual; cleared by a technician */
    char oos_reason[64];
    /* The unlock in progress, committed before the coil is energised, so that a
     * restart knows why a door may be open. purpose is "", "pickup", "return" or
     * "service". */
    char purpose[12];
    char pending_member[STORE_ID_LEN];
    char pending_credential[STORE_ID_LEN];
    char pending_club[STORE_ID_LEN];
    char pending_booking[STORE_ID_LEN];
    /* Who holds the key while it is out ("" when it is in). */
    char holder_member[STORE_ID_LEN];
    char holder_club[STORE_ID_LEN];
    char holder_booking[STORE_ID_LEN];
    int64_t holder_since_ms;
    int64_t due_ms; /* booking end + return grace; 0 = none */
    bool overdue_reported;
};

/* NOTFOUND (and *out zeroed with number set) if never saved. */
int store_comp_get(struct store *s, int number, struct comp_row *out);
int store_comp_save(struct store *s, const struct comp_row *row);

/* ---- events ---- */
struct event {
    const char *type;      /* "key.checkedOut", ... (required) */
    int compartment;       /* 0 = station-wide */
    const char *member_id; /* NULL (or "", stored as NULL) when not applicable */
    const char *credential_id;
    const char *club_id;
    const char *booking_id;
    const char *reason;        /* refusal reason code or alarm cause */
    const char *operator_name; /* for service actions */
    json_t *detail;            /* borrowed; NULL or a JSON object */
};

/* Appends an event (and its outbox entry) stamped with clock_wall_ms(),
 * clock_mono_ms(), clock_synced() and the boot id. Inside an explicit transaction
 * it becomes durable at store_commit(); otherwise it is committed (fsync'd) before
 * this returns. Returns the new seq (> 0) or STORE_ERR. */
int64_t store_event_add(struct store *s, const struct event *ev);

/* Events with seq > since_seq, oldest first, at most limit (0 = no limit), as a JSON
 * array of objects: {seq, eventId, type, occurredAt (UTC ISO), clock:{synced},
 * bootId, monoMs, compartment?, member?, credential?, club?, booking?, reason?,
 * operator?, detail?, hash, prevHash}. New reference, NULL on error. */
json_t *store_events_json(struct store *s, int64_t since_seq, int limit);
/* Highest seq in the log (0 if empty), or STORE_ERR. */
int64_t store_last_seq(struct store *s);
/* Counts events of a type (NULL = all). */
int64_t store_event_count(struct store *s, const char *type);

/* Events whose subject was erased (their member/credential ids are STORE_ERASED_ID
 * and they have no salt), or STORE_ERR. */
int64_t store_event_erased_count(struct store *s);

/* Recomputes the hash chain. STORE_OK if intact; STORE_CONFLICT if broken, with the
 * first bad seq in *bad_seq and a reason in why. */
int store_events_verify(struct store *s, int64_t *bad_seq, char *why, size_t whylen);
/* Deletes the oldest events, up to the first that occurred at or after before_ms,
 * keeping the chain verifiable: the hash of the last deleted row is kept as the
 * checkpoint, and a "log.pruned" event records what was removed, including how many
 * of them were still waiting in the outbox (retention wins over delivery). Returns
 * the number of deleted events or STORE_ERR. */
int64_t store_prune(struct store *s, int64_t before_ms);

/* ---- reports ---- */

/* One booking of a report, with one of the keys taken for it. A booking whose key
 * was taken n times comes as n consecutive rows with the same booking id; one that
 * was never taken as one row with has_checkout false. Pointers are valid only
 * during the callback. */
struct report_row {
    const char *booking_id;
    const char *club_id;
    int compartment;
    int64_t start_ms, end_ms;
    enum booking_status status;
    bool has_checkout;
    int64_t checkout_ms; /* key.checkedOut with this booking */
    bool has_return;
    int64_t return_ms; /* the next key.returned of the compartment after that */
    int64_t overdue;   /* key.overdue events with this booking */
};

/* Calls fn for every booking (active or cancelled) starting in [from_ms, to_ms),
 * ordered by start, id and pickup. fn returns false to stop (then STORE_ERR is
 * returned). STORE_OK or STORE_ERR. */
int store_report_scan(struct store *s, int64_t from_ms, int64_t to_ms,
                      bool (*fn)(const struct report_row *row, void *arg), void *arg);

/* ---- city sync (daemon/sync.c) ----
 *
 * Records from the city's feeds, already validated by the caller. Each apply runs in
 * the caller's transaction if there is one (sync.c applies a whole feed page and its
 * cursor in one), and stamps synced_at with now_ms. Records from the city never
 * replace a local record with the same id (logged). */

/* Meta keys: when a feed was last read to its last page (UTC ms, decimal). */
#define STORE_META_CONFIRMED_RESERVATIONS "sync.confirmed.reservations"
#define STORE_META_CONFIRMED_CREDENTIALS  "sync.confirmed.credentials"

#define CITY_MAX_CLUBS        16
#define CITY_MAX_COMPARTMENTS 32

struct city_reservation {
    char id[STORE_ID_LEN];
    bool deleted; /* a tombstone: the reservation left this station's feed */
    char club_id[STORE_ID_LEN];
    char club_name[128];
    int64_t start_ms, end_ms;
    int compartments[CITY_MAX_COMPARTMENTS];
    int ncompartments;
    bool cancelled;
};

struct city_credential {
    char id[STORE_ID_LEN];
    bool deleted;
    uint8_t uid_hmac[STORE_HMAC_LEN];
    char card_type[16];
    char member_id[STORE_ID_LEN];
    char member_name[128];
    char clubs[CITY_MAX_CLUBS][STORE_ID_LEN];
    int nclubs;
    int64_t valid_from_ms, valid_until_ms; /* 0 = open */
    enum credential_status status;
};

/* A reservation becomes one booking per compartment: id "r-1" when it covers one,
 * "r-1@2", "r-1@3" when several. A tombstone or a cancellation marks its bookings
 * cancelled (they stay for the booked-versus-used report). */
int store_city_reservation_apply(struct store *s, const struct city_reservation *r, int64_t now_ms);
/* Upserts the member (name), the clubs and the credential (with its clubs, which
 * then decide what it may open: store_credential_clubs); a tombstone deletes the
 * credential. Another credential of the same card gives way. */
int store_city_credential_apply(struct store *s, const struct city_credential *c, int64_t now_ms);
/* After a full resync (the server said 410 to the cursor): city records of the feed
 * not confirmed since before_ms are gone from the server: bookings are cancelled,
 * credentials deleted. Returns how many, or STORE_ERR. */
int store_city_sweep(struct store *s, bool credentials, int64_t before_ms);
/* The clubs a credential may hold keys for. *scoped is false for a credential
 * without its own list (local ones: the member's clubs count). Count or STORE_ERR. */
int store_credential_clubs(struct store *s, const char *credential_id, char clubs[][STORE_ID_LEN],
                           int max, bool *scoped);

/* The oldest events still in the outbox, at most limit, as store_events_json. */
json_t *store_outbox_json(struct store *s, int limit);
/* The city has the event: drop it from the outbox. NOTFOUND if it was not there. */
int store_outbox_ack(struct store *s, const char *event_id);
/* The city refused the event for good: moved from the outbox to the dead letters. */
int store_outbox_dead(struct store *s, const char *event_id, int http, const char *error,
                      int64_t now_ms);
int64_t store_dead_letter_count(struct store *s);

/* fn(arg) is called after each commit that made new events durable (the outbox has
 * work, a screen has news); it must not write to the store from inside the call.
 * At most STORE_MAX_HOOKS; STORE_ERR when full. */
/* ---- card + PIN: a member's PIN hash and lockout (policy.h has the format) ---- */
struct pin_row {
    char hash[128];
    int failures;            /* wrong PINs in a row since the last lockout or right PIN */
    int lockouts;            /* lockouts since the last right PIN */
    int64_t locked_until_ms; /* wall clock; 0 = not locked out */
};
/* Sets (hash) or removes (NULL) the PIN; setting resets the lockout. NOTFOUND when
 * the member does not exist (set) or has no PIN (remove). */
int store_pin_set(struct store *s, const char *member_id, const char *hash, int64_t now_ms);
int store_pin_get(struct store *s, const char *member_id,
                  struct pin_row *out); /* OK/NOTFOUND/ERR */
int store_pin_attempts(struct store *s, const char *member_id, int failures, int lockouts,
                       int64_t locked_until_ms);

#define STORE_MAX_HOOKS 4
int store_add_append_hook(struct store *s, void (*fn)(void *arg), void *arg);
void store_remove_append_hook(struct store *s, void (*fn)(void *arg), void *arg);
/* The kernel's boot id, as stamped on events. */
const char *store_boot_id(const struct store *s);

/* Copies the WAL into the database file and truncates the WAL. lockerd calls it
 * when the station is idle, so that the occasional checkpoint never lands on a
 * tap. No-op inside a transaction. */
int store_checkpoint(struct store *s);

/* Runs PRAGMA integrity_check. STORE_OK or STORE_CONFLICT (message in why). */
int store_integrity_check(struct store *s, char *why, size_t whylen);
/* Outbox depth (events not yet acknowledged by the city API). */
int64_t store_outbox_depth(struct store *s);

/* ---- the manager console ---- */

/* The first active booking of the compartment overlapping [start, end), other than
 * exclude_id (NULL: none): STORE_OK with *out filled, NOTFOUND when free, or ERR. */
int store_booking_conflict(struct store *s, int compartment, int64_t start_ms, int64_t end_ms,
                           const char *exclude_id, struct booking *out);
/* Sets a booking's times (the caller checked conflicts). OK/NOTFOUND/ERR. */
int store_booking_move(struct store *s, const char *id, int64_t start_ms, int64_t end_ms);
/* Clubs, members (with their club ids, space-separated) and cards (id, member, type,
 * status, source; never the HMAC) as {clubs: [...], members: [...], cards: [...]}.
 * New reference, NULL on error. */
json_t *store_directory_json(struct store *s);
int store_club_rename(struct store *s, const char *id, const char *name);   /* OK/NOTFOUND/ERR */
int store_member_rename(struct store *s, const char *id, const char *name); /* OK/NOTFOUND/ERR */

#endif
