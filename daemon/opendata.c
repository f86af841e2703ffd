/*
 * opendata.c - booked versus used as SensorThings and NGSI-LD (see opendata.h and
 * docs/opendata.md).
 *
 * One pass over store_report_scan() collects each booking with its pickups; the
 * two documents are then written from that list. The facts are the report's
 * (report.h): a slot is "collected" with at least one key.checkedOut, a "no-show"
 * when its pickup window (start + late_tolerance) is over without one, "pending"
 * before that, "cancelled" when the booking was. What identifies a person (member,
 * card, credential) is never read here; the club is written only when asked to.
 */
#include "daemon/opendata.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/log.h"
#include "daemon/timeutil.h"

#define NGSI_CONTEXT "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
/* ObservedProperty definitions: URNs that docs/opendata.md defines. */
#define PROPERTY_URN "urn:lockerd:observed-property:"

struct session {
    int64_t out_ms, back_ms; /* back_ms 0: still out */
    bool late;
};

struct slot {
    char id[STORE_ID_LEN];
    char club[STORE_ID_LEN];
    int compartment;
    int64_t start_ms, end_ms;
    bool cancelled;
    struct session *sessions;
    int nsessions;
};

struct collect {
    const struct config *cfg;
    int64_t now_ms;
    struct slot *slots;
    size_t n, cap;
    bool oom;
};

static bool on_row(const struct report_row *row, void *arg)
{
    struct collect *c = arg;
    if (c->n == 0 || strcmp(c->slots[c->n - 1].id, row->booking_id) != 0) {
        if (c->n == c->cap) {
            size_t cap = c->cap ? 2 * c->cap : 256;
            struct slot *p = realloc(c->slots, cap * sizeof *p);
            if (p == NULL) {
                c->oom = true;
                return false;
            }
            c->slots = p;
            c->cap = cap;
        }
        struct slot *s = &c->slots[c->n++];
        memset(s, 0, sizeof *s);
        snprintf(s->id, sizeof s->id, "%s", row->booking_id);
        snprintf(s->club, sizeof s->club, "%s", row->club_id);
        s->compartment = row->compartment;
        s->start_ms = row->start_ms;
        s->end_ms = row->end_ms;
        s->cancelled = row->status == BOOKING_CANCELLED;
    }
    if (!row->has_checkout)
        return true;
    struct slot *s = &c->slots[c->n - 1];
    struct session *p = realloc(s->sessions, (size_t)(s->nsessions + 1) * sizeof *p);
    if (p == NULL) {
        c->oom = true;
        return false;
    }
    s->sessions = p;
    struct session *x = &s->sessions[s->nsessions++];
    x->out_ms = row->checkout_ms;
    x->back_ms = row->has_return ? row->return_ms : 0;
    x->late = row->has_return && row->return_ms > row->end_ms + c->cfg->return_grace_ms;
    return true;
}

static const char *slot_status(const struct collect *c, const struct slot *s)
{
    if (s->cancelled)
        return "cancelled";
    if (s->nsessions > 0)
        return "collected";
    return s->start_ms + c->cfg->late_tolerance_ms <= c->now_ms ? "no-show" : "pending";
}

/* Seconds from the start to the first pickup; 0 when taken before the start. */
static int64_t pickup_delay_s(const struct slot *s)
{
    int64_t first = s->sessions[0].out_ms;
    for (int i = 1; i < s->nsessions; i++) {
        if (s->sessions[i].out_ms < first)
            first = s->sessions[i].out_ms;
    }
    return first > s->start_ms ? (first - s->start_ms) / 1000 : 0;
}

static int64_t key_out_s(const struct collect *c, const struct slot *s)
{
    int64_t total = 0;
    for (int i = 0; i < s->nsessions; i++) {
        int64_t back = s->sessions[i].back_ms ? s->sessions[i].back_ms : c->now_ms;
        if (back > s->sessions[i].out_ms)
            total += back - s->sessions[i].out_ms;
    }
    return total / 1000;
}

static json_t *utc(int64_t ms)
{
    char buf[40];
    time_format_utc(ms, buf, sizeof buf);
    return json_string(buf);
}

