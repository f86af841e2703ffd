/*
 * loop.c - epoll event loop with one timerfd and one signalfd (after ell's main.c).
 *
 * Watches live in a singly linked list; lockerd has a few dozen, so linear search is
 * simpler than any index and fast enough. epoll carries the watch id, not a pointer:
 * an event for a watch removed earlier in the same pass finds no live watch and is
 * dropped, and a freed watch can never be dereferenced.
 *
 * Timer deadlines are absolute clock_mono_ms() values, which include the simulated
 * offset. The timerfd is always armed with a relative delay, so the same arithmetic
 * works whether or not the station clock is simulated.
 */
#include "daemon/loop.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "daemon/clock.h"
#include "daemon/log.h"

/* epoll data for the loop's own fds; watch ids are ints, so these never collide. */
#define TAG_TIMERFD  ((uint64_t)1 << 32)
#define TAG_SIGNALFD (((uint64_t)1 << 32) + 1)

#define MAX_EVENTS 32
/* Far-away deadlines are armed in steps; an extra wakeup a week is free. */
#define MAX_ARM_MS (INT64_C(7) * 24 * 3600 * 1000)

enum watch_kind { WATCH_FD, WATCH_TIMER, WATCH_SIGNAL };

struct watch {
    int id;
    enum watch_kind kind;
    bool dead;
    void *arg;
    struct watch *next;

    /* WATCH_FD */
    int fd;
    loop_fd_cb fd_cb;

    /* WATCH_TIMER */
    int64_t deadline;
    uint64_t seq; /* creation order: ties fire in the order they were added */
    loop_timer_cb timer_cb;

    /* WATCH_SIGNAL */
    int signo;
    bool was_blocked; /* the signal was blocked before the loop took it over */
    loop_signal_cb signal_cb;
};

struct loop {
    int epfd;
    int timerfd;
    int sigfd;
    sigset_t sigmask; /* signals currently routed to sigfd */

    struct watch *watches;
    int last_id;
    uint64_t timer_seq;

    int64_t armed_deadline; /* INT64_MAX: timerfd disarmed */
    bool dispatching;
    bool has_dead;

    bool quit;
    int status;
    uint64_t wakeups;
};

static struct watch *find_watch(struct loop *loop, int id)
{
    for (struct watch *w = loop->watches; w != NULL; w = w->next) {
        if (w->id == id && !w->dead)
            return w;
    }
    return NULL;
}

static bool id_in_use(struct loop *loop, int id)
{
    for (struct watch *w = loop->watches; w != NULL; w = w->next) {
        if (w->id == id)
            return true;
    }
    return false;
}

static struct watch *watch_new(struct loop *loop, enum watch_kind kind, void *arg)
{
    struct watch *w = calloc(1, sizeof(*w));

    if (w == NULL)
        return NULL;
    /* Ids only grow, so an id is never reused while an event for it may be pending.
     * After INT_MAX additions, wrap and skip the ids still in use (dead ones too). */
    do {
        loop->last_id = loop->last_id == INT_MAX ? 1 : loop->last_id + 1;
    } while (id_in_use(loop, loop->last_id));
    w->id = loop->last_id;
    w->kind = kind;
    w->arg = arg;
    w->fd = -1;
    return w;
}

static void watch_link(struct loop *loop, struct watch *w)
{
    w->next = loop->watches;
    loop->watches = w;
}

struct loop *loop_new(void)
{
    struct loop *loop = calloc(1, sizeof(*loop));
    struct epoll_event ev;
    int saved_errno;

    if (loop == NULL)
        return NULL;
    loop->epfd = -1;
    loop->timerfd = -1;
    loop->sigfd = -1;
    loop->armed_deadline = INT64_MAX;
    sigemptyset(&loop->sigmask);

    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0)
        goto err_free;
    loop->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (loop->timerfd < 0)
        goto err_free;
    loop->sigfd = signalfd(-1, &loop->sigmask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (loop->sigfd < 0)
        goto err_free;

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.u64 = TAG_TIMERFD;
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, loop->timerfd, &ev) < 0)
        goto err_free;
    ev.data.u64 = TAG_SIGNALFD;
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, loop->sigfd, &ev) < 0)
        goto err_free;
    return loop;

