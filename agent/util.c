/* SPDX-License-Identifier: MIT */
#include "util.h"

#include <unistd.h>
#include <ctype.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sodium.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

int kb_buf_reserve(struct kb_buf *b, size_t extra) {
        if (extra > SIZE_MAX - b->len - 1)
                return -ENOMEM;
        size_t need = b->len + extra + 1;
        if (need <= b->cap)
                return 0;
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need)
                cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        char *d = realloc(b->data, cap);
        if (!d)
                return -ENOMEM;
        b->data = d;
        b->cap = cap;
        return 0;
}

int kb_buf_append(struct kb_buf *b, const void *p, size_t n) {
        int r = kb_buf_reserve(b, n);
        if (r < 0)
                return r;
        if (n)
                memcpy(b->data + b->len, p, n);
        b->len += n;
        b->data[b->len] = 0;
        return 0;
}

int kb_buf_appendf(struct kb_buf *b, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(NULL, 0, fmt, ap);
        va_end(ap);
        if (n < 0)
                return -EINVAL;
        int r = kb_buf_reserve(b, (size_t) n);
        if (r < 0)
                return r;
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, (size_t) n + 1, fmt, ap);
        va_end(ap);
        b->len += (size_t) n;
        return 0;
}

void kb_buf_consume(struct kb_buf *b, size_t n) {
        if (n >= b->len) {
                b->len = 0;
                if (b->data)
                        b->data[0] = 0;
                return;
        }
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
        b->data[b->len] = 0;
}

void kb_buf_clear(struct kb_buf *b) {
        b->len = 0;
        if (b->data)
                b->data[0] = 0;
}

void kb_buf_wipe(struct kb_buf *b) {
        if (b->data)
                sodium_memzero(b->data, b->cap);
        kb_buf_free(b);
}

void kb_buf_free(struct kb_buf *b) {
        free(b->data);
        *b = (struct kb_buf) {};
}

struct unit_scale {
        const char *suffix;
        uint64_t mul;
};

static int parse_scaled(const char *s, const struct unit_scale *units, size_t n_units,
                        uint64_t default_mul, uint64_t *ret) {
        if (!s || !*s)
                return -EINVAL;
        const char *p = s;
        while (isspace((unsigned char) *p))
                p++;
        if (!isdigit((unsigned char) *p))
                return -EINVAL;
        errno = 0;
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        if (errno)
                return -errno;
        while (isspace((unsigned char) *end))
                end++;
        size_t sl = strlen(end);
        while (sl > 0 && isspace((unsigned char) end[sl - 1]))
                sl--;
        uint64_t mul = default_mul;
        if (sl > 0) {
                bool found = false;
                for (size_t i = 0; i < n_units; i++)
                        if (strlen(units[i].suffix) == sl && strncasecmp(end, units[i].suffix, sl) == 0) {
                                mul = units[i].mul;
                                found = true;
                                break;
                        }
                if (!found)
                        return -EINVAL;
        }
        if (v > UINT64_MAX / mul)
                return -ERANGE;
        *ret = (uint64_t) v * mul;
        return 0;
}

int kb_parse_size(const char *s, uint64_t *ret) {
        static const struct unit_scale units[] = {
                { "B", 1 },
                { "K", UINT64_C(1) << 10 }, { "KB", UINT64_C(1) << 10 }, { "KiB", UINT64_C(1) << 10 },
                { "M", UINT64_C(1) << 20 }, { "MB", UINT64_C(1) << 20 }, { "MiB", UINT64_C(1) << 20 },
                { "G", UINT64_C(1) << 30 }, { "GB", UINT64_C(1) << 30 }, { "GiB", UINT64_C(1) << 30 },
        };
        return parse_scaled(s, units, ELEMENTSOF(units), 1, ret);
}

int kb_parse_duration(const char *s, uint64_t *ret_usec) {
        static const struct unit_scale units[] = {
                { "us", 1 },
                { "ms", USEC_PER_MSEC },
                { "s", USEC_PER_SEC }, { "sec", USEC_PER_SEC },
                { "m", 60 * USEC_PER_SEC }, { "min", 60 * USEC_PER_SEC },
                { "h", 3600 * USEC_PER_SEC },
                { "d", 86400 * USEC_PER_SEC },
        };
        return parse_scaled(s, units, ELEMENTSOF(units), USEC_PER_SEC, ret_usec);
}

