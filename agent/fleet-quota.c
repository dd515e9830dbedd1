/* SPDX-License-Identifier: MIT */
/* Team quotas in the quota store: see fleet-quota.h. */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "fleet-quota.h"
#include "fleet-scripts.h"
#include "store-args.h"
#include "util.h"


/* One settle, kept until the store acknowledged it. */
struct settle {
        TAILQ_ENTRY(settle) link;
        struct kb_fleet *fleet;
        bool sent;                      /* an answer is on its way */
        char *team;
        char rid[33];
        char lease[96];                 /* "" when there is no hold in the store */
        bool count_request;
        uint64_t seq, k_settle, day, month, tokens, cost, k_admit;
};

struct kb_fleet_hold {
        struct kb_fleet *fleet;
        LIST_ENTRY(kb_fleet_hold) waiting; /* for the epoch, to be sent again */
        struct kb_fleet_ask ask;        /* team: owned copy */
        char rid[33];
        char lease[96];
        kb_fleet_done_t done;
        void *userdata;
        bool pending;                   /* the reservation's answer has not come */
        bool admitted;                  /* the store counted it */
        bool doubtful;                  /* sent, no answer: it may be counted */
        bool ended;                     /* settled while pending: release when it comes */
        bool on_wait_list;
        uint64_t tokens, cost;          /* what the store granted */
        bool grow_pending;
        bool final_tokens, final_cost;  /* the store had no more of it */
        struct kb_quota_denial denial;  /* why no more */
};

struct kb_fleet {
        struct kb_store *store;
        struct kb_quota *quota;
        char *instance;
        const uint64_t *seq;
        int s_reserve, s_settle, s_push;

        char epoch[40];                 /* "" until the store said */
        bool hello_pending;

        TAILQ_HEAD(settle_queue, settle) queue;
        size_t n_queue;
        /* Sends follow queue order. Everything up to sent_upto is on its way
         * (NULL: look from the head), and at most KB_FLEET_IN_FLIGHT are: a
         * queue of 262,144 (a long outage, a backfill from the journal) is
         * neither walked per settle nor pushed into hiredis's buffers at once. */
        struct settle *sent_upto;
        size_t n_in_flight;
        LIST_HEAD(, kb_fleet_hold) waiting;

        uint64_t dropped, pushes;
        uint64_t start_seq;             /* the settle sequence when this fleet began */
        bool backfilled;
        kb_fleet_backfill_t backfill;
        void *backfill_userdata;
        kb_fleet_handler_t handler;
        void *handler_userdata;
        struct kb_fleet_event push;     /* what the pending hello pushes, if it does */
        struct kb_fleet_event resent;   /* what a backfill queued */
        struct settle *backfill_before; /* where backfilled settles go: before the live ones */

        int s_view;
        bool view_pending;
        struct view_entry {
                char *team;
                struct kb_fleet_view v;
        } *views;
        size_t n_views;
        char **view_teams;              /* the names the pending reading asked for */
        size_t n_view_teams;
};

/* ---- arguments ---- */

/* EVALSHA of script with a's arguments (unless one could not be added). */
static int args_eval(struct kb_fleet *f, int script, struct kb_args *a, kb_store_reply_t cb, void *userdata) {
        int r = a->full ? -ENOMEM : kb_store_eval(f->store, (unsigned) script, a->n, kb_args_argv(a), NULL, cb, userdata);
        kb_args_done(a);
        return r;
}

static const char *prefix_of(const struct kb_fleet *f) {
        return kb_store_prefix(f->store);
}

/* An array reply's element i as an integer (0 when absent). */
static uint64_t elem_u64(const redisReply *r, size_t i) {
        if (!r || r->type != REDIS_REPLY_ARRAY || i >= r->elements)
                return 0;
        const redisReply *e = r->element[i];
        if (e->type == REDIS_REPLY_INTEGER)
                return e->integer < 0 ? 0 : (uint64_t) e->integer;
        if (e->type == REDIS_REPLY_STRING)
                return strtoull(e->str, NULL, 10);
        return 0;
}

static long long elem_int(const redisReply *r, size_t i) {
        if (!r || r->type != REDIS_REPLY_ARRAY || i >= r->elements || r->element[i]->type != REDIS_REPLY_INTEGER)
                return -2;
        return r->element[i]->integer;
}

