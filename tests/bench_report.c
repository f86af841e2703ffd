/*
 * bench_report.c - `lockerctl report` over a year of a busy hall, in-process.
 *
 * Builds a database the way a station fills it over a year: 6 compartments in 3
 * halls, 30 clubs with two trainers each, 90-minute slots from 07:30 to 21:00
 * every day (about 20,000 bookings), of which about 5 % are cancelled and 20 % not
 * collected; the others have a key.checkedOut and a key.returned (a sixth of them
 * late, with a key.overdue), and refused taps fill the log to about 40,000 events.
 * Events go through store_event_add() with the simulated clock set to their time,
 * so they carry real hashes and subject digests.
 *
 * Then, on the reopened database (SQLite's cache cold, the OS cache warm): the
 * report over the whole year (report_build(), the work lockerd does for the
 * control command) and its JSON encoding, the default four-week report, and a
 * member export and erasure on the same log (how long the station is busy).
 *
 * usage: bench_report [-b BOOKINGS] [-r RUNS] [-d DIR] [-k]
 *   -k  keep the database (DIR/bench-report.db, before the erasure) for measuring
 *       through lockerd (tests/bench_report.py)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/clock.h"
#include "daemon/config.h"
#include "daemon/log.h"
#include "daemon/report.h"
#include "daemon/store.h"
#include "daemon/timeutil.h"

#define MIN_MS (60LL * 1000)
#define DAY_MS (24 * 60 * MIN_MS)
#define NCOMP  6
#define NCLUBS 30

struct planned {
    int64_t at;
    const char *type;
    int compartment;
    int trainer;
    char booking[STORE_ID_LEN];
};

static uint64_t rng = 0x9e3779b97f4a7c15u;

static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static void must(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "bench_report: %s failed\n", what);
        exit(1);
    }
}

static double ms_since(int64_t t0)
{
    return (double)(clock_mono_ns_raw() - t0) / 1e6;
}

static int cmp_planned(const void *a, const void *b)
{
    const struct planned *x = a, *y = b;
    return (x->at > y->at) - (x->at < y->at);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void trainer_ids(int t, char *member, char *card)
{
    snprintf(member, STORE_ID_LEN, "m-%08x", 0x1000 + t);
    snprintf(card, STORE_ID_LEN, "c-%08x", 0x1000 + t);
}

/* Clubs, trainers with cards, bookings; returns the planned events (sorted). */
static struct planned *plan(struct store *s, long nbookings, int64_t start, long *nev,
                            long *ncancelled)
{
    must(store_begin(s) == STORE_OK, "begin");
    for (int c = 0; c < NCLUBS; c++) {
        struct club club;
        snprintf(club.id, sizeof(club.id), "club-%02d", c);
        snprintf(club.name, sizeof(club.name), "Sportverein %02d e. V.", c);
        must(store_club_add(s, &club) == STORE_OK, "club");
        for (int k = 0; k < 2; k++) {
            struct member m = {.role = ROLE_MEMBER};
            struct credential cr = {.status = CRED_ACTIVE};
            int t = 2 * c + k;
            trainer_ids(t, m.id, cr.id);
            snprintf(m.name, sizeof(m.name), "Trainer %d", t);
            must(store_member_add(s, &m) == STORE_OK, "member");
            must(store_member_join(s, m.id, club.id) == STORE_OK, "join");
            snprintf(cr.member_id, sizeof(cr.member_id), "%s", m.id);
            memset(cr.uid_hmac, t + 1, sizeof(cr.uid_hmac));
            snprintf(cr.card_type, sizeof(cr.card_type), "desfire");
            snprintf(cr.source, sizeof(cr.source), "local");
            must(store_credential_add(s, &cr) == STORE_OK, "card");
        }
    }

    struct planned *ev = malloc((size_t)nbookings * 4 * sizeof(*ev));
    must(ev != NULL, "malloc");
    long n = 0;
    *ncancelled = 0;
    for (long i = 0; i < nbookings; i++) {
        long slot = i / NCOMP;
        int comp = 1 + (int)(i % NCOMP);
        int64_t day = start + (slot / 9) * DAY_MS;
        struct booking b = {.compartment = comp, .status = BOOKING_ACTIVE};
        int club = (int)rnd(NCLUBS);
        snprintf(b.id, sizeof(b.id), "b-%06ld", i);
        snprintf(b.club_id, sizeof(b.club_id), "club-%02d", club);
        snprintf(b.source, sizeof(b.source), "local");
        b.start_ms = day + 450 * MIN_MS + (slot % 9) * 90 * MIN_MS;
        b.end_ms = b.start_ms + 90 * MIN_MS;
        must(store_booking_add(s, &b) == STORE_OK, "booking");
        uint32_t fate = rnd(100);
        if (fate < 5) {
            must(store_booking_cancel(s, b.id) == STORE_OK, "cancel");
            (*ncancelled)++;
            continue;
        }
        int trainer = 2 * club + (int)rnd(2);
        if (i % 3 == 0) /* someone taps with no booking of theirs */
            ev[n++] = (struct planned){b.start_ms - 20 * MIN_MS, "access.denied", comp,
                                       (trainer + 7) % (2 * NCLUBS), ""};
        if (fate < 25)
            continue; /* no-show */
        int64_t pick = b.start_ms + (int64_t)rnd(26) * MIN_MS - 2 * MIN_MS;
        int64_t back = b.end_ms + ((int64_t)rnd(55) - 20) * MIN_MS;
        /* Slots follow each other: a key returned late is still back before the
         * next slot's pickup, as the station would see it. */
        if (back > b.end_ms + 40 * MIN_MS)
            back = b.end_ms + 40 * MIN_MS;
        struct planned p = {pick, "key.checkedOut", comp, trainer, ""};
        snprintf(p.booking, sizeof(p.booking), "%s", b.id);
        ev[n++] = p;
        if (back > b.end_ms + 15 * MIN_MS) {
            p.at = b.end_ms + 15 * MIN_MS;
            p.type = "key.overdue";
            ev[n++] = p;
        }
        p.at = back;
        p.type = "key.returned";
        p.booking[0] = '\0';
        ev[n++] = p;
    }
    must(store_commit(s) == STORE_OK, "commit");
    qsort(ev, (size_t)n, sizeof(*ev), cmp_planned);
    *nev = n;
    return ev;
}

