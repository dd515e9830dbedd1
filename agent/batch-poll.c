/* SPDX-License-Identifier: MIT */
/* Layer: like admin and preflight, a driver of its own on the broker's loop.
 * Every batch_poll, the batches made through this broker and not yet seen
 * ended are retrieved through the route and key version that made them; one
 * seen ended is billed once, as an app's retrieve would bill it: its tokens
 * priced with the batch prices, settled to the team's limits and budgets,
 * and journaled as a request record with no peer (the broker's own call).
 * An Anthropic message batch reports no usage: once ended, its results are
 * fetched and summed line by line as they pass (usage.h's JSONL tap). */

#include "batch-poll.h"
#include "broker.h"
#include "fleet-quota.h"
#include "headers.h"
#include "objects.h"

#define POLL_MAX_IN_FLIGHT 16
#define POLL_BODY_MAX (1024u * 1024u)

struct poll_call {
        struct kb_batch_poll *bp;
        struct poll_call *next;
        struct kb_upstream_call *call;
        struct kb_config *config;
        char *id, *team, *url;
        const struct kb_route *route;
        struct kb_key *key;
        char *key_label;
        long status;
        struct kb_buf body;
        uint64_t start_usec;
        kb_endpoint endpoint;           /* batches or message_batches */
        struct kb_usage_tap *results;   /* a message batch's results, being summed */
        const char *headers[KB_UPSTREAM_MAX_HEADERS];
        size_t n_headers;
};

struct kb_batch_poll {
        struct kb_broker *b;
        sd_event_source *timer;
        struct poll_call *calls;
        size_t n_calls;
        uint64_t polls, billed;
};

static void call_free(struct poll_call *c) {
        kb_upstream_call_cancel(c->call);
        kb_usage_tap_free(c->results);
        kb_key_unref(c->key);
        kb_config_unref(c->config);
        kb_buf_free(&c->body);
        free(c->id);
        free(c->team);
        free(c->url);
        free(c->key_label);
        free(c);
}

static void call_remove(struct poll_call *c) {
        struct kb_batch_poll *bp = c->bp;
        for (struct poll_call **p = &bp->calls; *p; p = &(*p)->next)
                if (*p == c) {
                        *p = c->next;
                        bp->n_calls--;
                        break;
                }
        c->call = NULL;
        call_free(c);
}

static int on_response(void *userdata, long status, const struct kb_http_header *h, size_t n) {
        struct poll_call *c = userdata;
        c->status = status;
        return 0;
}

static int on_data(void *userdata, const char *buf, size_t len) {
        struct poll_call *c = userdata;
        if (c->results) {
                /* summed as it passes; nothing is kept */
                int r = kb_usage_tap_feed(c->results, buf, len, &c->body);
                kb_buf_clear(&c->body);
                return r;
        }
        if (c->body.len + len > POLL_BODY_MAX)
                return -EFBIG;
        return kb_buf_append(&c->body, buf, len);
}

/* The batch ended: bill it once, as metering.c bills an app's retrieve. */
static void bill(struct poll_call *c, const struct kb_usage *u) {
        struct kb_broker *b = c->bp->b;
        const struct kb_team *team = kb_config_find_team(c->config, c->team);
        uint64_t now = kb_realtime_usec();
        struct kb_request r = {
                .broker = b,
                .config = c->config,
                .team = team,
                .endpoint = c->endpoint,
                .family = c->route->family,
                .route = c->route,
                .key_label = c->key_label,
                .status = 200,
                .upstream_status = 200,
                .outcome = KB_OUTCOME_OK,
                .billed = *u,
                .billed_set = true,
                .price = kb_price_find(c->route, NULL, u->upstream_model),
                .settled_usec = now,
                .latency_usec = kb_now_usec() - c->start_usec,
        };
        unsigned char raw[16];
        kb_random_bytes(raw, sizeof(raw));
        for (size_t i = 0; i < sizeof(raw); i++)
                snprintf(r.id + 2 * i, 3, "%02x", raw[i]);
        snprintf(r.object_id, sizeof(r.object_id), "%s", c->id);
        r.cost_microusd = kb_usage_cost_microusd(u, r.family, r.price);

        uint64_t tokens = kb_usage_quota_tokens(u, r.family);
        struct kb_reservation *res = NULL;
        if (team && kb_quota_reserve_unchecked(b->quota, team->name, now, 0, 0, &res) >= 0) {
                kb_quota_settle(res, now, tokens, r.cost_microusd);
                r.seq = ++b->seq;
                if (b->fleet && kb_quota_team_is_fleet(b->quota, team->name))
                        kb_fleet_settle(b->fleet, NULL, team->name, r.id, r.seq, now, now, tokens,
                                        (uint64_t) MAX(r.cost_microusd, (int64_t) 0));
        }
        (void) kb_journal_request(b->journal, &r);
        c->bp->billed++;
}

