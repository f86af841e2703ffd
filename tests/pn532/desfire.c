/*
 * desfire.c - the DESFire EV1 command set, as far as a key-locker station and its
 * issuing tool need it.
 *
 * Secure messaging follows what a real EV1 does and what libfreefare 0.4.0 checks:
 *   legacy session (Authenticate 0x0A, DES/2K3DES): plain traffic unprotected,
 *     enciphered data = CBC(IV 0) of data || CRC16 || zero padding, MAC = 4 bytes;
 *     a legacy PCD "deciphers" what it sends (df_legacy_receive undoes it).
 *   EV1 session (0x1A, 0xAA): one IV runs through the session; every command that
 *     is not enciphered is CMACed by both sides (the PCD does not send that CMAC),
 *     every successful answer carries CMAC(data || status)[0..8], enciphered data =
 *     CBC(IV) of data || CRC32(data || status) || zero padding.
 *   Any error status ends the session.
 * Continuation frames (AF) are neither CMACed nor part of the CMAC of the command;
 * the answer's CMAC covers the data of all frames.
 */
#include "tests/pn532/desfire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/pn532/dfcrypto.h"
#include "tests/pn532/emu.h"

#define MAX_APPS      28
#define MAX_FILES     32
#define MAX_KEYS      14
#define MAX_FILE_SIZE 8192
#define FRAME_DATA    59 /* data bytes per answer frame */
#define TOTAL_MEMORY  7936

enum status {
    ST_OK = 0x00,
    ST_OUT_OF_EEPROM = 0x0E,
    ST_ILLEGAL_COMMAND = 0x1C,
    ST_INTEGRITY = 0x1E,
    ST_NO_SUCH_KEY = 0x40,
    ST_LENGTH = 0x7E,
    ST_PERMISSION = 0x9D,
    ST_PARAMETER = 0x9E,
    ST_APP_NOT_FOUND = 0xA0,
    ST_AUTH = 0xAE,
    ST_MORE = 0xAF,
    ST_BOUNDARY = 0xBE,
    ST_COUNT = 0xCE,
    ST_DUPLICATE = 0xDE,
    ST_FILE_NOT_FOUND = 0xF0,
};

enum comm { COMM_PLAIN = 0, COMM_MAC = 1, COMM_ENC = 3 };

/* How an answer is protected. */
enum sm {
    SM_NONE,  /* never (authentication, select, continuation requests) */
    SM_PLAIN, /* EV1: CMAC appended */
    SM_MAC,   /* EV1: CMAC; legacy: 4-byte MAC */
    SM_ENC,   /* enciphered with CRC */
};

enum scheme { SCHEME_NONE, SCHEME_LEGACY, SCHEME_EV1 };

struct key {
    uint8_t data[DF_MAX_KEY];
    uint8_t aes_version;
};

struct file {
    bool used;
    uint8_t comm;
    uint16_t access;
    uint32_t size;
    uint8_t *data;
};

/* The PICC level is an application with AID 0 and one key. cipher is the family:
 * DF_DES stands for DES or 2K3DES (decided per key by whether the halves differ). */
struct app {
    bool used;
    uint32_t aid;
    uint8_t settings;
    uint8_t nkeys;
    enum df_cipher cipher;
    struct key keys[MAX_KEYS];
    struct file files[MAX_FILES];
};

struct desfire {
    uint8_t uid[DESFIRE_UID_LEN];
    struct app picc;
    struct app apps[MAX_APPS];
    struct app *cur;
    struct app *config_app; /* the app= being configured */

    enum scheme scheme;
    int auth_key; /* -1: not authenticated */
    struct df_session s;

    /* authentication between its two steps */
    bool auth_pending;
    uint8_t auth_cmd;
    int auth_keyno;
    enum df_cipher auth_cipher;
    uint8_t auth_key_data[DF_MAX_KEY];
    uint8_t rnd_b[16];
    uint8_t auth_iv[DF_MAX_BLOCK];
    size_t auth_len;

    /* an answer that continues after AF */
    uint8_t out[MAX_FILE_SIZE + 64];
    size_t out_len, out_pos;
    size_t chunks[3];
    int nchunks, chunk_idx;

    /* a WriteData that continues after AF */
    uint8_t in[MAX_FILE_SIZE + 64];
    size_t in_len, in_need;

    bool pull_during_auth, leaving;
};

struct reply {
    uint8_t data[MAX_FILE_SIZE + 64];
    size_t len;
    enum sm sm;
    size_t chunks[3]; /* fixed sizes of the first frames (GetVersion), 0 = default */
};

static uint32_t le24(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
}

static void put_le24(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
}

