/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 12 of 12, base: calls only libraries. */

/* The agent's small JSON state files (shadow budgets, splits, promotions,
 * baselines and their evidence) are written and read the same way, and its
 * admin bodies reject unknown members the same way: one copy of each here.
 * Library-like: never logs. */

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* doc as indented JSON (2 spaces, keys sorted) and a final newline, written
 * with kb_write_file_atomic(path, ..., mode, flags). 0 or -errno. */
int kb_json_write_file(const char *path, const json_t *doc, mode_t mode, unsigned flags);

/* The JSON document in path, a regular file of at most max bytes, opened
 * without following a symlink; duplicate keys are refused. 0 with *ret NULL
 * when path does not exist; -EBADMSG when it is not a regular file, is
 * larger than max or is not JSON; else -errno. */
int kb_json_read_file(const char *path, size_t max, json_t **ret);

/* Whether every member of object o is one of the n names in known. */
bool kb_json_only_members(const json_t *o, const char *const *known, size_t n);
