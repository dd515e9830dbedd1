/* SPDX-License-Identifier: MIT */
/* A shadow's own daily cap: what each model's shadow calls cost on the
 * current UTC day, kept in state_dir/shadow.json so that a restart does
 * not hand a model a fresh budget. Library-like: never logs. */

#include <inttypes.h>
#include <jansson.h>
#include <time.h>

#include "json-util.h"
#include "shadow.h"

#define USEC_PER_DAY (86400 * USEC_PER_SEC)

struct entry {
        char *model;
        uint64_t day;           /* UTC days since the epoch */
        int64_t spent;          /* micro-USD */
        bool reached;           /* budget_reached journaled since the spend was last below the cap */
};

struct kb_shadow_budget {
        struct entry *e;
        size_t n;
        bool dirty;
};

int kb_shadow_budget_new(struct kb_shadow_budget **ret) {
        struct kb_shadow_budget *b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        *ret = b;
        return 0;
}

struct kb_shadow_budget *kb_shadow_budget_free(struct kb_shadow_budget *b) {
        if (!b)
                return NULL;
        for (size_t i = 0; i < b->n; i++)
                free(b->e[i].model);
        free(b->e);
        free(b);
        return NULL;
}

static struct entry *find(const struct kb_shadow_budget *b, const char *model) {
        for (size_t i = 0; i < b->n; i++)
                if (streq(b->e[i].model, model))
                        return &b->e[i];
        return NULL;
}

static int add_entry(struct kb_shadow_budget *b, const char *model, struct entry **ret) {
        if (b->n >= KB_SHADOW_BUDGET_MAX_MODELS)
                return -E2BIG;
        struct entry *n = reallocarray(b->e, b->n + 1, sizeof(*n));
        if (!n)
                return -ENOMEM;
        b->e = n;
        char *m = strdup(model);
        if (!m)
                return -ENOMEM;
        b->e[b->n] = (struct entry) { .model = m };
        *ret = &b->e[b->n++];
        return 0;
}

int64_t kb_shadow_budget_spent(const struct kb_shadow_budget *b, const char *model, uint64_t now_realtime) {
        const struct entry *e = b && model ? find(b, model) : NULL;
        return e && e->day == now_realtime / USEC_PER_DAY ? e->spent : 0;
}

int kb_shadow_budget_add(struct kb_shadow_budget *b, const char *model, int64_t cost, int64_t cap,
                         uint64_t now_realtime) {
        struct entry *e;
        uint64_t day = now_realtime / USEC_PER_DAY;

        if (!b || !model)
                return -EINVAL;
        e = find(b, model);
        if (!e) {
                int q = add_entry(b, model, &e);
                if (q < 0)
                        return q;
        }
        if (e->day != day) {
                e->day = day;
                e->spent = 0;
                e->reached = false;
        }
        if (cost > 0)
                e->spent = cost > INT64_MAX - e->spent ? INT64_MAX : e->spent + cost;
        b->dirty = true;
        /* A cap raised by a reload lets the model run again, and its next
         * crossing is journaled again. */
        if (e->spent < cap) {
                e->reached = false;
                return 0;
        }
        if (e->reached)
                return 0;
        e->reached = true;
        return 1;
}

bool kb_shadow_budget_dirty(const struct kb_shadow_budget *b) {
        return b && b->dirty;
}

static void format_day(uint64_t day, char buf[static 16]) {
        time_t t = (time_t) (day * 86400);
        struct tm tm;
        if (!gmtime_r(&t, &tm) || strftime(buf, 16, "%Y-%m-%d", &tm) == 0)
                snprintf(buf, 16, "1970-01-01");
}

static int parse_day(const char *s, uint64_t *ret) {
        struct tm tm = {};
        char *end;

        if (!s || !(end = strptime(s, "%Y-%m-%d", &tm)) || *end)
                return -EINVAL;
        time_t t = timegm(&tm);
        if (t < 0)
                return -EINVAL;
        *ret = (uint64_t) t / 86400;
        return 0;
}

int kb_shadow_budget_save(struct kb_shadow_budget *b, const char *path) {
        json_t *models = json_object();

        if (!b || !path) {
                json_decref(models);
                return -EINVAL;
        }
        for (size_t i = 0; models && i < b->n; i++) {
                char day[16];
                format_day(b->e[i].day, day);
                if (json_object_set_new(models, b->e[i].model,
                                        json_pack("{s:s, s:I, s:b}", "day", day, "spent_microusd",
                                                  (json_int_t) b->e[i].spent, "budget_reached",
                                                  b->e[i].reached)) < 0) {
                        json_decref(models);
                        models = NULL;
                }
        }
        json_t *doc = models ? json_pack("{s:i, s:o}", "version", 1, "models", models) : NULL;
        if (!doc)
                return -ENOMEM;
        int q = kb_json_write_file(path, doc, 0600, 0);
        json_decref(doc);
        if (q < 0)
                return q;
        b->dirty = false;
        return 0;
}

int kb_shadow_budget_load(struct kb_shadow_budget *b, const char *path, uint64_t now_realtime) {
        const char *name;
        json_t *v;

        if (!b || !path)
                return -EINVAL;
        json_t *doc;
        int q = kb_json_read_file(path, KB_SHADOW_BUDGET_FILE_MAX, &doc);
        if (q < 0 || !doc)
                return q;
        json_t *models = json_object_get(doc, "models"), *ver = json_object_get(doc, "version");
        if (!json_is_object(models) || !json_is_integer(ver) || json_integer_value(ver) != 1 ||
            json_object_size(models) > KB_SHADOW_BUDGET_MAX_MODELS) {
                json_decref(doc);
                return -EBADMSG;
        }
        /* All or nothing: every entry is checked before one is taken. */
        json_object_foreach(models, name, v) {
                uint64_t day;
                json_t *sp = json_object_get(v, "spent_microusd");
                if (parse_day(json_string_value(json_object_get(v, "day")), &day) < 0 || !json_is_integer(sp) ||
                    json_integer_value(sp) < 0 || !json_is_boolean(json_object_get(v, "budget_reached"))) {
                        json_decref(doc);
                        return -EBADMSG;
                }
        }
        uint64_t today = now_realtime / USEC_PER_DAY;
        json_object_foreach(models, name, v) {
                uint64_t day;
                struct entry *e;
                (void) parse_day(json_string_value(json_object_get(v, "day")), &day);
                if (day != today)
                        continue;
                e = find(b, name);
                if (!e && (q = add_entry(b, name, &e)) < 0)
                        break;
                e->day = day;
                e->spent = (int64_t) json_integer_value(json_object_get(v, "spent_microusd"));
                e->reached = json_is_true(json_object_get(v, "budget_reached"));
        }
        json_decref(doc);
        return q;
}
