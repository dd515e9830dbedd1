/* SPDX-License-Identifier: MIT */
/* journalctl-style time specs for `keybrokerctl usage --since/--until`, and
 * the --by list. Same grammar as journalctl(1)'s (systemd.time(7)), minus
 * weekday names and two-digit years. */

#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <time.h>

#include "usage-report.h"
#include "util.h"

/* Longest time spec we look at; a bound on what a caller controls. */
#define TIME_SPEC_MAX 128

struct span_unit {
        const char *name;
        uint64_t usec;
};

/* systemd.time(7)'s units; "M" months and "m" minutes differ by case only. */
static const struct span_unit span_units[] = {
        { "usec", 1 },
        { "us", 1 },
        { "msec", USEC_PER_MSEC },
        { "ms", USEC_PER_MSEC },
        { "seconds", USEC_PER_SEC },
        { "second", USEC_PER_SEC },
        { "sec", USEC_PER_SEC },
        { "s", USEC_PER_SEC },
        { "minutes", 60 * USEC_PER_SEC },
        { "minute", 60 * USEC_PER_SEC },
        { "min", 60 * USEC_PER_SEC },
        { "m", 60 * USEC_PER_SEC },
        { "hours", 3600 * USEC_PER_SEC },
        { "hour", 3600 * USEC_PER_SEC },
        { "hr", 3600 * USEC_PER_SEC },
        { "h", 3600 * USEC_PER_SEC },
        { "days", 86400 * USEC_PER_SEC },
        { "day", 86400 * USEC_PER_SEC },
        { "d", 86400 * USEC_PER_SEC },
        { "weeks", 7 * 86400 * USEC_PER_SEC },
        { "week", 7 * 86400 * USEC_PER_SEC },
        { "w", 7 * 86400 * USEC_PER_SEC },
        { "months", 2629800 * USEC_PER_SEC },  /* 30.44 days, as systemd */
        { "month", 2629800 * USEC_PER_SEC },
        { "M", 2629800 * USEC_PER_SEC },
        { "years", 31557600 * USEC_PER_SEC },  /* 365.25 days */
        { "year", 31557600 * USEC_PER_SEC },
        { "y", 31557600 * USEC_PER_SEC },
};

static const struct span_unit *match_unit(const char **p) {
        for (size_t i = 0; i < ELEMENTSOF(span_units); i++) {
                size_t l = strlen(span_units[i].name);
                if (strncmp(*p, span_units[i].name, l) == 0 && !isalpha((unsigned char) (*p)[l])) {
                        *p += l;
                        return &span_units[i];
                }
        }
        return NULL;
}

/* "1h 30min", "1.5h", "90" (seconds) into µs. */
static int parse_span(const char *s, uint64_t *ret) {
        uint64_t total = 0;
        bool any = false;

        for (;;) {
                uint64_t n = 0, frac = 0, denom = 1, v;
                const struct span_unit *u;

                s += strspn(s, " \t");
                if (!*s)
                        break;
                if (!isdigit((unsigned char) *s))
                        return -EINVAL;
                for (; isdigit((unsigned char) *s); s++)
                        if (__builtin_mul_overflow(n, 10, &n) || __builtin_add_overflow(n, (uint64_t) (*s - '0'), &n))
                                return -ERANGE;
                if (*s == '.') {
                        s++;
                        if (!isdigit((unsigned char) *s))
                                return -EINVAL;
                        /* Digits past the ninth can't matter at µs resolution. */
                        for (; isdigit((unsigned char) *s); s++)
                                if (denom < UINT64_C(1000000000)) {
                                        frac = frac * 10 + (uint64_t) (*s - '0');
                                        denom *= 10;
                                }
                }
                s += strspn(s, " \t");
                u = isalpha((unsigned char) *s) ? match_unit(&s) : NULL;
                if (!u && isalpha((unsigned char) *s))
                        return -EINVAL;
                v = u ? u->usec : USEC_PER_SEC;
                if (__builtin_mul_overflow(n, v, &n))
                        return -ERANGE;
                /* frac < denom ≤ 1e9 and v ≤ ~3.2e13: compute in 128 bits. */
                n += (uint64_t) (((unsigned __int128) frac * v) / denom);
                if (__builtin_add_overflow(total, n, &total))
                        return -ERANGE;
                any = true;
        }
        if (!any)
                return -EINVAL;
        *ret = total;
        return 0;
}

