/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 10 of 12, transport: calls layer 12. */

/* Internals shared by http.c (server, connection life cycle, I/O, timers),
 * http-parse.c (llhttp callbacks, request storage) and http-write.c (the
 * response writer). Not for other modules. */

#include <llhttp.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "http.h"
#include "ioset.h"

#define KB_HTTP_READ_BUF (16u * 1024u)         /* one read; also bounds the pipelining stash */
#define KB_HTTP_ACCEPT_BATCH 64                 /* accepts per wakeup, for fairness */
/* Refused connections waiting for their request line or draining input
 * before close; beyond this many a refusal is answered and closed at once. */
#define KB_HTTP_MAX_LINGERING 1024
/* How long a refused connection may take to send its request line (its
 * path picks the error's shape) before it is answered anyway. */
#define KB_HTTP_REFUSE_WAIT_USEC (1 * USEC_PER_SEC)
#define KB_HTTP_LINGER_USEC (2 * USEC_PER_SEC)
#define KB_HTTP_LINGER_BYTES (1024u * 1024u)
#define KB_HTTP_MAX_HEADERS 1024u               /* header lines per request */
#define KB_HTTP_OUT_KEEP (64u * 1024u)          /* output buffer capacity kept after it drains */
#define KB_HTTP_EMFILE_RETRY_USEC (100 * USEC_PER_MSEC)
/* A response's writes are gathered and sent once per loop iteration (or at
 * its end), so a JSON answer is one send() rather than head, chunk and
 * terminator apart; beyond this much pending it is sent at once. */
#define KB_HTTP_FLUSH_NOW (16u * 1024u)
/* Connection timeouts are seconds long: a wide coalescing window lets
 * sd-event keep its timerfd programmed while connections re-arm on every
 * request (reprogramming it per request cost a fifth of the loop's time). */
#define KB_HTTP_TIMER_ACCURACY_USEC (250 * USEC_PER_MSEC)

#define KB_HTTP_DEFAULT_MAX_HEADER_BYTES (64u * 1024u)
#define KB_HTTP_DEFAULT_MAX_BODY (UINT64_C(32) * 1024 * 1024)
#define KB_HTTP_DEFAULT_HEADER_TIMEOUT_USEC (10 * USEC_PER_SEC)
#define KB_HTTP_DEFAULT_IDLE_TIMEOUT_USEC (60 * USEC_PER_SEC)
#define KB_HTTP_DEFAULT_MAX_CONNECTIONS 1024u

typedef enum conn_state {
        CONN_IDLE,      /* between requests; may hold stashed pipelined bytes */
        CONN_READING,   /* a request's bytes are arriving */
        CONN_BUSY,      /* a complete request is with the handler */
        CONN_CLOSING,   /* the last response is flushing; then shut down */
        CONN_LINGER,    /* write side shut; discarding input until EOF or timeout */
} conn_state;

struct kb_hdr_ref {
        size_t name;            /* offsets into kb_http_req.strs */
        size_t value;
};

/* One request's storage: allocated at its first byte, freed when its
 * response ends, so an idle keep-alive connection holds none of it. */
struct kb_http_req {
        struct kb_http_request pub;
        struct kb_buf strs;     /* "url\0path\0name\0value\0…" */
        struct kb_hdr_ref *refs;
        size_t n_refs;
        size_t cap_refs;
        size_t path_off;
        size_t header_bytes;
        unsigned value_gen;     /* llhttp_execute() call of the last value piece */
        bool value_at_end;      /* the last value piece ended its buffer */
        bool value_started;
        bool field_open;
        bool url_done;
        bool headers_done;
        /* a streamed body (ops->stream_body): bytes wait in bq from bq_off */
        bool streaming;
        bool body_done;         /* its end was parsed */
        int body_error;         /* -EFBIG, -ETIMEDOUT, -EPIPE */
        uint64_t stream_max;
        uint64_t stream_seen;
        struct kb_buf bq;
        size_t bq_off;
};

struct kb_conn {
        struct kb_http_server *server;
        struct kb_conn *prev, *next;
        unsigned n_ref;
        int fd;
        struct kb_io *io;               /* in the server's ioset */
        sd_event_source *timer;
        uint32_t io_events;
        conn_state state;

        llhttp_t parser;
        struct kb_http_req *req;
        unsigned exec_gen;
        const char *exec_start, *exec_end;
        uint64_t exec_usec;

        /* Unparsed bytes that followed a complete request in the same read. */
        char *stash;
        size_t stash_len;
        size_t stash_off;
        uint64_t stash_usec;

        struct kb_buf out;
        size_t out_off;
        /* On the server's list of connections with output to send before
         * the loop sleeps (kb_conn_schedule_flush); holds a reference. */
        struct kb_conn *dirty_prev, *dirty_next;

        uint64_t last_activity; /* last read, or last write progress */
        uint64_t deadline;      /* CONN_CLOSING / CONN_LINGER */
        uint64_t linger_bytes;

        int reject_status;      /* set by a parser callback that hit a limit */
        const char *reject_code;
        char reject_msg[96];
        /* A refused connection: answered 503 with this as soon as its path
         * is known (or KB_HTTP_REFUSE_WAIT_USEC passed). */
        const char *refuse_code;
        char refuse_msg[128];

        const struct kb_conn_handler *handler;
        void *handler_userdata;
        void *userdata;

