/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 4 of 12, app API: calls layers 5-12. */

/* Shared by the api files (api.c, api-objects.c, api-upload.c): the steps of
 * a call that more than one of them takes. Not for other modules. */

#include "body.h"
#include "proxy.h"
#include "api.h"
#include "broker.h"

/* The model is known (JSON body or form): check it, plan, admit, forward. */
void kb_api_serve_model(struct kb_request *r, struct kb_body_info *info);
/* Metering's verdict: refuse in the family's shape, or forward. */
void kb_api_forward_admitted(struct kb_request *r, const struct kb_admit_verdict *v);
/* api-upload.c: a request whose body streams (stream_body said so). */
void kb_api_serve_upload(struct kb_request *r);
uint64_t kb_api_stream_body(struct kb_conn *c, const struct kb_http_request *http, void *userdata);