static void hello(struct kb_fleet *f);

/* The store's epoch is not the one we know: learn it (and push) first. */
static void epoch_changed(struct kb_fleet *f) {
        f->epoch[0] = 0;
        hello(f);
}

/* ---- settles ---- */

static void settle_free(struct settle *s) {
        free(s->team);
        free(s);
}

static void queue_drop(struct kb_fleet *f, struct settle *s) {
        if (f->sent_upto == s)
                f->sent_upto = TAILQ_PREV(s, settle_queue, link);
        TAILQ_REMOVE(&f->queue, s, link);
        f->n_queue--;
        settle_free(s);
}

static void send_settles(struct kb_fleet *f);

static void on_settled(void *userdata, const redisReply *reply) {
        struct settle *s = userdata;
        struct kb_fleet *f = s->fleet;

        if (s->sent) {
                s->sent = false;
                f->n_in_flight--;
        }
        if (!reply) {
                f->sent_upto = NULL;
                return; /* offline: sent again when the store is back */
        }
        if (elem_int(reply, 0) == -1) {
                f->sent_upto = NULL;
                if (f->epoch[0])
                        epoch_changed(f);
                return;
        }
        queue_drop(f, s);
        send_settles(f);
}

static int send_settle(struct kb_fleet *f, struct settle *s) {
        struct kb_args a;
        uint64_t kmin, kmax;

        kb_args_init(&a);
        kb_quota_minute_keys(kb_realtime_usec(), &kmin, &kmax);
        kb_arg_str(&a, prefix_of(f));
        kb_arg_str(&a, s->team);
        kb_arg_str(&a, f->epoch);
        kb_arg_str(&a, f->instance);
        kb_arg_u64(&a, s->seq);
        kb_arg_str(&a, s->lease);
        kb_arg_str(&a, s->rid);
        kb_arg_u64(&a, s->k_settle);
        kb_arg_u64(&a, s->day);
        kb_arg_u64(&a, s->month);
        kb_arg_u64(&a, s->tokens);
        kb_arg_u64(&a, s->cost);
        kb_arg_str(&a, s->count_request ? "1" : "0");
        kb_arg_u64(&a, s->k_admit);
        kb_arg_u64(&a, kmin);
        return args_eval(f, f->s_settle, &a, on_settled, s);
}

/* In queue order, everything not yet on its way; the store applies them in
 * the order sent, so its acknowledged sequence is always a prefix. */
static void send_settles(struct kb_fleet *f) {
        struct settle *s;

        if (!kb_fleet_ready(f) || f->n_in_flight >= KB_FLEET_IN_FLIGHT)
                return;
        for (s = f->sent_upto ? TAILQ_NEXT(f->sent_upto, link) : TAILQ_FIRST(&f->queue); s;
             s = TAILQ_NEXT(s, link)) {
                if (!s->sent) {
                        if (f->n_in_flight >= KB_FLEET_IN_FLIGHT || send_settle(f, s) < 0)
                                return;
                        s->sent = true;
                        f->n_in_flight++;
                }
                f->sent_upto = s;
        }
}

static void queue_settle(struct kb_fleet *f, const char *team, const char *rid, const char *lease,
                         bool count_request, uint64_t seq, uint64_t admitted_usec, uint64_t now_usec,
                         uint64_t tokens, uint64_t cost) {
        struct settle *s;

        if (f->n_queue >= KB_FLEET_QUEUE_MAX) {
                struct settle *old = TAILQ_FIRST(&f->queue);
                if (old && !old->sent)
                        queue_drop(f, old);
                f->dropped++;
                if (f->n_queue >= KB_FLEET_QUEUE_MAX)
                        return;
        }
        s = calloc(1, sizeof(*s));
        if (!s || !(s->team = strdup(team))) {
                free(s);
                f->dropped++;
                return;
        }
        s->fleet = f;
        snprintf(s->rid, sizeof(s->rid), "%s", rid);
        snprintf(s->lease, sizeof(s->lease), "%s", strempty(lease));
        s->count_request = count_request;
        s->seq = seq;
        s->k_settle = kb_quota_bucket_key(now_usec);
        s->day = kb_quota_day_of(now_usec);
        s->month = kb_quota_month_of(now_usec);
        s->tokens = tokens;
        s->cost = cost;
        s->k_admit = kb_quota_bucket_key(admitted_usec);
        if (f->backfill_before) {
                TAILQ_INSERT_BEFORE(f->backfill_before, s, link);
                f->sent_upto = NULL;
        } else
                TAILQ_INSERT_TAIL(&f->queue, s, link);
        f->n_queue++;
        send_settles(f);
}

