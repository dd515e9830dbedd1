/* SPDX-License-Identifier: MIT */
/* shadow-shape.c (an answer's shape, compared) and shadow-budget.c (the
 * day's spend per model, kept in a file). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdlib.h>
#include <sys/stat.h>

#include "helper.h"
#include "shadow.h"
#include "util.h"

#define DAY (86400 * USEC_PER_SEC)

static void shape_of(struct kb_shape *s, bool sse, const char *text) {
        kb_shape_read(s, sse, text, strlen(text), false);
}

static void test_json(void **state) {
        struct kb_shape a, b;
        char diff[256];

        shape_of(&a, false, "{\"id\":\"x\",\"choices\":[{\"message\":{\"content\":\"hi\"}}],\"usage\":{}}");
        assert_int_equal(a.kind, KB_SHAPE_JSON);
        assert_int_equal(a.n_names, 3);
        assert_string_equal(a.names[0], "choices");
        assert_string_equal(a.names[1], "id");
        assert_string_equal(a.names[2], "usage");
        assert_false(a.tools);
        /* the content does not matter, the members do */
        shape_of(&b, false, "{\"usage\":{\"x\":1},\"id\":\"other\",\"choices\":[]}");
        assert_true(kb_shape_equal(&a, &b));
        kb_shape_diff("2xx", &a, "2xx", &b, diff, sizeof(diff));
        assert_string_equal(diff, "");

        shape_of(&b, false, "{\"error\":{\"message\":\"boom\"}}");
        assert_false(kb_shape_equal(&a, &b));
        kb_shape_diff("2xx", &a, "5xx", &b, diff, sizeof(diff));
        assert_string_equal(diff, "status 2xx vs 5xx; members only in primary: choices,id,usage; "
                                  "members only in shadow: error");

        /* tool calls: chat, responses, messages */
        shape_of(&b, false, "{\"id\":\"x\",\"choices\":[{\"message\":{\"tool_calls\":[{\"id\":\"c\"}]}}],\"usage\":{}}");
        assert_true(b.tools);
        kb_shape_diff("2xx", &a, "2xx", &b, diff, sizeof(diff));
        assert_string_equal(diff, "tool calls: primary no, shadow yes");
        shape_of(&b, false, "{\"output\":[{\"type\":\"message\"},{\"type\":\"function_call\"}]}");
        assert_true(b.tools);
        shape_of(&b, false, "{\"content\":[{\"type\":\"tool_use\",\"input\":{}}]}");
        assert_true(b.tools);
        shape_of(&b, false, "{\"content\":[{\"type\":\"text\",\"text\":\"tool_use\"}]}");
        assert_false(b.tools);

        /* not JSON, nothing, too much */
        shape_of(&b, false, "<html>bad gateway</html>");
        assert_int_equal(b.kind, KB_SHAPE_OTHER);
        kb_shape_read(&b, false, NULL, 0, false);
        assert_int_equal(b.kind, KB_SHAPE_NONE);
        kb_shape_read(&b, false, "{}", 2, true);
        assert_int_equal(b.kind, KB_SHAPE_UNKNOWN);
        kb_shape_diff("2xx", &a, "transport", &b, diff, sizeof(diff));
        assert_string_equal(diff, "status 2xx vs transport; json vs unknown (over 1 MiB)");
        /* a short buffer gets a cut, terminated text */
        kb_shape_diff("2xx", &a, "transport", &b, diff, 10);
        assert_string_equal(diff, "status 2x");
}

