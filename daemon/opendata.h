/*
 * opendata.h - booked versus used as open data, without personal data
 * (docs/opendata.md has the mapping).
 *
 * The same facts as the report (report.h), one record per booked slot, for a city's
 * urban data platform: as an OGC SensorThings API document (a Thing per hall with
 * Datastreams of Observations, in the form a SensorThings server takes in one
 * POST /Things) and as NGSI-LD entities (one per slot, plus one for the station).
 * Never a member, a card or a credential; the club only with publish_club.
 *
 * Error convention: NULL with a message in err on a database error.
 */
#ifndef LOCKERD_OPENDATA_H
#define LOCKERD_OPENDATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "daemon/config.h"
#include "daemon/store.h"

/* Both documents for the bookings starting in [from_ms, to_ms) as seen at now_ms:
 * {"sensorthings": {...}, "ngsiLd": [...]}. New reference. */
json_t *opendata_build(struct store *s, const struct config *cfg, int64_t from_ms, int64_t to_ms,
                       int64_t now_ms, bool publish_club, char *err, size_t errlen);

/* ---- daily summaries for the city API (PUT /stations/{id}/usage/{date}, docs/api.md) ----
 * Days are local calendar days in the process time zone (the station's). */

#define OPENDATA_DATE_LEN 11 /* "YYYY-MM-DD" and its NUL */

/* The local date of ms moved by add_days calendar days (a DST day is still one day). */
void opendata_date(int64_t ms, int add_days, char out[OPENDATA_DATE_LEN]);
/* [00:00, next day's 00:00) of a local date "YYYY-MM-DD" (a 23- or 25-hour day on a
 * DST change). False for anything but an existing date in that form. */
bool opendata_day_bounds(const char *date, int64_t *from_ms, int64_t *to_ms);
/* The day's summary: {"date", "timezone", "sensorthings"} for the bookings starting on
 * that date as seen at now_ms; the club only with cfg->opendata_publish_club. New
 * reference, or NULL with a message. */
json_t *opendata_day_document(struct store *s, const struct config *cfg, const char *date,
                              int64_t now_ms, char *err, size_t errlen);

#endif
