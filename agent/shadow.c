/* SPDX-License-Identifier: MIT */
/* Shadow calls: a sampled request is sent again, with the shadow's model,
 * to the shadow route once its real answer went to the app; the two
 * answers are compared and journaled as a pair (shadow.h). A shadow owns
 * copies of all it sends and a reference to the config it started with,
 * so the app's request, a reload or a key rotation never pulls anything
 * from under it. */

#include <inttypes.h>
#include <strings.h>
#include <sys/queue.h>

#include "shadow.h"
#include "body.h"
#include "broker.h"
#include "headers.h"
#include "keybroker/keybroker.h"

#define SHADOW_FILE "shadow.json"
/* The day's spend is written this long after it changed (and at exit):
 * a crash loses at most this much of it. */
#define SAVE_DELAY_USEC (1 * USEC_PER_SEC)

struct kb_shadow_sample {
        struct kb_config *config;       /* ref: cfg, its route and the model live in it */
        const struct kb_model *model;
        const struct kb_shadow *cfg;
        kb_endpoint endpoint;
        char *url;
        char **headers;                 /* "Name: value", never the credential */
        size_t n_headers;
        struct kb_buf body;             /* the app's body, the shadow's model in it */
        struct kb_buf primary;          /* the primary's answer, at most KB_SHADOW_CAPTURE_MAX */
        bool primary_over;
};

struct skip_count {
        char *model;
        uint64_t n;                     /* skipped since the last skipped_busy record */
        uint64_t reported_usec;         /* monotonic time of that record; 0 never */
};

struct shadow_call {
        LIST_ENTRY(shadow_call) link;
        struct kb_shadows *s;
        struct kb_shadow_sample *x;
        struct kb_upstream_call *call;
        struct kb_key *key;
        char *key_label;
        /* the primary, as its request finished */
        char request_id[33];
        char *team, *route, *upstream_model;
        bool stream;
        long status;
        const char *status_class;
        uint64_t input_tokens, output_tokens, latency_ms;
        int64_t cost;
        struct kb_shape shape;
        /* the shadow's answer */
        uint64_t start_usec;
        long shadow_status;
        bool sse;
        struct kb_usage_tap *tap;
        struct kb_buf answer, sink;
        bool answer_over;
};

struct kb_shadows {
        struct kb_broker *b;
        struct kb_shadow_budget *budget;
        char *path;                     /* state_dir/shadow.json */
        sd_event_source *save_timer;
        bool stopping;
        size_t n_in_flight;
        LIST_HEAD(, shadow_call) calls;
        struct skip_count *skips;
        size_t n_skips;
};

/* ---- lifecycle ---- */

int kb_shadows_new(struct kb_broker *b, struct kb_shadows **ret) {
        struct kb_shadows *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->b = b;
        LIST_INIT(&s->calls);
        if (kb_shadow_budget_new(&s->budget) < 0 ||
            asprintf(&s->path, "%s/%s", strempty(b->config->agent.state_dir), SHADOW_FILE) < 0) {
                s->path = NULL;
                kb_shadows_free(s);
                return -ENOMEM;
        }
        *ret = s;
        return 0;
}

int kb_shadows_load(struct kb_shadows *s, const char *path) {
        return kb_shadow_budget_load(s->budget, path ?: s->path, kb_realtime_usec());
}

static void save(struct kb_shadows *s) {
        int q = kb_shadow_budget_save(s->budget, s->path);
        if (q < 0)
                fprintf(stderr, "<4>cannot save the shadows' spend to %s: %s\n", s->path, strerror(-q));
}

static void call_free(struct shadow_call *c) {
        kb_upstream_call_cancel(c->call);
        kb_key_unref(c->key);
        free(c->key_label);
        free(c->team);
        free(c->route);
        free(c->upstream_model);
        kb_usage_tap_free(c->tap);
        kb_buf_free(&c->answer);
        kb_buf_free(&c->sink);
        kb_shadow_sample_free(c->x);
        free(c);
}

struct kb_shadows *kb_shadows_free(struct kb_shadows *s) {
        struct shadow_call *c;

        if (!s)
                return NULL;
        while ((c = LIST_FIRST(&s->calls))) {
                LIST_REMOVE(c, link);
                call_free(c);
        }
        if (kb_shadow_budget_dirty(s->budget))
                save(s);
        sd_event_source_disable_unref(s->save_timer);
        kb_shadow_budget_free(s->budget);
        for (size_t i = 0; i < s->n_skips; i++)
                free(s->skips[i].model);
        free(s->skips);
        free(s->path);
        free(s);
        return NULL;
}

