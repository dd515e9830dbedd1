/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 8 of 12, decisions: calls layer 12. */

/* Which team owns each provider object (file, batch, video, stored response,
 * message batch) created through this broker, and the route and key version
 * that created it, so that another team never sees it and every later call on
 * it goes where it was made. Kept in memory and in state_dir/objects (an
 * append-only log, compacted at open). Library-like: never logs; returns
 * -errno. */

#include <stdbool.h>
#include <stdint.h>

#include "endpoint.h"
#include "util.h"

/* More objects than this are not remembered (the create still succeeds
 * for the app; kb_objects_dropped() counts them): the table's memory is
 * bounded whatever apps do. */
#define KB_OBJECTS_MAX 1000000u

struct kb_objects;

struct kb_object {
        const char *id;
        kb_object_kind kind;
        const char *team;
        const char *route;
        const char *key;        /* key name, NULL when the route has none */
        unsigned key_version;
        uint64_t created_usec;  /* realtime */
        bool billed;            /* its usage (batch, video) has been journaled */
        /* a batch input file read as it was uploaded (batch-file.h): its
         * models, comma-separated (NULL: unknown), requests and bytes */
        const char *models;
        uint64_t lines;
        uint64_t bytes;
};

/* path NULL: memory only (tests, no state_dir). A log that cannot be read
 * line by line is read up to the bad line; -errno only when the file
 * cannot be opened or written. */
int kb_objects_open(const char *path, struct kb_objects **ret);
struct kb_objects *kb_objects_free(struct kb_objects *o);

/* NULL when never seen or deleted. */
const struct kb_object *kb_objects_find(const struct kb_objects *o, const char *id);
/* Remember a new object (a second add of the same id replaces it). */
int kb_objects_add(struct kb_objects *o, const struct kb_object *obj);
int kb_objects_set_billed(struct kb_objects *o, const char *id);
int kb_objects_forget(struct kb_objects *o, const char *id);

/* Replace out's list answer (json/len; may be out's own bytes: they are
 * read first) with the team's objects of kind alone. -EBADMSG when it is not
 * a JSON object with a "data" array. */
int kb_objects_filter_list(const struct kb_objects *o, const char *team, kb_object_kind kind, const char *json,
                           size_t len, struct kb_buf *out);

/* Each object, in no order, until cb returns non-zero (returned). cb must
 * not change the table. */
int kb_objects_foreach(const struct kb_objects *o, int (*cb)(const struct kb_object *obj, void *userdata),
                       void *userdata);

/* Files an object made (a batch's output and error files): its team's,
 * reached through its route and key version. NULL ids are skipped. */
void kb_objects_adopt_files(struct kb_objects *o, const struct kb_object *owner, char *const *ids, size_t n);

/* An object learned from elsewhere (the fleet store): kept like any other,
 * not mirrored back. */
int kb_objects_cache(struct kb_objects *o, const struct kb_object *obj);

/* The owner's mirror (the fleet store): told of every add, billing and
 * removal made here. NULL: none. */
struct kb_objects_mirror {
        void (*put)(void *userdata, const struct kb_object *obj);
        void (*forget)(void *userdata, const char *id);
};
void kb_objects_set_mirror(struct kb_objects *o, const struct kb_objects_mirror *m, void *userdata);

/* One object's fields as a line of text (no id, no newline), as the log
 * and the fleet store keep it: "KIND\tTEAM\tROUTE\tKEY\tVERSION\tCREATED\t
 * BILLED\tMODELS\tLINES\tBYTES". Returns its length or -E2BIG. */
int kb_object_format(const struct kb_object *obj, char *buf, size_t size);
/* The reverse, in place (ret's strings point into record). -EBADMSG. */
int kb_object_parse(char *record, const char *id, struct kb_object *ret);

size_t kb_objects_count(const struct kb_objects *o);
uint64_t kb_objects_dropped(const struct kb_objects *o);
