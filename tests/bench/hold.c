/* SPDX-License-Identifier: MIT */
/* "idle" and "streams" modes: many raw Unix-socket connections held open
 * while the driver samples the broker's RSS. Plain sockets rather than curl
 * so the client's own footprint and behaviour are obvious: exactly one
 * request per connection, then silence (idle) or a slow stream being read
 * (streams). "burst" opens them the same way, all at once, and reads every
 * answer to its end, timing each: when its head, first body byte and end
 * came, so that a test can tell whether any waited behind another. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "bench.h"
#include "util.h"

#define HEAD_MAX 16384u
#define LINE_MAX_LEN 128u

enum phase {
        PH_HEAD,
        PH_BODY_LENGTH,
        PH_BODY_EOF,
        PH_CHUNK_SIZE,
        PH_CHUNK_DATA,
        PH_CHUNK_CRLF,
        PH_TRAILER,
        PH_DONE,
        PH_BROKEN,
};

struct hconn {
        int fd;
        enum phase phase;
        char *head;             /* response head, freed once parsed */
        size_t head_len;
        char line[LINE_MAX_LEN]; /* chunk-size / trailer line */
        size_t line_len;
        uint64_t remaining;
        int status;
        bool got_body;
        bool counted;           /* already in established or failed */
        bool closed;
        uint64_t t_head, t_first, t_end; /* µs since the burst began; 0 = not yet */
        char body_head[256];    /* the body's first bytes (an error's code) */
        size_t body_head_len;
};

struct hold {
        const struct bench_hold_opts *o;
        struct hconn *conns;
        int epfd;
        unsigned established;
        unsigned failed;        /* non-2xx, bad response, connect failure */
        unsigned closed;        /* by the peer, after being counted */
        unsigned ended;         /* streams that finished while held */
        unsigned unexpected;    /* idle connections that received more bytes */
        uint64_t bytes;
        int first_status;
        int first_errno;
        uint64_t t0;            /* burst: when the first connection was opened */
};

static uint64_t parse_head(struct hconn *c, size_t head_end, bool *ret_chunked, bool *ret_has_length) {
        uint64_t length = 0;
        char *p, *eol;

        *ret_chunked = *ret_has_length = false;
        c->head[head_end] = 0;
        if (strncmp(c->head, "HTTP/1.", 7) != 0 || strlen(c->head) < 12) {
                c->status = -1;
                return 0;
        }
        c->status = atoi(c->head + 9);
        for (p = strstr(c->head, "\r\n"); p && p[2]; p = eol) {
                p += 2;
                eol = strstr(p, "\r\n");
                if (!eol)
                        break;
                if (strncasecmp(p, "content-length:", 15) == 0) {
                        length = strtoull(p + 15, NULL, 10);
                        *ret_has_length = true;
                } else if (strncasecmp(p, "transfer-encoding:", 18) == 0 &&
                           memmem(p, (size_t) (eol - p), "chunked", 7))
                        *ret_chunked = true;
        }
        return length;
}

/* Takes bytes up to a '\n' into c->line; true once the line is complete. */
static bool take_line(struct hconn *c, const char **p, size_t *n) {
        while (*n > 0) {
                char ch = **p;

                (*p)++;
                (*n)--;
                if (ch == '\n') {
                        c->line[MIN(c->line_len, LINE_MAX_LEN - 1)] = 0;
                        return true;
                }
                if (c->line_len < LINE_MAX_LEN - 1)
                        c->line[c->line_len++] = ch;
        }
        return false;
}

