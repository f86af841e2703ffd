/*
 * test_card.c - the card module's pure parts: AN10922 against the application
 * note's published example, the key file, the credential file, and how polled
 * targets are classified before any card I/O. (Card transactions are tested against
 * the PN532 emulator in scenario tests.)
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "daemon/log.h"
#include "hal/card.h"

#define AID 0xF5A0C1u

static void unhex(const char *s, uint8_t *out, size_t n)
{
    assert_int_equal(strlen(s), 2 * n);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(s + 2 * i, "%2x", &v), 1);
        out[i] = (uint8_t)v;
    }
}

/* Plain AES-CMAC from OpenSSL, the reference the AN10922 padding departs from. */
static void openssl_cmac(const uint8_t key[16], const uint8_t *m, size_t mlen, uint8_t out[16])
{
    char cipher[] = "AES-128-CBC";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_CIPHER, cipher, 0),
        OSSL_PARAM_construct_end(),
    };
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "CMAC", NULL);
    assert_non_null(mac);
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(mac);
    assert_non_null(ctx);
    size_t outlen = 0;
    assert_int_equal(EVP_MAC_init(ctx, key, 16, params), 1);
    assert_int_equal(EVP_MAC_update(ctx, m, mlen), 1);
    assert_int_equal(EVP_MAC_final(ctx, out, &outlen, 16), 1);
    assert_int_equal(outlen, 16);
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
}

/* ------------------------------------------------------------- AN10922 */

/* AN10922 section 2.2.1 (Table 2): master key, UID 04782E21801D80, AID 3042F5,
 * system identifier "NXP Abu". */
static void test_an10922_published_example(void **state)
{
    (void)state;
    uint8_t master[16], m[17], want[16], got[16];
    unhex("00112233445566778899AABBCCDDEEFF", master, 16);
    unhex("04782E21801D80"
          "3042F5"
          "4E585020416275",
          m, sizeof(m));
    unhex("A8DD63A3B89D54B37CA802473FDA9175", want, 16);

    assert_int_equal(card_an10922_aes128(master, m, sizeof(m), got), 0);
    assert_memory_equal(got, want, 16);
}

/* AN10957's short example (M = 04DEADBEEFFEED; as quoted by libfreefare's upstream
 * tests): the input is padded to 32 bytes, so the key is not the plain CMAC, which
 * is what libfreefare's pre-fix code (its issue #91) computed. */
static void test_an10922_short_input_is_not_cmac(void **state)
{
    (void)state;
    uint8_t master[16], m[7], in[8], want[16], cmac_want[16], got[16], cmac[16];
    unhex("F3F9377698707B688EAF84ABE39E3791", master, 16);
    unhex("04DEADBEEFFEED", m, sizeof(m));
    unhex("0BB408BAFF98B6EE9F2E1585777F6A51", want, 16);
    unhex("721E2C01E81AF85D815633969CEA2607", cmac_want, 16);

    assert_int_equal(card_an10922_aes128(master, m, sizeof(m), got), 0);
    assert_memory_equal(got, want, 16);

    in[0] = 0x01;
    memcpy(in + 1, m, sizeof(m));
    openssl_cmac(master, in, sizeof(in), cmac);
    assert_memory_equal(cmac, cmac_want, 16);
    assert_memory_not_equal(got, cmac, 16);
}

/* The padding rule, length by length: AN10922 pads 0x01 || M to 32 bytes; CMAC pads to
 * the next block boundary. They agree when 0x01 || M is 17..32 bytes long (the same
 * padding, or none and K1 at 32) and differ for 2..16 bytes. */
static void test_an10922_vs_cmac_by_length(void **state)
{
    (void)state;
    uint8_t master[16], m[31], in[32], got[16], cmac[16];
    unhex("2B7E151628AED2A6ABF7158809CF4F3C", master, 16);
    for (size_t i = 0; i < sizeof(m); i++)
        m[i] = (uint8_t)(0xA5 ^ (i * 37));

    for (size_t mlen = 1; mlen <= 31; mlen++) {
        in[0] = 0x01;
        memcpy(in + 1, m, mlen);
        assert_int_equal(card_an10922_aes128(master, m, mlen, got), 0);
        openssl_cmac(master, in, 1 + mlen, cmac);
        if (1 + mlen >= 17)
            assert_memory_equal(got, cmac, 16);
        else
            assert_memory_not_equal(got, cmac, 16);
    }
}

