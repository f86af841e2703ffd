/*
 * gpio_gpiod.c - GPIO lines through the kernel's GPIO character device (libgpiod).
 *
 * Builds against libgpiod 1.6 (Debian bookworm) and 2.x (trixie, bookworm-backports);
 * the Makefile defines HAVE_LIBGPIOD_V2 when pkg-config finds 2.x. The two APIs share
 * nothing beyond gpiod_chip_open(), so every libgpiod call of lockerd lives in this
 * file, in the functions of the "libgpiod" section below. Everything above them
 * (how a config name finds its line, debounce, the coil limit) is common to both.
 *
 * Line names: "GPIO17" is looked up on every chip, in chip number order, and the
 * first line of that name wins; "CHIP:17" is offset 17 on CHIP, a chip name
 * (gpiochip0) or label (pinctrl-bcm2711); a bare "17" is on [gpio] chip, which may
 * also be a path. Chips are opened once and kept until close(): libgpiod 1.x ties a
 * requested line to its chip object.
 *
 * One fd for the event loop: the backend's own epoll fd holds every input's
 * edge-event fd and one timerfd (an epoll fd is itself pollable). dispatch() reads
 * what is ready and reports logical levels through the edge callback, never the
 * same level twice in a row.
 *
 * Debounce: libgpiod 2.x asks the kernel for it (gpiolib debounces in software when
 * the chip cannot). The 1.x API has no debounce, so here an edge only (re)starts a
 * per-line deadline; when the deadline passes without another edge, the level is
 * read and reported if it differs from the last one reported.
 *
 * Coil limit: the state machine switches a lock off after max_energize. Under it,
 * this backend keeps its own deadline per lock output (lines named as a compartment's
 * lock in the config), armed whenever the output goes from 0 to 1; if the lock is
 * still on when it passes, the backend forces it off and logs an error. It is a net
 * for bugs in the state machine, so it must not trip in normal operation: it fires
 * ENERGIZE_GRACE_MS after max_energize. The state machine's own timer runs in the
 * same event loop, and the loop runs fd handlers before timers in a pass, so with no
 * grace a pass that finds both due would let this net fire first and cry wolf.
 *
 * Error convention (hal.h): -errno. The daemon must never block here: edge-event
 * fds are switched to O_NONBLOCK, and reads happen only when epoll says so.
 */
#include "hal/hal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <gpiod.h>

#include "daemon/log.h"

#define GPIOD_MAX_LINES 128
#define GPIOD_MAX_CHIPS 64
#define EVENT_BATCH     16
#define CONSUMER        "lockerd"
#define TAG_TIMER       UINT64_MAX
#define NS_PER_MS       INT64_C(1000000)
/* See the file comment: how late the backend's coil net may trip. */
#define ENERGIZE_GRACE_MS 500
/* A lock that could not be forced off is tried again this often. */
#define FORCE_OFF_RETRY_MS 100

struct gd_chip {
    char path[PATH_MAX];
    struct gpiod_chip *chip;
};

struct gd_line {
    char name[CONFIG_NAME_LEN]; /* as written in the config */
    enum gpio_dir dir;
    bool is_lock; /* output under the coil limit */
    int chip;     /* index into gpio_dev.chips */
    unsigned int offset;
#ifdef HAVE_LIBGPIOD_V2
    struct gpiod_line_request *req;
#else
    struct gpiod_line *line;
#endif
    int event_fd; /* inputs: owned by libgpiod; -1 for outputs or once reading failed */
    /* Logical level: for outputs the one driven, for inputs the one the daemon last
     * learnt (from the edge callback or get()). */
    int value;
    int64_t deadline_ns; /* CLOCK_MONOTONIC; inputs: debounce, locks: coil limit; 0 = none */
};

struct gpio_dev {
    gpio_edge_cb cb;
    void *cb_arg;
    int epfd;
    int timerfd;
    int64_t armed_ns; /* deadline the timerfd is set to, 0 = disarmed */

