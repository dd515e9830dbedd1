/* SPDX-License-Identifier: MIT */
/* Turns one request into one response: routing, the x-mock-* script
 * headers, and the transport tricks (delays, cuts, hangs) the broker's
 * tests need. Blocking I/O: each connection has its own thread. */

#include "mock.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "script.h"
#include "util.h"

int mock_send_all(int fd, const void *p, size_t n) {
        const char *c = p;
        while (n > 0) {
                ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                c += k;
                n -= (size_t) k;
        }
        return 0;
}

void mock_sleep_ms(uint64_t ms) {
        struct timespec ts = { .tv_sec = (time_t) (ms / 1000), .tv_nsec = (long) (ms % 1000) * 1000000L };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

const char *mock_header(const struct mock_request *req, const char *name) {
        return json_string_value(json_object_get(req->headers, name));
}

/* A missing or malformed knob falls back to its default; a too large one is
 * clamped, so a typo in a test cannot make the mock allocate gigabytes. */
uint64_t mock_knob(const struct mock_request *req, const char *name, uint64_t def, uint64_t max) {
        const char *v = mock_header(req, name);
        if (!v || *v < '0' || *v > '9')
                return def;
        char *end;
        errno = 0;
        unsigned long long x = strtoull(v, &end, 10);
        if (errno != 0 || *end != 0)
                return def;
        return MIN((uint64_t) x, max);
}

static const char *reason_phrase(int status) {
        switch (status) {
        case 100: return "Continue";
        case 200: return "OK";
        case 400: return "Bad Request";
        case 401: return "Unauthorized";
        case 403: return "Forbidden";
        case 404: return "Not Found";
        case 408: return "Request Timeout";
        case 413: return "Payload Too Large";
        case 429: return "Too Many Requests";
        case 431: return "Request Header Fields Too Large";
        case 500: return "Internal Server Error";
        case 502: return "Bad Gateway";
        case 503: return "Service Unavailable";
        case 504: return "Gateway Timeout";
        case 529: return "Site Overloaded";
        default: return "Mock Status";
        }
}

int mock_append_head(struct kb_buf *b, bool anthropic, uint64_t n, int status, const char *content_type,
                     int64_t content_length, bool close_after, const char *retry_after) {
        int r = kb_buf_appendf(b, "HTTP/1.1 %d %s\r\ncontent-type: %s\r\nx-mock-n: %" PRIu64 "\r\n",
                               status, reason_phrase(status), content_type, n);
        if (r < 0)
                return r;
        if (anthropic)
                r = kb_buf_appendf(b,
                                   "request-id: req_mock%" PRIu64 "\r\n"
                                   "anthropic-ratelimit-requests-limit: 1000\r\n"
                                   "anthropic-ratelimit-requests-remaining: 999\r\n", n);
        else
                r = kb_buf_appendf(b,
                                   "x-request-id: req_mock%" PRIu64 "\r\n"
                                   "openai-processing-ms: 1\r\n"
                                   "x-ratelimit-limit-requests: 10000\r\n"
                                   "x-ratelimit-remaining-requests: 9999\r\n"
                                   "x-ratelimit-reset-requests: 6ms\r\n"
                                   "x-ratelimit-limit-tokens: 1000000\r\n"
                                   "x-ratelimit-remaining-tokens: 999000\r\n"
                                   "x-ratelimit-reset-tokens: 1ms\r\n", n);
        if (r < 0)
                return r;
        if (retry_after) {
                r = kb_buf_appendf(b, "retry-after: %s\r\n", retry_after);
                if (r < 0)
                        return r;
        }
        if (content_length >= 0)
                r = kb_buf_appendf(b, "content-length: %" PRId64 "\r\n", content_length);
        else
                r = kb_buf_appendf(b, "transfer-encoding: chunked\r\n");
        if (r < 0)
                return r;
        return kb_buf_appendf(b, "connection: %s\r\n\r\n", close_after ? "close" : "keep-alive");
}

/* The caller closes the socket on MOCK_CLOSE; the FIN goes out after the
 * data already queued, so the client reads the partial response and then a
 * plain EOF — what a crashed provider looks like. */
static int cut_connection(int fd) {
        (void) shutdown(fd, SHUT_WR);
        return MOCK_CLOSE;
}

/* x-mock-reset: SO_LINGER 0 makes the caller's close() send an RST and
 * drop whatever is still queued: a provider (or a middlebox) that resets
 * the connection rather than closing it. */
static int reset_connection(int fd) {
        struct linger l = { .l_onoff = 1, .l_linger = 0 };
        (void) setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        return MOCK_CLOSE;
}

int mock_end_connection(const struct mock_reply *r) {
        return r->reset ? reset_connection(r->fd) : cut_connection(r->fd);
}

/* Values x-mock-bad-usage may put where usage numbers go. */
static const char *bad_usage_value(const char *kind) {
        static const struct {
                const char *kind, *json;
        } table[] = {
                { "negative", "-5" },
                { "float", "3.5" },
                { "string", "\"7\"" },
                { "null", "null" },
                { "huge", "99999999999999999999999" },
                { "exp", "1e999999" },
                { "object", "{}" },
        };
        for (size_t i = 0; kind && i < ELEMENTSOF(table); i++)
                if (streq(kind, table[i].kind))
                        return table[i].json;
        return NULL;
}

/* Every number inside every "usage" object of text (nested objects too)
 * replaced by value. Returns a new string, or NULL on OOM. */
static char *spoil_usage(const char *text, const char *value) {
        _cleanup_(kb_buf_free) struct kb_buf out = {};
        const char *p = text;
        for (;;) {
                const char *u = strstr(p, "\"usage\":{");
                if (!u) {
                        if (kb_buf_append(&out, p, strlen(p)) < 0)
                                return NULL;
                        break;
                }
                u += strlen("\"usage\":{");
                if (kb_buf_append(&out, p, (size_t) (u - p)) < 0)
                        return NULL;
                int depth = 1;
                bool in_string = false;
                for (p = u; *p && depth > 0;) {
                        if (in_string) {
                                if (*p == '\\' && p[1]) {
                                        if (kb_buf_append(&out, p, 2) < 0)
                                                return NULL;
                                        p += 2;
                                        continue;
                                }
                                if (*p == '"')
                                        in_string = false;
                        } else if (*p == '"')
                                in_string = true;
                        else if (*p == '{')
                                depth++;
                        else if (*p == '}')
                                depth--;
                        else if (*p == '-' || (*p >= '0' && *p <= '9')) {
                                const char *e = p + 1;
                                while (*e && strchr("0123456789.eE+-", *e))
                                        e++;
                                if (kb_buf_append(&out, value, strlen(value)) < 0)
                                        return NULL;
                                p = e;
                                continue;
                        }
                        if (kb_buf_append(&out, p, 1) < 0)
                                return NULL;
                        p++;
                }
        }
        return TAKE_PTR(out.data);
}

/* Takes ownership of body. */
int mock_send_json(struct mock_reply *r, int status, json_t *body) {
        if (!body)
                return -ENOMEM;
        _cleanup_free_ char *text = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(6));
        json_decref(body);
        if (!text)
                return -ENOMEM;
        if (r->bad_usage) {
                char *spoiled = spoil_usage(text, r->bad_usage);
                if (!spoiled)
                        return -ENOMEM;
                free(text);
                text = spoiled;
        }
        return mock_send_bytes(r, status, "application/json", text, strlen(text));
}

