/*
 * fuzz_card.c - libFuzzer target for everything hal/card_desfire.c parses from bytes
 * it does not control: the credential file read from a card, the real UID as
 * libfreefare hands it over, the polling data of a target (from the reader), and the
 * key file's text. Every input goes through every parser.
 *
 * The module is included, not linked, so that its static parsers are reachable
 * (as chrony's unit tests do); see tests/fuzz/fuzz.mk for the build.
 */
#include "hal/card_desfire.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_target(const uint8_t *data, size_t size)
{
    /* Layout: SAK (0xFF: a FeliCa target instead), UID length, ATS length, 10 UID
     * bytes, ATS bytes. The lengths are taken as given (up to 255) so that
     * impossible ones reach classify(). */
    if (size < 3)
        return;
    nfc_target t;
    memset(&t, 0, sizeof(t));
    t.nm.nmt = data[0] == 0xFF ? NMT_FELICA : NMT_ISO14443A;
    t.nm.nbr = NBR_106;
    t.nti.nai.btSak = data[0];
    t.nti.nai.szUidLen = data[1];
    t.nti.nai.szAtsLen = data[2];
    size_t rest = size - 3;
    size_t nuid = rest < sizeof(t.nti.nai.abtUid) ? rest : sizeof(t.nti.nai.abtUid);
    memcpy(t.nti.nai.abtUid, data + 3, nuid);
    size_t nats = rest - nuid < sizeof(t.nti.nai.abtAts) ? rest - nuid : sizeof(t.nti.nai.abtAts);
    memcpy(t.nti.nai.abtAts, data + 3 + nuid, nats);

    /* The no-I/O paths of card_read()/card_issue(): dev is never touched unless the
     * target classifies as a supported DESFire. */
    struct card_read out;
    if (classify(&t) != TARGET_DESFIRE) {
        static const struct card_keys keys = {.aid = 0xF5A0C1};
        int rc = card_read(NULL, &t, &keys, &out);
        if (rc == 0 && (out.uid_len == 0 || out.uid_len > HAL_UID_MAX))
            __builtin_trap();
        (void)card_issue(NULL, &t, &keys, &out);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool quiet;
    if (!quiet) {
        log_init("fuzz_card", LOG_LVL_ERR);
        quiet = true;
    }

    /* Credential file, against a fixed AID and against the AID it claims. */
    (void)card_parse_credential_file(data, size, 0xF5A0C1);
    if (size >= CRED_OFF_AID + 3) {
        uint32_t aid = (uint32_t)data[CRED_OFF_AID] | (uint32_t)data[CRED_OFF_AID + 1] << 8 |
                       (uint32_t)data[CRED_OFF_AID + 2] << 16;
        int rc = card_parse_credential_file(data, size, aid);
        /* Round trip: whatever parses must be exactly what card_make_credential_file()
         * builds from its fields. */
        if (rc == 0) {
            uint64_t issued = 0;
            uint8_t again[CARD_CRED_FILE_LEN];
            for (int i = 0; i < 8; i++)
                issued = issued << 8 | data[CRED_OFF_TIME + i];
            if (card_make_credential_file(aid, issued, again) != 0 ||
                memcmp(again, data, CARD_CRED_FILE_LEN) != 0)
                __builtin_trap();
        }
    }

    /* Real UID as text (NUL-terminated copy, as libfreefare returns it). */
    char *s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    uint8_t uid[DESFIRE_UID_LEN];
    (void)parse_uid_hex(s, uid);
    free(s);

    /* Key file text (card_keys_load() reads at most KEYFILE_MAX bytes). */
    if (size <= KEYFILE_MAX) {
        struct card_keys keys;
        char err[256];
        memset(&keys, 0, sizeof(keys));
        (void)parse_keys((const char *)data, size, "fuzz", &keys, err, sizeof(err));
    }

    fuzz_target(data, size);

    /* AN10922 with any message length: -EINVAL beyond 31 bytes, no overrun below. */
    if (size >= CARD_AES_KEY_LEN) {
        uint8_t key[CARD_AES_KEY_LEN];
        int rc = card_an10922_aes128(data, data + CARD_AES_KEY_LEN, size - CARD_AES_KEY_LEN, key);
        size_t mlen = size - CARD_AES_KEY_LEN;
        if ((rc == 0) != (mlen >= 1 && mlen <= 31))
            __builtin_trap();
    }
    return 0;
}
