/* SPDX-License-Identifier: MIT */
/* See redis-loop.h. */

#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>

#include "redis-loop.h"

struct redis_events {
        redisAsyncContext *context;
        sd_event_source *source;
        uint32_t events;
};

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        struct redis_events *e = userdata;

        /* an error or hang-up is read as EOF by hiredis, which then disconnects */
        if (revents & (EPOLLIN | EPOLLERR | EPOLLHUP))
                redisAsyncHandleRead(e->context);
        /* the read may have freed the context (and e with it): only write
         * when it did not ask for a disconnect */
        else if (revents & EPOLLOUT)
                redisAsyncHandleWrite(e->context);
        return 0;
}

static void update(struct redis_events *e, uint32_t events) {
        if (events == e->events)
                return;
        e->events = events;
        if (events == 0)
                (void) sd_event_source_set_enabled(e->source, SD_EVENT_OFF);
        else if (sd_event_source_set_io_events(e->source, events) >= 0)
                (void) sd_event_source_set_enabled(e->source, SD_EVENT_ON);
}

static void add_read(void *privdata) {
        struct redis_events *e = privdata;
        update(e, e->events | EPOLLIN);
}

static void del_read(void *privdata) {
        struct redis_events *e = privdata;
        update(e, e->events & ~(uint32_t) EPOLLIN);
}

static void add_write(void *privdata) {
        struct redis_events *e = privdata;
        update(e, e->events | EPOLLOUT);
}

static void del_write(void *privdata) {
        struct redis_events *e = privdata;
        update(e, e->events & ~(uint32_t) EPOLLOUT);
}

static void cleanup(void *privdata) {
        struct redis_events *e = privdata;

        sd_event_source_disable_unref(e->source);
        free(e);
}

int kb_redis_attach(redisAsyncContext *ac, sd_event *ev) {
        struct redis_events *e;
        int r;

        if (!ac || !ev || ac->ev.data)
                return -EINVAL;
        e = calloc(1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        e->context = ac;
        r = sd_event_add_io(ev, &e->source, ac->c.fd, 0, on_io, e);
        if (r < 0) {
                free(e);
                return r;
        }
        (void) sd_event_source_set_enabled(e->source, SD_EVENT_OFF);
        (void) sd_event_source_set_description(e->source, "quota-store-io");
        ac->ev.addRead = add_read;
        ac->ev.delRead = del_read;
        ac->ev.addWrite = add_write;
        ac->ev.delWrite = del_write;
        ac->ev.cleanup = cleanup;
        ac->ev.data = e;
        return 0;
}
