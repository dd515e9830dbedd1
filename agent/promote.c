/* SPDX-License-Identifier: MIT */
/* Staged promotion: steps, the gates of a step on its own traffic, and the
 * decisions (next step, completed, rolled back, aborted). State files and
 * baselines: promote-state.c; the broker's side: promote-loop.c. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>

#include "promote-internal.h"
#include "util.h"

static const char *const state_names[_KB_PROMOTE_STATE_MAX] = {
        [KB_PROMOTE_RUNNING] = "running",
        [KB_PROMOTE_COMPLETED] = "completed",
        [KB_PROMOTE_ROLLED_BACK] = "rolled_back",
        [KB_PROMOTE_ABORTED] = "aborted",
};

const char *kb_promote_state_to_string(kb_promote_state s) {
        return (unsigned) s < _KB_PROMOTE_STATE_MAX ? state_names[s] : NULL;
}

static const char *const event_names[_KB_PROMOTE_EV_MAX] = {
        [KB_PROMOTE_EV_STARTED] = "started",
        [KB_PROMOTE_EV_STEP_REACHED] = "step_reached",
        [KB_PROMOTE_EV_GATE] = "gate",
        [KB_PROMOTE_EV_ROLLED_BACK] = "rolled_back",
        [KB_PROMOTE_EV_COMPLETED] = "completed",
        [KB_PROMOTE_EV_ABORTED] = "aborted",
};

const char *kb_promote_event_to_string(kb_promote_event_kind k) {
        return (unsigned) k < _KB_PROMOTE_EV_MAX ? event_names[k] : NULL;
}

static const char *const gate_state_names[_KB_GATE_STATE_MAX] = {
        [KB_GATE_PENDING] = "pending",
        [KB_GATE_PASS] = "pass",
        [KB_GATE_FAIL] = "fail",
        [KB_GATE_OFF] = "off",
};

const char *kb_gate_state_to_string(kb_gate_state s) {
        return (unsigned) s < _KB_GATE_STATE_MAX ? gate_state_names[s] : NULL;
}

/* ---- plans ---- */

void kb_promote_plan_init(struct kb_promote_plan *p) {
        *p = (struct kb_promote_plan) {
                .max_error_ratio = KB_PROMOTE_DEFAULT_MAX_ERROR_RATIO,
                .min_requests = KB_PROMOTE_DEFAULT_MIN_REQUESTS,
        };
}

int kb_promote_plan_check(const struct kb_promote_plan *p, const char **ret_why) {
        const char *why = NULL;

        if (!p->route || !*p->route || strlen(p->route) > KB_PROMOTE_NAME_MAX)
                why = "name the candidate route";
        else if (p->n_steps == 0)
                why = "give at least one step";
        else if (p->n_steps > KB_PROMOTE_MAX_STEPS)
                why = "at most 20 steps";
        else if (p->hold_usec == 0)
                why = "the hold must be longer than 0";
        else if (p->hold_usec > KB_PROMOTE_MAX_HOLD_USEC)
                why = "the hold is at most 7 days";
        else if (!(p->max_error_ratio >= 0 && p->max_error_ratio <= 1))
                why = "the error ratio limit is a number from 0 to 1";
        else if (p->max_p95_ms > KB_PROMOTE_MAX_P95_MS)
                why = "the p95 limit is at most 3600000 ms";
        else if (p->min_requests == 0 || p->min_requests > KB_PROMOTE_MAX_MIN_REQUESTS)
                why = "the minimum of requests is from 1 to 1000000";
        for (size_t i = 0; !why && i < p->n_steps; i++) {
                if (p->steps[i] == 0 || p->steps[i] > 100)
                        why = "a step is a percentage from 1 to 100";
                else if (i > 0 && p->steps[i] <= p->steps[i - 1])
                        why = "steps must be strictly increasing";
        }
        /* Ending below 100 would leave a split nobody decided on. */
        if (!why && p->steps[p->n_steps - 1] != 100)
                why = "the last step must be 100";
        if (why) {
                if (ret_why)
                        *ret_why = why;
                return -EINVAL;
        }
        return 0;
}

