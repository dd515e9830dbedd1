/* SPDX-License-Identifier: MIT */
/* keybrokerctl model compare NAME: a model's shadow pairs (MESSAGE_ID
 * KB_MID_SHADOW) summed from the journal, read directly with sd-journal as
 * `keybrokerctl usage` reads request records: agreement, error classes,
 * latency, tokens and cost of the primary and the shadow side by side. */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <string.h>
#include <systemd/sd-journal.h>

#include "ctl.h"
#include "keybroker/keybroker.h"
#include "usage-report.h"
#include "util.h"

/* Longest model name passed on as a journal match. */
#define COMPARE_MODEL_MAX 256
/* Distinct shadow route/model pairs listed (a model's shadow may change
 * with the config); more are counted, not named. */
#define COMPARE_MAX_SHADOWS 16
#define FIELD_MAX 512

static void help_compare(void) {
        printf("Usage: keybrokerctl model compare NAME [OPTIONS]\n"
               "\n"
               "Sum the shadow comparison records (MESSAGE_ID=%s) of model NAME\n"
               "(its [model:NAME] shadow = ROUTE UPSTREAM_MODEL ...): the pairs of a live\n"
               "request and its shadow call, how often both answers had the same shape\n"
               "(status class, JSON members or event types, tool calls), errors by class,\n"
               "p50/p95 latency, tokens, the output-token ratio (shadow / primary) and cost of\n"
               "each side, and the days the shadow reached its budget. Reads the journal\n"
               "directly; keybrokerd need not run.\n"
               "\n"
               "Options:\n"
               "  -S, --since TIME      records at or after TIME (default: the oldest)\n"
               "  -U, --until TIME      records at or before TIME (default: now)\n"
               "      --json            the same as one JSON object\n"
               "  -D, --directory DIR   read the journal files in DIR instead of the system's\n"
               "      --include-tests   also count test brokers' records (KEYBROKER_TEST=1)\n"
               "  -h, --help            show this help\n"
               "\n"
               "TIME is as for keybrokerctl usage (\"today\", \"-1h\", \"2026-11-25 10:00\", ...).\n"
               "Error classes: 4xx, 5xx, transport (no answer, or its transfer cut), other.\n"
               "No pairs in the range is not an error: it says so and exits 0.\n",
               KB_MID_SHADOW);
}

enum { CLS_4XX, CLS_5XX, CLS_TRANSPORT, CLS_OTHER, _CLS_MAX };
static const char *const cls_names[_CLS_MAX] = { "4xx", "5xx", "transport", "other" };

struct side {
        uint64_t errors[_CLS_MAX];
        uint64_t input_tokens, output_tokens;
        int64_t cost_microusd;
        struct usage_hist latency;
};

struct compare {
        uint64_t pairs, matches, budget_reached, skipped, unpriced;
        struct side primary, shadow;
        char *shadows[COMPARE_MAX_SHADOWS];
        size_t n_shadows;
        bool more_shadows;
};

/* One record, as far as the comparison reads it. */
struct rec {
        char event[32];
        char cls[16], shadow_cls[16];
        long status;
        bool match, priced, test;
        bool has_latency, has_shadow_latency;
        uint64_t latency, shadow_latency, in, out, shadow_in, shadow_out, skipped, realtime;
        int64_t cost, shadow_cost;
        char route[FIELD_MAX], model[FIELD_MAX];
};

struct compare_args {
        struct ctl_journal_args journal;
        const char *model;
};

static bool parse_u64(const char *v, size_t len, uint64_t *ret) {
        uint64_t n = 0;
        if (len == 0 || len > 20)
                return false;
        for (size_t i = 0; i < len; i++) {
                if (v[i] < '0' || v[i] > '9' || __builtin_mul_overflow(n, 10, &n) ||
                    __builtin_add_overflow(n, (uint64_t) (v[i] - '0'), &n))
                        return false;
        }
        *ret = n;
        return true;
}

