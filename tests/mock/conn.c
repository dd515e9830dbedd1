/* SPDX-License-Identifier: MIT */
/* One thread per client connection: read, parse with llhttp, log, answer in
 * order (pipelining), repeat until the client or the script closes it. */

#include "mock.h"

#include <errno.h>
#include <llhttp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "util.h"

/* Limits on what a client may send. */
#define MOCK_MAX_HEADER_BYTES (64 * 1024)
#define MOCK_MAX_HEADERS 256
#define MOCK_READ_SIZE (64 * 1024)

const struct mock_config *mock_cfg;

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t log_seq;      /* under log_lock */
static atomic_uint_fast64_t seq; /* when there is no log */

enum pending {
        PENDING_NONE,
        PENDING_CONTINUE, /* headers carried Expect: 100-continue */
        PENDING_REQUEST,  /* a full request is ready to answer */
        PENDING_TOO_BIG,  /* headers or body over the limits (or not storable): parse fails */
};

struct conn {
        int fd;
        llhttp_t parser;
        enum pending pending;
        int too_big_status;
        const char *too_big_message;
        struct kb_buf url;
        struct kb_buf field;
        struct kb_buf value;
        bool in_value;
        size_t header_bytes;
        size_t n_headers;
        json_t *headers;
        struct mock_body body;
        bool keep_alive;
};

static int commit_header(struct conn *c) {
        if (!c->in_value)
                return 0;
        c->in_value = false;
        if (++c->n_headers > MOCK_MAX_HEADERS)
                return -E2BIG;
        for (size_t i = 0; i < c->field.len; i++)
                if (c->field.data[i] >= 'A' && c->field.data[i] <= 'Z')
                        c->field.data[i] = (char) (c->field.data[i] - 'A' + 'a');

        json_t *old = json_object_get(c->headers, c->field.data);
        json_t *v;
        if (old) {
                /* Repeated header: join the values as RFC 9110 allows. */
                _cleanup_(kb_buf_free) struct kb_buf joined = {};
                if (kb_buf_appendf(&joined, "%s, ", json_string_value(old)) < 0 ||
                    kb_buf_append(&joined, c->value.data, c->value.len) < 0)
                        return -ENOMEM;
                v = mock_json_string(joined.data, joined.len);
        } else
                v = mock_json_string(c->value.data ?: "", c->value.len);
        int r = v ? json_object_set_new(c->headers, c->field.data ?: "", v) : -1;
        kb_buf_clear(&c->field);
        kb_buf_clear(&c->value);
        return r < 0 ? -ENOMEM : 0;
}

static int on_message_begin(llhttp_t *p) {
        struct conn *c = p->data;
        kb_buf_clear(&c->url);
        kb_buf_clear(&c->field);
        kb_buf_clear(&c->value);
        mock_body_reset(&c->body);
        c->in_value = false;
        c->header_bytes = 0;
        c->n_headers = 0;
        json_object_clear(c->headers);
        return 0;
}

/* Makes llhttp_execute() fail; feed() then answers with status. */
static int refuse(struct conn *c, int status, const char *message) {
        c->pending = PENDING_TOO_BIG;
        c->too_big_status = status;
        c->too_big_message = message;
        return -1;
}

static int too_big(struct conn *c, int status) {
        return refuse(c, status, "Request too large");
}

static int add_header_bytes(struct conn *c, size_t n) {
        c->header_bytes += n;
        return c->header_bytes > MOCK_MAX_HEADER_BYTES ? -1 : 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n) {
        struct conn *c = p->data;
        if (add_header_bytes(c, n) < 0)
                return too_big(c, 431);
        return kb_buf_append(&c->url, at, n) < 0 ? -1 : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n) {
        struct conn *c = p->data;
        if (add_header_bytes(c, n) < 0)
                return too_big(c, 431);
        if (c->in_value) {
                int r = commit_header(c);
                if (r == -E2BIG)
                        return too_big(c, 431);
                if (r < 0)
                        return -1;
        }
        return kb_buf_append(&c->field, at, n) < 0 ? -1 : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n) {
        struct conn *c = p->data;
        if (add_header_bytes(c, n) < 0)
                return too_big(c, 431);
        c->in_value = true;
        return kb_buf_append(&c->value, at, n) < 0 ? -1 : 0;
}