    /* Copied from the config: the daemon frees its config on reload. */
    int64_t max_energize_ms;
    int64_t debounce_ms;
    char default_chip[CONFIG_NAME_LEN];
    char locks[CONFIG_MAX_COMPARTMENTS][CONFIG_NAME_LEN];
    int nlocks;

    struct gd_chip chips[GPIOD_MAX_CHIPS];
    int nchips;
    struct gd_line lines[GPIOD_MAX_LINES];
    int nlines;
#ifdef HAVE_LIBGPIOD_V2
    struct gpiod_edge_event_buffer *evbuf;
#endif
};

/* ------------------------------------------------------------ libgpiod */

/* Each function here wraps one operation for both library versions and returns
 * -errno; nothing outside this section names a gpiod_ symbol. */

static int hw_chip_open(const char *path, struct gpiod_chip **out)
{
    *out = gpiod_chip_open(path);
    return *out ? 0 : -errno;
}

static void hw_chip_close(struct gpiod_chip *chip)
{
    gpiod_chip_close(chip);
}

static int hw_chip_label(struct gpiod_chip *chip, char *buf, size_t len)
{
#ifdef HAVE_LIBGPIOD_V2
    struct gpiod_chip_info *info = gpiod_chip_get_info(chip);
    if (!info)
        return -errno;
    snprintf(buf, len, "%s", gpiod_chip_info_get_label(info));
    gpiod_chip_info_free(info);
#else
    snprintf(buf, len, "%s", gpiod_chip_label(chip));
#endif
    return 0;
}

/* Offset of the first line called name on chip, or -ENOENT. */
static int hw_chip_find(struct gpiod_chip *chip, const char *name)
{
#ifdef HAVE_LIBGPIOD_V2
    int off = gpiod_chip_get_line_offset_from_name(chip, name);
    return off >= 0 ? off : -errno;
#else
    struct gpiod_line *line = gpiod_chip_find_line(chip, name);
    return line ? (int)gpiod_line_offset(line) : -errno;
#endif
}

#ifndef HAVE_LIBGPIOD_V2
static int v1_flags(const struct line_cfg *lc)
{
    int flags = lc->active_low ? GPIOD_LINE_REQUEST_FLAG_ACTIVE_LOW : 0;

    switch (lc->bias) {
    case LINE_BIAS_AS_IS:
        break;
    case LINE_BIAS_DISABLED:
        flags |= GPIOD_LINE_REQUEST_FLAG_BIAS_DISABLE;
        break;
    case LINE_BIAS_PULL_UP:
        flags |= GPIOD_LINE_REQUEST_FLAG_BIAS_PULL_UP;
        break;
    case LINE_BIAS_PULL_DOWN:
        flags |= GPIOD_LINE_REQUEST_FLAG_BIAS_PULL_DOWN;
        break;
    }
    return flags;
}
#else
static enum gpiod_line_bias v2_bias(enum line_bias bias)
{
    switch (bias) {
    case LINE_BIAS_AS_IS:
        return GPIOD_LINE_BIAS_AS_IS;
    case LINE_BIAS_DISABLED:
        return GPIOD_LINE_BIAS_DISABLED;
    case LINE_BIAS_PULL_UP:
        return GPIOD_LINE_BIAS_PULL_UP;
    case LINE_BIAS_PULL_DOWN:
        return GPIOD_LINE_BIAS_PULL_DOWN;
    }
    return GPIOD_LINE_BIAS_AS_IS;
}
#endif

/* Requests l (chip and offset set) as an output driven inactive from the first
 * moment, or as an input with both-edge events; fills l->event_fd for inputs. */
