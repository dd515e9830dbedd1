/* SPDX-License-Identifier: MIT */
/* Staged promotion on the admin socket: POST /models/NAME/promote starts
 * one, DELETE aborts it, GET /models/NAME/status shows its step, gates and
 * the baseline comparison, PUT /models/NAME/baseline keeps a baseline (and
 * saves it as evidence). The decisions are promote.c's; this file parses
 * and renders. */

#include <jansson.h>
#include <math.h>

#include "admin.h"
#include "broker.h"
#include "json-util.h"
#include "preflight.h"
#include "promote.h"
#include "router.h"

/* Longest model name part of an evidence file name. */
#define EVIDENCE_NAME_MAX 128

/* Rounded to 3 decimals so a ratio reads as the journal's %.3f. */
static json_t *ratio_json(double v) {
        return json_real(round(v * 1000.0) / 1000.0);
}

static json_t *tenth_json(double v) {
        return json_real(round(v * 10.0) / 10.0);
}

static json_t *figures_json(const struct kb_promote_figures *f) {
        return json_pack("{s:I, s:I, s:I, s:o, s:I, s:I, s:I, s:I, s:I, s:o, s:o, s:o, s:o, s:o}",
                         "requests", (json_int_t) f->requests, "ok", (json_int_t) f->ok,
                         "errors", (json_int_t) f->errors, "error_ratio", ratio_json(f->error_ratio),
                         "upstream_429", (json_int_t) f->upstream_429, "timeouts", (json_int_t) f->timeouts,
                         "model_not_found", (json_int_t) f->model_not_found,
                         "stream_interrupted", (json_int_t) f->stream_interrupted,
                         "missing_usage", (json_int_t) f->missing_usage,
                         "p50_ms", f->has_latency ? json_integer((json_int_t) f->p50_ms) : json_null(),
                         "p95_ms", f->has_latency ? json_integer((json_int_t) f->p95_ms) : json_null(),
                         "input_tokens_per_request", tenth_json(f->input_per_request),
                         "output_tokens_per_request", tenth_json(f->output_per_request),
                         "cost_microusd_per_request", tenth_json(f->cost_microusd_per_request));
}

static json_t *promotion_json(const struct kb_promote_view *v) {
        json_t *steps = json_array(), *gates = json_array(), *before = json_object();

        for (size_t i = 0; steps && i < v->n_steps; i++)
                if (json_array_append_new(steps, json_integer(v->steps[i])) < 0)
                        goto oom;
        for (size_t i = 0; gates && i < KB_PROMOTE_N_GATES; i++) {
                const struct kb_promote_gate *g = &v->gates[i];
                bool ratio = streq(g->name, "error_ratio");
                json_t *limit = g->state == KB_GATE_OFF && g->limit == 0 ? json_null()
                                : ratio ? ratio_json(g->limit) : json_integer((json_int_t) g->limit);
                json_t *value = ratio ? ratio_json(g->value) : json_integer((json_int_t) g->value);
                if (streq(g->name, "p95_ms") && !v->fig.has_latency) {
                        json_decref(value);
                        value = json_null();
                }
                if (json_array_append_new(gates, json_pack("{s:s, s:o, s:o, s:s}", "name", g->name, "value", value,
                                                           "limit", limit, "state",
                                                           kb_gate_state_to_string(g->state))) < 0)
                        goto oom;
        }
        for (size_t i = 0; before && i < v->n_before; i++)
                if (json_object_set_new(before, v->before[i].name, json_integer((json_int_t) v->before[i].weight)) < 0)
                        goto oom;
        if (!steps || !gates || !before)
                goto oom;
        return json_pack("{s:s, s:s, s:s, s:o, s:I, s:I, s:I, s:I, s:I, s:o, s:o, s:o, s:o, s:o, s:b, s:I, s:s?, s:o,"
                         " s:I, s:o, s:o, s:o}",
                         "route", v->route, "upstream_model", v->upstream_model,
                         "state", kb_promote_state_to_string(v->state), "steps", steps,
                         "step", (json_int_t) (v->step + 1), "n_steps", (json_int_t) v->n_steps,
                         "percent", (json_int_t) v->percent, "hold_ms", (json_int_t) (v->hold_usec / USEC_PER_MSEC),
                         "hold_left_ms", (json_int_t) (v->hold_left_usec / USEC_PER_MSEC),
                         "started", kb_admin_time_json(v->started_realtime),
                         "step_started", kb_admin_time_json(v->step_started_realtime),
                         "finished", kb_admin_time_json(v->finished_realtime),
                         "max_error_ratio", ratio_json(v->max_error_ratio),
                         "max_p95_ms", v->max_p95_ms ? json_integer((json_int_t) v->max_p95_ms) : json_null(),
                         "require_usage", v->require_usage, "min_requests", (json_int_t) v->min_requests,
                         "reason", v->reason,
                         "admin_uid", v->admin_uid >= 0 ? json_integer(v->admin_uid) : json_null(),
                         "requests", (json_int_t) v->fig.requests, "figures", figures_json(&v->fig),
                         "gates", gates, "before", before);
oom:
        json_decref(steps);
        json_decref(gates);
        json_decref(before);
        return NULL;
}

