/*
 * card_desfire.c - what a tapped card proves: MIFARE DESFire EV1+ with per-card AES
 * keys (NXP AN10922 diversification), or only its UID for every other card.
 *
 * The card side (libfreefare 0.4.0 over libnfc):
 *   application  keys->aid, AES, 2 keys, key settings APP_KEY_SETTINGS
 *     key 0      application master key = AN10922(app_master, input): issuing only
 *     key 1      read key = AN10922(read_master, input): used on every tap
 *     file 1     standard data file, CARD_CRED_FILE_LEN bytes, enciphered,
 *                read key 1, write / read&write / change access key 0
 *   input        UID (7) || AID (3, LSB first) || "lockerd" (card_diversify_key)
 *
 * A tap is accepted as authenticated only if the card proves its read key (AES
 * mutual authentication), then reports, encrypted under the session key, a real UID
 * equal to the one it used in anticollision, and a well-formed credential file.
 *
 * Key file (card_keys_load, card_keys_create): text, one "name = value" per line,
 * '#' starts a comment line, blank lines ignored:
 *     app_master  = <32 hex digits>
 *     read_master = <32 hex digits>
 * Both are required exactly once and must differ; nothing else is allowed. The file
 * must be a regular file without any group or other permission bits.
 *
 * Credential file (CARD_CRED_FILE_LEN = 32 bytes, card_make_credential_file):
 *     0  4  magic "LKD1"
 *     4  1  format version, 1
 *     5  3  AID, LSB first (binds the file to the application it sits in)
 *     8  8  issue time, UNIX seconds, big-endian, not 0
 *    16 15  reserved, zero (a later version may use them; version 1 requires zero)
 *    31  1  end mark 0x4B ('K'), never 0x00: libfreefare 0.4.0 finds the end of an
 *           enciphered read by searching for its CRC and can drop a trailing 0x00
 *           byte (upstream issue #128), which would make a good card unreadable
 * Integrity and secrecy come from DESFire's enciphered file access (CRC32 under the
 * session key), so the file carries no MAC of its own.
 *
 * Privacy: UIDs are never logged; keys and UIDs in local buffers are wiped before
 * returning. libfreefare keeps its own heap copies of keys and of the UID in the
 * tag and key objects and frees them without wiping; nothing here can reach them.
 */
#include "hal/card.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <freefare.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "daemon/log.h"

#define AES_BLOCK 16

#define DESFIRE_SAK     0x20
#define DESFIRE_UID_LEN 7
#define NXP_MFR_CODE    0x04

#define KEY_APP_MASTER 0
#define KEY_READ       1
#define APP_KEY_COUNT  2
/* DESFire application key settings: bits 7-4 = 0 (only the application master key
 * changes keys), bit 3 = 1 (settings changeable), bit 2 = 0 (creating or deleting
 * files needs the master key), bit 1 = 0 (listing files and settings needs the
 * master key: a foreign reader learns nothing about the layout), bit 0 = 1 (the
 * master key itself can be changed, so a site can rotate it). */
#define APP_KEY_SETTINGS 0x09
#define CRED_FILE_NO     1

#define CRED_VERSION  1
#define CRED_OFF_VER  4
#define CRED_OFF_AID  5
#define CRED_OFF_TIME 8
#define CRED_OFF_RSVD 16
#define CRED_OFF_END  31
#define CRED_END_MARK 0x4B
#define AID_MAX       0xFFFFFFu

#define KEYFILE_MAX 4096

/* The ATS bytes T0 TA TB TC of DESFire EV1/EV2/EV3 (libnfc strips the TL byte);
 * libfreefare 0.4.0 recognises DESFire by exactly this prefix after SAK 0x20. */
static const uint8_t desfire_ats_prefix[4] = {0x75, 0x77, 0x81, 0x02};

/* AN10922's "system identifier" part of the diversification input. */
static const uint8_t system_id[7] = {'l', 'o', 'c', 'k', 'e', 'r', 'd'};
static const uint8_t cred_magic[4] = {'L', 'K', 'D', '1'};

/* ------------------------------------------------------------- AN10922 */

static int aes_block(EVP_CIPHER_CTX *ctx, const uint8_t in[AES_BLOCK], uint8_t out[AES_BLOCK])
{
    int n = 0;
    if (EVP_EncryptUpdate(ctx, out, &n, in, AES_BLOCK) != 1 || n != AES_BLOCK)
        return -EIO;
    return 0;
}

