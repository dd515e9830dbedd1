/* SPDX-License-Identifier: MIT */
/* multipart/form-data as a stream: the input is scanned for the delimiter
 * "\r\n--BOUNDARY"; a tail that could be the start of one is held until the
 * next piece decides. Only the model field's value is ever rewritten. */

#include <strings.h>

#include "multipart.h"

#define KEPT_FIELDS 16

enum state {
        ST_PREAMBLE,    /* before the first delimiter */
        ST_AFTER_DELIM, /* after "--BOUNDARY": "\r\n" (a part) or "--" (the end) */
        ST_HEADERS,     /* a part's header lines, up to the blank line */
        ST_BODY,        /* a part's body, up to the next delimiter */
        ST_EPILOGUE,    /* after the closing delimiter: ignored, passed on */
};

struct field {
        char name[64];
        char value[KB_MULTIPART_FIELD_MAX + 1];
};

struct kb_multipart {
        enum state state;
        char delim[4 + KB_MULTIPART_BOUNDARY_MAX + 1]; /* "\r\n--" + boundary */
        size_t delim_len;
        char *model_out;        /* rewrite the model field to this; NULL: keep */
        const char *error;

        struct kb_buf hold;     /* unprocessed input */
        bool first;             /* the first delimiter may come without its CRLF */

        /* the current part */
        struct kb_buf headers;
        char name[64];
        bool name_too_long;
        bool is_file;
        bool is_model;
        struct kb_buf value;    /* a text field's bytes, up to KB_MULTIPART_FIELD_MAX + 1 */

        kb_multipart_file_cb on_file;
        void *on_file_userdata;
        bool defer;             /* stop at the model field's end until kb_multipart_set_model() */
        bool waiting;           /* stopped there */
        bool part_ended;        /* the current part's end was handled; its delimiter is next */

        size_t parts;
        size_t file_bytes;
        bool have_model;
        struct field kept[KEPT_FIELDS];
        size_t n_kept;
};

static int fail(struct kb_multipart *m, const char *why) {
        m->error = why;
        return -EBADMSG;
}

static bool is_tspecial_free(char c) {
        /* RFC 2046 bchars: DIGIT / ALPHA / "'()+_,-./:=?" and space (not last) */
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               (c && strchr("'()+_,-./:=? ", c));
}

/* The parameter value of name in a header value (quoted or a token); the
 * result is written to buf. false when absent or too long. */
static bool param(const char *v, const char *name, char *buf, size_t size) {
        size_t nl = strlen(name);
        for (const char *p = v; (p = strcasestr(p, name)); p += nl) {
                if (p != v && p[-1] != ';' && p[-1] != ' ' && p[-1] != '\t')
                        continue;
                const char *q = p + nl;
                while (*q == ' ')
                        q++;
                if (*q != '=')
                        continue;
                q++;
                while (*q == ' ')
                        q++;
                size_t n = 0;
                if (*q == '"') {
                        q++;
                        while (*q && *q != '"') {
                                if (*q == '\\' && q[1])
                                        q++;
                                if (n + 1 >= size)
                                        return false;
                                buf[n++] = *q++;
                        }
                        if (*q != '"')
                                return false;
                } else
                        while (*q && *q != ';' && *q != ' ' && *q != '\t') {
                                if (n + 1 >= size)
                                        return false;
                                buf[n++] = *q++;
                        }
                buf[n] = 0;
                return true;
        }
        return false;
}

