/*
 * reader_libnfc.c - card reader backend on libnfc (PN532 on UART and others).
 *
 * libnfc blocks and is not thread-safe, so one thread owns the device from open to
 * close. It waits for a card with nfc_initiator_poll_target() (the PN532's InAutoPoll:
 * the chip polls on its own and answers when a card comes, costing no CPU), runs the
 * card protocol (card_read()), then watches the card until it leaves. Results travel
 * to the event loop through a small queue and an eventfd.
 *
 * Cross-thread calls: only nfc_abort_command(), from the main thread at shutdown and
 * from the watchdog thread when a libnfc call takes too long (libfreefare waits for
 * answers without a timeout, and a card pulled away at the wrong moment would
 * otherwise hang the reader forever).
 *
 * libnfc 1.8.0's pn532_uart driver can block for good where no abort reaches it: it
 * watches the abort pipe only while waiting for the first bytes of a reply, and reads
 * the rest of a frame (and the chip's ACK) with the caller's timeout, which is
 * "forever" for polling and for libfreefare. A frame cut short on the wire leaves the
 * reader thread waiting for bytes that never come. So every unbounded call runs
 * under the watchdog (polling too: the chip is asked to poll for a few seconds at a
 * time), and a call still stuck after its abort gets the chip to talk: the watchdog
 * writes a Diagnose echo request through our own descriptor on the serial port, and
 * the answer completes the pending read with bytes that fail libnfc's frame checks,
 * which ends the call with an I/O error. The reader is then reopened.
 *
 * The reader vanishing (USB unplugged, UART dead) closes the device; the thread
 * reopens it with exponential back-off and reports the fault once per outage.
 * A lock on the device node keeps a second lockerd (or a second station config)
 * from sharing the reader; it is taken again at every reopen, because a reader
 * plugged back in may come back under another device node.
 */
#include "hal/hal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <nfc/nfc.h>
#include <openssl/crypto.h>

#include "daemon/log.h"
#include "hal/card.h"

#define QUEUE_LEN        16
#define BACKOFF_MIN_MS   500
#define BACKOFF_MAX_MS   30000
#define PRESENCE_MS      200  /* how often a card still in the field is checked */
#define WATCHDOG_MS      2000 /* longest a card transaction may take */
#define READ_TRIES       3    /* card reads per presentation that may break off */
#define STALL_MS         1000 /* an aborted call still in libnfc after this is stuck */
#define SHUTDOWN_WAIT_MS 5000 /* longest wait at close for a reader thread stuck in libnfc */
#define INFO_LEN         128

/* InAutoPoll: the chip polls POLL_ROUNDS times for each of the two target types libnfc
 * asks for (ISO 14443-4A and MIFARE), POLL_PERIOD x 150 ms each, then answers "no
 * card": 6 s, or 3 s if a chip counts its rounds across the types. That answer is the
 * heartbeat that tells a quiet reader from a stuck one; at one exchange per cycle it
 * costs nothing worth measuring, and it bounds how long a stuck poll goes unnoticed. */
#define POLL_ROUNDS   10
#define POLL_PERIOD   2
#define POLL_TYPES    2
#define POLL_CYCLE_MS (POLL_ROUNDS * POLL_PERIOD * 150 * POLL_TYPES)
#define POLL_SLACK_MS 3000 /* a real chip's cycle may run a little long */

/* Diagnose (0x00) test 0 echoes its data: KICK_ECHO_LEN bytes, more than the longest
 * frame libnfc can be waiting for the rest of (its receive buffer is 264 bytes). */
#define KICK_ECHO_LEN 250

/* How the watchdog ended a call (watchdog_disarm()). */
enum stall {
    STALL_NONE,    /* the call returned in time */
    STALL_ABORTED, /* nfc_abort_command() ended it */
    STALL_KICKED,  /* it did not return until the chip was made to answer */
};

struct queued {
    enum reader_event_type type;
    struct card_read card;
};

