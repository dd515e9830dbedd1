/* SPDX-License-Identifier: MIT */
#include "usage.h"
#include "usage-internal.h"

#include <assert.h>
#include <jansson.h>
#include <math.h>

/* A response body, or one SSE event, larger than this is passed on but not
 * parsed: nothing a provider sends about usage needs that much, and the
 * caller controls neither the provider nor what the app asked for. */
#define KB_USAGE_LIMIT_DEFAULT ((size_t) 16 * 1024 * 1024)

/* Buffers that grew past this for one big event are given back once the
 * event is over, so an idle stream holds next to nothing. */
#define KB_USAGE_KEEP_CAP ((size_t) 16 * 1024)

/* Longer "model"/"id" strings are not recorded: they end up in journal
 * fields and no provider sends anything close. */
#define KB_USAGE_MAX_STRING 256

struct kb_usage_tap {
        kb_family family;
        kb_endpoint endpoint;
        bool stream;
        bool hide;              /* hold each event until complete (hide_usage or a gate) */
        bool hide_usage;        /* drop the usage-only chunk we asked for */
        bool stopped;           /* the gate said stop: nothing more is emitted */
        kb_usage_gate_t gate;
        void *gate_userdata;
        bool finished;
        bool overflow;          /* something went past the limit: usage may be incomplete */
        size_t limit;
        struct kb_usage usage;

        /* JSON body */
        struct kb_buf body;
        bool body_skip;

        /* SSE framing */
        struct kb_buf line;     /* the current line while it spans feeds */
        struct kb_buf data;     /* "data:" values of the current event, each + '\n' */
        char event[64];         /* "event:" value; "" when absent or too long */
        size_t event_bytes;     /* raw bytes of the current event so far */
        bool line_partial;      /* bytes of the current line were seen */
        bool after_cr;          /* last terminator was CR: a following LF belongs to it */
        bool event_oversize;    /* the current event passed the limit: not parsed */

        /* hiding taps: raw bytes of the current event, held until it is complete */
        struct kb_buf raw;
        bool raw_passthrough;   /* the current event was too big to hold: its bytes flow */
        /* The event just ended with CR: a following LF is the rest of its
         * terminator and goes (or is dropped) with it, not with the next. */
        enum { LF_NONE, LF_EMIT, LF_DROP } lf_after_event;
};

static const char *const endpoint_table[_KB_ENDPOINT_MAX] = {
        [KB_ENDPOINT_CHAT] = "chat",
        [KB_ENDPOINT_RESPONSES] = "responses",
        [KB_ENDPOINT_EMBEDDINGS] = "embeddings",
        [KB_ENDPOINT_MESSAGES] = "messages",
        [KB_ENDPOINT_COUNT_TOKENS] = "count_tokens",
        [KB_ENDPOINT_MODELS] = "models",
        [KB_ENDPOINT_WHOAMI] = "whoami",
        [KB_ENDPOINT_COMPLETIONS] = "completions",
        [KB_ENDPOINT_MODERATIONS] = "moderations",
        [KB_ENDPOINT_IMAGES] = "images",
        [KB_ENDPOINT_AUDIO_SPEECH] = "audio_speech",
        [KB_ENDPOINT_AUDIO_TRANSCRIPTIONS] = "audio_transcriptions",
        [KB_ENDPOINT_AUDIO_TRANSLATIONS] = "audio_translations",
        [KB_ENDPOINT_VIDEOS] = "videos",
        [KB_ENDPOINT_FILES] = "files",
        [KB_ENDPOINT_BATCHES] = "batches",
        [KB_ENDPOINT_RESPONSES_GET] = "responses_get",
        [KB_ENDPOINT_MESSAGE_BATCHES] = "message_batches",
};

const char *kb_endpoint_to_string(kb_endpoint e) {
        if ((unsigned) e >= _KB_ENDPOINT_MAX)
                return NULL;
        return endpoint_table[e];
}

/* jansson ships json_decrefp() for exactly this. */
#define _cleanup_json_ _cleanup_(json_decrefp)

