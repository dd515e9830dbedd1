/* SPDX-License-Identifier: MIT */
/* Quota windows, reservations, settle. See quota.h for the accounting model;
 * the snapshot file is in quota-store.c. */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "quota-internal.h"

struct kb_reservation {
        struct quota_team *team;
        uint64_t k_admitted;    /* minute bucket that counts this request */
        uint64_t tokens;        /* held in team->reserved_tokens */
        uint64_t cost;          /* held in team->reserved_cost */
        bool unchecked;         /* admitted by the quota store: never refused here */
};

/* The order reserve checks in: longest window first, so that the limit
 * reported is the one whose reset matters most to the caller. */
static const kb_quota_limit check_order[] = {
        KB_QUOTA_BUDGET_PER_MONTH,
        KB_QUOTA_BUDGET_PER_DAY,
        KB_QUOTA_TOKENS_PER_DAY,
        KB_QUOTA_TOKENS_PER_MINUTE,
        KB_QUOTA_REQUESTS_PER_MINUTE,
        KB_QUOTA_MAX_CONCURRENT,
};

static const char *const limit_names[_KB_QUOTA_LIMIT_MAX] = {
        [KB_QUOTA_REQUESTS_PER_MINUTE] = "requests_per_minute",
        [KB_QUOTA_TOKENS_PER_MINUTE] = "tokens_per_minute",
        [KB_QUOTA_TOKENS_PER_DAY] = "tokens_per_day",
        [KB_QUOTA_BUDGET_PER_DAY] = "budget_usd_per_day",
        [KB_QUOTA_BUDGET_PER_MONTH] = "budget_usd_per_month",
        [KB_QUOTA_MAX_CONCURRENT] = "max_concurrent",
};

const char *kb_quota_limit_to_string(kb_quota_limit l) {
        if ((int) l < 0 || l >= _KB_QUOTA_LIMIT_MAX)
                return NULL;
        return limit_names[l];
}

int kb_quota_limit_from_string(const char *s) {
        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < _KB_QUOTA_LIMIT_MAX; i++)
                if (streq(limit_names[i], s))
                        return (int) i;
        return -EINVAL;
}

bool kb_quota_limit_is_rate(kb_quota_limit l) {
        return l == KB_QUOTA_REQUESTS_PER_MINUTE || l == KB_QUOTA_TOKENS_PER_MINUTE ||
               l == KB_QUOTA_MAX_CONCURRENT;
}

const char *kb_quota_limit_error_type(kb_quota_limit l) {
        if ((int) l < 0 || l >= _KB_QUOTA_LIMIT_MAX)
                return NULL;
        return kb_quota_limit_is_rate(l) ? "rate_limit_error" : "insufficient_quota";
}

/* The bucket for usage at t, or NULL when t is already out of the window at
 * now. A slot holding another key holds usage out of the window (two keys of
 * one window never share a slot), except in a replay, where records may come
 * slightly out of order: there older usage never displaces newer. */
static struct quota_bucket *bucket_for(struct quota_team *t, uint64_t at, uint64_t now, bool replay) {
        uint64_t k = quota_bucket_key(at);
        struct quota_bucket *b = &t->minute[k % QUOTA_BUCKETS];

        if (!quota_bucket_counts(k, now))
                return NULL;
        if (b->k == k)
                return b;
        if (replay && b->k != QUOTA_NONE && b->k > k)
                return NULL;
        *b = (struct quota_bucket) { .k = k };
        return b;
}

static void window_sums(const struct quota_team *t, uint64_t now, uint64_t *ret_requests, uint64_t *ret_tokens) {
        uint64_t r = 0, tok = 0;

        for (size_t i = 0; i < QUOTA_BUCKETS; i++)
                if (quota_bucket_counts(t->minute[i].k, now)) {
                        r = quota_sat_add(r, t->minute[i].requests);
                        tok = quota_sat_add(tok, t->minute[i].tokens);
                }
        *ret_requests = r;
        *ret_tokens = tok;
}

static uint64_t bucket_value(const struct quota_bucket *b, kb_quota_limit l) {
        return l == KB_QUOTA_REQUESTS_PER_MINUTE ? b->requests : b->tokens;
}

/* When the oldest counted buckets holding at least need of l have expired;
 * 0 if the counted buckets do not hold that much. */
