/* SPDX-License-Identifier: MIT */
/* The fleet keys: [agent] quota_store (where the fleet's Redis is, checked
 * as strictly as every other value), quota_store_offline, offline_share and
 * [team:*] quota_scope. config-values.c parses the rest and holds the key
 * tables. */

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "config-internal.h"

/* redis://HOST:PORT[/DB] or unix:/PATH[?db=N]; HOST an IPv4 literal,
 * [IPv6] or localhost (a name would need a blocking lookup on the loop). */
int kb_cfg_parse_store_url(const char *v, struct kb_store_addr *ret, const char **ret_why) {
        struct kb_store_addr a = {};
        const char *rest;
        unsigned long n;
        char *end;

        *ret_why = NULL;
        if (strncmp(v, "unix:", 5) == 0) {
                const char *q = strchr(v + 5, '?');
                size_t l = q ? (size_t) (q - (v + 5)) : strlen(v + 5);
                if (l == 0 || v[5] != '/' || l >= 108) {
                        *ret_why = "unix: needs an absolute socket path (at most 107 bytes)";
                        return -EINVAL;
                }
                if (q) {
                        if (strncmp(q, "?db=", 4) != 0 || !q[4]) {
                                *ret_why = "the only option of unix: is ?db=N";
                                return -EINVAL;
                        }
                        errno = 0;
                        n = strtoul(q + 4, &end, 10);
                        if (errno || *end || n > 1000000 || q[4] == '-' || q[4] == '+') {
                                *ret_why = "db is not a database number";
                                return -EINVAL;
                        }
                        a.db = (unsigned) n;
                }
                a.path = strndup(v + 5, l);
                if (!a.path)
                        return -ENOMEM;
                *ret = a;
                return 0;
        }
        if (strncmp(v, "redis://", 8) != 0) {
                *ret_why = "use redis://HOST:PORT[/DB] or unix:/PATH[?db=N] (rediss:// TLS: see stunnel in the README)";
                return -EINVAL;
        }
        rest = v + 8;
        char host[64];
        const char *colon;
        if (rest[0] == '[') {
                const char *close = strchr(rest, ']');
                if (!close || close[1] != ':' || (size_t) (close - rest - 1) >= sizeof(host)) {
                        *ret_why = "an IPv6 address goes in brackets: redis://[::1]:6379";
                        return -EINVAL;
                }
                memcpy(host, rest + 1, (size_t) (close - rest - 1));
                host[close - rest - 1] = 0;
                colon = close + 1;
        } else {
                colon = strchr(rest, ':');
                if (!colon || (size_t) (colon - rest) >= sizeof(host) || colon == rest) {
                        *ret_why = "the port is required: redis://HOST:PORT";
                        return -EINVAL;
                }
                memcpy(host, rest, (size_t) (colon - rest));
                host[colon - rest] = 0;
        }
        if (streq(host, "localhost"))
                strcpy(host, "127.0.0.1");
        struct in6_addr ip;
        if (inet_pton(AF_INET, host, &ip) != 1 && inet_pton(AF_INET6, host, &ip) != 1) {
                *ret_why = "HOST must be an IP address or localhost (names are not resolved)";
                return -EINVAL;
        }
        errno = 0;
        n = strtoul(colon + 1, &end, 10);
        if (errno || end == colon + 1 || n == 0 || n > 65535 || colon[1] == '-' || colon[1] == '+') {
                *ret_why = "PORT must be 1 to 65535";
                return -EINVAL;
        }
        if (*end == '/') {
                const char *d = end + 1;
                errno = 0;
                unsigned long db = strtoul(d, &end, 10);
                if (errno || end == d || *end || db > 1000000 || *d == '-' || *d == '+') {
                        *ret_why = "DB after the port must be a database number: redis://HOST:PORT/DB";
                        return -EINVAL;
                }
                a.db = (unsigned) db;
        } else if (*end) {
                *ret_why = "nothing may follow PORT but /DB (a password goes in quota_store_password)";
                return -EINVAL;
        }
        a.port = (unsigned) n;
        a.host = strdup(host);
        if (!a.host)
                return -ENOMEM;
        *ret = a;
        return 0;
}

/* ---- how the fleet's limits hold: quota_scope, quota_store_offline, offline_share ---- */

int kb_cfg_p_quota_scope(struct parser *p, const struct key_def *k, void *base, const char *v) {
        if (!streq(v, "fleet") && !streq(v, "host"))
                return bad_value(p, k->name, "'%s' is not fleet or host", v);
        ((struct kb_team *) base)->quota_scope = streq(v, "host") ? KB_QUOTA_SCOPE_HOST : KB_QUOTA_SCOPE_FLEET;
        return 0;
}

int kb_cfg_p_store_offline(struct parser *p, const struct key_def *k, void *base, const char *v) {
        if (!streq(v, "local") && !streq(v, "deny"))
                return bad_value(p, k->name, "'%s' is not local or deny", v);
        ((struct kb_agent_config *) base)->quota_store_offline_deny = streq(v, "deny");
        return 0;
}

/* offline_share: a fraction above 0 up to 1 ("0.25"), or a percentage ("25%"). */
int kb_cfg_p_offline_share(struct parser *p, const struct key_def *k, void *base, const char *v) {
        _cleanup_free_ char *s = strdup(v);
        size_t n = s ? strlen(s) : 0;
        bool percent = n > 0 && s[n - 1] == '%';
        int64_t m;

        if (!s)
                return -ENOMEM;
        if (percent)
                s[n - 1] = 0;
        if (kb_cfg_parse_micro(s, &m) < 0 || (percent && m > 100000000) || (!percent && m > 1000000) || m <= 0 ||
            (percent && m / 100 == 0))
                return bad_value(p, k->name, "'%s' is not a share above 0 up to 1, like 0.25 or 25%%", v);
        *FIELD(base, k, uint32_t) = (uint32_t) (percent ? m / 100 : m);
        return 0;
}
