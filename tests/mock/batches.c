/* SPDX-License-Identifier: MIT */
/* OpenAI's Batch API: POST /v1/batches reads its input file's JSONL lines,
 * and each retrieve moves the batch one step (validating, in_progress,
 * finalizing, completed; cancelling, cancelled), or to the status the
 * retrieve's x-mock-batch-status names. On completion the output file holds
 * one answer per input line, with the usage the creating request's
 * x-mock-input-tokens / x-mock-output-tokens scripted. */

#include "mock.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

static const char *const endpoints[] = {
        "/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/moderations",
};

static const char *const statuses[] = {
        "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled",
};

/* The input file's non-empty lines: their custom_id and body.model, and
 * the first line that is not JSON (0: none). */
static json_t *read_lines(const char *data, size_t size, json_int_t *bad_line) {
        json_t *lines = json_array();
        json_int_t k = 0;
        *bad_line = 0;
        for (const char *p = data, *end = data + size; lines && data && p < end;) {
                const char *eol = memchr(p, '\n', (size_t) (end - p)) ?: end;
                const char *q = p;
                while (q < eol && (*q == ' ' || *q == '\t' || *q == '\r'))
                        q++;
                if (q < eol) {
                        k++;
                        json_t *line = json_loadb(p, (size_t) (eol - p), 0, NULL);
                        if (!json_is_object(line) && *bad_line == 0)
                                *bad_line = k;
                        json_t *cid = json_object_get(line, "custom_id");
                        json_t *model = json_object_get(json_object_get(line, "body"), "model");
                        if (json_array_append_new(lines, json_pack("{sO? sO?}", "custom_id", cid, "model",
                                                                   json_is_string(model) ? model : NULL)) < 0) {
                                json_decref(lines);
                                lines = NULL;
                        }
                        json_decref(line);
                }
                p = eol + 1;
        }
        return lines;
}

int mock_batches_create(struct mock_call *c) {
        struct mock_reply *r = c->r;
        const char *input = json_string_value(json_object_get(c->root, "input_file_id"));
        const char *endpoint = json_string_value(json_object_get(c->root, "endpoint"));
        json_t *window = json_object_get(c->root, "completion_window");
        json_t *metadata = json_object_get(c->root, "metadata");

        if (!input)
                return mock_fail(r, 400, "input_file_id", "Missing required parameter: 'input_file_id'.");
        if (!endpoint)
                return mock_fail(r, 400, "endpoint", "Missing required parameter: 'endpoint'.");
        bool known = false;
        for (size_t i = 0; i < ELEMENTSOF(endpoints); i++)
                known = known || streq(endpoint, endpoints[i]);
        if (!known)
                return mock_fail(r, 400, "endpoint", "Invalid value: '%s'. Supported values are: '/v1/responses', "
                                 "'/v1/chat/completions', '/v1/embeddings', '/v1/completions' and '/v1/moderations'.",
                                 endpoint);
        if (window && !streq_ptr(json_string_value(window), "24h"))
                return mock_fail(r, 400, "completion_window", "Invalid value for 'completion_window': only '24h' is supported.");

        _cleanup_free_ char *id = mock_id("batch_mock", r->req->n);
        if (!id)
                return -ENOMEM;
        int64_t now = r->script.created;
        mock_store_lock();
        struct mock_obj *file = mock_store_find(MOCK_OBJ_FILE, false, input);
        json_t *answer = NULL;
        json_int_t bad = 0;
        json_t *lines = file ? read_lines(file->data, file->data ? file->size : 0, &bad) : NULL;
        if (lines) {
                const char *model = json_string_value(json_object_get(json_array_get(lines, 0), "model"));
                json_t *j = json_pack("{ss ss ss sn ss ss ss sn sn sI sn sI sn sn sn sn sn sn s{sI si si} sO? ss?}",
                                      "id", id,
                                      "object", "batch",
                                      "endpoint", endpoint,
                                      "errors",
                                      "input_file_id", input,
                                      "completion_window", "24h",
                                      "status", "validating",
                                      "output_file_id",
                                      "error_file_id",
                                      "created_at", (json_int_t) now,
                                      "in_progress_at",
                                      "expires_at", (json_int_t) (now + 86400),
                                      "finalizing_at",
                                      "completed_at",
                                      "failed_at",
                                      "expired_at",
                                      "cancelling_at",
                                      "cancelled_at",
                                      "request_counts", "total", (json_int_t) json_array_size(lines),
                                      "completed", 0, "failed", 0,
                                      "metadata", json_is_object(metadata) ? metadata : NULL,
                                      "model", model);
                json_t *state = json_pack("{sI sI sI so sI}", "n", (json_int_t) r->req->n,
                                          "in", (json_int_t) r->script.in, "out", (json_int_t) r->script.out,
                                          "lines", lines, "bad_line", bad);
                lines = NULL;
                struct mock_obj *o = j && state ? mock_store_add(MOCK_OBJ_BATCH, false, id, j, state, NULL, 0) : NULL;
                if (!o) {
                        json_decref(j);
                        json_decref(state);
                }
                answer = o ? json_deep_copy(o->json) : NULL;
        }
        mock_store_unlock();
        if (!file)
                return mock_fail(r, 400, "input_file_id", "No such File object: %s", input);
        return mock_send_json(r, 200, answer);
}

