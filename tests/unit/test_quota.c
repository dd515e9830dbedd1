/* SPDX-License-Identifier: MIT */
/* Quota windows, reservation arithmetic, hard stop, reconfigure, replay.
 * The snapshot file is tested in test_quota_store.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "helper.h"
#include "quota.h"
#include "util.h"

#define S(x) ((uint64_t) (x) * USEC_PER_SEC)
/* 2023-11-14T22:13:20Z, a whole second */
#define T0 S(1700000000)
/* 2024-05-14T23:59:30Z */
#define MAY14_LATE S(1715731170)
#define MAY15 S(1715731200)
#define JUN1 S(1717200000)

static void test_limit_names(void **state) {
        assert_string_equal(kb_quota_limit_to_string(KB_QUOTA_REQUESTS_PER_MINUTE), "requests_per_minute");
        assert_string_equal(kb_quota_limit_to_string(KB_QUOTA_BUDGET_PER_MONTH), "budget_usd_per_month");
        assert_null(kb_quota_limit_to_string(_KB_QUOTA_LIMIT_MAX));
        assert_null(kb_quota_limit_to_string((kb_quota_limit) -1));
        for (int l = 0; l < _KB_QUOTA_LIMIT_MAX; l++)
                assert_int_equal(kb_quota_limit_from_string(kb_quota_limit_to_string(l)), l);
        assert_int_equal(kb_quota_limit_from_string("requests"), -EINVAL);
        assert_int_equal(kb_quota_limit_from_string(NULL), -EINVAL);

        assert_true(kb_quota_limit_is_rate(KB_QUOTA_REQUESTS_PER_MINUTE));
        assert_true(kb_quota_limit_is_rate(KB_QUOTA_TOKENS_PER_MINUTE));
        assert_true(kb_quota_limit_is_rate(KB_QUOTA_MAX_CONCURRENT));
        assert_false(kb_quota_limit_is_rate(KB_QUOTA_TOKENS_PER_DAY));
        assert_false(kb_quota_limit_is_rate(KB_QUOTA_BUDGET_PER_DAY));
        assert_string_equal(kb_quota_limit_error_type(KB_QUOTA_MAX_CONCURRENT), "rate_limit_error");
        assert_string_equal(kb_quota_limit_error_type(KB_QUOTA_BUDGET_PER_DAY), "insufficient_quota");
        assert_null(kb_quota_limit_error_type(_KB_QUOTA_LIMIT_MAX));
}

static void test_calendar(void **state) {
        /* Dec -> Jan */
        assert_int_equal(kb_quota_next_day_usec(S(1704067199)), S(1704067200));
        assert_int_equal(kb_quota_next_month_usec(S(1704067199)), S(1704067200));
        /* exactly at midnight the next one is a day later */
        assert_int_equal(kb_quota_next_day_usec(S(1704067200)), S(1704067200 + 86400));
        /* leap February 2024: the 29th exists, next month is March 1st */
        assert_int_equal(kb_quota_next_day_usec(S(1709208000)), S(1709251200));
        assert_int_equal(kb_quota_next_month_usec(S(1709208000)), S(1709251200));
        assert_int_equal(kb_quota_next_month_usec(S(1709251200) - 1), S(1709251200));
        /* 2023 is not a leap year */
        assert_int_equal(kb_quota_next_day_usec(S(1677625200)), S(1677628800));
        assert_int_equal(kb_quota_next_month_usec(S(1677625200)), S(1677628800));
        /* 2100 is not a leap year either, 2000 was */
        assert_int_equal(kb_quota_next_day_usec(S(4107456000)), S(4107542400));
        assert_int_equal(kb_quota_next_month_usec(S(4107456000)), S(4107542400));
        assert_int_equal(kb_quota_next_month_usec(S(951782400)), S(951782400 + 86400));
        /* a 31-day month */
        assert_int_equal(kb_quota_next_month_usec(MAY14_LATE), JUN1);
}

static void test_sliding_minute(void **state) {
        struct kb_team t = kbt_team("a");
        struct kb_reservation *r1 = NULL, *r2 = NULL, *r3 = NULL;
        struct kb_quota_denial d;
        t.requests_per_minute = 2;
        struct kb_quota *q = kbt_quota(&t, 1);

        assert_int_equal(kb_quota_reserve(q, "a", T0, 0, 0, &r1, NULL), 0);
        kb_quota_settle(r1, T0 + 1000, 0, 0); /* settling 0 frees nothing in rpm */
        assert_int_equal(kb_quota_reserve(q, "a", T0 + S(10), 0, 0, &r2, NULL), 0);
        kb_quota_cancel(r2);

        memset(&d, 0xaa, sizeof(d));
        assert_int_equal(kb_quota_reserve(q, "a", T0 + S(30), 0, 0, &r3, &d), -EDQUOT);
        assert_null(r3);
        assert_int_equal(d.limit, KB_QUOTA_REQUESTS_PER_MINUTE);
        assert_int_equal(d.used, 2);
        assert_int_equal(d.requested, 1);
        assert_int_equal(d.max, 2);
        assert_int_equal(d.reset_usec, T0 + S(60)); /* when the request at T0 stops counting */
        assert_true(d.rate);
        assert_true(d.first_in_window);

        /* A request at T0 counts until T0 + 60 s exactly. */
        assert_int_equal(kb_quota_reserve(q, "a", T0 + S(60) - 1, 0, 0, &r3, &d), -EDQUOT);
        assert_false(d.first_in_window);
        assert_int_equal(kbt_window(q, "a", T0 + S(60) - 1, KB_QUOTA_REQUESTS_PER_MINUTE).used, 2);
        assert_int_equal(kbt_window(q, "a", T0 + S(60), KB_QUOTA_REQUESTS_PER_MINUTE).used, 1);
        assert_int_equal(kb_quota_reserve(q, "a", T0 + S(60), 0, 0, &r3, &d), 0);
        kb_quota_settle(r3, T0 + S(61), 0, 0);

        /* Now T0+10 and T0+60 count: the next one frees at T0 + 70 s. */
        assert_int_equal(kb_quota_reserve(q, "a", T0 + S(65), 0, 0, &r3, &d), -EDQUOT);
        assert_int_equal(d.reset_usec, T0 + S(70));
        /* still within 60 s of the first denial (at T0+30): not journaled again */
        assert_false(d.first_in_window);
        assert_int_equal(kb_quota_reserve(q, "a", T0 + S(90), 0, 0, &r3, &d), 0);
        kb_quota_cancel(r3);
        assert_int_equal(kb_quota_reserve(q, "a", T0 + S(95), 0, 0, &r3, &d), -EDQUOT);
        assert_true(d.first_in_window); /* a new window of denials */
        assert_int_equal(d.reset_usec, T0 + S(120));

        kb_quota_free(q);
}

