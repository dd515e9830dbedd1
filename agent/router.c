/* SPDX-License-Identifier: MIT */
/* Routing state: circuit breakers, weights, canaries, and the plan of one
 * request. Split persistence is at the end of this file. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <sys/stat.h>

#include "router.h"
#include "util.h"

#define WEIGHT_LIMIT 1000000U
#define SPLITS_FILE_MAX (4U * 1024U * 1024U)

int kb_router_pick(const struct kb_model *m, kb_family family, uint32_t rnd, const struct kb_target **ret) {
        uint64_t total = 0;

        for (size_t i = 0; i < m->n_targets; i++)
                if (m->targets[i].route->family == family)
                        total += m->targets[i].weight;
        if (total == 0)
                return -ENOENT;

        /* Multiply-shift maps rnd onto [0,total) without modulo bias worth
         * caring about at these weights (≤ 1e6 each). */
        uint64_t point = ((uint64_t) rnd * total) >> 32;
        for (size_t i = 0; i < m->n_targets; i++) {
                const struct kb_target *t = &m->targets[i];
                if (t->route->family != family || t->weight == 0)
                        continue;
                if (point < t->weight) {
                        *ret = t;
                        return 0;
                }
                point -= t->weight;
        }
        return -ENOENT; /* not reached */
}

struct bucket {
        uint64_t epoch;
        uint32_t ok, fail;
};

struct route_state {
        char *name;
        unsigned failures_max;
        double ratio_max;
        uint64_t window_usec;
        unsigned min_requests;
        uint64_t cooldown_usec;
        uint64_t probe_stale_usec;      /* a probe out longer than this was lost */

        kb_circuit circuit;
        unsigned consecutive;
        uint64_t opened_at;
        bool probe_out;
        uint64_t probe_at;
        struct bucket buckets[KB_ROUTER_WINDOW_BUCKETS];
        uint64_t latencies[KB_ROUTER_LATENCY_RING];
        size_t n_latencies, latency_pos;
};

struct target_state {
        char *model, *route, *upstream;
        kb_family family;
        unsigned config_weight;
        bool overridden;
        unsigned weight;                /* when overridden */
        double rollback_ratio;          /* < 0: no canary stop condition */
        unsigned min_requests;
        uint8_t *history;               /* ring of min_requests bits, 1 = failure */
        unsigned hist_n, hist_pos, hist_fail;
        bool rolled_back;
};

struct kb_router {
        struct route_state *routes;
        size_t n_routes;
        struct target_state *targets;   /* grouped by model, in config order */
        size_t n_targets;
        kb_router_event_t cb;
        void *userdata;
};

static const char *const circuit_names[_KB_CIRCUIT_MAX] = {
        [KB_CIRCUIT_CLOSED] = "closed",
        [KB_CIRCUIT_OPEN] = "open",
        [KB_CIRCUIT_HALF_OPEN] = "half_open",
};

const char *kb_circuit_to_string(kb_circuit c) {
        return (unsigned) c < _KB_CIRCUIT_MAX ? circuit_names[c] : NULL;
}

static const char *const event_names[_KB_ROUTE_EVENT_MAX] = {
        [KB_ROUTE_CIRCUIT_OPENED] = "circuit_opened",
        [KB_ROUTE_CIRCUIT_HALF_OPEN] = "circuit_half_open",
        [KB_ROUTE_CIRCUIT_CLOSED] = "circuit_closed",
        [KB_ROUTE_CANARY_ROLLED_BACK] = "canary_rolled_back",
        [KB_ROUTE_SPLIT_CHANGED] = "split_changed",
};

const char *kb_route_event_to_string(kb_route_event_kind k) {
        return (unsigned) k < _KB_ROUTE_EVENT_MAX ? event_names[k] : NULL;
}

/* ---- life cycle ---- */

int kb_router_new(struct kb_router **ret) {
        if (!ret)
                return -EINVAL;
        struct kb_router *r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        *ret = r;
        return 0;
}

static void routes_free(struct route_state *rs, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(rs[i].name);
        free(rs);
}

static void targets_free(struct target_state *ts, size_t n) {
        for (size_t i = 0; i < n; i++) {
                free(ts[i].model);
                free(ts[i].route);
                free(ts[i].upstream);
                free(ts[i].history);
        }
        free(ts);
}

