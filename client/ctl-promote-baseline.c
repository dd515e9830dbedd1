/* SPDX-License-Identifier: MIT */
/* keybrokerctl model baseline NAME [--since T] [--until T]: the figures of
 * the route(s) serving model NAME now, read from the journal's request
 * records the way `keybrokerctl usage` reads them (usage-report.h parses
 * them), sent to keybrokerd (PUT /models/NAME/baseline), which keeps them
 * for `model status` and promotions' gate records and saves them as
 * evidence. */

#include <getopt.h>
#include <inttypes.h>
#include <systemd/sd-journal.h>

#include "ctl.h"
#include "ctl-promote.h"
#include "keybroker/keybroker.h"
#include "usage-report.h"
#include "util.h"

/* Records one baseline reads at most: its latencies are kept for exact
 * percentiles (4 bytes each). */
#define BASELINE_MAX_RECORDS 4000000U
#define BASELINE_ROUTES_MAX 64
#define ERR_KINDS 4

/* The outcomes that count, as promotions count them: the route answered
 * or failed. The app leaving, or the broker refusing, says nothing of it. */
static const char *const error_kinds[ERR_KINDS] = {
        "upstream_error", "upstream_timeout", "stream_interrupted", "model_not_found",
};

static void help_baseline(void) {
        printf("Usage: keybrokerctl [--admin-socket PATH] [--json] model baseline NAME\n"
               "                    [--since T] [--until T] [--directory DIR] [--include-tests]\n"
               "\n"
               "Read the journal's request records (MESSAGE_ID %s) of model NAME\n"
               "on the route(s) serving it now (weight > 0 in GET /models/NAME/status; a\n"
               "running promotion's candidate left out) and compute: requests (answered or\n"
               "failed by the route: outcomes ok, upstream_error, upstream_timeout,\n"
               "stream_interrupted, model_not_found), errors by outcome and upstream 429s,\n"
               "the error ratio, p50/p95 latency (exact, nearest rank), and per ok request\n"
               "input and output tokens and cost. keybrokerd keeps them as the model's\n"
               "baseline (model status and promotion gate records compare against it) and\n"
               "saves them as evidence in STATE_DIR/evidence/baseline-NAME-TIMESTAMP.json.\n"
               "\n"
               "Options:\n"
               "  -S, --since TIME      records at or after TIME (default: the oldest)\n"
               "  -U, --until TIME      records at or before TIME (default: now)\n"
               "  -D, --directory DIR   read the journal files in DIR instead of the system's\n"
               "      --include-tests   also count test brokers' records (KEYBROKER_TEST=1)\n"
               "  -h, --help            show this help\n"
               "\n"
               "TIME is as for keybrokerctl usage: \"-1h\", \"today\", \"2026-11-25 10:00\", \"@EPOCH\".\n"
               "Exit status: 0 saved, 1 no records (or the daemon refused), 2 usage.\n",
               KB_MID_REQUEST);
}

struct figures {
        uint64_t requests, ok, errors[ERR_KINDS], upstream_429, input_sum, output_sum;
        int64_t cost_sum;
        uint32_t *lat;
        size_t n_lat;
};

static bool route_wanted(const json_t *routes, const struct usage_record *rec) {
        size_t i;
        json_t *v;
        json_array_foreach(routes, i, v)
                if (rec->route.len == json_string_length(v) && memcmp(rec->route.s, json_string_value(v), rec->route.len) == 0)
                        return true;
        return false;
}

static void count(struct figures *f, const struct usage_record *rec) {
        bool ok = streq(rec->outcome, "ok");
        int kind = -1;
        for (int k = 0; k < ERR_KINDS; k++)
                if (streq(rec->outcome, error_kinds[k]))
                        kind = k;
        if (!ok && kind < 0)
                return;
        f->requests++;
        if (ok) {
                f->ok++;
                f->input_sum += rec->input_tokens;
                f->output_sum += rec->output_tokens;
                f->cost_sum += rec->cost_microusd;
        } else
                f->errors[kind]++;
        f->upstream_429 += rec->upstream_status == 429;
        if (rec->has_latency)
                f->lat[f->n_lat++] = (uint32_t) MIN(rec->latency_ms, (uint64_t) UINT32_MAX);
}

struct baseline_reader {
        const json_t *routes;
        struct figures *figures;
};

static int baseline_add(void *userdata, const struct usage_record *rec) {
        struct baseline_reader *u = userdata;
        if (!route_wanted(u->routes, rec))
                return 0;
        if (u->figures->requests >= BASELINE_MAX_RECORDS)
                return -E2BIG;
        count(u->figures, rec);
        return 0;
}