static void test_sliding_unaligned(void **state) {
        struct kb_team t = kbt_team("a");
        struct kb_reservation *r = NULL;
        t.requests_per_minute = 1;
        t.tokens_per_minute = 100;
        struct kb_quota *q = kbt_quota(&t, 1);
        struct kb_quota_window w;

        /* Within a second, usage counts up to the next whole second + 60 s:
         * never less than 60 s. */
        assert_int_equal(kb_quota_reserve(q, "a", T0 + 300000, 10, 0, &r, NULL), 0);
        w = kbt_window(q, "a", T0 + 300000, KB_QUOTA_TOKENS_PER_MINUTE);
        assert_int_equal(w.used, 0);
        assert_int_equal(w.reserved, 10);
        assert_int_equal(w.remaining, 90);
        kb_quota_settle(r, T0 + 500000, 40, 0);
        w = kbt_window(q, "a", T0 + S(60) + 500000 - 1, KB_QUOTA_TOKENS_PER_MINUTE);
        assert_int_equal(w.used, 40);
        assert_int_equal(w.reserved, 0);
        assert_int_equal(w.reset_usec, T0 + S(61));
        assert_int_equal(kbt_window(q, "a", T0 + S(61) - 1, KB_QUOTA_REQUESTS_PER_MINUTE).used, 1);
        assert_int_equal(kbt_window(q, "a", T0 + S(61) - 1, KB_QUOTA_REQUESTS_PER_MINUTE).reset_usec, T0 + S(61));
        assert_int_equal(kbt_window(q, "a", T0 + S(61), KB_QUOTA_REQUESTS_PER_MINUTE).used, 0);
        assert_int_equal(kbt_window(q, "a", T0 + S(61), KB_QUOTA_TOKENS_PER_MINUTE).used, 0);
        assert_int_equal(kbt_window(q, "a", T0 + S(61), KB_QUOTA_TOKENS_PER_MINUTE).reset_usec, 0);
        /* the ring is reused after a long pause without stale buckets */
        assert_int_equal(kb_quota_reserve(q, "a", T0 + S(3600), 0, 0, &r, NULL), 0);
        kb_quota_settle(r, T0 + S(3600), 5, 0);
        assert_int_equal(kbt_window(q, "a", T0 + S(3600), KB_QUOTA_TOKENS_PER_MINUTE).used, 5);
        kb_quota_free(q);
}

/* 60 reservations at a limit that fits exactly 20, with settles of zero
 * usage interleaved pseudo-randomly: exactly 20 admitted. */
/* What the quota store admitted is reserved unchecked; what it refused is
 * withdrawn and leaves no trace; the fleet share scales a fleet team only. */
static void test_fleet_paths(void **state) {
        struct kb_team t = kbt_team("a");
        t.requests_per_minute = 4;
        struct kb_quota *q = kbt_quota(&t, 1);
        struct kb_reservation *r[6] = {};

        for (int i = 0; i < 6; i++)
                assert_int_equal(kb_quota_reserve_unchecked(q, "a", T0 + (uint64_t) i, 0, 0, &r[i]), 0);
        assert_int_equal(kbt_window(q, "a", T0 + 10, KB_QUOTA_REQUESTS_PER_MINUTE).used, 6);
        for (int i = 0; i < 6; i++)
                kb_quota_withdraw(r[i]);
        assert_int_equal(kbt_window(q, "a", T0 + 10, KB_QUOTA_REQUESTS_PER_MINUTE).used, 0);
        assert_int_equal(kbt_window(q, "a", T0 + 10, KB_QUOTA_MAX_CONCURRENT).used, 0);
        /* not a fleet team (no store configured): the share does not apply */
        kb_quota_set_fleet_share(q, KB_QUOTA_SHARE_ALL / 2);
        assert_false(kb_quota_team_is_fleet(q, "a"));
        for (int i = 0; i < 4; i++)
                assert_int_equal(kb_quota_reserve(q, "a", T0 + S(1), 0, 0, &r[i], NULL), 0);
        assert_int_equal(kb_quota_reserve(q, "a", T0 + S(1), 0, 0, &r[4], NULL), -EDQUOT);
        for (int i = 0; i < 4; i++)
                kb_quota_settle(r[i], T0 + S(2), 0, 0);
        kb_quota_free(q);
        (void) state;
}

