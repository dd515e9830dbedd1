/* SPDX-License-Identifier: MIT */
/* keybrokerctl: HTTP/1.1 over a Unix socket (libcurl), JSON in and out. */

#include <curl/curl.h>
#include <errno.h>
#include <string.h>

#include "ctl.h"
#include "util.h"

struct sink {
        struct kb_buf buf;
        bool too_big;
};

static size_t collect(char *p, size_t size, size_t n, void *userdata) {
        struct sink *s = userdata;
        size_t len = size * n;

        if (s->buf.len + len > CTL_MAX_RESPONSE) {
                s->too_big = true;
                return 0;
        }
        return kb_buf_append(&s->buf, p, len) < 0 ? 0 : len;
}

static void sink_freep(struct sink *s) {
        kb_buf_free(&s->buf);
}

static void curl_cleanupp(CURL **h) {
        if (*h)
                curl_easy_cleanup(*h);
}

static void slist_freep(struct curl_slist **l) {
        curl_slist_free_all(*l);
}

static void report_unreachable(const char *what, const char *path, CURL *h, CURLcode cr, const char *errbuf) {
        long os_errno = 0;

        /* The errno says more than curl's "Couldn't connect to server":
         * "No such file or directory" (daemon not running, or another
         * path), "Permission denied" (not in the socket's group), … */
        if (curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &os_errno) == CURLE_OK && os_errno > 0 &&
            cr == CURLE_COULDNT_CONNECT)
                fprintf(stderr, "keybrokerctl: cannot reach %s at %s: %s\n", what, path, strerror((int) os_errno));
        else
                fprintf(stderr, "keybrokerctl: cannot reach %s at %s: %s\n", what, path,
                        errbuf[0] ? errbuf : curl_easy_strerror(cr));
}

int ctl_request_socket(const char *socket_path, const char *what, const char *method, const char *path,
                       const char *const *extra_headers, const struct ctl_body *body, json_t **ret) {
        _cleanup_(curl_cleanupp) CURL *h = NULL;
        _cleanup_(slist_freep) struct curl_slist *hdrs = NULL;
        _cleanup_free_ char *url = NULL;
        _cleanup_json_ json_t *j = NULL;
        _cleanup_(sink_freep) struct sink sink = {};
        char errbuf[CURL_ERROR_SIZE] = "";
        long status = 0;

        h = curl_easy_init();
        if (!h || asprintf(&url, "http://localhost%s", path) < 0) {
                url = NULL;
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return -1;
        }

        /* No "Expect: 100-continue" round trip for a body. */
        hdrs = curl_slist_append(hdrs, "Expect:");
        if (hdrs && body)
                hdrs = curl_slist_append(hdrs, body->content_type ? body->content_type
                                                                  : "Content-Type: application/octet-stream");
        for (size_t i = 0; hdrs && extra_headers && extra_headers[i]; i++) {
                struct curl_slist *n = curl_slist_append(hdrs, extra_headers[i]);
                if (!n) {
                        curl_slist_free_all(hdrs);
                        hdrs = NULL;
                        break;
                }
                hdrs = n;
        }
        if (!hdrs) {
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return -1;
        }

        curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, socket_path);
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_1);
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
        /* A reload re-reads config and keystore: give it time, but never hang. */
        curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
        /* Never follow anything anywhere, never read ~/.netrc or proxies. */
        curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(h, CURLOPT_PROXY, "");
        curl_easy_setopt(h, CURLOPT_NETRC, (long) CURL_NETRC_IGNORED);
        if (body) {
                /* POSTFIELDS (not COPYPOSTFIELDS): curl keeps no copy of a
                 * secret we could not wipe. */
                curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) body->len);
                curl_easy_setopt(h, CURLOPT_POSTFIELDS, body->len ? body->data : "");
        } else if (streq(method, "GET"))
                curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
        else if (streq(method, "POST") || streq(method, "PUT")) {
                curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) 0);
                curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
        }

        CURLcode cr = curl_easy_perform(h);
        if (cr != CURLE_OK) {
                if (sink.too_big)
                        fprintf(stderr, "keybrokerctl: answer from %s larger than %u bytes\n", socket_path,
                                CTL_MAX_RESPONSE);
                else
                        report_unreachable(what, socket_path, h, cr, errbuf);
                return -1;
        }
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);

        json_error_t jerr;
        if (sink.buf.len)
                j = json_loadb(sink.buf.data, sink.buf.len, 0, &jerr);

        if (status < 200 || status > 299) {
                const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
                if (msg)
                        fprintf(stderr, "keybrokerctl: %s\n", msg);
                else
                        fprintf(stderr, "keybrokerctl: %s answered HTTP %ld%s\n", what, status,
                                status == 404 ? " (not found: an older keybrokerd?)" : "");
                return -1;
        }
        if (!json_is_object(j)) {
                fprintf(stderr, "keybrokerctl: %s sent an answer that is not a JSON object (HTTP %ld)\n", what,
                        status);
                return -1;
        }
        *ret = TAKE_PTR(j);
        return 0;
}

int ctl_request(const struct ctl *ctl, const char *method, const char *path, const char *const *extra_headers,
                const struct ctl_body *body, json_t **ret) {
        return ctl_request_socket(ctl->admin, "keybrokerd", method, path, extra_headers, body, ret);
}

char *ctl_escape_segment(const char *s) {
        char *e = curl_easy_escape(NULL, s, 0);
        char *r;

        if (!e)
                return NULL;
        r = strdup(e);
        curl_free(e);
        return r;
}
