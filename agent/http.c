/* SPDX-License-Identifier: MIT */
/* The HTTP/1.1 server: listening socket, accept with a connection cap,
 * the connection life cycle (read -> parse -> dispatch -> respond -> next),
 * timeouts on one timer per connection, and graceful (lingering) close.
 *
 * Re-entrancy rules: handler callbacks may call back into kb_conn_*() at any
 * time, so every entry point holds a reference on the conn, and a conn is
 * only torn down from the event loop (io or timer callback), never from
 * inside a kb_conn_*() call: those set state and let the conn's timer fire
 * at once. */
#include "http-internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#ifndef USEC_INFINITY
#define USEC_INFINITY UINT64_MAX
#endif

/* ---- connections ---------------------------------------------------------- */

static const char *state_timeout_message(const struct kb_conn *c, char *buf, size_t size) {
        uint64_t ms = c->server->limits.header_timeout_usec / USEC_PER_MSEC;
        if (c->req && c->req->headers_done)
                snprintf(buf, size, "request body stalled for more than %" PRIu64 " ms", ms);
        else
                snprintf(buf, size, "request headers not received within %" PRIu64 " ms", ms);
        return buf;
}

void kb_conn_ref(struct kb_conn *c) {
        c->n_ref++;
}

void kb_conn_unref(struct kb_conn *c) {
        if (!c || --c->n_ref > 0)
                return;
        /* the server's reference goes last, in kb_conn_close() */
        free(c);
}

static void conn_drop_stash(struct kb_conn *c) {
        free(c->stash);
        c->stash = NULL;
        c->stash_len = c->stash_off = 0;
}

void kb_conn_close(struct kb_conn *c) {
        struct kb_http_server *s = c->server;

        if (c->finalized)
                return;
        if (c->state == CONN_BUSY) {
                /* the handler owns the request until kb_conn_end() */
                kb_conn_mark_aborted(c);
                return;
        }
        c->finalized = true;
        c->io = kb_io_free(c->io);
        c->timer = sd_event_source_disable_unref(c->timer);
        if (c->fd >= 0)
                close(c->fd);
        c->fd = -1;
        if (s) {
                if (c->counted)
                        s->n_connections--;
                if (c->lingering)
                        s->n_lingering--;
                if (c->prev)
                        c->prev->next = c->next;
                else
                        s->conns = c->next;
                if (c->next)
                        c->next->prev = c->prev;
        }
        c->prev = c->next = NULL;
        c->counted = c->lingering = false;
        c->req = kb_http_req_free(c->req);
        conn_drop_stash(c);
        kb_buf_free(&c->out);
        c->out_off = 0;
        if (c->accepted && s && s->ops->on_close) {
                c->accepted = false;
                s->ops->on_close(c, s->userdata);
        }
        c->server = NULL;
        kb_conn_unref(c);
}

void kb_conn_mark_aborted(struct kb_conn *c) {
        if (c->aborted || c->finalized)
                return;
        c->aborted = true;
        c->io = kb_io_free(c->io);
        if (c->fd >= 0)
                close(c->fd);
        c->fd = -1;
        conn_drop_stash(c);
        kb_buf_free(&c->out);
        c->out_off = 0;
        /* the socket is gone: it no longer takes a place under the cap */
        if (c->counted && c->server) {
                c->counted = false;
                c->server->n_connections--;
        }
        if (c->state == CONN_BUSY)
                c->abort_notify = true;
        kb_conn_update(c);
}

void kb_conn_after_flush(struct kb_conn *c) {
        /* CLOSING -> LINGER happens in the timer callback: see top of file */
        if (c->state == CONN_CLOSING)
                c->kick = true;
}

