/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "helper.h"
#include "journal-native.h"
#include "journal.h"
#include "keybroker/keybroker.h"
#include "request.h"
#include "util.h"

#define SECRET "sk-proj-THISISTHESECRETKEYVALUE0123456789"

/* What the test sender saw, and how it behaves. */
#define CAP_MAX_RECORDS 16
#define CAP_MAX_ITEMS (KB_RECORD_MAX_FIELDS + 1)

struct capture {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool gate_closed;       /* sender blocks until opened (or gate_timeout_msec) */
        unsigned gate_timeout_msec;
        unsigned entered;       /* calls that reached the sender */
        unsigned fail_next;     /* fail this many calls */
        int fail_rc;
        unsigned delay_msec;
        char *items[CAP_MAX_RECORDS][CAP_MAX_ITEMS];
        size_t n_items[CAP_MAX_RECORDS];
        size_t n_records;
};

static struct capture cap;

static void cap_reset(void) {
        pthread_mutex_lock(&cap.lock);
        for (size_t i = 0; i < cap.n_records; i++)
                for (size_t k = 0; k < cap.n_items[i]; k++)
                        free(cap.items[i][k]);
        memset(cap.items, 0, sizeof(cap.items));
        memset(cap.n_items, 0, sizeof(cap.n_items));
        cap.n_records = 0;
        cap.gate_closed = false;
        cap.gate_timeout_msec = 0;
        cap.entered = 0;
        cap.fail_next = 0;
        cap.fail_rc = 0;
        cap.delay_msec = 0;
        pthread_mutex_unlock(&cap.lock);
}

static void sleep_msec(unsigned msec) {
        struct timespec ts = { .tv_sec = msec / 1000, .tv_nsec = (long) (msec % 1000) * 1000000L };
        nanosleep(&ts, NULL);
}

static int test_send(const struct iovec *iov, int n, void *userdata) {
        struct capture *c = userdata;

        /* On the writer thread: cmocka's asserts can't be used here. */
        if (c != &cap)
                abort();
        pthread_mutex_lock(&c->lock);
        c->entered++;
        pthread_cond_broadcast(&c->cond);
        if (c->gate_closed) {
                struct timespec deadline;
                clock_gettime(CLOCK_REALTIME, &deadline);
                deadline.tv_sec += c->gate_timeout_msec ? 0 : 30;
                deadline.tv_nsec += (long) c->gate_timeout_msec * 1000000L;
                while (deadline.tv_nsec >= 1000000000L) {
                        deadline.tv_sec++;
                        deadline.tv_nsec -= 1000000000L;
                }
                while (c->gate_closed)
                        if (pthread_cond_timedwait(&c->cond, &c->lock, &deadline) == ETIMEDOUT)
                                break;
        }
        if (c->fail_next > 0) {
                c->fail_next--;
                pthread_mutex_unlock(&c->lock);
                return c->fail_rc;
        }
        if (c->n_records < CAP_MAX_RECORDS) {
                size_t i = c->n_records++;
                for (int k = 0; k < n && k < CAP_MAX_ITEMS; k++)
                        c->items[i][k] = strndup(iov[k].iov_base, iov[k].iov_len);
                c->n_items[i] = (size_t) n;
        }
        pthread_mutex_unlock(&c->lock);
        if (c->delay_msec)
                sleep_msec(c->delay_msec);
        return 0;
}

static void cap_wait_entered(unsigned n) {
        pthread_mutex_lock(&cap.lock);
        while (cap.entered < n)
                pthread_cond_wait(&cap.cond, &cap.lock);
        pthread_mutex_unlock(&cap.lock);
}

static void cap_gate(bool closed) {
        pthread_mutex_lock(&cap.lock);
        cap.gate_closed = closed;
        pthread_cond_broadcast(&cap.cond);
        pthread_mutex_unlock(&cap.lock);
}

/* Value of FIELD in captured record i; fails the test unless present exactly once. */
static const char *cap_field(size_t i, const char *field) {
        const char *found = NULL;
        size_t flen = strlen(field);

        assert_true(i < cap.n_records);
        for (size_t k = 0; k < cap.n_items[i]; k++) {
                const char *it = cap.items[i][k];
                if (strncmp(it, field, flen) == 0 && it[flen] == '=') {
                        if (found)
                                fail_msg("field %s appears twice", field);
                        found = it + flen + 1;
                }
        }
        if (!found)
                fail_msg("field %s missing", field);
        return found;
}

static bool cap_has_field(size_t i, const char *field) {
        size_t flen = strlen(field);

        for (size_t k = 0; k < cap.n_items[i]; k++)
                if (strncmp(cap.items[i][k], field, flen) == 0 && cap.items[i][k][flen] == '=')
                        return true;
        return false;
}

static struct kb_journal *new_journal(size_t max_queue) {
        struct kb_journal *j = NULL;

        cap_reset();
        assert_int_equal(kb_journal_new(max_queue, &j), 0);
        assert_non_null(j);
        kb_journal_set_sender(j, test_send, &cap);
        return j;
}

/* ---- records ---- */

