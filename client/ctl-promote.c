/* SPDX-License-Identifier: MIT */
/* keybrokerctl model promote NAME ROUTE --steps … --hold D [gates] |
 * NAME --abort, and model status NAME: a staged promotion through the
 * admin API (POST/DELETE /models/NAME/promote, GET /models/NAME/status).
 * model baseline is ctl-promote-baseline.c. */

#include <getopt.h>
#include <inttypes.h>
#include <math.h>

#include "ctl.h"
#include "ctl-promote.h"
#include "util.h"

#define STEPS_MAX 20
#define TEXT_MAX 4096

static void help_promote(void) {
        printf("Usage: keybrokerctl [--admin-socket PATH] [--json] model promote NAME ROUTE\n"
               "                    --steps A,B,...,100 --hold DURATION [--max-error-ratio R]\n"
               "                    [--max-p95-ms N] [--require-usage] [--min-requests N]\n"
               "       keybrokerctl model promote NAME --abort\n"
               "\n"
               "Move model NAME's traffic to its target on ROUTE step by step. At step S%%\n"
               "ROUTE gets S%% of the weight of the model's targets of its family, and the\n"
               "others share the rest as they did before. A step holds for DURATION, and\n"
               "passes once the hold is over, the candidate answered --min-requests\n"
               "requests in this step, and every gate passes on this step's own requests:\n"
               "  error ratio   (upstream errors, provider 429s included, timeouts,\n"
               "                interrupted streams, model not found) / requests <= R\n"
               "  p95 latency   <= N ms (with --max-p95-ms)\n"
               "  model         no answer saying the model does not exist\n"
               "  usage         every 2xx answer reported input tokens (--require-usage)\n"
               "A failed gate puts the split from before the promotion back at once (the\n"
               "error ratio and p95 only once --min-requests are in; the other two at the\n"
               "first such answer; the p95 and a step's end are looked at every second).\n"
               "After the last step (100) the split stays 100%% ROUTE.\n"
               "ROUTE must be a target of the model: add `target = ROUTE UPSTREAM_MODEL\n"
               "weight=0` to [model:NAME] and reload first. Every step and decision is\n"
               "journaled (MESSAGE_ID 5ec076b4fc194e50a600372c4a6b303b) and kept in\n"
               "STATE_DIR/promotions.json across restarts and reloads.\n"
               "\n"
               "Options:\n"
               "      --steps A,B,...      percentages, strictly increasing, ending at 100\n"
               "      --hold DURATION      each step's hold: 30s, 10m, 2h (ms, s, min, h, d)\n"
               "      --max-error-ratio R  0 to 1 (default 0.02)\n"
               "      --max-p95-ms N       the p95 latency limit (default: none)\n"
               "      --require-usage      every ok answer must report input tokens\n"
               "      --min-requests N     requests per step before it can pass (default 20)\n"
               "      --abort              stop the running promotion, put the split back\n"
               "  -h, --help               show this help\n"
               "\n"
               "Example: keybrokerctl model promote chat-default flatkey --steps 1,5,25,100 --hold 10m\n");
}

static void help_status(void) {
        printf("Usage: keybrokerctl [--admin-socket PATH] [--json] model status NAME\n"
               "\n"
               "Model NAME's current split and its promotion: the step (index and\n"
               "percent), each gate's value, limit and state (pass, fail, pending, off),\n"
               "the requests seen in this step, the time left in the hold, and this\n"
               "step's figures against the model's baseline (keybrokerctl model\n"
               "baseline). Without a running promotion it says so, with the last one's\n"
               "end. --json prints the daemon's object.\n");
}

/* "ROUTE=N ROUTE=N" of a {"ROUTE":N} object. */
static void weights_text(const json_t *w, char *buf, size_t size) {
        const char *k;
        json_t *v;
        size_t off = 0;

        buf[0] = 0;
        json_object_foreach((json_t *) w, k, v) {
                int n = snprintf(buf + off, size - off, "%s%s=%" JSON_INTEGER_FORMAT, off ? " " : "", k,
                                 json_integer_value(v));
                if (n < 0 || (size_t) n >= size - off)
                        break;
                off += (size_t) n;
        }
}

static const char *jstr(const json_t *o, const char *k) {
        return json_string_value(json_object_get(o, k));
}

static json_int_t jint(const json_t *o, const char *k) {
        return json_integer_value(json_object_get(o, k));
}

