/* SPDX-License-Identifier: MIT */
#include "usage.h"
#include "usage-internal.h"
#include "json-scan.h"

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
        bool jsonl;             /* a JSONL answer (batch results): usage summed line by line */

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

/* Clear a buffer between events, giving the memory back if one event made
 * it big. */
static void buf_reset(struct kb_buf *b) {
        if (b->cap > KB_USAGE_KEEP_CAP)
                kb_buf_free(b);
        else
                kb_buf_clear(b);
}

void kb_usage_tap_set_jsonl(struct kb_usage_tap *t) {
        if (t && !t->stream)
                t->jsonl = true;
}

static int jsonl_feed(struct kb_usage_tap *t, const char *buf, size_t len, bool end) {
        size_t start = 0;
        for (size_t i = 0; i <= len; i++) {
                bool eol = i < len && buf[i] == '\n';
                if (!eol && !(end && i == len))
                        continue;
                size_t n = i - start;
                int r = 0;
                if (t->body_skip)
                        t->body_skip = false; /* the over-long line ends here: skipped */
                else if (t->body.len > 0 || !eol) {
                        if (t->body.len + n > t->limit) {
                                t->overflow = true;
                                buf_reset(&t->body);
                        } else if ((r = kb_buf_append(&t->body, buf + start, n)) >= 0 && t->body.len > 0)
                                r = kb_usage_add_batch_result(&t->usage, t->body.data, t->body.len);
                        buf_reset(&t->body);
                } else if (n > 0)
                        r = kb_usage_add_batch_result(&t->usage, buf + start, n);
                if (r < 0)
                        return r;
                start = i + 1;
        }
        /* a line that continues in the next piece */
        if (!end && start < len) {
                if (t->body.len + (len - start) > t->limit) {
                        t->overflow = true;
                        t->body_skip = true;
                        buf_reset(&t->body);
                        return 0;
                }
                return kb_buf_append(&t->body, buf + start, len - start);
        }
        return 0;
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

/* ---- chat and completions chunks, read from their text ----
 *
 * Every chunk of a chat stream is read, and most say only "one more
 * token": the scanner finds what matters (whether a choice carries output,
 * whether the choices are empty, the usage) without building the document.
 * Anything it cannot read as jansson would — a malformed chunk, an escape
 * in a key — goes the jansson way instead (sse_event below). */

struct span {
        const char *p;
        size_t n;
};

struct chunk_spans {
        struct span choices, usage;
};

static int on_chunk_member(const char *key, size_t key_len, const char *value, size_t value_len, void *userdata) {
        struct chunk_spans *c = userdata;

        /* the last of a repeated key counts, as with jansson */
        if (kb_json_key_is(key, key_len, "choices"))
                c->choices = (struct span) { value, value_len };
        else if (kb_json_key_is(key, key_len, "usage"))
                c->usage = (struct span) { value, value_len };
        return 0;
}

/* A non-empty string or array: what chunk_has_delta() calls output. */
static bool value_has_output(const char *v, size_t n) {
        if (n > 2 && v[0] == '"')
                return true;
        if (n == 0 || v[0] != '[')
                return false;
        for (size_t i = 1; i < n; i++)
                if (!is_ws(v[i]))
                        return v[i] != ']';
        return false;
}

struct choice_scan {
        size_t n;               /* choices seen */
        bool output;            /* this choice or an earlier one */
        bool in_delta;
        struct span delta, text;
};

static int on_delta_member(const char *key, size_t key_len, const char *value, size_t value_len, void *userdata) {
        static const char *const fields[] = { "content", "tool_calls", "refusal", "reasoning_content" };
        struct choice_scan *c = userdata;

        for (size_t f = 0; f < ELEMENTSOF(fields); f++)
                if (kb_json_key_is(key, key_len, fields[f]) && value_has_output(value, value_len))
                        c->output = true;
        return 0;
}

static int on_choice_member(const char *key, size_t key_len, const char *value, size_t value_len, void *userdata) {
        struct choice_scan *c = userdata;

        if (kb_json_key_is(key, key_len, "delta"))
                c->delta = (struct span) { value, value_len };
        else if (kb_json_key_is(key, key_len, "text"))
                c->text = (struct span) { value, value_len };
        return 0;
}

static int on_choice(const char *value, size_t value_len, void *userdata) {
        struct choice_scan *c = userdata;
        int r;

        c->n++;
        /* jansson's json_object_get on a non-object: nothing there */
        if (value_len == 0 || value[0] != '{')
                return 0;
        c->delta = c->text = (struct span) {};
        r = kb_json_scan_object(value, value_len, on_choice_member, c);
        if (r < 0)
                return r;
        if (c->delta.n > 0 && c->delta.p[0] == '{') {
                r = kb_json_scan_object(c->delta.p, c->delta.n, on_delta_member, c);
                if (r < 0)
                        return r;
        }
        /* a legacy completions chunk: the choice's own "text" */
        if (c->text.n > 2 && c->text.p[0] == '"')
                c->output = true;
        return 0;
}

/* 1: read; 0: not read (the caller reads it the jansson way); -ENOMEM. */
static int chat_chunk_text(struct kb_usage_tap *t, const char *data, size_t len, bool *ret_hide) {
        struct kb_usage *u = &t->usage;
        struct chunk_spans c = {};
        struct choice_scan cs = {};
        bool choices_array = false;

        /* model and id are taken from the first chunks, the jansson way */
        if (!u->upstream_model || !u->upstream_request_id || memchr(data, 0, len))
                return 0;
        if (kb_json_scan_object(data, len, on_chunk_member, &c) < 0)
                return 0;
        if (c.choices.n > 0 && c.choices.p[0] == '[') {
                choices_array = true;
                if (kb_json_scan_array(c.choices.p, c.choices.n, on_choice, &cs) < 0)
                        return 0;
        }
        /* committed to u only when the whole usage object reads */
        if (c.usage.n > 0 && c.usage.p[0] == '{' &&
            kb_usage_read_text(u, c.usage.p, c.usage.n, kb_usage_counts_openai_chat) < 0)
                return 0;
        if (cs.output)
                u->streamed_deltas++;
        if (t->hide_usage && c.usage.n > 0 && c.usage.p[0] == '{' && choices_array && cs.n == 0)
                *ret_hide = true;
        return 1;
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

        if (t->endpoint == KB_ENDPOINT_CHAT || t->endpoint == KB_ENDPOINT_COMPLETIONS) {
                int r = chat_chunk_text(t, data + i, len - i, ret_hide);
                if (r != 0)
                        return r < 0 ? r : 0;
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

                kb_usage_read_openai_chat(u, usage);
                if (chunk_has_delta(choices) || chunk_has_text(choices))
                        u->streamed_deltas++;
                if (t->hide_usage && json_is_object(usage) && json_is_array(choices) &&
                    json_array_size(choices) == 0)
                        *ret_hide = true;
                return kb_usage_take_model_id(u, root);
        }
        case KB_ENDPOINT_RESPONSES: {
                json_t *resp = json_object_get(root, "response");

                if (type && ends_with(type, ".delta"))
                        u->streamed_deltas++;
                if (!json_is_object(resp))
                        return 0;
                kb_usage_read_openai_responses(u, json_object_get(resp, "usage"));
                if (is_openai_terminal_response(type))
                        u->stream_done = true;
                return kb_usage_take_model_id(u, resp);
        }
        case KB_ENDPOINT_MESSAGES:
                if (streq(type, "message_start")) {
                        json_t *msg = json_object_get(root, "message");

                        if (!json_is_object(msg))
                                return 0;
                        kb_usage_read_anthropic(u, json_object_get(msg, "usage"));
                        return kb_usage_take_model_id(u, msg);
                }
                if (streq(type, "message_delta")) {
                        kb_usage_read_anthropic(u, json_object_get(root, "usage"));
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
                                kb_usage_read_audio(u, root);
                        else
                                kb_usage_read_openai_responses(u, json_object_get(root, "usage"));
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
        if (t->jsonl)
                return jsonl_feed(t, buf, len, false);

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

        if (t->jsonl) {
                r = jsonl_feed(t, "", 0, true);
                kb_buf_free(&t->body);
                return r;
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
