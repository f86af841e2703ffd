/*
 * card.h - card protocols: what a tapped card proves.
 *
 * Called only from the reader backend's own thread (libnfc is not thread-safe);
 * every function works on an nfc_device whose target has just been selected. The
 * result is a struct card_read (hal.h): the card's real UID, which the daemon turns
 * into HMAC-SHA256(site key, UID) and then wipes, and whether the card proved
 * knowledge of its diversified key.
 *
 * Keys: the station's application on each card (AID from the config) is protected
 * by AES-128 keys diversified per card from the site's master keys with NXP AN10922,
 * so that a key read out of one card opens nothing else.
 *
 * Error convention: 0 on success, -errno style negative codes on failure
 * (-EACCES: authentication failed; -EIO: the card or reader stopped answering;
 * -EPROTO: the card answered something malformed; -ENOENT: no such application or
 * file on the card).
 */
#ifndef LOCKERD_CARD_H
#define LOCKERD_CARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nfc/nfc.h>

#include "hal/hal.h"

#define CARD_AES_KEY_LEN   16
#define CARD_CRED_FILE_LEN 32

/* The site's master keys (key_file), loaded once at start. */
struct card_keys {
    uint8_t app_master[CARD_AES_KEY_LEN];  /* diversified into each card's application
                                              master key (key 0): issuing only */
    uint8_t read_master[CARD_AES_KEY_LEN]; /* diversified into each card's read key
                                              (key 1): used on every tap */
    uint32_t aid;                          /* application id from the config */
};

/* Loads the key file (format documented in card_desfire.c and docs/cards.md).
 * Refuses a file with any group or other permission bit (-EACCES), a symlink, and
 * aid 0 or above FFFFFF (-EINVAL). Returns 0 or -errno with a message in err. */
int card_keys_load(const char *path, uint32_t aid, struct card_keys *out, char *err, size_t errlen);
/* Creates a key file with fresh random keys (mode 0600) unless it exists.
 * Returns 0 (created or already there) or -errno with a message in err. */
int card_keys_create(const char *path, char *err, size_t errlen);

/* What a card in the field proves. target is the one just found by polling
 * (nfc_initiator_poll_target); for DESFire the card is re-selected by libfreefare.
 * Fills out: kind (UID or DESFIRE), authenticated (DESFire: diversified AES auth
 * and credential file check passed), uid (DESFire: the real UID read after
 * authentication). Returns 0 when out is meaningful (also for a failed
 * authentication: kind DESFIRE, authenticated false), -EIO when the card or reader
 * stopped answering mid-way (nothing is reported to the daemon then), -EPROTO for a
 * target that is not a plausible ISO 14443-A card (no UID, UID longer than 10 bytes).
 * Unauthenticated results carry the anticollision UID. A DESFire card whose
 * anticollision UID is not a 7-byte NXP UID (random UID enabled) is reported as
 * DESFIRE, not authenticated, without talking to it.
 * Non-DESFire cards are not talked to (dev may be NULL for them). For DESFire the
 * polled target is deselected and selected again by libfreefare; on return the card
 * stays selected, so the caller watches it with nfc_initiator_target_is_present(dev,
 * NULL) (the polled target is no longer byte-equal to libnfc's current target).
 * libfreefare waits for every answer without a timeout: run this under a watchdog
 * that calls nfc_abort_command(); the abort surfaces here as -EIO. */
int card_read(nfc_device *dev, const nfc_target *target, const struct card_keys *keys,
              struct card_read *out);

/* Personalises a factory-default DESFire card (PICC master key = default): creates
 * the station's application with diversified AES keys, writes the credential file,
 * touches no other application. Fills out like card_read(). Returns 0, -EEXIST if
 * the application already exists, -EACCES if the PICC master key is not the
 * default, -EIO on communication failure, -ENOTSUP if the card is not a DESFire with
 * a 7-byte NXP UID, -EPROTO if the card answered something unexpected. Success
 * means the card was read back exactly as card_read() would (out->authenticated).
 * A card interrupted mid-way keeps a partial application and then reports -EEXIST. */
int card_issue(nfc_device *dev, const nfc_target *target, const struct card_keys *keys,
               struct card_read *out);

/* Parses the credential file read from a card (format in card_desfire.c and
 * docs/cards.md). Returns 0 if valid, -EPROTO if not. (Exposed for the fuzz target.) */
int card_parse_credential_file(const uint8_t *data, size_t len, uint32_t aid);
/* Builds the credential file card_issue() writes: aid as configured, issued in UNIX
 * seconds (not 0). Returns 0 or -EINVAL. (Exposed for tests and card emulators.) */
int card_make_credential_file(uint32_t aid, uint64_t issued, uint8_t out[CARD_CRED_FILE_LEN]);

/* The per-card key lockerd uses: AN10922 over UID (7 bytes) || AID (3 bytes, least
 * significant first, as DESFire sends it) || "lockerd". Changing this input
 * invalidates every card already issued. Returns 0 or -EINVAL. (Exposed for tests
 * and card emulators.) */
int card_diversify_key(const uint8_t master[CARD_AES_KEY_LEN], const uint8_t uid[7], uint32_t aid,
                       uint8_t out[CARD_AES_KEY_LEN]);

/* AN10922 AES-128 diversification: out = CMAC-like MAC over 0x01 || m (m at most 31
 * bytes: UID || AID || system identifier), padded to 32 bytes as the application
 * note prescribes. Returns 0 or -EINVAL. */
int card_an10922_aes128(const uint8_t master[CARD_AES_KEY_LEN], const uint8_t *m, size_t mlen,
                        uint8_t out[CARD_AES_KEY_LEN]);

#endif
