/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "json-scan.h"
#include "util.h"

struct seen {
        char text[1024];        /* "key=value;" for every member, in order */
        unsigned n;
        int stop_at;            /* return -ECANCELED at this member (1-based), 0: never */
};

static int collect(const char *key, size_t key_len, const char *value, size_t value_len, void *userdata) {
        struct seen *s = userdata;
        size_t len = strlen(s->text);

        s->n++;
        if (s->stop_at && (int) s->n == s->stop_at)
                return -ECANCELED;
        snprintf(s->text + len, sizeof(s->text) - len, "%.*s=%.*s;", (int) key_len, key, (int) value_len, value);
        return 0;
}

static int scan(const char *doc, struct seen *s) {
        memset(s, 0, sizeof(*s));
        return kb_json_scan_object(doc, strlen(doc), collect, s);
}

static void test_members(void **state) {
        struct seen s;

        assert_int_equal(scan("{}", &s), 0);
        assert_int_equal(s.n, 0);
        assert_int_equal(scan(" \n{ } \t", &s), 0);
        assert_int_equal(scan("{\"a\":1}", &s), 0);
        assert_string_equal(s.text, "a=1;");
        assert_int_equal(scan("{\"a\":0,\"b\":-0.5,\"c\":1E+9,\"d\":2e-3,\"e\":-12.25e10,\"f\":null}", &s), 0);
        assert_string_equal(s.text, "a=0;b=-0.5;c=1E+9;d=2e-3;e=-12.25e10;f=null;");
        assert_int_equal(scan("{ \"id\" : \"x\\\"}{\" , \"usage\":{\"p\":[1,{\"q\":\"]\"}],\"c\":null},"
                              "\"z\":-1.5e3,\"t\":true,\"f\":false,\"e\":[],\"o\":{}}", &s), 0);
        assert_string_equal(s.text, "id=\"x\\\"}{\";usage={\"p\":[1,{\"q\":\"]\"}],\"c\":null};z=-1.5e3;t=true;"
                                    "f=false;e=[];o={};");
        /* A repeated key is handed out each time (the caller keeps the last). */
        assert_int_equal(scan("{\"a\":1,\"a\":2}", &s), 0);
        assert_string_equal(s.text, "a=1;a=2;");
        /* The callback can stop the scan. */
        memset(&s, 0, sizeof(s));
        s.stop_at = 2;
        assert_int_equal(kb_json_scan_object("{\"a\":1,\"b\":2,\"c\":3}", 19, collect, &s), -ECANCELED);
        assert_string_equal(s.text, "a=1;");
}

static void test_escaped_key(void **state) {
        struct seen s;

        assert_int_equal(scan("{\"us\\u0061ge\":{}}", &s), -EILSEQ);
        assert_int_equal(scan("{\"a\":\"\\u0041\"}", &s), 0); /* escapes in values are fine */
}

static void test_malformed(void **state) {
        static const char *const bad[] = {
                "", " ", "[]", "\"s\"", "1", "null", "{", "}", "{\"a\"}", "{\"a\":}", "{\"a\" 1}", "{a:1}",
                "{\"a\":1,}", "{,}", "{\"a\":1 \"b\":2}", "{\"a\":1}x", "{\"a\":1}{}", "{\"a\":[1,2}",
                "{\"a\":{\"b\":1]}", "{\"a\":\"unterminated}", "{\"a\":\"ctl\x01\"}", "{\"a\":[1,2]]}",
                "{\"a\":\"x\\", "{\"a\":1", "{\"a\":[", "{\"a\":tru}", "{\"a\":nul}", "{\"a\":abc}",
                "{\"a\":01}", "{\"a\":1.}", "{\"a\":.5}", "{\"a\":1e}", "{\"a\":+1}", "{\"a\":-}", "{\"a\":1e+}",
                "{\"a\":truex}", "{\"a\":0x10}",
        };
        struct seen s;

        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                if (scan(bad[i], &s) != -EINVAL)
                        fail_msg("accepted: %s", bad[i]);
        assert_int_equal(kb_json_scan_object(NULL, 0, collect, &s), -EINVAL);
        /* Embedded NUL ends a scalar; what follows is not JSON. */
        assert_int_equal(kb_json_scan_object("{\"a\":1\0}", 8, collect, &s), -EINVAL);
}

