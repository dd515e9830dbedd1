/* SPDX-License-Identifier: MIT */
/* The journal spool (agent/spool.c) and the journal writer's use of it
 * (agent/journal.c): order, exactly once, torn tails, bounds, restarts. */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "helper.h"
#include "journal.h"
#include "spool.h"
#include "util.h"

static char tmp[256];

static int setup(void **state) {
        kbt_mkdtemp(tmp, sizeof(tmp), "spool");
        return 0;
}

static int teardown(void **state) {
        (void) kbt_rm_rf(tmp);
        return 0;
}

static char *spool_dir(void) {
        static char d[300];
        snprintf(d, sizeof(d), "%s/spool", tmp);
        return d;
}

/* Record i: "MESSAGE=msg i", "N=i", and (every third) a value with odd bytes. */
static int append_n(struct kb_spool *s, unsigned i) {
        char a[64], b[64], c[64];
        struct iovec iov[3];
        size_t n = 2;

        snprintf(a, sizeof(a), "MESSAGE=msg %u", i);
        snprintf(b, sizeof(b), "N=%u", i);
        iov[0] = (struct iovec) { a, strlen(a) };
        iov[1] = (struct iovec) { b, strlen(b) };
        if (i % 3 == 0) {
                snprintf(c, sizeof(c), "X=a\nb\"c\\%c", 0x7f);
                iov[n++] = (struct iovec) { c, strlen(c) };
        }
        return kb_spool_append(s, iov, n);
}

/* Peek the head and check it is record i; pop it. */
static void expect_n(struct kb_spool *s, unsigned i) {
        struct kb_spool_entry e = {};
        char want[64];

        assert_int_equal(kb_spool_peek(s, &e), 1);
        assert_int_equal(e.n, i % 3 == 0 ? 3 : 2);
        snprintf(want, sizeof(want), "MESSAGE=msg %u", i);
        assert_int_equal(e.iov[0].iov_len, strlen(want));
        assert_memory_equal(e.iov[0].iov_base, want, strlen(want));
        snprintf(want, sizeof(want), "N=%u", i);
        assert_int_equal(e.iov[1].iov_len, strlen(want));
        assert_memory_equal(e.iov[1].iov_base, want, strlen(want));
        if (i % 3 == 0) {
                snprintf(want, sizeof(want), "X=a\nb\"c\\%c", 0x7f);
                assert_int_equal(e.iov[2].iov_len, strlen(want));
                assert_memory_equal(e.iov[2].iov_base, want, strlen(want));
        }
        kb_spool_entry_clear(&e);
        assert_null(e.iov);
        assert_int_equal(kb_spool_pop(s), 0);
}

static unsigned count_segments(void) {
        DIR *d = opendir(spool_dir());
        struct dirent *de;
        unsigned n = 0;

        assert_non_null(d);
        while ((de = readdir(d)))
                if (strlen(de->d_name) == 20 && strstr(de->d_name, ".seg"))
                        n++;
        closedir(d);
        return n;
}

/* The newest segment's path. */
static void last_segment(char *ret, size_t size) {
        DIR *d = opendir(spool_dir());
        struct dirent *de;
        char best[300] = "";

        assert_non_null(d);
        while ((de = readdir(d)))
                if (strlen(de->d_name) == 20 && strstr(de->d_name, ".seg") && strcmp(de->d_name, best) > 0)
                        snprintf(best, sizeof(best), "%s", de->d_name);
        closedir(d);
        assert_true(best[0]);
        snprintf(ret, size, "%s/%s", spool_dir(), best);
}

static off_t file_size(const char *p) {
        struct stat st;
        assert_int_equal(stat(p, &st), 0);
        return st.st_size;
}

/* ---- the spool ---- */

