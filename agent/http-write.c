/* SPDX-License-Identifier: MIT */
/* The response writer: status line and headers (framing is ours, never the
 * caller's), Content-Length or chunked bodies, a per-connection output queue
 * written as the socket allows, and backpressure marks. */
#include "http-internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <strings.h>
#include <sys/socket.h>

const char *kb_http_status_reason(int status) {
        switch (status) {
        case 100: return "Continue";
        case 200: return "OK";
        case 201: return "Created";
        case 202: return "Accepted";
        case 204: return "No Content";
        case 301: return "Moved Permanently";
        case 302: return "Found";
        case 304: return "Not Modified";
        case 400: return "Bad Request";
        case 401: return "Unauthorized";
        case 402: return "Payment Required";
        case 403: return "Forbidden";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 408: return "Request Timeout";
        case 409: return "Conflict";
        case 411: return "Length Required";
        case 413: return "Payload Too Large";
        case 415: return "Unsupported Media Type";
        case 422: return "Unprocessable Entity";
        case 429: return "Too Many Requests";
        case 431: return "Request Header Fields Too Large";
        case 500: return "Internal Server Error";
        case 501: return "Not Implemented";
        case 502: return "Bad Gateway";
        case 503: return "Service Unavailable";
        case 504: return "Gateway Timeout";
        case 529: return "Site Overloaded";
        }
        switch (status / 100) {
        case 1: return "Informational";
        case 2: return "Success";
        case 3: return "Redirection";
        case 4: return "Client Error";
        default: return "Server Error";
        }
}

size_t kb_conn_out_pending(const struct kb_conn *c) {
        return c->out.len - c->out_off;
}

size_t kb_conn_pending(const struct kb_conn *c) {
        return c ? kb_conn_out_pending(c) : 0;
}

bool kb_conn_aborted(const struct kb_conn *c) {
        return c && c->aborted;
}

static int out_reserve(struct kb_conn *c, size_t n) {
        /* Reclaim the written prefix before growing, so a steady stream
         * doesn't creep the buffer up. */
        if (c->out_off > 0 && (c->out_off >= c->out.len / 2 || c->out.len + n + 1 > c->out.cap)) {
                memmove(c->out.data, c->out.data + c->out_off, c->out.len - c->out_off);
                c->out.len -= c->out_off;
                c->out.data[c->out.len] = 0;
                c->out_off = 0;
        }
        return kb_buf_reserve(&c->out, n);
}

int kb_conn_out_append(struct kb_conn *c, const void *p, size_t n) {
        int r = out_reserve(c, n);
        if (r < 0)
                return r;
        kb_buf_append(&c->out, p, n);
        if (kb_conn_out_pending(c) > KB_CONN_HIGH_WATER)
                c->above_high = true;
        return 0;
}

int kb_conn_flush(struct kb_conn *c) {
        bool progress = false;

        kb_conn_undirty(c);
        while (c->fd >= 0 && kb_conn_out_pending(c) > 0) {
                ssize_t n = send(c->fd, c->out.data + c->out_off, kb_conn_out_pending(c), MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                break;
                        kb_conn_mark_aborted(c);
                        return -EPIPE;
                }
                c->out_off += (size_t) n;
                progress = true;
        }
        if (c->fd < 0)
                return -EPIPE;
        if (progress) {
                c->last_activity = kb_now_usec();
                if (c->state == CONN_CLOSING && !c->rejected && c->server)
                        c->deadline = c->last_activity + MAX(c->server->limits.idle_timeout_usec, KB_HTTP_LINGER_USEC);
        }
        if (kb_conn_out_pending(c) == 0) {
                c->out_off = 0;
                c->out.len = 0;
                /* an idle connection keeps no buffer; a streaming one
                 * keeps a modest one for its next chunk */
                if (c->out.cap > KB_HTTP_OUT_KEEP || c->state != CONN_BUSY)
                        kb_buf_free(&c->out);
                else if (c->out.data)
                        c->out.data[0] = 0;
        }
        if (c->above_high && kb_conn_out_pending(c) <= KB_CONN_LOW_WATER) {
                c->above_high = false;
                /* delivered from the loop, never from inside a write call */
                c->writable_notify = true;
        }
        if (kb_conn_out_pending(c) == 0)
                kb_conn_after_flush(c);
        return 0;
}

/* Send now what is big enough to, else before the loop sleeps. */
static void gather(struct kb_conn *c) {
        if (kb_conn_out_pending(c) >= KB_HTTP_FLUSH_NOW)
                kb_conn_flush(c);
        else
                kb_conn_schedule_flush(c);
}