static void put_le32(uint8_t *p, uint32_t v)
{
    put_le24(p, v);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_le32(const uint8_t *p)
{
    return le24(p) | (uint32_t)p[3] << 24;
}

static size_t padded(size_t n, size_t bs)
{
    return (n == 0 || n % bs) ? (n / bs + 1) * bs : n;
}

/* The cipher a stored key of family fam really uses. */
static enum df_cipher key_cipher(enum df_cipher fam, const struct key *k)
{
    if (fam == DF_DES)
        return memcmp(k->data, k->data + 8, 8) == 0 ? DF_DES : DF_3DES;
    return fam;
}

static void end_session(struct desfire *df)
{
    df->scheme = SCHEME_NONE;
    df->auth_key = -1;
    df->auth_pending = false;
    memset(&df->s, 0, sizeof(df->s));
}

static void free_app(struct app *a)
{
    for (int i = 0; i < MAX_FILES; i++)
        free(a->files[i].data);
    memset(a, 0, sizeof(*a));
}

static void init_app(struct app *a, uint32_t aid, uint8_t settings, uint8_t nkeys,
                     enum df_cipher cipher)
{
    memset(a, 0, sizeof(*a));
    a->used = true;
    a->aid = aid;
    a->settings = settings;
    a->nkeys = nkeys;
    a->cipher = cipher;
}

struct desfire *desfire_new(const uint8_t uid[DESFIRE_UID_LEN])
{
    struct desfire *df = calloc(1, sizeof(*df));
    if (!df)
        return NULL;
    memcpy(df->uid, uid, DESFIRE_UID_LEN);
    init_app(&df->picc, 0, 0x0F, 1, DF_DES);
    df->cur = &df->picc;
    end_session(df);
    return df;
}

void desfire_free(struct desfire *df)
{
    if (!df)
        return;
    for (int i = 0; i < MAX_APPS; i++)
        free_app(&df->apps[i]);
    free(df);
}

const uint8_t *desfire_uid(const struct desfire *df)
{
    return df->uid;
}

void desfire_reset(struct desfire *df)
{
    end_session(df);
    df->cur = &df->picc;
    df->out_len = df->out_pos = 0;
    df->in_len = df->in_need = 0;
}

void desfire_pull_during_auth(struct desfire *df)
{
    df->pull_during_auth = true;
}

bool desfire_leaving(struct desfire *df)
{
    bool l = df->leaving;
    df->leaving = false;
    return l;
}

static struct app *find_app(struct desfire *df, uint32_t aid)
{
    if (aid == 0)
        return &df->picc;
    for (int i = 0; i < MAX_APPS; i++)
        if (df->apps[i].used && df->apps[i].aid == aid)
            return &df->apps[i];
    return NULL;
}

static size_t used_memory(const struct desfire *df)
{
    size_t n = 0;
    for (int i = 0; i < MAX_APPS; i++) {
        if (!df->apps[i].used)
            continue;
        n += 32 * ((df->apps[i].nkeys * 16 + 31) / 32) + 64;
        for (int f = 0; f < MAX_FILES; f++)
            if (df->apps[i].files[f].used)
                n += 32 * ((df->apps[i].files[f].size + 31) / 32);
    }
    return n;
}

/* ---- configuration ---- */

static int parse_key(const char *spec, enum df_cipher *fam, struct key *k, char *err, size_t errlen)
{
    char type[8];
    const char *colon = strchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof(type)) {
        snprintf(err, errlen, "key '%s': want TYPE:HEX", spec);
        return -1;
    }
    memcpy(type, spec, (size_t)(colon - spec));
    type[colon - spec] = '\0';

    char hex[2 * DF_MAX_KEY + 1];
    const char *ver = strchr(colon + 1, ':');
    size_t hexlen = ver ? (size_t)(ver - colon - 1) : strlen(colon + 1);
    if (hexlen >= sizeof(hex)) {
        snprintf(err, errlen, "key '%s': too long", spec);
        return -1;
    }
    memcpy(hex, colon + 1, hexlen);
    hex[hexlen] = '\0';

    uint8_t raw[DF_MAX_KEY];
    int n = emu_parse_hex(hex, raw, sizeof(raw));
    memset(k, 0, sizeof(*k));
    if (strcmp(type, "des") == 0 && n == 8) {
        *fam = DF_DES;
        memcpy(k->data, raw, 8);
        memcpy(k->data + 8, raw, 8);
    } else if ((strcmp(type, "3des") == 0 || strcmp(type, "2k3des") == 0) && n == 16) {
        *fam = DF_DES;
        memcpy(k->data, raw, 16);
    } else if (strcmp(type, "3k3des") == 0 && n == 24) {
        *fam = DF_3K3DES;
        memcpy(k->data, raw, 24);
    } else if (strcmp(type, "aes") == 0 && n == 16) {
        *fam = DF_AES;
        memcpy(k->data, raw, 16);
    } else {
        snprintf(err, errlen,
                 "key '%s': want des:16hex, 3des:32hex, 3k3des:48hex or aes:32hex[:VER]", spec);
        return -1;
    }
    if (ver) {
        char *end;
        unsigned long v = strtoul(ver + 1, &end, 16);
        if (*end || v > 0xFF || *fam != DF_AES) {
            snprintf(err, errlen, "key '%s': version is one hex byte, AES keys only", spec);
            return -1;
        }
        k->aes_version = (uint8_t)v;
    }
    return 0;
}

static int parse_comm(const char *s, uint8_t *comm)
{
    if (strcmp(s, "plain") == 0 || strcmp(s, "0") == 0)
        *comm = COMM_PLAIN;
    else if (strcmp(s, "mac") == 0 || strcmp(s, "1") == 0)
        *comm = COMM_MAC;
    else if (strcmp(s, "enc") == 0 || strcmp(s, "3") == 0)
        *comm = COMM_ENC;
    else
        return -1;
    return 0;
}

/* file=NO:COMM:ACCESS:DATA  or  file=NO:COMM:ACCESS:size=N */
static int configure_file(struct app *a, const char *spec, char *err, size_t errlen)
{
    char buf[2 * MAX_FILE_SIZE + 64];
    if (strlen(spec) >= sizeof(buf)) {
        snprintf(err, errlen, "file: too long");
        return -1;
    }
    strcpy(buf, spec);
    char *parts[4];
    char *p = buf;
    for (int i = 0; i < 4; i++) {
        parts[i] = p;
        char *c = i < 3 ? strchr(p, ':') : NULL;
        if (i < 3 && !c) {
            snprintf(err, errlen, "file '%s': want NO:COMM:ACCESS:DATA", spec);
            return -1;
        }
        if (c) {
            *c = '\0';
            p = c + 1;
        }
    }
    char *end, *aend;
    unsigned long no = strtoul(parts[0], &end, 10);
    unsigned long access = strtoul(parts[2], &aend, 16);
    uint8_t comm;
    if (*parts[0] == '\0' || *end || no >= MAX_FILES || parse_comm(parts[1], &comm) < 0 ||
        strlen(parts[2]) != 4 || *aend) {
        snprintf(err, errlen, "file '%s': NO 0-31, COMM plain|mac|enc, ACCESS 4 hex digits", spec);
        return -1;
    }
    struct file *f = &a->files[no];
    if (f->used) {
        snprintf(err, errlen, "file %lu defined twice", no);
        return -1;
    }
    uint8_t *data = calloc(1, MAX_FILE_SIZE);
    if (!data) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    long size;
    if (strncmp(parts[3], "size=", 5) == 0) {
        size = strtol(parts[3] + 5, &end, 10);
        if (*end || size < 1 || size > MAX_FILE_SIZE)
            size = -1;
    } else {
        size = emu_parse_hex(parts[3], data, MAX_FILE_SIZE);
        if (size == 0)
            size = -1;
    }
    if (size < 0) {
        free(data);
        snprintf(err, errlen, "file '%s': DATA is hex (1-%d bytes) or size=N", spec, MAX_FILE_SIZE);
        return -1;
    }
    f->used = true;
    f->comm = comm;
    f->access = (uint16_t)access;
    f->size = (uint32_t)size;
    f->data = data;
    return 0;
}

