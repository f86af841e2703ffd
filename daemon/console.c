/*
 * console.c - lockerd-console, the manager console: a separate, unprivileged
 * HTTPS server for facility managers and technicians on the station's network.
 *
 * It never opens GPIO, the reader or the database: everything it shows and
 * changes goes through lockerd's control socket, each request sent "as" the
 * logged-in account ({"as": {"account", "role"}}), which lockerd caps at the
 * console user's own role and records as the operator ("console:NAME") of every
 * change. The console's user must be listed in [control] consoles.
 *
 * HTTPS only (libmicrohttpd with GnuTLS), a thread per connection (a card
 * enrolment waits up to two minutes for a tap), accounts and sessions in
 * console_auth.c. The pages (ui/console/) are static files served with a strict
 * Content-Security-Policy; the API is JSON:
 *
 *   POST /api/login {account, password}   -> {account, role, csrf} + session cookie
 *   GET  /api/session                     -> {account, role, csrf} or 401
 *   POST /api/logout
 *   GET  /api/status | /api/bookings | /api/directory | /api/report?from=&to=
 *   GET  /api/events?type=&compartment=   (the newest 1000), /api/events.csv
 *   POST /api/cmd {cmd, args}             one of the change commands below
 *
 * Every POST needs Content-Type application/json, an Origin (if sent) equal to
 * the console's own, and but for the login the session's CSRF token in the
 * X-CSRF-Token header.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>
#include <openssl/crypto.h>

#include "daemon/console_auth.h"
#include "daemon/log.h"

#define BODY_MAX       65536
#define FILE_MAX       (2u << 20)
#define COOKIE         "lc_session"
#define CTL_TIMEOUT_S  30
#define ENROLL_MAX_MS  120000
#define EVENTS_SHOWN   1000
#define DEFAULT_LISTEN "0.0.0.0:8443"

static const char *const CSP =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

static struct {
    const char *socket;
    const char *dir;
    const char *accounts;
    const char *cert;
    const char *key;
    const char *listen;
    const char *user;
    int idle_s;
} opt = {
    .socket = "/run/lockerd/control.sock",
    .dir = "/usr/share/lockerd/console",
    .accounts = "/etc/lockerd/console.accounts",
    .cert = "/etc/lockerd/console.crt",
    .key = "/etc/lockerd/console.key",
    .listen = DEFAULT_LISTEN,
    .user = "lockerd-console",
    .idle_s = 900,
};

/* The change commands the console forwards; lockerd decides with the account's
 * role whether it may. */
static const char *const change_cmds[] = {
    "booking.add", "booking.move", "booking.cancel", "alarm.ack",   "club.add",
    "club.rename", "member.add",   "member.rename",  "member.join", "card.enroll",
    "card.revoke", "open",         "clear",          "disable",
};

struct request {
    char *body;
    size_t len;
    bool too_big;
};

static int64_t now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

/* ------------------------------------------------------------ control socket */

/* One request, one reply line. NULL when lockerd cannot be reached. */
static json_t *ctl_call(const char *cmd, json_t *args, const struct session_info *as, int timeout_s)
{
    json_t *req = json_pack("{s:s,s:o}", "cmd", cmd, "args", args ? args : json_object());
    if (as)
        json_object_set_new(req, "as",
                            json_pack("{s:s,s:s}", "account", as->account, "role", as->role));
    char *text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (!text)
        return NULL;
    json_t *reply = NULL;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", opt.socket);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = timeout_s};
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
        connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        log_warn("control socket %s", opt.socket);
        goto out;
    }
    size_t n = strlen(text);
    text[n] = '\0';
    if (send(fd, text, n, MSG_NOSIGNAL) != (ssize_t)n || send(fd, "\n", 1, MSG_NOSIGNAL) != 1)
        goto out;
    size_t cap = 65536, len = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        if (len + 1 >= cap) {
            if (cap >= (64u << 20))
                break;
            cap *= 2;
            char *p = realloc(buf, cap);
            if (!p)
                fatalx("out of memory");
            buf = p;
        }
        ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
        if (r <= 0)
            break;
        len += (size_t)r;
        if (memchr(buf + len - (size_t)r, '\n', (size_t)r)) {
            buf[len] = '\0';
            reply = json_loads(buf, 0, NULL);
            break;
        }
    }
    free(buf);