static uint64_t window_frees_at(const struct quota_team *t, kb_quota_limit l, uint64_t now, uint64_t need) {
        uint64_t kmin, kmax, acc = 0;

        quota_window_keys(now, &kmin, &kmax);
        for (uint64_t k = kmin; k <= kmax; k++) {
                const struct quota_bucket *b = &t->minute[k % QUOTA_BUCKETS];

                if (b->k != k)
                        continue;
                acc = quota_sat_add(acc, bucket_value(b, l));
                if (acc >= need && acc > 0)
                        return quota_bucket_expiry(k);
        }
        return 0;
}

/* When the newest counted usage of l expires; 0 when there is none. */
static uint64_t window_empty_at(const struct quota_team *t, kb_quota_limit l, uint64_t now) {
        uint64_t kmin, kmax;

        quota_window_keys(now, &kmin, &kmax);
        for (uint64_t k = kmax + 1; k-- > kmin;) {
                const struct quota_bucket *b = &t->minute[k % QUOTA_BUCKETS];

                if (b->k == k && bucket_value(b, l) > 0)
                        return quota_bucket_expiry(k);
        }
        return 0;
}

/* Day/month counters of a later day than now (the clock stepped back) keep
 * counting: a budget must not be handed out twice. */
static uint64_t day_used(const struct quota_team *t, uint64_t now, bool cost) {
        if (t->day == QUOTA_NONE || t->day < quota_day_of(now))
                return 0;
        return cost ? t->day_cost : t->day_tokens;
}

static uint64_t month_used(const struct quota_team *t, uint64_t now, bool cost) {
        if (t->month == QUOTA_NONE || t->month < quota_month_of(now))
                return 0;
        return cost ? t->month_cost : t->month_tokens;
}

/* The limit this host enforces on its own: a fleet team's share of it (at
 * least 1 of a limit that is set). */
static uint64_t team_limit(const struct quota_team *t, kb_quota_limit l) {
        uint64_t max = t->limits[l];

        if (!t->fleet || max == 0 || t->share_ppm >= KB_QUOTA_SHARE_ALL)
                return max;
        return MAX((uint64_t) ((unsigned __int128) max * t->share_ppm / KB_QUOTA_SHARE_ALL), (uint64_t) 1);
}

static void usage_of(const struct quota_team *t, kb_quota_limit l, uint64_t now, uint64_t *ret_used,
                     uint64_t *ret_reserved) {
        uint64_t r, tok;

        switch (l) {
        case KB_QUOTA_REQUESTS_PER_MINUTE:
                window_sums(t, now, &r, &tok);
                *ret_used = r;
                *ret_reserved = 0;
                return;
        case KB_QUOTA_TOKENS_PER_MINUTE:
                window_sums(t, now, &r, &tok);
                *ret_used = tok;
                *ret_reserved = t->reserved_tokens;
                return;
        case KB_QUOTA_TOKENS_PER_DAY:
                *ret_used = day_used(t, now, false);
                *ret_reserved = t->reserved_tokens;
                return;
        case KB_QUOTA_BUDGET_PER_DAY:
                *ret_used = day_used(t, now, true);
                *ret_reserved = t->reserved_cost;
                return;
        case KB_QUOTA_BUDGET_PER_MONTH:
                *ret_used = month_used(t, now, true);
                *ret_reserved = t->reserved_cost;
                return;
        case KB_QUOTA_MAX_CONCURRENT:
        default:
                *ret_used = t->in_flight;
                *ret_reserved = 0;
                return;
        }
}

/* The later of now and the counters' own day, so that after a step back of
 * the clock the reset is the end of the day that is being counted. */
static uint64_t day_reset(const struct quota_team *t, uint64_t now) {
        uint64_t r = kb_quota_next_day_usec(now);

        if (t->day != QUOTA_NONE)
                r = MAX(r, (t->day + 1) * QUOTA_DAY);
        return r;
}

static uint64_t month_reset(const struct quota_team *t, uint64_t now) {
        uint64_t r = kb_quota_next_month_usec(now);

        if (t->month != QUOTA_NONE)
                r = MAX(r, quota_month_start_usec(t->month + 1));
        return r;
}

