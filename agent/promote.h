/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 8 of 12, decisions: calls layer 12. */

/* Staged promotion of a model's candidate route, and the baseline it is
 * compared with.
 *
 * A promotion moves a model's traffic to one target step by step: at step
 * S% the candidate gets S% of the weight of the model's targets of its
 * family and the others share the rest in the proportions they had before.
 * Each step holds until its gates pass on that step's own traffic (records
 * finished since the step began, on the candidate); a stop condition puts
 * the split from before the promotion back at once. Weights are set through
 * the router's split overrides (kb_router_set_split), so GET /routes and
 * splits.json show them.
 *
 * Library-like (the promoter, promote.c and promote-state.c): it never logs
 * and never calls up. Decisions go to the event callback its owner
 * registers (the broker journals them, saves the state and the splits);
 * time is passed in (CLOCK_MONOTONIC µs; realtime µs where it is kept).
 * The broker's side (the one-second timer, the journal, state_dir files,
 * reloads) is promote-loop.c, at the end of this header. */

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "request.h"
#include "router.h"

#define KB_PROMOTE_MAX_STEPS 20
#define KB_PROMOTE_MAX_HOLD_USEC (7 * 24 * 3600 * USEC_PER_SEC)
#define KB_PROMOTE_MAX_MIN_REQUESTS 1000000U
#define KB_PROMOTE_MAX_P95_MS (3600U * 1000U)
#define KB_PROMOTE_DEFAULT_MAX_ERROR_RATIO 0.02
#define KB_PROMOTE_DEFAULT_MIN_REQUESTS 20U
/* Latencies kept per step for its p95: the step's latest ones. */
#define KB_PROMOTE_LATENCIES 4096U
/* How often stop conditions and holds are looked at besides every request. */
#define KB_PROMOTE_TICK_USEC USEC_PER_SEC
/* The candidate as named: "ROUTE" or "ROUTE/UPSTREAM_MODEL". */
#define KB_PROMOTE_NAME_MAX 512U

struct kb_promote_plan {
        const char *route;                      /* the candidate, as named */
        unsigned steps[KB_PROMOTE_MAX_STEPS];   /* percent, strictly increasing, the last 100 */
        size_t n_steps;
        uint64_t hold_usec;                     /* > 0 */
        double max_error_ratio;                 /* 0..1 */
        uint64_t max_p95_ms;                    /* 0: no latency gate */
        bool require_usage;
        unsigned min_requests;                  /* ≥ 1 */
};

/* A plan with the defaults (error ratio 0.02, 20 requests) and nothing else. */
void kb_promote_plan_init(struct kb_promote_plan *p);
/* -EINVAL with *ret_why (static text) when the plan is not one. */
int kb_promote_plan_check(const struct kb_promote_plan *p, const char **ret_why);

typedef enum kb_promote_state {
        KB_PROMOTE_RUNNING,
        KB_PROMOTE_COMPLETED,
        KB_PROMOTE_ROLLED_BACK,
        KB_PROMOTE_ABORTED,
        _KB_PROMOTE_STATE_MAX,
} kb_promote_state;
const char *kb_promote_state_to_string(kb_promote_state s); /* "running", "completed", "rolled_back", "aborted" */

typedef enum kb_promote_event_kind {
        KB_PROMOTE_EV_STARTED,
        KB_PROMOTE_EV_STEP_REACHED,
        KB_PROMOTE_EV_GATE,
        KB_PROMOTE_EV_ROLLED_BACK,
        KB_PROMOTE_EV_COMPLETED,
        KB_PROMOTE_EV_ABORTED,
        _KB_PROMOTE_EV_MAX,
} kb_promote_event_kind;
/* KEYBROKER_EVENT: "started", "step_reached", "gate", "rolled_back", "completed", "aborted". */
const char *kb_promote_event_to_string(kb_promote_event_kind k);

/* One step's traffic on the candidate. Requests are the calls the route
 * answered or failed (outcomes ok, upstream_error, upstream_timeout,
 * stream_interrupted, model_not_found); errors all but ok. A provider's
 * 429 is an upstream_error: it counts as an error and on its own. */
struct kb_promote_figures {
        uint64_t requests, ok, errors;
        uint64_t upstream_429, timeouts, model_not_found, stream_interrupted;
        uint64_t missing_usage;                 /* ok 2xx answers with no input tokens */
        double error_ratio;                     /* errors / requests; 0 without requests */
        bool has_latency;
        uint64_t p50_ms, p95_ms;                /* nearest rank */
        double input_per_request, output_per_request, cost_microusd_per_request; /* over ok answers */
};

