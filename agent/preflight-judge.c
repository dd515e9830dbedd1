/* SPDX-License-Identifier: MIT */
/* Preflight's judgements: what one answer of a provider says about the
 * route. Pure functions over status, bodies and usage, so each is unit
 * tested; no I/O, no logging. */

#include <inttypes.h>
#include <stdarg.h>
#include <strings.h>

#include "preflight.h"

/* Length of the valid UTF-8 sequence at s (1..4), 0 when it is not one. */
static size_t utf8_len(const unsigned char *s) {
        unsigned char c = s[0];
        size_t n;
        unsigned char lo = 0x80, hi = 0xBF;

        if (c < 0x80)
                return 1;
        if (c >= 0xC2 && c <= 0xDF)
                n = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
                n = 3;
                if (c == 0xE0)
                        lo = 0xA0;      /* overlong */
                else if (c == 0xED)
                        hi = 0x9F;      /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
                n = 4;
                if (c == 0xF0)
                        lo = 0x90;
                else if (c == 0xF4)
                        hi = 0x8F;      /* past U+10FFFF */
        } else
                return 0;
        if (s[1] < lo || s[1] > hi)
                return 0;
        for (size_t i = 2; i < n; i++)
                if (s[i] < 0x80 || s[i] > 0xBF)
                        return 0;
        return n;
}

void kb_preflight_text_clean(char *s) {
        for (unsigned char *p = (unsigned char *) s; p && *p;) {
                size_t n = utf8_len(p);
                if (n == 1 && (*p < 0x20 || *p == 0x7f))
                        *p = '?';
                if (n == 0) {
                        *p++ = '?';
                        continue;
                }
                p += n;
        }
}

static int detail(char **ret, const char *fmt, ...) _printf_(2, 3);
static int detail(char **ret, const char *fmt, ...) {
        va_list ap;
        char *s;

        va_start(ap, fmt);
        int r = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;
        kb_preflight_text_clean(s);
        *ret = s;
        return 0;
}

#define PROVIDER_TEXT_MAX 160

/* error.message of either family's error shape, or "". */
static const char *error_message(const json_t *j) {
        const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        return m ?: "";
}

static json_t *load(const char *body, size_t len) {
        return body && len > 0 ? json_loadb(body, len, 0, NULL) : NULL;
}

int kb_preflight_judge_listed(const char *body, size_t len, long status, const char *model, char **ret_detail) {
        _cleanup_(json_decrefp) json_t *j = NULL;
        int r;

        if (status < 200 || status > 299) {
                j = load(body, len);
                r = detail(ret_detail, "no model list: HTTP %ld%s%.*s", status, *error_message(j) ? ": " : "",
                           PROVIDER_TEXT_MAX, error_message(j));
                return r < 0 ? r : false;
        }
        j = load(body, len);
        json_t *data = json_object_get(j, "data");
        if (!json_is_array(data)) {
                r = detail(ret_detail, "HTTP %ld but not a model list (no data[] array)", status);
                return r < 0 ? r : false;
        }
        size_t i, n = json_array_size(data);
        json_t *e;
        json_array_foreach(data, i, e)
                if (streq_ptr(json_string_value(json_object_get(e, "id")), model)) {
                        r = detail(ret_detail, "%.*s listed (%zu models)", (int) KB_PREFLIGHT_MODEL_MAX, model, n);
                        return r < 0 ? r : true;
                }
        /* Name a few so a typo shows. */
        char some[256] = "";
        size_t used = 0;
        json_array_foreach(data, i, e) {
                const char *id = json_string_value(json_object_get(e, "id"));
                if (!id || i >= 5)
                        continue;
                int w = snprintf(some + used, sizeof(some) - used, "%s%.40s", used ? ", " : "", id);
                if (w < 0 || (size_t) w >= sizeof(some) - used)
                        break;
                used += (size_t) w;
        }
        r = detail(ret_detail, "%.*s is not among the %zu models listed%s%s%s%s", (int) KB_PREFLIGHT_MODEL_MAX, model,
                   n, used ? " (" : "", some, n > 5 ? ", …" : "", used ? ")" : "");
        return r < 0 ? r : false;
}

/* The first choice's message of an OpenAI chat answer, or NULL. */
static json_t *chat_message(json_t *j) {
        return json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message");
}

