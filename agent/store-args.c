/* SPDX-License-Identifier: MIT */
/* A quota store script's arguments: see store-args.h. */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store-args.h"
#include "util.h"

void kb_args_init(struct kb_args *a) {
        a->n = 0;
        a->full = false;
        a->cap = KB_ARGS_SMALL;
        a->v = a->small_v;
        a->num = a->small_num;
}

void kb_args_done(struct kb_args *a) {
        if (a->v != a->small_v) {
                free(a->v);
                free(a->num);
        }
        kb_args_init(a);
}

static bool room(struct kb_args *a) {
        if (a->full)
                return false;
        if (a->n < a->cap)
                return true;
        int cap = a->cap * 2;
        const char **v = malloc((size_t) cap * sizeof(*v));
        char (*num)[KB_ARGS_NUM] = malloc((size_t) cap * KB_ARGS_NUM);
        if (!v || !num) {
                free(v);
                free(num);
                a->full = true;
                return false;
        }
        memcpy(v, a->v, (size_t) a->n * sizeof(*v));
        memcpy(num, a->num, (size_t) a->n * KB_ARGS_NUM);
        if (a->v != a->small_v) {
                free(a->v);
                free(a->num);
        }
        a->v = v;
        a->num = num;
        a->cap = cap;
        return true;
}

void kb_arg_str(struct kb_args *a, const char *s) {
        if (room(a))
                a->v[a->n++] = s;
}

void kb_arg_u64(struct kb_args *a, uint64_t v) {
        if (!room(a))
                return;
        a->v[a->n] = NULL;
        kb_arg_set_u64(a, a->n++, v);
}

void kb_arg_set_u64(struct kb_args *a, int i, uint64_t v) {
        if (i >= 0 && i < a->n && !a->v[i])
                snprintf(a->num[i], KB_ARGS_NUM, "%" PRIu64, MIN(v, (uint64_t) 1 << 53));
}

const char *const *kb_args_argv(struct kb_args *a) {
        for (int i = 0; i < a->n; i++)
                if (!a->v[i])
                        a->v[i] = a->num[i];
        return a->v;
}
