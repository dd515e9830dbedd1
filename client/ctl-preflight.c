/* SPDX-License-Identifier: MIT */
/* keybrokerctl route check NAME [--model M]: the preflight checklist of a
 * route (POST /routes/NAME/check), as a ✓/✗ table and the evidence path. */

#include <getopt.h>
#include <inttypes.h>

#include "ctl.h"
#include "util.h"

static void help_route_check(void) {
        printf("Usage: keybrokerctl [--admin-socket PATH] [--json] route check NAME [--model M]\n"
               "\n"
               "Run the preflight checklist against the live route NAME, with its own key,\n"
               "headers and timeouts, and print one line per check:\n"
               "  credentials     GET /models is not refused (401/403)\n"
               "  model_listed    the model is listed by the route's /models\n"
               "  non_streaming   a 5-token call answers 2xx with a well-formed body\n"
               "  streaming       the same streamed: 2xx, text/event-stream, [DONE]/message_stop\n"
               "  usage           input and output tokens reported and plausible\n"
               "  bogus_model     a made-up model gets the provider's not-found answer\n"
               "  latency         p50/max of the calls, under the route's timeout\n"
               "\n"
               "The run is bounded (45 s). keybrokerd saves the result as evidence in\n"
               "STATE_DIR/evidence/NAME-TIMESTAMP.json (mode 0600, never the key) and\n"
               "journals each check (MESSAGE_ID ed744d6e5d9d4128b630050956cdab33).\n"
               "\n"
               "Options:\n"
               "  -m, --model M   the upstream model to check (default: the first one a\n"
               "                  [model:*] target of this route names)\n"
               "  -h, --help      show this help\n"
               "\n"
               "Exit status: 0 every check passed, 1 a check failed or the route is\n"
               "unknown, 2 usage.\n");
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
                        json_is_true(json_object_get(c, "ok")) ? "✓" : "✗",
                        json_string_value(json_object_get(c, "detail")),
                        lat,
                };
                if (ctl_table_add_row(t, cells) < 0)
                        return -1;
        }
        const char *key = json_string_value(json_object_get(j, "key"));
        printf("route %s (%s, %s), model %s, key %s\n", strempty(json_string_value(json_object_get(j, "route"))),
               strempty(json_string_value(json_object_get(j, "family"))),
               strempty(json_string_value(json_object_get(j, "base_url"))),
               strempty(json_string_value(json_object_get(j, "model"))), key ?: "-");
        ctl_table_print(t, stdout);
        return 0;
}

int ctl_cmd_route_check(const struct ctl *ctl, int argc, char **argv) {
        static const struct option options[] = {
                { "model", required_argument, NULL, 'm' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_json_ json_t *j = NULL, *req = NULL;
        _cleanup_free_ char *name = NULL, *path = NULL, *body = NULL;
        const char *model = NULL;
        int c;

        optind = 0;
        opterr = 0;
        while ((c = getopt_long(argc, argv, ":m:h", options, NULL)) >= 0)
                switch (c) {
                case 'm':
                        model = optarg;
                        break;
                case 'h':
                        help_route_check();
                        return CTL_EXIT_OK;
                case ':':
                        return ctl_usage_error("route check", "--model needs a value");
                default:
                        return ctl_usage_error("route check", "unknown option; see keybrokerctl route check --help");
                }
        if (optind >= argc)
                return ctl_usage_error("route check", "missing route NAME; see keybrokerctl route check --help");
        if (optind + 1 < argc)
                return ctl_extra_argument("route check");
        if (model && !model[0])
                return ctl_usage_error("route check", "--model needs a value");

        name = ctl_escape_segment(argv[optind]);
        if (!name || asprintf(&path, "/routes/%s/check", name) < 0) {
                path = NULL;
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return CTL_EXIT_ERROR;
        }
        req = model ? json_pack("{s:s}", "model", model) : json_object();
        body = req ? json_dumps(req, JSON_COMPACT) : NULL;
        if (!body) {
                fprintf(stderr, "keybrokerctl: --model must be valid UTF-8\n");
                return CTL_EXIT_USAGE;
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
        const char *ev = json_string_value(json_object_get(j, "evidence_path"));
        if (ev)
                printf("evidence: %s\n", ev);
        else
                fprintf(stderr, "keybrokerctl: keybrokerd could not save the evidence: %s\n",
                        json_string_value(json_object_get(j, "evidence_error")) ?: "unknown error");
        printf("%s\n", ok ? "all checks passed" : "preflight FAILED");
        return ok && ev ? CTL_EXIT_OK : CTL_EXIT_ERROR;
}
