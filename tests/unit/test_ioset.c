/* SPDX-License-Identifier: MIT */
/* ioset: many sockets as one loop source, served in batches; a socket
 * freed by a handler gets no event of the same batch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdbool.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ioset.h"

#define N_PAIRS 200

struct peer {
        struct kb_io *io;
        int fd, other;
        unsigned calls;
        uint32_t last;
        bool drain;             /* read what is there */
        struct peer *victim;    /* freed by this one's handler */
        bool purge;             /* frees purge_from[0..purge_n), itself included */
};

static struct peer *purge_from;
static size_t purge_n;

static void on_event(struct kb_io *io, int fd, uint32_t revents, void *userdata) {
        struct peer *p = userdata;

        assert_ptr_equal(io, p->io);
        assert_int_equal(fd, p->fd);
        p->calls++;
        p->last = revents;
        if (p->drain) {
                char c;
                while (read(fd, &c, 1) > 0)
                        ;
        }
        if (p->purge && purge_from) {
                for (size_t i = 0; i < purge_n; i++)
                        if (purge_from[i].io)
                                purge_from[i].io = kb_io_free(purge_from[i].io);
                purge_from = NULL;
        }
        if (p->victim && p->victim->io) {
                p->victim->io = kb_io_free(p->victim->io);
                p->victim->victim = NULL;
        }
}

static void pair(struct peer *a) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
        a->fd = sv[0];
        a->other = sv[1];
}

/* Every one of many ready sockets is served, a batch per loop pass, and a
 * level-triggered socket left unread is reported again. */
static void test_many_ready(void **state) {
        sd_event *e = NULL;
        struct kb_ioset *s = NULL;
        static struct peer p[N_PAIRS];

        assert_int_equal(sd_event_new(&e), 0);
        assert_int_equal(kb_ioset_new(e, "test", &s), 0);
        for (size_t i = 0; i < N_PAIRS; i++) {
                p[i] = (struct peer) {};
                pair(&p[i]);
                assert_int_equal(kb_ioset_add(s, p[i].fd, EPOLLIN, on_event, &p[i], &p[i].io), 0);
                assert_int_equal(write(p[i].other, "x", 1), 1);
        }
        unsigned passes = 0;
        for (bool all = false; !all; passes++) {
                assert_true(sd_event_run(e, 1000 * 1000) > 0);
                all = true;
                for (size_t i = 0; i < N_PAIRS; i++)
                        all = all && p[i].calls > 0;
        }
        assert_true(passes >= (N_PAIRS + KB_IOSET_BATCH - 1) / KB_IOSET_BATCH);
        assert_true(passes <= N_PAIRS / 2);
        /* nothing read: still ready */
        assert_true(sd_event_run(e, 1000 * 1000) > 0);
        unsigned total = 0;
        for (size_t i = 0; i < N_PAIRS; i++) {
                assert_true(p[i].last & EPOLLIN);
                total += p[i].calls;
        }
        assert_true(total > N_PAIRS);

        /* EPOLLOUT only when asked */
        assert_int_equal(kb_io_set_events(p[0].io, EPOLLOUT), 0);
        for (size_t i = 1; i < N_PAIRS; i++)
                p[i].io = kb_io_free(p[i].io);
        p[0].calls = 0;
        assert_true(sd_event_run(e, 1000 * 1000) > 0);
        assert_int_equal(p[0].calls, 1);
        assert_int_equal(p[0].last & (EPOLLIN | EPOLLOUT), EPOLLOUT);

        p[0].io = kb_io_free(p[0].io);
        for (size_t i = 0; i < N_PAIRS; i++) {
                close(p[i].fd);
                close(p[i].other);
        }
        kb_ioset_free(s);
        sd_event_unref(e);
}

/* Two sockets ready in one batch; whichever is served first frees the
 * other, which then gets nothing (and its memory is not touched: ASan). */
static void test_freed_in_batch(void **state) {
        sd_event *e = NULL;
        struct kb_ioset *s = NULL;
        struct peer a = {}, b = {};

        assert_int_equal(sd_event_new(&e), 0);
        assert_int_equal(kb_ioset_new(e, "test", &s), 0);
        pair(&a);
        pair(&b);
        a.victim = &b;
        b.victim = &a;
        a.drain = b.drain = true;
        assert_int_equal(kb_ioset_add(s, a.fd, EPOLLIN, on_event, &a, &a.io), 0);
        assert_int_equal(kb_ioset_add(s, b.fd, EPOLLIN, on_event, &b, &b.io), 0);
        assert_int_equal(write(a.other, "x", 1), 1);
        assert_int_equal(write(b.other, "x", 1), 1);

        assert_true(sd_event_run(e, 1000 * 1000) > 0);
        assert_int_equal(a.calls + b.calls, 1);
        /* and not later either */
        assert_int_equal(sd_event_run(e, 0), 0);
        assert_int_equal(a.calls + b.calls, 1);

        kb_io_free(a.io);
        kb_io_free(b.io);
        close(a.fd);
        close(a.other);
        close(b.fd);
        close(b.other);
        kb_ioset_free(s);
        sd_event_unref(e);
}

