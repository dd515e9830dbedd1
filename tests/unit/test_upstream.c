/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "helper.h"
#include "upstream.h"
#include "util.h"

/* ---- a tiny blocking HTTP/1.1 server on 127.0.0.1, one thread per connection ---- */

enum srv_mode {
        M_JSON,         /* 200 + JSON, keep-alive */
        M_CHUNKED,      /* 200 chunked, five SSE events 30 ms apart */
        M_BIG_CHUNKED,  /* 200 chunked, BIG bytes of a pattern */
        M_BIG_LENGTH,   /* 200 Content-Length, BIG bytes of a pattern */
        M_SILENT,       /* reads the request, never answers */
        M_CUT,          /* Content-Length 1000, 100 bytes, close */
        M_STALL,        /* headers and one chunk, then nothing */
        M_INTERIM,      /* 103 Early Hints, then 200 */
        M_HUGE_HEADERS, /* 80 KiB of headers */
        M_NO_CONTENT,   /* 204 */
};

#define BIG (512u * 1024u)
#define MAX_CONN_THREADS 16

struct srv {
        int lfd;
        uint16_t port;
        enum srv_mode mode;
        pthread_t accept_thread;
        pthread_t conn_threads[MAX_CONN_THREADS];
        atomic_int n_conn_threads;
        atomic_int accepts;
        atomic_int requests;
        pthread_mutex_t lock;
        char *first_head;       /* request line + headers of the first request */
        char *first_body;
        size_t first_body_len;
};

struct conn_arg {
        struct srv *s;
        int fd;
};

static uint8_t pattern(size_t i) {
        return (uint8_t) ((i * 7 + i / 251) & 0xff);
}

static int send_all(int fd, const void *p, size_t n) {
        const char *b = p;

        while (n > 0) {
                ssize_t k = send(fd, b, n, MSG_NOSIGNAL);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -1;
                }
                b += k;
                n -= (size_t) k;
        }
        return 0;
}

static int send_str(int fd, const char *s) {
        return send_all(fd, s, strlen(s));
}

/* Returns 1 with a request read, 0 on EOF, -1 on error. */
static int read_request(int fd, struct kb_buf *in, char **ret_head, char **ret_body, size_t *ret_body_len) {
        char tmp[65536];
        char *end, *cl;
        size_t head_len, body_len = 0;

        while (!(end = memmem(in->data ?: "", in->len, "\r\n\r\n", 4))) {
                ssize_t k = recv(fd, tmp, sizeof(tmp), 0);
                if (k <= 0)
                        return k == 0 ? 0 : -1;
                if (kb_buf_append(in, tmp, (size_t) k) < 0)
                        return -1;
        }
        head_len = (size_t) (end - in->data) + 4;
        *ret_head = strndup(in->data, head_len);
        cl = strcasestr(*ret_head, "\r\ncontent-length:");
        if (cl)
                body_len = strtoul(cl + 17, NULL, 10);
        while (in->len < head_len + body_len) {
                ssize_t k = recv(fd, tmp, sizeof(tmp), 0);
                if (k <= 0)
                        return -1;
                if (kb_buf_append(in, tmp, (size_t) k) < 0)
                        return -1;
        }
        *ret_body = malloc(body_len + 1);
        memcpy(*ret_body, in->data + head_len, body_len);
        (*ret_body)[body_len] = 0;
        *ret_body_len = body_len;
        kb_buf_consume(in, head_len + body_len);
        return 1;
}

static void wait_eof(int fd) {
        char tmp[4096];

        while (recv(fd, tmp, sizeof(tmp), 0) > 0)
                ;
}

static int send_chunk(int fd, const void *p, size_t n) {
        char h[32];

        snprintf(h, sizeof(h), "%zx\r\n", n);
        if (send_str(fd, h) < 0 || send_all(fd, p, n) < 0)
                return -1;
        return send_str(fd, "\r\n");
}

