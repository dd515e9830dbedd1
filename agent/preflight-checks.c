/* SPDX-License-Identifier: MIT */
/* The ten checks of a preflight, each judged from the calls that served it
 * (preflight-judge.c says what one answer means) and from the config: a
 * result with a detail, its sub-results (parts) and its own evidence. */

#include <inttypes.h>

#include "preflight-internal.h"

#define CHECK(c) KB_CHECK_BIT(KB_CHECK_##c)
#define WHY_MAX 512

const struct kb_usage *pf_good_usage(const struct pf_call *c) {
        if (!c || !c->ran || c->error != 0 || c->status < 200 || c->status > 299 || !c->tap)
                return NULL;
        return kb_usage_tap_get(c->tap);
}

bool pf_call_failure(const struct kb_preflight *p, const struct pf_call *c, char *why, size_t size) {
        if (!c) {
                snprintf(why, size, "not planned");
                return true;
        }
        if (!c->ran) {
                if (p->timed_out)
                        snprintf(why, size, "not run: the preflight's %" PRIu64 " s limit was reached",
                                 KB_PREFLIGHT_TOTAL_USEC / USEC_PER_SEC);
                else
                        snprintf(why, size, "not run");
                return true;
        }
        if (c->error == 0)
                return false;
        const char *what = c->message ?: strerror(-c->error);
        if (c->error == -ETIMEDOUT && !c->answered)
                snprintf(why, size, "no answer within %" PRIu64 " ms: %s", c->latency_usec / USEC_PER_MSEC, what);
        else if (!c->answered)
                snprintf(why, size, "no answer: %s", what);
        else
                snprintf(why, size, "HTTP %ld, then the answer was cut: %s", c->status, what);
        return true;
}

/* ---- parts ---- */

static int add_part(json_t *parts, const char *name, bool ok, const char *detail, const struct pf_call *c) {
        json_t *o = json_pack("{s:s, s:b, s:s}", "name", name, "ok", ok, "detail", strempty(detail));
        if (o && c && c->ran &&
            (json_object_set_new(o, "latency_ms", json_integer((json_int_t) (c->latency_usec / USEC_PER_MSEC))) < 0 ||
             json_object_set_new(o, "call", json_string(c->name)) < 0)) {
                json_decref(o);
                o = NULL;
        }
        return o && json_array_append_new(parts, o) >= 0 ? 0 : -ENOMEM;
}

/* A judge's verdict (ok >= 0, or -ENOMEM) and detail as a part. */
static int add_judged(json_t *parts, const char *name, int ok, char *detail, const struct pf_call *c) {
        _cleanup_free_ char *d = detail;
        if (ok < 0 || !d)
                return -ENOMEM;
        return add_part(parts, name, ok > 0, d, c);
}

/* The part of a call that gave no answer; 1 when added, 0 when it has one. */
static int add_if_failed(const struct kb_preflight *p, json_t *parts, const char *name, const struct pf_call *c) {
        char why[WHY_MAX];
        if (!pf_call_failure(p, c, why, sizeof(why)))
                return 0;
        return add_part(parts, name, false, why, c) < 0 ? -ENOMEM : 1;
}

/* The result of a check from its parts: passed when every part is ok; the
 * detail names every part (passed) or the failing ones (failed), after a
 * lead when given. */
static int set_from_parts(struct kb_preflight *p, kb_preflight_check check, json_t *parts, const char *lead) {
        _cleanup_(kb_buf_free) struct kb_buf b = {};
        struct pf_result *res = &p->results[check];
        bool all = true;
        size_t i;
        json_t *e;
        int r = 0;

        json_array_foreach(parts, i, e)
                all = all && json_is_true(json_object_get(e, "ok"));
        if (lead)
                r = kb_buf_appendf(&b, "%s", lead);
        json_array_foreach(parts, i, e) {
                if (r < 0)
                        break;
                if (!all && json_is_true(json_object_get(e, "ok")))
                        continue;
                r = kb_buf_appendf(&b, "%s%s: %s", b.len ? "; " : "", json_string_value(json_object_get(e, "name")),
                                   json_string_value(json_object_get(e, "detail")));
        }
        if (r < 0 || kb_buf_append(&b, "", 0) < 0) {
                json_decref(parts);
                return -ENOMEM;
        }
        kb_preflight_text_clean(b.data);
        res->state = all ? PF_PASSED : PF_FAILED;
        res->detail = TAKE_PTR(b.data);
        res->parts = parts;
        return 0;
}