static json_t *interval(int64_t from_ms, int64_t to_ms)
{
    char a[40], b[40], buf[90];
    time_format_utc(from_ms, a, sizeof a);
    time_format_utc(to_ms, b, sizeof b);
    snprintf(buf, sizeof buf, "%s/%s", a, b);
    return json_string(buf);
}

static const char *hall_of(const struct config *cfg, int compartment, char *buf, size_t len)
{
    const struct compartment_cfg *cc = config_compartment(cfg, compartment);
    if (cc != NULL && cc->hall[0] != '\0')
        return cc->hall;
    snprintf(buf, len, "compartment-%d", compartment);
    return buf;
}

/* ---- SensorThings ---- */

static json_t *datastream(const struct config *cfg, const char *hall, const char *name,
                          const char *what, const char *type, json_t *unit)
{
    char dsname[200], sensor[120], urn[120];
    snprintf(urn, sizeof urn, PROPERTY_URN "%s", name);
    for (char *p = urn + strlen(PROPERTY_URN); *p; p++)
        *p = *p == ' ' ? '-' : *p;
    snprintf(dsname, sizeof dsname, "%s %s: %s", cfg->station_id, hall, name);
    snprintf(sensor, sizeof sensor, "key station %s", cfg->station_id);
    return json_pack("{s:s,s:s,s:s,s:o,s:{s:s,s:s,s:s},s:{s:s,s:s,s:s,s:s},s:[]}", "name", dsname,
                     "description", what, "observationType", type, "unitOfMeasurement", unit,
                     "ObservedProperty", "name", name, "definition", urn, "description", what,
                     "Sensor", "name", sensor, "description", "lockerd key-locker station",
                     "encodingType", "text/plain", "metadata", "lockerd " LOCKERD_VERSION,
                     "Observations");
}

static json_t *no_unit(void)
{
    return json_pack("{s:n,s:n,s:n}", "name", "symbol", "definition");
}

/* The Thing of a hall with its three Datastreams, created on first use. */
static json_t *thing_for(json_t *things, const struct config *cfg, const char *hall)
{
    size_t i;
    json_t *t;
    json_array_foreach(things, i, t)
    {
        if (strcmp(json_string_value(json_object_get(json_object_get(t, "properties"), "hall")),
                   hall) == 0)
            return t;
    }
    char name[200];
    snprintf(name, sizeof name, "%s (%s)", hall,
             cfg->station_name[0] ? cfg->station_name : cfg->station_id);
    t = json_pack(
        "{s:s,s:s,s:{s:s,s:s},s:[o,o,o]}", "name", name, "description",
        "A sports hall whose key is handed out by a key station", "properties", "stationId",
        cfg->station_id, "hall", hall, "Datastreams",
        datastream(cfg, hall, "booked slots",
                   "One observation per booked slot: collected, no-show, pending or cancelled",
                   "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_CategoryObservation",
                   no_unit()),
        datastream(cfg, hall, "key removals", "One observation per time the hall key was taken",
                   "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_CategoryObservation",
                   no_unit()),
        datastream(cfg, hall, "usage sessions",
                   "One observation per time the key was out: from taking it to bringing it back",
                   "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
                   json_pack("{s:s,s:s,s:s}", "name", "second", "symbol", "s", "definition",
                             "http://qudt.org/vocab/unit/SEC")));
    json_array_append_new(things, t);
    return t;
}

static void observe(json_t *thing, int stream, json_t *obs)
{
    json_t *ds = json_array_get(json_object_get(thing, "Datastreams"), (size_t)stream);
    json_array_append_new(json_object_get(ds, "Observations"), obs);
}

