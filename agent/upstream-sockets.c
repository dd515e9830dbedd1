/* SPDX-License-Identifier: MIT */
/* Connection sockets of upstream calls: opened and closed through curl's
 * hooks so they can be counted, and so that running out of fds is told apart
 * from a provider that refuses connections. See upstream-internal.h. */

#include <errno.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "upstream-internal.h"

/* A failure before any answer that was really ours: no fd for a socket
 * (seen in the open-socket hook), or one for the resolver's thread, a CA
 * file or the TLS library (seen only as curl's "couldn't connect/resolve",
 * "bad CA file": so probe whether this process can still open an fd). */
int upstream_own_fault(struct kb_upstream_call *c, int error) {
        if (c->own_error < 0)
                error = c->own_error;
        else {
                int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                if (fd >= 0)
                        close(fd);
                else if (errno == EMFILE || errno == ENFILE)
                        error = -errno;
        }
        if (error == -EMFILE || error == -ENFILE)
                c->u->n_fd_failures++;
        return error;
}

/* The sockets of upstream connections are opened and closed here, so they
 * can be counted and so that running out of fds is told apart from a
 * provider that refuses connections. curl keeps the close hook with the
 * connection, whose life may outlast the call that opened it: its data is
 * the upstream, not the call. */
curl_socket_t upstream_on_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a) {
        struct kb_upstream_call *c = clientp;
        int fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);

        if (fd < 0) {
                if (errno == EMFILE || errno == ENFILE)
                        c->own_error = -errno;
                return CURL_SOCKET_BAD;
        }
        c->opened_socket = true;
        c->u->n_sockets++;
        return fd;
}

int upstream_on_close_socket(void *clientp, curl_socket_t fd) {
        struct kb_upstream *u = clientp;

        if (u->n_sockets > 0)
                u->n_sockets--;
        return close(fd);
}

int upstream_on_prereq(void *clientp, char *primary_ip, char *local_ip, int primary_port, int local_port) {
        struct kb_upstream_call *c = clientp;

        c->connected = true;
        return CURL_PREREQFUNC_OK;
}

void kb_upstream_get_stats(const struct kb_upstream *u, struct kb_upstream_stats *ret) {
        struct kb_upstream_stats st = {};

        if (u) {
                st.calls = u->n_calls;
                st.connections = u->n_sockets;
                st.fd_failures = u->n_fd_failures;
                for (const struct kb_upstream_call *c = u->calls; c; c = c->next) {
                        if (c->cancelled || c->in_done || c->connected || !c->added)
                                continue;
                        if (c->opened_socket)
                                st.connecting++;
                        else
                                st.waiting++;
                }
        }
        *ret = st;
}