static int set_detail(struct kb_preflight *p, kb_preflight_check check, bool ok, const char *fmt, ...) _printf_(4, 5);
static int set_detail(struct kb_preflight *p, kb_preflight_check check, bool ok, const char *fmt, ...) {
        struct pf_result *res = &p->results[check];
        va_list ap;
        va_start(ap, fmt);
        int r = vasprintf(&res->detail, fmt, ap);
        va_end(ap);
        if (r < 0) {
                res->detail = NULL;
                return -ENOMEM;
        }
        kb_preflight_text_clean(res->detail);
        res->state = ok ? PF_PASSED : PF_FAILED;
        return 0;
}

/* ---- model ---- */

/* The key was accepted on a route's GET /models (not 401/403). */
static int judge_key(const struct kb_preflight *p, const struct pf_call *c, char **ret_detail) {
        char why[WHY_MAX];
        int ok = false;

        if (c->key_missing)
                snprintf(why, sizeof(why), "key '%s' is not available on this host (keybrokerctl key set %s)",
                         c->route->key, c->route->key);
        else if (!c->answered)
                pf_call_failure(p, c, why, sizeof(why));
        else if (c->status == 401 || c->status == 403) {
                _cleanup_(json_decrefp) json_t *j = json_loadb(c->in.data ?: "", c->in.len, 0, NULL);
                const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
                snprintf(why, sizeof(why), "HTTP %ld: refused%s%.160s", c->status, m ? ": " : "", strempty(m));
        } else {
                ok = true;
                if (c->key)
                        snprintf(why, sizeof(why), "HTTP %ld with %s@%u", c->status, kb_key_name(c->key),
                                 kb_key_version(c->key));
                else
                        snprintf(why, sizeof(why), "HTTP %ld (the route sends no key)", c->status);
        }
        *ret_detail = strdup(why);
        kb_preflight_text_clean(*ret_detail);
        return *ret_detail ? ok : -ENOMEM;
}

/* The model a 2xx answer says it is (the dated snapshot behind an alias). */
static const char *reported_model(const struct pf_call *c) {
        const struct kb_usage *u = pf_good_usage(c);
        return u ? u->upstream_model : NULL;
}

static int check_model(struct kb_preflight *p) {
        struct pf_call *models = pf_find(p, PF_MODELS, NULL, NULL), *main_call = pf_find(p, PF_MAIN, NULL, NULL);
        json_t *parts = json_array();
        char *d = NULL;
        int r;

        if (!parts)
                return -ENOMEM;
        r = add_if_failed(p, parts, "credentials", models);
        if (r == 0) {
                int ok = judge_key(p, models, &d);
                r = add_judged(parts, "credentials", ok, d, models);
                if (r >= 0) {
                        ok = kb_preflight_judge_listed(models->in.data, models->in.len, models->status, p->model, &d);
                        r = add_judged(parts, "listed", ok, d, models);
                }
        }
        const char *reported = reported_model(main_call);
        if (r >= 0 && add_if_failed(p, parts, "answer", main_call) == 0) {
                int ok = kb_preflight_judge_answer(main_call->endpoint, main_call->in.data, main_call->in.len,
                                                   main_call->status, &d);
                if (ok > 0 && !reported) {
                        free(d);
                        ok = false;
                        d = strdup("the answer names no model");
                }
                r = add_judged(parts, "answer", ok, d, main_call);
        }
        _cleanup_free_ char *lead = NULL;
        json_t *checked = pf_iso_json(main_call && main_call->ran ? p->started_realtime : kb_realtime_usec());
        if (r >= 0 && asprintf(&lead, "%s reported as %s, checked %s", p->model, reported ?: "(no answer)",
                               strempty(json_string_value(checked))) < 0)
                lead = NULL;
        p->results[KB_CHECK_MODEL].extra = json_pack("{s:s, s:s?, s:o}", "asked", p->model, "reported", reported,
                                                      "checked_at", checked);
        if (r < 0 || !lead) {
                json_decref(parts);
                return -ENOMEM;
        }
        return set_from_parts(p, KB_CHECK_MODEL, parts, lead);
}

