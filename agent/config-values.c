/* SPDX-License-Identifier: MIT */
/* One parser per config key: values are checked as strictly as they are
 * read, so a typo fails at load with FILE:LINE rather than at a request. */
#include <ctype.h>
#include <grp.h>
#include <pwd.h>
#include <stddef.h>
#include <sys/stat.h>

#include "config-internal.h"

bool kb_cfg_valid_name(const char *s, size_t max) {
        size_t l = strlen(s);
        if (l == 0 || l > max || streq(s, ".") || strstr(s, ".."))
                return false;
        for (const char *c = s; *c; c++)
                if (!isalnum((unsigned char) *c) && !strchr("._-", *c))
                        return false;
        return true;
}

/* Model names go into JSON, URLs and journal fields: printable ASCII only. */
bool kb_cfg_valid_model_name(const char *s) {
        size_t l = strlen(s);
        if (l == 0 || l > MODEL_MAX_LEN)
                return false;
        for (const char *c = s; *c; c++)
                if (*c <= ' ' || *c >= 0x7f || strchr("[]*\"\\", *c))
                        return false;
        return true;
}

static bool valid_token(const char *s, size_t l) {
        if (l == 0 || l > NAME_MAX_LEN)
                return false;
        for (size_t i = 0; i < l; i++)
                if (!isalnum((unsigned char) s[i]) && !strchr("!#$%&'*+-.^_`|~", s[i]))
                        return false;
        return true;
}

static bool valid_text(const char *s) {
        for (const char *c = s; *c; c++)
                if ((unsigned char) *c < ' ' && *c != '\t')
                        return false;
        return *s != 0;
}

static bool valid_unit(const char *s) {
        size_t l = strlen(s);
        if (l == 0 || l > 256 || !strchr(s, '.'))
                return false;
        for (const char *c = s; *c; c++)
                if (!isalnum((unsigned char) *c) && !strchr(":-_.\\@", *c))
                        return false;
        return true;
}

static int parse_u64(const char *s, uint64_t *ret) {
        if (!isdigit((unsigned char) *s))
                return -EINVAL;
        uint64_t v = 0;
        for (; *s; s++) {
                if (!isdigit((unsigned char) *s))
                        return -EINVAL;
                unsigned d = (unsigned) (*s - '0');
                if (v > (UINT64_MAX - d) / 10)
                        return -ERANGE;
                v = v * 10 + d;
        }
        *ret = v;
        return 0;
}

