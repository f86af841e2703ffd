/*
 * timeutil.h - ISO 8601 times and durations, shared by lockerd and lockerctl.
 *
 * The station stores UTC milliseconds and shows local time in the configured zone
 * (TZ set once at start-up by tz_set()).
 */
#ifndef LOCKERD_TIMEUTIL_H
#define LOCKERD_TIMEUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Sets the process time zone (e.g. "Europe/Berlin"). Returns false if the zone is
 * unknown (no file under /usr/share/zoneinfo). */
bool tz_set(const char *zone);
/* The same check as tz_set() without changing the process time zone (config checks).
 * Only plain zone names are accepted: no absolute paths, no "." or ".." components. */
bool tz_exists(const char *zone);

/* Parses "2026-11-28T18:00+01:00", "...T18:00:30Z", "...T17:00:00.123Z", and also a
 * local time without offset ("2026-11-28T18:00" or "2026-11-28 18:00"), which is taken
 * in the process time zone. Returns false on any malformed input. */
bool time_parse_iso(const char *s, int64_t *ms_out);
/* Formats in local time with offset: "2026-11-28T18:00:00+01:00". buf >= 32. */
void time_format_local(int64_t ms, char *buf, size_t len);
/* Formats UTC: "2026-11-28T17:00:00.123Z". buf >= 32. */
void time_format_utc(int64_t ms, char *buf, size_t len);

/* Parses a duration: "90" (seconds), "500ms", "5s", "2m", "2min", "1h", "7d".
 * Result in milliseconds. Returns false on malformed or negative input. */
bool duration_parse(const char *s, int64_t *ms_out);
/* Formats the shortest exact form ("5s", "15m", "500ms", "30d"). buf >= 24. */
void duration_format(int64_t ms, char *buf, size_t len);

#endif
