/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 12 of 12, base: calls only libraries. */

/* The parsed configuration: immutable once loaded, refcounted so requests in
 * flight keep the config they started with while a reload swaps in a new
 * one. Library-like: never logs; errors come back as "FILE:LINE: message". */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef enum kb_family {
        KB_FAMILY_OPENAI,
        KB_FAMILY_ANTHROPIC,
        _KB_FAMILY_MAX,
} kb_family;

typedef enum kb_auth {
        KB_AUTH_BEARER,    /* Authorization: Bearer KEY */
        KB_AUTH_X_API_KEY, /* x-api-key: KEY */
        KB_AUTH_HEADER,    /* <auth_header>: KEY */
} kb_auth;

/* Prices are kept in micro-USD per 1M tokens (i.e. USD per token * 1e12 / 1e6)
 * so "0.15" USD/1M is exactly 150000; request= is micro-USD per call. A
 * negative value means "not given". */
struct kb_price {
        char *model; /* upstream model name this price applies to */
        int64_t input;
        int64_t output;
        int64_t cached_input;
        int64_t cache_write;
        int64_t cache_write_1h;         /* Anthropic 1-hour cache writes; default: cache_write */
        int64_t request;
        /* Other billing units, micro-USD (< 0: not set). Per unit: image,
         * second (transcribed audio), video_second; per 1M: character
         * (speech input) and the batch token prices (default: input, output). */
        int64_t image;
        int64_t second;
        int64_t video_second;
        int64_t character;
        int64_t batch_input;
        int64_t batch_output;
        unsigned line;
};

struct kb_route {
        char *name;
        kb_family family;
        char *base_url;         /* no trailing slash */
        char *key;              /* key name; NULL when the route needs none */
        kb_auth auth;
        char *auth_header;      /* for KB_AUTH_HEADER */
        char **headers;         /* "Name: value", static headers */
        size_t n_headers;
        uint64_t timeout_usec;          /* default 600s */
        uint64_t connect_timeout_usec;  /* default 10s */
        char *ca_file;          /* NULL: the system's bundle */
        struct kb_price *prices;
        size_t n_prices;
        unsigned line;

        /* Fallback and circuit breaker (router.c, proxy.c). */
        uint64_t retry_statuses[4];     /* bit (status - 400) set: fail over on that status (400..599) */
        bool retry_connect;             /* fail over when the connection cannot be made */
        bool retry_timeout;             /* fail over on a timeout before the first response byte */
        unsigned breaker_failures;      /* consecutive failures that open the circuit; 0 = off */
        double breaker_error_ratio;     /* failures/attempts in the window that open it; 0 = off */
        uint64_t breaker_window_usec;   /* the sliding window of that ratio */
        unsigned breaker_min_requests;  /* attempts in the window before the ratio counts */
        uint64_t breaker_cooldown_usec; /* open this long, then one probe (half-open) */

        /* The routing playbook (preflight's owner, status and features checks). */
        char *owner;            /* who answers for the route */
        char *key_owner;        /* who answers for its key (else the keystore's record) */
        char *status_url;       /* the provider's Statuspage JSON, fetched through the route's TLS settings */
        bool status_ok_minor;   /* status_ok = minor: a "minor" indicator still passes */
        unsigned features;      /* KB_FEATURE_* the workload needs on this route */
};

/* features = tools structured_output vision reasoning streaming */
enum {
        KB_FEATURE_TOOLS = 1u << 0,
        KB_FEATURE_STRUCTURED_OUTPUT = 1u << 1,
        KB_FEATURE_VISION = 1u << 2,
        KB_FEATURE_REASONING = 1u << 3,
        KB_FEATURE_STREAMING = 1u << 4,
        _KB_FEATURE_ALL = (1u << 5) - 1,
};
/* "tools", … for bit i; NULL past the last. */
const char *kb_feature_to_string(unsigned bit_index);

/* Default [route:*] retry_on: 429 500 502 503 504 529 connect timeout. */
#define KB_RETRY_ON_DEFAULT "429 500 502 503 504 529 connect timeout"

struct kb_target {
        struct kb_route *route; /* points into kb_config.routes */
        char *upstream_model;
        unsigned weight;        /* default 1; 0 = never chosen by weight */
        unsigned line;
        /* Canary stop condition: over the last min_requests attempts, an
         * error ratio above this sets the target's weight to 0. < 0: none. */
        double rollback_on_error_ratio;
        unsigned min_requests;
};

/* shadow = ROUTE UPSTREAM_MODEL sample=R budget_usd_per_day=USD: a sample
 * of the model's live requests is mirrored to ROUTE once the real answer
 * is on its way, compared, and charged to this daily cap only. */
struct kb_shadow {
        struct kb_route *route; /* points into kb_config.routes; never one of the model's targets */
        char *upstream_model;
        uint32_t sample_ppm;            /* 1..1000000 */
        int64_t budget_microusd_per_day; /* > 0 */
        unsigned line;
};

struct kb_model {
        char *name;
        struct kb_target *targets;
        size_t n_targets;
        struct kb_target *fallbacks;
        size_t n_fallbacks;
        unsigned line;
        unsigned max_attempts;          /* calls per request, fallbacks included; default 3 */
        uint64_t retry_after_max_usec;  /* longest Retry-After honoured between attempts; default 5s */
        unsigned features;              /* KB_FEATURE_* the workload needs */
        struct kb_shadow *shadow;       /* NULL: none */
};