/* The first content block of type in an Anthropic message, or NULL. */
static json_t *content_block(json_t *j, const char *type) {
        size_t i;
        json_t *b;

        json_array_foreach(json_object_get(j, "content"), i, b)
                if (streq_ptr(json_string_value(json_object_get(b, "type")), type))
                        return b;
        return NULL;
}

/* ✗ for a status that is not 2xx or a body that is not an object: 0 with
 * the detail set; 1 when the answer is worth a closer look. */
static int answer_usable(json_t *j, long status, char **ret_detail) {
        int r;

        if (status < 200 || status > 299) {
                r = detail(ret_detail, "HTTP %ld%s%.*s", status, *error_message(j) ? ": " : "", PROVIDER_TEXT_MAX,
                           error_message(j));
                return r < 0 ? r : 0;
        }
        if (!json_is_object(j)) {
                r = detail(ret_detail, "HTTP %ld but the body is not a JSON object", status);
                return r < 0 ? r : 0;
        }
        return 1;
}

int kb_preflight_judge_answer(kb_endpoint ep, const char *body, size_t len, long status, char **ret_detail) {
        _cleanup_(json_decrefp) json_t *j = load(body, len);
        const char *want = NULL;
        int r = answer_usable(j, status, ret_detail);

        if (r <= 0)
                return r;
        switch (ep) {
        case KB_ENDPOINT_MESSAGES:
                if (!streq_ptr(json_string_value(json_object_get(j, "type")), "message") ||
                    !json_is_array(json_object_get(j, "content")))
                        want = "a message (type \"message\" with content[])";
                break;
        case KB_ENDPOINT_RESPONSES:
                if (!streq_ptr(json_string_value(json_object_get(j, "object")), "response") ||
                    !json_is_array(json_object_get(j, "output")))
                        want = "a response (object \"response\" with output[])";
                break;
        case KB_ENDPOINT_EMBEDDINGS: {
                json_t *e = json_object_get(json_array_get(json_object_get(j, "data"), 0), "embedding");
                if (!json_is_array(e) && !json_is_string(e))
                        want = "an embedding list (data[].embedding)";
                break;
        }
        default:
                if (!json_is_object(chat_message(j)))
                        want = "a chat completion (choices[].message)";
        }
        if (want) {
                r = detail(ret_detail, "HTTP %ld but not %s", status, want);
                return r < 0 ? r : false;
        }
        const char *m = json_string_value(json_object_get(j, "model"));
        r = detail(ret_detail, "HTTP %ld, well-formed%s%.*s", status, m ? ", model " : "", (int) KB_PREFLIGHT_MODEL_MAX,
                   strempty(m));
        return r < 0 ? r : true;
}

int kb_preflight_judge_stream(kb_family f, long status, const char *content_type, const struct kb_usage *u,
                              char **ret_detail) {
        const char *terminal = f == KB_FAMILY_ANTHROPIC ? "message_stop" : "[DONE]";
        int r;

        if (status < 200 || status > 299)
                r = detail(ret_detail, "HTTP %ld", status);
        else if (!content_type || strncasecmp(content_type, "text/event-stream", 17) != 0)
                r = detail(ret_detail, "HTTP %ld but content-type %s, not text/event-stream", status,
                           content_type ?: "missing");
        else if (!u || !u->stream_done)
                r = detail(ret_detail, "HTTP %ld text/event-stream, %" PRIu64 " deltas, but no %s", status,
                           u ? u->streamed_deltas : 0, terminal);
        else {
                r = detail(ret_detail, "HTTP %ld text/event-stream, %" PRIu64 " deltas, %s seen", status,
                           u->streamed_deltas, terminal);
                return r < 0 ? r : true;
        }
        return r < 0 ? r : false;
}