int kb_multipart_new(const char *content_type, const char *model, struct kb_multipart **ret, const char **ret_why) {
        char boundary[KB_MULTIPART_BOUNDARY_MAX + 2];
        const char *why = NULL;

        if (!content_type || strncasecmp(content_type, "multipart/form-data", 19) != 0)
                why = "Content-Type is not multipart/form-data";
        else if (!param(content_type + 19, "boundary", boundary, sizeof(boundary)) ||
                 strlen(boundary) > KB_MULTIPART_BOUNDARY_MAX)
                why = "multipart/form-data without a boundary, or a boundary longer than 70 characters";
        else {
                size_t n = strlen(boundary);
                if (n == 0 || boundary[n - 1] == ' ')
                        why = "the multipart boundary is empty or ends in a space";
                for (size_t i = 0; !why && i < n; i++)
                        if (!is_tspecial_free(boundary[i]))
                                why = "the multipart boundary holds a character RFC 2046 does not allow";
        }
        if (why) {
                if (ret_why)
                        *ret_why = why;
                return -EINVAL;
        }
        struct kb_multipart *m = calloc(1, sizeof(*m));
        if (!m || (model && !(m->model_out = strdup(model)))) {
                free(m);
                return -ENOMEM;
        }
        m->delim_len = (size_t) snprintf(m->delim, sizeof(m->delim), "\r\n--%s", boundary);
        m->first = true;
        *ret = m;
        return 0;
}

struct kb_multipart *kb_multipart_free(struct kb_multipart *m) {
        if (!m)
                return NULL;
        kb_buf_free(&m->hold);
        kb_buf_free(&m->headers);
        kb_buf_free(&m->value);
        free(m->model_out);
        free(m);
        return NULL;
}

const char *kb_multipart_error(const struct kb_multipart *m) {
        return m && m->error ? m->error : "malformed multipart body";
}

const char *kb_multipart_model(const struct kb_multipart *m) {
        return kb_multipart_field(m, "model");
}

size_t kb_multipart_file_bytes(const struct kb_multipart *m) {
        return m ? m->file_bytes : 0;
}

const char *kb_multipart_field(const struct kb_multipart *m, const char *name) {
        for (size_t i = 0; m && i < m->n_kept; i++)
                if (streq(m->kept[i].name, name))
                        return m->kept[i].value;
        return NULL;
}

/* One part's headers are complete (hdr: the lines, without the blank one). */
static int part_headers(struct kb_multipart *m, const char *hdr, size_t n) {
        bool disposition = false;
        char line[KB_MULTIPART_HEADERS_MAX + 1];

        if (n == 0 || !hdr)
                return fail(m, "a multipart part has no headers (Content-Disposition is required)");
        if (++m->parts > KB_MULTIPART_PARTS_MAX)
                return fail(m, "more than 1024 parts in the multipart body");
        m->name[0] = 0;
        m->name_too_long = m->is_file = m->is_model = false;
        kb_buf_clear(&m->value);
        for (size_t i = 0; i < n;) {
                const char *eol = memmem(hdr + i, n - i, "\r\n", 2);
                size_t len = eol ? (size_t) (eol - (hdr + i)) : n - i;
                memcpy(line, hdr + i, len);
                line[len] = 0;
                i += len + (eol ? 2 : 0);
                const char *colon = strchr(line, ':');
                if (!colon || colon == line || memchr(line, 0, len) || line[0] == ' ' || line[0] == '\t')
                        return fail(m, "a multipart part has a malformed header line");
                if ((size_t) (colon - line) == 19 && strncasecmp(line, "Content-Disposition", 19) == 0) {
                        const char *v = colon + 1;
                        while (*v == ' ' || *v == '\t')
                                v++;
                        if (strncasecmp(v, "form-data", 9) != 0)
                                return fail(m, "a multipart part's Content-Disposition is not form-data");
                        if (disposition)
                                return fail(m, "a multipart part has two Content-Disposition headers");
                        disposition = true;
                        if (!param(v + 9, "name", m->name, sizeof(m->name)))
                                m->name_too_long = true;
                        char fn[1024];
                        m->is_file = param(v + 9, "filename", fn, sizeof(fn)) || strcasestr(v, "filename");
                }
        }
        if (!disposition)
                return fail(m, "a multipart part has no Content-Disposition: form-data header");
        if (m->name_too_long && !m->name[0])
                return fail(m, "a multipart part has no name, or one longer than 63 bytes");
        if (!m->is_file && streq(m->name, "model")) {
                if (m->have_model)
                        return fail(m, "the form has two \"model\" fields");
                m->have_model = true;
                m->is_model = true;
        }
        return 0;
}

/* A part's body bytes. The model's value is held until its part ends;
 * other bytes pass. */
