/* SPDX-License-Identifier: MIT */
#pragma once

/* The daemon's long-lived state: the loop, the current config, keys, the
 * sockets, the upstream multi handle and the journal writer. main.c owns
 * it; api.c and proxy.c serve requests with it. */

#include <stdarg.h>
#include <stdint.h>
#include <sys/queue.h>
#include <systemd/sd-event.h>

#include "body.h"
#include "config.h"
#include "http.h"
#include "journal.h"
#include "keystore.h"
#include "quota.h"
#include "request.h"
#include "upstream.h"

struct kb_uid_count {
        uid_t uid;
        unsigned n;
};

struct kb_broker {
        sd_event *event;
        const char *config_path;
        uint64_t started_usec;          /* realtime */
        struct kb_config *config;       /* current; requests hold their own ref */
        struct kb_keystore *keys;
        struct kb_http_server *api;
        struct kb_http_server *admin;
        struct kb_upstream *upstream;
        struct kb_journal *journal;
        struct kb_metrics *metrics;     /* GET /metrics counters (metrics.h) */
        struct kb_quota *quota;
        struct kb_router *router;       /* circuits, splits, canaries (routing.c sets it up) */
        struct kb_objects *objects;     /* provider objects made through us, by team (objects.h) */
        struct kb_batch_poll *batch_poll; /* open batches retrieved in the background (batch-poll.h) */
        struct kb_fleet_objects *fleet_objects; /* the object table in the quota store, with store */
        sd_event_source *reseal_timer;  /* kb_keys_reseal_idle() while keys are readable */
        struct kb_keywatch *keywatch;   /* credentials_dir and the keystore file, on disk */
        struct kb_store *store;         /* [agent] quota_store: the fleet's Redis, or NULL */
        struct kb_fleet *fleet;         /* team quotas in it (fleet-quota.h), with store */
        struct kb_promoter *promoter;   /* staged promotions and baselines (promote.h) */
        struct kb_shadows *shadows;     /* shadow calls in flight and their daily spend (shadow.h) */
        char instance[33];              /* this host's broker identity, kept in state_dir */
        char hostname[256];             /* KEYBROKER_HOST of its records, read at start */
        uint64_t seq;                   /* last settle sequence number */

        struct kb_uid_count *uid_conns; /* open app connections per uid */
        size_t n_uid_conns;
        /* app connections refused by api.c's on_accept, by why */
        uint64_t n_refused_per_uid, n_refused_identity, n_refused_fds;
        uint64_t fd_warning_usec;       /* last "out of file descriptors" log line */

        LIST_HEAD(, kb_request) requests; /* alive, for the drain */
        uint64_t n_in_flight;           /* kb_requests alive */
        uint64_t peak_in_flight;        /* since the heap was last trimmed */
        sd_event_source *trim_timer;    /* kb_broker_in_flight_changed() */
        uint64_t n_requests;            /* served since start */
};

/* broker.c: open the sealed store and add credential files for c. On
 * failure *ret_error says what is wrong and what to do. */
int kb_broker_load_keys(const struct kb_config *c, struct kb_keystore **ret, char **ret_error);
/* broker.c: re-read config and keys and swap them in atomically; a bad
 * config or keystore is rejected (journaled with its reason, returned in
 * *ret_error when non-NULL) and the running one stays. */
int kb_broker_reload(struct kb_broker *b, char **ret_error);

/* broker.c: watch the current config's key files (credentials_dir, the
 * keystore) and take a replaced one without a reload: the keys are read
 * again and swapped in as a reload does (requests in flight keep the version
 * they started with), each changed key journaled as "replaced" (or
 * "removed"). Logs once what cannot be watched. */
int kb_broker_watch_keys(struct kb_broker *b);
void kb_broker_keys_changed(void *userdata);

/* broker.c: connect to the config's quota store (or drop the connection when
 * the config has none); on reload only when its settings changed. Its state
 * changes are logged and journaled (KB_MID_STORE). */
