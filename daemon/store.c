/*
 * store.c - the station's SQLite database (see store.h for the contract).
 *
 * Every statement the daemon runs is prepared once at open and kept in s->q[]: the
 * tap path (credential lookup, member and clubs, bookings query, compartment save,
 * event append) then costs no SQL parsing. Statements are reset right after use so
 * that no read transaction stays open between calls.
 *
 * Transactions: the first store_begin() runs BEGIN IMMEDIATE (the write lock is
 * taken up front, so a COMMIT can not fail for lock reasons); nested calls only
 * count. store_rollback() at any depth rolls SQLite back at once and marks the
 * transaction doomed: every later write at that depth fails and the outer commit
 * returns STORE_ERR, so the caller never acts on a change that is not stored. Every
 * write function below runs inside store_begin()/store_commit(), and a database
 * error in it rolls back the whole (outer) transaction for the same reason.
 */
#include "daemon/store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sqlite3.h>

#include "daemon/clock.h"
#include "daemon/log.h"
#include "daemon/timeutil.h"

/* How long a statement waits for another connection's lock (lockerctl-style
 * readers, the sqlite3 shell of a technician) before failing. */
#define BUSY_TIMEOUT_MS 5000

/* Club ids bound per bookings query; longer lists are queried in chunks. */
#define CLUBS_PER_QUERY 16

struct store;
static bool rechain_v2(struct store *s, char *err, size_t errlen);
static bool record_rechain(struct store *s);

/*
 * Forward migrations: migrations[i] takes the schema from user_version i to i + 1:
 * its sql, then its fn (if any), then its post_sql, all in one transaction.
 * Append only; never edit a migration that has shipped.
 */
struct migration {
    const char *sql;
    bool (*fn)(struct store *s, char *err, size_t errlen);
    const char *post_sql;
};

static const struct migration migrations[] = {
    /* 1: initial schema */
    {
        "CREATE TABLE meta ("
        "  key TEXT PRIMARY KEY NOT NULL,"
        "  value TEXT NOT NULL);"
        "CREATE TABLE clubs ("
        "  id TEXT PRIMARY KEY NOT NULL,"
        "  name TEXT NOT NULL);"
        "CREATE TABLE members ("
        "  id TEXT PRIMARY KEY NOT NULL,"
        "  name TEXT NOT NULL,"
        "  role TEXT NOT NULL CHECK (role IN ('member', 'manager', 'technician')));"
        "CREATE TABLE member_clubs ("
        "  member_id TEXT NOT NULL REFERENCES members (id),"
        "  club_id TEXT NOT NULL REFERENCES clubs (id),"
        "  PRIMARY KEY (member_id, club_id)) WITHOUT ROWID;"
        "CREATE INDEX member_clubs_club ON member_clubs (club_id);"
        "CREATE TABLE credentials ("
        "  id TEXT PRIMARY KEY NOT NULL,"
        "  member_id TEXT NOT NULL REFERENCES members (id),"
        "  uid_hmac BLOB NOT NULL UNIQUE CHECK (length(uid_hmac) = 32),"
        "  card_type TEXT NOT NULL,"
        "  valid_from INTEGER NOT NULL,"
        "  valid_until INTEGER NOT NULL,"
        "  status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),"
        "  source TEXT NOT NULL,"
        "  synced_at INTEGER NOT NULL);"
        "CREATE INDEX credentials_member ON credentials (member_id);"
        /* No foreign key to clubs: the city's reservation feed may name a club before
         * the credentials feed has delivered it. */
        "CREATE TABLE bookings ("
        "  id TEXT PRIMARY KEY NOT NULL,"
        "  club_id TEXT NOT NULL,"
        "  compartment INTEGER NOT NULL,"
        "  start_ms INTEGER NOT NULL,"
        "  end_ms INTEGER NOT NULL,"
        "  status TEXT NOT NULL CHECK (status IN ('active', 'cancelled')),"
        "  source TEXT NOT NULL,"
        "  collected_ms INTEGER NOT NULL,"
        "  synced_at INTEGER NOT NULL);"
        "CREATE INDEX bookings_club_end ON bookings (club_id, end_ms);"
        "CREATE INDEX bookings_comp_start ON bookings (compartment, start_ms);"
        "CREATE TABLE compartments ("
        "  number INTEGER PRIMARY KEY,"
        "  out_of_service INTEGER NOT NULL,"
        "  oos_reason TEXT NOT NULL,"
        "  purpose TEXT NOT NULL,"
        "  pending_member TEXT NOT NULL,"
        "  pending_credential TEXT NOT NULL,"
        "  pending_club TEXT NOT NULL,"
        "  pending_booking TEXT NOT NULL,"
        "  holder_member TEXT NOT NULL,"
        "  holder_club TEXT NOT NULL,"
        "  holder_booking TEXT NOT NULL,"
        "  holder_since_ms INTEGER NOT NULL,"
        "  due_ms INTEGER NOT NULL,"
        "  overdue_reported INTEGER NOT NULL);"
        "CREATE TABLE events ("
        "  seq INTEGER PRIMARY KEY,"
        "  event_id TEXT NOT NULL UNIQUE,"
        "  type TEXT NOT NULL,"
        "  occurred_ms INTEGER NOT NULL,"
        "  mono_ms INTEGER NOT NULL,"
        "  clock_synced INTEGER NOT NULL,"
        "  boot_id TEXT NOT NULL,"
        "  compartment INTEGER,"
        "  member_id TEXT,"
        "  credential_id TEXT,"
        "  club_id TEXT,"
        "  booking_id TEXT,"
        "  reason TEXT,"
        "  operator TEXT,"
        "  detail TEXT,"
        "  prev_hash BLOB NOT NULL,"
        "  hash BLOB NOT NULL);"
        /* The chain would catch an edit, but refusing it catches our own bugs early.
         * Pruning deletes, which stays allowed. */
        "CREATE TRIGGER events_append_only BEFORE UPDATE ON events"
        "  BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;"
        "CREATE TABLE outbox ("
        "  seq INTEGER PRIMARY KEY REFERENCES events (seq));"
        "CREATE TABLE chain_checkpoint ("
        "  id INTEGER PRIMARY KEY CHECK (id = 1),"
        "  seq INTEGER NOT NULL,"
        "  hash BLOB NOT NULL,"
        "  pruned_at INTEGER NOT NULL);",
        NULL,
        NULL,
    },
    /* 2: the chain covers a salted digest of the member and credential ids instead of
     * the ids (right to erasure), and indexes for reports. rechain_v2() fills the
     * digests and rehashes the existing rows; the triggers then allow exactly one kind
     * of update: erasing the ids and the salt. */
    {
        "DROP TRIGGER events_append_only;"
        "ALTER TABLE events ADD COLUMN subject_salt BLOB;"
        "ALTER TABLE events ADD COLUMN subject_digest BLOB;"
        /* Pickups and overdue keys of a booking; returns of a compartment in order. */
        "CREATE INDEX events_booking ON events (booking_id, type) WHERE booking_id IS NOT NULL;"
        "CREATE INDEX events_returns ON events (compartment, seq) WHERE type = 'key.returned';"
        "CREATE INDEX bookings_start ON bookings (start_ms);",
        rechain_v2,
        "CREATE TRIGGER events_append_only BEFORE UPDATE OF seq, event_id, type, occurred_ms,"
        "  mono_ms, clock_synced, boot_id, compartment, club_id, booking_id, reason, operator,"
        "  detail, subject_digest, prev_hash, hash ON events"
        "  BEGIN SELECT RAISE(ABORT, 'events are append-only'); END;"
        "CREATE TRIGGER events_erase_only BEFORE UPDATE OF member_id, credential_id, subject_salt"
        "  ON events WHEN NEW.subject_salt IS NOT NULL"
        "  OR NOT (NEW.member_id IS OLD.member_id OR NEW.member_id = '" STORE_ERASED_ID "')"
        "  OR NOT (NEW.credential_id IS OLD.credential_id"
        "          OR NEW.credential_id = '" STORE_ERASED_ID "')"
        "  BEGIN SELECT RAISE(ABORT, 'events may only be erased'); END;",
    },
    /* 3: city sync. A credential from the city names the clubs it may hold keys
     * for (NULL for a local credential: the member's clubs count); events the city
     * refused for good are kept as dead letters. */
    {
        "ALTER TABLE credentials ADD COLUMN clubs TEXT;"
        "CREATE INDEX credentials_source ON credentials (source, synced_at);"
        "CREATE INDEX bookings_source ON bookings (source, synced_at);"
        "CREATE TABLE dead_letters ("
        "  seq INTEGER PRIMARY KEY,"
        "  event_id TEXT NOT NULL,"
        "  http INTEGER NOT NULL,"
        "  error TEXT NOT NULL,"
        "  at_ms INTEGER NOT NULL);",
        NULL,
        NULL,
    },
    /* 4: card + PIN. A member's salted PIN hash (policy_pin_hash()) and the state of
     * the lockout after wrong PINs; erased with the member. */
    {
        "CREATE TABLE member_pins ("
        "  member_id TEXT PRIMARY KEY NOT NULL REFERENCES members (id) ON DELETE CASCADE,"
        "  hash TEXT NOT NULL,"
        "  failures INTEGER NOT NULL DEFAULT 0,"
        "  lockouts INTEGER NOT NULL DEFAULT 0,"
        "  locked_until_ms INTEGER NOT NULL DEFAULT 0,"
        "  set_ms INTEGER NOT NULL);",
        NULL,
        NULL,
    },
};
#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

#define BOOKING_COLS                                                                               \
    "id, club_id, compartment, start_ms, end_ms, status, source, collected_ms, synced_at"
#define CRED_COLS                                                                                  \
    "id, member_id, uid_hmac, card_type, valid_from, valid_until, status, source, synced_at"
#define COMP_COLS                                                                                  \
    "number, out_of_service, oos_reason, purpose, pending_member, pending_credential, "            \
    "pending_club, pending_booking, holder_member, holder_club, holder_booking, "                  \
    "holder_since_ms, due_ms, overdue_reported"
/* The content columns of an event, then the subject salt and digest and the chain.
 * The chain hash covers the content columns in this order except member_id and
 * credential_id, whose place the subject digest takes (see chain_hash()). */
#define EVENT_COLS                                                                                 \
    "seq, event_id, type, occurred_ms, mono_ms, clock_synced, boot_id, compartment, "              \
    "member_id, credential_id, club_id, booking_id, reason, operator, detail"
#define EVENT_NCOLS    15
#define EVENT_ALL_COLS EVENT_COLS ", subject_salt, subject_digest, prev_hash, hash"
enum event_col {
    EC_SEQ,
    EC_EVENT_ID,
    EC_TYPE,
    EC_OCCURRED,
    EC_MONO,
    EC_SYNCED,
    EC_BOOT,
    EC_COMPARTMENT,
    EC_MEMBER,
    EC_CREDENTIAL,
    EC_CLUB,
    EC_BOOKING,
    EC_REASON,
    EC_OPERATOR,
    EC_DETAIL,
    EC_SALT,
    EC_DIGEST,
    EC_PREV_HASH,
    EC_HASH
};
/* Fields hashed per row: the content columns with the two ids replaced by one
 * subject field. Schema version 1 hashed all 15 content columns. */
#define CHAIN_NFIELDS (EVENT_NCOLS - 1)
#define SALT_LEN      16

enum query {
    Q_BEGIN,
    Q_COMMIT,
    Q_ROLLBACK,
    Q_META_GET,
    Q_META_SET,
    Q_META_DEL,
    Q_CLUB_ADD,
    Q_CLUB_GET,
    Q_MEMBER_ADD,
    Q_MEMBER_GET,
    Q_MEMBER_JOIN,
    Q_MEMBER_CLUBS,
    Q_CRED_ADD,
    Q_CRED_BY_HMAC,
    Q_CRED_REVOKE,
    Q_BOOKING_ADD,
    Q_BOOKING_OVERLAP,
    Q_BOOKING_GET,
    Q_BOOKING_CANCEL,
    Q_BOOKING_COLLECTED,
    Q_BOOKINGS_FOR_CLUBS,
    Q_BOOKINGS_FROM,
    Q_COMP_GET,
    Q_COMP_SAVE,
    Q_EVENT_ADD,
    Q_OUTBOX_ADD,
    Q_EVENTS_SINCE,
    Q_LAST_EVENT,
    Q_LAST_SEQ,
    Q_EVENT_COUNT,
    Q_CHECKPOINT_GET,
    Q_CHECKPOINT_SET,
    Q_FIRST_RECENT,
    Q_OUTBOX_MIN,
    Q_LAST_BEFORE,
    Q_PRUNE_DELETE,
    Q_PRUNE_OUTBOX,
    Q_OUTBOX_DEPTH,
    Q_INTEGRITY,
    Q_MEMBER_CLUBS_NAMED,
    Q_MEMBER_CREDS,
    Q_MEMBER_COMPS,
    Q_MEMBER_EVENTS,
    Q_ERASE_EVENTS,
    Q_ERASE_CREDS,
    Q_ERASE_CLUBS,
    Q_ERASE_MEMBER,
    Q_ERASED_COUNT,
    Q_REPORT,
    Q_CRED_CLUBS,
    Q_CRED_DELETE,
    Q_CITY_CLUB,
    Q_CITY_MEMBER,
    Q_CITY_CRED_DUP,
    Q_CITY_CRED_UPSERT,
    Q_CITY_CRED_DELETE,
    Q_CITY_RES_CANCEL,
    Q_CITY_RES_CANCEL_PARTS,
    Q_CITY_BOOKING_UPSERT,
    Q_CITY_SWEEP_BOOKINGS,
    Q_CITY_SWEEP_CREDS,
    Q_OUTBOX_EVENTS,
    Q_OUTBOX_ACK,
    Q_DEAD_ADD,
    Q_DEAD_COUNT,
    Q_COUNT
};

