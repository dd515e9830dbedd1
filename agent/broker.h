/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 3 of 12, broker: calls layers 4-8, 10-12. */

/* The daemon's long-lived state: the loop, the current config, keys, the
 * sockets, the upstream multi handle and the journal writer. main.c owns
 * it; api.c and proxy.c serve requests with it. */

#include <stdarg.h>
#include <stdint.h>
#include <sys/queue.h>
#include <systemd/sd-event.h>

#include "body.h"
#include "config.h"
#include "heaptrim.h"
#include "keyseal.h"
#include "http.h"
#include "journal.h"
#include "keystore.h"
#include "quota.h"
#include "request.h"
#include "upstream.h"

struct kb_uid_count {
        uid_t uid;
        unsigned n;
};

struct kb_broker {
        sd_event *event;
        const char *config_path;
        uint64_t started_usec;          /* realtime */
        struct kb_config *config;       /* current; requests hold their own ref */
        struct kb_keystore *keys;
        struct kb_http_server *api;
        struct kb_http_server *admin;
        struct kb_upstream *upstream;
        struct kb_journal *journal;
        struct kb_metrics *metrics;     /* GET /metrics counters (metrics.h) */
        struct kb_quota *quota;
        struct kb_router *router;       /* circuits, splits, canaries (routing.c sets it up) */
        struct kb_objects *objects;     /* provider objects made through us, by team (objects.h) */
        struct kb_batch_poll *batch_poll; /* open batches retrieved in the background (batch-poll.h) */
        struct kb_fleet_objects *fleet_objects; /* the object table in the quota store, with store */
        struct kb_keyseal keyseal;      /* keys opened for calls, sealed again after */
        struct kb_keywatch *keywatch;   /* credentials_dir and the keystore file, on disk */
        struct kb_store *store;         /* [agent] quota_store: the fleet's Redis, or NULL */
        struct kb_fleet *fleet;         /* team quotas in it (fleet-quota.h), with store */
        struct kb_promoter *promoter;   /* staged promotions and baselines (promote.h) */
        struct kb_shadows *shadows;     /* shadow calls in flight and their daily spend (shadow.h) */
        char instance[33];              /* this host's broker identity, kept in state_dir */
        char hostname[256];             /* KEYBROKER_HOST of its records, read at start */
        uint64_t seq;                   /* last settle sequence number */

        struct kb_uid_count *uid_conns; /* open app connections per uid */
        size_t n_uid_conns;
        /* app connections refused by api.c's on_accept, by why */
        uint64_t n_refused_per_uid, n_refused_identity, n_refused_fds;
        uint64_t fd_warning_usec;       /* last "out of file descriptors" log line */

        LIST_HEAD(, kb_request) requests; /* alive, for the drain */
        uint64_t n_in_flight;           /* kb_requests alive */
        struct kb_heaptrim heaptrim;    /* the heap given back after a burst of them */
        uint64_t n_requests;            /* served since start */
};

/* broker.c: open the sealed store and add credential files for c. On
 * failure *ret_error says what is wrong and what to do. */
int kb_broker_load_keys(const struct kb_config *c, struct kb_keystore **ret, char **ret_error);
/* broker.c: re-read config and keys and swap them in atomically; a bad
 * config or keystore is rejected (journaled with its reason, returned in
 * *ret_error when non-NULL) and the running one stays. */
int kb_broker_reload(struct kb_broker *b, char **ret_error);

/* broker.c: watch the current config's key files (credentials_dir, the
 * keystore) and take a replaced one without a reload: the keys are read
 * again and swapped in as a reload does (requests in flight keep the version
 * they started with), each changed key journaled as "replaced" (or
 * "removed"). Logs once what cannot be watched. */
int kb_broker_watch_keys(struct kb_broker *b);
void kb_broker_keys_changed(void *userdata);

/* broker.c: connect to the config's quota store (or drop the connection when
 * the config has none); on reload only when its settings changed. Its state
 * changes are logged and journaled (KB_MID_STORE). */
int kb_broker_connect_store(struct kb_broker *b, const struct kb_config *old);
/* broker.c: the share of a fleet team's limits this host enforces while the
 * store is away (offline_share, or 1 / brokers last seen). */
void kb_broker_offline_share(struct kb_broker *b);
/* broker.c: what the object table mirrors to the quota store. */
extern const struct kb_objects_mirror kb_broker_objects_mirror;
/* broker.c: disconnect from the quota store (at a reload that changes it, at
 * exit). */
void kb_broker_drop_store(struct kb_broker *b);

/* broker.c: this broker's identity in state_dir/instance (created on first
 * start): request records carry it so quota recovery replays only its own. */
int kb_broker_instance_id(const char *state_dir, char ret[33]);
