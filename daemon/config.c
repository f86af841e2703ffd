/*
 * config.c - lockerd.conf, parsed with libinih.
 *
 * libinih as Debian builds it calls the handler without a line number, so the file
 * is fed to ini_parse_stream() through our own reader, which counts lines: inih asks
 * for exactly one line per call, so our count is the line of the key being handled.
 * The reader also does three things inih cannot be told to do portably:
 *   - it checks section headers, so an unknown or repeated section is an error even
 *     when it has no keys (inih only calls the handler for keys);
 *   - it strips leading whitespace, which turns off inih's multi-line values (an
 *     indented line would otherwise silently continue the previous key);
 *   - it refuses lines longer than inih's buffer instead of letting inih split them.
 *
 * Every key is described once in keys[]: parsing, the duplicate check and
 * config_print() all walk that table, so a new key cannot be parsed but not printed.
 *
 * Errors are "path:line: message", or "path: message" for whole-file problems
 * (line 0), and only the first error is reported.
 */
#include "daemon/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <ini.h>

#include "daemon/timeutil.h"

#define MS_SEC  INT64_C(1000)
#define MS_MIN  (60 * MS_SEC)
#define MS_HOUR (60 * MS_MIN)
#define MS_DAY  (24 * MS_HOUR)

/* Fixed sections, then one instance per possible compartment number. */
enum section_kind {
    SEC_STATION,
    SEC_READER,
    SEC_GPIO,
    SEC_POLICY,
    SEC_CONTROL,
    SEC_API,
    SEC_UI,
    SEC_OPENDATA,
    SEC_FEEDBACK,
    SEC_COMPARTMENT,
};
#define N_FIXED_SECTIONS SEC_COMPARTMENT
#define N_INSTANCES      (N_FIXED_SECTIONS + CONFIG_MAX_COMPARTMENTS)

enum value_type {
    VAL_ID,        /* identifier: letters, digits and ._:- ; never empty */
    VAL_TEXT,      /* free text shown to people; may be empty */
    VAL_PATH,      /* relative paths are taken from the config file's directory */
    VAL_ZONE,      /* a zone under /usr/share/zoneinfo */
    VAL_DURATION,  /* duration_parse(), range min_ms..max_ms */
    VAL_LOG_LEVEL, /* log_level_parse() */
    VAL_BOOL,      /* yes/no/true/false/1/0 */
    VAL_READER_BACKEND,
    VAL_AUTH,
    VAL_AID, /* DESFire application id: exactly 6 hex digits */
    VAL_URL, /* https://host[:port]/path, or empty */
    VAL_GPIO_BACKEND,
    VAL_CHIP,          /* gpiochip name, path or label; may be empty */
    VAL_GROUP,         /* a Unix group name; may be empty */
    VAL_USERS,         /* Unix user names separated by spaces or commas */
    VAL_LINE,          /* line spec; empty means "not wired" */
    VAL_LINE_REQUIRED, /* line spec that must be given */
    VAL_LISTEN,        /* loopback IPv4 or IPv6 address and port: 127.0.0.1:8080, [::1]:8080 */
    VAL_LANGUAGE,      /* a language the screen has a catalogue for: de, en */
};

struct key_def {
    enum section_kind section;
    const char *name;
    enum value_type type;
    size_t offset;       /* in struct config, or struct compartment_cfg for compartments */
    size_t size;         /* string buffers only */
    size_t count_offset; /* VAL_USERS: the matching n_ field */
    int64_t min_ms, max_ms;
};

#define FIELD_SIZE(type, f) sizeof(((type *)0)->f)
#define CFG_STR(f)          offsetof(struct config, f), FIELD_SIZE(struct config, f)
#define CFG_VAL(f)          offsetof(struct config, f), 0
#define COMP_STR(f)         offsetof(struct compartment_cfg, f), FIELD_SIZE(struct compartment_cfg, f)
#define COMP_VAL(f)         offsetof(struct compartment_cfg, f), 0

