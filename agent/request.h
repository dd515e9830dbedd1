/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 5 of 12, the call: calls layers 6, 9. */

/* The request's state, shared by the request path (api, metering, proxy,
 * shadow, journal-records); request.c's helpers call metering.c (rate-limit
 * headers) and upload.c only.
 *
 * One app call, carried one way through the modules:
 * http -> api -> identity -> router -> metering -> proxy -> upstream ->
 * usage tap -> http, and on finish -> journal. It owns all per-call state. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "config.h"
#include "endpoint.h"
#include "http.h"
#include "identity.h"
#include "usage.h"
#include "util.h"

typedef enum kb_outcome {
        KB_OUTCOME_OK,
        KB_OUTCOME_QUOTA_REJECTED,
        KB_OUTCOME_FORBIDDEN,
        KB_OUTCOME_MODEL_NOT_FOUND,
        KB_OUTCOME_INVALID_REQUEST,
        KB_OUTCOME_UPSTREAM_ERROR,
        KB_OUTCOME_UPSTREAM_TIMEOUT,
        KB_OUTCOME_STREAM_INTERRUPTED,
        KB_OUTCOME_CLIENT_ABORT,
        KB_OUTCOME_BROKER_OVERLOADED,   /* our own shortage (fds), not the provider's */
        _KB_OUTCOME_MAX,
} kb_outcome;

const char *kb_outcome_to_string(kb_outcome o);

struct kb_broker;
struct kb_upstream_call;
struct kb_key;
struct kb_reservation;
struct kb_price;
struct kb_fleet_hold;
struct kb_admit_verdict;
struct kb_upload;
struct kb_fleet_lookup;
struct kb_shadow_sample;

/* kb_request_fail(): status 0 is none. */
struct kb_failure {
        int status;
        const char *code;               /* static: "upstream_timeout", ... */
        char *message;
};

struct kb_request;
/* What the caller does with a call proxy.c is done with: its answer is
 * complete, cut, or not begun with r->failure set (kb_request_fail()). */
typedef void (*kb_proxy_done_t)(struct kb_request *r);

struct kb_request {
        struct kb_broker *broker;
        LIST_ENTRY(kb_request) live;
        char id[33];                    /* 128-bit random, hex */
        struct kb_conn *conn;
        struct kb_http_request *http;
        struct kb_config *config;       /* ref held for the call's life */
        const struct kb_identity *identity; /* owned by the connection */
        const struct kb_team *team;     /* NULL before identity resolved a team */

        kb_endpoint endpoint;
        kb_family family;
        const struct kb_endpoint_def *def; /* the endpoint table's row; NULL before the path matched */
        char object_id[KB_OBJECT_ID_MAX + 1]; /* the path's {id}, or the id a create made; "" none */
        struct kb_target own_target;    /* a call without a model: its route alone */
        char *pin_key;                  /* an object's call: the key name and version that made it */
        unsigned pin_key_version;
        bool hold_answer;               /* a list: the answer is filtered to the team's objects at its end */
        bool multipart;                 /* the body is multipart/form-data */
        uint64_t characters;            /* speech: characters of the input to be spoken */
        uint64_t form_file_bytes;       /* multipart: bytes of its file parts (not counted as tokens) */
        struct kb_upload *upload;       /* a streamed upload (upload.h), or NULL */
        struct kb_fleet_lookup *object_lookup; /* the quota store asked about object_id */
        bool store_asked;               /* ... once per call: its answer resumes serve_object */
        /* a batch's create: what its input file asks, checked at admission */
        uint64_t batch_est_tokens;
        const struct kb_price *batch_price;
        char *model;                    /* as asked */
        const struct kb_model *model_cfg;
        const struct kb_target *target;
        const struct kb_route *route;
        char *key_label;                /* "name@version", never the secret */
        bool stream;
        bool hide_usage_chunk;          /* we added stream_options.include_usage */

        struct kb_key *key;             /* the key version this call started with */
        char *upstream_url;
        char **upstream_headers;        /* "Name: value", without the credential */
        size_t n_upstream_headers;
        struct kb_buf upstream_body;    /* rewritten body sent upstream */
        struct kb_upstream_call *call;
        struct kb_usage_tap *tap;
        struct kb_buf out;              /* bytes from the tap waiting for the conn */
        struct kb_shadow_sample *shadow; /* sampled for a shadow call (shadow.h), or NULL */

