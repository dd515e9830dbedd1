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
#define SCRIPTS_MAX 8u

struct kb_store;

/* One command in flight, with its timer. */
struct store_cmd {
        struct kb_store *store;
        sd_event_source *timer;
        uint64_t sent_usec;
        void (*done)(struct kb_store *s, redisReply *reply);
        /* A caller's script call (kb_store_eval): its reply goes to cb; the
         * arguments are kept to send it again as EVAL after NOSCRIPT. */
        kb_store_reply_t cb;
        void *userdata;
        unsigned script;
        int argc;
        const char **argv;              /* into mem, or the store's own strings */
        size_t *lens;
        void *mem;                      /* one block: argv, lens, the caller's bytes */
        bool retried;
};

struct store_script {
        char *body;
        char sha[41];
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
        unsigned gen;                   /* connections made: the lease is per connection */
        void (*beat_hook)(void *userdata);
        void *beat_userdata;
        char run[17];                   /* random, per process */
        char lease[96];                 /* INSTANCE.RUN.GEN */
        struct store_script scripts[SCRIPTS_MAX];
        unsigned n_scripts;
        unsigned scripts_loaded;
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

static int on_cmd_timeout(sd_event_source *src, uint64_t usec, void *userdata);

static void cmd_free(struct store_cmd *c) {
        sd_event_source_disable_unref(c->timer);
        free(c->mem);
        free(c);
}

static int cmd_arm(struct store_cmd *c) {
        struct kb_store *s = c->store;
        uint64_t timeout = s->handshake_done ? s->o.timeout_usec : KB_STORE_HANDSHAKE_USEC;

        c->sent_usec = kb_now_usec();
        if (c->timer)
                return sd_event_source_set_time_relative(c->timer, timeout) < 0 ||
                                       sd_event_source_set_enabled(c->timer, SD_EVENT_ONESHOT) < 0 ?
                               -ENOMEM :
                               0;
        return sd_event_add_time_relative(s->event, &c->timer, CLOCK_MONOTONIC, timeout, USEC_PER_MSEC,
                                          on_cmd_timeout, c) < 0 ?
                       -ENOMEM :
                       0;
}

static void on_reply(redisAsyncContext *ac, void *r, void *privdata);

/* EVAL with the script's body, for a server whose script cache was
 * flushed (SCRIPT FLUSH) while we were connected. */
static int cmd_send_eval(struct store_cmd *c) {
        struct kb_store *s = c->store;
        const char *body = s->scripts[c->script].body;

        c->argv[0] = "EVAL";
        c->argv[1] = body;
        c->lens[0] = 4;
        c->lens[1] = strlen(body);
        if (cmd_arm(c) < 0)
                return -ENOMEM;
        if (redisAsyncCommandArgv(s->ac, on_reply, c, c->argc, c->argv, c->lens) != REDIS_OK)
                return -EIO;
        return 0;
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
                /* the connection went (or we dropped it): no answer */
                if (c->cb)
                        c->cb(c->userdata, NULL);
                cmd_free(c);
                return;
        }
        s->n_replies++;
        s->rtt[s->n_rtt++ % RTT_SAMPLES] = kb_now_usec() - c->sent_usec;
        if (reply->type == REDIS_REPLY_ERROR && c->argv && !c->retried && reply->len >= 8 &&
            memcmp(reply->str, "NOSCRIPT", 8) == 0) {
                c->retried = true;
                if (cmd_send_eval(c) == 0)
                        return;
        }
        if (reply->type == REDIS_REPLY_ERROR) {
                s->n_errors++;
                store_fail(s, "%.*s", (int) MIN(reply->len, (size_t) 120), reply->str);
                if (c->cb)
                        c->cb(c->userdata, NULL);
        } else if (c->cb)
                c->cb(c->userdata, reply);
        else if (c->done)
                c->done(s, reply);
        cmd_free(c);
}