int kb_usage_tap_new(kb_family family, kb_endpoint endpoint, bool stream, bool hide_usage_chunk,
                     struct kb_usage_tap **ret) {
        if (!ret || (unsigned) family >= _KB_FAMILY_MAX || (unsigned) endpoint >= _KB_ENDPOINT_MAX)
                return -EINVAL;

        struct kb_usage_tap *t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->family = family;
        t->endpoint = endpoint;
        t->stream = stream;
        /* Holding events only makes sense where there are events. */
        t->hide_usage = stream && hide_usage_chunk;
        t->hide = t->hide_usage;
        t->limit = KB_USAGE_LIMIT_DEFAULT;
        *ret = t;
        return 0;
}

void kb_usage_tap_free(struct kb_usage_tap *t) {
        if (!t)
                return;
        free(t->usage.upstream_model);
        free(t->usage.upstream_request_id);
        free(t->usage.object_status);
        free(t->usage.object_files[0]);
        free(t->usage.object_files[1]);
        kb_buf_free(&t->body);
        kb_buf_free(&t->line);
        kb_buf_free(&t->data);
        kb_buf_free(&t->raw);
        free(t);
}

void kb_usage_tap_set_gate(struct kb_usage_tap *t, kb_usage_gate_t gate, void *userdata) {
        t->gate = gate;
        t->gate_userdata = userdata;
        if (t->stream && gate)
                t->hide = true;
}

void kb_usage_tap_set_raw(struct kb_usage_tap *t) {
        if (t && !t->stream)
                t->body_skip = true;
}

bool kb_usage_tap_stopped(const struct kb_usage_tap *t) {
        return t->stopped;
}

void kb_usage_tap_set_limit(struct kb_usage_tap *t, size_t limit) {
        if (t && limit > 0)
                t->limit = limit;
}

bool kb_usage_tap_overflowed(const struct kb_usage_tap *t) {
        return t && t->overflow;
}

size_t kb_usage_tap_memory(const struct kb_usage_tap *t) {
        if (!t)
                return 0;
        return sizeof(*t) + t->body.cap + t->line.cap + t->data.cap + t->raw.cap;
}

const struct kb_usage *kb_usage_tap_get(const struct kb_usage_tap *t) {
        return t ? &t->usage : NULL;
}

/* Clear a buffer between events, giving the memory back if one event made
 * it big. */
static void buf_reset(struct kb_buf *b) {
        if (b->cap > KB_USAGE_KEEP_CAP)
                kb_buf_free(b);
        else
                kb_buf_clear(b);
}

/* ---- reading usage out of parsed JSON ---- */

/* Token counts are taken only when they are JSON integers in [0, INT64_MAX];
 * negative, fractional or non-numeric values are ignored and the previous
 * value (0 if none) stays. Integers beyond INT64_MAX never get here: jansson
 * rejects the whole document, which then counts as malformed. */
static bool get_count(json_t *obj, const char *key, uint64_t *ret) {
        json_t *v = json_object_get(obj, key);
        if (!json_is_integer(v))
                return false;
        json_int_t n = json_integer_value(v);
        if (n < 0)
                return false;
        *ret = (uint64_t) n;
        return true;
}

static void get_nested_count(json_t *obj, const char *outer, const char *key, uint64_t *ret) {
        json_t *o = json_object_get(obj, outer);
        if (json_is_object(o))
                (void) get_count(o, key, ret);
}

/* First seen wins: in a stream every chunk repeats model and id. */
static int take_string(json_t *obj, const char *key, char **field) {
        if (*field || !json_is_object(obj))
                return 0;
        json_t *v = json_object_get(obj, key);
        if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > KB_USAGE_MAX_STRING)
                return 0;
        /* json_string_value stops at an embedded NUL, which is what we want. */
        char *s = strdup(json_string_value(v));
        if (!s)
                return -ENOMEM;
        *field = s;
        return 0;
}

static int take_model_id(struct kb_usage *u, json_t *obj) {
        int r = take_string(obj, "model", &u->upstream_model);
        if (r < 0)
                return r;
        return take_string(obj, "id", &u->upstream_request_id);
}

/* Which counts each shape reports, where (outer: the *_details object they
 * sit in, or NULL), and which kb_usage field they go to. One table for both
 * readers: jansson's (SSE events) and the text one (JSON answers,
 * usage-answer.c). */
