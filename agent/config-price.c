/* SPDX-License-Identifier: MIT */
/* Money in the config: USD amounts read exactly as micro-USD, and a
 * route's price lines (the token prices and the other billing units). */

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "config-internal.h"

/* Exact decimal to millionths: money must not drift through floating point. */
int kb_cfg_parse_micro(const char *s, int64_t *ret) {
        const char *dot = strchr(s, '.');
        size_t il = dot ? (size_t) (dot - s) : strlen(s);
        if (il == 0)
                return -EINVAL;
        int64_t v = 0;
        for (size_t i = 0; i < il; i++) {
                if (!isdigit((unsigned char) s[i]))
                        return -EINVAL;
                if (v > (INT64_MAX / 1000000 - 9) / 10)
                        return -ERANGE;
                v = v * 10 + (s[i] - '0');
        }
        v *= 1000000;
        if (dot) {
                size_t fl = strlen(dot + 1);
                if (fl == 0)
                        return -EINVAL;
                if (fl > 6)
                        return -EDOM;
                int64_t scale = 100000;
                for (size_t i = 1; i <= fl; i++, scale /= 10) {
                        if (!isdigit((unsigned char) dot[i]))
                                return -EINVAL;
                        v += (dot[i] - '0') * scale;
                }
        }
        *ret = v;
        return 0;
}

int kb_cfg_micro_fail(struct parser *p, const char *key, const char *v, int r) {
        if (r == -EDOM)
                return bad_value(p, key, "'%s' has more than 6 decimals", v);
        return bad_value(p, key, "'%s' is not a USD amount like 0.15", v);
}

int kb_cfg_p_price(struct parser *p, const struct key_def *k, void *base, const char *v) {
        static const char *const fields[] = { "input", "output", "cached_input", "cache_write", "request",
                                              "cache_write_1h", "image", "second", "video_second", "character",
                                              "batch_input", "batch_output" };
        struct kb_route *rt = base;
        _cleanup_free_ char *buf = strdup(v);
        char *words[1 + ELEMENTSOF(fields) + 1];
        if (!buf)
                return kb_cfg_oom(p);
        size_t n = kb_cfg_split_words(buf, words, ELEMENTSOF(words));
        if (n < 2 || n > ELEMENTSOF(words) || strchr(words[0], '='))
                return bad_value(p, k->name, "expected 'MODEL input=USD output=USD ...' or 'MODEL request=USD'");
        if (!kb_cfg_valid_model_name(words[0]))
                return bad_value(p, k->name, "'%s' is not a model name", words[0]);
        for (size_t i = 0; i < rt->n_prices; i++)
                if (streq(rt->prices[i].model, words[0]))
                        return bad_value(p, k->name, "price for '%s' given twice, first on line %u", words[0],
                                         rt->prices[i].line);
        int64_t vals[ELEMENTSOF(fields)];
        for (size_t i = 0; i < ELEMENTSOF(vals); i++)
                vals[i] = -1;
        for (size_t i = 1; i < n; i++) {
                char *eq = strchr(words[i], '=');
                size_t f;
                if (eq)
                        *eq = 0;
                for (f = 0; f < ELEMENTSOF(fields); f++)
                        if (streq(words[i], fields[f]))
                                break;
                if (!eq || f == ELEMENTSOF(fields))
                        return bad_value(p, k->name, "unknown price field '%s'", words[i]);
                if (vals[f] >= 0)
                        return bad_value(p, k->name, "'%s' given twice", fields[f]);
                int r = kb_cfg_parse_micro(eq + 1, &vals[f]);
                if (r < 0)
                        return kb_cfg_micro_fail(p, k->name, eq + 1, r);
        }
        char *model = strdup(words[0]);
        struct kb_price *pr = model ? ARRAY_ADD(rt->prices, rt->n_prices) : NULL;
        if (!pr) {
                free(model);
                return kb_cfg_oom(p);
        }
        *pr = (struct kb_price) {
                .model = model, .input = vals[0], .output = vals[1], .cached_input = vals[2],
                .cache_write = vals[3], .request = vals[4], .cache_write_1h = vals[5], .image = vals[6],
                .second = vals[7], .video_second = vals[8], .character = vals[9], .batch_input = vals[10],
                .batch_output = vals[11], .line = p->line,
        };
        return 0;
}