static void print_gates(const json_t *p) {
        static const char *const headers[] = { "GATE", "VALUE", "LIMIT", "STATE" };
        _cleanup_table_ struct ctl_table *t = ctl_table_new(headers, ELEMENTSOF(headers));
        const json_t *g;
        size_t i;

        if (!t)
                return;
        json_array_foreach(json_object_get(p, "gates"), i, g) {
                char value[64], limit[64];
                const char *name = jstr(g, "name");
                /* the hold is kept in ms; a person reads seconds */
                if (streq_ptr(name, "hold")) {
                        snprintf(value, sizeof(value), "%.1f s", json_number_value(json_object_get(g, "value")) / 1000);
                        snprintf(limit, sizeof(limit), "%.1f s", json_number_value(json_object_get(g, "limit")) / 1000);
                } else {
                        ctl_json_scalar(json_object_get(g, "value"), value, sizeof(value));
                        ctl_json_scalar(json_object_get(g, "limit"), limit, sizeof(limit));
                }
                const char *cells[] = { name, value, limit, jstr(g, "state") };
                (void) ctl_table_add_row(t, cells);
        }
        ctl_table_print(t, stdout);
}

void ctl_promote_print_status(const json_t *j) {
        const json_t *p = json_object_get(j, "promotion"), *bl = json_object_get(j, "baseline");
        const json_t *f = json_object_get(p, "figures");
        char split[TEXT_MAX], before[TEXT_MAX], line[TEXT_MAX], steps[256] = "", when[64];
        size_t i, off = 0;
        const json_t *v;

        weights_text(json_object_get(j, "weights"), split, sizeof(split));
        printf("model:      %s\nsplit:      %s\n", jstr(j, "model") ?: "-", split);
        if (!json_is_object(p)) {
                printf("promotion:  none\n");
        } else {
                json_array_foreach(json_object_get(p, "steps"), i, v) {
                        int n = snprintf(steps + off, sizeof(steps) - off, "%s%" JSON_INTEGER_FORMAT, i ? "," : "",
                                         json_integer_value(v));
                        if (n > 0 && (size_t) n < sizeof(steps) - off)
                                off += (size_t) n;
                }
                bool running = streq_ptr(jstr(p, "state"), "running");
                weights_text(json_object_get(p, "before"), before, sizeof(before));
                if (running)
                        printf("promotion:  route %s (%s), running, step %" JSON_INTEGER_FORMAT " of %" JSON_INTEGER_FORMAT
                               " (%" JSON_INTEGER_FORMAT "%%), steps %s\n", jstr(p, "route"), jstr(p, "upstream_model"),
                               jint(p, "step"), jint(p, "n_steps"), jint(p, "percent"), steps);
                else
                        printf("promotion:  none running; the last one (route %s, steps %s) %s at step %" JSON_INTEGER_FORMAT
                               " (%" JSON_INTEGER_FORMAT "%%) on %s: %s\n", jstr(p, "route"), steps,
                               streq_ptr(jstr(p, "state"), "rolled_back") ? "was rolled back" : jstr(p, "state"),
                               jint(p, "step"), jint(p, "percent"),
                               ctl_format_time(jstr(p, "finished"), when, sizeof(when)), jstr(p, "reason") ?: "-");
                if (running)
                        printf("hold:       %" JSON_INTEGER_FORMAT ".%03" JSON_INTEGER_FORMAT " s, %" JSON_INTEGER_FORMAT
                               " s left\n", jint(p, "hold_ms") / 1000, jint(p, "hold_ms") % 1000,
                               (jint(p, "hold_left_ms") + 999) / 1000);
                printf("requests:   %" JSON_INTEGER_FORMAT " this step (at least %" JSON_INTEGER_FORMAT ")\n",
                       jint(p, "requests"), jint(p, "min_requests"));
                snprintf(line, sizeof(line), "ok %" JSON_INTEGER_FORMAT ", errors %" JSON_INTEGER_FORMAT
                         " (upstream 429: %" JSON_INTEGER_FORMAT ", timeouts: %" JSON_INTEGER_FORMAT
                         ", model not found: %" JSON_INTEGER_FORMAT ", interrupted: %" JSON_INTEGER_FORMAT
                         "), missing usage %" JSON_INTEGER_FORMAT, jint(f, "ok"), jint(f, "errors"),
                         jint(f, "upstream_429"), jint(f, "timeouts"), jint(f, "model_not_found"),
                         jint(f, "stream_interrupted"), jint(f, "missing_usage"));
                printf("counts:     %s\n", line);
                printf("before:     %s\n", before);
                print_gates(p);
        }
        if (!json_is_object(bl))
                printf("baseline:   no baseline\n");
        else if (jstr(j, "comparison"))
                printf("baseline:   %s\n", jstr(j, "comparison"));
        else {
                char p95[32];
                printf("baseline:   %" JSON_INTEGER_FORMAT " requests, error ratio %.3f, p95 %s ms (%s)\n",
                       jint(bl, "requests"), json_number_value(json_object_get(bl, "error_ratio")),
                       ctl_json_scalar(json_object_get(bl, "p95_ms"), p95, sizeof(p95)),
                       jstr(bl, "evidence") ?: "no evidence file");
        }
}

