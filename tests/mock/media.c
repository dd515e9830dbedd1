/* SPDX-License-Identifier: MIT */
/* OpenAI's moderation, image and audio endpoints: /v1/moderations,
 * /v1/images/generations and /v1/images/edits (gpt-image-1's shape with
 * usage; dall-e's without), /v1/audio/speech (the mock's deterministic
 * bytes, chunked), /v1/audio/transcriptions and /v1/audio/translations
 * (every response_format, and the transcript.text.* stream). */

#include "mock.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* A 1x1 RGBA PNG. */
#define MOCK_PNG_BASE64 "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mPwn/viPwAF5wLUMzSF0wAAAABJRU5ErkJggg=="

static const char *const categories[] = {
        "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
        "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
        "violence/graphic",
};

int mock_moderations(struct mock_call *c) {
        struct mock_reply *r = c->r;
        json_t *input = json_object_get(c->root, "input");
        const char *model = json_string_value(json_object_get(c->root, "model")) ?: "omni-moderation-latest";
        size_t n;

        if (json_is_string(input))
                n = 1;
        else if (json_is_array(input))
                n = json_array_size(input);
        else
                return mock_fail(r, 400, "input", "Missing required parameter: 'input'.");
        _cleanup_free_ char *id = mock_id("modr-mock", r->req->n);
        json_t *results = json_array();
        if (!id || !results) {
                json_decref(results);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
                json_t *cat = json_object(), *scores = json_object();
                for (size_t k = 0; cat && scores && k < ELEMENTSOF(categories); k++)
                        if (json_object_set_new(cat, categories[k], json_false()) < 0 ||
                            json_object_set_new(scores, categories[k], json_real(0.0001)) < 0)
                                break;
                if (json_array_append_new(results, json_pack("{sb so so}", "flagged", 0, "categories", cat,
                                                             "category_scores", scores)) < 0) {
                        json_decref(results);
                        return -ENOMEM;
                }
        }
        return mock_send_json(r, 200, json_pack("{ss ss so}", "id", id, "model", model, "results", results));
}

const char *mock_field(struct mock_call *c, const char *name) {
        if (c->root)
                return json_string_value(json_object_get(c->root, name));
        return mock_part_value(c->r->req, name);
}

int64_t mock_int_field(struct mock_call *c, const char *name, int64_t def) {
        if (c->root) {
                json_t *v = json_object_get(c->root, name);
                if (!v || json_is_null(v))
                        return def;
                return json_is_integer(v) ? (int64_t) json_integer_value(v) : -1;
        }
        const char *s = mock_part_value(c->r->req, name);
        if (!s)
                return def;
        char *end;
        long long v = strtoll(s, &end, 10);
        return *s && !*end ? (int64_t) v : -1;
}

int mock_images(struct mock_call *c) {
        struct mock_reply *r = c->r;
        const struct mock_request *req = r->req;
        bool edit = strstr(req->path, "/edits") != NULL;
        const char *model = mock_field(c, "model") ?: "gpt-image-1";
        const char *prompt = mock_field(c, "prompt");
        int64_t n = mock_int_field(c, "n", 1);
        bool dalle = strncmp(model, "dall-e", 6) == 0;
        const char *format = mock_field(c, "response_format") ?: dalle ? "url" : "b64_json";

        if (!prompt)
                return mock_fail(r, 400, "prompt", "Missing required parameter: 'prompt'.");
        if (n < 1 || n > 10)
                return mock_fail(r, 400, "n", "Invalid 'n': expected an integer from 1 to 10, got %" PRId64 ".", n);
        if (!streq(format, "url") && !streq(format, "b64_json"))
                return mock_fail(r, 400, "response_format",
                                 "Invalid value: '%s'. Supported values are: 'url' and 'b64_json'.", format);
        if (edit) {
                size_t images = 0;
                for (size_t i = 0; i < req->n_parts; i++)
                        if (streq(req->parts[i].name, "image") || streq(req->parts[i].name, "image[]"))
                                images++;
                if (images == 0)
                        return mock_fail(r, 400, "image", "Missing required parameter: 'image'.");
        }

        json_t *data = json_array();
        for (int64_t i = 0; data && i < n; i++) {
                json_t *item;
                if (dalle && streq(format, "url")) {
                        char url[96];
                        snprintf(url, sizeof(url), "https://mock.invalid/img/%" PRIu64 "-%" PRId64 ".png", req->n, i);
                        item = json_pack("{ss so}", "url", url, "revised_prompt", mock_json_string(prompt, strlen(prompt)));
                } else
                        item = json_pack("{ss}", "b64_json", MOCK_PNG_BASE64);
                if (json_array_append_new(data, item) < 0) {
                        json_decref(data);
                        data = NULL;
                }
        }
        if (dalle)
                return mock_send_json(r, 200, json_pack("{sI so}", "created", (json_int_t) r->script.created,
                                                        "data", data));
        const struct mock_script *s = &r->script;
        const char *quality = mock_field(c, "quality");
        return mock_send_json(r, 200, json_pack("{sI ss so ss ss ss s{sI sI sI s{sI si}}}",
                                                "created", (json_int_t) s->created,
                                                "background", "opaque",
                                                "data", data,
                                                "output_format", "png",
                                                "quality", quality && !streq(quality, "auto") ? quality : "high",
                                                "size", mock_field(c, "size") ?: "1024x1024",
                                                "usage",
                                                "total_tokens", (json_int_t) (s->in + s->out),
                                                "input_tokens", (json_int_t) s->in,
                                                "output_tokens", (json_int_t) s->out,
                                                "input_tokens_details",
                                                "text_tokens", (json_int_t) s->in, "image_tokens", 0));
}

