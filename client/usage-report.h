/* SPDX-License-Identifier: MIT */
#pragma once

/* `keybrokerctl usage`'s logic, kept apart from sd-journal so it can be unit
 * tested: journalctl-style time specs, per-request records parsed from
 * "FIELD=value" items, groups keyed by --by, a bounded-memory latency
 * histogram, and the table / JSON / CSV output. Like the agent's modules it
 * does not log; functions return 0 or -errno. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---------------------------------------------------------------- time */

/* A journalctl-style time spec into µs since the epoch: "now", "today",
 * "yesterday", "tomorrow", "@EPOCH[.frac]", relative "-1h", "+30min",
 * "-1h 30min", "-2d" (relative to now_usec; a bare "-N" is seconds),
 * "YYYY-MM-DD", "YYYY-MM-DD HH:MM[:SS[.frac]]" (or 'T' between), "HH:MM[:SS]"
 * (today), each in local time unless followed by "Z" or " UTC". -EINVAL on
 * anything else, -ERANGE when out of range. */
int usage_parse_time(const char *s, uint64_t now_usec, uint64_t *ret_usec);

/* ---------------------------------------------------------------- grouping */

typedef enum usage_by {
        USAGE_BY_TEAM,
        USAGE_BY_MODEL,
        USAGE_BY_ROUTE,
        USAGE_BY_KEY,
        USAGE_BY_UNIT,
        USAGE_BY_DAY,
        USAGE_BY_HOST,          /* KEYBROKER_HOST, else journald's _HOSTNAME */
        _USAGE_BY_MAX,
} usage_by;

const char *usage_by_to_string(usage_by b);
/* "team", or a comma list "model,route", appended to by[] (*n in/out,
 * at most _USAGE_BY_MAX; a key given twice counts once). -EINVAL on an
 * unknown or empty name. */
int usage_parse_by(const char *s, usage_by by[static _USAGE_BY_MAX], size_t *n);

/* Longest group key value kept (longer ones are cut, so they group by their
 * first bytes); far longer than any team, model, route, key or unit name. */
#define USAGE_VALUE_MAX 512
/* Most groups one report holds: a bound on memory whatever the journal holds
 * (a caller controls the model name). */
#define USAGE_MAX_GROUPS 100000

struct usage_str {
        size_t len;
        char s[USAGE_VALUE_MAX];
};

/* One per-request journal record, as far as a report needs it. */
struct usage_record {
        uint64_t realtime_usec;
        struct usage_str team, model, route, key, unit;
        struct usage_str host, journal_host;    /* KEYBROKER_HOST; _HOSTNAME */
        uint64_t input_tokens, output_tokens, cached_tokens;
        /* the other billing units (usage.h): images, audio in ms, video
         * seconds, speech characters; batch: a batch's usage record */
        uint64_t images, audio_msec, video_seconds, characters;
        bool batch;
        int64_t cost_microusd;
        char outcome[32];
        unsigned upstream_status;
        uint64_t latency_ms;
        bool has_latency;
        bool test;              /* KEYBROKER_TEST=1: a test broker's record ([agent] test_traffic) */
};

/* Zero a record before its items are parsed into it. */
void usage_record_reset(struct usage_record *rec);
/* One "FIELD=value" item of a journal entry (not NUL-terminated); fields a
 * report does not use are ignored, and so are numbers that do not parse (a
 * record is counted all the same). Returns 1 when used, 0 when ignored. */
int usage_record_parse_item(struct usage_record *rec, const void *data, size_t len);

/* ---------------------------------------------------------------- latency */

/* Latency percentiles in bounded memory: a log-linear histogram (values up
 * to 127 exact, then 64 buckets per power of two). A bucket spans at most
 * 1/64 of its lower bound and reports its midpoint, so a percentile is off
 * by at most 0.8% of the true value (nearest-rank definition), whatever the
 * number of values; memory is at most ~30 KiB per group and typically ~2. */
