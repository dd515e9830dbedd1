/* SPDX-License-Identifier: MIT */
/* Layer: front door (api). Calls that name no model — files, batches,
 * videos, stored responses, message batches — and the ownership of what
 * they create: an object call goes to the route and key version that made
 * the object, and only for the team that owns it; a create or list goes to
 * the team's default route for the family. Renders its own refusals (404
 * as the provider would say it) and records objects at finish. */

#include <jansson.h>
#include <strings.h>

#include "broker.h"
#include "api.h"
#include "batch-file.h"
#include "fleet-objects.h"
#include "objects.h"
#include "upload.h"
#include "router.h"

/* default_route of the family, else the route of the team's first allowed
 * model (its own list's order, or the config's for "*") that has one. */
const struct kb_route *kb_api_default_route(const struct kb_config *c, const struct kb_team *t, kb_family f) {
        for (size_t i = 0; i < t->n_default_routes; i++) {
                const struct kb_route *rt = kb_config_find_route(c, t->default_routes[i]);
                if (rt && rt->family == f)
                        return rt;
        }
        size_t n = t->models_all ? c->n_models : t->n_models;
        for (size_t i = 0; i < n; i++) {
                const struct kb_model *m = t->models_all ? &c->models[i] : kb_config_find_model(c, t->models[i]);
                for (size_t k = 0; m && k < m->n_targets; k++)
                        if (m->targets[k].route->family == f)
                                return m->targets[k].route;
        }
        return NULL;
}

/* As the provider answers an id it does not know: OpenAI's
 * invalid_request_error with param "id", Anthropic's not_found_error. */
static void refuse_unknown_object(struct kb_request *r, const char *what, const char *id) {
        json_t *j;
        if (r->family == KB_FAMILY_ANTHROPIC)
                j = json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type", "not_found_error", "message",
                              "");
        else
                j = json_pack("{s:{s:s, s:s, s:s, s:n}}", "error", "message", "", "type", "invalid_request_error",
                              "param", "id", "code");
        _cleanup_free_ char *msg = NULL;
        if (asprintf(&msg, "No such %s: '%s'", what, id) < 0)
                msg = NULL;
        json_object_set_new(json_object_get(j, "error"), "message", json_string(msg ?: "not found"));
        _cleanup_free_ char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        r->outcome = KB_OUTCOME_INVALID_REQUEST;
        kb_api_respond_json(r, 404, body ?: "{}");
        kb_request_finish(r);
}

static const char *kind_noun(kb_object_kind k) {
        switch (k) {
        case KB_OBJECT_FILE: return "File object";
        case KB_OBJECT_BATCH: return "batch";
        case KB_OBJECT_VIDEO: return "video";
        case KB_OBJECT_RESPONSE: return "response";
        case KB_OBJECT_MESSAGE_BATCH: return "message batch";
        default: return "object";
        }
}

/* An object the team may use: its own, of the kind the path names. */
static const struct kb_object *owned(struct kb_request *r, const char *id, kb_object_kind kind) {
        const struct kb_object *o = kb_objects_find(r->broker->objects, id);
        if (!o || !r->team || !streq(o->team, r->team->name) || o->kind != kind)
                return NULL;
        return o;
}

/* A batch is made from a file: the team must own it too. Message batches
 * carry their requests: each request's model must be one the team may use. */
/* The quota store answered about an object this host did not know. */
static void on_fleet_object(void *userdata, const struct kb_object *o) {
        struct kb_request *r = userdata;
        r->object_lookup = NULL;
        const struct kb_object *mine = o ? kb_objects_find(r->broker->objects, o->id) : NULL;
        if (o && !mine)
                (void) kb_objects_cache(r->broker->objects, o);
        else if (o && mine && o->billed)
                (void) kb_objects_set_billed(r->broker->objects, o->id);
        kb_api_serve_object(r, r->admitted);
}

/* A model named in a batch file is the provider's: the team may use it
 * when it may use a model of ours that is it, or that sends it on this route. */
