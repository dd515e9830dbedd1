/* SPDX-License-Identifier: MIT */
/* keybrokerctl usage: spend, tokens, errors and latency summed from the
 * journal's per-request records, read directly with sd-journal (no daemon
 * needed). The summing and printing live in usage-report.c. */

#include <errno.h>
#include <getopt.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>

#include "ctl.h"
#include "keybroker/keybroker.h"
#include "usage-report.h"
#include "util.h"

/* Longest --team we pass on as a journal match. */
#define USAGE_TEAM_MAX 256

static void help_usage(void) {
        printf("Usage: keybrokerctl usage [OPTIONS]\n"
               "\n"
               "Sum keybrokerd's per-request journal records (MESSAGE_ID=%s)\n"
               "into groups: requests, input/output/cached tokens, cost in USD, errors by\n"
               "class and p50/p95 latency, with a TOTAL row. Reads the journal directly;\n"
               "keybrokerd need not run.\n"
               "\n"
               "Options:\n"
               "  -S, --since TIME      records at or after TIME (default: the oldest)\n"
               "  -U, --until TIME      records at or before TIME (default: now)\n"
               "      --by KEY[,KEY…]   group by team, model, route, key, unit, day (UTC) or\n"
               "                        host (KEYBROKER_HOST: journals collected from a fleet);\n"
               "                        repeatable, in column order (default: team)\n"
               "      --team NAME       only this team's records\n"
               "      --json            JSON: {\"by\",\"groups\":[…],\"total\"}\n"
               "      --csv             CSV with a header row, one row per group\n"
               "  -D, --directory DIR   read the journal files in DIR instead of the system's\n"
               "      --include-tests   also count test brokers' records (KEYBROKER_TEST=1,\n"
               "                        [agent] test_traffic = yes, as make test sets)\n"
               "  -h, --help            show this help\n"
               "\n"
               "TIME is as for journalctl: \"now\", \"today\", \"yesterday\", \"-1h\", \"-30min\",\n"
               "\"+2d\", \"1h ago\", \"@EPOCH\", \"2026-11-25\", \"2026-11-25 10:00[:00]\",\n"
               "\"2026-11-25T10:00:00Z\"; local time unless it ends in Z or \" UTC\".\n"
               "\n"
               "Error classes: quota_rejected, upstream_429, timeouts (upstream_timeout),\n"
               "model_not_found (also an upstream 404), upstream_5xx, stream_interrupted,\n"
               "client_abort. Percentiles are within 1%% of the exact nearest-rank value.\n",
               KB_MID_REQUEST);
}

static void journal_closep(sd_journal **j) {
        if (*j)
                sd_journal_close(*j);
}

static int add_match(sd_journal *j, const char *field, const char *value) {
        _cleanup_free_ char *m = NULL;

        if (asprintf(&m, "%s=%s", field, value) < 0)
                return -ENOMEM;
        return sd_journal_add_match(j, m, 0);
}

struct usage_args {
        uint64_t since, until;
        bool has_since, has_until;
        usage_by by[_USAGE_BY_MAX];
        size_t n_by;
        const char *team;
        const char *directory;
        bool csv;
        bool include_tests;
};

static int parse_args(int argc, char **argv, struct usage_args *a) {
        static const struct option options[] = {
                { "since", required_argument, NULL, 'S' },
                { "until", required_argument, NULL, 'U' },
                { "by", required_argument, NULL, 'b' },
                { "team", required_argument, NULL, 't' },
                { "csv", no_argument, NULL, 'c' },
                { "directory", required_argument, NULL, 'D' },
                { "include-tests", no_argument, NULL, 'T' },
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
                        k = usage_parse_time(optarg, now, c == 'S' ? &a->since : &a->until);
                        if (k < 0)
                                return ctl_usage_error("usage", "invalid time for --%s: '%s' (e.g. today, -1h, 2026-11-25 10:00)",
                                                       c == 'S' ? "since" : "until", optarg);
                        if (c == 'S')
                                a->has_since = true;
                        else
                                a->has_until = true;
                        break;
                case 'b':
                        if (usage_parse_by(optarg, a->by, &a->n_by) < 0)
                                return ctl_usage_error("usage", "invalid --by '%s': use team, model, route, key, unit, day or host",
                                                       optarg);
                        break;
                case 't':
                        if (!optarg[0] || strlen(optarg) > USAGE_TEAM_MAX)
                                return ctl_usage_error("usage", "--team needs a team name");
                        a->team = optarg;
                        break;
                case 'c':
                        a->csv = true;
                        break;
                case 'T':
                        a->include_tests = true;
                        break;
                case 'D':
                        if (!optarg[0])
                                return ctl_usage_error("usage", "--directory needs a DIR");
                        a->directory = optarg;
                        break;
                case 'h':
                        help_usage();
                        return CTL_EXIT_OK;
                case ':':
                        return ctl_usage_error("usage", "%s needs a value", argv[optind - 1]);
                default:
                        return ctl_usage_error("usage", "unknown option; see keybrokerctl usage --help");
                }
        if (optind < argc)
                return ctl_extra_argument("usage");
        if (a->has_since && a->has_until && a->since > a->until)
                return ctl_usage_error("usage", "--since must not be after --until");
        if (a->n_by == 0)
                a->by[a->n_by++] = USAGE_BY_TEAM;
        return -1;
}

