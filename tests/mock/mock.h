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

/* Request bodies: up to 1 GiB; past 8 MiB they are spilled to an unlinked
 * temporary file and mapped (body.c); only up to 64 MiB is parsed as JSON,
 * and only up to 1 MiB goes into the request log. */
#define MOCK_MAX_REQUEST_BODY (UINT64_C(1) << 30)
#define MOCK_SPILL_BYTES ((size_t) 8 << 20)
#define MOCK_MAX_JSON_BODY ((size_t) 64 << 20)
#define MOCK_LOG_BODY_MAX ((size_t) 1 << 20)

struct mock_config {
        const char *keys[MOCK_MAX_KEYS];
        size_t n_keys;
        /* --models: what GET /v1/models lists, and the only models a POST
         * may name (else 404 model_not_found); none: the defaults, any model */
        char *models[MOCK_MAX_MODELS];
        size_t n_models;
        int log_fd; /* -1: no request log */
        const char *replay_dir; /* --replay-dir: captured responses for x-mock-replay */
        /* --alias NAME=SNAPSHOT: a request for NAME is answered as SNAPSHOT */
        const char *alias_names[MOCK_MAX_MODELS], *alias_snapshots[MOCK_MAX_MODELS];
        size_t n_aliases;
        const char *no_vision[MOCK_MAX_MODELS]; /* --no-vision: image input is a 400 */
        size_t n_no_vision;
        const char *reasoning[MOCK_MAX_MODELS]; /* --reasoning: usage reports reasoning tokens */
        size_t n_reasoning;
        uint64_t min_latency_ms; /* --min-latency-ms: the least wait before an answer's first byte */
        const char *status_indicator; /* --status-indicator: what /api/v2/status.json says */
};

/* One part of a multipart/form-data body (multipart.c). */
struct mock_part {
        char *name;          /* Content-Disposition name ("" when absent) */
        char *filename;      /* NULL: no filename */
        char *content_type;  /* NULL: no Content-Type */
        char *value;         /* a field (no filename) of at most 4 KiB: its text, NUL-terminated */
        const char *data;    /* the part's bytes, inside the request body */
        size_t len;
        char sha256[65];     /* hex */
};

/* One parsed request, as handed from the connection reader to the
 * responder. All strings are NUL-terminated, except body when mapped. */
struct mock_request {
        uint64_t n;          /* sequence number, 1-based, shared with the log */
        const char *method;
        const char *url;     /* as received, query included */
        const char *path;    /* url without the query string */
        json_t *headers;     /* lowercased name -> string value */
        const char *body;
        size_t body_len;
        bool mapped;         /* body is a mapping of a spilled body: not NUL-terminated */
        bool keep_alive;
        bool multipart;      /* content-type multipart/form-data */
        char *multipart_error; /* malformed multipart: what is wrong (owned) */
        struct mock_part *parts;
        size_t n_parts;
};

/* body.c: a request body being received. */
struct mock_body {
        struct kb_buf mem;   /* up to MOCK_SPILL_BYTES */
        int fd;              /* the spill file, -1: in memory */
        uint64_t len;
        void *map;
};
void mock_body_init(struct mock_body *b);
/* Spill from now on (a Content-Length over the spill size). */
int mock_body_spill(struct mock_body *b);
int mock_body_append(struct mock_body *b, const char *p, size_t n);
/* The whole body, mapped when spilled; valid until mock_body_reset. */
int mock_body_finish(struct mock_body *b, const char **ret, size_t *ret_len);
void mock_body_reset(struct mock_body *b);
/* Give back the pages of a mapped body below offset upto (they are read
 * again from the file if touched), so a scan of a large upload never keeps
 * it resident. No-op for a body in memory. */
void mock_body_drop(const struct mock_request *req, size_t upto);

/* multipart.c */
/* Parses a multipart/form-data body into req->parts, or says in
 * req->multipart_error what is wrong. -ENOMEM only. */
int mock_multipart_parse(struct mock_request *req);
void mock_multipart_free(struct mock_request *req);
const struct mock_part *mock_part(const struct mock_request *req, const char *name);
/* The text of a field (no filename, at most 4 KiB), or NULL. */
const char *mock_part_value(const struct mock_request *req, const char *name);
/* The log's "parts" array. */
json_t *mock_parts_json(const struct mock_request *req);

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
        MOCK_TURN_STRUCTURED,  /* a json_schema response format: a document of the schema (tool_result) */
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
        char *tool_result;       /* owned: the assistant text of MOCK_TURN_TOOL_RESULT or _STRUCTURED, or the
                                  * arguments generated for a forced tool call (tool_args points to them) */
        int64_t created;         /* time(NULL) when the request was answered */
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
        json_t *root;           /* the JSON body (an object), or NULL */
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
/* A body of len bytes with content-length: x-mock-cut-after N sends only
 * its first N bytes, x-mock-event-delay-ms pauses at its middle. */
