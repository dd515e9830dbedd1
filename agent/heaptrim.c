/* SPDX-License-Identifier: MIT */
/* The heap given back after a burst; see heaptrim.h. */

#include <malloc.h>

#include "heaptrim.h"
#include "util.h"

#define TRIM_MIN_PEAK 64
#define TRIM_DELAY_USEC (2 * USEC_PER_SEC)

static int on_trim(sd_event_source *s, uint64_t usec, void *userdata) {
        struct kb_heaptrim *t = userdata;

        if (t->in_flight > t->peak / 8)
                return 0; /* busy again: the next fall arms it anew */
        (void) malloc_trim(0);
        t->peak = t->in_flight;
        return 0;
}

void kb_heaptrim_note(struct kb_heaptrim *t, uint64_t in_flight) {
        int enabled = SD_EVENT_OFF;

        t->in_flight = in_flight;
        if (in_flight > t->peak) {
                t->peak = in_flight;
                return;
        }
        if (t->peak < TRIM_MIN_PEAK || in_flight > t->peak / 8)
                return;
        if (t->timer && sd_event_source_get_enabled(t->timer, &enabled) >= 0 && enabled != SD_EVENT_OFF)
                return;
        if (!t->timer) {
                if (sd_event_add_time_relative(t->event, &t->timer, CLOCK_MONOTONIC, TRIM_DELAY_USEC,
                                               100 * USEC_PER_MSEC, on_trim, t) >= 0)
                        (void) sd_event_source_set_description(t->timer, "heap-trim");
                return;
        }
        (void) sd_event_source_set_time_relative(t->timer, TRIM_DELAY_USEC);
        (void) sd_event_source_set_enabled(t->timer, SD_EVENT_ONESHOT);
}

void kb_heaptrim_done(struct kb_heaptrim *t) {
        t->timer = sd_event_source_disable_unref(t->timer);
}