/* Callers' headers must not smuggle a line break (response splitting) nor
 * take over framing, which is ours. */
static bool header_ok(const struct kb_http_header *h) {
        if (!h->name || !h->value || !h->name[0])
                return false;
        for (const unsigned char *p = (const unsigned char *) h->name; *p; p++)
                if (!kb_http_is_tchar(*p))
                        return false;
        for (const unsigned char *p = (const unsigned char *) h->value; *p; p++)
                if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
                        return false;
        return strcasecmp(h->name, "Content-Length") != 0 && strcasecmp(h->name, "Transfer-Encoding") != 0 &&
               strcasecmp(h->name, "Connection") != 0;
}

static int can_respond(const struct kb_conn *c) {
        if (!c)
                return -EINVAL;
        if (c->aborted || c->finalized)
                return -EPIPE;
        if (c->responded)
                return -EALREADY;
        if (c->in_write_error || c->state == CONN_BUSY)
                return 0;
        return -EINVAL;
}

/* Builds the head into ret (not into the queue, so a failure leaves the
 * stream intact). content_length NULL means a streamed body. */
static int build_head(struct kb_conn *c, int status, const struct kb_http_header *headers, size_t n_headers,
                      const uint64_t *content_length, struct kb_buf *ret) {
        struct kb_buf h = {};
        unsigned minor = c->req ? c->req->pub.http_minor : 1;
        int r;

        if (status < 100 || status > 999 || (n_headers > 0 && !headers))
                return -EINVAL;

        bool closing = c->close_after || !c->keep_alive || c->in_write_error || c->peer_eof || !c->server ||
                       c->server->stopping || (!content_length && minor == 0);
        bool chunked = !content_length && !closing;

        r = kb_buf_appendf(&h, "HTTP/1.1 %d %s\r\n", status, kb_http_status_reason(status));
        /* Appended piece by piece: printf per header was a tenth of a
         * relayed answer's CPU. */
        for (size_t i = 0; r >= 0 && i < n_headers; i++) {
                if (!header_ok(&headers[i]))
                        continue;
                size_t nl = strlen(headers[i].name), vl = strlen(headers[i].value);
                r = kb_buf_reserve(&h, nl + vl + 4);
                if (r < 0)
                        break;
                (void) kb_buf_append(&h, headers[i].name, nl);
                (void) kb_buf_append(&h, ": ", 2);
                (void) kb_buf_append(&h, headers[i].value, vl);
                (void) kb_buf_append(&h, "\r\n", 2);
        }
        if (r >= 0 && content_length)
                r = kb_buf_appendf(&h, "Content-Length: %" PRIu64 "\r\n", *content_length);
        if (r >= 0 && chunked)
                r = kb_buf_append(&h, "Transfer-Encoding: chunked\r\n", 28);
        if (r >= 0 && closing)
                r = kb_buf_append(&h, "Connection: close\r\n", 19);
        else if (r >= 0 && minor == 0)
                r = kb_buf_append(&h, "Connection: keep-alive\r\n", 24);
        if (r >= 0)
                r = kb_buf_append(&h, "\r\n", 2);
        if (r < 0) {
                kb_buf_free(&h);
                return r;
        }
        c->close_after = closing;
        c->chunked = chunked;
        *ret = h;
        return 0;
}

int kb_conn_respond(struct kb_conn *c, int status, const struct kb_http_header *headers, size_t n_headers,
                    const void *body, size_t body_len) {
        struct kb_buf head = {};
        int r = can_respond(c);
        if (r < 0)
                return r;
        if (body_len > 0 && !body)
                return -EINVAL;

        uint64_t cl = body_len;
        r = build_head(c, status, headers, n_headers, &cl, &head);
        if (r < 0)
                return r;
        size_t send_body = c->head ? 0 : body_len;
        if (head.len > SIZE_MAX - send_body)
                r = -ENOMEM;
        else
                r = out_reserve(c, head.len + send_body);
        if (r < 0) {
                kb_buf_free(&head);
                return r;
        }
        kb_conn_out_append(c, head.data, head.len);
        kb_buf_free(&head);
        if (send_body > 0)
                kb_conn_out_append(c, body, send_body);
        c->responded = true;

        /* write_error's caller (kb_conn_reject) flushes and closes */
        if (c->in_write_error)
                return 0;

        kb_conn_ref(c);
        kb_conn_response_ended(c);
        if (!c->finalized)
                kb_conn_flush(c);
        kb_conn_update(c);
        kb_conn_unref(c);
        return 0;
}

