/* SPDX-License-Identifier: MIT */
/* Body rewriting, header rules and target choice: the parts of the request
 * path that decide what reaches the provider. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>

#include "body.h"
#include "headers.h"
#include "router.h"

static void rewrite(const char *in, const char *model, bool add_usage, const char *expect) {
        struct kb_body_info info;
        const char *why = NULL;
        struct kb_buf out = {};

        assert_int_equal(kb_body_inspect(in, strlen(in), &info, &why), 0);
        kb_body_info_done(&info);
        assert_int_equal(kb_body_rewrite(in, strlen(in), model, add_usage, &out), 0);
        assert_string_equal(out.data, expect);
        /* Whatever we produce must itself be a valid body. */
        assert_int_equal(kb_body_inspect(out.data, out.len, &info, &why), 0);
        kb_body_info_done(&info);
        kb_buf_free(&out);
}

static void test_rewrite_model_only(void **state) {
        rewrite("{\"model\":\"chat\",\"temperature\":0.7,\"messages\":[]}", "gpt-4o-mini", false,
                "{\"model\":\"gpt-4o-mini\",\"temperature\":0.7,\"messages\":[]}");
        /* Number formatting, whitespace and key order survive byte for byte. */
        rewrite("{ \"messages\" : [ {\"content\":\"model\"} ] ,\n \"model\" : \"x\" , \"top_p\":1e-3 }", "a\"b", false,
                "{ \"messages\" : [ {\"content\":\"model\"} ] ,\n \"model\" : \"a\\\"b\" , \"top_p\":1e-3 }");
        /* A nested "model" is not the request's model. */
        rewrite("{\"tools\":[{\"model\":\"nested\"}],\"model\":\"m\"}", "up", false,
                "{\"tools\":[{\"model\":\"nested\"}],\"model\":\"up\"}");
        /* Escaped spelling of the key is the same key. */
        rewrite("{\"mod\\u0065l\":\"m\"}", "up", false, "{\"mod\\u0065l\":\"up\"}");
        /* Keys that only begin or end like it are other keys. */
        rewrite("{\"modelx\":1,\"mode\":2,\"xmodel\":3,\"model\":\"m\"}", "up", false,
                "{\"modelx\":1,\"mode\":2,\"xmodel\":3,\"model\":\"up\"}");
        /* A name that is not plain ASCII is quoted by jansson: UTF-8 as is,
         * control characters escaped. */
        rewrite("{\"model\":\"m\"}", "mod\xc3\xa8le\t", false, "{\"model\":\"mod\xc3\xa8le\\t\"}");
}

static void test_rewrite_include_usage(void **state) {
        rewrite("{\"model\":\"m\",\"stream\":true}", "up", true,
                "{\"stream_options\":{\"include_usage\":true},\"model\":\"up\",\"stream\":true}");
        rewrite("{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"foo\":1}}", "up", true,
                "{\"model\":\"up\",\"stream\":true,\"stream_options\":{\"foo\":1,\"include_usage\":true}}");
        rewrite("{\"stream_options\":{\"include_usage\":false},\"model\":\"m\"}", "up", true,
                "{\"stream_options\":{\"include_usage\":true},\"model\":\"up\"}");
        rewrite("{\"stream_options\":null,\"model\":\"m\"}", "up", true,
                "{\"stream_options\":{\"include_usage\":true},\"model\":\"up\"}");
}

static void inspect_fails(const char *in, const char *why_part) {
        struct kb_body_info info;
        const char *why = NULL;
        assert_int_equal(kb_body_inspect(in, strlen(in), &info, &why), -EINVAL);
        assert_non_null(why);
        assert_non_null(strstr(why, why_part));
}

static void test_inspect(void **state) {
        struct kb_body_info info;
        const char *why = NULL;
        const char *ok = "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}";

        assert_int_equal(kb_body_inspect(ok, strlen(ok), &info, &why), 0);
        assert_string_equal(info.model, "m");
        assert_true(info.stream);
        assert_true(info.include_usage);
        kb_body_info_done(&info);

        assert_int_equal(kb_body_inspect("{\"model\":5}", 11, &info, &why), 0);
        assert_null(info.model);
        assert_true(info.model_not_string);

        inspect_fails("", "empty");
        inspect_fails("{\"model\":", "not valid JSON");
        inspect_fails("[1,2]", "JSON object");
        inspect_fails("{\"model\":\"a\",\"model\":\"b\"}", "duplicate");
        inspect_fails("{\"model\":\"a\"} trailing", "not valid JSON");

        /* 100,000-deep nesting is refused before the parser recurses. */
        size_t n = 100000;
        char *deep = malloc(2 * n + 16);
        strcpy(deep, "{\"a\":");
        size_t p = strlen(deep);
        for (size_t i = 0; i < n; i++)
                deep[p++] = '[';
        for (size_t i = 0; i < n; i++)
                deep[p++] = ']';
        deep[p++] = '}';
        deep[p] = 0;
        inspect_fails(deep, "nests deeper");
        free(deep);
}

