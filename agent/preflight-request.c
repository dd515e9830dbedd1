/* SPDX-License-Identifier: MIT */
/* What a preflight is asked to do: the check names, the body of POST
 * /routes/NAME/check, and the model checked by default. keybrokerctl links
 * this file too, so both sides know the same names. No I/O, no logging. */

#include <string.h>

#include "preflight.h"

static const char *const check_names[_KB_CHECK_MAX] = {
        [KB_CHECK_MODEL] = "model",
        [KB_CHECK_ENDPOINT] = "endpoint",
        [KB_CHECK_FEATURES] = "features",
        [KB_CHECK_USAGE] = "usage",
        [KB_CHECK_PRICING] = "pricing",
        [KB_CHECK_STATUS] = "status",
        [KB_CHECK_FAILURES] = "failures",
        [KB_CHECK_FALLBACK] = "fallback",
        [KB_CHECK_OWNER] = "owner",
        [KB_CHECK_ROLLBACK] = "rollback",
};

static const char *const check_titles[_KB_CHECK_MAX] = {
        [KB_CHECK_MODEL] = "model as the provider reports it",
        [KB_CHECK_ENDPOINT] = "endpoint families answer",
        [KB_CHECK_FEATURES] = "declared features work",
        [KB_CHECK_USAGE] = "usage reported and consistent",
        [KB_CHECK_PRICING] = "priced, probe cost",
        [KB_CHECK_STATUS] = "provider status",
        [KB_CHECK_FAILURES] = "failures answered as expected",
        [KB_CHECK_FALLBACK] = "fallback targets work",
        [KB_CHECK_OWNER] = "owners named",
        [KB_CHECK_ROLLBACK] = "rollback ready",
};

const char *kb_preflight_check_to_string(kb_preflight_check c) {
        return (unsigned) c < _KB_CHECK_MAX ? check_names[c] : NULL;
}

const char *kb_preflight_check_title(kb_preflight_check c) {
        return (unsigned) c < _KB_CHECK_MAX ? check_titles[c] : NULL;
}

static int check_from(const char *s, size_t n) {
        for (unsigned i = 0; s && i < _KB_CHECK_MAX; i++)
                if (strlen(check_names[i]) == n && strncmp(check_names[i], s, n) == 0)
                        return (int) i;
        return -EINVAL;
}

int kb_preflight_check_from_string(const char *s) {
        return s ? check_from(s, strlen(s)) : -EINVAL;
}

int kb_preflight_parse_names(const char *list, unsigned *checks, const char **ret_bad, size_t *ret_bad_len) {
        const char *p = list ?: "";

        for (;;) {
                size_t n = strcspn(p, ",");
                int c = check_from(p, n);
                if (c < 0) {
                        if (ret_bad)
                                *ret_bad = p;
                        if (ret_bad_len)
                                *ret_bad_len = n;
                        return -EINVAL;
                }
                *checks |= KB_CHECK_BIT(c);
                if (!p[n])
                        return 0;
                p += n + 1;
        }
}

/* ---- the admin call's body ---- */

static bool model_name_ok(const char *s, size_t n) {
        if (n == 0 || n > KB_PREFLIGHT_MODEL_MAX || strlen(s) != n)
                return false;
        for (size_t i = 0; i < n; i++)
                if ((unsigned char) s[i] < 0x20 || s[i] == 0x7f)
                        return false;
        return true;
}

/* An array of check names into *ret; NULL (absent) leaves it 0. */
static const char *names_of(const json_t *v, unsigned *ret) {
        size_t i;
        json_t *e;

        if (json_is_null(v))
                return NULL;
        if (!json_is_array(v))
                return "\"only\" and \"skip\" take an array of check names (" KB_PREFLIGHT_CHECK_NAMES ")";
        json_array_foreach(v, i, e) {
                int c = json_is_string(e) && strlen(json_string_value(e)) == json_string_length(e) ?
                                kb_preflight_check_from_string(json_string_value(e)) : -EINVAL;
                if (c < 0)
                        return "unknown check name; the checks are " KB_PREFLIGHT_CHECK_NAMES;
                *ret |= KB_CHECK_BIT(c);
        }
        return NULL;
}

