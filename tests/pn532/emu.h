/*
 * emu.h - what the PN532 emulator's parts share: time, events, the line to the host.
 *
 * pn532_emu.c owns the process (pty, event loop, control commands) and provides
 * these functions; pn532_chip.c, card.c and desfire.c call them.
 */
#ifndef PN532_EMU_H
#define PN532_EMU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* CLOCK_MONOTONIC in microseconds. */
int64_t emu_now_us(void);

/* One event line on stdout (flushed at once): what tests wait for. */
void emu_event(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Diagnostics on stderr, only with -v. */
void emu_trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void emu_trace_hex(const char *what, const uint8_t *buf, size_t len);

/* Queues bytes for the host (the pty master). The first byte leaves no earlier than
 * delay_us from now; with baud pacing on, every byte takes 86.8 us of line time. */
void emu_host_send(const uint8_t *buf, size_t len, int64_t delay_us);

/* Line time of n bytes when baud pacing is on (86.8 us each), else 0. */
int64_t emu_line_time_us(size_t n);

/* Drops queued bytes the host has not started to receive (an aborted reply). */
void emu_host_drop_pending(void);

/* Fills buf with random bytes; aborts the emulator if the RNG fails. */
void emu_random(uint8_t *buf, size_t len);

/* Hex helpers: parse "0a1B.." (no separators) into at most max bytes; -1 if malformed. */
int emu_parse_hex(const char *s, uint8_t *out, size_t max);
/* Formats len bytes as upper-case hex into out (size >= 2*len+1). */
void emu_hex(const uint8_t *buf, size_t len, char *out);

#endif