static bool opt_is(const char *token, size_t nlen, const char *name)
{
    return nlen == strlen(name) && strncmp(token, name, nlen) == 0;
}

int desfire_configure(struct desfire *df, const char *token, char *err, size_t errlen)
{
    const char *eq = strchr(token, '=');
    if (!eq) {
        snprintf(err, errlen, "unknown option '%s'", token);
        return -1;
    }
    size_t nlen = (size_t)(eq - token);
    const char *val = eq + 1;
    char *end;
    struct app *a = df->config_app;

    if (opt_is(token, nlen, "picc-key")) {
        struct key k;
        enum df_cipher fam;
        if (parse_key(val, &fam, &k, err, errlen) < 0)
            return -1;
        df->picc.cipher = fam;
        df->picc.keys[0] = k;
        return 0;
    }
    if (opt_is(token, nlen, "picc-settings")) {
        unsigned long v = strtoul(val, &end, 16);
        if (*end || v > 0xFF) {
            snprintf(err, errlen, "picc-settings: one hex byte");
            return -1;
        }
        df->picc.settings = (uint8_t)v;
        return 0;
    }
    if (opt_is(token, nlen, "app")) {
        unsigned long aid = strtoul(val, &end, 16);
        if (*end || strlen(val) != 6 || aid == 0 || aid > 0xFFFFFF) {
            snprintf(err, errlen, "app: AID is 6 hex digits, not 000000");
            return -1;
        }
        if (find_app(df, (uint32_t)aid)) {
            snprintf(err, errlen, "app %06lX defined twice", aid);
            return -1;
        }
        for (int i = 0; i < MAX_APPS; i++) {
            if (!df->apps[i].used) {
                init_app(&df->apps[i], (uint32_t)aid, 0x0F, 0, DF_AES);
                df->config_app = &df->apps[i];
                return 0;
            }
        }
        snprintf(err, errlen, "more than %d applications", MAX_APPS);
        return -1;
    }
    if (!a) {
        snprintf(err, errlen, "'%s' needs an app= before it", token);
        return -1;
    }
    if (opt_is(token, nlen, "crypto")) {
        if (a->nkeys) {
            snprintf(err, errlen, "crypto= must come before key=");
            return -1;
        }
        if (strcmp(val, "aes") == 0)
            a->cipher = DF_AES;
        else if (strcmp(val, "des") == 0 || strcmp(val, "3des") == 0)
            a->cipher = DF_DES;
        else if (strcmp(val, "3k3des") == 0)
            a->cipher = DF_3K3DES;
        else {
            snprintf(err, errlen, "crypto: aes, des or 3k3des");
            return -1;
        }
        return 0;
    }
    if (opt_is(token, nlen, "settings")) {
        unsigned long v = strtoul(val, &end, 16);
        if (*end || v > 0xFF) {
            snprintf(err, errlen, "settings: one hex byte");
            return -1;
        }
        a->settings = (uint8_t)v;
        return 0;
    }
    if (opt_is(token, nlen, "key")) {
        struct key k;
        enum df_cipher fam;
        if (parse_key(val, &fam, &k, err, errlen) < 0)
            return -1;
        if (a->nkeys == 0)
            a->cipher = fam;
        if (fam != a->cipher) {
            snprintf(err, errlen, "all keys of an application have one type");
            return -1;
        }
        if (a->nkeys >= MAX_KEYS) {
            snprintf(err, errlen, "more than %d keys", MAX_KEYS);
            return -1;
        }
        a->keys[a->nkeys++] = k;
        return 0;
    }
    if (opt_is(token, nlen, "keys")) {
        long n = strtol(val, &end, 10);
        if (*end || n < 1 || n > MAX_KEYS || n < a->nkeys) {
            snprintf(err, errlen, "keys: 1-%d and not fewer than the key= given", MAX_KEYS);
            return -1;
        }
        a->nkeys = (uint8_t)n;
        return 0;
    }
    if (opt_is(token, nlen, "file")) {
        if (a->nkeys == 0)
            a->nkeys = 1;
        return configure_file(a, val, err, errlen);
    }
    snprintf(err, errlen, "unknown option '%s'", token);
    return -1;
}

/* ---- access rules ---- */

/* Communication mode of a file access, or -1 if not allowed now. */
static int file_comm(const struct desfire *df, const struct file *f, bool write)
{
    unsigned k = write ? (f->access >> 8) & 0xF : (f->access >> 12) & 0xF;
    unsigned rw = (f->access >> 4) & 0xF;
    if (df->auth_key >= 0 && ((unsigned)df->auth_key == k || (unsigned)df->auth_key == rw))
        return f->comm == COMM_MAC || f->comm == COMM_ENC ? f->comm : COMM_PLAIN;
    if (k == 0xE || rw == 0xE)
        return COMM_PLAIN;
    return -1;
}

static bool master_authed(const struct desfire *df)
{
    return df->auth_key == 0;
}

static enum sm comm_sm(int comm)
{
    return comm == COMM_ENC ? SM_ENC : comm == COMM_MAC ? SM_MAC : SM_PLAIN;
}

/* ---- commands ---- */

