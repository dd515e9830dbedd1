/* SPDX-License-Identifier: MIT */
/* Preflight's pure parts: the check names and the admin call's body
 * (preflight-request.c), what each answer says about a route
 * (preflight-judge.c), the schema validator and the Statuspage parser
 * (preflight-schema.c), the owner and price rules (preflight-checks.c),
 * the rollback line (preflight-plan.c), latency figures and the evidence
 * file (preflight-evidence.c). */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <sys/stat.h>

#include "helper.h"
#include "preflight.h"

#define S(lit) lit, sizeof(lit) - 1

static void test_names(void **state) {
        static const char *const want[] = { "model", "endpoint", "features", "usage", "pricing",
                                            "status", "failures", "fallback", "owner", "rollback" };
        assert_int_equal(_KB_CHECK_MAX, ELEMENTSOF(want));
        for (kb_preflight_check c = 0; c < _KB_CHECK_MAX; c++) {
                assert_string_equal(kb_preflight_check_to_string(c), want[c]);
                assert_non_null(kb_preflight_check_title(c));
                assert_int_equal(kb_preflight_check_from_string(want[c]), (int) c);
        }
        assert_null(kb_preflight_check_to_string(_KB_CHECK_MAX));
        assert_null(kb_preflight_check_title((kb_preflight_check) -1));
        assert_int_equal(kb_preflight_check_from_string("credentials"), -EINVAL);
        assert_int_equal(kb_preflight_check_from_string(""), -EINVAL);
        assert_int_equal(kb_preflight_check_from_string("Model"), -EINVAL);
        assert_int_equal(kb_preflight_check_from_string(NULL), -EINVAL);
}

static void test_parse_names(void **state) {
        unsigned m = 0;
        const char *bad = NULL;
        size_t n = 0;

        assert_int_equal(kb_preflight_parse_names("model,usage", &m, &bad, &n), 0);
        assert_int_equal(m, KB_CHECK_BIT(KB_CHECK_MODEL) | KB_CHECK_BIT(KB_CHECK_USAGE));
        assert_int_equal(kb_preflight_parse_names("rollback", &m, NULL, NULL), 0);
        assert_true(m & KB_CHECK_BIT(KB_CHECK_ROLLBACK));
        static const char *const bads[] = { "", ",", "model,", ",model", "model,,usage", "nope", "model,usagex" };
        static const char *const what[] = { "", "", "", "", "", "nope", "usagex" };
        for (size_t i = 0; i < ELEMENTSOF(bads); i++) {
                m = 0;
                assert_int_equal(kb_preflight_parse_names(bads[i], &m, &bad, &n), -EINVAL);
                assert_int_equal(n, strlen(what[i]));
                assert_memory_equal(bad, what[i], n);
        }
}

static void test_parse_body_good(void **state) {
        char *m = (char *) 1;
        unsigned checks = 0;
        const char *why = NULL;

        assert_int_equal(kb_preflight_parse_body("", 0, &m, &checks, &why), 0);
        assert_null(m);
        assert_int_equal(checks, KB_CHECK_ALL);
        m = (char *) 1;
        assert_int_equal(kb_preflight_parse_body(S(" \r\n"), &m, &checks, &why), 0);
        assert_null(m);
        m = (char *) 1;
        assert_int_equal(kb_preflight_parse_body(S("{}"), &m, &checks, &why), 0);
        assert_null(m);
        assert_int_equal(checks, KB_CHECK_ALL);
        m = (char *) 1;
        assert_int_equal(kb_preflight_parse_body(S("{\"model\":null,\"only\":null,\"skip\":null}"), &m, &checks, &why), 0);
        assert_null(m);
        assert_int_equal(checks, KB_CHECK_ALL);
        assert_int_equal(kb_preflight_parse_body(S("{\"model\":\"gpt-4o-mini\"}"), &m, &checks, &why), 0);
        assert_string_equal(m, "gpt-4o-mini");
        free(m);
        assert_int_equal(kb_preflight_parse_body(S("{\"model\":\"openai/gpt 4o ü\"}\n"), &m, &checks, &why), 0);
        assert_string_equal(m, "openai/gpt 4o ü");
        free(m);
        assert_int_equal(kb_preflight_parse_body(S("{\"only\":[\"model\",\"owner\",\"model\"]}"), &m, &checks, &why), 0);
        assert_null(m);
        assert_int_equal(checks, KB_CHECK_BIT(KB_CHECK_MODEL) | KB_CHECK_BIT(KB_CHECK_OWNER));
        assert_int_equal(kb_preflight_parse_body(S("{\"skip\":[\"status\"],\"model\":\"x\"}"), &m, &checks, &why), 0);
        assert_int_equal(checks, KB_CHECK_ALL & ~KB_CHECK_BIT(KB_CHECK_STATUS));
        free(m);
        assert_int_equal(kb_preflight_parse_body(S("{\"skip\":[]}"), &m, &checks, &why), 0);
        assert_int_equal(checks, KB_CHECK_ALL);
}