static int on_headers_complete(llhttp_t *p) {
        struct conn *c = p->data;
        int r = commit_header(c);
        if (r == -E2BIG)
                return too_big(c, 431);
        if (r < 0)
                return -1;
        c->keep_alive = llhttp_should_keep_alive(p);
        if (p->content_length > MOCK_MAX_REQUEST_BODY && !(p->flags & F_CHUNKED))
                return too_big(c, 413);
        /* A large upload goes to the spill file from its first byte. */
        if (!(p->flags & F_CHUNKED) && p->content_length > MOCK_SPILL_BYTES &&
            mock_body_spill(&c->body) < 0)
                return refuse(c, 500, "Cannot store the request body");

        const char *expect = json_string_value(json_object_get(c->headers, "expect"));
        if (expect && strcasecmp(expect, "100-continue") == 0) {
                c->pending = PENDING_CONTINUE;
                return HPE_PAUSED;
        }
        return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n) {
        struct conn *c = p->data;
        int r = mock_body_append(&c->body, at, n);
        if (r == -E2BIG)
                return too_big(c, 413);
        if (r < 0)
                return refuse(c, 500, "Cannot store the request body");
        return 0;
}

static int on_message_complete(llhttp_t *p) {
        struct conn *c = p->data;
        c->pending = PENDING_REQUEST;
        return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
        .on_message_begin = on_message_begin,
        .on_url = on_url,
        .on_header_field = on_header_field,
        .on_header_value = on_header_value,
        .on_headers_complete = on_headers_complete,
        .on_body = on_body,
        .on_message_complete = on_message_complete,
};

/* One line per request, in sequence order, before the response goes out: a
 * test that reads the log after its response has everything. */
static int log_request(struct mock_request *req) {
        if (mock_cfg->log_fd < 0) {
                req->n = atomic_fetch_add(&seq, 1) + 1;
                return 0;
        }

        pthread_mutex_lock(&log_lock);
        req->n = ++log_seq;
        json_t *line = json_pack("{sI ss ss sO}",
                                 "n", (json_int_t) req->n,
                                 "method", req->method,
                                 "path", req->path,
                                 "headers", req->headers);
        /* a large body is only counted (and its parts described) */
        if (line && ((req->body_len <= MOCK_LOG_BODY_MAX &&
                      json_object_set_new(line, "body", mock_json_string(req->body, req->body_len)) < 0) ||
                     json_object_set_new(line, "body_bytes", json_integer((json_int_t) req->body_len)) < 0)) {
                json_decref(line);
                line = NULL;
        }
        const char *query = strchr(req->url, '?');
        if (line && query && json_object_set_new(line, "query", mock_json_string(query + 1, strlen(query + 1))) < 0) {
                json_decref(line);
                line = NULL;
        }
        if (line && req->multipart && !req->multipart_error &&
            json_object_set_new(line, "parts", mock_parts_json(req)) < 0) {
                json_decref(line);
                line = NULL;
        }
        _cleanup_free_ char *text = line ? json_dumps(line, JSON_COMPACT) : NULL;
        json_decref(line);
        int r = -ENOMEM;
        if (text) {
                size_t len = strlen(text);
                text[len] = '\n'; /* replaces the NUL; written by length below */
                r = 0;
                const char *p = text;
                size_t left = len + 1;
                while (left > 0) {
                        ssize_t k = write(mock_cfg->log_fd, p, left);
                        if (k < 0) {
                                if (errno == EINTR)
                                        continue;
                                r = -errno;
                                break;
                        }
                        p += k;
                        left -= (size_t) k;
                }
        }
        pthread_mutex_unlock(&log_lock);
        return r;
}

