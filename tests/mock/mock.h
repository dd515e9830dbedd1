/* SPDX-License-Identifier: MIT */
#pragma once

/* kb-mock: the fake LLM provider used by keybroker's integration tests and
 * benchmarks. See tests/mock/README.md for the behaviour it promises. */

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define MOCK_MAX_KEYS 64
#define MOCK_MAX_MODELS 64

/* Hard limits on what a script header may ask for. */
#define MOCK_MAX_TOKENS UINT64_C(1000000000)
#define MOCK_MAX_EVENTS UINT64_C(10000000)
#define MOCK_MAX_DELAY_MS UINT64_C(600000)
#define MOCK_MAX_BODY_BYTES UINT64_C(268435456)
#define MOCK_DEFAULT_MODEL "mock-model"

struct mock_config {
        const char *keys[MOCK_MAX_KEYS];
        size_t n_keys;
        /* --models: what GET /v1/models lists, and the only models a POST
         * may name (else 404 model_not_found); none: the defaults, any model */
        char *models[MOCK_MAX_MODELS];
        size_t n_models;
        int log_fd; /* -1: no request log */
        const char *replay_dir; /* --replay-dir: captured responses for x-mock-replay */
};

/* One parsed request, as handed from the connection reader to the
 * responder. All strings are NUL-terminated. */
struct mock_request {
        uint64_t n;          /* sequence number, 1-based, shared with the log */
        const char *method;
        const char *url;     /* as received, query included */
        const char *path;    /* url without the query string */
        json_t *headers;     /* lowercased name -> string value */
        const char *body;
        size_t body_len;
        bool keep_alive;
};

/* What the connection should do after a response. */
enum {
        MOCK_KEEP = 0,  /* response complete; read the next request */
        MOCK_CLOSE = 1, /* close the connection (graceful or abrupt: already decided) */
};

/* conn.c */
extern const struct mock_config *mock_cfg;
/* Runs one connection to completion and closes fd. Thread entry point. */
void *mock_conn_thread(void *fd_as_ptr);

/* shapes.c / tools.c: what the answer says. */
enum mock_turn {
        MOCK_TURN_TEXT,        /* "tok0 tok1 ..." */
        MOCK_TURN_TOOL_CALL,   /* the assistant calls tools[0] */
        MOCK_TURN_TOOL_RESULT, /* the app sent a tool result: "tool result: <it>" */
};

struct mock_script {
        uint64_t n;
        const char *model;
        uint64_t in, out, cached, cache_write, reasoning;
        bool include_usage;
        bool base64;             /* embeddings: "encoding_format": "base64" */
        enum mock_turn turn;
        const char *tool_name;   /* MOCK_TURN_TOOL_CALL; borrowed from the body */
        const char *tool_args;   /* MOCK_TURN_TOOL_CALL: JSON object text */
        char *tool_result;       /* MOCK_TURN_TOOL_RESULT: the assistant text, owned */
};

/* respond.c: the transport. */
struct mock_reply {
        int fd;
        const struct mock_request *req;
        bool anthropic;
        uint64_t event_delay_ms;
        int64_t cut_after; /* -1: never */
        const char *retry_after;
        bool reset;             /* x-mock-reset: end with an RST, not a FIN */
        const char *bad_usage;  /* x-mock-bad-usage: raw JSON put in place of usage numbers */
        uint64_t long_line;     /* x-mock-long-line-bytes: one SSE data line this long first */
        struct mock_script script;
};

struct mock_sse {
        struct mock_reply *r;
        uint64_t sent;
        struct kb_buf buf;
};

/* Returns MOCK_KEEP, MOCK_CLOSE or -errno (I/O failure: close). */
int mock_respond(int fd, const struct mock_request *req);
/* Sends a bare error (used for malformed HTTP, before a request exists). */
int mock_send_error(int fd, bool anthropic, int status, const char *message, bool close_after);
int mock_send_all(int fd, const void *p, size_t n);
/* replay.c: answer with the captured response NAME.json of --replay-dir. */
int mock_replay(int fd, const struct mock_request *req, const char *name);
const char *mock_header(const struct mock_request *req, const char *name);
uint64_t mock_knob(const struct mock_request *req, const char *name, uint64_t def, uint64_t max);
/* Takes ownership of body (NULL: -ENOMEM). */
int mock_send_json(struct mock_reply *r, int status, json_t *body);
/* The SSE answer: begin sends the head; each event (data owned, or raw text
 * when data is NULL; event NULL: no "event:" line) returns 0, MOCK_CLOSE
 * (x-mock-cut-after reached) or -errno; end terminates the chunked body.
 * Whatever happens, the caller frees s->buf. */
int mock_sse_begin(struct mock_sse *s);
int mock_sse_event(struct mock_sse *s, const char *event, json_t *data, const char *raw);
int mock_sse_end(struct mock_sse *s);

/* answer.c: the 200 answers of the completion endpoints. */
enum mock_endpoint { MOCK_CHAT, MOCK_RESPONSES, MOCK_MESSAGES };
int mock_answer(struct mock_reply *r, enum mock_endpoint ep, bool stream);

/* tools.c */
/* Reads the body's tools and last message into s->turn and the tool_*
 * fields (pointers into root, which must outlive s). -ENOMEM only. */
int mock_tool_plan(struct mock_script *s, json_t *root, bool anthropic, const char *args_header);
size_t mock_tool_args_split(const struct mock_script *s);
json_t *mock_chat_tool_calls(const struct mock_script *s, bool head);
json_t *mock_chat_tool_json(const struct mock_script *s);
json_t *mock_messages_tool_use(const struct mock_script *s, bool streaming);
json_t *mock_messages_tool_json(const struct mock_script *s);

json_t *mock_json_string(const char *s, size_t n); /* never fails on bad UTF-8 */
char *mock_id(const char *prefix, uint64_t n);
json_t *mock_chat_usage(const struct mock_script *s);
json_t *mock_chat_json(const struct mock_script *s, const char *text);
json_t *mock_chat_chunk(const struct mock_script *s, json_t *delta, const char *finish_reason);
json_t *mock_responses_usage(const struct mock_script *s);
json_t *mock_responses_json(const struct mock_script *s, const char *text, bool completed);
json_t *mock_responses_message(const struct mock_script *s, const char *text, bool completed);
json_t *mock_output_text(const char *text);
json_t *mock_embeddings_json(const struct mock_script *s);
json_t *mock_messages_json(const struct mock_script *s, const char *text);
json_t *mock_messages_start(const struct mock_script *s);
json_t *mock_models_json(bool anthropic);
/* true when model may be served (no --models, or one of them) */
bool mock_model_known(const char *model);
json_t *mock_error_json(bool anthropic, int status, const char *model, const char *message);