static void test_bad_args(void **state) {
        struct kb_spool *s = NULL;
        struct kb_spool_entry e = {};
        char p[512];

        assert_int_equal(kb_spool_open(NULL, 0, 0, &s), -EINVAL);
        assert_int_equal(kb_spool_open("", 0, 0, &s), -EINVAL);
        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, NULL), -EINVAL);
        snprintf(p, sizeof(p), "%s/missing/spool", tmp);
        assert_int_equal(kb_spool_open(p, 0, 0, &s), -ENOENT);
        assert_null(s);
        /* A file where the directory should be. */
        snprintf(p, sizeof(p), "%s/file", tmp);
        close(open(p, O_CREAT | O_WRONLY, 0600));
        assert_true(kb_spool_open(p, 0, 0, &s) < 0);
        assert_null(s);

        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        assert_int_equal(kb_spool_append(s, NULL, 1), -EINVAL);
        struct iovec one = { (char *) "A=1", 3 };
        assert_int_equal(kb_spool_append(s, &one, 0), -EINVAL);
        struct iovec many[KB_SPOOL_MAX_ITEMS + 1];
        for (size_t i = 0; i < ELEMENTSOF(many); i++)
                many[i] = one;
        assert_int_equal(kb_spool_append(s, many, ELEMENTSOF(many)), -E2BIG);
        struct iovec huge = { (char *) "A", KB_SPOOL_PAYLOAD_MAX + 1 };
        assert_int_equal(kb_spool_append(s, &huge, 1), -E2BIG);
        struct iovec null_base = { NULL, 3 };
        assert_int_equal(kb_spool_append(s, &null_base, 1), -EINVAL);
        assert_int_equal(kb_spool_n_pending(s), 0);
        /* Empty: nothing to read or pop. */
        assert_int_equal(kb_spool_peek(s, &e), 0);
        assert_int_equal(kb_spool_pop(s), -ENODATA);
        assert_int_equal(kb_spool_peek(NULL, &e), -EINVAL);
        assert_int_equal(kb_spool_peek(s, NULL), -EINVAL);
        assert_int_equal(kb_spool_pop(NULL), -EINVAL);
        assert_int_equal(kb_spool_append(NULL, &one, 1), -EINVAL);
        assert_int_equal(kb_spool_sync(NULL), -EINVAL);
        assert_int_equal(kb_spool_n_pending(NULL), 0);
        kb_spool_entry_clear(NULL);
        assert_null(kb_spool_free(s));
        assert_null(kb_spool_free(NULL));
}

static void test_order(void **state) {
        struct kb_spool *s = NULL;

        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        for (unsigned i = 0; i < 1000; i++)
                assert_int_equal(append_n(s, i), 0);
        assert_int_equal(kb_spool_sync(s), 0);
        assert_int_equal(kb_spool_n_pending(s), 1000);
        /* Interleaved appends keep their place behind older records. */
        for (unsigned i = 0; i < 500; i++)
                expect_n(s, i);
        for (unsigned i = 1000; i < 1100; i++)
                assert_int_equal(append_n(s, i), 0);
        for (unsigned i = 500; i < 1100; i++)
                expect_n(s, i);
        assert_int_equal(kb_spool_n_pending(s), 0);
        assert_int_equal(kb_spool_n_bytes(s), 0);
        /* Emptied: no segment files left. */
        assert_int_equal(count_segments(), 0);
        /* Peek without pop returns the same record again. */
        assert_int_equal(append_n(s, 7), 0);
        struct kb_spool_entry e = {};
        assert_int_equal(kb_spool_peek(s, &e), 1);
        kb_spool_entry_clear(&e);
        expect_n(s, 7);
        kb_spool_free(s);
}

static void test_reopen_resumes(void **state) {
        struct kb_spool *s = NULL;

        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        for (unsigned i = 0; i < 10; i++)
                assert_int_equal(append_n(s, i), 0);
        for (unsigned i = 0; i < 3; i++)
                expect_n(s, i);
        kb_spool_free(s);

        /* Sent records are not sent again; the rest come in order. */
        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        assert_int_equal(kb_spool_n_pending(s), 7);
        assert_int_equal(kb_spool_n_discarded(s), 0);
        expect_n(s, 3);
        /* New appends after a restart go behind the old ones. */
        assert_int_equal(append_n(s, 100), 0);
        kb_spool_free(s);
        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        assert_int_equal(kb_spool_n_pending(s), 7);
        for (unsigned i = 4; i < 10; i++)
                expect_n(s, i);
        expect_n(s, 100);
        assert_int_equal(kb_spool_peek(s, &(struct kb_spool_entry) {}), 0);
        kb_spool_free(s);
}