/* ---- entries ---- */

struct promotion *promote_entry_new(void) {
        struct promotion *e = calloc(1, sizeof(*e));
        if (!e)
                return NULL;
        e->latencies = calloc(KB_PROMOTE_LATENCIES, sizeof(uint32_t));
        if (!e->latencies) {
                free(e);
                return NULL;
        }
        e->admin_uid = -1;
        return e;
}

void promote_entry_free(struct promotion *e) {
        if (!e)
                return;
        for (size_t i = 0; i < e->n_before; i++)
                free((char *) e->before[i].name);
        free(e->before);
        free(e->model);
        free(e->name);
        free(e->route);
        free(e->upstream);
        free(e->reason);
        free(e->latencies);
        free(e);
}

static void promote_entry_freep(struct promotion **e) {
        promote_entry_free(*e);
}

struct promotion *promote_find(const struct kb_promoter *p, const char *model) {
        for (size_t i = 0; model && i < p->n; i++)
                if (streq(p->list[i]->model, model))
                        return p->list[i];
        return NULL;
}

int promote_add(struct kb_promoter *p, struct promotion *e) {
        for (size_t i = 0; i < p->n; i++)
                if (streq(p->list[i]->model, e->model)) {
                        promote_entry_free(p->list[i]);
                        p->list[i] = e;
                        return 0;
                }
        struct promotion **n = reallocarray(p->list, p->n + 1, sizeof(*n));
        if (!n) {
                promote_entry_free(e);
                return -ENOMEM;
        }
        p->list = n;
        p->list[p->n++] = e;
        return 0;
}

int kb_promoter_new(struct kb_router *router, struct kb_promoter **ret) {
        if (!router || !ret)
                return -EINVAL;
        struct kb_promoter *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->router = router;
        *ret = p;
        return 0;
}

void kb_baseline_done(struct kb_baseline *b) {
        if (!b)
                return;
        free(b->evidence);
        json_decref(b->doc);
        *b = (struct kb_baseline) {};
}

struct kb_promoter *kb_promoter_free(struct kb_promoter *p) {
        if (!p)
                return NULL;
        for (size_t i = 0; i < p->n; i++)
                promote_entry_free(p->list[i]);
        free(p->list);
        for (size_t i = 0; i < p->n_baselines; i++) {
                free(p->baselines[i].model);
                kb_baseline_done(&p->baselines[i].b);
        }
        free(p->baselines);
        kb_config_unref(p->config);
        free(p);
        return NULL;
}

void kb_promoter_set_event_handler(struct kb_promoter *p, kb_promote_event_t cb, void *userdata) {
        p->cb = cb;
        p->userdata = userdata;
}

bool kb_promoter_running(const struct kb_promoter *p) {
        for (size_t i = 0; p && i < p->n; i++)
                if (p->list[i]->state == KB_PROMOTE_RUNNING)
                        return true;
        return false;
}

const char *kb_promoter_candidate(const struct kb_promoter *p, const char *model) {
        const struct promotion *e = p ? promote_find(p, model) : NULL;
        return e && e->state == KB_PROMOTE_RUNNING ? e->route : NULL;
}

/* ---- figures and gates ---- */

static void figures(const struct promotion *e, bool with_latency, struct kb_promote_figures *f) {
        const struct step_counts *c = &e->c;

        *f = (struct kb_promote_figures) {
                .requests = step_requests(c), .ok = c->ok, .errors = c->errors,
                .upstream_429 = c->upstream_429, .timeouts = c->timeouts,
                .model_not_found = c->model_not_found, .stream_interrupted = c->stream_interrupted,
                .missing_usage = c->missing_usage,
                .error_ratio = step_requests(c) ? (double) c->errors / (double) step_requests(c) : 0,
        };
        if (c->ok) {
                f->input_per_request = (double) c->input_sum / (double) c->ok;
                f->output_per_request = (double) c->output_sum / (double) c->ok;
                f->cost_microusd_per_request = (double) c->cost_sum / (double) c->ok;
        }
        if (!with_latency || e->n_latencies == 0)
                return;
        uint32_t sorted[KB_PROMOTE_LATENCIES];
        memcpy(sorted, e->latencies, e->n_latencies * sizeof(uint32_t));
        kb_sort_u32(sorted, e->n_latencies);
        f->has_latency = true;
        f->p50_ms = kb_nearest_rank_u32(sorted, e->n_latencies, 50);
        f->p95_ms = kb_nearest_rank_u32(sorted, e->n_latencies, 95);
}

