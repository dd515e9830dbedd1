/* SPDX-License-Identifier: MIT */
/* Anthropic's Message Batches: POST /v1/messages/batches keeps each
 * request's custom_id and params.model; the second retrieve finds the batch
 * ended (or the first after a cancel, every request canceled), and the
 * results are one JSONL line per request: a message with the usage the
 * creating request scripted, or an error for a model --models does not
 * serve. */

#include "mock.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

int mock_msgbatches_create(struct mock_call *c) {
        struct mock_reply *r = c->r;
        json_t *requests = json_object_get(c->root, "requests");
        size_t n = json_array_size(requests), i;
        json_t *item;

        if (!json_is_array(requests))
                return mock_fail(r, 400, NULL, "requests: Field required");
        if (n == 0)
                return mock_fail(r, 400, NULL, "requests: List should have at least 1 item after validation, not 0");
        _cleanup_(json_decrefp) json_t *kept = json_array();
        if (!kept)
                return -ENOMEM;
        json_array_foreach(requests, i, item) {
                const char *cid = json_string_value(json_object_get(item, "custom_id"));
                json_t *params = json_object_get(item, "params");
                if (!cid)
                        return mock_fail(r, 400, NULL, "requests.%zu.custom_id: Field required", i);
                if (!json_is_object(params))
                        return mock_fail(r, 400, NULL, "requests.%zu.params: Field required", i);
                for (size_t j = 0; j < i; j++)
                        if (streq_ptr(json_string_value(json_object_get(json_array_get(kept, j), "custom_id")), cid))
                                return mock_fail(r, 400, NULL, "Duplicate custom_id: '%s'", cid);
                const char *model = json_string_value(json_object_get(params, "model"));
                if (json_array_append_new(kept, json_pack("{ss ss}", "custom_id", cid,
                                                          "model", model ?: MOCK_DEFAULT_MODEL)) < 0)
                        return -ENOMEM;
        }

        _cleanup_free_ char *id = mock_id("msgbatch_mock", r->req->n);
        char created[32], expires[32];
        mock_iso8601(r->script.created, created);
        mock_iso8601(r->script.created + 86400, expires);
        json_t *j = id ? json_pack("{ss ss ss s{sI si si si si} sn ss ss sn sn sn}",
                                   "id", id,
                                   "type", "message_batch",
                                   "processing_status", "in_progress",
                                   "request_counts", "processing", (json_int_t) n, "succeeded", 0, "errored", 0,
                                   "canceled", 0, "expired", 0,
                                   "ended_at",
                                   "created_at", created,
                                   "expires_at", expires,
                                   "archived_at",
                                   "cancel_initiated_at",
                                   "results_url") : NULL;
        json_t *state = json_pack("{sI sI sI si sO}", "n", (json_int_t) r->req->n, "in", (json_int_t) r->script.in,
                                  "out", (json_int_t) r->script.out, "gets", 0, "requests", kept);
        if (!j || !state) {
                json_decref(j);
                json_decref(state);
                return -ENOMEM;
        }
        mock_store_lock();
        struct mock_obj *o = mock_store_add(MOCK_OBJ_MSGBATCH, true, id, j, state, NULL, 0);
        json_t *answer = o ? json_deep_copy(o->json) : NULL;
        mock_store_unlock();
        return mock_send_json(r, 200, answer);
}

static const char *status_of(const struct mock_obj *o) {
        return json_string_value(json_object_get(o->json, "processing_status")) ?: "";
}

/* ended: every request succeeded (or errored: a model not served), or,
 * after a cancel, canceled. */
static int end(struct mock_obj *o, const struct mock_request *req, int64_t now) {
        json_t *requests = json_object_get(o->state, "requests");
        bool canceled = streq(status_of(o), "canceling");
        size_t n = json_array_size(requests), errored = 0, i;
        json_t *item;
        char ended[32];

        if (!canceled)
                json_array_foreach(requests, i, item)
                        if (!mock_model_known(json_string_value(json_object_get(item, "model"))))
                                errored++;
        mock_iso8601(now, ended);
        _cleanup_free_ char *url = NULL;
        const char *host = mock_header(req, "host");
        if (asprintf(&url, "http://%s/v1/messages/batches/%s/results", host ?: "127.0.0.1", o->id) < 0)
                return -ENOMEM;
        json_t *j = o->json;
        if (json_object_set_new(j, "processing_status", json_string("ended")) < 0 ||
            json_object_set_new(j, "request_counts",
                                json_pack("{si sI sI sI si}", "processing", 0,
                                          "succeeded", (json_int_t) (canceled ? 0 : n - errored),
                                          "errored", (json_int_t) errored,
                                          "canceled", (json_int_t) (canceled ? n : 0), "expired", 0)) < 0 ||
            json_object_set_new(j, "ended_at", json_string(ended)) < 0 ||
            json_object_set_new(j, "results_url", mock_json_string(url, strlen(url))) < 0 ||
            json_object_set_new(o->state, "canceled", json_boolean(canceled)) < 0)
                return -ENOMEM;
        return 0;
}

static int not_found(struct mock_call *c) {
        return mock_fail(c->r, 404, NULL, "Message batch %s not found.", c->id);
}

