/*
 * policy.c - who may take or return which key now.
 *
 * Order of checks, so that the most useful reason wins:
 *   card security -> credential known -> a key this member (or club) holds is
 *   returned -> revoked -> validity dates -> data age -> a booking now -> its
 *   compartment.
 * Returns come first: a trainer bringing the key back must never be refused
 * because the slot is over or the card has lapsed meanwhile.
 */
#include "daemon/policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "daemon/log.h"

#define MAX_CLUBS      16
#define MAX_CANDIDATES 32
#define DAY_MS         (24LL * 3600 * 1000)

const char *refusal_code(enum refusal r)
{
    switch (r) {
    case REFUSE_NONE:
        return "none";
    case REFUSE_INSECURE_CARD:
        return "insecure-card";
    case REFUSE_CARD_AUTH_FAILED:
        return "card-auth-failed";
    case REFUSE_UNKNOWN_CARD:
        return "unknown-card";
    case REFUSE_REVOKED:
        return "revoked";
    case REFUSE_EXPIRED:
        return "expired";
    case REFUSE_DATA_TOO_OLD:
        return "offline-data-too-old";
    case REFUSE_NO_BOOKING:
        return "no-booking";
    case REFUSE_OUTSIDE_WINDOW:
        return "outside-pickup-window";
    case REFUSE_KEY_ALREADY_OUT:
        return "key-already-out";
    case REFUSE_OUT_OF_SERVICE:
        return "out-of-service";
    case REFUSE_BUSY:
        return "compartment-busy";
    case REFUSE_INTERNAL:
        return "internal-error";
    case REFUSE_PIN_NOT_SET:
        return "pin-not-set";
    case REFUSE_PIN_LOCKED_OUT:
        return "pin-locked-out";
    case REFUSE_PIN_WRONG:
        return "pin-wrong";
    }
    return "unknown";
}

bool policy_may_service_open(enum member_role role)
{
    switch (role) {
    case ROLE_MEMBER:
        return false;
    case ROLE_MANAGER:
    case ROLE_TECHNICIAN:
        return true;
    }
    return false;
}

static void refuse(struct decision *d, enum refusal r)
{
    d->action = POLICY_REFUSE;
    d->reason = r;
}

/* When the station last read a city feed to its end (sync.c records it): from
 * then on, every record of that feed is known to be current, however long ago it
 * last changed. 0 if never. */
static int64_t feed_confirmed(struct store *store, const char *key)
{
    char buf[32];
    if (store_meta_get(store, key, buf, sizeof buf) != STORE_OK)
        return 0;
    return strtoll(buf, NULL, 10);
}

/* City data is trusted only while it is fresh: an offline station must not keep
 * honouring a card the city revoked days ago. Local data has no age. */
static bool stale(const char *source, int64_t synced_at_ms, int64_t confirmed_ms,
                  const struct config *cfg, int64_t now)
{
    int64_t fresh = synced_at_ms > confirmed_ms ? synced_at_ms : confirmed_ms;
    return strcmp(source, "city") == 0 && now - fresh > cfg->offline_max_age_ms;
}

static bool in_list(const char *id, char list[][STORE_ID_LEN], int n)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(list[i], id) == 0)
            return true;
    }
    return false;
}

static const struct comp_view *find_comp(const struct comp_view *comps, int n, int number)
{
    for (int i = 0; i < n; i++) {
        if (comps[i].number == number)
            return &comps[i];
    }
    return NULL;
}

/* A key is returned by the member who holds it or by another member of the club it
 * was taken for (a co-trainer). */
static const struct comp_view *held_key(const struct comp_view *comps, int n, const char *member,
                                        char clubs[][STORE_ID_LEN], int nclubs)
{
    for (int i = 0; i < n; i++) {
        const struct comp_view *c = &comps[i];
        if (c->key_present || c->holder_member[0] == '\0')
            continue;
        if (strcmp(c->holder_member, member) == 0 || in_list(c->holder_club, clubs, nclubs))
            return c;
    }
    return NULL;
}

static void decide_pickup(const struct config *cfg, struct store *store, char clubs[][STORE_ID_LEN],
                          int nclubs, const struct comp_view *comps, int ncomps, int64_t now,
                          struct decision *d)
{
    struct booking cand[MAX_CANDIDATES];
    /* Bookings that have not ended and start within the next week: the ones that
     * can be picked up now, and the next one for the refusal message. */
    int n =
        store_bookings_for_clubs(store, clubs, nclubs, now, now + 7 * DAY_MS, cand, MAX_CANDIDATES);
    if (n < 0) {
        refuse(d, REFUSE_INTERNAL);
        return;
    }

