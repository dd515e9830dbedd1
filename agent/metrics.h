/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 5 of 12, the call: calls layers 6-12. */

/* GET /metrics on the admin socket: Prometheus text exposition format
 * 0.0.4. The counters (requests, tokens, cost, latency histograms) are kept
 * here, updated once per finished request from the loop; the gauges (in
 * flight, quota remaining, circuit state, key age, journal) are read from
 * the broker when the page is made. Loop only: not thread-safe.
 *
 * Families (label values escaped per the format: \\, \", \n):
 *
 *   keybroker_requests_total{team,model,route,outcome}            counter
 *   keybroker_tokens_total{team,model,route,kind}                 counter
 *       kind: input | output | cached | cache_write | reasoning
 *   keybroker_cost_microusd_total{team,model,route}               counter
 *   keybroker_upstream_latency_seconds{route}                     histogram
 *       arrival to end of requests that were forwarded upstream
 *   keybroker_upstream_ttfb_seconds{route}                        histogram
 *       arrival to the upstream's first response byte (when one came)
 *   keybroker_requests_in_flight                                  gauge
 *   keybroker_quota_limit{team,limit}, keybroker_quota_remaining{team,limit}
 *       one per configured (non-zero) limit; limit is the config key name;
 *       budget_usd_per_* in USD, the others in requests / tokens / calls
 *   keybroker_circuit_state{route}            0 closed, 1 half-open, 2 open
 *   keybroker_key_age_seconds{key}   since the active sealed version was set
 *       (keys from credentials_dir have no creation time: not listed)
 *   keybroker_journal_records_written_total, _dropped_total,
 *   _spooled_total (counters), keybroker_journal_spool_records (gauge)
 *   keybroker_metrics_series_overflow_total   requests not counted by label
 *       because KB_METRICS_MAX_SERIES label sets already exist
 *
 * Bounded cardinality: team, model and route values are names from the
 * config (a model the config does not know is counted as model="", a
 * request without a team or route as team="" / route=""), and outcomes are
 * a fixed set. Label sets survive reloads (counters never go back), capped
 * at KB_METRICS_MAX_SERIES. */

#include <stdbool.h>
#include <stdint.h>

#include "request.h"
#include "util.h"

#define KB_METRICS_MAX_SERIES 10000U    /* (team, model, route) label sets */
#define KB_METRICS_MAX_ROUTES 1024U     /* histogram label sets */
#define KB_METRICS_N_BUCKETS 16U        /* histogram buckets besides +Inf */

typedef enum kb_token_kind {
        KB_TOKENS_INPUT,
        KB_TOKENS_OUTPUT,
        KB_TOKENS_CACHED,
        KB_TOKENS_CACHE_WRITE,
        KB_TOKENS_REASONING,
        _KB_TOKENS_MAX,
} kb_token_kind;

struct kb_metrics;
struct kb_broker;
struct kb_conn;

int kb_metrics_new(struct kb_metrics **ret);
struct kb_metrics *kb_metrics_free(struct kb_metrics *m); /* accepts NULL; returns NULL */

/* One finished request, as kb_metrics_request() takes it from a kb_request. */
struct kb_metrics_sample {
        const char *team;               /* NULL = "" */
        const char *model;
        const char *route;
        kb_outcome outcome;
        uint64_t tokens[_KB_TOKENS_MAX];
        int64_t cost_microusd;          /* < 0 counts as 0 */
        bool upstream;                  /* forwarded: observe latency */
        uint64_t latency_usec;
        uint64_t ttfb_usec;             /* 0: no first byte */
};

/* Count a sample. -EINVAL for a bad outcome, -E2BIG when the label set is
 * new and the cap is reached (counted in the overflow counter), -ENOMEM. */
int kb_metrics_add(struct kb_metrics *m, const struct kb_metrics_sample *s);
/* Count a finished request (kb_request_finish). Never fails. */
void kb_metrics_request(struct kb_metrics *m, const struct kb_request *r);

/* Append s as an escaped label value (without quotes). */
int kb_metrics_escape(struct kb_buf *out, const char *s);
/* Append the counter and histogram families. */
int kb_metrics_format(const struct kb_metrics *m, struct kb_buf *out);
/* The whole page: b->metrics plus the broker's gauges. */
int kb_metrics_render(struct kb_broker *b, struct kb_buf *out);

#define KB_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
