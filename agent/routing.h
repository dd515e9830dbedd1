/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 6 of 12, policy at work: calls layers 7, 8, 12. */
/* The broker's side of router.c: the router's life across reloads, its
 * events journaled, split overrides on disk. Calls
 * router.c, router-split.c and journal-records.c; called by broker.c,
 * admin and promote-loop.c. */

#include <stddef.h>
#include <stdint.h>

#include "http.h"

struct kb_broker;

/* the broker's router: created and configured from b->config,
 * split overrides loaded from state_dir/splits.json, state changes
 * journaled (and a canary rollback persisted). */
int kb_routing_setup(struct kb_broker *b);
/* after a reload swapped b->config in. */
void kb_routing_reconfigure(struct kb_broker *b);
/* write the split overrides to state_dir/splits.json. */
int kb_routing_save(struct kb_broker *b);
/* the delay a failed attempt asks for: retry-after-ms, else
 * Retry-After (seconds or an HTTP date, against now_realtime), at most cap;
 * 0 when absent or unparsable. */
uint64_t kb_retry_after_usec(const struct kb_http_header *h, size_t n, uint64_t now_realtime, uint64_t cap);