static void test_parse_body_bad(void **state) {
        static const char *const bad[] = {
                "[]", "\"m\"", "{\"model\":1}", "{\"model\":\"\"}", "{\"model\":\"a\\nb\"}",
                "{\"model\":\"a\\u0000b\"}", "{\"model\":\"x\",\"extra\":1}", "{\"other\":\"x\"}",
                "{\"model\":\"a\",\"model\":\"b\"}", "{", "null", "{\"model\":[\"x\"]}", "{\"model\":true}",
                "{\"only\":\"model\"}", "{\"only\":[]}", "{\"only\":[\"nope\"]}", "{\"only\":[1]}",
                "{\"skip\":{}}", "{\"only\":[\"model\"],\"skip\":[\"usage\"]}", "{\"only\":[\"mo\\u0000del\"]}",
                "{\"model\":\"x\",\"only\":[\"credentials\"]}",
                "{\"skip\":[\"model\",\"endpoint\",\"features\",\"usage\",\"pricing\",\"status\",\"failures\","
                "\"fallback\",\"owner\",\"rollback\"]}",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                char *m = (char *) 1;
                unsigned checks = 77;
                const char *why = NULL;
                if (kb_preflight_parse_body(bad[i], strlen(bad[i]), &m, &checks, &why) != -EINVAL)
                        fail_msg("accepted: %s", bad[i]);
                assert_ptr_equal(m, (char *) 1); /* untouched */
                assert_int_equal(checks, 77);
                assert_non_null(why);
        }

        /* a model of 257 bytes, and a body past the limit */
        char big[400];
        unsigned checks;
        int n = snprintf(big, sizeof(big), "{\"model\":\"");
        memset(big + n, 'a', KB_PREFLIGHT_MODEL_MAX + 1);
        n += KB_PREFLIGHT_MODEL_MAX + 1;
        n += snprintf(big + n, sizeof(big) - (size_t) n, "\"}");
        char *m = NULL;
        const char *why = NULL;
        assert_int_equal(kb_preflight_parse_body(big, (size_t) n, &m, &checks, &why), -EINVAL);
        /* exactly the limit is fine */
        memmove(big + n - 3, big + n - 2, 3);
        assert_int_equal(kb_preflight_parse_body(big, (size_t) n - 1, &m, &checks, &why), 0);
        assert_int_equal(strlen(m), KB_PREFLIGHT_MODEL_MAX);
        free(m);
        char *huge = malloc(KB_PREFLIGHT_MAX_REQUEST_BODY + 1);
        assert_non_null(huge);
        memset(huge, ' ', KB_PREFLIGHT_MAX_REQUEST_BODY + 1);
        assert_int_equal(kb_preflight_parse_body(huge, KB_PREFLIGHT_MAX_REQUEST_BODY + 1, &m, &checks, &why), -EINVAL);
        free(huge);
}

static const char conf[] =
        "[team:t]\nusers = 0\nmodels = *\nowner = t@example.com\n"
        "[team:u]\nusers = 1\nmodels = m2\n"
        "[team:v]\nusers = 2\nmodels = m3\n"
        "[route:a]\nfamily = openai\nbase_url = http://127.0.0.1:1/v1\nkey = ka\nowner = me\nkey_owner = keys\n"
        "[route:b]\nfamily = openai\nbase_url = http://127.0.0.1:1/v1\nkey = kb\n"
        "[route:c]\nfamily = openai\nbase_url = http://127.0.0.1:1/v1\n"
        "[route:d]\nfamily = openai\nbase_url = http://127.0.0.1:1/v1\nowner = me\n"
        "[model:m0]\ntarget = d text-embedding-3-small\ntarget = d up-d\n"
        "[model:m1]\ntarget = a up-a1\nfallback = b up-b-fallback\n"
        "[model:m2]\ntarget = a up-a2 weight=3\ntarget = b up-b2\ntarget = a up-a3 weight=0\n"
        "[model:m3]\ntarget = d text-embedding-3-large\n";

static void test_default_model(void **state) {
        struct kb_config *c = kbt_config("t.conf", conf);
        /* a target wins over an earlier model's fallback */
        assert_string_equal(kb_preflight_default_model(c, kb_config_find_route(c, "a")), "up-a1");
        assert_string_equal(kb_preflight_default_model(c, kb_config_find_route(c, "b")), "up-b2");
        assert_null(kb_preflight_default_model(c, kb_config_find_route(c, "c")));
        /* a chat model wins over an embedding model named before it */
        assert_string_equal(kb_preflight_default_model(c, kb_config_find_route(c, "d")), "up-d");
        assert_true(kb_preflight_is_embedding_model("text-embedding-3-small"));
        assert_false(kb_preflight_is_embedding_model("gpt-4o"));
        assert_false(kb_preflight_is_embedding_model(NULL));
        kb_config_unref(c);
}

