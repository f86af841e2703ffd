/*
 * main.c - lockerd: start-up, signals, reload and shutdown.
 *
 * Modules are initialised in dependency order and torn down in reverse:
 *   config -> time zone -> directories -> site key -> store -> loop -> station
 *   (drives every lock inactive) -> control socket -> sync -> kiosk screen ->
 *   station_start (rebuild from sensors) -> run.
 * Start-up failures are fatal with a message; after READY nothing may exit the
 * process except SIGTERM/SIGINT.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <systemd/sd-daemon.h>

#include "daemon/clock.h"
#include "daemon/config.h"
#include "daemon/control.h"
#include "daemon/feedback.h"
#include "daemon/log.h"
#include "daemon/policy.h"
#include "daemon/loop.h"
#include "daemon/station.h"
#include "daemon/store.h"
#include "daemon/sync.h"
#include "daemon/syncworker.h"
#include "daemon/timeutil.h"
#include "daemon/ui.h"

#define DEFAULT_CONFIG "/etc/lockerd/lockerd.conf"
#define SITE_KEY_LEN   32

struct daemon {
    char config_path[PATH_MAX];
    struct config *cfg;
    struct store *store;
    struct loop *loop;
    struct station *station;
    struct control *control;
    struct sync *sync;
    struct ui *ui;
    struct feedback *feedback;
    bool debug;          /* -d: stays in force across reloads */
    int64_t watchdog_ms; /* systemd watchdog ping interval; 0: no watchdog */
};

static void usage(FILE *out)
{
    fprintf(out, "usage: lockerd [-c CONFIG] [-n] [-d] [-V] [-P MEMBER]\n"
                 "  -c CONFIG  configuration file (default " DEFAULT_CONFIG ")\n"
                 "  -n         check the configuration, print it normalised, exit 0 or 1\n"
                 "  -P MEMBER  set MEMBER's PIN (4-8 digits, one line on stdin; an empty line\n"
                 "             removes it) in the station's database, exit 0 or 1\n"
                 "  -d         debug logging\n"
                 "  -V         print the version\n");
}

static void make_dir(const char *path, mode_t mode)
{
    if (mkdir(path, mode) < 0 && errno != EEXIST)
        fatal("cannot create %s", path);
}

/* The site key turns card UIDs into credential ids. It is created once per site
 * (provisioning installs the city's key; a stand-alone station makes its own) and
 * must never be readable by anyone but lockerd. */
static size_t load_site_key(const char *path, uint8_t *key, size_t max)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        uint8_t fresh[SITE_KEY_LEN];
        if (RAND_bytes(fresh, sizeof(fresh)) != 1)
            fatalx("cannot generate a site key");
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
            fatal("cannot create site key %s", path);
        if (write(fd, fresh, sizeof(fresh)) != (ssize_t)sizeof(fresh) || fsync(fd) < 0)
            fatal("cannot write site key %s", path);
        close(fd);
        OPENSSL_cleanse(fresh, sizeof(fresh));
        log_notice("created a new site key in %s", path);
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0)
        fatal("cannot open site key %s", path);
    struct stat sb;
    if (fstat(fd, &sb) == 0 && (sb.st_mode & 0077))
        log_warnx("site key %s is readable by others (mode %o): chmod 600 it", path,
                  (unsigned)(sb.st_mode & 0777));
    ssize_t n = read(fd, key, max);
    close(fd);
    if (n < 16)
        fatalx("site key %s is too short (at least 16 bytes)", path);
    return (size_t)n;
}

/* lockerd -P MEMBER: the PIN from stdin (never the command line, which other users
 * can read), hashed with policy_pin_hash() into the database. Works while lockerd
 * runs: SQLite serialises the two writers. */