out:
    if (fd >= 0)
        close(fd);
    free(text);
    return reply;
}

/* ------------------------------------------------------------ responses */

static void security_headers(struct MHD_Response *r)
{
    MHD_add_response_header(r, "Content-Security-Policy", CSP);
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "X-Frame-Options", "DENY");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(r, "Strict-Transport-Security", "max-age=31536000");
    MHD_add_response_header(r, "Cross-Origin-Opener-Policy", "same-origin");
}

static enum MHD_Result send_buf(struct MHD_Connection *c, unsigned status, const char *type,
                                char *data, size_t len, const char *cookie, int retry)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
    security_headers(r);
    MHD_add_response_header(r, "Content-Type", type);
    if (strncmp(type, "text/html", 9) == 0 || strncmp(type, "application/json", 16) == 0 ||
        strncmp(type, "text/csv", 8) == 0)
        MHD_add_response_header(r, "Cache-Control", "no-store");
    if (cookie)
        MHD_add_response_header(r, "Set-Cookie", cookie);
    if (retry > 0) {
        char v[16];
        snprintf(v, sizeof(v), "%d", retry);
        MHD_add_response_header(r, "Retry-After", v);
    }
    if (strncmp(type, "text/csv", 8) == 0)
        MHD_add_response_header(r, "Content-Disposition", "attachment; filename=\"events.csv\"");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, json_t *obj,
                                 const char *cookie, int retry)
{
    char *text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (!text)
        text = strdup("{}");
    return send_buf(c, status, "application/json; charset=utf-8", text, strlen(text), cookie,
                    retry);
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *code,
                                  const char *message)
{
    return send_json(
        c, status,
        json_pack("{s:b,s:{s:s,s:s}}", "ok", 0, "error", "code", code, "message", message), NULL,
        0);
}

/* lockerd's reply as the HTTP answer: its error codes become statuses. */
static enum MHD_Result send_reply(struct MHD_Connection *c, json_t *reply)
{
    if (!reply)
        return send_error(c, 502, "unavailable", "lockerd does not answer");
    unsigned status = 200;
    if (!json_is_true(json_object_get(reply, "ok"))) {
        const char *code =
            json_string_value(json_object_get(json_object_get(reply, "error"), "code"));
        code = code ? code : "";
        status = strcmp(code, "forbidden") == 0                                             ? 403
                 : strcmp(code, "not_found") == 0                                           ? 404
                 : strcmp(code, "timeout") == 0                                             ? 504
                 : strcmp(code, "bad_request") == 0 || !strcmp(code, "no_such_compartment") ? 400
                 : strcmp(code, "internal_error") == 0 || !strcmp(code, "unknown_command")  ? 500
                                                                                            : 409;
    }
    return send_json(c, status, reply, NULL, 0);
}

/* ------------------------------------------------------------ static files */

static const char *content_type(const char *path)
{
    const char *dot = strrchr(path, '.');
    if (!dot)
        return "application/octet-stream";
    if (!strcmp(dot, ".html"))
        return "text/html; charset=utf-8";
    if (!strcmp(dot, ".js"))
        return "text/javascript; charset=utf-8";
    if (!strcmp(dot, ".css"))
        return "text/css; charset=utf-8";
    if (!strcmp(dot, ".json"))
        return "application/json";
    if (!strcmp(dot, ".svg"))
        return "image/svg+xml";
    if (!strcmp(dot, ".png"))
        return "image/png";
    return "application/octet-stream";
}

