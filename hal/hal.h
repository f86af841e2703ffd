/*
 * hal.h - hardware interfaces of the station.
 *
 * Each device class is a table of function pointers; a backend fills one table and
 * the daemon chooses the backend at run time from the config. Backends never call
 * into the daemon: they expose a file descriptor that the daemon's event loop
 * watches and, when it is readable, the daemon calls the backend's read function,
 * which reports what happened through a callback given at open.
 *
 * Error convention: -errno on failure, 0 (or a positive count) on success.
 * Ownership: a backend's open() returns an object that its close() frees; close()
 * accepts NULL.
 */
#ifndef LOCKERD_HAL_H
#define LOCKERD_HAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/config.h"

/* ------------------------------------------------------------------ GPIO */

enum gpio_dir { GPIO_OUTPUT, GPIO_INPUT };

/* A line handle is an index into the backend's table of requested lines. */
typedef int gpio_line;

/* Called from gpio_ops.dispatch() for each debounced edge of an input line:
 * value is the logical (active-high after active_low is applied) new level. */
typedef void (*gpio_edge_cb)(gpio_line line, int value, void *arg);

struct gpio_dev;

struct gpio_ops {
    const char *name;
    /* Opens the backend; cfg gives the default chip and (for sim) the state dir. */
    struct gpio_dev *(*open)(const struct config *cfg, gpio_edge_cb cb, void *arg, int *err);
    void (*close)(struct gpio_dev *dev);
    /* Requests a line. Outputs start inactive (logical 0). Returns the handle >= 0 or
     * -errno (-ENOENT: no line of that name). */
    gpio_line (*request)(struct gpio_dev *dev, const struct line_cfg *line, enum gpio_dir dir);
    /* Logical value. Returns 0 or -errno. */
    int (*set)(struct gpio_dev *dev, gpio_line line, int value);
    /* Returns 0/1 or -errno. */
    int (*get)(struct gpio_dev *dev, gpio_line line);
    /* fd to watch for EPOLLIN (edge events); -1 if the backend has none. */
    int (*event_fd)(struct gpio_dev *dev);
    /* Reads pending events and calls the edge callback. Returns count or -errno. */
    int (*dispatch)(struct gpio_dev *dev);
};

extern const struct gpio_ops gpio_sim_ops;
extern const struct gpio_ops gpio_gpiod_ops;

/* Backend by config value, or NULL if it is not compiled in. */
const struct gpio_ops *hal_gpio_ops(enum gpio_backend backend);

/* ---------------------------------------------------------------- reader */

#define HAL_UID_MAX 10

enum card_kind {
    CARD_KIND_UID,     /* only a UID could be read (MIFARE Classic, Ultralight, ...) */
    CARD_KIND_DESFIRE, /* DESFire with a successful AES authentication */
};

/* What the reader saw. uid is the card's real UID (for DESFire: behind any random
 * UID), used only to compute the credential HMAC and then wiped. */
struct card_read {
    enum card_kind kind;
    bool authenticated; /* for DESFire: key diversification and AES auth succeeded */
    uint8_t uid[HAL_UID_MAX];
    size_t uid_len;
    /* Set when the reader was asked to issue the next card (reader_ops.issue_next):
     * 0 if the card was personalised for this site, else -errno (-EEXIST: already
     * issued; -EACCES: not a factory-default card; -ENOTSUP: not a DESFire card). */
    bool issue_attempted;
    int issue_result;
};

enum reader_event_type { READER_CARD, READER_CARD_REMOVED, READER_FAULT };

typedef void (*reader_event_cb)(enum reader_event_type type, const struct card_read *card,
                                void *arg);

struct reader_dev;

struct reader_ops {
    const char *name;
    struct reader_dev *(*open)(const struct config *cfg, reader_event_cb cb, void *arg, int *err);
    void (*close)(struct reader_dev *dev);
    int (*event_fd)(struct reader_dev *dev);
    int (*dispatch)(struct reader_dev *dev);
    /* on: the next card is personalised for this site instead of read (lockerctl
     * card issue); off: back to reading. Returns 0 or -errno. */
    int (*issue_next)(struct reader_dev *dev, bool on);
    /* What the reader is, for `lockerctl selftest`: writes a description such as
     * "PN532 v1.6 (pn532_uart:/dev/serial0)" into buf (always NUL-terminated) and
     * returns 0 while the reader is open, or writes why it is not and returns -errno
     * (-EIO: lost or not found, reopening with back-off; -EAGAIN: still opening).
     * Never talks to the device: it reports what the backend last saw. */
    int (*info)(struct reader_dev *dev, char *buf, size_t len);
};

extern const struct reader_ops reader_sim_ops;
extern const struct reader_ops reader_libnfc_ops;            /* in-process */
extern const struct reader_ops reader_libnfc_supervised_ops; /* the same, in a child process */
const struct reader_ops *hal_reader_ops(enum reader_backend backend);

/* ------------------------------------------------------ simulation controls
 * Used by the daemon's control socket for `lockerctl sim ...`; only valid on devices
 * opened by the sim backends. */

/* Presents a card in the field. A DESFire card that is not authenticated is what a
 * clone of a member's UID looks like. Returns 0 or -errno (-EINVAL for a bad UID). */
int reader_sim_tap(struct reader_dev *dev, const uint8_t *uid, size_t uid_len, enum card_kind kind,
                   bool authenticated);
int reader_sim_remove(struct reader_dev *dev);

/* Sets a simulated input line by its config name. -ENOENT if unknown, -EPERM if it
 * is an output. The edge is delivered through the event fd, like real hardware. */
int gpio_sim_set_input(struct gpio_dev *dev, const char *name, int value);
/* Every requested line: name, direction, value, and for outputs how many times they
 * went active. Writes a JSON array into a malloc'd string (caller frees). */
char *gpio_sim_describe(struct gpio_dev *dev);
/* True when the simulated hardware was created by this open (no state file yet):
 * the station then puts every key in place, as a new cabinet is delivered. */
bool gpio_sim_fresh(struct gpio_dev *dev);
/* Latency hook for benchmarks: called on every output change with the line
 * handle and value. */
void gpio_sim_set_output_hook(struct gpio_dev *dev, void (*hook)(gpio_line, int, void *),
                              void *arg);

#endif
