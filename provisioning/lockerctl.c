/*
 * lockerctl - the technician's and manager's command line for lockerd.
 *
 * Talks to lockerd over its control socket (one JSON request line, one JSON reply
 * line). Commands are a table; `lockerctl --help` is generated from it.
 *
 * Exit status: 0 success; 1 lockerd refused or the command failed (the reason is
 * printed); 2 usage error; 3 lockerd cannot be reached; 4 `events --verify` found
 * the hash chain broken.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include <jansson.h>

#include "daemon/log.h"
#include "daemon/timeutil.h"
#include "provisioning/provision.h"

#define EXIT_REFUSED     1
#define EXIT_USAGE       2
#define EXIT_UNREACHABLE 3
#define EXIT_VERIFY      4
#define DEFAULT_SOCKET   "/run/lockerd/control.sock"

struct ctl {
    const char *socket_path;
    bool json;
    int fd;
    FILE *in;
    bool unreachable; /* said so once already */
};

struct cmd {
    const char *group; /* first word */
    const char *name;  /* second word, or NULL for one-word commands */
    const char *usage;
    const char *help;
    int (*fn)(struct ctl *ctl, int argc, char **argv);
};

static const struct cmd commands[];

/* ------------------------------------------------------------ transport */

static int ctl_connect(struct ctl *ctl)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(ctl->socket_path) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "lockerctl: socket path too long\n");
        return -1;
    }
    strcpy(addr.sun_path, ctl->socket_path);
    ctl->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ctl->fd < 0 || connect(ctl->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        fprintf(stderr, "lockerctl: cannot reach lockerd at %s: %s\n", ctl->socket_path,
                strerror(errno));
        if (errno == EACCES)
            fprintf(stderr, "lockerctl: are you in the group lockerd-admin?\n");
        return -1;
    }
    ctl->in = fdopen(ctl->fd, "r");
    return ctl->in ? 0 : -1;
}

/* Sends one request; returns the reply object (new reference) or NULL. */
static json_t *ctl_request(struct ctl *ctl, const char *cmd, json_t *args)
{
    if (!ctl->in && (ctl->unreachable || ctl_connect(ctl) < 0)) {
        ctl->unreachable = true;
        json_decref(args);
        return NULL;
    }
    json_t *req = json_pack("{s:s,s:o}", "cmd", cmd, "args", args ? args : json_object());
    char *line = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    size_t len = strlen(line);
    line[len] = '\n'; /* json_dumps leaves room: replace the NUL, send len + 1 */
    ssize_t n = send(ctl->fd, line, len + 1, MSG_NOSIGNAL);
    free(line);
    if (n != (ssize_t)(len + 1)) {
        fprintf(stderr, "lockerctl: lost the connection to lockerd\n");
        return NULL;
    }
    return NULL == ctl->in ? NULL : json_loadf(ctl->in, JSON_DISABLE_EOF_CHECK, NULL);
}

/* Prints an error reply. Returns the exit status for it. */
static int print_error(json_t *reply)
{
    json_t *e = json_object_get(reply, "error");
    fprintf(stderr, "lockerctl: %s (%s)\n", json_string_value(json_object_get(e, "message")),
            json_string_value(json_object_get(e, "code")));
    return EXIT_REFUSED;
}

/* Runs a request; on success stores the result (borrowed from *reply). */
static int call(struct ctl *ctl, const char *cmd, json_t *args, json_t **reply, json_t **result)
{
    *reply = ctl_request(ctl, cmd, args);
    if (!*reply)
        return EXIT_UNREACHABLE;
    if (!json_is_true(json_object_get(*reply, "ok"))) {
        int rc = print_error(*reply);
        if (ctl->json) {
            json_dumpf(*reply, stdout, JSON_INDENT(2));
            putchar('\n');
        }
        return rc;
    }
    *result = json_object_get(*reply, "result");
    return 0;
}

static void print_json(json_t *v)
{
    json_dumpf(v, stdout, JSON_INDENT(2));
    putchar('\n');
}

/* People read times in the station's zone, whatever the zone of the shell that
 * runs lockerctl. */
static void use_station_timezone(struct ctl *ctl)
{
    if (ctl->json)
        return;
    json_t *reply = ctl_request(ctl, "status", NULL);
    const char *zone = json_string_value(
        json_object_get(json_object_get(json_object_get(reply, "result"), "station"), "timezone"));
    if (zone)
        tz_set(zone);
    json_decref(reply);
}

/* Generic command: request, then print the result as JSON or with fmt. */
static int simple(struct ctl *ctl, const char *cmd, json_t *args, void (*fmt)(json_t *result))
{
    json_t *reply, *result;
    int rc = call(ctl, cmd, args, &reply, &result);
    if (rc == 0) {
        if (ctl->json || !fmt)
            print_json(result);
        else
            fmt(result);
    }
    json_decref(reply);
    return rc;
}

static void print_id(json_t *r)
{
    printf("%s\n", json_string_value(json_object_get(r, "id")));
}

/* ------------------------------------------------------------ argument parsing */

static __attribute__((format(printf, 1, 2))) int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "lockerctl: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nlockerctl: see 'lockerctl --help'\n");
    return EXIT_USAGE;
}

/* Finds "--name VALUE" in argv; NULL if absent. *bad is set for "--name" without a
 * value. */
static const char *opt_value(int argc, char **argv, const char *name, bool *bad)
{
    const char *found = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], name) == 0) {
            if (i + 1 >= argc) {
                *bad = true;
                return NULL;
            }
            found = argv[++i];
        }
    }
    return found;
}

static bool opt_flag(int argc, char **argv, const char *name)
{
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], name) == 0)
            return true;
    }
    return false;
}

/* Positional words (not options and not option values). known lists the options
 * that take a value. Returns the count, or -1 for an unknown option (named in *bad). */
static int positionals(int argc, char **argv, const char *const *valued, const char *const *flags,
                       char **out, int max, const char **bad)
{
    int n = 0;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) == 0) {
            bool ok = false;
            for (int j = 0; valued && valued[j]; j++) {
                if (strcmp(argv[i], valued[j]) == 0) {
                    /* Skip the value; stop comparing, argv[i] is no option now (and
                     * past the end for a trailing option without its value). */
                    ok = true;
                    i++;
                    break;
                }
            }
            for (int j = 0; flags && flags[j]; j++)
                ok = ok || strcmp(argv[i], flags[j]) == 0;
            if (!ok) {
                *bad = argv[i];
                return -1;
            }
            continue;
        }
        if (n == max) {
            *bad = argv[i];
            return -2;
        }
        out[n++] = argv[i];
    }
    return n;
}

