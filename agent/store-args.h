/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 6 of 12, policy at work: calls no other layer. */

/* The arguments of one quota store script call: strings borrowed from the
 * caller, numbers written here. The first KB_ARGS_SMALL live in the struct
 * (a reserve or a settle needs fewer), more on the heap (a hello carries
 * every team's minute buckets). Library-like: no I/O, never logs. */

#include <stdbool.h>
#include <stdint.h>

#define KB_ARGS_SMALL 24
#define KB_ARGS_NUM 24 /* room for a uint64_t in decimal */

struct kb_args {
        int n, cap;
        bool full;                      /* out of memory: do not send */
        const char **v;                 /* NULL for a number, until kb_args_argv() */
        char (*num)[KB_ARGS_NUM];
        const char *small_v[KB_ARGS_SMALL];
        char small_num[KB_ARGS_SMALL][KB_ARGS_NUM];
};

void kb_args_init(struct kb_args *a);
void kb_args_done(struct kb_args *a);
/* s must live until the call is sent. */
void kb_arg_str(struct kb_args *a, const char *s);
/* Numbers above 2^53 (what a Lua number holds exactly) are sent as 2^53. */
void kb_arg_u64(struct kb_args *a, uint64_t v);
/* Overwrite number i (a count known only at the end). */
void kb_arg_set_u64(struct kb_args *a, int i, uint64_t v);
/* The argv to send; no argument may be added afterwards. */
const char *const *kb_args_argv(struct kb_args *a);