static void test_burst_rpm(void **state) {
        struct kb_team t = kbt_team("a");
        t.requests_per_minute = 20;
        struct kb_reservation *open[60] = {};
        unsigned seed = 12345;

        for (int round = 0; round < 50; round++) {
                struct kb_quota *q = kbt_quota(&t, 1);
                size_t n_open = 0, admitted = 0;

                for (int i = 0; i < 60; i++) {
                        struct kb_reservation *r = NULL;
                        int k;

                        seed = seed * 1103515245 + 12345;
                        if (n_open > 0 && (seed >> 16) % 2 == 0) {
                                size_t j = (seed >> 8) % n_open;
                                kb_quota_settle(open[j], T0 + S(1) + (uint64_t) i, 0, 0);
                                open[j] = open[--n_open];
                        }
                        k = kb_quota_reserve(q, "a", T0 + (uint64_t) i * 1000, 0, 0, &r, NULL);
                        if (k == 0) {
                                open[n_open++] = r;
                                admitted++;
                        } else
                                assert_int_equal(k, -EDQUOT);
                }
                assert_int_equal(admitted, 20);
                for (size_t j = 0; j < n_open; j++)
                        kb_quota_settle(open[j], T0 + S(2), 0, 0);
                kb_quota_free(q);
        }
}

static void test_burst_tokens_budget_concurrency(void **state) {
        struct kb_team teams[3] = { kbt_team("tpm"), kbt_team("usd"), kbt_team("conc") };
        teams[0].tokens_per_minute = 2000;
        teams[0].tokens_per_day = 100000;
        teams[1].budget_microusd_per_day = 20 * 123;
        teams[2].max_concurrent = 20;
        struct kb_quota *q = kbt_quota(teams, 3);
        struct kb_reservation *res[3][60] = {};
        struct kb_quota_denial d;
        int admitted[3] = {};

        for (int i = 0; i < 60; i++)
                for (int k = 0; k < 3; k++) {
                        int r = kb_quota_reserve(q, teams[k].name, T0, 100, 123, &res[k][i], &d);
                        if (r == 0)
                                admitted[k]++;
                        else {
                                assert_int_equal(r, -EDQUOT);
                                assert_null(res[k][i]);
                        }
                }
        assert_int_equal(admitted[0], 20);
        assert_int_equal(admitted[1], 20);
        assert_int_equal(admitted[2], 20);

        /* the denial of each */
        assert_int_equal(kb_quota_reserve(q, "tpm", T0, 100, 0, &res[0][59], &d), -EDQUOT);
        assert_int_equal(d.limit, KB_QUOTA_TOKENS_PER_MINUTE);
        assert_int_equal(d.used, 2000);
        assert_int_equal(d.reset_usec, 0); /* held by reservations in flight */
        assert_true(d.rate);
        assert_int_equal(kb_quota_reserve(q, "usd", T0, 0, 1, &res[1][59], &d), -EDQUOT);
        assert_int_equal(d.limit, KB_QUOTA_BUDGET_PER_DAY);
        assert_int_equal(d.used, 20 * 123);
        assert_false(d.rate);
        assert_int_equal(kb_quota_reserve(q, "conc", T0, 0, 0, &res[2][59], &d), -EDQUOT);
        assert_int_equal(d.limit, KB_QUOTA_MAX_CONCURRENT);
        assert_int_equal(d.used, 20);
        assert_int_equal(d.max, 20);
        assert_int_equal(d.reset_usec, 0);
        assert_true(d.rate);

        /* one concurrency slot frees at settle, and only one */
        struct kb_quota_view v;
        assert_int_equal(kb_quota_view(q, "conc", T0, &v), 0);
        assert_int_equal(v.in_flight, 20);
        assert_int_equal(v.windows[KB_QUOTA_MAX_CONCURRENT].used, 20);
        assert_int_equal(v.windows[KB_QUOTA_MAX_CONCURRENT].remaining, 0);
        kb_quota_settle(res[2][0], T0 + 1, 100, 0);
        assert_int_equal(kb_quota_reserve(q, "conc", T0 + 2, 0, 0, &res[2][0], NULL), 0);
        assert_int_equal(kb_quota_reserve(q, "conc", T0 + 2, 0, 0, &res[2][59], NULL), -EDQUOT);

        for (int k = 0; k < 3; k++)
                for (int i = 0; i < 60; i++)
                        kb_quota_settle(res[k][i], T0 + S(1), 0, 0);
        assert_int_equal(kb_quota_view(q, "conc", T0 + S(1), &v), 0);
        assert_int_equal(v.in_flight, 0);
        assert_int_equal(kb_quota_view(q, "tpm", T0 + S(1), &v), 0);
        assert_int_equal(v.windows[KB_QUOTA_TOKENS_PER_MINUTE].reserved, 0);
        assert_int_equal(v.windows[KB_QUOTA_TOKENS_PER_DAY].reserved, 0);
        kb_quota_free(q);
}

