/* SPDX-License-Identifier: MIT */
/* The admin socket: peer check, request routing, errors, and the read-only
 * endpoints (status, teams, routes) plus reload. Key changes are
 * admin-keys.c. */

#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>

#include "admin.h"
#include "capacity.h"
#include "fleet-quota.h"
#include "fleet-store.h"
#include "broker.h"
#include "keybroker/keybroker.h"
#include "metrics.h"
#include "router.h"
#include "preflight.h"

struct admin_conn {
        struct kb_identity *identity; /* NULL when the kernel would not say who it is */
        struct kb_preflight *preflight; /* POST /routes/NAME/check running for this conn */
};

/* ---- answers ---- */

void kb_admin_respond(struct kb_conn *c, int status, json_t *j) {
        static const struct kb_http_header h[] = {
                { "content-type", "application/json" },
                { "cache-control", "no-store" },
        };
        _cleanup_free_ char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;

        json_decref(j);
        if (!s) {
                static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"code\":\"internal_error\"}}";
                if (kb_conn_respond(c, 500, h, ELEMENTSOF(h), oom, sizeof(oom) - 1) < 0)
                        (void) kb_conn_end(c);
                return;
        }
        if (kb_conn_respond(c, status, h, ELEMENTSOF(h), s, strlen(s)) < 0)
                (void) kb_conn_end(c);
}

static json_t *error_json(const char *code, const char *message) {
        return json_pack("{s:{s:s, s:s}}", "error", "message", message, "code", code);
}

void kb_admin_error(struct kb_conn *c, int status, const char *code, const char *fmt, ...) {
        _cleanup_free_ char *msg = NULL;
        va_list ap;

        va_start(ap, fmt);
        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL;
        va_end(ap);
        kb_admin_respond(c, status, error_json(code, msg ?: code));
}