static int send_big(int fd, bool chunked) {
        static uint8_t buf[BIG];

        for (size_t i = 0; i < BIG; i++)
                buf[i] = pattern(i);
        if (!chunked) {
                char h[128];
                snprintf(h, sizeof(h), "HTTP/1.1 200 OK\r\nContent-Length: %u\r\n\r\n", BIG);
                return send_str(fd, h) < 0 ? -1 : send_all(fd, buf, BIG);
        }
        if (send_str(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") < 0)
                return -1;
        for (size_t off = 0; off < BIG; off += 16384)
                if (send_chunk(fd, buf + off, MIN(16384u, BIG - off)) < 0)
                        return -1;
        return send_str(fd, "0\r\n\r\n");
}

/* Answers one request; returns true to keep the connection. */
static bool respond(struct srv *s, int fd) {
        static const char json[] = "{\"id\":\"chatcmpl-1\",\"ok\":true}";
        char h[512];

        switch (s->mode) {
        case M_JSON:
                snprintf(h, sizeof(h),
                         "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         "x-request-id:   req-abc  \r\nContent-Length: %zu\r\n\r\n%s",
                         strlen(json), json);
                return send_str(fd, h) == 0;
        case M_CHUNKED:
                if (send_str(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 "Transfer-Encoding: chunked\r\n\r\n") < 0)
                        return false;
                for (int i = 0; i < 5; i++) {
                        char ev[32];
                        usleep(30000);
                        snprintf(ev, sizeof(ev), "data: %d\n\n", i);
                        if (send_chunk(fd, ev, strlen(ev)) < 0)
                                return false;
                }
                return send_str(fd, "0\r\n\r\n") == 0;
        case M_BIG_CHUNKED:
        case M_BIG_LENGTH:
                return send_big(fd, s->mode == M_BIG_CHUNKED) == 0;
        case M_SILENT:
        case M_STALL:
                if (s->mode == M_STALL)
                        (void) (send_str(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") < 0 ||
                                send_chunk(fd, "first", 5) < 0);
                wait_eof(fd);
                return false;
        case M_CUT:
                memset(h, 'x', 100);
                (void) (send_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n") < 0 ||
                        send_all(fd, h, 100) < 0);
                return false;
        case M_INTERIM:
                return send_str(fd, "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                                    "HTTP/1.1 200 OK\r\nX-Final: yes\r\nContent-Length: 2\r\n\r\nok") == 0;
        case M_HUGE_HEADERS:
                if (send_str(fd, "HTTP/1.1 200 OK\r\n") < 0)
                        return false;
                memset(h, 'v', 400);
                h[400] = 0;
                for (int i = 0; i < 200; i++) {
                        char line[600];
                        snprintf(line, sizeof(line), "X-Pad-%d: %s\r\n", i, h);
                        if (send_str(fd, line) < 0)
                                return false;
                }
                (void) send_str(fd, "Content-Length: 0\r\n\r\n");
                return false;
        case M_NO_CONTENT:
                return send_str(fd, "HTTP/1.1 204 No Content\r\nX-Empty: 1\r\n\r\n") == 0;
        }
        return false;
}

static void *conn_main(void *p) {
        struct conn_arg *a = p;
        struct srv *s = a->s;
        struct kb_buf in = {};
        struct timeval tv = { .tv_sec = 10 };

        (void) setsockopt(a->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        (void) setsockopt(a->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        for (;;) {
                char *head = NULL, *body = NULL;
                size_t body_len = 0;

                if (read_request(a->fd, &in, &head, &body, &body_len) <= 0)
                        break;
                pthread_mutex_lock(&s->lock);
                if (!s->first_head) {
                        s->first_head = TAKE_PTR(head);
                        s->first_body = TAKE_PTR(body);
                        s->first_body_len = body_len;
                }
                pthread_mutex_unlock(&s->lock);
                free(head);
                free(body);
                s->requests++;
                if (!respond(s, a->fd))
                        break;
        }
        kb_buf_free(&in);
        close(a->fd);
        free(a);
        return NULL;
}

static void *accept_main(void *p) {
        struct srv *s = p;

        for (;;) {
                int fd = accept(s->lfd, NULL, NULL);
                struct conn_arg *a;
                int i;

                if (fd < 0)
                        break;
                s->accepts++;
                i = s->n_conn_threads;
                if (i >= MAX_CONN_THREADS) {
                        close(fd);
                        continue;
                }
                a = malloc(sizeof(*a));
                *a = (struct conn_arg) { .s = s, .fd = fd };
                if (pthread_create(&s->conn_threads[i], NULL, conn_main, a) != 0) {
                        close(fd);
                        free(a);
                        continue;
                }
                s->n_conn_threads = i + 1;
        }
        return NULL;
}

static void srv_start(struct srv *s, enum srv_mode mode) {
        *s = (struct srv) { .mode = mode };
        pthread_mutex_init(&s->lock, NULL);
        s->lfd = kbt_tcp_loopback(16, &s->port);
        assert_true(s->lfd >= 0);
        assert_int_equal(pthread_create(&s->accept_thread, NULL, accept_main, s), 0);
}

/* Call after the upstream is freed, so connection threads see EOF. */
static void srv_stop(struct srv *s) {
        (void) shutdown(s->lfd, SHUT_RDWR);
        pthread_join(s->accept_thread, NULL);
        for (int i = 0; i < s->n_conn_threads; i++)
                pthread_join(s->conn_threads[i], NULL);
        close(s->lfd);
        free(s->first_head);
        free(s->first_body);
        pthread_mutex_destroy(&s->lock);
}

/* ---- the client side ---- */

struct rec {
        sd_event *e;
        struct kb_upstream *u;
        struct kb_upstream_call *call;
        long status;
        int n_response;
        bool response_after_data;
        struct kb_buf headers;          /* "name=value\n" */
        struct kb_buf body;
        int n_data;
        int n_done;
        int error;
        char message[256];
        int data_ret;                   /* what on_data returns */
        int response_ret;
        /* pause test */
        int pause_every;
        bool paused;
        bool data_while_paused;
        int n_pauses;
        sd_event_source *resume_timer;
        /* re-entrancy tests */
        struct kb_upstream_call **cancel_on_data;
        struct kb_upstream_request *start_on_done;
        struct kb_upstream_request *start_on_data;
        struct rec *second;
        struct rec *resume_other;       /* resumed from this call's on_data */
        bool pause_no_timer;
        int other_data_at_done;         /* resume_other's n_data when this call ended */
        uint64_t ttfb;
};

static int rec_on_response(void *userdata, long status, const struct kb_http_header *h, size_t n) {
        struct rec *r = userdata;

        r->n_response++;
        r->status = status;
        if (r->n_data > 0)
                r->response_after_data = true;
        for (size_t i = 0; i < n; i++)
                assert_int_equal(kb_buf_appendf(&r->headers, "%s=%s\n", h[i].name, h[i].value), 0);
        return r->response_ret;
}

static const struct kb_upstream_ops rec_ops;

static int on_resume_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        struct rec *r = userdata;

        r->paused = false;
        kb_upstream_call_resume(r->call);
        return 0;
}

static int rec_on_data(void *userdata, const char *buf, size_t len) {
        struct rec *r = userdata;

        if (r->paused)
                r->data_while_paused = true;
        if (r->n_response == 0)
                r->response_after_data = true;
        r->n_data++;
        assert_int_equal(kb_buf_append(&r->body, buf, len), 0);

        if (r->cancel_on_data && *r->cancel_on_data) {
                kb_upstream_call_cancel(*r->cancel_on_data);
                *r->cancel_on_data = NULL;
        }
        if (r->resume_other && r->resume_other->paused) {
                r->resume_other->paused = false;
                kb_upstream_call_resume(r->resume_other->call);
        }
        if (r->start_on_data) {
                assert_int_equal(kb_upstream_start(r->u, r->start_on_data, &rec_ops, r->second, &r->second->call), 0);
                r->start_on_data = NULL;
        }
        if (r->pause_every > 0 && r->n_data % r->pause_every == 0) {
                kb_upstream_call_pause(r->call);
                r->paused = true;
                r->n_pauses++;
                if (r->pause_no_timer)
                        ;
                else if (!r->resume_timer)
                        assert_int_equal(sd_event_add_time_relative(r->e, &r->resume_timer, CLOCK_MONOTONIC,
                                                                    10 * USEC_PER_MSEC, 1, on_resume_timer, r), 0);
                else {
                        assert_int_equal(sd_event_source_set_time_relative(r->resume_timer, 10 * USEC_PER_MSEC), 0);
                        assert_int_equal(sd_event_source_set_enabled(r->resume_timer, SD_EVENT_ONESHOT), 0);
                }
        }
        return r->data_ret;
}

static void rec_on_done(void *userdata, int error, const char *message) {
        struct rec *r = userdata;

        r->n_done++;
        r->error = error;
        r->ttfb = kb_upstream_call_ttfb_usec(r->call);
        snprintf(r->message, sizeof(r->message), "%s", strempty(message));
        r->call = NULL;
        if (r->resume_other)
                r->other_data_at_done = r->resume_other->n_data;
        if (r->start_on_done) {
                assert_int_equal(kb_upstream_start(r->u, r->start_on_done, &rec_ops, r->second, &r->second->call), 0);
                r->start_on_done = NULL;
        }
}

static const struct kb_upstream_ops rec_ops = {
        .on_response = rec_on_response,
        .on_data = rec_on_data,
        .on_done = rec_on_done,
};

static void rec_free(struct rec *r) {
        kb_buf_free(&r->headers);
        kb_buf_free(&r->body);
        sd_event_source_disable_unref(r->resume_timer);
}

struct fixture {
        sd_event *e;
        struct kb_upstream *u;
        struct srv srv;
        bool have_srv;
        char url[128];
};

static int setup(void **state) {
        struct fixture *f = calloc(1, sizeof(*f));

        assert_non_null(f);
        assert_int_equal(sd_event_new(&f->e), 0);
        assert_int_equal(kb_upstream_new(f->e, &f->u), 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        struct fixture *f = *state;

        kb_upstream_free(f->u);
        if (f->have_srv)
                srv_stop(&f->srv);
        sd_event_unref(f->e);
        free(f);
        return 0;
}

static void fixture_srv(struct fixture *f, enum srv_mode mode) {
        srv_start(&f->srv, mode);
        f->have_srv = true;
        snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%u/v1/chat/completions", f->srv.port);
}

static void rec_init(struct rec *r, struct fixture *f) {
        *r = (struct rec) { .e = f->e, .u = f->u };
}

static void run_until(sd_event *e, const int *counter, int target, uint64_t max_usec) {
        assert_int_equal(kbt_run_until(e, *counter >= target, max_usec, 50 * USEC_PER_MSEC), 0);
        assert_true(*counter >= target);
}

static void run_for(sd_event *e, uint64_t usec) {
        kbt_run_for(e, usec, 10 * USEC_PER_MSEC);
}

static struct kb_upstream_request simple_get(const char *url) {
        return (struct kb_upstream_request) {
                .method = "GET", .url = url, .timeout_usec = 5 * USEC_PER_SEC,
                .connect_timeout_usec = 2 * USEC_PER_SEC,
        };
}

/* ---- tests ---- */

static void test_json_post(void **state) {
        struct fixture *f = *state;
        static const char *const hdrs[] = {
                "Content-Type: application/json", "X-Extra: one", "anthropic-version: 2023-06-01",
                "Authorization: from-the-app", "Content-Length: 5", "Expect: 100-continue",
        };
        const size_t body_len = 1536 * 1024; /* over curl's 1 MiB Expect threshold */
        _cleanup_free_ char *body = malloc(body_len);
        struct kb_upstream_request req = {
                .method = "POST", .headers = hdrs, .n_headers = ELEMENTSOF(hdrs),
                .auth_name = "Authorization", .auth_prefix = "Bearer ",
                .secret = "sk-test-SECRET", .secret_len = 14,
                .body = body, .body_len = body_len, .timeout_usec = 10 * USEC_PER_SEC,
        };
        struct rec r;

        fixture_srv(f, M_JSON);
        req.url = f->url;
        memset(body, 'a', body_len);
        memcpy(body, "{\"x\":\"", 6);
        memcpy(body + body_len - 2, "\"}", 2);
        rec_init(&r, f);

        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &r, &r.call), 0);
        assert_int_equal(kb_upstream_n_calls(f->u), 1);
        assert_int_equal(r.n_done, 0); /* never from inside start */
        run_until(f->e, &r.n_done, 1, 10 * USEC_PER_SEC);

        assert_int_equal(r.error, 0);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.n_response, 1);
        assert_false(r.response_after_data);
        assert_non_null(strstr(r.headers.data, "x-request-id=req-abc\n"));
        assert_non_null(strstr(r.headers.data, "Content-Type=application/json\n"));
        assert_string_equal(r.body.data, "{\"id\":\"chatcmpl-1\",\"ok\":true}");
        assert_true(r.ttfb > 0);
        assert_int_equal(kb_upstream_n_calls(f->u), 0);

        assert_non_null(f->srv.first_head);
        assert_true(strncmp(f->srv.first_head, "POST /v1/chat/completions HTTP/1.1\r\n", 36) == 0);
        assert_non_null(strstr(f->srv.first_head, "\r\nAuthorization: Bearer sk-test-SECRET\r\n"));
        assert_null(strstr(f->srv.first_head, "from-the-app"));
        assert_non_null(strstr(f->srv.first_head, "\r\nX-Extra: one\r\n"));
        assert_non_null(strstr(f->srv.first_head, "\r\nanthropic-version: 2023-06-01\r\n"));
        assert_non_null(strstr(f->srv.first_head, "\r\nContent-Type: application/json\r\n"));
        assert_non_null(strstr(f->srv.first_head, "\r\nContent-Length: 1572864\r\n"));
        assert_null(strcasestr(f->srv.first_head, "expect:"));
        assert_null(strcasestr(f->srv.first_head, "accept-encoding"));
        assert_int_equal(f->srv.first_body_len, body_len);
        assert_memory_equal(f->srv.first_body, body, body_len);
        rec_free(&r);
}

static void test_chunked_stream(void **state) {
        struct fixture *f = *state;
        struct kb_upstream_request req;
        struct rec r;

        fixture_srv(f, M_CHUNKED);
        req = simple_get(f->url);
        rec_init(&r, f);
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &r, &r.call), 0);
        run_until(f->e, &r.n_done, 1, 5 * USEC_PER_SEC);

        assert_int_equal(r.error, 0);
        assert_int_equal(r.n_response, 1);
        assert_false(r.response_after_data);
        assert_true(r.n_data >= 3); /* 30 ms apart: not one piece */
        assert_string_equal(r.body.data, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n");
        assert_non_null(strstr(r.headers.data, "Content-Type=text/event-stream\n"));
        assert_true(strncmp(f->srv.first_head, "GET /v1/chat/completions HTTP/1.1\r\n", 35) == 0);
        rec_free(&r);
}

static void pause_resume(void **state, enum srv_mode mode) {
        struct fixture *f = *state;
        struct kb_upstream_request req;
        struct rec r;

        fixture_srv(f, mode);
        req = simple_get(f->url);
        rec_init(&r, f);
        r.pause_every = 2;
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &r, &r.call), 0);
        run_until(f->e, &r.n_done, 1, 10 * USEC_PER_SEC);

        assert_int_equal(r.error, 0);
        assert_true(r.n_pauses >= 3);
        assert_false(r.data_while_paused);
        assert_int_equal(r.body.len, BIG);
        for (size_t i = 0; i < BIG; i++)
                if ((uint8_t) r.body.data[i] != pattern(i))
                        fail_msg("byte %zu differs", i);
        rec_free(&r);
}

