/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 2 of 12, admin: calls layers 7, 9-12. */

/* Preflight: the routing playbook's ten-point check of a live route before
 * it takes traffic (POST /routes/NAME/check). The calls go out one after
 * another on the event loop through upstream.c, with each route's own key,
 * headers and timeouts, and the whole run is bounded; the caller is
 * answered once every check has a result. The result is saved as evidence
 * in state_dir/evidence/ROUTE-TIMESTAMP.json and journaled, one record per
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

/* The whole run, whatever the routes' timeouts say: keybrokerctl gives up
 * on the admin socket after 60 s, so the answer must come before. */
#define KB_PREFLIGHT_TOTAL_USEC (50 * USEC_PER_SEC)
/* One call, so a route that hangs cannot eat the run's whole budget and
 * leave the later checks unrun. */
#define KB_PREFLIGHT_CALL_USEC (15 * USEC_PER_SEC)
/* The failures check's forced timeout: no provider answers this fast. */
#define KB_PREFLIGHT_TINY_TIMEOUT_USEC (1 * USEC_PER_MSEC)
/* What the small calls ask for, and the most output we still call
 * plausible: providers count reasoning or stop tokens past max_tokens, so
 * the bound only catches nonsense (a total in the output field). */
#define KB_PREFLIGHT_MAX_TOKENS 5
#define KB_PREFLIGHT_OUTPUT_BOUND 64
/* One answer's body; beyond it the call is cut and its check fails. */
#define KB_PREFLIGHT_MAX_BODY (1024u * 1024u)
/* The body of POST /routes/NAME/check, and a model name in it. */
#define KB_PREFLIGHT_MAX_REQUEST_BODY 4096u
#define KB_PREFLIGHT_MODEL_MAX 256u
/* Calls of one run (each fallback and rollback target adds some). */
#define KB_PREFLIGHT_MAX_CALLS 48u
/* Fallback targets and models checked for rollback, each. */
#define KB_PREFLIGHT_MAX_TARGETS 8u

/* The ten points, in the order they run and print (names fixed by DESIGN). */
typedef enum kb_preflight_check {
        KB_CHECK_MODEL,         /* credentials accepted, model listed, the snapshot the provider reports */
        KB_CHECK_ENDPOINT,      /* each endpoint family the route serves answers a minimal call */
        KB_CHECK_FEATURES,      /* each declared feature works */
        KB_CHECK_USAGE,         /* usage reported, the same streamed and not */
        KB_CHECK_PRICING,       /* a price for every exercised model, the probes' cost */
        KB_CHECK_STATUS,        /* the provider's Statuspage indicator */
        KB_CHECK_FAILURES,      /* wrong key 401, bogus model 404, timeout -> 504 */
        KB_CHECK_FALLBACK,      /* every fallback target works with its own key */
        KB_CHECK_OWNER,         /* someone answers for the route, its key and its teams */
        KB_CHECK_ROLLBACK,      /* the routes serving now still work; the split to go back to */
        _KB_CHECK_MAX,
} kb_preflight_check;

#define KB_CHECK_BIT(c) (1u << (c))
#define KB_CHECK_ALL ((1u << _KB_CHECK_MAX) - 1)
#define KB_PREFLIGHT_CHECK_NAMES "model, endpoint, features, usage, pricing, status, failures, fallback, owner, rollback"

const char *kb_preflight_check_to_string(kb_preflight_check c);  /* "model", … */
const char *kb_preflight_check_title(kb_preflight_check c);      /* "model as reported", … */
/* -EINVAL for a name that is not a check. */
int kb_preflight_check_from_string(const char *s);
/* Add the checks of a comma-separated list ("model,usage") to *checks.
 * -EINVAL with *ret_bad (a pointer into list, up to the next comma) on an
 * empty or unknown name; *checks may then hold the names before it. */
int kb_preflight_parse_names(const char *list, unsigned *checks, const char **ret_bad, size_t *ret_bad_len);
/* The names of the checks in a mask, in check order, as a JSON array (the
 * admin body's "only"/"skip", the evidence's "checked"/"skipped"); NULL on
 * OOM. */
json_t *kb_preflight_checks_json(unsigned checks);

/* Called once, from the event loop (never from inside kb_preflight_start()),
 * with the answer: the evidence document plus "evidence_path" (ownership
 * passes). The preflight is freed right after it returns. */