/* Exactly n digits into *ret. */
static bool digits(const char **p, unsigned n, int *ret) {
        int v = 0;

        for (unsigned i = 0; i < n; i++) {
                if (!isdigit((unsigned char) (*p)[i]))
                        return false;
                v = v * 10 + ((*p)[i] - '0');
        }
        *p += n;
        *ret = v;
        return true;
}

static bool leap(int y) {
        return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int y, int m) {
        static const int d[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
        return m == 2 && leap(y) ? 29 : d[m - 1];
}

/* "HH:MM[:SS[.frac]]"; leaves *p after it. */
static int parse_clock(const char **p, struct tm *tm, uint64_t *ret_frac_usec) {
        uint64_t frac = 0, scale = 100000;
        int h, m, sec = 0;

        if (!digits(p, 2, &h) || **p != ':')
                return -EINVAL;
        (*p)++;
        if (!digits(p, 2, &m))
                return -EINVAL;
        if (**p == ':') {
                (*p)++;
                if (!digits(p, 2, &sec))
                        return -EINVAL;
                if (**p == '.') {
                        (*p)++;
                        if (!isdigit((unsigned char) **p))
                                return -EINVAL;
                        for (; isdigit((unsigned char) **p); (*p)++) {
                                frac += (uint64_t) (**p - '0') * scale;
                                scale /= 10;
                        }
                }
        }
        if (h > 23 || m > 59 || sec > 59)
                return -EINVAL;
        tm->tm_hour = h;
        tm->tm_min = m;
        tm->tm_sec = sec;
        *ret_frac_usec = frac;
        return 0;
}

static int tm_to_usec(struct tm *tm, bool utc, uint64_t frac_usec, uint64_t *ret) {
        time_t t;

        tm->tm_isdst = -1;
        t = utc ? timegm(tm) : mktime(tm);
        /* Before the epoch (or mktime's -1): no journal record is that old. */
        if (t < 0)
                return -ERANGE;
        if ((uint64_t) t > (UINT64_MAX - frac_usec) / USEC_PER_SEC)
                return -ERANGE;
        *ret = (uint64_t) t * USEC_PER_SEC + frac_usec;
        return 0;
}

/* Midnight, days_off days from the day of now (local or UTC). */
static int day_start(uint64_t now_usec, int days_off, bool utc, uint64_t *ret) {
        time_t now = (time_t) (now_usec / USEC_PER_SEC);
        struct tm tm;

        if (!(utc ? gmtime_r(&now, &tm) : localtime_r(&now, &tm)))
                return -ERANGE;
        tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
        tm.tm_mday += days_off;
        return tm_to_usec(&tm, utc, 0, ret);
}

static int parse_absolute(const char *s, uint64_t now_usec, bool utc, uint64_t *ret) {
        struct tm tm = {};
        uint64_t frac = 0;
        int y, mo, d, k;

        if (isdigit((unsigned char) s[0]) && isdigit((unsigned char) s[1]) && s[2] == ':') {
                /* A time of day: today's. */
                time_t now = (time_t) (now_usec / USEC_PER_SEC);
                if (!(utc ? gmtime_r(&now, &tm) : localtime_r(&now, &tm)))
                        return -ERANGE;
                k = parse_clock(&s, &tm, &frac);
                if (k < 0)
                        return k;
                if (*s)
                        return -EINVAL;
                return tm_to_usec(&tm, utc, frac, ret);
        }

        if (!digits(&s, 4, &y) || *s++ != '-' || !digits(&s, 2, &mo) || *s++ != '-' || !digits(&s, 2, &d))
                return -EINVAL;
        if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo))
                return -EINVAL;
        tm.tm_year = y - 1900;
        tm.tm_mon = mo - 1;
        tm.tm_mday = d;
        if (*s == ' ' || *s == 'T') {
                s++;
                k = parse_clock(&s, &tm, &frac);
                if (k < 0)
                        return k;
        }
        if (*s)
                return -EINVAL;
        return tm_to_usec(&tm, utc, frac, ret);
}

