/* SPDX-License-Identifier: MIT */
/* keybrokerctl: the ops CLI. Talks HTTP/1.1 + JSON to keybrokerd's admin
 * socket (status, key, team, route, reload) and to the app socket (whoami).
 * Exit status: 0 ok, 1 error, 2 usage. */

#include <curl/curl.h>
#include <getopt.h>
#include <stdarg.h>

#include "ctl.h"
#include "keybroker/keybroker.h"
#include "util.h"

static void help(void) {
        printf("Usage: keybrokerctl [--admin-socket PATH] [--json] COMMAND [ARGS]\n"
               "\n"
               "Operate and query keybrokerd.\n"
               "\n"
               "Commands:\n"
               "  status                         daemon version, uptime, counters\n"
               "  key list                       keys, versions, fingerprints (never secrets)\n"
               "  key set NAME                   add a key; the secret is read from stdin\n"
               "  key rotate NAME                add and activate a new version (secret on stdin)\n"
               "  key rollback NAME              make the previous version active again\n"
               "  key delete NAME [--version N]  delete one version, or every version\n"
               "  team list                      teams, members, models, limits\n"
               "  route list                     routes, keys, circuits, error ratio, latency,\n"
               "                                 targets and weights\n"
               "  route check NAME [--model M] [--only|--skip CHECK...]\n"
               "                                 the ten-point preflight: ✓/✗ per check, evidence saved\n"
               "  model split NAME ROUTE=WEIGHT...  change a model's target weights live\n"
               "  model compare NAME [--since T] shadow pairs: agreement, errors, latency, cost\n"
               "  model baseline NAME [--since T]  save the serving route's figures as evidence\n"
               "  model promote NAME ROUTE --steps A,B,.. --hold D [gates] | NAME --abort\n"
               "                                 move traffic step by step, roll back on a breach\n"
               "  model status NAME              a promotion's step, gates, time left, baseline\n"
               "  reload                         re-read config and keystore\n"
               "  usage [--since T] [--by KEY]   requests, tokens, cost, errors, latency from\n"
               "                                 the journal (no daemon needed)\n"
               "  whoami [--socket PATH]         who the broker thinks you are (app socket)\n"
               "\n"
               "Options (before or after the command):\n"
               "      --admin-socket PATH   admin socket (default $KEYBROKER_ADMIN_SOCKET, else %s)\n"
               "      --json                print the daemon's JSON answer\n"
               "  -h, --help                show this help; 'COMMAND --help' for one command\n"
               "      --version             show the version\n"
               "\n"
               "Environment: KEYBROKER_ADMIN_SOCKET and KEYBROKER_SOCKET (whoami's app\n"
               "socket) name the sockets when no flag does.\n"
               "\n"
               "Secrets are read from stdin only (a no-echo prompt on a terminal), never\n"
               "from the command line or the environment.\n"
               "\n"
               "Exit status: 0 ok, 1 error, 2 usage.\n",
               KB_DEFAULT_ADMIN);
}

int ctl_usage_error(const char *cmd, const char *fmt, ...) {
        va_list ap;

        fprintf(stderr, "keybrokerctl%s%s: ", cmd ? " " : "", strempty(cmd));
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        return CTL_EXIT_USAGE;
}

int ctl_extra_argument(const char *cmd) {
        return ctl_usage_error(cmd, "unexpected argument; see keybrokerctl %s --help", cmd);
}

int ctl_parse_help_only(int argc, char **argv, const char *cmd, void (*help_fn)(void), int *ret_optind) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                {},
        };
        int c;

        /* optind = 0: a full getopt re-initialisation (GNU), for a new argv. */
        optind = 0;
        opterr = 0;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help_fn();
                        return CTL_EXIT_OK;
                default:
                        /* Not the option's text: "--secret=sk-…" must not be echoed. */
                        return ctl_usage_error(cmd, "unknown option; see keybrokerctl %s --help", cmd);
                }
        *ret_optind = optind;
        return -1;
}

/* A socket path from the environment (set and not empty), else the default;
 * a flag still wins over both. */
static const char *env_or(const char *name, const char *def) {
        const char *v = getenv(name);
        return v && *v ? v : def;
}

static void help_whoami(void) {
        printf("Usage: keybrokerctl [--json] whoami [--socket PATH]\n"
               "\n"
               "Ask the broker on the app socket ($KEYBROKER_SOCKET, else %s)\n"
               "who you are: uid, gid, pid, groups, systemd unit, executable, and the\n"
               "team your calls are charged to.\n"
               "\n"
               "Options:\n"
               "  -s, --socket PATH   the app socket\n"
               "  -h, --help          show this help\n",
               KB_DEFAULT_LISTEN);
}

