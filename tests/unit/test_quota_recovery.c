/* SPDX-License-Identifier: MIT */
/* Quota recovery: the snapshot cursor, parsing request records for replay,
 * the quota token count, and a snapshot round that refuses to save while
 * the journal writer lags or dropped records. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <sys/stat.h>
#include <time.h>

#include "helper.h"
#include "quota-recovery.h"
#include "usage.h"
#include "util.h"

#define S(x) ((uint64_t) (x) * USEC_PER_SEC)

/* ---- cursor ---- */

static void test_mark_round_trip(void **state) {
        struct kb_quota_mark m = { .seq = 42 }, back;
        char buf[128];

        assert_int_equal(kb_quota_mark_format(&m, buf, sizeof(buf)), strlen("seq=42"));
        assert_string_equal(buf, "seq=42");
        assert_int_equal(kb_quota_mark_parse(buf, &back), 0);
        assert_int_equal(back.seq, 42);
        assert_false(back.has_time);

        m = (struct kb_quota_mark) { .seq = UINT64_MAX, .has_time = true, .mono_usec = 123456789,
                                     .realtime_usec = S(1700000000) + 7 };
        assert_int_equal(sd_id128_from_string("0123456789abcdef0123456789abcdef", &m.boot_id), 0);
        assert_true(kb_quota_mark_format(&m, buf, sizeof(buf)) > 0);
        assert_string_equal(buf, "seq=18446744073709551615 boot=0123456789abcdef0123456789abcdef mono=123456789 "
                                 "realtime=1700000000000007");
        assert_int_equal(kb_quota_mark_parse(buf, &back), 0);
        assert_int_equal(back.seq, UINT64_MAX);
        assert_true(back.has_time);
        assert_true(sd_id128_equal(back.boot_id, m.boot_id));
        assert_int_equal(back.mono_usec, 123456789);
        assert_int_equal(back.realtime_usec, S(1700000000) + 7);

        /* Too small a buffer. */
        assert_int_equal(kb_quota_mark_format(&m, buf, 20), -ENOBUFS);
        m.has_time = false;
        assert_int_equal(kb_quota_mark_format(&m, buf, 5), -ENOBUFS);

        /* Order is free; unknown words are skipped. */
        assert_int_equal(kb_quota_mark_parse("future=x seq=7", &back), 0);
        assert_int_equal(back.seq, 7);
        assert_int_equal(kb_quota_mark_parse("realtime=5 mono=4 boot=0123456789abcdef0123456789abcdef seq=0",
                                             &back), 0);
        assert_int_equal(back.seq, 0);
        assert_int_equal(back.realtime_usec, 5);
        assert_int_equal(back.mono_usec, 4);
        assert_string_equal(back.journal_cursor, "");

        /* The journal position: carried as it is. */
        static const char jc[] = "s=0123456789abcdef0123456789abcdef;i=1a2b;b=0123456789abcdef0123456789abcdef;"
                                 "m=9f;t=5f0e1d2c3b4a5;x=1122334455667788";
        char big[128 + KB_QUOTA_JOURNAL_CURSOR_MAX];
        m = (struct kb_quota_mark) { .seq = 9, .has_time = true, .mono_usec = 1, .realtime_usec = 2 };
        strcpy(m.journal_cursor, jc);
        assert_true(kb_quota_mark_format(&m, big, sizeof(big)) > 0);
        assert_non_null(strstr(big, " journal="));
        assert_int_equal(kb_quota_mark_parse(big, &back), 0);
        assert_string_equal(back.journal_cursor, jc);
        assert_int_equal(back.seq, 9);
        assert_int_equal(kb_quota_mark_format(&m, big, 100), -ENOBUFS);
}

static void test_mark_bad(void **state) {
        static const char *const bad[] = {
                "", " ", "seq", "seq=", "seq=-1", "seq=+1", "seq=1x", "seq= 1", "seq=1 ", " seq=1", "seq=1  x=2",
                "seq=18446744073709551616", "seq=99999999999999999999", "seq=1 seq=2", "=1 seq=1", "seq=1 junk",
                "mono=1", "x=1",
                /* time words come as a set of three */
                "seq=1 mono=2", "seq=1 boot=0123456789abcdef0123456789abcdef",
                "seq=1 boot=0123456789abcdef0123456789abcdef mono=2",
                "seq=1 boot=0123456789abcdef0123456789abcdeg mono=2 realtime=3",
                "seq=1 boot=0123456789abcdef mono=2 realtime=3",
                "seq=1 boot=0123456789abcdef0123456789abcdef00 mono=2 realtime=3",
                "seq=1 boot=0123456789abcdef0123456789abcdef mono=2 realtime=3 mono=2",
                "seq=1 boot=0123456789abcdef0123456789abcdef mono=x realtime=3",
                "seq=1 journal=", "seq=1 journal=a journal=b",
        };
        struct kb_quota_mark m = { .seq = 99 };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                if (kb_quota_mark_parse(bad[i], &m) != -EINVAL)
                        fail_msg("accepted \"%s\"", bad[i]);
                assert_int_equal(m.seq, 99); /* untouched */
        }
        assert_int_equal(kb_quota_mark_parse(NULL, &m), -EINVAL);
}