static void conn_start_linger(struct kb_conn *c) {
        struct kb_http_server *s = c->server;
        int unread = 0;

        if (c->counted) {
                c->counted = false;
                s->n_connections--;
        }
        if (c->fd < 0 || shutdown(c->fd, SHUT_WR) < 0) {
                kb_conn_close(c);
                return;
        }
        /* Closing an AF_UNIX socket with unread input makes the peer's
         * reads fail with ECONNRESET (possibly before it saw our answer's
         * end): drain it first, unless there is none and none is coming. */
        if (ioctl(c->fd, FIONREAD, &unread) == 0 && unread == 0 && (!c->rejected || c->peer_eof)) {
                kb_conn_close(c);
                return;
        }
        if (!c->lingering) {
                if (s->n_lingering >= KB_HTTP_MAX_LINGERING) {
                        kb_conn_close(c);
                        return;
                }
                c->lingering = true;
                s->n_lingering++;
        }
        c->state = CONN_LINGER;
        c->deadline = kb_now_usec() + KB_HTTP_LINGER_USEC;
}

static void conn_enter_closing(struct kb_conn *c, uint64_t flush_usec) {
        c->state = CONN_CLOSING;
        c->close_after = true;
        c->deadline = kb_now_usec() + flush_usec;
        conn_drop_stash(c);
}

void kb_conn_reject(struct kb_conn *c, int status, const char *code, const char *message) {
        kb_conn_reject_path(c, c->req && c->req->url_done ? c->req->strs.data + c->req->path_off : NULL, status,
                            code, message);
}

void kb_conn_reject_path(struct kb_conn *c, const char *path, int status, const char *code, const char *message) {
        struct kb_http_server *s = c->server;

        if (c->finalized || c->aborted || c->state == CONN_BUSY || c->state == CONN_CLOSING ||
            c->state == CONN_LINGER)
                return;

        conn_enter_closing(c, KB_HTTP_LINGER_USEC);
        c->rejected = true;
        c->refusing = false;
        c->req_ready = false;
        c->responded = false;
        c->head = false;
        c->in_write_error = true;

        kb_conn_ref(c);
        if (s->ops->write_error)
                s->ops->write_error(c, path, status, code, message, s->userdata);
        if (!c->responded && !c->finalized && !c->aborted)
                kb_conn_write_fallback_error(c, status, code, message);
        c->in_write_error = false;
        c->responded = false;
        c->req = kb_http_req_free(c->req);
        if (!c->finalized && !c->aborted)
                kb_conn_flush(c);
        kb_conn_update(c);
        kb_conn_unref(c);
}

void kb_conn_response_ended(struct kb_conn *c) {
        struct kb_http_server *s = c->server;

        if (s)
                s->n_busy--;
        /* answered before its body was all read (413, an early upstream
         * answer): the next request cannot be found in what follows */
        if (c->req && c->req->streaming && !c->req->body_done)
                c->close_after = true;
        c->body_notify = false;
        c->req = kb_http_req_free(c->req);
        c->handler = NULL;
        c->handler_userdata = NULL;
        c->responded = false;
        c->chunked = false;
        c->head = false;
        c->killed = false;
        c->abort_notify = false;

        if (c->aborted) {
                c->state = CONN_CLOSING;
                return;
        }
        if (c->close_after || !c->keep_alive || !s || s->stopping) {
                conn_enter_closing(c, MAX(s ? s->limits.idle_timeout_usec : 0, KB_HTTP_LINGER_USEC));
                return;
        }
        c->state = CONN_IDLE;
        c->last_activity = kb_now_usec();
        llhttp_resume(&c->parser);
        /* a stashed next request is dispatched from the loop (see
         * kb_conn_update()), never from inside kb_conn_end() */
}

static void conn_dispatch(struct kb_conn *c) {
        struct kb_http_server *s = c->server;

        c->req_ready = false;
        c->state = CONN_BUSY;
        c->responded = false;
        c->abort_notify = c->abort_notified = false;
        s->n_busy++;
        if (!c->req->pub.body.data)
                (void) kb_buf_append(&c->req->pub.body, "", 0);
        if (s->ops->on_request)
                s->ops->on_request(c, &c->req->pub, s->userdata);
        else
                kb_conn_respond(c, 404, NULL, 0, NULL, 0);
}