static unsigned served(struct peer *p, size_t n) {
        unsigned total = 0;
        for (size_t i = 0; i < n; i++)
                total += p[i].calls;
        return total;
}

/* A set with few sockets gives each its own loop source (sd-event serves
 * one source per pass); past KB_IOSET_DIRECT_MAX it batches, and at
 * KB_IOSET_DIRECT_MIN it goes back. Through every switch each socket stays
 * watched with the events asked for, and a handler that frees sockets in
 * the middle of a batch (switching the set back) is safe. */
static void test_modes(void **state) {
        enum { D = KB_IOSET_DIRECT_MAX, N = KB_IOSET_DIRECT_MAX + 8, M = KB_IOSET_DIRECT_MIN };
        sd_event *e = NULL;
        struct kb_ioset *s = NULL;
        static struct peer p[N];

        assert_true(D >= 2 && M >= 1 && M < D);
        assert_int_equal(sd_event_new(&e), 0);
        assert_int_equal(kb_ioset_new(e, "test", &s), 0);
        for (size_t i = 0; i < N; i++) {
                p[i] = (struct peer) { .drain = true };
                pair(&p[i]);
        }
        /* direct: D ready sockets, one served per pass */
        for (size_t i = 0; i < D; i++) {
                assert_int_equal(kb_ioset_add(s, p[i].fd, EPOLLIN, on_event, &p[i], &p[i].io), 0);
                assert_int_equal(write(p[i].other, "x", 1), 1);
        }
        assert_int_equal(kb_io_set_events(p[0].io, EPOLLIN | EPOLLOUT), 0);
        assert_true(sd_event_run(e, 1000 * 1000) > 0);
        assert_int_equal(served(p, N), 1);
        while (served(p, N) < D)
                assert_true(sd_event_run(e, 1000 * 1000) > 0);

        /* batched: the same D in one pass, with the events asked for */
        for (size_t i = D; i < N; i++)
                assert_int_equal(kb_ioset_add(s, p[i].fd, EPOLLIN, on_event, &p[i], &p[i].io), 0);
        assert_int_equal(kb_io_set_events(p[0].io, EPOLLIN), 0);
        for (size_t i = 0; i < N; i++)
                p[i].calls = 0;
        for (size_t i = 0; i < D; i++)
                assert_int_equal(write(p[i].other, "x", 1), 1);
        assert_true(sd_event_run(e, 1000 * 1000) > 0);
        assert_int_equal(served(p, N), D);
        for (size_t i = 0; i < D; i++)
                assert_int_equal(p[i].last, EPOLLIN);

        /* Every socket is ready; whichever of p[M..N) is served first frees
         * all of p[M..N), itself included: the set goes direct while events
         * of the batch are still to be served, and none reaches a freed one. */
        for (size_t i = 0; i < N; i++) {
                p[i].calls = 0;
                p[i].purge = i >= M;
                assert_int_equal(write(p[i].other, "x", 1), 1);
        }
        purge_from = &p[M];
        purge_n = N - M;
        assert_true(sd_event_run(e, 1000 * 1000) > 0);
        purge_from = NULL;
        size_t purged = 0;
        for (size_t i = M; i < N; i++)
                if (!p[i].io) {
                        purged++;
                        assert_true(p[i].calls <= 1);
                }
        assert_int_equal(purged, N - M);

        /* drain what the batch left; then the M left and one added back are
         * direct: both ready, one served per pass */
        while (sd_event_run(e, 0) > 0)
                ;
        assert_int_equal(kb_ioset_add(s, p[M].fd, EPOLLIN, on_event, &p[M], &p[M].io), 0);
        for (size_t i = 0; i < N; i++) {
                p[i].calls = 0;
                p[i].purge = false;
                if (p[i].io)
                        assert_int_equal(write(p[i].other, "x", 1), 1);
        }
        assert_true(sd_event_run(e, 1000 * 1000) > 0);
        assert_int_equal(served(p, N), 1);
        while (served(p, N) < M + 1)
                assert_true(sd_event_run(e, 1000 * 1000) > 0);
        assert_int_equal(served(p, N), M + 1);

        for (size_t i = 0; i < N; i++) {
                p[i].io = kb_io_free(p[i].io);
                close(p[i].fd);
                close(p[i].other);
        }
        kb_ioset_free(s);
        sd_event_unref(e);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_many_ready),
                cmocka_unit_test(test_freed_in_batch),
                cmocka_unit_test(test_modes),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
