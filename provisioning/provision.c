/*
 * provision.c - `lockerctl provision`: makes a fresh station known to the city API.
 *
 * Run by a technician on the station (as root, lockerd possibly stopped). Each step
 * looks at what is there first and changes only what is missing or wrong, so a second
 * run with the same arguments changes nothing:
 *
 *   state-dir  STATE_DIR and STATE_DIR/tls (0750)
 *   key        STATE_DIR/tls/client.key, EC P-256, 0600; made once, never overwritten,
 *              never sent anywhere
 *   csr        a certificate request for CN = station id, signed with the key
 *   enroll     POST {url}/provisioning/enroll with the one-time token; writes
 *              tls/client.pem and tls/ca.pem (a copy of --ca)
 *   site-key   STATE_DIR/site.key, 32 random bytes, 0600, as lockerd makes it
 *   config     the config from --template, or the existing one with [station] and [api]
 *              set; replaced atomically, the old one kept as FILE.bak
 *   check      `lockerd -n -c CONFIG`, and that it names what was provisioned
 *   verify     GET {url}/stations/{id} with the new certificate
 *   owner      the files above belong to the user lockerd (when root)
 *
 * Error convention: each step reports its own result through step() and returns
 * false when it failed; helpers return bool with a message in err.
 */
#include "provisioning/provision.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "daemon/log.h"

extern char **environ;

#define EXIT_FAILED         1
#define EXIT_USAGE          2
#define DEFAULT_CONFIG      "/etc/lockerd/lockerd.conf"
#define DEFAULT_STATE_DIR   "/var/lib/lockerd"
#define DEFAULT_LOCKERD     "/usr/sbin/lockerd"
#define RENEW_DAYS          30 /* a certificate valid for less than this is renewed */
#define SITE_KEY_LEN        32 /* as lockerd makes it (daemon/main.c) */
#define SITE_KEY_MIN        16
#define FILE_MAX            ((size_t)256 * 1024) /* config, template, PEM files */
#define BODY_MAX            ((size_t)256 * 1024) /* an answer of the city API */
#define OUTPUT_MAX          ((size_t)64 * 1024)  /* what lockerd -n prints */
#define HTTP_TIMEOUT_MS     60000L
#define HTTP_CONNECT_MS     15000L
#define NAME_MAX_BYTES      127
#define ID_MAX              63
#define PLACEHOLDER_MAX_LEN 32
#define MSG_MAX             (4 * PATH_MAX) /* a message naming a few paths */

enum status {
    ST_OK,      /* already as it should be */
    ST_CHANGED, /* made or fixed now */
    ST_SKIP,    /* not needed, or not applicable */
    ST_WOULD,   /* --dry-run: would change */
    ST_FAIL,
};

struct prov {
    /* options */
    const char *station, *token, *ca_arg, *name, *config, *template_path, *lockerd;
    bool dry_run, json;
    char url[1024]; /* --url without trailing slashes */
    char state_dir[PATH_MAX];
    char tls_dir[PATH_MAX + 8], key_path[PATH_MAX + 32], cert_path[PATH_MAX + 32],
        ca_path[PATH_MAX + 32], site_key_path[PATH_MAX + 32];
    char lockerd_buf[PATH_MAX + 16];

    /* inputs */
    char *ca_pem; /* contents of --ca */
    size_t ca_len;
    char *tmpl;    /* contents of --template */
    char *cfg_old; /* the existing config, NULL if there is none */
    char *cfg_new; /* what it should hold */

    /* what the steps found or made */
    EVP_PKEY *key;
    char *csr_pem;
    bool need_enroll;
    bool pending; /* --dry-run: an earlier step would have changed something */
    bool cert_ready;

    json_t *steps;
    bool failed;
    char failed_step[16]; /* the first one */
};

static const char *status_name(enum status s)
{
    switch (s) {
    case ST_OK:
        return "ok";
    case ST_CHANGED:
        return "changed";
    case ST_SKIP:
        return "skip";
    case ST_WOULD:
        return "would";
    case ST_FAIL:
        return "FAIL";
    }
    return "?";
}

/* Reports one step: a line of the table, or an element of the JSON array. Returns
 * false for ST_FAIL. */
static __attribute__((format(printf, 4, 5))) bool step(struct prov *p, const char *name,
                                                       enum status s, const char *fmt, ...)
{
    char detail[MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    if (s == ST_FAIL && !p->failed) {
        p->failed = true;
        snprintf(p->failed_step, sizeof p->failed_step, "%s", name);
    }
    if (s == ST_WOULD)
        p->pending = true;
    if (p->json) {
        json_array_append_new(p->steps, json_pack("{s:s,s:s,s:s}", "step", name, "status",
                                                  status_name(s), "detail", detail));
    } else {
        printf("%-7s  %s: %s\n", status_name(s), name, detail);
        fflush(stdout);
    }
    return s != ST_FAIL;
}

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

/* The first OpenSSL error of the thread's queue, as text; empties the queue. */
static const char *ssl_error(void)
{
    static char buf[256];
    unsigned long e = ERR_get_error();
    if (e == 0)
        snprintf(buf, sizeof buf, "unknown OpenSSL error");
    else
        ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    return buf;
}

/* ------------------------------------------------------------ files */

/* Reads a whole (small) file. NULL with errno set: ENOENT, EFBIG for more than max. */
static char *read_file(const char *path, size_t max, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    char *buf = xmalloc(max + 1);
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, max + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            free(buf);
            errno = e;
            return NULL;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > max) {
            close(fd);
            free(buf);
            errno = EFBIG;
            return NULL;
        }
    }
    close(fd);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

static bool write_all(int fd, const void *data, size_t len)
{
    const char *s = data;
    while (len > 0) {
        ssize_t w = write(fd, s, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        s += w;
        len -= (size_t)w;
    }
    return true;
}

/* Makes a rename or a new file in dir durable. */
static void sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static void dir_of(const char *path, char *dir, size_t size)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        snprintf(dir, size, ".");
    else if (slash == path)
        snprintf(dir, size, "/");
    else
        snprintf(dir, size, "%.*s", (int)(slash - path), path);
}

/* Replaces path with data atomically: a temporary file in the same directory, fsync,
 * rename. With bak the old file stays as PATH.bak (a hard link, so that path never
 * goes missing). uid/gid (-1: leave) are applied to the new file. */
static bool write_atomic(const char *path, const void *data, size_t len, mode_t mode, bool bak,
                         uid_t uid, gid_t gid, char *err, size_t errlen)
{
    char tmp[PATH_MAX + 16], old[PATH_MAX + 8], dir[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.XXXXXX", path) >= (int)sizeof tmp ||
        snprintf(old, sizeof old, "%s.bak", path) >= (int)sizeof old) {
        snprintf(err, errlen, "%s: name too long", path);
        return false;
    }
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create a file next to %s: %s", path, strerror(errno));
        return false;
    }
    bool ok = fchmod(fd, mode) == 0 &&
              (uid == (uid_t)-1 && gid == (gid_t)-1 ? true : fchown(fd, uid, gid) == 0) &&
              write_all(fd, data, len) && fsync(fd) == 0;
    int e = errno;
    if (close(fd) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (ok && bak && access(path, F_OK) == 0) {
        if ((unlink(old) != 0 && errno != ENOENT) || link(path, old) != 0) {
            ok = false;
            e = errno;
        }
    }
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        e = errno;
    }
    if (!ok) {
        unlink(tmp);
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(e));
        return false;
    }
    dir_of(path, dir, sizeof dir);
    sync_dir(dir);
    return true;
}

