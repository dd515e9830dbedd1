/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 12 of 12, base: calls only libraries. */

/* journald's native protocol (systemd.journal-fields(7), "Native
 * Protocol"), spoken by the loop itself so that a record costs one
 * non-blocking send() on a connected socket (no path lookup per record)
 * instead of a hand-off to the writer thread. Anything
 * this path cannot send at once (journald's queue full, journald away, a
 * record too big for one datagram) is left to the writer, which uses
 * sd_journal_sendv() and the spool. Library-like: never logs. */

#include <stdbool.h>
#include <stddef.h>
#include <sys/uio.h>

#include "util.h"

#define KB_JOURNAL_SOCKET "/run/systemd/journal/socket"

/* A datagram socket for sending to journald: non-blocking, close-on-exec,
 * with a send buffer as large as the kernel allows us (as sd-journal does).
 * An fd, or -errno. */
int kb_journal_native_open(void);

/* Append the datagram for these "FIELD=value" items to buf: "FIELD=value\n",
 * or, for a value holding a newline, "FIELD\n" + 64-bit little-endian length
 * + value + "\n". -EINVAL for an item without '='. */
int kb_journal_native_format(const struct iovec *items, size_t n, struct kb_buf *buf);

/* Send one datagram to path without waiting: 0, -EAGAIN when journald's
 * queue is full, -EMSGSIZE when it is too big for a datagram, other
 * -errno when journald is not there. fd is connected to path on the first
 * send (*connected tracks it); a journald that restarted (the socket file
 * made anew) is connected again once before giving up. */
int kb_journal_native_send(int fd, const char *path, bool *connected, const void *data, size_t len);
