/* SPDX-License-Identifier: MIT */
/* What a request may spend: reserve an estimate before forwarding (a
 * verdict says why not when any limit would be crossed: api.c answers),
 * meter a stream inline and cut it at the limit, settle to real usage at
 * the end, and tell the app its team's x-ratelimit-* numbers. The
 * arithmetic is quota.c's and, for fleet teams, fleet-quota.c's. */


#include "broker.h"
#include "metering.h"
#include "objects.h"
#include "fleet-quota.h"
#include "router.h"

/* Output reserved for a call that names no cap (max_tokens & co.): settle
 * releases what was not used. */
#define KB_DEFAULT_OUTPUT_RESERVE 4096

static int64_t usage_cost(const struct kb_request *r, const struct kb_usage *u) {
        return kb_usage_cost_microusd(u, r->family, r->price);
}

/* Against this host's counters. */
static bool admit_local(struct kb_request *r, uint64_t tokens, int64_t cost, uint64_t now,
                        struct kb_admit_verdict *v) {
        int q = kb_quota_reserve(r->broker->quota, r->team->name, now, tokens, cost, &r->reservation, &v->denial);

        if (q == -EDQUOT)
                v->refusal = KB_REFUSAL_QUOTA;
        else if (q < 0) {
                v->refusal = KB_REFUSAL_ERROR;
                v->error = q;
        }
        return q >= 0;
}

/* A fleet team while the quota store cannot answer: this host's share of
 * its limits (quota_store_offline = local), or nothing (deny). */
static bool admit_offline(struct kb_request *r, uint64_t tokens, int64_t cost, uint64_t now,
                          struct kb_admit_verdict *v) {
        if (r->config->agent.quota_store_offline_deny) {
                v->refusal = KB_REFUSAL_STORE_AWAY;
                return false;
        }
        return admit_local(r, tokens, cost, now, v);
}

static void on_fleet_verdict(void *userdata, const struct kb_fleet_verdict *fv) {
        struct kb_request *r = userdata;
        struct kb_reservation *res = r->reservation;
        struct kb_admit_verdict v = {};
        uint64_t now = kb_realtime_usec();

        if (fv->result != -ENOTCONN) {
                r->fleet_view = true;
                r->fleet_minute_requests = fv->minute_requests;
                r->fleet_minute_tokens = fv->minute_tokens;
                r->fleet_newest_tokens_k = fv->newest_tokens_k;
        }
        if (fv->result == 0) {
                r->admitted(r, &v);
                return;
        }
        /* Not admitted by the store: the unchecked hold here goes. */
        uint64_t tokens = kb_reservation_tokens(res);
        int64_t cost = kb_reservation_cost(res);
        kb_quota_withdraw(res);
        r->reservation = NULL;
        if (fv->result == -EDQUOT) {
                kb_fleet_hold_free(r->fleet_hold);
                r->fleet_hold = NULL;
                r->fleet_counted = false;
                v.refusal = KB_REFUSAL_QUOTA;
                v.denial = fv->denial;
                v.denial.first_in_window = kb_quota_first_denial(r->broker->quota, r->team->name, v.denial.limit,
                                                                 now);
        } else
                /* No answer in time: admitted here, as when the store is
                 * away (the hold stays, in case the store did count it). */
                (void) admit_offline(r, tokens, cost, now, &v);
        r->admitted(r, &v);
}

