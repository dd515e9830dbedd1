/* SPDX-License-Identifier: MIT */
/* The quota store connection: see fleet-store.h. */

#include <errno.h>
#include <fcntl.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fleet-store.h"
#include "keystore.h"
#include "redis-loop.h"
#include "util.h"

#define RTT_SAMPLES 1024u

struct kb_store;

/* One command in flight, with its timer. */
struct store_cmd {
        struct kb_store *store;
        sd_event_source *timer;
        uint64_t sent_usec;
        void (*done)(struct kb_store *s, redisReply *reply);
};

struct kb_store {
        sd_event *event;
        struct kb_store_options o;      /* strings copied */
        struct kb_store_addr addr;
        kb_store_handler_t handler;
        void *userdata;

        redisAsyncContext *ac;
        kb_store_state state;
        bool ever_online;
        bool handshake_done;
        uint64_t since_usec;            /* realtime */
        uint64_t state_mono;            /* monotonic of the last change, for offline_usec */
        uint64_t offline_usec;
        char reason[160];
        char fail_reason[160];          /* set by store_fail(), acted on from the defer */

        sd_event_source *retry;         /* reconnect */
        sd_event_source *beat;          /* heartbeat */
        sd_event_source *fail;          /* defer: drop the connection outside hiredis */

        uint64_t brokers;
        uint64_t rtt[RTT_SAMPLES];
        size_t n_rtt;
        uint64_t n_replies, n_errors, n_timeouts;
};

const char *kb_store_state_to_string(kb_store_state s) {
        switch (s) {
        case KB_STORE_CONNECTING: return "connecting";
        case KB_STORE_ONLINE: return "connected";
        case KB_STORE_OFFLINE: return "offline";
        }
        return NULL;
}

static void set_state(struct kb_store *s, kb_store_state st, const char *reason) {
        uint64_t now = kb_now_usec();

        if (s->state != KB_STORE_ONLINE)
                s->offline_usec += now - s->state_mono;
        s->state_mono = now;
        s->state = st;
        s->since_usec = kb_realtime_usec();
        snprintf(s->reason, sizeof(s->reason), "%s", strempty(reason));
}

/* Say why, then drop the connection from the loop (never from inside
 * hiredis: it may be in the middle of a callback). */
static void store_fail(struct kb_store *s, const char *fmt, ...) _printf_(2, 3);
static void store_fail(struct kb_store *s, const char *fmt, ...) {
        va_list ap;

        if (s->fail_reason[0])
                return; /* the first cause is the one that counts */
        va_start(ap, fmt);
        vsnprintf(s->fail_reason, sizeof(s->fail_reason), fmt, ap);
        va_end(ap);
        (void) sd_event_source_set_enabled(s->fail, SD_EVENT_ONESHOT);
}

/* ---- commands ---- */

static void cmd_free(struct store_cmd *c) {
        sd_event_source_disable_unref(c->timer);
        free(c);
}

static int on_cmd_timeout(sd_event_source *src, uint64_t usec, void *userdata) {
        struct store_cmd *c = userdata;

        c->store->n_timeouts++;
        store_fail(c->store, "no reply within %" PRIu64 " ms", (c->store->handshake_done ? c->store->o.timeout_usec
                                                                                    : KB_STORE_HANDSHAKE_USEC) /
                                                                       USEC_PER_MSEC);
        return 0;
}

static void on_reply(redisAsyncContext *ac, void *r, void *privdata) {
        struct store_cmd *c = privdata;
        struct kb_store *s = c->store;
        redisReply *reply = r;

        if (!reply) {
                /* the connection went (or we dropped it): nothing to do */
                cmd_free(c);
                return;
        }
        s->n_replies++;
        s->rtt[s->n_rtt++ % RTT_SAMPLES] = kb_now_usec() - c->sent_usec;
        if (reply->type == REDIS_REPLY_ERROR) {
                s->n_errors++;
                store_fail(s, "%.*s", (int) MIN(reply->len, (size_t) 120), reply->str);
        } else if (c->done)
                c->done(s, reply);
        cmd_free(c);
}

