/*
 * pn532_chip.c - the PN532 as its host sees it over HSU (UART).
 *
 * Host frames: [55 55 00..] 00 00 FF LEN LCS D4 CMD params DCS 00 (extended: FF FF
 * LENM LENL LCS). The chip answers each valid frame with ACK 00 00 FF 00 FF 00 and
 * then 00 00 FF LEN LCS D5 CMD+1 data DCS 00, or the error frame 00 00 FF 01 FF 7F 81
 * 00 for a command it does not know. An ACK from the host aborts a pending command.
 *
 * The chip sleeps in LowVbat mode at power-on and after PowerDown; bytes before a
 * 0x55 are lost while it sleeps.
 */
#include "tests/pn532/pn532_chip.h"

#include <stdio.h>
#include <string.h>

#include "tests/pn532/card.h"
#include "tests/pn532/emu.h"

#define REG_TXMODE     0x6302
#define REG_RXMODE     0x6303
#define REG_BITFRAMING 0x633D
#define REG_CONTROL    0x633C

#define PARAM_AUTO_RATS 0x10

#define FRAME_MAX        (265 + 16)
#define INTERBYTE_US     100000 /* a frame that stalls this long is dropped */
#define LIST_TRY_US      2000   /* one InListPassiveTarget activation attempt */
#define AUTOPOLL_UNIT_US 150000 /* InAutoPoll period unit */

enum parse_state {
    P_START, /* looking for 00 FF */
    P_LEN,
    P_LCS,
    P_XLENM,
    P_XLENL,
    P_XLCS,
    P_DATA,
    P_DCS,
};

struct pending {
    bool active;
    uint8_t cmd;
    uint8_t args[64];
    size_t nargs;
    int64_t deadline; /* -1: none (infinite retries) */
};

static struct {
    bool asleep;
    bool field;
    uint8_t params;
    uint8_t max_rty_passive;
    uint8_t regs[65536];
    struct card *card;
    bool target_active; /* Tg 1 exists */

    enum parse_state ps;
    uint8_t prev;
    size_t flen, fpos;
    uint8_t frame[FRAME_MAX];
    int64_t last_byte_us;

    struct pending pend;
    uint8_t last_reply[FRAME_MAX + 16];
    size_t last_reply_len;

    bool mute, truncate_next, corrupt_next, error_next;
    int status_next;
    int64_t slow_us;
} chip;

static const uint8_t ack_frame[] = {0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00};
static const uint8_t error_frame[] = {0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00};

static void try_pending(void);

static bool card_here(void)
{
    return chip.card && chip.card->in_field;
}

void chip_power_on(void)
{
    struct card *c = chip.card;
    memset(&chip, 0, sizeof(chip));
    chip.card = c;
    chip.asleep = true;
    chip.max_rty_passive = 0xFF;
    chip.status_next = -1;
    chip.regs[REG_TXMODE] = 0x80;
    chip.regs[REG_RXMODE] = 0x80;
    chip.regs[REG_CONTROL] = 0x10;
    chip.ps = P_START;
    if (c)
        card_power_down(c);
}

static void set_field(bool on)
{
    if (on == chip.field)
        return;
    chip.field = on;
    chip.target_active = false;
    emu_event("field %s", on ? "on" : "off");
    if (chip.card && chip.card->in_field) {
        if (on)
            card_power_up(chip.card);
        else
            card_power_down(chip.card);
    }
}

void chip_set_card(struct card *card)
{
    if (chip.card != card) {
        /* another card: the chip's target data no longer fits. The same card
         * leaving keeps it, and exchanges with it time out as on a real chip. */
        if (chip.card)
            card_power_down(chip.card);
        chip.target_active = false;
    }
    chip.card = card;
    if (card && card->in_field && chip.field)
        card_power_up(card);
    /* a waiting poll sees the new card at once */
    try_pending();
}

/* ---- frames to the host ---- */