static void test_headers_forward(void **state) {
        char *hdrs[] = { "OpenAI-Organization: org-1" };
        struct kb_route route = { .name = "r", .auth = KB_AUTH_HEADER, .auth_header = "X-Gateway-Key",
                                  .headers = hdrs, .n_headers = 1 };

        const char *dropped[] = { "Authorization", "x-api-key", "API-KEY", "Proxy-Authorization", "Cookie",
                                  "Connection", "Keep-Alive", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
                                  "Proxy-Connection", "Host", "Content-Length", "Expect", "Accept-Encoding",
                                  "X-Keybroker-Team", "x-keybroker-anything", "openai-organization",
                                  "x-gateway-key" };
        for (size_t i = 0; i < ELEMENTSOF(dropped); i++)
                assert_false(kb_header_forwardable(dropped[i], &route));

        const char *passed[] = { "anthropic-version", "anthropic-beta", "OpenAI-Beta", "Idempotency-Key",
                                 "Content-Type", "User-Agent", "x-stainless-os", "X-Gateway-Keyx" };
        for (size_t i = 0; i < ELEMENTSOF(passed); i++)
                assert_true(kb_header_forwardable(passed[i], &route));
}

static void test_headers_relay(void **state) {
        assert_true(kb_header_relayable("Content-Type"));
        assert_true(kb_header_relayable("x-request-id"));
        assert_true(kb_header_relayable("request-id"));
        assert_true(kb_header_relayable("anthropic-ratelimit-requests-limit"));
        assert_true(kb_header_relayable("openai-processing-ms"));
        assert_true(kb_header_relayable("retry-after"));
        assert_false(kb_header_relayable("content-length"));
        assert_false(kb_header_relayable("transfer-encoding"));
        assert_false(kb_header_relayable("connection"));
        assert_false(kb_header_relayable("set-cookie"));
        assert_false(kb_header_relayable("x-keybroker-team"));

        char n[64];
        assert_int_equal(kb_header_relay_rename("X-RateLimit-Remaining-Tokens", n, sizeof(n)), 1);
        assert_string_equal(n, "x-upstream-RateLimit-Remaining-Tokens");
        assert_int_equal(kb_header_relay_rename("content-type", n, sizeof(n)), 0);
        /* too long for the room left: refused, never cut */
        assert_int_equal(kb_header_relay_rename("x-ratelimit-remaining-tokens", n, 20), -ENOBUFS);
        assert_int_equal(kb_header_relay_rename("x-ratelimit-a", n, 22), -ENOBUFS);
        assert_int_equal(kb_header_relay_rename("x-ratelimit-a", n, 23), 1);
        assert_string_equal(n, "x-upstream-ratelimit-a");
        assert_false(kb_header_safe("a\r\nb"));
        assert_true(kb_header_safe("fine"));
}

static void test_router_weights(void **state) {
        struct kb_route oa = { .name = "oa", .family = KB_FAMILY_OPENAI };
        struct kb_route gw = { .name = "gw", .family = KB_FAMILY_OPENAI };
        struct kb_route an = { .name = "an", .family = KB_FAMILY_ANTHROPIC };
        struct kb_target t[] = {
                { .route = &oa, .upstream_model = "a", .weight = 90 },
                { .route = &gw, .upstream_model = "b", .weight = 10 },
                { .route = &an, .upstream_model = "c", .weight = 50 },
        };
        struct kb_model m = { .name = "m", .targets = t, .n_targets = 3 };
        const struct kb_target *got;
        unsigned counts[3] = {};

        /* rnd sweeps [0, 2^32) evenly: counts must follow the weights. */
        for (uint64_t i = 0; i < 1000; i++) {
                assert_int_equal(kb_router_pick(&m, KB_FAMILY_OPENAI, (uint32_t) (((i << 32) + 999) / 1000), &got), 0);
                counts[got - t]++;
        }
        assert_int_equal(counts[0], 900);
        assert_int_equal(counts[1], 100);
        assert_int_equal(counts[2], 0);
        assert_int_equal(kb_router_pick(&m, KB_FAMILY_ANTHROPIC, UINT32_MAX, &got), 0);
        assert_ptr_equal(got, &t[2]);

        t[2].weight = 0;
        assert_int_equal(kb_router_pick(&m, KB_FAMILY_ANTHROPIC, 7, &got), -ENOENT);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_rewrite_model_only),
                cmocka_unit_test(test_rewrite_include_usage),
                cmocka_unit_test(test_inspect),
                cmocka_unit_test(test_headers_forward),
                cmocka_unit_test(test_headers_relay),
                cmocka_unit_test(test_router_weights),
        };
        return cmocka_run_group_tests_name("body, headers, router", tests, NULL, NULL);
}