struct reader_dev {
    char connstring[NFC_BUFSIZE_CONNSTRING];
    enum card_auth auth;
    struct card_keys keys;
    reader_event_cb cb;
    void *cb_arg;
    int efd;
    bool lockable; /* the connstring names a device node */
    int port_fd;   /* under mu: our descriptor on that node, holding the lock while the
                      device is open; the watchdog writes to the chip through it */

    pthread_t thread;
    pthread_t watchdog;
    pthread_mutex_t mu;
    pthread_cond_t cond;       /* stop requests and watchdog arming */
    bool stop;                 /* under mu */
    bool exited;               /* under mu: the reader thread has left libnfc */
    nfc_context *ctx;          /* owned by the reader thread after open */
    nfc_device *dev;           /* under mu: read by abort callers */
    int64_t watchdog_deadline; /* CLOCK_MONOTONIC ms, 0 = disarmed; under mu */
    enum stall watchdog_stall; /* under mu: what the watchdog did since it was armed */
    int64_t kick_delay;        /* under mu: ms until the next kick */
    atomic_bool issue;         /* personalise the next card instead of reading it */

    struct queued queue[QUEUE_LEN]; /* under mu */
    int qhead, qlen;
    bool fault_reported;
    char info[INFO_LEN]; /* under mu: what reader_ops.info reports */
    int info_err;        /* under mu: 0 while the device is open, else -errno */
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void deadline_ts(int64_t ms_from_now, struct timespec *ts)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms_from_now / 1000;
    ts->tv_nsec += (ms_from_now % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

/* Queues an event for the loop. A full queue drops the oldest card-removed first:
 * taps must not be lost to a burst of removals. */
static void post(struct reader_dev *r, enum reader_event_type type, const struct card_read *card)
{
    pthread_mutex_lock(&r->mu);
    if (r->qlen == QUEUE_LEN) {
        log_warnx("reader: event queue full, dropping the oldest event");
        OPENSSL_cleanse(&r->queue[r->qhead], sizeof(r->queue[0]));
        r->qhead = (r->qhead + 1) % QUEUE_LEN;
        r->qlen--;
    }
    struct queued *q = &r->queue[(r->qhead + r->qlen) % QUEUE_LEN];
    q->type = type;
    if (card)
        q->card = *card;
    else
        memset(&q->card, 0, sizeof(q->card));
    r->qlen++;
    pthread_mutex_unlock(&r->mu);
    uint64_t one = 1;
    if (write(r->efd, &one, sizeof(one)) != (ssize_t)sizeof(one))
        log_warn("reader: eventfd write");
}

/* Records what info() reports and wakes the event loop, so that a supervising
 * process (reader_proc.c) can pass the change on at once. */
static __attribute__((format(printf, 3, 4))) void set_info(struct reader_dev *r, int err,
                                                           const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&r->mu);
    va_start(ap, fmt);
    vsnprintf(r->info, sizeof(r->info), fmt, ap);
    va_end(ap);
    r->info_err = err;
    pthread_mutex_unlock(&r->mu);
    uint64_t one = 1;
    if (write(r->efd, &one, sizeof(one)) != (ssize_t)sizeof(one))
        log_warn("reader: eventfd write");
}

/* "PN532 v1.6 on pn532_uart:/dev/serial0": the chip and firmware as libnfc read
 * them at open (GetFirmwareVersion), else the driver's device name. */
static void describe(nfc_device *dev, char *out, size_t len)
{
    char *about = NULL;
    const char *chip = NULL;
    int chiplen = 0;
    if (nfc_device_get_information_about(dev, &about) >= 0 && about != NULL) {
        chip = strstr(about, "chip: ");
        if (chip != NULL) {
            chip += strlen("chip: ");
            chiplen = (int)strcspn(chip, "\n");
        }
    }
    if (chip != NULL && chiplen > 0)
        snprintf(out, len, "%.*s on %s", chiplen, chip, nfc_device_get_connstring(dev));
    else
        snprintf(out, len, "%s", nfc_device_get_name(dev));
    nfc_free(about);
}

/* Sleeps up to ms, returning early (true) when asked to stop. */
static bool wait_or_stop(struct reader_dev *r, int64_t ms)
{
    struct timespec ts;
    deadline_ts(ms, &ts);
    pthread_mutex_lock(&r->mu);
    while (!r->stop) {
        if (pthread_cond_timedwait(&r->cond, &r->mu, &ts) == ETIMEDOUT)
            break;
    }
    bool stop = r->stop;
    pthread_mutex_unlock(&r->mu);
    return stop;
}

static bool stopping(struct reader_dev *r)
{
    pthread_mutex_lock(&r->mu);
    bool stop = r->stop;
    pthread_mutex_unlock(&r->mu);
    return stop;
}

/* Arms the watchdog for one libnfc call that has no bound of its own. */
static void watchdog_arm(struct reader_dev *r, int64_t ms)
{
    pthread_mutex_lock(&r->mu);
    r->watchdog_deadline = mono_ms() + ms;
    r->watchdog_stall = STALL_NONE;
    r->kick_delay = STALL_MS;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->mu);
}