static int part_body(struct kb_multipart *m, const char *p, size_t n, struct kb_buf *out) {
        if (m->is_file) {
                m->file_bytes += n;
                if (m->on_file && n > 0)
                        m->on_file(m->on_file_userdata, m->name, p, n, false);
        }
        else if (m->value.len <= KB_MULTIPART_FIELD_MAX) {
                size_t take = MIN(n, KB_MULTIPART_FIELD_MAX + 1 - m->value.len);
                if (kb_buf_append(&m->value, p, take) < 0)
                        return -ENOMEM;
        }
        if (m->is_model) {
                if (m->value.len > KB_MULTIPART_FIELD_MAX)
                        return fail(m, "the form's \"model\" field is longer than 256 bytes");
                return 0;
        }
        return kb_buf_append(out, p, n);
}

static int part_end(struct kb_multipart *m, struct kb_buf *out) {
        if (m->is_file && m->on_file)
                m->on_file(m->on_file_userdata, m->name, "", 0, true);
        if (m->is_file || m->value.len > KB_MULTIPART_FIELD_MAX || !m->name[0])
                return 0;
        if (m->n_kept < KEPT_FIELDS && !kb_multipart_field(m, m->name)) {
                struct field *f = &m->kept[m->n_kept++];
                snprintf(f->name, sizeof(f->name), "%s", m->name);
                memcpy(f->value, m->value.data ?: "", m->value.len);
                f->value[m->value.len] = 0;
        }
        if (!m->is_model)
                return 0;
        if (m->value.len == 0 || memchr(m->value.data, 0, m->value.len))
                return fail(m, "the form's \"model\" field is empty");
        if (m->defer && !m->model_out) {
                m->waiting = true;
                return 0;
        }
        const char *v = m->model_out ?: m->value.data;
        return kb_buf_append(out, v, m->model_out ? strlen(v) : m->value.len);
}

/* Process what is held; returns how many bytes were used. */
static int step(struct kb_multipart *m, const char *s, size_t n, bool end, struct kb_buf *out, size_t *used) {
        const char *d = m->delim;
        size_t dl = m->delim_len;
        int r;

        *used = 0;
        switch (m->state) {
        case ST_PREAMBLE: {
                /* the first delimiter may open the body without its CRLF */
                if (m->first) {
                        if (n < dl - 2 && !end)
                                return 0;
                        m->first = false;
                        if (n >= dl - 2 && memcmp(s, d + 2, dl - 2) == 0) {
                                r = kb_buf_append(out, s, dl - 2);
                                *used = dl - 2;
                                m->state = ST_AFTER_DELIM;
                                return r;
                        }
                }
                const char *hit = memmem(s, n, d, dl);
                if (!hit) {
                        if (end)
                                return fail(m, "the multipart body has no delimiter line for its boundary");
                        size_t keep = MIN(n, dl - 1);
                        *used = n - keep;
                        return kb_buf_append(out, s, *used);
                }
                *used = (size_t) (hit - s) + dl;
                m->state = ST_AFTER_DELIM;
                return kb_buf_append(out, s, *used);
        }
        case ST_AFTER_DELIM: {
                /* transport padding (spaces, tabs) may follow a delimiter */
                size_t i = 0;
                while (i < n && (s[i] == ' ' || s[i] == '\t'))
                        i++;
                if (n - i < 2) {
                        if (end)
                                return fail(m, "the multipart body ends inside a delimiter line");
                        if (i > 64)
                                return fail(m, "a multipart delimiter line is too long");
                        return 0;
                }
                if (s[i] == '-' && s[i + 1] == '-') {
                        m->state = ST_EPILOGUE;
                } else if (s[i] == '\r' && s[i + 1] == '\n') {
                        m->state = ST_HEADERS;
                        kb_buf_clear(&m->headers);
                } else
                        return fail(m, "a multipart delimiter is followed by something else than CRLF or --");
                *used = i + 2;
                return kb_buf_append(out, s, *used);
        }
        case ST_HEADERS: {
                /* an empty header block: the blank line comes at once */
                if (n >= 2 && m->headers.len == 0 && s[0] == '\r' && s[1] == '\n')
                        return fail(m, "a multipart part has no headers (Content-Disposition is required)");
                const char *hit = memmem(s, n, "\r\n\r\n", 4);
                size_t take = hit ? (size_t) (hit - s) + 4 : n > 3 ? n - 3 : 0;
                if (m->headers.len + take > KB_MULTIPART_HEADERS_MAX)
                        return fail(m, "a multipart part's headers are longer than 8 KiB");
                if (!hit && end)
                        return fail(m, "the multipart body ends inside a part's headers");
                if (kb_buf_append(&m->headers, s, take) < 0 || kb_buf_append(out, s, take) < 0)
                        return -ENOMEM;
                *used = take;
                if (!hit)
                        return 0;
                r = part_headers(m, m->headers.data, m->headers.len - 4);
                m->state = ST_BODY;
                return r;
        }
        case ST_BODY: {
                const char *hit = memmem(s, n, d, dl);
                if (!hit) {
                        if (end)
                                return fail(m, "the multipart body ends inside a part (no closing delimiter)");
                        size_t keep = MIN(n, dl - 1);
                        *used = n - keep;
                        return part_body(m, s, *used, out);
                }
                size_t body = (size_t) (hit - s);
                r = part_body(m, s, body, out);
                if (r >= 0 && !m->part_ended) {
                        r = part_end(m, out);
                        m->part_ended = true;
                }
                if (r >= 0 && m->waiting) {
                        *used = body;   /* the delimiter waits with the rest */
                        return r;
                }
                if (r >= 0)
                        r = kb_buf_append(out, hit, dl);
                *used = body + dl;
                m->part_ended = false;
                m->state = ST_AFTER_DELIM;
                return r;
        }
        case ST_EPILOGUE:
                *used = n;
                return kb_buf_append(out, s, n);
        }
        return -EINVAL;
}

