/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 10 of 12, transport: calls layer 12. */

/* Calls to providers: libcurl's multi interface driven by the sd-event loop
 * (curl's sockets are io sources, its timer a loop timer, as systemd's importd
 * does), HTTP/2 where offered, connections reused across calls, credential
 * injection with the header buffers wiped after use, streaming with
 * pause/resume for backpressure. Never logs. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <curl/curl.h>
#include <systemd/sd-event.h>

#include "http.h"

struct kb_upstream;
struct kb_upstream_call;

/* Hard limits checked by kb_upstream_start() (-E2BIG beyond them). Caller
 * headers that curl must own (Content-Length, Transfer-Encoding, Expect, Host,
 * Connection and other hop-by-hop ones) and any caller header named like
 * auth_name are dropped, not sent. */
#define KB_UPSTREAM_MAX_URL 8192u
#define KB_UPSTREAM_MAX_HEADERS 128u
#define KB_UPSTREAM_MAX_HEADER_LINE 8192u
#define KB_UPSTREAM_MAX_SECRET 4096u
/* All response header bytes of one call, interim 1xx blocks included; beyond
 * it the call ends with on_done(-EPROTO). */
#define KB_UPSTREAM_MAX_RESPONSE_HEADER_BYTES (64u * 1024u)

struct kb_upstream_request {
        const char *method;             /* "POST", "GET" or "DELETE" */
        const char *url;                /* full URL */
        const char *const *headers;     /* "Name: value" lines, not holding secrets */
        size_t n_headers;
        /* The credential header: "<auth_name>: <auth_prefix><secret>". Built
         * inside upstream.c in a buffer that is zeroed after the request was
         * sent. auth_name NULL = no credential. */
        const char *auth_name;
        const char *auth_prefix;        /* e.g. "Bearer " or "" */
        const char *secret;
        size_t secret_len;
        const void *body;               /* must stay valid until on_done/cancel */
        size_t body_len;
        /* A body produced while the call runs (an upload streamed from the
         * app): read through ops->read_body; body/body_len unused. POST only.
         * body_size: its length, or -1 when unknown (sent chunked). */
        bool body_streamed;
        int64_t body_size;
        uint64_t timeout_usec;          /* whole transfer; 0 = none */
        uint64_t connect_timeout_usec;
        const char *ca_file;            /* NULL = system default; verification always on */
        /* curl's receive buffer in bytes (1024 at least); 0 = curl's own
         * (16 KiB). A stream holds it for its whole life. */
        uint32_t recv_buffer;
};

struct kb_upstream_ops {
        /* The final response's status and headers (interim 1xx skipped), before
         * any body byte. Header names/values are valid only during the call.
         * Return 0, or a negative errno to abort the transfer. */
        int (*on_response)(void *userdata, long status, const struct kb_http_header *headers, size_t n_headers);
        /* Body bytes as they arrive (always consumed). Return 0, or a negative
         * errno to abort. May call kb_upstream_call_pause(). */
        int (*on_data)(void *userdata, const char *buf, size_t len);
        /* A streamed request body: copy up to len bytes into buf. Returns the
         * count, 0 at the end of the body, -EAGAIN when nothing is there yet
         * (sending pauses until kb_upstream_call_body_ready()), or another
         * -errno to abort the call. */
        ssize_t (*read_body)(void *userdata, char *buf, size_t len);
        /* The transfer ended: error 0 = complete, else -ETIMEDOUT (timeout),
         * -ECONNREFUSED / -EHOSTUNREACH (connect failed), -ECONNRESET (cut),
         * -EPROTO (TLS/protocol), -ECANCELED (a callback aborted), -EIO other;
         * -EMFILE / -ENFILE when, before any answer, this process (or the
         * system) had no file descriptor left: the provider is not at fault.
         * message is curl's text, or NULL. The call is freed after this
         * returns. Never called from inside kb_upstream_start(). */
        void (*on_done)(void *userdata, int error, const char *message);
};

int kb_upstream_new(sd_event *e, struct kb_upstream **ret);
/* Cancels every call still running (no on_done). Not from inside one of its
 * calls' callbacks. */
struct kb_upstream *kb_upstream_free(struct kb_upstream *u);

int kb_upstream_start(struct kb_upstream *u, const struct kb_upstream_request *req,
                      const struct kb_upstream_ops *ops, void *userdata, struct kb_upstream_call **ret);
/* Stop receiving (CURLPAUSE_RECV); safe from inside on_data. */
void kb_upstream_call_pause(struct kb_upstream_call *c);
/* Continue; may deliver held data through on_data before returning. Must not
 * be called from inside a callback of the same call. */
void kb_upstream_call_resume(struct kb_upstream_call *c);
/* More of a streamed body is there (or its end): sending goes on. Safe from
 * anywhere but inside read_body. */
void kb_upstream_call_body_ready(struct kb_upstream_call *c);
/* Abort and free; no on_done follows. Accepts NULL. Not from inside its own callbacks. */
void kb_upstream_call_cancel(struct kb_upstream_call *c);
/* Run now what the loop's next pass would (a transfer added since, a
 * resume, a failure to report): for the owner, right after the event that
 * started it, never from inside a callback of this module. */
void kb_upstream_run_deferred(struct kb_upstream *u);
/* Timing of the call: time to first response byte, from start, in µs (0 before). */
uint64_t kb_upstream_call_ttfb_usec(const struct kb_upstream_call *c);
size_t kb_upstream_n_calls(const struct kb_upstream *u);

struct kb_upstream_stats {
        size_t calls;           /* running, as kb_upstream_n_calls() */
        size_t connections;     /* connection sockets open: in use or kept idle for reuse */
        size_t connecting;      /* calls whose own connection is being set up */
        size_t waiting;         /* calls inside curl with no connection yet and none being made for them */
        uint64_t fd_failures;   /* calls ended with -EMFILE/-ENFILE since start */
};
void kb_upstream_get_stats(const struct kb_upstream *u, struct kb_upstream_stats *ret);

/* Helpers of kb_upstream_start(), in upstream-req.c. */
struct curl_slist;
/* 0, or -EINVAL (missing url/method, method not POST/GET, scheme not
 * http(s), control bytes or a bad name in a header, the credential or its
 * prefix, a body without POST) or -E2BIG (a KB_UPSTREAM_MAX_* limit). */
int kb_upstream_request_validate(const struct kb_upstream_request *req);
/* The request's header list for curl: caller headers minus the dropped ones,
 * "Expect:", "Content-Type:" when the caller gave none (no form type made up
 * by curl), and the credential header last. Free it with
 * kb_upstream_slist_wipe_free(). */
int kb_upstream_request_headers(const struct kb_upstream_request *req, struct curl_slist **ret);
/* Zero every string of the list, then free it. Returns NULL. */
struct curl_slist *kb_upstream_slist_wipe_free(struct curl_slist *l);
/* upstream-req.c: the options of a call's easy handle that follow from req
 * (URL, protocols, TLS verification always on, HTTP/2 where offered,
 * timeouts, CA file, the body); upstream.c adds its own callbacks and the
 * header list. 0 or -EIO. */
int kb_upstream_easy_options(CURL *e, const struct kb_upstream_request *req);