static int read_records(sd_journal *j, const char *model, const json_t *routes, const struct ctl_journal_args *a,
                        struct figures *f) {
        struct baseline_reader u = { .routes = routes, .figures = f };
        const char *what;

        if (!(f->lat = malloc(BASELINE_MAX_RECORDS * sizeof(uint32_t))))
                return -ENOMEM;
        return ctl_journal_read_requests(j, a, "KEYBROKER_MODEL", model, baseline_add, &u, &what);
}

static json_t *rank_json(const struct figures *f, unsigned pct) {
        return f->n_lat ? json_integer(kb_nearest_rank_u32(f->lat, f->n_lat, pct)) : json_null();
}

static json_t *body_json(const struct figures *f, json_t *routes, uint64_t since, uint64_t until) {
        json_t *errors = json_object();
        uint64_t n_err = 0;
        for (int k = 0; errors && k < ERR_KINDS; k++) {
                n_err += f->errors[k];
                if (f->errors[k] && json_object_set_new(errors, error_kinds[k], json_integer((json_int_t) f->errors[k])) < 0) {
                        json_decref(errors);
                        errors = NULL;
                }
        }
        kb_sort_u32(f->lat, f->n_lat);
        double ok = f->ok ? (double) f->ok : 1;
        return json_pack("{s:O, s:o, s:o, s:I, s:o, s:I, s:f, s:o, s:o, s:f, s:f, s:f}", "routes", routes,
                         "since", since ? json_integer((json_int_t) since) : json_null(),
                         "until", until ? json_integer((json_int_t) until) : json_null(),
                         "requests", (json_int_t) f->requests, "errors", errors,
                         "upstream_429", (json_int_t) f->upstream_429,
                         "error_ratio", (double) n_err / (double) f->requests,
                         "p50_ms", rank_json(f, 50), "p95_ms", rank_json(f, 95),
                         "input_tokens_per_request", (double) f->input_sum / ok,
                         "output_tokens_per_request", (double) f->output_sum / ok,
                         "cost_microusd_per_request", f->cost_sum > 0 ? (double) f->cost_sum / ok : 0.0);
}

static void print_baseline(const char *model, const json_t *bl) {
        const json_t *routes = json_object_get(bl, "routes"), *v;
        char p50[32], p95[32];
        const char *k;
        size_t i;

        printf("baseline of model %s, route(s)", model);
        json_array_foreach(routes, i, v)
                printf("%s %s", i ? "," : "", json_string_value(v));
        printf(":\n");
        printf("  requests:        %" JSON_INTEGER_FORMAT "\n", json_integer_value(json_object_get(bl, "requests")));
        printf("  errors:         ");
        if (json_object_size(json_object_get(bl, "errors")) == 0)
                printf(" none");
        json_object_foreach(json_object_get(bl, "errors"), k, v)
                printf(" %s %" JSON_INTEGER_FORMAT, k, json_integer_value(v));
        printf(" (upstream 429: %" JSON_INTEGER_FORMAT ")\n", json_integer_value(json_object_get(bl, "upstream_429")));
        printf("  error ratio:     %.3f\n", json_number_value(json_object_get(bl, "error_ratio")));
        printf("  latency:         p50 %s ms, p95 %s ms\n", ctl_json_scalar(json_object_get(bl, "p50_ms"), p50, sizeof(p50)),
               ctl_json_scalar(json_object_get(bl, "p95_ms"), p95, sizeof(p95)));
        printf("  tokens/request:  input %.1f, output %.1f\n",
               json_number_value(json_object_get(bl, "input_tokens_per_request")),
               json_number_value(json_object_get(bl, "output_tokens_per_request")));
        printf("  cost/request:    $%.6f\n", json_number_value(json_object_get(bl, "cost_microusd_per_request")) / 1e6);
        printf("evidence: %s\n", json_string_value(json_object_get(bl, "evidence")) ?: "-");
}

