/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 9 of 12, bodies and usage: calls layer 12. */

/* Token usage read out of provider responses, JSON and SSE, for both
 * families, fed incrementally as bytes arrive from upstream (a number or an
 * event split across reads at any byte must be counted exactly once). Also
 * rewrites the OpenAI chat stream to hide the usage-only chunk the agent
 * asked for on the app's behalf. Library-like: never logs. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "util.h"

typedef enum kb_endpoint {
        KB_ENDPOINT_CHAT,         /* /v1/chat/completions */
        KB_ENDPOINT_RESPONSES,    /* /v1/responses */
        KB_ENDPOINT_EMBEDDINGS,   /* /v1/embeddings */
        KB_ENDPOINT_MESSAGES,     /* /v1/messages */
        KB_ENDPOINT_COUNT_TOKENS, /* /v1/messages/count_tokens */
        KB_ENDPOINT_MODELS,       /* /v1/models */
        KB_ENDPOINT_WHOAMI,       /* /v1/keybroker/whoami */
        KB_ENDPOINT_COMPLETIONS,  /* /v1/completions */
        KB_ENDPOINT_MODERATIONS,  /* /v1/moderations */
        KB_ENDPOINT_IMAGES,       /* /v1/images/generations, edits, variations */
        KB_ENDPOINT_AUDIO_SPEECH, /* /v1/audio/speech */
        KB_ENDPOINT_AUDIO_TRANSCRIPTIONS,
        KB_ENDPOINT_AUDIO_TRANSLATIONS,
        KB_ENDPOINT_VIDEOS,       /* /v1/videos[/{id}[/content]] */
        KB_ENDPOINT_FILES,        /* /v1/files[/{id}[/content]], both families */
        KB_ENDPOINT_BATCHES,      /* /v1/batches[/{id}[/cancel]] */
        KB_ENDPOINT_RESPONSES_GET, /* /v1/responses/{id}[/input_items|/cancel] */
        KB_ENDPOINT_MESSAGE_BATCHES, /* /v1/messages/batches[/{id}[/results|/cancel]] */
        _KB_ENDPOINT_MAX,
} kb_endpoint;

const char *kb_endpoint_to_string(kb_endpoint e); /* chat|responses|... as in DESIGN */

struct kb_usage {
        uint64_t input_tokens;
        uint64_t output_tokens;
        uint64_t cached_tokens;      /* OpenAI prompt_tokens_details.cached_tokens / input_tokens_details.cached_tokens; Anthropic cache_read_input_tokens */
        uint64_t cache_write_tokens; /* Anthropic cache_creation_input_tokens; OpenAI prompt_tokens_details.cache_write_tokens */
        uint64_t cache_write_1h_tokens; /* Anthropic cache_creation.ephemeral_1h_input_tokens: of cache_write_tokens, the 1-hour ones */
        uint64_t reasoning_tokens;   /* OpenAI completion_tokens_details.reasoning_tokens / output_tokens_details.reasoning_tokens; Anthropic output_tokens_details.thinking_tokens */
        /* Units of the endpoints not billed (only) by the token */
        uint64_t images;             /* images generated: entries of the answer's "data", or completed image events */
        uint64_t audio_msec;         /* transcribed audio: usage.seconds (type duration) or "duration" */
        uint64_t video_seconds;      /* a video seen completed: its "seconds" */
        uint64_t characters;         /* speech: characters of the request's input (set by the caller) */
        bool batch;                  /* the tokens are a batch's, seen completed: batch prices */
        char *object_status;         /* "status" / "processing_status" of an object answer, malloc'd, or NULL */
        bool object_ended;           /* a batch or message batch that has ended, however */
        char *object_files[2];       /* a batch's output_file_id and error_file_id, malloc'd, or NULL */
        char *upstream_model;        /* "model" as the provider reported it, malloc'd, or NULL */
        char *upstream_request_id;   /* body "id" (chatcmpl-…, msg_…, resp_…) when seen, malloc'd, or NULL */
        uint64_t streamed_deltas;    /* SSE: events that carried generated output (≈ one token each): the
                                      * inline meter of a stream before the provider reports its usage */
        bool seen;                   /* any usage object was seen */
        bool stream_done;            /* SSE: the terminal event arrived ([DONE], message_stop, response.completed) */
};

/* Token accounting rules:
 * - OpenAI chat/embeddings: usage.prompt_tokens -> input (includes cached),
 *   completion_tokens -> output.
 * - OpenAI responses: usage.input_tokens / output_tokens; in SSE from the
 *   response.completed (or response.incomplete/failed) event's response.usage.
 * - Anthropic messages: input_tokens is the uncached input; message_start
 *   gives input/cache fields and an initial output_tokens, message_delta gives
 *   the cumulative output_tokens (take the latest value, never add).
 * - Anthropic count_tokens: {"input_tokens": N} -> input; nothing else.
 */

struct kb_usage_tap;

/* stream: the response is SSE (text/event-stream). hide_usage_chunk: OpenAI
 * chat stream where the agent added stream_options.include_usage: the chunk
 * whose "choices" is empty and that carries "usage" is not forwarded. */