static void test_overestimate_released(void **state) {
        struct kb_team t = kbt_team("a");
        t.tokens_per_minute = 1000;
        t.budget_microusd_per_month = 1000;
        struct kb_quota *q = kbt_quota(&t, 1);
        struct kb_reservation *r1 = NULL, *r2 = NULL, *r3 = NULL;

        assert_int_equal(kb_quota_reserve(q, "a", T0, 400, 400, &r1, NULL), 0);
        assert_int_equal(kb_quota_reserve(q, "a", T0, 400, 400, &r2, NULL), 0);
        assert_int_equal(kb_quota_reserve(q, "a", T0, 400, 400, &r3, NULL), -EDQUOT);
        /* the first used much less than it held */
        kb_quota_settle(r1, T0 + S(1), 100, 100);
        assert_int_equal(kb_quota_reserve(q, "a", T0 + S(1), 400, 400, &r3, NULL), 0);
        assert_int_equal(kbt_window(q, "a", T0 + S(1), KB_QUOTA_TOKENS_PER_MINUTE).used, 100);
        assert_int_equal(kbt_window(q, "a", T0 + S(1), KB_QUOTA_TOKENS_PER_MINUTE).reserved, 800);
        assert_int_equal(kbt_window(q, "a", T0 + S(1), KB_QUOTA_TOKENS_PER_MINUTE).remaining, 100);
        assert_int_equal(kbt_window(q, "a", T0 + S(1), KB_QUOTA_BUDGET_PER_MONTH).remaining, 100);
        /* used above the estimate counts in full, even past the limit */
        kb_quota_settle(r2, T0 + S(2), 1500, 1500);
        assert_int_equal(kbt_window(q, "a", T0 + S(2), KB_QUOTA_TOKENS_PER_MINUTE).used, 1600);
        assert_int_equal(kbt_window(q, "a", T0 + S(2), KB_QUOTA_TOKENS_PER_MINUTE).remaining, 0);
        assert_int_equal(kbt_window(q, "a", T0 + S(2), KB_QUOTA_BUDGET_PER_MONTH).used, 1600);
        kb_quota_settle(r3, T0 + S(2), 0, 0);
        kb_quota_free(q);
}

static void test_budget_exact_microusd(void **state) {
        struct kb_team t = kbt_team("a");
        t.budget_microusd_per_day = 1000000; /* 1 USD */
        struct kb_quota *q = kbt_quota(&t, 1);
        struct kb_reservation *r = NULL;
        struct kb_quota_denial d;

        assert_int_equal(kb_quota_reserve(q, "a", T0, 0, 1000001, &r, &d), -EDQUOT);
        assert_int_equal(d.reset_usec, 0); /* bigger than the budget: never fits */
        assert_int_equal(kb_quota_reserve(q, "a", T0, 0, 1000000, &r, NULL), 0);
        kb_quota_settle(r, T0, 0, 999999);
        assert_int_equal(kb_quota_reserve(q, "a", T0, 0, 2, &r, &d), -EDQUOT);
        assert_int_equal(d.used, 999999);
        assert_int_equal(d.requested, 2);
        assert_int_equal(d.max, 1000000);
        assert_string_equal(kb_quota_limit_to_string(d.limit), "budget_usd_per_day");
        assert_int_equal(kb_quota_reserve(q, "a", T0, 0, 1, &r, NULL), 0);
        kb_quota_settle(r, T0, 0, 1);
        assert_int_equal(kbt_window(q, "a", T0, KB_QUOTA_BUDGET_PER_DAY).remaining, 0);
        assert_int_equal(kb_quota_reserve(q, "a", T0, 0, 1, &r, NULL), -EDQUOT);
        /* a zero-cost call still fits an exhausted budget */
        assert_int_equal(kb_quota_reserve(q, "a", T0, 0, 0, &r, NULL), 0);
        kb_quota_settle(r, T0, 0, -5); /* negative counts as 0 */
        assert_int_equal(kbt_window(q, "a", T0, KB_QUOTA_BUDGET_PER_DAY).used, 1000000);
        kb_quota_free(q);
}

static void test_day_rollover(void **state) {
        struct kb_team t = kbt_team("a");
        t.tokens_per_day = 1000;
        t.budget_microusd_per_day = 500;
        struct kb_quota *q = kbt_quota(&t, 1);
        struct kb_reservation *r = NULL, *late = NULL;
        struct kb_quota_denial d;

        assert_int_equal(kb_quota_reserve(q, "a", MAY14_LATE, 1000, 0, &r, NULL), 0);
        kb_quota_settle(r, MAY14_LATE + S(1), 1000, 0);
        assert_int_equal(kb_quota_reserve(q, "a", MAY14_LATE + S(2), 1, 0, &r, &d), -EDQUOT);
        assert_int_equal(d.limit, KB_QUOTA_TOKENS_PER_DAY);
        assert_int_equal(d.reset_usec, MAY15);
        assert_false(d.rate);
        assert_string_equal(kb_quota_limit_error_type(d.limit), "insufficient_quota");
        assert_true(d.first_in_window);
        assert_int_equal(kb_quota_reserve(q, "a", MAY15 - 1, 1, 0, &r, &d), -EDQUOT);
        assert_false(d.first_in_window); /* once per day */
        assert_int_equal(kbt_window(q, "a", MAY15 - 1, KB_QUOTA_TOKENS_PER_DAY).reset_usec, MAY15);

        /* a call that starts before midnight and ends after it counts on the new day */
        assert_int_equal(kb_quota_reserve(q, "a", MAY15 - 1, 0, 100, &late, NULL), 0);
        assert_int_equal(kb_quota_reserve(q, "a", MAY15, 1000, 0, &r, NULL), 0);
        kb_quota_settle(r, MAY15 + S(1), 900, 0);
        kb_quota_settle(late, MAY15 + S(1), 100, 100);
        assert_int_equal(kbt_window(q, "a", MAY15 + S(1), KB_QUOTA_TOKENS_PER_DAY).used, 1000);
        assert_int_equal(kbt_window(q, "a", MAY15 + S(1), KB_QUOTA_BUDGET_PER_DAY).used, 100);
        assert_int_equal(kb_quota_reserve(q, "a", MAY15 + S(2), 1, 0, &r, &d), -EDQUOT);
        assert_true(d.first_in_window); /* a new day */
        assert_int_equal(d.reset_usec, MAY15 + S(86400));

        /* clock stepped back to yesterday: today's usage keeps counting */
        assert_int_equal(kbt_window(q, "a", MAY14_LATE, KB_QUOTA_TOKENS_PER_DAY).used, 1000);
        assert_int_equal(kb_quota_reserve(q, "a", MAY14_LATE, 1, 0, &r, &d), -EDQUOT);
        assert_int_equal(d.reset_usec, MAY15 + S(86400));
        kb_quota_free(q);
}