int kb_preflight_parse_body(const char *body, size_t len, char **ret_model, unsigned *ret_checks,
                            const char **ret_why) {
        _cleanup_(json_decrefp) json_t *j = NULL;
        unsigned only = 0, skip = 0;
        bool has_only = false, has_skip = false;
        const char *why = NULL, *model = NULL;
        const char *k;
        json_t *v;

        if (len > KB_PREFLIGHT_MAX_REQUEST_BODY) {
                why = "the request body is too long";
                goto fail;
        }
        size_t sp = 0;
        while (sp < len && strchr(" \t\r\n", body[sp]))
                sp++;
        if (sp == len) {
                *ret_model = NULL;
                *ret_checks = KB_CHECK_ALL;
                return 0;
        }
        j = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_object(j)) {
                why = "the body must be a JSON object: {\"model\":M,\"only\":[CHECK...],\"skip\":[CHECK...]}";
                goto fail;
        }
        json_object_foreach(j, k, v) {
                if (streq(k, "model")) {
                        if (json_is_null(v))
                                continue;
                        if (!json_is_string(v) || !model_name_ok(json_string_value(v), json_string_length(v))) {
                                why = "\"model\" must be a non-empty string of at most 256 printable bytes";
                                goto fail;
                        }
                        model = json_string_value(v);
                } else if (streq(k, "only") || streq(k, "skip")) {
                        bool is_only = streq(k, "only");
                        why = names_of(v, is_only ? &only : &skip);
                        if (why)
                                goto fail;
                        if (json_is_null(v))
                                continue;
                        if (is_only && json_array_size(v) == 0) {
                                why = "\"only\" needs at least one check name";
                                goto fail;
                        }
                        *(is_only ? &has_only : &has_skip) = true;
                } else {
                        why = "the body takes \"model\", \"only\" and \"skip\"";
                        goto fail;
                }
        }
        if (has_only && has_skip) {
                why = "give \"only\" or \"skip\", not both";
                goto fail;
        }
        unsigned checks = has_only ? only : KB_CHECK_ALL & ~skip;
        if (checks == 0) {
                why = "every check is skipped: nothing to run";
                goto fail;
        }
        char *m = NULL;
        if (model && !(m = strdup(model)))
                return -ENOMEM;
        *ret_model = m;
        *ret_checks = checks;
        return 0;
fail:
        if (ret_why)
                *ret_why = why;
        return -EINVAL;
}

bool kb_preflight_is_embedding_model(const char *model) {
        return model && strstr(model, "embedding");
}

const char *kb_preflight_default_model(const struct kb_config *c, const struct kb_route *route) {
        const char *first = NULL;

        for (int fb = 0; fb < 2; fb++)
                for (size_t m = 0; m < c->n_models; m++) {
                        const struct kb_model *model = &c->models[m];
                        const struct kb_target *ts = fb ? model->fallbacks : model->targets;
                        size_t n = fb ? model->n_fallbacks : model->n_targets;
                        for (size_t i = 0; i < n; i++) {
                                if (ts[i].route != route || !ts[i].upstream_model)
                                        continue;
                                /* the probes are chat calls: an embedding model only when there is nothing else */
                                if (!kb_preflight_is_embedding_model(ts[i].upstream_model))
                                        return ts[i].upstream_model;
                                first = first ?: ts[i].upstream_model;
                        }
                }
        return first;
}

json_t *kb_preflight_checks_json(unsigned checks) {
        json_t *a = json_array();

        for (kb_preflight_check i = 0; a && i < _KB_CHECK_MAX; i++)
                if ((checks & KB_CHECK_BIT(i)) &&
                    json_array_append_new(a, json_string(kb_preflight_check_to_string(i))) < 0) {
                        json_decref(a);
                        a = NULL;
                }
        return a;
}