static enum MHD_Result serve_file(struct MHD_Connection *c, const char *url)
{
    if (strcmp(url, "/") == 0)
        url = "/index.html";
    /* Only plain names below dir: no "..", no dot files, no odd characters. */
    for (const char *p = url; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '/' || *p == '-' || *p == '_' || *p == '.'))
            return send_error(c, 404, "not_found", "no such page");
        if (*p == '.' && p[-1] == '/')
            return send_error(c, 404, "not_found", "no such page");
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s%s", opt.dir, url);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size > FILE_MAX) {
        if (fd >= 0)
            close(fd);
        return send_error(c, 404, "not_found", "no such page");
    }
    char *data = xmalloc((size_t)st.st_size + 1);
    ssize_t n = read(fd, data, (size_t)st.st_size);
    close(fd);
    if (n != st.st_size) {
        free(data);
        return send_error(c, 500, "internal_error", "read failed");
    }
    return send_buf(c, 200, content_type(path), data, (size_t)n, NULL, 0);
}

/* ------------------------------------------------------------ API */

static bool client_addr(struct MHD_Connection *c, char *buf, size_t len)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    snprintf(buf, len, "?");
    if (!ci || !ci->client_addr)
        return false;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, (socklen_t)len);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, (socklen_t)len);
    return true;
}

static bool session_of(struct MHD_Connection *c, struct session_info *info)
{
    const char *sid = MHD_lookup_connection_value(c, MHD_COOKIE_KIND, COOKIE);
    return sid && auth_session(sid, now_s(), info);
}

/* A change must come from our own page: JSON (which a cross-site form cannot
 * send), from our origin, with the session's CSRF token. */
static const char *post_check(struct MHD_Connection *c, const struct session_info *info)
{
    const char *type = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    if (!type || strncmp(type, "application/json", 16) != 0)
        return "changes are sent as application/json";
    const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Host");
    if (origin) {
        char want[300];
        snprintf(want, sizeof(want), "https://%s", host ? host : "");
        if (strcmp(origin, want) != 0)
            return "the request comes from another site";
    }
    if (info) {
        const char *tok = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-CSRF-Token");
        if (!tok || strlen(tok) != 64 || CRYPTO_memcmp(tok, info->csrf, 64) != 0)
            return "missing or wrong CSRF token: reload the page";
    }
    return NULL;
}

static json_t *session_json(const struct session_info *info)
{
    return json_pack("{s:s,s:s,s:s}", "account", info->account, "role", info->role, "csrf",
                     info->csrf);
}

static enum MHD_Result api_login(struct MHD_Connection *c, struct request *rq)
{
    const char *why = post_check(c, NULL);
    if (why)
        return send_error(c, 403, "forbidden", why);
    json_t *body = json_loadb(rq->body ? rq->body : "", rq->len, 0, NULL);
    const char *name = json_string_value(json_object_get(body, "account"));
    const char *password = json_string_value(json_object_get(body, "password"));
    if (!name || !password || strlen(name) > AUTH_NAME_MAX || strlen(password) > 1024) {
        json_decref(body);
        return send_error(c, 400, "bad_request", "give account and password");
    }
    char addr[64], sid[65], who[AUTH_NAME_MAX + 1];
    client_addr(c, addr, sizeof(addr));
    /* Logged, so only a name an account could have; anything else as "?". */
    snprintf(who, sizeof(who), "%s", name);
    for (char *p = who; *p; p++) {
        if (*p < 0x21 || *p > 0x7e)
            *p = '?';
    }
    struct session_info info;
    int retry = 0;
    enum auth_result res = auth_login(name, password, addr, now_s(), sid, &info, &retry);
    json_decref(body);
    name = who;
    if (res == AUTH_THROTTLED) {
        log_notice("console: login of '%s' from %s refused: too many failures", name, addr);
        char msg[128];
        snprintf(msg, sizeof(msg), "too many failed logins: try again in %d s", retry);
        json_t *e = json_pack("{s:b,s:{s:s,s:s,s:i}}", "ok", 0, "error", "code", "throttled",
                              "message", msg, "retryAfter", retry);
        return send_json(c, 429, e, NULL, retry);
    }
    if (res == AUTH_BAD) {
        log_notice("console: failed login of '%s' from %s", name, addr);
        return send_error(c, 401, "bad_login", "wrong account name or password");
    }
    log_info("console: %s (%s) logged in from %s", info.account, info.role, addr);
    char cookie[160];
    snprintf(cookie, sizeof(cookie), COOKIE "=%s; Path=/; Secure; HttpOnly; SameSite=Strict", sid);
    OPENSSL_cleanse(sid, sizeof(sid));
    return send_json(c, 200, session_json(&info), cookie, 0);
}

