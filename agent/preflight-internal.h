/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 2 of 12, admin: calls layers 7-12. */

/* Preflight's shared state: the plan of calls (preflight-plan.c builds it),
 * the run that makes them (preflight.c) and the checks judged from them
 * (preflight-checks.c). Not for other modules. */

#include <systemd/sd-event.h>

#include "keystore.h"
#include "preflight.h"
#include "router.h"
#include "upstream.h"

/* What a call is for; a call may serve several checks (its checks mask). */
typedef enum pf_kind {
        PF_MODELS,              /* GET /models with the route's key */
        PF_MAIN,                /* the model's small non-streaming call (chat or messages) */
        PF_STREAM,              /* the same, streamed */
        PF_RESPONSES,           /* OpenAI /responses */
        PF_EMBEDDINGS,          /* OpenAI /embeddings, with an embedding model of the route */
        PF_TOOLS,
        PF_STRUCTURED,
        PF_VISION,
        PF_REASONING,
        PF_WRONG_KEY,           /* a made-up key */
        PF_BOGUS,               /* a made-up model */
        PF_TIMEOUT,             /* KB_PREFLIGHT_TINY_TIMEOUT_USEC */
        PF_FALLBACK_MODELS,     /* a fallback route's GET /models with its own key */
        PF_SMOKE,               /* a small non-streaming call to a (route, model): fallbacks, rollback */
        PF_STATUS,              /* the route's status_url, no key */
        _PF_KIND_MAX,
} pf_kind;

struct pf_call {
        /* the plan */
        pf_kind kind;
        char *name;                     /* "chat", "fallback anth/claude-x", … (evidence) */
        const struct kb_route *route;   /* into the run's config */
        struct kb_key *key;             /* ref; NULL: no key (or missing: key_missing) */
        bool key_missing;
        char *model;                    /* the model in the body, or NULL */
        kb_endpoint endpoint;           /* of the usage tap */
        bool stream;
        char *path;                     /* appended to base_url; NULL: url is absolute */
        char *url;
        char *body;                     /* JSON text; NULL: GET */
        unsigned checks;                /* KB_CHECK_BIT of each check that reads it */
        bool skip;                      /* no check that reads it is run */

        /* what happened */
        bool ran;                       /* was started (or failed to start) */
        bool answered;                  /* a response status arrived */
        long status;
        char *content_type;
        struct kb_buf in;
        struct kb_usage_tap *tap;
        int error;                      /* 0 complete, else -errno */
        char *message;                  /* curl's text or ours, for details */
        bool too_big;
        uint64_t start_usec, latency_usec;
};

/* A check's result; parts are its sub-results, extra its own evidence. */
typedef enum pf_state {
        PF_SKIPPED,
        PF_PASSED,
        PF_FAILED,
} pf_state;

struct pf_result {
        pf_state state;
        char *detail;
        uint64_t latency_ms;            /* of the calls it read (sum) */
        json_t *parts;                  /* [{"name","ok","detail",("latency_ms")}] or NULL */
        json_t *extra;                  /* an object merged into the check's evidence, or NULL */
};

/* A model using the route: its current split, read when the run starts. */
struct pf_rollback {
        const struct kb_model *model;
        unsigned *weights;              /* effective, one per target of the model */
        char *command;                  /* keybrokerctl model split … */
};

struct kb_preflight {
        struct kb_broker *broker;
        struct kb_config *config;       /* ref: routes and models point into it */
        const struct kb_route *route;
        char *model;
        unsigned checks;                /* to run */
        char bogus_model[64];
        char invalid_key[80];           /* made up per run: never a real key */
        char *key_label;                /* name@version of the route's key */

        kb_preflight_done_t done;
        void *userdata;

        sd_event_source *defer;
        sd_event_source *timer;
        struct kb_upstream_call *call;
        size_t next;                    /* the call to run next */
        bool timed_out;

        struct pf_call calls[KB_PREFLIGHT_MAX_CALLS];
        size_t n_calls;
        struct pf_rollback rollback[KB_PREFLIGHT_MAX_TARGETS];
        size_t n_rollback;
        unsigned features;              /* declared on the route and its models */
        const char *headers[KB_UPSTREAM_MAX_HEADERS];
        size_t n_headers;

        uint64_t start_usec;            /* monotonic */
        uint64_t started_realtime;
        struct pf_result results[_KB_CHECK_MAX];
};

/* preflight-plan.c: every call of the run, in order, with the checks that
 * read each, the split of every model using the route, the features
 * declared. -ENOMEM, or -E2BIG past KB_PREFLIGHT_MAX_CALLS. */
int pf_plan(struct kb_preflight *p);
void pf_call_clear(struct pf_call *c);
/* The first call of kind (for route and model when not NULL), or NULL. */
struct pf_call *pf_find(struct kb_preflight *p, pf_kind kind, const struct kb_route *route, const char *model);
/* The structured-output probe's schema (a new reference). */
json_t *pf_structured_schema(void);

/* preflight-checks.c: every selected check judged from the calls. */
int pf_judge_all(struct kb_preflight *p);
/* The usage of a call that completed with a 2xx, else NULL. */
const struct kb_usage *pf_good_usage(const struct pf_call *c);
/* Why a call gave no answer to judge, into why; false when it did. */
bool pf_call_failure(const struct kb_preflight *p, const struct pf_call *c, char *why, size_t size);

/* preflight-evidence.c: the document saved and answered. */
json_t *pf_evidence(struct kb_preflight *p, uint64_t finished_realtime, bool *ret_ok);
json_t *pf_iso_json(uint64_t realtime_usec);
