/* SPDX-License-Identifier: MIT */
/* The 200 answers of the three completion endpoints, as JSON or as the
 * event streams the official SDKs' stream helpers accumulate: text, a tool
 * call, or the echo of a tool result (see tools.c). */

#include "mock.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static char *token(uint64_t i) {
        char *t = NULL;
        if (asprintf(&t, "tok%" PRIu64 " ", i) < 0)
                return NULL;
        return t;
}

/* The assistant text: "tok0 tok1 … " or the tool result echo. */
static int build_text(const struct mock_script *s, struct kb_buf *ret) {
        if (s->turn == MOCK_TURN_TOOL_RESULT || s->turn == MOCK_TURN_STRUCTURED)
                return kb_buf_append(ret, s->tool_result, strlen(s->tool_result));
        for (uint64_t i = 0; i < s->out; i++) {
                int k = kb_buf_appendf(ret, "tok%" PRIu64 " ", i);
                if (k < 0)
                        return k;
        }
        return kb_buf_append(ret, "", 0); /* text is "" even when out == 0 */
}

/* The text deltas of a stream: O tokens, or the tool result echo whole. */
static bool whole_text(const struct mock_script *s) {
        return s->turn == MOCK_TURN_TOOL_RESULT || s->turn == MOCK_TURN_STRUCTURED;
}

static uint64_t n_deltas(const struct mock_script *s) {
        return whole_text(s) ? 1 : s->out;
}

static char *delta_text(const struct mock_script *s, uint64_t i) {
        return whole_text(s) ? strdup(s->tool_result) : token(i);
}

static json_t *build_body(struct mock_reply *r, enum mock_endpoint ep, const char *text) {
        switch (ep) {
        case MOCK_CHAT:
                return r->script.turn == MOCK_TURN_TOOL_CALL ?
                        mock_chat_tool_json(&r->script) : mock_chat_json(&r->script, text);
        case MOCK_RESPONSES:
                return mock_responses_json(&r->script, text, true);
        case MOCK_MESSAGES:
                return r->script.turn == MOCK_TURN_TOOL_CALL ?
                        mock_messages_tool_json(&r->script) : mock_messages_json(&r->script, text);
        case MOCK_COMPLETIONS: {
                json_t *j = mock_completion_json(&r->script, text, "stop");
                if (j && json_object_set_new(j, "usage", mock_completion_usage(&r->script)) < 0) {
                        json_decref(j);
                        return NULL;
                }
                return j;
        }
        }
        return NULL;
}

static int send_completion(struct mock_reply *r, enum mock_endpoint ep) {
        _cleanup_(kb_buf_free) struct kb_buf text = {};
        int k = build_text(&r->script, &text);
        if (k < 0)
                return k;
        json_t *body = build_body(r, ep, text.data);
        if (!body)
                return -ENOMEM;

        uint64_t want = mock_knob(r->req, "x-mock-body-bytes", 0, MOCK_MAX_BODY_BYTES);
        if (want > 0 && r->script.turn != MOCK_TURN_TOOL_CALL) {
                _cleanup_free_ char *dump = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(6));
                size_t have = dump ? strlen(dump) : 0;
                if (dump && have < want) {
                        /* Each ASCII letter adds exactly one byte to the dump. */
                        size_t pad = (size_t) (want - have);
                        k = kb_buf_reserve(&text, pad);
                        if (k < 0) {
                                json_decref(body);
                                return k;
                        }
                        memset(text.data + text.len, 'x', pad);
                        text.len += pad;
                        text.data[text.len] = 0;
                        json_decref(body);
                        body = build_body(r, ep, text.data);
                }
        }
        if (body && ep == MOCK_RESPONSES)
                mock_responses_keep(r, body);
        return mock_send_json(r, 200, body);
}

static json_t *chat_tool_fragment(const struct mock_script *s, size_t from, size_t len) {
        json_t *frag = json_stringn(s->tool_args + from, len);
        return json_pack("{s[{si s{so}}]}", "tool_calls", "index", 0, "function", "arguments", frag);
}

