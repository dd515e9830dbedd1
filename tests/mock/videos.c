/* SPDX-License-Identifier: MIT */
/* Objects with a life after their POST: Sora's videos (each retrieve moves
 * one step: queued, in_progress, completed; then the content can be
 * downloaded), and the stored answers of POST /v1/responses (retrieve,
 * delete, input items, cancel). */

#include "mock.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define MOCK_VIDEO_BYTES (64 * 1024)

int mock_videos_create(struct mock_call *c) {
        struct mock_reply *r = c->r;
        const char *prompt = mock_field(c, "prompt");
        json_t *jsec = c->root ? json_object_get(c->root, "seconds") : NULL;
        const char *seconds = mock_field(c, "seconds");
        char buf[24];

        if (!prompt)
                return mock_fail(r, 400, "prompt", "Missing required parameter: 'prompt'.");
        if (json_is_integer(jsec)) {
                snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(jsec));
                seconds = buf;
        } else if (jsec && !seconds)
                seconds = "?";
        seconds = seconds ?: "4";
        if (!streq(seconds, "4") && !streq(seconds, "8") && !streq(seconds, "12"))
                return mock_fail(r, 400, "seconds", "Invalid value: '%s'. Supported values are: '4', '8', and '12'.",
                                 seconds);

        _cleanup_free_ char *id = mock_id("video_mock", r->req->n);
        json_t *j = id ? json_pack("{ss ss ss ss si sI sn sn ss ss ss sn sn}",
                                   "id", id,
                                   "object", "video",
                                   "model", mock_field(c, "model") ?: "sora-2",
                                   "status", "queued",
                                   "progress", 0,
                                   "created_at", (json_int_t) r->script.created,
                                   "completed_at",
                                   "expires_at",
                                   "size", mock_field(c, "size") ?: "720x1280",
                                   "seconds", seconds,
                                   "quality", "standard",
                                   "remixed_from_video_id",
                                   "error") : NULL;
        if (!j)
                return -ENOMEM;
        mock_store_lock();
        struct mock_obj *o = mock_store_add(MOCK_OBJ_VIDEO, false, id, j, NULL, NULL, 0);
        json_t *answer = o ? json_deep_copy(o->json) : NULL;
        mock_store_unlock();
        return mock_send_json(r, 200, answer);
}

static const char *status_of(const struct mock_obj *o) {
        return json_string_value(json_object_get(o->json, "status")) ?: "";
}

static int video_not_found(struct mock_call *c) {
        return mock_fail(c->r, 404, NULL, "Video with id '%s' not found.", c->id);
}

int mock_videos_get(struct mock_call *c) {
        int64_t now = c->r->script.created;
        int k = 0;
        mock_store_lock();
        struct mock_obj *o = mock_store_find(MOCK_OBJ_VIDEO, false, c->id);
        if (o && streq(status_of(o), "queued"))
                k = json_object_set_new(o->json, "status", json_string("in_progress")) < 0 ||
                    json_object_set_new(o->json, "progress", json_integer(50)) < 0;
        else if (o && streq(status_of(o), "in_progress"))
                k = json_object_set_new(o->json, "status", json_string("completed")) < 0 ||
                    json_object_set_new(o->json, "progress", json_integer(100)) < 0 ||
                    json_object_set_new(o->json, "completed_at", json_integer((json_int_t) now)) < 0 ||
                    json_object_set_new(o->json, "expires_at", json_integer((json_int_t) (now + 86400))) < 0;
        json_t *answer = o && !k ? json_deep_copy(o->json) : NULL;
        mock_store_unlock();
        if (!o)
                return video_not_found(c);
        return mock_send_json(c->r, 200, answer);
}

int mock_videos_list(struct mock_call *c) {
        mock_store_lock();
        json_t *all = mock_store_all(MOCK_OBJ_VIDEO, false, NULL, NULL);
        mock_store_unlock();
        return mock_send_json(c->r, 200, mock_page_openai(c->r->req, all, 20));
}

int mock_videos_content(struct mock_call *c) {
        /* an MP4 starts with its ftyp box */
        static const char ftyp[] = "\0\0\0\x14" "ftypmp42" "\0\0\0\0" "mp42";
        _cleanup_free_ char *variant = mock_query(c->r->req, "variant");
        bool completed = false;
        mock_store_lock();
        struct mock_obj *o = mock_store_find(MOCK_OBJ_VIDEO, false, c->id);
        completed = o && streq(status_of(o), "completed");
        mock_store_unlock();
        if (!o)
                return video_not_found(c);
        if (!completed)
                return mock_fail(c->r, 400, NULL, "Video is not ready yet, use GET /v1/videos/%s to check status.",
                                 c->id);
        if (!variant || streq(variant, "video"))
                return mock_send_pattern(c->r, "video/mp4", ftyp, sizeof(ftyp) - 1, MOCK_VIDEO_BYTES, 0);
        if (streq(variant, "thumbnail"))
                return mock_send_pattern(c->r, "image/webp", "RIFF", 4, 4096, 0);
        if (streq(variant, "spritesheet"))
                return mock_send_pattern(c->r, "image/jpeg", "\xff\xd8\xff", 3, 4096, 0);
        return mock_fail(c->r, 400, "variant", "Invalid value: '%s'. Supported values are: 'video', 'thumbnail', "
                         "and 'spritesheet'.", variant);
}