err_free:
    saved_errno = errno;
    loop_free(loop);
    errno = saved_errno;
    return NULL;
}

/* Arms the timerfd for the earliest live timer, or disarms it when there is none,
 * so an idle loop sleeps in epoll_wait with no timeout. force: re-arm even if the
 * earliest deadline is unchanged (the clock moved under it). */
static void rearm(struct loop *loop, bool force)
{
    struct itimerspec its;
    int64_t earliest = INT64_MAX;
    int64_t delay;

    for (struct watch *w = loop->watches; w != NULL; w = w->next) {
        if (w->kind == WATCH_TIMER && !w->dead && w->deadline < earliest)
            earliest = w->deadline;
    }
    if (earliest == loop->armed_deadline && !force)
        return;

    memset(&its, 0, sizeof(its));
    if (earliest != INT64_MAX) {
        delay = earliest - clock_mono_ms();
        if (delay > MAX_ARM_MS)
            delay = MAX_ARM_MS;
        if (delay > 0) {
            its.it_value.tv_sec = (time_t)(delay / 1000);
            its.it_value.tv_nsec = (long)(delay % 1000) * 1000000;
        } else {
            /* An all-zero it_value would disarm the timer: 1 ns means "now". */
            its.it_value.tv_nsec = 1;
        }
    }
    if (timerfd_settime(loop->timerfd, 0, &its, NULL) < 0) {
        log_warn("loop: timerfd_settime");
        return;
    }
    loop->armed_deadline = earliest;
}

static int update_signalfd(struct loop *loop)
{
    if (signalfd(loop->sigfd, &loop->sigmask, SFD_NONBLOCK | SFD_CLOEXEC) < 0)
        return -errno;
    return 0;
}

static bool signal_still_watched(struct loop *loop, int signo)
{
    for (struct watch *w = loop->watches; w != NULL; w = w->next) {
        if (w->kind == WATCH_SIGNAL && !w->dead && w->signo == signo)
            return true;
    }
    return false;
}

/* Undoes what adding the watch did to the kernel; the memory is freed by the caller. */
static void watch_detach(struct loop *loop, struct watch *w)
{
    sigset_t one;

    switch (w->kind) {
    case WATCH_FD:
        /* The owner may have closed the fd already; then epoll dropped it itself. */
        epoll_ctl(loop->epfd, EPOLL_CTL_DEL, w->fd, NULL);
        break;
    case WATCH_TIMER:
        break;
    case WATCH_SIGNAL:
        if (signal_still_watched(loop, w->signo))
            break;
        sigdelset(&loop->sigmask, w->signo);
        if (update_signalfd(loop) < 0)
            log_warn("loop: signalfd");
        /* Give the signal back in the state we found it. */
        if (!w->was_blocked) {
            sigemptyset(&one);
            sigaddset(&one, w->signo);
            sigprocmask(SIG_UNBLOCK, &one, NULL);
        }
        break;
    }
}

static void sweep_dead(struct loop *loop)
{
    struct watch **pp = &loop->watches;

    while (*pp != NULL) {
        struct watch *w = *pp;
        if (w->dead) {
            *pp = w->next;
            free(w);
        } else {
            pp = &w->next;
        }
    }
    loop->has_dead = false;
}

void loop_free(struct loop *loop)
{
    struct watch *w, *next;

    if (loop == NULL)
        return;
    for (w = loop->watches; w != NULL; w = w->next) {
        if (!w->dead) {
            w->dead = true;
            watch_detach(loop, w);
        }
    }
    for (w = loop->watches; w != NULL; w = next) {
        next = w->next;
        free(w);
    }
    if (loop->sigfd >= 0)
        close(loop->sigfd);
    if (loop->timerfd >= 0)
        close(loop->timerfd);
    if (loop->epfd >= 0)
        close(loop->epfd);
    free(loop);
}

