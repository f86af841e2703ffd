/*
 * timeutil.c - ISO 8601 times and durations.
 *
 * Times with an explicit offset are converted with calendar arithmetic, not with
 * timegm()/mktime(), so they never depend on the process time zone. Only local times
 * without an offset go through mktime().
 */
#include "daemon/timeutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ZONEINFO_DIR "/usr/share/zoneinfo"

#define MS_PER_SEC  INT64_C(1000)
#define MS_PER_MIN  (60 * MS_PER_SEC)
#define MS_PER_HOUR (60 * MS_PER_MIN)
#define MS_PER_DAY  (24 * MS_PER_HOUR)

bool tz_exists(const char *zone)
{
    char path[256];
    const char *p;
    size_t complen = 0;
    unsigned char magic[4];
    struct stat st;
    bool ok = false;
    int fd;

    if (zone == NULL || zone[0] == '\0' || zone[0] == '/')
        return false;
    /* Walk the components: an empty one, "." or ".." (anything starting with a dot)
     * could point outside the zoneinfo tree or at a non-zone file. */
    for (p = zone;; p++) {
        if (*p == '/' || *p == '\0') {
            if (complen == 0)
                return false;
            if (*p == '\0')
                break;
            complen = 0;
            continue;
        }
        if (complen == 0 && *p == '.')
            return false;
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-' || *p == '+' || *p == '.'))
            return false;
        complen++;
    }
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", ZONEINFO_DIR, zone) >= sizeof(path))
        return false;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    /* zoneinfo also holds tables (zone.tab, tzdata.zi): only TZif files are zones. */
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && read(fd, magic, 4) == 4 &&
        memcmp(magic, "TZif", 4) == 0)
        ok = true;
    close(fd);
    return ok;
}

bool tz_set(const char *zone)
{
    if (!tz_exists(zone))
        return false;
    if (setenv("TZ", zone, 1) != 0)
        return false;
    tzset();
    return true;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    int64_t era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static bool is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int y, int m)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b) < 0)
        q--;
    return q;
}

/* Exactly n decimal digits. */
static bool take_digits(const char **s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*s)[i];
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (c - '0');
    }
    *s += n;
    *out = v;
    return true;
}

static bool take_char(const char **s, char c)
{
    if (**s != c)
        return false;
    (*s)++;
    return true;
}

/* A local time without offset in the process time zone. In the hour skipped when
 * clocks go forward the time does not exist: refuse it rather than guess. In the
 * hour repeated when clocks go back, take the first occurrence so the result does
 * not depend on what mktime() prefers. */
static bool local_to_epoch(const struct tm *in, time_t *out)
{
    struct tm tm = *in;
    struct tm alt;
    time_t t, t_alt;

    tm.tm_isdst = -1;
    t = mktime(&tm);
    if (tm.tm_year != in->tm_year || tm.tm_mon != in->tm_mon || tm.tm_mday != in->tm_mday ||
        tm.tm_hour != in->tm_hour || tm.tm_min != in->tm_min || tm.tm_sec != in->tm_sec)
        return false;
    if (tm.tm_isdst >= 0) {
        alt = *in;
        alt.tm_isdst = !tm.tm_isdst;
        t_alt = mktime(&alt);
        if (alt.tm_isdst != tm.tm_isdst && alt.tm_hour == in->tm_hour && alt.tm_min == in->tm_min &&
            alt.tm_mday == in->tm_mday && t_alt < t)
            t = t_alt;
    }
    *out = t;
    return true;
}

