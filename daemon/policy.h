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

/* Service opens from the control socket: managers and technicians only. */
bool policy_may_service_open(enum member_role role);

#endif