struct kb_router *kb_router_free(struct kb_router *r) {
        if (!r)
                return NULL;
        routes_free(r->routes, r->n_routes);
        targets_free(r->targets, r->n_targets);
        free(r);
        return NULL;
}

void kb_router_set_event_handler(struct kb_router *r, kb_router_event_t cb, void *userdata) {
        if (!r)
                return;
        r->cb = cb;
        r->userdata = userdata;
}

static void emit(struct kb_router *r, const struct kb_route_event *ev) {
        if (r->cb)
                r->cb(r->userdata, ev);
}

static struct route_state *find_route(const struct kb_router *r, const char *name) {
        for (size_t i = 0; name && i < r->n_routes; i++)
                if (streq(r->routes[i].name, name))
                        return &r->routes[i];
        return NULL;
}

static struct target_state *find_target_in(struct target_state *ts, size_t n, const char *model, const char *route,
                                           const char *upstream) {
        for (size_t i = 0; i < n; i++)
                if (streq(ts[i].model, model) && streq(ts[i].route, route) && streq(ts[i].upstream, upstream))
                        return &ts[i];
        return NULL;
}

static struct target_state *find_target(const struct kb_router *r, const char *model, const char *route,
                                        const char *upstream) {
        if (!model || !route || !upstream)
                return NULL;
        return find_target_in(r->targets, r->n_targets, model, route, upstream);
}

static void history_reset(struct target_state *t) {
        if (t->history)
                memset(t->history, 0, (t->min_requests + 7) / 8);
        t->hist_n = t->hist_pos = t->hist_fail = 0;
}

static void route_params(struct route_state *s, const struct kb_route *rt) {
        s->failures_max = rt->breaker_failures;
        s->ratio_max = rt->breaker_error_ratio;
        s->window_usec = MAX(rt->breaker_window_usec, (uint64_t) KB_ROUTER_WINDOW_BUCKETS);
        s->min_requests = MAX(rt->breaker_min_requests, 1U);
        s->cooldown_usec = rt->breaker_cooldown_usec;
        s->probe_stale_usec = rt->timeout_usec + rt->connect_timeout_usec + rt->breaker_cooldown_usec;
}

int kb_router_configure(struct kb_router *r, const struct kb_config *c, uint64_t now) {
        struct route_state *routes = calloc(MAX(c->n_routes, (size_t) 1), sizeof(*routes));
        struct target_state *targets = NULL;
        size_t n_targets = 0, cap = 0;

        if (!r || !c)
                return -EINVAL;
        if (!routes)
                return -ENOMEM;
        for (size_t i = 0; i < c->n_routes; i++) {
                const struct kb_route *rt = &c->routes[i];
                struct route_state *old = find_route(r, rt->name);
                struct route_state *s = &routes[i];
                if (old) {
                        uint64_t w = old->window_usec;
                        *s = *old;
                        s->name = NULL;
                        route_params(s, rt);
                        if (s->window_usec != w)
                                memset(s->buckets, 0, sizeof(s->buckets));
                } else
                        route_params(s, rt);
                if (!(s->name = strdup(rt->name)))
                        goto oom;
        }
        for (size_t i = 0; i < c->n_models; i++) {
                const struct kb_model *m = &c->models[i];
                for (size_t k = 0; k < m->n_targets; k++) {
                        const struct kb_target *t = &m->targets[k];
                        if (find_target_in(targets, n_targets, m->name, t->route->name, t->upstream_model))
                                continue;
                        if (n_targets == cap) {
                                size_t ncap = cap ? cap * 2 : 16;
                                struct target_state *n = reallocarray(targets, ncap, sizeof(*n));
                                if (!n)
                                        goto oom;
                                targets = n;
                                cap = ncap;
                        }
                        struct target_state *s = &targets[n_targets++];
                        *s = (struct target_state) {
                                .family = t->route->family,
                                .config_weight = t->weight,
                                .rollback_ratio = t->rollback_on_error_ratio,
                                .min_requests = MAX(t->min_requests, 1U),
                        };
                        if (!(s->model = strdup(m->name)) || !(s->route = strdup(t->route->name)) ||
                            !(s->upstream = strdup(t->upstream_model)))
                                goto oom;
                        if (s->rollback_ratio >= 0 && !(s->history = calloc((s->min_requests + 7) / 8, 1)))
                                goto oom;
                        struct target_state *old = find_target(r, m->name, t->route->name, t->upstream_model);
                        if (!old)
                                continue;
                        s->overridden = old->overridden;
                        s->weight = old->weight;
                        s->rolled_back = old->rolled_back;
                        /* Canary history means something only under the same stop condition. */
                        if (s->history && old->history && old->min_requests == s->min_requests &&
                            old->rollback_ratio == s->rollback_ratio) {
                                memcpy(s->history, old->history, (s->min_requests + 7) / 8);
                                s->hist_n = old->hist_n;
                                s->hist_pos = old->hist_pos;
                                s->hist_fail = old->hist_fail;
                        }
                }
        }
        routes_free(r->routes, r->n_routes);
        targets_free(r->targets, r->n_targets);
        r->routes = routes;
        r->n_routes = c->n_routes;
        r->targets = targets;
        r->n_targets = n_targets;
        return 0;

oom:
        routes_free(routes, c->n_routes);
        targets_free(targets, n_targets);
        return -ENOMEM;
}

