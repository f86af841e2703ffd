/*
 * report.c - booked versus used (see report.h for the definitions).
 *
 * The store delivers one row per booking and pickup (store_report_scan(), one SQL
 * query over indexes); this file folds them into one record per booking and then
 * aggregates the records for each grouping by sorting them on the grouping's key
 * and walking the runs. Medians need every delay of a group, which SQL would only
 * give with window functions over a second pass; a sort of the group's delays here
 * is simpler and as fast. Memory: 72 bytes per booking, so a busy hall's year
 * (20,000 bookings) needs about 1.4 MB besides the JSON while the report is built.
 */
#include "daemon/report.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/log.h"
#include "daemon/timeutil.h"

#define MS_PER_DAY INT64_C(86400000)

/* One booking, folded from its rows (72 bytes on 64-bit). */
struct bk {
    const char *hall; /* from the config; NULL if the compartment is not configured */
    int64_t start_ms;
    int64_t week_ms;   /* report_week_start(start_ms) */
    int64_t booked_ms; /* end - start */
    int64_t delay_ms;  /* first pickup - start, >= 0; valid when pickups > 0 */
    int64_t out_ms;    /* sum over pickups of return (or now) - pickup */
    int32_t club;      /* index into report.clubs */
    int32_t compartment;
    int32_t pickups;
    int32_t late;    /* pickups returned after end + return_grace */
    int32_t overdue; /* key.overdue events */
    bool cancelled;
    bool window_over; /* start + late_tolerance <= now */
};

struct club_name {
    char id[STORE_ID_LEN];
    char *name; /* NULL if the club is unknown here (a city booking ahead of its club) */
};

struct report {
    const struct config *cfg;
    int64_t now_ms;
    struct bk *bks;
    size_t n, cap;
    struct club_name *clubs;
    int nclubs, capclubs;
    char last_id[STORE_ID_LEN]; /* the booking the last row belonged to */
    bool oom;
};

struct metrics {
    int64_t booked, collected, no_shows, pending, cancelled, late, overdue;
    int64_t booked_ms, out_ms;
    size_t ndelays;
};

/* ------------------------------------------------------------ time */

static int64_t local_midnight(int year, int mon, int mday)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = year;
    tm.tm_mon = mon;
    tm.tm_mday = mday; /* mktime() normalises days outside the month */
    tm.tm_isdst = -1;  /* whatever the zone says on that day: DST-proof */
    return (int64_t)mktime(&tm) * 1000;
}

static struct tm local_tm(int64_t ms)
{
    time_t t = (time_t)(ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000));
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    localtime_r(&t, &tm);
    return tm;
}

int64_t report_week_start(int64_t ms)
{
    struct tm tm = local_tm(ms);
    int back = (tm.tm_wday + 6) % 7; /* days since Monday */
    return local_midnight(tm.tm_year, tm.tm_mon, tm.tm_mday - back);
}

static int64_t next_week(int64_t week_ms)
{
    /* Seven calendar days, not 7 * 24 h: a week with a DST change is 167 or 169 h. */
    struct tm tm = local_tm(week_ms);
    return local_midnight(tm.tm_year, tm.tm_mon, tm.tm_mday + 7);
}

void report_default_period(int64_t now_ms, int64_t *from_ms, int64_t *to_ms)
{
    struct tm tm = local_tm(now_ms);
    *from_ms = local_midnight(tm.tm_year, tm.tm_mon, tm.tm_mday - 28);
    *to_ms = now_ms;
}