/* "/a/b/" -> "/a/b"; relative names are taken from base (a directory). */
static bool absolute_path(const char *name, const char *base, char *out, size_t size)
{
    int r;
    if (name[0] == '/') {
        r = snprintf(out, size, "%s", name);
    } else {
        while (name[0] == '.' && name[1] == '/')
            name += 2;
        r = snprintf(out, size, "%s/%s", base, name);
    }
    if (r < 0 || (size_t)r >= size)
        return false;
    size_t n = (size_t)r;
    while (n > 1 && out[n - 1] == '/')
        out[--n] = '\0';
    return true;
}

/* ------------------------------------------------------------ config files (INI) */

/* The config as lines, so that it can be changed in place: comments, blank lines and
 * keys not touched here stay as they are. The syntax is libinih's as lockerd uses it
 * (lockerd.conf(5)): "[section]", "key = value" or "key: value", whole-line comments
 * with '#' or ';', and an inline comment after a ';' preceded by a blank. */
struct ini {
    char **lines;
    size_t n, cap;
};

static void ini_insert(struct ini *ini, size_t at, const char *line)
{
    if (ini->n == ini->cap) {
        ini->cap = ini->cap ? ini->cap * 2 : 64;
        char **grown = realloc(ini->lines, ini->cap * sizeof *grown);
        if (grown == NULL)
            fatalx("out of memory");
        ini->lines = grown;
    }
    memmove(ini->lines + at + 1, ini->lines + at, (ini->n - at) * sizeof *ini->lines);
    ini->lines[at] = xstrdup(line);
    ini->n++;
}

static void ini_load(struct ini *ini, const char *text)
{
    memset(ini, 0, sizeof *ini);
    const char *s = text;
    while (*s) {
        const char *nl = strchr(s, '\n');
        size_t len = nl ? (size_t)(nl - s) : strlen(s);
        char *line = xmalloc(len + 1);
        memcpy(line, s, len);
        line[len] = '\0';
        ini_insert(ini, ini->n, line);
        free(line);
        s += len + (nl ? 1 : 0);
    }
}

static void ini_free(struct ini *ini)
{
    for (size_t i = 0; i < ini->n; i++)
        free(ini->lines[i]);
    free(ini->lines);
    memset(ini, 0, sizeof *ini);
}

static char *ini_text(const struct ini *ini)
{
    size_t len = 1;
    for (size_t i = 0; i < ini->n; i++)
        len += strlen(ini->lines[i]) + 1;
    char *out = xmalloc(len), *o = out;
    for (size_t i = 0; i < ini->n; i++) {
        size_t l = strlen(ini->lines[i]);
        memcpy(o, ini->lines[i], l);
        o += l;
        *o++ = '\n';
    }
    *o = '\0';
    return out;
}

static const char *skip_blanks(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

/* A section header: its name into name. */
static bool ini_section(const char *line, char *name, size_t size)
{
    const char *s = skip_blanks(line);
    if (s[0] == '\xEF' && s[1] == '\xBB' && s[2] == '\xBF')
        s += 3;
    const char *end = s[0] == '[' ? strchr(s, ']') : NULL;
    if (end == NULL)
        return false;
    snprintf(name, size, "%.*s", (int)(end - s - 1), s + 1);
    return true;
}

/* A "key = value" line: the key, the value (inline comment and blanks removed) and
 * where the inline comment starts (or NULL). */
static bool ini_key(const char *line, char *key, size_t ksize, char *value, size_t vsize,
                    const char **comment)
{
    const char *s = skip_blanks(line);
    if (*s == '\0' || *s == '#' || *s == ';' || *s == '[')
        return false;
    size_t k = strcspn(s, "=:");
    if (s[k] == '\0')
        return false;
    size_t kl = k;
    while (kl > 0 && (s[kl - 1] == ' ' || s[kl - 1] == '\t'))
        kl--;
    snprintf(key, ksize, "%.*s", (int)kl, s);
    const char *v = skip_blanks(s + k + 1);
    const char *c = NULL;
    for (const char *q = v; *q; q++) {
        if (*q == ';' && q > v && (q[-1] == ' ' || q[-1] == '\t')) {
            c = q;
            break;
        }
    }
    size_t vl = c ? (size_t)(c - v) : strlen(v);
    while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t' || v[vl - 1] == '\r'))
        vl--;
    snprintf(value, vsize, "%.*s", (int)vl, v);
    if (comment)
        *comment = c;
    return true;
}

/* The value of section.key (the first one); false if not set. */
static bool ini_get(const struct ini *ini, const char *section, const char *key, char *value,
                    size_t vsize)
{
    char sec[128] = "", k[128];
    for (size_t i = 0; i < ini->n; i++) {
        if (ini_section(ini->lines[i], sec, sizeof sec))
            continue;
        if (strcmp(sec, section) == 0 && ini_key(ini->lines[i], k, sizeof k, value, vsize, NULL) &&
            strcmp(k, key) == 0)
            return true;
    }
    return false;
}

/* Sets section.key = value: every line setting it gets the value (an inline comment
 * stays); a missing key goes after the section's last key, a missing section to the
 * end. Lines that already hold the value are not touched. */
static void ini_set(struct ini *ini, const char *section, const char *key, const char *value)
{
    char sec[128] = "", k[128], v[1024], line[2048];
    const char *comment;
    bool found = false, in = false;
    size_t last = 0; /* the line after which a new key goes */
    bool have_section = false;
    for (size_t i = 0; i < ini->n; i++) {
        if (ini_section(ini->lines[i], sec, sizeof sec)) {
            in = strcmp(sec, section) == 0;
            if (in) {
                have_section = true;
                last = i + 1;
            }
            continue;
        }
        if (!in || !ini_key(ini->lines[i], k, sizeof k, v, sizeof v, &comment))
            continue;
        last = i + 1;
        if (strcmp(k, key) != 0)
            continue;
        found = true;
        if (strcmp(v, value) == 0)
            continue;
        snprintf(line, sizeof line, "%s = %s%s%s", key, value, comment ? " " : "",
                 comment ? comment : "");
        free(ini->lines[i]);
        ini->lines[i] = xstrdup(line);
    }
    if (found)
        return;
    snprintf(line, sizeof line, "%s = %s", key, value);
    if (have_section) {
        ini_insert(ini, last, line);
        return;
    }
    if (ini->n > 0 && *skip_blanks(ini->lines[ini->n - 1]) != '\0')
        ini_insert(ini, ini->n, "");
    snprintf(sec, sizeof sec, "[%s]", section);
    ini_insert(ini, ini->n, sec);
    ini_insert(ini, ini->n, line);
}

/* ------------------------------------------------------------ arguments */

static bool valid_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > ID_MAX)
        return false;
    for (; *s; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("_.:-", *s)))
            return false;
    }
    return true;
}

/* A value that lockerd.conf can hold as written: no control characters, nothing that
 * inih would cut off as a comment, no blanks at either end. */
static bool valid_value(const char *s)
{
    size_t n = strlen(s);
    if (n > 0 && (s[0] == ' ' || s[0] == '\t' || s[0] == ';' || s[n - 1] == ' '))
        return false;
    for (const char *q = s; *q; q++) {
        if ((unsigned char)*q < 0x20 || *q == 0x7f)
            return false;
        if (*q == ';' && q > s && (q[-1] == ' ' || q[-1] == '\t'))
            return false;
    }
    return true;
}