static void month_rollover_at(uint64_t now, uint64_t next) {
        struct kb_team t = kbt_team("m");
        t.budget_microusd_per_month = 1000;
        t.budget_microusd_per_day = 5000;
        struct kb_quota *q = kbt_quota(&t, 1);
        struct kb_reservation *r = NULL;
        struct kb_quota_denial d;

        assert_int_equal(kb_quota_reserve(q, "m", now, 0, 1000, &r, NULL), 0);
        kb_quota_settle(r, now, 10, 1000);
        assert_int_equal(kb_quota_reserve(q, "m", now + 1, 0, 1, &r, &d), -EDQUOT);
        assert_int_equal(d.limit, KB_QUOTA_BUDGET_PER_MONTH);
        assert_int_equal(d.reset_usec, next);
        assert_false(d.rate);
        assert_true(d.first_in_window);
        assert_int_equal(kb_quota_reserve(q, "m", next - 1, 0, 1, &r, &d), -EDQUOT);
        assert_false(d.first_in_window);
        assert_int_equal(kbt_window(q, "m", next - 1, KB_QUOTA_BUDGET_PER_MONTH).reset_usec, next);
        assert_int_equal(kb_quota_reserve(q, "m", next, 0, 1000, &r, NULL), 0);
        kb_quota_settle(r, next, 0, 1);
        struct kb_quota_view v;
        assert_int_equal(kb_quota_view(q, "m", next, &v), 0);
        assert_int_equal(v.windows[KB_QUOTA_BUDGET_PER_MONTH].used, 1);
        assert_int_equal(v.month_tokens, 0);
        kb_quota_free(q);
}

static void test_month_rollover(void **state) {
        month_rollover_at(S(1704067199), S(1704067200));        /* Dec 2023 -> Jan 2024 */
        month_rollover_at(S(1709208000), S(1709251200));        /* Feb 29 2024 -> Mar 1 */
        month_rollover_at(S(1677625200), S(1677628800));        /* Feb 28 2023 -> Mar 1 */
        month_rollover_at(MAY14_LATE, JUN1);
}

static void test_denial_order(void **state) {
        struct kb_team t = kbt_team("a");
        t.requests_per_minute = 1;
        t.budget_microusd_per_month = 10;
        struct kb_quota *q = kbt_quota(&t, 1);
        struct kb_reservation *r = NULL;
        struct kb_quota_denial d;

        assert_int_equal(kb_quota_reserve(q, "a", T0, 0, 10, &r, NULL), 0);
        kb_quota_settle(r, T0, 0, 10);
        /* both crossed: the monthly budget is what matters */
        assert_int_equal(kb_quota_reserve(q, "a", T0, 0, 1, &r, &d), -EDQUOT);
        assert_int_equal(d.limit, KB_QUOTA_BUDGET_PER_MONTH);
        /* only rpm crossed */
        assert_int_equal(kb_quota_reserve(q, "a", T0, 0, 0, &r, &d), -EDQUOT);
        assert_int_equal(d.limit, KB_QUOTA_REQUESTS_PER_MINUTE);
        assert_true(d.first_in_window); /* first of its own kind */
        kb_quota_free(q);
}

/* tokens_per_minute stops a stream too: settled minute usage plus every
 * reservation in flight; requests_per_minute (counted at admission) cannot. */
static void test_hard_stop_minute(void **state) {
        struct kb_team teams[1] = { kbt_team("a") };
        teams[0].tokens_per_minute = 500;
        teams[0].requests_per_minute = 2;
        struct kb_quota *q = kbt_quota(teams, 1);
        struct kb_reservation *r = NULL, *r2 = NULL;
        struct kb_quota_denial d = {};
        uint64_t tok;
        int64_t cost;

        assert_int_equal(kb_quota_reserve(q, "a", T0, 100, 0, &r2, NULL), 0);
        kb_quota_settle(r2, T0, 100, 0);
        assert_int_equal(kb_quota_reserve(q, "a", T0 + S(1), 300, 0, &r, NULL), 0);
        assert_int_equal(kb_quota_headroom(r, T0 + S(1), &tok, &cost), 0);
        assert_int_equal(tok, 100);
        assert_true(cost == INT64_MAX);
        assert_int_equal(kb_quota_grow(r, T0 + S(1), 400, 0, NULL), 0);
        assert_int_equal(kb_quota_grow(r, T0 + S(2), 401, 0, &d), -EDQUOT);
        assert_int_equal(d.limit, KB_QUOTA_TOKENS_PER_MINUTE);
        assert_true(d.rate);
        assert_int_equal(d.used, 100);
        assert_int_equal(d.requested, 401);
        assert_int_equal(kb_reservation_tokens(r), 400);
        /* once the settled minute usage has aged out, the same growth fits */
        assert_int_equal(kb_quota_grow(r, T0 + S(62), 500, 0, NULL), 0);
        /* requests_per_minute is full (2 admitted), but growth adds no request */
        assert_int_equal(kb_quota_grow(r, T0 + S(62), 500, 0, NULL), 0);
        kb_quota_settle(r, T0 + S(62), 500, 0);
        kb_quota_free(q);
}