static void test_owner(void **state) {
        struct kb_config *c = kbt_config("t.conf", conf);
        json_t *parts = NULL;
        char *d = NULL;

        /* a: owner and key_owner; teams t (*), u (m2) use it; u has no owner */
        assert_int_equal(kb_preflight_judge_owner(c, kb_config_find_route(c, "a"), &parts, &d), 0);
        assert_string_equal(d, "add to [team:u]: owner = TEXT");
        assert_int_equal(json_array_size(parts), 4);
        assert_true(json_is_true(json_object_get(json_array_get(parts, 0), "ok")));
        json_decref(parts);
        free(d);
        /* b: nothing on the route */
        assert_int_equal(kb_preflight_judge_owner(c, kb_config_find_route(c, "b"), &parts, &d), 0);
        assert_string_equal(d, "add to [route:b]: owner = TEXT; add to [route:b]: key_owner = TEXT (who answers for "
                               "key kb); add to [team:u]: owner = TEXT");
        json_decref(parts);
        free(d);
        /* d: no key, so no key_owner; teams t and v (m3); v without owner */
        assert_int_equal(kb_preflight_judge_owner(c, kb_config_find_route(c, "d"), &parts, &d), 0);
        assert_string_equal(d, "add to [team:v]: owner = TEXT");
        json_decref(parts);
        free(d);
        /* c: used by no model: its owner alone */
        assert_int_equal(kb_preflight_judge_owner(c, kb_config_find_route(c, "c"), &parts, &d), 0);
        assert_string_equal(d, "add to [route:c]: owner = TEXT");
        json_decref(parts);
        free(d);
        kb_config_unref(c);

        const char ok_conf[] = "[team:t]\nusers = 0\nmodels = m\nowner = t@x\n"
                               "[route:r]\nfamily = openai\nbase_url = http://h/v1\nkey = k\nowner = o\nkey_owner = ko\n"
                               "[model:m]\ntarget = r up\n";
        c = kbt_config("ok.conf", ok_conf);
        assert_int_equal(kb_preflight_judge_owner(c, kb_config_find_route(c, "r"), &parts, &d), 1);
        assert_string_equal(d, "route o, key ko, team t t@x");
        json_decref(parts);
        free(d);
        kb_config_unref(c);
}

static void test_price_and_split(void **state) {
        struct kb_config *c = kbt_config("t.conf", conf);
        char *s = kb_preflight_price_line(KB_ENDPOINT_CHAT, "gpt-x");
        assert_string_equal(s, "price = gpt-x input=USD output=USD");
        free(s);
        s = kb_preflight_price_line(KB_ENDPOINT_EMBEDDINGS, "text-embedding-3-small");
        assert_string_equal(s, "price = text-embedding-3-small input=USD");
        free(s);

        const unsigned w1[] = { 7 };
        s = kb_preflight_split_command(kb_config_find_model(c, "m1"), w1);
        assert_string_equal(s, "keybrokerctl model split m1 a=7");
        free(s);
        /* a route that is a target twice is named ROUTE/UPSTREAM_MODEL */
        const unsigned w2[] = { 70, 30, 0 };
        s = kb_preflight_split_command(kb_config_find_model(c, "m2"), w2);
        assert_string_equal(s, "keybrokerctl model split m2 a/up-a2=70 b=30 a/up-a3=0");
        free(s);
        assert_null(kb_preflight_split_command(NULL, w1));
        kb_config_unref(c);
}

