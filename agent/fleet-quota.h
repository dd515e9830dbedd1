/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 6 of 12, policy at work: calls layers 8, 12. */

/* Team quotas counted across the fleet, in the quota store (Redis): the
 * protocol, not the policy. Three Lua scripts, loaded at every connect and
 * called with EVALSHA (one round trip each):
 *
 *  - reserve: sums the team's windows (sliding minute in 1-second buckets,
 *    UTC day, UTC month) and what every live broker holds in flight, checks
 *    every limit in quota.c's order and, when all hold, counts the request
 *    and records the reservation under this connection's lease. Holds of a
 *    broker whose lease expired are dropped by the same script, before the
 *    sums: no cleanup job, no phantom spend.
 *  - grow ("g" mode of reserve): a stream past what it holds asks for more;
 *    the store grants what fits (possibly less), so a stream is cut where the
 *    fleet's headroom ends.
 *  - settle: releases the hold and counts the real usage. Settles carry this
 *    broker's settle sequence (KEYBROKER_SEQ) and the store keeps the last
 *    one applied per broker: a settle sent again after a timeout or an
 *    outage counts once. Settles are queued in order and re-sent from the
 *    first unacknowledged one when the store is back.
 *  - push: the first word of a broker in an epoch of the store (PREFIX
 *    "epoch", created by whoever finds it missing). A store that lost its
 *    data has a new epoch; each broker then pushes its own counters for the
 *    open windows (which equal its journaled usage), once per epoch.
 *
 * Layout under PREFIX, per team T: "t:T:rq" / "t:T:tk" hashes of minute
 * buckets (field = ceil(unix seconds); "gc", "sum": the window's running
 * total; "nw": the newest token bucket), "t:T:d:DAY" and "t:T:m:MONTH" hashes
 * {tk, co} (DAY = days since the epoch, MONTH = year * 12 + month - 1, cost
 * in micro-USD), "t:T:fl" in flight per lease (LEASE|n, LEASE|tk, LEASE|co),
 * "t:T:res:LEASE" holds by request id; "ack:INSTANCE", "pushed:EPOCH:INSTANCE".
 *
 * Below metering; calls fleet-store.c and
 * quota.c (for the counters it pushes). Verdicts go back through the
 * callback its caller passes. Never logs. */

#include <stdbool.h>
#include <stdint.h>

#include "fleet-store.h"
#include "quota.h"

/* Settles waiting for the store, at most; past that the oldest are dropped
 * and counted (they stay in the journal and in this host's counters). */
#define KB_FLEET_QUEUE_MAX 262144U
/* Settles on their way to the store at once, at most. */
#define KB_FLEET_IN_FLIGHT 1024U

struct kb_fleet;
struct kb_fleet_hold;

struct kb_fleet_ask {
        const char *team;
        const char *rid;                /* request id */
        uint64_t limits[_KB_QUOTA_LIMIT_MAX]; /* 0 = none */
        uint64_t tokens;                /* estimate */
        uint64_t cost;                  /* micro-USD */
        uint64_t now_usec;              /* realtime */
};

struct kb_fleet_verdict {
        /* 0 admitted; -EDQUOT refused (denial filled); -ENOTCONN the store
         * gave no answer in time (offline, timeout, error). */
        int result;
        struct kb_quota_denial denial;
        /* The fleet's minute windows as the store saw them (after admitting,
         * or when refusing), for x-ratelimit-*: requests counted, tokens
         * settled + held, and the bucket key of the newest settled tokens (0:
         * none). Not set for -ENOTCONN. */
        uint64_t minute_requests;
        uint64_t minute_tokens;
        uint64_t newest_tokens_k;
};
typedef void (*kb_fleet_done_t)(void *userdata, const struct kb_fleet_verdict *v);

struct kb_fleet_stats {
        uint64_t queued;                /* settles not yet acknowledged */
        uint64_t dropped;               /* settles dropped from a full queue */
        uint64_t pushes;                /* epochs this broker pushed its counters into */
        char epoch[40];
};

/* s must outlive f; q (this host's counters, pushed into a new epoch) too.
 * instance: this host's broker id. *seq: the broker's settle sequence. */