static bool parse_i64(const char *v, size_t len, int64_t *ret) {
        uint64_t m;
        bool neg = len > 0 && v[0] == '-';
        if (!parse_u64(v + neg, len - neg, &m) || m > (uint64_t) INT64_MAX)
                return false;
        *ret = neg ? -(int64_t) m : (int64_t) m;
        return true;
}

static void set_str(char *d, size_t size, const char *v, size_t len) {
        size_t l = MIN(len, size - 1);
        memcpy(d, v, l);
        d[l] = 0;
}

#define FIELD_IS(name) (flen == sizeof(name) - 1 && memcmp(f, name, flen) == 0)

static void parse_item(struct rec *r, const char *p, size_t len) {
        static const char prefix[] = "KEYBROKER_";
        const char *eq = memchr(p, '=', len);
        if (!eq || len <= sizeof(prefix) - 1 || memcmp(p, prefix, sizeof(prefix) - 1) != 0)
                return;
        const char *f = p + sizeof(prefix) - 1, *v = eq + 1;
        size_t flen = (size_t) (eq - f), vlen = len - (size_t) (v - p);
        uint64_t u;

        if (FIELD_IS("EVENT"))
                set_str(r->event, sizeof(r->event), v, vlen);
        else if (FIELD_IS("STATUS_CLASS"))
                set_str(r->cls, sizeof(r->cls), v, vlen);
        else if (FIELD_IS("SHADOW_ERROR"))
                set_str(r->shadow_cls, sizeof(r->shadow_cls), v, vlen);
        else if (FIELD_IS("STATUS")) {
                if (parse_u64(v, vlen, &u) && u <= 999)
                        r->status = (long) u;
        } else if (FIELD_IS("SHAPE_MATCH"))
                r->match = vlen == 1 && v[0] == '1';
        else if (FIELD_IS("SHADOW_PRICED"))
                r->priced = vlen == 1 && v[0] == '1';
        else if (FIELD_IS("TEST"))
                r->test = vlen == 1 && v[0] == '1';
        else if (FIELD_IS("LATENCY_MS"))
                r->has_latency = parse_u64(v, vlen, &r->latency);
        else if (FIELD_IS("SHADOW_LATENCY_MS"))
                r->has_shadow_latency = parse_u64(v, vlen, &r->shadow_latency);
        else if (FIELD_IS("INPUT_TOKENS"))
                (void) parse_u64(v, vlen, &r->in);
        else if (FIELD_IS("OUTPUT_TOKENS"))
                (void) parse_u64(v, vlen, &r->out);
        else if (FIELD_IS("SHADOW_INPUT_TOKENS"))
                (void) parse_u64(v, vlen, &r->shadow_in);
        else if (FIELD_IS("SHADOW_OUTPUT_TOKENS"))
                (void) parse_u64(v, vlen, &r->shadow_out);
        else if (FIELD_IS("COST_MICROUSD"))
                (void) parse_i64(v, vlen, &r->cost);
        else if (FIELD_IS("SHADOW_COST_MICROUSD"))
                (void) parse_i64(v, vlen, &r->shadow_cost);
        else if (FIELD_IS("SHADOW_SKIPPED"))
                (void) parse_u64(v, vlen, &r->skipped);
        else if (FIELD_IS("REALTIME_USEC"))
                (void) parse_u64(v, vlen, &r->realtime);
        else if (FIELD_IS("SHADOW_ROUTE"))
                set_str(r->route, sizeof(r->route), v, vlen);
        else if (FIELD_IS("SHADOW_UPSTREAM_MODEL"))
                set_str(r->model, sizeof(r->model), v, vlen);
}

static int class_index(const char *c) {
        for (int i = 0; i < _CLS_MAX; i++)
                if (streq(c, cls_names[i]))
                        return i;
        return -1;      /* 2xx, none: not an error */
}

static int side_add(struct side *s, const char *cls, bool has_latency, uint64_t latency, uint64_t in, uint64_t out,
                    int64_t cost) {
        int i = class_index(cls);
        if (i >= 0)
                s->errors[i]++;
        if (__builtin_add_overflow(s->input_tokens, in, &s->input_tokens) ||
            __builtin_add_overflow(s->output_tokens, out, &s->output_tokens) ||
            __builtin_add_overflow(s->cost_microusd, cost, &s->cost_microusd))
                return -ERANGE;
        return has_latency ? usage_hist_add(&s->latency, latency) : 0;
}