static const struct {
        const char *format, *content_type;
} audio_types[] = {
        { "mp3", "audio/mpeg" }, { "opus", "audio/ogg" }, { "aac", "audio/aac" },
        { "flac", "audio/flac" }, { "wav", "audio/wav" }, { "pcm", "audio/pcm" },
};

int mock_speech(struct mock_call *c) {
        struct mock_reply *r = c->r;
        const char *input = mock_field(c, "input");
        const char *format = mock_field(c, "response_format") ?: "mp3";
        const char *ctype = NULL;

        if (!input)
                return mock_fail(r, 400, "input", "Missing required parameter: 'input'.");
        for (size_t i = 0; i < ELEMENTSOF(audio_types); i++)
                if (streq(format, audio_types[i].format))
                        ctype = audio_types[i].content_type;
        if (!ctype)
                return mock_fail(r, 400, "response_format", "Invalid value: '%s'. Supported values are: 'mp3', "
                                 "'opus', 'aac', 'flac', 'wav', and 'pcm'.", format);
        uint64_t total = 4 + (uint64_t) strlen(input) * 100;
        total = mock_knob(r->req, "x-mock-body-bytes", total, MOCK_MAX_BODY_BYTES);
        /* at least four chunks (for four bytes or more), at most 16 KiB each */
        size_t chunk = (size_t) MAX((uint64_t) 1, MIN((total + 3) / 4, (uint64_t) 16384));
        return mock_send_pattern(r, ctype, "MOCK", 4, total, chunk);
}

/* x-mock-audio-seconds (rounded to 0.1), else the file's bytes / 16000;
 * in tenths of a second, at least 1, at most a day. */
static uint64_t audio_tenths(const struct mock_request *req, size_t file_bytes) {
        const char *h = mock_header(req, "x-mock-audio-seconds");
        uint64_t t = (file_bytes + 800) / 1600;
        if (h) {
                char *end;
                double v = strtod(h, &end);
                if (end != h && !*end && isfinite(v) && v >= 0)
                        t = v > 86400 ? 864000 : (uint64_t) (v * 10 + 0.5);
        }
        return MAX(MIN(t, (uint64_t) 864000), (uint64_t) 1);
}

static void timestamp(uint64_t tenths, char sep, char out[static 32]) {
        uint64_t ms = tenths * 100;
        snprintf(out, 32, "%02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 "%c%03" PRIu64, ms / 3600000, ms / 60000 % 60,
                 ms / 1000 % 60, sep, ms % 1000);
}

static json_t *tokens_usage(const struct mock_script *s) {
        return json_pack("{ss sI s{si sI} sI sI}", "type", "tokens", "input_tokens", (json_int_t) s->in,
                         "input_token_details", "text_tokens", 0, "audio_tokens", (json_int_t) s->in,
                         "output_tokens", (json_int_t) s->out, "total_tokens", (json_int_t) (s->in + s->out));
}

