/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 10 of 12, transport: calls layer 12. */

/* HTTP/1.1 server side on a listening AF_UNIX socket: accept, llhttp
 * parsing, limits, keep-alive, pipelining (one request answered at a time, in
 * order), the response writer (Content-Length or chunked) and backpressure.
 * Used for both the app socket and the admin socket; what a request means is
 * decided by the ops the owner passes in. Never logs. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "util.h"

struct kb_http_server;
struct kb_conn;

struct kb_http_header {
        const char *name;
        const char *value;
};

struct kb_http_request {
        const char *method;     /* "GET", "POST", … */
        const char *url;        /* request target as sent: path plus query */
        const char *path;       /* url without the query string */
        struct kb_http_header *headers; /* in arrival order; names as sent */
        size_t n_headers;
        struct kb_buf body;     /* de-chunked body, NUL-terminated; empty when streamed */
        bool body_streamed;     /* the body comes after on_request: kb_conn_body_read() */
        int64_t content_length; /* as announced; -1: chunked */
        bool keep_alive;        /* the client wants the connection kept */
        unsigned http_minor;    /* 0 or 1 */
        uint64_t start_usec;    /* CLOCK_MONOTONIC of the request's first byte */
};

/* First header with that name (case-insensitive), or NULL. */
const char *kb_http_request_header(const struct kb_http_request *r, const char *name);

struct kb_http_limits {
        size_t max_header_bytes;        /* request line + headers; beyond: 431. Default 64 KiB */
        uint64_t max_body;              /* beyond: 413 */
        uint64_t header_timeout_usec;   /* first byte -> end of headers, and any gap while reading a body: 408 + close */
        uint64_t idle_timeout_usec;     /* keep-alive idle connection closed silently after this */
        size_t max_connections;         /* beyond: 503 + close */
};

/* Why a connection was answered 503 and closed instead of being served. */
typedef enum kb_http_refusal {
        KB_HTTP_REFUSED_CAP,    /* max_connections reached */
        KB_HTTP_REFUSED_OWNER,  /* on_accept said no */
        KB_HTTP_REFUSED_FDS,    /* accept4() found no free fd (answered through the reserve fd) */
        _KB_HTTP_REFUSED_MAX,
} kb_http_refusal;

struct kb_http_ops {
        /* A new connection. Return 0 to serve it, or a negative errno to
         * refuse it: the server then answers 503 (via write_error; code and
         * message as set with kb_conn_set_refusal(), else
         * "too_many_connections") and closes. May call kb_conn_set_userdata. */
        int (*on_accept)(struct kb_conn *c, void *userdata);
        /* At the end of a request's headers: a limit > 0 has its body
         * streamed (on_request comes at once, the body is read with
         * kb_conn_body_read() as it arrives, at most the limit: beyond it
         * -EFBIG); 0 reads it whole first, within max_body. NULL: never. */
        uint64_t (*stream_body)(struct kb_conn *c, const struct kb_http_request *req, void *userdata);
        /* A complete request (headers and body). The handler must answer with
         * kb_conn_respond() or kb_conn_begin()/kb_conn_write()/kb_conn_end(),
         * now or later. req stays valid until the response is ended. */
        void (*on_request)(struct kb_conn *c, struct kb_http_request *req, void *userdata);
        /* The server itself rejects a request (400 bad request / smuggling,
         * 408, 413, 431, 503). path is the request path if it was parsed, else
         * NULL. The callback must answer with kb_conn_respond(); the server
         * closes the connection after it is written. */
        void (*write_error)(struct kb_conn *c, const char *path, int status, const char *code,
                            const char *message, void *userdata);
        /* The connection is going away (peer closed, error, timeout, server
         * freed); called once, before the conn's memory is released. Use it to
         * free the conn's userdata. Called for every connection whose
         * on_accept returned 0 (or all, when on_accept is NULL); not for one
         * that on_accept refused (on_accept cleans up after itself then) nor
         * one refused at the connection cap (on_accept never saw it). Never
         * called from inside a kb_conn_*() call: only from the event loop or
         * kb_http_server_stop_accepting()/kb_http_server_free(). */
        void (*on_close)(struct kb_conn *c, void *userdata);
        /* After each event the server handled for a connection, once it is
         * done with the connection: what the owner put off while inside the
         * callbacks above can run in the same loop pass. May be NULL. */
        void (*after_io)(void *userdata);
};

/* "OK", "Not Found", …; a generic phrase for codes without one. */
const char *kb_http_status_reason(int status);

/* Create and bind an AF_UNIX stream socket at path with its final mode from
 * the start (no window with wider permissions), replacing a stale socket
 * file. Returns the listening fd (non-blocking, CLOEXEC) or -errno:
 * -EEXIST if path is something other than a socket (never removed),
 * -EADDRINUSE if a live socket (one that accepts) is there,
 * -ENAMETOOLONG if path doesn't fit sun_path. */
