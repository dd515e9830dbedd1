/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 8 of 12, decisions: calls no other layer. */

/* Per-team quotas and budgets: sliding minute windows, calendar UTC day and
 * month windows, reservations that are taken before a call is forwarded and
 * settled to real usage when it ends, and an atomic on-disk snapshot.
 *
 * Library-like: never logs, never reads the clock (every function takes the
 * realtime in µs, so tests are exact), does no I/O but kb_quota_save() and
 * kb_quota_load(). Not thread-safe: call from the event loop only.
 *
 * Accounting model, per team:
 *
 *  - requests_per_minute: a request counts from the moment it is admitted by
 *    kb_quota_reserve() (or, when replayed, at its record time), whatever its
 *    outcome; settling never gives it back.
 *  - tokens_per_minute: a reservation's estimate counts while it is in flight;
 *    at settle the actual tokens count from the settle time.
 *  - tokens_per_day, budget_usd_per_day, budget_usd_per_month: in-flight
 *    estimates count; at settle the actual usage is added to the UTC day and
 *    UTC month of the settle time (kb_quota_account() uses the same rule with
 *    its time), so the day/month counters equal the sum of the usage settled
 *    in that day/month, i.e. the sum of the journaled usage when the caller
 *    passes the same time it journals.
 *  - max_concurrent: reservations in flight.
 *
 * Sliding minute exactness: the minute windows are kept in 1-second buckets.
 * Usage at time t (µs) goes to the bucket ceil(t / 1 s) and counts while
 * now < ceil(t / 1 s) + 60 s. So usage at a whole second counts for exactly
 * 60 s, and usage at any other time for less than 1 s more than that (never
 * less: the window is never overspent). When the realtime clock steps back,
 * minute usage newer than "now" is not counted until the clock catches up;
 * day/month counters never go back (usage of a "future" day keeps counting).
 *
 * A request is admitted only if, after adding it, every limit still holds,
 * counting settled usage plus all reservations in flight: a burst of
 * concurrent requests can never overspend. Limit value 0 = no limit. All
 * money is integer micro-USD. Counts saturate at UINT64_MAX instead of
 * wrapping. */

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

#define KB_QUOTA_CURSOR_MAX 4096U           /* bytes of a journal cursor in a snapshot */
#define KB_QUOTA_SNAPSHOT_MAX (64U << 20)   /* bytes of a snapshot file */

typedef enum kb_quota_limit {
        KB_QUOTA_REQUESTS_PER_MINUTE,
        KB_QUOTA_TOKENS_PER_MINUTE,
        KB_QUOTA_TOKENS_PER_DAY,
        KB_QUOTA_BUDGET_PER_DAY,        /* micro-USD */
        KB_QUOTA_BUDGET_PER_MONTH,      /* micro-USD */
        KB_QUOTA_MAX_CONCURRENT,
        _KB_QUOTA_LIMIT_MAX,
} kb_quota_limit;

/* "requests_per_minute", "tokens_per_minute", "tokens_per_day",
 * "budget_usd_per_day", "budget_usd_per_month", "max_concurrent" (the config
 * key names); NULL when out of range. */
const char *kb_quota_limit_to_string(kb_quota_limit l);
/* The kb_quota_limit, or -EINVAL when unknown. */
int kb_quota_limit_from_string(const char *s);
/* true for rate limits (requests/tokens per minute, max_concurrent): OpenAI
 * error type "rate_limit_error"; false for quotas and budgets (tokens per
 * day, USD budgets): "insufficient_quota". */
bool kb_quota_limit_is_rate(kb_quota_limit l);
/* "rate_limit_error" or "insufficient_quota"; NULL when out of range. */
const char *kb_quota_limit_error_type(kb_quota_limit l);

/* Why a reservation (or a growth) was refused. Budget values are micro-USD. */
struct kb_quota_denial {
        kb_quota_limit limit;
        uint64_t used;          /* settled in the window + reserved in flight, before this request */
        uint64_t requested;     /* what this request asked for (1 for requests/concurrency) */
        uint64_t max;           /* the configured limit */
        /* Realtime µs when enough will have freed up for this request: for
         * the minute windows when the oldest counted buckets expire; next UTC
         * midnight / first of next month 00:00 UTC for day/month windows.
         * 0 = unknown: max_concurrent, a minute window blocked by reservations
         * in flight, or a request bigger than the limit itself (never fits).
         * Callers turn 0 into a short retry-after. */
        uint64_t reset_usec;
        bool rate;              /* kb_quota_limit_is_rate(limit) */
        /* True only for the first denial by this limit in its window (the
         * calendar day/month; for minute windows and max_concurrent the 60 s
         * following the first denial), so that the caller journals a quota
         * record once per limit per window. */
        bool first_in_window;
};

struct kb_quota;
struct kb_reservation;

int kb_quota_new(struct kb_quota **ret);
struct kb_quota *kb_quota_free(struct kb_quota *q); /* returns NULL; accepts NULL */
static inline void kb_quota_freep(struct kb_quota **q) {
        kb_quota_free(*q);
}
#define _cleanup_quota_ __attribute__((cleanup(kb_quota_freep)))

