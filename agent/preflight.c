/* SPDX-License-Identifier: MIT */
/* Preflight runs: the planned calls (preflight-plan.c) go out one after
 * another on the loop, each with its route's key, headers and timeouts;
 * then the ten checks are judged from what came back (preflight-checks.c),
 * saved, journaled and answered. Calls go one at a time so each latency
 * is the route's own, not ours. */

#include <inttypes.h>
#include <strings.h>
#include <sys/random.h>

#include "broker.h"
#include "headers.h"
#include "preflight-internal.h"

struct kb_preflight *kb_preflight_free(struct kb_preflight *p) {
        if (!p)
                return NULL;
        kb_upstream_call_cancel(p->call);
        sd_event_source_disable_unref(p->defer);
        sd_event_source_disable_unref(p->timer);
        for (size_t i = 0; i < p->n_calls; i++)
                pf_call_clear(&p->calls[i]);
        for (size_t i = 0; i < p->n_rollback; i++) {
                free(p->rollback[i].weights);
                free(p->rollback[i].command);
        }
        for (size_t i = 0; i < _KB_CHECK_MAX; i++) {
                free(p->results[i].detail);
                json_decref(p->results[i].parts);
                json_decref(p->results[i].extra);
        }
        free(p->model);
        free(p->key_label);
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
        if (!c->body || c->endpoint == KB_ENDPOINT_MODELS)
                return 0;
        bool sse = c->content_type && strncasecmp(c->content_type, "text/event-stream", 17) == 0;
        return kb_usage_tap_new(c->route->family, c->endpoint, sse, false, &c->tap);
}

static int on_data(void *userdata, const char *buf, size_t len) {
        struct kb_preflight *p = userdata;
        struct pf_call *c = &p->calls[p->next];

        if (c->in.len + len > KB_PREFLIGHT_MAX_BODY) {
                c->too_big = true;
                return -E2BIG;
        }
        /* A tap that does not hide appends exactly what it was fed. */
        return c->tap ? kb_usage_tap_feed(c->tap, buf, len, &c->in) : kb_buf_append(&c->in, buf, len);
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
                (void) kb_usage_tap_finish(c->tap, &c->in);
        p->next++;
        kick(p);
}

static const struct kb_upstream_ops upstream_ops = {
        .on_response = on_response,
        .on_data = on_data,
        .on_done = on_done,
};

static void set_auth(struct kb_preflight *p, struct pf_call *c, struct kb_upstream_request *req) {
        if (c->kind != PF_WRONG_KEY) {
                kb_header_set_auth(req, c->route, c->key);
                return;
        }
        /* the route's scheme with a key made up for this run */
        req->auth_name = c->route->auth == KB_AUTH_X_API_KEY ? "x-api-key"
                         : c->route->auth == KB_AUTH_HEADER  ? c->route->auth_header
                                                             : "Authorization";
        req->auth_prefix = c->route->auth == KB_AUTH_BEARER ? "Bearer " : "";
        req->secret = p->invalid_key;
        req->secret_len = strlen(p->invalid_key);
}

static int start_call(struct kb_preflight *p, struct pf_call *c) {
        const struct kb_route *route = c->route;
        uint64_t now = kb_now_usec(), left = 1;
        bool post = c->body != NULL;

        if (now - p->start_usec < KB_PREFLIGHT_TOTAL_USEC)
                left = KB_PREFLIGHT_TOTAL_USEC - (now - p->start_usec);
        left = MIN(left, KB_PREFLIGHT_CALL_USEC);
        p->n_headers = 0;
        if (c->kind == PF_STATUS)
                p->headers[p->n_headers++] = "Accept: application/json";
        else {
                for (size_t i = 0; i < route->n_headers && p->n_headers < KB_UPSTREAM_MAX_HEADERS - 2; i++)
                        p->headers[p->n_headers++] = route->headers[i];
                if (route->family == KB_FAMILY_ANTHROPIC && !kb_route_sets_header(route, "anthropic-version"))
                        p->headers[p->n_headers++] = "anthropic-version: 2023-06-01";
        }
        if (post)
                p->headers[p->n_headers++] = "Content-Type: application/json";

        uint64_t timeout = route->timeout_usec ? MIN(route->timeout_usec, left) : left;
        if (c->kind == PF_TIMEOUT)
                timeout = KB_PREFLIGHT_TINY_TIMEOUT_USEC;
        struct kb_upstream_request req = {
                .method = post ? "POST" : "GET",
                .url = c->url,
                .headers = p->headers,
                .n_headers = p->n_headers,
                .body = c->body,
                .body_len = post ? strlen(c->body) : 0,
                .timeout_usec = timeout,
                .connect_timeout_usec = route->connect_timeout_usec ? MIN(route->connect_timeout_usec, timeout)
                                                                    : timeout,
                .ca_file = route->ca_file,
        };
        if (c->kind != PF_STATUS)
                set_auth(p, c, &req);
        c->start_usec = now;
        int r = kb_upstream_start(p->broker->upstream, &req, &upstream_ops, p, &p->call);
        if (c->kind != PF_WRONG_KEY && c->kind != PF_STATUS)
                kb_keyseal_release(&p->broker->keyseal, c->key);
        return r;
}