static void deny(struct quota_team *t, kb_quota_limit l, uint64_t now, uint64_t used, uint64_t requested,
                 struct kb_quota_denial *ret) {
        uint64_t max = team_limit(t, l), reset = 0, window_end;

        switch (l) {
        case KB_QUOTA_REQUESTS_PER_MINUTE:
        case KB_QUOTA_TOKENS_PER_MINUTE:
                if (requested <= max)
                        reset = window_frees_at(t, l, now, quota_sat_add(used, requested) - max);
                window_end = quota_sat_add(now, QUOTA_MINUTE);
                break;
        case KB_QUOTA_TOKENS_PER_DAY:
        case KB_QUOTA_BUDGET_PER_DAY:
                window_end = day_reset(t, now);
                if (requested <= max)
                        reset = window_end;
                break;
        case KB_QUOTA_BUDGET_PER_MONTH:
                window_end = month_reset(t, now);
                if (requested <= max)
                        reset = window_end;
                break;
        default:
                window_end = quota_sat_add(now, QUOTA_MINUTE);
                break;
        }

        bool first = now >= t->denied_until[l];
        if (first)
                t->denied_until[l] = window_end;

        if (ret)
                *ret = (struct kb_quota_denial) {
                        .limit = l,
                        .used = used,
                        .requested = requested,
                        .max = max,
                        .reset_usec = reset,
                        .rate = kb_quota_limit_is_rate(l),
                        .first_in_window = first,
                };
}

static uint64_t requested_of(kb_quota_limit l, uint64_t tokens, uint64_t cost) {
        switch (l) {
        case KB_QUOTA_TOKENS_PER_MINUTE:
        case KB_QUOTA_TOKENS_PER_DAY:
                return tokens;
        case KB_QUOTA_BUDGET_PER_DAY:
        case KB_QUOTA_BUDGET_PER_MONTH:
                return cost;
        default:
                return 1;
        }
}

/* Returns the first limit in check_order (restricted to those in mask) that
 * adding the request would cross, or -1, with used = settled + reserved. */
static int first_crossed(const struct quota_team *t, uint64_t now, uint64_t tokens, uint64_t cost,
                         unsigned mask, uint64_t *ret_used, uint64_t *ret_requested) {
        for (size_t i = 0; i < ELEMENTSOF(check_order); i++) {
                kb_quota_limit l = check_order[i];
                uint64_t used, reserved, req, max = team_limit(t, l);

                if (!(mask & (1U << l)) || max == 0)
                        continue;
                usage_of(t, l, now, &used, &reserved);
                used = quota_sat_add(used, reserved);
                req = requested_of(l, tokens, cost);
                if (quota_sat_add(used, req) > max) {
                        *ret_used = used;
                        *ret_requested = req;
                        return (int) l;
                }
        }
        return -1;
}

void quota_team_reset_counters(struct quota_team *t) {
        for (size_t i = 0; i < QUOTA_BUCKETS; i++)
                t->minute[i] = (struct quota_bucket) { .k = QUOTA_NONE };
        t->day = t->month = QUOTA_NONE;
        t->day_tokens = t->day_cost = t->month_tokens = t->month_cost = 0;
}

/* Count settled (or replayed) usage at "at". Live usage of an earlier day or
 * month than the counters' (the clock stepped back) still counts, on the
 * later one; replayed usage of an earlier day/month is stale and dropped. */
static void add_usage(struct quota_team *t, uint64_t at, uint64_t requests, uint64_t tokens, uint64_t cost,
                      bool replay) {
        struct quota_bucket *b = bucket_for(t, at, at, replay);
        uint64_t day = quota_day_of(at), month = quota_month_of(at);

        if (b) {
                b->requests = quota_sat_add(b->requests, requests);
                b->tokens = quota_sat_add(b->tokens, tokens);
        }

        if (t->day == QUOTA_NONE || day > t->day) {
                t->day = day;
                t->day_tokens = t->day_cost = 0;
        }
        if (day == t->day || !replay) {
                t->day_tokens = quota_sat_add(t->day_tokens, tokens);
                t->day_cost = quota_sat_add(t->day_cost, cost);
        }

        if (t->month == QUOTA_NONE || month > t->month) {
                t->month = month;
                t->month_tokens = t->month_cost = 0;
        }
        if (month == t->month || !replay) {
                t->month_tokens = quota_sat_add(t->month_tokens, tokens);
                t->month_cost = quota_sat_add(t->month_cost, cost);
        }
}