static void test_answer(void **state) {
        char *d = NULL;

        assert_int_equal(kb_preflight_judge_answer(KB_ENDPOINT_CHAT,
                S("{\"model\":\"m\",\"choices\":[{\"message\":{\"content\":\"hi\"}}]}"), 200, &d), 1);
        assert_string_equal(d, "HTTP 200, well-formed, model m");
        free(d);
        assert_int_equal(kb_preflight_judge_answer(KB_ENDPOINT_CHAT, S("{\"choices\":[]}"), 200, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_answer(KB_ENDPOINT_CHAT, S("{\"choices\":[{}]}"), 200, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_answer(KB_ENDPOINT_CHAT, S("[1]"), 200, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_answer(KB_ENDPOINT_CHAT, S("{\"error\":{\"message\":\"nope\"}}"), 500, &d), 0);
        assert_string_equal(d, "HTTP 500: nope");
        free(d);
        assert_int_equal(kb_preflight_judge_answer(KB_ENDPOINT_MESSAGES, S("{\"type\":\"message\",\"content\":[]}"), 200,
                                                   &d), 1);
        free(d);
        /* an OpenAI body from an Anthropic route is not well-formed */
        assert_int_equal(kb_preflight_judge_answer(KB_ENDPOINT_MESSAGES, S("{\"choices\":[{\"message\":{}}]}"), 200, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_answer(KB_ENDPOINT_MESSAGES, S("{\"type\":\"message\",\"content\":{}}"), 200,
                                                   &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_answer(KB_ENDPOINT_RESPONSES,
                S("{\"object\":\"response\",\"output\":[],\"model\":\"r\"}"), 200, &d), 1);
        free(d);
        assert_int_equal(kb_preflight_judge_answer(KB_ENDPOINT_RESPONSES, S("{\"object\":\"chat.completion\"}"), 200, &d), 0);
        assert_non_null(strstr(d, "not a response"));
        free(d);
        assert_int_equal(kb_preflight_judge_answer(KB_ENDPOINT_EMBEDDINGS,
                S("{\"data\":[{\"embedding\":[0.1]}],\"model\":\"e\"}"), 200, &d), 1);
        free(d);
        assert_int_equal(kb_preflight_judge_answer(KB_ENDPOINT_EMBEDDINGS, S("{\"data\":[{\"embedding\":\"zcz=\"}]}"), 200,
                                                   &d), 1);
        free(d);
        assert_int_equal(kb_preflight_judge_answer(KB_ENDPOINT_EMBEDDINGS, S("{\"data\":[]}"), 200, &d), 0);
        free(d);
}

static void test_stream(void **state) {
        struct kb_usage u = { .stream_done = true, .streamed_deltas = 7 };
        char *d = NULL;

        assert_int_equal(kb_preflight_judge_stream(KB_FAMILY_OPENAI, 200, "text/event-stream; charset=utf-8", &u, &d), 1);
        assert_string_equal(d, "HTTP 200 text/event-stream, 7 deltas, [DONE] seen");
        free(d);
        assert_int_equal(kb_preflight_judge_stream(KB_FAMILY_ANTHROPIC, 200, "text/event-stream", &u, &d), 1);
        assert_non_null(strstr(d, "message_stop seen"));
        free(d);
        assert_int_equal(kb_preflight_judge_stream(KB_FAMILY_OPENAI, 200, "application/json", &u, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_stream(KB_FAMILY_OPENAI, 200, NULL, &u, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_stream(KB_FAMILY_OPENAI, 500, "text/event-stream", &u, &d), 0);
        free(d);
        u.stream_done = false;
        assert_int_equal(kb_preflight_judge_stream(KB_FAMILY_OPENAI, 200, "text/event-stream", &u, &d), 0);
        assert_non_null(strstr(d, "but no [DONE]"));
        free(d);
        assert_int_equal(kb_preflight_judge_stream(KB_FAMILY_OPENAI, 200, "text/event-stream", NULL, &d), 0);
        free(d);
}

static void test_wrong_key_and_timeout(void **state) {
        char *d = NULL;

        assert_int_equal(kb_preflight_judge_wrong_key(KB_FAMILY_OPENAI,
                S("{\"error\":{\"message\":\"Incorrect API key\",\"code\":\"invalid_api_key\"}}"), 401, &d), 1);
        assert_string_equal(d, "HTTP 401 invalid_api_key");
        free(d);
        assert_int_equal(kb_preflight_judge_wrong_key(KB_FAMILY_OPENAI, S("{\"choices\":[]}"), 200, &d), 0);
        assert_string_equal(d, "HTTP 200: a made-up key was accepted");
        free(d);
        assert_int_equal(kb_preflight_judge_wrong_key(KB_FAMILY_OPENAI, S("{\"error\":{}}"), 403, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_wrong_key(KB_FAMILY_OPENAI, S("Unauthorized"), 401, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_wrong_key(KB_FAMILY_ANTHROPIC,
                S("{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\",\"message\":\"x\"}}"), 401, &d), 1);
        free(d);
        assert_int_equal(kb_preflight_judge_wrong_key(KB_FAMILY_ANTHROPIC,
                S("{\"type\":\"error\",\"error\":{\"type\":\"permission_error\"}}"), 401, &d), 0);
        free(d);

        assert_int_equal(kb_preflight_judge_timeout(-ETIMEDOUT, 0, 1000, 3000, &d), 1);
        assert_string_equal(d, "no answer within 1 ms (3 ms): keybrokerd answers 504 upstream_timeout");
        free(d);
        assert_int_equal(kb_preflight_judge_timeout(0, 200, 1000, 0, &d), 0);
        assert_non_null(strstr(d, "did not fire"));
        free(d);
        assert_int_equal(kb_preflight_judge_timeout(-ECONNREFUSED, 0, 1000, 0, &d), 0);
        assert_non_null(strstr(d, "failed otherwise"));
        free(d);
}

static const char chat_usage[] =
        "{\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":5,\"total_tokens\":16,"
        "\"prompt_tokens_details\":{\"cached_tokens\":0}}}";
static const char chat_sse[] =
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n"
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":5,"
        "\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n"
        "data: [DONE]\n\n";

static void test_usage(void **state) {
        struct kb_usage a = { .input_tokens = 11, .output_tokens = 5, .seen = true };
        struct kb_usage b = { .input_tokens = 11, .output_tokens = 5, .cached_tokens = 2, .seen = true };
        char *d = NULL;

        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a, S(chat_usage), &b, S(chat_sse), &d), 1);
        assert_string_equal(d, "non-streaming 11 in / 5 out / 0 cached, total 16; streaming 11 in / 5 out / 2 cached");
        free(d);
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a,
                S("{\"usage\":{\"total_tokens\":17,\"prompt_tokens_details\":{\"cached_tokens\":0}}}"), &b, S(chat_sse),
                &d), 0);
        assert_non_null(strstr(d, "!= input + output"));
        free(d);
        /* the same prompt must count the same input */
        b.input_tokens = 12;
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a, S(chat_usage), &b, S(chat_sse), &d), 0);
        assert_non_null(strstr(d, "input tokens differ for the same prompt"));
        free(d);
        b.input_tokens = 11;
        /* cached must be there as a number, both ways */
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a, S("{\"usage\":{\"prompt_tokens\":11}}"), &b,
                                                  S(chat_sse), &d), 0);
        assert_string_equal(d, "non-streaming: no cached token count; streaming: ok");
        free(d);
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a, S(chat_usage), &b,
                S("data: {\"usage\":{\"prompt_tokens_details\":{\"cached_tokens\":null}}}\n\n"), &d), 0);
        assert_string_equal(d, "non-streaming: ok; streaming: no cached token count");
        free(d);
        /* Anthropic: cache_read_input_tokens, in message_start's message */
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_ANTHROPIC, &a, S("{\"usage\":{\"cache_read_input_tokens\":0}}"),
                &b, S("event: message_start\ndata: {\"message\":{\"usage\":{\"cache_read_input_tokens\":2}}}\n\n"), &d), 1);
        free(d);
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, NULL, NULL, 0, &b, S(chat_sse), &d), 0);
        assert_string_equal(d, "non-streaming: the call failed; streaming: ok");
        free(d);
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a, NULL, 0, NULL, NULL, 0, &d), 0);
        free(d);
        b.seen = false;
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a, S(chat_usage), &b, S(chat_sse), &d), 0);
        assert_string_equal(d, "non-streaming: ok; streaming: no usage reported");
        free(d);
        b.seen = true;
        b.output_tokens = KB_PREFLIGHT_OUTPUT_BOUND + 1;
        b.input_tokens = 11;
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a, S(chat_usage), &b, S(chat_sse), &d), 0);
        assert_non_null(strstr(d, "output tokens over 64 for max_tokens 5"));
        free(d);
        b.output_tokens = 0;
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a, S(chat_usage), &b, S(chat_sse), &d), 0);
        free(d);

        /* responses: input_tokens_details; a bare "data:" line and junk are skipped */
        assert_true(kb_preflight_cached_reported(KB_FAMILY_OPENAI,
                S("{\"usage\":{\"input_tokens_details\":{\"cached_tokens\":0}}}"), false));
        assert_true(kb_preflight_cached_reported(KB_FAMILY_OPENAI,
                S("data:\n\ndata: nope\n\nevent: response.completed\ndata: {\"response\":{\"usage\":"
                  "{\"input_tokens_details\":{\"cached_tokens\":0}}}}"), true));
        assert_false(kb_preflight_cached_reported(KB_FAMILY_OPENAI, S("{\"usage\":{\"cached_tokens\":0}}"), false));
        assert_false(kb_preflight_cached_reported(KB_FAMILY_OPENAI, NULL, 0, true));
}