static int stream_chat(struct mock_reply *r) {
        const struct mock_script *sc = &r->script;
        bool tool = sc->turn == MOCK_TURN_TOOL_CALL;
        struct mock_sse s = { .r = r };
        int k = mock_sse_begin(&s);
        if (k < 0)
                goto out;

        k = mock_sse_event(&s, NULL, mock_chat_chunk(sc, json_pack("{ss ss}", "role", "assistant", "content", ""), NULL), NULL);
        if (tool) {
                size_t cut = mock_tool_args_split(sc), len = strlen(sc->tool_args);
                if (k == 0)
                        k = mock_sse_event(&s, NULL, mock_chat_chunk(sc, json_pack("{so}", "tool_calls",
                                                                                   mock_chat_tool_calls(sc, true)), NULL), NULL);
                if (k == 0)
                        k = mock_sse_event(&s, NULL, mock_chat_chunk(sc, chat_tool_fragment(sc, 0, cut), NULL), NULL);
                if (k == 0)
                        k = mock_sse_event(&s, NULL, mock_chat_chunk(sc, chat_tool_fragment(sc, cut, len - cut), NULL), NULL);
        }
        for (uint64_t i = 0; !tool && k == 0 && i < n_deltas(sc); i++) {
                _cleanup_free_ char *t = delta_text(sc, i);
                k = mock_sse_event(&s, NULL, mock_chat_chunk(sc, t ? json_pack("{ss}", "content", t) : NULL, NULL), NULL);
        }
        if (k == 0)
                k = mock_sse_event(&s, NULL, mock_chat_chunk(sc, json_object(), tool ? "tool_calls" : "stop"), NULL);
        if (k == 0 && sc->include_usage) {
                json_t *u = mock_chat_chunk(sc, json_object(), NULL);
                /* the usage chunk has an empty choices array */
                if (u && (json_object_set_new(u, "choices", json_array()) < 0 ||
                          json_object_set_new(u, "usage", mock_chat_usage(sc)) < 0)) {
                        json_decref(u);
                        u = NULL;
                }
                k = mock_sse_event(&s, NULL, u, NULL);
        }
        if (k == 0)
                k = mock_sse_event(&s, NULL, NULL, "[DONE]");
        if (k == 0)
                k = mock_sse_end(&s);
out:
        kb_buf_free(&s.buf);
        return k;
}

/* One Responses API event: "type" and "sequence_number" first, then the
 * fields (owned). */
static int responses_event(struct mock_sse *s, uint64_t *seq, const char *type, json_t *fields) {
        json_t *data = fields ? json_pack("{ss sI}", "type", type, "sequence_number", (json_int_t) (*seq)++) : NULL;
        if (data && json_object_update(data, fields) < 0) {
                json_decref(data);
                data = NULL;
        }
        json_decref(fields);
        return mock_sse_event(s, type, data, NULL);
}

/* The text part's events all name the same message item and part. */
static json_t *text_part_fields(const char *item_id, const char *key, json_t *value) {
        return json_pack("{ss si si so}", "item_id", item_id, "output_index", 0, "content_index", 0, key, value);
}

static int stream_responses(struct mock_reply *r) {
        const struct mock_script *sc = &r->script;
        _cleanup_(kb_buf_free) struct kb_buf text = {};
        _cleanup_free_ char *item_id = mock_id("msg_mock", sc->n);
        struct mock_sse s = { .r = r };
        uint64_t seq = 0;
        int k = item_id ? build_text(sc, &text) : -ENOMEM;
        if (k >= 0)
                k = mock_sse_begin(&s);
        if (k < 0)
                goto out;

        k = responses_event(&s, &seq, "response.created",
                            json_pack("{so}", "response", mock_responses_json(sc, "", false)));
        if (k == 0)
                k = responses_event(&s, &seq, "response.in_progress",
                                    json_pack("{so}", "response", mock_responses_json(sc, "", false)));
        if (k == 0)
                k = responses_event(&s, &seq, "response.output_item.added",
                                    json_pack("{si so}", "output_index", 0,
                                              "item", mock_responses_message(sc, "", false)));
        if (k == 0)
                k = responses_event(&s, &seq, "response.content_part.added",
                                    text_part_fields(item_id, "part", mock_output_text("")));
        for (uint64_t i = 0; k == 0 && i < n_deltas(sc); i++) {
                _cleanup_free_ char *t = delta_text(sc, i);
                k = responses_event(&s, &seq, "response.output_text.delta",
                                    t ? text_part_fields(item_id, "delta", json_string(t)) : NULL);
        }
        if (k == 0)
                k = responses_event(&s, &seq, "response.output_text.done",
                                    text_part_fields(item_id, "text", json_string(text.data)));
        if (k == 0)
                k = responses_event(&s, &seq, "response.content_part.done",
                                    text_part_fields(item_id, "part", mock_output_text(text.data)));
        if (k == 0)
                k = responses_event(&s, &seq, "response.output_item.done",
                                    json_pack("{si so}", "output_index", 0,
                                              "item", mock_responses_message(sc, text.data, true)));
        if (k == 0) {
                json_t *done = mock_responses_json(sc, text.data, true);
                if (done)
                        mock_responses_keep(r, done);
                k = responses_event(&s, &seq, "response.completed", json_pack("{so}", "response", done));
        }
        if (k == 0)
                k = mock_sse_end(&s);
out:
        kb_buf_free(&s.buf);
        return k;
}