static void test_an10922_bad_arguments(void **state)
{
    (void)state;
    uint8_t master[16] = {1}, m[32] = {2}, out[16];
    assert_int_equal(card_an10922_aes128(master, m, 0, out), -EINVAL);
    assert_int_equal(card_an10922_aes128(master, m, 32, out), -EINVAL);
    assert_int_equal(card_an10922_aes128(master, NULL, 4, out), -EINVAL);
    assert_int_equal(card_an10922_aes128(NULL, m, 4, out), -EINVAL);
}

/* Pins lockerd's own diversification input (UID || AID LSB first || "lockerd"):
 * if this changes, every issued card stops working. Expected value computed
 * independently with Python's cryptography package (AES-CMAC, which AN10922 equals
 * for this 18-byte input). */
static void test_diversify_lockerd_input(void **state)
{
    (void)state;
    uint8_t master[16], uid[7], want[16], got[16], by_hand[16];
    unhex("2B7E151628AED2A6ABF7158809CF4F3C", master, 16);
    unhex("04112233445566", uid, 7);
    unhex("11C73DFF849DF3BFE057E0EE0E0B72A1", want, 16);

    assert_int_equal(card_diversify_key(master, uid, AID, got), 0);
    assert_memory_equal(got, want, 16);

    const uint8_t m[17] = {0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0xC1, 0xA0,
                           0xF5, 'l',  'o',  'c',  'k',  'e',  'r',  'd'};
    assert_int_equal(card_an10922_aes128(master, m, sizeof(m), by_hand), 0);
    assert_memory_equal(by_hand, want, 16);

    assert_int_equal(card_diversify_key(master, uid, 0, got), -EINVAL);
    assert_int_equal(card_diversify_key(master, uid, 0x1000000, got), -EINVAL);
}

/* ----------------------------------------------------- credential file */

static void test_cred_layout(void **state)
{
    (void)state;
    uint8_t f[CARD_CRED_FILE_LEN], want[CARD_CRED_FILE_LEN] = {0};
    unhex("4C4B4431"                       /* "LKD1" */
          "01"                             /* version */
          "C1A0F5"                         /* AID LSB first */
          "0102030405060708"               /* issued, big-endian */
          "000000000000000000000000000000" /* reserved */
          "4B",                            /* end mark: never 0x00 */
          want, sizeof(want));
    assert_int_equal(card_make_credential_file(AID, 0x0102030405060708ull, f), 0);
    assert_memory_equal(f, want, sizeof(f));
    assert_int_equal(card_parse_credential_file(f, sizeof(f), AID), 0);
}

static void test_cred_invalid(void **state)
{
    (void)state;
    uint8_t good[CARD_CRED_FILE_LEN], f[CARD_CRED_FILE_LEN + 1];
    assert_int_equal(card_make_credential_file(AID, 1795885200, good), 0);

    /* Every single-byte change is refused. */
    for (size_t i = 0; i < sizeof(good); i++) {
        memcpy(f, good, sizeof(good));
        f[i] ^= 0x01;
        if (i >= 8 && i < 16)
            continue; /* the issue time may be any non-zero value */
        assert_int_equal(card_parse_credential_file(f, sizeof(good), AID), -EPROTO);
    }
    memcpy(f, good, sizeof(good));
    memset(f + 8, 0, 8);
    assert_int_equal(card_parse_credential_file(f, sizeof(good), AID), -EPROTO);

    memcpy(f, good, sizeof(good));
    f[sizeof(good)] = 0;
    assert_int_equal(card_parse_credential_file(f, sizeof(good) - 1, AID), -EPROTO);
    assert_int_equal(card_parse_credential_file(f, sizeof(good) + 1, AID), -EPROTO);
    assert_int_equal(card_parse_credential_file(f, 0, AID), -EPROTO);
    assert_int_equal(card_parse_credential_file(NULL, sizeof(good), AID), -EPROTO);
    assert_int_equal(card_parse_credential_file(good, sizeof(good), 0xF5A0C2), -EPROTO);
    assert_int_equal(card_parse_credential_file(good, sizeof(good), 0x1F5A0C1), -EPROTO);

    assert_int_equal(card_make_credential_file(AID, 0, f), -EINVAL);
    assert_int_equal(card_make_credential_file(0, 1, f), -EINVAL);
}

/* ------------------------------------------------------------ key file */

