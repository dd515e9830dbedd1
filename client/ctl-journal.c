/* SPDX-License-Identifier: MIT */
/* The journal as keybrokerctl's readers (usage, model compare, model
 * baseline) take it: the same options, opened the same way, and the same
 * walk over keybrokerd's records of one MESSAGE_ID, so that a record counts
 * or not by the same rules whichever command reads it. */

#include <errno.h>
#include <getopt.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>

#include "ctl.h"
#include "keybroker/keybroker.h"
#include "usage-report.h"
#include "util.h"

void ctl_journal_closep(sd_journal **j) {
        if (*j)
                sd_journal_close(*j);
}

int ctl_journal_option(const char *cmd, int c, const char *arg, uint64_t now, struct ctl_journal_args *a) {
        switch (c) {
        case 'S':
        case 'U':
                if (usage_parse_time(arg, now, c == 'S' ? &a->since : &a->until) < 0)
                        return ctl_usage_error(cmd, "invalid time for --%s: '%s' (e.g. today, -1h, 2026-11-25 10:00)",
                                               c == 'S' ? "since" : "until", arg);
                if (c == 'S')
                        a->has_since = true;
                else
                        a->has_until = true;
                return -1;
        case 'D':
                if (!arg[0])
                        return ctl_usage_error(cmd, "--directory needs a DIR");
                a->directory = arg;
                return -1;
        case 'T':
                a->include_tests = true;
                return -1;
        default:
                return ctl_usage_error(cmd, "unknown option; see keybrokerctl %s --help", cmd);
        }
}

int ctl_journal_check_range(const char *cmd, const struct ctl_journal_args *a) {
        if (a->has_since && a->has_until && a->since > a->until)
                return ctl_usage_error(cmd, "--since must not be after --until");
        return -1;
}

int ctl_journal_open(const char *directory, sd_journal **ret) {
        sd_journal *j = NULL;
        int k;

        if (directory) {
                struct stat st;
                /* sd-journal takes a missing directory for an empty one. */
                if (stat(directory, &st) < 0)
                        return -errno;
                if (!S_ISDIR(st.st_mode))
                        return -ENOTDIR;
                k = sd_journal_open_directory(&j, directory, 0);
        } else
                k = sd_journal_open(&j, SD_JOURNAL_LOCAL_ONLY);
        if (k < 0)
                return k;
        *ret = j;
        return 0;
}

bool ctl_journal_wanted(const struct ctl_journal_args *a, uint64_t realtime_usec, bool test) {
        if (test && !a->include_tests)
                return false;
        /* By the record's own time (KEYBROKER_REALTIME_USEC) when it has
         * one: a record that waited in the spool reached journald later, so
         * nothing after --until (by arrival) can be skipped. */
        return !(a->has_since && realtime_usec < a->since) && !(a->has_until && realtime_usec > a->until);
}

static int add_match(sd_journal *j, const char *field, const char *value) {
        _cleanup_free_ char *m = NULL;

        if (asprintf(&m, "%s=%s", field, value) < 0)
                return -ENOMEM;
        return sd_journal_add_match(j, m, 0);
}

int ctl_journal_read(sd_journal *j, const struct ctl_journal_args *a, const char *message_id, const char *field,
                     const char *value, const struct ctl_journal_reader *reader, void *userdata,
                     const char **ret_what) {
        int k;

        *ret_what = "cannot filter the journal";
        if ((k = add_match(j, "MESSAGE_ID", message_id)) < 0 ||
            (k = add_match(j, "SYSLOG_IDENTIFIER", KB_SYSLOG_IDENTIFIER)) < 0 ||
            (value && (k = add_match(j, field, value)) < 0))
                return k;
        /* Only the start of a long (compressed) value: the readers cut what
         * they keep of a value shorter than this anyway. */
        (void) sd_journal_set_data_threshold(j, 4096);

        *ret_what = "cannot seek in the journal";
        k = a->has_since ? sd_journal_seek_realtime_usec(j, a->since) : sd_journal_seek_head(j);
        if (k < 0)
                return k;

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
                reader->start(userdata, t);
                sd_journal_restart_data(j);
                /* One pass over the entry's fields: far cheaper than a
                 * sd_journal_get_data() per field. */
                while (sd_journal_enumerate_available_data(j, &d, &l) > 0)
                        reader->item(userdata, d, l);
                k = reader->end(userdata);
                if (k < 0) {
                        *ret_what = NULL;
                        break;
                }
        }
        return k < 0 ? k : 0;
}

struct request_reader {
        const struct ctl_journal_args *args;
        struct usage_record *rec;
        int (*add)(void *userdata, const struct usage_record *rec);
        void *userdata;
};

static void request_start(void *userdata, uint64_t realtime_usec) {
        struct request_reader *u = userdata;
        usage_record_reset(u->rec);
        u->rec->realtime_usec = realtime_usec;
}

static void request_item(void *userdata, const void *data, size_t len) {
        struct request_reader *u = userdata;
        (void) usage_record_parse_item(u->rec, data, len);
}

static int request_end(void *userdata) {
        struct request_reader *u = userdata;
        if (!ctl_journal_wanted(u->args, u->rec->realtime_usec, u->rec->test))
                return 0;
        return u->add(u->userdata, u->rec);
}

int ctl_journal_read_requests(sd_journal *j, const struct ctl_journal_args *a, const char *field, const char *value,
                              int (*add)(void *userdata, const struct usage_record *rec), void *userdata,
                              const char **ret_what) {
        static const struct ctl_journal_reader reader = { request_start, request_item, request_end };
        _cleanup_free_ struct usage_record *rec = malloc(sizeof(*rec));
        struct request_reader u = { .args = a, .rec = rec, .add = add, .userdata = userdata };

        if (!rec) {
                *ret_what = "cannot read the journal";
                return -ENOMEM;
        }
        return ctl_journal_read(j, a, KB_MID_REQUEST, field, value, &reader, &u, ret_what);
}
