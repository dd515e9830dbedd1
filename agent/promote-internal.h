/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 8 of 12, decisions: calls layers 6, 7, 9, 12. */

/* The promoter's state, shared by promote.c (steps, gates, decisions) and
 * promote-state.c (promotions.json, baselines). Not for other modules. */

#include "promote.h"

/* A step's requests are its ok answers and its errors (step_requests()). */
struct step_counts {
        uint64_t ok, errors;
        uint64_t upstream_429, timeouts, model_not_found, stream_interrupted, missing_usage;
        uint64_t input_sum, output_sum;
        int64_t cost_sum;
};

static inline uint64_t step_requests(const struct step_counts *c) {
        return c->ok + c->errors;
}

struct promotion {
        char *model;
        char *name;                     /* the candidate as named: "ROUTE" or "ROUTE/UPSTREAM_MODEL" */
        char *route, *upstream;         /* the candidate target */
        kb_family family;
        kb_promote_state state;
        unsigned steps[KB_PROMOTE_MAX_STEPS];
        size_t n_steps, step;
        uint64_t hold_usec;
        double max_error_ratio;
        uint64_t max_p95_ms;
        bool require_usage;
        unsigned min_requests;
        struct kb_split_entry *before;  /* names malloc'd */
        size_t n_before;
        uint64_t started_realtime, step_started, step_started_realtime, finished_realtime;
        char *reason;
        int64_t admin_uid;
        struct step_counts c;
        uint32_t *latencies;            /* ms, a ring of KB_PROMOTE_LATENCIES */
        size_t n_latencies, latency_pos;
};

struct baseline_entry {
        char *model;
        struct kb_baseline b;
};

struct kb_promoter {
        struct kb_router *router;
        struct kb_config *config;
        struct promotion **list;
        size_t n;
        struct baseline_entry *baselines;
        size_t n_baselines;
        kb_promote_event_t cb;
        void *userdata;
};

/* promote.c */
struct promotion *promote_find(const struct kb_promoter *p, const char *model);
struct promotion *promote_entry_new(void);
void promote_entry_free(struct promotion *e);
/* Add e (taken over, also on failure) replacing the model's old entry. */
int promote_add(struct kb_promoter *p, struct promotion *e);
/* A running entry read back from disk or kept over a reload: check it
 * against the running config and set its step's split again (step_reached,
 * resumed); abort it (what can be put back is) when it cannot go on. */
void promote_resume(struct kb_promoter *p, struct promotion *e, bool restart, uint64_t now, uint64_t now_realtime);

/* promote-split.c */
/* The name kb_router_set_split() takes for t: "ROUTE", or
 * "ROUTE/UPSTREAM_MODEL" for a route that is a target of m twice. malloc'd. */
char *promote_target_name(const struct kb_model *m, const struct kb_target *t);
/* Such a name to a target of m; NULL when none or ambiguous (then
 * *ret_ambiguous, may be NULL, is set). */
const struct kb_target *promote_resolve(const struct kb_model *m, const char *name, bool *ret_ambiguous);
/* e's candidate target in m, or NULL. */
const struct kb_target *promote_candidate_of(const struct kb_model *m, const struct promotion *e);
/* Set the split of e's current step. -ESRCH no candidate, -EDOM no other
 * target of its family had a weight before, else kb_router_set_split()'s. */
int promote_apply_step(struct kb_promoter *p, const struct promotion *e, const struct kb_model *m, int64_t admin_uid,
                       const char **ret_why);
/* Put the split from before back, as far as its targets are still there. */
void promote_restore(struct kb_promoter *p, const struct promotion *e, const struct kb_model *m, int64_t admin_uid);
