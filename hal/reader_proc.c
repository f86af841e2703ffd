/*
 * reader_proc.c - runs the libnfc reader backend in a supervised child process.
 *
 * libnfc calls abort() when a PN532 reply carries a status byte with bit 7 set
 * (pn53x.c), which a garbled UART can produce, and libfreefare 0.4.0 can be made to
 * overrun its buffers by a card that answers with one byte. Neither may take the
 * station down, so the reader lives in a child process: lockerd forks it when the
 * reader is opened, the child runs reader_libnfc.c (its thread, watchdog, reopen
 * with back-off, device lock) and forwards every reader event over a SOCK_SEQPACKET
 * socketpair. If the child dies, the parent reports a reader fault and starts a new
 * one with back-off. Only card reads cross the socket: the child never touches the
 * database, the locks or the control socket, and the site's DESFire keys never
 * leave it.
 *
 * The parent side is itself a reader backend: its event fd is an epoll fd holding
 * the socket and a timerfd for the restart back-off.
 */
#include "hal/hal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "daemon/log.h"

#define OPEN_TIMEOUT_MS  10000
#define CLOSE_TIMEOUT_MS 8000 /* the child's own close gives up on a dead chip after 5 s */
#define RESTART_MIN_MS   500
#define RESTART_MAX_MS   30000
#define STABLE_MS        60000 /* a child that lived this long resets the back-off */
#define INFO_LEN         128

enum msg_type {
    MSG_OPENED = 1, /* child -> parent: value = 0 or -errno from the backend's open,
                       info_err and text = its info() */
    MSG_EVENT,      /* child -> parent: a reader event */
    MSG_ISSUE,      /* parent -> child: value = issue_next(on) */
    MSG_INFO,       /* child -> parent: info() changed: info_err and text */
};

/* Every message has this one size; the receiver checks the size, the type and that
 * text is terminated. */
struct msg {
    uint32_t type;
    int32_t value;
    uint32_t event;   /* enum reader_event_type */
    int32_t info_err; /* 0 or -errno, as reader_ops.info returns */
    struct card_read card;
    char text[INFO_LEN];
};

struct reader_dev {
    struct config cfg; /* copy: the config may be replaced by a reload */
    reader_event_cb cb;
    void *cb_arg;
    int epfd, timerfd, sock;
    pid_t child;
    int64_t started_ms;
    int64_t backoff_ms;
    bool issue; /* re-sent to a restarted child */
    char info[INFO_LEN];
    int info_err;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ child */

static void child_event(enum reader_event_type type, const struct card_read *card, void *arg)
{
    int sock = *(int *)arg;
    struct msg m = {.type = MSG_EVENT, .event = (uint32_t)type};
    if (card)
        m.card = *card;
    if (send(sock, &m, sizeof(m), MSG_NOSIGNAL) != (ssize_t)sizeof(m))
        log_warn("reader process: cannot pass an event to lockerd");
    OPENSSL_cleanse(&m, sizeof(m));
}

static __attribute__((noreturn)) void child_main(const struct config *cfg, int sock)
{
    /* Die with lockerd, whatever killed it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        _exit(0);
    /* Only the socket to lockerd and stdio (the log) stay open. */
    if (sock != 3) {
        if (dup2(sock, 3) < 0)
            _exit(1);
        sock = 3;
    }
    close_range(4, ~0U, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    int err = 0;
    struct reader_dev *r = reader_libnfc_ops.open(cfg, child_event, &sock, &err);
    struct msg m = {.type = MSG_OPENED, .value = r ? 0 : (err ? err : -EIO)};
    if (r)
        m.info_err = reader_libnfc_ops.info(r, m.text, sizeof(m.text));
    else
        m.info_err = m.value;
    if (!r)
        snprintf(m.text, sizeof(m.text), "cannot open %.80s: %.32s", cfg->reader_connstring,
                 strerror(-m.value));
    if (send(sock, &m, sizeof(m), MSG_NOSIGNAL) != (ssize_t)sizeof(m) || !r)
        _exit(r ? 1 : 2);
    struct msg sent = m;

    struct pollfd pfd[2] = {
        {.fd = reader_libnfc_ops.event_fd(r), .events = POLLIN},
        {.fd = sock, .events = POLLIN},
    };
    for (;;) {
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pfd[0].revents & POLLIN) {
            reader_libnfc_ops.dispatch(r);
            /* The reader thread wakes us on every change of what info() says. */
            struct msg im = {.type = MSG_INFO};
            im.info_err = reader_libnfc_ops.info(r, im.text, sizeof(im.text));
            if (im.info_err != sent.info_err || strcmp(im.text, sent.text) != 0) {
                if (send(sock, &im, sizeof(im), MSG_NOSIGNAL) != (ssize_t)sizeof(im))
                    log_warn("reader process: cannot pass the reader state to lockerd");
                sent = im;
            }
        }
        if (pfd[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = recv(sock, &m, sizeof(m), 0);
            if (n <= 0)
                break; /* lockerd closed the reader or exited */
            if (n == (ssize_t)sizeof(m) && m.type == MSG_ISSUE)
                reader_libnfc_ops.issue_next(r, m.value != 0);
        }
    }
    reader_libnfc_ops.close(r);
    _exit(0);
}

/* ------------------------------------------------------------ parent */

static void set_info(struct reader_dev *r, int err, const char *text)
{
    r->info_err = err > 0 ? -EIO : err;
    snprintf(r->info, sizeof(r->info), "%s", text);
}

/* Takes over what the child says about its reader. */
static void take_info(struct reader_dev *r, struct msg *m)
{
    m->text[sizeof(m->text) - 1] = '\0';
    set_info(r, m->info_err, m->text);
}

static int spawn(struct reader_dev *r)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0) {
        int err = -errno;
        close(sv[0]);
        close(sv[1]);
        return err;
    }
    if (pid == 0) {
        close(sv[0]);
        child_main(&r->cfg, sv[1]);
    }
    close(sv[1]);
    r->sock = sv[0];
    r->child = pid;
    r->started_ms = mono_ms();
    set_info(r, -EAGAIN, "reader process starting");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = r->sock};
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->sock, &ev) < 0)
        return -errno;
    if (r->issue) {
        struct msg m = {.type = MSG_ISSUE, .value = 1};
        send(r->sock, &m, sizeof(m), MSG_NOSIGNAL);
    }
    return 0;
}