/* ---- endpoint ---- */

static int check_endpoint(struct kb_preflight *p) {
        static const pf_kind kinds[] = { PF_MAIN, PF_RESPONSES, PF_EMBEDDINGS };
        json_t *parts = json_array();
        int r = parts ? 0 : -ENOMEM;

        for (size_t i = 0; r >= 0 && i < ELEMENTSOF(kinds); i++) {
                struct pf_call *c = pf_find(p, kinds[i], NULL, NULL);
                if (!c)
                        continue;
                const char *name = kb_endpoint_to_string(c->endpoint);
                r = add_if_failed(p, parts, name, c);
                if (r == 0) {
                        char *d = NULL;
                        int ok = kb_preflight_judge_answer(c->endpoint, c->in.data, c->in.len, c->status, &d);
                        r = add_judged(parts, name, ok, d, c);
                }
        }
        if (r < 0) {
                json_decref(parts);
                return r;
        }
        return set_from_parts(p, KB_CHECK_ENDPOINT, parts, NULL);
}

/* ---- features ---- */

static int judge_feature(struct kb_preflight *p, unsigned bit, json_t *parts) {
        static const pf_kind kinds[] = { PF_TOOLS, PF_STRUCTURED, PF_VISION, PF_REASONING, PF_STREAM };
        const char *name = kb_feature_to_string(bit);
        struct pf_call *c = bit < ELEMENTSOF(kinds) ? pf_find(p, kinds[bit], NULL, NULL) : NULL;
        kb_family f = p->route->family;
        char *d = NULL;
        int ok, r;

        if (!c)
                return add_part(parts, name, false, "no probe for this feature", NULL);
        r = add_if_failed(p, parts, name, c);
        if (r != 0)
                return r;
        const char *body = c->in.data;
        size_t len = c->in.len;
        switch (kinds[bit]) {
        case PF_TOOLS:
                ok = kb_preflight_judge_tool_call(f, body, len, c->status, &d);
                break;
        case PF_STRUCTURED: {
                _cleanup_(json_decrefp) json_t *schema = pf_structured_schema();
                if (!schema)
                        return -ENOMEM;
                ok = kb_preflight_judge_structured(f, schema, body, len, c->status, &d);
                break;
        }
        case PF_VISION:
                ok = kb_preflight_judge_vision(f, body, len, c->status, &d);
                break;
        case PF_REASONING:
                ok = kb_preflight_judge_reasoning(f, pf_good_usage(c), body, len, c->status, &d);
                break;
        default:
                ok = kb_preflight_judge_stream(f, c->status, c->content_type, c->tap ? kb_usage_tap_get(c->tap) : NULL,
                                               &d);
        }
        return add_judged(parts, name, ok, d, c);
}