static int send_argv(struct kb_store *s, void (*done)(struct kb_store *, redisReply *), int argc, const char **argv,
                     const size_t *lens) {
        struct store_cmd *c = calloc(1, sizeof(*c));
        uint64_t timeout = s->handshake_done ? s->o.timeout_usec : KB_STORE_HANDSHAKE_USEC;

        if (!c)
                return -ENOMEM;
        c->store = s;
        c->done = done;
        c->sent_usec = kb_now_usec();
        if (sd_event_add_time_relative(s->event, &c->timer, CLOCK_MONOTONIC, timeout, USEC_PER_MSEC, on_cmd_timeout,
                                       c) < 0) {
                free(c);
                return -ENOMEM;
        }
        if (redisAsyncCommandArgv(s->ac, on_reply, c, argc, argv, lens) != REDIS_OK) {
                cmd_free(c);
                return -EIO;
        }
        return 0;
}

static int send_cmd(struct kb_store *s, void (*done)(struct kb_store *, redisReply *), const char *a0,
                    const char *a1, const char *a2, const char *a3, const char *a4, const char *a5) {
        const char *argv[6] = { a0, a1, a2, a3, a4, a5 };
        size_t lens[6];
        int argc = 0;

        while (argc < 6 && argv[argc]) {
                lens[argc] = strlen(argv[argc]);
                argc++;
        }
        return send_argv(s, done, argc, argv, lens);
}

/* ---- heartbeat: the lease, and how many brokers hold one ---- */

static void on_brokers(struct kb_store *s, redisReply *reply) {
        if (reply->type == REDIS_REPLY_INTEGER && reply->integer >= 0)
                s->brokers = (uint64_t) reply->integer;
}

static void heartbeat(struct kb_store *s) {
        char key[160], brokers[160], expiry[32], now[32], lease_ms[32];
        uint64_t t = kb_realtime_usec() / USEC_PER_MSEC;

        snprintf(key, sizeof(key), "%slease:%s", s->o.prefix, s->o.instance);
        snprintf(brokers, sizeof(brokers), "%sbrokers", s->o.prefix);
        snprintf(expiry, sizeof(expiry), "%" PRIu64, t + KB_STORE_LEASE_USEC / USEC_PER_MSEC);
        snprintf(now, sizeof(now), "(%" PRIu64, t);
        snprintf(lease_ms, sizeof(lease_ms), "%" PRIu64, KB_STORE_LEASE_USEC / USEC_PER_MSEC);
        /* pipelined: one round trip */
        if (send_cmd(s, NULL, "SET", key, s->o.hostname, "PX", lease_ms, NULL) < 0 ||
            send_cmd(s, NULL, "ZADD", brokers, expiry, s->o.instance, NULL, NULL) < 0 ||
            send_cmd(s, NULL, "ZREMRANGEBYSCORE", brokers, "-inf", now, NULL, NULL) < 0 ||
            send_cmd(s, on_brokers, "ZCARD", brokers, NULL, NULL, NULL, NULL) < 0)
                store_fail(s, "cannot send a command");
}

static int on_beat(sd_event_source *src, uint64_t usec, void *userdata) {
        struct kb_store *s = userdata;

        if (s->ac && s->state == KB_STORE_ONLINE)
                heartbeat(s);
        (void) sd_event_source_set_time_relative(src, KB_STORE_HEARTBEAT_USEC);
        return 0;
}

/* ---- connecting ---- */

static void on_ready(struct kb_store *s, redisReply *reply) {
        bool back = s->ever_online;

        on_brokers(s, reply);
        s->handshake_done = true;
        s->ever_online = true;
        set_state(s, KB_STORE_ONLINE, NULL);
        (void) sd_event_source_set_time_relative(s->beat, KB_STORE_HEARTBEAT_USEC);
        (void) sd_event_source_set_enabled(s->beat, SD_EVENT_ON);
        s->handler(s->userdata, &(struct kb_store_event) { .event = back ? "back" : "connected",
                                                             .brokers = s->brokers });
}

/* The password file, read fresh at every connect (rotated in place without
 * a reload) the way key files are: a trailing newline stripped, control
 * characters refused, held in secure memory only for the AUTH. */