/* Also the order of config_print(). */
static const struct key_def keys[] = {
    {SEC_STATION, "id", VAL_ID, CFG_STR(station_id), 0, 0, 0},
    {SEC_STATION, "name", VAL_TEXT, CFG_STR(station_name), 0, 0, 0},
    {SEC_STATION, "state_dir", VAL_PATH, CFG_STR(state_dir), 0, 0, 0},
    {SEC_STATION, "runtime_dir", VAL_PATH, CFG_STR(runtime_dir), 0, 0, 0},
    {SEC_STATION, "site_key_file", VAL_PATH, CFG_STR(site_key_file), 0, 0, 0},
    {SEC_STATION, "timezone", VAL_ZONE, CFG_STR(timezone), 0, 0, 0},
    {SEC_STATION, "retention", VAL_DURATION, CFG_VAL(retention_ms), 0, MS_SEC, INT64_MAX},
    {SEC_STATION, "log_level", VAL_LOG_LEVEL, CFG_VAL(log_level), 0, 0, 0},
    {SEC_STATION, "sim_clock", VAL_BOOL, CFG_VAL(sim_clock), 0, 0, 0},

    {SEC_READER, "backend", VAL_READER_BACKEND, CFG_VAL(reader_backend), 0, 0, 0},
    {SEC_READER, "connstring", VAL_TEXT, CFG_STR(reader_connstring), 0, 0, 0},
    {SEC_READER, "auth", VAL_AUTH, CFG_VAL(auth), 0, 0, 0},
    {SEC_READER, "aid", VAL_AID, CFG_STR(reader_aid), 0, 0, 0},
    {SEC_READER, "key_file", VAL_PATH, CFG_STR(reader_key_file), 0, 0, 0},

    {SEC_GPIO, "backend", VAL_GPIO_BACKEND, CFG_VAL(gpio_backend), 0, 0, 0},
    {SEC_GPIO, "chip", VAL_CHIP, CFG_STR(gpio_chip), 0, 0, 0},
    /* A solenoid held longer than a few seconds overheats; 100 ms cannot pull it. */
    {SEC_GPIO, "max_energize", VAL_DURATION, CFG_VAL(max_energize_ms), 0, 100, 30 * MS_SEC},
    /* Contacts bounce for a few ms; a second would swallow a quick door open. */
    {SEC_GPIO, "debounce", VAL_DURATION, CFG_VAL(debounce_ms), 0, 0, MS_SEC},
    {SEC_GPIO, "tamper", VAL_LINE, CFG_VAL(tamper), 0, 0, 0},

    {SEC_POLICY, "pickup_window", VAL_DURATION, CFG_VAL(pickup_window_ms), 0, 0, INT64_MAX},
    {SEC_POLICY, "late_tolerance", VAL_DURATION, CFG_VAL(late_tolerance_ms), 0, 0, INT64_MAX},
    {SEC_POLICY, "return_grace", VAL_DURATION, CFG_VAL(return_grace_ms), 0, 0, INT64_MAX},
    {SEC_POLICY, "offline_max_age", VAL_DURATION, CFG_VAL(offline_max_age_ms), 0, MS_SEC,
     INT64_MAX},
    {SEC_POLICY, "door_open_alarm", VAL_DURATION, CFG_VAL(door_open_alarm_ms), 0, MS_SEC,
     INT64_MAX},
    /* Card + PIN (docs/kiosk.md): for every pickup, or per compartment (pin = yes). */
    {SEC_POLICY, "pin_required", VAL_BOOL, CFG_VAL(pin_required), 0, 0, 0},
    {SEC_POLICY, "pin_timeout", VAL_DURATION, CFG_VAL(pin_timeout_ms), 0, 5 * MS_SEC, 5 * MS_MIN},

    {SEC_CONTROL, "socket", VAL_PATH, CFG_STR(socket_path), 0, 0, 0},
    {SEC_CONTROL, "group", VAL_GROUP, CFG_STR(socket_group), 0, 0, 0},
    {SEC_CONTROL, "managers", VAL_USERS, CFG_VAL(managers), offsetof(struct config, n_managers), 0,
     0},
    {SEC_CONTROL, "technicians", VAL_USERS, CFG_VAL(technicians),
     offsetof(struct config, n_technicians), 0, 0},
    {SEC_CONTROL, "consoles", VAL_USERS, CFG_VAL(consoles), offsetof(struct config, n_consoles), 0,
     0},

    /* An empty url keeps the station local: no worker process, no network. */
    {SEC_API, "url", VAL_URL, CFG_STR(sync_url), 0, 0, 0},
    {SEC_API, "ca", VAL_PATH, CFG_STR(sync_ca_file), 0, 0, 0},
    {SEC_API, "cert", VAL_PATH, CFG_STR(sync_cert_file), 0, 0, 0},
    {SEC_API, "key", VAL_PATH, CFG_STR(sync_key_file), 0, 0, 0},
    /* Until the city's station config says otherwise (it may only be longer or
     * shorter within 5 s .. 1 d, see docs/api.md). */
    {SEC_API, "poll_interval", VAL_DURATION, CFG_VAL(sync_poll_ms), 0, 5 * MS_SEC, MS_DAY},
    {SEC_API, "heartbeat_interval", VAL_DURATION, CFG_VAL(sync_heartbeat_ms), 0, 5 * MS_SEC,
     MS_DAY},

    {SEC_UI, "enabled", VAL_BOOL, CFG_VAL(ui_enabled), 0, 0, 0},
    /* Loopback only: the screen shows what happens at the station, and its server is
     * not built to face a network (see ui.c). */
    {SEC_UI, "listen", VAL_LISTEN, CFG_STR(ui_listen), 0, 0, 0},
    {SEC_UI, "dir", VAL_PATH, CFG_STR(ui_dir), 0, 0, 0},
    {SEC_UI, "language", VAL_LANGUAGE, CFG_STR(ui_language), 0, 0, 0},
    {SEC_UI, "speech", VAL_BOOL, CFG_VAL(ui_speech), 0, 0, 0},

    /* Whether the open-data documents name the club of a slot (docs/opendata.md). */
    {SEC_OPENDATA, "publish_club", VAL_BOOL, CFG_VAL(opendata_publish_club), 0, 0, 0},
    /* Each past day's document also PUT to the city API ([api] url needed). */
    {SEC_OPENDATA, "push", VAL_BOOL, CFG_VAL(opendata_push), 0, 0, 0},

    /* LED and buzzer lines; like all lines they change only with a restart. */
    {SEC_FEEDBACK, "led_red", VAL_LINE, CFG_VAL(fb_red), 0, 0, 0},
    {SEC_FEEDBACK, "led_green", VAL_LINE, CFG_VAL(fb_green), 0, 0, 0},
    {SEC_FEEDBACK, "led_blue", VAL_LINE, CFG_VAL(fb_blue), 0, 0, 0},
    {SEC_FEEDBACK, "led", VAL_LINE, CFG_VAL(fb_led), 0, 0, 0},
    {SEC_FEEDBACK, "buzzer", VAL_LINE, CFG_VAL(fb_buzzer), 0, 0, 0},

    {SEC_COMPARTMENT, "lock", VAL_LINE_REQUIRED, COMP_VAL(lock), 0, 0, 0},
    {SEC_COMPARTMENT, "door", VAL_LINE_REQUIRED, COMP_VAL(door), 0, 0, 0},
    {SEC_COMPARTMENT, "key", VAL_LINE_REQUIRED, COMP_VAL(key), 0, 0, 0},
    {SEC_COMPARTMENT, "key_label", VAL_TEXT, COMP_STR(key_label), 0, 0, 0},
    {SEC_COMPARTMENT, "hall", VAL_TEXT, COMP_STR(hall), 0, 0, 0},
    {SEC_COMPARTMENT, "pin", VAL_BOOL, COMP_VAL(pin), 0, 0, 0},
};
#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

struct parse {
    struct config *cfg;
    const char *path;
    char dir[PATH_MAX]; /* absolute directory of the config file */
    FILE *fp;
    char *buf; /* getline() buffer */
    size_t bufsize;
    int lineno;
    int line_max; /* longest line inih accepts, learnt from the reader's num */

    int inst; /* current section instance, -1 before any or after a bad one */
    int section_line[N_INSTANCES];
    int key_line[N_INSTANCES][N_KEYS];          /* where each key was set, 0 = not set */
    int comp_slot[CONFIG_MAX_COMPARTMENTS + 1]; /* number -> index in cfg->compartments */

    bool failed;
    int err_line;
    char msg[512];
};

/* ---- small helpers ---- */

__attribute__((format(printf, 3, 4))) static bool fail_at(struct parse *p, int line,
                                                          const char *fmt, ...)
{
    va_list ap;

    if (p->failed)
        return false;
    p->failed = true;
    p->err_line = line;
    va_start(ap, fmt);
    vsnprintf(p->msg, sizeof(p->msg), fmt, ap);
    va_end(ap);
    return false;
}

/* Copies and zero-fills the rest of dst, so that two configs holding the same values
 * compare equal with memcmp (the round-trip test relies on it). */
static bool set_str(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);

    if (n >= size)
        return false;
    memset(dst, 0, size);
    memcpy(dst, src, n); /* NOLINT(bugprone-not-null-terminated-result): zeroed above */
    return true;
}

static bool in_charset(const char *s, const char *extra)
{
    for (; *s != '\0'; s++) {
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
              strchr(extra, *s) != NULL))
            return false;
    }
    return true;
}

/* Tabs are harmless; a carriage return or escape sequence in a value is a mistake. */
static bool has_control_chars(const char *s)
{
    for (; *s != '\0'; s++) {
        if (((unsigned char)*s < 0x20 && *s != '\t') || *s == 0x7f)
            return true;
    }
    return false;
}