static int start_call(struct poll_call *c, const char *path);

static void bill_once(struct poll_call *c, const struct kb_usage *u) {
        struct kb_batch_poll *bp = c->bp;
        const struct kb_object *o = kb_objects_find(bp->b->objects, c->id);
        if (o && !o->billed && kb_objects_set_billed(bp->b->objects, c->id) >= 0 && u->batch)
                bill(c, u);
}

static void on_done(void *userdata, int error, const char *message) {
        struct poll_call *c = userdata;
        struct kb_batch_poll *bp = c->bp;

        c->call = NULL;
        if (c->results) {
                /* a message batch's results: whole, or not billed (polled again) */
                if (error == 0 && c->status == 200 && kb_usage_tap_finish(c->results, &c->body) >= 0)
                        bill_once(c, kb_usage_tap_get(c->results));
        } else if (error == 0 && c->status == 200) {
                struct kb_usage u = {};
                (void) kb_usage_answer(&u, c->endpoint, c->body.data ?: "", c->body.len);
                bool ended = u.object_ended;
                kb_objects_adopt_files(bp->b->objects, kb_objects_find(bp->b->objects, c->id), u.object_files,
                                       ELEMENTSOF(u.object_files));
                if (ended && c->endpoint == KB_ENDPOINT_MESSAGE_BATCHES) {
                        free(u.upstream_model);
                        free(u.upstream_request_id);
                        free(u.object_status);
                        /* the same call goes on with the results */
                        kb_buf_free(&c->body);
                        c->status = 0;
                        if (kb_usage_tap_new(KB_FAMILY_ANTHROPIC, KB_ENDPOINT_MESSAGE_BATCHES, false, false,
                                             &c->results) >= 0) {
                                kb_usage_tap_set_jsonl(c->results);
                                if (start_call(c, "results") >= 0)
                                        return;
                        }
                        call_remove(c);
                        return;
                }
                if (ended)
                        bill_once(c, &u);
                free(u.upstream_model);
                free(u.upstream_request_id);
                free(u.object_status);
                free(u.object_files[0]);
                free(u.object_files[1]);
        } else if (c->status == 404)
                /* the provider no longer has it: nothing will ever be billed */
                (void) kb_objects_set_billed(bp->b->objects, c->id);
        call_remove(c);
}

static const struct kb_upstream_ops poll_ops = {
        .on_response = on_response,
        .on_data = on_data,
        .on_done = on_done,
};

static bool in_flight(const struct kb_batch_poll *bp, const char *id) {
        for (const struct poll_call *c = bp->calls; c; c = c->next)
                if (streq(c->id, id))
                        return true;
        return false;
}

/* GET BASE/batches/ID or BASE/messages/batches/ID[/results]. */
static int start_call(struct poll_call *c, const char *suffix) {
        struct kb_broker *b = c->bp->b;
        const struct kb_route *route = c->route;

        free(c->url);
        if (asprintf(&c->url, "%s/%s/%s%s%s", route->base_url,
                     c->endpoint == KB_ENDPOINT_MESSAGE_BATCHES ? "messages/batches" : "batches", c->id,
                     suffix ? "/" : "", strempty(suffix)) < 0) {
                c->url = NULL;
                return -ENOMEM;
        }
        struct kb_upstream_request req = {
                .method = "GET",
                .url = c->url,
                .headers = c->headers,
                .n_headers = c->n_headers,
                .timeout_usec = MIN(route->timeout_usec ?: 60 * USEC_PER_SEC, 60 * USEC_PER_SEC),
                .connect_timeout_usec = route->connect_timeout_usec,
                .ca_file = route->ca_file,
        };
        kb_header_set_auth(&req, route, c->key);
        int q = kb_upstream_start(b->upstream, &req, &poll_ops, c, &c->call);
        kb_keyseal_release(&b->keyseal, c->key);
        if (q < 0)
                c->call = NULL;
        return q;
}