/* ---- breaker ---- */

static uint64_t bucket_width(const struct route_state *s) {
        return s->window_usec / KB_ROUTER_WINDOW_BUCKETS;
}

static void window_add(struct route_state *s, bool failure, uint64_t now) {
        uint64_t epoch = now / bucket_width(s);
        struct bucket *b = &s->buckets[epoch % KB_ROUTER_WINDOW_BUCKETS];
        if (b->epoch != epoch)
                *b = (struct bucket) { .epoch = epoch };
        if (failure)
                b->fail++;
        else
                b->ok++;
}

static void window_sum(const struct route_state *s, uint64_t now, uint64_t *ret_total, uint64_t *ret_fail) {
        uint64_t epoch = now / bucket_width(s), total = 0, fail = 0;
        for (size_t i = 0; i < KB_ROUTER_WINDOW_BUCKETS; i++) {
                const struct bucket *b = &s->buckets[i];
                if (b->epoch > epoch || b->epoch + KB_ROUTER_WINDOW_BUCKETS <= epoch)
                        continue;
                total += b->ok + b->fail;
                fail += b->fail;
        }
        *ret_total = total;
        *ret_fail = fail;
}

static bool cooled_down(const struct route_state *s, uint64_t now) {
        return now >= s->opened_at + s->cooldown_usec;
}

static bool probe_free(const struct route_state *s, uint64_t now) {
        return !s->probe_out || now >= s->probe_at + s->probe_stale_usec;
}

bool kb_router_allows(struct kb_router *r, const char *route, uint64_t now) {
        const struct route_state *s = r ? find_route(r, route) : NULL;
        if (!s)
                return true;
        switch (s->circuit) {
        case KB_CIRCUIT_CLOSED:
                return true;
        case KB_CIRCUIT_OPEN:
                return cooled_down(s, now) && probe_free(s, now);
        case KB_CIRCUIT_HALF_OPEN:
                return probe_free(s, now);
        default:
                return false;
        }
}

int kb_router_acquire(struct kb_router *r, const char *route, uint64_t now) {
        struct route_state *s = r ? find_route(r, route) : NULL;
        if (!s || s->circuit == KB_CIRCUIT_CLOSED)
                return 0;
        if (s->circuit == KB_CIRCUIT_OPEN) {
                if (!cooled_down(s, now))
                        return -EAGAIN;
                s->circuit = KB_CIRCUIT_HALF_OPEN;
                s->probe_out = false;
                emit(r, &(struct kb_route_event) {
                        .kind = KB_ROUTE_CIRCUIT_HALF_OPEN, .route = s->name, .admin_uid = -1,
                        .reason = "cooldown over: one probe request goes through",
                        .consecutive_failures = s->consecutive,
                });
        }
        if (!probe_free(s, now))
                return -EAGAIN;
        s->probe_out = true;
        s->probe_at = now;
        return 1;
}

static void circuit_open(struct kb_router *r, struct route_state *s, uint64_t now, const char *reason, double ratio,
                         uint64_t requests) {
        s->circuit = KB_CIRCUIT_OPEN;
        s->opened_at = now;
        s->probe_out = false;
        emit(r, &(struct kb_route_event) {
                .kind = KB_ROUTE_CIRCUIT_OPENED, .route = s->name, .reason = reason, .error_ratio = ratio,
                .requests = requests, .consecutive_failures = s->consecutive, .admin_uid = -1,
        });
}