static const char *const query_sql[Q_COUNT] = {
    [Q_BEGIN] = "BEGIN IMMEDIATE",
    [Q_COMMIT] = "COMMIT",
    [Q_ROLLBACK] = "ROLLBACK",
    [Q_META_GET] = "SELECT value FROM meta WHERE key = ?1",
    [Q_META_SET] = "INSERT INTO meta (key, value) VALUES (?1, ?2)"
                   " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    [Q_META_DEL] = "DELETE FROM meta WHERE key = ?1",
    [Q_CLUB_ADD] = "INSERT INTO clubs (id, name) VALUES (?1, ?2)",
    [Q_CLUB_GET] = "SELECT id, name FROM clubs WHERE id = ?1",
    [Q_MEMBER_ADD] = "INSERT INTO members (id, name, role) VALUES (?1, ?2, ?3)",
    [Q_MEMBER_GET] = "SELECT id, name, role FROM members WHERE id = ?1",
    /* OR IGNORE makes a repeated join a no-op; it does not apply to foreign keys, so
     * an unknown member or club still fails. */
    [Q_MEMBER_JOIN] = "INSERT OR IGNORE INTO member_clubs (member_id, club_id) VALUES (?1, ?2)",
    [Q_MEMBER_CLUBS] = "SELECT club_id FROM member_clubs WHERE member_id = ?1 ORDER BY club_id",
    [Q_CRED_ADD] = "INSERT INTO credentials (" CRED_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "
                   "?8, ?9)",
    [Q_CRED_BY_HMAC] = "SELECT " CRED_COLS " FROM credentials WHERE uid_hmac = ?1",
    [Q_CRED_REVOKE] = "UPDATE credentials SET status = 'revoked' WHERE id = ?1",
    [Q_BOOKING_ADD] = "INSERT INTO bookings (" BOOKING_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, "
                      "?7, ?8, ?9)",
    /* Active bookings of a compartment never overlap (every insert passes this
     * check), so only the last one starting before the new end can overlap it: one
     * index probe, whatever the order bookings arrive in. */
    [Q_BOOKING_OVERLAP] = "SELECT id FROM (SELECT id, end_ms FROM bookings"
                          " INDEXED BY bookings_comp_start WHERE compartment = ?1"
                          " AND status = 'active' AND start_ms < ?3"
                          " ORDER BY start_ms DESC LIMIT 1) WHERE end_ms > ?2",
    [Q_BOOKING_GET] = "SELECT " BOOKING_COLS " FROM bookings WHERE id = ?1",
    [Q_BOOKING_CANCEL] = "UPDATE bookings SET status = 'cancelled' WHERE id = ?1",
    [Q_BOOKING_COLLECTED] = "UPDATE bookings SET collected_ms = ?2 WHERE id = ?1",
    /* Unused club slots are bound to NULL, which matches nothing. */
    [Q_BOOKINGS_FOR_CLUBS] = "SELECT " BOOKING_COLS " FROM bookings"
                             " WHERE club_id IN (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,"
                             " ?12, ?13, ?14, ?15, ?16)"
                             " AND status = 'active' AND end_ms > ?17 AND start_ms < ?18"
                             " ORDER BY start_ms, id LIMIT ?19",
    [Q_BOOKINGS_FROM] = "SELECT " BOOKING_COLS " FROM bookings WHERE end_ms > ?1"
                        " ORDER BY start_ms, id",
    [Q_COMP_GET] = "SELECT " COMP_COLS " FROM compartments WHERE number = ?1",
    [Q_COMP_SAVE] = "INSERT OR REPLACE INTO compartments (" COMP_COLS ") VALUES (?1, ?2, ?3, "
                    "?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    [Q_EVENT_ADD] = "INSERT INTO events (" EVENT_ALL_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, "
                    "?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
    [Q_OUTBOX_ADD] = "INSERT INTO outbox (seq) VALUES (?1)",
    [Q_EVENTS_SINCE] = "SELECT " EVENT_ALL_COLS " FROM events WHERE seq > ?1"
                       " ORDER BY seq LIMIT ?2",
    [Q_LAST_EVENT] = "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1",
    [Q_LAST_SEQ] = "SELECT coalesce(max(seq), 0) FROM events",
    [Q_EVENT_COUNT] = "SELECT count(*) FROM events WHERE ?1 IS NULL OR type = ?1",
    [Q_CHECKPOINT_GET] = "SELECT seq, hash FROM chain_checkpoint WHERE id = 1",
    [Q_CHECKPOINT_SET] =
        "INSERT INTO chain_checkpoint (id, seq, hash, pruned_at)"
        " VALUES (1, ?1, ?2, ?3) ON CONFLICT (id) DO UPDATE SET"
        " seq = excluded.seq, hash = excluded.hash, pruned_at = excluded.pruned_at",
    /* Scans from the oldest row: with daily pruning it stops after about a day. */
    [Q_FIRST_RECENT] = "SELECT seq FROM events WHERE occurred_ms >= ?1 ORDER BY seq LIMIT 1",
    [Q_OUTBOX_MIN] = "SELECT min(seq) FROM outbox",
    [Q_LAST_BEFORE] = "SELECT seq, hash FROM events WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
    [Q_PRUNE_DELETE] = "DELETE FROM events WHERE seq <= ?1",
    [Q_PRUNE_OUTBOX] = "DELETE FROM outbox WHERE seq <= ?1",
    [Q_OUTBOX_DEPTH] = "SELECT count(*) FROM outbox",
    [Q_INTEGRITY] = "PRAGMA integrity_check",
    [Q_MEMBER_CLUBS_NAMED] = "SELECT c.id, c.name FROM member_clubs mc JOIN clubs c"
                             " ON c.id = mc.club_id WHERE mc.member_id = ?1 ORDER BY c.id",
    [Q_MEMBER_CREDS] = "SELECT " CRED_COLS " FROM credentials WHERE member_id = ?1 ORDER BY id",
    [Q_MEMBER_COMPS] = "SELECT number, holder_member = ?1, pending_member = ?1 FROM compartments"
                       " WHERE holder_member = ?1 OR pending_member = ?1 ORDER BY number",
    /* Export and erasure scan the log: they are rare, and an index on the ids would
     * be one more copy of them to erase. */
    [Q_MEMBER_EVENTS] = "SELECT " EVENT_ALL_COLS " FROM events WHERE member_id = ?1"
                        " OR credential_id IN (SELECT id FROM credentials WHERE member_id = ?1)"
                        " ORDER BY seq",
    [Q_ERASE_EVENTS] =
        "UPDATE events SET"
        " member_id = CASE WHEN member_id = ?1 THEN '" STORE_ERASED_ID "' ELSE member_id END,"
        " credential_id = CASE WHEN credential_id IN"
        "   (SELECT id FROM credentials WHERE member_id = ?1)"
        "   THEN '" STORE_ERASED_ID "' ELSE credential_id END,"
        " subject_salt = NULL"
        " WHERE member_id = ?1"
        " OR credential_id IN (SELECT id FROM credentials WHERE member_id = ?1)",
    [Q_ERASE_CREDS] = "DELETE FROM credentials WHERE member_id = ?1",
    [Q_ERASE_CLUBS] = "DELETE FROM member_clubs WHERE member_id = ?1",
    [Q_ERASE_MEMBER] = "DELETE FROM members WHERE id = ?1",
    [Q_ERASED_COUNT] = "SELECT count(*) FROM events"
                       " WHERE subject_digest IS NOT NULL AND subject_salt IS NULL",
    /* One row per booking and pickup. The return of a pickup is the compartment's
     * next key.returned, whoever made it (a return carries no booking id). */
    [Q_REPORT] = "SELECT b.id, b.club_id, b.compartment, b.start_ms, b.end_ms, b.status,"
                 " co.occurred_ms,"
                 " (SELECT r.occurred_ms FROM events r WHERE r.type = 'key.returned'"
                 "   AND r.compartment = co.compartment AND r.seq > co.seq"
                 "   ORDER BY r.seq LIMIT 1),"
                 " (SELECT count(*) FROM events o WHERE o.booking_id = b.id"
                 "   AND o.type = 'key.overdue')"
                 " FROM bookings b LEFT JOIN events co"
                 " ON co.booking_id = b.id AND co.type = 'key.checkedOut'"
                 " WHERE b.start_ms >= ?1 AND b.start_ms < ?2"
                 " ORDER BY b.start_ms, b.id, co.seq",
    [Q_CRED_CLUBS] = "SELECT clubs FROM credentials WHERE id = ?1",
    [Q_CRED_DELETE] = "DELETE FROM credentials WHERE id = ?1",
    /* A club named by the city: an empty name never replaces a known one. */
    /* A club named again with its own name is not rewritten (a feed page names the
     * same few clubs hundreds of times). */
    [Q_CITY_CLUB] = "INSERT INTO clubs (id, name) VALUES (?1, CASE WHEN ?2 = '' THEN ?1 ELSE ?2"
                    " END) ON CONFLICT (id) DO UPDATE SET name = excluded.name"
                    " WHERE ?2 <> '' AND name <> ?2",
    [Q_CITY_MEMBER] = "INSERT INTO members (id, name, role) VALUES (?1, ?2, 'member')"
                      " ON CONFLICT (id) DO UPDATE SET name = excluded.name",
    [Q_CITY_CRED_DUP] = "SELECT id, source FROM credentials WHERE uid_hmac = ?1 AND id <> ?2",
    /* A local credential with the same id is never overwritten by the network. */
    [Q_CITY_CRED_UPSERT] =
        "INSERT INTO credentials (" CRED_COLS ", clubs) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,"
        " 'city', ?8, ?9) ON CONFLICT (id) DO UPDATE SET member_id = excluded.member_id,"
        " uid_hmac = excluded.uid_hmac, card_type = excluded.card_type,"
        " valid_from = excluded.valid_from, valid_until = excluded.valid_until,"
        " status = excluded.status, synced_at = excluded.synced_at, clubs = excluded.clubs"
        " WHERE credentials.source = 'city'",
    [Q_CITY_CRED_DELETE] = "DELETE FROM credentials WHERE id = ?1 AND source = 'city'",
    /* The booking rows of a reservation are "r-881", or "r-881@2", "r-881@3" when it
     * covers several compartments: one statement for each shape, each a single
     * primary-key probe ('+' keeps SQLite off the source index, which would scan
     * every city booking; one statement with OR costs a multi-index OR, four times
     * the time). '@' is not in the id alphabet and 'A' is the byte after it, so the
     * range is exactly the ids "?1@...". */
    [Q_CITY_RES_CANCEL] = "UPDATE bookings SET status = 'cancelled', synced_at = ?2"
                          " WHERE id = ?1 AND +source = 'city'",
    [Q_CITY_RES_CANCEL_PARTS] = "UPDATE bookings SET status = 'cancelled', synced_at = ?2"
                                " WHERE id > ?1 || '@' AND id < ?1 || 'A' AND +source = 'city'",
    [Q_CITY_BOOKING_UPSERT] =
        "INSERT INTO bookings (" BOOKING_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'city', 0, ?7)"
        " ON CONFLICT (id) DO UPDATE SET club_id = excluded.club_id,"
        " compartment = excluded.compartment, start_ms = excluded.start_ms,"
        " end_ms = excluded.end_ms, status = excluded.status, synced_at = excluded.synced_at"
        " WHERE bookings.source = 'city'",
    [Q_CITY_SWEEP_BOOKINGS] = "UPDATE bookings SET status = 'cancelled' WHERE source = 'city'"
                              " AND synced_at < ?1 AND status = 'active'",
    [Q_CITY_SWEEP_CREDS] = "DELETE FROM credentials WHERE source = 'city' AND synced_at < ?1",
    [Q_OUTBOX_EVENTS] = "SELECT " EVENT_ALL_COLS " FROM events WHERE seq IN"
                        " (SELECT seq FROM outbox ORDER BY seq LIMIT ?1) ORDER BY seq",
    [Q_OUTBOX_ACK] = "DELETE FROM outbox WHERE seq = (SELECT seq FROM events WHERE event_id = ?1)",
    [Q_DEAD_ADD] = "INSERT OR REPLACE INTO dead_letters (seq, event_id, http, error, at_ms)"
                   " SELECT seq, event_id, ?2, ?3, ?4 FROM events WHERE event_id = ?1",
    [Q_DEAD_COUNT] = "SELECT count(*) FROM dead_letters",
};

struct store {
    sqlite3 *db;
    sqlite3_stmt *q[Q_COUNT];
    int depth;   /* store_begin() nesting */
    bool doomed; /* rolled back below the outermost level */
    /* The chain head, so that an append needs no read. tx_* hold its value at the
     * outermost begin and are put back by a rollback. */
    int64_t last_seq;
    uint8_t last_hash[STORE_HASH_LEN];
    int64_t tx_seq;
    uint8_t tx_hash[STORE_HASH_LEN];
    char boot_id[40];
    bool appended; /* an event was added in the open transaction */
    struct {
        void (*fn)(void *arg);
        void *arg;
    } hooks[STORE_MAX_HOOKS];
    EVP_MD *sha256;
    EVP_MD_CTX *md;
};

/* ---- helpers ---- */

static int db_error(struct store *s, const char *what)
{
    log_warnx("store: %s: %s", what, sqlite3_errmsg(s->db));
    return STORE_ERR;
}

/* A cached statement, reset and with no bindings left from its previous use. */
static sqlite3_stmt *stmt(struct store *s, enum query id)
{
    sqlite3_stmt *st = s->q[id];
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
}

/* Binds a string that may be NULL (bound as SQL NULL). */
static bool bind_text(sqlite3_stmt *st, int i, const char *v)
{
    if (v == NULL)
        return sqlite3_bind_null(st, i) == SQLITE_OK;
    return sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC) == SQLITE_OK;
}

/* Binds a fixed-size char array from a struct without trusting its terminator. */
static bool bind_arr(sqlite3_stmt *st, int i, const char *v, size_t size)
{
    return sqlite3_bind_text(st, i, v, (int)strnlen(v, size), SQLITE_STATIC) == SQLITE_OK;
}

static bool bind_int(sqlite3_stmt *st, int i, int64_t v)
{
    return sqlite3_bind_int64(st, i, v) == SQLITE_OK;
}

static bool bind_blob(sqlite3_stmt *st, int i, const void *p, int n)
{
    return sqlite3_bind_blob(st, i, p, n, SQLITE_STATIC) == SQLITE_OK;
}

static void col_str(sqlite3_stmt *st, int i, char *buf, size_t len)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    snprintf(buf, len, "%s", t != NULL ? (const char *)t : "");
}

/* Steps a write statement and maps its outcome; the statement is reset. With
 * need_row, a statement that changed nothing is NOTFOUND. */
static int step_write(struct store *s, sqlite3_stmt *st, const char *what, bool need_row)
{
    int rc = sqlite3_step(st);
    int out;

    if (rc == SQLITE_DONE)
        out = need_row && sqlite3_changes(s->db) == 0 ? STORE_NOTFOUND : STORE_OK;
    else if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE)
        out = STORE_CONFLICT;
    else if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
        out = STORE_NOTFOUND;
    else
        out = db_error(s, what);
    sqlite3_reset(st);
    return out;
}

/* Runs one bound write statement in its own (possibly nested) transaction. */
static int write_one(struct store *s, sqlite3_stmt *st, const char *what, bool need_row)
{
    if (store_begin(s) != STORE_OK) {
        sqlite3_reset(st);
        return STORE_ERR;
    }
    int rc = step_write(s, st, what, need_row);
    if (rc == STORE_ERR) {
        store_rollback(s);
        return STORE_ERR;
    }
    if (store_commit(s) != STORE_OK)
        return STORE_ERR;
    return rc;
}