static void test_sse(void **state) {
        struct kb_shape a, b;
        char diff[256];

        shape_of(&a, true,
                 "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
                 "data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{}}\n\n"
                 "data: [DONE]\n\n");
        assert_int_equal(a.kind, KB_SHAPE_SSE);
        assert_int_equal(a.n_names, 2);
        assert_string_equal(a.names[0], "[DONE]");
        assert_string_equal(a.names[1], "chat.completion.chunk");
        assert_false(a.tools);
        /* CRLF framing, a chunk split over lines: the same shape */
        shape_of(&b, true, "data: {\"object\":\"chat.completion.chunk\",\r\ndata: \"choices\":[]}\r\n\r\ndata: [DONE]\r\n\r\n");
        assert_true(kb_shape_equal(&a, &b));
        /* a stream cut before [DONE] */
        shape_of(&b, true, "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"tool_calls\":[{}]}}]}\n\n");
        assert_true(b.tools);
        kb_shape_diff("2xx", &a, "2xx", &b, diff, sizeof(diff));
        assert_string_equal(diff, "events only in primary: [DONE]; tool calls: primary no, shadow yes");

        /* named events */
        shape_of(&a, true,
                 "event: message_start\ndata: {\"type\":\"message_start\"}\n\n"
                 "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"content_block\":{\"type\":\"tool_use\"}}\n\n"
                 "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        assert_int_equal(a.n_names, 3);
        assert_string_equal(a.names[0], "content_block_start");
        assert_true(a.tools);
        shape_of(&b, true, "event: response.function_call_arguments.delta\ndata: {}\n\n");
        assert_true(b.tools);
        /* names are made printable and the set is bounded */
        struct kb_buf big = {};
        for (int i = 0; i < 100; i++)
                assert_int_equal(kb_buf_appendf(&big, "event: e%03d\x01\ndata: {}\n\n", i), 0);
        kb_shape_read(&b, true, big.data, big.len, false);
        assert_int_equal(b.n_names, KB_SHAPE_MAX_NAMES);
        assert_string_equal(b.names[0], "e000?");
        kb_buf_free(&big);
}

static void test_status_class(void **state) {
        assert_string_equal(kb_shape_status_class(0), "transport");
        assert_string_equal(kb_shape_status_class(200), "2xx");
        assert_string_equal(kb_shape_status_class(204), "2xx");
        assert_string_equal(kb_shape_status_class(429), "4xx");
        assert_string_equal(kb_shape_status_class(529), "5xx");
        assert_string_equal(kb_shape_status_class(302), "other");
}

static void test_budget(void **state) {
        struct kb_shadow_budget *b = NULL, *c = NULL;
        uint64_t now = 20000 * DAY + 3600 * USEC_PER_SEC;
        char dir[64], path[96];

        assert_int_equal(kb_shadow_budget_new(&b), 0);
        assert_int_equal(kb_shadow_budget_spent(b, "m", now), 0);
        assert_false(kb_shadow_budget_dirty(b));
        assert_int_equal(kb_shadow_budget_add(b, "m", 25, 40, now), 0);
        assert_int_equal(kb_shadow_budget_add(b, "m", 25, 40, now), 1);  /* reached: once */
        assert_int_equal(kb_shadow_budget_add(b, "m", 25, 40, now), 0);
        assert_int_equal(kb_shadow_budget_spent(b, "m", now), 75);
        assert_int_equal(kb_shadow_budget_add(b, "n", 0, 40, now), 0);
        assert_true(kb_shadow_budget_dirty(b));
        /* a raised cap lets it run, and the next crossing counts again */
        assert_int_equal(kb_shadow_budget_add(b, "m", 0, 100, now), 0);
        assert_int_equal(kb_shadow_budget_add(b, "m", 30, 100, now), 1);
        /* the next UTC day starts from 0 */
        assert_int_equal(kb_shadow_budget_spent(b, "m", now + DAY), 0);

        kbt_mkdtemp(dir, sizeof(dir), "shadow");
        snprintf(path, sizeof(path), "%s/shadow.json", dir);
        assert_int_equal(kb_shadow_budget_save(b, path), 0);
        assert_false(kb_shadow_budget_dirty(b));
        assert_int_equal(kb_shadow_budget_new(&c), 0);
        assert_int_equal(kb_shadow_budget_load(c, path, now), 0);
        assert_int_equal(kb_shadow_budget_spent(c, "m", now), 105);
        /* reached and journaled before the restart: not again */
        assert_int_equal(kb_shadow_budget_add(c, "m", 1, 100, now), 0);
        c = kb_shadow_budget_free(c);
        /* a file of yesterday is no spend today */
        assert_int_equal(kb_shadow_budget_new(&c), 0);
        assert_int_equal(kb_shadow_budget_load(c, path, now + DAY), 0);
        assert_int_equal(kb_shadow_budget_spent(c, "m", now + DAY), 0);
        c = kb_shadow_budget_free(c);

        /* not a spend file: refused whole */
        static const char *const bad[] = {
                "[]", "{\"version\":2,\"models\":{}}", "{\"version\":1}",
                "{\"version\":1,\"models\":{\"m\":{\"day\":\"2024-13-01\",\"spent_microusd\":1,\"budget_reached\":false}}}",
                "{\"version\":1,\"models\":{\"m\":{\"day\":\"2024-01-01\",\"spent_microusd\":-1,\"budget_reached\":false}}}",
                "{\"version\":1,\"models\":{\"m\":{\"day\":\"2024-01-01\",\"spent_microusd\":1}}}",
                "not json",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                kbt_write_text(path, bad[i]);
                assert_int_equal(kb_shadow_budget_new(&c), 0);
                assert_int_equal(kb_shadow_budget_load(c, path, now), -EBADMSG);
                c = kb_shadow_budget_free(c);
        }
        unlink(path);
        assert_int_equal(kb_shadow_budget_new(&c), 0);
        assert_int_equal(kb_shadow_budget_load(c, path, now), 0); /* missing: empty */
        c = kb_shadow_budget_free(c);
        (void) kbt_rm_rf(dir);
        kb_shadow_budget_free(b);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_json),
                cmocka_unit_test(test_sse),
                cmocka_unit_test(test_status_class),
                cmocka_unit_test(test_budget),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
