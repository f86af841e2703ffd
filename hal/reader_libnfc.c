/*
 * reader_libnfc.c - card reader backend on libnfc (PN532 on UART and others).
 *
 * libnfc blocks and is not thread-safe, so one thread owns the device from open to
 * close. It waits for a card with nfc_initiator_poll_target() and endless polling
 * (the PN532's InAutoPoll: the chip stays silent until a card comes, costing no CPU),
 * runs the card protocol (card_read()), then watches the card until it leaves.
 * Results travel to the event loop through a small queue and an eventfd.
 *
 * Cross-thread calls: only nfc_abort_command(), from the main thread at shutdown and
 * from the watchdog thread when a card transaction takes too long (libfreefare
 * waits for answers without a timeout, and a card pulled away at the wrong moment
 * would otherwise hang the reader forever).
 *
 * The reader vanishing (USB unplugged, UART dead) closes the device; the thread
 * reopens it with exponential back-off and reports the fault once per outage.
 * A lock on the device node keeps a second lockerd (or a second station config)
 * from sharing the reader.
 */
#include "hal/hal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
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

#define QUEUE_LEN      16
#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000
#define PRESENCE_MS    200  /* how often a card still in the field is checked */
#define WATCHDOG_MS    2000 /* longest a card transaction may take */
#define POLL_PERIOD    2    /* InAutoPoll period, in units of 150 ms */

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
    int lock_fd;

    pthread_t thread;
    pthread_t watchdog;
    pthread_mutex_t mu;
    pthread_cond_t cond;       /* stop requests and watchdog arming */
    bool stop;                 /* under mu */
    bool exited;               /* under mu: the reader thread has left libnfc */
    nfc_context *ctx;          /* owned by the reader thread after open */
    nfc_device *dev;           /* under mu: read by abort callers */
    int64_t watchdog_deadline; /* CLOCK_MONOTONIC ms, 0 = disarmed; under mu */
    atomic_uint watchdog_fired;
    atomic_bool issue; /* personalise the next card instead of reading it */

    struct queued queue[QUEUE_LEN]; /* under mu */
    int qhead, qlen;
    bool fault_reported;
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

static void watchdog_arm(struct reader_dev *r, int64_t ms)
{
    pthread_mutex_lock(&r->mu);
    r->watchdog_deadline = ms ? mono_ms() + ms : 0;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->mu);
}

/* Aborts a card transaction that hangs. */
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
        r->watchdog_deadline = 0;
        if (r->dev) {
            atomic_fetch_add(&r->watchdog_fired, 1);
            nfc_abort_command(r->dev);
        }
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

static nfc_device *open_device(struct reader_dev *r)
{
    nfc_device *dev = nfc_open(r->ctx, r->connstring);
    if (!dev)
        return NULL;
    if (nfc_initiator_init(dev) < 0) {
        log_warnx("reader: cannot initialise %s: %s", r->connstring, nfc_strerror(dev));
        nfc_close(dev);
        return NULL;
    }
    /* libnfc's defaults retry selection forever; a card protocol must fail fast. */
    nfc_device_set_property_bool(dev, NP_INFINITE_SELECT, false);
    return dev;
}

/* Card in the field: run the protocol under the watchdog, report, then wait for the
 * card to leave. Returns false if the reader itself failed. */