static const char *arg_of(struct MHD_Connection *c, const char *name)
{
    const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
    return v && *v ? v : NULL;
}

/* The newest events, filtered by type (prefix) and compartment. */
static json_t *recent_events(struct MHD_Connection *c, const struct session_info *info)
{
    json_t *first =
        ctl_call("events", json_pack("{s:I}", "since", (json_int_t)0), info, CTL_TIMEOUT_S);
    json_t *res = json_object_get(first, "result");
    json_int_t last = json_integer_value(json_object_get(res, "lastSeq"));
    if (json_is_true(json_object_get(res, "more"))) {
        json_decref(first);
        first = ctl_call("events", json_pack("{s:I}", "since", last - EVENTS_SHOWN), info,
                         CTL_TIMEOUT_S);
        res = json_object_get(first, "result");
    }
    json_t *events = json_object_get(res, "events");
    if (!json_is_array(events)) {
        json_decref(first);
        return NULL;
    }
    const char *type = arg_of(c, "type");
    const char *comp = arg_of(c, "compartment");
    json_t *out = json_array();
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev)
    {
        const char *t = json_string_value(json_object_get(ev, "type"));
        if (type && (!t || strncmp(t, type, strlen(type)) != 0))
            continue;
        if (comp && json_integer_value(json_object_get(ev, "compartment")) != atoi(comp))
            continue;
        json_array_insert(out, 0, ev); /* newest first */
    }
    json_decref(first);
    return out;
}

static void csv_field(FILE *fp, json_t *v, bool last)
{
    if (json_is_integer(v)) {
        fprintf(fp, "%lld", (long long)json_integer_value(v));
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        /* A leading = + - @ would be a formula in a spreadsheet. */
        bool formula = strchr("=+-@\t\r", s[0]) != NULL && s[0];
        fputc('"', fp);
        if (formula)
            fputc('\'', fp);
        for (; *s; s++) {
            if (*s == '"')
                fputc('"', fp);
            fputc(*s, fp);
        }
        fputc('"', fp);
    } else if (json_is_object(v)) {
        char *t = json_dumps(v, JSON_COMPACT);
        json_t *str = json_string(t ? t : "");
        free(t);
        csv_field(fp, str, last);
        json_decref(str);
        return;
    }
    fputs(last ? "\r\n" : ",", fp);
}

static enum MHD_Result api_events_csv(struct MHD_Connection *c, const struct session_info *info)
{
    json_t *events = recent_events(c, info);
    if (!events)
        return send_error(c, 502, "unavailable", "lockerd does not answer");
    static const char *const cols[] = {"seq",     "occurredAt", "type",   "compartment", "club",
                                       "booking", "member",     "reason", "operator",    "detail"};
    size_t ncols = sizeof(cols) / sizeof(cols[0]);
    char *data = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&data, &len);
    for (size_t k = 0; k < ncols; k++)
        fprintf(fp, "%s%s", cols[k], k + 1 < ncols ? "," : "\r\n");
    size_t i;
    json_t *ev;
    json_array_foreach(events, i, ev)
    {
        for (size_t k = 0; k < ncols; k++)
            csv_field(fp, json_object_get(ev, cols[k]), k + 1 == ncols);
    }
    fclose(fp);
    json_decref(events);
    return send_buf(c, 200, "text/csv; charset=utf-8", data, len, NULL, 0);
}

