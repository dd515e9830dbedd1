/* SPDX-License-Identifier: MIT */
/* The file's structure: lines, sections, repeated keys, cross references,
 * and the config's life cycle. Values are parsed in config-values.c. */
#include "config.h"

#include <assert.h>
#include <fcntl.h>
#include <ini.h>
#include <stdarg.h>
#include <sys/stat.h>

#include "config-internal.h"
#include "keybroker/keybroker.h"
#include "util.h"

int kb_cfg_fail(struct parser *p, unsigned line, const char *fmt, ...) {
        if (p->error)
                return -EINVAL;
        _cleanup_free_ char *msg = NULL;
        va_list ap;
        va_start(ap, fmt);
        int n = vasprintf(&msg, fmt, ap);
        va_end(ap);
        if (n < 0)
                return -ENOMEM;
        if (line > 0)
                n = asprintf(&p->error, "%s:%u: %s", p->name, line, msg);
        else
                n = asprintf(&p->error, "%s: %s", p->name, msg);
        if (n < 0) {
                p->error = NULL;
                return -ENOMEM;
        }
        p->error_line = line > 0 ? line : 1;
        return -EINVAL;
}

int kb_cfg_oom(struct parser *p) {
        p->oom = true;
        kb_cfg_fail(p, p->line, "out of memory");
        return -ENOMEM;
}

void *kb_cfg_array_add(void **arr, size_t *n, size_t size) {
        size_t cur = *n;
        if (cur == 0 || (cur >= 4 && (cur & (cur - 1)) == 0)) {
                size_t cap = cur < 4 ? 4 : cur * 2;
                if (cap > SIZE_MAX / size)
                        return NULL;
                void *a = realloc(*arr, cap * size);
                if (!a)
                        return NULL;
                *arr = a;
        }
        void *e = (char *) *arr + cur * size;
        memset(e, 0, size);
        (*n)++;
        return e;
}

static const struct key_def *const section_keys[_SEC_MAX] = {
        [SEC_AGENT] = kb_cfg_agent_keys,
        [SEC_TEAM] = kb_cfg_team_keys,
        [SEC_ROUTE] = kb_cfg_route_keys,
        [SEC_MODEL] = kb_cfg_model_keys,
};
static const char *const section_prefix[_SEC_MAX] = {
        [SEC_AGENT] = "agent", [SEC_TEAM] = "team", [SEC_ROUTE] = "route", [SEC_MODEL] = "model",
};

static const char *section_name(struct parser *p) {
        struct kb_config *c = p->config;
        switch (p->sec) {
        case SEC_TEAM:
                return c->teams[p->idx].name;
        case SEC_ROUTE:
                return c->routes[p->idx].name;
        case SEC_MODEL:
                return c->models[p->idx].name;
        default:
                return NULL;
        }
}

static void *section_base(struct parser *p) {
        struct kb_config *c = p->config;
        switch (p->sec) {
        case SEC_AGENT:
                return &c->agent;
        case SEC_TEAM:
                return &c->teams[p->idx];
        case SEC_ROUTE:
                return &c->routes[p->idx];
        case SEC_MODEL:
                return &c->models[p->idx];
        default:
                return NULL;
        }
}

static unsigned key_seen(struct parser *p, const char *name) {
        const struct key_def *keys = section_keys[p->sec];
        for (size_t i = 0; keys[i].name; i++)
                if (streq(keys[i].name, name))
                        return p->seen[i];
        return 0;
}

/* Checks what a section needs as a whole, once its last line is read. */
static int finish_section(struct parser *p) {
        const char *name = section_name(p);
        switch (p->sec) {
        case SEC_TEAM: {
                const struct kb_team *t = &p->config->teams[p->idx];
                if (t->n_uids + t->n_gids + t->n_units == 0)
                        return kb_cfg_fail(p, p->sec_line, "team '%s' matches nobody: give users, groups or units",
                                           name);
                break;
        }
        case SEC_ROUTE: {
                struct kb_route *rt = &p->config->routes[p->idx];
                if (!key_seen(p, "family"))
                        return kb_cfg_fail(p, p->sec_line, "route '%s': 'family' is required", name);
                if (!rt->base_url)
                        return kb_cfg_fail(p, p->sec_line, "route '%s': 'base_url' is required", name);
                if (!key_seen(p, "auth"))
                        rt->auth = rt->family == KB_FAMILY_ANTHROPIC ? KB_AUTH_X_API_KEY : KB_AUTH_BEARER;
                break;
        }
        case SEC_MODEL:
                if (p->config->models[p->idx].n_targets == 0)
                        return kb_cfg_fail(p, p->sec_line, "model '%s' has no target", name);
                break;
        default:
                break;
        }
        return 0;
}