int ctl_cmd_model_baseline(const struct ctl *ctl, int argc, char **argv) {
        static const struct option options[] = {
                CTL_JOURNAL_LONG_OPTIONS,
                { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_(ctl_journal_closep) sd_journal *j = NULL;
        _cleanup_json_ json_t *status = NULL, *routes = json_array(), *ans = NULL;
        _cleanup_free_ char *path = NULL, *text = NULL;
        struct ctl_journal_args a = {};
        struct figures f = {};
        uint64_t now = kb_realtime_usec();
        const char *k;
        json_t *v;
        int c, r;

        optind = 0;
        opterr = 0;
        while ((c = getopt_long(argc, argv, ":S:U:D:h", options, NULL)) >= 0)
                switch (c) {
                case 'S':
                case 'U':
                case 'D':
                case 'T':
                        if ((r = ctl_journal_option("model baseline", c, optarg, now, &a)) >= 0)
                                return r;
                        break;
                case 'h':
                        help_baseline();
                        return CTL_EXIT_OK;
                case ':':
                        return ctl_usage_error("model baseline", "%s needs a value", argv[optind - 1]);
                default:
                        return ctl_usage_error("model baseline", "unknown option; see keybrokerctl model baseline --help");
                }
        if (optind >= argc)
                return ctl_usage_error("model baseline", "missing NAME; see keybrokerctl model baseline --help");
        /* A time of 0 ("@0") is no bound here, as the baseline's JSON has it
         * (null): since and until are sent as they are below. */
        a.has_since &= a.since != 0;
        a.has_until &= a.until != 0;
        const char *model = argv[optind++];
        if (optind < argc)
                return ctl_extra_argument("model baseline");
        if (!ctl_model_path_safe(model))
                return ctl_usage_error("model baseline", "'%s' is not a model name the admin API can address", model);
        if ((r = ctl_journal_check_range("model baseline", &a)) >= 0)
                return r;
        if (!routes || asprintf(&path, "/models/%s/status", model) < 0) {
                path = NULL;
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return CTL_EXIT_ERROR;
        }

        /* The routes serving now: weight > 0, a promotion's candidate left out. */
        if (ctl_request(ctl, "GET", path, NULL, NULL, &status) < 0)
                return CTL_EXIT_ERROR;
        const json_t *p = json_object_get(status, "promotion");
        const char *candidate = streq_ptr(json_string_value(json_object_get(p, "state")), "running")
                                        ? json_string_value(json_object_get(p, "route")) : NULL;
        json_object_foreach(json_object_get(status, "weights"), k, v) {
                _cleanup_free_ char *name = strndup(k, strcspn(k, "/"));
                bool seen = false;
                size_t i;
                json_t *e;
                if (!name || json_integer_value(v) <= 0 || streq_ptr(name, candidate))
                        continue;
                json_array_foreach(routes, i, e)
                        seen |= streq(json_string_value(e), name);
                if (!seen && json_array_size(routes) < BASELINE_ROUTES_MAX)
                        json_array_append_new(routes, json_string(name));
        }
        if (json_array_size(routes) == 0) {
                fprintf(stderr, "keybrokerctl model baseline: no route serves model %s now (every weight is 0)\n", model);
                return CTL_EXIT_ERROR;
        }

        r = ctl_journal_open(a.directory, &j);
        if (r < 0) {
                fprintf(stderr, "keybrokerctl model baseline: cannot open the journal%s%s: %s\n", a.directory ? " " : "",
                        strempty(a.directory), strerror(-r));
                return CTL_EXIT_ERROR;
        }
        r = read_records(j, model, routes, &a, &f);
        if (r < 0) {
                free(f.lat);
                fprintf(stderr, "keybrokerctl model baseline: %s\n",
                        r == -E2BIG ? "more than 4000000 records: narrow --since/--until" : strerror(-r));
                return CTL_EXIT_ERROR;
        }
        if (f.requests == 0) {
                free(f.lat);
                _cleanup_free_ char *names = json_dumps(routes, JSON_COMPACT);
                fprintf(stderr, "keybrokerctl model baseline: no request records of model %s on route(s) %s in the "
                        "journal%s: send traffic first, or widen --since/--until\n", model, names ?: "?",
                        a.include_tests ? "" : " (test brokers' records need --include-tests)");
                return CTL_EXIT_ERROR;
        }
        json_t *body = body_json(&f, routes, a.since, a.until);
        free(f.lat);
        text = body ? json_dumps(body, JSON_COMPACT) : NULL;
        json_decref(body);
        free(path);
        if (!text || asprintf(&path, "/models/%s/baseline", model) < 0) {
                path = NULL;
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return CTL_EXIT_ERROR;
        }
        struct ctl_body b = { .data = text, .len = strlen(text), .content_type = "application/json" };
        if (ctl_request(ctl, "PUT", path, NULL, &b, &ans) < 0)
                return CTL_EXIT_ERROR;
        if (ctl->json)
                return ctl_print_json(json_object_get(ans, "baseline")) < 0 ? CTL_EXIT_ERROR : CTL_EXIT_OK;
        print_baseline(model, json_object_get(ans, "baseline"));
        return CTL_EXIT_OK;
}
