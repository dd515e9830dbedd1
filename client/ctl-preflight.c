/* SPDX-License-Identifier: MIT */
/* keybrokerctl route check NAME [--model M] [--only|--skip CHECK...]: the
 * routing playbook's ten-point preflight of a route (POST
 * /routes/NAME/check), as a ✓/✗ table, the line to roll back with and the
 * evidence path. */

#include <getopt.h>
#include <inttypes.h>

#include "ctl.h"
#include "preflight.h"
#include "util.h"

static void help_route_check(void) {
        printf("Usage: keybrokerctl [--admin-socket PATH] [--json] route check NAME [--model M]\n"
               "                    [--only CHECK[,CHECK...]]... | [--skip CHECK[,CHECK...]]...\n"
               "\n"
               "Run the routing playbook's preflight against the live route NAME, with each\n"
               "route's own key, headers and timeouts, one small call after another, and\n"
               "print one line per check:\n"
               "  model      the key is accepted (GET /models), the model is listed, and the\n"
               "             model as the provider reports it (an alias's dated snapshot)\n"
               "  endpoint   each endpoint family the route serves answers a minimal call:\n"
               "             chat and responses (OpenAI; embeddings when an upstream model of\n"
               "             the route is named like an embedding model), messages (Anthropic)\n"
               "  features   each feature declared (features = on the route and its models):\n"
               "             tools, structured_output, vision, reasoning, streaming\n"
               "  usage      input/output/cached tokens reported, the same streamed and not\n"
               "  pricing    a price for every exercised model; what the probe calls cost\n"
               "  status     the provider's Statuspage (status_url) says none (or minor, with\n"
               "             status_ok = minor)\n"
               "  failures   a made-up key gets 401, a made-up model 404, a 1 ms timeout\n"
               "             becomes keybrokerd's 504 upstream_timeout\n"
               "  fallback   every fallback target works with its route's own key\n"
               "  owner      owner = and key_owner = on the route, owner = on its teams\n"
               "  rollback   the routes serving now still answer; the model split line to go\n"
               "             back with is printed\n"
               "Each call's status and latency is evidence.\n"
               "\n"
               "The run is bounded (50 s). keybrokerd saves the result as evidence in\n"
               "STATE_DIR/evidence/NAME-TIMESTAMP.json (mode 0600, never a key) and\n"
               "journals each check (MESSAGE_ID ed744d6e5d9d4128b630050956cdab33).\n"
               "\n"
               "Options:\n"
               "  -m, --model M        the upstream model to check (default: the first one a\n"
               "                       [model:*] target of this route names)\n"
               "      --only CHECK...  run only these checks (comma-separated or repeated)\n"
               "      --skip CHECK...  run all but these (not with --only); skipped checks\n"
               "                       are shown as skipped\n"
               "  -h, --help           show this help\n"
               "\n"
               "Exit status: 0 every check run passed, 1 a check failed or the route is\n"
               "unknown, 2 usage (an unknown check name, --only with --skip).\n");
}

static const char *result_mark(const json_t *c) {
        const char *res = json_string_value(json_object_get(c, "result"));
        if (streq_ptr(res, "skipped"))
                return "skipped";
        return json_is_true(json_object_get(c, "ok")) ? "✓" : "✗";
}

static int print_table(const json_t *j) {
        static const char *const headers[] = { "CHECK", "RESULT", "DETAIL", "LATENCY" };
        _cleanup_table_ struct ctl_table *t = ctl_table_new(headers, ELEMENTSOF(headers));
        const json_t *c;
        size_t i;

        if (!t)
                return -1;
        json_array_foreach(json_object_get(j, "checks"), i, c) {
                char lat[32];
                snprintf(lat, sizeof(lat), "%" JSON_INTEGER_FORMAT " ms",
                         json_integer_value(json_object_get(c, "latency_ms")));
                const char *cells[] = {
                        json_string_value(json_object_get(c, "name")),
                        result_mark(c),
                        json_string_value(json_object_get(c, "detail")),
                        lat,
                };
                if (ctl_table_add_row(t, cells) < 0)
                        return -1;
        }
        const char *key = json_string_value(json_object_get(j, "key"));
        const char *reported = json_string_value(json_object_get(j, "model_reported"));
        printf("route %s (%s, %s), model %s%s%s, key %s\n", strempty(json_string_value(json_object_get(j, "route"))),
               strempty(json_string_value(json_object_get(j, "family"))),
               strempty(json_string_value(json_object_get(j, "base_url"))),
               strempty(json_string_value(json_object_get(j, "model"))), reported ? " reported as " : "",
               strempty(reported), key ?: "-");
        ctl_table_print(t, stdout);
        return 0;
}