/* Doubling in GF(2^128) as CMAC (NIST SP 800-38B) derives its subkeys. */
static void gf_double(const uint8_t in[AES_BLOCK], uint8_t out[AES_BLOCK])
{
    uint8_t carry = in[0] >> 7;
    for (int i = 0; i < AES_BLOCK - 1; i++)
        out[i] = (uint8_t)(in[i] << 1 | in[i + 1] >> 7);
    out[AES_BLOCK - 1] = (uint8_t)(in[AES_BLOCK - 1] << 1);
    /* Constant time: the subkeys are secret. */
    out[AES_BLOCK - 1] ^= (uint8_t)(0x87 & (0u - carry));
}

/*
 * Not plain CMAC: AN10922 always pads 0x01 || m to two blocks, so for inputs of 16
 * bytes or less it pads where CMAC would not (16 bytes) or pads less far (< 16), and
 * the results differ. For inputs of 17..32 bytes both agree. The MAC is computed
 * here from AES-ECB blocks so that the padding is visibly the application note's.
 */
int card_an10922_aes128(const uint8_t master[CARD_AES_KEY_LEN], const uint8_t *m, size_t mlen,
                        uint8_t out[CARD_AES_KEY_LEN])
{
    static const uint8_t zero[AES_BLOCK];
    uint8_t d[2 * AES_BLOCK] = {0};
    uint8_t k0[AES_BLOCK], k1[AES_BLOCK], k2[AES_BLOCK], c[AES_BLOCK];
    const size_t dlen = 1 + mlen;
    int rc = -EIO;

    if (master == NULL || m == NULL || out == NULL || mlen == 0 || dlen > sizeof(d))
        return -EINVAL;

    EVP_CIPHER *aes = EVP_CIPHER_fetch(NULL, "AES-128-ECB", NULL);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (aes == NULL || ctx == NULL || EVP_EncryptInit_ex2(ctx, aes, master, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_set_padding(ctx, 0) != 1)
        goto cleanup;

    if (aes_block(ctx, zero, k0) < 0)
        goto cleanup;
    gf_double(k0, k1);
    gf_double(k1, k2);

    d[0] = 0x01; /* AN10922's diversification constant for AES-128 keys */
    memcpy(d + 1, m, mlen);
    const uint8_t *subkey = k1;
    if (dlen < sizeof(d)) {
        d[dlen] = 0x80;
        subkey = k2;
    }
    for (int i = 0; i < AES_BLOCK; i++)
        d[AES_BLOCK + i] ^= subkey[i];

    /* CBC-MAC with a zero IV over the two blocks; the last ciphertext is the key. */
    if (aes_block(ctx, d, c) < 0)
        goto cleanup;
    for (int i = 0; i < AES_BLOCK; i++)
        c[i] ^= d[AES_BLOCK + i];
    if (aes_block(ctx, c, out) < 0)
        goto cleanup;
    rc = 0;

cleanup:
    OPENSSL_cleanse(d, sizeof(d));
    OPENSSL_cleanse(k0, sizeof(k0));
    OPENSSL_cleanse(k1, sizeof(k1));
    OPENSSL_cleanse(k2, sizeof(k2));
    OPENSSL_cleanse(c, sizeof(c));
    EVP_CIPHER_CTX_free(ctx);
    EVP_CIPHER_free(aes);
    return rc;
}

int card_diversify_key(const uint8_t master[CARD_AES_KEY_LEN], const uint8_t uid[7], uint32_t aid,
                       uint8_t out[CARD_AES_KEY_LEN])
{
    uint8_t m[DESFIRE_UID_LEN + 3 + sizeof(system_id)];

    if (uid == NULL || aid == 0 || aid > AID_MAX)
        return -EINVAL;
    memcpy(m, uid, DESFIRE_UID_LEN);
    m[7] = (uint8_t)aid;
    m[8] = (uint8_t)(aid >> 8);
    m[9] = (uint8_t)(aid >> 16);
    memcpy(m + 10, system_id, sizeof(system_id));
    int rc = card_an10922_aes128(master, m, sizeof(m), out);
    OPENSSL_cleanse(m, sizeof(m));
    return rc;
}

/* ----------------------------------------------------- credential file */

int card_make_credential_file(uint32_t aid, uint64_t issued, uint8_t out[CARD_CRED_FILE_LEN])
{
    if (out == NULL || aid == 0 || aid > AID_MAX || issued == 0)
        return -EINVAL;
    memset(out, 0, CARD_CRED_FILE_LEN);
    memcpy(out, cred_magic, sizeof(cred_magic));
    out[CRED_OFF_VER] = CRED_VERSION;
    for (int i = 0; i < 3; i++)
        out[CRED_OFF_AID + i] = (uint8_t)(aid >> (8 * i));
    for (int i = 0; i < 8; i++)
        out[CRED_OFF_TIME + i] = (uint8_t)(issued >> (56 - 8 * i));
    out[CRED_OFF_END] = CRED_END_MARK;
    return 0;
}

int card_parse_credential_file(const uint8_t *data, size_t len, uint32_t aid)
{
    if (data == NULL || len != CARD_CRED_FILE_LEN || aid == 0 || aid > AID_MAX)
        return -EPROTO;
    if (memcmp(data, cred_magic, sizeof(cred_magic)) != 0 || data[CRED_OFF_VER] != CRED_VERSION)
        return -EPROTO;
    uint32_t file_aid = (uint32_t)data[CRED_OFF_AID] | (uint32_t)data[CRED_OFF_AID + 1] << 8 |
                        (uint32_t)data[CRED_OFF_AID + 2] << 16;
    if (file_aid != aid)
        return -EPROTO;
    uint64_t issued = 0;
    for (int i = 0; i < 8; i++)
        issued = issued << 8 | data[CRED_OFF_TIME + i];
    if (issued == 0)
        return -EPROTO;
    for (size_t i = CRED_OFF_RSVD; i < CRED_OFF_END; i++)
        if (data[i] != 0)
            return -EPROTO;
    if (data[CRED_OFF_END] != CRED_END_MARK)
        return -EPROTO;
    return 0;
}

/* ------------------------------------------------------------ key file */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Exactly 2 * n hex digits into n bytes. */
static int hex_decode(const char *s, size_t slen, uint8_t *out, size_t n)
{
    if (slen != 2 * n)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -EINVAL;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

static bool all_zero(const uint8_t *p, size_t n)
{
    uint8_t acc = 0;
    for (size_t i = 0; i < n; i++)
        acc |= p[i];
    return acc == 0;
}

/* The key file's text, already read; errors name path:line. */
static int parse_keys(const char *text, size_t len, const char *path, struct card_keys *out,
                      char *err, size_t errlen)
{
    bool have_app = false, have_read = false;
    size_t pos = 0;
    int line = 0;

    if (memchr(text, '\0', len) != NULL) {
        snprintf(err, errlen, "%s: not a text file", path);
        return -EINVAL;
    }
    while (pos < len) {
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl != NULL ? (size_t)(nl - s) : len - pos;
        pos += n + (nl != NULL);
        line++;

        while (n > 0 && is_blank(*s))
            s++, n--;
        while (n > 0 && is_blank(s[n - 1]))
            n--;
        if (n == 0 || *s == '#')
            continue;

        const char *eq = memchr(s, '=', n);
        if (eq == NULL) {
            snprintf(err, errlen, "%s:%d: expected 'name = hex key'", path, line);
            return -EINVAL;
        }
        size_t nlen = (size_t)(eq - s);
        while (nlen > 0 && is_blank(s[nlen - 1]))
            nlen--;
        const char *v = eq + 1;
        size_t vlen = n - (size_t)(v - s);
        while (vlen > 0 && is_blank(*v))
            v++, vlen--;

        uint8_t *dst;
        bool *seen;
        if (nlen == 10 && memcmp(s, "app_master", 10) == 0) {
            dst = out->app_master;
            seen = &have_app;
        } else if (nlen == 11 && memcmp(s, "read_master", 11) == 0) {
            dst = out->read_master;
            seen = &have_read;
        } else {
            snprintf(err, errlen, "%s:%d: unknown key name (expected app_master or read_master)",
                     path, line);
            return -EINVAL;
        }
        if (*seen) {
            snprintf(err, errlen, "%s:%d: %.*s given twice", path, line, (int)nlen, s);
            return -EINVAL;
        }
        if (vlen != (size_t)2 * CARD_AES_KEY_LEN) {
            snprintf(err, errlen, "%s:%d: %.*s must be %d hex digits, found %zu characters", path,
                     line, (int)nlen, s, 2 * CARD_AES_KEY_LEN, vlen);
            return -EINVAL;
        }
        if (hex_decode(v, vlen, dst, CARD_AES_KEY_LEN) < 0) {
            snprintf(err, errlen, "%s:%d: %.*s is not hexadecimal", path, line, (int)nlen, s);
            return -EINVAL;
        }
        if (all_zero(dst, CARD_AES_KEY_LEN)) {
            snprintf(err, errlen, "%s:%d: %.*s is all zeros", path, line, (int)nlen, s);
            return -EINVAL;
        }
        *seen = true;
    }
    if (!have_app || !have_read) {
        snprintf(err, errlen, "%s: missing %s", path, !have_app ? "app_master" : "read_master");
        return -EINVAL;
    }
    /* One key must not open the other's door: issuing and reading stay separate. */
    if (CRYPTO_memcmp(out->app_master, out->read_master, CARD_AES_KEY_LEN) == 0) {
        snprintf(err, errlen, "%s: app_master and read_master must differ", path);
        return -EINVAL;
    }
    return 0;
}

int card_keys_load(const char *path, uint32_t aid, struct card_keys *out, char *err, size_t errlen)
{
    char buf[KEYFILE_MAX + 1];
    struct stat st;
    size_t len = 0;
    int rc;

    memset(out, 0, sizeof(*out));
    if (aid == 0 || aid > AID_MAX) {
        snprintf(err, errlen, "%s: application id %06X out of range (000001..FFFFFF)", path,
                 (unsigned)aid);
        return -EINVAL;
    }
    /* O_NOFOLLOW: a symlink planted in the state directory must not redirect us. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return rc;
    }
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        rc = -EINVAL;
        goto out;
    }
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        snprintf(err, errlen,
                 "%s: mode %04o gives group/others access to card keys; "
                 "chmod 600 it (and consider the keys exposed)",
                 path, (unsigned)(st.st_mode & 07777));
        rc = -EACCES;
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > KEYFILE_MAX) {
            snprintf(err, errlen, "%s: larger than %d bytes; not a key file", path, KEYFILE_MAX);
            rc = -EINVAL;
            goto out;
        }
    }
    rc = parse_keys(buf, len, path, out, err, errlen);
    if (rc == 0)
        out->aid = aid;

out:
    if (rc < 0)
        OPENSSL_cleanse(out, sizeof(*out));
    OPENSSL_cleanse(buf, sizeof(buf));
    close(fd);
    return rc;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Makes the new directory entry durable; failure only costs durability. */
static void sync_parent_dir(const char *path)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
}

/*
 * Written to a private temporary file (mkostemp: O_EXCL, mode 0600) and put in place
 * with link(), which never replaces an existing file: a power cut leaves either no
 * key file or a complete one, never a half-written one that would refuse to load.
 */
int card_keys_create(const char *path, char *err, size_t errlen)
{
    uint8_t keys[2 * CARD_AES_KEY_LEN];
    char text[512];
    char tmp[PATH_MAX];
    struct stat st;
    int rc, fd;

    if (lstat(path, &st) == 0)
        return 0; /* card_keys_load() judges what is there */
    if (errno != ENOENT) {
        rc = -errno;
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return rc;
    }
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= sizeof(tmp)) {
        snprintf(err, errlen, "%s: path too long", path);
        return -ENAMETOOLONG;
    }
    if (RAND_bytes(keys, sizeof(keys)) != 1) {
        snprintf(err, errlen, "%s: no random numbers for the card keys (RAND_bytes: %s)", path,
                 ERR_reason_error_string(ERR_get_error()));
        return -EIO;
    }

    int n = snprintf(text, sizeof(text),
                     "# lockerd card master keys (AN10922 diversification, AES-128).\n"
                     "# Secret: whoever has read_master can make cards this site accepts.\n"
                     "app_master = ");
    for (int i = 0; i < CARD_AES_KEY_LEN; i++)
        n += snprintf(text + n, sizeof(text) - (size_t)n, "%02x", keys[i]);
    n += snprintf(text + n, sizeof(text) - (size_t)n, "\nread_master = ");
    for (int i = 0; i < CARD_AES_KEY_LEN; i++)
        n += snprintf(text + n, sizeof(text) - (size_t)n, "%02x", keys[CARD_AES_KEY_LEN + i]);
    n += snprintf(text + n, sizeof(text) - (size_t)n, "\n");
    if (n <= 0 || (size_t)n >= sizeof(text)) {
        snprintf(err, errlen, "%s: internal error formatting the key file", path);
        rc = -EOVERFLOW;
        goto wipe;
    }

    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        goto wipe;
    }
    rc = write_all(fd, text, (size_t)n);
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc < 0) {
        snprintf(err, errlen, "%s: cannot write: %s", tmp, strerror(-rc));
        unlink(tmp);
        goto wipe;
    }
    if (link(tmp, path) == 0) {
        sync_parent_dir(path);
        log_notice("card: created new master key file %s", path);
    } else if (errno != EEXIST) {
        /* EEXIST: another process created it meanwhile; theirs stands. */
        rc = -errno;
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
    }
    unlink(tmp);