static const char *section_name(enum section_kind kind)
{
    switch (kind) {
    case SEC_STATION:
        return "station";
    case SEC_READER:
        return "reader";
    case SEC_GPIO:
        return "gpio";
    case SEC_POLICY:
        return "policy";
    case SEC_CONTROL:
        return "control";
    case SEC_API:
        return "api";
    case SEC_UI:
        return "ui";
    case SEC_OPENDATA:
        return "opendata";
    case SEC_FEEDBACK:
        return "feedback";
    case SEC_COMPARTMENT:
        return "compartment";
    }
    return "?";
}

static enum section_kind inst_kind(int inst)
{
    return inst < N_FIXED_SECTIONS ? (enum section_kind)inst : SEC_COMPARTMENT;
}

static int inst_number(int inst)
{
    return inst - N_FIXED_SECTIONS + 1;
}

/* "[station]" or "[compartment.3]" */
static const char *inst_label(int inst, char *buf, size_t len)
{
    if (inst_kind(inst) == SEC_COMPARTMENT)
        snprintf(buf, len, "[compartment.%d]", inst_number(inst));
    else
        snprintf(buf, len, "[%s]", section_name(inst_kind(inst)));
    return buf;
}

/* Section instance for a section name; -1 if unknown, -2 if a compartment number is
 * out of range. Only canonical numbers ("compartment.7", not "compartment.07"). */
static int section_instance(const char *name)
{
    const char *num;
    int n = 0;

    for (int k = 0; k < N_FIXED_SECTIONS; k++) {
        if (strcmp(name, section_name((enum section_kind)k)) == 0)
            return k;
    }
    if (strncmp(name, "compartment.", 12) != 0)
        return -1;
    num = name + 12;
    if (num[0] < '1' || num[0] > '9')
        return num[0] == '0' || num[0] == '-' ? -2 : -1;
    for (; *num != '\0'; num++) {
        if (*num < '0' || *num > '9')
            return -1;
        if (n > CONFIG_MAX_COMPARTMENTS)
            return -2;
        n = n * 10 + (*num - '0');
    }
    if (n < 1 || n > CONFIG_MAX_COMPARTMENTS)
        return -2;
    return N_FIXED_SECTIONS + n - 1;
}

static bool bool_parse(const char *s, bool *out)
{
    if (strcasecmp(s, "yes") == 0 || strcasecmp(s, "true") == 0 || strcmp(s, "1") == 0) {
        *out = true;
        return true;
    }
    if (strcasecmp(s, "no") == 0 || strcasecmp(s, "false") == 0 || strcmp(s, "0") == 0) {
        *out = false;
        return true;
    }
    return false;
}

static const char *reader_backend_name(enum reader_backend b)
{
    switch (b) {
    case READER_BACKEND_SIM:
        return "sim";
    case READER_BACKEND_LIBNFC:
        return "libnfc";
    }
    return "?";
}

static const char *gpio_backend_name(enum gpio_backend b)
{
    switch (b) {
    case GPIO_BACKEND_SIM:
        return "sim";
    case GPIO_BACKEND_GPIOD:
        return "gpiod";
    }
    return "?";
}

static const char *auth_name(enum card_auth a)
{
    switch (a) {
    case CARD_AUTH_DESFIRE:
        return "desfire";
    case CARD_AUTH_UID_INSECURE:
        return "uid-insecure";
    }
    return "?";
}

static const char *bias_name(enum line_bias b)
{
    switch (b) {
    case LINE_BIAS_AS_IS:
        return "";
    case LINE_BIAS_DISABLED:
        return "bias-disabled";
    case LINE_BIAS_PULL_UP:
        return "pull-up";
    case LINE_BIAS_PULL_DOWN:
        return "pull-down";
    }
    return "";
}

static void trim(char **s)
{
    char *end;

    while (**s == ' ' || **s == '\t')
        (*s)++;
    end = *s + strlen(*s);
    while (end > *s && (end[-1] == ' ' || end[-1] == '\t'))
        *--end = '\0';
}

/* "NAME[, active-low][, pull-up|pull-down|bias-disabled]". Writes a reason into why
 * on failure. out is zeroed first (see set_str() on why). */
static bool line_parse(const char *value, struct line_cfg *out, char *why, size_t whylen)
{
    char buf[256];
    char *save = NULL, *tok;
    bool bias_set = false;
    int i = 0;

    memset(out, 0, sizeof(*out));
    if (!set_str(buf, sizeof(buf), value)) {
        snprintf(why, whylen, "too long");
        return false;
    }
    /* strtok_r would merge ",," silently; walk the commas by hand instead. */
    for (tok = buf; tok != NULL; tok = save, i++) {
        char *comma = strchr(tok, ',');
        save = NULL;
        if (comma != NULL) {
            *comma = '\0';
            save = comma + 1;
        }
        trim(&tok);
        if (i == 0) {
            if (tok[0] == '\0') {
                snprintf(why, whylen, "expected a line name such as GPIO17 or gpiochip0:17");
                return false;
            }
            if (!in_charset(tok, "_.:-")) {
                snprintf(why, whylen, "line name '%s' may only contain letters, digits and _ . : -",
                         tok);
                return false;
            }
            if (!set_str(out->name, sizeof(out->name), tok)) {
                snprintf(why, whylen, "line name '%s' is too long (at most %zu characters)", tok,
                         sizeof(out->name) - 1);
                return false;
            }
            continue;
        }
        if (strcmp(tok, "active-low") == 0) {
            if (out->active_low) {
                snprintf(why, whylen, "active-low given twice");
                return false;
            }
            out->active_low = true;
            continue;
        }
        enum line_bias bias;
        if (strcmp(tok, "pull-up") == 0) {
            bias = LINE_BIAS_PULL_UP;
        } else if (strcmp(tok, "pull-down") == 0) {
            bias = LINE_BIAS_PULL_DOWN;
        } else if (strcmp(tok, "bias-disabled") == 0) {
            bias = LINE_BIAS_DISABLED;
        } else {
            snprintf(why, whylen,
                     "unknown line option '%s' (expected active-low, pull-up, pull-down or "
                     "bias-disabled)",
                     tok);
            return false;
        }
        if (bias_set) {
            snprintf(why, whylen, "more than one bias given");
            return false;
        }
        out->bias = bias;
        bias_set = true;
    }
    return true;
}

void config_line_format(const struct line_cfg *line, char *buf, size_t len)
{
    snprintf(buf, len, "%s%s%s%s", line->name, line->active_low ? ", active-low" : "",
             line->bias != LINE_BIAS_AS_IS ? ", " : "", bias_name(line->bias));
}

