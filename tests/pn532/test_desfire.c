/*
 * test_desfire.c - libnfc's pn532_uart driver and libfreefare 0.4.0 against pn532_emu.
 *
 * Each scenario starts its own emulator (emu_client.c), opens the reader through
 * the pty exactly as lockerd would (connstring pn532_uart:LINK), and waits only for
 * emulator events or library calls, never for time to pass.
 *
 * usage: test_desfire [-v] [SCENARIO...]   (PN532_EMU: path of the emulator)
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <freefare.h>
#include <nfc/nfc.h>

#include "tests/pn532/emu_client.h"

static int failures;
static int checks;
static bool verbose;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            failures++;                                                                            \
            fprintf(stderr, "  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                      \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        } else if (verbose) {                                                                      \
            fprintf(stderr, "  ok   %s\n", #cond);                                                 \
        }                                                                                          \
    } while (0)

#define REQUIRE(cond, ...)                                                                         \
    do {                                                                                           \
        int before_ = failures;                                                                    \
        CHECK(cond, __VA_ARGS__);                                                                  \
        if (failures != before_)                                                                   \
            goto out;                                                                              \
    } while (0)

static const uint8_t uid7[7] = {0x04, 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6};
#define UID7_HEX "04A1B2C3D4E5F6"
#define AID      0xF51CD0
#define AID_HEX  "F51CD0"
static const uint8_t k_master[16] = {0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
                                     0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF};
#define K_MASTER_HEX "00112233445566778899AABBCCDDEEFF"
static const uint8_t k_read[16] = {0x2B, 0x7E, 0x15, 0x16, 0x28, 0xAE, 0xD2, 0xA6,
                                   0xAB, 0xF7, 0x15, 0x88, 0x09, 0xCF, 0x4F, 0x3C};
#define K_READ_HEX "2B7E151628AED2A6ABF7158809CF4F3C"
static const char secret[] = "locker credential 0123456789ABC"; /* 31 + NUL = 32 bytes */
#define SECRET_HEX "6C6F636B65722063726564656E7469616C203031323334353637383941424300"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static const nfc_modulation mod_a = {.nmt = NMT_ISO14443A, .nbr = NBR_106};

struct rig {
    struct emu_client emu;
    nfc_context *ctx;
    nfc_device *pnd;
};

static int rig_open(struct rig *r)
{
    memset(r, 0, sizeof(*r));
    if (emu_start(&r->emu, NULL) < 0)
        return -1;
    nfc_init(&r->ctx);
    if (!r->ctx)
        return -1;
    r->pnd = nfc_open(r->ctx, r->emu.connstring);
    if (!r->pnd) {
        fprintf(stderr, "nfc_open %s failed\n", r->emu.connstring);
        return -1;
    }
    if (nfc_initiator_init(r->pnd) < 0) {
        nfc_perror(r->pnd, "nfc_initiator_init");
        return -1;
    }
    return 0;
}

static void rig_close(struct rig *r)
{
    if (r->pnd)
        nfc_close(r->pnd);
    if (r->ctx)
        nfc_exit(r->ctx);
    emu_stop(&r->emu);
}

/* Endless InAutoPoll: returns when a card is there. */
static int poll_once(struct rig *r, nfc_target *nt)
{
    return nfc_initiator_poll_target(r->pnd, &mod_a, 1, 0xFF, 1, nt);
}

/* poll -> deselect -> libfreefare tag -> connect, as lockerd does. */
static MifareTag connect_desfire(struct rig *r)
{
    nfc_target nt;
    if (poll_once(r, &nt) != 1)
        return NULL;
    if (nfc_initiator_deselect_target(r->pnd) < 0)
        return NULL;
    MifareTag tag = freefare_tag_new(r->pnd, nt.nti.nai);
    if (!tag)
        return NULL;
    if (freefare_get_tag_type(tag) != DESFIRE || mifare_desfire_connect(tag) < 0) {
        freefare_free_tag(tag);
        return NULL;
    }
    return tag;
}