static int begin_section(struct parser *p, char *hdr) {
        struct kb_config *c = p->config;
        char *close = strchr(hdr, ']');
        if (!close)
                return kb_cfg_fail(p, p->line, "missing ']' in section header");
        if (close[1])
                return kb_cfg_fail(p, p->line, "unexpected text after section header");
        *close = 0;
        const char *sname = hdr + 1;
        int r = finish_section(p);
        if (r < 0)
                return r;
        p->sec = SEC_NONE;
        memset(p->seen, 0, sizeof(p->seen));
        p->sec_line = p->line;

        if (streq(sname, "agent")) {
                if (p->agent_line)
                        return kb_cfg_fail(p, p->line, "duplicate section [agent], first on line %u", p->agent_line);
                p->agent_line = p->line;
                p->sec = SEC_AGENT;
                return 0;
        }
        const char *colon = strchr(sname, ':');
        enum section_kind kind = SEC_NONE;
        for (int k = SEC_TEAM; colon && k < _SEC_MAX; k++)
                if (strlen(section_prefix[k]) == (size_t) (colon - sname) &&
                    strncmp(sname, section_prefix[k], (size_t) (colon - sname)) == 0)
                        kind = (enum section_kind) k;
        if (kind == SEC_NONE)
                return kb_cfg_fail(p, p->line, "unknown section [%s]", sname);
        const char *name = colon + 1;
        if (!*name)
                return kb_cfg_fail(p, p->line, "empty name in section [%s]", sname);
        if (kind == SEC_MODEL ? !kb_cfg_valid_model_name(name) : !kb_cfg_valid_name(name, NAME_MAX_LEN))
                return kb_cfg_fail(p, p->line, "invalid name in section [%s]", sname);

        const struct kb_team *ot = kind == SEC_TEAM ? kb_config_find_team(c, name) : NULL;
        const struct kb_route *orr = kind == SEC_ROUTE ? kb_config_find_route(c, name) : NULL;
        const struct kb_model *om = kind == SEC_MODEL ? kb_config_find_model(c, name) : NULL;
        unsigned first = ot ? ot->line : orr ? orr->line : om ? om->line : 0;
        if (first)
                return kb_cfg_fail(p, p->line, "duplicate section [%s], first on line %u", sname, first);

        char *dup = strdup(name);
        bool ok = false;
        if (!dup)
                return kb_cfg_oom(p);
        if (kind == SEC_TEAM) {
                struct kb_team *t = ARRAY_ADD(c->teams, c->n_teams);
                if ((ok = t))
                        *t = (struct kb_team) { .name = dup, .unpriced = -1, .line = p->line };
        } else if (kind == SEC_ROUTE) {
                struct kb_route *rt = ARRAY_ADD(c->routes, c->n_routes);
                if ((ok = rt)) {
                        *rt = (struct kb_route) {
                                .name = dup, .timeout_usec = 600 * USEC_PER_SEC,
                                .connect_timeout_usec = 10 * USEC_PER_SEC, .line = p->line,
                                .breaker_failures = 5, .breaker_error_ratio = 0.5,
                                .breaker_window_usec = 30 * USEC_PER_SEC, .breaker_min_requests = 20,
                                .breaker_cooldown_usec = 30 * USEC_PER_SEC,
                        };
                        const char *bad;
                        (void) kb_cfg_parse_retry_on(KB_RETRY_ON_DEFAULT, rt, &bad);
                }
        } else {
                struct kb_model *m = ARRAY_ADD(c->models, c->n_models);
                if ((ok = m))
                        *m = (struct kb_model) {
                                .name = dup, .line = p->line, .max_attempts = 3,
                                .retry_after_max_usec = 5 * USEC_PER_SEC,
                        };
        }
        if (!ok) {
                free(dup);
                return kb_cfg_oom(p);
        }
        size_t n = kind == SEC_TEAM ? c->n_teams : kind == SEC_ROUTE ? c->n_routes : c->n_models;
        p->sec = kind;
        p->idx = n - 1;
        return 0;
}