#define COUNT(o, k, f) { o, k, offsetof(struct kb_usage, f) }
const struct kb_usage_count kb_usage_counts_openai_chat[] = {
        COUNT(NULL, "prompt_tokens", input_tokens),
        COUNT(NULL, "completion_tokens", output_tokens),
        COUNT("prompt_tokens_details", "cached_tokens", cached_tokens),
        COUNT("prompt_tokens_details", "cache_write_tokens", cache_write_tokens),
        COUNT("completion_tokens_details", "reasoning_tokens", reasoning_tokens),
        {},
};
const struct kb_usage_count kb_usage_counts_openai_responses[] = {
        COUNT(NULL, "input_tokens", input_tokens),
        COUNT(NULL, "output_tokens", output_tokens),
        COUNT("input_tokens_details", "cached_tokens", cached_tokens),
        COUNT("input_tokens_details", "cache_write_tokens", cache_write_tokens),
        COUNT("output_tokens_details", "reasoning_tokens", reasoning_tokens),
        {},
};
/* Fields present replace what message_start said: message_delta's
 * output_tokens is cumulative, and newer API versions repeat the input and
 * cache counts there too. */
const struct kb_usage_count kb_usage_counts_anthropic[] = {
        COUNT(NULL, "input_tokens", input_tokens),
        COUNT(NULL, "output_tokens", output_tokens),
        COUNT(NULL, "cache_read_input_tokens", cached_tokens),
        COUNT(NULL, "cache_creation_input_tokens", cache_write_tokens),
        COUNT("cache_creation", "ephemeral_1h_input_tokens", cache_write_1h_tokens),
        COUNT("output_tokens_details", "thinking_tokens", reasoning_tokens),
        {},
};
#undef COUNT

static void usage_counts(struct kb_usage *u, json_t *usage, const struct kb_usage_count *c) {
        if (!json_is_object(usage))
                return;
        u->seen = true;
        for (; c->key; c++) {
                uint64_t *field = (uint64_t *) ((char *) u + c->offset);
                if (c->outer)
                        get_nested_count(usage, c->outer, c->key, field);
                else
                        (void) get_count(usage, c->key, field);
        }
}

static void usage_openai_chat(struct kb_usage *u, json_t *usage) {
        usage_counts(u, usage, kb_usage_counts_openai_chat);
}

static void usage_openai_responses(struct kb_usage *u, json_t *usage) {
        usage_counts(u, usage, kb_usage_counts_openai_responses);
}

static void usage_anthropic(struct kb_usage *u, json_t *usage) {
        usage_counts(u, usage, kb_usage_counts_anthropic);
}

/* Transcription usage: tokens (gpt-4o-transcribe), or seconds of audio
 * (whisper: usage.type "duration"); verbose_json also says "duration". */
static void usage_audio(struct kb_usage *u, json_t *root) {
        json_t *usage = json_object_get(root, "usage");
        json_t *secs = json_object_get(usage, "seconds");
        json_t *duration = json_object_get(root, "duration");

        if (json_is_object(usage) && !streq_ptr(json_string_value(json_object_get(usage, "type")), "duration"))
                usage_openai_responses(u, usage);
        if (json_is_number(secs) && json_number_value(secs) >= 0 && json_number_value(secs) < 1e9) {
                u->audio_msec = (uint64_t) llround(json_number_value(secs) * 1000);
                u->seen = true;
        } else if (json_is_number(duration) && json_number_value(duration) >= 0 && json_number_value(duration) < 1e9) {
                u->audio_msec = (uint64_t) llround(json_number_value(duration) * 1000);
                u->seen = true;
        }
}

/* An object answer (video, batch, message batch): its status, and the usage
 * a finished one reports. */
