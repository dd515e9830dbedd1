/* SPDX-License-Identifier: MIT */
/* The bytes for upstream come from three places in order: the spill file
 * (what waited for the model beyond KB_UPLOAD_MEM), the memory queue, and
 * the connection through the form reader. */

#include <fcntl.h>
#include <unistd.h>

#include "batch-file.h"
#include "http.h"
#include "multipart.h"
#include "upload.h"
#include "util.h"

#define PULL 65536u                     /* read from the connection at a time */
#define READY_HIGH (256u * 1024u)       /* stop pulling once this much waits for curl */

struct kb_upload {
        struct kb_conn *conn;
        struct kb_multipart *mp;
        bool want_model;
        bool model_set;
        bool in_done;           /* the app's body and the form ended */
        int error;
        int64_t app_size;       /* Content-Length, -1 chunked */
        char *spill_dir;

        bool scan;              /* the file part is read as a batch input file */
        struct kb_batch_file bf;

        struct kb_buf out;      /* bytes for upstream */
        size_t out_off;
        int spill_fd;
        uint64_t spill_len, spill_off;
};

int kb_upload_new(struct kb_conn *c, const char *content_type, int64_t content_length, bool want_model,
                  const char *spill_dir, struct kb_upload **ret, const char **ret_why) {
        struct kb_upload *u = calloc(1, sizeof(*u));
        if (!u)
                return -ENOMEM;
        u->conn = c;
        u->app_size = content_length;
        u->spill_fd = -1;
        u->want_model = want_model;
        int r = kb_multipart_new(content_type, NULL, &u->mp, ret_why);
        if (r >= 0 && spill_dir && !(u->spill_dir = strdup(spill_dir)))
                r = -ENOMEM;
        if (r < 0) {
                kb_upload_free(u);
                return r;
        }
        if (want_model)
                kb_multipart_defer_model(u->mp);
        *ret = u;
        return 0;
}

struct kb_upload *kb_upload_free(struct kb_upload *u) {
        if (!u)
                return NULL;
        kb_multipart_free(u->mp);
        kb_batch_file_done(&u->bf);
        kb_buf_free(&u->out);
        if (u->spill_fd >= 0)
                close(u->spill_fd);
        free(u->spill_dir);
        free(u);
        return NULL;
}

static size_t ready(const struct kb_upload *u) {
        return (size_t) (u->spill_len - u->spill_off) + (u->out.len - u->out_off);
}

/* Waiting for the model: what is held beyond KB_UPLOAD_MEM goes to disk. */
static int spill(struct kb_upload *u) {
        if (u->out.len - u->out_off <= KB_UPLOAD_MEM)
                return 0;
        if (u->spill_fd < 0) {
                u->spill_fd = open(u->spill_dir ?: "/var/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
                if (u->spill_fd < 0)
                        return -EIO;
        }
        const char *p = u->out.data + u->out_off;
        size_t n = u->out.len - u->out_off;
        while (n > 0) {
                ssize_t w = pwrite(u->spill_fd, p, n, (off_t) u->spill_len);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w <= 0)
                        return -EIO;
                u->spill_len += (uint64_t) w;
                p += w;
                n -= (size_t) w;
        }
        u->out_off = 0;
        kb_buf_clear(&u->out);
        return 0;
}

static int fail(struct kb_upload *u, int error) {
        if (!u->error)
                u->error = error;
        return u->error;
}