int kb_usage_tap_new(kb_family family, kb_endpoint endpoint, bool stream, bool hide_usage_chunk,
                     struct kb_usage_tap **ret);
void kb_usage_tap_free(struct kb_usage_tap *t);
/* A JSON-less answer (audio, a file's content, batch results): bytes pass,
 * nothing is held or read. */
void kb_usage_tap_set_raw(struct kb_usage_tap *t);
/* Anthropic's message batch results (JSONL): bytes pass unheld; the usage
 * of each succeeded request is added up (a line over the limit is skipped),
 * and the total is a batch's (batch set). */
void kb_usage_tap_set_jsonl(struct kb_usage_tap *t);

/* Feed the next upstream bytes. Bytes to forward to the app are appended to
 * out (for non-hiding taps exactly the input bytes, appended at once; for
 * hiding taps everything but the hidden event, emitted per complete event).
 * Returns 0, or -ENOMEM (the tap is then unusable: abort the call), -EINVAL,
 * -ESTALE after finish.
 *
 * Size limit: a JSON body, or one SSE event, longer than 16 MiB is not
 * parsed (an oversized SSE event is skipped, later events still count);
 * its bytes still pass to out unchanged and feed() still returns 0 — it
 * never returns -E2BIG, so a big legitimate answer (e.g. a large embeddings
 * batch) is never cut off. kb_usage_tap_overflowed() tells the caller that
 * the usage may be incomplete.
 *
 * Token counts are taken only from JSON integers in [0, INT64_MAX];
 * negative, fractional, non-numeric or null values are ignored (the field
 * keeps its previous value, 0 if none) rather than wrapped. An integer too
 * big for jansson makes it reject the whole body/event, which then counts
 * as malformed (no usage from it). A "usage" that is not an object is
 * ignored. "model"/"id" longer than 256 bytes are not recorded. */
int kb_usage_tap_feed(struct kb_usage_tap *t, const char *buf, size_t len, struct kb_buf *out);

/* End of body: parse what is buffered (a JSON body is parsed here), flush
 * any bytes still held to out. An SSE body that ends inside an event (no
 * final blank line) still has that event's usage counted when its data
 * parses; a hiding tap forwards such a held partial event unchanged.
 * Idempotent; returns 0 or -ENOMEM / -EINVAL. */
int kb_usage_tap_finish(struct kb_usage_tap *t, struct kb_buf *out);

/* The usage so far (valid at any time; final after finish). stream_done is
 * only ever set for SSE taps. */
const struct kb_usage *kb_usage_tap_get(const struct kb_usage_tap *t);

/* True when a body or an event went past the size limit and was not parsed:
 * the usage may be incomplete. */
bool kb_usage_tap_overflowed(const struct kb_usage_tap *t);

/* Heap bytes the tap holds right now (buffer capacity): an idle stream
 * tap holds at most its partial event. */
size_t kb_usage_tap_memory(const struct kb_usage_tap *t);

/* A gate sees the usage after each complete SSE event is parsed and before
 * its bytes are emitted; returning > 0 stops the stream there: that event
 * and everything after it are dropped (the caller cuts the stream at a quota
 * limit and adds its own error event). Setting a gate makes a stream tap
 * hold each event until it is complete. No effect on JSON bodies. */
typedef int (*kb_usage_gate_t)(void *userdata, const struct kb_usage *u);
void kb_usage_tap_set_gate(struct kb_usage_tap *t, kb_usage_gate_t gate, void *userdata);
bool kb_usage_tap_stopped(const struct kb_usage_tap *t);

/* usage-answer.c: the usage of a whole JSON answer of endpoint, as a tap
 * reads it at its end (also an object's status). An answer that is not
 * well-formed (or whose counts jansson would refuse) yields nothing, as a
 * failed parse would. 0 or -ENOMEM. Free the strings it sets. */
int kb_usage_answer(struct kb_usage *u, kb_endpoint endpoint, const char *s, size_t n);

/* For tests: lower the 16 MiB size limit (limit > 0). */
void kb_usage_tap_set_limit(struct kb_usage_tap *t, size_t limit);

/* The route's price for a model: the target's upstream model first, then
 * the model the provider reported (which may carry a date suffix). NULL
 * when the route has none. */
const struct kb_price *kb_price_find(const struct kb_route *route, const char *upstream_model,
                                     const char *reported_model);

/* Cost of a call in micro-USD, in integers throughout: every token class
 * times its price (micro-USD per 1M tokens), summed, divided once, rounded
 * half up; plus the per-request price. OpenAI counts cached tokens inside
 * its input tokens, so for that family they are moved to the cached price;
 * Anthropic reports them apart. A class without its own price (cached_input,
 * cache_write) is charged at the input price. 0 when p is NULL. */
int64_t kb_usage_cost_microusd(const struct kb_usage *u, kb_family family, const struct kb_price *p);

/* Tokens a call consumed, as the quota counts them and as replay after a
 * crash recounts them from the journal: everything the provider processed.
 * OpenAI's input already includes cached tokens; Anthropic's excludes cache
 * reads and writes. Saturates at UINT64_MAX. */
uint64_t kb_usage_quota_tokens(const struct kb_usage *u, kb_family family);
