/*
 * loop.h - the single-threaded event loop (epoll + one timerfd + signalfd).
 *
 * Everything in lockerd runs from loop callbacks: file descriptors (control socket,
 * hardware event fds, later curl), one-shot timers on the station clock (see
 * clock.h) and signals. Watches are identified by positive integer ids; removing a
 * watch (even the one being dispatched, even from inside another callback) is
 * always safe: it is marked dead and freed after the current dispatch pass.
 *
 * Error convention: functions returning int return an id (> 0) or 0 on success,
 * -errno on failure.
 *
 * Idle cost: the loop only wakes for fd activity or the earliest timer; there is no
 * periodic tick.
 */
#ifndef LOCKERD_LOOP_H
#define LOCKERD_LOOP_H

#include <stdint.h>

struct loop;

typedef void (*loop_fd_cb)(int fd, uint32_t events, void *arg);
typedef void (*loop_timer_cb)(void *arg);
typedef void (*loop_signal_cb)(int signo, void *arg);

/* Returns NULL on failure (errno set). Free with loop_free(), which accepts NULL.
 * The loop does not own the fds it watches; it owns its epoll, timer and signal fds. */
struct loop *loop_new(void);
void loop_free(struct loop *loop);

/* events: EPOLLIN/EPOLLOUT/... Returns watch id > 0 or -errno. */
int loop_add_fd(struct loop *loop, int fd, uint32_t events, loop_fd_cb cb, void *arg);
/* Changes the event mask of an fd watch. Returns 0 or -errno. */
int loop_mod_fd(struct loop *loop, int id, uint32_t events);
/* One-shot timer firing delay_ms from now on the station's monotonic clock
 * (clock_mono_ms()). Returns watch id > 0 or -errno. */
int loop_add_timer(struct loop *loop, int64_t delay_ms, loop_timer_cb cb, void *arg);
/* Blocks the signal for the process and delivers it through the loop's signalfd. */
int loop_add_signal(struct loop *loop, int signo, loop_signal_cb cb, void *arg);
/* Removes any kind of watch. Unknown or already removed ids are ignored. */
void loop_remove(struct loop *loop, int id);

/* Runs until loop_quit(). Returns the status passed to loop_quit(), or -errno if
 * epoll itself fails. */
int loop_run(struct loop *loop);
/* Dispatches ready events once, waiting at most timeout_ms (-1: forever).
 * For tests and benchmarks. Returns number of callbacks run or -errno. */
int loop_run_once(struct loop *loop, int timeout_ms);
void loop_quit(struct loop *loop, int status);

/* Call after the simulated clock jumps so timers due now fire on the next pass. */
void loop_clock_changed(struct loop *loop);

/* Number of times epoll_wait returned (for the idle wakeup benchmark). */
uint64_t loop_wakeups(const struct loop *loop);

#endif