static int auth_aes(MifareTag tag, uint8_t keyno, const uint8_t k[16])
{
    MifareDESFireKey key = mifare_desfire_aes_key_new((uint8_t *)k);
    int rc = mifare_desfire_authenticate_aes(tag, keyno, key);
    mifare_desfire_key_free(key);
    return rc;
}

static int select_app(MifareTag tag, uint32_t aid)
{
    MifareDESFireAID a = mifare_desfire_aid_new(aid);
    int rc = mifare_desfire_select_application(tag, a);
    free(a);
    return rc;
}

/* ---- scenarios ---- */

static void t_uid_card(void)
{
    struct rig r;
    nfc_target nt;
    REQUIRE(rig_open(&r) == 0, "rig");
    REQUIRE(emu_cmd(&r.emu, "card uid 0A0B0C0D") == 0, "card");
    CHECK(poll_once(&r, &nt) == 1, "poll");
    CHECK(nt.nti.nai.szUidLen == 4 && memcmp(nt.nti.nai.abtUid, "\x0A\x0B\x0C\x0D", 4) == 0, "uid");
    CHECK(nt.nti.nai.btSak == 0x08 && nt.nti.nai.abtAtqa[1] == 0x04, "sak/atqa");
    CHECK(nfc_initiator_target_is_present(r.pnd, &nt) == 0, "present");
    REQUIRE(emu_cmd(&r.emu, "remove") == 0, "remove");
    CHECK(nfc_initiator_target_is_present(r.pnd, &nt) == NFC_ETGRELEASED, "gone");

    /* Ultralight-style 7-byte UID: presence check by READ */
    REQUIRE(emu_cmd(&r.emu, "card uid 04112233445566") == 0, "card");
    CHECK(poll_once(&r, &nt) == 1, "poll");
    CHECK(nt.nti.nai.szUidLen == 7 && nt.nti.nai.btSak == 0x00, "ultralight");
    CHECK(nfc_initiator_target_is_present(r.pnd, &nt) == 0, "present");
    REQUIRE(emu_cmd(&r.emu, "remove") == 0, "remove");
    CHECK(nfc_initiator_target_is_present(r.pnd, &nt) == NFC_ETGRELEASED, "gone");
out:
    rig_close(&r);
}

struct poller {
    struct rig *r;
    nfc_target nt;
    int rc;
};

static void *poll_thread(void *arg)
{
    struct poller *p = arg;
    p->rc = poll_once(p->r, &p->nt);
    return NULL;
}

static void t_poll_waits_and_aborts(void)
{
    struct rig r;
    pthread_t th;
    struct poller p = {.r = &r};
    REQUIRE(rig_open(&r) == 0, "rig");

    /* a poll blocks in the chip until a card comes */
    REQUIRE(pthread_create(&th, NULL, poll_thread, &p) == 0, "thread");
    CHECK(emu_wait(&r.emu, "poll ", EMU_DEFAULT_TIMEOUT_MS, NULL, 0) == 0, "poll started");
    CHECK(emu_cmd(&r.emu, "card desfire " UID7_HEX) == 0, "card");
    pthread_join(th, NULL);
    CHECK(p.rc == 1, "poll rc %d", p.rc);
    CHECK(p.nt.nti.nai.btSak == 0x20 && p.nt.nti.nai.szAtsLen == 5 &&
              memcmp(p.nt.nti.nai.abtAts, "\x75\x77\x81\x02\x80", 5) == 0,
          "DESFire SAK/ATS");
    CHECK(p.nt.nti.nai.szUidLen == 7 && memcmp(p.nt.nti.nai.abtUid, uid7, 7) == 0, "uid");
    CHECK(nfc_initiator_target_is_present(r.pnd, &p.nt) == 0, "present (R(NAK))");

    /* nfc_abort_command ends a waiting poll; the device stays usable */
    REQUIRE(emu_cmd(&r.emu, "remove") == 0, "remove");
    CHECK(nfc_initiator_target_is_present(r.pnd, &p.nt) == NFC_ETGRELEASED, "gone");
    emu_skip(&r.emu);
    REQUIRE(pthread_create(&th, NULL, poll_thread, &p) == 0, "thread");
    CHECK(emu_wait(&r.emu, "poll ", EMU_DEFAULT_TIMEOUT_MS, NULL, 0) == 0, "poll started");
    /* libnfc race: an abort before the driver sits in select() on its abort pipe is
     * lost (uart_receive reads the pipe's fd at entry), so repeat until it lands */
    int tries = 0;
    for (;;) {
        struct timespec ts;
        nfc_abort_command(r.pnd);
        tries++;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        if (pthread_timedjoin_np(th, NULL, &ts) == 0 || tries == 50)
            break;
    }
    CHECK(tries < 50, "abort never landed");
    CHECK(p.rc == NFC_EOPABORTED, "abort rc %d", p.rc);
    if (tries > 1)
        fprintf(stderr, "  info: nfc_abort_command needed %d calls\n", tries);
    CHECK(emu_wait(&r.emu, "abort 60 host-ack", EMU_DEFAULT_TIMEOUT_MS, NULL, 0) == 0,
          "chip saw the abort");
    REQUIRE(emu_cmd(&r.emu, "reinsert") == 0, "reinsert");
    CHECK(poll_once(&r, &p.nt) == 1, "poll after abort");
out:
    rig_close(&r);
}