static void gates(const struct promotion *e, const struct kb_promote_figures *f, uint64_t now,
                  struct kb_promote_gate g[static KB_PROMOTE_N_GATES]) {
        bool enough = f->requests >= e->min_requests;
        uint64_t held = now > e->step_started ? now - e->step_started : 0;

        g[0] = (struct kb_promote_gate) {
                .name = "error_ratio", .value = f->error_ratio, .limit = e->max_error_ratio,
                .state = !enough ? KB_GATE_PENDING : f->error_ratio > e->max_error_ratio ? KB_GATE_FAIL : KB_GATE_PASS,
        };
        g[1] = (struct kb_promote_gate) {
                .name = "p95_ms", .value = (double) f->p95_ms, .limit = (double) e->max_p95_ms,
                .state = e->max_p95_ms == 0 ? KB_GATE_OFF
                         : !enough || !f->has_latency ? KB_GATE_PENDING
                         : f->p95_ms > e->max_p95_ms ? KB_GATE_FAIL : KB_GATE_PASS,
        };
        g[2] = (struct kb_promote_gate) {
                .name = "model_not_found", .value = (double) f->model_not_found, .limit = 0,
                .state = f->model_not_found ? KB_GATE_FAIL : KB_GATE_PASS,
        };
        g[3] = (struct kb_promote_gate) {
                .name = "usage", .value = (double) f->missing_usage, .limit = 0,
                .state = !e->require_usage ? KB_GATE_OFF : f->missing_usage ? KB_GATE_FAIL : KB_GATE_PASS,
        };
        g[4] = (struct kb_promote_gate) {
                .name = "requests", .value = (double) f->requests, .limit = e->min_requests,
                .state = enough ? KB_GATE_PASS : KB_GATE_PENDING,
        };
        g[5] = (struct kb_promote_gate) {
                .name = "hold", .value = (double) (held / USEC_PER_MSEC), .limit = (double) (e->hold_usec / USEC_PER_MSEC),
                .state = e->state != KB_PROMOTE_RUNNING || held >= e->hold_usec ? KB_GATE_PASS : KB_GATE_PENDING,
        };
}

static void fill_view(const struct promotion *e, uint64_t now, struct kb_promote_view *v) {
        uint64_t held = now > e->step_started ? now - e->step_started : 0;

        *v = (struct kb_promote_view) {
                .model = e->model, .route = e->route, .upstream_model = e->upstream,
                .state = e->state, .steps = e->steps, .n_steps = e->n_steps, .step = e->step,
                .percent = e->steps[e->step], .hold_usec = e->hold_usec,
                .hold_left_usec = e->state == KB_PROMOTE_RUNNING && held < e->hold_usec ? e->hold_usec - held : 0,
                .started_realtime = e->started_realtime, .step_started_realtime = e->step_started_realtime,
                .finished_realtime = e->finished_realtime, .max_error_ratio = e->max_error_ratio,
                .max_p95_ms = e->max_p95_ms, .require_usage = e->require_usage, .min_requests = e->min_requests,
                .reason = e->reason, .admin_uid = e->admin_uid, .before = e->before, .n_before = e->n_before,
        };
        figures(e, true, &v->fig);
        gates(e, &v->fig, now, v->gates);
}

