/* SPDX-License-Identifier: MIT */
/* Journal records (kb_record) and the writer thread that hands them to
 * journald, with the spool for when it cannot take them. The record kinds
 * are journal-records.c. */
#include "journal.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-journal.h>
#include <time.h>
#include <unistd.h>

#include "journal-native.h"
#include "keybroker/keybroker.h"
#include "spool.h"

/* Without a spool, a failed send is retried after these pauses, then
 * dropped. */
static const unsigned send_backoff_msec[] = { 1, 10 };

/* With a spool (kb_journal_set_spool_dir), nothing is dropped while the
 * spool has room:
 *
 *  - A record journald refuses (sd_journal_sendv fails: journald away,
 *    restarting, or refusing) goes to the spool, and from then on every newer
 *    record goes to the spool too, behind it, until the spool is empty again:
 *    order is kept across the spool.
 *  - While the spool is not empty the writer alternates: move everything
 *    queued to the spool (one fdatasync per batch), then, when a retry is
 *    due, re-send up to REPLAY_BATCH records from the spool's head, removing
 *    each only after journald took it. A refusal backs off (RETRY_MIN_USEC
 *    doubling up to RETRY_MAX_USEC).
 *  - A writer falling behind (journald slow: the queue half full) also
 *    spills the queue to the spool, so the queue does not fill and the loop
 *    never has to wait: kb_journal_submit() never blocks and never does I/O.
 *  - The queue can still fill when one send blocks for long (a journald that
 *    is alive but stopped reading: sendmsg waits for room on its socket);
 *    then, and when the spool's bounds are reached, records are dropped and
 *    counted (n_dropped). A spool write that fails is counted the same way.
 *  - A spooled record carries KEYBROKER_SPOOLED=1 and
 *    KEYBROKER_REALTIME_USEC, the time it was made (journald's own timestamp
 *    is the time it was re-sent); a request record has its own already.
 *  - At stop, what is still queued goes to the spool; the next start
 *    re-sends it before anything new. */
#define REPLAY_BATCH 256
#define RETRY_MIN_USEC (50 * USEC_PER_MSEC)
#define RETRY_MAX_USEC (1 * USEC_PER_SEC)
/* A spooled record refused this many times for a reason that is not
 * journald being away (EINVAL, EMSGSIZE…) is dropped: it would block the
 * spool forever. */
#define REFUSALS_MAX 3
#define SPOOL_SUBDIR "journal-spool"

/* Every item lives in one buffer ("FIELD=value\0" one after another), so a
 * record of 50 fields is two allocations, not fifty: one is built on the
 * loop for every request. Where each item starts is kept inline for the
 * usual record, on the heap for a larger one. */
#define RECORD_INITIAL_BYTES 2048
#define RECORD_INLINE_ITEMS 64
struct kb_record {
        char *data;
        size_t len, cap;
        uint32_t *off;                  /* off_inline, or a heap array of KB_RECORD_MAX_FIELDS */
        uint32_t off_inline[RECORD_INLINE_ITEMS];
        size_t n;
        uint64_t realtime_usec; /* when it was submitted */
};

struct kb_journal {
        pthread_mutex_t lock;
        pthread_cond_t wake; /* writer: a record or stop */
        pthread_cond_t idle; /* flush: queue empty and writer idle */
        pthread_t thread;
        bool thread_started;

        /* ring of max_queue slots */
        struct kb_record **queue;
        size_t max_queue;
        size_t head;
        size_t n_queued;
        bool busy; /* the writer holds a record outside the queue */
        bool stop;

        kb_journal_send_t send;
        void *send_userdata;

        /* The spool: set once before traffic, then used by the writer only. */
        struct kb_spool *spool;
        struct kb_record **batch;       /* writer scratch: max_queue slots */
        uint64_t spool_pending;         /* kb_spool_n_pending(), under lock */
        bool away;                      /* the last send failed (under lock) */
        uint64_t retry_at;              /* writer only: CLOCK_MONOTONIC µs */
        uint64_t backoff_usec;          /* writer only */
        unsigned refusals;              /* writer only: of the spool's head */