int kb_preflight_judge_bogus(kb_family f, const char *body, size_t len, long status, char **ret_detail) {
        _cleanup_(json_decrefp) json_t *j = load(body, len);
        json_t *err = json_object_get(j, "error");
        int r;

        if (status >= 200 && status <= 299) {
                r = detail(ret_detail, "HTTP %ld: a model that does not exist was accepted", status);
                return r < 0 ? r : false;
        }
        if (f == KB_FAMILY_ANTHROPIC) {
                const char *type = json_string_value(json_object_get(err, "type"));
                bool ok = status == 404 && streq_ptr(json_string_value(json_object_get(j, "type")), "error") &&
                          streq_ptr(type, "not_found_error");
                r = detail(ret_detail, "HTTP %ld %s%s", status, type ?: "without an error object",
                           ok ? "" : " (expected 404 not_found_error)");
                return r < 0 ? r : ok;
        }
        const char *code = json_string_value(json_object_get(err, "code"));
        bool ok = (status == 404 || status == 400) && json_is_object(err);
        if (ok && code)
                r = detail(ret_detail, "HTTP %ld %.*s", status, PROVIDER_TEXT_MAX, code);
        else if (ok)
                r = detail(ret_detail, "HTTP %ld error object (no code)", status);
        else
                r = detail(ret_detail, "HTTP %ld %s (expected 404 model_not_found, or a 400/404 error object)", status,
                           json_is_object(err) ? "error" : "without an error object");
        return r < 0 ? r : ok;
}

int kb_preflight_judge_wrong_key(kb_family f, const char *body, size_t len, long status, char **ret_detail) {
        _cleanup_(json_decrefp) json_t *j = load(body, len);
        json_t *err = json_object_get(j, "error");
        int r;

        if (status >= 200 && status <= 299) {
                r = detail(ret_detail, "HTTP %ld: a made-up key was accepted", status);
                return r < 0 ? r : false;
        }
        if (f == KB_FAMILY_ANTHROPIC) {
                const char *type = json_string_value(json_object_get(err, "type"));
                bool ok = status == 401 && streq_ptr(json_string_value(json_object_get(j, "type")), "error") &&
                          streq_ptr(type, "authentication_error");
                r = detail(ret_detail, "HTTP %ld %s%s", status, type ?: "without an error object",
                           ok ? "" : " (expected 401 authentication_error)");
                return r < 0 ? r : ok;
        }
        const char *code = json_string_value(json_object_get(err, "code"));
        bool ok = status == 401 && json_is_object(err);
        if (ok)
                r = detail(ret_detail, "HTTP 401 %.*s", PROVIDER_TEXT_MAX, code ?: "error object (no code)");
        else
                r = detail(ret_detail, "HTTP %ld %s (expected 401 with an error object)", status,
                           json_is_object(err) ? "error" : "without an error object");
        return r < 0 ? r : ok;
}

int kb_preflight_judge_timeout(int error, long status, uint64_t timeout_usec, uint64_t latency_usec,
                               char **ret_detail) {
        int r;

        if (error == -ETIMEDOUT) {
                r = detail(ret_detail, "no answer within %" PRIu64 " ms (%" PRIu64 " ms): keybrokerd answers 504 "
                           "upstream_timeout", timeout_usec / USEC_PER_MSEC, latency_usec / USEC_PER_MSEC);
                return r < 0 ? r : true;
        }
        if (error == 0)
                r = detail(ret_detail, "HTTP %ld in %" PRIu64 " ms: the forced %" PRIu64 " ms timeout did not fire",
                           status, latency_usec / USEC_PER_MSEC, timeout_usec / USEC_PER_MSEC);
        else
                r = detail(ret_detail, "failed otherwise (%s), not by the %" PRIu64 " ms timeout", strerror(-error),
                           timeout_usec / USEC_PER_MSEC);
        return r < 0 ? r : false;
}

#define STR_(x) #x
#define STR(x) STR_(x)

/* One call's usage problem (NULL when plausible). */
static const char *usage_problem(const struct kb_usage *u) {
        if (!u->seen)
                return "no usage reported";
        if (u->input_tokens == 0)
                return "input tokens 0";
        if (u->output_tokens == 0)
                return "output tokens 0";
        if (u->output_tokens > KB_PREFLIGHT_OUTPUT_BOUND)
                return "output tokens over " STR(KB_PREFLIGHT_OUTPUT_BOUND) " for max_tokens " STR(KB_PREFLIGHT_MAX_TOKENS);
        return NULL;
}

static bool cached_in(kb_family f, const json_t *usage) {
        if (f == KB_FAMILY_ANTHROPIC)
                return json_is_integer(json_object_get(usage, "cache_read_input_tokens"));
        return json_is_integer(json_object_get(json_object_get(usage, "prompt_tokens_details"), "cached_tokens")) ||
               json_is_integer(json_object_get(json_object_get(usage, "input_tokens_details"), "cached_tokens"));
}

