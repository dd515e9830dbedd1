/* SPDX-License-Identifier: MIT */
/* Documents from outside that preflight must validate: a structured answer
 * against the JSON Schema subset its probe sends, and a provider's
 * Statuspage status. No I/O, no logging. */

#include <inttypes.h>
#include <stdarg.h>

#include "preflight.h"

#define SCHEMA_MAX_DEPTH 32
#define PATH_MAX_LEN 128

static bool fail(char *why, size_t size, const char *path, const char *fmt, ...) _printf_(4, 5);
static bool fail(char *why, size_t size, const char *path, const char *fmt, ...) {
        va_list ap;
        int n = snprintf(why, size, "%s: ", path);

        va_start(ap, fmt);
        if (n >= 0 && (size_t) n < size)
                vsnprintf(why + n, size - (size_t) n, fmt, ap);
        va_end(ap);
        return false;
}

static const char *type_of(const json_t *d) {
        switch (json_typeof(d)) {
        case JSON_OBJECT: return "object";
        case JSON_ARRAY: return "array";
        case JSON_STRING: return "string";
        case JSON_INTEGER: return "integer";
        case JSON_REAL: return "number";
        case JSON_TRUE:
        case JSON_FALSE: return "boolean";
        default: return "null";
        }
}

static bool type_matches(const char *type, const json_t *d) {
        if (streq(type, "number"))
                return json_is_number(d);
        return streq(type, type_of(d));
}

static bool validate(const json_t *s, const json_t *d, const char *path, int depth, char *why, size_t size);

static bool validate_object(const json_t *s, const json_t *d, const char *path, int depth, char *why, size_t size) {
        const json_t *props = json_object_get(s, "properties"), *v;
        char sub[PATH_MAX_LEN];
        const char *k;
        size_t i;

        json_array_foreach(json_object_get(s, "required"), i, v)
                if (json_is_string(v) && !json_object_get(d, json_string_value(v)))
                        return fail(why, size, path, "required property '%.40s' is missing", json_string_value(v));
        json_object_foreach((json_t *) d, k, v) {
                const json_t *ps = json_object_get(props, k);
                if (!ps) {
                        if (json_is_false(json_object_get(s, "additionalProperties")))
                                return fail(why, size, path, "property '%.40s' is not allowed", k);
                        continue;
                }
                snprintf(sub, sizeof(sub), "%s.%.40s", path, k);
                if (!validate(ps, v, sub, depth + 1, why, size))
                        return false;
        }
        return true;
}

static bool validate(const json_t *s, const json_t *d, const char *path, int depth, char *why, size_t size) {
        const json_t *type = json_object_get(s, "type"), *e;
        char sub[PATH_MAX_LEN];
        size_t i;

        if (depth > SCHEMA_MAX_DEPTH)
                return fail(why, size, path, "nested deeper than %d levels", SCHEMA_MAX_DEPTH);
        if (!json_is_object(s))
                return true; /* true, or an empty schema: anything goes */
        if (json_is_string(type) && !type_matches(json_string_value(type), d))
                return fail(why, size, path, "expected %s, got %s", json_string_value(type), type_of(d));
        if (json_is_array(type)) {
                bool any = false;
                json_array_foreach(type, i, e)
                        any = any || (json_is_string(e) && type_matches(json_string_value(e), d));
                if (!any)
                        return fail(why, size, path, "%s is none of the types allowed", type_of(d));
        }
        const json_t *en = json_object_get(s, "enum");
        if (json_is_array(en)) {
                bool any = false;
                json_array_foreach(en, i, e)
                        any = any || json_equal(e, (json_t *) d);
                if (!any)
                        return fail(why, size, path, "not one of the enum's values");
        }
        if (json_is_object(d))
                return validate_object(s, d, path, depth, why, size);
        if (json_is_array(d)) {
                const json_t *items = json_object_get(s, "items");
                json_array_foreach(d, i, e) {
                        snprintf(sub, sizeof(sub), "%s[%zu]", path, i);
                        if (!validate(items, e, sub, depth + 1, why, size))
                                return false;
                }
        }
        return true;
}

bool kb_preflight_schema_valid(const json_t *schema, const json_t *doc, char *why, size_t why_size) {
        if (why_size > 0)
                why[0] = 0;
        if (!doc)
                return fail(why, why_size, "$", "no document");
        return validate(schema, doc, "$", 0, why, why_size);
}

/* ---- Statuspage ---- */

static char *clean_dup(const char *s, size_t max) {
        char *d = s ? strndup(s, max) : NULL;
        kb_preflight_text_clean(d);
        return d;
}

int kb_preflight_judge_statuspage(const char *body, size_t len, long status, bool ok_minor, char **ret_indicator,
                                  char **ret_description, char **ret_detail) {
        static const char *const indicators[] = { "none", "minor", "major", "critical" };
        _cleanup_(json_decrefp) json_t *j = body && len ? json_loadb(body, len, 0, NULL) : NULL;
        _cleanup_free_ char *ind = NULL, *desc = NULL;
        json_t *st = json_object_get(j, "status");
        const char *indicator = json_string_value(json_object_get(st, "indicator"));
        char *d = NULL;
        int r, ok = false;

        if (status < 200 || status > 299)
                r = asprintf(&d, "HTTP %ld: no status page there", status);
        else if (!json_is_object(j))
                r = asprintf(&d, "HTTP %ld but not JSON", status);
        else if (!indicator)
                r = asprintf(&d, "HTTP %ld but not Statuspage JSON (no status.indicator)", status);
        else {
                bool known = false;
                for (size_t i = 0; i < ELEMENTSOF(indicators); i++)
                        known = known || streq(indicator, indicators[i]);
                ind = clean_dup(indicator, 32);
                desc = clean_dup(json_string_value(json_object_get(st, "description")), 160);
                if (!ind || (json_is_string(json_object_get(st, "description")) && !desc))
                        return -ENOMEM;
                if (!known) {
                        r = asprintf(&d, "HTTP %ld but the indicator '%s' is not none, minor, major or critical",
                                     status, ind);
                        free(ind);
                        ind = NULL;
                } else {
                        ok = streq(ind, "none") || (streq(ind, "minor") && ok_minor);
                        r = asprintf(&d, "indicator %s (%s)%s", ind, desc ?: "no description",
                                     ok ? (streq(ind, "minor") ? ": passes with status_ok = minor" : "")
                                        : streq(ind, "minor") ? ": only none passes unless status_ok = minor"
                                                              : ": the provider reports an incident");
                }
        }
        if (r < 0)
                return -ENOMEM;
        kb_preflight_text_clean(d);
        *ret_indicator = TAKE_PTR(ind);
        *ret_description = TAKE_PTR(desc);
        *ret_detail = d;
        return ok;
}
