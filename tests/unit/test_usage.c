/* SPDX-License-Identifier: MIT */
/* Usage tap: every provider shape, fed whole, split at every byte and byte by
 * byte; the bytes the app gets must be exact every time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "usage.h"

struct expect {
        uint64_t in, out, cached, cache_write, reasoning;
        const char *model, *id;
        bool seen, done, overflow;
};

struct tapcfg {
        kb_family family;
        kb_endpoint endpoint;
        bool stream, hide;
        size_t limit; /* 0: default */
};

static void check_usage(const struct kb_usage_tap *t, const struct expect *e, const char *what) {
        const struct kb_usage *u = kb_usage_tap_get(t);

        assert_non_null(u);
        if (u->input_tokens != e->in || u->output_tokens != e->out || u->cached_tokens != e->cached ||
            u->cache_write_tokens != e->cache_write || u->reasoning_tokens != e->reasoning ||
            u->seen != e->seen || u->stream_done != e->done || kb_usage_tap_overflowed(t) != e->overflow ||
            !streq_ptr(u->upstream_model, e->model) || !streq_ptr(u->upstream_request_id, e->id))
                fail_msg("%s: got in=%llu out=%llu cached=%llu cw=%llu reas=%llu seen=%d done=%d ovf=%d model=%s id=%s",
                         what, (unsigned long long) u->input_tokens, (unsigned long long) u->output_tokens,
                         (unsigned long long) u->cached_tokens, (unsigned long long) u->cache_write_tokens,
                         (unsigned long long) u->reasoning_tokens, u->seen, u->stream_done,
                         kb_usage_tap_overflowed(t), strempty(u->upstream_model),
                         strempty(u->upstream_request_id));
}

static struct kb_usage_tap *tap_make(const struct tapcfg *c) {
        struct kb_usage_tap *t = NULL;

        assert_int_equal(kb_usage_tap_new(c->family, c->endpoint, c->stream, c->hide, &t), 0);
        assert_non_null(t);
        if (c->limit)
                kb_usage_tap_set_limit(t, c->limit);
        return t;
}

/* Feed input in pieces cut at cuts[0..ncuts) and check out and usage. While
 * feeding, out must always be a prefix of the expected output, and for a
 * non-hiding tap exactly the input seen so far. */
static void run_cuts(const struct tapcfg *c, const char *in, size_t n, const char *want, size_t want_len,
                     const struct expect *e, const size_t *cuts, size_t ncuts, const char *what) {
        struct kb_usage_tap *t = tap_make(c);
        struct kb_buf out = {};
        size_t pos = 0;

        for (size_t k = 0; k <= ncuts; k++) {
                size_t end = k < ncuts ? cuts[k] : n;
                assert_int_equal(kb_usage_tap_feed(t, in + pos, end - pos, &out), 0);
                pos = end;
                if (!c->hide) {
                        assert_int_equal(out.len, pos);
                        assert_memory_equal(out.data, in, pos);
                } else if (out.len > want_len || (out.len && memcmp(out.data, want, out.len) != 0))
                        fail_msg("%s: output is not a prefix of the expected output after %zu bytes:\n%.*s", what, pos,
                                 (int) MIN(out.len, 4000), strempty(out.data));
        }
        assert_int_equal(kb_usage_tap_finish(t, &out), 0);
        /* finish is idempotent and feeding afterwards is refused */
        assert_int_equal(kb_usage_tap_finish(t, &out), 0);
        assert_int_equal(kb_usage_tap_feed(t, "x", 1, &out), -ESTALE);
        if (out.len != want_len || (want_len && memcmp(out.data, want, want_len) != 0))
                fail_msg("%s: output differs (got %zu bytes, want %zu):\n%.*s", what, out.len, want_len,
                         (int) MIN(out.len, 4000), strempty(out.data));
        check_usage(t, e, what);
        kb_buf_free(&out);
        kb_usage_tap_free(t);
}

/* Whole, every two-piece split, byte by byte. */
static void run_all(const struct tapcfg *c, const char *in, const char *want, const struct expect *e) {
        size_t n = strlen(in), want_len = strlen(want);
        char what[64];

        run_cuts(c, in, n, want, want_len, e, NULL, 0, "whole");
        for (size_t i = 0; i <= n; i++) {
                size_t cut = i;
                snprintf(what, sizeof(what), "split at %zu", i);
                run_cuts(c, in, n, want, want_len, e, &cut, 1, what);
        }
        size_t *cuts = calloc(n ? n : 1, sizeof(size_t));
        assert_non_null(cuts);
        for (size_t i = 0; i < n; i++)
                cuts[i] = i;
        run_cuts(c, in, n, want, want_len, e, cuts, n, "byte by byte");
        free(cuts);
}

/* Replace every "\n" by eol. The payloads escape newlines inside JSON, so
 * every raw "\n" is a line end. */
static char *with_eol(const char *s, const char *eol) {
        struct kb_buf b = {};
        for (; *s; s++) {
                if (*s == '\n')
                        assert_int_equal(kb_buf_append(&b, eol, strlen(eol)), 0);
                else
                        assert_int_equal(kb_buf_append(&b, s, 1), 0);
        }
        if (!b.data)
                return strdup("");
        return b.data;
}

/* ---- OpenAI chat ---- */

#define CHAT_HEAD                                                                                              \
        "data: {\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,"     \
        "\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[{"      \
        "\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},"                 \
        "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"                                    \
        "data: {\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,"     \
        "\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[{"      \
        "\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],"        \
        "\"usage\":null}\n\n"                                                                               \
        "data: {\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,"     \
        "\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[{"      \
        "\"index\":0,\"delta\":{\"content\":\" there, usage: \\\"choices\\\": []\\n\"},"                    \
        "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"                                    \
        "data: {\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,"     \
        "\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[{"      \
        "\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n"