/* The call returned: ends the watch and says what the watchdog had to do. */
static enum stall watchdog_disarm(struct reader_dev *r)
{
    pthread_mutex_lock(&r->mu);
    r->watchdog_deadline = 0;
    enum stall stall = r->watchdog_stall;
    pthread_mutex_unlock(&r->mu);
    return stall;
}

/*
 * Makes the chip send something: a Diagnose echo request written to the serial port
 * behind libnfc's back. The chip's ACK and echo complete whatever read libnfc is stuck
 * in; the bytes fail its checks (length checksum, TFI, command code or data checksum,
 * and the first of them is 00, never a status byte with 0x80 set), so the call ends
 * with NFC_EIO. Called with mu held, once the reader thread has been in libnfc for
 * STALL_MS longer than it should: it is waiting, not writing. (At shutdown it may
 * instead be in a slow but bounded call; an answer it did not ask for only fails
 * that call, and each side writes its frames whole.)
 */
static void kick_locked(struct reader_dev *r)
{
    enum { LEN = 3 + KICK_ECHO_LEN }; /* TFI D4, Diagnose 00, test 00, echo data */
    uint8_t f[5 + LEN + 2] = {0x00, 0x00, 0xFF, LEN, (uint8_t)(0x100 - LEN), 0xD4, 0x00, 0x00};
    f[5 + LEN] = (uint8_t)(0x100 - 0xD4); /* DCS: the echo data are zeros */
    f[5 + LEN + 1] = 0x00;

    if (r->port_fd < 0) {
        log_warnx("reader: libnfc is stuck and %s has no serial port to wake it through",
                  r->connstring);
        return;
    }
    if (write(r->port_fd, f, sizeof(f)) != (ssize_t)sizeof(f))
        log_warn("reader: writing to %s", r->connstring);
}

/*
 * Aborts a libnfc call that overruns its deadline. nfc_abort_command() only ends a
 * wait for the first bytes of a reply; a call still inside libnfc STALL_MS later is
 * blocked where no abort reaches, so the chip is kicked, again with back-off while
 * it stays silent (a dead chip: only unplugging or a restart helps then).
 */
