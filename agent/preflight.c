/* SPDX-License-Identifier: MIT */
/* Preflight runs: four calls to the route, one after another on the loop
 * (the model list, a small completion, the same streamed, a made-up
 * model), each with the route's key, headers and timeouts; then the seven
 * checks are judged from what came back, saved, journaled and answered.
 * Calls go one at a time so each latency is the route's own, not ours. */

#include <inttypes.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "broker.h"
#include "headers.h"
#include "preflight.h"

enum {
        CALL_MODELS,
        CALL_PLAIN,
        CALL_STREAM,
        CALL_BOGUS,
        _CALL_MAX,
};

struct pf_call {
        bool ran;               /* was started (or failed to start) */
        bool answered;          /* a response status arrived */
        long status;
        char *content_type;
        struct kb_buf body;
        struct kb_usage_tap *tap;
        int error;              /* 0 complete, else -errno */
        char *message;          /* curl's text or ours, for details */
        bool too_big;
        uint64_t start_usec, latency_usec;
};

struct pf_result {
        bool ok;
        char *detail;
        uint64_t latency_ms;
};

struct kb_preflight {
        struct kb_broker *broker;
        struct kb_config *config;       /* ref: route points into it */
        const struct kb_route *route;
        char *model;
        char bogus_model[64];
        struct kb_key *key;             /* ref; NULL when the route has none or it is missing */
        bool key_missing;
        char *key_label;

        kb_preflight_done_t done;
        void *userdata;

        sd_event_source *defer;
        sd_event_source *timer;
        struct kb_upstream_call *call;
        unsigned next;                  /* the call to run next */
        bool timed_out;

        struct pf_call calls[_CALL_MAX];
        struct kb_buf req_body;
        char *url;
        const char *headers[KB_UPSTREAM_MAX_HEADERS];
        size_t n_headers;

        uint64_t start_usec;            /* monotonic */
        uint64_t started_realtime;
        struct pf_result results[_KB_CHECK_MAX];
};

static void call_clear(struct pf_call *c) {
        free(c->content_type);
        kb_buf_free(&c->body);
        kb_usage_tap_free(c->tap);
        free(c->message);
        *c = (struct pf_call) {};
}

struct kb_preflight *kb_preflight_free(struct kb_preflight *p) {
        if (!p)
                return NULL;
        kb_upstream_call_cancel(p->call);
        sd_event_source_disable_unref(p->defer);
        sd_event_source_disable_unref(p->timer);
        for (size_t i = 0; i < _CALL_MAX; i++)
                call_clear(&p->calls[i]);
        for (size_t i = 0; i < _KB_CHECK_MAX; i++)
                free(p->results[i].detail);
        kb_buf_free(&p->req_body);
        free(p->url);
        free(p->model);
        free(p->key_label);
        kb_key_unref(p->key);
        kb_config_unref(p->config);
        free(p);
        return NULL;
}

/* ---- one call ---- */

static void kick(struct kb_preflight *p) {
        (void) sd_event_source_set_enabled(p->defer, SD_EVENT_ONESHOT);
}

static int on_response(void *userdata, long status, const struct kb_http_header *headers, size_t n_headers) {
        struct kb_preflight *p = userdata;
        struct pf_call *c = &p->calls[p->next];

        c->answered = true;
        c->status = status;
        for (size_t i = 0; i < n_headers; i++)
                if (strcasecmp(headers[i].name, "content-type") == 0 && !c->content_type) {
                        c->content_type = strndup(headers[i].value, 128);
                        if (!c->content_type)
                                return -ENOMEM;
                        kb_preflight_text_clean(c->content_type);
                }
        if (p->next != CALL_PLAIN && p->next != CALL_STREAM)
                return 0;
        bool sse = c->content_type && strncasecmp(c->content_type, "text/event-stream", 17) == 0;
        kb_endpoint ep = p->route->family == KB_FAMILY_ANTHROPIC ? KB_ENDPOINT_MESSAGES : KB_ENDPOINT_CHAT;
        return kb_usage_tap_new(p->route->family, ep, sse, false, &c->tap);
}

