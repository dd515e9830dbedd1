/* SPDX-License-Identifier: MIT */
/* The shape of an answer, as a shadow comparison sees it: for JSON the
 * top-level member names, for an event stream the event types, and in
 * both whether the model called a tool. Content is never kept: only names
 * the provider's API defines. Library-like: never logs. */

#include <jansson.h>
#include <inttypes.h>

#include "shadow.h"

static int cmp_name(const void *a, const void *b) {
        return strcmp(a, b);
}

/* Add one name (cut, made printable; the set is bounded: the rest of a
 * huge set changes nothing a comparison needs). */
static void add_name(struct kb_shape *s, const char *name, size_t len) {
        char n[KB_SHAPE_NAME_MAX + 1];
        size_t l = MIN(len, (size_t) KB_SHAPE_NAME_MAX);

        for (size_t i = 0; i < l; i++) {
                unsigned char c = (unsigned char) name[i];
                n[i] = c < 0x20 || c >= 0x7f || c == ',' ? '?' : (char) c;
        }
        n[l] = 0;
        for (size_t i = 0; i < s->n_names; i++)
                if (streq(s->names[i], n))
                        return;
        if (s->n_names >= KB_SHAPE_MAX_NAMES)
                return;
        memcpy(s->names[s->n_names++], n, l + 1);
}

/* An item of arr whose "type" is type. */
static bool array_has(json_t *arr, const char *type) {
        size_t i;
        json_t *e;

        if (!json_is_array(arr))
                return false;
        json_array_foreach(arr, i, e)
                if (streq_ptr(json_string_value(json_object_get(e, "type")), type))
                        return true;
        return false;
}

/* Tool calls in a whole answer or in one event, in each API's own way:
 * chat's tool_calls (message or delta), a responses function_call item,
 * an Anthropic tool_use block. */
static bool has_tools(json_t *j) {
        json_t *choices = json_object_get(j, "choices");
        const char *type = json_string_value(json_object_get(j, "type"));

        if (json_is_array(choices)) {
                size_t i;
                json_t *c;
                json_array_foreach(choices, i, c) {
                        json_t *m = json_object_get(c, "message") ?: json_object_get(c, "delta");
                        json_t *tc = json_object_get(m, "tool_calls");
                        if (json_is_array(tc) && json_array_size(tc) > 0)
                                return true;
                }
        }
        if (array_has(json_object_get(j, "output"), "function_call") ||
            array_has(json_object_get(j, "content"), "tool_use"))
                return true;
        /* events: responses' output items and argument deltas, Anthropic's block starts */
        if (streq_ptr(json_string_value(json_object_get(json_object_get(j, "item"), "type")), "function_call"))
                return true;
        if (type && strncmp(type, "response.function_call_arguments.", 33) == 0)
                return true;
        if (streq_ptr(json_string_value(json_object_get(json_object_get(j, "content_block"), "type")), "tool_use"))
                return true;
        /* a responses stream's final answer carries the whole output */
        if (array_has(json_object_get(json_object_get(j, "response"), "output"), "function_call"))
                return true;
        return false;
}

static void read_json(struct kb_shape *s, const char *buf, size_t len) {
        json_t *j = json_loadb(buf, len, 0, NULL);
        const char *k;
        json_t *v;

        if (!json_is_object(j)) {
                json_decref(j);
                s->kind = KB_SHAPE_OTHER;
                return;
        }
        s->kind = KB_SHAPE_JSON;
        json_object_foreach(j, k, v)
                add_name(s, k, strlen(k));
        s->tools = has_tools(j);
        json_decref(j);
}

/* One event: its "event:" name, else what its data says it is. */
static void read_event(struct kb_shape *s, const char *ev, size_t len) {
        struct kb_buf data = {};
        const char *name = NULL;
        size_t name_len = 0;

        for (const char *p = ev, *end = ev + len; p < end;) {
                const char *nl = memchr(p, '\n', (size_t) (end - p));
                size_t l = nl ? (size_t) (nl - p) : (size_t) (end - p);
                if (l > 0 && p[l - 1] == '\r')
                        l--;
                if (l >= 6 && memcmp(p, "event:", 6) == 0) {
                        name = p + 6 + (l > 6 && p[6] == ' ');
                        name_len = l - (size_t) (name - p);
                } else if (l >= 5 && memcmp(p, "data:", 5) == 0) {
                        const char *d = p + 5 + (l > 5 && p[5] == ' ');
                        if (data.len > 0)
                                (void) kb_buf_append(&data, "\n", 1);
                        (void) kb_buf_append(&data, d, l - (size_t) (d - p));
                }
                p = nl ? nl + 1 : end;
        }
        json_t *j = data.len > 0 && !streq(data.data, "[DONE]") ? json_loadb(data.data, data.len, 0, NULL) : NULL;
        if (name && name_len > 0)
                add_name(s, name, name_len);
        else if (data.len > 0 && streq(data.data, "[DONE]"))
                add_name(s, "[DONE]", 6);
        else if (json_is_string(json_object_get(j, "object")))
                add_name(s, json_string_value(json_object_get(j, "object")),
                         strlen(json_string_value(json_object_get(j, "object"))));
        else if (json_is_string(json_object_get(j, "type")))
                add_name(s, json_string_value(json_object_get(j, "type")),
                         strlen(json_string_value(json_object_get(j, "type"))));
        else if (json_is_object(json_object_get(j, "error")))
                add_name(s, "error", 5);
        else if (data.len > 0)
                add_name(s, "data", 4);
        if ((j && has_tools(j)) || (name && name_len >= 33 && memcmp(name, "response.function_call_arguments.", 33) == 0))
                s->tools = true;
        json_decref(j);
        kb_buf_free(&data);
}