int kb_admin_iso8601(uint64_t realtime_usec, char ret[static KB_ADMIN_ISO8601_MAX]) {
        time_t t = (time_t) (realtime_usec / USEC_PER_SEC);
        struct tm tm;

        if (!gmtime_r(&t, &tm))
                return -EOVERFLOW;
        if (strftime(ret, KB_ADMIN_ISO8601_MAX, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                return -EOVERFLOW;
        return 0;
}

json_t *kb_admin_time_json(uint64_t realtime_usec) {
        char buf[KB_ADMIN_ISO8601_MAX];

        if (realtime_usec == 0 || kb_admin_iso8601(realtime_usec, buf) < 0)
                return json_null();
        return json_string(buf);
}

/* ---- who may talk to us ---- */

bool kb_admin_peer_allowed(const struct kb_agent_config *a, const struct kb_identity *id) {
        if (!id)
                return false;
        if (a->n_admin_uids == 0 && a->n_admin_gids == 0)
                return id->uid == 0;
        for (size_t i = 0; i < a->n_admin_uids; i++)
                if (a->admin_uids[i] == id->uid)
                        return true;
        for (size_t i = 0; i < a->n_admin_gids; i++) {
                if (a->admin_gids[i] == id->gid)
                        return true;
                for (size_t k = 0; k < id->n_groups; k++)
                        if (a->admin_gids[i] == id->groups[k])
                                return true;
        }
        return false;
}

/* ---- read-only endpoints ---- */

static json_t *capacity_json(const struct kb_broker *b) {
        struct kb_capacity cap;

        kb_capacity_get(b, &cap);
        return json_pack("{s:I, s:{s:I, s:I, s:I, s:I}, s:{s:I, s:I, s:I, s:I}, s:{s:I, s:o}}",
                         "refusing", (json_int_t) cap.refusing,
                         "refused",
                         "max_connections", (json_int_t) cap.refused_cap,
                         "max_connections_per_uid", (json_int_t) cap.refused_per_uid,
                         "out_of_fds", (json_int_t) cap.refused_fds,
                         "identity", (json_int_t) cap.refused_identity,
                         "upstream",
                         "calls", (json_int_t) cap.upstream.calls,
                         "connections", (json_int_t) cap.upstream.connections,
                         "connecting", (json_int_t) cap.upstream.connecting,
                         "pending", (json_int_t) cap.upstream.waiting,
                         "fds",
                         "open", (json_int_t) cap.fds_open,
                         "limit", cap.fds_limit == UINT64_MAX ? json_null() : json_integer((json_int_t) cap.fds_limit));
}

/* null when there is no quota store; else its state, since when, why
 * offline, round trips and the brokers holding a lease. */
static json_t *store_json(const struct kb_broker *b) {
        struct kb_store_stats st;
        struct kb_fleet_stats fs;

        if (!b->store)
                return json_null();
        kb_store_get_stats(b->store, &st);
        kb_fleet_get_stats(b->fleet, &fs);
        return json_pack("{s:s, s:s, s:o, s:s?, s:I, s:f, s:f, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s?}",
                         "url", strempty(b->config->agent.quota_store),
                         "state", kb_store_state_to_string(st.state),
                         "since", kb_admin_time_json(st.since_usec),
                         "reason", st.reason[0] ? st.reason : NULL,
                         "brokers", (json_int_t) st.brokers,
                         "rtt_p50_ms", (double) st.rtt_p50_usec / 1000.0,
                         "rtt_p99_ms", (double) st.rtt_p99_usec / 1000.0,
                         "replies", (json_int_t) st.n_replies,
                         "errors", (json_int_t) st.n_errors,
                         "timeouts", (json_int_t) st.n_timeouts,
                         "offline_s", (json_int_t) (st.offline_usec / USEC_PER_SEC),
                         "settles_queued", (json_int_t) fs.queued,
                         "settles_dropped", (json_int_t) fs.dropped,
                         "pushes", (json_int_t) fs.pushes,
                         "epoch", fs.epoch[0] ? fs.epoch : NULL);
}

static void serve_status(struct kb_conn *c, struct kb_broker *b) {
        uint64_t now = kb_realtime_usec();
        struct rlimit rl = {};
        int dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);

        if (getrlimit(RLIMIT_CORE, &rl) < 0)
                rl.rlim_cur = RLIM_INFINITY;
        json_t *core = rl.rlim_cur == RLIM_INFINITY ? json_integer(-1) : json_integer((json_int_t) rl.rlim_cur);
        json_t *j = json_pack("{s:s, s:I, s:o, s:I, s:s, s:I, s:I, s:I, s:{s:I, s:I}, s:b, s:o}",
                              "version", KB_VERSION,
                              "pid", (json_int_t) getpid(),
                              "started", kb_admin_time_json(b->started_usec),
                              "uptime_s", (json_int_t) (now > b->started_usec ? (now - b->started_usec) / USEC_PER_SEC : 0),
                              "config", strempty(b->config_path),
                              "requests_served", (json_int_t) b->n_requests,
                              "in_flight", (json_int_t) b->n_in_flight,
                              "connections", (json_int_t) (b->api ? kb_http_server_n_connections(b->api) : 0),
                              "journal",
                              "written", (json_int_t) kb_journal_n_written(b->journal),
                              "dropped", (json_int_t) kb_journal_n_dropped(b->journal),
                              "dumpable", dumpable > 0,
                              "core_limit", core);
        json_t *cap = capacity_json(b);
        if (j && cap)
                json_object_update(j, cap);
        json_decref(cap);
        if (j)
                json_object_set_new(j, "quota_store", store_json(b));
        kb_admin_respond(c, 200, j);
}

static json_t *seconds_json(uint64_t usec) {
        if (usec % USEC_PER_SEC == 0)
                return json_integer((json_int_t) (usec / USEC_PER_SEC));
        return json_real((double) usec / (double) USEC_PER_SEC);
}

static json_t *auth_json(const struct kb_route *r) {
        switch (r->auth) {
        case KB_AUTH_BEARER: return json_string("bearer");
        case KB_AUTH_X_API_KEY: return json_string("x-api-key");
        case KB_AUTH_HEADER: {
                _cleanup_free_ char *s = NULL;
                if (asprintf(&s, "header:%s", strempty(r->auth_header)) < 0)
                        return NULL;
                return json_string(s);
        }
        default: return json_null();
        }
}

static int append_targets(json_t *arr, struct kb_broker *b, const struct kb_config *cfg,
                          const struct kb_route *route) {
        for (size_t m = 0; m < cfg->n_models; m++) {
                const struct kb_model *model = &cfg->models[m];
                for (int fb = 0; fb < 2; fb++) {
                        const struct kb_target *ts = fb ? model->fallbacks : model->targets;
                        size_t n = fb ? model->n_fallbacks : model->n_targets;
                        for (size_t i = 0; i < n; i++) {
                                if (ts[i].route != route)
                                        continue;
                                bool over = false;
                                unsigned eff = fb ? 0 : kb_router_weight(b->router, model, &ts[i], &over);
                                json_t *t = json_pack("{s:s, s:s, s:I, s:s}", "model", model->name,
                                                      "upstream_model", ts[i].upstream_model, "weight",
                                                      (json_int_t) ts[i].weight, "role", fb ? "fallback" : "target");
                                /* weight is the config's; effective_weight what is used now */
                                if (t && !fb &&
                                    (json_object_set_new(t, "effective_weight", json_integer(eff)) < 0 ||
                                     json_object_set_new(t, "overridden", json_boolean(over)) < 0)) {
                                        json_decref(t);
                                        t = NULL;
                                }
                                if (!t || json_array_append_new(arr, t) < 0)
                                        return -ENOMEM;
                        }
                }
        }
        return 0;
}

static void serve_routes(struct kb_conn *c, struct kb_broker *b) {
        const struct kb_config *cfg = b->config;
        json_t *routes = json_array();

        for (size_t i = 0; routes && i < cfg->n_routes; i++) {
                const struct kb_route *r = &cfg->routes[i];
                json_t *key_version = json_null();
                struct kb_key *k = NULL;

                if (r->key && b->keys && kb_keystore_get(b->keys, r->key, &k) >= 0) {
                        json_decref(key_version);
                        key_version = json_integer(kb_key_version(k));
                        kb_key_unref(k);
                }
                json_t *targets = json_array();
                if (targets && append_targets(targets, b, cfg, r) < 0) {
                        json_decref(targets);
                        targets = NULL;
                }
                json_t *o = json_pack("{s:s, s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:o}", "name", r->name, "family",
                                      strempty(kb_family_to_string(r->family)), "base_url", r->base_url, "key",
                                      r->key ? json_string(r->key) : json_null(), "key_version", key_version,
                                      "auth", auth_json(r), "timeout_s", seconds_json(r->timeout_usec),
                                      "connect_timeout_s", seconds_json(r->connect_timeout_usec), "targets", targets);
                if (o && kb_admin_route_state(o, b, r) < 0) {
                        json_decref(o);
                        o = NULL;
                }
                if (!o || json_array_append_new(routes, o) < 0) {
                        json_decref(routes);
                        routes = NULL;
                }
        }
        kb_admin_respond(c, 200, routes ? json_pack("{s:o}", "routes", routes) : NULL);
}

static void route_check_done(void *userdata, json_t *answer) {
        struct kb_conn *c = userdata;
        struct admin_conn *ac = kb_conn_get_userdata(c);

        if (ac)
                ac->preflight = NULL;
        kb_admin_respond(c, 200, answer);
}

/* Answered later, from the loop, once every check has run (preflight.c);
 * a peer that leaves meanwhile still gets its evidence saved. */
static void serve_route_check(struct kb_conn *c, struct kb_broker *b, struct kb_http_request *req,
                              const struct kb_admin_target *t, struct admin_conn *ac) {
        _cleanup_free_ char *model = NULL, *error = NULL;
        const char *why = NULL;
        unsigned checks = 0;

        if (!ac || ac->preflight) {
                kb_admin_error(c, 500, "internal_error", "no state for this connection");
                return;
        }
        int r = kb_preflight_parse_body(req->body.data, req->body.len, &model, &checks, &why);
        if (r < 0) {
                kb_admin_error(c, r == -ENOMEM ? 500 : 400, "invalid_request", "%s", why ?: strerror(-r));
                return;
        }
        r = kb_preflight_start(b, t->name, model, checks, route_check_done, c, &ac->preflight, &error);
        if (r < 0)
                kb_admin_error(c, r == -ENOENT ? 404 : r == -ENOMEDIUM ? 400 : 500,
                               r == -ENOENT ? "not_found" : r == -ENOMEDIUM ? "invalid_request" : "internal_error",
                               "%s", error ?: strerror(-r));
}

/* GET /metrics: metrics.c renders the page, this answers it. */
static void serve_metrics(struct kb_conn *c, struct kb_broker *b) {
        static const struct kb_http_header h[] = {
                { "content-type", KB_METRICS_CONTENT_TYPE },
                { "cache-control", "no-store" },
        };
        struct kb_buf out = {};
        int r = kb_metrics_render(b, &out);

        if (r < 0) {
                kb_buf_free(&out);
                kb_admin_error(c, 500, "internal_error", "cannot render metrics: %s", strerror(-r));
                return;
        }
        if (kb_conn_respond(c, 200, h, ELEMENTSOF(h), out.data, out.len) < 0)
                (void) kb_conn_end(c);
        kb_buf_free(&out);
}

static void serve_reload(struct kb_conn *c, struct kb_broker *b) {
        _cleanup_free_ char *error = NULL;

        int r = kb_broker_reload(b, &error);
        if (r < 0) {
                kb_admin_error(c, 400, "reload_rejected", "%s", error ?: strerror(-r));
                return;
        }
        kb_admin_respond(c, 200, json_pack("{s:b, s:s}", "reloaded", true, "config", strempty(b->config_path)));
}

/* ---- routing ---- */

bool kb_admin_key_name_valid(const char *s, size_t n) {
        if (n == 0 || n > KB_ADMIN_KEY_NAME_MAX)
                return false;
        for (size_t i = 0; i < n; i++) {
                char ch = s[i];
                if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                      ch == '.' || ch == '_' || ch == '-'))
                        return false;
                if (ch == '.' && i + 1 < n && s[i + 1] == '.')
                        return false;
        }
        /* "." names the credentials directory itself */
        return !(n == 1 && s[0] == '.');
}