int loop_add_fd(struct loop *loop, int fd, uint32_t events, loop_fd_cb cb, void *arg)
{
    struct epoll_event ev;
    struct watch *w;

    if (fd < 0 || cb == NULL)
        return -EINVAL;
    w = watch_new(loop, WATCH_FD, arg);
    if (w == NULL)
        return -ENOMEM;
    w->fd = fd;
    w->fd_cb = cb;

    memset(&ev, 0, sizeof(ev));
    ev.events = events;
    ev.data.u64 = (uint64_t)w->id;
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int err = errno;
        free(w);
        return -err;
    }
    watch_link(loop, w);
    return w->id;
}

int loop_mod_fd(struct loop *loop, int id, uint32_t events)
{
    struct watch *w = find_watch(loop, id);
    struct epoll_event ev;

    if (w == NULL || w->kind != WATCH_FD)
        return -ENOENT;
    memset(&ev, 0, sizeof(ev));
    ev.events = events;
    ev.data.u64 = (uint64_t)w->id;
    if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, w->fd, &ev) < 0)
        return -errno;
    return 0;
}

int loop_add_timer(struct loop *loop, int64_t delay_ms, loop_timer_cb cb, void *arg)
{
    struct watch *w;
    int64_t now = clock_mono_ms();

    if (cb == NULL)
        return -EINVAL;
    if (delay_ms < 0)
        delay_ms = 0;
    w = watch_new(loop, WATCH_TIMER, arg);
    if (w == NULL)
        return -ENOMEM;
    w->deadline = delay_ms > INT64_MAX - now ? INT64_MAX - 1 : now + delay_ms;
    w->seq = ++loop->timer_seq;
    w->timer_cb = cb;
    watch_link(loop, w);
    /* During dispatch the pass ends with a re-arm anyway. */
    if (!loop->dispatching && w->deadline < loop->armed_deadline)
        rearm(loop, false);
    return w->id;
}

int loop_add_signal(struct loop *loop, int signo, loop_signal_cb cb, void *arg)
{
    sigset_t one, old;
    struct watch *w;
    bool first;
    int r;

    if (cb == NULL || signo <= 0 || signo >= NSIG)
        return -EINVAL;
    w = watch_new(loop, WATCH_SIGNAL, arg);
    if (w == NULL)
        return -ENOMEM;
    w->signo = signo;
    w->signal_cb = cb;

    first = !sigismember(&loop->sigmask, signo);
    if (first) {
        sigemptyset(&one);
        sigaddset(&one, signo);
        /* Block first: between the two calls the signal then stays pending instead
         * of running its default action. With threads this only covers the calling
         * thread, so add signals before starting any. */
        if (sigprocmask(SIG_BLOCK, &one, &old) < 0) {
            r = -errno;
            goto err_free;
        }
        w->was_blocked = sigismember(&old, signo) == 1;
        sigaddset(&loop->sigmask, signo);
        r = update_signalfd(loop);
        if (r < 0)
            goto err_unblock;
    } else {
        /* Inherit the original state from the watch that took the signal over. */
        for (struct watch *o = loop->watches; o != NULL; o = o->next) {
            if (o->kind == WATCH_SIGNAL && !o->dead && o->signo == signo)
                w->was_blocked = o->was_blocked;
        }
    }
    watch_link(loop, w);
    return w->id;

err_unblock:
    sigdelset(&loop->sigmask, signo);
    if (!w->was_blocked)
        sigprocmask(SIG_UNBLOCK, &one, NULL);
err_free:
    free(w);
    return r;
}

void loop_remove(struct loop *loop, int id)
{
    struct watch *w = find_watch(loop, id);
    bool was_timer;

    if (w == NULL)
        return;
    was_timer = w->kind == WATCH_TIMER;
    w->dead = true;
    watch_detach(loop, w);
    if (loop->dispatching) {
        loop->has_dead = true;
        return;
    }
    sweep_dead(loop);
    if (was_timer)
        rearm(loop, false);
}