static json_t *message_delta(const struct mock_script *s, const char *stop_reason) {
        json_t *j = json_pack("{ss s{ss sn} s{sI}}", "type", "message_delta",
                              "delta", "stop_reason", stop_reason, "stop_sequence",
                              "usage", "output_tokens", (json_int_t) s->out);
        if (j && mock_add_thinking(s, json_object_get(j, "usage")) < 0) {
                json_decref(j);
                return NULL;
        }
        return j;
}

static int stream_messages_tool(struct mock_sse *s) {
        const struct mock_script *sc = &s->r->script;
        size_t cut = mock_tool_args_split(sc), len = strlen(sc->tool_args);
        int k = mock_sse_event(s, "content_block_start",
                               json_pack("{ss si so}", "type", "content_block_start", "index", 0,
                                         "content_block", mock_messages_tool_use(sc, true)), NULL);
        for (int i = 0; k == 0 && i < 2; i++) {
                json_t *frag = i == 0 ? json_stringn(sc->tool_args, cut) : json_stringn(sc->tool_args + cut, len - cut);
                k = mock_sse_event(s, "content_block_delta",
                                   json_pack("{ss si s{ss so}}", "type", "content_block_delta", "index", 0,
                                             "delta", "type", "input_json_delta", "partial_json", frag), NULL);
        }
        if (k == 0)
                k = mock_sse_event(s, "content_block_stop", json_pack("{ss si}", "type", "content_block_stop", "index", 0), NULL);
        if (k == 0)
                k = mock_sse_event(s, "message_delta", message_delta(sc, "tool_use"), NULL);
        return k;
}

static int stream_messages(struct mock_reply *r) {
        const struct mock_script *sc = &r->script;
        struct mock_sse s = { .r = r };
        int k = mock_sse_begin(&s);
        if (k < 0)
                goto out;

        k = mock_sse_event(&s, "message_start", mock_messages_start(sc), NULL);
        if (k == 0 && sc->turn == MOCK_TURN_TOOL_CALL)
                k = stream_messages_tool(&s);
        else if (k == 0) {
                k = mock_sse_event(&s, "content_block_start",
                                   json_pack("{ss si s{ss ss}}", "type", "content_block_start", "index", 0,
                                             "content_block", "type", "text", "text", ""), NULL);
                if (k == 0)
                        k = mock_sse_event(&s, "ping", json_pack("{ss}", "type", "ping"), NULL);
                for (uint64_t i = 0; k == 0 && i < n_deltas(sc); i++) {
                        _cleanup_free_ char *t = delta_text(sc, i);
                        k = mock_sse_event(&s, "content_block_delta",
                                           t ? json_pack("{ss si s{ss ss}}", "type", "content_block_delta", "index", 0,
                                                         "delta", "type", "text_delta", "text", t) : NULL, NULL);
                }
                if (k == 0)
                        k = mock_sse_event(&s, "content_block_stop",
                                           json_pack("{ss si}", "type", "content_block_stop", "index", 0), NULL);
                if (k == 0)
                        k = mock_sse_event(&s, "message_delta", message_delta(sc, "end_turn"), NULL);
        }
        if (k == 0)
                k = mock_sse_event(&s, "message_stop", json_pack("{ss}", "type", "message_stop"), NULL);
        if (k == 0)
                k = mock_sse_end(&s);
out:
        kb_buf_free(&s.buf);
        return k;
}

/* The legacy completions stream: O chunks of text, a "stop" chunk, the
 * usage chunk (include_usage), [DONE]. */