void kb_shadows_stop(struct kb_shadows *s) {
        if (s)
                s->stopping = true;
}

void kb_shadow_sample_free(struct kb_shadow_sample *x) {
        if (!x)
                return;
        free(x->url);
        for (size_t i = 0; i < x->n_headers; i++)
                free(x->headers[i]);
        free(x->headers);
        kb_buf_free(&x->body);
        kb_buf_free(&x->primary);
        kb_config_unref(x->config);
        free(x);
}

static int on_save_timer(sd_event_source *e, uint64_t usec, void *userdata) {
        save(userdata);
        return 0;
}

/* Write the spend soon: one write for a burst of shadows, not one each. */
static void save_later(struct kb_shadows *s) {
        if (kb_timer_arm_in(s->b->event, &s->save_timer, SAVE_DELAY_USEC, on_save_timer, s, "shadow-save") < 0)
                save(s);
}

/* ---- records ---- */

static void journal(struct kb_shadows *s, const struct kb_config *c, struct kb_shadow_record *rec) {
        rec->host = s->b->hostname;
        rec->test = c && c->agent.test_traffic;
        rec->realtime_usec = kb_realtime_usec();
        int q = kb_journal_shadow(s->b->journal, rec);
        if (q < 0 && q != -EAGAIN)
                fprintf(stderr, "<4>cannot queue a shadow record: %s\n", strerror(-q));
}

/* A sampled request found KB_SHADOW_MAX_IN_FLIGHT shadows running: counted,
 * and said at most once a minute per model so a busy broker does not
 * flood the journal with it. */
static void note_skipped(struct kb_shadows *s, const struct kb_config *c, const struct kb_model *m) {
        struct skip_count *k = NULL;
        uint64_t now = kb_now_usec();

        for (size_t i = 0; i < s->n_skips && !k; i++)
                if (streq(s->skips[i].model, m->name))
                        k = &s->skips[i];
        if (!k && s->n_skips < KB_SHADOW_BUDGET_MAX_MODELS) {
                struct skip_count *n = reallocarray(s->skips, s->n_skips + 1, sizeof(*n));
                char *name = strdup(m->name);
                if (n)
                        s->skips = n;
                if (!n || !name) {
                        free(name);
                        return;
                }
                k = &s->skips[s->n_skips++];
                *k = (struct skip_count) { .model = name };
        }
        if (!k)
                return;
        k->n++;
        if (k->reported_usec && now < k->reported_usec + KB_SHADOW_SKIP_REPORT_USEC)
                return;
        struct kb_shadow_record rec = {
                .event = "skipped_busy",
                .model = m->name,
                .shadow_route = m->shadow->route->name,
                .shadow_upstream_model = m->shadow->upstream_model,
                .skipped = k->n,
        };
        journal(s, c, &rec);
        k->n = 0;
        k->reported_usec = now;
}

/* ---- sampling, at forward time ---- */

static bool eligible_endpoint(kb_endpoint e) {
        return e == KB_ENDPOINT_CHAT || e == KB_ENDPOINT_RESPONSES || e == KB_ENDPOINT_MESSAGES ||
               e == KB_ENDPOINT_COMPLETIONS || e == KB_ENDPOINT_EMBEDDINGS;
}

static int add_line(struct kb_shadow_sample *x, const char *name, const char *value) {
        char *line;
        if (x->n_headers >= KB_UPSTREAM_MAX_HEADERS)
                return -E2BIG;
        char **n = reallocarray(x->headers, x->n_headers + 1, sizeof(char *));
        if (!n)
                return -ENOMEM;
        x->headers = n;
        if (value ? asprintf(&line, "%s: %s", name, value) < 0 : !(line = strdup(name)))
                return -ENOMEM;
        x->headers[x->n_headers++] = line;
        return 0;
}

/* The app's headers as proxy.c would forward them to the shadow route,
 * but no Idempotency-Key: a shadow at the same provider must not be taken
 * for a retry of the primary. Then the route's own. */