void kb_fleet_backfill_settle(struct kb_fleet *f, const char *team, uint64_t seq, uint64_t when_usec,
                              uint64_t tokens, uint64_t cost) {
        if (!f || !kb_quota_team_is_fleet(f->quota, team))
                return;
        queue_settle(f, team, "", "", true, seq, when_usec, when_usec, tokens, cost);
        f->resent.n++;
        f->resent.tokens += tokens;
        f->resent.cost += cost;
}

void kb_fleet_set_handler(struct kb_fleet *f, kb_fleet_handler_t fn, void *userdata) {
        if (!f)
                return;
        f->handler = fn;
        f->handler_userdata = userdata;
}

void kb_fleet_set_backfill(struct kb_fleet *f, kb_fleet_backfill_t fn, void *userdata) {
        if (!f)
                return;
        f->backfill = fn;
        f->backfill_userdata = userdata;
}

static void hold_free(struct kb_fleet_hold *h);

void kb_fleet_settle(struct kb_fleet *f, struct kb_fleet_hold *h, const char *team, const char *rid, uint64_t seq,
                     uint64_t admitted_usec, uint64_t now_usec, uint64_t tokens, uint64_t cost) {
        bool mine = h && h->fleet == f;

        if (f)
                /* The request is counted here unless the store surely
                 * counted it at admission; a hold that may exist is looked
                 * up under its lease and released. */
                queue_settle(f, team, rid, mine && (h->admitted || h->doubtful) ? h->lease : "",
                             !(mine && h->admitted), seq, admitted_usec, now_usec, tokens, cost);
        if (h) {
                h->admitted = h->doubtful = false; /* settled: nothing to release any more */
                h->ended = true;
                if (!h->pending && !h->grow_pending)
                        hold_free(h);
        }
}

void kb_fleet_hold_free(struct kb_fleet_hold *h) {
        if (!h)
                return;
        h->ended = true;
        if (!h->pending && !h->grow_pending)
                hold_free(h);
}

/* ---- reservations ---- */

static void hold_free(struct kb_fleet_hold *h) {
        if (!h)
                return;
        if (h->on_wait_list)
                LIST_REMOVE(h, waiting);
        free((char *) h->ask.team);
        free(h);
}

static void verdict(struct kb_fleet_hold *h, const struct kb_fleet_verdict *v) {
        h->pending = false;
        if (h->ended) {
                /* The call ended first: give back what the store may hold
                 * for it (sequence 0: a release, no usage, no request). */
                if (h->admitted || h->doubtful)
                        queue_settle(h->fleet, h->ask.team, h->rid, h->lease, false, 0, h->ask.now_usec,
                                     h->ask.now_usec, 0, 0);
                if (!h->grow_pending)
                        hold_free(h);
                return;
        }
        h->done(h->userdata, v);
}

static void wait_for_epoch(struct kb_fleet *f, struct kb_fleet_hold *h) {
        if (!h->on_wait_list) {
                LIST_INSERT_HEAD(&f->waiting, h, waiting);
                h->on_wait_list = true;
        }
        if (!f->hello_pending)
                epoch_changed(f);
        if (!f->hello_pending) {
                /* could not even ask: no answer */
                LIST_REMOVE(h, waiting);
                h->on_wait_list = false;
                verdict(h, &(struct kb_fleet_verdict) { .result = -ENOTCONN });
        }
}

static int send_reserve(struct kb_fleet_hold *h, bool grow, uint64_t tokens, uint64_t cost);

