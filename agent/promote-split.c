/* SPDX-License-Identifier: MIT */
/* The weights of a promotion's steps: the model's targets by the names
 * kb_router_set_split() takes, the split of a step computed from the split
 * from before, and that split put back. */
#include <errno.h>

#include "promote-internal.h"
#include "util.h"

/* router-internal.h's bound on one weight. */
#define WEIGHT_MAX 1000000U

static bool route_twice(const struct kb_model *m, const struct kb_target *t) {
        for (size_t k = 0; k < m->n_targets; k++)
                if (&m->targets[k] != t && m->targets[k].route == t->route)
                        return true;
        return false;
}

/* The name kb_router_set_split() takes for t. malloc'd. */
char *promote_target_name(const struct kb_model *m, const struct kb_target *t) {
        char *s;
        bool twice = route_twice(m, t);
        if (asprintf(&s, "%s%s%s", t->route->name, twice ? "/" : "", twice ? t->upstream_model : "") < 0)
                return NULL;
        return s;
}

/* "ROUTE" or "ROUTE/UPSTREAM_MODEL" to a target of m; NULL when none or
 * ambiguous. */
const struct kb_target *promote_resolve(const struct kb_model *m, const char *name, bool *ret_ambiguous) {
        const char *slash = strchr(name, '/');
        size_t rl = slash ? (size_t) (slash - name) : strlen(name);
        const struct kb_target *found = NULL;

        if (ret_ambiguous)
                *ret_ambiguous = false;
        for (size_t i = 0; i < m->n_targets; i++) {
                const struct kb_target *t = &m->targets[i];
                if (strlen(t->route->name) != rl || strncmp(t->route->name, name, rl) != 0)
                        continue;
                if (slash && !streq(t->upstream_model, slash + 1))
                        continue;
                if (found) {
                        if (ret_ambiguous)
                                *ret_ambiguous = true;
                        return NULL;
                }
                found = t;
        }
        return found;
}

const struct kb_target *promote_candidate_of(const struct kb_model *m, const struct promotion *e) {
        for (size_t i = 0; m && i < m->n_targets; i++)
                if (streq(m->targets[i].route->name, e->route) && streq(m->targets[i].upstream_model, e->upstream))
                        return &m->targets[i];
        return NULL;
}

static uint64_t gcd64(uint64_t a, uint64_t b) {
        while (b) {
                uint64_t t = a % b;
                a = b;
                b = t;
        }
        return a;
}

/* The split of step e->step into ret (room for m->n_targets): the
 * candidate S% of its family's weight from before, the others of that
 * family (100 - S)% in their proportions from before; other families are
 * left alone. Small integers where they are exact (a 100/0 split becomes
 * S/100-S). -EDOM when no other target of the family had a weight. */
static int step_split(const struct promotion *e, const struct kb_model *m, const struct kb_target *cand,
                      struct kb_split_entry *ret, size_t *ret_n) {
        uint64_t own[KB_SPLIT_MAX_ENTRIES] = {}, total = 0, g = 0;
        const struct kb_target *ts[KB_SPLIT_MAX_ENTRIES];
        size_t n = 0;
        unsigned s = e->steps[e->step];

        for (size_t i = 0; i < e->n_before && n < KB_SPLIT_MAX_ENTRIES - 1; i++) {
                const struct kb_target *t = promote_resolve(m, e->before[i].name, NULL);
                if (!t || t == cand || t->route->family != e->family)
                        continue;
                ts[n] = t;
                own[n] = e->before[i].weight;
                total += own[n];
                g = gcd64(g, own[n]);
                n++;
        }
        if (total == 0)
                return -EDOM;
        g = gcd64(g, total);
        bool exact = 100 * (total / g) <= WEIGHT_MAX;
        for (size_t i = 0; i < n; i++) {
                ret[i].name = ts[i]->route->name;
                ret[i].weight = exact ? (100 - s) * (own[i] / g) : (100 - s) * 10000 * own[i] / total;
        }
        ret[n].name = cand->route->name;
        ret[n].weight = exact ? s * (total / g) : s * 10000U;
        *ret_n = n + 1;
        return 0;
}

/* set_split() takes "ROUTE/UPSTREAM_MODEL" for a route that is a target twice. */
static int apply_entries(struct kb_promoter *p, const struct kb_model *m, struct kb_split_entry *e, size_t n,
                         int64_t admin_uid, const char **ret_why) {
        char *names[KB_SPLIT_MAX_ENTRIES] = {};
        int r = 0;

        for (size_t i = 0; i < n; i++) {
                const struct kb_target *t = promote_resolve(m, e[i].name, NULL);
                if (!t)
                        continue;
                if (!(names[i] = promote_target_name(m, t))) {
                        r = -ENOMEM;
                        break;
                }
                e[i].name = names[i];
        }
        if (r == 0)
                r = kb_router_set_split(p->router, m, e, n, admin_uid, ret_why);
        for (size_t i = 0; i < n; i++)
                free(names[i]);
        return r;
}

int promote_apply_step(struct kb_promoter *p, const struct promotion *e, const struct kb_model *m, int64_t admin_uid,
                      const char **ret_why) {
        struct kb_split_entry sp[KB_SPLIT_MAX_ENTRIES];
        size_t n;
        const struct kb_target *cand = promote_candidate_of(m, e);

        if (!cand)
                return -ESRCH;
        int r = step_split(e, m, cand, sp, &n);
        if (r < 0) {
                if (ret_why)
                        *ret_why = "no other target of the candidate's family has a weight";
                return r;
        }
        return apply_entries(p, m, sp, n, admin_uid, ret_why);
}

/* Put the split from before back, as far as its targets are still there. */
void promote_restore(struct kb_promoter *p, const struct promotion *e, const struct kb_model *m, int64_t admin_uid) {
        struct kb_split_entry sp[KB_SPLIT_MAX_ENTRIES];
        size_t n = 0;

        if (!m)
                return;
        for (size_t i = 0; i < e->n_before && n < KB_SPLIT_MAX_ENTRIES; i++)
                if (promote_resolve(m, e->before[i].name, NULL))
                        sp[n++] = e->before[i];
        if (n > 0)
                (void) apply_entries(p, m, sp, n, admin_uid, NULL);
}