struct dir {
    char path[64];
    char file[96];
};

static int dir_setup(void **state)
{
    struct dir *d = calloc(1, sizeof(*d));
    if (d == NULL)
        return -1;
    snprintf(d->path, sizeof(d->path), "/tmp/test_card.XXXXXX");
    if (mkdtemp(d->path) == NULL) {
        free(d);
        return -1;
    }
    snprintf(d->file, sizeof(d->file), "%s/card.keys", d->path);
    *state = d;
    return 0;
}

static int dir_teardown(void **state)
{
    struct dir *d = *state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->path);
    int rc = system(cmd);
    free(d);
    return rc == 0 ? 0 : -1;
}

static void write_file(const char *path, const char *text, size_t len, mode_t mode)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
}

#define K_APP  "000102030405060708090a0b0c0d0e0f"
#define K_READ "F0E1D2C3B4A5968778695A4B3C2D1E0F"

static void test_keys_create_and_load(void **state)
{
    struct dir *d = *state;
    char err[256] = "";
    struct card_keys k1, k2;
    struct stat st;

    assert_int_equal(card_keys_create(d->file, err, sizeof(err)), 0);
    assert_int_equal(stat(d->file, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(card_keys_load(d->file, AID, &k1, err, sizeof(err)), 0);
    assert_int_equal(k1.aid, AID);
    assert_memory_not_equal(k1.app_master, k1.read_master, CARD_AES_KEY_LEN);

    /* An existing file is left alone. */
    assert_int_equal(card_keys_create(d->file, err, sizeof(err)), 0);
    assert_int_equal(card_keys_load(d->file, AID, &k2, err, sizeof(err)), 0);
    assert_memory_equal(&k1, &k2, sizeof(k1));

    /* No temporary file left behind. */
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "test $(ls -A '%s' | wc -l) -eq 1", d->path);
    assert_int_equal(system(cmd), 0);
}

static void test_keys_load_format(void **state)
{
    struct dir *d = *state;
    char err[256] = "";
    struct card_keys k;
    const char *text = "# site keys\r\n"
                       "\n"
                       "  app_master=" K_APP "  \r\n"
                       "\t# rotated 2026-11\n"
                       "read_master =\t" K_READ;
    uint8_t app[16], rd[16];
    unhex(K_APP, app, 16);
    unhex(K_READ, rd, 16);

    write_file(d->file, text, strlen(text), 0600);
    assert_int_equal(card_keys_load(d->file, AID, &k, err, sizeof(err)), 0);
    assert_memory_equal(k.app_master, app, 16);
    assert_memory_equal(k.read_master, rd, 16);

    write_file(d->file, text, strlen(text), 0400);
    assert_int_equal(card_keys_load(d->file, AID, &k, err, sizeof(err)), 0);
}

struct bad_case {
    const char *text;
    const char *msg; /* expected part of the error message */
};

static void test_keys_load_rejects(void **state)
{
    struct dir *d = *state;
    static const struct bad_case cases[] = {
        {"app_master = " K_APP "\n", "missing read_master"},
        {"read_master = " K_READ "\n", "missing app_master"},
        {"", "missing app_master"},
        {"app_master = " K_APP "\nread_master = " K_READ "\nread_master = " K_READ "\n",
         ":3: read_master given twice"},
        {"app_master = " K_APP "\nread_master = " K_READ "0\n", ":2: read_master must be 32"},
        {"app_master = " K_APP "\nread_master = " K_READ "\n", NULL}, /* control: valid */
        {"app_master = 0001020304050607\nread_master = " K_READ "\n", ":1: app_master must be 32"},
        {"app_master = " K_APP "\nread_master = F0E1D2C3B4A5968778695A4B3C2D1E0G\n",
         ":2: read_master is not hexadecimal"},
        {"app_master = " K_APP "\nread_master = " K_READ "\nsite = x\n", ":3: unknown key name"},
        {"app_master " K_APP "\n", ":1: expected"},
        {"app_master = " K_APP " # old\nread_master = " K_READ "\n", ":1: app_master must be 32"},
        {"app_master = " K_READ "\nread_master = " K_READ "\n", "must differ"},
        {"app_master = 00000000000000000000000000000000\nread_master = " K_READ "\n",
         ":1: app_master is all zeros"},
    };
    char err[256];
    struct card_keys k;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        write_file(d->file, cases[i].text, strlen(cases[i].text), 0600);
        err[0] = '\0';
        int rc = card_keys_load(d->file, AID, &k, err, sizeof(err));
        if (cases[i].msg == NULL) {
            assert_int_equal(rc, 0);
            continue;
        }
        if (rc != -EINVAL || strstr(err, cases[i].msg) == NULL)
            fail_msg("case %zu: rc %d, message \"%s\", wanted \"%s\"", i, rc, err, cases[i].msg);
        /* The error names the file. */
        assert_non_null(strstr(err, d->file));
        /* Nothing half-loaded is left in out. */
        uint8_t zero[sizeof(k)] = {0};
        assert_memory_equal(&k, zero, sizeof(k));
    }

    /* A NUL byte: not a text file. */
    static const char nul[] = "app_master = " K_APP "\n\0read_master = " K_READ "\n";
    write_file(d->file, nul, sizeof(nul) - 1, 0600);
    assert_int_equal(card_keys_load(d->file, AID, &k, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "not a text file"));

    /* Too large to be a key file. */
    char big[5000];
    memset(big, '#', sizeof(big));
    write_file(d->file, big, sizeof(big), 0600);
    assert_int_equal(card_keys_load(d->file, AID, &k, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "larger than"));
}

