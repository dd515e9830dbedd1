/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 2 of 12, admin: calls layers 3, 5, 6, 8, 10-12. */

/* The admin socket: HTTP/1.1 + JSON for operators (keybrokerctl). Peers are
 * allowed by peer credentials only (admin_users / admin_groups; root when
 * both are empty); anyone else gets 403. Endpoints per DESIGN "Admin API". */

#include "http.h"

/* userdata: struct kb_broker * */
extern const struct kb_http_ops kb_admin_ops;

/* Limits for the admin socket (small: its callers are few and trusted only
 * after the peer check). */
struct kb_http_limits kb_admin_limits(void);

/* ---- shared by admin.c and admin-keys.c (exposed for unit tests) ---- */

#include <jansson.h>
#include <stdbool.h>

#include "config.h"
#include "identity.h"

struct kb_broker;

#define KB_ADMIN_KEY_NAME_MAX 128
#define KB_ADMIN_ISO8601_MAX 32 /* "2026-11-25T07:00:00Z" and room */

typedef enum kb_admin_endpoint {
        KB_ADMIN_NONE,
        KB_ADMIN_STATUS,        /* GET /status */
        KB_ADMIN_KEYS,          /* GET /keys */
        KB_ADMIN_KEY_SET,       /* PUT /keys/NAME */
        KB_ADMIN_KEY_ROLLBACK,  /* POST /keys/NAME/rollback */
        KB_ADMIN_KEY_DELETE,    /* DELETE /keys/NAME[?version=N] */
        KB_ADMIN_TEAMS,         /* GET /teams */
        KB_ADMIN_ROUTES,        /* GET /routes */
        KB_ADMIN_RELOAD,        /* POST /reload */
        KB_ADMIN_ROUTE_CHECK,   /* POST /routes/NAME/check */
        KB_ADMIN_MODEL_SPLIT,   /* PUT /models/NAME/split */
        KB_ADMIN_METRICS,       /* GET /metrics (metrics.c) */
        KB_ADMIN_MODEL_PROMOTE, /* POST /models/NAME/promote (admin-promote.c) */
        KB_ADMIN_MODEL_PROMOTE_ABORT, /* DELETE /models/NAME/promote */
        KB_ADMIN_MODEL_STATUS,  /* GET /models/NAME/status */
        KB_ADMIN_MODEL_BASELINE, /* PUT /models/NAME/baseline */
} kb_admin_endpoint;

#define KB_ADMIN_MODEL_NAME_MAX 256

struct kb_admin_target {
        kb_admin_endpoint endpoint;
        char name[KB_ADMIN_KEY_NAME_MAX + 1];   /* key endpoints, route check */
        unsigned version;                       /* DELETE ?version=N; 0 = all */
        char model[KB_ADMIN_MODEL_NAME_MAX + 1]; /* model split */
};

/* Method and request target (path plus query) to an endpoint. Errors:
 * -ENOENT unknown path (404), -EPERM wrong method (405), -EBADMSG invalid
 * key name, -ERANGE invalid version, -EINVAL anything else malformed
 * (percent-encoding, fragment, an unexpected query) (all 400). */
int kb_admin_parse_target(const char *method, const char *url, struct kb_admin_target *ret);
/* [A-Za-z0-9._-]{1,128}, without "..", not ".". */
bool kb_admin_key_name_valid(const char *s, size_t n);
/* admin_users / admin_groups (uid, primary or supplementary gid); root only
 * when both are empty. A NULL identity is never allowed. */
bool kb_admin_peer_allowed(const struct kb_agent_config *a, const struct kb_identity *id);

/* "2026-11-25T07:00:00Z" from realtime µs. */
int kb_admin_iso8601(uint64_t realtime_usec, char ret[static KB_ADMIN_ISO8601_MAX]);
/* The same as a JSON string; null for 0 (unknown / never). */
json_t *kb_admin_time_json(uint64_t realtime_usec);

/* Answer with j (consumed; NULL means it could not be built: 500). */
void kb_admin_respond(struct kb_conn *c, int status, json_t *j);
/* {"error":{"message","code"}} */
void kb_admin_error(struct kb_conn *c, int status, const char *code, const char *fmt, ...) _printf_(4, 5);

/* admin-keys.c */
void kb_admin_serve_keys(struct kb_conn *c, struct kb_broker *b);
/* admin-teams.c: GET /teams. */
void kb_admin_serve_teams(struct kb_conn *c, struct kb_broker *b);
void kb_admin_serve_key_change(struct kb_conn *c, struct kb_broker *b, struct kb_http_request *req,
                               const struct kb_admin_target *t, uid_t admin_uid);
/* Zero a request body that may hold a secret. */
void kb_admin_body_wipe(struct kb_http_request *req);
/* The secret a PUT carries: one trailing "\n" or "\r\n" stripped, then
 * 1..KB_KEY_MAX_BYTES bytes without control characters; *ret_why says what
 * is wrong otherwise (-EINVAL). */
int kb_admin_secret_from_body(const char *body, size_t len, size_t *ret_len, const char **ret_why);

/* admin-routes.c */
/* A model name as the admin API takes it in a path: 1..256 printable ASCII
 * characters without blanks, '[', ']', '*', '"', '\', '%', '?', '#'. */
bool kb_admin_model_name_valid(const char *s, size_t n);
/* The weights of m's targets now, as split and promote answers show them:
 * {"ROUTE":N}, or {"ROUTE/UPSTREAM_MODEL":N} for a route that is a target of
 * m twice. NULL on OOM. */
json_t *kb_admin_model_weights(struct kb_broker *b, const struct kb_model *m);
/* PUT /models/NAME/split: body {"weights":{"ROUTE":N,...}}. */
void kb_admin_serve_model_split(struct kb_conn *c, struct kb_broker *b, struct kb_http_request *req,
                                const struct kb_admin_target *t, uid_t admin_uid);
/* admin-promote.c: staged promotion (POST starts, DELETE aborts), the
 * model's promotion state and gates, and the baseline it is judged against. */
void kb_admin_serve_promote(struct kb_conn *c, struct kb_broker *b, struct kb_http_request *req,
                            const struct kb_admin_target *t, uid_t admin_uid);
void kb_admin_serve_model_status(struct kb_conn *c, struct kb_broker *b, const struct kb_admin_target *t);
void kb_admin_serve_baseline(struct kb_conn *c, struct kb_broker *b, struct kb_http_request *req,
                             const struct kb_admin_target *t, uid_t admin_uid);
/* Adds a route's runtime state to its GET /routes object: "circuit",
 * "consecutive_failures", "window_requests", "error_ratio",
 * "p50_latency_ms", "open_remaining_s". */
int kb_admin_route_state(json_t *o, struct kb_broker *b, const struct kb_route *route);
