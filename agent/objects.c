/* SPDX-License-Identifier: MIT */
/* The object table: a chained hash of ids, and its log. One line per
 * change, tab-separated (names are config identifiers and provider ids,
 * neither holds a tab or a newline):
 *   +  ID RECORD   (kb_object_format(): the object's fields, billed included)
 *   b  ID          (billed)
 *   -  ID          (deleted)
 * At open the log is replayed and written again with only what is alive. */

#include <fcntl.h>
#include <jansson.h>
#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>

#include "objects.h"
#include "util.h"

struct entry {
        struct entry *next;
        struct kb_object obj;
        char *strings;          /* id, team, route, key: one allocation */
};

struct kb_objects {
        struct entry **buckets;
        size_t n_buckets;       /* power of two */
        size_t n;
        uint64_t dropped;
        char *path;
        int fd;                 /* the log, O_APPEND; -1: memory only */
        const struct kb_objects_mirror *mirror;
        void *mirror_userdata;
};

static size_t bucket_of(const struct kb_objects *o, const char *id) {
        return (size_t) kb_fnv1a64(id, strlen(id)) & (o->n_buckets - 1);
}

static struct entry **slot_of(const struct kb_objects *o, const char *id) {
        struct entry **p = &o->buckets[bucket_of(o, id)];
        while (*p && !streq((*p)->obj.id, id))
                p = &(*p)->next;
        return p;
}

static int grow(struct kb_objects *o) {
        size_t n = o->n_buckets ? o->n_buckets * 2 : 1024;
        struct entry **b = calloc(n, sizeof(*b));
        if (!b)
                return -ENOMEM;
        for (size_t i = 0; i < o->n_buckets; i++)
                for (struct entry *e = o->buckets[i], *next; e; e = next) {
                        next = e->next;
                        size_t k = (size_t) kb_fnv1a64(e->obj.id, strlen(e->obj.id)) & (n - 1);
                        e->next = b[k];
                        b[k] = e;
                }
        free(o->buckets);
        o->buckets = b;
        o->n_buckets = n;
        return 0;
}

static bool field_ok(const char *s) {
        return s && *s && !strpbrk(s, "\t\n\r") && strlen(s) <= 256;
}

