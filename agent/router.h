/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 8 of 12, decisions: calls layer 12. */

/* Model name -> the ordered candidates of one request, and the runtime
 * state that orders them: a circuit breaker per route, recent error ratio
 * and latency per route, weight overrides ("model split") and canary stop
 * conditions per target.
 *
 * The state (struct kb_router) belongs to the broker and outlives configs:
 * kb_router_configure() at start and on every reload keeps what it knows of
 * routes and targets that are still configured. Requests hold their own
 * config, so the router keys everything by name (route; model + route +
 * upstream model for targets) and never keeps pointers into a config.
 *
 * Library-like: it never logs. State changes are handed to the event
 * callback (the broker journals them); time is always passed in
 * (CLOCK_MONOTONIC µs) so tests can be exact. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"

/* Pick a target of the given family by weight (targets with weight 0 are
 * never picked by weight). rnd is a uniform random 32-bit value (passed in so
 * tests can be exact). -ENOENT when the model has no target of that family
 * (with a non-zero weight). Config weights only: no runtime state. */
int kb_router_pick(const struct kb_model *m, kb_family family, uint32_t rnd, const struct kb_target **ret);

struct kb_router;

typedef enum kb_circuit {
        KB_CIRCUIT_CLOSED,
        KB_CIRCUIT_OPEN,
        KB_CIRCUIT_HALF_OPEN,   /* cooled down: the next attempt is the one probe */
        _KB_CIRCUIT_MAX,
} kb_circuit;

const char *kb_circuit_to_string(kb_circuit c);

typedef enum kb_route_event_kind {
        KB_ROUTE_CIRCUIT_OPENED,
        KB_ROUTE_CIRCUIT_HALF_OPEN,
        KB_ROUTE_CIRCUIT_CLOSED,
        KB_ROUTE_CANARY_ROLLED_BACK,
        KB_ROUTE_SPLIT_CHANGED,
        _KB_ROUTE_EVENT_MAX,
} kb_route_event_kind;

/* "circuit_opened", "circuit_half_open", "circuit_closed",
 * "canary_rolled_back", "split_changed" (KEYBROKER_EVENT). */
const char *kb_route_event_to_string(kb_route_event_kind k);

/* What the event callback gets; strings are valid during the call only. */
struct kb_route_event {
        kb_route_event_kind kind;
        const char *route;              /* NULL for split_changed */
        const char *model;              /* canary and split events; else NULL */
        const char *weights;            /* canary and split: "ROUTE=N,..." after the change */
        const char *reason;             /* human words: why it changed */
        double error_ratio;             /* the ratio that decided (circuit_opened by ratio, canary) */
        uint64_t requests;              /* attempts that ratio is over */
        unsigned consecutive_failures;
        int64_t admin_uid;              /* split_changed by an admin; -1 otherwise */
};

typedef void (*kb_router_event_t)(void *userdata, const struct kb_route_event *ev);

/* Most candidates a plan holds (targets, then fallbacks). */
#define KB_ROUTER_MAX_CANDIDATES 64
/* Latencies kept per route for the p50. */
#define KB_ROUTER_LATENCY_RING 128
/* Buckets of a breaker's sliding window. */
#define KB_ROUTER_WINDOW_BUCKETS 10

int kb_router_new(struct kb_router **ret);
struct kb_router *kb_router_free(struct kb_router *r); /* accepts NULL; returns NULL */
void kb_router_set_event_handler(struct kb_router *r, kb_router_event_t cb, void *userdata);

/* Take over c's routes and targets. A route or target (model, route,
 * upstream model) still configured keeps its state (circuit, counters,
 * overrides, canary history); the rest is dropped. -ENOMEM leaves r as it
 * was. */
int kb_router_configure(struct kb_router *r, const struct kb_config *c, uint64_t now);

struct kb_candidate {
        const struct kb_target *target; /* into the model the plan was made for */
        bool fallback;
};

/* The ordered candidates of one request for model m and the request's
 * family: one target chosen by (effective) weight among those whose
 * circuit lets an attempt through, then the model's other targets with a
 * non-zero weight in config order, then the fallbacks in order (a fallback
 * identical to an earlier candidate is left out). Candidates of another
 * family are skipped. rnd as for kb_router_pick(). Returns the number of
 * candidates (≥ 1) stored in ret (room for max); -ENOENT when the model has
 * no target or fallback of that family at all; -ENXIO when it has some but
 * every target's weight is 0 and there is no fallback. */
