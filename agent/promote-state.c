/* SPDX-License-Identifier: MIT */
/* What outlives the process: state_dir/promotions.json (every model's
 * promotion, running or ended, with the split from before it, and the
 * baselines), and the baseline a PUT /models/NAME/baseline brings.
 * Per-step counters are not kept: a resumed step starts counting (and
 * holding) again. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>

#include "json-util.h"
#include "promote-internal.h"
#include "util.h"

#define STATE_VERSION 1
#define STATE_FILE_MAX (4U * 1024U * 1024U)
#define BASELINE_ROUTES_MAX 64
#define BASELINE_ERRORS_MAX 32
/* Larger figures than any real traffic gives; they keep doubles exact. */
#define FIGURE_MAX 1e15
#define WEIGHT_LIMIT_PROMOTE 1000000U

/* ---- promotions.json ---- */

static json_t *entry_json(const struct promotion *e) {
        json_t *steps = json_array(), *before = json_array();

        for (size_t i = 0; steps && i < e->n_steps; i++)
                if (json_array_append_new(steps, json_integer(e->steps[i])) < 0) {
                        json_decref(steps);
                        steps = NULL;
                }
        for (size_t i = 0; before && i < e->n_before; i++)
                if (json_array_append_new(before, json_pack("{s:s, s:I}", "name", e->before[i].name, "weight",
                                                            (json_int_t) e->before[i].weight)) < 0) {
                        json_decref(before);
                        before = NULL;
                }
        if (!steps || !before) {
                json_decref(steps);
                json_decref(before);
                return NULL;
        }
        return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:o, s:I, s:I, s:f, s:I, s:b, s:I, s:o, s:I, s:I, s:I, s:s?, s:I}",
                         "model", e->model, "candidate", e->name, "route", e->route, "upstream_model", e->upstream,
                         "family", kb_family_to_string(e->family), "state", kb_promote_state_to_string(e->state),
                         "steps", steps, "step", (json_int_t) e->step, "hold_ms", (json_int_t) (e->hold_usec / USEC_PER_MSEC),
                         "max_error_ratio", e->max_error_ratio, "max_p95_ms", (json_int_t) e->max_p95_ms,
                         "require_usage", e->require_usage, "min_requests", (json_int_t) e->min_requests,
                         "before", before, "started_usec", (json_int_t) e->started_realtime,
                         "step_started_usec", (json_int_t) e->step_started_realtime,
                         "finished_usec", (json_int_t) e->finished_realtime, "reason", e->reason,
                         "admin_uid", (json_int_t) e->admin_uid);
}

json_t *kb_promoter_to_json(const struct kb_promoter *p) {
        json_t *list = json_array(), *bl = json_array();

        for (size_t i = 0; list && i < p->n; i++)
                if (json_array_append_new(list, entry_json(p->list[i])) < 0) {
                        json_decref(list);
                        list = NULL;
                }
        for (size_t i = 0; bl && i < p->n_baselines; i++) {
                const struct baseline_entry *b = &p->baselines[i];
                if (json_array_append_new(bl, json_pack("{s:s, s:O, s:s?, s:I}", "model", b->model, "baseline",
                                                        b->b.doc, "evidence", b->b.evidence, "saved_usec",
                                                        (json_int_t) b->b.saved_realtime)) < 0) {
                        json_decref(bl);
                        bl = NULL;
                }
        }
        if (!list || !bl) {
                json_decref(list);
                json_decref(bl);
                return NULL;
        }
        return json_pack("{s:i, s:o, s:o}", "version", STATE_VERSION, "promotions", list, "baselines", bl);
}

static bool get_uint(const json_t *o, const char *k, uint64_t max, uint64_t *ret) {
        json_t *v = json_object_get(o, k);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t) json_integer_value(v) > max)
                return false;
        *ret = (uint64_t) json_integer_value(v);
        return true;
}

static int dup_string(const json_t *o, const char *k, char **ret) {
        const char *s = json_string_value(json_object_get(o, k));
        if (!s || !*s || strlen(s) > KB_PROMOTE_NAME_MAX)
                return -EBADMSG;
        return (*ret = strdup(s)) ? 0 : -ENOMEM;
}

