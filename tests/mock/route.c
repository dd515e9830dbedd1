/* SPDX-License-Identifier: MIT */
/* The endpoints beyond chat, responses, embeddings, messages and models:
 * a table of method, family and path pattern ("{}" is one path segment,
 * the object's id), the body each one reads (JSON, multipart or either),
 * and the checks they share: the body's kind, a malformed multipart body,
 * and --models. */

#include "mock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

enum body_kind {
        NO_BODY,
        JSON_BODY,
        MULTIPART_BODY,
        JSON_OR_MULTIPART,
};

enum family { OPENAI, ANTHROPIC };

struct route {
        const char *method;
        enum family family;
        const char *pattern;
        enum body_kind body;
        int (*handler)(struct mock_call *c);
};

static const struct route routes[] = {
        { "POST", OPENAI, "/v1/moderations", JSON_BODY, mock_moderations },
        { "POST", OPENAI, "/v1/images/generations", JSON_BODY, mock_images },
        { "POST", OPENAI, "/v1/images/edits", MULTIPART_BODY, mock_images },
        { "POST", OPENAI, "/v1/audio/speech", JSON_BODY, mock_speech },
        { "POST", OPENAI, "/v1/audio/transcriptions", MULTIPART_BODY, mock_transcribe },
        { "POST", OPENAI, "/v1/audio/translations", MULTIPART_BODY, mock_transcribe },

        { "POST", OPENAI, "/v1/files", MULTIPART_BODY, mock_files_create },
        { "GET", OPENAI, "/v1/files", NO_BODY, mock_files_list },
        { "GET", OPENAI, "/v1/files/{}", NO_BODY, mock_files_get },
        { "GET", OPENAI, "/v1/files/{}/content", NO_BODY, mock_files_content },
        { "DELETE", OPENAI, "/v1/files/{}", NO_BODY, mock_files_delete },
        { "POST", ANTHROPIC, "/v1/files", MULTIPART_BODY, mock_files_create },
        { "GET", ANTHROPIC, "/v1/files", NO_BODY, mock_files_list },
        { "GET", ANTHROPIC, "/v1/files/{}", NO_BODY, mock_files_get },
        { "GET", ANTHROPIC, "/v1/files/{}/content", NO_BODY, mock_files_content },
        { "DELETE", ANTHROPIC, "/v1/files/{}", NO_BODY, mock_files_delete },

        { "POST", OPENAI, "/v1/batches", JSON_BODY, mock_batches_create },
        { "GET", OPENAI, "/v1/batches", NO_BODY, mock_batches_list },
        { "GET", OPENAI, "/v1/batches/{}", NO_BODY, mock_batches_get },
        { "POST", OPENAI, "/v1/batches/{}/cancel", NO_BODY, mock_batches_cancel },

        { "POST", OPENAI, "/v1/videos", JSON_OR_MULTIPART, mock_videos_create },
        { "GET", OPENAI, "/v1/videos", NO_BODY, mock_videos_list },
        { "GET", OPENAI, "/v1/videos/{}", NO_BODY, mock_videos_get },
        { "GET", OPENAI, "/v1/videos/{}/content", NO_BODY, mock_videos_content },
        { "DELETE", OPENAI, "/v1/videos/{}", NO_BODY, mock_videos_delete },

        { "GET", OPENAI, "/v1/responses/{}", NO_BODY, mock_responses_get },
        { "DELETE", OPENAI, "/v1/responses/{}", NO_BODY, mock_responses_delete },
        { "GET", OPENAI, "/v1/responses/{}/input_items", NO_BODY, mock_responses_input_items },
        { "POST", OPENAI, "/v1/responses/{}/cancel", NO_BODY, mock_responses_cancel },

        { "POST", ANTHROPIC, "/v1/messages/batches", JSON_BODY, mock_msgbatches_create },
        { "GET", ANTHROPIC, "/v1/messages/batches", NO_BODY, mock_msgbatches_list },
        { "GET", ANTHROPIC, "/v1/messages/batches/{}", NO_BODY, mock_msgbatches_get },
        { "GET", ANTHROPIC, "/v1/messages/batches/{}/results", NO_BODY, mock_msgbatches_results },
        { "POST", ANTHROPIC, "/v1/messages/batches/{}/cancel", NO_BODY, mock_msgbatches_cancel },
        { "DELETE", ANTHROPIC, "/v1/messages/batches/{}", NO_BODY, mock_msgbatches_delete },
};

