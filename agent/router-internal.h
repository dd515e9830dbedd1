/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 8 of 12, decisions: calls layer 12. */

/* The router's state, shared by router.c (breakers, weights, canaries, the
 * plan) and router-split.c (splits set by hand, saved and loaded). Not for
 * other modules. */

#include "router.h"

#define WEIGHT_LIMIT 1000000U
#define SPLITS_FILE_MAX (4U * 1024U * 1024U)

struct bucket {
        uint64_t epoch;
        uint32_t ok, fail;
};

struct route_state {
        char *name;
        unsigned failures_max;
        double ratio_max;
        uint64_t window_usec;
        unsigned min_requests;
        uint64_t cooldown_usec;
        uint64_t probe_stale_usec;      /* a probe out longer than this was lost */

        kb_circuit circuit;
        unsigned consecutive;
        uint64_t opened_at;
        bool probe_out;
        uint64_t probe_at;
        struct bucket buckets[KB_ROUTER_WINDOW_BUCKETS];
        uint64_t latencies[KB_ROUTER_LATENCY_RING];
        size_t n_latencies, latency_pos;
};

struct target_state {
        char *model, *route, *upstream;
        kb_family family;
        unsigned config_weight;
        bool overridden;
        unsigned weight;                /* when overridden */
        double rollback_ratio;          /* < 0: no canary stop condition */
        unsigned min_requests;
        uint8_t *history;               /* ring of min_requests bits, 1 = failure */
        unsigned hist_n, hist_pos, hist_fail;
        bool rolled_back;
};

struct kb_router {
        struct route_state *routes;
        size_t n_routes;
        struct target_state *targets;   /* grouped by model, in config order */
        size_t n_targets;
        kb_router_event_t cb;
        void *userdata;
};

/* router.c */
unsigned router_effective(const struct target_state *t);
size_t router_model_targets(const struct kb_router *r, const char *model, struct target_state **ret_first);
char *router_weights_of(const struct kb_router *r, const char *model);
void router_history_reset(struct target_state *t);
struct target_state *router_find_target(const struct kb_router *r, const char *model, const char *route,
                                        const char *upstream);
void router_emit(struct kb_router *r, const struct kb_route_event *ev);