/* inih reads through this so that we always know the line number (Debian's
 * libinih is built without INI_HANDLER_LINENO), catch lines inih would cut
 * silently, strip '#' comments that inih keeps in values, and see section
 * headers, which inih does not report for sections without keys. Leading
 * blanks are dropped so that inih's multi-line continuation never applies. */
static char *reader(char *str, int num, void *stream) {
        struct parser *p = stream;
        if (p->eof || p->error)
                return NULL;
        if (p->pos >= p->len) {
                p->eof = true;
                (void) finish_section(p);
                return NULL;
        }
        const char *s = p->text + p->pos;
        const char *nl = memchr(s, '\n', p->len - p->pos);
        size_t l = nl ? (size_t) (nl - s) : p->len - p->pos;
        p->pos += l + (nl ? 1 : 0);
        p->line++;
        if (p->line == 1 && l >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
                s += 3, l -= 3;
        while (l > 0 && (*s == ' ' || *s == '\t'))
                s++, l--;
        if (l > 0 && (*s == '#' || *s == ';'))
                l = 0;
        for (size_t i = 1; i < l; i++)
                if ((s[i] == '#' || s[i] == ';') && (s[i - 1] == ' ' || s[i - 1] == '\t')) {
                        l = i;
                        break;
                }
        while (l > 0 && (s[l - 1] == ' ' || s[l - 1] == '\t' || s[l - 1] == '\r'))
                l--;
        if (num < 2 || l > (size_t) num - 2) {
                kb_cfg_fail(p, p->line, "line too long (at most %d characters without comments)", num - 2);
                return NULL;
        }
        memcpy(str, s, l);
        str[l] = '\n';
        str[l + 1] = 0;
        if (l > 0 && *s == '[') {
                str[l] = 0;
                int r = begin_section(p, str);
                if (r < 0)
                        return NULL;
                memcpy(str, s, l);
                str[l] = '\n';
        } else if (l > 0) {
                /* inih also splits at ':', which would misread "header: x". */
                const char *sep = strpbrk(str, "=:");
                if (!sep || *sep != '=' || sep == str) {
                        kb_cfg_fail(p, p->line, "expected 'key = value' or '[section]'");
                        return NULL;
                }
        }
        return str;
}

static int handler(void *user, _unused_ const char *section, const char *name, const char *value) {
        struct parser *p = user;
        if (p->error)
                return 0;
        if (p->sec == SEC_NONE) {
                kb_cfg_fail(p, p->line, "'%s' outside of a section", name);
                return 0;
        }
        const struct key_def *keys = section_keys[p->sec];
        size_t i;
        for (i = 0; keys[i].name; i++)
                if (streq(keys[i].name, name))
                        break;
        if (!keys[i].name) {
                if (p->sec == SEC_AGENT)
                        kb_cfg_fail(p, p->line, "unknown key '%s' in [agent]", name);
                else
                        kb_cfg_fail(p, p->line, "unknown key '%s' in [%s:%s]", name, section_prefix[p->sec],
                                    section_name(p));
                return 0;
        }
        /* the key tables are sized by MAX_KEYS (test_conf_doc checks it) */
        assert(i < MAX_KEYS);
        if (p->seen[i] && !keys[i].multi) {
                kb_cfg_fail(p, p->line, "'%s' given twice, first on line %u", name, p->seen[i]);
                return 0;
        }
        if (!p->seen[i])
                p->seen[i] = p->line;
        if (!*value) {
                bad_value(p, name, "empty");
                return 0;
        }
        return keys[i].parse(p, &keys[i], section_base(p), value) < 0 ? 0 : 1;
}

static bool key_readable(const char *dir, const char *key) {
        if (!dir)
                return false;
        _cleanup_free_ char *path = NULL;
        if (asprintf(&path, "%s/%s", dir, key) < 0)
                return false;
        struct stat st;
        return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, R_OK) == 0;
}