/* The lines to go back with, saved in the rollback check's evidence. */
static void print_rollback(const json_t *j) {
        const json_t *c, *cmd;
        size_t i, k;

        json_array_foreach(json_object_get(j, "checks"), i, c) {
                if (!streq_ptr(json_string_value(json_object_get(c, "name")), "rollback"))
                        continue;
                json_array_foreach(json_object_get(c, "commands"), k, cmd)
                        printf("rollback: %s\n", strempty(json_string_value(cmd)));
        }
}

static int add_names(const char *arg, unsigned *mask, const char *opt) {
        const char *bad = NULL;
        size_t bad_len = 0;

        if (kb_preflight_parse_names(arg, mask, &bad, &bad_len) < 0)
                return ctl_usage_error("route check", "%s: '%.*s' is not a check; the checks are %s", opt,
                                       (int) MIN(bad_len, (size_t) 64), strempty(bad), KB_PREFLIGHT_CHECK_NAMES);
        return 0;
}

int ctl_cmd_route_check(const struct ctl *ctl, int argc, char **argv) {
        enum { OPT_ONLY = 0x100, OPT_SKIP };
        static const struct option options[] = {
                { "model", required_argument, NULL, 'm' },
                { "only", required_argument, NULL, OPT_ONLY },
                { "skip", required_argument, NULL, OPT_SKIP },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_json_ json_t *j = NULL, *req = NULL;
        _cleanup_free_ char *name = NULL, *path = NULL, *body = NULL;
        const char *model = NULL;
        unsigned only = 0, skip = 0;
        int c, r;

        optind = 0;
        opterr = 0;
        while ((c = getopt_long(argc, argv, ":m:h", options, NULL)) >= 0)
                switch (c) {
                case 'm':
                        model = optarg;
                        break;
                case OPT_ONLY:
                case OPT_SKIP:
                        r = add_names(optarg, c == OPT_ONLY ? &only : &skip, c == OPT_ONLY ? "--only" : "--skip");
                        if (r != 0)
                                return r;
                        break;
                case 'h':
                        help_route_check();
                        return CTL_EXIT_OK;
                case ':':
                        return ctl_usage_error("route check", "%s needs a value", argv[optind - 1]);
                default:
                        return ctl_usage_error("route check", "unknown option; see keybrokerctl route check --help");
                }
        if (optind >= argc)
                return ctl_usage_error("route check", "missing route NAME; see keybrokerctl route check --help");
        if (optind + 1 < argc)
                return ctl_extra_argument("route check");
        if (model && !model[0])
                return ctl_usage_error("route check", "--model needs a value");
        if (only && skip)
                return ctl_usage_error("route check", "give --only or --skip, not both");
        if (skip == KB_CHECK_ALL)
                return ctl_usage_error("route check", "--skip leaves no check to run");

        name = ctl_escape_segment(argv[optind]);
        if (!name || asprintf(&path, "/routes/%s/check", name) < 0) {
                path = NULL;
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return CTL_EXIT_ERROR;
        }
        req = json_object();
        if (!req || (model && json_object_set_new(req, "model", json_string(model)) < 0) ||
            (only && json_object_set_new(req, "only", kb_preflight_checks_json(only)) < 0) ||
            (skip && json_object_set_new(req, "skip", kb_preflight_checks_json(skip)) < 0)) {
                fprintf(stderr, "keybrokerctl: --model must be valid UTF-8\n");
                return CTL_EXIT_USAGE;
        }
        body = json_dumps(req, JSON_COMPACT);
        if (!body) {
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return CTL_EXIT_ERROR;
        }
        struct ctl_body b = { .data = body, .len = strlen(body), .content_type = "Content-Type: application/json" };
        if (ctl_request(ctl, "POST", path, NULL, &b, &j) < 0)
                return CTL_EXIT_ERROR;

        bool ok = json_is_true(json_object_get(j, "ok"));
        if (ctl->json) {
                if (ctl_print_json(j) < 0)
                        return CTL_EXIT_ERROR;
                return ok ? CTL_EXIT_OK : CTL_EXIT_ERROR;
        }
        if (print_table(j) < 0) {
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return CTL_EXIT_ERROR;
        }
        print_rollback(j);
        const char *ev = json_string_value(json_object_get(j, "evidence_path"));
        if (ev)
                printf("evidence: %s\n", ev);
        else
                fprintf(stderr, "keybrokerctl: keybrokerd could not save the evidence: %s\n",
                        json_string_value(json_object_get(j, "evidence_error")) ?: "unknown error");
        size_t n_skipped = json_array_size(json_object_get(j, "skipped"));
        if (ok && n_skipped)
                printf("all checks run passed (%zu skipped)\n", n_skipped);
        else
                printf("%s\n", ok ? "all checks passed" : "preflight FAILED");
        return ok && ev ? CTL_EXIT_OK : CTL_EXIT_ERROR;
}
