/* SPDX-License-Identifier: MIT */
/* man/keybroker.conf.5 against the parser: every key the parser accepts in a
 * section is documented under that section's .SS heading, and every key the
 * page documents there is one the parser accepts. A key entry is a ".TP"
 * line directly followed by a ".B" or ".BR" line whose first word is the
 * key's name; the page uses that pattern for nothing else inside the four
 * key sections. Run from the repository root (make unit), or point
 * KB_MAN_DIR at the directory that holds keybroker.conf.5. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "config-internal.h"

#define MAN_PAGE "keybroker.conf.5"
#define MAN_DIR_DEFAULT "man"

struct doc_key {
        char *name;
        unsigned line;
};

struct doc {
        struct doc_key *keys[_SEC_MAX];
        size_t n_keys[_SEC_MAX];
        unsigned heading_line[_SEC_MAX]; /* line of the section's .SS; 0: none */
};

static const char *const section_title[_SEC_MAX] = {
        [SEC_AGENT] = "[agent]",
        [SEC_TEAM] = "[team:NAME]",
        [SEC_ROUTE] = "[route:NAME]",
        [SEC_MODEL] = "[model:NAME]",
};

static void doc_free(struct doc *d) {
        for (size_t s = 0; s < _SEC_MAX; s++) {
                for (size_t i = 0; i < d->n_keys[s]; i++)
                        free(d->keys[s][i].name);
                free(d->keys[s]);
        }
        *d = (struct doc) {};
}

/* Whether line is the request ".NAME", alone or followed by arguments. */
static bool is_macro(const char *line, size_t len, const char *name) {
        size_t l = strlen(name);
        return len >= l + 1 && line[0] == '.' && memcmp(line + 1, name, l) == 0 &&
               (len == l + 1 || line[l + 1] == ' ' || line[l + 1] == '\t');
}

/* The section an .SS heading opens: "[agent]", "[team:...", "[route:...",
 * "[model:...", quoted or not; anything else ends the key sections. */
static enum section_kind heading_kind(const char *arg, size_t len) {
        static const struct {
                const char *prefix;
                enum section_kind kind;
        } headings[] = {
                { "[agent]", SEC_AGENT },
                { "[team:", SEC_TEAM },
                { "[route:", SEC_ROUTE },
                { "[model:", SEC_MODEL },
        };

        while (len > 0 && strchr(" \t\"", *arg))
                arg++, len--;
        for (size_t i = 0; i < ELEMENTSOF(headings); i++) {
                size_t l = strlen(headings[i].prefix);
                if (len >= l && memcmp(arg, headings[i].prefix, l) == 0)
                        return headings[i].kind;
        }
        return SEC_NONE;
}

/* The first word of a .B/.BR line's arguments, with "\-" read as '-' and
 * "\&" dropped; NULL when there is none. */
static char *first_word(const char *arg, size_t len) {
        struct kb_buf b = {};
        size_t i = 0;

        while (i < len && strchr(" \t", arg[i]))
                i++;
        if (i < len && arg[i] == '"')
                i++;
        for (; i < len && !strchr(" \t\"", arg[i]); i++) {
                if (arg[i] == '\\') {
                        if (i + 1 < len && arg[i + 1] == '-') {
                                if (kb_buf_append(&b, "-", 1) < 0)
                                        break;
                                i++;
                                continue;
                        }
                        if (i + 1 < len && arg[i + 1] == '&') {
                                i++;
                                continue;
                        }
                        break; /* a font change or other escape ends the word */
                }
                if (kb_buf_append(&b, &arg[i], 1) < 0)
                        break;
        }
        if (b.len == 0) {
                kb_buf_free(&b);
                return NULL;
        }
        return b.data;
}

static int doc_add(struct doc *d, enum section_kind sec, char *name, unsigned line) {
        struct doc_key *k = realloc(d->keys[sec], (d->n_keys[sec] + 1) * sizeof(*k));
        if (!k) {
                free(name);
                return -ENOMEM;
        }
        d->keys[sec] = k;
        k[d->n_keys[sec]++] = (struct doc_key) { .name = name, .line = line };
        return 0;
}

