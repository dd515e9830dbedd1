/* SPDX-License-Identifier: MIT */
/* Forwarding one request: build the upstream call (headers filtered, body
 * rewritten, the route's key injected), relay status, headers and body back
 * as they arrive through the usage tap, and map every way a call can end to
 * what the app sees and what the journal says. */

#include <jansson.h>
#include <sodium.h>
#include <strings.h>

#include "body.h"
#include "routing.h"
#include "metering.h"
#include "proxy.h"
#include "multipart.h"
#include "upload.h"
#include "objects.h"
#include "broker.h"
#include "headers.h"
#include "router.h"
#include "shadow.h"

static void next_attempt(struct kb_request *r);
static bool can_fall_over(const struct kb_request *r);

static void on_writable(struct kb_conn *c, void *userdata);

static void on_abort(struct kb_conn *c, void *userdata);

/* More of a streamed upload: curl may send again. */
static void on_body(struct kb_conn *c, void *userdata) {
        struct kb_request *r = userdata;
        kb_upstream_call_body_ready(r->call);
}

static const struct kb_conn_handler conn_handler = {
        .on_writable = on_writable,
        .on_abort = on_abort,
        .on_body = on_body,
};

/* What one attempt built: freed before the next attempt builds its own. */
static void attempt_release(struct kb_request *r) {
        kb_key_unref(r->key);
        r->key = NULL;
        free(r->key_label);
        r->key_label = NULL;
        for (size_t i = 0; i < r->n_upstream_headers; i++)
                free(r->upstream_headers[i]);
        free(r->upstream_headers);
        r->upstream_headers = NULL;
        r->n_upstream_headers = 0;
        free(r->upstream_url);
        r->upstream_url = NULL;
        kb_buf_free(&r->upstream_body);
}

/* Tell the router how the attempt under way ended (once per attempt). */
static void attempt_feedback(struct kb_request *r, kb_verdict verdict) {
        if (!r->attempt_active)
                return;
        r->attempt_active = false;
        struct kb_attempt_result a = {
                .route = r->route->name,
                .model = r->model_cfg ? r->model_cfg->name : NULL,
                .upstream_model = r->target ? r->target->upstream_model : NULL,
                .fallback = r->attempt_fallback,
                .probe = r->attempt_probe,
                .verdict = verdict,
                .has_latency = r->attempt_answered,
                .latency_usec = r->attempt_ttfb_usec,
        };
        kb_router_feedback(r->broker->router, &a, kb_now_usec());
}

void kb_proxy_release(struct kb_request *r) {
        kb_upstream_call_cancel(r->call);
        r->call = NULL;
        /* The app went away (or the agent cut it) mid-attempt: no verdict
         * on the route, but a half-open probe must be handed back. */
        attempt_feedback(r, KB_VERDICT_NONE);
        r->retry_timer = sd_event_source_disable_unref(r->retry_timer);
        kb_usage_tap_free(r->tap);
        r->tap = NULL;
        attempt_release(r);
        free(r->candidates);
        r->candidates = NULL;
        r->n_candidates = 0;
        free(r->last_error_message);
        r->last_error_message = NULL;
        kb_conn_set_handler(r->conn, NULL, NULL);
}

static int add_header(struct kb_request *r, const char *name, const char *value) {
        char *line;
        if (asprintf(&line, "%s: %s", name, value) < 0)
                return -ENOMEM;
        char **n = realloc(r->upstream_headers, (r->n_upstream_headers + 1) * sizeof(char *));
        if (!n) {
                free(line);
                return -ENOMEM;
        }
        r->upstream_headers = n;
        r->upstream_headers[r->n_upstream_headers++] = line;
        return 0;
}