/* lockerd's own binary: /usr/sbin/lockerd, else the one next to this lockerctl. */
static const char *find_lockerd(struct prov *p)
{
    if (access(DEFAULT_LOCKERD, X_OK) == 0)
        return DEFAULT_LOCKERD;
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        char dir[PATH_MAX];
        dir_of(self, dir, sizeof dir);
        snprintf(p->lockerd_buf, sizeof p->lockerd_buf, "%s/lockerd", dir);
        if (access(p->lockerd_buf, X_OK) == 0)
            return p->lockerd_buf;
    }
    return DEFAULT_LOCKERD;
}

/* Counts the certificates in a PEM text. */
static int pem_cert_count(const char *pem, size_t len)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    int n = 0;
    X509 *x;
    while (bio && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        X509_free(x);
        n++;
    }
    BIO_free(bio);
    ERR_clear_error();
    return n;
}

/* The config's directory (absolute), for its relative paths as lockerd reads them. */
static void config_dir(const char *config, char *dir, size_t size)
{
    char d[PATH_MAX];
    dir_of(config, d, sizeof d);
    if (size < PATH_MAX || realpath(d, dir) == NULL)
        snprintf(dir, size, "%s", d);
}

static int parse_args(struct prov *p, int argc, char **argv)
{
    static const struct {
        const char *name;
        size_t offset;
    } valued[] = {
        {"--station", offsetof(struct prov, station)},
        {"--url", 0},
        {"--token", offsetof(struct prov, token)},
        {"--ca", offsetof(struct prov, ca_arg)},
        {"--name", offsetof(struct prov, name)},
        {"--config", offsetof(struct prov, config)},
        {"--template", offsetof(struct prov, template_path)},
        {"--state-dir", 0},
        {"--lockerd", offsetof(struct prov, lockerd)},
    };
    const char *url = NULL, *state_dir = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--dry-run") == 0) {
            p->dry_run = true;
            continue;
        }
        size_t j;
        for (j = 0; j < sizeof valued / sizeof valued[0]; j++) {
            if (strcmp(argv[i], valued[j].name) == 0)
                break;
        }
        if (j == sizeof valued / sizeof valued[0]) {
            if (strncmp(argv[i], "-", 1) == 0)
                return usage_error("unknown option %s", argv[i]);
            return usage_error("unexpected argument '%s'", argv[i]);
        }
        if (i + 1 >= argc)
            return usage_error("%s", "an option is missing its value");
        const char *v = argv[++i];
        if (strcmp(valued[j].name, "--url") == 0)
            url = v;
        else if (strcmp(valued[j].name, "--state-dir") == 0)
            state_dir = v;
        else
            *(const char **)(void *)((char *)p + valued[j].offset) = v;
    }
    static const char *const required[] = {"--station", "--url", "--token", "--ca"};
    const char *have[] = {p->station, url, p->token, p->ca_arg};
    for (size_t i = 0; i < 4; i++) {
        if (have[i] == NULL)
            return usage_error("provision needs %s", required[i]);
    }
    if (!valid_id(p->station))
        return usage_error("--station: '%s' is not a station id (1 to %d letters, digits, "
                           "'_', '.', ':', '-')",
                           p->station, ID_MAX);
    if (strncmp(url, "https://", 8) != 0 || url[8] == '\0' || strlen(url) >= sizeof p->url ||
        strpbrk(url, " \t\"\\") != NULL || !valid_value(url))
        return usage_error("--url must be an https:// URL, not '%s'", url);
    snprintf(p->url, sizeof p->url, "%s", url);
    for (size_t n = strlen(p->url); n > 8 && p->url[n - 1] == '/'; n--)
        p->url[n - 1] = '\0';
    /* "--token -" reads it from stdin, so that it never shows in the process list
     * (ps, /proc/PID/cmdline) while enrollment runs. */
    static char token_buf[300];
    if (strcmp(p->token, "-") == 0) {
        if (fgets(token_buf, sizeof token_buf, stdin) == NULL)
            return usage_error("%s", "--token -: no token on standard input");
        token_buf[strcspn(token_buf, "\r\n")] = '\0';
        p->token = token_buf;
    }
    if (p->token[0] == '\0' || strlen(p->token) > 256 ||
        strspn(p->token, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                         "abcdefghijklmnopqrstuvwxyz"
                         "0123456789._~+/=-") != strlen(p->token))
        return usage_error("%s", "--token is not an enrollment token");
    if (p->name && (strlen(p->name) > NAME_MAX_BYTES || !valid_value(p->name)))
        return usage_error("--name: at most %d bytes, no control characters, no ' ;'",
                           NAME_MAX_BYTES);
    if (!p->config)
        p->config = DEFAULT_CONFIG;
    if (!p->lockerd)
        p->lockerd = find_lockerd(p);

    p->ca_pem = read_file(p->ca_arg, FILE_MAX, &p->ca_len);
    if (p->ca_pem == NULL)
        return usage_error("cannot read --ca %s: %s", p->ca_arg, strerror(errno));
    if (pem_cert_count(p->ca_pem, p->ca_len) == 0)
        return usage_error("--ca %s holds no PEM certificate", p->ca_arg);
    if (p->template_path) {
        p->tmpl = read_file(p->template_path, FILE_MAX, NULL);
        if (p->tmpl == NULL)
            return usage_error("cannot read --template %s: %s", p->template_path, strerror(errno));
    }
    p->cfg_old = read_file(p->config, FILE_MAX, NULL);
    if (p->cfg_old == NULL && errno != ENOENT)
        return usage_error("cannot read --config %s: %s", p->config, strerror(errno));

    /* The state directory: --state-dir, else the config's, else the default. */
    char cwd[PATH_MAX], cdir[PATH_MAX], value[PATH_MAX];
    bool ok;
    if (state_dir) {
        if (state_dir[0] == '\0' || getcwd(cwd, sizeof cwd) == NULL)
            return usage_error("--state-dir: cannot use '%s'", state_dir);
        ok = absolute_path(state_dir, cwd, p->state_dir, sizeof p->state_dir);
    } else {
        struct ini ini;
        ini_load(&ini, p->cfg_old ? p->cfg_old : "");
        bool set = ini_get(&ini, "station", "state_dir", value, sizeof value) && value[0];
        ini_free(&ini);
        config_dir(p->config, cdir, sizeof cdir);
        ok =
            absolute_path(set ? value : DEFAULT_STATE_DIR, cdir, p->state_dir, sizeof p->state_dir);
    }
    if (!ok || !valid_value(p->state_dir) || strlen(p->state_dir) > PATH_MAX - 64)
        return usage_error("%s", "the state directory's name is too long or not usable");
    snprintf(p->tls_dir, sizeof p->tls_dir, "%s/tls", p->state_dir);
    snprintf(p->key_path, sizeof p->key_path, "%s/client.key", p->tls_dir);
    snprintf(p->cert_path, sizeof p->cert_path, "%s/client.pem", p->tls_dir);
    snprintf(p->ca_path, sizeof p->ca_path, "%s/ca.pem", p->tls_dir);
    snprintf(p->site_key_path, sizeof p->site_key_path, "%s/site.key", p->state_dir);
    return 0;
}

/* ------------------------------------------------------------ 1. state-dir */

