/* SPDX-License-Identifier: MIT */
/* Price -> cost: integer micro-USD, per family, rounding. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "usage.h"

static void test_cost_openai(void **state) {
        /* gpt-4o-mini: 0.15 / 0.60 / 0.075 USD per 1M */
        struct kb_price p = { .model = "gpt-4o-mini", .input = 150000, .output = 600000, .cached_input = 75000,
                              .cache_write = -1, .request = -1 };
        struct kb_usage u = { .input_tokens = 1234, .output_tokens = 56, .seen = true };

        /* 1234*0.15 + 56*0.60 = 185.1 + 33.6 = 218.7 µUSD -> 219 (DESIGN's example) */
        assert_int_equal(kb_usage_cost_microusd(&u, KB_FAMILY_OPENAI, &p), 219);

        /* OpenAI's cached tokens are inside input: 1000 of 1234 at half price. */
        u.cached_tokens = 1000;
        /* 234*0.15 + 1000*0.075 + 33.6 = 35.1 + 75 + 33.6 = 143.7 -> 144 */
        assert_int_equal(kb_usage_cost_microusd(&u, KB_FAMILY_OPENAI, &p), 144);

        /* Cached more than input (a broken report) never goes negative. */
        u.cached_tokens = 5000;
        assert_true(kb_usage_cost_microusd(&u, KB_FAMILY_OPENAI, &p) >= 0);
}

static void test_cost_anthropic(void **state) {
        /* input 3.00, output 15.00, cache read 0.30, cache write 3.75 */
        struct kb_price p = { .input = 3000000, .output = 15000000, .cached_input = 300000,
                              .cache_write = 3750000, .request = -1 };
        struct kb_usage u = { .input_tokens = 100, .output_tokens = 10, .cached_tokens = 1000,
                              .cache_write_tokens = 200 };
        /* 100*3 + 10*15 + 1000*0.3 + 200*3.75 = 300 + 150 + 300 + 750 = 1500 */
        assert_int_equal(kb_usage_cost_microusd(&u, KB_FAMILY_ANTHROPIC, &p), 1500);

        /* No cache prices: charged at the input price. */
        p.cached_input = p.cache_write = -1;
        /* 300 + 150 + 3000 + 600 */
        assert_int_equal(kb_usage_cost_microusd(&u, KB_FAMILY_ANTHROPIC, &p), 4050);
}

/* Newer reports: OpenAI's cache writes are inside its prompt count too;
 * Anthropic's 1-hour cache writes are a part of cache_creation, priced
 * apart (cache_write_1h, default the cache_write price). */
static void test_cost_cache_writes(void **state) {
        struct kb_price p = { .input = 1000000, .output = 2000000, .cached_input = 500000, .cache_write = 1250000,
                              .cache_write_1h = -1, .request = -1 };
        /* 1220 prompt = 3 uncached + 1217 written: 3*1 + 1217*1.25 + 100*2 = 3 + 1521.25 + 200 */
        struct kb_usage o = { .input_tokens = 1220, .output_tokens = 100, .cache_write_tokens = 1217 };
        assert_int_equal(kb_usage_cost_microusd(&o, KB_FAMILY_OPENAI, &p), 1724);

        /* 418 written, 100 of them for an hour: 10*1 + 318*1.25 + 100*1.25 (default) = 532.5 -> 533 */
        struct kb_usage a = { .input_tokens = 10, .cache_write_tokens = 418, .cache_write_1h_tokens = 100 };
        assert_int_equal(kb_usage_cost_microusd(&a, KB_FAMILY_ANTHROPIC, &p), 533);
        p.cache_write_1h = 2000000;
        /* 10 + 318*1.25 + 100*2 = 10 + 397.5 + 200 = 607.5 -> 608 */
        assert_int_equal(kb_usage_cost_microusd(&a, KB_FAMILY_ANTHROPIC, &p), 608);
        /* a report with more 1-hour writes than writes counts no more than the writes */
        a.cache_write_1h_tokens = 5000;
        assert_int_equal(kb_usage_cost_microusd(&a, KB_FAMILY_ANTHROPIC, &p), 10 + 836);
        (void) state;
}

/* The other billing units: per image, per second of audio (from ms), per
 * second of video, per 1M characters; a batch's tokens at the batch prices. */
