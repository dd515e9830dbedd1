/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the admin API. The request line's method and target go
 * straight to kb_admin_parse_target(), the body to the PUT secret check
 * and the name validators; then the whole input is sent to the admin
 * socket of the in-process broker (peer allowed), which serves it for real:
 * key set/rotate/rollback/delete on a sealed store, model splits (the JSON
 * body parser of admin-routes.c), route checks against the fake provider,
 * reload, listings. What a request changed is undone afterwards.
 *
 * Input: [flags] raw HTTP request bytes. */

#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "harness.h"
#include "keystore.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void direct(const char *text, size_t len) {
        /* "METHOD SP TARGET SP ..." of the first line */
        const char *eol = memchr(text, '\n', len);
        size_t line_len = eol ? (size_t) (eol - text) : len;
        _cleanup_free_ char *line = strndup(text, line_len);
        if (!line)
                return;
        char *sp = strchr(line, ' ');
        if (sp) {
                *sp = 0;
                char *url = sp + 1, *end = strchr(url, ' ');
                if (end)
                        *end = 0;
                struct kb_admin_target t;
                memset(&t, 0xa5, sizeof(t));
                int r = kb_admin_parse_target(line, url, &t);
                if (r >= 0) {
                        switch (t.endpoint) {
                        case KB_ADMIN_KEY_SET:
                        case KB_ADMIN_KEY_ROLLBACK:
                        case KB_ADMIN_KEY_DELETE:
                                if (!kb_admin_key_name_valid(t.name, strnlen(t.name, sizeof(t.name))))
                                        abort();
                                break;
                        case KB_ADMIN_MODEL_SPLIT:
                                if (!kb_admin_model_name_valid(t.model, strnlen(t.model, sizeof(t.model))))
                                        abort();
                                break;
                        case KB_ADMIN_NONE:
                                abort();
                        default:
                                break;
                        }
                } else if (r != -ENOENT && r != -EPERM && r != -EBADMSG && r != -ERANGE && r != -EINVAL)
                        abort();
        }

        /* The body as a PUT secret: what passes has no control bytes. */
        const char *body = memmem(text, len, "\r\n\r\n", 4);
        body = body ? body + 4 : text;
        size_t blen = (size_t) (text + len - body), slen = 0;
        const char *why = NULL;
        if (kb_admin_secret_from_body(body, blen, &slen, &why) >= 0) {
                if (slen == 0 || slen > KB_KEY_MAX_BYTES || slen > blen)
                        abort();
                for (size_t i = 0; i < slen; i++)
                        if ((unsigned char) body[i] < 0x20 || body[i] == 0x7f)
                                abort();
        } else if (!why)
                abort();
        (void) kb_admin_key_name_valid(body, MIN(blen, (size_t) 200));
        (void) kb_admin_model_name_valid(body, MIN(blen, (size_t) 300));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1 || size > (1u << 20))
                return -1;
        direct((const char *) data + 1, size - 1);

        struct fuzz_broker *fb = fuzz_broker_get();
        struct kb_buf reply = {};
        fuzz_exchange(fb, true, data + 1, size - 1, data[0] | (uint32_t) data[0] << 9, &reply, 8u << 20);
        if (reply.len < (8u << 20) && !memmem(data + 1, size - 1, "HEAD", 4))
                (void) fuzz_check_reply(&reply);
        /* (an input that names it may see it echoed, in a 404 say) */
        if (reply.len && memmem(reply.data, reply.len, "sk-fuzz-secret", 14) && !memmem(data, size, "sk-fuzz-secret", 14)) {
                fprintf(stderr, "fuzz_admin: a secret reached the admin client\n");
                abort();
        }
        if (getenv("KB_FUZZ_VERBOSE")) /* what came back, for writing seeds */
                fprintf(stderr, "---- reply (%zu bytes):\n%.*s\n", reply.len, (int) MIN(reply.len, (size_t) 4096),
                        reply.data ?: "");
        kb_buf_free(&reply);
        fuzz_broker_reset(fb);
        return 0;
}
