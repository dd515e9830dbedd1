/* SPDX-License-Identifier: MIT */
#pragma once

/* kb-bench: keybroker's load generator. kb-bench.c holds the command line
 * and the closed-loop curl load; hold.c holds the raw-socket "idle" and
 * "streams" modes used to measure the broker's memory per connection;
 * hist.c the latency histogram. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Latencies in µs. Exact below 2048 µs, then log-linear with 1024
 * sub-buckets per power of two (≤0.1% error): bounded memory however long
 * the run. */
#define BENCH_HIST_LINEAR 2048u
#define BENCH_HIST_SUB 1024u
#define BENCH_HIST_MAX_SHIFT 40u
#define BENCH_HIST_BUCKETS (BENCH_HIST_LINEAR + BENCH_HIST_MAX_SHIFT * BENCH_HIST_SUB)

struct bench_hist {
        uint64_t *counts; /* BENCH_HIST_BUCKETS */
        uint64_t n;
        uint64_t min;
        uint64_t max;
        uint64_t sum;
};

int bench_hist_init(struct bench_hist *h);
void bench_hist_done(struct bench_hist *h);
void bench_hist_add(struct bench_hist *h, uint64_t usec);
/* p in [0, 100]; 0 when empty. */
uint64_t bench_hist_percentile(const struct bench_hist *h, double p);
/* Exposed for the self-check in kb-bench's "selftest" mode. */
size_t bench_hist_index(uint64_t usec);
uint64_t bench_hist_value(size_t idx);

#define BENCH_MAX_HEADERS 32

struct bench_hold_opts {
        const char *unix_socket;
        const char *path;       /* request path; default per mode */
        const char *body;       /* streams: the JSON body */
        const char *headers[BENCH_MAX_HEADERS];
        size_t n_headers;
        unsigned connections;
        double hold_sec;        /* how long to hold once established */
        double setup_sec;       /* give up establishing after this long */
        bool stream;            /* false: idle keep-alive; true: open SSE streams */
        bool burst;             /* kb-bench burst: read every answer to its end, timed */
        const char *dump;       /* burst: one JSON line per connection to this file */
};

int bench_hold(const struct bench_hold_opts *o);
int bench_burst(const struct bench_hold_opts *o);

/* Set by SIGINT/SIGTERM: end the run early, still reporting. */
bool bench_stop_requested(void);

/* Raise RLIMIT_NOFILE so that n sockets (plus slack) fit; best effort. */
void bench_raise_nofile(unsigned n);