static void test_pause_resume_chunked(void **state) {
        pause_resume(state, M_BIG_CHUNKED);
}

static void test_pause_resume_length(void **state) {
        pause_resume(state, M_BIG_LENGTH);
}

/* A paused call resumed from inside another call's on_data. */
static void test_resume_from_other_call(void **state) {
        struct fixture *f = *state;
        struct kb_upstream_request req, req_slow;
        struct srv slow;
        char slow_url[64];
        struct rec a, b;

        fixture_srv(f, M_BIG_CHUNKED);
        req = simple_get(f->url);
        /* b's events come 30 ms apart, so a is resumed from each of them */
        srv_start(&slow, M_CHUNKED);
        snprintf(slow_url, sizeof(slow_url), "http://127.0.0.1:%u/", slow.port);
        req_slow = simple_get(slow_url);
        rec_init(&a, f);
        rec_init(&b, f);
        a.pause_every = 1;
        a.pause_no_timer = true;
        b.resume_other = &a;
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &a, &a.call), 0);
        run_until(f->e, &a.n_data, 1, 5 * USEC_PER_SEC);
        assert_true(a.paused);
        run_for(f->e, 50 * USEC_PER_MSEC);
        assert_int_equal(a.n_data, 1);

        assert_int_equal(kb_upstream_start(f->u, &req_slow, &rec_ops, &b, &b.call), 0);
        run_until(f->e, &b.n_done, 1, 10 * USEC_PER_SEC);
        assert_int_equal(b.error, 0);
        assert_true(b.n_data >= 3);
        assert_true(b.other_data_at_done >= b.n_data);
        assert_false(a.data_while_paused);

        /* finish a from outside */
        a.pause_every = 0;
        if (a.paused) {
                a.paused = false;
                kb_upstream_call_resume(a.call);
        }
        run_until(f->e, &a.n_done, 1, 10 * USEC_PER_SEC);
        assert_int_equal(a.error, 0);
        assert_int_equal(a.body.len, BIG);
        for (size_t i = 0; i < BIG; i++)
                if ((uint8_t) a.body.data[i] != pattern(i))
                        fail_msg("byte %zu differs", i);
        rec_free(&a);
        rec_free(&b);
        f->u = kb_upstream_free(f->u);
        srv_stop(&slow);
}