static int check_features(struct kb_preflight *p) {
        json_t *declared = json_array();
        if (!declared)
                return -ENOMEM;
        for (unsigned bit = 0; kb_feature_to_string(bit); bit++)
                if ((p->features & (1u << bit)) && json_array_append_new(declared, json_string(kb_feature_to_string(bit))) < 0) {
                        json_decref(declared);
                        return -ENOMEM;
                }
        p->results[KB_CHECK_FEATURES].extra = json_pack("{s:o}", "declared", declared);
        if (p->features == 0)
                return set_detail(p, KB_CHECK_FEATURES, true, "no features declared");

        json_t *parts = json_array();
        int r = parts ? 0 : -ENOMEM;
        for (unsigned bit = 0; r >= 0 && kb_feature_to_string(bit); bit++)
                if (p->features & (1u << bit))
                        r = judge_feature(p, bit, parts);
        if (r < 0) {
                json_decref(parts);
                return r;
        }
        return set_from_parts(p, KB_CHECK_FEATURES, parts, NULL);
}

/* ---- usage ---- */

static json_t *usage_json(const struct kb_usage *u) {
        if (!u)
                return json_null();
        return json_pack("{s:I, s:I, s:I, s:I}", "input_tokens", (json_int_t) u->input_tokens, "output_tokens",
                         (json_int_t) u->output_tokens, "cached_tokens", (json_int_t) u->cached_tokens,
                         "reasoning_tokens", (json_int_t) u->reasoning_tokens);
}

static int check_usage(struct kb_preflight *p) {
        struct pf_call *plain = pf_find(p, PF_MAIN, NULL, NULL), *stream = pf_find(p, PF_STREAM, NULL, NULL);
        const struct kb_usage *pu = pf_good_usage(plain), *su = pf_good_usage(stream);
        char *d = NULL;

        int ok = kb_preflight_judge_usage(p->route->family, pu, plain ? plain->in.data : NULL, plain ? plain->in.len : 0,
                                          su, stream ? stream->in.data : NULL, stream ? stream->in.len : 0, &d);
        if (ok < 0 || !d)
                return -ENOMEM;
        p->results[KB_CHECK_USAGE].detail = d;
        p->results[KB_CHECK_USAGE].state = ok ? PF_PASSED : PF_FAILED;
        p->results[KB_CHECK_USAGE].extra = json_pack("{s:o, s:o}", "non_streaming", usage_json(pu), "streaming",
                                                     usage_json(su));
        return 0;
}

/* ---- pricing ---- */

/* micro-USD as "0.000123", or a price (micro-USD per 1M) as "0.15". */
static void usd(int64_t micro, char *buf, size_t size) {
        snprintf(buf, size, "%" PRId64 ".%06" PRId64, micro / 1000000, micro % 1000000);
}

static void usd_short(int64_t micro, char *buf, size_t size) {
        usd(micro, buf, size);
        size_t n = strlen(buf);
        while (n > 0 && buf[n - 1] == '0')
                buf[--n] = 0;
        if (n > 0 && buf[n - 1] == '.')
                buf[--n] = 0;
}

static int price_part(struct kb_preflight *p, const struct pf_call *c, json_t *parts) {
        const char *ep = kb_endpoint_to_string(c->endpoint);
        const struct kb_price *price = kb_price_find(p->route, c->model, reported_model(c));
        bool tokens_out = c->endpoint != KB_ENDPOINT_EMBEDDINGS;
        _cleanup_free_ char *name = NULL, *line = NULL;
        char why[WHY_MAX], in[32], out[32];

        if (asprintf(&name, "%s %s", ep, c->model) < 0) {
                name = NULL;
                return -ENOMEM;
        }
        if (price && price->input >= 0 && (!tokens_out || price->output >= 0)) {
                usd_short(price->input, in, sizeof(in));
                usd_short(MAX(price->output, 0), out, sizeof(out));
                if (tokens_out)
                        snprintf(why, sizeof(why), "%s: input %s, output %s USD per 1M tokens (line %u)",
                                 price->model, in, out, price->line);
                else
                        snprintf(why, sizeof(why), "%s: input %s USD per 1M tokens (line %u)", price->model, in,
                                 price->line);
                return add_part(parts, name, true, why, NULL);
        }
        line = kb_preflight_price_line(c->endpoint, c->model);
        if (!line)
                return -ENOMEM;
        if (price)
                snprintf(why, sizeof(why), "%s bills tokens but the price of %s has no token prices: make it "
                         "%s (USD per 1M tokens) in [route:%s]", ep, c->model, line, p->route->name);
        else
                snprintf(why, sizeof(why), "no price for %s: add to [route:%s]: %s (USD per 1M tokens)", c->model,
                         p->route->name, line);
        return add_part(parts, name, false, why, NULL);
}