static uint8_t cmd_auth(struct desfire *df, const uint8_t *cmd, size_t len, struct reply *r)
{
    if (len != 2)
        return ST_LENGTH;
    end_session(df);
    int keyno = cmd[1];
    if (keyno >= df->cur->nkeys)
        return ST_NO_SUCH_KEY;
    const struct key *k = &df->cur->keys[keyno];
    enum df_cipher c = key_cipher(df->cur->cipher, k);
    bool ok = (cmd[0] == 0x0A && (c == DF_DES || c == DF_3DES)) ||
              (cmd[0] == 0x1A && c != DF_AES) || (cmd[0] == 0xAA && c == DF_AES);
    if (!ok) {
        emu_event("auth fail %d wrong-method", keyno);
        return ST_AUTH;
    }
    df->auth_pending = true;
    df->auth_cmd = cmd[0];
    df->auth_keyno = keyno;
    df->auth_cipher = c;
    memcpy(df->auth_key_data, k->data, DF_MAX_KEY);
    df->auth_len = (c == DF_DES || c == DF_3DES) ? 8 : 16;
    emu_random(df->rnd_b, df->auth_len);
    memset(df->auth_iv, 0, sizeof(df->auth_iv));
    memcpy(r->data, df->rnd_b, df->auth_len);
    df_cbc_encrypt(c, k->data, df->auth_iv, r->data, df->auth_len);
    r->len = df->auth_len;
    r->sm = SM_NONE;
    if (df->pull_during_auth) {
        df->pull_during_auth = false;
        df->leaving = true;
    }
    return ST_MORE;
}

static void derive_session_key(enum df_cipher c, const uint8_t *a, const uint8_t *b, uint8_t *out)
{
    switch (c) {
    case DF_DES:
        memcpy(out, a, 4);
        memcpy(out + 4, b, 4);
        memcpy(out + 8, out, 8);
        break;
    case DF_3DES:
        memcpy(out, a, 4);
        memcpy(out + 4, b, 4);
        memcpy(out + 8, a + 4, 4);
        memcpy(out + 12, b + 4, 4);
        break;
    case DF_3K3DES:
        memcpy(out, a, 4);
        memcpy(out + 4, b, 4);
        memcpy(out + 8, a + 6, 4);
        memcpy(out + 12, b + 6, 4);
        memcpy(out + 16, a + 12, 4);
        memcpy(out + 20, b + 12, 4);
        break;
    case DF_AES:
        memcpy(out, a, 4);
        memcpy(out + 4, b, 4);
        memcpy(out + 8, a + 12, 4);
        memcpy(out + 12, b + 12, 4);
        break;
    }
}

static uint8_t auth_step2(struct desfire *df, const uint8_t *cmd, size_t len, struct reply *r)
{
    size_t rl = df->auth_len;
    enum df_cipher c = df->auth_cipher;
    bool legacy = df->auth_cmd == 0x0A;
    int keyno = df->auth_keyno;
    uint8_t tok[32], rol_b[16];

    df->auth_pending = false;
    if (len != 1 + 2 * rl) {
        emu_event("auth fail %d length", keyno);
        return ST_LENGTH;
    }
    memcpy(tok, cmd + 1, 2 * rl);
    if (legacy)
        df_legacy_receive(c, df->auth_key_data, tok, 2 * rl);
    else
        df_cbc_decrypt(c, df->auth_key_data, df->auth_iv, tok, 2 * rl);
    memcpy(rol_b, df->rnd_b, rl);
    df_rol(rol_b, rl);
    if (memcmp(tok + rl, rol_b, rl) != 0) {
        emu_event("auth fail %d", keyno);
        return ST_AUTH;
    }

    uint8_t rnd_a[16];
    memcpy(rnd_a, tok, rl);
    memcpy(r->data, rnd_a, rl);
    df_rol(r->data, rl);
    if (legacy)
        memset(df->auth_iv, 0, sizeof(df->auth_iv));
    df_cbc_encrypt(c, df->auth_key_data, df->auth_iv, r->data, rl);
    r->len = rl;
    r->sm = SM_NONE;

    uint8_t skey[DF_MAX_KEY];
    derive_session_key(c, rnd_a, df->rnd_b, skey);
    df_session_init(&df->s, c, skey);
    df->scheme = legacy ? SCHEME_LEGACY : SCHEME_EV1;
    df->auth_key = keyno;
    emu_event("auth ok %d %s %s", keyno, df_cipher_name(c), legacy ? "legacy" : "ev1");
    return ST_OK;
}

static uint8_t cmd_select(struct desfire *df, const uint8_t *cmd, size_t len, struct reply *r)
{
    if (len != 4)
        return ST_LENGTH;
    struct app *a = find_app(df, le24(cmd + 1));
    end_session(df);
    if (!a)
        return ST_APP_NOT_FOUND;
    df->cur = a;
    r->sm = SM_NONE;
    return ST_OK;
}

static uint8_t cmd_get_version(struct desfire *df, const uint8_t *cmd, size_t len, struct reply *r)
{
    static const uint8_t hw[7] = {0x04, 0x01, 0x01, 0x01, 0x00, 0x18, 0x05};
    static const uint8_t sw[7] = {0x04, 0x01, 0x01, 0x01, 0x04, 0x18, 0x05};
    static const uint8_t prod[7] = {0xBA, 0x5E, 0xBA, 0x11, 0x00, 0x20, 0x24};
    (void)cmd;
    if (len != 1)
        return ST_LENGTH;
    memcpy(r->data, hw, 7);
    memcpy(r->data + 7, sw, 7);
    memcpy(r->data + 14, df->uid, 7);
    memcpy(r->data + 21, prod, 7);
    r->len = 28;
    r->sm = SM_PLAIN;
    r->chunks[0] = 7;
    r->chunks[1] = 7;
    return ST_OK;
}

static uint8_t cmd_get_card_uid(struct desfire *df, const uint8_t *cmd, size_t len, struct reply *r)
{
    (void)cmd;
    if (len != 1)
        return ST_LENGTH;
    if (df->auth_key < 0)
        return ST_AUTH;
    memcpy(r->data, df->uid, 7);
    r->len = 7;
    r->sm = SM_ENC;
    return ST_OK;
}

static uint8_t cmd_get_app_ids(struct desfire *df, const uint8_t *cmd, size_t len, struct reply *r)
{
    (void)cmd;
    if (len != 1)
        return ST_LENGTH;
    if (df->cur != &df->picc)
        return ST_PERMISSION;
    if (!(df->picc.settings & 0x02) && !master_authed(df))
        return ST_PERMISSION;
    r->len = 0;
    for (int i = 0; i < MAX_APPS; i++) {
        if (df->apps[i].used) {
            put_le24(r->data + r->len, df->apps[i].aid);
            r->len += 3;
        }
    }
    r->sm = SM_PLAIN;
    return ST_OK;
}

