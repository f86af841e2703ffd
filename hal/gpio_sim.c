/*
 * gpio_sim.c - simulated GPIO lines.
 *
 * The simulated hardware outlives the daemon, as real hardware does: input levels
 * (doors, keys, tamper) live in STATE_DIR/sim-gpio.state and survive a crash and
 * restart, and every output change is appended to STATE_DIR/sim-gpio.log as
 *     <wall ms> <monotonic ns> <line name> <value> <why>
 * where why is "init" for the level set when the line is requested and "set"
 * otherwise. Both times are the station's (daemon/clock.h): with [station]
 * sim_clock they include what `lockerctl sim clock advance` added, as the event
 * log's times and the loop's timers do, so tests can compare the two logs and
 * time LED and buzzer patterns after the clock was moved. Tests read that log as "what the coils
 * did", independently of the daemon's own event log.
 *
 * Edges travel through a pipe, so the daemon sees them from its event loop exactly
 * as it sees libgpiod's edge-event fd.
 */
#include "hal/hal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/clock.h"
#include "daemon/log.h"

#define SIM_MAX_LINES 128

struct sim_line {
    char name[CONFIG_NAME_LEN];
    enum gpio_dir dir;
    int value; /* logical level */
    unsigned activations;
};

/* Input levels loaded from the state file, applied when a line is requested. */
struct sim_saved {
    char name[CONFIG_NAME_LEN];
    int value;
};

struct edge_msg {
    gpio_line line;
    int value;
};

struct gpio_dev {
    struct sim_line lines[SIM_MAX_LINES];
    int nlines;
    struct sim_saved saved[SIM_MAX_LINES];
    int nsaved;
    bool fresh;
    char state_path[PATH_MAX + 32];
    int log_fd;
    int pipe_rd, pipe_wr;
    gpio_edge_cb cb;
    void *cb_arg;
    void (*hook)(gpio_line, int, void *);
    void *hook_arg;
};

static void load_state(struct gpio_dev *dev)
{
    FILE *f = fopen(dev->state_path, "re");
    if (!f) {
        dev->fresh = (errno == ENOENT);
        return;
    }
    char name[CONFIG_NAME_LEN];
    int value;
    while (dev->nsaved < SIM_MAX_LINES && fscanf(f, "%63s %d", name, &value) == 2) {
        struct sim_saved *s = &dev->saved[dev->nsaved++];
        snprintf(s->name, sizeof(s->name), "%s", name);
        s->value = value ? 1 : 0;
    }
    fclose(f);
}

/* Written to a temporary file and renamed, so a crash never leaves half a file. */
static int save_state(struct gpio_dev *dev)
{
    char tmp[PATH_MAX + 64];
    snprintf(tmp, sizeof(tmp), "%s.tmp", dev->state_path);
    FILE *f = fopen(tmp, "we");
    if (!f)
        return -errno;
    for (int i = 0; i < dev->nlines; i++) {
        if (dev->lines[i].dir == GPIO_INPUT)
            fprintf(f, "%s %d\n", dev->lines[i].name, dev->lines[i].value);
    }
    if (fclose(f) != 0 || rename(tmp, dev->state_path) != 0) {
        int err = -errno;
        unlink(tmp);
        return err;
    }
    return 0;
}

static void log_output(struct gpio_dev *dev, const struct sim_line *l, const char *why)
{
    /* The simulated offset is whole ms: take it from a read that did not cross a
     * millisecond. */
    int64_t raw, off;
    for (int tries = 0;; tries++) {
        raw = clock_mono_ns_raw();
        int64_t ms = clock_mono_ms();
        int64_t raw2 = clock_mono_ns_raw();
        off = ms - raw / 1000000;
        if (raw / 1000000 == raw2 / 1000000 || tries == 3)
            break;
    }
    int64_t sim_ns = raw + off * 1000000;
    char buf[160];
    int n = snprintf(buf, sizeof(buf), "%lld %lld %s %d %s\n", (long long)clock_wall_ms(),
                     (long long)sim_ns, l->name, l->value, why);
    /* O_APPEND and one write per line: lines from successive daemon runs never mix. */
    if (dev->log_fd >= 0 && write(dev->log_fd, buf, (size_t)n) != n)
        log_warn("gpio-sim: cannot append to output log");
}

static struct gpio_dev *sim_open(const struct config *cfg, gpio_edge_cb cb, void *arg, int *err)
{
    struct gpio_dev *dev = xcalloc(1, sizeof(*dev));
    int fds[2];

    dev->cb = cb;
    dev->cb_arg = arg;
    snprintf(dev->state_path, sizeof(dev->state_path), "%s/sim-gpio.state", cfg->state_dir);
    char log_path[PATH_MAX + 16];
    snprintf(log_path, sizeof(log_path), "%s/sim-gpio.log", cfg->state_dir);
    dev->log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (dev->log_fd < 0) {
        *err = -errno;
        goto err_free;
    }
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        *err = -errno;
        goto err_close_log;
    }
    dev->pipe_rd = fds[0];
    dev->pipe_wr = fds[1];
    load_state(dev);
    return dev;

