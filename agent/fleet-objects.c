/* SPDX-License-Identifier: MIT */
/* One hash field per object, its value kb_object_format()'s record. */

#include <hiredis/hiredis.h>
#include <stdio.h>

#include "fleet-objects.h"
#include "fleet-store.h"
#include "util.h"

static const char script_put[] =
        "redis.call('HSET', ARGV[1] .. 'objects', ARGV[2], ARGV[3])\n"
        "return 1\n";
static const char script_get[] =
        "return redis.call('HGET', ARGV[1] .. 'objects', ARGV[2])\n";
static const char script_del[] =
        "redis.call('HDEL', ARGV[1] .. 'objects', ARGV[2])\n"
        "return 1\n";

struct kb_fleet_objects {
        struct kb_store *store;
        int s_put, s_get, s_del;
};

struct kb_fleet_lookup {
        char id[KB_OBJECT_ID_MAX + 1];
        kb_fleet_object_cb cb;
        void *userdata;
        bool cancelled;
};

int kb_fleet_objects_new(struct kb_store *s, struct kb_fleet_objects **ret) {
        struct kb_fleet_objects *fo = calloc(1, sizeof(*fo));
        if (!fo)
                return -ENOMEM;
        fo->store = s;
        if ((fo->s_put = kb_store_add_script(s, script_put)) < 0 || (fo->s_get = kb_store_add_script(s, script_get)) < 0 ||
            (fo->s_del = kb_store_add_script(s, script_del)) < 0) {
                int r = fo->s_put < 0 ? fo->s_put : fo->s_get < 0 ? fo->s_get : fo->s_del;
                free(fo);
                return r;
        }
        *ret = fo;
        return 0;
}

struct kb_fleet_objects *kb_fleet_objects_free(struct kb_fleet_objects *fo) {
        free(fo);
        return NULL;
}

static void ignore_reply(void *userdata, const redisReply *reply) {
}

void kb_fleet_objects_put(struct kb_fleet_objects *fo, const struct kb_object *o) {
        char value[8192];
        if (!fo || !o || kb_object_format(o, value, sizeof(value)) < 0)
                return;
        const char *argv[] = { kb_store_prefix(fo->store), o->id, value };
        (void) kb_store_eval(fo->store, (unsigned) fo->s_put, 3, argv, NULL, ignore_reply, NULL);
}

void kb_fleet_objects_forget(struct kb_fleet_objects *fo, const char *id) {
        if (!fo || !id)
                return;
        const char *argv[] = { kb_store_prefix(fo->store), id };
        (void) kb_store_eval(fo->store, (unsigned) fo->s_del, 2, argv, NULL, ignore_reply, NULL);
}

static void on_got(void *userdata, const redisReply *reply) {
        struct kb_fleet_lookup *l = userdata;
        struct kb_object o;
        char buf[8192];
        bool found = false;

        if (!l->cancelled && reply && reply->type == REDIS_REPLY_STRING && reply->len < sizeof(buf)) {
                memcpy(buf, reply->str, reply->len);
                buf[reply->len] = 0;
                found = kb_object_parse(buf, l->id, &o) >= 0;
        }
        if (!l->cancelled)
                l->cb(l->userdata, found ? &o : NULL);
        free(l);
}

int kb_fleet_objects_get(struct kb_fleet_objects *fo, const char *id, kb_fleet_object_cb cb, void *userdata,
                         struct kb_fleet_lookup **ret) {
        if (!fo || !kb_store_online(fo->store))
                return -ENOTCONN;
        if (strlen(id) > KB_OBJECT_ID_MAX)
                return -EINVAL;
        struct kb_fleet_lookup *l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        snprintf(l->id, sizeof(l->id), "%s", id);
        l->cb = cb;
        l->userdata = userdata;
        const char *argv[] = { kb_store_prefix(fo->store), id };
        int r = kb_store_eval(fo->store, (unsigned) fo->s_get, 2, argv, NULL, on_got, l);
        if (r < 0) {
                free(l);
                return r;
        }
        *ret = l;
        return 0;
}

void kb_fleet_lookup_cancel(struct kb_fleet_lookup *l) {
        if (l)
                l->cancelled = true;
}