static int usage_object(struct kb_usage *u, kb_endpoint endpoint, json_t *root) {
        const char *key = endpoint == KB_ENDPOINT_MESSAGE_BATCHES ? "processing_status" : "status";
        int r = take_string(root, key, &u->object_status);
        if (r < 0)
                return r;
        const char *status = json_string_value(json_object_get(root, key));
        /* the files a batch made are its team's too */
        if (endpoint == KB_ENDPOINT_BATCHES &&
            ((r = take_string(root, "output_file_id", &u->object_files[0])) < 0 ||
             (r = take_string(root, "error_file_id", &u->object_files[1])) < 0))
                return r;
        if (endpoint == KB_ENDPOINT_VIDEOS && streq_ptr(status, "completed")) {
                /* "seconds" is a string ("4") in the API, a number in some SDK mocks */
                json_t *v = json_object_get(root, "seconds");
                const char *t = json_string_value(v);
                double d = t ? strtod(t, NULL) : json_is_number(v) ? json_number_value(v) : 0;
                if (d > 0 && d < 1e6) {
                        u->video_seconds = (uint64_t) ceil(d);
                        u->seen = true;
                }
        }
        /* a batch ended any way (cancelled and expired ones bill what they
         * did) with its usage */
        bool ended = streq_ptr(status, "completed") || streq_ptr(status, "failed") ||
                     streq_ptr(status, "expired") || streq_ptr(status, "cancelled");
        if (endpoint == KB_ENDPOINT_BATCHES && ended && json_is_object(json_object_get(root, "usage"))) {
                usage_openai_responses(u, json_object_get(root, "usage"));
                u->batch = true;
        }
        return 0;
}

int kb_usage_from_json(struct kb_usage *u, kb_endpoint endpoint, json_t *root) {
        if (!json_is_object(root))
                return 0;

        switch (endpoint) {
        case KB_ENDPOINT_CHAT:
        case KB_ENDPOINT_EMBEDDINGS:
        case KB_ENDPOINT_COMPLETIONS:
        case KB_ENDPOINT_MODERATIONS:
                usage_openai_chat(u, json_object_get(root, "usage"));
                break;
        case KB_ENDPOINT_RESPONSES:
        case KB_ENDPOINT_AUDIO_SPEECH:
                usage_openai_responses(u, json_object_get(root, "usage"));
                break;
        case KB_ENDPOINT_IMAGES: {
                json_t *data = json_object_get(root, "data");
                usage_openai_responses(u, json_object_get(root, "usage"));
                if (json_is_array(data)) {
                        u->images = json_array_size(data);
                        u->seen = true;
                }
                break;
        }
        case KB_ENDPOINT_AUDIO_TRANSCRIPTIONS:
        case KB_ENDPOINT_AUDIO_TRANSLATIONS:
                usage_audio(u, root);
                break;
        case KB_ENDPOINT_VIDEOS:
        case KB_ENDPOINT_BATCHES:
        case KB_ENDPOINT_MESSAGE_BATCHES: {
                int r = usage_object(u, endpoint, root);
                if (r < 0)
                        return r;
                break;
        }
        case KB_ENDPOINT_MESSAGES:
                usage_anthropic(u, json_object_get(root, "usage"));
                break;
        case KB_ENDPOINT_COUNT_TOKENS:
                if (get_count(root, "input_tokens", &u->input_tokens))
                        u->seen = true;
                return 0;
        case KB_ENDPOINT_FILES:
        case KB_ENDPOINT_RESPONSES_GET:
                /* a stored response's usage was billed when it was made */
                break;
        default:
                return 0;
        }

        return take_model_id(u, root);
}

/* ---- SSE events ---- */

