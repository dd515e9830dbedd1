/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <string.h>

#include "util.h"

/* Request ids come from the pool: no two alike, and every byte value
 * turns up (a pool handing out zeros or repeats would fail this). */
static void test_random_pool_ids_distinct(void **state) {
        enum { N = 4096 };
        static unsigned char ids[N][16];
        unsigned seen[256] = {};

        for (size_t i = 0; i < N; i++) {
                kb_random_bytes(ids[i], sizeof(ids[i]));
                for (size_t k = 0; k < 16; k++)
                        seen[ids[i][k]]++;
        }
        for (size_t i = 1; i < N; i++)
                for (size_t j = 0; j < i; j++)
                        if (memcmp(ids[i], ids[j], 16) == 0)
                                fail_msg("ids %zu and %zu are equal", i, j);
        for (size_t v = 0; v < 256; v++)
                if (seen[v] == 0)
                        fail_msg("byte value %zu never drawn in %d bytes", v, N * 16);
}

/* Odd sizes straddle refills; a big request bypasses the pool. */
static void test_random_sizes(void **state) {
        unsigned char a[3], b[1000], c[1000];

        kb_random_bytes(a, 0);
        for (int i = 0; i < 1000; i++)
                kb_random_bytes(a, sizeof(a));
        kb_random_bytes(b, sizeof(b));
        kb_random_bytes(c, sizeof(c));
        assert_memory_not_equal(b, c, sizeof(b));
        uint32_t x = kb_random_u32(), y = kb_random_u32(), z = kb_random_u32();
        assert_false(x == y && y == z);
}

static void *draw(void *arg) {
        kb_random_bytes(arg, 16);
        return NULL;
}

/* Each thread has its own pool: two threads never get the same bytes. */
static void test_random_threads(void **state) {
        unsigned char a[16], b[16];
        pthread_t t1, t2;

        assert_int_equal(pthread_create(&t1, NULL, draw, a), 0);
        assert_int_equal(pthread_create(&t2, NULL, draw, b), 0);
        pthread_join(t1, NULL);
        pthread_join(t2, NULL);
        assert_memory_not_equal(a, b, sizeof(a));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_random_pool_ids_distinct),
                cmocka_unit_test(test_random_sizes),
                cmocka_unit_test(test_random_threads),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
