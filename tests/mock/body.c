/* SPDX-License-Identifier: MIT */
/* Request bodies: in memory up to 8 MiB, past that spilled to an unlinked
 * temporary file and mapped for parsing, so that an upload of up to 1 GiB
 * never sits in the mock's memory (a scan gives the mapped pages back as
 * it goes: mock_body_drop). */

#include "mock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "util.h"

void mock_body_init(struct mock_body *b) {
        *b = (struct mock_body) { .fd = -1 };
}

/* $TMPDIR (or /tmp): O_TMPFILE where the file system has it, else a
 * mkstemp name unlinked at once. */
static int open_spill_file(void) {
        const char *dir = getenv("TMPDIR");
        if (!dir || !*dir)
                dir = "/tmp";
        int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (fd >= 0)
                return fd;
        _cleanup_free_ char *name = NULL;
        if (asprintf(&name, "%s/kb-mock-body.XXXXXX", dir) < 0)
                return -ENOMEM;
        fd = mkostemp(name, O_CLOEXEC);
        if (fd < 0)
                return -errno;
        (void) unlink(name);
        return fd;
}

int mock_body_spill(struct mock_body *b) {
        if (b->fd >= 0)
                return 0;
        _cleanup_close_ int fd = open_spill_file();
        if (fd < 0)
                return fd;
        int r = kb_write_all(fd, b->mem.data, b->mem.len);
        if (r < 0)
                return r;
        kb_buf_free(&b->mem);
        b->fd = TAKE_FD(fd);
        return 0;
}

int mock_body_append(struct mock_body *b, const char *p, size_t n) {
        int r;
        if (b->len + n > MOCK_MAX_REQUEST_BODY)
                return -E2BIG;
        if (b->fd < 0 && b->len + n > MOCK_SPILL_BYTES && (r = mock_body_spill(b)) < 0)
                return r;
        r = b->fd >= 0 ? kb_write_all(b->fd, p, n) : kb_buf_append(&b->mem, p, n);
        if (r < 0)
                return r;
        b->len += n;
        return 0;
}

int mock_body_finish(struct mock_body *b, const char **ret, size_t *ret_len) {
        if (b->fd < 0) {
                *ret = b->mem.data ?: "";
                *ret_len = b->mem.len;
                return 0;
        }
        if (!b->map && b->len > 0) {
                void *m = mmap(NULL, (size_t) b->len, PROT_READ, MAP_PRIVATE, b->fd, 0);
                if (m == MAP_FAILED)
                        return -errno;
                b->map = m;
        }
        *ret = b->map ?: "";
        *ret_len = (size_t) b->len;
        return 0;
}

void mock_body_reset(struct mock_body *b) {
        if (b->map)
                (void) munmap(b->map, (size_t) b->len);
        b->map = NULL;
        if (b->fd >= 0)
                close(b->fd);
        b->fd = -1;
        b->len = 0;
        /* don't keep a large buffer for the life of the connection */
        if (b->mem.cap > 64 * 1024)
                kb_buf_free(&b->mem);
        kb_buf_clear(&b->mem);
}

void mock_body_drop(const struct mock_request *req, size_t upto) {
        if (!req->mapped)
                return;
        size_t page = (size_t) sysconf(_SC_PAGESIZE);
        size_t end = MIN(upto, req->body_len) / page * page;
        if (end > 0)
                (void) madvise((void *) req->body, end, MADV_DONTNEED);
}