/* ---- the answer ---- */

static void finish(struct kb_preflight *p) {
        const struct kb_agent_config *a = &p->config->agent;
        _cleanup_free_ char *path = NULL, *summary = NULL;
        uint64_t now = kb_realtime_usec();
        bool ok = false;
        json_t *doc = NULL;
        int r;

        kb_upstream_call_cancel(p->call);
        p->call = NULL;
        (void) sd_event_source_set_enabled(p->timer, SD_EVENT_OFF);
        (void) sd_event_source_set_enabled(p->defer, SD_EVENT_OFF);

        r = pf_judge_all(p);
        if (r >= 0)
                doc = pf_evidence(p, now, &ok);
        if (doc) {
                r = kb_preflight_save_evidence(a->state_dir, p->route->name, p->started_realtime, doc, &path);
                if (json_object_set_new(doc, "evidence_path", path ? json_string(path) : json_null()) < 0 ||
                    (r < 0 && json_object_set_new(doc, "evidence_error", json_string(strerror(-r))) < 0)) {
                        json_decref(doc);
                        doc = NULL;
                }
        }

        unsigned n_ok = 0, n_run = 0;
        for (kb_preflight_check i = 0; i < _KB_CHECK_MAX; i++) {
                const struct pf_result *res = &p->results[i];
                n_run += res->state != PF_SKIPPED;
                n_ok += res->state == PF_PASSED;
                (void) kb_journal_preflight(p->broker->journal, p->route->name, p->model,
                                            kb_preflight_check_to_string(i),
                                            res->state == PF_SKIPPED ? -1 : res->state == PF_PASSED,
                                            res->detail ?: "not judged", res->latency_ms, NULL);
        }
        if (asprintf(&summary, "%u of %u checks passed, %u skipped%s%s", n_ok, n_run, _KB_CHECK_MAX - n_run,
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

        while (p->next < p->n_calls && !p->timed_out) {
                struct pf_call *c = &p->calls[p->next];
                if (c->skip) {
                        p->next++;
                        continue;
                }
                c->ran = true;
                int r = start_call(p, c);
                if (r >= 0)
                        return 0; /* on_done kicks us again */
                p->call = NULL;
                c->error = r;
                c->message = strdup(r == -EINVAL ? "the URL or headers are not usable" : strerror(-r));
                p->next++;
        }
        finish(p);
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        struct kb_preflight *p = userdata;

        p->timed_out = true;
        if (p->call && p->next < p->n_calls) {
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

static void random_hex(char *out, size_t bytes, uint64_t salt) {
        unsigned char rnd[16];

        bytes = MIN(bytes, sizeof(rnd));
        if (getrandom(rnd, bytes, GRND_NONBLOCK) != (ssize_t) bytes)
                for (size_t i = 0; i < bytes; i++)
                        rnd[i] = (unsigned char) (salt >> (8 * (i % 8))) ^ (unsigned char) (i * 131);
        for (size_t i = 0; i < bytes; i++)
                sprintf(out + 2 * i, "%02x", rnd[i]);
}

int kb_preflight_start(struct kb_broker *b, const char *route_name, const char *model, unsigned checks,
                       kb_preflight_done_t done, void *userdata, struct kb_preflight **ret, char **ret_error) {
        const struct kb_route *route = kb_config_find_route(b->config, route_name);
        char hex6[13], hex16[33];
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
        p->checks = checks & KB_CHECK_ALL;
        p->done = done;
        p->userdata = userdata;
        p->start_usec = kb_now_usec();
        p->started_realtime = kb_realtime_usec();
        random_hex(hex6, 6, p->start_usec);
        snprintf(p->bogus_model, sizeof(p->bogus_model), "keybroker-preflight-no-such-model-%s", hex6);
        /* shaped like a key, so a provider judges it as one, and refuses it */
        random_hex(hex16, 16, p->start_usec ^ 0x5a5a);
        snprintf(p->invalid_key, sizeof(p->invalid_key), "sk-keybroker-preflight-invalid-%s", hex16);
        if (!(p->model = strdup(model))) {
                kb_preflight_free(p);
                return -ENOMEM;
        }
        r = pf_plan(p);
        if (r < 0) {
                kb_preflight_free(p);
                if (r == -E2BIG && asprintf(ret_error, "route '%s' needs more than %u preflight calls", route_name,
                                            KB_PREFLIGHT_MAX_CALLS) < 0)
                        *ret_error = NULL;
                return r;
        }
        struct pf_call *main_call = pf_find(p, PF_MODELS, NULL, NULL);
        if (main_call && main_call->key &&
            asprintf(&p->key_label, "%s@%u", kb_key_name(main_call->key), kb_key_version(main_call->key)) < 0) {
                p->key_label = NULL;
                kb_preflight_free(p);
                return -ENOMEM;
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