static int resolve_refs(struct parser *p, bool check_keys) {
        struct kb_config *c = p->config;
        for (size_t i = 0; i < p->n_refs; i++) {
                const struct ref *ref = &p->refs[i];
                switch (ref->kind) {
                case REF_TARGET:
                case REF_FALLBACK: {
                        struct kb_model *m = &c->models[ref->owner];
                        struct kb_target *t = ref->kind == REF_TARGET ? &m->targets[ref->item]
                                                                      : &m->fallbacks[ref->item];
                        t->route = (struct kb_route *) kb_config_find_route(c, ref->name);
                        if (!t->route)
                                return kb_cfg_fail(p, ref->line, "model '%s': unknown route '%s'", m->name, ref->name);
                        break;
                }
                case REF_TEAM_MODEL: {
                        const struct kb_team *t = &c->teams[ref->owner];
                        if (!kb_config_find_model(c, t->models[ref->item]))
                                return kb_cfg_fail(p, ref->line, "team '%s': unknown model '%s'", t->name,
                                                   t->models[ref->item]);
                        break;
                }
                case REF_TEAM_ROUTE: {
                        const struct kb_team *t = &c->teams[ref->owner];
                        const struct kb_route *rt = kb_config_find_route(c, t->default_routes[ref->item]);
                        if (!rt)
                                return kb_cfg_fail(p, ref->line, "team '%s': default_route: unknown route '%s'",
                                                   t->name, t->default_routes[ref->item]);
                        for (size_t k = 0; k < ref->item; k++) {
                                const struct kb_route *o = kb_config_find_route(c, t->default_routes[k]);
                                if (o && o->family == rt->family)
                                        return kb_cfg_fail(p, ref->line,
                                                           "team '%s': a second default_route for the %s API "
                                                           "('%s', then '%s'): give one per family",
                                                           t->name, kb_family_to_string(rt->family), o->name,
                                                           rt->name);
                        }
                        break;
                }
                case REF_SHADOW:
                        /* after the targets: they may come later in the section */
                        break;
                case REF_KEY: {
                        const struct kb_route *rt = &c->routes[ref->owner];
                        if (check_keys && !key_readable(c->agent.credentials_dir, rt->key))
                                return kb_cfg_fail(p, ref->line,
                                                   "route '%s': key '%s' not found in credentials_dir (%s)",
                                                   rt->name, rt->key, c->agent.credentials_dir ?: "unset");
                        break;
                }
                }
        }
        for (size_t i = 0; i < p->n_refs; i++)
                if (p->refs[i].kind == REF_SHADOW && kb_cfg_resolve_shadow(p, &p->refs[i]) < 0)
                        return -EINVAL;
        return 0;
}

static int config_new(const char *name, struct kb_config **ret) {
        _cleanup_config_ struct kb_config *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->n_ref = 1;
        c->agent = (struct kb_agent_config) {
                .listen_mode = 0666,
                .max_request_body = UINT64_C(32) << 20,
                .max_upload_body = UINT64_C(512) << 20,
                .batch_poll_usec = 10 * 60 * USEC_PER_SEC,
                .header_timeout_usec = 10 * USEC_PER_SEC,
                .drain_timeout_usec = 30 * USEC_PER_SEC,
                .idle_timeout_usec = 60 * USEC_PER_SEC,
                .max_connections = 1024,
                .max_connections_per_uid = 256,
                .journal = true,
                .quota_store_timeout_usec = 50 * USEC_PER_MSEC,
        };
        if (!(c->path = strdup(name)) || !(c->agent.listen = strdup(KB_DEFAULT_LISTEN)) ||
            !(c->agent.admin = strdup(KB_DEFAULT_ADMIN)) || !(c->agent.keystore = strdup(KB_DEFAULT_KEYSTORE)) ||
            !(c->agent.state_dir = strdup(KB_DEFAULT_STATE_DIR)) ||
            !(c->agent.quota_store_prefix = strdup("keybroker:")) ||
            kb_cfg_expand_credentials("$CREDENTIALS_DIRECTORY", &c->agent.credentials_dir) < 0 ||
            kb_cfg_expand_credentials("$CREDENTIALS_DIRECTORY/keybroker.master", &c->agent.master_key) < 0)
                return -ENOMEM;
        *ret = TAKE_PTR(c);
        return 0;
}