wipe:
    OPENSSL_cleanse(keys, sizeof(keys));
    OPENSSL_cleanse(text, sizeof(text));
    return rc;
}

/* --------------------------------------------------------- the targets */

enum target_class {
    TARGET_MALFORMED,           /* not a usable ISO 14443-A target */
    TARGET_UID_ONLY,            /* anything but DESFire */
    TARGET_DESFIRE,             /* DESFire with a 7-byte NXP UID: we can derive its keys */
    TARGET_DESFIRE_UNSUPPORTED, /* DESFire with a random (4-byte) or non-NXP UID */
};

/* Looks only at what polling found; never talks to the card. The sizes come from the
 * reader, so they are checked before use. */
static enum target_class classify(const nfc_target *t)
{
    if (t == NULL || t->nm.nmt != NMT_ISO14443A)
        return TARGET_MALFORMED;
    const nfc_iso14443a_info *nai = &t->nti.nai;
    if (nai->szUidLen == 0 || nai->szUidLen > HAL_UID_MAX || nai->szUidLen > sizeof(nai->abtUid) ||
        nai->szAtsLen > sizeof(nai->abtAts))
        return TARGET_MALFORMED;
    /* Like libfreefare: at least one byte after the compared prefix. */
    if (nai->btSak != DESFIRE_SAK || nai->szAtsLen < sizeof(desfire_ats_prefix) + 1 ||
        memcmp(nai->abtAts, desfire_ats_prefix, sizeof(desfire_ats_prefix)) != 0)
        return TARGET_UID_ONLY;
    /*
     * Random-UID cards are not supported in this version: the diversification input
     * needs the real UID, which the card reveals only after authentication. (A
     * later version could authenticate with an undiversified key first, or store a
     * card number in a free-read file.) freefare_tag_new() also refuses 7-byte UIDs
     * without NXP's manufacturer code.
     */
    if (nai->szUidLen != DESFIRE_UID_LEN || nai->abtUid[0] != NXP_MFR_CODE)
        return TARGET_DESFIRE_UNSUPPORTED;
    return TARGET_DESFIRE;
}