/* One directory: made 0750 if missing. *made is set when it was (or would be). */
static bool ensure_dir(struct prov *p, const char *dir, bool *made, char *err, size_t errlen)
{
    struct stat sb;
    *made = false;
    if (lstat(dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) {
            snprintf(err, errlen, "%s exists and is not a directory", dir);
            return false;
        }
        if (sb.st_mode & 0002) {
            snprintf(err, errlen, "%s is writable by everyone (mode %04o): chmod 750 it", dir,
                     (unsigned)(sb.st_mode & 07777));
            return false;
        }
        return true;
    }
    if (errno != ENOENT) {
        snprintf(err, errlen, "%s: %s", dir, strerror(errno));
        return false;
    }
    *made = true;
    if (p->dry_run)
        return true;
    if (mkdir(dir, 0750) != 0 || chmod(dir, 0750) != 0) {
        snprintf(err, errlen, "cannot create %s: %s", dir, strerror(errno));
        return false;
    }
    char parent[PATH_MAX];
    dir_of(dir, parent, sizeof parent);
    sync_dir(parent);
    return true;
}

static bool step_state_dir(struct prov *p)
{
    char err[PATH_MAX + 128], parent[PATH_MAX];
    bool made_state = false, made_tls = false;
    struct stat sb;
    dir_of(p->state_dir, parent, sizeof parent);
    if (stat(parent, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return step(p, "state-dir", ST_FAIL, "%s: its parent %s is not a directory", p->state_dir,
                    parent);
    if (!ensure_dir(p, p->state_dir, &made_state, err, sizeof err))
        return step(p, "state-dir", ST_FAIL, "%s", err);
    if (made_state && p->dry_run)
        made_tls = true;
    else if (!ensure_dir(p, p->tls_dir, &made_tls, err, sizeof err))
        return step(p, "state-dir", ST_FAIL, "%s", err);
    if (!made_state && !made_tls)
        return step(p, "state-dir", ST_OK, "%s and tls/ exist", p->state_dir);
    return step(p, "state-dir", p->dry_run ? ST_WOULD : ST_CHANGED, "%s %s (0750)",
                p->dry_run ? "would create" : "created", made_state ? p->state_dir : p->tls_dir);
}

/* ------------------------------------------------------------ 2. key */

static int no_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return 0;
}

static bool is_p256(EVP_PKEY *k)
{
    char group[64] = "";
    if (!EVP_PKEY_is_a(k, "EC") ||
        !EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, NULL))
        return false;
    return strcmp(group, "prime256v1") == 0 || strcmp(group, "P-256") == 0;
}

/* Loads the existing key; false (with a step FAIL) if it cannot be used. */
static bool load_key(struct prov *p, const struct stat *sb)
{
    static const char *advice = "move it away to make a new one (the station then needs a "
                                "new enrollment token)";
    if (!S_ISREG(sb->st_mode))
        return step(p, "key", ST_FAIL, "%s is not a regular file: %s", p->key_path, advice);
    if (sb->st_mode & 0077)
        return step(p, "key", ST_FAIL,
                    "%s is readable or writable by others (mode %04o): chmod 600 it if no one "
                    "else can have read it, else %s",
                    p->key_path, (unsigned)(sb->st_mode & 07777), advice);
    FILE *f = fopen(p->key_path, "re");
    if (f == NULL)
        return step(p, "key", ST_FAIL, "cannot read %s: %s", p->key_path, strerror(errno));
    p->key = PEM_read_PrivateKey(f, NULL, no_password, NULL);
    fclose(f);
    if (p->key == NULL)
        return step(p, "key", ST_FAIL, "%s is not an unencrypted PEM private key (%s): %s",
                    p->key_path, ssl_error(), advice);
    if (!is_p256(p->key)) {
        const char *type = EVP_PKEY_get0_type_name(p->key);
        return step(p, "key", ST_FAIL, "%s is a%s %s key, not EC P-256: %s", p->key_path,
                    type && strchr("AEIOU", type[0]) ? "n" : "", type ? type : "unknown", advice);
    }
    return step(p, "key", ST_OK, "%s: EC P-256, mode 0600", p->key_path);
}

/* Writes a new key with O_EXCL: a key that appeared meanwhile is never overwritten. */
static bool make_key(struct prov *p)
{
    p->key = EVP_EC_gen("P-256");
    if (p->key == NULL)
        return step(p, "key", ST_FAIL, "cannot generate an EC P-256 key: %s", ssl_error());
    int fd = open(p->key_path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return step(p, "key", ST_FAIL, "cannot create %s: %s", p->key_path, strerror(errno));
    bool ok = fchmod(fd, 0600) == 0;
    BIO *bio = BIO_new(BIO_s_mem());
    char *pem = NULL;
    long len = 0;
    if (ok && bio && PEM_write_bio_PrivateKey(bio, p->key, NULL, NULL, 0, NULL, NULL) == 1)
        len = BIO_get_mem_data(bio, &pem);
    ok = ok && len > 0 && write_all(fd, pem, (size_t)len) && fsync(fd) == 0;
    int e = errno;
    if (bio) {
        /* The PEM text is the secret itself: wipe it before it goes back to the heap. */
        if (pem && len > 0)
            OPENSSL_cleanse(pem, (size_t)len);
        BIO_free(bio);
    }
    if (close(fd) != 0)
        ok = false;
    if (!ok) {
        unlink(p->key_path);
        return step(p, "key", ST_FAIL, "cannot write %s: %s", p->key_path,
                    len > 0 ? strerror(e) : ssl_error());
    }
    sync_dir(p->tls_dir);
    return step(p, "key", ST_CHANGED, "generated EC P-256 key %s (0600)", p->key_path);
}

static bool step_key(struct prov *p)
{
    struct stat sb;
    if (lstat(p->key_path, &sb) == 0)
        return load_key(p, &sb);
    if (errno != ENOENT)
        return step(p, "key", ST_FAIL, "%s: %s", p->key_path, strerror(errno));
    if (p->dry_run)
        return step(p, "key", ST_WOULD, "would generate an EC P-256 key %s (0600)", p->key_path);
    return make_key(p);
}

/* ------------------------------------------------------------ certificates */

static X509 *pem_to_x509(const char *pem, size_t len)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    ERR_clear_error();
    return x;
}

/* The certificate's only subject CN, into cn; false if there is not exactly one. */
static bool cert_cn(X509 *x, char *cn, size_t size)
{
    X509_NAME *name = X509_get_subject_name(x);
    int i = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
    if (i < 0 || X509_NAME_get_index_by_NID(name, NID_commonName, i) >= 0)
        return false;
    ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
    unsigned char *utf8 = NULL;
    int n = ASN1_STRING_to_UTF8(&utf8, s);
    if (n < 0)
        return false;
    bool ok = (size_t)n < size && memchr(utf8, '\0', (size_t)n) == NULL;
    if (ok)
        snprintf(cn, size, "%.*s", n, (const char *)utf8);
    OPENSSL_free(utf8);
    return ok;
}

static void asn1_time_text(const ASN1_TIME *t, char *buf, size_t size)
{
    struct tm tm;
    if (ASN1_TIME_to_tm(t, &tm) == 1)
        strftime(buf, size, "%Y-%m-%d", &tm);
    else
        snprintf(buf, size, "?");
}

/* Whether x is a usable certificate for our key and station: why not into why. With
 * min_days, also that it is valid for at least that many more days. */
