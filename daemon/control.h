/*
 * control.h - the control socket ($RUNTIME_DIRECTORY/control.sock).
 *
 * One JSON object per line each way. Request: {"cmd": "booking.add", "args": {...}}.
 * Reply: {"ok": true, "result": ...} or {"ok": false, "error": {"code": "...",
 * "message": "..."}}. `events` with "follow" then streams {"event": {...}} lines.
 * The socket is mode 0660, group lockerd-admin. The caller is identified by its
 * unix user (SO_PEERCRED); its role (member, manager, technician) decides which
 * commands it may run, and it is recorded as the operator of every change.
 */
#ifndef LOCKERD_CONTROL_H
#define LOCKERD_CONTROL_H

#include <stddef.h>

#include "daemon/config.h"
#include "daemon/loop.h"
#include "daemon/station.h"
#include "daemon/store.h"

struct control;

/* Creates and listens on cfg->socket_path. Refuses to start when another process
 * already answers on it. NULL with a message in err on failure. */
struct control *control_new(const struct config *cfg, struct loop *loop, struct station *st,
                            struct store *store, char *err, size_t errlen);
/* Closes every client and removes the socket file. Accepts NULL. */
void control_free(struct control *ctl);
/* The city API link that `status`, `sync status` and `sync now` report on and drive
 * (borrowed; set once after both exist). */
struct sync;
void control_set_sync(struct control *ctl, struct sync *sy);
/* Takes over the role lists of a reloaded config (which must stay valid). */
void control_reconfigure(struct control *ctl, const struct config *cfg);

#endif