/* Runs a statement that returns one integer row (count, max). */
static int64_t query_int(struct store *s, sqlite3_stmt *st, const char *what)
{
    int64_t v = STORE_ERR;
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    else
        db_error(s, what);
    sqlite3_reset(st);
    return v;
}

static void hex(const uint8_t *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 0x0f];
    }
    out[2 * n] = '\0';
}

/* ---- open, close, transactions ---- */

static void read_boot_id(struct store *s)
{
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f == NULL) {
        log_warn("store: /proc/sys/kernel/random/boot_id");
        return;
    }
    if (fgets(s->boot_id, sizeof s->boot_id, f) == NULL)
        s->boot_id[0] = '\0';
    s->boot_id[strcspn(s->boot_id, "\n")] = '\0';
    fclose(f);
}

static int user_version(struct store *s, int *out)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
        return SQLITE_ERROR;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Applies the missing migrations, each in its own transaction. The version is read
 * under the write lock so that two processes opening a fresh file do not both
 * migrate it. */
static bool migrate(struct store *s, const char *path, char *err, size_t errlen)
{
    for (;;) {
        int v = 0;
        if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK ||
            user_version(s, &v) != SQLITE_OK) {
            snprintf(err, errlen, "%s: reading schema version: %s", path, sqlite3_errmsg(s->db));
            goto fail;
        }
        if (v > SCHEMA_VERSION) {
            snprintf(err, errlen,
                     "%s: database schema version %d is newer than this lockerd knows (%d); "
                     "refusing to open it",
                     path, v, SCHEMA_VERSION);
            goto fail;
        }
        if (v == SCHEMA_VERSION)
            break;
        char setv[48];
        snprintf(setv, sizeof setv, "PRAGMA user_version = %d", v + 1);
        const struct migration *m = &migrations[v];
        if (sqlite3_exec(s->db, m->sql, NULL, NULL, NULL) != SQLITE_OK) {
            snprintf(err, errlen, "%s: migration to schema version %d: %s", path, v + 1,
                     sqlite3_errmsg(s->db));
            goto fail;
        }
        if (m->fn != NULL) {
            char why[256] = "";
            if (!m->fn(s, why, sizeof why)) {
                snprintf(err, errlen, "%s: migration to schema version %d: %s", path, v + 1, why);
                goto fail;
            }
        }
        if ((m->post_sql != NULL &&
             sqlite3_exec(s->db, m->post_sql, NULL, NULL, NULL) != SQLITE_OK) ||
            sqlite3_exec(s->db, setv, NULL, NULL, NULL) != SQLITE_OK) {
            snprintf(err, errlen, "%s: migration to schema version %d: %s", path, v + 1,
                     sqlite3_errmsg(s->db));
            goto fail;
        }
        if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            snprintf(err, errlen, "%s: migration to schema version %d: %s", path, v + 1,
                     sqlite3_errmsg(s->db));
            goto fail;
        }
        log_info("store: %s: migrated to schema version %d", path, v + 1);
    }
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(s->db));
        return false;
    }
    return true;
fail:
    if (!sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return false;
}

/* Loads the chain head: the newest row, or the pruning checkpoint when the log is
 * empty, or the all-zero start. */
static bool load_chain_head(struct store *s)
{
    sqlite3_stmt *st = stmt(s, Q_LAST_EVENT);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return false;
        st = stmt(s, Q_CHECKPOINT_GET);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW) {
            sqlite3_reset(st);
            return rc == SQLITE_DONE;
        }
    }
    s->last_seq = sqlite3_column_int64(st, 0);
    const void *h = sqlite3_column_blob(st, 1);
    int n = sqlite3_column_bytes(st, 1);
    if (h == NULL || n != STORE_HASH_LEN) {
        /* New rows chain to it anyway; store_events_verify() reports this row. */
        log_warnx("store: the hash of event %" PRId64 " is malformed", s->last_seq);
        n = n > STORE_HASH_LEN ? STORE_HASH_LEN : n;
    }
    if (h != NULL)
        memcpy(s->last_hash, h, (size_t)n);
    sqlite3_reset(st);
    return true;
}

static void store_free(struct store *s)
{
    for (int i = 0; i < Q_COUNT; i++)
        sqlite3_finalize(s->q[i]);
    if (s->db != NULL && sqlite3_close(s->db) != SQLITE_OK)
        log_warnx("store: close: %s", sqlite3_errmsg(s->db));
    EVP_MD_CTX_free(s->md);
    EVP_MD_free(s->sha256);
    free(s);
}

struct store *store_open(const char *path, char *err, size_t errlen)
{
    struct store *s = xcalloc(1, sizeof *s);
    char *mode = NULL;

    /* One connection used by one thread: SQLite's own mutexes are not needed. */
    int rc = sqlite3_open_v2(
        path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path,
                 s->db != NULL ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);

    /* journal_mode reports the mode it ended up in: a file system without shared
     * memory silently stays in rollback mode, which we refuse rather than run slower
     * and with different durability than documented. */
    sqlite3_stmt *st = NULL;
    if (sqlite3_exec(s->db, "PRAGMA foreign_keys = ON", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(s->db));
        sqlite3_finalize(st);
        goto fail;
    }
    const unsigned char *m = sqlite3_column_text(st, 0);
    mode = xstrdup(m != NULL ? (const char *)m : "");
    sqlite3_finalize(st);
    if (strcmp(mode, "wal") != 0 && strcmp(mode, "memory") != 0) {
        snprintf(err, errlen, "%s: cannot use WAL journal mode (got \"%s\")", path, mode);
        goto fail;
    }
    /* 1 MiB of page cache is plenty for the tap path (a few index pages) and keeps
     * lockerd within its 10 MB memory budget however long the log grows.
     * secure_delete overwrites deleted and replaced content with zeros: an erased
     * member or a pruned event must not live on in free space of the file. */
    if (sqlite3_exec(s->db,
                     "PRAGMA synchronous = FULL; PRAGMA cache_size = -1024;"
                     " PRAGMA secure_delete = ON",
                     NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(s->db));
        goto fail;
    }

    /* Migrations hash (migration 2 rehashes the event log). */
    s->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    s->md = EVP_MD_CTX_new();
    if (s->sha256 == NULL || s->md == NULL) {
        snprintf(err, errlen, "%s: OpenSSL has no SHA-256", path);
        goto fail;
    }
    if (!migrate(s, path, err, errlen))
        goto fail;

    for (int i = 0; i < Q_COUNT; i++) {
        if (sqlite3_prepare_v3(s->db, query_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->q[i],
                               NULL) != SQLITE_OK) {
            snprintf(err, errlen, "%s: preparing \"%s\": %s", path, query_sql[i],
                     sqlite3_errmsg(s->db));
            goto fail;
        }
    }

    if (!load_chain_head(s)) {
        snprintf(err, errlen, "%s: reading the event log: %s", path, sqlite3_errmsg(s->db));
        goto fail;
    }
    read_boot_id(s);
    if (!record_rechain(s)) {
        snprintf(err, errlen, "%s: recording log.rechained: %s", path, sqlite3_errmsg(s->db));
        goto fail;
    }
    free(mode);
    return s;

fail:
    free(mode);
    store_free(s);
    return NULL;
}

void store_close(struct store *s)
{
    if (s == NULL)
        return;
    if (s->depth > 0) {
        log_warnx("store: closed inside a transaction: rolled back");
        while (s->depth > 0)
            store_rollback(s);
    }
    store_free(s);
}

static void restore_chain_head(struct store *s)
{
    s->last_seq = s->tx_seq;
    memcpy(s->last_hash, s->tx_hash, STORE_HASH_LEN);
}

int store_begin(struct store *s)
{
    if (s->depth > 0) {
        if (s->doomed) {
            log_warnx("store: begin: the enclosing transaction was rolled back");
            return STORE_ERR;
        }
        s->depth++;
        return STORE_OK;
    }
    sqlite3_stmt *st = stmt(s, Q_BEGIN);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return db_error(s, "begin");
    s->depth = 1;
    s->doomed = false;
    s->tx_seq = s->last_seq;
    memcpy(s->tx_hash, s->last_hash, STORE_HASH_LEN);
    return STORE_OK;
}

int store_commit(struct store *s)
{
    if (s->depth == 0) {
        log_warnx("store: commit without begin");
        return STORE_ERR;
    }
    s->depth--;
    if (s->depth > 0)
        return s->doomed ? STORE_ERR : STORE_OK;
    if (s->doomed) {
        s->doomed = false;
        return STORE_ERR;
    }
    sqlite3_stmt *st = stmt(s, Q_COMMIT);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        db_error(s, "commit");
        if (!sqlite3_get_autocommit(s->db)) {
            st = stmt(s, Q_ROLLBACK);
            if (sqlite3_step(st) != SQLITE_DONE)
                db_error(s, "rollback after failed commit");
            sqlite3_reset(st);
        }
        restore_chain_head(s);
        s->appended = false;
        return STORE_ERR;
    }
    if (s->appended) {
        s->appended = false;
        for (int i = 0; i < STORE_MAX_HOOKS; i++) {
            if (s->hooks[i].fn != NULL)
                s->hooks[i].fn(s->hooks[i].arg);
        }
    }
    return STORE_OK;
}

void store_rollback(struct store *s)
{
    if (s->depth == 0) {
        log_warnx("store: rollback without begin");
        return;
    }
    if (!s->doomed) {
        /* SQLite may already have rolled back by itself after an I/O error. */
        if (!sqlite3_get_autocommit(s->db)) {
            sqlite3_stmt *st = stmt(s, Q_ROLLBACK);
            if (sqlite3_step(st) != SQLITE_DONE)
                db_error(s, "rollback");
            sqlite3_reset(st);
        }
        restore_chain_head(s);
        s->appended = false;
        s->doomed = true;
    }
    s->depth--;
    if (s->depth == 0)
        s->doomed = false;
}

/* ---- meta ---- */

int store_meta_get(struct store *s, const char *key, char *buf, size_t len)
{
    sqlite3_stmt *st = stmt(s, Q_META_GET);
    if (!bind_text(st, 1, key))
        return db_error(s, "meta get");
    int out;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *v = sqlite3_column_text(st, 0);
        size_t n = (size_t)sqlite3_column_bytes(st, 0);
        if (v == NULL || n >= len) {
            /* A truncated sync cursor would be worse than none. */
            log_warnx("store: meta get %s: value of %zu bytes does not fit", key, n);
            out = STORE_ERR;
        } else {
            memcpy(buf, v, n + 1);
            out = STORE_OK;
        }
    } else if (rc == SQLITE_DONE) {
        out = STORE_NOTFOUND;
    } else {
        out = db_error(s, "meta get");
    }
    sqlite3_reset(st);
    return out;
}

int store_meta_set(struct store *s, const char *key, const char *value)
{
    if (key == NULL || value == NULL) {
        log_warnx("store: meta set: NULL key or value");
        return STORE_ERR;
    }
    sqlite3_stmt *st = stmt(s, Q_META_SET);
    if (!bind_text(st, 1, key) || !bind_text(st, 2, value))
        return db_error(s, "meta set");
    return write_one(s, st, "meta set", false);
}

/* ---- clubs, members, credentials ---- */

const char *role_name(enum member_role role)
{
    switch (role) {
    case ROLE_MEMBER:
        return "member";
    case ROLE_MANAGER:
        return "manager";
    case ROLE_TECHNICIAN:
        return "technician";
    }
    return "unknown";
}

bool role_parse(const char *s, enum member_role *out)
{
    static const enum member_role roles[] = {ROLE_MEMBER, ROLE_MANAGER, ROLE_TECHNICIAN};
    for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++) {
        if (s != NULL && strcmp(s, role_name(roles[i])) == 0) {
            *out = roles[i];
            return true;
        }
    }
    return false;
}

int store_club_add(struct store *s, const struct club *c)
{
    sqlite3_stmt *st = stmt(s, Q_CLUB_ADD);
    if (!bind_arr(st, 1, c->id, sizeof c->id) || !bind_arr(st, 2, c->name, sizeof c->name))
        return db_error(s, "club add");
    return write_one(s, st, "club add", false);
}

int store_club_get(struct store *s, const char *id, struct club *out)
{
    sqlite3_stmt *st = stmt(s, Q_CLUB_GET);
    if (!bind_text(st, 1, id))
        return db_error(s, "club get");
    int rc = sqlite3_step(st);
    int ret = STORE_NOTFOUND;
    if (rc == SQLITE_ROW) {
        memset(out, 0, sizeof *out);
        col_str(st, 0, out->id, sizeof out->id);
        col_str(st, 1, out->name, sizeof out->name);
        ret = STORE_OK;
    } else if (rc != SQLITE_DONE) {
        ret = db_error(s, "club get");
    }
    sqlite3_reset(st);
    return ret;
}

int store_member_add(struct store *s, const struct member *m)
{
    sqlite3_stmt *st = stmt(s, Q_MEMBER_ADD);
    if (!bind_arr(st, 1, m->id, sizeof m->id) || !bind_arr(st, 2, m->name, sizeof m->name) ||
        !bind_text(st, 3, role_name(m->role)))
        return db_error(s, "member add");
    return write_one(s, st, "member add", false);
}

int store_member_get(struct store *s, const char *id, struct member *out)
{
    sqlite3_stmt *st = stmt(s, Q_MEMBER_GET);
    if (!bind_text(st, 1, id))
        return db_error(s, "member get");
    int rc = sqlite3_step(st);
    int ret = STORE_NOTFOUND;
    if (rc == SQLITE_ROW) {
        memset(out, 0, sizeof *out);
        col_str(st, 0, out->id, sizeof out->id);
        col_str(st, 1, out->name, sizeof out->name);
        const char *role = (const char *)sqlite3_column_text(st, 2);
        if (!role_parse(role, &out->role)) {
            /* The schema's CHECK makes this unreachable short of manual edits: take
             * the least privileged role. */
            log_warnx("store: member %s has unknown role \"%s\"", out->id, role ? role : "");
            out->role = ROLE_MEMBER;
        }
        ret = STORE_OK;
    } else if (rc != SQLITE_DONE) {
        ret = db_error(s, "member get");
    }
    sqlite3_reset(st);
    return ret;
}

int store_member_join(struct store *s, const char *member_id, const char *club_id)
{
    sqlite3_stmt *st = stmt(s, Q_MEMBER_JOIN);
    if (!bind_text(st, 1, member_id) || !bind_text(st, 2, club_id))
        return db_error(s, "member join");
    return write_one(s, st, "member join", false);
}

