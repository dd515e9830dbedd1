/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 5 of 12, the call: calls layers 6-12. */

/* The background retrieve of open batches (batch-poll.c): every
 * [agent] batch_poll, so that a batch's usage is journaled and settled even
 * when no app asks for it again. */

struct kb_broker;
struct kb_batch_poll;

int kb_batch_poll_new(struct kb_broker *b, struct kb_batch_poll **ret);
/* After a reload: the interval may have changed. */
void kb_batch_poll_reconfigure(struct kb_batch_poll *bp);
struct kb_batch_poll *kb_batch_poll_free(struct kb_batch_poll *bp);
