/* SPDX-License-Identifier: MIT */
#pragma once

/* keybrokerctl's modules. This is a command-line tool, so unlike the agent's
 * library-like modules these print their own messages to stderr, once, and
 * commands return an exit status: 0 ok, 1 error, 2 usage. */

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CTL_EXIT_OK 0
#define CTL_EXIT_ERROR 1
#define CTL_EXIT_USAGE 2

/* Bounds on what the daemon may send back; anything larger is not an answer
 * this tool asked for. */
#define CTL_MAX_RESPONSE (16u * 1024 * 1024)

/* The secret bounds of the admin API (DESIGN "Admin API"). */
#define CTL_SECRET_MAX 4096
/* What we read before deciding a secret is too long: the secret plus "\r\n". */
#define CTL_SECRET_READ_MAX (CTL_SECRET_MAX + 2)

struct ctl {
        const char *admin;              /* admin socket path */
        bool json;
};

/* jansson's own json_decrefp() (json_auto_t) as a cleanup macro. */
#define _cleanup_json_ __attribute__((cleanup(json_decrefp)))

/* ctl-http.c */
struct ctl_body {
        const void *data;               /* not copied; may be a secret */
        size_t len;
        const char *content_type;
};
/* One request on the admin socket. On a 2xx answer with a JSON body returns
 * 0 and the document in *ret. Otherwise prints why on stderr ("keybrokerctl:
 * MESSAGE" from the daemon's error JSON, or "cannot reach keybrokerd at
 * PATH: REASON") and returns -1. extra_headers: NULL-terminated, may be NULL. */
int ctl_request(const struct ctl *ctl, const char *method, const char *path, const char *const *extra_headers,
                const struct ctl_body *body, json_t **ret);
/* GET on the app socket (whoami), same conventions; what_unreachable names
 * the thing we failed to reach. */
int ctl_request_socket(const char *socket_path, const char *what_unreachable, const char *method, const char *path,
                       const char *const *extra_headers, const struct ctl_body *body, json_t **ret);
/* Escape one path segment (a key name). NULL on OOM. */
char *ctl_escape_segment(const char *s);

/* ctl-table.c */
struct ctl_table;
struct ctl_table *ctl_table_new(const char *const *headers, size_t n_columns);
struct ctl_table *ctl_table_free(struct ctl_table *t);
static inline void ctl_table_freep(struct ctl_table **t) {
        ctl_table_free(*t);
}
#define _cleanup_table_ __attribute__((cleanup(ctl_table_freep)))
/* Append a row; cells[i] NULL or "" prints as "-". Copies the strings. */
int ctl_table_add_row(struct ctl_table *t, const char *const *cells);
/* Header row and rows, columns padded to the widest cell, two spaces apart,
 * the last column not padded; control characters in cells print as '?'.
 * An empty table prints just the header: saying "none" is the caller's job. */
void ctl_table_print(const struct ctl_table *t, FILE *f);
size_t ctl_table_rows(const struct ctl_table *t);

/* Aligned "key: value" lines (status). */
void ctl_print_kv(FILE *f, const char *const *keys, const char *const *values, size_t n);

/* Pretty, stable JSON of a daemon answer on stdout. */
int ctl_print_json(const json_t *j);

/* "2026-11-25T07:00:00Z" → "2026-11-25 08:00:00 CET" (local time) into buf;
 * NULL or unparsable input is copied or "-". */
const char *ctl_format_time(const char *iso, char *buf, size_t size);
/* A JSON integer/real/string as text into buf ("-" for null/absent). */
const char *ctl_json_scalar(const json_t *v, char *buf, size_t size);

/* ctl-compare.c: model compare NAME [--since T] (shadow pairs, read from
 * the journal). argv[0] is "compare". */
int ctl_cmd_model_compare(const struct ctl *ctl, int argc, char **argv);
/* ctl-promote.c: model baseline / promote / status. argv[0] is the command. */
int ctl_cmd_model_baseline(const struct ctl *ctl, int argc, char **argv);
int ctl_cmd_model_promote(const struct ctl *ctl, int argc, char **argv);
int ctl_cmd_model_status(const struct ctl *ctl, int argc, char **argv);

/* ctl-secret.c */
/* Read a secret for name from stdin: a no-echo prompt on the tty when stdin
 * is one, else stdin to EOF. On success *ret points to a NUL-terminated
 * buffer from sodium_malloc() (free with ctl_secret_free(), which zeroes it)
 * and *ret_len is its length (1..CTL_SECRET_MAX). Prints why on failure and
 * returns -1. */
int ctl_secret_read(const char *name, char **ret, size_t *ret_len);
void ctl_secret_free(char *secret);

/* ctl-keys.c */
int ctl_cmd_key(const struct ctl *ctl, int argc, char **argv);