int store_member_clubs(struct store *s, const char *member_id, char clubs[][STORE_ID_LEN], int max)
{
    sqlite3_stmt *st = stmt(s, Q_MEMBER_CLUBS);
    if (!bind_text(st, 1, member_id))
        return db_error(s, "member clubs");
    int n = 0;
    int rc = SQLITE_DONE;
    while (n < max && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        col_str(st, 0, clubs[n], STORE_ID_LEN);
        n++;
    }
    if (n < max && rc != SQLITE_DONE)
        n = db_error(s, "member clubs");
    sqlite3_reset(st);
    return n;
}

static const char *cred_status_name(enum credential_status st)
{
    switch (st) {
    case CRED_ACTIVE:
        return "active";
    case CRED_REVOKED:
        return "revoked";
    }
    return "unknown";
}

int store_credential_add(struct store *s, const struct credential *c)
{
    sqlite3_stmt *st = stmt(s, Q_CRED_ADD);
    if (!bind_arr(st, 1, c->id, sizeof c->id) ||
        !bind_arr(st, 2, c->member_id, sizeof c->member_id) ||
        !bind_blob(st, 3, c->uid_hmac, STORE_HMAC_LEN) ||
        !bind_arr(st, 4, c->card_type, sizeof c->card_type) || !bind_int(st, 5, c->valid_from_ms) ||
        !bind_int(st, 6, c->valid_until_ms) || !bind_text(st, 7, cred_status_name(c->status)) ||
        !bind_arr(st, 8, c->source, sizeof c->source) || !bind_int(st, 9, c->synced_at_ms))
        return db_error(s, "credential add");
    return write_one(s, st, "credential add", false);
}

int store_credential_by_hmac(struct store *s, const uint8_t hmac[STORE_HMAC_LEN],
                             struct credential *out)
{
    sqlite3_stmt *st = stmt(s, Q_CRED_BY_HMAC);
    if (!bind_blob(st, 1, hmac, STORE_HMAC_LEN))
        return db_error(s, "credential lookup");
    int rc = sqlite3_step(st);
    int ret = STORE_NOTFOUND;
    if (rc == SQLITE_ROW) {
        memset(out, 0, sizeof *out);
        col_str(st, 0, out->id, sizeof out->id);
        col_str(st, 1, out->member_id, sizeof out->member_id);
        memcpy(out->uid_hmac, hmac, STORE_HMAC_LEN);
        col_str(st, 3, out->card_type, sizeof out->card_type);
        out->valid_from_ms = sqlite3_column_int64(st, 4);
        out->valid_until_ms = sqlite3_column_int64(st, 5);
        const char *status = (const char *)sqlite3_column_text(st, 6);
        /* Anything but an explicit "active" is treated as revoked: fail secure. */
        out->status = status != NULL && strcmp(status, "active") == 0 ? CRED_ACTIVE : CRED_REVOKED;
        col_str(st, 7, out->source, sizeof out->source);
        out->synced_at_ms = sqlite3_column_int64(st, 8);
        ret = STORE_OK;
    } else if (rc != SQLITE_DONE) {
        ret = db_error(s, "credential lookup");
    }
    sqlite3_reset(st);
    return ret;
}

int store_credential_revoke(struct store *s, const char *id)
{
    sqlite3_stmt *st = stmt(s, Q_CRED_REVOKE);
    if (!bind_text(st, 1, id))
        return db_error(s, "credential revoke");
    return write_one(s, st, "credential revoke", true);
}

/* ---- bookings ---- */

static const char *booking_status_name(enum booking_status st)
{
    switch (st) {
    case BOOKING_ACTIVE:
        return "active";
    case BOOKING_CANCELLED:
        return "cancelled";
    }
    return "unknown";
}

/* Reads a row selected with BOOKING_COLS. */
static void read_booking(sqlite3_stmt *st, struct booking *b)
{
    memset(b, 0, sizeof *b);
    col_str(st, 0, b->id, sizeof b->id);
    col_str(st, 1, b->club_id, sizeof b->club_id);
    b->compartment = sqlite3_column_int(st, 2);
    b->start_ms = sqlite3_column_int64(st, 3);
    b->end_ms = sqlite3_column_int64(st, 4);
    const char *status = (const char *)sqlite3_column_text(st, 5);
    b->status =
        status != NULL && strcmp(status, "active") == 0 ? BOOKING_ACTIVE : BOOKING_CANCELLED;
    col_str(st, 6, b->source, sizeof b->source);
    b->collected_ms = sqlite3_column_int64(st, 7);
    b->synced_at_ms = sqlite3_column_int64(st, 8);
}

int store_booking_add(struct store *s, const struct booking *b)
{
    if (store_begin(s) != STORE_OK)
        return STORE_ERR;

    if (b->status == BOOKING_ACTIVE) {
        sqlite3_stmt *st = stmt(s, Q_BOOKING_OVERLAP);
        if (!bind_int(st, 1, b->compartment) || !bind_int(st, 2, b->start_ms) ||
            !bind_int(st, 3, b->end_ms))
            goto err;
        int rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc == SQLITE_ROW)
            return store_commit(s) == STORE_OK ? STORE_CONFLICT : STORE_ERR;
        if (rc != SQLITE_DONE)
            goto err;
    }

    sqlite3_stmt *st = stmt(s, Q_BOOKING_ADD);
    if (!bind_arr(st, 1, b->id, sizeof b->id) || !bind_arr(st, 2, b->club_id, sizeof b->club_id) ||
        !bind_int(st, 3, b->compartment) || !bind_int(st, 4, b->start_ms) ||
        !bind_int(st, 5, b->end_ms) || !bind_text(st, 6, booking_status_name(b->status)) ||
        !bind_arr(st, 7, b->source, sizeof b->source) || !bind_int(st, 8, b->collected_ms) ||
        !bind_int(st, 9, b->synced_at_ms))
        goto err;
    int ret = step_write(s, st, "booking add", false);
    if (ret == STORE_ERR) {
        store_rollback(s);
        return STORE_ERR;
    }
    return store_commit(s) == STORE_OK ? ret : STORE_ERR;

err:
    db_error(s, "booking add");
    store_rollback(s);
    return STORE_ERR;
}

int store_booking_get(struct store *s, const char *id, struct booking *out)
{
    sqlite3_stmt *st = stmt(s, Q_BOOKING_GET);
    if (!bind_text(st, 1, id))
        return db_error(s, "booking get");
    int rc = sqlite3_step(st);
    int ret = STORE_NOTFOUND;
    if (rc == SQLITE_ROW) {
        read_booking(st, out);
        ret = STORE_OK;
    } else if (rc != SQLITE_DONE) {
        ret = db_error(s, "booking get");
    }
    sqlite3_reset(st);
    return ret;
}

int store_booking_cancel(struct store *s, const char *id)
{
    sqlite3_stmt *st = stmt(s, Q_BOOKING_CANCEL);
    if (!bind_text(st, 1, id))
        return db_error(s, "booking cancel");
    return write_one(s, st, "booking cancel", true);
}

int store_booking_set_collected(struct store *s, const char *id, int64_t when_ms)
{
    sqlite3_stmt *st = stmt(s, Q_BOOKING_COLLECTED);
    if (!bind_text(st, 1, id) || !bind_int(st, 2, when_ms))
        return db_error(s, "booking set collected");
    return write_one(s, st, "booking set collected", true);
}

static bool booking_before(const struct booking *a, const struct booking *b)
{
    if (a->start_ms != b->start_ms)
        return a->start_ms < b->start_ms;
    return strncmp(a->id, b->id, STORE_ID_LEN) < 0;
}

/* Inserts b into the sorted out[0..*n), keeping at most max entries. */
static void insert_sorted(struct booking *out, int *n, int max, const struct booking *b)
{
    int pos = *n;
    while (pos > 0 && booking_before(b, &out[pos - 1]))
        pos--;
    if (pos >= max)
        return;
    int last = *n < max ? *n : max - 1;
    memmove(&out[pos + 1], &out[pos], (size_t)(last - pos) * sizeof *out);
    out[pos] = *b;
    if (*n < max)
        (*n)++;
}

int store_bookings_for_clubs(struct store *s, char clubs[][STORE_ID_LEN], int nclubs,
                             int64_t from_ms, int64_t to_ms, struct booking *out, int max)
{
    int n = 0;
    if (max <= 0)
        return 0;
    /* One query per 16 clubs; with more clubs the chunks' results are merged. */
    for (int off = 0; off < nclubs; off += CLUBS_PER_QUERY) {
        int k = nclubs - off < CLUBS_PER_QUERY ? nclubs - off : CLUBS_PER_QUERY;
        sqlite3_stmt *st = stmt(s, Q_BOOKINGS_FOR_CLUBS);
        bool ok = true;
        for (int i = 0; i < k && ok; i++)
            ok = bind_arr(st, i + 1, clubs[off + i], STORE_ID_LEN);
        ok = ok && bind_int(st, CLUBS_PER_QUERY + 1, from_ms) &&
             bind_int(st, CLUBS_PER_QUERY + 2, to_ms) && bind_int(st, CLUBS_PER_QUERY + 3, max);
        if (!ok)
            return db_error(s, "bookings for clubs");
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            struct booking b;
            read_booking(st, &b);
            insert_sorted(out, &n, max, &b);
        }
        if (rc != SQLITE_DONE) {
            db_error(s, "bookings for clubs");
            sqlite3_reset(st);
            return STORE_ERR;
        }
        sqlite3_reset(st);
    }
    return n;
}

json_t *store_bookings_json(struct store *s, int64_t from_ms)
{
    sqlite3_stmt *st = stmt(s, Q_BOOKINGS_FROM);
    if (!bind_int(st, 1, from_ms)) {
        db_error(s, "bookings list");
        return NULL;
    }
    json_t *arr = json_array();
    int rc = SQLITE_DONE;
    while (arr != NULL && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct booking b;
        read_booking(st, &b);
        json_t *o = json_pack("{s:s, s:s, s:i, s:I, s:I, s:s, s:s}", "id", b.id, "club", b.club_id,
                              "compartment", b.compartment, "start", (json_int_t)b.start_ms, "end",
                              (json_int_t)b.end_ms, "status", booking_status_name(b.status),
                              "source", b.source);
        if (o == NULL) {
            json_decref(arr);
            arr = NULL;
            break;
        }
        /* Not collected is omitted rather than written as 0. */
        if (b.collected_ms != 0)
            json_object_set_new(o, "collected", json_integer(b.collected_ms));
        json_array_append_new(arr, o);
    }
    if (arr != NULL && rc != SQLITE_DONE) {
        db_error(s, "bookings list");
        json_decref(arr);
        arr = NULL;
    }
    sqlite3_reset(st);
    return arr;
}

/* ---- compartments ---- */

int store_comp_get(struct store *s, int number, struct comp_row *out)
{
    sqlite3_stmt *st = stmt(s, Q_COMP_GET);
    if (!bind_int(st, 1, number))
        return db_error(s, "compartment get");
    memset(out, 0, sizeof *out);
    out->number = number;
    int rc = sqlite3_step(st);
    int ret = STORE_NOTFOUND;
    if (rc == SQLITE_ROW) {
        out->out_of_service = sqlite3_column_int(st, 1) != 0;
        col_str(st, 2, out->oos_reason, sizeof out->oos_reason);
        col_str(st, 3, out->purpose, sizeof out->purpose);
        col_str(st, 4, out->pending_member, sizeof out->pending_member);
        col_str(st, 5, out->pending_credential, sizeof out->pending_credential);
        col_str(st, 6, out->pending_club, sizeof out->pending_club);
        col_str(st, 7, out->pending_booking, sizeof out->pending_booking);
        col_str(st, 8, out->holder_member, sizeof out->holder_member);
        col_str(st, 9, out->holder_club, sizeof out->holder_club);
        col_str(st, 10, out->holder_booking, sizeof out->holder_booking);
        out->holder_since_ms = sqlite3_column_int64(st, 11);
        out->due_ms = sqlite3_column_int64(st, 12);
        out->overdue_reported = sqlite3_column_int(st, 13) != 0;
        ret = STORE_OK;
    } else if (rc != SQLITE_DONE) {
        ret = db_error(s, "compartment get");
    }
    sqlite3_reset(st);
    return ret;
}

int store_comp_save(struct store *s, const struct comp_row *r)
{
    sqlite3_stmt *st = stmt(s, Q_COMP_SAVE);
    if (!bind_int(st, 1, r->number) || !bind_int(st, 2, r->out_of_service) ||
        !bind_arr(st, 3, r->oos_reason, sizeof r->oos_reason) ||
        !bind_arr(st, 4, r->purpose, sizeof r->purpose) ||
        !bind_arr(st, 5, r->pending_member, sizeof r->pending_member) ||
        !bind_arr(st, 6, r->pending_credential, sizeof r->pending_credential) ||
        !bind_arr(st, 7, r->pending_club, sizeof r->pending_club) ||
        !bind_arr(st, 8, r->pending_booking, sizeof r->pending_booking) ||
        !bind_arr(st, 9, r->holder_member, sizeof r->holder_member) ||
        !bind_arr(st, 10, r->holder_club, sizeof r->holder_club) ||
        !bind_arr(st, 11, r->holder_booking, sizeof r->holder_booking) ||
        !bind_int(st, 12, r->holder_since_ms) || !bind_int(st, 13, r->due_ms) ||
        !bind_int(st, 14, r->overdue_reported))
        return db_error(s, "compartment save");
    return write_one(s, st, "compartment save", false);
}

/* ---- events ---- */

/* One hashed field: p == NULL is SQL NULL. */
struct field {
    const char *p;
    size_t n;
};

/* Feeds enc(field) into the digest: 0x00 for NULL; else 0x01, the length as 4 bytes
 * big-endian, then the bytes. */
static bool digest_field(struct store *s, const struct field *f)
{
    uint8_t head[5] = {0};
    size_t headlen = 1;
    if (f->p != NULL) {
        uint32_t n = (uint32_t)f->n;
        head[0] = 1;
        head[1] = (uint8_t)(n >> 24);
        head[2] = (uint8_t)(n >> 16);
        head[3] = (uint8_t)(n >> 8);
        head[4] = (uint8_t)n;
        headlen = 5;
    }
    return EVP_DigestUpdate(s->md, head, headlen) == 1 &&
           (f->p == NULL || EVP_DigestUpdate(s->md, f->p, f->n) == 1);
}

