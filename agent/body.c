/* SPDX-License-Identifier: MIT */
#include <jansson.h>

#include "body.h"

/* Nesting deeper than this is refused before jansson sees it, so a hostile
 * body cannot make the parser recurse without bound. Real requests nest a
 * few levels (tools schemas perhaps a dozen). */
#define KB_BODY_MAX_DEPTH 128

static bool depth_ok(const char *s, size_t len) {
        unsigned depth = 0;
        bool in_str = false;

        for (size_t i = 0; i < len; i++) {
                char c = s[i];
                if (in_str) {
                        if (c == '\\')
                                i++;
                        else if (c == '"')
                                in_str = false;
                        continue;
                }
                if (c == '"')
                        in_str = true;
                else if (c == '{' || c == '[') {
                        if (++depth > KB_BODY_MAX_DEPTH)
                                return false;
                } else if ((c == '}' || c == ']') && depth > 0)
                        depth--;
        }
        return true;
}

void kb_body_info_done(struct kb_body_info *i) {
        free(i->model);
        i->model = NULL;
}

int kb_body_inspect(const char *body, size_t len, struct kb_body_info *ret, const char **ret_error) {
        if (len == 0) {
                *ret_error = "request body is empty; expected a JSON object";
                return -EINVAL;
        }
        if (!depth_ok(body, len)) {
                *ret_error = "request body nests deeper than 128 levels";
                return -EINVAL;
        }

        json_error_t err;
        json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
        if (!root) {
                *ret_error = strstr(err.text, "duplicate") ? "request body has a duplicate object key"
                                                           : "request body is not valid JSON";
                return -EINVAL;
        }
        if (!json_is_object(root)) {
                json_decref(root);
                *ret_error = "request body must be a JSON object";
                return -EINVAL;
        }

        struct kb_body_info info = {};
        json_t *m = json_object_get(root, "model");
        if (m && json_is_string(m)) {
                info.model = strdup(json_string_value(m));
                if (!info.model) {
                        json_decref(root);
                        return -ENOMEM;
                }
        } else if (m)
                info.model_not_string = true;

        info.stream = json_is_true(json_object_get(root, "stream"));
        /* The cap on output the app asked for, under whichever name its API uses. */
        static const char *const caps[] = { "max_tokens", "max_completion_tokens", "max_output_tokens" };
        for (size_t i = 0; i < ELEMENTSOF(caps); i++) {
                json_t *v = json_object_get(root, caps[i]);
                if (json_is_integer(v) && json_integer_value(v) > 0) {
                        info.max_output_tokens = (uint64_t) json_integer_value(v);
                        break;
                }
        }
        json_t *so = json_object_get(root, "stream_options");
        info.has_stream_options = so != NULL;
        info.include_usage = json_is_object(so) && json_is_true(json_object_get(so, "include_usage"));
        json_decref(root);
        *ret = info;
        return 0;
}

static size_t skip_ws(const char *s, size_t len, size_t i) {
        while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
                i++;
        return i;
}

/* s[i] is '"': return the index just past the closing quote. */
static size_t skip_string(const char *s, size_t len, size_t i) {
        for (i++; i < len; i++) {
                if (s[i] == '\\')
                        i++;
                else if (s[i] == '"')
                        return i + 1;
        }
        return len;
}

/* Index just past the JSON value starting at s[i] (input already validated). */
static size_t skip_value(const char *s, size_t len, size_t i) {
        if (s[i] == '"')
                return skip_string(s, len, i);
        if (s[i] == '{' || s[i] == '[') {
                unsigned depth = 0;
                for (; i < len; i++) {
                        if (s[i] == '"') {
                                i = skip_string(s, len, i) - 1;
                                continue;
                        }
                        if (s[i] == '{' || s[i] == '[')
                                depth++;
                        else if ((s[i] == '}' || s[i] == ']') && --depth == 0)
                                return i + 1;
                }
                return len;
        }
        while (i < len && !strchr(",}] \t\r\n", s[i]))
                i++;
        return i;
}

struct span {
        size_t start, end; /* value bytes; start == end == 0: absent */
};

static bool key_is(const char *s, size_t kstart, size_t kend, const char *name) {
        size_t n = strlen(name);

        /* A key without escapes is its own bytes between the quotes. */
        if (!memchr(s + kstart, '\\', kend - kstart))
                return kend - kstart == n + 2 && memcmp(s + kstart + 1, name, n) == 0;
        /* With escapes, "model" can be spelt \u006dodel: jansson already
         * rejected duplicates, so such a spelling would be a second,
         * different key to us and the same key to the provider. Compare the
         * decoded key. */
        json_error_t err;
        json_t *k = json_loadb(s + kstart, kend - kstart, JSON_DECODE_ANY, &err);
        bool r = k && json_is_string(k) && streq(json_string_value(k), name);
        json_decref(k);
        return r;
}

