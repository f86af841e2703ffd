/*
 * bench_tap.c - tap-to-unlock latency, measured in-process through the real
 * station engine, policy, store (SQLite, synchronous=FULL, fsync on every commit)
 * and the simulated hardware.
 *
 * Latency = CLOCK_MONOTONIC from handing the card to the simulated reader until
 * the lock line is set (the sim's output hook). Each pickup is followed by door
 * open, key taken, door closed; each return by the reverse, so every tap is a real
 * grant with its fsync'd commit.
 *
 * Runs twice: on an empty database, and on one holding 1,000,000 events and
 * 100,000 bookings. Prints p50/p99/max in microseconds.
 *
 * usage: bench_tap [-n TAPS] [-e EVENTS] [-b BOOKINGS] [-d DIR]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon/clock.h"
#include "daemon/config.h"
#include "daemon/log.h"
#include "daemon/loop.h"
#include "daemon/station.h"
#include "daemon/store.h"

#define MIN_MS (60LL * 1000)
#define H_MS   (60 * MIN_MS)

static const uint8_t UID[7] = {0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66};
static const uint8_t SITE_KEY[32] = {7};

static int64_t t_tap, t_unlock;

static void on_output(gpio_line line, int value, void *arg)
{
    (void)arg;
    (void)line;
    if (value == 1 && t_unlock == 0)
        t_unlock = clock_mono_ns_raw();
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void must(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "bench_tap: %s failed\n", what);
        exit(1);
    }
}

/* History: events of every kind and bookings of many clubs over the past years. */
static void fill(struct store *s, long events, long bookings)
{
    int64_t now = clock_wall_ms();
    must(store_begin(s) == STORE_OK, "begin");
    for (int c = 0; c < 50; c++) {
        struct club club;
        snprintf(club.id, sizeof(club.id), "club-%d", c);
        snprintf(club.name, sizeof(club.name), "Club %d", c);
        must(store_club_add(s, &club) == STORE_OK, "club");
    }
    /* 100,000 one-hour slots, back to back on compartments 2-4, ending before now. */
    for (long i = 0; i < bookings; i++) {
        struct booking b = {.compartment = 2 + (int)(i % 3), .status = BOOKING_ACTIVE};
        snprintf(b.id, sizeof(b.id), "hist-%ld", i);
        snprintf(b.club_id, sizeof(b.club_id), "club-%ld", i % 50);
        snprintf(b.source, sizeof(b.source), "local");
        b.end_ms = now - H_MS - (i / 3) * H_MS;
        b.start_ms = b.end_ms - H_MS;
        must(store_booking_add(s, &b) == STORE_OK, "booking");
    }
    static const char *const types[] = {"access.granted", "key.checkedOut", "key.returned",
                                        "access.denied"};
    for (long i = 0; i < events; i++) {
        struct event ev = {.type = types[i % 4],
                           .compartment = 2 + (int)(i % 3),
                           .member_id = "m-hist",
                           .club_id = "club-1"};
        must(store_event_add(s, &ev) > 0, "event");
        if (i % 100000 == 99999) { /* keep the WAL bounded */
            must(store_commit(s) == STORE_OK, "commit");
            must(store_begin(s) == STORE_OK, "begin");
        }
    }
    must(store_commit(s) == STORE_OK, "commit");
}

struct bench_station {
    char label[80];
    char dir[512];
    struct config cfg;
    struct store *store;
    struct loop *loop;
    struct station *st;
    double fill_s;
    int64_t *lat;
};

static void setup(struct bench_station *b, const char *label, const char *top, const char *sub,
                  long taps, long events, long bookings)
{
    char path[600], err[256];
    snprintf(b->label, sizeof(b->label), "%s", label);
    snprintf(b->dir, sizeof(b->dir), "%s/%s", top, sub);
    must(mkdir(b->dir, 0700) == 0 || errno == EEXIST, "mkdir");
    snprintf(path, sizeof(path), "%s/bench.db", b->dir);
    unlink(path);
    config_defaults(&b->cfg);
    snprintf(b->cfg.station_id, sizeof(b->cfg.station_id), "bench");
    snprintf(b->cfg.state_dir, sizeof(b->cfg.state_dir), "%s", b->dir);
    b->cfg.n_compartments = 4;
    for (int i = 0; i < 4; i++) {
        struct compartment_cfg *c = &b->cfg.compartments[i];
        c->number = i + 1;
        snprintf(c->lock.name, sizeof(c->lock.name), "L%d", i + 1);
        snprintf(c->door.name, sizeof(c->door.name), "D%d", i + 1);
        snprintf(c->key.name, sizeof(c->key.name), "K%d", i + 1);
    }
    char sim[700];
    snprintf(sim, sizeof(sim), "%s/sim-gpio.state", b->dir);
    unlink(sim);

    b->store = store_open(path, err, sizeof(err));
    must(b->store != NULL, err);
    int64_t t0 = clock_mono_ns_raw();
    if (events || bookings)
        fill(b->store, events, bookings);
    /* A station that has lived with this history has long checkpointed it. */
    must(store_checkpoint(b->store) == STORE_OK, "checkpoint");
    b->fill_s = (double)(clock_mono_ns_raw() - t0) / 1e9;

    b->loop = loop_new();
    b->st = station_new(&b->cfg, b->store, b->loop, SITE_KEY, sizeof(SITE_KEY), err, sizeof(err));
    must(b->st != NULL, err);
    must(station_start(b->st) == 0, "start");

    struct club club = {.id = "club-bench", .name = "Bench"};
    struct member m = {.id = "m-bench", .name = "Bench", .role = ROLE_MEMBER};
    struct credential cr = {.id = "c-bench",
                            .member_id = "m-bench",
                            .status = CRED_ACTIVE,
                            .card_type = "desfire",
                            .source = "local"};
    station_uid_hmac(b->st, UID, sizeof(UID), cr.uid_hmac);
    struct booking bk = {.id = "b-bench",
                         .club_id = "club-bench",
                         .compartment = 1,
                         .start_ms = clock_wall_ms() - MIN_MS,
                         .end_ms = clock_wall_ms() + 24 * H_MS,
                         .source = "local"};
    struct store *s = b->store;
    must(store_club_add(s, &club) == STORE_OK && store_member_add(s, &m) == STORE_OK &&
             store_member_join(s, "m-bench", "club-bench") == STORE_OK &&
             store_credential_add(s, &cr) == STORE_OK && store_booking_add(s, &bk) == STORE_OK,
         "setup");
    must(station_sim_output_hook(b->st, on_output, NULL) == 0, "output hook");
    b->lat = calloc((size_t)taps, sizeof(*b->lat));
    must(b->lat != NULL, "calloc");
}

