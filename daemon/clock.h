/*
 * clock.h - the station's clocks.
 *
 * All of lockerd reads time through these functions so that tests and the
 * simulation can move time forward (a booking ending, a door held open for ten
 * minutes) without sleeping. The simulated offset is only ever non-zero when the
 * config enables it ([station] sim_clock = yes, only allowed with sim hardware).
 */
#ifndef LOCKERD_CLOCK_H
#define LOCKERD_CLOCK_H

#include <stdbool.h>
#include <stdint.h>

/* CLOCK_MONOTONIC in milliseconds plus the simulated offset. */
int64_t clock_mono_ms(void);
/* CLOCK_MONOTONIC in nanoseconds, never offset: for latency measurement only. */
int64_t clock_mono_ns_raw(void);
/* Wall clock (UTC) in milliseconds since the epoch plus the simulated offset. */
int64_t clock_wall_ms(void);
/* True when the kernel reports the system clock as synchronised (adjtimex). */
bool clock_synced(void);

void clock_sim_enable(bool on);
bool clock_sim_enabled(void);
/* Moves both clocks forward by ms (> 0). Returns false if the sim clock is off. */
bool clock_sim_advance(int64_t ms);
/* Resets the offset (tests). */
void clock_sim_reset(void);

#endif