#define CHAT_USAGE                                                                                             \
        "data: {\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1727000000,"     \
        "\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[],"     \
        "\"usage\":{\"prompt_tokens\":1234,\"completion_tokens\":56,\"total_tokens\":1290,"                 \
        "\"prompt_tokens_details\":{\"cached_tokens\":1024,\"audio_tokens\":0},"                            \
        "\"completion_tokens_details\":{\"reasoning_tokens\":7,\"audio_tokens\":0,"                         \
        "\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n"

#define CHAT_DONE "data: [DONE]\n\n"

static const struct expect chat_expect = {
        .in = 1234, .out = 56, .cached = 1024, .reasoning = 7, .model = "gpt-4o-mini-2024-07-18",
        .id = "chatcmpl-AbC123", .seen = true, .done = true,
};

static void test_chat_json(_unused_ void **state) {
        const struct tapcfg c = { KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, false, false, 0 };
        const char *body =
                "{\n  \"id\": \"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\n  \"object\": \"chat.completion\",\n"
                "  \"created\": 1741569952,\n  \"model\": \"gpt-4.1-2025-04-14\",\n  \"choices\": [\n    {\n"
                "      \"index\": 0,\n      \"message\": {\n        \"role\": \"assistant\",\n"
                "        \"content\": \"Hello! How can I assist you today?\",\n        \"refusal\": null,\n"
                "        \"annotations\": []\n      },\n      \"logprobs\": null,\n"
                "      \"finish_reason\": \"stop\"\n    }\n  ],\n  \"usage\": {\n    \"prompt_tokens\": 19,\n"
                "    \"completion_tokens\": 10,\n    \"total_tokens\": 29,\n    \"prompt_tokens_details\": {\n"
                "      \"cached_tokens\": 3,\n      \"audio_tokens\": 0\n    },\n"
                "    \"completion_tokens_details\": {\n      \"reasoning_tokens\": 2,\n"
                "      \"audio_tokens\": 0,\n      \"accepted_prediction_tokens\": 0,\n"
                "      \"rejected_prediction_tokens\": 0\n    }\n  },\n  \"service_tier\": \"default\"\n}\n";
        const struct expect e = { .in = 19, .out = 10, .cached = 3, .reasoning = 2, .model = "gpt-4.1-2025-04-14",
                                  .id = "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", .seen = true };
        run_all(&c, body, body, &e);

        /* an upstream error body: no usage, passes */
        const char *err = "{\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\","
                          "\"param\":null,\"code\":\"rate_limit_exceeded\"}}";
        const struct expect none = {};
        run_all(&c, err, err, &none);
}

static void test_chat_stream(_unused_ void **state) {
        const struct tapcfg c = { KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, true, false, 0 };
        const char *in = CHAT_HEAD CHAT_USAGE CHAT_DONE;
        run_all(&c, in, in, &chat_expect);
}

static void test_chat_stream_hide(_unused_ void **state) {
        const struct tapcfg c = { KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, true, true, 0 };
        run_all(&c, CHAT_HEAD CHAT_USAGE CHAT_DONE, CHAT_HEAD CHAT_DONE, &chat_expect);

        /* CRLF and bare CR: the whole event, terminators included, goes */
        const char *eols[] = { "\r\n", "\r" };
        for (size_t k = 0; k < ELEMENTSOF(eols); k++) {
                char *in = with_eol(CHAT_HEAD CHAT_USAGE CHAT_DONE, eols[k]);
                char *want = with_eol(CHAT_HEAD CHAT_DONE, eols[k]);
                run_all(&c, in, want, &chat_expect);
                free(in);
                free(want);
        }

        /* with an "event:" line, an id and a comment inside the hidden event */
        run_all(&c, CHAT_HEAD ": keep-alive\nid: 7\n" CHAT_USAGE CHAT_DONE, CHAT_HEAD CHAT_DONE, &chat_expect);
}

static void test_chat_stream_hide_no_usage(_unused_ void **state) {
        const struct tapcfg c = { KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, true, true, 0 };
        const struct expect e = { .model = "gpt-4o-mini-2024-07-18", .id = "chatcmpl-AbC123", .done = true };
        run_all(&c, CHAT_HEAD CHAT_DONE, CHAT_HEAD CHAT_DONE, &e);

        /* usage in a chunk that still has choices is not hidden (counted) */
        const char *mixed = "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{}}],"
                            "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\n\n" CHAT_DONE;
        const struct expect e2 = { .in = 5, .out = 6, .model = "m", .id = "c1", .seen = true, .done = true };
        run_all(&c, mixed, mixed, &e2);

        /* "choices": [] with usage null, or without usage: not hidden */
        const char *nulls = "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[],\"usage\":null}\n\n"
                            "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[]}\n\n" CHAT_DONE;
        const struct expect e3 = { .model = "m", .id = "c1", .done = true };
        run_all(&c, nulls, nulls, &e3);
}

static void test_chat_stream_partial_finish(_unused_ void **state) {
        const struct tapcfg hide = { KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, true, true, 0 };
        const struct tapcfg plain = { KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, true, false, 0 };
        const struct expect head = { .model = "gpt-4o-mini-2024-07-18", .id = "chatcmpl-AbC123" };

        /* cut inside a data line: the held bytes are flushed at finish */
        const char *in = CHAT_HEAD "data: {\"id\":\"chatcmpl-AbC123\",\"choi";
        run_all(&hide, in, in, &head);
        run_all(&plain, in, in, &head);

        /* a usage event whose blank line never came: counted, and flushed
         * rather than hidden */
        const char *in2 = CHAT_HEAD "data: {\"id\":\"x\",\"model\":\"y\",\"choices\":[],\"usage\":"
                                    "{\"prompt_tokens\":9,\"completion_tokens\":4}}";
        const struct expect e2 = { .in = 9, .out = 4, .model = "gpt-4o-mini-2024-07-18", .id = "chatcmpl-AbC123",
                                   .seen = true };
        run_all(&hide, in2, in2, &e2);
        char *in3 = NULL;
        assert_true(asprintf(&in3, "%s\n", in2) > 0);
        run_all(&hide, in3, in3, &e2);
        free(in3);

        /* [DONE] without its blank line */
        const struct expect e4 = { .model = "gpt-4o-mini-2024-07-18", .id = "chatcmpl-AbC123", .done = true };
        run_all(&hide, CHAT_HEAD "data: [DONE]\n", CHAT_HEAD "data: [DONE]\n", &e4);
}