static void note_shadow(struct compare *c, const struct rec *r) {
        _cleanup_free_ char *s = NULL;
        if (asprintf(&s, "%s/%s", r->route, r->model) < 0)
                return;
        for (size_t i = 0; i < c->n_shadows; i++)
                if (streq(c->shadows[i], s))
                        return;
        if (c->n_shadows >= COMPARE_MAX_SHADOWS) {
                c->more_shadows = true;
                return;
        }
        c->shadows[c->n_shadows++] = TAKE_PTR(s);
}

static int compare_add(struct compare *c, const struct rec *r) {
        int k;

        if (streq(r->event, "budget_reached")) {
                c->budget_reached++;
                return 0;
        }
        if (streq(r->event, "skipped_busy")) {
                c->skipped += r->skipped;
                return 0;
        }
        if (!streq(r->event, "pair"))
                return 0;
        /* records written before STATUS_CLASS existed: from the status */
        const char *pcls = r->cls[0] ? r->cls
                         : r->status >= 500 ? "5xx" : r->status >= 400 ? "4xx" : r->status >= 200 ? "2xx" : "other";
        c->pairs++;
        c->matches += r->match;
        c->unpriced += !r->priced;
        note_shadow(c, r);
        if ((k = side_add(&c->primary, pcls, r->has_latency, r->latency, r->in, r->out, r->cost)) < 0)
                return k;
        return side_add(&c->shadow, r->shadow_cls, r->has_shadow_latency, r->shadow_latency, r->shadow_in,
                        r->shadow_out, r->shadow_cost);
}

static void compare_done(struct compare *c) {
        usage_hist_done(&c->primary.latency);
        usage_hist_done(&c->shadow.latency);
        for (size_t i = 0; i < c->n_shadows; i++)
                free(c->shadows[i]);
}

/* ---- reading ---- */

struct compare_reader {
        const struct compare_args *args;
        struct compare *compare;
        struct rec *rec;
};

static void compare_start(void *userdata, uint64_t realtime_usec) {
        struct compare_reader *u = userdata;
        memset(u->rec, 0, sizeof(*u->rec));
        u->rec->realtime = realtime_usec;
}

static void compare_item(void *userdata, const void *data, size_t len) {
        struct compare_reader *u = userdata;
        parse_item(u->rec, data, len);
}

static int compare_end(void *userdata) {
        struct compare_reader *u = userdata;
        if (!ctl_journal_wanted(&u->args->journal, u->rec->realtime, u->rec->test))
                return 0;
        return compare_add(u->compare, u->rec);
}

static int read_records(sd_journal *j, const struct compare_args *a, struct compare *c) {
        static const struct ctl_journal_reader reader = { compare_start, compare_item, compare_end };
        _cleanup_free_ struct rec *r = malloc(sizeof(*r));
        struct compare_reader u = { .args = a, .compare = c, .rec = r };
        const char *what;

        if (!r)
                return -ENOMEM;
        return ctl_journal_read(j, &a->journal, KB_MID_SHADOW, "KEYBROKER_MODEL", a->model, &reader, &u, &what);
}

/* ---- output ---- */

static void format_usd(int64_t v, char buf[static 32]) {
        uint64_t m = v < 0 ? 0 - (uint64_t) v : (uint64_t) v;
        snprintf(buf, 32, "%s%" PRIu64 ".%06" PRIu64, v < 0 ? "-" : "", m / 1000000, m % 1000000);
}

static double agreement(const struct compare *c) {
        return c->pairs ? round(1000.0 * (double) c->matches / (double) c->pairs) / 10.0 : 0;
}

