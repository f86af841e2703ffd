/*
 * desfire.h - an emulated MIFARE DESFire EV1 card: applications, keys, standard data
 * files, legacy (0x0A) and EV1 (0x1A, 0xAA) authentication and secure messaging.
 *
 * The card takes native commands or native commands wrapped in ISO 7816-4 APDUs
 * (90 CMD 00 00 [Lc data] 00 -> data 91 status), as libfreefare 0.4.0 sends them.
 */
#ifndef PN532_DESFIRE_H
#define PN532_DESFIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DESFIRE_UID_LEN 7
/* Largest APDU answer: a 59-byte frame plus SW1 SW2 (reads are chunked). */
#define DESFIRE_MAX_RESPONSE 64

struct desfire;

/* A factory-fresh card: no applications, PICC master key DES all zeros, key
 * settings 0x0F. NULL on allocation failure. Free with desfire_free (NULL is fine). */
struct desfire *desfire_new(const uint8_t uid[DESFIRE_UID_LEN]);
void desfire_free(struct desfire *df);

/* Applies one configuration token (see the interface comment in pn532_emu.c:
 * picc-key=, picc-settings=, app=, crypto=, settings=, key=, keys=, file=).
 * Returns 0, or -1 with a message in err. */
int desfire_configure(struct desfire *df, const char *token, char *err, size_t errlen);

/* The card lost power or was deselected: authentication, selection and multi-frame
 * state are gone; applications, keys and files stay. */
void desfire_reset(struct desfire *df);

/* Processes one APDU; writes the answer to out (DESFIRE_MAX_RESPONSE bytes) and
 * returns its length (0: the card does not answer). */
size_t desfire_apdu(struct desfire *df, const uint8_t *in, size_t len, uint8_t *out);

/* Fault injection: the card leaves the field right after answering the first step of
 * the next authentication. desfire_leaving() reports (once) that this moment came. */
void desfire_pull_during_auth(struct desfire *df);
bool desfire_leaving(struct desfire *df);

const uint8_t *desfire_uid(const struct desfire *df);

#endif
