/* SPDX-License-Identifier: MIT */
/* `keybrokerctl usage`: per-request records summed into groups, and latency
 * percentiles from a bounded histogram. The output formats: usage-print.c. */

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "usage-report.h"
#include "usage-report-internal.h"
#include "util.h"

/* ---------------------------------------------------------------- records */

void usage_record_reset(struct usage_record *rec) {
        /* Not memset: the value buffers are large, their lengths suffice. */
        rec->realtime_usec = 0;
        rec->team.len = rec->model.len = rec->route.len = rec->key.len = rec->unit.len = 0;
        rec->host.len = rec->journal_host.len = 0;
        rec->test = false;
        rec->input_tokens = rec->output_tokens = rec->cached_tokens = 0;
        rec->images = rec->audio_msec = rec->video_seconds = rec->characters = 0;
        rec->batch = false;
        rec->cost_microusd = 0;
        rec->outcome[0] = 0;
        rec->upstream_status = 0;
        rec->latency_ms = 0;
        rec->has_latency = false;
}

static void set_str(struct usage_str *d, const char *v, size_t len) {
        d->len = MIN(len, sizeof(d->s));
        memcpy(d->s, v, d->len);
}

/* Strict decimal: digits only, no sign, no blanks. */
static bool parse_u64(const char *v, size_t len, uint64_t *ret) {
        uint64_t n = 0;

        if (len == 0 || len > 20)
                return false;
        for (size_t i = 0; i < len; i++) {
                if (v[i] < '0' || v[i] > '9')
                        return false;
                if (__builtin_mul_overflow(n, 10, &n) || __builtin_add_overflow(n, (uint64_t) (v[i] - '0'), &n))
                        return false;
        }
        *ret = n;
        return true;
}

static bool parse_i64(const char *v, size_t len, int64_t *ret) {
        uint64_t m;
        bool neg = len > 0 && v[0] == '-';

        if (!parse_u64(v + neg, len - neg, &m))
                return false;
        if (neg ? m > (uint64_t) INT64_MAX + 1 : m > (uint64_t) INT64_MAX)
                return false;
        *ret = neg ? (int64_t) (0 - m) : (int64_t) m;
        return true;
}

/* "12.345" seconds (at most 3 decimals) as milliseconds. */
static bool parse_msec(const char *v, size_t len, uint64_t *ret) {
        const char *dot = memchr(v, '.', len);
        uint64_t whole = 0, frac = 0;
        size_t wl = dot ? (size_t) (dot - v) : len;
        if (!parse_u64(v, wl, &whole) || whole > UINT64_MAX / 1000)
                return false;
        if (dot) {
                size_t fl = len - wl - 1;
                if (fl == 0 || fl > 3 || !parse_u64(dot + 1, fl, &frac))
                        return false;
                for (size_t i = fl; i < 3; i++)
                        frac *= 10;
        }
        *ret = whole * 1000 + frac;
        return true;
}

#define FIELD_IS(name) (flen == sizeof(name) - 1 && memcmp(f, name, flen) == 0)

int usage_record_parse_item(struct usage_record *rec, const void *data, size_t len) {
        static const char prefix[] = "KEYBROKER_";
        const char *p = data, *eq, *f, *v;
        size_t flen, vlen;
        uint64_t u;

        if (rec && p && len > 10 && memcmp(p, "_HOSTNAME=", 10) == 0) {
                set_str(&rec->journal_host, p + 10, len - 10);
                return 1;
        }
        if (!rec || !p || len <= sizeof(prefix) - 1 || memcmp(p, prefix, sizeof(prefix) - 1) != 0)
                return 0;
        eq = memchr(p, '=', len);
        if (!eq)
                return 0;
        f = p + sizeof(prefix) - 1;
        flen = (size_t) (eq - f);
        v = eq + 1;
        vlen = len - (size_t) (v - p);

        if (FIELD_IS("TEAM"))
                set_str(&rec->team, v, vlen);
        else if (FIELD_IS("MODEL"))
                set_str(&rec->model, v, vlen);
        else if (FIELD_IS("ROUTE"))
                set_str(&rec->route, v, vlen);
        else if (FIELD_IS("KEY"))
                set_str(&rec->key, v, vlen);
        else if (FIELD_IS("PEER_UNIT"))
                set_str(&rec->unit, v, vlen);
        else if (FIELD_IS("INPUT_TOKENS"))
                (void) parse_u64(v, vlen, &rec->input_tokens);
        else if (FIELD_IS("OUTPUT_TOKENS"))
                (void) parse_u64(v, vlen, &rec->output_tokens);
        else if (FIELD_IS("CACHED_TOKENS"))
                (void) parse_u64(v, vlen, &rec->cached_tokens);
        else if (FIELD_IS("IMAGES"))
                (void) parse_u64(v, vlen, &rec->images);
        else if (FIELD_IS("AUDIO_SECONDS"))
                (void) parse_msec(v, vlen, &rec->audio_msec);
        else if (FIELD_IS("VIDEO_SECONDS"))
                (void) parse_u64(v, vlen, &rec->video_seconds);
        else if (FIELD_IS("CHARACTERS"))
                (void) parse_u64(v, vlen, &rec->characters);
        else if (FIELD_IS("BATCH"))
                rec->batch = vlen == 1 && *v == '1';
        else if (FIELD_IS("COST_MICROUSD"))
                (void) parse_i64(v, vlen, &rec->cost_microusd);
        else if (FIELD_IS("OUTCOME")) {
                if (vlen < sizeof(rec->outcome)) {
                        memcpy(rec->outcome, v, vlen);
                        rec->outcome[vlen] = 0;
                }
        } else if (FIELD_IS("UPSTREAM_STATUS")) {
                if (parse_u64(v, vlen, &u) && u <= 999)
                        rec->upstream_status = (unsigned) u;
        } else if (FIELD_IS("LATENCY_MS")) {
                if (parse_u64(v, vlen, &rec->latency_ms))
                        rec->has_latency = true;
        } else if (FIELD_IS("HOST"))
                set_str(&rec->host, v, vlen);
        else if (FIELD_IS("REALTIME_USEC"))
                (void) parse_u64(v, vlen, &rec->realtime_usec); /* its own time beats journald's */
        else if (FIELD_IS("TEST"))
                rec->test = vlen == 1 && v[0] == '1';
        else
                return 0;
        return 1;
}