static void test_truncated_tail(void **state) {
        struct kb_spool *s = NULL;
        char seg[512];

        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        for (unsigned i = 0; i < 5; i++)
                assert_int_equal(append_n(s, i), 0);
        kb_spool_free(s);

        /* A crash in the middle of the last append: its tail is missing. */
        last_segment(seg, sizeof(seg));
        off_t size = file_size(seg);
        assert_int_equal(truncate(seg, size - 3), 0);

        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        assert_int_equal(kb_spool_n_pending(s), 4);
        assert_int_equal(kb_spool_n_discarded(s), 1);
        for (unsigned i = 0; i < 4; i++)
                expect_n(s, i);
        assert_int_equal(kb_spool_n_pending(s), 0);
        kb_spool_free(s);

        /* Only a record header's first bytes made it. */
        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        for (unsigned i = 0; i < 3; i++)
                assert_int_equal(append_n(s, i), 0);
        kb_spool_free(s);
        last_segment(seg, sizeof(seg));
        int fd = open(seg, O_WRONLY | O_APPEND);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, "KBR1\x10", 5), 5);
        close(fd);
        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        assert_int_equal(kb_spool_n_pending(s), 3);
        assert_int_equal(kb_spool_n_discarded(s), 1);
        /* and appends after it are readable in order */
        assert_int_equal(append_n(s, 3), 0);
        for (unsigned i = 0; i < 4; i++)
                expect_n(s, i);
        kb_spool_free(s);
}

static void test_corrupt_record(void **state) {
        struct kb_spool *s = NULL;
        char seg[512];

        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        for (unsigned i = 0; i < 5; i++)
                assert_int_equal(append_n(s, i), 0);
        kb_spool_free(s);
        last_segment(seg, sizeof(seg));
        /* Flip the last byte of the file: record 4's payload. */
        off_t size = file_size(seg);
        int fd = open(seg, O_RDWR);
        char c;
        assert_int_equal(pread(fd, &c, 1, size - 1), 1);
        c ^= 0x5a;
        assert_int_equal(pwrite(fd, &c, 1, size - 1), 1);
        close(fd);

        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        assert_int_equal(kb_spool_n_pending(s), 4);
        assert_int_equal(kb_spool_n_discarded(s), 1);
        for (unsigned i = 0; i < 4; i++)
                expect_n(s, i);
        kb_spool_free(s);

        /* An empty segment file and a stray file are ignored. */
        char p[512];
        snprintf(p, sizeof(p), "%s/00000000000000ff.seg", spool_dir());
        close(open(p, O_CREAT | O_WRONLY, 0600));
        snprintf(p, sizeof(p), "%s/notes.txt", spool_dir());
        close(open(p, O_CREAT | O_WRONLY, 0600));
        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        assert_int_equal(kb_spool_n_pending(s), 0);
        assert_int_equal(kb_spool_n_discarded(s), 1);
        assert_int_equal(append_n(s, 9), 0);
        expect_n(s, 9);
        kb_spool_free(s);
}

static void test_garbled_head_resends(void **state) {
        struct kb_spool *s = NULL;
        char p[512];

        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        for (unsigned i = 0; i < 6; i++)
                assert_int_equal(append_n(s, i), 0);
        expect_n(s, 0);
        expect_n(s, 1);
        kb_spool_free(s);

        /* A head file that makes no sense: resending beats losing. */
        snprintf(p, sizeof(p), "%s/head", spool_dir());
        int fd = open(p, O_WRONLY | O_TRUNC);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, "garbage", 7), 7);
        close(fd);
        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        assert_int_equal(kb_spool_n_pending(s), 6);
        kb_spool_free(s);

        /* A head offset that is not a record boundary: same. */
        char seg[512], head[64];
        last_segment(seg, sizeof(seg));
        const char *base = strrchr(seg, '/') + 1;
        snprintf(head, sizeof(head), "%.16s %016x\n", base, 11);
        fd = open(p, O_WRONLY | O_TRUNC);
        assert_int_equal(write(fd, head, strlen(head)), (ssize_t) strlen(head));
        close(fd);
        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        assert_int_equal(kb_spool_n_pending(s), 6);
        for (unsigned i = 0; i < 6; i++)
                expect_n(s, i);
        kb_spool_free(s);
}

