/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 12 of 12, base: calls only libraries. */

/* The journal spool: records journald could not take (it was away, it
 * refused them, or the writer fell behind), kept on disk in order until they
 * can be re-sent. Used by the journal writer thread only (not thread-safe);
 * library-like: never logs.
 *
 * Layout, in one directory (state_dir/journal-spool, mode 0700):
 *
 *   NNNNNNNNNNNNNNNN.seg  segments (16 lowercase hex digits, ascending); each
 *                         starts with the 8 bytes "KBSPOOL1", then records:
 *                           u32 magic "KBR1" (little endian 0x3152424b)
 *                           u32 payload length
 *                           u64 FNV-1a 64 of the payload
 *                           payload: u32 item count, then per item u32
 *                           length + the bytes ("FIELD=value")
 *                         A segment is closed for appends once it holds
 *                         KB_SPOOL_SEGMENT_BYTES (a bigger record gets a
 *                         segment of its own).
 *   head                  "SEGMENT OFFSET\n" (16 hex digits each): where the
 *                         oldest unsent record starts. Rewritten after every
 *                         successful send; fsync'd every KB_SPOOL_HEAD_SYNC
 *                         sends and when the spool empties.
 *
 * Appends are written with one write() each and made durable in batches by
 * kb_spool_sync(). Opening scans every segment: a record that is cut short
 * or fails its checksum (a crash in the middle of an append) ends its
 * segment, which is truncated there; it is counted in n_discarded.
 * Exactly once: a record is dropped from the spool only after it was sent
 * (kb_spool_pop after a successful send); after a crash of the daemon, up to
 * KB_SPOOL_HEAD_SYNC records sent just before it may be sent again (never
 * lost). */

#include <stdint.h>
#include <sys/uio.h>

#include "journal.h"

#define KB_SPOOL_MAX_BYTES (UINT64_C(64) << 20)  /* default bound: bytes on disk */
#define KB_SPOOL_MAX_RECORDS UINT64_C(1000000)   /* default bound: records pending */
#define KB_SPOOL_SEGMENT_BYTES (UINT64_C(4) << 20)
#define KB_SPOOL_HEAD_SYNC 64
#define KB_SPOOL_RECORD_HEADER 16
/* Items a spooled record may hold: a journal record's, plus what the
 * writer adds when spooling it. */
#define KB_SPOOL_MAX_ITEMS (KB_RECORD_MAX_FIELDS + 4)
/* Largest payload such a record can make (kb_record's limits). */
#define KB_SPOOL_PAYLOAD_MAX \
        (4 + (uint64_t) KB_SPOOL_MAX_ITEMS * (4 + KB_RECORD_MAX_FIELD_NAME + 1 + KB_RECORD_MAX_VALUE))

struct kb_spool;

/* A record read back: n items pointing into buf. */
struct kb_spool_entry {
        struct iovec *iov;
        size_t n;
        char *buf;
};

/* Open (creating the directory, mode 0700, if needed) the spool in dir,
 * with the bounds given (0: the defaults above). Recovers what a previous
 * run left. -errno on I/O errors. */
int kb_spool_open(const char *dir, uint64_t max_bytes, uint64_t max_records, struct kb_spool **ret);
/* Sync and close. Accepts NULL; returns NULL. */
struct kb_spool *kb_spool_free(struct kb_spool *s);

/* Append one record (n items, each "FIELD=value"). -ENOSPC when the bounds
 * would be crossed (nothing written), -E2BIG for a record larger than
 * KB_SPOOL_PAYLOAD_MAX or with more than KB_SPOOL_MAX_ITEMS items, -EINVAL
 * for no items, other -errno from I/O (nothing kept). */
int kb_spool_append(struct kb_spool *s, const struct iovec *items, size_t n);
/* Make every append so far durable (fdatasync, and the directory when a
 * segment was created). */
int kb_spool_sync(struct kb_spool *s);

/* The oldest pending record into *ret (free with kb_spool_entry_clear):
 * 1 when there is one, 0 when the spool is empty; -EBADMSG when the record
 * on disk no longer checks out (pop it to skip it), other -errno. */
int kb_spool_peek(struct kb_spool *s, struct kb_spool_entry *ret);
/* Forget the oldest pending record (it was sent): advances the head, and
 * removes segments that were sent in full. -ENODATA when empty. */
int kb_spool_pop(struct kb_spool *s);
void kb_spool_entry_clear(struct kb_spool_entry *e);

uint64_t kb_spool_n_pending(const struct kb_spool *s);
uint64_t kb_spool_n_bytes(const struct kb_spool *s);
/* Records (or torn tails) found damaged when opening, and cut off. */
uint64_t kb_spool_n_discarded(const struct kb_spool *s);