        /* The loop's direct path (journal-native.h): used while nothing is
         * queued, the writer is idle and journald took the last record, so
         * order is kept; submitting is single-threaded (the loop). */
        int direct_fd;
        const char *direct_path;        /* NULL: the direct path is off */
        bool direct_connected;          /* direct_fd is connected to direct_path */
        struct kb_buf direct_buf;

        _Atomic uint64_t n_dropped;
        _Atomic uint64_t n_written;
        _Atomic uint64_t n_spooled;
};

/* ---- records ---- */

struct kb_record *kb_record_new(void) {
        struct kb_record *r = calloc(1, sizeof(struct kb_record));
        if (r)
                r->off = r->off_inline;
        return r;
}

void kb_record_free(struct kb_record *r) {
        if (!r)
                return;
        free(r->data);
        if (r->off != r->off_inline)
                free(r->off);
        free(r);
}

/* journald's own rule for what a client may name a field. */
static bool field_name_valid(const char *f) {
        size_t n;

        if (!f || !*f)
                return false;
        if (f[0] == '_' || (f[0] >= '0' && f[0] <= '9'))
                return false;
        for (n = 0; f[n]; n++) {
                char c = f[n];
                if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
                        return false;
                if (n >= KB_RECORD_MAX_FIELD_NAME)
                        return false;
        }
        return true;
}

int kb_record_add(struct kb_record *r, const char *field, const char *value) {
        if (!value)
                return -EINVAL;
        return kb_record_add_n(r, field, value, strnlen(value, KB_RECORD_MAX_VALUE + 1));
}

int kb_record_add_capped(struct kb_record *r, const char *field, const char *value) {
        value = value ?: "";
        return kb_record_add_n(r, field, value, strnlen(value, KB_RECORD_MAX_VALUE));
}

int kb_record_add_u64(struct kb_record *r, const char *field, uint64_t value) {
        char buf[21];
        size_t i = sizeof(buf);

        do
                buf[--i] = (char) ('0' + value % 10);
        while ((value /= 10) > 0);
        return kb_record_add_n(r, field, buf + i, sizeof(buf) - i);
}

int kb_record_add_i64(struct kb_record *r, const char *field, int64_t value) {
        char buf[22];

        if (value >= 0)
                return kb_record_add_u64(r, field, (uint64_t) value);
        /* Negation through uint64_t so INT64_MIN can't overflow. */
        uint64_t mag = -(uint64_t) value;
        size_t i = sizeof(buf);
        do
                buf[--i] = (char) ('0' + mag % 10);
        while ((mag /= 10) > 0);
        buf[--i] = '-';
        return kb_record_add_n(r, field, buf + i, sizeof(buf) - i);
}

int kb_record_add_n(struct kb_record *r, const char *field, const char *value, size_t vlen) {
        size_t flen, need;
        char *item;

        if (!r || !value)
                return -EINVAL;
        if (!field_name_valid(field))
                return -EINVAL;
        if (vlen > KB_RECORD_MAX_VALUE || memchr(value, 0, vlen))
                return vlen > KB_RECORD_MAX_VALUE ? -E2BIG : -EINVAL;
        if (r->n >= KB_RECORD_MAX_FIELDS)
                return -E2BIG;
        if (r->n == RECORD_INLINE_ITEMS) {
                uint32_t *off = malloc(KB_RECORD_MAX_FIELDS * sizeof(uint32_t));
                if (!off)
                        return -ENOMEM;
                memcpy(off, r->off_inline, sizeof(r->off_inline));
                r->off = off;
        }
        flen = strlen(field);
        need = flen + 1 + vlen + 1;
        if (r->cap - r->len < need) {
                size_t cap = MAX(r->cap ? r->cap * 2 : (size_t) RECORD_INITIAL_BYTES, r->len + need);
                char *d = realloc(r->data, cap);
                if (!d)
                        return -ENOMEM;
                r->data = d;
                r->cap = cap;
        }
        item = r->data + r->len;
        memcpy(item, field, flen);
        item[flen] = '=';
        memcpy(item + flen + 1, value, vlen);
        item[flen + 1 + vlen] = 0;
        r->off[r->n++] = (uint32_t) r->len;
        r->len += need;
        return 0;
}

