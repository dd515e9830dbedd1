/* SPDX-License-Identifier: MIT */
/* What any stage of a call's path may say of it without answering it
 * itself: its failure as a verdict, and the headers every answer carries
 * (request.h). */

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keybroker/keybroker.h"
#include "metering.h"
#include "request.h"
#include "upload.h"

void kb_request_fail(struct kb_request *r, int status, const char *code, kb_outcome outcome, const char *fmt, ...) {
        va_list ap;
        char *m = NULL;

        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        free(r->failure.message);
        r->failure = (struct kb_failure) { .status = status, .code = code, .message = m };
        r->outcome = outcome;
}

void kb_request_fail_upload(struct kb_request *r, int error) {
        const char *why = kb_upload_error(r->upload) ?: strerror(-error);
        switch (error) {
        case -EBADMSG:
                kb_request_fail(r, 400, "invalid_request", KB_OUTCOME_INVALID_REQUEST, "%s", why);
                break;
        case -EFBIG:
                kb_request_fail(r, 413, "request_too_large", KB_OUTCOME_INVALID_REQUEST,
                                "request body exceeds %" PRIu64 " bytes (max_upload_body)",
                                r->config->agent.max_upload_body);
                break;
        case -ETIMEDOUT:
                kb_request_fail(r, 408, "request_timeout", KB_OUTCOME_INVALID_REQUEST, "%s", why);
                break;
        case -EPIPE:
                r->outcome = KB_OUTCOME_CLIENT_ABORT;
                r->status = 499;
                break;
        default:
                kb_request_fail(r, 500, "internal_error", KB_OUTCOME_INVALID_REQUEST, "%s", why);
        }
}

size_t kb_request_answer_headers(struct kb_request *r, struct kb_http_header *h, size_t n, size_t cap,
                                 char *scratch, size_t scratch_size) {
        if (n < cap)
                h[n++] = (struct kb_http_header) { KB_HDR_REQUEST_ID, r->id };
        if (r->team && n < cap)
                h[n++] = (struct kb_http_header) { KB_HDR_TEAM_OUT, r->team->name };
        if (r->route && n < cap)
                h[n++] = (struct kb_http_header) { KB_HDR_ROUTE, r->route->name };
        return kb_metering_headers(r, h, n, cap, scratch, scratch_size);
}