/* The station's tap: select the application, AES auth with the read key, read the
 * credential file enciphered, get the real UID. */
static int station_tap(struct rig *r, const uint8_t key[16], uint8_t *data, char **uid,
                       int *picc_error)
{
    int rc = -1;
    *uid = NULL;
    *picc_error = 0;
    MifareTag tag = connect_desfire(r);
    if (!tag)
        return -2;
    if (select_app(tag, AID) < 0)
        goto done;
    if (auth_aes(tag, 1, key) < 0) {
        *picc_error = mifare_desfire_last_picc_error(tag);
        goto done;
    }
    if (mifare_desfire_read_data(tag, 1, 0, 32, data) != 32)
        goto done;
    if (mifare_desfire_get_card_uid(tag, uid) < 0)
        goto done;
    rc = 0;
done:
    mifare_desfire_disconnect(tag);
    freefare_free_tag(tag);
    return rc;
}

#define ISSUED_CARD                                                                                \
    "card desfire " UID7_HEX " app=" AID_HEX " settings=0B key=aes:" K_MASTER_HEX                  \
    " key=aes:" K_READ_HEX " file=1:enc:1000:" SECRET_HEX

static void t_read_enciphered(void)
{
    struct rig r;
    uint8_t data[64] = {0};
    char *uid = NULL;
    int perr;
    REQUIRE(rig_open(&r) == 0, "rig");
    REQUIRE(emu_cmd(&r.emu, ISSUED_CARD) == 0, "card");

    CHECK(station_tap(&r, k_read, data, &uid, &perr) == 0, "tap with the right key");
    CHECK(memcmp(data, secret, 32) == 0, "file content");
    CHECK(uid && strcmp(uid, "04a1b2c3d4e5f6") == 0, "real uid %s", uid ? uid : "(null)");
    CHECK(emu_seen(&r.emu, "auth ok 1 aes ev1"), "emulator saw the auth");
    CHECK(emu_seen(&r.emu, "desfire read file 1 enc"), "enciphered read");
    free(uid);

    emu_skip(&r.emu);
    CHECK(station_tap(&r, k_master, data, &uid, &perr) == -1, "tap with a wrong key");
    CHECK(perr == AUTHENTICATION_ERROR, "picc error %02X", perr);
    CHECK(emu_seen(&r.emu, "auth fail 1"), "emulator saw the failure");
    free(uid);

    /* the same card with random UID: anticollision UID is random, GetCardUID real */
    REQUIRE(emu_cmd(&r.emu, ISSUED_CARD " random-uid") == 0, "card");
    nfc_target nt;
    CHECK(poll_once(&r, &nt) == 1 && nt.nti.nai.szUidLen == 4 && nt.nti.nai.abtUid[0] == 0x08,
          "random id");
    CHECK(station_tap(&r, k_read, data, &uid, &perr) == 0, "tap random-uid card");
    CHECK(uid && strcmp(uid, "04a1b2c3d4e5f6") == 0, "real uid %s", uid ? uid : "(null)");
    free(uid);
out:
    rig_close(&r);
}