static struct quota_team *team_ref(struct quota_team *t) {
        t->n_ref++;
        return t;
}

static void team_unref(struct quota_team *t) {
        if (!t)
                return;
        if (--t->n_ref > 0)
                return;
        free(t->name);
        free(t);
}

static void team_set_limits(struct quota_team *t, const struct kb_team *c, bool store, uint32_t share) {
        t->fleet = store && c->quota_scope != KB_QUOTA_SCOPE_HOST;
        t->share_ppm = share;
        t->limits[KB_QUOTA_REQUESTS_PER_MINUTE] = c->requests_per_minute;
        t->limits[KB_QUOTA_TOKENS_PER_MINUTE] = c->tokens_per_minute;
        t->limits[KB_QUOTA_TOKENS_PER_DAY] = c->tokens_per_day;
        t->limits[KB_QUOTA_BUDGET_PER_DAY] = c->budget_microusd_per_day > 0 ? (uint64_t) c->budget_microusd_per_day : 0;
        t->limits[KB_QUOTA_BUDGET_PER_MONTH] =
                c->budget_microusd_per_month > 0 ? (uint64_t) c->budget_microusd_per_month : 0;
        t->limits[KB_QUOTA_MAX_CONCURRENT] = c->max_concurrent;
}

struct quota_team *quota_find_team(const struct kb_quota *q, const char *name) {
        size_t lo = 0, hi = q->n_teams;

        if (!name)
                return NULL;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int r = strcmp(name, q->teams[mid]->name);

                if (r == 0)
                        return q->teams[mid];
                if (r < 0)
                        hi = mid;
                else
                        lo = mid + 1;
        }
        return NULL;
}

void kb_quota_set_fleet_share(struct kb_quota *q, uint32_t ppm) {
        if (!q)
                return;
        q->fleet_share_ppm = MIN(ppm, KB_QUOTA_SHARE_ALL);
        for (size_t i = 0; i < q->n_teams; i++)
                q->teams[i]->share_ppm = q->fleet_share_ppm;
}

bool kb_quota_team_is_fleet(const struct kb_quota *q, const char *team) {
        const struct quota_team *t = q ? quota_find_team(q, team) : NULL;
        return t && t->fleet;
}

size_t kb_quota_n_teams(const struct kb_quota *q) {
        return q ? q->n_teams : 0;
}

int kb_quota_counters(const struct kb_quota *q, size_t i, uint64_t now_usec, struct kb_quota_counters *ret) {
        const struct quota_team *t;

        if (!q || i >= q->n_teams || !ret)
                return -EINVAL;
        now_usec = quota_clamp_time(now_usec);
        t = q->teams[i];
        *ret = (struct kb_quota_counters) {
                .team = t->name,
                .fleet = t->fleet,
                .has_day = t->day != QUOTA_NONE,
                .day = t->day == QUOTA_NONE ? 0 : t->day,
                .day_tokens = t->day_tokens,
                .day_cost = t->day_cost,
                .has_month = t->month != QUOTA_NONE,
                .month = t->month == QUOTA_NONE ? 0 : t->month,
                .month_tokens = t->month_tokens,
                .month_cost = t->month_cost,
        };
        for (size_t b = 0; b < QUOTA_BUCKETS; b++) {
                const struct quota_bucket *k = &t->minute[b];
                if (!quota_bucket_counts(k->k, now_usec) || (k->requests == 0 && k->tokens == 0))
                        continue;
                ret->buckets[ret->n_buckets++] = (struct kb_quota_bucket) { .k = k->k, .requests = k->requests,
                                                                            .tokens = k->tokens };
        }
        return 0;
}

int kb_quota_new(struct kb_quota **ret) {
        struct kb_quota *q;

        if (!ret)
                return -EINVAL;
        q = calloc(1, sizeof(*q));
        if (!q)
                return -ENOMEM;
        q->fleet_share_ppm = KB_QUOTA_SHARE_ALL;
        *ret = q;
        return 0;
}

static void teams_free(struct quota_team **teams, size_t n) {
        for (size_t i = 0; i < n; i++)
                team_unref(teams[i]);
        free(teams);
}