static int open_journal(const struct usage_args *a, sd_journal **ret) {
        sd_journal *j = NULL;
        int k;

        if (a->directory) {
                struct stat st;
                /* sd-journal takes a missing directory for an empty one. */
                if (stat(a->directory, &st) < 0)
                        return -errno;
                if (!S_ISDIR(st.st_mode))
                        return -ENOTDIR;
                k = sd_journal_open_directory(&j, a->directory, 0);
        } else
                k = sd_journal_open(&j, SD_JOURNAL_LOCAL_ONLY);
        if (k < 0)
                return k;
        *ret = j;
        return 0;
}

/* Sum the matching records into r. Returns 0 or -errno; *ret_what names the
 * step that failed. */
static int read_records(sd_journal *j, const struct usage_args *a, struct usage_report *r, const char **ret_what) {
        struct usage_record *rec;
        int k;

        *ret_what = "cannot filter the journal";
        if ((k = add_match(j, "MESSAGE_ID", KB_MID_REQUEST)) < 0 ||
            (k = add_match(j, "SYSLOG_IDENTIFIER", KB_SYSLOG_IDENTIFIER)) < 0 ||
            (a->team && (k = add_match(j, "KEYBROKER_TEAM", a->team)) < 0))
                return k;
        /* Only the start of a long (compressed) value: group keys are cut
         * at USAGE_VALUE_MAX anyway. */
        (void) sd_journal_set_data_threshold(j, 4096);

        *ret_what = "cannot seek in the journal";
        k = a->has_since ? sd_journal_seek_realtime_usec(j, a->since) : sd_journal_seek_head(j);
        if (k < 0)
                return k;

        rec = malloc(sizeof(*rec));
        if (!rec)
                return -ENOMEM;
        *ret_what = "cannot read the journal";
        for (;;) {
                const void *d;
                size_t l;
                uint64_t t;

                k = sd_journal_next(j);
                if (k <= 0)
                        break;
                k = sd_journal_get_realtime_usec(j, &t);
                if (k < 0)
                        break;
                usage_record_reset(rec);
                rec->realtime_usec = t;
                sd_journal_restart_data(j);
                /* One pass over the entry's fields: far cheaper than a
                 * sd_journal_get_data() per field. */
                while (sd_journal_enumerate_available_data(j, &d, &l) > 0)
                        (void) usage_record_parse_item(rec, d, l);
                if (rec->test && !a->include_tests)
                        continue;
                /* By the record's own time (KEYBROKER_REALTIME_USEC) when it
                 * has one: a record that waited in the spool reached journald
                 * later, so nothing after --until (by arrival) can be skipped. */
                if ((a->has_since && rec->realtime_usec < a->since) ||
                    (a->has_until && rec->realtime_usec > a->until))
                        continue;
                k = usage_report_add(r, rec);
                if (k < 0) {
                        *ret_what = k == -E2BIG    ? "too many groups; narrow --by, --team or the time range"
                                    : k == -ERANGE ? "a sum overflows"
                                                   : "cannot sum the records";
                        break;
                }
        }
        free(rec);
        return k < 0 ? k : 0;
}

int ctl_cmd_usage(const struct ctl *ctl, int argc, char **argv) {
        _cleanup_(journal_closep) sd_journal *j = NULL;
        _cleanup_usage_report_ struct usage_report *r = NULL;
        struct usage_args a = {};
        const char *what;
        int k;

        k = parse_args(argc, argv, &a);
        if (k >= 0)
                return k;
        if (a.csv && ctl->json)
                return ctl_usage_error("usage", "--json and --csv exclude each other");

        k = usage_report_new(a.by, a.n_by, &r);
        if (k < 0) {
                fprintf(stderr, "keybrokerctl usage: %s\n", strerror(-k));
                return CTL_EXIT_ERROR;
        }
        k = open_journal(&a, &j);
        if (k < 0) {
                if (a.directory)
                        fprintf(stderr, "keybrokerctl usage: cannot open journal directory %s: %s\n", a.directory,
                                strerror(-k));
                else
                        fprintf(stderr, "keybrokerctl usage: cannot open the journal: %s\n", strerror(-k));
                return CTL_EXIT_ERROR;
        }
        k = read_records(j, &a, r, &what);
        if (k == -E2BIG || k == -ERANGE) {
                fprintf(stderr, "keybrokerctl usage: %s\n", what);
                return CTL_EXIT_ERROR;
        }
        if (k < 0) {
                fprintf(stderr, "keybrokerctl usage: %s: %s\n", what, strerror(-k));
                return CTL_EXIT_ERROR;
        }

        if (ctl->json)
                k = usage_report_print_json(r, stdout);
        else if (a.csv)
                k = usage_report_print_csv(r, stdout);
        else
                k = usage_report_print_table(r, stdout);
        if (k == -ENOMEM) {
                fprintf(stderr, "keybrokerctl usage: %s\n", strerror(-k));
                return CTL_EXIT_ERROR;
        }
        /* A write error is reported once, by main's final flush check. */
        return k < 0 ? CTL_EXIT_ERROR : CTL_EXIT_OK;
}