/* path against pattern; the "{}" segment's text goes to *id (owned). */
static bool match(const char *pattern, const char *path, char **id) {
        const char *hole = strstr(pattern, "{}");
        if (!hole)
                return streq(pattern, path);
        size_t pre = (size_t) (hole - pattern);
        if (strncmp(pattern, path, pre) != 0)
                return false;
        const char *seg = path + pre, *rest = hole + 2;
        size_t seglen = strcspn(seg, "/");
        if (seglen == 0 || !streq(seg + seglen, rest))
                return false;
        *id = strndup(seg, seglen);
        if (!*id)
                return false;
        /* ids are ASCII: anything else cannot name an object (and must
         * not break the JSON of the 404 that names it) */
        for (char *p = *id; *p; p++)
                if ((unsigned char) *p < 0x21 || (unsigned char) *p > 0x7e)
                        *p = '?';
        return true;
}

static bool body_ok(const struct mock_reply *r, enum body_kind kind) {
        const struct mock_request *req = r->req;
        switch (kind) {
        case NO_BODY:
                return true;
        case MULTIPART_BODY:
                return req->multipart && !req->multipart_error;
        case JSON_BODY:
                return !req->multipart && r->root;
        case JSON_OR_MULTIPART:
                return req->multipart ? !req->multipart_error : r->root != NULL;
        }
        return false;
}

/* The 400 (or 413) for a body the endpoint cannot read. */
static int reject_body(struct mock_reply *r, enum body_kind kind) {
        const struct mock_request *req = r->req;
        if (req->multipart && req->multipart_error && kind != JSON_BODY)
                return mock_fail(r, 400, NULL, "%s", req->multipart_error);
        if (kind == MULTIPART_BODY) {
                const char *ct = mock_header(req, "content-type");
                return mock_fail(r, 400, NULL, "Invalid Content-Type header (%s), expected multipart/form-data.",
                                 ct ?: "none");
        }
        if (req->body_len > MOCK_MAX_JSON_BODY)
                return mock_fail(r, 413, NULL, "The mock parses JSON bodies of up to 64 MiB; this one has %zu bytes",
                                 req->body_len);
        return mock_fail(r, 400, NULL, "%s", r->anthropic ? "Invalid JSON in request body" :
                         "We could not parse the JSON body of your request. (HINT: This likely means you "
                         "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                         "but what was sent was not valid JSON.)");
}

int mock_route(struct mock_reply *r) {
        const struct mock_request *req = r->req;
        enum family fam = r->anthropic ? ANTHROPIC : OPENAI;

        for (size_t i = 0; i < ELEMENTSOF(routes); i++) {
                const struct route *rt = &routes[i];
                _cleanup_free_ char *id = NULL;
                if (rt->family != fam || !streq(rt->method, req->method) || !match(rt->pattern, req->path, &id))
                        continue;
                if (!body_ok(r, rt->body))
                        return reject_body(r, rt->body);
                /* the model a request names must be served (--models) */
                const char *model = rt->body == NO_BODY ? NULL : r->root ?
                        json_string_value(json_object_get(r->root, "model")) : mock_part_value(req, "model");
                if (model && !mock_model_known(model))
                        return mock_send_json(r, 404, mock_error_json(r->anthropic, 404, model, NULL));
                struct mock_call c = { .r = r, .root = r->root, .id = id };
                return rt->handler(&c);
        }
        return -ENOENT;
}