static void breaker_feedback(struct kb_router *r, struct route_state *s, const struct kb_attempt_result *a,
                             uint64_t now) {
        bool failure = a->verdict == KB_VERDICT_FAILURE;
        uint64_t total, fail;
        char reason[160];

        if (a->verdict == KB_VERDICT_NONE) {
                if (a->probe && s->circuit == KB_CIRCUIT_HALF_OPEN)
                        s->probe_out = false;
                return;
        }
        if (a->has_latency) {
                s->latencies[s->latency_pos] = a->latency_usec;
                s->latency_pos = (s->latency_pos + 1) % KB_ROUTER_LATENCY_RING;
                s->n_latencies = MIN(s->n_latencies + 1, (size_t) KB_ROUTER_LATENCY_RING);
        }
        window_add(s, failure, now);

        switch (s->circuit) {
        case KB_CIRCUIT_CLOSED:
                if (!failure) {
                        s->consecutive = 0;
                        return;
                }
                s->consecutive++;
                window_sum(s, now, &total, &fail);
                if (s->failures_max > 0 && s->consecutive >= s->failures_max) {
                        snprintf(reason, sizeof(reason), "%u consecutive failures", s->consecutive);
                        circuit_open(r, s, now, reason, total ? (double) fail / (double) total : 0, total);
                } else if (s->ratio_max > 0 && total >= s->min_requests &&
                           (double) fail >= s->ratio_max * (double) total) {
                        snprintf(reason, sizeof(reason), "error ratio %.2f over the last %" PRIu64 " s (%" PRIu64
                                 " attempts)", (double) fail / (double) total, s->window_usec / USEC_PER_SEC, total);
                        circuit_open(r, s, now, reason, (double) fail / (double) total, total);
                }
                return;
        case KB_CIRCUIT_HALF_OPEN:
                /* Only the probe decides; attempts that began before the
                 * circuit opened say nothing about now. */
                if (!a->probe || !s->probe_out)
                        return;
                s->probe_out = false;
                if (failure) {
                        s->consecutive++;
                        circuit_open(r, s, now, "the half-open probe failed", 0, 1);
                        return;
                }
                s->circuit = KB_CIRCUIT_CLOSED;
                s->consecutive = 0;
                memset(s->buckets, 0, sizeof(s->buckets));
                emit(r, &(struct kb_route_event) {
                        .kind = KB_ROUTE_CIRCUIT_CLOSED, .route = s->name, .admin_uid = -1,
                        .reason = "the half-open probe succeeded",
                });
                return;
        default:
                return;
        }
}

/* ---- weights and canaries ---- */

static unsigned effective(const struct target_state *t) {
        return t->overridden ? t->weight : t->config_weight;
}

/* Targets of one model are adjacent in r->targets. */
static size_t model_targets(const struct kb_router *r, const char *model, struct target_state **ret_first) {
        size_t i = 0, n = 0;
        while (i < r->n_targets && !streq(r->targets[i].model, model))
                i++;
        while (i + n < r->n_targets && streq(r->targets[i + n].model, model))
                n++;
        *ret_first = i < r->n_targets ? &r->targets[i] : NULL;
        return n;
}

static bool route_ambiguous(const struct target_state *ts, size_t n, const char *route) {
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
                k += streq(ts[i].route, route);
        return k > 1;
}

static char *weights_of(const struct kb_router *r, const char *model) {
        struct target_state *ts;
        size_t n = model_targets(r, model, &ts);
        struct kb_buf b = {};

        if (kb_buf_append(&b, "", 0) < 0)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                int q;
                if (route_ambiguous(ts, n, ts[i].route))
                        q = kb_buf_appendf(&b, "%s%s/%s=%u", i ? "," : "", ts[i].route, ts[i].upstream,
                                           effective(&ts[i]));
                else
                        q = kb_buf_appendf(&b, "%s%s=%u", i ? "," : "", ts[i].route, effective(&ts[i]));
                if (q < 0) {
                        kb_buf_free(&b);
                        return NULL;
                }
        }
        return b.data;
}

char *kb_router_weights_string(const struct kb_router *r, const struct kb_model *m) {
        if (!r || !m)
                return NULL;
        return weights_of(r, m->name);
}

