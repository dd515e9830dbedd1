/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the app socket end to end. Bytes from a client go
 * through agent/http.c (llhttp, limits, pipelining, keep-alive), api.c
 * (endpoints, identity, team), body.c (inspect and model rewrite), the
 * router, quota, proxy and upstream (curl) to a fake provider that answers
 * with the input's canned bytes (or a realistic answer for the endpoint),
 * and the answer's bytes back through the usage tap to the client.
 *
 * Input: [flags] app bytes [FUZZ_UPSTREAM_MARK canned HTTP response].
 * Checks, beyond the sanitizers: no stall; everything written back parses
 * as HTTP responses; the route's secret never reaches the app. */

#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define SECRET "sk-fuzz-secret"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1 || size > (1u << 20))
                return -1;
        struct fuzz_broker *fb = fuzz_broker_get();
        const uint8_t *app = data + 1;
        size_t app_len = size - 1;
        const char *canned = NULL;
        size_t canned_len = 0;

        const uint8_t *mark = memmem(app, app_len, FUZZ_UPSTREAM_MARK, strlen(FUZZ_UPSTREAM_MARK));
        if (mark) {
                canned = (const char *) mark + strlen(FUZZ_UPSTREAM_MARK);
                canned_len = (size_t) (app + app_len - (const uint8_t *) canned);
                app_len = (size_t) (mark - app);
        }
        fuzz_broker_set_upstream(fb, canned, canned_len);

        struct kb_buf reply = {};
        fuzz_exchange(fb, false, app, app_len, data[0] | (uint32_t) data[0] << 9, &reply, 8u << 20);
        fuzz_broker_set_upstream(fb, NULL, 0);

        /* HEAD answers carry no body but do carry a length: a response
         * parser that did not see the request cannot follow them. */
        if (reply.len < (8u << 20) && !memmem(app, app_len, "HEAD", 4))
                (void) fuzz_check_reply(&reply);
        if (reply.len && memmem(reply.data, reply.len, SECRET, strlen(SECRET)) &&
            !memmem(app, app_len, SECRET, strlen(SECRET)) &&
            !(canned && memmem(canned, canned_len, SECRET, strlen(SECRET)))) {
                fprintf(stderr, "fuzz_http: the route's key reached the app\n");
                abort();
        }
        if (getenv("KB_FUZZ_VERBOSE")) /* what came back, for writing seeds */
                fprintf(stderr, "---- reply (%zu bytes):\n%.*s\n", reply.len, (int) MIN(reply.len, (size_t) 4096),
                        reply.data ?: "");
        kb_buf_free(&reply);
        return 0;
}