int mock_send_bytes(struct mock_reply *r, int status, const char *content_type, const char *body, size_t len);
/* content_length < 0: chunked. */
int mock_append_head(struct kb_buf *b, bool anthropic, uint64_t n, int status, const char *content_type,
                     int64_t content_length, bool close_after, const char *retry_after);
/* x-mock-cut-after reached: close (or reset, with x-mock-reset) now. */
int mock_end_connection(const struct mock_reply *r);
void mock_sleep_ms(uint64_t ms);
/* An error in the family's shape with a message of our own; param (OpenAI
 * only, may be NULL) names the offending parameter. */
int mock_fail(struct mock_reply *r, int status, const char *param, const char *fmt, ...) _printf_(4, 5);
/* The SSE answer: begin sends the head; each event (data owned, or raw text
 * when data is NULL; event NULL: no "event:" line) returns 0, MOCK_CLOSE
 * (x-mock-cut-after reached) or -errno; end terminates the chunked body.
 * Whatever happens, the caller frees s->buf. */
int mock_sse_begin(struct mock_sse *s);
int mock_sse_event(struct mock_sse *s, const char *event, json_t *data, const char *raw);
int mock_sse_end(struct mock_sse *s);

/* answer.c: the 200 answers of the completion endpoints. */
enum mock_endpoint { MOCK_CHAT, MOCK_RESPONSES, MOCK_MESSAGES, MOCK_COMPLETIONS };
int mock_answer(struct mock_reply *r, enum mock_endpoint ep, bool stream);

/* tools.c */
/* A JSON document that validates against schema (the subset a structured
 * output request uses); break_it: one that does not. NULL on OOM. */
json_t *mock_schema_document(const json_t *schema, bool break_it);
/* Reads the body's tools and last message into s->turn and the tool_*
 * fields (pointers into root, which must outlive s). -ENOMEM only. */
int mock_tool_plan(struct mock_script *s, json_t *root, bool anthropic, const char *args_header);
/* A forced tool call (tool_choice names one of the tools): that tool,
 * its arguments generated from its schema (parameters, input_schema) into
 * tool_result; break_it: arguments that violate it. -ENOMEM only. */
int mock_tool_force(struct mock_script *s, json_t *root, bool anthropic, bool break_it);
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
/* usage.output_tokens_details.thinking_tokens when s->reasoning > 0. */
int mock_add_thinking(const struct mock_script *s, json_t *usage);
json_t *mock_completion_usage(const struct mock_script *s);
/* finish_reason NULL: a stream chunk ("finish_reason": null) */
json_t *mock_completion_json(const struct mock_script *s, const char *text, const char *finish_reason);
json_t *mock_models_json(bool anthropic);
/* The model an answer names: --alias's snapshot for an alias, else model. */
const char *mock_reported_model(const char *model);
/* Whether model is one of list (--no-vision, --reasoning). */
bool mock_model_in(const char *const *list, size_t n, const char *model);

/* status.c: GET /api/v2/status.json (Statuspage, --status-indicator) and
 * /api/v2/not-statuspage.json; -ENOENT for any other request. */
int mock_status_answer(int fd, const struct mock_request *req);
/* true when model may be served (no --models, or one of them) */
bool mock_model_known(const char *model);
json_t *mock_error_json(bool anthropic, int status, const char *model, const char *message);

/* send.c: answers that are not JSON. Byte i of the mock's deterministic
 * content is (i * 31 + 7) & 0xff. */
static inline uint8_t mock_pattern_byte(uint64_t i) {
        return (uint8_t) (i * 31 + 7);
}
/* head (may be empty) then pattern bytes, total bytes in all (head cut if
 * longer). chunk > 0: chunked, chunk bytes per HTTP chunk (x-mock-cut-after
 * counts chunks, x-mock-event-delay-ms sleeps between them); 0: with
 * content-length (x-mock-cut-after counts bytes). */
int mock_send_pattern(struct mock_reply *r, const char *content_type, const void *head, size_t head_len,
                      uint64_t total, size_t chunk);