static void feed(struct hconn *c, const char *p, size_t n) {
        while (n > 0) {
                size_t take;

                switch (c->phase) {
                case PH_HEAD: {
                        char *end;
                        bool chunked, has_length;
                        uint64_t length;
                        size_t head_end, used;

                        take = MIN(n, HEAD_MAX - 1 - c->head_len);
                        if (take == 0) {
                                c->phase = PH_BROKEN;
                                return;
                        }
                        memcpy(c->head + c->head_len, p, take);
                        c->head_len += take;
                        c->head[c->head_len] = 0;
                        end = memmem(c->head, c->head_len, "\r\n\r\n", 4);
                        if (!end) {
                                p += take;
                                n -= take;
                                break;
                        }
                        head_end = (size_t) (end - c->head) + 2;     /* keep the last header's CRLF */
                        /* Only the bytes of this chunk up to the head's end were head. */
                        used = head_end + 2 - (c->head_len - take);
                        p += used;
                        n -= used;
                        length = parse_head(c, head_end, &chunked, &has_length);
                        free(c->head);
                        c->head = NULL;
                        if (c->status < 0) {
                                c->phase = PH_BROKEN;
                                return;
                        }
                        if (chunked)
                                c->phase = PH_CHUNK_SIZE;
                        else if (has_length) {
                                c->remaining = length;
                                c->phase = length ? PH_BODY_LENGTH : PH_DONE;
                        } else
                                c->phase = PH_BODY_EOF;
                        c->line_len = 0;
                        break;
                }
                case PH_BODY_LENGTH:
                case PH_CHUNK_DATA:
                        take = (size_t) MIN((uint64_t) n, c->remaining);
                        c->got_body = true;
                        if (c->body_head_len < sizeof(c->body_head) - 1) {
                                size_t k = MIN(take, sizeof(c->body_head) - 1 - c->body_head_len);
                                memcpy(c->body_head + c->body_head_len, p, k);
                                c->body_head_len += k;
                        }
                        c->remaining -= take;
                        p += take;
                        n -= take;
                        if (c->remaining == 0) {
                                c->phase = c->phase == PH_BODY_LENGTH ? PH_DONE : PH_CHUNK_CRLF;
                                c->remaining = 2;
                        }
                        break;
                case PH_CHUNK_CRLF:
                        take = (size_t) MIN((uint64_t) n, c->remaining);
                        c->remaining -= take;
                        p += take;
                        n -= take;
                        if (c->remaining == 0)
                                c->phase = PH_CHUNK_SIZE;
                        break;
                case PH_CHUNK_SIZE:
                        if (!take_line(c, &p, &n))
                                break;
                        c->remaining = strtoull(c->line, NULL, 16);
                        c->line_len = 0;
                        c->phase = c->remaining ? PH_CHUNK_DATA : PH_TRAILER;
                        break;
                case PH_TRAILER:
                        if (!take_line(c, &p, &n))
                                break;
                        if (c->line_len == 0 || (c->line_len == 1 && c->line[0] == '\r'))
                                c->phase = PH_DONE;
                        c->line_len = 0;
                        break;
                case PH_BODY_EOF:
                        c->got_body = true;
                        return;
                case PH_DONE:
                case PH_BROKEN:
                        return;
                }
        }
}

static int open_one(struct hold *h, struct hconn *c, const char *req, size_t req_len) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct timeval tv = { .tv_sec = 10 };
        _cleanup_close_ int fd = -1;
        struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = c };
        size_t off = 0;

        if (strlen(h->o->unix_socket) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, h->o->unix_socket);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        /* A full accept backlog makes connect() wait; bound that wait. */
        (void) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return -errno;
        while (off < req_len) {
                ssize_t k = write(fd, req + off, req_len - off);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                off += (size_t) k;
        }
        if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0)
                return -errno;
        c->head = malloc(HEAD_MAX);
        if (!c->head)
                return -ENOMEM;
        if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
                free(TAKE_PTR(c->head));
                return -errno;
        }
        c->fd = TAKE_FD(fd);
        c->phase = PH_HEAD;
        return 0;
}

static void close_conn(struct hconn *c) {
        if (c->fd >= 0)
                close(c->fd);       /* also leaves the epoll set */
        c->fd = -1;
        free(c->head);
        c->head = NULL;
}

static void update_counts(struct hold *h, struct hconn *c) {
        bool ok = c->status >= 200 && c->status <= 299;

        if (!c->counted) {
                bool ready = h->o->stream ? c->got_body || c->phase == PH_DONE : c->phase == PH_DONE;

                if (c->phase == PH_BROKEN || c->closed || (c->status && !ok)) {
                        c->counted = true;
                        h->failed++;
                        if (!h->first_status)
                                h->first_status = c->status ? c->status : -1;
                } else if (ready) {
                        c->counted = true;
                        h->established++;
                }
        }
}

static void on_readable(struct hold *h, struct hconn *c, uint32_t events) {
        static char buf[65536];
        bool was_done = c->phase == PH_DONE;

        for (;;) {
                ssize_t k = read(c->fd, buf, sizeof(buf));

                if (k > 0) {
                        h->bytes += (uint64_t) k;
                        if (c->phase == PH_DONE && !h->o->stream)
                                h->unexpected++;
                        feed(c, buf, (size_t) k);
                        continue;
                }
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        break;
                /* EOF or error: the peer let go of this connection. */
                bool counted = c->counted;
                c->closed = true;
                close_conn(c);
                if (counted)
                        h->closed++;
                break;
        }
        if (h->o->burst) {
                uint64_t now = MAX(kb_now_usec() - h->t0, UINT64_C(1));
                if (c->status && !c->t_head)
                        c->t_head = now;
                if (c->got_body && !c->t_first)
                        c->t_first = now;
                if ((c->phase == PH_DONE || c->phase == PH_BROKEN || c->closed) && !c->t_end) {
                        c->t_end = now;
                        close_conn(c); /* as a client does once it has its answer */
                }
        }
        update_counts(h, c);
        if (!was_done && c->phase == PH_DONE && h->o->stream && c->status >= 200 && c->status <= 299)
                h->ended++;
}

