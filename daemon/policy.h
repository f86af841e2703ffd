/*
 * policy.h - who may take or return which key now.
 *
 * A pure decision over the store's data and the compartments' current state: it
 * reads, never writes, and never touches hardware. Every refusal has a reason code
 * that goes into the access.denied event, the logs and (later) the kiosk screen.
 */
#ifndef LOCKERD_POLICY_H
#define LOCKERD_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "daemon/config.h"
#include "daemon/store.h"
#include "hal/hal.h"

enum refusal {
    REFUSE_NONE,
    REFUSE_INSECURE_CARD,    /* UID-only card where auth = desfire */
    REFUSE_CARD_AUTH_FAILED, /* DESFire card without the right key: a clone or a stranger */
    REFUSE_UNKNOWN_CARD,     /* no credential for this card */
    REFUSE_REVOKED,          /* credential revoked */
    REFUSE_EXPIRED,          /* outside the credential's validity dates */
    REFUSE_DATA_TOO_OLD,     /* synced data older than offline_max_age */
    REFUSE_NO_BOOKING,       /* none of the member's clubs has a booking now */
    REFUSE_OUTSIDE_WINDOW,   /* a booking exists but too early or too late to pick up */
    REFUSE_KEY_ALREADY_OUT,  /* the booked compartment's key is out */
    REFUSE_OUT_OF_SERVICE,   /* the compartment is out of service */
    REFUSE_BUSY,             /* the compartment is being opened right now */
    REFUSE_INTERNAL,         /* the database could not be read: fail secure */
    REFUSE_PIN_NOT_SET,      /* a PIN is required here and the member has none */
    REFUSE_PIN_LOCKED_OUT,   /* too many wrong PINs: locked out for a while */
    REFUSE_PIN_WRONG,        /* a wrong PIN; the station still waits for the right one */
};

/* Stable reason code used on the wire and in events, e.g. "no-booking". */
const char *refusal_code(enum refusal r);

/* What the policy needs to know about each compartment. */
struct comp_view {
    int number;
    bool key_present;
    bool out_of_service;
    bool busy; /* unlocking or open */
    char holder_member[STORE_ID_LEN];
    char holder_club[STORE_ID_LEN];
};

enum policy_action { POLICY_REFUSE, POLICY_PICKUP, POLICY_RETURN };

struct decision {
    enum policy_action action;
    enum refusal reason;  /* REFUSE_NONE unless action == POLICY_REFUSE */
    int compartment;      /* for pickup/return, and for refusals tied to one */
    bool have_credential; /* credential and member below are valid */
    struct credential credential;
    struct member member;
    char club_id[STORE_ID_LEN];
    bool have_booking;
    struct booking booking; /* the booking a pickup is for */
    int64_t next_start_ms;  /* next booking start of the member's clubs, 0 = none known */
};

/* Decides what a tap of the card identified by uid_hmac means now. Never fails: a
 * database error yields a refusal with REFUSE_INTERNAL. */
void policy_decide(const struct config *cfg, struct store *store, const uint8_t uid_hmac[32],
                   const struct card_read *card, const struct comp_view *comps, int ncomps,
                   int64_t now_ms, struct decision *out);

/* ---- card + PIN ----
 * A PIN is 4 to 8 digits. It is stored as "pbkdf2-sha256$ITER$SALT$HASH" (salt 16
 * random bytes, hash 32 bytes, both base64): PKCS5_PBKDF2_HMAC with SHA-256 and
 * POLICY_PIN_ITER iterations, about 50 ms on a Raspberry Pi 4. The iteration count
 * is stored with each hash, so it can be raised without invalidating old PINs.
 * After POLICY_PIN_ATTEMPTS wrong PINs in a row the member is locked out for
 * policy_pin_lockout_ms(n) (n: lockouts so far, the first is 0): 1 min, doubling
 * up to 1 h; a right PIN resets both counts. */
#define POLICY_PIN_ITER     50000
#define POLICY_PIN_ATTEMPTS 3
#define POLICY_PIN_HASH_MAX 128

/* True when s is 4 to 8 ASCII digits. */
bool policy_pin_valid(const char *s);
/* Hashes pin with a fresh salt into out (at least POLICY_PIN_HASH_MAX). Returns
 * false when pin is not valid or OpenSSL fails. */
bool policy_pin_hash(const char *pin, char *out, size_t outlen);
/* Constant-time check of pin against a stored hash; false for a malformed one. */
bool policy_pin_verify(const char *stored, const char *pin);
/* Lockout after the (n+1)th run of wrong PINs: 60 s << n, at most 1 h. */
int64_t policy_pin_lockout_ms(int n);
/* Whether a pickup from compartment n needs a PIN ([policy] pin_required or the
 * compartment's pin = yes). Returns never do. */
bool policy_pin_required(const struct config *cfg, int compartment);

/* Service opens from the control socket: managers and technicians only. */
bool policy_may_service_open(enum member_role role);

#endif