static void fill_anticollision(const nfc_target *t, enum card_kind kind, struct card_read *out)
{
    out->kind = kind;
    out->authenticated = false;
    out->uid_len = t->nti.nai.szUidLen;
    memcpy(out->uid, t->nti.nai.abtUid, out->uid_len);
}

/* libfreefare hands the real UID over as 14 lowercase hex digits. */
static int parse_uid_hex(const char *s, uint8_t out[DESFIRE_UID_LEN])
{
    if (s == NULL || strnlen(s, (size_t)2 * DESFIRE_UID_LEN + 1) != (size_t)2 * DESFIRE_UID_LEN)
        return -EPROTO;
    return hex_decode(s, (size_t)2 * DESFIRE_UID_LEN, out, DESFIRE_UID_LEN) < 0 ? -EPROTO : 0;
}

/* ---------------------------------------------------- talking to DESFire */

/*
 * A failed libfreefare call ends one of three ways: the exchange itself failed
 * (errno EIO, libnfc's last error set; also after nfc_abort_command()), the card
 * answered with a status code (last PICC error), or a MAC or CRC did not verify
 * (last PCD error). Read errno before anything else can change it.
 */
static int ff_error(nfc_device *dev, MifareTag tag, int saved_errno)
{
    if (saved_errno == EIO || nfc_device_get_last_error(dev) < 0)
        return -EIO;
    switch (mifare_desfire_last_picc_error(tag)) {
    case APPLICATION_NOT_FOUND:
    case FILE_NOT_FOUND:
        return -ENOENT;
    case AUTHENTICATION_ERROR:
    case PERMISSION_ERROR:
    case NO_SUCH_KEY:
        return -EACCES;
    case DUPLICATE_ERROR:
        return -EEXIST;
    default:
        return -EPROTO;
    }
}

