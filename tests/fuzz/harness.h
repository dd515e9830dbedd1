/* SPDX-License-Identifier: MIT */
#pragma once

/* An in-process keybrokerd for the socket fuzzers: the real broker (config,
 * sealed keystore, quota, router, journal writer with a sender that only
 * checks records, curl multi upstream) serving the app socket with
 * kb_api_ops and the admin socket with kb_admin_ops on one sd-event loop,
 * plus a fake provider on 127.0.0.1 in the same loop that answers every
 * upstream request with canned bytes: the fuzz input's, or a realistic
 * JSON/SSE answer for the endpoint asked. State that would make one input
 * depend on the ones before (circuit breakers, splits, keystore changes,
 * fallback delays) is configured off or reset after each input. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker.h"
#include "util.h"

/* Separates app bytes from the canned upstream answer in an input. */
#define FUZZ_UPSTREAM_MARK "@@UPSTREAM@@\n"

struct fuzz_broker;

/* The broker, created on first use (aborts if it cannot be). */
struct fuzz_broker *fuzz_broker_get(void);
struct kb_broker *fuzz_broker_broker(struct fuzz_broker *fb);

/* What the fake provider answers to every upstream request of the next
 * exchange: raw HTTP response bytes (sent, then the connection is shut
 * down), or NULL for the default answer of the endpoint asked. */
void fuzz_broker_set_upstream(struct fuzz_broker *fb, const char *canned, size_t len);

/* Connect to the app (admin=false) or admin socket, send data cut into
 * pieces chosen by seed, half-close, and run the loop until the broker has
 * answered and closed, keeping at most max_reply bytes of what came back in
 * reply (may be NULL). Afterwards every connection and request is gone.
 * Aborts when that takes more than a few seconds: a stall is a bug. */
void fuzz_exchange(struct fuzz_broker *fb, bool admin, const uint8_t *data, size_t len, uint32_t seed,
                   struct kb_buf *reply, size_t max_reply);

/* Undo what an admin request changed (keystore, splits, preflight
 * evidence), so the next input starts from the same broker. */
void fuzz_broker_reset(struct fuzz_broker *fb);

/* xorshift32 for piece sizes. */
uint32_t fuzz_next(uint32_t *s);

/* Check that reply parses as a sequence of HTTP/1.x responses (only the
 * last may be cut short); aborts otherwise. Returns the complete ones. */
unsigned fuzz_check_reply(const struct kb_buf *reply);
