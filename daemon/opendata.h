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

#endif
