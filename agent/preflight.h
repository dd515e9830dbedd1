/* SPDX-License-Identifier: MIT */
#pragma once

/* Preflight: the checklist run against a live route before it takes
 * traffic (POST /routes/NAME/check). The calls go out one after another on
 * the event loop through upstream.c, with the route's own key, headers and
 * timeouts, and the whole run is bounded; the caller is answered once every
 * check has a result. The result is saved as evidence in
 * state_dir/evidence/ROUTE-TIMESTAMP.json and journaled, one record per
 * check plus a summary. Never logs otherwise. */

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "usage.h"
#include "util.h"

struct kb_broker;
struct kb_preflight;

/* The whole run, whatever the route's timeouts say: keybrokerctl gives up
 * on the admin socket after 60 s, so the answer must come before. */
#define KB_PREFLIGHT_TOTAL_USEC (45 * USEC_PER_SEC)
/* What the test calls ask for, and the most output we still call plausible:
 * providers count reasoning or stop tokens past max_tokens, so the bound
 * only catches nonsense (a total in the output field, a wrong field). */
#define KB_PREFLIGHT_MAX_TOKENS 5
#define KB_PREFLIGHT_OUTPUT_BOUND 64
/* One answer's body; beyond it the call is cut and its check fails. */
#define KB_PREFLIGHT_MAX_BODY (1024u * 1024u)
/* The body of POST /routes/NAME/check, and a model name in it. */
#define KB_PREFLIGHT_MAX_REQUEST_BODY 4096u
#define KB_PREFLIGHT_MODEL_MAX 256u

typedef enum kb_preflight_check {
        KB_CHECK_CREDENTIALS,   /* GET /models: not 401/403 */
        KB_CHECK_MODEL_LISTED,  /* the model is in /models' data[].id */
        KB_CHECK_NON_STREAMING, /* a small call: 2xx, well-formed */
        KB_CHECK_STREAMING,     /* the same streamed: 2xx, SSE, terminal event */
        KB_CHECK_USAGE,         /* usage present and plausible in both */
        KB_CHECK_BOGUS_MODEL,   /* a made-up model: the provider's not-found shape */
        KB_CHECK_LATENCY,       /* p50/max of the calls under the route's timeout */
        _KB_CHECK_MAX,
} kb_preflight_check;

const char *kb_preflight_check_to_string(kb_preflight_check c);  /* "credentials", … */
const char *kb_preflight_check_title(kb_preflight_check c);      /* "credentials accepted", … */

/* Called once, from the event loop (never from inside kb_preflight_start()),
 * with the answer: the evidence document plus "evidence_path" (ownership
 * passes). The preflight is freed right after it returns. */
typedef void (*kb_preflight_done_t)(void *userdata, json_t *answer);

/* The optional JSON body {"model":"M"}: *ret_model is NULL when no model
 * was given (empty body, {} or "model": null). -EINVAL with *ret_why on a
 * body that is not that (too long, not an object, another member, a model
 * that is empty, too long or holds control bytes). */
int kb_preflight_parse_body(const char *body, size_t len, char **ret_model, const char **ret_why);

/* The model checked when none is given: the first upstream model a
 * [model:*] target, then a fallback, of this route names; NULL when none. */
const char *kb_preflight_default_model(const struct kb_config *c, const struct kb_route *route);

/* Start checking route_name of the current config with model (NULL: the
 * default). Errors: -ENOENT no such route, -ENOMEDIUM no model given and
 * none to default to, -ENOMEM; *ret_error (malloc'd) says what to do.
 * The run holds its own config and key references, so a reload or a key
 * rotation meanwhile changes nothing about it. */
int kb_preflight_start(struct kb_broker *b, const char *route_name, const char *model, kb_preflight_done_t done,
                       void *userdata, struct kb_preflight **ret, char **ret_error);
/* Cancel without answering or saving anything (the connection went away
 * with the server). Accepts NULL; returns NULL. */
struct kb_preflight *kb_preflight_free(struct kb_preflight *p);

/* ---- the judgements, exposed for unit tests ---- */

/* Each writes a malloc'd detail into *ret_detail and returns true for ✓
 * (false for ✗); -ENOMEM as a negative value. status 0: no answer. */

/* data[].id of an OpenAI or Anthropic model list contains model. */
int kb_preflight_judge_listed(const char *body, size_t len, long status, const char *model, char **ret_detail);
/* A 2xx non-streaming answer of the family's shape (OpenAI choices[].message,
 * Anthropic type "message" with content[]). */
int kb_preflight_judge_completion(kb_family f, const char *body, size_t len, long status, char **ret_detail);
/* The made-up model was refused the family's way: OpenAI 404 (or 400) with
 * an error object, Anthropic 404 not_found_error. */
int kb_preflight_judge_bogus(kb_family f, const char *body, size_t len, long status, char **ret_detail);
/* Usage of the two good calls (NULL: that call failed): input > 0,
 * 0 < output <= KB_PREFLIGHT_OUTPUT_BOUND, and for OpenAI a usage.total_tokens
 * in the non-streaming body equal to their sum. */
int kb_preflight_judge_usage(kb_family f, const struct kb_usage *plain, const char *plain_body, size_t plain_len,
                             const struct kb_usage *stream, char **ret_detail);
/* Make s safe for a terminal, the journal and JSON, in place: control
 * bytes and bytes that are not valid UTF-8 (provider text cut at a limit
 * may end inside a character) become '?'. Accepts NULL. */
void kb_preflight_text_clean(char *s);
/* p50 (lower median) and max of n latencies (µs); n 0 gives 0s. */
void kb_preflight_latency_stats(const uint64_t *usec, size_t n, uint64_t *ret_p50, uint64_t *ret_max);

/* Save doc as state_dir/evidence/ROUTE-YYYYmmddTHHMMSSZ.json (-N added
 * when that name is taken): the directory is made 0700, the file written
 * 0600 under a temporary name, synced and linked into place, so a reader
 * never sees half a file and nothing is overwritten. *ret_path is the
 * file's path. */
int kb_preflight_save_evidence(const char *state_dir, const char *route, uint64_t realtime_usec, const json_t *doc,
                               char **ret_path);
