/* SPDX-License-Identifier: MIT */
#include <strings.h>

#include "headers.h"
#include "keystore.h"
#include "upstream.h"
#include "util.h"

static bool in_list(const char *name, const char *const *list, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (strcasecmp(name, list[i]) == 0)
                        return true;
        return false;
}

static bool has_prefix_ci(const char *s, const char *prefix) {
        return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

bool kb_header_forwardable(const char *name, const struct kb_route *route) {
        static const char *const dropped[] = {
                /* the app's own credentials: the route's key is the only one sent */
                "authorization", "x-api-key", "api-key", "proxy-authorization", "cookie",
                /* hop-by-hop (RFC 9110 7.6.1) and framing: curl frames the upstream request */
                "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
                "proxy-connection", "host", "content-length", "expect",
                /* the usage tap must see plain bytes */
                "accept-encoding",
        };

        if (in_list(name, dropped, ELEMENTSOF(dropped)) || has_prefix_ci(name, "x-keybroker-"))
                return false;
        if (!route)
                return true;
        if (route->auth == KB_AUTH_HEADER && route->auth_header && strcasecmp(name, route->auth_header) == 0)
                return false;
        size_t nl = strlen(name);
        for (size_t i = 0; i < route->n_headers; i++) {
                const char *h = route->headers[i];
                const char *colon = strchr(h, ':');
                if (colon && (size_t) (colon - h) == nl && strncasecmp(h, name, nl) == 0)
                        return false;
        }
        return true;
}

bool kb_header_relayable(const char *name) {
        static const char *const exact[] = {
                "content-type", "x-request-id", "request-id", "retry-after", "cache-control",
        };
        static const char *const prefixes[] = {
                "openai-", "anthropic-", "x-ratelimit-",
        };

        if (in_list(name, exact, ELEMENTSOF(exact)))
                return true;
        for (size_t i = 0; i < ELEMENTSOF(prefixes); i++)
                if (has_prefix_ci(name, prefixes[i]))
                        return true;
        return false;
}

int kb_header_relay_rename(const char *name, char *buf, size_t size) {
        if (!has_prefix_ci(name, "x-ratelimit-"))
                return 0;
        int k = snprintf(buf, size, "x-upstream-%s", name + 2);
        return k >= 0 && (size_t) k < size ? 1 : -ENOBUFS;
}

bool kb_header_safe(const char *s) {
        return !strpbrk(s, "\r\n");
}

bool kb_route_sets_header(const struct kb_route *r, const char *name) {
        size_t n = strlen(name);
        for (size_t i = 0; i < r->n_headers; i++)
                if (strncasecmp(r->headers[i], name, n) == 0 && r->headers[i][n] == ':')
                        return true;
        return false;
}

void kb_header_set_auth(struct kb_upstream_request *req, const struct kb_route *route, struct kb_key *key) {
        if (!key)
                return;
        switch (route->auth) {
        case KB_AUTH_BEARER:
                req->auth_name = "Authorization";
                req->auth_prefix = "Bearer ";
                break;
        case KB_AUTH_X_API_KEY:
                req->auth_name = "x-api-key";
                req->auth_prefix = "";
                break;
        case KB_AUTH_HEADER:
                req->auth_name = route->auth_header;
                req->auth_prefix = "";
                break;
        }
        req->secret = kb_key_open(key, &req->secret_len);
        kb_key_mark_used(key, kb_realtime_usec());
}