kb_admit kb_metering_admit(struct kb_request *r, const struct kb_body_info *info, kb_admitted_t next,
                           struct kb_admit_verdict *ret) {
        uint64_t now = kb_realtime_usec();
        const struct kb_team *team = r->team;

        *ret = (struct kb_admit_verdict) {};

        /* A team that denies unpriced calls never reaches a route without
         * a price for the model, fallbacks included: such candidates are
         * dropped from the plan here, once, and the rest go on as planned. */
        if (kb_team_denies_unpriced(team) && r->model_cfg) {
                const char *first = r->route->name;
                size_t n = 0;
                for (size_t i = 0; i < r->n_candidates; i++) {
                        const struct kb_target *t = r->candidates[i].target;
                        if (kb_price_find(t->route, t->upstream_model, NULL))
                                r->candidates[n++] = r->candidates[i];
                }
                r->n_candidates = n;
                if (n == 0) {
                        ret->refusal = KB_REFUSAL_UNPRICED;
                        ret->first_route = first;
                        return KB_ADMIT_REFUSED;
                }
                r->target = r->candidates[0].target;
                r->route = r->target->route;
        }
        r->price = r->target->upstream_model ? kb_price_find(r->route, r->target->upstream_model, NULL) : NULL;

        /* About four bytes of JSON per token: an over-estimate for prose,
         * released at settle. An upload's file parts are not text: not
         * counted. A call without a model (files, batches, objects) reserves
         * no tokens; what a batch or a video costs is settled when it is
         * seen completed. */
        uint64_t text_bytes = r->http->body.len - MIN(r->form_file_bytes, (uint64_t) r->http->body.len);
        r->est_input_tokens = r->model_cfg ? (text_bytes + 3) / 4 : 0;
        if (!r->model_cfg || r->endpoint == KB_ENDPOINT_EMBEDDINGS || r->endpoint == KB_ENDPOINT_COUNT_TOKENS ||
            r->endpoint == KB_ENDPOINT_MODERATIONS || r->endpoint == KB_ENDPOINT_AUDIO_SPEECH)
                r->est_output_tokens = 0;
        else
                r->est_output_tokens = info->max_output_tokens ?: KB_DEFAULT_OUTPUT_RESERVE;

        struct kb_usage est = { .input_tokens = r->est_input_tokens, .output_tokens = r->est_output_tokens,
                                .characters = r->characters };
        uint64_t tokens = kb_usage_quota_tokens(&est, r->family);
        int64_t cost = usage_cost(r, &est);
        /* A batch: what its input file asks must fit the team's limits now;
         * it is settled when the batch ends, not held until then. */
        if (r->batch_est_tokens) {
                struct kb_usage b = { .input_tokens = r->batch_est_tokens, .batch = true };
                tokens = kb_usage_quota_tokens(&b, r->family);
                cost = kb_usage_cost_microusd(&b, r->family, r->batch_price);
        }
        struct kb_fleet *fleet = r->broker->fleet;
        r->admitted_usec = now;

        /* A fleet team's usage goes to the store (settled) even without
         * limits, so that the fleet's view of it is whole; with limits its
         * admission asks the store. */
        r->fleet_counted = fleet && kb_quota_team_is_fleet(r->broker->quota, team->name);
        if (r->fleet_counted && kb_team_has_limits(team)) {
                if (!kb_fleet_ready(fleet))
                        return admit_offline(r, tokens, cost, now, ret) ? KB_ADMIT_NOW : KB_ADMIT_REFUSED;
                int q = kb_quota_reserve_unchecked(r->broker->quota, team->name, now, tokens, cost,
                                                   &r->reservation);
                if (q < 0) {
                        ret->refusal = KB_REFUSAL_ERROR;
                        ret->error = q;
                        return KB_ADMIT_REFUSED;
                }
                struct kb_fleet_ask ask = {
                        .team = team->name,
                        .rid = r->id,
                        .limits = { team->requests_per_minute, team->tokens_per_minute, team->tokens_per_day,
                                    (uint64_t) MAX(team->budget_microusd_per_day, (int64_t) 0),
                                    (uint64_t) MAX(team->budget_microusd_per_month, (int64_t) 0),
                                    team->max_concurrent },
                        .tokens = tokens,
                        .cost = (uint64_t) MAX(cost, (int64_t) 0),
                        .now_usec = now,
                };
                r->admitted = next;
                q = kb_fleet_reserve(fleet, &ask, on_fleet_verdict, r, &r->fleet_hold);
                if (q == 0)
                        return KB_ADMIT_LATER;
                kb_quota_withdraw(r->reservation);
                r->reservation = NULL;
                return admit_offline(r, tokens, cost, now, ret) ? KB_ADMIT_NOW : KB_ADMIT_REFUSED;
        }

        return admit_local(r, tokens, cost, now, ret) ? KB_ADMIT_NOW : KB_ADMIT_REFUSED;
}