/* One tap (a pickup on even i, a return on odd i) and the door cycle after it. */
static void tap_cycle(struct bench_station *b, long i)
{
    bool pickup = (i % 2) == 0;
    t_unlock = 0;
    t_tap = clock_mono_ns_raw();
    station_sim_tap(b->st, UID, sizeof(UID), CARD_KIND_DESFIRE, true);
    must(t_unlock != 0, "unlock (tap was not granted)");
    b->lat[i] = t_unlock - t_tap;
    station_sim_door(b->st, 1, true);
    station_sim_key(b->st, 1, !pickup);
    station_sim_door(b->st, 1, false);
}

static void report_and_free(struct bench_station *b, long taps)
{
    char path[600];
    qsort(b->lat, (size_t)taps, sizeof(*b->lat), cmp_i64);
    printf("%-34s taps %6ld  p50 %7.0f us  p99 %7.0f us  max %7.0f us  (fill %.1f s)\n", b->label,
           taps, b->lat[taps / 2] / 1e3, b->lat[taps * 99 / 100] / 1e3, b->lat[taps - 1] / 1e3,
           b->fill_s);
    fflush(stdout);
    free(b->lat);
    station_free(b->st);
    store_close(b->store);
    loop_free(b->loop);
    snprintf(path, sizeof(path), "rm -rf '%s'", b->dir);
    must(system(path) == 0, "cleanup");
}

/* Both stations tap in turn, so that the disk's moods (its fsync time moves from
 * minute to minute on a shared host) fall on both alike and the comparison between
 * the empty and the large database is fair. */
static void run(const char *dir, long taps, long events, long bookings)
{
    static struct bench_station empty, large;
    char label[80];
    snprintf(label, sizeof(label), "%ld events, %ld bookings", events, bookings);
    setup(&empty, "empty database", dir, "empty", taps, 0, 0);
    setup(&large, label, dir, "large", taps, events, bookings);
    for (long i = 0; i < taps; i++) {
        tap_cycle(&empty, i);
        tap_cycle(&large, i);
    }
    report_and_free(&empty, taps);
    report_and_free(&large, taps);
}

/* The disk's own floor: what one durable commit costs before any software, timed
 * as a 16 KiB append (about what a tap's WAL frames amount to) plus fdatasync on the
 * same file system, the same number of times. */
static void disk_floor(const char *dir, long n)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/floor.bin", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    must(fd >= 0, "open floor file");
    static char block[16384];
    int64_t *lat = calloc((size_t)n, sizeof(*lat));
    for (long i = 0; i < n; i++) {
        if (i % 256 == 0)
            must(ftruncate(fd, 0) == 0 && lseek(fd, 0, SEEK_SET) == 0, "truncate");
        int64_t t0 = clock_mono_ns_raw();
        must(write(fd, block, sizeof(block)) == (ssize_t)sizeof(block), "write");
        must(fdatasync(fd) == 0, "fdatasync");
        lat[i] = clock_mono_ns_raw() - t0;
    }
    qsort(lat, (size_t)n, sizeof(*lat), cmp_i64);
    printf("%-34s       %6ld  p50 %7.0f us  p99 %7.0f us  max %7.0f us\n",
           "disk floor: 16 KiB write+fdatasync", n, lat[n / 2] / 1e3, lat[n * 99 / 100] / 1e3,
           lat[n - 1] / 1e3);
    fflush(stdout);
    free(lat);
    close(fd);
    unlink(path);
}

int main(int argc, char **argv)
{
    long taps = 10000, events = 1000000, bookings = 100000;
    const char *dir = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "n:e:b:d:")) != -1) {
        switch (opt) {
        case 'n':
            taps = atol(optarg);
            break;
        case 'e':
            events = atol(optarg);
            break;
        case 'b':
            bookings = atol(optarg);
            break;
        case 'd':
            dir = optarg;
            break;
        default:
            fprintf(stderr, "usage: bench_tap [-n TAPS] [-e EVENTS] [-b BOOKINGS] [-d DIR]\n");
            return 2;
        }
    }
    char tmp[] = "/var/tmp/lockerd-bench-XXXXXX";
    if (!dir)
        dir = mkdtemp(tmp);
    must(dir != NULL && taps > 1, "arguments");
    log_init("bench_tap", LOG_LVL_WARNING);
    printf("tap-to-unlock latency (tap handed to the reader -> lock line set), durable logging\n");
    disk_floor(dir, taps);
    printf("(the two stations tap in turn, so both see the same disk)\n");
    run(dir, taps, events, bookings);
    if (dir == tmp)
        rmdir(dir);
    return 0;
}