static void test_chat_stream_error_event(_unused_ void **state) {
        const struct tapcfg c = { KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, true, true, 0 };
        const char *in = CHAT_HEAD
                "data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\"}}\n\n"
                "event: error\ndata: not json at all\n\n";
        const struct expect e = { .model = "gpt-4o-mini-2024-07-18", .id = "chatcmpl-AbC123" };
        run_all(&c, in, in, &e);
}

/* ---- SSE framing ---- */

static void test_sse_framing(_unused_ void **state) {
        const struct tapcfg c = { KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, true, false, 0 };
        /* comments, a field without a colon, retry/id, "data:" without the
         * space, JSON spread over several data lines, blank lines between
         * events */
        const char *in = ": OPENROUTER PROCESSING\n\n"
                         ":comment without space\n"
                         "retry: 1000\nid: 1\nfoo\n"
                         "data:{\"id\":\"gen-1\",\n"
                         "data:  \"model\": \"openai/gpt-4o\",\n"
                         "data: \"choices\": [],\n"
                         "data: \"usage\": {\"prompt_tokens\": 11,\n"
                         "data: \"completion_tokens\": 22}}\n"
                         "\n\n\n"
                         "data: [DONE]\n\n";
        const struct expect e = { .in = 11, .out = 22, .model = "openai/gpt-4o", .id = "gen-1", .seen = true,
                                  .done = true };
        run_all(&c, in, in, &e);

        const char *eols[] = { "\r\n", "\r" };
        for (size_t k = 0; k < ELEMENTSOF(eols); k++) {
                char *x = with_eol(in, eols[k]);
                run_all(&c, x, x, &e);
                const struct tapcfg h = { KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, true, true, 0 };
                /* everything from after the first event's blank line up to
                 * the usage event's blank line is one event and goes */
                char *want = with_eol(": OPENROUTER PROCESSING\n\n\n\ndata: [DONE]\n\n", eols[k]);
                run_all(&h, x, want, &e);
                free(want);
                free(x);
        }

        /* "data: [DONE]" is only special for OpenAI; "[DONE]" with stray spaces still is */
        const struct expect d = { .done = true };
        run_all(&c, "data:  [DONE] \n\n", "data:  [DONE] \n\n", &d);
        const struct expect nd = {};
        run_all(&c, "data: [DONE]x\n\n", "data: [DONE]x\n\n", &nd);
        const char nul[] = "data: \0[DONE]\n\n";
        run_cuts(&c, nul, sizeof(nul) - 1, nul, sizeof(nul) - 1, &nd, NULL, 0, "NUL");
        run_all(&c, "event: x\n\n: only comments\n\n", "event: x\n\n: only comments\n\n", &nd);
        run_all(&c, "", "", &nd);
}

/* ---- embeddings ---- */

static void test_embeddings(_unused_ void **state) {
        const struct tapcfg c = { KB_FAMILY_OPENAI, KB_ENDPOINT_EMBEDDINGS, false, false, 0 };
        const char *body = "{\n  \"object\": \"list\",\n  \"data\": [\n    {\n      \"object\": \"embedding\",\n"
                           "      \"index\": 0,\n      \"embedding\": [\n        -0.006929283495992422,\n"
                           "        -0.005336422007530928,\n        -4.547132266452536e-05,\n"
                           "        -0.024047505110502243\n      ]\n    }\n  ],\n"
                           "  \"model\": \"text-embedding-3-small\",\n  \"usage\": {\n"
                           "    \"prompt_tokens\": 5,\n    \"total_tokens\": 5\n  }\n}\n";
        const struct expect e = { .in = 5, .model = "text-embedding-3-small", .seen = true };
        run_all(&c, body, body, &e);
}

/* ---- OpenAI responses ---- */

static void test_responses_json(_unused_ void **state) {
        const struct tapcfg c = { KB_FAMILY_OPENAI, KB_ENDPOINT_RESPONSES, false, false, 0 };
        const char *body =
                "{\"id\":\"resp_67ccd2bed1ec8190b14f964abc054267\",\"object\":\"response\",\"created_at\":1741476542,"
                "\"status\":\"completed\",\"error\":null,\"incomplete_details\":null,\"instructions\":null,"
                "\"max_output_tokens\":null,\"model\":\"gpt-4.1-2025-04-14\",\"output\":[{\"type\":\"message\","
                "\"id\":\"msg_67ccd2bf17f0819081ff3bb2cf6508e6\",\"status\":\"completed\",\"role\":\"assistant\","
                "\"content\":[{\"type\":\"output_text\",\"text\":\"In a peaceful grove...\",\"annotations\":[]}]}],"
                "\"parallel_tool_calls\":true,\"previous_response_id\":null,\"reasoning\":{\"effort\":null,"
                "\"summary\":null},\"store\":true,\"temperature\":1.0,\"text\":{\"format\":{\"type\":\"text\"}},"
                "\"tool_choice\":\"auto\",\"tools\":[],\"top_p\":1.0,\"truncation\":\"disabled\","
                "\"usage\":{\"input_tokens\":36,\"input_tokens_details\":{\"cached_tokens\":4},"
                "\"output_tokens\":87,\"output_tokens_details\":{\"reasoning_tokens\":12},\"total_tokens\":123},"
                "\"user\":null,\"metadata\":{}}";
        const struct expect e = { .in = 36, .out = 87, .cached = 4, .reasoning = 12, .model = "gpt-4.1-2025-04-14",
                                  .id = "resp_67ccd2bed1ec8190b14f964abc054267", .seen = true };
        run_all(&c, body, body, &e);
}