/* Bind to the teams of c, by name: teams that survive a reload keep their
 * counters and get the new limits; new teams start at zero; teams that
 * vanished are dropped (their reservations in flight still settle safely,
 * into a counter nobody reads any more). c is not referenced after return.
 * Returns 0, -ENOMEM or -EINVAL (duplicate team names); on failure nothing
 * changed. */
int kb_quota_configure(struct kb_quota *q, const struct kb_config *c);

/* Admit a call of team at now_usec with the given estimate (tokens: input +
 * output; cost in micro-USD, >= 0). Returns 0 and a reservation that must be
 * ended with kb_quota_settle() or kb_quota_cancel(); -EDQUOT when a limit
 * would be crossed, filling *ret_denial when non-NULL (limits are checked
 * and reported in this order, the longest window first: budget per month,
 * budget per day, tokens per day, tokens per minute, requests per minute,
 * max_concurrent); -ENOENT for a team not in the configuration; -EINVAL for
 * a negative cost; -ENOMEM. Nothing is counted unless 0 is returned. */
int kb_quota_reserve(struct kb_quota *q, const char *team, uint64_t now_usec, uint64_t est_tokens,
                     int64_t est_cost_microusd, struct kb_reservation **ret,
                     struct kb_quota_denial *ret_denial);

/* A reservation the quota store admitted: counted like any other, never
 * refused here (nor its growth: kb_quota_grow() always succeeds and
 * kb_quota_headroom() says no limit). */
int kb_quota_reserve_unchecked(struct kb_quota *q, const char *team, uint64_t now_usec, uint64_t est_tokens,
                               int64_t est_cost_microusd, struct kb_reservation **ret);
/* A refusal decided elsewhere (the quota store) by limit l of team at now:
 * true when it is the first in its window (journal it), as
 * kb_quota_denial.first_in_window. */
bool kb_quota_first_denial(struct kb_quota *q, const char *team, kb_quota_limit l, uint64_t now_usec);

/* End a reservation with the actual usage (whatever the outcome: success,
 * upstream error, client abort, cut stream): the estimate is released, the
 * actual tokens and cost are counted at now_usec (minute bucket, UTC day and
 * month), the concurrency slot frees up, the request stays counted in
 * requests_per_minute from its admission. Usage above the estimate is
 * counted in full even if it crosses a limit (it was spent). A negative cost
 * counts as 0. Frees res; accepts NULL. Never fails. */
void kb_quota_settle(struct kb_reservation *res, uint64_t now_usec, uint64_t tokens, int64_t cost_microusd);

/* Drop a reservation without usage (the call never went upstream): same as
 * settling 0 tokens and 0 cost, no clock needed. Accepts NULL. */
void kb_quota_cancel(struct kb_reservation *res);
/* Take back an admission that was not one after all (the quota store
 * refused it, or it is admitted again another way): as kb_quota_cancel(),
 * and the request no longer counts in requests_per_minute. */
void kb_quota_withdraw(struct kb_reservation *res);
static inline void kb_quota_cancelp(struct kb_reservation **res) {
        kb_quota_cancel(*res);
}
#define _cleanup_reservation_ __attribute__((cleanup(kb_quota_cancelp)))

/* Hard stop of a stream. Two calls, use both:
 *
 * kb_quota_headroom(): how many more tokens / micro-USD this reservation may
 * consume beyond what it holds now before the team crosses tokens_per_minute,
 * tokens_per_day or a USD budget (counting everything settled and in
 * flight); UINT64_MAX /
 * INT64_MAX when the team has no such limit. Use it to find where to cut.
 *
 * kb_quota_grow(): raise what the reservation holds to at least
 * total_tokens / total_cost_microusd (running totals of the call so far,
 * input included), so concurrent calls see it. Holding less than now is a
 * no-op (an estimate never shrinks before settle). Returns 0, or -EDQUOT
 * when the new totals would cross tokens_per_minute, tokens_per_day or a
 * budget — the reservation is then unchanged and *ret_denial filled (when
 * non-NULL) as for kb_quota_reserve(): cut the stream, then settle with what
 * was delivered. requests_per_minute and max_concurrent count the request
 * from its admission, so a stream cannot cross them. -EINVAL for a negative
 * cost. */
int kb_quota_headroom(const struct kb_reservation *res, uint64_t now_usec, uint64_t *ret_tokens,
                      int64_t *ret_cost_microusd);
int kb_quota_grow(struct kb_reservation *res, uint64_t now_usec, uint64_t total_tokens,
                  int64_t total_cost_microusd, struct kb_quota_denial *ret_denial);

/* What the reservation holds now: tokens / micro-USD (estimate or grown). */
uint64_t kb_reservation_tokens(const struct kb_reservation *res);
int64_t kb_reservation_cost(const struct kb_reservation *res);
/* The team's name, valid until the reservation ends. */
const char *kb_reservation_team(const struct kb_reservation *res);