static bool handle_card(struct reader_dev *r, nfc_device *dev, const nfc_target *target)
{
    struct card_read card;
    memset(&card, 0, sizeof(card));

    int rc = 0;
    if (atomic_exchange(&r->issue, false)) {
        /* Issuing writes keys and a file: several times a read's traffic. */
        watchdog_arm(r, 4 * WATCHDOG_MS);
        int res = card_issue(dev, target, &r->keys, &card);
        watchdog_arm(r, 0);
        card.issue_attempted = true;
        card.issue_result = res;
        if (res == -EIO) {
            const nfc_iso14443a_info *nai = &target->nti.nai;
            card.uid_len = nai->szUidLen <= HAL_UID_MAX ? nai->szUidLen : HAL_UID_MAX;
            memcpy(card.uid, nai->abtUid, card.uid_len);
        }
    } else if (r->auth == CARD_AUTH_DESFIRE) {
        unsigned fired = atomic_load(&r->watchdog_fired);
        watchdog_arm(r, WATCHDOG_MS);
        rc = card_read(dev, target, &r->keys, &card);
        watchdog_arm(r, 0);
        if (atomic_load(&r->watchdog_fired) != fired)
            log_warnx("reader: card transaction took longer than %d ms; aborted", WATCHDOG_MS);
    } else {
        /* uid-insecure: the anticollision UID is all there is to know. */
        const nfc_iso14443a_info *nai = &target->nti.nai;
        card.kind = CARD_KIND_UID;
        card.uid_len = nai->szUidLen <= HAL_UID_MAX ? nai->szUidLen : HAL_UID_MAX;
        memcpy(card.uid, nai->abtUid, card.uid_len);
    }
    if (rc == 0)
        post(r, READER_CARD, &card);
    else
        log_info("reader: card left or stopped answering during the transaction");
    OPENSSL_cleanse(&card, sizeof(card));

    /* Until it leaves, the same card must not count as a new tap. */
    while (!stopping(r)) {
        int present = nfc_initiator_target_is_present(dev, NULL);
        if (present != NFC_SUCCESS) {
            if (present == NFC_EIO || present == NFC_ENOTSUCHDEV)
                return false;
            break;
        }
        if (wait_or_stop(r, PRESENCE_MS))
            break;
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
                post(r, READER_FAULT, NULL);
                r->fault_reported = true;
            }
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

        bool healthy = true;
        while (healthy && !stopping(r)) {
            nfc_target target;
            /* 0xFF polls forever: the chip wakes us when a card comes. */
            int rc = nfc_initiator_poll_target(dev, &iso14443a, 1, 0xFF, POLL_PERIOD, &target);
            if (rc > 0)
                healthy = handle_card(r, dev, &target);
            else if (rc == NFC_EOPABORTED || rc == 0 || rc == NFC_ETIMEOUT)
                continue; /* shutdown (checked above), or the chip's poll cycle ended */
            else
                healthy = false;
            OPENSSL_cleanse(&target, sizeof(target));
        }
        set_dev(r, NULL);
        nfc_close(dev);
        if (!healthy && !stopping(r)) {
            log_warnx("reader: lost %s; reopening", r->connstring);
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

/* Takes an exclusive lock on the reader's device node (resolved through symlinks),
 * so that two processes never talk to the same reader at once. */
static int lock_reader(const char *connstring, int *err)
{
    char path[PATH_MAX], real[PATH_MAX];
    if (!device_path(connstring, path, sizeof(path)))
        return -1; /* USB readers are found by libnfc itself: nothing to lock */
    if (!realpath(path, real)) {
        *err = -errno;
        log_warn("reader: %s", path);
        return -2;
    }
    int fd = open(real, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        *err = -errno;
        log_warn("reader: cannot open %s", real);
        return -2;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        *err = -EBUSY;
        log_warnx("reader: %s is in use by another process", real);
        close(fd);
        return -2;
    }
    return fd;
}

static struct reader_dev *nfc_open_backend(const struct config *cfg, reader_event_cb cb, void *arg,
                                           int *err)
{
    struct reader_dev *r = xcalloc(1, sizeof(*r));
    char msg[256];

    snprintf(r->connstring, sizeof(r->connstring), "%s", cfg->reader_connstring);
    r->auth = cfg->auth;
    r->cb = cb;
    r->cb_arg = arg;
    r->efd = -1;
    r->lock_fd = lock_reader(r->connstring, err);
    if (r->lock_fd == -2)
        goto err_free;

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
    if (r->lock_fd >= 0)
        close(r->lock_fd);
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
    /* nfc_abort_command() ends a blocking poll with NFC_EOPABORTED, but an abort sent
     * before the driver is waiting on its abort pipe is lost: repeat it until the
     * reader thread has left libnfc. */
    while (!r->exited) {
        if (r->dev)
            nfc_abort_command(r->dev);
        struct timespec ts;
        deadline_ts(100, &ts);
        pthread_cond_timedwait(&r->cond, &r->mu, &ts);
    }
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    pthread_join(r->watchdog, NULL);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->mu);
    nfc_exit(r->ctx);
    close(r->efd);
    if (r->lock_fd >= 0)
        close(r->lock_fd);
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

const struct reader_ops reader_libnfc_ops = {
    .name = "libnfc",
    .open = nfc_open_backend,
    .close = nfc_close_backend,
    .event_fd = nfc_event_fd,
    .dispatch = nfc_dispatch,
    .issue_next = nfc_issue_next,
};