int kb_record_addf(struct kb_record *r, const char *field, const char *fmt, ...) {
        _cleanup_free_ char *v = NULL;
        va_list ap;
        int k;

        if (!r || !fmt)
                return -EINVAL;
        va_start(ap, fmt);
        k = vasprintf(&v, fmt, ap);
        va_end(ap);
        if (k < 0) {
                v = NULL;
                return -ENOMEM;
        }
        return kb_record_add(r, field, v);
}

size_t kb_record_n_fields(const struct kb_record *r) {
        return r ? r->n : 0;
}

const char *kb_record_item(const struct kb_record *r, size_t i) {
        if (!r || i >= r->n)
                return NULL;
        return r->data + r->off[i];
}

/* ---- the writer ---- */

static int default_send(const struct iovec *iov, int n, void *userdata) {
        return sd_journal_sendv(iov, n);
}

static void sleep_msec(unsigned msec) {
        struct timespec ts = { .tv_sec = msec / 1000, .tv_nsec = (long) (msec % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* Send items plus SYSLOG_IDENTIFIER. */
static int send_items(const struct iovec *items, size_t n, kb_journal_send_t send, void *userdata) {
        static const char ident[] = "SYSLOG_IDENTIFIER=" KB_SYSLOG_IDENTIFIER;
        struct iovec iov[KB_SPOOL_MAX_ITEMS + 1];

        if (n > KB_SPOOL_MAX_ITEMS)
                return -E2BIG;
        memcpy(iov, items, n * sizeof(struct iovec));
        iov[n] = (struct iovec) { .iov_base = (char *) ident, .iov_len = sizeof(ident) - 1 };
        return send(iov, (int) n + 1, userdata);
}

static size_t record_iov(const struct kb_record *rec, struct iovec *iov) {
        /* items lie one after another, each ending in its NUL */
        for (size_t i = 0; i < rec->n; i++) {
                size_t end = i + 1 < rec->n ? rec->off[i + 1] : rec->len;
                iov[i] = (struct iovec) { .iov_base = rec->data + rec->off[i], .iov_len = end - rec->off[i] - 1 };
        }
        return rec->n;
}

/* attempts: 1 with a spool (a failure goes there), else a few. */
static int write_record(const struct kb_record *rec, kb_journal_send_t send, void *userdata, bool once) {
        struct iovec iov[KB_RECORD_MAX_FIELDS];
        size_t n = record_iov(rec, iov);
        int r;

        for (size_t attempt = 0;; attempt++) {
                r = send_items(iov, n, send, userdata);
                if (r >= 0)
                        return 0;
                if (once || attempt >= ELEMENTSOF(send_backoff_msec))
                        return r;
                sleep_msec(send_backoff_msec[attempt]);
        }
}

/* Writer thread, lock not held. 0, or -errno: not spooled (dropped). */
static int spool_record(struct kb_spool *spool, const struct kb_record *rec) {
        struct iovec iov[KB_RECORD_MAX_FIELDS + 2];
        char when[64];
        size_t n = record_iov(rec, iov);

        bool has_time = false;

        /* request records carry their own (the quota's settle time) */
        for (size_t i = 0; i < rec->n && !has_time; i++)
                has_time = strncmp(kb_record_item(rec, i), "KEYBROKER_REALTIME_USEC=", 24) == 0;
        iov[n++] = (struct iovec) { .iov_base = (char *) "KEYBROKER_SPOOLED=1", .iov_len = 19 };
        if (!has_time) {
                snprintf(when, sizeof(when), "KEYBROKER_REALTIME_USEC=%" PRIu64, rec->realtime_usec);
                iov[n++] = (struct iovec) { .iov_base = when, .iov_len = strlen(when) };
        }
        return kb_spool_append(spool, iov, n);
}

/* Errors that say journald is not there (yet): keep the record and retry
 * later. Anything else is this record being refused. */
static bool send_error_transient(int r) {
        return r != -EINVAL && r != -EMSGSIZE && r != -E2BIG && r != -EBADMSG;
}

static void note_refusal(struct kb_journal *j) {
        j->retry_at = kb_now_usec() + j->backoff_usec;
        j->backoff_usec = MIN(MAX(j->backoff_usec * 2, RETRY_MIN_USEC), RETRY_MAX_USEC);
}

/* Writer thread, lock not held: re-send from the spool's head. Returns
 * true when journald took everything it was offered (or the spool is
 * empty), false when it refused. */
static bool queue_filling(struct kb_journal *j) {
        bool full;

        pthread_mutex_lock(&j->lock);
        full = j->stop || j->n_queued >= MAX(j->max_queue / 4, (size_t) 1);
        pthread_mutex_unlock(&j->lock);
        return full;
}

static bool replay(struct kb_journal *j, kb_journal_send_t send, void *userdata) {
        for (unsigned i = 0; i < REPLAY_BATCH; i++) {
                struct kb_spool_entry e = {};
                int r;

                /* Spooling what is queued comes first: the queue must never
                 * fill while journald takes its time. */
                if (i > 0 && queue_filling(j))
                        return true;
                r = kb_spool_peek(j->spool, &e);

                if (r == 0)
                        return true;
                if (r == -EBADMSG) { /* damaged on disk since it was written */
                        (void) kb_spool_pop(j->spool);
                        atomic_fetch_add(&j->n_dropped, 1);
                        continue;
                }
                if (r < 0) {
                        note_refusal(j);
                        return false;
                }
                r = send_items(e.iov, e.n, send, userdata);
                kb_spool_entry_clear(&e);
                if (r < 0) {
                        if (!send_error_transient(r) && ++j->refusals >= REFUSALS_MAX) {
                                j->refusals = 0;
                                (void) kb_spool_pop(j->spool);
                                atomic_fetch_add(&j->n_dropped, 1);
                                continue;
                        }
                        note_refusal(j);
                        return false;
                }
                (void) kb_spool_pop(j->spool);
                atomic_fetch_add(&j->n_written, 1);
                j->refusals = 0;
                j->backoff_usec = RETRY_MIN_USEC;
        }
        return true;
}

/* Lock held: move every queued record to the writer's batch. */
static size_t take_queued(struct kb_journal *j) {
        size_t n = 0;

        for (; j->n_queued > 0; j->n_queued--) {
                j->batch[n++] = j->queue[j->head];
                j->queue[j->head] = NULL;
                j->head = (j->head + 1) % j->max_queue;
        }
        return n;
}

/* Lock not held: append the batch to the spool, in order, then sync. */
static void spool_batch(struct kb_journal *j, size_t n) {
        for (size_t i = 0; i < n; i++) {
                if (spool_record(j->spool, j->batch[i]) < 0)
                        atomic_fetch_add(&j->n_dropped, 1);
                else
                        atomic_fetch_add(&j->n_spooled, 1);
                kb_record_free(j->batch[i]);
                j->batch[i] = NULL;
        }
        if (n > 0)
                (void) kb_spool_sync(j->spool);
}

/* Lock held on entry and return: one round of spool mode. */
static void spool_round(struct kb_journal *j) {
        kb_journal_send_t send = j->send;
        void *userdata = j->send_userdata;
        size_t n = take_queued(j);
        bool due = kb_now_usec() >= j->retry_at, ok = true;

        j->busy = true;
        pthread_mutex_unlock(&j->lock);
        spool_batch(j, n);
        if (due)
                ok = replay(j, send, userdata);
        pthread_mutex_lock(&j->lock);
        if (due)
                j->away = !ok;
        j->spool_pending = kb_spool_n_pending(j->spool);
        j->busy = false;
}

static struct timespec deadline_after(uint64_t usec);

/* Lock held: whether the writer has something to do now. */
static bool writer_has_work(struct kb_journal *j) {
        return j->stop || j->n_queued > 0 || (j->spool_pending > 0 && kb_now_usec() >= j->retry_at);
}

static void *writer_main(void *arg) {
        struct kb_journal *j = arg;

        pthread_mutex_lock(&j->lock);
        for (;;) {
                struct kb_record *rec;
                kb_journal_send_t send;
                void *userdata;
                bool once;
                int r, s = -1;

                while (!writer_has_work(j)) {
                        if (j->spool_pending > 0) {
                                uint64_t now = kb_now_usec();
                                struct timespec ts = deadline_after(j->retry_at > now ? j->retry_at - now : 0);
                                (void) pthread_cond_timedwait(&j->wake, &j->lock, &ts);
                        } else
                                pthread_cond_wait(&j->wake, &j->lock);
                }
                /* Stopping: what is still queued goes to the spool below, or
                 * without one is left to kb_journal_free(), which counts it
                 * dropped (free already waited its timeout). */
                if (j->stop)
                        break;

                if (j->spool && (j->spool_pending > 0 || j->n_queued >= MAX(j->max_queue / 2, (size_t) 32))) {
                        spool_round(j);
                        pthread_cond_broadcast(&j->idle);
                        continue;
                }

                rec = j->queue[j->head];
                j->queue[j->head] = NULL;
                j->head = (j->head + 1) % j->max_queue;
                j->n_queued--;
                j->busy = true;
                send = j->send;
                userdata = j->send_userdata;
                once = j->spool != NULL;
                pthread_mutex_unlock(&j->lock);

                r = write_record(rec, send, userdata, once);
                if (r < 0 && once) {
                        s = spool_record(j->spool, rec);
                        (void) kb_spool_sync(j->spool);
                        note_refusal(j);
                }
                kb_record_free(rec);

                pthread_mutex_lock(&j->lock);
                if (r >= 0) {
                        atomic_fetch_add(&j->n_written, 1);
                        j->away = false;
                } else if (s >= 0) {
                        atomic_fetch_add(&j->n_spooled, 1);
                        j->away = true;
                } else
                        atomic_fetch_add(&j->n_dropped, 1);
                if (j->spool)
                        j->spool_pending = kb_spool_n_pending(j->spool);
                j->busy = false;
                pthread_cond_broadcast(&j->idle);
        }
        if (j->spool && j->n_queued > 0) {
                size_t n = take_queued(j);
                j->busy = true;
                pthread_mutex_unlock(&j->lock);
                spool_batch(j, n);
                pthread_mutex_lock(&j->lock);
                j->spool_pending = kb_spool_n_pending(j->spool);
                j->busy = false;
        }
        pthread_cond_broadcast(&j->idle);
        pthread_mutex_unlock(&j->lock);
        return NULL;
}

int kb_journal_new(size_t max_queue, struct kb_journal **ret) {
        pthread_condattr_t ca;
        sigset_t all, old;
        struct kb_journal *j;
        int r;

        if (!ret || max_queue == 0 || max_queue > KB_JOURNAL_MAX_QUEUE)
                return -EINVAL;

        j = calloc(1, sizeof(*j));
        if (!j)
                return -ENOMEM;
        j->direct_fd = -1;
        j->queue = calloc(max_queue, sizeof(struct kb_record *));
        if (!j->queue) {
                free(j);
                return -ENOMEM;
        }
        j->batch = calloc(max_queue, sizeof(struct kb_record *));
        if (!j->batch) {
                free(j->queue);
                free(j);
                return -ENOMEM;
        }
        j->max_queue = max_queue;
        j->send = default_send;
        j->backoff_usec = RETRY_MIN_USEC;
        j->direct_fd = kb_journal_native_open();
        if (j->direct_fd >= 0)
                j->direct_path = KB_JOURNAL_SOCKET;

        pthread_mutex_init(&j->lock, NULL);
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&j->wake, &ca);
        pthread_cond_init(&j->idle, &ca);
        pthread_condattr_destroy(&ca);

        /* Signals belong to the loop (sd_event_add_signal needs them
         * blocked in every thread). */
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        r = pthread_create(&j->thread, NULL, writer_main, j);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r != 0) {
                kb_journal_free(j, 0);
                return -r;
        }
        j->thread_started = true;

        *ret = j;
        return 0;
}

void kb_journal_set_native_socket(struct kb_journal *j, const char *path) {
        if (!j)
                return;
        pthread_mutex_lock(&j->lock);
        j->direct_path = j->direct_fd >= 0 ? path : NULL;
        j->direct_connected = false;
        pthread_mutex_unlock(&j->lock);
}

void kb_journal_set_sender(struct kb_journal *j, kb_journal_send_t send, void *userdata) {
        if (!j)
                return;
        pthread_mutex_lock(&j->lock);
        j->send = send ?: default_send;
        j->send_userdata = send ? userdata : NULL;
        /* The direct path would bypass the replacement. */
        j->direct_path = send || j->direct_fd < 0 ? NULL : KB_JOURNAL_SOCKET;
        j->direct_connected = false;
        pthread_mutex_unlock(&j->lock);
}

int kb_journal_set_spool_dir(struct kb_journal *j, const char *state_dir) {
        _cleanup_free_ char *dir = NULL;
        struct kb_spool *spool = NULL;
        int r;

        if (!j || !state_dir || !*state_dir)
                return -EINVAL;
        if (asprintf(&dir, "%s/" SPOOL_SUBDIR, state_dir) < 0) {
                dir = NULL;
                return -ENOMEM;
        }
        r = kb_spool_open(dir, 0, 0, &spool);
        if (r < 0)
                return r;
        pthread_mutex_lock(&j->lock);
        if (j->spool || j->stop) {
                pthread_mutex_unlock(&j->lock);
                kb_spool_free(spool);
                return -EBUSY;
        }
        j->spool = spool;
        /* What a previous run left goes out first. */
        j->spool_pending = kb_spool_n_pending(spool);
        pthread_cond_signal(&j->wake);
        pthread_mutex_unlock(&j->lock);
        return 0;
}

uint64_t kb_journal_n_spooled(const struct kb_journal *j) {
        return j ? atomic_load(&j->n_spooled) : 0;
}

uint64_t kb_journal_n_spool_pending(struct kb_journal *j) {
        uint64_t n;

        if (!j)
                return 0;
        pthread_mutex_lock(&j->lock);
        n = j->spool_pending;
        pthread_mutex_unlock(&j->lock);
        return n;
}

/* Lock held (it is not contended: the writer is idle). Any failure leaves
 * the record to the writer, which retries, waits or spools as usual. */
static int send_direct(struct kb_journal *j, const struct kb_record *rec) {
        static const struct iovec ident = { .iov_base = (char *) "SYSLOG_IDENTIFIER=" KB_SYSLOG_IDENTIFIER,
                                             .iov_len = sizeof("SYSLOG_IDENTIFIER=" KB_SYSLOG_IDENTIFIER) - 1 };
        struct iovec iov[KB_RECORD_MAX_FIELDS];
        size_t n = record_iov(rec, iov);
        int r;

        kb_buf_clear(&j->direct_buf);
        r = kb_journal_native_format(iov, n, &j->direct_buf);
        if (r >= 0)
                r = kb_journal_native_format(&ident, 1, &j->direct_buf);
        if (r >= 0)
                r = kb_journal_native_send(j->direct_fd, j->direct_path, &j->direct_connected, j->direct_buf.data,
                                           j->direct_buf.len);
        /* A big record's buffer is not kept for the next small one. */
        if (j->direct_buf.cap > 64 * 1024)
                kb_buf_free(&j->direct_buf);
        return r;
}

int kb_journal_submit(struct kb_journal *j, struct kb_record *r) {
        if (!j || !r) {
                kb_record_free(r);
                return -EINVAL;
        }
        r->realtime_usec = kb_realtime_usec();
        pthread_mutex_lock(&j->lock);
        if (j->direct_path && !j->stop && j->n_queued == 0 && !j->busy && j->spool_pending == 0 && !j->away &&
            send_direct(j, r) >= 0) {
                pthread_mutex_unlock(&j->lock);
                atomic_fetch_add(&j->n_written, 1);
                kb_record_free(r);
                return 0;
        }
        if (j->stop || j->n_queued >= j->max_queue) {
                pthread_mutex_unlock(&j->lock);
                atomic_fetch_add(&j->n_dropped, 1);
                kb_record_free(r);
                return -EAGAIN;
        }
        j->queue[(j->head + j->n_queued) % j->max_queue] = r;
        j->n_queued++;
        pthread_cond_signal(&j->wake);
        pthread_mutex_unlock(&j->lock);
        return 0;
}

uint64_t kb_journal_n_dropped(const struct kb_journal *j) {
        return j ? atomic_load(&j->n_dropped) : 0;
}

uint64_t kb_journal_n_written(const struct kb_journal *j) {
        return j ? atomic_load(&j->n_written) : 0;
}

static struct timespec deadline_after(uint64_t usec) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        /* Cap far-future deadlines (UINT64_MAX = "forever") at ~100 years. */
        usec = MIN(usec, UINT64_C(100) * 365 * 24 * 3600 * USEC_PER_SEC);
        ts.tv_sec += (time_t) (usec / USEC_PER_SEC);
        ts.tv_nsec += (long) (usec % USEC_PER_SEC) * 1000L;
        if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
        }
        return ts;
}

