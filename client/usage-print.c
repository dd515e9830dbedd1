/* SPDX-License-Identifier: MIT */
/* `keybrokerctl usage` output: a table for people (columns sized to their
 * widest cell, control characters shown as '?'), JSON and CSV for tools. */

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "usage-report.h"
#include "usage-report-internal.h"
#include "util.h"

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

/* The other billing units come last in a row's cells (CSV keeps the
 * columns it always had first); the table shows each right after COST_USD,
 * and only when the report has any. */
#define N_UNIT_COLS 5
#define N_NUM_COLS (5 + _USAGE_ERR_MAX + 2 + N_UNIT_COLS)
#define FIRST_UNIT_COL (N_NUM_COLS - N_UNIT_COLS)

static const char *const table_num_headers[N_NUM_COLS] = {
        "REQUESTS", "INPUT", "OUTPUT", "CACHED", "COST_USD",
        "QUOTA", "429", "TIMEOUT", "NOTFOUND", "5XX", "CUT", "ABORT",
        "P50_MS", "P95_MS",
        "IMAGES", "AUDIO_S", "VIDEO_S", "CHARS", "BATCHES",
};

static uint64_t unit_total(const struct usage_totals *t, size_t u) {
        const uint64_t v[N_UNIT_COLS] = { t->images, t->audio_msec, t->video_seconds, t->characters, t->batches };
        return v[u];
}

/* Table column order: the first five, the units the report has, the rest.
 * Returns how many columns are shown. */
static size_t table_columns(const struct usage_totals *total, size_t order[N_NUM_COLS]) {
        size_t n = 0;
        for (size_t c = 0; c < 5; c++)
                order[n++] = c;
        for (size_t u = 0; u < N_UNIT_COLS; u++)
                if (unit_total(total, u) > 0)
                        order[n++] = FIRST_UNIT_COL + u;
        for (size_t c = 5; c < FIRST_UNIT_COL; c++)
                order[n++] = c;
        return n;
}

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
        snprintf(cells[c++], 32, "%" PRIu64, t->images);
        snprintf(cells[c++], 32, "%" PRIu64 ".%03u", t->audio_msec / 1000, (unsigned) (t->audio_msec % 1000));
        snprintf(cells[c++], 32, "%" PRIu64, t->video_seconds);
        snprintf(cells[c++], 32, "%" PRIu64, t->characters);
        snprintf(cells[c++], 32, "%" PRIu64, t->batches);
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
        size_t order[N_NUM_COLS], n_cols = table_columns(&r->total, order);
        for (size_t i = 0; i < n_cols; i++)
                fprintf(f, "%*s%s", (int) nw[order[i]], table_num_headers[order[i]], i + 1 < n_cols ? "  " : "\n");

        for (size_t g = 0; g <= n_rows; g++) {
                const struct usage_totals *t = g < n_rows ? &r->groups[g]->t : &r->total;
                for (size_t i = 0; i < r->n_by; i++) {
                        const char *cell = g < n_rows ? text[g * r->n_by + i] : i == 0 ? "TOTAL" : "";
                        size_t w = g < n_rows ? tw[g * r->n_by + i] : strlen(cell);
                        /* Pad by code points, not bytes. */
                        fprintf(f, "%s%*s  ", cell, (int) (kw[i] - w), "");
                }
                number_cells(t, num, "-");
                for (size_t i = 0; i < n_cols; i++)
                        fprintf(f, "%*s%s", (int) nw[order[i]], num[order[i]], i + 1 < n_cols ? "  " : "\n");
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
                fprintf(f, "%s\"%s\":%" PRIu64, e ? "," : "", usage_err_names[e], t->errors[e]);
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
        fprintf(f, ",\"images\":%" PRIu64 ",\"audio_seconds\":%" PRIu64 ".%03u,\"video_seconds\":%" PRIu64
                   ",\"characters\":%" PRIu64 ",\"batches\":%" PRIu64,
                t->images, t->audio_msec / 1000, (unsigned) (t->audio_msec % 1000), t->video_seconds,
                t->characters, t->batches);
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
                fprintf(f, "%s,", usage_err_names[e]);
        fputs("latency_p50_ms,latency_p95_ms,images,audio_seconds,video_seconds,characters,batches\n", f);
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