bool config_listen_parse(const char *value, struct sockaddr_storage *out, char *why, size_t whylen)
{
    char host[64];
    const char *colon, *port_s;
    char *end;
    long port;

    memset(out, 0, sizeof(*out));
    if (value[0] == '[') {
        const char *close = strchr(value, ']');
        if (close == NULL || close[1] != ':') {
            snprintf(why, whylen, "expected [::1]:PORT");
            return false;
        }
        snprintf(host, sizeof(host), "%.*s", (int)(close - value - 1), value + 1);
        port_s = close + 2;
    } else {
        colon = strrchr(value, ':');
        if (colon == NULL || (size_t)(colon - value) >= sizeof(host)) {
            snprintf(why, whylen, "expected ADDRESS:PORT such as 127.0.0.1:8080");
            return false;
        }
        snprintf(host, sizeof(host), "%.*s", (int)(colon - value), value);
        port_s = colon + 1;
    }
    errno = 0;
    port = strtol(port_s, &end, 10);
    if (port_s[0] < '0' || port_s[0] > '9' || *end != '\0' || errno != 0 || port < 1 ||
        port > 65535) {
        snprintf(why, whylen, "port must be 1 to 65535");
        return false;
    }
    struct sockaddr_in *sin = (struct sockaddr_in *)(void *)out;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)(void *)out;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        /* 127.0.0.0/8 */
        if ((ntohl(sin->sin_addr.s_addr) >> 24) != 127)
            goto not_loopback;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        return true;
    }
    if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr))
            goto not_loopback;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        return true;
    }
    snprintf(why, whylen, "'%s' is not a numeric IPv4 or IPv6 address", host);
    return false;
not_loopback:
    memset(out, 0, sizeof(*out));
    snprintf(why, whylen,
             "'%s' is not a loopback address: the kiosk screen is served to the station's own "
             "browser only (127.0.0.1 or [::1])",
             host);
    return false;
}

/* Unix user and group names as useradd accepts them by default. */
static bool unix_name_ok(const char *s)
{
    return s[0] != '\0' && s[0] != '-' && strlen(s) <= 32 && in_charset(s, "_.-");
}

/* Resolves value against the config file's directory into dst. */
static bool path_resolve(const struct parse *p, const char *value, char *dst, size_t size)
{
    char buf[PATH_MAX];
    size_t n;
    int r;

    if (value[0] == '/') {
        r = snprintf(buf, sizeof(buf), "%s", value);
    } else {
        while (value[0] == '.' && value[1] == '/')
            value += 2;
        r = snprintf(buf, sizeof(buf), "%s/%s", p->dir, value);
    }
    if (r < 0 || (size_t)r >= sizeof(buf))
        return false;
    n = (size_t)r;
    while (n > 1 && buf[n - 1] == '/')
        buf[--n] = '\0';
    return set_str(dst, size, buf);
}

/* config_print() writes "key = value"; inih must be able to read that line back. */
static bool fits_line(const struct parse *p, const char *key, const char *value)
{
    /* inih needs room for "\r\n\0" beyond the text. */
    return strlen(key) + 3 + strlen(value) + 3 <= (size_t)p->line_max;
}

static bool parse_users(struct parse *p, const struct key_def *def, const char *value,
                        char (*users)[CONFIG_NAME_LEN], int *count)
{
    char buf[512];
    char *save = NULL;
    int n = 0;

    memset(users, 0, sizeof(char[CONFIG_MAX_USERS][CONFIG_NAME_LEN]));
    *count = 0;
    if (!set_str(buf, sizeof(buf), value))
        return fail_at(p, p->lineno, "%s: list too long", def->name);
    for (char *tok = strtok_r(buf, " \t,", &save); tok != NULL;
         tok = strtok_r(NULL, " \t,", &save)) {
        if (!unix_name_ok(tok))
            return fail_at(p, p->lineno, "%s: '%s' is not a valid user name", def->name, tok);
        for (int i = 0; i < n; i++) {
            if (strcmp(users[i], tok) == 0)
                return fail_at(p, p->lineno, "%s: user '%s' listed twice", def->name, tok);
        }
        if (n == CONFIG_MAX_USERS)
            return fail_at(p, p->lineno, "%s: too many users (at most %d)", def->name,
                           CONFIG_MAX_USERS);
        set_str(users[n], CONFIG_NAME_LEN, tok);
        n++;
    }
    *count = n;
    return true;
}

