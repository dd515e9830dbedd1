/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 10 of 12, transport: calls no other layer. */
/* Reads the broker's counters, http.c's and upstream.c's statistics and the
 * process's fd table. Never logs.
 *
 * What the broker's connections and upstream calls use and what it
 * refused, for /status, /metrics and the "out of fds" log line. */

#include <stddef.h>
#include <stdint.h>

#include "upstream.h"

struct kb_broker;

struct kb_capacity {
        size_t connections;             /* app connections being served */
        size_t refusing;                /* refused ones still being answered or drained */
        uint64_t refused_cap;           /* max_connections */
        uint64_t refused_per_uid;       /* max_connections_per_uid */
        uint64_t refused_fds;           /* out of file descriptors at accept */
        uint64_t refused_identity;      /* the caller could not be identified */
        struct kb_upstream_stats upstream;
        uint64_t fds_open;              /* this process's, counted in /proc/self/fd */
        uint64_t fds_limit;             /* RLIMIT_NOFILE soft limit */
};

void kb_capacity_get(const struct kb_broker *b, struct kb_capacity *ret);
