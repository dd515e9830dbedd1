/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the INI config parser and validator
 * (kb_config_load_string), and what consumes a config that loaded: the
 * quota and router configuration and the HTTP limits. */

#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "broker.h"
#include "config.h"
#include "quota.h"
#include "router.h"

/* A config bigger than this is not a config (inih has no limit of its own). */
#define FUZZ_CONFIG_MAX (256u * 1024u)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size > FUZZ_CONFIG_MAX)
                return -1;
        _cleanup_free_ char *text = malloc(size + 1);
        if (!text)
                return 0;
        memcpy(text, data, size);
        text[size] = 0;

        struct kb_config *c = NULL;
        _cleanup_free_ char *error = NULL;
        int r = kb_config_load_string("fuzz.conf", text, false, &c, &error);
        if (r < 0) {
                /* Every rejection says where and why. */
                if (r != -ENOMEM && (!error || !*error))
                        abort();
                if (c)
                        abort();    /* ret_* untouched on failure */
                return 0;
        }
        if (!c)
                abort();

        struct kb_quota *q = NULL;
        if (kb_quota_new(&q) >= 0) {
                (void) kb_quota_configure(q, c);
                kb_quota_free(q);
        }
        struct kb_router *rt = NULL;
        if (kb_router_new(&rt) >= 0) {
                (void) kb_router_configure(rt, c, 1000000);
                /* A reload onto the same config keeps the router consistent. */
                (void) kb_router_configure(rt, c, 2000000);
                kb_router_free(rt);
        }
        (void) kb_api_limits(c);
        for (size_t i = 0; i < c->n_models; i++)
                if (kb_config_find_model(c, c->models[i].name) != &c->models[i])
                        abort();
        kb_config_unref(c);
        return 0;
}