int kb_upload_pump(struct kb_upload *u) {
        char buf[PULL];

        for (;;) {
                if (u->error)
                        return u->error;
                if (kb_multipart_waiting(u->mp))
                        return KB_UPLOAD_MODEL;
                if (u->in_done)
                        return KB_UPLOAD_READY;
                if (u->model_set || !u->want_model) {
                        if (ready(u) >= READY_HIGH)
                                return KB_UPLOAD_READY;
                } else {
                        int q = spill(u);
                        if (q < 0)
                                return fail(u, q);
                }
                /* the queue's front is consumed: give its room back */
                if (u->out_off > 0 && u->out_off == u->out.len) {
                        u->out_off = 0;
                        kb_buf_clear(&u->out);
                }
                ssize_t n = kb_conn_body_read(u->conn, buf, sizeof(buf));
                if (n == -EAGAIN)
                        return ready(u) > 0 && (u->model_set || !u->want_model) ? KB_UPLOAD_READY : KB_UPLOAD_MORE;
                if (n < 0)
                        return fail(u, (int) n);
                int q = n == 0 ? kb_multipart_finish(u->mp, &u->out)
                               : kb_multipart_feed(u->mp, buf, (size_t) n, &u->out);
                /* the body ended while the model waits: finished after set_model */
                if (q == -EAGAIN)
                        return KB_UPLOAD_MODEL;
                if (q < 0)
                        return fail(u, q);
                if (n == 0)
                        u->in_done = true;
        }
}

const char *kb_upload_model(const struct kb_upload *u) {
        return kb_multipart_model(u->mp);
}

const char *kb_upload_field(const struct kb_upload *u, const char *name) {
        return kb_multipart_field(u->mp, name);
}

int kb_upload_set_model(struct kb_upload *u, const char *model) {
        if (u->model_set)
                return -EALREADY;
        size_t before = kb_multipart_model_len(u->mp);
        int q = kb_multipart_set_model(u->mp, model, &u->out);
        if (q < 0)
                return fail(u, q);
        u->model_set = true;
        if (u->app_size >= 0)
                u->app_size = u->app_size - (int64_t) before + (int64_t) strlen(model);
        return 0;
}

int64_t kb_upload_size(const struct kb_upload *u) {
        return u->app_size;
}

uint64_t kb_upload_file_bytes(const struct kb_upload *u) {
        return kb_multipart_file_bytes(u->mp);
}

ssize_t kb_upload_read(struct kb_upload *u, char *buf, size_t len) {
        if (u->spill_off < u->spill_len) {
                size_t n = (size_t) MIN((uint64_t) len, u->spill_len - u->spill_off);
                ssize_t r = pread(u->spill_fd, buf, n, (off_t) u->spill_off);
                if (r <= 0)
                        return fail(u, -EIO);
                u->spill_off += (uint64_t) r;
                if (u->spill_off == u->spill_len) {
                        close(u->spill_fd);
                        u->spill_fd = -1;
                }
                return r;
        }
        if (u->out.len - u->out_off == 0) {
                int q = kb_upload_pump(u);
                if (q < 0)
                        return q;
        }
        size_t avail = u->out.len - u->out_off;
        if (avail > 0) {
                size_t n = MIN(len, avail);
                memcpy(buf, u->out.data + u->out_off, n);
                u->out_off += n;
                if (u->out_off == u->out.len) {
                        u->out_off = 0;
                        kb_buf_clear(&u->out);
                }
                return (ssize_t) n;
        }
        if (u->error)
                return u->error;
        return u->in_done ? 0 : -EAGAIN;
}

static void on_file(void *userdata, const char *name, const char *buf, size_t len, bool end) {
        struct kb_upload *u = userdata;
        if (!streq(name, "file"))
                return;
        if (end)
                kb_batch_file_end(&u->bf);
        else
                kb_batch_file_feed(&u->bf, buf, len);
}

void kb_upload_scan_batch_file(struct kb_upload *u) {
        u->scan = true;
        kb_multipart_on_file(u->mp, on_file, u);
}

const struct kb_batch_file *kb_upload_batch_file(const struct kb_upload *u) {
        return u && u->scan ? &u->bf : NULL;
}

int kb_upload_error_code(const struct kb_upload *u) {
        return u ? u->error : 0;
}

const char *kb_upload_error(const struct kb_upload *u) {
        if (!u)
                return NULL;
        switch (u->error) {
        case -EBADMSG:
                return kb_multipart_error(u->mp);
        case -EFBIG:
                return "the upload is larger than max_upload_body";
        case -ETIMEDOUT:
                return "the upload stalled longer than header_timeout";
        case -EPIPE:
                return "the upload ended early: the app closed its side";
        case -EIO:
                return "the upload could not be held while its model field was read";
        default:
                return NULL;
        }
}