/* Where an answer or an event keeps its usage: at the top (chat, a chunk,
 * message_delta), in "response" (responses events) or "message"
 * (message_start). */
static bool cached_anywhere(kb_family f, const json_t *j) {
        return cached_in(f, json_object_get(j, "usage")) ||
               cached_in(f, json_object_get(json_object_get(j, "response"), "usage")) ||
               cached_in(f, json_object_get(json_object_get(j, "message"), "usage"));
}

bool kb_preflight_cached_reported(kb_family f, const char *body, size_t len, bool sse) {
        if (!body)
                return false;
        if (!sse) {
                _cleanup_(json_decrefp) json_t *j = load(body, len);
                return cached_anywhere(f, j);
        }
        for (size_t at = 0; at < len;) {
                const char *line = body + at, *nl = memchr(line, '\n', len - at);
                size_t n = nl ? (size_t) (nl - line) : len - at;
                at += n + 1;
                if (n < 5 || strncmp(line, "data:", 5) != 0)
                        continue;
                _cleanup_(json_decrefp) json_t *j = json_loadb(line + 5, n - 5, 0, NULL);
                if (cached_anywhere(f, j))
                        return true;
        }
        return false;
}

int kb_preflight_judge_usage(kb_family f, const struct kb_usage *plain, const char *plain_body, size_t plain_len,
                             const struct kb_usage *stream, const char *stream_body, size_t stream_len,
                             char **ret_detail) {
        const char *pw = plain ? usage_problem(plain) : "the call failed";
        const char *sw = stream ? usage_problem(stream) : "the call failed";
        char total[96] = "";
        bool total_ok = true;
        int r;

        if (plain && !pw && f == KB_FAMILY_OPENAI) {
                _cleanup_(json_decrefp) json_t *j = load(plain_body, plain_len);
                json_t *t = json_object_get(json_object_get(j, "usage"), "total_tokens");
                if (json_is_integer(t)) {
                        json_int_t v = json_integer_value(t);
                        total_ok = v >= 0 && (uint64_t) v == plain->input_tokens + plain->output_tokens;
                        snprintf(total, sizeof(total), ", total %" JSON_INTEGER_FORMAT "%s", v,
                                 total_ok ? "" : " != input + output");
                }
        }
        if (pw || sw) {
                r = detail(ret_detail, "non-streaming: %s; streaming: %s", pw ?: "ok", sw ?: "ok");
                return r < 0 ? r : false;
        }
        if (!pw && !kb_preflight_cached_reported(f, plain_body, plain_len, false))
                pw = "no cached token count";
        if (!sw && !kb_preflight_cached_reported(f, stream_body, stream_len, true))
                sw = "no cached token count";
        if (pw || sw) {
                r = detail(ret_detail, "non-streaming: %s; streaming: %s", pw ?: "ok", sw ?: "ok");
                return r < 0 ? r : false;
        }
        bool same = plain->input_tokens == stream->input_tokens;
        r = detail(ret_detail,
                   "non-streaming %" PRIu64 " in / %" PRIu64 " out / %" PRIu64 " cached%s; streaming %" PRIu64
                   " in / %" PRIu64 " out / %" PRIu64 " cached%s",
                   plain->input_tokens, plain->output_tokens, plain->cached_tokens, total, stream->input_tokens,
                   stream->output_tokens, stream->cached_tokens,
                   same ? "" : ": input tokens differ for the same prompt");
        return r < 0 ? r : total_ok && same;
}

