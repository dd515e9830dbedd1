/* SPDX-License-Identifier: MIT */
#pragma once

/* The report's groups, shared by usage-report.c (summing) and usage-print.c
 * (the table, JSON and CSV). Not for other files. */

#include "usage-report.h"

extern const char *const usage_err_names[_USAGE_ERR_MAX];

struct group {
        uint64_t hash;
        char *key;                      /* per --by value: size_t length, bytes */
        size_t key_len;
        const char *val[_USAGE_BY_MAX]; /* into key */
        size_t val_len[_USAGE_BY_MAX];
        struct usage_totals t;
};

struct usage_report {
        usage_by by[_USAGE_BY_MAX];
        size_t n_by;
        struct group **groups;          /* in insertion order, sorted before output */
        size_t n_groups, cap_groups;
        struct group **table;           /* open addressing, power-of-two size */
        size_t table_size;
        bool sorted;
        struct usage_totals total;
};

