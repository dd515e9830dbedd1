/* SPDX-License-Identifier: MIT */
/* keybrokerctl usage's logic: journalctl time specs (every syntax, every
 * bad input), --by lists, record parsing, grouping, exact cost sums,
 * percentiles within the documented error, and the three output formats
 * with names a spreadsheet or a terminal would choke on. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "usage-report.h"
#include "util.h"

#define S(x) ((uint64_t) (x) * USEC_PER_SEC)
/* 2026-11-25 10:30:15.5 UTC */
#define NOW (S(1795602615) + 500000)
#define MIDNIGHT S(1795564800)

static void set_tz(const char *tz) {
        setenv("TZ", tz, 1);
        tzset();
}

static uint64_t t_ok(const char *s) {
        uint64_t v = 0;
        int k = usage_parse_time(s, NOW, &v);
        if (k < 0)
                fail_msg("'%s' should parse, got %d", s, k);
        return v;
}

static void t_is(const char *s, uint64_t want) {
        uint64_t v = t_ok(s);
        if (v != want)
                fail_msg("'%s': got %llu, want %llu", s, (unsigned long long) v, (unsigned long long) want);
}

static void test_time_utc(void **state) {
        set_tz("UTC");
        t_is("now", NOW);
        t_is("today", MIDNIGHT);
        t_is("  today ", MIDNIGHT);
        t_is("yesterday", MIDNIGHT - S(86400));
        t_is("tomorrow", MIDNIGHT + S(86400));
        t_is("-1h", NOW - S(3600));
        t_is("-30min", NOW - S(1800));
        t_is("-30m", NOW - S(1800));
        t_is("-2d", NOW - S(2 * 86400));
        t_is("-2days", NOW - S(2 * 86400));
        t_is("-1w", NOW - S(7 * 86400));
        t_is("-1M", NOW - S(2629800));
        t_is("-1y", NOW - S(31557600));
        t_is("-90", NOW - S(90));
        t_is("-90s", NOW - S(90));
        t_is("-3ms", NOW - 3000);
        t_is("-2us", NOW - 2);
        t_is("-1h 30min", NOW - S(5400));
        t_is("-1h30min", NOW - S(5400));
        t_is("-1.5h", NOW - S(5400));
        t_is("-5 min", NOW - S(300));
        t_is("+1h", NOW + S(3600));
        t_is("+2d", NOW + S(2 * 86400));
        t_is("5min ago", NOW - S(300));
        t_is("@1700000000", S(1700000000));
        t_is("@1700000000.25", S(1700000000) + 250000);
        t_is("2026-11-25", MIDNIGHT);
        t_is("2026-11-25 10:00", S(1795600800));
        t_is("2026-11-25 10:00:05", S(1795600805));
        t_is("2026-11-25T10:00:05", S(1795600805));
        t_is("2026-11-25T10:00:00Z", S(1795600800));
        t_is("2026-11-25 10:00:00 UTC", S(1795600800));
        t_is("2026-11-25 10:00:00.123456", S(1795600800) + 123456);
        t_is("2026-11-25 10:00:00.5", S(1795600800) + 500000);
        t_is("10:00", S(1795600800));
        t_is("10:00:05", S(1795600805));
        t_is("2024-02-29", S(1709164800));
        t_is("1970-01-01", 0);
}

static void test_time_local(void **state) {
        /* POSIX TZ (no tzdata needed): 2 hours east of UTC, no DST. */
        set_tz("XXX-02");
        t_is("2026-11-25 10:00", S(1795593600));
        t_is("2026-11-25T10:00:00Z", S(1795600800));
        t_is("2026-11-25 10:00 UTC", S(1795600800));
        /* 10:30 UTC is 12:30 local: today began at 22:00 UTC the day before. */
        t_is("today", S(1795557600));
        t_is("yesterday", S(1795557600) - S(86400));
        t_is("2026-11-25", S(1795557600));
        t_is("-1h", NOW - S(3600));
        t_is("@1700000000", S(1700000000));
        /* The epoch in local time is before the epoch. */
        uint64_t v = 7;
        assert_int_equal(usage_parse_time("1970-01-01", NOW, &v), -ERANGE);
        assert_int_equal(v, 7);
        set_tz("UTC");
}