static void send_reply(const uint8_t *payload, size_t len)
{
    uint8_t f[FRAME_MAX + 16];
    size_t n = 0;
    uint8_t sum = 0xD5;

    if (chip.error_next) {
        chip.error_next = false;
        emu_host_send(error_frame, sizeof(error_frame), chip.slow_us);
        return;
    }
    f[n++] = 0x00;
    f[n++] = 0x00;
    f[n++] = 0xFF;
    if (len + 1 <= 255) {
        f[n++] = (uint8_t)(len + 1);
        f[n++] = (uint8_t)(0x100 - (len + 1));
    } else {
        f[n++] = 0xFF;
        f[n++] = 0xFF;
        uint8_t hi = (uint8_t)((len + 1) >> 8), lo = (uint8_t)(len + 1);
        f[n++] = hi;
        f[n++] = lo;
        f[n++] = (uint8_t)(0x100 - ((hi + lo) & 0xFF));
    }
    f[n++] = 0xD5;
    for (size_t i = 0; i < len; i++) {
        f[n++] = payload[i];
        sum = (uint8_t)(sum + payload[i]);
    }
    f[n++] = (uint8_t)(0x100 - sum);
    f[n++] = 0x00;
    if (chip.corrupt_next) {
        chip.corrupt_next = false;
        f[n - 2] ^= 0x5A;
        emu_event("fault corrupt");
    }
    memcpy(chip.last_reply, f, n);
    chip.last_reply_len = n;
    if (chip.truncate_next) {
        chip.truncate_next = false;
        n /= 2;
        emu_event("fault truncate");
    }
    emu_trace_hex("reply", payload, len);
    emu_host_send(f, n, chip.slow_us);
}

static void send_error_frame(void)
{
    emu_host_send(error_frame, sizeof(error_frame), chip.slow_us);
}

/* ---- polling ---- */

/* Activates the card for InListPassiveTarget / InAutoPoll; out gets Tg + data. */
static size_t activate(bool auto_rats, uint8_t *out)
{
    char hex[2 * CARD_MAX_UID + 1];
    out[0] = 0x01; /* Tg */
    size_t n = 1 + card_activate(chip.card, auto_rats, out + 1);
    chip.target_active = true;
    emu_hex(chip.card->uid, chip.card->uid_len, hex);
    emu_event("selected %s %s%s", hex, card_kind(chip.card), chip.card->iso_dep ? " iso-dep" : "");
    return n;
}

static bool list_passive_target(bool final)
{
    const uint8_t *a = chip.pend.args;
    uint8_t brty = a[1];
    uint8_t r[64] = {0x4B, 0x00};
    size_t n = 2;

    if (brty == 0x00 && card_here() && chip.card->state != CARD_ACTIVE &&
        card_matches(chip.card, a + 2, chip.pend.nargs - 2)) {
        r[1] = 1;
        n += activate(chip.params & PARAM_AUTO_RATS, r + 2);
    } else if (brty == 0x00 && card_here() && chip.card->state == CARD_ACTIVE &&
               card_matches(chip.card, a + 2, chip.pend.nargs - 2)) {
        /* selecting again an active card: it goes through halt and wake-up */
        card_halt(chip.card);
        r[1] = 1;
        n += activate(chip.params & PARAM_AUTO_RATS, r + 2);
    } else if (!final) {
        return false;
    } else {
        emu_event("list none");
    }
    send_reply(r, n);
    return true;
}

static bool auto_poll(bool final)
{
    const uint8_t *a = chip.pend.args;
    uint8_t r[80] = {0x61, 0x00};
    size_t n = 2;

    if (card_here()) {
        for (size_t i = 2; i < chip.pend.nargs; i++) {
            uint8_t t = a[i];
            bool iso4 = chip.card->sak & 0x20;
            if (t == 0x20 && !iso4)
                continue;
            if (t != 0x00 && t != 0x10 && t != 0x20)
                continue;
            bool rats = t == 0x20 || (chip.params & PARAM_AUTO_RATS);
            if (chip.card->state == CARD_ACTIVE)
                card_halt(chip.card);
            r[1] = 1;
            r[2] = t;
            size_t len = activate(rats, r + 4);
            r[3] = (uint8_t)len;
            n = 4 + len;
            send_reply(r, n);
            return true;
        }
    }
    if (!final)
        return false;
    emu_event("poll none");
    send_reply(r, n);
    return true;
}

static void try_pending(void)
{
    if (!chip.pend.active)
        return;
    bool done = chip.pend.cmd == 0x4A ? list_passive_target(false) : auto_poll(false);
    if (done)
        chip.pend.active = false;
}

