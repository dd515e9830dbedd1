/* SPDX-License-Identifier: MIT */
/* The admin API's GET /teams: each team's members, models and limits, and
 * its usage now: the fleet's (from the quota store) with this host's share,
 * or this host's. The counts are quota.c's and fleet-quota.c's. */

#include <inttypes.h>
#include <jansson.h>

#include "admin.h"
#include "broker.h"
#include "fleet-quota.h"

/* 0 means "no limit" in the config; null says so in JSON. */
static json_t *limit_json(uint64_t v) {
        return v == 0 ? json_null() : json_integer((json_int_t) MIN(v, (uint64_t) INT64_MAX));
}

static json_t *usd_json(int64_t microusd) {
        char buf[64];

        if (microusd <= 0)
                return json_null();
        snprintf(buf, sizeof(buf), "%" PRId64 ".%06" PRId64, microusd / 1000000, microusd % 1000000);
        return json_string(buf);
}

static json_t *team_json(const struct kb_team *t) {
        json_t *users = json_array(), *groups = json_array(), *units = json_array(), *models = json_array();

        for (size_t i = 0; users && i < t->n_uids; i++)
                json_array_append_new(users, json_integer(t->uids[i]));
        for (size_t i = 0; groups && i < t->n_gids; i++)
                json_array_append_new(groups, json_integer(t->gids[i]));
        for (size_t i = 0; units && i < t->n_units; i++)
                json_array_append_new(units, json_string(t->units[i]));
        if (models && t->models_all)
                json_array_append_new(models, json_string("*"));
        for (size_t i = 0; models && !t->models_all && i < t->n_models; i++)
                json_array_append_new(models, json_string(t->models[i]));

        return json_pack("{s:s, s:o, s:o, s:o, s:o, s:{s:o, s:o, s:o, s:o, s:o, s:o}, s:s, s:o}",
                         "name", t->name, "users", users, "groups", groups, "units", units, "models", models,
                         "limits",
                         "requests_per_minute", limit_json(t->requests_per_minute),
                         "tokens_per_minute", limit_json(t->tokens_per_minute),
                         "tokens_per_day", limit_json(t->tokens_per_day),
                         "budget_usd_per_day", usd_json(t->budget_microusd_per_day),
                         "budget_usd_per_month", usd_json(t->budget_microusd_per_month),
                         "max_concurrent", limit_json(t->max_concurrent),
                         "quota_scope", t->quota_scope == KB_QUOTA_SCOPE_HOST ? "host" : "fleet",
                         "owner", t->owner ? json_string(t->owner) : json_null());
}

/* ---- GET /teams usage ---- */

static json_t *count_json(uint64_t v) {
        return json_integer((json_int_t) MIN(v, (uint64_t) INT64_MAX));
}

/* Always a string, "0.000000" included: usage is a reading, not a setting. */
static json_t *usd_amount_json(uint64_t microusd) {
        char buf[64];

        snprintf(buf, sizeof(buf), "%" PRIu64 ".%06" PRIu64, microusd / 1000000, microusd % 1000000);
        return json_string(buf);
}

/* One window: limit and remaining are null when the team has no such limit;
 * budgets as USD strings plus exact *_microusd integers. */
static json_t *window_json(kb_quota_limit l, const struct kb_quota_window *w) {
        bool unlimited = w->limit == 0;

        if (l != KB_QUOTA_BUDGET_PER_DAY && l != KB_QUOTA_BUDGET_PER_MONTH)
                return json_pack("{s:o, s:o, s:o, s:o, s:o}",
                                 "limit", unlimited ? json_null() : count_json(w->limit),
                                 "used", count_json(w->used),
                                 "reserved", count_json(w->reserved),
                                 "remaining", unlimited ? json_null() : count_json(w->remaining),
                                 "reset", kb_admin_time_json(w->reset_usec));
        return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
                         "limit", unlimited ? json_null() : usd_amount_json(w->limit),
                         "used", usd_amount_json(w->used),
                         "reserved", usd_amount_json(w->reserved),
                         "remaining", unlimited ? json_null() : usd_amount_json(w->remaining),
                         "reset", kb_admin_time_json(w->reset_usec),
                         "limit_microusd", unlimited ? json_null() : count_json(w->limit),
                         "used_microusd", count_json(w->used),
                         "reserved_microusd", count_json(w->reserved),
                         "remaining_microusd", unlimited ? json_null() : count_json(w->remaining));
}

