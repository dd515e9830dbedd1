/* SPDX-License-Identifier: MIT */
/* The response head of an upstream call: the status line and header lines
 * as curl hands them over (an interim 1xx block forgotten, folded lines
 * joined), kept in one buffer and handed to the owner's on_response once. */

#include <string.h>

#include "upstream-internal.h"

int kb_upstream_deliver_response(struct kb_upstream_call *c) {
        _cleanup_free_ struct kb_http_header *h = NULL;
        const char *p;
        long status;
        int r;

        if (c->response_sent)
                return 0;
        c->response_sent = true;

        if (!c->ops.on_response)
                return 0;

        status = c->status;
        if (status <= 0)
                (void) curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);

        if (c->n_hdrs > 0) {
                h = calloc(c->n_hdrs, sizeof(*h));
                if (!h)
                        return -ENOMEM;
                p = c->hdrs.data;
                for (size_t i = 0; i < c->n_hdrs; i++) {
                        h[i].name = p;
                        p += strlen(p) + 1;
                        h[i].value = p;
                        p += strlen(p) + 1;
                }
        }

        r = c->ops.on_response(c->userdata, status, h, c->n_hdrs);
        /* The head is the owner's only during the call; a stream held for
         * minutes should not keep it. */
        kb_buf_free(&c->hdrs);
        c->n_hdrs = 0;
        return r;
}

static bool is_ws(char ch) {
        return ch == ' ' || ch == '\t';
}

static long parse_status_line(const char *s, size_t n) {
        size_t i = 5; /* after "HTTP/" */
        long v = 0;

        while (i < n && !is_ws(s[i]))
                i++;
        while (i < n && is_ws(s[i]))
                i++;
        if (n - i < 3)
                return 0;
        for (size_t k = 0; k < 3; k++) {
                if (s[i + k] < '0' || s[i + k] > '9')
                        return 0;
                v = v * 10 + (s[i + k] - '0');
        }
        return v;
}

int kb_upstream_head_line(struct kb_upstream_call *c, const char *s, size_t n) {
        const char *colon, *name, *value;
        size_t nlen, vlen;
        int r;

        while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == '\n'))
                n--;

        if (n >= 5 && memcmp(s, "HTTP/", 5) == 0) {
                /* a new response block: an interim 1xx one is forgotten */
                kb_buf_clear(&c->hdrs);
                c->n_hdrs = 0;
                c->status = parse_status_line(s, n);
                if ((c->status >= 200 || c->status < 100) && c->ttfb_usec == 0)
                        c->ttfb_usec = MAX(kb_now_usec() - c->start_usec, UINT64_C(1));
                return 0;
        }
        if (n == 0)
                return 0;

        if (is_ws(s[0])) {
                /* obsolete line folding: continues the previous value */
                if (c->n_hdrs == 0)
                        return 0;
                while (n > 0 && is_ws(s[0]))
                        s++, n--;
                while (n > 0 && is_ws(s[n - 1]))
                        n--;
                c->hdrs.len--; /* drop the value's NUL */
                r = kb_buf_append(&c->hdrs, " ", 1);
                if (r >= 0)
                        r = kb_buf_append(&c->hdrs, s, n);
                if (r >= 0)
                        r = kb_buf_append(&c->hdrs, "", 1);
                return r;
        }

        colon = memchr(s, ':', n);
        if (!colon)
                return 0; /* not a header; curl tolerated it, so do we */

        name = s;
        nlen = colon - s;
        while (nlen > 0 && is_ws(name[nlen - 1]))
                nlen--;
        value = colon + 1;
        vlen = n - (value - s);
        while (vlen > 0 && is_ws(value[0]))
                value++, vlen--;
        while (vlen > 0 && is_ws(value[vlen - 1]))
                vlen--;
        if (nlen == 0 || memchr(name, 0, nlen) || memchr(value, 0, vlen))
                return 0;

        r = kb_buf_reserve(&c->hdrs, nlen + vlen + 2);
        if (r < 0)
                return r;
        (void) kb_buf_append(&c->hdrs, name, nlen);
        (void) kb_buf_append(&c->hdrs, "", 1);
        (void) kb_buf_append(&c->hdrs, value, vlen);
        (void) kb_buf_append(&c->hdrs, "", 1);
        c->n_hdrs++;
        return 0;
}
