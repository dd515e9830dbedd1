/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 12 of 12, base: calls only libraries. */

/* Small helpers shared by the agent, the client and the tests: cleanup
 * macros in the style of systemd's, and a growable byte buffer. Nothing here
 * logs. */

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <systemd/sd-event.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define USEC_PER_SEC UINT64_C(1000000)
#define USEC_PER_MSEC UINT64_C(1000)

static inline void freep(void *p) {
        free(*(void **) p);
}
#define _cleanup_free_ _cleanup_(freep)

static inline void closep(int *fd) {
        if (*fd >= 0) {
                int saved = errno;
                close(*fd);
                errno = saved;
        }
}
#define _cleanup_close_ _cleanup_(closep)

static inline void fclosep(FILE **f) {
        if (*f)
                fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(fclosep)

/* Hand ownership out of a cleanup variable. */
#define TAKE_PTR(p)                                                     \
        ({                                                              \
                __typeof__(p) _tp = (p);                                \
                (p) = NULL;                                             \
                _tp;                                                    \
        })
#define TAKE_FD(fd)                                                     \
        ({                                                              \
                int _tf = (fd);                                         \
                (fd) = -1;                                              \
                _tf;                                                    \
        })

static inline bool streq(const char *a, const char *b) {
        return strcmp(a, b) == 0;
}
static inline bool streq_ptr(const char *a, const char *b) {
        if (!a || !b)
                return a == b;
        return strcmp(a, b) == 0;
}
static inline const char *strempty(const char *s) {
        return s ?: "";
}

/* Growable byte buffer; always NUL-terminated so text can be read in place. */
struct kb_buf {
        char *data;
        size_t len;
        size_t cap;
};

int kb_buf_reserve(struct kb_buf *b, size_t extra);
int kb_buf_append(struct kb_buf *b, const void *p, size_t n);
int kb_buf_appendf(struct kb_buf *b, const char *fmt, ...) _printf_(2, 3);
/* Drop the first n bytes. */
void kb_buf_consume(struct kb_buf *b, size_t n);
void kb_buf_clear(struct kb_buf *b);
/* Zero the bytes, then free them: for buffers that held a secret. */
void kb_buf_wipe(struct kb_buf *b);
void kb_buf_free(struct kb_buf *b);

/* Parse "32M", "64K", "1G", "123" into bytes. */
int kb_parse_size(const char *s, uint64_t *ret);
/* Parse "10s", "250ms", "5min", "2h", "1d", "30" (seconds) into µs. */
int kb_parse_duration(const char *s, uint64_t *ret_usec);

/* Random bytes from libsodium, drawn from a small per-thread pool so that a
 * request id or a routing pick does not cost a getrandom() call each. */
void kb_random_bytes(void *buf, size_t n);
uint32_t kb_random_u32(void);

/* Write all of buf (a short write, EINTR: go on). 0 or -errno (-EIO when
 * the fd takes nothing). */
int kb_write_all(int fd, const void *buf, size_t n);

/* Replace path with the len bytes of buf so that a crash leaves the old
 * file or the new one, never a part: write "PATH.tmp" (a fixed name, so a
 * crash leaves one stale file that the next write reuses; only one process
 * writes these files), fsync it, rename it over path. The temp file is
 * opened with mode (the umask applies) and without following a symlink;
 * with KB_WRITE_EXACT_MODE it is then chmod'ed to mode, whatever the umask
 * or the mode a stale temp file had. The directory is not fsync'ed. 0 or
 * -errno; the temp file is removed on failure. */
#define KB_WRITE_EXACT_MODE 1U
int kb_write_file_atomic(const char *path, const void *buf, size_t len, mode_t mode, unsigned flags);

/* Nearest rank: the smallest of n sorted values (n > 0) with at least pct%
 * of them at or below it. kb_sort_u32() sorts values ascending for it. */
void kb_sort_u32(uint32_t *v, size_t n);
uint32_t kb_nearest_rank_u32(const uint32_t *sorted, size_t n, unsigned pct);

/* FNV-1a, 64 bit: the spool's record checksum and the usage report's hash
 * table. Not for anything an attacker may choose to collide. */
uint64_t kb_fnv1a64(const void *p, size_t n);

uint64_t kb_now_usec(void); /* CLOCK_MONOTONIC */
/* Work for "soon, once for a burst": arms *timer (made on first use) to fire
 * once delay_usec from now, unless it is armed already (then it is left as
 * it is: re-arming per call is what this avoids). 0 or -errno; on an error
 * the caller does the work now. */
int kb_timer_arm_in(sd_event *e, sd_event_source **timer, uint64_t delay_usec, sd_event_time_handler_t handler,
                    void *userdata, const char *description);
uint64_t kb_realtime_usec(void);

/* Case-insensitive ASCII compare of an HTTP header name. */
bool kb_header_name_eq(const char *a, size_t alen, const char *b);