static void test_time_bad(void **state) {
        static const char *const bad[] = {
                "", " ", "bogus", "-", "+", "-h", "-1x", "-1hh", "-1h junk", "1h", "today2", "Today",
                "2026-13-01", "2026-00-10", "2026-02-30", "2025-02-29", "2026-04-31", "2026-11-00",
                "2026-11-25 24:00", "2026-11-25 10:60", "2026-11-25 10:00:60", "2026-11-25 10",
                "2026-1-5", "26-11-25", "1969-12-31", "2026-11-25X10:00", "2026-11-25 10:00:00.",
                "2026-11-25  10:00", "2026-11-25 10:00Zjunk", "2026-11-25 10:00 CET", "10:00:00:00",
                "1:00", "@", "@abc", "@1h", "@-5", "ago", " ago", "x ago", "-1.h", "-.5h", "2026-11-25T",
                "2026/11/25", "now ", "\x01",
        };
        uint64_t v = 42;

        set_tz("UTC");
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                int k = usage_parse_time(bad[i], NOW, &v);
                /* "now " is trimmed to "now": the one valid entry. */
                if (streq(bad[i], "now ")) {
                        assert_int_equal(k, 0);
                        v = 42;
                        continue;
                }
                if (k != -EINVAL)
                        fail_msg("'%s' should be -EINVAL, got %d", bad[i], k);
                assert_int_equal(v, 42);
        }
        assert_int_equal(usage_parse_time("-99999999999999999999h", NOW, &v), -ERANGE);
        assert_int_equal(usage_parse_time("-100y", NOW, &v), -ERANGE);
        assert_int_equal(usage_parse_time("+500000000y", NOW, &v), -ERANGE);
        assert_int_equal(v, 42);
        assert_int_equal(usage_parse_time(NULL, NOW, &v), -EINVAL);
        assert_int_equal(usage_parse_time("now", NOW, NULL), -EINVAL);

        char longs[300];
        memset(longs, '1', sizeof(longs) - 1);
        longs[0] = '-';
        longs[sizeof(longs) - 1] = 0;
        assert_int_equal(usage_parse_time(longs, NOW, &v), -EINVAL);
}

static void test_by(void **state) {
        usage_by by[_USAGE_BY_MAX];
        size_t n = 0;

        assert_int_equal(usage_parse_by("team", by, &n), 0);
        assert_int_equal(n, 1);
        assert_int_equal(by[0], USAGE_BY_TEAM);
        assert_int_equal(usage_parse_by("model,route,team", by, &n), 0);
        assert_int_equal(n, 3);
        assert_int_equal(by[1], USAGE_BY_MODEL);
        assert_int_equal(by[2], USAGE_BY_ROUTE);
        assert_int_equal(usage_parse_by("key,key,unit,day,day,team,model,route,key", by, &n), 0);
        assert_int_equal(n, 6);
        assert_int_equal(by[3], USAGE_BY_KEY);
        assert_int_equal(by[4], USAGE_BY_UNIT);
        assert_int_equal(by[5], USAGE_BY_DAY);

        static const char *const bad[] = { "", ",", "team,", ",team", "bogus", "team,bogus", "Team", "team ",
                                           "teams", "tea" };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                n = 1;
                by[0] = USAGE_BY_DAY;
                if (usage_parse_by(bad[i], by, &n) != -EINVAL)
                        fail_msg("--by '%s' should be refused", bad[i]);
                assert_int_equal(n, 1);
                assert_int_equal(by[0], USAGE_BY_DAY);
        }
        assert_string_equal(usage_by_to_string(USAGE_BY_UNIT), "unit");
        n = 0;
        assert_int_equal(usage_parse_by("host,team", by, &n), 0);
        assert_int_equal(n, 2);
        assert_int_equal(by[0], USAGE_BY_HOST);
        assert_string_equal(usage_by_to_string(USAGE_BY_HOST), "host");
        assert_null(usage_by_to_string(_USAGE_BY_MAX));
}

static int item(struct usage_record *rec, const char *s) {
        return usage_record_parse_item(rec, s, strlen(s));
}

static char *capture(struct usage_report *r, int (*print)(struct usage_report *, FILE *));

/* The other billing units: parsed, summed, shown in the table only when
 * the report has them, always in JSON and CSV. */
static void test_units(void **state) {
        struct usage_record *rec = malloc(sizeof(*rec));
        _cleanup_usage_report_ struct usage_report *r = NULL;
        usage_by by[] = { USAGE_BY_MODEL };

        assert_non_null(rec);
        assert_int_equal(usage_report_new(by, 1, &r), 0);
        _cleanup_free_ char *plain = capture(r, usage_report_print_table);
        assert_null(strstr(plain, "IMAGES"));
        for (int i = 0; i < 2; i++) {
                usage_record_reset(rec);
                assert_int_equal(item(rec, "KEYBROKER_MODEL=whisper"), 1);
                assert_int_equal(item(rec, "KEYBROKER_AUDIO_SECONDS=12.5"), 1);
                assert_int_equal(item(rec, "KEYBROKER_IMAGES=3"), 1);
                assert_int_equal(item(rec, "KEYBROKER_VIDEO_SECONDS=8"), 1);
                assert_int_equal(item(rec, "KEYBROKER_CHARACTERS=20"), 1);
                assert_int_equal(item(rec, i ? "KEYBROKER_BATCH=1" : "KEYBROKER_BATCH=0"), 1);
                assert_int_equal(usage_report_add(r, rec), 0);
        }
        usage_record_reset(rec);
        assert_int_equal(item(rec, "KEYBROKER_AUDIO_SECONDS=1.2345"), 1);
        assert_int_equal(rec->audio_msec, 0); /* more than milliseconds: not a journal value */
        const struct usage_totals *t = usage_report_total(r);
        assert_int_equal(t->audio_msec, 25000);
        assert_int_equal(t->images, 6);
        assert_int_equal(t->video_seconds, 16);
        assert_int_equal(t->characters, 40);
        assert_int_equal(t->batches, 1);
        _cleanup_free_ char *table = capture(r, usage_report_print_table);
        assert_non_null(strstr(table, "COST_USD  IMAGES  AUDIO_S  VIDEO_S  CHARS  BATCHES  QUOTA"));
        assert_non_null(strstr(table, "25.000"));
        _cleanup_free_ char *json = capture(r, usage_report_print_json);
        assert_non_null(strstr(json, "\"images\":6,\"audio_seconds\":25.000,\"video_seconds\":16,\"characters\":40,"
                                     "\"batches\":1}"));
        _cleanup_free_ char *csv = capture(r, usage_report_print_csv);
        assert_non_null(strstr(csv, ",6,25.000,16,40,1\n"));
        free(rec);
}

