/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the usage tap (agent/usage.c) on every family and
 * endpoint, JSON and SSE, hiding and gated, with the body fed whole and
 * again cut at split points derived from the input. Checks, beyond the
 * sanitizers: a tap that neither hides nor gates forwards exactly its
 * input; the split feed forwards the same bytes and counts the same usage
 * as the whole feed (a number or an event split at any byte is counted
 * exactly once); what the tap holds stays bounded by its size limit; and
 * a JSON answer read from its text (usage-answer.c) gives what jansson's
 * reading of the whole document gives, whenever jansson accepts it.
 *
 * Input: [family/endpoint] [flags] [split seed] [gate/limit] body... */

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "usage-internal.h"
#include "usage.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HDR 4

struct run {
        struct kb_buf out;
        struct kb_usage u;      /* copy of the final usage (strings borrowed from the tap) */
        char *model, *id;
        bool stopped, overflowed;
        int rc;
};

struct gate_state {
        uint64_t threshold;
        unsigned calls;
};

static int gate(void *userdata, const struct kb_usage *u) {
        struct gate_state *g = userdata;
        g->calls++;
        /* What the broker's quota gate looks at: reported output, else the
         * streamed deltas. */
        return MAX(u->output_tokens, u->streamed_deltas) > g->threshold;
}

static void run_done(struct run *r) {
        kb_buf_free(&r->out);
        free(r->model);
        free(r->id);
}

/* xorshift: split sizes from the seed, so a crash reproduces from its input. */
static uint32_t next(uint32_t *s) {
        uint32_t x = *s ?: 0x9e3779b9u;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        return *s = x;
}

static void run_tap(const uint8_t *hdr, const char *body, size_t len, bool split, struct run *ret) {
        kb_family family = hdr[0] & 1 ? KB_FAMILY_ANTHROPIC : KB_FAMILY_OPENAI;
        kb_endpoint endpoint = (kb_endpoint) ((hdr[0] >> 1) % _KB_ENDPOINT_MAX);
        bool stream = hdr[1] & 1, hide = hdr[1] & 2, gated = hdr[1] & 4, small = hdr[1] & 8;
        uint32_t seed = hdr[2] | (uint32_t) hdr[1] << 8;
        size_t max_piece = (hdr[1] >> 4) ? (size_t) 1 << (hdr[1] >> 4) : 1; /* 1 .. 32 KiB */
        size_t limit = small ? 16 + (size_t) hdr[3] * 16 : 0;
        struct gate_state g = { .threshold = hdr[3] % 64 };
        struct kb_usage_tap *t = NULL;

        *ret = (struct run) {};
        ret->rc = kb_usage_tap_new(family, endpoint, stream, hide, &t);
        if (ret->rc < 0)
                return;
        if (limit)
                kb_usage_tap_set_limit(t, limit);
        if (gated)
                kb_usage_tap_set_gate(t, gate, &g);

        size_t off = 0;
        while (off < len && ret->rc >= 0) {
                size_t n = split ? 1 + next(&seed) % max_piece : len - off;
                n = MIN(n, len - off);
                ret->rc = kb_usage_tap_feed(t, body + off, n, &ret->out);
                off += n;
                /* An idle tap holds at most its partial event (or body) and
                 * never more than the limit allows. */
                size_t cap = limit ? limit : (size_t) 16 << 20;
                if (kb_usage_tap_memory(t) > 4 * (cap + n) + (256u << 10))
                        abort();
        }
        if (ret->rc >= 0)
                ret->rc = kb_usage_tap_finish(t, &ret->out);
        /* finish is idempotent and feed after it is refused */
        if (ret->rc >= 0) {
                size_t before = ret->out.len;
                if (kb_usage_tap_finish(t, &ret->out) < 0 || ret->out.len != before)
                        abort();
                if (kb_usage_tap_feed(t, "x", 1, &ret->out) != -ESTALE)
                        abort();
        }

        const struct kb_usage *u = kb_usage_tap_get(t);
        ret->u = *u;
        ret->model = u->upstream_model ? strdup(u->upstream_model) : NULL;
        ret->id = u->upstream_request_id ? strdup(u->upstream_request_id) : NULL;
        ret->u.upstream_model = ret->u.upstream_request_id = NULL;
        ret->stopped = kb_usage_tap_stopped(t);
        ret->overflowed = kb_usage_tap_overflowed(t);
        if (!stream && u->stream_done)
                abort();

        kb_usage_tap_free(t);
}

