/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 9 of 12, bodies and usage: calls layers 11, 12. */

/* Which headers cross the broker, in each direction. Kept apart so the
 * rules are in one place and unit-tested. */

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* App -> provider: false for the app's own credentials (Authorization,
 * x-api-key, api-key, Proxy-Authorization), hop-by-hop headers, Host,
 * Content-Length, Expect, Accept-Encoding, Cookie and X-Keybroker-*; false
 * as well for any header the route sets itself (static header or auth
 * header), so the route always wins. */
bool kb_header_forwardable(const char *name, const struct kb_route *route);

/* Provider -> app: what is relayed as is. Hop-by-hop and framing headers
 * are never relayed (the broker frames the body itself); x-ratelimit-* is
 * relayed renamed (see kb_header_relay_rename) because the app's
 * x-ratelimit-* describe its team. Returns false for headers to drop. */
bool kb_header_relayable(const char *name);

/* "x-ratelimit-limit-requests" -> "x-upstream-ratelimit-limit-requests",
 * written into buf: 1 renamed, 0 when name needs no renaming, -ENOBUFS
 * when the new name does not fit (the header must then be dropped, never
 * relayed under its own name). */
int kb_header_relay_rename(const char *name, char *buf, size_t size);

/* A header value or name safe to emit: no CR, LF or NUL. */
bool kb_header_safe(const char *s);

/* Whether the route's own header lines set name (case-insensitive). */
bool kb_route_sets_header(const struct kb_route *r, const char *name);

struct kb_upstream_request;
struct kb_key;
/* The credential fields of req for route's auth, from key (opened here:
 * release it once kb_upstream_start() returned). Nothing when key is NULL.
 * One place for every caller (proxy, preflight, shadow, batch poll), so a
 * check or a shadow sends what a call does. */
void kb_header_set_auth(struct kb_upstream_request *req, const struct kb_route *route, struct kb_key *key);