static bool cert_usable(struct prov *p, X509 *x, int min_days, char *why, size_t size)
{
    char cn[128], until[32];
    time_t now = time(NULL), later = now + (time_t)min_days * 86400;
    asn1_time_text(X509_get0_notAfter(x), until, sizeof until);
    if (X509_check_private_key(x, p->key) != 1) {
        ERR_clear_error();
        snprintf(why, size, "it is not for the key %s", p->key_path);
        return false;
    }
    if (!cert_cn(x, cn, sizeof cn) || strcmp(cn, p->station) != 0) {
        snprintf(why, size, "its subject CN is not %s", p->station);
        return false;
    }
    if (X509_cmp_time(X509_get0_notBefore(x), &now) > 0) {
        snprintf(why, size, "it is not valid yet (is the clock right?)");
        return false;
    }
    if (X509_cmp_time(X509_get0_notAfter(x), &later) <= 0) {
        snprintf(why, size, "it expires %s", until);
        return false;
    }
    snprintf(why, size, "valid until %s", until);
    return true;
}

/* Whether the enrollment can be skipped: a certificate for this key and station that
 * is valid long enough, and the CA copy is the one given now. */
static void check_existing_cert(struct prov *p, char *why, size_t size)
{
    size_t len;
    char *pem = read_file(p->cert_path, FILE_MAX, &len);
    p->need_enroll = true;
    if (pem == NULL) {
        snprintf(why, size, "no certificate yet");
        return;
    }
    X509 *x = pem_to_x509(pem, len);
    free(pem);
    char reason[PATH_MAX + 64];
    if (x == NULL) {
        snprintf(why, size, "%s does not parse", p->cert_path);
        return;
    }
    if (!cert_usable(p, x, RENEW_DAYS, reason, sizeof reason)) {
        snprintf(why, size, "%s: %s", p->cert_path, reason);
        X509_free(x);
        return;
    }
    X509_free(x);
    size_t ca_len;
    char *ca = read_file(p->ca_path, FILE_MAX, &ca_len);
    bool same_ca = ca && ca_len == p->ca_len && memcmp(ca, p->ca_pem, ca_len) == 0;
    free(ca);
    if (!same_ca) {
        snprintf(why, size, "%s is not a copy of %s", p->ca_path, p->ca_arg);
        return;
    }
    p->need_enroll = false;
    snprintf(why, size, "%s: CN=%s, for this key, %s; %s unchanged", p->cert_path, p->station,
             reason, p->ca_path);
}

/* ------------------------------------------------------------ 3. csr */

static bool step_csr(struct prov *p)
{
    if (!p->need_enroll)
        return step(p, "csr", ST_SKIP, "not needed: the certificate is still good");
    if (p->key == NULL)
        return step(p, "csr", ST_WOULD, "would make a request for CN=%s with the new key",
                    p->station);
    X509_REQ *req = X509_REQ_new();
    X509_NAME *name = X509_NAME_new();
    BIO *bio = BIO_new(BIO_s_mem());
    bool ok = req && name && bio && X509_REQ_set_version(req, 0) == 1 &&
              X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                         (const unsigned char *)p->station, -1, -1, 0) == 1 &&
              X509_REQ_set_subject_name(req, name) == 1 && X509_REQ_set_pubkey(req, p->key) == 1 &&
              X509_REQ_sign(req, p->key, EVP_sha256()) > 0 && PEM_write_bio_X509_REQ(bio, req) == 1;
    if (ok) {
        char *data;
        long len = BIO_get_mem_data(bio, &data);
        p->csr_pem = xmalloc((size_t)len + 1);
        memcpy(p->csr_pem, data, (size_t)len);
        p->csr_pem[len] = '\0';
    }
    BIO_free(bio);
    X509_NAME_free(name);
    X509_REQ_free(req);
    if (!ok)
        return step(p, "csr", ST_FAIL, "cannot make the request: %s", ssl_error());
    return step(p, "csr", ST_OK, "request for CN=%s, signed with the key (SHA-256)", p->station);
}

/* ------------------------------------------------------------ HTTPS */

struct http {
    long status;
    char *body;
    size_t len;
    bool too_big;
    CURLcode rc;
    char err[CURL_ERROR_SIZE];
};

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    struct http *h = arg;
    size_t len = size * n;
    if (h->len + len > BODY_MAX) {
        h->too_big = true;
        return 0;
    }
    char *grown = realloc(h->body, h->len + len + 1);
    if (grown == NULL)
        return 0;
    h->body = grown;
    memcpy(h->body + h->len, data, len);
    h->len += len;
    h->body[h->len] = '\0';
    return len;
}

/* One HTTPS request, the server verified against ca (a file) only. post: a JSON body
 * (POST), else GET. With cert and key: mutual TLS. False only when no answer came. */
static bool https(const char *url, const char *ca, const char *cert, const char *key,
                  const char *bearer, const char *post, struct http *h)
{
    memset(h, 0, sizeof *h);
    CURL *c = curl_easy_init();
    if (c == NULL) {
        snprintf(h->err, sizeof h->err, "cannot initialise libcurl");
        h->rc = CURLE_FAILED_INIT;
        return false;
    }
    struct curl_slist *headers = NULL;
    char auth[300], ua[64];
    headers = curl_slist_append(headers, "Accept: application/json");
    if (post)
        headers = curl_slist_append(headers, "Content-Type: application/json");
    if (bearer) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", bearer);
        headers = curl_slist_append(headers, auth);
    }
    snprintf(ua, sizeof ua, "lockerctl/%s", LOCKERD_VERSION);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, h->err);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_PROXY, "");
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, HTTP_CONNECT_MS);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, HTTP_TIMEOUT_MS);
    /* The city's server is trusted through this CA alone, never the system's store. */
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(c, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    curl_easy_setopt(c, CURLOPT_CAPATH, NULL);
    curl_easy_setopt(c, CURLOPT_CAINFO, ca);
    if (cert && key) {
        curl_easy_setopt(c, CURLOPT_SSLCERT, cert);
        curl_easy_setopt(c, CURLOPT_SSLCERTTYPE, "PEM");
        curl_easy_setopt(c, CURLOPT_SSLKEY, key);
        curl_easy_setopt(c, CURLOPT_SSLKEYTYPE, "PEM");
    }
    curl_easy_setopt(c, CURLOPT_USERAGENT, ua);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, h);
    if (post) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, post);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(post));
    }
    h->rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &h->status);
    curl_easy_cleanup(c);
    curl_slist_free_all(headers);
    OPENSSL_cleanse(auth, sizeof auth);
    if (h->rc != CURLE_OK) {
        if (h->too_big)
            snprintf(h->err, sizeof h->err, "the answer is larger than %zu bytes", BODY_MAX);
        else if (h->err[0] == '\0')
            snprintf(h->err, sizeof h->err, "%s", curl_easy_strerror(h->rc));
        return false;
    }
    return true;
}

static bool tls_error(CURLcode rc)
{
    return rc == CURLE_SSL_CONNECT_ERROR || rc == CURLE_PEER_FAILED_VERIFICATION ||
           rc == CURLE_SSL_CERTPROBLEM || rc == CURLE_SSL_CIPHER ||
           rc == CURLE_SSL_CACERT_BADFILE || rc == CURLE_SSL_ISSUER_ERROR ||
           rc == CURLE_SSL_CRL_BADFILE || rc == CURLE_SSL_INVALIDCERTSTATUS ||
           rc == CURLE_SSL_PINNEDPUBKEYNOTMATCH;
}