static bool parse_int(const char *s, long min, long max, long *out)
{
    char *end;
    if (!s)
        return false;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* Checks argv against the command's options; fills pos with exactly npos words. */
static int expect(int argc, char **argv, const char *const *valued, const char *const *flags,
                  char **pos, int npos)
{
    const char *bad = NULL;
    int n = positionals(argc, argv, valued, flags, pos, npos, &bad);
    if (n == -1)
        return usage_error("unknown option %s", bad);
    if (n == -2)
        return usage_error("unexpected argument '%s'", bad);
    if (n != npos)
        return usage_error("%s", npos == 1 ? "missing argument" : "missing arguments");
    bool missing = false;
    for (int j = 0; valued && valued[j]; j++)
        opt_value(argc, argv, valued[j], &missing);
    if (missing)
        return usage_error("%s", "an option is missing its value");
    return 0;
}

/* ------------------------------------------------------------ status */

static void print_status(json_t *r)
{
    json_t *st = json_object_get(r, "station");
    printf("station %s (%s)  %s  clock %s  gpio %s  reader %s\n",
           json_string_value(json_object_get(st, "id")),
           json_string_value(json_object_get(st, "name")),
           json_string_value(json_object_get(st, "time")),
           json_is_true(json_object_get(st, "clockSynced")) ? "synced" : "NOT synced",
           json_string_value(json_object_get(st, "gpio")),
           json_string_value(json_object_get(st, "reader")));
    json_t *warning = json_object_get(st, "warning");
    if (warning)
        printf("WARNING: %s\n", json_string_value(warning));
    printf("\n  #  %-15s %-7s %-4s %-10s %s\n", "state", "door", "key", "lock", "holder");
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(r, "compartments"), i, c)
    {
        json_t *h = json_object_get(c, "holder");
        char holder[200] = "";
        if (h)
            snprintf(holder, sizeof(holder), "%s (%s) since %s",
                     json_string_value(json_object_get(h, "member")),
                     json_string_value(json_object_get(h, "club")),
                     json_string_value(json_object_get(c, "since")));
        printf("%3lld  %-15s %-7s %-4s %-10s %s\n",
               (long long)json_integer_value(json_object_get(c, "number")),
               json_string_value(json_object_get(c, "state")),
               json_string_value(json_object_get(c, "door")),
               json_string_value(json_object_get(c, "key")),
               json_string_value(json_object_get(c, "lock")), holder);
    }
    json_t *alarms = json_object_get(r, "alarms");
    printf("\nalarms: %s", json_array_size(alarms) ? "" : "none");
    json_array_foreach(alarms, i, c)
    {
        json_t *n = json_object_get(c, "compartment");
        if (n)
            printf("%s%s (compartment %lld)", i ? ", " : "",
                   json_string_value(json_object_get(c, "type")), (long long)json_integer_value(n));
        else
            printf("%s%s", i ? ", " : "", json_string_value(json_object_get(c, "type")));
    }
    json_t *sync = json_object_get(r, "sync");
    printf("\nsync: %s, outbox %lld\n", json_string_value(json_object_get(sync, "mode")),
           (long long)json_integer_value(json_object_get(sync, "outboxDepth")));
}

static int cmd_status(struct ctl *ctl, int argc, char **argv)
{
    int rc = expect(argc, argv, NULL, NULL, NULL, 0);
    return rc ? rc : simple(ctl, "status", NULL, print_status);
}

/* ------------------------------------------------------------ events */

static void print_event(json_t *e)
{
    char when[40] = "?";
    int64_t ms;
    const char *at = json_string_value(json_object_get(e, "occurredAt"));
    if (at && time_parse_iso(at, &ms))
        time_format_local(ms, when, sizeof(when));
    printf("%6lld  %s  %-22s", (long long)json_integer_value(json_object_get(e, "seq")), when,
           json_string_value(json_object_get(e, "type")));
    static const char *const fields[] = {"compartment", "member", "club",    "booking",
                                         "credential",  "reason", "operator"};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        json_t *v = json_object_get(e, fields[i]);
        if (json_is_integer(v))
            printf(" %s=%lld", fields[i], (long long)json_integer_value(v));
        else if (json_is_string(v))
            printf(" %s=%s", fields[i], json_string_value(v));
    }
    if (!json_is_true(json_object_get(json_object_get(e, "clock"), "synced")))
        printf(" (clock not synced)");
    putchar('\n');
}

static int events_verify(struct ctl *ctl)
{
    json_t *reply, *r;
    int rc = call(ctl, "events", json_pack("{s:b}", "verify", 1), &reply, &r);
    if (rc)
        return rc;
    bool intact = json_is_true(json_object_get(r, "intact"));
    if (ctl->json)
        print_json(r);
    else if (intact && json_integer_value(json_object_get(r, "erased")) > 0)
        printf("event log intact: %lld events, last seq %lld; %lld with erased member ids\n",
               (long long)json_integer_value(json_object_get(r, "events")),
               (long long)json_integer_value(json_object_get(r, "lastSeq")),
               (long long)json_integer_value(json_object_get(r, "erased")));
    else if (intact)
        printf("event log intact: %lld events, last seq %lld\n",
               (long long)json_integer_value(json_object_get(r, "events")),
               (long long)json_integer_value(json_object_get(r, "lastSeq")));
    else
        printf("event log BROKEN at seq %lld: %s\n",
               (long long)json_integer_value(json_object_get(r, "firstBadSeq")),
               json_string_value(json_object_get(r, "reason")));
    json_decref(reply);
    return intact ? 0 : EXIT_VERIFY;
}

static int cmd_events(struct ctl *ctl, int argc, char **argv)
{
    static const char *const valued[] = {"--since", NULL};
    static const char *const flags[] = {"--follow", "--verify", NULL};
    int rc = expect(argc, argv, valued, flags, NULL, 0);
    if (rc)
        return rc;
    if (opt_flag(argc, argv, "--verify"))
        return events_verify(ctl);

    bool bad = false, follow = opt_flag(argc, argv, "--follow");
    long since = 0;
    const char *s = opt_value(argc, argv, "--since", &bad);
    if (s && !parse_int(s, 0, 0x7fffffffL, &since))
        return usage_error("--since takes a sequence number, not '%s'", s);

    use_station_timezone(ctl);
    /* Page through the log; the daemon answers at most 1000 events at a time. */
    json_t *all = ctl->json && !follow ? json_array() : NULL;
    for (;;) {
        json_t *reply, *r;
        bool more;
        rc = call(ctl, "events", json_pack("{s:I}", "since", (json_int_t)since), &reply, &r);
        if (rc) {
            json_decref(all);
            return rc;
        }
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(r, "events"), i, e)
        {
            if (all)
                json_array_append(all, e);
            else if (ctl->json) {
                json_dumpf(e, stdout, JSON_COMPACT);
                putchar('\n');
            } else
                print_event(e);
            since = (long)json_integer_value(json_object_get(e, "seq"));
        }
        more = json_is_true(json_object_get(r, "more"));
        json_decref(reply);
        if (!more)
            break;
    }
    if (all) {
        print_json(all);
        json_decref(all);
    }
    if (!follow)
        return 0;

    json_t *reply, *r;
    rc = call(ctl, "events", json_pack("{s:I,s:b}", "since", (json_int_t)since, "follow", 1),
              &reply, &r);
    if (rc)
        return rc;
    json_decref(reply);
    fflush(stdout);
    json_t *line;
    while ((line = json_loadf(ctl->in, JSON_DISABLE_EOF_CHECK, NULL))) {
        json_t *e = json_object_get(line, "event");
        if (e && ctl->json) {
            json_dumpf(e, stdout, JSON_COMPACT);
            putchar('\n');
        } else if (e)
            print_event(e);
        json_decref(line);
        fflush(stdout);
    }
    fprintf(stderr, "lockerctl: lockerd closed the connection\n");
    return EXIT_UNREACHABLE;
}

/* ------------------------------------------------------------ bookings */

static int cmd_booking_add(struct ctl *ctl, int argc, char **argv)
{
    static const char *const valued[] = {"--club", "--compartment", "--from", "--to", NULL};
    int rc = expect(argc, argv, valued, NULL, NULL, 0);
    if (rc)
        return rc;
    bool bad = false;
    const char *club = opt_value(argc, argv, "--club", &bad);
    const char *comp = opt_value(argc, argv, "--compartment", &bad);
    const char *from = opt_value(argc, argv, "--from", &bad);
    const char *to = opt_value(argc, argv, "--to", &bad);
    long n;
    if (!club || !comp || !from || !to)
        return usage_error("%s", "booking add needs --club, --compartment, --from and --to");
    if (!parse_int(comp, 1, 1000, &n))
        return usage_error("--compartment takes a number, not '%s'", comp);
    return simple(
        ctl, "booking.add",
        json_pack("{s:s,s:i,s:s,s:s}", "club", club, "compartment", (int)n, "from", from, "to", to),
        print_id);
}