int64_t chip_deadline(void)
{
    return chip.pend.active ? chip.pend.deadline : -1;
}

void chip_timer(int64_t now_us)
{
    if (!chip.pend.active || chip.pend.deadline < 0 || now_us < chip.pend.deadline)
        return;
    chip.pend.active = false;
    if (chip.pend.cmd == 0x4A)
        list_passive_target(true);
    else
        auto_poll(true);
}

static void start_pending(uint8_t cmd, const uint8_t *args, size_t nargs, int64_t wait_us)
{
    chip.pend.active = true;
    chip.pend.cmd = cmd;
    memcpy(chip.pend.args, args, nargs);
    chip.pend.nargs = nargs;
    chip.pend.deadline = wait_us < 0 ? -1 : emu_now_us() + wait_us;
    try_pending();
}

static void cancel_pending(const char *why)
{
    if (chip.pend.active) {
        chip.pend.active = false;
        emu_event("abort %02X %s", chip.pend.cmd, why);
    }
}

/* ---- commands ---- */

static void cmd_data_exchange(uint8_t cmd, const uint8_t *a, size_t n)
{
    static uint8_t r[CARD_MAX_ANSWER + 2];
    size_t outlen = 0;
    uint8_t st;

    r[0] = (uint8_t)(cmd + 1);
    if (cmd == 0x40) {
        if (n < 1 || a[0] != 0x01 || !chip.target_active || !chip.card)
            st = 0x27; /* wrong context */
        else if (!chip.field)
            st = 0x01;
        else
            st = card_exchange(chip.card, a + 1, n - 1, r + 2, &outlen);
    } else {
        bool type_a = (chip.regs[REG_TXMODE] & 0x03) == 0 && (chip.regs[REG_RXMODE] & 0x03) == 0;
        bool crc = chip.regs[REG_TXMODE] & 0x80;
        bool bits = chip.regs[REG_BITFRAMING] & 0x07;
        if (!chip.field || !type_a || !crc || bits || !chip.card || !chip.target_active)
            st = 0x01; /* a type-A card does not answer type B, FeliCa or raw frames */
        else
            st = card_thru(chip.card, a, n, r + 2, &outlen);
    }
    if (chip.status_next >= 0) {
        emu_event("fault status %02X", chip.status_next);
        st = (uint8_t)chip.status_next;
        chip.status_next = -1;
    }
    r[1] = st;
    if (st != 0x00)
        outlen = 0;
    send_reply(r, 2 + outlen);
}

static void cmd_rf_configuration(const uint8_t *a, size_t n)
{
    if (n < 1) {
        send_error_frame();
        return;
    }
    switch (a[0]) {
    case 0x01:
        if (n >= 2)
            set_field(a[1] & 0x01);
        break;
    case 0x05:
        if (n >= 4)
            chip.max_rty_passive = a[3];
        break;
    default:
        break;
    }
    uint8_t r = 0x33;
    send_reply(&r, 1);
}