/* "401 Unauthorized: detail" from a problem+json answer (or the status alone). */
static void problem_text(const struct http *h, char *buf, size_t size)
{
    json_t *j = h->body ? json_loadb(h->body, h->len, 0, NULL) : NULL;
    const char *title = json_string_value(json_object_get(j, "title"));
    const char *detail = json_string_value(json_object_get(j, "detail"));
    snprintf(buf, size, "%ld%s%s%s%s", h->status, title ? " " : "", title ? title : "",
             detail ? ": " : "", detail ? detail : "");
    json_decref(j);
}

/* ------------------------------------------------------------ 4. enroll */

/* Whether the first certificate of --ca is among those of caChain. */
static bool ca_in_chain(struct prov *p, const char *chain)
{
    X509 *ours = pem_to_x509(p->ca_pem, p->ca_len);
    BIO *bio = BIO_new_mem_buf(chain, -1);
    bool found = false;
    X509 *x;
    while (ours && bio && !found && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        found = X509_cmp(ours, x) == 0;
        X509_free(x);
    }
    BIO_free(bio);
    X509_free(ours);
    ERR_clear_error();
    return found;
}

static bool step_enroll(struct prov *p, const char *why)
{
    char url[1200], msg[MSG_MAX], reason[PATH_MAX + 64];
    snprintf(url, sizeof url, "%s/provisioning/enroll", p->url);
    if (!p->need_enroll)
        return step(p, "enroll", ST_SKIP, "%s", why);
    if (p->dry_run)
        return step(p, "enroll", ST_WOULD, "would request a certificate from %s (%s)", url, why);

    json_t *req = json_pack("{s:s,s:s}", "stationId", p->station, "csr", p->csr_pem);
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    struct http h;
    bool answered = https(url, p->ca_arg, NULL, NULL, p->token, body, &h);
    free(body);
    if (!answered) {
        bool tls = tls_error(h.rc);
        step(p, "enroll", ST_FAIL, "%s %s: %s%s", tls ? "TLS with" : "cannot reach", url, h.err,
             tls ? " (is --ca the CA of the city's server?)" : "");
        free(h.body);
        return false;
    }
    if (h.status != 201) {
        problem_text(&h, msg, sizeof msg);
        const char *hint = h.status == 401   ? " (the token is unknown or used up: ask the "
                                               "city for a new one)"
                           : h.status == 403 ? " (the token is for another station)"
                                             : "";
        step(p, "enroll", ST_FAIL, "%s answered %s%s", url, msg, hint);
        free(h.body);
        return false;
    }

    /* The certificate is checked before anything is written. */
    json_t *j = json_loadb(h.body, h.len, 0, NULL);
    free(h.body);
    const char *cert = json_string_value(json_object_get(j, "certificate"));
    const char *chain = json_string_value(json_object_get(j, "caChain"));
    const char *sid = json_string_value(json_object_get(j, "stationId"));
    X509 *x = cert ? pem_to_x509(cert, strlen(cert)) : NULL;
    bool ok = false;
    if (!cert || !chain || !sid)
        snprintf(msg, sizeof msg, "the answer lacks stationId, certificate or caChain");
    else if (strcmp(sid, p->station) != 0)
        snprintf(msg, sizeof msg, "the answer is for station %.64s", sid);
    else if (x == NULL)
        snprintf(msg, sizeof msg, "the certificate in the answer does not parse");
    else if (!cert_usable(p, x, 0, reason, sizeof reason))
        snprintf(msg, sizeof msg, "the certificate in the answer is unusable: %s", reason);
    else if (pem_cert_count(chain, strlen(chain)) == 0)
        snprintf(msg, sizeof msg, "the caChain in the answer holds no certificate");
    else
        ok = true;
    X509_free(x);
    if (!ok) {
        json_decref(j);
        return step(p, "enroll", ST_FAIL, "%s", msg);
    }
    /* ca.pem first: a client.pem beside an old ca.pem would look complete. */
    bool same_chain = ca_in_chain(p, chain);
    char err[PATH_MAX + 128];
    ok = write_atomic(p->ca_path, p->ca_pem, p->ca_len, 0644, false, (uid_t)-1, (gid_t)-1, err,
                      sizeof err) &&
         write_atomic(p->cert_path, cert, strlen(cert), 0644, false, (uid_t)-1, (gid_t)-1, err,
                      sizeof err);
    json_decref(j);
    if (!ok)
        return step(p, "enroll", ST_FAIL, "%s", err);
    return step(p, "enroll", ST_CHANGED, "certificate for CN=%s %s in %s; CA %s copied to %s%s",
                p->station, reason, p->cert_path, p->ca_arg, p->ca_path,
                same_chain ? "" : " (note: the city's caChain does not contain this CA)");
}

/* ------------------------------------------------------------ 5. site-key */

static bool step_site_key(struct prov *p)
{
    struct stat sb;
    const char *path = p->site_key_path;
    if (lstat(path, &sb) == 0) {
        if (!S_ISREG(sb.st_mode))
            return step(p, "site-key", ST_FAIL, "%s is not a regular file", path);
        if (sb.st_mode & 0077)
            return step(p, "site-key", ST_FAIL,
                        "%s is readable by others (mode %04o): chmod 600 it", path,
                        (unsigned)(sb.st_mode & 07777));
        if (sb.st_size < SITE_KEY_MIN)
            return step(p, "site-key", ST_FAIL, "%s is too short (at least %d bytes)", path,
                        SITE_KEY_MIN);
        return step(p, "site-key", ST_OK, "%s exists (%lld bytes, 0600)", path,
                    (long long)sb.st_size);
    }
    if (errno != ENOENT)
        return step(p, "site-key", ST_FAIL, "%s: %s", path, strerror(errno));
    if (p->dry_run)
        return step(p, "site-key", ST_WOULD, "would generate %s (%d random bytes, 0600)", path,
                    SITE_KEY_LEN);
    uint8_t key[SITE_KEY_LEN];
    if (RAND_bytes(key, sizeof key) != 1)
        return step(p, "site-key", ST_FAIL, "cannot generate a key: %s", ssl_error());
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    bool ok = fd >= 0 && fchmod(fd, 0600) == 0 && write_all(fd, key, sizeof key) && fsync(fd) == 0;
    int e = errno;
    OPENSSL_cleanse(key, sizeof key);
    if (fd >= 0 && close(fd) != 0 && ok) {
        ok = false;
        e = errno;
    }
    if (!ok) {
        if (fd >= 0)
            unlink(path);
        return step(p, "site-key", ST_FAIL, "cannot write %s: %s", path, strerror(e));
    }
    sync_dir(p->state_dir);
    return step(p, "site-key", ST_CHANGED,
                "generated %s (%d random bytes, 0600; stations that share cards need the same "
                "key)",
                path, SITE_KEY_LEN);
}

/* ------------------------------------------------------------ 6. config */

/* The template with its placeholders filled in; NULL and a message for one it does
 * not know. */
