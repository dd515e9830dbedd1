/* SPDX-License-Identifier: MIT */
/* A request body streamed to its handler (uploads): the parser queues what
 * arrives (http-parse.c), the handler takes it here at its own pace, and
 * reading from the app stops while KB_CONN_BODY_HIGH bytes wait, so an
 * upload of any size holds at most that much. */

#include "http-internal.h"

bool kb_conn_body_wants_read(const struct kb_conn *c) {
        const struct kb_http_req *r = c->req;
        return r && r->streaming && !r->body_done && !r->body_error && !c->peer_eof && !c->aborted &&
               r->bq.len - r->bq_off < KB_CONN_BODY_HIGH;
}

ssize_t kb_conn_body_read(struct kb_conn *c, void *buf, size_t len) {
        struct kb_http_req *r = c ? c->req : NULL;
        if (!r || !r->streaming)
                return -EINVAL;
        size_t avail = r->bq.len - r->bq_off;
        if (avail > 0 && len > 0) {
                bool was_full = !kb_conn_body_wants_read(c);
                size_t n = MIN(len, avail);
                memcpy(buf, r->bq.data + r->bq_off, n);
                r->bq_off += n;
                if (r->bq_off == r->bq.len) {
                        r->bq_off = 0;
                        kb_buf_clear(&r->bq);
                }
                /* reading from the app again: its stall clock starts now */
                if (was_full && kb_conn_body_wants_read(c)) {
                        c->last_activity = kb_now_usec();
                        kb_conn_update(c);
                }
                return (ssize_t) n;
        }
        if (r->body_error)
                return r->body_error;
        if (c->aborted)
                return -EPIPE;
        return r->body_done ? 0 : -EAGAIN;
}


void kb_conn_body_notify(struct kb_conn *c) {
        if (!c->body_notify || c->finalized)
                return;
        c->body_notify = false;
        if (c->state == CONN_BUSY && !c->aborted && c->handler && c->handler->on_body)
                c->handler->on_body(c, c->handler_userdata);
}

void kb_conn_body_check_stall(struct kb_conn *c, uint64_t now) {
        uint64_t limit = c->server->limits.header_timeout_usec;
        if (!kb_conn_body_wants_read(c) || limit == 0 || now < c->last_activity + limit)
                return;
        c->req->body_error = -ETIMEDOUT;
        c->close_after = true;
        if (c->handler && c->handler->on_body)
                c->handler->on_body(c, c->handler_userdata);
}

bool kb_conn_body_cut(struct kb_conn *c) {
        struct kb_http_req *r = c->req;
        if (!r || !r->streaming || r->body_done || r->body_error)
                return false;
        r->body_error = -EPIPE;
        c->body_notify = true;
        c->close_after = true;
        return true;
}