int kb_conn_begin(struct kb_conn *c, int status, const struct kb_http_header *headers, size_t n_headers) {
        struct kb_buf head = {};
        int r = can_respond(c);
        if (r < 0)
                return r;
        if (c->in_write_error)
                return -EINVAL;

        r = build_head(c, status, headers, n_headers, NULL, &head);
        if (r < 0)
                return r;
        r = kb_conn_out_append(c, head.data, head.len);
        kb_buf_free(&head);
        if (r < 0)
                return r;
        c->responded = true;

        kb_conn_ref(c);
        gather(c);
        r = c->aborted ? -EPIPE : 0;
        kb_conn_update(c);
        kb_conn_unref(c);
        return r;
}

int kb_conn_write(struct kb_conn *c, const void *buf, size_t len) {
        char hdr[32];
        int r;

        if (!c || (len > 0 && !buf))
                return -EINVAL;
        if (c->aborted || c->finalized || c->killed)
                return -EPIPE;
        if (c->state != CONN_BUSY || !c->responded)
                return -EINVAL;
        if (len == 0 || c->head)
                return 0;

        if (c->chunked) {
                int k = snprintf(hdr, sizeof(hdr), "%zx\r\n", len);
                if (len > SIZE_MAX - (size_t) k - 2)
                        return -ENOMEM;
                r = out_reserve(c, (size_t) k + len + 2);
                if (r < 0)
                        return r;
                kb_conn_out_append(c, hdr, (size_t) k);
                kb_conn_out_append(c, buf, len);
                kb_conn_out_append(c, "\r\n", 2);
        } else {
                r = kb_conn_out_append(c, buf, len);
                if (r < 0)
                        return r;
        }

        kb_conn_ref(c);
        gather(c);
        r = c->aborted ? -EPIPE : 0;
        kb_conn_update(c);
        kb_conn_unref(c);
        return r;
}

int kb_conn_end(struct kb_conn *c) {
        if (!c)
                return -EINVAL;
        if (c->state != CONN_BUSY)
                return -EINVAL;

        kb_conn_ref(c);
        if (!c->aborted) {
                if (!c->responded) {
                        /* The handler gave up without answering: say so, and
                         * don't trust the connection further. */
                        struct kb_buf head = {};
                        uint64_t zero = 0;
                        c->close_after = true;
                        if (build_head(c, 500, NULL, 0, &zero, &head) < 0 ||
                            kb_conn_out_append(c, head.data, head.len) < 0)
                                kb_conn_mark_aborted(c);
                        kb_buf_free(&head);
                        c->responded = true;
                } else if (c->chunked && !c->head && !c->killed && kb_conn_out_append(c, "0\r\n\r\n", 5) < 0)
                        kb_conn_mark_aborted(c);
        }
        kb_conn_response_ended(c);
        if (!c->finalized)
                kb_conn_flush(c);
        kb_conn_update(c);
        kb_conn_unref(c);
        return 0;
}

void kb_conn_kill(struct kb_conn *c) {
        if (!c || c->finalized || c->aborted || c->state != CONN_BUSY)
                return;
        /* What is queued still goes out; the missing end is the message. */
        c->killed = true;
        c->close_after = true;
}

void kb_conn_write_fallback_error(struct kb_conn *c, int status, const char *code, const char *message) {
        struct kb_buf b = {};
        static const struct kb_http_header h[] = {
                { "Content-Type", "application/json" },
        };

        int r = kb_buf_appendf(&b, "{\"error\":{\"message\":\"");
        for (const unsigned char *p = (const unsigned char *) strempty(message); r >= 0 && *p; p++) {
                if (*p == '"' || *p == '\\')
                        r = kb_buf_appendf(&b, "\\%c", *p);
                else if (*p < 0x20)
                        r = kb_buf_appendf(&b, "\\u%04x", *p);
                else
                        r = kb_buf_append(&b, p, 1);
        }
        if (r >= 0)
                r = kb_buf_appendf(&b, "\",\"type\":\"%s\",\"code\":\"%s\"}}",
                                   status >= 500 ? "server_error" : "invalid_request_error", strempty(code));
        if (r >= 0)
                kb_conn_respond(c, status, h, ELEMENTSOF(h), b.data, b.len);
        kb_buf_free(&b);
}
