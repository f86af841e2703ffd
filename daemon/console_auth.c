/*
 * console_auth.c - accounts (scrypt), sessions and the login throttle of the
 * manager console. See console_auth.h for the file format and the rules.
 */
#include "daemon/console_auth.h"

#include <errno.h>
#include <grp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "daemon/log.h"

#define MAX_ACCOUNTS   64
#define MAX_SESSIONS   64
#define MAX_THROTTLE   256
#define SALT_LEN       16
#define HASH_LEN       32
#define SESSION_MAX_S  INT64_C(43200) /* 12 h, absolute lifetime */
#define THROTTLE_MAX_S INT64_C(900)   /* 15 min */

struct account {
    char name[AUTH_NAME_MAX + 1];
    char role[16];
    int logn, r, p;
    uint8_t salt[SALT_LEN];
    uint8_t hash[HASH_LEN];
};

struct session {
    char id[65];
    struct session_info info;
    int64_t created_s, last_s;
};

struct throttle {
    char key[80]; /* "a:NAME" or "ip:ADDRESS" */
    int failures;
    int64_t until_s;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct account accounts[MAX_ACCOUNTS];
static int naccounts;
static struct session sessions[MAX_SESSIONS];
static struct throttle throttles[MAX_THROTTLE];
static int idle_s = 900;

void auth_set_idle(int seconds)
{
    idle_s = seconds;
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > AUTH_NAME_MAX)
        return false;
    for (; *s; s++) {
        if (!(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z') && !(*s >= '0' && *s <= '9') &&
            *s != '-' && *s != '_' && *s != '.')
            return false;
    }
    return true;
}

static bool valid_role(const char *s)
{
    return strcmp(s, "manager") == 0 || strcmp(s, "technician") == 0;
}

static bool unhex(const char *s, uint8_t *out, size_t n)
{
    if (strlen(s) != 2 * n)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return false;
        out[i] = (uint8_t)v;
    }
    return true;
}

static void tohex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", p[i]);
    out[2 * n] = '\0';
}

static bool scrypt(const char *password, const uint8_t *salt, int logn, int r, int p,
                   uint8_t out[HASH_LEN])
{
    uint64_t n = (uint64_t)1 << logn;
    /* maxmem: 128 * r * N plus room for p. */
    uint64_t maxmem = 128ull * (uint64_t)r * n * 2 + 1024ull * 1024;
    return EVP_PBE_scrypt(password, strlen(password), salt, SALT_LEN, n, (uint64_t)r, (uint64_t)p,
                          maxmem, out, HASH_LEN) == 1;
}

/* One line into an account; false if malformed. */
static bool parse_line(char *line, struct account *a)
{
    char *f[8];
    int n = 0;
    for (char *save = NULL, *t = strtok_r(line, ":", &save); t && n < 8;
         t = strtok_r(NULL, ":", &save))
        f[n++] = t;
    if (n != 8 || !valid_name(f[0]) || !valid_role(f[1]) || strcmp(f[2], "scrypt") != 0)
        return false;
    memset(a, 0, sizeof(*a));
    snprintf(a->name, sizeof(a->name), "%s", f[0]);
    snprintf(a->role, sizeof(a->role), "%s", f[1]);
    a->logn = atoi(f[3]);
    a->r = atoi(f[4]);
    a->p = atoi(f[5]);
    return a->logn >= 10 && a->logn <= 22 && a->r >= 1 && a->r <= 32 && a->p >= 1 && a->p <= 16 &&
           unhex(f[6], a->salt, SALT_LEN) && unhex(f[7], a->hash, HASH_LEN);
}

static bool read_file(const char *path, struct account *out, int *count, char *why, size_t whylen)
{
    FILE *fp = fopen(path, "re");
    *count = 0;
    if (!fp) {
        if (errno == ENOENT)
            return true;
        snprintf(why, whylen, "%s: %s", path, strerror(errno));
        return false;
    }
    char line[512];
    int lineno = 0;
    bool ok = true;
    while (fgets(line, sizeof(line), fp)) {
        lineno++;
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '\0' || line[0] == '#')
            continue;
        if (*count == MAX_ACCOUNTS) {
            snprintf(why, whylen, "%s:%d: more than %d accounts", path, lineno, MAX_ACCOUNTS);
            ok = false;
            break;
        }
        if (!parse_line(line, &out[*count])) {
            snprintf(why, whylen, "%s:%d: not NAME:ROLE:scrypt:LOG2N:R:P:SALT:HASH", path, lineno);
            ok = false;
            break;
        }
        (*count)++;
    }
    fclose(fp);
    return ok;
}