static char *fill_template(struct prov *p, const char *name, char *err, size_t errlen)
{
    const struct {
        const char *tag, *value;
    } subst[] = {
        {"@STATION_ID@", p->station},
        {"@NAME@", name},
        {"@API_URL@", p->url},
        {"@STATE_DIR@", p->state_dir},
    };
    size_t cap = strlen(p->tmpl) + 1, len = 0;
    char *out = xmalloc(cap);
    for (const char *s = p->tmpl; *s;) {
        const char *val = NULL;
        size_t taglen = 0;
        if (*s == '@') {
            for (size_t i = 0; i < sizeof subst / sizeof subst[0]; i++) {
                if (strncmp(s, subst[i].tag, strlen(subst[i].tag)) == 0) {
                    val = subst[i].value;
                    taglen = strlen(subst[i].tag);
                }
            }
            size_t n = strspn(s + 1, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_");
            if (val == NULL && n > 0 && n <= PLACEHOLDER_MAX_LEN && s[n + 1] == '@') {
                snprintf(err, errlen, "%s: unknown placeholder %.*s", p->template_path, (int)n + 2,
                         s);
                free(out);
                return NULL;
            }
        }
        const char *piece = val ? val : s;
        size_t plen = val ? strlen(val) : 1;
        if (len + plen + 1 > cap) {
            cap = (len + plen + 1) * 2;
            char *grown = realloc(out, cap);
            if (grown == NULL)
                fatalx("out of memory");
            out = grown;
        }
        memcpy(out + len, piece, plen);
        len += plen;
        s += val ? taglen : 1;
    }
    out[len] = '\0';
    return out;
}

/* The config as it should be: cfg_new. */
static bool new_config(struct prov *p, char *err, size_t errlen)
{
    struct ini ini;
    char name[NAME_MAX_BYTES + 2] = "";
    ini_load(&ini, p->cfg_old ? p->cfg_old : "");
    if (!p->name)
        ini_get(&ini, "station", "name", name, sizeof name);
    if (p->tmpl) {
        ini_free(&ini);
        p->cfg_new = fill_template(p, p->name ? p->name : name, err, errlen);
        return p->cfg_new != NULL;
    }
    if (!p->cfg_old) {
        ini_free(&ini);
        snprintf(err, errlen, "no config %s: pass --template", p->config);
        return false;
    }
    ini_set(&ini, "station", "id", p->station);
    if (p->name)
        ini_set(&ini, "station", "name", p->name);
    /* Where the keys were put must be where lockerd looks. */
    char value[PATH_MAX], cdir[PATH_MAX], current[PATH_MAX];
    config_dir(p->config, cdir, sizeof cdir);
    bool set = ini_get(&ini, "station", "state_dir", value, sizeof value) && value[0];
    if (!absolute_path(set ? value : DEFAULT_STATE_DIR, cdir, current, sizeof current) ||
        strcmp(current, p->state_dir) != 0)
        ini_set(&ini, "station", "state_dir", p->state_dir);
    ini_set(&ini, "api", "url", p->url);
    ini_set(&ini, "api", "ca", p->ca_path);
    ini_set(&ini, "api", "cert", p->cert_path);
    ini_set(&ini, "api", "key", p->key_path);
    p->cfg_new = ini_text(&ini);
    ini_free(&ini);
    return true;
}

/* Lines that differ between a and b, as a rough measure for the report. */
static int changed_lines(const char *a, const char *b)
{
    struct ini x, y;
    ini_load(&x, a ? a : "");
    ini_load(&y, b);
    int n = 0;
    for (size_t i = 0; i < y.n; i++) {
        bool seen = false;
        for (size_t k = 0; k < x.n && !seen; k++)
            seen = strcmp(x.lines[k], y.lines[i]) == 0;
        n += !seen;
    }
    ini_free(&x);
    ini_free(&y);
    return n;
}

static bool step_config(struct prov *p)
{
    char err[PATH_MAX + 256];
    if (!new_config(p, err, sizeof err))
        return step(p, "config", ST_FAIL, "%s", err);
    const char *how = p->tmpl ? "from the template" : "[station] and [api] set";
    if (p->cfg_old && strcmp(p->cfg_old, p->cfg_new) == 0)
        return step(p, "config", ST_OK, "%s unchanged (%s)", p->config, how);
    int n = changed_lines(p->cfg_old, p->cfg_new);
    if (p->dry_run)
        return step(p, "config", ST_WOULD, "would %s %s (%s, %d new line%s)",
                    p->cfg_old ? "rewrite" : "write", p->config, how, n, n == 1 ? "" : "s");
    /* The new file keeps the old one's owner (root:lockerd as installed). */
    uid_t uid = (uid_t)-1;
    gid_t gid = (gid_t)-1;
    struct stat sb;
    if (geteuid() == 0) {
        struct group *gr = getgrnam("lockerd");
        if (stat(p->config, &sb) == 0) {
            uid = sb.st_uid;
            gid = sb.st_gid;
        } else if (gr) {
            uid = 0;
            gid = gr->gr_gid;
        }
    }
    if (!write_atomic(p->config, p->cfg_new, strlen(p->cfg_new), 0640, true, uid, gid, err,
                      sizeof err))
        return step(p, "config", ST_FAIL, "%s", err);
    return step(p, "config", ST_CHANGED, "wrote %s (%s, %d new line%s, 0640)%s%s%s", p->config, how,
                n, n == 1 ? "" : "s", p->cfg_old ? "; the old one is " : "",
                p->cfg_old ? p->config : "", p->cfg_old ? ".bak" : "");
}

/* ------------------------------------------------------------ 7. check */

/* Runs argv with stdin from /dev/null; its output into out/errout (NUL-terminated,
 * cut at OUTPUT_MAX). Returns the exit status, or -1 with errno. */
static int run(char *const argv[], char *out, char *errout)
{
    int po[2], pe[2];
    if (pipe2(po, O_CLOEXEC) != 0)
        return -1;
    if (pipe2(pe, O_CLOEXEC) != 0) {
        close(po[0]);
        close(po[1]);
        return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, po[1], 1);
    posix_spawn_file_actions_adddup2(&fa, pe[1], 2);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(po[1]);
    close(pe[1]);
    if (rc != 0) {
        close(po[0]);
        close(pe[0]);
        errno = rc;
        return -1;
    }
    struct pollfd fds[2] = {{.fd = po[0], .events = POLLIN}, {.fd = pe[0], .events = POLLIN}};
    char *bufs[2] = {out, errout};
    size_t lens[2] = {0, 0};
    int open_fds = 2;
    while (open_fds > 0) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || fds[i].revents == 0)
                continue;
            char tmp[4096];
            ssize_t n = read(fds[i].fd, tmp, sizeof tmp);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
                continue;
            }
            size_t room = OUTPUT_MAX - lens[i];
            size_t take = (size_t)n < room ? (size_t)n : room;
            memcpy(bufs[i] + lens[i], tmp, take);
            lens[i] += take;
        }
    }
    for (int i = 0; i < 2; i++) {
        if (fds[i].fd >= 0)
            close(fds[i].fd);
        bufs[i][lens[i]] = '\0';
    }
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* lockerd's message on one line: its lines joined, level prefixes ("<3>") dropped. */
static void one_line(const char *text, char *buf, size_t size)
{
    size_t n = 0;
    buf[0] = '\0';
    for (const char *s = text; *s && n + 1 < size;) {
        const char *nl = strchr(s, '\n');
        size_t len = nl ? (size_t)(nl - s) : strlen(s);
        const char *line = s;
        if (len >= 3 && line[0] == '<' && line[2] == '>') {
            line += 3;
            len -= 3;
        }
        if (len > 0) {
            int w = snprintf(buf + n, size - n, "%s%.*s", n ? "; " : "", (int)len, line);
            n = w < 0 || (size_t)w >= size - n ? size - 1 : n + (size_t)w;
        }
        s += (nl ? (size_t)(nl - s) + 1 : strlen(s));
    }
}