static char *build_request(const struct bench_hold_opts *o, size_t *ret_len) {
        struct kb_buf b = {};
        int r;

        if (o->stream)
                r = kb_buf_appendf(&b, "POST %s HTTP/1.1\r\nHost: localhost\r\n"
                                   "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                                   "Content-Length: %zu\r\n",
                                   o->path ?: "/v1/chat/completions", strlen(o->body));
        else
                r = kb_buf_appendf(&b, "GET %s HTTP/1.1\r\nHost: localhost\r\n", o->path ?: "/v1/models");
        for (size_t i = 0; r >= 0 && i < o->n_headers; i++)
                r = kb_buf_appendf(&b, "%s\r\n", o->headers[i]);
        if (r >= 0)
                r = kb_buf_appendf(&b, "\r\n%s", o->stream ? o->body : "");
        if (r < 0) {
                kb_buf_free(&b);
                return NULL;
        }
        *ret_len = b.len;
        return b.data;
}

static void wait_events(struct hold *h, uint64_t until) {
        struct epoll_event evs[256];
        uint64_t now = kb_now_usec();
        int timeout = now >= until ? 0 : (int) MIN((until - now + 999) / 1000, 200u);
        int n = epoll_wait(h->epfd, evs, ELEMENTSOF(evs), timeout);

        for (int i = 0; i < n; i++) {
                struct hconn *c = evs[i].data.ptr;

                if (c->fd >= 0)
                        on_readable(h, c, evs[i].events);
        }
}

/* Both modes: the request, the connection table, the epoll set. */
static int hold_init(struct hold *h, const struct bench_hold_opts *o, char **ret_req, size_t *ret_len) {
        *h = (struct hold) { .o = o, .epfd = -1 };
        bench_raise_nofile(o->connections);
        *ret_req = build_request(o, ret_len);
        h->conns = calloc(o->connections, sizeof(*h->conns));
        h->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (!*ret_req || !h->conns || h->epfd < 0)
                return -ENOMEM;
        for (unsigned i = 0; i < o->connections; i++)
                h->conns[i].fd = -1;
        return 0;
}

/* Opens every connection, draining answers as it goes so that neither
 * side's buffers pile up; stops opening once until has passed. */
static unsigned open_all(struct hold *h, const char *req, size_t req_len, uint64_t until) {
        unsigned failed = 0;

        for (unsigned i = 0; i < h->o->connections && !bench_stop_requested(); i++) {
                struct hconn *c = &h->conns[i];
                int k = open_one(h, c, req, req_len);

                if (k < 0) {
                        c->counted = c->closed = true;
                        h->failed++;
                        failed++;
                        if (!h->first_errno)
                                h->first_errno = -k;
                        if (kb_now_usec() > until)
                                break;
                        continue;
                }
                if (i % 64 == 63)
                        wait_events(h, 0);
        }
        return failed;
}

static void hold_done(struct hold *h) {
        if (h->conns)
                for (unsigned i = 0; i < h->o->connections; i++)
                        close_conn(&h->conns[i]);
        free(h->conns);
        if (h->epfd >= 0)
                close(h->epfd);
}

static double ms(uint64_t usec) {
        return (double) usec / 1000.0;
}

static int dump_conns(const struct hold *h, const char *path) {
        _cleanup_fclose_ FILE *f = fopen(path, "we");

        if (!f)
                return -errno;
        for (unsigned i = 0; i < h->o->connections; i++) {
                const struct hconn *c = &h->conns[i];
                json_t *j = json_pack("{s:I, s:I, s:f, s:f, s:f, s:b, s:s%}", "i", (json_int_t) i,
                                      "status", (json_int_t) c->status, "head_ms", ms(c->t_head),
                                      "first_ms", ms(c->t_first), "end_ms", ms(c->t_end), "closed", c->closed,
                                      "body", c->body_head, c->body_head_len);
                char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
                json_decref(j);
                if (!s)
                        return -ENOMEM;
                fprintf(f, "%s\n", s);
                free(s);
        }
        return fflush(f) == 0 ? 0 : -errno;
}

/* Every connection opened at once, each answer read to its end (or until
 * --setup-timeout), then one line: how many got a status line, by status,
 * and whether every successful answer's first body byte came before the
 * first successful answer ended (nobody waited behind a running stream). */