/* The value of query parameter name, percent-decoded, or NULL. */
char *mock_query(const struct mock_request *req, const char *name);
/* "2024-01-01T00:00:00Z" */
void mock_iso8601(int64_t t, char out[static 32]);

/* store.c: the objects the mock keeps (files, batches, videos, stored
 * responses, message batches), process-wide, under one mutex. */
enum mock_kind { MOCK_OBJ_FILE, MOCK_OBJ_BATCH, MOCK_OBJ_VIDEO, MOCK_OBJ_RESPONSE, MOCK_OBJ_MSGBATCH };
struct mock_obj {
        enum mock_kind kind;
        bool anthropic;
        char *id;
        json_t *json;   /* what a retrieve answers */
        json_t *state;  /* private: lifecycle, the creating request's script, ... */
        char *data;     /* files: the content, when kept */
        size_t size;    /* files: the content's length (kept or not) */
};
void mock_store_lock(void);
void mock_store_unlock(void);
/* The functions below need the lock. add takes json, state (NULL: {}) and
 * data; NULL on OOM (everything freed). */
struct mock_obj *mock_store_add(enum mock_kind kind, bool anthropic, const char *id, json_t *json, json_t *state,
                                char *data, size_t size);
struct mock_obj *mock_store_find(enum mock_kind kind, bool anthropic, const char *id);
void mock_store_remove(struct mock_obj *o);
/* Copies of the kind's objects, newest first; keep (may be NULL) filters. */
json_t *mock_store_all(enum mock_kind kind, bool anthropic, bool (*keep)(const struct mock_obj *o, const void *arg),
                       const void *arg);
/* List pages (take items, newest first): OpenAI's ?limit, ?after, ?order
 * and {"object":"list",...}; Anthropic's ?limit, ?after_id, ?before_id. */
json_t *mock_page_openai(const struct mock_request *req, json_t *items, size_t default_limit);
json_t *mock_page_anthropic(const struct mock_request *req, json_t *items);

/* route.c: the endpoints beyond the completion ones. -ENOENT: no such
 * method and path. */
int mock_route(struct mock_reply *r);

struct mock_call {
        struct mock_reply *r;
        json_t *root;       /* JSON body (object) or NULL */
        const char *id;     /* the path's {id} segment */
};
/* files.c */
int mock_files_create(struct mock_call *c);
int mock_files_list(struct mock_call *c);
int mock_files_get(struct mock_call *c);
int mock_files_content(struct mock_call *c);
int mock_files_delete(struct mock_call *c);
/* Adds an OpenAI file whose content is data (taken); under the lock. */
struct mock_obj *mock_files_add_openai(const char *id, const char *filename, const char *purpose, char *data,
                                       size_t size);
/* batches.c */
int mock_batches_create(struct mock_call *c);
int mock_batches_list(struct mock_call *c);
int mock_batches_get(struct mock_call *c);
int mock_batches_cancel(struct mock_call *c);
/* msgbatches.c */
int mock_msgbatches_create(struct mock_call *c);
int mock_msgbatches_list(struct mock_call *c);
int mock_msgbatches_get(struct mock_call *c);
int mock_msgbatches_results(struct mock_call *c);
int mock_msgbatches_cancel(struct mock_call *c);
int mock_msgbatches_delete(struct mock_call *c);
/* media.c */
/* A text field of either body kind: a JSON string, or a multipart field. */
const char *mock_field(struct mock_call *c, const char *name);
/* A JSON integer or a multipart field's digits; def when absent, -1 when
 * not a number. */
int64_t mock_int_field(struct mock_call *c, const char *name, int64_t def);
int mock_moderations(struct mock_call *c);
int mock_images(struct mock_call *c);
int mock_speech(struct mock_call *c);
int mock_transcribe(struct mock_call *c);
/* videos.c: videos and the stored responses */
int mock_videos_create(struct mock_call *c);
int mock_videos_list(struct mock_call *c);
int mock_videos_get(struct mock_call *c);
int mock_videos_content(struct mock_call *c);
int mock_videos_delete(struct mock_call *c);
/* Keeps a /v1/responses answer (copied) for GET /v1/responses/{id}. */
void mock_responses_keep(const struct mock_reply *r, json_t *response);
int mock_responses_get(struct mock_call *c);
int mock_responses_delete(struct mock_call *c);
int mock_responses_input_items(struct mock_call *c);
int mock_responses_cancel(struct mock_call *c);