static void print_bookings(json_t *r)
{
    size_t i;
    json_t *b;
    json_t *list = json_object_get(r, "bookings");
    if (json_array_size(list) == 0) {
        printf("no bookings\n");
        return;
    }
    printf("%-12s %-14s %2s  %-25s %-25s %-9s %s\n", "id", "club", "#", "from", "to", "status",
           "source");
    json_array_foreach(list, i, b)
    {
        char from[40], to[40];
        time_format_local(json_integer_value(json_object_get(b, "start")), from, sizeof(from));
        time_format_local(json_integer_value(json_object_get(b, "end")), to, sizeof(to));
        printf("%-12s %-14s %2lld  %-25s %-25s %-9s %s%s\n",
               json_string_value(json_object_get(b, "id")),
               json_string_value(json_object_get(b, "club")),
               (long long)json_integer_value(json_object_get(b, "compartment")), from, to,
               json_string_value(json_object_get(b, "status")),
               json_string_value(json_object_get(b, "source")),
               json_integer_value(json_object_get(b, "collected")) ? " (collected)" : "");
    }
}

static int cmd_booking_list(struct ctl *ctl, int argc, char **argv)
{
    static const char *const flags[] = {"--all", NULL};
    int rc = expect(argc, argv, NULL, flags, NULL, 0);
    if (rc == 0)
        use_station_timezone(ctl);
    return rc ? rc
              : simple(ctl, "booking.list",
                       json_pack("{s:b}", "all", opt_flag(argc, argv, "--all")), print_bookings);
}

static int cmd_booking_cancel(struct ctl *ctl, int argc, char **argv)
{
    char *pos[1] = {NULL};
    int rc = expect(argc, argv, NULL, NULL, pos, 1);
    return rc ? rc : simple(ctl, "booking.cancel", json_pack("{s:s}", "id", pos[0]), print_id);
}

/* ------------------------------------------------------------ clubs, members, cards */

static int cmd_club_add(struct ctl *ctl, int argc, char **argv)
{
    char *pos[2] = {NULL, NULL};
    int rc = expect(argc, argv, NULL, NULL, pos, 2);
    return rc ? rc
              : simple(ctl, "club.add", json_pack("{s:s,s:s}", "id", pos[0], "name", pos[1]),
                       print_id);
}

static json_t *club_list(int argc, char **argv)
{
    json_t *clubs = json_array();
    for (int i = 0; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--club") == 0)
            json_array_append_new(clubs, json_string(argv[++i]));
    }
    return clubs;
}

static int cmd_member_add(struct ctl *ctl, int argc, char **argv)
{
    static const char *const valued[] = {"--club", "--name", "--role", NULL};
    int rc = expect(argc, argv, valued, NULL, NULL, 0);
    if (rc)
        return rc;
    bool bad = false;
    const char *name = opt_value(argc, argv, "--name", &bad);
    const char *role = opt_value(argc, argv, "--role", &bad);
    json_t *clubs = club_list(argc, argv);
    if (!name || json_array_size(clubs) == 0) {
        json_decref(clubs);
        return usage_error("%s", "member add needs --club CLUB (repeatable) and --name NAME");
    }
    json_t *args = json_pack("{s:s,s:o}", "name", name, "clubs", clubs);
    if (role)
        json_object_set_new(args, "role", json_string(role));
    return simple(ctl, "member.add", args, print_id);
}

static int cmd_member_join(struct ctl *ctl, int argc, char **argv)
{
    static const char *const valued[] = {"--club", NULL};
    char *pos[1] = {NULL};
    int rc = expect(argc, argv, valued, NULL, pos, 1);
    if (rc)
        return rc;
    json_t *clubs = club_list(argc, argv);
    if (json_array_size(clubs) == 0) {
        json_decref(clubs);
        return usage_error("%s", "member join needs --club CLUB");
    }
    return simple(ctl, "member.join", json_pack("{s:s,s:o}", "member", pos[0], "clubs", clubs),
                  print_id);
}

static int cmd_member_export(struct ctl *ctl, int argc, char **argv)
{
    char *pos[1] = {NULL};
    int rc = expect(argc, argv, NULL, NULL, pos, 1);
    /* The export is JSON for people too: it is meant to be handed over as it is. */
    return rc ? rc : simple(ctl, "member.export", json_pack("{s:s}", "member", pos[0]), NULL);
}

/* The terminal's settings while echo is off, for a signal to put back. */
static struct termios echo_tty;
static const int echo_signals[] = {SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGTSTP};

static void echo_back(int sig)
{
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &echo_tty); /* async-signal-safe */
    signal(sig, SIG_DFL);
    raise(sig);
}

/* One line of standard input into buf, without its newline; on a terminal after a
 * prompt and without echo (back on also when Ctrl-C or Ctrl-Z ends the wait).
 * False at end of input. */
static bool read_secret(const char *prompt, char *buf, size_t len)
{
    struct termios quiet;
    struct sigaction sa = {.sa_handler = echo_back}, old[5];
    bool tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &echo_tty) == 0;
    if (tty) {
        fprintf(stderr, "%s", prompt);
        for (int i = 0; i < 5; i++)
            sigaction(echo_signals[i], &sa, &old[i]);
        quiet = echo_tty;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    }
    bool ok = fgets(buf, (int)len, stdin) != NULL;
    if (tty) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &echo_tty);
        for (int i = 0; i < 5; i++)
            sigaction(echo_signals[i], &old[i], NULL);
        fputc('\n', stderr);
    }
    if (ok)
        buf[strcspn(buf, "\r\n")] = '\0';
    return ok;
}

static void print_pin(json_t *r)
{
    const char *id = json_string_value(json_object_get(r, "id"));
    const char *what = json_string_value(json_object_get(r, "pin"));
    if (what == NULL)
        what = "?";
    if (strcmp(what, "none") == 0)
        printf("%s had no PIN; nothing changed\n", id);
    else
        printf("PIN of %s %s\n", id, what);
}

/* The PIN is read from standard input (on a terminal twice, without echo), never
 * from the command line, where every user could see it in the process list. */
static int cmd_member_pin(struct ctl *ctl, int argc, char **argv)
{
    static const char *const flags[] = {"--remove", NULL};
    char *pos[1] = {NULL};
    int rc = expect(argc, argv, NULL, flags, pos, 1);
    if (rc)
        return rc;
    char pin[64] = "", again[64] = "";
    bool remove = opt_flag(argc, argv, "--remove");
    if (!remove) {
        if (!read_secret("PIN (4 to 8 digits): ", pin, sizeof pin) || pin[0] == '\0')
            return usage_error("%s", "no PIN on standard input (--remove removes it)");
        if (isatty(STDIN_FILENO) && (!read_secret("the same PIN again: ", again, sizeof again) ||
                                     strcmp(pin, again) != 0)) {
            explicit_bzero(pin, sizeof pin);
            explicit_bzero(again, sizeof again);
            return usage_error("%s", "the two PINs differ; nothing changed");
        }
    }
    rc = simple(ctl, "member.pin", json_pack("{s:s,s:s}", "member", pos[0], "pin", pin), print_pin);
    explicit_bzero(pin, sizeof pin);
    explicit_bzero(again, sizeof again);
    return rc;
}

static void print_erased(json_t *r)
{
    printf("member %s erased: %lld cards and %lld club memberships deleted, member and card "
           "ids replaced in %lld events\n",
           json_string_value(json_object_get(r, "id")),
           (long long)json_integer_value(json_object_get(r, "cards")),
           (long long)json_integer_value(json_object_get(r, "clubs")),
           (long long)json_integer_value(json_object_get(r, "events")));
}

static int cmd_member_erase(struct ctl *ctl, int argc, char **argv)
{
    static const char *const valued[] = {"--reason", NULL};
    char *pos[1] = {NULL};
    int rc = expect(argc, argv, valued, NULL, pos, 1);
    if (rc)
        return rc;
    bool bad = false;
    const char *reason = opt_value(argc, argv, "--reason", &bad);
    if (!reason)
        return usage_error("%s", "member erase needs --reason TEXT (it is logged)");
    return simple(ctl, "member.erase", json_pack("{s:s,s:s}", "member", pos[0], "reason", reason),
                  print_erased);
}

static void print_card(json_t *r)
{
    printf("%s\n", json_string_value(json_object_get(r, "id")));
    json_t *w = json_object_get(r, "warning");
    if (w)
        fprintf(stderr, "lockerctl: warning: %s\n", json_string_value(w));
}