int kb_admin_parse_target(const char *method, const char *url, struct kb_admin_target *ret) {
        struct kb_admin_target t = { .endpoint = KB_ADMIN_NONE };
        const char *want = NULL;        /* the one method the endpoint takes */
        bool bad_method = false;

        if (!method || !url || url[0] != '/')
                return -EINVAL;
        /* Names are plain ASCII: an escaped byte is never needed, and
         * decoding would give two spellings to one key. */
        if (strchr(url, '%'))
                return -EINVAL;
        size_t plen = strcspn(url, "?#");
        if (url[plen] == '#')
                return -EINVAL;
        const char *query = url[plen] == '?' ? url + plen + 1 : NULL;
        const char *p = url;

#define IS(lit) (plen == strlen(lit) && strncmp(p, lit, plen) == 0)
        if (IS("/status")) {
                t.endpoint = KB_ADMIN_STATUS;
                want = "GET";
        } else if (IS("/keys")) {
                t.endpoint = KB_ADMIN_KEYS;
                want = "GET";
        } else if (IS("/teams")) {
                t.endpoint = KB_ADMIN_TEAMS;
                want = "GET";
        } else if (IS("/routes")) {
                t.endpoint = KB_ADMIN_ROUTES;
                want = "GET";
        } else if (IS("/reload")) {
                t.endpoint = KB_ADMIN_RELOAD;
                want = "POST";
        } else if (IS("/metrics")) {
                t.endpoint = KB_ADMIN_METRICS;
                want = "GET";
        } else if (plen > 8 && strncmp(p, "/routes/", 8) == 0) {
                const char *name = p + 8;
                size_t nlen = strcspn(name, "/?");
                if (nlen > plen - 8)
                        nlen = plen - 8;
                if (plen - 8 - nlen != strlen("/check") || strncmp(name + nlen, "/check", 6) != 0)
                        return -ENOENT;
                if (!kb_admin_key_name_valid(name, nlen))
                        return -EBADMSG;
                memcpy(t.name, name, nlen);
                t.name[nlen] = 0;
                t.endpoint = KB_ADMIN_ROUTE_CHECK;
                want = "POST";
        } else if (plen > 8 && strncmp(p, "/models/", 8) == 0) {
                /* A model name may hold '/': the endpoint is the last segment. */
                static const struct {
                        const char *seg, *method;
                        kb_admin_endpoint endpoint;
                } model_eps[] = {
                        { "/split", "PUT", KB_ADMIN_MODEL_SPLIT },
                        { "/promote", "POST", KB_ADMIN_MODEL_PROMOTE },
                        { "/promote", "DELETE", KB_ADMIN_MODEL_PROMOTE_ABORT },
                        { "/status", "GET", KB_ADMIN_MODEL_STATUS },
                        { "/baseline", "PUT", KB_ADMIN_MODEL_BASELINE },
                };
                size_t nlen = 0;
                for (size_t i = 0; i < ELEMENTSOF(model_eps); i++) {
                        size_t sl = strlen(model_eps[i].seg);
                        if (plen - 8 <= sl || strncmp(p + plen - sl, model_eps[i].seg, sl) != 0)
                                continue;
                        nlen = plen - 8 - sl;
                        t.endpoint = model_eps[i].endpoint;
                        want = model_eps[i].method;
                        if (streq(method, want))
                                break;
                }
                if (t.endpoint == KB_ADMIN_NONE)
                        return -ENOENT;
                if (!kb_admin_model_name_valid(p + 8, nlen))
                        return -EINVAL;
                memcpy(t.model, p + 8, nlen);
                t.model[nlen] = 0;
        } else if (plen > 6 && strncmp(p, "/keys/", 6) == 0) {
                const char *name = p + 6;
                size_t rest = plen - 6;
                size_t nlen = strcspn(name, "/?");
                if (nlen > rest)
                        nlen = rest;
                if (!kb_admin_key_name_valid(name, nlen))
                        return -EBADMSG;
                memcpy(t.name, name, nlen);
                t.name[nlen] = 0;
                const char *tail = name + nlen;
                size_t tlen = rest - nlen;
                if (tlen == 0) {
                        t.endpoint = streq(method, "DELETE") ? KB_ADMIN_KEY_DELETE : KB_ADMIN_KEY_SET;
                        bad_method = !streq(method, "PUT") && !streq(method, "DELETE");
                } else if (tlen == strlen("/rollback") && strncmp(tail, "/rollback", tlen) == 0) {
                        t.endpoint = KB_ADMIN_KEY_ROLLBACK;
                        want = "POST";
                } else
                        return -ENOENT;
        } else
                return -ENOENT;
#undef IS

        if (bad_method || (want && !streq(method, want)))
                return -EPERM;

        if (query) {
                /* Only a delete takes a parameter: ?version=N, N a positive
                 * integer in canonical form. */
                if (t.endpoint != KB_ADMIN_KEY_DELETE || strncmp(query, "version=", 8) != 0)
                        return -EINVAL;
                const char *v = query + 8;
                if (!*v || *v == '0' || strspn(v, "0123456789") != strlen(v) || strlen(v) > 10)
                        return -ERANGE;
                unsigned long long n = strtoull(v, NULL, 10);
                if (n == 0 || n > UINT32_MAX)
                        return -ERANGE;
                t.version = (unsigned) n;
        }
        *ret = t;
        return 0;
}

