/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 10 of 12, transport: calls layer 12. */
/* Told by api.c, which counts the calls in flight. Calls glibc's
 * malloc_trim() and sd-event (through util.c's kb_timer_arm_in()). Never logs.
 *
 * glibc keeps what a burst of calls freed in its arenas: without giving it
 * back, a sidecar that once held 1,000 streams keeps their RSS for good. A
 * burst is over when the calls in flight fell below an eighth of their
 * peak; two seconds later, if it is still over, the heap is trimmed. */

#include <stdint.h>
#include <systemd/sd-event.h>

struct kb_heaptrim {
        sd_event *event;
        const uint64_t *in_flight;      /* the owner's count of calls in flight */
        sd_event_source *timer;
        uint64_t peak;                  /* since the heap was last trimmed */
};

/* *in_flight changed (as a call starts and ends). */
void kb_heaptrim_note(struct kb_heaptrim *t);
/* At exit. */
void kb_heaptrim_done(struct kb_heaptrim *t);
