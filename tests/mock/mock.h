/* SPDX-License-Identifier: MIT */
#pragma once

/* kb-mock: the fake LLM provider used by keybroker's integration tests and
 * benchmarks. See tests/mock/README.md for the behaviour it promises. */

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MOCK_MAX_KEYS 64
#define MOCK_MAX_MODELS 64

struct mock_config {
        const char *keys[MOCK_MAX_KEYS];
        size_t n_keys;
        /* --models: what GET /v1/models lists, and the only models a POST
         * may name (else 404 model_not_found); none: the defaults, any model */
        char *models[MOCK_MAX_MODELS];
        size_t n_models;
        int log_fd; /* -1: no request log */
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

/* respond.c */
/* Returns MOCK_KEEP, MOCK_CLOSE or -errno (I/O failure: close). */
int mock_respond(int fd, const struct mock_request *req);
/* Sends a bare error (used for malformed HTTP, before a request exists). */
int mock_send_error(int fd, bool anthropic, int status, const char *message, bool close_after);
int mock_send_all(int fd, const void *p, size_t n);

/* shapes.c: the JSON bodies. */
struct mock_script {
        uint64_t n;
        const char *model;
        uint64_t in, out, cached, cache_write, reasoning;
        bool include_usage;
};

json_t *mock_json_string(const char *s, size_t n); /* never fails on bad UTF-8 */
json_t *mock_chat_usage(const struct mock_script *s);
json_t *mock_chat_json(const struct mock_script *s, const char *text);
json_t *mock_chat_chunk(const struct mock_script *s, json_t *delta, const char *finish_reason);
json_t *mock_responses_json(const struct mock_script *s, const char *text, bool completed);
json_t *mock_embeddings_json(const struct mock_script *s);
json_t *mock_messages_json(const struct mock_script *s, const char *text);
json_t *mock_messages_start(const struct mock_script *s);
json_t *mock_models_json(bool anthropic);
/* true when model may be served (no --models, or one of them) */
bool mock_model_known(const char *model);
json_t *mock_error_json(bool anthropic, int status, const char *model, const char *message);
