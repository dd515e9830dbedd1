/* SPDX-License-Identifier: MIT */
#include "json-scan.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

static size_t skip_ws(const char *s, size_t n, size_t i) {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
                i++;
        return i;
}

/* s[i] is the opening quote: the index just past the closing one, or 0. */
static size_t skip_string(const char *s, size_t n, size_t i, bool *ret_escaped) {
        bool escaped = false;

        for (i++; i < n; i++) {
                unsigned char c = (unsigned char) s[i];
                if (c == '"') {
                        if (ret_escaped)
                                *ret_escaped = escaped;
                        return i + 1;
                }
                if (c < 0x20)
                        return 0;
                if (c == '\\') {
                        escaped = true;
                        if (++i >= n)
                                return 0;
                }
        }
        return 0;
}

static bool is_digit(char c) {
        return c >= '0' && c <= '9';
}

/* RFC 8259 number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool is_number(const char *s, size_t n) {
        size_t i = 0;

        if (i < n && s[i] == '-')
                i++;
        if (i < n && s[i] == '0')
                i++;
        else if (i < n && is_digit(s[i]))
                while (i < n && is_digit(s[i]))
                        i++;
        else
                return false;
        if (i < n && s[i] == '.') {
                if (++i >= n || !is_digit(s[i]))
                        return false;
                while (i < n && is_digit(s[i]))
                        i++;
        }
        if (i < n && (s[i] == 'e' || s[i] == 'E')) {
                i++;
                if (i < n && (s[i] == '+' || s[i] == '-'))
                        i++;
                if (i >= n || !is_digit(s[i]))
                        return false;
                while (i < n && is_digit(s[i]))
                        i++;
        }
        return i == n;
}

/* A scalar (number, true, false, null): up to the next delimiter, and
 * only if it is one. */
static size_t skip_scalar(const char *s, size_t n, size_t i) {
        size_t start = i;

        while (i < n && s[i] != 0 && !strchr(",}] \t\r\n", s[i]))
                i++;
        size_t len = i - start;
        if (len == 0)
                return 0;
        if ((len == 4 && (memcmp(s + start, "true", 4) == 0 || memcmp(s + start, "null", 4) == 0)) ||
            (len == 5 && memcmp(s + start, "false", 5) == 0) || is_number(s + start, len))
                return i;
        return 0;
}

/* Any value starting at s[i]: the index just past it, or 0. Scalars are
 * checked; containers only for balance and for strings being closed: their
 * members' grammar is left to whoever parses the value. */
static size_t skip_value(const char *s, size_t n, size_t i) {
        if (i >= n)
                return 0;
        if (s[i] == '"')
                return skip_string(s, n, i, NULL);
        if (s[i] != '{' && s[i] != '[')
                return skip_scalar(s, n, i);

        char stack[KB_JSON_SCAN_MAX_DEPTH];
        size_t depth = 0;
        for (; i < n; i++) {
                char c = s[i];
                if (c == '"') {
                        i = skip_string(s, n, i, NULL);
                        if (i == 0)
                                return 0;
                        i--;
                } else if (c == '{' || c == '[') {
                        if (depth >= KB_JSON_SCAN_MAX_DEPTH)
                                return 0;
                        stack[depth++] = c == '{' ? '}' : ']';
                } else if (c == '}' || c == ']') {
                        if (depth == 0 || stack[depth - 1] != c)
                                return 0;
                        if (--depth == 0)
                                return i + 1;
                }
        }
        return 0;
}

/* One member or element from s[*i] on: *i moves past its value. 0, or a
 * negative errno that ends the scan. */
typedef int (*scan_one_t)(const char *s, size_t n, size_t *i, void *fn, void *userdata);

/* The container at the start of s (open/close: "{}" or "[]"), its items
 * separated by commas, nothing after it but whitespace. */
static int scan_container(const char *s, size_t n, char open, char close, scan_one_t one, void *fn,
                          void *userdata) {
        size_t i = skip_ws(s, n, 0);

        if (!s || i >= n || s[i] != open)
                return -EINVAL;
        i = skip_ws(s, n, i + 1);
        if (i < n && s[i] == close)
                return skip_ws(s, n, i + 1) == n ? 0 : -EINVAL;

        for (;;) {
                int r = one(s, n, &i, fn, userdata);
                if (r < 0)
                        return r;
                i = skip_ws(s, n, i);
                if (i < n && s[i] == ',') {
                        i = skip_ws(s, n, i + 1);
                        continue;
                }
                if (i < n && s[i] == close)
                        return skip_ws(s, n, i + 1) == n ? 0 : -EINVAL;
                return -EINVAL;
        }
}

static int one_member(const char *s, size_t n, size_t *pos, void *fn, void *userdata) {
        kb_json_member_t member = (kb_json_member_t) fn;
        bool escaped = false;
        size_t i = *pos;

        if (i >= n || s[i] != '"')
                return -EINVAL;
        size_t key = i + 1, end = skip_string(s, n, i, &escaped);
        if (end == 0)
                return -EINVAL;
        if (escaped)
                return -EILSEQ;
        size_t key_len = end - 1 - key;
        i = skip_ws(s, n, end);
        if (i >= n || s[i] != ':')
                return -EINVAL;
        i = skip_ws(s, n, i + 1);
        size_t value = i;
        i = skip_value(s, n, i);
        if (i == 0)
                return -EINVAL;
        *pos = i;
        return member(s + key, key_len, s + value, i - value, userdata);
}

static int one_element(const char *s, size_t n, size_t *pos, void *fn, void *userdata) {
        kb_json_element_t element = (kb_json_element_t) fn;
        size_t value = *pos, i = skip_value(s, n, value);

        if (i == 0)
                return -EINVAL;
        *pos = i;
        return element(s + value, i - value, userdata);
}

int kb_json_scan_object(const char *s, size_t n, kb_json_member_t member, void *userdata) {
        return scan_container(s, n, '{', '}', one_member, (void *) member, userdata);
}

int kb_json_scan_array(const char *s, size_t n, kb_json_element_t element, void *userdata) {
        return scan_container(s, n, '[', ']', one_element, (void *) element, userdata);
}
