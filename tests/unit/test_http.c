/* SPDX-License-Identifier: MIT */
/* The HTTP server against real sockets: a temporary AF_UNIX listener, a real
 * sd_event loop, and clients in this process that drive the loop while they
 * wait. Every answer is checked as bytes on the wire. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <poll.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "helper.h"
#include "http-internal.h"
#include "http.h"

enum mode {
        MODE_ECHO,      /* answer at once: "METHOD url body" */
        MODE_HOLD,      /* keep the conn; the test answers */
        MODE_STREAM,    /* chunked "hello" + " world" */
        MODE_BIG,       /* 1 MiB streamed with backpressure */
        MODE_BADHDR,    /* response headers with CR/LF and framing */
        MODE_DOUBLE,    /* misuse: respond twice, write before begin */
};

#define BIG_TOTAL (1024u * 1024u)

struct fx {
        sd_event *e;
        struct kb_http_server *s;
        char dir[64];
        char path[100];
        enum mode mode;
        bool refuse;
        bool no_write_error;
        int n_accept, n_close, n_request, n_abort, n_writable, n_error;
        int err_status;
        char err_code[64], err_msg[160], err_path[128];
        bool err_path_null;
        struct kb_conn *held[4];
        int n_held;
        char paths[8][64];
        size_t big_sent;
        char last_method[16], last_url[128], last_path[128], last_host[64];
        char last_body[256];
        size_t last_body_len;
        bool last_keep_alive, last_body_nul;
        unsigned last_minor;
        int misuse_rc[3];
};

static struct fx *FX;

/* ---- server callbacks ---- */

static int on_accept(struct kb_conn *c, void *ud) {
        struct fx *f = ud;
        f->n_accept++;
        return f->refuse ? -EPERM : 0;
}

static void on_close(struct kb_conn *c, void *ud) {
        ((struct fx *) ud)->n_close++;
}

static void on_error(struct kb_conn *c, const char *path, int status, const char *code, const char *message,
                     void *ud) {
        struct fx *f = ud;
        char body[512];
        static const struct kb_http_header h[] = { { "Content-Type", "application/json" } };

        f->n_error++;
        f->err_status = status;
        snprintf(f->err_code, sizeof(f->err_code), "%s", code);
        snprintf(f->err_msg, sizeof(f->err_msg), "%s", message);
        f->err_path_null = !path;
        snprintf(f->err_path, sizeof(f->err_path), "%s", strempty(path));
        int n = snprintf(body, sizeof(body), "{\"code\":\"%s\",\"message\":\"%s\"}", code, message);
        assert_int_equal(kb_conn_respond(c, status, h, 1, body, (size_t) n), 0);
}

static void big_pump(struct kb_conn *c, void *ud) {
        struct fx *f = ud;
        static char chunk[4096];

        f->n_writable++;
        memset(chunk, 'z', sizeof(chunk));
        while (f->big_sent < BIG_TOTAL && kb_conn_pending(c) <= KB_CONN_HIGH_WATER) {
                assert_int_equal(kb_conn_write(c, chunk, sizeof(chunk)), 0);
                f->big_sent += sizeof(chunk);
        }
        if (f->big_sent >= BIG_TOTAL)
                assert_int_equal(kb_conn_end(c), 0);
}

static void on_abort(struct kb_conn *c, void *ud) {
        ((struct fx *) ud)->n_abort++;
}

static const struct kb_conn_handler big_handler = { .on_writable = big_pump, .on_abort = on_abort };
static const struct kb_conn_handler hold_handler = { .on_abort = on_abort };

static void on_request(struct kb_conn *c, struct kb_http_request *r, void *ud) {
        struct fx *f = ud;
        char out[512];

        if (f->n_request < 8)
                snprintf(f->paths[f->n_request], sizeof(f->paths[0]), "%s", r->path);
        f->n_request++;
        snprintf(f->last_method, sizeof(f->last_method), "%s", r->method);
        snprintf(f->last_url, sizeof(f->last_url), "%s", r->url);
        snprintf(f->last_path, sizeof(f->last_path), "%s", r->path);
        snprintf(f->last_host, sizeof(f->last_host), "%s", strempty(kb_http_request_header(r, "hOsT")));
        f->last_body_len = r->body.len;
        f->last_body_nul = r->body.data && r->body.data[r->body.len] == 0;
        snprintf(f->last_body, sizeof(f->last_body), "%.*s", (int) r->body.len, strempty(r->body.data));
        f->last_keep_alive = r->keep_alive;
        f->last_minor = r->http_minor;

        switch (f->mode) {
        case MODE_ECHO: {
                int n = snprintf(out, sizeof(out), "%s %s %s", r->method, r->url, f->last_body);
                assert_int_equal(kb_conn_respond(c, 200, NULL, 0, out, (size_t) n), 0);
                break;
        }
        case MODE_HOLD:
                assert_true(f->n_held < 4);
                f->held[f->n_held++] = c;
                kb_conn_set_handler(c, &hold_handler, f);
                break;
        case MODE_STREAM: {
                static const struct kb_http_header h[] = { { "X-A", "b" } };
                assert_int_equal(kb_conn_begin(c, 200, h, 1), 0);
                assert_int_equal(kb_conn_write(c, "hello", 5), 0);
                assert_int_equal(kb_conn_write(c, "", 0), 0);
                assert_int_equal(kb_conn_write(c, " world", 6), 0);
                assert_int_equal(kb_conn_end(c), 0);
                break;
        }
        case MODE_BIG:
                kb_conn_set_handler(c, &big_handler, f);
                assert_int_equal(kb_conn_begin(c, 200, NULL, 0), 0);
                big_pump(c, f);
                f->n_writable--; /* that one was ours */
                break;
        case MODE_BADHDR: {
                static const struct kb_http_header h[] = {
                        { "X-Good", "1" },
                        { "X-Bad", "a\r\nInjected: 1" },
                        { "X-Bad2", "a\nInjected2: 1" },
                        { "Bad Name", "x" },
                        { "Content-Length", "99" },
                        { "Transfer-Encoding", "chunked" },
                        { "X-Tab", "a\tb" },
                };
                assert_int_equal(kb_conn_respond(c, 200, h, ELEMENTSOF(h), "hello", 5), 0);
                break;
        }
        case MODE_DOUBLE:
                f->misuse_rc[0] = kb_conn_write(c, "x", 1);
                assert_int_equal(kb_conn_respond(c, 204, NULL, 0, NULL, 0), 0);
                f->misuse_rc[1] = kb_conn_respond(c, 200, NULL, 0, NULL, 0);
                f->misuse_rc[2] = kb_conn_end(c);
                break;
        }
}

