/* SPDX-License-Identifier: MIT */
/* Prometheus text exposition of the broker's counters and gauges
 * (metrics.h). */
#include "metrics.h"
#include "capacity.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "fleet-quota.h"
#include "fleet-store.h"
#include "broker.h"
#include "keybroker/keybroker.h"
#include "quota.h"
#include "router.h"

/* Upper bounds of the histogram buckets, in µs (+Inf is implicit): from a
 * cached answer in a few ms to a long generation near the 600 s timeout. */
static const uint64_t bucket_usec[KB_METRICS_N_BUCKETS] = {
        5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000,
        10000000, 30000000, 60000000, 120000000, 300000000, 600000000,
};

static const char *const token_kind_table[_KB_TOKENS_MAX] = {
        [KB_TOKENS_INPUT] = "input",
        [KB_TOKENS_OUTPUT] = "output",
        [KB_TOKENS_CACHED] = "cached",
        [KB_TOKENS_CACHE_WRITE] = "cache_write",
        [KB_TOKENS_REASONING] = "reasoning",
};

struct series {
        char *team, *model, *route;     /* one allocation, at team */
        uint64_t requests[_KB_OUTCOME_MAX];
        uint64_t tokens[_KB_TOKENS_MAX];
        uint64_t cost_microusd;
};

struct hist {
        uint64_t buckets[KB_METRICS_N_BUCKETS + 1]; /* per bucket, not cumulative; last = +Inf */
        uint64_t count;
        uint64_t sum_usec;
};

struct route_hists {
        char *route;
        struct hist latency, ttfb;
};

/* Open addressing, linear probing; capacity a power of two, at most half full. */
struct table {
        void **slots;
        size_t cap;
        size_t n;
};

struct kb_metrics {
        struct table series;            /* struct series */
        struct table routes;            /* struct route_hists */
        /* In insertion order, so the page is stable from one scrape to the next. */
        struct series **series_list;
        struct route_hists **route_list;
        uint64_t overflow;
};

static uint64_t hash_labels(const char *const *v, size_t n) {
        uint64_t h = UINT64_C(0xcbf29ce484222325);

        for (size_t i = 0; i < n; i++) {
                for (const char *p = v[i]; *p; p++) {
                        h ^= (unsigned char) *p;
                        h *= UINT64_C(0x100000001b3);
                }
                h ^= 0xff; /* separator: ("ab","c") differs from ("a","bc") */
                h *= UINT64_C(0x100000001b3);
        }
        return h;
}

static const char *const *series_labels(const struct series *s, const char *ret[3]) {
        ret[0] = s->team;
        ret[1] = s->model;
        ret[2] = s->route;
        return ret;
}

static bool labels_eq(const char *const *a, const char *const *b, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (!streq(a[i], b[i]))
                        return false;
        return true;
}

/* Slot index of labels (n of them) in t: the entry's, or the empty one to fill. */
static size_t table_find(const struct table *t, const char *const *labels, size_t n, bool is_series) {
        size_t i = (size_t) hash_labels(labels, n) & (t->cap - 1);

        for (;; i = (i + 1) & (t->cap - 1)) {
                void *e = t->slots[i];
                const char *have[3];

                if (!e)
                        return i;
                if (is_series)
                        series_labels(e, have);
                else
                        have[0] = ((struct route_hists *) e)->route;
                if (labels_eq(have, labels, n))
                        return i;
        }
}

static int table_grow(struct table *t, size_t n_labels, bool is_series) {
        struct table nt = { .cap = t->cap ? t->cap * 2 : 64 };

        nt.slots = calloc(nt.cap, sizeof(void *));
        if (!nt.slots)
                return -ENOMEM;
        for (size_t i = 0; i < t->cap; i++) {
                void *e = t->slots[i];
                const char *l[3];
                if (!e)
                        continue;
                if (is_series)
                        series_labels(e, l);
                else
                        l[0] = ((struct route_hists *) e)->route;
                nt.slots[table_find(&nt, l, n_labels, is_series)] = e;
        }
        nt.n = t->n;
        free(t->slots);
        *t = nt;
        return 0;
}

int kb_metrics_new(struct kb_metrics **ret) {
        struct kb_metrics *m;

        if (!ret)
                return -EINVAL;
        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        if (table_grow(&m->series, 3, true) < 0 || table_grow(&m->routes, 1, false) < 0) {
                kb_metrics_free(m);
                return -ENOMEM;
        }
        *ret = m;
        return 0;
}

