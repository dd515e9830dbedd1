/* SPDX-License-Identifier: MIT */
/* Many sockets as one loop source; see ioset.h for why. */

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/queue.h>
#include <unistd.h>

#include "ioset.h"
#include "util.h"

struct kb_io {
        struct kb_ioset *set;
        int fd;
        uint32_t events;
        bool dead;
        kb_io_handler_t handler;
        void *userdata;
        /* while the set is direct: the socket's own sd-event source */
        sd_event_source *source;
        LIST_ENTRY(kb_io) member;
        struct kb_io *next_dead;
};

struct kb_ioset {
        sd_event *event;
        int epoll_fd;
        sd_event_source *source;
        const char *description;
        /* members not freed, in a list for switching between the modes */
        LIST_HEAD(, kb_io) members;
        unsigned n_members;
        bool batched;
        unsigned dispatching;
        /* freed while a batch was being served: an event later in the
         * batch may still point at them */
        struct kb_io *dead;
};

static void free_dead(struct kb_ioset *s) {
        while (s->dead) {
                struct kb_io *io = s->dead;
                s->dead = io->next_dead;
                free(io);
        }
}

static int on_ready(sd_event_source *src, int fd, uint32_t revents, void *userdata) {
        struct kb_ioset *s = userdata;
        struct epoll_event ev[KB_IOSET_BATCH];
        int n;

        n = epoll_wait(s->epoll_fd, ev, ELEMENTSOF(ev), 0);
        if (n <= 0)
                return 0;
        s->dispatching++;
        for (int i = 0; i < n; i++) {
                struct kb_io *io = ev[i].data.ptr;
                if (!io->dead)
                        io->handler(io, io->fd, ev[i].events, io->userdata);
        }
        if (--s->dispatching == 0)
                free_dead(s);
        return 0;
}

static int on_direct(sd_event_source *src, int fd, uint32_t revents, void *userdata) {
        struct kb_io *io = userdata;

        io->handler(io, fd, revents, io->userdata);
        return 0;
}

/* Watches io's socket in the batch (ret_source NULL) or through a source
 * of its own. */
static int io_attach(struct kb_io *io, bool batched, sd_event_source **ret_source) {
        struct kb_ioset *s = io->set;
        int r;

        *ret_source = NULL;
        if (batched) {
                if (epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, io->fd,
                              &(struct epoll_event) { .events = io->events, .data.ptr = io }) < 0)
                        return -errno;
                return 0;
        }
        r = sd_event_add_io(s->event, ret_source, io->fd, io->events, on_direct, io);
        if (r >= 0 && s->description)
                (void) sd_event_source_set_description(*ret_source, s->description);
        return r;
}

static void io_detach(struct kb_io *io) {
        if (io->source)
                io->source = sd_event_source_disable_unref(io->source);
        else
                /* EBADF: the fd was closed first, which took it out of the set */
                (void) epoll_ctl(io->set->epoll_fd, EPOLL_CTL_DEL, io->fd, NULL);
}

/* Moves every member to the other mode. A member that cannot be attached
 * there (ENOMEM) stays where it was, so no socket is ever unwatched: both
 * ways of watching are served whatever the set's mode. */
static void switch_mode(struct kb_ioset *s, bool batched) {
        struct kb_io *io;

        s->batched = batched;
        LIST_FOREACH(io, &s->members, member) {
                sd_event_source *source;
                bool in_batch = !io->source;
                if (in_batch == batched || io_attach(io, batched, &source) < 0)
                        continue;
                io_detach(io);
                io->source = source;
        }
}

int kb_ioset_new(sd_event *e, const char *description, struct kb_ioset **ret) {
        struct kb_ioset *s = calloc(1, sizeof(*s));
        int r;

        if (!s)
                return -ENOMEM;
        s->event = e;
        s->description = description;
        s->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        if (s->epoll_fd < 0) {
                r = -errno;
                free(s);
                return r;
        }
        r = sd_event_add_io(e, &s->source, s->epoll_fd, EPOLLIN, on_ready, s);
        if (r < 0) {
                close(s->epoll_fd);
                free(s);
                return r;
        }
        if (description)
                (void) sd_event_source_set_description(s->source, description);
        *ret = s;
        return 0;
}

struct kb_ioset *kb_ioset_free(struct kb_ioset *s) {
        if (!s)
                return NULL;
        free_dead(s);
        sd_event_source_disable_unref(s->source);
        close(s->epoll_fd);
        free(s);
        return NULL;
}

int kb_ioset_add(struct kb_ioset *s, int fd, uint32_t events, kb_io_handler_t handler, void *userdata,
                 struct kb_io **ret) {
        struct kb_io *io = calloc(1, sizeof(*io));
        int r;

        if (!io)
                return -ENOMEM;
        *io = (struct kb_io) { .set = s, .fd = fd, .events = events, .handler = handler, .userdata = userdata };
        r = io_attach(io, s->batched, &io->source);
        if (r < 0) {
                free(io);
                return r;
        }
        LIST_INSERT_HEAD(&s->members, io, member);
        if (++s->n_members > KB_IOSET_DIRECT_MAX && !s->batched)
                switch_mode(s, true);
        *ret = io;
        return 0;
}

int kb_io_set_events(struct kb_io *io, uint32_t events) {
        if (io->events == events)
                return 0;
        if (io->source) {
                int r = sd_event_source_set_io_events(io->source, events);
                if (r < 0)
                        return r;
        } else if (epoll_ctl(io->set->epoll_fd, EPOLL_CTL_MOD, io->fd,
                             &(struct epoll_event) { .events = events, .data.ptr = io }) < 0)
                return -errno;
        io->events = events;
        return 0;
}

struct kb_io *kb_io_free(struct kb_io *io) {
        struct kb_ioset *s;

        if (!io)
                return NULL;
        s = io->set;
        io_detach(io);
        LIST_REMOVE(io, member);
        if (--s->n_members <= KB_IOSET_DIRECT_MIN && s->batched)
                switch_mode(s, false);
        io->dead = true;
        if (s->dispatching) {
                io->next_dead = s->dead;
                s->dead = io;
        } else
                free(io);
        return NULL;
}
