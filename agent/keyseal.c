/* SPDX-License-Identifier: MIT */
/* Keys sealed again after use; see keyseal.h. */

#include "keyseal.h"
#include "keystore.h"
#include "util.h"

#define RESEAL_USEC (1 * USEC_PER_SEC)

static int on_reseal(sd_event_source *s, uint64_t usec, void *userdata) {
        if (kb_keys_reseal_idle() == 0)
                return sd_event_source_set_enabled(s, SD_EVENT_OFF);
        (void) sd_event_source_set_time(s, usec + RESEAL_USEC);
        return 0;
}

void kb_keyseal_release(struct kb_keyseal *s, struct kb_key *k) {
        int enabled = SD_EVENT_OFF;
        uint64_t now;

        if (!k)
                return;
        kb_key_release(k);
        if (s->timer && sd_event_source_get_enabled(s->timer, &enabled) >= 0 && enabled != SD_EVENT_OFF)
                return;
        if (sd_event_now(s->event, CLOCK_MONOTONIC, &now) < 0)
                now = kb_now_usec();
        if (!s->timer) {
                if (sd_event_add_time(s->event, &s->timer, CLOCK_MONOTONIC, now + RESEAL_USEC,
                                      100 * USEC_PER_MSEC, on_reseal, NULL) < 0) {
                        (void) kb_keys_reseal_idle(); /* no timer: reseal now, as kb_key_close() would */
                        return;
                }
                (void) sd_event_source_set_description(s->timer, "key-reseal");
        } else
                (void) sd_event_source_set_time(s->timer, now + RESEAL_USEC);
        (void) sd_event_source_set_enabled(s->timer, SD_EVENT_ON);
}

void kb_keyseal_done(struct kb_keyseal *s) {
        s->timer = sd_event_source_disable_unref(s->timer);
}
