/* SPDX-License-Identifier: MIT */
/* What a call costs and counts: the route's price for a model, the cost in
 * integer micro-USD over every billing unit, the tokens a quota counts. */

#include "usage.h"

static uint64_t add_sat(uint64_t a, uint64_t b);

const struct kb_price *kb_price_find(const struct kb_route *route, const char *upstream_model,
                                     const char *reported_model) {
        if (!route)
                return NULL;
        for (size_t pass = 0; pass < 2; pass++) {
                const char *m = pass == 0 ? upstream_model : reported_model;
                if (!m)
                        continue;
                for (size_t i = 0; i < route->n_prices; i++)
                        if (streq(route->prices[i].model, m))
                                return &route->prices[i];
        }
        return NULL;
}

/* a * b without overflow surprises: token counts and prices are bounded by
 * what jansson and the config parser accept, so 128-bit is plenty. */
typedef unsigned __int128 u128;


int64_t kb_usage_cost_microusd(const struct kb_usage *u, kb_family family, const struct kb_price *p) {
        if (!p)
                return 0;

        uint64_t input_price = p->input >= 0 ? (uint64_t) p->input : 0;
        uint64_t output_price = p->output >= 0 ? (uint64_t) p->output : 0;
        if (u->batch && p->batch_input >= 0)
                input_price = (uint64_t) p->batch_input;
        if (u->batch && p->batch_output >= 0)
                output_price = (uint64_t) p->batch_output;
        uint64_t cached_price = p->cached_input >= 0 ? (uint64_t) p->cached_input : input_price;
        uint64_t write_price = p->cache_write >= 0 ? (uint64_t) p->cache_write : input_price;
        uint64_t write_1h_price = p->cache_write_1h >= 0 ? (uint64_t) p->cache_write_1h : write_price;

        uint64_t cached = u->cached_tokens;
        uint64_t uncached = u->input_tokens;
        /* OpenAI's prompt count includes what was read from and written to
         * the cache; Anthropic's input_tokens is the rest alone. */
        if (family == KB_FAMILY_OPENAI)
                uncached = uncached > add_sat(cached, u->cache_write_tokens) ?
                                   uncached - cached - u->cache_write_tokens : 0;
        /* Anthropic's 1-hour cache writes are a part of cache_creation, dearer */
        uint64_t write_1h = MIN(u->cache_write_1h_tokens, u->cache_write_tokens);

        u128 sum = (u128) uncached * input_price + (u128) cached * cached_price +
                   (u128) (u->cache_write_tokens - write_1h) * write_price + (u128) write_1h * write_1h_price +
                   (u128) u->output_tokens * output_price;
        /* The other units, on the same scale (micro-USD times 1M): per image,
         * per second of audio (from milliseconds) and video, per 1M characters. */
        if (p->image > 0)
                sum += (u128) u->images * (uint64_t) p->image * 1000000;
        if (p->second > 0)
                sum += (u128) u->audio_msec * (uint64_t) p->second * 1000;
        if (p->video_second > 0)
                sum += (u128) u->video_seconds * (uint64_t) p->video_second * 1000000;
        if (p->character > 0)
                sum += (u128) u->characters * (uint64_t) p->character;
        u128 cost = (sum + 500000) / 1000000;
        if (p->request > 0)
                cost += (uint64_t) p->request;
        return cost > INT64_MAX ? INT64_MAX : (int64_t) cost;
}

static uint64_t add_sat(uint64_t a, uint64_t b) {
        return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

uint64_t kb_usage_quota_tokens(const struct kb_usage *u, kb_family family) {
        uint64_t t;

        if (!u)
                return 0;
        t = add_sat(u->input_tokens, u->output_tokens);
        if (family == KB_FAMILY_ANTHROPIC)
                t = add_sat(t, add_sat(u->cached_tokens, u->cache_write_tokens));
        return t;
}
