/* SPDX-License-Identifier: MIT */
/* keybrokerctl key list|set|rotate|rollback|delete */

#include <getopt.h>
#include <inttypes.h>

#include "ctl.h"
#include "util.h"

static void help_key(void) {
        printf("Usage: keybrokerctl [OPTIONS] key COMMAND\n"
               "\n"
               "Provider keys held by keybrokerd. Secrets are read from stdin only:\n"
               "typed at a prompt with echo off, or piped in (one trailing newline is\n"
               "stripped); never from the command line or the environment.\n"
               "\n"
               "Commands:\n"
               "  list                       keys, versions, fingerprints, use (never secrets)\n"
               "  set NAME                   add a new key at version 1 (fails if NAME exists)\n"
               "  rotate NAME                add version N+1 of NAME and make it active\n"
               "  rollback NAME              make the previous version of NAME active again\n"
               "  delete NAME [--version N]  delete one version, or every version of NAME\n"
               "\n"
               "Run 'keybrokerctl key COMMAND --help' for one command.\n");
}

static void help_list(void) {
        printf("Usage: keybrokerctl [--admin-socket PATH] [--json] key list\n"
               "\n"
               "List keys: NAME, ACTIVE version, VERSIONS kept (\"file\" for a plain\n"
               "credential file, version 0), FINGERPRINT, CREATED, LAST USED and USES\n"
               "(of the active version). Never shows a secret.\n");
}

static void help_set(void) {
        printf("Usage: keybrokerctl [--admin-socket PATH] [--json] key set NAME < secret\n"
               "\n"
               "Store a new key NAME at version 1; fails if NAME exists (use rotate).\n"
               "The secret is read from stdin: at a no-echo prompt when stdin is a\n"
               "terminal, else to end of file (at most 4096 bytes, one trailing newline\n"
               "stripped).\n");
}

static void help_rotate(void) {
        printf("Usage: keybrokerctl [--admin-socket PATH] [--json] key rotate NAME < secret\n"
               "\n"
               "Add version N+1 of key NAME and make it active for new requests;\n"
               "requests in flight finish with the version they started with, and the\n"
               "previous version is kept for rollback. Fails if NAME has no key.\n"
               "The secret is read from stdin as for 'key set'.\n");
}

static void help_rollback(void) {
        printf("Usage: keybrokerctl [--admin-socket PATH] [--json] key rollback NAME\n"
               "\n"
               "Make the version before the active one of key NAME active again.\n");
}

static void help_delete(void) {
        printf("Usage: keybrokerctl [--admin-socket PATH] [--json] key delete NAME [--version N]\n"
               "\n"
               "Delete version N of key NAME (never the active one), or without\n"
               "--version every version of NAME (refused while a route uses it).\n"
               "\n"
               "Options:\n"
               "      --version N   the version to delete\n"
               "  -h, --help        show this help\n");
}

/* "1,2,3" */
static void versions_text(const json_t *versions, char *buf, size_t size) {
        const json_t *v;
        size_t i, off = 0;

        buf[0] = 0;
        json_array_foreach(versions, i, v) {
                int k = snprintf(buf + off, size - off, "%s%" JSON_INTEGER_FORMAT, off ? "," : "",
                                 json_integer_value(json_object_get(v, "version")));
                if (k < 0 || (size_t) k >= size - off) {
                        /* Far too many versions for a column: say so. */
                        snprintf(buf + MIN(off, size - 5), 5, ",...");
                        return;
                }
                off += k;
        }
}

static const json_t *active_version(const json_t *key) {
        const json_t *v, *versions = json_object_get(key, "versions");
        json_int_t want = json_integer_value(json_object_get(key, "active_version"));
        size_t i;

        json_array_foreach(versions, i, v) {
                if (json_is_true(json_object_get(v, "active")))
                        return v;
                if (want && json_integer_value(json_object_get(v, "version")) == want)
                        return v;
        }
        return NULL;
}