static int on_data(void *userdata, const char *buf, size_t len) {
        struct kb_preflight *p = userdata;
        struct pf_call *c = &p->calls[p->next];

        if (c->body.len + len > KB_PREFLIGHT_MAX_BODY) {
                c->too_big = true;
                return -E2BIG;
        }
        /* A tap that does not hide appends exactly what it was fed. */
        return c->tap ? kb_usage_tap_feed(c->tap, buf, len, &c->body) : kb_buf_append(&c->body, buf, len);
}

static void on_done(void *userdata, int error, const char *message) {
        struct kb_preflight *p = userdata;
        struct pf_call *c = &p->calls[p->next];

        p->call = NULL;
        c->latency_usec = kb_now_usec() - c->start_usec;
        c->error = error;
        if (c->too_big)
                c->message = strdup("the answer is larger than 1 MiB");
        else if (message)
                c->message = strdup(message);
        kb_preflight_text_clean(c->message);
        if (c->tap)
                (void) kb_usage_tap_finish(c->tap, &c->body);
        p->next++;
        kick(p);
}

static const struct kb_upstream_ops upstream_ops = {
        .on_response = on_response,
        .on_data = on_data,
        .on_done = on_done,
};

static int build_body(struct kb_preflight *p, unsigned which) {
        bool anthropic = p->route->family == KB_FAMILY_ANTHROPIC;
        json_t *j = json_pack("{s:s, s:[{s:s, s:s}], s:i}", "model", which == CALL_BOGUS ? p->bogus_model : p->model,
                              "messages", "role", "user", "content", "ping", "max_tokens", KB_PREFLIGHT_MAX_TOKENS);
        int r = 0;

        if (!j)
                return -ENOMEM;
        if (which == CALL_STREAM) {
                r = json_object_set_new(j, "stream", json_true());
                /* Usage in an OpenAI stream only when asked for. */
                if (r == 0 && !anthropic)
                        r = json_object_set_new(j, "stream_options", json_pack("{s:b}", "include_usage", true));
        }
        _cleanup_free_ char *s = r == 0 ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        kb_buf_clear(&p->req_body);
        return s ? kb_buf_append(&p->req_body, s, strlen(s)) : -ENOMEM;
}

static int start_call(struct kb_preflight *p, unsigned which) {
        const struct kb_route *route = p->route;
        bool post = which != CALL_MODELS;
        uint64_t now = kb_now_usec(), left = KB_PREFLIGHT_TOTAL_USEC;
        int r;

        if (now - p->start_usec < KB_PREFLIGHT_TOTAL_USEC)
                left = KB_PREFLIGHT_TOTAL_USEC - (now - p->start_usec);
        free(p->url);
        const char *path = !post ? "/models" : route->family == KB_FAMILY_ANTHROPIC ? "/messages" : "/chat/completions";
        if (asprintf(&p->url, "%s%s", route->base_url, path) < 0) {
                p->url = NULL;
                return -ENOMEM;
        }
        p->n_headers = 0;
        for (size_t i = 0; i < route->n_headers && p->n_headers < KB_UPSTREAM_MAX_HEADERS - 2; i++)
                p->headers[p->n_headers++] = route->headers[i];
        if (route->family == KB_FAMILY_ANTHROPIC && !kb_route_sets_header(route, "anthropic-version"))
                p->headers[p->n_headers++] = "anthropic-version: 2023-06-01";
        if (post) {
                p->headers[p->n_headers++] = "Content-Type: application/json";
                r = build_body(p, which);
                if (r < 0)
                        return r;
        }

        struct kb_upstream_request req = {
                .method = post ? "POST" : "GET",
                .url = p->url,
                .headers = p->headers,
                .n_headers = p->n_headers,
                .body = post ? p->req_body.data : NULL,
                .body_len = post ? p->req_body.len : 0,
                .timeout_usec = route->timeout_usec ? MIN(route->timeout_usec, left) : left,
                .connect_timeout_usec = route->connect_timeout_usec ? MIN(route->connect_timeout_usec, left) : left,
                .ca_file = route->ca_file,
        };
        kb_proxy_set_auth(&req, route, p->key);
        p->calls[which].start_usec = now;
        r = kb_upstream_start(p->broker->upstream, &req, &upstream_ops, p, &p->call);
        kb_broker_release_key(p->broker, p->key);
        return r;
}

/* ---- the checks ---- */