/* The running usage of a stream: output as metered event by event until the
 * provider reports it; input as estimated until reported. */
static struct kb_usage running_usage(const struct kb_request *r, const struct kb_usage *u) {
        struct kb_usage cur = *u;
        cur.output_tokens = MAX(u->output_tokens, u->streamed_deltas);
        if (!u->seen)
                cur.input_tokens = r->est_input_tokens;
        return cur;
}

static int gate(void *userdata, const struct kb_usage *u) {
        struct kb_request *r = userdata;
        struct kb_usage cur = running_usage(r, u);
        uint64_t tokens = kb_usage_quota_tokens(&cur, r->family);
        int64_t cost = usage_cost(r, &cur);

        struct kb_quota_denial d = {};
        bool cut = kb_fleet_hold_exhausted(r->broker->fleet, r->fleet_hold, tokens, (uint64_t) MAX(cost, (int64_t) 0),
                                           &d);
        if (cut || tokens > kb_reservation_tokens(r->reservation) || cost > kb_reservation_cost(r->reservation)) {
                if (cut || kb_quota_grow(r->reservation, kb_realtime_usec(), tokens, cost, &d) == -EDQUOT) {
                        r->quota_cut = true;
                        r->quota_cut_type = kb_quota_limit_error_type(d.limit);
                        if (cut)
                                d.first_in_window = kb_quota_first_denial(r->broker->quota, r->team->name, d.limit,
                                                                          kb_realtime_usec());
                        if (d.first_in_window)
                                (void) kb_journal_quota(r->broker->journal, r->team->name,
                                                        kb_quota_limit_to_string(d.limit), d.used, d.max,
                                                        d.reset_usec);
                        return 1;
                }
        }
        r->delivered_deltas = u->streamed_deltas;
        return 0;
}

void kb_metering_attach(struct kb_request *r) {
        if (r->reservation && r->tap && r->sse)
                kb_usage_tap_set_gate(r->tap, gate, r);
}

/* A batch's tokens and a video's seconds are billed once, to the request
 * that first sees the object completed; later retrieves cost nothing. A
 * call without a model is priced by the model the object reports. */
static void bill_object_once(struct kb_request *r, struct kb_usage *u) {
        if (!u->batch && u->video_seconds == 0)
                return;
        const struct kb_object *o = kb_objects_find(r->broker->objects, r->object_id);
        if (o && !o->billed && kb_objects_set_billed(r->broker->objects, r->object_id) >= 0) {
                if (!r->price)
                        r->price = kb_price_find(r->route, NULL, u->upstream_model);
                return;
        }
        u->batch = false;
        u->video_seconds = 0;
        u->input_tokens = u->output_tokens = u->cached_tokens = u->cache_write_tokens = u->reasoning_tokens = 0;
        u->seen = false;
}

void kb_metering_settle(struct kb_request *r) {
        struct kb_usage billed = {};

        if (r->tap) {
                const struct kb_usage *u = kb_usage_tap_get(r->tap);
                bool answered = r->upstream_status >= 200 && r->upstream_status < 300;

                billed = *u;
                billed.characters = r->characters;
                bill_object_once(r, &billed);
                if (r->sse) {
                        billed.output_tokens =
                                r->quota_cut ? r->delivered_deltas : MAX(u->output_tokens, u->streamed_deltas);
                        /* A stream cut before the provider's usage arrived
                         * still consumed its prompt. */
                        if (!u->seen && answered)
                                billed.input_tokens = r->est_input_tokens;
                }
                r->billed = billed;
                r->billed_set = true;
                if (u->seen || answered)
                        r->cost_microusd = usage_cost(r, &billed);
        }
        if (r->reservation) {
                r->settled_usec = kb_realtime_usec();
                kb_quota_settle(r->reservation, r->settled_usec, kb_usage_quota_tokens(&billed, r->family),
                                r->cost_microusd);
                r->reservation = NULL;
                r->seq = ++r->broker->seq;
                if (r->fleet_counted)
                        kb_fleet_settle(r->broker->fleet, r->fleet_hold, r->team->name, r->id, r->seq,
                                        r->admitted_usec, r->settled_usec,
                                        kb_usage_quota_tokens(&billed, r->family),
                                        (uint64_t) MAX(r->cost_microusd, (int64_t) 0));
                r->fleet_hold = NULL;
        } else if (r->fleet_hold) {
                kb_fleet_hold_free(r->fleet_hold);
                r->fleet_hold = NULL;
        }
}