static int build_headers(struct kb_request *r) {
        const struct kb_http_request *h = r->http;
        bool have_ct = false;
        int q;

        for (size_t i = 0; i < h->n_headers; i++) {
                if (!kb_header_forwardable(h->headers[i].name, r->route))
                        continue;
                if (strcasecmp(h->headers[i].name, "content-type") == 0)
                        have_ct = true;
                q = add_header(r, h->headers[i].name, h->headers[i].value);
                if (q < 0)
                        return q;
        }
        if (!have_ct && r->http->body.len > 0) {
                q = add_header(r, "Content-Type", "application/json");
                if (q < 0)
                        return q;
        }
        for (size_t i = 0; i < r->route->n_headers; i++) {
                char **n = realloc(r->upstream_headers, (r->n_upstream_headers + 1) * sizeof(char *));
                if (!n)
                        return -ENOMEM;
                r->upstream_headers = n;
                if (!(r->upstream_headers[r->n_upstream_headers] = strdup(r->route->headers[i])))
                        return -ENOMEM;
                r->n_upstream_headers++;
        }
        return 0;
}

/* base_url ends in the API version (…/v1); the app's path starts with /v1. */
static int build_url(struct kb_request *r) {
        const char *url = r->http->url;
        const char *rest = strncmp(url, "/v1/", 4) == 0 ? url + 3 : url;
        if (asprintf(&r->upstream_url, "%s%s", r->route->base_url, rest) < 0) {
                r->upstream_url = NULL;
                return -ENOMEM;
        }
        return 0;
}

/* ---- upstream callbacks ---- */

/* A list answer is held whole (it is filtered at its end); this much at most. */
#define KB_PROXY_HOLD_MAX ((size_t) 16 * 1024 * 1024)
#define KB_PROXY_STREAM_RECV_BUFFER 2048u

static void write_out(struct kb_request *r) {
        if (r->out.len == 0 || r->hold_answer)
                return;
        (void) kb_conn_write(r->conn, r->out.data, r->out.len);
        kb_buf_clear(&r->out);
        if (r->call && !r->paused && kb_conn_pending(r->conn) > KB_CONN_HIGH_WATER) {
                r->paused = true;
                kb_upstream_call_pause(r->call);
        }
}

static int relay_response(struct kb_request *r, long status, const struct kb_http_header *headers,
                          size_t n_headers) {
        struct kb_http_header h[64];
        /* renamed names (a provider sends half a dozen x-ratelimit-*) */
        char names[2048];
        size_t n = 0, names_used = 0;
        char scratch[512];
        const char *ct = NULL;

        r->upstream_status = status;
        r->status = (int) status;
        r->ttfb_usec = kb_now_usec() - r->start_usec;

        for (size_t i = 0; i < n_headers; i++) {
                const char *name = headers[i].name;
                if (strcasecmp(name, "content-type") == 0)
                        ct = headers[i].value;
                if (!r->upstream_request_id &&
                    (strcasecmp(name, "x-request-id") == 0 || strcasecmp(name, "request-id") == 0))
                        r->upstream_request_id = strdup(headers[i].value);
                if (!kb_header_relayable(name) || n >= ELEMENTSOF(h) - 12 || !kb_header_safe(headers[i].value))
                        continue;
                char *rn = names + names_used;
                int k = kb_header_relay_rename(name, rn, sizeof(names) - names_used);
                if (k < 0)
                        continue;
                names_used += k > 0 ? strlen(rn) + 1 : 0;
                h[n++] = (struct kb_http_header) { k > 0 ? rn : name, headers[i].value };
        }
        n = kb_request_answer_headers(r, h, n, ELEMENTSOF(h), scratch, sizeof(scratch));

        r->sse = ct && strncasecmp(ct, "text/event-stream", 17) == 0;
        /* a form's stream field may come after its model: the answer says */
        r->stream = r->stream || r->sse;
        int q = kb_usage_tap_new(r->family, r->endpoint, r->sse, r->sse && r->hide_usage_chunk, &r->tap);
        /* Audio, a file's bytes, batch results: relayed, never read or held. */
        if (q >= 0 && r->endpoint == KB_ENDPOINT_MESSAGE_BATCHES && r->def->op == KB_OP_DOWNLOAD)
                kb_usage_tap_set_jsonl(r->tap);
        else if (q >= 0 && (r->def->op == KB_OP_DOWNLOAD || (r->endpoint == KB_ENDPOINT_AUDIO_SPEECH && !r->sse)))
                kb_usage_tap_set_raw(r->tap);
        /* Only a successful list is filtered; an error passes as it is. */
        if (status < 200 || status >= 300)
                r->hold_answer = false;
        if (q >= 0)
                kb_metering_attach(r);
        if (q >= 0)
                q = kb_conn_begin(r->conn, (int) status, h, n);
        r->response_started = true;
        return q < 0 ? q : 0;
}

