/* SPDX-License-Identifier: MIT */
/* The journal spool: an ordered, bounded, crash-safe queue of records on
 * disk. Format and guarantees: spool.h. */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

#define SEG_MAGIC "KBSPOOL1"
#define SEG_HEADER 8
#define REC_MAGIC UINT32_C(0x3152424b) /* "KBR1" little endian */
#define HEAD_FILE "head"
#define HEAD_LEN 34                    /* "%016x %016x\n" */
#define SEG_NAME_LEN 20                /* 16 hex digits + ".seg" */
#define MAX_SEGMENTS 65536

struct seg {
        uint64_t no;
        uint64_t size;          /* bytes in the file */
        uint64_t pending;       /* records not sent yet */
};

struct kb_spool {
        int dir_fd;
        int head_fd;
        int read_fd;            /* segs[0], opened on demand */
        int write_fd;           /* segs[n_segs - 1] while it takes appends, else -1 */
        uint64_t max_bytes;
        uint64_t max_records;

        struct seg *segs;       /* ascending; segs[0] holds the oldest pending record */
        size_t n_segs;
        uint64_t read_off;      /* in segs[0] */
        uint64_t peeked_len;    /* size of the record at read_off, 0 when unknown */
        uint64_t next_no;

        uint64_t n_pending;
        uint64_t n_bytes;
        uint64_t n_discarded;
        unsigned pops_unsynced;
        bool write_dirty;
        bool dir_dirty;
};

/* ---- little helpers ---- */