int usage_parse_time(const char *s, uint64_t now_usec, uint64_t *ret_usec) {
        char buf[TIME_SPEC_MAX + 1];
        uint64_t v = 0, span;
        size_t len;
        bool utc = false;
        int k = 0;

        if (!s || !ret_usec)
                return -EINVAL;
        len = strnlen(s, TIME_SPEC_MAX + 1);
        if (len == 0 || len > TIME_SPEC_MAX)
                return -EINVAL;
        memcpy(buf, s, len + 1);
        /* Trim blanks, as journalctl does. */
        while (len > 0 && isspace((unsigned char) buf[len - 1]))
                buf[--len] = 0;
        s = buf + strspn(buf, " \t");
        len = strlen(s);
        if (len == 0)
                return -EINVAL;

        if (streq(s, "now"))
                v = now_usec;
        else if (streq(s, "today"))
                k = day_start(now_usec, 0, false, &v);
        else if (streq(s, "yesterday"))
                k = day_start(now_usec, -1, false, &v);
        else if (streq(s, "tomorrow"))
                k = day_start(now_usec, 1, false, &v);
        else if (s[0] == '@') {
                /* Seconds since the epoch, maybe with a fraction. */
                if (!isdigit((unsigned char) s[1]) || strspn(s + 1, "0123456789.") != strlen(s + 1))
                        return -EINVAL;
                k = parse_span(s + 1, &v);
        } else if (s[0] == '-' || s[0] == '+') {
                k = parse_span(s + 1, &span);
                if (k < 0)
                        return k;
                if (s[0] == '-') {
                        if (span > now_usec)
                                return -ERANGE;
                        v = now_usec - span;
                } else if (__builtin_add_overflow(now_usec, span, &v))
                        return -ERANGE;
        } else if (len > 4 && streq(s + len - 4, " ago")) {
                buf[s - buf + len - 4] = 0;
                k = parse_span(s, &span);
                if (k < 0)
                        return k;
                if (span > now_usec)
                        return -ERANGE;
                v = now_usec - span;
        } else {
                if (s[len - 1] == 'Z') {
                        utc = true;
                        buf[s - buf + --len] = 0;
                } else if (len > 4 && streq(s + len - 4, " UTC")) {
                        utc = true;
                        len -= 4;
                        buf[s - buf + len] = 0;
                }
                k = parse_absolute(s, now_usec, utc, &v);
        }
        if (k < 0)
                return k;
        *ret_usec = v;
        return 0;
}

/* ---------------------------------------------------------------- --by */

static const char *const by_names[_USAGE_BY_MAX] = {
        [USAGE_BY_TEAM] = "team",
        [USAGE_BY_MODEL] = "model",
        [USAGE_BY_ROUTE] = "route",
        [USAGE_BY_KEY] = "key",
        [USAGE_BY_UNIT] = "unit",
        [USAGE_BY_DAY] = "day",
        [USAGE_BY_HOST] = "host",
};

const char *usage_by_to_string(usage_by b) {
        if ((unsigned) b >= _USAGE_BY_MAX)
                return NULL;
        return by_names[b];
}

int usage_parse_by(const char *s, usage_by by[static _USAGE_BY_MAX], size_t *n) {
        usage_by found[_USAGE_BY_MAX];
        size_t n_found = 0, cur;

        if (!s || !by || !n || *n > _USAGE_BY_MAX)
                return -EINVAL;
        cur = *n;
        for (;;) {
                size_t l = strcspn(s, ",");
                usage_by b = _USAGE_BY_MAX;
                bool seen = false;

                for (size_t i = 0; i < _USAGE_BY_MAX; i++)
                        if (l == strlen(by_names[i]) && strncmp(s, by_names[i], l) == 0)
                                b = (usage_by) i;
                if (b == _USAGE_BY_MAX)
                        return -EINVAL;
                for (size_t i = 0; i < n_found; i++)
                        seen = seen || found[i] == b;
                if (!seen)
                        found[n_found++] = b;
                if (!s[l])
                        break;
                s += l + 1;
        }
        /* All valid: only now touch the caller's list. */
        for (size_t i = 0; i < n_found; i++) {
                bool dup = false;
                for (size_t j = 0; j < cur; j++)
                        dup = dup || by[j] == found[i];
                if (!dup)
                        by[cur++] = found[i];
        }
        *n = cur;
        return 0;
}