typedef void (*kb_preflight_done_t)(void *userdata, json_t *answer);

/* The optional JSON body {"model":M,"only":[CHECK...],"skip":[CHECK...]}
 * (every member optional, null as absent). *ret_model is NULL when no
 * model was given; *ret_checks the checks to run (all but the skipped, or
 * only those named). -EINVAL with *ret_why (static text) on anything else:
 * too long, not an object, another member, a model that is empty, too long
 * or holds control bytes, a list that is not an array of check names, an
 * empty "only", both "only" and "skip", every check skipped. Outputs are
 * untouched on failure. */
int kb_preflight_parse_body(const char *body, size_t len, char **ret_model, unsigned *ret_checks,
                            const char **ret_why);

/* The model checked when none is given: the first upstream model a
 * [model:*] target, then a fallback, of this route names, preferring one
 * that does not look like an embedding model; NULL when none. */
const char *kb_preflight_default_model(const struct kb_config *c, const struct kb_route *route);
/* Whether an upstream model is an embedding model by its name (it contains
 * "embedding"): the endpoint check then calls /embeddings with it. */
bool kb_preflight_is_embedding_model(const char *model);

/* Start checking route_name of the current config with model (NULL: the
 * default), running the checks in the checks mask (others are reported as
 * skipped). Errors: -ENOENT no such route, -ENOMEDIUM no model given and
 * none to default to, -ENOMEM; *ret_error (malloc'd) says what to do.
 * The run holds its own config and key references, so a reload or a key
 * rotation meanwhile changes nothing about it; the split it would roll back
 * to is read at start. */
int kb_preflight_start(struct kb_broker *b, const char *route_name, const char *model, unsigned checks,
                       kb_preflight_done_t done, void *userdata, struct kb_preflight **ret, char **ret_error);
/* Cancel without answering or saving anything (the connection went away
 * with the server). Accepts NULL; returns NULL. */
struct kb_preflight *kb_preflight_free(struct kb_preflight *p);

/* ---- the judgements, exposed for unit tests ---- */

/* Each writes a malloc'd detail into *ret_detail and returns true for ✓
 * (false for ✗); -ENOMEM as a negative value. status 0: no answer. */

/* data[].id of an OpenAI or Anthropic model list contains model. */
int kb_preflight_judge_listed(const char *body, size_t len, long status, const char *model, char **ret_detail);
/* A 2xx non-streaming answer of the endpoint's shape: chat choices[].message,
 * responses "object":"response" with output[], embeddings data[] with an
 * embedding, messages type "message" with content[]. */
int kb_preflight_judge_answer(kb_endpoint ep, const char *body, size_t len, long status, char **ret_detail);
/* A streamed answer: 2xx, text/event-stream, and the terminal event seen
 * (u from the call's usage tap, NULL when there is none). */
int kb_preflight_judge_stream(kb_family f, long status, const char *content_type, const struct kb_usage *u,
                              char **ret_detail);
/* The made-up model was refused the family's way: OpenAI 404 (or 400) with
 * an error object, Anthropic 404 not_found_error. */
int kb_preflight_judge_bogus(kb_family f, const char *body, size_t len, long status, char **ret_detail);
/* A made-up key was refused the family's way: 401 with an error object
 * (Anthropic: type "error", error.type authentication_error). */
int kb_preflight_judge_wrong_key(kb_family f, const char *body, size_t len, long status, char **ret_detail);
/* A call with a forced timeout_usec: error is the call's (-ETIMEDOUT when
 * it timed out); it must have timed out, which keybrokerd answers 504
 * upstream_timeout. */
int kb_preflight_judge_timeout(int error, long status, uint64_t timeout_usec, uint64_t latency_usec,
                               char **ret_detail);
/* Usage of the two good calls (NULL: that call failed) and their bodies
 * (the JSON answer; the event stream): input > 0, 0 < output <=
 * KB_PREFLIGHT_OUTPUT_BOUND, an OpenAI usage.total_tokens equal to their
 * sum, the same input tokens in both, and the cached count present as a
 * number in both. */
int kb_preflight_judge_usage(kb_family f, const struct kb_usage *plain, const char *plain_body, size_t plain_len,
                             const struct kb_usage *stream, const char *stream_body, size_t stream_len,
                             char **ret_detail);
