/* SPDX-License-Identifier: MIT */
/* Files, in both families' shapes: OpenAI's /v1/files (file-mock<n>, the
 * batch input and output files) and Anthropic's Files API (file_mock<n>,
 * when the request carries anthropic-version). One store, distinct ids.
 * The content is kept when it is at most 16 MiB; a larger upload is
 * remembered by size and SHA-256 only, and its content is served as the
 * mock's deterministic bytes of the same length. */

#include "mock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

#define MOCK_MAX_KEPT_FILE ((size_t) 16 << 20)

static const char *const purposes[] = { "assistants", "batch", "fine-tune", "vision", "user_data", "evals" };

static json_t *jstr(const char *s) {
        return mock_json_string(s, strlen(s));
}

struct mock_obj *mock_files_add_openai(const char *id, const char *filename, const char *purpose, char *data,
                                       size_t size) {
        json_t *j = json_pack("{ss ss sI sI so ss ss sn sn}",
                              "id", id,
                              "object", "file",
                              "bytes", (json_int_t) size,
                              "created_at", (json_int_t) time(NULL),
                              "filename", jstr(filename),
                              "purpose", purpose,
                              "status", "processed",
                              "expires_at",
                              "status_details");
        return mock_store_add(MOCK_OBJ_FILE, false, id, j, NULL, data, size);
}

static struct mock_obj *add_anthropic(const char *id, const char *filename, const char *mime, char *data, size_t size) {
        char created[32];
        mock_iso8601((int64_t) time(NULL), created);
        json_t *j = json_pack("{ss ss so so sI ss sb}",
                              "id", id,
                              "type", "file",
                              "filename", jstr(filename),
                              "mime_type", jstr(mime),
                              "size_bytes", (json_int_t) size,
                              "created_at", created,
                              "downloadable", 0);
        return mock_store_add(MOCK_OBJ_FILE, true, id, j, NULL, data, size);
}

int mock_files_create(struct mock_call *c) {
        struct mock_reply *r = c->r;
        const struct mock_request *req = r->req;
        const struct mock_part *file = mock_part(req, "file");
        const char *purpose = mock_part_value(req, "purpose");

        if (!file)
                return mock_fail(r, 400, "file", "Missing required parameter: 'file'.");
        if (!r->anthropic) {
                if (!purpose)
                        return mock_fail(r, 400, "purpose", "Missing required parameter: 'purpose'.");
                bool known = false;
                for (size_t i = 0; i < ELEMENTSOF(purposes); i++)
                        known = known || streq(purpose, purposes[i]);
                if (!known)
                        return mock_fail(r, 400, "purpose",
                                         "'%s' is not one of ['assistants', 'batch', 'fine-tune', 'vision', "
                                         "'user_data', 'evals'] - 'purpose'", purpose);
        }

        char *data = NULL;
        if (file->len <= MOCK_MAX_KEPT_FILE) {
                data = malloc(file->len + 1);
                if (!data)
                        return -ENOMEM;
                memcpy(data, file->data, file->len);
                data[file->len] = 0;
        }
        _cleanup_free_ char *id = mock_id(r->anthropic ? "file_mock" : "file-mock", req->n);
        if (!id) {
                free(data);
                return -ENOMEM;
        }
        const char *filename = file->filename ?: "file";
        mock_store_lock();
        struct mock_obj *o = r->anthropic ?
                add_anthropic(id, filename, file->content_type ?: "application/octet-stream", data, file->len) :
                mock_files_add_openai(id, filename, purpose, data, file->len);
        json_t *answer = NULL;
        if (o && json_object_set_new(o->state, "sha256", json_string(file->sha256)) == 0)
                answer = json_deep_copy(o->json);
        mock_store_unlock();
        return mock_send_json(r, 200, answer);
}

static bool purpose_is(const struct mock_obj *o, const void *purpose) {
        return streq_ptr(json_string_value(json_object_get(o->json, "purpose")), purpose);
}

int mock_files_list(struct mock_call *c) {
        struct mock_reply *r = c->r;
        _cleanup_free_ char *purpose = mock_query(r->req, "purpose");
        mock_store_lock();
        json_t *all = mock_store_all(MOCK_OBJ_FILE, r->anthropic, purpose ? purpose_is : NULL, purpose);
        mock_store_unlock();
        return mock_send_json(r, 200, r->anthropic ? mock_page_anthropic(r->req, all) :
                              mock_page_openai(r->req, all, 10000));
}

static int not_found(struct mock_call *c) {
        if (c->r->anthropic)
                return mock_fail(c->r, 404, NULL, "File not found: %s", c->id);
        return mock_fail(c->r, 404, "id", "No such File object: %s", c->id);
}

int mock_files_get(struct mock_call *c) {
        mock_store_lock();
        struct mock_obj *o = mock_store_find(MOCK_OBJ_FILE, c->r->anthropic, c->id);
        json_t *answer = o ? json_deep_copy(o->json) : NULL;
        mock_store_unlock();
        if (!o)
                return not_found(c);
        return mock_send_json(c->r, 200, answer);
}

int mock_files_content(struct mock_call *c) {
        struct mock_reply *r = c->r;
        _cleanup_free_ char *copy = NULL, *ctype = NULL;
        size_t size = 0;
        bool kept = false;

        mock_store_lock();
        struct mock_obj *o = mock_store_find(MOCK_OBJ_FILE, r->anthropic, c->id);
        if (o) {
                size = o->size;
                kept = o->data != NULL;
                copy = kept ? malloc(size + 1) : NULL;
                if (copy)
                        memcpy(copy, o->data, size);
                ctype = strdup(r->anthropic ? json_string_value(json_object_get(o->json, "mime_type")) ?:
                               "application/octet-stream" : "application/octet-stream");
        }
        mock_store_unlock();
        if (!o)
                return not_found(c);
        if (!ctype || (kept && !copy))
                return -ENOMEM;
        /* the uploader's Content-Type goes into a response header */
        if (strpbrk(ctype, "\r\n")) {
                free(ctype);
                ctype = strdup("application/octet-stream");
                if (!ctype)
                        return -ENOMEM;
        }
        if (kept)
                return mock_send_bytes(r, 200, ctype, copy, size);
        return mock_send_pattern(r, ctype, NULL, 0, size, 0);
}

int mock_files_delete(struct mock_call *c) {
        mock_store_lock();
        struct mock_obj *o = mock_store_find(MOCK_OBJ_FILE, c->r->anthropic, c->id);
        if (o)
                mock_store_remove(o);
        mock_store_unlock();
        if (!o)
                return not_found(c);
        if (c->r->anthropic)
                return mock_send_json(c->r, 200, json_pack("{ss ss}", "id", c->id, "type", "file_deleted"));
        return mock_send_json(c->r, 200, json_pack("{ss ss sb}", "id", c->id, "object", "file", "deleted", 1));
}
