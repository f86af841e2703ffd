/*
 * config.h - lockerd.conf (INI, parsed with libinih).
 *
 * Every key is known: an unknown section or key, a bad value or a missing required
 * key is an error reported as "FILE:LINE: message" (line 0 for whole-file problems
 * such as a missing [station] id). `lockerd -n` prints the normalised config with
 * config_print(), which config_load() reads back to the same struct.
 *
 * The struct is plain data with fixed-size strings: copying it is a valid way to
 * keep the old config while a reload is checked.
 */
#ifndef LOCKERD_CONFIG_H
#define LOCKERD_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "daemon/log.h"

#define CONFIG_MAX_COMPARTMENTS 32
#define CONFIG_MAX_USERS        16
#define CONFIG_NAME_LEN         64

enum gpio_backend { GPIO_BACKEND_SIM, GPIO_BACKEND_GPIOD };
enum reader_backend { READER_BACKEND_SIM, READER_BACKEND_LIBNFC };
enum card_auth { CARD_AUTH_DESFIRE, CARD_AUTH_UID_INSECURE };
/* Where `make install` puts ui/; the Makefile passes its PREFIX. */
#ifndef LOCKERD_UI_DIR
#define LOCKERD_UI_DIR "/usr/local/share/lockerd/ui"
#endif

enum line_bias { LINE_BIAS_AS_IS, LINE_BIAS_DISABLED, LINE_BIAS_PULL_UP, LINE_BIAS_PULL_DOWN };

/* A GPIO line as written in the config: "GPIO17", "gpiochip0:17" or
 * "pinctrl-bcm2711:17", optionally followed by ", active-low" and a bias
 * (", pull-up", ", pull-down", ", bias-disabled"). An empty name means "not wired". */
struct line_cfg {
    char name[CONFIG_NAME_LEN];
    bool active_low;
    enum line_bias bias;
};

struct compartment_cfg {
    int number; /* 1-based, from the section name [compartment.N] */
    struct line_cfg lock, door, key;
    char key_label[CONFIG_NAME_LEN]; /* e.g. "Halle 2" printed on the key tag */
    char hall[CONFIG_NAME_LEN];      /* hall id this key opens */
    bool pin;                        /* a pickup here needs card + PIN; default no */
};

struct config {
    char path[PATH_MAX];

    /* [station] */
    char station_id[CONFIG_NAME_LEN]; /* required */
    char station_name[128];
    char state_dir[PATH_MAX];       /* default /var/lib/lockerd */
    char runtime_dir[PATH_MAX];     /* default $RUNTIME_DIRECTORY or /run/lockerd */
    char site_key_file[PATH_MAX];   /* default STATE_DIR/site.key */
    char timezone[CONFIG_NAME_LEN]; /* default Europe/Berlin */
    int64_t retention_ms;           /* default 365d; events older are pruned */
    enum log_level log_level;       /* default info */
    bool sim_clock;                 /* default no; only allowed with sim gpio */

    /* [reader] */
    enum reader_backend reader_backend; /* default sim */
    char reader_connstring[256];        /* libnfc connstring, e.g. pn532_uart:/dev/serial0 */
    enum card_auth auth;                /* default desfire */
    char reader_aid[8];                 /* DESFire application id, 6 hex digits; F5A0C1 */
    char reader_key_file[PATH_MAX];     /* AES master keys for AN10922 diversification;
                                           default STATE_DIR/desfire.keys */

    /* [gpio] */
    enum gpio_backend gpio_backend;  /* default sim */
    char gpio_chip[CONFIG_NAME_LEN]; /* default chip for bare offsets */
    int64_t max_energize_ms;         /* default 5s, at most 30s */
    int64_t debounce_ms;             /* input debounce; default 10ms, at most 1s */
    struct line_cfg tamper;          /* optional enclosure tamper switch */