static int cmd_card_add(struct ctl *ctl, int argc, char **argv)
{
    static const char *const valued[] = {"--uid", "--card", NULL};
    char *pos[1] = {NULL};
    int rc = expect(argc, argv, valued, NULL, pos, 1);
    if (rc)
        return rc;
    bool bad = false;
    const char *uid = opt_value(argc, argv, "--uid", &bad);
    const char *card = opt_value(argc, argv, "--card", &bad);
    if (!uid)
        return usage_error("%s", "card add needs --uid HEX");
    json_t *args = json_pack("{s:s,s:s}", "member", pos[0], "uid", uid);
    if (card)
        json_object_set_new(args, "card", json_string(card));
    return simple(ctl, "card.add", args, print_card);
}

/* card enroll and card issue: both wait (up to --timeout) for the next card tapped. */
static int wait_for_card(struct ctl *ctl, const char *cmd, const char *prompt, int argc,
                         char **argv)
{
    static const char *const valued[] = {"--timeout", NULL};
    char *pos[1] = {NULL};
    int rc = expect(argc, argv, valued, NULL, pos, 1);
    if (rc)
        return rc;
    bool bad = false;
    long secs = 60;
    const char *t = opt_value(argc, argv, "--timeout", &bad);
    if (t && !parse_int(t, 1, 600, &secs))
        return usage_error("--timeout takes 1 to 600 seconds, not '%s'", t);
    if (!ctl->json)
        fprintf(stderr, "lockerctl: %s (%ld s)...\n", prompt, secs);
    return simple(ctl, cmd,
                  json_pack("{s:s,s:I}", "member", pos[0], "timeoutMs", (json_int_t)secs * 1000),
                  print_card);
}

static int cmd_card_enroll(struct ctl *ctl, int argc, char **argv)
{
    return wait_for_card(ctl, "card.enroll", "tap the new card on the station's reader", argc,
                         argv);
}

static int cmd_card_issue(struct ctl *ctl, int argc, char **argv)
{
    return wait_for_card(ctl, "card.issue",
                         "hold a factory-new DESFire card on the station's reader until this "
                         "says done",
                         argc, argv);
}

static int cmd_card_revoke(struct ctl *ctl, int argc, char **argv)
{
    char *pos[1] = {NULL};
    int rc = expect(argc, argv, NULL, NULL, pos, 1);
    return rc ? rc : simple(ctl, "card.revoke", json_pack("{s:s}", "id", pos[0]), print_id);
}

/* ------------------------------------------------------------ service */

static void print_compartment_done(json_t *r)
{
    printf("compartment %lld: done\n",
           (long long)json_integer_value(json_object_get(r, "compartment")));
}

static int compartment_reason(struct ctl *ctl, const char *cmd, int argc, char **argv)
{
    static const char *const valued[] = {"--reason", NULL};
    char *pos[1] = {NULL};
    long n;
    bool bad = false;
    int rc = expect(argc, argv, valued, NULL, pos, 1);
    if (rc)
        return rc;
    const char *reason = opt_value(argc, argv, "--reason", &bad);
    if (!reason)
        return usage_error("%s needs --reason TEXT (it is logged)", cmd);
    if (!parse_int(pos[0], 1, 1000, &n))
        return usage_error("compartment must be a number, not '%s'", pos[0]);
    return simple(ctl, cmd, json_pack("{s:i,s:s}", "compartment", (int)n, "reason", reason),
                  print_compartment_done);
}

static int cmd_open(struct ctl *ctl, int argc, char **argv)
{
    return compartment_reason(ctl, "open", argc, argv);
}

static int cmd_clear(struct ctl *ctl, int argc, char **argv)
{
    return compartment_reason(ctl, "clear", argc, argv);
}

static int cmd_disable(struct ctl *ctl, int argc, char **argv)
{
    return compartment_reason(ctl, "disable", argc, argv);
}

static void print_pruned(json_t *r)
{
    printf("pruned %lld events\n", (long long)json_integer_value(json_object_get(r, "pruned")));
}

static int cmd_prune(struct ctl *ctl, int argc, char **argv)
{
    int rc = expect(argc, argv, NULL, NULL, NULL, 0);
    return rc ? rc : simple(ctl, "prune", NULL, print_pruned);
}

/* ------------------------------------------------------------ report */

static long long jint(json_t *o, const char *key)
{
    return (long long)json_integer_value(json_object_get(o, key));
}

/* A delay for people: "-" (no pickups), "40s", "12m", "1h05m". */
static void fmt_delay(json_t *v, char *buf, size_t len)
{
    if (!json_is_integer(v)) {
        snprintf(buf, len, "-");
        return;
    }
    long long s = (long long)(json_integer_value(v) + 500) / 1000;
    long long min = (s + 30) / 60; /* rounded to the minute */
    if (s < 60)
        snprintf(buf, len, "%llds", s);
    else if (min < 60)
        snprintf(buf, len, "%lldm", min);
    else
        snprintf(buf, len, "%lldh%02lldm", min / 60, min % 60);
}

static void print_metrics(json_t *m)
{
    char med[48], worst[48];
    fmt_delay(json_object_get(m, "medianDelayMs"), med, sizeof(med));
    fmt_delay(json_object_get(m, "worstDelayMs"), worst, sizeof(worst));
    printf(" %6lld %5lld %7lld %4lld %4lld %7s %7s %5lld %7lld %9.1f %9.1f\n", jint(m, "booked"),
           jint(m, "collected"), jint(m, "noShows"), jint(m, "pending"), jint(m, "cancelled"), med,
           worst, jint(m, "lateReturns"), jint(m, "overdue"), jint(m, "bookedMs") / 3600000.0,
           jint(m, "keyOutMs") / 3600000.0);
}

static const char *str_or(json_t *o, const char *key, const char *dflt)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : dflt;
}

static void print_report(json_t *r)
{
    static const char head[] = " booked  used no-show open  cxl  median   worst  late overdue  "
                               "booked h key out h";
    printf("Booked versus used: %s (%s), times in %s\n", str_or(r, "stationName", ""),
           str_or(r, "station", ""), str_or(r, "timezone", ""));
    printf("bookings starting from %s to %s\n\n", str_or(r, "from", "?"), str_or(r, "to", "?"));
    size_t i;
    json_t *g;
    printf("%-16s %3s %-16s%s\n", "hall", "#", "club", head);
    json_array_foreach(json_object_get(r, "rows"), i, g)
    {
        printf("%-16s %3lld %-16s", str_or(g, "hall", "-"), jint(g, "compartment"),
               str_or(g, "club", "?"));
        print_metrics(g);
    }
    printf("\n%-37s%s\n", "by hall", head);
    json_array_foreach(json_object_get(r, "byHall"), i, g)
    {
        printf("%-37s", str_or(g, "hall", "-"));
        print_metrics(g);
    }
    printf("\n%-37s%s\n", "by club", head);
    json_array_foreach(json_object_get(r, "byClub"), i, g)
    {
        char label[160];
        const char *name = json_string_value(json_object_get(g, "clubName"));
        snprintf(label, sizeof(label), "%s%s%s%s", str_or(g, "club", "?"), name ? " (" : "",
                 name ? name : "", name ? ")" : "");
        printf("%-37.36s", label); /* long club names are cut to keep the columns */
        print_metrics(g);
    }
    printf("\n%-37s", "total");
    print_metrics(json_object_get(r, "total"));
    printf("\nused: key collected; no-show: not collected in the pickup window; open: pickup "
           "still possible;\ncxl: cancelled; delay: first pickup after the start; late: "
           "returned after end + return grace\n");
}

/* One CSV field (RFC 4180): quoted when it holds a comma, quote or line break. */
static void csv_field(const char *s)
{
    if (!s)
        s = "";
    if (strpbrk(s, ",\"\r\n") == NULL) {
        fputs(s, stdout);
        return;
    }
    putchar('"');
    for (; *s; s++) {
        if (*s == '"')
            putchar('"');
        putchar(*s);
    }
    putchar('"');
}