static int read_password(const char *path, struct kb_key **ret) {
        _cleanup_free_ char *dir = strdup(path);
        char *slash = dir ? strrchr(dir, '/') : NULL;

        if (!slash)
                return dir ? -EINVAL : -ENOMEM;
        *slash = 0;
        _cleanup_close_ int dfd = open(dir[0] ? dir : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        return kb_key_read_file(dfd, slash + 1, ret);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
        struct kb_store *s = ac->data;

        /* hiredis frees ac after this returns */
        s->ac = NULL;
        if (!s->fail_reason[0])
                store_fail(s, "%s", status == REDIS_OK ? "connection closed" : strempty(ac->errstr));
}

static void on_connect(const redisAsyncContext *ac, int status) {
        struct kb_store *s = ac->data;

        if (status != REDIS_OK) {
                s->ac = NULL; /* freed by hiredis */
                store_fail(s, "cannot connect: %s", strempty(ac->errstr));
        }
}

static void store_connect(struct kb_store *s) {
        char db[16];
        int r;

        s->handshake_done = false;
        s->fail_reason[0] = 0;
        s->ac = s->addr.path ? redisAsyncConnectUnix(s->addr.path) : redisAsyncConnect(s->addr.host, (int) s->addr.port);
        if (!s->ac || s->ac->err) {
                store_fail(s, "cannot connect: %s", s->ac ? s->ac->errstr : "out of memory");
                if (s->ac)
                        redisAsyncFree(s->ac);
                s->ac = NULL;
                return;
        }
        s->ac->data = s;
        if (kb_redis_attach(s->ac, s->event) < 0) {
                redisAsyncFree(s->ac);
                s->ac = NULL;
                store_fail(s, "cannot watch the connection");
                return;
        }
        (void) redisAsyncSetConnectCallback(s->ac, on_connect);
        (void) redisAsyncSetDisconnectCallback(s->ac, on_disconnect);

        if (s->o.password_file) {
                struct kb_key *pw = NULL;
                size_t pw_len = 0;
                r = read_password(s->o.password_file, &pw);
                if (r < 0) {
                        store_fail(s, "cannot read quota_store_password %s: %s", s->o.password_file,
                                   r == -ENODATA ? "empty" : r == -EFBIG ? "too long" :
                                   r == -EBADMSG ? "control characters" : strerror(-r));
                        return;
                }
                const char *argv[] = { "AUTH", kb_key_open(pw, &pw_len) };
                const size_t lens[] = { 4, pw_len };
                r = send_argv(s, NULL, 2, argv, lens);
                kb_key_close(pw);
                kb_key_unref(pw);
                if (r < 0) {
                        store_fail(s, "cannot send AUTH");
                        return;
                }
        }
        if (s->addr.db > 0) {
                snprintf(db, sizeof(db), "%u", s->addr.db);
                if (send_cmd(s, NULL, "SELECT", db, NULL, NULL, NULL, NULL) < 0) {
                        store_fail(s, "cannot send SELECT");
                        return;
                }
        }
        heartbeat(s);
        /* the last of the handshake: online once this is answered */
        if (send_cmd(s, on_ready, "PING", NULL, NULL, NULL, NULL, NULL) < 0)
                store_fail(s, "cannot send PING");
}

static int on_retry(sd_event_source *src, uint64_t usec, void *userdata) {
        store_connect(userdata);
        return 0;
}

static int on_fail(sd_event_source *src, void *userdata) {
        struct kb_store *s = userdata;
        char reason[sizeof(s->fail_reason)];

        memcpy(reason, s->fail_reason, sizeof(reason));
        if (s->ac) {
                redisAsyncContext *ac = s->ac;
                s->ac = NULL;
                ac->onDisconnect = NULL; /* this is the disconnect */
                redisAsyncFree(ac);
        }
        s->fail_reason[0] = 0;
        (void) sd_event_source_set_enabled(s->beat, SD_EVENT_OFF);
        /* once per outage; while it lasts, the status shows the latest reason */
        if (s->state != KB_STORE_OFFLINE) {
                set_state(s, KB_STORE_OFFLINE, reason);
                s->handler(s->userdata, &(struct kb_store_event) { .event = "offline", .reason = reason });
        } else
                snprintf(s->reason, sizeof(s->reason), "%s", reason);
        (void) sd_event_source_set_time_relative(s->retry, KB_STORE_RETRY_USEC);
        (void) sd_event_source_set_enabled(s->retry, SD_EVENT_ONESHOT);
        return 0;
}

/* ---- public ---- */

int kb_store_new(sd_event *e, const struct kb_store_options *o, kb_store_handler_t handler, void *userdata,
                 struct kb_store **ret) {
        struct kb_store *s;
        int r = -ENOMEM;

        if (!e || !o || !o->addr || !o->prefix || !o->instance || !handler || !ret)
                return -EINVAL;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->event = sd_event_ref(e);
        s->handler = handler;
        s->userdata = userdata;
        s->o = *o;
        s->o.prefix = strdup(o->prefix);
        s->o.instance = strdup(o->instance);
        s->o.hostname = strdup(strempty(o->hostname));
        s->o.password_file = o->password_file ? strdup(o->password_file) : NULL;
        s->addr = (struct kb_store_addr) { .port = o->addr->port, .db = o->addr->db,
                                           .host = o->addr->host ? strdup(o->addr->host) : NULL,
                                           .path = o->addr->path ? strdup(o->addr->path) : NULL };
        s->o.addr = &s->addr;
        s->state = KB_STORE_CONNECTING;
        s->state_mono = kb_now_usec();
        s->since_usec = kb_realtime_usec();
        if (!s->o.prefix || !s->o.instance || !s->o.hostname || (o->password_file && !s->o.password_file) ||
            (o->addr->host && !s->addr.host) || (o->addr->path && !s->addr.path))
                goto fail;
        if ((r = sd_event_add_time_relative(e, &s->retry, CLOCK_MONOTONIC, 0, 10 * USEC_PER_MSEC, on_retry, s)) < 0 ||
            (r = sd_event_add_time_relative(e, &s->beat, CLOCK_MONOTONIC, KB_STORE_HEARTBEAT_USEC,
                                            10 * USEC_PER_MSEC, on_beat, s)) < 0 ||
            (r = sd_event_add_defer(e, &s->fail, on_fail, s)) < 0)
                goto fail;
        (void) sd_event_source_set_enabled(s->beat, SD_EVENT_OFF);
        (void) sd_event_source_set_enabled(s->fail, SD_EVENT_OFF);
        (void) sd_event_source_set_description(s->retry, "quota-store-retry");
        (void) sd_event_source_set_description(s->beat, "quota-store-heartbeat");
        *ret = s;
        return 0;
fail:
        kb_store_free(s);
        return r;
}

struct kb_store *kb_store_free(struct kb_store *s) {
        if (!s)
                return NULL;
        if (s->ac) {
                s->ac->onDisconnect = NULL;
                redisAsyncFree(s->ac);
        }
        sd_event_source_disable_unref(s->retry);
        sd_event_source_disable_unref(s->beat);
        sd_event_source_disable_unref(s->fail);
        free((char *) s->o.prefix);
        free((char *) s->o.instance);
        free((char *) s->o.hostname);
        free((char *) s->o.password_file);
        free(s->addr.host);
        free(s->addr.path);
        sd_event_unref(s->event);
        free(s);
        return NULL;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

void kb_store_get_stats(const struct kb_store *s, struct kb_store_stats *ret) {
        uint64_t sorted[RTT_SAMPLES];
        size_t n;

        *ret = (struct kb_store_stats) {};
        if (!s)
                return;
        ret->state = s->state;
        ret->since_usec = s->since_usec;
        snprintf(ret->reason, sizeof(ret->reason), "%s", s->reason);
        ret->brokers = s->state == KB_STORE_ONLINE ? s->brokers : 0;
        ret->n_replies = s->n_replies;
        ret->n_errors = s->n_errors;
        ret->n_timeouts = s->n_timeouts;
        ret->offline_usec = s->offline_usec + (s->state != KB_STORE_ONLINE ? kb_now_usec() - s->state_mono : 0);
        n = MIN(s->n_rtt, (size_t) RTT_SAMPLES);
        if (n > 0) {
                memcpy(sorted, s->rtt, n * sizeof(sorted[0]));
                qsort(sorted, n, sizeof(sorted[0]), cmp_u64);
                ret->rtt_p50_usec = sorted[(n - 1) / 2];
                ret->rtt_p99_usec = sorted[(n - 1) * 99 / 100];
        }
}