static json_t *sensorthings(const struct collect *c, bool publish_club)
{
    json_t *things = json_array();
    char hbuf[32];
    for (size_t i = 0; i < c->n; i++) {
        const struct slot *s = &c->slots[i];
        json_t *t = thing_for(things, c->cfg, hall_of(c->cfg, s->compartment, hbuf, sizeof hbuf));
        json_t *par = json_pack("{s:s,s:i}", "reservationId", s->id, "compartment", s->compartment);
        if (publish_club)
            json_object_set_new(par, "club", json_string(s->club));
        if (s->nsessions > 0) {
            json_object_set_new(par, "pickupDelaySeconds", json_integer(pickup_delay_s(s)));
            json_object_set_new(par, "keyOutSeconds", json_integer(key_out_s(c, s)));
        }
        observe(t, 0,
                json_pack("{s:o,s:o,s:s,s:o}", "phenomenonTime", interval(s->start_ms, s->end_ms),
                          "resultTime", utc(c->now_ms), "result", slot_status(c, s), "parameters",
                          par));
        for (int k = 0; k < s->nsessions; k++) {
            const struct session *x = &s->sessions[k];
            observe(t, 1,
                    json_pack("{s:o,s:o,s:s,s:{s:s,s:i}}", "phenomenonTime", utc(x->out_ms),
                              "resultTime", utc(x->out_ms), "result", "removed", "parameters",
                              "reservationId", s->id, "compartment", s->compartment));
            if (x->back_ms == 0)
                continue; /* a session ends when the key is back */
            observe(t, 2,
                    json_pack("{s:o,s:o,s:I,s:{s:s,s:i,s:b}}", "phenomenonTime",
                              interval(x->out_ms, x->back_ms), "resultTime", utc(x->back_ms),
                              "result", (json_int_t)((x->back_ms - x->out_ms) / 1000), "parameters",
                              "reservationId", s->id, "compartment", s->compartment, "returnedLate",
                              x->late));
        }
    }
    return json_pack("{s:o}", "Things", things);
}

/* ---- NGSI-LD ---- */

static json_t *prop(json_t *value)
{
    return json_pack("{s:s,s:o}", "type", "Property", "value", value);
}

static json_t *prop_unit(json_int_t value, const char *unit)
{
    return json_pack("{s:s,s:I,s:s}", "type", "Property", "value", value, "unitCode", unit);
}

static json_t *datetime(int64_t ms)
{
    return json_pack("{s:s,s:o}", "@type", "DateTime", "@value", utc(ms));
}

static json_t *ngsi_ld(const struct collect *c, bool publish_club)
{
    char station_urn[160], urn[240], hbuf[32];
    snprintf(station_urn, sizeof station_urn, "urn:ngsi-ld:KeyStation:%s", c->cfg->station_id);
    json_t *out = json_array();
    json_array_append_new(
        out, json_pack("{s:s,s:s,s:o,s:o,s:[s]}", "id", station_urn, "type", "KeyStation", "name",
                       prop(json_string(c->cfg->station_name[0] ? c->cfg->station_name
                                                                : c->cfg->station_id)),
                       "observedAt", prop(datetime(c->now_ms)), "@context", NGSI_CONTEXT));
    for (size_t i = 0; i < c->n; i++) {
        const struct slot *s = &c->slots[i];
        snprintf(urn, sizeof urn, "urn:ngsi-ld:HallSlotUsage:%s:%s", c->cfg->station_id, s->id);
        json_t *e = json_pack("{s:s,s:s,s:o,s:o,s:o,s:o,s:o,s:o,s:{s:s,s:s},s:[s]}", "id", urn,
                              "type", "HallSlotUsage", "hall",
                              prop(json_string(hall_of(c->cfg, s->compartment, hbuf, sizeof hbuf))),
                              "compartment", prop(json_integer(s->compartment)), "reservationId",
                              prop(json_string(s->id)), "startDate", prop(datetime(s->start_ms)),
                              "endDate", prop(datetime(s->end_ms)), "usageStatus",
                              prop(json_string(slot_status(c, s))), "refKeyStation", "type",
                              "Relationship", "object", station_urn, "@context", NGSI_CONTEXT);
        if (s->nsessions > 0) {
            int late = 0;
            for (int k = 0; k < s->nsessions; k++)
                late += s->sessions[k].late;
            json_object_set_new(e, "pickupDelay", prop_unit(pickup_delay_s(s), "SEC"));
            json_object_set_new(e, "keyOutDuration", prop_unit(key_out_s(c, s), "SEC"));
            json_object_set_new(e, "keyPickups", prop(json_integer(s->nsessions)));
            json_object_set_new(e, "lateReturns", prop(json_integer(late)));
        }
        if (publish_club)
            json_object_set_new(e, "club", prop(json_string(s->club)));
        json_array_append_new(out, e);
    }
    return out;
}