/* Parses value into the field def describes, relative to base. */
static bool set_value(struct parse *p, const struct key_def *def, void *base, const char *value)
{
    char *field = (char *)base + def->offset;
    char why[512];
    int64_t ms;

    /* Strings go back out through config_print() and must survive the trip. */
    if (has_control_chars(value))
        return fail_at(p, p->lineno, "%s: control characters are not allowed", def->name);
    if (value[0] == ';')
        return fail_at(p, p->lineno, "%s: a value may not start with ';'", def->name);

    switch (def->type) {
    case VAL_ID:
        if (value[0] == '\0' || !in_charset(value, "_.:-"))
            return fail_at(p, p->lineno, "%s: expected letters, digits and _ . : - only, got '%s'",
                           def->name, value);
        break;
    case VAL_TEXT:
        break;
    case VAL_PATH: {
        char resolved[PATH_MAX];
        if (value[0] == '\0')
            return fail_at(p, p->lineno, "%s: expected a path", def->name);
        if (!path_resolve(p, value, resolved, sizeof(resolved)) || strlen(resolved) >= def->size)
            return fail_at(p, p->lineno, "%s: path too long", def->name);
        if (!fits_line(p, def->name, resolved))
            return fail_at(p, p->lineno, "%s: path '%s' too long (at most %d characters)",
                           def->name, resolved, p->line_max - 6 - (int)strlen(def->name));
        set_str(field, def->size, resolved);
        return true;
    }
    case VAL_ZONE:
        if (!tz_exists(value))
            return fail_at(p, p->lineno,
                           "%s: unknown time zone '%s' (expected a name under "
                           "/usr/share/zoneinfo such as Europe/Berlin)",
                           def->name, value);
        break;
    case VAL_DURATION: {
        char lo[24], hi[24];
        if (!duration_parse(value, &ms))
            return fail_at(p, p->lineno,
                           "%s: expected a duration such as 500ms, 30s, 15m, 2h or 7d, got '%s'",
                           def->name, value);
        duration_format(def->min_ms, lo, sizeof(lo));
        duration_format(def->max_ms, hi, sizeof(hi));
        if (def->max_ms != INT64_MAX && (ms < def->min_ms || ms > def->max_ms))
            return fail_at(p, p->lineno, "%s: must be between %s and %s, got '%s'", def->name, lo,
                           hi, value);
        if (ms < def->min_ms)
            return fail_at(p, p->lineno, "%s: must be at least %s, got '%s'", def->name, lo, value);
        *(int64_t *)(void *)field = ms;
        return true;
    }
    case VAL_LOG_LEVEL:
        if (!log_level_parse(value, (enum log_level *)(void *)field))
            return fail_at(p, p->lineno,
                           "%s: expected err, warning, notice, info or debug, got '%s'", def->name,
                           value);
        return true;
    case VAL_BOOL:
        if (!bool_parse(value, (bool *)(void *)field))
            return fail_at(p, p->lineno, "%s: expected yes, no, true, false, 1 or 0, got '%s'",
                           def->name, value);
        return true;
    case VAL_READER_BACKEND: {
        enum reader_backend *b = (enum reader_backend *)(void *)field;
        if (strcmp(value, "sim") == 0)
            *b = READER_BACKEND_SIM;
        else if (strcmp(value, "libnfc") == 0)
            *b = READER_BACKEND_LIBNFC;
        else
            return fail_at(p, p->lineno, "%s: expected sim or libnfc, got '%s'", def->name, value);
        return true;
    }
    case VAL_URL: {
        /* Only HTTPS: the link carries credentials and must be verified. */
        const char *host = value + strlen("https://");
        if (value[0] == '\0')
            break;
        if (strncmp(value, "https://", 8) != 0 || host[0] == '\0' || host[0] == '/' ||
            strpbrk(value, " \t?#") != NULL)
            return fail_at(p, p->lineno,
                           "%s: expected https://host[:port]/path (no query), got '%s'", def->name,
                           value);
        if (strlen(value) >= def->size)
            return fail_at(p, p->lineno, "%s: too long (at most %zu characters)", def->name,
                           def->size - 1);
        /* The worker appends "/stations/..."; a trailing slash would double it. */
        set_str(field, def->size, value);
        size_t n = strlen(field);
        while (n > 8 && field[n - 1] == '/')
            field[--n] = '\0';
        return true;
    }
    case VAL_AID: {
        size_t n = strlen(value);
        bool hex = n == 6;
        for (size_t i = 0; hex && i < n; i++)
            hex = isxdigit((unsigned char)value[i]) != 0;
        if (!hex)
            return fail_at(p, p->lineno, "%s: expected 6 hex digits such as F5A0C1, got '%s'",
                           def->name, value);
        for (size_t i = 0; i < n; i++)
            field[i] = (char)toupper((unsigned char)value[i]);
        field[n] = '\0';
        return true;
    }
    case VAL_AUTH: {
        enum card_auth *a = (enum card_auth *)(void *)field;
        if (strcmp(value, "desfire") == 0)
            *a = CARD_AUTH_DESFIRE;
        else if (strcmp(value, "uid-insecure") == 0)
            *a = CARD_AUTH_UID_INSECURE;
        else
            return fail_at(p, p->lineno, "%s: expected desfire or uid-insecure, got '%s'",
                           def->name, value);
        return true;
    }
    case VAL_GPIO_BACKEND: {
        enum gpio_backend *b = (enum gpio_backend *)(void *)field;
        if (strcmp(value, "sim") == 0)
            *b = GPIO_BACKEND_SIM;
        else if (strcmp(value, "gpiod") == 0)
            *b = GPIO_BACKEND_GPIOD;
        else
            return fail_at(p, p->lineno, "%s: expected sim or gpiod, got '%s'", def->name, value);
        return true;
    }
    case VAL_CHIP:
        if (!in_charset(value, "_.:/-"))
            return fail_at(p, p->lineno,
                           "%s: expected a chip name, path or label such as gpiochip0, got '%s'",
                           def->name, value);
        break;
    case VAL_GROUP:
        if (value[0] != '\0' && !unix_name_ok(value))
            return fail_at(p, p->lineno, "%s: '%s' is not a valid group name", def->name, value);
        break;
    case VAL_LISTEN: {
        struct sockaddr_storage ss;
        if (!config_listen_parse(value, &ss, why, sizeof(why)))
            return fail_at(p, p->lineno, "%s: %s", def->name, why);
        break;
    }
    case VAL_LANGUAGE:
        if (strcmp(value, "de") != 0 && strcmp(value, "en") != 0)
            return fail_at(p, p->lineno, "%s: expected de or en, got '%s'", def->name, value);
        break;
    case VAL_USERS:
        return parse_users(p, def, value, (char(*)[CONFIG_NAME_LEN])(void *)field,
                           (int *)(void *)((char *)base + def->count_offset));
    case VAL_LINE:
    case VAL_LINE_REQUIRED: {
        struct line_cfg *line = (struct line_cfg *)(void *)field;
        if (value[0] == '\0' && def->type == VAL_LINE) {
            memset(line, 0, sizeof(*line));
            return true;
        }
        if (!line_parse(value, line, why, sizeof(why)))
            return fail_at(p, p->lineno, "%s: %s", def->name, why);
        return true;
    }
    }

    /* The plain string types validated above. */
    if (strlen(value) >= def->size)
        return fail_at(p, p->lineno, "%s: too long (at most %zu characters)", def->name,
                       def->size - 1);
    if (!fits_line(p, def->name, value))
        return fail_at(p, p->lineno, "%s: too long to fit on one line", def->name);
    set_str(field, def->size, value);
    return true;
}

/* ---- reading ---- */

/* Registers the section header in line (starts with '['); false on error. */
static bool section_header(struct parse *p, const char *line)
{
    char name[64];
    const char *end = strchr(line, ']');
    const char *rest;
    char label[40];
    size_t n;
    int inst;

    p->inst = -1;
    if (end == NULL)
        return fail_at(p, p->lineno, "malformed section header (missing ']')");
    for (rest = end + 1; *rest == ' ' || *rest == '\t'; rest++)
        ;
    if (*rest != '\0' && *rest != ';' && *rest != '#')
        return fail_at(p, p->lineno, "unexpected text after section header");
    n = (size_t)(end - (line + 1));
    if (n >= sizeof(name))
        return fail_at(p, p->lineno, "unknown section [%.*s]", (int)n, line + 1);
    memcpy(name, line + 1, n);
    name[n] = '\0';

    inst = section_instance(name);
    if (inst == -2)
        return fail_at(p, p->lineno, "compartment number in [%s] must be 1 to %d", name,
                       CONFIG_MAX_COMPARTMENTS);
    if (inst < 0)
        return fail_at(p, p->lineno, "unknown section [%s]", name);
    if (p->section_line[inst] != 0)
        return fail_at(p, p->lineno, "duplicate section %s (first at line %d)",
                       inst_label(inst, label, sizeof(label)), p->section_line[inst]);
    p->section_line[inst] = p->lineno;
    p->inst = inst;

    if (inst_kind(inst) == SEC_COMPARTMENT) {
        struct config *cfg = p->cfg;
        struct compartment_cfg *c = &cfg->compartments[cfg->n_compartments];
        /* Cannot overflow: there are only CONFIG_MAX_COMPARTMENTS numbers and each
         * may appear once. */
        memset(c, 0, sizeof(*c));
        c->number = inst_number(inst);
        p->comp_slot[c->number] = cfg->n_compartments;
        cfg->n_compartments++;
    }
    return true;
}

