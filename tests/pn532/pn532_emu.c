/*
 * pn532_emu - a PN532 NFC reader on a pseudo-terminal, for tests that run libnfc's
 * own pn532_uart driver (connstring pn532_uart:PATH) against emulated cards.
 *
 * USAGE
 *   pn532_emu [--link PATH] [-v]
 *     --link PATH  keep a symlink PATH -> the pty slave (re-created on "plug")
 *     -v           trace every byte and command on stderr
 *
 * The emulator reads control commands on stdin, one per line, and writes events on
 * stdout, one per line (line-buffered). Every control command is answered by
 * "ok <command>" or "error <message>", so a test can send a command and wait for its
 * answer; no test needs to sleep. End of stdin is the same as "quit".
 *
 * CONTROL COMMANDS
 *   card uid HEX [atqa=HHHH] [sak=HH]
 *       A UID-only card enters the field (replacing any card there). 4-byte UID:
 *       MIFARE Classic 1K (ATQA 00 04, SAK 08); 7- or 10-byte UID: MIFARE Ultralight
 *       (ATQA 00 44, SAK 00; pages 0-15 readable with 0x30, writable with 0xA2).
 *   card desfire HEX7 [option...]
 *       A MIFARE DESFire EV1 enters the field (ATQA 03 44, SAK 20, ATS 06 75 77 81 02
 *       80). Without options it is factory fresh: no applications, PICC master key
 *       DES 00..00, PICC key settings 0F. Options, applied in order:
 *         random-uid            anticollision shows 08 xx xx xx (new at each power-up,
 *                               ATQA 03 04); GetCardUID returns the real UID
 *         picc-key=TYPE:HEX     PICC master key
 *         picc-settings=HH      PICC key settings
 *         app=AAAAAA            new application; AID as the number given to
 *                               mifare_desfire_aid_new(), e.g. app=F51CD0
 *                               (sent LSB first on the wire); settings 0F, AES
 *         crypto=aes|des|3k3des key type of the application (before its keys)
 *         settings=HH           key settings of the application
 *         key=TYPE:HEX[:VER]    next key of the application (key 0, then 1, ...);
 *                               VER: AES key version (hex byte)
 *         keys=N                number of keys (keys not given are all zeros)
 *         file=NO:COMM:ACCESS:DATA
 *                               standard data file NO (0-31); COMM plain|mac|enc;
 *                               ACCESS 4 hex digits R W RW CAR as in libfreefare's
 *                               MDAR() (e.g. 1000: read with key 1, write, read-write
 *                               and change with key 0; E = free, F = never); DATA hex
 *                               (its length is the file size) or size=N (zeros)
 *         @PATH                 read more options from PATH (whitespace-separated,
 *                               # starts a comment)
 *       TYPE:HEX is des:16hex, 3des:32hex (2K3DES), 3k3des:48hex or aes:32hex.
 *       The options mirror what mifare_desfire_create_application_aes(),
 *       mifare_desfire_change_key() and mifare_desfire_create_std_data_file() do.
 *   remove              the card leaves the field (it is kept for "reinsert")
 *   reinsert            the last card enters the field again, its data as it was
 *   pull-during-auth    the DESFire card leaves the field right after answering the
 *                       first step of its next authentication (0x0A, 0x1A or 0xAA)
 *   unplug              close the pty (and remove the --link symlink): the reader is
 *                       gone, the host's reads fail
 *   plug                open a new pty (new "ready" event, symlink re-created); the
 *                       chip starts asleep as after power-on
 *   mute on|off         the chip stops (resumes) answering anything, as if unpowered
 *   garbage [N]         send N random bytes to the host now (default 32)
 *   truncate            the next reply frame stops halfway
 *   corrupt             the next reply frame has a wrong data checksum
 *   error-frame         the next command is answered by ACK + the error frame
 *   next-status HH      the next InDataExchange/InCommunicateThru reply carries status
 *                       HH (0x80 and up make libnfc call abort(): pn53x.c:235)
 *   slow MS             every reply frame leaves MS ms after its command (0: off)
 *   baud on|off         pace all traffic at 115200 baud: 86.8 us per byte, on an
 *                       absolute schedule: a byte reaches the host when its stop bit
 *                       is through, never earlier; a late wake-up hands over every
 *                       byte that is due at once, so delays do not add up
 *   status              one "status ..." event with the chip and card state, and the
 *                       UART counters: rx=N tx=N (bytes received and sent so far),
 *                       late_us=N (how much later than the line schedule the ends of
 *                       reply bursts were handed over, in total: the emulator's own
 *                       delay, which a real chip does not have), entered_ns=T
 *                       (CLOCK_MONOTONIC when the card last entered the field) and
 *                       idle_ns=T (when the line last went quiet in both directions;
 *                       -1 while bytes wait to go out)
 *   quit                exit (also on end of stdin, SIGINT, SIGTERM)
 *
 * EVENTS (stdout, one per line; tests match on the first words)
 *   ready PTS                 the pty is open (PTS: /dev/pts/N)
 *   ok CMD | error MESSAGE    answer to a control command
 *   wakeup                    the host woke the chip (55 55 ...)
 *   open                      libnfc's communication check (Diagnose), i.e. nfc_open
 *   powerdown                 PowerDown (libnfc's nfc_close / idle)
 *   field on | field off
 *   poll HEX                  InAutoPoll started (HEX: PollNr Period types)
 *   list BRTY                 InListPassiveTarget started (BRTY 00 = ISO 14443-A)
 *   poll none | list none     the command ended without a target
 *   selected UID KIND [iso-dep]   a card was activated (KIND uid|desfire)
 *   deselect | release        InDeselect / InRelease
 *   abort CMD WHY             a waiting command ended: host-ack (nfc_abort_command)
 *                             or new-command (the host gave up and sent another)
 *   ack                       a host ACK with nothing to abort
 *   inserted UID KIND | removed [pull-during-auth]
 *   desfire CC NAME SS        a DESFire command CC ran with status SS (00 ok, AF more)
 *   auth ok KEYNO CIPHER legacy|ev1 | auth fail KEYNO [reason]
 *   desfire created app AID | desfire created file N | desfire changed key N TYPE
 *   desfire read file N MODE | desfire wrote file N MODE   (MODE plain|mac|enc)
 *   bad-frame WHY             a host frame was dropped (lcs, dcs, tfi, stalled)
 *   unsupported CMD           a PN532 command the emulator does not know (error frame)
 *   fault ...                 an injected fault took effect
 *   unplugged
 *
 * TEST HELPERS
 *   C: emu_client.h (start, emu_cmd, emu_wait for an event with a timeout);
 *   Python: pn532emu.py (class Pn532Emu, same calls). test_desfire.c shows the
 *   lockerd flow: poll, deselect, libfreefare connect, select, AES auth, read, UID.
 *
 * PN532 BEHAVIOUR NOTES
 *   - Polling (InListPassiveTarget 0x4A, InAutoPoll 0x60) finds a card in the field
 *     whether it is idle or halted (as if WUPA were sent), so a card that stays in
 *     the field is found again after InDeselect/InRelease.
 *   - With MxRtyPassiveActivation 0xFF (libnfc's infinite select) and InAutoPoll
 *     PollNr 0xFF the chip stays silent until a card comes or the host aborts. Finite
 *     InAutoPoll answers "no target" after PollNr x Period x 150 ms x types; a finite
 *     InListPassiveTarget after (retries + 1) x 2 ms.
 *   - A type-A card answers only ISO 14443-A: InListPassiveTarget with BrTy != 0 and
 *     InCommunicateThru with type B/FeliCa framing (TxMode 0x6302) find nothing.
 *   - InDataExchange to an ISO-DEP card carries APDUs (the chip does the block
 *     protocol); InCommunicateThru B2 (R(NAK), libnfc's presence check) gets A2/A3.
 *   - A new host frame ends a waiting command (event "abort CMD new-command") and
 *     drops reply bytes not yet on the line.
 *   - InListPassiveTarget sends the ATS only if SetParameters enabled auto-RATS
 *     (libnfc does: 0x14).
 *
 * LIBNFC FACTS THE TESTS SHOWED (libnfc 1.8.0)
 *   - nfc_abort_command() is lost if it comes before the driver waits in select()
 *     on its abort pipe (uart_receive reads the pipe fd on entry): repeat it until the
 *     poll returns (test_desfire.c, poll_waits_and_aborts).
 *   - nfc_initiator_target_is_present() retries once, so one bad reply goes unseen.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "tests/pn532/card.h"
#include "tests/pn532/desfire.h"
#include "tests/pn532/emu.h"
#include "tests/pn532/pn532_chip.h"

#define BYTE_NS   86806 /* 10 bits at 115200 baud */
#define QUEUE_LEN 128
#define SEG_MAX   512

