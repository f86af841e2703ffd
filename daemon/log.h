/*
 * log.h - logging for lockerd and lockerctl.
 *
 * Messages go to stderr, one line each, prefixed with the syslog priority in
 * angle brackets ("<3>") so that journald files them at the right level when
 * lockerd runs under systemd. When stderr is a terminal the prefix is replaced by a
 * readable level word.
 *
 * Conventions (after OpenBSD ntpd): log_warn() appends strerror(errno) and leaves
 * errno untouched; log_warnx() does not. fatal()/fatalx() log and exit(1): use them
 * only during start-up, never on a path a card tap can reach.
 *
 * Privacy: never pass a raw card UID to these functions.
 */
#ifndef LOCKERD_LOG_H
#define LOCKERD_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level {
    LOG_LVL_ERR = 3,
    LOG_LVL_WARNING = 4,
    LOG_LVL_NOTICE = 5,
    LOG_LVL_INFO = 6,
    LOG_LVL_DEBUG = 7,
};

/* progname is kept by pointer: pass a string literal or argv[0]. */
void log_init(const char *progname, enum log_level level);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parses "err", "warning", "notice", "info", "debug". Returns false if unknown. */
bool log_level_parse(const char *s, enum log_level *out);
const char *log_level_name(enum log_level level);

void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_errx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_notice(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Out of memory is not recoverable in a station daemon: these die with a message. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
char *xstrdup(const char *s);

#endif