static int send_argv(struct kb_store *s, void (*done)(struct kb_store *, redisReply *), int argc, const char **argv,
                     const size_t *lens) {
        struct store_cmd *c = calloc(1, sizeof(*c));

        if (!c)
                return -ENOMEM;
        c->store = s;
        c->done = done;
        if (cmd_arm(c) < 0) {
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

        snprintf(key, sizeof(key), "%slease:%s", s->o.prefix, s->lease);
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

        if (s->ac && s->state == KB_STORE_ONLINE) {
                heartbeat(s);
                if (s->beat_hook)
                        s->beat_hook(s->beat_userdata);
        }
        (void) sd_event_source_set_time_relative(src, KB_STORE_HEARTBEAT_USEC);
        return 0;
}

/* ---- connecting ---- */

static void on_script_loaded(struct kb_store *s, redisReply *reply) {
        /* SCRIPT LOAD replies come in the order the scripts were sent */
        if (reply->type != REDIS_REPLY_STRING || reply->len != 40 || s->scripts_loaded >= s->n_scripts) {
                store_fail(s, "SCRIPT LOAD gave no SHA1");
                return;
        }
        memcpy(s->scripts[s->scripts_loaded++].sha, reply->str, 40);
}

static void on_ready(struct kb_store *s, redisReply *reply) {
        bool back = s->ever_online;

        if (s->fail_reason[0])
                return; /* an earlier step of the handshake failed (a script refused): not online */
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
        snprintf(s->lease, sizeof(s->lease), "%s.%s.%u", s->o.instance, s->run, ++s->gen);
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
        s->scripts_loaded = 0;
        for (unsigned i = 0; i < s->n_scripts; i++)
                if (send_cmd(s, on_script_loaded, "SCRIPT", "LOAD", s->scripts[i].body, NULL, NULL, NULL) < 0) {
                        store_fail(s, "cannot send SCRIPT LOAD");
                        return;
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
        {
                unsigned char raw[8];
                kb_random_bytes(raw, sizeof(raw));
                for (size_t i = 0; i < sizeof(raw); i++)
                        snprintf(s->run + 2 * i, 3, "%02x", raw[i]);
        }
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
                /* pending callbacks run now, with no reply: nothing new may be sent */
                redisAsyncContext *ac = s->ac;
                s->ac = NULL;
                ac->onDisconnect = NULL;
                redisAsyncFree(ac);
        }
        sd_event_source_disable_unref(s->retry);
        sd_event_source_disable_unref(s->beat);
        sd_event_source_disable_unref(s->fail);
        for (unsigned i = 0; i < s->n_scripts; i++)
                free(s->scripts[i].body);
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

int kb_store_add_script(struct kb_store *s, const char *body) {
        if (!s || !body)
                return -EINVAL;
        if (s->n_scripts >= SCRIPTS_MAX)
                return -E2BIG;
        s->scripts[s->n_scripts].body = strdup(body);
        if (!s->scripts[s->n_scripts].body)
                return -ENOMEM;
        return (int) s->n_scripts++;
}

int kb_store_eval(struct kb_store *s, unsigned script, int argc, const char *const *argv, const size_t *lens,
                  kb_store_reply_t cb, void *userdata) {
        struct store_cmd *c;
        int n = argc + 3;

        if (!s || script >= s->n_scripts || argc < 0 || !cb)
                return -EINVAL;
        if (s->state != KB_STORE_ONLINE || !s->ac || strlen(s->scripts[script].sha) != 40)
                return -ENOTCONN;
        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->store = s;
        c->cb = cb;
        c->userdata = userdata;
        c->script = script;
        c->argc = n;
        /* The caller's arguments are copied (they are sent again as EVAL
         * after NOSCRIPT), all in one block. */
        size_t bytes = 0;
        for (int i = 0; i < argc; i++)
                bytes += lens ? lens[i] : strlen(argv[i]);
        c->mem = malloc((size_t) n * (sizeof(char *) + sizeof(size_t)) + bytes);
        if (!c->mem)
                goto oom;
        c->argv = c->mem;
        c->lens = (size_t *) (c->argv + n);
        char *p = (char *) (c->lens + n);
        c->argv[0] = "EVALSHA";
        c->argv[1] = s->scripts[script].sha;
        c->argv[2] = "0";
        c->lens[0] = 7;
        c->lens[1] = 40;
        c->lens[2] = 1;
        for (int i = 0; i < argc; i++) {
                size_t len = lens ? lens[i] : strlen(argv[i]);
                memcpy(p, argv[i], len);
                c->argv[i + 3] = p;
                c->lens[i + 3] = len;
                p += len;
        }
        if (cmd_arm(c) < 0)
                goto oom;
        if (redisAsyncCommandArgv(s->ac, on_reply, c, c->argc, c->argv, c->lens) != REDIS_OK) {
                cmd_free(c);
                return -EIO;
        }
        return 0;
oom:
        cmd_free(c);
        return -ENOMEM;
}

bool kb_store_online(const struct kb_store *s) {
        return s && s->state == KB_STORE_ONLINE && s->ac;
}

uint64_t kb_store_brokers(const struct kb_store *s) {
        return s ? s->brokers : 0;
}

const char *kb_store_lease(const struct kb_store *s) {
        return s ? s->lease : NULL;
}

const char *kb_store_prefix(const struct kb_store *s) {
        return s ? s->o.prefix : NULL;
}

void kb_store_set_beat_hook(struct kb_store *s, void (*hook)(void *userdata), void *userdata) {
        if (!s)
                return;
        s->beat_hook = hook;
        s->beat_userdata = userdata;
}
