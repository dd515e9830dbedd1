/* SPDX-License-Identifier: MIT */
/* Many sockets as one loop source; see ioset.h for why. */

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/epoll.h>
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
        struct kb_io *next_dead;
};

struct kb_ioset {
        int epoll_fd;
        sd_event_source *source;
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

int kb_ioset_new(sd_event *e, const char *description, struct kb_ioset **ret) {
        struct kb_ioset *s = calloc(1, sizeof(*s));
        int r;

        if (!s)
                return -ENOMEM;
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

        if (!io)
                return -ENOMEM;
        *io = (struct kb_io) { .set = s, .fd = fd, .events = events, .handler = handler, .userdata = userdata };
        if (epoll_ctl(s->epoll_fd, EPOLL_CTL_ADD, fd, &(struct epoll_event) { .events = events, .data.ptr = io }) < 0) {
                int r = -errno;
                free(io);
                return r;
        }
        *ret = io;
        return 0;
}

int kb_io_set_events(struct kb_io *io, uint32_t events) {
        if (io->events == events)
                return 0;
        if (epoll_ctl(io->set->epoll_fd, EPOLL_CTL_MOD, io->fd,
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
        /* EBADF: the fd was closed first, which took it out of the set */
        (void) epoll_ctl(s->epoll_fd, EPOLL_CTL_DEL, io->fd, NULL);
        io->dead = true;
        if (s->dispatching) {
                io->next_dead = s->dead;
                s->dead = io;
        } else
                free(io);
        return NULL;
}