static int set_result(struct kb_preflight *p, kb_preflight_check check, int ok, char *detail, uint64_t latency_usec) {
        if (ok < 0 || !detail) {
                free(detail);
                return -ENOMEM;
        }
        p->results[check] = (struct pf_result) {
                .ok = ok > 0,
                .detail = detail,
                .latency_ms = latency_usec / USEC_PER_MSEC,
        };
        return 0;
}

static int set_resultf(struct kb_preflight *p, kb_preflight_check check, bool ok, uint64_t latency_usec,
                       const char *fmt, ...) _printf_(5, 6);
static int set_resultf(struct kb_preflight *p, kb_preflight_check check, bool ok, uint64_t latency_usec,
                       const char *fmt, ...) {
        char *s;
        va_list ap;

        va_start(ap, fmt);
        int r = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;
        kb_preflight_text_clean(s);
        return set_result(p, check, ok, s, latency_usec);
}

/* Why a call has no usable answer: NULL when it has one. */
static const char *call_failure(const struct kb_preflight *p, const struct pf_call *c, char *buf, size_t size) {
        if (!c->ran) {
                snprintf(buf, size, "not run: the preflight's %" PRIu64 " s limit was reached",
                         KB_PREFLIGHT_TOTAL_USEC / USEC_PER_SEC);
                return buf;
        }
        if (c->error == 0)
                return NULL;
        const char *what = c->message ?: strerror(-c->error);
        if (c->error == -ETIMEDOUT && !c->answered)
                snprintf(buf, size, "no answer within %" PRIu64 " ms: %s", c->latency_usec / USEC_PER_MSEC, what);
        else if (!c->answered)
                snprintf(buf, size, "no answer: %s", what);
        else
                snprintf(buf, size, "HTTP %ld, then the answer was cut: %s", c->status, what);
        return buf;
}

static int judge_credentials(struct kb_preflight *p) {
        const struct pf_call *c = &p->calls[CALL_MODELS];
        char why[512];

        if (p->key_missing)
                return set_resultf(p, KB_CHECK_CREDENTIALS, false, c->latency_usec,
                                   "key '%s' is not available on this host (keybrokerctl key set %s)", p->route->key,
                                   p->route->key);
        if (!c->answered)
                return set_resultf(p, KB_CHECK_CREDENTIALS, false, c->latency_usec, "%s",
                                   call_failure(p, c, why, sizeof(why)));
        if (c->status == 401 || c->status == 403) {
                _cleanup_(json_decrefp) json_t *j = json_loadb(c->body.data ?: "", c->body.len, 0, NULL);
                const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
                return set_resultf(p, KB_CHECK_CREDENTIALS, false, c->latency_usec, "HTTP %ld: refused%s%.160s",
                                   c->status, m ? ": " : "", strempty(m));
        }
        if (!p->route->key)
                return set_resultf(p, KB_CHECK_CREDENTIALS, true, c->latency_usec,
                                   "HTTP %ld (the route sends no key)", c->status);
        return set_resultf(p, KB_CHECK_CREDENTIALS, true, c->latency_usec, "HTTP %ld with %s", c->status,
                           p->key_label);
}

static int judge_call(struct kb_preflight *p, kb_preflight_check check, unsigned which) {
        const struct pf_call *c = &p->calls[which];
        char why[512];
        char *d = NULL;
        int ok;

        if (call_failure(p, c, why, sizeof(why)))
                return set_resultf(p, check, false, c->latency_usec, "%s", why);
        switch (check) {
        case KB_CHECK_MODEL_LISTED:
                ok = kb_preflight_judge_listed(c->body.data, c->body.len, c->status, p->model, &d);
                break;
        case KB_CHECK_NON_STREAMING:
                ok = kb_preflight_judge_completion(p->route->family, c->body.data, c->body.len, c->status, &d);
                break;
        case KB_CHECK_BOGUS_MODEL:
                ok = kb_preflight_judge_bogus(p->route->family, c->body.data, c->body.len, c->status, &d);
                break;
        default:
                return -EINVAL;
        }
        return set_result(p, check, ok, d, c->latency_usec);
}

