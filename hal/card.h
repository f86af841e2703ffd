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

#include "hal/hal.h"

#define CARD_AES_KEY_LEN 16

/* AN10922 AES-128 diversification: out = CMAC-like MAC over 0x01 || m (m at most 31
 * bytes: UID || AID || system identifier), padded to 32 bytes as the application
 * note prescribes. Returns 0 or -EINVAL. */
int card_an10922_aes128(const uint8_t master[CARD_AES_KEY_LEN], const uint8_t *m, size_t mlen,
                        uint8_t out[CARD_AES_KEY_LEN]);

#endif