struct segment {
    uint8_t data[SEG_MAX];
    size_t len, pos;
    int64_t not_before_ns;
};

static struct {
    bool verbose;
    const char *link;
    int master, slave;
    char pts[64];

    struct segment q[QUEUE_LEN];
    size_t qhead, qcount;
    int64_t line_free_ns;
    bool baud;
    uint64_t bytes_rx, bytes_tx; /* on the wire, both directions: the UART floor */
    int64_t rx_end_ns;           /* when the host's last bytes were through the line */
    int64_t late_ns;             /* how much later than the line schedule the emulator
                                    handed over the ends of its bursts (its own delay) */
    int64_t entered_ns;          /* when the current card last entered the field */

    struct card *card;
    char line[65536];
    size_t linelen;
    bool quit;
} emu = {.master = -1, .slave = -1};

static volatile sig_atomic_t got_signal;

/* ---- services for the other parts (emu.h) ---- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t emu_now_us(void)
{
    return now_ns() / 1000;
}

void emu_event(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

void emu_trace(const char *fmt, ...)
{
    if (!emu.verbose)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "pn532_emu: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void emu_trace_hex(const char *what, const uint8_t *buf, size_t len)
{
    if (!emu.verbose)
        return;
    /* Monotonic milliseconds: gaps between frames show where the host spends time. */
    fprintf(stderr, "pn532_emu: %10.3f %-6s", (double)now_ns() / 1e6, what);
    for (size_t i = 0; i < len; i++)
        fprintf(stderr, " %02X", buf[i]);
    fputc('\n', stderr);
}