static int on_response(void *userdata, long status, const struct kb_http_header *headers, size_t n_headers) {
        struct kb_request *r = userdata;

        r->attempt_answered = true;
        r->attempt_ttfb_usec = kb_now_usec() - r->attempt_start_usec;
        r->upstream_status = status;
        /* Decided before a byte goes to the app: after that the answer is
         * the app's, whatever it is. */
        if (kb_route_retry_status(r->route, status) && can_fall_over(r)) {
                r->retrying = true;
                r->last_error = (int) status;
                r->retry_delay_usec = kb_retry_after_usec(headers, n_headers, kb_realtime_usec(),
                                                          r->model_cfg ? r->model_cfg->retry_after_max_usec : 0);
                return -ECANCELED;
        }
        r->in_upstream_cb = true;
        int q = relay_response(r, status, headers, n_headers);
        r->in_upstream_cb = false;
        return kb_conn_aborted(r->conn) ? -ECANCELED : q;
}

static int relay_data(struct kb_request *r, const char *buf, size_t len) {
        if (kb_conn_aborted(r->conn))
                return -ECANCELED;
        if (r->shadow)
                kb_shadow_capture(r->shadow, buf, len);
        int q = kb_usage_tap_feed(r->tap, buf, len, &r->out);
        if (q < 0 && q != -E2BIG)
                return q;
        if (r->hold_answer && r->out.len > KB_PROXY_HOLD_MAX)
                return -EFBIG;
        write_out(r);
        /* A stream cut at a quota limit: stop the provider too. */
        if (r->quota_cut)
                return -ECANCELED;
        return kb_conn_aborted(r->conn) ? -ECANCELED : 0;
}

static int on_data(void *userdata, const char *buf, size_t len) {
        struct kb_request *r = userdata;

        r->in_upstream_cb = true;
        int q = relay_data(r, buf, len);
        r->in_upstream_cb = false;
        return q;
}

/* An error event in the family's SSE shape, after what the app already got. */
static void stream_error_event(struct kb_request *r, const char *code, const char *openai_type,
                               const char *anthropic_type, const char *message) {
        json_t *j;
        const char *prefix;

        if (r->family == KB_FAMILY_ANTHROPIC) {
                _cleanup_free_ char *m = NULL;
                if (asprintf(&m, "%s: %s", code, message) < 0)
                        return;
                j = json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type", anthropic_type, "message", m);
                prefix = "event: error\ndata: ";
        } else {
                j = json_pack("{s:{s:s, s:s, s:s}}", "error", "message", message, "type", openai_type, "code", code);
                prefix = "data: ";
        }
        _cleanup_free_ char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        if (!s)
                return;
        /* An event the app may have got half of would swallow ours: end it. */
        (void) kb_buf_appendf(&r->out, "\n\n%s%s\n\n", prefix, s);
        write_out(r);
}

/* Decide the outcome and send the app what it gets; finishing is the
 * caller's, so a synchronous on_abort from a write cannot free r under us. */
