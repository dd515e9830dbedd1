/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 5 of 12, the call: calls layers 6, 8-12. */
/* Attempts, fallback and the relay of the provider's answer to the app's
 * connection, for api.c. Calls router, metering,
 * upstream.c, headers, body, multipart, upload, usage, shadow (a sample's
 * copy), keyseal and request.c; its failures are verdicts (r->failure) for
 * api.c, told through the done callback api.c passes. */

#include <stdbool.h>

#include "request.h"

/* Forward r (team, model, route resolved; body inspected) upstream; done(r)
 * once, when proxy.c is through with it. */
void kb_proxy_forward(struct kb_request *r, const char *upstream_model, bool add_include_usage,
                      kb_proxy_done_t done);
/* End an answer that has begun but cannot complete: an error event
 * for a stream, a truncated body otherwise; outcome stream_interrupted. */
void kb_proxy_cut(struct kb_request *r, const char *why);
/* Release proxy state of a request (upstream call, tap, key). */
void kb_proxy_release(struct kb_request *r);
/* The ordered candidates of r (model_cfg and family known); sets
 * r->target/r->route to the first. false with r->failure set instead: 400
 * when the model has no route of the request's family, 503 when no target
 * has a weight and there is no fallback. */
bool kb_proxy_plan(struct kb_request *r);