void emu_random(uint8_t *buf, size_t len)
{
    if (RAND_bytes(buf, (int)len) != 1) {
        fprintf(stderr, "pn532_emu: RAND_bytes failed\n");
        abort();
    }
}

int emu_parse_hex(const char *s, uint8_t *out, size_t max)
{
    size_t n = strlen(s);
    if (n % 2 || n / 2 > max)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        char pair[3] = {s[2 * i], s[2 * i + 1], '\0'};
        char *end;
        if (pair[0] == '+' || pair[0] == '-' || pair[0] == ' ')
            return -1;
        v = (unsigned)strtoul(pair, &end, 16);
        if (*end)
            return -1;
        out[i] = (uint8_t)v;
    }
    return (int)(n / 2);
}

void emu_hex(const uint8_t *buf, size_t len, char *out)
{
    static const char digits[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[buf[i] >> 4];
        out[2 * i + 1] = digits[buf[i] & 15];
    }
    out[2 * len] = '\0';
}

int64_t emu_line_time_us(size_t n)
{
    return emu.baud ? (int64_t)n * BYTE_NS / 1000 : 0;
}

void emu_host_send(const uint8_t *buf, size_t len, int64_t delay_us)
{
    int64_t t = now_ns() + delay_us * 1000;
    emu_trace_hex("tx", buf, len);
    while (len) {
        if (emu.qcount == QUEUE_LEN) {
            emu_event("error output queue full");
            return;
        }
        struct segment *s = &emu.q[(emu.qhead + emu.qcount) % QUEUE_LEN];
        size_t n = len < SEG_MAX ? len : SEG_MAX;
        memcpy(s->data, buf, n);
        s->len = n;
        s->pos = 0;
        s->not_before_ns = t;
        emu.qcount++;
        buf += n;
        len -= n;
    }
}

void emu_host_drop_pending(void)
{
    /* keep a segment that has started: the host is receiving it */
    size_t keep = emu.qcount && emu.q[emu.qhead].pos ? 1 : 0;
    emu.qcount = keep;
}

/* ---- the pty ---- */

