/* SPDX-License-Identifier: MIT */
/* The heap given back after a burst; see heaptrim.h. */

#include <malloc.h>

#include "heaptrim.h"
#include "util.h"

#define TRIM_MIN_PEAK 64
#define TRIM_DELAY_USEC (2 * USEC_PER_SEC)

static int on_trim(sd_event_source *s, uint64_t usec, void *userdata) {
        struct kb_heaptrim *t = userdata;

        if (*t->in_flight > t->peak / 8)
                return 0; /* busy again: the next fall arms it anew */
        (void) malloc_trim(0);
        t->peak = *t->in_flight;
        return 0;
}

void kb_heaptrim_note(struct kb_heaptrim *t) {
        uint64_t n = *t->in_flight;

        if (n > t->peak) {
                t->peak = n;
                return;
        }
        if (t->peak >= TRIM_MIN_PEAK && n <= t->peak / 8)
                (void) kb_timer_arm_in(t->event, &t->timer, TRIM_DELAY_USEC, on_trim, t, "heap-trim");
}

void kb_heaptrim_done(struct kb_heaptrim *t) {
        t->timer = sd_event_source_disable_unref(t->timer);
}
