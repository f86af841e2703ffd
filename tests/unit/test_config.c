/*
 * test_config.c - lockerd.conf parsing, validation and the config_print() round trip.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/config.h"

static char tmpdir[64];

/* Writes text to DIR/name and returns the path (static buffer, valid until the
 * next call). */
static const char *write_file(const char *name, const char *text)
{
    static char path[128];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    return path;
}

static int setup_dir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/lockerd-test-config.XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    /* The default runtime_dir depends on it; tests that need it set it themselves. */
    unsetenv("RUNTIME_DIRECTORY");
    return 0;
}

static int teardown_dir(void **state)
{
    char cmd[PATH_MAX + 16];
    (void)state;
    /* Only files this test wrote are in there. */
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static const char good_conf[] = "; a full station\n"
                                "[station]\n"
                                "id = hall-nord-1\n"
                                "name = Sporthalle Nord, Eingang A\n"
                                "state_dir = state\n"
                                "runtime_dir = /run/lockerd-test\n"
                                "timezone = Europe/Berlin\n"
                                "retention = 30d\n"
                                "log_level = debug\n"
                                "sim_clock = yes\n"
                                "\n"
                                "[reader]\n"
                                "backend = sim\n"
                                "auth = desfire\n"
                                "\n"
                                "[gpio]\n"
                                "backend = sim\n"
                                "chip = gpiochip0\n"
                                "max_energize = 3s\n"
                                "tamper = GPIO4, active-low, pull-up\n"
                                "\n"
                                "[policy]\n"
                                "pickup_window = 10min\n"
                                "late_tolerance = 20m\n"
                                "return_grace = 900\n"
                                "offline_max_age = 48h\n"
                                "door_open_alarm = 90s\n"
                                "\n"
                                "[control]\n"
                                "group = staff\n"
                                "managers = anna, bert\n"
                                "technicians = tech\n"
                                "\n"
                                "# listed out of order on purpose\n"
                                "[compartment.3]\n"
                                "lock = gpiochip0:22\n"
                                "door = GPIO23, pull-down\n"
                                "key = GPIO24, active-low, bias-disabled\n"
                                "key_label = Halle 3\n"
                                "hall = nord-3\n"
                                "\n"
                                "[compartment.1]\n"
                                "lock = GPIO17\n"
                                "door = GPIO27, active-low\n"
                                "key = GPIO5\n"
                                "key_label = Halle 1\n"
                                "hall = nord-1\n";

static void test_good(void **state)
{
    struct config cfg;
    char err[512] = "";
    char expect[PATH_MAX + 32];
    const struct compartment_cfg *c;
    const char *path;

    (void)state;
    path = write_file("good.conf", good_conf);
    assert_true(config_load(path, &cfg, err, sizeof(err)));
    assert_string_equal(err, "");

    assert_string_equal(cfg.path, path);
    assert_string_equal(cfg.station_id, "hall-nord-1");
    assert_string_equal(cfg.station_name, "Sporthalle Nord, Eingang A");
    /* Relative to the config file's directory; derived keys follow the parsed dirs. */
    snprintf(expect, sizeof(expect), "%s/state", tmpdir);
    assert_string_equal(cfg.state_dir, expect);
    snprintf(expect, sizeof(expect), "%s/state/site.key", tmpdir);
    assert_string_equal(cfg.site_key_file, expect);
    assert_string_equal(cfg.runtime_dir, "/run/lockerd-test");
    assert_string_equal(cfg.socket_path, "/run/lockerd-test/control.sock");
    assert_string_equal(cfg.timezone, "Europe/Berlin");
    assert_int_equal(cfg.retention_ms, 30 * 86400000LL);
    assert_int_equal(cfg.log_level, LOG_LVL_DEBUG);
    assert_true(cfg.sim_clock);

    assert_int_equal(cfg.reader_backend, READER_BACKEND_SIM);
    assert_int_equal(cfg.auth, CARD_AUTH_DESFIRE);
    assert_int_equal(cfg.gpio_backend, GPIO_BACKEND_SIM);
    assert_string_equal(cfg.gpio_chip, "gpiochip0");
    assert_int_equal(cfg.max_energize_ms, 3000);
    assert_string_equal(cfg.tamper.name, "GPIO4");
    assert_true(cfg.tamper.active_low);
    assert_int_equal(cfg.tamper.bias, LINE_BIAS_PULL_UP);

    assert_int_equal(cfg.pickup_window_ms, 10 * 60000);
    assert_int_equal(cfg.late_tolerance_ms, 20 * 60000);
    assert_int_equal(cfg.return_grace_ms, 900000);
    assert_int_equal(cfg.offline_max_age_ms, 48 * 3600000LL);
    assert_int_equal(cfg.door_open_alarm_ms, 90000);

    assert_string_equal(cfg.socket_group, "staff");
    assert_int_equal(cfg.n_managers, 2);
    assert_string_equal(cfg.managers[0], "anna");
    assert_string_equal(cfg.managers[1], "bert");
    assert_int_equal(cfg.n_technicians, 1);
    assert_string_equal(cfg.technicians[0], "tech");

    assert_int_equal(cfg.n_compartments, 2);
    assert_int_equal(cfg.compartments[0].number, 1);
    assert_int_equal(cfg.compartments[1].number, 3);
    c = config_compartment(&cfg, 3);
    assert_non_null(c);
    assert_string_equal(c->lock.name, "gpiochip0:22");
    assert_false(c->lock.active_low);
    assert_int_equal(c->lock.bias, LINE_BIAS_AS_IS);
    assert_int_equal(c->door.bias, LINE_BIAS_PULL_DOWN);
    assert_true(c->key.active_low);
    assert_int_equal(c->key.bias, LINE_BIAS_DISABLED);
    assert_string_equal(c->key_label, "Halle 3");
    assert_string_equal(c->hall, "nord-3");
    assert_null(config_compartment(&cfg, 2));
}

static const char minimal_conf[] = "[station]\n"
                                   "id = s1\n"
                                   "[compartment.1]\n"
                                   "lock = GPIO17\n"
                                   "door = GPIO27\n"
                                   "key = GPIO22\n";

static void test_defaults(void **state)
{
    struct config cfg;
    char err[512] = "";
    const char *path;

    (void)state;
    path = write_file("minimal.conf", minimal_conf);
    assert_true(config_load(path, &cfg, err, sizeof(err)));
    assert_string_equal(cfg.state_dir, "/var/lib/lockerd");
    assert_string_equal(cfg.runtime_dir, "/run/lockerd");
    assert_string_equal(cfg.site_key_file, "/var/lib/lockerd/site.key");
    assert_string_equal(cfg.socket_path, "/run/lockerd/control.sock");
    assert_string_equal(cfg.socket_group, "lockerd-admin");
    assert_string_equal(cfg.timezone, "Europe/Berlin");
    assert_int_equal(cfg.retention_ms, 365 * 86400000LL);
    assert_int_equal(cfg.log_level, LOG_LVL_INFO);
    assert_false(cfg.sim_clock);
    assert_int_equal(cfg.reader_backend, READER_BACKEND_SIM);
    assert_int_equal(cfg.auth, CARD_AUTH_DESFIRE);
    assert_int_equal(cfg.gpio_backend, GPIO_BACKEND_SIM);
    assert_int_equal(cfg.max_energize_ms, 5000);
    assert_string_equal(cfg.tamper.name, "");
    assert_int_equal(cfg.pickup_window_ms, 15 * 60000);
    assert_int_equal(cfg.late_tolerance_ms, 30 * 60000);
    assert_int_equal(cfg.return_grace_ms, 15 * 60000);
    assert_int_equal(cfg.offline_max_age_ms, 72 * 3600000LL);
    assert_int_equal(cfg.door_open_alarm_ms, 2 * 60000);
    assert_int_equal(cfg.n_managers, 0);
    assert_int_equal(cfg.n_technicians, 0);

    /* systemd's RuntimeDirectory=, first entry; the socket follows it. */
    setenv("RUNTIME_DIRECTORY", "/run/lockerd-sd:/run/other", 1);
    assert_true(config_load(path, &cfg, err, sizeof(err)));
    unsetenv("RUNTIME_DIRECTORY");
    assert_string_equal(cfg.runtime_dir, "/run/lockerd-sd");
    assert_string_equal(cfg.socket_path, "/run/lockerd-sd/control.sock");
}

/* Loads conf, prints it, loads the print: the two structs must be identical. */
static void round_trip(const char *conf)
{
    struct config *a = calloc(1, sizeof(*a));
    struct config *b = calloc(1, sizeof(*b));
    char err[512] = "";
    char printed[PATH_MAX];
    char *text1 = NULL, *text2 = NULL;
    size_t len1 = 0, len2 = 0;
    FILE *f;

    assert_non_null(a);
    assert_non_null(b);
    assert_true(config_load(write_file("rt-in.conf", conf), a, err, sizeof(err)));

    snprintf(printed, sizeof(printed), "%s/rt-out.conf", tmpdir);
    f = fopen(printed, "w");
    assert_non_null(f);
    config_print(a, f);
    assert_int_equal(fclose(f), 0);

    if (!config_load(printed, b, err, sizeof(err)))
        fail_msg("reading the printed config back: %s", err);
    /* Only the file name differs. */
    memcpy(b->path, a->path, sizeof(a->path));
    assert_memory_equal(a, b, sizeof(*a));

    /* And printing is stable. */
    f = open_memstream(&text1, &len1);
    config_print(a, f);
    fclose(f);
    f = open_memstream(&text2, &len2);
    config_print(b, f);
    fclose(f);
    assert_string_equal(text1, text2);

    free(text1);
    free(text2);
    free(a);
    free(b);
}

static void test_round_trip(void **state)
{
    (void)state;
    round_trip(good_conf);
    round_trip(minimal_conf);
    round_trip("[station]\nid = rt\nsim_clock = 0\n"
               "[reader]\nbackend = libnfc\nconnstring = pn532_uart:/dev/serial0\n"
               "auth = uid-insecure\n"
               "[gpio]\nbackend = gpiod\nmax_energize = 1500ms\n"
               "[control]\nsocket = ctl.sock\ngroup =\n"
               "managers = a b c d e f g h i j k l m n o p\n"
               "[compartment.32]\nlock = x:1\ndoor = x:2\nkey = x:3\n"
               "key_label = Schlüssel 32 ; comment\n");
}

struct bad_case {
    const char *what;
    const char *conf;
    int line; /* 0: "path: msg" */
    const char *msg;
};

#define ST "[station]\nid = s1\n"
#define C1 "[compartment.1]\nlock = GPIO17\ndoor = GPIO27\nkey = GPIO22\n"

static const struct bad_case bad_cases[] = {
    {"unknown key", ST "colour = blue\n" C1, 3, "unknown key 'colour' in [station]"},
    {"unknown key in compartment", ST C1 "hal = x\n", 7, "unknown key 'hal' in [compartment.1]"},
    {"unknown section", ST "[apis]\nurl = x\n" C1, 3, "unknown section [apis]"},
    {"api url not https", ST "[api]\nurl = http://city.example/v1\n" C1, 4,
     "url: expected https://host[:port]/path (no query), got 'http://city.example/v1'"},
    {"api url with a query", ST "[api]\nurl = https://city.example/v1?x=1\n" C1, 4,
     "url: expected https://host[:port]/path (no query), got 'https://city.example/v1?x=1'"},
    {"api poll interval too short", ST "[api]\npoll_interval = 1s\n" C1, 4,
     "poll_interval: must be between 5s and 1d, got '1s'"},
    {"empty unknown section", ST C1 "[screen]\n", 7, "unknown section [screen]"},
    {"compartment 0", ST "[compartment.0]\n", 3,
     "compartment number in [compartment.0] must be 1 to 32"},
    {"compartment 33", ST "[compartment.33]\n", 3,
     "compartment number in [compartment.33] must be 1 to 32"},
    {"duplicate key", ST "name = a\nname = b\n" C1, 4,
     "duplicate key 'name' in [station] (first at line 3)"},
    {"duplicate section", ST C1 "[station]\n", 7, "duplicate section [station] (first at line 1)"},
    {"duplicate line name", ST C1 "[compartment.2]\nlock = GPIO5\ndoor = GPIO27\nkey = GPIO6\n", 9,
     "line 'GPIO27' for [compartment.2] door is already used by [compartment.1] door (line 5)"},
    {"tamper shares a line", ST C1 "[gpio]\ntamper = GPIO22\n", 8,
     "line 'GPIO22' for [gpio] tamper is already used by [compartment.1] key (line 6)"},
    {"missing lock line", ST "[compartment.1]\ndoor = GPIO27\nkey = GPIO22\n", 3,
     "[compartment.1] has no lock line (lock = GPIO...)"},
    {"empty lock line", ST "[compartment.1]\nlock =\ndoor = GPIO27\nkey = GPIO22\n", 4,
     "lock: expected a line name such as GPIO17 or gpiochip0:17"},
    {"bad line option", ST "[compartment.1]\nlock = GPIO17, active-high\n", 4,
     "lock: unknown line option 'active-high' (expected active-low, pull-up, pull-down or "
     "bias-disabled)"},
    {"two biases", ST "[compartment.1]\nlock = GPIO17, pull-up, pull-down\n", 4,
     "lock: more than one bias given"},
    {"bad line name", ST "[compartment.1]\nlock = GPIO 17\n", 4,
     "lock: line name 'GPIO 17' may only contain letters, digits and _ . : -"},
    {"bad duration", ST "[policy]\npickup_window = 15 minutes\n" C1, 4,
     "pickup_window: expected a duration such as 500ms, 30s, 15m, 2h or 7d, got '15 minutes'"},
    {"negative duration", ST "[policy]\nreturn_grace = -5m\n" C1, 4,
     "return_grace: expected a duration such as 500ms, 30s, 15m, 2h or 7d, got '-5m'"},
    {"max_energize too long", ST "[gpio]\nmax_energize = 31s\n" C1, 4,
     "max_energize: must be between 100ms and 30s, got '31s'"},
    {"max_energize too short", ST "[gpio]\nmax_energize = 50ms\n" C1, 4,
     "max_energize: must be between 100ms and 30s, got '50ms'"},
    {"bad bool", ST "sim_clock = maybe\n" C1, 3,
     "sim_clock: expected yes, no, true, false, 1 or 0, got 'maybe'"},
    {"bad log level", ST "log_level = verbose\n" C1, 3,
     "log_level: expected err, warning, notice, info or debug, got 'verbose'"},
    {"bad backend", ST "[reader]\nbackend = pcsc\n" C1, 4,
     "backend: expected sim or libnfc, got 'pcsc'"},
    {"bad auth", ST "[reader]\nauth = mifare-classic\n" C1, 4,
     "auth: expected desfire or uid-insecure, got 'mifare-classic'"},
    {"unknown zone", ST "timezone = Europe/Atlantis\n" C1, 3,
     "timezone: unknown time zone 'Europe/Atlantis' (expected a name under /usr/share/zoneinfo "
     "such as Europe/Berlin)"},
    {"zone escaping zoneinfo", ST "timezone = ../../../etc/passwd\n" C1, 3,
     "timezone: unknown time zone '../../../etc/passwd' (expected a name under "
     "/usr/share/zoneinfo such as Europe/Berlin)"},
    {"zone table is not a zone", ST "timezone = zone.tab\n" C1, 3,
     "timezone: unknown time zone 'zone.tab' (expected a name under /usr/share/zoneinfo such as "
     "Europe/Berlin)"},
    {"sim_clock with gpiod", ST "sim_clock = yes\n[gpio]\nbackend = gpiod\n" C1, 3,
     "sim_clock = yes requires [gpio] backend = sim"},
    {"libnfc without connstring", ST "[reader]\nbackend = libnfc\n" C1, 4,
     "[reader] backend = libnfc requires connstring (e.g. pn532_uart:/dev/serial0)"},
    {"missing id", "[station]\nname = x\n" C1, 0, "missing required key [station] id"},
    {"no compartments", ST, 0, "no [compartment.N] section: at least one compartment is required"},
    {"empty file", "", 0, "missing required key [station] id"},
    {"bad id", "[station]\nid = hall nord\n" C1, 2,
     "id: expected letters, digits and _ . : - only, got 'hall nord'"},
    {"key before any section", "id = s1\n" ST C1, 1, "key 'id' outside any section"},
    {"syntax error", ST "just some words\n" C1, 3,
     "syntax error: expected [section], key = value or a comment"},
    {"syntax error before a later error", ST "words\ncolour = x\n" C1, 3,
     "syntax error: expected [section], key = value or a comment"},
    {"indented continuation", ST "name = Halle\n  Nord\n" C1, 4,
     "syntax error: expected [section], key = value or a comment"},
    {"malformed header", ST "[gpio\n" C1, 3, "malformed section header (missing ']')"},
    {"bad user", ST "[control]\nmanagers = anna -rf\n" C1, 4,
     "managers: '-rf' is not a valid user name"},
    {"user twice", ST "[control]\ntechnicians = tom,tom\n" C1, 4,
     "technicians: user 'tom' listed twice"},
    {"too many users", ST "[control]\nmanagers = a b c d e f g h i j k l m n o p q\n" C1, 4,
     "managers: too many users (at most 16)"},
    {"empty path", ST "state_dir =\n" C1, 3, "state_dir: expected a path"},
};

static void test_errors(void **state)
{
    struct config cfg;
    char err[512], expect[1024], name[32];
    const char *path;

    (void)state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const struct bad_case *bc = &bad_cases[i];
        snprintf(name, sizeof(name), "bad%zu.conf", i);
        path = write_file(name, bc->conf);
        err[0] = '\0';
        if (config_load(path, &cfg, err, sizeof(err)))
            fail_msg("%s: accepted", bc->what);
        if (bc->line > 0)
            snprintf(expect, sizeof(expect), "%s:%d: %s", path, bc->line, bc->msg);
        else
            snprintf(expect, sizeof(expect), "%s: %s", path, bc->msg);
        if (strcmp(err, expect) != 0)
            fail_msg("%s:\n  got      %s\n  expected %s", bc->what, err, expect);
    }
}