/* For the log: why a card is not authenticated. Never includes the UID. */
static const char *why(int rc)
{
    switch (rc) {
    case -ENOENT:
        return "no lockerd application or credential file on the card";
    case -EACCES:
        return "the card did not prove this site's key";
    case -EPROTO:
        return "the card answered something malformed";
    case -ENOMEM:
        return "out of memory";
    default:
        return strerror(-rc);
    }
}

/*
 * Gets a libfreefare tag for the polled target without freefare_get_tags() (which
 * re-initialises the reader): freefare_tag_new() builds it from the polling data.
 * mifare_desfire_connect() selects the card again by its UID; a card still active
 * from polling does not answer a new selection, hence the deselect first. Its
 * result does not matter: a card gone by now fails the select.
 */
static int desfire_open(nfc_device *dev, const nfc_target *t, MifareTag *tag)
{
    (void)nfc_initiator_deselect_target(dev);
    *tag = freefare_tag_new(dev, t->nti.nai);
    if (*tag == NULL)
        return -ENOMEM; /* classify() already checked what freefare_tag_new() checks */
    if (freefare_get_tag_type(*tag) != DESFIRE) {
        freefare_free_tag(*tag);
        *tag = NULL;
        return -EPROTO;
    }
    if (mifare_desfire_connect(*tag) < 0) {
        freefare_free_tag(*tag);
        *tag = NULL;
        return -EIO;
    }
    return 0;
}