int kb_preflight_judge_tool_call(kb_family f, const char *body, size_t len, long status, char **ret_detail) {
        _cleanup_(json_decrefp) json_t *j = load(body, len), *args_owned = NULL;
        const char *name = NULL;
        const json_t *args = NULL;
        int r = answer_usable(j, status, ret_detail);

        if (r <= 0)
                return r;
        if (f == KB_FAMILY_ANTHROPIC) {
                json_t *b = content_block(j, "tool_use");
                name = json_string_value(json_object_get(b, "name"));
                args = json_object_get(b, "input");
        } else {
                json_t *fn = json_object_get(json_array_get(json_object_get(chat_message(j), "tool_calls"), 0),
                                             "function");
                name = json_string_value(json_object_get(fn, "name"));
                const char *text = json_string_value(json_object_get(fn, "arguments"));
                args = args_owned = text ? json_loads(text, 0, NULL) : NULL;
                if (name && !args) {
                        r = detail(ret_detail, "HTTP %ld: %.64s called, but its arguments are not JSON", status, name);
                        return r < 0 ? r : false;
                }
        }
        if (!name) {
                r = detail(ret_detail, "HTTP %ld but no tool call came back", status);
                return r < 0 ? r : false;
        }
        if (!json_is_object(args)) {
                r = detail(ret_detail, "HTTP %ld: %.64s called, but its arguments are not a JSON object", status, name);
                return r < 0 ? r : false;
        }
        _cleanup_free_ char *text = json_dumps(args, JSON_COMPACT);
        r = detail(ret_detail, "HTTP %ld: %.64s(%.96s%s)", status, name, strempty(text),
                   text && strlen(text) > 96 ? "…" : "");
        return r < 0 ? r : true;
}

int kb_preflight_judge_structured(kb_family f, const json_t *schema, const char *body, size_t len, long status,
                                  char **ret_detail) {
        _cleanup_(json_decrefp) json_t *j = load(body, len), *owned = NULL;
        const json_t *doc = NULL;
        char why[256];
        int r = answer_usable(j, status, ret_detail);

        if (r <= 0)
                return r;
        if (f == KB_FAMILY_ANTHROPIC)
                doc = json_object_get(content_block(j, "tool_use"), "input");
        else {
                json_t *m = chat_message(j);
                const char *refusal = json_string_value(json_object_get(m, "refusal"));
                const char *content = json_string_value(json_object_get(m, "content"));
                if (refusal) {
                        r = detail(ret_detail, "HTTP %ld: refused: %.*s", status, PROVIDER_TEXT_MAX, refusal);
                        return r < 0 ? r : false;
                }
                doc = owned = content ? json_loads(content, 0, NULL) : NULL;
        }
        if (!doc) {
                r = detail(ret_detail, "HTTP %ld but no JSON document came back", status);
                return r < 0 ? r : false;
        }
        if (!kb_preflight_schema_valid(schema, doc, why, sizeof(why))) {
                r = detail(ret_detail, "HTTP %ld but the answer does not match its schema: %s", status, why);
                return r < 0 ? r : false;
        }
        r = detail(ret_detail, "HTTP %ld: the answer validates against its schema", status);
        return r < 0 ? r : true;
}

int kb_preflight_judge_vision(kb_family f, const char *body, size_t len, long status, char **ret_detail) {
        _cleanup_free_ char *d = NULL;
        int ok = kb_preflight_judge_answer(f == KB_FAMILY_ANTHROPIC ? KB_ENDPOINT_MESSAGES : KB_ENDPOINT_CHAT, body, len,
                                           status, &d);
        if (ok < 0)
                return ok;
        int r = detail(ret_detail, "the image was %s: %s", ok ? "accepted" : "refused", d);
        return r < 0 ? r : ok;
}

int kb_preflight_judge_reasoning(kb_family f, const struct kb_usage *u, const char *body, size_t len, long status,
                                 char **ret_detail) {
        _cleanup_(json_decrefp) json_t *j = load(body, len);
        int r = answer_usable(j, status, ret_detail);

        if (r <= 0)
                return r;
        if (u && u->reasoning_tokens > 0)
                r = detail(ret_detail, "HTTP %ld, %" PRIu64 " reasoning tokens reported", status, u->reasoning_tokens);
        else if (f == KB_FAMILY_ANTHROPIC && content_block(j, "thinking"))
                r = detail(ret_detail, "HTTP %ld, a thinking block came back", status);
        else {
                r = detail(ret_detail, "HTTP %ld but no reasoning tokens reported in its usage", status);
                return r < 0 ? r : false;
        }
        return r < 0 ? r : true;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

void kb_preflight_latency_stats(const uint64_t *usec, size_t n, uint64_t *ret_p50, uint64_t *ret_max) {
        uint64_t s[16];

        if (n == 0 || !usec) {
                *ret_p50 = *ret_max = 0;
                return;
        }
        n = MIN(n, ELEMENTSOF(s));
        memcpy(s, usec, n * sizeof(*s));
        qsort(s, n, sizeof(*s), cmp_u64);
        *ret_p50 = s[(n - 1) / 2];
        *ret_max = s[n - 1];
}