static void *watchdog_main(void *arg)
{
    struct reader_dev *r = arg;
    pthread_mutex_lock(&r->mu);
    while (!r->stop) {
        if (r->watchdog_deadline == 0) {
            pthread_cond_wait(&r->cond, &r->mu);
            continue;
        }
        int64_t left = r->watchdog_deadline - mono_ms();
        if (left > 0) {
            struct timespec ts;
            deadline_ts(left, &ts);
            pthread_cond_timedwait(&r->cond, &r->mu, &ts);
            continue;
        }
        int64_t next = STALL_MS;
        if (r->watchdog_stall == STALL_NONE) {
            r->watchdog_stall = STALL_ABORTED;
            if (r->dev)
                nfc_abort_command(r->dev);
        } else {
            if (r->watchdog_stall == STALL_ABORTED)
                log_warnx("reader: libnfc still waits for the rest of a frame after an "
                          "abort; making %s answer",
                          r->connstring);
            r->watchdog_stall = STALL_KICKED;
            kick_locked(r);
            next = r->kick_delay;
            r->kick_delay = r->kick_delay * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->kick_delay * 2;
        }
        r->watchdog_deadline = mono_ms() + next;
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static void set_dev(struct reader_dev *r, nfc_device *dev)
{
    pthread_mutex_lock(&r->mu);
    r->dev = dev;
    pthread_mutex_unlock(&r->mu);
}

/* The device node behind a connstring like "pn532_uart:/dev/serial0[:115200]". */
static bool device_path(const char *connstring, char *out, size_t len)
{
    const char *p = strchr(connstring, ':');
    if (!p || p[1] != '/')
        return false;
    snprintf(out, len, "%s", p + 1);
    char *colon = strchr(out, ':');
    if (colon)
        *colon = '\0';
    return true;
}

/* Opens the reader's device node (resolved through symlinks) and takes an exclusive
 * lock on it, so that two processes never talk to the same reader at once. Returns
 * the descriptor, or -errno with a message in msg. */
static int lock_reader(const char *connstring, char *msg, size_t msglen)
{
    char path[PATH_MAX], real[PATH_MAX];
    if (!device_path(connstring, path, sizeof(path))) {
        snprintf(msg, msglen, "%s names no device node", connstring);
        return -EINVAL;
    }
    if (!realpath(path, real)) {
        int rc = -errno;
        snprintf(msg, msglen, "%s: %s", path, strerror(errno));
        return rc;
    }
    /* Read-write: the watchdog may have to write to the chip (kick_locked()). */
    int fd = open(real, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        int rc = -errno;
        snprintf(msg, msglen, "cannot open %s: %s", real, strerror(errno));
        return rc;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        snprintf(msg, msglen, "%s is in use by another process", real);
        close(fd);
        return -EBUSY;
    }
    return fd;
}

static void set_port_fd(struct reader_dev *r, int fd)
{
    pthread_mutex_lock(&r->mu);
    int old = r->port_fd;
    r->port_fd = fd;
    pthread_mutex_unlock(&r->mu);
    if (old >= 0)
        close(old);
}

/* Locks the device node (again after an outage: a reader plugged back in can come
 * back under another node) and opens the reader. NULL: not available now. */
static nfc_device *open_device(struct reader_dev *r)
{
    if (r->lockable && r->port_fd < 0) {
        char msg[PATH_MAX + 64];
        int fd = lock_reader(r->connstring, msg, sizeof(msg));
        if (fd < 0) {
            log_debug("reader: %s", msg);
            return NULL;
        }
        set_port_fd(r, fd);
    }
    nfc_device *dev = nfc_open(r->ctx, r->connstring);
    if (!dev) {
        set_port_fd(r, -1);
        return NULL;
    }
    if (nfc_initiator_init(dev) < 0) {
        log_warnx("reader: cannot initialise %s: %s", r->connstring, nfc_strerror(dev));
        nfc_close(dev);
        set_port_fd(r, -1);
        return NULL;
    }
    /* libnfc's defaults retry selection forever; a card protocol must fail fast. */
    nfc_device_set_property_bool(dev, NP_INFINITE_SELECT, false);
    return dev;
}

static void close_device(struct reader_dev *r, nfc_device *dev)
{
    set_dev(r, NULL);
    nfc_close(dev);
    set_port_fd(r, -1);
}

/* Card in the field: run the protocol under the watchdog, report, then wait for the
 * card to leave. Returns false if the reader itself failed. */
static bool handle_card(struct reader_dev *r, nfc_device *dev, const nfc_target *target)
{
    struct card_read card;
    memset(&card, 0, sizeof(card));

    int rc = 0;
    int64_t limit = WATCHDOG_MS;
    enum stall stall = STALL_NONE;
    if (atomic_exchange(&r->issue, false)) {
        /* Issuing writes keys and a file: several times a read's traffic. */
        limit = (int64_t)WATCHDOG_MS * 4;
        watchdog_arm(r, limit);
        int res = card_issue(dev, target, &r->keys, &card);
        stall = watchdog_disarm(r);
        card.issue_attempted = true;
        card.issue_result = res;
        if (res == -EIO) {
            const nfc_iso14443a_info *nai = &target->nti.nai;
            card.uid_len = nai->szUidLen <= HAL_UID_MAX ? nai->szUidLen : HAL_UID_MAX;
            memcpy(card.uid, nai->abtUid, card.uid_len);
        }
    } else if (r->auth == CARD_AUTH_DESFIRE) {
        /* A read that broke off while the card stays in the field (a reply garbled on
         * the line, say) is tried again: the holder cannot tell it from a card never
         * read, and would otherwise wait in vain until lifting it. Bounded, for a card
         * that keeps breaking off. Issuing is not retried: it is not idempotent. */
        for (int attempt = 1;; attempt++) {
            watchdog_arm(r, limit);
            rc = card_read(dev, target, &r->keys, &card);
            stall = watchdog_disarm(r);
            if (rc != -EIO || stall == STALL_KICKED || attempt == READ_TRIES || stopping(r) ||
                nfc_initiator_target_is_present(dev, NULL) != NFC_SUCCESS)
                break;
            log_info("reader: card read broke off with the card still there; reading again");
        }
    } else {
        /* uid-insecure: the anticollision UID is all there is to know. */
        const nfc_iso14443a_info *nai = &target->nti.nai;
        card.kind = CARD_KIND_UID;
        card.uid_len = nai->szUidLen <= HAL_UID_MAX ? nai->szUidLen : HAL_UID_MAX;
        memcpy(card.uid, nai->abtUid, card.uid_len);
    }
    if (stall != STALL_NONE)
        log_warnx("reader: card transaction took longer than %lld ms; aborted", (long long)limit);
    if (rc == 0)
        post(r, READER_CARD, &card);
    else
        log_info("reader: card left or stopped answering during the transaction");
    OPENSSL_cleanse(&card, sizeof(card));
    /* The chip was made to answer out of turn: start again from a fresh open. */
    if (stall == STALL_KICKED)
        return false;

    /* Until it leaves, the same card must not count as a new tap. The first check
     * comes PRESENCE_MS after the report, not at once: the daemon is committing the
     * tap and energising the coil right then, and an exchange with the card would
     * compete with it for the CPU and for nothing (a card never leaves that fast that
     * it matters: it is reported removed at most PRESENCE_MS later either way). */
    while (!wait_or_stop(r, PRESENCE_MS)) {
        int present = nfc_initiator_target_is_present(dev, NULL);
        if (present != NFC_SUCCESS) {
            if (present == NFC_EIO || present == NFC_ENOTSUCHDEV)
                return false;
            break;
        }
    }
    nfc_initiator_deselect_target(dev);
    post(r, READER_CARD_REMOVED, NULL);
    return true;
}

static void *reader_main(void *arg)
{
    struct reader_dev *r = arg;
    int64_t backoff = BACKOFF_MIN_MS;
    const nfc_modulation iso14443a = {.nmt = NMT_ISO14443A, .nbr = NBR_106};

    while (!stopping(r)) {
        nfc_device *dev = open_device(r);
        if (!dev) {
            if (!r->fault_reported) {
                log_warnx("reader: %s not available; retrying with back-off", r->connstring);
                set_info(r, -EIO, "%.96s not available; reopening with back-off", r->connstring);
                post(r, READER_FAULT, NULL);
                r->fault_reported = true;
            }
            log_debug("reader: next try to open %s in %lld ms", r->connstring, (long long)backoff);
            if (wait_or_stop(r, backoff))
                break;
            backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
            continue;
        }
        set_dev(r, dev);
        if (r->fault_reported)
            log_notice("reader: %s is back", r->connstring);
        else
            log_info("reader: %s open (%s)", r->connstring, nfc_device_get_name(dev));
        r->fault_reported = false;
        backoff = BACKOFF_MIN_MS;
        char about[INFO_LEN];
        describe(dev, about, sizeof(about));
        set_info(r, 0, "%s", about);

        bool healthy = true;
        while (healthy && !stopping(r)) {
            nfc_target target;
            /* The chip answers within a poll cycle, with a card or without. */
            watchdog_arm(r, POLL_CYCLE_MS + POLL_SLACK_MS);
            int rc =
                nfc_initiator_poll_target(dev, &iso14443a, 1, POLL_ROUNDS, POLL_PERIOD, &target);
            enum stall stall = watchdog_disarm(r);
            if (stall != STALL_NONE) {
                /* Silent past its poll cycle, or stuck in a frame cut short. A card
                 * found meanwhile is found again after the reopen. */
                log_warnx("reader: %s stopped answering while polling", r->connstring);
                healthy = false;
            } else if (rc > 0) {
                healthy = handle_card(r, dev, &target);
            } else if (rc != NFC_EOPABORTED && rc != 0 && rc != NFC_ETIMEOUT) {
                /* Not shutdown (checked above) or the end of a poll cycle. */
                healthy = false;
            }
            OPENSSL_cleanse(&target, sizeof(target));
        }
        close_device(r, dev);
        if (!healthy && !stopping(r)) {
            log_warnx("reader: lost %s; reopening", r->connstring);
            set_info(r, -EIO, "lost %.96s; reopening with back-off", r->connstring);
            post(r, READER_FAULT, NULL);
            r->fault_reported = true;
        }
    }
    pthread_mutex_lock(&r->mu);
    r->exited = true;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static struct reader_dev *nfc_open_backend(const struct config *cfg, reader_event_cb cb, void *arg,
                                           int *err)
{
    struct reader_dev *r = xcalloc(1, sizeof(*r));
    char msg[PATH_MAX + 64];
    char path[PATH_MAX];

    snprintf(r->connstring, sizeof(r->connstring), "%s", cfg->reader_connstring);
    r->auth = cfg->auth;
    r->cb = cb;
    r->cb_arg = arg;
    r->efd = -1;
    r->port_fd = -1;
    r->info_err = -EAGAIN;
    snprintf(r->info, sizeof(r->info), "opening %.96s", r->connstring);
    /* USB readers are found by libnfc itself: nothing to lock. */
    r->lockable = device_path(r->connstring, path, sizeof(path));
    if (r->lockable) {
        /* At start a reader held by someone else is a configuration error: fail now.
         * The descriptor is kept for the reader thread's first open. */
        r->port_fd = lock_reader(r->connstring, msg, sizeof(msg));
        if (r->port_fd < 0) {
            log_warnx("reader: %s", msg);
            *err = r->port_fd;
            goto err_free;
        }
    }

    if (r->auth == CARD_AUTH_DESFIRE) {
        uint32_t aid = (uint32_t)strtoul(cfg->reader_aid, NULL, 16);
        int rc = card_keys_create(cfg->reader_key_file, msg, sizeof(msg));
        if (rc == 0)
            rc = card_keys_load(cfg->reader_key_file, aid, &r->keys, msg, sizeof(msg));
        if (rc < 0) {
            log_errx("reader: %s", msg);
            *err = rc;
            goto err_unlock;
        }
    } else {
        log_warnx("reader: auth = uid-insecure: cards are identified by their UID alone, "
                  "which can be cloned");
    }

    r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->efd < 0) {
        *err = -errno;
        goto err_wipe;
    }
    nfc_init(&r->ctx);
    if (!r->ctx) {
        *err = -ENOMEM;
        goto err_close_efd;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&r->mu, NULL);
    if (pthread_create(&r->watchdog, NULL, watchdog_main, r) != 0) {
        *err = -EAGAIN;
        goto err_exit_ctx;
    }
    if (pthread_create(&r->thread, NULL, reader_main, r) != 0) {
        *err = -EAGAIN;
        goto err_stop_watchdog;
    }
    return r;

err_stop_watchdog:
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->watchdog, NULL);
err_exit_ctx:
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->mu);
    nfc_exit(r->ctx);
err_close_efd:
    close(r->efd);
err_wipe:
    OPENSSL_cleanse(&r->keys, sizeof(r->keys));
err_unlock:
    if (r->port_fd >= 0)
        close(r->port_fd);
err_free:
    free(r);
    return NULL;
}