int kb_broker_connect_store(struct kb_broker *b, const struct kb_config *old);
/* broker.c: the share of a fleet team's limits this host enforces while the
 * store is away (offline_share, or 1 / brokers last seen). */
void kb_broker_offline_share(struct kb_broker *b);
/* broker.c: what the object table mirrors to the quota store. */
extern const struct kb_objects_mirror kb_broker_objects_mirror;
/* broker.c: disconnect from the quota store (at a reload that changes it, at
 * exit). */
void kb_broker_drop_store(struct kb_broker *b);

/* broker.c: done with a key opened for a request: kb_key_release() it and
 * make sure it is resealed within about a second once nothing uses it. */
void kb_broker_release_key(struct kb_broker *b, struct kb_key *k);

/* broker.c: n_in_flight changed (api.c, as a request starts and ends):
 * once a burst is over the heap is trimmed, so RSS comes back down. */
void kb_broker_in_flight_changed(struct kb_broker *b);

/* broker.c: this broker's identity in state_dir/instance (created on first
 * start): request records carry it so quota recovery replays only its own. */
int kb_broker_instance_id(const char *state_dir, char ret[33]);

/* What the broker's connections and upstream calls use and what it
 * refused, for /status and /metrics. */
struct kb_broker_capacity {
        size_t connections;             /* app connections being served */
        size_t refusing;                /* refused ones still being answered or drained */
        uint64_t refused_cap;           /* max_connections */
        uint64_t refused_per_uid;       /* max_connections_per_uid */
        uint64_t refused_fds;           /* out of file descriptors at accept */
        uint64_t refused_identity;      /* the caller could not be identified */
        struct kb_upstream_stats upstream;
        uint64_t fds_open;              /* this process's, counted in /proc/self/fd */
        uint64_t fds_limit;             /* RLIMIT_NOFILE soft limit */
};
/* broker.c */
void kb_broker_capacity(const struct kb_broker *b, struct kb_broker_capacity *ret);

/* The app socket's callbacks (api.c). */
extern const struct kb_http_ops kb_api_ops;
struct kb_http_limits kb_api_limits(const struct kb_config *c);

/* api.c: answer r with an error of the agent's own making, in the family's
 * shape, and finish it. */
void kb_api_fail(struct kb_request *r, int status, const char *code, kb_outcome outcome, const char *fmt, ...)
        _printf_(5, 6);
/* The same with an OpenAI "type" of the caller's (NULL: by status) and
 * extra response headers (retry-after). */
void kb_api_fail_full(struct kb_request *r, int status, const char *code, const char *openai_type,
                      kb_outcome outcome, const struct kb_http_header *extra, size_t n_extra, const char *fmt, ...)
        _printf_(8, 9);
/* The same without finishing the request. */
void kb_api_error(struct kb_request *r, int status, const char *code, kb_outcome outcome, const char *fmt, ...)
        _printf_(5, 6);
/* api.c: a complete JSON answer of status (the response ends; the request
 * does not: finish it). */
void kb_api_respond_json(struct kb_request *r, int status, const char *body);
/* api-objects.c: a call without a model (files, batches, videos, stored
 * responses, message batches): the object's owner and route checked, then
 * admitted; next(r, verdict) forwards it. */
typedef void (*kb_admitted_t)(struct kb_request *r, const struct kb_admit_verdict *v);
void kb_api_serve_object(struct kb_request *r, kb_admitted_t next);
/* api-objects.c: at finish, remember the object a create made (or forget a
 * deleted one). */
void kb_api_objects_done(struct kb_request *r);
/* api-objects.c: where a team's calls without a model go for a family. */
const struct kb_route *kb_api_default_route(const struct kb_config *c, const struct kb_team *t, kb_family f);
/* api.c: an upload that failed (upload.h's -errno), answered in the
 * family's shape (400, 413, 408; nothing for an app that left); the caller
 * finishes the request. */