/* ---------------------------------------------------------------- latency */

static size_t hist_index(uint64_t v) {
        unsigned e, shift;

        if (v < 2 * USAGE_HIST_CHUNK)
                return (size_t) v;
        e = 63 - (unsigned) __builtin_clzll(v);
        shift = e - USAGE_HIST_SUB_BITS;
        return 2 * USAGE_HIST_CHUNK + (size_t) (e - USAGE_HIST_SUB_BITS - 1) * USAGE_HIST_CHUNK +
               (size_t) ((v >> shift) - USAGE_HIST_CHUNK);
}

/* The value a bucket stands for: its midpoint. */
static uint64_t hist_value(size_t i) {
        size_t e, sub;
        unsigned shift;
        uint64_t lo;

        if (i < 2 * USAGE_HIST_CHUNK)
                return i;
        e = (i - 2 * USAGE_HIST_CHUNK) / USAGE_HIST_CHUNK + USAGE_HIST_SUB_BITS + 1;
        sub = (i - 2 * USAGE_HIST_CHUNK) % USAGE_HIST_CHUNK;
        shift = (unsigned) e - USAGE_HIST_SUB_BITS;
        lo = (uint64_t) (USAGE_HIST_CHUNK + sub) << shift;
        return lo + ((UINT64_C(1) << shift) - 1) / 2;
}

int usage_hist_add(struct usage_hist *h, uint64_t v) {
        size_t i = hist_index(v), c = i / USAGE_HIST_CHUNK;

        if (!h->chunks[c]) {
                h->chunks[c] = calloc(USAGE_HIST_CHUNK, sizeof(uint64_t));
                if (!h->chunks[c])
                        return -ENOMEM;
        }
        h->chunks[c][i % USAGE_HIST_CHUNK]++;
        if (h->n == 0 || v < h->min)
                h->min = v;
        if (h->n == 0 || v > h->max)
                h->max = v;
        h->n++;
        return 0;
}

bool usage_hist_percentile(const struct usage_hist *h, unsigned p, uint64_t *ret) {
        uint64_t rank, seen = 0;

        if (!h || h->n == 0 || p == 0 || p > 100)
                return false;
        /* Nearest rank: the smallest value with at least p% at or below it. */
        rank = (uint64_t) (((unsigned __int128) h->n * p + 99) / 100);
        if (rank == 0)
                rank = 1;
        for (size_t c = 0; c < USAGE_HIST_N_CHUNKS; c++) {
                if (!h->chunks[c])
                        continue;
                for (size_t i = 0; i < USAGE_HIST_CHUNK; i++) {
                        seen += h->chunks[c][i];
                        if (seen >= rank) {
                                uint64_t v = hist_value(c * USAGE_HIST_CHUNK + i);
                                /* The extremes are known exactly. */
                                *ret = MAX(MIN(v, h->max), h->min);
                                return true;
                        }
                }
        }
        *ret = h->max;
        return true;
}

void usage_hist_done(struct usage_hist *h) {
        if (!h)
                return;
        for (size_t c = 0; c < USAGE_HIST_N_CHUNKS; c++) {
                free(h->chunks[c]);
                h->chunks[c] = NULL;
        }
        h->n = 0;
}

/* ---------------------------------------------------------------- report */

