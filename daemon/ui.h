/*
 * ui.h - the kiosk screen's server: static files of ui/ and a live feed of what the
 * station does, over HTTP on loopback (libmicrohttpd inside lockerd's event loop).
 *
 *   GET /                  ui/index.html (and every other file under [ui] dir)
 *   GET /api/status        the public status: station, compartments, alarms, the
 *                          screen's settings; no member, club, booking or card ids
 *   GET /api/events        Server-Sent Events: "status" snapshots and "station"
 *                          events (public fields only), a comment every 15 s
 *   GET /api/ping          a tiny SVG image: the offline page probes lockerd with it
 *   POST /api/speak?lang=  text/plain body, spoken with espeak-ng ([ui] speech = yes)
 *
 * The server runs in lockerd's single thread: MHD's epoll fd is watched by the loop,
 * MHD_run() is called when it is ready, and MHD's timeout is a loop timer. Idle, it
 * costs no wakeups; while a door is being opened or closed it looks at the station
 * four times a second, because opening a door records no event.
 */
#ifndef LOCKERD_UI_H
#define LOCKERD_UI_H

#include <stddef.h>

#include "daemon/config.h"
#include "daemon/loop.h"
#include "daemon/station.h"
#include "daemon/store.h"

struct ui;

/* With [ui] enabled = yes, listens on [ui] listen; otherwise the object is inert.
 * NULL with a message in err when the server cannot start (address in use, no
 * such directory). cfg, loop, store and station must outlive the ui. */
struct ui *ui_new(const struct config *cfg, struct loop *loop, struct store *store,
                  struct station *st, char *err, size_t errlen);
/* Takes over a reloaded config (which must stay valid): a changed enabled, listen
 * or dir restarts the server (a failure is logged and leaves the screen off);
 * language and speech reach the screen with the next status. */
void ui_reconfigure(struct ui *ui, const struct config *cfg);
/* Closes every connection, stops the server, stops speech. Accepts NULL. */
void ui_free(struct ui *ui);

/* The public view of station_status_json(): what a screen in a public place may
 * show. New reference. For tests. */
json_t *ui_public_status(struct ui *ui);
/* The public view of one event from store_events_json(), or NULL when the screen
 * has no use for it. New reference. For tests. */
json_t *ui_public_event(const json_t *ev);

#endif
