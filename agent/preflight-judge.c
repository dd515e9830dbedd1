/* SPDX-License-Identifier: MIT */
/* Preflight's judgements (what each answer says about the route), the
 * request body of the admin call, and the evidence file. No I/O but the
 * evidence file; no logging. */

#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <time.h>

#include "preflight.h"

static const char *const check_names[_KB_CHECK_MAX] = {
        [KB_CHECK_CREDENTIALS] = "credentials",
        [KB_CHECK_MODEL_LISTED] = "model_listed",
        [KB_CHECK_NON_STREAMING] = "non_streaming",
        [KB_CHECK_STREAMING] = "streaming",
        [KB_CHECK_USAGE] = "usage",
        [KB_CHECK_BOGUS_MODEL] = "bogus_model",
        [KB_CHECK_LATENCY] = "latency",
};

static const char *const check_titles[_KB_CHECK_MAX] = {
        [KB_CHECK_CREDENTIALS] = "credentials accepted",
        [KB_CHECK_MODEL_LISTED] = "model listed",
        [KB_CHECK_NON_STREAMING] = "non-streaming call",
        [KB_CHECK_STREAMING] = "streaming call",
        [KB_CHECK_USAGE] = "usage reported",
        [KB_CHECK_BOGUS_MODEL] = "unknown model refused",
        [KB_CHECK_LATENCY] = "latency",
};

const char *kb_preflight_check_to_string(kb_preflight_check c) {
        return (unsigned) c < _KB_CHECK_MAX ? check_names[c] : NULL;
}

const char *kb_preflight_check_title(kb_preflight_check c) {
        return (unsigned) c < _KB_CHECK_MAX ? check_titles[c] : NULL;
}

/* ---- the admin call's body ---- */

static bool model_name_ok(const char *s, size_t n) {
        if (n == 0 || n > KB_PREFLIGHT_MODEL_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if ((unsigned char) s[i] < 0x20 || s[i] == 0x7f)
                        return false;
        return true;
}

int kb_preflight_parse_body(const char *body, size_t len, char **ret_model, const char **ret_why) {
        const char *why = NULL;
        json_t *j = NULL;
        char *model = NULL;

        if (len > KB_PREFLIGHT_MAX_REQUEST_BODY) {
                why = "the request body is too long";
                goto fail;
        }
        size_t skip = 0;
        while (skip < len && strchr(" \t\r\n", body[skip]))
                skip++;
        if (skip == len) {
                *ret_model = NULL;
                return 0;
        }
        j = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_object(j)) {
                why = "the body must be a JSON object: {\"model\":\"UPSTREAM_MODEL\"}";
                goto fail;
        }
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v) {
                if (!streq(k, "model")) {
                        why = "the body takes one member: \"model\"";
                        goto fail;
                }
                if (json_is_null(v))
                        continue;
                if (!json_is_string(v) || !model_name_ok(json_string_value(v), json_string_length(v)) ||
                    strlen(json_string_value(v)) != json_string_length(v)) {
                        why = "\"model\" must be a non-empty string of at most 256 printable bytes";
                        goto fail;
                }
                model = strdup(json_string_value(v));
                if (!model) {
                        json_decref(j);
                        return -ENOMEM;
                }
        }
        json_decref(j);
        *ret_model = model;
        return 0;
fail:
        /* a "model" may come before the member that is wrong */
        free(model);
        json_decref(j);
        if (ret_why)
                *ret_why = why;
        return -EINVAL;
}

const char *kb_preflight_default_model(const struct kb_config *c, const struct kb_route *route) {
        for (int fb = 0; fb < 2; fb++)
                for (size_t m = 0; m < c->n_models; m++) {
                        const struct kb_model *model = &c->models[m];
                        const struct kb_target *ts = fb ? model->fallbacks : model->targets;
                        size_t n = fb ? model->n_fallbacks : model->n_targets;
                        for (size_t i = 0; i < n; i++)
                                if (ts[i].route == route && ts[i].upstream_model)
                                        return ts[i].upstream_model;
                }
        return NULL;
}

/* ---- judgements ---- */