        int status;                     /* to the app */
        long upstream_status;           /* 0 when no upstream answer */
        char *upstream_request_id;      /* from x-request-id / request-id headers */
        kb_outcome outcome;
        bool response_started;          /* status line sent to the app */
        bool sse;                       /* the response is an event stream */
        bool paused;                    /* upstream paused for backpressure */
        bool in_upstream_cb;            /* inside an upstream callback: the call must not be cancelled now */
        bool finished;
        unsigned attempts;
        char *fallback_from;
        int64_t cost_microusd;

        /* Metering (metering.c) */
        struct kb_reservation *reservation;
        uint64_t est_input_tokens;      /* reserved before forwarding */
        uint64_t est_output_tokens;
        const struct kb_price *price;   /* NULL: unpriced */
        uint64_t delivered_deltas;      /* output events the app got before a quota cut */
        bool quota_cut;                 /* the stream was cut at a limit */
        const char *quota_cut_type;     /* its OpenAI error type: rate_limit_error or insufficient_quota */
        struct kb_usage billed;         /* what the record and the quota settle say; strings borrowed from the tap */
        bool billed_set;
        uint64_t seq;                   /* settle sequence, for replay after a crash */
        uint64_t settled_usec;          /* realtime the quota counted it at (0: never reserved) */
        uint64_t admitted_usec;         /* realtime of the reservation */
        /* A team counted in the quota store (metering.c, fleet-quota.h). */
        struct kb_fleet_hold *fleet_hold; /* the store's reservation, or NULL */
        bool fleet_counted;             /* a fleet team's call: its settle goes to the store */
        bool fleet_view;                /* the store's minute windows below are set */
        uint64_t fleet_minute_requests, fleet_minute_tokens, fleet_newest_tokens_k;
        /* api.c's next step once the quota store answered (admitted or not) */
        void (*admitted)(struct kb_request *r, const struct kb_admit_verdict *v);

        /* Fallback (proxy.c): the plan, and the attempt under way. */
        struct kb_candidate *candidates; /* router.h; into model_cfg */
        size_t n_candidates;
        size_t next_candidate;
        bool add_include_usage;
        bool attempt_active;            /* router acquired; feedback pending */
        bool attempt_probe;             /* the attempt is the route's half-open probe */
        bool attempt_fallback;          /* tried as a fallback line */
        bool attempt_answered;          /* response headers came */
        bool retrying;                  /* abandoned for the next candidate (retry_on status) */
        uint64_t attempt_start_usec;
        uint64_t attempt_ttfb_usec;
        uint64_t retry_delay_usec;      /* Retry-After of the failed attempt, capped */
        struct sd_event_source *retry_timer;
        int last_error;                 /* why the last attempt failed: -errno, or the HTTP status */
        char *last_error_message;
        kb_proxy_done_t proxy_done;     /* api.c's, told once proxy.c is through */

        /* A failure decided below api.c (proxy.c, an upload): api.c answers
         * it in the family's shape if no answer began. */
        struct kb_failure failure;

        uint64_t start_usec;            /* monotonic */
        uint64_t ttfb_usec;             /* upstream first byte, relative to start; 0 if none */
        uint64_t latency_usec;          /* set at finish */
};

/* request.c: r failed with status and code (a static string), which api.c
 * answers in the family's shape unless an answer began; sets r->outcome.
 * The message is formatted now. */
void kb_request_fail(struct kb_request *r, int status, const char *code, kb_outcome outcome, const char *fmt, ...)
        _printf_(5, 6);
/* request.c: an upload that failed (upload.h's -errno): 400, 413, 408 or
 * 500 as kb_request_fail() says it, nothing for an app that left (499). */
void kb_request_fail_upload(struct kb_request *r, int error);
/* request.c: response headers every answer carries (request id, team,
 * route, the team's x-ratelimit-*), appended to h (which has room for
 * cap). */
size_t kb_request_answer_headers(struct kb_request *r, struct kb_http_header *h, size_t n, size_t cap,
                                 char *scratch, size_t scratch_size);
