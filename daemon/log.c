/*
 * log.c - stderr logging with syslog priority prefixes (after OpenBSD ntpd log.c).
 *
 * Each message is formatted into one buffer and written with a single write(2) so
 * that lines from the reader thread and the main thread never interleave, and so
 * that journald sees exactly one "<N>" prefix per line.
 */
#include "daemon/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LOG_LINE_MAX 1024

static const char *log_progname = "lockerd";
static enum log_level log_level_cur = LOG_LVL_INFO;
/* -1: not decided yet (log_init not called), 0: journald/pipe, 1: terminal. */
static int log_tty = -1;

void log_init(const char *progname, enum log_level level)
{
    if (progname != NULL) {
        /* argv[0] may be a path; the basename reads better in a terminal. */
        const char *slash = strrchr(progname, '/');
        log_progname = slash != NULL ? slash + 1 : progname;
    }
    log_level_cur = level;
    log_tty = isatty(STDERR_FILENO) ? 1 : 0;
}

void log_set_level(enum log_level level)
{
    log_level_cur = level;
}

enum log_level log_get_level(void)
{
    return log_level_cur;
}

bool log_level_parse(const char *s, enum log_level *out)
{
    static const enum log_level all[] = {LOG_LVL_ERR, LOG_LVL_WARNING, LOG_LVL_NOTICE, LOG_LVL_INFO,
                                         LOG_LVL_DEBUG};

    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (strcmp(s, log_level_name(all[i])) == 0) {
            *out = all[i];
            return true;
        }
    }
    return false;
}

const char *log_level_name(enum log_level level)
{
    switch (level) {
    case LOG_LVL_ERR:
        return "err";
    case LOG_LVL_WARNING:
        return "warning";
    case LOG_LVL_NOTICE:
        return "notice";
    case LOG_LVL_INFO:
        return "info";
    case LOG_LVL_DEBUG:
        return "debug";
    }
    return "unknown";
}

/* The word shown instead of "<N>" on a terminal; info is the normal case and gets none. */
static const char *tty_word(enum log_level level)
{
    switch (level) {
    case LOG_LVL_ERR:
        return "error: ";
    case LOG_LVL_WARNING:
        return "warning: ";
    case LOG_LVL_NOTICE:
        return "notice: ";
    case LOG_LVL_INFO:
        return "";
    case LOG_LVL_DEBUG:
        return "debug: ";
    }
    return "";
}

static void write_all(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* nowhere left to report a logging failure */
        buf += n;
        len -= (size_t)n;
    }
}

/* errnum < 0: no strerror suffix. Never changes errno. */
__attribute__((format(printf, 3, 0))) static void vlog(enum log_level level, int errnum,
                                                       const char *fmt, va_list ap)
{
    int saved_errno = errno;
    char line[LOG_LINE_MAX];
    size_t len;
    int n;

    if (level > log_level_cur) {
        errno = saved_errno;
        return;
    }
    if (log_tty < 0)
        log_tty = isatty(STDERR_FILENO) ? 1 : 0;

    if (log_tty)
        n = snprintf(line, sizeof(line), "%s: %s", log_progname, tty_word(level));
    else
        n = snprintf(line, sizeof(line), "<%d>", (int)level);
    len = n > 0 ? (size_t)n : 0;
    if (len >= sizeof(line))
        len = sizeof(line) - 1;

    size_t msg_start = len;
    n = vsnprintf(line + len, sizeof(line) - len, fmt, ap);
    if (n > 0)
        len += (size_t)n;
    if (errnum >= 0 && len < sizeof(line)) {
        char ebuf[128];
        /* GNU strerror_r (the Makefile defines _GNU_SOURCE): thread-safe, unlike strerror. */
        const char *es = strerror_r(errnum, ebuf, sizeof(ebuf));
        n = snprintf(line + len, sizeof(line) - len, ": %s", es);
        if (n > 0)
            len += (size_t)n;
    }
    if (len >= sizeof(line) - 1) {
        /* Truncated: leave room for the newline and say so. */
        len = sizeof(line) - 5;
        /* The line is written by length, not as a C string. */
        memcpy(line + len, "...", 3); /* NOLINT(bugprone-not-null-terminated-result) */
        len += 3;
    }

    /* A message may carry text from the config or the network: a newline in it
     * would let that text forge a log line of its own (with its own priority). */
    for (size_t i = msg_start; i < len; i++) {
        unsigned char c = (unsigned char)line[i];
        if (c < 0x20 || c == 0x7f)
            line[i] = ' ';
    }
    line[len++] = '\n';
    write_all(line, len);
    errno = saved_errno;
}

void log_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(LOG_LVL_WARNING, errno, fmt, ap);
    va_end(ap);
}

void log_warnx(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(LOG_LVL_WARNING, -1, fmt, ap);
    va_end(ap);
}

void log_err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(LOG_LVL_ERR, errno, fmt, ap);
    va_end(ap);
}

void log_errx(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(LOG_LVL_ERR, -1, fmt, ap);
    va_end(ap);
}

void log_notice(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(LOG_LVL_NOTICE, -1, fmt, ap);
    va_end(ap);
}

void log_info(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(LOG_LVL_INFO, -1, fmt, ap);
    va_end(ap);
}

void log_debug(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(LOG_LVL_DEBUG, -1, fmt, ap);
    va_end(ap);
}

void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(LOG_LVL_ERR, errno, fmt, ap);
    va_end(ap);
    exit(1);
}

void fatalx(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(LOG_LVL_ERR, -1, fmt, ap);
    va_end(ap);
    exit(1);
}

void *xmalloc(size_t n)
{
    /* malloc(0) may legitimately return NULL; ask for one byte so NULL means OOM. */
    void *p = malloc(n > 0 ? n : 1);
    if (p == NULL)
        fatalx("out of memory (%zu bytes)", n);
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n > 0 ? n : 1, size > 0 ? size : 1);
    if (p == NULL)
        fatalx("out of memory (%zu x %zu bytes)", n, size);
    return p;
}

char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (p == NULL)
        fatalx("out of memory (%zu bytes)", strlen(s) + 1);
    return p;
}