#define RESP_OBJ(status, usage)                                                                                \
        "{\"id\":\"resp_abc\",\"object\":\"response\",\"created_at\":1741290958,\"status\":\"" status "\","  \
        "\"error\":null,\"model\":\"o4-mini-2025-04-16\",\"output\":[],\"usage\":" usage "}"

#define RESP_STREAM_BODY                                                                                       \
        "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":"  \
        RESP_OBJ("in_progress", "null") "}\n\n"                                                               \
        "event: response.in_progress\ndata: {\"type\":\"response.in_progress\",\"sequence_number\":1,"        \
        "\"response\":" RESP_OBJ("in_progress", "null") "}\n\n"                                               \
        "event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\","                 \
        "\"sequence_number\":2,\"output_index\":0,\"item\":{\"id\":\"msg_1\",\"type\":\"message\","           \
        "\"status\":\"in_progress\",\"role\":\"assistant\",\"content\":[]}}\n\n"                              \
        "event: response.content_part.added\ndata: {\"type\":\"response.content_part.added\","               \
        "\"sequence_number\":3,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,"                 \
        "\"part\":{\"type\":\"output_text\",\"text\":\"\",\"annotations\":[]}}\n\n"                           \
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\","                 \
        "\"sequence_number\":4,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,"                 \
        "\"delta\":\"Hi\"}\n\n"                                                                               \
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\","                 \
        "\"sequence_number\":5,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,"                 \
        "\"delta\":\" there\"}\n\n"                                                                           \
        "event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\","                   \
        "\"sequence_number\":6,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,"                 \
        "\"text\":\"Hi there\"}\n\n"                                                                          \
        "event: response.output_item.done\ndata: {\"type\":\"response.output_item.done\","                   \
        "\"sequence_number\":7,\"output_index\":0,\"item\":{\"id\":\"msg_1\",\"type\":\"message\"}}\n\n"

#define RESP_USAGE                                                                                             \
        "{\"input_tokens\":37,\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":11,"           \
        "\"output_tokens_details\":{\"reasoning_tokens\":64},\"total_tokens\":48}"

static void test_responses_stream(_unused_ void **state) {
        const struct tapcfg c = { KB_FAMILY_OPENAI, KB_ENDPOINT_RESPONSES, true, false, 0 };
        const struct expect e = { .in = 37, .out = 11, .reasoning = 64, .model = "o4-mini-2025-04-16",
                                  .id = "resp_abc", .seen = true, .done = true };
        const char *types[] = { "completed", "incomplete", "failed" };

        for (size_t k = 0; k < ELEMENTSOF(types); k++) {
                char *in = NULL;
                assert_true(asprintf(&in,
                                     "%sevent: response.%s\ndata: {\"type\":\"response.%s\",\"sequence_number\":8,"
                                     "\"response\":" RESP_OBJ("%s", RESP_USAGE) "}\n\n",
                                     RESP_STREAM_BODY, types[k], types[k], types[k]) > 0);
                run_all(&c, in, in, &e);
                free(in);
        }

        /* cut off before the terminal event: no usage, not done */
        const struct expect cut = { .model = "o4-mini-2025-04-16", .id = "resp_abc" };
        run_all(&c, RESP_STREAM_BODY, RESP_STREAM_BODY, &cut);

        /* an error event mid-stream changes nothing */
        const char *err = RESP_STREAM_BODY "event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\","
                                           "\"message\":\"boom\",\"param\":null,\"sequence_number\":8}\n\n";
        run_all(&c, err, err, &cut);
}

/* ---- Anthropic ---- */

static void test_messages_json(_unused_ void **state) {
        const struct tapcfg c = { KB_FAMILY_ANTHROPIC, KB_ENDPOINT_MESSAGES, false, false, 0 };
        const char *body =
                "{\"id\":\"msg_013Zva2CMHLNnXjNJJKqJ2EF\",\"type\":\"message\",\"role\":\"assistant\","
                "\"model\":\"claude-sonnet-4-20250514\",\"content\":[{\"type\":\"text\",\"text\":\"Hi! My name is "
                "Claude.\"}],\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":2095,"
                "\"cache_creation_input_tokens\":2051,\"cache_read_input_tokens\":1500,\"output_tokens\":503,"
                "\"service_tier\":\"standard\"}}";
        const struct expect e = { .in = 2095, .out = 503, .cached = 1500, .cache_write = 2051,
                                  .model = "claude-sonnet-4-20250514", .id = "msg_013Zva2CMHLNnXjNJJKqJ2EF",
                                  .seen = true };
        run_all(&c, body, body, &e);

        const char *err = "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}";
        const struct expect none = {};
        run_all(&c, err, err, &none);
}

#define ANTH_STREAM                                                                                            \
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\"," \
        "\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-opus-4-1-20250805\","  \
        "\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,"                         \
        "\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2000,\"output_tokens\":1}}}\n\n"    \
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"                  \
        "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"                                            \
        "event: ping\ndata: {\"type\": \"ping\"}\n\n"                                                         \
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"                  \
        "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n"                                         \
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"                  \
        "\"delta\":{\"type\":\"text_delta\",\"text\":\"!\\n\\nevent: message_stop\"}}\n\n"                    \
        "event: ping\ndata: {\"type\": \"ping\"}\n\n"                                                         \
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"

static void test_messages_stream(_unused_ void **state) {
        const struct tapcfg c = { KB_FAMILY_ANTHROPIC, KB_ENDPOINT_MESSAGES, true, false, 0 };
        const char *in = ANTH_STREAM
                "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\","
                "\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n"
                "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        const struct expect e = { .in = 25, .out = 15, .cached = 2000, .cache_write = 100,
                                  .model = "claude-opus-4-1-20250805", .id = "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
                                  .seen = true, .done = true };
        run_all(&c, in, in, &e);

        char *crlf = with_eol(in, "\r\n");
        run_all(&c, crlf, crlf, &e);
        free(crlf);

        /* several message_delta events: the latest cumulative value wins;
         * newer API versions repeat input and cache counts there */
        const char *in2 = ANTH_STREAM
                "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":40}}\n\n"
                "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},"
                "\"usage\":{\"input_tokens\":30,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":2100,"
                "\"output_tokens\":89,\"server_tool_use\":{\"web_search_requests\":1}}}\n\n"
                "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        const struct expect e2 = { .in = 30, .out = 89, .cached = 2100, .cache_write = 0,
                                   .model = "claude-opus-4-1-20250805", .id = "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
                                   .seen = true, .done = true };
        run_all(&c, in2, in2, &e2);

        /* an error event ends the stream: what message_start said stays */
        const char *in3 = ANTH_STREAM "event: error\ndata: {\"type\": \"error\", \"error\": "
                                      "{\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n";
        const struct expect e3 = { .in = 25, .out = 1, .cached = 2000, .cache_write = 100,
                                   .model = "claude-opus-4-1-20250805", .id = "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
                                   .seen = true };
        run_all(&c, in3, in3, &e3);

        /* the "event:" name is the fallback when the data has no type */
        const char *in4 = "event: message_delta\ndata: {\"usage\":{\"output_tokens\":3}}\n\n"
                          "event: message_stop\ndata: {}\n\n";
        const struct expect e4 = { .out = 3, .seen = true, .done = true };
        run_all(&c, in4, in4, &e4);

        /* "[DONE]" means nothing to Anthropic */
        const struct expect none = {};
        run_all(&c, "data: [DONE]\n\n", "data: [DONE]\n\n", &none);
}