static uint64_t utc(int y, int mon, int d, int h, int mi, int s) {
        struct tm tm = { .tm_year = y - 1900, .tm_mon = mon - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi,
                         .tm_sec = s };
        return (uint64_t) timegm(&tm) * USEC_PER_SEC;
}

static void test_month_start(void **state) {
        assert_int_equal(kb_quota_month_start_usec(utc(2026, 11, 25, 7, 51, 46) + 123), utc(2026, 11, 1, 0, 0, 0));
        assert_int_equal(kb_quota_month_start_usec(utc(2026, 11, 1, 0, 0, 0)), utc(2026, 11, 1, 0, 0, 0));
        assert_int_equal(kb_quota_month_start_usec(utc(2026, 11, 1, 0, 0, 0) - 1), utc(2026, 10, 1, 0, 0, 0));
        assert_int_equal(kb_quota_month_start_usec(utc(2024, 2, 29, 23, 59, 59)), utc(2024, 2, 1, 0, 0, 0));
        assert_int_equal(kb_quota_month_start_usec(utc(2027, 1, 1, 0, 0, 1)), utc(2027, 1, 1, 0, 0, 0));
        assert_int_equal(kb_quota_month_start_usec(0), 0);
        /* Agrees with quota.c's calendar. */
        uint64_t t = utc(2026, 12, 31, 23, 0, 0);
        assert_int_equal(kb_quota_month_start_usec(kb_quota_next_month_usec(t)), kb_quota_next_month_usec(t));
}

static void test_replay_since(void **state) {
        uint64_t now = kb_realtime_usec(), month = kb_quota_month_start_usec(now);
        uint64_t margin = KB_QUOTA_REPLAY_MARGIN_USEC;
        struct kb_quota_mark m = { .seq = 3 };
        uint64_t since;

        /* No time: the whole month. */
        assert_int_equal(kb_quota_replay_since(&m, now), month);

        /* Another boot: the snapshot's time less the margin, never before the month. */
        m.has_time = true;
        assert_int_equal(sd_id128_from_string("0123456789abcdef0123456789abcdef", &m.boot_id), 0);
        m.realtime_usec = now - S(30);
        m.mono_usec = 1;
        assert_int_equal(kb_quota_replay_since(&m, now), MAX(month, now - S(30) - margin));
        m.realtime_usec = month + S(1);
        assert_int_equal(kb_quota_replay_since(&m, now), month);

        /* The clock is behind the snapshot: it was stepped back, the whole month. */
        m.realtime_usec = now + S(5);
        assert_int_equal(kb_quota_replay_since(&m, now), month);

        /* This boot, clock steady: the margin only (give or take the
         * microseconds between the two clock readings). */
        assert_int_equal(sd_id128_get_boot(&m.boot_id), 0);
        m.realtime_usec = now - S(20);
        m.mono_usec = kb_now_usec() - S(20);
        since = kb_quota_replay_since(&m, now);
        assert_true(since <= MAX(month, now - S(20) - margin));
        assert_true(since >= MAX(month, now - S(21) - margin));
        /* This boot, 100 s passed but the clock shows 20: stepped back 80 s more. */
        m.mono_usec = kb_now_usec() - S(100);
        since = kb_quota_replay_since(&m, now);
        assert_true(since <= MAX(month, now - S(100) - margin));
        assert_true(since >= MAX(month, now - S(101) - margin));
}

/* ---- records ---- */

static int feed(struct kb_replay_record *rec, const char *item) {
        return kb_replay_record_add(rec, item, strlen(item));
}