static void csv_minutes(json_t *v)
{
    if (json_is_integer(v))
        printf(",%.1f", json_integer_value(v) / 60000.0);
    else
        printf(",");
}

static void csv_row(const char *level, const char *week, json_t *g)
{
    char comp[24] = "";
    json_t *c = json_object_get(g, "compartment");
    if (json_is_integer(c))
        snprintf(comp, sizeof(comp), "%lld", (long long)json_integer_value(c));
    const char *fields[] = {level,
                            week,
                            json_string_value(json_object_get(g, "hall")),
                            comp,
                            json_string_value(json_object_get(g, "club")),
                            json_string_value(json_object_get(g, "clubName"))};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (i)
            putchar(',');
        csv_field(fields[i]);
    }
    printf(",%lld,%lld,%lld,%lld,%lld", jint(g, "booked"), jint(g, "collected"), jint(g, "noShows"),
           jint(g, "pending"), jint(g, "cancelled"));
    csv_minutes(json_object_get(g, "medianDelayMs"));
    csv_minutes(json_object_get(g, "worstDelayMs"));
    printf(",%lld,%lld,%.2f,%.2f\n", jint(g, "lateReturns"), jint(g, "overdue"),
           jint(g, "bookedMs") / 3600000.0, jint(g, "keyOutMs") / 3600000.0);
}

static void print_report_csv(json_t *r)
{
    static const struct {
        const char *key, *level;
    } groups[] = {{"rows", "compartment-club"},
                  {"byHall", "hall"},
                  {"byCompartment", "compartment"},
                  {"byClub", "club"}};
    printf("level,week,hall,compartment,club,club_name,booked,collected,no_shows,pending,"
           "cancelled,median_delay_min,worst_delay_min,late_returns,overdue,booked_hours,"
           "key_out_hours\n");
    size_t i, j;
    json_t *g, *w;
    for (size_t k = 0; k < sizeof(groups) / sizeof(groups[0]); k++) {
        json_array_foreach(json_object_get(r, groups[k].key), i, g)
        {
            csv_row(groups[k].level, "", g);
        }
    }
    csv_row("total", "", json_object_get(r, "total"));
    json_array_foreach(json_object_get(r, "weeks"), i, w)
    {
        json_array_foreach(json_object_get(w, "clubs"), j, g)
        {
            csv_row("week-club", json_string_value(json_object_get(w, "week")), g);
        }
    }
}

/* Text for SVG: &, <, >, " escaped; control characters dropped. */
static void xml_text(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '&':
            fputs("&amp;", f);
            break;
        case '<':
            fputs("&lt;", f);
            break;
        case '>':
            fputs("&gt;", f);
            break;
        case '"':
            fputs("&quot;", f);
            break;
        default:
            if ((unsigned char)*s >= 0x20)
                fputc(*s, f);
        }
    }
}

/* Booked and collected slots of a club in one week (0 when it had none). */
static void week_club(json_t *week, const char *club, long long *booked, long long *used)
{
    size_t i;
    json_t *c;
    *booked = *used = 0;
    json_array_foreach(json_object_get(week, "clubs"), i, c)
    {
        const char *id = json_string_value(json_object_get(c, "club"));
        if (id && strcmp(id, club) == 0) {
            *booked = jint(c, "booked");
            *used = jint(c, "collected");
        }
    }
}

/*
 * The chart a manager opens in a browser: one panel per club, one pair of bars per
 * week (booked slots, and of those the collected ones), all panels on one scale so
 * that clubs compare. Plain SVG 1.1, no scripts, fonts or external files; hovering a
 * bar shows its figures (<title>).
 */
static void svg_chart(FILE *f, json_t *r)
{
    enum { SLOT = 30, BAR = 12, LEFT = 60, TOP = 78, PANEL = 110, GAP = 46, MIN_W = 560 };
    json_t *clubs = json_object_get(r, "byClub");
    json_t *weeks = json_object_get(r, "weeks");
    size_t nw = json_array_size(weeks), nc = json_array_size(clubs), i, j;
    json_t *w, *c;
    long long max = 1;
    json_array_foreach(weeks, i, w)
    {
        json_array_foreach(json_object_get(w, "clubs"), j, c)
        {
            if (jint(c, "booked") > max)
                max = jint(c, "booked");
        }
    }
    int width = LEFT + (int)nw * SLOT + 30;
    if (width < MIN_W)
        width = MIN_W;
    int height = TOP + (int)(nc ? nc : 1) * (PANEL + GAP) + 10;
    size_t every = nw / 26 + 1; /* week labels that fit */

    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%d\" "
            "height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"11\">\n"
            "<rect width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n",
            width, height, width, height, width, height);
    fprintf(f, "<text x=\"%d\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Booked versus used: ",
            LEFT);
    xml_text(f, str_or(r, "stationName", ""));
    fprintf(f, "</text>\n<text x=\"%d\" y=\"40\">Bookings starting from ", LEFT);
    xml_text(f, str_or(r, "from", ""));
    fputs(" to ", f);
    xml_text(f, str_or(r, "to", ""));
    fputs(" (", f);
    xml_text(f, str_or(r, "timezone", ""));
    fputs("), per week from Monday</text>\n", f);
    fprintf(f,
            "<rect x=\"%d\" y=\"50\" width=\"12\" height=\"10\" fill=\"#c6dbef\"/>"
            "<text x=\"%d\" y=\"59\">booked slots</text>\n"
            "<rect x=\"%d\" y=\"50\" width=\"12\" height=\"10\" fill=\"#2171b5\"/>"
            "<text x=\"%d\" y=\"59\">key collected</text>\n",
            LEFT, LEFT + 16, LEFT + 110, LEFT + 126);
    if (nc == 0)
        fprintf(f, "<text x=\"%d\" y=\"%d\">No bookings in this period.</text>\n", LEFT, TOP + 20);

    json_array_foreach(clubs, i, c)
    {
        const char *club = json_string_value(json_object_get(c, "club"));
        const char *name = json_string_value(json_object_get(c, "clubName"));
        int y0 = TOP + (int)i * (PANEL + GAP);
        int base = y0 + PANEL;
        fprintf(f, "<g>\n<text x=\"%d\" y=\"%d\" font-weight=\"bold\">", LEFT, y0 - 8);
        xml_text(f, club);
        if (name) {
            fputs(" ", f);
            xml_text(f, name);
        }
        fprintf(f, ": %lld of %lld booked slots collected</text>\n", jint(c, "collected"),
                jint(c, "booked"));
        fprintf(f,
                "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#444444\"/>\n"
                "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#dddddd\"/>\n"
                "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">0</text>\n"
                "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%lld</text>\n",
                LEFT, base, LEFT + (int)nw * SLOT, base, LEFT, y0, LEFT + (int)nw * SLOT, y0,
                LEFT - 6, base + 4, LEFT - 6, y0 + 4, max);
        json_array_foreach(weeks, j, w)
        {
            long long booked, used;
            week_club(w, club, &booked, &used);
            const char *label = json_string_value(json_object_get(w, "week"));
            const char *wk = label && strchr(label, '-') ? strchr(label, '-') + 1 : "";
            int x = LEFT + (int)j * SLOT + 3;
            int hb = (int)(booked * PANEL / max), hu = (int)(used * PANEL / max);
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#c6dbef\">", x,
                    base - hb, BAR, hb);
            fprintf(f, "<title>");
            xml_text(f, label);
            fprintf(f, ": %lld booked</title></rect>\n", booked);
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#2171b5\">",
                    x + BAR, base - hu, BAR, hu);
            fprintf(f, "<title>");
            xml_text(f, label);
            fprintf(f, ": %lld collected</title></rect>\n", used);
            if (j % every == 0) {
                fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"9\">",
                        x + BAR, base + 12);
                xml_text(f, wk);
                fputs("</text>\n", f);
            }
        }
        fputs("</g>\n", f);
    }
    fputs("</svg>\n", f);
}