static void test_record_parse(void **state) {
        struct usage_record *rec = malloc(sizeof(*rec));
        char big[USAGE_VALUE_MAX + 100];

        assert_non_null(rec);
        usage_record_reset(rec);
        assert_int_equal(item(rec, "KEYBROKER_TEAM=search"), 1);
        assert_int_equal(item(rec, "KEYBROKER_MODEL=gpt-mini"), 1);
        assert_int_equal(item(rec, "KEYBROKER_ROUTE=oai"), 1);
        assert_int_equal(item(rec, "KEYBROKER_KEY=oai-key@2"), 1);
        assert_int_equal(item(rec, "KEYBROKER_PEER_UNIT=app.service"), 1);
        assert_int_equal(item(rec, "KEYBROKER_INPUT_TOKENS=1234"), 1);
        assert_int_equal(item(rec, "KEYBROKER_OUTPUT_TOKENS=56"), 1);
        assert_int_equal(item(rec, "KEYBROKER_CACHED_TOKENS=7"), 1);
        assert_int_equal(item(rec, "KEYBROKER_COST_MICROUSD=-219"), 1);
        assert_int_equal(item(rec, "KEYBROKER_OUTCOME=upstream_error"), 1);
        assert_int_equal(item(rec, "KEYBROKER_UPSTREAM_STATUS=503"), 1);
        assert_int_equal(item(rec, "KEYBROKER_LATENCY_MS=812"), 1);
        assert_int_equal(item(rec, "KEYBROKER_TTFB_MS=10"), 0);
        assert_int_equal(item(rec, "MESSAGE=hello"), 0);
        assert_int_equal(item(rec, "KEYBROKER_"), 0);
        assert_int_equal(item(rec, "KEYBROKER_TEAMX=a"), 0);
        assert_int_equal(item(rec, "KEYBROKER_TEAM"), 0);
        assert_int_equal(usage_record_parse_item(rec, NULL, 5), 0);

        assert_int_equal(rec->team.len, 6);
        assert_memory_equal(rec->team.s, "search", 6);
        assert_memory_equal(rec->key.s, "oai-key@2", 9);
        assert_memory_equal(rec->unit.s, "app.service", 11);
        assert_int_equal(rec->input_tokens, 1234);
        assert_int_equal(rec->output_tokens, 56);
        assert_int_equal(rec->cached_tokens, 7);
        assert_int_equal(rec->cost_microusd, -219);
        assert_string_equal(rec->outcome, "upstream_error");
        assert_int_equal(rec->upstream_status, 503);
        assert_true(rec->has_latency);
        assert_int_equal(rec->latency_ms, 812);

        /* The record's own time beats journald's; host from KEYBROKER_HOST,
         * journald's _HOSTNAME kept apart as the fallback; the test mark. */
        rec->realtime_usec = 5;
        assert_int_equal(item(rec, "KEYBROKER_REALTIME_USEC=1764000000000000"), 1);
        assert_true(rec->realtime_usec == UINT64_C(1764000000000000));
        assert_int_equal(item(rec, "_HOSTNAME=collector"), 1);
        assert_int_equal(item(rec, "KEYBROKER_HOST=web-7"), 1);
        assert_memory_equal(rec->host.s, "web-7", 5);
        assert_memory_equal(rec->journal_host.s, "collector", 9);
        assert_false(rec->test);
        assert_int_equal(item(rec, "KEYBROKER_TEST=1"), 1);
        assert_true(rec->test);
        usage_record_reset(rec);
        assert_false(rec->test);
        assert_int_equal(rec->host.len, 0);

        /* Numbers that don't parse leave what was there (0 after a reset). */
        usage_record_reset(rec);
        static const char *const bad_nums[] = {
                "KEYBROKER_INPUT_TOKENS=", "KEYBROKER_INPUT_TOKENS=-1", "KEYBROKER_INPUT_TOKENS=1x",
                "KEYBROKER_INPUT_TOKENS= 1", "KEYBROKER_INPUT_TOKENS=18446744073709551616",
                "KEYBROKER_COST_MICROUSD=9223372036854775808", "KEYBROKER_COST_MICROUSD=-",
                "KEYBROKER_COST_MICROUSD=--1", "KEYBROKER_UPSTREAM_STATUS=1000", "KEYBROKER_LATENCY_MS=abc",
                "KEYBROKER_LATENCY_MS=",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad_nums); i++)
                item(rec, bad_nums[i]);
        assert_int_equal(rec->input_tokens, 0);
        assert_int_equal(rec->cost_microusd, 0);
        assert_int_equal(rec->upstream_status, 0);
        assert_false(rec->has_latency);
        item(rec, "KEYBROKER_INPUT_TOKENS=18446744073709551615");
        assert_true(rec->input_tokens == UINT64_MAX);
        item(rec, "KEYBROKER_COST_MICROUSD=-9223372036854775808");
        assert_true(rec->cost_microusd == INT64_MIN);

        /* Over-long values: a group key is cut; an outcome is ignored. */
        memcpy(big, "KEYBROKER_MODEL=", 16);
        memset(big + 16, 'm', sizeof(big) - 17);
        big[sizeof(big) - 1] = 0;
        item(rec, big);
        assert_int_equal(rec->model.len, USAGE_VALUE_MAX);
        item(rec, "KEYBROKER_OUTCOME=ok");
        item(rec, "KEYBROKER_OUTCOME=a_very_long_outcome_name_that_is_not_real");
        assert_string_equal(rec->outcome, "ok");
        /* Values may hold any byte, NUL included. */
        assert_int_equal(usage_record_parse_item(rec, "KEYBROKER_TEAM=a\0b", 18), 1);
        assert_int_equal(rec->team.len, 3);
        free(rec);
}