json_t *opendata_build(struct store *s, const struct config *cfg, int64_t from_ms, int64_t to_ms,
                       int64_t now_ms, bool publish_club, char *err, size_t errlen)
{
    struct collect c = {.cfg = cfg, .now_ms = now_ms};
    json_t *out = NULL;
    if (store_report_scan(s, from_ms, to_ms, on_row, &c) != STORE_OK || c.oom) {
        snprintf(err, errlen, "%s", c.oom ? "out of memory" : "database error");
    } else {
        out = json_pack("{s:o,s:o}", "sensorthings", sensorthings(&c, publish_club), "ngsiLd",
                        ngsi_ld(&c, publish_club));
        if (out == NULL)
            snprintf(err, errlen, "cannot build the documents");
    }
    for (size_t i = 0; i < c.n; i++)
        free(c.slots[i].sessions);
    free(c.slots);
    return out;
}

/* ---- daily summaries ---- */

static struct tm day_tm(int year, int mon, int mday, int hour)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = year;
    tm.tm_mon = mon;
    tm.tm_mday = mday; /* mktime() normalises days outside the month */
    tm.tm_hour = hour;
    tm.tm_isdst = -1; /* whatever the zone says on that day: DST-proof */
    return tm;
}

void opendata_date(int64_t ms, int add_days, char out[OPENDATA_DATE_LEN])
{
    time_t t = (time_t)(ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000));
    struct tm tm, day;
    memset(&tm, 0, sizeof tm);
    localtime_r(&t, &tm);
    /* From noon, which every zone has, so that a DST change cannot move the day. */
    day = day_tm(tm.tm_year, tm.tm_mon, tm.tm_mday + add_days, 12);
    time_t noon = mktime(&day);
    if (noon == (time_t)-1 || localtime_r(&noon, &day) == NULL)
        day = tm;
    snprintf(out, OPENDATA_DATE_LEN, "%04u-%02u-%02u", (unsigned)(day.tm_year + 1900) % 10000u,
             (unsigned)(day.tm_mon + 1) % 100u, (unsigned)day.tm_mday % 100u);
}

bool opendata_day_bounds(const char *date, int64_t *from_ms, int64_t *to_ms)
{
    static const char shape[] = "dddd-dd-dd";
    if (date == NULL || strlen(date) != sizeof shape - 1)
        return false;
    for (size_t i = 0; i < sizeof shape - 1; i++) {
        if (shape[i] == 'd' ? (date[i] < '0' || date[i] > '9') : date[i] != shape[i])
            return false;
    }
    int y = atoi(date), m = atoi(date + 5), d = atoi(date + 8);
    struct tm noon = day_tm(y - 1900, m - 1, d, 12);
    if (mktime(&noon) == (time_t)-1 || noon.tm_year != y - 1900 || noon.tm_mon != m - 1 ||
        noon.tm_mday != d)
        return false; /* 2026-02-30 and the like */
    struct tm a = day_tm(y - 1900, m - 1, d, 0), b = day_tm(y - 1900, m - 1, d + 1, 0);
    time_t from = mktime(&a), to = mktime(&b);
    if (from == (time_t)-1 || to == (time_t)-1 || to <= from)
        return false;
    *from_ms = (int64_t)from * 1000;
    *to_ms = (int64_t)to * 1000;
    return true;
}

json_t *opendata_day_document(struct store *s, const struct config *cfg, const char *date,
                              int64_t now_ms, char *err, size_t errlen)
{
    int64_t from, to;
    if (!opendata_day_bounds(date, &from, &to)) {
        snprintf(err, errlen, "not a date: %.20s", date != NULL ? date : "(null)");
        return NULL;
    }
    json_t *both =
        opendata_build(s, cfg, from, to, now_ms, cfg->opendata_publish_club, err, errlen);
    if (both == NULL)
        return NULL;
    json_t *doc = json_pack("{s:s,s:s,s:O}", "date", date, "timezone", cfg->timezone,
                            "sensorthings", json_object_get(both, "sensorthings"));
    json_decref(both);
    if (doc == NULL)
        snprintf(err, errlen, "cannot build the summary");
    return doc;
}