    /* [policy] */
    int64_t pickup_window_ms;   /* how early before a slot the key may be taken; 15m */
    int64_t late_tolerance_ms;  /* how long after slot start a pickup is allowed; 30m */
    int64_t return_grace_ms;    /* key.overdue after slot end plus this; 15m */
    int64_t offline_max_age_ms; /* synced data older than this is not trusted; 72h */
    int64_t door_open_alarm_ms; /* door.heldOpen after this; 2m */
    bool pin_required;          /* every pickup needs card + PIN; default no */
    int64_t pin_timeout_ms;     /* a PIN not entered within this cancels the tap; 30s */

    /* [control] */
    char socket_path[PATH_MAX];         /* default RUNTIME_DIR/control.sock */
    char socket_group[CONFIG_NAME_LEN]; /* default lockerd-admin (if the group exists) */
    /* Unix user names with these roles on the control socket; root and the daemon's
     * own user are always technicians. Everyone else who can reach the socket is a
     * plain member (read-only commands). */
    char managers[CONFIG_MAX_USERS][CONFIG_NAME_LEN];
    int n_managers;
    char technicians[CONFIG_MAX_USERS][CONFIG_NAME_LEN];
    int n_technicians;
    /* Users that may act on behalf of a console account ({"as": ...}), up to their
     * own role (the manager console, lockerd-console). */
    char consoles[CONFIG_MAX_USERS][CONFIG_NAME_LEN];
    int n_consoles;

    /* [api] the city's booking service (docs/api.md) */
    char sync_url[256];            /* https://host/keystation/v1; empty = local station */
    char sync_ca_file[PATH_MAX];   /* ca: CA of the city's server; STATE_DIR/tls/ca.pem */
    char sync_cert_file[PATH_MAX]; /* cert: this station's certificate; .../client.pem */
    char sync_key_file[PATH_MAX];  /* key: its private key (0600); .../client.key */
    int64_t sync_poll_ms;          /* feeds polled at least this often; default 60s */
    int64_t sync_heartbeat_ms;     /* status sent this often; default 5m */

    /* [ui] the kiosk screen's server (daemon/ui.c, docs/kiosk.md) */
    bool ui_enabled;       /* default no: a station without a screen serves nothing */
    char ui_listen[64];    /* loopback address:port; default 127.0.0.1:8080 */
    char ui_dir[PATH_MAX]; /* the page's files; default PREFIX/share/lockerd/ui */
    char ui_language[8];   /* "de" or "en": the language the screen starts in */
    bool ui_speech;        /* spoken prompts through espeak-ng; default no */

    /* [feedback] LED and buzzer (daemon/feedback.c); every line optional */
    struct line_cfg fb_red, fb_green, fb_blue; /* an RGB LED */
    struct line_cfg fb_led;                    /* or a single LED */
    struct line_cfg fb_buzzer;                 /* an active buzzer (on/off) */

    /* [opendata] */
    bool opendata_publish_club; /* clubs in the open-data documents; default no */
    bool opendata_push;         /* a daily summary PUT to the city API; default no */

    int n_compartments;
    struct compartment_cfg compartments[CONFIG_MAX_COMPARTMENTS]; /* sorted by number */
};

/* Fills *cfg with defaults. */
void config_defaults(struct config *cfg);
/* Loads and validates path. On failure returns false and writes
 * "path:line: message" into err. cfg is fully written either way. */
bool config_load(const char *path, struct config *cfg, char *err, size_t errlen);
/* Writes the normalised config (every key, defaults included). */
void config_print(const struct config *cfg, FILE *out);
/* Formats a line spec back to its config form ("GPIO27, active-low, pull-up"). */
void config_line_format(const struct line_cfg *line, char *buf, size_t len);
/* "127.0.0.1:8080" or "[::1]:8080" into a socket address; false (reason in why) for
 * anything else, including an address that is not loopback. */
struct sockaddr_storage;
bool config_listen_parse(const char *value, struct sockaddr_storage *out, char *why, size_t whylen);
/* Compartment by number, or NULL. */
const struct compartment_cfg *config_compartment(const struct config *cfg, int number);

#endif