static char *assistant_text(uint64_t out) {
        _cleanup_(kb_buf_free) struct kb_buf b = {};
        for (uint64_t i = 0; i < out; i++)
                if (kb_buf_appendf(&b, "tok%" PRIu64 " ", i) < 0)
                        return NULL;
        return b.data ? TAKE_PTR(b.data) : strdup("");
}

/* The answer one input line gets, in the shape of the batch's endpoint. */
static json_t *line_body(const char *endpoint, const struct mock_script *s, const char *text, const char *id) {
        json_t *body;
        if (streq(endpoint, "/v1/responses"))
                body = mock_responses_json(s, text, true);
        else if (streq(endpoint, "/v1/embeddings"))
                return mock_embeddings_json(s);
        else if (streq(endpoint, "/v1/completions")) {
                body = mock_completion_json(s, text, "stop");
                if (body && json_object_set_new(body, "usage", mock_completion_usage(s)) < 0)
                        body = (json_decref(body), NULL);
        } else
                body = mock_chat_json(s, text);
        if (body && (json_object_set_new(body, "id", json_string(id)) < 0 ||
                     json_object_set_new(body, json_object_get(body, "created_at") ? "created_at" : "created",
                                         json_integer((json_int_t) s->created)) < 0))
                body = (json_decref(body), NULL);
        return body;
}

/* completed: the output file (file-mockout<n>, n the retrieve's), the
 * counts and the usage. */
