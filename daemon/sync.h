/*
 * sync.h - the city API link, main-process side (docs/api.md).
 *
 * lockerd never speaks HTTP itself. sync.c starts the sync worker (syncworker.c) as
 * a separate, sandboxed process, hands it the TLS material and the feed cursors,
 * and from then on only exchanges typed messages with it (syncmsg.h):
 *
 *   worker -> main  feed items, one page at a time, then the page's cursor. The page
 *                   is validated again here and applied with its cursor in one
 *                   transaction, so a crash never loses or repeats part of a page.
 *   main -> worker  batches of outbox events (at most 100), and the heartbeat;
 *                   events leave the outbox only when the server has confirmed them
 *                   (created or duplicate), or as dead letters when it refused them
 *                   for good. With [opendata] push, each past local day's open-data
 *                   summary (opendata.h), one day at a time, oldest first; the last
 *                   day the server confirmed is kept in store meta
 *                   "opendata.pushed_through" (docs/api.md, "Daily usage summary").
 *
 * A worker that dies or sends anything malformed is killed and restarted with
 * back-off; whatever it was doing is redone from the database. Network data can
 * only ever become bookings and credentials: nothing here opens a compartment.
 *
 * Ownership: struct sync borrows the config, loop, store and station; the caller
 * keeps them alive until sync_free(). Error convention: constructors return NULL
 * with a message; the rest log and keep going (the station works offline).
 */
#ifndef LOCKERD_SYNC_H
#define LOCKERD_SYNC_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "daemon/config.h"
#include "daemon/loop.h"
#include "daemon/station.h"
#include "daemon/store.h"

struct sync;

/* Starts the link when cfg->sync_url is set (NULL is returned only on a fatal
 * error such as out of memory; missing TLS files are a sync error shown in
 * `lockerctl sync status`, retried on `sync now` and reload). With no url it
 * returns a struct that reports "local" mode. */
struct sync *sync_new(const struct config *cfg, struct loop *loop, struct store *store,
                      struct station *station, char *err, size_t errlen);
/* Stops the worker (closing its socket ends it; SIGKILL after 2 s) and frees. */
void sync_free(struct sync *sy);
/* A reloaded configuration: the worker is restarted with the new url and files. */
void sync_reconfigure(struct sync *sy, const struct config *cfg);

/* `lockerctl sync now`: clears a halt, starts the worker if it waits for its
 * restart back-off, and asks for a whole cycle (config, both feeds to their last
 * page, pending uploads, heartbeat). Returns the cycle number that
 * sync_status_json() reports as done when it has finished, or -1 when the station
 * has no city API. */
int64_t sync_poll_now(struct sync *sy);

/* Everything `lockerctl sync status` shows. New reference. With brief, the summary
 * for `lockerctl status`. */
json_t *sync_status_json(struct sync *sy, bool brief);

#endif
