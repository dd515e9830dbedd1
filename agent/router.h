/* SPDX-License-Identifier: MIT */
#pragma once

/* Model name -> target: weighted choice among the model's targets of the
 * request's family. Fallback chains and circuit breakers build on this. */

#include "config.h"

/* Pick a target of the given family by weight (targets with weight 0 are
 * never picked by weight). rnd is a uniform random 32-bit value (passed in so
 * tests can be exact). -ENOENT when the model has no target of that family
 * (with a non-zero weight). */
int kb_router_pick(const struct kb_model *m, kb_family family, uint32_t rnd, const struct kb_target **ret);