static int check_pricing(struct kb_preflight *p) {
        static const pf_kind billed[] = { PF_MAIN, PF_RESPONSES, PF_EMBEDDINGS };
        json_t *parts = json_array(), *costs = json_array();
        int64_t total = 0;
        unsigned n = 0;
        int r = parts && costs ? 0 : -ENOMEM;

        for (size_t i = 0; r >= 0 && i < ELEMENTSOF(billed); i++) {
                const struct pf_call *c = pf_find(p, billed[i], NULL, NULL);
                if (c)
                        r = price_part(p, c, parts);
        }
        for (size_t i = 0; r >= 0 && i < p->n_calls; i++) {
                const struct pf_call *c = &p->calls[i];
                const struct kb_usage *u = pf_good_usage(c);
                if (c->route != p->route || !u || c->kind == PF_SMOKE)
                        continue;
                const struct kb_price *price = kb_price_find(p->route, c->model, u->upstream_model);
                int64_t cost = kb_usage_cost_microusd(u, p->route->family, price);
                total = cost > INT64_MAX - total ? INT64_MAX : total + cost;
                n++;
                if (json_array_append_new(costs, json_pack("{s:s, s:s, s:b, s:I}", "call", c->name, "model",
                                                           strempty(c->model), "priced", price != NULL,
                                                           "cost_microusd", (json_int_t) cost)) < 0)
                        r = -ENOMEM;
        }
        char total_usd[48];
        usd(total, total_usd, sizeof(total_usd));
        p->results[KB_CHECK_PRICING].extra = json_pack("{s:o, s:I, s:s}", "costs", costs ?: json_null(),
                                                       "total_microusd", (json_int_t) total, "total_usd", total_usd);
        costs = NULL;
        _cleanup_free_ char *lead = NULL;
        if (r >= 0 && asprintf(&lead, "the %u probe calls cost %" PRId64 " micro-USD ($%s)", n, total, total_usd) < 0)
                lead = NULL;
        if (r < 0 || !lead) {
                json_decref(parts);
                return -ENOMEM;
        }
        return set_from_parts(p, KB_CHECK_PRICING, parts, lead);
}

/* ---- status ---- */

static int check_status(struct kb_preflight *p) {
        const struct kb_route *rt = p->route;
        struct pf_call *c = pf_find(p, PF_STATUS, NULL, NULL);
        _cleanup_free_ char *indicator = NULL, *description = NULL;
        char why[WHY_MAX];
        char *d = NULL;

        if (!rt->status_url)
                return set_detail(p, KB_CHECK_STATUS, false,
                                  "no status_url: add to [route:%s]: status_url = %s (the provider's Statuspage JSON)",
                                  rt->name,
                                  rt->family == KB_FAMILY_ANTHROPIC ? "https://status.anthropic.com/api/v2/status.json"
                                                                    : "https://status.openai.com/api/v2/status.json");
        if (pf_call_failure(p, c, why, sizeof(why)))
                return set_detail(p, KB_CHECK_STATUS, false, "%s: %s", rt->status_url, why);
        int ok = kb_preflight_judge_statuspage(c->in.data, c->in.len, c->status, rt->status_ok_minor, &indicator,
                                               &description, &d);
        if (ok < 0)
                return ok;
        p->results[KB_CHECK_STATUS].extra = json_pack("{s:s, s:s?, s:s?, s:s}", "url", rt->status_url, "indicator",
                                                      indicator, "description", description, "status_ok",
                                                      rt->status_ok_minor ? "minor" : "none");
        p->results[KB_CHECK_STATUS].detail = d;
        p->results[KB_CHECK_STATUS].state = ok ? PF_PASSED : PF_FAILED;
        return 0;
}