int kb_router_plan(struct kb_router *r, const struct kb_model *m, kb_family family, uint32_t rnd, uint64_t now,
                   struct kb_candidate *ret, size_t max);

/* Whether an attempt on route may start now, without taking anything. An
 * unknown route is allowed. */
bool kb_router_allows(struct kb_router *r, const char *route, uint64_t now);
/* Start an attempt on route: 0 allowed; 1 allowed as the half-open probe
 * (the circuit cooled down; circuit_half_open is reported); -EAGAIN the
 * circuit is open (or a probe is already out): skip the route. */
int kb_router_acquire(struct kb_router *r, const char *route, uint64_t now);

typedef enum kb_verdict {
        KB_VERDICT_NONE,        /* ended without a verdict on the route (the app went away): only frees a probe */
        KB_VERDICT_SUCCESS,
        KB_VERDICT_FAILURE,
} kb_verdict;

/* How one attempt ended. Every acquire is followed by exactly one feedback. */
struct kb_attempt_result {
        const char *route;
        const char *model;              /* the model as configured; NULL: no canary accounting */
        const char *upstream_model;     /* of the target tried */
        bool fallback;                  /* tried as a fallback line, not as a target */
        bool probe;                     /* acquire returned 1 */
        kb_verdict verdict;
        bool has_latency;               /* a response came */
        uint64_t latency_usec;          /* attempt start to response headers */
};

/* Update the route's breaker and statistics and the target's canary
 * history; state changes go to the event callback. Unknown names are
 * ignored (the config changed meanwhile). */
void kb_router_feedback(struct kb_router *r, const struct kb_attempt_result *a, uint64_t now);

/* ---- views ---- */

struct kb_route_view {
        kb_circuit circuit;             /* open with the cooldown over shows as half_open */
        unsigned consecutive_failures;
        uint64_t window_requests;       /* attempts with a verdict in the sliding window */
        uint64_t window_failures;
        double error_ratio;             /* failures / requests in the window; 0 without requests */
        bool has_p50;
        uint64_t p50_usec;              /* median time to response headers of recent attempts */
        uint64_t open_remaining_usec;   /* cooldown left while open */
};

/* -ENOENT for a route the router does not know. */
int kb_router_route_view(const struct kb_router *r, const char *route, uint64_t now, struct kb_route_view *ret);

/* The weight a target of model m has now: the override when one is set,
 * else the config's. *ret_overridden (may be NULL) says which. */
unsigned kb_router_weight(const struct kb_router *r, const struct kb_model *m, const struct kb_target *t,
                          bool *ret_overridden);

/* "ROUTE=N,ROUTE=N" of m's targets with their effective weights; a route
 * that is a target twice is named "ROUTE/UPSTREAM_MODEL". malloc'd; NULL on
 * OOM. */
char *kb_router_weights_string(const struct kb_router *r, const struct kb_model *m);

/* ---- model split ---- */

struct kb_split_entry {
        const char *name;               /* "ROUTE", or "ROUTE/UPSTREAM_MODEL" for a route that is a target twice */
        uint64_t weight;
};

#define KB_SPLIT_MAX_ENTRIES 64

/* Set the weights of the named targets of m (the others keep theirs); a
 * weight equal to the config's removes that target's override. Reports
 * split_changed (admin_uid, -1 for none) when anything changed. Errors
 * (nothing changed; *ret_why, may be NULL, says what, static text):
 * -EINVAL no entries, too many, a weight above 1000000, a name twice;
 * -ENOENT a name that is not a target of m (ambiguous names included);
 * -EDOM the split would leave no target with a non-zero weight. */
int kb_router_set_split(struct kb_router *r, const struct kb_model *m, const struct kb_split_entry *e, size_t n,
                        int64_t admin_uid, const char **ret_why);

/* The overrides as JSON text in path (write to a temporary file, fsync,
 * rename): {"version":1,"splits":[{"model","route","upstream_model","weight"}…]}. */
int kb_router_save_splits(const struct kb_router *r, const char *path);
/* Load overrides saved by kb_router_save_splits() for targets r knows (call
 * after kb_router_configure). A missing file is not an error (0); a file
 * that cannot be read or parsed: -errno / -EBADMSG, and nothing is loaded.
 * Returns the number of overrides taken. */
int kb_router_load_splits(struct kb_router *r, const char *path);