/* ctl-info.c */
int ctl_cmd_status(const struct ctl *ctl, int argc, char **argv);
int ctl_cmd_team(const struct ctl *ctl, int argc, char **argv);
int ctl_cmd_route(const struct ctl *ctl, int argc, char **argv);
int ctl_cmd_reload(const struct ctl *ctl, int argc, char **argv);

/* ctl-routes.c: model split NAME ROUTE=WEIGHT... (argv[0] is "model") */
int ctl_cmd_model(const struct ctl *ctl, int argc, char **argv);
/* Whether s is a model name the admin API's paths can carry (/models/NAME/...):
 * 1..256 printable ASCII characters without blanks, '[', ']', '*', '"', '\',
 * '%', '?', '#' (the daemon's kb_admin_model_name_valid()). */
bool ctl_model_path_safe(const char *s);

/* ctl-preflight.c: route check NAME [--model M] (argv[0] is "check") */
int ctl_cmd_route_check(const struct ctl *ctl, int argc, char **argv);

/* ctl-journal.c: what the commands that read keybrokerd's journal records
 * (usage, model compare, model baseline) share. */
typedef struct sd_journal sd_journal;
struct ctl_journal_args {
        uint64_t since, until;          /* realtime µs, when has_since / has_until */
        bool has_since, has_until;
        const char *directory;          /* journal files to read; NULL: the system's */
        bool include_tests;             /* count KEYBROKER_TEST=1 records too */
};
/* Their getopt_long(3) entries; the short options are "S:U:D:". */
#define CTL_JOURNAL_LONG_OPTIONS                                        \
        { "since", required_argument, NULL, 'S' },                      \
        { "until", required_argument, NULL, 'U' },                      \
        { "directory", required_argument, NULL, 'D' },                  \
        { "include-tests", no_argument, NULL, 'T' }
/* Take option c ('S', 'U', 'D' or 'T') with its argument into a; TIME is
 * relative to now (one now for all of a command's options). -1 when taken,
 * else a usage error's exit status. */
int ctl_journal_option(const char *cmd, int c, const char *arg, uint64_t now, struct ctl_journal_args *a);
/* -1, or a usage error's exit status when --since is after --until. */
int ctl_journal_check_range(const char *cmd, const struct ctl_journal_args *a);
/* The journal files in directory (which must exist), or the local system's.
 * 0 or -errno. */
int ctl_journal_open(const char *directory, sd_journal **ret);
void ctl_journal_closep(sd_journal **j);
/* Whether a record of that time (its own KEYBROKER_REALTIME_USEC, or when
 * journald got it) and test flag counts under a. */
bool ctl_journal_wanted(const struct ctl_journal_args *a, uint64_t realtime_usec, bool test);
/* What ctl_journal_read() does with each entry: start() a record received
 * at realtime_usec, item() each "FIELD=value" (not NUL-terminated) into it,
 * end() counts it (or not: ctl_journal_wanted()); a negative end() stops
 * the reading and is returned. */
struct ctl_journal_reader {
        void (*start)(void *userdata, uint64_t realtime_usec);
        void (*item)(void *userdata, const void *data, size_t len);
        int (*end)(void *userdata);
};
/* Hand keybrokerd's records of message_id (and field=value, when value is
 * set) to reader, oldest first from a->since. 0 or -errno; *ret_what names
 * the step that failed, NULL when it was end(). */
int ctl_journal_read(sd_journal *j, const struct ctl_journal_args *a, const char *message_id, const char *field,
                     const char *value, const struct ctl_journal_reader *reader, void *userdata,
                     const char **ret_what);
/* ctl_journal_read() of the request records (KB_MID_REQUEST), each parsed
 * into a usage_record (usage-report.h) and, when ctl_journal_wanted(),
 * handed to add(). */
struct usage_record;
int ctl_journal_read_requests(sd_journal *j, const struct ctl_journal_args *a, const char *field, const char *value,
                              int (*add)(void *userdata, const struct usage_record *rec), void *userdata,
                              const char **ret_what);

/* ctl-usage.c: usage [--since T] [--until T] [--by KEY] [--team NAME] [--csv] [--directory DIR] */
int ctl_cmd_usage(const struct ctl *ctl, int argc, char **argv);

/* keybrokerctl.c: shared option handling for commands. */
/* Parse a command's options with getopt_long(3) conventions; only --help/-h
 * are known. Returns -1 when the command should go on (with *ret_optind set),
 * else the exit status (0 after help, 2 on a usage error). Unknown options
 * are reported without their value (it might be a secret). */
int ctl_parse_help_only(int argc, char **argv, const char *cmd, void (*help)(void), int *ret_optind);
/* Usage error for a command: message on stderr, returns CTL_EXIT_USAGE. */
int ctl_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* An unexpected extra argument; its text is not printed (it might be a
 * secret typed on the command line by mistake). */
int ctl_extra_argument(const char *cmd);
