/* SPDX-License-Identifier: MIT */
/* The admin API's routing parts: PUT /models/NAME/split and the runtime
 * state GET /routes shows per route. The state itself is router.c's. */

#include <jansson.h>

#include "admin.h"
#include "routing.h"
#include "broker.h"
#include "router.h"

bool kb_admin_model_name_valid(const char *s, size_t n) {
        if (n == 0 || n > KB_ADMIN_MODEL_NAME_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if (s[i] <= ' ' || s[i] >= 0x7f || strchr("[]*\"\\%?#", s[i]))
                        return false;
        return true;
}

json_t *kb_admin_model_weights(struct kb_broker *b, const struct kb_model *m) {
        json_t *w = json_object();
        for (size_t i = 0; w && i < m->n_targets; i++) {
                const struct kb_target *t = &m->targets[i];
                bool twice = false;
                for (size_t k = 0; k < m->n_targets; k++)
                        twice |= k != i && m->targets[k].route == t->route;
                _cleanup_free_ char *name = NULL;
                if (asprintf(&name, "%s%s%s", t->route->name, twice ? "/" : "", twice ? t->upstream_model : "") < 0) {
                        name = NULL;
                        json_decref(w);
                        return NULL;
                }
                if (json_object_set_new(w, name, json_integer(kb_router_weight(b->router, m, t, NULL))) < 0) {
                        json_decref(w);
                        return NULL;
                }
        }
        return w;
}

void kb_admin_serve_model_split(struct kb_conn *c, struct kb_broker *b, struct kb_http_request *req,
                                const struct kb_admin_target *t, uid_t admin_uid) {
        struct kb_split_entry e[KB_SPLIT_MAX_ENTRIES];
        json_error_t err;
        const char *why = NULL, *name;
        json_t *v;
        size_t n = 0;

        const struct kb_model *m = kb_config_find_model(b->config, t->model);
        if (!m) {
                kb_admin_error(c, 404, "not_found", "no model '%s' in the running config", t->model);
                return;
        }
        json_t *doc = json_loadb(req->body.data ?: "", req->body.len, JSON_REJECT_DUPLICATES, &err);
        json_t *w = json_object_get(doc, "weights");
        if (!json_is_object(w) || json_object_size(doc) != 1) {
                json_decref(doc);
                kb_admin_error(c, 400, "invalid_request", "expected {\"weights\":{\"ROUTE\":N,...}}");
                return;
        }
        json_object_foreach(w, name, v) {
                if (n == KB_SPLIT_MAX_ENTRIES) {
                        json_decref(doc);
                        kb_admin_error(c, 400, "invalid_request", "at most %d weights", KB_SPLIT_MAX_ENTRIES);
                        return;
                }
                if (!json_is_integer(v) || json_integer_value(v) < 0) {
                        /* name lives in doc: answer before letting go of it */
                        kb_admin_error(c, 400, "invalid_request", "the weight of '%s' is not an integer from 0 to 1000000",
                                       name);
                        json_decref(doc);
                        return;
                }
                e[n++] = (struct kb_split_entry) { .name = name, .weight = (uint64_t) json_integer_value(v) };
        }
        int r = kb_router_set_split(b->router, m, e, n, (int64_t) admin_uid, &why);
        json_decref(doc);
        if (r < 0) {
                kb_admin_error(c, 400, "invalid_request", "model '%s': %s",
                               m->name, why ?: strerror(-r));
                return;
        }
        /* Kept across restarts; a failure to write is said, not hidden: the
         * split is live but will not survive a restart. */
        r = kb_routing_save(b);
        json_t *ans = json_pack("{s:s, s:o, s:b}", "model", m->name, "weights", kb_admin_model_weights(b, m), "persisted", r >= 0);
        if (ans && r < 0)
                json_object_set_new(ans, "warning", json_string(strerror(-r)));
        kb_admin_respond(c, 200, ans);
}

int kb_admin_route_state(json_t *o, struct kb_broker *b, const struct kb_route *route) {
        struct kb_route_view v;

        if (kb_router_route_view(b->router, route->name, kb_now_usec(), &v) < 0)
                return 0;
        json_t *p50 = v.has_p50 ? json_integer((json_int_t) (v.p50_usec / USEC_PER_MSEC)) : json_null();
        json_t *ratio = v.window_requests ? json_real((double) (int64_t) (v.error_ratio * 1000 + 0.5) / 1000)
                                          : json_null();
        if (json_object_set_new(o, "circuit", json_string(kb_circuit_to_string(v.circuit))) < 0 ||
            json_object_set_new(o, "consecutive_failures", json_integer(v.consecutive_failures)) < 0 ||
            json_object_set_new(o, "window_requests", json_integer((json_int_t) v.window_requests)) < 0 ||
            json_object_set_new(o, "error_ratio", ratio) < 0 ||
            json_object_set_new(o, "p50_latency_ms", p50) < 0 ||
            json_object_set_new(o, "open_remaining_s",
                                json_integer((json_int_t) ((v.open_remaining_usec + USEC_PER_SEC - 1) / USEC_PER_SEC))) < 0)
                return -ENOMEM;
        return 0;
}