/* Waits for the child to end, killing it after timeout_ms. Returns its status. */
static int reap(pid_t pid, int timeout_ms)
{
    int status = 0;
    int64_t deadline = mono_ms() + timeout_ms;
    for (;;) {
        pid_t got = waitpid(pid, &status, WNOHANG);
        if (got == pid || (got < 0 && errno != EINTR))
            return status;
        if (mono_ms() >= deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return status;
        }
        struct timespec ts = {0, 10L * 1000 * 1000};
        nanosleep(&ts, NULL); /* bounded wait for a child we asked to stop */
    }
}

static void drop_child(struct reader_dev *r)
{
    if (r->sock >= 0) {
        epoll_ctl(r->epfd, EPOLL_CTL_DEL, r->sock, NULL);
        close(r->sock);
        r->sock = -1;
    }
}

/* The child is gone: say so and start another after the back-off. */
static void child_died(struct reader_dev *r)
{
    drop_child(r);
    int status = reap(r->child, CLOSE_TIMEOUT_MS);
    r->child = -1;
    if (WIFSIGNALED(status))
        log_errx("reader process died (%s); restarting it", strsignal(WTERMSIG(status)));
    else
        log_errx("reader process exited with %d; restarting it", WEXITSTATUS(status));
    if (mono_ms() - r->started_ms > STABLE_MS)
        r->backoff_ms = RESTART_MIN_MS;
    struct itimerspec its = {
        .it_value = {.tv_sec = r->backoff_ms / 1000, .tv_nsec = (r->backoff_ms % 1000) * 1000000}};
    timerfd_settime(r->timerfd, 0, &its, NULL);
    r->backoff_ms = r->backoff_ms * 2 > RESTART_MAX_MS ? RESTART_MAX_MS : r->backoff_ms * 2;
    set_info(r, -EIO, "the reader process ended; restarting it with back-off");
    r->cb(READER_FAULT, NULL, r->cb_arg);
}