static void test_bounds(void **state) {
        struct kb_spool *s = NULL;

        /* By records. */
        assert_int_equal(kb_spool_open(spool_dir(), 0, 10, &s), 0);
        for (unsigned i = 0; i < 10; i++)
                assert_int_equal(append_n(s, i), 0);
        assert_int_equal(append_n(s, 10), -ENOSPC);
        assert_int_equal(kb_spool_n_pending(s), 10);
        expect_n(s, 0);
        assert_int_equal(append_n(s, 10), 0); /* room again */
        for (unsigned i = 1; i <= 10; i++)
                expect_n(s, i);
        kb_spool_free(s);

        /* By bytes: 8 for the segment header, then records of
         * 16 + 4 + (4 + 13) + (4 + 3) = 44 bytes (i not a multiple of 3). */
        assert_int_equal(kb_spool_open(spool_dir(), 8 + 3 * 44, 0, &s), 0);
        assert_int_equal(append_n(s, 1), 0);
        assert_int_equal(append_n(s, 2), 0);
        assert_int_equal(append_n(s, 4), 0);
        assert_int_equal(kb_spool_n_bytes(s), 8 + 3 * 44);
        assert_int_equal(append_n(s, 5), -ENOSPC);
        assert_int_equal(kb_spool_n_pending(s), 3);
        expect_n(s, 1);
        expect_n(s, 2);
        expect_n(s, 4);
        assert_int_equal(append_n(s, 5), 0);
        expect_n(s, 5);
        kb_spool_free(s);
}

static void test_segments(void **state) {
        struct kb_spool *s = NULL;
        _cleanup_free_ char *big = malloc(KB_RECORD_MAX_VALUE + 8);
        size_t n_big = 150;

        assert_non_null(big);
        memcpy(big, "BIG=", 4);
        memset(big + 4, 'x', KB_RECORD_MAX_VALUE);
        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        /* 150 × 64 KiB ≈ 9.4 MiB: three segments of 4 MiB. */
        for (size_t i = 0; i < n_big; i++) {
                big[4] = (char) ('a' + i % 26);
                struct iovec iov = { big, 4 + KB_RECORD_MAX_VALUE };
                assert_int_equal(kb_spool_append(s, &iov, 1), 0);
        }
        assert_int_equal(kb_spool_sync(s), 0);
        assert_int_equal(count_segments(), 3);
        for (size_t i = 0; i < 100; i++) {
                struct kb_spool_entry e = {};
                assert_int_equal(kb_spool_peek(s, &e), 1);
                assert_int_equal(e.n, 1);
                assert_int_equal(e.iov[0].iov_len, 4 + KB_RECORD_MAX_VALUE);
                assert_int_equal(((char *) e.iov[0].iov_base)[4], (char) ('a' + i % 26));
                kb_spool_entry_clear(&e);
                assert_int_equal(kb_spool_pop(s), 0);
        }
        /* Fully sent segments are removed as the head passes them. */
        assert_int_equal(count_segments(), 2);
        kb_spool_free(s);
        assert_int_equal(kb_spool_open(spool_dir(), 0, 0, &s), 0);
        assert_int_equal(kb_spool_n_pending(s), n_big - 100);
        while (kb_spool_n_pending(s) > 0)
                assert_int_equal(kb_spool_pop(s), 0);
        assert_int_equal(count_segments(), 0);
        kb_spool_free(s);
}

/* ---- the journal writer with a spool ---- */

#define CAP_MAX 30000

static struct {
        pthread_mutex_t lock;
        bool refuse;            /* journald away */
        int refuse_rc;
        unsigned delay_usec;
        unsigned n;
        unsigned refused;
        char *msgs[CAP_MAX];
        bool spooled[CAP_MAX];
} cap = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void cap_reset(void) {
        pthread_mutex_lock(&cap.lock);
        for (unsigned i = 0; i < cap.n; i++)
                free(cap.msgs[i]);
        cap.n = cap.refused = 0;
        cap.refuse = false;
        cap.refuse_rc = -ECONNREFUSED;
        cap.delay_usec = 0;
        pthread_mutex_unlock(&cap.lock);
}

static void cap_refuse(bool on) {
        pthread_mutex_lock(&cap.lock);
        cap.refuse = on;
        pthread_mutex_unlock(&cap.lock);
}

static unsigned cap_n(void) {
        pthread_mutex_lock(&cap.lock);
        unsigned n = cap.n;
        pthread_mutex_unlock(&cap.lock);
        return n;
}