static int run(struct kb_multipart *m, bool end, struct kb_buf *out) {
        size_t off = 0;
        for (;;) {
                if (m->waiting)
                        break;
                enum state before = m->state;
                bool first = m->first;
                size_t used;
                int r = step(m, m->hold.data ? m->hold.data + off : "", m->hold.len - off, end, out, &used);
                if (r < 0)
                        return r;
                off += used;
                if (used == 0 && m->state == before && m->first == first)
                        break;
        }
        if (off > 0) {
                memmove(m->hold.data, m->hold.data + off, m->hold.len - off);
                m->hold.len -= off;
        }
        return 0;
}

int kb_multipart_feed(struct kb_multipart *m, const char *buf, size_t len, struct kb_buf *out) {
        if (m->error)
                return -EBADMSG;
        if (kb_buf_append(&m->hold, buf, len) < 0)
                return -ENOMEM;
        return run(m, false, out);
}

void kb_multipart_on_file(struct kb_multipart *m, kb_multipart_file_cb cb, void *userdata) {
        m->on_file = cb;
        m->on_file_userdata = userdata;
}

void kb_multipart_defer_model(struct kb_multipart *m) {
        m->defer = true;
}

bool kb_multipart_waiting(const struct kb_multipart *m) {
        return m && m->waiting;
}

int kb_multipart_set_model(struct kb_multipart *m, const char *model, struct kb_buf *out) {
        if (!m->waiting)
                return -EINVAL;
        free(m->model_out);
        if (!(m->model_out = strdup(model)))
                return -ENOMEM;
        m->waiting = false;
        int r = kb_buf_append(out, model, strlen(model));
        return r < 0 ? r : run(m, false, out);
}

size_t kb_multipart_model_len(const struct kb_multipart *m) {
        const char *v = kb_multipart_model(m);
        return v ? strlen(v) : 0;
}

int kb_multipart_finish(struct kb_multipart *m, struct kb_buf *out) {
        if (m->error)
                return -EBADMSG;
        if (m->waiting)
                return -EAGAIN;
        int r = run(m, true, out);
        if (r < 0)
                return r;
        if (m->state != ST_EPILOGUE)
                return fail(m, "the multipart body has no closing delimiter");
        return 0;
}