struct kb_quota *kb_quota_free(struct kb_quota *q) {
        if (!q)
                return NULL;
        teams_free(q->teams, q->n_teams);
        free(q);
        return NULL;
}

struct staged_team {
        struct quota_team *team;
        const struct kb_team *conf;
};

static int staged_cmp(const void *a, const void *b) {
        const struct staged_team *x = a, *y = b;

        return strcmp(x->team->name, y->team->name);
}

static void staged_free(struct staged_team *s, size_t n) {
        for (size_t i = 0; i < n; i++)
                team_unref(s[i].team);
        free(s);
}

int kb_quota_configure(struct kb_quota *q, const struct kb_config *c) {
        struct staged_team *staged = NULL;
        struct quota_team **teams = NULL;
        size_t n = 0;

        if (!q || !c || (c->n_teams > 0 && !c->teams))
                return -EINVAL;

        if (c->n_teams > 0) {
                staged = calloc(c->n_teams, sizeof(*staged));
                teams = calloc(c->n_teams, sizeof(*teams));
                if (!staged || !teams) {
                        free(staged);
                        free(teams);
                        return -ENOMEM;
                }
        }

        for (; n < c->n_teams; n++) {
                const struct kb_team *ct = &c->teams[n];
                struct quota_team *t;

                if (!ct->name) {
                        staged_free(staged, n);
                        free(teams);
                        return -EINVAL;
                }
                t = quota_find_team(q, ct->name);
                if (t)
                        team_ref(t);
                else {
                        t = calloc(1, sizeof(*t));
                        if (!t || !(t->name = strdup(ct->name))) {
                                free(t);
                                staged_free(staged, n);
                                free(teams);
                                return -ENOMEM;
                        }
                        t->n_ref = 1;
                        quota_team_reset_counters(t);
                }
                staged[n] = (struct staged_team) { .team = t, .conf = ct };
        }

        if (n > 1)
                qsort(staged, n, sizeof(*staged), staged_cmp);
        for (size_t i = 1; i < n; i++)
                if (streq(staged[i - 1].team->name, staged[i].team->name)) {
                        staged_free(staged, n);
                        free(teams);
                        return -EINVAL;
                }

        /* Only now, when nothing can fail any more, touch the live teams. */
        for (size_t i = 0; i < n; i++) {
                team_set_limits(staged[i].team, staged[i].conf, c->agent.quota_store != NULL, q->fleet_share_ppm);
                teams[i] = staged[i].team;
        }
        free(staged);
        teams_free(q->teams, q->n_teams);
        q->teams = teams;
        q->n_teams = n;
        return 0;
}

static int reserve(struct kb_quota *q, const char *team, uint64_t now_usec, uint64_t est_tokens,
                   int64_t est_cost_microusd, bool check, struct kb_reservation **ret,
                   struct kb_quota_denial *ret_denial);

int kb_quota_reserve(struct kb_quota *q, const char *team, uint64_t now_usec, uint64_t est_tokens,
                     int64_t est_cost_microusd, struct kb_reservation **ret,
                     struct kb_quota_denial *ret_denial) {
        return reserve(q, team, now_usec, est_tokens, est_cost_microusd, true, ret, ret_denial);
}

int kb_quota_reserve_unchecked(struct kb_quota *q, const char *team, uint64_t now_usec, uint64_t est_tokens,
                               int64_t est_cost_microusd, struct kb_reservation **ret) {
        int r = reserve(q, team, now_usec, est_tokens, est_cost_microusd, false, ret, NULL);
        if (r >= 0)
                (*ret)->unchecked = true;
        return r;
}

bool kb_quota_first_denial(struct kb_quota *q, const char *team, kb_quota_limit l, uint64_t now_usec) {
        struct quota_team *t = q ? quota_find_team(q, team) : NULL;
        struct kb_quota_denial d;

        if (!t || l >= _KB_QUOTA_LIMIT_MAX)
                return false;
        deny(t, l, quota_clamp_time(now_usec), 0, 0, &d);
        return d.first_in_window;
}