static void feed_all(struct kb_replay_record *rec, const char *family) {
        char fam[64];

        kb_replay_record_init(rec);
        snprintf(fam, sizeof(fam), "KEYBROKER_FAMILY=%s", family);
        assert_int_equal(feed(rec, "MESSAGE_ID=65ab453e95ed4c0e99aea91870cea75c"), 0);
        assert_int_equal(feed(rec, "KEYBROKER_SEQ=17"), 0);
        assert_int_equal(feed(rec, "KEYBROKER_TEAM=search"), 0);
        assert_int_equal(feed(rec, fam), 0);
        assert_int_equal(feed(rec, "KEYBROKER_INPUT_TOKENS=100"), 0);
        assert_int_equal(feed(rec, "KEYBROKER_OUTPUT_TOKENS=20"), 0);
        assert_int_equal(feed(rec, "KEYBROKER_REASONING_TOKENS=5"), 0);
        assert_int_equal(feed(rec, "KEYBROKER_CACHED_TOKENS=30"), 0);
        assert_int_equal(feed(rec, "KEYBROKER_CACHE_WRITE_TOKENS=4"), 0);
        assert_int_equal(feed(rec, "KEYBROKER_COST_MICROUSD=219"), 0);
        assert_int_equal(feed(rec, "_PID=1"), 0);
}

static void test_record_parse(void **state) {
        struct kb_replay_record rec;

        feed_all(&rec, "openai");
        assert_int_equal(kb_replay_record_complete(&rec), 0);
        assert_string_equal(rec.team, "search");
        assert_int_equal(rec.seq, 17);
        assert_int_equal(rec.family, KB_FAMILY_OPENAI);
        assert_int_equal(rec.cost_microusd, 219);
        /* OpenAI's input includes its cached tokens. */
        assert_int_equal(kb_replay_record_tokens(&rec), 120);

        feed_all(&rec, "anthropic");
        assert_int_equal(kb_replay_record_complete(&rec), 0);
        assert_int_equal(kb_replay_record_tokens(&rec), 154);

        /* Each needed field is needed. */
        static const char *const needed[] = {
                "KEYBROKER_SEQ=1", "KEYBROKER_TEAM=t", "KEYBROKER_FAMILY=openai", "KEYBROKER_INPUT_TOKENS=1",
                "KEYBROKER_OUTPUT_TOKENS=1", "KEYBROKER_CACHED_TOKENS=0", "KEYBROKER_CACHE_WRITE_TOKENS=0",
                "KEYBROKER_COST_MICROUSD=0",
        };
        for (size_t skip = 0; skip < ELEMENTSOF(needed); skip++) {
                kb_replay_record_init(&rec);
                for (size_t i = 0; i < ELEMENTSOF(needed); i++)
                        if (i != skip)
                                assert_int_equal(feed(&rec, needed[i]), 0);
                assert_int_equal(kb_replay_record_complete(&rec), -ENODATA);
                assert_int_equal(feed(&rec, needed[skip]), 0);
                assert_int_equal(kb_replay_record_complete(&rec), 0);
                /* Twice is malformed. */
                assert_int_equal(feed(&rec, needed[skip]), -EINVAL);
        }

        /* Extremes. */
        kb_replay_record_init(&rec);
        assert_int_equal(feed(&rec, "KEYBROKER_COST_MICROUSD=-9223372036854775808"), 0);
        assert_true(rec.cost_microusd == INT64_MIN);
        kb_replay_record_init(&rec);
        assert_int_equal(feed(&rec, "KEYBROKER_COST_MICROUSD=9223372036854775807"), 0);
        assert_true(rec.cost_microusd == INT64_MAX);
        assert_int_equal(feed(&rec, "KEYBROKER_SEQ=18446744073709551615"), 0);
        assert_true(rec.seq == UINT64_MAX);
        char team[KB_REPLAY_TEAM_MAX + 32];
        snprintf(team, sizeof(team), "KEYBROKER_TEAM=%0*d", (int) KB_REPLAY_TEAM_MAX, 7);
        assert_int_equal(feed(&rec, team), 0);
        assert_int_equal(strlen(rec.team), KB_REPLAY_TEAM_MAX);

        /* The record's own time: optional, not needed for completeness, a
         * bad value ignored (journald's time is used then). */
        feed_all(&rec, "openai");
        assert_int_equal(rec.realtime_usec, 0);
        assert_int_equal(feed(&rec, "KEYBROKER_REALTIME_USEC=1764000000123456"), 0);
        assert_true(rec.realtime_usec == UINT64_C(1764000000123456));
        assert_int_equal(kb_replay_record_complete(&rec), 0);
        assert_int_equal(feed(&rec, "KEYBROKER_REALTIME_USEC=soon"), 0);
        assert_int_equal(rec.realtime_usec, 0);

        /* Not ours, or a near miss of a name: ignored. */
        kb_replay_record_init(&rec);
        assert_int_equal(feed(&rec, "KEYBROKER_SEQUENCE=x"), 0);
        assert_int_equal(feed(&rec, "KEYBROKER_SE=x"), 0);
        assert_int_equal(feed(&rec, "KEYBROKER_=x"), 0);
        assert_int_equal(feed(&rec, "KEYBROKER_SEQ"), 0); /* no '=' */
        assert_int_equal(feed(&rec, "X_KEYBROKER_SEQ=x"), 0);
        assert_int_equal(feed(&rec, ""), 0);
        assert_int_equal(rec.seen, 0);
}