static void read_sse(struct kb_shape *s, const char *buf, size_t len) {
        s->kind = KB_SHAPE_SSE;
        const char *p = buf, *end = buf + len;
        while (p < end) {
                /* events end at a blank line: "\n\n" or "\r\n\r\n" */
                const char *e = p, *next = end;
                for (; e < end; e++)
                        if (*e == '\n' && ((e + 1 < end && e[1] == '\n') ||
                                           (e + 2 < end && e[1] == '\r' && e[2] == '\n'))) {
                                next = e + (e[1] == '\n' ? 2 : 3);
                                break;
                        }
                if (e > p)
                        read_event(s, p, (size_t) (e - p));
                p = next;
        }
}

void kb_shape_read(struct kb_shape *ret, bool sse, const char *buf, size_t len, bool overflowed) {
        memset(ret, 0, sizeof(*ret));
        if (overflowed)
                ret->kind = KB_SHAPE_UNKNOWN;
        else if (!buf || len == 0)
                ret->kind = KB_SHAPE_NONE;
        else if (sse)
                read_sse(ret, buf, len);
        else
                read_json(ret, buf, len);
        qsort(ret->names, ret->n_names, sizeof(ret->names[0]), cmp_name);
}

bool kb_shape_equal(const struct kb_shape *a, const struct kb_shape *b) {
        if (a->kind != b->kind || a->tools != b->tools || a->n_names != b->n_names)
                return false;
        for (size_t i = 0; i < a->n_names; i++)
                if (!streq(a->names[i], b->names[i]))
                        return false;
        return true;
}

const char *kb_shape_status_class(long status) {
        if (status == 0)
                return "transport";
        if (status >= 200 && status < 300)
                return "2xx";
        if (status >= 400 && status < 500)
                return "4xx";
        if (status >= 500 && status < 600)
                return "5xx";
        return "other";
}

static const char *kind_name(kb_shape_kind k) {
        static const char *const names[] = {
                [KB_SHAPE_NONE] = "no body", [KB_SHAPE_JSON] = "json", [KB_SHAPE_SSE] = "sse",
                [KB_SHAPE_OTHER] = "not json", [KB_SHAPE_UNKNOWN] = "unknown (over 1 MiB)",
        };
        return (unsigned) k < ELEMENTSOF(names) ? names[k] : "?";
}

static bool has_name(const struct kb_shape *s, const char *n) {
        for (size_t i = 0; i < s->n_names; i++)
                if (streq(s->names[i], n))
                        return true;
        return false;
}

/* Names of a that b lacks, comma-separated, into d. */
static void only_in(const struct kb_shape *a, const struct kb_shape *b, struct kb_buf *d) {
        bool first = true;
        for (size_t i = 0; i < a->n_names; i++)
                if (!has_name(b, a->names[i])) {
                        (void) kb_buf_appendf(d, "%s%s", first ? "" : ",", a->names[i]);
                        first = false;
                }
}

void kb_shape_diff(const char *pc, const struct kb_shape *p, const char *sc, const struct kb_shape *s, char *buf,
                   size_t size) {
        struct kb_buf d = {};

        if (!streq(pc, sc))
                (void) kb_buf_appendf(&d, "status %s vs %s", pc, sc);
        if (p->kind != s->kind)
                (void) kb_buf_appendf(&d, "%s%s vs %s", d.len ? "; " : "", kind_name(p->kind), kind_name(s->kind));
        else if (p->kind == KB_SHAPE_JSON || p->kind == KB_SHAPE_SSE) {
                const char *what = p->kind == KB_SHAPE_JSON ? "members" : "events";
                struct kb_buf a = {}, b = {};
                only_in(p, s, &a);
                only_in(s, p, &b);
                if (a.len)
                        (void) kb_buf_appendf(&d, "%s%s only in primary: %s", d.len ? "; " : "", what, a.data);
                if (b.len)
                        (void) kb_buf_appendf(&d, "%s%s only in shadow: %s", d.len ? "; " : "", what, b.data);
                kb_buf_free(&a);
                kb_buf_free(&b);
        }
        if (p->tools != s->tools)
                (void) kb_buf_appendf(&d, "%stool calls: primary %s, shadow %s", d.len ? "; " : "",
                                      p->tools ? "yes" : "no", s->tools ? "yes" : "no");
        if (size > 0) {
                size_t l = MIN(d.len, size - 1);
                if (l)
                        memcpy(buf, d.data, l);
                buf[l] = 0;
        }
        kb_buf_free(&d);
}