static void test_hard_stop(void **state) {
        struct kb_team teams[2] = { kbt_team("a"), kbt_team("free") };
        teams[0].tokens_per_day = 1000;
        teams[0].budget_microusd_per_day = 10000;
        teams[0].budget_microusd_per_month = 8000;
        teams[0].tokens_per_minute = 5000; /* above the day's: not the one that stops here */
        struct kb_quota *q = kbt_quota(teams, 2);
        struct kb_reservation *r = NULL, *other = NULL;
        struct kb_quota_denial d;
        uint64_t tok;
        int64_t cost;

        assert_int_equal(kb_quota_reserve(q, "a", T0, 300, 1000, &r, NULL), 0);
        assert_string_equal(kb_reservation_team(r), "a");
        assert_int_equal(kb_quota_headroom(r, T0, &tok, &cost), 0);
        assert_int_equal(tok, 700);
        assert_int_equal(cost, 7000); /* the month is the tighter budget */

        assert_int_equal(kb_quota_grow(r, T0, 900, 2000, NULL), 0);
        assert_int_equal(kb_reservation_tokens(r), 900);
        assert_int_equal(kb_reservation_cost(r), 2000);
        assert_int_equal(kb_quota_headroom(r, T0, &tok, &cost), 0);
        assert_int_equal(tok, 100);
        assert_int_equal(cost, 6000);
        /* others see the grown reservation */
        assert_int_equal(kb_quota_reserve(q, "a", T0, 101, 0, &other, &d), -EDQUOT);
        assert_int_equal(d.limit, KB_QUOTA_TOKENS_PER_DAY);
        /* shrinking is a no-op */
        assert_int_equal(kb_quota_grow(r, T0, 10, 10, NULL), 0);
        assert_int_equal(kb_reservation_tokens(r), 900);
        assert_int_equal(kb_reservation_cost(r), 2000);

        /* growing across the limit is refused, the reservation unchanged */
        memset(&d, 0, sizeof(d));
        assert_int_equal(kb_quota_grow(r, T0 + S(1), 1001, 2000, &d), -EDQUOT);
        assert_int_equal(d.limit, KB_QUOTA_TOKENS_PER_DAY);
        assert_int_equal(d.used, 0);
        assert_int_equal(d.requested, 1001);
        assert_int_equal(d.max, 1000);
        assert_false(d.rate);
        assert_false(d.first_in_window); /* "other" was refused by this limit today already */
        assert_int_equal(kb_reservation_tokens(r), 900);
        assert_int_equal(kb_quota_grow(r, T0, 1000, 2000, NULL), 0); /* exactly at the limit */
        assert_int_equal(kb_quota_grow(r, T0, 1000, 8001, &d), -EDQUOT);
        assert_int_equal(d.limit, KB_QUOTA_BUDGET_PER_MONTH);
        assert_int_equal(d.requested, 8001);
        assert_int_equal(kb_reservation_cost(r), 2000);
        assert_int_equal(kb_quota_grow(r, T0, 1000, -1, NULL), -EINVAL);
        assert_int_equal(kb_quota_grow(NULL, T0, 1000, 1, NULL), -EINVAL);
        assert_int_equal(kb_quota_headroom(NULL, T0, &tok, &cost), -EINVAL);

        /* settle with what was delivered */
        kb_quota_settle(r, T0 + S(2), 1000, 8000);
        assert_int_equal(kbt_window(q, "a", T0 + S(2), KB_QUOTA_TOKENS_PER_DAY).used, 1000);
        assert_int_equal(kbt_window(q, "a", T0 + S(2), KB_QUOTA_TOKENS_PER_DAY).reserved, 0);

        /* a team without such limits has unlimited headroom */
        assert_int_equal(kb_quota_reserve(q, "free", T0, 5, 5, &r, NULL), 0);
        assert_int_equal(kb_quota_headroom(r, T0, &tok, &cost), 0);
        assert_true(tok == UINT64_MAX);
        assert_true(cost == INT64_MAX);
        assert_int_equal(kb_quota_grow(r, T0, UINT64_MAX, INT64_MAX, NULL), 0);
        kb_quota_settle(r, T0, UINT64_MAX, INT64_MAX); /* saturates, no wrap */
        assert_true(kbt_window(q, "free", T0, KB_QUOTA_TOKENS_PER_DAY).used == UINT64_MAX);
        assert_true(kbt_window(q, "free", T0, KB_QUOTA_TOKENS_PER_DAY).remaining == UINT64_MAX);
        kb_quota_free(q);
}