static int pty_open(void)
{
    struct termios t;
    if (openpty(&emu.master, &emu.slave, emu.pts, NULL, NULL) < 0) {
        emu_event("error openpty: %s", strerror(errno));
        return -1;
    }
    /* raw from the start, so that the settings libnfc saves and restores are raw too
     * and nothing is ever echoed back to us */
    if (tcgetattr(emu.slave, &t) == 0) {
        cfmakeraw(&t);
        cfsetspeed(&t, B115200);
        tcsetattr(emu.slave, TCSANOW, &t);
    }
    fcntl(emu.master, F_SETFL, fcntl(emu.master, F_GETFL) | O_NONBLOCK);
    fcntl(emu.master, F_SETFD, FD_CLOEXEC);
    fcntl(emu.slave, F_SETFD, FD_CLOEXEC);
    if (emu.link) {
        char tmp[4096];
        snprintf(tmp, sizeof(tmp), "%s.tmp%d", emu.link, (int)getpid());
        unlink(tmp);
        if (symlink(emu.pts, tmp) < 0 || rename(tmp, emu.link) < 0) {
            emu_event("error symlink %s: %s", emu.link, strerror(errno));
            unlink(tmp);
            close(emu.master);
            close(emu.slave);
            emu.master = emu.slave = -1;
            return -1;
        }
    }
    emu.qcount = 0;
    chip_power_on();
    emu_event("ready %s", emu.pts);
    return 0;
}

static void pty_close(void)
{
    if (emu.master < 0)
        return;
    close(emu.master);
    close(emu.slave);
    emu.master = emu.slave = -1;
    emu.qcount = 0;
    if (emu.link)
        unlink(emu.link);
}

/* Writes what the queue allows now; returns the next time (ns) it wants to run, or
 * -1 if empty or blocked on the pty.
 *
 * With baud pacing the line runs on an absolute schedule: a segment starts when it
 * may (not_before_ns) or when the line is free, whichever is later, and its byte k
 * reaches the host when its stop bit has gone out, at start + (k + 1) x BYTE_NS. A
 * late wake-up writes every byte that is due at once, so lateness never accumulates
 * from byte to byte, and no byte is handed over before its time on the wire. */
static int64_t flush_queue(bool *blocked)
{
    *blocked = false;
    while (emu.qcount && emu.master >= 0) {
        struct segment *s = &emu.q[emu.qhead];
        int64_t now = now_ns();
        int64_t t0 = s->not_before_ns;
        if (emu.baud && emu.line_free_ns > t0)
            t0 = emu.line_free_ns;
        int64_t first = emu.baud ? t0 + BYTE_NS : t0;
        if (first > now)
            return first;
        size_t n = s->len - s->pos;
        if (emu.baud && (uint64_t)((now - t0) / BYTE_NS) < n)
            n = (size_t)((now - t0) / BYTE_NS);
        ssize_t w = write(emu.master, s->data + s->pos, n);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                *blocked = errno == EAGAIN;
                return -1;
            }
            emu_event("error write: %s", strerror(errno));
            emu.qcount = 0;
            return -1;
        }
        s->pos += (size_t)w;
        emu.bytes_tx += (uint64_t)w;
        if (emu.baud)
            emu.line_free_ns = t0 + (int64_t)w * BYTE_NS;
        if (s->pos == s->len) {
            /* The end of a burst is what the host waits for: any delay past the line
             * schedule there is the emulator's, not the host's. */
            if (emu.baud && emu.qcount == 1 && now > emu.line_free_ns)
                emu.late_ns += now - emu.line_free_ns;
            if (emu.verbose)
                fprintf(stderr, "pn532_emu: %10.3f sent   %zu bytes, on the wire until %.3f\n",
                        (double)now_ns() / 1e6, s->len,
                        (double)(emu.baud ? emu.line_free_ns : now) / 1e6);
            emu.qhead = (emu.qhead + 1) % QUEUE_LEN;
            emu.qcount--;
        }
    }
    return -1;
}

/* ---- control commands ---- */

static int split(char *line, char **argv, int max)
{
    int argc = 0;
    for (char *save = NULL, *tok = strtok_r(line, " \t\r", &save); tok && argc < max;
         tok = strtok_r(NULL, " \t\r", &save))
        argv[argc++] = tok;
    return argc;
}

static void card_enters(void)
{
    char hex[2 * CARD_MAX_UID + 1];
    emu.card->in_field = true;
    emu.entered_ns = now_ns();
    chip_set_card(emu.card);
    emu_hex(emu.card->uid, emu.card->uid_len, hex);
    emu_event("inserted %s %s", hex, card_kind(emu.card));
}