/* Issuing a factory card the way an issuing tool would, then reading it back. */
static void t_issue_factory_card(void)
{
    struct rig r;
    MifareTag tag = NULL;
    uint8_t zero[16] = {0}, data[128], back[128];
    REQUIRE(rig_open(&r) == 0, "rig");
    REQUIRE(emu_cmd(&r.emu, "card desfire " UID7_HEX) == 0, "card");
    tag = connect_desfire(&r);
    REQUIRE(tag, "connect");

    struct mifare_desfire_version_info vi;
    CHECK(mifare_desfire_get_version(tag, &vi) == 0, "GetVersion");
    CHECK(memcmp(vi.uid, uid7, 7) == 0 && vi.hardware.vendor_id == 0x04, "version info");

    /* PICC master key: factory DES zero key, legacy authentication */
    MifareDESFireKey des0 = mifare_desfire_des_key_new(zero);
    CHECK(mifare_desfire_authenticate(tag, 0, des0) == 0, "legacy DES auth");
    MifareDESFireAID *aids = NULL;
    size_t naids = 99;
    CHECK(mifare_desfire_get_application_ids(tag, &aids, &naids) == 0 && naids == 0, "no apps");
    if (aids)
        mifare_desfire_free_application_ids(aids);

    MifareDESFireAID aid = mifare_desfire_aid_new(AID);
    CHECK(mifare_desfire_create_application_aes(tag, aid, 0x0B, 2) == 0, "CreateApplication");
    CHECK(mifare_desfire_select_application(tag, aid) == 0, "select");
    CHECK(auth_aes(tag, 0, zero) == 0, "AES auth, default key 0");
    uint8_t settings = 0, maxkeys = 0;
    CHECK(mifare_desfire_get_key_settings(tag, &settings, &maxkeys) == 0 && settings == 0x0B &&
              maxkeys == 2,
          "GetKeySettings %02X %u", settings, maxkeys);

    MifareDESFireKey kz = mifare_desfire_aes_key_new(zero);
    MifareDESFireKey km = mifare_desfire_aes_key_new((uint8_t *)k_master);
    MifareDESFireKey kr = mifare_desfire_aes_key_new((uint8_t *)k_read);
    CHECK(mifare_desfire_change_key(tag, 1, kr, kz) == 0, "ChangeKey 1");
    CHECK(mifare_desfire_change_key(tag, 0, km, kz) == 0, "ChangeKey 0 (own key)");
    CHECK(auth_aes(tag, 0, zero) < 0, "old key 0 refused");
    CHECK(auth_aes(tag, 0, k_master) == 0, "new key 0");

    CHECK(mifare_desfire_create_std_data_file(tag, 1, MDCM_ENCIPHERED, MDAR(1, 0, 0, 0), 32) == 0,
          "CreateStdDataFile enc");
    CHECK(mifare_desfire_create_std_data_file(tag, 2, MDCM_MACED, MDAR(1, 0, 0, 0), 100) == 0,
          "CreateStdDataFile mac");
    CHECK(mifare_desfire_create_std_data_file(tag, 3, MDCM_PLAIN, MDAR(MDAR_FREE, 0, 0, 0), 100) ==
              0,
          "CreateStdDataFile plain");
    CHECK(mifare_desfire_write_data(tag, 1, 0, 32, secret) == 32, "WriteData enc");
    for (int i = 0; i < 100; i++)
        data[i] = (uint8_t)(i * 7 + 1);
    CHECK(mifare_desfire_write_data(tag, 2, 0, 100, data) == 100, "WriteData mac, 3 frames");
    CHECK(mifare_desfire_write_data(tag, 3, 0, 100, data) == 100, "WriteData plain");
    CHECK(mifare_desfire_get_version(tag, &vi) == 0 && memcmp(vi.uid, uid7, 7) == 0,
          "GetVersion with CMAC after AES auth");
    uint8_t *files = NULL;
    size_t nfiles = 0;
    CHECK(mifare_desfire_get_file_ids(tag, &files, &nfiles) == 0 && nfiles == 3, "file ids");
    free(files);

    /* PICC master key from DES to AES */
    CHECK(mifare_desfire_select_application(tag, NULL) == 0, "select PICC");
    CHECK(mifare_desfire_authenticate(tag, 0, des0) == 0, "legacy DES auth");
    CHECK(mifare_desfire_change_key(tag, 0, km, des0) == 0, "PICC key to AES");
    CHECK(auth_aes(tag, 0, k_master) == 0, "AES auth on the PICC");
    aids = NULL;
    CHECK(mifare_desfire_get_application_ids(tag, &aids, &naids) == 0 && naids == 1 &&
              mifare_desfire_aid_get_aid(aids[0]) == AID,
          "one app");
    if (aids)
        mifare_desfire_free_application_ids(aids);
    free(aid);
    mifare_desfire_key_free(des0);
    mifare_desfire_key_free(kz);
    mifare_desfire_key_free(km);
    mifare_desfire_key_free(kr);
    mifare_desfire_disconnect(tag);
    freefare_free_tag(tag);
    tag = NULL;

    /* the card leaves and comes back: a station tap works on what was written */
    REQUIRE(emu_cmd(&r.emu, "remove") == 0, "remove");
    REQUIRE(emu_cmd(&r.emu, "reinsert") == 0, "reinsert");
    char *uid = NULL;
    int perr;
    uint8_t cred[64];
    CHECK(station_tap(&r, k_read, cred, &uid, &perr) == 0 && memcmp(cred, secret, 32) == 0,
          "station tap on the issued card");
    free(uid);

    tag = connect_desfire(&r);
    REQUIRE(tag, "connect");
    CHECK(select_app(tag, AID) == 0, "select");
    memset(back, 0, sizeof(back));
    CHECK(mifare_desfire_read_data(tag, 3, 0, 100, back) == 100 && memcmp(back, data, 100) == 0,
          "plain read without auth");
    CHECK(auth_aes(tag, 1, k_read) == 0, "auth key 1");
    memset(back, 0, sizeof(back));
    CHECK(mifare_desfire_read_data(tag, 2, 0, 100, back) == 100 && memcmp(back, data, 100) == 0,
          "MACed read, 2 frames");
    memset(back, 0, sizeof(back));
    CHECK(mifare_desfire_read_data(tag, 3, 10, 50, back) == 50 && memcmp(back, data + 10, 50) == 0,
          "plain read with CMAC after auth");
    CHECK(mifare_desfire_write_data(tag, 1, 0, 4, "nope") < 0, "key 1 may not write");
out:
    if (tag) {
        mifare_desfire_disconnect(tag);
        freefare_free_tag(tag);
    }
    rig_close(&r);
}