static int judge_stream(struct kb_preflight *p) {
        const struct pf_call *c = &p->calls[CALL_STREAM];
        const struct kb_usage *u = c->tap ? kb_usage_tap_get(c->tap) : NULL;
        const char *terminal = p->route->family == KB_FAMILY_ANTHROPIC ? "message_stop" : "[DONE]";
        char why[512];

        if (call_failure(p, c, why, sizeof(why)))
                return set_resultf(p, KB_CHECK_STREAMING, false, c->latency_usec, "%s", why);
        if (c->status < 200 || c->status > 299) {
                _cleanup_(json_decrefp) json_t *j = json_loadb(c->body.data ?: "", c->body.len, 0, NULL);
                const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
                return set_resultf(p, KB_CHECK_STREAMING, false, c->latency_usec, "HTTP %ld%s%.160s", c->status,
                                   m ? ": " : "", strempty(m));
        }
        if (!c->content_type || strncasecmp(c->content_type, "text/event-stream", 17) != 0)
                return set_resultf(p, KB_CHECK_STREAMING, false, c->latency_usec,
                                   "HTTP %ld but content-type %s, not text/event-stream", c->status,
                                   c->content_type ?: "missing");
        if (!u || !u->stream_done)
                return set_resultf(p, KB_CHECK_STREAMING, false, c->latency_usec,
                                   "HTTP %ld text/event-stream, %" PRIu64 " deltas, but no %s", c->status,
                                   u ? u->streamed_deltas : 0, terminal);
        return set_resultf(p, KB_CHECK_STREAMING, true, c->latency_usec,
                           "HTTP %ld text/event-stream, %" PRIu64 " deltas, %s seen", c->status, u->streamed_deltas,
                           terminal);
}

/* The usage of a call that completed with a 2xx, else NULL. */
static const struct kb_usage *good_usage(const struct pf_call *c) {
        if (!c->ran || c->error != 0 || c->status < 200 || c->status > 299 || !c->tap)
                return NULL;
        return kb_usage_tap_get(c->tap);
}

static int judge_latency(struct kb_preflight *p) {
        uint64_t lat[_CALL_MAX], p50, max, timeout = p->route->timeout_usec;
        size_t n = 0;

        for (size_t i = 0; i < _CALL_MAX; i++)
                if (p->calls[i].answered)
                        lat[n++] = p->calls[i].latency_usec;
        if (n == 0)
                return set_resultf(p, KB_CHECK_LATENCY, false, 0, "no call was answered");
        kb_preflight_latency_stats(lat, n, &p50, &max);
        bool ok = timeout == 0 || max < timeout;
        return set_resultf(p, KB_CHECK_LATENCY, ok, max,
                           "p50 %" PRIu64 " ms, max %" PRIu64 " ms over %zu calls (route timeout %" PRIu64 " s)%s",
                           p50 / USEC_PER_MSEC, max / USEC_PER_MSEC, n, timeout / USEC_PER_SEC,
                           ok ? "" : ": too slow");
}

static int judge_all(struct kb_preflight *p) {
        const struct pf_call *plain = &p->calls[CALL_PLAIN];
        char *d = NULL;
        int r;

        r = judge_credentials(p);
        if (r >= 0)
                r = judge_call(p, KB_CHECK_MODEL_LISTED, CALL_MODELS);
        if (r >= 0)
                r = judge_call(p, KB_CHECK_NON_STREAMING, CALL_PLAIN);
        if (r >= 0)
                r = judge_stream(p);
        if (r >= 0) {
                int ok = kb_preflight_judge_usage(p->route->family, good_usage(plain), plain->body.data,
                                                  plain->body.len, good_usage(&p->calls[CALL_STREAM]), &d);
                r = set_result(p, KB_CHECK_USAGE, ok, d, 0);
        }
        if (r >= 0)
                r = judge_call(p, KB_CHECK_BOGUS_MODEL, CALL_BOGUS);
        if (r >= 0)
                r = judge_latency(p);
        return r;
}

/* ---- the answer ---- */

static json_t *iso_json(uint64_t realtime_usec) {
        time_t t = (time_t) (realtime_usec / USEC_PER_SEC);
        struct tm tm;
        char buf[40];

        if (!gmtime_r(&t, &tm) || strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm) == 0)
                return json_null();
        size_t l = strlen(buf);
        snprintf(buf + l, sizeof(buf) - l, ".%03uZ", (unsigned) (realtime_usec % USEC_PER_SEC / USEC_PER_MSEC));
        return json_string(buf);
}