/* Length of the valid UTF-8 sequence at s (1..4), 0 when it is not one. */
static size_t utf8_len(const unsigned char *s) {
        unsigned char c = s[0];
        size_t n;
        unsigned char lo = 0x80, hi = 0xBF;

        if (c < 0x80)
                return 1;
        if (c >= 0xC2 && c <= 0xDF)
                n = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
                n = 3;
                if (c == 0xE0)
                        lo = 0xA0;      /* overlong */
                else if (c == 0xED)
                        hi = 0x9F;      /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
                n = 4;
                if (c == 0xF0)
                        lo = 0x90;
                else if (c == 0xF4)
                        hi = 0x8F;      /* past U+10FFFF */
        } else
                return 0;
        if (s[1] < lo || s[1] > hi)
                return 0;
        for (size_t i = 2; i < n; i++)
                if (s[i] < 0x80 || s[i] > 0xBF)
                        return 0;
        return n;
}

void kb_preflight_text_clean(char *s) {
        for (unsigned char *p = (unsigned char *) s; p && *p;) {
                size_t n = utf8_len(p);
                if (n == 1 && (*p < 0x20 || *p == 0x7f))
                        *p = '?';
                if (n == 0) {
                        *p++ = '?';
                        continue;
                }
                p += n;
        }
}

static int detail(char **ret, const char *fmt, ...) _printf_(2, 3);
static int detail(char **ret, const char *fmt, ...) {
        va_list ap;
        char *s;

        va_start(ap, fmt);
        int r = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;
        kb_preflight_text_clean(s);
        *ret = s;
        return 0;
}

#define PROVIDER_TEXT_MAX 160

/* error.message of either family's error shape, or "". */
static const char *error_message(const json_t *j) {
        const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        return m ?: "";
}

static json_t *load(const char *body, size_t len) {
        return body && len > 0 ? json_loadb(body, len, 0, NULL) : NULL;
}

int kb_preflight_judge_listed(const char *body, size_t len, long status, const char *model, char **ret_detail) {
        _cleanup_(json_decrefp) json_t *j = NULL;
        int r;

        if (status < 200 || status > 299) {
                j = load(body, len);
                r = detail(ret_detail, "no model list: HTTP %ld%s%.*s", status, *error_message(j) ? ": " : "",
                           PROVIDER_TEXT_MAX, error_message(j));
                return r < 0 ? r : false;
        }
        j = load(body, len);
        json_t *data = json_object_get(j, "data");
        if (!json_is_array(data)) {
                r = detail(ret_detail, "HTTP %ld but not a model list (no data[] array)", status);
                return r < 0 ? r : false;
        }
        size_t i, n = json_array_size(data);
        json_t *e;
        json_array_foreach(data, i, e)
                if (streq_ptr(json_string_value(json_object_get(e, "id")), model)) {
                        r = detail(ret_detail, "%.*s listed (%zu models)", (int) KB_PREFLIGHT_MODEL_MAX, model, n);
                        return r < 0 ? r : true;
                }
        /* Name a few so a typo shows. */
        char some[256] = "";
        size_t used = 0;
        json_array_foreach(data, i, e) {
                const char *id = json_string_value(json_object_get(e, "id"));
                if (!id || i >= 5)
                        continue;
                int w = snprintf(some + used, sizeof(some) - used, "%s%.40s", used ? ", " : "", id);
                if (w < 0 || (size_t) w >= sizeof(some) - used)
                        break;
                used += (size_t) w;
        }
        r = detail(ret_detail, "%.*s is not among the %zu models listed%s%s%s%s", (int) KB_PREFLIGHT_MODEL_MAX, model,
                   n, used ? " (" : "", some, n > 5 ? ", …" : "", used ? ")" : "");
        return r < 0 ? r : false;
}