/*
 * The chain hash of an event row:
 *
 *   hash = SHA-256(prev_hash || enc(f[0]) || ... || enc(f[n-1]))
 *
 * Schema version 2 (CHAIN_NFIELDS fields): seq, event_id, type, occurred_ms,
 * mono_ms, clock_synced, boot_id, compartment, subject, club_id, booking_id,
 * reason, operator, detail, where subject is the subject digest in lower-case hex
 * (NULL when the event names neither a member nor a credential). Schema version 1
 * hashed the 15 content columns with member_id and credential_id in subject's place;
 * only the migration still computes that form.
 *
 * enc(NULL) is the single byte 0x00; enc(value) is the byte 0x01, the length of the
 * value's text as 4 bytes big-endian, then the text. Integers are taken as SQLite
 * prints them (decimal ASCII, leading '-' for negatives, no padding), detail is the
 * stored compact JSON text byte for byte. The fixed field count and the length
 * prefixes make the encoding unambiguous, and NULL differs from "". Anyone can
 * recompute it from `SELECT * FROM events` without lockerd.
 */
static bool chain_hash(struct store *s, const uint8_t prev[STORE_HASH_LEN], const struct field *f,
                       int n, uint8_t out[STORE_HASH_LEN])
{
    if (EVP_DigestInit_ex(s->md, s->sha256, NULL) != 1 ||
        EVP_DigestUpdate(s->md, prev, STORE_HASH_LEN) != 1)
        return false;
    for (int i = 0; i < n; i++) {
        if (!digest_field(s, &f[i]))
            return false;
    }
    unsigned int len = 0;
    return EVP_DigestFinal_ex(s->md, out, &len) == 1 && len == STORE_HASH_LEN;
}

/*
 * The subject digest: SHA-256(salt || enc(member_id) || enc(credential_id)), with a
 * random 16-byte salt per row. Member and credential ids are short random strings
 * (32 bits of randomness): without the salt, anyone could find the ids behind a
 * digest by trying them all. Erasure deletes the salt, which makes the digest
 * unlinkable to any id while it keeps the chain verifiable.
 */
static bool subject_digest(struct store *s, const uint8_t salt[SALT_LEN],
                           const struct field *member, const struct field *credential,
                           uint8_t out[STORE_HASH_LEN])
{
    unsigned int len = 0;
    return EVP_DigestInit_ex(s->md, s->sha256, NULL) == 1 &&
           EVP_DigestUpdate(s->md, salt, SALT_LEN) == 1 && digest_field(s, member) &&
           digest_field(s, credential) && EVP_DigestFinal_ex(s->md, out, &len) == 1 &&
           len == STORE_HASH_LEN;
}

/* UUIDv7 (RFC 9562): 48-bit Unix ms, version 7, variant 10, 74 random bits. */
static bool uuid7(int64_t ms, char out[37])
{
    uint8_t b[16];
    if (RAND_bytes(b + 6, 10) != 1)
        return false;
    for (int i = 0; i < 6; i++)
        b[i] = (uint8_t)((uint64_t)ms >> (40 - 8 * i));
    b[6] = (uint8_t)(0x70 | (b[6] & 0x0f));
    b[8] = (uint8_t)(0x80 | (b[8] & 0x3f));
    char h[33];
    hex(b, 16, h);
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", h, h + 8, h + 12, h + 16, h + 20);
    return true;
}

/* "" means "not applicable" as much as NULL does; store one form. */
static const char *opt(const char *v)
{
    return v != NULL && v[0] != '\0' ? v : NULL;
}

static struct field text_field(const char *v)
{
    struct field f = {v, v != NULL ? strlen(v) : 0};
    return f;
}

static struct field int_field(int64_t v, char *buf, size_t len)
{
    int n = snprintf(buf, len, "%" PRId64, v);
    struct field f = {buf, (size_t)n};
    return f;
}

/* The chain fields of an event from its content fields and subject (hex or NULL). */
static void chain_fields(const struct field content[EVENT_NCOLS], const char *subject_hex,
                         struct field out[CHAIN_NFIELDS])
{
    int j = 0;
    for (int i = 0; i < EVENT_NCOLS; i++) {
        if (i == EC_MEMBER)
            out[j++] = text_field(subject_hex);
        else if (i != EC_CREDENTIAL)
            out[j++] = content[i];
    }
}

int64_t store_event_add(struct store *s, const struct event *ev)
{
    char *detail = NULL;
    char event_id[37];

    /* Begin first, so that every failure below rolls back the caller's transaction
     * too: a state change must not be committed without its event. */
    if (store_begin(s) != STORE_OK)
        return STORE_ERR;
    if (ev == NULL || ev->type == NULL || ev->type[0] == '\0') {
        log_warnx("store: event add: no type");
        goto fail;
    }
    if (ev->detail != NULL) {
        if (!json_is_object(ev->detail)) {
            log_warnx("store: event add %s: detail is not a JSON object", ev->type);
            goto fail;
        }
        detail = json_dumps(ev->detail, JSON_COMPACT | JSON_SORT_KEYS);
        if (detail == NULL) {
            log_warnx("store: event add %s: cannot encode detail", ev->type);
            goto fail;
        }
    }

    int64_t occurred = clock_wall_ms();
    int64_t mono = clock_mono_ms();
    bool synced = clock_synced();
    if (!uuid7(occurred, event_id)) {
        log_warnx("store: event add %s: RAND_bytes failed", ev->type);
        goto fail;
    }

    int64_t seq = s->last_seq + 1;
    char seqbuf[24], occbuf[24], monobuf[24], compbuf[24];
    struct field f[EVENT_NCOLS] = {
        int_field(seq, seqbuf, sizeof seqbuf),
        text_field(event_id),
        text_field(ev->type),
        int_field(occurred, occbuf, sizeof occbuf),
        int_field(mono, monobuf, sizeof monobuf),
        text_field(synced ? "1" : "0"),
        text_field(s->boot_id),
        ev->compartment != 0 ? int_field(ev->compartment, compbuf, sizeof compbuf)
                             : text_field(NULL),
        text_field(opt(ev->member_id)),
        text_field(opt(ev->credential_id)),
        text_field(opt(ev->club_id)),
        text_field(opt(ev->booking_id)),
        text_field(opt(ev->reason)),
        text_field(opt(ev->operator_name)),
        text_field(detail),
    };
    bool has_subject = f[EC_MEMBER].p != NULL || f[EC_CREDENTIAL].p != NULL;
    uint8_t salt[SALT_LEN], digest[STORE_HASH_LEN];
    char subject[2 * STORE_HASH_LEN + 1];
    if (has_subject) {
        if (RAND_bytes(salt, SALT_LEN) != 1 ||
            !subject_digest(s, salt, &f[EC_MEMBER], &f[EC_CREDENTIAL], digest)) {
            log_warnx("store: event add %s: subject digest failed", ev->type);
            goto fail;
        }
        hex(digest, STORE_HASH_LEN, subject);
    }
    struct field cf[CHAIN_NFIELDS];
    chain_fields(f, has_subject ? subject : NULL, cf);
    uint8_t hash[STORE_HASH_LEN];
    if (!chain_hash(s, s->last_hash, cf, CHAIN_NFIELDS, hash)) {
        log_warnx("store: event add %s: SHA-256 failed", ev->type);
        goto fail;
    }

    sqlite3_stmt *st = stmt(s, Q_EVENT_ADD);
    bool ok = bind_int(st, 1, seq) && bind_text(st, 2, event_id) && bind_text(st, 3, ev->type) &&
              bind_int(st, 4, occurred) && bind_int(st, 5, mono) && bind_int(st, 6, synced) &&
              bind_text(st, 7, s->boot_id) &&
              (ev->compartment != 0 ? bind_int(st, 8, ev->compartment)
                                    : sqlite3_bind_null(st, 8) == SQLITE_OK);
    for (int i = EC_MEMBER; i < EVENT_NCOLS && ok; i++)
        ok = bind_text(st, i + 1, f[i].p);
    if (has_subject)
        ok = ok && bind_blob(st, EC_SALT + 1, salt, SALT_LEN) &&
             bind_blob(st, EC_DIGEST + 1, digest, STORE_HASH_LEN);
    ok = ok && bind_blob(st, EC_PREV_HASH + 1, s->last_hash, STORE_HASH_LEN) &&
         bind_blob(st, EC_HASH + 1, hash, STORE_HASH_LEN);
    if (!ok || sqlite3_step(st) != SQLITE_DONE) {
        db_error(s, "event add");
        sqlite3_reset(st);
        goto fail;
    }
    sqlite3_reset(st);

    st = stmt(s, Q_OUTBOX_ADD);
    if (!bind_int(st, 1, seq) || sqlite3_step(st) != SQLITE_DONE) {
        db_error(s, "outbox add");
        sqlite3_reset(st);
        goto fail;
    }
    sqlite3_reset(st);
    free(detail);

    s->last_seq = seq;
    memcpy(s->last_hash, hash, STORE_HASH_LEN);
    s->appended = true;
    if (store_commit(s) != STORE_OK)
        return STORE_ERR;
    return seq;

fail:
    free(detail);
    store_rollback(s);
    return STORE_ERR;
}

/* Collects the content columns of a row selected with EVENT_COLS first. */
static void row_fields(sqlite3_stmt *st, struct field f[EVENT_NCOLS])
{
    for (int i = 0; i < EVENT_NCOLS; i++) {
        if (sqlite3_column_type(st, i) == SQLITE_NULL) {
            f[i].p = NULL;
            f[i].n = 0;
        } else {
            /* Text first, then its length: the documented order of these calls. */
            const unsigned char *t = sqlite3_column_text(st, i);
            f[i].p = t != NULL ? (const char *)t : "";
            f[i].n = (size_t)sqlite3_column_bytes(st, i);
        }
    }
}

static bool is_erased_id(const struct field *f)
{
    return f->p == NULL ||
           (f->n == strlen(STORE_ERASED_ID) && memcmp(f->p, STORE_ERASED_ID, f->n) == 0);
}

/*
 * Checks the subject of a row selected with EVENT_ALL_COLS against its digest and
 * writes the subject field the chain covers into subject_hex ("" for none). Returns
 * STORE_OK, STORE_CONFLICT (reason in why) or STORE_ERR. *erased is set for a row
 * whose subject was erased.
 */
static int row_subject(struct store *s, sqlite3_stmt *st, const struct field f[EVENT_NCOLS],
                       char subject_hex[2 * STORE_HASH_LEN + 1], bool *erased, char *why,
                       size_t whylen)
{
    int64_t seq = sqlite3_column_int64(st, EC_SEQ);
    const void *salt = sqlite3_column_blob(st, EC_SALT);
    int saltn = sqlite3_column_bytes(st, EC_SALT);
    const void *dig = sqlite3_column_blob(st, EC_DIGEST);
    int dign = sqlite3_column_bytes(st, EC_DIGEST);

    *erased = false;
    subject_hex[0] = '\0';
    if (dig == NULL) {
        if (salt != NULL || f[EC_MEMBER].p != NULL || f[EC_CREDENTIAL].p != NULL) {
            snprintf(why, whylen, "row %" PRId64 ": member or credential without a subject digest",
                     seq);
            return STORE_CONFLICT;
        }
        return STORE_OK;
    }
    if (dign != STORE_HASH_LEN || (salt != NULL && saltn != SALT_LEN)) {
        snprintf(why, whylen, "row %" PRId64 ": malformed subject salt or digest", seq);
        return STORE_CONFLICT;
    }
    if (salt != NULL) {
        uint8_t want[STORE_HASH_LEN];
        if (!subject_digest(s, salt, &f[EC_MEMBER], &f[EC_CREDENTIAL], want)) {
            log_warnx("store: verify: SHA-256 failed");
            return STORE_ERR;
        }
        if (memcmp(want, dig, STORE_HASH_LEN) != 0) {
            snprintf(why, whylen,
                     "row %" PRId64 ": member or credential does not match its subject digest",
                     seq);
            return STORE_CONFLICT;
        }
    } else if (!is_erased_id(&f[EC_MEMBER]) || !is_erased_id(&f[EC_CREDENTIAL])) {
        /* Without the salt the ids cannot be checked: an erased row may only say so. */
        snprintf(why, whylen,
                 "row %" PRId64 ": member or credential set on a row whose subject was erased",
                 seq);
        return STORE_CONFLICT;
    } else {
        *erased = true;
    }
    hex(dig, STORE_HASH_LEN, subject_hex);
    return STORE_OK;
}

static void json_hex(json_t *o, const char *key, sqlite3_stmt *st, int col, int maxlen)
{
    const uint8_t *h = sqlite3_column_blob(st, col);
    int n = sqlite3_column_bytes(st, col);
    char buf[2 * STORE_HASH_LEN + 1] = "";
    if (h != NULL && n > 0)
        hex(h, (size_t)(n > maxlen ? maxlen : n), buf);
    json_object_set_new(o, key, json_string(buf));
}

/* An event row selected with EVENT_ALL_COLS as JSON. */
static json_t *event_json(sqlite3_stmt *st)
{
    char when[40];
    time_format_utc(sqlite3_column_int64(st, EC_OCCURRED), when, sizeof when);
    json_t *o = json_object();
    json_t *clock = json_object();
    if (o == NULL || clock == NULL) {
        json_decref(o);
        json_decref(clock);
        return NULL;
    }
    json_object_set_new(o, "seq", json_integer(sqlite3_column_int64(st, EC_SEQ)));
    json_object_set_new(o, "eventId",
                        json_string((const char *)sqlite3_column_text(st, EC_EVENT_ID)));
    json_object_set_new(o, "type", json_string((const char *)sqlite3_column_text(st, EC_TYPE)));
    json_object_set_new(o, "occurredAt", json_string(when));
    json_object_set_new(clock, "synced", json_boolean(sqlite3_column_int(st, EC_SYNCED) != 0));
    json_object_set_new(o, "clock", clock);
    json_object_set_new(o, "bootId", json_string((const char *)sqlite3_column_text(st, EC_BOOT)));
    json_object_set_new(o, "monoMs", json_integer(sqlite3_column_int64(st, EC_MONO)));
    if (sqlite3_column_type(st, EC_COMPARTMENT) != SQLITE_NULL)
        json_object_set_new(o, "compartment",
                            json_integer(sqlite3_column_int64(st, EC_COMPARTMENT)));
    static const char *const keys[] = {"member",  "credential", "club",
                                       "booking", "reason",     "operator"};
    for (int i = 0; i < 6; i++) {
        const unsigned char *v = sqlite3_column_text(st, EC_MEMBER + i);
        if (v != NULL)
            json_object_set_new(o, keys[i], json_string((const char *)v));
    }
    const unsigned char *detail = sqlite3_column_text(st, EC_DETAIL);
    if (detail != NULL) {
        json_t *d = json_loads((const char *)detail, 0, NULL);
        /* A row edited by hand still shows what it holds; verify flags it. */
        json_object_set_new(o, "detail", d != NULL ? d : json_string((const char *)detail));
    }
    /* With these two anyone can check the ids against the chain; an erased row has
     * the digest only. */
    if (sqlite3_column_type(st, EC_SALT) != SQLITE_NULL)
        json_hex(o, "subjectSalt", st, EC_SALT, SALT_LEN);
    if (sqlite3_column_type(st, EC_DIGEST) != SQLITE_NULL)
        json_hex(o, "subjectDigest", st, EC_DIGEST, STORE_HASH_LEN);
    json_hex(o, "prevHash", st, EC_PREV_HASH, STORE_HASH_LEN);
    json_hex(o, "hash", st, EC_HASH, STORE_HASH_LEN);
    return o;
}