/* OpenAI's reset format: "1s", "6m0s", "20ms". */
static void format_reset(uint64_t usec, char *buf, size_t size) {
        if (usec < USEC_PER_SEC)
                snprintf(buf, size, "%" PRIu64 "ms", usec / USEC_PER_MSEC);
        else if (usec < 60 * USEC_PER_SEC)
                snprintf(buf, size, "%" PRIu64 "s", (usec + USEC_PER_SEC - 1) / USEC_PER_SEC);
        else {
                uint64_t s = (usec + USEC_PER_SEC - 1) / USEC_PER_SEC;
                snprintf(buf, size, "%" PRIu64 "m%" PRIu64 "s", s / 60, s % 60);
        }
}

size_t kb_metering_headers(struct kb_request *r, struct kb_http_header *h, size_t n, size_t cap, char *scratch,
                           size_t scratch_size) {
        static const struct {
                kb_quota_limit limit;
                const char *names[3];
        } windows[] = {
                { KB_QUOTA_REQUESTS_PER_MINUTE,
                  { "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests" } },
                { KB_QUOTA_TOKENS_PER_MINUTE,
                  { "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens" } },
        };
        struct kb_quota_view v;
        uint64_t now = kb_realtime_usec();
        size_t used = 0;

        if (!r->team || kb_quota_view(r->broker->quota, r->team->name, now, &v) < 0)
                return n;
        if (r->fleet_view) {
                /* the fleet's windows, as the store saw them at admission */
                struct kb_quota_window *w = &v.windows[KB_QUOTA_REQUESTS_PER_MINUTE];
                w->used = r->fleet_minute_requests;
                w->reserved = 0;
                w->remaining = w->limit ? (w->limit > w->used ? w->limit - w->used : 0) : UINT64_MAX;
                w->reset_usec = kb_quota_bucket_key(r->admitted_usec) * USEC_PER_SEC + 60 * USEC_PER_SEC;
                w = &v.windows[KB_QUOTA_TOKENS_PER_MINUTE];
                w->used = r->fleet_minute_tokens;
                w->reserved = 0;
                w->remaining = w->limit ? (w->limit > w->used ? w->limit - w->used : 0) : UINT64_MAX;
                w->reset_usec = r->fleet_newest_tokens_k ? r->fleet_newest_tokens_k * USEC_PER_SEC + 60 * USEC_PER_SEC : 0;
        }
        for (size_t i = 0; i < ELEMENTSOF(windows); i++) {
                const struct kb_quota_window *w = &v.windows[windows[i].limit];
                char reset[24];
                if (w->limit == 0 || n + 3 > cap)
                        continue;
                format_reset(w->reset_usec > now ? w->reset_usec - now : 0, reset, sizeof(reset));
                int k = snprintf(scratch + used, scratch_size - used, "%" PRIu64 "%c%" PRIu64 "%c%s%c", w->limit, 0,
                                 w->remaining, 0, reset, 0);
                if (k < 0 || (size_t) k >= scratch_size - used)
                        break;
                const char *p = scratch + used;
                for (size_t j = 0; j < 3; j++) {
                        h[n++] = (struct kb_http_header) { windows[i].names[j], p };
                        p += strlen(p) + 1;
                }
                used += (size_t) k + 1;
        }
        return n;
}