int kb_promoter_view(const struct kb_promoter *p, const char *model, uint64_t now, struct kb_promote_view *ret) {
        const struct promotion *e = p ? promote_find(p, model) : NULL;
        if (!e)
                return -ENOENT;
        fill_view(e, now, ret);
        return 0;
}

/* ---- baselines ---- */

const struct kb_baseline *kb_promoter_baseline(const struct kb_promoter *p, const char *model) {
        for (size_t i = 0; p && model && i < p->n_baselines; i++)
                if (streq(p->baselines[i].model, model))
                        return &p->baselines[i].b;
        return NULL;
}

int kb_promoter_set_baseline(struct kb_promoter *p, const char *model, struct kb_baseline *b) {
        for (size_t i = 0; i < p->n_baselines; i++)
                if (streq(p->baselines[i].model, model)) {
                        kb_baseline_done(&p->baselines[i].b);
                        p->baselines[i].b = *b;
                        *b = (struct kb_baseline) {};
                        return 0;
                }
        char *name = strdup(model);
        struct baseline_entry *n = name ? reallocarray(p->baselines, p->n_baselines + 1, sizeof(*n)) : NULL;
        if (!n) {
                free(name);
                kb_baseline_done(b);
                return -ENOMEM;
        }
        p->baselines = n;
        p->baselines[p->n_baselines++] = (struct baseline_entry) { .model = name, .b = *b };
        *b = (struct kb_baseline) {};
        return 0;
}

static const char *compared(double v, double base) {
        if (fabs(v - base) < 0.0005)
                return "same";
        return v > base ? "higher" : "lower";
}

char *kb_promote_compare_text(const struct kb_promote_figures *f, const struct kb_baseline *b) {
        struct kb_buf t = {};
        int r;

        if (!b)
                return strdup("no baseline");
        r = kb_buf_appendf(&t, "error ratio %.3f (baseline %.3f, %s)", f->error_ratio, b->error_ratio,
                           compared(f->error_ratio, b->error_ratio));
        if (r >= 0 && f->has_latency && b->has_latency) {
                if (b->p95_ms > 0)
                        r = kb_buf_appendf(&t, "; p95 %" PRIu64 " ms (baseline %" PRIu64 " ms, %+.0f%%)", f->p95_ms,
                                           b->p95_ms, ((double) f->p95_ms - (double) b->p95_ms) * 100.0 / (double) b->p95_ms);
                else
                        r = kb_buf_appendf(&t, "; p95 %" PRIu64 " ms (baseline %" PRIu64 " ms)", f->p95_ms, b->p95_ms);
        } else if (r >= 0 && b->has_latency)
                r = kb_buf_appendf(&t, "; p95 - (baseline %" PRIu64 " ms)", b->p95_ms);
        if (r >= 0)
                r = kb_buf_appendf(&t, "; input tokens/request %.1f (baseline %.1f), output %.1f (baseline %.1f)",
                                   f->input_per_request, b->input_per_request, f->output_per_request,
                                   b->output_per_request);
        if (r < 0) {
                kb_buf_free(&t);
                return NULL;
        }
        return t.data;
}

/* ---- events ---- */

static char *weights_now(const struct kb_promoter *p, const char *model) {
        const struct kb_model *m = p->config ? kb_config_find_model(p->config, model) : NULL;
        return m ? kb_router_weights_string(p->router, m) : NULL;
}

static char *before_text(const struct promotion *e) {
        struct kb_buf t = {};
        for (size_t i = 0; i < e->n_before; i++)
                if (kb_buf_appendf(&t, "%s%s=%" PRIu64, i ? "," : "", e->before[i].name, e->before[i].weight) < 0) {
                        kb_buf_free(&t);
                        return NULL;
                }
        return t.data ?: strdup("");
}