static void test_connection_refused(void **state) {
        struct fixture *f = *state;
        struct kb_upstream_request req;
        struct rec r;
        uint16_t port;
        int fd;

        /* a port bound but never listened on */
        fd = kbt_tcp_loopback(-1, &port);
        assert_true(fd >= 0);
        snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%u/", port);

        req = simple_get(f->url);
        rec_init(&r, f);
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &r, &r.call), 0);
        assert_int_equal(r.n_done, 0);
        run_until(f->e, &r.n_done, 1, 5 * USEC_PER_SEC);
        close(fd);

        assert_int_equal(r.n_done, 1);
        assert_int_equal(r.error, -ECONNREFUSED);
        assert_int_equal(r.n_response, 0);
        assert_true(strlen(r.message) > 0);
        assert_int_equal(kb_upstream_n_calls(f->u), 0);
        rec_free(&r);
}

static void test_timeout(void **state) {
        struct fixture *f = *state;
        struct kb_upstream_request req;
        struct rec r;
        uint64_t t0;

        fixture_srv(f, M_SILENT);
        req = simple_get(f->url);
        req.timeout_usec = 200 * USEC_PER_MSEC;
        rec_init(&r, f);
        t0 = kb_now_usec();
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &r, &r.call), 0);
        run_until(f->e, &r.n_done, 1, 5 * USEC_PER_SEC);

        assert_int_equal(r.error, -ETIMEDOUT);
        assert_true(kb_now_usec() - t0 >= 190 * USEC_PER_MSEC);
        assert_true(kb_now_usec() - t0 < 2 * USEC_PER_SEC);
        assert_int_equal(r.n_response, 0);
        rec_free(&r);
}