static int cmd_onoff(const char *arg, bool *out)
{
    if (arg && strcmp(arg, "on") == 0)
        *out = true;
    else if (arg && strcmp(arg, "off") == 0)
        *out = false;
    else
        return -1;
    return 0;
}

static void control(char *line)
{
    char *argv[4096];
    char err[512] = "";
    int argc = split(line, argv, 4096);
    bool on;

    if (argc == 0)
        return;
    const char *c = argv[0];
    if (strcmp(c, "card") == 0) {
        struct card *n = card_parse(argc - 1, argv + 1, err, sizeof(err));
        if (!n) {
            emu_event("error %s", err);
            return;
        }
        if (emu.card && emu.card->in_field) {
            emu.card->in_field = false;
            emu_event("removed");
        }
        chip_set_card(NULL);
        card_free(emu.card);
        emu.card = n;
        card_enters();
    } else if (strcmp(c, "remove") == 0) {
        if (!emu.card || !emu.card->in_field) {
            emu_event("error no card in the field");
            return;
        }
        emu.card->in_field = false;
        card_power_down(emu.card);
        chip_set_card(emu.card);
        emu_event("removed");
    } else if (strcmp(c, "reinsert") == 0) {
        if (!emu.card || emu.card->in_field) {
            emu_event("error no card outside the field");
            return;
        }
        card_enters();
    } else if (strcmp(c, "pull-during-auth") == 0) {
        if (!emu.card || !emu.card->df) {
            emu_event("error no DESFire card");
            return;
        }
        desfire_pull_during_auth(emu.card->df);
    } else if (strcmp(c, "unplug") == 0) {
        if (emu.master < 0) {
            emu_event("error not plugged");
            return;
        }
        pty_close();
        emu_event("unplugged");
    } else if (strcmp(c, "plug") == 0) {
        if (emu.master >= 0) {
            emu_event("error already plugged");
            return;
        }
        if (pty_open() < 0)
            return;
    } else if (strcmp(c, "mute") == 0) {
        if (argc != 2 || cmd_onoff(argv[1], &on) < 0) {
            emu_event("error usage: mute on|off");
            return;
        }
        chip_set_mute(on);
    } else if (strcmp(c, "garbage") == 0) {
        long n = argc > 1 ? strtol(argv[1], NULL, 10) : 32;
        uint8_t buf[4096];
        if (n < 1 || n > (long)sizeof(buf)) {
            emu_event("error usage: garbage [1-4096]");
            return;
        }
        emu_random(buf, (size_t)n);
        emu_host_send(buf, (size_t)n, 0);
    } else if (strcmp(c, "truncate") == 0) {
        chip_truncate_next();
    } else if (strcmp(c, "corrupt") == 0) {
        chip_corrupt_next();
    } else if (strcmp(c, "error-frame") == 0) {
        chip_error_next();
    } else if (strcmp(c, "next-status") == 0) {
        uint8_t st;
        if (argc != 2 || emu_parse_hex(argv[1], &st, 1) != 1) {
            emu_event("error usage: next-status HH");
            return;
        }
        chip_status_next(st);
    } else if (strcmp(c, "slow") == 0) {
        char *end;
        long ms = argc == 2 ? strtol(argv[1], &end, 10) : -1;
        if (argc != 2 || *end || ms < 0 || ms > 600000) {
            emu_event("error usage: slow MS");
            return;
        }
        chip_set_slow((int64_t)ms * 1000);
    } else if (strcmp(c, "baud") == 0) {
        if (argc != 2 || cmd_onoff(argv[1], &on) < 0) {
            emu_event("error usage: baud on|off");
            return;
        }
        emu.baud = on;
    } else if (strcmp(c, "status") == 0) {
        char buf[512];
        chip_describe(buf, sizeof(buf));
        int64_t idle = emu.line_free_ns > emu.rx_end_ns ? emu.line_free_ns : emu.rx_end_ns;
        emu_event("status %s pty=%s rx=%llu tx=%llu late_us=%lld entered_ns=%lld idle_ns=%lld", buf,
                  emu.master >= 0 ? emu.pts : "-", (unsigned long long)emu.bytes_rx,
                  (unsigned long long)emu.bytes_tx, (long long)(emu.late_ns / 1000),
                  (long long)emu.entered_ns, (long long)(emu.qcount ? -1 : idle));
    } else if (strcmp(c, "quit") == 0) {
        emu.quit = true;
    } else {
        emu_event("error unknown command '%s'", c);
        return;
    }
    /* bytes the command caused (a waiting poll answered, garbage) leave before "ok",
     * unless delayed or paced */
    bool blocked;
    flush_queue(&blocked);
    emu_event("ok %s", c);
}