static void test_depth(void **state) {
        char doc[2 * KB_JSON_SCAN_MAX_DEPTH + 32];
        struct seen s;
        size_t n;

        for (size_t depth = KB_JSON_SCAN_MAX_DEPTH; depth <= KB_JSON_SCAN_MAX_DEPTH + 1; depth++) {
                n = (size_t) snprintf(doc, sizeof(doc), "{\"a\":");
                for (size_t i = 0; i < depth; i++)
                        doc[n++] = '[';
                for (size_t i = 0; i < depth; i++)
                        doc[n++] = ']';
                doc[n++] = '}';
                doc[n] = 0;
                assert_int_equal(scan(doc, &s), depth <= KB_JSON_SCAN_MAX_DEPTH ? 0 : -EINVAL);
        }
}

/* On documents jansson accepts, the members found are jansson's. */
static void test_agrees_with_jansson(void **state) {
        static const char *const docs[] = {
                "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\",\"model\":\"m\",\"choices\":[{\"index\":0,"
                "\"message\":{\"role\":\"assistant\",\"content\":\"a {b} [c] \\\"d\\\"\"}}],\"usage\":"
                "{\"prompt_tokens\":11,\"completion_tokens\":7}}",
                "{\"type\":\"message\",\"content\":[{\"type\":\"text\",\"text\":\"\\\\\"}],\"usage\":{\"input_tokens\":1}}",
                "{\"input_tokens\":42}",
        };
        struct seen s;

        for (size_t i = 0; i < ELEMENTSOF(docs); i++) {
                json_t *root = json_loads(docs[i], 0, NULL);
                assert_non_null(root);
                assert_int_equal(scan(docs[i], &s), 0);
                assert_int_equal(s.n, json_object_size(root));
                const char *key;
                json_t *v;
                json_object_foreach(root, key, v) {
                        char want[256];
                        char *dump = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
                        snprintf(want, sizeof(want), "%s=", key);
                        const char *at = strstr(s.text, want);
                        if (!at)
                                fail_msg("member %s not found in %s", key, s.text);
                        json_t *mine = json_loadb(at + strlen(want), strcspn(at + strlen(want), ";"),
                                                  JSON_DECODE_ANY, NULL);
                        /* values holding ';' are not split here: the docs avoid them */
                        assert_non_null(mine);
                        assert_true(json_equal(mine, v));
                        json_decref(mine);
                        free(dump);
                }
                json_decref(root);
        }
}

struct elements {
        char text[512];         /* "value;" for every element */
        unsigned n;
};

static int collect_element(const char *value, size_t value_len, void *userdata) {
        struct elements *e = userdata;
        size_t len = strlen(e->text);

        e->n++;
        snprintf(e->text + len, sizeof(e->text) - len, "%.*s;", (int) value_len, value);
        return 0;
}

static int scan_array(const char *doc, struct elements *e) {
        memset(e, 0, sizeof(*e));
        return kb_json_scan_array(doc, strlen(doc), collect_element, e);
}

static void test_array(void **state) {
        struct elements e;

        assert_int_equal(scan_array(" [ 1 , \"a]\" , {\"k\":[2]} , [ ] , null ] ", &e), 0);
        assert_int_equal(e.n, 5);
        assert_string_equal(e.text, "1;\"a]\";{\"k\":[2]};[ ];null;");
        assert_int_equal(scan_array("[]", &e), 0);
        assert_int_equal(e.n, 0);
        assert_int_equal(scan_array(" [ ] ", &e), 0);
        static const char *const bad[] = {
                "", "{}", "[", "[1,]", "[,1]", "[1 2]", "[1]x", "[\"a]", "[{]", "[tru]", "[1]]", "[01]",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                if (scan_array(bad[i], &e) != -EINVAL)
                        fail_msg("'%s' should be refused", bad[i]);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_members),
                cmocka_unit_test(test_escaped_key),
                cmocka_unit_test(test_malformed),
                cmocka_unit_test(test_depth),
                cmocka_unit_test(test_agrees_with_jansson),
                cmocka_unit_test(test_array),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
