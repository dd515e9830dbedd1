/* SPDX-License-Identifier: MIT */
/* The app socket: who is calling (at accept), which endpoint, which team,
 * which model; local answers (/v1/models, whoami) and the agent's own
 * errors in each family's shape. Forwarding itself is proxy.c. */

#include <jansson.h>
#include <sodium.h>
#include <inttypes.h>
#include <stdarg.h>
#include <strings.h>
#include <time.h>

#include "body.h"
#include "capacity.h"
#include "multipart.h"
#include "objects.h"
#include "api-internal.h"
#include "upload.h"
#include "fleet-objects.h"
#include "broker.h"
#include "keybroker/keybroker.h"
#include "metrics.h"
#include "promote.h"
#include "router.h"
#include "shadow.h"

struct api_conn {
        struct kb_broker *broker;
        struct kb_identity *identity;
};

static kb_family family_of_path(const char *path) {
        return kb_endpoint_family_of_path(path, false);
}

/* ---- errors in the family's shape ---- */

static const char *openai_error_type(int status) {
        if (status == 403)
                return "permission_error";
        if (status == 429)
                return "rate_limit_error";
        if (status >= 500)
                return "server_error";
        return "invalid_request_error";
}

static const char *anthropic_error_type(int status) {
        switch (status) {
        case 401: return "authentication_error";
        case 403: return "permission_error";
        case 404: return "not_found_error";
        case 408: return "timeout_error";
        case 413:
        case 431: return "request_too_large";
        case 429: return "rate_limit_error";
        case 529: return "overloaded_error";
        default: return status >= 500 ? "api_error" : "invalid_request_error";
        }
}

/* The error object in the family's JSON shape; NULL on OOM. openai_type
 * overrides the OpenAI "type" derived from the status. */
static char *error_body(kb_family family, int status, const char *code, const char *openai_type,
                        const char *message) {
        json_t *j;
        if (family == KB_FAMILY_ANTHROPIC) {
                _cleanup_free_ char *m = NULL;
                if (asprintf(&m, "%s: %s", code, message) < 0)
                        return NULL;
                j = json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type", anthropic_error_type(status),
                              "message", m);
        } else
                j = json_pack("{s:{s:s, s:s, s:s}}", "error", "message", message, "type",
                              openai_type ?: openai_error_type(status), "code", code);
        if (!j)
                return NULL;
        char *s = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        return s;
}

static void respond_json(struct kb_request *r, int status, const char *body, const struct kb_http_header *extra,
                         size_t n_extra) {
        struct kb_http_header h[16];
        char scratch[512];
        size_t n = 0;

        h[n++] = (struct kb_http_header) { "content-type", "application/json" };
        for (size_t i = 0; i < n_extra && n < 8; i++)
                h[n++] = extra[i];
        n = kb_request_answer_headers(r, h, n, ELEMENTSOF(h), scratch, sizeof(scratch));
        r->status = status;
        r->response_started = true;
        (void) kb_conn_respond(r->conn, status, h, n, body, strlen(body));
}

void kb_api_respond_json(struct kb_request *r, int status, const char *body) {
        respond_json(r, status, body, NULL, 0);
}

static void api_verror(struct kb_request *r, int status, const char *code, const char *openai_type,
                       kb_outcome outcome, const struct kb_http_header *extra, size_t n_extra, const char *fmt,
                       va_list ap) {
        _cleanup_free_ char *msg = NULL, *body = NULL;

        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL;
        r->outcome = outcome;
        body = error_body(r->family, status, code, openai_type, msg ?: code);
        respond_json(r, status, body ?: "{}", extra, n_extra);
}

void kb_api_fail_full(struct kb_request *r, int status, const char *code, const char *openai_type,
                      kb_outcome outcome, const struct kb_http_header *extra, size_t n_extra, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        api_verror(r, status, code, openai_type, outcome, extra, n_extra, fmt, ap);
        va_end(ap);
        kb_request_finish(r);
}

void kb_api_conclude(struct kb_request *r) {
        const struct kb_failure *f = &r->failure;

        if (f->status && !r->response_started)
                kb_api_error(r, f->status, f->code, r->outcome, "%s", f->message ?: f->code);
        kb_request_finish(r);
}

