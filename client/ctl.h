/* SPDX-License-Identifier: MIT */
#pragma once

/* keybrokerctl's modules. This is a command-line tool, so unlike the agent's
 * library-like modules these print their own messages to stderr, once, and
 * commands return an exit status: 0 ok, 1 error, 2 usage. */

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

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

/* ctl-preflight.c: route check NAME [--model M] (argv[0] is "check") */
int ctl_cmd_route_check(const struct ctl *ctl, int argc, char **argv);

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
