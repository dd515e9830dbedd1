/* SPDX-License-Identifier: MIT */
/* `keybrokerctl usage`: per-request records summed into groups, latency
 * percentiles from a bounded histogram, and the three output formats. */

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "usage-report.h"
#include "util.h"

/* ---------------------------------------------------------------- records */

void usage_record_reset(struct usage_record *rec) {
        /* Not memset: the value buffers are large, their lengths suffice. */
        rec->realtime_usec = 0;
        rec->team.len = rec->model.len = rec->route.len = rec->key.len = rec->unit.len = 0;
        rec->host.len = rec->journal_host.len = 0;
        rec->test = false;
        rec->input_tokens = rec->output_tokens = rec->cached_tokens = 0;
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

static const char *const err_names[_USAGE_ERR_MAX] = {
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
        return err_names[e];
}

struct group {
        uint64_t hash;
        char *key;                      /* per --by value: size_t length, bytes */
        size_t key_len;
        const char *val[_USAGE_BY_MAX]; /* into key */
        size_t val_len[_USAGE_BY_MAX];
        struct usage_totals t;
};

struct usage_report {
        usage_by by[_USAGE_BY_MAX];
        size_t n_by;
        struct group **groups;          /* in insertion order, sorted before output */
        size_t n_groups, cap_groups;
        struct group **table;           /* open addressing, power-of-two size */
        size_t table_size;
        bool sorted;
        struct usage_totals total;
};

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

/* ---------------------------------------------------------------- output */

static int cmp_groups(const void *a, const void *b, void *userdata) {
        const struct group *x = *(struct group *const *) a, *y = *(struct group *const *) b;
        const struct usage_report *r = userdata;

        for (size_t i = 0; i < r->n_by; i++) {
                int c = memcmp(x->val[i], y->val[i], MIN(x->val_len[i], y->val_len[i]));
                if (c != 0)
                        return c;
                if (x->val_len[i] != y->val_len[i])
                        return x->val_len[i] < y->val_len[i] ? -1 : 1;
        }
        return 0;
}

static void sort_groups(struct usage_report *r) {
        if (!r->sorted && r->n_groups > 1)
                qsort_r(r->groups, r->n_groups, sizeof(*r->groups), cmp_groups, r);
        r->sorted = true;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n) {
        size_t l;
        uint32_t c;

        if (p[0] < 0x80)
                return 1;
        if (p[0] >= 0xc2 && p[0] <= 0xdf)
                l = 2, c = p[0] & 0x1f;
        else if (p[0] >= 0xe0 && p[0] <= 0xef)
                l = 3, c = p[0] & 0x0f;
        else if (p[0] >= 0xf0 && p[0] <= 0xf4)
                l = 4, c = p[0] & 0x07;
        else
                return 0;
        if (l > n)
                return 0;
        for (size_t i = 1; i < l; i++) {
                if ((p[i] & 0xc0) != 0x80)
                        return 0;
                c = c << 6 | (p[i] & 0x3f);
        }
        /* Overlong forms, surrogates, past U+10FFFF. */
        if ((l == 3 && c < 0x800) || (l == 4 && (c < 0x10000 || c > 0x10ffff)) || (c >= 0xd800 && c <= 0xdfff))
                return 0;
        return l;
}

/* Text for a terminal or a CSV cell: control characters (but keep_ws ones)
 * and invalid UTF-8 become '?'. *ret_width: code points. */
static int sanitize(const char *s, size_t n, bool keep_ws, char **ret, size_t *ret_width) {
        const unsigned char *p = (const unsigned char *) s;
        char *out = malloc(n + 1);
        size_t o = 0, w = 0;

        if (!out)
                return -ENOMEM;
        for (size_t i = 0; i < n;) {
                size_t l = utf8_len(p + i, n - i);
                if (l == 0 || (l == 1 && (p[i] < 0x20 || p[i] == 0x7f) &&
                               !(keep_ws && (p[i] == '\t' || p[i] == '\r' || p[i] == '\n')))) {
                        out[o++] = '?';
                        i++;
                } else {
                        memcpy(out + o, p + i, l);
                        o += l;
                        i += l;
                }
                w++;
        }
        out[o] = 0;
        *ret = out;
        if (ret_width)
                *ret_width = w;
        return 0;
}

#define N_NUM_COLS (5 + _USAGE_ERR_MAX + 2)

static const char *const table_num_headers[N_NUM_COLS] = {
        "REQUESTS", "INPUT", "OUTPUT", "CACHED", "COST_USD",
        "QUOTA", "429", "TIMEOUT", "NOTFOUND", "5XX", "CUT", "ABORT",
        "P50_MS", "P95_MS",
};

/* The numeric cells of a row, as text. empty: what a missing percentile shows. */
static void number_cells(const struct usage_totals *t, char cells[N_NUM_COLS][32], const char *empty) {
        uint64_t v;
        size_t c = 0;

        snprintf(cells[c++], 32, "%" PRIu64, t->requests);
        snprintf(cells[c++], 32, "%" PRIu64, t->input_tokens);
        snprintf(cells[c++], 32, "%" PRIu64, t->output_tokens);
        snprintf(cells[c++], 32, "%" PRIu64, t->cached_tokens);
        usage_format_usd(t->cost_microusd, cells[c++], 32);
        for (size_t e = 0; e < _USAGE_ERR_MAX; e++)
                snprintf(cells[c++], 32, "%" PRIu64, t->errors[e]);
        if (usage_hist_percentile(&t->latency, 50, &v))
                snprintf(cells[c++], 32, "%" PRIu64, v);
        else
                snprintf(cells[c++], 32, "%s", empty);
        if (usage_hist_percentile(&t->latency, 95, &v))
                snprintf(cells[c++], 32, "%" PRIu64, v);
        else
                snprintf(cells[c++], 32, "%s", empty);
}

static int finish(FILE *f) {
        if (fflush(f) != 0 || ferror(f))
                return -EIO;
        return 0;
}

int usage_report_print_table(struct usage_report *r, FILE *f) {
        size_t n_rows, kw[_USAGE_BY_MAX] = {}, nw[N_NUM_COLS] = {};
        char **text = NULL;     /* n_rows * n_by sanitized key cells */
        size_t *tw = NULL;
        char num[N_NUM_COLS][32];
        int k = 0;

        if (!r || !f)
                return -EINVAL;
        sort_groups(r);
        n_rows = r->n_groups;
        text = calloc(MAX(n_rows * r->n_by, (size_t) 1), sizeof(char *));
        tw = calloc(MAX(n_rows * r->n_by, (size_t) 1), sizeof(size_t));
        if (!text || !tw) {
                k = -ENOMEM;
                goto out;
        }
        for (size_t i = 0; i < r->n_by; i++)
                kw[i] = strlen(usage_by_to_string(r->by[i]));
        kw[0] = MAX(kw[0], strlen("TOTAL"));
        for (size_t c = 0; c < N_NUM_COLS; c++)
                nw[c] = strlen(table_num_headers[c]);
        for (size_t g = 0; g < n_rows; g++) {
                for (size_t i = 0; i < r->n_by; i++) {
                        const struct group *gr = r->groups[g];
                        size_t x = g * r->n_by + i;
                        if (gr->val_len[i] == 0) {
                                text[x] = strdup("-");
                                tw[x] = 1;
                                k = text[x] ? 0 : -ENOMEM;
                        } else
                                k = sanitize(gr->val[i], gr->val_len[i], false, &text[x], &tw[x]);
                        if (k < 0)
                                goto out;
                        kw[i] = MAX(kw[i], tw[x]);
                }
                number_cells(&r->groups[g]->t, num, "-");
                for (size_t c = 0; c < N_NUM_COLS; c++)
                        nw[c] = MAX(nw[c], strlen(num[c]));
        }
        number_cells(&r->total, num, "-");
        for (size_t c = 0; c < N_NUM_COLS; c++)
                nw[c] = MAX(nw[c], strlen(num[c]));

        /* Header. */
        for (size_t i = 0; i < r->n_by; i++) {
                char h[16];
                size_t l = strlen(usage_by_to_string(r->by[i]));
                for (size_t j = 0; j <= l; j++)
                        {
                                char ch = usage_by_to_string(r->by[i])[j];
                                h[j] = ch >= 'a' && ch <= 'z' ? (char) (ch - 'a' + 'A') : ch;
                        }
                fprintf(f, "%-*s  ", (int) kw[i], h);
        }
        for (size_t c = 0; c < N_NUM_COLS; c++)
                fprintf(f, "%*s%s", (int) nw[c], table_num_headers[c], c + 1 < N_NUM_COLS ? "  " : "\n");

        for (size_t g = 0; g <= n_rows; g++) {
                const struct usage_totals *t = g < n_rows ? &r->groups[g]->t : &r->total;
                for (size_t i = 0; i < r->n_by; i++) {
                        const char *cell = g < n_rows ? text[g * r->n_by + i] : i == 0 ? "TOTAL" : "";
                        size_t w = g < n_rows ? tw[g * r->n_by + i] : strlen(cell);
                        /* Pad by code points, not bytes. */
                        fprintf(f, "%s%*s  ", cell, (int) (kw[i] - w), "");
                }
                number_cells(t, num, "-");
                for (size_t c = 0; c < N_NUM_COLS; c++)
                        fprintf(f, "%*s%s", (int) nw[c], num[c], c + 1 < N_NUM_COLS ? "  " : "\n");
        }
        k = finish(f);
out:
        if (text)
                for (size_t x = 0; x < n_rows * r->n_by; x++)
                        free(text[x]);
        free(text);
        free(tw);
        return k;
}

/* A JSON string: escapes as RFC 8259 requires, invalid UTF-8 as U+FFFD. */
static void json_string(FILE *f, const char *s, size_t n) {
        const unsigned char *p = (const unsigned char *) s;

        fputc('"', f);
        for (size_t i = 0; i < n;) {
                size_t l = utf8_len(p + i, n - i);
                if (l == 0) {
                        fputs("\\ufffd", f);
                        i++;
                        continue;
                }
                if (l == 1) {
                        switch (p[i]) {
                        case '"': fputs("\\\"", f); break;
                        case '\\': fputs("\\\\", f); break;
                        case '\n': fputs("\\n", f); break;
                        case '\r': fputs("\\r", f); break;
                        case '\t': fputs("\\t", f); break;
                        default:
                                if (p[i] < 0x20 || p[i] == 0x7f)
                                        fprintf(f, "\\u%04x", p[i]);
                                else
                                        fputc(p[i], f);
                        }
                } else
                        fwrite(p + i, 1, l, f);
                i += l;
        }
        fputc('"', f);
}

static void json_totals(FILE *f, const struct usage_totals *t) {
        char usd[32];
        uint64_t v;

        fprintf(f, "\"requests\":%" PRIu64 ",\"input_tokens\":%" PRIu64 ",\"output_tokens\":%" PRIu64
                   ",\"cached_tokens\":%" PRIu64 ",\"cost_usd\":%s,\"cost_microusd\":%" PRId64 ",\"errors\":{",
                t->requests, t->input_tokens, t->output_tokens, t->cached_tokens,
                usage_format_usd(t->cost_microusd, usd, sizeof(usd)), t->cost_microusd);
        for (size_t e = 0; e < _USAGE_ERR_MAX; e++)
                fprintf(f, "%s\"%s\":%" PRIu64, e ? "," : "", err_names[e], t->errors[e]);
        fputs("},\"latency_p50_ms\":", f);
        if (usage_hist_percentile(&t->latency, 50, &v))
                fprintf(f, "%" PRIu64, v);
        else
                fputs("null", f);
        fputs(",\"latency_p95_ms\":", f);
        if (usage_hist_percentile(&t->latency, 95, &v))
                fprintf(f, "%" PRIu64, v);
        else
                fputs("null", f);
}

int usage_report_print_json(struct usage_report *r, FILE *f) {
        if (!r || !f)
                return -EINVAL;
        sort_groups(r);
        fputs("{\"by\":[", f);
        for (size_t i = 0; i < r->n_by; i++)
                fprintf(f, "%s\"%s\"", i ? "," : "", usage_by_to_string(r->by[i]));
        fputs("],\"groups\":[", f);
        for (size_t g = 0; g < r->n_groups; g++) {
                fputs(g ? ",\n{" : "\n{", f);
                for (size_t i = 0; i < r->n_by; i++) {
                        fprintf(f, "\"%s\":", usage_by_to_string(r->by[i]));
                        json_string(f, r->groups[g]->val[i], r->groups[g]->val_len[i]);
                        fputc(',', f);
                }
                json_totals(f, &r->groups[g]->t);
                fputc('}', f);
        }
        fputs("],\n\"total\":{", f);
        json_totals(f, &r->total);
        fputs("}}\n", f);
        return finish(f);
}

static int csv_text(FILE *f, const char *s, size_t n) {
        _cleanup_free_ char *t = NULL;
        bool formula = n > 0 && strchr("=+-@\t\r", s[0]);
        int k;

        k = sanitize(s, n, true, &t, NULL);
        if (k < 0)
                return k;
        if (!formula && !strpbrk(t, ",\"\r\n") && !(t[0] == ' ' || (t[0] && t[strlen(t) - 1] == ' '))) {
                fputs(t, f);
                return 0;
        }
        fputc('"', f);
        if (formula)
                fputc('\'', f);
        for (const char *p = t; *p; p++) {
                if (*p == '"')
                        fputc('"', f);
                fputc(*p, f);
        }
        fputc('"', f);
        return 0;
}

int usage_report_print_csv(struct usage_report *r, FILE *f) {
        static const char *const num_headers[5] = {
                "requests", "input_tokens", "output_tokens", "cached_tokens", "cost_usd",
        };
        char num[N_NUM_COLS][32];
        int k;

        if (!r || !f)
                return -EINVAL;
        sort_groups(r);
        for (size_t i = 0; i < r->n_by; i++)
                fprintf(f, "%s,", usage_by_to_string(r->by[i]));
        for (size_t c = 0; c < ELEMENTSOF(num_headers); c++)
                fprintf(f, "%s,", num_headers[c]);
        for (size_t e = 0; e < _USAGE_ERR_MAX; e++)
                fprintf(f, "%s,", err_names[e]);
        fputs("latency_p50_ms,latency_p95_ms\n", f);
        for (size_t g = 0; g < r->n_groups; g++) {
                for (size_t i = 0; i < r->n_by; i++) {
                        k = csv_text(f, r->groups[g]->val[i], r->groups[g]->val_len[i]);
                        if (k < 0)
                                return k;
                        fputc(',', f);
                }
                number_cells(&r->groups[g]->t, num, "");
                for (size_t c = 0; c < N_NUM_COLS; c++)
                        fprintf(f, "%s%s", num[c], c + 1 < N_NUM_COLS ? "," : "\n");
        }
        return finish(f);
}