static bool same_usage(const struct run *a, const struct run *b) {
        return a->u.input_tokens == b->u.input_tokens && a->u.output_tokens == b->u.output_tokens &&
               a->u.cached_tokens == b->u.cached_tokens && a->u.cache_write_tokens == b->u.cache_write_tokens &&
               a->u.reasoning_tokens == b->u.reasoning_tokens && a->u.streamed_deltas == b->u.streamed_deltas &&
               a->u.seen == b->u.seen && a->u.stream_done == b->u.stream_done && streq_ptr(a->model, b->model) &&
               streq_ptr(a->id, b->id) && a->stopped == b->stopped && a->overflowed == b->overflowed;
}

static bool same_counts(const struct kb_usage *a, const struct kb_usage *b) {
        return a->input_tokens == b->input_tokens && a->output_tokens == b->output_tokens &&
               a->cached_tokens == b->cached_tokens && a->cache_write_tokens == b->cache_write_tokens &&
               a->reasoning_tokens == b->reasoning_tokens && a->seen == b->seen &&
               streq_ptr(a->upstream_model, b->upstream_model) &&
               streq_ptr(a->upstream_request_id, b->upstream_request_id);
}

static void usage_clear(struct kb_usage *u) {
        free(u->upstream_model);
        free(u->upstream_request_id);
}

/* The text reader against jansson's, on documents jansson takes whole. */
static void check_answer_reader(const uint8_t *hdr, const char *body, size_t len) {
        kb_endpoint endpoint = (kb_endpoint) ((hdr[0] >> 1) % _KB_ENDPOINT_MAX);
        json_t *root = json_loadb(body, len, 0, NULL);
        struct kb_usage a = {}, b = {};

        if (!root)
                return;
        /* The member picker (SSE events) gives jansson's members. */
        static const char *const keys[] = { "type", "usage", "choices", "response", "message", "model", "id" };
        json_t *picked = kb_usage_pick(body, len, keys, ELEMENTSOF(keys));
        if (json_is_object(root) && picked) {
                for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                        json_t *want = json_object_get(root, keys[i]), *got = json_object_get(picked, keys[i]);
                        if ((want == NULL) != (got == NULL) || (want && !json_equal(want, got)))
                                abort();
                }
        } else if (json_is_object(root) && !picked)
                abort(); /* jansson took it: so must the picker (OOM aside, which ASan does not fake) */
        json_decref(picked);
        int ra = kb_usage_from_json(&a, endpoint, root);
        int rb = kb_usage_answer(&b, endpoint, body, len);
        json_decref(root);
        if (ra != -ENOMEM && rb != -ENOMEM && !same_counts(&a, &b))
                abort();
        usage_clear(&a);
        usage_clear(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < HDR)
                return -1;
        const char *body = (const char *) data + HDR;
        size_t len = size - HDR;
        bool stream = data[1] & 1, holds = stream && (data[1] & 6);
        struct run whole, split;

        if (!stream)
                check_answer_reader(data, body, len);
        run_tap(data, body, len, false, &whole);
        run_tap(data, body, len, true, &split);
        if (whole.rc == -ENOMEM || split.rc == -ENOMEM)
                goto out;
        if ((whole.rc < 0) != (split.rc < 0))
                abort();
        if (whole.rc < 0)
                goto out;
        /* Where the reads happened to end must not matter. */
        if (!same_usage(&whole, &split))
                abort();
        if (whole.out.len != split.out.len || memcmp(whole.out.data ?: "", split.out.data ?: "", whole.out.len) != 0)
                abort();
        /* A tap that holds nothing back forwards exactly its input; a gated
         * one that does not hide forwards a prefix of it. */
        if (!holds && (whole.out.len != len || memcmp(whole.out.data ?: "", body, len) != 0))
                abort();
        if (holds && !(data[1] & 2) && (whole.out.len > len || memcmp(whole.out.data ?: "", body, whole.out.len) != 0))
                abort();
        if (!stream && whole.u.streamed_deltas)
                abort();
out:
        run_done(&whole);
        run_done(&split);
        return 0;
}
