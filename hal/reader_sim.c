/*
 * reader_sim.c - simulated card reader.
 *
 * `lockerctl sim tap UID` puts a card in the field: the card is queued through a
 * pipe and reported from the event loop, like the libnfc backend's eventfd. A
 * simulated DESFire card always authenticates; a UID card is reported as UID-only.
 */
#include "hal/hal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "daemon/log.h"

struct tap_msg {
    enum reader_event_type type;
    struct card_read card;
};

struct reader_dev {
    int pipe_rd, pipe_wr;
    bool issue; /* the next tap is a blank card being personalised */
    reader_event_cb cb;
    void *cb_arg;
};

static struct reader_dev *sim_open(const struct config *cfg, reader_event_cb cb, void *arg,
                                   int *err)
{
    (void)cfg;
    struct reader_dev *dev = xcalloc(1, sizeof(*dev));
    int fds[2];

    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        *err = -errno;
        free(dev);
        return NULL;
    }
    dev->pipe_rd = fds[0];
    dev->pipe_wr = fds[1];
    dev->cb = cb;
    dev->cb_arg = arg;
    return dev;
}

static void sim_close(struct reader_dev *dev)
{
    if (!dev)
        return;
    close(dev->pipe_rd);
    close(dev->pipe_wr);
    free(dev);
}

static int sim_event_fd(struct reader_dev *dev)
{
    return dev->pipe_rd;
}

static int sim_dispatch(struct reader_dev *dev)
{
    struct tap_msg msg;
    int count = 0;
    ssize_t n;

    while ((n = read(dev->pipe_rd, &msg, sizeof(msg))) == (ssize_t)sizeof(msg)) {
        dev->cb(msg.type, msg.type == READER_CARD ? &msg.card : NULL, dev->cb_arg);
        count++;
    }
    /* The UID must not linger in memory longer than the tap. */
    OPENSSL_cleanse(&msg, sizeof(msg));
    if (n < 0 && errno != EAGAIN)
        return -errno;
    return count;
}

static int send_msg(struct reader_dev *dev, struct tap_msg *msg)
{
    ssize_t n = write(dev->pipe_wr, msg, sizeof(*msg));
    OPENSSL_cleanse(msg, sizeof(*msg));
    return n == (ssize_t)sizeof(*msg) ? 0 : -EIO;
}

int reader_sim_tap(struct reader_dev *dev, const uint8_t *uid, size_t uid_len, enum card_kind kind,
                   bool authenticated)
{
    /* ISO 14443-3 UIDs are 4, 7 or 10 bytes. */
    if (uid_len != 4 && uid_len != 7 && uid_len != 10)
        return -EINVAL;
    struct tap_msg msg = {.type = READER_CARD};
    msg.card.kind = kind;
    msg.card.authenticated = kind == CARD_KIND_DESFIRE && authenticated;
    memcpy(msg.card.uid, uid, uid_len);
    msg.card.uid_len = uid_len;
    if (dev->issue) {
        /* A simulated blank DESFire card takes the site's keys; other cards cannot. */
        dev->issue = false;
        msg.card.issue_attempted = true;
        msg.card.issue_result = kind == CARD_KIND_DESFIRE ? 0 : -ENOTSUP;
        msg.card.authenticated = kind == CARD_KIND_DESFIRE;
    }
    return send_msg(dev, &msg);
}

int reader_sim_remove(struct reader_dev *dev)
{
    struct tap_msg msg = {.type = READER_CARD_REMOVED};
    return send_msg(dev, &msg);
}

static int sim_issue_next(struct reader_dev *dev, bool on)
{
    dev->issue = on;
    return 0;
}

static int sim_info(struct reader_dev *dev, char *buf, size_t len)
{
    (void)dev;
    snprintf(buf, len, "sim reader");
    return 0;
}

const struct reader_ops reader_sim_ops = {
    .name = "sim",
    .open = sim_open,
    .close = sim_close,
    .event_fd = sim_event_fd,
    .dispatch = sim_dispatch,
    .issue_next = sim_issue_next,
    .info = sim_info,
};