static int insert(struct kb_objects *o, const struct kb_object *obj) {
        if (!field_ok(obj->id) || !field_ok(obj->team) || !field_ok(obj->route) || (obj->key && !field_ok(obj->key)) ||
            (obj->models && (strpbrk(obj->models, "\t\n\r") || strlen(obj->models) > 4096)))
                return -EINVAL;
        struct entry **p = slot_of(o, obj->id);
        if (!*p && o->n >= KB_OBJECTS_MAX) {
                o->dropped++;
                return -ENOSPC;
        }
        if (!*p && o->n + 1 > o->n_buckets) {
                int r = grow(o);
                if (r < 0)
                        return r;
                p = slot_of(o, obj->id);
        }
        struct entry *e = calloc(1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        size_t li = strlen(obj->id) + 1, lt = strlen(obj->team) + 1, lr = strlen(obj->route) + 1,
               lk = obj->key ? strlen(obj->key) + 1 : 0, lm = obj->models ? strlen(obj->models) + 1 : 0;
        e->strings = malloc(li + lt + lr + lk + lm);
        if (!e->strings) {
                free(e);
                return -ENOMEM;
        }
        e->obj = *obj;
        e->obj.id = memcpy(e->strings, obj->id, li);
        e->obj.team = memcpy(e->strings + li, obj->team, lt);
        e->obj.route = memcpy(e->strings + li + lt, obj->route, lr);
        e->obj.key = obj->key ? memcpy(e->strings + li + lt + lr, obj->key, lk) : NULL;
        e->obj.models = obj->models ? memcpy(e->strings + li + lt + lr + lk, obj->models, lm) : NULL;
        if (*p) {
                struct entry *old = *p;
                e->next = old->next;
                free(old->strings);
                free(old);
        } else
                o->n++;
        *p = e;
        return 0;
}

static void remove_id(struct kb_objects *o, const char *id) {
        struct entry **p = slot_of(o, id);
        if (!*p)
                return;
        struct entry *e = *p;
        *p = e->next;
        free(e->strings);
        free(e);
        o->n--;
}

int kb_object_format(const struct kb_object *obj, char *buf, size_t size) {
        int n = snprintf(buf, size, "%s\t%s\t%s\t%s\t%u\t%" PRIu64 "\t%d\t%s\t%" PRIu64 "\t%" PRIu64,
                         kb_object_kind_to_string(obj->kind), obj->team, obj->route, obj->key ?: "-",
                         obj->key_version, obj->created_usec, obj->billed ? 1 : 0,
                         obj->models ? (*obj->models ? obj->models : ",") : "-", obj->lines, obj->bytes);
        return n < 0 || (size_t) n >= size ? -E2BIG : n;
}

int kb_object_parse(char *record, const char *id, struct kb_object *ret) {
        char *f[10];
        size_t n = 0;
        for (char *s = record, *tab; n < ELEMENTSOF(f); s = tab + 1) {
                f[n++] = s;
                if (!(tab = strchr(s, '\t')))
                        break;
                *tab = 0;
        }
        if (n != ELEMENTSOF(f) || !*f[1] || !*f[2])
                return -EBADMSG;
        *ret = (struct kb_object) {
                .id = id,
                .kind = kb_object_kind_from_string(f[0]),
                .team = f[1],
                .route = f[2],
                .key = streq(f[3], "-") ? NULL : f[3],
                .key_version = (unsigned) strtoul(f[4], NULL, 10),
                .created_usec = strtoull(f[5], NULL, 10),
                .billed = streq(f[6], "1"),
                .models = streq(f[7], "-") ? NULL : streq(f[7], ",") ? "" : f[7],
                .lines = strtoull(f[8], NULL, 10),
                .bytes = strtoull(f[9], NULL, 10),
        };
        return ret->kind == KB_OBJECT_NONE ? -EBADMSG : 0;
}

/* "+\tID\tRECORD\n" */
static int format_add(const struct kb_object *obj, char *buf, size_t size) {
        int n = snprintf(buf, size, "+\t%s\t", obj->id);
        if (n < 0 || (size_t) n >= size)
                return -E2BIG;
        int k = kb_object_format(obj, buf + n, size - (size_t) n - 1);
        if (k < 0)
                return k;
        buf[n + k] = '\n';
        buf[n + k + 1] = 0;
        return n + k + 1;
}

static int append_line(struct kb_objects *o, const char *line, size_t n) {
        if (o->fd < 0)
                return 0;
        ssize_t w = write(o->fd, line, n);
        if (w < 0)
                return -errno;
        return (size_t) w == n ? 0 : -EIO;
}

static void replay_line(struct kb_objects *o, char *line) {
        char *id = strchr(line, '\t'), *rest;
        if (!id)
                return;
        *id++ = 0;
        rest = strchr(id, '\t');
        if (rest)
                *rest++ = 0;
        struct kb_object obj;
        if (streq(line, "-") && !rest)
                remove_id(o, id);
        else if (streq(line, "b") && !rest) {
                struct entry **p = slot_of(o, id);
                if (*p)
                        (*p)->obj.billed = true;
        } else if (streq(line, "+") && rest && kb_object_parse(rest, id, &obj) >= 0)
                (void) insert(o, &obj);
}

/* Write what is alive to a new file and put it in the log's place. */
static int compact(struct kb_objects *o) {
        _cleanup_free_ char *tmp = NULL;
        if (asprintf(&tmp, "%s.new", o->path) < 0)
                return -ENOMEM;
        _cleanup_fclose_ FILE *f = fopen(tmp, "we");
        if (!f)
                return -errno;
        char line[8192];
        for (size_t i = 0; i < o->n_buckets; i++)
                for (struct entry *e = o->buckets[i]; e; e = e->next) {
                        int n = format_add(&e->obj, line, sizeof(line));
                        if (n > 0)
                                fwrite(line, 1, (size_t) n, f);
                }
        if (fflush(f) != 0 || fsync(fileno(f)) < 0 || rename(tmp, o->path) < 0) {
                int r = -errno;
                (void) unlink(tmp);
                return r;
        }
        return 0;
}

int kb_objects_open(const char *path, struct kb_objects **ret) {
        struct kb_objects *o = calloc(1, sizeof(*o));
        int r;

        if (!o)
                return -ENOMEM;
        o->fd = -1;
        r = grow(o);
        if (r < 0)
                goto fail;
        if (path) {
                o->path = strdup(path);
                if (!o->path) {
                        r = -ENOMEM;
                        goto fail;
                }
                _cleanup_fclose_ FILE *f = fopen(path, "re");
                if (!f && errno != ENOENT) {
                        r = -errno;
                        goto fail;
                }
                char *line = NULL;
                size_t cap = 0;
                ssize_t n;
                while (f && (n = getline(&line, &cap, f)) > 0) {
                        if (line[n - 1] != '\n')
                                break;  /* a torn last line: the write never finished */
                        line[n - 1] = 0;
                        replay_line(o, line);
                }
                free(line);
                r = compact(o);
                if (r < 0)
                        goto fail;
                o->fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
                if (o->fd < 0) {
                        r = -errno;
                        goto fail;
                }
        }
        *ret = o;
        return 0;
fail:
        kb_objects_free(o);
        return r;
}

struct kb_objects *kb_objects_free(struct kb_objects *o) {
        if (!o)
                return NULL;
        for (size_t i = 0; i < o->n_buckets; i++)
                for (struct entry *e = o->buckets[i], *next; e; e = next) {
                        next = e->next;
                        free(e->strings);
                        free(e);
                }
        free(o->buckets);
        if (o->fd >= 0)
                close(o->fd);
        free(o->path);
        free(o);
        return NULL;
}

const struct kb_object *kb_objects_find(const struct kb_objects *o, const char *id) {
        if (!o || !id)
                return NULL;
        struct entry *e = *slot_of(o, id);
        return e ? &e->obj : NULL;
}

void kb_objects_set_mirror(struct kb_objects *o, const struct kb_objects_mirror *m, void *userdata) {
        o->mirror = m;
        o->mirror_userdata = userdata;
}

static int add(struct kb_objects *o, const struct kb_object *obj, bool mirror) {
        char line[8192];
        if (!o || !obj)
                return -EINVAL;
        int r = insert(o, obj);
        if (r < 0)
                return r;
        if (mirror && o->mirror)
                o->mirror->put(o->mirror_userdata, kb_objects_find(o, obj->id));
        int n = format_add(obj, line, sizeof(line));
        return n < 0 ? n : append_line(o, line, (size_t) n);
}

int kb_objects_add(struct kb_objects *o, const struct kb_object *obj) {
        return add(o, obj, true);
}

int kb_objects_cache(struct kb_objects *o, const struct kb_object *obj) {
        int r = add(o, obj, false);
        if (r >= 0 && obj->billed)
                r = kb_objects_set_billed(o, obj->id);
        return r;
}

static int mark(struct kb_objects *o, char what, const char *id) {
        char line[KB_OBJECT_ID_MAX + 8];
        int n = snprintf(line, sizeof(line), "%c\t%s\n", what, id);
        if (n < 0 || (size_t) n >= sizeof(line))
                return -E2BIG;
        return append_line(o, line, (size_t) n);
}

int kb_objects_set_billed(struct kb_objects *o, const char *id) {
        struct entry *e = o ? *slot_of(o, id) : NULL;
        if (!e)
                return -ENOENT;
        if (e->obj.billed)
                return 0;
        e->obj.billed = true;
        if (o->mirror)
                o->mirror->put(o->mirror_userdata, &e->obj);
        return mark(o, 'b', id);
}

int kb_objects_forget(struct kb_objects *o, const char *id) {
        if (!o || !*slot_of(o, id))
                return -ENOENT;
        remove_id(o, id);
        if (o->mirror)
                o->mirror->forget(o->mirror_userdata, id);
        return mark(o, '-', id);
}

int kb_objects_foreach(const struct kb_objects *o, int (*cb)(const struct kb_object *obj, void *userdata),
                       void *userdata) {
        for (size_t i = 0; o && i < o->n_buckets; i++)
                for (struct entry *e = o->buckets[i]; e; e = e->next) {
                        int r = cb(&e->obj, userdata);
                        if (r != 0)
                                return r;
                }
        return 0;
}

void kb_objects_adopt_files(struct kb_objects *o, const struct kb_object *owner, char *const *ids, size_t n) {
        for (size_t i = 0; owner && i < n; i++)
                if (ids[i] && !kb_objects_find(o, ids[i]))
                        (void) kb_objects_add(o, &(struct kb_object) {
                                .id = ids[i], .kind = KB_OBJECT_FILE, .team = owner->team, .route = owner->route,
                                .key = owner->key, .key_version = owner->key_version,
                                .created_usec = kb_realtime_usec() });
}

size_t kb_objects_count(const struct kb_objects *o) {
        return o ? o->n : 0;
}

uint64_t kb_objects_dropped(const struct kb_objects *o) {
        return o ? o->dropped : 0;
}

/* A list answer ({"data": [objects…], "first_id", "last_id", …}) with only
 * the team's objects of that kind left in "data"; the page ids follow. */
int kb_objects_filter_list(const struct kb_objects *o, const char *team, kb_object_kind kind, const char *json,
                           size_t len, struct kb_buf *out) {
        json_t *root = json_loadb(json, len, 0, NULL);
        json_t *data = json_object_get(root, "data");
        if (!json_is_array(data)) {
                json_decref(root);
                return -EBADMSG;
        }
        json_t *kept = json_array();
        size_t i;
        json_t *item;
        json_array_foreach(data, i, item) {
                const struct kb_object *obj = kb_objects_find(o, json_string_value(json_object_get(item, "id")));
                if (kept && obj && obj->kind == kind && streq(obj->team, team))
                        json_array_append(kept, item);
        }
        size_t n = kept ? json_array_size(kept) : 0;
        int r = kept ? json_object_set_new(root, "data", kept) : -1;
        if (r == 0 && json_object_get(root, "first_id"))
                r = json_object_set_new(root, "first_id",
                                        n ? json_copy(json_object_get(json_array_get(kept, 0), "id")) : json_null());
        if (r == 0 && json_object_get(root, "last_id"))
                r = json_object_set_new(root, "last_id",
                                        n ? json_copy(json_object_get(json_array_get(kept, n - 1), "id")) : json_null());
        char *s = r == 0 ? json_dumps(root, JSON_COMPACT) : NULL;
        json_decref(root);
        if (!s)
                return -ENOMEM;
        kb_buf_clear(out);
        r = kb_buf_append(out, s, strlen(s));
        free(s);
        return r;
}
