/*
 * gpiod_test.c - the gpiod backend against gpio-sim, below the station.
 *
 * The lockerd scenario in the VM shows the backend working end to end; this checks
 * what the station never exercises on a good day: debounce of a bouncing contact,
 * the edge value of an active-low input, and the coil limit that forces a lock off
 * when nobody else does. Runs inside the check-vm VM (see init):
 *
 *     gpiod_test SIMDIR       SIMDIR = /sys/devices/platform/gpio-sim.N/gpiochipM
 *
 * Uses the sim lines named TESTOUT (offset 6) and TESTIN (offset 7). Prints one
 * "gpiod_test: ok|FAIL ..." line per check and exits 0 when all pass, 1 otherwise.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/log.h"
#include "hal/hal.h"

#define OUT_OFFSET    6
#define IN_OFFSET     7
#define DEBOUNCE_MS   200
#define MAX_ENERGIZE  300
#define BACKEND_GRACE 500 /* ENERGIZE_GRACE_MS in hal/gpio_gpiod.c */
#define MAX_EDGES     16

static const char *simdir;
static int failures;

static struct {
    int n;
    int value[MAX_EDGES];
    int64_t at_ms[MAX_EDGES];
} edges;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void check(int ok, const char *what)
{
    printf("gpiod_test: %s %s\n", ok ? "ok" : "FAIL", what);
    if (!ok)
        failures++;
}

static void on_edge(gpio_line line, int value, void *arg)
{
    (void)line;
    (void)arg;
    if (edges.n < MAX_EDGES) {
        edges.value[edges.n] = value;
        edges.at_ms[edges.n] = now_ms();
    }
    edges.n++;
}