static uint8_t cmd_create_app(struct desfire *df, const uint8_t *cmd, size_t len, struct reply *r)
{
    if (len < 6 || len > 6 + 2 + 16)
        return ST_LENGTH;
    if (df->cur != &df->picc)
        return ST_PERMISSION;
    if (!(df->picc.settings & 0x04) && !master_authed(df))
        return ST_PERMISSION;
    uint32_t aid = le24(cmd + 1);
    uint8_t ks1 = cmd[4], ks2 = cmd[5];
    uint8_t nkeys = ks2 & 0x0F;
    enum df_cipher c;
    switch (ks2 & 0xC0) {
    case 0x00:
        c = DF_DES;
        break;
    case 0x40:
        c = DF_3K3DES;
        break;
    case 0x80:
        c = DF_AES;
        break;
    default:
        return ST_PARAMETER;
    }
    if (aid == 0 || nkeys < 1 || nkeys > MAX_KEYS)
        return ST_PARAMETER;
    if (find_app(df, aid))
        return ST_DUPLICATE;
    for (int i = 0; i < MAX_APPS; i++) {
        if (!df->apps[i].used) {
            init_app(&df->apps[i], aid, ks1, nkeys, c);
            emu_event("desfire created app %06X", aid);
            r->sm = SM_PLAIN;
            return ST_OK;
        }
    }
    return ST_COUNT;
}

static uint8_t cmd_delete_app(struct desfire *df, const uint8_t *cmd, size_t len, struct reply *r)
{
    if (len != 4)
        return ST_LENGTH;
    if (df->cur != &df->picc)
        return ST_PERMISSION;
    if (!(df->picc.settings & 0x04) && !master_authed(df))
        return ST_PERMISSION;
    struct app *a = find_app(df, le24(cmd + 1));
    if (!a || a == &df->picc)
        return ST_APP_NOT_FOUND;
    free_app(a);
    emu_event("desfire deleted app %06X", (unsigned)le24(cmd + 1));
    r->sm = SM_PLAIN;
    return ST_OK;
}

static uint8_t cmd_format(struct desfire *df, const uint8_t *cmd, size_t len, struct reply *r)
{
    (void)cmd;
    if (len != 1)
        return ST_LENGTH;
    if (df->cur != &df->picc || !master_authed(df))
        return ST_PERMISSION;
    for (int i = 0; i < MAX_APPS; i++)
        free_app(&df->apps[i]);
    r->sm = SM_PLAIN;
    return ST_OK;
}

static uint8_t cmd_free_mem(struct desfire *df, const uint8_t *cmd, size_t len, struct reply *r)
{
    (void)cmd;
    if (len != 1)
        return ST_LENGTH;
    size_t used = used_memory(df);
    put_le24(r->data, used < TOTAL_MEMORY ? (uint32_t)(TOTAL_MEMORY - used) : 0);
    r->len = 3;
    r->sm = SM_PLAIN;
    return ST_OK;
}

static uint8_t cmd_get_key_settings(struct desfire *df, const uint8_t *cmd, size_t len,
                                    struct reply *r)
{
    (void)cmd;
    if (len != 1)
        return ST_LENGTH;
    if (!(df->cur->settings & 0x02) && !master_authed(df))
        return ST_PERMISSION;
    r->data[0] = df->cur->settings;
    r->data[1] = df->cur->nkeys;
    if (df->cur->cipher == DF_AES)
        r->data[1] |= 0x80;
    else if (df->cur->cipher == DF_3K3DES)
        r->data[1] |= 0x40;
    r->len = 2;
    r->sm = SM_PLAIN;
    return ST_OK;
}

static uint8_t cmd_get_key_version(struct desfire *df, const uint8_t *cmd, size_t len,
                                   struct reply *r)
{
    if (len != 2)
        return ST_LENGTH;
    uint8_t keyno = cmd[1] & 0x0F;
    if (keyno >= df->cur->nkeys)
        return ST_NO_SUCH_KEY;
    const struct key *k = &df->cur->keys[keyno];
    uint8_t v = 0;
    if (df->cur->cipher == DF_AES) {
        v = k->aes_version;
    } else {
        for (int i = 0; i < 8; i++)
            v |= (uint8_t)((k->data[i] & 1) << (7 - i));
    }
    r->data[0] = v;
    r->len = 1;
    r->sm = SM_PLAIN;
    return ST_OK;
}