static int complete(struct mock_obj *o, uint64_t n, int64_t now) {
        json_t *st = o->state;
        json_t *lines = json_object_get(st, "lines");
        uint64_t in = (uint64_t) json_integer_value(json_object_get(st, "in"));
        uint64_t out = (uint64_t) json_integer_value(json_object_get(st, "out"));
        json_int_t bn = json_integer_value(json_object_get(st, "n"));
        const char *endpoint = json_string_value(json_object_get(o->json, "endpoint"));
        size_t total = json_array_size(lines), i;
        json_t *line;

        if (!json_is_null(json_object_get(o->json, "output_file_id")))
                return 0; /* completed before (x-mock-batch-status) */
        _cleanup_free_ char *text = assistant_text(out);
        _cleanup_(kb_buf_free) struct kb_buf jsonl = {};
        if (!text)
                return -ENOMEM;
        json_array_foreach(lines, i, line) {
                char req_id[64], body_id[64], line_id[64];
                snprintf(line_id, sizeof(line_id), "batch_req_mock%" PRId64 "_%zu", (int64_t) bn, i + 1);
                snprintf(req_id, sizeof(req_id), "req_mock%" PRId64 "_%zu", (int64_t) bn, i + 1);
                snprintf(body_id, sizeof(body_id), "%s%" PRId64 "_%zu",
                         streq(endpoint, "/v1/responses") ? "resp_mock" :
                         streq(endpoint, "/v1/completions") ? "cmpl-mock" : "chatcmpl-mock", (int64_t) bn, i + 1);
                struct mock_script s = {
                        .n = (uint64_t) bn,
                        .model = json_string_value(json_object_get(line, "model")) ?: MOCK_DEFAULT_MODEL,
                        .in = in,
                        .out = out,
                        .created = now,
                };
                json_t *l = json_pack("{ss sO s{si ss so} sn}",
                                      "id", line_id,
                                      "custom_id", json_object_get(line, "custom_id"),
                                      "response", "status_code", 200, "request_id", req_id,
                                      "body", line_body(endpoint, &s, text, body_id),
                                      "error");
                _cleanup_free_ char *dump = l ? json_dumps(l, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
                json_decref(l);
                if (!dump || kb_buf_appendf(&jsonl, "%s\n", dump) < 0)
                        return -ENOMEM;
        }
        _cleanup_free_ char *fid = mock_id("file-mockout", n), *fname = NULL;
        if (!fid || asprintf(&fname, "batch_%s_output.jsonl", o->id) < 0)
                return -ENOMEM;
        size_t size = jsonl.len;
        if (!mock_files_add_openai(fid, fname, "batch_output", TAKE_PTR(jsonl.data), size))
                return -ENOMEM;
        if (json_object_set_new(o->json, "output_file_id", json_string(fid)) < 0 ||
            json_object_set_new(o->json, "request_counts",
                                json_pack("{sI sI si}", "total", (json_int_t) total, "completed", (json_int_t) total,
                                          "failed", 0)) < 0 ||
            json_object_set_new(o->json, "usage",
                                json_pack("{sI sI sI s{si} s{si}}",
                                          "input_tokens", (json_int_t) (in * total),
                                          "output_tokens", (json_int_t) (out * total),
                                          "total_tokens", (json_int_t) ((in + out) * total),
                                          "input_tokens_details", "cached_tokens", 0,
                                          "output_tokens_details", "reasoning_tokens", 0)) < 0)
                return -ENOMEM;
        return 0;
}

/* Moves the batch to status (one of statuses[]), setting its timestamp. */
static int set_status(struct mock_obj *o, const char *status, uint64_t n, int64_t now) {
        json_t *j = o->json;
        int k = json_object_set_new(j, "status", json_string(status));
        if (k == 0 && streq(status, "in_progress"))
                k = json_object_set_new(j, "in_progress_at", json_integer((json_int_t) now));
        else if (k == 0 && streq(status, "finalizing"))
                k = json_object_set_new(j, "finalizing_at", json_integer((json_int_t) now));
        else if (k == 0 && streq(status, "completed")) {
                if (complete(o, n, now) < 0)
                        return -ENOMEM;
                if (json_is_null(json_object_get(j, "completed_at")))
                        k = json_object_set_new(j, "completed_at", json_integer((json_int_t) now));
        } else if (k == 0 && streq(status, "failed")) {
                json_int_t line = json_integer_value(json_object_get(o->state, "bad_line"));
                k = json_object_set_new(j, "failed_at", json_integer((json_int_t) now));
                if (k == 0)
                        k = json_object_set_new(j, "errors", line ?
                                json_pack("{ss s[{ss ss sn sI}]}", "object", "list", "data",
                                          "code", "invalid_json_line",
                                          "message", "This line is not parseable as valid JSON.", "param", "line", line) :
                                json_pack("{ss s[{ss ss sn sn}]}", "object", "list", "data",
                                          "code", "mock_failed", "message", "The batch failed (x-mock-batch-status).",
                                          "param", "line"));
        } else if (k == 0 && streq(status, "expired"))
                k = json_object_set_new(j, "expired_at", json_integer((json_int_t) now));
        else if (k == 0 && streq(status, "cancelling"))
                k = json_object_set_new(j, "cancelling_at", json_integer((json_int_t) now));
        else if (k == 0 && streq(status, "cancelled"))
                k = json_object_set_new(j, "cancelled_at", json_integer((json_int_t) now));
        return k < 0 ? -ENOMEM : 0;
}

static const char *next_status(struct mock_obj *o) {
        const char *s = json_string_value(json_object_get(o->json, "status"));
        if (streq_ptr(s, "validating"))
                return json_integer_value(json_object_get(o->state, "bad_line")) ? "failed" : "in_progress";
        if (streq_ptr(s, "in_progress"))
                return "finalizing";
        if (streq_ptr(s, "finalizing"))
                return "completed";
        if (streq_ptr(s, "cancelling"))
                return "cancelled";
        return NULL; /* terminal */
}

static int not_found(struct mock_call *c) {
        return mock_fail(c->r, 404, NULL, "No batch found with id '%s'.", c->id);
}

int mock_batches_get(struct mock_call *c) {
        struct mock_reply *r = c->r;
        const char *forced = mock_header(r->req, "x-mock-batch-status");
        bool valid = false;
        for (size_t i = 0; forced && i < ELEMENTSOF(statuses); i++)
                valid = valid || streq(forced, statuses[i]);

        mock_store_lock();
        struct mock_obj *o = mock_store_find(MOCK_OBJ_BATCH, false, c->id);
        const char *next = o ? valid ? forced : next_status(o) : NULL;
        int k = next ? set_status(o, next, r->req->n, r->script.created) : 0;
        json_t *answer = o && k == 0 ? json_deep_copy(o->json) : NULL;
        mock_store_unlock();
        if (!o)
                return not_found(c);
        return mock_send_json(r, 200, answer);
}

int mock_batches_cancel(struct mock_call *c) {
        struct mock_reply *r = c->r;
        _cleanup_free_ char *status = NULL;
        json_t *answer = NULL;
        int k = 0;

        mock_store_lock();
        struct mock_obj *o = mock_store_find(MOCK_OBJ_BATCH, false, c->id);
        if (o) {
                status = strdup(json_string_value(json_object_get(o->json, "status")) ?: "");
                bool running = status && (streq(status, "validating") || streq(status, "in_progress") ||
                                          streq(status, "finalizing"));
                if (running)
                        k = set_status(o, "cancelling", r->req->n, r->script.created);
                if (k == 0 && (running || streq_ptr(status, "cancelling")))
                        answer = json_deep_copy(o->json);
        }
        mock_store_unlock();
        if (!o)
                return not_found(c);
        if (!status || k < 0)
                return -ENOMEM;
        if (!answer && !streq(status, "cancelling"))
                return mock_fail(r, 400, NULL, "Cannot cancel a batch with status '%s'.", status);
        return mock_send_json(r, 200, answer);
}

int mock_batches_list(struct mock_call *c) {
        mock_store_lock();
        json_t *all = mock_store_all(MOCK_OBJ_BATCH, false, NULL, NULL);
        mock_store_unlock();
        return mock_send_json(c->r, 200, mock_page_openai(c->r->req, all, 20));
}
