/* SPDX-License-Identifier: MIT */
/* multipart/form-data (RFC 7578, RFC 2046 section 5.1): the boundary from
 * the content-type, then each part's headers (Content-Disposition's name
 * and filename, Content-Type) and bytes, with a SHA-256 of each part for
 * the request log. A part's bytes stay in the request body (mapped when
 * large); the scan for the next delimiter hashes and gives back the pages
 * it has passed, so a 1 GiB part costs a few MiB of memory. */

#include "mock.h"

#include <errno.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util.h"

#define MOCK_MAX_PARTS 1000
#define MOCK_MAX_PART_HEADERS (16 * 1024)
#define MOCK_PART_VALUE_MAX 4096
/* the delimiter search works through a large part this much at a time */
#define MOCK_SCAN_WINDOW ((size_t) 4 << 20)

static bool is_space(char c) {
        return c == ' ' || c == '\t';
}

/* The value of parameter key in "type; a=b; key="v"" (from after the first
 * ';'), unquoted (backslash escapes undone); NULL when absent or on OOM. */
static char *header_param(const char *s, size_t n, const char *key) {
        const char *end = s + n, *p = memchr(s, ';', n);
        size_t klen = strlen(key);

        while (p && p < end) {
                p++; /* past ';' */
                while (p < end && is_space(*p))
                        p++;
                const char *k = p;
                while (p < end && *p != '=' && *p != ';')
                        p++;
                const char *kend = p;
                while (kend > k && is_space(kend[-1]))
                        kend--;
                bool match = (size_t) (kend - k) == klen && strncasecmp(k, key, klen) == 0;
                if (p >= end || *p == ';')
                        continue;
                p++; /* past '=' */
                while (p < end && is_space(*p))
                        p++;
                _cleanup_(kb_buf_free) struct kb_buf v = {};
                if (p < end && *p == '"') {
                        for (p++; p < end && *p != '"'; p++) {
                                if (*p == '\\' && p + 1 < end)
                                        p++;
                                if (match && kb_buf_append(&v, p, 1) < 0)
                                        return NULL;
                        }
                        if (p < end)
                                p++; /* the closing quote */
                        while (p < end && *p != ';')
                                p++;
                } else {
                        const char *vs = p;
                        while (p < end && *p != ';')
                                p++;
                        const char *ve = p;
                        while (ve > vs && is_space(ve[-1]))
                                ve--;
                        if (match && kb_buf_append(&v, vs, (size_t) (ve - vs)) < 0)
                                return NULL;
                }
                if (match)
                        return v.data ? TAKE_PTR(v.data) : strdup("");
        }
        return NULL;
}

static bool is_multipart(const char *ct) {
        static const char type[] = "multipart/form-data";
        if (!ct)
                return false;
        while (is_space(*ct))
                ct++;
        if (strncasecmp(ct, type, sizeof(type) - 1) != 0)
                return false;
        char c = ct[sizeof(type) - 1];
        return c == 0 || c == ';' || is_space(c);
}

static int fail(struct mock_request *req, const char *fmt, ...) _printf_(2, 3);
static int fail(struct mock_request *req, const char *fmt, ...) {
        va_list ap;
        _cleanup_free_ char *what = NULL;
        va_start(ap, fmt);
        int k = vasprintf(&what, fmt, ap);
        va_end(ap);
        if (k < 0)
                return -ENOMEM;
        if (asprintf(&req->multipart_error, "Malformed multipart/form-data body: %s", what) < 0) {
                req->multipart_error = NULL;
                return -ENOMEM;
        }
        return 0;
}

static void hex(const unsigned char *d, size_t n, char *out) {
        static const char digits[] = "0123456789abcdef";
        for (size_t i = 0; i < n; i++) {
                out[2 * i] = digits[d[i] >> 4];
                out[2 * i + 1] = digits[d[i] & 15];
        }
        out[2 * n] = 0;
}

/* The next "\r\n--boundary" at or after from, hashing the bytes before it
 * into st; NULL when there is none. Works window by window, giving back a
 * mapped body's pages behind it. */