static int write_svg(const char *path, json_t *r)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "lockerctl: cannot write %s: %s\n", path, strerror(errno));
        return EXIT_REFUSED;
    }
    svg_chart(f, r);
    bool failed = ferror(f) != 0;
    if (fclose(f) != 0 || failed) {
        fprintf(stderr, "lockerctl: writing %s failed: %s\n", path, strerror(errno));
        return EXIT_REFUSED;
    }
    return 0;
}

/* Writes one JSON document to path, atomically enough for a file a cron job copies
 * on: a temporary file renamed into place. */
static int write_json(const char *path, json_t *doc)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        fprintf(stderr, "lockerctl: %s: name too long\n", path);
        return EXIT_REFUSED;
    }
    if (json_dump_file(doc, tmp, JSON_INDENT(1) | JSON_ENSURE_ASCII) != 0 ||
        rename(tmp, path) != 0) {
        fprintf(stderr, "lockerctl: cannot write %s: %s\n", path, strerror(errno));
        unlink(tmp);
        return EXIT_REFUSED;
    }
    return 0;
}

/* --sensorthings FILE, --ngsi-ld FILE: the open-data documents for the period. */
static int write_opendata(struct ctl *ctl, json_t *period, const char *st, const char *ld)
{
    json_t *reply, *r;
    int rc = call(ctl, "opendata", period, &reply, &r);
    if (rc == 0 && st)
        rc = write_json(st, json_object_get(r, "sensorthings"));
    if (rc == 0 && ld)
        rc = write_json(ld, json_object_get(r, "ngsiLd"));
    json_decref(reply);
    return rc;
}

static int cmd_report(struct ctl *ctl, int argc, char **argv)
{
    static const char *const valued[] = {"--from",         "--to",      "--svg",
                                         "--sensorthings", "--ngsi-ld", NULL};
    static const char *const flags[] = {"--csv", NULL};
    int rc = expect(argc, argv, valued, flags, NULL, 0);
    if (rc)
        return rc;
    bool bad = false, csv = opt_flag(argc, argv, "--csv");
    const char *from = opt_value(argc, argv, "--from", &bad);
    const char *to = opt_value(argc, argv, "--to", &bad);
    const char *svg = opt_value(argc, argv, "--svg", &bad);
    if (csv && ctl->json)
        return usage_error("%s", "--csv and --json exclude each other");
    if (svg && !svg[0])
        return usage_error("%s", "--svg needs a file name");
    const char *st = opt_value(argc, argv, "--sensorthings", &bad);
    const char *ld = opt_value(argc, argv, "--ngsi-ld", &bad);
    if ((st && !st[0]) || (ld && !ld[0]))
        return usage_error("%s", "--sensorthings and --ngsi-ld need a file name");
    json_t *args = json_object();
    if (from)
        json_object_set_new(args, "from", json_string(from));
    if (to)
        json_object_set_new(args, "to", json_string(to));
    if (st || ld) {
        rc = write_opendata(ctl, json_deep_copy(args), st, ld);
        if (rc) {
            json_decref(args);
            return rc;
        }
    }
    json_t *reply, *r;
    rc = call(ctl, "report", args, &reply, &r);
    if (rc)
        return rc;
    if (ctl->json)
        print_json(r);
    else if (csv)
        print_report_csv(r);
    else
        print_report(r);
    if (svg)
        rc = write_svg(svg, r);
    json_decref(reply);
    return rc;
}

/* ------------------------------------------------------------ sync */

static void print_when(const char *label, json_t *v)
{
    const char *s = json_string_value(v);
    printf("%-22s %s\n", label, s ? s : "never");
}

static void print_sync(json_t *r)
{
    printf("mode: %s\noutbox: %lld events\ndead letters: %lld\n",
           json_string_value(json_object_get(r, "mode")),
           (long long)json_integer_value(json_object_get(r, "outboxDepth")),
           (long long)json_integer_value(json_object_get(r, "deadLetters")));
    if (!json_is_true(json_object_get(r, "configured"))) {
        printf("no city API configured: this station runs on local bookings\n");
        return;
    }
    printf("url: %s\n", json_string_value(json_object_get(r, "url")));
    json_t *w = json_object_get(r, "worker");
    printf("worker: %s (restarts %lld)\n",
           json_is_true(json_object_get(w, "running")) ? "running" : "not running",
           (long long)json_integer_value(json_object_get(w, "restarts")));
    if (json_is_true(json_object_get(r, "halted")))
        printf("HALTED: uploads stopped until `lockerctl sync now`\n");
    print_when("last success:", json_object_get(r, "lastSuccess"));
    json_t *e = json_object_get(r, "lastError");
    if (json_is_object(e))
        printf("%-22s %s: %s\n", "last error:", json_string_value(json_object_get(e, "op")),
               json_string_value(json_object_get(e, "message")));
    json_t *usage = json_object_get(r, "usage");
    if (json_is_true(json_object_get(usage, "push"))) {
        const char *through = json_string_value(json_object_get(usage, "pushedThrough"));
        printf("%-22s %s\n", "open data pushed to:", through ? through : "(none yet)");
    }
    json_t *cur = json_object_get(r, "cursor"), *conf = json_object_get(r, "confirmed");
    static const char *const feeds[] = {"reservations", "credentials"};
    for (int i = 0; i < 2; i++) {
        const char *c = json_string_value(json_object_get(cur, feeds[i]));
        printf("%s cursor: %s\n", feeds[i], c ? c : "(from the start)");
        char label[40];
        snprintf(label, sizeof label, "%s complete:", feeds[i]);
        print_when(label, json_object_get(conf, feeds[i]));
    }
}

static int cmd_sync_status(struct ctl *ctl, int argc, char **argv)
{
    int rc = expect(argc, argv, NULL, NULL, NULL, 0);
    if (rc)
        return rc;
    use_station_timezone(ctl);
    return simple(ctl, "sync.status", NULL, print_sync);
}

/* Asks for a cycle, then watches sync.status until the station reports it done: the
 * daemon never holds a control request open on the network. */
static int cmd_sync_now(struct ctl *ctl, int argc, char **argv)
{
    static const char *const valued[] = {"--timeout", NULL};
    int rc = expect(argc, argv, valued, NULL, NULL, 0);
    if (rc)
        return rc;
    bool bad = false;
    long secs = 60;
    const char *t = opt_value(argc, argv, "--timeout", &bad);
    if (t && !parse_int(t, 1, 3600, &secs))
        return usage_error("--timeout takes 1 to 3600 seconds, not '%s'", t);
    json_t *reply, *result;
    rc = call(ctl, "sync.now", NULL, &reply, &result);
    if (rc) {
        json_decref(reply);
        return rc;
    }
    json_int_t cycle = json_integer_value(json_object_get(result, "cycle"));
    json_decref(reply);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        rc = call(ctl, "sync.status", NULL, &reply, &result);
        if (rc) {
            json_decref(reply);
            return rc;
        }
        json_t *c = json_object_get(result, "cycle");
        if (json_integer_value(json_object_get(c, "done")) >= cycle) {
            bool ok = json_is_true(json_object_get(c, "ok"));
            if (ctl->json) {
                print_json(result);
            } else {
                use_station_timezone(ctl);
                printf("sync %s\n", ok ? "complete" : "FAILED");
                print_sync(result);
            }
            json_decref(reply);
            return ok ? 0 : EXIT_REFUSED;
        }
        json_decref(reply);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec >= secs) {
            fprintf(stderr, "lockerctl: sync cycle %lld did not finish within %ld s\n",
                    (long long)cycle, secs);
            return EXIT_REFUSED;
        }
        struct timespec tick = {0, 50L * 1000 * 1000};
        nanosleep(&tick, NULL);
    }
}

/* ------------------------------------------------------------ simulation */