static void test_reconfigure(void **state) {
        struct kb_team v1[2] = { kbt_team("a"), kbt_team("b") };
        v1[0].tokens_per_day = 100;
        v1[1].max_concurrent = 1;
        struct kb_quota *q = kbt_quota(v1, 2);
        struct kb_reservation *ra = NULL, *rb = NULL, *r = NULL;

        assert_int_equal(kb_quota_reserve(q, "a", T0, 50, 0, &ra, NULL), 0);
        assert_int_equal(kb_quota_reserve(q, "b", T0, 50, 0, &rb, NULL), 0);
        assert_int_equal(kb_quota_reserve(q, "a", T0, 0, 0, &r, NULL), 0);
        kb_quota_settle(r, T0, 30, 0);

        /* duplicate names: refused, nothing changed */
        struct kb_team dup[2] = { kbt_team("a"), kbt_team("a") };
        struct kb_config cd = { .teams = dup, .n_teams = 2 };
        assert_int_equal(kb_quota_configure(q, &cd), -EINVAL);
        assert_int_equal(kbt_window(q, "a", T0, KB_QUOTA_TOKENS_PER_DAY).limit, 100);
        struct kb_team unnamed = kbt_team(NULL);
        struct kb_config cu = { .teams = &unnamed, .n_teams = 1 };
        assert_int_equal(kb_quota_configure(q, &cu), -EINVAL);
        struct kb_config cn = { .teams = NULL, .n_teams = 1 };
        assert_int_equal(kb_quota_configure(q, &cn), -EINVAL);
        assert_int_equal(kb_quota_configure(q, NULL), -EINVAL);

        struct kb_team v2[2] = { kbt_team("c"), kbt_team("a") };
        v2[1].tokens_per_day = 200;
        struct kb_config c2 = { .teams = v2, .n_teams = 2 };
        assert_int_equal(kb_quota_configure(q, &c2), 0);

        struct kb_quota_view v;
        assert_int_equal(kb_quota_view(q, "a", T0, &v), 0);
        assert_int_equal(v.windows[KB_QUOTA_TOKENS_PER_DAY].limit, 200);
        assert_int_equal(v.windows[KB_QUOTA_TOKENS_PER_DAY].used, 30);
        assert_int_equal(v.windows[KB_QUOTA_TOKENS_PER_DAY].reserved, 50);
        assert_int_equal(v.windows[KB_QUOTA_TOKENS_PER_DAY].remaining, 120);
        assert_int_equal(v.windows[KB_QUOTA_REQUESTS_PER_MINUTE].used, 2);
        assert_int_equal(v.in_flight, 1);
        assert_int_equal(kb_quota_view(q, "b", T0, &v), -ENOENT);
        assert_int_equal(kb_quota_reserve(q, "b", T0, 0, 0, &r, NULL), -ENOENT);
        assert_int_equal(kb_quota_view(q, "c", T0, &v), 0);
        assert_int_equal(v.windows[KB_QUOTA_REQUESTS_PER_MINUTE].used, 0);

        /* the reservations in flight still work: b's settles into nothing */
        assert_string_equal(kb_reservation_team(rb), "b");
        kb_quota_settle(rb, T0 + 1, 10, 10);
        kb_quota_settle(ra, T0 + 1, 70, 0);
        assert_int_equal(kbt_window(q, "a", T0 + 1, KB_QUOTA_TOKENS_PER_DAY).used, 100);
        assert_int_equal(kbt_window(q, "a", T0 + 1, KB_QUOTA_TOKENS_PER_DAY).reserved, 0);

        /* b comes back: a fresh counter */
        struct kb_team v3[1] = { kbt_team("b") };
        struct kb_config c3 = { .teams = v3, .n_teams = 1 };
        assert_int_equal(kb_quota_configure(q, &c3), 0);
        assert_int_equal(kbt_window(q, "b", T0 + 1, KB_QUOTA_REQUESTS_PER_MINUTE).used, 0);
        assert_int_equal(kb_quota_view(q, "a", T0, &v), -ENOENT);

        /* an empty configuration, and a reservation outliving the quota */
        assert_int_equal(kb_quota_reserve(q, "b", T0 + 2, 0, 0, &rb, NULL), 0);
        struct kb_config c4 = {};
        assert_int_equal(kb_quota_configure(q, &c4), 0);
        assert_null(kb_quota_free(q));
        kb_quota_settle(rb, T0 + 3, 1, 1);
        kb_quota_free(NULL);
        kb_quota_settle(NULL, T0, 0, 0);
        kb_quota_cancel(NULL);
}