static void conclude(struct kb_request *r, int error, const char *message) {
        if (error == 0) {
                (void) kb_usage_tap_finish(r->tap, &r->out);
                if (r->hold_answer) {
                        r->hold_answer = false;
                        if (kb_objects_filter_list(r->broker->objects, r->team->name, r->def->object, r->out.data,
                                                   r->out.len, &r->out) < 0) {
                                /* never the unfiltered list: cut instead */
                                kb_buf_clear(&r->out);
                                kb_proxy_cut(r, "the provider's list answer could not be read");
                                return;
                        }
                }
                write_out(r);
                r->outcome = r->upstream_status >= 200 && r->upstream_status < 300 ? KB_OUTCOME_OK
                                                                                  : KB_OUTCOME_UPSTREAM_ERROR;
                return;
        }
        if (error == -ECANCELED && kb_conn_aborted(r->conn)) {
                r->outcome = KB_OUTCOME_CLIENT_ABORT;
                return;
        }
        if (r->quota_cut) {
                r->outcome = KB_OUTCOME_QUOTA_REJECTED;
                _cleanup_free_ char *m = NULL;
                if (asprintf(&m, "team '%s' reached a token or budget limit during this stream; "
                             "it was cut at the limit", r->team->name) < 0)
                        m = NULL;
                stream_error_event(r, "quota_exceeded", r->quota_cut_type ?: "insufficient_quota",
                                   "rate_limit_error", m ?: "quota exceeded");
                return;
        }

        if (!r->response_started && kb_upload_error_code(r->upload) < 0) {
                kb_request_fail_upload(r, kb_upload_error_code(r->upload));
                return;
        }
        if (!r->response_started) {
                if (error == -EMFILE || error == -ENFILE)
                        kb_request_fail(r, 503, "broker_overloaded", KB_OUTCOME_BROKER_OVERLOADED,
                                        "keybrokerd is out of file descriptors (%s); route '%s' was not reached",
                                        error == -EMFILE ? "its RLIMIT_NOFILE" : "the system's limit",
                                        r->route->name);
                else if (error == -ETIMEDOUT)
                        kb_request_fail(r, 504, "upstream_timeout", KB_OUTCOME_UPSTREAM_TIMEOUT,
                                        "route '%s' did not answer within %" PRIu64 " s", r->route->name,
                                        r->route->timeout_usec / USEC_PER_SEC);
                else
                        kb_request_fail(r, 502, "upstream_unavailable", KB_OUTCOME_UPSTREAM_ERROR,
                                        "route '%s' failed: %s", r->route->name, message ?: strerror(-error));
                return;
        }

        /* The answer had begun: keep what the usage tap counted. */
        (void) kb_usage_tap_finish(r->tap, &r->out);
        write_out(r);
        _cleanup_free_ char *m = NULL;
        if (asprintf(&m, "upstream stream interrupted (route '%s': %s)", r->route->name,
                     message ?: strerror(-error)) < 0)
                m = NULL;
        kb_proxy_cut(r, m ?: "upstream stream interrupted");
}

void kb_proxy_cut(struct kb_request *r, const char *why) {
        if (r->hold_answer) {
                r->hold_answer = false;
                kb_buf_clear(&r->out);
        }
        /* Never let the app mistake the cut for a clean end. */
        r->outcome = KB_OUTCOME_STREAM_INTERRUPTED;
        if (r->sse)
                stream_error_event(r, "stream_interrupted", "server_error", "api_error", why);
        else
                kb_conn_kill(r->conn);
}

static bool retryable_error(const struct kb_request *r, int error) {
        if (r->response_started || kb_conn_aborted(r->conn))
                return false;
        if (error == -ECONNREFUSED || error == -EHOSTUNREACH)
                return r->route->retry_connect;
        if (error == -ETIMEDOUT)
                return r->route->retry_timeout;
        return false;
}

static int on_retry_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        struct kb_request *r = userdata;

        r->retry_timer = sd_event_source_disable_unref(r->retry_timer);
        next_attempt(r);
        return 0;
}

/* The attempt failed in a way the route's retry_on covers and another
 * candidate may take the request: wait out its Retry-After (capped), then
 * go on. Nothing reached the app. */
static void fall_over(struct kb_request *r, const char *message) {
        attempt_feedback(r, KB_VERDICT_FAILURE);
        _cleanup_free_ char *from = NULL;
        if (asprintf(&from, "%s%s%s", strempty(r->fallback_from), r->fallback_from ? "," : "", r->route->name) >= 0) {
                free(r->fallback_from);
                r->fallback_from = TAKE_PTR(from);
        }
        free(r->last_error_message);
        r->last_error_message = message ? strdup(message) : NULL;
        uint64_t delay = r->retry_delay_usec;
        r->retry_delay_usec = 0;
        if (sd_event_add_time(r->broker->event, &r->retry_timer, CLOCK_MONOTONIC, kb_now_usec() + delay,
                              USEC_PER_MSEC, on_retry_timer, r) < 0) {
                r->retry_timer = NULL;
                next_attempt(r);
        }
}