static void print_tap(json_t *r)
{
    const char *outcome = json_string_value(json_object_get(r, "outcome"));
    json_t *n = json_object_get(r, "compartment");
    if (strcmp(outcome, "refused") == 0) {
        printf("refused: %s", json_string_value(json_object_get(r, "reason")));
        json_t *next = json_object_get(r, "nextBooking");
        if (next)
            printf(" (next booking %s)", json_string_value(next));
        putchar('\n');
    } else if (strcmp(outcome, "enrolment") == 0) {
        printf("card handed to the waiting enrolment\n");
    } else {
        printf(
            "granted: %s, compartment %lld unlocked%s%s\n", outcome,
            (long long)json_integer_value(n), json_object_get(r, "unlockError") ? " FAILED: " : "",
            json_object_get(r, "unlockError") ? json_string_value(json_object_get(r, "unlockError"))
                                              : "");
    }
}

static int cmd_sim_tap(struct ctl *ctl, int argc, char **argv)
{
    static const char *const valued[] = {"--card", NULL};
    char *pos[1] = {NULL};
    int rc = expect(argc, argv, valued, NULL, pos, 1);
    if (rc)
        return rc;
    bool bad = false;
    const char *card = opt_value(argc, argv, "--card", &bad);
    json_t *args = json_pack("{s:s}", "uid", pos[0]);
    if (card)
        json_object_set_new(args, "card", json_string(card));
    return simple(ctl, "sim.tap", args, print_tap);
}

static void print_nothing(json_t *r)
{
    (void)r;
}

static int cmd_sim_remove(struct ctl *ctl, int argc, char **argv)
{
    int rc = expect(argc, argv, NULL, NULL, NULL, 0);
    return rc ? rc : simple(ctl, "sim.remove", NULL, print_nothing);
}

static void print_comp_state(json_t *r)
{
    printf("compartment %lld: %s\n",
           (long long)json_integer_value(json_object_get(r, "compartment")),
           json_string_value(json_object_get(r, "state")));
}

static int sim_comp(struct ctl *ctl, const char *cmd, const char *field, const char *a,
                    const char *b, int argc, char **argv)
{
    char *pos[2] = {NULL, NULL};
    long n;
    int rc = expect(argc, argv, NULL, NULL, pos, 2);
    if (rc)
        return rc;
    if (!parse_int(pos[0], 1, 1000, &n))
        return usage_error("compartment must be a number, not '%s'", pos[0]);
    if (!pos[1] || (strcmp(pos[1], a) != 0 && strcmp(pos[1], b) != 0)) {
        fprintf(stderr, "lockerctl: expected '%s' or '%s', not '%s'\n", a, b, pos[1]);
        return EXIT_USAGE;
    }
    return simple(ctl, cmd, json_pack("{s:i,s:s}", "compartment", (int)n, field, pos[1]),
                  print_comp_state);
}

static int cmd_sim_door(struct ctl *ctl, int argc, char **argv)
{
    return sim_comp(ctl, "sim.door", "state", "open", "close", argc, argv);
}

static int cmd_sim_key(struct ctl *ctl, int argc, char **argv)
{
    return sim_comp(ctl, "sim.key", "action", "take", "put", argc, argv);
}

static int cmd_sim_tamper(struct ctl *ctl, int argc, char **argv)
{
    char *pos[1] = {NULL};
    int rc = expect(argc, argv, NULL, NULL, pos, 1);
    if (rc)
        return rc;
    if (!pos[0] || (strcmp(pos[0], "open") != 0 && strcmp(pos[0], "close") != 0))
        return usage_error("expected 'open' or 'close', not '%s'", pos[0] ? pos[0] : "");
    return simple(ctl, "sim.tamper", json_pack("{s:s}", "state", pos[0]), print_nothing);
}

static void print_outputs(json_t *r)
{
    size_t i;
    json_t *l;
    printf("%-16s %-6s %-5s %s\n", "line", "dir", "value", "activations");
    json_array_foreach(json_object_get(r, "lines"), i, l)
    {
        printf("%-16s %-6s %-5lld %lld\n", json_string_value(json_object_get(l, "line")),
               strcmp(json_string_value(json_object_get(l, "direction")), "output") == 0 ? "out"
                                                                                         : "in",
               (long long)json_integer_value(json_object_get(l, "value")),
               (long long)json_integer_value(json_object_get(l, "activations")));
    }
}

static int cmd_sim_outputs(struct ctl *ctl, int argc, char **argv)
{
    int rc = expect(argc, argv, NULL, NULL, NULL, 0);
    return rc ? rc : simple(ctl, "sim.outputs", NULL, print_outputs);
}

static void print_now(json_t *r)
{
    printf("station time is now %s\n", json_string_value(json_object_get(r, "now")));
}

static int cmd_sim_clock(struct ctl *ctl, int argc, char **argv)
{
    char *pos[2] = {NULL, NULL};
    int rc = expect(argc, argv, NULL, NULL, pos, 2);
    if (rc)
        return rc;
    if (!pos[0] || strcmp(pos[0], "advance") != 0)
        return usage_error("expected 'advance DURATION', not '%s'", pos[0] ? pos[0] : "");
    return simple(ctl, "sim.clock", json_pack("{s:s}", "advance", pos[1]), print_now);
}

/* ------------------------------------------------------------ self-test */

/* Only the person at the cabinet can tell whether a lock whose door stayed closed
 * clicked. Anything but an explicit yes counts as no. */
static bool ask_click(json_int_t n)
{
    char line[32];
    printf("Did the lock of compartment %lld click? [y/N] ", (long long)n);
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return false;
    return line[0] == 'y' || line[0] == 'Y';
}

/* Turns the daemon's "confirm" checks into pass or fail (or "unconfirmed" when
 * nobody can answer). Returns true when every check passed, warned or was skipped. */
static bool settle_checks(json_t *checks, bool yes, bool ask)
{
    bool ok = true;
    size_t i;
    json_t *c;
    json_array_foreach(checks, i, c)
    {
        const char *status = json_string_value(json_object_get(c, "status"));
        if (status && strcmp(status, "confirm") == 0) {
            const char *verdict = "unconfirmed";
            const char *why = "not confirmed by a person (run on a terminal, or --yes)";
            if (yes) {
                verdict = "pass";
                why = "lock pulsed; click confirmed with --yes";
            } else if (ask && ask_click(json_integer_value(json_object_get(c, "compartment")))) {
                verdict = "pass";
                why = "lock pulsed; the technician heard it click";
            } else if (ask) {
                verdict = "fail";
                why = "lock pulsed; the technician heard no click";
            }
            char detail[200];
            snprintf(detail, sizeof(detail), "%s; door %s, key %s", why, str_or(c, "door", "?"),
                     str_or(c, "key", "?"));
            json_object_set_new(c, "status", json_string(verdict));
            json_object_set_new(c, "detail", json_string(detail));
            status = verdict;
        }
        if (!status || (strcmp(status, "pass") != 0 && strcmp(status, "warn") != 0 &&
                        strcmp(status, "skip") != 0))
            ok = false;
    }
    return ok;
}

static void print_selftest(json_t *r)
{
    printf("%-16s %-12s %s\n", "check", "status", "detail");
    size_t i;
    json_t *c;
    int bad = 0;
    json_array_foreach(json_object_get(r, "checks"), i, c)
    {
        char name[48];
        const char *status = str_or(c, "status", "?");
        json_t *n = json_object_get(c, "compartment");
        if (n)
            snprintf(name, sizeof(name), "%s %lld", str_or(c, "name", "?"),
                     (long long)json_integer_value(n));
        else
            snprintf(name, sizeof(name), "%s", str_or(c, "name", "?"));
        printf("%-16s %-12s %s\n", name, status, str_or(c, "detail", ""));
        if (strcmp(status, "pass") != 0 && strcmp(status, "warn") != 0 &&
            strcmp(status, "skip") != 0)
            bad++;
    }
    if (json_is_true(json_object_get(r, "ok")))
        printf("\nselftest: ok\n");
    else
        printf("\nselftest: FAILED (%d check%s)\n", bad, bad == 1 ? "" : "s");
}

/* The daemon runs the checks (lock pulses take a moment each) and answers once at
 * the end; the questions about clicks come after that. */