static const struct kb_http_ops ops = {
        .on_accept = on_accept,
        .on_request = on_request,
        .write_error = on_error,
        .on_close = on_close,
};
static const struct kb_http_ops ops_no_error = {
        .on_accept = on_accept,
        .on_request = on_request,
        .on_close = on_close,
};

/* ---- fixture and client helpers ---- */

static int setup(void **state) {
        struct fx *f = calloc(1, sizeof(*f));
        assert_non_null(f);
        kbt_mkdtemp(f->dir, sizeof(f->dir), "http");
        snprintf(f->path, sizeof(f->path), "%s/s.sock", f->dir);
        assert_int_equal(sd_event_new(&f->e), 0);
        FX = f;
        *state = f;
        return 0;
}

static int teardown(void **state) {
        struct fx *f = *state;
        kb_http_server_free(f->s);
        sd_event_unref(f->e);
        (void) kbt_rm_rf(f->dir);
        free(f);
        return 0;
}

static struct kb_http_limits test_limits(void) {
        return (struct kb_http_limits) {
                .max_header_bytes = 64 * 1024,
                .max_body = 1000,
                .header_timeout_usec = 5 * USEC_PER_SEC,
                .idle_timeout_usec = 5 * USEC_PER_SEC,
                .max_connections = 16,
        };
}

static void start(struct fx *f, const struct kb_http_limits *l) {
        struct kb_http_limits def = test_limits();
        int fd = kb_http_listen_unix(f->path, 0600);
        assert_true(fd >= 0);
        if (!l)
                l = &def;
        assert_int_equal(kb_http_server_new(f->e, fd, l, f->no_write_error ? &ops_no_error : &ops, f, &f->s), 0);
}

static void spin(struct fx *f, int ms) {
        kbt_run_for(f->e, (uint64_t) ms * USEC_PER_MSEC, 5 * USEC_PER_MSEC);
}

struct client {
        int fd;
        struct kb_buf in;
        bool eof, reset;
};

static void client_open(struct fx *f, struct client *cl) {
        memset(cl, 0, sizeof(*cl));
        cl->fd = kbt_unix_connect(f->path, SOCK_STREAM);
        assert_true(cl->fd >= 0);
        fcntl(cl->fd, F_SETFL, O_NONBLOCK);
        spin(f, 5);
}

static void client_close(struct client *cl) {
        if (cl->fd >= 0)
                close(cl->fd);
        cl->fd = -1;
        kb_buf_free(&cl->in);
}

/* Send everything, running the loop whenever the socket is full. */
static void client_send_n(struct fx *f, struct client *cl, const void *p, size_t n) {
        size_t off = 0;
        uint64_t end = kb_now_usec() + 5 * USEC_PER_SEC;
        while (off < n) {
                ssize_t k = send(cl->fd, (const char *) p + off, n - off, MSG_NOSIGNAL);
                if (k < 0) {
                        if (errno != EAGAIN)
                                return; /* the server closed on us: tests check what came back */
                        assert_true(kb_now_usec() < end);
                        sd_event_run(f->e, 5 * USEC_PER_MSEC);
                        continue;
                }
                off += (size_t) k;
        }
}

static void client_send(struct fx *f, struct client *cl, const char *s) {
        client_send_n(f, cl, s, strlen(s));
}

static void client_pull(struct client *cl) {
        char buf[65536];
        for (;;) {
                ssize_t n = recv(cl->fd, buf, sizeof(buf), MSG_DONTWAIT);
                if (n > 0) {
                        assert_int_equal(kb_buf_append(&cl->in, buf, (size_t) n), 0);
                        continue;
                }
                if (n == 0)
                        cl->eof = true;
                else if (errno == ECONNRESET)
                        cl->reset = cl->eof = true;
                return;
        }
}

struct resp {
        int status;
        char head[2048];
        char body[BIG_TOTAL / 1024 + 4096];
        size_t body_len;        /* the whole length, even past what body holds */
        size_t raw_len;
};