static int dispatch_signals(struct loop *loop)
{
    struct signalfd_siginfo si;
    int ran = 0;

    for (;;) {
        ssize_t n = read(loop->sigfd, &si, sizeof(si));
        if (n < 0 && errno == EINTR)
            continue;
        if (n != (ssize_t)sizeof(si))
            break; /* EAGAIN: drained */
        for (struct watch *w = loop->watches; w != NULL; w = w->next) {
            if (w->kind == WATCH_SIGNAL && !w->dead && w->signo == (int)si.ssi_signo) {
                w->signal_cb(w->signo, w->arg);
                ran++;
            }
        }
    }
    return ran;
}

/* Fires every timer that is due, earliest first. Timers added by these callbacks
 * wait for the next pass even with delay 0, so a callback that re-adds itself
 * cannot starve the fds. */
static int dispatch_timers(struct loop *loop)
{
    uint64_t seq_limit = loop->timer_seq;
    int64_t now = clock_mono_ms();
    int ran = 0;

    for (;;) {
        struct watch *next = NULL;
        for (struct watch *w = loop->watches; w != NULL; w = w->next) {
            if (w->kind != WATCH_TIMER || w->dead || w->seq > seq_limit || w->deadline > now)
                continue;
            if (next == NULL || w->deadline < next->deadline ||
                (w->deadline == next->deadline && w->seq < next->seq))
                next = w;
        }
        if (next == NULL)
            break;
        /* One-shot: dead before the callback, so loop_remove() on it is a no-op. */
        next->dead = true;
        loop->has_dead = true;
        next->timer_cb(next->arg);
        ran++;
    }
    return ran;
}

int loop_run_once(struct loop *loop, int timeout_ms)
{
    struct epoll_event events[MAX_EVENTS];
    uint64_t expirations;
    int n, ran = 0;

    n = epoll_wait(loop->epfd, events, MAX_EVENTS, timeout_ms);
    loop->wakeups++;
    if (n < 0)
        return errno == EINTR ? 0 : -errno;

    loop->dispatching = true;
    for (int i = 0; i < n; i++) {
        uint64_t tag = events[i].data.u64;
        if (tag == TAG_TIMERFD) {
            /* Only clears readiness; due timers are found by deadline below. */
            while (read(loop->timerfd, &expirations, sizeof(expirations)) < 0 && errno == EINTR)
                ;
            /* The kernel disarmed it by firing; make the next rearm() call through. */
            loop->armed_deadline = INT64_MAX;
        } else if (tag == TAG_SIGNALFD) {
            ran += dispatch_signals(loop);
        } else {
            /* find_watch() skips dead watches: one removed earlier in this pass does
             * not run even though epoll already returned its event. */
            struct watch *w = find_watch(loop, (int)tag);
            if (w != NULL && w->kind == WATCH_FD) {
                w->fd_cb(w->fd, events[i].events, w->arg);
                ran++;
            }
        }
    }
    ran += dispatch_timers(loop);
    loop->dispatching = false;

    if (loop->has_dead)
        sweep_dead(loop);
    rearm(loop, false);
    return ran;
}

int loop_run(struct loop *loop)
{
    int r, status;

    while (!loop->quit) {
        r = loop_run_once(loop, -1);
        if (r < 0) {
            loop->quit = false;
            return r;
        }
    }
    status = loop->status;
    /* Ready for another loop_run(). */
    loop->quit = false;
    loop->status = 0;
    return status;
}

void loop_quit(struct loop *loop, int status)
{
    loop->quit = true;
    loop->status = status;
}

void loop_clock_changed(struct loop *loop)
{
    rearm(loop, true);
}

uint64_t loop_wakeups(const struct loop *loop)
{
    return loop->wakeups;
}
