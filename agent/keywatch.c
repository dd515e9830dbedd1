/* SPDX-License-Identifier: MIT */
/* inotify on the key files' directories, through sd-event, with a short
 * settle timer: see keywatch.h. */

#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>

#include "keywatch.h"
#include "util.h"

#define WATCH_MASK                                                                                      \
        (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB | IN_DELETE_SELF | \
         IN_MOVE_SELF | IN_ONLYDIR)

struct kb_keywatch {
        sd_event *event;
        kb_keywatch_handler_t on_change;
        void *userdata;
        sd_event_source *creds;         /* the whole credentials_dir */
        sd_event_source *store;         /* the keystore's directory, filtered by name */
        char *store_name;               /* the keystore file's name in it */
        sd_event_source *settle;
};

static int on_settled(sd_event_source *s, uint64_t usec, void *userdata) {
        struct kb_keywatch *w = userdata;

        w->on_change(w->userdata);
        return 0;
}

static void changed(struct kb_keywatch *w) {
        /* every event pushes the deadline: one call once the writer is done */
        if (sd_event_source_set_time_relative(w->settle, KB_KEYWATCH_SETTLE_USEC) >= 0)
                (void) sd_event_source_set_enabled(w->settle, SD_EVENT_ONESHOT);
}

static int on_creds(sd_event_source *s, const struct inotify_event *ev, void *userdata) {
        changed(userdata);
        return 0;
}

static int on_store_dir(sd_event_source *s, const struct inotify_event *ev, void *userdata) {
        struct kb_keywatch *w = userdata;

        /* the keystore's own name only: its temp file comes and goes too */
        if ((ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) || (ev->len > 0 && streq(ev->name, w->store_name)))
                changed(w);
        return 0;
}

int kb_keywatch_new(sd_event *e, kb_keywatch_handler_t on_change, void *userdata, struct kb_keywatch **ret) {
        struct kb_keywatch *w;
        int r;

        if (!e || !on_change || !ret)
                return -EINVAL;
        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->event = sd_event_ref(e);
        w->on_change = on_change;
        w->userdata = userdata;
        r = sd_event_add_time_relative(e, &w->settle, CLOCK_MONOTONIC, KB_KEYWATCH_SETTLE_USEC, 10 * 1000,
                                       on_settled, w);
        if (r >= 0)
                r = sd_event_source_set_enabled(w->settle, SD_EVENT_OFF);
        if (r < 0) {
                kb_keywatch_free(w);
                return r;
        }
        (void) sd_event_source_set_description(w->settle, "keywatch-settle");
        *ret = w;
        return 0;
}

struct kb_keywatch *kb_keywatch_free(struct kb_keywatch *w) {
        if (!w)
                return NULL;
        sd_event_source_disable_unref(w->creds);
        sd_event_source_disable_unref(w->store);
        sd_event_source_disable_unref(w->settle);
        free(w->store_name);
        sd_event_unref(w->event);
        free(w);
        return NULL;
}

int kb_keywatch_set_paths(struct kb_keywatch *w, const char *credentials_dir, const char *keystore) {
        int r = 0, k;

        if (!w)
                return -EINVAL;
        w->creds = sd_event_source_disable_unref(w->creds);
        w->store = sd_event_source_disable_unref(w->store);
        free(w->store_name);
        w->store_name = NULL;

        if (credentials_dir && credentials_dir[0]) {
                k = sd_event_add_inotify(w->event, &w->creds, credentials_dir, WATCH_MASK, on_creds, w);
                if (k < 0)
                        r = k;
                else
                        (void) sd_event_source_set_description(w->creds, "keywatch-credentials");
        }
        if (keystore && keystore[0]) {
                _cleanup_free_ char *d = strdup(keystore), *b = strdup(keystore);
                if (!d || !b)
                        return r < 0 ? r : -ENOMEM;
                w->store_name = strdup(basename(b));
                if (!w->store_name)
                        return r < 0 ? r : -ENOMEM;
                k = sd_event_add_inotify(w->event, &w->store, dirname(d), WATCH_MASK, on_store_dir, w);
                if (k < 0 && r == 0)
                        r = k;
                else if (k >= 0)
                        (void) sd_event_source_set_description(w->store, "keywatch-keystore");
        }
        return r;
}