static const char *find_delimiter(const struct mock_request *req, size_t from, const char *delim, size_t dlen,
                                  crypto_hash_sha256_state *st) {
        size_t c = from;
        for (;;) {
                size_t left = req->body_len - c;
                size_t span = MIN(left, MOCK_SCAN_WINDOW + dlen - 1);
                const char *f = memmem(req->body + c, span, delim, dlen);
                if (f) {
                        crypto_hash_sha256_update(st, (const unsigned char *) req->body + c,
                                                  (unsigned long long) (f - (req->body + c)));
                        return f;
                }
                if (span == left)
                        return NULL;
                crypto_hash_sha256_update(st, (const unsigned char *) req->body + c, MOCK_SCAN_WINDOW);
                c += MOCK_SCAN_WINDOW;
                mock_body_drop(req, c);
        }
}

/* The header lines of a part, [h, h + n): Content-Disposition and
 * Content-Type. 0, or the failure already recorded (1), or -ENOMEM. */
static int part_headers(struct mock_request *req, struct mock_part *part, size_t index, const char *h, size_t n) {
        const char *end = h + n;
        bool disposition = false;
        while (h < end) {
                const char *eol = memmem(h, (size_t) (end - h), "\r\n", 2) ?: end;
                const char *colon = memchr(h, ':', (size_t) (eol - h));
                if (!colon)
                        return fail(req, "part %zu has a header line without ':'", index + 1) ?: 1;
                size_t nlen = (size_t) (colon - h);
                const char *v = colon + 1;
                while (v < eol && is_space(*v))
                        v++;
                size_t vlen = (size_t) (eol - v);
                if (nlen == strlen("content-disposition") && strncasecmp(h, "content-disposition", nlen) == 0) {
                        disposition = true;
                        free(part->name);
                        free(part->filename);
                        part->name = header_param(v, vlen, "name");
                        part->filename = header_param(v, vlen, "filename");
                } else if (nlen == strlen("content-type") && strncasecmp(h, "content-type", nlen) == 0) {
                        free(part->content_type);
                        part->content_type = strndup(v, vlen);
                        if (!part->content_type)
                                return -ENOMEM;
                }
                h = eol + 2;
        }
        if (!disposition)
                return fail(req, "part %zu has no Content-Disposition header", index + 1) ?: 1;
        if (!part->name)
                return fail(req, "part %zu has no name in its Content-Disposition", index + 1) ?: 1;
        return 0;
}