static json_t *windows_json(const struct kb_quota_view *v) {
        json_t *usage = json_object();

        for (kb_quota_limit l = 0; usage && l < _KB_QUOTA_LIMIT_MAX; l++)
                if (json_object_set_new(usage, kb_quota_limit_to_string(l), window_json(l, &v->windows[l])) < 0) {
                        json_decref(usage);
                        return NULL;
                }
        return usage;
}

static void fleet_window(struct kb_quota_window *w, uint64_t used, uint64_t reserved) {
        w->used = used;
        w->reserved = reserved;
        w->remaining = w->limit == 0 ? UINT64_MAX : w->limit > used + reserved ? w->limit - used - reserved : 0;
}

/* The host's view turned into the fleet's: same limits and calendar, the
 * store's counts. */
static struct kb_quota_view fleet_of(const struct kb_quota_view *host, const struct kb_fleet_view *f) {
        struct kb_quota_view v = *host;

        fleet_window(&v.windows[KB_QUOTA_REQUESTS_PER_MINUTE], f->minute_requests, 0);
        fleet_window(&v.windows[KB_QUOTA_TOKENS_PER_MINUTE], f->minute_tokens, f->held_tokens);
        v.windows[KB_QUOTA_REQUESTS_PER_MINUTE].reset_usec = f->minute_requests ? f->read_usec + 60 * USEC_PER_SEC : 0;
        v.windows[KB_QUOTA_TOKENS_PER_MINUTE].reset_usec =
                f->newest_tokens_k ? f->newest_tokens_k * USEC_PER_SEC + 60 * USEC_PER_SEC : 0;
        fleet_window(&v.windows[KB_QUOTA_TOKENS_PER_DAY], f->day_tokens, f->held_tokens);
        fleet_window(&v.windows[KB_QUOTA_BUDGET_PER_DAY], f->day_cost, f->held_cost);
        fleet_window(&v.windows[KB_QUOTA_BUDGET_PER_MONTH], f->month_cost, f->held_cost);
        fleet_window(&v.windows[KB_QUOTA_MAX_CONCURRENT], f->in_flight, 0);
        v.in_flight = f->in_flight;
        v.month_tokens = f->month_tokens;
        return v;
}

/* Adds "usage", "in_flight" and "month_tokens" to a team object, and
 * "usage_scope": "fleet" when they are the fleet's (read from the quota
 * store at the last heartbeat), with this host's own under "host_usage",
 * "host_in_flight" and "host_month_tokens"; "host" when they are this
 * host's (a host team, no store, or the store unreadable now). A team the
 * quota does not know (cannot happen after a configure) just gets none. */
static int add_usage(json_t *team, struct kb_broker *b, const char *name, uint64_t now) {
        struct kb_quota_view host, fleet;
        struct kb_fleet_view fv;

        if (!b->quota || kb_quota_view(b->quota, name, now, &host) < 0)
                return 0;
        bool is_fleet = kb_quota_team_is_fleet(b->quota, name) && kb_fleet_view(b->fleet, name, &fv);
        if (is_fleet)
                fleet = fleet_of(&host, &fv);
        const struct kb_quota_view *v = is_fleet ? &fleet : &host;
        json_t *usage = windows_json(v);
        if (!usage)
                return -ENOMEM;
        if (json_object_set_new(team, "usage", usage) < 0 ||
            json_object_set_new(team, "in_flight", count_json(v->in_flight)) < 0 ||
            json_object_set_new(team, "month_tokens", count_json(v->month_tokens)) < 0 ||
            json_object_set_new(team, "usage_scope", json_string(is_fleet ? "fleet" : "host")) < 0)
                return -ENOMEM;
        if (!is_fleet)
                return 0;
        if (!(usage = windows_json(&host)) || json_object_set_new(team, "host_usage", usage) < 0 ||
            json_object_set_new(team, "host_in_flight", count_json(host.in_flight)) < 0 ||
            json_object_set_new(team, "host_month_tokens", count_json(host.month_tokens)) < 0)
                return -ENOMEM;
        return 0;
}

void kb_admin_serve_teams(struct kb_conn *c, struct kb_broker *b) {
        const struct kb_config *cfg = b->config;
        json_t *teams = json_array();
        uint64_t now = kb_realtime_usec();

        for (size_t i = 0; teams && i < cfg->n_teams; i++) {
                json_t *t = team_json(&cfg->teams[i]);
                if (t && add_usage(t, b, cfg->teams[i].name, now) < 0) {
                        json_decref(t);
                        t = NULL;
                }
                if (!t || json_array_append_new(teams, t) < 0) {
                        json_decref(teams);
                        teams = NULL;
                }
        }
        kb_admin_respond(c, 200, teams ? json_pack("{s:o}", "teams", teams) : NULL);
}