static int load_text(const char *name, const char *text, size_t len, bool check_keys, struct kb_config **ret,
                     char **ret_error) {
        struct parser p = { .name = name, .text = text, .len = len };
        int r;

        if (len > CONFIG_MAX_SIZE)
                r = kb_cfg_fail(&p, 0, "file too large (more than %u bytes)", CONFIG_MAX_SIZE);
        else if (memchr(text, 0, len))
                r = kb_cfg_fail(&p, 0, "file contains a NUL byte");
        else if ((r = config_new(name, &p.config)) < 0)
                kb_cfg_fail(&p, 0, "out of memory");
        else {
                int e = ini_parse_stream(reader, &p, handler, &p);
                if (e > 0 && (!p.error || (unsigned) e < p.error_line)) {
                        free(TAKE_PTR(p.error));
                        kb_cfg_fail(&p, (unsigned) e, "expected 'key = value' or '[section]'");
                } else if (e < 0 && !p.error)
                        kb_cfg_oom(&p);
                if (!p.error)
                        resolve_refs(&p, check_keys);
                r = p.oom ? -ENOMEM : p.error ? -EINVAL : 0;
        }

        for (size_t i = 0; i < p.n_refs; i++)
                free(p.refs[i].name);
        free(p.refs);
        if (r < 0) {
                kb_config_unref(p.config);
                if (ret_error)
                        *ret_error = TAKE_PTR(p.error);
                free(p.error);
                return r;
        }
        *ret = p.config;
        return 0;
}

int kb_config_load_string(const char *name, const char *text, bool check_keys, struct kb_config **ret,
                          char **ret_error) {
        if (!name || !text || !ret)
                return -EINVAL;
        return load_text(name, text, strnlen(text, CONFIG_MAX_SIZE + 1), check_keys, ret, ret_error);
}

static int set_error(char **ret_error, const char *path, const char *what, int err) {
        if (ret_error && asprintf(ret_error, "%s: %s%s%s", path, what, err ? ": " : "", err ? strerror(err) : "") < 0)
                *ret_error = NULL;
        return err ? -err : -EINVAL;
}

int kb_config_load(const char *path, bool check_keys, struct kb_config **ret, char **ret_error) {
        if (!path || !ret)
                return -EINVAL;
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return set_error(ret_error, path, "cannot open", errno);
        struct stat st;
        if (fstat(fd, &st) < 0)
                return set_error(ret_error, path, "cannot stat", errno);
        if (!S_ISREG(st.st_mode))
                return set_error(ret_error, path, "not a regular file", 0);
        if (st.st_size > (off_t) CONFIG_MAX_SIZE)
                return set_error(ret_error, path, "file too large", EFBIG);

        struct kb_buf b = {};
        for (;;) {
                int r = kb_buf_reserve(&b, 64 * 1024);
                if (r < 0) {
                        kb_buf_free(&b);
                        return set_error(ret_error, path, "cannot read", -r);
                }
                ssize_t n = read(fd, b.data + b.len, b.cap - b.len - 1);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        int e = errno;
                        kb_buf_free(&b);
                        return set_error(ret_error, path, "cannot read", e);
                }
                if (n == 0)
                        break;
                b.len += (size_t) n;
                b.data[b.len] = 0;
                if (b.len > CONFIG_MAX_SIZE)
                        break; /* load_text reports it */
        }
        int r = load_text(path, b.data ?: "", b.len, check_keys, ret, ret_error);
        kb_buf_free(&b);
        return r;
}

struct kb_config *kb_config_ref(struct kb_config *c) {
        if (c)
                __atomic_add_fetch(&c->n_ref, 1, __ATOMIC_RELAXED);
        return c;
}

static void strv_free(char **v, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(v[i]);
        free(v);
}

static void targets_free(struct kb_target *t, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(t[i].upstream_model);
        free(t);
}

