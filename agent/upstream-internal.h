/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 10 of 12, transport: calls layer 12. */

/* Shared by upstream.c (the transfer machinery on sd-event),
 * upstream-head.c (the response head) and upstream-sockets.c (connection
 * sockets: counting them, telling our own lack of fds from a provider's
 * refusal). Not for other modules. */

#include <curl/curl.h>
#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "ioset.h"
#include "upstream.h"
#include "util.h"

/* A socket of curl's, watched in the upstream's ioset. */
struct kb_sock {
        struct kb_io *io;
        struct kb_sock *prev, *next;
};

struct kb_upstream_call {
        struct kb_upstream *u;
        struct kb_upstream_call *prev, *next;
        CURL *easy;
        struct curl_slist *slist;
        struct kb_upstream_ops ops;
        void *userdata;

        bool added;             /* in the multi handle */
        bool cancelled;         /* zombie: no callbacks any more, reaped when curl is left */
        bool in_done;           /* on_done is running; freed right after */
        bool paused;
        bool send_paused;       /* read_body had nothing: curl waits for body_ready */
        bool resume_pending;    /* resume asked for while inside curl */
        bool response_sent;     /* on_response was called */
        bool finishing;         /* curl reported it done; on_response may still run */
        bool opened_socket;     /* curl opened a connection's socket for this call */
        bool connected;         /* on a connection (new or reused), request about to go */
        int own_error;          /* -EMFILE/-ENFILE: our socket() failed, not the provider */
        int abort_error;        /* why one of our callbacks aborted the transfer */
        int fail_error;         /* ended outside curl (add failed, resume failed): on_done via defer */

        long status;
        struct kb_buf hdrs;     /* "name\0value\0" pairs of the current response block */
        size_t n_hdrs;
        size_t header_bytes;    /* all header bytes seen, never reset */

        uint64_t start_usec;
        uint64_t ttfb_usec;
        char errbuf[CURL_ERROR_SIZE];
};

struct kb_upstream {
        sd_event *event;
        CURLM *multi;
        sd_event_source *timer;
        sd_event_source *defer;
        struct kb_ioset *sockets;       /* curl's sockets: one loop source for all of them */
        struct kb_upstream_call *calls;
        struct kb_sock *socks;
        unsigned busy;          /* nesting depth of calls into curl that may run our callbacks */
        size_t n_calls;         /* calls the caller still owns (not cancelled, not done) */
        bool need_kick;         /* run curl_multi_socket_action(TIMEOUT) from the defer source */
        size_t n_sockets;       /* connection sockets open (in use or cached by curl) */
        uint64_t n_fd_failures; /* calls that ended because we were out of fds */
};

/* upstream-sockets.c */
/* error, or -EMFILE/-ENFILE when the failure was our own lack of fds. */
int upstream_own_fault(struct kb_upstream_call *c, int error);
/* curl's open/close-socket and pre-request hooks (CURLOPT_*FUNCTION). */
curl_socket_t upstream_on_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a);
int upstream_on_close_socket(void *clientp, curl_socket_t fd);
int upstream_on_prereq(void *clientp, char *primary_ip, char *local_ip, int primary_port, int local_port);

/* upstream-head.c: one header line from curl (the status line, a header, a
 * folded continuation, the blank end); 0 or -ENOMEM. */
int kb_upstream_head_line(struct kb_upstream_call *c, const char *s, size_t n);
/* upstream-head.c: on_response with the status and headers, once; its
 * return value (or -ENOMEM). */
int kb_upstream_deliver_response(struct kb_upstream_call *c);