/* Runs a bound statement selecting EVENT_ALL_COLS into a JSON array; resets it. */
static json_t *events_array(struct store *s, sqlite3_stmt *st, const char *what)
{
    json_t *arr = json_array();
    int rc = SQLITE_DONE;
    while (arr != NULL && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *o = event_json(st);
        if (o == NULL) {
            log_warnx("store: %s: cannot encode event %" PRId64, what,
                      (int64_t)sqlite3_column_int64(st, EC_SEQ));
            json_decref(arr);
            arr = NULL;
            break;
        }
        json_array_append_new(arr, o);
    }
    if (arr != NULL && rc != SQLITE_DONE) {
        db_error(s, what);
        json_decref(arr);
        arr = NULL;
    }
    sqlite3_reset(st);
    return arr;
}

json_t *store_events_json(struct store *s, int64_t since_seq, int limit)
{
    sqlite3_stmt *st = stmt(s, Q_EVENTS_SINCE);
    if (!bind_int(st, 1, since_seq) || !bind_int(st, 2, limit > 0 ? limit : -1)) {
        db_error(s, "events list");
        return NULL;
    }
    return events_array(s, st, "events list");
}

int64_t store_last_seq(struct store *s)
{
    return query_int(s, stmt(s, Q_LAST_SEQ), "last seq");
}

int64_t store_event_count(struct store *s, const char *type)
{
    sqlite3_stmt *st = stmt(s, Q_EVENT_COUNT);
    if (!bind_text(st, 1, type))
        return db_error(s, "event count");
    return query_int(s, st, "event count");
}

int64_t store_event_erased_count(struct store *s)
{
    return query_int(s, stmt(s, Q_ERASED_COUNT), "erased count");
}

int store_events_verify(struct store *s, int64_t *bad_seq, char *why, size_t whylen)
{
    uint8_t prev[STORE_HASH_LEN] = {0};
    int64_t prev_seq = 0;
    bool from_checkpoint = false;
    *bad_seq = 0;
    if (whylen > 0)
        why[0] = '\0';

    sqlite3_stmt *st = stmt(s, Q_CHECKPOINT_GET);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        prev_seq = sqlite3_column_int64(st, 0);
        const void *h = sqlite3_column_blob(st, 1);
        if (h == NULL || sqlite3_column_bytes(st, 1) != STORE_HASH_LEN) {
            sqlite3_reset(st);
            *bad_seq = prev_seq + 1;
            snprintf(why, whylen, "the chain checkpoint (seq %" PRId64 ") is malformed", prev_seq);
            return STORE_CONFLICT;
        }
        memcpy(prev, h, STORE_HASH_LEN);
        from_checkpoint = true;
    } else if (rc != SQLITE_DONE) {
        sqlite3_reset(st);
        return db_error(s, "verify");
    }
    sqlite3_reset(st);

    /* One pass in seq order; only the previous hash is kept, so memory does not
     * grow with the log. */
    st = stmt(s, Q_EVENTS_SINCE);
    if (!bind_int(st, 1, INT64_MIN) || !bind_int(st, 2, -1))
        return db_error(s, "verify");
    int ret = STORE_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(st, EC_SEQ);
        const void *ph = sqlite3_column_blob(st, EC_PREV_HASH);
        int phn = sqlite3_column_bytes(st, EC_PREV_HASH);
        const void *h = sqlite3_column_blob(st, EC_HASH);
        int hn = sqlite3_column_bytes(st, EC_HASH);

        if (ph == NULL || phn != STORE_HASH_LEN || memcmp(ph, prev, STORE_HASH_LEN) != 0) {
            if (prev_seq > 0 && !from_checkpoint)
                snprintf(why, whylen,
                         "row %" PRId64 ": prev_hash does not match the hash of row %" PRId64, seq,
                         prev_seq);
            else if (from_checkpoint)
                snprintf(why, whylen,
                         "row %" PRId64 ": prev_hash does not match the checkpoint (seq %" PRId64
                         ")",
                         seq, prev_seq);
            else
                snprintf(why, whylen, "row %" PRId64 ": prev_hash is not the chain start", seq);
            ret = STORE_CONFLICT;
            break;
        }
        struct field f[EVENT_NCOLS];
        struct field cf[CHAIN_NFIELDS];
        char subject[2 * STORE_HASH_LEN + 1];
        bool erased;
        uint8_t want[STORE_HASH_LEN];
        row_fields(st, f);
        ret = row_subject(s, st, f, subject, &erased, why, whylen);
        if (ret != STORE_OK)
            break;
        chain_fields(f, subject[0] != '\0' ? subject : NULL, cf);
        if (!chain_hash(s, prev, cf, CHAIN_NFIELDS, want)) {
            log_warnx("store: verify: SHA-256 failed");
            ret = STORE_ERR;
            break;
        }
        if (h == NULL || hn != STORE_HASH_LEN || memcmp(h, want, STORE_HASH_LEN) != 0) {
            snprintf(why, whylen, "row %" PRId64 ": content does not match its hash", seq);
            ret = STORE_CONFLICT;
            break;
        }
        /* The chain links rows by hash; a changed seq fails above. This catches a
         * missing row whose successor was re-chained by someone with the code. */
        if (seq != prev_seq + 1) {
            snprintf(why, whylen, "row %" PRId64 ": rows missing after seq %" PRId64, seq,
                     prev_seq);
            ret = STORE_CONFLICT;
            break;
        }
        memcpy(prev, h, STORE_HASH_LEN);
        prev_seq = seq;
        from_checkpoint = false;
    }
    if (ret == STORE_CONFLICT)
        *bad_seq = sqlite3_column_int64(st, EC_SEQ);
    else if (ret == STORE_OK && rc != SQLITE_DONE)
        ret = db_error(s, "verify");
    sqlite3_reset(st);
    return ret;
}

/* The meta key under which rechain_v2() leaves its findings for the log.rechained
 * event, which can only be written once the store is open. */
#define META_RECHAINED "rechain-report"

/*
 * Migration 2: gives every existing event a salt and subject digest and recomputes
 * the chain in the new encoding, starting from the same place (the zero hash or the
 * pruning checkpoint). The old chain is verified on the way; whether it was intact
 * (and if not, where it broke) and its last hash go into a log.rechained event, so
 * that rehashing cannot hide an earlier break and a hash someone kept from before
 * can be matched to the migration. Runs inside the migration's transaction, before
 * the statements in s->q[] are prepared.
 */
static bool rechain_v2(struct store *s, char *err, size_t errlen)
{
    enum { SEL_PREV = EVENT_NCOLS, SEL_HASH };
    sqlite3_stmt *cp = NULL, *sel = NULL, *upd = NULL, *meta = NULL;
    uint8_t v1prev[STORE_HASH_LEN] = {0};
    uint8_t v2prev[STORE_HASH_LEN] = {0};
    int64_t prev_seq = 0, rows = 0, first_seq = 0, bad_seq = 0;
    char bad_why[96] = "";
    bool ok = false;
    json_t *detail = NULL;
    char *text = NULL;

    if (sqlite3_prepare_v2(s->db, "SELECT seq, hash FROM chain_checkpoint WHERE id = 1", -1, &cp,
                           NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db, "SELECT " EVENT_COLS ", prev_hash, hash FROM events ORDER BY seq",
                           -1, &sel, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db,
                           "UPDATE events SET subject_salt = ?2, subject_digest = ?3,"
                           " prev_hash = ?4, hash = ?5 WHERE seq = ?1",
                           -1, &upd, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(s->db));
        goto out;
    }
    int rc = sqlite3_step(cp);
    if (rc == SQLITE_ROW) {
        prev_seq = sqlite3_column_int64(cp, 0);
        const void *h = sqlite3_column_blob(cp, 1);
        if (h != NULL && sqlite3_column_bytes(cp, 1) == STORE_HASH_LEN) {
            memcpy(v1prev, h, STORE_HASH_LEN);
            memcpy(v2prev, h, STORE_HASH_LEN);
        } else {
            bad_seq = prev_seq + 1;
            snprintf(bad_why, sizeof bad_why, "malformed chain checkpoint");
        }
    } else if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(s->db));
        goto out;
    }

    /* Updating the row the SELECT stands on is safe in SQLite (the cursor is saved
     * and restored by rowid); its column values are not used after the update. */
    while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64(sel, EC_SEQ);
        struct field f[EVENT_NCOLS];
        uint8_t hash[STORE_HASH_LEN];
        row_fields(sel, f);
        const void *ph = sqlite3_column_blob(sel, SEL_PREV);
        int phn = sqlite3_column_bytes(sel, SEL_PREV);
        const void *h = sqlite3_column_blob(sel, SEL_HASH);
        int hn = sqlite3_column_bytes(sel, SEL_HASH);
        if (bad_seq == 0) {
            if (ph == NULL || phn != STORE_HASH_LEN || memcmp(ph, v1prev, STORE_HASH_LEN) != 0) {
                snprintf(bad_why, sizeof bad_why, "prev_hash does not match");
            } else if (!chain_hash(s, v1prev, f, EVENT_NCOLS, hash)) {
                snprintf(err, errlen, "SHA-256 failed");
                goto out;
            } else if (h == NULL || hn != STORE_HASH_LEN || memcmp(h, hash, STORE_HASH_LEN) != 0) {
                snprintf(bad_why, sizeof bad_why, "content does not match its hash");
            } else if (seq != prev_seq + 1) {
                snprintf(bad_why, sizeof bad_why, "rows missing before it");
            }
            if (bad_why[0] != '\0')
                bad_seq = seq;
        }
        memset(v1prev, 0, sizeof v1prev);
        if (h != NULL && hn == STORE_HASH_LEN)
            memcpy(v1prev, h, STORE_HASH_LEN);
        prev_seq = seq;

        bool has_subject = f[EC_MEMBER].p != NULL || f[EC_CREDENTIAL].p != NULL;
        uint8_t salt[SALT_LEN], digest[STORE_HASH_LEN];
        char subject[2 * STORE_HASH_LEN + 1];
        if (has_subject) {
            if (RAND_bytes(salt, SALT_LEN) != 1 ||
                !subject_digest(s, salt, &f[EC_MEMBER], &f[EC_CREDENTIAL], digest)) {
                snprintf(err, errlen, "subject digest failed");
                goto out;
            }
            hex(digest, STORE_HASH_LEN, subject);
        }
        struct field cf[CHAIN_NFIELDS];
        chain_fields(f, has_subject ? subject : NULL, cf);
        if (!chain_hash(s, v2prev, cf, CHAIN_NFIELDS, hash)) {
            snprintf(err, errlen, "SHA-256 failed");
            goto out;
        }
        sqlite3_reset(upd);
        sqlite3_clear_bindings(upd);
        if (!bind_int(upd, 1, seq) ||
            (has_subject &&
             (!bind_blob(upd, 2, salt, SALT_LEN) || !bind_blob(upd, 3, digest, STORE_HASH_LEN))) ||
            !bind_blob(upd, 4, v2prev, STORE_HASH_LEN) ||
            !bind_blob(upd, 5, hash, STORE_HASH_LEN) || sqlite3_step(upd) != SQLITE_DONE) {
            snprintf(err, errlen, "rehashing event %" PRId64 ": %s", seq, sqlite3_errmsg(s->db));
            goto out;
        }
        memcpy(v2prev, hash, STORE_HASH_LEN);
        if (rows++ == 0)
            first_seq = seq;
    }
    if (rc != SQLITE_DONE) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(s->db));
        goto out;
    }
    if (rows == 0) {
        ok = true;
        goto out;
    }

    char oldhead[2 * STORE_HASH_LEN + 1];
    hex(v1prev, STORE_HASH_LEN, oldhead);
    detail = json_pack("{s:I, s:I, s:I, s:s, s:b}", "count", (json_int_t)rows, "fromSeq",
                       (json_int_t)first_seq, "toSeq", (json_int_t)prev_seq, "oldHash", oldhead,
                       "oldChainIntact", bad_seq == 0);
    if (detail != NULL && bad_seq != 0) {
        json_object_set_new(detail, "oldFirstBadSeq", json_integer(bad_seq));
        json_object_set_new(detail, "oldReason", json_string(bad_why));
    }
    text = detail != NULL ? json_dumps(detail, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    if (text == NULL ||
        sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)", -1,
                           &meta, NULL) != SQLITE_OK ||
        !bind_text(meta, 1, META_RECHAINED) || !bind_text(meta, 2, text) ||
        sqlite3_step(meta) != SQLITE_DONE) {
        snprintf(err, errlen, "recording the rehash: %s", sqlite3_errmsg(s->db));
        goto out;
    }
    if (bad_seq != 0)
        log_warnx("store: the event log was broken before the migration (row %" PRId64
                  ": %s); recorded in log.rechained",
                  bad_seq, bad_why);
    log_info("store: rehashed %" PRId64 " events for the subject digests", rows);
    ok = true;

out:
    free(text);
    json_decref(detail);
    sqlite3_finalize(cp);
    sqlite3_finalize(sel);
    sqlite3_finalize(upd);
    sqlite3_finalize(meta);
    return ok;
}

/* Writes the log.rechained event a migration left in the meta table. */
static bool record_rechain(struct store *s)
{
    char text[1024];
    int rc = store_meta_get(s, META_RECHAINED, text, sizeof text);
    if (rc == STORE_NOTFOUND)
        return true;
    if (rc != STORE_OK)
        return false;
    json_t *detail = json_loads(text, 0, NULL);
    struct event ev = {.type = "log.rechained", .detail = detail};
    sqlite3_stmt *st = stmt(s, Q_META_DEL);
    bool ok = detail != NULL && store_begin(s) == STORE_OK;
    if (ok) {
        ok = store_event_add(s, &ev) > 0 && bind_text(st, 1, META_RECHAINED) &&
             step_write(s, st, "meta delete", false) == STORE_OK;
        if (ok)
            ok = store_commit(s) == STORE_OK;
        else
            store_rollback(s);
    }
    json_decref(detail);
    return ok;
}

