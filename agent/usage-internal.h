/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 9 of 12, bodies and usage: calls layer 12. */

/* Shared by usage.c (the tap: JSON, SSE and JSONL framing), usage-read.c
 * (usage out of parsed JSON) and usage-answer.c (JSON answers read from
 * their text). Not for other modules. */

#include <jansson.h>
#include <stddef.h>

#include "usage.h"

/* One count a usage object reports: usage[outer][key] (outer NULL:
 * usage[key]) goes to the uint64_t at offset in struct kb_usage. Tables end
 * with an entry whose key is NULL. */
struct kb_usage_count {
        const char *outer;
        const char *key;
        size_t offset;
};

extern const struct kb_usage_count kb_usage_counts_openai_chat[];
extern const struct kb_usage_count kb_usage_counts_openai_responses[];
extern const struct kb_usage_count kb_usage_counts_anthropic[];

/* usage-read.c: usage, model and id from a parsed JSON answer. 0 or -ENOMEM. */
int kb_usage_from_json(struct kb_usage *u, kb_endpoint endpoint, json_t *root);
/* usage-read.c: the counts of one usage object of each shape (ignored when
 * not an object); audio: a transcription answer or its done event. */
void kb_usage_read_openai_chat(struct kb_usage *u, json_t *usage);
void kb_usage_read_openai_responses(struct kb_usage *u, json_t *usage);
void kb_usage_read_anthropic(struct kb_usage *u, json_t *usage);
void kb_usage_read_audio(struct kb_usage *u, json_t *root);
/* usage-read.c: obj's "model" and "id", first seen wins. 0 or -ENOMEM. */
int kb_usage_take_model_id(struct kb_usage *u, json_t *obj);
/* usage-read.c: a short string member into *field, unless already set. */
int kb_usage_take_string(json_t *obj, const char *key, char **field);
/* usage-read.c: one line of Anthropic's message batch results: a succeeded
 * request's usage added to u (u->batch set). 0 or -ENOMEM. */
int kb_usage_add_batch_result(struct kb_usage *u, const char *line, size_t n);

/* usage-answer.c: the counts of the usage object text v (ignored when not
 * an object), committed only when all of it reads as jansson would read it.
 * 0, or -ENOMEM. */
int kb_usage_read_text(struct kb_usage *u, const char *v, size_t n, const struct kb_usage_count *counts);
/* usage-answer.c: an object holding only the members keys[] of the JSON
 * object text s, each as jansson reads it (the last of a repeated key);
 * NULL when s is not a well-formed object or a picked member does not
 * parse (or on OOM). What the other members hold is not judged. */
json_t *kb_usage_pick(const char *s, size_t n, const char *const *keys, size_t n_keys);

