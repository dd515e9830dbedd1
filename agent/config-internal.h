/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 12 of 12, base: calls only libraries. */

/* Shared between config.c (file structure, sections, cross references) and
 * config-values.c (one parser per key); nothing outside agent/config*.c
 * includes this. */

#include "config.h"
#include "util.h"

#define CONFIG_MAX_SIZE (4U * 1024U * 1024U)
#define NAME_MAX_LEN 128U
#define MODEL_MAX_LEN 256U
#define MAX_KEYS 48U
#define WEIGHT_MAX 1000000U
#define MAX_ATTEMPTS_MAX 20U
#define CANARY_MIN_REQUESTS_MAX 10000U
#define CANARY_MIN_REQUESTS_DEFAULT 20U

enum section_kind { SEC_NONE, SEC_AGENT, SEC_TEAM, SEC_ROUTE, SEC_MODEL, _SEC_MAX };

/* Cross references are checked once the whole file is read, since a model
 * may name a route defined further down. */
enum ref_kind { REF_TARGET, REF_FALLBACK, REF_TEAM_MODEL, REF_KEY, REF_TEAM_ROUTE, REF_SHADOW };
struct ref {
        enum ref_kind kind;
        size_t owner; /* index of the model, team or route */
        size_t item;  /* index of the target or team model */
        char *name;   /* route name for targets */
        unsigned line;
};

struct parser {
        const char *name;
        const char *text;
        size_t pos, len;
        unsigned line;
        bool eof;
        char *error;
        unsigned error_line;
        struct kb_config *config;
        enum section_kind sec;
        size_t idx; /* index of the current team/route/model */
        unsigned sec_line;
        unsigned agent_line;
        unsigned seen[MAX_KEYS];
        struct ref *refs;
        size_t n_refs;
        bool oom;
};

struct key_def;
typedef int (*value_parser)(struct parser *p, const struct key_def *k, void *base, const char *v);
struct key_def {
        const char *name;
        value_parser parse;
        size_t offset;
        size_t count_offset;
        bool multi;
        bool nonzero;
        unsigned max;   /* p_unsigned: the largest value allowed */
};

_printf_(3, 4) int kb_cfg_fail(struct parser *p, unsigned line, const char *fmt, ...);
int kb_cfg_oom(struct parser *p);
#define FIELD(base, k, type) ((type *) ((char *) (base) + (k)->offset))
#define bad_value(p, k, fmt, ...) kb_cfg_fail((p), (p)->line, "invalid value for '%s': " fmt, (k), ##__VA_ARGS__)

/* Grows an array one element at a time with doubling capacity; the capacity
 * is implied by the count, so the structs need no extra field. The new
 * element is zeroed. */
void *kb_cfg_array_add(void **arr, size_t *n, size_t size);
#define ARRAY_ADD(arr, n) ((__typeof__(arr)) kb_cfg_array_add((void **) &(arr), &(n), sizeof(*(arr))))

bool kb_cfg_valid_name(const char *s, size_t max);
bool kb_cfg_valid_model_name(const char *s);
int kb_cfg_expand_credentials(const char *v, char **ret);
/* Sets rt's retry_* fields from a retry_on value; -EINVAL with *ret_bad at
 * the bad word (NULL: no words), -ENOMEM. */
int kb_cfg_parse_retry_on(const char *v, struct kb_route *rt, const char **ret_bad);
/* A decimal with up to 6 places ("0.15") as millionths; -EINVAL, -ERANGE. */
int kb_cfg_parse_micro(const char *s, int64_t *ret);
/* config-price.c: a bad USD amount of key said; a route's price line. */
int kb_cfg_micro_fail(struct parser *p, const char *key, const char *v, int r);
int kb_cfg_p_price(struct parser *p, const struct key_def *k, void *base, const char *v);
/* config-values.c: splits on blanks; the tokens point into buf; max + 1
 * when there are more than max. */
size_t kb_cfg_split_words(char *buf, char **words, size_t max);
/* config-store.c: the fleet keys' value parsers. */
int kb_cfg_p_quota_scope(struct parser *p, const struct key_def *k, void *base, const char *v);
int kb_cfg_p_store_offline(struct parser *p, const struct key_def *k, void *base, const char *v);
int kb_cfg_p_offline_share(struct parser *p, const struct key_def *k, void *base, const char *v);
/* quota_store: a URL into *ret (strings malloc'd); -EINVAL with *ret_why. */
int kb_cfg_parse_store_url(const char *v, struct kb_store_addr *ret, const char **ret_why);

/* config-playbook.c: the routing playbook's keys (features, status_ok,
 * shadow), and the shadow's checks once every route is known. */
int kb_cfg_p_features(struct parser *p, const struct key_def *k, void *base, const char *v);
int kb_cfg_p_status_ok(struct parser *p, const struct key_def *k, void *base, const char *v);
int kb_cfg_p_shadow(struct parser *p, const struct key_def *k, void *base, const char *v);
int kb_cfg_resolve_shadow(struct parser *p, const struct ref *ref);
/* config-values.c, shared with config-playbook.c */
int kb_cfg_parse_ratio(const char *s, double *ret);
int kb_cfg_add_ref(struct parser *p, enum ref_kind kind, size_t owner, size_t item, const char *name);

/* NULL-name terminated. */
extern const struct key_def kb_cfg_agent_keys[];
extern const struct key_def kb_cfg_team_keys[];
extern const struct key_def kb_cfg_route_keys[];
extern const struct key_def kb_cfg_model_keys[];
