/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 6 of 12, policy at work: calls layers 7-9, 12. */
/* Admission, stream metering, settle and the rate-limit headers, for api.c
 * and proxy.c. Calls quota.c, fleet-quota.c, usage, objects and
 * journal-records.c (its quota records). Returns verdicts; a later one goes
 * to the continuation the caller passed. */

#include <stddef.h>

#include "body.h"
#include "http.h"
#include "quota.h"
#include "request.h"

struct kb_admit_verdict;
/* What goes on once a call is admitted (or refused): the caller's. */
typedef void (*kb_admitted_t)(struct kb_request *r, const struct kb_admit_verdict *v);

/* metering.c: reserve what r may spend (estimate from the body).
 * KB_ADMIT_NOW: go on; KB_ADMIT_REFUSED: *ret says why (the caller
 * answers: 429 quota_exceeded, 403 for an unpriced model, 503 when the
 * quota store is away and quota_store_offline = deny, 500); KB_ADMIT_LATER:
 * the quota store is asked, and next(r, verdict) is called with the answer
 * (refusal KB_REFUSAL_NONE: go on). */
typedef enum kb_admit {
        KB_ADMIT_NOW,
        KB_ADMIT_REFUSED,
        KB_ADMIT_LATER,
} kb_admit;
typedef enum kb_refusal {
        KB_REFUSAL_NONE,
        KB_REFUSAL_QUOTA,               /* denial says which limit */
        KB_REFUSAL_UNPRICED,            /* no candidate has a price; first_route was the plan's first */
        KB_REFUSAL_STORE_AWAY,          /* a fleet team, the store away, quota_store_offline = deny */
        KB_REFUSAL_ERROR,               /* error: -errno of the reservation */
} kb_refusal;
struct kb_admit_verdict {
        kb_refusal refusal;
        struct kb_quota_denial denial;
        const char *first_route;
        int error;
};
kb_admit kb_metering_admit(struct kb_request *r, const struct kb_body_info *info, kb_admitted_t next,
                           struct kb_admit_verdict *ret);
/* metering.c: meter r's stream inline (the usage tap exists). */
void kb_metering_attach(struct kb_request *r);
/* metering.c: settle r to what it really used (called once, at finish). */
void kb_metering_settle(struct kb_request *r);
/* metering.c: the team's x-ratelimit-* headers. */
size_t kb_metering_headers(struct kb_request *r, struct kb_http_header *h, size_t n, size_t cap, char *scratch,
                           size_t scratch_size);