/* ini_reader: hands inih one line per call. */
static char *read_line(char *str, int num, void *stream)
{
    struct parse *p = stream;
    ssize_t n;
    char *line;
    size_t len;

    /* Stop at the first error: it is the one reported. */
    if (p->failed)
        return NULL;
    p->line_max = num;
    n = getline(&p->buf, &p->bufsize, p->fp);
    if (n < 0) {
        if (ferror(p->fp))
            fail_at(p, 0, "read error: %s", strerror(errno));
        return NULL;
    }
    p->lineno++;
    line = p->buf;
    len = (size_t)n;
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        line[--len] = '\0';
    if (strlen(line) != len) {
        fail_at(p, p->lineno, "NUL byte in line");
        return NULL;
    }
    if (p->lineno == 1 && len >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0)
        line += 3;
    while (*line == ' ' || *line == '\t')
        line++;
    len = strlen(line);
    if (len + 3 > (size_t)num) {
        fail_at(p, p->lineno, "line too long (at most %d characters)", num - 3);
        return NULL;
    }
    if (line[0] == '[' && !section_header(p, line))
        return NULL;
    memcpy(str, line, len + 1);
    return str;
}

/* ini_handler: one key = value. */
static int handle_key(void *user, const char *section, const char *name, const char *value)
{
    struct parse *p = user;
    struct config *cfg = p->cfg;
    char label[40];
    void *base;
    size_t k;

    (void)section; /* read_line() already resolved it into p->inst */
    if (p->failed)
        return 0;
    if (p->inst < 0)
        return fail_at(p, p->lineno, "key '%s' outside any section", name);

    for (k = 0; k < N_KEYS; k++) {
        if (keys[k].section == inst_kind(p->inst) && strcmp(keys[k].name, name) == 0)
            break;
    }
    inst_label(p->inst, label, sizeof(label));
    if (k == N_KEYS)
        return fail_at(p, p->lineno, "unknown key '%s' in %s", name, label);
    if (p->key_line[p->inst][k] != 0)
        return fail_at(p, p->lineno, "duplicate key '%s' in %s (first at line %d)", name, label,
                       p->key_line[p->inst][k]);
    p->key_line[p->inst][k] = p->lineno;

    if (keys[k].section == SEC_COMPARTMENT)
        base = &cfg->compartments[p->comp_slot[inst_number(p->inst)]];
    else
        base = cfg;
    return set_value(p, &keys[k], base, value) ? 1 : 0;
}

/* ---- whole-file checks ---- */

static size_t key_index(enum section_kind section, const char *name)
{
    for (size_t k = 0; k < N_KEYS; k++) {
        if (keys[k].section == section && strcmp(keys[k].name, name) == 0)
            return k;
    }
    /* Only called with names from keys[]. */
    abort();
}

static int key_line_of(const struct parse *p, int inst, const char *name)
{
    return p->key_line[inst][key_index(inst_kind(inst), name)];
}

struct line_use {
    const char *name;
    int inst;
    const char *role;
    int lineno;
};

static bool check_line_conflicts(struct parse *p)
{
    static const char *const roles[] = {"lock", "door", "key"};
    struct line_use uses[6 + 3 * CONFIG_MAX_COMPARTMENTS];
    const struct line_use *bad = NULL, *first = NULL;
    char la[40], lb[40];
    int n = 0;

    if (p->cfg->tamper.name[0] != '\0')
        uses[n++] = (struct line_use){p->cfg->tamper.name, SEC_GPIO, "tamper",
                                      key_line_of(p, SEC_GPIO, "tamper")};
    const struct {
        const struct line_cfg *line;
        const char *key;
    } fb[] = {{&p->cfg->fb_red, "led_red"},
              {&p->cfg->fb_green, "led_green"},
              {&p->cfg->fb_blue, "led_blue"},
              {&p->cfg->fb_led, "led"},
              {&p->cfg->fb_buzzer, "buzzer"}};
    for (size_t i = 0; i < sizeof(fb) / sizeof(fb[0]); i++) {
        if (fb[i].line->name[0] != '\0')
            uses[n++] = (struct line_use){fb[i].line->name, SEC_FEEDBACK, fb[i].key,
                                          key_line_of(p, SEC_FEEDBACK, fb[i].key)};
    }
    for (int i = 0; i < p->cfg->n_compartments; i++) {
        const struct compartment_cfg *c = &p->cfg->compartments[i];
        const struct line_cfg *lines[] = {&c->lock, &c->door, &c->key};
        int inst = N_FIXED_SECTIONS + c->number - 1;
        for (int r = 0; r < 3; r++) {
            if (lines[r]->name[0] != '\0')
                uses[n++] = (struct line_use){lines[r]->name, inst, roles[r],
                                              key_line_of(p, inst, roles[r])};
        }
    }
    /* Report the conflict whose later use comes first in the file. */
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            if (uses[j].lineno >= uses[i].lineno || strcmp(uses[i].name, uses[j].name) != 0)
                continue;
            if (bad == NULL || uses[i].lineno < bad->lineno) {
                bad = &uses[i];
                first = &uses[j];
            }
        }
    }
    if (bad == NULL)
        return true;
    return fail_at(p, bad->lineno, "line '%s' for %s %s is already used by %s %s (line %d)",
                   bad->name, inst_label(bad->inst, la, sizeof(la)), bad->role,
                   inst_label(first->inst, lb, sizeof(lb)), first->role, first->lineno);
}

static bool check_whole(struct parse *p)
{
    struct config *cfg = p->cfg;
    char label[40];

    for (int i = 0; i < cfg->n_compartments; i++) {
        const struct compartment_cfg *c = &cfg->compartments[i];
        const struct line_cfg *lines[] = {&c->lock, &c->door, &c->key};
        static const char *const roles[] = {"lock", "door", "key"};
        int inst = N_FIXED_SECTIONS + c->number - 1;
        for (int r = 0; r < 3; r++) {
            if (lines[r]->name[0] == '\0')
                return fail_at(p, p->section_line[inst], "%s has no %s line (%s = GPIO...)",
                               inst_label(inst, label, sizeof(label)), roles[r], roles[r]);
        }
    }
    if (!check_line_conflicts(p))
        return false;
    if (cfg->fb_led.name[0] != '\0' &&
        (cfg->fb_red.name[0] != '\0' || cfg->fb_green.name[0] != '\0' ||
         cfg->fb_blue.name[0] != '\0'))
        return fail_at(p, key_line_of(p, SEC_FEEDBACK, "led"),
                       "[feedback] led (a single LED) and led_red/led_green/led_blue (an RGB "
                       "LED) exclude each other");
    if (cfg->sim_clock && cfg->gpio_backend != GPIO_BACKEND_SIM)
        return fail_at(p, key_line_of(p, SEC_STATION, "sim_clock"),
                       "sim_clock = yes requires [gpio] backend = sim");
    if (cfg->reader_backend == READER_BACKEND_LIBNFC && cfg->reader_connstring[0] == '\0')
        return fail_at(p, key_line_of(p, SEC_READER, "backend"),
                       "[reader] backend = libnfc requires connstring (e.g. "
                       "pn532_uart:/dev/serial0)");
    if (cfg->station_id[0] == '\0')
        return fail_at(p, 0, "missing required key [station] id");
    if (cfg->n_compartments == 0)
        return fail_at(p, 0, "no [compartment.N] section: at least one compartment is required");
    return true;
}

