/* SPDX-License-Identifier: MIT */
/* The routing playbook's keys: what a workload needs of a route
 * (features =), how bad a provider status may be (status_ok =), and the
 * shadow route a model's live traffic is mirrored to (shadow =), checked
 * against the routes once the whole file is read. */

#include "config-internal.h"

static const char *const feature_names[] = {
        "tools", "structured_output", "vision", "reasoning", "streaming",
};

const char *kb_feature_to_string(unsigned bit_index) {
        return bit_index < ELEMENTSOF(feature_names) ? feature_names[bit_index] : NULL;
}

int kb_cfg_p_features(struct parser *p, const struct key_def *k, void *base, const char *v) {
        _cleanup_free_ char *buf = strdup(v);
        char *words[8];
        unsigned set = 0;

        if (!buf)
                return kb_cfg_oom(p);
        size_t n = kb_cfg_split_words(buf, words, ELEMENTSOF(words) - 1);
        if (n == 0 || n >= ELEMENTSOF(words))
                return bad_value(p, k->name, "expected some of: tools structured_output vision reasoning streaming");
        for (size_t i = 0; i < n; i++) {
                unsigned b = 0;
                while (b < ELEMENTSOF(feature_names) && !streq(feature_names[b], words[i]))
                        b++;
                if (b == ELEMENTSOF(feature_names))
                        return bad_value(p, k->name,
                                         "'%s' is not a feature (tools structured_output vision reasoning streaming)",
                                         words[i]);
                set |= 1u << b;
        }
        *FIELD(base, k, unsigned) = set;
        return 0;
}

int kb_cfg_p_status_ok(struct parser *p, const struct key_def *k, void *base, const char *v) {
        if (!streq(v, "none") && !streq(v, "minor"))
                return bad_value(p, k->name, "'%s' is not none or minor", v);
        *FIELD(base, k, bool) = streq(v, "minor");
        return 0;
}

/* shadow = ROUTE UPSTREAM_MODEL sample=R budget_usd_per_day=USD */
int kb_cfg_p_shadow(struct parser *p, const struct key_def *k, void *base, const char *v) {
        struct kb_model *m = base;
        _cleanup_free_ char *buf = strdup(v);
        char *words[5];
        double sample = -1;
        int64_t budget = -1;

        if (!buf)
                return kb_cfg_oom(p);
        size_t n = kb_cfg_split_words(buf, words, 4);
        if (n != 4)
                return bad_value(p, k->name, "expected 'ROUTE UPSTREAM_MODEL sample=R budget_usd_per_day=USD'");
        if (!kb_cfg_valid_name(words[0], NAME_MAX_LEN))
                return bad_value(p, k->name, "'%s' is not a route name", words[0]);
        if (!kb_cfg_valid_model_name(words[1]))
                return bad_value(p, k->name, "'%s' is not a model name", words[1]);
        for (size_t i = 2; i < 4; i++) {
                if (strncmp(words[i], "sample=", 7) == 0 && sample < 0) {
                        if (kb_cfg_parse_ratio(words[i] + 7, &sample) < 0 || sample <= 0)
                                return bad_value(p, k->name, "'%s' is not sample=R with R above 0, at most 1",
                                                 words[i]);
                } else if (strncmp(words[i], "budget_usd_per_day=", 19) == 0 && budget < 0) {
                        if (kb_cfg_parse_micro(words[i] + 19, &budget) < 0 || budget <= 0)
                                return bad_value(p, k->name, "'%s' is not budget_usd_per_day=USD with USD above 0",
                                                 words[i]);
                } else
                        return bad_value(p, k->name, "'%s' is not sample=R or budget_usd_per_day=USD (each once)",
                                         words[i]);
        }
        struct kb_shadow *s = calloc(1, sizeof(*s));
        if (!s || !(s->upstream_model = strdup(words[1]))) {
                free(s);
                return kb_cfg_oom(p);
        }
        s->sample_ppm = (uint32_t) (sample * 1e6 + 0.5);
        s->budget_microusd_per_day = budget;
        s->line = p->line;
        m->shadow = s;
        return kb_cfg_add_ref(p, REF_SHADOW, p->idx, 0, words[0]);
}

/* Once every route is known: the shadow route exists, speaks the model's
 * API, and takes none of the model's traffic: not a fallback nor a target
 * with a weight (a comparison with itself proves nothing and bills the same
 * key twice). A target of weight=0 is the staged candidate of a promotion:
 * shadowed first, then promoted without another reload; calls a promotion
 * sends to it are not mirrored. */
int kb_cfg_resolve_shadow(struct parser *p, const struct ref *ref) {
        struct kb_config *c = p->config;
        struct kb_model *m = &c->models[ref->owner];
        struct kb_route *rt = (struct kb_route *) kb_config_find_route(c, ref->name);

        if (!rt)
                return kb_cfg_fail(p, ref->line, "model '%s': shadow: unknown route '%s'", m->name, ref->name);
        for (int fb = 0; fb < 2; fb++) {
                const struct kb_target *ts = fb ? m->fallbacks : m->targets;
                size_t n = fb ? m->n_fallbacks : m->n_targets;
                for (size_t i = 0; i < n; i++) {
                        if (!ts[i].route)
                                continue;
                        if (ts[i].route == rt && (fb || ts[i].weight > 0))
                                return kb_cfg_fail(p, ref->line,
                                                   "model '%s': shadow: route '%s' is already a %s of the model; "
                                                   "a shadow must be a route the model sends no traffic to "
                                                   "(a target of weight=0 is allowed: a promotion's candidate)",
                                                   m->name, rt->name, fb ? "fallback" : "target with a weight");
                        if (ts[i].route->family != rt->family)
                                return kb_cfg_fail(p, ref->line,
                                                   "model '%s': shadow: route '%s' speaks the %s API, the model's "
                                                   "route '%s' the %s API",
                                                   m->name, rt->name, kb_family_to_string(rt->family),
                                                   ts[i].route->name, kb_family_to_string(ts[i].route->family));
                }
        }
        m->shadow->route = rt;
        return 0;
}