/* Limits: 0 means "no limit". USD budgets are held in micro-USD. */
struct kb_team {
        char *name;
        uid_t *uids;
        size_t n_uids;
        gid_t *gids;
        size_t n_gids;
        char **units;
        size_t n_units;
        char **models;          /* allowlist; NULL/0 with models_all=false: none */
        size_t n_models;
        bool models_all;        /* "*" given */
        uint64_t requests_per_minute;
        uint64_t tokens_per_minute;
        uint64_t tokens_per_day;
        int64_t budget_microusd_per_day;
        int64_t budget_microusd_per_month;
        uint64_t max_concurrent;
        char *owner;
        int unpriced;           /* -1 unset, 0 deny, 1 zero: calls to models without a price */
        int quota_scope;        /* KB_QUOTA_SCOPE_FLEET (default) or _HOST */
        /* default_route: where calls without a model (files, batches, …) go,
         * at most one per family; validated against [route:*] */
        char **default_routes;
        size_t n_default_routes;
        unsigned line;
};

enum {
        KB_QUOTA_SCOPE_FLEET,   /* counted in the quota store when there is one */
        KB_QUOTA_SCOPE_HOST,    /* counted on this host only */
};

/* Where the fleet's quota store (Redis) is: a TCP address (an IP literal:
 * a name would be resolved on the event loop) or a Unix socket, and the
 * database number. */
struct kb_store_addr {
        char *host;                     /* NULL for a Unix socket */
        unsigned port;
        char *path;                     /* Unix socket, or NULL */
        unsigned db;
};

struct kb_agent_config {
        char *listen;                   /* default KB_DEFAULT_LISTEN */
        mode_t listen_mode;             /* default 0666 */
        char *admin;                    /* default KB_DEFAULT_ADMIN */
        uid_t *admin_uids;
        size_t n_admin_uids;
        gid_t *admin_gids;
        size_t n_admin_gids;
        char *credentials_dir;          /* $CREDENTIALS_DIRECTORY expanded; may be NULL */
        char *keystore;
        char *master_key;
        char *state_dir;
        uint64_t max_request_body;      /* default 32M */
        uint64_t max_upload_body;       /* default 512M: multipart uploads (files, audio, image edits) */
        uint64_t batch_poll_usec;       /* default 10min: how often open batches are retrieved */
        uint64_t header_timeout_usec;   /* default 10s */
        uint64_t drain_timeout_usec;    /* default 30s */
        uint64_t max_connections;       /* default 1024: open app connections */
        uint64_t max_connections_per_uid; /* default 256 */
        uint64_t idle_timeout_usec;     /* default 60s: keep-alive connection with no request */
        bool journal;                   /* default true: a journal record per request (journal = yes|no) */
        bool test_traffic;              /* request records carry KEYBROKER_TEST=1 (tests, benchmarks) */

        char *quota_store;              /* the URL as written; NULL = per-host counters only */
        struct kb_store_addr store;     /* parsed from it */
        char *quota_store_password;     /* a file holding it, read when connecting */
        char *quota_store_prefix;       /* default "keybroker:" */
        uint64_t quota_store_timeout_usec; /* default 50ms: longest wait for one store reply */
        bool quota_store_offline_deny;  /* quota_store_offline = deny: refuse fleet teams while offline */
        uint32_t offline_share_ppm;     /* 0 = 1 / brokers last seen */
};

struct kb_config {
        unsigned n_ref;
        char *path;
        struct kb_agent_config agent;
        struct kb_team *teams;
        size_t n_teams;
        struct kb_route *routes;
        size_t n_routes;
        struct kb_model *models;
        size_t n_models;
};

/* Parse and validate FILE. On failure returns -errno (-EINVAL for a bad
 * file) and, when ret_error is non-NULL, a malloc'd "FILE:LINE: message"
 * (or "FILE: message" when no line applies). Validation covers what
 * --check-config promises: targets/fallbacks name existing routes, a route's
 * key resolvable when check_keys is true (a file in credentials_dir). */
int kb_config_load(const char *path, bool check_keys, struct kb_config **ret, char **ret_error);

/* Same, from a string (for tests and fuzzing); name is used in messages. */
int kb_config_load_string(const char *name, const char *text, bool check_keys,
                          struct kb_config **ret, char **ret_error);

struct kb_config *kb_config_ref(struct kb_config *c);
struct kb_config *kb_config_unref(struct kb_config *c); /* returns NULL; accepts NULL */
static inline void kb_config_unrefp(struct kb_config **c) {
        kb_config_unref(*c);
}
#define _cleanup_config_ __attribute__((cleanup(kb_config_unrefp)))

const struct kb_team *kb_config_find_team(const struct kb_config *c, const char *name);
const struct kb_route *kb_config_find_route(const struct kb_config *c, const char *name);
const struct kb_model *kb_config_find_model(const struct kb_config *c, const char *name);
bool kb_team_allows_model(const struct kb_team *t, const char *model);
/* Whether the team refuses calls to a model without a price: unpriced =
 * deny, or unset on a team with a USD budget (an unpriced call would be a
 * hole in it). */
bool kb_team_denies_unpriced(const struct kb_team *t);
/* Whether any quota or budget is set on the team. */
bool kb_team_has_limits(const struct kb_team *t);

/* Whether a response status is in the route's retry_on set. */
bool kb_route_retry_status(const struct kb_route *r, long status);

const char *kb_family_to_string(kb_family f);
int kb_family_from_string(const char *s); /* -EINVAL if unknown */