#define USAGE_HIST_SUB_BITS 6
#define USAGE_HIST_CHUNK (1U << USAGE_HIST_SUB_BITS)
#define USAGE_HIST_N_BUCKETS (2 * USAGE_HIST_CHUNK + (64 - USAGE_HIST_SUB_BITS - 1) * USAGE_HIST_CHUNK)
#define USAGE_HIST_N_CHUNKS (USAGE_HIST_N_BUCKETS / USAGE_HIST_CHUNK)

struct usage_hist {
        uint64_t n, min, max;
        uint64_t *chunks[USAGE_HIST_N_CHUNKS]; /* allocated as values arrive */
};

int usage_hist_add(struct usage_hist *h, uint64_t v);
/* Nearest-rank percentile p (1..100); false when empty. */
bool usage_hist_percentile(const struct usage_hist *h, unsigned p, uint64_t *ret);
void usage_hist_done(struct usage_hist *h);

/* ---------------------------------------------------------------- report */

typedef enum usage_err {
        USAGE_ERR_QUOTA_REJECTED,       /* OUTCOME quota_rejected */
        USAGE_ERR_UPSTREAM_429,         /* UPSTREAM_STATUS 429 */
        USAGE_ERR_TIMEOUT,              /* OUTCOME upstream_timeout */
        USAGE_ERR_MODEL_NOT_FOUND,      /* OUTCOME model_not_found, or UPSTREAM_STATUS 404 */
        USAGE_ERR_UPSTREAM_5XX,         /* UPSTREAM_STATUS 500-599 */
        USAGE_ERR_STREAM_INTERRUPTED,   /* OUTCOME stream_interrupted */
        USAGE_ERR_CLIENT_ABORT,         /* OUTCOME client_abort */
        _USAGE_ERR_MAX,
} usage_err;

const char *usage_err_to_string(usage_err e);

struct usage_totals {
        uint64_t requests;
        uint64_t input_tokens, output_tokens, cached_tokens;
        uint64_t images, audio_msec, video_seconds, characters, batches;
        int64_t cost_microusd;
        uint64_t errors[_USAGE_ERR_MAX];
        struct usage_hist latency;
};

struct usage_report;

/* by: the grouping keys, in column order (n_by 1.._USAGE_BY_MAX). */
int usage_report_new(const usage_by *by, size_t n_by, struct usage_report **ret);
struct usage_report *usage_report_free(struct usage_report *r);
static inline void usage_report_freep(struct usage_report **r) {
        usage_report_free(*r);
}
#define _cleanup_usage_report_ __attribute__((cleanup(usage_report_freep)))

/* Count one record. -E2BIG past USAGE_MAX_GROUPS groups, -ERANGE when a sum
 * would overflow (nothing is counted then), -ENOMEM. */
int usage_report_add(struct usage_report *r, const struct usage_record *rec);
size_t usage_report_n_groups(const struct usage_report *r);
const struct usage_totals *usage_report_total(const struct usage_report *r);

/* Output, groups sorted by their key values (bytewise). The table has one
 * column per --by key, numbers right-aligned, a TOTAL row, control
 * characters and invalid UTF-8 shown as '?'. JSON: {"by":[…],"groups":[…],
 * "total":{…}} with cost_usd an exact decimal number (and cost_microusd).
 * CSV (RFC 4180 but with LF line ends): a header row, one row per group,
 * no total row, empty cells for missing percentiles; a text
 * cell that a spreadsheet would take for a formula (starting with = + - @)
 * gets a leading '. Return 0 or -errno (e.g. -EIO on a write error). */
int usage_report_print_table(struct usage_report *r, FILE *f);
int usage_report_print_json(struct usage_report *r, FILE *f);
int usage_report_print_csv(struct usage_report *r, FILE *f);

/* Helpers, exposed for tests. */
/* "-12.000345" from micro-USD, exact. buf at least 32 bytes. */
const char *usage_format_usd(int64_t microusd, char *buf, size_t size);
/* "YYYY-MM-DD" (UTC) of a realtime µs. buf at least 11 bytes. */
const char *usage_format_day(uint64_t realtime_usec, char *buf, size_t size);