static void test_keys_load_file_checks(void **state)
{
    struct dir *d = *state;
    char err[256], link[128];
    struct card_keys k;
    const char *text = "app_master = " K_APP "\nread_master = " K_READ "\n";

    static const mode_t open_modes[] = {0640, 0604, 0620, 0602, 0610, 0644};
    for (size_t i = 0; i < sizeof(open_modes) / sizeof(open_modes[0]); i++) {
        write_file(d->file, text, strlen(text), open_modes[i]);
        assert_int_equal(card_keys_load(d->file, AID, &k, err, sizeof(err)), -EACCES);
        assert_non_null(strstr(err, "chmod 600"));
    }

    write_file(d->file, text, strlen(text), 0600);
    assert_int_equal(card_keys_load(d->file, 0, &k, err, sizeof(err)), -EINVAL);
    assert_int_equal(card_keys_load(d->file, 0x1000000, &k, err, sizeof(err)), -EINVAL);
    assert_int_equal(card_keys_load(d->file, 0xFFFFFF, &k, err, sizeof(err)), 0);

    snprintf(link, sizeof(link), "%s/link.keys", d->path);
    assert_int_equal(symlink(d->file, link), 0);
    assert_int_equal(card_keys_load(link, AID, &k, err, sizeof(err)), -ELOOP);
    unlink(link);

    assert_int_equal(card_keys_load(d->path, AID, &k, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "not a regular file"));

    snprintf(link, sizeof(link), "%s/missing.keys", d->path);
    assert_int_equal(card_keys_load(link, AID, &k, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "missing.keys"));
}

static void test_keys_create_errors(void **state)
{
    struct dir *d = *state;
    char err[256] = "", path[160];

    snprintf(path, sizeof(path), "%s/no/such/dir/card.keys", d->path);
    assert_int_equal(card_keys_create(path, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "card.keys"));

    if (geteuid() != 0) { /* root writes anywhere */
        char ro[96];
        snprintf(ro, sizeof(ro), "%s/ro", d->path);
        assert_int_equal(mkdir(ro, 0500), 0);
        snprintf(path, sizeof(path), "%s/card.keys", ro);
        assert_int_equal(card_keys_create(path, err, sizeof(err)), -EACCES);
        chmod(ro, 0700);
    }
}

/* ----------------------------------------------- targets before any I/O */

static nfc_target target(uint8_t sak, const char *uid_hex, const char *ats_hex)
{
    nfc_target t;
    memset(&t, 0, sizeof(t));
    t.nm.nmt = NMT_ISO14443A;
    t.nm.nbr = NBR_106;
    t.nti.nai.abtAtqa[1] = 0x44;
    t.nti.nai.btSak = sak;
    t.nti.nai.szUidLen = strlen(uid_hex) / 2;
    unhex(uid_hex, t.nti.nai.abtUid, t.nti.nai.szUidLen);
    t.nti.nai.szAtsLen = strlen(ats_hex) / 2;
    unhex(ats_hex, t.nti.nai.abtAts, t.nti.nai.szAtsLen);
    return t;
}

static const struct card_keys test_keys = {
    .app_master = {1, 2, 3},
    .read_master = {4, 5, 6},
    .aid = AID,
};