static int set_pin(const struct config *cfg, const char *member_id)
{
    char db_path[PATH_MAX + 16], err[512], line[64], hash[POLICY_PIN_HASH_MAX];
    struct member m;
    int rc = 1;

    snprintf(db_path, sizeof(db_path), "%s/lockerd.db", cfg->state_dir);
    struct store *store = store_open(db_path, err, sizeof(err));
    if (!store) {
        log_errx("database %s: %s", db_path, err);
        return 1;
    }
    if (store_member_get(store, member_id, &m) != STORE_OK) {
        log_errx("no member %s", member_id);
        goto out;
    }
    if (!fgets(line, sizeof(line), stdin))
        line[0] = '\0';
    line[strcspn(line, "\r\n")] = '\0';
    if (line[0] == '\0') {
        int r = store_pin_set(store, member_id, NULL, clock_wall_ms());
        if (r == STORE_OK || r == STORE_NOTFOUND) {
            printf("PIN of %s removed\n", member_id);
            rc = 0;
        }
        goto out;
    }
    if (!policy_pin_valid(line)) {
        log_errx("a PIN is 4 to 8 digits");
        goto out;
    }
    if (!policy_pin_hash(line, hash, sizeof(hash)) ||
        store_pin_set(store, member_id, hash, clock_wall_ms()) != STORE_OK) {
        log_errx("cannot store the PIN of %s", member_id);
        goto out;
    }
    printf("PIN of %s set\n", member_id);
    rc = 0;
out:
    OPENSSL_cleanse(line, sizeof(line));
    store_close(store);
    return rc;
}

static bool same_line(const struct line_cfg *a, const struct line_cfg *b)
{
    return strcmp(a->name, b->name) == 0 && a->active_low == b->active_low && a->bias == b->bias;
}

/* Settings the hardware backends took at open (lines, chips, the coil limit the
 * GPIO backend enforces on its own, the reader and its keys) cannot change while
 * they run: keep the running configuration and say so. */
static bool hardware_changed(const struct config *a, const struct config *b)
{
    if (a->gpio_backend != b->gpio_backend || a->reader_backend != b->reader_backend ||
        a->n_compartments != b->n_compartments || strcmp(a->state_dir, b->state_dir) != 0 ||
        strcmp(a->socket_path, b->socket_path) != 0 || !same_line(&a->tamper, &b->tamper) ||
        a->sim_clock != b->sim_clock || strcmp(a->gpio_chip, b->gpio_chip) != 0 ||
        a->debounce_ms != b->debounce_ms || a->max_energize_ms != b->max_energize_ms ||
        a->auth != b->auth || !same_line(&a->fb_red, &b->fb_red) ||
        !same_line(&a->fb_green, &b->fb_green) || !same_line(&a->fb_blue, &b->fb_blue) ||
        !same_line(&a->fb_led, &b->fb_led) || !same_line(&a->fb_buzzer, &b->fb_buzzer) ||
        strcmp(a->reader_connstring, b->reader_connstring) != 0 ||
        strcmp(a->reader_aid, b->reader_aid) != 0 ||
        strcmp(a->reader_key_file, b->reader_key_file) != 0)
        return true;
    for (int i = 0; i < a->n_compartments; i++) {
        const struct compartment_cfg *x = &a->compartments[i], *y = &b->compartments[i];
        if (x->number != y->number || !same_line(&x->lock, &y->lock) ||
            !same_line(&x->door, &y->door) || !same_line(&x->key, &y->key))
            return true;
    }
    return false;
}

static void on_reload(int signo, void *arg)
{
    struct daemon *d = arg;
    char err[512];
    (void)signo;

    sd_notify(0, "RELOADING=1");
    struct config *next = xcalloc(1, sizeof(*next));
    if (!config_load(d->config_path, next, err, sizeof(err))) {
        log_errx("reload failed, keeping the running configuration: %s", err);
        free(next);
        sd_notify(0, "READY=1");
        return;
    }
    if (hardware_changed(d->cfg, next)) {
        log_warnx("reload: hardware settings changed; restart lockerd to apply them");
        free(next);
        sd_notify(0, "READY=1");
        return;
    }
    if (strcmp(next->timezone, d->cfg->timezone) != 0 && !tz_set(next->timezone))
        log_errx("reload: cannot use time zone %s", next->timezone);
    log_set_level(d->debug ? LOG_LVL_DEBUG : next->log_level);
    station_reconfigure(d->station, next);
    control_reconfigure(d->control, next);
    sync_reconfigure(d->sync, next);
    ui_reconfigure(d->ui, next);
    free(d->cfg);
    d->cfg = next;
    log_notice("configuration reloaded from %s", d->config_path);
    sd_notify(0, "READY=1");
}

