/* SPDX-License-Identifier: MIT */
/* Answers that are not JSON: audio, video and file contents made of the
 * mock's deterministic bytes, generated block by block so that a large one
 * is never held, with the transport scripts (cut, delay, reset) applied. */

#include "mock.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define MOCK_BLOCK ((size_t) 64 * 1024)

static void fill(char *dst, uint64_t off, size_t n, const uint8_t *head, size_t head_len) {
        for (size_t i = 0; i < n; i++) {
                uint64_t at = off + i;
                dst[i] = (char) (at < head_len ? head[at] : mock_pattern_byte(at - head_len));
        }
}

int mock_send_pattern(struct mock_reply *r, const char *content_type, const void *head, size_t head_len,
                      uint64_t total, size_t chunk) {
        bool close_after = !r->req->keep_alive;
        _cleanup_(kb_buf_free) struct kb_buf out = {};
        int k = mock_append_head(&out, r->anthropic, r->req->n, 200, content_type, chunk ? -1 : (int64_t) total,
                                 close_after, r->retry_after);
        if (k < 0 || (k = mock_send_all(r->fd, out.data, out.len)) < 0)
                return k;

        size_t step = chunk ? MIN(chunk, MOCK_BLOCK) : MOCK_BLOCK;
        _cleanup_free_ char *block = malloc(step + 32);
        if (!block)
                return -ENOMEM;
        /* with content-length: x-mock-cut-after counts bytes, the delay is
         * taken once, at the middle; chunked: both count chunks */
        uint64_t limit = total, pause_at = UINT64_MAX, chunks = 0;
        if (!chunk && r->cut_after >= 0)
                limit = MIN(total, (uint64_t) r->cut_after);
        else if (!chunk && r->event_delay_ms > 0)
                pause_at = total / 2;
        for (uint64_t off = 0; off < limit;) {
                if (chunk && r->cut_after >= 0 && chunks >= (uint64_t) r->cut_after)
                        return mock_end_connection(r);
                if (chunk && chunks > 0 && r->event_delay_ms > 0)
                        mock_sleep_ms(r->event_delay_ms);
                if (off == pause_at && off > 0)
                        mock_sleep_ms(r->event_delay_ms);
                uint64_t m = MIN((uint64_t) step, limit - off);
                if (off < pause_at && off + m > pause_at)
                        m = pause_at - off;
                size_t pre = 0;
                if (chunk)
                        pre = (size_t) snprintf(block, 32, "%zx\r\n", (size_t) m);
                fill(block + pre, off, (size_t) m, head, head_len);
                size_t len = pre + (size_t) m;
                if (chunk) {
                        memcpy(block + len, "\r\n", 2);
                        len += 2;
                }
                if ((k = mock_send_all(r->fd, block, len)) < 0)
                        return k;
                off += m;
                chunks++;
        }
        if (r->cut_after >= 0)
                return mock_end_connection(r);
        if (chunk && (k = mock_send_all(r->fd, "0\r\n\r\n", 5)) < 0)
                return k;
        return close_after ? MOCK_CLOSE : MOCK_KEEP;
}