/* ---------------------------------------------------------------- reports */

struct rec_spec {
        const char *team, *model, *route;
        uint64_t in, out, cached;
        int64_t cost;
        const char *outcome;
        unsigned upstream;
        int64_t latency; /* <0: none */
        uint64_t when;
};

static void fill(struct usage_record *rec, const struct rec_spec *s) {
        usage_record_reset(rec);
        rec->realtime_usec = s->when ? s->when : NOW;
        if (s->team) {
                rec->team.len = strlen(s->team);
                memcpy(rec->team.s, s->team, rec->team.len);
        }
        if (s->model) {
                rec->model.len = strlen(s->model);
                memcpy(rec->model.s, s->model, rec->model.len);
        }
        if (s->route) {
                rec->route.len = strlen(s->route);
                memcpy(rec->route.s, s->route, rec->route.len);
        }
        rec->input_tokens = s->in;
        rec->output_tokens = s->out;
        rec->cached_tokens = s->cached;
        rec->cost_microusd = s->cost;
        snprintf(rec->outcome, sizeof(rec->outcome), "%s", s->outcome ? s->outcome : "ok");
        rec->upstream_status = s->upstream;
        rec->has_latency = s->latency >= 0;
        rec->latency_ms = s->latency >= 0 ? (uint64_t) s->latency : 0;
}

static char *capture(struct usage_report *r, int (*print)(struct usage_report *, FILE *)) {
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);

        assert_non_null(f);
        assert_int_equal(print(r, f), 0);
        fclose(f);
        return buf;
}

static json_t *report_json(struct usage_report *r) {
        _cleanup_free_ char *s = capture(r, usage_report_print_json);
        json_error_t e;
        json_t *j = json_loads(s, 0, &e);
        if (!j)
                fail_msg("invalid JSON (%s): %s", e.text, s);
        return j;
}

static json_int_t jint(const json_t *o, const char *k) {
        const json_t *v = json_object_get(o, k);
        if (!json_is_integer(v))
                fail_msg("%s is not an integer", k);
        return json_integer_value(v);
}