static int cap_send(const struct iovec *iov, int n, void *userdata) {
        const char *msg = NULL;
        size_t msg_len = 0;
        bool spooled = false, ident = false;
        int rc = 0;

        if (cap.delay_usec)
                usleep(cap.delay_usec);
        for (int i = 0; i < n; i++) {
                if (iov[i].iov_len > 8 && memcmp(iov[i].iov_base, "MESSAGE=", 8) == 0)
                {
                        /* Items are not NUL-terminated (the spool's aren't). */
                        msg = (const char *) iov[i].iov_base + 8;
                        msg_len = iov[i].iov_len - 8;
                }
                if (iov[i].iov_len == 19 && memcmp(iov[i].iov_base, "KEYBROKER_SPOOLED=1", 19) == 0)
                        spooled = true;
                if (iov[i].iov_len > 18 && memcmp(iov[i].iov_base, "SYSLOG_IDENTIFIER=", 18) == 0)
                        ident = true;
        }
        pthread_mutex_lock(&cap.lock);
        if (cap.refuse) {
                cap.refused++;
                rc = cap.refuse_rc;
        } else if (cap.n < CAP_MAX && msg && ident) {
                cap.spooled[cap.n] = spooled;
                cap.msgs[cap.n++] = strndup(msg, msg_len);
        } else
                rc = -EIO;
        pthread_mutex_unlock(&cap.lock);
        return rc;
}

/* Wait (up to 20 s) until the sender holds n records. */
static void wait_cap(unsigned n) {
        for (int i = 0; i < 20000 && cap_n() < n; i++)
                usleep(1000);
        assert_int_equal(cap_n(), n);
}

/* Records 0..n-1 each exactly once, in order. */
static void expect_cap_in_order(unsigned n) {
        char want[32];

        assert_int_equal(cap_n(), n);
        for (unsigned i = 0; i < n; i++) {
                snprintf(want, sizeof(want), "m%u", i);
                assert_string_equal(cap.msgs[i], want);
        }
}

static struct kb_journal *journal_with_spool(size_t max_queue) {
        struct kb_journal *j = NULL;

        assert_int_equal(kb_journal_new(max_queue, &j), 0);
        kb_journal_set_sender(j, cap_send, NULL);
        assert_int_equal(kb_journal_set_spool_dir(j, tmp), 0);
        return j;
}

static void test_journal_away_and_back(void **state) {
        struct kb_journal *j;

        cap_reset();
        j = journal_with_spool(1024);
        assert_int_equal(kb_journal_set_spool_dir(j, tmp), -EBUSY);
        assert_int_equal(kb_journal_set_spool_dir(NULL, tmp), -EINVAL);
        assert_int_equal(kb_journal_set_spool_dir(j, ""), -EINVAL);

        for (unsigned i = 0; i < 10; i++)
                assert_int_equal(kb_journal_submit(j, kbt_record("m%u", i)), 0);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        expect_cap_in_order(10);

        /* journald goes away: everything goes to the spool, none lost. */
        cap_refuse(true);
        for (unsigned i = 10; i < 500; i++)
                assert_int_equal(kb_journal_submit(j, kbt_record("m%u", i)), 0);
        /* flush returns once it is all spooled, journald being away */
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_int_equal(kb_journal_n_spool_pending(j), 490);
        assert_int_equal(kb_journal_n_spooled(j), 490);
        assert_int_equal(kb_journal_n_dropped(j), 0);
        assert_int_equal(cap_n(), 10);
        assert_true(cap.refused >= 1);

        /* Back: spooled records first, then newer ones, each once. */
        cap_refuse(false);
        for (unsigned i = 500; i < 600; i++)
                assert_int_equal(kb_journal_submit(j, kbt_record("m%u", i)), 0);
        wait_cap(600);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        expect_cap_in_order(600);
        assert_false(cap.spooled[9]);
        assert_true(cap.spooled[10]);
        assert_true(cap.spooled[499]);
        assert_int_equal(kb_journal_n_written(j), 600);
        assert_int_equal(kb_journal_n_dropped(j), 0);
        assert_int_equal(kb_journal_n_spool_pending(j), 0);
        kb_journal_free(j, USEC_PER_SEC);
}