const char *const usage_err_names[_USAGE_ERR_MAX] = {
        [USAGE_ERR_QUOTA_REJECTED] = "quota_rejected",
        [USAGE_ERR_UPSTREAM_429] = "upstream_429",
        [USAGE_ERR_TIMEOUT] = "timeouts",
        [USAGE_ERR_MODEL_NOT_FOUND] = "model_not_found",
        [USAGE_ERR_UPSTREAM_5XX] = "upstream_5xx",
        [USAGE_ERR_STREAM_INTERRUPTED] = "stream_interrupted",
        [USAGE_ERR_CLIENT_ABORT] = "client_abort",
};

const char *usage_err_to_string(usage_err e) {
        if ((unsigned) e >= _USAGE_ERR_MAX)
                return NULL;
        return usage_err_names[e];
}

int usage_report_new(const usage_by *by, size_t n_by, struct usage_report **ret) {
        struct usage_report *r;

        if (!by || n_by == 0 || n_by > _USAGE_BY_MAX || !ret)
                return -EINVAL;
        for (size_t i = 0; i < n_by; i++) {
                if ((unsigned) by[i] >= _USAGE_BY_MAX)
                        return -EINVAL;
                for (size_t j = 0; j < i; j++)
                        if (by[j] == by[i])
                                return -EINVAL;
        }
        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        memcpy(r->by, by, n_by * sizeof(*by));
        r->n_by = n_by;
        *ret = r;
        return 0;
}

struct usage_report *usage_report_free(struct usage_report *r) {
        if (!r)
                return NULL;
        for (size_t i = 0; i < r->n_groups; i++) {
                usage_hist_done(&r->groups[i]->t.latency);
                free(r->groups[i]->key);
                free(r->groups[i]);
        }
        free(r->groups);
        free(r->table);
        usage_hist_done(&r->total.latency);
        free(r);
        return NULL;
}

size_t usage_report_n_groups(const struct usage_report *r) {
        return r ? r->n_groups : 0;
}

const struct usage_totals *usage_report_total(const struct usage_report *r) {
        return r ? &r->total : NULL;
}


static int table_grow(struct usage_report *r) {
        size_t size = r->table_size ? r->table_size * 2 : 64;
        struct group **t = calloc(size, sizeof(*t));

        if (!t)
                return -ENOMEM;
        for (size_t i = 0; i < r->n_groups; i++) {
                size_t j = r->groups[i]->hash & (size - 1);
                while (t[j])
                        j = (j + 1) & (size - 1);
                t[j] = r->groups[i];
        }
        free(r->table);
        r->table = t;
        r->table_size = size;
        return 0;
}

static int group_new(struct usage_report *r, const char *key, size_t key_len, uint64_t hash, struct group **ret) {
        _cleanup_free_ struct group *g = NULL;
        size_t off = 0, j;
        int k;

        if (r->n_groups >= USAGE_MAX_GROUPS)
                return -E2BIG;
        /* Keep the table at most half full. */
        if ((r->n_groups + 1) * 2 > r->table_size) {
                k = table_grow(r);
                if (k < 0)
                        return k;
        }
        if (r->n_groups == r->cap_groups) {
                size_t cap = MAX(r->cap_groups * 2, (size_t) 16);
                struct group **n = reallocarray(r->groups, cap, sizeof(*n));
                if (!n)
                        return -ENOMEM;
                r->groups = n;
                r->cap_groups = cap;
        }
        g = calloc(1, sizeof(*g));
        if (!g)
                return -ENOMEM;
        g->key = malloc(key_len ? key_len : 1);
        if (!g->key)
                return -ENOMEM;
        memcpy(g->key, key, key_len);
        g->key_len = key_len;
        g->hash = hash;
        for (size_t i = 0; i < r->n_by; i++) {
                memcpy(&g->val_len[i], g->key + off, sizeof(size_t));
                off += sizeof(size_t);
                g->val[i] = g->key + off;
                off += g->val_len[i];
        }
        j = hash & (r->table_size - 1);
        while (r->table[j])
                j = (j + 1) & (r->table_size - 1);
        r->table[j] = g;
        r->groups[r->n_groups++] = g;
        r->sorted = false;
        *ret = TAKE_PTR(g);
        return 0;
}