static void on_done(void *userdata, int error, const char *message) {
        struct kb_request *r = userdata;

        r->call = NULL;
        if (r->retrying) {
                r->retrying = false;
                if (!kb_conn_aborted(r->conn)) {
                        char m[64];
                        snprintf(m, sizeof(m), "answered %d", r->last_error);
                        fall_over(r, m);
                        return;
                }
                /* The app left while we were giving up on the answer. */
                attempt_feedback(r, KB_VERDICT_FAILURE);
                error = -ECANCELED;
        } else if (error != 0 && retryable_error(r, error) && can_fall_over(r)) {
                r->last_error = error;
                fall_over(r, message);
                return;
        }

        kb_verdict v = KB_VERDICT_SUCCESS;
        if ((error == -ECANCELED && kb_conn_aborted(r->conn)) || error == -EMFILE || error == -ENFILE)
                v = KB_VERDICT_NONE;    /* not the route's fault */
        else if ((error != 0 && !r->quota_cut) || kb_route_retry_status(r->route, r->upstream_status))
                v = KB_VERDICT_FAILURE;
        attempt_feedback(r, v);

        r->in_upstream_cb = true;
        conclude(r, error, message);
        r->in_upstream_cb = false;
        if (kb_conn_aborted(r->conn) && r->outcome == KB_OUTCOME_OK)
                r->outcome = KB_OUTCOME_CLIENT_ABORT;
        r->proxy_done(r);
}

static ssize_t on_read_body(void *userdata, char *buf, size_t len) {
        struct kb_request *r = userdata;
        return kb_upload_read(r->upload, buf, len);
}

static const struct kb_upstream_ops upstream_ops = {
        .on_response = on_response,
        .on_data = on_data,
        .on_done = on_done,
        .read_body = on_read_body,
};

static void on_writable(struct kb_conn *c, void *userdata) {
        struct kb_request *r = userdata;

        if (r->paused && r->call) {
                r->paused = false;
                kb_upstream_call_resume(r->call);
        }
}

static void on_abort(struct kb_conn *c, void *userdata) {
        struct kb_request *r = userdata;

        r->outcome = KB_OUTCOME_CLIENT_ABORT;
        if (!r->response_started)
                r->status = 499; /* nginx's "client closed request", for the record only */
        /* Inside curl's callback the call cannot be torn down; the callback
         * sees the aborted conn and fails the transfer, and on_done finishes. */
        if (!r->in_upstream_cb)
                r->proxy_done(r);
}

/* The body for one target: the model replaced in the JSON or the form;
 * nothing to build for a call without a model. */
static int build_body(struct kb_request *r, const char *upstream_model) {
        /* a streamed upload: the model goes in as the form passes */
        if (r->upload)
                return r->model_cfg ? kb_upload_set_model(r->upload, upstream_model) : 0;
        if (!r->model_cfg)
                return 0;
        if (!r->multipart)
                return kb_body_rewrite(r->http->body.data, r->http->body.len, upstream_model, r->add_include_usage,
                                       &r->upstream_body);
        struct kb_multipart *m = NULL;
        int q = kb_multipart_new(kb_http_request_header(r->http, "content-type"), upstream_model, &m, NULL);
        if (q >= 0)
                q = kb_multipart_feed(m, r->http->body.data ?: "", r->http->body.len, &r->upstream_body);
        if (q >= 0)
                q = kb_multipart_finish(m, &r->upstream_body);
        kb_multipart_free(m);
        return q;
}

/* Build and start the call of one candidate. 0: started; else the
 * candidate could not be tried (r->last_error / last_error_message say why)
 * and the caller goes on to the next. */