static uint8_t cmd_change_key(struct desfire *df, const uint8_t *cmd, size_t len, struct reply *r)
{
    if (df->auth_key < 0)
        return ST_AUTH;
    if (len < 2)
        return ST_LENGTH;
    struct app *a = df->cur;
    bool picc = a == &df->picc;
    int keyno = cmd[1] & 0x0F;
    enum df_cipher fam = a->cipher;
    if (picc) {
        if (keyno != 0)
            return ST_NO_SUCH_KEY;
        fam = (cmd[1] & 0x80) ? DF_AES : (cmd[1] & 0x40) ? DF_3K3DES : DF_DES;
    } else if (keyno >= a->nkeys) {
        return ST_NO_SUCH_KEY;
    }

    unsigned change_key = a->settings >> 4;
    bool allowed;
    if (keyno == 0)
        allowed = df->auth_key == 0 && (a->settings & 0x01);
    else if (change_key == 0xE)
        allowed = df->auth_key == keyno;
    else if (change_key == 0xF)
        allowed = false;
    else
        allowed = df->auth_key == (int)change_key;
    if (!allowed)
        return ST_PERMISSION;

    bool same = df->auth_key == keyno;
    bool ev1 = df->scheme == SCHEME_EV1;
    size_t kl = df_key_size(fam), kv = kl + (fam == DF_AES ? 1 : 0);
    size_t crcl = ev1 ? 4 : 2;
    size_t plain_len = kv + crcl + (same ? 0 : crcl);
    size_t enc_len = padded(plain_len, df_block_size(df->s.cipher));
    if (len != 2 + enc_len)
        return ST_LENGTH;

    uint8_t buf[2 + 64];
    memcpy(buf, cmd, len);
    if (ev1)
        df_cbc_decrypt(df->s.cipher, df->s.key, df->s.iv, buf + 2, enc_len);
    else
        df_legacy_receive(df->s.cipher, df->s.key, buf + 2, enc_len);

    bool crc_ok;
    if (ev1)
        crc_ok = df_crc32(buf, 2 + kv) == get_le32(buf + 2 + kv);
    else
        crc_ok = df_crc16(buf + 2, kv) == (buf[2 + kv] | buf[3 + kv] << 8);
    uint8_t newkey[DF_MAX_KEY];
    memcpy(newkey, buf + 2, kl);
    if (!same) {
        for (size_t i = 0; i < kl; i++)
            newkey[i] ^= a->keys[keyno].data[i];
        size_t p = 2 + kv + crcl;
        if (ev1)
            crc_ok = crc_ok && df_crc32(newkey, kl) == get_le32(buf + p);
        else
            crc_ok = crc_ok && df_crc16(newkey, kl) == (buf[p] | buf[p + 1] << 8);
    }
    if (!crc_ok)
        return ST_INTEGRITY;

    struct key *k = &a->keys[keyno];
    memset(k, 0, sizeof(*k));
    memcpy(k->data, newkey, kl);
    if (fam == DF_AES)
        k->aes_version = buf[2 + kl];
    if (picc)
        a->cipher = fam;
    emu_event("desfire changed key %d %s", keyno, df_cipher_name(key_cipher(fam, k)));
    if (same) {
        end_session(df);
        r->sm = SM_NONE;
    } else {
        r->sm = SM_PLAIN;
    }
    return ST_OK;
}

static uint8_t cmd_create_std_file(struct desfire *df, const uint8_t *cmd, size_t len,
                                   struct reply *r)
{
    if (len != 8 && len != 10)
        return ST_LENGTH;
    struct app *a = df->cur;
    if (a == &df->picc)
        return ST_PERMISSION;
    if (!(a->settings & 0x04) && !master_authed(df))
        return ST_PERMISSION;
    const uint8_t *p = cmd + (len == 10 ? 4 : 2);
    uint8_t no = cmd[1];
    uint8_t comm = p[0] & 0x03;
    uint16_t access = (uint16_t)(p[1] | p[2] << 8);
    uint32_t size = le24(p + 3);
    if (no >= MAX_FILES || comm == 2)
        return ST_PARAMETER;
    if (a->files[no].used)
        return ST_DUPLICATE;
    if (size > MAX_FILE_SIZE || used_memory(df) + size > TOTAL_MEMORY)
        return ST_OUT_OF_EEPROM;
    uint8_t *data = calloc(1, MAX_FILE_SIZE);
    if (!data)
        return ST_OUT_OF_EEPROM;
    struct file *f = &a->files[no];
    f->used = true;
    f->comm = comm;
    f->access = access;
    f->size = size;
    f->data = data;
    emu_event("desfire created file %u", no);
    r->sm = SM_PLAIN;
    return ST_OK;
}

static uint8_t cmd_delete_file(struct desfire *df, const uint8_t *cmd, size_t len, struct reply *r)
{
    if (len != 2)
        return ST_LENGTH;
    struct app *a = df->cur;
    if (!(a->settings & 0x04) && !master_authed(df))
        return ST_PERMISSION;
    if (cmd[1] >= MAX_FILES || !a->files[cmd[1]].used)
        return ST_FILE_NOT_FOUND;
    free(a->files[cmd[1]].data);
    memset(&a->files[cmd[1]], 0, sizeof(a->files[0]));
    r->sm = SM_PLAIN;
    return ST_OK;
}

static uint8_t cmd_get_file_ids(struct desfire *df, const uint8_t *cmd, size_t len, struct reply *r)
{
    (void)cmd;
    if (len != 1)
        return ST_LENGTH;
    if (df->cur == &df->picc)
        return ST_PERMISSION;
    r->len = 0;
    for (int i = 0; i < MAX_FILES; i++)
        if (df->cur->files[i].used)
            r->data[r->len++] = (uint8_t)i;
    r->sm = SM_PLAIN;
    return ST_OK;
}

static struct file *find_file(struct desfire *df, uint8_t no)
{
    if (no >= MAX_FILES || !df->cur->files[no].used)
        return NULL;
    return &df->cur->files[no];
}

static uint8_t cmd_get_file_settings(struct desfire *df, const uint8_t *cmd, size_t len,
                                     struct reply *r)
{
    if (len != 2)
        return ST_LENGTH;
    struct file *f = find_file(df, cmd[1]);
    if (!f)
        return ST_FILE_NOT_FOUND;
    r->data[0] = 0x00; /* standard data file */
    r->data[1] = f->comm;
    r->data[2] = (uint8_t)f->access;
    r->data[3] = (uint8_t)(f->access >> 8);
    put_le24(r->data + 4, f->size);
    r->len = 7;
    r->sm = SM_PLAIN;
    return ST_OK;
}

static uint8_t cmd_read_data(struct desfire *df, const uint8_t *cmd, size_t len, struct reply *r)
{
    if (len != 8)
        return ST_LENGTH;
    struct file *f = find_file(df, cmd[1]);
    if (!f)
        return ST_FILE_NOT_FOUND;
    uint32_t off = le24(cmd + 2), n = le24(cmd + 5);
    if (off > f->size || (n && n > f->size - off) || (n == 0 && off == f->size))
        return ST_BOUNDARY;
    if (n == 0)
        n = f->size - off;
    int comm = file_comm(df, f, false);
    if (comm < 0)
        return ST_PERMISSION;
    memcpy(r->data, f->data + off, n);
    r->len = n;
    r->sm = comm_sm(comm);
    emu_event("desfire read file %u %s", cmd[1],
              comm == COMM_ENC   ? "enc"
              : comm == COMM_MAC ? "mac"
                                 : "plain");
    return ST_OK;
}

