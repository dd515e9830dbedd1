/* SPDX-License-Identifier: MIT */
/* keybrokerctl: aligned tables (like `systemctl list-units`), key: value
 * lines, and the small formatting helpers they need. */

#include <time.h>

#include "ctl.h"
#include "util.h"

/* Far more than any host has keys, teams or routes; a bound all the same. */
#define CTL_TABLE_MAX_ROWS 100000

struct ctl_table {
        size_t n_columns;
        char **cells;                   /* (1 + n_rows) * n_columns; row 0 = headers */
        size_t n_rows;                  /* without the header row */
        size_t cap_rows;
};

struct ctl_table *ctl_table_free(struct ctl_table *t) {
        if (!t)
                return NULL;
        for (size_t i = 0; i < (t->n_rows + 1) * t->n_columns; i++)
                free(t->cells[i]);
        free(t->cells);
        free(t);
        return NULL;
}

static int add_row(struct ctl_table *t, const char *const *cells, bool header) {
        size_t row = header ? 0 : t->n_rows + 1;

        if (!header && t->n_rows >= CTL_TABLE_MAX_ROWS)
                return -E2BIG;
        if (row + 1 > t->cap_rows) {
                size_t cap = MAX(t->cap_rows * 2, (size_t) 8);
                char **n = reallocarray(t->cells, cap * t->n_columns, sizeof(char *));
                if (!n)
                        return -ENOMEM;
                t->cells = n;
                t->cap_rows = cap;
        }
        for (size_t i = 0; i < t->n_columns; i++) {
                const char *s = cells[i] && cells[i][0] ? cells[i] : "-";
                t->cells[row * t->n_columns + i] = strdup(s);
                if (!t->cells[row * t->n_columns + i]) {
                        while (i-- > 0)
                                free(t->cells[row * t->n_columns + i]);
                        return -ENOMEM;
                }
        }
        if (!header)
                t->n_rows++;
        return 0;
}

struct ctl_table *ctl_table_new(const char *const *headers, size_t n_columns) {
        struct ctl_table *t;

        if (n_columns == 0)
                return NULL;
        t = calloc(1, sizeof(*t));
        if (!t)
                return NULL;
        t->n_columns = n_columns;
        if (add_row(t, headers, true) < 0) {
                free(t->cells);
                free(t);
                return NULL;
        }
        return t;
}

int ctl_table_add_row(struct ctl_table *t, const char *const *cells) {
        return add_row(t, cells, false);
}

size_t ctl_table_rows(const struct ctl_table *t) {
        return t ? t->n_rows : 0;
}

/* Display width: count UTF-8 lead bytes, not bytes, so that a team owner
 * with an accent does not shift the columns. */
static size_t width(const char *s) {
        size_t w = 0;

        for (; *s; s++)
                if (((unsigned char) *s & 0xC0) != 0x80)
                        w++;
        return w;
}

/* Cells come from the daemon; a control character in one must not move the
 * terminal's cursor. */
static void put_cell(FILE *f, const char *s) {
        for (; *s; s++) {
                unsigned char c = (unsigned char) *s;
                fputc(c < 0x20 || c == 0x7f ? '?' : c, f);
        }
}

void ctl_table_print(const struct ctl_table *t, FILE *f) {
        _cleanup_free_ size_t *w = NULL;

        if (!t)
                return;
        w = calloc(t->n_columns, sizeof(size_t));
        if (!w)
                return;
        for (size_t r = 0; r <= t->n_rows; r++)
                for (size_t c = 0; c < t->n_columns; c++)
                        w[c] = MAX(w[c], width(t->cells[r * t->n_columns + c]));

        for (size_t r = 0; r <= t->n_rows; r++) {
                for (size_t c = 0; c < t->n_columns; c++) {
                        const char *s = t->cells[r * t->n_columns + c];
                        put_cell(f, s);
                        if (c + 1 < t->n_columns)
                                fprintf(f, "%*s", (int) (w[c] - width(s) + 2), "");
                }
                fputc('\n', f);
        }
}

void ctl_print_kv(FILE *f, const char *const *keys, const char *const *values, size_t n) {
        size_t w = 0;

        for (size_t i = 0; i < n; i++)
                w = MAX(w, width(keys[i]));
        for (size_t i = 0; i < n; i++) {
                fprintf(f, "%s:%*s", keys[i], (int) (w - width(keys[i]) + 1), "");
                put_cell(f, values[i] && values[i][0] ? values[i] : "-");
                fputc('\n', f);
        }
}

int ctl_print_json(const json_t *j) {
        _cleanup_free_ char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);

        if (!s) {
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return -1;
        }
        printf("%s\n", s);
        return 0;
}

const char *ctl_format_time(const char *iso, char *buf, size_t size) {
        struct tm tm = {}, local;
        const char *end;
        time_t t;

        if (!iso || !iso[0]) {
                snprintf(buf, size, "-");
                return buf;
        }
        end = strptime(iso, "%Y-%m-%dT%H:%M:%S", &tm);
        /* Fractions of a second would only widen the column. */
        if (end && *end == '.')
                end += 1 + strspn(end + 1, "0123456789");
        if (!end || !streq(end, "Z") || (t = timegm(&tm)) == (time_t) -1 || !localtime_r(&t, &local) ||
            strftime(buf, size, "%Y-%m-%d %H:%M:%S %Z", &local) == 0)
                snprintf(buf, size, "%s", iso);
        return buf;
}

const char *ctl_json_scalar(const json_t *v, char *buf, size_t size) {
        if (json_is_integer(v))
                snprintf(buf, size, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        else if (json_is_real(v))
                snprintf(buf, size, "%g", json_real_value(v));
        else if (json_is_string(v))
                snprintf(buf, size, "%s", json_string_value(v));
        else if (json_is_true(v))
                snprintf(buf, size, "yes");
        else if (json_is_false(v))
                snprintf(buf, size, "no");
        else
                snprintf(buf, size, "-");
        return buf;
}