static int start_attempt(struct kb_request *r, const struct kb_candidate *c, bool probe) {
        const struct kb_route *route = c->target->route;
        int q;

        attempt_release(r);
        r->target = c->target;
        r->route = route;
        /* The quota reservation was priced at the first candidate; what is
         * billed follows the target that answers. */
        r->price = kb_price_find(route, c->target->upstream_model, NULL);
        r->attempt_active = true;
        r->attempt_probe = probe;
        r->attempt_fallback = c->fallback;
        r->attempt_answered = false;
        r->attempt_ttfb_usec = 0;
        r->attempt_start_usec = kb_now_usec();
        free(r->last_error_message);
        r->last_error_message = NULL;

        if (route->key) {
                /* An object's call uses the key version that made it, while
                 * the keystore still has it (a rotated-out version too). */
                q = -ENOENT;
                if (r->pin_key && streq(r->pin_key, route->key))
                        q = kb_keystore_get_version(r->broker->keys, route->key, r->pin_key_version, &r->key);
                if (q < 0)
                        q = kb_keystore_get(r->broker->keys, route->key, &r->key);
                if (q < 0) {
                        r->last_error = -ENOKEY;
                        attempt_feedback(r, KB_VERDICT_NONE);
                        return -ENOKEY;
                }
                if (asprintf(&r->key_label, "%s@%u", kb_key_name(r->key), kb_key_version(r->key)) < 0)
                        r->key_label = NULL;
        }

        q = build_body(r, c->target->upstream_model);
        if (q >= 0)
                q = build_headers(r);
        if (q >= 0)
                q = build_url(r);
        if (q < 0) {
                r->last_error = -EBADR;
                if (asprintf(&r->last_error_message, "cannot build upstream request: %s", strerror(-q)) < 0)
                        r->last_error_message = NULL;
                attempt_feedback(r, KB_VERDICT_NONE);
                return q;
        }

        /* A call without a model sends the app's body as it came. */
        bool as_sent = !r->model_cfg;
        struct kb_upstream_request req = {
                .method = r->upload ? "POST" : r->http->method,
                .url = r->upstream_url,
                .headers = (const char *const *) r->upstream_headers,
                .n_headers = r->n_upstream_headers,
                .body = as_sent ? r->http->body.data : r->upstream_body.data,
                .body_len = as_sent ? r->http->body.len : r->upstream_body.len,
                .body_streamed = r->upload != NULL,
                .body_size = r->upload ? kb_upload_size(r->upload) : 0,
                .timeout_usec = route->timeout_usec,
                .connect_timeout_usec = route->connect_timeout_usec,
                .ca_file = route->ca_file,
                /* Events are small and a held stream keeps the buffer: with
                 * curl's 16 KiB, a thousand streams held 2.7 MiB more. 1 KiB
                 * saved 0.9 MiB more but cost a stream that arrives at once
                 * 6 more system calls. */
                .recv_buffer = r->stream ? KB_PROXY_STREAM_RECV_BUFFER : 0,
        };
        kb_header_set_auth(&req, route, r->key);
        r->attempts++;
        q = kb_upstream_start(r->broker->upstream, &req, &upstream_ops, r, &r->call);
        kb_keyseal_release(&r->broker->keyseal, r->key);
        if (q < 0) {
                r->call = NULL;
                r->last_error = -EBADR;
                if (asprintf(&r->last_error_message, "cannot start the call: %s", strerror(-q)) < 0)
                        r->last_error_message = NULL;
                attempt_feedback(r, KB_VERDICT_NONE);
                return q;
        }
        return 0;
}

static unsigned max_attempts(const struct kb_request *r) {
        return r->model_cfg && r->model_cfg->max_attempts > 0 ? r->model_cfg->max_attempts : 1;
}

/* Whether a failed attempt may leave its answer for another: attempts left,
 * and a candidate left whose circuit lets it through now. */
static bool can_fall_over(const struct kb_request *r) {
        /* a streamed upload cannot be sent twice */
        if (r->attempts >= max_attempts(r) || r->upload)
                return false;
        uint64_t now = kb_now_usec();
        for (size_t i = r->next_candidate; i < r->n_candidates; i++)
                if (kb_router_allows(r->broker->router, r->candidates[i].target->route->name, now))
                        return true;
        return false;
}