int bench_burst(const struct bench_hold_opts *o) {
        struct hold h;
        _cleanup_free_ char *req = NULL;
        size_t req_len = 0;
        unsigned n_status[6] = {}, no_status = 0, incomplete = 0, open_failed;
        uint64_t head_max = 0, first_max = 0, end_min = UINT64_MAX, end_max = 0, deadline;
        int r = hold_init(&h, o, &req, &req_len);

        if (r < 0)
                goto out;
        h.t0 = kb_now_usec();
        deadline = h.t0 + (uint64_t) (o->setup_sec * 1e6);
        open_failed = open_all(&h, req, req_len, UINT64_MAX);
        for (;;) {
                bool open = false;
                for (unsigned i = 0; i < o->connections && !open; i++)
                        open = h.conns[i].fd >= 0;
                if (!open || kb_now_usec() >= deadline || bench_stop_requested())
                        break;
                wait_events(&h, deadline);
        }

        for (unsigned i = 0; i < o->connections; i++) {
                const struct hconn *c = &h.conns[i];
                bool ok = c->status >= 200 && c->status <= 299;

                if (c->status <= 0) {
                        no_status++;
                        continue;
                }
                n_status[MIN((unsigned) c->status / 100, 5u)]++;
                head_max = MAX(head_max, c->t_head);
                if (c->phase != PH_DONE)
                        incomplete++;
                if (!ok)
                        continue;
                first_max = MAX(first_max, c->t_first);
                if (c->t_end) {
                        end_min = MIN(end_min, c->t_end);
                        end_max = MAX(end_max, c->t_end);
                }
        }
        if (end_min == UINT64_MAX)
                end_min = 0;
        printf("BURST connections=%u open_failed=%u no_status=%u incomplete=%u 2xx=%u 4xx=%u 5xx=%u "
               "head_max_ms=%.1f first_max_ms=%.1f end_min_ms=%.1f end_max_ms=%.1f all_first_before_any_end=%d\n",
               o->connections, open_failed, no_status, incomplete, n_status[2], n_status[4], n_status[5],
               ms(head_max), ms(first_max), ms(end_min), ms(end_max),
               n_status[2] > 0 && first_max < end_min);
        fflush(stdout);
        if (h.first_errno)
                fprintf(stderr, "kb-bench burst: %u connections failed to open: %s\n", open_failed,
                        strerror(h.first_errno));
        if (o->dump)
                r = dump_conns(&h, o->dump);
out:
        hold_done(&h);
        return r;
}

int bench_hold(const struct bench_hold_opts *o) {
        const char *what = o->stream ? "streams" : "idle";
        struct hold h;
        _cleanup_free_ char *req = NULL;
        size_t req_len = 0;
        uint64_t t0, setup_until, hold_until, t_ready;
        unsigned open_failed;
        int r = hold_init(&h, o, &req, &req_len);

        if (r < 0)
                goto out;
        t0 = kb_now_usec();
        setup_until = t0 + (uint64_t) (o->setup_sec * 1e6);
        open_failed = open_all(&h, req, req_len, setup_until);
        while (h.established + h.failed < o->connections && kb_now_usec() < setup_until &&
               !bench_stop_requested())
                wait_events(&h, setup_until);

        t_ready = kb_now_usec();
        printf("READY %s established=%u requested=%u failed=%u closed=%u setup=%.3fs\n", what,
               h.established, o->connections, h.failed, h.closed, (double) (t_ready - t0) / 1e6);
        fflush(stdout);
        if (h.first_status)
                fprintf(stderr, "kb-bench %s: first bad response status %d\n", what, h.first_status);
        if (h.first_errno)
                fprintf(stderr, "kb-bench %s: %u connections failed to open: %s\n", what, open_failed,
                        strerror(h.first_errno));

        /* Nothing to hold: say so at once rather than after --hold. */
        hold_until = h.established ? t_ready + (uint64_t) (o->hold_sec * 1e6) : t_ready;
        while (kb_now_usec() < hold_until && !bench_stop_requested())
                wait_events(&h, hold_until);

        unsigned still_open = 0;
        for (unsigned i = 0; i < o->connections; i++)
                if (h.conns[i].fd >= 0 && h.conns[i].counted && h.conns[i].status >= 200 &&
                    h.conns[i].status <= 299)
                        still_open++;
        printf("DONE %s established=%u still_open=%u closed_by_peer=%u ended=%u unexpected=%u "
               "bytes=%" PRIu64 " held=%.3fs\n",
               what, h.established, still_open, h.closed, h.ended, h.unexpected, h.bytes,
               (double) (kb_now_usec() - t_ready) / 1e6);
        fflush(stdout);
        if (h.established == 0)
                r = -EIO;
out:
        hold_done(&h);
        return r;
}
