/*
 * emu_client.c - pn532_emu as a child process with pipes.
 */
#include "tests/pn532/emu_client.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void add_line(struct emu_client *e, const char *s)
{
    if (e->nlines == e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 256;
        char **l = realloc(e->lines, cap * sizeof(*l));
        if (!l) {
            perror("emu_client");
            abort();
        }
        e->lines = l;
        e->cap = cap;
    }
    e->lines[e->nlines] = strdup(s);
    if (!e->lines[e->nlines]) {
        perror("emu_client");
        abort();
    }
    if (getenv("EMU_ECHO"))
        fprintf(stderr, "  emu> %s\n", s);
    e->nlines++;
}

/* Reads once (waiting at most timeout_ms); returns -1 on EOF. */
static int read_some(struct emu_client *e, int timeout_ms)
{
    struct pollfd p = {.fd = e->from_emu, .events = POLLIN};
    if (e->eof)
        return -1;
    int r = poll(&p, 1, timeout_ms);
    if (r <= 0)
        return 0;
    ssize_t n =
        read(e->from_emu, e->partial + e->partial_len, sizeof(e->partial) - e->partial_len - 1);
    if (n <= 0) {
        e->eof = true;
        return -1;
    }
    e->partial_len += (size_t)n;
    e->partial[e->partial_len] = '\0';
    char *nl;
    while ((nl = memchr(e->partial, '\n', e->partial_len))) {
        *nl = '\0';
        add_line(e, e->partial);
        size_t used = (size_t)(nl - e->partial) + 1;
        memmove(e->partial, nl + 1, e->partial_len - used);
        e->partial_len -= used;
    }
    if (e->partial_len == sizeof(e->partial) - 1)
        e->partial_len = 0;
    return 0;
}

void emu_drain(struct emu_client *e)
{
    struct pollfd p = {.fd = e->from_emu, .events = POLLIN};
    while (!e->eof && poll(&p, 1, 0) > 0)
        if (read_some(e, 0) < 0)
            break;
}

int emu_wait(struct emu_client *e, const char *prefix, int timeout_ms, char *line, size_t len)
{
    long long deadline = now_ms() + timeout_ms;
    size_t pl = strlen(prefix);
    for (;;) {
        for (; e->cursor < e->nlines; e->cursor++) {
            if (strncmp(e->lines[e->cursor], prefix, pl) == 0) {
                if (line)
                    snprintf(line, len, "%s", e->lines[e->cursor]);
                e->cursor++;
                return 0;
            }
        }
        long long left = deadline - now_ms();
        if (left <= 0 || read_some(e, (int)left) < 0) {
            if (e->cursor < e->nlines)
                continue;
            fprintf(stderr, "emu_client: no '%s' within %d ms\n", prefix, timeout_ms);
            return -1;
        }
    }
}

bool emu_seen(struct emu_client *e, const char *prefix)
{
    emu_drain(e);
    for (size_t i = 0; i < e->nlines; i++)
        if (strncmp(e->lines[i], prefix, strlen(prefix)) == 0)
            return true;
    return false;
}

void emu_skip(struct emu_client *e)
{
    emu_drain(e);
    e->cursor = e->nlines;
}

int emu_cmd(struct emu_client *e, const char *fmt, ...)
{
    char buf[16384];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(buf) - 1)
        return -1;
    buf[n++] = '\n';
    if (write(e->to_emu, buf, (size_t)n) != n) {
        perror("emu_client: write");
        return -1;
    }
    /* the answer to this command is the first ok/error line after what we have */
    for (;;) {
        char line[1024];
        if (emu_wait(e, "", EMU_DEFAULT_TIMEOUT_MS, line, sizeof(line)) < 0)
            return -1;
        if (strncmp(line, "ok ", 3) == 0)
            return 0;
        if (strncmp(line, "error ", 6) == 0) {
            fprintf(stderr, "emu_client: '%.*s': %s\n", n - 1, buf, line);
            return -1;
        }
    }
}

int emu_start(struct emu_client *e, const char *emu_path)
{
    int in[2], out[2];
    const char *tmp = getenv("TMPDIR");

    memset(e, 0, sizeof(*e));
    if (!emu_path)
        emu_path = getenv("PN532_EMU");
    if (!emu_path)
        emu_path = "build/pn532/pn532_emu";
    snprintf(e->link, sizeof(e->link), "%s/pn532emu-%d-%ld", tmp ? tmp : "/tmp", (int)getpid(),
             (long)now_ms());
    snprintf(e->connstring, sizeof(e->connstring), "pn532_uart:%s", e->link);
    if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0) {
        perror("emu_client: pipe");
        return -1;
    }
    e->pid = fork();
    if (e->pid < 0) {
        perror("emu_client: fork");
        return -1;
    }
    if (e->pid == 0) {
        dup2(in[0], STDIN_FILENO);
        dup2(out[1], STDOUT_FILENO);
        execl(emu_path, emu_path, "--link", e->link, (char *)NULL);
        fprintf(stderr, "emu_client: exec %s: %s\n", emu_path, strerror(errno));
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    e->to_emu = in[1];
    e->from_emu = out[0];
    signal(SIGPIPE, SIG_IGN);
    if (emu_wait(e, "ready ", EMU_DEFAULT_TIMEOUT_MS, NULL, 0) < 0) {
        emu_stop(e);
        return -1;
    }
    return 0;
}

void emu_stop(struct emu_client *e)
{
    if (e->pid > 0) {
        if (write(e->to_emu, "quit\n", 5) != 5) {
            /* it is gone already */
        }
        close(e->to_emu);
        /* the emulator closes its stdout when it exits */
        long long deadline = now_ms() + EMU_DEFAULT_TIMEOUT_MS;
        while (!e->eof && now_ms() < deadline)
            read_some(e, (int)(deadline - now_ms()));
        if (!e->eof)
            kill(e->pid, SIGKILL);
        int st;
        waitpid(e->pid, &st, 0);
        close(e->from_emu);
        e->pid = 0;
    }
    for (size_t i = 0; i < e->nlines; i++)
        free(e->lines[i]);
    free(e->lines);
    e->lines = NULL;
    e->nlines = e->cap = e->cursor = 0;
}