static void test_cut_mid_body(void **state) {
        struct fixture *f = *state;
        struct kb_upstream_request req;
        struct rec r;

        fixture_srv(f, M_CUT);
        req = simple_get(f->url);
        rec_init(&r, f);
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &r, &r.call), 0);
        run_until(f->e, &r.n_done, 1, 5 * USEC_PER_SEC);

        assert_int_equal(r.error, -ECONNRESET);
        assert_int_equal(r.n_response, 1);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.body.len, 100);
        rec_free(&r);
}

static void test_cancel_during_transfer(void **state) {
        struct fixture *f = *state;
        struct kb_upstream_request req;
        struct rec r;

        fixture_srv(f, M_STALL);
        req = simple_get(f->url);
        rec_init(&r, f);
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &r, &r.call), 0);
        run_until(f->e, &r.n_data, 1, 5 * USEC_PER_SEC);
        assert_string_equal(r.body.data, "first");

        kb_upstream_call_cancel(r.call);
        assert_int_equal(kb_upstream_n_calls(f->u), 0);
        run_for(f->e, 100 * USEC_PER_MSEC);
        assert_int_equal(r.n_done, 0);
        assert_int_equal(r.n_data, 1);
        rec_free(&r);
}

static void test_cancel_before_run(void **state) {
        struct fixture *f = *state;
        struct kb_upstream_request req;
        struct rec r;

        fixture_srv(f, M_JSON);
        req = simple_get(f->url);
        rec_init(&r, f);
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &r, &r.call), 0);
        kb_upstream_call_cancel(r.call);
        kb_upstream_call_cancel(NULL);
        assert_int_equal(kb_upstream_n_calls(f->u), 0);
        run_for(f->e, 100 * USEC_PER_MSEC);
        assert_int_equal(r.n_done + r.n_data + r.n_response, 0);
        rec_free(&r);
}

/* One call's on_data cancels the other while curl is inside its callbacks. */
static void test_cancel_other_from_on_data(void **state) {
        struct fixture *f = *state;
        struct kb_upstream_request req;
        struct rec a, b;

        fixture_srv(f, M_STALL);
        req = simple_get(f->url);
        rec_init(&a, f);
        rec_init(&b, f);
        a.cancel_on_data = &b.call;
        b.cancel_on_data = &a.call;
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &a, &a.call), 0);
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &b, &b.call), 0);
        assert_int_equal(kb_upstream_n_calls(f->u), 2);
        assert_int_equal(kbt_run_until(f->e, a.n_data + b.n_data > 0, 5 * USEC_PER_SEC, 50 * USEC_PER_MSEC), 0);
        run_for(f->e, 100 * USEC_PER_MSEC);

        /* exactly one got data and cancelled the other */
        assert_int_equal(a.n_data + b.n_data, 1);
        assert_int_equal(kb_upstream_n_calls(f->u), 1);
        kb_upstream_call_cancel(a.call ?: b.call);
        assert_int_equal(kb_upstream_n_calls(f->u), 0);
        run_for(f->e, 50 * USEC_PER_MSEC);
        assert_int_equal(a.n_done + b.n_done, 0);
        rec_free(&a);
        rec_free(&b);
}