/* One window of a team, for x-ratelimit-* headers and GET /teams. */
struct kb_quota_window {
        uint64_t limit;         /* 0 = no limit */
        /* Settled usage in the window. requests_per_minute counts a request
         * from its admission, so in-flight requests are in "used" and
         * "reserved" is 0; for max_concurrent "used" is the in-flight count. */
        uint64_t used;
        uint64_t reserved;      /* held by reservations in flight */
        uint64_t remaining;     /* limit - used - reserved, >= 0; UINT64_MAX when no limit */
        /* Realtime µs when the window is back to zero settled usage: the
         * newest counted minute bucket's expiry (0 when nothing is counted),
         * the next UTC midnight, the first of next month; 0 for
         * max_concurrent. */
        uint64_t reset_usec;
};

struct kb_quota_view {
        struct kb_quota_window windows[_KB_QUOTA_LIMIT_MAX]; /* by kb_quota_limit */
        uint64_t in_flight;
        uint64_t month_tokens;  /* settled tokens this UTC month (no limit; for reports) */
};

/* Returns 0, or -ENOENT for a team not in the configuration. */
int kb_quota_view(const struct kb_quota *q, const char *team, uint64_t now_usec, struct kb_quota_view *ret);

/* Replay one finished call of team at when_usec (journal records newer than
 * the snapshot's cursor, in journal order, at start): counts 1 request and
 * tokens in the minute bucket of when_usec (ignored once expired), and tokens
 * and cost in when_usec's UTC day and month, unless the team's counters are
 * already on a later day/month (then that part is stale and ignored). Equal
 * to reserve + settle at when_usec. Returns 0, -ENOENT for a team not in the
 * configuration (skip the record), -EINVAL for a negative cost. */
int kb_quota_account(struct kb_quota *q, const char *team, uint64_t when_usec, uint64_t tokens,
                     int64_t cost_microusd);

/* Write an atomic snapshot of every team's counters (UTC day and month
 * counters with their day/month, non-empty minute buckets, without
 * reservations in flight) and cursor (an opaque journal cursor, may be NULL)
 * to path: written to "PATH.tmp" (mode 0600, reused if a crash left it),
 * fsync, rename over path, fsync of the directory. Returns 0 or -errno; -EINVAL for a cursor longer than
 * KB_QUOTA_CURSOR_MAX. On failure path is unchanged. */
int kb_quota_save(const struct kb_quota *q, const char *path, const char *cursor);

/* Restore a snapshot written by kb_quota_save() into the teams configured
 * now (call after kb_quota_configure(), before traffic): teams named in the
 * file take its counters, unknown names are ignored; counters of past days,
 * months and expired minute buckets simply stop counting. On success
 * *ret_cursor is the malloc'd cursor or NULL when none was saved. Returns 0;
 * 0 with *ret_cursor = NULL and nothing changed when the file does not exist;
 * -EINVAL for a corrupt, truncated or oversized file (no partial state is
 * applied); other -errno from I/O. */
int kb_quota_load(struct kb_quota *q, const char *path, char **ret_cursor);

/* Fleet teams (quota_scope = fleet with a quota store) are counted in the
 * store; this host counts them too (its own usage: for going offline, for
 * pushing into a store that lost its data). What the store admitted is
 * reserved here unchecked; what this host admits on its own (the store away)
 * is checked against ppm millionths of each limit (KB_QUOTA_SHARE_ALL, the
 * default: the whole limit; a limit that is set stays >= 1). Applies to the
 * teams configured later too. */
#define KB_QUOTA_SHARE_ALL 1000000U
void kb_quota_set_fleet_share(struct kb_quota *q, uint32_t ppm);
bool kb_quota_team_is_fleet(const struct kb_quota *q, const char *team);

/* One team's counters as they stand (settled usage; minute buckets count
 * requests from their admission), for pushing into the quota store. */
struct kb_quota_bucket {
        uint64_t k;             /* ceil(unix seconds) */
        uint64_t requests;
        uint64_t tokens;
};
struct kb_quota_counters {
        const char *team;       /* valid until the next kb_quota_configure() */
        bool fleet;
        bool has_day, has_month;
        uint64_t day, day_tokens, day_cost;             /* day: days since the epoch */
        uint64_t month, month_tokens, month_cost;       /* month: year * 12 + month - 1 */
        size_t n_buckets;
        struct kb_quota_bucket buckets[61];
};
size_t kb_quota_n_teams(const struct kb_quota *q);
int kb_quota_counters(const struct kb_quota *q, size_t i, uint64_t now_usec, struct kb_quota_counters *ret);

/* The calendar of the counters, for the store's keys: the minute window's
 * bucket keys at now, the bucket of usage at usec, its day and month. */
void kb_quota_minute_keys(uint64_t now_usec, uint64_t *ret_kmin, uint64_t *ret_kmax);
uint64_t kb_quota_bucket_key(uint64_t usec);
uint64_t kb_quota_day_of(uint64_t usec);
uint64_t kb_quota_month_of(uint64_t usec);

/* UTC calendar helpers (exposed for tests and the admin API): the realtime
 * µs of the next UTC midnight / the first of the next month 00:00 UTC after
 * now_usec. */
uint64_t kb_quota_next_day_usec(uint64_t now_usec);
uint64_t kb_quota_next_month_usec(uint64_t now_usec);
