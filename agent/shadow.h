/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 5 of 12, the call: calls layers 7, 9-12. */

/* Shadow comparison ([model:*] shadow =): a sample of a model's live
 * requests is sent again to a candidate route once the real answer has
 * been handed to the app, and the two answers are compared (status class,
 * answer shape, usage, latency, cost) and journaled as a pair. The app
 * never waits for a shadow nor sees it; a shadow is charged to its own
 * daily cap (kept in state_dir/shadow.json), never to the team's quota.
 *
 * api.c decides the sample when it forwards (kb_shadow_sample), proxy.c
 * hands it the primary's answer bytes as they pass (kb_shadow_capture),
 * and api.c starts the shadow when the request finishes (kb_shadow_start).
 * Never calls up into api.c. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct kb_broker;
struct kb_request;
struct kb_shadows;              /* the broker's: calls in flight, the day's spend */
struct kb_shadow_sample;        /* one sampled request, until its shadow starts */

/* Shadow calls in flight per broker; a sampled request beyond them is
 * skipped (counted, journaled at most once a minute per model). */
#define KB_SHADOW_MAX_IN_FLIGHT 16
/* The most of either answer kept to read its shape; beyond: "unknown". */
#define KB_SHADOW_CAPTURE_MAX ((size_t) 1024 * 1024)
/* A budget_reached or skipped_busy event is journaled at most this often
 * per model (budget_reached: once per UTC day and crossing anyway). */
#define KB_SHADOW_SKIP_REPORT_USEC (60 * USEC_PER_SEC)

int kb_shadows_new(struct kb_broker *b, struct kb_shadows **ret);
/* Cancels every shadow call in flight (no record: it cannot be compared),
 * releases their keys and writes the day's spend. Accepts NULL. Before
 * kb_upstream_free() and before the loop goes. */
struct kb_shadows *kb_shadows_free(struct kb_shadows *s);
/* The day's spend as a previous run left it in path (a missing file is an
 * empty one). -EBADMSG for a file that is not a shadow spend file. */
int kb_shadows_load(struct kb_shadows *s, const char *path);
/* Draining: no new shadow starts; those in flight run on until exit. */
void kb_shadows_stop(struct kb_shadows *s);

/* At forward time (team, model, endpoint, body known; the request still
 * has its HTTP request): whether r is mirrored. 1 with *ret set (the copies
 * the shadow needs: body with the shadow's model, headers, URL), 0 when not
 * sampled or not eligible (no shadow, not a JSON call with a model, budget
 * spent, calls in flight at the cap, draining), -ENOMEM. */
int kb_shadow_sample(struct kb_shadows *s, const struct kb_request *r, struct kb_shadow_sample **ret);
/* The primary's upstream answer bytes as they pass (bounded copy). */
void kb_shadow_capture(struct kb_shadow_sample *x, const void *buf, size_t len);
/* At finish, after the answer went to the connection: start the shadow if
 * the provider decided the primary's outcome (any upstream answer; not for
 * an app that left, a stream cut at a quota limit, or no answer at all).
 * Takes x in every case. */
void kb_shadow_start(struct kb_shadows *s, struct kb_shadow_sample *x, const struct kb_request *r);
void kb_shadow_sample_free(struct kb_shadow_sample *x);

/* ---- shadow-shape.c: an answer's shape, compared ---- */

typedef enum kb_shape_kind {
        KB_SHAPE_NONE,          /* no answer body (transport error) */
        KB_SHAPE_JSON,          /* names: the top-level members */
        KB_SHAPE_SSE,           /* names: event types ("event:", else the data's "object"/"type", and [DONE]) */
        KB_SHAPE_OTHER,         /* a body that is neither */
        KB_SHAPE_UNKNOWN,       /* over KB_SHADOW_CAPTURE_MAX: not read */
} kb_shape_kind;

#define KB_SHAPE_MAX_NAMES 64
#define KB_SHAPE_NAME_MAX 64