/* A model name as a JSON string. Names are plain text: quoted as they are;
 * anything needing escapes is left to jansson. */
static char *quote_model(const char *name) {
        bool plain = true;
        for (const unsigned char *p = (const unsigned char *) name; *p && plain; p++)
                plain = *p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\';
        if (plain) {
                char *q;
                return asprintf(&q, "\"%s\"", name) < 0 ? NULL : q;
        }
        json_t *j = json_string(name);
        char *q = j ? json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
        json_decref(j);
        return q;
}

int kb_body_rewrite(const char *body, size_t len, const char *new_model, bool add_include_usage, struct kb_buf *out) {
        struct span model = {}, so = {};
        size_t open_brace = skip_ws(body, len, 0);
        int r;

        if (open_brace >= len || body[open_brace] != '{')
                return -EINVAL;

        for (size_t i = skip_ws(body, len, open_brace + 1); i < len && body[i] != '}';) {
                if (body[i] != '"')
                        return -EINVAL;
                size_t kend = skip_string(body, len, i);
                size_t v = skip_ws(body, len, kend);
                if (v >= len || body[v] != ':')
                        return -EINVAL;
                v = skip_ws(body, len, v + 1);
                size_t vend = skip_value(body, len, v);
                if (key_is(body, i, kend, "model"))
                        model = (struct span) { v, vend };
                else if (key_is(body, i, kend, "stream_options"))
                        so = (struct span) { v, vend };
                i = skip_ws(body, len, vend);
                if (i < len && body[i] == ',')
                        i = skip_ws(body, len, i + 1);
        }

        _cleanup_free_ char *model_json = NULL, *so_json = NULL;
        if (new_model) {
                model_json = quote_model(new_model);
                if (!model_json)
                        return -ENOMEM;
        }
        if (add_include_usage) {
                json_t *obj = NULL;
                if (so.end > so.start) {
                        json_error_t err;
                        obj = json_loadb(body + so.start, so.end - so.start, 0, &err);
                }
                if (!json_is_object(obj)) {
                        json_decref(obj);
                        obj = json_object();
                }
                if (!obj || json_object_set_new(obj, "include_usage", json_true()) < 0) {
                        json_decref(obj);
                        return -ENOMEM;
                }
                so_json = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
                json_decref(obj);
                if (!so_json)
                        return -ENOMEM;
        }

        /* Emit the body, splicing the replaced spans in ascending order. */
        struct {
                size_t start, end;
                const char *with;
        } edits[2];
        size_t n_edits = 0;
        if (model_json && model.end > model.start)
                edits[n_edits++] = (typeof(edits[0])) { model.start, model.end, model_json };
        if (so_json && so.end > so.start)
                edits[n_edits++] = (typeof(edits[0])) { so.start, so.end, so_json };
        if (n_edits == 2 && edits[0].start > edits[1].start) {
                typeof(edits[0]) t = edits[0];
                edits[0] = edits[1];
                edits[1] = t;
        }

        kb_buf_clear(out);
        size_t pos = 0;
        if ((so_json && so.end == so.start) || (model_json && model.end == model.start)) {
                /* Members that were absent go first, right after the '{'. */
                r = kb_buf_append(out, body, open_brace + 1);
                if (r < 0)
                        return r;
                pos = open_brace + 1;
                bool empty = body[skip_ws(body, len, pos)] == '}';
                if (model_json && model.end == model.start) {
                        r = kb_buf_appendf(out, "\"model\":%s%s", model_json,
                                           empty && !(so_json && so.end == so.start) ? "" : ",");
                        if (r < 0)
                                return r;
                }
                if (so_json && so.end == so.start) {
                        r = kb_buf_appendf(out, "\"stream_options\":%s%s", so_json, empty ? "" : ",");
                        if (r < 0)
                                return r;
                }
        }
        for (size_t e = 0; e < n_edits; e++) {
                r = kb_buf_append(out, body + pos, edits[e].start - pos);
                if (r < 0)
                        return r;
                r = kb_buf_append(out, edits[e].with, strlen(edits[e].with));
                if (r < 0)
                        return r;
                pos = edits[e].end;
        }
        return kb_buf_append(out, body + pos, len - pos);
}