static int key_list(const struct ctl *ctl, int argc, char **argv) {
        static const char *const headers[] = {
                "NAME", "ACTIVE", "VERSIONS", "FINGERPRINT", "CREATED", "LAST USED", "USES",
        };
        _cleanup_json_ json_t *j = NULL;
        _cleanup_table_ struct ctl_table *t = NULL;
        const json_t *k;
        size_t i;
        int optind_, r;

        r = ctl_parse_help_only(argc, argv, "key list", help_list, &optind_);
        if (r >= 0)
                return r;
        if (optind_ < argc)
                return ctl_extra_argument("key list");

        if (ctl_request(ctl, "GET", "/keys", NULL, NULL, &j) < 0)
                return CTL_EXIT_ERROR;
        if (ctl->json)
                return ctl_print_json(j) < 0 ? CTL_EXIT_ERROR : CTL_EXIT_OK;

        t = ctl_table_new(headers, ELEMENTSOF(headers));
        if (!t)
                goto oom;
        json_array_foreach(json_object_get(j, "keys"), i, k) {
                const json_t *a = active_version(k);
                char active[32], versions[256], created[64], used[64], uses[32];
                const char *name = json_string_value(json_object_get(k, "name"));
                const char *source = json_string_value(json_object_get(k, "source"));

                ctl_json_scalar(json_object_get(k, "active_version"), active, sizeof(active));
                /* A plain credential file is "version 0" (as in the journal's
                 * name@0): nothing is kept for rollback, say where it is from. */
                if (streq_ptr(source, "credentials"))
                        snprintf(versions, sizeof(versions), "file");
                else
                        versions_text(json_object_get(k, "versions"), versions, sizeof(versions));
                ctl_format_time(json_string_value(json_object_get(a, "created")), created, sizeof(created));
                ctl_format_time(json_string_value(json_object_get(a, "last_used")), used, sizeof(used));
                ctl_json_scalar(json_object_get(a, "uses"), uses, sizeof(uses));
                const char *row[] = {
                        name, active, versions, json_string_value(json_object_get(a, "fingerprint")),
                        created, used, uses,
                };
                if (ctl_table_add_row(t, row) < 0)
                        goto oom;
        }
        if (ctl_table_rows(t) == 0) {
                printf("No keys. Add one with: keybrokerctl key set NAME < secret-file\n");
                return CTL_EXIT_OK;
        }
        ctl_table_print(t, stdout);
        return CTL_EXIT_OK;
oom:
        fprintf(stderr, "keybrokerctl: out of memory\n");
        return CTL_EXIT_ERROR;
}

/* "openai-prod: version 3 active (fingerprint 0123456789abcdef)" */
static int confirm_version(const struct ctl *ctl, const json_t *j, const char *fallback_name) {
        if (ctl->json)
                return ctl_print_json(j) < 0 ? CTL_EXIT_ERROR : CTL_EXIT_OK;
        printf("%s: version %" JSON_INTEGER_FORMAT " active (fingerprint %s)\n",
               json_string_value(json_object_get(j, "name")) ?: fallback_name,
               json_integer_value(json_object_get(j, "version")),
               json_string_value(json_object_get(j, "fingerprint")) ?: "-");
        return CTL_EXIT_OK;
}

static int key_put(const struct ctl *ctl, int argc, char **argv, bool rotate) {
        const char *cmd = rotate ? "key rotate" : "key set";
        _cleanup_json_ json_t *j = NULL;
        _cleanup_free_ char *path = NULL, *esc = NULL;
        char *secret = NULL;
        size_t len;
        int optind_, r;

        r = ctl_parse_help_only(argc, argv, cmd, rotate ? help_rotate : help_set, &optind_);
        if (r >= 0)
                return r;
        if (optind_ >= argc)
                return ctl_usage_error(cmd, "missing NAME");
        /* "key set NAME sk-…": a secret on the command line is already in
         * shell history and ps; refuse it, and do not echo it back. */
        if (optind_ + 1 < argc) {
                fprintf(stderr, "keybrokerctl %s: unexpected argument after NAME; secrets are read from stdin only\n",
                        cmd);
                return CTL_EXIT_USAGE;
        }
        const char *name = argv[optind_];
        if (!name[0])
                return ctl_usage_error(cmd, "empty NAME");

        esc = ctl_escape_segment(name);
        if (!esc || asprintf(&path, "/keys/%s", esc) < 0) {
                path = NULL;
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return CTL_EXIT_ERROR;
        }

        if (ctl_secret_read(name, &secret, &len) < 0)
                return CTL_EXIT_ERROR;
        const char *const hdrs[] = { rotate ? "If-Match: *" : "If-None-Match: *", NULL };
        const struct ctl_body body = { .data = secret, .len = len };
        r = ctl_request(ctl, "PUT", path, hdrs, &body, &j);
        ctl_secret_free(secret);
        if (r < 0)
                return CTL_EXIT_ERROR;
        return confirm_version(ctl, j, name);
}