static json_t *side_json(const struct side *s) {
        char usd[32];
        uint64_t p50, p95;
        bool have = usage_hist_percentile(&s->latency, 50, &p50) && usage_hist_percentile(&s->latency, 95, &p95);
        json_t *errors = json_object();

        for (int i = 0; errors && i < _CLS_MAX; i++)
                json_object_set_new(errors, cls_names[i], json_integer((json_int_t) s->errors[i]));
        format_usd(s->cost_microusd, usd);
        return json_pack("{s:o?, s:{s:o, s:o}, s:I, s:I, s:s, s:I}", "errors", errors, "latency_ms", "p50",
                         have ? json_integer((json_int_t) p50) : json_null(), "p95",
                         have ? json_integer((json_int_t) p95) : json_null(), "input_tokens",
                         (json_int_t) s->input_tokens, "output_tokens", (json_int_t) s->output_tokens, "cost_usd",
                         usd, "cost_microusd", (json_int_t) s->cost_microusd);
}

static int print_json(const struct compare_args *a, const struct compare *c) {
        json_t *shadows = json_array();
        for (size_t i = 0; shadows && i < c->n_shadows; i++)
                json_array_append_new(shadows, json_string(c->shadows[i]));
        json_t *ratio = c->primary.output_tokens ? json_real(round(1000.0 * (double) c->shadow.output_tokens /
                                                                   (double) c->primary.output_tokens) / 1000.0)
                                                 : json_null();
        _cleanup_json_ json_t *j = json_pack(
                "{s:s, s:I, s:I, s:f, s:o?, s:o?, s:o?, s:o?, s:I, s:I, s:I}", "model", a->model, "pairs",
                (json_int_t) c->pairs, "shape_match", (json_int_t) c->matches, "agreement_pct", agreement(c),
                "shadows", shadows, "primary", side_json(&c->primary), "shadow", side_json(&c->shadow),
                "output_token_ratio", ratio, "unpriced_pairs", (json_int_t) c->unpriced, "budget_reached",
                (json_int_t) c->budget_reached, "skipped_busy", (json_int_t) c->skipped);
        if (!j) {
                fprintf(stderr, "keybrokerctl model compare: out of memory\n");
                return CTL_EXIT_ERROR;
        }
        return ctl_print_json(j) < 0 ? CTL_EXIT_ERROR : CTL_EXIT_OK;
}

static void latency_cell(const struct usage_hist *h, unsigned p, char buf[static 24]) {
        uint64_t v;
        if (usage_hist_percentile(h, p, &v))
                snprintf(buf, 24, "%" PRIu64, v);
        else
                snprintf(buf, 24, "-");
}

static void row(const char *what, const char *p, const char *s) {
        printf("  %-20s %14s %14s\n", what, p, s);
}

static void row_u64(const char *what, uint64_t p, uint64_t s) {
        char a[24], b[24];
        snprintf(a, sizeof(a), "%" PRIu64, p);
        snprintf(b, sizeof(b), "%" PRIu64, s);
        row(what, a, b);
}

static int print_table(const struct compare_args *a, const struct compare *c) {
        char p[32], s[32];

        printf("model %s: %" PRIu64 " shadow pair(s)", a->model, c->pairs);
        for (size_t i = 0; i < c->n_shadows; i++)
                printf("%s%s", i ? ", " : " with ", c->shadows[i]);
        printf("%s\n", c->more_shadows ? ", ..." : "");
        printf("  agreement: %.1f%% (%" PRIu64 " of %" PRIu64 " with the same status class and answer shape)\n",
               agreement(c), c->matches, c->pairs);
        printf("\n");
        row("", "primary", "shadow");
        for (int i = 0; i < _CLS_MAX; i++) {
                char what[32];
                snprintf(what, sizeof(what), "errors %s", cls_names[i]);
                row_u64(what, c->primary.errors[i], c->shadow.errors[i]);
        }
        latency_cell(&c->primary.latency, 50, p);
        latency_cell(&c->shadow.latency, 50, s);
        row("latency p50 ms", p, s);
        latency_cell(&c->primary.latency, 95, p);
        latency_cell(&c->shadow.latency, 95, s);
        row("latency p95 ms", p, s);
        row_u64("input tokens", c->primary.input_tokens, c->shadow.input_tokens);
        row_u64("output tokens", c->primary.output_tokens, c->shadow.output_tokens);
        format_usd(c->primary.cost_microusd, p);
        format_usd(c->shadow.cost_microusd, s);
        row("cost USD", p, s);
        printf("\n");
        if (c->primary.output_tokens)
                printf("  output-token ratio: %.3f (shadow / primary)\n",
                       (double) c->shadow.output_tokens / (double) c->primary.output_tokens);
        else
                printf("  output-token ratio: - (no primary output tokens)\n");
        if (c->unpriced)
                printf("  unpriced: %" PRIu64 " pair(s) whose shadow model has no price on its route (counted $0)\n",
                       c->unpriced);
        printf("  budget reached: %" PRIu64 " time(s)\n", c->budget_reached);
        if (c->skipped)
                printf("  not mirrored: %" PRIu64 " sampled request(s) (shadow calls at their cap)\n", c->skipped);
        return CTL_EXIT_OK;
}

