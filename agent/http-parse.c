/* SPDX-License-Identifier: MIT */
/* Request parsing: llhttp in strict mode, with our own limits on header bytes,
 * header count and body size, and request storage that exists only while a
 * request does. */
#include "http-internal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <strings.h>

/* Request line overhead beyond method and URL ("  HTTP/1.1\r\n" plus the
 * method), and per header line (": " and CRLF). */
#define REQUEST_LINE_OVERHEAD 20u
#define HEADER_LINE_OVERHEAD 4u

static struct kb_conn *conn_of(llhttp_t *p) {
        return p->data;
}

struct kb_http_req *kb_http_req_free(struct kb_http_req *r) {
        if (!r)
                return NULL;
        kb_buf_free(&r->strs);
        kb_buf_free(&r->pub.body);
        kb_buf_free(&r->bq);
        free(r->refs);
        free(r->pub.headers);
        free(r);
        return NULL;
}

const char *kb_http_request_header(const struct kb_http_request *r, const char *name) {
        if (!r || !name)
                return NULL;
        for (size_t i = 0; i < r->n_headers; i++)
                if (strcasecmp(r->headers[i].name, name) == 0)
                        return r->headers[i].value;
        return NULL;
}

static int fail(struct kb_conn *c, int status, const char *code, const char *fmt, ...) _printf_(4, 5);
static int fail(struct kb_conn *c, int status, const char *code, const char *fmt, ...) {
        va_list ap;

        if (c->reject_status == 0) {
                c->reject_status = status;
                c->reject_code = code;
                va_start(ap, fmt);
                vsnprintf(c->reject_msg, sizeof(c->reject_msg), fmt, ap);
                va_end(ap);
        }
        llhttp_set_error_reason(&c->parser, "rejected");
        return HPE_USER;
}

static int count_header_bytes(struct kb_conn *c, size_t n) {
        struct kb_http_req *r = c->req;
        size_t max = c->server->limits.max_header_bytes;

        r->header_bytes += n;
        if (r->header_bytes > max)
                return fail(c, 431, "request_too_large", "request headers exceed %zu bytes", max);
        return 0;
}

static int on_message_begin(llhttp_t *p) {
        struct kb_conn *c = conn_of(p);

        if (!c->req) {
                c->req = calloc(1, sizeof(*c->req));
                if (!c->req)
                        return fail(c, 503, "overloaded", "out of memory");
        }
        c->req->pub.start_usec = c->exec_usec;
        c->req->header_bytes = REQUEST_LINE_OVERHEAD;
        if (c->state == CONN_IDLE)
                c->state = CONN_READING;
        c->last_activity = c->exec_usec;
        return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
        struct kb_conn *c = conn_of(p);
        int r = count_header_bytes(c, len);
        if (r != 0)
                return r;
        if (kb_buf_append(&c->req->strs, at, len) < 0)
                return fail(c, 503, "overloaded", "out of memory");
        return 0;
}

static int on_url_complete(llhttp_t *p) {
        struct kb_conn *c = conn_of(p);
        struct kb_http_req *r = c->req;

        /* strs holds "url" so far: terminate it, then add the path copy. */
        size_t url_len = r->strs.len;
        const char *q = r->strs.data ? memchr(r->strs.data, '?', url_len) : NULL;
        size_t path_len = q ? (size_t) (q - r->strs.data) : url_len;

        if (kb_buf_append(&r->strs, "", 1) < 0 || kb_buf_reserve(&r->strs, path_len + 1) < 0)
                return fail(c, 503, "overloaded", "out of memory");
        r->path_off = r->strs.len;
        /* the reserve above keeps data from moving under us */
        kb_buf_append(&r->strs, r->strs.data, path_len);
        kb_buf_append(&r->strs, "", 1);
        r->url_done = true;
        if (c->refusing) {
                /* the path is all a refused connection was waited on for */
                llhttp_set_error_reason(p, "refused");
                return HPE_USER;
        }
        return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
        struct kb_conn *c = conn_of(p);
        struct kb_http_req *r = c->req;
        int k = count_header_bytes(c, len);
        if (k != 0)
                return k;
        /* llhttp 8 lets spaces into names ("Bad : x"): a smuggling vector
         * RFC 9112 §5.1 says to refuse */
        for (size_t i = 0; i < len; i++)
                if (!kb_http_is_tchar((unsigned char) at[i]))
                        return fail(c, 400, "invalid_request", "invalid request: invalid character in a header name");
        if (r->headers_done) /* trailers: counted, not kept */
                return 0;
        if (!r->field_open) {
                if (r->n_refs >= KB_HTTP_MAX_HEADERS)
                        return fail(c, 431, "request_too_large", "request has more than %u header lines",
                                    KB_HTTP_MAX_HEADERS);
                if (r->n_refs >= r->cap_refs) {
                        size_t cap = r->cap_refs ? r->cap_refs * 2 : 16;
                        struct kb_hdr_ref *n = reallocarray(r->refs, cap, sizeof(*n));
                        if (!n)
                                return fail(c, 503, "overloaded", "out of memory");
                        r->refs = n;
                        r->cap_refs = cap;
                }
                r->refs[r->n_refs++] = (struct kb_hdr_ref) { .name = r->strs.len };
                r->field_open = true;
        }
        if (kb_buf_append(&r->strs, at, len) < 0)
                return fail(c, 503, "overloaded", "out of memory");
        return 0;
}

