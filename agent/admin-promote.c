/* SPDX-License-Identifier: MIT */
/* Staged promotion on the admin socket (placeholder until promote.c lands). */

#include "admin.h"
#include "broker.h"

void kb_admin_serve_promote(struct kb_conn *c, struct kb_broker *b, struct kb_http_request *req,
                            const struct kb_admin_target *t, uid_t admin_uid) {
        (void) b, (void) req, (void) t, (void) admin_uid;
        kb_admin_error(c, 501, "not_implemented", "promotion is not implemented yet");
}

void kb_admin_serve_model_status(struct kb_conn *c, struct kb_broker *b, const struct kb_admin_target *t) {
        (void) b, (void) t;
        kb_admin_error(c, 501, "not_implemented", "model status is not implemented yet");
}

void kb_admin_serve_baseline(struct kb_conn *c, struct kb_broker *b, struct kb_http_request *req,
                             const struct kb_admin_target *t, uid_t admin_uid) {
        (void) b, (void) req, (void) t, (void) admin_uid;
        kb_admin_error(c, 501, "not_implemented", "baseline is not implemented yet");
}