/* Defaults that depend on other keys, filled in after the whole file is read. */
static void derive_paths(struct parse *p)
{
    struct config *cfg = p->cfg;
    char buf[PATH_MAX + 32];

    if (key_line_of(p, SEC_STATION, "site_key_file") == 0) {
        snprintf(buf, sizeof(buf), "%s/site.key", cfg->state_dir);
        if (!set_str(cfg->site_key_file, sizeof(cfg->site_key_file), buf) ||
            !fits_line(p, "site_key_file", buf))
            fail_at(p, key_line_of(p, SEC_STATION, "state_dir"),
                    "state_dir too long to derive site_key_file from it");
    }
    if (key_line_of(p, SEC_READER, "key_file") == 0) {
        snprintf(buf, sizeof(buf), "%s/desfire.keys", cfg->state_dir);
        if (!set_str(cfg->reader_key_file, sizeof(cfg->reader_key_file), buf) ||
            !fits_line(p, "key_file", buf))
            fail_at(p, key_line_of(p, SEC_STATION, "state_dir"),
                    "state_dir too long to derive key_file from it");
    }
    static const struct {
        const char *key, *file;
        size_t offset;
    } tls[] = {
        {"ca", "tls/ca.pem", offsetof(struct config, sync_ca_file)},
        {"cert", "tls/client.pem", offsetof(struct config, sync_cert_file)},
        {"key", "tls/client.key", offsetof(struct config, sync_key_file)},
    };
    for (size_t i = 0; i < sizeof tls / sizeof tls[0]; i++) {
        if (key_line_of(p, SEC_API, tls[i].key) != 0)
            continue;
        snprintf(buf, sizeof(buf), "%s/%s", cfg->state_dir, tls[i].file);
        if (!set_str((char *)cfg + tls[i].offset, PATH_MAX, buf) || !fits_line(p, tls[i].key, buf))
            fail_at(p, key_line_of(p, SEC_STATION, "state_dir"),
                    "state_dir too long to derive %s from it", tls[i].key);
    }
    if (key_line_of(p, SEC_CONTROL, "socket") == 0) {
        snprintf(buf, sizeof(buf), "%s/control.sock", cfg->runtime_dir);
        if (!set_str(cfg->socket_path, sizeof(cfg->socket_path), buf) ||
            !fits_line(p, "socket", buf))
            fail_at(p, key_line_of(p, SEC_STATION, "runtime_dir"),
                    "runtime_dir too long to derive the control socket path from it");
    }
}

static int compartment_cmp(const void *a, const void *b)
{
    const struct compartment_cfg *ca = a, *cb = b;
    return (ca->number > cb->number) - (ca->number < cb->number);
}

/* The absolute directory holding path, for resolving relative paths in it. */
static void config_dir(const char *path, char *dir, size_t len)
{
    char tmp[PATH_MAX];
    const char *slash = strrchr(path, '/');

    if (slash == NULL)
        snprintf(tmp, sizeof(tmp), ".");
    else if (slash == path)
        snprintf(tmp, sizeof(tmp), "/");
    else
        snprintf(tmp, sizeof(tmp), "%.*s", (int)(slash - path), path);
    /* realpath() needs PATH_MAX bytes; fall back to the name as given. */
    if (len < PATH_MAX || realpath(tmp, dir) == NULL)
        snprintf(dir, len, "%s", tmp);
}

/* ---- public ---- */

void config_defaults(struct config *cfg)
{
    const char *rt = getenv("RUNTIME_DIRECTORY");
    char buf[PATH_MAX + 32];

    memset(cfg, 0, sizeof(*cfg));
    set_str(cfg->state_dir, sizeof(cfg->state_dir), "/var/lib/lockerd");
    /* systemd joins several RuntimeDirectory= entries with ':'; ours is the first. */
    set_str(cfg->runtime_dir, sizeof(cfg->runtime_dir), "/run/lockerd");
    if (rt != NULL && rt[0] == '/') {
        size_t n = strcspn(rt, ":");
        if (n < sizeof(cfg->runtime_dir)) {
            memset(cfg->runtime_dir, 0, sizeof(cfg->runtime_dir));
            memcpy(cfg->runtime_dir, rt, n);
        }
    }
    snprintf(buf, sizeof(buf), "%s/site.key", cfg->state_dir);
    set_str(cfg->site_key_file, sizeof(cfg->site_key_file), buf);
    snprintf(buf, sizeof(buf), "%s/desfire.keys", cfg->state_dir);
    set_str(cfg->reader_key_file, sizeof(cfg->reader_key_file), buf);
    set_str(cfg->timezone, sizeof(cfg->timezone), "Europe/Berlin");
    cfg->retention_ms = 365 * MS_DAY;
    cfg->log_level = LOG_LVL_INFO;
    cfg->sim_clock = false;

    cfg->reader_backend = READER_BACKEND_SIM;
    cfg->auth = CARD_AUTH_DESFIRE;
    set_str(cfg->reader_aid, sizeof(cfg->reader_aid), "F5A0C1");

    cfg->gpio_backend = GPIO_BACKEND_SIM;
    cfg->max_energize_ms = 5 * MS_SEC;
    cfg->debounce_ms = 10;

    cfg->pickup_window_ms = 15 * MS_MIN;
    cfg->late_tolerance_ms = 30 * MS_MIN;
    cfg->return_grace_ms = 15 * MS_MIN;
    cfg->offline_max_age_ms = 72 * MS_HOUR;
    cfg->door_open_alarm_ms = 2 * MS_MIN;
    cfg->pin_required = false;
    cfg->pin_timeout_ms = 30 * MS_SEC;

    snprintf(buf, sizeof(buf), "%s/tls/ca.pem", cfg->state_dir);
    set_str(cfg->sync_ca_file, sizeof(cfg->sync_ca_file), buf);
    snprintf(buf, sizeof(buf), "%s/tls/client.pem", cfg->state_dir);
    set_str(cfg->sync_cert_file, sizeof(cfg->sync_cert_file), buf);
    snprintf(buf, sizeof(buf), "%s/tls/client.key", cfg->state_dir);
    set_str(cfg->sync_key_file, sizeof(cfg->sync_key_file), buf);
    cfg->sync_poll_ms = 60 * MS_SEC;
    cfg->sync_heartbeat_ms = 5 * MS_MIN;

    cfg->ui_enabled = false;
    set_str(cfg->ui_listen, sizeof(cfg->ui_listen), "127.0.0.1:8080");
    set_str(cfg->ui_dir, sizeof(cfg->ui_dir), LOCKERD_UI_DIR);
    set_str(cfg->ui_language, sizeof(cfg->ui_language), "de");
    cfg->ui_speech = false;

    snprintf(buf, sizeof(buf), "%s/control.sock", cfg->runtime_dir);
    if (!set_str(cfg->socket_path, sizeof(cfg->socket_path), buf))
        set_str(cfg->socket_path, sizeof(cfg->socket_path), "/run/lockerd/control.sock");
    set_str(cfg->socket_group, sizeof(cfg->socket_group), "lockerd-admin");
}