static void test_cost_units(void **state) {
        struct kb_price p = { .input = 5000000, .output = 40000000, .cached_input = -1, .cache_write = -1,
                              .cache_write_1h = -1, .request = -1, .image = 40000, .second = 100,
                              .video_second = 100000, .character = 15000000, .batch_input = -1, .batch_output = -1 };
        struct kb_usage img = { .input_tokens = 11, .output_tokens = 7, .images = 2 };
        assert_int_equal(kb_usage_cost_microusd(&img, KB_FAMILY_OPENAI, &p), 55 + 280 + 80000);
        struct kb_usage audio = { .audio_msec = 12500 };
        assert_int_equal(kb_usage_cost_microusd(&audio, KB_FAMILY_OPENAI, &p), 1250);
        struct kb_usage video = { .video_seconds = 8 };
        assert_int_equal(kb_usage_cost_microusd(&video, KB_FAMILY_OPENAI, &p), 800000);
        struct kb_usage speech = { .characters = 20 };
        assert_int_equal(kb_usage_cost_microusd(&speech, KB_FAMILY_OPENAI, &p), 300);
        struct kb_usage batch = { .input_tokens = 2000, .output_tokens = 1000, .batch = true };
        /* no batch prices: the token prices */
        assert_int_equal(kb_usage_cost_microusd(&batch, KB_FAMILY_OPENAI, &p), 10000 + 40000);
        p.batch_input = 2500000;
        p.batch_output = 20000000;
        assert_int_equal(kb_usage_cost_microusd(&batch, KB_FAMILY_OPENAI, &p), 5000 + 20000);
        batch.batch = false;
        assert_int_equal(kb_usage_cost_microusd(&batch, KB_FAMILY_OPENAI, &p), 10000 + 40000);
        (void) state;
}

static void test_cost_rounding_and_request(void **state) {
        struct kb_price p = { .input = 1, .output = 0, .cached_input = -1, .cache_write = -1, .request = -1 };
        struct kb_usage u = { .input_tokens = 499999 };

        assert_int_equal(kb_usage_cost_microusd(&u, KB_FAMILY_OPENAI, &p), 0);  /* 0.499999 */
        u.input_tokens = 500000;
        assert_int_equal(kb_usage_cost_microusd(&u, KB_FAMILY_OPENAI, &p), 1);  /* 0.5 rounds up */

        /* Summed before rounding: three classes of 0.4 each are 1.2 -> 1, not 0. */
        struct kb_price q = { .input = 400000, .output = 400000, .cached_input = 400000, .cache_write = -1,
                              .request = -1 };
        struct kb_usage v = { .input_tokens = 1, .output_tokens = 1, .cached_tokens = 1 };
        assert_int_equal(kb_usage_cost_microusd(&v, KB_FAMILY_ANTHROPIC, &q), 1);

        struct kb_price r = { .input = -1, .output = -1, .cached_input = -1, .cache_write = -1, .request = 2000 };
        assert_int_equal(kb_usage_cost_microusd(&v, KB_FAMILY_OPENAI, &r), 2000);
        assert_int_equal(kb_usage_cost_microusd(&v, KB_FAMILY_OPENAI, NULL), 0);

        /* Huge counts saturate instead of wrapping. */
        struct kb_usage big = { .input_tokens = UINT64_MAX, .output_tokens = UINT64_MAX };
        struct kb_price expensive = { .input = INT64_MAX, .output = INT64_MAX, .cached_input = -1,
                                      .cache_write = -1, .request = -1 };
        assert_int_equal(kb_usage_cost_microusd(&big, KB_FAMILY_ANTHROPIC, &expensive), INT64_MAX);
}

static void test_price_find(void **state) {
        struct kb_price prices[] = { { .model = "gpt-4o-mini" }, { .model = "gpt-4o-mini-2024-07-18" } };
        struct kb_route route = { .prices = prices, .n_prices = 2 };

        assert_ptr_equal(kb_price_find(&route, "gpt-4o-mini", "gpt-4o-mini-2024-07-18"), &prices[0]);
        assert_ptr_equal(kb_price_find(&route, "other", "gpt-4o-mini-2024-07-18"), &prices[1]);
        assert_null(kb_price_find(&route, "other", NULL));
        assert_null(kb_price_find(NULL, "gpt-4o-mini", NULL));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_cost_openai),
                cmocka_unit_test(test_cost_anthropic),
                cmocka_unit_test(test_cost_cache_writes),
                cmocka_unit_test(test_cost_units),
                cmocka_unit_test(test_cost_rounding_and_request),
                cmocka_unit_test(test_price_find),
        };
        return cmocka_run_group_tests_name("cost", tests, NULL, NULL);
}