bool auth_load(const char *path, char *why, size_t whylen)
{
    static struct account tmp[MAX_ACCOUNTS];
    int n;
    if (!read_file(path, tmp, &n, why, whylen))
        return false;
    pthread_mutex_lock(&lock);
    memcpy(accounts, tmp, sizeof(accounts));
    naccounts = n;
    /* A session lives only as long as its account does, with the same role: a
     * removed or demoted account is logged out at once, not after 12 hours. */
    int ended = 0;
    for (int i = 0; i < MAX_SESSIONS; i++) {
        struct session *ss = &sessions[i];
        if (!ss->id[0])
            continue;
        bool keep = false;
        for (int k = 0; k < naccounts && !keep; k++)
            keep = strcmp(accounts[k].name, ss->info.account) == 0 &&
                   strcmp(accounts[k].role, ss->info.role) == 0;
        if (!keep) {
            OPENSSL_cleanse(ss, sizeof(*ss));
            ended++;
        }
    }
    pthread_mutex_unlock(&lock);
    OPENSSL_cleanse(tmp, sizeof(tmp));
    if (ended > 0)
        log_notice("%d session(s) ended: their account was removed or its role changed", ended);
    if (n == 0)
        log_warnx("%s has no accounts: nobody can log in (lockerd-console --add-account)", path);
    return true;
}

bool auth_add_account(const char *path, const char *name, const char *role, const char *password,
                      char *why, size_t whylen)
{
    static struct account list[MAX_ACCOUNTS];
    int n;
    if (!valid_name(name)) {
        snprintf(why, whylen, "account names are 1 to %d letters, digits, '-', '_', '.'",
                 AUTH_NAME_MAX);
        return false;
    }
    if (!valid_role(role)) {
        snprintf(why, whylen, "the role is manager or technician");
        return false;
    }
    if (strlen(password) < 10) {
        snprintf(why, whylen, "a password has at least 10 characters");
        return false;
    }
    if (!read_file(path, list, &n, why, whylen))
        return false;
    struct account a = {.logn = AUTH_SCRYPT_LOGN, .r = AUTH_SCRYPT_R, .p = AUTH_SCRYPT_P};
    snprintf(a.name, sizeof(a.name), "%s", name);
    snprintf(a.role, sizeof(a.role), "%s", role);
    if (RAND_bytes(a.salt, SALT_LEN) != 1 || !scrypt(password, a.salt, a.logn, a.r, a.p, a.hash)) {
        snprintf(why, whylen, "scrypt failed");
        return false;
    }
    int i;
    for (i = 0; i < n && strcmp(list[i].name, name) != 0; i++)
        ;
    if (i == MAX_ACCOUNTS) {
        snprintf(why, whylen, "more than %d accounts", MAX_ACCOUNTS);
        return false;
    }
    list[i] = a;
    if (i == n)
        n++;
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.new", path);
    mode_t old = umask(0027);
    FILE *fp = fopen(tmp, "we");
    umask(old);
    if (!fp) {
        snprintf(why, whylen, "%s: %s", tmp, strerror(errno));
        return false;
    }
    fprintf(fp, "# lockerd-console accounts: NAME:ROLE:scrypt:LOG2N:R:P:SALT:HASH\n"
                "# written by lockerd-console --add-account; see docs/console.md\n");
    for (int k = 0; k < n; k++) {
        char salt[2 * SALT_LEN + 1], hash[2 * HASH_LEN + 1];
        tohex(list[k].salt, SALT_LEN, salt);
        tohex(list[k].hash, HASH_LEN, hash);
        fprintf(fp, "%s:%s:scrypt:%d:%d:%d:%s:%s\n", list[k].name, list[k].role, list[k].logn,
                list[k].r, list[k].p, salt, hash);
    }
    /* The console's own group may read the file (the service runs as that user). */
    struct group *gr = getgrnam("lockerd-console");
    if (gr && fchown(fileno(fp), (uid_t)-1, gr->gr_gid) < 0)
        log_warn("chown %s", tmp);
    bool ok = fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    ok = fclose(fp) == 0 && ok;
    if (!ok || rename(tmp, path) < 0) {
        snprintf(why, whylen, "%s: %s", path, strerror(errno));
        unlink(tmp);
        return false;
    }
    OPENSSL_cleanse(list, sizeof(list));
    return true;
}

/* ------------------------------------------------------------ throttle */

static struct throttle *throttle_get(const char *key, bool create)
{
    struct throttle *free_slot = NULL;
    for (int i = 0; i < MAX_THROTTLE; i++) {
        if (strcmp(throttles[i].key, key) == 0)
            return &throttles[i];
        if (!throttles[i].key[0] && !free_slot)
            free_slot = &throttles[i];
    }
    if (!create)
        return NULL;
    if (!free_slot) {
        /* Full: forget the entry with the fewest failures. */
        free_slot = &throttles[0];
        for (int i = 1; i < MAX_THROTTLE; i++) {
            if (throttles[i].failures < free_slot->failures)
                free_slot = &throttles[i];
        }
    }
    memset(free_slot, 0, sizeof(*free_slot));
    snprintf(free_slot->key, sizeof(free_slot->key), "%s", key);
    return free_slot;
}

