/* SPDX-License-Identifier: MIT */
/* keybrokerctl usage: spend, tokens, errors and latency summed from the
 * journal's per-request records, read directly with sd-journal (no daemon
 * needed). The summing and printing live in usage-report.c. */

#include <errno.h>
#include <getopt.h>
#include <string.h>
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

struct usage_args {
        struct ctl_journal_args journal;
        usage_by by[_USAGE_BY_MAX];
        size_t n_by;
        const char *team;
        bool csv;
};

static int parse_args(int argc, char **argv, struct usage_args *a) {
        static const struct option options[] = {
                CTL_JOURNAL_LONG_OPTIONS,
                { "by", required_argument, NULL, 'b' },
                { "team", required_argument, NULL, 't' },
                { "csv", no_argument, NULL, 'c' },
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
                        if ((k = ctl_journal_option("usage", c, optarg, now, &a->journal)) >= 0)
                                return k;
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
        if ((k = ctl_journal_check_range("usage", &a->journal)) >= 0)
                return k;
        if (a->n_by == 0)
                a->by[a->n_by++] = USAGE_BY_TEAM;
        return -1;
}

struct usage_reader {
        struct usage_report *report;
        const char *what;       /* why usage_report_add() failed */
};

static int usage_add(void *userdata, const struct usage_record *rec) {
        struct usage_reader *u = userdata;
        int k = usage_report_add(u->report, rec);
        if (k < 0)
                u->what = k == -E2BIG    ? "too many groups; narrow --by, --team or the time range"
                          : k == -ERANGE ? "a sum overflows"
                                         : "cannot sum the records";
        return k;
}

/* Sum the matching records into r. Returns 0 or -errno; *ret_what names the
 * step that failed. */
static int read_records(sd_journal *j, const struct usage_args *a, struct usage_report *r, const char **ret_what) {
        struct usage_reader u = { .report = r };
        int k = ctl_journal_read_requests(j, &a->journal, "KEYBROKER_TEAM", a->team, usage_add, &u, ret_what);
        if (!*ret_what)
                *ret_what = u.what;
        return k;
}

int ctl_cmd_usage(const struct ctl *ctl, int argc, char **argv) {
        _cleanup_(ctl_journal_closep) sd_journal *j = NULL;
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
        k = ctl_journal_open(a.journal.directory, &j);
        if (k < 0) {
                if (a.journal.directory)
                        fprintf(stderr, "keybrokerctl usage: cannot open journal directory %s: %s\n", a.journal.directory,
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
