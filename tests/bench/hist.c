/* SPDX-License-Identifier: MIT */
/* Latency histogram: a fixed bucket array so a long run at high rate keeps
 * a constant footprint; percentiles are read back within 0.1%. */

#include <errno.h>
#include <stdlib.h>
#include <sys/resource.h>

#include "bench.h"

int bench_hist_init(struct bench_hist *h) {
        uint64_t *c = calloc(BENCH_HIST_BUCKETS, sizeof(uint64_t));

        if (!c)
                return -ENOMEM;
        *h = (struct bench_hist) { .counts = c, .min = UINT64_MAX };
        return 0;
}

void bench_hist_done(struct bench_hist *h) {
        if (!h)
                return;
        free(h->counts);
        h->counts = NULL;
}

size_t bench_hist_index(uint64_t v) {
        unsigned msb, shift;

        if (v < BENCH_HIST_LINEAR)
                return (size_t) v;
        msb = 63u - (unsigned) __builtin_clzll(v);      /* ≥ 11 */
        shift = msb - 10u;                               /* ≥ 1 */
        if (shift > BENCH_HIST_MAX_SHIFT)
                return BENCH_HIST_BUCKETS - 1;
        return BENCH_HIST_LINEAR + (size_t) (shift - 1) * BENCH_HIST_SUB +
               (size_t) ((v >> shift) - BENCH_HIST_SUB);
}

/* Midpoint of the bucket: unbiased for values spread across it. */
uint64_t bench_hist_value(size_t idx) {
        uint64_t m;
        unsigned shift;

        if (idx < BENCH_HIST_LINEAR)
                return idx;
        shift = (unsigned) ((idx - BENCH_HIST_LINEAR) / BENCH_HIST_SUB) + 1;
        m = (idx - BENCH_HIST_LINEAR) % BENCH_HIST_SUB + BENCH_HIST_SUB;
        return (m << shift) + (((UINT64_C(1) << shift) - 1) >> 1);
}

void bench_hist_add(struct bench_hist *h, uint64_t usec) {
        h->counts[bench_hist_index(usec)]++;
        h->n++;
        h->sum += usec;
        if (usec < h->min)
                h->min = usec;
        if (usec > h->max)
                h->max = usec;
}

uint64_t bench_hist_percentile(const struct bench_hist *h, double p) {
        uint64_t want, seen = 0, v;

        if (h->n == 0)
                return 0;
        if (p <= 0)
                return h->min;
        if (p >= 100)
                return h->max;
        /* Rank ceil(p% of n), without libm. */
        double r = p / 100.0 * (double) h->n;
        want = (uint64_t) r;
        if ((double) want < r || want == 0)
                want++;
        for (size_t i = 0; i < BENCH_HIST_BUCKETS; i++) {
                seen += h->counts[i];
                if (seen >= want) {
                        v = bench_hist_value(i);
                        /* The bucket's midpoint may lie outside what was seen. */
                        if (v < h->min)
                                v = h->min;
                        if (v > h->max)
                                v = h->max;
                        return v;
                }
        }
        return h->max;
}

void bench_raise_nofile(unsigned n) {
        struct rlimit rl;
        rlim_t want = (rlim_t) n + 256;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= want)
                return;
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
                /* Root may raise the hard limit too; others get what they can. */
                struct rlimit up = { want, want };

                if (setrlimit(RLIMIT_NOFILE, &up) == 0)
                        return;
                want = rl.rlim_max;
        }
        rl.rlim_cur = want;
        (void) setrlimit(RLIMIT_NOFILE, &rl);
}