void kb_api_error(struct kb_request *r, int status, const char *code, kb_outcome outcome, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        api_verror(r, status, code, NULL, outcome, NULL, 0, fmt, ap);
        va_end(ap);
}

void kb_api_fail(struct kb_request *r, int status, const char *code, kb_outcome outcome, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        api_verror(r, status, code, NULL, outcome, NULL, 0, fmt, ap);
        va_end(ap);
        kb_request_finish(r);
}

/* ---- request life ---- */

static struct kb_request *request_new(struct kb_broker *b, struct kb_conn *c, struct kb_http_request *http) {
        struct api_conn *ac = kb_conn_get_userdata(c);
        struct kb_request *r = calloc(1, sizeof(*r));
        if (!r)
                return NULL;

        unsigned char raw[16];
        kb_random_bytes(raw, sizeof(raw));
        sodium_bin2hex(r->id, sizeof(r->id), raw, sizeof(raw));
        r->broker = b;
        r->conn = c;
        r->http = http;
        r->config = kb_config_ref(b->config);
        r->identity = ac ? ac->identity : NULL;
        r->endpoint = _KB_ENDPOINT_MAX;
        r->family = family_of_path(http ? http->path : NULL);
        r->start_usec = kb_now_usec();
        r->attempts = 0;
        LIST_INSERT_HEAD(&b->requests, r, live);
        b->n_in_flight++;
        kb_heaptrim_note(&b->heaptrim);
        return r;
}

void kb_request_finish(struct kb_request *r) {
        struct kb_broker *b = r->broker;

        if (r->finished)
                return;
        r->finished = true;
        r->latency_usec = kb_now_usec() - r->start_usec;

        kb_api_objects_done(r);
        kb_metering_settle(r);

        /* The answer goes out first; the record and the counters are the
         * broker's own business. Ending frees the HTTP request (r->http),
         * not the connection nor the identity it owns: those are closed
         * from the loop, after this returns. */
        kb_conn_end(r->conn);
        r->http = NULL;

        /* The record reads the usage tap: write it before releasing. */
        int q = kb_journal_request(b->journal, r);
        if (q < 0 && q != -EAGAIN)
                fprintf(stderr, "<4>request %s: cannot queue journal record: %s\n", r->id, strerror(-q));
        kb_metrics_request(b->metrics, r);
        /* A promotion judges the call by its outcome; before the release,
         * which frees the usage tap. */
        kb_promote_observe(b, r);
        /* After the answer and its record: the shadow never delays either. */
        kb_shadow_start(b->shadows, TAKE_PTR(r->shadow), r);
        kb_proxy_release(r);
        LIST_REMOVE(r, live);
        b->n_in_flight--;
        kb_heaptrim_note(&b->heaptrim);
        b->n_requests++;

        kb_buf_free(&r->out);
        free(r->failure.message);
        free(r->model);
        free(r->key_label);
        free(r->upstream_request_id);
        free(r->fallback_from);
        free(r->pin_key);
        kb_upload_free(r->upload);
        kb_fleet_lookup_cancel(r->object_lookup);
        kb_config_unref(r->config);
        free(r);
}

/* ---- local endpoints ---- */

/* Answer 200 with j (consumed; NULL means it could not be built) and finish. */
static void answer_json(struct kb_request *r, json_t *j) {
        _cleanup_free_ char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;

        json_decref(j);
        if (!s) {
                kb_api_fail(r, 500, "internal_error", KB_OUTCOME_INVALID_REQUEST, "out of memory");
                return;
        }
        respond_json(r, 200, s, NULL, 0);
        kb_request_finish(r);
}

static void serve_whoami(struct kb_request *r) {
        const struct kb_identity *id = r->identity;
        json_t *groups = json_array(), *teams = json_array();

        for (size_t i = 0; groups && i < id->n_groups; i++)
                json_array_append_new(groups, json_integer(id->groups[i]));
        for (size_t i = 0; teams && i < r->config->n_teams; i++)
                if (kb_identity_in_team(id, &r->config->teams[i]))
                        json_array_append_new(teams, json_string(r->config->teams[i].name));

        json_t *j = json_pack("{s:I, s:I, s:I, s:o, s:s?, s:s?, s:s?, s:o}", "uid", (json_int_t) id->uid, "gid",
                              (json_int_t) id->gid, "pid", (json_int_t) id->pid, "groups", groups, "unit", id->unit,
                              "exe", id->exe, "team", r->team ? r->team->name : NULL, "teams", teams);
        answer_json(r, j);
}