/* ---- failures ---- */

static int check_failures(struct kb_preflight *p) {
        kb_family f = p->route->family;
        json_t *parts = json_array();
        char *d = NULL;
        int ok, r = parts ? 0 : -ENOMEM;

        struct pf_call *c = pf_find(p, PF_WRONG_KEY, NULL, NULL);
        if (r >= 0 && (r = add_if_failed(p, parts, "wrong_key", c)) == 0) {
                ok = kb_preflight_judge_wrong_key(f, c->in.data, c->in.len, c->status, &d);
                r = add_judged(parts, "wrong_key", ok, d, c);
        }
        c = pf_find(p, PF_BOGUS, NULL, NULL);
        if (r >= 0 && (r = add_if_failed(p, parts, "bogus_model", c)) == 0) {
                ok = kb_preflight_judge_bogus(f, c->in.data, c->in.len, c->status, &d);
                r = add_judged(parts, "bogus_model", ok, d, c);
        }
        c = pf_find(p, PF_TIMEOUT, NULL, NULL);
        if (r >= 0) {
                char why[WHY_MAX];
                /* its failure is the point: only a call never made is one */
                if (!c || !c->ran) {
                        pf_call_failure(p, c, why, sizeof(why));
                        r = add_part(parts, "timeout", false, why, c);
                } else {
                        ok = kb_preflight_judge_timeout(c->error, c->answered ? c->status : 0,
                                                        KB_PREFLIGHT_TINY_TIMEOUT_USEC, c->latency_usec, &d);
                        r = add_judged(parts, "timeout", ok, d, c);
                }
        }
        if (r < 0) {
                json_decref(parts);
                return -ENOMEM;
        }
        return set_from_parts(p, KB_CHECK_FAILURES, parts, NULL);
}

/* ---- fallback and rollback ---- */

/* A small call to (route, model): 2xx and well-formed. */
static int smoke_part(struct kb_preflight *p, const struct pf_call *c, const char *prefix, json_t *parts) {
        _cleanup_free_ char *name = NULL;
        char *d = NULL;

        if (asprintf(&name, "%s%s/%s", prefix, c->route->name, c->model) < 0) {
                name = NULL;
                return -ENOMEM;
        }
        int r = add_if_failed(p, parts, name, c);
        if (r != 0)
                return r;
        int ok = kb_preflight_judge_answer(c->endpoint, c->in.data, c->in.len, c->status, &d);
        return add_judged(parts, name, ok, d, c);
}

static int check_fallback(struct kb_preflight *p) {
        json_t *parts = json_array();
        int r = parts ? 0 : -ENOMEM;

        for (size_t i = 0; r >= 0 && i < p->n_calls; i++) {
                const struct pf_call *c = &p->calls[i];
                if (!(c->checks & CHECK(FALLBACK)) || c->kind == PF_FALLBACK_MODELS)
                        continue;
                /* the fallback route's key first, then its call */
                const struct pf_call *m = pf_find(p, PF_FALLBACK_MODELS, c->route, NULL);
                _cleanup_free_ char *name = NULL;
                char *d = NULL;
                if (asprintf(&name, "%s key", c->route->name) < 0) {
                        name = NULL;
                        r = -ENOMEM;
                        break;
                }
                if (m && (r = add_if_failed(p, parts, name, m)) == 0) {
                        int ok = judge_key(p, m, &d);
                        r = add_judged(parts, name, ok, d, m);
                }
                if (r >= 0)
                        r = smoke_part(p, c, "", parts);
        }
        if (r < 0) {
                json_decref(parts);
                return -ENOMEM;
        }
        if (json_array_size(parts) == 0) {
                json_decref(parts);
                return set_detail(p, KB_CHECK_FALLBACK, true, "no fallback targets in the models using route %s",
                                  p->route->name);
        }
        return set_from_parts(p, KB_CHECK_FALLBACK, parts, NULL);
}

