/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 11 of 12, keys: calls layer 12. */
/* Below everything that opens a key for a call (proxy, shadow, preflight,
 * batch-poll). Calls keystore.c and sd-event. Never logs.
 *
 * A key opened for a call stays readable while calls use it and is sealed
 * again about a second after the last one let go: one timer for all keys,
 * armed at the first release and left alone while armed (reprogramming it
 * per request cost a system call each). */

#include <systemd/sd-event.h>

struct kb_key;

struct kb_keyseal {
        sd_event *event;
        sd_event_source *timer;         /* kb_keys_reseal_idle() while keys are readable */
};

/* Done with a key opened for a call: kb_key_release() it and make sure it
 * is resealed within about a second once nothing uses it. Accepts NULL. */
void kb_keyseal_release(struct kb_keyseal *s, struct kb_key *k);
/* At exit. */
void kb_keyseal_done(struct kb_keyseal *s);
