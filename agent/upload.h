/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 9 of 12, bodies and usage: calls layers 10, 12. */

/* An upload (multipart/form-data) streamed from the app to the provider: read
 * from the connection as it comes, checked and, for a call with a model, held
 * until the form's model field is read (it decides the target) — in memory up
 * to KB_UPLOAD_MEM, then in an unlinked file in state_dir — then handed to
 * curl with the target's model written in. An upload of any size holds at
 * most a few hundred KiB of memory. Library- like: never logs. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct kb_conn;
struct kb_upload;

#define KB_UPLOAD_MEM (1024u * 1024u)   /* held in memory before the model is known; beyond: the spill file */

/* content_type, content_length (-1: chunked): the request's; want_model:
 * hold at the model field; spill_dir: where a long wait for the model
 * spills. -EINVAL with *ret_why when the Content-Type is not a usable
 * multipart/form-data. */
int kb_upload_new(struct kb_conn *c, const char *content_type, int64_t content_length, bool want_model,
                  const char *spill_dir, struct kb_upload **ret, const char **ret_why);
struct kb_upload *kb_upload_free(struct kb_upload *u);

typedef enum kb_upload_state {
        KB_UPLOAD_MORE,         /* waiting for the app's bytes */
        KB_UPLOAD_MODEL,        /* the model field is read: kb_upload_model(), then kb_upload_set_model() */
        KB_UPLOAD_READY,        /* bytes are ready for upstream, or the upload is complete */
} kb_upload_state;

/* Read what the app has sent so far. A state, or -errno: -EBADMSG (the form
 * is malformed: kb_upload_error()), -EFBIG, -ETIMEDOUT, -EPIPE (from the
 * connection), -EIO (the spill file), -ENOMEM. */
int kb_upload_pump(struct kb_upload *u);
const char *kb_upload_model(const struct kb_upload *u);
const char *kb_upload_field(const struct kb_upload *u, const char *name);
int kb_upload_set_model(struct kb_upload *u, const char *model);
/* The body's size as it will reach the provider (the model's length
 * changed), -1 when the app sent it chunked. Valid once the model is set. */
int64_t kb_upload_size(const struct kb_upload *u);
uint64_t kb_upload_file_bytes(const struct kb_upload *u);

/* For curl's read callback: bytes (> 0), 0 at the end, -EAGAIN (wait for
 * the app: call again after its on_body), or the pump's -errno. */
ssize_t kb_upload_read(struct kb_upload *u, char *buf, size_t len);
/* Read the form's "file" part as a batch input file (batch-file.h) as it
 * passes; what was read, or NULL when not asked. */
void kb_upload_scan_batch_file(struct kb_upload *u);
struct kb_batch_file;
const struct kb_batch_file *kb_upload_batch_file(const struct kb_upload *u);
int kb_upload_error_code(const struct kb_upload *u);  /* the -errno that ended it, 0 none */
const char *kb_upload_error(const struct kb_upload *u);