static bool step_check(struct prov *p)
{
    if (p->pending)
        return step(p, "check", ST_WOULD, "would check %s with %s -n", p->config, p->lockerd);
    char *out = xmalloc(OUTPUT_MAX + 1), *errout = xmalloc(OUTPUT_MAX + 1);
    char *argv[] = {(char *)p->lockerd, (char *)"-n", (char *)"-c", (char *)p->config, NULL};
    char msg[MSG_MAX];
    int rc = run(argv, out, errout);
    bool ok = false;
    if (rc < 0) {
        snprintf(msg, sizeof msg, "cannot run %s: %s (pass --lockerd PATH)", p->lockerd,
                 strerror(errno));
    } else if (rc != 0) {
        char text[600];
        one_line(errout[0] ? errout : out, text, sizeof text);
        snprintf(msg, sizeof msg, "%s -n -c %s failed: %s", p->lockerd, p->config,
                 text[0] ? text : "(no message)");
    } else {
        /* What lockerd will use is what was provisioned: the normalised config. */
        struct ini ini;
        ini_load(&ini, out);
        const struct {
            const char *section, *key, *want;
        } expect[] = {
            {"station", "id", p->station},
            {"station", "state_dir", p->state_dir},
            {"api", "url", p->url},
            {"api", "ca", p->ca_path},
            {"api", "cert", p->cert_path},
            {"api", "key", p->key_path},
            {"station", "site_key_file", NULL},
        };
        char value[PATH_MAX];
        ok = true;
        for (size_t i = 0; ok && i < sizeof expect / sizeof expect[0]; i++) {
            if (!ini_get(&ini, expect[i].section, expect[i].key, value, sizeof value))
                value[0] = '\0';
            if (expect[i].want && strcmp(value, expect[i].want) != 0) {
                snprintf(msg, sizeof msg, "the config sets [%s] %s = %s, but provisioning used %s",
                         expect[i].section, expect[i].key, value[0] ? value : "(empty)",
                         expect[i].want);
                ok = false;
            } else if (!expect[i].want && strcmp(value, p->site_key_path) != 0) {
                snprintf(msg, sizeof msg,
                         "lockerd -n passed; note: [station] site_key_file = %s, not %s", value,
                         p->site_key_path);
            } else if (!expect[i].want) {
                snprintf(msg, sizeof msg, "%s -n -c %s passed", p->lockerd, p->config);
            }
        }
        ini_free(&ini);
    }
    free(out);
    free(errout);
    return step(p, "check", ok ? ST_OK : ST_FAIL, "%s", msg);
}

/* ------------------------------------------------------------ 8. verify */

static bool step_verify(struct prov *p)
{
    char url[1200], msg[MSG_MAX];
    snprintf(url, sizeof url, "%s/stations/%s", p->url, p->station);
    if (p->pending)
        return step(p, "verify", ST_WOULD, "would GET %s with the station's certificate", url);
    struct http h;
    if (!https(url, p->ca_path, p->cert_path, p->key_path, NULL, NULL, &h)) {
        bool tls = tls_error(h.rc);
        step(p, "verify", ST_FAIL, "%s %s: %s", tls ? "TLS with" : "cannot reach", url, h.err);
        free(h.body);
        return false;
    }
    if (h.status != 200) {
        problem_text(&h, msg, sizeof msg);
        const char *hint = h.status == 404   ? " (the city has no configuration for this "
                                               "station yet)"
                           : h.status == 403 ? " (the certificate is for another station)"
                                             : "";
        step(p, "verify", ST_FAIL, "%s answered %s%s", url, msg, hint);
        free(h.body);
        return false;
    }
    json_t *j = json_loadb(h.body, h.len, 0, NULL);
    free(h.body);
    const char *name = json_string_value(json_object_get(j, "name"));
    bool ok = step(p, "verify", ST_OK, "the city knows %s as \"%s\" (mutual TLS)", p->station,
                   name ? name : "");
    json_decref(j);
    return ok;
}

/* ------------------------------------------------------------ 9. owner */

static bool step_owner(struct prov *p)
{
    if (geteuid() != 0)
        return step(p, "owner", ST_SKIP, "not root: the files keep their owner");
    struct passwd *pw = getpwnam("lockerd");
    if (pw == NULL)
        return step(p, "owner", ST_SKIP, "no user lockerd: the files keep their owner");
    const char *paths[] = {p->state_dir, p->tls_dir, p->key_path,
                           p->cert_path, p->ca_path, p->site_key_path};
    int changed = 0;
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        struct stat sb;
        if (lstat(paths[i], &sb) != 0) {
            if (errno == ENOENT)
                continue;
            return step(p, "owner", ST_FAIL, "%s: %s", paths[i], strerror(errno));
        }
        if (sb.st_uid == pw->pw_uid && sb.st_gid == pw->pw_gid)
            continue;
        changed++;
        if (!p->dry_run && lchown(paths[i], pw->pw_uid, pw->pw_gid) != 0)
            return step(p, "owner", ST_FAIL, "cannot chown %s to lockerd: %s", paths[i],
                        strerror(errno));
    }
    if (p->pending && changed == 0)
        return step(p, "owner", ST_WOULD, "would give the new files to lockerd:lockerd");
    if (changed == 0)
        return step(p, "owner", ST_OK, "the files belong to lockerd:lockerd");
    return step(p, "owner", p->dry_run ? ST_WOULD : ST_CHANGED, "%s %d file%s to lockerd:lockerd",
                p->dry_run ? "would give" : "gave", changed, changed == 1 ? "" : "s");
}

/* ------------------------------------------------------------ main */

static void run_steps(struct prov *p)
{
    char why[MSG_MAX];
    if (!step_state_dir(p))
        return;
    /* With --dry-run on a fresh station there is nothing to look at below. */
    if (!step_key(p))
        return;
    if (p->key)
        check_existing_cert(p, why, sizeof why);
    else {
        p->need_enroll = true;
        snprintf(why, sizeof why, "no key yet");
    }
    if (!step_csr(p) || !step_enroll(p, why) || !step_site_key(p) || !step_config(p) ||
        !step_check(p))
        return;
    /* A failed verification (the network may be down) still leaves the files to be
     * given to lockerd. */
    step_verify(p);
    step_owner(p);
}

int provision_main(int argc, char **argv, bool json)
{
    struct prov p = {.json = json};
    int rc = parse_args(&p, argc, argv);
    if (rc == 0) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        p.steps = json_array();
        run_steps(&p);
        if (json) {
            json_t *out = json_pack("{s:s,s:b,s:b,s:O}", "station", p.station, "dryRun", p.dry_run,
                                    "ok", !p.failed, "steps", p.steps);
            json_dumpf(out, stdout, JSON_INDENT(2));
            putchar('\n');
            json_decref(out);
        }
        json_decref(p.steps);
        curl_global_cleanup();
        if (p.failed)
            fprintf(stderr, "lockerctl: provision: step %s failed\n", p.failed_step);
        rc = p.failed ? EXIT_FAILED : 0;
    }
    EVP_PKEY_free(p.key);
    free(p.csr_pem);
    free(p.ca_pem);
    free(p.tmpl);
    free(p.cfg_old);
    free(p.cfg_new);
    return rc;
}
