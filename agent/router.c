/* SPDX-License-Identifier: MIT */
/* Routing state: circuit breakers, weights, canaries, and the plan of one
 * request. Splits set by hand and their persistence: router-split.c. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <sys/stat.h>

#include "router-internal.h"
#include "util.h"


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

void router_emit(struct kb_router *r, const struct kb_route_event *ev) {
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

struct target_state *router_find_target(const struct kb_router *r, const char *model, const char *route,
                                        const char *upstream) {
        if (!model || !route || !upstream)
                return NULL;
        return find_target_in(r->targets, r->n_targets, model, route, upstream);
}

void router_history_reset(struct target_state *t) {
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
                        struct target_state *old = router_find_target(r, m->name, t->route->name, t->upstream_model);
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
                router_emit(r, &(struct kb_route_event) {
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
        router_emit(r, &(struct kb_route_event) {
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
                router_emit(r, &(struct kb_route_event) {
                        .kind = KB_ROUTE_CIRCUIT_CLOSED, .route = s->name, .admin_uid = -1,
                        .reason = "the half-open probe succeeded",
                });
                return;
        default:
                return;
        }
}

/* ---- weights and canaries ---- */

unsigned router_effective(const struct target_state *t) {
        return t->overridden ? t->weight : t->config_weight;
}

/* Targets of one model are adjacent in r->targets. */
size_t router_model_targets(const struct kb_router *r, const char *model, struct target_state **ret_first) {
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

char *router_weights_of(const struct kb_router *r, const char *model) {
        struct target_state *ts;
        size_t n = router_model_targets(r, model, &ts);
        struct kb_buf b = {};

        if (kb_buf_append(&b, "", 0) < 0)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                int q;
                if (route_ambiguous(ts, n, ts[i].route))
                        q = kb_buf_appendf(&b, "%s%s/%s=%u", i ? "," : "", ts[i].route, ts[i].upstream,
                                           router_effective(&ts[i]));
                else
                        q = kb_buf_appendf(&b, "%s%s=%u", i ? "," : "", ts[i].route, router_effective(&ts[i]));
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
        return router_weights_of(r, m->name);
}

unsigned kb_router_weight(const struct kb_router *r, const struct kb_model *m, const struct kb_target *t,
                          bool *ret_overridden) {
        const struct target_state *s = r && m ? router_find_target(r, m->name, t->route->name, t->upstream_model) : NULL;
        if (ret_overridden)
                *ret_overridden = s && s->overridden;
        return s ? router_effective(s) : t->weight;
}

static void canary_feedback(struct kb_router *r, const struct kb_attempt_result *a) {
        struct target_state *t = router_find_target(r, a->model, a->route, a->upstream_model);
        if (!t || !t->history || t->rolled_back || router_effective(t) == 0 || a->verdict == KB_VERDICT_NONE)
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
        size_t n = router_model_targets(r, t->model, &ts);
        bool other = false;
        for (size_t i = 0; i < n; i++)
                if (&ts[i] != t && ts[i].family == t->family && router_effective(&ts[i]) > 0)
                        other = true;
        if (!other)
                return;

        t->overridden = true;
        t->weight = 0;
        t->rolled_back = true;
        _cleanup_free_ char *w = router_weights_of(r, t->model);
        char reason[160];
        snprintf(reason, sizeof(reason), "error ratio %.2f over the last %u attempts is above %.2f", ratio,
                 t->hist_n, t->rollback_ratio);
        router_emit(r, &(struct kb_route_event) {
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
