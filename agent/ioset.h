/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 10 of 12, transport: calls no other layer. */
/* Below everything that owns sockets. Calls only sd-event and epoll.
 *
 * Many sockets as one sd-event source: an epoll set of our own whose ready
 * sockets are served in batches, up to KB_IOSET_BATCH per loop pass.
 * sd-event dispatches one source per pass and polls every ready one again on
 * the next, so with a source per socket a pass cost O(ready sockets): with
 * thousands of connections or held streams ready at once (a burst, a mass
 * hang-up) the loop spent a core in epoll_wait and fell behind. Sockets are
 * level-triggered, as sd-event's are.
 *
 * A set of one or two sockets keeps each as its own sd-event source
 * ("direct"): the batch's epoll_wait would be a system call more per event,
 * which is most of what a broker serving one call at a time does. With more
 * it batches: at 16 connections, direct sources cost 10-15 % more CPU per
 * request (sd-event serves one source per pass, each pass a round of its
 * own bookkeeping). It batches past KB_IOSET_DIRECT_MAX members and goes
 * back to direct at KB_IOSET_DIRECT_MIN, apart so that a set near one
 * figure does not switch on every connection. */

#include <stdint.h>
#include <systemd/sd-event.h>

#define KB_IOSET_BATCH 64
#define KB_IOSET_DIRECT_MAX 2
#define KB_IOSET_DIRECT_MIN 1

struct kb_ioset;
struct kb_io;

/* revents as epoll reports them. */
typedef void (*kb_io_handler_t)(struct kb_io *io, int fd, uint32_t revents, void *userdata);

int kb_ioset_new(sd_event *e, const char *description, struct kb_ioset **ret);
/* Every kb_io of the set must have been freed. Not from inside a handler. */
struct kb_ioset *kb_ioset_free(struct kb_ioset *s);

/* Watch fd for events (EPOLLIN, EPOLLOUT, EPOLLRDHUP; EPOLLERR and EPOLLHUP
 * always). */
int kb_ioset_add(struct kb_ioset *s, int fd, uint32_t events, kb_io_handler_t handler, void *userdata,
                 struct kb_io **ret);
int kb_io_set_events(struct kb_io *io, uint32_t events);
/* Stop watching, before the fd is closed. Safe from any handler, for any
 * kb_io of the set: an event of the same batch for it is not delivered.
 * Returns NULL; accepts NULL. */
struct kb_io *kb_io_free(struct kb_io *io);