static int hw_request(struct gpio_dev *dev, struct gd_line *l, const struct line_cfg *lc)
{
    struct gpiod_chip *chip = dev->chips[l->chip].chip;
    int err = 0;

#ifdef HAVE_LIBGPIOD_V2
    struct gpiod_line_settings *ls = gpiod_line_settings_new();
    struct gpiod_line_config *lcfg = gpiod_line_config_new();
    struct gpiod_request_config *rcfg = gpiod_request_config_new();
    if (!ls || !lcfg || !rcfg) {
        err = -ENOMEM;
        goto out_free;
    }
    gpiod_line_settings_set_active_low(ls, lc->active_low);
    if (gpiod_line_settings_set_bias(ls, v2_bias(lc->bias)) < 0)
        goto out_errno;
    if (l->dir == GPIO_OUTPUT) {
        if (gpiod_line_settings_set_direction(ls, GPIOD_LINE_DIRECTION_OUTPUT) < 0 ||
            gpiod_line_settings_set_output_value(ls, GPIOD_LINE_VALUE_INACTIVE) < 0)
            goto out_errno;
    } else {
        if (gpiod_line_settings_set_direction(ls, GPIOD_LINE_DIRECTION_INPUT) < 0 ||
            gpiod_line_settings_set_edge_detection(ls, GPIOD_LINE_EDGE_BOTH) < 0)
            goto out_errno;
        gpiod_line_settings_set_debounce_period_us(ls, (unsigned long)dev->debounce_ms * 1000);
    }
    if (gpiod_line_config_add_line_settings(lcfg, &l->offset, 1, ls) < 0)
        goto out_errno;
    gpiod_request_config_set_consumer(rcfg, CONSUMER);
    l->req = gpiod_chip_request_lines(chip, rcfg, lcfg);
    if (!l->req)
        goto out_errno;
    l->event_fd = l->dir == GPIO_INPUT ? gpiod_line_request_get_fd(l->req) : -1;
    goto out_free;
out_errno:
    /* Taken before the frees below, which may overwrite errno. */
    err = -errno;
out_free:
    gpiod_request_config_free(rcfg);
    gpiod_line_config_free(lcfg);
    gpiod_line_settings_free(ls);
    return err;
#else
    struct gpiod_line_request_config rc = {
        .consumer = CONSUMER,
        .request_type = l->dir == GPIO_OUTPUT ? GPIOD_LINE_REQUEST_DIRECTION_OUTPUT
                                              : GPIOD_LINE_REQUEST_EVENT_BOTH_EDGES,
        .flags = v1_flags(lc),
    };
    l->line = gpiod_chip_get_line(chip, l->offset);
    if (!l->line)
        return -errno;
    /* default_val is logical: 0 = inactive even on an active-low lock. */
    if (gpiod_line_request(l->line, &rc, 0) < 0) {
        err = -errno;
        l->line = NULL;
        return err;
    }
    l->event_fd = l->dir == GPIO_INPUT ? gpiod_line_event_get_fd(l->line) : -1;
    return 0;
#endif
}

static void hw_release(struct gd_line *l)
{
#ifdef HAVE_LIBGPIOD_V2
    if (l->req)
        gpiod_line_request_release(l->req);
    l->req = NULL;
#else
    if (l->line)
        gpiod_line_release(l->line);
    l->line = NULL;
#endif
    l->event_fd = -1;
}

/* Logical level, 0 or 1, or -errno. */
static int hw_get(struct gd_line *l)
{
#ifdef HAVE_LIBGPIOD_V2
    enum gpiod_line_value v = gpiod_line_request_get_value(l->req, l->offset);
    switch (v) {
    case GPIOD_LINE_VALUE_ERROR:
        return -errno;
    case GPIOD_LINE_VALUE_INACTIVE:
        return 0;
    case GPIOD_LINE_VALUE_ACTIVE:
        return 1;
    }
    return -EIO;
#else
    int v = gpiod_line_get_value(l->line);
    return v < 0 ? -errno : v;
#endif
}

static int hw_set(struct gd_line *l, int value)
{
#ifdef HAVE_LIBGPIOD_V2
    int r = gpiod_line_request_set_value(
        l->req, l->offset, value ? GPIOD_LINE_VALUE_ACTIVE : GPIOD_LINE_VALUE_INACTIVE);
#else
    int r = gpiod_line_set_value(l->line, value);
#endif
    return r < 0 ? -errno : 0;
}

/* Reads up to max pending edges of input l: levels[] the logical level after each
 * edge, ts[] its kernel timestamp (CLOCK_MONOTONIC on kernels since 5.7; older ones
 * stamp v1 events with the wall clock). Sets *count to the edges read (0 on an
 * error) and returns 0, -EAGAIN if none was pending, or -errno. */
