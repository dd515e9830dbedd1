/* SPDX-License-Identifier: MIT */
/* Splits set by hand (keybrokerctl model split), and the overrides saved to
 * state_dir/splits.json and loaded back at start. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>

#include "json-util.h"
#include "router-internal.h"
#include "util.h"

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
        size_t nt = router_model_targets(r, m->name, &ts);
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
                uint64_t wt = router_effective(&ts[i]);
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
                unsigned before = router_effective(t);
                t->overridden = e[k].weight != t->config_weight;
                t->weight = t->overridden ? (unsigned) e[k].weight : 0;
                /* An operator's decision gives a canary a fresh history. */
                t->rolled_back = false;
                router_history_reset(t);
                changed |= before != router_effective(t);
        }
        if (changed) {
                _cleanup_free_ char *w = router_weights_of(r, m->name);
                router_emit(r, &(struct kb_route_event) {
                        .kind = KB_ROUTE_SPLIT_CHANGED, .model = m->name, .weights = w,
                        .reason = admin_uid >= 0 ? "set by an admin" : "set", .admin_uid = admin_uid,
                });
        }
        return 0;
}

/* ---- persistence ---- */

int kb_router_save_splits(const struct kb_router *r, const char *path) {
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
        if (!doc)
                return -ENOMEM;
        /* 0644 less the umask, as splits.json always was: weights, no secret. */
        int k = kb_json_write_file(path, doc, 0644, 0);
        json_decref(doc);
        return k;
}

int kb_router_load_splits(struct kb_router *r, const char *path) {
        json_t *doc;
        int k;

        if (!r || !path)
                return -EINVAL;
        k = kb_json_read_file(path, SPLITS_FILE_MAX, &doc);
        if (k < 0 || !doc)
                return k;
        json_t *arr = json_object_get(doc, "splits");
        json_t *v = json_object_get(doc, "version");
        if (!json_is_array(arr) || !json_is_integer(v) || json_integer_value(v) != 1) {
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
                struct target_state *t = router_find_target(r, json_string_value(json_object_get(e, "model")),
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