struct kb_config *kb_config_unref(struct kb_config *c) {
        if (!c || __atomic_sub_fetch(&c->n_ref, 1, __ATOMIC_ACQ_REL) > 0)
                return NULL;
        struct kb_agent_config *a = &c->agent;
        free(a->listen);
        free(a->admin);
        free(a->admin_uids);
        free(a->admin_gids);
        free(a->credentials_dir);
        free(a->keystore);
        free(a->master_key);
        free(a->state_dir);
        free(a->quota_store);
        free(a->store.host);
        free(a->store.path);
        free(a->quota_store_password);
        free(a->quota_store_prefix);
        for (size_t i = 0; i < c->n_teams; i++) {
                struct kb_team *t = &c->teams[i];
                free(t->name);
                free(t->uids);
                free(t->gids);
                strv_free(t->units, t->n_units);
                strv_free(t->models, t->n_models);
                free(t->owner);
                for (size_t k = 0; k < t->n_default_routes; k++)
                        free(t->default_routes[k]);
                free(t->default_routes);
        }
        free(c->teams);
        for (size_t i = 0; i < c->n_routes; i++) {
                struct kb_route *rt = &c->routes[i];
                free(rt->name);
                free(rt->base_url);
                free(rt->key);
                free(rt->auth_header);
                strv_free(rt->headers, rt->n_headers);
                free(rt->ca_file);
                free(rt->owner);
                free(rt->key_owner);
                free(rt->status_url);
                for (size_t j = 0; j < rt->n_prices; j++)
                        free(rt->prices[j].model);
                free(rt->prices);
        }
        free(c->routes);
        for (size_t i = 0; i < c->n_models; i++) {
                free(c->models[i].name);
                targets_free(c->models[i].targets, c->models[i].n_targets);
                targets_free(c->models[i].fallbacks, c->models[i].n_fallbacks);
                if (c->models[i].shadow)
                        free(c->models[i].shadow->upstream_model);
                free(c->models[i].shadow);
        }
        free(c->models);
        free(c->path);
        free(c);
        return NULL;
}

const struct kb_team *kb_config_find_team(const struct kb_config *c, const char *name) {
        for (size_t i = 0; c && name && i < c->n_teams; i++)
                if (streq(c->teams[i].name, name))
                        return &c->teams[i];
        return NULL;
}

const struct kb_route *kb_config_find_route(const struct kb_config *c, const char *name) {
        for (size_t i = 0; c && name && i < c->n_routes; i++)
                if (streq(c->routes[i].name, name))
                        return &c->routes[i];
        return NULL;
}

const struct kb_model *kb_config_find_model(const struct kb_config *c, const char *name) {
        for (size_t i = 0; c && name && i < c->n_models; i++)
                if (streq(c->models[i].name, name))
                        return &c->models[i];
        return NULL;
}

bool kb_team_allows_model(const struct kb_team *t, const char *model) {
        if (!t || !model)
                return false;
        if (t->models_all)
                return true;
        for (size_t i = 0; i < t->n_models; i++)
                if (streq(t->models[i], model))
                        return true;
        return false;
}

bool kb_team_denies_unpriced(const struct kb_team *t) {
        if (!t)
                return false;
        if (t->unpriced >= 0)
                return t->unpriced == 0;
        return t->budget_microusd_per_day > 0 || t->budget_microusd_per_month > 0;
}

bool kb_team_has_limits(const struct kb_team *t) {
        return t && (t->requests_per_minute || t->tokens_per_minute || t->tokens_per_day ||
                     t->budget_microusd_per_day > 0 || t->budget_microusd_per_month > 0 || t->max_concurrent);
}

bool kb_route_retry_status(const struct kb_route *r, long status) {
        if (!r || status < 400 || status > 599)
                return false;
        unsigned b = (unsigned) (status - 400);
        return (r->retry_statuses[b / 64] >> (b % 64)) & 1;
}

static const char *const family_names[_KB_FAMILY_MAX] = {
        [KB_FAMILY_OPENAI] = "openai",
        [KB_FAMILY_ANTHROPIC] = "anthropic",
};

const char *kb_family_to_string(kb_family f) {
        return (unsigned) f < _KB_FAMILY_MAX ? family_names[f] : NULL;
}

int kb_family_from_string(const char *s) {
        for (int f = 0; s && f < _KB_FAMILY_MAX; f++)
                if (streq(s, family_names[f]))
                        return f;
        return -EINVAL;
}