static void write_events(struct store *s, const struct planned *ev, long n)
{
    must(store_begin(s) == STORE_OK, "begin");
    for (long i = 0; i < n; i++) {
        int64_t d = ev[i].at - clock_wall_ms();
        if (d > 0)
            clock_sim_advance(d);
        char member[STORE_ID_LEN], card[STORE_ID_LEN];
        trainer_ids(ev[i].trainer, member, card);
        char club[STORE_ID_LEN];
        snprintf(club, sizeof(club), "club-%02d", ev[i].trainer / 2);
        struct event e = {.type = ev[i].type,
                          .compartment = ev[i].compartment,
                          .member_id = member,
                          .credential_id = card,
                          .club_id = club,
                          .booking_id = ev[i].booking[0] ? ev[i].booking : NULL,
                          .reason = strcmp(ev[i].type, "access.denied") == 0 ? "no-booking" : NULL};
        must(store_event_add(s, &e) > 0, "event");
        if (i % 10000 == 9999) {
            must(store_commit(s) == STORE_OK, "commit");
            must(store_begin(s) == STORE_OK, "begin");
        }
    }
    must(store_commit(s) == STORE_OK, "commit");
}

static void config_for_bench(struct config *cfg)
{
    config_defaults(cfg);
    snprintf(cfg->station_id, sizeof(cfg->station_id), "bench");
    snprintf(cfg->station_name, sizeof(cfg->station_name), "Sporthalle Benchmark");
    cfg->n_compartments = NCOMP;
    for (int i = 0; i < NCOMP; i++) {
        cfg->compartments[i].number = i + 1;
        snprintf(cfg->compartments[i].hall, sizeof(cfg->compartments[i].hall), "halle-%d",
                 1 + i / 2);
    }
}