unsigned kb_router_weight(const struct kb_router *r, const struct kb_model *m, const struct kb_target *t,
                          bool *ret_overridden) {
        const struct target_state *s = r && m ? find_target(r, m->name, t->route->name, t->upstream_model) : NULL;
        if (ret_overridden)
                *ret_overridden = s && s->overridden;
        return s ? effective(s) : t->weight;
}

static void canary_feedback(struct kb_router *r, const struct kb_attempt_result *a) {
        struct target_state *t = find_target(r, a->model, a->route, a->upstream_model);
        if (!t || !t->history || t->rolled_back || effective(t) == 0 || a->verdict == KB_VERDICT_NONE)
                return;

        uint8_t mask = (uint8_t) (1u << (t->hist_pos % 8));
        bool old = t->history[t->hist_pos / 8] & mask;
        if (t->hist_n == t->min_requests && old)
                t->hist_fail--;
        if (a->verdict == KB_VERDICT_FAILURE) {
                t->history[t->hist_pos / 8] |= mask;
                t->hist_fail++;
        } else
                t->history[t->hist_pos / 8] &= (uint8_t) ~mask;
        t->hist_pos = (t->hist_pos + 1) % t->min_requests;
        t->hist_n = MIN(t->hist_n + 1, t->min_requests);

        double ratio = (double) t->hist_fail / (double) t->hist_n;
        if (t->hist_n < t->min_requests || ratio <= t->rollback_ratio)
                return;

        /* Rolling back to nothing would leave the model without a target. */
        struct target_state *ts;
        size_t n = model_targets(r, t->model, &ts);
        bool other = false;
        for (size_t i = 0; i < n; i++)
                if (&ts[i] != t && ts[i].family == t->family && effective(&ts[i]) > 0)
                        other = true;
        if (!other)
                return;

        t->overridden = true;
        t->weight = 0;
        t->rolled_back = true;
        _cleanup_free_ char *w = weights_of(r, t->model);
        char reason[160];
        snprintf(reason, sizeof(reason), "error ratio %.2f over the last %u attempts is above %.2f", ratio,
                 t->hist_n, t->rollback_ratio);
        emit(r, &(struct kb_route_event) {
                .kind = KB_ROUTE_CANARY_ROLLED_BACK, .route = t->route, .model = t->model, .weights = w,
                .reason = reason, .error_ratio = ratio, .requests = t->hist_n, .admin_uid = -1,
        });
}

void kb_router_feedback(struct kb_router *r, const struct kb_attempt_result *a, uint64_t now) {
        if (!r || !a || !a->route)
                return;
        struct route_state *s = find_route(r, a->route);
        if (s)
                breaker_feedback(r, s, a, now);
        if (a->model && a->upstream_model && !a->fallback)
                canary_feedback(r, a);
}

/* ---- plan ---- */

static bool same_candidate(const struct kb_candidate *c, size_t n, const struct kb_target *t) {
        for (size_t i = 0; i < n; i++)
                if (c[i].target->route == t->route && streq(c[i].target->upstream_model, t->upstream_model))
                        return true;
        return false;
}

int kb_router_plan(struct kb_router *r, const struct kb_model *m, kb_family family, uint32_t rnd, uint64_t now,
                   struct kb_candidate *ret, size_t max) {
        unsigned w[KB_ROUTER_MAX_CANDIDATES];
        size_t n_family = 0, n = 0, nt;
        uint64_t total = 0;
        ssize_t chosen = -1;

        if (!m || !ret || max == 0)
                return -EINVAL;
        nt = MIN(m->n_targets, (size_t) KB_ROUTER_MAX_CANDIDATES);
        for (size_t i = 0; i < m->n_targets; i++)
                n_family += m->targets[i].route->family == family;
        for (size_t i = 0; i < m->n_fallbacks; i++)
                n_family += m->fallbacks[i].route->family == family;
        if (n_family == 0)
                return -ENOENT;

        for (size_t i = 0; i < nt; i++) {
                const struct kb_target *t = &m->targets[i];
                w[i] = t->route->family == family ? kb_router_weight(r, m, t, NULL) : 0;
                if (w[i] > 0 && kb_router_allows(r, t->route->name, now))
                        total += w[i];
        }
        if (total > 0) {
                uint64_t point = ((uint64_t) rnd * total) >> 32;
                for (size_t i = 0; i < nt && chosen < 0; i++) {
                        if (w[i] == 0 || !kb_router_allows(r, m->targets[i].route->name, now))
                                continue;
                        if (point < w[i])
                                chosen = (ssize_t) i;
                        else
                                point -= w[i];
                }
        }
        if (chosen >= 0)
                ret[n++] = (struct kb_candidate) { .target = &m->targets[chosen] };
        for (size_t i = 0; i < nt && n < max; i++)
                if ((ssize_t) i != chosen && w[i] > 0 && !same_candidate(ret, n, &m->targets[i]))
                        ret[n++] = (struct kb_candidate) { .target = &m->targets[i] };
        for (size_t i = 0; i < m->n_fallbacks && n < max; i++) {
                const struct kb_target *t = &m->fallbacks[i];
                if (t->route->family == family && !same_candidate(ret, n, t))
                        ret[n++] = (struct kb_candidate) { .target = t, .fallback = true };
        }
        return n > 0 ? (int) n : -ENXIO;
}