int mock_msgbatches_get(struct mock_call *c) {
        struct mock_reply *r = c->r;
        int k = 0;
        mock_store_lock();
        struct mock_obj *o = mock_store_find(MOCK_OBJ_MSGBATCH, true, c->id);
        if (o) {
                json_int_t gets = json_integer_value(json_object_get(o->state, "gets")) + 1;
                k = json_object_set_new(o->state, "gets", json_integer(gets));
                if (k == 0 && (streq(status_of(o), "canceling") || (streq(status_of(o), "in_progress") && gets >= 2)))
                        k = end(o, r->req, r->script.created);
        }
        json_t *answer = o && k == 0 ? json_deep_copy(o->json) : NULL;
        mock_store_unlock();
        if (!o)
                return not_found(c);
        return mock_send_json(r, 200, answer);
}

int mock_msgbatches_list(struct mock_call *c) {
        mock_store_lock();
        json_t *all = mock_store_all(MOCK_OBJ_MSGBATCH, true, NULL, NULL);
        mock_store_unlock();
        return mock_send_json(c->r, 200, mock_page_anthropic(c->r->req, all));
}

static json_t *result(const json_t *state, const json_t *item, size_t k) {
        const char *model = json_string_value(json_object_get(item, "model"));
        json_t *cid = json_object_get(item, "custom_id");
        if (json_is_true(json_object_get(state, "canceled")))
                return json_pack("{sO s{ss}}", "custom_id", cid, "result", "type", "canceled");
        if (!mock_model_known(model)) {
                _cleanup_free_ char *msg = NULL;
                if (asprintf(&msg, "model: %s", model) < 0)
                        return NULL;
                return json_pack("{sO s{ss s{ss s{ss ss}}}}", "custom_id", cid, "result", "type", "errored",
                                 "error", "type", "error", "error", "type", "not_found_error", "message", msg);
        }
        struct mock_script s = {
                .n = (uint64_t) json_integer_value(json_object_get(state, "n")),
                .model = model,
                .in = (uint64_t) json_integer_value(json_object_get(state, "in")),
                .out = (uint64_t) json_integer_value(json_object_get(state, "out")),
        };
        _cleanup_(kb_buf_free) struct kb_buf text = {};
        char id[64];
        for (uint64_t i = 0; i < s.out; i++)
                if (kb_buf_appendf(&text, "tok%" PRIu64 " ", i) < 0)
                        return NULL;
        snprintf(id, sizeof(id), "msg_mock%" PRIu64 "_%zu", s.n, k + 1);
        json_t *msg = mock_messages_json(&s, text.data ?: "");
        if (msg && json_object_set_new(msg, "id", json_string(id)) < 0)
                msg = (json_decref(msg), NULL);
        return json_pack("{sO s{ss so}}", "custom_id", cid, "result", "type", "succeeded", "message", msg);
}

int mock_msgbatches_results(struct mock_call *c) {
        struct mock_reply *r = c->r;
        _cleanup_(kb_buf_free) struct kb_buf out = {};
        bool ended = false;
        int k = 0;
        mock_store_lock();
        struct mock_obj *o = mock_store_find(MOCK_OBJ_MSGBATCH, true, c->id);
        if (o && (ended = streq(status_of(o), "ended"))) {
                size_t i;
                json_t *item;
                json_array_foreach(json_object_get(o->state, "requests"), i, item) {
                        json_t *line = result(o->state, item, i);
                        _cleanup_free_ char *dump = line ? json_dumps(line, JSON_COMPACT) : NULL;
                        json_decref(line);
                        if (!dump || (k = kb_buf_appendf(&out, "%s\n", dump)) < 0) {
                                k = -ENOMEM;
                                break;
                        }
                }
        }
        mock_store_unlock();
        if (!o)
                return not_found(c);
        if (!ended)
                return mock_fail(r, 400, NULL, "Message batch %s has not ended yet: its results are not available.",
                                 c->id);
        if (k < 0)
                return k;
        return mock_send_bytes(r, 200, "application/binary", out.data ?: "", out.len);
}

int mock_msgbatches_cancel(struct mock_call *c) {
        struct mock_reply *r = c->r;
        char now[32];
        int k = 0;
        mock_iso8601(r->script.created, now);
        mock_store_lock();
        struct mock_obj *o = mock_store_find(MOCK_OBJ_MSGBATCH, true, c->id);
        if (o && streq(status_of(o), "in_progress")) {
                k = json_object_set_new(o->json, "processing_status", json_string("canceling"));
                if (k == 0)
                        k = json_object_set_new(o->json, "cancel_initiated_at", json_string(now));
        }
        json_t *answer = o && k == 0 ? json_deep_copy(o->json) : NULL;
        mock_store_unlock();
        if (!o)
                return not_found(c);
        return mock_send_json(r, 200, answer);
}

int mock_msgbatches_delete(struct mock_call *c) {
        bool ended = false;
        mock_store_lock();
        struct mock_obj *o = mock_store_find(MOCK_OBJ_MSGBATCH, true, c->id);
        if (o && (ended = streq(status_of(o), "ended")))
                mock_store_remove(o);
        mock_store_unlock();
        if (!o)
                return not_found(c);
        if (!ended)
                return mock_fail(c->r, 400, NULL, "Message batch %s cannot be deleted while it is still processing.",
                                 c->id);
        return mock_send_json(c->r, 200, json_pack("{ss ss}", "id", c->id, "type", "message_batch_deleted"));
}
