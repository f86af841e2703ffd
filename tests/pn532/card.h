/*
 * card.h - an emulated ISO/IEC 14443-A card as the PN532 sees it over RF: activation
 * data (ATQA, SAK, UID, ATS), halt/active state, and what it answers.
 *
 * Two kinds: a UID-only card (MIFARE Classic style, 4-byte UID, or Ultralight style,
 * 7-byte UID) and a MIFARE DESFire EV1 (desfire.c). The card object survives leaving
 * the field (its files and keys too), so a test can present the same card again.
 */
#ifndef PN532_CARD_H
#define PN532_CARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CARD_MAX_UID 10
/* Longest card answer the PN532 passes on (a DESFire frame). */
#define CARD_MAX_ANSWER 300

enum card_state {
    CARD_IDLE,   /* powered, waiting for REQA/WUPA */
    CARD_ACTIVE, /* selected (and ISO-DEP active if it sent its ATS) */
    CARD_HALT,   /* deselected: answers WUPA only */
};

struct desfire;

struct card {
    bool desfire;
    bool random_uid; /* DESFire: anticollision shows 08 xx xx xx, new at each power-up */
    uint8_t uid[CARD_MAX_UID];
    size_t uid_len;
    uint8_t atqa[2];
    uint8_t sak;
    uint8_t ats[16]; /* with its length byte TL; ats_len 0: no ATS */
    size_t ats_len;
    uint8_t pages[16][4]; /* UID-only card memory (Ultralight layout) */
    struct desfire *df;

    bool in_field;
    enum card_state state;
    bool iso_dep;
    uint8_t block_no; /* ISO-DEP block number */
};

/* Builds a card from a control command's arguments (after "card"):
 *   uid HEX [atqa=HHHH] [sak=HH]
 *   desfire HEX7 [random-uid] [desfire options...] [@FILE]
 * Returns NULL with a message in err. */
struct card *card_parse(int argc, char **argv, char *err, size_t errlen);
void card_free(struct card *c);

/* The field came up with the card in it (or the card entered a live field). */
void card_power_up(struct card *c);
/* The field went down or the card left it: all volatile state is gone. */
void card_power_down(struct card *c);

/* Anticollision: does the card answer a select with this (cascaded) UID?
 * An empty UID matches any card. */
bool card_matches(const struct card *c, const uint8_t *init, size_t len);

/* Activates the card (WUPA, anticollision, select; RATS if auto_rats and the card is
 * ISO 14443-4) and writes PN532 target data after Tg: ATQA SAK UIDlen UID [ATS].
 * Returns its length. */
size_t card_activate(struct card *c, bool auto_rats, uint8_t *out);

/* ISO-DEP S(DESELECT) / HLTA. */
void card_halt(struct card *c);

/* InDataExchange payload (an APDU for ISO-DEP cards, a MIFARE command otherwise).
 * Returns the PN532 status byte (0 ok, 0x01 timeout, 0x14 MIFARE auth error); the
 * answer goes to out/outlen. */
uint8_t card_exchange(struct card *c, const uint8_t *in, size_t len, uint8_t *out, size_t *outlen);

/* InCommunicateThru with ISO 14443-A framing and CRC handled by the chip: raw
 * ISO-DEP blocks (R(NAK) presence checks, I-blocks, S(DESELECT)) or MIFARE commands. */
uint8_t card_thru(struct card *c, const uint8_t *in, size_t len, uint8_t *out, size_t *outlen);

/* Name of the card kind for events: "uid" or "desfire". */
const char *card_kind(const struct card *c);

#endif
