/*
 * card.c - ISO 14443-A activation, halt and the UID-only card's answers; DESFire
 * commands go to desfire.c.
 */
#include "tests/pn532/card.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/pn532/desfire.h"
#include "tests/pn532/emu.h"

/* DESFire EV1 ATS: TL=06, T0=75 (FSCI 64 bytes, TA TB TC present), TA=77, TB=81,
 * TC=02, historical byte 80. libfreefare keys on 75 77 81 02. */
static const uint8_t desfire_ats[] = {0x06, 0x75, 0x77, 0x81, 0x02, 0x80};

static void set_uid_pages(struct card *c)
{
    memset(c->pages, 0, sizeof(c->pages));
    if (c->uid_len == 7) {
        const uint8_t *u = c->uid;
        c->pages[0][0] = u[0];
        c->pages[0][1] = u[1];
        c->pages[0][2] = u[2];
        c->pages[0][3] = (uint8_t)(0x88 ^ u[0] ^ u[1] ^ u[2]);
        memcpy(c->pages[1], u + 3, 4);
        c->pages[2][0] = (uint8_t)(u[3] ^ u[4] ^ u[5] ^ u[6]);
        c->pages[2][1] = 0x48;
    } else {
        memcpy(c->pages[0], c->uid, c->uid_len < 4 ? c->uid_len : 4);
    }
}

static int parse_byte_opt(const char *arg, const char *name, uint8_t *out, size_t n)
{
    size_t l = strlen(name);
    if (strncmp(arg, name, l) != 0 || arg[l] != '=')
        return 0;
    return emu_parse_hex(arg + l + 1, out, n) == (int)n ? 1 : -1;
}

/* Splits the contents of an @FILE into tokens and applies them. */
static int configure_from_file(struct card *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    char line[20000];
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof(line), f)) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        for (char *save = NULL, *tok = strtok_r(line, " \t\r\n", &save); tok && rc == 0;
             tok = strtok_r(NULL, " \t\r\n", &save)) {
            if (strcmp(tok, "random-uid") == 0)
                c->random_uid = true;
            else
                rc = desfire_configure(c->df, tok, err, errlen);
        }
    }
    fclose(f);
    return rc;
}

struct card *card_parse(int argc, char **argv, char *err, size_t errlen)
{
    if (argc < 2) {
        snprintf(err, errlen, "usage: card uid HEX | card desfire HEX [options]");
        return NULL;
    }
    struct card *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int n = emu_parse_hex(argv[1], c->uid, CARD_MAX_UID);
    if (strcmp(argv[0], "uid") == 0) {
        if (n != 4 && n != 7 && n != 10) {
            snprintf(err, errlen, "UID is 4, 7 or 10 bytes of hex");
            goto fail;
        }
        c->uid_len = (size_t)n;
        /* MIFARE Classic 1K for 4 bytes, Ultralight for 7 and 10 */
        c->atqa[0] = 0x00;
        c->atqa[1] = n == 4 ? 0x04 : 0x44;
        c->sak = n == 4 ? 0x08 : 0x00;
        for (int i = 2; i < argc; i++) {
            int r = parse_byte_opt(argv[i], "atqa", c->atqa, 2);
            if (r == 0)
                r = parse_byte_opt(argv[i], "sak", &c->sak, 1);
            if (r <= 0) {
                snprintf(err, errlen, "bad option '%s' (atqa=HHHH, sak=HH)", argv[i]);
                goto fail;
            }
        }
        if (c->sak & 0x20) {
            snprintf(err, errlen, "a UID-only card cannot claim ISO 14443-4 (SAK bit 0x20)");
            goto fail;
        }
        set_uid_pages(c);
    } else if (strcmp(argv[0], "desfire") == 0) {
        if (n != DESFIRE_UID_LEN) {
            snprintf(err, errlen, "a DESFire UID is 7 bytes of hex");
            goto fail;
        }
        c->desfire = true;
        c->uid_len = DESFIRE_UID_LEN;
        c->atqa[0] = 0x03;
        c->atqa[1] = 0x44;
        c->sak = 0x20;
        memcpy(c->ats, desfire_ats, sizeof(desfire_ats));
        c->ats_len = sizeof(desfire_ats);
        c->df = desfire_new(c->uid);
        if (!c->df) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        for (int i = 2; i < argc; i++) {
            int rc;
            if (strcmp(argv[i], "random-uid") == 0) {
                c->random_uid = true;
                rc = 0;
            } else if (argv[i][0] == '@') {
                rc = configure_from_file(c, argv[i] + 1, err, errlen);
            } else {
                rc = desfire_configure(c->df, argv[i], err, errlen);
            }
            if (rc < 0)
                goto fail;
        }
        if (c->random_uid) {
            c->atqa[1] = 0x04;
            c->uid_len = 4;
        }
    } else {
        snprintf(err, errlen, "card kinds: uid, desfire");
        goto fail;
    }
    return c;
fail:
    card_free(c);
    return NULL;
}

void card_free(struct card *c)
{
    if (!c)
        return;
    desfire_free(c->df);
    free(c);
}

const char *card_kind(const struct card *c)
{
    return c->desfire ? "desfire" : "uid";
}

void card_power_up(struct card *c)
{
    c->state = CARD_IDLE;
    c->iso_dep = false;
    c->block_no = 0;
    if (c->random_uid) {
        c->uid[0] = 0x08;
        emu_random(c->uid + 1, 3);
    }
    if (c->df)
        desfire_reset(c->df);
}