static int reserve(struct kb_quota *q, const char *team, uint64_t now_usec, uint64_t est_tokens,
                   int64_t est_cost_microusd, bool check, struct kb_reservation **ret,
                   struct kb_quota_denial *ret_denial) {
        struct quota_team *t;
        struct kb_reservation *res;
        struct quota_bucket *b;
        uint64_t used, req;
        int l;

        now_usec = quota_clamp_time(now_usec);
        if (!q || !team || !ret || est_cost_microusd < 0)
                return -EINVAL;
        t = quota_find_team(q, team);
        if (!t)
                return -ENOENT;

        l = check ? first_crossed(t, now_usec, est_tokens, (uint64_t) est_cost_microusd, ~0U, &used, &req) : -1;
        if (l >= 0) {
                deny(t, (kb_quota_limit) l, now_usec, used, req, ret_denial);
                return -EDQUOT;
        }

        res = calloc(1, sizeof(*res));
        if (!res)
                return -ENOMEM;

        b = bucket_for(t, now_usec, now_usec, false);
        b->requests = quota_sat_add(b->requests, 1);
        b->in_flight++;

        res->team = team_ref(t);
        res->k_admitted = b->k;
        res->tokens = est_tokens;
        res->cost = (uint64_t) est_cost_microusd;
        t->in_flight++;
        t->reserved_tokens = quota_sat_add(t->reserved_tokens, res->tokens);
        t->reserved_cost = quota_sat_add(t->reserved_cost, res->cost);

        *ret = res;
        return 0;
}

static void reservation_release(struct kb_reservation *res) {
        struct quota_team *t = res->team;
        struct quota_bucket *b = &t->minute[res->k_admitted % QUOTA_BUCKETS];

        if (b->k == res->k_admitted && b->in_flight > 0)
                b->in_flight--;
        t->in_flight = quota_sat_sub(t->in_flight, 1);
        t->reserved_tokens = quota_sat_sub(t->reserved_tokens, res->tokens);
        t->reserved_cost = quota_sat_sub(t->reserved_cost, res->cost);
}

void kb_quota_settle(struct kb_reservation *res, uint64_t now_usec, uint64_t tokens, int64_t cost_microusd) {
        if (!res)
                return;
        now_usec = quota_clamp_time(now_usec);
        reservation_release(res);
        add_usage(res->team, now_usec, 0, tokens, cost_microusd > 0 ? (uint64_t) cost_microusd : 0, false);
        team_unref(res->team);
        free(res);
}

void kb_quota_withdraw(struct kb_reservation *res) {
        if (!res)
                return;
        struct quota_bucket *b = &res->team->minute[res->k_admitted % QUOTA_BUCKETS];
        if (b->k == res->k_admitted && b->requests > 0)
                b->requests--;
        kb_quota_cancel(res);
}

void kb_quota_cancel(struct kb_reservation *res) {
        if (!res)
                return;
        reservation_release(res);
        team_unref(res->team);
        free(res);
}

/* What a stream is cut at. requests_per_minute and max_concurrent count
 * the request itself from its admission: a stream cannot cross them. */
#define HARD_STOP_MASK                                                                  \
        ((1U << KB_QUOTA_TOKENS_PER_MINUTE) | (1U << KB_QUOTA_TOKENS_PER_DAY) |          \
         (1U << KB_QUOTA_BUDGET_PER_DAY) | (1U << KB_QUOTA_BUDGET_PER_MONTH))

static bool limit_counts_tokens(kb_quota_limit l) {
        return l == KB_QUOTA_TOKENS_PER_MINUTE || l == KB_QUOTA_TOKENS_PER_DAY;
}

int kb_quota_headroom(const struct kb_reservation *res, uint64_t now_usec, uint64_t *ret_tokens,
                      int64_t *ret_cost_microusd) {
        const struct quota_team *t;
        uint64_t tokens = UINT64_MAX, cost = INT64_MAX;

        now_usec = quota_clamp_time(now_usec);
        if (!res)
                return -EINVAL;
        t = res->team;
        for (kb_quota_limit l = 0; l < _KB_QUOTA_LIMIT_MAX && !res->unchecked; l++) {
                uint64_t used, reserved, room;

                if (!(HARD_STOP_MASK & (1U << l)) || team_limit(t, l) == 0)
                        continue;
                usage_of(t, l, now_usec, &used, &reserved);
                room = quota_sat_sub(team_limit(t, l), quota_sat_add(used, reserved));
                if (limit_counts_tokens(l))
                        tokens = MIN(tokens, room);
                else
                        cost = MIN(cost, room);
        }
        if (ret_tokens)
                *ret_tokens = tokens;
        if (ret_cost_microusd)
                *ret_cost_microusd = (int64_t) MIN(cost, (uint64_t) INT64_MAX);
        return 0;
}

