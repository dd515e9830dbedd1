/* SPDX-License-Identifier: MIT */
/* Refusing connections: every connection the server will not serve (over
 * max_connections, refused by the owner's on_accept, or accepted only
 * through the reserve fd because the process is out of fds) gets a complete
 * 503 in the shape its path asks for, and is then closed. Nothing is ever
 * accepted and closed without an answer.
 *
 * What a refusal may cost is bounded: up to KB_HTTP_MAX_LINGERING refused
 * connections wait (at most KB_HTTP_REFUSE_WAIT_USEC) for their request line
 * or drain input after the answer; past that a refusal is answered from
 * what the socket already holds, drained of what is there, and closed in the
 * same loop pass. */
#include "http-internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/socket.h>

#define PEEK_BYTES 1024u
#define PATH_MAX_LEN 256u
#define DRAIN_BYTES (64u * 1024u)

/* The request's path if its request line has arrived, without consuming
 * anything: the same bytes are parsed normally if the refusal waits. */
static bool peek_path(int fd, char *buf, size_t size) {
        char line[PEEK_BYTES];
        ssize_t n = recv(fd, line, sizeof(line), MSG_PEEK | MSG_DONTWAIT);

        if (n <= 0)
                return false;
        const char *sp = memchr(line, ' ', (size_t) n);
        if (!sp || sp + 1 >= line + n || sp[1] != '/')
                return false;
        const char *p = sp + 1, *end = line + n;
        size_t len = 0;
        while (p + len < end && p[len] != ' ' && p[len] != '?') {
                if ((unsigned char) p[len] < 0x21 || (unsigned char) p[len] == 0x7f)
                        return false;
                len++;
        }
        if (p + len >= end || len >= size)
                return false; /* not all here yet, or too long to matter */
        memcpy(buf, p, len);
        buf[len] = 0;
        return true;
}

/* Answer now, drain what the peer already sent (so that our close does not
 * turn its read of the answer into ECONNRESET), close. */
static void refuse_now(struct kb_conn *c) {
        char path[PATH_MAX_LEN], sink[4096];
        bool have = peek_path(c->fd, path, sizeof(path));

        kb_conn_reject_path(c, have ? path : NULL, 503, c->refuse_code, c->refuse_msg);
        for (size_t drained = 0; c->fd >= 0 && drained < DRAIN_BYTES;) {
                ssize_t n = recv(c->fd, sink, sizeof(sink), MSG_DONTWAIT);
                if (n <= 0)
                        break;
                drained += (size_t) n;
        }
        if (!c->finalized)
                kb_conn_close(c);
}

void kb_conn_refusal_due(struct kb_conn *c) {
        kb_conn_reject(c, 503, c->refuse_code, c->refuse_msg);
}

void kb_conn_refuse(struct kb_conn *c, kb_http_refusal why) {
        struct kb_http_server *s = c->server;
        char path[PATH_MAX_LEN];

        s->n_refused[why]++;
        if (!c->refuse_code)
                c->refuse_code = "too_many_connections";
        if (s->n_lingering >= KB_HTTP_MAX_LINGERING) {
                refuse_now(c);
                return;
        }
        c->lingering = true;
        s->n_lingering++;
        if (peek_path(c->fd, path, sizeof(path))) {
                kb_conn_reject_path(c, path, 503, c->refuse_code, c->refuse_msg);
                return;
        }
        c->refusing = true;
        c->deadline = kb_now_usec() + MIN(KB_HTTP_REFUSE_WAIT_USEC, s->limits.header_timeout_usec);
}

bool kb_http_server_shed(struct kb_http_server *s, int error) {
        struct kb_conn *c;
        struct rlimit rl;
        bool shed = false;

        if (s->reserve_fd < 0)
                s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (s->reserve_fd < 0)
                return false;
        close(s->reserve_fd);
        s->reserve_fd = -1;

        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
                shed = true;
                if (kb_conn_new(s, fd, &c) < 0)
                        close(fd);
                else {
                        kb_conn_ref(c);
                        c->refuse_code = "broker_overloaded";
                        if (error == EMFILE && getrlimit(RLIMIT_NOFILE, &rl) == 0)
                                snprintf(c->refuse_msg, sizeof(c->refuse_msg),
                                         "keybrokerd is out of file descriptors (RLIMIT_NOFILE %" PRIu64 ")",
                                         (uint64_t) rl.rlim_cur);
                        else
                                snprintf(c->refuse_msg, sizeof(c->refuse_msg),
                                         "the system is out of file descriptors");
                        s->n_refused[KB_HTTP_REFUSED_FDS]++;
                        refuse_now(c);
                        kb_conn_unref(c);
                }
        }
        s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        return shed;
}