/* Bytes a WriteData of n data bytes occupies after its 8-byte header. */
static size_t write_wire_len(const struct desfire *df, int comm, size_t n)
{
    bool ev1 = df->scheme == SCHEME_EV1;
    if (df->scheme == SCHEME_NONE || comm == COMM_PLAIN)
        return n;
    if (comm == COMM_MAC)
        return n + (ev1 ? 8 : 4);
    return padded(n + (ev1 ? 4 : 2), df_block_size(df->s.cipher));
}

static uint8_t finish_write(struct desfire *df, struct reply *r)
{
    uint8_t *in = df->in;
    struct file *f = find_file(df, in[1]);
    uint32_t off = le24(in + 2), n = le24(in + 5);
    int comm = f ? file_comm(df, f, true) : -1;
    bool ev1 = df->scheme == SCHEME_EV1;
    size_t wl = df->in_len - 8;

    df->in_len = df->in_need = 0;
    if (comm < 0)
        return ST_PERMISSION;
    if (df->scheme == SCHEME_NONE || comm == COMM_PLAIN) {
        if (ev1) {
            uint8_t mac[DF_MAX_BLOCK];
            df_cmac(&df->s, in, 8 + n, mac);
        }
    } else if (comm == COMM_MAC) {
        uint8_t mac[DF_MAX_BLOCK];
        if (ev1) {
            df_cmac(&df->s, in, 8 + n, mac);
            if (memcmp(mac, in + 8 + n, 8) != 0)
                return ST_INTEGRITY;
        } else {
            size_t pl = padded(n, 8);
            uint8_t tmp[MAX_FILE_SIZE + 16] = {0}, iv[DF_MAX_BLOCK] = {0};
            memcpy(tmp, in + 8, n);
            df_cbc_encrypt(df->s.cipher, df->s.key, iv, tmp, pl);
            if (memcmp(tmp + pl - 8, in + 8 + n, 4) != 0)
                return ST_INTEGRITY;
        }
    } else {
        if (ev1) {
            df_cbc_decrypt(df->s.cipher, df->s.key, df->s.iv, in + 8, wl);
            if (df_crc32(in, 8 + n) != get_le32(in + 8 + n))
                return ST_INTEGRITY;
        } else {
            df_legacy_receive(df->s.cipher, df->s.key, in + 8, wl);
            if (df_crc16(in + 8, n) != (in[8 + n] | in[9 + n] << 8))
                return ST_INTEGRITY;
        }
    }
    memcpy(f->data + off, in + 8, n);
    emu_event("desfire wrote file %u %s", in[1],
              comm == COMM_ENC   ? "enc"
              : comm == COMM_MAC ? "mac"
                                 : "plain");
    r->sm = SM_PLAIN;
    return ST_OK;
}

static uint8_t cmd_write_data(struct desfire *df, const uint8_t *cmd, size_t len, struct reply *r)
{
    if (len < 8)
        return ST_LENGTH;
    struct file *f = find_file(df, cmd[1]);
    if (!f)
        return ST_FILE_NOT_FOUND;
    uint32_t off = le24(cmd + 2), n = le24(cmd + 5);
    if (n == 0 || off > f->size || n > f->size - off)
        return ST_BOUNDARY;
    int comm = file_comm(df, f, true);
    if (comm < 0)
        return ST_PERMISSION;
    size_t need = 8 + write_wire_len(df, comm, n);
    if (len > need)
        return ST_LENGTH;
    memcpy(df->in, cmd, len);
    df->in_len = len;
    df->in_need = need;
    if (len < need) {
        r->sm = SM_NONE;
        return ST_MORE;
    }
    return finish_write(df, r);
}

static uint8_t write_more(struct desfire *df, const uint8_t *cmd, size_t len, struct reply *r)
{
    if (df->in_len + len - 1 > df->in_need) {
        df->in_len = df->in_need = 0;
        return ST_LENGTH;
    }
    memcpy(df->in + df->in_len, cmd + 1, len - 1);
    df->in_len += len - 1;
    if (df->in_len < df->in_need) {
        r->sm = SM_NONE;
        return ST_MORE;
    }
    return finish_write(df, r);
}

struct command {
    uint8_t code;
    const char *name;
    uint8_t (*fn)(struct desfire *, const uint8_t *, size_t, struct reply *);
    bool cmac_in; /* EV1: the command is CMACed (IV update) before it runs */
};

static const struct command commands[] = {
    {0x0A, "Authenticate", cmd_auth, false},
    {0x1A, "AuthenticateISO", cmd_auth, false},
    {0xAA, "AuthenticateAES", cmd_auth, false},
    {0x5A, "SelectApplication", cmd_select, true},
    {0x60, "GetVersion", cmd_get_version, true},
    {0x51, "GetCardUID", cmd_get_card_uid, true},
    {0x6A, "GetApplicationIDs", cmd_get_app_ids, true},
    {0xCA, "CreateApplication", cmd_create_app, true},
    {0xDA, "DeleteApplication", cmd_delete_app, true},
    {0xFC, "FormatPICC", cmd_format, true},
    {0x6E, "FreeMemory", cmd_free_mem, true},
    {0x45, "GetKeySettings", cmd_get_key_settings, true},
    {0x64, "GetKeyVersion", cmd_get_key_version, true},
    {0xC4, "ChangeKey", cmd_change_key, false},
    {0xCD, "CreateStdDataFile", cmd_create_std_file, true},
    {0xDF, "DeleteFile", cmd_delete_file, true},
    {0x6F, "GetFileIDs", cmd_get_file_ids, true},
    {0xF5, "GetFileSettings", cmd_get_file_settings, true},
    {0xBD, "ReadData", cmd_read_data, true},
    {0x3D, "WriteData", cmd_write_data, false},
};