static json_t *baseline_json(const struct kb_baseline *bl) {
        json_t *j = json_deep_copy(bl->doc);
        if (j && (json_object_set_new(j, "evidence", bl->evidence ? json_string(bl->evidence) : json_null()) < 0 ||
                  json_object_set_new(j, "saved", kb_admin_time_json(bl->saved_realtime)) < 0)) {
                json_decref(j);
                return NULL;
        }
        return j;
}

static json_t *status_json(struct kb_broker *b, const struct kb_model *m) {
        struct kb_promote_view v;
        bool has = kb_promoter_view(b->promoter, m->name, kb_now_usec(), &v) >= 0;
        const struct kb_baseline *bl = kb_promoter_baseline(b->promoter, m->name);
        _cleanup_free_ char *cmp = has && bl ? kb_promote_compare_text(&v.fig, bl) : NULL;

        return json_pack("{s:s, s:o, s:o, s:o, s:o}", "model", m->name, "weights", kb_admin_model_weights(b, m),
                         "promotion", has ? promotion_json(&v) : json_null(),
                         "baseline", bl ? baseline_json(bl) : json_null(),
                         "comparison", cmp ? json_string(cmp) : json_null());
}

static const struct kb_model *find_model(struct kb_conn *c, struct kb_broker *b, const struct kb_admin_target *t) {
        const struct kb_model *m = kb_config_find_model(b->config, t->model);
        if (!m)
                kb_admin_error(c, 404, "not_found", "no model '%s' in the running config", t->model);
        return m;
}

/* The body of POST /models/NAME/promote into plan (strings borrowed from doc). */
static int parse_plan(const json_t *doc, struct kb_promote_plan *plan, const char **ret_why) {
        static const char *const known[] = {
                "route", "steps", "hold_ms", "max_error_ratio", "max_p95_ms", "require_usage", "min_requests",
        };
        json_t *v;
        size_t i;

        kb_promote_plan_init(plan);
        if (!json_is_object(doc)) {
                *ret_why = "expected {\"route\":R, \"steps\":[...], \"hold_ms\":N, ...}";
                return -EINVAL;
        }
        if (!kb_json_only_members(doc, known, ELEMENTSOF(known))) {
                *ret_why = "unknown member (route, steps, hold_ms, max_error_ratio, max_p95_ms, "
                           "require_usage, min_requests)";
                return -EINVAL;
        }
        plan->route = json_string_value(json_object_get(doc, "route"));
        if (!plan->route) {
                *ret_why = "route: the candidate route's name";
                return -EINVAL;
        }
        const json_t *steps = json_object_get(doc, "steps");
        if (!json_is_array(steps) || json_array_size(steps) > KB_PROMOTE_MAX_STEPS) {
                *ret_why = "steps: a list of 1 to 20 percentages, e.g. [1,5,25,100]";
                return -EINVAL;
        }
        json_array_foreach(steps, i, v) {
                if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1000) {
                        *ret_why = "a step is a percentage from 1 to 100";
                        return -EINVAL;
                }
                plan->steps[plan->n_steps++] = (unsigned) json_integer_value(v);
        }
        v = json_object_get(doc, "hold_ms");
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            (uint64_t) json_integer_value(v) > KB_PROMOTE_MAX_HOLD_USEC / USEC_PER_MSEC) {
                *ret_why = "hold_ms: the hold of each step in milliseconds, from 1 to 7 days";
                return -EINVAL;
        }
        plan->hold_usec = (uint64_t) json_integer_value(v) * USEC_PER_MSEC;
        if ((v = json_object_get(doc, "max_error_ratio"))) {
                if (!json_is_number(v)) {
                        *ret_why = "the error ratio limit is a number from 0 to 1";
                        return -EINVAL;
                }
                plan->max_error_ratio = json_number_value(v);
        }
        if ((v = json_object_get(doc, "max_p95_ms")) && !json_is_null(v)) {
                if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > KB_PROMOTE_MAX_P95_MS) {
                        *ret_why = "max_p95_ms: milliseconds from 1 to 3600000";
                        return -EINVAL;
                }
                plan->max_p95_ms = (uint64_t) json_integer_value(v);
        }
        if ((v = json_object_get(doc, "require_usage"))) {
                if (!json_is_boolean(v)) {
                        *ret_why = "require_usage: true or false";
                        return -EINVAL;
                }
                plan->require_usage = json_is_true(v);
        }
        if ((v = json_object_get(doc, "min_requests"))) {
                if (!json_is_integer(v) || json_integer_value(v) < 1 ||
                    json_integer_value(v) > KB_PROMOTE_MAX_MIN_REQUESTS) {
                        *ret_why = "the minimum of requests is from 1 to 1000000";
                        return -EINVAL;
                }
                plan->min_requests = (unsigned) json_integer_value(v);
        }
        return kb_promote_plan_check(plan, ret_why);
}

