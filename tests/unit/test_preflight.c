/* SPDX-License-Identifier: MIT */
/* preflight-judge.c: the admin call's body, the default model, what each
 * answer says about a route, latency figures, and the evidence file. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <sys/stat.h>

#include "preflight.h"

#define S(lit) lit, sizeof(lit) - 1

static void test_names(void **state) {
        assert_string_equal(kb_preflight_check_to_string(KB_CHECK_CREDENTIALS), "credentials");
        assert_string_equal(kb_preflight_check_to_string(KB_CHECK_BOGUS_MODEL), "bogus_model");
        assert_string_equal(kb_preflight_check_to_string(KB_CHECK_LATENCY), "latency");
        assert_null(kb_preflight_check_to_string(_KB_CHECK_MAX));
        assert_null(kb_preflight_check_title((kb_preflight_check) -1));
        for (kb_preflight_check c = 0; c < _KB_CHECK_MAX; c++) {
                assert_non_null(kb_preflight_check_to_string(c));
                assert_non_null(kb_preflight_check_title(c));
        }
}

static void test_parse_body_good(void **state) {
        char *m = (char *) 1;
        const char *why = NULL;

        assert_int_equal(kb_preflight_parse_body("", 0, &m, &why), 0);
        assert_null(m);
        m = (char *) 1;
        assert_int_equal(kb_preflight_parse_body(S(" \r\n"), &m, &why), 0);
        assert_null(m);
        m = (char *) 1;
        assert_int_equal(kb_preflight_parse_body(S("{}"), &m, &why), 0);
        assert_null(m);
        m = (char *) 1;
        assert_int_equal(kb_preflight_parse_body(S("{\"model\":null}"), &m, &why), 0);
        assert_null(m);
        assert_int_equal(kb_preflight_parse_body(S("{\"model\":\"gpt-4o-mini\"}"), &m, &why), 0);
        assert_string_equal(m, "gpt-4o-mini");
        free(m);
        assert_int_equal(kb_preflight_parse_body(S("{\"model\":\"openai/gpt 4o ü\"}\n"), &m, &why), 0);
        assert_string_equal(m, "openai/gpt 4o ü");
        free(m);
}

static void test_parse_body_bad(void **state) {
        static const char *const bad[] = {
                "[]", "\"m\"", "{\"model\":1}", "{\"model\":\"\"}", "{\"model\":\"a\\nb\"}",
                "{\"model\":\"a\\u0000b\"}", "{\"model\":\"x\",\"extra\":1}", "{\"other\":\"x\"}",
                "{\"model\":\"a\",\"model\":\"b\"}", "{", "null", "{\"model\":[\"x\"]}", "{\"model\":true}",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                char *m = (char *) 1;
                const char *why = NULL;
                if (kb_preflight_parse_body(bad[i], strlen(bad[i]), &m, &why) != -EINVAL)
                        fail_msg("accepted: %s", bad[i]);
                assert_ptr_equal(m, (char *) 1); /* untouched */
                assert_non_null(why);
        }

        /* a model of 257 bytes, and a body past the limit */
        char big[400];
        int n = snprintf(big, sizeof(big), "{\"model\":\"");
        memset(big + n, 'a', KB_PREFLIGHT_MODEL_MAX + 1);
        n += KB_PREFLIGHT_MODEL_MAX + 1;
        n += snprintf(big + n, sizeof(big) - (size_t) n, "\"}");
        char *m = NULL;
        const char *why = NULL;
        assert_int_equal(kb_preflight_parse_body(big, (size_t) n, &m, &why), -EINVAL);
        /* exactly the limit is fine */
        memmove(big + n - 3, big + n - 2, 3);
        assert_int_equal(kb_preflight_parse_body(big, (size_t) n - 1, &m, &why), 0);
        assert_int_equal(strlen(m), KB_PREFLIGHT_MODEL_MAX);
        free(m);
        char *huge = malloc(KB_PREFLIGHT_MAX_REQUEST_BODY + 1);
        assert_non_null(huge);
        memset(huge, ' ', KB_PREFLIGHT_MAX_REQUEST_BODY + 1);
        assert_int_equal(kb_preflight_parse_body(huge, KB_PREFLIGHT_MAX_REQUEST_BODY + 1, &m, &why), -EINVAL);
        free(huge);
}

static const char conf[] =
        "[team:t]\nusers = 0\nmodels = *\n"
        "[route:a]\nfamily = openai\nbase_url = http://127.0.0.1:1/v1\n"
        "[route:b]\nfamily = openai\nbase_url = http://127.0.0.1:1/v1\n"
        "[route:c]\nfamily = openai\nbase_url = http://127.0.0.1:1/v1\n"
        "[model:m1]\ntarget = a up-a1\nfallback = b up-b-fallback\n"
        "[model:m2]\ntarget = a up-a2\ntarget = b up-b2\n";