/* Protects a successful answer as the session requires; appends to r->data. */
static void protect(struct desfire *df, struct reply *r)
{
    uint8_t mac[DF_MAX_BLOCK];
    size_t bs = df_block_size(df->s.cipher);

    if (df->scheme == SCHEME_NONE || r->sm == SM_NONE)
        return;
    if (df->scheme == SCHEME_EV1 && (r->sm == SM_PLAIN || r->sm == SM_MAC)) {
        r->data[r->len] = ST_OK;
        df_cmac(&df->s, r->data, r->len + 1, mac);
        memcpy(r->data + r->len, mac, 8);
        r->len += 8;
    } else if (df->scheme == SCHEME_LEGACY && r->sm == SM_MAC) {
        uint8_t tmp[MAX_FILE_SIZE + 16] = {0}, iv[DF_MAX_BLOCK] = {0};
        size_t pl = padded(r->len, 8);
        memcpy(tmp, r->data, r->len);
        df_cbc_encrypt(df->s.cipher, df->s.key, iv, tmp, pl);
        memcpy(r->data + r->len, tmp + pl - 8, 4);
        r->len += 4;
    } else if (r->sm == SM_ENC) {
        size_t n = r->len, total;
        if (df->scheme == SCHEME_EV1) {
            r->data[n] = ST_OK;
            put_le32(r->data + n, df_crc32(r->data, n + 1));
            total = padded(n + 4, bs);
            memset(r->data + n + 4, 0, total - n - 4);
            df_cbc_encrypt(df->s.cipher, df->s.key, df->s.iv, r->data, total);
        } else {
            uint16_t crc = df_crc16(r->data, n);
            uint8_t iv[DF_MAX_BLOCK] = {0};
            r->data[n] = (uint8_t)crc;
            r->data[n + 1] = (uint8_t)(crc >> 8);
            total = padded(n + 2, bs);
            memset(r->data + n + 2, 0, total - n - 2);
            df_cbc_encrypt(df->s.cipher, df->s.key, iv, r->data, total);
        }
        r->len = total;
    }
}

/* Hands out the next frame of the pending answer. */
static uint8_t next_frame(struct desfire *df, uint8_t *data, size_t *dlen)
{
    size_t n = df->out_len - df->out_pos;
    if (df->chunk_idx < df->nchunks && df->chunks[df->chunk_idx] < n)
        n = df->chunks[df->chunk_idx];
    else if (n > FRAME_DATA)
        n = FRAME_DATA;
    df->chunk_idx++;
    memcpy(data, df->out + df->out_pos, n);
    *dlen = n;
    df->out_pos += n;
    if (df->out_pos < df->out_len)
        return ST_MORE;
    df->out_len = df->out_pos = 0;
    return ST_OK;
}

/* Runs a native command; returns the status, fills data (one frame). */
static uint8_t run(struct desfire *df, const uint8_t *cmd, size_t len, uint8_t *data, size_t *dlen)
{
    static struct reply r;
    uint8_t st;
    const char *name = "Continue";

    *dlen = 0;
    r.len = 0;
    r.sm = SM_NONE;
    memset(r.chunks, 0, sizeof(r.chunks));

    if (cmd[0] == 0xAF) {
        if (df->auth_pending) {
            st = auth_step2(df, cmd, len, &r);
        } else if (df->in_need) {
            st = write_more(df, cmd, len, &r);
        } else if (df->out_len) {
            if (len != 1) {
                df->out_len = df->out_pos = 0;
                st = ST_LENGTH;
            } else {
                return next_frame(df, data, dlen);
            }
        } else {
            st = ST_ILLEGAL_COMMAND;
        }
    } else {
        const struct command *c = NULL;
        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
            if (commands[i].code == cmd[0])
                c = &commands[i];
        df->out_len = df->out_pos = 0;
        df->in_len = df->in_need = 0;
        df->auth_pending = false;
        if (!c) {
            st = ST_ILLEGAL_COMMAND;
        } else {
            name = c->name;
            if (c->cmac_in && df->scheme == SCHEME_EV1) {
                uint8_t mac[DF_MAX_BLOCK];
                df_cmac(&df->s, cmd, len, mac);
            }
            st = c->fn(df, cmd, len, &r);
        }
    }
    emu_event("desfire %02X %s %02X", cmd[0], name, st);

    if (st != ST_OK && st != ST_MORE) {
        end_session(df);
        return st;
    }
    if (st == ST_MORE) {
        memcpy(data, r.data, r.len);
        *dlen = r.len;
        return st;
    }
    protect(df, &r);
    memcpy(df->out, r.data, r.len);
    df->out_len = r.len;
    df->out_pos = 0;
    memcpy(df->chunks, r.chunks, sizeof(df->chunks));
    df->nchunks = r.chunks[0] ? (r.chunks[1] ? 2 : 1) : 0;
    df->chunk_idx = 0;
    if (r.len == 0)
        return ST_OK;
    return next_frame(df, data, dlen);
}

size_t desfire_apdu(struct desfire *df, const uint8_t *in, size_t len, uint8_t *out)
{
    uint8_t cmd[300], data[DESFIRE_MAX_RESPONSE];
    size_t clen, dlen;
    bool iso = false;

    if (len == 0)
        return 0;
    if (in[0] == 0x90) {
        /* ISO 7816-4 wrapping: 90 INS P1 P2 [Lc data] [Le] */
        iso = true;
        if (len < 4) {
            out[0] = 0x67;
            out[1] = 0x00;
            return 2;
        }
        cmd[0] = in[1];
        clen = 1;
        if (len > 5) {
            size_t lc = in[4];
            if (5 + lc > len || len > 5 + lc + 1) {
                out[0] = 0x67;
                out[1] = 0x00;
                return 2;
            }
            memcpy(cmd + 1, in + 5, lc);
            clen += lc;
        }
    } else if (in[0] == 0x00) {
        /* ISO 7816-4 commands (SELECT by DF name, ...) are not emulated */
        out[0] = 0x6D;
        out[1] = 0x00;
        return 2;
    } else {
        if (len > sizeof(cmd))
            return 0;
        memcpy(cmd, in, len);
        clen = len;
    }

    uint8_t st = run(df, cmd, clen, data, &dlen);
    if (iso) {
        memcpy(out, data, dlen);
        out[dlen] = 0x91;
        out[dlen + 1] = st;
    } else {
        out[0] = st;
        memcpy(out + 1, data, dlen);
    }
    return dlen + 2 - (iso ? 0 : 1);
}