static json_t *duration_usage(uint64_t tenths) {
        return json_pack("{ss sI}", "type", "duration", "seconds", (json_int_t) ((tenths + 9) / 10));
}

static int stream_transcript(struct mock_reply *r, const char *text) {
        const struct mock_script *sc = &r->script;
        struct mock_sse s = { .r = r };
        int k = mock_sse_begin(&s);
        for (uint64_t i = 0; k == 0 && i < sc->out; i++) {
                char delta[32];
                snprintf(delta, sizeof(delta), "tok%" PRIu64 " ", i);
                k = mock_sse_event(&s, NULL, json_pack("{ss ss}", "type", "transcript.text.delta", "delta", delta), NULL);
        }
        if (k == 0)
                k = mock_sse_event(&s, NULL, json_pack("{ss ss so}", "type", "transcript.text.done", "text", text,
                                                       "usage", tokens_usage(sc)), NULL);
        if (k == 0)
                k = mock_sse_end(&s);
        kb_buf_free(&s.buf);
        return k;
}

static const char *const transcript_formats[] = { "json", "text", "srt", "verbose_json", "vtt" };

int mock_transcribe(struct mock_call *c) {
        struct mock_reply *r = c->r;
        const struct mock_request *req = r->req;
        bool translate = strstr(req->path, "/translations") != NULL;
        const struct mock_part *file = mock_part(req, "file");
        const char *model = mock_part_value(req, "model");
        const char *format = mock_part_value(req, "response_format") ?: "json";
        bool stream = !translate && streq_ptr(mock_part_value(req, "stream"), "true");
        bool known = false;

        if (!file)
                return mock_fail(r, 400, "file", "Missing required parameter: 'file'.");
        if (!model)
                return mock_fail(r, 400, "model", "Missing required parameter: 'model'.");
        for (size_t i = 0; i < ELEMENTSOF(transcript_formats); i++)
                known = known || streq(format, transcript_formats[i]);
        if (!known)
                return mock_fail(r, 400, "response_format", "Invalid value: '%s'. Supported values are: 'json', "
                                 "'text', 'srt', 'verbose_json', and 'vtt'.", format);
        bool whisper = strncmp(model, "whisper", 7) == 0;
        if (stream && whisper)
                return mock_fail(r, 400, "stream", "Streaming is not supported for the %s model.", model);

        _cleanup_(kb_buf_free) struct kb_buf text = {};
        for (uint64_t i = 0; i < r->script.out; i++)
                if (kb_buf_appendf(&text, i ? " tok%" PRIu64 : "tok%" PRIu64, i) < 0)
                        return -ENOMEM;
        const char *t = text.data ?: "";
        if (stream)
                return stream_transcript(r, t);

        uint64_t tenths = audio_tenths(req, file->len);
        double seconds = (double) tenths / 10.0;
        if (streq(format, "json"))
                return mock_send_json(r, 200, json_pack("{ss so}", "text", t, "usage",
                                                        whisper ? duration_usage(tenths) : tokens_usage(&r->script)));
        if (streq(format, "verbose_json"))
                return mock_send_json(r, 200, json_pack("{ss ss sf ss s[{si si sf sf ss s[ii] sf sf sf sf}] so}",
                                                        "task", translate ? "translate" : "transcribe",
                                                        "language", "english",
                                                        "duration", seconds,
                                                        "text", t,
                                                        "segments", "id", 0, "seek", 0, "start", 0.0, "end", seconds,
                                                        "text", t, "tokens", 1, 2, "temperature", 0.0,
                                                        "avg_logprob", -0.1, "compression_ratio", 1.0,
                                                        "no_speech_prob", 0.0,
                                                        "usage", duration_usage(tenths)));

        _cleanup_(kb_buf_free) struct kb_buf out = {};
        char end[32];
        int k;
        if (streq(format, "text"))
                k = kb_buf_appendf(&out, "%s\n", t);
        else if (streq(format, "srt")) {
                timestamp(tenths, ',', end);
                k = kb_buf_appendf(&out, "1\n00:00:00,000 --> %s\n%s\n\n", end, t);
        } else {
                timestamp(tenths, '.', end);
                k = kb_buf_appendf(&out, "WEBVTT\n\n00:00:00.000 --> %s\n%s\n\n", end, t);
        }
        if (k < 0)
                return k;
        return mock_send_bytes(r, 200, "text/plain; charset=utf-8", out.data, out.len);
}