/* Whether the usage in a JSON answer (sse false) or an event stream (sse
 * true) carries the cached token count as a JSON integer: OpenAI
 * usage.prompt_tokens_details.cached_tokens (chat) or
 * usage.input_tokens_details.cached_tokens (responses), Anthropic
 * usage.cache_read_input_tokens. */
bool kb_preflight_cached_reported(kb_family f, const char *body, size_t len, bool sse);
/* A tool call came back whose arguments parse as a JSON object: OpenAI
 * choices[0].message.tool_calls[0].function.arguments, Anthropic a
 * tool_use content block's input. */
int kb_preflight_judge_tool_call(kb_family f, const char *body, size_t len, long status, char **ret_detail);
/* The structured answer validates against schema: OpenAI the JSON document
 * in choices[0].message.content, Anthropic the forced tool's input. */
int kb_preflight_judge_structured(kb_family f, const json_t *schema, const char *body, size_t len, long status,
                                  char **ret_detail);
/* A request with an image was accepted (2xx, well-formed answer). */
int kb_preflight_judge_vision(kb_family f, const char *body, size_t len, long status, char **ret_detail);
/* Reasoning tokens reported (> 0) in the usage u of a 2xx answer; for
 * Anthropic a "thinking" content block counts too. */
int kb_preflight_judge_reasoning(kb_family f, const struct kb_usage *u, const char *body, size_t len, long status,
                                 char **ret_detail);
/* The subset of JSON Schema the structured-output probe sends: type
 * (object, array, string, integer, number, boolean, null), properties,
 * required, additionalProperties false, items, enum. true when doc
 * validates; else false and why (a path and the problem) in why. Nesting
 * deeper than 32 levels does not validate. */
bool kb_preflight_schema_valid(const json_t *schema, const json_t *doc, char *why, size_t why_size);
/* A Statuspage status document ({"status":{"indicator","description"}}):
 * *ret_indicator and *ret_description (malloc'd, cleaned; description may
 * be NULL) and ✓ when the indicator is none, or minor with ok_minor. ✗
 * with why for an answer that is not 2xx, not Statuspage JSON, or an
 * indicator that is not none|minor|major|critical (indicator then NULL). */
int kb_preflight_judge_statuspage(const char *body, size_t len, long status, bool ok_minor, char **ret_indicator,
                                  char **ret_description, char **ret_detail);
/* Make s safe for a terminal, the journal and JSON, in place: control
 * bytes and bytes that are not valid UTF-8 (provider text cut at a limit
 * may end inside a character) become '?'. Accepts NULL. */
void kb_preflight_text_clean(char *s);
/* p50 (lower median) and max of n latencies (µs); n 0 gives 0s. */
void kb_preflight_latency_stats(const uint64_t *usec, size_t n, uint64_t *ret_p50, uint64_t *ret_max);

/* ---- the config's side, exposed for unit tests ---- */

/* Who answers for the route: [route:R] owner, key_owner (when it has a
 * key), and the owner of every team that may call a model using it. ✓ when
 * none is missing; else ✗ naming each line to add. *ret_parts: a JSON array
 * of {"name","ok","detail"}. */
int kb_preflight_judge_owner(const struct kb_config *c, const struct kb_route *route, json_t **ret_parts,
                             char **ret_detail);
/* The price line a route lacks for model on endpoint ep (embeddings bill
 * input only), as "price = MODEL input=USD output=USD". malloc'd. */
char *kb_preflight_price_line(kb_endpoint ep, const char *model);
/* "keybrokerctl model split MODEL ROUTE=W ..." with the weights given, in
 * the order of m's targets (names[i] "ROUTE", or "ROUTE/UPSTREAM" for a
 * route that is a target twice). malloc'd. */
char *kb_preflight_split_command(const struct kb_model *m, const unsigned *weights);

/* Save doc as state_dir/evidence/ROUTE-YYYYmmddTHHMMSSZ.json (-N added
 * when that name is taken): the directory is made 0700, the file written
 * 0600 under a temporary name, synced and linked into place, so a reader
 * never sees half a file and nothing is overwritten. *ret_path is the
 * file's path. */
int kb_preflight_save_evidence(const char *state_dir, const char *route, uint64_t realtime_usec, const json_t *doc,
                               char **ret_path);