/* These cards are judged from the polling data alone: dev is NULL and never used. */
static void test_read_without_io(void **state)
{
    (void)state;
    struct card_read out;

    nfc_target classic = target(0x08, "DEADBEEF", "");
    assert_int_equal(card_read(NULL, &classic, &test_keys, &out), 0);
    assert_int_equal(out.kind, CARD_KIND_UID);
    assert_false(out.authenticated);
    assert_int_equal(out.uid_len, 4);
    assert_memory_equal(out.uid, classic.nti.nai.abtUid, 4);

    /* ISO 14443-4 but not DESFire (a JCOP-style ATS). */
    nfc_target other = target(0x20, "04112233445566", "788077029073C840");
    assert_int_equal(card_read(NULL, &other, &test_keys, &out), 0);
    assert_int_equal(out.kind, CARD_KIND_UID);
    assert_int_equal(out.uid_len, 7);

    /* DESFire with random UID (4 bytes, 08 first): not supported, not authenticated. */
    nfc_target random_uid = target(0x20, "08A1B2C3", "757781028002F0");
    assert_int_equal(card_read(NULL, &random_uid, &test_keys, &out), 0);
    assert_int_equal(out.kind, CARD_KIND_DESFIRE);
    assert_false(out.authenticated);
    assert_int_equal(out.uid_len, 4);

    /* DESFire ATS but a 7-byte UID without NXP's manufacturer code. */
    nfc_target non_nxp = target(0x20, "05112233445566", "757781028002F0");
    assert_int_equal(card_read(NULL, &non_nxp, &test_keys, &out), 0);
    assert_int_equal(out.kind, CARD_KIND_DESFIRE);
    assert_false(out.authenticated);

    /* A DESFire ATS cut short is not DESFire. */
    nfc_target short_ats = target(0x20, "04112233445566", "75778102");
    assert_int_equal(card_read(NULL, &short_ats, &test_keys, &out), 0);
    assert_int_equal(out.kind, CARD_KIND_UID);
}

static void test_read_malformed_target(void **state)
{
    (void)state;
    struct card_read out;

    nfc_target t = target(0x08, "DEADBEEF", "");
    t.nti.nai.szUidLen = 0;
    assert_int_equal(card_read(NULL, &t, &test_keys, &out), -EPROTO);
    t.nti.nai.szUidLen = 11;
    assert_int_equal(card_read(NULL, &t, &test_keys, &out), -EPROTO);

    nfc_target huge_ats = target(0x20, "04112233445566", "757781028002F0");
    huge_ats.nti.nai.szAtsLen = (size_t)-1; /* libnfc's TL-1 when a reader reports TL 0 */
    assert_int_equal(card_read(NULL, &huge_ats, &test_keys, &out), -EPROTO);

    nfc_target felica = target(0x08, "DEADBEEF", "");
    felica.nm.nmt = NMT_FELICA;
    assert_int_equal(card_read(NULL, &felica, &test_keys, &out), -EPROTO);
}

static void test_issue_refuses_without_io(void **state)
{
    (void)state;
    struct card_read out;
    nfc_target classic = target(0x08, "DEADBEEF", "");
    nfc_target random_uid = target(0x20, "08A1B2C3", "757781028002F0");
    assert_int_equal(card_issue(NULL, &classic, &test_keys, &out), -ENOTSUP);
    assert_int_equal(card_issue(NULL, &random_uid, &test_keys, &out), -ENOTSUP);
}

int main(void)
{
    log_init("test_card", LOG_LVL_WARNING);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_an10922_published_example),
        cmocka_unit_test(test_an10922_short_input_is_not_cmac),
        cmocka_unit_test(test_an10922_vs_cmac_by_length),
        cmocka_unit_test(test_an10922_bad_arguments),
        cmocka_unit_test(test_diversify_lockerd_input),
        cmocka_unit_test(test_cred_layout),
        cmocka_unit_test(test_cred_invalid),
        cmocka_unit_test_setup_teardown(test_keys_create_and_load, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_keys_load_format, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_keys_load_rejects, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_keys_load_file_checks, dir_setup, dir_teardown),
        cmocka_unit_test_setup_teardown(test_keys_create_errors, dir_setup, dir_teardown),
        cmocka_unit_test(test_read_without_io),
        cmocka_unit_test(test_read_malformed_target),
        cmocka_unit_test(test_issue_refuses_without_io),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