static void nfc_close_backend(struct reader_dev *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->mu);
    /* The watchdog leaves at once; from here on this thread does its work. */
    pthread_join(r->watchdog, NULL);

    /* nfc_abort_command() ends a blocking poll with NFC_EOPABORTED, but an abort sent
     * before the driver is waiting on its abort pipe is lost: repeat it until the
     * reader thread has left libnfc. Past STALL_MS the thread is blocked where no
     * abort reaches: kick the chip as the watchdog does. */
    int64_t start = mono_ms();
    int64_t next_kick = start + STALL_MS;
    pthread_mutex_lock(&r->mu);
    while (!r->exited) {
        int64_t now = mono_ms();
        if (now - start > SHUTDOWN_WAIT_MS) {
            /* A dead chip with libnfc waiting on it: nothing more can be done in this
             * process. Leave the thread (and r, which it uses) behind; exit follows. */
            pthread_mutex_unlock(&r->mu);
            log_errx("reader: the reader thread is stuck in libnfc; exiting without it");
            return;
        }
        if (r->dev)
            nfc_abort_command(r->dev);
        if (now >= next_kick) {
            kick_locked(r);
            next_kick = now + STALL_MS;
        }
        struct timespec ts;
        deadline_ts(100, &ts);
        pthread_cond_timedwait(&r->cond, &r->mu, &ts);
    }
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->mu);
    nfc_exit(r->ctx);
    close(r->efd);
    if (r->port_fd >= 0)
        close(r->port_fd);
    OPENSSL_cleanse(r->queue, sizeof(r->queue));
    OPENSSL_cleanse(&r->keys, sizeof(r->keys));
    free(r);
}

