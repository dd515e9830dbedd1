/* SPDX-License-Identifier: MIT */
/* The listening socket and taking connections from it: creating the socket
 * file safely, accepting under the connection cap (refusals are
 * http-refuse.c's), and backing off when accept itself keeps failing. */
#include "http-internal.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- listening socket ---------------------------------------------------- */

/* A socket file with someone accepting on it is not stale. */
static bool unix_socket_is_live(const struct sockaddr_un *sa, socklen_t len) {
        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return false;
        if (connect(fd, (const struct sockaddr *) sa, len) == 0)
                return true;
        return errno == EAGAIN || errno == EINPROGRESS;
}

int kb_http_listen_unix(const char *path, mode_t mode) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct stat st;
        int r;

        if (!path || !path[0])
                return -EINVAL;
        size_t l = strlen(path);
        if (l >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, path, l + 1);
        socklen_t salen = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + l + 1);

        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;

        if (lstat(path, &st) == 0) {
                /* never remove anything but a dead socket */
                if (!S_ISSOCK(st.st_mode))
                        return -EEXIST;
                if (unix_socket_is_live(&sa, salen))
                        return -EADDRINUSE;
                if (unlink(path) < 0 && errno != ENOENT)
                        return -errno;
        } else if (errno != ENOENT)
                return -errno;

        /* bind() creates the node with 0777 & ~umask: narrow the umask so
         * the file never exists with more than mode, then chmod to exactly
         * mode. umask is per process; this runs at start-up. */
        mode_t old = umask(~mode & 0777);
        r = bind(fd, (const struct sockaddr *) &sa, salen);
        int saved = errno;
        umask(old);
        if (r < 0)
                return -saved;
        if (chmod(path, mode & 07777) < 0 || listen(fd, SOMAXCONN) < 0) {
                r = -errno;
                unlink(path);
                return r;
        }
        return TAKE_FD(fd);
}

static void server_add_conn(struct kb_http_server *s, int fd) {
        struct kb_conn *c;

        if (kb_conn_new(s, fd, &c) < 0) {
                close(fd);
                return;
        }
        kb_conn_ref(c);
        if (s->n_connections >= s->limits.max_connections) {
                snprintf(c->refuse_msg, sizeof(c->refuse_msg),
                         "too many connections: max_connections = %zu reached", s->limits.max_connections);
                c->refuse_code = "too_many_connections";
                kb_conn_refuse(c, KB_HTTP_REFUSED_CAP);
        } else {
                c->counted = true;
                s->n_connections++;
                if (s->ops->on_accept && s->ops->on_accept(c, s->userdata) < 0) {
                        if (c->counted) {
                                c->counted = false;
                                s->n_connections--;
                        }
                        if (!c->refuse_code) {
                                c->refuse_code = "too_many_connections";
                                snprintf(c->refuse_msg, sizeof(c->refuse_msg), "connection refused");
                        }
                        if (!c->finalized)
                                kb_conn_refuse(c, KB_HTTP_REFUSED_OWNER);
                } else
                        c->accepted = true;
        }
        kb_conn_update(c);
        kb_conn_unref(c);
}

static int server_on_retry(sd_event_source *src, uint64_t usec, void *userdata) {
        struct kb_http_server *s = userdata;
        if (!s->stopping)
                (void) sd_event_source_set_enabled(s->listen_source, SD_EVENT_ON);
        return 0;
}

/* Out of fds (or another persistent error): the listening socket stays
 * readable, so polling it again now would spin. Back off briefly. */
static void server_pause_accept(struct kb_http_server *s) {
        (void) sd_event_source_set_enabled(s->listen_source, SD_EVENT_OFF);
        if (!s->retry_timer) {
                if (sd_event_add_time_relative(s->event, &s->retry_timer, CLOCK_MONOTONIC,
                                               KB_HTTP_EMFILE_RETRY_USEC, KB_HTTP_TIMER_ACCURACY_USEC,
                                               server_on_retry, s) < 0)
                        (void) sd_event_source_set_enabled(s->listen_source, SD_EVENT_ON);
                return;
        }
        if (sd_event_source_set_time_relative(s->retry_timer, KB_HTTP_EMFILE_RETRY_USEC) >= 0)
                (void) sd_event_source_set_enabled(s->retry_timer, SD_EVENT_ONESHOT);
}

int kb_http_server_on_listen(sd_event_source *src, int fd, uint32_t revents, void *userdata) {
        struct kb_http_server *s = userdata;

        for (unsigned i = 0; i < KB_HTTP_ACCEPT_BATCH && !s->stopping; i++) {
                int cfd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (cfd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                                continue;
                        if ((errno == EMFILE || errno == ENFILE) && kb_http_server_shed(s, errno))
                                continue;
                        if (errno != EAGAIN)
                                server_pause_accept(s);
                        break;
                }
                server_add_conn(s, cfd);
        }
        return 0;
}