static int on_header_field_complete(llhttp_t *p) {
        struct kb_conn *c = conn_of(p);
        struct kb_http_req *r = c->req;
        int k = count_header_bytes(c, HEADER_LINE_OVERHEAD);
        if (k != 0)
                return k;
        if (r->headers_done)
                return 0;
        if (kb_buf_append(&r->strs, "", 1) < 0)
                return fail(c, 503, "overloaded", "out of memory");
        r->refs[r->n_refs - 1].value = r->strs.len;
        r->value_started = false;
        return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
        struct kb_conn *c = conn_of(p);
        struct kb_http_req *r = c->req;
        int k = count_header_bytes(c, len);
        if (k != 0)
                return k;

        /* llhttp (strict) still accepts obsolete line folding and reports
         * the folded line as a second piece of the value. Pieces are only
         * split legitimately at the end of a read buffer, so a second piece
         * that doesn't continue exactly where the last buffer ended is a
         * fold: refuse it, as RFC 9112 §5.2 allows. */
        if (r->value_started && !(r->value_at_end && r->value_gen != c->exec_gen && at == c->exec_start))
                return fail(c, 400, "invalid_request", "invalid request: obsolete line folding in a header");
        r->value_started = true;
        r->value_gen = c->exec_gen;
        r->value_at_end = at + len == c->exec_end;

        if (r->headers_done)
                return 0;
        if (kb_buf_append(&r->strs, at, len) < 0)
                return fail(c, 503, "overloaded", "out of memory");
        return 0;
}

static int on_header_value_complete(llhttp_t *p) {
        struct kb_conn *c = conn_of(p);
        struct kb_http_req *r = c->req;

        r->value_started = false;
        if (r->headers_done)
                return 0;
        /* llhttp drops leading whitespace but keeps trailing */
        size_t start = r->refs[r->n_refs - 1].value;
        while (r->strs.len > start && (r->strs.data[r->strs.len - 1] == ' ' || r->strs.data[r->strs.len - 1] == '\t'))
                r->strs.len--;
        if (kb_buf_append(&r->strs, "", 1) < 0)
                return fail(c, 503, "overloaded", "out of memory");
        r->field_open = false;
        return 0;
}

static bool expects_continue(const struct kb_http_request *req) {
        const char *v = kb_http_request_header(req, "Expect");
        return v && strcasecmp(v, "100-continue") == 0;
}