/* Nothing left to try: the app gets the last attempt's failure. */
static void give_up(struct kb_request *r) {
        const struct kb_route *route = r->route;
        const char *msg = r->last_error_message;

        /* the app's upload was at fault, not the route */
        if (kb_upload_error_code(r->upload) < 0) {
                kb_request_fail_upload(r, kb_upload_error_code(r->upload));
                r->proxy_done(r);
                return;
        }

        if (r->attempts == 0 && r->last_error == 0) {
                _cleanup_free_ char *names = NULL;
                struct kb_buf b = {};
                for (size_t i = 0; i < r->n_candidates; i++)
                        (void) kb_buf_appendf(&b, "%s%s", i ? ", " : "", r->candidates[i].target->route->name);
                names = b.data;
                kb_request_fail(r, 503, "upstream_unavailable", KB_OUTCOME_UPSTREAM_ERROR,
                                "model '%s': every route is unavailable (circuit open: %s)", r->model, strempty(names));
        } else if (r->last_error == -ENOKEY)
                kb_request_fail(r, 503, "upstream_unavailable", KB_OUTCOME_UPSTREAM_ERROR,
                                "route '%s': key '%s' is not available on this host", route->name,
                                strempty(route->key));
        else if (r->last_error == -ETIMEDOUT)
                kb_request_fail(r, 504, "upstream_timeout", KB_OUTCOME_UPSTREAM_TIMEOUT,
                                "route '%s' did not answer within %" PRIu64 " s", route->name,
                                route->timeout_usec / USEC_PER_SEC);
        else if (r->last_error > 0)
                kb_request_fail(r, 502, "upstream_unavailable", KB_OUTCOME_UPSTREAM_ERROR,
                                "route '%s' answered %d and no other route could take the request", route->name,
                                r->last_error);
        else
                kb_request_fail(r, 502, "upstream_unavailable", KB_OUTCOME_UPSTREAM_ERROR, "route '%s' failed: %s",
                                route->name, msg ?: strerror(-r->last_error));
        r->proxy_done(r);
}

static void next_attempt(struct kb_request *r) {
        uint64_t now = kb_now_usec();

        while (r->next_candidate < r->n_candidates && r->attempts < max_attempts(r)) {
                const struct kb_candidate *c = &r->candidates[r->next_candidate++];
                /* An open circuit is skipped at once: no waiting on a route known broken. */
                int a = kb_router_acquire(r->broker->router, c->target->route->name, now);
                if (a < 0)
                        continue;
                if (start_attempt(r, c, a > 0) >= 0)
                        return;
        }
        give_up(r);
}

bool kb_proxy_plan(struct kb_request *r) {
        struct kb_candidate c[KB_ROUTER_MAX_CANDIDATES];
        int n = kb_router_plan(r->broker->router, r->model_cfg, r->family, kb_random_u32(), kb_now_usec(), c,
                               ELEMENTSOF(c));
        if (n == -ENOENT) {
                kb_request_fail(r, 400, "invalid_request", KB_OUTCOME_INVALID_REQUEST,
                                "model '%s' has no route that speaks the %s API", r->model,
                                kb_family_to_string(r->family));
                return false;
        }
        if (n < 0) {
                kb_request_fail(r, 503, "upstream_unavailable", KB_OUTCOME_UPSTREAM_ERROR,
                                "model '%s' has no target with a non-zero weight and no fallback", r->model);
                return false;
        }
        r->candidates = calloc((size_t) n, sizeof(struct kb_candidate));
        if (!r->candidates) {
                kb_request_fail(r, 500, "internal_error", KB_OUTCOME_UPSTREAM_ERROR, "out of memory");
                return false;
        }
        memcpy(r->candidates, c, (size_t) n * sizeof(struct kb_candidate));
        r->n_candidates = (size_t) n;
        r->next_candidate = 0;
        r->target = c[0].target;
        r->route = r->target->route;
        return true;
}

void kb_proxy_forward(struct kb_request *r, const char *upstream_model, bool add_include_usage,
                      kb_proxy_done_t done) {
        /* Every attempt rewrites the body for its own target's model. */
        r->add_include_usage = add_include_usage;
        r->proxy_done = done;
        kb_conn_set_handler(r->conn, &conn_handler, r);
        next_attempt(r);
}
