/* SPDX-License-Identifier: MIT */
/* Set-up and plumbing that several unit tests share, so that a test reads as
 * its checks: temporary directories and files, sockets, running the event
 * loop, and the small fixtures (a config, a quota, a journal record) cases
 * are built on. Linked into every test binary (Makefile).
 *
 * Helpers that set something up fail the test themselves when they cannot;
 * the socket ones return -errno instead, because a child of fork() calls
 * them, where a cmocka assertion cannot be used. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <systemd/sd-event.h>

#include "config.h"
#include "journal.h"
#include "quota.h"
#include "util.h"

/* ---- files ---- */

/* A new private directory, /tmp/kb-test-NAME-XXXXXX, in buf: one test's files
 * in one place, and the name says which test left it, should one be left. */
void kbt_mkdtemp(char *buf, size_t size, const char *name);

/* Removes path and everything below it (made writable first), so that a
 * test's teardown leaves nothing behind whatever the test got to. 0 or -errno. */
int kbt_rm_rf(const char *path);

/* Removes the files names (NULL-terminated) from dir, then dir: -ENOTEMPTY when
 * the code under test left a file the test did not expect, which some
 * teardowns count as a failure. 0 or -errno. */
int kbt_rmdir_files(const char *dir, const char *const *names);

/* Puts a fixture file in place (created 0600 or truncated): a config, a key, a
 * file the code under test must refuse. */
void kbt_write_file(const char *path, const void *data, size_t len);

/* The same for text, the common case. */
static inline void kbt_write_text(const char *path, const char *text) {
        kbt_write_file(path, text, strlen(text));
}

/* Reads back a whole file the code under test wrote, NUL-terminated so that
 * tests can search it as text; its length in *ret_len when not NULL. */
char *kbt_read_file(const char *path, size_t *ret_len);

/* ---- sockets ---- */

/* An AF_UNIX socket of type bound to path, listening when backlog >= 0: the
 * far end for code that connects to a path (journald, a peer). fd or -errno. */
int kbt_unix_bind(const char *path, int type, int backlog);

/* An AF_UNIX socket of type connected to path: a client of the code under
 * test. fd or -errno. */
int kbt_unix_connect(const char *path, int type);

/* A TCP socket on 127.0.0.1 at a port the kernel picks (in *ret_port),
 * listening when backlog >= 0: a fake provider's listener, or, not
 * listening, a port that refuses connections. fd or -errno. */
int kbt_tcp_loopback(int backlog, uint16_t *ret_port);

/* ---- the event loop ---- */

/* Runs e for usec, a pass at most step_usec long, failing the test on a loop
 * error: lets timers, peers and threads act before a test looks. */
void kbt_run_for(sd_event *e, uint64_t usec, uint64_t step_usec);

/* Runs e, a pass at most step_usec long, until cond holds or timeout_usec has
 * passed; evaluates to the first loop error, 0 if none. It asserts nothing:
 * some tests wait for what must not happen, and some loops must not fail. */
#define kbt_run_until(e, cond, timeout_usec, step_usec)                                 \
        ({                                                                              \
                uint64_t _kbt_end = kb_now_usec() + (timeout_usec);                     \
                int _kbt_r = 0;                                                         \
                while (!(cond) && kb_now_usec() < _kbt_end) {                           \
                        int _kbt_k = sd_event_run((e), (step_usec));                    \
                        if (_kbt_k < 0 && _kbt_r == 0)                                  \
                                _kbt_r = _kbt_k;                                        \
                }                                                                       \
                _kbt_r;                                                                 \
        })

/* ---- fixtures ---- */

/* A config from text (keys not checked), or the test fails with the parser's
 * message: for tests of what is built on a config, not of the parser. */
struct kb_config *kbt_config(const char *name, const char *text);

/* A team with no limits and unpriced unset, as a [team:] section without keys. */
struct kb_team kbt_team(const char *name);

/* A quota configured with the n teams. */
struct kb_quota *kbt_quota(struct kb_team *teams, size_t n);

/* The window of limit l of team at now, as the admin view shows it. */
struct kb_quota_window kbt_window(struct kb_quota *q, const char *team, uint64_t now, kb_quota_limit l);

/* A record with only MESSAGE (printf format): the least a journal test can submit. */
struct kb_record *kbt_record(const char *fmt, ...) _printf_(1, 2);