void card_power_down(struct card *c)
{
    c->state = CARD_IDLE;
    c->iso_dep = false;
    if (c->df)
        desfire_reset(c->df);
}

bool card_matches(const struct card *c, const uint8_t *init, size_t len)
{
    uint8_t uid[CARD_MAX_UID];
    size_t n = 0;

    if (len == 0)
        return true;
    /* strip the cascade tags libnfc's iso14443_cascade_uid() adds */
    if (len == 4) {
        memcpy(uid, init, 4);
        n = 4;
    } else if (len == 8 && init[0] == 0x88) {
        memcpy(uid, init + 1, 7);
        n = 7;
    } else if (len == 12 && init[0] == 0x88 && init[4] == 0x88) {
        memcpy(uid, init + 1, 3);
        memcpy(uid + 3, init + 5, 7);
        n = 10;
    } else {
        return false;
    }
    return n == c->uid_len && memcmp(uid, c->uid, n) == 0;
}

size_t card_activate(struct card *c, bool auto_rats, uint8_t *out)
{
    size_t n = 0;
    if (c->df)
        desfire_reset(c->df);
    c->state = CARD_ACTIVE;
    c->iso_dep = auto_rats && (c->sak & 0x20) && c->ats_len;
    c->block_no = 0;
    out[n++] = c->atqa[0];
    out[n++] = c->atqa[1];
    out[n++] = c->sak;
    out[n++] = (uint8_t)c->uid_len;
    memcpy(out + n, c->uid, c->uid_len);
    n += c->uid_len;
    if (c->iso_dep) {
        memcpy(out + n, c->ats, c->ats_len);
        n += c->ats_len;
    }
    return n;
}

void card_halt(struct card *c)
{
    c->state = CARD_HALT;
    c->iso_dep = false;
    if (c->df)
        desfire_reset(c->df);
}

/* MIFARE Ultralight / Classic commands a UID-only card knows. */
static uint8_t mifare_command(struct card *c, const uint8_t *in, size_t len, uint8_t *out,
                              size_t *outlen)
{
    bool ultralight = c->sak == 0x00;
    *outlen = 0;
    if (len == 0)
        return 0x01;
    switch (in[0]) {
    case 0x30: /* READ: four pages */
        if (!ultralight || len != 2 || in[1] >= 16)
            return 0x01;
        for (int i = 0; i < 4; i++)
            memcpy(out + 4 * i, c->pages[(in[1] + i) % 16], 4);
        *outlen = 16;
        return 0x00;
    case 0xA2: /* WRITE one page */
        if (!ultralight || len != 6 || in[1] < 4 || in[1] >= 16)
            return 0x01;
        memcpy(c->pages[in[1]], in + 2, 4);
        return 0x00;
    case 0x60: /* MIFARE Classic AUTH: Crypto1 is not emulated */
    case 0x61:
        return ultralight ? 0x01 : 0x14;
    case 0x50: /* HLTA */
        card_halt(c);
        return 0x01;
    default:
        return 0x01;
    }
}

static uint8_t desfire_exchange(struct card *c, const uint8_t *in, size_t len, uint8_t *out,
                                size_t *outlen)
{
    *outlen = desfire_apdu(c->df, in, len, out);
    if (desfire_leaving(c->df)) {
        /* pull-during-auth: the answer still went out, then the card is gone */
        c->in_field = false;
        card_power_down(c);
        emu_event("removed pull-during-auth");
    }
    return *outlen ? 0x00 : 0x01;
}

uint8_t card_exchange(struct card *c, const uint8_t *in, size_t len, uint8_t *out, size_t *outlen)
{
    *outlen = 0;
    if (!c->in_field || c->state != CARD_ACTIVE)
        return 0x01;
    if (c->iso_dep) {
        c->block_no ^= 1;
        return desfire_exchange(c, in, len, out, outlen);
    }
    if (c->desfire)
        return 0x01; /* a DESFire without RATS does not know MIFARE commands */
    return mifare_command(c, in, len, out, outlen);
}

uint8_t card_thru(struct card *c, const uint8_t *in, size_t len, uint8_t *out, size_t *outlen)
{
    *outlen = 0;
    if (!c->in_field || c->state != CARD_ACTIVE || len == 0)
        return 0x01;
    if (!c->iso_dep)
        return mifare_command(c, in, len, out, outlen);

    uint8_t pcb = in[0];
    if ((pcb & 0xF6) == 0xB2) { /* R(NAK) without CID: answer R(ACK) */
        out[0] = (uint8_t)(0xA2 | c->block_no);
        *outlen = 1;
        return 0x00;
    }
    if ((pcb & 0xF6) == 0xA2) { /* R(ACK): nothing to continue */
        out[0] = (uint8_t)(0xA2 | c->block_no);
        *outlen = 1;
        return 0x00;
    }
    if (pcb == 0xC2) { /* S(DESELECT) */
        out[0] = 0xC2;
        *outlen = 1;
        card_halt(c);
        return 0x00;
    }
    if ((pcb & 0xE6) == 0x02 && !(pcb & 0x18)) { /* I-block, no CID, no NAD, no chaining */
        size_t n;
        uint8_t st = desfire_exchange(c, in + 1, len - 1, out + 1, &n);
        if (st)
            return st;
        c->block_no = pcb & 1;
        out[0] = pcb;
        *outlen = n + 1;
        return 0x00;
    }
    return 0x01;
}