static void t_faults(void)
{
    struct rig r;
    MifareTag tag = NULL;
    REQUIRE(rig_open(&r) == 0, "rig");
    REQUIRE(emu_cmd(&r.emu, ISSUED_CARD) == 0, "card");

    /* card pulled between the two authentication steps */
    tag = connect_desfire(&r);
    REQUIRE(tag, "connect");
    CHECK(select_app(tag, AID) == 0, "select");
    REQUIRE(emu_cmd(&r.emu, "pull-during-auth") == 0, "pull");
    errno = 0;
    CHECK(auth_aes(tag, 1, k_read) < 0 && errno == EIO, "auth fails with EIO");
    CHECK(emu_seen(&r.emu, "removed pull-during-auth"), "emulator pulled the card");
    CHECK(nfc_initiator_target_is_present(r.pnd, NULL) == NFC_ETGRELEASED, "gone");
    freefare_free_tag(tag);
    tag = NULL;

    /* a truncated reply: the command times out, the next one works */
    REQUIRE(emu_cmd(&r.emu, "reinsert") == 0, "reinsert");
    nfc_target nt;
    CHECK(poll_once(&r, &nt) == 1, "poll");
    REQUIRE(emu_cmd(&r.emu, "truncate") == 0, "truncate");
    uint8_t get_version[] = {0x90, 0x60, 0x00, 0x00, 0x00}, rx[64];
    CHECK(nfc_initiator_transceive_bytes(r.pnd, get_version, sizeof(get_version), rx, sizeof(rx),
                                         500) == NFC_ETIMEOUT,
          "a truncated reply times out");
    CHECK(nfc_initiator_transceive_bytes(r.pnd, get_version, sizeof(get_version), rx, sizeof(rx),
                                         500) == 9,
          "the next exchange works");
    /* (nfc_initiator_target_is_present() would hide it: it retries once) */
    CHECK(poll_once(&r, &nt) == 1, "poll after the truncated reply");

    /* garbage on the line: the driver flushes its input before each command, but the
     * pty may hand the bytes over just after that flush, so one command may fail */
    REQUIRE(emu_cmd(&r.emu, "garbage 40") == 0, "garbage");
    int rc = poll_once(&r, &nt);
    CHECK(rc == 1 || rc == NFC_EIO, "poll after garbage: %d", rc);
    CHECK(poll_once(&r, &nt) == 1, "poll after garbage");

    /* corrupt checksum, then the error frame */
    REQUIRE(emu_cmd(&r.emu, "corrupt") == 0, "corrupt");
    CHECK(poll_once(&r, &nt) == NFC_EIO, "bad DCS is NFC_EIO");
    REQUIRE(emu_cmd(&r.emu, "error-frame") == 0, "error-frame");
    CHECK(poll_once(&r, &nt) == NFC_EIO, "error frame is NFC_EIO");
    CHECK(poll_once(&r, &nt) == 1, "poll works again");

    /* 115200 baud pacing: a full tap takes the line time a real reader needs */
    REQUIRE(emu_cmd(&r.emu, "baud on") == 0, "baud");
    uint8_t data[64];
    char *uid = NULL;
    int perr;
    double t0 = now_s();
    CHECK(station_tap(&r, k_read, data, &uid, &perr) == 0, "tap at 115200 baud");
    double dt = now_s() - t0;
    free(uid);
    CHECK(dt > 0.020, "a tap at 115200 baud took only %.1f ms", dt * 1000);
    fprintf(stderr, "  info: poll+select+auth+read+uid at 115200 baud: %.1f ms\n", dt * 1000);
    REQUIRE(emu_cmd(&r.emu, "baud off") == 0, "baud");

    /* a slow reader still answers */
    REQUIRE(emu_cmd(&r.emu, "slow 50") == 0, "slow");
    t0 = now_s();
    CHECK(poll_once(&r, &nt) == 1, "slow poll");
    CHECK(now_s() - t0 >= 0.050, "slow reply came early");
    REQUIRE(emu_cmd(&r.emu, "slow 0") == 0, "slow");

    /* the reader is unplugged during a poll: libnfc sees I/O errors; plugged again, it
     * reopens */
    REQUIRE(emu_cmd(&r.emu, "remove") == 0, "remove");
    emu_skip(&r.emu);
    struct poller p = {.r = &r};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, poll_thread, &p) == 0, "thread");
    CHECK(emu_wait(&r.emu, "poll ", EMU_DEFAULT_TIMEOUT_MS, NULL, 0) == 0, "poll started");
    REQUIRE(emu_cmd(&r.emu, "unplug") == 0, "unplug");
    pthread_join(th, NULL);
    CHECK(p.rc == NFC_EIO, "a poll on a vanished reader ends with NFC_EIO: %d", p.rc);
    CHECK(poll_once(&r, &nt) < 0, "poll on an unplugged reader fails");
    REQUIRE(emu_cmd(&r.emu, "reinsert") == 0, "reinsert");
    nfc_close(r.pnd);
    r.pnd = NULL;
    CHECK(nfc_open(r.ctx, r.emu.connstring) == NULL, "no reader to open");
    emu_skip(&r.emu);
    REQUIRE(emu_cmd(&r.emu, "plug") == 0, "plug");
    r.pnd = nfc_open(r.ctx, r.emu.connstring);
    REQUIRE(r.pnd, "reopen");
    CHECK(nfc_initiator_init(r.pnd) == 0, "init");
    CHECK(poll_once(&r, &nt) == 1, "poll after replug");

    /* a muted chip never ACKs: commands with a timeout fail, the rest block (lockerd
     * needs its own watchdog) */
    REQUIRE(emu_cmd(&r.emu, "mute on") == 0, "mute");
    CHECK(nfc_initiator_target_is_present(r.pnd, NULL) < 0, "muted chip");
    REQUIRE(emu_cmd(&r.emu, "mute off") == 0, "mute");