static void test_grouping(void **state) {
        static const struct rec_spec recs[] = {
                { "search", "gpt-mini", "oai", 100, 10, 5, 219, "ok", 200, 800, 0 },
                { "search", "gpt-mini", "oai", 200, 20, 0, 1, "ok", 200, 100, 0 },
                { "search", "claude", "anth", 1, 0, 0, 0, "upstream_error", 429, 50, 0 },
                { "ops", "gpt-mini", "oai", 5, 5, 0, 1000000, "ok", 200, 10, 0 },
                { "ops", "gpt-mini", "oai", 0, 0, 0, 0, "quota_rejected", 0, 1, 0 },
                { "ops", "gpt-mini", "oai", 0, 0, 0, 0, "upstream_timeout", 0, 30000, 0 },
                { "ops", "nope", "", 0, 0, 0, 0, "model_not_found", 0, 1, 0 },
                { "ops", "gpt-mini", "oai", 0, 0, 0, 0, "upstream_error", 404, 2, 0 },
                { "ops", "gpt-mini", "oai", 0, 0, 0, 0, "upstream_error", 500, 3, 0 },
                { "ops", "gpt-mini", "oai", 0, 0, 0, 0, "upstream_error", 599, 3, 0 },
                { "ops", "gpt-mini", "oai", 0, 0, 0, 0, "upstream_error", 600, 3, 0 },
                { "ops", "gpt-mini", "oai", 3, 1, 0, 5, "stream_interrupted", 200, 4, 0 },
                { "ops", "gpt-mini", "oai", 3, 0, 0, 0, "client_abort", 0, -1, 0 },
                { "", "", "", 0, 0, 0, 0, "forbidden", 0, 0, S(1795478400) + 5 },
        };
        _cleanup_usage_report_ struct usage_report *r = NULL;
        struct usage_record *rec = malloc(sizeof(*rec));
        usage_by by[] = { USAGE_BY_TEAM };
        json_t *j, *g, *t, *e;

        assert_non_null(rec);
        assert_int_equal(usage_report_new(by, 1, &r), 0);
        for (size_t i = 0; i < ELEMENTSOF(recs); i++) {
                fill(rec, &recs[i]);
                assert_int_equal(usage_report_add(r, rec), 0);
        }
        assert_int_equal(usage_report_n_groups(r), 3);
        assert_int_equal(usage_report_total(r)->requests, ELEMENTSOF(recs));

        j = report_json(r);
        assert_string_equal(json_string_value(json_array_get(json_object_get(j, "by"), 0)), "team");
        g = json_object_get(j, "groups");
        assert_int_equal(json_array_size(g), 3);
        /* Sorted bytewise: "", "ops", "search". */
        assert_string_equal(json_string_value(json_object_get(json_array_get(g, 0), "team")), "");
        t = json_array_get(g, 1);
        assert_string_equal(json_string_value(json_object_get(t, "team")), "ops");
        assert_int_equal(jint(t, "requests"), 10);
        assert_int_equal(jint(t, "input_tokens"), 11);
        assert_int_equal(jint(t, "cost_microusd"), 1000005);
        e = json_object_get(t, "errors");
        assert_int_equal(jint(e, "quota_rejected"), 1);
        assert_int_equal(jint(e, "upstream_429"), 0);
        assert_int_equal(jint(e, "timeouts"), 1);
        assert_int_equal(jint(e, "model_not_found"), 2); /* own + upstream 404 */
        assert_int_equal(jint(e, "upstream_5xx"), 2);    /* 500, 599; not 600 */
        assert_int_equal(jint(e, "stream_interrupted"), 1);
        assert_int_equal(jint(e, "client_abort"), 1);
        /* 9 latencies (one record had none): 1 2 3 3 3 4 10 1 30000 → sorted
         * 1 1 2 3 3 3 4 10 30000: p50 = 5th = 3, p95 = 9th = 30000. */
        assert_int_equal(jint(t, "latency_p50_ms"), 3);
        assert_int_equal(jint(t, "latency_p95_ms"), 30000);
        t = json_array_get(g, 2);
        assert_int_equal(jint(t, "requests"), 3);
        assert_int_equal(jint(t, "output_tokens"), 30);
        assert_int_equal(jint(t, "cached_tokens"), 5);
        assert_int_equal(jint(t, "cost_microusd"), 220);
        assert_int_equal(jint(json_object_get(t, "errors"), "upstream_429"), 1);
        assert_int_equal(jint(t, "latency_p50_ms"), 100);
        t = json_object_get(j, "total");
        assert_int_equal(jint(t, "requests"), 14);
        assert_int_equal(jint(t, "cost_microusd"), 1000225);
        json_decref(j);

        _cleanup_free_ char *js = capture(r, usage_report_print_json);
        assert_non_null(strstr(js, "\"cost_usd\":1.000225,"));
        assert_non_null(strstr(js, "\"cost_usd\":0.000220,"));

        /* The table: header, rows, TOTAL, an empty team shown as "-". */
        _cleanup_free_ char *tab = capture(r, usage_report_print_table);
        assert_true(strncmp(tab, "TEAM    REQUESTS", 16) == 0);
        assert_non_null(strstr(tab, "\n-     "));
        assert_non_null(strstr(tab, "\nops   "));
        assert_non_null(strstr(tab, "\nTOTAL "));
        assert_non_null(strstr(tab, " 1.000225 "));
        assert_int_equal(strlen(tab) > 0 && tab[strlen(tab) - 1] == '\n', 1);

        /* By model,route and by day in one report. */
        _cleanup_usage_report_ struct usage_report *r2 = NULL;
        usage_by by2[] = { USAGE_BY_DAY, USAGE_BY_MODEL, USAGE_BY_ROUTE };
        assert_int_equal(usage_report_new(by2, 3, &r2), 0);
        for (size_t i = 0; i < ELEMENTSOF(recs); i++) {
                fill(rec, &recs[i]);
                assert_int_equal(usage_report_add(r2, rec), 0);
        }
        assert_int_equal(usage_report_n_groups(r2), 4);
        _cleanup_free_ char *csv = capture(r2, usage_report_print_csv);
        assert_true(strncmp(csv, "day,model,route,requests,input_tokens,output_tokens,cached_tokens,cost_usd,"
                                 "quota_rejected,upstream_429,timeouts,model_not_found,upstream_5xx,"
                                 "stream_interrupted,client_abort,latency_p50_ms,latency_p95_ms,images,audio_seconds,"
                                 "video_seconds,characters,batches\n2026-11-24,,,1,",
                            strlen("day,model,route,requests,input_tokens,output_tokens,cached_tokens,cost_usd,"
                                   "quota_rejected,upstream_429,timeouts,model_not_found,upstream_5xx,"
                                   "stream_interrupted,client_abort,latency_p50_ms,latency_p95_ms,images,audio_seconds,"
                                   "video_seconds,characters,batches\n2026-11-24,,,1,")) == 0);
        assert_non_null(strstr(csv, "\n2026-11-25,claude,anth,1,1,0,0,0.000000,0,1,0,0,0,0,0,50,50,0,0.000,0,0,0\n"));
        assert_non_null(strstr(csv, "\n2026-11-25,gpt-mini,oai,11,"));

        /* Bad construction. */
        struct usage_report *bad = NULL;
        usage_by dup[] = { USAGE_BY_TEAM, USAGE_BY_TEAM };
        usage_by inval[] = { _USAGE_BY_MAX };
        assert_int_equal(usage_report_new(dup, 2, &bad), -EINVAL);
        assert_int_equal(usage_report_new(inval, 1, &bad), -EINVAL);
        assert_int_equal(usage_report_new(by, 0, &bad), -EINVAL);
        assert_int_equal(usage_report_new(NULL, 1, &bad), -EINVAL);
        assert_null(bad);
        assert_int_equal(usage_report_add(NULL, rec), -EINVAL);
        assert_null(usage_report_free(NULL));
        free(rec);
}