static int cmd_selftest(struct ctl *ctl, int argc, char **argv)
{
    static const char *const flags[] = {"--yes", "--no-locks", NULL};
    int rc = expect(argc, argv, NULL, flags, NULL, 0);
    if (rc)
        return rc;
    bool yes = opt_flag(argc, argv, "--yes");
    bool locks = !opt_flag(argc, argv, "--no-locks");
    bool ask = !yes && !ctl->json && isatty(STDIN_FILENO);
    if (!ctl->json && locks) {
        printf("pulsing the idle compartments' locks one after another: listen for each "
               "click\n");
        fflush(stdout);
    }
    json_t *reply, *result;
    rc = call(ctl, "selftest", json_pack("{s:b}", "locks", locks), &reply, &result);
    if (rc) {
        json_decref(reply);
        return rc;
    }
    bool ok = settle_checks(json_object_get(result, "checks"), yes, ask);
    json_object_set_new(result, "ok", json_boolean(ok));
    if (ctl->json) {
        print_json(result);
    } else {
        if (ask)
            putchar('\n');
        print_selftest(result);
    }
    json_decref(reply);
    return ok ? 0 : EXIT_REFUSED;
}

/* ------------------------------------------------------------ provisioning */

/* Runs on the station itself, without the daemon (provision.c). */
static int cmd_provision(struct ctl *ctl, int argc, char **argv)
{
    return provision_main(argc, argv, ctl->json);
}

/* ------------------------------------------------------------ table and main */

static const struct cmd commands[] = {
    {"status", NULL, "", "station, each compartment (state, door, key, lock), alarms, sync",
     cmd_status},
    {"events", NULL, "[--since SEQ] [--follow] [--verify]",
     "event log; --verify checks the hash chain", cmd_events},
    {"booking", "add", "--club CLUB --compartment N --from TIME --to TIME",
     "add a booking (TIME like 2026-11-28T18:00+01:00)", cmd_booking_add},
    {"booking", "list", "[--all]",
     "bookings not yet over, cancelled ones marked (--all: also past ones)", cmd_booking_list},
    {"booking", "cancel", "ID", "cancel a local booking", cmd_booking_cancel},
    {"club", "add", "ID NAME", "add a club", cmd_club_add},
    {"member", "add", "--club CLUB [--club CLUB...] --name NAME [--role ROLE]",
     "add a member; prints the member id", cmd_member_add},
    {"member", "join", "MEMBER --club CLUB [--club CLUB...]", "add a member to more clubs",
     cmd_member_join},
    {"member", "pin", "MEMBER [--remove]",
     "set a member's PIN for card + PIN (read from standard input), or remove it", cmd_member_pin},
    {"member", "export", "MEMBER",
     "everything the station holds about a member, as JSON (managers)", cmd_member_export},
    {"member", "erase", "MEMBER --reason TEXT",
     "delete a member and their cards, erase their ids from the event log (technicians)",
     cmd_member_erase},
    {"card", "add", "MEMBER --uid HEX [--card desfire|uid]", "register a card by its UID",
     cmd_card_add},
    {"card", "enroll", "MEMBER [--timeout SECONDS]", "register the next card tapped",
     cmd_card_enroll},
    {"card", "issue", "MEMBER [--timeout SECONDS]",
     "personalise a factory-new DESFire card for this site and register it (technicians)",
     cmd_card_issue},
    {"card", "revoke", "ID", "revoke a card", cmd_card_revoke},
    {"open", NULL, "N --reason TEXT", "service open (managers, technicians); logged", cmd_open},
    {"clear", NULL, "N --reason TEXT", "clear a sensor fault / put back in service (technicians)",
     cmd_clear},
    {"disable", NULL, "N --reason TEXT", "take a compartment out of service (technicians)",
     cmd_disable},
    {"prune", NULL, "", "prune events older than the retention period now (technicians)",
     cmd_prune},
    {"report", NULL,
     "[--from DATE] [--to DATE] [--csv] [--svg FILE] [--sensorthings FILE] [--ngsi-ld FILE]",
     "booked versus used per hall, compartment, club and week (default: the last 4 weeks)",
     cmd_report},
    {"sync", "now", "[--timeout S]", "synchronise with the city API now and wait for the result",
     cmd_sync_now},
    {"sync", "status", "", "cursor, last success and error, outbox depth, dead letters",
     cmd_sync_status},
    {"sim", "tap", "UID [--card desfire|uid|clone]",
     "present a card to the simulated reader (clone: DESFire without the site's key)", cmd_sim_tap},
    {"sim", "remove", "", "take the card away", cmd_sim_remove},
    {"sim", "door", "N open|close", "open or close a simulated door", cmd_sim_door},
    {"sim", "key", "N take|put", "take or put back a simulated key", cmd_sim_key},
    {"sim", "tamper", "open|close", "open or close the simulated enclosure", cmd_sim_tamper},
    {"sim", "outputs", "", "simulated output lines (locks) and inputs", cmd_sim_outputs},
    {"sim", "clock", "advance DURATION", "move the simulated clock forward (sim_clock = yes)",
     cmd_sim_clock},
    {"selftest", NULL, "[--yes] [--no-locks] [--json]",
     "check reader, locks and sensors, database, event log, clock, disk, city API (technicians)",
     cmd_selftest},
    {"provision", NULL,
     "--station ID --url URL --token TOKEN --ca FILE [--template FILE] [--dry-run] ...",
     "make this station known to the city API: key, certificate, config (as root, on the station)",
     cmd_provision},
    {NULL, NULL, NULL, NULL, NULL},
};

static void help(FILE *out)
{
    fprintf(out, "usage: lockerctl [-s SOCKET] [--json] COMMAND [ARGS]\n\n"
                 "  -s SOCKET  control socket (default $LOCKERD_SOCKET or " DEFAULT_SOCKET ")\n"
                 "  --json     machine-readable output\n\ncommands:\n");
    for (const struct cmd *c = commands; c->group; c++) {
        char head[128];
        snprintf(head, sizeof(head), "%s%s%s %s", c->group, c->name ? " " : "",
                 c->name ? c->name : "", c->usage);
        fprintf(out, "  %s\n      %s\n", head, c->help);
    }
    fprintf(out, "\nexit status: 0 ok, 1 refused or failed, 2 usage error, 3 lockerd "
                 "unreachable, 4 event log broken\n");
}

int main(int argc, char **argv)
{
    struct ctl ctl = {.fd = -1};
    char *args[256];
    int n = 0;

    log_init("lockerctl", LOG_LVL_WARNING);
    ctl.socket_path = getenv("LOCKERD_SOCKET") ? getenv("LOCKERD_SOCKET") : DEFAULT_SOCKET;
    if (argc > 256)
        return usage_error("%s", "too many arguments");
    /* Global options may stand anywhere on the line. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            ctl.json = true;
        } else if (strcmp(argv[i], "-s") == 0 || strcmp(argv[i], "--socket") == 0) {
            if (++i == argc)
                return usage_error("%s", "-s needs a socket path");
            ctl.socket_path = argv[i];
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            help(stdout);
            return 0;
        } else if (strcmp(argv[i], "-V") == 0 || strcmp(argv[i], "--version") == 0) {
            printf("lockerctl %s\n", LOCKERD_VERSION);
            return 0;
        } else {
            args[n++] = argv[i];
        }
    }
    if (n == 0) {
        help(stderr);
        return EXIT_USAGE;
    }
    for (const struct cmd *c = commands; c->group; c++) {
        if (strcmp(c->group, args[0]) != 0)
            continue;
        if (!c->name) {
            int rc = c->fn(&ctl, n - 1, args + 1);
            if (ctl.in)
                fclose(ctl.in);
            return rc;
        }
        if (n >= 2 && strcmp(c->name, args[1]) == 0) {
            int rc = c->fn(&ctl, n - 2, args + 2);
            if (ctl.in)
                fclose(ctl.in);
            return rc;
        }
    }
    fprintf(stderr, "lockerctl: unknown command '%s%s%s'\n", args[0], n > 1 ? " " : "",
            n > 1 ? args[1] : "");
    fprintf(stderr, "lockerctl: see 'lockerctl --help'\n");
    return EXIT_USAGE;
}