out:
    if (tag)
        freefare_free_tag(tag);
    rig_close(&r);
}

/* DES/2K3DES (legacy 0x0A) and 3K3DES (ISO 0x1A) applications: enciphered and MACed
 * reads, enciphered writes, the card UID. */
static void t_other_ciphers(void)
{
    struct rig r;
    MifareTag tag = NULL;
    uint8_t back[64], d2k[16], d3k[24];
    char *uid = NULL;
    for (int i = 0; i < 16; i++)
        d2k[i] = (uint8_t)(0x10 + i);
    for (int i = 0; i < 24; i++)
        d3k[i] = (uint8_t)(0x40 + 3 * i);
    REQUIRE(rig_open(&r) == 0, "rig");
    REQUIRE(emu_cmd(&r.emu,
                    "card desfire " UID7_HEX " app=000001 crypto=des key=des:0000000000000000"
                    " key=3des:101112131415161718191A1B1C1D1E1F file=1:enc:1000:" SECRET_HEX
                    " file=2:mac:1000:" SECRET_HEX " file=3:enc:1111:size=40"
                    " app=000002 crypto=3k3des key=3k3des:"
                    "404346494C4F5255585B5E6164676A6D707376797C7F8285"
                    " file=1:enc:0000:" SECRET_HEX) == 0,
            "card");
    tag = connect_desfire(&r);
    REQUIRE(tag, "connect");

    CHECK(select_app(tag, 1) == 0, "select DES app");
    MifareDESFireKey k2 = mifare_desfire_3des_key_new(d2k);
    CHECK(mifare_desfire_authenticate(tag, 1, k2) == 0, "legacy 2K3DES auth");
    memset(back, 0, sizeof(back));
    CHECK(mifare_desfire_read_data(tag, 1, 0, 32, back) == 32 && memcmp(back, secret, 32) == 0,
          "legacy enciphered read");
    memset(back, 0, sizeof(back));
    CHECK(mifare_desfire_read_data(tag, 2, 0, 30, back) == 30 && memcmp(back, secret, 30) == 0,
          "legacy MACed read");
    CHECK(mifare_desfire_write_data(tag, 3, 0, 32, secret) == 32, "legacy enciphered write");
    memset(back, 0, sizeof(back));
    CHECK(mifare_desfire_read_data(tag, 3, 0, 32, back) == 32 && memcmp(back, secret, 32) == 0,
          "read back");
    CHECK(mifare_desfire_get_card_uid(tag, &uid) == 0 && uid && strcmp(uid, "04a1b2c3d4e5f6") == 0,
          "GetCardUID in a legacy session");
    free(uid);
    uid = NULL;
    mifare_desfire_key_free(k2);

    CHECK(select_app(tag, 2) == 0, "select 3K3DES app");
    MifareDESFireKey k3 = mifare_desfire_3k3des_key_new(d3k);
    CHECK(mifare_desfire_authenticate_iso(tag, 0, k3) == 0, "ISO 3K3DES auth");
    memset(back, 0, sizeof(back));
    CHECK(mifare_desfire_read_data(tag, 1, 0, 32, back) == 32 && memcmp(back, secret, 32) == 0,
          "3K3DES enciphered read");
    CHECK(mifare_desfire_get_card_uid(tag, &uid) == 0 && uid && strcmp(uid, "04a1b2c3d4e5f6") == 0,
          "GetCardUID in a 3K3DES session");
    free(uid);
    mifare_desfire_key_free(k3);
out:
    if (tag) {
        mifare_desfire_disconnect(tag);
        freefare_free_tag(tag);
    }
    rig_close(&r);
}