static int nfc_event_fd(struct reader_dev *r)
{
    return r->efd;
}

static int nfc_dispatch(struct reader_dev *r)
{
    uint64_t n;
    if (read(r->efd, &n, sizeof(n)) < 0 && errno != EAGAIN)
        return -errno;
    int count = 0;
    for (;;) {
        struct queued q;
        pthread_mutex_lock(&r->mu);
        if (r->qlen == 0) {
            pthread_mutex_unlock(&r->mu);
            break;
        }
        q = r->queue[r->qhead];
        OPENSSL_cleanse(&r->queue[r->qhead], sizeof(r->queue[0]));
        r->qhead = (r->qhead + 1) % QUEUE_LEN;
        r->qlen--;
        pthread_mutex_unlock(&r->mu);
        r->cb(q.type, q.type == READER_CARD ? &q.card : NULL, r->cb_arg);
        OPENSSL_cleanse(&q, sizeof(q));
        count++;
    }
    return count;
}

static int nfc_issue_next(struct reader_dev *r, bool on)
{
    if (on && r->auth != CARD_AUTH_DESFIRE)
        return -ENOTSUP; /* no site keys to write */
    atomic_store(&r->issue, on);
    return 0;
}

static int nfc_info(struct reader_dev *r, char *buf, size_t len)
{
    pthread_mutex_lock(&r->mu);
    snprintf(buf, len, "%s", r->info);
    int err = r->info_err;
    pthread_mutex_unlock(&r->mu);
    return err;
}

const struct reader_ops reader_libnfc_ops = {
    .name = "libnfc",
    .open = nfc_open_backend,
    .close = nfc_close_backend,
    .event_fd = nfc_event_fd,
    .dispatch = nfc_dispatch,
    .issue_next = nfc_issue_next,
    .info = nfc_info,
};