int mock_videos_delete(struct mock_call *c) {
        mock_store_lock();
        struct mock_obj *o = mock_store_find(MOCK_OBJ_VIDEO, false, c->id);
        if (o)
                mock_store_remove(o);
        mock_store_unlock();
        if (!o)
                return video_not_found(c);
        return mock_send_json(c->r, 200, json_pack("{ss ss sb}", "id", c->id, "object", "video.deleted", "deleted", 1));
}

void mock_responses_keep(const struct mock_reply *r, json_t *response) {
        const char *id = json_string_value(json_object_get(response, "id"));
        if (!id || json_is_false(json_object_get(r->root, "store")))
                return;
        json_t *copy = json_deep_copy(response);
        json_t *state = json_pack("{sI sO?}", "n", (json_int_t) r->req->n, "input", json_object_get(r->root, "input"));
        mock_store_lock();
        struct mock_obj *old = mock_store_find(MOCK_OBJ_RESPONSE, false, id);
        if (old)
                mock_store_remove(old);
        (void) mock_store_add(MOCK_OBJ_RESPONSE, false, id, copy, state, NULL, 0);
        mock_store_unlock();
}

static int response_not_found(struct mock_call *c) {
        return mock_fail(c->r, 404, NULL, "Response with id '%s' not found.", c->id);
}

int mock_responses_get(struct mock_call *c) {
        mock_store_lock();
        struct mock_obj *o = mock_store_find(MOCK_OBJ_RESPONSE, false, c->id);
        json_t *answer = o ? json_deep_copy(o->json) : NULL;
        mock_store_unlock();
        if (!o)
                return response_not_found(c);
        return mock_send_json(c->r, 200, answer);
}

int mock_responses_delete(struct mock_call *c) {
        mock_store_lock();
        struct mock_obj *o = mock_store_find(MOCK_OBJ_RESPONSE, false, c->id);
        if (o)
                mock_store_remove(o);
        mock_store_unlock();
        if (!o)
                return response_not_found(c);
        return mock_send_json(c->r, 200, json_pack("{ss ss sb}", "id", c->id, "object", "response", "deleted", 1));
}

int mock_responses_cancel(struct mock_call *c) {
        mock_store_lock();
        struct mock_obj *o = mock_store_find(MOCK_OBJ_RESPONSE, false, c->id);
        json_t *answer = NULL;
        if (o && json_object_set_new(o->json, "status", json_string("cancelled")) == 0)
                answer = json_deep_copy(o->json);
        mock_store_unlock();
        if (!o)
                return response_not_found(c);
        return mock_send_json(c->r, 200, answer);
}

/* One input item as the API lists it: an id, "type":"message" for a
 * role's message, and string content as an input_text part. */
static json_t *input_item(json_t *in, json_int_t n, size_t i) {
        json_t *item = json_is_object(in) ? json_deep_copy(in) :
                json_pack("{ss s[{ss sO}]}", "role", "user", "content", "type", "input_text", "text", in);
        char id[64];
        if (!item)
                return NULL;
        snprintf(id, sizeof(id), "msg_in%" JSON_INTEGER_FORMAT "_%zu", n, i);
        json_t *content = json_object_get(item, "content");
        const char *role = json_string_value(json_object_get(item, "role"));
        if ((!json_object_get(item, "id") && json_object_set_new(item, "id", json_string(id)) < 0) ||
            (role && !json_object_get(item, "type") && json_object_set_new(item, "type", json_string("message")) < 0) ||
            (json_is_string(content) &&
             json_object_set_new(item, "content",
                                 json_pack("[{ss sO}]", "type", streq(role ?: "", "assistant") ? "output_text" : "input_text",
                                           "text", content)) < 0)) {
                json_decref(item);
                return NULL;
        }
        return item;
}

int mock_responses_input_items(struct mock_call *c) {
        json_t *items = json_array();
        mock_store_lock();
        struct mock_obj *o = mock_store_find(MOCK_OBJ_RESPONSE, false, c->id);
        if (o && items) {
                json_t *input = json_object_get(o->state, "input");
                json_int_t n = json_integer_value(json_object_get(o->state, "n"));
                char id[64];
                snprintf(id, sizeof(id), "msg_in%" JSON_INTEGER_FORMAT, n);
                if (json_is_string(input)) {
                        if (json_array_append_new(items, json_pack("{ss ss ss s[{ss sO}]}", "id", id, "type", "message",
                                                                   "role", "user", "content", "type", "input_text",
                                                                   "text", input)) < 0)
                                items = (json_decref(items), NULL);
                } else {
                        /* newest first: the last input item first (order=desc) */
                        for (size_t i = json_array_size(input); items && i > 0; i--)
                                if (json_array_append_new(items, input_item(json_array_get(input, i - 1), n, i - 1)) < 0)
                                        items = (json_decref(items), NULL);
                }
        }
        mock_store_unlock();
        if (!o) {
                json_decref(items);
                return response_not_found(c);
        }
        return mock_send_json(c->r, 200, mock_page_openai(c->r->req, items, 20));
}
