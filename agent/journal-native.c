/* SPDX-License-Identifier: MIT */
#include "journal-native.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int kb_journal_native_open(void) {
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        int size = 8 * 1024 * 1024;

        if (fd < 0)
                return -errno;
        /* SO_SNDBUFFORCE needs CAP_NET_ADMIN; without it the plain option
         * is capped at wmem_max, which still holds any record we build. */
        if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) < 0)
                (void) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
        return fd;
}

int kb_journal_native_format(const struct iovec *items, size_t n, struct kb_buf *buf) {
        for (size_t i = 0; i < n; i++) {
                const char *item = items[i].iov_base;
                size_t len = items[i].iov_len;
                const char *eq = memchr(item, '=', len);
                int r;

                if (!eq || eq == item)
                        return -EINVAL;
                size_t name_len = (size_t) (eq - item), value_len = len - name_len - 1;
                if (!memchr(eq + 1, '\n', value_len)) {
                        r = kb_buf_reserve(buf, len + 1);
                        if (r < 0)
                                return r;
                        (void) kb_buf_append(buf, item, len);
                        (void) kb_buf_append(buf, "\n", 1);
                        continue;
                }
                uint8_t le[8];
                for (size_t k = 0; k < 8; k++)
                        le[k] = (uint8_t) ((uint64_t) value_len >> (8 * k));
                r = kb_buf_reserve(buf, name_len + 1 + sizeof(le) + value_len + 1);
                if (r < 0)
                        return r;
                (void) kb_buf_append(buf, item, name_len);
                (void) kb_buf_append(buf, "\n", 1);
                (void) kb_buf_append(buf, le, sizeof(le));
                (void) kb_buf_append(buf, eq + 1, value_len);
                (void) kb_buf_append(buf, "\n", 1);
        }
        return 0;
}

static int connect_to(int fd, const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        size_t plen = strlen(path);

        if (plen >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, path, plen);
        if (connect(fd, (struct sockaddr *) &sa, (socklen_t) (offsetof(struct sockaddr_un, sun_path) + plen)) < 0)
                return -errno;
        return 0;
}

int kb_journal_native_send(int fd, const char *path, bool *connected, const void *data, size_t len) {
        for (int attempt = 0;; attempt++) {
                if (!*connected) {
                        int r = connect_to(fd, path);
                        if (r < 0)
                                return r;
                        *connected = true;
                }
                ssize_t k = send(fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (k >= 0)
                        return (size_t) k == len ? 0 : -EMSGSIZE;
                int e = errno;
                /* The peer we were connected to is gone: journald restarted
                 * and bound a new socket at the same path. */
                if ((e == ECONNREFUSED || e == ENOTCONN || e == ECONNRESET) && attempt == 0) {
                        *connected = false;
                        continue;
                }
                return e == EWOULDBLOCK ? -EAGAIN : -e;
        }
}