static void test_empty(void **state) {
        _cleanup_usage_report_ struct usage_report *r = NULL;
        usage_by by[] = { USAGE_BY_TEAM, USAGE_BY_MODEL };
        json_t *j;

        assert_int_equal(usage_report_new(by, 2, &r), 0);
        j = report_json(r);
        assert_int_equal(json_array_size(json_object_get(j, "groups")), 0);
        assert_int_equal(jint(json_object_get(j, "total"), "requests"), 0);
        assert_true(json_is_null(json_object_get(json_object_get(j, "total"), "latency_p50_ms")));
        json_decref(j);
        _cleanup_free_ char *csv = capture(r, usage_report_print_csv);
        assert_int_equal(strchr(csv, '\n') - csv + 1, strlen(csv)); /* header only */
        _cleanup_free_ char *tab = capture(r, usage_report_print_table);
        assert_non_null(strstr(tab, "\nTOTAL "));
}

static void test_cost_exact(void **state) {
        _cleanup_usage_report_ struct usage_report *r = NULL;
        struct usage_record *rec = malloc(sizeof(*rec));
        usage_by by[] = { USAGE_BY_TEAM };
        char buf[32];

        assert_non_null(rec);
        assert_int_equal(usage_report_new(by, 1, &r), 0);
        /* A million records of 1 µUSD: exactly one dollar, where summing
         * doubles of 0.000001 would not be. */
        fill(rec, &(struct rec_spec) { .team = "t", .cost = 1, .latency = -1 });
        for (int i = 0; i < 1000000; i++)
                assert_int_equal(usage_report_add(r, rec), 0);
        assert_string_equal(usage_format_usd(usage_report_total(r)->cost_microusd, buf, sizeof(buf)), "1.000000");
        fill(rec, &(struct rec_spec) { .team = "t", .cost = 2999999, .latency = -1 });
        assert_int_equal(usage_report_add(r, rec), 0);
        assert_string_equal(usage_format_usd(usage_report_total(r)->cost_microusd, buf, sizeof(buf)), "3.999999");
        fill(rec, &(struct rec_spec) { .team = "u", .cost = -5000000, .latency = -1 });
        assert_int_equal(usage_report_add(r, rec), 0);
        assert_string_equal(usage_format_usd(usage_report_total(r)->cost_microusd, buf, sizeof(buf)), "-1.000001");

        assert_string_equal(usage_format_usd(0, buf, sizeof(buf)), "0.000000");
        assert_string_equal(usage_format_usd(219, buf, sizeof(buf)), "0.000219");
        assert_string_equal(usage_format_usd(-1, buf, sizeof(buf)), "-0.000001");
        assert_string_equal(usage_format_usd(INT64_MAX, buf, sizeof(buf)), "9223372036854.775807");
        assert_string_equal(usage_format_usd(INT64_MIN, buf, sizeof(buf)), "-9223372036854.775808");

        /* Overflow: refused, and counted nowhere (not even as a request). */
        uint64_t before = usage_report_total(r)->requests;
        int64_t cost_before = usage_report_total(r)->cost_microusd;
        fill(rec, &(struct rec_spec) { .team = "t", .cost = INT64_MAX, .latency = 5 });
        assert_int_equal(usage_report_add(r, rec), -ERANGE); /* group t holds 3 USD */
        fill(rec, &(struct rec_spec) { .team = "u", .cost = INT64_MAX, .latency = 5 });
        assert_int_equal(usage_report_add(r, rec), 0);
        fill(rec, &(struct rec_spec) { .team = "new", .cost = INT64_MAX, .latency = 5 });
        assert_int_equal(usage_report_add(r, rec), -ERANGE);
        assert_int_equal(usage_report_total(r)->requests, before + 1);
        assert_int_equal(usage_report_n_groups(r), 2);
        fill(rec, &(struct rec_spec) { .team = "t", .in = UINT64_MAX, .latency = 5 });
        assert_int_equal(usage_report_add(r, rec), 0);
        fill(rec, &(struct rec_spec) { .team = "t", .in = 1, .latency = 5 });
        assert_int_equal(usage_report_add(r, rec), -ERANGE);
        assert_true(usage_report_total(r)->cost_microusd == cost_before + INT64_MAX);
        free(rec);
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

static void check_percentiles(uint64_t *vals, size_t n) {
        struct usage_hist h = {};
        static const unsigned ps[] = { 1, 5, 25, 50, 75, 90, 95, 99, 100 };

        for (size_t i = 0; i < n; i++)
                assert_int_equal(usage_hist_add(&h, vals[i]), 0);
        qsort(vals, n, sizeof(*vals), cmp_u64);
        for (size_t i = 0; i < ELEMENTSOF(ps); i++) {
                size_t rank = (n * ps[i] + 99) / 100;
                uint64_t exact = vals[rank ? rank - 1 : 0], got;
                double err;

                assert_true(usage_hist_percentile(&h, ps[i], &got));
                err = exact ? ((double) got - (double) exact) / (double) exact : (double) got;
                if (err > 0.01 || err < -0.01 || (exact < 128 && got != exact))
                        fail_msg("p%u of %zu values: got %llu, exact %llu (%.4f%%)", ps[i], n,
                                 (unsigned long long) got, (unsigned long long) exact, err * 100);
        }
        usage_hist_done(&h);
}

static void test_percentiles(void **state) {
        size_t n = 200000;
        uint64_t *v = malloc(n * sizeof(*v));
        struct usage_hist h = {};
        uint64_t got;

        assert_non_null(v);
        srandom(12345);
        /* Spread over nine decades, like latencies of cache hits and hangs. */
        for (size_t i = 0; i < n; i++) {
                double e = (double) random() / RAND_MAX * 9.0;
                uint64_t x = 1;
                for (int d = 0; d < (int) e; d++)
                        x *= 10;
                v[i] = x + (uint64_t) random() % (x * 9 + 1);
        }
        check_percentiles(v, n);
        for (size_t i = 0; i < 1000; i++)
                v[i] = (uint64_t) random() % 200;
        check_percentiles(v, 1000);
        for (size_t i = 0; i < 1001; i++)
                v[i] = 1000000 + i;
        check_percentiles(v, 1001);
        /* The worst cases: the true value at a bucket's bottom or top edge,
         * right after a power of two where buckets are widest relative to
         * their values. */
        for (uint64_t base = 128; base <= (UINT64_C(1) << 40); base <<= 1) {
                uint64_t width = base / USAGE_HIST_CHUNK;
                for (size_t i = 0; i < 10; i++)
                        v[i] = base;
                v[10] = base * 100;
                check_percentiles(v, 11);
                for (size_t i = 0; i < 10; i++)
                        v[i] = base + width - 1;
                v[10] = 1;
                check_percentiles(v, 11);
        }
        v[0] = UINT64_MAX;
        v[1] = 0;
        v[2] = UINT64_MAX / 3;
        check_percentiles(v, 3);
        v[0] = 42;
        check_percentiles(v, 1);

        assert_false(usage_hist_percentile(&h, 50, &got));
        assert_int_equal(usage_hist_add(&h, 7), 0);
        assert_false(usage_hist_percentile(&h, 0, &got));
        assert_false(usage_hist_percentile(&h, 101, &got));
        assert_true(usage_hist_percentile(&h, 100, &got));
        assert_int_equal(got, 7);
        usage_hist_done(&h);
        usage_hist_done(NULL);
        free(v);
}

static void test_escaping(void **state) {
        static const char *const teams[] = {
                "a,b", "say \"hi\"", "two\nlines", "=HYPERLINK(\"x\")", "+1", "-x", "@me", "équipe",
                "bad\xff\xfe", "ctl\x01\x1b[31m", "tab\tx", " padded ",
        };
        _cleanup_usage_report_ struct usage_report *r = NULL;
        struct usage_record *rec = malloc(sizeof(*rec));
        usage_by by[] = { USAGE_BY_TEAM };
        json_t *j, *g;

        assert_non_null(rec);
        assert_int_equal(usage_report_new(by, 1, &r), 0);
        for (size_t i = 0; i < ELEMENTSOF(teams); i++) {
                fill(rec, &(struct rec_spec) { .team = teams[i], .latency = 1 });
                assert_int_equal(usage_report_add(r, rec), 0);
        }

        /* JSON: parses, and decodes back to the name (invalid UTF-8 → U+FFFD). */
        j = report_json(r);
        g = json_object_get(j, "groups");
        assert_int_equal(json_array_size(g), ELEMENTSOF(teams));
        for (size_t i = 0; i < json_array_size(g); i++) {
                const char *t = json_string_value(json_object_get(json_array_get(g, i), "team"));
                bool found = false;
                assert_non_null(t);
                for (size_t k = 0; k < ELEMENTSOF(teams); k++)
                        found = found || streq(t, teams[k]);
                if (!found && !streq(t, "bad\xef\xbf\xbd\xef\xbf\xbd"))
                        fail_msg("unexpected team '%s'", t);
        }
        json_decref(j);

        _cleanup_free_ char *csv = capture(r, usage_report_print_csv);
        assert_non_null(strstr(csv, "\n\"a,b\",1,"));
        assert_non_null(strstr(csv, "\n\"say \"\"hi\"\"\",1,"));
        assert_non_null(strstr(csv, "\n\"two\nlines\",1,"));
        assert_non_null(strstr(csv, "\n\"'=HYPERLINK(\"\"x\"\")\",1,"));
        assert_non_null(strstr(csv, "\n\"'+1\",1,"));
        assert_non_null(strstr(csv, "\n\"'-x\",1,"));
        assert_non_null(strstr(csv, "\n\"'@me\",1,"));
        assert_non_null(strstr(csv, "\néquipe,1,"));
        assert_non_null(strstr(csv, "\nbad??,1,"));
        assert_non_null(strstr(csv, "\nctl??[31m,1,"));
        assert_non_null(strstr(csv, "\n\" padded \",1,"));

        /* The table: no control byte reaches the terminal; columns line up
         * by characters, so "équipe" pads like a 6-letter name. */
        _cleanup_free_ char *tab = capture(r, usage_report_print_table);
        for (const char *p = tab; *p; p++)
                if ((unsigned char) *p < 0x20 && *p != '\n')
                        fail_msg("control byte 0x%02x in the table", (unsigned char) *p);
        assert_null(strstr(tab, "\xff"));
        assert_non_null(strstr(tab, "two?lines"));
        assert_non_null(strstr(tab, "ctl??[31m"));
        const char *a = strstr(tab, "\néquipe "), *b = strstr(tab, "\n+1 ");
        assert_non_null(a);
        assert_non_null(b);
        assert_int_equal(strchr(a + 1, '\n') - a, strchr(b + 1, '\n') - b + 1); /* é is 2 bytes */
        free(rec);
}

static void test_day_and_limits(void **state) {
        _cleanup_usage_report_ struct usage_report *r = NULL;
        struct usage_record *rec = malloc(sizeof(*rec));
        usage_by by[] = { USAGE_BY_MODEL };
        char buf[16], name[32];

        assert_string_equal(usage_format_day(MIDNIGHT, buf, sizeof(buf)), "2026-11-25");
        assert_string_equal(usage_format_day(MIDNIGHT - 1, buf, sizeof(buf)), "2026-11-24");
        assert_string_equal(usage_format_day(0, buf, sizeof(buf)), "1970-01-01");
        assert_string_equal(usage_err_to_string(USAGE_ERR_UPSTREAM_5XX), "upstream_5xx");
        assert_null(usage_err_to_string(_USAGE_ERR_MAX));

        /* Past USAGE_MAX_GROUPS distinct models: refused, not unbounded. */
        assert_non_null(rec);
        assert_int_equal(usage_report_new(by, 1, &r), 0);
        for (size_t i = 0; i < USAGE_MAX_GROUPS; i++) {
                snprintf(name, sizeof(name), "m%zu", i);
                fill(rec, &(struct rec_spec) { .model = name, .latency = -1 });
                assert_int_equal(usage_report_add(r, rec), 0);
        }
        fill(rec, &(struct rec_spec) { .model = "one-too-many", .latency = -1 });
        assert_int_equal(usage_report_add(r, rec), -E2BIG);
        assert_int_equal(usage_report_total(r)->requests, USAGE_MAX_GROUPS);
        /* An existing group still counts. */
        fill(rec, &(struct rec_spec) { .model = "m7", .latency = -1 });
        assert_int_equal(usage_report_add(r, rec), 0);
        assert_int_equal(usage_report_n_groups(r), USAGE_MAX_GROUPS);
        free(rec);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_time_utc),
                cmocka_unit_test(test_time_local),
                cmocka_unit_test(test_time_bad),
                cmocka_unit_test(test_by),
                cmocka_unit_test(test_record_parse),
                cmocka_unit_test(test_units),
                cmocka_unit_test(test_grouping),
                cmocka_unit_test(test_empty),
                cmocka_unit_test(test_cost_exact),
                cmocka_unit_test(test_percentiles),
                cmocka_unit_test(test_escaping),
                cmocka_unit_test(test_day_and_limits),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