static void test_count_tokens_and_models(_unused_ void **state) {
        const struct tapcfg c = { KB_FAMILY_ANTHROPIC, KB_ENDPOINT_COUNT_TOKENS, false, false, 0 };
        const struct expect e = { .in = 2095, .seen = true };
        run_all(&c, "{\"input_tokens\":2095}", "{\"input_tokens\":2095}", &e);
        const struct expect none = {};
        run_all(&c, "{\"input_tokens\":-1}", "{\"input_tokens\":-1}", &none);
        run_all(&c, "{\"input_tokens\":\"12\"}", "{\"input_tokens\":\"12\"}", &none);
        run_all(&c, "[2095]", "[2095]", &none);

        const struct tapcfg m = { KB_FAMILY_OPENAI, KB_ENDPOINT_MODELS, false, false, 0 };
        const char *models = "{\"object\":\"list\",\"data\":[{\"id\":\"gpt-4o\",\"object\":\"model\","
                             "\"created\":1686935002,\"owned_by\":\"openai\"}],\"usage\":{\"prompt_tokens\":9}}";
        run_all(&m, models, models, &none);
        const struct tapcfg w = { KB_FAMILY_OPENAI, KB_ENDPOINT_WHOAMI, false, false, 0 };
        run_all(&w, "{\"team\":\"search\"}", "{\"team\":\"search\"}", &none);
}

/* ---- bad input ---- */

static void test_bad_numbers(_unused_ void **state) {
        const struct tapcfg c = { KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, false, false, 0 };
        const struct expect none = {};

        /* negative, float, string, null, bool: ignored field by field */
        const char *b1 = "{\"model\":\"m\",\"usage\":{\"prompt_tokens\":-5,\"completion_tokens\":3.0,"
                         "\"prompt_tokens_details\":{\"cached_tokens\":\"7\"},"
                         "\"completion_tokens_details\":{\"reasoning_tokens\":true}}}";
        const struct expect e1 = { .model = "m", .seen = true };
        run_all(&c, b1, b1, &e1);

        const char *b2 = "{\"usage\":{\"prompt_tokens\":9223372036854775807,\"completion_tokens\":1e3,"
                         "\"prompt_tokens_details\":null,\"completion_tokens_details\":[1]}}";
        const struct expect e2 = { .in = UINT64_C(9223372036854775807), .seen = true };
        run_all(&c, b2, b2, &e2);

        /* too big for jansson: the document is rejected as a whole */
        const char *b3 = "{\"model\":\"m\",\"usage\":{\"prompt_tokens\":99999999999999999999,\"completion_tokens\":1}}";
        run_all(&c, b3, b3, &none);

        /* usage that is not an object; malformed JSON; truncated JSON; trailing junk */
        const char *bad[] = {
                "{\"model\":\"m\",\"usage\":[1,2]}", "{\"usage\":\"lots\"}", "{\"usage\":null}",
                "{\"usage\":{\"prompt_tokens\":1,}}", "{\"usage\":{\"prompt_tokens\":1}", "{\"usage\":{}} x",
                "\x01\xff", "null", "",
        };
        for (size_t k = 0; k < ELEMENTSOF(bad); k++) {
                const struct expect em = { .model = k == 0 ? "m" : NULL };
                run_all(&c, bad[k], bad[k], &em);
        }

        /* Only the members usage is read from are judged: an answer whose
         * text is not valid UTF-8 (jansson would refuse the whole document)
         * is still counted, as the provider billed it. A key spelt with
         * escapes still matches. */
        const char *b6 = "{\"model\":\"m\",\"choices\":[{\"message\":{\"content\":\"\xff\xfe\"}}],"
                         "\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1}}";
        const struct expect e6 = { .in = 2, .out = 1, .model = "m", .seen = true };
        run_all(&c, b6, b6, &e6);
        const char *b7 = "{\"mod\\u0065l\":\"m\",\"usage\":{\"prompt_tokens\":4}}";
        const struct expect e7 = { .in = 4, .model = "m", .seen = true };
        run_all(&c, b7, b7, &e7);

        /* overlong or empty model/id are not recorded */
        char *longmodel = NULL;
        assert_true(asprintf(&longmodel, "{\"id\":\"\",\"model\":\"%0300d\",\"usage\":{\"prompt_tokens\":1}}", 0) > 0);
        const struct expect e4 = { .in = 1, .seen = true };
        run_all(&c, longmodel, longmodel, &e4);
        free(longmodel);

        /* the same in a stream: bad events do not stop later good ones */
        const struct tapcfg s = { KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, true, true, 0 };
        const char *in = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":-1,\"completion_tokens\":2}}\n\n"
                         "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":99999999999999999999}}\n\n"
                         "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,}\n\n"
                         "data: {\"choices\":[],\"usage\":\"x\"}\n\n"
                         "data: [DONE]\n\n";
        const char *want = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":99999999999999999999}}\n\n"
                           "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,}\n\n"
                           "data: {\"choices\":[],\"usage\":\"x\"}\n\n"
                           "data: [DONE]\n\n";
        const struct expect e5 = { .out = 2, .seen = true, .done = true };
        run_all(&s, in, want, &e5);
}