    enum refusal best = REFUSE_NO_BOOKING;
    for (int i = 0; i < n; i++) {
        const struct booking *b = &cand[i];
        int64_t opens = b->start_ms - cfg->pickup_window_ms;
        int64_t closes = b->start_ms + cfg->late_tolerance_ms;
        if (closes > b->end_ms)
            closes = b->end_ms;

        if (now < opens || now >= closes) {
            if (d->next_start_ms == 0 && b->start_ms > now)
                d->next_start_ms = b->start_ms;
            /* Too early today or too late for this slot: tell the trainer so,
             * rather than "no booking". */
            if (best == REFUSE_NO_BOOKING && b->start_ms - now < DAY_MS) {
                best = REFUSE_OUTSIDE_WINDOW;
                d->compartment = b->compartment;
            }
            continue;
        }
        const struct comp_view *c = find_comp(comps, ncomps, b->compartment);
        enum refusal why = REFUSE_NONE;
        if (!c || c->out_of_service)
            why = REFUSE_OUT_OF_SERVICE;
        else if (c->busy)
            why = REFUSE_BUSY;
        else if (!c->key_present)
            why = REFUSE_KEY_ALREADY_OUT;
        else if (stale(b->source, b->synced_at_ms,
                       feed_confirmed(store, STORE_META_CONFIRMED_RESERVATIONS), cfg, now))
            why = REFUSE_DATA_TOO_OLD;

        if (why == REFUSE_NONE) {
            d->action = POLICY_PICKUP;
            d->reason = REFUSE_NONE;
            d->compartment = b->compartment;
            d->have_booking = true;
            d->booking = *b;
            snprintf(d->club_id, sizeof(d->club_id), "%s", b->club_id);
            return;
        }
        /* A bookable slot whose compartment cannot serve it explains the refusal
         * better than a slot later in the day. */
        if (best == REFUSE_NO_BOOKING || best == REFUSE_OUTSIDE_WINDOW) {
            best = why;
            d->compartment = b->compartment;
        }
    }
    refuse(d, best);
}

void policy_decide(const struct config *cfg, struct store *store, const uint8_t uid_hmac[32],
                   const struct card_read *card, const struct comp_view *comps, int ncomps,
                   int64_t now, struct decision *d)
{
    memset(d, 0, sizeof(*d));
    d->action = POLICY_REFUSE;

    /* A DESFire card that cannot prove its key is a clone of a UID (or a card of
     * another site); a UID-only card cannot prove anything. */
    if (cfg->auth == CARD_AUTH_DESFIRE && card->kind == CARD_KIND_DESFIRE && !card->authenticated) {
        refuse(d, REFUSE_CARD_AUTH_FAILED);
        return;
    }
    if (cfg->auth == CARD_AUTH_DESFIRE && card->kind != CARD_KIND_DESFIRE) {
        refuse(d, REFUSE_INSECURE_CARD);
        return;
    }

    int rc = store_credential_by_hmac(store, uid_hmac, &d->credential);
    if (rc == STORE_NOTFOUND) {
        refuse(d, REFUSE_UNKNOWN_CARD);
        return;
    }
    if (rc != STORE_OK) {
        refuse(d, REFUSE_INTERNAL);
        return;
    }
    rc = store_member_get(store, d->credential.member_id, &d->member);
    if (rc != STORE_OK) {
        refuse(d, rc == STORE_NOTFOUND ? REFUSE_UNKNOWN_CARD : REFUSE_INTERNAL);
        return;
    }
    d->have_credential = true;

    /* A credential from the city says which clubs it may hold keys for; a local
     * one holds them for every club of its member. */
    char clubs[MAX_CLUBS][STORE_ID_LEN];
    bool scoped;
    int nclubs = store_credential_clubs(store, d->credential.id, clubs, MAX_CLUBS, &scoped);
    if (nclubs >= 0 && !scoped)
        nclubs = store_member_clubs(store, d->member.id, clubs, MAX_CLUBS);
    if (nclubs < 0) {
        refuse(d, REFUSE_INTERNAL);
        return;
    }

    /* Bringing a key back is always welcome, even on a card that has since been
     * revoked or has expired: the compartment it opens is the empty one. */
    const struct comp_view *held = held_key(comps, ncomps, d->member.id, clubs, nclubs);
    if (held) {
        d->compartment = held->number;
        snprintf(d->club_id, sizeof(d->club_id), "%s", held->holder_club);
        if (held->out_of_service) {
            refuse(d, REFUSE_OUT_OF_SERVICE);
        } else if (held->busy) {
            refuse(d, REFUSE_BUSY);
        } else {
            d->action = POLICY_RETURN;
            d->reason = REFUSE_NONE;
        }
        return;
    }

    const struct credential *cr = &d->credential;
    if (cr->status == CRED_REVOKED) {
        refuse(d, REFUSE_REVOKED);
        return;
    }
    if ((cr->valid_from_ms && now < cr->valid_from_ms) ||
        (cr->valid_until_ms && now >= cr->valid_until_ms)) {
        refuse(d, REFUSE_EXPIRED);
        return;
    }
    if (stale(cr->source, cr->synced_at_ms, feed_confirmed(store, STORE_META_CONFIRMED_CREDENTIALS),
              cfg, now)) {
        refuse(d, REFUSE_DATA_TOO_OLD);
        return;
    }
    if (nclubs == 0) {
        refuse(d, REFUSE_NO_BOOKING);
        return;
    }
    decide_pickup(cfg, store, clubs, nclubs, comps, ncomps, now, d);
}