typedef enum kb_gate_state {
        KB_GATE_PENDING,                        /* not enough requests or time yet */
        KB_GATE_PASS,
        KB_GATE_FAIL,
        KB_GATE_OFF,                            /* not asked for */
        _KB_GATE_STATE_MAX,
} kb_gate_state;
const char *kb_gate_state_to_string(kb_gate_state s); /* "pending", "pass", "fail", "off" */

/* error_ratio, p95_ms, model_not_found, usage, requests, hold */
#define KB_PROMOTE_N_GATES 6
struct kb_promote_gate {
        const char *name;
        double value, limit;
        kb_gate_state state;
};

/* What a baseline says (PUT /models/NAME/baseline, promote-state.c). */
struct kb_baseline {
        uint64_t requests;
        double error_ratio;
        bool has_latency;
        uint64_t p50_ms, p95_ms;
        double input_per_request, output_per_request, cost_microusd_per_request;
        uint64_t saved_realtime;
        char *evidence;                         /* the evidence file, or NULL */
        json_t *doc;                            /* the whole document as saved */
};

struct kb_promote_view {
        const char *model, *route, *upstream_model;
        kb_promote_state state;
        const unsigned *steps;
        size_t n_steps;
        size_t step;                            /* 0-based index into steps */
        unsigned percent;
        uint64_t hold_usec, hold_left_usec;
        uint64_t started_realtime, step_started_realtime, finished_realtime;
        double max_error_ratio;
        uint64_t max_p95_ms;
        bool require_usage;
        unsigned min_requests;
        const char *reason;                     /* why it ended; NULL while running */
        int64_t admin_uid;                      /* who started it */
        struct kb_promote_figures fig;          /* this step's (the last step's once ended) */
        struct kb_promote_gate gates[KB_PROMOTE_N_GATES];
        const struct kb_split_entry *before;    /* the split from before the promotion */
        size_t n_before;
};

/* What the event callback gets; pointers are valid during the call only. */
struct kb_promote_event {
        kb_promote_event_kind kind;
        const struct kb_promote_view *view;
        const char *reason;                     /* in words */
        const char *gate;                       /* KB_PROMOTE_EV_GATE: "all" when passed, else the failing gate */
        bool gate_passed;
        const char *weights_before, *weights_after; /* "ROUTE=N,...": the split around this event; may be NULL */
        const struct kb_baseline *baseline;     /* the model's, or NULL */
        const char *comparison;                 /* the step's figures against it, in words; NULL without one */
        int64_t admin_uid;                      /* an admin's act; -1 otherwise */
        bool resumed;                           /* step_reached after a restart or a reload */
};

typedef void (*kb_promote_event_t)(void *userdata, const struct kb_promote_event *ev);

struct kb_promoter;

int kb_promoter_new(struct kb_router *router, struct kb_promoter **ret);
struct kb_promoter *kb_promoter_free(struct kb_promoter *p); /* accepts NULL; returns NULL */
void kb_promoter_set_event_handler(struct kb_promoter *p, kb_promote_event_t cb, void *userdata);

/* Take c as the running config (a reference is kept). Every running
 * promotion whose model or candidate is gone, or no longer a target of the
 * model's family, is aborted (what of the split from before can be put back
 * is); the others get their step's split set again, as weights from before
 * are kept. */
void kb_promoter_configure(struct kb_promoter *p, struct kb_config *c, uint64_t now, uint64_t now_realtime);

/* Start promoting plan->route for model. Errors (nothing changed;
 * *ret_error, malloc'd, says what): -ENOENT no such model; -EEXIST one is
 * running; -EINVAL a bad plan or an ambiguous name; -ENXIO no such route;
 * -ESRCH the route is not a target of the model; -EPROTOTYPE the route
 * speaks another family than the model's other targets; -EDOM no other
 * target of its family has a weight; -ENOMEM. */
int kb_promoter_start(struct kb_promoter *p, const char *model, const struct kb_promote_plan *plan, int64_t admin_uid,
                      uint64_t now, uint64_t now_realtime, char **ret_error);
/* Stop a running promotion and put the split from before back. -ENOENT
 * when none is running. */