int kb_fleet_new(struct kb_store *s, struct kb_quota *q, const char *instance, const uint64_t *seq,
                 struct kb_fleet **ret);
struct kb_fleet *kb_fleet_free(struct kb_fleet *f);

/* Settles this broker made before this fleet object began (an earlier run,
 * or before a reload that reconnected) and the store has not acknowledged:
 * at the first hello, the owner's fn is asked for them (seq in (after_seq,
 * upto_seq], from its journal) and hands each to kb_fleet_backfill_settle(),
 * in order; they are sent before anything settled since. */
typedef void (*kb_fleet_backfill_t)(void *userdata, uint64_t after_seq, uint64_t upto_seq);
void kb_fleet_set_backfill(struct kb_fleet *f, kb_fleet_backfill_t fn, void *userdata);
void kb_fleet_backfill_settle(struct kb_fleet *f, const char *team, uint64_t seq, uint64_t when_usec,
                              uint64_t tokens, uint64_t cost);

/* What the owner journals: "epoch" (pushed this host's counters into a new
 * epoch of the store: n teams, their month's tokens and cost) or "resent"
 * (n settles from the journal, their tokens and cost). */
struct kb_fleet_event {
        const char *event;
        const char *epoch;
        uint64_t n, tokens, cost;
};
typedef void (*kb_fleet_handler_t)(void *userdata, const struct kb_fleet_event *ev);
void kb_fleet_set_handler(struct kb_fleet *f, kb_fleet_handler_t fn, void *userdata);

/* The store came online (connected or back): say hello (push this host's
 * counters into a new epoch if need be), then send the queued settles. */
void kb_fleet_store_up(struct kb_fleet *f);
/* Online and the epoch known: reservations go to the store. */
bool kb_fleet_ready(const struct kb_fleet *f);
void kb_fleet_get_stats(const struct kb_fleet *f, struct kb_fleet_stats *ret);

/* Reserve in the store. Returns 0 and a hold whose verdict comes to done
 * (never from inside this call, within quota_store_timeout or so), or
 * -ENOTCONN when the store is not ready (nothing called), or -errno. The
 * hold is the caller's until kb_fleet_settle(). */
int kb_fleet_reserve(struct kb_fleet *f, const struct kb_fleet_ask *ask, kb_fleet_done_t done, void *userdata,
                     struct kb_fleet_hold **ret);

/* f is the broker's fleet now (after a reload it may not be the hold's;
 * then the hold is only settled, nothing more is asked of the old store).
 * Usage of a stream so far (tokens and micro-USD in all): true when it goes
 * past what the hold was granted and the store will grant no more (cut the
 * stream); asks the store for more ahead of need (at half of what is held).
 * An answer still on its way never cuts. */
bool kb_fleet_hold_exhausted(struct kb_fleet *f, struct kb_fleet_hold *h, uint64_t tokens, uint64_t cost,
                             struct kb_quota_denial *ret_denial);
/* Drop a hold the store refused (or whose answer is still on its way: it
 * is released when it comes). Accepts NULL. */
void kb_fleet_hold_free(struct kb_fleet_hold *h);

/* End a call: count its usage in the store (queued; sent when the store is
 * up, again after an outage until acknowledged). h may be NULL for a call
 * admitted offline (admitted_usec: when; its request is then counted too).
 * A hold whose verdict has not come yet is released when it does. Frees h. */
void kb_fleet_settle(struct kb_fleet *f, struct kb_fleet_hold *h, const char *team, const char *rid, uint64_t seq,
                     uint64_t admitted_usec, uint64_t now_usec, uint64_t tokens, uint64_t cost);

/* A fleet team's windows in the store, as read at the last heartbeat (at
 * most a few seconds old): for GET /teams and keybrokerctl team list. */
struct kb_fleet_view {
        uint64_t read_usec;             /* realtime of the reading */
        uint64_t minute_requests, minute_tokens, newest_tokens_k;
        uint64_t in_flight, held_tokens, held_cost;
        uint64_t day_tokens, day_cost, month_tokens, month_cost;
};
/* true and *ret when there is a reading of team younger than 5 s. */
bool kb_fleet_view(const struct kb_fleet *f, const char *team, struct kb_fleet_view *ret);