static void put_u32(unsigned char *p, uint32_t v) {
        for (int i = 0; i < 4; i++)
                p[i] = (unsigned char) (v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v) {
        for (int i = 0; i < 8; i++)
                p[i] = (unsigned char) (v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p) {
        return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
}

static uint64_t get_u64(const unsigned char *p) {
        return (uint64_t) get_u32(p) | (uint64_t) get_u32(p + 4) << 32;
}

static int pread_all(int fd, void *buf, size_t n, uint64_t off) {
        size_t done = 0;

        while (done < n) {
                ssize_t k = pread(fd, (char *) buf + done, n - done, (off_t) (off + done));
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        return -ENODATA;
                done += (size_t) k;
        }
        return 0;
}

static void seg_name(uint64_t no, char ret[SEG_NAME_LEN + 1]) {
        snprintf(ret, SEG_NAME_LEN + 1, "%016" PRIx64 ".seg", no);
}

static bool parse_seg_name(const char *name, uint64_t *ret) {
        if (strlen(name) != SEG_NAME_LEN || !streq(name + 16, ".seg"))
                return false;
        for (int i = 0; i < 16; i++)
                if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
                        return false;
        *ret = strtoull(name, NULL, 16);
        return true;
}

static void close_fd(int *fd) {
        if (*fd >= 0)
                close(*fd);
        *fd = -1;
}

/* Where the oldest unsent record is: the head file, best effort. */
static int write_head(struct kb_spool *s, uint64_t no, uint64_t off, bool sync) {
        char buf[HEAD_LEN + 1];

        if (s->head_fd < 0)
                return -EBADF;
        snprintf(buf, sizeof(buf), "%016" PRIx64 " %016" PRIx64 "\n", no, off);
        ssize_t k = pwrite(s->head_fd, buf, HEAD_LEN, 0);
        if (k < 0)
                return -errno;
        if (k != HEAD_LEN)
                return -EIO;
        if (sync) {
                s->pops_unsynced = 0;
                if (fdatasync(s->head_fd) < 0)
                        return -errno;
        }
        return 0;
}

static int cmp_seg(const void *a, const void *b) {
        const struct seg *x = a, *y = b;
        return x->no < y->no ? -1 : x->no > y->no;
}

static int add_seg(struct kb_spool *s, uint64_t no, uint64_t size, uint64_t pending) {
        if (s->n_segs >= MAX_SEGMENTS)
                return -ENOSPC;
        struct seg *n = reallocarray(s->segs, s->n_segs + 1, sizeof(struct seg));
        if (!n)
                return -ENOMEM;
        s->segs = n;
        s->segs[s->n_segs++] = (struct seg) { .no = no, .size = size, .pending = pending };
        return 0;
}

/* Drop segs[0] (sent in full, or damaged) from disk and the list. */
static void remove_first_seg(struct kb_spool *s) {
        char name[SEG_NAME_LEN + 1];

        if (s->n_segs == 0)
                return;
        close_fd(&s->read_fd);
        if (s->n_segs == 1)
                close_fd(&s->write_fd);
        seg_name(s->segs[0].no, name);
        (void) unlinkat(s->dir_fd, name, 0);
        s->n_bytes -= MIN(s->n_bytes, s->segs[0].size);
        s->n_pending -= MIN(s->n_pending, s->segs[0].pending);
        memmove(s->segs, s->segs + 1, (s->n_segs - 1) * sizeof(struct seg));
        s->n_segs--;
        s->read_off = SEG_HEADER;
        s->peeked_len = 0;
}

/* ---- open: recover what a previous run left ---- */

/* Read one record header at off of fd (file size size): its total length,
 * or -EBADMSG when there is no complete, valid record there. With payload
 * non-NULL, the payload is read and checked too (malloc'd into *payload). */
static int read_record(int fd, uint64_t off, uint64_t size, uint64_t *ret_len, unsigned char **payload) {
        unsigned char h[KB_SPOOL_RECORD_HEADER];
        uint64_t len, sum;
        int r;

        if (size < off || size - off < KB_SPOOL_RECORD_HEADER)
                return -EBADMSG;
        r = pread_all(fd, h, sizeof(h), off);
        if (r < 0)
                return r == -ENODATA ? -EBADMSG : r;
        len = get_u32(h + 4);
        sum = get_u64(h + 8);
        if (get_u32(h) != REC_MAGIC || len < 4 || len > KB_SPOOL_PAYLOAD_MAX ||
            size - off - KB_SPOOL_RECORD_HEADER < len)
                return -EBADMSG;
        if (payload) {
                _cleanup_free_ unsigned char *p = malloc(len);
                if (!p)
                        return -ENOMEM;
                r = pread_all(fd, p, len, off + KB_SPOOL_RECORD_HEADER);
                if (r < 0)
                        return r == -ENODATA ? -EBADMSG : r;
                if (kb_fnv1a64(p, len) != sum)
                        return -EBADMSG;
                *payload = TAKE_PTR(p);
        }
        *ret_len = KB_SPOOL_RECORD_HEADER + len;
        return 0;
}

/* Validate segment no from its start; truncate a damaged tail. Counts the
 * records from start_off on (start_off must be a record boundary, else the
 * whole segment counts: resending beats losing). */
static int scan_seg(struct kb_spool *s, uint64_t no, uint64_t start_off, bool *ret_keep, uint64_t *ret_size,
                    uint64_t *ret_pending, uint64_t *ret_start) {
        char name[SEG_NAME_LEN + 1], magic[SEG_HEADER];
        _cleanup_close_ int fd = -1;
        uint64_t off = SEG_HEADER, n_all = 0, n_after = 0;
        bool boundary = start_off == SEG_HEADER;
        struct stat st;
        int r;

        seg_name(no, name);
        fd = openat(s->dir_fd, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADMSG;
        if ((uint64_t) st.st_size < SEG_HEADER || pread_all(fd, magic, SEG_HEADER, 0) < 0 ||
            memcmp(magic, SEG_MAGIC, SEG_HEADER) != 0) {
                /* Created but never written (a crash right after creating it), or not ours. */
                s->n_discarded++;
                (void) unlinkat(s->dir_fd, name, 0);
                *ret_keep = false;
                return 0;
        }
        for (;;) {
                uint64_t len;
                _cleanup_free_ unsigned char *p = NULL;

                if (off == (uint64_t) st.st_size)
                        break;
                r = read_record(fd, off, (uint64_t) st.st_size, &len, &p);
                if (r == -EBADMSG) {
                        /* A torn append: what follows cannot be framed. */
                        s->n_discarded++;
                        if (ftruncate(fd, (off_t) off) < 0)
                                return -errno;
                        (void) fdatasync(fd);
                        st.st_size = (off_t) off;
                        break;
                }
                if (r < 0)
                        return r;
                if (off == start_off)
                        boundary = true;
                if (off >= start_off)
                        n_after++;
                n_all++;
                off += len;
        }
        if (start_off == off)
                boundary = true;
        *ret_keep = true;
        *ret_size = (uint64_t) st.st_size;
        *ret_pending = boundary ? n_after : n_all;
        *ret_start = boundary ? start_off : SEG_HEADER;
        return 0;
}

static int read_head_file(struct kb_spool *s, uint64_t *ret_no, uint64_t *ret_off) {
        char buf[HEAD_LEN + 1] = {};
        uint64_t no, off;

        s->head_fd = openat(s->dir_fd, HEAD_FILE, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (s->head_fd < 0)
                return -errno;
        ssize_t k = pread(s->head_fd, buf, HEAD_LEN, 0);
        if (k == HEAD_LEN && buf[16] == ' ' && buf[33] == '\n') {
                buf[16] = buf[33] = 0;
                char *e1, *e2;
                no = strtoull(buf, &e1, 16);
                off = strtoull(buf + 17, &e2, 16);
                if (*e1 == 0 && *e2 == 0) {
                        *ret_no = no;
                        *ret_off = off;
                        return 1;
                }
        }
        return 0; /* none or garbled: start from the oldest segment */
}

static int list_segs(struct kb_spool *s, uint64_t **ret, size_t *ret_n) {
        _cleanup_free_ uint64_t *nos = NULL;
        size_t n = 0;
        int fd = dup(s->dir_fd);
        DIR *d;
        struct dirent *de;

        if (fd < 0)
                return -errno;
        d = fdopendir(fd);
        if (!d) {
                close(fd);
                return -errno;
        }
        rewinddir(d);
        while ((de = readdir(d))) {
                uint64_t no;
                if (!parse_seg_name(de->d_name, &no))
                        continue;
                if (n >= MAX_SEGMENTS) {
                        closedir(d);
                        return -E2BIG;
                }
                uint64_t *m = reallocarray(nos, n + 1, sizeof(uint64_t));
                if (!m) {
                        closedir(d);
                        return -ENOMEM;
                }
                nos = m;
                nos[n++] = no;
        }
        closedir(d);
        *ret = TAKE_PTR(nos);
        *ret_n = n;
        return 0;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

static int recover(struct kb_spool *s) {
        _cleanup_free_ uint64_t *nos = NULL;
        uint64_t hno = 0, hoff = SEG_HEADER;
        size_t n = 0;
        int r;

        r = read_head_file(s, &hno, &hoff);
        if (r < 0)
                return r;
        if (r == 0)
                hno = 0;
        r = list_segs(s, &nos, &n);
        if (r < 0)
                return r;
        if (n > 0)
                qsort(nos, n, sizeof(uint64_t), cmp_u64);
        s->next_no = hno;
        for (size_t i = 0; i < n; i++) {
                char name[SEG_NAME_LEN + 1];
                uint64_t size = 0, pending = 0, start = SEG_HEADER;
                bool keep = false;

                s->next_no = MAX(s->next_no, nos[i] + 1);
                if (nos[i] < hno) { /* sent in full before a crash */
                        seg_name(nos[i], name);
                        (void) unlinkat(s->dir_fd, name, 0);
                        continue;
                }
                r = scan_seg(s, nos[i], nos[i] == hno ? MAX(hoff, (uint64_t) SEG_HEADER) : SEG_HEADER, &keep,
                             &size, &pending, &start);
                if (r < 0)
                        return r;
                if (!keep)
                        continue;
                if (pending == 0) {
                        seg_name(nos[i], name);
                        (void) unlinkat(s->dir_fd, name, 0);
                        continue;
                }
                if (s->n_segs == 0)
                        s->read_off = start;
                r = add_seg(s, nos[i], size, pending);
                if (r < 0)
                        return r;
                s->n_pending += pending;
                s->n_bytes += size;
        }
        if (s->n_segs > 0)
                qsort(s->segs, s->n_segs, sizeof(struct seg), cmp_seg);
        /* Appends always start a fresh segment: the last one may end in
         * what a crash cut, and a new file keeps that reasoning simple. */
        if (s->n_segs == 0)
                (void) write_head(s, s->next_no, SEG_HEADER, true);
        (void) fsync(s->dir_fd);
        return 0;
}

int kb_spool_open(const char *dir, uint64_t max_bytes, uint64_t max_records, struct kb_spool **ret) {
        struct kb_spool *s;
        int r;

        if (!dir || !*dir || !ret)
                return -EINVAL;
        if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                return -errno;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->head_fd = s->read_fd = s->write_fd = -1;
        s->max_bytes = max_bytes ?: KB_SPOOL_MAX_BYTES;
        s->max_records = max_records ?: KB_SPOOL_MAX_RECORDS;
        s->read_off = SEG_HEADER;
        s->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (s->dir_fd < 0) {
                r = -errno;
                free(s);
                return r;
        }
        r = recover(s);
        if (r < 0) {
                kb_spool_free(s);
                return r;
        }
        *ret = s;
        return 0;
}

struct kb_spool *kb_spool_free(struct kb_spool *s) {
        if (!s)
                return NULL;
        (void) kb_spool_sync(s);
        if (s->pops_unsynced > 0 && s->head_fd >= 0)
                (void) fdatasync(s->head_fd);
        close_fd(&s->read_fd);
        close_fd(&s->write_fd);
        close_fd(&s->head_fd);
        close_fd(&s->dir_fd);
        free(s->segs);
        free(s);
        return NULL;
}

/* ---- append ---- */

static int new_segment(struct kb_spool *s) {
        char name[SEG_NAME_LEN + 1];
        int fd, r;

        if (s->n_segs >= MAX_SEGMENTS)
                return -ENOSPC;
        seg_name(s->next_no, name);
        fd = openat(s->dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return -errno;
        r = kb_write_all(fd, SEG_MAGIC, SEG_HEADER);
        if (r >= 0)
                r = add_seg(s, s->next_no, SEG_HEADER, 0);
        if (r < 0) {
                close(fd);
                (void) unlinkat(s->dir_fd, name, 0);
                return r;
        }
        if (s->n_segs == 1)
                s->read_off = SEG_HEADER;
        s->next_no++;
        close_fd(&s->write_fd);
        s->write_fd = fd;
        s->n_bytes += SEG_HEADER;
        s->dir_dirty = true;
        return 0;
}

int kb_spool_append(struct kb_spool *s, const struct iovec *items, size_t n) {
        _cleanup_free_ unsigned char *buf = NULL;
        uint64_t payload = 4, total;
        bool need_seg;
        size_t pos;
        int r;

        if (!s || !items || n == 0)
                return -EINVAL;
        if (n > KB_SPOOL_MAX_ITEMS)
                return -E2BIG;
        for (size_t i = 0; i < n; i++) {
                if (items[i].iov_len > KB_SPOOL_PAYLOAD_MAX || (!items[i].iov_base && items[i].iov_len))
                        return items[i].iov_base ? -E2BIG : -EINVAL;
                payload += 4 + items[i].iov_len;
        }
        if (payload > KB_SPOOL_PAYLOAD_MAX)
                return -E2BIG;
        total = KB_SPOOL_RECORD_HEADER + payload;

        need_seg = s->write_fd < 0 || s->n_segs == 0 || s->segs[s->n_segs - 1].size >= KB_SPOOL_SEGMENT_BYTES;
        if (s->n_pending + 1 > s->max_records || s->n_bytes + total + (need_seg ? SEG_HEADER : 0) > s->max_bytes)
                return -ENOSPC;

        buf = malloc(total);
        if (!buf)
                return -ENOMEM;
        put_u32(buf, REC_MAGIC);
        put_u32(buf + 4, (uint32_t) payload);
        put_u32(buf + KB_SPOOL_RECORD_HEADER, (uint32_t) n);
        pos = KB_SPOOL_RECORD_HEADER + 4;
        for (size_t i = 0; i < n; i++) {
                put_u32(buf + pos, (uint32_t) items[i].iov_len);
                if (items[i].iov_len)
                        memcpy(buf + pos + 4, items[i].iov_base, items[i].iov_len);
                pos += 4 + items[i].iov_len;
        }
        put_u64(buf + 8, kb_fnv1a64(buf + KB_SPOOL_RECORD_HEADER, payload));

        if (need_seg) {
                r = new_segment(s);
                if (r < 0)
                        return r;
        }
        struct seg *w = &s->segs[s->n_segs - 1];
        r = kb_write_all(s->write_fd, buf, total);
        if (r < 0) {
                /* Nothing half-written may stay: the next record would
                 * follow garbage. If even that fails, seal the segment. */
                if (ftruncate(s->write_fd, (off_t) w->size) < 0)
                        close_fd(&s->write_fd);
                return r;
        }
        w->size += total;
        w->pending++;
        s->n_bytes += total;
        s->n_pending++;
        s->write_dirty = true;
        return 0;
}

int kb_spool_sync(struct kb_spool *s) {
        int r = 0;

        if (!s)
                return -EINVAL;
        if (s->write_dirty && s->write_fd >= 0 && fdatasync(s->write_fd) < 0)
                r = -errno;
        s->write_dirty = false;
        if (s->dir_dirty && fsync(s->dir_fd) < 0 && r == 0)
                r = -errno;
        s->dir_dirty = false;
        return r;
}

/* ---- read back ---- */

void kb_spool_entry_clear(struct kb_spool_entry *e) {
        if (!e)
                return;
        free(e->iov);
        free(e->buf);
        *e = (struct kb_spool_entry) {};
}

static int decode(unsigned char *p, uint64_t len, struct kb_spool_entry *ret) {
        uint32_t n = get_u32(p);
        uint64_t pos = 4;
        struct iovec *iov;

        if (n == 0 || n > KB_SPOOL_MAX_ITEMS)
                return -EBADMSG;
        iov = calloc(n, sizeof(struct iovec));
        if (!iov)
                return -ENOMEM;
        for (uint32_t i = 0; i < n; i++) {
                if (len - pos < 4) {
                        free(iov);
                        return -EBADMSG;
                }
                uint32_t l = get_u32(p + pos);
                pos += 4;
                if (len - pos < l) {
                        free(iov);
                        return -EBADMSG;
                }
                iov[i] = (struct iovec) { .iov_base = p + pos, .iov_len = l };
                pos += l;
        }
        if (pos != len) {
                free(iov);
                return -EBADMSG;
        }
        *ret = (struct kb_spool_entry) { .iov = iov, .n = n, .buf = (char *) p };
        return 0;
}

int kb_spool_peek(struct kb_spool *s, struct kb_spool_entry *ret) {
        _cleanup_free_ unsigned char *p = NULL;
        uint64_t len;
        int r;

        if (!s || !ret)
                return -EINVAL;
        if (s->n_pending == 0 || s->n_segs == 0)
                return 0;
        /* Segments whose records were all sent (or skipped). */
        while (s->n_segs > 1 && s->segs[0].pending == 0)
                remove_first_seg(s);
        if (s->read_fd < 0) {
                char name[SEG_NAME_LEN + 1];
                seg_name(s->segs[0].no, name);
                s->read_fd = openat(s->dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
                if (s->read_fd < 0)
                        return -errno;
        }
        s->peeked_len = 0;
        r = read_record(s->read_fd, s->read_off, s->segs[0].size, &len, &p);
        if (r == -EBADMSG) {
                /* Tell a bad checksum (length known: skip one) from a bad
                 * frame (skip the rest of the segment). */
                if (read_record(s->read_fd, s->read_off, s->segs[0].size, &len, NULL) >= 0)
                        s->peeked_len = len;
                return -EBADMSG;
        }
        if (r < 0)
                return r;
        r = decode(p, len - KB_SPOOL_RECORD_HEADER, ret);
        if (r == -EBADMSG)
                s->peeked_len = len;
        if (r < 0)
                return r;
        TAKE_PTR(p);
        s->peeked_len = len;
        return 1;
}

int kb_spool_pop(struct kb_spool *s) {
        struct seg *f;
        uint64_t len;

        if (!s)
                return -EINVAL;
        if (s->n_pending == 0 || s->n_segs == 0)
                return -ENODATA;
        while (s->n_segs > 1 && s->segs[0].pending == 0)
                remove_first_seg(s);
        f = &s->segs[0];
        len = s->peeked_len;
        if (len == 0 && s->read_fd >= 0 && read_record(s->read_fd, s->read_off, f->size, &len, NULL) < 0)
                len = 0;
        if (len == 0 && s->read_fd < 0) {
                char name[SEG_NAME_LEN + 1];
                _cleanup_close_ int fd = -1;
                seg_name(f->no, name);
                fd = openat(s->dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
                if (fd < 0 || read_record(fd, s->read_off, f->size, &len, NULL) < 0)
                        len = 0;
        }
        s->peeked_len = 0;
        if (len == 0) {
                /* Unframeable from here: the rest of this segment is lost. */
                s->n_discarded += f->pending - 1;
                s->n_pending -= f->pending - 1;
                f->pending = 1;
                len = f->size - s->read_off;
                if (s->n_segs == 1)
                        close_fd(&s->write_fd); /* never append after garbage */
        }
        s->read_off += len;
        f->pending--;
        s->n_pending--;

        if (s->n_pending == 0) {
                /* Empty: remove every file, point the head past them. */
                while (s->n_segs > 0)
                        remove_first_seg(s);
                s->n_pending = 0;
                s->n_bytes = 0;
                (void) write_head(s, s->next_no, SEG_HEADER, true);
                return 0;
        }
        if (f->pending == 0 && s->n_segs > 1)
                remove_first_seg(s);
        (void) write_head(s, s->segs[0].no, s->read_off, ++s->pops_unsynced >= KB_SPOOL_HEAD_SYNC);
        return 0;
}

uint64_t kb_spool_n_pending(const struct kb_spool *s) {
        return s ? s->n_pending : 0;
}

uint64_t kb_spool_n_bytes(const struct kb_spool *s) {
        return s ? s->n_bytes : 0;
}

uint64_t kb_spool_n_discarded(const struct kb_spool *s) {
        return s ? s->n_discarded : 0;
}