/* Peer sent EOF while idle: finish what is queued, then close. */
static void conn_check_eof(struct kb_conn *c) {
        if (c->finalized || !c->peer_eof || c->state != CONN_IDLE || c->stash || c->req_ready)
                return;
        conn_enter_closing(c, KB_HTTP_LINGER_USEC);
        kb_conn_after_flush(c);
}

/* Dispatch a parsed request, then parse stashed pipelined bytes, one request
 * at a time. Handlers that answer synchronously come back here through the
 * loop below rather than recursing. */
static void conn_process(struct kb_conn *c) {
        if (c->processing || c->finalized)
                return;
        c->processing = true;
        kb_conn_ref(c);
        for (;;) {
                if (c->finalized || c->aborted)
                        break;
                if (c->req_ready) {
                        if (c->state != CONN_READING)
                                break;
                        conn_dispatch(c);
                        continue;
                }
                if ((c->state != CONN_IDLE && c->state != CONN_READING) || !c->stash ||
                    kb_conn_out_pending(c) > KB_CONN_HIGH_WATER)
                        break;
                size_t used = kb_conn_parse(c, c->stash + c->stash_off, c->stash_len - c->stash_off, c->stash_usec);
                if (!c->stash)  /* rejected */
                        break;
                c->stash_off += used;
                if (c->stash_off >= c->stash_len)
                        conn_drop_stash(c);
        }
        conn_check_eof(c);
        c->processing = false;
        kb_conn_unref(c);
}

static void conn_peer_gone(struct kb_conn *c) {
        if (c->state == CONN_BUSY)
                kb_conn_mark_aborted(c);
        else
                kb_conn_close(c);
}

static void conn_peer_eof(struct kb_conn *c) {
        c->peer_eof = true;
        switch (c->state) {
        case CONN_BUSY:
                /* an upload that stopped short fails; else: */
                if (kb_conn_body_cut(c))
                        break;
                if (c->server->rdhup_is_abort)
                        kb_conn_mark_aborted(c);
                else
                        c->close_after = true; /* AF_UNIX half-close: the peer still reads */
                break;
        case CONN_READING:
                /* gave up mid-request */
                kb_conn_close(c);
                break;
        case CONN_IDLE:
                conn_check_eof(c);
                break;
        case CONN_CLOSING:
                break;
        case CONN_LINGER:
                kb_conn_close(c);
                break;
        }
}

static void conn_read(struct kb_conn *c) {
        char buf[KB_HTTP_READ_BUF];

        ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                        return;
                conn_peer_gone(c);
                return;
        }
        if (c->state == CONN_LINGER) {
                c->linger_bytes += (uint64_t) n;
                if (n == 0 || c->linger_bytes > KB_HTTP_LINGER_BYTES)
                        kb_conn_close(c);
                return;
        }
        if (n == 0) {
                conn_peer_eof(c);
                return;
        }

        uint64_t now = kb_now_usec();
        c->last_activity = now;
        bool streamed_end = c->req && c->req->streaming && c->req->body_done;
        size_t used = kb_conn_parse(c, buf, (size_t) n, now);
        if (c->finalized || c->state == CONN_CLOSING)
                return;
        /* pipelined bytes after a request, or after a streamed body's end */
        bool ended_now = !streamed_end && c->req && c->req->streaming && c->req->body_done;
        if ((c->req_ready || ended_now) && used < (size_t) n) {
                c->stash = malloc((size_t) n - used);
                if (!c->stash) {
                        kb_conn_close(c);
                        return;
                }
                memcpy(c->stash, buf + used, (size_t) n - used);
                c->stash_len = (size_t) n - used;
                c->stash_off = 0;
                c->stash_usec = now;
        }
        if (kb_conn_out_pending(c) > 0) /* 100 Continue */
                kb_conn_flush(c);
        conn_process(c);
}

