/* SPDX-License-Identifier: MIT */
/* agent/metrics.c: counters, histograms and the text exposition format. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics.h"

static char *escaped(const char *s) {
        struct kb_buf b = {};

        assert_int_equal(kb_metrics_escape(&b, s), 0);
        assert_int_equal(kb_buf_append(&b, "", 0), 0); /* NUL-terminated even when empty */
        return b.data;
}

static void test_escape(void **state) {
        const struct {
                const char *in, *out;
        } cases[] = {
                { "", "" },
                { "plain-name_1.2", "plain-name_1.2" },
                { "a\"b", "a\\\"b" },
                { "back\\slash", "back\\\\slash" },
                { "two\nlines", "two\\nlines" },
                { "\\\"\n", "\\\\\\\"\\n" },
                { "tab\tstays", "tab\tstays" },
                { "ünïcode", "ünïcode" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *e = escaped(cases[i].in);
                assert_string_equal(e, cases[i].out);
                free(e);
        }
        char *e = escaped(NULL);
        assert_string_equal(e, "");
        free(e);
}

static char *format(const struct kb_metrics *m) {
        struct kb_buf b = {};

        assert_int_equal(kb_metrics_format(m, &b), 0);
        return b.data;
}

/* The value of the sample line that starts with prefix (exactly one). */
static const char *value_of(const char *page, const char *prefix) {
        static char v[64];
        const char *found = NULL;
        size_t n = strlen(prefix);

        for (const char *l = page; l && *l;) {
                const char *nl = strchr(l, '\n');
                if (strncmp(l, prefix, n) == 0 && l[n] == ' ') {
                        if (found)
                                fail_msg("%s appears twice", prefix);
                        found = l + n + 1;
                }
                l = nl ? nl + 1 : NULL;
        }
        if (!found)
                fail_msg("no sample %s in:\n%s", prefix, page);
        size_t len = strcspn(found, "\n");
        assert_true(len < sizeof(v));
        memcpy(v, found, len);
        v[len] = 0;
        return v;
}

static void test_counters(void **state) {
        struct kb_metrics *m = NULL;
        char *page;

        assert_int_equal(kb_metrics_new(&m), 0);
        struct kb_metrics_sample a = {
                .team = "search", .model = "chat", .route = "openai", .outcome = KB_OUTCOME_OK,
                .tokens = { 100, 20, 5, 1, 3 }, .cost_microusd = 219, .upstream = true,
                .latency_usec = 7000, .ttfb_usec = 3000,
        };
        assert_int_equal(kb_metrics_add(m, &a), 0);
        a.latency_usec = 2 * USEC_PER_SEC;
        a.ttfb_usec = 0; /* no first byte: not observed */
        a.outcome = KB_OUTCOME_UPSTREAM_TIMEOUT;
        a.cost_microusd = -5; /* never lowers a counter */
        assert_int_equal(kb_metrics_add(m, &a), 0);
        struct kb_metrics_sample nf = { .team = "ads", .outcome = KB_OUTCOME_MODEL_NOT_FOUND };
        assert_int_equal(kb_metrics_add(m, &nf), 0);

        page = format(m);
        assert_string_equal(value_of(page, "keybroker_requests_total{team=\"search\",model=\"chat\",route=\"openai\",outcome=\"ok\"}"), "1");
        assert_string_equal(value_of(page, "keybroker_requests_total{team=\"search\",model=\"chat\",route=\"openai\",outcome=\"upstream_timeout\"}"), "1");
        assert_string_equal(value_of(page, "keybroker_requests_total{team=\"search\",model=\"chat\",route=\"openai\",outcome=\"client_abort\"}"), "0");
        assert_string_equal(value_of(page, "keybroker_requests_total{team=\"ads\",model=\"\",route=\"\",outcome=\"model_not_found\"}"), "1");
        assert_string_equal(value_of(page, "keybroker_tokens_total{team=\"search\",model=\"chat\",route=\"openai\",kind=\"input\"}"), "200");
        assert_string_equal(value_of(page, "keybroker_tokens_total{team=\"search\",model=\"chat\",route=\"openai\",kind=\"cache_write\"}"), "2");
        assert_string_equal(value_of(page, "keybroker_tokens_total{team=\"search\",model=\"chat\",route=\"openai\",kind=\"reasoning\"}"), "6");
        assert_string_equal(value_of(page, "keybroker_cost_microusd_total{team=\"search\",model=\"chat\",route=\"openai\"}"), "219");
        assert_string_equal(value_of(page, "keybroker_cost_microusd_total{team=\"ads\",model=\"\",route=\"\"}"), "0");

        /* Buckets are cumulative; +Inf and _count equal the observations. */
        assert_string_equal(value_of(page, "keybroker_upstream_latency_seconds_bucket{route=\"openai\",le=\"0.005\"}"), "0");
        assert_string_equal(value_of(page, "keybroker_upstream_latency_seconds_bucket{route=\"openai\",le=\"0.01\"}"), "1");
        assert_string_equal(value_of(page, "keybroker_upstream_latency_seconds_bucket{route=\"openai\",le=\"1\"}"), "1");
        assert_string_equal(value_of(page, "keybroker_upstream_latency_seconds_bucket{route=\"openai\",le=\"2.5\"}"), "2");
        assert_string_equal(value_of(page, "keybroker_upstream_latency_seconds_bucket{route=\"openai\",le=\"600\"}"), "2");
        assert_string_equal(value_of(page, "keybroker_upstream_latency_seconds_bucket{route=\"openai\",le=\"+Inf\"}"), "2");
        assert_string_equal(value_of(page, "keybroker_upstream_latency_seconds_count{route=\"openai\"}"), "2");
        assert_string_equal(value_of(page, "keybroker_upstream_latency_seconds_sum{route=\"openai\"}"), "2.007000");
        assert_string_equal(value_of(page, "keybroker_upstream_ttfb_seconds_count{route=\"openai\"}"), "1");
        assert_string_equal(value_of(page, "keybroker_upstream_ttfb_seconds_bucket{route=\"openai\",le=\"0.005\"}"), "1");
        /* A request that never went upstream has no histogram. */
        assert_null(strstr(page, "seconds_count{route=\"\"}"));
        assert_non_null(strstr(page, "# TYPE keybroker_upstream_latency_seconds histogram\n"));
        assert_non_null(strstr(page, "# TYPE keybroker_requests_total counter\n"));
        free(page);
        kb_metrics_free(m);
}

static void test_bucket_edges(void **state) {
        struct kb_metrics *m = NULL;
        char *page;

        assert_int_equal(kb_metrics_new(&m), 0);
        /* An observation equal to a bound is in that bucket (le = less or equal). */
        uint64_t obs[] = { 0, 5000, 5001, 600 * USEC_PER_SEC, 600 * USEC_PER_SEC + 1 };
        for (size_t i = 0; i < ELEMENTSOF(obs); i++) {
                struct kb_metrics_sample s = { .route = "r", .upstream = true, .latency_usec = obs[i] };
                assert_int_equal(kb_metrics_add(m, &s), 0);
        }
        page = format(m);
        assert_string_equal(value_of(page, "keybroker_upstream_latency_seconds_bucket{route=\"r\",le=\"0.005\"}"), "2");
        assert_string_equal(value_of(page, "keybroker_upstream_latency_seconds_bucket{route=\"r\",le=\"0.01\"}"), "3");
        assert_string_equal(value_of(page, "keybroker_upstream_latency_seconds_bucket{route=\"r\",le=\"600\"}"), "4");
        assert_string_equal(value_of(page, "keybroker_upstream_latency_seconds_bucket{route=\"r\",le=\"+Inf\"}"), "5");
        free(page);
        kb_metrics_free(m);
}

static void test_labels_escaped(void **state) {
        struct kb_metrics *m = NULL;
        char *page;

        assert_int_equal(kb_metrics_new(&m), 0);
        struct kb_metrics_sample s = { .team = "a\"b", .model = "c\\d", .route = "e\nf", .upstream = true };
        assert_int_equal(kb_metrics_add(m, &s), 0);
        page = format(m);
        assert_string_equal(value_of(page, "keybroker_requests_total{team=\"a\\\"b\",model=\"c\\\\d\",route=\"e\\nf\",outcome=\"ok\"}"), "1");
        assert_string_equal(value_of(page, "keybroker_upstream_latency_seconds_count{route=\"e\\nf\"}"), "1");
        /* No raw newline inside a sample line: every line is a comment or a sample. */
        for (char *l = strtok(page, "\n"); l; l = strtok(NULL, "\n"))
                assert_true(l[0] == '#' || strncmp(l, "keybroker_", 10) == 0);
        free(page);
        kb_metrics_free(m);
}

static void test_bad_input_and_cap(void **state) {
        struct kb_metrics *m = NULL;
        struct kb_buf b = {};
        char team[32];

        assert_int_equal(kb_metrics_new(NULL), -EINVAL);
        assert_int_equal(kb_metrics_new(&m), 0);
        assert_int_equal(kb_metrics_add(NULL, &(struct kb_metrics_sample) {}), -EINVAL);
        assert_int_equal(kb_metrics_add(m, NULL), -EINVAL);
        assert_int_equal(kb_metrics_add(m, &(struct kb_metrics_sample) { .outcome = _KB_OUTCOME_MAX }), -EINVAL);
        assert_int_equal(kb_metrics_add(m, &(struct kb_metrics_sample) { .outcome = (kb_outcome) -1 }), -EINVAL);
        assert_int_equal(kb_metrics_format(NULL, &b), -EINVAL);
        assert_int_equal(kb_metrics_format(m, NULL), -EINVAL);
        kb_metrics_request(NULL, NULL);
        kb_metrics_request(m, NULL);

        /* Label sets are capped; beyond, requests are counted as overflow. */
        for (unsigned i = 0; i < KB_METRICS_MAX_SERIES; i++) {
                snprintf(team, sizeof(team), "t%u", i);
                assert_int_equal(kb_metrics_add(m, &(struct kb_metrics_sample) { .team = team }), 0);
        }
        assert_int_equal(kb_metrics_add(m, &(struct kb_metrics_sample) { .team = "one-too-many" }), -E2BIG);
        /* an existing label set still counts */
        assert_int_equal(kb_metrics_add(m, &(struct kb_metrics_sample) { .team = "t7" }), 0);
        char *page = format(m);
        assert_string_equal(value_of(page, "keybroker_metrics_series_overflow_total"), "1");
        assert_string_equal(value_of(page, "keybroker_requests_total{team=\"t7\",model=\"\",route=\"\",outcome=\"ok\"}"), "2");
        assert_null(strstr(page, "one-too-many"));
        free(page);
        assert_null(kb_metrics_free(m));
        assert_null(kb_metrics_free(NULL));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_escape),
                cmocka_unit_test(test_counters),
                cmocka_unit_test(test_bucket_edges),
                cmocka_unit_test(test_labels_escaped),
                cmocka_unit_test(test_bad_input_and_cap),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