static void emit(struct kb_promoter *p, const struct promotion *e, kb_promote_event_kind kind, const char *reason,
                 const char *gate, const char *before, const char *after, int64_t admin_uid, bool resumed,
                 uint64_t now) {
        struct kb_promote_view v;

        if (!p->cb)
                return;
        fill_view(e, now, &v);
        const struct kb_baseline *b = kb_promoter_baseline(p, e->model);
        _cleanup_free_ char *cmp = b ? kb_promote_compare_text(&v.fig, b) : NULL;
        p->cb(p->userdata, &(struct kb_promote_event) {
                .kind = kind, .view = &v, .reason = reason, .gate = gate,
                .gate_passed = gate && streq(gate, "all"), .weights_before = before, .weights_after = after,
                .baseline = b, .comparison = cmp, .admin_uid = admin_uid, .resumed = resumed,
        });
}

static void reset_step(struct promotion *e, uint64_t now, uint64_t now_realtime) {
        e->c = (struct step_counts) {};
        e->n_latencies = e->latency_pos = 0;
        e->step_started = now;
        e->step_started_realtime = now_realtime;
}

static void finish(struct promotion *e, kb_promote_state state, const char *reason, uint64_t now_realtime) {
        e->state = state;
        e->finished_realtime = now_realtime;
        free(e->reason);
        e->reason = reason ? strdup(reason) : NULL;
}

/* ---- start, abort ---- */

static int fail(char **ret_error, int r, const char *fmt, ...) _printf_(3, 4);
static int fail(char **ret_error, int r, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        if (ret_error && vasprintf(ret_error, fmt, ap) < 0)
                *ret_error = NULL;
        va_end(ap);
        return r;
}

int kb_promoter_start(struct kb_promoter *p, const char *model, const struct kb_promote_plan *plan, int64_t admin_uid,
                      uint64_t now, uint64_t now_realtime, char **ret_error) {
        const char *why = NULL;
        bool ambiguous;

        const struct kb_model *m = p->config ? kb_config_find_model(p->config, model) : NULL;
        if (!m)
                return fail(ret_error, -ENOENT, "no model '%s' in the running config", model);
        struct promotion *old = promote_find(p, model);
        if (old && old->state == KB_PROMOTE_RUNNING)
                return fail(ret_error, -EEXIST, "model '%s' is already being promoted to route '%s' (step %zu of %zu); "
                            "abort it first", model, old->route, old->step + 1, old->n_steps);
        if (kb_promote_plan_check(plan, &why) < 0)
                return fail(ret_error, -EINVAL, "%s", why);
        _cleanup_free_ char *rname = strndup(plan->route, strcspn(plan->route, "/"));
        if (!rname)
                return -ENOMEM;
        const struct kb_route *route = kb_config_find_route(p->config, rname);
        if (!route)
                return fail(ret_error, -ENXIO, "no route '%s' in the running config", rname);
        const struct kb_target *cand = promote_resolve(m, plan->route, &ambiguous);
        if (ambiguous)
                return fail(ret_error, -EINVAL, "route '%s' is a target of model '%s' twice: name it "
                            "ROUTE/UPSTREAM_MODEL", rname, model);
        if (!cand)
                return fail(ret_error, -ESRCH, "route '%s' is not a target of model '%s': add `target = %s "
                            "UPSTREAM_MODEL weight=0` to [model:%s] and reload", plan->route, model, rname, model);
        if (m->n_targets > KB_SPLIT_MAX_ENTRIES)
                return fail(ret_error, -EINVAL, "model '%s' has more than %d targets", model, KB_SPLIT_MAX_ENTRIES);

        _cleanup_(promote_entry_freep) struct promotion *e = promote_entry_new();
        if (!e || !(e->model = strdup(model)) || !(e->name = strdup(plan->route)) ||
            !(e->route = strdup(cand->route->name)) || !(e->upstream = strdup(cand->upstream_model)) ||
            !(e->before = calloc(m->n_targets, sizeof(*e->before))))
                return -ENOMEM;
        e->family = cand->route->family;
        memcpy(e->steps, plan->steps, plan->n_steps * sizeof(unsigned));
        e->n_steps = plan->n_steps;
        e->hold_usec = plan->hold_usec;
        e->max_error_ratio = plan->max_error_ratio;
        e->max_p95_ms = plan->max_p95_ms;
        e->require_usage = plan->require_usage;
        e->min_requests = plan->min_requests;
        e->admin_uid = admin_uid;
        e->started_realtime = now_realtime;
        bool other_family = false;
        for (size_t i = 0; i < m->n_targets; i++) {
                const struct kb_target *t = &m->targets[i];
                unsigned w = kb_router_weight(p->router, m, t, NULL);
                if (!(e->before[i].name = promote_target_name(m, t)))
                        return -ENOMEM;
                e->before[i].weight = w;
                e->n_before++;
                other_family |= t != cand && w > 0 && t->route->family != e->family;
        }
        reset_step(e, now, now_realtime);

        _cleanup_free_ char *before = kb_router_weights_string(p->router, m);
        int r = promote_apply_step(p, e, m, admin_uid, &why);
        if (r == -EDOM && other_family)
                return fail(ret_error, -EPROTOTYPE, "route '%s' speaks %s, the other targets of model '%s' another "
                            "API", rname, kb_family_to_string(e->family), model);
        if (r == -EDOM)
                return fail(ret_error, -EDOM, "no other target of model '%s' has a weight: nothing to move traffic "
                            "from", model);
        if (r < 0)
                return fail(ret_error, r, "cannot set the split: %s", why ?: strerror(-r));

        struct promotion *added = e;
        r = promote_add(p, TAKE_PTR(e));
        if (r < 0)
                return r;
        _cleanup_free_ char *after = kb_router_weights_string(p->router, m);
        emit(p, added, KB_PROMOTE_EV_STARTED, "started by an admin", NULL, before, after, admin_uid, false, now);
        emit(p, added, KB_PROMOTE_EV_STEP_REACHED, "first step", NULL, before, after, admin_uid, false, now);
        return 0;
}