static int check_rollback(struct kb_preflight *p) {
        json_t *parts = json_array(), *commands = json_array(), *splits = json_array();
        int r = parts && commands && splits ? 0 : -ENOMEM;

        for (size_t i = 0; r >= 0 && i < p->n_rollback; i++) {
                const struct pf_rollback *rb = &p->rollback[i];
                json_t *w = json_object();
                for (size_t t = 0; w && t < rb->model->n_targets; t++) {
                        const struct kb_target *tg = &rb->model->targets[t];
                        _cleanup_free_ char *k = NULL;
                        if (asprintf(&k, "%s/%s", tg->route->name, tg->upstream_model) < 0 ||
                            json_object_set_new(w, k, json_integer(rb->weights[t])) < 0) {
                                json_decref(w);
                                w = NULL;
                        }
                }
                if (!w || json_array_append_new(commands, json_string(rb->command)) < 0 ||
                    json_array_append_new(splits, json_pack("{s:s, s:o, s:s}", "model", rb->model->name, "weights", w,
                                                            "command", rb->command)) < 0)
                        r = -ENOMEM;
        }
        for (size_t i = 0; r >= 0 && i < p->n_calls; i++)
                if (p->calls[i].checks & CHECK(ROLLBACK))
                        r = smoke_part(p, &p->calls[i], "serving ", parts);
        p->results[KB_CHECK_ROLLBACK].extra = json_pack("{s:o, s:o}", "commands", commands ?: json_null(), "splits",
                                                        splits ?: json_null());
        if (r < 0) {
                json_decref(parts);
                return -ENOMEM;
        }
        if (p->n_rollback == 0) {
                json_decref(parts);
                return set_detail(p, KB_CHECK_ROLLBACK, true,
                                  "no [model:*] uses route %s: no split to go back to", p->route->name);
        }
        _cleanup_(kb_buf_free) struct kb_buf b = {};
        for (size_t i = 0; i < p->n_rollback; i++)
                if (kb_buf_appendf(&b, "%s%s", i ? "; " : "to go back: ", p->rollback[i].command) < 0) {
                        json_decref(parts);
                        return -ENOMEM;
                }
        return set_from_parts(p, KB_CHECK_ROLLBACK, parts, b.data);
}

static int check_owner(struct kb_preflight *p) {
        json_t *parts = NULL;
        char *d = NULL;
        int ok = kb_preflight_judge_owner(p->config, p->route, &parts, &d);
        if (ok < 0)
                return ok;
        p->results[KB_CHECK_OWNER].state = ok ? PF_PASSED : PF_FAILED;
        p->results[KB_CHECK_OWNER].detail = d;
        p->results[KB_CHECK_OWNER].parts = parts;
        return 0;
}

/* ---- owner ---- */

static bool team_uses(const struct kb_config *c, const struct kb_team *t, const struct kb_route *route) {
        for (size_t i = 0; i < c->n_models; i++) {
                const struct kb_model *m = &c->models[i];
                bool uses = false;
                for (size_t k = 0; k < m->n_targets; k++)
                        uses |= m->targets[k].route == route;
                for (size_t k = 0; k < m->n_fallbacks; k++)
                        uses |= m->fallbacks[k].route == route;
                if (uses && kb_team_allows_model(t, m->name))
                        return true;
        }
        return false;
}

static int owner_part(json_t *parts, struct kb_buf *missing, const char *name, const char *owner, const char *line) {
        if (owner)
                return add_part(parts, name, true, owner, NULL);
        if (kb_buf_appendf(missing, "%s%s", missing->len ? "; " : "", line) < 0)
                return -ENOMEM;
        return add_part(parts, name, false, line, NULL);
}