/* ---- size limit ---- */

static void test_limit_json(_unused_ void **state) {
        const struct tapcfg small = { KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, false, false, 64 };
        const char *fits = "{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}"; /* 50 bytes */
        const struct expect e = { .in = 1, .out = 2, .seen = true };
        run_all(&small, fits, fits, &e);

        const char *big = "{\"model\":\"m\",\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\","
                          "\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}";
        const struct expect over = { .overflow = true };
        run_all(&small, big, big, &over);

        /* the real limit: 16 MiB + 1 in 64 KiB reads, all bytes pass */
        const size_t n = 16 * 1024 * 1024 + 1;
        char *huge = malloc(n);
        assert_non_null(huge);
        memset(huge, ' ', n);
        memcpy(huge, "{\"usage\":{\"prompt_tokens\":1}}", 29);
        struct kb_usage_tap *t = NULL;
        struct kb_buf out = {};
        assert_int_equal(kb_usage_tap_new(KB_FAMILY_OPENAI, KB_ENDPOINT_EMBEDDINGS, false, false, &t), 0);
        for (size_t pos = 0; pos < n; pos += 65536)
                assert_int_equal(kb_usage_tap_feed(t, huge + pos, MIN((size_t) 65536, n - pos), &out), 0);
        assert_int_equal(kb_usage_tap_finish(t, &out), 0);
        assert_int_equal(out.len, n);
        assert_memory_equal(out.data, huge, n);
        assert_true(kb_usage_tap_overflowed(t));
        assert_false(kb_usage_tap_get(t)->seen);
        kb_usage_tap_free(t);
        t = NULL;

        /* exactly 16 MiB is still parsed */
        assert_int_equal(kb_usage_tap_new(KB_FAMILY_OPENAI, KB_ENDPOINT_EMBEDDINGS, false, false, &t), 0);
        kb_buf_clear(&out);
        assert_int_equal(kb_usage_tap_feed(t, huge, n - 1, &out), 0);
        assert_int_equal(kb_usage_tap_finish(t, &out), 0);
        assert_false(kb_usage_tap_overflowed(t));
        assert_true(kb_usage_tap_get(t)->seen);
        assert_int_equal(kb_usage_tap_get(t)->input_tokens, 1);
        kb_usage_tap_free(t);
        kb_buf_free(&out);
        free(huge);
}

static void test_limit_sse(_unused_ void **state) {
        /* the oversized event (> 80 bytes) is skipped, the others count */
        const char *big = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":100},"
                          "\"pad\":\"xxxxxxxxxxxxxxxxxxxx\"}\n\n";
#define LIMIT_IN_FMT                                                                                           \
        "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{}]}\n\n%s"                                          \
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":5}}\n\n"                    \
        "data: [DONE]\n\n"
        char *in = NULL, *want = NULL;
        assert_true(asprintf(&in, LIMIT_IN_FMT, big) > 0);
        assert_true(asprintf(&want, "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{}]}\n\n%sdata: [DONE]\n\n",
                             big) > 0);
        const struct expect e = { .in = 4, .out = 5, .model = "m", .id = "c", .seen = true, .done = true,
                                  .overflow = true };
        const struct tapcfg plain = { KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, true, false, 80 };
        run_all(&plain, in, in, &e);
        /* a hiding tap stops holding the big event and lets it flow */
        const struct tapcfg hide = { KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, true, true, 80 };
        run_all(&hide, in, want, &e);
        free(in);
        free(want);

        /* the same with CRLF */
        assert_true(asprintf(&in, LIMIT_IN_FMT, big) > 0);
        assert_true(asprintf(&want, "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[{}]}\n\n%sdata: [DONE]\n\n",
                             big) > 0);
        char *crlf_in = with_eol(in, "\r\n"), *crlf_want = with_eol(want, "\r\n");
        run_all(&hide, crlf_in, crlf_want, &e);
        free(in);
        free(want);
        free(crlf_in);
        free(crlf_want);

        /* a stream that ends inside an oversized event */
        const char *cut = "data: {\"id\":\"c\",\"model\":\"m\",\"choices\":[]}\n\n"
                          "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":100},"
                          "\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
        const struct expect e2 = { .model = "m", .id = "c", .overflow = true };
        run_all(&hide, cut, cut, &e2);
}

/* ---- API edges ---- */