static int entry_from_json(const json_t *o, struct promotion **ret) {
        struct promotion *e = promote_entry_new();
        const json_t *v;
        uint64_t u;
        size_t i;
        int r;

        if (!e)
                return -ENOMEM;
        if ((r = dup_string(o, "model", &e->model)) < 0 || (r = dup_string(o, "candidate", &e->name)) < 0 ||
            (r = dup_string(o, "route", &e->route)) < 0 || (r = dup_string(o, "upstream_model", &e->upstream)) < 0)
                goto fail;
        r = -EBADMSG;
        int fam = kb_family_from_string(json_string_value(json_object_get(o, "family")) ?: "");
        const char *st = json_string_value(json_object_get(o, "state"));
        if (fam < 0 || !st)
                goto fail;
        e->family = (kb_family) fam;
        for (e->state = 0; e->state < _KB_PROMOTE_STATE_MAX; e->state++)
                if (streq(st, kb_promote_state_to_string(e->state)))
                        break;
        if (e->state == _KB_PROMOTE_STATE_MAX)
                goto fail;
        const json_t *steps = json_object_get(o, "steps"), *before = json_object_get(o, "before");
        if (!json_is_array(steps) || json_array_size(steps) == 0 || json_array_size(steps) > KB_PROMOTE_MAX_STEPS ||
            !json_is_array(before) || json_array_size(before) > KB_SPLIT_MAX_ENTRIES)
                goto fail;
        json_array_foreach(steps, i, v) {
                if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 100)
                        goto fail;
                e->steps[e->n_steps++] = (unsigned) json_integer_value(v);
        }
        if (!(e->before = calloc(MAX(json_array_size(before), (size_t) 1), sizeof(*e->before))))
                goto oom;
        json_array_foreach(before, i, v) {
                const char *name = json_string_value(json_object_get(v, "name"));
                if (!name || !get_uint(v, "weight", WEIGHT_LIMIT_PROMOTE, &u))
                        goto fail;
                if (!(e->before[i].name = strdup(name)))
                        goto oom;
                e->before[i].weight = u;
                e->n_before++;
        }
        json_t *ratio = json_object_get(o, "max_error_ratio");
        uint64_t hold_ms, min, rt[3], p95;
        if (!get_uint(o, "step", e->n_steps - 1, &u) || !get_uint(o, "hold_ms", KB_PROMOTE_MAX_HOLD_USEC / USEC_PER_MSEC, &hold_ms) ||
            !json_is_number(ratio) || !get_uint(o, "max_p95_ms", KB_PROMOTE_MAX_P95_MS, &p95) ||
            !get_uint(o, "min_requests", KB_PROMOTE_MAX_MIN_REQUESTS, &min) || min == 0 || hold_ms == 0 ||
            !json_is_boolean(json_object_get(o, "require_usage")) ||
            !get_uint(o, "started_usec", UINT64_MAX >> 1, &rt[0]) || !get_uint(o, "step_started_usec", UINT64_MAX >> 1, &rt[1]) ||
            !get_uint(o, "finished_usec", UINT64_MAX >> 1, &rt[2]) || !json_is_integer(json_object_get(o, "admin_uid")))
                goto fail;
        e->step = (size_t) u;
        e->hold_usec = hold_ms * USEC_PER_MSEC;
        e->max_error_ratio = json_number_value(ratio);
        if (!(e->max_error_ratio >= 0 && e->max_error_ratio <= 1))
                goto fail;
        e->max_p95_ms = p95;
        e->min_requests = (unsigned) min;
        e->require_usage = json_is_true(json_object_get(o, "require_usage"));
        e->started_realtime = rt[0];
        e->step_started_realtime = rt[1];
        e->finished_realtime = rt[2];
        e->admin_uid = json_integer_value(json_object_get(o, "admin_uid"));
        const char *reason = json_string_value(json_object_get(o, "reason"));
        if (reason && !(e->reason = strdup(reason)))
                goto oom;
        *ret = e;
        return 0;
oom:
        r = -ENOMEM;
fail:
        promote_entry_free(e);
        return r;
}

static int baseline_from_state(const json_t *o, struct kb_baseline *ret) {
        const char *why;
        uint64_t saved;
        int r = kb_baseline_from_json(json_object_get(o, "baseline"), ret, &why);
        if (r < 0)
                return r == -ENOMEM ? r : -EBADMSG;
        const char *ev = json_string_value(json_object_get(o, "evidence"));
        if (get_uint(o, "saved_usec", UINT64_MAX >> 1, &saved))
                ret->saved_realtime = saved;
        if (ev && !(ret->evidence = strdup(ev))) {
                kb_baseline_done(ret);
                return -ENOMEM;
        }
        return 0;
}

int kb_promoter_load_json(struct kb_promoter *p, const json_t *doc, uint64_t now, uint64_t now_realtime) {
        const json_t *list = json_object_get(doc, "promotions"), *bl = json_object_get(doc, "baselines"), *v;
        const json_t *ver = json_object_get(doc, "version");
        struct promotion *entries[256];
        size_t n = 0, i;
        int r = 0;

        if (!json_is_integer(ver) || json_integer_value(ver) != STATE_VERSION || !json_is_array(list) ||
            !json_is_array(bl) || json_array_size(list) > ELEMENTSOF(entries))
                return -EBADMSG;
        /* All or nothing: every entry is read before any is taken. */
        json_array_foreach(list, i, v) {
                r = entry_from_json(v, &entries[n]);
                if (r < 0)
                        break;
                n++;
        }
        json_array_foreach(bl, i, v) {
                if (r < 0)
                        break;
                struct kb_baseline b = {};
                if ((r = baseline_from_state(v, &b)) < 0)
                        break;
                kb_baseline_done(&b);
                if (!json_is_string(json_object_get(v, "model")))
                        r = -EBADMSG;
        }
        if (r < 0) {
                for (size_t k = 0; k < n; k++)
                        promote_entry_free(entries[k]);
                return r;
        }
        json_array_foreach(bl, i, v) {
                struct kb_baseline b = {};
                if (baseline_from_state(v, &b) >= 0)
                        (void) kb_promoter_set_baseline(p, json_string_value(json_object_get(v, "model")), &b);
        }
        for (size_t k = 0; k < n; k++) {
                struct promotion *e = entries[k];
                bool running = e->state == KB_PROMOTE_RUNNING;
                if (promote_add(p, e) < 0)
                        continue;
                if (running)
                        promote_resume(p, e, true, now, now_realtime);
        }
        return (int) n;
}