static int hw_read_edges(struct gpio_dev *dev, struct gd_line *l, int *levels, int64_t *ts, int max,
                         int *count)
{
    *count = 0;
#ifdef HAVE_LIBGPIOD_V2
    int n = gpiod_line_request_read_edge_events(l->req, dev->evbuf, (size_t)max);
    if (n < 0)
        return -errno;
    for (int i = 0; i < n; i++) {
        struct gpiod_edge_event *ev = gpiod_edge_event_buffer_get_event(dev->evbuf, (unsigned)i);
        levels[i] = gpiod_edge_event_get_event_type(ev) == GPIOD_EDGE_EVENT_RISING_EDGE;
        ts[i] = (int64_t)gpiod_edge_event_get_timestamp_ns(ev);
    }
#else
    struct gpiod_line_event evs[EVENT_BATCH];
    (void)dev;
    if (max > EVENT_BATCH)
        max = EVENT_BATCH;
    int n = gpiod_line_event_read_fd_multiple(l->event_fd, evs, (unsigned)max);
    if (n < 0)
        return -errno;
    /* The kernel reports edges of the logical level, active-low already applied. */
    for (int i = 0; i < n; i++) {
        levels[i] = evs[i].event_type == GPIOD_LINE_EVENT_RISING_EDGE;
        ts[i] = (int64_t)evs[i].ts.tv_sec * 1000000000 + evs[i].ts.tv_nsec;
    }
#endif
    *count = n;
    return 0;
}

static int hw_events_init(struct gpio_dev *dev)
{
#ifdef HAVE_LIBGPIOD_V2
    dev->evbuf = gpiod_edge_event_buffer_new(EVENT_BATCH);
    return dev->evbuf ? 0 : -errno;
#else
    (void)dev;
    return 0;
#endif
}

static void hw_events_free(struct gpio_dev *dev)
{
#ifdef HAVE_LIBGPIOD_V2
    if (dev->evbuf)
        gpiod_edge_event_buffer_free(dev->evbuf);
    dev->evbuf = NULL;
#else
    (void)dev;
#endif
}

/* The kernel debounces for 2.x; 1.x needs our deadlines. */
static bool soft_debounce(const struct gpio_dev *dev)
{
#ifdef HAVE_LIBGPIOD_V2
    (void)dev;
    return false;
#else
    return dev->debounce_ms > 0;
#endif
}

/* ------------------------------------------------------------ chips and names */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static bool all_digits(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
    }
    return true;
}

/* Offsets are small; more than 6 digits is a typo, not a line. */
static int parse_offset(const char *s, size_t len, unsigned int *out)
{
    unsigned int v = 0;

    if (!all_digits(s, len) || len > 6)
        return -EINVAL;
    for (size_t i = 0; i < len; i++)
        v = v * 10 + (unsigned)(s[i] - '0');
    *out = v;
    return 0;
}

/* Index of the open chip at path, opening it on first use. */
static int chip_by_path(struct gpio_dev *dev, const char *path)
{
    for (int i = 0; i < dev->nchips; i++) {
        if (strcmp(dev->chips[i].path, path) == 0)
            return i;
    }
    if (dev->nchips == GPIOD_MAX_CHIPS)
        return -EMFILE;
    struct gd_chip *c = &dev->chips[dev->nchips];
    int r = hw_chip_open(path, &c->chip);
    if (r < 0)
        return r;
    snprintf(c->path, sizeof(c->path), "%s", path);
    return dev->nchips++;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Numbers N of /dev/gpiochipN, ascending, so name lookups are repeatable: sets
 * *count to how many (0 on an error) and returns 0 or -errno. */
static int list_chips(int *nums, int max, int *count)
{
    DIR *d = opendir("/dev");
    struct dirent *e;
    int n = 0;

    *count = 0;
    if (!d)
        return -errno;
    while ((e = readdir(d)) != NULL && n < max) {
        if (strncmp(e->d_name, "gpiochip", 8) != 0)
            continue;
        const char *num = e->d_name + 8;
        if (all_digits(num, strlen(num)) && strlen(num) <= 6)
            nums[n++] = atoi(num);
    }
    closedir(d);
    qsort(nums, (size_t)n, sizeof(nums[0]), cmp_int);
    *count = n;
    return 0;
}

/* Opens every chip in order and calls fn until it returns non-negative; returns
 * that, or -ENOENT. Chips that cannot be opened are skipped (with a warning): a
 * broken chip must not hide a working one. */
static int each_chip(struct gpio_dev *dev, int (*fn)(struct gpio_dev *, int, void *), void *arg)
{
    int nums[GPIOD_MAX_CHIPS], n;
    int err = list_chips(nums, GPIOD_MAX_CHIPS, &n);
    char path[32];

    if (err < 0)
        return err;
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof(path), "/dev/gpiochip%d", nums[i]);
        int c = chip_by_path(dev, path);
        if (c < 0) {
            log_warnx("gpiod: cannot open %s: %s", path, strerror(-c));
            continue;
        }
        int r = fn(dev, c, arg);
        if (r >= 0)
            return r;
    }
    return -ENOENT;
}