int64_t store_prune(struct store *s, int64_t before_ms)
{
    if (store_begin(s) != STORE_OK)
        return STORE_ERR;

    /* The prefix ends before the first recent row. Retention is a promise to the
     * members: an event older than it goes even if the city never acknowledged it
     * (the count is recorded in the log.pruned event). */
    int64_t bound = INT64_MAX;
    sqlite3_stmt *st = stmt(s, Q_FIRST_RECENT);
    if (!bind_int(st, 1, before_ms))
        goto err;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        bound = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        goto err;

    st = stmt(s, Q_LAST_BEFORE);
    if (!bind_int(st, 1, bound))
        goto err;
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        sqlite3_reset(st);
        return store_commit(s) == STORE_OK ? 0 : STORE_ERR;
    }
    if (rc != SQLITE_ROW) {
        sqlite3_reset(st);
        goto err;
    }
    int64_t upto = sqlite3_column_int64(st, 0);
    uint8_t hash[STORE_HASH_LEN] = {0};
    const void *h = sqlite3_column_blob(st, 1);
    if (h != NULL && sqlite3_column_bytes(st, 1) == STORE_HASH_LEN)
        memcpy(hash, h, STORE_HASH_LEN);
    sqlite3_reset(st);

    st = stmt(s, Q_PRUNE_OUTBOX);
    if (!bind_int(st, 1, upto) || sqlite3_step(st) != SQLITE_DONE) {
        sqlite3_reset(st);
        goto err;
    }
    int64_t unsent = sqlite3_changes(s->db);
    sqlite3_reset(st);

    st = stmt(s, Q_PRUNE_DELETE);
    if (!bind_int(st, 1, upto) || sqlite3_step(st) != SQLITE_DONE) {
        sqlite3_reset(st);
        goto err;
    }
    int64_t count = sqlite3_changes(s->db);
    sqlite3_reset(st);

    st = stmt(s, Q_CHECKPOINT_SET);
    if (!bind_int(st, 1, upto) || !bind_blob(st, 2, hash, STORE_HASH_LEN) ||
        !bind_int(st, 3, clock_wall_ms()) || sqlite3_step(st) != SQLITE_DONE) {
        sqlite3_reset(st);
        goto err;
    }
    sqlite3_reset(st);

    json_t *detail = json_pack("{s:I, s:I, s:I}", "upToSeq", (json_int_t)upto, "count",
                               (json_int_t)count, "unsent", (json_int_t)unsent);
    struct event ev = {.type = "log.pruned", .detail = detail};
    int64_t seq = detail != NULL ? store_event_add(s, &ev) : STORE_ERR;
    json_decref(detail);
    if (seq < 0) {
        /* store_event_add() has rolled back already; this only ends our level. */
        store_rollback(s);
        return STORE_ERR;
    }
    if (store_commit(s) != STORE_OK)
        return STORE_ERR;
    log_info("store: pruned %" PRId64 " events up to seq %" PRId64, count, upto);
    return count;

err:
    db_error(s, "prune");
    store_rollback(s);
    return STORE_ERR;
}

int store_integrity_check(struct store *s, char *why, size_t whylen)
{
    sqlite3_stmt *st = stmt(s, Q_INTEGRITY);
    int rc = sqlite3_step(st);
    int ret;
    if (rc == SQLITE_ROW) {
        const unsigned char *msg = sqlite3_column_text(st, 0);
        if (msg != NULL && strcmp((const char *)msg, "ok") == 0) {
            ret = STORE_OK;
            if (whylen > 0)
                why[0] = '\0';
        } else {
            ret = STORE_CONFLICT;
            snprintf(why, whylen, "%s", msg != NULL ? (const char *)msg : "integrity check failed");
        }
    } else {
        ret = db_error(s, "integrity check");
    }
    sqlite3_reset(st);
    return ret;
}

int64_t store_outbox_depth(struct store *s)
{
    return query_int(s, stmt(s, Q_OUTBOX_DEPTH), "outbox depth");
}

int store_checkpoint(struct store *s)
{
    if (s->depth > 0)
        return STORE_OK; /* never inside a transaction: it would only be deferred */
    int rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY)
        return db_error(s, "checkpoint");
    return STORE_OK;
}

/* ---- data-protection rights ---- */

/* Appends a time (UTC ms) as "2026-11-28T17:00:00.000Z", unless it is 0 (none). */
static void json_time(json_t *o, const char *key, int64_t ms)
{
    char buf[40];
    if (ms == 0)
        return;
    time_format_utc(ms, buf, sizeof buf);
    json_object_set_new(o, key, json_string(buf));
}

static json_t *export_clubs(struct store *s, const char *member_id)
{
    sqlite3_stmt *st = stmt(s, Q_MEMBER_CLUBS_NAMED);
    if (!bind_text(st, 1, member_id)) {
        db_error(s, "member export");
        return NULL;
    }
    json_t *arr = json_array();
    int rc = SQLITE_DONE;
    while (arr != NULL && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *o = json_pack("{s:s?, s:s?}", "id", (const char *)sqlite3_column_text(st, 0),
                              "name", (const char *)sqlite3_column_text(st, 1));
        if (o == NULL || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    if (arr != NULL && rc != SQLITE_DONE) {
        db_error(s, "member export");
        json_decref(arr);
        arr = NULL;
    }
    sqlite3_reset(st);
    return arr;
}

static json_t *export_credentials(struct store *s, const char *member_id)
{
    sqlite3_stmt *st = stmt(s, Q_MEMBER_CREDS);
    if (!bind_text(st, 1, member_id)) {
        db_error(s, "member export");
        return NULL;
    }
    json_t *arr = json_array();
    int rc = SQLITE_DONE;
    while (arr != NULL && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        /* The HMAC is data held about the member: it identifies their card here. */
        json_t *o =
            json_pack("{s:s?, s:s?, s:s?, s:s?}", "id", (const char *)sqlite3_column_text(st, 0),
                      "type", (const char *)sqlite3_column_text(st, 3), "status",
                      (const char *)sqlite3_column_text(st, 6), "source",
                      (const char *)sqlite3_column_text(st, 7));
        if (o == NULL) {
            /* An export that leaves something out would be wrong: fail instead. */
            json_decref(arr);
            arr = NULL;
            break;
        }
        json_time(o, "validFrom", sqlite3_column_int64(st, 4));
        json_time(o, "validUntil", sqlite3_column_int64(st, 5));
        json_time(o, "syncedAt", sqlite3_column_int64(st, 8));
        json_hex(o, "uidHmac", st, 2, STORE_HMAC_LEN);
        json_array_append_new(arr, o);
    }
    if (arr != NULL && rc != SQLITE_DONE) {
        db_error(s, "member export");
        json_decref(arr);
        arr = NULL;
    }
    sqlite3_reset(st);
    return arr;
}

static json_t *export_compartments(struct store *s, const char *member_id)
{
    sqlite3_stmt *st = stmt(s, Q_MEMBER_COMPS);
    if (!bind_text(st, 1, member_id)) {
        db_error(s, "member export");
        return NULL;
    }
    json_t *arr = json_array();
    int rc = SQLITE_DONE;
    while (arr != NULL && (rc = sqlite3_step(st)) == SQLITE_ROW)
        json_array_append_new(arr, json_pack("{s:i, s:b, s:b}", "number", sqlite3_column_int(st, 0),
                                             "holdsKey", sqlite3_column_int(st, 1), "unlocking",
                                             sqlite3_column_int(st, 2)));
    if (arr != NULL && rc != SQLITE_DONE) {
        db_error(s, "member export");
        json_decref(arr);
        arr = NULL;
    }
    sqlite3_reset(st);
    return arr;
}

json_t *store_member_export(struct store *s, const char *member_id, int *rc)
{
    struct member m;
    *rc = store_member_get(s, member_id, &m);
    if (*rc != STORE_OK)
        return NULL;
    *rc = STORE_ERR;
    json_t *clubs = export_clubs(s, member_id);
    json_t *creds = export_credentials(s, member_id);
    json_t *comps = export_compartments(s, member_id);
    json_t *events = NULL;
    sqlite3_stmt *st = stmt(s, Q_MEMBER_EVENTS);
    if (bind_text(st, 1, member_id))
        events = events_array(s, st, "member export");
    else
        db_error(s, "member export");
    if (clubs == NULL || creds == NULL || comps == NULL || events == NULL) {
        json_decref(clubs);
        json_decref(creds);
        json_decref(comps);
        json_decref(events);
        return NULL;
    }
    json_t *out = json_pack("{s:{s:s, s:s, s:s}, s:o, s:o, s:o, s:o}", "member", "id", m.id, "name",
                            m.name, "role", role_name(m.role), "clubs", clubs, "credentials", creds,
                            "compartments", comps, "events", events);
    if (out != NULL)
        *rc = STORE_OK;
    return out;
}

/* Runs one bound write statement inside the caller's transaction; its change count
 * or STORE_ERR. */
static int64_t erase_step(struct store *s, enum query q, const char *member_id)
{
    sqlite3_stmt *st = stmt(s, q);
    if (!bind_text(st, 1, member_id) || sqlite3_step(st) != SQLITE_DONE) {
        db_error(s, "member erase");
        sqlite3_reset(st);
        return STORE_ERR;
    }
    int64_t n = sqlite3_changes(s->db);
    sqlite3_reset(st);
    return n;
}

int store_member_erase(struct store *s, const char *member_id, struct erase_result *out)
{
    memset(out, 0, sizeof *out);
    if (store_begin(s) != STORE_OK)
        return STORE_ERR;
    struct member m;
    int rc = store_member_get(s, member_id, &m);
    if (rc != STORE_OK) {
        if (rc == STORE_ERR) {
            store_rollback(s);
            return STORE_ERR;
        }
        return store_commit(s) == STORE_OK ? rc : STORE_ERR;
    }

    sqlite3_stmt *st = stmt(s, Q_MEMBER_COMPS);
    if (!bind_text(st, 1, member_id))
        goto err;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        out->compartment = sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return store_commit(s) == STORE_OK ? STORE_CONFLICT : STORE_ERR;
    if (rc != SQLITE_DONE)
        goto err;

    /* The events first: they find the credentials through the credentials table. */
    int64_t events = erase_step(s, Q_ERASE_EVENTS, member_id);
    int64_t creds = events >= 0 ? erase_step(s, Q_ERASE_CREDS, member_id) : STORE_ERR;
    int64_t clubs = creds >= 0 ? erase_step(s, Q_ERASE_CLUBS, member_id) : STORE_ERR;
    int64_t members = clubs >= 0 ? erase_step(s, Q_ERASE_MEMBER, member_id) : STORE_ERR;
    if (members != 1) {
        store_rollback(s);
        return STORE_ERR;
    }
    if (store_commit(s) != STORE_OK)
        return STORE_ERR;
    out->events = events;
    out->credentials = (int)creds;
    out->clubs = (int)clubs;
    return STORE_OK;

err:
    db_error(s, "member erase");
    store_rollback(s);
    return STORE_ERR;
}

/* ---- reports ---- */

int store_report_scan(struct store *s, int64_t from_ms, int64_t to_ms,
                      bool (*fn)(const struct report_row *row, void *arg), void *arg)
{
    sqlite3_stmt *st = stmt(s, Q_REPORT);
    if (!bind_int(st, 1, from_ms) || !bind_int(st, 2, to_ms))
        return db_error(s, "report");
    int rc;
    int ret = STORE_OK;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct report_row r;
        memset(&r, 0, sizeof r);
        r.booking_id = (const char *)sqlite3_column_text(st, 0);
        r.club_id = (const char *)sqlite3_column_text(st, 1);
        r.compartment = sqlite3_column_int(st, 2);
        r.start_ms = sqlite3_column_int64(st, 3);
        r.end_ms = sqlite3_column_int64(st, 4);
        const char *status = (const char *)sqlite3_column_text(st, 5);
        r.status =
            status != NULL && strcmp(status, "active") == 0 ? BOOKING_ACTIVE : BOOKING_CANCELLED;
        r.has_checkout = sqlite3_column_type(st, 6) != SQLITE_NULL;
        r.checkout_ms = sqlite3_column_int64(st, 6);
        r.has_return = sqlite3_column_type(st, 7) != SQLITE_NULL;
        r.return_ms = sqlite3_column_int64(st, 7);
        r.overdue = sqlite3_column_int64(st, 8);
        if (r.booking_id == NULL || r.club_id == NULL) {
            ret = db_error(s, "report");
            break;
        }
        if (!fn(&r, arg)) {
            ret = STORE_ERR;
            break;
        }
    }
    if (ret == STORE_OK && rc != SQLITE_DONE)
        ret = db_error(s, "report");
    sqlite3_reset(st);
    return ret;
}

/* ---- city sync ---- */

/* A city club id with its name ("" when the feed did not give one). */
static int city_club(struct store *s, const char *id, const char *name)
{
    sqlite3_stmt *st = stmt(s, Q_CITY_CLUB);
    if (!bind_text(st, 1, id) || !bind_text(st, 2, name))
        return db_error(s, "city club");
    return step_write(s, st, "city club", false);
}

int store_city_reservation_apply(struct store *s, const struct city_reservation *r, int64_t now_ms)
{
    if (store_begin(s) != STORE_OK)
        return STORE_ERR;
    /* Cancel every row of the reservation first, then (re)activate the compartments
     * it covers now: a move to other compartments leaves no stale row behind. The
     * row named by the id alone is rewritten by the upsert below when the
     * reservation covers one compartment, so it needs no cancelling then. */
    sqlite3_stmt *st = stmt(s, Q_CITY_RES_CANCEL_PARTS);
    if (!bind_text(st, 1, r->id) || !bind_int(st, 2, now_ms) ||
        step_write(s, st, "reservation cancel", false) != STORE_OK)
        goto err;
    if (r->deleted || r->ncompartments != 1) {
        st = stmt(s, Q_CITY_RES_CANCEL);
        if (!bind_text(st, 1, r->id) || !bind_int(st, 2, now_ms) ||
            step_write(s, st, "reservation cancel", false) != STORE_OK)
            goto err;
    }
    if (!r->deleted) {
        if (city_club(s, r->club_id, r->club_name) != STORE_OK)
            goto err;
        for (int i = 0; i < r->ncompartments; i++) {
            char id[STORE_ID_LEN + 8];
            if (r->ncompartments == 1)
                snprintf(id, sizeof id, "%s", r->id);
            else
                snprintf(id, sizeof id, "%s@%d", r->id, r->compartments[i]);
            st = stmt(s, Q_CITY_BOOKING_UPSERT);
            if (!bind_text(st, 1, id) || !bind_text(st, 2, r->club_id) ||
                !bind_int(st, 3, r->compartments[i]) || !bind_int(st, 4, r->start_ms) ||
                !bind_int(st, 5, r->end_ms) ||
                !bind_text(st, 6, r->cancelled ? "cancelled" : "active") ||
                !bind_int(st, 7, now_ms))
                goto err;
            int rc = step_write(s, st, "reservation upsert", false);
            if (rc != STORE_OK)
                goto err;
            if (sqlite3_changes(s->db) == 0)
                log_warnx("store: city reservation %s: a local booking has that id; kept the "
                          "local one",
                          id);
        }
    }
    return store_commit(s);
err:
    store_rollback(s);
    return STORE_ERR;
}

int store_city_credential_apply(struct store *s, const struct city_credential *c, int64_t now_ms)
{
    if (store_begin(s) != STORE_OK)
        return STORE_ERR;
    sqlite3_stmt *st;
    if (c->deleted) {
        st = stmt(s, Q_CITY_CRED_DELETE);
        if (!bind_text(st, 1, c->id) || step_write(s, st, "credential delete", false) != STORE_OK)
            goto err;
        return store_commit(s);
    }
    /* One card, one credential: the city's is authoritative for cards it issued, so
     * an older credential of the same card gives way (logged: it may be local). */
    st = stmt(s, Q_CITY_CRED_DUP);
    if (!bind_blob(st, 1, c->uid_hmac, STORE_HMAC_LEN) || !bind_text(st, 2, c->id))
        goto err;
    char dup[STORE_ID_LEN] = "", dup_source[16] = "";
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        col_str(st, 0, dup, sizeof dup);
        col_str(st, 1, dup_source, sizeof dup_source);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        goto err;
    if (dup[0] != '\0') {
        log_warnx("store: city credential %s is for the card of %s credential %s: replaced it",
                  c->id, dup_source, dup);
        st = stmt(s, Q_CRED_DELETE);
        if (!bind_text(st, 1, dup) || step_write(s, st, "credential delete", false) != STORE_OK)
            goto err;
    }
    json_t *clubs = json_array();
    for (int i = 0; i < c->nclubs && clubs != NULL; i++) {
        if (city_club(s, c->clubs[i], "") != STORE_OK) {
            json_decref(clubs);
            goto err;
        }
        json_array_append_new(clubs, json_string(c->clubs[i]));
    }
    char *clubs_text = clubs != NULL ? json_dumps(clubs, JSON_COMPACT) : NULL;
    json_decref(clubs);
    if (clubs_text == NULL)
        goto err;
    st = stmt(s, Q_CITY_MEMBER);
    bool ok = bind_text(st, 1, c->member_id) && bind_text(st, 2, c->member_name) &&
              step_write(s, st, "city member", false) == STORE_OK;
    st = stmt(s, Q_CITY_CRED_UPSERT);
    ok = ok && bind_text(st, 1, c->id) && bind_text(st, 2, c->member_id) &&
         bind_blob(st, 3, c->uid_hmac, STORE_HMAC_LEN) && bind_text(st, 4, c->card_type) &&
         bind_int(st, 5, c->valid_from_ms) && bind_int(st, 6, c->valid_until_ms) &&
         bind_text(st, 7, cred_status_name(c->status)) && bind_int(st, 8, now_ms) &&
         bind_text(st, 9, clubs_text);
    rc = ok ? step_write(s, st, "city credential", false) : STORE_ERR;
    free(clubs_text);
    if (rc != STORE_OK)
        goto err;
    if (sqlite3_changes(s->db) == 0)
        log_warnx("store: city credential %s: a local credential has that id; kept the local one",
                  c->id);
    return store_commit(s);
err:
    store_rollback(s);
    return STORE_ERR;
}

int store_city_sweep(struct store *s, bool credentials, int64_t before_ms)
{
    sqlite3_stmt *st = stmt(s, credentials ? Q_CITY_SWEEP_CREDS : Q_CITY_SWEEP_BOOKINGS);
    if (!bind_int(st, 1, before_ms))
        return db_error(s, "city sweep");
    if (write_one(s, st, "city sweep", false) != STORE_OK)
        return STORE_ERR;
    return sqlite3_changes(s->db);
}

int store_credential_clubs(struct store *s, const char *credential_id, char clubs[][STORE_ID_LEN],
                           int max, bool *scoped)
{
    *scoped = false;
    sqlite3_stmt *st = stmt(s, Q_CRED_CLUBS);
    if (!bind_text(st, 1, credential_id))
        return db_error(s, "credential clubs");
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        sqlite3_reset(st);
        return rc == SQLITE_DONE ? 0 : db_error(s, "credential clubs");
    }
    int n = 0;
    if (sqlite3_column_type(st, 0) != SQLITE_NULL) {
        *scoped = true;
        json_t *arr = json_loads((const char *)sqlite3_column_text(st, 0), 0, NULL);
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v)
        {
            if (n < max && json_is_string(v))
                snprintf(clubs[n++], STORE_ID_LEN, "%s", json_string_value(v));
        }
        /* Unreadable: the credential opens nothing (fail secure). */
        json_decref(arr);
    }
    sqlite3_reset(st);
    return n;
}

