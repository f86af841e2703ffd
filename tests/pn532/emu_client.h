/*
 * emu_client.h - drive pn532_emu from a C test: start it, send control commands,
 * wait for events (with timeouts, never by sleeping).
 *
 * Every event line the emulator prints is kept in order. emu_wait() looks at the
 * lines after the previous match (the cursor) and moves the cursor past the line it
 * finds; emu_seen() searches all lines without moving it.
 */
#ifndef PN532_EMU_CLIENT_H
#define PN532_EMU_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define EMU_DEFAULT_TIMEOUT_MS 5000

struct emu_client {
    pid_t pid;
    int to_emu;   /* its stdin */
    int from_emu; /* its stdout */
    char link[256];
    char connstring[1024]; /* nfc_connstring size: nfc_open() reads all of it */
    char partial[4096];
    size_t partial_len;
    char **lines;
    size_t nlines, cap, cursor;
    bool eof;
};

/* Starts emu_path (NULL: $PN532_EMU or build/pn532/pn532_emu) with --link at a fresh
 * path under $TMPDIR, waits for "ready". Fills connstring ("pn532_uart:LINK").
 * Returns 0 or -1 (message on stderr). */
int emu_start(struct emu_client *e, const char *emu_path);

/* Sends one control command and waits for its "ok ..." (0) or "error ..." (-1). */
int emu_cmd(struct emu_client *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Waits for the next line starting with prefix. Copies it to line (if not NULL).
 * Returns 0, or -1 on timeout / emulator exit. */
int emu_wait(struct emu_client *e, const char *prefix, int timeout_ms, char *line, size_t len);

/* Reads what the emulator has printed so far, without waiting. */
void emu_drain(struct emu_client *e);

/* Has any line so far started with prefix? */
bool emu_seen(struct emu_client *e, const char *prefix);

/* Moves the cursor to the end: later waits see only new lines. */
void emu_skip(struct emu_client *e);

/* quit, wait for the process, free everything. */
void emu_stop(struct emu_client *e);

#endif
