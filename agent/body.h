/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 9 of 12, bodies and usage: calls layer 12. */

/* Rewrites an app's JSON request body for upstream without re-serialising
 * it: only the top-level "model" value is replaced (and, for OpenAI chat
 * streams, stream_options.include_usage is added), every other byte — number
 * formatting, key order, whitespace — reaches the provider as the app sent
 * it. Never logs. */

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

struct kb_body_info {
        char *model;            /* top-level "model" string, malloc'd; NULL if absent */
        bool model_not_string;  /* "model" present but not a string */
        bool stream;            /* top-level "stream": true */
        bool include_usage;     /* stream_options.include_usage: true */
        bool has_stream_options;
        uint64_t max_output_tokens;     /* max_tokens / max_completion_tokens / max_output_tokens; 0 = not given */
};

/* Validate body as one JSON object (duplicate keys rejected: an app must not
 * be able to show us one "model" and the provider another) and read the
 * fields above. -EINVAL with *ret_error set to a static message. */
int kb_body_inspect(const char *body, size_t len, struct kb_body_info *ret, const char **ret_error);
void kb_body_info_done(struct kb_body_info *i);

/* Write body with the top-level "model" replaced by new_model (when
 * non-NULL) and, when add_include_usage, "stream_options" set so that
 * include_usage is true (other stream_options members kept). body must have
 * passed kb_body_inspect. */
int kb_body_rewrite(const char *body, size_t len, const char *new_model, bool add_include_usage, struct kb_buf *out);
