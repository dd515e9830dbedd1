/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 9 of 12, bodies and usage: calls layer 12. */

/* A multipart/form-data body read as it passes: checked against RFC 2046/7578
 * (a boundary of 1–70 characters, every part with a form-data
 * Content-Disposition naming it, a closing delimiter), the "model" field
 * read, and rewritten to the target's upstream model when asked; every other
 * byte of every part passes unchanged. Fed in pieces of any size.
 * Library-like: never logs. */

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

#define KB_MULTIPART_BOUNDARY_MAX 70    /* RFC 2046 */
#define KB_MULTIPART_HEADERS_MAX 8192   /* one part's headers */
#define KB_MULTIPART_FIELD_MAX 256      /* the model field's value */
#define KB_MULTIPART_PARTS_MAX 1024

struct kb_multipart;

/* content_type: the request's Content-Type. 0, or -EINVAL when it is not
 * multipart/form-data with a valid boundary (*ret_why says why). model:
 * the value the model field is rewritten to, NULL to keep it. */
int kb_multipart_new(const char *content_type, const char *model, struct kb_multipart **ret, const char **ret_why);
struct kb_multipart *kb_multipart_free(struct kb_multipart *m);

/* The next bytes of the body; what passes on is appended to out (held back
 * only while a delimiter or the model field may be incomplete). 0, or
 * -EBADMSG (malformed: kb_multipart_error() says how), -ENOMEM. */
int kb_multipart_feed(struct kb_multipart *m, const char *buf, size_t len, struct kb_buf *out);
/* Stop at the end of the model field (before writing its value) until
 * kb_multipart_set_model() says what to write: the model decides the
 * target, which decides the value. Input fed meanwhile is held. */
void kb_multipart_defer_model(struct kb_multipart *m);
bool kb_multipart_waiting(const struct kb_multipart *m);
/* Write model as the field's value and go on with what is held. */
int kb_multipart_set_model(struct kb_multipart *m, const char *model, struct kb_buf *out);
size_t kb_multipart_model_len(const struct kb_multipart *m);
/* End of body: -EBADMSG unless the closing delimiter came; -EAGAIN while
 * waiting for the model. */
int kb_multipart_finish(struct kb_multipart *m, struct kb_buf *out);
const char *kb_multipart_error(const struct kb_multipart *m);

/* Each piece of a file part's body (filename= given), as it passes, with
 * the part's name; end true once at the part's end (len 0). */
typedef void (*kb_multipart_file_cb)(void *userdata, const char *name, const char *buf, size_t len, bool end);
void kb_multipart_on_file(struct kb_multipart *m, kb_multipart_file_cb cb, void *userdata);

/* The form's model field as sent (NULL until its part ended), and whether
 * the form held one. */
const char *kb_multipart_model(const struct kb_multipart *m);
/* Bytes of the parts that carry a file (filename= given), so far. */
size_t kb_multipart_file_bytes(const struct kb_multipart *m);
/* A text field's value (at most KB_MULTIPART_FIELD_MAX bytes kept), once
 * its part ended: "stream", "response_format", "n", … NULL when absent. */
const char *kb_multipart_field(const struct kb_multipart *m, const char *name);