/* One complete response from the front of cl->in, or false. */
static bool parse_resp(struct client *cl, struct resp *r) {
        const char *d = cl->in.data;
        if (!d)
                return false;
        const char *e = strstr(d, "\r\n\r\n");
        if (!e)
                return false;
        size_t hl = (size_t) (e - d) + 4;
        memset(r, 0, sizeof(*r));
        snprintf(r->head, sizeof(r->head), "%.*s", (int) hl, d);
        r->status = atoi(d + 9);
        const char *p = d + hl, *end = d + cl->in.len;
        const char *cl_h = strcasestr(r->head, "\r\nContent-Length: ");
        if (r->status == 100) {
                r->raw_len = hl;
        } else if (cl_h) {
                size_t n = strtoul(cl_h + 18, NULL, 10);
                if (strncmp(d, "HEAD", 4) == 0 || (size_t) (end - p) < n)
                        return false;
                memcpy(r->body, p, MIN(n, sizeof(r->body) - 1));
                r->body_len = n;
                r->raw_len = hl + n;
        } else if (strcasestr(r->head, "\r\nTransfer-Encoding: chunked")) {
                for (;;) {
                        char *q;
                        const char *nl = memmem(p, (size_t) (end - p), "\r\n", 2);
                        if (!nl)
                                return false;
                        size_t n = strtoul(p, &q, 16);
                        if ((size_t) (end - nl) < 2 + n + 2)
                                return false;
                        if (r->body_len + n < sizeof(r->body))
                                memcpy(r->body + r->body_len, nl + 2, n);
                        r->body_len += n;
                        p = nl + 2 + n + 2;
                        if (n == 0)
                                break;
                }
                r->raw_len = (size_t) (p - d);
        } else {
                if (!cl->eof)
                        return false;
                r->body_len = (size_t) (end - p);
                memcpy(r->body, p, MIN(r->body_len, sizeof(r->body) - 1));
                r->raw_len = cl->in.len;
        }
        return true;
}

static bool read_resp_raw(struct fx *f, struct client *cl, struct resp *r, int ms) {
        uint64_t end = kb_now_usec() + (uint64_t) ms * USEC_PER_MSEC;
        for (;;) {
                client_pull(cl);
                if (parse_resp(cl, r)) {
                        kb_buf_consume(&cl->in, r->raw_len);
                        return true;
                }
                if (cl->eof || kb_now_usec() >= end)
                        return false;
                sd_event_run(f->e, 2 * USEC_PER_MSEC);
        }
}

static void read_resp(struct fx *f, struct client *cl, struct resp *r) {
        if (!read_resp_raw(f, cl, r, 3000))
                fail_msg("no complete response; got %zu bytes: %.200s", cl->in.len, strempty(cl->in.data));
}

static bool wait_eof(struct fx *f, struct client *cl, int ms) {
        uint64_t end = kb_now_usec() + (uint64_t) ms * USEC_PER_MSEC;
        while (!cl->eof && kb_now_usec() < end) {
                client_pull(cl);
                sd_event_run(f->e, 2 * USEC_PER_MSEC);
        }
        return cl->eof;
}

#define wait_for(f, cond)                                                                       \
        do {                                                                                    \
                (void) kbt_run_until((f)->e, cond, 3 * USEC_PER_SEC, 2 * USEC_PER_MSEC);       \
                assert_true(cond);                                                              \
        } while (0)

static void expect_error(struct fx *f, const char *req, int status, const char *code, const char *msg_part) {
        struct client cl;
        struct resp r;

        client_open(f, &cl);
        client_send(f, &cl, req);
        read_resp(f, &cl, &r);
        if (r.status != status)
                fail_msg("request %.60s: status %d, want %d (%s)", req, r.status, status, r.head);
        assert_non_null(strstr(r.head, "Connection: close"));
        assert_non_null(strstr(r.body, code));
        if (msg_part && !strstr(f->err_msg, msg_part))
                fail_msg("request %.60s: message '%s' lacks '%s'", req, f->err_msg, msg_part);
        assert_true(wait_eof(f, &cl, 3000));
        client_close(&cl);
        wait_for(f, kb_http_server_n_connections(f->s) == 0 && f->s->n_lingering == 0);
}

/* ---- tests ---- */

static void test_get_keepalive(void **state) {
        struct fx *f = *state;
        struct client cl;
        struct resp r;

        start(f, NULL);
        client_open(f, &cl);
        client_send(f, &cl, "GET /v1/models?x=1 HTTP/1.1\r\nHost: a.b\r\n\r\n");
        read_resp(f, &cl, &r);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "GET /v1/models?x=1 ");
        assert_null(strstr(r.head, "Connection:"));
        assert_non_null(strstr(r.head, "HTTP/1.1 200 OK\r\n"));
        assert_string_equal(f->last_path, "/v1/models");
        assert_string_equal(f->last_host, "a.b");
        assert_true(f->last_keep_alive);
        assert_int_equal(f->last_minor, 1);
        assert_true(f->last_body_nul);

        client_send(f, &cl, "DELETE /b HTTP/1.1\r\n\r\n");
        read_resp(f, &cl, &r);
        assert_string_equal(r.body, "DELETE /b ");
        assert_int_equal(f->n_accept, 1);
        assert_int_equal(kb_http_server_n_connections(f->s), 1);
        assert_int_equal(kb_http_server_n_busy(f->s), 0);
        /* idle conns hold no request storage and a small struct */
        assert_null(f->s->conns->req);
        assert_null(f->s->conns->out.data);
        assert_true(sizeof(struct kb_conn) < 1024);

        client_close(&cl);
        wait_for(f, f->n_close == 1);
        assert_int_equal(kb_http_server_n_connections(f->s), 0);
}

static void test_post_and_chunked_body(void **state) {
        struct fx *f = *state;
        struct client cl;
        struct resp r;

        start(f, NULL);
        client_open(f, &cl);
        client_send(f, &cl, "POST /p HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world");
        read_resp(f, &cl, &r);
        assert_string_equal(r.body, "POST /p hello world");
        assert_int_equal(f->last_body_len, 11);

        client_send(f, &cl, "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n"
                            "0\r\nX-Trailer: t\r\n\r\n");
        read_resp(f, &cl, &r);
        assert_string_equal(r.body, "POST /c hello world");
        assert_true(f->last_body_nul);

        /* empty body: still a NUL-terminated buffer */
        client_send(f, &cl, "POST /e HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        read_resp(f, &cl, &r);
        assert_int_equal(f->last_body_len, 0);
        assert_true(f->last_body_nul);
        client_close(&cl);
}

/* Pieces of URL, names and values arrive across reads: split at every byte. */
static void test_split_every_byte(void **state) {
        struct fx *f = *state;
        struct client cl;
        struct resp r;
        const char *req = "PUT /a/b?q=1 HTTP/1.1\r\nHost:  h.example \r\nX-Long-Name: v a l\r\n"
                          "Content-Length: 4\r\n\r\nbody";

        start(f, NULL);
        client_open(f, &cl);
        for (size_t i = 0; req[i]; i++) {
                client_send_n(f, &cl, req + i, 1);
                spin(f, 1);
        }
        read_resp(f, &cl, &r);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "PUT /a/b?q=1 body");
        assert_string_equal(f->last_host, "h.example");
        client_close(&cl);
}