/* Not mifare_desfire_disconnect(): that deselects the card, and the reader backend
 * watches the still-selected card for removal. */
static void desfire_close(MifareTag tag)
{
    freefare_free_tag(tag);
}

/*
 * The tap check: select the application, authenticate with the diversified read
 * key, compare the real UID with the anticollision UID, read and check the
 * credential file. 0: authenticated, real_uid filled. -EIO: the card or reader
 * stopped answering. Anything else: the card did not prove itself.
 */
static int check_card(nfc_device *dev, MifareTag tag, const uint8_t uid[DESFIRE_UID_LEN],
                      const struct card_keys *keys, uint8_t real_uid[DESFIRE_UID_LEN])
{
    uint8_t k[CARD_AES_KEY_LEN];
    /* libfreefare 0.4.0 writes ciphertext, CRC and padding into this buffer before
     * stripping them (48 bytes + status for a 32-byte file) and trusts the card's
     * frame count; the slack is deliberate. */
    uint8_t buf[4 * CARD_CRED_FILE_LEN];
    MifareDESFireKey key = NULL;
    char *uid_hex = NULL;
    ssize_t n;
    int rc;

    MifareDESFireAID aid = mifare_desfire_aid_new(keys->aid);
    if (aid == NULL)
        return -ENOMEM;
    if (mifare_desfire_select_application(tag, aid) < 0) {
        rc = ff_error(dev, tag, errno);
        goto out;
    }
    rc = card_diversify_key(keys->read_master, uid, keys->aid, k);
    if (rc < 0)
        goto out;
    key = mifare_desfire_aes_key_new(k);
    if (key == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    if (mifare_desfire_authenticate_aes(tag, KEY_READ, key) < 0) {
        /* A failed comparison of RndA' sets no error code at all: that, too, is a
         * card that does not know the key. */
        rc = ff_error(dev, tag, errno) == -EIO ? -EIO : -EACCES;
        goto out;
    }
    if (mifare_desfire_get_card_uid(tag, &uid_hex) < 0) {
        rc = ff_error(dev, tag, errno);
        goto out;
    }
    rc = parse_uid_hex(uid_hex, real_uid);
    if (rc < 0)
        goto out;
    /* Enciphered under the session key, so a card cannot claim another UID than the
     * one whose key it proved; a mismatch means a random-UID card or a forgery. */
    if (CRYPTO_memcmp(real_uid, uid, DESFIRE_UID_LEN) != 0) {
        rc = -EACCES;
        goto out;
    }
    n = mifare_desfire_read_data_ex(tag, CRED_FILE_NO, 0, CARD_CRED_FILE_LEN, buf, MDCM_ENCIPHERED);
    if (n < 0) {
        rc = ff_error(dev, tag, errno);
        goto out;
    }
    rc = card_parse_credential_file(buf, (size_t)n, keys->aid);

out:
    if (uid_hex != NULL) {
        OPENSSL_cleanse(uid_hex, strlen(uid_hex));
        free(uid_hex);
    }
    mifare_desfire_key_free(key);
    free(aid); /* libfreefare 0.4.0 has no destructor for AIDs: they are plain malloc */
    OPENSSL_cleanse(k, sizeof(k));
    OPENSSL_cleanse(buf, sizeof(buf));
    if (rc < 0)
        OPENSSL_cleanse(real_uid, DESFIRE_UID_LEN);
    return rc;
}

int card_read(nfc_device *dev, const nfc_target *target, const struct card_keys *keys,
              struct card_read *out)
{
    uint8_t real_uid[DESFIRE_UID_LEN];
    MifareTag tag = NULL;
    int rc;

    memset(out, 0, sizeof(*out));
    switch (classify(target)) {
    case TARGET_MALFORMED:
        return -EPROTO;
    case TARGET_UID_ONLY:
        fill_anticollision(target, CARD_KIND_UID, out);
        return 0;
    case TARGET_DESFIRE_UNSUPPORTED:
        fill_anticollision(target, CARD_KIND_DESFIRE, out);
        log_info("card: DESFire with a random or non-NXP UID; not supported, "
                 "reported as not authenticated");
        return 0;
    case TARGET_DESFIRE:
        break;
    }

    rc = desfire_open(dev, target, &tag);
    if (rc == 0) {
        rc = check_card(dev, tag, target->nti.nai.abtUid, keys, real_uid);
        desfire_close(tag);
    }
    if (rc == -EIO) {
        log_debug("card: DESFire stopped answering");
        return -EIO;
    }
    if (rc < 0) {
        fill_anticollision(target, CARD_KIND_DESFIRE, out);
        log_info("card: DESFire not authenticated: %s", why(rc));
        return 0;
    }
    out->kind = CARD_KIND_DESFIRE;
    out->authenticated = true;
    out->uid_len = DESFIRE_UID_LEN;
    memcpy(out->uid, real_uid, DESFIRE_UID_LEN);
    OPENSSL_cleanse(real_uid, sizeof(real_uid));
    return 0;
}

/* ------------------------------------------------------------- issuing */

/* Authenticates with the application master key still at its default (AES, zero),
 * sets the read key, creates and writes the credential file, and only then replaces
 * the master key: until that last step the card is not yet ours. */
static int personalise(nfc_device *dev, MifareTag tag, const uint8_t uid[DESFIRE_UID_LEN],
                       const struct card_keys *keys)
{
    uint8_t zero[CARD_AES_KEY_LEN] = {0};
    uint8_t kmaster[CARD_AES_KEY_LEN], kread[CARD_AES_KEY_LEN];
    uint8_t cred[CARD_CRED_FILE_LEN];
    MifareDESFireKey kzero = NULL, new_master = NULL, new_read = NULL;
    ssize_t n;
    int rc;

    MifareDESFireAID aid = mifare_desfire_aid_new(keys->aid);
    if (aid == NULL)
        return -ENOMEM;
    rc = card_diversify_key(keys->app_master, uid, keys->aid, kmaster);
    if (rc == 0)
        rc = card_diversify_key(keys->read_master, uid, keys->aid, kread);
    if (rc == 0)
        rc = card_make_credential_file(keys->aid, (uint64_t)time(NULL), cred);
    if (rc < 0)
        goto out;
    kzero = mifare_desfire_aes_key_new(zero);
    new_master = mifare_desfire_aes_key_new(kmaster);
    new_read = mifare_desfire_aes_key_new(kread);
    if (kzero == NULL || new_master == NULL || new_read == NULL) {
        rc = -ENOMEM;
        goto out;
    }

    if (mifare_desfire_create_application_aes(tag, aid, APP_KEY_SETTINGS, APP_KEY_COUNT) < 0) {
        rc = ff_error(dev, tag, errno);
        log_info("card: cannot create the application: %s", why(rc));
        goto out;
    }
    if (mifare_desfire_select_application(tag, aid) < 0 ||
        mifare_desfire_authenticate_aes(tag, KEY_APP_MASTER, kzero) < 0) {
        rc = ff_error(dev, tag, errno);
        goto out;
    }
    /* Authenticated with key 0 and changing key 1: DESFire wants the new key XORed
     * with the old one (here zero), which libfreefare does when given old_key. */
    if (mifare_desfire_change_key(tag, KEY_READ, new_read, kzero) < 0) {
        rc = ff_error(dev, tag, errno);
        goto out;
    }
    if (mifare_desfire_create_std_data_file(
            tag, CRED_FILE_NO, MDCM_ENCIPHERED,
            MDAR(KEY_READ, KEY_APP_MASTER, KEY_APP_MASTER, KEY_APP_MASTER),
            CARD_CRED_FILE_LEN) < 0) {
        rc = ff_error(dev, tag, errno);
        goto out;
    }
    n = mifare_desfire_write_data_ex(tag, CRED_FILE_NO, 0, CARD_CRED_FILE_LEN, cred,
                                     MDCM_ENCIPHERED);
    if (n != CARD_CRED_FILE_LEN) {
        rc = n < 0 ? ff_error(dev, tag, errno) : -EPROTO;
        goto out;
    }
    /* Changing the key we are authenticated with: no XOR, and the session ends. */
    if (mifare_desfire_change_key(tag, KEY_APP_MASTER, new_master, NULL) < 0) {
        rc = ff_error(dev, tag, errno);
        goto out;
    }
    rc = 0;

out:
    mifare_desfire_key_free(kzero);
    mifare_desfire_key_free(new_master);
    mifare_desfire_key_free(new_read);
    free(aid);
    OPENSSL_cleanse(kmaster, sizeof(kmaster));
    OPENSSL_cleanse(kread, sizeof(kread));
    OPENSSL_cleanse(cred, sizeof(cred));
    return rc;
}

/* The application exists. If its master key is still the default (AES zero), an
 * issue of ours stopped before its last step (the card was pulled away, the reader
 * lost power): nothing on it is secret yet, so it is deleted with the factory PICC
 * master key and issuing starts over; returns -ENOENT then, as if it had never
 * been there. An application whose master key is not the default belongs to
 * someone (this site or another): -EEXIST, it is left alone. */
static int repair_half_issued(nfc_device *dev, MifareTag tag, MifareDESFireAID aid)
{
    uint8_t zero[CARD_AES_KEY_LEN] = {0}, des_zero[8] = {0};
    MifareDESFireKey kzero = mifare_desfire_aes_key_new(zero);
    MifareDESFireKey picc = mifare_desfire_des_key_new_with_version(des_zero);
    int rc;

    if (kzero == NULL || picc == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    if (mifare_desfire_select_application(tag, aid) < 0)
        goto card_error;
    if (mifare_desfire_authenticate_aes(tag, KEY_APP_MASTER, kzero) < 0) {
        rc = ff_error(dev, tag, errno) == -EIO ? -EIO : -EEXIST;
        goto out;
    }
    if (mifare_desfire_select_application(tag, NULL) < 0)
        goto card_error;
    if (mifare_desfire_authenticate(tag, 0, picc) < 0) {
        rc = ff_error(dev, tag, errno) == -EIO ? -EIO : -EACCES;
        goto out;
    }
    if (mifare_desfire_delete_application(tag, aid) < 0)
        goto card_error;
    log_notice("card: deleted a half-issued application %06X (master key still the "
               "default); issuing again",
               (unsigned)mifare_desfire_aid_get_aid(aid));
    rc = -ENOENT;
    goto out;

card_error: /* a select or the delete failed; errno is still the call's */
    rc = ff_error(dev, tag, errno);
out:
    mifare_desfire_key_free(kzero);
    mifare_desfire_key_free(picc);
    return rc;
}

static int issue(nfc_device *dev, MifareTag tag, const uint8_t uid[DESFIRE_UID_LEN],
                 const struct card_keys *keys, uint8_t real_uid[DESFIRE_UID_LEN])
{
    uint8_t des_zero[8] = {0};
    int rc;

    /* Already issued (or half-issued)? Selecting needs no key. */
    MifareDESFireAID aid = mifare_desfire_aid_new(keys->aid);
    if (aid == NULL)
        return -ENOMEM;
    if (mifare_desfire_select_application(tag, aid) == 0)
        rc = repair_half_issued(dev, tag, aid);
    else
        rc = ff_error(dev, tag, errno);
    free(aid);
    if (rc != -ENOENT)
        return rc;

    /* The factory PICC master key: DES, all zero, key 0 of application 0. */
    MifareDESFireKey picc = mifare_desfire_des_key_new_with_version(des_zero);
    if (picc == NULL)
        return -ENOMEM;
    if (mifare_desfire_select_application(tag, NULL) < 0) {
        rc = ff_error(dev, tag, errno);
    } else if (mifare_desfire_authenticate(tag, 0, picc) < 0) {
        rc = ff_error(dev, tag, errno) == -EIO ? -EIO : -EACCES;
        if (rc == -EACCES)
            log_notice("card: PICC master key is not the factory default; not issuing");
    } else {
        rc = personalise(dev, tag, uid, keys);
    }
    mifare_desfire_key_free(picc);
    if (rc < 0)
        return rc;

    /* Read it back exactly as a tap would. */
    rc = check_card(dev, tag, uid, keys, real_uid);
    if (rc < 0 && rc != -EIO) {
        log_warnx("card: issued card fails its own check: %s", why(rc));
        rc = -EPROTO;
    }
    return rc;
}

int card_issue(nfc_device *dev, const nfc_target *target, const struct card_keys *keys,
               struct card_read *out)
{
    uint8_t real_uid[DESFIRE_UID_LEN];
    MifareTag tag = NULL;
    int rc;

    memset(out, 0, sizeof(*out));
    switch (classify(target)) {
    case TARGET_MALFORMED:
        return -EPROTO;
    case TARGET_UID_ONLY:
    case TARGET_DESFIRE_UNSUPPORTED:
        return -ENOTSUP;
    case TARGET_DESFIRE:
        break;
    }
    rc = desfire_open(dev, target, &tag);
    if (rc < 0)
        return rc;
    rc = issue(dev, tag, target->nti.nai.abtUid, keys, real_uid);
    desfire_close(tag);
    if (rc < 0)
        return rc;
    out->kind = CARD_KIND_DESFIRE;
    out->authenticated = true;
    out->uid_len = DESFIRE_UID_LEN;
    memcpy(out->uid, real_uid, DESFIRE_UID_LEN);
    OPENSSL_cleanse(real_uid, sizeof(real_uid));
    log_notice("card: issued a DESFire card for application %06X", (unsigned)keys->aid);
    return 0;
}