int mock_send_bytes(struct mock_reply *r, int status, const char *content_type, const char *text, size_t len) {
        _cleanup_(kb_buf_free) struct kb_buf out = {};
        bool close_after = !r->req->keep_alive;
        int k = mock_append_head(&out, r->anthropic, r->req->n, status, content_type, (int64_t) len,
                                 close_after, r->retry_after);
        if (k < 0)
                return k;

        size_t first = len;
        if (r->cut_after >= 0)
                first = MIN(len, (size_t) r->cut_after);
        else if (r->event_delay_ms > 0)
                first = len / 2;

        k = kb_buf_append(&out, text, first);
        if (k < 0)
                return k;
        k = mock_send_all(r->fd, out.data, out.len);
        if (k < 0)
                return k;
        if (r->cut_after >= 0)
                return mock_end_connection(r);
        if (first < len) {
                mock_sleep_ms(r->event_delay_ms);
                k = mock_send_all(r->fd, text + first, len - first);
                if (k < 0)
                        return k;
        }
        return close_after ? MOCK_CLOSE : MOCK_KEEP;
}

static int send_error(struct mock_reply *r, int status, const char *message) {
        return mock_send_json(r, status, mock_error_json(r->anthropic, status, r->script.model, message));
}

int mock_fail(struct mock_reply *r, int status, const char *param, const char *fmt, ...) {
        va_list ap;
        _cleanup_free_ char *msg = NULL;
        va_start(ap, fmt);
        int k = vasprintf(&msg, fmt, ap);
        va_end(ap);
        if (k < 0)
                return -ENOMEM;
        json_t *e = mock_error_json(r->anthropic, status, r->script.model, msg);
        if (e && param && !r->anthropic && json_object_set_new(json_object_get(e, "error"), "param", json_string(param)) < 0) {
                json_decref(e);
                e = NULL;
        }
        return mock_send_json(r, status, e);
}