void kb_journal_flush(struct kb_journal *j, uint64_t timeout_usec) {
        struct timespec deadline;

        if (!j)
                return;
        deadline = deadline_after(timeout_usec);
        pthread_mutex_lock(&j->lock);
        /* Done when everything went to journald, or is safely spooled
         * while journald is away (the writer re-sends it later). */
        while ((j->n_queued > 0 || j->busy || (j->spool_pending > 0 && !j->away)) && j->thread_started &&
               !j->stop)
                if (pthread_cond_timedwait(&j->idle, &j->lock, &deadline) == ETIMEDOUT)
                        break;
        pthread_mutex_unlock(&j->lock);
}

void kb_journal_free(struct kb_journal *j, uint64_t timeout_usec) {
        if (!j)
                return;

        if (j->thread_started) {
                kb_journal_flush(j, timeout_usec);
                pthread_mutex_lock(&j->lock);
                j->stop = true;
                pthread_cond_signal(&j->wake);
                pthread_mutex_unlock(&j->lock);
                /* A send in progress is waited for: sd_journal_sendv does
                 * not block for long, and retries are short. */
                pthread_join(j->thread, NULL);
        }

        for (; j->n_queued > 0; j->n_queued--) {
                kb_record_free(j->queue[j->head]);
                j->head = (j->head + 1) % j->max_queue;
                atomic_fetch_add(&j->n_dropped, 1);
        }
        kb_spool_free(j->spool);
        if (j->direct_fd >= 0)
                close(j->direct_fd);
        kb_buf_free(&j->direct_buf);
        free(j->batch);
        free(j->queue);
        pthread_cond_destroy(&j->wake);
        pthread_cond_destroy(&j->idle);
        pthread_mutex_destroy(&j->lock);
        free(j);
}