static const char schema_text[] =
        "{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"city\",\"n\",\"tags\",\"size\"],"
        "\"properties\":{\"city\":{\"type\":\"string\"},\"n\":{\"type\":\"integer\"},\"r\":{\"type\":\"number\"},"
        "\"ok\":{\"type\":[\"boolean\",\"null\"]},\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},"
        "\"size\":{\"enum\":[\"s\",\"l\"]},\"sub\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}}}}}";

static void test_schema(void **state) {
        json_t *schema = json_loads(schema_text, 0, NULL);
        static const struct {
                const char *doc, *why; /* why NULL: valid */
        } cases[] = {
                { "{\"city\":\"x\",\"n\":1,\"tags\":[\"a\"],\"size\":\"s\"}", NULL },
                { "{\"city\":\"x\",\"n\":1,\"r\":2,\"ok\":null,\"tags\":[],\"size\":\"l\",\"sub\":{\"x\":3}}", NULL },
                { "{\"city\":\"x\",\"n\":1,\"r\":2.5,\"ok\":true,\"tags\":[],\"size\":\"l\"}", NULL },
                { "{\"city\":1,\"n\":1,\"tags\":[],\"size\":\"s\"}", "$.city: expected string, got integer" },
                { "{\"city\":\"x\",\"n\":1.5,\"tags\":[],\"size\":\"s\"}", "$.n: expected integer, got number" },
                { "{\"city\":\"x\",\"tags\":[],\"size\":\"s\"}", "$: required property 'n' is missing" },
                { "{\"city\":\"x\",\"n\":1,\"tags\":[],\"size\":\"s\",\"zz\":1}", "$: property 'zz' is not allowed" },
                { "{\"city\":\"x\",\"n\":1,\"tags\":[\"a\",2],\"size\":\"s\"}", "$.tags[1]: expected string, got integer" },
                { "{\"city\":\"x\",\"n\":1,\"tags\":[],\"size\":\"m\"}", "$.size: not one of the enum's values" },
                { "{\"city\":\"x\",\"n\":1,\"tags\":[],\"size\":\"s\",\"ok\":1}", "$.ok: integer is none of the types allowed" },
                { "{\"city\":\"x\",\"n\":1,\"tags\":[],\"size\":\"s\",\"sub\":{\"x\":\"1\"}}", "$.sub.x: expected integer, got string" },
                { "[1]", "$: expected object, got array" },
        };
        char why[256];

        assert_non_null(schema);
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                json_t *doc = json_loads(cases[i].doc, JSON_DECODE_ANY, NULL);
                assert_non_null(doc);
                bool ok = kb_preflight_schema_valid(schema, doc, why, sizeof(why));
                if (ok != !cases[i].why || (cases[i].why && !streq(why, cases[i].why)))
                        fail_msg("%s: got %s (%s)", cases[i].doc, ok ? "valid" : "invalid", why);
                json_decref(doc);
        }
        assert_false(kb_preflight_schema_valid(schema, NULL, why, sizeof(why)));
        /* nesting past the limit never validates, nor recurses without end */
        json_t *deep = json_pack("{s:s}", "type", "array"), *doc = json_array();
        for (int i = 0; i < 40; i++) {
                deep = json_pack("{s:s, s:o}", "type", "array", "items", deep);
                doc = json_pack("[o]", doc);
        }
        assert_false(kb_preflight_schema_valid(deep, doc, why, sizeof(why)));
        assert_non_null(strstr(why, "deeper than 32"));
        json_decref(deep);
        json_decref(doc);
        json_decref(schema);
}