/* ------------------------------------------------------------ card + PIN */

#define PIN_SALT_LEN 16
#define PIN_OUT_LEN  32

bool policy_pin_valid(const char *s)
{
    size_t n = 0;
    for (; s[n] != '\0'; n++) {
        if (s[n] < '0' || s[n] > '9')
            return false;
    }
    return n >= 4 && n <= 8;
}

static bool pbkdf2(const char *pin, const uint8_t *salt, size_t saltlen, int iter,
                   uint8_t out[PIN_OUT_LEN])
{
    return PKCS5_PBKDF2_HMAC(pin, (int)strlen(pin), salt, (int)saltlen, iter, EVP_sha256(),
                             PIN_OUT_LEN, out) == 1;
}

bool policy_pin_hash(const char *pin, char *out, size_t outlen)
{
    uint8_t salt[PIN_SALT_LEN], dk[PIN_OUT_LEN];
    char salt64[4 * ((PIN_SALT_LEN + 2) / 3) + 1], dk64[4 * ((PIN_OUT_LEN + 2) / 3) + 1];

    if (!policy_pin_valid(pin) || RAND_bytes(salt, sizeof(salt)) != 1 ||
        !pbkdf2(pin, salt, sizeof(salt), POLICY_PIN_ITER, dk))
        return false;
    EVP_EncodeBlock((unsigned char *)salt64, salt, sizeof(salt));
    EVP_EncodeBlock((unsigned char *)dk64, dk, sizeof(dk));
    OPENSSL_cleanse(dk, sizeof(dk));
    int n = snprintf(out, outlen, "pbkdf2-sha256$%d$%s$%s", POLICY_PIN_ITER, salt64, dk64);
    return n > 0 && (size_t)n < outlen;
}

/* Base64 of exactly want bytes; false otherwise. */
static bool unb64(const char *in, size_t inlen, uint8_t *out, size_t want)
{
    uint8_t buf[64];
    if (inlen == 0 || inlen % 4 != 0 || inlen / 4 * 3 > sizeof(buf))
        return false;
    int n = EVP_DecodeBlock(buf, (const unsigned char *)in, (int)inlen);
    if (n < 0)
        return false;
    size_t pad = (in[inlen - 1] == '=') + (in[inlen - 2] == '=');
    if ((size_t)n - pad != want)
        return false;
    memcpy(out, buf, want);
    return true;
}

bool policy_pin_verify(const char *stored, const char *pin)
{
    static const char prefix[] = "pbkdf2-sha256$";
    uint8_t salt[PIN_SALT_LEN], want[PIN_OUT_LEN], got[PIN_OUT_LEN];

    if (stored == NULL || pin == NULL || !policy_pin_valid(pin) ||
        strncmp(stored, prefix, sizeof(prefix) - 1) != 0)
        return false;
    const char *p = stored + sizeof(prefix) - 1;
    char *end;
    long iter = strtol(p, &end, 10);
    if (*end != '$' || iter < 1000 || iter > 10000000)
        return false;
    const char *s = end + 1, *d = strchr(s, '$');
    if (d == NULL || !unb64(s, (size_t)(d - s), salt, sizeof(salt)) ||
        !unb64(d + 1, strlen(d + 1), want, sizeof(want)))
        return false;
    if (!pbkdf2(pin, salt, sizeof(salt), (int)iter, got))
        return false;
    bool ok = CRYPTO_memcmp(got, want, sizeof(got)) == 0;
    OPENSSL_cleanse(got, sizeof(got));
    return ok;
}

int64_t policy_pin_lockout_ms(int n)
{
    const int64_t max = INT64_C(3600) * 1000;
    if (n < 0)
        n = 0;
    if (n > 6)
        return max;
    int64_t ms = (int64_t)60 * 1000 << n;
    return ms < max ? ms : max;
}

bool policy_pin_required(const struct config *cfg, int compartment)
{
    const struct compartment_cfg *c = config_compartment(cfg, compartment);
    return cfg->pin_required || (c != NULL && c->pin);
}