/* systemd's watchdog (WatchdogSec= in lockerd.service). The ping is sent from a
 * loop timer, not from a thread of its own, so a callback that hangs the loop also
 * stops the pings and systemd kills and restarts lockerd (Restart=on-failure). */
static void on_watchdog(void *arg)
{
    struct daemon *d = arg;
    sd_notify(0, "WATCHDOG=1");
    /* Timers are one-shot. If re-arming fails the pings stop and systemd restarts
     * lockerd: the right outcome for a loop that can no longer keep time. */
    int r = loop_add_timer(d->loop, d->watchdog_ms, on_watchdog, d);
    if (r < 0)
        log_errx("cannot re-arm the watchdog timer: %s", strerror(-r));
}

/* Pings at half the interval systemd asks for, as sd_watchdog_enabled(3) advises:
 * one late wakeup must not be enough to get lockerd killed. */
static void watchdog_start(struct daemon *d)
{
    uint64_t usec = 0;
    int r = sd_watchdog_enabled(0, &usec);
    if (r < 0)
        log_warnx("ignoring the systemd watchdog settings: %s", strerror(-r));
    if (r <= 0)
        return;
    d->watchdog_ms = (int64_t)(usec / 2000);
    if (d->watchdog_ms < 1)
        d->watchdog_ms = 1;
    log_info("systemd watchdog: %llu ms, pinged every %lld ms", (unsigned long long)(usec / 1000),
             (long long)d->watchdog_ms);
    on_watchdog(d);
}

static void on_terminate(int signo, void *arg)
{
    struct daemon *d = arg;
    log_notice("received %s, shutting down", strsignal(signo));
    sd_notify(0, "STOPPING=1");
    loop_quit(d->loop, 0);
}