static void on_reserved(void *userdata, const redisReply *reply) {
        struct kb_fleet_hold *h = userdata;
        struct kb_fleet *f = h->fleet;
        struct kb_fleet_verdict v = { .result = -ENOTCONN };
        long long st = elem_int(reply, 0);

        if (!reply) {
                h->doubtful = true; /* it may have been counted */
                verdict(h, &v);
                return;
        }
        if (st == -1) {
                wait_for_epoch(f, h);
                return;
        }
        if (st == 1) {
                h->admitted = true;
                h->tokens = h->ask.tokens;
                h->cost = h->ask.cost;
                v = (struct kb_fleet_verdict) { .result = 0,
                                                .minute_requests = elem_u64(reply, 1),
                                                .minute_tokens = elem_u64(reply, 2) + elem_u64(reply, 3),
                                                .newest_tokens_k = elem_u64(reply, 4) };
        } else if (st == 0) {
                kb_quota_limit l = (kb_quota_limit) MIN(elem_u64(reply, 1), (uint64_t) _KB_QUOTA_LIMIT_MAX - 1);
                uint64_t k = elem_u64(reply, 5), now = h->ask.now_usec;
                uint64_t reset = 0;

                if (l == KB_QUOTA_REQUESTS_PER_MINUTE || l == KB_QUOTA_TOKENS_PER_MINUTE)
                        reset = k ? k * USEC_PER_SEC + 60 * USEC_PER_SEC : 0;
                else if (l == KB_QUOTA_BUDGET_PER_MONTH)
                        reset = kb_quota_next_month_usec(now);
                else if (l != KB_QUOTA_MAX_CONCURRENT)
                        reset = kb_quota_next_day_usec(now);
                v.result = -EDQUOT;
                v.denial = (struct kb_quota_denial) { .limit = l,
                                                      .used = elem_u64(reply, 2),
                                                      .requested = elem_u64(reply, 3),
                                                      .max = elem_u64(reply, 4),
                                                      .reset_usec = reset,
                                                      .rate = kb_quota_limit_is_rate(l) };
                if (v.denial.requested > v.denial.max)
                        v.denial.reset_usec = 0;
                v.minute_requests = elem_u64(reply, 6);
                v.minute_tokens = elem_u64(reply, 7);
                v.newest_tokens_k = elem_u64(reply, 8);
        }
        verdict(h, &v);
}

static void on_grown(void *userdata, const redisReply *reply) {
        struct kb_fleet_hold *h = userdata;

        h->grow_pending = false;
        if (h->ended) {
                if (!h->pending)
                        hold_free(h);
                return;
        }
        if (!reply || elem_int(reply, 0) != 2)
                return; /* no answer: asked again at the next event */
        h->tokens += elem_u64(reply, 1);
        h->cost += elem_u64(reply, 2);
        h->final_tokens |= elem_u64(reply, 3) != 0;
        h->final_cost |= elem_u64(reply, 4) != 0;
        if (elem_u64(reply, 3) || elem_u64(reply, 4)) {
                kb_quota_limit l = (kb_quota_limit) MIN(elem_u64(reply, 5), (uint64_t) _KB_QUOTA_LIMIT_MAX - 1);
                h->denial = (struct kb_quota_denial) { .limit = l,
                                                       .used = elem_u64(reply, 6),
                                                       .max = elem_u64(reply, 7),
                                                       .rate = kb_quota_limit_is_rate(l) };
        }
}

static int send_reserve(struct kb_fleet_hold *h, bool grow, uint64_t tokens, uint64_t cost) {
        struct kb_fleet *f = h->fleet;
        struct kb_args a;
        uint64_t now = grow ? kb_realtime_usec() : h->ask.now_usec, kmin, kcur;

        kb_args_init(&a);
        kb_quota_minute_keys(now, &kmin, &kcur);
        kb_arg_str(&a, prefix_of(f));
        kb_arg_str(&a, h->ask.team);
        kb_arg_str(&a, f->epoch);
        kb_arg_str(&a, h->lease);
        kb_arg_str(&a, h->rid);
        kb_arg_u64(&a, kmin);
        kb_arg_u64(&a, kcur);
        kb_arg_u64(&a, kb_quota_day_of(now));
        kb_arg_u64(&a, kb_quota_month_of(now));
        for (kb_quota_limit l = 0; l < _KB_QUOTA_LIMIT_MAX; l++)
                kb_arg_u64(&a, h->ask.limits[l]);
        kb_arg_u64(&a, tokens);
        kb_arg_u64(&a, cost);
        kb_arg_str(&a, grow ? "g" : "r");
        return args_eval(f, f->s_reserve, &a, grow ? on_grown : on_reserved, h);
}