static int copy_headers(struct kb_shadow_sample *x, const struct kb_http_request *h, const struct kb_route *rt) {
        bool have_ct = false;
        int q = 0;

        for (size_t i = 0; q >= 0 && i < h->n_headers; i++) {
                const char *n = h->headers[i].name;
                if (!kb_header_forwardable(n, rt) || strcasecmp(n, "idempotency-key") == 0)
                        continue;
                have_ct = have_ct || strcasecmp(n, "content-type") == 0;
                q = add_line(x, n, h->headers[i].value);
        }
        if (q >= 0 && !have_ct)
                q = add_line(x, "Content-Type", "application/json");
        for (size_t i = 0; q >= 0 && i < rt->n_headers; i++)
                q = add_line(x, rt->headers[i], NULL);
        return q;
}

int kb_shadow_sample(struct kb_shadows *s, const struct kb_request *r, struct kb_shadow_sample **ret) {
        const struct kb_model *m = r->model_cfg;
        const struct kb_shadow *sh = m ? m->shadow : NULL;
        const struct kb_http_request *h = r->http;

        if (!s || s->stopping || !sh || !sh->route || !h || h->body_streamed || r->multipart || r->upload ||
            !eligible_endpoint(r->endpoint) || sh->route->family != r->family || r->route == sh->route)
                return 0;
        if (kb_random_u32() % 1000000u >= sh->sample_ppm)
                return 0;
        if (h->body.len > r->config->agent.max_request_body)
                return 0;
        if (kb_shadow_budget_spent(s->budget, m->name, kb_realtime_usec()) >= sh->budget_microusd_per_day)
                return 0;
        if (s->n_in_flight >= KB_SHADOW_MAX_IN_FLIGHT) {
                note_skipped(s, r->config, m);
                return 0;
        }

        struct kb_shadow_sample *x = calloc(1, sizeof(*x));
        if (!x)
                return -ENOMEM;
        x->config = kb_config_ref(r->config);
        x->model = m;
        x->cfg = sh;
        x->endpoint = r->endpoint;
        /* base_url ends in the API version (…/v1), as proxy.c's URLs */
        const char *rest = strncmp(h->url, "/v1/", 4) == 0 ? h->url + 3 : h->url;
        int q = asprintf(&x->url, "%s%s", sh->route->base_url, rest) < 0 ? -ENOMEM : 0;
        if (q < 0)
                x->url = NULL;
        if (q >= 0)
                q = copy_headers(x, h, sh->route);
        /* The OpenAI stream asks for its usage as the primary's does. */
        if (q >= 0)
                q = kb_body_rewrite(h->body.data ?: "", h->body.len, sh->upstream_model, r->add_include_usage,
                                    &x->body);
        if (q < 0) {
                kb_shadow_sample_free(x);
                return q == -ENOMEM ? q : 0;
        }
        *ret = x;
        return 1;
}

void kb_shadow_capture(struct kb_shadow_sample *x, const void *buf, size_t len) {
        if (!x || x->primary_over)
                return;
        if (len > KB_SHADOW_CAPTURE_MAX - x->primary.len || kb_buf_append(&x->primary, buf, len) < 0) {
                x->primary_over = true;
                kb_buf_free(&x->primary);
        }
}

/* ---- the shadow call ---- */

static void call_done(struct shadow_call *c, int error, const char *message);

static int on_response(void *userdata, long status, const struct kb_http_header *headers, size_t n) {
        struct shadow_call *c = userdata;
        const char *ct = NULL;

        for (size_t i = 0; i < n; i++)
                if (strcasecmp(headers[i].name, "content-type") == 0)
                        ct = headers[i].value;
        c->shadow_status = status;
        c->sse = ct && strncasecmp(ct, "text/event-stream", 17) == 0;
        return kb_usage_tap_new(c->x->cfg->route->family, c->x->endpoint, c->sse, false, &c->tap);
}

static int on_data(void *userdata, const char *buf, size_t len) {
        struct shadow_call *c = userdata;

        if (!c->answer_over) {
                if (len > KB_SHADOW_CAPTURE_MAX - c->answer.len || kb_buf_append(&c->answer, buf, len) < 0) {
                        c->answer_over = true;
                        kb_buf_free(&c->answer);
                }
        }
        if (!c->tap)
                return 0;
        /* The tap copies what it reads to sink; nobody reads that copy. */
        int q = kb_usage_tap_feed(c->tap, buf, len, &c->sink);
        kb_buf_clear(&c->sink);
        return q == -ENOMEM ? q : 0;
}