static bool team_may_send(const struct kb_request *r, const struct kb_route *route, const char *name) {
        if (kb_team_allows_model(r->team, name))
                return true;
        for (size_t i = 0; i < r->config->n_models; i++) {
                const struct kb_model *m = &r->config->models[i];
                if (!kb_team_allows_model(r->team, m->name))
                        continue;
                for (size_t k = 0; k < m->n_targets; k++)
                        if (m->targets[k].route == route && streq_ptr(m->targets[k].upstream_model, name))
                                return true;
                for (size_t k = 0; k < m->n_fallbacks; k++)
                        if (m->fallbacks[k].route == route && streq_ptr(m->fallbacks[k].upstream_model, name))
                                return true;
        }
        return false;
}

/* The batch's input file was read as it was uploaded: each model it asks
 * for must be one the team may use; what it holds must fit the limits. */
static bool check_batch_models(struct kb_request *r, const struct kb_object *file, const struct kb_route *route) {
        _cleanup_free_ char *models = strdup(file->models);
        char *save = NULL;
        if (!models)
                return true;
        for (char *m = strtok_r(models, ",", &save); m; m = strtok_r(NULL, ",", &save)) {
                if (!team_may_send(r, route, m)) {
                        kb_api_fail(r, 403, "model_not_allowed", KB_OUTCOME_FORBIDDEN,
                                    "the batch's input file %s asks for model '%s', which team '%s' may not use",
                                    file->id, m, r->team->name);
                        return false;
                }
                if (!r->batch_price)
                        r->batch_price = kb_price_find(route, NULL, m);
        }
        /* about four bytes per token, as for any request body */
        r->batch_est_tokens = (file->bytes + 3) / 4;
        return true;
}

static void on_fleet_object(void *userdata, const struct kb_object *o);

/* 1: go on; 0: answered; -EINPROGRESS: the quota store is asked about the
 * batch's input file (made through another host?), and the call resumes. */
static int check_create_body(struct kb_request *r, const struct kb_route *route, kb_admitted_t next) {
        if (r->endpoint != KB_ENDPOINT_BATCHES && r->endpoint != KB_ENDPOINT_MESSAGE_BATCHES)
                return true;
        json_t *root = json_loadb(r->http->body.data ?: "", r->http->body.len, 0, NULL);
        if (!json_is_object(root)) {
                json_decref(root);
                kb_api_fail(r, 400, "invalid_request", KB_OUTCOME_INVALID_REQUEST, "the body is not a JSON object");
                return false;
        }
        bool ok = true;
        if (r->endpoint == KB_ENDPOINT_BATCHES) {
                const char *file = json_string_value(json_object_get(root, "input_file_id"));
                const struct kb_object *o = file ? owned(r, file, KB_OBJECT_FILE) : NULL;
                if (file && !o && !r->store_asked && !kb_objects_find(r->broker->objects, file) &&
                    kb_fleet_objects_get(r->broker->fleet_objects, file, on_fleet_object, r, &r->object_lookup) >= 0) {
                        r->store_asked = true;
                        r->admitted = next;
                        json_decref(root);
                        return -EINPROGRESS;
                }
                if (file && !o) {
                        snprintf(r->object_id, sizeof(r->object_id), "%.*s", KB_OBJECT_ID_MAX, file);
                        refuse_unknown_object(r, kind_noun(KB_OBJECT_FILE), file);
                        ok = false;
                } else if (o && o->models)
                        ok = check_batch_models(r, o, route);
        } else {
                size_t i;
                json_t *req;
                json_array_foreach(json_object_get(root, "requests"), i, req) {
                        const char *m = json_string_value(json_object_get(json_object_get(req, "params"), "model"));
                        if (m && !kb_team_allows_model(r->team, m)) {
                                kb_api_fail(r, 403, "model_not_allowed", KB_OUTCOME_FORBIDDEN,
                                            "team '%s' may not use model '%s' (request %zu of the batch)",
                                            r->team->name, m, i);
                                ok = false;
                                break;
                        }
                }
        }
        json_decref(root);
        return ok;
}