static void end_with_restore(struct kb_promoter *p, struct promotion *e, kb_promote_state state,
                             kb_promote_event_kind kind, const char *reason, int64_t admin_uid, uint64_t now,
                             uint64_t now_realtime) {
        const struct kb_model *m = p->config ? kb_config_find_model(p->config, e->model) : NULL;
        _cleanup_free_ char *before = weights_now(p, e->model);
        promote_restore(p, e, m, admin_uid);
        finish(e, state, reason, now_realtime);
        _cleanup_free_ char *after = weights_now(p, e->model);
        emit(p, e, kind, reason, NULL, before, after, admin_uid, false, now);
}

int kb_promoter_abort(struct kb_promoter *p, const char *model, int64_t admin_uid, uint64_t now,
                      uint64_t now_realtime) {
        struct promotion *e = promote_find(p, model);
        if (!e || e->state != KB_PROMOTE_RUNNING)
                return -ENOENT;
        end_with_restore(p, e, KB_PROMOTE_ABORTED, KB_PROMOTE_EV_ABORTED, "aborted by an admin", admin_uid, now,
                         now_realtime);
        return 0;
}

/* ---- decisions ---- */

/* full: the p95 gate and the step's end too. A request looks at the
 * counting gates only (sorting the step's latencies on every call would
 * cost more than the call); the tick, once a second, at all of them. */