/* Timeouts of finite polls and of libnfc's 300 ms select. */
static void t_poll_timeouts(void)
{
    struct rig r;
    nfc_target nt;
    REQUIRE(rig_open(&r) == 0, "rig");
    double t0 = now_s();
    /* PollNr 1 x Period 1 (150 ms) x 2 types (ISO14443-4A and MIFARE) */
    CHECK(nfc_initiator_poll_target(r.pnd, &mod_a, 1, 1, 1, &nt) == 0, "no card");
    double dt = now_s() - t0;
    CHECK(dt >= 0.29 && dt < 1.0, "finite InAutoPoll took %.0f ms", dt * 1000);
    CHECK(emu_wait(&r.emu, "poll none", EMU_DEFAULT_TIMEOUT_MS, NULL, 0) == 0, "poll none");

    /* infinite select after nfc_initiator_init: libnfc gives up after 300 ms, the
     * chip keeps waiting until the next command replaces it */
    CHECK(nfc_initiator_select_passive_target(r.pnd, mod_a, NULL, 0, &nt) < 0, "timeout");
    CHECK(nfc_device_set_property_bool(r.pnd, NP_INFINITE_SELECT, true) == 0, "next command");
    CHECK(emu_wait(&r.emu, "abort 4A new-command", EMU_DEFAULT_TIMEOUT_MS, NULL, 0) == 0,
          "the next command ended the abandoned select");
    REQUIRE(emu_cmd(&r.emu, "card uid 0A0B0C0D") == 0, "card");
    CHECK(poll_once(&r, &nt) == 1, "poll after the abandoned select");
out:
    rig_close(&r);
}