int kb_preflight_judge_completion(kb_family f, const char *body, size_t len, long status, char **ret_detail) {
        _cleanup_(json_decrefp) json_t *j = load(body, len);
        int r;

        if (status < 200 || status > 299) {
                r = detail(ret_detail, "HTTP %ld%s%.*s", status, *error_message(j) ? ": " : "", PROVIDER_TEXT_MAX,
                           error_message(j));
                return r < 0 ? r : false;
        }
        if (!json_is_object(j)) {
                r = detail(ret_detail, "HTTP %ld but the body is not a JSON object", status);
                return r < 0 ? r : false;
        }
        if (f == KB_FAMILY_ANTHROPIC) {
                json_t *content = json_object_get(j, "content");
                if (!streq_ptr(json_string_value(json_object_get(j, "type")), "message") || !json_is_array(content)) {
                        r = detail(ret_detail, "HTTP %ld but not a message (type \"message\" with content[])", status);
                        return r < 0 ? r : false;
                }
        } else {
                json_t *choices = json_object_get(j, "choices");
                if (!json_is_array(choices) || json_array_size(choices) == 0 ||
                    !json_is_object(json_object_get(json_array_get(choices, 0), "message"))) {
                        r = detail(ret_detail, "HTTP %ld but not a chat completion (no choices[].message)", status);
                        return r < 0 ? r : false;
                }
        }
        const char *m = json_string_value(json_object_get(j, "model"));
        r = detail(ret_detail, "HTTP %ld, well-formed%s%.*s", status, m ? ", model " : "", (int) KB_PREFLIGHT_MODEL_MAX,
                   strempty(m));
        return r < 0 ? r : true;
}

int kb_preflight_judge_bogus(kb_family f, const char *body, size_t len, long status, char **ret_detail) {
        _cleanup_(json_decrefp) json_t *j = load(body, len);
        json_t *err = json_object_get(j, "error");
        int r;

        if (status >= 200 && status <= 299) {
                r = detail(ret_detail, "HTTP %ld: a model that does not exist was accepted", status);
                return r < 0 ? r : false;
        }
        if (f == KB_FAMILY_ANTHROPIC) {
                const char *type = json_string_value(json_object_get(err, "type"));
                bool ok = status == 404 && streq_ptr(json_string_value(json_object_get(j, "type")), "error") &&
                          streq_ptr(type, "not_found_error");
                r = detail(ret_detail, "HTTP %ld %s%s", status, type ?: "without an error object",
                           ok ? "" : " (expected 404 not_found_error)");
                return r < 0 ? r : ok;
        }
        const char *code = json_string_value(json_object_get(err, "code"));
        bool ok = (status == 404 || status == 400) && json_is_object(err);
        if (ok && code)
                r = detail(ret_detail, "HTTP %ld %.*s", status, PROVIDER_TEXT_MAX, code);
        else if (ok)
                r = detail(ret_detail, "HTTP %ld error object (no code)", status);
        else
                r = detail(ret_detail, "HTTP %ld %s (expected 404 model_not_found, or a 400/404 error object)", status,
                           json_is_object(err) ? "error" : "without an error object");
        return r < 0 ? r : ok;
}

#define STR_(x) #x
#define STR(x) STR_(x)

/* One call's usage problem into why (NULL when plausible). */
static const char *usage_problem(const struct kb_usage *u) {
        if (!u->seen)
                return "no usage reported";
        if (u->input_tokens == 0)
                return "input tokens 0";
        if (u->output_tokens == 0)
                return "output tokens 0";
        if (u->output_tokens > KB_PREFLIGHT_OUTPUT_BOUND)
                return "output tokens over " STR(KB_PREFLIGHT_OUTPUT_BOUND) " for max_tokens " STR(KB_PREFLIGHT_MAX_TOKENS);
        return NULL;
}

