/*
 * report.h - booked versus used: what a hall's bookings were used for.
 *
 * Computed from the store (bookings and the key.checkedOut, key.returned and
 * key.overdue events) for the bookings starting in a period, per compartment and
 * club (with the compartment's hall), per hall, per compartment, per club, in total,
 * and per week (Monday 00:00 local time) and club. Times are shown in the process
 * time zone, which lockerd sets to the station's ([station] timezone).
 *
 * Definitions (docs/man/lockerctl.8 says the same for people):
 *   booked       active (not cancelled) bookings starting in the period
 *   collected    bookings with at least one key.checkedOut for them
 *   noShows      not collected, and the pickup window (start + late_tolerance) is over
 *   pending      not collected, pickup still possible
 *   cancelled    cancelled bookings starting in the period (not in booked)
 *   delay        first pickup minus start, 0 for a key taken before the start;
 *                median (mean of the two middle values for an even count) and worst
 *   lateReturns  pickups whose return came after end + return_grace
 *   overdue      key.overdue events for the bookings
 *   bookedMs     the bookings' length; keyOutMs: pickup to return (to now while out)
 * Only what the event log still holds counts: events older than the retention are
 * gone, and so are their pickups.
 */
#ifndef LOCKERD_REPORT_H
#define LOCKERD_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "daemon/config.h"
#include "daemon/store.h"

/* The longest period a report covers. */
#define REPORT_MAX_DAYS (5 * 366)

/* A period bound: a date "2026-03-01" (00:00 local; as the end: the end of that day)
 * or a time as time_parse_iso() takes it. False for anything else, including a
 * local time that does not exist. */
bool report_parse_bound(const char *s, bool end, int64_t *ms_out);
/* The default period: from 00:00 local 28 days before now's date, to now. */
void report_default_period(int64_t now_ms, int64_t *from_ms, int64_t *to_ms);
/* 00:00 local time of the Monday of the week containing ms. */
int64_t report_week_start(int64_t ms);

/* Builds the report for bookings starting in [from_ms, to_ms) as seen at now_ms.
 * Returns a new JSON object:
 *   {station, stationName, timezone, from, to, fromMs, toMs, generatedAt,
 *    lateToleranceMs, returnGraceMs,
 *    rows: [{hall, compartment, club, clubName, METRICS}],   per compartment and club
 *    byHall: [{hall, METRICS}], byCompartment: [{compartment, hall, METRICS}],
 *    byClub: [{club, clubName, METRICS}], total: {METRICS},
 *    weeks: [{week: "2026-W13", start, clubs: [{club, clubName, METRICS}]}]}
 * with METRICS = booked, collected, noShows, pending, cancelled, lateReturns,
 * overdue, medianDelayMs, worstDelayMs (null without pickups), bookedMs, keyOutMs.
 * hall and clubName are null when unknown. NULL on a database error (message in
 * err). */
json_t *report_build(struct store *s, const struct config *cfg, int64_t from_ms, int64_t to_ms,
                     int64_t now_ms, char *err, size_t errlen);

#endif