static int doc_parse(const char *text, struct doc *ret) {
        struct doc d = {};
        enum section_kind sec = SEC_NONE;
        bool after_tp = false;
        unsigned line = 0;

        for (const char *p = text; *p;) {
                const char *nl = strchr(p, '\n');
                size_t len = nl ? (size_t) (nl - p) : strlen(p);
                const char *s = p;

                p += len + (nl ? 1 : 0);
                line++;
                if (len > 0 && s[len - 1] == '\r')
                        len--;

                bool tp = false;
                if (is_macro(s, len, "SH"))
                        sec = SEC_NONE;
                else if (is_macro(s, len, "SS")) {
                        sec = heading_kind(s + 3, len - 3);
                        if (sec != SEC_NONE && d.heading_line[sec] == 0)
                                d.heading_line[sec] = line;
                } else if (is_macro(s, len, "TP"))
                        tp = true;
                else if (after_tp && sec != SEC_NONE && (is_macro(s, len, "B") || is_macro(s, len, "BR"))) {
                        size_t skip = is_macro(s, len, "B") ? 2 : 3;
                        char *name = first_word(s + skip, len - skip);
                        if (name && doc_add(&d, sec, name, line) < 0) {
                                doc_free(&d);
                                return -ENOMEM;
                        }
                }
                after_tp = tp;
        }
        *ret = d;
        return 0;
}

static char *man_page_path(void) {
        const char *dir = getenv("KB_MAN_DIR");
        char *path = NULL;

        if (asprintf(&path, "%s/%s", dir && *dir ? dir : MAN_DIR_DEFAULT, MAN_PAGE) < 0)
                return NULL;
        return path;
}

/* Reads the page into *ret_text; fails the test when it cannot. */
static void read_page(const char *path, char **ret_text) {
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        struct kb_buf b = {};
        char chunk[4096];
        size_t n;

        if (!f)
                fail_msg("cannot open %s: %s (run from the repository root, or set KB_MAN_DIR)", path,
                         strerror(errno));
        while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
                assert_int_equal(kb_buf_append(&b, chunk, n), 0);
        if (ferror(f)) {
                kb_buf_free(&b);
                fail_msg("cannot read %s", path);
        }
        assert_int_equal(kb_buf_append(&b, "", 0), 0);
        if (memchr(b.data, 0, b.len)) {
                kb_buf_free(&b);
                fail_msg("%s contains a NUL byte", path);
        }
        *ret_text = b.data;
}

static const struct doc_key *doc_find(const struct doc *d, enum section_kind sec, const char *name) {
        for (size_t i = 0; i < d->n_keys[sec]; i++)
                if (streq(d->keys[sec][i].name, name))
                        return &d->keys[sec][i];
        return NULL;
}

static bool table_has(const struct key_def *table, const char *name) {
        for (size_t i = 0; table[i].name; i++)
                if (streq(table[i].name, name))
                        return true;
        return false;
}

/* Both ways, every mismatch printed; the failure names the first. */
static void check_section(enum section_kind sec, const struct key_def *table, const char *table_name) {
        _cleanup_free_ char *path = man_page_path();
        _cleanup_free_ char *text = NULL;
        char first[512] = "";
        size_t n_bad = 0, n_table = 0;
        struct doc d = {};

        assert_non_null(path);
        /* the parser keeps a line number per key of a section: MAX_KEYS */
        size_t n_keys = 0;
        while (table[n_keys].name)
                n_keys++;
        if (n_keys > MAX_KEYS)
                fail_msg("%s has %zu keys; the parser keeps room for MAX_KEYS = %u", table_name, n_keys, MAX_KEYS);
        read_page(path, &text);
        assert_int_equal(doc_parse(text, &d), 0);

        if (d.heading_line[sec] == 0) {
                doc_free(&d);
                fail_msg("%s has no '.SS %s' section", path, section_title[sec]);
        }

        for (size_t i = 0; table[i].name; i++) {
                n_table++;
                if (doc_find(&d, sec, table[i].name))
                        continue;
                print_error("%s: key '%s' of %s (%s) is not documented in section %s\n", path, table[i].name,
                            section_title[sec], table_name, section_title[sec]);
                if (n_bad++ == 0)
                        snprintf(first, sizeof(first), "key '%s' of section %s is not documented in %s",
                                 table[i].name, section_title[sec], path);
        }

        for (size_t i = 0; i < d.n_keys[sec]; i++) {
                const struct doc_key *k = &d.keys[sec][i];
                const struct doc_key *f = doc_find(&d, sec, k->name);
                if (f != k) {
                        print_error("%s:%u: key '%s' is documented twice in section %s, first on line %u\n",
                                    path, k->line, k->name, section_title[sec], f->line);
                        if (n_bad++ == 0)
                                snprintf(first, sizeof(first),
                                         "key '%s' is documented twice in section %s of %s (lines %u and %u)",
                                         k->name, section_title[sec], path, f->line, k->line);
                        continue;
                }
                if (table_has(table, k->name))
                        continue;
                print_error("%s:%u: key '%s' is documented in section %s, but the parser (%s) has no such key\n",
                            path, k->line, k->name, section_title[sec], table_name);
                if (n_bad++ == 0)
                        snprintf(first, sizeof(first),
                                 "key '%s' documented in section %s (%s:%u) is not accepted by the parser", k->name,
                                 section_title[sec], path, k->line);
        }

        size_t n_doc = d.n_keys[sec];
        doc_free(&d);
        if (n_bad > 0)
                fail_msg("%s (%zu mismatch(es) in section %s)", first, n_bad, section_title[sec]);

        /* Not vacuous: the page and the parser both have real key lists. */
        assert_true(n_table >= 3);
        assert_true(n_doc >= 3);
        assert_int_equal(n_doc, n_table);
}