int kb_preflight_judge_usage(kb_family f, const struct kb_usage *plain, const char *plain_body, size_t plain_len,
                             const struct kb_usage *stream, char **ret_detail) {
        const char *pw = plain ? usage_problem(plain) : "the call failed";
        const char *sw = stream ? usage_problem(stream) : "the call failed";
        char total[96] = "";
        bool total_ok = true;
        int r;

        if (plain && !pw && f == KB_FAMILY_OPENAI) {
                _cleanup_(json_decrefp) json_t *j = load(plain_body, plain_len);
                json_t *t = json_object_get(json_object_get(j, "usage"), "total_tokens");
                if (json_is_integer(t)) {
                        json_int_t v = json_integer_value(t);
                        total_ok = v >= 0 && (uint64_t) v == plain->input_tokens + plain->output_tokens;
                        snprintf(total, sizeof(total), ", total %" JSON_INTEGER_FORMAT "%s", v,
                                 total_ok ? "" : " != input + output");
                }
        }
        if (!pw && !sw && total_ok)
                r = detail(ret_detail, "non-streaming %" PRIu64 " in / %" PRIu64 " out%s; streaming %" PRIu64
                           " in / %" PRIu64 " out", plain->input_tokens, plain->output_tokens, total,
                           stream->input_tokens, stream->output_tokens);
        else if (pw || sw)
                r = detail(ret_detail, "non-streaming: %s; streaming: %s", pw ?: "ok", sw ?: "ok");
        else
                r = detail(ret_detail, "non-streaming %" PRIu64 " in / %" PRIu64 " out%s", plain->input_tokens,
                           plain->output_tokens, total);
        if (r < 0)
                return r;
        return !pw && !sw && total_ok;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

void kb_preflight_latency_stats(const uint64_t *usec, size_t n, uint64_t *ret_p50, uint64_t *ret_max) {
        uint64_t s[16];

        if (n == 0 || !usec) {
                *ret_p50 = *ret_max = 0;
                return;
        }
        n = MIN(n, ELEMENTSOF(s));
        memcpy(s, usec, n * sizeof(*s));
        qsort(s, n, sizeof(*s), cmp_u64);
        *ret_p50 = s[(n - 1) / 2];
        *ret_max = s[n - 1];
}

/* ---- evidence ---- */

int kb_preflight_save_evidence(const char *state_dir, const char *route, uint64_t realtime_usec, const json_t *doc,
                               char **ret_path) {
        _cleanup_free_ char *dir = NULL, *tmp = NULL, *text = NULL;
        char stamp[32];
        struct tm tm;
        time_t t = (time_t) (realtime_usec / USEC_PER_SEC);

        if (!state_dir || !route || !*route || strchr(route, '/') || route[0] == '.' || !doc)
                return -EINVAL;
        if (!gmtime_r(&t, &tm) || strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm) == 0)
                return -EOVERFLOW;
        if (asprintf(&dir, "%s/evidence", state_dir) < 0) {
                dir = NULL;
                return -ENOMEM;
        }
        if (mkdir(state_dir, 0700) < 0 && errno != EEXIST)
                return -errno;
        if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                return -errno;
        _cleanup_free_ char *dumped = json_dumps(doc, JSON_INDENT(2));
        if (!dumped || asprintf(&text, "%s\n", dumped) < 0) {
                text = NULL;
                return -ENOMEM;
        }
        if (asprintf(&tmp, "%s/.%s-%s.XXXXXX", dir, route, stamp) < 0) {
                tmp = NULL;
                return -ENOMEM;
        }
        _cleanup_close_ int fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
                return -errno;
        size_t len = strlen(text), off = 0;
        int r = 0;
        /* mkostemp makes it 0600 already; say so rather than rely on it. */
        if (fchmod(fd, 0600) < 0)
                r = -errno;
        while (r == 0 && off < len) {
                ssize_t w = write(fd, text + off, len - off);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0)
                        r = -errno;
                else
                        off += (size_t) w;
        }
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        /* link() never replaces a file: two runs in one second keep both. */
        for (unsigned n = 1; r == 0 && n <= 100; n++) {
                _cleanup_free_ char *path = NULL;
                int k = n == 1 ? asprintf(&path, "%s/%s-%s.json", dir, route, stamp)
                               : asprintf(&path, "%s/%s-%s-%u.json", dir, route, stamp, n);
                if (k < 0) {
                        path = NULL;
                        r = -ENOMEM;
                        break;
                }
                if (link(tmp, path) == 0) {
                        (void) unlink(tmp);
                        _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                        if (dfd >= 0)
                                (void) fsync(dfd);
                        *ret_path = TAKE_PTR(path);
                        return 0;
                }
                if (errno != EEXIST)
                        r = -errno;
                else if (n == 100)
                        r = -EEXIST;
        }
        (void) unlink(tmp);
        return r;
}