static void admin_on_request(struct kb_conn *c, struct kb_http_request *req, void *userdata) {
        struct kb_broker *b = userdata;
        struct admin_conn *ac = kb_conn_get_userdata(c);
        const struct kb_identity *id = ac ? ac->identity : NULL;
        struct kb_admin_target t = {};

        /* Checked per request against the running config, so a reload that
         * removes an admin takes effect on open connections too. */
        if (!kb_admin_peer_allowed(&b->config->agent, id)) {
                kb_admin_body_wipe(req);
                if (id)
                        kb_admin_error(c, 403, "forbidden", "uid %u is not allowed on the admin socket",
                                       (unsigned) id->uid);
                else
                        kb_admin_error(c, 403, "forbidden", "the peer's credentials are unknown");
                return;
        }

        int r = kb_admin_parse_target(req->method, req->url, &t);
        if (r < 0)
                kb_admin_body_wipe(req);
        switch (r) {
        case 0:
                break;
        case -ENOENT:
                kb_admin_error(c, 404, "not_found", "no endpoint %s %s", req->method, req->path);
                return;
        case -EPERM:
                kb_admin_error(c, 405, "method_not_allowed", "method %s is not allowed on %s", req->method,
                               req->path);
                return;
        case -EBADMSG:
                kb_admin_error(c, 400, "invalid_request",
                               "invalid key name: 1 to %d of A-Z a-z 0-9 . _ -, without \"..\"",
                               KB_ADMIN_KEY_NAME_MAX);
                return;
        case -ERANGE:
                kb_admin_error(c, 400, "invalid_request", "version must be a positive integer");
                return;
        default:
                kb_admin_error(c, 400, "invalid_request",
                               "invalid request target (no percent-encoding; only DELETE takes ?version=N)");
                return;
        }

        /* Only PUT /keys/NAME has a use for a body; anything else sent
         * might be a misdirected secret. */
        if (t.endpoint != KB_ADMIN_KEY_SET && t.endpoint != KB_ADMIN_ROUTE_CHECK && t.endpoint != KB_ADMIN_MODEL_SPLIT &&
            t.endpoint != KB_ADMIN_MODEL_PROMOTE && t.endpoint != KB_ADMIN_MODEL_BASELINE)
                kb_admin_body_wipe(req);

        switch (t.endpoint) {
        case KB_ADMIN_STATUS:
                serve_status(c, b);
                break;
        case KB_ADMIN_KEYS:
                kb_admin_serve_keys(c, b);
                break;
        case KB_ADMIN_TEAMS:
                kb_admin_serve_teams(c, b);
                break;
        case KB_ADMIN_ROUTES:
                serve_routes(c, b);
                break;
        case KB_ADMIN_RELOAD:
                serve_reload(c, b);
                break;
        case KB_ADMIN_METRICS:
                serve_metrics(c, b);
                break;
        case KB_ADMIN_ROUTE_CHECK:
                serve_route_check(c, b, req, &t, ac);
                break;
        case KB_ADMIN_MODEL_SPLIT:
                kb_admin_serve_model_split(c, b, req, &t, id->uid);
                break;
        case KB_ADMIN_MODEL_PROMOTE:
        case KB_ADMIN_MODEL_PROMOTE_ABORT:
                kb_admin_serve_promote(c, b, req, &t, id->uid);
                break;
        case KB_ADMIN_MODEL_STATUS:
                kb_admin_serve_model_status(c, b, &t);
                break;
        case KB_ADMIN_MODEL_BASELINE:
                kb_admin_serve_baseline(c, b, req, &t, id->uid);
                break;
        case KB_ADMIN_KEY_SET:
        case KB_ADMIN_KEY_ROLLBACK:
        case KB_ADMIN_KEY_DELETE:
                kb_admin_serve_key_change(c, b, req, &t, id->uid);
                break;
        default:
                kb_admin_error(c, 500, "internal_error", "unrouted endpoint");
        }
}

