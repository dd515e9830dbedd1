/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 6 of 12, policy at work: calls layers 11, 12. */

/* The fleet's quota store (Redis) as a connection: connect (TCP or Unix
 * socket), AUTH with the password read from its file, SELECT, and then a
 * heartbeat every second that keeps this broker's lease in the store
 * (PREFIX "lease:" INSTANCE, expiring after three heartbeats) and counts the
 * brokers whose leases are alive. Every command is timed out with a loop
 * timer (hiredis 0.14 has no command timeouts); a timeout, an error reply or
 * a dropped connection takes the store offline, and it is tried again every
 * second (an outage is told once). Nothing blocks the loop.
 *
 * Calls hiredis (through
 * redis-loop.c) and sd-event. The owner hears of state changes through the
 * handler it registers. Never logs. */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include <hiredis/hiredis.h>

#include "config.h"

#define KB_STORE_HEARTBEAT_USEC (1 * USEC_PER_SEC)
#define KB_STORE_LEASE_USEC (3 * KB_STORE_HEARTBEAT_USEC)
#define KB_STORE_RETRY_USEC (1 * USEC_PER_SEC)
/* Connecting and AUTH may take longer than one command may. */
#define KB_STORE_HANDSHAKE_USEC (1 * USEC_PER_SEC)

typedef enum kb_store_state {
        KB_STORE_CONNECTING,            /* not yet reached since start */
        KB_STORE_ONLINE,
        KB_STORE_OFFLINE,
} kb_store_state;

struct kb_store_options {
        const struct kb_store_addr *addr;
        const char *password_file;      /* NULL: no AUTH */
        const char *prefix;
        uint64_t timeout_usec;
        const char *instance;           /* this broker's id */
        const char *hostname;
};

struct kb_store_event {
        const char *event;              /* "connected", "offline", "back" */
        const char *reason;             /* why offline; NULL otherwise */
        uint64_t brokers;               /* brokers seen (connected/back) */
};
typedef void (*kb_store_handler_t)(void *userdata, const struct kb_store_event *ev);

struct kb_store_stats {
        kb_store_state state;
        uint64_t since_usec;            /* realtime of the last state change */
        char reason[160];               /* why offline */
        uint64_t brokers;               /* live leases, as of the last heartbeat */
        uint64_t rtt_p50_usec, rtt_p99_usec; /* over the last replies (0: none yet) */
        uint64_t n_replies, n_errors, n_timeouts;
        uint64_t offline_usec;          /* time spent offline or never reached, in all */
};

struct kb_store;

/* The reply to a script call, or NULL when there was none: the store was
 * offline, the command timed out, the connection went, or the server
 * answered with an error (the store is then offline with that reason). The
 * reply is valid only during the call. */
typedef void (*kb_store_reply_t)(void *userdata, const redisReply *reply);

int kb_store_new(sd_event *e, const struct kb_store_options *o, kb_store_handler_t handler, void *userdata,
                 struct kb_store **ret);
struct kb_store *kb_store_free(struct kb_store *s);
void kb_store_get_stats(const struct kb_store *s, struct kb_store_stats *ret);
const char *kb_store_state_to_string(kb_store_state s);

/* Register a Lua script before traffic: loaded (SCRIPT LOAD) at every
 * connect, before the store goes online; a server refusing it keeps the
 * store offline with the server's reason. Returns its index, or -errno. */
int kb_store_add_script(struct kb_store *s, const char *body);
/* EVALSHA of a registered script with 0 keys and argv (lens NULL: C
 * strings), its reply (or NULL) to cb, within quota_store_timeout; a server
 * that lost its script cache (NOSCRIPT) gets it once more as EVAL. Returns 0
 * (cb will be called exactly once, never from inside this call), -ENOTCONN
 * when the store is not online (cb is not called), or -errno. */
int kb_store_eval(struct kb_store *s, unsigned script, int argc, const char *const *argv, const size_t *lens,
                  kb_store_reply_t cb, void *userdata);
bool kb_store_online(const struct kb_store *s);
/* Brokers holding a lease as of the last heartbeat (kept when offline). */
uint64_t kb_store_brokers(const struct kb_store *s);
/* This connection's lease: "INSTANCE.RUN.GEN", new at every connect, so that
 * reservations a lost connection may have left are released when its lease
 * expires. */
const char *kb_store_lease(const struct kb_store *s);
const char *kb_store_prefix(const struct kb_store *s);
/* Called at every heartbeat while online (after the lease is renewed). */
void kb_store_set_beat_hook(struct kb_store *s, void (*hook)(void *userdata), void *userdata);