json_t *store_outbox_json(struct store *s, int limit)
{
    sqlite3_stmt *st = stmt(s, Q_OUTBOX_EVENTS);
    if (!bind_int(st, 1, limit)) {
        db_error(s, "outbox list");
        return NULL;
    }
    return events_array(s, st, "outbox list");
}

int store_outbox_ack(struct store *s, const char *event_id)
{
    sqlite3_stmt *st = stmt(s, Q_OUTBOX_ACK);
    if (!bind_text(st, 1, event_id))
        return db_error(s, "outbox ack");
    return step_write(s, st, "outbox ack", true);
}

int store_outbox_dead(struct store *s, const char *event_id, int http, const char *error,
                      int64_t now_ms)
{
    if (store_begin(s) != STORE_OK)
        return STORE_ERR;
    /* An event pruned while its batch was out has nothing left to keep: NOTFOUND is
     * not an error here. */
    sqlite3_stmt *st = stmt(s, Q_DEAD_ADD);
    if (!bind_text(st, 1, event_id) || !bind_int(st, 2, http) || !bind_text(st, 3, error) ||
        !bind_int(st, 4, now_ms) || step_write(s, st, "dead letter", true) == STORE_ERR ||
        store_outbox_ack(s, event_id) == STORE_ERR) {
        store_rollback(s);
        return STORE_ERR;
    }
    return store_commit(s);
}

int64_t store_dead_letter_count(struct store *s)
{
    return query_int(s, stmt(s, Q_DEAD_COUNT), "dead letters");
}

int store_add_append_hook(struct store *s, void (*fn)(void *arg), void *arg)
{
    for (int i = 0; i < STORE_MAX_HOOKS; i++) {
        if (s->hooks[i].fn == NULL) {
            s->hooks[i].fn = fn;
            s->hooks[i].arg = arg;
            return STORE_OK;
        }
    }
    log_warnx("store: more than %d append hooks", STORE_MAX_HOOKS);
    return STORE_ERR;
}

void store_remove_append_hook(struct store *s, void (*fn)(void *arg), void *arg)
{
    for (int i = 0; i < STORE_MAX_HOOKS; i++) {
        if (s->hooks[i].fn == fn && s->hooks[i].arg == arg)
            s->hooks[i].fn = NULL;
    }
}

const char *store_boot_id(const struct store *s)
{
    return s->boot_id;
}

/* ---- the manager console (control.c: booking.move, recurring bookings, lists) ---- */

int store_booking_conflict(struct store *s, int compartment, int64_t start_ms, int64_t end_ms,
                           const char *exclude_id, struct booking *out)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT " BOOKING_COLS " FROM bookings WHERE compartment = ?1"
                           " AND status = 'active' AND start_ms < ?3 AND end_ms > ?2"
                           " AND id IS NOT ?4 ORDER BY start_ms LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK)
        return db_error(s, "booking conflict");
    int ret = STORE_ERR;
    if (bind_int(st, 1, compartment) && bind_int(st, 2, start_ms) && bind_int(st, 3, end_ms) &&
        bind_text(st, 4, exclude_id)) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            read_booking(st, out);
            ret = STORE_OK;
        } else if (rc == SQLITE_DONE) {
            ret = STORE_NOTFOUND;
        }
    }
    if (ret == STORE_ERR)
        db_error(s, "booking conflict");
    sqlite3_finalize(st);
    return ret;
}

int store_booking_move(struct store *s, const char *id, int64_t start_ms, int64_t end_ms)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, "UPDATE bookings SET start_ms = ?2, end_ms = ?3 WHERE id = ?1",
                           -1, &st, NULL) != SQLITE_OK)
        return db_error(s, "booking move");
    int ret = STORE_ERR;
    if (bind_text(st, 1, id) && bind_int(st, 2, start_ms) && bind_int(st, 3, end_ms))
        ret = step_write(s, st, "booking move", true);
    else
        db_error(s, "booking move");
    sqlite3_finalize(st);
    return ret;
}

/* One query's rows as an array of objects, columns named by the query. */
static json_t *rows_json(struct store *s, const char *sql, const char *what)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        db_error(s, what);
        return NULL;
    }
    json_t *arr = json_array();
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *o = json_object();
        for (int i = 0; i < sqlite3_column_count(st); i++) {
            const char *name = sqlite3_column_name(st, i);
            switch (sqlite3_column_type(st, i)) {
            case SQLITE_INTEGER:
                json_object_set_new(o, name, json_integer(sqlite3_column_int64(st, i)));
                break;
            case SQLITE_NULL:
                break;
            default:
                json_object_set_new(o, name, json_string((const char *)sqlite3_column_text(st, i)));
                break;
            }
        }
        json_array_append_new(arr, o);
    }
    if (rc != SQLITE_DONE) {
        db_error(s, what);
        json_decref(arr);
        arr = NULL;
    }
    sqlite3_finalize(st);
    return arr;
}

json_t *store_directory_json(struct store *s)
{
    json_t *clubs = rows_json(s, "SELECT id, name FROM clubs ORDER BY name, id", "clubs");
    json_t *members = rows_json(s,
                                "SELECT m.id AS id, m.name AS name, m.role AS role,"
                                " (SELECT group_concat(club_id, ' ') FROM member_clubs"
                                "  WHERE member_id = m.id) AS clubs"
                                " FROM members m ORDER BY m.name, m.id",
                                "members");
    json_t *cards = rows_json(s,
                              "SELECT id, member_id AS member, card_type AS type, status, source"
                              " FROM credentials ORDER BY member_id, id",
                              "cards");
    if (!clubs || !members || !cards) {
        json_decref(clubs);
        json_decref(members);
        json_decref(cards);
        return NULL;
    }
    return json_pack("{s:o,s:o,s:o}", "clubs", clubs, "members", members, "cards", cards);
}

int store_club_rename(struct store *s, const char *id, const char *name)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, "UPDATE clubs SET name = ?2 WHERE id = ?1", -1, &st, NULL) !=
        SQLITE_OK)
        return db_error(s, "club rename");
    int ret = STORE_ERR;
    if (bind_text(st, 1, id) && bind_text(st, 2, name))
        ret = step_write(s, st, "club rename", true);
    else
        db_error(s, "club rename");
    sqlite3_finalize(st);
    return ret;
}

int store_member_rename(struct store *s, const char *id, const char *name)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, "UPDATE members SET name = ?2 WHERE id = ?1", -1, &st, NULL) !=
        SQLITE_OK)
        return db_error(s, "member rename");
    int ret = STORE_ERR;
    if (bind_text(st, 1, id) && bind_text(st, 2, name))
        ret = step_write(s, st, "member rename", true);
    else
        db_error(s, "member rename");
    sqlite3_finalize(st);
    return ret;
}

/* ---- card + PIN (member_pins) ----
 * Rare writes: the statements are prepared per call rather than cached. */

static int pin_exec(struct store *s, const char *sql, const char *member_id, const char *text,
                    int64_t a, int64_t b, int64_t c, const char *what)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        return db_error(s, what);
    int rc = STORE_ERR, n = sqlite3_bind_parameter_count(st);
    /* Each statement uses the first n of ?1 member, ?2 text, ?3..?5 integers. */
    if (bind_text(st, 1, member_id) && (n < 2 || bind_text(st, 2, text)) &&
        (n < 3 || bind_int(st, 3, a)) && (n < 4 || bind_int(st, 4, b)) &&
        (n < 5 || bind_int(st, 5, c)))
        rc = write_one(s, st, what, true);
    else
        db_error(s, what);
    sqlite3_finalize(st);
    return rc;
}

int store_pin_set(struct store *s, const char *member_id, const char *hash, int64_t now_ms)
{
    if (hash == NULL)
        return pin_exec(s, "DELETE FROM member_pins WHERE member_id = ?1", member_id, NULL, 0, 0, 0,
                        "pin clear");
    return pin_exec(s,
                    "INSERT INTO member_pins (member_id, hash, failures, lockouts,"
                    " locked_until_ms, set_ms) VALUES (?1, ?2, ?3, ?4, 0, ?5)"
                    " ON CONFLICT (member_id) DO UPDATE SET hash = excluded.hash,"
                    " failures = 0, lockouts = 0, locked_until_ms = 0, set_ms = excluded.set_ms",
                    member_id, hash, 0, 0, now_ms, "pin set");
}

int store_pin_get(struct store *s, const char *member_id, struct pin_row *out)
{
    sqlite3_stmt *st;
    memset(out, 0, sizeof *out);
    if (sqlite3_prepare_v2(s->db,
                           "SELECT hash, failures, lockouts, locked_until_ms FROM member_pins"
                           " WHERE member_id = ?1",
                           -1, &st, NULL) != SQLITE_OK)
        return db_error(s, "pin get");
    int ret = STORE_NOTFOUND;
    if (!bind_text(st, 1, member_id)) {
        ret = db_error(s, "pin get");
    } else {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            col_str(st, 0, out->hash, sizeof out->hash);
            out->failures = sqlite3_column_int(st, 1);
            out->lockouts = sqlite3_column_int(st, 2);
            out->locked_until_ms = sqlite3_column_int64(st, 3);
            ret = STORE_OK;
        } else if (rc != SQLITE_DONE) {
            ret = db_error(s, "pin get");
        }
    }
    sqlite3_finalize(st);
    return ret;
}

int store_pin_attempts(struct store *s, const char *member_id, int failures, int lockouts,
                       int64_t locked_until_ms)
{
    return pin_exec(s,
                    "UPDATE member_pins SET failures = ?3, lockouts = ?4, locked_until_ms = ?5"
                    " WHERE member_id = ?1 AND ?2 IS NULL", /* ?2 keeps the numbering */
                    member_id, NULL, failures, lockouts, locked_until_ms, "pin attempts");
}