static void on_done(void *userdata, int error, const char *message) {
        struct shadow_call *c = userdata;

        c->call = NULL;         /* freed by upstream.c after this returns */
        call_done(c, error, message);
}

static const struct kb_upstream_ops shadow_ops = {
        .on_response = on_response,
        .on_data = on_data,
        .on_done = on_done,
};

static void format_usd(int64_t v, char buf[static 32]) {
        uint64_t m = v < 0 ? 0 - (uint64_t) v : (uint64_t) v;
        snprintf(buf, 32, "%s$%" PRIu64 ".%06" PRIu64, v < 0 ? "-" : "", m / 1000000, m % 1000000);
}

/* The shadow ended (or could not start: error, status 0): compare, charge
 * its own cap, journal the pair, and let it go. */
static void call_done(struct shadow_call *c, int error, const char *message) {
        struct kb_shadows *s = c->s;
        const struct kb_shadow *sh = c->x->cfg;
        const struct kb_config *cfg = c->x->config;
        struct kb_shape shape;
        char diff[256];
        uint64_t now = kb_realtime_usec();

        if (c->tap)
                (void) kb_usage_tap_finish(c->tap, &c->sink);
        const struct kb_usage *u = c->tap ? kb_usage_tap_get(c->tap) : NULL;
        long status = c->shadow_status;
        kb_shape_read(&shape, c->sse, c->answer.data, c->answer.len, c->answer_over);
        /* A transfer cut after its status is a transport error all the same. */
        const char *cls = error != 0 ? "transport" : kb_shape_status_class(status);
        kb_shape_diff(c->status_class, &c->shape, cls, &shape, diff, sizeof(diff));
        if (error != 0 && message && strlen(diff) + 2 < sizeof(diff))
                snprintf(diff + strlen(diff), sizeof(diff) - strlen(diff), "%s%.*s", diff[0] ? "; " : "",
                         (int) (sizeof(diff) - strlen(diff) - 3), message);
        bool match = streq(c->status_class, cls) && kb_shape_equal(&c->shape, &shape);
        const struct kb_price *price = kb_price_find(sh->route, sh->upstream_model, u ? u->upstream_model : NULL);
        int64_t cost = u ? kb_usage_cost_microusd(u, sh->route->family, price) : 0;

        struct kb_shadow_record rec = {
                .event = "pair",
                .model = c->x->model->name,
                .shadow_route = sh->route->name,
                .shadow_upstream_model = sh->upstream_model,
                .request_id = c->request_id,
                .team = c->team,
                .endpoint = kb_endpoint_to_string(c->x->endpoint),
                .route = c->route,
                .upstream_model = c->upstream_model,
                .shadow_key = c->key_label,
                .stream = c->stream,
                .status = c->status,
                .status_class = c->status_class,
                .shadow_status = status,
                .shadow_error = streq(cls, "2xx") ? "none" : cls,
                .shape_match = match,
                .shape_diff = diff,
                .input_tokens = c->input_tokens,
                .output_tokens = c->output_tokens,
                .shadow_input_tokens = u ? u->input_tokens : 0,
                .shadow_output_tokens = u ? u->output_tokens : 0,
                .latency_ms = c->latency_ms,
                .shadow_latency_ms = (kb_now_usec() - c->start_usec) / USEC_PER_MSEC,
                .cost_microusd = c->cost,
                .shadow_cost_microusd = cost,
                .shadow_priced = price != NULL,
        };
        if (cfg->agent.journal)
                journal(s, cfg, &rec);

        int crossed = kb_shadow_budget_add(s->budget, c->x->model->name, cost, sh->budget_microusd_per_day, now);
        if (crossed > 0) {
                char spent[32], cap[32];
                struct kb_shadow_record b = {
                        .event = "budget_reached",
                        .model = c->x->model->name,
                        .shadow_route = sh->route->name,
                        .shadow_upstream_model = sh->upstream_model,
                        .spent_microusd = kb_shadow_budget_spent(s->budget, c->x->model->name, now),
                        .budget_microusd = sh->budget_microusd_per_day,
                };
                format_usd(b.spent_microusd, spent);
                format_usd(b.budget_microusd, cap);
                journal(s, cfg, &b);
                fprintf(stderr, "<5>model %s: shadow budget reached (%s of %s today); no more shadow calls "
                        "until 00:00 UTC\n", c->x->model->name, spent, cap);
                save(s);
        } else if (kb_shadow_budget_dirty(s->budget))
                save_later(s);

        /* le_prev is set once the call started and went on the list */
        if (c->link.le_prev) {
                LIST_REMOVE(c, link);
                s->n_in_flight--;
        }
        call_free(c);
}