static int cmp_model_name(const void *a, const void *b) {
        return strcmp(*(const char *const *) a, *(const char *const *) b);
}

static void serve_models(struct kb_request *r) {
        const struct kb_config *c = r->config;
        _cleanup_free_ const char **names = calloc(c->n_models + 1, sizeof(char *));
        size_t n = 0;

        if (!names) {
                kb_api_fail(r, 500, "internal_error", KB_OUTCOME_INVALID_REQUEST, "out of memory");
                return;
        }
        for (size_t i = 0; i < c->n_models; i++)
                if (kb_team_allows_model(r->team, c->models[i].name))
                        names[n++] = c->models[i].name;
        qsort(names, n, sizeof(char *), cmp_model_name);

        /* Anthropic's SDK pages by has_more/first_id/last_id and expects its
         * own item shape; it always sends anthropic-version. There is no
         * real creation date to give, so both shapes say the epoch. */
        bool anthropic = r->family == KB_FAMILY_ANTHROPIC;
        json_t *data = json_array();
        for (size_t i = 0; data && i < n; i++)
                json_array_append_new(data, anthropic ? json_pack("{s:s, s:s, s:s, s:s}", "type", "model", "id",
                                                                  names[i], "display_name", names[i], "created_at",
                                                                  "1970-01-01T00:00:00Z")
                                                      : json_pack("{s:s, s:s, s:i, s:s}", "id", names[i], "object",
                                                                  "model", "created", 0, "owned_by", "keybroker"));
        json_t *j = anthropic ? json_pack("{s:o, s:b, s:s?, s:s?}", "data", data, "has_more", 0, "first_id",
                                          n ? names[0] : NULL, "last_id", n ? names[n - 1] : NULL)
                              : json_pack("{s:s, s:o}", "object", "list", "data", data);
        answer_json(r, j);
}

/* ---- admission refused (metering's verdict) ---- */