/* A fallback started from on_done, and a call started from inside on_data. */
static void test_start_from_callbacks(void **state) {
        struct fixture *f = *state;
        char dead[64];
        struct kb_upstream_request req_dead, req_ok;
        struct rec a, b, c;
        uint16_t port;
        int fd;

        fixture_srv(f, M_JSON);
        fd = kbt_tcp_loopback(-1, &port);
        assert_true(fd >= 0);
        snprintf(dead, sizeof(dead), "http://127.0.0.1:%u/", port);
        req_dead = simple_get(dead);
        req_ok = simple_get(f->url);

        rec_init(&a, f);
        rec_init(&b, f);
        rec_init(&c, f);
        a.start_on_done = &req_ok;
        a.second = &b;
        b.start_on_data = &req_ok;
        b.second = &c;
        assert_int_equal(kb_upstream_start(f->u, &req_dead, &rec_ops, &a, &a.call), 0);
        run_until(f->e, &c.n_done, 1, 5 * USEC_PER_SEC);
        close(fd);

        assert_int_equal(a.n_done, 1);
        assert_int_equal(a.error, -ECONNREFUSED);
        assert_int_equal(b.n_done, 1);
        assert_int_equal(b.error, 0);
        assert_int_equal(b.status, 200);
        assert_int_equal(c.n_done, 1);
        assert_int_equal(c.error, 0);
        assert_string_equal(c.body.data, "{\"id\":\"chatcmpl-1\",\"ok\":true}");
        assert_int_equal(kb_upstream_n_calls(f->u), 0);
        rec_free(&a);
        rec_free(&b);
        rec_free(&c);
}

static void test_connection_reuse(void **state) {
        struct fixture *f = *state;
        struct kb_upstream_request req;
        struct rec a, b;

        fixture_srv(f, M_JSON);
        req = simple_get(f->url);
        rec_init(&a, f);
        rec_init(&b, f);
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &a, &a.call), 0);
        run_until(f->e, &a.n_done, 1, 5 * USEC_PER_SEC);
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &b, &b.call), 0);
        run_until(f->e, &b.n_done, 1, 5 * USEC_PER_SEC);

        assert_int_equal(a.error, 0);
        assert_int_equal(b.error, 0);
        assert_int_equal(f->srv.requests, 2);
        assert_int_equal(f->srv.accepts, 1);
        rec_free(&a);
        rec_free(&b);
}

static void test_on_data_error(void **state) {
        struct fixture *f = *state;
        struct kb_upstream_request req;
        struct rec r;

        fixture_srv(f, M_BIG_CHUNKED);
        req = simple_get(f->url);
        rec_init(&r, f);
        r.data_ret = -EPIPE;
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &r, &r.call), 0);
        run_until(f->e, &r.n_done, 1, 5 * USEC_PER_SEC);

        assert_int_equal(r.error, -ECANCELED);
        assert_int_equal(r.n_data, 1); /* nothing after the abort */
        rec_free(&r);
}

static void test_on_response_error(void **state) {
        struct fixture *f = *state;
        struct kb_upstream_request req;
        struct rec r;

        fixture_srv(f, M_JSON);
        req = simple_get(f->url);
        rec_init(&r, f);
        r.response_ret = -EBADMSG;
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &r, &r.call), 0);
        run_until(f->e, &r.n_done, 1, 5 * USEC_PER_SEC);

        assert_int_equal(r.error, -ECANCELED);
        assert_int_equal(r.n_response, 1);
        assert_int_equal(r.n_data, 0);
        rec_free(&r);
}

static void test_interim_response(void **state) {
        struct fixture *f = *state;
        struct kb_upstream_request req;
        struct rec r;

        fixture_srv(f, M_INTERIM);
        req = simple_get(f->url);
        rec_init(&r, f);
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &r, &r.call), 0);
        run_until(f->e, &r.n_done, 1, 5 * USEC_PER_SEC);

        assert_int_equal(r.error, 0);
        assert_int_equal(r.n_response, 1);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.headers.data, "X-Final=yes\n"));
        assert_null(strstr(r.headers.data, "Link="));
        assert_string_equal(r.body.data, "ok");
        rec_free(&r);
}

static void test_huge_headers(void **state) {
        struct fixture *f = *state;
        struct kb_upstream_request req;
        struct rec r;

        fixture_srv(f, M_HUGE_HEADERS);
        req = simple_get(f->url);
        rec_init(&r, f);
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &r, &r.call), 0);
        run_until(f->e, &r.n_done, 1, 5 * USEC_PER_SEC);

        assert_int_equal(r.error, -EPROTO);
        assert_int_equal(r.n_response, 0);
        rec_free(&r);
}