/* ---- connections ---- */

static int admin_on_accept(struct kb_conn *c, void *userdata) {
        struct admin_conn *ac = calloc(1, sizeof(*ac));

        if (!ac)
                return -ENOMEM;
        /* Nobody is refused here: a peer we cannot identify still gets a
         * 403 with a reason on each request. */
        if (kb_identity_from_socket(kb_conn_fd(c), &ac->identity) < 0)
                ac->identity = NULL;
        kb_conn_set_userdata(c, ac);
        return 0;
}

static void admin_on_close(struct kb_conn *c, void *userdata) {
        struct admin_conn *ac = kb_conn_get_userdata(c);

        if (!ac)
                return;
        ac->preflight = kb_preflight_free(ac->preflight);
        kb_identity_free(ac->identity);
        free(ac);
        kb_conn_set_userdata(c, NULL);
}

static void admin_write_error(struct kb_conn *c, const char *path, int status, const char *code,
                              const char *message, void *userdata) {
        static const struct kb_http_header h[] = {
                { "content-type", "application/json" },
        };
        json_t *j = error_json(code ?: "invalid_request", message ?: kb_http_status_reason(status));
        _cleanup_free_ char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;

        json_decref(j);
        (void) kb_conn_respond(c, status, h, ELEMENTSOF(h), s ?: "{}", s ? strlen(s) : 2);
}

const struct kb_http_ops kb_admin_ops = {
        .on_accept = admin_on_accept,
        .on_request = admin_on_request,
        .write_error = admin_write_error,
        .on_close = admin_on_close,
};

struct kb_http_limits kb_admin_limits(void) {
        return (struct kb_http_limits) {
                .max_header_bytes = 16 * 1024,
                .max_body = 64 * 1024,
                .header_timeout_usec = 10 * USEC_PER_SEC,
                .idle_timeout_usec = 60 * USEC_PER_SEC,
                .max_connections = 32,
        };
}