static void iso8601(uint64_t usec, char *buf, size_t size) {
        time_t s = (time_t) (usec / USEC_PER_SEC);
        struct tm tm;
        if (usec == 0 || !gmtime_r(&s, &tm) || strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                snprintf(buf, size, "unknown");
}

static void format_amount(kb_quota_limit l, uint64_t v, char *buf, size_t size) {
        if (l == KB_QUOTA_BUDGET_PER_DAY || l == KB_QUOTA_BUDGET_PER_MONTH)
                snprintf(buf, size, "$%" PRIu64 ".%06" PRIu64, v / 1000000, v % 1000000);
        else
                snprintf(buf, size, "%" PRIu64, v);
}

static void refuse_quota(struct kb_request *r, const struct kb_quota_denial *d, uint64_t now) {
        char used[32], max[32], reset[32], retry[24];
        const char *limit = kb_quota_limit_to_string(d->limit);

        format_amount(d->limit, d->used, used, sizeof(used));
        format_amount(d->limit, d->max, max, sizeof(max));
        iso8601(d->reset_usec, reset, sizeof(reset));
        /* Unknown reset (concurrency, in-flight reservations): try again soon. */
        uint64_t wait = d->reset_usec > now ? (d->reset_usec - now + USEC_PER_SEC - 1) / USEC_PER_SEC : 1;
        snprintf(retry, sizeof(retry), "%" PRIu64, MAX(wait, (uint64_t) 1));

        if (d->first_in_window)
                (void) kb_journal_quota(r->broker->journal, r->team->name, limit, d->used, d->max, d->reset_usec);

        /* The SDKs retry a 429 after retry-after however long it is (the
         * OpenAI one without a cap): an app would hang until midnight on a
         * spent daily budget. x-should-retry: false (honoured by both) makes
         * them fail at once where waiting cannot help soon: day and month
         * windows, and a request bigger than the limit itself. */
        bool never_fits = d->requested > d->max;
        bool retry_soon = d->rate && !never_fits;
        struct kb_http_header h[] = { { "retry-after", retry }, { "x-should-retry", retry_soon ? "true" : "false" } };
        if (never_fits) {
                format_amount(d->limit, d->requested, reset, sizeof(reset));
                kb_api_fail_full(r, 429, "quota_exceeded", kb_quota_limit_error_type(d->limit),
                                 KB_OUTCOME_QUOTA_REJECTED, h, ELEMENTSOF(h),
                                 "team '%s': this request alone (%s, estimated) is more than its whole %s limit of %s",
                                 r->team->name, reset, limit, max);
                return;
        }
        kb_api_fail_full(r, 429, "quota_exceeded", kb_quota_limit_error_type(d->limit), KB_OUTCOME_QUOTA_REJECTED,
                          h, ELEMENTSOF(h),
                          "team '%s' is over its %s limit: %s used of %s; resets at %s", r->team->name, limit,
                          used, max, reset);
}

static void refuse_admission(struct kb_request *r, const struct kb_admit_verdict *v) {
        switch (v->refusal) {
        case KB_REFUSAL_QUOTA:
                refuse_quota(r, &v->denial, kb_realtime_usec());
                return;
        case KB_REFUSAL_UNPRICED:
                kb_api_fail(r, 403, "model_not_allowed", KB_OUTCOME_FORBIDDEN,
                            "model '%s' has no price on any of its routes (first: '%s') and team '%s' has "
                            "a USD budget (unpriced = deny); add a price or set unpriced = zero",
                            r->model, strempty(v->first_route), r->team->name);
                return;
        case KB_REFUSAL_STORE_AWAY: {
                struct kb_http_header h[] = { { "retry-after", "1" } };
                kb_api_fail_full(r, 503, "quota_store_unavailable", "server_error", KB_OUTCOME_QUOTA_REJECTED, h,
                                 ELEMENTSOF(h),
                                 "team '%s' is counted fleet-wide and the quota store cannot be reached "
                                 "(quota_store_offline = deny); try again shortly",
                                 r->team->name);
                return;
        }
        case KB_REFUSAL_ERROR:
        default:
                kb_api_fail(r, 500, "internal_error", KB_OUTCOME_QUOTA_REJECTED, "cannot reserve quota: %s",
                            strerror(-v->error));
                return;
        }
}

/* ---- dispatch ---- */

void kb_api_forward_admitted(struct kb_request *r, const struct kb_admit_verdict *v) {
        if (v->refusal != KB_REFUSAL_NONE) {
                refuse_admission(r, v);
                return;
        }
        /* Decided now, while the app's body is at hand: the shadow copies
         * it, and proxy.c keeps a copy of the answer only for a sample. */
        if (kb_shadow_sample(r->broker->shadows, r, &r->shadow) < 0)
                r->shadow = NULL;
        kb_proxy_forward(r, r->target->upstream_model, r->add_include_usage, kb_api_conclude);
}

/* Characters of speech input: what TTS is billed by (code points). */
static uint64_t speech_characters(const char *body, size_t len) {
        json_t *root = json_loadb(body, len, 0, NULL);
        const char *s = json_string_value(json_object_get(root, "input"));
        size_t n = s ? json_string_length(json_object_get(root, "input")) : 0;
        uint64_t chars = 0;
        for (size_t i = 0; i < n; i++)
                if (((unsigned char) s[i] & 0xC0) != 0x80)
                        chars++;
        json_decref(root);
        return chars;
}

/* A multipart form (uploads: audio, image edits, videos): checked whole,
 * its model and stream fields read. The body is rewritten per attempt. */
static int inspect_form(struct kb_request *r, struct kb_body_info *info, const char **ret_why) {
        struct kb_multipart *m = NULL;
        struct kb_buf sink = {};
        const char *ct = kb_http_request_header(r->http, "content-type");
        int q = kb_multipart_new(ct, NULL, &m, ret_why);
        if (q >= 0)
                q = kb_multipart_feed(m, r->http->body.data ?: "", r->http->body.len, &sink);
        if (q >= 0)
                q = kb_multipart_finish(m, &sink);
        kb_buf_free(&sink);
        if (q == -EBADMSG)
                *ret_why = kb_multipart_error(m);
        if (q >= 0) {
                const char *model = kb_multipart_model(m);
                if (model && !(info->model = strdup(model)))
                        q = -ENOMEM;
                info->stream = streq_ptr(kb_multipart_field(m, "stream"), "true");
                r->form_file_bytes = kb_multipart_file_bytes(m);
        }
        kb_multipart_free(m);
        return q;
}

/* The model is known (body or form): check it, plan, admit, forward. */
void kb_api_serve_model(struct kb_request *r, struct kb_body_info *info_) {
        const struct kb_http_request *h = r->http;
        struct kb_body_info info = *info_;

        r->model = TAKE_PTR(info.model);
        info_->model = NULL;
        r->stream = info.stream;
        if (r->endpoint == KB_ENDPOINT_AUDIO_SPEECH && !r->multipart)
                r->characters = speech_characters(h->body.data ?: "", h->body.len);

        r->model_cfg = kb_config_find_model(r->config, r->model);
        if (!r->model_cfg) {
                kb_api_fail(r, 404, "model_not_found", KB_OUTCOME_MODEL_NOT_FOUND,
                            "The model '%s' does not exist on this broker", r->model);
                return;
        }
        if (!kb_team_allows_model(r->team, r->model)) {
                kb_api_fail(r, 403, "model_not_allowed", KB_OUTCOME_FORBIDDEN,
                            "team '%s' may not use model '%s'", r->team->name, r->model);
                return;
        }
        /* The ordered candidates (targets by weight, fallbacks); the first
         * prices the quota reservation. */
        if (!kb_proxy_plan(r)) {
                kb_api_conclude(r);
                return;
        }

        /* OpenAI chat and completions streams omit usage unless asked; we
         * ask, and hide the answer from an app that did not. */
        bool add_usage = (r->endpoint == KB_ENDPOINT_CHAT || r->endpoint == KB_ENDPOINT_COMPLETIONS) && r->stream &&
                         !r->multipart && !info.include_usage;
        r->hide_usage_chunk = add_usage;
        r->add_include_usage = add_usage;
        struct kb_admit_verdict v;
        if (kb_metering_admit(r, &info, kb_api_forward_admitted, &v) != KB_ADMIT_LATER)
                kb_api_forward_admitted(r, &v);
}

static void serve_forward(struct kb_request *r) {
        const struct kb_http_request *h = r->http;
        struct kb_body_info info = {};
        const char *why = NULL;
        const char *ct = kb_http_request_header(h, "content-type");

        r->multipart = ct && strncasecmp(ct, "multipart/", 10) == 0;
        int q = r->multipart ? inspect_form(r, &info, &why)
                             : kb_body_inspect(h->body.data ?: "", h->body.len, &info, &why);
        if (q == -ENOMEM) {
                kb_api_fail(r, 500, "internal_error", KB_OUTCOME_INVALID_REQUEST, "out of memory");
                return;
        }
        if (q < 0) {
                kb_api_fail(r, 400, "invalid_request", KB_OUTCOME_INVALID_REQUEST, "%s", why ?: "invalid body");
                return;
        }
        if (!info.model && r->def->model_at == KB_MODEL_OPTIONAL && !info.model_not_string) {
                kb_body_info_done(&info);
                kb_api_serve_object(r, kb_api_forward_admitted);
                return;
        }
        if (!info.model) {
                kb_body_info_done(&info);
                kb_api_fail(r, 400, "invalid_request", KB_OUTCOME_INVALID_REQUEST,
                            info.model_not_string ? "\"model\" must be a string"
                            : r->multipart        ? "the form has no \"model\" field"
                                                  : "request body has no \"model\"");
                return;
        }
        kb_api_serve_model(r, &info);
}

static void api_on_request(struct kb_conn *c, struct kb_http_request *http, void *userdata) {
        struct kb_broker *b = userdata;
        struct kb_request *r = request_new(b, c, http);

        if (!r) {
                static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"code\":\"internal_error\"}}";
                (void) kb_conn_respond(c, 500, NULL, 0, oom, sizeof(oom) - 1);
                kb_conn_end(c);
                return;
        }

        const struct kb_endpoint_def *ep = NULL;
        bool anthropic_version = kb_http_request_header(http, "anthropic-version") != NULL;
        r->family = kb_endpoint_family_of_path(http->path, anthropic_version);
        int m = kb_endpoint_match(http->method, http->path, anthropic_version, &ep, r->object_id);
        if (m < 0) {
                if (m == -EBADRQC)
                        kb_api_fail(r, 405, "invalid_request", KB_OUTCOME_INVALID_REQUEST,
                                    "method %s is not allowed on %s", http->method, http->path);
                else
                        kb_api_fail(r, 404, "not_found", KB_OUTCOME_INVALID_REQUEST, "no endpoint %s %s",
                                    http->method, http->path);
                return;
        }
        r->def = ep;
        r->endpoint = ep->endpoint;
        r->family = ep->family;
        if (ep->local == KB_LOCAL_MODELS && anthropic_version)
                r->family = KB_FAMILY_ANTHROPIC;

        const char *want = kb_http_request_header(http, KB_HDR_TEAM);
        int q = kb_identity_pick_team(r->config, r->identity, want, &r->team);
        if (q < 0 && ep->local != KB_LOCAL_WHOAMI) {
                if (want)
                        kb_api_fail(r, 403, "unknown_team", KB_OUTCOME_FORBIDDEN,
                                    "uid %u is not a member of team '%s'", (unsigned) r->identity->uid, want);
                else
                        kb_api_fail(r, 403, "unknown_team", KB_OUTCOME_FORBIDDEN,
                                    "no team matches uid %u (gid %u, unit %s)", (unsigned) r->identity->uid,
                                    (unsigned) r->identity->gid, r->identity->unit ?: "unknown");
                return;
        }

        switch (ep->local) {
        case KB_LOCAL_WHOAMI:
                serve_whoami(r);
                break;
        case KB_LOCAL_MODELS:
                serve_models(r);
                break;
        default:
                if (http->body_streamed)
                        kb_api_serve_upload(r);
                else if (ep->model_at == KB_MODEL_NONE)
                        kb_api_serve_object(r, kb_api_forward_admitted);
                else
                        serve_forward(r);
        }
}

/* ---- connections ---- */

static struct kb_uid_count *uid_slot(struct kb_broker *b, uid_t uid, bool create) {
        for (size_t i = 0; i < b->n_uid_conns; i++)
                if (b->uid_conns[i].uid == uid)
                        return &b->uid_conns[i];
        if (!create)
                return NULL;
        struct kb_uid_count *n = realloc(b->uid_conns, (b->n_uid_conns + 1) * sizeof(*n));
        if (!n)
                return NULL;
        b->uid_conns = n;
        b->uid_conns[b->n_uid_conns] = (struct kb_uid_count) { uid, 0 };
        return &b->uid_conns[b->n_uid_conns++];
}

static int api_on_accept(struct kb_conn *c, void *userdata) {
        struct kb_broker *b = userdata;
        struct kb_identity *id;

        char msg[128];

        int r = kb_identity_from_socket(kb_conn_fd(c), &id);
        if (r == -EMFILE || r == -ENFILE) {
                /* pinning the caller takes a pidfd */
                b->n_refused_fds++;
                kb_conn_set_refusal(c, "broker_overloaded",
                                    r == -EMFILE ? "keybrokerd is out of file descriptors"
                                                 : "the system is out of file descriptors");
                return r;
        }
        if (r < 0) {
                b->n_refused_identity++;
                snprintf(msg, sizeof(msg), "cannot identify the caller: %s", strerror(-r));
                kb_conn_set_refusal(c, "identity_unavailable", msg);
                return r;
        }

        struct kb_uid_count *slot = uid_slot(b, id->uid, true);
        if (!slot || slot->n >= b->config->agent.max_connections_per_uid) {
                if (slot) {
                        b->n_refused_per_uid++;
                        snprintf(msg, sizeof(msg),
                                 "too many connections from uid %u: max_connections_per_uid = %" PRIu64 " reached",
                                 (unsigned) id->uid, (uint64_t) b->config->agent.max_connections_per_uid);
                        kb_conn_set_refusal(c, "too_many_connections", msg);
                }
                kb_identity_free(id);
                return slot ? -EUSERS : -ENOMEM;
        }

        struct api_conn *ac = calloc(1, sizeof(*ac));
        if (!ac) {
                kb_identity_free(id);
                return -ENOMEM;
        }
        slot->n++;
        ac->broker = b;
        ac->identity = id;
        kb_conn_set_userdata(c, ac);
        return 0;
}

static void api_on_close(struct kb_conn *c, void *userdata) {
        struct kb_broker *b = userdata;
        struct api_conn *ac = kb_conn_get_userdata(c);

        if (!ac)
                return;
        struct kb_uid_count *slot = uid_slot(b, ac->identity->uid, false);
        if (slot && slot->n > 0 && --slot->n == 0) {
                *slot = b->uid_conns[--b->n_uid_conns];
        }
        kb_identity_free(ac->identity);
        free(ac);
        kb_conn_set_userdata(c, NULL);
}

/* Rejections by the HTTP layer (400, 408, 413, 431, 503) in the family's
 * shape; these are journaled too unless no request was ever read. */
static void api_write_error(struct kb_conn *c, const char *path, int status, const char *code, const char *message,
                            void *userdata) {
        struct kb_broker *b = userdata;
        kb_family family = family_of_path(path);
        _cleanup_free_ char *body = error_body(family, status, code, NULL, message);
        uint64_t now = kb_now_usec();

        /* No request record exists for a connection refused at accept: the
         * shortage is said in the log instead, at most every 10 s. */
        if (code && streq(code, "broker_overloaded") && now >= b->fd_warning_usec + 10 * USEC_PER_SEC) {
                struct kb_capacity cap;
                kb_capacity_get(b, &cap);
                b->fd_warning_usec = now;
                fprintf(stderr, "<4>%s: connections are answered 503 broker_overloaded (%" PRIu64 " so far, %" PRIu64
                        " fds open)\n", strempty(message), cap.refused_fds, cap.fds_open);
        }
        unsigned char raw[16];
        char id[33];

        kb_random_bytes(raw, sizeof(raw));
        sodium_bin2hex(id, sizeof(id), raw, sizeof(raw));
        struct kb_http_header h[] = {
                { "content-type", "application/json" },
                { KB_HDR_REQUEST_ID, id },
        };
        (void) kb_conn_respond(c, status, h, ELEMENTSOF(h), body ?: "{}", body ? strlen(body) : 2);

        struct api_conn *ac = kb_conn_get_userdata(c);
        if (!path || !ac)
                return;
        /* A record for a request we refused to read, so audits see it. */
        struct kb_request r = {
                .broker = b,
                .conn = c,
                .config = b->config,
                .identity = ac->identity,
                .endpoint = _KB_ENDPOINT_MAX,
                .family = family,
                .status = status,
                .outcome = KB_OUTCOME_INVALID_REQUEST,
        };
        memcpy(r.id, id, sizeof(id));
        const struct kb_endpoint_def *ep;
        if (kb_endpoint_match("POST", path, false, &ep, NULL) >= 0 ||
            kb_endpoint_match("GET", path, false, &ep, NULL) >= 0)
                r.endpoint = ep->endpoint;
        (void) kb_identity_pick_team(b->config, ac->identity, NULL, &r.team);
        (void) kb_journal_request(b->journal, &r);
}

void kb_api_cut_all(struct kb_broker *b) {
        struct kb_request *r;

        while ((r = LIST_FIRST(&b->requests))) {
                r->in_upstream_cb = true; /* no re-entry into finish from the writes below */
                if (!r->response_started)
                        kb_api_error(r, 503, "upstream_unavailable", KB_OUTCOME_UPSTREAM_ERROR,
                                     "keybrokerd is shutting down");
                else
                        kb_proxy_cut(r, "keybrokerd is shutting down");
                r->in_upstream_cb = false;
                kb_request_finish(r);
        }
}

/* A call an app's request started goes to curl in the same loop pass,
 * not the next: one epoll_wait less per request. */
static void api_after_io(void *userdata) {
        struct kb_broker *b = userdata;

        kb_upstream_run_deferred(b->upstream);
}

const struct kb_http_ops kb_api_ops = {
        .after_io = api_after_io,
        .on_accept = api_on_accept,
        .stream_body = kb_api_stream_body,
        .on_request = api_on_request,
        .write_error = api_write_error,
        .on_close = api_on_close,
};

struct kb_http_limits kb_api_limits(const struct kb_config *c) {
        return (struct kb_http_limits) {
                .max_header_bytes = 64 * 1024,
                .max_body = c->agent.max_request_body,
                .header_timeout_usec = c->agent.header_timeout_usec,
                .idle_timeout_usec = c->agent.idle_timeout_usec,
                .max_connections = c->agent.max_connections,
        };
}