int mock_send_error(int fd, bool anthropic, int status, const char *message, bool close_after) {
        struct mock_request req = { .keep_alive = !close_after };
        struct mock_reply r = {
                .fd = fd,
                .req = &req,
                .anthropic = anthropic,
                .cut_after = -1,
                .script.model = MOCK_DEFAULT_MODEL,
        };
        return mock_send_json(&r, status, mock_error_json(anthropic, status, MOCK_DEFAULT_MODEL, message));
}

/* x-mock-long-line-bytes: N: one event whose single data line is N bytes
 * ("data: {"pad":"xxx…"}", no newline inside), sent in 64 KiB HTTP chunks
 * so the mock never holds it whole. It is not counted as an event. */
static int sse_long_line(struct mock_reply *r) {
        static const char head[] = "data: {\"pad\":\"", tail[] = "\"}";
        uint64_t n = MAX(r->long_line, (uint64_t) (sizeof(head) + sizeof(tail)));
        uint64_t pad = n - (sizeof(head) - 1) - (sizeof(tail) - 1);
        _cleanup_free_ char *block = malloc(65536);
        char size[32];
        int k;

        if (!block)
                return -ENOMEM;
        memset(block, 'x', 65536);
        snprintf(size, sizeof(size), "%zx\r\n", sizeof(head) - 1);
        if ((k = mock_send_all(r->fd, size, strlen(size))) < 0 || (k = mock_send_all(r->fd, head, sizeof(head) - 1)) < 0 ||
            (k = mock_send_all(r->fd, "\r\n", 2)) < 0)
                return k;
        while (pad > 0) {
                size_t m = (size_t) MIN(pad, (uint64_t) 65536);
                snprintf(size, sizeof(size), "%zx\r\n", m);
                if ((k = mock_send_all(r->fd, size, strlen(size))) < 0 || (k = mock_send_all(r->fd, block, m)) < 0 ||
                    (k = mock_send_all(r->fd, "\r\n", 2)) < 0)
                        return k;
                pad -= m;
        }
        snprintf(size, sizeof(size), "%zx\r\n", sizeof(tail) - 1 + 2);
        if ((k = mock_send_all(r->fd, size, strlen(size))) < 0 || (k = mock_send_all(r->fd, tail, sizeof(tail) - 1)) < 0)
                return k;
        return mock_send_all(r->fd, "\n\n\r\n", 4);
}

int mock_sse_begin(struct mock_sse *s) {
        _cleanup_(kb_buf_free) struct kb_buf out = {};
        int k = mock_append_head(&out, s->r->anthropic, s->r->req->n, 200, "text/event-stream", -1,
                            !s->r->req->keep_alive, NULL);
        if (k < 0)
                return k;
        k = mock_send_all(s->r->fd, out.data, out.len);
        if (k < 0 || s->r->long_line == 0)
                return k;
        return sse_long_line(s->r);
}

/* One SSE event per HTTP chunk, one send() per chunk, so a delay between
 * events is visible to the broker. data is consumed; raw is used when data
 * is NULL. Returns 0, MOCK_CLOSE (cut) or -errno. */
int mock_sse_event(struct mock_sse *s, const char *event, json_t *data, const char *raw) {
        _cleanup_free_ char *text = NULL;
        if (data) {
                text = json_dumps(data, JSON_COMPACT);
                json_decref(data);
                if (!text)
                        return -ENOMEM;
                raw = text;
        }
        if (!raw)
                return -ENOMEM;
        if (s->r->bad_usage && strstr(raw, "\"usage\":{")) {
                char *spoiled = spoil_usage(raw, s->r->bad_usage);
                if (!spoiled)
                        return -ENOMEM;
                free(text);
                raw = text = spoiled;
        }

        if (s->r->cut_after >= 0 && s->sent >= (uint64_t) s->r->cut_after)
                return mock_end_connection(s->r);
        if (s->sent > 0 && s->r->event_delay_ms > 0)
                mock_sleep_ms(s->r->event_delay_ms);

        size_t len = strlen(raw) + strlen("data: \n\n") + (event ? strlen("event: \n") + strlen(event) : 0);
        kb_buf_clear(&s->buf);
        int k = kb_buf_appendf(&s->buf, "%zx\r\n", len);
        if (k >= 0 && event)
                k = kb_buf_appendf(&s->buf, "event: %s\n", event);
        if (k >= 0)
                k = kb_buf_appendf(&s->buf, "data: %s\n\n\r\n", raw);
        if (k < 0)
                return k;
        k = mock_send_all(s->r->fd, s->buf.data, s->buf.len);
        if (k < 0)
                return k;
        s->sent++;
        return 0;
}