/* What was sent and what came back, without bodies: an answer might quote
 * more of the key than a provider should. */
static json_t *calls_json(const struct kb_preflight *p) {
        static const char *const names[_CALL_MAX] = { "models", "non_streaming", "streaming", "bogus_model" };
        json_t *a = json_array();

        for (size_t i = 0; a && i < _CALL_MAX; i++) {
                const struct pf_call *c = &p->calls[i];
                if (!c->ran)
                        continue;
                json_t *o = json_pack("{s:s, s:s, s:o, s:o, s:I, s:I, s:o}", "call", names[i], "method",
                                      i == CALL_MODELS ? "GET" : "POST", "status",
                                      c->answered ? json_integer(c->status) : json_null(), "content_type",
                                      c->content_type ? json_string(c->content_type) : json_null(), "bytes",
                                      (json_int_t) c->body.len, "latency_ms",
                                      (json_int_t) (c->latency_usec / USEC_PER_MSEC), "error",
                                      c->error == 0 ? json_null()
                                                    : json_string(c->message ?: strerror(-c->error)));
                if (!o || json_array_append_new(a, o) < 0) {
                        json_decref(a);
                        a = NULL;
                }
        }
        return a;
}

static json_t *evidence_json(struct kb_preflight *p, uint64_t finished_realtime, bool *ret_ok) {
        const struct kb_route *route = p->route;
        json_t *checks = json_array();
        bool all = true;

        for (kb_preflight_check i = 0; checks && i < _KB_CHECK_MAX; i++) {
                const struct pf_result *res = &p->results[i];
                json_t *o = json_pack("{s:s, s:s, s:b, s:s, s:I}", "name", kb_preflight_check_to_string(i), "title",
                                      kb_preflight_check_title(i), "ok", res->ok, "detail", strempty(res->detail),
                                      "latency_ms", (json_int_t) res->latency_ms);
                all = all && res->ok;
                if (!o || json_array_append_new(checks, o) < 0) {
                        json_decref(checks);
                        checks = NULL;
                }
        }
        *ret_ok = all;
        return json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:o, s:o, s:I, s:b, s:o, s:o}", "route", route->name,
                         "base_url", route->base_url, "family", strempty(kb_family_to_string(route->family)), "model",
                         p->model, "key", p->key_label ? json_string(p->key_label) : json_null(), "bogus_model",
                         p->bogus_model, "started", iso_json(p->started_realtime), "finished",
                         iso_json(finished_realtime), "duration_ms",
                         (json_int_t) ((kb_now_usec() - p->start_usec) / USEC_PER_MSEC), "ok", all, "checks", checks,
                         "calls", calls_json(p));
}

static void finish(struct kb_preflight *p) {
        const struct kb_agent_config *a = &p->config->agent;
        _cleanup_free_ char *path = NULL;
        uint64_t now = kb_realtime_usec();
        bool ok = false;
        json_t *doc = NULL;
        int r;

        kb_upstream_call_cancel(p->call);
        p->call = NULL;
        (void) sd_event_source_set_enabled(p->timer, SD_EVENT_OFF);
        (void) sd_event_source_set_enabled(p->defer, SD_EVENT_OFF);

        r = judge_all(p);
        if (r >= 0)
                doc = evidence_json(p, now, &ok);
        if (doc) {
                r = kb_preflight_save_evidence(a->state_dir, p->route->name, p->started_realtime, doc, &path);
                if (json_object_set_new(doc, "evidence_path", path ? json_string(path) : json_null()) < 0 ||
                    (r < 0 && json_object_set_new(doc, "evidence_error", json_string(strerror(-r))) < 0)) {
                        json_decref(doc);
                        doc = NULL;
                }
        }

        for (kb_preflight_check i = 0; i < _KB_CHECK_MAX; i++)
                (void) kb_journal_preflight(p->broker->journal, p->route->name, p->model,
                                            kb_preflight_check_to_string(i), p->results[i].ok,
                                            p->results[i].detail, p->results[i].latency_ms, NULL);
        unsigned n_ok = 0;
        for (kb_preflight_check i = 0; i < _KB_CHECK_MAX; i++)
                n_ok += p->results[i].ok;
        _cleanup_free_ char *summary = NULL;
        if (asprintf(&summary, "%u of %u checks passed%s%s", n_ok, (unsigned) _KB_CHECK_MAX,
                     path ? "" : "; evidence not saved: ", path ? "" : strerror(-(r < 0 ? r : -EIO))) < 0)
                summary = NULL;
        (void) kb_journal_preflight(p->broker->journal, p->route->name, p->model, "summary", doc && ok, summary,
                                    (kb_now_usec() - p->start_usec) / USEC_PER_MSEC, path);

        /* NULL makes the admin side answer 500. */
        p->done(p->userdata, doc);
        kb_preflight_free(p);
}

