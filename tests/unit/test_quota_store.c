/* SPDX-License-Identifier: MIT */
/* The quota snapshot: round trip, stale counters, corrupt and truncated files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>

#include "helper.h"
#include "quota.h"
#include "util.h"

#define S(x) ((uint64_t) (x) * USEC_PER_SEC)
/* 2023-11-14T22:13:20Z, a whole second */
#define T0 S(1700000000)

static char dir[64];

/* only the files the tests make: one more fails the group */
static int remove_tmpdir(void **state) {
        static const char *const names[] = { "quota.json", "quota.json.tmp", "none.json", "good.json",
                                             "good.json.tmp", "bad.json", NULL };

        if (!dir[0])
                return 0;
        return kbt_rmdir_files(dir, names) < 0 ? -1 : 0;
}

static char *tmpdir_path(const char *name) {
        char *p = NULL;

        if (!dir[0])
                kbt_mkdtemp(dir, sizeof(dir), "quota-store");
        assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
        return p;
}

static void test_save_load(void **state) {
        struct kb_team teams[3] = { kbt_team("a"), kbt_team("b"), kbt_team("gone") };
        teams[0].requests_per_minute = 100;
        teams[0].tokens_per_day = 10000;
        struct kb_quota *q = kbt_quota(teams, 3), *q2 = NULL;
        struct kb_reservation *r = NULL, *open = NULL;
        _cleanup_free_ char *path = tmpdir_path("quota.json"), *missing = tmpdir_path("none.json");
        char *cursor = (char *) "x";
        struct stat st;

        for (int i = 0; i < 5; i++) {
                assert_int_equal(kb_quota_reserve(q, "a", T0 + S(i), 10, 10, &r, NULL), 0);
                kb_quota_settle(r, T0 + S(i) + 500, 100, 7);
        }
        assert_int_equal(kb_quota_account(q, "b", T0, 3, 4), 0);
        assert_int_equal(kb_quota_account(q, "gone", T0, 3, 4), 0);
        /* in flight: not in the snapshot (its journal record will be replayed) */
        assert_int_equal(kb_quota_reserve(q, "a", T0 + S(5), 1000, 0, &open, NULL), 0);

        assert_int_equal(kb_quota_save(q, path, "s=abc;i=1"), 0);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0600);

        /* restart: a config without "gone" */
        q2 = kbt_quota(teams, 2);
        assert_int_equal(kb_quota_load(q2, path, &cursor), 0);
        assert_string_equal(cursor, "s=abc;i=1");
        free(cursor);

        struct kb_quota_view a, b;
        assert_int_equal(kb_quota_view(q2, "a", T0 + S(10), &a), 0);
        assert_int_equal(a.windows[KB_QUOTA_REQUESTS_PER_MINUTE].used, 5);
        assert_int_equal(a.windows[KB_QUOTA_TOKENS_PER_MINUTE].used, 500);
        assert_int_equal(a.windows[KB_QUOTA_TOKENS_PER_DAY].used, 500);
        assert_int_equal(a.windows[KB_QUOTA_TOKENS_PER_DAY].reserved, 0);
        assert_int_equal(a.windows[KB_QUOTA_BUDGET_PER_MONTH].used, 35);
        assert_int_equal(a.in_flight, 0);
        kb_quota_cancel(open);
        assert_int_equal(kb_quota_view(q, "a", T0 + S(10), &b), 0);
        /* the request in flight counted at admission here, not in the snapshot */
        assert_int_equal(b.windows[KB_QUOTA_REQUESTS_PER_MINUTE].used, 6);
        assert_int_equal(a.windows[KB_QUOTA_REQUESTS_PER_MINUTE].reset_usec, T0 + S(64));
        assert_memory_equal(&a.windows[1], &b.windows[1], sizeof(a.windows) - sizeof(a.windows[0]));
        assert_int_equal(a.in_flight, b.in_flight);
        assert_int_equal(a.month_tokens, b.month_tokens);
        assert_int_equal(kb_quota_view(q2, "b", T0 + S(10), &a), 0);
        assert_int_equal(kb_quota_view(q, "b", T0 + S(10), &b), 0);
        assert_memory_equal(&a, &b, sizeof(a));
        /* minute buckets expire after load as they would have */
        assert_int_equal(kbt_window(q2, "a", T0 + S(65), KB_QUOTA_REQUESTS_PER_MINUTE).used, 0);
        /* the next day the day counters are stale; the month still counts */
        assert_int_equal(kb_quota_view(q2, "a", T0 + S(86400), &a), 0);
        assert_int_equal(a.windows[KB_QUOTA_TOKENS_PER_DAY].used, 0);
        assert_int_equal(a.windows[KB_QUOTA_BUDGET_PER_MONTH].used, 35);
        assert_int_equal(a.month_tokens, 500);

        /* no cursor; a save replaces the old file */
        assert_int_equal(kb_quota_save(q2, path, NULL), 0);
        cursor = (char *) "x";
        assert_int_equal(kb_quota_load(q2, path, &cursor), 0);
        assert_null(cursor);

        /* missing file: fresh */
        cursor = (char *) "x";
        assert_int_equal(kb_quota_load(q2, missing, &cursor), 0);
        assert_null(cursor);

        /* bad arguments */
        _cleanup_free_ char *longc = malloc(KB_QUOTA_CURSOR_MAX + 2);
        memset(longc, 'c', KB_QUOTA_CURSOR_MAX + 1);
        longc[KB_QUOTA_CURSOR_MAX + 1] = 0;
        assert_int_equal(kb_quota_save(q2, path, longc), -EINVAL);
        assert_int_equal(kb_quota_save(q2, "", NULL), -EINVAL);
        assert_int_equal(kb_quota_save(q2, "/nonexistent-dir/q.json", NULL), -ENOENT);
        /* a leftover temp file of another mode is reused and made private */
        {
                _cleanup_free_ char *tmp = NULL;
                assert_true(asprintf(&tmp, "%s.tmp", path) > 0);
                kbt_write_text(tmp, "junk");
                assert_int_equal(chmod(tmp, 0644), 0);
                assert_int_equal(kb_quota_save(q2, path, "c2"), 0);
                assert_int_equal(stat(path, &st), 0);
                assert_int_equal(st.st_mode & 07777, 0600);
                assert_int_equal(stat(tmp, &st), -1);
                assert_int_equal(kb_quota_load(q2, path, &cursor), 0);
                assert_string_equal(cursor, "c2");
                free(cursor);
        }
        assert_int_equal(kb_quota_load(q2, path, NULL), -EINVAL);
        assert_int_equal(kb_quota_load(q2, "/tmp", &cursor), -EINVAL); /* a directory */

        kb_quota_free(q);
        kb_quota_free(q2);
}