static void defer_answer(struct fx *f, int i, const char *body);

static int on_defer(sd_event_source *s, uint64_t usec, void *ud) {
        struct fx *f = ud;
        defer_answer(f, 0, "first");
        return 0;
}

static void defer_answer(struct fx *f, int i, const char *body) {
        assert_int_equal(kb_conn_respond(f->held[i], 200, NULL, 0, body, strlen(body)), 0);
}

static void test_pipelining_in_order(void **state) {
        struct fx *f = *state;
        struct client cl;
        struct resp r;

        start(f, NULL);
        f->mode = MODE_HOLD;
        client_open(f, &cl);
        client_send(f, &cl, "GET /one HTTP/1.1\r\n\r\nGET /two HTTP/1.1\r\n\r\nGET /thr");
        spin(f, 50);
        assert_int_equal(f->n_request, 1);      /* the 2nd waits for the 1st's answer */
        assert_int_equal(kb_http_server_n_busy(f->s), 1);
        client_pull(&cl);
        assert_int_equal(cl.in.len, 0);

        assert_int_equal(sd_event_add_time_relative(f->e, NULL, CLOCK_MONOTONIC, 0, 0, on_defer, f), 0);
        wait_for(f, f->n_request == 2);
        assert_string_equal(f->paths[1], "/two");
        read_resp(f, &cl, &r);
        assert_string_equal(r.body, "first");

        client_send(f, &cl, "ee HTTP/1.1\r\n\r\n");
        spin(f, 20);
        assert_int_equal(f->n_request, 2);
        defer_answer(f, 1, "second");
        wait_for(f, f->n_request == 3);
        assert_string_equal(f->paths[2], "/three");
        defer_answer(f, 2, "third");
        read_resp(f, &cl, &r);
        assert_string_equal(r.body, "second");
        read_resp(f, &cl, &r);
        assert_string_equal(r.body, "third");

        /* synchronous answers: many pipelined requests in one write */
        f->mode = MODE_ECHO;
        char buf[4096] = "";
        for (int i = 0; i < 50; i++)
                strcat(buf, "GET /p HTTP/1.1\r\n\r\n");
        client_send(f, &cl, buf);
        for (int i = 0; i < 50; i++) {
                read_resp(f, &cl, &r);
                assert_string_equal(r.body, "GET /p ");
        }
        client_close(&cl);
}

static void test_header_too_large(void **state) {
        struct fx *f = *state;
        struct client cl;
        struct resp r;

        start(f, NULL);
        client_open(f, &cl);
        client_send(f, &cl, "GET /big HTTP/1.1\r\nX-Big: ");
        char *big = malloc(70000);
        memset(big, 'a', 70000);
        client_send_n(f, &cl, big, 70000);
        free(big);
        client_send(f, &cl, "\r\n\r\n");
        read_resp(f, &cl, &r);
        assert_int_equal(r.status, 431);
        assert_non_null(strstr(r.head, "431 Request Header Fields Too Large"));
        assert_string_equal(f->err_code, "request_too_large");
        assert_string_equal(f->err_msg, "request headers exceed 65536 bytes");
        assert_string_equal(f->err_path, "/big");
        assert_true(wait_eof(f, &cl, 3000));
        assert_false(cl.reset);
        client_close(&cl);

        /* many small header lines count too */
        struct kb_buf b = {};
        kb_buf_append(&b, "GET / HTTP/1.1\r\n", 16);
        for (int i = 0; i < 2000; i++)
                kb_buf_appendf(&b, "X-%d: 1\r\n", i);
        kb_buf_append(&b, "\r\n", 2);
        expect_error(f, b.data, 431, "request_too_large", "header lines");
        kb_buf_free(&b);
}