        bool counted:1;         /* in server->n_connections */
        bool lingering:1;       /* in server->n_lingering */
        bool accepted:1;        /* on_accept said yes: on_close is due */
        bool finalized:1;
        bool aborted:1;
        bool abort_notify:1;
        bool abort_notified:1;
        bool writable_notify:1;
        bool above_high:1;
        bool kick:1;
        bool processing:1;
        bool req_ready:1;
        bool keep_alive:1;
        bool close_after:1;
        bool peer_eof:1;
        bool rejected:1;
        bool refusing:1;        /* refused; waiting for the request line until deadline */
        bool in_write_error:1;
        bool responded:1;
        bool chunked:1;
        bool head:1;
        bool killed:1;          /* kb_conn_kill(): no terminating chunk, close after flush */
        bool dirty:1;
        /* EPOLLIN fired while a request was with the handler: only then is
         * reading switched off (usually the app waits for its answer, and
         * the two epoll_ctl() calls per request are saved). */
        bool busy_in_hit:1;
        bool body_notify:1;     /* on_body is due (from the timer) */
        bool end_paused:1;      /* a streamed body's end paused the parser */
};

struct kb_http_server {
        sd_event *event;
        int listen_fd;
        sd_event_source *listen_source;
        struct kb_ioset *ioset;         /* the connections' sockets */
        sd_event_source *retry_timer;
        struct kb_http_limits limits;
        const struct kb_http_ops *ops;
        void *userdata;
        struct kb_conn *conns;
        struct kb_conn *dirty;          /* kb_conn_schedule_flush() */
        sd_event_source *flush_defer;
        size_t n_connections;
        size_t n_lingering;
        int reserve_fd;         /* given up to accept and answer one connection when out of fds */
        uint64_t n_refused[_KB_HTTP_REFUSED_MAX];
        size_t n_busy;
        bool stopping;
        bool rdhup_is_abort;    /* half-close means gone (TCP); on AF_UNIX only HUP does */
};

/* RFC 9110 token character (header names, methods) */
static inline bool kb_http_is_tchar(unsigned char ch) {
        return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
               (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* http-parse.c */
extern const llhttp_settings_t kb_http_parser_settings;
struct kb_http_req *kb_http_req_free(struct kb_http_req *r);
void kb_conn_parser_init(struct kb_conn *c);
/* Feed bytes to llhttp: returns how many were consumed. On a complete
 * request sets c->req_ready; on a bad request calls kb_conn_reject(). */
size_t kb_conn_parse(struct kb_conn *c, const char *data, size_t len, uint64_t now);

/* http-write.c */
int kb_conn_out_append(struct kb_conn *c, const void *p, size_t n);
int kb_conn_flush(struct kb_conn *c);
size_t kb_conn_out_pending(const struct kb_conn *c);
void kb_conn_write_fallback_error(struct kb_conn *c, int status, const char *code, const char *message);

/* http-refuse.c */
/* A connection the server or its owner refused: answered 503 in the shape
 * its path asks for, now if its request line is already here, else once it
 * arrives or KB_HTTP_REFUSE_WAIT_USEC passed; at once (and closed) when
 * KB_HTTP_MAX_LINGERING refusals are already pending. */
void kb_conn_refuse(struct kb_conn *c, kb_http_refusal why);
/* accept4() failed with EMFILE/ENFILE: give up the reserve fd to accept
 * one connection, answer it 503 broker_overloaded, close it, take the
 * reserve back. false when nothing could be accepted that way. */
bool kb_http_server_shed(struct kb_http_server *s, int error);
/* The refused connection's request line is here, or its wait is over. */
void kb_conn_refusal_due(struct kb_conn *c);

/* http-listen.c: the listening socket's io callback (accept). */
int kb_http_server_on_listen(sd_event_source *src, int fd, uint32_t revents, void *userdata);

/* http.c */
void kb_conn_reject_path(struct kb_conn *c, const char *path, int status, const char *code, const char *message);
int kb_conn_new(struct kb_http_server *s, int fd, struct kb_conn **ret);
void kb_conn_ref(struct kb_conn *c);
void kb_conn_unref(struct kb_conn *c);
void kb_conn_update(struct kb_conn *c);
void kb_conn_mark_aborted(struct kb_conn *c);
void kb_conn_close(struct kb_conn *c);
void kb_conn_response_ended(struct kb_conn *c);
void kb_conn_reject(struct kb_conn *c, int status, const char *code, const char *message);
void kb_conn_after_flush(struct kb_conn *c);
/* http-body.c: a streamed body wants more bytes from the app now. */
bool kb_conn_body_wants_read(const struct kb_conn *c);
/* http-body.c: tell the handler what the body did (from the timer). */
void kb_conn_body_notify(struct kb_conn *c);
/* http-body.c: the app stalled an upload past header_timeout: -ETIMEDOUT. */
void kb_conn_body_check_stall(struct kb_conn *c, uint64_t now);
/* http-body.c: the app's side closed before its upload ended: -EPIPE
 * (true), or there is no such upload (false). */
bool kb_conn_body_cut(struct kb_conn *c);
/* http.c: send c's output before the loop next sleeps (now, when there is
 * no loop); kb_conn_flush() takes c off that list again. */
void kb_conn_schedule_flush(struct kb_conn *c);
void kb_conn_undirty(struct kb_conn *c);