/* Splits on blanks; the tokens point into buf. */
size_t kb_cfg_split_words(char *buf, char **words, size_t max) {
        size_t n = 0;
        char *save = NULL;
        for (char *w = strtok_r(buf, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
                if (n == max)
                        return max + 1;
                words[n++] = w;
        }
        return n;
}

#define COUNT(base, k) ((size_t *) ((char *) (base) + (k)->count_offset))

static int set_string(struct parser *p, char **field, const char *v) {
        char *s = strdup(v);
        if (!s)
                return kb_cfg_oom(p);
        free(*field);
        *field = s;
        return 0;
}

static int p_text(struct parser *p, const struct key_def *k, void *base, const char *v) {
        if (!valid_text(v))
                return bad_value(p, k->name, "empty or has control characters");
        return set_string(p, FIELD(base, k, char *), v);
}

/* "$CREDENTIALS_DIRECTORY" is the only variable: systemd sets it for
 * LoadCredential=, and without it there is no credentials directory. */
int kb_cfg_expand_credentials(const char *v, char **ret) {
        const char *rest = NULL;
        if (strncmp(v, "$CREDENTIALS_DIRECTORY", 22) == 0)
                rest = v + 22;
        else if (strncmp(v, "${CREDENTIALS_DIRECTORY}", 24) == 0)
                rest = v + 24;
        if (!rest || (*rest && *rest != '/')) {
                *ret = strdup(v);
                return *ret ? 0 : -ENOMEM;
        }
        const char *dir = secure_getenv("CREDENTIALS_DIRECTORY");
        if (!dir || !*dir) {
                *ret = NULL;
                return 0;
        }
        return asprintf(ret, "%s%s", dir, rest) < 0 ? -ENOMEM : 0;
}

static int p_cred_path(struct parser *p, const struct key_def *k, void *base, const char *v) {
        if (!valid_text(v))
                return bad_value(p, k->name, "empty or has control characters");
        char *s = NULL;
        if (kb_cfg_expand_credentials(v, &s) < 0)
                return kb_cfg_oom(p);
        free(*FIELD(base, k, char *));
        *FIELD(base, k, char *) = s;
        return 0;
}

static int p_u64(struct parser *p, const struct key_def *k, void *base, const char *v) {
        uint64_t n;
        if (parse_u64(v, &n) < 0 || (k->nonzero && n == 0))
                return bad_value(p, k->name, "'%s' is not a %snumber", v, k->nonzero ? "positive " : "");
        *FIELD(base, k, uint64_t) = n;
        return 0;
}

static int p_unsigned(struct parser *p, const struct key_def *k, void *base, const char *v) {
        uint64_t n;
        if (parse_u64(v, &n) < 0 || n > k->max || (k->nonzero && n == 0))
                return bad_value(p, k->name, "'%s' is not a number from %u to %u", v, k->nonzero ? 1U : 0U, k->max);
        *FIELD(base, k, unsigned) = (unsigned) n;
        return 0;
}

/* A ratio from 0 to 1, read exactly (to millionths) like a USD amount. */
int kb_cfg_parse_ratio(const char *s, double *ret) {
        int64_t m;
        if (kb_cfg_parse_micro(s, &m) < 0 || m > 1000000)
                return -EINVAL;
        *ret = (double) m / 1e6;
        return 0;
}

static int p_ratio(struct parser *p, const struct key_def *k, void *base, const char *v) {
        if (kb_cfg_parse_ratio(v, FIELD(base, k, double)) < 0)
                return bad_value(p, k->name, "'%s' is not a ratio from 0 to 1 like 0.5", v);
        return 0;
}

/* "429 500 502 503 504 529 connect timeout": statuses 400-599 and the two
 * transport failures; "none" turns fallback off for the route. */
int kb_cfg_parse_retry_on(const char *v, struct kb_route *rt, const char **ret_bad) {
        _cleanup_free_ char *buf = strdup(v);
        char *words[64];
        if (!buf)
                return -ENOMEM;
        size_t n = kb_cfg_split_words(buf, words, ELEMENTSOF(words));
        if (n == 0 || n > ELEMENTSOF(words)) {
                *ret_bad = NULL;
                return -EINVAL;
        }
        uint64_t st[4] = {};
        bool connect = false, timeout = false;
        for (size_t i = 0; i < n; i++) {
                uint64_t code;
                if (streq(words[i], "connect"))
                        connect = true;
                else if (streq(words[i], "timeout"))
                        timeout = true;
                else if (streq(words[i], "none") && n == 1)
                        ;
                else if (parse_u64(words[i], &code) == 0 && code >= 400 && code <= 599)
                        st[(code - 400) / 64] |= UINT64_C(1) << ((code - 400) % 64);
                else {
                        /* words[i] points into buf: hand back the original's copy */
                        *ret_bad = v + (words[i] - buf);
                        return -EINVAL;
                }
        }
        memcpy(rt->retry_statuses, st, sizeof(st));
        rt->retry_connect = connect;
        rt->retry_timeout = timeout;
        return 0;
}

static int p_retry_on(struct parser *p, const struct key_def *k, void *base, const char *v) {
        const char *bad = NULL;
        int r = kb_cfg_parse_retry_on(v, base, &bad);
        if (r == -ENOMEM)
                return kb_cfg_oom(p);
        if (r < 0 && bad)
                return bad_value(p, k->name, "'%.*s' is not a status from 400 to 599, connect, timeout or none",
                                 (int) strcspn(bad, " \t"), bad);
        if (r < 0)
                return bad_value(p, k->name, "expected statuses 400-599, connect, timeout, or none");
        return 0;
}

static int p_size(struct parser *p, const struct key_def *k, void *base, const char *v) {
        uint64_t n;
        if (kb_parse_size(v, &n) < 0 || (k->nonzero && n == 0))
                return bad_value(p, k->name, "'%s' is not a size like 32M", v);
        *FIELD(base, k, uint64_t) = n;
        return 0;
}

static int p_duration(struct parser *p, const struct key_def *k, void *base, const char *v) {
        uint64_t n;
        if (kb_parse_duration(v, &n) < 0 || (k->nonzero && n == 0))
                return bad_value(p, k->name, "'%s' is not a duration like 10s", v);
        *FIELD(base, k, uint64_t) = n;
        return 0;
}

static int p_mode(struct parser *p, const struct key_def *k, void *base, const char *v) {
        unsigned m = 0;
        size_t l = strlen(v);
        if (l == 0 || l > 4)
                return bad_value(p, k->name, "'%s' is not an octal mode like 0660", v);
        for (const char *c = v; *c; c++) {
                if (*c < '0' || *c > '7')
                        return bad_value(p, k->name, "'%s' is not an octal mode like 0660", v);
                m = m * 8 + (unsigned) (*c - '0');
        }
        if (m > 0777)
                return bad_value(p, k->name, "'%s' is more than 0777", v);
        *FIELD(base, k, mode_t) = (mode_t) m;
        return 0;
}

static int p_usd(struct parser *p, const struct key_def *k, void *base, const char *v) {
        int64_t n;
        int r = kb_cfg_parse_micro(v, &n);
        if (r < 0)
                return kb_cfg_micro_fail(p, k->name, v, r);
        *FIELD(base, k, int64_t) = n;
        return 0;
}

/* Looks a user or group up now, so a typo fails at load and not at the
 * first request; numbers pass even when no such account exists (yet). */
static int lookup_id(bool group, const char *s, uint32_t *ret) {
        uint64_t n;
        if (isdigit((unsigned char) *s)) {
                if (parse_u64(s, &n) < 0 || n >= UINT32_MAX)
                        return -EINVAL;
                *ret = (uint32_t) n;
                return 0;
        }
        if (strlen(s) > 256)
                return -EINVAL;
        size_t bufsize = 1024;
        for (;;) {
                _cleanup_free_ char *buf = malloc(bufsize);
                if (!buf)
                        return -ENOMEM;
                int r;
                if (group) {
                        struct group gr, *res = NULL;
                        r = getgrnam_r(s, &gr, buf, bufsize, &res);
                        if (r == 0 && res) {
                                *ret = res->gr_gid;
                                return 0;
                        }
                } else {
                        struct passwd pw, *res = NULL;
                        r = getpwnam_r(s, &pw, buf, bufsize, &res);
                        if (r == 0 && res) {
                                *ret = res->pw_uid;
                                return 0;
                        }
                }
                if (r != ERANGE || bufsize >= 1024 * 1024)
                        return -ENOENT;
                bufsize *= 4;
        }
}

typedef int (*word_fn)(struct parser *p, const struct key_def *k, void *base, const char *w);

/* Each space-separated word of v (1 to 64 per line) through fn. */
static int each_word(struct parser *p, const struct key_def *k, void *base, const char *v, const char *what,
                     word_fn fn) {
        _cleanup_free_ char *buf = strdup(v);
        char *words[64];
        if (!buf)
                return kb_cfg_oom(p);
        size_t n = kb_cfg_split_words(buf, words, ELEMENTSOF(words));
        if (n == 0 || n > ELEMENTSOF(words))
                return bad_value(p, k->name, "expected 1 to %zu %s per line", ELEMENTSOF(words), what);
        for (size_t i = 0; i < n; i++) {
                int r = fn(p, k, base, words[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int add_id(struct parser *p, const struct key_def *k, void *base, const char *w, bool group) {
        uint32_t id;
        int r = lookup_id(group, w, &id);
        if (r == -ENOMEM)
                return kb_cfg_oom(p);
        if (r < 0)
                return bad_value(p, k->name, "unknown %s '%s'", group ? "group" : "user", w);
        uint32_t **arr = FIELD(base, k, uint32_t *);
        uint32_t *e = ARRAY_ADD(*arr, *COUNT(base, k));
        if (!e)
                return kb_cfg_oom(p);
        *e = id;
        return 0;
}

static int add_uid(struct parser *p, const struct key_def *k, void *base, const char *w) {
        return add_id(p, k, base, w, false);
}

static int add_gid(struct parser *p, const struct key_def *k, void *base, const char *w) {
        return add_id(p, k, base, w, true);
}

static int p_uids(struct parser *p, const struct key_def *k, void *base, const char *v) {
        return each_word(p, k, base, v, "names or ids", add_uid);
}

static int p_gids(struct parser *p, const struct key_def *k, void *base, const char *v) {
        return each_word(p, k, base, v, "names or ids", add_gid);
}

static int add_word(struct parser *p, const struct key_def *k, void *base, const char *w) {
        char ***arr = FIELD(base, k, char **);
        char *s = strdup(w);
        if (!s)
                return kb_cfg_oom(p);
        char **e = ARRAY_ADD(*arr, *COUNT(base, k));
        if (!e) {
                free(s);
                return kb_cfg_oom(p);
        }
        *e = s;
        return 0;
}

static int add_unit(struct parser *p, const struct key_def *k, void *base, const char *w) {
        if (!valid_unit(w))
                return bad_value(p, k->name, "'%s' is not a unit name", w);
        return add_word(p, k, base, w);
}

static int p_units(struct parser *p, const struct key_def *k, void *base, const char *v) {
        return each_word(p, k, base, v, "unit names", add_unit);
}

int kb_cfg_add_ref(struct parser *p, enum ref_kind kind, size_t owner, size_t item, const char *name) {
        struct ref *ref = ARRAY_ADD(p->refs, p->n_refs);
        if (!ref)
                return kb_cfg_oom(p);
        *ref = (struct ref) { .kind = kind, .owner = owner, .item = item, .line = p->line };
        if (name && !(ref->name = strdup(name)))
                return kb_cfg_oom(p);
        return 0;
}

static int p_models(struct parser *p, const struct key_def *k, void *base, const char *v) {
        struct kb_team *t = base;
        _cleanup_free_ char *buf = strdup(v);
        char *words[64];
        if (!buf)
                return kb_cfg_oom(p);
        size_t n = kb_cfg_split_words(buf, words, ELEMENTSOF(words));
        if (n == 0 || n > ELEMENTSOF(words))
                return bad_value(p, k->name, "expected 1 to %zu model names per line", ELEMENTSOF(words));
        for (size_t i = 0; i < n; i++) {
                if (streq(words[i], "*")) {
                        t->models_all = true;
                        continue;
                }
                if (!kb_cfg_valid_model_name(words[i]))
                        return bad_value(p, k->name, "'%s' is not a model name", words[i]);
                int r = add_word(p, k, base, words[i]);
                if (r < 0)
                        return r;
                r = kb_cfg_add_ref(p, REF_TEAM_MODEL, p->idx, t->n_models - 1, NULL);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int p_default_route(struct parser *p, const struct key_def *k, void *base, const char *v) {
        struct kb_team *t = base;
        if (!kb_cfg_valid_model_name(v) || strchr(v, ' '))
                return bad_value(p, k->name, "expected one route name");
        int r = add_word(p, k, base, v);
        if (r < 0)
                return r;
        return kb_cfg_add_ref(p, REF_TEAM_ROUTE, p->idx, t->n_default_routes - 1, NULL);
}

static int p_store_url(struct parser *p, const struct key_def *k, void *base, const char *v) {
        struct kb_agent_config *a = base;
        struct kb_store_addr addr;
        const char *why;
        int r = kb_cfg_parse_store_url(v, &addr, &why);
        if (r == -ENOMEM)
                return kb_cfg_oom(p);
        if (r < 0)
                return bad_value(p, k->name, "'%s': %s", v, why);
        free(a->store.host);
        free(a->store.path);
        a->store = addr;
        return set_string(p, &a->quota_store, v);
}

/* A file, never the password itself: config text is world-readable. Checked
 * for now; read when connecting. */
static int p_password_file(struct parser *p, const struct key_def *k, void *base, const char *v) {
        _cleanup_free_ char *path = NULL;
        struct stat st;

        if (!valid_text(v))
                return bad_value(p, k->name, "empty or has control characters");
        if (kb_cfg_expand_credentials(v, &path) < 0)
                return kb_cfg_oom(p);
        /* the value is not echoed: it may be a password put here by mistake */
        if (!path || path[0] != '/')
                return bad_value(p, k->name, "not an absolute path; give the file holding the password, never the "
                                 "password itself");
        if (stat(path, &st) < 0)
                return bad_value(p, k->name, "cannot read '%s': %s", path, strerror(errno));
        if (!S_ISREG(st.st_mode))
                return bad_value(p, k->name, "'%s' is not a regular file", path);
        free(*FIELD(base, k, char *));
        *FIELD(base, k, char *) = TAKE_PTR(path);
        return 0;
}

static int p_prefix(struct parser *p, const struct key_def *k, void *base, const char *v) {
        if (!valid_text(v) || strchr(v, ' ') || strlen(v) > 64)
                return bad_value(p, k->name, "'%s' must be 1 to 64 characters without blanks", v);
        return set_string(p, FIELD(base, k, char *), v);
}

/* systemd's spellings of a boolean. */
static int p_bool(struct parser *p, const struct key_def *k, void *base, const char *v) {
        if (streq(v, "yes") || streq(v, "true") || streq(v, "on") || streq(v, "1"))
                *FIELD(base, k, bool) = true;
        else if (streq(v, "no") || streq(v, "false") || streq(v, "off") || streq(v, "0"))
                *FIELD(base, k, bool) = false;
        else
                return bad_value(p, k->name, "'%s' is not yes or no", v);
        return 0;
}

static int p_unpriced(struct parser *p, const struct key_def *k, void *base, const char *v) {
        if (streq(v, "deny"))
                ((struct kb_team *) base)->unpriced = 0;
        else if (streq(v, "zero"))
                ((struct kb_team *) base)->unpriced = 1;
        else
                return bad_value(p, k->name, "'%s' is not deny or zero", v);
        return 0;
}

static int p_family(struct parser *p, const struct key_def *k, void *base, const char *v) {
        int f = kb_family_from_string(v);
        if (f < 0)
                return bad_value(p, k->name, "'%s' is not openai or anthropic", v);
        ((struct kb_route *) base)->family = (kb_family) f;
        return 0;
}

static int p_url(struct parser *p, const struct key_def *k, void *base, const char *v) {
        size_t l = strlen(v);
        const char *host = strncmp(v, "https://", 8) == 0 ? v + 8 : strncmp(v, "http://", 7) == 0 ? v + 7 : NULL;
        if (!host || !*host || *host == '/' || l > 2048)
                return bad_value(p, k->name, "'%s' is not an http:// or https:// URL", v);
        for (const char *c = v; *c; c++)
                if (*c <= ' ' || *c >= 0x7f)
                        return bad_value(p, k->name, "URL has blanks or control characters");
        while (l > 0 && v[l - 1] == '/')
                l--;
        char *s = strndup(v, l);
        if (!s)
                return kb_cfg_oom(p);
        free(*FIELD(base, k, char *));
        *FIELD(base, k, char *) = s;
        return 0;
}

static int p_keyname(struct parser *p, const struct key_def *k, void *base, const char *v) {
        if (!kb_cfg_valid_name(v, NAME_MAX_LEN))
                return bad_value(p, k->name, "'%s' is not a key name ([A-Za-z0-9._-], at most %u)", v, NAME_MAX_LEN);
        int r = set_string(p, FIELD(base, k, char *), v);
        if (r < 0)
                return r;
        return kb_cfg_add_ref(p, REF_KEY, p->idx, 0, NULL);
}

static int p_auth(struct parser *p, const struct key_def *k, void *base, const char *v) {
        struct kb_route *rt = base;
        char *hdr = NULL;
        if (streq(v, "bearer"))
                rt->auth = KB_AUTH_BEARER;
        else if (streq(v, "x-api-key"))
                rt->auth = KB_AUTH_X_API_KEY;
        else if (strncmp(v, "header:", 7) == 0 && valid_token(v + 7, strlen(v + 7))) {
                if (!(hdr = strdup(v + 7)))
                        return kb_cfg_oom(p);
                rt->auth = KB_AUTH_HEADER;
        } else
                return bad_value(p, k->name, "'%s' is not bearer, x-api-key or header:NAME", v);
        free(rt->auth_header);
        rt->auth_header = hdr;
        return 0;
}

static int p_header(struct parser *p, const struct key_def *k, void *base, const char *v) {
        static const char *const managed[] = { "host", "content-length", "transfer-encoding", "connection" };
        const char *colon = strchr(v, ':');
        size_t nl = colon ? (size_t) (colon - v) : 0;
        while (nl > 0 && (v[nl - 1] == ' ' || v[nl - 1] == '\t'))
                nl--;
        /* The value is never echoed: static headers may carry secrets. */
        if (!colon || !valid_token(v, nl))
                return bad_value(p, k->name, "expected 'Name: value' with a valid header name");
        for (size_t i = 0; i < ELEMENTSOF(managed); i++)
                if (kb_header_name_eq(v, nl, managed[i]))
                        return bad_value(p, k->name, "header '%.*s' is managed by keybroker", (int) nl, v);
        const char *val = colon + 1;
        while (*val == ' ' || *val == '\t')
                val++;
        if (!valid_text(val))
                return bad_value(p, k->name, "header value is empty or has control characters");
        char *s = NULL;
        if (asprintf(&s, "%.*s: %s", (int) nl, v, val) < 0)
                return kb_cfg_oom(p);
        struct kb_route *rt = base;
        char **e = ARRAY_ADD(rt->headers, rt->n_headers);
        if (!e) {
                free(s);
                return kb_cfg_oom(p);
        }
        *e = s;
        return 0;
}

/* Options after ROUTE UPSTREAM_MODEL on a target line, each at most once:
 * weight=N, rollback_on_error_ratio=R, min_requests=N (the last only with
 * the ratio). */
static int target_options(struct parser *p, const struct key_def *k, struct kb_target *t, char **words, size_t n) {
        bool seen_weight = false, seen_ratio = false, seen_min = false;
        for (size_t i = 0; i < n; i++) {
                const char *w = words[i];
                uint64_t u;
                if (strncmp(w, "weight=", 7) == 0 && !seen_weight) {
                        if (parse_u64(w + 7, &u) < 0 || u > WEIGHT_MAX)
                                return bad_value(p, k->name, "'%s' is not weight=N with N from 0 to %u", w,
                                                 WEIGHT_MAX);
                        t->weight = (unsigned) u;
                        seen_weight = true;
                } else if (strncmp(w, "rollback_on_error_ratio=", 24) == 0 && !seen_ratio) {
                        if (kb_cfg_parse_ratio(w + 24, &t->rollback_on_error_ratio) < 0)
                                return bad_value(p, k->name, "'%s' is not rollback_on_error_ratio=R with R from 0 to 1",
                                                 w);
                        seen_ratio = true;
                } else if (strncmp(w, "min_requests=", 13) == 0 && !seen_min) {
                        if (parse_u64(w + 13, &u) < 0 || u == 0 || u > CANARY_MIN_REQUESTS_MAX)
                                return bad_value(p, k->name, "'%s' is not min_requests=N with N from 1 to %u", w,
                                                 CANARY_MIN_REQUESTS_MAX);
                        t->min_requests = (unsigned) u;
                        seen_min = true;
                } else
                        return bad_value(p, k->name,
                                         "'%s' is not weight=N, rollback_on_error_ratio=R or min_requests=N "
                                         "(each at most once)", w);
        }
        if (seen_min && !seen_ratio)
                return bad_value(p, k->name, "min_requests= needs rollback_on_error_ratio=");
        return 0;
}

static int add_target(struct parser *p, const struct key_def *k, void *base, const char *v, bool fallback) {
        struct kb_model *m = base;
        _cleanup_free_ char *buf = strdup(v);
        char *words[6];
        if (!buf)
                return kb_cfg_oom(p);
        size_t n = kb_cfg_split_words(buf, words, ELEMENTSOF(words));
        if (n < 2 || n > (fallback ? 2U : 5U))
                return bad_value(p, k->name, "expected 'ROUTE UPSTREAM_MODEL%s'%s", fallback ? "" : " [weight=N]",
                                 fallback ? "" : " (then optionally rollback_on_error_ratio=R min_requests=N)");
        if (!kb_cfg_valid_name(words[0], NAME_MAX_LEN))
                return bad_value(p, k->name, "'%s' is not a route name", words[0]);
        if (!kb_cfg_valid_model_name(words[1]))
                return bad_value(p, k->name, "'%s' is not a model name", words[1]);
        struct kb_target opts = { .weight = 1, .rollback_on_error_ratio = -1,
                                  .min_requests = CANARY_MIN_REQUESTS_DEFAULT };
        int r = target_options(p, k, &opts, words + 2, n - 2);
        if (r < 0)
                return r;
        char *um = strdup(words[1]);
        struct kb_target *t = !um ? NULL
                : fallback        ? ARRAY_ADD(m->fallbacks, m->n_fallbacks)
                                  : ARRAY_ADD(m->targets, m->n_targets);
        if (!t) {
                free(um);
                return kb_cfg_oom(p);
        }
        *t = opts;
        t->upstream_model = um;
        t->line = p->line;
        return kb_cfg_add_ref(p, fallback ? REF_FALLBACK : REF_TARGET, p->idx,
                       (fallback ? m->n_fallbacks : m->n_targets) - 1, words[0]);
}

static int p_target(struct parser *p, const struct key_def *k, void *base, const char *v) {
        return add_target(p, k, base, v, false);
}

static int p_fallback(struct parser *p, const struct key_def *k, void *base, const char *v) {
        return add_target(p, k, base, v, true);
}

#define AK(n, f, fn, ...) { .name = n, .parse = fn, .offset = offsetof(struct kb_agent_config, f), __VA_ARGS__ }
#define AL(n, f, fn) AK(n, f, fn, .count_offset = offsetof(struct kb_agent_config, n_##f), .multi = true)
const struct key_def kb_cfg_agent_keys[] = {
        AK("listen", listen, p_text),
        AK("listen_mode", listen_mode, p_mode),
        AK("admin", admin, p_text),
        AL("admin_users", admin_uids, p_uids),
        AL("admin_groups", admin_gids, p_gids),
        AK("credentials_dir", credentials_dir, p_cred_path),
        AK("keystore", keystore, p_text),
        AK("master_key", master_key, p_cred_path),
        AK("state_dir", state_dir, p_text),
        AK("max_request_body", max_request_body, p_size, .nonzero = true),
        AK("max_upload_body", max_upload_body, p_size, .nonzero = true),
        AK("batch_poll", batch_poll_usec, p_duration),
        AK("header_timeout", header_timeout_usec, p_duration, .nonzero = true),
        AK("drain_timeout", drain_timeout_usec, p_duration),
        AK("idle_timeout", idle_timeout_usec, p_duration, .nonzero = true),
        AK("max_connections", max_connections, p_u64, .nonzero = true),
        AK("max_connections_per_uid", max_connections_per_uid, p_u64, .nonzero = true),
        AK("journal", journal, p_bool),
        AK("test_traffic", test_traffic, p_bool),
        { .name = "quota_store", .parse = p_store_url },
        AK("quota_store_password", quota_store_password, p_password_file),
        AK("quota_store_prefix", quota_store_prefix, p_prefix),
        AK("quota_store_timeout", quota_store_timeout_usec, p_duration, .nonzero = true),
        { .name = "quota_store_offline", .parse = kb_cfg_p_store_offline },
        AK("offline_share", offline_share_ppm, kb_cfg_p_offline_share),
        {},
};

#define TK(n, f, fn, ...) { .name = n, .parse = fn, .offset = offsetof(struct kb_team, f), __VA_ARGS__ }
#define TL(n, f, fn) TK(n, f, fn, .count_offset = offsetof(struct kb_team, n_##f), .multi = true)
const struct key_def kb_cfg_team_keys[] = {
        TL("users", uids, p_uids),
        TL("groups", gids, p_gids),
        TL("units", units, p_units),
        TL("models", models, p_models),
        TK("requests_per_minute", requests_per_minute, p_u64),
        TK("tokens_per_minute", tokens_per_minute, p_u64),
        TK("tokens_per_day", tokens_per_day, p_u64),
        TK("budget_usd_per_day", budget_microusd_per_day, p_usd),
        TK("budget_usd_per_month", budget_microusd_per_month, p_usd),
        TK("max_concurrent", max_concurrent, p_u64),
        TK("owner", owner, p_text),
        TK("unpriced", unpriced, p_unpriced),
        TK("quota_scope", quota_scope, kb_cfg_p_quota_scope),
        TL("default_route", default_routes, p_default_route),
        {},
};

#define RK(n, f, fn, ...) { .name = n, .parse = fn, .offset = offsetof(struct kb_route, f), __VA_ARGS__ }
const struct key_def kb_cfg_route_keys[] = {
        RK("family", family, p_family),
        RK("base_url", base_url, p_url),
        RK("key", key, p_keyname),
        RK("auth", auth, p_auth),
        RK("header", headers, p_header, .multi = true),
        RK("timeout", timeout_usec, p_duration, .nonzero = true),
        RK("connect_timeout", connect_timeout_usec, p_duration, .nonzero = true),
        RK("ca_file", ca_file, p_text),
        RK("price", prices, kb_cfg_p_price, .multi = true),
        RK("retry_on", retry_statuses, p_retry_on),
        RK("breaker_failures", breaker_failures, p_unsigned, .max = 1000000),
        RK("breaker_error_ratio", breaker_error_ratio, p_ratio),
        RK("breaker_window", breaker_window_usec, p_duration, .nonzero = true),
        RK("breaker_min_requests", breaker_min_requests, p_unsigned, .nonzero = true, .max = 1000000),
        RK("breaker_cooldown", breaker_cooldown_usec, p_duration, .nonzero = true),
        RK("owner", owner, p_text),
        RK("key_owner", key_owner, p_text),
        RK("status_url", status_url, p_url),
        RK("status_ok", status_ok_minor, kb_cfg_p_status_ok),
        RK("features", features, kb_cfg_p_features),
        {},
};

#define MK(n, f, fn, ...) { .name = n, .parse = fn, .offset = offsetof(struct kb_model, f), __VA_ARGS__ }
const struct key_def kb_cfg_model_keys[] = {
        { .name = "target", .parse = p_target, .multi = true },
        { .name = "fallback", .parse = p_fallback, .multi = true },
        MK("max_attempts", max_attempts, p_unsigned, .nonzero = true, .max = MAX_ATTEMPTS_MAX),
        MK("retry_after_max", retry_after_max_usec, p_duration),
        MK("features", features, kb_cfg_p_features),
        { .name = "shadow", .parse = kb_cfg_p_shadow },
        {},
};