static int on_defer(sd_event_source *s, void *userdata) {
        struct kb_preflight *p = userdata;

        while (p->next < _CALL_MAX && !p->timed_out) {
                struct pf_call *c = &p->calls[p->next];
                c->ran = true;
                int r = start_call(p, p->next);
                if (r >= 0)
                        return 0; /* on_done kicks us again */
                p->call = NULL;
                c->error = r;
                c->message = strdup(r == -EINVAL ? "the route's URL or headers are not usable" : strerror(-r));
                p->next++;
        }
        finish(p);
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        struct kb_preflight *p = userdata;

        p->timed_out = true;
        if (p->call && p->next < _CALL_MAX) {
                struct pf_call *c = &p->calls[p->next];
                kb_upstream_call_cancel(p->call);
                p->call = NULL;
                c->error = -ETIMEDOUT;
                c->latency_usec = kb_now_usec() - c->start_usec;
                if (asprintf(&c->message, "the preflight's %" PRIu64 " s limit was reached",
                             KB_PREFLIGHT_TOTAL_USEC / USEC_PER_SEC) < 0)
                        c->message = NULL;
        }
        finish(p);
        return 0;
}

int kb_preflight_start(struct kb_broker *b, const char *route_name, const char *model, kb_preflight_done_t done,
                       void *userdata, struct kb_preflight **ret, char **ret_error) {
        const struct kb_route *route = kb_config_find_route(b->config, route_name);
        unsigned char rnd[8];
        int r;

        if (!route) {
                if (asprintf(ret_error, "no route '%s' in %s", route_name, strempty(b->config->path)) < 0)
                        *ret_error = NULL;
                return -ENOENT;
        }
        if (!model)
                model = kb_preflight_default_model(b->config, route);
        if (!model) {
                if (asprintf(ret_error, "no [model:*] target names route '%s': say which model to check (--model M)",
                             route_name) < 0)
                        *ret_error = NULL;
                return -ENOMEDIUM;
        }

        struct kb_preflight *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->broker = b;
        p->config = kb_config_ref(b->config);
        p->route = route;
        p->done = done;
        p->userdata = userdata;
        p->start_usec = kb_now_usec();
        p->started_realtime = kb_realtime_usec();
        if (getrandom(rnd, sizeof(rnd), GRND_NONBLOCK) != sizeof(rnd))
                memcpy(rnd, &p->start_usec, sizeof(rnd));
        snprintf(p->bogus_model, sizeof(p->bogus_model), "keybroker-preflight-no-such-model-%02x%02x%02x%02x%02x%02x",
                 rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
        if (!(p->model = strdup(model))) {
                kb_preflight_free(p);
                return -ENOMEM;
        }
        if (route->key) {
                if (!b->keys || kb_keystore_get(b->keys, route->key, &p->key) < 0) {
                        p->key = NULL;
                        p->key_missing = true;
                } else if (asprintf(&p->key_label, "%s@%u", kb_key_name(p->key), kb_key_version(p->key)) < 0) {
                        p->key_label = NULL;
                        kb_preflight_free(p);
                        return -ENOMEM;
                }
        }

        r = sd_event_add_defer(b->event, &p->defer, on_defer, p);
        if (r >= 0)
                r = sd_event_source_set_enabled(p->defer, SD_EVENT_ONESHOT);
        if (r >= 0)
                r = sd_event_add_time_relative(b->event, &p->timer, CLOCK_MONOTONIC, KB_PREFLIGHT_TOTAL_USEC,
                                               100 * USEC_PER_MSEC, on_timer, p);
        if (r < 0) {
                kb_preflight_free(p);
                return r;
        }
        *ret = p;
        return 0;
}
