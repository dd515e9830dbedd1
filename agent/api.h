/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 4 of 12, app API: calls layers 5-10, 12. */
/* The app socket's callbacks (http.c calls them; main.c registers them): the
 * top of the request path. Nothing below calls back into it except through
 * what it registers: metering's and proxy's continuations. */

#include <stdarg.h>

#include "config.h"
#include "http.h"
#include "metering.h"
#include "request.h"
#include "util.h"

struct kb_broker;

/* The app socket's callbacks (api.c). */
extern const struct kb_http_ops kb_api_ops;
struct kb_http_limits kb_api_limits(const struct kb_config *c);

/* api.c: answer r with an error of the agent's own making, in the family's
 * shape, and finish it. */
void kb_api_fail(struct kb_request *r, int status, const char *code, kb_outcome outcome, const char *fmt, ...)
        _printf_(5, 6);
/* The same with an OpenAI "type" of the caller's (NULL: by status) and
 * extra response headers (retry-after). */
void kb_api_fail_full(struct kb_request *r, int status, const char *code, const char *openai_type,
                      kb_outcome outcome, const struct kb_http_header *extra, size_t n_extra, const char *fmt, ...)
        _printf_(8, 9);
/* The same without finishing the request. */
void kb_api_error(struct kb_request *r, int status, const char *code, kb_outcome outcome, const char *fmt, ...)
        _printf_(5, 6);
/* api.c: a complete JSON answer of status (the response ends; the request
 * does not: finish it). */
void kb_api_respond_json(struct kb_request *r, int status, const char *body);
/* api-objects.c: a call without a model (files, batches, videos, stored
 * responses, message batches): the object's owner and route checked, then
 * admitted; next(r, verdict) forwards it. */
void kb_api_serve_object(struct kb_request *r, kb_admitted_t next);
/* api-objects.c: at finish, remember the object a create made (or forget a
 * deleted one). */
void kb_api_objects_done(struct kb_request *r);
/* api-objects.c: where a team's calls without a model go for a family. */
const struct kb_route *kb_api_default_route(const struct kb_config *c, const struct kb_team *t, kb_family f);
/* api.c: end every request in flight (drain timeout): each gets its answer
 * cut the way an upstream failure would, and its journal record. */
void kb_api_cut_all(struct kb_broker *b);
/* api.c: journal the request, end the response, free it. */
void kb_request_finish(struct kb_request *r);
/* api.c: a call the layers below are through with (kb_proxy_forward's done,
 * a plan or an upload that failed): its failure, if it has one and no answer
 * began, answered in the family's shape; then finished. */
void kb_api_conclude(struct kb_request *r);