struct kb_metrics *kb_metrics_free(struct kb_metrics *m) {
        if (!m)
                return NULL;
        for (size_t i = 0; i < m->series.n; i++) {
                free(m->series_list[i]->team);
                free(m->series_list[i]);
        }
        for (size_t i = 0; i < m->routes.n; i++) {
                free(m->route_list[i]->route);
                free(m->route_list[i]);
        }
        free(m->series_list);
        free(m->route_list);
        free(m->series.slots);
        free(m->routes.slots);
        free(m);
        return NULL;
}

static struct series *get_series(struct kb_metrics *m, const char *team, const char *model, const char *route) {
        const char *l[3] = { team, model, route };
        size_t i = table_find(&m->series, l, 3, true);
        size_t lt = strlen(team) + 1, lm = strlen(model) + 1, lr = strlen(route) + 1;
        struct series *s, **list;

        if (m->series.slots[i])
                return m->series.slots[i];
        if (m->series.n >= KB_METRICS_MAX_SERIES)
                return NULL;
        if ((m->series.n + 1) * 2 > m->series.cap) {
                if (table_grow(&m->series, 3, true) < 0)
                        return NULL;
                i = table_find(&m->series, l, 3, true);
        }
        list = reallocarray(m->series_list, m->series.n + 1, sizeof(*list));
        if (!list)
                return NULL;
        m->series_list = list;
        s = calloc(1, sizeof(*s));
        if (!s)
                return NULL;
        s->team = malloc(lt + lm + lr);
        if (!s->team) {
                free(s);
                return NULL;
        }
        s->model = s->team + lt;
        s->route = s->model + lm;
        memcpy(s->team, team, lt);
        memcpy(s->model, model, lm);
        memcpy(s->route, route, lr);
        m->series.slots[i] = s;
        m->series_list[m->series.n++] = s;
        return s;
}

static struct route_hists *get_route(struct kb_metrics *m, const char *route) {
        const char *l[1] = { route };
        size_t i = table_find(&m->routes, l, 1, false);
        struct route_hists *h, **list;

        if (m->routes.slots[i])
                return m->routes.slots[i];
        if (m->routes.n >= KB_METRICS_MAX_ROUTES)
                return NULL;
        if ((m->routes.n + 1) * 2 > m->routes.cap) {
                if (table_grow(&m->routes, 1, false) < 0)
                        return NULL;
                i = table_find(&m->routes, l, 1, false);
        }
        list = reallocarray(m->route_list, m->routes.n + 1, sizeof(*list));
        if (!list)
                return NULL;
        m->route_list = list;
        h = calloc(1, sizeof(*h));
        if (!h)
                return NULL;
        h->route = strdup(route);
        if (!h->route) {
                free(h);
                return NULL;
        }
        m->routes.slots[i] = h;
        m->route_list[m->routes.n++] = h;
        return h;
}

