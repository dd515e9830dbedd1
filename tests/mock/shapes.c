/* SPDX-License-Identifier: MIT */
/* The JSON bodies kb-mock answers with, modelled on what OpenAI and
 * Anthropic really send (the fields the broker reads, and a few it must
 * pass through untouched). */

#include "mock.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define MOCK_CREATED 1700000000

json_t *mock_json_string(const char *s, size_t n) {
        json_t *j = json_stringn(s, n);
        if (j)
                return j;

        /* Not UTF-8: the log must still be valid JSON, so keep the ASCII
         * and mark every other byte. */
        _cleanup_free_ char *copy = malloc(n + 1);
        if (!copy)
                return NULL;
        for (size_t i = 0; i < n; i++)
                copy[i] = (unsigned char) s[i] < 0x80 ? s[i] : '?';
        copy[n] = 0;
        return json_stringn(copy, n);
}

char *mock_id(const char *prefix, uint64_t n) {
        char *s = NULL;
        if (asprintf(&s, "%s%" PRIu64, prefix, n) < 0)
                return NULL;
        return s;
}

json_t *mock_chat_usage(const struct mock_script *s) {
        return json_pack("{sI sI sI s{sI} s{sI}}",
                         "prompt_tokens", (json_int_t) s->in,
                         "completion_tokens", (json_int_t) s->out,
                         "total_tokens", (json_int_t) (s->in + s->out),
                         "prompt_tokens_details", "cached_tokens", (json_int_t) s->cached,
                         "completion_tokens_details", "reasoning_tokens", (json_int_t) s->reasoning);
}

json_t *mock_chat_json(const struct mock_script *s, const char *text) {
        _cleanup_free_ char *id = mock_id("chatcmpl-mock", s->n);
        if (!id)
                return NULL;
        return json_pack("{ss ss si ss s[{si s{ss ss} ss}] so}",
                         "id", id,
                         "object", "chat.completion",
                         "created", MOCK_CREATED,
                         "model", mock_reported_model(s->model),
                         "choices", "index", 0, "message", "role", "assistant", "content", text,
                         "finish_reason", "stop",
                         "usage", mock_chat_usage(s));
}

/* Takes ownership of delta. finish_reason NULL gives "finish_reason": null. */
json_t *mock_chat_chunk(const struct mock_script *s, json_t *delta, const char *finish_reason) {
        _cleanup_free_ char *id = mock_id("chatcmpl-mock", s->n);
        if (!id) {
                json_decref(delta);
                return NULL;
        }
        json_t *j = json_pack("{ss ss si ss s[{si so ss?}]}",
                              "id", id,
                              "object", "chat.completion.chunk",
                              "created", MOCK_CREATED,
                              "model", mock_reported_model(s->model),
                              "choices", "index", 0, "delta", delta, "finish_reason", finish_reason);
        if (!j)
                return NULL;
        /* OpenAI announces the usage field in every chunk once the client
         * asked for the final usage chunk. */
        if (s->include_usage && json_object_set_new(j, "usage", json_null()) < 0) {
                json_decref(j);
                return NULL;
        }
        return j;
}

json_t *mock_responses_usage(const struct mock_script *s) {
        return json_pack("{sI s{sI} sI s{sI} sI}",
                         "input_tokens", (json_int_t) s->in,
                         "input_tokens_details", "cached_tokens", (json_int_t) s->cached,
                         "output_tokens", (json_int_t) s->out,
                         "output_tokens_details", "reasoning_tokens", (json_int_t) s->reasoning,
                         "total_tokens", (json_int_t) (s->in + s->out));
}

json_t *mock_output_text(const char *text) {
        return json_pack("{ss ss s[]}", "type", "output_text", "text", text, "annotations");
}

/* The output item: in_progress (content still empty, as in
 * response.output_item.added) or completed with the text. */
json_t *mock_responses_message(const struct mock_script *s, const char *text, bool completed) {
        _cleanup_free_ char *id = mock_id("msg_mock", s->n);
        if (!id)
                return NULL;
        json_t *content = completed ? json_pack("[o]", mock_output_text(text)) : json_array();
        return json_pack("{ss ss ss ss so}",
                         "id", id,
                         "type", "message",
                         "status", completed ? "completed" : "in_progress",
                         "role", "assistant",
                         "content", content);
}

json_t *mock_responses_json(const struct mock_script *s, const char *text, bool completed) {
        _cleanup_free_ char *id = mock_id("resp_mock", s->n);
        if (!id)
                return NULL;
        if (!completed)
                return json_pack("{ss ss si ss ss s[] sn}",
                                 "id", id,
                                 "object", "response",
                                 "created_at", MOCK_CREATED,
                                 "model", mock_reported_model(s->model),
                                 "status", "in_progress",
                                 "output",
                                 "usage");
        return json_pack("{ss ss si ss ss s[o] so}",
                         "id", id,
                         "object", "response",
                         "created_at", MOCK_CREATED,
                         "model", mock_reported_model(s->model),
                         "status", "completed",
                         "output", mock_responses_message(s, text, true),
                         "usage", mock_responses_usage(s));
}