struct kb_shape {
        kb_shape_kind kind;
        bool tools;             /* tool calls present */
        size_t n_names;
        char names[KB_SHAPE_MAX_NAMES][KB_SHAPE_NAME_MAX + 1]; /* sorted, unique, printable */
};

/* Read the shape of an answer body (sse: the answer was text/event-stream;
 * overflowed: more came than was kept). Never fails: what cannot be read
 * is OTHER. */
void kb_shape_read(struct kb_shape *ret, bool sse, const char *buf, size_t len, bool overflowed);
bool kb_shape_equal(const struct kb_shape *a, const struct kb_shape *b);
/* "2xx", "4xx", "5xx", "transport" (status 0) or "other". */
const char *kb_shape_status_class(long status);
/* A short text of how primary p and shadow s differ (status classes pc
 * and sc, kind, names only on one side, tool calls), "" when they do not. */
void kb_shape_diff(const char *pc, const struct kb_shape *p, const char *sc, const struct kb_shape *s, char *buf,
                   size_t size);

/* ---- shadow-budget.c: the day's spend per model ---- */

/* Models tracked at most (a loaded file with more is refused). */
#define KB_SHADOW_BUDGET_MAX_MODELS 4096
#define KB_SHADOW_BUDGET_FILE_MAX ((size_t) 1024 * 1024)

struct kb_shadow_budget;

int kb_shadow_budget_new(struct kb_shadow_budget **ret);
struct kb_shadow_budget *kb_shadow_budget_free(struct kb_shadow_budget *b);
/* The model's spend (micro-USD) on now's UTC day. */
int64_t kb_shadow_budget_spent(const struct kb_shadow_budget *b, const char *model, uint64_t now_realtime);
/* Add cost to the model's day. 1 when this reached cap (spend >= cap) for
 * the first time since it was last below it: journal budget_reached once;
 * 0 otherwise; -ENOMEM, -E2BIG (too many models). */
int kb_shadow_budget_add(struct kb_shadow_budget *b, const char *model, int64_t cost, int64_t cap,
                         uint64_t now_realtime);
bool kb_shadow_budget_dirty(const struct kb_shadow_budget *b);
/* Atomically (temporary file, fsync, rename): {"version":1,"models":
 * {NAME:{"day":"YYYY-MM-DD","spent_microusd":N,"budget_reached":B}}}. */
int kb_shadow_budget_save(struct kb_shadow_budget *b, const char *path);
/* Entries of another day than now's are dropped. 0 for a missing file. */
int kb_shadow_budget_load(struct kb_shadow_budget *b, const char *path, uint64_t now_realtime);

/* ---- the record (journal-records.c, KB_MID_SHADOW) ---- */

struct kb_shadow_record {
        const char *event;              /* "pair", "budget_reached", "skipped_busy" */
        const char *model;
        const char *shadow_route, *shadow_upstream_model;
        /* pair */
        const char *request_id, *team, *endpoint, *route, *upstream_model;
        const char *shadow_key;         /* name@version, never the secret */
        bool stream;
        long status, shadow_status;     /* upstream statuses; the shadow's 0: no answer */
        const char *status_class;       /* the primary's: 2xx, 4xx, 5xx, transport (its stream was cut), other */
        const char *shadow_error;       /* the shadow's class: none (2xx), 4xx, 5xx, transport, other */
        bool shape_match;
        const char *shape_diff;
        uint64_t input_tokens, output_tokens, shadow_input_tokens, shadow_output_tokens;
        uint64_t latency_ms, shadow_latency_ms;
        int64_t cost_microusd, shadow_cost_microusd;
        bool shadow_priced;             /* the shadow route prices its model */
        /* budget_reached */
        int64_t spent_microusd, budget_microusd;
        /* skipped_busy */
        uint64_t skipped;
        const char *host;
        bool test;
        uint64_t realtime_usec;
};