/* ---- views ---- */

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

int kb_router_route_view(const struct kb_router *r, const char *route, uint64_t now, struct kb_route_view *ret) {
        const struct route_state *s = r ? find_route(r, route) : NULL;
        if (!s || !ret)
                return -ENOENT;
        struct kb_route_view v = {
                .circuit = s->circuit,
                .consecutive_failures = s->consecutive,
        };
        if (s->circuit == KB_CIRCUIT_OPEN) {
                if (cooled_down(s, now))
                        v.circuit = KB_CIRCUIT_HALF_OPEN;
                else
                        v.open_remaining_usec = s->opened_at + s->cooldown_usec - now;
        }
        window_sum(s, now, &v.window_requests, &v.window_failures);
        if (v.window_requests > 0)
                v.error_ratio = (double) v.window_failures / (double) v.window_requests;
        if (s->n_latencies > 0) {
                uint64_t sorted[KB_ROUTER_LATENCY_RING];
                memcpy(sorted, s->latencies, s->n_latencies * sizeof(uint64_t));
                qsort(sorted, s->n_latencies, sizeof(uint64_t), cmp_u64);
                v.has_p50 = true;
                v.p50_usec = sorted[(s->n_latencies - 1) / 2];
        }
        *ret = v;
        return 0;
}

/* ---- model split ---- */

static struct target_state *resolve_split_name(struct target_state *ts, size_t n, const char *name) {
        const char *slash = strchr(name, '/');
        size_t rl = slash ? (size_t) (slash - name) : strlen(name);
        struct target_state *found = NULL;

        for (size_t i = 0; i < n; i++) {
                if (strlen(ts[i].route) != rl || strncmp(ts[i].route, name, rl) != 0)
                        continue;
                if (slash && !streq(ts[i].upstream, slash + 1))
                        continue;
                if (found)
                        return NULL; /* ambiguous: the route is a target twice */
                found = &ts[i];
        }
        return found;
}

int kb_router_set_split(struct kb_router *r, const struct kb_model *m, const struct kb_split_entry *e, size_t n,
                        int64_t admin_uid, const char **ret_why) {
        struct target_state *ts, *idx[KB_SPLIT_MAX_ENTRIES];
        const char *why_dummy;
        const char **why = ret_why ?: &why_dummy;

        if (!r || !m || (!e && n > 0))
                return -EINVAL;
        size_t nt = model_targets(r, m->name, &ts);
        if (n == 0 || n > KB_SPLIT_MAX_ENTRIES) {
                *why = "give from 1 to 64 weights";
                return -EINVAL;
        }
        for (size_t i = 0; i < n; i++) {
                if (!e[i].name || e[i].weight > WEIGHT_LIMIT) {
                        *why = "a weight is an integer from 0 to 1000000";
                        return -EINVAL;
                }
                idx[i] = resolve_split_name(ts, nt, e[i].name);
                if (!idx[i]) {
                        *why = "not a target of this model (a route that is a target twice is named "
                               "ROUTE/UPSTREAM_MODEL)";
                        return -ENOENT;
                }
                for (size_t k = 0; k < i; k++)
                        if (idx[k] == idx[i]) {
                                *why = "a target is named twice";
                                return -EINVAL;
                        }
        }
        uint64_t sum = 0;
        for (size_t i = 0; i < nt; i++) {
                uint64_t wt = effective(&ts[i]);
                for (size_t k = 0; k < n; k++)
                        if (idx[k] == &ts[i])
                                wt = e[k].weight;
                sum += wt;
        }
        if (sum == 0) {
                *why = "the split would leave no target with a non-zero weight";
                return -EDOM;
        }

        bool changed = false;
        for (size_t k = 0; k < n; k++) {
                struct target_state *t = idx[k];
                unsigned before = effective(t);
                t->overridden = e[k].weight != t->config_weight;
                t->weight = t->overridden ? (unsigned) e[k].weight : 0;
                /* An operator's decision gives a canary a fresh history. */
                t->rolled_back = false;
                history_reset(t);
                changed |= before != effective(t);
        }
        if (changed) {
                _cleanup_free_ char *w = weights_of(r, m->name);
                emit(r, &(struct kb_route_event) {
                        .kind = KB_ROUTE_SPLIT_CHANGED, .model = m->name, .weights = w,
                        .reason = admin_uid >= 0 ? "set by an admin" : "set", .admin_uid = admin_uid,
                });
        }
        return 0;
}