/* ---- the command ---- */

static int parse_args(int argc, char **argv, struct compare_args *a) {
        static const struct option options[] = {
                CTL_JOURNAL_LONG_OPTIONS,
                { "help", no_argument, NULL, 'h' },
                {},
        };
        uint64_t now = kb_realtime_usec();
        int c, k;

        optind = 0;
        opterr = 0;
        while ((c = getopt_long(argc, argv, ":S:U:D:h", options, NULL)) >= 0)
                switch (c) {
                case 'S':
                case 'U':
                case 'D':
                case 'T':
                        if ((k = ctl_journal_option("model compare", c, optarg, now, &a->journal)) >= 0)
                                return k;
                        break;
                case 'h':
                        help_compare();
                        return CTL_EXIT_OK;
                case ':':
                        return ctl_usage_error("model compare", "%s needs a value", argv[optind - 1]);
                default:
                        return ctl_usage_error("model compare", "unknown option; see keybrokerctl model compare --help");
                }
        if (optind >= argc)
                return ctl_usage_error("model compare", "missing NAME; see keybrokerctl model compare --help");
        a->model = argv[optind++];
        if (!a->model[0] || strlen(a->model) > COMPARE_MODEL_MAX)
                return ctl_usage_error("model compare", "NAME must be a model name of 1 to %d bytes",
                                       COMPARE_MODEL_MAX);
        if (optind < argc)
                return ctl_extra_argument("model compare");
        if ((k = ctl_journal_check_range("model compare", &a->journal)) >= 0)
                return k;
        return -1;
}

int ctl_cmd_model_compare(const struct ctl *ctl, int argc, char **argv) {
        _cleanup_(ctl_journal_closep) sd_journal *j = NULL;
        struct compare_args a = {};
        struct compare c = {};
        int k;

        k = parse_args(argc, argv, &a);
        if (k >= 0)
                return k;
        k = ctl_journal_open(a.journal.directory, &j);
        if (k < 0) {
                if (a.journal.directory)
                        fprintf(stderr, "keybrokerctl model compare: cannot open journal directory %s: %s\n",
                                a.journal.directory, strerror(-k));
                else
                        fprintf(stderr, "keybrokerctl model compare: cannot open the journal: %s\n", strerror(-k));
                return CTL_EXIT_ERROR;
        }
        k = read_records(j, &a, &c);
        if (k < 0) {
                fprintf(stderr, "keybrokerctl model compare: %s\n",
                        k == -ERANGE ? "a sum overflows" : strerror(-k));
                compare_done(&c);
                return CTL_EXIT_ERROR;
        }
        if (ctl->json)
                k = print_json(&a, &c);
        else if (c.pairs == 0) {
                printf("model %s: no shadow pairs in the journal%s (is [model:%s] shadow = set, and has it had "
                       "traffic?)\n", a.model, a.journal.has_since || a.journal.has_until ? " in that time range" : "", a.model);
                if (c.budget_reached || c.skipped)
                        printf("  budget reached: %" PRIu64 " time(s); not mirrored: %" PRIu64 "\n",
                               c.budget_reached, c.skipped);
                k = CTL_EXIT_OK;
        } else
                k = print_table(&a, &c);
        compare_done(&c);
        return k;
}