static void test_bad_input(void **state) {
        struct kb_team t = kbt_team("a");
        struct kb_quota *q = kbt_quota(&t, 1);
        struct kb_reservation *r = NULL;
        struct kb_quota_view v;

        assert_int_equal(kb_quota_new(NULL), -EINVAL);
        assert_int_equal(kb_quota_reserve(q, "a", T0, 0, -1, &r, NULL), -EINVAL);
        assert_int_equal(kb_quota_reserve(q, NULL, T0, 0, 0, &r, NULL), -EINVAL);
        assert_int_equal(kb_quota_reserve(NULL, "a", T0, 0, 0, &r, NULL), -EINVAL);
        assert_int_equal(kb_quota_reserve(q, "a", T0, 0, 0, NULL, NULL), -EINVAL);
        assert_int_equal(kb_quota_reserve(q, "nobody", T0, 0, 0, &r, NULL), -ENOENT);
        assert_int_equal(kb_quota_reserve(q, "", T0, 0, 0, &r, NULL), -ENOENT);
        assert_null(r);
        assert_int_equal(kb_quota_view(q, "nobody", T0, &v), -ENOENT);
        assert_int_equal(kb_quota_view(q, "a", T0, NULL), -EINVAL);
        assert_int_equal(kb_quota_account(q, "a", T0, 1, -1), -EINVAL);
        assert_int_equal(kb_quota_account(q, "nobody", T0, 1, 1), -ENOENT);
        assert_int_equal(kb_quota_account(NULL, "a", T0, 1, 1), -EINVAL);
        assert_null(kb_reservation_team(NULL));
        assert_int_equal(kb_reservation_tokens(NULL), 0);

        /* no limits: everything admitted, windows say so */
        assert_int_equal(kb_quota_reserve(q, "a", T0, UINT64_MAX, INT64_MAX, &r, NULL), 0);
        assert_int_equal(kb_quota_view(q, "a", T0, &v), 0);
        for (int l = 0; l < _KB_QUOTA_LIMIT_MAX; l++) {
                assert_int_equal(v.windows[l].limit, 0);
                assert_true(v.windows[l].remaining == UINT64_MAX);
        }
        kb_quota_cancel(r);

        /* absurd times are clamped (end of year 9999), not wrapped */
        assert_int_equal(kb_quota_reserve(q, "a", UINT64_MAX, 1, 1, &r, NULL), 0);
        kb_quota_settle(r, UINT64_MAX, 1, 1);
        assert_int_equal(kbt_window(q, "a", UINT64_MAX, KB_QUOTA_TOKENS_PER_DAY).used, 1);
        assert_true(kbt_window(q, "a", UINT64_MAX, KB_QUOTA_TOKENS_PER_DAY).reset_usec > S(253402300799));
        assert_true(kb_quota_next_month_usec(UINT64_MAX) > S(253402300799));
        assert_true(kb_quota_next_day_usec(UINT64_MAX) > S(253402300799));
        assert_int_equal(kb_quota_account(q, "a", UINT64_MAX, 1, 1), 0);
        kb_quota_free(q);
}

/* replay through account() ends where live accounting ended */
static void test_account_equals_live(void **state) {
        struct kb_team teams[1] = { kbt_team("a") };
        teams[0].requests_per_minute = 1000;
        teams[0].tokens_per_minute = 100000;
        teams[0].tokens_per_day = 1000000;
        teams[0].budget_microusd_per_day = 1000000;
        teams[0].budget_microusd_per_month = 10000000;
        struct kb_quota *live = kbt_quota(teams, 1), *replay = kbt_quota(teams, 1);
        uint64_t t = MAY15 - S(100);
        unsigned seed = 7;

        for (int i = 0; i < 200; i++) {
                struct kb_reservation *r = NULL;
                uint64_t tokens;
                int64_t cost;

                seed = seed * 1103515245 + 12345;
                t += (uint64_t) ((seed >> 8) % 2000) * 1000 + (seed & 7);
                tokens = (seed >> 4) % 300;
                cost = (int64_t) ((seed >> 10) % 500);
                assert_int_equal(kb_quota_reserve(live, "a", t, 300, 500, &r, NULL), 0);
                kb_quota_settle(r, t, tokens, cost);
                assert_int_equal(kb_quota_account(replay, "a", t, tokens, cost), 0);
        }
        assert_true(t > MAY15); /* crossed midnight */
        for (uint64_t now = t; now < t + S(70); now += S(7) + 1234) {
                struct kb_quota_view a, b;

                assert_int_equal(kb_quota_view(live, "a", now, &a), 0);
                assert_int_equal(kb_quota_view(replay, "a", now, &b), 0);
                assert_memory_equal(&a, &b, sizeof(a));
        }

        /* a replayed record of an earlier day than the counters is stale */
        struct kb_quota_window before = kbt_window(replay, "a", t, KB_QUOTA_TOKENS_PER_DAY);
        assert_int_equal(kb_quota_account(replay, "a", MAY14_LATE, 5, 5), 0);
        assert_int_equal(kbt_window(replay, "a", t, KB_QUOTA_TOKENS_PER_DAY).used, before.used);

        /* records slightly out of order still count; a much older one never
         * displaces newer usage sharing its ring slot */
        kb_quota_free(replay);
        replay = kbt_quota(teams, 1);
        assert_int_equal(kb_quota_account(replay, "a", T0 + S(100), 1, 0), 0);
        assert_int_equal(kb_quota_account(replay, "a", T0 + S(90), 2, 0), 0);
        assert_int_equal(kb_quota_account(replay, "a", T0 + S(39), 4, 0), 0);
        assert_int_equal(kbt_window(replay, "a", T0 + S(100), KB_QUOTA_REQUESTS_PER_MINUTE).used, 2);
        assert_int_equal(kbt_window(replay, "a", T0 + S(100), KB_QUOTA_TOKENS_PER_MINUTE).used, 3);
        assert_int_equal(kbt_window(replay, "a", T0 + S(100), KB_QUOTA_TOKENS_PER_DAY).used, 7);
        kb_quota_free(live);
        kb_quota_free(replay);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_limit_names),
                cmocka_unit_test(test_calendar),
                cmocka_unit_test(test_sliding_minute),
                cmocka_unit_test(test_sliding_unaligned),
                cmocka_unit_test(test_burst_rpm),
                cmocka_unit_test(test_fleet_paths),
                cmocka_unit_test(test_burst_tokens_budget_concurrency),
                cmocka_unit_test(test_overestimate_released),
                cmocka_unit_test(test_budget_exact_microusd),
                cmocka_unit_test(test_day_rollover),
                cmocka_unit_test(test_month_rollover),
                cmocka_unit_test(test_denial_order),
                cmocka_unit_test(test_hard_stop),
                cmocka_unit_test(test_hard_stop_minute),
                cmocka_unit_test(test_reconfigure),
                cmocka_unit_test(test_bad_input),
                cmocka_unit_test(test_account_equals_live),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