int kb_quota_grow(struct kb_reservation *res, uint64_t now_usec, uint64_t total_tokens,
                  int64_t total_cost_microusd, struct kb_quota_denial *ret_denial) {
        struct quota_team *t;
        uint64_t add_tokens, add_cost, used, req;
        int l;

        now_usec = quota_clamp_time(now_usec);
        if (!res || total_cost_microusd < 0)
                return -EINVAL;
        t = res->team;
        add_tokens = quota_sat_sub(total_tokens, res->tokens);
        add_cost = quota_sat_sub((uint64_t) total_cost_microusd, res->cost);
        if (add_tokens == 0 && add_cost == 0)
                return 0;

        l = res->unchecked ? -1 : first_crossed(t, now_usec, add_tokens, add_cost, HARD_STOP_MASK, &used, &req);
        if (l >= 0) {
                /* report the totals of this call, not just the growth */
                uint64_t held = limit_counts_tokens((kb_quota_limit) l) ? res->tokens : res->cost;

                deny(t, (kb_quota_limit) l, now_usec, quota_sat_sub(used, held), quota_sat_add(req, held), ret_denial);
                return -EDQUOT;
        }

        res->tokens += add_tokens;
        res->cost += add_cost;
        t->reserved_tokens = quota_sat_add(t->reserved_tokens, add_tokens);
        t->reserved_cost = quota_sat_add(t->reserved_cost, add_cost);
        return 0;
}

uint64_t kb_reservation_tokens(const struct kb_reservation *res) {
        return res ? res->tokens : 0;
}

int64_t kb_reservation_cost(const struct kb_reservation *res) {
        return res ? (int64_t) MIN(res->cost, (uint64_t) INT64_MAX) : 0;
}

const char *kb_reservation_team(const struct kb_reservation *res) {
        return res ? res->team->name : NULL;
}

int kb_quota_view(const struct kb_quota *q, const char *team, uint64_t now_usec, struct kb_quota_view *ret) {
        const struct quota_team *t;
        struct kb_quota_view v = {};

        now_usec = quota_clamp_time(now_usec);
        if (!q || !team || !ret)
                return -EINVAL;
        t = quota_find_team(q, team);
        if (!t)
                return -ENOENT;

        for (kb_quota_limit l = 0; l < _KB_QUOTA_LIMIT_MAX; l++) {
                struct kb_quota_window *w = &v.windows[l];

                w->limit = t->limits[l];
                usage_of(t, l, now_usec, &w->used, &w->reserved);
                w->remaining = w->limit == 0 ? UINT64_MAX : quota_sat_sub(w->limit, quota_sat_add(w->used, w->reserved));
                switch (l) {
                case KB_QUOTA_REQUESTS_PER_MINUTE:
                case KB_QUOTA_TOKENS_PER_MINUTE:
                        w->reset_usec = window_empty_at(t, l, now_usec);
                        break;
                case KB_QUOTA_TOKENS_PER_DAY:
                case KB_QUOTA_BUDGET_PER_DAY:
                        w->reset_usec = day_reset(t, now_usec);
                        break;
                case KB_QUOTA_BUDGET_PER_MONTH:
                        w->reset_usec = month_reset(t, now_usec);
                        break;
                default:
                        break;
                }
        }
        v.in_flight = t->in_flight;
        v.month_tokens = month_used(t, now_usec, false);
        *ret = v;
        return 0;
}

int kb_quota_account(struct kb_quota *q, const char *team, uint64_t when_usec, uint64_t tokens,
                     int64_t cost_microusd) {
        struct quota_team *t;

        when_usec = quota_clamp_time(when_usec);
        if (!q || !team || cost_microusd < 0)
                return -EINVAL;
        t = quota_find_team(q, team);
        if (!t)
                return -ENOENT;
        add_usage(t, when_usec, 1, tokens, (uint64_t) cost_microusd, true);
        return 0;
}