static bool is_date(const char *s)
{
    static const char shape[] = "dddd-dd-dd";
    if (strlen(s) != sizeof shape - 1)
        return false;
    for (size_t i = 0; i < sizeof shape - 1; i++) {
        if (shape[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != shape[i])
            return false;
    }
    return true;
}

bool report_parse_bound(const char *s, bool end, int64_t *ms_out)
{
    if (s == NULL)
        return false;
    if (!is_date(s))
        return time_parse_iso(s, ms_out);
    /* A date is its 00:00 local time, checked by the ISO parser (which refuses
     * 2026-02-30 and a midnight that a DST change skips). Sized for any int. */
    char buf[48];
    int64_t day;
    snprintf(buf, sizeof buf, "%sT00:00", s);
    if (!time_parse_iso(buf, &day))
        return false;
    if (!end) {
        *ms_out = day;
        return true;
    }
    /* The end of the day is the next day's 00:00, found from its noon (which every
     * zone has) so that a 23- or 25-hour day is still one day. */
    struct tm tm = local_tm(day + INT64_C(12) * 3600 * 1000);
    tm.tm_mday += 1;
    tm.tm_isdst = -1;
    time_t noon = mktime(&tm);
    struct tm next;
    if (noon == (time_t)-1 || localtime_r(&noon, &next) == NULL)
        return false;
    snprintf(buf, sizeof buf, "%04d-%02d-%02dT00:00", next.tm_year + 1900, next.tm_mon + 1,
             next.tm_mday);
    return time_parse_iso(buf, ms_out);
}

static json_t *local_json(int64_t ms)
{
    char buf[40];
    time_format_local(ms, buf, sizeof buf);
    return json_string(buf);
}

/* ------------------------------------------------------------ collecting */

static int club_index(struct report *r, const char *id)
{
    for (int i = r->nclubs - 1; i >= 0; i--) {
        if (strcmp(r->clubs[i].id, id) == 0)
            return i;
    }
    if (r->nclubs == r->capclubs) {
        int cap = r->capclubs ? 2 * r->capclubs : 16;
        struct club_name *p = realloc(r->clubs, (size_t)cap * sizeof *p);
        if (p == NULL)
            return -1;
        r->clubs = p;
        r->capclubs = cap;
    }
    struct club_name *c = &r->clubs[r->nclubs];
    snprintf(c->id, sizeof c->id, "%s", id);
    c->name = NULL;
    return r->nclubs++;
}

static bool on_row(const struct report_row *row, void *arg)
{
    struct report *r = arg;
    struct bk *b;
    if (r->n == 0 || strcmp(row->booking_id, r->last_id) != 0) {
        if (r->n == r->cap) {
            size_t cap = r->cap ? 2 * r->cap : 256;
            struct bk *p = realloc(r->bks, cap * sizeof *p);
            if (p == NULL) {
                r->oom = true;
                return false;
            }
            r->bks = p;
            r->cap = cap;
        }
        b = &r->bks[r->n];
        memset(b, 0, sizeof *b);
        b->club = club_index(r, row->club_id);
        if (b->club < 0) {
            r->oom = true;
            return false;
        }
        const struct compartment_cfg *cc = config_compartment(r->cfg, row->compartment);
        b->hall = cc != NULL && cc->hall[0] != '\0' ? cc->hall : NULL;
        b->compartment = row->compartment;
        b->start_ms = row->start_ms;
        b->week_ms = report_week_start(row->start_ms);
        b->booked_ms = row->end_ms - row->start_ms;
        b->cancelled = row->status == BOOKING_CANCELLED;
        b->window_over = row->start_ms + r->cfg->late_tolerance_ms <= r->now_ms;
        b->overdue = (int32_t)row->overdue;
        snprintf(r->last_id, sizeof r->last_id, "%s", row->booking_id);
        r->n++;
    }
    b = &r->bks[r->n - 1];
    if (!row->has_checkout)
        return true;
    int64_t delay = row->checkout_ms - row->start_ms;
    if (delay < 0)
        delay = 0; /* taken in the pickup window before the start: on time */
    if (b->pickups == 0 || delay < b->delay_ms)
        b->delay_ms = delay;
    b->pickups++;
    int64_t back = row->has_return ? row->return_ms : r->now_ms;
    if (back > row->checkout_ms)
        b->out_ms += back - row->checkout_ms;
    if (row->has_return && row->return_ms > row->end_ms + r->cfg->return_grace_ms)
        b->late++;
    return true;
}

static int cmp_club_name(const void *a, const void *b)
{
    return strcmp(((const struct club_name *)a)->id, ((const struct club_name *)b)->id);
}

/* Sorts the clubs by id and renumbers the bookings' clubs to match. */
static bool rank_clubs(struct report *r)
{
    if (r->nclubs < 2)
        return true;
    int *rank = malloc((size_t)r->nclubs * sizeof *rank);
    struct club_name *sorted = malloc((size_t)r->nclubs * sizeof *sorted);
    if (rank == NULL || sorted == NULL) {
        free(rank);
        free(sorted);
        return false;
    }
    memcpy(sorted, r->clubs, (size_t)r->nclubs * sizeof *sorted);
    qsort(sorted, (size_t)r->nclubs, sizeof *sorted, cmp_club_name);
    for (int i = 0; i < r->nclubs; i++) {
        /* Few clubs: a search per club is cheaper than carrying the index along. */
        for (int j = 0; j < r->nclubs; j++) {
            if (strcmp(r->clubs[i].id, sorted[j].id) == 0)
                rank[i] = j;
        }
    }
    for (size_t i = 0; i < r->n; i++)
        r->bks[i].club = rank[r->bks[i].club];
    free(r->clubs);
    r->clubs = sorted;
    free(rank);
    return true;
}

/* ------------------------------------------------------------ aggregating */

static int cmp_int64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int cmp_str(const char *a, const char *b)
{
    /* NULL (an unknown hall) sorts last. */
    if (a == NULL || b == NULL)
        return (a == NULL) - (b == NULL);
    return strcmp(a, b);
}

/* Clubs are numbered in the order of their ids (rank_clubs()), so comparing the
 * numbers compares the ids. */
static int cmp_club_ids(const struct bk *a, const struct bk *b)
{
    return (a->club > b->club) - (a->club < b->club);
}

static int cmp_row(const void *pa, const void *pb)
{
    const struct bk *a = pa, *b = pb;
    int c = cmp_str(a->hall, b->hall);
    if (c == 0)
        c = (a->compartment > b->compartment) - (a->compartment < b->compartment);
    return c != 0 ? c : cmp_club_ids(a, b);
}

static int cmp_hall(const void *pa, const void *pb)
{
    const struct bk *a = pa, *b = pb;
    return cmp_str(a->hall, b->hall);
}

static int cmp_compartment(const void *pa, const void *pb)
{
    const struct bk *a = pa, *b = pb;
    return (a->compartment > b->compartment) - (a->compartment < b->compartment);
}

static int cmp_club(const void *pa, const void *pb)
{
    return cmp_club_ids(pa, pb);
}

static int cmp_total(const void *pa, const void *pb)
{
    (void)pa;
    (void)pb;
    return 0;
}

static int cmp_week_club(const void *pa, const void *pb)
{
    const struct bk *a = pa, *b = pb;
    if (a->week_ms != b->week_ms)
        return (a->week_ms > b->week_ms) - (a->week_ms < b->week_ms);
    return cmp_club_ids(a, b);
}

/* Sums a run of bookings; the pickup delays go into delays[0..ndelays). */
static struct metrics sum_run(const struct bk *b, size_t n, int64_t *delays)
{
    struct metrics m;
    memset(&m, 0, sizeof m);
    for (size_t i = 0; i < n; i++) {
        if (b[i].cancelled) {
            m.cancelled++;
            continue;
        }
        m.booked++;
        m.booked_ms += b[i].booked_ms;
        m.out_ms += b[i].out_ms;
        m.late += b[i].late;
        m.overdue += b[i].overdue;
        if (b[i].pickups > 0) {
            m.collected++;
            delays[m.ndelays++] = b[i].delay_ms;
        } else if (b[i].window_over) {
            m.no_shows++;
        } else {
            m.pending++;
        }
    }
    return m;
}

static json_t *metrics_json(json_t *o, const struct metrics *m, int64_t *delays)
{
    json_t *median = json_null(), *worst = json_null();
    if (m->ndelays > 0) {
        qsort(delays, m->ndelays, sizeof *delays, cmp_int64);
        size_t mid = m->ndelays / 2;
        int64_t med = m->ndelays % 2 ? delays[mid] : (delays[mid - 1] + delays[mid]) / 2;
        median = json_integer(med);
        worst = json_integer(delays[m->ndelays - 1]);
    }
    json_object_set_new(o, "booked", json_integer(m->booked));
    json_object_set_new(o, "collected", json_integer(m->collected));
    json_object_set_new(o, "noShows", json_integer(m->no_shows));
    json_object_set_new(o, "pending", json_integer(m->pending));
    json_object_set_new(o, "cancelled", json_integer(m->cancelled));
    json_object_set_new(o, "lateReturns", json_integer(m->late));
    json_object_set_new(o, "overdue", json_integer(m->overdue));
    json_object_set_new(o, "medianDelayMs", median);
    json_object_set_new(o, "worstDelayMs", worst);
    json_object_set_new(o, "bookedMs", json_integer(m->booked_ms));
    json_object_set_new(o, "keyOutMs", json_integer(m->out_ms));
    return o;
}

static json_t *hall_json(const char *hall)
{
    return hall != NULL ? json_string(hall) : json_null();
}

static void set_club(json_t *o, const struct report *r, int club)
{
    json_object_set_new(o, "club", json_string(r->clubs[club].id));
    json_object_set_new(o, "clubName",
                        r->clubs[club].name != NULL ? json_string(r->clubs[club].name)
                                                    : json_null());
}

enum grouping { BY_ROW, BY_HALL, BY_COMPARTMENT, BY_CLUB, BY_TOTAL };

/* Sorts the bookings by the grouping's key and returns one object per group. */
static json_t *group(struct report *r, enum grouping g, int64_t *scratch)
{
    int (*cmp)(const void *, const void *) = cmp_total;
    switch (g) {
    case BY_ROW:
        cmp = cmp_row;
        break;
    case BY_HALL:
        cmp = cmp_hall;
        break;
    case BY_COMPARTMENT:
        cmp = cmp_compartment;
        break;
    case BY_CLUB:
        cmp = cmp_club;
        break;
    case BY_TOTAL:
        cmp = cmp_total;
        break;
    }
    if (r->n > 1)
        qsort(r->bks, r->n, sizeof *r->bks, cmp);
    json_t *arr = json_array();
    for (size_t i = 0; arr != NULL && i < r->n;) {
        size_t j = i + 1;
        while (j < r->n && cmp(&r->bks[i], &r->bks[j]) == 0)
            j++;
        const struct bk *b = &r->bks[i];
        struct metrics m = sum_run(b, j - i, scratch);
        json_t *o = json_object();
        switch (g) {
        case BY_ROW:
            json_object_set_new(o, "hall", hall_json(b->hall));
            json_object_set_new(o, "compartment", json_integer(b->compartment));
            set_club(o, r, b->club);
            break;
        case BY_HALL:
            json_object_set_new(o, "hall", hall_json(b->hall));
            break;
        case BY_COMPARTMENT:
            json_object_set_new(o, "compartment", json_integer(b->compartment));
            json_object_set_new(o, "hall", hall_json(b->hall));
            break;
        case BY_CLUB:
            set_club(o, r, b->club);
            break;
        case BY_TOTAL:
            break;
        }
        json_array_append_new(arr, metrics_json(o, &m, scratch));
        i = j;
    }
    return arr;
}

/* Every week of the period, with the clubs that had bookings in it. */
static json_t *weeks(struct report *r, int64_t from_ms, int64_t to_ms, int64_t *scratch)
{
    if (r->n > 1)
        qsort(r->bks, r->n, sizeof *r->bks, cmp_week_club);
    json_t *arr = json_array();
    size_t i = 0;
    for (int64_t w = report_week_start(from_ms), next; arr != NULL && w < to_ms; w = next) {
        next = next_week(w);
        if (next <= w)
            break; /* mktime() failed: the time is out of its range */
        char label[16];
        struct tm tm = local_tm(w);
        strftime(label, sizeof label, "%G-W%V", &tm);
        json_t *clubs = json_array();
        while (i < r->n && r->bks[i].week_ms < w)
            i++; /* cannot happen: bookings start in the period; kept for safety */
        while (i < r->n && r->bks[i].week_ms == w) {
            size_t j = i + 1;
            while (j < r->n && cmp_week_club(&r->bks[i], &r->bks[j]) == 0)
                j++;
            struct metrics m = sum_run(&r->bks[i], j - i, scratch);
            json_t *o = json_object();
            set_club(o, r, r->bks[i].club);
            json_array_append_new(clubs, metrics_json(o, &m, scratch));
            i = j;
        }
        json_array_append_new(arr, json_pack("{s:s, s:o, s:o}", "week", label, "start",
                                             local_json(w), "clubs", clubs));
    }
    return arr;
}

json_t *report_build(struct store *s, const struct config *cfg, int64_t from_ms, int64_t to_ms,
                     int64_t now_ms, char *err, size_t errlen)
{
    struct report r;
    memset(&r, 0, sizeof r);
    r.cfg = cfg;
    r.now_ms = now_ms;
    json_t *out = NULL;
    int64_t *scratch = NULL;

    if (store_report_scan(s, from_ms, to_ms, on_row, &r) != STORE_OK) {
        snprintf(err, errlen, "%s", r.oom ? "out of memory" : "the database could not be read");
        goto done;
    }
    if (!rank_clubs(&r)) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    for (int i = 0; i < r.nclubs; i++) {
        struct club c;
        int rc = store_club_get(s, r.clubs[i].id, &c);
        if (rc == STORE_ERR) {
            snprintf(err, errlen, "the database could not be read");
            goto done;
        }
        r.clubs[i].name = rc == STORE_OK ? xstrdup(c.name) : NULL;
    }
    scratch = malloc((r.n > 0 ? r.n : 1) * sizeof *scratch);
    if (scratch == NULL) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }

    json_t *total = group(&r, BY_TOTAL, scratch);
    struct metrics none;
    memset(&none, 0, sizeof none);
    json_t *tot = json_array_size(total) > 0 ? json_incref(json_array_get(total, 0))
                                             : metrics_json(json_object(), &none, scratch);
    json_decref(total);
    out = json_pack("{s:s, s:s, s:s, s:o, s:o, s:I, s:I, s:o, s:I, s:I}", "station",
                    cfg->station_id, "stationName", cfg->station_name, "timezone", cfg->timezone,
                    "from", local_json(from_ms), "to", local_json(to_ms), "fromMs",
                    (json_int_t)from_ms, "toMs", (json_int_t)to_ms, "generatedAt",
                    local_json(now_ms), "lateToleranceMs", (json_int_t)cfg->late_tolerance_ms,
                    "returnGraceMs", (json_int_t)cfg->return_grace_ms);
    if (out == NULL) {
        json_decref(tot);
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    json_object_set_new(out, "rows", group(&r, BY_ROW, scratch));
    json_object_set_new(out, "byHall", group(&r, BY_HALL, scratch));
    json_object_set_new(out, "byCompartment", group(&r, BY_COMPARTMENT, scratch));
    json_object_set_new(out, "byClub", group(&r, BY_CLUB, scratch));
    json_object_set_new(out, "total", tot);
    json_object_set_new(out, "weeks", weeks(&r, from_ms, to_ms, scratch));

done:
    for (int i = 0; i < r.nclubs; i++)
        free(r.clubs[i].name);
    free(r.clubs);
    free(r.bks);
    free(scratch);
    return out;
}