static void conn_on_io(struct kb_io *io, int fd, uint32_t revents, void *userdata) {
        struct kb_conn *c = userdata;
        struct kb_http_server *s = c->server;   /* outlives its connections' events */

        kb_conn_ref(c);
        if (revents & EPOLLERR) {
                conn_peer_gone(c);
                goto out;
        }
        if (revents & EPOLLOUT) {
                kb_conn_flush(c);
                if (c->finalized || c->aborted)
                        goto out;
        }
        if ((revents & EPOLLIN) && (c->io_events & EPOLLIN) && c->state == CONN_BUSY &&
            kb_conn_body_wants_read(c))
                conn_read(c);
        else if ((revents & EPOLLIN) && (c->io_events & EPOLLIN) && c->state == CONN_BUSY &&
            !(revents & (EPOLLHUP | EPOLLRDHUP)))
                c->busy_in_hit = true; /* kb_conn_update() stops reading now */
        else if ((revents & EPOLLIN) && (c->io_events & EPOLLIN) && c->state != CONN_BUSY)
                conn_read(c);
        else if (revents & EPOLLHUP)
                conn_peer_gone(c);
        else if ((revents & EPOLLRDHUP) && !c->peer_eof)
                conn_peer_eof(c);
out:
        kb_conn_update(c);
        kb_conn_unref(c);
        if (s && s->ops->after_io)
                s->ops->after_io(s->userdata);
}

static int conn_on_timer(sd_event_source *src, uint64_t usec, void *userdata) {
        struct kb_conn *c = userdata;
        char msg[96];

        kb_conn_ref(c);
        c->kick = false;
        if (c->aborted && c->state != CONN_BUSY) {
                kb_conn_close(c);
                goto out;
        }
        if (c->abort_notify) {
                /* without a handler yet, kb_conn_set_handler() re-arms it */
                c->abort_notify = false;
                if (c->state == CONN_BUSY && c->handler && !c->abort_notified) {
                        c->abort_notified = true;
                        if (c->handler->on_abort)
                                c->handler->on_abort(c, c->handler_userdata);
                }
        }
        if (c->finalized)
                goto out;
        if (c->writable_notify) {
                c->writable_notify = false;
                if (c->state == CONN_BUSY && !c->aborted && c->handler && c->handler->on_writable)
                        c->handler->on_writable(c, c->handler_userdata);
        }
        kb_conn_body_notify(c);
        if (c->finalized || (c->aborted && c->state != CONN_BUSY))
                goto out;
        conn_process(c);
        if (c->finalized)
                goto out;

        const struct kb_http_limits *lim = &c->server->limits;
        uint64_t now = kb_now_usec();
        if (c->refusing && (c->state == CONN_IDLE || c->state == CONN_READING)) {
                if (now >= c->deadline)
                        kb_conn_refusal_due(c);
                goto out;
        }
        switch (c->state) {
        case CONN_IDLE:
                if (!c->stash && lim->idle_timeout_usec > 0 && now >= c->last_activity + lim->idle_timeout_usec)
                        kb_conn_close(c);
                break;
        case CONN_READING: {
                uint64_t base = c->req && c->req->headers_done ? c->last_activity :
                                c->req ? c->req->pub.start_usec : c->last_activity;
                if (lim->header_timeout_usec > 0 && now >= base + lim->header_timeout_usec)
                        kb_conn_reject(c, 408, "request_timeout", state_timeout_message(c, msg, sizeof(msg)));
                break;
        }
        case CONN_BUSY:
                kb_conn_body_check_stall(c, now);
                break;
        case CONN_CLOSING:
                if (kb_conn_out_pending(c) == 0)
                        conn_start_linger(c);
                else if (now >= c->deadline)
                        kb_conn_close(c);
                break;
        case CONN_LINGER:
                if (now >= c->deadline)
                        kb_conn_close(c);
                break;
        }
out:
        kb_conn_update(c);
        kb_conn_unref(c);
        return 0;
}