uint64_t kb_now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

uint64_t kb_realtime_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

bool kb_header_name_eq(const char *a, size_t alen, const char *b) {
        return strlen(b) == alen && strncasecmp(a, b, alen) == 0;
}

#define RANDOM_POOL 512

void kb_random_bytes(void *buf, size_t n) {
        static __thread unsigned char pool[RANDOM_POOL];
        static __thread size_t left;
        unsigned char *out = buf;

        if (n > RANDOM_POOL / 4) {
                randombytes_buf(buf, n);
                return;
        }
        while (n > 0) {
                if (left == 0) {
                        randombytes_buf(pool, sizeof(pool));
                        left = sizeof(pool);
                }
                size_t k = MIN(n, left);
                /* Hand out from the end and wipe what was handed out: the
                 * pool never holds bytes that were already used. */
                memcpy(out, pool + left - k, k);
                sodium_memzero(pool + left - k, k);
                left -= k;
                out += k;
                n -= k;
        }
}

uint32_t kb_random_u32(void) {
        uint32_t v;

        kb_random_bytes(&v, sizeof(v));
        return v;
}

uint64_t kb_fnv1a64(const void *p, size_t n) {
        const unsigned char *b = p;
        uint64_t h = UINT64_C(0xcbf29ce484222325);

        for (size_t i = 0; i < n; i++) {
                h ^= b[i];
                h *= UINT64_C(0x100000001b3);
        }
        return h;
}

int kb_write_all(int fd, const void *buf, size_t n) {
        const char *p = buf;
        while (n > 0) {
                ssize_t k = write(fd, p, n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return -errno;
                if (k == 0)
                        return -EIO;
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

int kb_write_file_atomic(const char *path, const void *buf, size_t len, mode_t mode, unsigned flags) {
        _cleanup_free_ char *tmp = NULL;

        if (!path || (!buf && len > 0))
                return -EINVAL;
        if (asprintf(&tmp, "%s.tmp", path) < 0) {
                tmp = NULL;
                return -ENOMEM;
        }
        _cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
        if (fd < 0)
                return -errno;
        int r = (flags & KB_WRITE_EXACT_MODE) && fchmod(fd, mode) < 0 ? -errno : 0;
        if (r == 0)
                r = kb_write_all(fd, buf, len);
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0)
                (void) unlink(tmp);
        return r;
}

static int cmp_u32(const void *a, const void *b) {
        uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;
        return x < y ? -1 : x > y;
}

void kb_sort_u32(uint32_t *v, size_t n) {
        qsort(v, n, sizeof(uint32_t), cmp_u32);
}

uint32_t kb_nearest_rank_u32(const uint32_t *sorted, size_t n, unsigned pct) {
        size_t rank = (size_t) (((uint64_t) n * pct + 99) / 100);
        return sorted[rank ? rank - 1 : 0];
}

int kb_timer_arm_in(sd_event *e, sd_event_source **timer, uint64_t delay_usec, sd_event_time_handler_t handler,
                    void *userdata, const char *description) {
        int enabled = SD_EVENT_OFF, r;
        uint64_t now;

        if (*timer && sd_event_source_get_enabled(*timer, &enabled) >= 0 && enabled != SD_EVENT_OFF)
                return 0;
        if (sd_event_now(e, CLOCK_MONOTONIC, &now) < 0)
                now = kb_now_usec();
        if (!*timer) {
                r = sd_event_add_time(e, timer, CLOCK_MONOTONIC, now + delay_usec, 100 * USEC_PER_MSEC, handler,
                                      userdata);
                if (r < 0)
                        return r;
                if (description)
                        (void) sd_event_source_set_description(*timer, description);
                return sd_event_source_set_enabled(*timer, SD_EVENT_ONESHOT);
        }
        r = sd_event_source_set_time(*timer, now + delay_usec);
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(*timer, SD_EVENT_ONESHOT);
}