static void evaluate(struct kb_promoter *p, struct promotion *e, uint64_t now, uint64_t now_realtime, bool full) {
        struct kb_promote_figures f;
        char reason[256];
        const char *gate = NULL;

        bool enough = step_requests(&e->c) >= e->min_requests;
        figures(e, full && enough && e->max_p95_ms > 0, &f);
        /* A provider that does not know the model, or answers without
         * usage, will not get better with more traffic: no minimum. */
        if (f.model_not_found > 0) {
                gate = "model_not_found";
                snprintf(reason, sizeof(reason), "%" PRIu64 " answer(s) of the candidate said the model does not exist",
                         f.model_not_found);
        } else if (e->require_usage && f.missing_usage > 0) {
                gate = "usage";
                snprintf(reason, sizeof(reason), "%" PRIu64 " ok answer(s) of the candidate without usage",
                         f.missing_usage);
        } else if (enough && f.error_ratio > e->max_error_ratio) {
                gate = "error_ratio";
                snprintf(reason, sizeof(reason), "error ratio %.3f above %.3f over %" PRIu64 " requests (%" PRIu64
                         " errors: %" PRIu64 " upstream 429, %" PRIu64 " timeouts)", f.error_ratio, e->max_error_ratio,
                         f.requests, f.errors, f.upstream_429, f.timeouts);
        } else if (enough && e->max_p95_ms > 0 && f.has_latency && f.p95_ms > e->max_p95_ms) {
                gate = "p95_ms";
                snprintf(reason, sizeof(reason), "p95 latency %" PRIu64 " ms above %" PRIu64 " ms over %" PRIu64
                         " requests", f.p95_ms, e->max_p95_ms, f.requests);
        }
        if (gate) {
                emit(p, e, KB_PROMOTE_EV_GATE, reason, gate, NULL, NULL, -1, false, now);
                end_with_restore(p, e, KB_PROMOTE_ROLLED_BACK, KB_PROMOTE_EV_ROLLED_BACK, reason, -1, now,
                                 now_realtime);
                return;
        }
        if (!full || !enough || now - e->step_started < e->hold_usec)
                return;

        snprintf(reason, sizeof(reason), "step %zu (%u%%) passed: %" PRIu64 " requests in %" PRIu64 " s", e->step + 1,
                 e->steps[e->step], f.requests, (now - e->step_started) / USEC_PER_SEC);
        emit(p, e, KB_PROMOTE_EV_GATE, reason, "all", NULL, NULL, -1, false, now);
        if (e->step + 1 == e->n_steps) {
                _cleanup_free_ char *before = before_text(e), *after = weights_now(p, e->model);
                finish(e, KB_PROMOTE_COMPLETED, "every step passed", now_realtime);
                emit(p, e, KB_PROMOTE_EV_COMPLETED, "every step passed", NULL, before, after, -1, false, now);
                return;
        }
        const struct kb_model *m = kb_config_find_model(p->config, e->model);
        _cleanup_free_ char *before = weights_now(p, e->model);
        e->step++;
        reset_step(e, now, now_realtime);
        const char *why = NULL;
        int r = m ? promote_apply_step(p, e, m, -1, &why) : -ENOENT;
        if (r < 0) {
                e->step--;
                snprintf(reason, sizeof(reason), "cannot set the next step's split: %s", why ?: strerror(-r));
                end_with_restore(p, e, KB_PROMOTE_ABORTED, KB_PROMOTE_EV_ABORTED, reason, -1, now, now_realtime);
                return;
        }
        _cleanup_free_ char *after = weights_now(p, e->model);
        emit(p, e, KB_PROMOTE_EV_STEP_REACHED, "the previous step passed", NULL, before, after, -1, false, now);
}

/* fallback_from is "A,B": whether route is one of them. */
static bool in_list(const char *list, const char *route) {
        size_t rl = strlen(route);
        for (const char *s = list; s && *s;) {
                size_t l = strcspn(s, ",");
                if (l == rl && strncmp(s, route, rl) == 0)
                        return true;
                s += l + (s[l] == ',');
        }
        return false;
}

