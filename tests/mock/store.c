/* SPDX-License-Identifier: MIT */
/* What the mock remembers between requests: files, batches, videos, stored
 * responses and message batches, in memory, process-wide, under one mutex
 * (each connection is a thread). Objects are kept in creation order; lists
 * answer newest first. Plus the list pages both families use, the query
 * string and ISO 8601 times. */

#include "mock.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

/* Stored responses are kept for every POST /v1/responses, benchmarks
 * included: only the newest this many. */
#define MOCK_MAX_STORED_RESPONSES 4096

static pthread_mutex_t store_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mock_obj **objs; /* creation order */
static size_t n_objs, cap_objs;
static size_t n_responses;

void mock_store_lock(void) {
        pthread_mutex_lock(&store_lock);
}

void mock_store_unlock(void) {
        pthread_mutex_unlock(&store_lock);
}

static void obj_free(struct mock_obj *o) {
        if (!o)
                return;
        free(o->id);
        json_decref(o->json);
        json_decref(o->state);
        free(o->data);
        free(o);
}

static void remove_at(size_t i) {
        struct mock_obj *o = objs[i];
        if (o->kind == MOCK_OBJ_RESPONSE)
                n_responses--;
        memmove(&objs[i], &objs[i + 1], (n_objs - i - 1) * sizeof(*objs));
        n_objs--;
        obj_free(o);
}

struct mock_obj *mock_store_add(enum mock_kind kind, bool anthropic, const char *id, json_t *json, json_t *state,
                                char *data, size_t size) {
        struct mock_obj *o = calloc(1, sizeof(*o));
        if (o) {
                *o = (struct mock_obj) {
                        .kind = kind,
                        .anthropic = anthropic,
                        .id = strdup(id),
                        .json = json,
                        .state = state ?: json_object(),
                        .data = data,
                        .size = size,
                };
                json = state = NULL;
                data = NULL;
        }
        if (!o || !o->id || !o->json || !o->state) {
                json_decref(json);
                json_decref(state);
                free(data);
                obj_free(o);
                return NULL;
        }
        if (n_objs == cap_objs) {
                size_t ncap = cap_objs ? cap_objs * 2 : 64;
                struct mock_obj **n = realloc(objs, ncap * sizeof(*n));
                if (!n) {
                        obj_free(o);
                        return NULL;
                }
                objs = n;
                cap_objs = ncap;
        }
        objs[n_objs++] = o;
        if (kind == MOCK_OBJ_RESPONSE && ++n_responses > MOCK_MAX_STORED_RESPONSES)
                for (size_t i = 0; i < n_objs; i++)
                        if (objs[i]->kind == MOCK_OBJ_RESPONSE) {
                                remove_at(i);
                                break;
                        }
        return o;
}

struct mock_obj *mock_store_find(enum mock_kind kind, bool anthropic, const char *id) {
        for (size_t i = n_objs; i > 0; i--) {
                struct mock_obj *o = objs[i - 1];
                if (o->kind == kind && o->anthropic == anthropic && streq(o->id, id))
                        return o;
        }
        return NULL;
}

void mock_store_remove(struct mock_obj *o) {
        for (size_t i = 0; i < n_objs; i++)
                if (objs[i] == o) {
                        remove_at(i);
                        return;
                }
}

json_t *mock_store_all(enum mock_kind kind, bool anthropic, bool (*keep)(const struct mock_obj *o, const void *arg),
                       const void *arg) {
        json_t *a = json_array();
        for (size_t i = n_objs; a && i > 0; i--) {
                const struct mock_obj *o = objs[i - 1];
                if (o->kind != kind || o->anthropic != anthropic || (keep && !keep(o, arg)))
                        continue;
                if (json_array_append_new(a, json_deep_copy(o->json)) < 0) {
                        json_decref(a);
                        return NULL;
                }
        }
        return a;
}

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