static void test_long_line(void **state)
{
    char conf[1024], err[512], expect[PATH_MAX + 64];
    struct config cfg;
    const char *path;
    char longname[301];

    (void)state;
    memset(longname, 'x', 300);
    longname[300] = '\0';
    snprintf(conf, sizeof(conf), ST "name = %s\n" C1, longname);
    path = write_file("long.conf", conf);
    assert_false(config_load(path, &cfg, err, sizeof(err)));
    /* Refused, not split into two lines by inih. */
    snprintf(expect, sizeof(expect), "%s:3: line too long", path);
    assert_memory_equal(err, expect, strlen(expect));
}

static void test_missing_file(void **state)
{
    struct config cfg;
    char err[512], expect[PATH_MAX + 64];
    char path[PATH_MAX];

    (void)state;
    snprintf(path, sizeof(path), "%s/nonexistent.conf", tmpdir);
    assert_false(config_load(path, &cfg, err, sizeof(err)));
    snprintf(expect, sizeof(expect), "%s: cannot open: No such file or directory", path);
    assert_string_equal(err, expect);
}

static void test_uid_insecure(void **state)
{
    struct config cfg;
    char err[512] = "";
    char logbuf[2048];
    const char *path;
    FILE *capture;
    int saved;
    size_t n;

    (void)state;
    path = write_file("uid.conf", ST "[reader]\nauth = uid-insecure\n" C1);

    /* Catch what log.c writes to stderr. */
    capture = tmpfile();
    assert_non_null(capture);
    fflush(stderr);
    saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fileno(capture), STDERR_FILENO) >= 0);
    bool ok = config_load(path, &cfg, err, sizeof(err));
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);

    assert_true(ok);
    assert_string_equal(err, "");
    assert_int_equal(cfg.auth, CARD_AUTH_UID_INSECURE);

    rewind(capture);
    n = fread(logbuf, 1, sizeof(logbuf) - 1, capture);
    logbuf[n] = '\0';
    fclose(capture);
    assert_non_null(strstr(logbuf, "uid-insecure"));
    assert_non_null(strstr(logbuf, "cloned"));
}

static void test_line_format(void **state)
{
    struct line_cfg l;
    char buf[128];

    (void)state;
    memset(&l, 0, sizeof(l));
    strcpy(l.name, "GPIO27");
    config_line_format(&l, buf, sizeof(buf));
    assert_string_equal(buf, "GPIO27");
    l.active_low = true;
    l.bias = LINE_BIAS_PULL_UP;
    config_line_format(&l, buf, sizeof(buf));
    assert_string_equal(buf, "GPIO27, active-low, pull-up");
    l.active_low = false;
    l.bias = LINE_BIAS_DISABLED;
    config_line_format(&l, buf, sizeof(buf));
    assert_string_equal(buf, "GPIO27, bias-disabled");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),         cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_round_trip),   cmocka_unit_test(test_errors),
        cmocka_unit_test(test_long_line),    cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_uid_insecure), cmocka_unit_test(test_line_format),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