int kb_fleet_reserve(struct kb_fleet *f, const struct kb_fleet_ask *ask, kb_fleet_done_t done, void *userdata,
                     struct kb_fleet_hold **ret) {
        struct kb_fleet_hold *h;
        int r;

        if (!f || !ask || !ask->team || !ask->rid || !done || !ret)
                return -EINVAL;
        if (!kb_fleet_ready(f))
                return -ENOTCONN;
        h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->fleet = f;
        h->ask = *ask;
        h->ask.team = strdup(ask->team);
        if (!h->ask.team) {
                free(h);
                return -ENOMEM;
        }
        snprintf(h->rid, sizeof(h->rid), "%s", ask->rid);
        snprintf(h->lease, sizeof(h->lease), "%s", strempty(kb_store_lease(f->store)));
        h->done = done;
        h->userdata = userdata;
        r = send_reserve(h, false, ask->tokens, ask->cost);
        if (r < 0) {
                hold_free(h);
                return r;
        }
        h->pending = true;
        *ret = h;
        return 0;
}

bool kb_fleet_hold_exhausted(struct kb_fleet *f, struct kb_fleet_hold *h, uint64_t tokens, uint64_t cost,
                             struct kb_quota_denial *ret_denial) {
        if (!f || !h || h->fleet != f || !h->admitted)
                return false;
        if ((tokens > h->tokens && h->final_tokens) || (cost > h->cost && h->final_cost)) {
                if (ret_denial)
                        *ret_denial = h->denial;
                return true;
        }
        /* ask ahead: at half of what is held, for as much again */
        bool more_t = !h->final_tokens && tokens * 2 > h->tokens, more_c = !h->final_cost && cost * 2 > h->cost;
        if (!h->grow_pending && (more_t || more_c) && kb_fleet_ready(h->fleet)) {
                uint64_t want_t = more_t ? MAX(tokens, h->tokens / 2 + 1) : 0;
                uint64_t want_c = more_c ? MAX(cost, h->cost / 2 + 1) : 0;
                if (send_reserve(h, true, want_t, want_c) == 0)
                        h->grow_pending = true;
        }
        return false;
}

/* ---- the fleet's view of each team, at every heartbeat ---- */

static void view_teams_free(struct kb_fleet *f) {
        for (size_t i = 0; i < f->n_view_teams; i++)
                free(f->view_teams[i]);
        free(f->view_teams);
        f->view_teams = NULL;
        f->n_view_teams = 0;
}

static void views_free(struct view_entry *v, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(v[i].team);
        free(v);
}

static void on_view(void *userdata, const redisReply *reply) {
        struct kb_fleet *f = userdata;
        size_t n = f->n_view_teams;
        struct view_entry *v;
        uint64_t now = kb_realtime_usec();

        f->view_pending = false;
        if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != n * 10 ||
            !(v = calloc(MAX(n, (size_t) 1), sizeof(*v)))) {
                view_teams_free(f);
                return;
        }
        for (size_t i = 0; i < n; i++) {
                size_t b = i * 10;
                v[i].team = TAKE_PTR(f->view_teams[i]);
                v[i].v = (struct kb_fleet_view) {
                        .read_usec = now,
                        .minute_requests = elem_u64(reply, b),
                        .minute_tokens = elem_u64(reply, b + 1),
                        .newest_tokens_k = elem_u64(reply, b + 2),
                        .in_flight = elem_u64(reply, b + 3),
                        .held_tokens = elem_u64(reply, b + 4),
                        .held_cost = elem_u64(reply, b + 5),
                        .day_tokens = elem_u64(reply, b + 6),
                        .day_cost = elem_u64(reply, b + 7),
                        .month_tokens = elem_u64(reply, b + 8),
                        .month_cost = elem_u64(reply, b + 9),
                };
        }
        view_teams_free(f);
        views_free(f->views, f->n_views);
        f->views = v;
        f->n_views = n;
}