static enum MHD_Result api_get(struct MHD_Connection *c, const char *url,
                               const struct session_info *info)
{
    if (!strcmp(url, "/api/status"))
        return send_reply(c, ctl_call("status", NULL, info, CTL_TIMEOUT_S));
    if (!strcmp(url, "/api/bookings"))
        return send_reply(
            c, ctl_call("booking.list", json_pack("{s:b}", "all", 1), info, CTL_TIMEOUT_S));
    if (!strcmp(url, "/api/directory"))
        return send_reply(c, ctl_call("directory", NULL, info, CTL_TIMEOUT_S));
    if (!strcmp(url, "/api/report")) {
        json_t *args = json_object();
        if (arg_of(c, "from"))
            json_object_set_new(args, "from", json_string(arg_of(c, "from")));
        if (arg_of(c, "to"))
            json_object_set_new(args, "to", json_string(arg_of(c, "to")));
        return send_reply(c, ctl_call("report", args, info, CTL_TIMEOUT_S));
    }
    if (!strcmp(url, "/api/events")) {
        json_t *events = recent_events(c, info);
        if (!events)
            return send_error(c, 502, "unavailable", "lockerd does not answer");
        return send_json(c, 200, json_pack("{s:b,s:{s:o}}", "ok", 1, "result", "events", events),
                         NULL, 0);
    }
    if (!strcmp(url, "/api/events.csv"))
        return api_events_csv(c, info);
    return send_error(c, 404, "not_found", "no such API");
}

static enum MHD_Result api_cmd(struct MHD_Connection *c, struct request *rq,
                               const struct session_info *info)
{
    json_t *body = json_loadb(rq->body ? rq->body : "", rq->len, JSON_REJECT_DUPLICATES, NULL);
    const char *cmd = json_string_value(json_object_get(body, "cmd"));
    json_t *args = json_object_get(body, "args");
    bool known = false;
    for (size_t i = 0; cmd && i < sizeof(change_cmds) / sizeof(change_cmds[0]); i++)
        known = known || strcmp(change_cmds[i], cmd) == 0;
    if (!known || (args && !json_is_object(args))) {
        json_decref(body);
        return send_error(c, 400, "bad_request", "not a console command");
    }
    args = args ? json_deep_copy(args) : json_object();
    int timeout = CTL_TIMEOUT_S;
    if (!strcmp(cmd, "card.enroll")) {
        json_int_t ms = json_integer_value(json_object_get(args, "timeoutMs"));
        if (ms <= 0 || ms > ENROLL_MAX_MS)
            ms = 60000;
        json_object_set_new(args, "timeoutMs", json_integer(ms));
        timeout = (int)(ms / 1000) + 10;
    }
    log_info("console: %s by %s", cmd, info->account);
    json_t *reply = ctl_call(cmd, args, info, timeout);
    json_decref(body);
    return send_reply(c, reply);
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_size, void **con_cls)
{
    (void)cls;
    (void)version;
    struct request *rq = *con_cls;
    if (!rq) {
        rq = xcalloc(1, sizeof(*rq));
        *con_cls = rq;
        return MHD_YES;
    }
    if (*upload_size) {
        if (rq->len + *upload_size > BODY_MAX) {
            rq->too_big = true;
        } else {
            char *p = realloc(rq->body, rq->len + *upload_size + 1);
            if (!p)
                fatalx("out of memory");
            rq->body = p;
            memcpy(rq->body + rq->len, upload_data, *upload_size);
            rq->len += *upload_size;
            rq->body[rq->len] = '\0';
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (rq->too_big)
        return send_error(c, 413, "bad_request", "request too large");
    bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    bool post = !strcmp(method, "POST");
    if (strncmp(url, "/api/", 5) != 0) {
        if (!get)
            return send_error(c, 405, "bad_request", "method not allowed");
        return serve_file(c, url);
    }
    if (post && !strcmp(url, "/api/login"))
        return api_login(c, rq);
    struct session_info info;
    if (!session_of(c, &info))
        return send_error(c, 401, "login", "please log in");
    if (get && !strcmp(url, "/api/session"))
        return send_json(c, 200, session_json(&info), NULL, 0);
    if (get)
        return api_get(c, url, &info);
    if (!post)
        return send_error(c, 405, "bad_request", "method not allowed");
    const char *why = post_check(c, &info);
    if (why) {
        log_notice("console: change by %s refused: %s", info.account, why);
        return send_error(c, 403, "csrf", why);
    }
    if (!strcmp(url, "/api/logout")) {
        auth_logout(MHD_lookup_connection_value(c, MHD_COOKIE_KIND, COOKIE));
        return send_json(c, 200, json_pack("{s:b}", "ok", 1),
                         COOKIE "=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0", 0);
    }
    if (!strcmp(url, "/api/cmd"))
        return api_cmd(c, rq, &info);
    return send_error(c, 404, "not_found", "no such API");
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    struct request *rq = *con_cls;
    if (rq) {
        if (rq->body)
            OPENSSL_cleanse(rq->body, rq->len); /* may hold a password */
        free(rq->body);
        free(rq);
    }
    *con_cls = NULL;
}

/* ------------------------------------------------------------ main */

static char *slurp(const char *path)
{
    FILE *fp = fopen(path, "re");
    if (!fp)
        fatal("%s", path);
    char *data = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&data, &len);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), fp)) > 0)
        fwrite(buf, 1, n, out);
    fclose(fp);
    fclose(out);
    return data;
}

