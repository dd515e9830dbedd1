/* SPDX-License-Identifier: MIT */
/* Usage out of a parsed JSON answer or event, for every endpoint: which
 * counts each shape reports and where, the other billing units (images,
 * audio seconds, a video's seconds, a batch's tokens) and the model and id.
 * Used by the tap (usage.c) and the answer reader (usage-answer.c). */

#include <jansson.h>
#include <math.h>

#include "usage-internal.h"

/* Longer "model"/"id" strings are not recorded: they end up in journal
 * fields and no provider sends anything close. */
#define KB_USAGE_MAX_STRING 256

static uint64_t add_sat(uint64_t a, uint64_t b) {
        return a > UINT64_MAX - b ? UINT64_MAX : a + b;
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
int kb_usage_take_string(json_t *obj, const char *key, char **field) {
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

int kb_usage_take_model_id(struct kb_usage *u, json_t *obj) {
        int r = kb_usage_take_string(obj, "model", &u->upstream_model);
        if (r < 0)
                return r;
        return kb_usage_take_string(obj, "id", &u->upstream_request_id);
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

void kb_usage_read_openai_chat(struct kb_usage *u, json_t *usage) {
        usage_counts(u, usage, kb_usage_counts_openai_chat);
}

void kb_usage_read_openai_responses(struct kb_usage *u, json_t *usage) {
        usage_counts(u, usage, kb_usage_counts_openai_responses);
}

void kb_usage_read_anthropic(struct kb_usage *u, json_t *usage) {
        usage_counts(u, usage, kb_usage_counts_anthropic);
}

/* Transcription usage: tokens (gpt-4o-transcribe), or seconds of audio
 * (whisper: usage.type "duration"); verbose_json also says "duration". */
void kb_usage_read_audio(struct kb_usage *u, json_t *root) {
        json_t *usage = json_object_get(root, "usage");
        json_t *secs = json_object_get(usage, "seconds");
        json_t *duration = json_object_get(root, "duration");

        if (json_is_object(usage) && !streq_ptr(json_string_value(json_object_get(usage, "type")), "duration"))
                kb_usage_read_openai_responses(u, usage);
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
        int r = kb_usage_take_string(root, key, &u->object_status);
        if (r < 0)
                return r;
        const char *status = json_string_value(json_object_get(root, key));
        /* the files a batch made are its team's too */
        if (endpoint == KB_ENDPOINT_BATCHES &&
            ((r = kb_usage_take_string(root, "output_file_id", &u->object_files[0])) < 0 ||
             (r = kb_usage_take_string(root, "error_file_id", &u->object_files[1])) < 0))
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
        u->object_ended = endpoint == KB_ENDPOINT_MESSAGE_BATCHES
                                  ? streq_ptr(status, "ended")
                                  : endpoint == KB_ENDPOINT_BATCHES &&
                                            (streq_ptr(status, "completed") || streq_ptr(status, "failed") ||
                                             streq_ptr(status, "expired") || streq_ptr(status, "cancelled"));
        if (endpoint == KB_ENDPOINT_BATCHES && u->object_ended && json_is_object(json_object_get(root, "usage"))) {
                kb_usage_read_openai_responses(u, json_object_get(root, "usage"));
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
                kb_usage_read_openai_chat(u, json_object_get(root, "usage"));
                break;
        case KB_ENDPOINT_RESPONSES:
        case KB_ENDPOINT_AUDIO_SPEECH:
                kb_usage_read_openai_responses(u, json_object_get(root, "usage"));
                break;
        case KB_ENDPOINT_IMAGES: {
                json_t *data = json_object_get(root, "data");
                kb_usage_read_openai_responses(u, json_object_get(root, "usage"));
                if (json_is_array(data)) {
                        u->images = json_array_size(data);
                        u->seen = true;
                }
                break;
        }
        case KB_ENDPOINT_AUDIO_TRANSCRIPTIONS:
        case KB_ENDPOINT_AUDIO_TRANSLATIONS:
                kb_usage_read_audio(u, root);
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
                kb_usage_read_anthropic(u, json_object_get(root, "usage"));
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

        return kb_usage_take_model_id(u, root);
}

/* One line of Anthropic's message batch results: a succeeded request's
 * message usage is added to the batch's. */
int kb_usage_add_batch_result(struct kb_usage *u, const char *p, size_t n) {
        json_t *root = json_loadb(p, n, 0, NULL);
        json_t *result = json_object_get(root, "result");
        json_t *msg = json_object_get(result, "message");
        struct kb_usage one = {};
        int r = 0;

        if (streq_ptr(json_string_value(json_object_get(result, "type")), "succeeded") && json_is_object(msg)) {
                kb_usage_read_anthropic(&one, json_object_get(msg, "usage"));
                if (one.seen) {
                        u->input_tokens = add_sat(u->input_tokens, one.input_tokens);
                        u->output_tokens = add_sat(u->output_tokens, one.output_tokens);
                        u->cached_tokens = add_sat(u->cached_tokens, one.cached_tokens);
                        u->cache_write_tokens = add_sat(u->cache_write_tokens, one.cache_write_tokens);
                        u->cache_write_1h_tokens = add_sat(u->cache_write_1h_tokens, one.cache_write_1h_tokens);
                        u->reasoning_tokens = add_sat(u->reasoning_tokens, one.reasoning_tokens);
                        u->seen = u->batch = true;
                        r = kb_usage_take_string(msg, "model", &u->upstream_model);
                }
        }
        json_decref(root);
        return r;
}