/* [0.1, 0.2, 0.3] as little-endian float32, base64: what OpenAI sends for
 * "encoding_format": "base64", which its SDK asks for (and decodes) unless
 * the app chose a format. */
#define MOCK_EMBEDDING_BASE64 "zczMPc3MTD6amZk+"

json_t *mock_embeddings_json(const struct mock_script *s) {
        json_t *embedding = s->base64 ? json_string(MOCK_EMBEDDING_BASE64) : json_pack("[fff]", 0.1, 0.2, 0.3);
        return json_pack("{ss s[{ss si so}] ss s{sI sI}}",
                         "object", "list",
                         "data", "object", "embedding", "index", 0, "embedding", embedding,
                         "model", mock_reported_model(s->model),
                         "usage", "prompt_tokens", (json_int_t) s->in,
                         "total_tokens", (json_int_t) s->in);
}

json_t *mock_messages_json(const struct mock_script *s, const char *text) {
        _cleanup_free_ char *id = mock_id("msg_mock", s->n);
        if (!id)
                return NULL;
        json_t *j = json_pack("{ss ss ss ss s[{ss ss}] ss sn s{sI sI sI sI}}",
                         "id", id,
                         "type", "message",
                         "role", "assistant",
                         "model", mock_reported_model(s->model),
                         "content", "type", "text", "text", text,
                         "stop_reason", "end_turn",
                         "stop_sequence",
                         "usage",
                         "input_tokens", (json_int_t) s->in,
                         "output_tokens", (json_int_t) s->out,
                         "cache_creation_input_tokens", (json_int_t) s->cache_write,
                         "cache_read_input_tokens", (json_int_t) s->cached);
        if (j && mock_add_thinking(s, json_object_get(j, "usage")) < 0) {
                json_decref(j);
                return NULL;
        }
        return j;
}

/* Anthropic reports thinking inside output_tokens; the count apart only
 * when there was some (--reasoning, x-mock-reasoning-tokens). */
int mock_add_thinking(const struct mock_script *s, json_t *usage) {
        if (!usage || s->reasoning == 0)
                return 0;
        return json_object_set_new(usage, "output_tokens_details",
                                   json_pack("{sI}", "thinking_tokens", (json_int_t) s->reasoning)) < 0 ? -ENOMEM : 0;
}

json_t *mock_messages_start(const struct mock_script *s) {
        _cleanup_free_ char *id = mock_id("msg_mock", s->n);
        if (!id)
                return NULL;
        return json_pack("{ss s{ss ss ss ss s[] sn sn s{sI si sI sI}}}",
                         "type", "message_start",
                         "message",
                         "id", id,
                         "type", "message",
                         "role", "assistant",
                         "model", mock_reported_model(s->model),
                         "content",
                         "stop_reason",
                         "stop_sequence",
                         "usage",
                         "input_tokens", (json_int_t) s->in,
                         "output_tokens", 1,
                         "cache_creation_input_tokens", (json_int_t) s->cache_write,
                         "cache_read_input_tokens", (json_int_t) s->cached);
}

json_t *mock_completion_usage(const struct mock_script *s) {
        return json_pack("{sI sI sI}",
                         "prompt_tokens", (json_int_t) s->in,
                         "completion_tokens", (json_int_t) s->out,
                         "total_tokens", (json_int_t) (s->in + s->out));
}

/* The legacy /v1/completions answer or stream chunk, without usage
 * (finish_reason NULL: null). */
json_t *mock_completion_json(const struct mock_script *s, const char *text, const char *finish_reason) {
        _cleanup_free_ char *id = mock_id("cmpl-mock", s->n);
        if (!id)
                return NULL;
        return json_pack("{ss ss sI ss s[{ss si sn ss?}]}",
                         "id", id,
                         "object", "text_completion",
                         "created", (json_int_t) s->created,
                         "model", mock_reported_model(s->model),
                         "choices", "text", text, "index", 0, "logprobs", "finish_reason", finish_reason);
}

static const char *const default_models[] = { "mock-model", "mock-model-large" };

bool mock_model_in(const char *const *list, size_t n, const char *model) {
        for (size_t i = 0; model && i < n; i++)
                if (streq(list[i], model))
                        return true;
        return false;
}

const char *mock_reported_model(const char *model) {
        for (size_t i = 0; mock_cfg && model && i < mock_cfg->n_aliases; i++)
                if (streq(mock_cfg->alias_names[i], model))
                        return mock_cfg->alias_snapshots[i];
        return model;
}