static void test_record_bad(void **state) {
        static const char *const bad[] = {
                "KEYBROKER_SEQ=", "KEYBROKER_SEQ=-1", "KEYBROKER_SEQ=1.5", "KEYBROKER_SEQ= 1", "KEYBROKER_SEQ=0x10",
                "KEYBROKER_SEQ=18446744073709551616", "KEYBROKER_INPUT_TOKENS=abc", "KEYBROKER_OUTPUT_TOKENS=-3",
                "KEYBROKER_CACHED_TOKENS=1e3", "KEYBROKER_CACHE_WRITE_TOKENS=",
                "KEYBROKER_COST_MICROUSD=-", "KEYBROKER_COST_MICROUSD=--1",
                "KEYBROKER_COST_MICROUSD=9223372036854775808",
                "KEYBROKER_COST_MICROUSD=-9223372036854775809", "KEYBROKER_COST_MICROUSD=1$",
                "KEYBROKER_TEAM=", "KEYBROKER_FAMILY=", "KEYBROKER_FAMILY=google", "KEYBROKER_FAMILY=OPENAI",
                "KEYBROKER_FAMILY=openaiopenaiopenaiopenaiopenaiopenai",
        };
        struct kb_replay_record rec;

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                kb_replay_record_init(&rec);
                if (feed(&rec, bad[i]) != -EINVAL)
                        fail_msg("accepted \"%s\"", bad[i]);
                assert_int_equal(rec.seen, 0);
        }

        char team[KB_REPLAY_TEAM_MAX + 32];
        snprintf(team, sizeof(team), "KEYBROKER_TEAM=%0*d", (int) KB_REPLAY_TEAM_MAX + 1, 7);
        kb_replay_record_init(&rec);
        assert_int_equal(feed(&rec, team), -EINVAL);

        /* A NUL inside a value (journal data is binary-safe). */
        static const char nul[] = "KEYBROKER_TEAM=a\0b";
        kb_replay_record_init(&rec);
        assert_int_equal(kb_replay_record_add(&rec, nul, sizeof(nul) - 1), -EINVAL);
        /* Length is honoured: no reading past it. */
        static const char cut[] = "KEYBROKER_SEQ=12345";
        kb_replay_record_init(&rec);
        assert_int_equal(kb_replay_record_add(&rec, cut, sizeof(cut) - 3), 0);
        assert_int_equal(rec.seq, 123);
}

static void test_quota_tokens(void **state) {
        struct kb_usage u = { .input_tokens = 10, .output_tokens = 5, .cached_tokens = 3, .cache_write_tokens = 2 };

        assert_int_equal(kb_usage_quota_tokens(&u, KB_FAMILY_OPENAI), 15);
        assert_int_equal(kb_usage_quota_tokens(&u, KB_FAMILY_ANTHROPIC), 20);
        assert_int_equal(kb_usage_quota_tokens(NULL, KB_FAMILY_OPENAI), 0);
        u.input_tokens = UINT64_MAX - 1;
        assert_true(kb_usage_quota_tokens(&u, KB_FAMILY_OPENAI) == UINT64_MAX);
        u = (struct kb_usage) { .input_tokens = INT64_MAX, .output_tokens = INT64_MAX, .cached_tokens = INT64_MAX,
                                .cache_write_tokens = INT64_MAX };
        assert_true(kb_usage_quota_tokens(&u, KB_FAMILY_ANTHROPIC) == UINT64_MAX);
}

/* ---- snapshot rounds ---- */

static char dir[64], path[128];

static int setup_dir(void **state) {
        kbt_mkdtemp(dir, sizeof(dir), "quota-recovery");
        snprintf(path, sizeof(path), "%s/" KB_QUOTA_SNAPSHOT_NAME, dir);
        return 0;
}

