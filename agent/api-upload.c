/* SPDX-License-Identifier: MIT */
/* Layer: front door (api). Uploads streamed from the app (upload.h): which
 * requests stream their body, waiting for a form's model field before the
 * call is planned, and how a failed upload is answered. */

#include <inttypes.h>
#include <strings.h>

#include "api-internal.h"
#include "broker.h"
#include "upload.h"

static void upload_wait(struct kb_conn *c, void *userdata);
static void upload_abort(struct kb_conn *c, void *userdata) {
        struct kb_request *r = userdata;
        r->outcome = KB_OUTCOME_CLIENT_ABORT;
        r->status = 499;
        kb_request_finish(r);
}
static const struct kb_conn_handler upload_handler = { .on_body = upload_wait, .on_abort = upload_abort };

/* Read the form until its model field: then the call goes on as any other. */
static void upload_wait(struct kb_conn *c, void *userdata) {
        struct kb_request *r = userdata;
        int st = kb_upload_pump(r->upload);

        if (st == KB_UPLOAD_MORE)
                return;
        kb_conn_set_handler(r->conn, NULL, NULL);
        if (st < 0) {
                kb_request_fail_upload(r, st);
                kb_api_conclude(r);
                return;
        }
        struct kb_body_info info = { .stream = streq_ptr(kb_upload_field(r->upload, "stream"), "true") };
        if (st == KB_UPLOAD_READY) {
                /* the whole form came without a model field */
                if (r->def->model_at == KB_MODEL_OPTIONAL) {
                        kb_api_serve_object(r, kb_api_forward_admitted);
                        return;
                }
                kb_api_fail(r, 400, "invalid_request", KB_OUTCOME_INVALID_REQUEST, "the form has no \"model\" field");
                return;
        }
        if (!(info.model = strdup(kb_upload_model(r->upload)))) {
                kb_api_fail(r, 500, "internal_error", KB_OUTCOME_INVALID_REQUEST, "out of memory");
                return;
        }
        r->multipart = true;
        kb_api_serve_model(r, &info);
        kb_body_info_done(&info);
}

void kb_api_serve_upload(struct kb_request *r) {
        const struct kb_http_request *h = r->http;
        const char *why = NULL;
        bool want_model = r->def->model_at != KB_MODEL_NONE;
        int q = kb_upload_new(r->conn, kb_http_request_header(h, "content-type"), h->content_length, want_model,
                              r->config->agent.state_dir, &r->upload, &why);
        if (q < 0) {
                kb_api_fail(r, q == -ENOMEM ? 500 : 400, "invalid_request", KB_OUTCOME_INVALID_REQUEST, "%s",
                            why ?: strerror(-q));
                return;
        }
        r->multipart = true;
        /* an OpenAI file may be a batch's input: its models are learned as it passes */
        if (r->endpoint == KB_ENDPOINT_FILES && r->family == KB_FAMILY_OPENAI)
                kb_upload_scan_batch_file(r->upload);
        if (!want_model) {
                kb_api_serve_object(r, kb_api_forward_admitted);
                return;
        }
        kb_conn_set_handler(r->conn, &upload_handler, r);
        upload_wait(r->conn, r);
}

/* Uploads are taken as they come, never whole: the forms of these
 * endpoints (files, audio, image edits, videos). */
uint64_t kb_api_stream_body(struct kb_conn *c, const struct kb_http_request *http, void *userdata) {
        struct kb_broker *b = userdata;
        const char *ct = kb_http_request_header(http, "content-type");
        const struct kb_endpoint_def *ep;

        if (!ct || strncasecmp(ct, "multipart/form-data", 19) != 0 ||
            kb_endpoint_match(http->method, http->path, kb_http_request_header(http, "anthropic-version") != NULL,
                              &ep, NULL) < 0 || !streq(http->method, "POST"))
                return 0;
        switch (ep->endpoint) {
        case KB_ENDPOINT_FILES:
        case KB_ENDPOINT_AUDIO_TRANSCRIPTIONS:
        case KB_ENDPOINT_AUDIO_TRANSLATIONS:
        case KB_ENDPOINT_IMAGES:
        case KB_ENDPOINT_VIDEOS:
                return ep->op == KB_OP_CREATE || ep->op == KB_OP_CALL ? b->config->agent.max_upload_body : 0;
        default:
                return 0;
        }
}