static void process(const uint8_t *d, size_t n)
{
    uint8_t cmd = d[0];
    const uint8_t *a = d + 1;
    size_t na = n - 1;
    uint8_t r[FRAME_MAX];
    size_t rn = 0;

    emu_trace_hex("cmd", d, n);
    if (chip.error_next) {
        chip.error_next = false;
        emu_event("fault error-frame %02X", cmd);
        send_error_frame();
        return;
    }
    r[rn++] = (uint8_t)(cmd + 1);
    switch (cmd) {
    case 0x00: /* Diagnose */
        if (na >= 1 && a[0] == 0x00) {
            memcpy(r + rn, a, na);
            rn += na;
            emu_event("open");
        } else if (na >= 1 && a[0] == 0x06) {
            r[rn++] = card_here() && chip.target_active ? 0x00 : 0x01;
        } else {
            r[rn++] = 0x00;
        }
        break;
    case 0x02: /* GetFirmwareVersion: PN532 v1.6, ISO14443A|B|ISO18092 */
        r[rn++] = 0x32;
        r[rn++] = 0x01;
        r[rn++] = 0x06;
        r[rn++] = 0x07;
        break;
    case 0x04: /* GetGeneralStatus */
        r[rn++] = 0x00;
        r[rn++] = chip.field;
        r[rn++] = chip.target_active;
        if (chip.target_active) {
            r[rn++] = 0x01;
            r[rn++] = 0x00;
            r[rn++] = 0x00;
            r[rn++] = 0x00;
        }
        r[rn++] = 0x00;
        break;
    case 0x06: /* ReadRegister */
        if (na == 0 || na % 2) {
            send_error_frame();
            return;
        }
        for (size_t i = 0; i < na; i += 2)
            r[rn++] = chip.regs[a[i] << 8 | a[i + 1]];
        break;
    case 0x08: /* WriteRegister */
        if (na == 0 || na % 3) {
            send_error_frame();
            return;
        }
        for (size_t i = 0; i < na; i += 3)
            chip.regs[a[i] << 8 | a[i + 1]] = a[i + 2];
        break;
    case 0x12: /* SetParameters */
        if (na != 1) {
            send_error_frame();
            return;
        }
        chip.params = a[0];
        break;
    case 0x14: /* SAMConfiguration */
        if (na < 1) {
            send_error_frame();
            return;
        }
        break;
    case 0x16: /* PowerDown */
        r[rn++] = 0x00;
        send_reply(r, rn);
        set_field(false);
        chip.asleep = true;
        emu_event("powerdown");
        return;
    case 0x32:
        cmd_rf_configuration(a, na);
        return;
    case 0x40: /* InDataExchange */
    case 0x42: /* InCommunicateThru */
        cmd_data_exchange(cmd, a, na);
        return;
    case 0x44: /* InDeselect */
    case 0x52: /* InRelease */
        if (chip.target_active && card_here())
            card_halt(chip.card);
        chip.target_active = false;
        emu_event("%s", cmd == 0x44 ? "deselect" : "release");
        r[rn++] = 0x00;
        break;
    case 0x54: /* InSelect */
        if (card_here() && chip.card->state == CARD_HALT) {
            uint8_t tmp[64];
            activate(chip.params & PARAM_AUTO_RATS, tmp);
            r[rn++] = 0x00;
        } else {
            r[rn++] = 0x27;
        }
        break;
    case 0x4A: { /* InListPassiveTarget MaxTg BrTy [InitiatorData] */
        if (na < 2 || na > sizeof(chip.pend.args)) {
            send_error_frame();
            return;
        }
        set_field(true);
        chip.target_active = false;
        emu_event("list %02X", a[1]);
        int64_t wait =
            chip.max_rty_passive == 0xFF ? -1 : (int64_t)(chip.max_rty_passive + 1) * LIST_TRY_US;
        start_pending(cmd, a, na, wait);
        return;
    }
    case 0x60: { /* InAutoPoll PollNr Period Type1 [Type2...] */
        if (na < 3 || na > 2 + 15 || a[1] < 1 || a[1] > 15) {
            send_error_frame();
            return;
        }
        set_field(true);
        chip.target_active = false;
        char hex[64];
        emu_hex(a, na, hex);
        emu_event("poll %s", hex);
        int64_t wait =
            a[0] == 0xFF ? -1 : (int64_t)a[0] * a[1] * AUTOPOLL_UNIT_US * (int64_t)(na - 2);
        start_pending(cmd, a, na, wait);
        return;
    }
    case 0x46:          /* InJumpForPSL */
    case 0x4E:          /* InPSL */
    case 0x50:          /* InATR */
    case 0x56:          /* InJumpForDEP */
        r[rn++] = 0x01; /* no NFC-DEP target */
        break;
    default:
        emu_event("unsupported %02X", cmd);
        send_error_frame();
        return;
    }
    send_reply(r, rn);
}

/* ---- parser ---- */

static void host_ack(void)
{
    if (chip.pend.active) {
        cancel_pending("host-ack");
        emu_host_drop_pending();
    } else {
        emu_event("ack");
        emu_host_drop_pending();
    }
}

static void frame_done(void)
{
    const uint8_t *d = chip.frame;
    size_t n = chip.flen;

    if (d[0] != 0xD4) {
        emu_event("bad-frame tfi %02X", d[0]);
        return;
    }
    if (n < 2) {
        emu_event("bad-frame empty");
        return;
    }
    cancel_pending("new-command");
    emu_host_drop_pending();
    emu_host_send(ack_frame, sizeof(ack_frame), emu_line_time_us(n + 7));
    process(d + 1, n - 1);
}