static void test_default_model(void **state) {
        struct kb_config *c = NULL;
        char *err = NULL;

        assert_int_equal(kb_config_load_string("t.conf", conf, false, &c, &err), 0);
        const char *ma = kb_preflight_default_model(c, kb_config_find_route(c, "a"));
        const char *mb = kb_preflight_default_model(c, kb_config_find_route(c, "b"));
        const char *mc = kb_preflight_default_model(c, kb_config_find_route(c, "c"));
        /* a target wins over an earlier model's fallback */
        assert_string_equal(ma, "up-a1");
        assert_string_equal(mb, "up-b2");
        assert_null(mc);
        kb_config_unref(c);
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

static void test_completion(void **state) {
        char *d = NULL;

        assert_int_equal(kb_preflight_judge_completion(KB_FAMILY_OPENAI,
                S("{\"model\":\"m\",\"choices\":[{\"message\":{\"content\":\"hi\"}}]}"), 200, &d), 1);
        assert_string_equal(d, "HTTP 200, well-formed, model m");
        free(d);
        assert_int_equal(kb_preflight_judge_completion(KB_FAMILY_OPENAI, S("{\"choices\":[]}"), 200, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_completion(KB_FAMILY_OPENAI, S("{\"choices\":[{}]}"), 200, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_completion(KB_FAMILY_OPENAI, S("[1]"), 200, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_completion(KB_FAMILY_OPENAI,
                S("{\"error\":{\"message\":\"nope\"}}"), 500, &d), 0);
        assert_string_equal(d, "HTTP 500: nope");
        free(d);
        assert_int_equal(kb_preflight_judge_completion(KB_FAMILY_ANTHROPIC,
                S("{\"type\":\"message\",\"content\":[]}"), 200, &d), 1);
        free(d);
        /* an OpenAI body from an Anthropic route is not well-formed */
        assert_int_equal(kb_preflight_judge_completion(KB_FAMILY_ANTHROPIC,
                S("{\"choices\":[{\"message\":{}}]}"), 200, &d), 0);
        free(d);
        assert_int_equal(kb_preflight_judge_completion(KB_FAMILY_ANTHROPIC,
                S("{\"type\":\"message\",\"content\":{}}"), 200, &d), 0);
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

static void test_usage(void **state) {
        struct kb_usage a = { .input_tokens = 11, .output_tokens = 5, .seen = true };
        struct kb_usage b = { .input_tokens = 11, .output_tokens = 5, .seen = true };
        char *d = NULL;

        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a, S("{\"usage\":{\"total_tokens\":16}}"), &b, &d), 1);
        assert_string_equal(d, "non-streaming 11 in / 5 out, total 16; streaming 11 in / 5 out");
        free(d);
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a, S("{\"usage\":{\"total_tokens\":17}}"), &b, &d), 0);
        assert_non_null(strstr(d, "!= input + output"));
        free(d);
        /* no total: nothing to compare, Anthropic never has one */
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_ANTHROPIC, &a, S("{}"), &b, &d), 1);
        free(d);
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, NULL, NULL, 0, &b, &d), 0);
        assert_string_equal(d, "non-streaming: the call failed; streaming: ok");
        free(d);
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a, NULL, 0, NULL, &d), 0);
        free(d);
        b.seen = false;
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a, NULL, 0, &b, &d), 0);
        assert_string_equal(d, "non-streaming: ok; streaming: no usage reported");
        free(d);
        b.seen = true;
        b.input_tokens = 0;
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a, NULL, 0, &b, &d), 0);
        free(d);
        b.input_tokens = 11;
        b.output_tokens = 0;
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a, NULL, 0, &b, &d), 0);
        free(d);
        b.output_tokens = KB_PREFLIGHT_OUTPUT_BOUND;
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a, NULL, 0, &b, &d), 1);
        free(d);
        b.output_tokens = KB_PREFLIGHT_OUTPUT_BOUND + 1;
        assert_int_equal(kb_preflight_judge_usage(KB_FAMILY_OPENAI, &a, NULL, 0, &b, &d), 0);
        assert_non_null(strstr(d, "output tokens over 64 for max_tokens 5"));
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
        char tmpl[] = "/tmp/kb-test-preflight-XXXXXX";
        assert_non_null(mkdtemp(tmpl));
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
        snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpl);
        assert_int_equal(system(cmd), 0);
        free(p1);
        free(p2);
        free(p3);
        json_decref(doc);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_names),
                cmocka_unit_test(test_parse_body_good),
                cmocka_unit_test(test_parse_body_bad),
                cmocka_unit_test(test_default_model),
                cmocka_unit_test(test_listed),
                cmocka_unit_test(test_completion),
                cmocka_unit_test(test_bogus),
                cmocka_unit_test(test_usage),
                cmocka_unit_test(test_text_clean),
                cmocka_unit_test(test_latency),
                cmocka_unit_test(test_evidence),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