static void test_no_body(void **state) {
        struct fixture *f = *state;
        struct kb_upstream_request req;
        struct rec r;

        fixture_srv(f, M_NO_CONTENT);
        req = simple_get(f->url);
        rec_init(&r, f);
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &r, &r.call), 0);
        run_until(f->e, &r.n_done, 1, 5 * USEC_PER_SEC);

        assert_int_equal(r.error, 0);
        assert_int_equal(r.n_response, 1);
        assert_int_equal(r.status, 204);
        assert_non_null(strstr(r.headers.data, "X-Empty=1\n"));
        assert_int_equal(r.n_data, 0);
        assert_true(r.ttfb > 0);
        rec_free(&r);
}

/* Freeing the upstream with calls running: no on_done, nothing leaks. */
static void test_free_with_calls(void **state) {
        struct fixture *f = *state;
        struct kb_upstream_request req;
        struct rec a, b;

        fixture_srv(f, M_STALL);
        req = simple_get(f->url);
        rec_init(&a, f);
        rec_init(&b, f);
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &a, &a.call), 0);
        run_until(f->e, &a.n_data, 1, 5 * USEC_PER_SEC);
        assert_int_equal(kb_upstream_start(f->u, &req, &rec_ops, &b, &b.call), 0);
        f->u = kb_upstream_free(f->u);
        assert_null(f->u);
        run_for(f->e, 50 * USEC_PER_MSEC);
        assert_int_equal(a.n_done + b.n_done, 0);
        rec_free(&a);
        rec_free(&b);
}

static void test_bad_input(void **state) {
        struct fixture *f = *state;
        struct kb_upstream *u2 = (struct kb_upstream *) 0x1;
        struct kb_upstream_call *c = (struct kb_upstream_call *) 0x1;
        static const char *const crlf[] = { "X-A: b\r\nX-Injected: 1" };
        static const char *const nocolon[] = { "X-A b" };
        static const char *const badname[] = { "X A: b" };
        static const char *const nullh[] = { NULL };
        const char *many[KB_UPSTREAM_MAX_HEADERS + 1];
        struct kb_upstream_request ok = simple_get("http://127.0.0.1:1/"), r;
        struct rec rec;

        rec_init(&rec, f);
        assert_int_equal(kb_upstream_new(NULL, &u2), -EINVAL);
        assert_int_equal(kb_upstream_new(f->e, NULL), -EINVAL);
        assert_ptr_equal(u2, (struct kb_upstream *) 0x1);

        assert_int_equal(kb_upstream_start(NULL, &ok, &rec_ops, &rec, &c), -EINVAL);
        assert_int_equal(kb_upstream_start(f->u, NULL, &rec_ops, &rec, &c), -EINVAL);
        assert_int_equal(kb_upstream_start(f->u, &ok, NULL, &rec, &c), -EINVAL);
        assert_int_equal(kb_upstream_start(f->u, &ok, &rec_ops, &rec, NULL), -EINVAL);

#define EXPECT_BAD(field_change, err)                                                   \
        do {                                                                            \
                r = ok;                                                                 \
                field_change;                                                           \
                assert_int_equal(kb_upstream_start(f->u, &r, &rec_ops, &rec, &c), err); \
        } while (0)

        EXPECT_BAD(r.url = NULL, -EINVAL);
        EXPECT_BAD(r.method = NULL, -EINVAL);
        EXPECT_BAD(r.method = "PUT", -EINVAL);
        /* DELETE is sent (objects), but never with a body */
        EXPECT_BAD((r.method = "DELETE", r.body = "x", r.body_len = 1), -EINVAL);
        /* a streamed body is a POST's, of a size or -1 */
        EXPECT_BAD((r.method = "GET", r.body_streamed = true, r.body_size = -1), -EINVAL);
        EXPECT_BAD((r.method = "POST", r.body_streamed = true, r.body_size = -2), -EINVAL);
        EXPECT_BAD(r.method = "get", -EINVAL);
        EXPECT_BAD(r.url = "ftp://127.0.0.1/", -EINVAL);
        EXPECT_BAD(r.url = "file:///etc/passwd", -EINVAL);
        EXPECT_BAD(r.url = "http://127.0.0.1/\r\nX: y", -EINVAL);
        EXPECT_BAD(r.url = "http://127.0.0.1/a b", -EINVAL);
        EXPECT_BAD((r.headers = crlf, r.n_headers = 1), -EINVAL);
        EXPECT_BAD((r.headers = nocolon, r.n_headers = 1), -EINVAL);
        EXPECT_BAD((r.headers = badname, r.n_headers = 1), -EINVAL);
        EXPECT_BAD((r.headers = nullh, r.n_headers = 1), -EINVAL);
        EXPECT_BAD((r.headers = NULL, r.n_headers = 1), -EINVAL);
        for (size_t i = 0; i < ELEMENTSOF(many); i++)
                many[i] = "X-Many: 1";
        EXPECT_BAD((r.headers = many, r.n_headers = ELEMENTSOF(many)), -E2BIG);
        EXPECT_BAD((r.auth_name = "Authorization", r.secret = NULL, r.secret_len = 5), -EINVAL);
        EXPECT_BAD((r.auth_name = "Authorization", r.secret = "", r.secret_len = 0), -EINVAL);
        EXPECT_BAD((r.auth_name = "Authorization", r.secret = "sk\r\nX: 1", r.secret_len = 8), -EINVAL);
        EXPECT_BAD((r.auth_name = "Authorization", r.secret = "sk\0x", r.secret_len = 4), -EINVAL);
        EXPECT_BAD((r.auth_name = "Auth:orization", r.secret = "sk", r.secret_len = 2), -EINVAL);
        EXPECT_BAD((r.auth_name = "", r.secret = "sk", r.secret_len = 2), -EINVAL);
        EXPECT_BAD((r.auth_name = "x-api-key", r.auth_prefix = "a\nb", r.secret = "sk", r.secret_len = 2),
                   -EINVAL);
        EXPECT_BAD((r.method = "POST", r.body = NULL, r.body_len = 3), -EINVAL);
        EXPECT_BAD((r.body = "abc", r.body_len = 3), -EINVAL); /* GET with a body */
        {
                _cleanup_free_ char *longurl = malloc(10000);
                memset(longurl, 'a', 9999);
                memcpy(longurl, "http://", 7);
                longurl[9999] = 0;
                EXPECT_BAD(r.url = longurl, -E2BIG);
        }
#undef EXPECT_BAD

        assert_ptr_equal(c, (struct kb_upstream_call *) 0x1);
        assert_int_equal(kb_upstream_n_calls(f->u), 0);

        /* NULL is accepted everywhere */
        assert_null(kb_upstream_free(NULL));
        kb_upstream_call_cancel(NULL);
        kb_upstream_call_pause(NULL);
        kb_upstream_call_resume(NULL);
        assert_int_equal(kb_upstream_call_ttfb_usec(NULL), 0);
        assert_int_equal(kb_upstream_n_calls(NULL), 0);
        rec_free(&rec);
}