/* Whether o said something about the candidate (and was counted). */
static bool count(struct promotion *e, const struct kb_promote_obs *o) {
        struct step_counts *c = &e->c;
        bool ours = o->route && streq(o->route, e->route) && streq_ptr(o->upstream_model, e->upstream);

        if (!ours) {
                /* The candidate failed and another target answered: the
                 * candidate's failure all the same. */
                if (!in_list(o->fallback_from, e->route))
                        return false;
                c->errors++;
                return true;
        }
        switch (o->outcome) {
        case KB_OUTCOME_OK:
                c->ok++;
                if (o->status >= 200 && o->status < 300 && o->input_tokens == 0)
                        c->missing_usage++;
                c->input_sum += o->input_tokens;
                c->output_sum += o->output_tokens;
                c->cost_sum += o->cost_microusd;
                break;
        case KB_OUTCOME_UPSTREAM_ERROR:
                c->errors++;
                c->upstream_429 += o->upstream_status == 429;
                c->model_not_found += o->upstream_status == 404;
                break;
        case KB_OUTCOME_UPSTREAM_TIMEOUT:
                c->errors++;
                c->timeouts++;
                break;
        case KB_OUTCOME_STREAM_INTERRUPTED:
                c->errors++;
                c->stream_interrupted++;
                break;
        case KB_OUTCOME_MODEL_NOT_FOUND:
                c->errors++;
                c->model_not_found++;
                break;
        default:
                /* the app left, or we refused it: nothing about the route */
                return false;
        }
        e->latencies[e->latency_pos] = (uint32_t) MIN(o->latency_usec / USEC_PER_MSEC, (uint64_t) UINT32_MAX);
        e->latency_pos = (e->latency_pos + 1) % KB_PROMOTE_LATENCIES;
        e->n_latencies = MIN(e->n_latencies + 1, (size_t) KB_PROMOTE_LATENCIES);
        return true;
}

void kb_promoter_observe(struct kb_promoter *p, const struct kb_promote_obs *o, uint64_t now, uint64_t now_realtime) {
        struct promotion *e = p && o && o->model ? promote_find(p, o->model) : NULL;

        if (!e || e->state != KB_PROMOTE_RUNNING)
                return;
        if (count(e, o))
                evaluate(p, e, now, now_realtime, false);
}

void kb_promoter_tick(struct kb_promoter *p, uint64_t now, uint64_t now_realtime) {
        /* An event may replace nothing in the list, but be safe against it. */
        for (size_t i = 0; p && i < p->n; i++)
                if (p->list[i]->state == KB_PROMOTE_RUNNING)
                        evaluate(p, p->list[i], now, now_realtime, true);
}

/* ---- the running config ---- */

void promote_resume(struct kb_promoter *p, struct promotion *e, bool restart, uint64_t now, uint64_t now_realtime) {
        const struct kb_model *m = p->config ? kb_config_find_model(p->config, e->model) : NULL;
        const struct kb_target *cand = promote_candidate_of(m, e);
        char reason[512];
        const char *why = NULL;

        if (!m)
                snprintf(reason, sizeof(reason), "model '%s' is no longer configured", e->model);
        else if (!kb_config_find_route(p->config, e->route))
                snprintf(reason, sizeof(reason), "route '%s' is no longer configured", e->route);
        else if (!cand)
                snprintf(reason, sizeof(reason), "route '%s' (%s) is no longer a target of model '%s'", e->route,
                         e->upstream, e->model);
        else if (cand->route->family != e->family)
                snprintf(reason, sizeof(reason), "route '%s' now speaks another API", e->route);
        else {
                _cleanup_free_ char *before = weights_now(p, e->model);
                if (restart)
                        reset_step(e, now, now_realtime);
                int r = promote_apply_step(p, e, m, -1, &why);
                if (r >= 0) {
                        if (restart) {
                                _cleanup_free_ char *after = weights_now(p, e->model);
                                emit(p, e, KB_PROMOTE_EV_STEP_REACHED, "resumed after a restart", NULL, before, after,
                                     -1, true, now);
                        }
                        return;
                }
                snprintf(reason, sizeof(reason), "cannot set the step's split: %s", why ?: strerror(-r));
        }
        end_with_restore(p, e, KB_PROMOTE_ABORTED, KB_PROMOTE_EV_ABORTED, reason, -1, now, now_realtime);
}

void kb_promoter_configure(struct kb_promoter *p, struct kb_config *c, uint64_t now, uint64_t now_realtime) {
        kb_config_unref(p->config);
        p->config = kb_config_ref(c);
        for (size_t i = 0; i < p->n; i++)
                if (p->list[i]->state == KB_PROMOTE_RUNNING)
                        promote_resume(p, p->list[i], false, now, now_realtime);
}