static void rx_byte(uint8_t b)
{
    int64_t now = emu_now_us();
    if (chip.ps != P_START && now - chip.last_byte_us > INTERBYTE_US) {
        emu_event("bad-frame stalled");
        chip.ps = P_START;
        chip.prev = 0xAA;
    }
    chip.last_byte_us = now;

    switch (chip.ps) {
    case P_START:
        if (chip.prev == 0x00 && b == 0xFF)
            chip.ps = P_LEN;
        chip.prev = b;
        return;
    case P_LEN:
        chip.flen = b;
        chip.ps = P_LCS;
        return;
    case P_LCS:
        chip.prev = 0xAA;
        chip.ps = P_START;
        if (chip.flen == 0x00 && b == 0xFF) {
            host_ack();
        } else if (chip.flen == 0xFF && b == 0x00) {
            emu_event("nack");
            if (chip.last_reply_len)
                emu_host_send(chip.last_reply, chip.last_reply_len, 0);
        } else if (chip.flen == 0xFF && b == 0xFF) {
            chip.ps = P_XLENM;
        } else if (((chip.flen + b) & 0xFF) != 0) {
            emu_event("bad-frame lcs");
        } else {
            chip.fpos = 0;
            chip.ps = P_DATA;
        }
        return;
    case P_XLENM:
        chip.flen = (size_t)b << 8;
        chip.ps = P_XLENL;
        return;
    case P_XLENL:
        chip.flen |= b;
        chip.ps = P_XLCS;
        return;
    case P_XLCS:
        if ((((chip.flen >> 8) + chip.flen + b) & 0xFF) != 0 || chip.flen == 0 ||
            chip.flen > FRAME_MAX) {
            emu_event("bad-frame lcs");
            chip.ps = P_START;
            chip.prev = 0xAA;
        } else {
            chip.fpos = 0;
            chip.ps = P_DATA;
        }
        return;
    case P_DATA:
        chip.frame[chip.fpos++] = b;
        if (chip.fpos == chip.flen)
            chip.ps = P_DCS;
        return;
    case P_DCS: {
        uint8_t sum = b;
        for (size_t i = 0; i < chip.flen; i++)
            sum = (uint8_t)(sum + chip.frame[i]);
        chip.ps = P_START;
        chip.prev = 0xAA;
        if (sum != 0)
            emu_event("bad-frame dcs");
        else
            frame_done();
        return;
    }
    }
}

void chip_rx(const uint8_t *buf, size_t len)
{
    emu_trace_hex("rx", buf, len);
    if (chip.mute)
        return;
    for (size_t i = 0; i < len; i++) {
        if (chip.asleep) {
            if (buf[i] == 0x55) {
                chip.asleep = false;
                chip.ps = P_START;
                chip.prev = 0xAA;
                emu_event("wakeup");
            }
            continue;
        }
        rx_byte(buf[i]);
    }
}

/* ---- faults and state ---- */

void chip_set_mute(bool mute)
{
    chip.mute = mute;
    if (mute) {
        chip.pend.active = false;
        emu_host_drop_pending();
    }
}

void chip_set_slow(int64_t delay_us)
{
    chip.slow_us = delay_us;
}

void chip_truncate_next(void)
{
    chip.truncate_next = true;
}

void chip_corrupt_next(void)
{
    chip.corrupt_next = true;
}

void chip_error_next(void)
{
    chip.error_next = true;
}

void chip_status_next(uint8_t status)
{
    chip.status_next = status;
}

void chip_describe(char *out, size_t len)
{
    char uid[2 * CARD_MAX_UID + 1] = "-";
    const char *cs = "none";
    if (chip.card) {
        emu_hex(chip.card->uid, chip.card->uid_len, uid);
        cs = !chip.card->in_field              ? "out"
             : chip.card->state == CARD_ACTIVE ? "active"
             : chip.card->state == CARD_HALT   ? "halt"
                                               : "idle";
    }
    snprintf(out, len, "power=%s field=%s params=%02X pending=%s card=%s:%s:%s",
             chip.asleep ? "asleep" : "awake", chip.field ? "on" : "off", chip.params,
             chip.pend.active ? (chip.pend.cmd == 0x4A ? "list" : "poll") : "none",
             chip.card ? card_kind(chip.card) : "none", uid, cs);
}