static void test_request_headers(void **state) {
        static const char *const hdrs[] = {
                "X-One: 1", "host: evil", "Transfer-Encoding: chunked", "x-api-key: app-key",
                "Connection: close", "TE: trailers", "Upgrade: h2c", "Keep-Alive: 5", "X-Two:  2",
        };
        struct kb_upstream_request req = {
                .method = "POST", .url = "https://api.example.invalid/v1/messages",
                .headers = hdrs, .n_headers = ELEMENTSOF(hdrs),
                .auth_name = "x-api-key", .secret = "sk-ant-XYZ", .secret_len = 10,
        };
        struct curl_slist *l = (struct curl_slist *) 0x1;
        struct kb_buf all = {};

        assert_int_equal(kb_upstream_request_headers(NULL, &l), -EINVAL);
        assert_int_equal(kb_upstream_request_headers(&req, NULL), -EINVAL);
        assert_ptr_equal(l, (struct curl_slist *) 0x1);
        assert_int_equal(kb_upstream_request_validate(NULL), -EINVAL);

        assert_int_equal(kb_upstream_request_headers(&req, &l), 0);
        for (struct curl_slist *i = l; i; i = i->next)
                assert_int_equal(kb_buf_appendf(&all, "%s|", i->data), 0);
        /* the secret is only ever in the last line, prefix "" means none */
        assert_string_equal(all.data, "X-One: 1|X-Two:  2|Expect:|Content-Type:|x-api-key: sk-ant-XYZ|");
        l = kb_upstream_slist_wipe_free(l);
        assert_null(l);
        assert_null(kb_upstream_slist_wipe_free(NULL));
        kb_buf_free(&all);

        /* the caller's content type is kept, no credential without auth_name */
        {
                static const char *const ct[] = { "content-type: application/json" };
                req.headers = ct;
                req.n_headers = 1;
                req.auth_name = NULL;
                assert_int_equal(kb_upstream_request_headers(&req, &l), 0);
                for (struct curl_slist *i = l; i; i = i->next)
                        assert_int_equal(kb_buf_appendf(&all, "%s|", i->data), 0);
                assert_string_equal(all.data, "content-type: application/json|Expect:|");
                kb_upstream_slist_wipe_free(l);
                kb_buf_free(&all);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_json_post, setup, teardown),
                cmocka_unit_test_setup_teardown(test_chunked_stream, setup, teardown),
                cmocka_unit_test_setup_teardown(test_pause_resume_chunked, setup, teardown),
                cmocka_unit_test_setup_teardown(test_pause_resume_length, setup, teardown),
                cmocka_unit_test_setup_teardown(test_resume_from_other_call, setup, teardown),
                cmocka_unit_test_setup_teardown(test_connection_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cut_mid_body, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cancel_during_transfer, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cancel_before_run, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cancel_other_from_on_data, setup, teardown),
                cmocka_unit_test_setup_teardown(test_start_from_callbacks, setup, teardown),
                cmocka_unit_test_setup_teardown(test_connection_reuse, setup, teardown),
                cmocka_unit_test_setup_teardown(test_on_data_error, setup, teardown),
                cmocka_unit_test_setup_teardown(test_on_response_error, setup, teardown),
                cmocka_unit_test_setup_teardown(test_interim_response, setup, teardown),
                cmocka_unit_test_setup_teardown(test_huge_headers, setup, teardown),
                cmocka_unit_test_setup_teardown(test_no_body, setup, teardown),
                cmocka_unit_test_setup_teardown(test_free_with_calls, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
                cmocka_unit_test(test_request_headers),
        };

        /* the test talks to 127.0.0.1 only, never through a proxy */
        static const char *const proxies[] = {
                "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
        };
        for (size_t i = 0; i < ELEMENTSOF(proxies); i++)
                unsetenv(proxies[i]);

        return cmocka_run_group_tests(tests, NULL, NULL);
}
