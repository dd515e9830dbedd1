/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 6 of 12, policy at work: calls no other layer. */

/* hiredis's asynchronous context on the sd-event loop, the way hiredis's own
 * adapters (adapters/libevent.h & co.) put it on theirs: one io source for
 * the connection's fd whose events follow hiredis's add/del read/write hooks.
 * Calls only sd-event and hiredis. Never logs. */

#include <hiredis/async.h>
#include <systemd/sd-event.h>

/* 0, or -errno; on failure nothing is attached. The source is freed by
 * hiredis's cleanup hook when the context goes. */
int kb_redis_attach(redisAsyncContext *ac, sd_event *e);