/* only the snapshot and its temporary file: one more fails the group */
static int remove_dir(void **state) {
        static const char *const names[] = { KB_QUOTA_SNAPSHOT_NAME, KB_QUOTA_SNAPSHOT_NAME ".tmp", NULL };

        return kbt_rmdir_files(dir, names) < 0 ? -1 : 0;
}

static unsigned send_delay_msec;
static int send_result;

static int test_sender(const struct iovec *iov, int n, void *userdata) {
        struct timespec ts = { .tv_sec = send_delay_msec / 1000,
                               .tv_nsec = (long) (send_delay_msec % 1000) * 1000000L };

        if (send_delay_msec)
                nanosleep(&ts, NULL);
        return send_result;
}

static void test_snapshot_round(void **state) {
        struct kb_team ops = kbt_team("ops");
        _cleanup_quota_ struct kb_quota *q = kbt_quota(&ops, 1), *back = kbt_quota(&ops, 1);
        struct kb_journal *j = NULL;
        struct kb_quota_view v;
        struct kb_quota_mark m;
        char *cursor = NULL;
        uint64_t dropped = 0, now = kb_realtime_usec();
        struct stat st;

        assert_int_equal(kb_journal_new(16, &j), 0);
        kb_journal_set_sender(j, test_sender, NULL);
        assert_int_equal(kb_quota_account(q, "ops", now, 1000, 250), 0);

        /* The writer is stuck on a record: no snapshot, nothing written. */
        send_delay_msec = 400;
        send_result = 0;
        assert_int_equal(kb_journal_submit(j, kbt_record("x")), 0);
        assert_int_equal(kb_quota_snapshot(q, j, NULL, path, 5, 50 * USEC_PER_MSEC, &dropped), -ETIMEDOUT);
        assert_int_equal(stat(path, &st), -1);
        /* Once it caught up, the round saves. */
        assert_int_equal(kb_quota_snapshot(q, j, NULL, path, 5, 2 * USEC_PER_SEC, &dropped), 0);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);

        assert_int_equal(kb_quota_load(back, path, &cursor), 0);
        assert_non_null(cursor);
        assert_int_equal(kb_quota_mark_parse(cursor, &m), 0);
        free(cursor);
        assert_int_equal(m.seq, 5);
        assert_true(m.has_time);
        assert_true(m.realtime_usec >= now);
        sd_id128_t boot;
        assert_int_equal(sd_id128_get_boot(&boot), 0);
        assert_true(sd_id128_equal(boot, m.boot_id));
        assert_int_equal(kb_quota_view(back, "ops", now, &v), 0);
        assert_int_equal(v.windows[KB_QUOTA_TOKENS_PER_DAY].used, 1000);
        assert_int_equal(v.windows[KB_QUOTA_BUDGET_PER_MONTH].used, 250);

        /* A record the writer gave up on: this round is skipped, the next saves. */
        send_delay_msec = 0;
        send_result = -EIO;
        assert_int_equal(kb_journal_submit(j, kbt_record("x")), 0);
        assert_int_equal(kb_quota_snapshot(q, j, NULL, path, 9, 2 * USEC_PER_SEC, &dropped), -EBADMSG);
        assert_int_equal(dropped, 1);
        assert_int_equal(kb_quota_load(back, path, &cursor), 0);
        assert_int_equal(kb_quota_mark_parse(cursor, &m), 0);
        free(cursor);
        assert_int_equal(m.seq, 5);
        assert_int_equal(kb_quota_snapshot(q, j, NULL, path, 9, 2 * USEC_PER_SEC, &dropped), 0);
        assert_int_equal(kb_quota_load(back, path, &cursor), 0);
        assert_int_equal(kb_quota_mark_parse(cursor, &m), 0);
        free(cursor);
        assert_int_equal(m.seq, 9);

        /* A save error passes through, the file stays as it was. */
        char bad[192];
        snprintf(bad, sizeof(bad), "%s/missing/" KB_QUOTA_SNAPSHOT_NAME, dir);
        assert_int_equal(kb_quota_snapshot(q, j, NULL, bad, 10, 2 * USEC_PER_SEC, &dropped), -ENOENT);

        kb_journal_free(j, USEC_PER_SEC);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_mark_round_trip),
                cmocka_unit_test(test_mark_bad),
                cmocka_unit_test(test_month_start),
                cmocka_unit_test(test_replay_since),
                cmocka_unit_test(test_record_parse),
                cmocka_unit_test(test_record_bad),
                cmocka_unit_test(test_quota_tokens),
                cmocka_unit_test(test_snapshot_round),
        };
        return cmocka_run_group_tests(tests, setup_dir, remove_dir);
}