static int stream_completions(struct mock_reply *r) {
        const struct mock_script *sc = &r->script;
        struct mock_sse s = { .r = r };
        int k = mock_sse_begin(&s);
        for (uint64_t i = 0; k == 0 && i < sc->out; i++) {
                _cleanup_free_ char *t = token(i);
                k = mock_sse_event(&s, NULL, t ? mock_completion_json(sc, t, NULL) : NULL, NULL);
        }
        if (k == 0)
                k = mock_sse_event(&s, NULL, mock_completion_json(sc, "", "stop"), NULL);
        if (k == 0 && sc->include_usage) {
                json_t *u = mock_completion_json(sc, "", NULL);
                if (u && (json_object_set_new(u, "choices", json_array()) < 0 ||
                          json_object_set_new(u, "usage", mock_completion_usage(sc)) < 0)) {
                        json_decref(u);
                        u = NULL;
                }
                k = mock_sse_event(&s, NULL, u, NULL);
        }
        if (k == 0)
                k = mock_sse_event(&s, NULL, NULL, "[DONE]");
        if (k == 0)
                k = mock_sse_end(&s);
        kb_buf_free(&s.buf);
        return k;
}

static int answer(struct mock_reply *r, enum mock_endpoint ep, bool stream) {
        if (!stream)
                return send_completion(r, ep);
        switch (ep) {
        case MOCK_CHAT: return stream_chat(r);
        case MOCK_RESPONSES: return stream_responses(r);
        case MOCK_MESSAGES: return stream_messages(r);
        case MOCK_COMPLETIONS: return stream_completions(r);
        }
        return -EINVAL;
}

/* An image among the input: chat image_url parts, responses input_image
 * parts, Anthropic image blocks. */
static bool has_image(json_t *root, enum mock_endpoint ep) {
        json_t *items = json_object_get(root, ep == MOCK_RESPONSES ? "input" : "messages"), *item, *part;
        size_t i, k;

        json_array_foreach(items, i, item) {
                const char *t = json_string_value(json_object_get(item, "type"));
                if (streq_ptr(t, "input_image"))
                        return true;
                json_array_foreach(json_object_get(item, "content"), k, part) {
                        t = json_string_value(json_object_get(part, "type"));
                        if (streq_ptr(t, "image_url") || streq_ptr(t, "input_image") || streq_ptr(t, "image"))
                                return true;
                }
        }
        return false;
}

/* The schema of a json_schema response format: chat's response_format,
 * responses' text.format; NULL when none. */
static const json_t *structured_schema(json_t *root, enum mock_endpoint ep) {
        json_t *f = ep == MOCK_CHAT      ? json_object_get(root, "response_format")
                    : ep == MOCK_RESPONSES ? json_object_get(json_object_get(root, "text"), "format")
                                           : NULL;
        if (!streq_ptr(json_string_value(json_object_get(f, "type")), "json_schema"))
                return NULL;
        return ep == MOCK_CHAT ? json_object_get(json_object_get(f, "json_schema"), "schema") : json_object_get(f, "schema");
}

int mock_answer(struct mock_reply *r, enum mock_endpoint ep, bool stream) {
        struct mock_script *s = &r->script;
        const char *brk = mock_header(r->req, "x-mock-schema-break");
        bool break_it = brk && !streq(brk, "0");
        int k;

        if (mock_model_in(mock_cfg->no_vision, mock_cfg->n_no_vision, s->model) && has_image(r->root, ep))
                return mock_fail(r, 400, r->anthropic ? NULL : "messages",
                                 "The model `%s` does not support image input.", s->model);
        if (s->reasoning == 0 && !mock_header(r->req, "x-mock-reasoning-tokens") &&
            mock_model_in(mock_cfg->reasoning, mock_cfg->n_reasoning, s->model))
                s->reasoning = 3;
        if ((ep == MOCK_CHAT || ep == MOCK_MESSAGES) && !mock_header(r->req, "x-mock-tool-arguments")) {
                k = mock_tool_force(s, r->root, r->anthropic, break_it);
                if (k < 0)
                        return k;
        }
        const json_t *schema = s->turn == MOCK_TURN_TEXT ? structured_schema(r->root, ep) : NULL;
        if (!schema)
                return answer(r, ep, stream);

        json_t *doc = mock_schema_document(schema, break_it);
        char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(6)) : NULL;
        json_decref(doc);
        if (!text)
                return -ENOMEM;
        /* the structured document is the assistant text, given whole */
        s->turn = MOCK_TURN_STRUCTURED;
        s->tool_result = text;
        k = answer(r, ep, stream);
        s->tool_result = NULL;
        s->turn = MOCK_TURN_TEXT;
        free(text);
        return k;
}