static void test_api(_unused_ void **state) {
        struct kb_usage_tap *t = NULL;
        struct kb_buf out = {};

        assert_string_equal(kb_endpoint_to_string(KB_ENDPOINT_CHAT), "chat");
        assert_string_equal(kb_endpoint_to_string(KB_ENDPOINT_RESPONSES), "responses");
        assert_string_equal(kb_endpoint_to_string(KB_ENDPOINT_EMBEDDINGS), "embeddings");
        assert_string_equal(kb_endpoint_to_string(KB_ENDPOINT_MESSAGES), "messages");
        assert_string_equal(kb_endpoint_to_string(KB_ENDPOINT_COUNT_TOKENS), "count_tokens");
        assert_string_equal(kb_endpoint_to_string(KB_ENDPOINT_MODELS), "models");
        assert_string_equal(kb_endpoint_to_string(KB_ENDPOINT_WHOAMI), "whoami");
        assert_null(kb_endpoint_to_string(_KB_ENDPOINT_MAX));
        assert_null(kb_endpoint_to_string((kb_endpoint) -1));

        assert_int_equal(kb_usage_tap_new(KB_FAMILY_OPENAI, _KB_ENDPOINT_MAX, false, false, &t), -EINVAL);
        assert_int_equal(kb_usage_tap_new(_KB_FAMILY_MAX, KB_ENDPOINT_CHAT, false, false, &t), -EINVAL);
        assert_int_equal(kb_usage_tap_new(KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, false, false, NULL), -EINVAL);
        assert_null(t);

        kb_usage_tap_free(NULL);
        assert_null(kb_usage_tap_get(NULL));
        assert_false(kb_usage_tap_overflowed(NULL));
        assert_int_equal(kb_usage_tap_feed(NULL, "x", 1, &out), -EINVAL);
        assert_int_equal(kb_usage_tap_finish(NULL, &out), -EINVAL);

        assert_int_equal(kb_usage_tap_new(KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, true, false, &t), 0);
        assert_int_equal(kb_usage_tap_feed(t, NULL, 1, &out), -EINVAL);
        assert_int_equal(kb_usage_tap_feed(t, "x", 1, NULL), -EINVAL);
        assert_int_equal(kb_usage_tap_feed(t, NULL, 0, &out), 0);
        assert_int_equal(out.len, 0);
        assert_false(kb_usage_tap_get(t)->seen);
        kb_usage_tap_free(t);

        /* hide only applies to streams: a JSON tap passes at once */
        assert_int_equal(kb_usage_tap_new(KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, false, true, &t), 0);
        assert_int_equal(kb_usage_tap_feed(t, "{\"choices\":[],", 14, &out), 0);
        assert_int_equal(out.len, 14);
        kb_usage_tap_free(t); /* without finish: nothing leaks (run under ASan) */
        kb_buf_free(&out);
}

/* An idle hiding tap holds only the partial event, and gives back the
 * memory of a big event once it is over. */
static void test_memory(_unused_ void **state) {
        struct kb_usage_tap *t = NULL;
        struct kb_buf out = {};
        char *big = malloc(200000);

        assert_non_null(big);
        memcpy(big, "data: \"", 7);
        memset(big + 7, 'x', 200000 - 7);
        assert_int_equal(kb_usage_tap_new(KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, true, true, &t), 0);
        assert_true(kb_usage_tap_memory(t) < 1024);
        assert_int_equal(kb_usage_tap_feed(t, big, 200000, &out), 0);
        assert_int_equal(out.len, 0); /* held: the event is not complete */
        assert_true(kb_usage_tap_memory(t) >= 200000);
        assert_int_equal(kb_usage_tap_feed(t, "\"\n\ndata: {", 10, &out), 0);
        assert_int_equal(out.len, 200003);
        assert_memory_equal(out.data, big, 200000);
        assert_true(kb_usage_tap_memory(t) < 1024);
        assert_int_equal(kb_usage_tap_feed(t, "}\n\n", 3, &out), 0);
        assert_int_equal(out.len, 200003 + 10);
        assert_memory_equal(out.data + 200003, "data: {}\n\n", 10);
        /* small events keep small buffers */
        for (int i = 0; i < 1000; i++)
                assert_int_equal(kb_usage_tap_feed(t, CHAT_HEAD, strlen(CHAT_HEAD), &out), 0);
        assert_true(kb_usage_tap_memory(t) < 4096);
        kb_usage_tap_free(t);
        t = NULL;

        /* a plain stream tap holds nothing of what it passed */
        assert_int_equal(kb_usage_tap_new(KB_FAMILY_ANTHROPIC, KB_ENDPOINT_MESSAGES, true, false, &t), 0);
        kb_buf_clear(&out);
        assert_int_equal(kb_usage_tap_feed(t, big, 200000, &out), 0);
        assert_int_equal(kb_usage_tap_feed(t, "\"\n\n", 3, &out), 0);
        assert_true(kb_usage_tap_memory(t) < 1024);
        kb_usage_tap_free(t);
        kb_buf_free(&out);
        free(big);
}

/* The inline meter: one count per event that carried generated output,
 * whatever the family, fed at every split point. */
static uint64_t deltas_of(kb_family f, kb_endpoint e, const char *payload, size_t split) {
        struct kb_usage_tap *t;
        struct kb_buf out = {};
        size_t n = strlen(payload);

        assert_int_equal(kb_usage_tap_new(f, e, true, false, &t), 0);
        assert_int_equal(kb_usage_tap_feed(t, payload, split, &out), 0);
        assert_int_equal(kb_usage_tap_feed(t, payload + split, n - split, &out), 0);
        assert_int_equal(kb_usage_tap_finish(t, &out), 0);
        uint64_t d = kb_usage_tap_get(t)->streamed_deltas;
        kb_usage_tap_free(t);
        kb_buf_free(&out);
        return d;
}

static void test_streamed_deltas(void **state) {
        static const char chat[] =
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n"
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\n"
                "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n"
                "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":3}}\n\n"
                "data: [DONE]\n\n";
        static const char anth[] =
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n"
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a\"}}\n\n"
                "event: ping\ndata: {\"type\":\"ping\"}\n\n"
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"b\"}}\n\n";
        static const char resp[] =
                "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{}}\n\n"
                "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"x\"}\n\n";

        for (size_t i = 0; i <= strlen(chat); i++)
                assert_int_equal(deltas_of(KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, chat, i), 3);
        for (size_t i = 0; i <= strlen(anth); i++)
                assert_int_equal(deltas_of(KB_FAMILY_ANTHROPIC, KB_ENDPOINT_MESSAGES, anth, i), 2);
        for (size_t i = 0; i <= strlen(resp); i++)
                assert_int_equal(deltas_of(KB_FAMILY_OPENAI, KB_ENDPOINT_RESPONSES, resp, i), 1);
}