static int totals_add(struct usage_totals *t, const struct usage_record *rec, const bool err[static _USAGE_ERR_MAX],
                      bool dry_run) {
        struct usage_totals n = *t;

        if (__builtin_add_overflow(n.requests, 1, &n.requests) ||
            __builtin_add_overflow(n.input_tokens, rec->input_tokens, &n.input_tokens) ||
            __builtin_add_overflow(n.output_tokens, rec->output_tokens, &n.output_tokens) ||
            __builtin_add_overflow(n.cached_tokens, rec->cached_tokens, &n.cached_tokens) ||
            __builtin_add_overflow(n.images, rec->images, &n.images) ||
            __builtin_add_overflow(n.audio_msec, rec->audio_msec, &n.audio_msec) ||
            __builtin_add_overflow(n.video_seconds, rec->video_seconds, &n.video_seconds) ||
            __builtin_add_overflow(n.characters, rec->characters, &n.characters) ||
            __builtin_add_overflow(n.batches, (uint64_t) rec->batch, &n.batches) ||
            __builtin_add_overflow(n.cost_microusd, rec->cost_microusd, &n.cost_microusd))
                return -ERANGE;
        for (size_t e = 0; e < _USAGE_ERR_MAX; e++)
                n.errors[e] += err[e];
        if (dry_run)
                return 0;
        if (rec->has_latency) {
                int k = usage_hist_add(&n.latency, rec->latency_ms);
                if (k < 0)
                        return k;
        }
        *t = n;
        return 0;
}

int usage_report_add(struct usage_report *r, const struct usage_record *rec) {
        char key[_USAGE_BY_MAX * (sizeof(size_t) + USAGE_VALUE_MAX)];
        bool err[_USAGE_ERR_MAX] = {};
        struct group *g = NULL;
        char day[16];
        size_t key_len = 0;
        uint64_t hash;
        int k;

        if (!r || !rec)
                return -EINVAL;
        for (size_t i = 0; i < r->n_by; i++) {
                const struct usage_str *s = NULL;
                const char *v;
                size_t l;

                switch (r->by[i]) {
                case USAGE_BY_TEAM: s = &rec->team; break;
                case USAGE_BY_MODEL: s = &rec->model; break;
                case USAGE_BY_ROUTE: s = &rec->route; break;
                case USAGE_BY_KEY: s = &rec->key; break;
                case USAGE_BY_UNIT: s = &rec->unit; break;
                case USAGE_BY_HOST: s = rec->host.len > 0 ? &rec->host : &rec->journal_host; break;
                default: break;
                }
                if (s) {
                        v = s->s;
                        l = MIN(s->len, sizeof(s->s));
                } else {
                        v = usage_format_day(rec->realtime_usec, day, sizeof(day));
                        l = strlen(v);
                }
                memcpy(key + key_len, &l, sizeof(l));
                key_len += sizeof(l);
                memcpy(key + key_len, v, l);
                key_len += l;
        }
        hash = kb_fnv1a64(key, key_len);
        if (r->table_size > 0)
                for (size_t j = hash & (r->table_size - 1); r->table[j]; j = (j + 1) & (r->table_size - 1))
                        if (r->table[j]->hash == hash && r->table[j]->key_len == key_len &&
                            memcmp(r->table[j]->key, key, key_len) == 0) {
                                g = r->table[j];
                                break;
                        }

        err[USAGE_ERR_QUOTA_REJECTED] = streq(rec->outcome, "quota_rejected");
        err[USAGE_ERR_UPSTREAM_429] = rec->upstream_status == 429;
        err[USAGE_ERR_TIMEOUT] = streq(rec->outcome, "upstream_timeout");
        err[USAGE_ERR_MODEL_NOT_FOUND] = streq(rec->outcome, "model_not_found") || rec->upstream_status == 404;
        err[USAGE_ERR_UPSTREAM_5XX] = rec->upstream_status >= 500 && rec->upstream_status <= 599;
        err[USAGE_ERR_STREAM_INTERRUPTED] = streq(rec->outcome, "stream_interrupted");
        err[USAGE_ERR_CLIENT_ABORT] = streq(rec->outcome, "client_abort");

        /* A refused record is counted nowhere: the total is checked first
         * and changed last, after the group's add succeeded. */
        k = totals_add(&r->total, rec, err, true);
        if (k < 0)
                return k;
        if (!g) {
                k = group_new(r, key, key_len, hash, &g);
                if (k < 0)
                        return k;
        }
        k = totals_add(&g->t, rec, err, false);
        if (k < 0)
                return k;
        return totals_add(&r->total, rec, err, false);
}

/* ---------------------------------------------------------------- helpers */

const char *usage_format_usd(int64_t microusd, char *buf, size_t size) {
        uint64_t m = microusd < 0 ? 0 - (uint64_t) microusd : (uint64_t) microusd;

        snprintf(buf, size, "%s%" PRIu64 ".%06" PRIu64, microusd < 0 ? "-" : "", m / 1000000, m % 1000000);
        return buf;
}

const char *usage_format_day(uint64_t realtime_usec, char *buf, size_t size) {
        time_t t = (time_t) (realtime_usec / USEC_PER_SEC);
        struct tm tm;

        if (!gmtime_r(&t, &tm) || strftime(buf, size, "%Y-%m-%d", &tm) == 0)
                snprintf(buf, size, "?");
        return buf;
}