int kb_promoter_abort(struct kb_promoter *p, const char *model, int64_t admin_uid, uint64_t now,
                      uint64_t now_realtime);

/* One finished request, as far as a promotion judges it. */
struct kb_promote_obs {
        const char *model;                      /* as configured */
        const char *route, *upstream_model;     /* the target that answered; route NULL: none */
        const char *fallback_from;              /* routes failed before it, "A,B"; may be NULL */
        kb_outcome outcome;
        int status;                             /* to the app */
        long upstream_status;
        uint64_t latency_usec;
        uint64_t input_tokens, output_tokens;
        int64_t cost_microusd;
};
void kb_promoter_observe(struct kb_promoter *p, const struct kb_promote_obs *o, uint64_t now, uint64_t now_realtime);
/* Holds and stop conditions of every running promotion; call every
 * KB_PROMOTE_TICK_USEC. */
void kb_promoter_tick(struct kb_promoter *p, uint64_t now, uint64_t now_realtime);
bool kb_promoter_running(const struct kb_promoter *p);

/* The model's promotion (running or the last one); -ENOENT when it never
 * had one. Pointers stay valid until the promoter changes. */
int kb_promoter_view(const struct kb_promoter *p, const char *model, uint64_t now, struct kb_promote_view *ret);
/* The candidate route of the model's running promotion, or NULL. */
const char *kb_promoter_candidate(const struct kb_promoter *p, const char *model);

/* The model's baseline, or NULL. */
const struct kb_baseline *kb_promoter_baseline(const struct kb_promoter *p, const char *model);
/* Keep b (taken over, also on failure) as the model's baseline. */
int kb_promoter_set_baseline(struct kb_promoter *p, const char *model, struct kb_baseline *b);
void kb_baseline_done(struct kb_baseline *b);

/* "error ratio 0.010 (baseline 0.002, higher); p95 812 ms (baseline 640 ms,
 * +27%); input tokens/request 11.0 (baseline 11.0), output 7.0 (baseline
 * 7.0)". malloc'd; NULL on OOM. */
char *kb_promote_compare_text(const struct kb_promote_figures *f, const struct kb_baseline *b);

/* ---- promote-state.c: promotions.json and baselines ---- */

/* The whole state (promotions, running or ended, and baselines) as the
 * JSON document state_dir/promotions.json holds. */
json_t *kb_promoter_to_json(const struct kb_promoter *p);
/* Take a document written by kb_promoter_to_json() (call after
 * kb_promoter_configure). Running promotions resume at their step with
 * fresh counters and a fresh hold (step_reached, resumed); those that
 * cannot resume are aborted as on a reload. -EBADMSG: not such a document
 * (nothing taken). */
int kb_promoter_load_json(struct kb_promoter *p, const json_t *doc, uint64_t now, uint64_t now_realtime);
/* Atomically: a temporary file, fsync, rename; 0600. */
int kb_promote_write_file(const char *path, const json_t *doc);
/* The document in path; NULL in *ret when there is none. -EBADMSG when it
 * is not JSON or too large. */
int kb_promote_read_file(const char *path, json_t **ret);

/* A baseline from the body of PUT /models/NAME/baseline: {"routes":[…],
 * "since","until" (realtime µs or null), "requests" (≥ 1), "errors":{OUTCOME:N…},
 * "upstream_429", "error_ratio" (0..1), "p50_ms", "p95_ms" (or null),
 * "input_tokens_per_request", "output_tokens_per_request",
 * "cost_microusd_per_request"}, nothing else. -EINVAL with *ret_why. The
 * document is kept in ret->doc. */
int kb_baseline_from_json(const json_t *body, struct kb_baseline *ret, const char **ret_why);

/* ---- promote-loop.c: the broker's side ---- */

struct kb_broker;
struct kb_request;

/* Create b->promoter on b->router and the current config, load
 * state_dir/promotions.json, and look at running promotions every second.
 * Call once the loop and the journal exist. */
int kb_promote_setup(struct kb_broker *b);
/* After a reload swapped b->config in (and the router took it). */
void kb_promote_reconfigure(struct kb_broker *b);
void kb_promote_teardown(struct kb_broker *b);
/* A finished request (kb_request_finish). */
void kb_promote_observe(struct kb_broker *b, const struct kb_request *r);
/* Save state_dir/promotions.json (and the splits) now. */
int kb_promote_save(struct kb_broker *b);