static int key_rollback(const struct ctl *ctl, int argc, char **argv) {
        _cleanup_json_ json_t *j = NULL;
        _cleanup_free_ char *path = NULL, *esc = NULL;
        int optind_, r;

        r = ctl_parse_help_only(argc, argv, "key rollback", help_rollback, &optind_);
        if (r >= 0)
                return r;
        if (optind_ >= argc)
                return ctl_usage_error("key rollback", "missing NAME");
        if (optind_ + 1 < argc)
                return ctl_extra_argument("key rollback");
        if (!argv[optind_][0])
                return ctl_usage_error("key rollback", "empty NAME");

        esc = ctl_escape_segment(argv[optind_]);
        if (!esc || asprintf(&path, "/keys/%s/rollback", esc) < 0) {
                path = NULL;
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return CTL_EXIT_ERROR;
        }
        if (ctl_request(ctl, "POST", path, NULL, NULL, &j) < 0)
                return CTL_EXIT_ERROR;
        return confirm_version(ctl, j, argv[optind_]);
}

/* A version: a positive decimal number, nothing else. */
static int parse_version(const char *s, unsigned *ret) {
        char *end;
        unsigned long v;

        if (!s || !(s[0] >= '1' && s[0] <= '9'))
                return -EINVAL;
        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno || *end || v > UINT32_MAX)
                return -EINVAL;
        *ret = (unsigned) v;
        return 0;
}

static int key_delete(const struct ctl *ctl, int argc, char **argv) {
        static const struct option options[] = {
                { "version", required_argument, NULL, 'V' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_json_ json_t *j = NULL;
        _cleanup_free_ char *path = NULL, *esc = NULL;
        bool have_version = false;
        unsigned version = 0;
        int c;

        optind = 0;
        opterr = 0;
        while ((c = getopt_long(argc, argv, ":h", options, NULL)) >= 0)
                switch (c) {
                case 'V':
                        if (parse_version(optarg, &version) < 0)
                                return ctl_usage_error("key delete", "--version wants a positive number, not '%s'",
                                                       optarg);
                        have_version = true;
                        break;
                case 'h':
                        help_delete();
                        return CTL_EXIT_OK;
                case ':':
                        return ctl_usage_error("key delete", "--version needs a value");
                default:
                        return ctl_usage_error("key delete", "unknown option; see keybrokerctl key delete --help");
                }
        if (optind >= argc)
                return ctl_usage_error("key delete", "missing NAME");
        if (optind + 1 < argc)
                return ctl_extra_argument("key delete");
        const char *name = argv[optind];
        if (!name[0])
                return ctl_usage_error("key delete", "empty NAME");

        esc = ctl_escape_segment(name);
        if (!esc || (have_version ? asprintf(&path, "/keys/%s?version=%u", esc, version)
                                  : asprintf(&path, "/keys/%s", esc)) < 0) {
                path = NULL;
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return CTL_EXIT_ERROR;
        }
        if (ctl_request(ctl, "DELETE", path, NULL, NULL, &j) < 0)
                return CTL_EXIT_ERROR;
        if (ctl->json)
                return ctl_print_json(j) < 0 ? CTL_EXIT_ERROR : CTL_EXIT_OK;

        const json_t *deleted = json_object_get(j, "deleted"), *v;
        size_t i;
        printf("%s: deleted version%s ", json_string_value(json_object_get(j, "name")) ?: name,
               json_array_size(deleted) == 1 ? "" : "s");
        json_array_foreach(deleted, i, v)
                printf("%s%" JSON_INTEGER_FORMAT, i ? "," : "", json_integer_value(v));
        if (json_array_size(deleted) == 0)
                printf("-");
        printf("\n");
        return CTL_EXIT_OK;
}

int ctl_cmd_key(const struct ctl *ctl, int argc, char **argv) {
        if (argc < 2)
                return ctl_usage_error("key", "missing command (list, set, rotate, rollback, delete); "
                                              "see keybrokerctl key --help");
        const char *sub = argv[1];
        if (streq(sub, "-h") || streq(sub, "--help") || streq(sub, "help")) {
                help_key();
                return CTL_EXIT_OK;
        }
        argc--, argv++;
        if (streq(sub, "list"))
                return key_list(ctl, argc, argv);
        if (streq(sub, "set"))
                return key_put(ctl, argc, argv, false);
        if (streq(sub, "rotate"))
                return key_put(ctl, argc, argv, true);
        if (streq(sub, "rollback"))
                return key_rollback(ctl, argc, argv);
        if (streq(sub, "delete"))
                return key_delete(ctl, argc, argv);
        return ctl_usage_error("key", "unknown command '%s'; see keybrokerctl key --help", sub);
}