bool mock_model_known(const char *model) {
        if (!mock_cfg || mock_cfg->n_models == 0)
                return true;
        /* an alias is served as its snapshot */
        return mock_model_in((const char *const *) mock_cfg->models, mock_cfg->n_models, model) ||
               mock_model_in(mock_cfg->alias_names, mock_cfg->n_aliases, model);
}

json_t *mock_models_json(bool anthropic) {
        const char *const *mock_models = default_models;
        size_t n = ELEMENTSOF(default_models);
        if (mock_cfg && mock_cfg->n_models > 0) {
                mock_models = (const char *const *) mock_cfg->models;
                n = mock_cfg->n_models;
        }
        json_t *data = json_array();
        if (!data)
                return NULL;
        /* the aliases are listed after the models, as providers list both */
        size_t n_aliases = mock_cfg && mock_cfg->n_models > 0 ? mock_cfg->n_aliases : 0;
        for (size_t i = 0; i < n + n_aliases; i++) {
                const char *id = i < n ? mock_models[i] : mock_cfg->alias_names[i - n];
                json_t *m;
                if (anthropic)
                        m = json_pack("{ss ss ss ss}",
                                      "type", "model",
                                      "id", id,
                                      "display_name", id,
                                      "created_at", "2024-01-01T00:00:00Z");
                else
                        m = json_pack("{ss ss si ss}",
                                      "id", id,
                                      "object", "model",
                                      "created", 0,
                                      "owned_by", "mock");
                if (json_array_append_new(data, m) < 0) {
                        json_decref(data);
                        return NULL;
                }
        }
        if (anthropic)
                return json_pack("{so sb ss ss}",
                                 "data", data,
                                 "has_more", 0,
                                 "first_id", mock_models[0],
                                 "last_id", mock_models[n - 1]);
        return json_pack("{ss so}", "object", "list", "data", data);
}

struct error_kind {
        int status;
        const char *openai_type, *openai_code, *openai_message;
        const char *anthropic_type, *anthropic_message;
};

/* The scripted shapes (x-mock-status); 404's messages name the model and
 * are built below. */
static const struct error_kind error_kinds[] = {
        { 400, "invalid_request_error", NULL, "Bad request",
               "invalid_request_error", "Bad request" },
        { 401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided",
               "authentication_error", "invalid x-api-key" },
        { 403, "invalid_request_error", "unsupported_country_region_territory",
               "Country, region, or territory not supported",
               "permission_error", "Your API key does not have permission to use the specified resource." },
        { 404, "invalid_request_error", "model_not_found", NULL,
               "not_found_error", NULL },
        { 413, "invalid_request_error", NULL, "Request too large",
               "request_too_large", "Request exceeds the maximum allowed number of bytes." },
        { 429, "rate_limit_error", "rate_limit_exceeded", "Rate limit reached for requests",
               "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit" },
        { 500, "server_error", NULL, "The server had an error while processing your request. Sorry about that!",
               "api_error", "Internal server error" },
        { 503, "server_error", NULL, "The engine is currently overloaded, please try again later.",
               "api_error", "Service unavailable" },
        { 529, "server_error", NULL, "The server is overloaded, please try again later.",
               "overloaded_error", "Overloaded" },
};

/* message non-NULL: a generic error of that status with this message (used
 * for the mock's own 400/404/413 answers); NULL: the scripted shape. */
json_t *mock_error_json(bool anthropic, int status, const char *model, const char *message) {
        const struct error_kind *k = NULL;
        for (size_t i = 0; i < ELEMENTSOF(error_kinds); i++)
                if (error_kinds[i].status == status)
                        k = &error_kinds[i];

        const char *otype = k ? k->openai_type : status < 500 ? "invalid_request_error" : "server_error";
        const char *atype = k ? k->anthropic_type : status < 500 ? "invalid_request_error" : "api_error";
        const char *ocode = message ? NULL : k ? k->openai_code : NULL;
        _cleanup_free_ char *text = NULL;

        if (!message) {
                if (status == 404) {
                        int r = anthropic ?
                                asprintf(&text, "model: %s", model) :
                                asprintf(&text, "The model `%s` does not exist or you do not have access to it.", model);
                        if (r < 0)
                                return NULL;
                        message = text;
                } else if (k)
                        message = anthropic ? k->anthropic_message : k->openai_message;
                else {
                        if (asprintf(&text, "Mock error %d", status) < 0)
                                return NULL;
                        message = text;
                }
        }

        if (anthropic)
                return json_pack("{ss s{ss ss}}", "type", "error", "error", "type", atype, "message", message);
        /* The 401 shape has no "param" in the contract; the others carry the
         * null OpenAI sends. */
        if (status == 401 && ocode)
                return json_pack("{s{ss ss ss}}", "error", "message", message, "type", otype, "code", ocode);
        return json_pack("{s{ss ss sn ss?}}", "error", "message", message, "type", otype, "param", "code", ocode);
}