static void respond_status(struct kb_conn *c, struct kb_broker *b, const struct kb_model *m, int saved) {
        json_t *j = status_json(b, m);
        /* The state is live either way; say when it will not survive a restart. */
        if (j && saved < 0)
                json_object_set_new(j, "warning", json_string(strerror(-saved)));
        kb_admin_respond(c, 200, j);
}

void kb_admin_serve_promote(struct kb_conn *c, struct kb_broker *b, struct kb_http_request *req,
                            const struct kb_admin_target *t, uid_t admin_uid) {
        struct kb_promote_plan plan;
        _cleanup_free_ char *error = NULL;
        const char *why = NULL;
        json_error_t err;

        const struct kb_model *m = find_model(c, b, t);
        if (!m)
                return;
        if (t->endpoint == KB_ADMIN_MODEL_PROMOTE_ABORT) {
                int r = kb_promoter_abort(b->promoter, m->name, (int64_t) admin_uid, kb_now_usec(), kb_realtime_usec());
                if (r == -ENOENT)
                        kb_admin_error(c, 404, "not_found", "no promotion of model '%s' is running", m->name);
                else
                        respond_status(c, b, m, 0);
                return;
        }
        json_t *doc = json_loadb(req->body.data ?: "", req->body.len, JSON_REJECT_DUPLICATES, &err);
        int r = doc ? parse_plan(doc, &plan, &why) : -EINVAL;
        if (r < 0) {
                json_decref(doc);
                kb_admin_error(c, 400, "invalid_request", "%s", why ?: "the body is not JSON");
                return;
        }
        r = kb_promoter_start(b->promoter, m->name, &plan, (int64_t) admin_uid, kb_now_usec(), kb_realtime_usec(),
                              &error);
        json_decref(doc);
        switch (r) {
        case 0:
                /* The events saved the state; say whether that worked. */
                respond_status(c, b, m, kb_promote_save(b));
                return;
        case -ENOENT:
                kb_admin_error(c, 404, "not_found", "%s", error ?: strerror(-r));
                return;
        case -EEXIST:
                kb_admin_error(c, 409, "conflict", "%s", error ?: strerror(-r));
                return;
        case -ENOMEM:
                kb_admin_error(c, 500, "internal_error", "out of memory");
                return;
        default:
                kb_admin_error(c, 400, "invalid_request", "%s", error ?: strerror(-r));
        }
}

void kb_admin_serve_model_status(struct kb_conn *c, struct kb_broker *b, const struct kb_admin_target *t) {
        const struct kb_model *m = find_model(c, b, t);
        if (m)
                respond_status(c, b, m, 0);
}

/* "baseline-MODEL" with what a file name must not hold made '_'. */
static void evidence_name(const char *model, char ret[static EVIDENCE_NAME_MAX + 16]) {
        size_t n = strlen("baseline-");
        memcpy(ret, "baseline-", n);
        for (size_t i = 0; model[i] && i < EVIDENCE_NAME_MAX; i++) {
                char ch = model[i];
                bool plain = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                        ch == '-' || ch == '_' || (ch == '.' && i > 0);
                ret[n++] = plain ? ch : '_';
        }
        ret[n] = 0;
}

void kb_admin_serve_baseline(struct kb_conn *c, struct kb_broker *b, struct kb_http_request *req,
                             const struct kb_admin_target *t, uid_t admin_uid) {
        struct kb_baseline bl = {};
        _cleanup_free_ char *path = NULL;
        char name[EVIDENCE_NAME_MAX + 16];
        const char *why = NULL;
        json_error_t err;

        const struct kb_model *m = find_model(c, b, t);
        if (!m)
                return;
        json_t *doc = json_loadb(req->body.data ?: "", req->body.len, JSON_REJECT_DUPLICATES, &err);
        int r = doc ? kb_baseline_from_json(doc, &bl, &why) : -EINVAL;
        json_decref(doc);
        if (r < 0) {
                kb_admin_error(c, r == -ENOMEM ? 500 : 400, "invalid_request", "%s", why ?: "the body is not JSON");
                return;
        }
        uint64_t now = kb_realtime_usec();
        json_t *evidence = json_pack("{s:s, s:s, s:o, s:I, s:O}", "kind", "baseline", "model", m->name, "saved",
                                     kb_admin_time_json(now), "admin_uid", (json_int_t) admin_uid, "baseline", bl.doc);
        evidence_name(m->name, name);
        r = evidence ? kb_preflight_save_evidence(b->config->agent.state_dir, name, now, evidence, &path) : -ENOMEM;
        json_decref(evidence);
        if (r < 0) {
                kb_baseline_done(&bl);
                kb_admin_error(c, 500, "internal_error", "cannot save the baseline's evidence: %s", strerror(-r));
                return;
        }
        bl.saved_realtime = now;
        bl.evidence = TAKE_PTR(path);
        r = kb_promoter_set_baseline(b->promoter, m->name, &bl);
        if (r < 0) {
                kb_admin_error(c, 500, "internal_error", "%s", strerror(-r));
                return;
        }
        respond_status(c, b, m, kb_promote_save(b));
}