static void test_agent_keys(void **state) {
        check_section(SEC_AGENT, kb_cfg_agent_keys, "kb_cfg_agent_keys");
}

static void test_team_keys(void **state) {
        check_section(SEC_TEAM, kb_cfg_team_keys, "kb_cfg_team_keys");
}

static void test_route_keys(void **state) {
        check_section(SEC_ROUTE, kb_cfg_route_keys, "kb_cfg_route_keys");
}

static void test_model_keys(void **state) {
        check_section(SEC_MODEL, kb_cfg_model_keys, "kb_cfg_model_keys");
}

/* The extractor on a page whose answer is known: keys only from .TP +
 * .B/.BR inside the four sections, nothing from other .SS or .SH parts,
 * nor from .IP, .BI or a .B that does not follow a .TP. */
static void test_extractor(void **state) {
        static const char sample[] =
                ".TH X 5\n"
                ".SH SYNTAX\n"
                ".TP\n"
                ".B outside_any_section\n"
                ".SS [agent]\n"
                "How it runs.\n"
                ".TP\n"
                ".BR listen \" = \" \\fIPATH\\fR\n"
                "The socket.\n"
                ".TP\n"
                ".B admin\n"
                ".TP 4\n"
                ".BR \"quoted_key\" \" = \" x\n"
                ".TP\n"
                ".BI not_a_key \" = \" x\n"
                ".B not_after_tp\n"
                ".RS\n"
                ".IP \\fBweight=\\fIN\\fR 4\n"
                ".RE\n"
                ".TP\n"
                ".BR dash\\-ed\\&_key \" = \" x\r\n"
                ".SS \"[team:\\fINAME\\fR]\"\n"
                ".TP\n"
                ".BR users \" = \" \"\\fIUSER\\fR ...\"\n"
                ".SS Value types\n"
                ".TP\n"
                ".B after_other_heading\n"
                ".SS [route:NAME]\n"
                ".TP\n"
                ".B family\n"
                ".TP\n"
                ".B base_url\n"
                ".SS [model:NAME]\n"
                ".TP\n"
                ".B target\n"
                ".SH EXAMPLE\n"
                ".TP\n"
                ".B after_sh";
        static const char *const want_agent[] = { "listen", "admin", "quoted_key", "dash-ed_key" };
        struct doc d = {};

        assert_int_equal(doc_parse(sample, &d), 0);
        assert_int_equal(d.heading_line[SEC_AGENT], 5);
        assert_int_equal(d.heading_line[SEC_TEAM], 22);
        assert_int_equal(d.heading_line[SEC_ROUTE], 28);
        assert_int_equal(d.heading_line[SEC_MODEL], 33);
        assert_int_equal(d.n_keys[SEC_NONE], 0);

        assert_int_equal(d.n_keys[SEC_AGENT], ELEMENTSOF(want_agent));
        for (size_t i = 0; i < ELEMENTSOF(want_agent); i++)
                assert_string_equal(d.keys[SEC_AGENT][i].name, want_agent[i]);
        assert_int_equal(d.keys[SEC_AGENT][0].line, 8);

        assert_int_equal(d.n_keys[SEC_TEAM], 1);
        assert_string_equal(d.keys[SEC_TEAM][0].name, "users");
        assert_int_equal(d.n_keys[SEC_ROUTE], 2);
        assert_string_equal(d.keys[SEC_ROUTE][0].name, "family");
        assert_string_equal(d.keys[SEC_ROUTE][1].name, "base_url");
        assert_int_equal(d.n_keys[SEC_MODEL], 1);
        assert_string_equal(d.keys[SEC_MODEL][0].name, "target");
        doc_free(&d);

        /* And the real page yields a real list for each section. */
        _cleanup_free_ char *path = man_page_path();
        _cleanup_free_ char *text = NULL;
        assert_non_null(path);
        read_page(path, &text);
        assert_int_equal(doc_parse(text, &d), 0);
        for (size_t s = SEC_AGENT; s <= SEC_MODEL; s++)
                if (d.n_keys[s] < 3) {
                        size_t n = d.n_keys[s];
                        doc_free(&d);
                        fail_msg("%s: section %s yields %zu key(s), expected at least 3", path,
                                 section_title[s], n);
                }
        doc_free(&d);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_extractor),
                cmocka_unit_test(test_agent_keys),
                cmocka_unit_test(test_team_keys),
                cmocka_unit_test(test_route_keys),
                cmocka_unit_test(test_model_keys),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