char *mock_query(const struct mock_request *req, const char *name) {
        const char *q = strchr(req->url, '?');
        size_t nlen = strlen(name);
        if (!q)
                return NULL;
        for (const char *p = q + 1; *p;) {
                size_t len = strcspn(p, "&#");
                const char *eq = memchr(p, '=', len);
                size_t klen = eq ? (size_t) (eq - p) : len;
                if (klen == nlen && strncmp(p, name, nlen) == 0) {
                        const char *v = eq ? eq + 1 : p + len;
                        size_t vlen = (size_t) (p + len - v);
                        char *out = malloc(vlen + 1), *o = out;
                        if (!out)
                                return NULL;
                        for (size_t i = 0; i < vlen; i++) {
                                if (v[i] == '%' && i + 2 < vlen && unhex(v[i + 1]) >= 0 && unhex(v[i + 2]) >= 0) {
                                        *o++ = (char) (unhex(v[i + 1]) * 16 + unhex(v[i + 2]));
                                        i += 2;
                                } else
                                        *o++ = v[i] == '+' ? ' ' : v[i];
                        }
                        *o = 0;
                        return out;
                }
                if (p[len] != '&')
                        break;
                p += len + 1;
        }
        return NULL;
}

void mock_iso8601(int64_t t, char out[static 32]) {
        time_t tt = (time_t) t;
        struct tm tm;
        if (!gmtime_r(&tt, &tm) || strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                snprintf(out, 32, "1970-01-01T00:00:00Z");
}

/* ?limit=N within [1, max], else def. */
static size_t query_limit(const struct mock_request *req, size_t def, size_t max) {
        _cleanup_free_ char *v = mock_query(req, "limit");
        if (!v || !*v)
                return def;
        char *end;
        unsigned long long n = strtoull(v, &end, 10);
        if (*end || n < 1)
                return def;
        return n > max ? max : (size_t) n;
}

/* The index of the item with this id, or -1. */
static ssize_t index_of(json_t *items, const char *id) {
        size_t i;
        json_t *it;
        json_array_foreach(items, i, it)
                if (id && streq_ptr(json_string_value(json_object_get(it, "id")), id))
                        return (ssize_t) i;
        return -1;
}

/* Items [from, to) of items, as a page: data, first_id, last_id. */
static json_t *page(json_t *items, size_t from, size_t to, bool has_more, bool openai) {
        json_t *data = json_array();
        for (size_t i = from; data && i < to; i++)
                if (json_array_append(data, json_array_get(items, i)) < 0) {
                        json_decref(data);
                        data = NULL;
                }
        json_t *first = to > from ? json_object_get(json_array_get(items, from), "id") : NULL;
        json_t *last = to > from ? json_object_get(json_array_get(items, to - 1), "id") : NULL;
        /* O? packs a NULL as null: the ids of an empty page */
        json_t *p = openai ?
                json_pack("{ss so sO? sO? sb}", "object", "list", "data", data, "first_id", first, "last_id", last,
                          "has_more", has_more) :
                json_pack("{so sb sO? sO?}", "data", data, "has_more", has_more, "first_id", first, "last_id", last);
        json_decref(items);
        return p;
}

json_t *mock_page_openai(const struct mock_request *req, json_t *items, size_t default_limit) {
        if (!items)
                return NULL;
        _cleanup_free_ char *order = mock_query(req, "order");
        _cleanup_free_ char *after = mock_query(req, "after");
        if (streq_ptr(order, "asc")) {
                json_t *rev = json_array();
                for (size_t i = json_array_size(items); rev && i > 0; i--)
                        if (json_array_append(rev, json_array_get(items, i - 1)) < 0) {
                                json_decref(rev);
                                rev = NULL;
                        }
                json_decref(items);
                if (!rev)
                        return NULL;
                items = rev;
        }
        size_t n = json_array_size(items), limit = query_limit(req, default_limit, 10000);
        ssize_t at = index_of(items, after);
        size_t from = at >= 0 ? (size_t) at + 1 : 0, to = MIN(n, from + limit);
        return page(items, from, to, to < n, true);
}

json_t *mock_page_anthropic(const struct mock_request *req, json_t *items) {
        if (!items)
                return NULL;
        _cleanup_free_ char *after = mock_query(req, "after_id");
        _cleanup_free_ char *before = mock_query(req, "before_id");
        size_t n = json_array_size(items), limit = query_limit(req, 20, 1000);
        ssize_t b = index_of(items, before);
        if (before && b >= 0) {
                size_t to = (size_t) b, from = to > limit ? to - limit : 0;
                return page(items, from, to, from > 0, false);
        }
        ssize_t a = index_of(items, after);
        size_t from = a >= 0 ? (size_t) a + 1 : 0, to = MIN(n, from + limit);
        return page(items, from, to, to < n, false);
}