static int start_one(const struct kb_object *o, void *userdata) {
        struct kb_batch_poll *bp = userdata;
        struct kb_broker *b = bp->b;

        if (bp->n_calls >= POLL_MAX_IN_FLIGHT)
                return 1;
        if ((o->kind != KB_OBJECT_BATCH && o->kind != KB_OBJECT_MESSAGE_BATCH) || o->billed || in_flight(bp, o->id))
                return 0;
        const struct kb_route *route = kb_config_find_route(b->config, o->route);
        kb_family want = o->kind == KB_OBJECT_BATCH ? KB_FAMILY_OPENAI : KB_FAMILY_ANTHROPIC;
        if (!route || route->family != want)
                return 0;
        struct poll_call *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->bp = bp;
        c->config = kb_config_ref(b->config);
        c->route = route;
        c->endpoint = o->kind == KB_OBJECT_BATCH ? KB_ENDPOINT_BATCHES : KB_ENDPOINT_MESSAGE_BATCHES;
        c->start_usec = kb_now_usec();
        for (size_t i = 0; i < route->n_headers && c->n_headers < KB_UPSTREAM_MAX_HEADERS - 1; i++)
                c->headers[c->n_headers++] = route->headers[i];
        if (want == KB_FAMILY_ANTHROPIC && !kb_route_sets_header(route, "anthropic-version"))
                c->headers[c->n_headers++] = "anthropic-version: 2023-06-01";
        if (!(c->id = strdup(o->id)) || !(c->team = strdup(o->team))) {
                call_free(c);
                return -ENOMEM;
        }
        if (route->key) {
                int q = o->key && streq(o->key, route->key)
                                ? kb_keystore_get_version(b->keys, route->key, o->key_version, &c->key)
                                : -ENOENT;
                if (q < 0 && kb_keystore_get(b->keys, route->key, &c->key) < 0) {
                        call_free(c);
                        return 0;
                }
                if (asprintf(&c->key_label, "%s@%u", kb_key_name(c->key), kb_key_version(c->key)) < 0)
                        c->key_label = NULL;
        }
        if (start_call(c, NULL) < 0) {
                call_free(c);
                return 0;
        }
        c->next = bp->calls;
        bp->calls = c;
        bp->n_calls++;
        bp->polls++;
        return 0;
}

static void arm(struct kb_batch_poll *bp);

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        struct kb_batch_poll *bp = userdata;
        (void) kb_objects_foreach(bp->b->objects, start_one, bp);
        arm(bp);
        return 0;
}

static void arm(struct kb_batch_poll *bp) {
        uint64_t every = bp->b->config->agent.batch_poll_usec;
        if (every == 0) {
                (void) sd_event_source_set_enabled(bp->timer, SD_EVENT_OFF);
                return;
        }
        if (sd_event_source_set_time(bp->timer, kb_now_usec() + every) >= 0)
                (void) sd_event_source_set_enabled(bp->timer, SD_EVENT_ONESHOT);
}

int kb_batch_poll_new(struct kb_broker *b, struct kb_batch_poll **ret) {
        struct kb_batch_poll *bp = calloc(1, sizeof(*bp));
        if (!bp)
                return -ENOMEM;
        bp->b = b;
        int r = sd_event_add_time(b->event, &bp->timer, CLOCK_MONOTONIC, UINT64_MAX, USEC_PER_SEC, on_timer, bp);
        if (r < 0) {
                free(bp);
                return r;
        }
        arm(bp);
        *ret = bp;
        return 0;
}

void kb_batch_poll_reconfigure(struct kb_batch_poll *bp) {
        if (bp)
                arm(bp);
}

struct kb_batch_poll *kb_batch_poll_free(struct kb_batch_poll *bp) {
        if (!bp)
                return NULL;
        while (bp->calls) {
                struct poll_call *c = bp->calls;
                bp->calls = c->next;
                call_free(c);
        }
        sd_event_source_disable_unref(bp->timer);
        free(bp);
        return NULL;
}