static int answer(struct conn *c) {
        _cleanup_free_ char *path = strndup(c->url.data ?: "", c->url.len);
        if (!path)
                return -ENOMEM;
        path[strcspn(path, "?#")] = 0;

        const char *body;
        size_t body_len;
        int r = mock_body_finish(&c->body, &body, &body_len);
        if (r < 0)
                return mock_send_error(c->fd, false, 500, "Cannot map the request body", true);
        struct mock_request req = {
                .method = llhttp_method_name(llhttp_get_method(&c->parser)),
                .url = c->url.data ?: "",
                .path = path,
                .headers = c->headers,
                .body = body,
                .body_len = body_len,
                .mapped = c->body.map != NULL,
                .keep_alive = c->keep_alive,
        };
        r = mock_multipart_parse(&req);
        if (r >= 0)
                r = log_request(&req);
        if (r >= 0 && mock_cfg->min_latency_ms > 0)
                mock_sleep_ms(mock_cfg->min_latency_ms);
        if (r >= 0 && (r = mock_status_answer(c->fd, &req)) == -ENOENT)
                r = mock_respond(c->fd, &req);
        mock_multipart_free(&req);
        if (r == MOCK_KEEP && !c->keep_alive)
                r = MOCK_CLOSE;
        return r;
}

/* Feed one read's worth of bytes; the parser pauses after each complete
 * request so responses go out in order. */
static int feed(struct conn *c, const char *data, size_t len) {
        while (len > 0) {
                llhttp_errno_t e = llhttp_execute(&c->parser, data, len);
                if (e == HPE_OK)
                        return MOCK_KEEP;
                if (e != HPE_PAUSED) {
                        if (c->pending == PENDING_TOO_BIG)
                                return mock_send_error(c->fd, false, c->too_big_status, c->too_big_message, true);
                        return mock_send_error(c->fd, false, 400, "Malformed HTTP request", true);
                }

                const char *pos = llhttp_get_error_pos(&c->parser);
                len -= (size_t) (pos - data);
                data = pos;
                llhttp_resume(&c->parser);

                enum pending what = c->pending;
                c->pending = PENDING_NONE;
                int r;
                switch (what) {
                case PENDING_CONTINUE:
                        r = mock_send_all(c->fd, "HTTP/1.1 100 Continue\r\n\r\n", 25);
                        break;
                case PENDING_REQUEST:
                        r = answer(c);
                        break;
                default:
                        r = -EPROTO;
                }
                if (r != MOCK_KEEP)
                        return r;
        }
        return MOCK_KEEP;
}

void *mock_conn_thread(void *fd_as_ptr) {
        struct conn c = {
                .fd = (int) (intptr_t) fd_as_ptr,
                .headers = json_object(),
        };
        mock_body_init(&c.body);
        _cleanup_free_ char *buf = malloc(MOCK_READ_SIZE);

        if (c.headers && buf) {
                llhttp_init(&c.parser, HTTP_REQUEST, &settings);
                c.parser.data = &c;
                for (;;) {
                        ssize_t n = recv(c.fd, buf, MOCK_READ_SIZE, 0);
                        if (n < 0 && errno == EINTR)
                                continue;
                        if (n <= 0)
                                break;
                        if (feed(&c, buf, (size_t) n) != MOCK_KEEP)
                                break;
                }
        }

        /* A FIN first, unless x-mock-reset asked for an RST (SO_LINGER 0):
         * then close() alone resets. */
        struct linger l = {};
        socklen_t ll = sizeof(l);
        if (getsockopt(c.fd, SOL_SOCKET, SO_LINGER, &l, &ll) < 0 || !l.l_onoff || l.l_linger != 0)
                (void) shutdown(c.fd, SHUT_WR);
        close(c.fd);
        json_decref(c.headers);
        kb_buf_free(&c.url);
        kb_buf_free(&c.field);
        kb_buf_free(&c.value);
        mock_body_reset(&c.body);
        kb_buf_free(&c.body.mem);
        return NULL;
}