static int match_label(struct gpio_dev *dev, int c, void *arg)
{
    char label[CONFIG_NAME_LEN * 2];
    if (hw_chip_label(dev->chips[c].chip, label, sizeof(label)) < 0)
        return -1;
    return strcmp(label, arg) == 0 ? c : -1;
}

/* A chip as [gpio] chip or the CHIP of "CHIP:17" names it: a path, a name under
 * /dev (gpiochip0) or a label (pinctrl-bcm2711, a gpio-sim bank label). */
static int chip_by_spec(struct gpio_dev *dev, const char *spec)
{
    char path[CONFIG_NAME_LEN + 8];
    struct stat st;

    if (spec[0] == '/')
        return chip_by_path(dev, spec);
    snprintf(path, sizeof(path), "/dev/%s", spec);
    if (strncmp(spec, "gpiochip", 8) == 0 && stat(path, &st) == 0)
        return chip_by_path(dev, path);
    return each_chip(dev, match_label, (void *)spec);
}

struct name_hit {
    const char *name;
    int chip;
    unsigned int offset;
};

static int match_name(struct gpio_dev *dev, int c, void *arg)
{
    struct name_hit *hit = arg;
    int off = hw_chip_find(dev->chips[c].chip, hit->name);
    if (off < 0)
        return -1;
    hit->chip = c;
    hit->offset = (unsigned)off;
    return 0;
}

/* Where a config line name points: chip index and offset. */
static int resolve(struct gpio_dev *dev, const char *spec, int *chip, unsigned int *offset)
{
    const char *colon = strrchr(spec, ':');
    char chipname[CONFIG_NAME_LEN];
    int c;

    if (all_digits(spec, strlen(spec))) {
        if (dev->default_chip[0] == '\0') {
            log_errx("gpiod: line '%s' is a bare offset, but [gpio] chip is empty", spec);
            return -EINVAL;
        }
        if (parse_offset(spec, strlen(spec), offset) < 0)
            return -EINVAL;
        c = chip_by_spec(dev, dev->default_chip);
        if (c < 0) {
            log_errx("gpiod: no GPIO chip '%s' ([gpio] chip)", dev->default_chip);
            return c;
        }
        *chip = c;
        return 0;
    }
    if (colon && colon != spec && all_digits(colon + 1, strlen(colon + 1))) {
        snprintf(chipname, sizeof(chipname), "%.*s", (int)(colon - spec), spec);
        if (parse_offset(colon + 1, strlen(colon + 1), offset) < 0)
            return -EINVAL;
        c = chip_by_spec(dev, chipname);
        if (c < 0) {
            log_errx("gpiod: no GPIO chip named or labelled '%s' (line '%s')", chipname, spec);
            return c;
        }
        *chip = c;
        return 0;
    }
    struct name_hit hit = {.name = spec};
    int r = each_chip(dev, match_name, &hit);
    if (r < 0) {
        log_errx("gpiod: no line named '%s' on any GPIO chip", spec);
        return r;
    }
    *chip = hit.chip;
    *offset = hit.offset;
    return 0;
}