int kb_preflight_judge_owner(const struct kb_config *c, const struct kb_route *route, json_t **ret_parts,
                             char **ret_detail) {
        _cleanup_(kb_buf_free) struct kb_buf missing = {}, found = {};
        _cleanup_(json_decrefp) json_t *parts = json_array();
        _cleanup_free_ char *line = NULL;
        int r = parts ? 0 : -ENOMEM;

        if (r >= 0 && asprintf(&line, "add to [route:%s]: owner = TEXT", route->name) < 0)
                line = NULL;
        r = line ? owner_part(parts, &missing, "route", route->owner, line) : -ENOMEM;
        if (r >= 0 && route->owner)
                r = kb_buf_appendf(&found, "route %s", route->owner);
        if (r >= 0 && route->key) {
                free(line);
                if (asprintf(&line, "add to [route:%s]: key_owner = TEXT (who answers for key %s)", route->name,
                             route->key) < 0)
                        line = NULL;
                r = line ? owner_part(parts, &missing, "key", route->key_owner, line) : -ENOMEM;
                if (r >= 0 && route->key_owner)
                        r = kb_buf_appendf(&found, "%skey %s", found.len ? ", " : "", route->key_owner);
        }
        for (size_t i = 0; r >= 0 && i < c->n_teams; i++) {
                const struct kb_team *t = &c->teams[i];
                _cleanup_free_ char *name = NULL;
                if (!team_uses(c, t, route))
                        continue;
                free(line);
                if (asprintf(&line, "add to [team:%s]: owner = TEXT", t->name) < 0 ||
                    asprintf(&name, "team %s", t->name) < 0) {
                        r = -ENOMEM;
                        break;
                }
                r = owner_part(parts, &missing, name, t->owner, line);
                if (r >= 0 && t->owner)
                        r = kb_buf_appendf(&found, "%steam %s %s", found.len ? ", " : "", t->name, t->owner);
        }
        if (r >= 0)
                r = kb_buf_append(missing.len ? &missing : &found, "", 0);
        if (r < 0)
                return -ENOMEM;
        char *d = strdup(missing.len ? missing.data : found.data);
        if (!d)
                return -ENOMEM;
        kb_preflight_text_clean(d);
        *ret_detail = d;
        *ret_parts = TAKE_PTR(parts);
        return missing.len == 0;
}

char *kb_preflight_price_line(kb_endpoint ep, const char *model) {
        char *s = NULL;
        if (asprintf(&s, ep == KB_ENDPOINT_EMBEDDINGS ? "price = %s input=USD" : "price = %s input=USD output=USD",
                     strempty(model)) < 0)
                return NULL;
        return s;
}

int pf_judge_all(struct kb_preflight *p) {
        static int (*const checks[_KB_CHECK_MAX])(struct kb_preflight *p) = {
                [KB_CHECK_MODEL] = check_model,       [KB_CHECK_ENDPOINT] = check_endpoint,
                [KB_CHECK_FEATURES] = check_features, [KB_CHECK_USAGE] = check_usage,
                [KB_CHECK_PRICING] = check_pricing,   [KB_CHECK_STATUS] = check_status,
                [KB_CHECK_FAILURES] = check_failures, [KB_CHECK_FALLBACK] = check_fallback,
                [KB_CHECK_OWNER] = check_owner,       [KB_CHECK_ROLLBACK] = check_rollback,
        };

        for (kb_preflight_check i = 0; i < _KB_CHECK_MAX; i++) {
                struct pf_result *res = &p->results[i];
                if (!(p->checks & KB_CHECK_BIT(i))) {
                        res->state = PF_SKIPPED;
                        if (!(res->detail = strdup("skipped")))
                                return -ENOMEM;
                        continue;
                }
                int r = checks[i](p);
                if (r < 0)
                        return r;
                uint64_t lat = 0;
                for (size_t k = 0; k < p->n_calls; k++)
                        if (p->calls[k].ran && (p->calls[k].checks & KB_CHECK_BIT(i)))
                                lat += p->calls[k].latency_usec;
                res->latency_ms = lat / USEC_PER_MSEC;
        }
        return 0;
}