/* libnfc calls abort() when a data exchange status byte has bit 0x80 set
 * (pn53x.c:235); a child process shows the hazard lockerd must contain. */
static void t_status_abort_hazard(void)
{
    struct rig r;
    REQUIRE(rig_open(&r) == 0, "rig");
    REQUIRE(emu_cmd(&r.emu, ISSUED_CARD) == 0, "card");
    nfc_target nt;
    REQUIRE(poll_once(&r, &nt) == 1, "poll");
    REQUIRE(emu_cmd(&r.emu, "next-status 80") == 0, "next-status");
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGABRT, SIG_DFL);
        uint8_t apdu[] = {0x90, 0x60, 0x00, 0x00, 0x00}, rx[64];
        nfc_initiator_transceive_bytes(r.pnd, apdu, sizeof(apdu), rx, sizeof(rx), 1000);
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "libnfc aborted (status %d)", st);
out:
    rig_close(&r);
}

static const struct {
    const char *name;
    void (*fn)(void);
} scenarios[] = {
    {"uid_card", t_uid_card},
    {"poll_waits_and_aborts", t_poll_waits_and_aborts},
    {"read_enciphered", t_read_enciphered},
    {"issue_factory_card", t_issue_factory_card},
    {"other_ciphers", t_other_ciphers},
    {"poll_timeouts", t_poll_timeouts},
    {"faults", t_faults},
    {"status_abort_hazard", t_status_abort_hazard},
};

int main(int argc, char **argv)
{
    int first = 1;
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        verbose = true;
        first = 2;
    }
    for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
        bool run = first == argc;
        for (int a = first; a < argc; a++)
            run = run || strcmp(argv[a], scenarios[i].name) == 0;
        if (!run)
            continue;
        int before = failures;
        double t0 = now_s();
        scenarios[i].fn();
        printf("%-24s %s (%.0f ms)\n", scenarios[i].name, failures == before ? "PASS" : "FAIL",
               (now_s() - t0) * 1000);
        fflush(stdout);
    }
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