static void test_load_corrupt(void **state) {
        struct kb_team teams[1] = { kbt_team("a") };
        struct kb_quota *q = kbt_quota(teams, 1);
        struct kb_reservation *r = NULL;
        _cleanup_free_ char *good = tmpdir_path("good.json"), *bad = tmpdir_path("bad.json");
        _cleanup_free_ char *text = NULL;
        char *cursor = NULL;
        size_t len;

        assert_int_equal(kb_quota_reserve(q, "a", T0, 0, 0, &r, NULL), 0);
        kb_quota_settle(r, T0, 42, 43);
        assert_int_equal(kb_quota_save(q, good, "cur"), 0);
        text = kbt_read_file(good, &len);
        assert_true(len > 20);

        /* state in the quota that a failed load must leave alone */
        kb_quota_free(q);
        q = kbt_quota(teams, 1);
        assert_int_equal(kb_quota_account(q, "a", T0 + S(1), 7, 8), 0);

        /* every truncation of a good file is rejected */
        for (size_t cut = 0; cut < len - 1; cut++) {
                char saved = text[cut];
                text[cut] = 0;
                kbt_write_text(bad, text);
                text[cut] = saved;
                cursor = (char *) "untouched";
                assert_int_equal(kb_quota_load(q, bad, &cursor), -EINVAL);
                assert_string_equal(cursor, "untouched");
        }

        static const char *const corrupt[] = {
                "garbage",
                "[]",
                "{\"version\":2,\"cursor\":null,\"teams\":{}}",
                "{\"cursor\":null,\"teams\":{}}",
                "{\"version\":1,\"cursor\":5,\"teams\":{}}",
                "{\"version\":1,\"cursor\":null}",
                "{\"version\":1,\"cursor\":null,\"teams\":[]}",
                "{\"version\":1,\"cursor\":null,\"teams\":{\"a\":5}}",
                /* a valid "a" but a broken unknown team: still rejected as a whole */
                "{\"version\":1,\"cursor\":null,\"teams\":{\"a\":{\"day\":1,\"day_tokens\":1,\"day_cost_microusd\":1,"
                "\"month\":1,\"month_tokens\":1,\"month_cost_microusd\":1,\"minute\":[]},\"zz\":{}}}",
                "{\"version\":1,\"cursor\":null,\"teams\":{\"a\":{\"day\":1,\"day_tokens\":-1,\"day_cost_microusd\":1,"
                "\"month\":1,\"month_tokens\":1,\"month_cost_microusd\":1,\"minute\":[]}}}",
                "{\"version\":1,\"cursor\":null,\"teams\":{\"a\":{\"day\":1,\"day_tokens\":1.5,\"day_cost_microusd\":1,"
                "\"month\":1,\"month_tokens\":1,\"month_cost_microusd\":1,\"minute\":[]}}}",
                "{\"version\":1,\"cursor\":null,\"teams\":{\"a\":{\"day\":null,\"day_tokens\":1,\"day_cost_microusd\":1,"
                "\"month\":1,\"month_tokens\":1,\"month_cost_microusd\":1,\"minute\":[]}}}",
                "{\"version\":1,\"cursor\":null,\"teams\":{\"a\":{\"day\":99999999,\"day_tokens\":1,\"day_cost_microusd\":1,"
                "\"month\":1,\"month_tokens\":1,\"month_cost_microusd\":1,\"minute\":[]}}}",
                "{\"version\":1,\"cursor\":null,\"teams\":{\"a\":{\"day\":1,\"day_tokens\":1,\"day_cost_microusd\":1,"
                "\"month\":1,\"month_tokens\":1,\"month_cost_microusd\":1,\"minute\":[[1,2]]}}}",
                "{\"version\":1,\"cursor\":null,\"teams\":{\"a\":{\"day\":1,\"day_tokens\":1,\"day_cost_microusd\":1,"
                "\"month\":1,\"month_tokens\":1,\"month_cost_microusd\":1,\"minute\":[[1,2,3,4]]}}}",
                "{\"version\":1,\"cursor\":null,\"teams\":{\"a\":{\"day\":1,\"day_tokens\":1,\"day_cost_microusd\":1,"
                "\"month\":1,\"month_tokens\":1,\"month_cost_microusd\":1,\"minute\":[[1,2,3],[62,1,1]]}}}",
                "{\"version\":1,\"cursor\":null,\"teams\":{\"a\":{\"day\":1,\"day_tokens\":1,\"day_cost_microusd\":1,"
                "\"month\":1,\"month_tokens\":1,\"month_cost_microusd\":1,\"minute\":[[-1,2,3]]}}}",
                "{\"version\":1,\"cursor\":null,\"teams\":{\"a\":{\"day\":1,\"day_tokens\":1,\"day_cost_microusd\":1,"
                "\"month\":1,\"month_tokens\":1,\"month_cost_microusd\":1}}}",
                "{\"version\":1,\"cursor\":null,\"teams\":{},\"teams\":{}}",
                "{\"version\":1,\"cursor\":\"a\\u0000b\",\"teams\":{}}",
        };
        for (size_t i = 0; i < ELEMENTSOF(corrupt); i++) {
                kbt_write_text(bad, corrupt[i]);
                cursor = (char *) "untouched";
                assert_int_equal(kb_quota_load(q, bad, &cursor), -EINVAL);
                assert_string_equal(cursor, "untouched");
        }
        /* nothing of the bad files was applied */
        assert_int_equal(kbt_window(q, "a", T0 + S(1), KB_QUOTA_TOKENS_PER_DAY).used, 7);
        assert_int_equal(kbt_window(q, "a", T0 + S(1), KB_QUOTA_REQUESTS_PER_MINUTE).used, 1);

        /* the good one still loads, and replaces the counters */
        assert_int_equal(kb_quota_load(q, good, &cursor), 0);
        assert_string_equal(cursor, "cur");
        free(cursor);
        assert_int_equal(kbt_window(q, "a", T0 + S(1), KB_QUOTA_TOKENS_PER_DAY).used, 42);
        assert_int_equal(kbt_window(q, "a", T0 + S(1), KB_QUOTA_BUDGET_PER_DAY).used, 43);

        /* a cursor of the maximum length round-trips, an oversized file does not load */
        _cleanup_free_ char *maxc = malloc(KB_QUOTA_CURSOR_MAX + 1);
        memset(maxc, 'c', KB_QUOTA_CURSOR_MAX);
        maxc[KB_QUOTA_CURSOR_MAX] = 0;
        assert_int_equal(kb_quota_save(q, good, maxc), 0);
        assert_int_equal(kb_quota_load(q, good, &cursor), 0);
        assert_string_equal(cursor, maxc);
        free(cursor);
        {
                int fd = open(bad, O_WRONLY | O_TRUNC | O_CLOEXEC);
                assert_true(fd >= 0);
                assert_int_equal(ftruncate(fd, (off_t) KB_QUOTA_SNAPSHOT_MAX + 1), 0);
                close(fd);
        }
        assert_int_equal(kb_quota_load(q, bad, &cursor), -EINVAL);

        kb_quota_free(q);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_save_load),
                cmocka_unit_test(test_load_corrupt),
        };

        return cmocka_run_group_tests(tests, NULL, remove_tmpdir);
}