static bool parse_listen(const char *s, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof(host))
        return false;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    int port = atoi(colon + 1);
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    return port > 0 && port < 65536 && inet_pton(AF_INET, host, &sa->sin_addr) == 1;
}

static void usage(FILE *fp)
{
    fprintf(fp,
            "usage: lockerd-console [-l ADDR:PORT] [-s SOCKET] [-d DIR] [-a ACCOUNTS]\n"
            "                       [--cert PEM] [--key PEM] [--idle SECONDS] [--user NAME]\n"
            "       lockerd-console [-a ACCOUNTS] --add-account NAME manager|technician\n"
            "                       (the password is read from standard input)\n"
            "defaults: -l %s -s %s -d %s -a %s --cert %s --key %s --idle %d --user %s\n",
            DEFAULT_LISTEN, opt.socket, opt.dir, opt.accounts, opt.cert, opt.key, opt.idle_s,
            opt.user);
}

/* Started as root (by hand: the unit starts it as its own user already), the
 * console would answer the network as root. Once its port is bound and its
 * certificate and key are read, it becomes `--user` with that user's groups (for
 * lockerd-console, lockerd-admin: the control socket). `--user root` keeps root,
 * said in the log (a test in a container). */
static void drop_root(const char *name)
{
    if (geteuid() != 0)
        return;
    struct passwd *pw = getpwnam(name);
    if (pw == NULL)
        fatalx("running as root, and there is no user '%s' to become: create it "
               "(systemd-sysusers) or name another with --user",
               name);
    /* Copied: initgroups() may reuse getpwnam()'s static buffer. */
    uid_t uid = pw->pw_uid;
    gid_t gid = pw->pw_gid;
    if (uid == 0) {
        log_warnx("serving as root (--user %s)", name);
        return;
    }
    if (initgroups(name, gid) < 0 || setgid(gid) < 0 || setuid(uid) < 0)
        fatal("cannot become user %s", name);
    if (setuid(0) == 0)
        fatalx("could become root again after becoming %s", name);
    log_info("running as user %s", name);
}