static void read_stdin(void)
{
    ssize_t n = read(STDIN_FILENO, emu.line + emu.linelen, sizeof(emu.line) - emu.linelen - 1);
    if (n <= 0) {
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            return;
        emu.quit = true;
        return;
    }
    emu.linelen += (size_t)n;
    emu.line[emu.linelen] = '\0';
    char *nl;
    while ((nl = memchr(emu.line, '\n', emu.linelen))) {
        *nl = '\0';
        size_t used = (size_t)(nl - emu.line) + 1;
        char one[sizeof(emu.line)];
        memcpy(one, emu.line, used);
        memmove(emu.line, nl + 1, emu.linelen - used);
        emu.linelen -= used;
        emu.line[emu.linelen] = '\0';
        emu_trace("control: %s", one);
        control(one);
        if (emu.quit)
            return;
    }
    if (emu.linelen == sizeof(emu.line) - 1) {
        emu_event("error line too long");
        emu.linelen = 0;
    }
}

/* ---- main loop ---- */

static void on_signal(int sig)
{
    got_signal = sig;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: pn532_emu [--link PATH] [-v]\n"
               "Control commands on stdin, events on stdout; see the top of pn532_emu.c.\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"link", required_argument, NULL, 'l'},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "l:vh", opts, NULL)) != -1) {
        switch (o) {
        case 'l':
            emu.link = optarg;
            break;
        case 'v':
            emu.verbose = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    setvbuf(stdout, NULL, _IOLBF, 0);
    /* Byte pacing wakes up every 86.8 us: the default 50 us timer slack would make
     * the emulator, not the host, the slow side of the line. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    signal(SIGPIPE, SIG_IGN);
    sigset_t block, orig;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &orig);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    if (pty_open() < 0)
        return 1;

    bool stdin_open = true;
    while (!emu.quit && !got_signal) {
        bool blocked;
        int64_t next = flush_queue(&blocked);
        int64_t dl = chip_deadline();
        if (dl >= 0 && (next < 0 || dl * 1000 < next))
            next = dl * 1000;

        struct pollfd pfd[2];
        nfds_t n = 0;
        int in_idx = -1, m_idx = -1;
        if (stdin_open) {
            pfd[n] = (struct pollfd){.fd = STDIN_FILENO, .events = POLLIN};
            in_idx = (int)n++;
        }
        if (emu.master >= 0) {
            pfd[n] = (struct pollfd){.fd = emu.master, .events = POLLIN};
            if (blocked)
                pfd[n].events |= POLLOUT;
            m_idx = (int)n++;
        }
        struct timespec ts, *tsp = NULL;
        if (next >= 0) {
            int64_t d = next - now_ns();
            if (d < 0)
                d = 0;
            ts.tv_sec = d / 1000000000;
            ts.tv_nsec = d % 1000000000;
            tsp = &ts;
        }
        int r = ppoll(pfd, n, tsp, &orig);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            perror("pn532_emu: ppoll");
            break;
        }
        chip_timer(emu_now_us());
        if (m_idx >= 0 && (pfd[m_idx].revents & (POLLIN | POLLHUP | POLLERR))) {
            uint8_t buf[1024];
            ssize_t k = read(emu.master, buf, sizeof(buf));
            if (k > 0) {
                emu.bytes_rx += (uint64_t)k;
                /* The host's bytes arrive at once on a pty; on the line they take
                 * their time from now (frame_done() delays the chip's ACK as much). */
                emu.rx_end_ns = now_ns() + (emu.baud ? (int64_t)k * BYTE_NS : 0);
                chip_rx(buf, (size_t)k);
            }
        }
        if (in_idx >= 0 && (pfd[in_idx].revents & (POLLIN | POLLHUP | POLLERR))) {
            read_stdin();
            if (emu.quit)
                stdin_open = false;
        }
    }
    pty_close();
    card_free(emu.card);
    return 0;
}