/* ------------------------------------------------------------ timer */

/* Sets the timerfd to the earliest deadline of any line, or disarms it. */
static int rearm(struct gpio_dev *dev)
{
    struct itimerspec its;
    int64_t earliest = 0;

    for (int i = 0; i < dev->nlines; i++) {
        int64_t d = dev->lines[i].deadline_ns;
        if (d != 0 && (earliest == 0 || d < earliest))
            earliest = d;
    }
    if (earliest == dev->armed_ns)
        return 0;
    memset(&its, 0, sizeof(its));
    its.it_value.tv_sec = (time_t)(earliest / 1000000000);
    its.it_value.tv_nsec = (long)(earliest % 1000000000);
    if (timerfd_settime(dev->timerfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) {
        int err = -errno;
        log_warn("gpiod: timerfd_settime");
        return err;
    }
    dev->armed_ns = earliest;
    return 0;
}

/* ------------------------------------------------------------ gpio_ops */

static struct gpio_dev *gd_open(const struct config *cfg, gpio_edge_cb cb, void *arg, int *err)
{
    struct gpio_dev *dev = xcalloc(1, sizeof(*dev));
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_TIMER};

    dev->cb = cb;
    dev->cb_arg = arg;
    dev->max_energize_ms = cfg->max_energize_ms;
    dev->debounce_ms = cfg->debounce_ms;
    snprintf(dev->default_chip, sizeof(dev->default_chip), "%s", cfg->gpio_chip);
    for (int i = 0; i < cfg->n_compartments && i < CONFIG_MAX_COMPARTMENTS; i++)
        snprintf(dev->locks[dev->nlocks++], CONFIG_NAME_LEN, "%s", cfg->compartments[i].lock.name);

    dev->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (dev->epfd < 0) {
        *err = -errno;
        goto err_free;
    }
    dev->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (dev->timerfd < 0) {
        *err = -errno;
        goto err_close_epoll;
    }
    if (epoll_ctl(dev->epfd, EPOLL_CTL_ADD, dev->timerfd, &ev) < 0) {
        *err = -errno;
        goto err_close_timer;
    }
    *err = hw_events_init(dev);
    if (*err < 0)
        goto err_close_timer;
    return dev;

err_close_timer:
    close(dev->timerfd);
err_close_epoll:
    close(dev->epfd);
err_free:
    free(dev);
    return NULL;
}

static void gd_close(struct gpio_dev *dev)
{
    if (!dev)
        return;
    /* Every lock off before any line is let go: what a released output does is up
     * to the chip driver. */
    for (int i = 0; i < dev->nlines; i++) {
        struct gd_line *l = &dev->lines[i];
        if (l->dir != GPIO_OUTPUT)
            continue;
        int r = hw_set(l, 0);
        if (r < 0)
            log_errx("gpiod: cannot drive %s inactive at close: %s", l->name, strerror(-r));
    }
    for (int i = 0; i < dev->nlines; i++) {
        struct gd_line *l = &dev->lines[i];
        if (l->event_fd >= 0)
            epoll_ctl(dev->epfd, EPOLL_CTL_DEL, l->event_fd, NULL);
        hw_release(l);
    }
    for (int i = 0; i < dev->nchips; i++)
        hw_chip_close(dev->chips[i].chip);
    hw_events_free(dev);
    close(dev->timerfd);
    close(dev->epfd);
    free(dev);
}

static bool is_lock_name(const struct gpio_dev *dev, const char *name)
{
    for (int i = 0; i < dev->nlocks; i++) {
        if (strcmp(dev->locks[i], name) == 0)
            return true;
    }
    return false;
}

