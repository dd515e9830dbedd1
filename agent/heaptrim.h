/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 10 of 12, transport: calls no other layer. */
/* Told by api.c, which counts the calls in flight. Calls glibc's
 * malloc_trim() and sd-event. Never logs.
 *
 * glibc keeps what a burst of calls freed in its arenas: without giving it
 * back, a sidecar that once held 1,000 streams keeps their RSS for good. A
 * burst is over when the calls in flight fell below an eighth of their
 * peak; two seconds later, if it is still over, the heap is trimmed. */

#include <stdint.h>
#include <systemd/sd-event.h>

struct kb_heaptrim {
        sd_event *event;
        sd_event_source *timer;
        uint64_t in_flight;
        uint64_t peak;                  /* since the heap was last trimmed */
};

/* The number of calls in flight changed (as a call starts and ends). */
void kb_heaptrim_note(struct kb_heaptrim *t, uint64_t in_flight);
/* At exit. */
void kb_heaptrim_done(struct kb_heaptrim *t);