/* Whether the provider decided what the app got: its answer was relayed
 * (a success, its error, or its stream cut), not refused by the broker,
 * abandoned by the app or cut at a quota limit. */
static bool provider_decided(const struct kb_request *r) {
        return r->tap && r->upstream_status > 0 && !r->quota_cut &&
               (r->outcome == KB_OUTCOME_OK || r->outcome == KB_OUTCOME_UPSTREAM_ERROR ||
                r->outcome == KB_OUTCOME_STREAM_INTERRUPTED);
}

static int copy_primary(struct shadow_call *c, const struct kb_request *r) {
        const struct kb_usage *u = r->billed_set ? &r->billed : r->tap ? kb_usage_tap_get(r->tap) : NULL;

        memcpy(c->request_id, r->id, sizeof(c->request_id));
        c->stream = r->stream;
        c->status = r->upstream_status;
        c->status_class = r->outcome == KB_OUTCOME_STREAM_INTERRUPTED ? "transport"
                                                                       : kb_shape_status_class(r->upstream_status);
        c->input_tokens = u ? u->input_tokens : 0;
        c->output_tokens = u ? u->output_tokens : 0;
        c->latency_ms = r->latency_usec / USEC_PER_MSEC;
        c->cost = r->cost_microusd;
        kb_shape_read(&c->shape, r->sse, c->x->primary.data, c->x->primary.len, c->x->primary_over);
        kb_buf_free(&c->x->primary);
        if (!(c->team = strdup(r->team ? r->team->name : "")) || !(c->route = strdup(r->route->name)) ||
            !(c->upstream_model = strdup(r->target ? r->target->upstream_model : "")))
                return -ENOMEM;
        return 0;
}

void kb_shadow_start(struct kb_shadows *s, struct kb_shadow_sample *x, const struct kb_request *r) {
        if (!x)
                return;
        const struct kb_shadow *sh = x->cfg;
        const struct kb_route *rt = sh->route;
        /* A promotion may have sent this call to the shadow's own route
         * (a fallback to it cannot: config forbids it): nothing to compare. */
        if (!s || s->stopping || !provider_decided(r) || r->route == rt ||
            kb_shadow_budget_spent(s->budget, x->model->name, kb_realtime_usec()) >= sh->budget_microusd_per_day) {
                kb_shadow_sample_free(x);
                return;
        }
        if (s->n_in_flight >= KB_SHADOW_MAX_IN_FLIGHT) {
                note_skipped(s, x->config, x->model);
                kb_shadow_sample_free(x);
                return;
        }
        struct shadow_call *c = calloc(1, sizeof(*c));
        if (!c) {
                kb_shadow_sample_free(x);
                return;
        }
        c->s = s;
        c->x = x;
        c->start_usec = kb_now_usec();
        if (copy_primary(c, r) < 0) {
                call_free(c);
                return;
        }

        if (rt->key) {
                if (kb_keystore_get(s->b->keys, rt->key, &c->key) < 0) {
                        c->key = NULL;
                        call_done(c, -ENOKEY, "its key is not available on this host");
                        return;
                }
                if (asprintf(&c->key_label, "%s@%u", kb_key_name(c->key), kb_key_version(c->key)) < 0)
                        c->key_label = NULL;
        }
        struct kb_upstream_request req = {
                .method = "POST",
                .url = x->url,
                .headers = (const char *const *) x->headers,
                .n_headers = x->n_headers,
                .body = x->body.data ?: "",
                .body_len = x->body.len,
                .timeout_usec = rt->timeout_usec,
                .connect_timeout_usec = rt->connect_timeout_usec,
                .ca_file = rt->ca_file,
        };
        kb_header_set_auth(&req, rt, c->key);
        int q = kb_upstream_start(s->b->upstream, &req, &shadow_ops, c, &c->call);
        if (c->key)
                kb_keyseal_release(&s->b->keyseal, c->key);
        if (q < 0) {
                c->call = NULL;
                call_done(c, q, "the call could not be started");
                return;
        }
        LIST_INSERT_HEAD(&s->calls, c, link);
        s->n_in_flight++;
}