static void test_record_names(void **state) {
        struct kb_record *r = kb_record_new();
        char name[KB_RECORD_MAX_FIELD_NAME + 2];

        assert_non_null(r);
        assert_int_equal(kb_record_add(r, "MESSAGE", "x"), 0);
        assert_int_equal(kb_record_add(r, "KEYBROKER_A1_B", "x"), 0);
        assert_int_equal(kb_record_add(r, "A", ""), 0);

        static const char *const bad[] = {
                "", "_SYSTEMD_UNIT", "_", "message", "Message", "A-B", "A B", "A=B", "1ABC", "9",
                "KEYBROKER.X", "ÄB", "A\nB",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                if (kb_record_add(r, bad[i], "x") != -EINVAL)
                        fail_msg("field name \"%s\" accepted", bad[i]);
        assert_int_equal(kb_record_add(r, NULL, "x"), -EINVAL);
        assert_int_equal(kb_record_add(r, "A", NULL), -EINVAL);
        assert_int_equal(kb_record_add(NULL, "A", "x"), -EINVAL);
        assert_int_equal(kb_record_addf(r, "a", "%d", 1), -EINVAL);
        assert_int_equal(kb_record_addf(NULL, "A", "%d", 1), -EINVAL);

        memset(name, 'N', sizeof(name));
        name[KB_RECORD_MAX_FIELD_NAME] = 0;
        assert_int_equal(kb_record_add(r, name, "x"), 0);
        name[KB_RECORD_MAX_FIELD_NAME] = 'N';
        name[KB_RECORD_MAX_FIELD_NAME + 1] = 0;
        assert_int_equal(kb_record_add(r, name, "x"), -EINVAL);

        /* Only the good ones went in, in order. */
        assert_int_equal(kb_record_n_fields(r), 4);
        assert_string_equal(kb_record_item(r, 0), "MESSAGE=x");
        assert_string_equal(kb_record_item(r, 1), "KEYBROKER_A1_B=x");
        assert_string_equal(kb_record_item(r, 2), "A=");
        assert_null(kb_record_item(r, 4));
        assert_null(kb_record_item(NULL, 0));
        assert_int_equal(kb_record_n_fields(NULL), 0);
        kb_record_free(r);
        kb_record_free(NULL);
}

static void test_record_limits(void **state) {
        struct kb_record *r = kb_record_new();
        char *big = malloc(KB_RECORD_MAX_VALUE + 2);

        assert_non_null(r);
        assert_non_null(big);
        memset(big, 'v', KB_RECORD_MAX_VALUE + 1);
        big[KB_RECORD_MAX_VALUE + 1] = 0;
        assert_int_equal(kb_record_add(r, "BIG", big), -E2BIG);
        assert_int_equal(kb_record_addf(r, "BIG", "%s", big), -E2BIG);
        big[KB_RECORD_MAX_VALUE] = 0;
        assert_int_equal(kb_record_add(r, "BIG", big), 0);
        assert_int_equal(strlen(kb_record_item(r, 0)), strlen("BIG=") + KB_RECORD_MAX_VALUE);
        free(big);

        /* The printf-free adders. */
        {
                struct kb_record *n = kb_record_new();
                assert_int_equal(kb_record_add_u64(n, "A", 0), 0);
                assert_int_equal(kb_record_add_u64(n, "B", UINT64_MAX), 0);
                assert_int_equal(kb_record_add_i64(n, "C", INT64_MIN), 0);
                assert_int_equal(kb_record_add_i64(n, "D", -7), 0);
                assert_int_equal(kb_record_add_i64(n, "E", 42), 0);
                assert_int_equal(kb_record_add_capped(n, "F", NULL), 0);
                assert_int_equal(kb_record_add_n(n, "G", "abc", 2), 0);
                assert_int_equal(kb_record_add_n(n, "H", "a\0c", 3), -EINVAL);
                assert_int_equal(kb_record_add_u64(n, "bad", 1), -EINVAL);
                assert_string_equal(kb_record_item(n, 0), "A=0");
                assert_string_equal(kb_record_item(n, 1), "B=18446744073709551615");
                assert_string_equal(kb_record_item(n, 2), "C=-9223372036854775808");
                assert_string_equal(kb_record_item(n, 3), "D=-7");
                assert_string_equal(kb_record_item(n, 4), "E=42");
                assert_string_equal(kb_record_item(n, 5), "F=");
                assert_string_equal(kb_record_item(n, 6), "G=ab");
                assert_int_equal(kb_record_n_fields(n), 7);
                char *huge = malloc(KB_RECORD_MAX_VALUE + 10);
                assert_non_null(huge);
                memset(huge, 'c', KB_RECORD_MAX_VALUE + 9);
                huge[KB_RECORD_MAX_VALUE + 9] = 0;
                assert_int_equal(kb_record_add_capped(n, "CAP", huge), 0);
                assert_int_equal(strlen(kb_record_item(n, 7)), strlen("CAP=") + KB_RECORD_MAX_VALUE);
                free(huge);
                kb_record_free(n);
        }

        /* Newlines and other bytes are kept as they are. */
        assert_int_equal(kb_record_add(r, "MULTI", "line one\nline two\t\x01"), 0);
        assert_string_equal(kb_record_item(r, 1), "MULTI=line one\nline two\t\x01");
        assert_int_equal(kb_record_addf(r, "NUM", "%d-%s", 42, "x"), 0);
        assert_string_equal(kb_record_item(r, 2), "NUM=42-x");

        while (kb_record_n_fields(r) < KB_RECORD_MAX_FIELDS)
                assert_int_equal(kb_record_add(r, "F", "x"), 0);
        assert_int_equal(kb_record_add(r, "F", "x"), -E2BIG);
        assert_int_equal(kb_record_addf(r, "F", "%s", "x"), -E2BIG);
        assert_int_equal(kb_record_n_fields(r), KB_RECORD_MAX_FIELDS);

        /* A full record still goes out whole, with SYSLOG_IDENTIFIER added. */
        struct kb_journal *j = new_journal(4);
        assert_int_equal(kb_journal_submit(j, r), 0);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_int_equal(cap.n_records, 1);
        assert_int_equal(cap.n_items[0], KB_RECORD_MAX_FIELDS + 1);
        kb_journal_free(j, USEC_PER_SEC);
}

/* ---- the loop's direct path (native protocol) ---- */

static void test_native_format(void **state) {
        struct kb_buf b = {};
        struct iovec items[] = {
                { .iov_base = (char *) "MESSAGE=hello", .iov_len = 13 },
                { .iov_base = (char *) "MULTI=a\nb", .iov_len = 9 },
                { .iov_base = (char *) "EMPTY=", .iov_len = 6 },
        };
        static const char want[] = "MESSAGE=hello\nMULTI\n\x03\0\0\0\0\0\0\0a\nb\nEMPTY=\n";

        assert_int_equal(kb_journal_native_format(items, ELEMENTSOF(items), &b), 0);
        assert_int_equal(b.len, sizeof(want) - 1);
        assert_memory_equal(b.data, want, sizeof(want) - 1);

        struct iovec bad[] = { { .iov_base = (char *) "NOEQUALS", .iov_len = 8 } };
        struct iovec bad2[] = { { .iov_base = (char *) "=value", .iov_len = 6 } };
        assert_int_equal(kb_journal_native_format(bad, 1, &b), -EINVAL);
        assert_int_equal(kb_journal_native_format(bad2, 1, &b), -EINVAL);
        kb_buf_free(&b);

        int fd = kb_journal_native_open();
        assert_true(fd >= 0);
        /* Nobody listening there: an error, not a hang. */
        bool connected = false;
        assert_true(kb_journal_native_send(fd, "/nonexistent/kb-journal-test.sock", &connected, "A=b\n", 4) < 0);
        assert_false(connected);
        close(fd);
}

/* journald's socket, for the direct path to write to */
static int bind_dgram(const char *path) {
        int srv = kbt_unix_bind(path, SOCK_DGRAM, -1);

        assert_true(srv >= 0);
        return srv;
}

/* The socket is connected once; a journald that restarted (its socket file
 * unlinked and bound anew) is found again by the next send. */
static void test_native_send_reconnects(void **state) {
        char dir[64], path[128], buf[64];
        bool connected = false;

        kbt_mkdtemp(dir, sizeof(dir), "journal");
        snprintf(path, sizeof(path), "%s/socket", dir);
        int srv = bind_dgram(path);
        int fd = kb_journal_native_open();
        assert_true(fd >= 0);
        assert_int_equal(kb_journal_native_send(fd, path, &connected, "A=1\n", 4), 0);
        assert_true(connected);
        assert_int_equal(recv(srv, buf, sizeof(buf), MSG_DONTWAIT), 4);
        assert_int_equal(kb_journal_native_send(fd, path, &connected, "A=2\n", 4), 0);
        assert_int_equal(recv(srv, buf, sizeof(buf), MSG_DONTWAIT), 4);
        assert_memory_equal(buf, "A=2\n", 4);

        close(srv);
        assert_int_equal(unlink(path), 0);
        srv = bind_dgram(path);
        assert_int_equal(kb_journal_native_send(fd, path, &connected, "A=3\n", 4), 0);
        assert_true(connected);
        assert_int_equal(recv(srv, buf, sizeof(buf), MSG_DONTWAIT), 4);
        assert_memory_equal(buf, "A=3\n", 4);

        /* gone for good: an error the writer falls back on */
        close(srv);
        assert_int_equal(unlink(path), 0);
        assert_true(kb_journal_native_send(fd, path, &connected, "A=4\n", 4) < 0);
        close(fd);
        assert_int_equal(rmdir(dir), 0);
}

static unsigned dgram_qlen(void) {
        unsigned q = 10;
        FILE *f = fopen("/proc/sys/net/unix/max_dgram_qlen", "re");

        if (f) {
                if (fscanf(f, "%u", &q) != 1)
                        q = 10;
                fclose(f);
        }
        return q;
}

/* Records go straight to the socket while it takes them; once journald's
 * queue is full the rest go through the writer (here the test sender), and
 * together they are every record once, in order. */
static void test_direct_path_falls_back_in_order(void **state) {
        char dir[64], path[128];
        unsigned n_fallback = 8, n = dgram_qlen() + 1 + n_fallback;
        char buf[4096];

        assert_true(n - (dgram_qlen() + 1) <= CAP_MAX_RECORDS);
        kbt_mkdtemp(dir, sizeof(dir), "journal");
        snprintf(path, sizeof(path), "%s/socket", dir);
        int srv = bind_dgram(path);

        struct kb_journal *j = new_journal(64);
        kb_journal_set_native_socket(j, path);
        for (unsigned i = 0; i < n; i++) {
                struct kb_record *r = kb_record_new();
                assert_int_equal(kb_record_addf(r, "MESSAGE", "record %u", i), 0);
                assert_int_equal(kb_record_add(r, "MULTI", "x\ny"), 0);
                assert_int_equal(kb_journal_submit(j, r), 0);
        }
        kb_journal_flush(j, 10 * USEC_PER_SEC);

        unsigned got = 0;
        for (;;) {
                ssize_t k = recv(srv, buf, sizeof(buf) - 1, MSG_DONTWAIT);
                if (k < 0)
                        break;
                buf[k] = 0;
                char want[256];
                int w = snprintf(want, sizeof(want), "MESSAGE=record %u\nMULTI\n\x03", got);
                assert_true(k > w);
                assert_memory_equal(buf, want, (size_t) w);
                assert_non_null(strstr(buf + w + 7, "\nSYSLOG_IDENTIFIER=" KB_SYSLOG_IDENTIFIER "\n"));
                got++;
        }
        assert_true(got >= 1);
        assert_int_equal(got + cap.n_records, n);
        for (size_t i = 0; i < cap.n_records; i++) {
                char want[64];
                snprintf(want, sizeof(want), "record %zu", got + i);
                assert_string_equal(cap_field(i, "MESSAGE"), want);
        }
        assert_true(cap.n_records >= 1);
        assert_int_equal(kb_journal_n_written(j), n);
        assert_int_equal(kb_journal_n_dropped(j), 0);
        kb_journal_free(j, USEC_PER_SEC);
        close(srv);
        (void) kbt_rm_rf(dir);
}

/* ---- the queue ---- */

static void test_new_bad(void **state) {
        struct kb_journal *j = (struct kb_journal *) 0x1;

        assert_int_equal(kb_journal_new(0, &j), -EINVAL);
        assert_int_equal(kb_journal_new(KB_JOURNAL_MAX_QUEUE + 1, &j), -EINVAL);
        assert_int_equal(kb_journal_new(1, NULL), -EINVAL);
        assert_ptr_equal(j, (struct kb_journal *) 0x1);

        /* NULL everywhere is harmless; submit still takes the record. */
        assert_int_equal(kb_journal_submit(NULL, kbt_record("x")), -EINVAL);
        assert_int_equal(kb_journal_submit(NULL, NULL), -EINVAL);
        assert_int_equal(kb_journal_n_dropped(NULL), 0);
        assert_int_equal(kb_journal_n_written(NULL), 0);
        kb_journal_flush(NULL, 0);
        kb_journal_free(NULL, 0);
        kb_journal_set_sender(NULL, test_send, &cap);
}

static void test_writes_in_order(void **state) {
        struct kb_journal *j = new_journal(8);

        for (int i = 0; i < 5; i++) {
                struct kb_record *r = kb_record_new();
                assert_int_equal(kb_record_addf(r, "MESSAGE", "m%d", i), 0);
                assert_int_equal(kb_journal_submit(j, r), 0);
        }
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_int_equal(kb_journal_n_written(j), 5);
        assert_int_equal(kb_journal_n_dropped(j), 0);
        assert_int_equal(cap.n_records, 5);
        for (size_t i = 0; i < 5; i++) {
                char want[8];
                snprintf(want, sizeof(want), "m%zu", i);
                assert_string_equal(cap_field(i, "MESSAGE"), want);
                /* The writer adds the identifier, once, to every record. */
                assert_string_equal(cap_field(i, "SYSLOG_IDENTIFIER"), KB_SYSLOG_IDENTIFIER);
                assert_int_equal(cap.n_items[i], 2);
        }
        kb_journal_free(j, USEC_PER_SEC);
}

static void test_queue_bound(void **state) {
        struct kb_journal *j = new_journal(2);

        cap_gate(true);
        assert_int_equal(kb_journal_submit(j, kbt_record("busy")), 0);
        cap_wait_entered(1); /* the writer holds it, stuck in the sender */
        assert_int_equal(kb_journal_submit(j, kbt_record("q1")), 0);
        assert_int_equal(kb_journal_submit(j, kbt_record("q2")), 0);
        assert_int_equal(kb_journal_submit(j, kbt_record("over")), -EAGAIN);
        assert_int_equal(kb_journal_submit(j, kbt_record("over")), -EAGAIN);
        assert_int_equal(kb_journal_n_dropped(j), 2);
        assert_int_equal(kb_journal_n_written(j), 0);

        cap_gate(false);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_int_equal(kb_journal_n_written(j), 3);
        assert_int_equal(kb_journal_n_dropped(j), 2);
        assert_string_equal(cap_field(0, "MESSAGE"), "busy");
        assert_string_equal(cap_field(1, "MESSAGE"), "q1");
        assert_string_equal(cap_field(2, "MESSAGE"), "q2");

        /* Room again once drained. */
        assert_int_equal(kb_journal_submit(j, kbt_record("after")), 0);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_int_equal(kb_journal_n_written(j), 4);
        kb_journal_free(j, USEC_PER_SEC);
}

static void test_flush_waits_for_writer(void **state) {
        struct kb_journal *j = new_journal(16);

        /* A slow journald: flush must cover queued records and the one in hand. */
        cap.delay_msec = 20;
        for (int i = 0; i < 5; i++)
                assert_int_equal(kb_journal_submit(j, kbt_record("slow")), 0);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_int_equal(kb_journal_n_written(j), 5);

        /* Flush on an idle journal returns at once. */
        uint64_t t0 = kb_now_usec();
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_true(kb_now_usec() - t0 < USEC_PER_SEC);
        kb_journal_free(j, USEC_PER_SEC);
}

static void test_flush_timeout(void **state) {
        struct kb_journal *j = new_journal(4);
        uint64_t t0, dt;

        cap_gate(true);
        assert_int_equal(kb_journal_submit(j, kbt_record("stuck")), 0);
        cap_wait_entered(1);
        t0 = kb_now_usec();
        kb_journal_flush(j, 100 * USEC_PER_MSEC);
        dt = kb_now_usec() - t0;
        assert_true(dt >= 90 * USEC_PER_MSEC);
        assert_true(dt < 5 * USEC_PER_SEC);
        assert_int_equal(kb_journal_n_written(j), 0);

        cap_gate(false);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_int_equal(kb_journal_n_written(j), 1);
        kb_journal_free(j, USEC_PER_SEC);
}

static void test_free_drops_queued(void **state) {
        struct kb_journal *j = new_journal(4);

        /* The sender gives up waiting after 300ms, so free's join ends. */
        cap.gate_timeout_msec = 300;
        cap_gate(true);
        assert_int_equal(kb_journal_submit(j, kbt_record("busy")), 0);
        cap_wait_entered(1);
        assert_int_equal(kb_journal_submit(j, kbt_record("q1")), 0);
        assert_int_equal(kb_journal_submit(j, kbt_record("q2")), 0);
        kb_journal_free(j, 20 * USEC_PER_MSEC);
        /* Only the record in hand reached the sender; the queued ones were
         * dropped (and freed: ASan/valgrind would see a leak otherwise). */
        assert_int_equal(cap.entered, 1);
        assert_int_equal(cap.n_records, 1);
        assert_string_equal(cap_field(0, "MESSAGE"), "busy");
}

static void test_free_writes_queued(void **state) {
        struct kb_journal *j = new_journal(4);

        cap.delay_msec = 10;
        for (int i = 0; i < 4; i++)
                assert_int_equal(kb_journal_submit(j, kbt_record("q")), 0);
        kb_journal_free(j, 10 * USEC_PER_SEC);
        assert_int_equal(cap.n_records, 4);
}

static void test_retry(void **state) {
        struct kb_journal *j = new_journal(4);

        /* Two failures, then journald is back: written once. */
        cap.fail_next = 2;
        cap.fail_rc = -ECONNREFUSED;
        assert_int_equal(kb_journal_submit(j, kbt_record("retried")), 0);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_int_equal(cap.entered, 3);
        assert_int_equal(kb_journal_n_written(j), 1);
        assert_int_equal(kb_journal_n_dropped(j), 0);
        assert_int_equal(cap.n_records, 1);

        /* Failing every attempt: dropped after a bounded number of tries. */
        cap.fail_next = 1000;
        cap.entered = 0;
        assert_int_equal(kb_journal_submit(j, kbt_record("lost")), 0);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_true(cap.entered >= 2 && cap.entered <= 5);
        assert_int_equal(kb_journal_n_written(j), 1);
        assert_int_equal(kb_journal_n_dropped(j), 1);
        cap.fail_next = 0;
        kb_journal_free(j, USEC_PER_SEC);
}

static void test_default_sender(void **state) {
        struct kb_journal *j = NULL;

        /* Whether or not journald runs here, the record is accounted for. */
        assert_int_equal(kb_journal_new(4, &j), 0);
        kb_journal_set_sender(j, test_send, &cap);
        kb_journal_set_sender(j, NULL, NULL);
        cap_reset();
        assert_int_equal(kb_journal_lifecycle(j, "started", "keybroker unit test", 0), 0);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_int_equal(kb_journal_n_written(j) + kb_journal_n_dropped(j), 1);
        assert_int_equal(cap.entered, 0);
        kb_journal_free(j, USEC_PER_SEC);
}

/* ---- the request record ---- */

static const char *const request_fields[] = {
        "MESSAGE_ID", "MESSAGE", "PRIORITY",
        "KEYBROKER_REQUEST_ID", "KEYBROKER_TEAM", "KEYBROKER_PEER_UID", "KEYBROKER_PEER_GID",
        "KEYBROKER_PEER_PID", "KEYBROKER_PEER_UNIT", "KEYBROKER_PEER_EXE", "KEYBROKER_ENDPOINT",
        "KEYBROKER_MODEL", "KEYBROKER_UPSTREAM_MODEL", "KEYBROKER_ROUTE", "KEYBROKER_FAMILY",
        "KEYBROKER_KEY", "KEYBROKER_STREAM", "KEYBROKER_STATUS", "KEYBROKER_UPSTREAM_STATUS",
        "KEYBROKER_OUTCOME", "KEYBROKER_INPUT_TOKENS", "KEYBROKER_OUTPUT_TOKENS",
        "KEYBROKER_CACHED_TOKENS", "KEYBROKER_CACHE_WRITE_TOKENS", "KEYBROKER_REASONING_TOKENS",
        "KEYBROKER_COST_MICROUSD", "KEYBROKER_LATENCY_MS", "KEYBROKER_TTFB_MS",
        "KEYBROKER_UPSTREAM_REQUEST_ID", "KEYBROKER_ATTEMPTS", "KEYBROKER_FALLBACK_FROM",
        /* beyond DESIGN's first list, for quota recovery (keybrokerd(8), JOURNAL) */
        "KEYBROKER_INSTANCE", "KEYBROKER_SEQ",
        /* of DESIGN's second wave: the record's own time and host */
        "KEYBROKER_REALTIME_USEC", "KEYBROKER_HOST",
        "SYSLOG_IDENTIFIER",
};

/* Exactly DESIGN's fields, our two recovery fields, time and host, each
 * once, nothing else. */
static void check_request_shape(size_t i) {
        for (size_t k = 0; k < ELEMENTSOF(request_fields); k++)
                (void) cap_field(i, request_fields[k]);
        assert_int_equal(cap.n_items[i], ELEMENTSOF(request_fields));
}

static void test_request_full(void **state) {
        struct kb_journal *j = new_journal(4);
        struct kb_identity id = {
                .uid = 1000, .gid = 1001, .pid = 4242, .unit = (char *) "search-api.service",
                .exe = (char *) "/usr/bin/python3.11",
        };
        struct kb_team team = { .name = (char *) "search" };
        struct kb_route route = { .name = (char *) "openai", .family = KB_FAMILY_OPENAI, .key = (char *) "openai-prod" };
        struct kb_http_request http = { .method = "POST", .path = "/v1/chat/completions" };
        struct kb_request r = {
                .identity = &id,
                .team = &team,
                .route = &route,
                .http = &http,
                .endpoint = KB_ENDPOINT_CHAT,
                .family = KB_FAMILY_OPENAI,
                .model = (char *) "gpt-4o-mini",
                .key_label = (char *) "openai-prod@3",
                .stream = true,
                .status = 200,
                .upstream_status = 200,
                .upstream_request_id = (char *) "req_abc123",
                .outcome = KB_OUTCOME_OK,
                .attempts = 2,
                .fallback_from = (char *) "azure",
                .cost_microusd = 219,
                .ttfb_usec = 120999,
                .latency_usec = 812999,
        };
        strcpy(r.id, "0123456789abcdef0123456789abcdef");
        /* The secret travels in the bodies and headers of the call; none of
         * it may reach the journal. */
        const char *body = "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"my key is " SECRET "\"}]}";
        struct kb_http_header hdr = { .name = "Authorization", .value = "Bearer " SECRET };
        http.headers = &hdr;
        http.n_headers = 1;
        assert_int_equal(kb_buf_append(&http.body, body, strlen(body)), 0);
        assert_int_equal(kb_buf_appendf(&r.upstream_body, "%s", body), 0);
        assert_int_equal(kb_buf_appendf(&r.out, "data: %s\n\n", SECRET), 0);

        assert_int_equal(kb_journal_request(j, &r), 0);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_int_equal(cap.n_records, 1);
        check_request_shape(0);

        assert_string_equal(cap_field(0, "MESSAGE_ID"), KB_MID_REQUEST);
        assert_string_equal(cap_field(0, "MESSAGE"),
                            "search gpt-4o-mini via openai: 200, 0 in / 0 out tokens, $0.000219, 812 ms");
        assert_string_equal(cap_field(0, "PRIORITY"), "6");
        assert_string_equal(cap_field(0, "KEYBROKER_REQUEST_ID"), "0123456789abcdef0123456789abcdef");
        assert_string_equal(cap_field(0, "KEYBROKER_TEAM"), "search");
        assert_string_equal(cap_field(0, "KEYBROKER_PEER_UID"), "1000");
        assert_string_equal(cap_field(0, "KEYBROKER_PEER_GID"), "1001");
        assert_string_equal(cap_field(0, "KEYBROKER_PEER_PID"), "4242");
        assert_string_equal(cap_field(0, "KEYBROKER_PEER_UNIT"), "search-api.service");
        assert_string_equal(cap_field(0, "KEYBROKER_PEER_EXE"), "/usr/bin/python3.11");
        assert_string_equal(cap_field(0, "KEYBROKER_ENDPOINT"), "chat");
        assert_string_equal(cap_field(0, "KEYBROKER_MODEL"), "gpt-4o-mini");
        assert_string_equal(cap_field(0, "KEYBROKER_UPSTREAM_MODEL"), "");
        assert_string_equal(cap_field(0, "KEYBROKER_ROUTE"), "openai");
        assert_string_equal(cap_field(0, "KEYBROKER_FAMILY"), "openai");
        assert_string_equal(cap_field(0, "KEYBROKER_KEY"), "openai-prod@3");
        assert_string_equal(cap_field(0, "KEYBROKER_STREAM"), "1");
        assert_string_equal(cap_field(0, "KEYBROKER_STATUS"), "200");
        assert_string_equal(cap_field(0, "KEYBROKER_UPSTREAM_STATUS"), "200");
        assert_string_equal(cap_field(0, "KEYBROKER_OUTCOME"), "ok");
        assert_string_equal(cap_field(0, "KEYBROKER_INPUT_TOKENS"), "0");
        assert_string_equal(cap_field(0, "KEYBROKER_OUTPUT_TOKENS"), "0");
        assert_string_equal(cap_field(0, "KEYBROKER_CACHED_TOKENS"), "0");
        assert_string_equal(cap_field(0, "KEYBROKER_CACHE_WRITE_TOKENS"), "0");
        assert_string_equal(cap_field(0, "KEYBROKER_REASONING_TOKENS"), "0");
        assert_string_equal(cap_field(0, "KEYBROKER_COST_MICROUSD"), "219");
        assert_string_equal(cap_field(0, "KEYBROKER_LATENCY_MS"), "812");
        assert_string_equal(cap_field(0, "KEYBROKER_TTFB_MS"), "120");
        assert_string_equal(cap_field(0, "KEYBROKER_UPSTREAM_REQUEST_ID"), "req_abc123");
        assert_string_equal(cap_field(0, "KEYBROKER_ATTEMPTS"), "2");
        assert_string_equal(cap_field(0, "KEYBROKER_FALLBACK_FROM"), "azure");
        assert_string_equal(cap_field(0, "SYSLOG_IDENTIFIER"), "keybrokerd");

        for (size_t k = 0; k < cap.n_items[0]; k++)
                if (strstr(cap.items[0][k], SECRET) || strstr(cap.items[0][k], "THISISTHESECRET"))
                        fail_msg("secret in journal item %s", cap.items[0][k]);

        kb_buf_free(&http.body);
        kb_buf_free(&r.upstream_body);
        kb_buf_free(&r.out);
        kb_journal_free(j, USEC_PER_SEC);
}

static void test_request_empty(void **state) {
        struct kb_journal *j = new_journal(4);
        struct kb_request r = {
                .endpoint = KB_ENDPOINT_MESSAGES,
                .family = KB_FAMILY_ANTHROPIC,
                .status = 502,
                .outcome = KB_OUTCOME_UPSTREAM_ERROR,
                .cost_microusd = 1234567,
                .latency_usec = 999,
        };

        assert_int_equal(kb_journal_request(j, &r), 0);
        /* An unknown team and a cost below zero (a refund) still format. */
        r.outcome = KB_OUTCOME_QUOTA_REJECTED;
        r.status = 429;
        r.cost_microusd = -5;
        r.model = (char *) "";
        assert_int_equal(kb_journal_request(j, &r), 0);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_int_equal(cap.n_records, 2);
        check_request_shape(0);
        check_request_shape(1);

        assert_string_equal(cap_field(0, "MESSAGE"),
                            "- - via -: 502 upstream_error, 0 in / 0 out tokens, $1.234567, 0 ms");
        assert_string_equal(cap_field(0, "PRIORITY"), "4");
        assert_string_equal(cap_field(0, "KEYBROKER_OUTCOME"), "upstream_error");
        assert_string_equal(cap_field(0, "KEYBROKER_ENDPOINT"), "messages");
        assert_string_equal(cap_field(0, "KEYBROKER_FAMILY"), "anthropic");
        assert_string_equal(cap_field(0, "KEYBROKER_STREAM"), "0");
        assert_string_equal(cap_field(0, "KEYBROKER_UPSTREAM_STATUS"), "0");
        assert_string_equal(cap_field(0, "KEYBROKER_ATTEMPTS"), "0");
        assert_string_equal(cap_field(0, "KEYBROKER_COST_MICROUSD"), "1234567");
        static const char *const empty[] = {
                "KEYBROKER_REQUEST_ID", "KEYBROKER_TEAM", "KEYBROKER_PEER_UID", "KEYBROKER_PEER_GID",
                "KEYBROKER_PEER_PID", "KEYBROKER_PEER_UNIT", "KEYBROKER_PEER_EXE", "KEYBROKER_MODEL",
                "KEYBROKER_UPSTREAM_MODEL", "KEYBROKER_ROUTE", "KEYBROKER_KEY",
                "KEYBROKER_UPSTREAM_REQUEST_ID", "KEYBROKER_FALLBACK_FROM",
        };
        for (size_t k = 0; k < ELEMENTSOF(empty); k++)
                if (!streq(cap_field(0, empty[k]), ""))
                        fail_msg("%s should be empty, is \"%s\"", empty[k], cap_field(0, empty[k]));

        assert_string_equal(cap_field(1, "MESSAGE"),
                            "- - via -: 429 quota_rejected, 0 in / 0 out tokens, -$0.000005, 0 ms");
        assert_string_equal(cap_field(1, "KEYBROKER_COST_MICROUSD"), "-5");
        assert_string_equal(cap_field(1, "PRIORITY"), "4");
        kb_journal_free(j, USEC_PER_SEC);
}

static void test_request_huge_model(void **state) {
        struct kb_journal *j = new_journal(4);
        size_t n = 3 * KB_RECORD_MAX_VALUE;
        char *model = malloc(n + 1);
        struct kb_request r = { .status = 404, .outcome = KB_OUTCOME_MODEL_NOT_FOUND };

        /* The model is the app's to choose: a huge one is cut, the record kept. */
        assert_non_null(model);
        memset(model, 'm', n);
        model[n] = 0;
        r.model = model;
        assert_int_equal(kb_journal_request(j, &r), 0);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_int_equal(cap.n_records, 1);
        check_request_shape(0);
        assert_int_equal(strlen(cap_field(0, "KEYBROKER_MODEL")), KB_RECORD_MAX_VALUE);
        assert_true(strlen(cap_field(0, "MESSAGE")) < 1024);
        free(model);

        assert_int_equal(kb_journal_request(NULL, &r), -EINVAL);
        assert_int_equal(kb_journal_request(j, NULL), -EINVAL);
        kb_journal_free(j, USEC_PER_SEC);
}

static void test_outcome_strings(void **state) {
        static const char *const want[] = {
                [KB_OUTCOME_OK] = "ok",
                [KB_OUTCOME_QUOTA_REJECTED] = "quota_rejected",
                [KB_OUTCOME_FORBIDDEN] = "forbidden",
                [KB_OUTCOME_MODEL_NOT_FOUND] = "model_not_found",
                [KB_OUTCOME_INVALID_REQUEST] = "invalid_request",
                [KB_OUTCOME_UPSTREAM_ERROR] = "upstream_error",
                [KB_OUTCOME_UPSTREAM_TIMEOUT] = "upstream_timeout",
                [KB_OUTCOME_STREAM_INTERRUPTED] = "stream_interrupted",
                [KB_OUTCOME_CLIENT_ABORT] = "client_abort",
                [KB_OUTCOME_BROKER_OVERLOADED] = "broker_overloaded",
        };
        assert_int_equal(ELEMENTSOF(want), _KB_OUTCOME_MAX);
        for (int o = 0; o < _KB_OUTCOME_MAX; o++)
                assert_string_equal(kb_outcome_to_string((kb_outcome) o), want[o]);
        assert_null(kb_outcome_to_string(_KB_OUTCOME_MAX));
        assert_null(kb_outcome_to_string((kb_outcome) -1));
}

/* ---- other records ---- */

static void test_lifecycle(void **state) {
        struct kb_journal *j = new_journal(4);

        assert_int_equal(kb_journal_lifecycle(j, "started", NULL, 0), 0);
        assert_int_equal(kb_journal_lifecycle(j, "stopping", "Stopping, 3 requests in flight", 3), 0);
        assert_int_equal(kb_journal_lifecycle(j, NULL, NULL, 0), -EINVAL);
        assert_int_equal(kb_journal_lifecycle(NULL, "started", NULL, 0), -EINVAL);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_int_equal(cap.n_records, 2);

        assert_string_equal(cap_field(0, "MESSAGE_ID"), KB_MID_LIFECYCLE);
        assert_true(strlen(cap_field(0, "MESSAGE")) > 0);
        assert_string_equal(cap_field(0, "PRIORITY"), "6");
        assert_string_equal(cap_field(0, "KEYBROKER_EVENT"), "started");
        assert_string_equal(cap_field(0, "KEYBROKER_IN_FLIGHT"), "0");
        assert_string_equal(cap_field(0, "KEYBROKER_VERSION"), KB_VERSION);
        assert_string_equal(cap_field(0, "SYSLOG_IDENTIFIER"), "keybrokerd");

        assert_string_equal(cap_field(1, "MESSAGE"), "Stopping, 3 requests in flight");
        assert_string_equal(cap_field(1, "PRIORITY"), "5");
        assert_string_equal(cap_field(1, "KEYBROKER_EVENT"), "stopping");
        assert_string_equal(cap_field(1, "KEYBROKER_IN_FLIGHT"), "3");
        kb_journal_free(j, USEC_PER_SEC);
}

static void test_config_record(void **state) {
        struct kb_journal *j = new_journal(4);

        assert_int_equal(kb_journal_config(j, "loaded", "/etc/keybroker/keybroker.conf", NULL), 0);
        assert_int_equal(kb_journal_config(j, "rejected", "/etc/keybroker/keybroker.conf",
                                           "/etc/keybroker/keybroker.conf:12: unknown route \"x\""),
                         0);
        assert_int_equal(kb_journal_config(j, NULL, "/x", NULL), -EINVAL);
        assert_int_equal(kb_journal_config(NULL, "loaded", "/x", NULL), -EINVAL);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        assert_int_equal(cap.n_records, 2);

        assert_string_equal(cap_field(0, "MESSAGE_ID"), KB_MID_CONFIG);
        assert_string_equal(cap_field(0, "PRIORITY"), "6");
        assert_string_equal(cap_field(0, "KEYBROKER_EVENT"), "loaded");
        assert_string_equal(cap_field(0, "KEYBROKER_CONFIG_PATH"), "/etc/keybroker/keybroker.conf");
        assert_false(cap_has_field(0, "KEYBROKER_ERROR"));
        assert_true(strlen(cap_field(0, "MESSAGE")) > 0);

        assert_string_equal(cap_field(1, "PRIORITY"), "3");
        assert_string_equal(cap_field(1, "KEYBROKER_EVENT"), "rejected");
        assert_string_equal(cap_field(1, "KEYBROKER_ERROR"), "/etc/keybroker/keybroker.conf:12: unknown route \"x\"");
        assert_non_null(strstr(cap_field(1, "MESSAGE"), "unknown route"));
        kb_journal_free(j, USEC_PER_SEC);
}

static int setup(void **state) {
        pthread_mutex_init(&cap.lock, NULL);
        pthread_cond_init(&cap.cond, NULL);
        return 0;
}

static int teardown(void **state) {
        cap_reset();
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_record_names),
                cmocka_unit_test(test_record_limits),
                cmocka_unit_test(test_new_bad),
                cmocka_unit_test(test_writes_in_order),
                cmocka_unit_test(test_queue_bound),
                cmocka_unit_test(test_flush_waits_for_writer),
                cmocka_unit_test(test_flush_timeout),
                cmocka_unit_test(test_free_drops_queued),
                cmocka_unit_test(test_free_writes_queued),
                cmocka_unit_test(test_retry),
                cmocka_unit_test(test_default_sender),
                cmocka_unit_test(test_request_full),
                cmocka_unit_test(test_request_empty),
                cmocka_unit_test(test_request_huge_model),
                cmocka_unit_test(test_outcome_strings),
                cmocka_unit_test(test_lifecycle),
                cmocka_unit_test(test_config_record),
                cmocka_unit_test(test_native_format),
                cmocka_unit_test(test_native_send_reconnects),
                cmocka_unit_test(test_direct_path_falls_back_in_order),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
