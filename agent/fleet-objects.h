/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 6 of 12, policy at work: calls layer 8. */

/* The object table shared through the quota store: every object a broker
 * records is written to the hash PREFIXobjects, so that a team's file made
 * through one host is its own (and reached through the same route and key
 * version) on every host, and a batch billed by one host is not billed by
 * another that loads it afterwards. Writes are fire-and-forget; a lookup
 * answers asynchronously. Library-like: never logs. */

#include "objects.h"

struct kb_store;
struct kb_fleet_objects;
struct kb_fleet_lookup;

int kb_fleet_objects_new(struct kb_store *s, struct kb_fleet_objects **ret);
struct kb_fleet_objects *kb_fleet_objects_free(struct kb_fleet_objects *fo);

/* Write o (again, e.g. once billed) / remove id; nothing when offline. */
void kb_fleet_objects_put(struct kb_fleet_objects *fo, const struct kb_object *o);
void kb_fleet_objects_forget(struct kb_fleet_objects *fo, const char *id);

/* o: the object as the store has it (valid during the call), NULL when it
 * has none or did not answer. */
typedef void (*kb_fleet_object_cb)(void *userdata, const struct kb_object *o);
/* 0 and *ret (cb comes later, exactly once, unless cancelled); -ENOTCONN
 * when the store is not online. */
int kb_fleet_objects_get(struct kb_fleet_objects *fo, const char *id, kb_fleet_object_cb cb, void *userdata,
                         struct kb_fleet_lookup **ret);
/* The asker is gone: cb is not called. Accepts NULL. */
void kb_fleet_lookup_cancel(struct kb_fleet_lookup *l);