int mock_sse_end(struct mock_sse *s) {
        /* Even a cut after the last event leaves the chunked body open. */
        if (s->r->cut_after >= 0)
                return mock_end_connection(s->r);
        int k = mock_send_all(s->r->fd, "0\r\n\r\n", 5);
        if (k < 0)
                return k;
        return s->r->req->keep_alive ? MOCK_KEEP : MOCK_CLOSE;
}

/* Read and drop whatever the client sends until it goes away. */
static int hang(int fd) {
        char buf[4096];
        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                if (poll(&p, 1, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                ssize_t n = recv(fd, buf, sizeof buf, 0);
                if (n == 0)
                        return MOCK_CLOSE;
                if (n < 0 && errno != EINTR && errno != EAGAIN)
                        return -errno;
        }
}

static bool authorized(const struct mock_request *req) {
        if (mock_cfg->n_keys == 0)
                return true;
        const char *auth = mock_header(req, "authorization");
        const char *xkey = mock_header(req, "x-api-key");
        if (auth && strncasecmp(auth, "Bearer ", 7) == 0)
                auth += 7;
        else
                auth = NULL;
        for (size_t i = 0; i < mock_cfg->n_keys; i++)
                if (streq_ptr(auth, mock_cfg->keys[i]) || streq_ptr(xkey, mock_cfg->keys[i]))
                        return true;
        return false;
}

static bool path_under(const char *path, const char *prefix) {
        size_t n = strlen(prefix);
        return strncmp(path, prefix, n) == 0 && (path[n] == 0 || path[n] == '/');
}

/* Anthropic: /v1/messages and below; /v1/models and /v1/files (and
 * below) when the request carries anthropic-version. */
static bool is_anthropic(const struct mock_request *req) {
        if (path_under(req->path, "/v1/messages"))
                return true;
        return (streq(req->path, "/v1/models") || path_under(req->path, "/v1/files")) &&
                mock_header(req, "anthropic-version");
}

int mock_respond(int fd, const struct mock_request *req) {
        const char *h = mock_header(req, "x-mock-hang");
        if (h && !streq(h, "0"))
                return hang(fd);

        /* A JSON body is parsed up to 64 MiB; a larger one is only
         * received (413 where JSON is needed). */
        _cleanup_(json_decrefp) json_t *root = NULL;
        if (!req->multipart && req->body_len <= MOCK_MAX_JSON_BODY)
                root = json_loadb(req->body, req->body_len, JSON_DECODE_ANY, NULL);
        uint64_t cut = mock_knob(req, "x-mock-cut-after", UINT64_MAX, MOCK_MAX_BODY_BYTES);
        const char *model = req->multipart ? mock_part_value(req, "model") :
                json_string_value(json_object_get(root, "model"));
        struct mock_reply r = {
                .fd = fd,
                .req = req,
                .anthropic = is_anthropic(req),
                .event_delay_ms = mock_knob(req, "x-mock-event-delay-ms", 0, MOCK_MAX_DELAY_MS),
                .cut_after = cut == UINT64_MAX ? -1 : (int64_t) cut,
                .root = json_is_object(root) ? root : NULL,
                .script = {
                        .n = req->n,
                        .model = model ?: MOCK_DEFAULT_MODEL,
                        .in = mock_knob(req, "x-mock-input-tokens", 11, MOCK_MAX_TOKENS),
                        .out = mock_knob(req, "x-mock-output-tokens", 7, MOCK_MAX_EVENTS),
                        .cached = mock_knob(req, "x-mock-cached-tokens", 0, MOCK_MAX_TOKENS),
                        .cache_write = mock_knob(req, "x-mock-cache-write-tokens", 0, MOCK_MAX_TOKENS),
                        .reasoning = mock_knob(req, "x-mock-reasoning-tokens", 0, MOCK_MAX_TOKENS),
                        .created = (int64_t) time(NULL),
                },
        };

        const char *reset = mock_header(req, "x-mock-reset");
        r.reset = reset && !streq(reset, "0");
        r.bad_usage = bad_usage_value(mock_header(req, "x-mock-bad-usage"));
        r.long_line = mock_knob(req, "x-mock-long-line-bytes", 0, MOCK_MAX_BODY_BYTES);

        uint64_t delay = mock_knob(req, "x-mock-delay-ms", 0, MOCK_MAX_DELAY_MS);
        /* /mock/scripts/NAME, and a failure onset by x-mock-script: NAME (script.c). */
        uint64_t scripted = 0;
        int sk = mock_script_hook(&r, &delay, &scripted);
        if (sk != MOCK_SCRIPT_PASS)
                return sk;
        if (delay > 0)
                mock_sleep_ms(delay);
        /* A reset with no cut point: before any byte of the response. */
        if (r.reset && r.cut_after < 0)
                return reset_connection(fd);

        if (!authorized(req))
                return send_error(&r, 401, NULL);
        const char *replay = mock_header(req, "x-mock-replay");
        if (replay)
                return mock_replay(fd, req, replay);

        uint64_t status = scripted ?: mock_knob(req, "x-mock-status", 0, 999);
        if (status >= 400 && status <= 599) {
                /* 429 always says when to come back; other statuses only
                 * when the test asks. */
                r.retry_after = mock_header(req, "x-mock-retry-after");
                if (status == 429 && !r.retry_after)
                        r.retry_after = "1";
                if (r.retry_after && strpbrk(r.retry_after, "\r\n"))
                        r.retry_after = NULL;
                return send_error(&r, (int) status, NULL);
        }

        bool post = streq(req->method, "POST");
        enum { NONE, CHAT_EP, RESPONSES_EP, EMBEDDINGS_EP, MESSAGES_EP, COUNT_EP, MODELS_EP, COMPLETIONS_EP } ep = NONE;
        if (post && streq(req->path, "/v1/chat/completions"))
                ep = CHAT_EP;
        else if (post && streq(req->path, "/v1/completions"))
                ep = COMPLETIONS_EP;
        else if (post && streq(req->path, "/v1/responses"))
                ep = RESPONSES_EP;
        else if (post && streq(req->path, "/v1/embeddings"))
                ep = EMBEDDINGS_EP;
        else if (post && streq(req->path, "/v1/messages"))
                ep = MESSAGES_EP;
        else if (post && streq(req->path, "/v1/messages/count_tokens"))
                ep = COUNT_EP;
        else if (streq(req->method, "GET") && streq(req->path, "/v1/models"))
                ep = MODELS_EP;

        if (ep == NONE) {
                int k = mock_route(&r);
                if (k != -ENOENT)
                        return k;
                _cleanup_free_ char *msg = NULL;
                if (r.anthropic)
                        msg = strdup("Not Found");
                else if (asprintf(&msg, "Invalid URL (%s %s)", req->method, req->path) < 0)
                        msg = NULL;
                if (!msg)
                        return -ENOMEM;
                return send_error(&r, 404, msg);
        }
        if (ep == MODELS_EP)
                return mock_send_json(&r, 200, mock_models_json(r.anthropic));

        if (req->body_len > MOCK_MAX_JSON_BODY)
                return mock_fail(&r, 413, NULL, "The mock parses JSON bodies of up to 64 MiB; this one has %zu bytes",
                                 req->body_len);
        if (!json_is_object(root))
                return send_error(&r, 400, r.anthropic ?
                                  "Invalid JSON in request body" :
                                  "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)");

        if (model && !mock_model_known(model))
                return send_error(&r, 404, NULL);

        bool stream = json_is_true(json_object_get(root, "stream"));
        r.script.include_usage = json_is_true(json_object_get(json_object_get(root, "stream_options"), "include_usage"));

        switch (ep) {
        case CHAT_EP:
        case MESSAGES_EP: {
                int k = mock_tool_plan(&r.script, root, r.anthropic, mock_header(req, "x-mock-tool-arguments"));
                if (k >= 0)
                        k = mock_answer(&r, ep == CHAT_EP ? MOCK_CHAT : MOCK_MESSAGES, stream);
                free(r.script.tool_result);
                return k;
        }
        case RESPONSES_EP:
                return mock_answer(&r, MOCK_RESPONSES, stream);
        case COMPLETIONS_EP:
                return mock_answer(&r, MOCK_COMPLETIONS, stream);
        case EMBEDDINGS_EP:
                r.script.base64 = streq_ptr(json_string_value(json_object_get(root, "encoding_format")), "base64");
                return mock_send_json(&r, 200, mock_embeddings_json(&r.script));
        case COUNT_EP:
                return mock_send_json(&r, 200, json_pack("{sI}", "input_tokens", (json_int_t) r.script.in));
        default:
                return -EINVAL;
        }
}