/* Takes the starting level of a requested input and adds its event fd to our epoll. */
static int watch_input(struct gpio_dev *dev, int idx)
{
    struct gd_line *l = &dev->lines[idx];
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)idx};
    int fl;

    if (l->event_fd < 0)
        return -EIO;
    /* Both library versions open the event fd blocking; one spurious wakeup must
     * not stall the whole station. */
    fl = fcntl(l->event_fd, F_GETFL);
    if (fl < 0 || fcntl(l->event_fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    int v = hw_get(l);
    if (v < 0)
        return v;
    l->value = v;
    if (epoll_ctl(dev->epfd, EPOLL_CTL_ADD, l->event_fd, &ev) < 0)
        return -errno;
    return 0;
}

static gpio_line gd_request(struct gpio_dev *dev, const struct line_cfg *lc, enum gpio_dir dir)
{
    if (lc->name[0] == '\0')
        return -EINVAL;
    if (dev->nlines == GPIOD_MAX_LINES)
        return -ENOSPC;

    int idx = dev->nlines;
    struct gd_line *l = &dev->lines[idx];
    memset(l, 0, sizeof(*l));
    snprintf(l->name, sizeof(l->name), "%s", lc->name);
    l->dir = dir;
    l->is_lock = dir == GPIO_OUTPUT && is_lock_name(dev, lc->name);
    l->event_fd = -1;

    int r = resolve(dev, lc->name, &l->chip, &l->offset);
    if (r < 0)
        return r;
    r = hw_request(dev, l, lc);
    if (r < 0)
        return r;
    if (dir == GPIO_INPUT) {
        r = watch_input(dev, idx);
        if (r < 0) {
            hw_release(l);
            return r;
        }
    }
    log_debug("gpiod: %s is %s offset %u, %s%s", l->name, dev->chips[l->chip].path, l->offset,
              dir == GPIO_OUTPUT ? "output" : "input", l->is_lock ? " (lock)" : "");
    return dev->nlines++;
}

static struct gd_line *line_at(struct gpio_dev *dev, gpio_line line)
{
    return line >= 0 && line < dev->nlines ? &dev->lines[line] : NULL;
}

static int gd_set(struct gpio_dev *dev, gpio_line line, int value)
{
    struct gd_line *l = line_at(dev, line);
    bool armed = false;
    int r;

    if (!l || l->dir != GPIO_OUTPUT)
        return -EINVAL;
    value = value ? 1 : 0;
    /* The limit is armed before the coil is energised: if it cannot be, the coil
     * stays off. A lock already on keeps its deadline: setting it again must not
     * extend its time. */
    if (value && !l->value && l->is_lock) {
        l->deadline_ns = now_ns() + (dev->max_energize_ms + ENERGIZE_GRACE_MS) * NS_PER_MS;
        r = rearm(dev);
        if (r < 0) {
            l->deadline_ns = 0;
            return r;
        }
        armed = true;
    }
    r = hw_set(l, value);
    if (r < 0) {
        if (armed) {
            l->deadline_ns = 0;
            rearm(dev);
        }
        return r;
    }
    l->value = value;
    if (!value && l->deadline_ns != 0) {
        l->deadline_ns = 0;
        rearm(dev);
    }
    return 0;
}

static int gd_get(struct gpio_dev *dev, gpio_line line)
{
    struct gd_line *l = line_at(dev, line);
    if (!l)
        return -EINVAL;
    int v = hw_get(l);
    /* The caller now knows this level: later edges are reported relative to it,
     * so the daemon never hears of a level it already has. */
    if (v >= 0 && l->dir == GPIO_INPUT)
        l->value = v;
    return v;
}

static int gd_event_fd(struct gpio_dev *dev)
{
    return dev->epfd;
}

static int report(struct gpio_dev *dev, int idx, int value)
{
    struct gd_line *l = &dev->lines[idx];
    if (value == l->value)
        return 0;
    l->value = value;
    dev->cb(idx, value, dev->cb_arg);
    return 1;
}

/* Reads the pending edges of one input. Returns reports made or -errno. */
static int read_line(struct gpio_dev *dev, int idx)
{
    struct gd_line *l = &dev->lines[idx];
    int levels[EVENT_BATCH];
    int64_t ts[EVENT_BATCH];
    int n, count = 0;

    if (l->event_fd < 0)
        return 0;
    int err = hw_read_edges(dev, l, levels, ts, EVENT_BATCH, &n);
    if (err == -EAGAIN || err == -EINTR)
        return 0;
    if (err < 0) {
        /* Level-triggered epoll would report a dead fd forever: stop watching it
         * and say so loudly, a sensor that no longer reports is a fault. */
        log_errx("gpiod: reading edges of %s failed: %s; no longer watching it", l->name,
                 strerror(-err));
        epoll_ctl(dev->epfd, EPOLL_CTL_DEL, l->event_fd, NULL);
        l->event_fd = -1;
        return err;
    }
    if (soft_debounce(dev) && n > 0) {
        /* Only the level that outlasts the bounce counts: read it at the deadline.
         * Counted from the edge's own time, so lines read in one pass still settle
         * in the order their edges happened; a timestamp from another clock (an old
         * kernel) or far in the past is replaced by now. */
        int64_t now = now_ns(), at = ts[n - 1];
        if (at <= 0 || at > now || now - at > dev->debounce_ms * NS_PER_MS)
            at = now;
        l->deadline_ns = at + dev->debounce_ms * NS_PER_MS;
        return 0;
    }
    for (int i = 0; i < n; i++)
        count += report(dev, idx, levels[i]);
    return count;
}

/* The line whose deadline passed first, or -1: several inputs settling in one pass
 * are reported in the order they settled (key taken, then door closed). */
static int first_due(const struct gpio_dev *dev, int64_t now)
{
    int first = -1;

    for (int i = 0; i < dev->nlines; i++) {
        int64_t d = dev->lines[i].deadline_ns;
        if (d != 0 && d <= now && (first < 0 || d < dev->lines[first].deadline_ns))
            first = i;
    }
    return first;
}

/* Handles every deadline that has passed. Returns reports made. */
static int run_deadlines(struct gpio_dev *dev)
{
    int64_t now = now_ns();
    int count = 0;
    int i;

    while ((i = first_due(dev, now)) >= 0) {
        struct gd_line *l = &dev->lines[i];
        l->deadline_ns = 0;
        if (l->dir == GPIO_INPUT) {
            int v = hw_get(l);
            if (v < 0)
                log_errx("gpiod: cannot read %s: %s", l->name, strerror(-v));
            else
                count += report(dev, i, v);
            continue;
        }
        if (!l->value)
            continue;
        int r = hw_set(l, 0);
        if (r < 0) {
            log_errx("gpiod: SAFETY: lock %s has been energised longer than max_energize "
                     "(%lld ms) and cannot be switched off: %s; retrying",
                     l->name, (long long)dev->max_energize_ms, strerror(-r));
            l->deadline_ns = now + FORCE_OFF_RETRY_MS * NS_PER_MS;
            continue;
        }
        l->value = 0;
        log_errx("gpiod: SAFETY: lock %s was still energised %d ms after max_energize "
                 "(%lld ms): forced off by the GPIO backend; the station did not switch it "
                 "off, which is a bug",
                 l->name, ENERGIZE_GRACE_MS, (long long)dev->max_energize_ms);
    }
    return count;
}

static int gd_dispatch(struct gpio_dev *dev)
{
    struct epoll_event evs[EVENT_BATCH];
    uint64_t expirations;
    int count = 0, err = 0;

    int n = epoll_wait(dev->epfd, evs, EVENT_BATCH, 0);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        if (evs[i].data.u64 == TAG_TIMER) {
            /* Only clears readiness; what is due is found by deadline below. */
            if (read(dev->timerfd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
                log_warn("gpiod: reading timerfd");
            dev->armed_ns = 0;
            continue;
        }
        int r = read_line(dev, (int)evs[i].data.u64);
        if (r < 0)
            err = r;
        else
            count += r;
    }
    count += run_deadlines(dev);
    int r = rearm(dev);
    if (r < 0 && err == 0)
        err = r;
    return err < 0 ? err : count;
}

const struct gpio_ops gpio_gpiod_ops = {
    .name = "gpiod",
    .open = gd_open,
    .close = gd_close,
    .request = gd_request,
    .set = gd_set,
    .get = gd_get,
    .event_fd = gd_event_fd,
    .dispatch = gd_dispatch,
};