int kb_http_listen_unix(const char *path, mode_t mode);

/* Takes ownership of listen_fd on success (closed by kb_http_server_free());
 * on failure it stays the caller's. The fd is made non-blocking (socket
 * activation hands them over blocking). limits may be NULL; zero fields mean
 * the defaults (64 KiB headers, 32 MiB body, 10 s header timeout, 60 s idle,
 * 1024 connections). The ops callbacks get the userdata given here. */
int kb_http_server_new(sd_event *e, int listen_fd, const struct kb_http_limits *limits,
                       const struct kb_http_ops *ops, void *userdata, struct kb_http_server **ret);
/* Closes every connection (on_close for each) and the listening source (not the fd's owner's file). */
struct kb_http_server *kb_http_server_free(struct kb_http_server *s);
void kb_http_server_set_limits(struct kb_http_server *s, const struct kb_http_limits *limits);
/* Stop accepting new connections (drain on SIGTERM); idle keep-alive
 * connections are closed, busy ones finish their current response. */
void kb_http_server_stop_accepting(struct kb_http_server *s);
size_t kb_http_server_n_connections(const struct kb_http_server *s);
struct kb_http_server_stats {
        size_t connections;     /* served, under max_connections */
        size_t refusing;        /* refused, being answered or drained */
        uint64_t refused[_KB_HTTP_REFUSED_MAX]; /* since start */
};
void kb_http_server_get_stats(const struct kb_http_server *s, struct kb_http_server_stats *ret);
/* From on_accept, before refusing: the 503's code and message. */
void kb_conn_set_refusal(struct kb_conn *c, const char *code, const char *message);
size_t kb_http_server_n_busy(const struct kb_http_server *s); /* connections with a request being answered */

int kb_conn_fd(const struct kb_conn *c);
void *kb_conn_get_userdata(const struct kb_conn *c);
void kb_conn_set_userdata(struct kb_conn *c, void *userdata);

/* A whole response with Content-Length. Adds Content-Length, and
 * Connection: close when the connection will close. Ends the response. */
int kb_conn_respond(struct kb_conn *c, int status, const struct kb_http_header *headers, size_t n_headers,
                    const void *body, size_t body_len);

/* A streamed response: status and headers now (Transfer-Encoding: chunked
 * for HTTP/1.1 clients, close-delimited for HTTP/1.0), body chunks with
 * kb_conn_write(), end with kb_conn_end(). */
int kb_conn_begin(struct kb_conn *c, int status, const struct kb_http_header *headers, size_t n_headers);
int kb_conn_write(struct kb_conn *c, const void *buf, size_t len);
/* Ends the response (terminating chunk). After this the request is gone and
 * the next pipelined request, if any, is dispatched. Also the way a handler
 * lets go of an aborted connection: after on_abort it must still call
 * kb_conn_end() (which then just releases). */
int kb_conn_end(struct kb_conn *c);

/* Abandon a response that cannot be completed (its upstream was cut after
 * part of a Content-Length or chunked body went out): flush what is queued,
 * then close without the terminating chunk, so the client sees a truncated
 * response, never a clean-looking end. kb_conn_end() is still required. */
void kb_conn_kill(struct kb_conn *c);

/* Bytes queued but not yet written to the socket. */
size_t kb_conn_pending(const struct kb_conn *c);
bool kb_conn_aborted(const struct kb_conn *c);

/* Above this many pending bytes a producer should pause; on_writable is
 * called once pending drops to KB_CONN_LOW_WATER or below. */
#define KB_CONN_HIGH_WATER (32u * 1024u)
#define KB_CONN_LOW_WATER (8u * 1024u)

struct kb_conn_handler {
        /* pending dropped to the low-water mark after having been above the high-water mark */
        void (*on_writable)(struct kb_conn *c, void *userdata);
        /* the peer went away (EOF, reset, error) while its request was being
         * answered; writes now fail with -EPIPE; kb_conn_end() still required */
        void (*on_abort)(struct kb_conn *c, void *userdata);
        /* a streamed body has more bytes, its end, or an error to read */
        void (*on_body)(struct kb_conn *c, void *userdata);
};

/* A streamed body's next bytes: the count (> 0); 0 at its end; -EAGAIN when
 * none is there yet (on_body says when); -EFBIG past the limit (answer 413),
 * -ETIMEDOUT when the app stalled longer than header_timeout, -EPIPE when it
 * went away. Reading from the app pauses while KB_CONN_BODY_HIGH bytes wait. */
#define KB_CONN_BODY_HIGH (256u * 1024u)
ssize_t kb_conn_body_read(struct kb_conn *c, void *buf, size_t len);
/* Per-request callbacks; reset to none when the response ends. */
void kb_conn_set_handler(struct kb_conn *c, const struct kb_conn_handler *h, void *userdata);