static void read_views(void *userdata) {
        struct kb_fleet *f = userdata;
        struct kb_args a;
        uint64_t now = kb_realtime_usec(), kmin, kcur;
        size_t n = kb_quota_n_teams(f->quota);

        if (f->view_pending || !kb_fleet_ready(f) || n == 0)
                return;
        f->view_teams = calloc(n, sizeof(char *));
        if (!f->view_teams)
                return;
        kb_args_init(&a);
        kb_quota_minute_keys(now, &kmin, &kcur);
        kb_arg_str(&a, prefix_of(f));
        kb_arg_u64(&a, kmin);
        kb_arg_u64(&a, kcur);
        kb_arg_u64(&a, kb_quota_day_of(now));
        kb_arg_u64(&a, kb_quota_month_of(now));
        kb_arg_u64(&a, 0); /* the number of teams, set below */
        for (size_t i = 0; i < n; i++) {
                struct kb_quota_counters c;
                if (kb_quota_counters(f->quota, i, now, &c) < 0 || !c.fleet)
                        continue;
                if (!(f->view_teams[f->n_view_teams] = strdup(c.team))) {
                        a.full = true;
                        break;
                }
                kb_arg_str(&a, f->view_teams[f->n_view_teams++]);
        }
        if (!a.full)
                kb_arg_set_u64(&a, 5, f->n_view_teams);
        if (f->n_view_teams == 0)
                a.full = true; /* nothing to read */
        if (args_eval(f, f->s_view, &a, on_view, f) == 0) {
                f->view_pending = true;
                return;
        }
        view_teams_free(f);
}

bool kb_fleet_view(const struct kb_fleet *f, const char *team, struct kb_fleet_view *ret) {
        uint64_t now = kb_realtime_usec();

        for (size_t i = 0; f && team && i < f->n_views; i++)
                if (streq(f->views[i].team, team)) {
                        if (now > f->views[i].v.read_usec + 5 * USEC_PER_SEC)
                                return false;
                        *ret = f->views[i].v;
                        return true;
                }
        return false;
}

/* ---- hello: the epoch, and this host's counters into a new one ---- */

static void on_hello(void *userdata, const redisReply *reply) {
        struct kb_fleet *f = userdata;
        struct kb_fleet_hold *h, *next;

        f->hello_pending = false;
        if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 &&
            reply->element[0]->type == REDIS_REPLY_STRING) {
                snprintf(f->epoch, sizeof(f->epoch), "%.*s", (int) reply->element[0]->len, reply->element[0]->str);
                if (elem_u64(reply, 1) == 1) {
                        f->pushes++;
                        f->push.event = "epoch";
                        f->push.epoch = f->epoch;
                        if (f->handler)
                                f->handler(f->handler_userdata, &f->push);
                } else if (!f->backfilled && elem_u64(reply, 2) < f->start_seq && f->backfill) {
                        /* Settled before this fleet began (a previous run, or
                         * before a reload) and not acknowledged: from the
                         * journal, ahead of what is queued now. */
                        f->backfill_before = TAILQ_FIRST(&f->queue);
                        f->resent = (struct kb_fleet_event) { .event = "resent", .epoch = f->epoch };
                        f->backfill(f->backfill_userdata, elem_u64(reply, 2), f->start_seq);
                        f->backfill_before = NULL;
                        if (f->handler && f->resent.n > 0)
                                f->handler(f->handler_userdata, &f->resent);
                }
                f->backfilled = true;
        }
        /* reservations that met the old epoch: again, or no answer */
        for (h = LIST_FIRST(&f->waiting); h; h = next) {
                next = LIST_NEXT(h, waiting);
                LIST_REMOVE(h, waiting);
                h->on_wait_list = false;
                if (!f->epoch[0] || send_reserve(h, false, h->ask.tokens, h->ask.cost) < 0)
                        verdict(h, &(struct kb_fleet_verdict) { .result = -ENOTCONN });
        }
        send_settles(f);
}