void kb_conn_update(struct kb_conn *c) {
        if (c->finalized || !c->server)
                return;

        const struct kb_http_limits *lim = &c->server->limits;
        size_t pending = kb_conn_out_pending(c);
        bool readable_state = c->state == CONN_IDLE || c->state == CONN_READING;

        if (c->io) {
                uint32_t ev = 0;
                if (readable_state && !c->stash && !c->req_ready && !c->peer_eof && pending <= KB_CONN_HIGH_WATER)
                        ev |= EPOLLIN;
                /* Busy: leave EPOLLIN as it was until it fires. */
                if (c->state == CONN_BUSY && (c->io_events & EPOLLIN) && !c->busy_in_hit && !c->stash &&
                    !c->peer_eof && pending <= KB_CONN_HIGH_WATER)
                        ev |= EPOLLIN;
                if (c->state == CONN_BUSY && kb_conn_body_wants_read(c))
                        ev |= EPOLLIN;
                if (c->state != CONN_BUSY)
                        c->busy_in_hit = false;
                if ((readable_state || c->state == CONN_BUSY) && !c->peer_eof)
                        ev |= EPOLLRDHUP;
                if (c->state == CONN_LINGER)
                        ev |= EPOLLIN | EPOLLRDHUP;
                /* Gathered output is sent before the loop sleeps; EPOLLOUT
                 * only for what a send() left over. */
                if (pending > 0 && c->state != CONN_LINGER && !c->dirty)
                        ev |= EPOLLOUT;
                if (ev != c->io_events && kb_io_set_events(c->io, ev) >= 0)
                        c->io_events = ev;
        }

        uint64_t when = USEC_INFINITY;
        if (c->kick || c->abort_notify || c->writable_notify || c->body_notify ||
            (c->aborted && c->state != CONN_BUSY) ||
            (c->state == CONN_CLOSING && pending == 0) ||
            (c->state == CONN_IDLE && c->stash && pending <= KB_CONN_HIGH_WATER && !c->processing))
                when = 1;
        else if (c->refusing && readable_state)
                when = c->deadline;
        else
                switch (c->state) {
                case CONN_IDLE:
                        if (lim->idle_timeout_usec > 0)
                                when = c->last_activity + lim->idle_timeout_usec;
                        break;
                case CONN_READING:
                        if (lim->header_timeout_usec > 0)
                                when = (c->req && !c->req->headers_done ? c->req->pub.start_usec : c->last_activity) +
                                       lim->header_timeout_usec;
                        break;
                case CONN_BUSY:
                        if (kb_conn_body_wants_read(c) && lim->header_timeout_usec > 0)
                                when = c->last_activity + lim->header_timeout_usec;
                        break;
                case CONN_CLOSING:
                case CONN_LINGER:
                        when = c->deadline;
                        break;
                }

        if (when == USEC_INFINITY) {
                (void) sd_event_source_set_enabled(c->timer, SD_EVENT_OFF);
                return;
        }
        if (sd_event_source_set_time(c->timer, when) >= 0)
                (void) sd_event_source_set_enabled(c->timer, SD_EVENT_ONESHOT);
}

int kb_conn_new(struct kb_http_server *s, int fd, struct kb_conn **ret) {
        struct kb_conn *c = calloc(1, sizeof(*c));
        int r;

        if (!c)
                return -ENOMEM;
        c->n_ref = 1;
        c->fd = fd;
        c->server = s;
        c->state = CONN_IDLE;
        c->last_activity = kb_now_usec();
        kb_conn_parser_init(c);

        c->io_events = EPOLLIN | EPOLLRDHUP;
        r = kb_ioset_add(s->ioset, fd, c->io_events, conn_on_io, c, &c->io);
        if (r >= 0)
                r = sd_event_add_time(s->event, &c->timer, CLOCK_MONOTONIC, USEC_INFINITY,
                                      KB_HTTP_TIMER_ACCURACY_USEC, conn_on_timer, c);
        if (r >= 0)
                r = sd_event_source_set_enabled(c->timer, SD_EVENT_OFF);
        if (r < 0) {
                kb_io_free(c->io);
                sd_event_source_disable_unref(c->timer);
                free(c);
                return r;
        }

        c->next = s->conns;
        if (s->conns)
                s->conns->prev = c;
        s->conns = c;
        *ret = c;
        return 0;
}

/* ---- server ---------------------------------------------------------------- */

