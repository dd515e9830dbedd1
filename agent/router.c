/* SPDX-License-Identifier: MIT */
#include <errno.h>

#include "router.h"

int kb_router_pick(const struct kb_model *m, kb_family family, uint32_t rnd, const struct kb_target **ret) {
        uint64_t total = 0;

        for (size_t i = 0; i < m->n_targets; i++)
                if (m->targets[i].route->family == family)
                        total += m->targets[i].weight;
        if (total == 0)
                return -ENOENT;

        /* Multiply-shift maps rnd onto [0,total) without modulo bias worth
         * caring about at these weights (≤ 1e6 each). */
        uint64_t point = ((uint64_t) rnd * total) >> 32;
        for (size_t i = 0; i < m->n_targets; i++) {
                const struct kb_target *t = &m->targets[i];
                if (t->route->family != family || t->weight == 0)
                        continue;
                if (point < t->weight) {
                        *ret = t;
                        return 0;
                }
                point -= t->weight;
        }
        return -ENOENT; /* not reached */
}