static void throttle_fail(const char *key, int free_failures, int64_t now_s)
{
    struct throttle *t = throttle_get(key, true);
    t->failures++;
    if (t->failures >= free_failures) {
        int over = t->failures - free_failures;
        int64_t wait = 30;
        while (over-- > 0 && wait < THROTTLE_MAX_S)
            wait *= 2;
        t->until_s = now_s + (wait < THROTTLE_MAX_S ? wait : THROTTLE_MAX_S);
    }
}

static int throttle_wait(const char *key, int64_t now_s)
{
    struct throttle *t = throttle_get(key, false);
    return t && t->until_s > now_s ? (int)(t->until_s - now_s) : 0;
}

/* ------------------------------------------------------------ login, sessions */

enum auth_result auth_login(const char *name, const char *password, const char *addr, int64_t now_s,
                            char sid[65], struct session_info *info, int *retry_s)
{
    char akey[80], ikey[80];
    snprintf(akey, sizeof(akey), "a:%s", name);
    snprintf(ikey, sizeof(ikey), "ip:%s", addr);
    pthread_mutex_lock(&lock);
    int wait_a = throttle_wait(akey, now_s), wait_i = throttle_wait(ikey, now_s);
    struct account a;
    bool found = false;
    for (int i = 0; i < naccounts; i++) {
        if (strcmp(accounts[i].name, name) == 0) {
            a = accounts[i];
            found = true;
        }
    }
    pthread_mutex_unlock(&lock);
    if (wait_a || wait_i) {
        *retry_s = wait_a > wait_i ? wait_a : wait_i;
        return AUTH_THROTTLED;
    }
    if (!found) {
        /* The same work for an unknown name: no timing oracle for account names. */
        memset(&a, 0, sizeof(a));
        a.logn = AUTH_SCRYPT_LOGN;
        a.r = AUTH_SCRYPT_R;
        a.p = AUTH_SCRYPT_P;
    }
    uint8_t h[HASH_LEN];
    bool ok = scrypt(password, a.salt, a.logn, a.r, a.p, h) && found &&
              CRYPTO_memcmp(h, a.hash, HASH_LEN) == 0;
    pthread_mutex_lock(&lock);
    if (!ok) {
        throttle_fail(akey, AUTH_FREE_FAILURES, now_s);
        throttle_fail(ikey, AUTH_FREE_FAILURES_ADDR, now_s);
        pthread_mutex_unlock(&lock);
        return AUTH_BAD;
    }
    struct throttle *t = throttle_get(akey, false);
    if (t)
        memset(t, 0, sizeof(*t));
    /* A free slot, or the least recently used one. */
    struct session *s = &sessions[0];
    for (int i = 0; i < MAX_SESSIONS; i++) {
        if (!sessions[i].id[0] || now_s - sessions[i].last_s > idle_s) {
            s = &sessions[i];
            break;
        }
        if (sessions[i].last_s < s->last_s)
            s = &sessions[i];
    }
    uint8_t rnd[64];
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        fatalx("RAND_bytes failed");
    memset(s, 0, sizeof(*s));
    tohex(rnd, 32, s->id);
    tohex(rnd + 32, 32, s->info.csrf);
    snprintf(s->info.account, sizeof(s->info.account), "%s", a.name);
    snprintf(s->info.role, sizeof(s->info.role), "%s", a.role);
    s->created_s = s->last_s = now_s;
    memcpy(sid, s->id, 65);
    *info = s->info;
    pthread_mutex_unlock(&lock);
    OPENSSL_cleanse(rnd, sizeof(rnd));
    return AUTH_OK;
}

static struct session *find(const char *sid)
{
    if (!sid || strlen(sid) != 64)
        return NULL;
    for (int i = 0; i < MAX_SESSIONS; i++) {
        if (sessions[i].id[0] && CRYPTO_memcmp(sessions[i].id, sid, 64) == 0)
            return &sessions[i];
    }
    return NULL;
}

bool auth_session(const char *sid, int64_t now_s, struct session_info *info)
{
    pthread_mutex_lock(&lock);
    struct session *s = find(sid);
    bool ok = false;
    if (s && (now_s - s->last_s > idle_s || now_s - s->created_s > SESSION_MAX_S)) {
        memset(s, 0, sizeof(*s));
    } else if (s) {
        s->last_s = now_s;
        *info = s->info;
        ok = true;
    }
    pthread_mutex_unlock(&lock);
    return ok;
}

void auth_logout(const char *sid)
{
    pthread_mutex_lock(&lock);
    struct session *s = find(sid);
    if (s)
        memset(s, 0, sizeof(*s));
    pthread_mutex_unlock(&lock);
}