err_close_log:
    close(dev->log_fd);
err_free:
    free(dev);
    return NULL;
}

static void sim_close(struct gpio_dev *dev)
{
    if (!dev)
        return;
    close(dev->pipe_rd);
    close(dev->pipe_wr);
    if (dev->log_fd >= 0)
        close(dev->log_fd);
    free(dev);
}

static int find_line(const struct gpio_dev *dev, const char *name)
{
    for (int i = 0; i < dev->nlines; i++) {
        if (strcmp(dev->lines[i].name, name) == 0)
            return i;
    }
    return -1;
}

static gpio_line sim_request(struct gpio_dev *dev, const struct line_cfg *line, enum gpio_dir dir)
{
    if (line->name[0] == '\0')
        return -EINVAL;
    if (find_line(dev, line->name) >= 0)
        return -EBUSY;
    if (dev->nlines == SIM_MAX_LINES)
        return -ENOSPC;

    struct sim_line *l = &dev->lines[dev->nlines];
    snprintf(l->name, sizeof(l->name), "%s", line->name);
    l->dir = dir;
    l->value = 0;
    if (dir == GPIO_INPUT) {
        for (int i = 0; i < dev->nsaved; i++) {
            if (strcmp(dev->saved[i].name, l->name) == 0)
                l->value = dev->saved[i].value;
        }
    } else {
        log_output(dev, l, "init");
    }
    return dev->nlines++;
}

static int sim_set(struct gpio_dev *dev, gpio_line line, int value)
{
    if (line < 0 || line >= dev->nlines || dev->lines[line].dir != GPIO_OUTPUT)
        return -EINVAL;
    struct sim_line *l = &dev->lines[line];
    value = value ? 1 : 0;
    if (value == l->value)
        return 0;
    l->value = value;
    if (value)
        l->activations++;
    log_output(dev, l, "set");
    if (dev->hook)
        dev->hook(line, value, dev->hook_arg);
    return 0;
}

static int sim_get(struct gpio_dev *dev, gpio_line line)
{
    if (line < 0 || line >= dev->nlines)
        return -EINVAL;
    return dev->lines[line].value;
}

static int sim_event_fd(struct gpio_dev *dev)
{
    return dev->pipe_rd;
}

static int sim_dispatch(struct gpio_dev *dev)
{
    struct edge_msg msg;
    int count = 0;
    ssize_t n;

    while ((n = read(dev->pipe_rd, &msg, sizeof(msg))) == (ssize_t)sizeof(msg)) {
        dev->cb(msg.line, msg.value, dev->cb_arg);
        count++;
    }
    if (n < 0 && errno != EAGAIN)
        return -errno;
    return count;
}

int gpio_sim_set_input(struct gpio_dev *dev, const char *name, int value)
{
    int i = find_line(dev, name);
    if (i < 0)
        return -ENOENT;
    struct sim_line *l = &dev->lines[i];
    if (l->dir != GPIO_INPUT)
        return -EPERM;
    value = value ? 1 : 0;
    if (l->value == value)
        return 0; /* no edge, as on real hardware */
    l->value = value;
    int err = save_state(dev);
    if (err < 0)
        log_warnx("gpio-sim: cannot save %s: %s", dev->state_path, strerror(-err));
    struct edge_msg msg = {.line = i, .value = value};
    if (write(dev->pipe_wr, &msg, sizeof(msg)) != (ssize_t)sizeof(msg))
        return -EIO;
    return 0;
}

char *gpio_sim_describe(struct gpio_dev *dev)
{
    size_t cap = 64 + (size_t)dev->nlines * 160;
    char *buf = xmalloc(cap);
    size_t used = 0;

    used += (size_t)snprintf(buf + used, cap - used, "[");
    for (int i = 0; i < dev->nlines; i++) {
        const struct sim_line *l = &dev->lines[i];
        used += (size_t)snprintf(buf + used, cap - used,
                                 "%s{\"line\":\"%s\",\"direction\":\"%s\",\"value\":%d,"
                                 "\"activations\":%u}",
                                 i ? "," : "", l->name, l->dir == GPIO_OUTPUT ? "output" : "input",
                                 l->value, l->activations);
    }
    snprintf(buf + used, cap - used, "]");
    return buf;
}

bool gpio_sim_fresh(struct gpio_dev *dev)
{
    return dev->fresh;
}

void gpio_sim_set_output_hook(struct gpio_dev *dev, void (*hook)(gpio_line, int, void *), void *arg)
{
    dev->hook = hook;
    dev->hook_arg = arg;
}

const struct gpio_ops gpio_sim_ops = {
    .name = "sim",
    .open = sim_open,
    .close = sim_close,
    .request = sim_request,
    .set = sim_set,
    .get = sim_get,
    .event_fd = sim_event_fd,
    .dispatch = sim_dispatch,
};