bool config_load(const char *path, struct config *cfg, char *err, size_t errlen)
{
    struct parse *p;
    bool ok;
    int r;

    config_defaults(cfg);
    /* The parse state holds a line table per section: too big for a small stack. */
    p = xcalloc(1, sizeof(*p));
    p->cfg = cfg;
    p->path = path;
    p->inst = -1;
    p->line_max = 200; /* inih's default, until the reader learns the real one */

    if (!set_str(cfg->path, sizeof(cfg->path), path)) {
        fail_at(p, 0, "path too long");
        goto out;
    }
    p->fp = fopen(path, "re");
    if (p->fp == NULL) {
        fail_at(p, 0, "cannot open: %s", strerror(errno));
        goto out;
    }
    config_dir(path, p->dir, sizeof(p->dir));

    r = ini_parse_stream(read_line, p, handle_key, p);
    if (r == -2) {
        fail_at(p, 0, "out of memory");
    } else if (r > 0 && (!p->failed || (p->err_line > 0 && r < p->err_line))) {
        /* inih's own complaint (a line that is neither [section] nor key = value)
         * came first; it keeps parsing after those, so ours may be later. */
        p->failed = false;
        fail_at(p, r, "syntax error: expected [section], key = value or a comment");
    }
    fclose(p->fp);

    qsort(cfg->compartments, (size_t)cfg->n_compartments, sizeof(cfg->compartments[0]),
          compartment_cmp);
    derive_paths(p);
    if (!p->failed)
        check_whole(p);

out:
    ok = !p->failed;
    if (!ok) {
        if (p->err_line > 0)
            snprintf(err, errlen, "%s:%d: %s", path, p->err_line, p->msg);
        else
            snprintf(err, errlen, "%s: %s", path, p->msg);
    } else if (cfg->auth == CARD_AUTH_UID_INSECURE) {
        log_warnx("%s: [reader] auth = uid-insecure: cards are identified by their UID "
                  "alone, which anyone can read and write onto a blank card; keys can be "
                  "taken with a cloned card. Use auth = desfire for a real installation",
                  path);
    }
    free(p->buf);
    free(p);
    return ok;
}

static void print_value(const struct key_def *def, const void *base, FILE *out)
{
    const char *field = (const char *)base + def->offset;
    char buf[256];

    switch (def->type) {
    case VAL_ID:
    case VAL_TEXT:
    case VAL_PATH:
    case VAL_ZONE:
    case VAL_CHIP:
    case VAL_GROUP:
    case VAL_AID:
    case VAL_URL:
    case VAL_LISTEN:
    case VAL_LANGUAGE:
        fputs(field, out);
        break;
    case VAL_DURATION:
        duration_format(*(const int64_t *)(const void *)field, buf, sizeof(buf));
        fputs(buf, out);
        break;
    case VAL_LOG_LEVEL:
        fputs(log_level_name(*(const enum log_level *)(const void *)field), out);
        break;
    case VAL_BOOL:
        fputs(*(const bool *)(const void *)field ? "yes" : "no", out);
        break;
    case VAL_READER_BACKEND:
        fputs(reader_backend_name(*(const enum reader_backend *)(const void *)field), out);
        break;
    case VAL_AUTH:
        fputs(auth_name(*(const enum card_auth *)(const void *)field), out);
        break;
    case VAL_GPIO_BACKEND:
        fputs(gpio_backend_name(*(const enum gpio_backend *)(const void *)field), out);
        break;
    case VAL_USERS: {
        const char(*users)[CONFIG_NAME_LEN] = (const char(*)[CONFIG_NAME_LEN])(const void *)field;
        int n = *(const int *)(const void *)((const char *)base + def->count_offset);
        for (int i = 0; i < n; i++)
            fprintf(out, "%s%s", i > 0 ? " " : "", users[i]);
        break;
    }
    case VAL_LINE:
    case VAL_LINE_REQUIRED:
        config_line_format((const struct line_cfg *)(const void *)field, buf, sizeof(buf));
        fputs(buf, out);
        break;
    }
}

/* Empty values print as "key =", without trailing blanks that editors strip. */
static bool value_empty(const struct key_def *def, const void *base)
{
    const char *field = (const char *)base + def->offset;

    switch (def->type) {
    case VAL_ID:
    case VAL_TEXT:
    case VAL_PATH:
    case VAL_ZONE:
    case VAL_CHIP:
    case VAL_GROUP:
    case VAL_AID:
    case VAL_URL:
    case VAL_LISTEN:
    case VAL_LANGUAGE:
        return field[0] == '\0';
    case VAL_USERS:
        return *(const int *)(const void *)((const char *)base + def->count_offset) == 0;
    case VAL_LINE:
    case VAL_LINE_REQUIRED:
        return ((const struct line_cfg *)(const void *)field)->name[0] == '\0';
    case VAL_DURATION:
    case VAL_LOG_LEVEL:
    case VAL_BOOL:
    case VAL_READER_BACKEND:
    case VAL_AUTH:
    case VAL_GPIO_BACKEND:
        return false;
    }
    return false;
}

static void print_section(enum section_kind kind, const void *base, FILE *out)
{
    for (size_t k = 0; k < N_KEYS; k++) {
        if (keys[k].section != kind)
            continue;
        if (value_empty(&keys[k], base)) {
            fprintf(out, "%s =\n", keys[k].name);
            continue;
        }
        fprintf(out, "%s = ", keys[k].name);
        print_value(&keys[k], base, out);
        fputc('\n', out);
    }
}

void config_print(const struct config *cfg, FILE *out)
{
    fputs("# lockerd configuration, normalised: every key with its effective value\n", out);
    for (int k = 0; k < N_FIXED_SECTIONS; k++) {
        fprintf(out, "\n[%s]\n", section_name((enum section_kind)k));
        print_section((enum section_kind)k, cfg, out);
    }
    for (int i = 0; i < cfg->n_compartments; i++) {
        fprintf(out, "\n[compartment.%d]\n", cfg->compartments[i].number);
        print_section(SEC_COMPARTMENT, &cfg->compartments[i], out);
    }
}

const struct compartment_cfg *config_compartment(const struct config *cfg, int number)
{
    for (int i = 0; i < cfg->n_compartments; i++) {
        if (cfg->compartments[i].number == number)
            return &cfg->compartments[i];
    }
    return NULL;
}