static void hello(struct kb_fleet *f) {
        struct kb_args aa, *a = &aa;
        char epoch[33];
        uint64_t now = kb_realtime_usec();
        size_t n_teams = 0;
        int count_at;

        if (f->hello_pending)
                return;
        kb_args_init(a);
        f->push = (struct kb_fleet_event) {};
        unsigned char raw[16];
        kb_random_bytes(raw, sizeof(raw));
        for (size_t i = 0; i < sizeof(raw); i++)
                snprintf(epoch + 2 * i, 3, "%02x", raw[i]);

        kb_arg_str(a, prefix_of(f));
        kb_arg_str(a, epoch);
        kb_arg_str(a, f->instance);
        kb_arg_u64(a, *f->seq);
        count_at = a->n;
        kb_arg_u64(a, 0);
        {
                uint64_t kmin, kcur;
                kb_quota_minute_keys(now, &kmin, &kcur);
                kb_arg_u64(a, kmin);
        }
        /* The team names point into the quota's teams: sent before returning. */
        for (size_t i = 0; i < kb_quota_n_teams(f->quota); i++) {
                struct kb_quota_counters c;
                if (kb_quota_counters(f->quota, i, now, &c) < 0 || !c.fleet)
                        continue;
                kb_arg_str(a, c.team);
                /* "" for a window with nothing counted yet */
                f->push.n++;
                f->push.tokens += c.month_tokens;
                f->push.cost += c.month_cost;
                c.has_day ? kb_arg_u64(a, c.day) : kb_arg_str(a, "");
                kb_arg_u64(a, c.day_tokens);
                kb_arg_u64(a, c.day_cost);
                c.has_month ? kb_arg_u64(a, c.month) : kb_arg_str(a, "");
                kb_arg_u64(a, c.month_tokens);
                kb_arg_u64(a, c.month_cost);
                kb_arg_u64(a, c.n_buckets);
                for (size_t b = 0; b < c.n_buckets; b++) {
                        kb_arg_u64(a, c.buckets[b].k);
                        kb_arg_u64(a, c.buckets[b].requests);
                        kb_arg_u64(a, c.buckets[b].tokens);
                }
                n_teams++;
        }
        if (!a->full)
                kb_arg_set_u64(a, count_at, n_teams);
        if (args_eval(f, f->s_push, a, on_hello, f) == 0)
                f->hello_pending = true;
}

void kb_fleet_store_up(struct kb_fleet *f) {
        struct settle *s;

        if (!f)
                return;
        TAILQ_FOREACH(s, &f->queue, link)
                s->sent = false;
        f->sent_upto = NULL;
        f->n_in_flight = 0;
        f->epoch[0] = 0;
        f->hello_pending = false;
        hello(f);
}

bool kb_fleet_ready(const struct kb_fleet *f) {
        return f && f->epoch[0] && !f->hello_pending && kb_store_online(f->store);
}

void kb_fleet_get_stats(const struct kb_fleet *f, struct kb_fleet_stats *ret) {
        *ret = (struct kb_fleet_stats) {};
        if (!f)
                return;
        ret->queued = f->n_queue;
        ret->dropped = f->dropped;
        ret->pushes = f->pushes;
        snprintf(ret->epoch, sizeof(ret->epoch), "%s", f->epoch);
}

int kb_fleet_new(struct kb_store *s, struct kb_quota *q, const char *instance, const uint64_t *seq,
                 struct kb_fleet **ret) {
        struct kb_fleet *f;

        if (!s || !q || !instance || !seq || !ret)
                return -EINVAL;
        f = calloc(1, sizeof(*f));
        if (!f)
                return -ENOMEM;
        f->store = s;
        f->quota = q;
        f->seq = seq;
        f->start_seq = *seq;
        TAILQ_INIT(&f->queue);
        LIST_INIT(&f->waiting);
        f->instance = strdup(instance);
        if (!f->instance) {
                free(f);
                return -ENOMEM;
        }
        if ((f->s_reserve = kb_store_add_script(s, fleet_script_reserve)) < 0 ||
            (f->s_settle = kb_store_add_script(s, fleet_script_settle)) < 0 ||
            (f->s_push = kb_store_add_script(s, fleet_script_push)) < 0 ||
            (f->s_view = kb_store_add_script(s, fleet_script_view)) < 0) {
                int r = f->s_reserve < 0 ? f->s_reserve : f->s_settle < 0 ? f->s_settle : f->s_push < 0 ? f->s_push : f->s_view;
                free(f->instance);
                free(f);
                return r;
        }
        kb_store_set_beat_hook(s, read_views, f);
        *ret = f;
        return 0;
}

struct kb_fleet *kb_fleet_free(struct kb_fleet *f) {
        struct kb_fleet_hold *h;
        struct settle *s;

        if (!f)
                return NULL;
        while ((h = LIST_FIRST(&f->waiting))) {
                LIST_REMOVE(h, waiting);
                h->on_wait_list = false;
                verdict(h, &(struct kb_fleet_verdict) { .result = -ENOTCONN });
        }
        while ((s = TAILQ_FIRST(&f->queue)))
                queue_drop(f, s);
        view_teams_free(f);
        views_free(f->views, f->n_views);
        free(f->instance);
        free(f);
        return NULL;
}