bool time_parse_iso(const char *s, int64_t *ms_out)
{
    int year, mon, day, hour, min, sec = 0, ms = 0;
    int off_sign = 0, off_h = 0, off_m = 0;
    bool has_offset = false;

    if (s == NULL)
        return false;
    if (!take_digits(&s, 4, &year) || !take_char(&s, '-') || !take_digits(&s, 2, &mon) ||
        !take_char(&s, '-') || !take_digits(&s, 2, &day))
        return false;
    if (*s != 'T' && *s != ' ')
        return false;
    s++;
    if (!take_digits(&s, 2, &hour) || !take_char(&s, ':') || !take_digits(&s, 2, &min))
        return false;
    if (take_char(&s, ':')) {
        if (!take_digits(&s, 2, &sec))
            return false;
        if (take_char(&s, '.')) {
            /* Any number of fraction digits; milliseconds are kept, the rest dropped. */
            int ndig = 0;
            while (*s >= '0' && *s <= '9') {
                if (ndig < 3)
                    ms = ms * 10 + (*s - '0');
                ndig++;
                s++;
            }
            if (ndig == 0)
                return false;
            for (; ndig < 3; ndig++)
                ms *= 10;
        }
    }
    if (take_char(&s, 'Z')) {
        has_offset = true;
    } else if (*s == '+' || *s == '-') {
        has_offset = true;
        off_sign = *s == '-' ? -1 : 1;
        s++;
        if (!take_digits(&s, 2, &off_h))
            return false;
        /* "+hh:mm", "+hhmm" or just "+hh". */
        if ((take_char(&s, ':') || *s != '\0') && !take_digits(&s, 2, &off_m))
            return false;
    }
    if (*s != '\0')
        return false;

    if (year < 1 || mon < 1 || mon > 12 || day < 1 || day > days_in_month(year, mon) || hour > 23 ||
        min > 59 || sec > 59 || off_h > 23 || off_m > 59)
        return false;

    if (has_offset) {
        int64_t days = days_from_civil(year, mon, day);
        int64_t secs = days * 86400 + (int64_t)hour * 3600 + (int64_t)min * 60 + sec;
        secs -= (int64_t)off_sign * ((int64_t)off_h * 3600 + (int64_t)off_m * 60);
        *ms_out = secs * MS_PER_SEC + ms;
        return true;
    }

    struct tm tm;
    time_t t;
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = year - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = day;
    tm.tm_hour = hour;
    tm.tm_min = min;
    tm.tm_sec = sec;
    if (!local_to_epoch(&tm, &t))
        return false;
    *ms_out = (int64_t)t * MS_PER_SEC + ms;
    return true;
}

void time_format_local(int64_t ms, char *buf, size_t len)
{
    time_t t = (time_t)floor_div(ms, MS_PER_SEC);
    struct tm tm;
    long off;
    char sign = '+';

    if (localtime_r(&t, &tm) == NULL) {
        snprintf(buf, len, "invalid-time");
        return;
    }
    off = tm.tm_gmtoff;
    if (off < 0) {
        sign = '-';
        off = -off;
    }
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d%c%02ld:%02ld", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, sign, off / 3600,
             (off % 3600) / 60);
}

void time_format_utc(int64_t ms, char *buf, size_t len)
{
    time_t t = (time_t)floor_div(ms, MS_PER_SEC);
    int frac = (int)(ms - (int64_t)t * MS_PER_SEC);
    struct tm tm;

    if (gmtime_r(&t, &tm) == NULL) {
        snprintf(buf, len, "invalid-time");
        return;
    }
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
}

bool duration_parse(const char *s, int64_t *ms_out)
{
    static const struct {
        const char *suffix;
        int64_t ms;
    } units[] = {
        {"", MS_PER_SEC},    {"ms", 1},          {"s", MS_PER_SEC}, {"m", MS_PER_MIN},
        {"min", MS_PER_MIN}, {"h", MS_PER_HOUR}, {"d", MS_PER_DAY},
    };
    int64_t v = 0;
    const char *p = s;

    if (s == NULL || *p < '0' || *p > '9')
        return false;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (INT64_MAX - (*p - '0')) / 10)
            return false;
        v = v * 10 + (*p - '0');
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(p, units[i].suffix) != 0)
            continue;
        if (v > INT64_MAX / units[i].ms)
            return false;
        *ms_out = v * units[i].ms;
        return true;
    }
    return false;
}

void duration_format(int64_t ms, char *buf, size_t len)
{
    if (ms == 0)
        snprintf(buf, len, "0s");
    else if (ms % MS_PER_DAY == 0)
        snprintf(buf, len, "%lldd", (long long)(ms / MS_PER_DAY));
    else if (ms % MS_PER_HOUR == 0)
        snprintf(buf, len, "%lldh", (long long)(ms / MS_PER_HOUR));
    else if (ms % MS_PER_MIN == 0)
        snprintf(buf, len, "%lldm", (long long)(ms / MS_PER_MIN));
    else if (ms % MS_PER_SEC == 0)
        snprintf(buf, len, "%llds", (long long)(ms / MS_PER_SEC));
    else
        snprintf(buf, len, "%lldms", (long long)ms);
}