static int on_headers_complete(llhttp_t *p) {
        struct kb_conn *c = conn_of(p);
        struct kb_http_req *r = c->req;
        const struct kb_http_limits *lim = &c->server->limits;

        if (count_header_bytes(c, 2) != 0)
                return -1;
        if (r->headers_done)    /* end of trailers */
                return 0;
        if (p->method == HTTP_CONNECT) {
                fail(c, 400, "invalid_request", "invalid request: CONNECT is not supported");
                return -1;
        }
        if (p->upgrade) {
                fail(c, 400, "invalid_request", "invalid request: protocol upgrade is not supported");
                return -1;
        }
        struct kb_http_header *h = NULL;
        if (r->n_refs > 0) {
                h = calloc(r->n_refs, sizeof(*h));
                if (!h) {
                        fail(c, 503, "overloaded", "out of memory");
                        return -1;
                }
        }
        /* strs won't move from here on: trailers and body go elsewhere */
        for (size_t i = 0; i < r->n_refs; i++)
                h[i] = (struct kb_http_header) {
                        .name = r->strs.data + r->refs[i].name,
                        .value = r->strs.data + r->refs[i].value,
                };
        r->pub.headers = h;
        r->pub.n_headers = r->n_refs;
        r->pub.method = llhttp_method_name(p->method);
        r->pub.url = r->strs.data ?: "";
        r->pub.path = r->url_done ? r->strs.data + r->path_off : "";
        r->pub.http_minor = p->http_major == 1 ? p->http_minor : 0;
        r->headers_done = true;
        r->pub.content_length = (p->flags & F_CONTENT_LENGTH) ? (int64_t) p->content_length : -1;
        c->head = p->method == HTTP_HEAD;

        /* The owner may take the body as it comes (uploads): the request is
         * handed over now, within the owner's own limit. */
        uint64_t max = lim->max_body;
        if (c->server->ops->stream_body) {
                uint64_t smax = c->server->ops->stream_body(c, &r->pub, c->server->userdata);
                if (smax > 0) {
                        r->streaming = true;
                        r->stream_max = max = smax;
                        r->pub.body_streamed = true;
                }
        }
        if ((p->flags & F_CONTENT_LENGTH) && p->content_length > max) {
                fail(c, 413, "request_too_large", "request body exceeds %" PRIu64 " bytes", max);
                return -1;
        }
        if (r->streaming)
                c->req_ready = true;

        if (p->http_major == 1 && p->http_minor >= 1 && expects_continue(&r->pub) &&
            ((p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0)) &&
            kb_conn_out_append(c, "HTTP/1.1 100 Continue\r\n\r\n", 25) < 0) {
                fail(c, 503, "overloaded", "out of memory");
                return -1;
        }
        return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
        struct kb_conn *c = conn_of(p);
        struct kb_http_req *r = c->req;
        uint64_t max = c->server->limits.max_body;

        if (r->streaming) {
                if (r->body_error)
                        return 0;       /* discarded: the connection closes after the answer */
                r->stream_seen += len;
                if (r->stream_seen > r->stream_max) {
                        r->body_error = -EFBIG;
                        c->body_notify = true;
                        return 0;
                }
                if (r->bq_off > 0 && r->bq_off >= r->bq.len / 2) {
                        memmove(r->bq.data, r->bq.data + r->bq_off, r->bq.len - r->bq_off);
                        r->bq.len -= r->bq_off;
                        r->bq_off = 0;
                }
                if (kb_buf_append(&r->bq, at, len) < 0)
                        return fail(c, 503, "overloaded", "out of memory");
                c->body_notify = true;
                return 0;
        }
        if (len > max || r->pub.body.len > max - len)
                return fail(c, 413, "request_too_large", "request body exceeds %" PRIu64 " bytes", max);
        if (kb_buf_append(&r->pub.body, at, len) < 0)
                return fail(c, 503, "overloaded", "out of memory");
        return 0;
}

static int on_message_complete(llhttp_t *p) {
        struct kb_conn *c = conn_of(p);

        c->req->pub.keep_alive = llhttp_should_keep_alive(p);
        c->keep_alive = c->req->pub.keep_alive;
        if (c->req->streaming) {
                /* handed over at its headers already */
                c->req->body_done = true;
                c->body_notify = true;
                if (!c->req_ready)
                        c->end_paused = true;
                return HPE_PAUSED;
        }
        c->req_ready = true;
        /* one request at a time: the rest of the buffer waits in the stash */
        return HPE_PAUSED;
}

const llhttp_settings_t kb_http_parser_settings = {
        .on_message_begin = on_message_begin,
        .on_url = on_url,
        .on_url_complete = on_url_complete,
        .on_header_field = on_header_field,
        .on_header_field_complete = on_header_field_complete,
        .on_header_value = on_header_value,
        .on_header_value_complete = on_header_value_complete,
        .on_headers_complete = on_headers_complete,
        .on_body = on_body,
        .on_message_complete = on_message_complete,
};

void kb_conn_parser_init(struct kb_conn *c) {
        llhttp_init(&c->parser, HTTP_REQUEST, &kb_http_parser_settings);
        c->parser.data = c;
}

size_t kb_conn_parse(struct kb_conn *c, const char *data, size_t len, uint64_t now) {
        c->exec_gen++;
        c->exec_start = data;
        c->exec_end = data + len;
        c->exec_usec = now;

        llhttp_errno_t e = llhttp_execute(&c->parser, data, len);
        c->exec_start = c->exec_end = NULL;
        if (e == HPE_OK)
                return len;
        if (e == HPE_PAUSED && (c->req_ready || c->end_paused)) {
                c->end_paused = false;
                const char *pos = llhttp_get_error_pos(&c->parser);
                return pos && pos >= data && pos <= data + len ? (size_t) (pos - data) : len;
        }

        if (c->refusing) {
                kb_conn_refusal_due(c);
        } else if (c->reject_status != 0) {
                kb_conn_reject(c, c->reject_status, c->reject_code, c->reject_msg);
        } else {
                char msg[160];
                snprintf(msg, sizeof(msg), "invalid request: %s (%s)",
                         strempty(llhttp_get_error_reason(&c->parser)), llhttp_errno_name(e));
                kb_conn_reject(c, 400, "invalid_request", msg);
        }
        return len;
}