static void test_structured_and_tools(void **state) {
        json_t *schema = json_loads("{\"type\":\"object\",\"required\":[\"a\"],\"properties\":{\"a\":{\"type\":\"string\"}}}",
                                    0, NULL);
        char *d = NULL;

        assert_int_equal(kb_preflight_judge_structured(KB_FAMILY_OPENAI, schema,
                S("{\"choices\":[{\"message\":{\"content\":\"{\\\"a\\\":\\\"x\\\"}\"}}]}"), 200, &d), 1);
        assert_string_equal(d, "HTTP 200: the answer validates against its schema");
        free(d);
        assert_int_equal(kb_preflight_judge_structured(KB_FAMILY_OPENAI, schema,
                S("{\"choices\":[{\"message\":{\"content\":\"{\\\"a\\\":1}\"}}]}"), 200, &d), 0);
        assert_string_equal(d, "HTTP 200 but the answer does not match its schema: $.a: expected string, got integer");
        free(d);
        assert_int_equal(kb_preflight_judge_structured(KB_FAMILY_OPENAI, schema,
                S("{\"choices\":[{\"message\":{\"content\":\"not json\"}}]}"), 200, &d), 0);
        assert_non_null(strstr(d, "no JSON document"));
        free(d);
        assert_int_equal(kb_preflight_judge_structured(KB_FAMILY_OPENAI, schema,
                S("{\"choices\":[{\"message\":{\"content\":null,\"refusal\":\"no\"}}]}"), 200, &d), 0);
        assert_string_equal(d, "HTTP 200: refused: no");
        free(d);
        assert_int_equal(kb_preflight_judge_structured(KB_FAMILY_ANTHROPIC, schema,
                S("{\"type\":\"message\",\"content\":[{\"type\":\"text\"},{\"type\":\"tool_use\",\"input\":{\"a\":\"x\"}}]}"),
                200, &d), 1);
        free(d);
        assert_int_equal(kb_preflight_judge_structured(KB_FAMILY_ANTHROPIC, schema, S("{\"error\":{\"message\":\"e\"}}"),
                                                       400, &d), 0);
        assert_string_equal(d, "HTTP 400: e");
        free(d);
        json_decref(schema);

        assert_int_equal(kb_preflight_judge_tool_call(KB_FAMILY_OPENAI,
                S("{\"choices\":[{\"message\":{\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\":1}\"}}]}}]}"),
                200, &d), 1);
        assert_string_equal(d, "HTTP 200: f({\"x\":1})");
        free(d);
        assert_int_equal(kb_preflight_judge_tool_call(KB_FAMILY_OPENAI,
                S("{\"choices\":[{\"message\":{\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"{x\"}}]}}]}"),
                200, &d), 0);
        assert_non_null(strstr(d, "not JSON"));
        free(d);
        assert_int_equal(kb_preflight_judge_tool_call(KB_FAMILY_OPENAI,
                S("{\"choices\":[{\"message\":{\"tool_calls\":[{\"function\":{\"name\":\"f\",\"arguments\":\"[1]\"}}]}}]}"),
                200, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_tool_call(KB_FAMILY_OPENAI, S("{\"choices\":[{\"message\":{\"content\":\"hi\"}}]}"),
                                                      200, &d), 0);
        assert_non_null(strstr(d, "no tool call"));
        free(d);
        assert_int_equal(kb_preflight_judge_tool_call(KB_FAMILY_ANTHROPIC,
                S("{\"content\":[{\"type\":\"tool_use\",\"name\":\"g\",\"input\":{}}]}"), 200, &d), 1);
        free(d);
        assert_int_equal(kb_preflight_judge_tool_call(KB_FAMILY_ANTHROPIC,
                S("{\"content\":[{\"type\":\"tool_use\",\"name\":\"g\",\"input\":\"x\"}]}"), 200, &d), 0);
        free(d);
}

static void test_vision_and_reasoning(void **state) {
        struct kb_usage u = { .reasoning_tokens = 3, .seen = true };
        char *d = NULL;

        assert_int_equal(kb_preflight_judge_vision(KB_FAMILY_OPENAI, S("{\"choices\":[{\"message\":{}}]}"), 200, &d), 1);
        assert_non_null(strstr(d, "the image was accepted"));
        free(d);
        assert_int_equal(kb_preflight_judge_vision(KB_FAMILY_ANTHROPIC,
                S("{\"type\":\"error\",\"error\":{\"message\":\"no images\"}}"), 400, &d), 0);
        assert_string_equal(d, "the image was refused: HTTP 400: no images");
        free(d);
        assert_int_equal(kb_preflight_judge_reasoning(KB_FAMILY_OPENAI, &u, S("{}"), 200, &d), 1);
        assert_string_equal(d, "HTTP 200, 3 reasoning tokens reported");
        free(d);
        u.reasoning_tokens = 0;
        assert_int_equal(kb_preflight_judge_reasoning(KB_FAMILY_OPENAI, &u, S("{}"), 200, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_reasoning(KB_FAMILY_OPENAI, NULL, S("{}"), 200, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_reasoning(KB_FAMILY_ANTHROPIC, &u,
                S("{\"content\":[{\"type\":\"thinking\",\"thinking\":\"...\"}]}"), 200, &d), 1);
        assert_non_null(strstr(d, "thinking block"));
        free(d);
        assert_int_equal(kb_preflight_judge_reasoning(KB_FAMILY_OPENAI, &u, S("{\"error\":{}}"), 400, &d), 0);
        free(d);
}

static void test_statuspage(void **state) {
        static const struct {
                const char *body;
                long status;
                bool ok_minor;
                int ok;
                const char *indicator, *detail;
        } cases[] = {
                { "{\"status\":{\"indicator\":\"none\",\"description\":\"All Systems Operational\"}}", 200, false, 1,
                  "none", "indicator none (All Systems Operational)" },
                { "{\"status\":{\"indicator\":\"minor\",\"description\":\"Minor\"}}", 200, false, 0, "minor",
                  "indicator minor (Minor): only none passes unless status_ok = minor" },
                { "{\"status\":{\"indicator\":\"minor\",\"description\":\"Minor\"}}", 200, true, 1, "minor",
                  "indicator minor (Minor): passes with status_ok = minor" },
                { "{\"status\":{\"indicator\":\"major\"}}", 200, true, 0, "major",
                  "indicator major (no description): the provider reports an incident" },
                { "{\"status\":{\"indicator\":\"critical\",\"description\":\"x\\ny\"}}", 200, true, 0, "critical",
                  "indicator critical (x?y): the provider reports an incident" },
                { "{\"status\":{\"indicator\":\"maintenance\"}}", 200, false, 0, NULL,
                  "HTTP 200 but the indicator 'maintenance' is not none, minor, major or critical" },
                { "{\"hello\":\"world\"}", 200, false, 0, NULL, "HTTP 200 but not Statuspage JSON (no status.indicator)" },
                { "{\"status\":\"ok\"}", 200, false, 0, NULL, "HTTP 200 but not Statuspage JSON (no status.indicator)" },
                { "<html>", 200, false, 0, NULL, "HTTP 200 but not JSON" },
                { "", 200, false, 0, NULL, "HTTP 200 but not JSON" },
                { "{\"status\":{\"indicator\":\"none\"}}", 404, false, 0, NULL, "HTTP 404: no status page there" },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *ind = (char *) 1, *desc = (char *) 1, *d = NULL;
                int ok = kb_preflight_judge_statuspage(cases[i].body, strlen(cases[i].body), cases[i].status,
                                                       cases[i].ok_minor, &ind, &desc, &d);
                assert_int_equal(ok, cases[i].ok);
                assert_string_equal(d, cases[i].detail);
                if (cases[i].indicator)
                        assert_string_equal(ind, cases[i].indicator);
                else
                        assert_null(ind);
                free(ind);
                free(desc);
                free(d);
        }
}

static void test_listed(void **state) {
        static const char openai[] = "{\"object\":\"list\",\"data\":[{\"id\":\"m-1\"},{\"id\":\"gpt-x\"}]}";
        static const char anth[] = "{\"data\":[{\"type\":\"model\",\"id\":\"claude\"}],\"has_more\":false}";
        char *d = NULL;

        assert_int_equal(kb_preflight_judge_listed(S(openai), 200, "gpt-x", &d), 1);
        assert_non_null(strstr(d, "2 models"));
        free(d);
        assert_int_equal(kb_preflight_judge_listed(S(anth), 200, "claude", &d), 1);
        free(d);
        assert_int_equal(kb_preflight_judge_listed(S(openai), 200, "gpt-y", &d), 0);
        assert_non_null(strstr(d, "not among the 2 models listed (m-1, gpt-x)"));
        free(d);
        assert_int_equal(kb_preflight_judge_listed(S("{\"data\":{}}"), 200, "x", &d), 0);
        assert_non_null(strstr(d, "not a model list"));
        free(d);
        assert_int_equal(kb_preflight_judge_listed(S("not json"), 200, "x", &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_listed(NULL, 0, 200, "x", &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_listed(S("{\"error\":{\"message\":\"bad\\nkey\"}}"), 401, "x", &d), 0);
        /* provider text is made safe for a terminal */
        assert_string_equal(d, "no model list: HTTP 401: bad?key");
        free(d);
        /* ids that are not strings never match */
        assert_int_equal(kb_preflight_judge_listed(S("{\"data\":[{\"id\":1},\"x\"]}"), 200, "x", &d), 0);
        free(d);
}


static void test_bogus(void **state) {
        char *d = NULL;

        assert_int_equal(kb_preflight_judge_bogus(KB_FAMILY_OPENAI,
                S("{\"error\":{\"message\":\"x\",\"code\":\"model_not_found\"}}"), 404, &d), 1);
        assert_string_equal(d, "HTTP 404 model_not_found");
        free(d);
        assert_int_equal(kb_preflight_judge_bogus(KB_FAMILY_OPENAI, S("{\"error\":{\"message\":\"x\"}}"), 400, &d), 1);
        free(d);
        assert_int_equal(kb_preflight_judge_bogus(KB_FAMILY_OPENAI, S("{\"choices\":[]}"), 200, &d), 0);
        assert_non_null(strstr(d, "accepted"));
        free(d);
        assert_int_equal(kb_preflight_judge_bogus(KB_FAMILY_OPENAI, S("{\"error\":{\"code\":\"x\"}}"), 401, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_bogus(KB_FAMILY_OPENAI, S("not found"), 404, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_bogus(KB_FAMILY_ANTHROPIC,
                S("{\"type\":\"error\",\"error\":{\"type\":\"not_found_error\",\"message\":\"model: x\"}}"), 404, &d), 1);
        free(d);
        assert_int_equal(kb_preflight_judge_bogus(KB_FAMILY_ANTHROPIC,
                S("{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\"}}"), 400, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_bogus(KB_FAMILY_ANTHROPIC,
                S("{\"error\":{\"type\":\"not_found_error\"}}"), 404, &d), 0);
        free(d);
}


static void test_text_clean(void **state) {
        static const struct {
                const char *in, *out;
        } cases[] = {
                { "plain", "plain" },
                { "a\nb\tc\x7f", "a?b?c?" },
                { "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80", "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80" },
                { "cut \xe2\x9c", "cut ??" },             /* a character cut at a limit */
                { "\xc0\xaf", "??" },                    /* overlong "/" */
                { "\xed\xa0\x80", "???" },              /* a surrogate */
                { "\xf4\x90\x80\x80", "????" },        /* past U+10FFFF */
                { "\xff\xfe", "??" },
                { "\x80x", "?x" },
                { "", "" },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *s = strdup(cases[i].in);
                kb_preflight_text_clean(s);
                assert_string_equal(s, cases[i].out);
                json_t *j = json_string(s);
                assert_non_null(j); /* always valid for jansson now */
                json_decref(j);
                free(s);
        }
        kb_preflight_text_clean(NULL);
}


static void test_latency(void **state) {
        uint64_t p50 = 1, max = 1;
        const uint64_t one[] = { 7 };
        const uint64_t four[] = { 40, 10, 30, 20 };
        const uint64_t three[] = { 5, 100, 1 };

        kb_preflight_latency_stats(NULL, 0, &p50, &max);
        assert_int_equal(p50, 0);
        assert_int_equal(max, 0);
        kb_preflight_latency_stats(one, 1, &p50, &max);
        assert_int_equal(p50, 7);
        assert_int_equal(max, 7);
        kb_preflight_latency_stats(four, 4, &p50, &max);
        assert_int_equal(p50, 20);
        assert_int_equal(max, 40);
        kb_preflight_latency_stats(three, 3, &p50, &max);
        assert_int_equal(p50, 5);
        assert_int_equal(max, 100);
}


static void test_evidence(void **state) {
        char tmpl[48];
        kbt_mkdtemp(tmpl, sizeof(tmpl), "preflight");
        char state_dir[64];
        snprintf(state_dir, sizeof(state_dir), "%s/state", tmpl);
        json_t *doc = json_pack("{s:s, s:b}", "route", "oai", "ok", true);
        char *p1 = NULL, *p2 = NULL, *p3 = NULL;
        struct stat st;
        /* 2025-01-02T03:04:05Z */
        uint64_t t = UINT64_C(1735787045) * USEC_PER_SEC;

        assert_int_equal(kb_preflight_save_evidence(state_dir, "oai", t, doc, &p1), 0);
        char want[128];
        snprintf(want, sizeof(want), "%s/evidence/oai-20250102T030405Z.json", state_dir);
        assert_string_equal(p1, want);
        assert_int_equal(stat(p1, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0600);
        char dir[96];
        snprintf(dir, sizeof(dir), "%s/evidence", state_dir);
        assert_int_equal(stat(dir, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0700);

        json_t *back = json_load_file(p1, 0, NULL);
        assert_non_null(back);
        assert_true(json_equal(back, doc));
        json_decref(back);

        /* same second: a second file, never an overwrite */
        assert_int_equal(kb_preflight_save_evidence(state_dir, "oai", t, doc, &p2), 0);
        assert_string_not_equal(p1, p2);
        assert_non_null(strstr(p2, "oai-20250102T030405Z-2.json"));
        assert_int_equal(kb_preflight_save_evidence(state_dir, "oai", t, doc, &p3), 0);
        assert_non_null(strstr(p3, "-3.json"));

        /* names that would leave the directory, and missing arguments */
        char *p = NULL;
        assert_int_equal(kb_preflight_save_evidence(state_dir, "../x", t, doc, &p), -EINVAL);
        assert_int_equal(kb_preflight_save_evidence(state_dir, ".hidden", t, doc, &p), -EINVAL);
        assert_int_equal(kb_preflight_save_evidence(state_dir, "", t, doc, &p), -EINVAL);
        assert_int_equal(kb_preflight_save_evidence(NULL, "oai", t, doc, &p), -EINVAL);
        assert_int_equal(kb_preflight_save_evidence(state_dir, "oai", t, NULL, &p), -EINVAL);
        assert_null(p);
        /* a state_dir we cannot create */
        assert_int_equal(kb_preflight_save_evidence("/proc/nonexistent/x", "oai", t, doc, &p), -ENOENT);
        assert_null(p);

        /* no temporary file left behind */
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "test $(ls -A %s | wc -l) -eq 3", dir);
        assert_int_equal(system(cmd), 0);
        assert_int_equal(kbt_rm_rf(tmpl), 0);
        free(p1);
        free(p2);
        free(p3);
        json_decref(doc);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_names),
                cmocka_unit_test(test_parse_names),
                cmocka_unit_test(test_parse_body_good),
                cmocka_unit_test(test_parse_body_bad),
                cmocka_unit_test(test_default_model),
                cmocka_unit_test(test_owner),
                cmocka_unit_test(test_price_and_split),
                cmocka_unit_test(test_listed),
                cmocka_unit_test(test_answer),
                cmocka_unit_test(test_stream),
                cmocka_unit_test(test_bogus),
                cmocka_unit_test(test_wrong_key_and_timeout),
                cmocka_unit_test(test_usage),
                cmocka_unit_test(test_schema),
                cmocka_unit_test(test_structured_and_tools),
                cmocka_unit_test(test_vision_and_reasoning),
                cmocka_unit_test(test_statuspage),
                cmocka_unit_test(test_text_clean),
                cmocka_unit_test(test_latency),
                cmocka_unit_test(test_evidence),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