/* "1,5,25,100" into steps[]: numbers only, the daemon judges the rest. */
static int parse_steps(const char *s, json_t *arr) {
        if (!*s)
                return -EINVAL;
        for (size_t n = 0; *s; n++) {
                size_t l = strspn(s, "0123456789");
                if (l == 0 || l > 6 || n >= STEPS_MAX || (s[l] != ',' && s[l] != 0) || (s[l] == ',' && !s[l + 1]))
                        return -EINVAL;
                if (json_array_append_new(arr, json_integer(strtoll(s, NULL, 10))) < 0)
                        return -ENOMEM;
                s += l + (s[l] == ',');
        }
        return 0;
}

static int parse_uint(const char *s, uint64_t max, uint64_t *ret) {
        if (!*s || strlen(s) > 9 || strspn(s, "0123456789") != strlen(s))
                return -EINVAL;
        uint64_t v = strtoull(s, NULL, 10);
        if (v > max)
                return -ERANGE;
        *ret = v;
        return 0;
}

int ctl_cmd_model_promote(const struct ctl *ctl, int argc, char **argv) {
        enum { O_STEPS = 0x100, O_HOLD, O_RATIO, O_P95, O_USAGE, O_MIN, O_ABORT };
        static const struct option options[] = {
                { "steps", required_argument, NULL, O_STEPS },
                { "hold", required_argument, NULL, O_HOLD },
                { "max-error-ratio", required_argument, NULL, O_RATIO },
                { "max-p95-ms", required_argument, NULL, O_P95 },
                { "require-usage", no_argument, NULL, O_USAGE },
                { "min-requests", required_argument, NULL, O_MIN },
                { "abort", no_argument, NULL, O_ABORT },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_json_ json_t *body = json_object(), *steps = json_array(), *ans = NULL;
        _cleanup_free_ char *path = NULL, *text = NULL;
        bool abort_ = false, has_steps = false, has_hold = false, other = false;
        uint64_t u;
        int c;

        if (!body || !steps) {
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return CTL_EXIT_ERROR;
        }
        optind = 0;
        opterr = 0;
        while ((c = getopt_long(argc, argv, ":h", options, NULL)) >= 0) {
                other |= c != O_ABORT && c != 'h';
                switch (c) {
                case O_STEPS:
                        if (has_steps || parse_steps(optarg, steps) < 0)
                                return ctl_usage_error("model promote", "--steps takes percentages once, "
                                                       "comma-separated: e.g. 1,5,25,100");
                        has_steps = true;
                        break;
                case O_HOLD:
                        if (kb_parse_duration(optarg, &u) < 0 || u / USEC_PER_MSEC > (uint64_t) INT64_MAX)
                                return ctl_usage_error("model promote", "invalid --hold '%s' (e.g. 30s, 10m, 2h)",
                                                       optarg);
                        json_object_set_new(body, "hold_ms", json_integer((json_int_t) (u / USEC_PER_MSEC)));
                        has_hold = true;
                        break;
                case O_RATIO: {
                        char *end;
                        double r = strtod(optarg, &end);
                        if (!*optarg || *end || !isfinite(r))
                                return ctl_usage_error("model promote", "--max-error-ratio takes a number from 0 to 1");
                        json_object_set_new(body, "max_error_ratio", json_real(r));
                        break;
                }
                case O_P95:
                        if (parse_uint(optarg, 100000000, &u) < 0)
                                return ctl_usage_error("model promote", "--max-p95-ms takes milliseconds");
                        json_object_set_new(body, "max_p95_ms", json_integer((json_int_t) u));
                        break;
                case O_USAGE:
                        json_object_set_new(body, "require_usage", json_true());
                        break;
                case O_MIN:
                        if (parse_uint(optarg, 100000000, &u) < 0)
                                return ctl_usage_error("model promote", "--min-requests takes a number");
                        json_object_set_new(body, "min_requests", json_integer((json_int_t) u));
                        break;
                case O_ABORT:
                        abort_ = true;
                        break;
                case 'h':
                        help_promote();
                        return CTL_EXIT_OK;
                case ':':
                        return ctl_usage_error("model promote", "%s needs a value", argv[optind - 1]);
                default:
                        return ctl_usage_error("model promote", "unknown option; see keybrokerctl model promote --help");
                }
        }
        if (optind >= argc)
                return ctl_usage_error("model promote", "missing NAME; see keybrokerctl model promote --help");
        const char *model = argv[optind++];
        if (!ctl_model_path_safe(model))
                return ctl_usage_error("model promote", "'%s' is not a model name the admin API can address", model);
        if (asprintf(&path, "/models/%s/promote", model) < 0) {
                path = NULL;
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return CTL_EXIT_ERROR;
        }
        if (abort_) {
                if (other || optind < argc)
                        return ctl_usage_error("model promote", "--abort takes only the model NAME");
                if (ctl_request(ctl, "DELETE", path, NULL, NULL, &ans) < 0)
                        return CTL_EXIT_ERROR;
                if (ctl->json)
                        return ctl_print_json(ans) < 0 ? CTL_EXIT_ERROR : CTL_EXIT_OK;
                char split[TEXT_MAX];
                weights_text(json_object_get(ans, "weights"), split, sizeof(split));
                printf("%s: promotion of route %s aborted; split back to %s\n", model,
                       jstr(json_object_get(ans, "promotion"), "route") ?: "-", split);
                return CTL_EXIT_OK;
        }
        if (optind >= argc)
                return ctl_usage_error("model promote", "missing ROUTE (or --abort); see keybrokerctl model promote --help");
        const char *route = argv[optind++];
        if (optind < argc)
                return ctl_extra_argument("model promote");
        if (!has_steps)
                return ctl_usage_error("model promote", "missing --steps (e.g. --steps 1,5,25,100)");
        if (!has_hold)
                return ctl_usage_error("model promote", "missing --hold (e.g. --hold 10m)");
        if (json_object_set_new(body, "route", json_string(route)) < 0 ||
            json_object_set(body, "steps", steps) < 0 || !(text = json_dumps(body, JSON_COMPACT))) {
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return CTL_EXIT_ERROR;
        }
        struct ctl_body b = { .data = text, .len = strlen(text), .content_type = "application/json" };
        if (ctl_request(ctl, "POST", path, NULL, &b, &ans) < 0)
                return CTL_EXIT_ERROR;
        if (ctl->json)
                return ctl_print_json(ans) < 0 ? CTL_EXIT_ERROR : CTL_EXIT_OK;
        ctl_promote_print_status(ans);
        if (jstr(ans, "warning"))
                fprintf(stderr, "keybrokerctl: warning: the promotion is live but was not saved (%s); it will not "
                        "survive a restart\n", jstr(ans, "warning"));
        return CTL_EXIT_OK;
}

int ctl_cmd_model_status(const struct ctl *ctl, int argc, char **argv) {
        _cleanup_json_ json_t *ans = NULL;
        _cleanup_free_ char *path = NULL;
        int optind_;

        int r = ctl_parse_help_only(argc, argv, "model status", help_status, &optind_);
        if (r >= 0)
                return r;
        if (optind_ >= argc)
                return ctl_usage_error("model status", "missing NAME; see keybrokerctl model status --help");
        const char *model = argv[optind_++];
        if (optind_ < argc)
                return ctl_extra_argument("model status");
        if (!ctl_model_path_safe(model))
                return ctl_usage_error("model status", "'%s' is not a model name the admin API can address", model);
        if (asprintf(&path, "/models/%s/status", model) < 0) {
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return CTL_EXIT_ERROR;
        }
        if (ctl_request(ctl, "GET", path, NULL, NULL, &ans) < 0)
                return CTL_EXIT_ERROR;
        if (ctl->json)
                return ctl_print_json(ans) < 0 ? CTL_EXIT_ERROR : CTL_EXIT_OK;
        ctl_promote_print_status(ans);
        return CTL_EXIT_OK;
}
