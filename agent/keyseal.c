/* SPDX-License-Identifier: MIT */
/* Keys sealed again after use; see keyseal.h. */

#include "keyseal.h"
#include "keystore.h"
#include "util.h"

#define RESEAL_USEC (1 * USEC_PER_SEC)

static int on_reseal(sd_event_source *s, uint64_t usec, void *userdata) {
        /* a key still in use: look again in a second */
        if (kb_keys_reseal_idle() > 0 && sd_event_source_set_time(s, usec + RESEAL_USEC) >= 0)
                (void) sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        return 0;
}

void kb_keyseal_release(struct kb_keyseal *s, struct kb_key *k) {
        if (!k)
                return;
        kb_key_release(k);
        if (kb_timer_arm_in(s->event, &s->timer, RESEAL_USEC, on_reseal, NULL, "key-reseal") < 0)
                (void) kb_keys_reseal_idle(); /* no timer: reseal now, as kb_key_close() would */
}

void kb_keyseal_done(struct kb_keyseal *s) {
        s->timer = sd_event_source_disable_unref(s->timer);
}