/* After the first chunk (model and id known) chat chunks are read from
 * their text; what that reader cannot read as jansson does (an escape in a
 * key, a malformed chunk) is read the jansson way: the counts are the same
 * either way, wherever the stream is cut. */
static void test_chat_chunks_read_from_text(void **state) {
#define C(x) "data: {\"id\":\"c1\",\"model\":\"m\"," x "}\n\n"
        static const char chat[] =
                C("\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]")      /* 0 */
                C("\"choices\":[{\"delta\":{\"content\":null}}],\"usage\":null")               /* 0 */
                C("\"choices\":[{\"delta\":{\"refusal\":\"no\"}}]")                            /* 1 */
                C("\"choices\":[{\"delta\":{\"reasoning_content\":\"hmm\"}}]")                 /* 2 */
                C("\"choices\":[{\"delta\":{\"tool_calls\":[ ]}}]")                            /* 2 */
                C("\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0}]}}]")               /* 3 */
                C("\"choices\":[{\"delta\":{\"con\\u0074ent\":\"x\"}}]")                       /* 4: jansson's */
                C("\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"choices\":[]")              /* 4: the last key */
                "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"x\"}}]\n\n" /* malformed */
                C("\"choices\":[7,{\"delta\":{\"content\":\"y\"}}]")                           /* 5 */
                C("\"choices\":[{\"text\":\"legacy\"}]")                                       /* 6 */
                C("\"choices\":[{\"delta\":{\"content\":\"\\\"\"}}]")                          /* 7: an escaped quote */
                C("\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6,"
                  "\"prompt_tokens_details\":{\"cached_tokens\":2}}")
                "data: [DONE]\n\n";
#undef C
        for (size_t i = 0; i <= strlen(chat); i++) {
                assert_int_equal(deltas_of(KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, chat, i), 7);
                assert_int_equal(deltas_of(KB_FAMILY_OPENAI, KB_ENDPOINT_COMPLETIONS, chat, i), 7);
        }
        struct kb_usage_tap *t;
        struct kb_buf out = {};
        assert_int_equal(kb_usage_tap_new(KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, true, true, &t), 0);
        assert_int_equal(kb_usage_tap_feed(t, chat, strlen(chat), &out), 0);
        assert_int_equal(kb_usage_tap_finish(t, &out), 0);
        const struct kb_usage *u = kb_usage_tap_get(t);
        assert_int_equal(u->input_tokens, 5);
        assert_int_equal(u->output_tokens, 6);
        assert_int_equal(u->cached_tokens, 2);
        assert_true(u->stream_done);
        /* the usage-only chunk is hidden from the app, the rest passes */
        assert_null(memmem(out.data, out.len, "prompt_tokens", 13));
        assert_non_null(memmem(out.data, out.len, "\"legacy\"", 8));
        kb_usage_tap_free(t);
        kb_buf_free(&out);
}

static int gate_at_two(void *userdata, const struct kb_usage *u) {
        unsigned *calls = userdata;
        (*calls)++;
        return u->streamed_deltas > 2;
}

/* The gate stops a stream exactly before the event that would cross: two
 * output events pass, the third and all after it never reach the app. */
static void test_gate(void **state) {
        static const char s[] =
                "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
                "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n"
                "data: {\"choices\":[{\"delta\":{\"content\":\"c\"}}]}\n\n"
                "data: {\"choices\":[{\"delta\":{\"content\":\"d\"}}]}\n\n"
                "data: [DONE]\n\n";
        const char *third = strstr(s, "data: {\"choices\":[{\"delta\":{\"content\":\"c");
        size_t keep = (size_t) (third - s);

        for (size_t split = 0; split <= strlen(s); split++) {
                struct kb_usage_tap *t;
                struct kb_buf out = {};
                unsigned calls = 0;

                assert_int_equal(kb_usage_tap_new(KB_FAMILY_OPENAI, KB_ENDPOINT_CHAT, true, false, &t), 0);
                kb_usage_tap_set_gate(t, gate_at_two, &calls);
                assert_int_equal(kb_usage_tap_feed(t, s, split, &out), 0);
                assert_int_equal(kb_usage_tap_feed(t, s + split, strlen(s) - split, &out), 0);
                assert_int_equal(kb_usage_tap_finish(t, &out), 0);
                assert_true(kb_usage_tap_stopped(t));
                assert_int_equal(out.len, keep);
                assert_memory_equal(out.data, s, keep);
                assert_int_equal(calls, 3);
                kb_usage_tap_free(t);
                kb_buf_free(&out);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_chat_json),
                cmocka_unit_test(test_chat_stream),
                cmocka_unit_test(test_chat_stream_hide),
                cmocka_unit_test(test_chat_stream_hide_no_usage),
                cmocka_unit_test(test_chat_stream_partial_finish),
                cmocka_unit_test(test_chat_stream_error_event),
                cmocka_unit_test(test_sse_framing),
                cmocka_unit_test(test_embeddings),
                cmocka_unit_test(test_responses_json),
                cmocka_unit_test(test_responses_stream),
                cmocka_unit_test(test_messages_json),
                cmocka_unit_test(test_messages_stream),
                cmocka_unit_test(test_count_tokens_and_models),
                cmocka_unit_test(test_bad_numbers),
                cmocka_unit_test(test_limit_json),
                cmocka_unit_test(test_limit_sse),
                cmocka_unit_test(test_api),
                cmocka_unit_test(test_memory),
                cmocka_unit_test(test_streamed_deltas),
                cmocka_unit_test(test_chat_chunks_read_from_text),
                cmocka_unit_test(test_gate),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