void kb_api_serve_object(struct kb_request *r, kb_admitted_t next) {
        const struct kb_endpoint_def *d = r->def;
        const struct kb_route *route = NULL;

        if (r->object_id[0]) {
                const struct kb_object *o = owned(r, r->object_id, d->object);
                /* made through another host of the fleet? And one billed
                 * when it ended: has another host billed it since? */
                bool billable = o && !o->billed && (o->kind == KB_OBJECT_BATCH || o->kind == KB_OBJECT_VIDEO ||
                                                    o->kind == KB_OBJECT_MESSAGE_BATCH);
                if ((billable || (!o && !kb_objects_find(r->broker->objects, r->object_id))) && !r->store_asked) {
                        r->store_asked = true;
                        r->admitted = next;
                        if (kb_fleet_objects_get(r->broker->fleet_objects, r->object_id, on_fleet_object, r,
                                                 &r->object_lookup) >= 0)
                                return;
                }
                if (!o) {
                        refuse_unknown_object(r, kind_noun(d->object), r->object_id);
                        return;
                }
                route = kb_config_find_route(r->config, o->route);
                if (!route) {
                        kb_api_fail(r, 503, "upstream_unavailable", KB_OUTCOME_UPSTREAM_ERROR,
                                    "%s '%s' was made through route '%s', which is no longer configured",
                                    kind_noun(d->object), r->object_id, o->route);
                        return;
                }
                if (o->key && !(r->pin_key = strdup(o->key))) {
                        kb_api_fail(r, 500, "internal_error", KB_OUTCOME_INVALID_REQUEST, "out of memory");
                        return;
                }
                r->pin_key_version = o->key_version;
        } else {
                route = kb_api_default_route(r->config, r->team, r->family);
                if (!route) {
                        kb_api_fail(r, 400, "invalid_request", KB_OUTCOME_INVALID_REQUEST,
                                    "team '%s' has no route for the %s API: set default_route in [team:%s]",
                                    r->team->name, kb_family_to_string(r->family), r->team->name);
                        return;
                }
                if (d->op == KB_OP_CREATE && check_create_body(r, route, next) <= 0)
                        return;
        }
        r->hold_answer = d->op == KB_OP_LIST;
        r->own_target = (struct kb_target) { .route = (struct kb_route *) route, .weight = 1 };
        r->candidates = calloc(1, sizeof(struct kb_candidate));
        if (!r->candidates) {
                kb_api_fail(r, 500, "internal_error", KB_OUTCOME_INVALID_REQUEST, "out of memory");
                return;
        }
        r->candidates[0] = (struct kb_candidate) { .target = &r->own_target };
        r->n_candidates = 1;
        r->target = &r->own_target;
        r->route = route;

        struct kb_body_info none = {};
        struct kb_admit_verdict v;
        if (kb_metering_admit(r, &none, next, &v) != KB_ADMIT_LATER)
                next(r, &v);
}

/* At finish: what the answer made or removed. */
void kb_api_objects_done(struct kb_request *r) {
        const struct kb_endpoint_def *d = r->def;
        bool ok = r->upstream_status >= 200 && r->upstream_status < 300 && r->outcome == KB_OUTCOME_OK;
        if (!d || !ok || !r->team || !r->route)
                return;
        if (d->op == KB_OP_DELETE && r->object_id[0]) {
                (void) kb_objects_forget(r->broker->objects, r->object_id);
                return;
        }
        if (!r->tap)
                return;
        const struct kb_usage *u = kb_usage_tap_get(r->tap);
        /* a batch's output and error files: the batch's team's */
        if (d->object == KB_OBJECT_BATCH)
                kb_objects_adopt_files(r->broker->objects, kb_objects_find(r->broker->objects, r->object_id),
                                       u->object_files, ELEMENTSOF(u->object_files));
        if (d->op != KB_OP_CREATE)
                return;
        const char *id = u->upstream_request_id;
        if (!id || strlen(id) > KB_OBJECT_ID_MAX)
                return;
        const struct kb_batch_file *bf = kb_upload_batch_file(r->upload);
        _cleanup_free_ char *models = bf ? kb_batch_file_models(bf) : NULL;
        struct kb_object o = {
                .id = id,
                .kind = d->object,
                .team = r->team->name,
                .route = r->route->name,
                .key = r->key ? kb_key_name(r->key) : NULL,
                .key_version = r->key ? kb_key_version(r->key) : 0,
                .created_usec = kb_realtime_usec(),
                .models = models,
                .lines = bf ? bf->lines : 0,
                .bytes = bf ? bf->bytes : 0,
        };
        if (kb_objects_add(r->broker->objects, &o) >= 0 || kb_objects_find(r->broker->objects, id))
                snprintf(r->object_id, sizeof(r->object_id), "%s", id);
}