static void limits_fill(struct kb_http_limits *dst, const struct kb_http_limits *src) {
        *dst = src ? *src : (struct kb_http_limits) {};
        if (dst->max_header_bytes == 0)
                dst->max_header_bytes = KB_HTTP_DEFAULT_MAX_HEADER_BYTES;
        if (dst->max_body == 0)
                dst->max_body = KB_HTTP_DEFAULT_MAX_BODY;
        if (dst->header_timeout_usec == 0)
                dst->header_timeout_usec = KB_HTTP_DEFAULT_HEADER_TIMEOUT_USEC;
        if (dst->idle_timeout_usec == 0)
                dst->idle_timeout_usec = KB_HTTP_DEFAULT_IDLE_TIMEOUT_USEC;
        if (dst->max_connections == 0)
                dst->max_connections = KB_HTTP_DEFAULT_MAX_CONNECTIONS;
}

static int server_on_flush(sd_event_source *src, void *userdata);

int kb_http_server_new(sd_event *e, int listen_fd, const struct kb_http_limits *limits,
                       const struct kb_http_ops *ops, void *userdata, struct kb_http_server **ret) {
        int domain = 0;
        socklen_t dl = sizeof(domain);
        int r;

        if (!e || listen_fd < 0 || !ops || !ret)
                return -EINVAL;

        /* a socket-activated fd may come blocking */
        int fl = fcntl(listen_fd, F_GETFL);
        if (fl < 0)
                return -errno;
        if (!(fl & O_NONBLOCK) && fcntl(listen_fd, F_SETFL, fl | O_NONBLOCK) < 0)
                return -errno;
        if (getsockopt(listen_fd, SOL_SOCKET, SO_DOMAIN, &domain, &dl) < 0)
                return -errno;

        struct kb_http_server *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->event = sd_event_ref(e);
        s->listen_fd = listen_fd;
        s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        s->ops = ops;
        s->userdata = userdata;
        s->rdhup_is_abort = domain != AF_UNIX;
        limits_fill(&s->limits, limits);

        r = kb_ioset_new(e, "http-connections", &s->ioset);
        if (r >= 0)
                r = sd_event_add_io(e, &s->listen_source, listen_fd, EPOLLIN, kb_http_server_on_listen, s);
        if (r >= 0)
                r = sd_event_add_defer(e, &s->flush_defer, server_on_flush, s);
        if (r >= 0)
                r = sd_event_source_set_enabled(s->flush_defer, SD_EVENT_OFF);
        if (r < 0) {
                s->listen_fd = -1; /* still the caller's on failure */
                kb_http_server_free(s);
                return r;
        }
        *ret = s;
        return 0;
}

/* ---- gathered output ---- */

void kb_conn_undirty(struct kb_conn *c) {
        struct kb_http_server *s = c->server;

        if (!c->dirty)
                return;
        if (c->dirty_prev)
                c->dirty_prev->dirty_next = c->dirty_next;
        else if (s)
                s->dirty = c->dirty_next;
        if (c->dirty_next)
                c->dirty_next->dirty_prev = c->dirty_prev;
        c->dirty_prev = c->dirty_next = NULL;
        c->dirty = false;
        if (s && !s->dirty && s->flush_defer)
                (void) sd_event_source_set_enabled(s->flush_defer, SD_EVENT_OFF);
        kb_conn_unref(c);
}

void kb_conn_schedule_flush(struct kb_conn *c) {
        struct kb_http_server *s = c->server;

        if (!s || !s->flush_defer ||
            sd_event_source_set_enabled(s->flush_defer, SD_EVENT_ONESHOT) < 0) {
                kb_conn_flush(c);
                return;
        }
        if (c->dirty)
                return;
        kb_conn_ref(c);
        c->dirty = true;
        c->dirty_prev = NULL;
        c->dirty_next = s->dirty;
        if (s->dirty)
                s->dirty->dirty_prev = c;
        s->dirty = c;
}

static int server_on_flush(sd_event_source *src, void *userdata) {
        struct kb_http_server *s = userdata;

        while (s->dirty) {
                struct kb_conn *c = s->dirty;
                kb_conn_ref(c);
                kb_conn_undirty(c);
                if (!c->finalized) {
                        kb_conn_flush(c);
                        kb_conn_update(c);
                }
                kb_conn_unref(c);
        }
        return 0;
}