/* The listening socket, bound before root is given up (a port below 1024). */
static int listen_on(const struct sockaddr_in *sa)
{
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0 || listen(fd, 64) < 0)
        fatal("cannot listen on %s", opt.listen);
    return fd;
}

static int add_account(const char *name, const char *role)
{
    char pw[1100];
    if (!fgets(pw, sizeof(pw), stdin)) {
        fprintf(stderr, "lockerd-console: no password on standard input\n");
        return 1;
    }
    pw[strcspn(pw, "\r\n")] = '\0';
    char why[256];
    bool ok = auth_add_account(opt.accounts, name, role, pw, why, sizeof(why));
    OPENSSL_cleanse(pw, sizeof(pw));
    if (!ok) {
        fprintf(stderr, "lockerd-console: %s\n", why);
        return 1;
    }
    printf("account %s (%s) written to %s\n", name, role, opt.accounts);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"socket", required_argument, NULL, 's'},
        {"dir", required_argument, NULL, 'd'},
        {"accounts", required_argument, NULL, 'a'},
        {"cert", required_argument, NULL, 'C'},
        {"key", required_argument, NULL, 'K'},
        {"idle", required_argument, NULL, 'i'},
        {"add-account", no_argument, NULL, 'A'},
        {"user", required_argument, NULL, 'U'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool adding = false;
    int ch;
    log_init("lockerd-console", LOG_LVL_INFO);
    while ((ch = getopt_long(argc, argv, "l:s:d:a:h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'l':
            opt.listen = optarg;
            break;
        case 's':
            opt.socket = optarg;
            break;
        case 'd':
            opt.dir = optarg;
            break;
        case 'a':
            opt.accounts = optarg;
            break;
        case 'C':
            opt.cert = optarg;
            break;
        case 'K':
            opt.key = optarg;
            break;
        case 'i':
            opt.idle_s = atoi(optarg);
            break;
        case 'A':
            adding = true;
            break;
        case 'U':
            opt.user = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (adding) {
        if (argc - optind != 2) {
            usage(stderr);
            return 1;
        }
        return add_account(argv[optind], argv[optind + 1]);
    }
    if (optind != argc || opt.idle_s < 60) {
        usage(stderr);
        return 1;
    }
    /* Nothing this process runs may gain privileges. */
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    struct sockaddr_in sa;
    if (!parse_listen(opt.listen, &sa))
        fatalx("listen address '%s' is not ADDR:PORT (IPv4)", opt.listen);
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
        fatalx("this libmicrohttpd has no TLS: the console serves HTTPS only");
    char why[256];
    if (!auth_load(opt.accounts, why, sizeof(why)))
        fatalx("%s", why);
    auth_set_idle(opt.idle_s);
    char *cert = slurp(opt.cert);
    char *key = slurp(opt.key);
    int lfd = listen_on(&sa);
    drop_root(opt.user);

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_TLS |
            MHD_USE_ERROR_LOG,
        0, NULL, NULL, handler, NULL, MHD_OPTION_LISTEN_SOCKET, lfd, MHD_OPTION_HTTPS_MEM_CERT,
        cert, MHD_OPTION_HTTPS_MEM_KEY, key, MHD_OPTION_HTTPS_PRIORITIES,
        "SECURE128:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2", MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)16, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)150, MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_END);
    if (!d)
        fatalx("cannot serve HTTPS on %s (a bad certificate or key?)", opt.listen);
    log_info("serving the manager console on https://%s/ for lockerd at %s", opt.listen,
             opt.socket);
    int sig = 0;
    while (sigwait(&set, &sig) == 0 && sig == SIGHUP) {
        if (!auth_load(opt.accounts, why, sizeof(why)))
            log_warnx("reload: %s; the old accounts stay", why);
        else
            log_info("accounts reloaded");
    }
    log_info("stopping on signal %d", sig);
    MHD_stop_daemon(d);
    OPENSSL_cleanse(key, strlen(key));
    free(key);
    free(cert);
    return 0;
}
