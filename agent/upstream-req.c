/* SPDX-License-Identifier: MIT */
/* Checking an upstream request and building its header list, credential
 * included; kept apart from the transfer machinery in upstream.c. */

#include <curl/curl.h>
#include <sodium.h>
#include <strings.h>

#include "upstream.h"
#include "util.h"

struct curl_slist *kb_upstream_slist_wipe_free(struct curl_slist *l) {
        for (struct curl_slist *i = l; i; i = i->next)
                if (i->data)
                        sodium_memzero(i->data, strlen(i->data));
        curl_slist_free_all(l);
        return NULL;
}

static bool has_ctl(const char *s, size_t n) {
        for (size_t i = 0; i < n; i++)
                if ((unsigned char) s[i] < 0x20 && s[i] != '\t')
                        return true;
        return false;
}

static bool is_token(const char *s, size_t n) {
        if (n == 0)
                return false;
        for (size_t i = 0; i < n; i++) {
                unsigned char ch = s[i];
                if (ch <= 0x20 || ch >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", ch))
                        return false;
        }
        return true;
}

/* Headers curl must own (framing, hop-by-hop) and the credential header's
 * name: a caller's copy is dropped rather than sent twice. */
static bool header_dropped(const char *line, size_t nlen, const char *auth_name) {
        static const char *const owned[] = {
                "Content-Length", "Transfer-Encoding", "Expect", "Connection", "Keep-Alive",
                "Proxy-Connection", "TE", "Upgrade", "Host",
        };

        for (size_t i = 0; i < ELEMENTSOF(owned); i++)
                if (kb_header_name_eq(line, nlen, owned[i]))
                        return true;
        return auth_name && kb_header_name_eq(line, nlen, auth_name);
}

int kb_upstream_request_validate(const struct kb_upstream_request *req) {
        if (!req)
                return -EINVAL;

        size_t n;

        if (!req->url || !req->method)
                return -EINVAL;
        if (!streq(req->method, "POST") && !streq(req->method, "GET") && !streq(req->method, "DELETE"))
                return -EINVAL;
        n = strlen(req->url);
        if (n > KB_UPSTREAM_MAX_URL)
                return -E2BIG;
        if (has_ctl(req->url, n) || strchr(req->url, ' ') ||
            (strncasecmp(req->url, "http://", 7) != 0 && strncasecmp(req->url, "https://", 8) != 0))
                return -EINVAL;

        if (req->n_headers > KB_UPSTREAM_MAX_HEADERS)
                return -E2BIG;
        if (req->n_headers > 0 && !req->headers)
                return -EINVAL;
        for (size_t i = 0; i < req->n_headers; i++) {
                const char *h = req->headers[i], *colon;

                if (!h)
                        return -EINVAL;
                n = strlen(h);
                if (n > KB_UPSTREAM_MAX_HEADER_LINE)
                        return -E2BIG;
                colon = strchr(h, ':');
                if (!colon || !is_token(h, colon - h) || has_ctl(h, n))
                        return -EINVAL;
        }

        if (req->auth_name) {
                if (!is_token(req->auth_name, strlen(req->auth_name)) || !req->secret || req->secret_len == 0)
                        return -EINVAL;
                if (req->secret_len > KB_UPSTREAM_MAX_SECRET)
                        return -E2BIG;
                if (req->auth_prefix && has_ctl(req->auth_prefix, strlen(req->auth_prefix)))
                        return -EINVAL;
                /* a CR/LF/NUL in the key would split the request */
                if (has_ctl(req->secret, req->secret_len))
                        return -EINVAL;
        }

        if (req->body_len > 0 && !req->body)
                return -EINVAL;
        if (req->body_len > 0 && !streq(req->method, "POST"))
                return -EINVAL;
        if (req->body_streamed && (!streq(req->method, "POST") || req->body_size < -1))
                return -EINVAL;
        return 0;
}

int kb_upstream_request_headers(const struct kb_upstream_request *req, struct curl_slist **ret) {
        struct curl_slist *list = NULL, *l;
        bool have_ctype = false;
        int r;

        r = kb_upstream_request_validate(req);
        if (r < 0)
                return r;
        if (!ret)
                return -EINVAL;

        for (size_t i = 0; i < req->n_headers; i++) {
                const char *h = req->headers[i];
                size_t nlen = strchr(h, ':') - h;

                if (header_dropped(h, nlen, req->auth_name))
                        continue;
                if (kb_header_name_eq(h, nlen, "Content-Type"))
                        have_ctype = true;
                l = curl_slist_append(list, h);
                if (!l)
                        goto oom;
                list = l;
        }

        /* no 100-continue round trip; and no form content type made up by curl */
        l = curl_slist_append(list, "Expect:");
        if (!l)
                goto oom;
        list = l;
        if (!have_ctype) {
                l = curl_slist_append(list, "Content-Type:");
                if (!l)
                        goto oom;
                list = l;
        }

        if (req->auth_name) {
                const char *prefix = strempty(req->auth_prefix);
                size_t an = strlen(req->auth_name), pn = strlen(prefix);
                size_t sz = an + 2 + pn + req->secret_len + 1;
                char *b = malloc(sz);

                if (!b)
                        goto oom;
                memcpy(b, req->auth_name, an);
                memcpy(b + an, ": ", 2);
                memcpy(b + an + 2, prefix, pn);
                memcpy(b + an + 2 + pn, req->secret, req->secret_len);
                b[sz - 1] = 0;
                l = curl_slist_append(list, b);
                sodium_memzero(b, sz);
                free(b);
                if (!l)
                        goto oom;
                list = l;
        }

        *ret = list;
        return 0;

oom:
        kb_upstream_slist_wipe_free(list);
        return -ENOMEM;
}

static long usec_to_ms(uint64_t usec) {
        uint64_t ms = usec / USEC_PER_MSEC + (usec % USEC_PER_MSEC != 0);
        return ms > (uint64_t) LONG_MAX ? LONG_MAX : (long) ms;
}

int kb_upstream_easy_options(CURL *e, const struct kb_upstream_request *req) {
        bool ok = curl_easy_setopt(e, CURLOPT_URL, req->url) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_2TLS) == CURLE_OK &&
                /* Never park a call behind another's connection whose
                 * multiplexing is still unknown: libcurl 7.88 wakes such
                 * parked calls one finished transfer at a time, so behind
                 * an HTTP/1.1 stream they wait for it to end. A call opens
                 * its own connection instead; established HTTP/2
                 * connections are still shared. */
                curl_easy_setopt(e, CURLOPT_PIPEWAIT, 0L) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, NULL) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L) == CURLE_OK;
        if (!ok)
                return -EIO;

        /* redirects are never followed anyway; curl refuses an empty list */
        (void) curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");

        if (req->timeout_usec > 0 &&
            curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, usec_to_ms(req->timeout_usec)) != CURLE_OK)
                return -EIO;
        if (req->connect_timeout_usec > 0 &&
            curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, usec_to_ms(req->connect_timeout_usec)) != CURLE_OK)
                return -EIO;
        if (req->ca_file && curl_easy_setopt(e, CURLOPT_CAINFO, req->ca_file) != CURLE_OK)
                return -EIO;
        if (req->recv_buffer > 0 &&
            curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long) MAX(req->recv_buffer, UINT32_C(1024))) != CURLE_OK)
                return -EIO;

        if (req->body_streamed) {
                /* POST with the body from the read callback; -1: chunked */
                if (curl_easy_setopt(e, CURLOPT_POST, 1L) != CURLE_OK ||
                    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body_size) != CURLE_OK)
                        return -EIO;
        } else if (streq(req->method, "POST")) {
                /* size first: POSTFIELDS alone would strlen() the body */
                if (curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body_len) != CURLE_OK ||
                    curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body_len > 0 ? req->body : "") != CURLE_OK)
                        return -EIO;
        } else if (curl_easy_setopt(e, CURLOPT_HTTPGET, 1L) != CURLE_OK)
                return -EIO;
        if (streq(req->method, "DELETE") && curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE") != CURLE_OK)
                return -EIO;
        return 0;
}