int main(int argc, char **argv)
{
    long nbookings = 20000;
    int runs = 5;
    const char *dir = NULL;
    bool keep = false;
    int opt;
    while ((opt = getopt(argc, argv, "b:r:d:k")) != -1) {
        switch (opt) {
        case 'b':
            nbookings = atol(optarg);
            break;
        case 'r':
            runs = atoi(optarg);
            break;
        case 'd':
            dir = optarg;
            break;
        case 'k':
            keep = true;
            break;
        default:
            fprintf(stderr, "usage: bench_report [-b BOOKINGS] [-r RUNS] [-d DIR] [-k]\n");
            return 2;
        }
    }
    char tmp[] = "/var/tmp/lockerd-bench-XXXXXX";
    if (!dir)
        dir = mkdtemp(tmp);
    must(dir != NULL && nbookings > 0 && runs > 0 && runs <= 100, "arguments");
    log_init("bench_report", LOG_LVL_WARNING);
    must(tz_set("Europe/Berlin"), "time zone");
    clock_sim_enable(true);

    char path[512], err[256];
    snprintf(path, sizeof(path), "%s/bench-report.db", dir);
    unlink(path);
    struct store *s = store_open(path, err, sizeof(err));
    must(s != NULL, err);

    /* The year starts on the next Monday, 00:00 local. */
    int64_t start = report_week_start(clock_wall_ms() + 7 * DAY_MS);
    int64_t t0 = clock_mono_ns_raw();
    long nev, ncancelled;
    struct planned *ev = plan(s, nbookings, start, &nev, &ncancelled);
    write_events(s, ev, nev);
    free(ev);
    int64_t last = 0;
    {
        json_t *b = store_bookings_json(s, 0);
        size_t i;
        json_t *o;
        json_array_foreach(b, i, o)
        {
            int64_t end = json_integer_value(json_object_get(o, "end"));
            if (end > last)
                last = end;
        }
        json_decref(b);
    }
    int64_t now = last + DAY_MS;
    clock_sim_advance(now - clock_wall_ms());
    must(store_checkpoint(s) == STORE_OK, "checkpoint");
    double fill_s = ms_since(t0) / 1000;
    int64_t nevents = store_event_count(s, NULL);
    store_close(s);

    struct config cfg;
    config_for_bench(&cfg);
    s = store_open(path, err, sizeof(err));
    must(s != NULL, err);
    printf("report over a year of a busy hall: %ld bookings (%ld cancelled), %lld events, "
           "%d compartments, %d clubs (fill %.1f s)\n",
           nbookings, ncancelled, (long long)nevents, NCOMP, NCLUBS, fill_s);

    /* The whole year; the first run has SQLite's page cache cold. */
    double t[100];
    size_t json_len = 0;
    long booked = 0;
    for (int i = 0; i < runs; i++) {
        int64_t r0 = clock_mono_ns_raw();
        json_t *r = report_build(s, &cfg, start, now, now, err, sizeof(err));
        must(r != NULL, err);
        char *text = json_dumps(r, JSON_COMPACT);
        t[i] = ms_since(r0);
        must(text != NULL, "json");
        json_len = strlen(text);
        booked = (long)json_integer_value(json_object_get(json_object_get(r, "total"), "booked"));
        free(text);
        json_decref(r);
    }
    double first = t[0];
    qsort(t, (size_t)runs, sizeof(t[0]), cmp_double);
    printf("  year report + JSON (%ld booked, %zu bytes)  first %7.1f ms  median %7.1f ms  "
           "max %7.1f ms\n",
           booked, json_len, first, t[runs / 2], t[runs - 1]);

    int64_t from, to;
    report_default_period(now, &from, &to);
    int64_t r0 = clock_mono_ns_raw();
    json_t *r = report_build(s, &cfg, from, to, now, err, sizeof(err));
    must(r != NULL, err);
    printf("  default report (last 4 weeks)                      %7.1f ms\n", ms_since(r0));
    json_decref(r);

    if (keep) {
        store_close(s);
        printf("  kept %s\n", path);
        return 0;
    }

    /* Rights on the same log: a trainer with a sixtieth of the events. */
    char member[STORE_ID_LEN], card[STORE_ID_LEN];
    trainer_ids(17, member, card);
    int rc;
    r0 = clock_mono_ns_raw();
    json_t *x = store_member_export(s, member, &rc);
    double export_ms = ms_since(r0);
    must(x != NULL, "export");
    size_t nx = json_array_size(json_object_get(x, "events"));
    json_decref(x);
    struct erase_result er;
    r0 = clock_mono_ns_raw();
    must(store_member_erase(s, member, &er) == STORE_OK, "erase");
    must(store_checkpoint(s) == STORE_OK, "checkpoint");
    double erase_ms = ms_since(r0);
    printf("  member export (%zu events)                        %7.1f ms\n", nx, export_ms);
    printf("  member erase (%lld events, with fsync, checkpoint) %7.1f ms\n", (long long)er.events,
           erase_ms);
    int64_t bad;
    r0 = clock_mono_ns_raw();
    must(store_events_verify(s, &bad, err, sizeof(err)) == STORE_OK, "verify after erase");
    printf("  events --verify after the erasure                 %7.1f ms\n", ms_since(r0));

    store_close(s);
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        char p[600];
        snprintf(p, sizeof(p), "%s%s", path, suffixes[i]);
        unlink(p);
    }
    if (dir == tmp)
        rmdir(dir);
    return 0;
}