struct kb_http_server *kb_http_server_free(struct kb_http_server *s) {
        if (!s)
                return NULL;
        s->stopping = true;
        s->listen_source = sd_event_source_disable_unref(s->listen_source);
        s->retry_timer = sd_event_source_disable_unref(s->retry_timer);
        while (s->conns) {
                struct kb_conn *c = s->conns;
                if (c->state == CONN_BUSY) {
                        s->n_busy--;
                        c->state = CONN_CLOSING;
                }
                kb_conn_close(c);
        }
        while (s->dirty)
                kb_conn_undirty(s->dirty);
        s->flush_defer = sd_event_source_disable_unref(s->flush_defer);
        s->ioset = kb_ioset_free(s->ioset);
        if (s->listen_fd >= 0)
                close(s->listen_fd);
        if (s->reserve_fd >= 0)
                close(s->reserve_fd);
        sd_event_unref(s->event);
        free(s);
        return NULL;
}

void kb_http_server_set_limits(struct kb_http_server *s, const struct kb_http_limits *limits) {
        if (!s)
                return;
        limits_fill(&s->limits, limits);
        for (struct kb_conn *c = s->conns; c; c = c->next)
                kb_conn_update(c);
}

void kb_http_server_stop_accepting(struct kb_http_server *s) {
        if (!s || s->stopping)
                return;
        s->stopping = true;
        (void) sd_event_source_set_enabled(s->listen_source, SD_EVENT_OFF);
        if (s->retry_timer)
                (void) sd_event_source_set_enabled(s->retry_timer, SD_EVENT_OFF);

        for (struct kb_conn *c = s->conns, *next; c; c = next) {
                next = c->next; /* closing c unlinks only c */
                kb_conn_ref(c);
                if (c->state == CONN_IDLE && !c->stash && !c->req_ready && kb_conn_out_pending(c) == 0)
                        kb_conn_close(c);
                else if (c->state == CONN_IDLE && !c->stash && !c->req_ready)
                        conn_enter_closing(c, MAX(s->limits.idle_timeout_usec, KB_HTTP_LINGER_USEC));
                else
                        c->close_after = true;
                kb_conn_update(c);
                kb_conn_unref(c);
        }
}

size_t kb_http_server_n_connections(const struct kb_http_server *s) {
        return s ? s->n_connections : 0;
}

void kb_http_server_get_stats(const struct kb_http_server *s, struct kb_http_server_stats *ret) {
        *ret = (struct kb_http_server_stats) {};
        if (!s)
                return;
        ret->connections = s->n_connections;
        ret->refusing = s->n_lingering;
        memcpy(ret->refused, s->n_refused, sizeof(ret->refused));
}

void kb_conn_set_refusal(struct kb_conn *c, const char *code, const char *message) {
        if (!c)
                return;
        c->refuse_code = code;
        snprintf(c->refuse_msg, sizeof(c->refuse_msg), "%s", strempty(message));
}

size_t kb_http_server_n_busy(const struct kb_http_server *s) {
        return s ? s->n_busy : 0;
}

int kb_conn_fd(const struct kb_conn *c) {
        if (!c)
                return -EINVAL;
        return c->fd >= 0 ? c->fd : -EPIPE;
}

void *kb_conn_get_userdata(const struct kb_conn *c) {
        return c ? c->userdata : NULL;
}

void kb_conn_set_userdata(struct kb_conn *c, void *userdata) {
        if (c)
                c->userdata = userdata;
}

void kb_conn_set_handler(struct kb_conn *c, const struct kb_conn_handler *h, void *userdata) {
        if (!c)
                return;
        c->handler = h;
        c->handler_userdata = userdata;
        /* an abort that came before anyone was listening */
        if (h && c->aborted && !c->abort_notified && c->state == CONN_BUSY) {
                c->abort_notify = true;
                kb_conn_update(c);
        }
}