static void test_body_too_large(void **state) {
        struct fx *f = *state;
        struct client cl;
        struct resp r;

        start(f, NULL);
        /* refused from Content-Length alone, before any body byte */
        client_open(f, &cl);
        client_send(f, &cl, "POST /up HTTP/1.1\r\nContent-Length: 1001\r\n\r\n");
        read_resp(f, &cl, &r);
        assert_int_equal(r.status, 413);
        assert_string_equal(f->err_code, "request_too_large");
        assert_string_equal(f->err_path, "/up");
        assert_int_equal(f->n_request, 0);
        assert_true(wait_eof(f, &cl, 3000));
        client_close(&cl);

        /* chunked: the running total */
        client_open(f, &cl);
        client_send(f, &cl, "POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        char chunk[600];
        memset(chunk, 'b', sizeof(chunk));
        client_send(f, &cl, "258\r\n");
        client_send_n(f, &cl, chunk, sizeof(chunk));
        client_send(f, &cl, "\r\n258\r\n");
        client_send_n(f, &cl, chunk, sizeof(chunk));
        read_resp(f, &cl, &r);
        assert_int_equal(r.status, 413);
        assert_int_equal(f->n_request, 0);
        assert_true(wait_eof(f, &cl, 3000));
        client_close(&cl);

        /* exactly at the limit is fine */
        client_open(f, &cl);
        client_send(f, &cl, "POST /up HTTP/1.1\r\nContent-Length: 1000\r\n\r\n");
        char body[1000];
        memset(body, 'c', sizeof(body));
        client_send_n(f, &cl, body, sizeof(body));
        read_resp(f, &cl, &r);
        assert_int_equal(r.status, 200);
        assert_int_equal(f->last_body_len, 1000);
        client_close(&cl);
}

static void test_bad_requests(void **state) {
        struct fx *f = *state;
        static const struct {
                const char *req, *msg;
        } bad[] = {
                { "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc", "Transfer-Encoding" },
                { "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc", "Transfer-Encoding" },
                { "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", "Duplicate" },
                { "POST / HTTP/1.1\r\nContent-Length: 3x\r\n\r\nabc", "HPE_" },
                { "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "HPE_" },
                { "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "HPE_INVALID_CHUNK_SIZE" },
                { "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "HPE_INVALID_TRANSFER_ENCODING" },
                { "GET / HTTP/1.1\r\nX-A: b\r\n folded\r\n\r\n", "folding" },
                { "GET / HTTP/1.1\nHost: x\n\n", "HPE_" },
                { "GET / HTTP/1.1\r\nHost: x\n\r\n", "HPE_" },
                { "G@T / HTTP/1.1\r\n\r\n", "HPE_INVALID_METHOD" },
                { "GET /a b HTTP/1.1\r\n\r\n", "HPE_" },
                { "GET / HTTP/9.9\r\n\r\n", "HPE_" },
                { "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", "header name" },
                { "GET / HTTP/1.1\r\nHost : x\r\n\r\n", "header name" },
                { "GET / HTTP/1.1\r\nH@st: x\r\n\r\n", "HPE_INVALID_HEADER_TOKEN" },
                { "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nBad Trailer: x\r\n\r\n",
                  "header name" },
                { "GET / HTTP/1.1\r\nX: a\001b\r\n\r\n", "HPE_" },
                { "CONNECT example.com:443 HTTP/1.1\r\n\r\n", "CONNECT" },
                { "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n", "upgrade" },
                { "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "HPE_" },
        };

        start(f, NULL);
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                f->n_error = 0;
                expect_error(f, bad[i].req, 400, "invalid_request", bad[i].msg);
                assert_int_equal(f->n_error, 1);
                assert_int_equal(f->err_status, 400);
        }
        assert_int_equal(f->n_request, 0);
        assert_int_equal(f->n_close, (int) ELEMENTSOF(bad));
}

static void test_timeouts(void **state) {
        struct fx *f = *state;
        struct kb_http_limits l = test_limits();
        struct client cl;
        struct resp r;

        l.header_timeout_usec = 100 * USEC_PER_MSEC;
        l.idle_timeout_usec = 150 * USEC_PER_MSEC;
        start(f, &l);

        /* headers never finish */
        client_open(f, &cl);
        uint64_t t0 = kb_now_usec();
        client_send(f, &cl, "GET /slow HTTP/1.1\r\nHost: x\r\n");
        read_resp(f, &cl, &r);
        assert_int_equal(r.status, 408);
        assert_string_equal(f->err_code, "request_timeout");
        assert_true(kb_now_usec() - t0 >= 90 * USEC_PER_MSEC);
        assert_true(wait_eof(f, &cl, 3000));
        client_close(&cl);

        /* a body that stalls; trickling bytes keep the headers' clock running */
        client_open(f, &cl);
        client_send(f, &cl, "POST /b HTTP/1.1\r\nContent-Length: 10\r\n\r\n");
        for (int i = 0; i < 6; i++) {
                spin(f, 25);
                client_send(f, &cl, "x");
        }
        assert_int_equal(f->n_error, 1);
        read_resp(f, &cl, &r);
        assert_int_equal(r.status, 408);
        assert_non_null(strstr(f->err_msg, "body"));
        client_close(&cl);

        /* idle keep-alive: closed without a word */
        client_open(f, &cl);
        client_send(f, &cl, "GET / HTTP/1.1\r\n\r\n");
        read_resp(f, &cl, &r);
        assert_int_equal(r.status, 200);
        int closes = f->n_close;
        assert_true(wait_eof(f, &cl, 2000));
        assert_int_equal(cl.in.len, 0);
        assert_int_equal(f->n_close, closes + 1);
        assert_int_equal(f->n_error, 2);
        client_close(&cl);
}

static void test_connection_cap(void **state) {
        struct fx *f = *state;
        struct kb_http_limits l = test_limits();
        struct client a, b, c, d;
        struct resp r;

        l.max_connections = 2;
        start(f, &l);
        client_open(f, &a);
        client_open(f, &b);
        wait_for(f, kb_http_server_n_connections(f->s) == 2);
        client_open(f, &c);
        read_resp(f, &c, &r);
        assert_int_equal(r.status, 503);
        assert_string_equal(f->err_code, "too_many_connections");
        assert_true(f->err_path_null);
        assert_true(wait_eof(f, &c, 3000));
        assert_int_equal(f->n_accept, 2); /* never offered to on_accept */
        client_close(&c);
        wait_for(f, f->s->n_lingering == 0);
        assert_int_equal(kb_http_server_n_connections(f->s), 2);
        assert_int_equal(f->n_close, 0);

        client_close(&a);
        wait_for(f, kb_http_server_n_connections(f->s) == 1);
        client_open(f, &d);
        client_send(f, &d, "GET /d HTTP/1.1\r\n\r\n");
        read_resp(f, &d, &r);
        assert_int_equal(r.status, 200);
        client_send(f, &b, "GET /b HTTP/1.1\r\n\r\n");
        read_resp(f, &b, &r);
        assert_int_equal(r.status, 200);
        client_close(&b);
        client_close(&d);
}

/* A refused connection whose request line comes after the accept is
 * answered once its path is known, in that path's shape; the message names
 * the cap. */
static void test_refusal_waits_for_path(void **state) {
        struct fx *f = *state;
        struct kb_http_limits l = test_limits();
        struct client a, c;
        struct resp r;

        l.max_connections = 1;
        start(f, &l);
        client_open(f, &a);
        wait_for(f, kb_http_server_n_connections(f->s) == 1);
        client_open(f, &c);
        wait_for(f, f->s->n_lingering == 1);
        for (int i = 0; i < 5; i++)
                sd_event_run(f->e, 2 * USEC_PER_MSEC);
        assert_int_equal(f->n_error, 0); /* not answered yet: no path */
        client_send(f, &c, "POST /v1/messages?beta=true HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}");
        read_resp(f, &c, &r);
        assert_int_equal(r.status, 503);
        assert_string_equal(f->err_code, "too_many_connections");
        assert_string_equal(f->err_path, "/v1/messages");
        assert_string_equal(f->err_msg, "too many connections: max_connections = 1 reached");
        assert_true(wait_eof(f, &c, 3000));
        struct kb_http_server_stats st;
        kb_http_server_get_stats(f->s, &st);
        assert_int_equal(st.refused[KB_HTTP_REFUSED_CAP], 1);
        assert_int_equal(st.connections, 1);
        client_close(&c);
        client_close(&a);
}

static void test_refused_by_on_accept(void **state) {
        struct fx *f = *state;
        struct client cl;
        struct resp r;

        start(f, NULL);
        f->refuse = true;
        client_open(f, &cl);
        read_resp(f, &cl, &r);
        assert_int_equal(r.status, 503);
        assert_string_equal(f->err_code, "too_many_connections");
        assert_true(wait_eof(f, &cl, 3000));
        client_close(&cl);
        wait_for(f, f->s->n_lingering == 0);
        assert_int_equal(f->n_close, 0);   /* on_accept refused: no on_close */
        assert_int_equal(kb_http_server_n_connections(f->s), 0);
}

static void test_chunked_response_exact(void **state) {
        struct fx *f = *state;
        struct client cl;

        start(f, NULL);
        f->mode = MODE_STREAM;
        client_open(f, &cl);
        client_send(f, &cl, "GET / HTTP/1.1\r\n\r\n");
        const char *want = "HTTP/1.1 200 OK\r\nX-A: b\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        uint64_t end = kb_now_usec() + 2 * USEC_PER_SEC;
        while (cl.in.len < strlen(want) && kb_now_usec() < end) {
                sd_event_run(f->e, 2 * USEC_PER_MSEC);
                client_pull(&cl);
        }
        assert_string_equal(cl.in.data, want);
        client_close(&cl);

        /* HTTP/1.0: no chunking, the end is the close */
        client_open(f, &cl);
        client_send(f, &cl, "GET / HTTP/1.0\r\n\r\n");
        assert_true(wait_eof(f, &cl, 3000));
        assert_string_equal(cl.in.data, "HTTP/1.1 200 OK\r\nX-A: b\r\nConnection: close\r\n\r\nhello world");
        client_close(&cl);
}

static void test_backpressure(void **state) {
        struct fx *f = *state;
        struct client cl;
        struct resp r;

        start(f, NULL);
        f->mode = MODE_BIG;
        client_open(f, &cl);
        client_send(f, &cl, "GET /big HTTP/1.1\r\n\r\n");
        spin(f, 50);
        assert_int_equal(f->n_request, 1);
        assert_int_equal(f->n_writable, 0);
        assert_true(f->big_sent < BIG_TOTAL);
        assert_true(kb_conn_pending(f->s->conns) > KB_CONN_LOW_WATER);

        read_resp(f, &cl, &r);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.body_len, BIG_TOTAL);
        assert_true(f->n_writable >= 1);
        assert_int_equal(kb_http_server_n_busy(f->s), 0);
        /* drained: the output buffer is released */
        spin(f, 10);
        assert_null(f->s->conns->out.data);
        client_close(&cl);
}

static void test_client_abort(void **state) {
        struct fx *f = *state;
        struct client cl;

        start(f, NULL);
        f->mode = MODE_HOLD;
        client_open(f, &cl);
        client_send(f, &cl, "GET /hold HTTP/1.1\r\n\r\n");
        wait_for(f, f->n_held == 1);
        struct kb_conn *c = f->held[0];
        assert_int_equal(kb_conn_begin(c, 200, NULL, 0), 0);
        assert_int_equal(kb_conn_write(c, "part", 4), 0);
        client_close(&cl);
        wait_for(f, f->n_abort == 1);
        assert_true(kb_conn_aborted(c));
        assert_int_equal(kb_conn_write(c, "more", 4), -EPIPE);
        assert_int_equal(kb_conn_respond(c, 200, NULL, 0, NULL, 0), -EPIPE);
        spin(f, 20);
        assert_int_equal(f->n_abort, 1);
        assert_int_equal(f->n_close, 0); /* still ours until kb_conn_end */
        assert_int_equal(kb_http_server_n_busy(f->s), 1);
        assert_int_equal(kb_conn_end(c), 0);
        wait_for(f, f->n_close == 1);
        assert_int_equal(kb_http_server_n_busy(f->s), 0);
        assert_int_equal(kb_http_server_n_connections(f->s), 0);
        assert_null(f->s->conns);
}

static void test_http10_and_close(void **state) {
        struct fx *f = *state;
        struct client cl;
        struct resp r;

        start(f, NULL);
        client_open(f, &cl);
        client_send(f, &cl, "GET /old HTTP/1.0\r\n\r\n");
        read_resp(f, &cl, &r);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.head, "Connection: close"));
        assert_false(f->last_keep_alive);
        assert_int_equal(f->last_minor, 0);
        assert_true(wait_eof(f, &cl, 3000));
        assert_false(cl.reset);
        client_close(&cl);

        client_open(f, &cl);
        client_send(f, &cl, "GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        read_resp(f, &cl, &r);
        assert_non_null(strstr(r.head, "Connection: keep-alive"));
        client_send(f, &cl, "GET /ka2 HTTP/1.1\r\nConnection: close\r\n\r\n");
        read_resp(f, &cl, &r);
        assert_string_equal(r.body, "GET /ka2 ");
        assert_non_null(strstr(r.head, "Connection: close"));
        assert_true(wait_eof(f, &cl, 3000));
        client_close(&cl);

        /* HEAD: length, no body */
        client_open(f, &cl);
        client_send(f, &cl, "HEAD /h HTTP/1.1\r\n\r\nGET /after HTTP/1.1\r\n\r\n");
        spin(f, 50);
        client_pull(&cl);
        assert_non_null(strstr(cl.in.data, "Content-Length: 8\r\n\r\nHTTP/1.1 200 OK"));
        client_close(&cl);
}

static void test_response_header_hygiene(void **state) {
        struct fx *f = *state;
        struct client cl;
        struct resp r;

        start(f, NULL);
        f->mode = MODE_BADHDR;
        client_open(f, &cl);
        client_send(f, &cl, "GET / HTTP/1.1\r\n\r\n");
        read_resp(f, &cl, &r);
        assert_string_equal(r.head, "HTTP/1.1 200 OK\r\nX-Good: 1\r\nX-Tab: a\tb\r\nContent-Length: 5\r\n\r\n");
        assert_string_equal(r.body, "hello");
        assert_null(strstr(r.head, "Injected"));

        f->mode = MODE_DOUBLE;
        client_send(f, &cl, "GET / HTTP/1.1\r\n\r\n");
        read_resp(f, &cl, &r);
        assert_int_equal(r.status, 204);
        assert_int_equal(f->misuse_rc[0], -EINVAL);
        assert_int_equal(f->misuse_rc[1], -EINVAL);
        assert_int_equal(f->misuse_rc[2], -EINVAL);
        client_close(&cl);
}

static void test_fallback_error_and_continue(void **state) {
        struct fx *f = *state;
        struct client cl;
        struct resp r;

        f->no_write_error = true;
        start(f, NULL);
        client_open(f, &cl);
        client_send(f, &cl, "GET / HTTP/1.1\r\nX: \"q\"\r\n folded\r\n\r\n");
        read_resp(f, &cl, &r);
        assert_int_equal(r.status, 400);
        assert_non_null(strstr(r.head, "Content-Type: application/json"));
        assert_non_null(strstr(r.body, "\"code\":\"invalid_request\""));
        assert_non_null(strstr(r.body, "{\"error\":{\"message\":\"invalid request: obsolete line folding"));
        client_close(&cl);

        /* Expect: 100-continue gets its interim answer before the body */
        client_open(f, &cl);
        client_send(f, &cl, "POST /e HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n");
        read_resp(f, &cl, &r);
        assert_int_equal(r.status, 100);
        client_send(f, &cl, "ok");
        read_resp(f, &cl, &r);
        assert_string_equal(r.body, "POST /e ok");
        client_close(&cl);
}

static void test_stop_accepting(void **state) {
        struct fx *f = *state;
        struct client idle, busy, late;
        struct resp r;

        start(f, NULL);
        f->mode = MODE_HOLD;
        client_open(f, &idle);
        client_open(f, &busy);
        client_send(f, &busy, "GET /b HTTP/1.1\r\n\r\n");
        wait_for(f, f->n_held == 1);
        kb_http_server_stop_accepting(f->s);
        assert_true(wait_eof(f, &idle, 2000));
        assert_int_equal(idle.in.len, 0);
        assert_int_equal(kb_http_server_n_connections(f->s), 1);

        late.fd = kbt_unix_connect(f->path, SOCK_STREAM); /* backlog */
        assert_true(late.fd >= 0);
        spin(f, 30);
        assert_int_equal(f->n_accept, 2);
        close(late.fd);

        defer_answer(f, 0, "bye");
        read_resp(f, &busy, &r);
        assert_non_null(strstr(r.head, "Connection: close"));
        assert_true(wait_eof(f, &busy, 3000));
        client_close(&idle);
        client_close(&busy);
        wait_for(f, f->s->conns == NULL);
}

/* Out of fds: the waiting connection is accepted through the reserve fd,
 * answered 503 broker_overloaded in its path's shape and closed; nothing
 * spins on a readable listener, and once fds are back, service resumes. */
static void test_emfile_shed(void **state) {
        struct fx *f = *state;
        struct client a, b, c;
        struct resp r;
        struct rlimit old, low;

        start(f, NULL);
        client_open(f, &a); /* the loop's timerfd exists from here on */
        client_send(f, &a, "GET / HTTP/1.1\r\n\r\n");
        read_resp(f, &a, &r);

        client_open(f, &b);
        assert_int_equal(f->n_accept, 2);
        client_close(&b);
        wait_for(f, f->n_close == 1);

        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f->path);
        /* the client end needs an fd too: make it before the squeeze */
        b = (struct client) {};
        b.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(b.fd >= 0);
        /* the next fd the kernel would hand out is then over the limit */
        int lowest = dup(0);
        assert_true(lowest >= 0);
        close(lowest);
        assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
        low = old;
        low.rlim_cur = (rlim_t) lowest;
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
        assert_int_equal(connect(b.fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        fcntl(b.fd, F_SETFL, O_NONBLOCK);
        client_send(f, &b, "GET /late HTTP/1.1\r\n\r\n");

        unsigned iterations = 0;
        uint64_t end = kb_now_usec() + 150 * USEC_PER_MSEC;
        while (kb_now_usec() < end) {
                assert_true(sd_event_run(f->e, 10 * USEC_PER_MSEC) >= 0);
                iterations++;
        }
        assert_int_equal(f->n_accept, 2); /* on_accept never saw it */
        assert_true(iterations < 60);      /* a spinning loop does thousands */
        read_resp(f, &b, &r);
        assert_int_equal(r.status, 503);
        assert_string_equal(f->err_code, "broker_overloaded");
        assert_true(strstr(f->err_msg, "out of file descriptors") != NULL);
        assert_string_equal(f->err_path, "/late");
        assert_true(wait_eof(f, &b, 3000));
        struct kb_http_server_stats st;
        kb_http_server_get_stats(f->s, &st);
        assert_int_equal(st.refused[KB_HTTP_REFUSED_FDS], 1);

        assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
        client_open(f, &c);
        client_send(f, &c, "GET /again HTTP/1.1\r\n\r\n");
        read_resp(f, &c, &r);
        assert_string_equal(r.body, "GET /again ");
        client_close(&a);
        client_close(&b);
        client_close(&c);
}

static void test_listen_unix(void **state) {
        struct fx *f = *state;
        struct stat st;
        char p[256];

        int fd = kb_http_listen_unix(f->path, 0640);
        assert_true(fd >= 0);
        assert_int_equal(stat(f->path, &st), 0);
        assert_true(S_ISSOCK(st.st_mode));
        assert_int_equal(st.st_mode & 07777, 0640);
        assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
        assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);

        /* someone is listening: not stale */
        assert_int_equal(kb_http_listen_unix(f->path, 0600), -EADDRINUSE);
        close(fd);

        /* stale socket file: replaced */
        fd = kb_http_listen_unix(f->path, 0666);
        assert_true(fd >= 0);
        assert_int_equal(stat(f->path, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0666);
        close(fd);

        /* a regular file is never removed */
        unlink(f->path);
        int rf = open(f->path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        assert_true(rf >= 0);
        close(rf);
        assert_int_equal(kb_http_listen_unix(f->path, 0600), -EEXIST);
        assert_int_equal(stat(f->path, &st), 0);
        assert_true(S_ISREG(st.st_mode));
        unlink(f->path);

        memset(p, 'a', sizeof(p));
        p[0] = '/';
        p[sizeof(p) - 1] = 0;
        assert_int_equal(kb_http_listen_unix(p, 0600), -ENAMETOOLONG);
        assert_int_equal(kb_http_listen_unix("", 0600), -EINVAL);

        /* a blocking fd (as socket activation may pass) is made non-blocking */
        fd = kb_http_listen_unix(f->path, 0600);
        assert_true(fd >= 0);
        fcntl(fd, F_SETFL, 0);
        assert_int_equal(kb_http_server_new(f->e, fd, NULL, &ops, f, &f->s), 0);
        assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
        assert_int_equal(f->s->limits.max_header_bytes, 64 * 1024);
        assert_int_equal(kb_http_server_new(NULL, fd, NULL, &ops, f, &f->s), -EINVAL);
}

static void test_misc(void **state) {
        struct kb_http_header h[] = { { "Content-Type", "a" }, { "x-KEY", "b" } };
        struct kb_http_request r = { .headers = h, .n_headers = 2 };

        assert_string_equal(kb_http_request_header(&r, "content-type"), "a");
        assert_string_equal(kb_http_request_header(&r, "X-Key"), "b");
        assert_null(kb_http_request_header(&r, "X-Keys"));
        assert_null(kb_http_request_header(NULL, "a"));
        assert_string_equal(kb_http_status_reason(529), "Site Overloaded");
        assert_string_equal(kb_http_status_reason(431), "Request Header Fields Too Large");
        assert_string_equal(kb_http_status_reason(599), "Server Error");
        assert_int_equal(kb_conn_respond(NULL, 200, NULL, 0, NULL, 0), -EINVAL);
        assert_int_equal(kb_conn_end(NULL), -EINVAL);
        assert_int_equal(kb_conn_pending(NULL), 0);
        assert_null(kb_http_server_free(NULL));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_get_keepalive, setup, teardown),
                cmocka_unit_test_setup_teardown(test_post_and_chunked_body, setup, teardown),
                cmocka_unit_test_setup_teardown(test_split_every_byte, setup, teardown),
                cmocka_unit_test_setup_teardown(test_pipelining_in_order, setup, teardown),
                cmocka_unit_test_setup_teardown(test_header_too_large, setup, teardown),
                cmocka_unit_test_setup_teardown(test_body_too_large, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bad_requests, setup, teardown),
                cmocka_unit_test_setup_teardown(test_timeouts, setup, teardown),
                cmocka_unit_test_setup_teardown(test_connection_cap, setup, teardown),
                cmocka_unit_test_setup_teardown(test_refused_by_on_accept, setup, teardown),
                cmocka_unit_test_setup_teardown(test_chunked_response_exact, setup, teardown),
                cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
                cmocka_unit_test_setup_teardown(test_client_abort, setup, teardown),
                cmocka_unit_test_setup_teardown(test_http10_and_close, setup, teardown),
                cmocka_unit_test_setup_teardown(test_response_header_hygiene, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fallback_error_and_continue, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stop_accepting, setup, teardown),
                cmocka_unit_test_setup_teardown(test_emfile_shed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_refusal_waits_for_path, setup, teardown),
                cmocka_unit_test_setup_teardown(test_listen_unix, setup, teardown),
                cmocka_unit_test(test_misc),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