static struct reader_dev *proc_open(const struct config *cfg, reader_event_cb cb, void *arg,
                                    int *err)
{
    struct reader_dev *r = xcalloc(1, sizeof(*r));
    r->cfg = *cfg;
    r->cb = cb;
    r->cb_arg = arg;
    r->sock = -1;
    r->child = -1;
    r->backoff_ms = RESTART_MIN_MS;
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    r->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = r->timerfd};
    if (r->epfd < 0 || r->timerfd < 0 || epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->timerfd, &ev) < 0) {
        *err = -errno;
        goto err_close;
    }
    *err = spawn(r);
    if (*err < 0)
        goto err_close;

    /* The first open is synchronous: a reader in use by another process, or a key
     * file that cannot be read, must stop lockerd from starting. */
    struct pollfd pfd = {.fd = r->sock, .events = POLLIN};
    struct msg m;
    if (poll(&pfd, 1, OPEN_TIMEOUT_MS) != 1 || recv(r->sock, &m, sizeof(m), 0) != sizeof(m) ||
        m.type != MSG_OPENED) {
        *err = -EIO;
        log_errx("reader process did not start");
        goto err_kill;
    }
    if (m.value < 0) {
        *err = m.value;
        goto err_kill;
    }
    take_info(r, &m);
    return r;

err_kill:
    drop_child(r);
    reap(r->child, CLOSE_TIMEOUT_MS);
err_close:
    if (r->timerfd >= 0)
        close(r->timerfd);
    if (r->epfd >= 0)
        close(r->epfd);
    free(r);
    return NULL;
}

static void proc_close(struct reader_dev *r)
{
    if (!r)
        return;
    if (r->child > 0) {
        drop_child(r); /* EOF tells the child to close the reader and exit */
        reap(r->child, CLOSE_TIMEOUT_MS);
    }
    close(r->timerfd);
    close(r->epfd);
    OPENSSL_cleanse(&r->cfg, sizeof(r->cfg));
    free(r);
}

static int proc_event_fd(struct reader_dev *r)
{
    return r->epfd;
}

static int proc_dispatch(struct reader_dev *r)
{
    struct epoll_event evs[2];
    int n = epoll_wait(r->epfd, evs, 2, 0);
    int count = 0;
    for (int i = 0; i < n; i++) {
        if (evs[i].data.fd == r->timerfd) {
            uint64_t x;
            if (read(r->timerfd, &x, sizeof(x)) == (ssize_t)sizeof(x) && r->child < 0) {
                int err = spawn(r);
                if (err < 0) {
                    log_errx("cannot start the reader process: %s", strerror(-err));
                    r->started_ms = mono_ms();
                    struct itimerspec its = {.it_value = {.tv_sec = r->backoff_ms / 1000}};
                    timerfd_settime(r->timerfd, 0, &its, NULL);
                }
            }
            continue;
        }
        struct msg m;
        ssize_t got = recv(r->sock, &m, sizeof(m), MSG_DONTWAIT);
        while (got == (ssize_t)sizeof(m)) {
            if (m.type == MSG_EVENT && m.event <= READER_FAULT) {
                r->cb((enum reader_event_type)m.event, m.event == READER_CARD ? &m.card : NULL,
                      r->cb_arg);
                count++;
            } else if (m.type == MSG_OPENED) {
                if (m.value < 0)
                    log_warnx("reader process: cannot open the reader: %s", strerror(-m.value));
                take_info(r, &m);
            } else if (m.type == MSG_INFO) {
                take_info(r, &m);
            }
            OPENSSL_cleanse(&m, sizeof(m));
            if (r->sock < 0)
                break;
            got = recv(r->sock, &m, sizeof(m), MSG_DONTWAIT);
        }
        if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR) ||
            (got > 0 && got != (ssize_t)sizeof(m)))
            child_died(r);
    }
    return count;
}

static int proc_issue_next(struct reader_dev *r, bool on)
{
    if (on && r->cfg.auth != CARD_AUTH_DESFIRE)
        return -ENOTSUP;
    r->issue = on;
    if (r->sock < 0)
        return 0; /* passed to the next child */
    struct msg m = {.type = MSG_ISSUE, .value = on};
    return send(r->sock, &m, sizeof(m), MSG_NOSIGNAL) == (ssize_t)sizeof(m) ? 0 : -EIO;
}

static int proc_info(struct reader_dev *r, char *buf, size_t len)
{
    snprintf(buf, len, "%s", r->info);
    return r->info_err;
}

const struct reader_ops reader_libnfc_supervised_ops = {
    .name = "libnfc",
    .open = proc_open,
    .close = proc_close,
    .event_fd = proc_event_fd,
    .dispatch = proc_dispatch,
    .issue_next = proc_issue_next,
    .info = proc_info,
};