int mock_multipart_parse(struct mock_request *req) {
        const char *ct = json_string_value(json_object_get(req->headers, "content-type"));
        if (!is_multipart(ct))
                return 0;
        req->multipart = true;

        _cleanup_free_ char *boundary = header_param(ct, strlen(ct), "boundary");
        if (!boundary || !*boundary || strlen(boundary) > 200)
                return fail(req, "no boundary in the content-type");
        _cleanup_free_ char *delim = NULL; /* "\r\n--" boundary */
        if (asprintf(&delim, "\r\n--%s", boundary) < 0)
                return -ENOMEM;
        size_t dlen = strlen(delim);
        const char *body = req->body, *end = body + req->body_len;

        /* The first delimiter: at the very start, or after a preamble. */
        size_t pos;
        crypto_hash_sha256_state scratch;
        crypto_hash_sha256_init(&scratch);
        if (req->body_len >= dlen - 2 && memcmp(body, delim + 2, dlen - 2) == 0)
                pos = dlen - 2;
        else {
                const char *f = find_delimiter(req, 0, delim, dlen, &scratch);
                if (!f)
                        return fail(req, "the boundary \"%s\" does not occur in the body", boundary);
                pos = (size_t) (f - body) + dlen;
        }

        size_t cap = 0;
        for (;;) {
                /* just after a delimiter: "--" closes, else padding and CRLF */
                if (end - (body + pos) >= 2 && memcmp(body + pos, "--", 2) == 0)
                        break;
                while (body + pos < end && is_space(body[pos]))
                        pos++;
                if (end - (body + pos) < 2)
                        return fail(req, "missing closing delimiter \"--%s--\"", boundary);
                if (memcmp(body + pos, "\r\n", 2) != 0)
                        return fail(req, "a delimiter line is not followed by CRLF");
                pos += 2;
                if (body + pos == end)
                        return fail(req, "missing closing delimiter \"--%s--\"", boundary);
                if (req->n_parts >= MOCK_MAX_PARTS)
                        return fail(req, "more than %d parts", MOCK_MAX_PARTS);

                if (end - (body + pos) >= 2 && memcmp(body + pos, "\r\n", 2) == 0)
                        return fail(req, "part %zu has no headers", req->n_parts + 1);
                size_t hspan = MIN((size_t) (end - (body + pos)), (size_t) MOCK_MAX_PART_HEADERS);
                const char *hend = memmem(body + pos, hspan, "\r\n\r\n", 4);
                if (!hend)
                        return fail(req, "the headers of part %zu do not end with an empty line", req->n_parts + 1);

                if (req->n_parts == cap) {
                        size_t ncap = cap ? cap * 2 : 8;
                        struct mock_part *np = realloc(req->parts, ncap * sizeof(*np));
                        if (!np)
                                return -ENOMEM;
                        req->parts = np;
                        cap = ncap;
                }
                struct mock_part *part = &req->parts[req->n_parts++];
                *part = (struct mock_part) {};
                int k = part_headers(req, part, req->n_parts - 1, body + pos, (size_t) (hend - (body + pos)));
                if (k != 0)
                        return k < 0 ? k : 0;

                size_t start = (size_t) (hend - body) + 4;
                crypto_hash_sha256_state st;
                crypto_hash_sha256_init(&st);
                const char *f = start <= req->body_len ? find_delimiter(req, start, delim, dlen, &st) : NULL;
                if (!f)
                        return fail(req, "missing closing delimiter \"--%s--\"", boundary);
                part->data = body + start;
                part->len = (size_t) (f - part->data);
                unsigned char digest[crypto_hash_sha256_BYTES];
                crypto_hash_sha256_final(&st, digest);
                hex(digest, sizeof(digest), part->sha256);
                if (!part->filename && part->len <= MOCK_PART_VALUE_MAX) {
                        part->value = strndup(part->data, part->len);
                        if (!part->value)
                                return -ENOMEM;
                }
                pos = (size_t) (f - body) + dlen;
        }
        mock_body_drop(req, req->body_len);
        return 0;
}

void mock_multipart_free(struct mock_request *req) {
        for (size_t i = 0; i < req->n_parts; i++) {
                free(req->parts[i].name);
                free(req->parts[i].filename);
                free(req->parts[i].content_type);
                free(req->parts[i].value);
        }
        free(req->parts);
        req->parts = NULL;
        req->n_parts = 0;
        free(req->multipart_error);
        req->multipart_error = NULL;
}

const struct mock_part *mock_part(const struct mock_request *req, const char *name) {
        if (req->multipart_error)
                return NULL;
        for (size_t i = 0; i < req->n_parts; i++)
                if (streq_ptr(req->parts[i].name, name))
                        return &req->parts[i];
        return NULL;
}

const char *mock_part_value(const struct mock_request *req, const char *name) {
        const struct mock_part *p = mock_part(req, name);
        return p ? p->value : NULL;
}

json_t *mock_parts_json(const struct mock_request *req) {
        json_t *a = json_array();
        for (size_t i = 0; a && i < req->n_parts; i++) {
                const struct mock_part *p = &req->parts[i];
                json_t *o = json_object();
                if (o && json_object_set_new(o, "name", mock_json_string(p->name ?: "", strlen(p->name ?: ""))) < 0)
                        o = (json_decref(o), NULL);
                if (o && p->filename && json_object_set_new(o, "filename", mock_json_string(p->filename, strlen(p->filename))) < 0)
                        o = (json_decref(o), NULL);
                if (o && p->content_type &&
                    json_object_set_new(o, "content_type", mock_json_string(p->content_type, strlen(p->content_type))) < 0)
                        o = (json_decref(o), NULL);
                if (o && (json_object_set_new(o, "bytes", json_integer((json_int_t) p->len)) < 0 ||
                          json_object_set_new(o, "sha256", json_string(p->sha256)) < 0))
                        o = (json_decref(o), NULL);
                if (o && p->value && json_object_set_new(o, "value", mock_json_string(p->value, p->len)) < 0)
                        o = (json_decref(o), NULL);
                if (json_array_append_new(a, o) < 0) {
                        json_decref(a);
                        return NULL;
                }
        }
        return a;
}