int kb_promote_write_file(const char *path, const json_t *doc) {
        /* 0600 whatever the umask or a stale temp file's mode: the state
         * and evidence files are the daemon's own, like quota snapshots. */
        return kb_json_write_file(path, doc, 0600, KB_WRITE_EXACT_MODE);
}

int kb_promote_read_file(const char *path, json_t **ret) {
        return kb_json_read_file(path, STATE_FILE_MAX, ret);
}

/* ---- baselines ---- */

static bool figure(const json_t *body, const char *k, double *ret) {
        json_t *v = json_object_get(body, k);
        if (!json_is_number(v))
                return false;
        double d = json_number_value(v);
        if (!(d >= 0 && d <= FIGURE_MAX))
                return false;
        *ret = d;
        return true;
}

int kb_baseline_from_json(const json_t *body, struct kb_baseline *ret, const char **ret_why) {
        static const char *const known[] = {
                "routes", "since", "until", "requests", "errors", "upstream_429", "error_ratio", "p50_ms", "p95_ms",
                "input_tokens_per_request", "output_tokens_per_request", "cost_microusd_per_request",
        };
        struct kb_baseline b = {};
        const char *k, *why = NULL;
        const json_t *v;
        double d;
        size_t i;

        if (!json_is_object(body)) {
                *ret_why = "expected a JSON object";
                return -EINVAL;
        }
        if (!kb_json_only_members(body, known, ELEMENTSOF(known))) {
                *ret_why = "unknown member (routes, since, until, requests, errors, upstream_429, "
                           "error_ratio, p50_ms, p95_ms, input_tokens_per_request, "
                           "output_tokens_per_request, cost_microusd_per_request)";
                return -EINVAL;
        }
        const json_t *routes = json_object_get(body, "routes"), *errors = json_object_get(body, "errors");
        if (!json_is_array(routes) || json_array_size(routes) == 0 || json_array_size(routes) > BASELINE_ROUTES_MAX)
                why = "routes: a list of 1 to 64 route names";
        json_array_foreach(routes, i, v)
                if (!why && (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 256))
                        why = "routes: a list of 1 to 64 route names";
        for (size_t n = 0; !why && n < 2; n++) {
                v = json_object_get(body, n ? "until" : "since");
                if (v && !json_is_null(v) && (!json_is_integer(v) || json_integer_value(v) < 0))
                        why = "since and until are realtime microseconds, or null";
        }
        d = 0;
        if (!why && (!figure(body, "requests", &d) || !json_is_integer(json_object_get(body, "requests")) || d < 1))
                why = "requests: the number of records, at least 1";
        b.requests = (uint64_t) d;
        if (!why && (!json_is_object(errors) || json_object_size(errors) > BASELINE_ERRORS_MAX))
                why = "errors: an object of outcome: count";
        json_object_foreach((json_t *) errors, k, v)
                if (!why && (!json_is_integer(v) || json_integer_value(v) < 0 || strlen(k) > 64))
                        why = "errors: an object of outcome: count";
        if (!why && json_object_get(body, "upstream_429") &&
            (!json_is_integer(json_object_get(body, "upstream_429")) || json_integer_value(json_object_get(body, "upstream_429")) < 0))
                why = "upstream_429: a count";
        if (!why && (!figure(body, "error_ratio", &b.error_ratio) || b.error_ratio > 1))
                why = "error_ratio: a number from 0 to 1";
        for (size_t n = 0; !why && n < 2; n++) {
                const char *name = n ? "p95_ms" : "p50_ms";
                v = json_object_get(body, name);
                if (json_is_null(v) || !v)
                        continue;
                if (!figure(body, name, &d) || !json_is_integer(v))
                        why = "p50_ms and p95_ms: milliseconds, or null";
                else {
                        b.has_latency = true;
                        *(n ? &b.p95_ms : &b.p50_ms) = (uint64_t) d;
                }
        }
        if (!why && (!figure(body, "input_tokens_per_request", &b.input_per_request) ||
                     !figure(body, "output_tokens_per_request", &b.output_per_request) ||
                     !figure(body, "cost_microusd_per_request", &b.cost_microusd_per_request)))
                why = "input_tokens_per_request, output_tokens_per_request and cost_microusd_per_request: numbers ≥ 0";
        if (why) {
                *ret_why = why;
                return -EINVAL;
        }
        b.doc = json_deep_copy(body);
        if (!b.doc)
                return -ENOMEM;
        *ret = b;
        return 0;
}