int main(int argc, char **argv)
{
    struct daemon d;
    const char *config_path = DEFAULT_CONFIG;
    bool check_only = false, debug = false;
    const char *pin_member = NULL;
    char err[512];
    int opt;

    memset(&d, 0, sizeof(d));
    /* The sync worker and the sandbox probe are this binary in another role
     * (sync.c execs it): nothing of the daemon's start-up runs for them. */
    if (argc == 3 && strcmp(argv[1], "--sync-worker") == 0) {
        char *end;
        long fd = strtol(argv[2], &end, 10);
        if (*end != '\0' || fd < 0 || fd > 1023)
            return 2;
        return syncworker_main((int)fd);
    }
    if (argc >= 2 && strcmp(argv[1], "--sandbox-probe") == 0)
        return syncworker_probe(argc - 2, argv + 2);
    log_init("lockerd", LOG_LVL_INFO);
    while ((opt = getopt(argc, argv, "c:ndVhP:")) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 'n':
            check_only = true;
            break;
        case 'd':
            debug = true;
            d.debug = true;
            break;
        case 'P':
            pin_member = optarg;
            break;
        case 'V':
            printf("lockerd %s\n", LOCKERD_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 1;
    }

    snprintf(d.config_path, sizeof(d.config_path), "%s", config_path);
    d.cfg = xcalloc(1, sizeof(*d.cfg));
    if (!config_load(config_path, d.cfg, err, sizeof(err))) {
        log_errx("%s", err);
        free(d.cfg);
        return 1;
    }
    if (check_only) {
        config_print(d.cfg, stdout);
        free(d.cfg);
        return 0;
    }
    if (pin_member) {
        int r = set_pin(d.cfg, pin_member);
        free(d.cfg);
        return r;
    }
    log_set_level(debug ? LOG_LVL_DEBUG : d.cfg->log_level);
    if (!tz_set(d.cfg->timezone))
        fatalx("unknown time zone %s", d.cfg->timezone);
    clock_sim_enable(d.cfg->sim_clock);
    signal(SIGPIPE, SIG_IGN);

    make_dir(d.cfg->state_dir, 0750);
    make_dir(d.cfg->runtime_dir, 0750);
    uint8_t site_key[64];
    size_t site_key_len = load_site_key(d.cfg->site_key_file, site_key, sizeof(site_key));

    char db_path[PATH_MAX + 16];
    snprintf(db_path, sizeof(db_path), "%s/lockerd.db", d.cfg->state_dir);
    d.store = store_open(db_path, err, sizeof(err));
    if (!d.store)
        fatalx("database %s: %s", db_path, err);

    d.loop = loop_new();
    if (!d.loop)
        fatal("cannot create the event loop");
    if (loop_add_signal(d.loop, SIGTERM, on_terminate, &d) < 0 ||
        loop_add_signal(d.loop, SIGINT, on_terminate, &d) < 0 ||
        loop_add_signal(d.loop, SIGHUP, on_reload, &d) < 0)
        fatalx("cannot watch signals");

    d.station = station_new(d.cfg, d.store, d.loop, site_key, site_key_len, err, sizeof(err));
    OPENSSL_cleanse(site_key, sizeof(site_key));
    if (!d.station)
        fatalx("%s", err);
    d.control = control_new(d.cfg, d.loop, d.station, d.store, err, sizeof(err));
    if (!d.control) {
        station_free(d.station);
        fatalx("%s", err);
    }
    d.sync = sync_new(d.cfg, d.loop, d.store, d.station, err, sizeof(err));
    if (!d.sync) {
        control_free(d.control);
        station_free(d.station);
        fatalx("%s", err);
    }
    control_set_sync(d.control, d.sync);
    d.feedback = feedback_new(d.cfg, d.loop, d.station, err, sizeof(err));
    if (!d.feedback) {
        sync_free(d.sync);
        control_free(d.control);
        station_free(d.station);
        fatalx("%s", err);
    }
    d.ui = ui_new(d.cfg, d.loop, d.store, d.station, err, sizeof(err));
    if (!d.ui) {
        feedback_free(d.feedback);
        sync_free(d.sync);
        control_free(d.control);
        station_free(d.station);
        fatalx("%s", err);
    }
    if (station_start(d.station) != 0) {
        ui_free(d.ui);
        feedback_free(d.feedback);
        sync_free(d.sync);
        control_free(d.control);
        station_free(d.station);
        fatalx("cannot record the start in the database");
    }

    log_notice("station %s ready: %d compartments, gpio %s, reader %s, control %s",
               d.cfg->station_id, d.cfg->n_compartments,
               d.cfg->gpio_backend == GPIO_BACKEND_SIM ? "sim" : "gpiod",
               d.cfg->reader_backend == READER_BACKEND_SIM ? "sim" : "libnfc", d.cfg->socket_path);
    sd_notify(0, "READY=1");
    watchdog_start(&d);

    int status = loop_run(d.loop);
    /* A second Ctrl-C or SIGTERM (a terminal signals the whole process group, and
     * scripts often add their own) must not cut the shutdown short once the loop,
     * which held these signals blocked, is freed. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);

    station_mark_clean_shutdown(d.station);
    ui_free(d.ui);
    feedback_free(d.feedback); /* LED and buzzer off */
    sync_free(d.sync);
    control_free(d.control);
    station_free(d.station); /* every lock line inactive */
    store_close(d.store);
    loop_free(d.loop);
    free(d.cfg);
    log_notice("stopped");
    return status < 0 ? 1 : status;
}