void kb_api_upload_error(struct kb_request *r, int error);
/* api.c: end every request in flight (drain timeout): each gets its answer
 * cut the way an upstream failure would, and its journal record. */
void kb_api_cut_all(struct kb_broker *b);
/* api.c: response headers every answer carries (request id, team, route,
 * the team's x-ratelimit-*), appended to h (which has room for cap). */
size_t kb_api_common_headers(struct kb_request *r, struct kb_http_header *h, size_t n, size_t cap,
                             char *scratch, size_t scratch_size);
/* api.c: journal the request, end the response, free it. */
void kb_request_finish(struct kb_request *r);

/* metering.c: reserve what r may spend (estimate from the body).
 * KB_ADMIT_NOW: go on; KB_ADMIT_REFUSED: *ret says why (the caller
 * answers: 429 quota_exceeded, 403 for an unpriced model, 503 when the
 * quota store is away and quota_store_offline = deny, 500); KB_ADMIT_LATER:
 * the quota store is asked, and next(r, verdict) is called with the answer
 * (refusal KB_REFUSAL_NONE: go on). */
typedef enum kb_admit {
        KB_ADMIT_NOW,
        KB_ADMIT_REFUSED,
        KB_ADMIT_LATER,
} kb_admit;
typedef enum kb_refusal {
        KB_REFUSAL_NONE,
        KB_REFUSAL_QUOTA,               /* denial says which limit */
        KB_REFUSAL_UNPRICED,            /* no candidate has a price; first_route was the plan's first */
        KB_REFUSAL_STORE_AWAY,          /* a fleet team, the store away, quota_store_offline = deny */
        KB_REFUSAL_ERROR,               /* error: -errno of the reservation */
} kb_refusal;
struct kb_admit_verdict {
        kb_refusal refusal;
        struct kb_quota_denial denial;
        const char *first_route;
        int error;
};
kb_admit kb_metering_admit(struct kb_request *r, const struct kb_body_info *info, kb_admitted_t next,
                           struct kb_admit_verdict *ret);
/* metering.c: meter r's stream inline (the usage tap exists). */
void kb_metering_attach(struct kb_request *r);
/* metering.c: settle r to what it really used (called once, at finish). */
void kb_metering_settle(struct kb_request *r);
/* metering.c: the team's x-ratelimit-* headers. */
size_t kb_metering_headers(struct kb_request *r, struct kb_http_header *h, size_t n, size_t cap, char *scratch,
                           size_t scratch_size);

/* proxy.c: forward r (team, model, route resolved; body inspected) upstream. */
void kb_proxy_forward(struct kb_request *r, const char *upstream_model, bool add_include_usage);
/* proxy.c: end an answer that has begun but cannot complete: an error event
 * for a stream, a truncated body otherwise; outcome stream_interrupted. */
void kb_proxy_cut(struct kb_request *r, const char *why);
/* proxy.c: release proxy state of a request (upstream call, tap, key). */
void kb_proxy_release(struct kb_request *r);
/* proxy.c: the ordered candidates of r (model_cfg and family known); sets
 * r->target/r->route to the first. false when it answered instead: 400 when
 * the model has no route of the request's family, 503 when no target has a
 * weight and there is no fallback. */
bool kb_proxy_plan(struct kb_request *r);

/* routing.c: the broker's router: created and configured from b->config,
 * split overrides loaded from state_dir/splits.json, state changes
 * journaled (and a canary rollback persisted). */
int kb_routing_setup(struct kb_broker *b);
/* routing.c: after a reload swapped b->config in. */
void kb_routing_reconfigure(struct kb_broker *b);
/* routing.c: write the split overrides to state_dir/splits.json. */
int kb_routing_save(struct kb_broker *b);
/* routing.c: the delay a failed attempt asks for: retry-after-ms, else
 * Retry-After (seconds or an HTTP date, against now_realtime), at most cap;
 * 0 when absent or unparsable. */
uint64_t kb_retry_after_usec(const struct kb_http_header *h, size_t n, uint64_t now_realtime, uint64_t cap);