static void sim_write(int offset, const char *attr, const char *value)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/sim_gpio%d/%s", simdir, offset, attr);
    int fd = open(path, O_WRONLY);
    if (fd < 0 || write(fd, value, strlen(value)) < 0) {
        fprintf(stderr, "gpiod_test: cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
    close(fd);
}

/* Physical level of a line as the simulator sees it. */
static int sim_value(int offset)
{
    char path[512], buf[8] = "";
    snprintf(path, sizeof(path), "%s/sim_gpio%d/value", simdir, offset);
    int fd = open(path, O_RDONLY);
    if (fd < 0 || read(fd, buf, sizeof(buf) - 1) < 0) {
        fprintf(stderr, "gpiod_test: cannot read %s: %s\n", path, strerror(errno));
        exit(1);
    }
    close(fd);
    return atoi(buf);
}

/* Runs the backend as the event loop would, for ms milliseconds. */
static void pump(const struct gpio_ops *ops, struct gpio_dev *dev, int ms)
{
    int64_t end = now_ms() + ms;
    struct pollfd pfd = {.fd = ops->event_fd(dev), .events = POLLIN};

    for (int64_t left = ms; left > 0; left = end - now_ms()) {
        if (poll(&pfd, 1, (int)left) > 0 && ops->dispatch(dev) < 0)
            check(0, "dispatch returned an error");
    }
}

int main(int argc, char **argv)
{
    const struct gpio_ops *ops = &gpio_gpiod_ops;
    static struct config cfg; /* large: not on the stack */
    struct line_cfg out = {.name = "TESTOUT"};
    struct line_cfg in = {.name = "TESTIN", .active_low = true};
    char what[160];
    int err = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: gpiod_test SIMDIR\n");
        return 2;
    }
    simdir = argv[1];
    log_init("gpiod_test", LOG_LVL_INFO);
    /* One stream in order: the backend logs to stderr, the checks go to stdout. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    cfg.max_energize_ms = MAX_ENERGIZE;
    cfg.debounce_ms = DEBOUNCE_MS;
    cfg.n_compartments = 1;
    snprintf(cfg.compartments[0].lock.name, CONFIG_NAME_LEN, "%s", out.name);

    /* A pulled-up line reads 1 unless the backend drives it: shows "requested
     * inactive" for real. Input: physical low = active (active-low). */
    sim_write(OUT_OFFSET, "pull", "pull-up");
    sim_write(IN_OFFSET, "pull", "pull-down");

    struct gpio_dev *dev = ops->open(&cfg, on_edge, NULL, &err);
    if (!dev) {
        printf("gpiod_test: FAIL open: %s\n", strerror(-err));
        return 1;
    }
    gpio_line lo = ops->request(dev, &out, GPIO_OUTPUT);
    gpio_line li = ops->request(dev, &in, GPIO_INPUT);
    if (lo < 0 || li < 0) {
        printf("gpiod_test: FAIL request: %s\n", strerror(-(lo < 0 ? lo : li)));
        ops->close(dev);
        return 1;
    }
    check(sim_value(OUT_OFFSET) == 0, "output requested inactive against a pull-up");
    check(ops->get(dev, li) == 1, "active-low input reads logical 1 when low");

    /* A contact bouncing for a few ms and settling high (inactive): one report. */
    int64_t t0 = now_ms();
    for (int i = 0; i < 3; i++) {
        sim_write(IN_OFFSET, "pull", "pull-up");
        sim_write(IN_OFFSET, "pull", "pull-down");
    }
    sim_write(IN_OFFSET, "pull", "pull-up");
    int64_t t_last = now_ms();
    int bounce_ms = (int)(t_last - t0);
    pump(ops, dev, DEBOUNCE_MS * 3);
    snprintf(what, sizeof(what),
             "bounce of %d ms reported once, as 0, after the debounce period (got %d, first %d "
             "after %lld ms)",
             bounce_ms, edges.n, edges.n ? edges.value[0] : -1,
             edges.n ? (long long)(edges.at_ms[0] - t_last) : -1LL);
    if (bounce_ms >= DEBOUNCE_MS / 2)
        printf("gpiod_test: skipped (the VM took %d ms to bounce) %s\n", bounce_ms, what);
    else
        check(edges.n == 1 && edges.value[0] == 0 && edges.at_ms[0] - t_last >= DEBOUNCE_MS - 5,
              what);

    /* A clean edge to active: reported as 1. */
    edges.n = 0;
    sim_write(IN_OFFSET, "pull", "pull-down");
    pump(ops, dev, DEBOUNCE_MS * 3);
    snprintf(what, sizeof(what), "clean edge reported once as 1 (got %d, value %d)", edges.n,
             edges.n ? edges.value[0] : -1);
    check(edges.n == 1 && edges.value[0] == 1, what);

    /* The coil limit: a lock left on is forced off by the backend alone. */
    printf("gpiod_test: a SAFETY error from the backend is expected next\n");
    int64_t t_on = now_ms();
    check(ops->set(dev, lo, 1) == 0 && sim_value(OUT_OFFSET) == 1, "lock driven high");
    int64_t t_off = -1;
    while (now_ms() - t_on < (MAX_ENERGIZE + BACKEND_GRACE) * 4) {
        pump(ops, dev, 20);
        if (sim_value(OUT_OFFSET) == 0) {
            t_off = now_ms();
            break;
        }
    }
    snprintf(what, sizeof(what),
             "lock forced off by the backend %lld ms after it went on (limit %d ms + %d ms "
             "grace)",
             t_off < 0 ? -1LL : (long long)(t_off - t_on), MAX_ENERGIZE, BACKEND_GRACE);
    check(t_off >= 0 && t_off - t_on >= MAX_ENERGIZE + BACKEND_GRACE - 5, what);
    check(ops->get(dev, lo) == 0, "lock reads 0 after the forced off");

    /* Switched off in time by its owner: the backend leaves it alone. */
    check(ops->set(dev, lo, 1) == 0 && ops->set(dev, lo, 0) == 0, "lock on and off again");
    pump(ops, dev, MAX_ENERGIZE + BACKEND_GRACE + 100);
    check(sim_value(OUT_OFFSET) == 0, "lock stays off");

    ops->close(dev);
    printf("gpiod_test: %d failure(s)\n", failures);
    return failures ? 1 : 0;
}