/* ---- persistence ---- */

int kb_router_save_splits(const struct kb_router *r, const char *path) {
        _cleanup_free_ char *tmp = NULL, *text = NULL;
        json_t *arr = json_array();

        if (!r || !path) {
                json_decref(arr);
                return -EINVAL;
        }
        for (size_t i = 0; arr && i < r->n_targets; i++) {
                const struct target_state *t = &r->targets[i];
                if (!t->overridden)
                        continue;
                if (json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:I}", "model", t->model, "route",
                                                         t->route, "upstream_model", t->upstream, "weight",
                                                         (json_int_t) t->weight)) < 0) {
                        json_decref(arr);
                        arr = NULL;
                }
        }
        json_t *doc = arr ? json_pack("{s:i, s:o}", "version", 1, "splits", arr) : NULL;
        text = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
        json_decref(doc);
        if (!text || asprintf(&tmp, "%s.tmp", path) < 0) {
                tmp = NULL;
                return -ENOMEM;
        }
        _cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0)
                return -errno;
        size_t len = strlen(text), off = 0;
        while (off < len) {
                ssize_t k = write(fd, text + off, len - off);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0) {
                        int e = -errno;
                        (void) unlink(tmp);
                        return e;
                }
                off += (size_t) k;
        }
        if (write(fd, "\n", 1) != 1 || fsync(fd) < 0 || rename(tmp, path) < 0) {
                int e = -errno;
                (void) unlink(tmp);
                return e ?: -EIO;
        }
        return 0;
}

int kb_router_load_splits(struct kb_router *r, const char *path) {
        json_error_t err;
        struct stat st;

        if (!r || !path)
                return -EINVAL;
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return errno == ENOENT ? 0 : -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || st.st_size > (off_t) SPLITS_FILE_MAX)
                return -EBADMSG;
        json_t *doc = json_loadfd(fd, JSON_REJECT_DUPLICATES, &err);
        json_t *arr = json_object_get(doc, "splits");
        json_t *v = json_object_get(doc, "version");
        if (!doc || !json_is_array(arr) || !json_is_integer(v) || json_integer_value(v) != 1) {
                json_decref(doc);
                return -EBADMSG;
        }
        /* All or nothing: check every entry before taking any. */
        size_t i;
        json_t *e;
        json_array_foreach(arr, i, e) {
                json_t *w = json_object_get(e, "weight");
                if (!json_is_string(json_object_get(e, "model")) || !json_is_string(json_object_get(e, "route")) ||
                    !json_is_string(json_object_get(e, "upstream_model")) || !json_is_integer(w) ||
                    json_integer_value(w) < 0 || json_integer_value(w) > WEIGHT_LIMIT) {
                        json_decref(doc);
                        return -EBADMSG;
                }
        }
        int n = 0;
        json_array_foreach(arr, i, e) {
                struct target_state *t = find_target(r, json_string_value(json_object_get(e, "model")),
                                                     json_string_value(json_object_get(e, "route")),
                                                     json_string_value(json_object_get(e, "upstream_model")));
                unsigned wt = (unsigned) json_integer_value(json_object_get(e, "weight"));
                if (!t)
                        continue;
                t->overridden = wt != t->config_weight;
                t->weight = t->overridden ? wt : 0;
                n += t->overridden;
        }
        json_decref(doc);
        return n;
}
