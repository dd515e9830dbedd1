/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 9 of 12, bodies and usage: calls layer 12. */

/* A batch input file read as it is uploaded (JSONL, one request per line):
 * how many lines and bytes, and which models its requests ask for, so that a
 * batch made from it can be checked against the team's models and limits. A
 * file whose lines are not all JSON objects (or longer than 1 MiB) is
 * "unreadable": nothing is claimed about it. Library-like: never logs. */

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

#define KB_BATCH_FILE_MODELS 16
#define KB_BATCH_FILE_LINE_MAX (1024u * 1024u)

struct kb_batch_file {
        bool unreadable;
        uint64_t lines;
        uint64_t bytes;
        char *models[KB_BATCH_FILE_MODELS];
        size_t n_models;
        struct kb_buf line;
};

void kb_batch_file_feed(struct kb_batch_file *f, const char *buf, size_t len);
void kb_batch_file_end(struct kb_batch_file *f);
void kb_batch_file_done(struct kb_batch_file *f);
/* The models, comma-separated (malloc'd), when the file was readable, had
 * lines and asked for at most KB_BATCH_FILE_MODELS models; else NULL. */
char *kb_batch_file_models(const struct kb_batch_file *f);