static uint64_t sat_add(uint64_t a, uint64_t b) {
        return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static void observe(struct hist *h, uint64_t usec) {
        size_t b = 0;

        while (b < KB_METRICS_N_BUCKETS && usec > bucket_usec[b])
                b++;
        h->buckets[b]++;
        h->count++;
        h->sum_usec = sat_add(h->sum_usec, usec);
}

int kb_metrics_add(struct kb_metrics *m, const struct kb_metrics_sample *s) {
        struct series *se;

        if (!m || !s || (unsigned) s->outcome >= _KB_OUTCOME_MAX)
                return -EINVAL;
        se = get_series(m, strempty(s->team), strempty(s->model), strempty(s->route));
        if (!se) {
                m->overflow++;
                return m->series.n >= KB_METRICS_MAX_SERIES ? -E2BIG : -ENOMEM;
        }
        se->requests[s->outcome]++;
        for (size_t k = 0; k < _KB_TOKENS_MAX; k++)
                se->tokens[k] = sat_add(se->tokens[k], s->tokens[k]);
        if (s->cost_microusd > 0)
                se->cost_microusd = sat_add(se->cost_microusd, (uint64_t) s->cost_microusd);
        if (s->upstream) {
                struct route_hists *h = get_route(m, strempty(s->route));
                if (!h)
                        return -ENOMEM; /* the counters above are in */
                observe(&h->latency, s->latency_usec);
                if (s->ttfb_usec > 0)
                        observe(&h->ttfb, s->ttfb_usec);
        }
        return 0;
}

void kb_metrics_request(struct kb_metrics *m, const struct kb_request *r) {
        const struct kb_usage *u;
        struct kb_metrics_sample s;

        if (!m || !r)
                return;
        /* What the journal record says: billed usage, else what the tap saw. */
        u = r->billed_set ? &r->billed : r->tap ? kb_usage_tap_get(r->tap) : NULL;
        s = (struct kb_metrics_sample) {
                .team = r->team ? r->team->name : NULL,
                /* Only names from the config: an unknown model is "". */
                .model = r->model_cfg ? r->model_cfg->name : NULL,
                .route = r->route ? r->route->name : NULL,
                .outcome = r->outcome,
                .cost_microusd = r->cost_microusd,
                .upstream = r->attempts > 0 && r->route,
                .latency_usec = r->latency_usec,
                .ttfb_usec = r->ttfb_usec,
        };
        if (u) {
                s.tokens[KB_TOKENS_INPUT] = u->input_tokens;
                s.tokens[KB_TOKENS_OUTPUT] = u->output_tokens;
                s.tokens[KB_TOKENS_CACHED] = u->cached_tokens;
                s.tokens[KB_TOKENS_CACHE_WRITE] = u->cache_write_tokens;
                s.tokens[KB_TOKENS_REASONING] = u->reasoning_tokens;
        }
        (void) kb_metrics_add(m, &s);
}

/* ---- exposition ---- */

int kb_metrics_escape(struct kb_buf *out, const char *s) {
        const char *p = strempty(s);

        while (*p) {
                size_t n = strcspn(p, "\\\"\n");
                int r = kb_buf_append(out, p, n);
                if (r < 0)
                        return r;
                p += n;
                if (!*p)
                        break;
                r = kb_buf_append(out, *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : "\\n", 2);
                if (r < 0)
                        return r;
                p++;
        }
        return 0;
}

#define CHECK(expr)                     \
        do {                            \
                int _r = (expr);        \
                if (_r < 0)             \
                        return _r;      \
        } while (0)

static int family(struct kb_buf *out, const char *name, const char *type, const char *help) {
        return kb_buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{k1="v1",k2="v2"...}: keys and values alternate in kv, n pairs. */
static int sample_start(struct kb_buf *out, const char *name, const char *const *kv, size_t n) {
        CHECK(kb_buf_appendf(out, "%s", name));
        for (size_t i = 0; i < n; i++) {
                CHECK(kb_buf_appendf(out, "%s%s=\"", i ? "," : "{", kv[2 * i]));
                CHECK(kb_metrics_escape(out, kv[2 * i + 1]));
                CHECK(kb_buf_append(out, "\"", 1));
        }
        if (n)
                CHECK(kb_buf_append(out, "}", 1));
        return 0;
}

static int sample_u64(struct kb_buf *out, const char *name, const char *const *kv, size_t n, uint64_t v) {
        CHECK(sample_start(out, name, kv, n));
        return kb_buf_appendf(out, " %" PRIu64 "\n", v);
}

static int sample_usec(struct kb_buf *out, const char *name, const char *const *kv, size_t n, uint64_t usec) {
        CHECK(sample_start(out, name, kv, n));
        return kb_buf_appendf(out, " %" PRIu64 ".%06" PRIu64 "\n", usec / USEC_PER_SEC, usec % USEC_PER_SEC);
}

static int format_hist(struct kb_buf *out, const char *name, const char *route, const struct hist *h) {
        char bname[128], le[32];
        uint64_t cum = 0;

        snprintf(bname, sizeof(bname), "%s_bucket", name);
        for (size_t b = 0; b <= KB_METRICS_N_BUCKETS; b++) {
                cum += h->buckets[b];
                if (b < KB_METRICS_N_BUCKETS) {
                        uint64_t us = bucket_usec[b];
                        /* Shortest exact decimal: 0.005, 2.5, 600. */
                        snprintf(le, sizeof(le), "%" PRIu64 ".%06" PRIu64, us / USEC_PER_SEC, us % USEC_PER_SEC);
                        char *e = le + strlen(le) - 1;
                        while (*e == '0')
                                *e-- = 0;
                        if (*e == '.')
                                *e = 0;
                } else
                        snprintf(le, sizeof(le), "+Inf");
                const char *kv[] = { "route", route, "le", le };
                CHECK(sample_u64(out, bname, kv, 2, cum));
        }
        const char *kv[] = { "route", route };
        snprintf(bname, sizeof(bname), "%s_sum", name);
        CHECK(sample_usec(out, bname, kv, 1, h->sum_usec));
        snprintf(bname, sizeof(bname), "%s_count", name);
        return sample_u64(out, bname, kv, 1, h->count);
}

int kb_metrics_format(const struct kb_metrics *m, struct kb_buf *out) {
        if (!m || !out)
                return -EINVAL;

        CHECK(family(out, "keybroker_requests_total", "counter",
                     "Finished app requests by team, model (as configured; \"\" unknown), final route and outcome."));
        for (size_t i = 0; i < m->series.n; i++) {
                const struct series *s = m->series_list[i];
                for (kb_outcome o = 0; o < _KB_OUTCOME_MAX; o++) {
                        const char *kv[] = { "team", s->team, "model", s->model, "route", s->route,
                                             "outcome", kb_outcome_to_string(o) };
                        CHECK(sample_u64(out, "keybroker_requests_total", kv, 4, s->requests[o]));
                }
        }
        CHECK(family(out, "keybroker_tokens_total", "counter",
                     "Tokens billed, as journaled (KEYBROKER_*_TOKENS), by kind."));
        for (size_t i = 0; i < m->series.n; i++) {
                const struct series *s = m->series_list[i];
                for (size_t k = 0; k < _KB_TOKENS_MAX; k++) {
                        const char *kv[] = { "team", s->team, "model", s->model, "route", s->route,
                                             "kind", token_kind_table[k] };
                        CHECK(sample_u64(out, "keybroker_tokens_total", kv, 4, s->tokens[k]));
                }
        }
        CHECK(family(out, "keybroker_cost_microusd_total", "counter",
                     "Cost in micro-USD (1e-6 USD), as journaled (KEYBROKER_COST_MICROUSD)."));
        for (size_t i = 0; i < m->series.n; i++) {
                const struct series *s = m->series_list[i];
                const char *kv[] = { "team", s->team, "model", s->model, "route", s->route };
                CHECK(sample_u64(out, "keybroker_cost_microusd_total", kv, 3, s->cost_microusd));
        }
        CHECK(family(out, "keybroker_upstream_latency_seconds", "histogram",
                     "Arrival to end of requests forwarded upstream, by final route."));
        for (size_t i = 0; i < m->routes.n; i++)
                CHECK(format_hist(out, "keybroker_upstream_latency_seconds", m->route_list[i]->route,
                                  &m->route_list[i]->latency));
        CHECK(family(out, "keybroker_upstream_ttfb_seconds", "histogram",
                     "Arrival to the upstream's first response byte, by final route."));
        for (size_t i = 0; i < m->routes.n; i++)
                CHECK(format_hist(out, "keybroker_upstream_ttfb_seconds", m->route_list[i]->route,
                                  &m->route_list[i]->ttfb));
        CHECK(family(out, "keybroker_metrics_series_overflow_total", "counter",
                     "Requests not counted by label because the label-set cap was reached."));
        return sample_u64(out, "keybroker_metrics_series_overflow_total", NULL, 0, m->overflow);
}

/* ---- the broker's gauges ---- */

static int format_quota(struct kb_broker *b, struct kb_buf *out, bool remaining) {
        const struct kb_config *c = b->config;
        uint64_t now = kb_realtime_usec();
        const char *name = remaining ? "keybroker_quota_remaining" : "keybroker_quota_limit";

        CHECK(family(out, name, "gauge",
                     remaining ? "What a team may still use in the window of each configured limit (budgets in USD)."
                               : "Each configured limit of a team (budgets in USD)."));
        for (size_t i = 0; c && i < c->n_teams; i++) {
                struct kb_quota_view v;
                if (!b->quota || kb_quota_view(b->quota, c->teams[i].name, now, &v) < 0)
                        continue;
                for (kb_quota_limit l = 0; l < _KB_QUOTA_LIMIT_MAX; l++) {
                        const struct kb_quota_window *w = &v.windows[l];
                        uint64_t x = remaining ? w->remaining : w->limit;
                        const char *kv[] = { "team", c->teams[i].name, "limit", kb_quota_limit_to_string(l) };
                        if (w->limit == 0) /* no such limit */
                                continue;
                        if (l == KB_QUOTA_BUDGET_PER_DAY || l == KB_QUOTA_BUDGET_PER_MONTH)
                                CHECK(sample_usec(out, name, kv, 2, x)); /* micro-USD → USD, same digits */
                        else
                                CHECK(sample_u64(out, name, kv, 2, x));
                }
        }
        return 0;
}

static int circuit_value(kb_circuit c) {
        return c == KB_CIRCUIT_OPEN ? 2 : c == KB_CIRCUIT_HALF_OPEN ? 1 : 0;
}

static int format_capacity(struct kb_broker *b, struct kb_buf *out) {
        struct kb_capacity cap;

        kb_capacity_get(b, &cap);
        CHECK(family(out, "keybroker_connections", "gauge", "App connections being served (under max_connections)."));
        CHECK(sample_u64(out, "keybroker_connections", NULL, 0, cap.connections));
        CHECK(family(out, "keybroker_connections_refusing", "gauge",
                     "Refused app connections still being answered 503 or drained."));
        CHECK(sample_u64(out, "keybroker_connections_refusing", NULL, 0, cap.refusing));
        CHECK(family(out, "keybroker_connections_refused_total", "counter",
                     "App connections answered 503 and closed instead of served, by reason."));
        const struct {
                const char *reason;
                uint64_t n;
        } refused[] = {
                { "max_connections", cap.refused_cap },
                { "max_connections_per_uid", cap.refused_per_uid },
                { "out_of_fds", cap.refused_fds },
                { "identity", cap.refused_identity },
        };
        for (size_t i = 0; i < ELEMENTSOF(refused); i++) {
                const char *kv[] = { "reason", refused[i].reason };
                CHECK(sample_u64(out, "keybroker_connections_refused_total", kv, 1, refused[i].n));
        }
        CHECK(family(out, "keybroker_upstream_connections", "gauge",
                     "Connections to providers open: carrying calls or kept idle for reuse."));
        CHECK(sample_u64(out, "keybroker_upstream_connections", NULL, 0, cap.upstream.connections));
        CHECK(family(out, "keybroker_upstream_calls_connecting", "gauge",
                     "Provider calls whose own connection is being set up."));
        CHECK(sample_u64(out, "keybroker_upstream_calls_connecting", NULL, 0, cap.upstream.connecting));
        CHECK(family(out, "keybroker_upstream_calls_pending", "gauge",
                     "Provider calls inside libcurl with no connection and none being made for them (should be 0)."));
        CHECK(sample_u64(out, "keybroker_upstream_calls_pending", NULL, 0, cap.upstream.waiting));
        if (b->store) {
                struct kb_store_stats st;
                kb_store_get_stats(b->store, &st);
                CHECK(family(out, "keybroker_quota_store_up", "gauge", "1 while the quota store answers, else 0."));
                CHECK(sample_u64(out, "keybroker_quota_store_up", NULL, 0, st.state == KB_STORE_ONLINE));
                CHECK(family(out, "keybroker_quota_store_rtt_seconds", "gauge",
                             "Round trip to the quota store over its last replies, by quantile."));
                const char *q50[] = { "quantile", "0.5" }, *q99[] = { "quantile", "0.99" };
                CHECK(sample_usec(out, "keybroker_quota_store_rtt_seconds", q50, 1, st.rtt_p50_usec));
                CHECK(sample_usec(out, "keybroker_quota_store_rtt_seconds", q99, 1, st.rtt_p99_usec));
                CHECK(family(out, "keybroker_quota_store_errors_total", "counter",
                             "Quota store commands that failed: error replies and timeouts."));
                CHECK(sample_u64(out, "keybroker_quota_store_errors_total", NULL, 0, st.n_errors + st.n_timeouts));
                CHECK(family(out, "keybroker_quota_store_offline_seconds_total", "counter",
                             "Time the quota store could not be used, since start."));
                CHECK(sample_usec(out, "keybroker_quota_store_offline_seconds_total", NULL, 0, st.offline_usec));
                CHECK(family(out, "keybroker_quota_store_brokers", "gauge",
                             "Brokers holding a live lease in the quota store."));
                CHECK(sample_u64(out, "keybroker_quota_store_brokers", NULL, 0, st.brokers));
                struct kb_fleet_stats fs;
                kb_fleet_get_stats(b->fleet, &fs);
                CHECK(family(out, "keybroker_quota_store_settles_queued", "gauge",
                             "Settles of fleet teams not yet acknowledged by the quota store."));
                CHECK(sample_u64(out, "keybroker_quota_store_settles_queued", NULL, 0, fs.queued));
                CHECK(family(out, "keybroker_quota_store_settles_dropped_total", "counter",
                             "Settles dropped from a full queue (still in the journal and this host's counters)."));
                CHECK(sample_u64(out, "keybroker_quota_store_settles_dropped_total", NULL, 0, fs.dropped));
        }
        CHECK(family(out, "keybroker_open_fds", "gauge", "File descriptors keybrokerd has open."));
        CHECK(sample_u64(out, "keybroker_open_fds", NULL, 0, cap.fds_open));
        CHECK(family(out, "keybroker_max_fds", "gauge", "keybrokerd's RLIMIT_NOFILE (soft, as raised at start)."));
        return sample_u64(out, "keybroker_max_fds", NULL, 0, cap.fds_limit);
}

static int format_gauges(struct kb_broker *b, struct kb_buf *out) {
        const struct kb_config *c = b->config;
        uint64_t now_mono = kb_now_usec(), now_real = kb_realtime_usec();

        CHECK(family(out, "keybroker_requests_in_flight", "gauge", "App requests being served."));
        CHECK(sample_u64(out, "keybroker_requests_in_flight", NULL, 0, b->n_in_flight));
        CHECK(format_capacity(b, out));
        CHECK(format_quota(b, out, false));
        CHECK(format_quota(b, out, true));

        CHECK(family(out, "keybroker_circuit_state", "gauge",
                     "Circuit breaker of each route: 0 closed, 1 half-open, 2 open."));
        for (size_t i = 0; c && i < c->n_routes; i++) {
                struct kb_route_view v = { .circuit = KB_CIRCUIT_CLOSED };
                const char *kv[] = { "route", c->routes[i].name };
                if (!b->router || kb_router_route_view(b->router, c->routes[i].name, now_mono, &v) < 0)
                        v.circuit = KB_CIRCUIT_CLOSED;
                CHECK(sample_u64(out, "keybroker_circuit_state", kv, 1, (uint64_t) circuit_value(v.circuit)));
        }

        CHECK(family(out, "keybroker_key_age_seconds", "gauge",
                     "Seconds since the active version of each sealed key was set."));
        for (size_t i = 0; b->keys && i < kb_keystore_n_versions(b->keys); i++) {
                struct kb_key_info k;
                if (kb_keystore_describe(b->keys, i, &k) < 0 || !k.active || k.created_usec == 0)
                        continue;
                const char *kv[] = { "key", k.name };
                CHECK(sample_usec(out, "keybroker_key_age_seconds", kv, 1,
                                  now_real > k.created_usec ? now_real - k.created_usec : 0));
        }

        CHECK(family(out, "keybroker_journal_records_written_total", "counter",
                     "Journal records journald took (spooled ones once re-sent)."));
        CHECK(sample_u64(out, "keybroker_journal_records_written_total", NULL, 0, kb_journal_n_written(b->journal)));
        CHECK(family(out, "keybroker_journal_records_dropped_total", "counter",
                     "Journal records lost: queue or spool full, or refused for good."));
        CHECK(sample_u64(out, "keybroker_journal_records_dropped_total", NULL, 0, kb_journal_n_dropped(b->journal)));
        CHECK(family(out, "keybroker_journal_records_spooled_total", "counter",
                     "Journal records written to the spool in state_dir while journald was away or slow."));
        CHECK(sample_u64(out, "keybroker_journal_records_spooled_total", NULL, 0, kb_journal_n_spooled(b->journal)));
        CHECK(family(out, "keybroker_journal_spool_records", "gauge", "Journal records waiting in the spool."));
        return sample_u64(out, "keybroker_journal_spool_records", NULL, 0, kb_journal_n_spool_pending(b->journal));
}

int kb_metrics_render(struct kb_broker *b, struct kb_buf *out) {
        if (!b || !out)
                return -EINVAL;
        CHECK(kb_buf_appendf(out, "# HELP keybroker_build_info keybrokerd's version.\n"
                                  "# TYPE keybroker_build_info gauge\n"
                                  "keybroker_build_info{version=\"%s\"} 1\n", KB_VERSION));
        if (b->metrics)
                CHECK(kb_metrics_format(b->metrics, out));
        return format_gauges(b, out);
}