static void test_journal_restart(void **state) {
        struct kb_journal *j;

        cap_reset();
        cap_refuse(true);
        j = journal_with_spool(64);
        for (unsigned i = 0; i < 40; i++)
                assert_int_equal(kb_journal_submit(j, kbt_record("m%u", i)), 0);
        /* Stopping with journald away: what is queued is spooled. */
        kb_journal_free(j, 100 * USEC_PER_MSEC);
        assert_int_equal(cap_n(), 0);

        /* The next start sends it first, before anything new. */
        cap_refuse(false);
        j = journal_with_spool(64);
        for (unsigned i = 40; i < 50; i++)
                assert_int_equal(kb_journal_submit(j, kbt_record("m%u", i)), 0);
        wait_cap(50);
        expect_cap_in_order(50);
        kb_journal_free(j, USEC_PER_SEC);
}

static void test_journal_refused_record(void **state) {
        struct kb_journal *j;

        /* A record journald refuses for good (EMSGSIZE) is dropped after a
         * few tries instead of blocking the spool forever. */
        cap_reset();
        cap.refuse_rc = -EMSGSIZE;
        cap_refuse(true);
        j = journal_with_spool(64);
        assert_int_equal(kb_journal_submit(j, kbt_record("m0")), 0);
        for (int i = 0; i < 5000 && kb_journal_n_dropped(j) == 0; i++)
                usleep(1000);
        assert_int_equal(kb_journal_n_dropped(j), 1);
        for (int i = 0; i < 5000 && kb_journal_n_spool_pending(j) > 0; i++)
                usleep(1000);
        assert_int_equal(kb_journal_n_spool_pending(j), 0);
        cap_refuse(false);
        assert_int_equal(kb_journal_submit(j, kbt_record("m1")), 0);
        wait_cap(1);
        assert_string_equal(cap.msgs[0], "m1");
        kb_journal_free(j, USEC_PER_SEC);
}

static void test_journal_slow_spills(void **state) {
        struct kb_journal *j;
        unsigned n = 3000;

        /* journald takes 200 µs a record, records come every 20 µs: a
         * 256-slot queue would overflow; the spill keeps every record. */
        cap_reset();
        cap.delay_usec = 200;
        j = journal_with_spool(256);
        for (unsigned i = 0; i < n; i++) {
                assert_int_equal(kb_journal_submit(j, kbt_record("m%u", i)), 0);
                usleep(20);
        }
        assert_int_equal(kb_journal_n_dropped(j), 0);
        assert_true(kb_journal_n_spooled(j) > 0);
        wait_cap(n);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        expect_cap_in_order(n);
        assert_int_equal(kb_journal_n_written(j), n);
        kb_journal_free(j, USEC_PER_SEC);
}

static void test_journal_spool_bound(void **state) {
        struct kb_journal *j;

        /* Without a usable spool directory, records are dropped as before. */
        cap_reset();
        assert_int_equal(kb_journal_new(16, &j), 0);
        kb_journal_set_sender(j, cap_send, NULL);
        char p[512];
        snprintf(p, sizeof(p), "%s/nope/deeper", tmp);
        assert_int_equal(kb_journal_set_spool_dir(j, p), -ENOENT);
        cap_refuse(true);
        assert_int_equal(kb_journal_submit(j, kbt_record("m0")), 0);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_int_equal(kb_journal_n_dropped(j), 1);
        assert_int_equal(kb_journal_n_spooled(j), 0);
        kb_journal_free(j, USEC_PER_SEC);
        cap_reset();
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_bad_args, setup, teardown),
                cmocka_unit_test_setup_teardown(test_order, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reopen_resumes, setup, teardown),
                cmocka_unit_test_setup_teardown(test_truncated_tail, setup, teardown),
                cmocka_unit_test_setup_teardown(test_corrupt_record, setup, teardown),
                cmocka_unit_test_setup_teardown(test_garbled_head_resends, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bounds, setup, teardown),
                cmocka_unit_test_setup_teardown(test_segments, setup, teardown),
                cmocka_unit_test_setup_teardown(test_journal_away_and_back, setup, teardown),
                cmocka_unit_test_setup_teardown(test_journal_restart, setup, teardown),
                cmocka_unit_test_setup_teardown(test_journal_refused_record, setup, teardown),
                cmocka_unit_test_setup_teardown(test_journal_slow_spills, setup, teardown),
                cmocka_unit_test_setup_teardown(test_journal_spool_bound, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