static int cmd_whoami(const struct ctl *ctl, int argc, char **argv) {
        static const struct option options[] = {
                { "socket", required_argument, NULL, 's' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_json_ json_t *j = NULL;
        const char *sock = env_or("KEYBROKER_SOCKET", KB_DEFAULT_LISTEN);
        int c;

        optind = 0;
        opterr = 0;
        while ((c = getopt_long(argc, argv, ":s:h", options, NULL)) >= 0)
                switch (c) {
                case 's':
                        sock = optarg;
                        break;
                case 'h':
                        help_whoami();
                        return CTL_EXIT_OK;
                case ':':
                        return ctl_usage_error("whoami", "--socket needs a value");
                default:
                        return ctl_usage_error("whoami", "unknown option; see keybrokerctl whoami --help");
                }
        if (optind < argc)
                return ctl_extra_argument("whoami");

        if (ctl_request_socket(sock, "the broker", "GET", KB_PATH_WHOAMI, NULL, NULL, &j) < 0)
                return CTL_EXIT_ERROR;
        if (ctl->json)
                return ctl_print_json(j) < 0 ? CTL_EXIT_ERROR : CTL_EXIT_OK;

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
        return CTL_EXIT_OK;
}

/* Take --json and --admin-socket out of argv wherever they are (before or
 * after the command, up to a "--"), so that `keybrokerctl key list --json`
 * works like `keybrokerctl --json key list`. Returns the new argc, or -1
 * after a usage error was printed. */
static int extract_global_options(int argc, char **argv, struct ctl *ctl) {
        int out = 1;

        for (int i = 1; i < argc; i++) {
                const char *a = argv[i];

                if (streq(a, "--")) {
                        while (i < argc)
                                argv[out++] = argv[i++];
                        break;
                }
                if (streq(a, "--json"))
                        ctl->json = true;
                else if (streq(a, "--admin-socket")) {
                        if (i + 1 >= argc || !argv[i + 1][0]) {
                                ctl_usage_error(NULL, "--admin-socket needs a PATH");
                                return -1;
                        }
                        ctl->admin = argv[++i];
                } else if (strncmp(a, "--admin-socket=", 15) == 0) {
                        if (!a[15]) {
                                ctl_usage_error(NULL, "--admin-socket needs a PATH");
                                return -1;
                        }
                        ctl->admin = a + 15;
                } else
                        argv[out++] = argv[i];
        }
        argv[out] = NULL;
        return out;
}

int main(int argc, char **argv) {
        struct ctl ctl = { .admin = env_or("KEYBROKER_ADMIN_SOCKET", KB_DEFAULT_ADMIN) };
        int i = 1, r;

        argc = extract_global_options(argc, argv, &ctl);
        if (argc < 0)
                return CTL_EXIT_USAGE;

        for (; i < argc && argv[i][0] == '-'; i++) {
                if (streq(argv[i], "-h") || streq(argv[i], "--help")) {
                        help();
                        return CTL_EXIT_OK;
                } else if (streq(argv[i], "--version")) {
                        printf("keybrokerctl %s\n", KB_VERSION);
                        return CTL_EXIT_OK;
                } else if (streq(argv[i], "--")) {
                        i++;
                        break;
                } else
                        return ctl_usage_error(NULL, "unknown option; see keybrokerctl --help");
        }
        if (i >= argc) {
                return ctl_usage_error(NULL, "no command; see keybrokerctl --help");
        }

        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                fprintf(stderr, "keybrokerctl: libcurl failed to initialise\n");
                return CTL_EXIT_ERROR;
        }

        const char *cmd = argv[i];
        int cargc = argc - i;
        char **cargv = argv + i;
        if (streq(cmd, "status"))
                r = ctl_cmd_status(&ctl, cargc, cargv);
        else if (streq(cmd, "key"))
                r = ctl_cmd_key(&ctl, cargc, cargv);
        else if (streq(cmd, "team"))
                r = ctl_cmd_team(&ctl, cargc, cargv);
        else if (streq(cmd, "route") && cargc > 1 && streq(cargv[1], "check"))
                r = ctl_cmd_route_check(&ctl, cargc - 1, cargv + 1);
        else if (streq(cmd, "route"))
                r = ctl_cmd_route(&ctl, cargc, cargv);
        else if (streq(cmd, "model"))
                r = ctl_cmd_model(&ctl, cargc, cargv);
        else if (streq(cmd, "reload"))
                r = ctl_cmd_reload(&ctl, cargc, cargv);
        else if (streq(cmd, "usage"))
                r = ctl_cmd_usage(&ctl, cargc, cargv);
        else if (streq(cmd, "whoami"))
                r = cmd_whoami(&ctl, cargc, cargv);
        else if (streq(cmd, "help")) {
                help();
                r = CTL_EXIT_OK;
        } else
                r = ctl_usage_error(NULL, "unknown command '%s'; see keybrokerctl --help", cmd);

        curl_global_cleanup();
        if (fflush(stdout) != 0 || ferror(stdout)) {
                fprintf(stderr, "keybrokerctl: cannot write output: %m\n");
                return CTL_EXIT_ERROR;
        }
        return r;
}