static bool is_ws(char c) {
        return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool is_openai_terminal_response(const char *type) {
        return streq(type, "response.completed") || streq(type, "response.incomplete") ||
               streq(type, "response.failed");
}

/* One complete event's data. *ret_hide is set when this is the usage-only
 * chat chunk a hiding tap must not forward. */
static bool ends_with(const char *s, const char *suffix) {
        size_t a = strlen(s), b = strlen(suffix);
        return a >= b && memcmp(s + a - b, suffix, b) == 0;
}

/* A chat chunk that carries generated output (text, a tool call, a refusal
 * or reasoning), as opposed to role-only, finish-only or usage-only chunks. */
static bool chunk_has_delta(json_t *choices) {
        static const char *const fields[] = { "content", "tool_calls", "refusal", "reasoning_content" };
        size_t i;
        json_t *choice;

        json_array_foreach(choices, i, choice) {
                json_t *delta = json_object_get(choice, "delta");
                for (size_t f = 0; f < ELEMENTSOF(fields); f++) {
                        json_t *v = json_object_get(delta, fields[f]);
                        if ((json_is_string(v) && json_string_length(v) > 0) ||
                            (json_is_array(v) && json_array_size(v) > 0))
                                return true;
                }
        }
        return false;
}

/* A legacy completions chunk: the text is the choice's own "text". */
static bool chunk_has_text(json_t *choices) {
        size_t i;
        json_t *choice;

        json_array_foreach(choices, i, choice) {
                json_t *v = json_object_get(choice, "text");
                if (json_is_string(v) && json_string_length(v) > 0)
                        return true;
        }
        return false;
}

static int sse_event(struct kb_usage_tap *t, const char *data, size_t len, bool *ret_hide) {
        _cleanup_json_ json_t *root = NULL;
        struct kb_usage *u = &t->usage;
        const char *type;
        size_t i = 0;

        while (i < len && is_ws(data[i]))
                i++;
        if (i == len)
                return 0;

        if (data[i] != '{') {
                size_t e = len;
                while (e > i && is_ws(data[e - 1]))
                        e--;
                if (t->family == KB_FAMILY_OPENAI && e - i == 6 && memcmp(data + i, "[DONE]", 6) == 0)
                        u->stream_done = true;
                return 0;
        }

        /* Malformed events (a provider bug, a truncated stream) carry no usage
         * we could trust; they still pass to the app untouched. Only the
         * members read below are parsed (kb_usage_pick): most of a chunk is
         * ids and timestamps, and model and id are taken once. */
        static const char *const keys[] = { "type", "usage", "choices", "response", "message", "model", "id" };
        bool have_ids = u->upstream_model && u->upstream_request_id;
        root = kb_usage_pick(data, len, keys, ELEMENTSOF(keys) - (have_ids ? 2 : 0));
        if (!json_is_object(root))
                return 0;

        /* The data's own "type" is authoritative; the "event:" line is the
         * fallback for providers that leave it out of the JSON. */
        type = json_string_value(json_object_get(root, "type"));
        if (!type)
                type = t->event;

        switch (t->endpoint) {
        case KB_ENDPOINT_CHAT:
        case KB_ENDPOINT_EMBEDDINGS:
        case KB_ENDPOINT_COMPLETIONS: {
                json_t *usage = json_object_get(root, "usage");
                json_t *choices = json_object_get(root, "choices");

                usage_openai_chat(u, usage);
                if (chunk_has_delta(choices) || chunk_has_text(choices))
                        u->streamed_deltas++;
                if (t->hide_usage && json_is_object(usage) && json_is_array(choices) &&
                    json_array_size(choices) == 0)
                        *ret_hide = true;
                return take_model_id(u, root);
        }
        case KB_ENDPOINT_RESPONSES: {
                json_t *resp = json_object_get(root, "response");

                if (type && ends_with(type, ".delta"))
                        u->streamed_deltas++;
                if (!json_is_object(resp))
                        return 0;
                usage_openai_responses(u, json_object_get(resp, "usage"));
                if (is_openai_terminal_response(type))
                        u->stream_done = true;
                return take_model_id(u, resp);
        }
        case KB_ENDPOINT_MESSAGES:
                if (streq(type, "message_start")) {
                        json_t *msg = json_object_get(root, "message");

                        if (!json_is_object(msg))
                                return 0;
                        usage_anthropic(u, json_object_get(msg, "usage"));
                        return take_model_id(u, msg);
                }
                if (streq(type, "message_delta")) {
                        usage_anthropic(u, json_object_get(root, "usage"));
                        return 0;
                }
                if (streq(type, "message_stop"))
                        u->stream_done = true;
                else if (streq(type, "content_block_delta"))
                        u->streamed_deltas++;
                /* ping, content_block_*, error: nothing to count */
                return 0;
        case KB_ENDPOINT_AUDIO_TRANSCRIPTIONS:
        case KB_ENDPOINT_AUDIO_SPEECH:
        case KB_ENDPOINT_IMAGES:
                /* transcript.text.delta/done, speech.audio.delta/done,
                 * image_generation.partial_image/completed (and image_edit.*) */
                if (streq_ptr(type, "transcript.text.delta"))
                        u->streamed_deltas++;
                if (type && (ends_with(type, ".completed") || ends_with(type, ".done"))) {
                        if (t->endpoint == KB_ENDPOINT_AUDIO_TRANSCRIPTIONS)
                                usage_audio(u, root);
                        else
                                usage_openai_responses(u, json_object_get(root, "usage"));
                        if (t->endpoint == KB_ENDPOINT_IMAGES && ends_with(type, ".completed")) {
                                u->images++;
                                u->seen = true;
                        }
                        u->stream_done = true;
                }
                return 0;
        default:
                return 0;
        }
}

static void sse_event_reset(struct kb_usage_tap *t) {
        buf_reset(&t->data);
        t->event[0] = 0;
        t->event_bytes = 0;
        t->event_oversize = false;
}

/* End of an event (blank line, or end of body). */
static int sse_dispatch(struct kb_usage_tap *t, bool *ret_hide) {
        int r = 0;

        *ret_hide = false;
        /* Per the SSE spec an event with no data is not dispatched. */
        if (!t->event_oversize && t->data.len > 0)
                /* Drop the '\n' the last data line added. */
                r = sse_event(t, t->data.data, t->data.len - 1, ret_hide);
        sse_event_reset(t);
        return r;
}

static int sse_line(struct kb_usage_tap *t, const char *p, size_t n) {
        const char *colon, *value;
        size_t name_len, value_len;
        int r;

        if (n == 0 || p[0] == ':')
                return 0;

        colon = memchr(p, ':', n);
        name_len = colon ? (size_t) (colon - p) : n;
        value = colon ? colon + 1 : p + n;
        value_len = (size_t) (p + n - value);
        if (value_len > 0 && value[0] == ' ') {
                value++;
                value_len--;
        }

        if (name_len == 4 && memcmp(p, "data", 4) == 0) {
                r = kb_buf_append(&t->data, value, value_len);
                if (r < 0)
                        return r;
                return kb_buf_append(&t->data, "\n", 1);
        }
        if (name_len == 5 && memcmp(p, "event", 5) == 0) {
                if (value_len < sizeof(t->event)) {
                        memcpy(t->event, value, value_len);
                        t->event[value_len] = 0;
                } else
                        t->event[0] = 0;
        }
        /* id, retry and unknown fields do not matter here. */
        return 0;
}

/* Hiding tap: send held bytes plus buf[from, to) on. */
static int raw_flush(struct kb_usage_tap *t, const char *buf, size_t from, size_t to, struct kb_buf *out) {
        int r;

        if (t->raw.len > 0) {
                r = kb_buf_append(out, t->raw.data, t->raw.len);
                if (r < 0)
                        return r;
        }
        buf_reset(&t->raw);
        return kb_buf_append(out, buf + from, to - from);
}

/* Account n more raw bytes to the current event; past the limit, stop
 * holding and parsing it. *seg is where unforwarded bytes of buf start, pos
 * where this event's bytes seen so far end. */
static int sse_account(struct kb_usage_tap *t, size_t n, const char *buf, size_t *seg, size_t pos,
                       struct kb_buf *out) {
        int r;

        t->event_bytes += n;
        if (t->event_oversize || t->event_bytes <= t->limit)
                return 0;

        t->event_oversize = true;
        t->overflow = true;
        kb_buf_free(&t->line);
        kb_buf_free(&t->data);
        if (t->hide && !t->raw_passthrough) {
                r = raw_flush(t, buf, *seg, pos, out);
                if (r < 0)
                        return r;
                kb_buf_free(&t->raw);
                *seg = pos;
                t->raw_passthrough = true;
        }
        return 0;
}

static int sse_feed(struct kb_usage_tap *t, const char *buf, size_t len, struct kb_buf *out) {
        size_t i = 0, seg = 0;
        int r;

        while (i < len) {
                if (t->after_cr) {
                        t->after_cr = false;
                        if (buf[i] == '\n') {
                                if (t->lf_after_event != LF_NONE) {
                                        /* nothing of the next event is held yet */
                                        assert(seg == i);
                                        if (t->lf_after_event == LF_EMIT) {
                                                r = kb_buf_append(out, "\n", 1);
                                                if (r < 0)
                                                        return r;
                                        }
                                        seg++;
                                }
                                t->lf_after_event = LF_NONE;
                                i++;
                                continue;
                        }
                }
                t->lf_after_event = LF_NONE;

                const char *p = buf + i;
                size_t n = 0;
                while (n < len - i && p[n] != '\n' && p[n] != '\r')
                        n++;

                if (n == len - i) {
                        /* The line goes on in the next feed. */
                        r = sse_account(t, n, buf, &seg, len, out);
                        if (r < 0)
                                return r;
                        if (!t->event_oversize) {
                                r = kb_buf_append(&t->line, p, n);
                                if (r < 0)
                                        return r;
                        }
                        if (n > 0)
                                t->line_partial = true;
                        break;
                }

                bool blank = n == 0 && !t->line_partial;
                size_t end = i + n + 1;

                t->after_cr = p[n] == '\r';
                r = sse_account(t, n + 1, buf, &seg, end, out);
                if (r < 0)
                        return r;

                if (!t->event_oversize) {
                        if (t->line.len > 0) {
                                r = kb_buf_append(&t->line, p, n);
                                if (r < 0)
                                        return r;
                                r = sse_line(t, t->line.data, t->line.len);
                        } else
                                r = sse_line(t, p, n);
                        if (r < 0)
                                return r;
                }
                buf_reset(&t->line);
                t->line_partial = false;
                i = end;

                if (!blank)
                        continue;

                bool hide = false;
                bool passthrough = t->raw_passthrough;

                r = sse_dispatch(t, &hide);
                if (r < 0)
                        return r;
                if (!t->hide)
                        continue;

                t->raw_passthrough = false;
                hide = hide && !passthrough;
                if (!hide && t->gate && t->gate(t->gate_userdata, &t->usage) > 0) {
                        /* This event would cross a limit: it and all after it stay here. */
                        t->stopped = true;
                        buf_reset(&t->raw);
                        return 0;
                }
                if (hide)
                        buf_reset(&t->raw);
                else {
                        r = raw_flush(t, buf, seg, end, out);
                        if (r < 0)
                                return r;
                }
                seg = end;
                if (t->after_cr)
                        t->lf_after_event = hide ? LF_DROP : LF_EMIT;
        }

        if (t->hide && seg < len) {
                if (t->raw_passthrough)
                        return kb_buf_append(out, buf + seg, len - seg);
                return kb_buf_append(&t->raw, buf + seg, len - seg);
        }
        return 0;
}

int kb_usage_tap_feed(struct kb_usage_tap *t, const char *buf, size_t len, struct kb_buf *out) {
        int r;

        if (!t || !out || (!buf && len > 0))
                return -EINVAL;
        if (t->finished)
                return -ESTALE;
        if (len == 0 || t->stopped)
                return 0;

        if (!t->hide) {
                /* Forward first: the app must not wait on our bookkeeping. */
                r = kb_buf_append(out, buf, len);
                if (r < 0)
                        return r;
        }

        if (t->stream)
                return sse_feed(t, buf, len, out);

        if (t->body_skip)
                return 0;
        if (len > t->limit - t->body.len) {
                t->body_skip = true;
                t->overflow = true;
                kb_buf_free(&t->body);
                return 0;
        }
        return kb_buf_append(&t->body, buf, len);
}

int kb_usage_tap_finish(struct kb_usage_tap *t, struct kb_buf *out) {
        int r;

        if (!t || !out)
                return -EINVAL;
        if (t->finished)
                return 0;
        t->finished = true;
        if (t->stopped) {
                kb_buf_free(&t->raw);
                kb_buf_free(&t->line);
                kb_buf_free(&t->data);
                return 0;
        }

        if (!t->stream) {
                r = 0;
                if (!t->body_skip && t->body.len > 0)
                        r = kb_usage_answer(&t->usage, t->endpoint, t->body.data, t->body.len);
                kb_buf_free(&t->body);
                return r;
        }

        /* A body that ends inside an event: the spec has clients drop it, but
         * the provider did send (and bills) what it holds, so it is counted
         * when it parses. Its bytes go to the app either way. */
        bool hide = false;
        r = 0;
        if (!t->event_oversize && t->line.len > 0)
                r = sse_line(t, t->line.data, t->line.len);
        if (r >= 0)
                r = sse_dispatch(t, &hide);
        kb_buf_free(&t->line);
        kb_buf_free(&t->data);
        t->line_partial = false;

        if (t->hide && t->raw.len > 0) {
                int k = kb_buf_append(out, t->raw.data, t->raw.len);
                if (k < 0 && r >= 0)
                        r = k;
        }
        kb_buf_free(&t->raw);
        return r < 0 ? r : 0;
}

const struct kb_price *kb_price_find(const struct kb_route *route, const char *upstream_model,
                                     const char *reported_model) {
        if (!route)
                return NULL;
        for (size_t pass = 0; pass < 2; pass++) {
                const char *m = pass == 0 ? upstream_model : reported_model;
                if (!m)
                        continue;
                for (size_t i = 0; i < route->n_prices; i++)
                        if (streq(route->prices[i].model, m))
                                return &route->prices[i];
        }
        return NULL;
}

/* a * b without overflow surprises: token counts and prices are bounded by
 * what jansson and the config parser accept, so 128-bit is plenty. */
typedef unsigned __int128 u128;

static uint64_t add_sat(uint64_t a, uint64_t b);

int64_t kb_usage_cost_microusd(const struct kb_usage *u, kb_family family, const struct kb_price *p) {
        if (!p)
                return 0;

        uint64_t input_price = p->input >= 0 ? (uint64_t) p->input : 0;
        uint64_t output_price = p->output >= 0 ? (uint64_t) p->output : 0;
        if (u->batch && p->batch_input >= 0)
                input_price = (uint64_t) p->batch_input;
        if (u->batch && p->batch_output >= 0)
                output_price = (uint64_t) p->batch_output;
        uint64_t cached_price = p->cached_input >= 0 ? (uint64_t) p->cached_input : input_price;
        uint64_t write_price = p->cache_write >= 0 ? (uint64_t) p->cache_write : input_price;
        uint64_t write_1h_price = p->cache_write_1h >= 0 ? (uint64_t) p->cache_write_1h : write_price;

        uint64_t cached = u->cached_tokens;
        uint64_t uncached = u->input_tokens;
        /* OpenAI's prompt count includes what was read from and written to
         * the cache; Anthropic's input_tokens is the rest alone. */
        if (family == KB_FAMILY_OPENAI)
                uncached = uncached > add_sat(cached, u->cache_write_tokens) ?
                                   uncached - cached - u->cache_write_tokens : 0;
        /* Anthropic's 1-hour cache writes are a part of cache_creation, dearer */
        uint64_t write_1h = MIN(u->cache_write_1h_tokens, u->cache_write_tokens);

        u128 sum = (u128) uncached * input_price + (u128) cached * cached_price +
                   (u128) (u->cache_write_tokens - write_1h) * write_price + (u128) write_1h * write_1h_price +
                   (u128) u->output_tokens * output_price;
        /* The other units, on the same scale (micro-USD times 1M): per image,
         * per second of audio (from milliseconds) and video, per 1M characters. */
        if (p->image > 0)
                sum += (u128) u->images * (uint64_t) p->image * 1000000;
        if (p->second > 0)
                sum += (u128) u->audio_msec * (uint64_t) p->second * 1000;
        if (p->video_second > 0)
                sum += (u128) u->video_seconds * (uint64_t) p->video_second * 1000000;
        if (p->character > 0)
                sum += (u128) u->characters * (uint64_t) p->character;
        u128 cost = (sum + 500000) / 1000000;
        if (p->request > 0)
                cost += (uint64_t) p->request;
        return cost > INT64_MAX ? INT64_MAX : (int64_t) cost;
}

static uint64_t add_sat(uint64_t a, uint64_t b) {
        return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

uint64_t kb_usage_quota_tokens(const struct kb_usage *u, kb_family family) {
        uint64_t t;

        if (!u)
                return 0;
        t = add_sat(u->input_tokens, u->output_tokens);
        if (family == KB_FAMILY_ANTHROPIC)
                t = add_sat(t, add_sat(u->cached_tokens, u->cache_write_tokens));
        return t;
}
