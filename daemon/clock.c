/*
 * clock.c - monotonic and wall clocks with a simulated offset.
 *
 * The offset is atomic because the reader thread (libnfc) may read the clock while
 * the main thread advances it from a control command.
 */
#include "daemon/clock.h"

#include <stdatomic.h>
#include <sys/timex.h>
#include <time.h>

static atomic_bool sim_on;
static _Atomic int64_t sim_offset_ms;

static int64_t ts_ms(const struct timespec *ts)
{
    return (int64_t)ts->tv_sec * 1000 + ts->tv_nsec / 1000000;
}

int64_t clock_mono_ms(void)
{
    struct timespec ts;
    /* CLOCK_MONOTONIC cannot fail with a valid timespec pointer. */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts_ms(&ts) + atomic_load(&sim_offset_ms);
}

int64_t clock_mono_ns_raw(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t clock_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts_ms(&ts) + atomic_load(&sim_offset_ms);
}

bool clock_synced(void)
{
    struct timex tx = {0};
    /* modes == 0 only reads the kernel state, which needs no privilege. The kernel
     * returns TIME_ERROR while STA_UNSYNC is set; check the bit too for clarity. */
    int state = adjtimex(&tx);

    if (state < 0 || state == TIME_ERROR)
        return false;
    return (tx.status & STA_UNSYNC) == 0;
}

void clock_sim_enable(bool on)
{
    atomic_store(&sim_on, on);
    /* The offset must only ever be non-zero while simulation is on. */
    if (!on)
        atomic_store(&sim_offset_ms, 0);
}

bool clock_sim_enabled(void)
{
    return atomic_load(&sim_on);
}

bool clock_sim_advance(int64_t ms)
{
    if (!atomic_load(&sim_on) || ms <= 0)
        return false;
    atomic_fetch_add(&sim_offset_ms, ms);
    return true;
}

void clock_sim_reset(void)
{
    atomic_store(&sim_offset_ms, 0);
}
