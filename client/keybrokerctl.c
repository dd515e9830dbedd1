/* SPDX-License-Identifier: MIT */
/* keybrokerctl: the ops CLI. This version carries `whoami`; the admin-socket
 * commands (status, key, team, route, model, reload) and `usage` come with
 * the admin API. */

#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>

#include "keybroker/keybroker.h"
#include "util.h"

static size_t collect(char *p, size_t size, size_t n, void *userdata) {
        struct kb_buf *b = userdata;
        if (b->len + size * n > 1024 * 1024) /* an answer this big is not whoami */
                return 0;
        return kb_buf_append(b, p, size * n) < 0 ? 0 : size * n;
}

static void help(void) {
        printf("Usage: keybrokerctl [--json] COMMAND [ARGS]\n"
               "\n"
               "Commands:\n"
               "  whoami [--socket PATH]   who the broker thinks you are: uid, groups, unit, team\n"
               "\n"
               "Options:\n"
               "      --json      machine-readable output\n"
               "  -h, --help      show this help\n"
               "      --version   show the version\n"
               "\n"
               "Exit status: 0 ok, 1 error, 2 usage.\n");
}

static int cmd_whoami(int argc, char **argv, bool json) {
        static const struct option options[] = {
                { "socket", required_argument, NULL, 's' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        const char *sock = KB_DEFAULT_LISTEN;
        int c;

        optind = 1;
        while ((c = getopt_long(argc, argv, "s:h", options, NULL)) >= 0)
                switch (c) {
                case 's':
                        sock = optarg;
                        break;
                case 'h':
                        printf("Usage: keybrokerctl whoami [--socket PATH]\n\n"
                               "Ask the broker on the app socket (default %s) who you are.\n",
                               KB_DEFAULT_LISTEN);
                        return 0;
                default:
                        return 2;
                }
        if (optind < argc) {
                fprintf(stderr, "keybrokerctl whoami: unexpected argument '%s'\n", argv[optind]);
                return 2;
        }

        struct kb_buf body = {};
        long status = 0;
        CURL *h = curl_easy_init();
        if (!h)
                return 1;
        curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, sock);
        curl_easy_setopt(h, CURLOPT_URL, "http://localhost" KB_PATH_WHOAMI);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
        curl_easy_setopt(h, CURLOPT_TIMEOUT, 10L);
        CURLcode cr = curl_easy_perform(h);
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(h);
        if (cr != CURLE_OK) {
                fprintf(stderr, "keybrokerctl: cannot reach the broker at %s: %s\n", sock, curl_easy_strerror(cr));
                kb_buf_free(&body);
                return 1;
        }

        json_error_t err;
        json_t *j = json_loadb(body.data ?: "", body.len, 0, &err);
        int ret = 0;
        if (!j || status != 200) {
                fprintf(stderr, "keybrokerctl: the broker answered %ld: %s\n", status, body.data ?: "");
                ret = 1;
        } else if (json) {
                char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
                printf("%s\n", s ?: "{}");
                free(s);
        } else {
                json_t *v;
                size_t i;
                printf("uid    %" JSON_INTEGER_FORMAT "\n", json_integer_value(json_object_get(j, "uid")));
                printf("gid    %" JSON_INTEGER_FORMAT "\n", json_integer_value(json_object_get(j, "gid")));
                printf("pid    %" JSON_INTEGER_FORMAT "\n", json_integer_value(json_object_get(j, "pid")));
                printf("groups");
                json_array_foreach(json_object_get(j, "groups"), i, v)
                        printf(" %" JSON_INTEGER_FORMAT, json_integer_value(v));
                printf("\nunit   %s\n", json_string_value(json_object_get(j, "unit")) ?: "-");
                printf("exe    %s\n", json_string_value(json_object_get(j, "exe")) ?: "-");
                printf("team   %s\n", json_string_value(json_object_get(j, "team")) ?: "- (none: calls get 403 unknown_team)");
                printf("teams ");
                json_array_foreach(json_object_get(j, "teams"), i, v)
                        printf(" %s", json_string_value(v));
                printf("\n");
        }
        json_decref(j);
        kb_buf_free(&body);
        return ret;
}

int main(int argc, char **argv) {
        bool json = false;
        int i = 1;

        for (; i < argc && argv[i][0] == '-'; i++) {
                if (streq(argv[i], "--json"))
                        json = true;
                else if (streq(argv[i], "-h") || streq(argv[i], "--help")) {
                        help();
                        return 0;
                } else if (streq(argv[i], "--version")) {
                        printf("keybrokerctl %s\n", KB_VERSION);
                        return 0;
                } else {
                        fprintf(stderr, "keybrokerctl: unknown option '%s'\n", argv[i]);
                        return 2;
                }
        }
        if (i >= argc) {
                help();
                return 2;
        }
        if (streq(argv[i], "whoami"))
                return cmd_whoami(argc - i, argv + i, json);
        fprintf(stderr, "keybrokerctl: unknown command '%s'; see keybrokerctl --help\n", argv[i]);
        return 2;
}
