/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 12 of 12, base: calls only libraries. */

/* Journal records, never stalling a request: the loop builds a record and
 * sends it itself without blocking while journald keeps up (journal-native.h);
 * whatever journald cannot take at once goes to a writer thread through a
 * bounded queue (and the spool). One function per record kind. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "util.h"

struct kb_journal;
struct kb_record;
struct kb_request;
struct kb_route_event;
struct kb_promote_event;
struct kb_shadow_record;

/* Limits on what one record may hold. */
#define KB_RECORD_MAX_FIELDS 256
#define KB_RECORD_MAX_VALUE (64U * 1024U)
#define KB_RECORD_MAX_FIELD_NAME 64
/* Most records a queue may be asked to hold. */
#define KB_JOURNAL_MAX_QUEUE (1U << 20)

/* Start the writer thread. max_queue: records held at most before submit
 * refuses. */
int kb_journal_new(size_t max_queue, struct kb_journal **ret);
/* Write out what is queued (waiting up to timeout_usec), stop the thread, free. Accepts NULL. */
void kb_journal_free(struct kb_journal *j, uint64_t timeout_usec);

/* Replace what the writer does with a record (default: sd_journal_sendv);
 * for tests. send gets the record's items plus SYSLOG_IDENTIFIER and returns
 * 0 or -errno (a failure is retried a few times, then counted as dropped).
 * It runs on the writer thread. NULL restores the default. */
typedef int (*kb_journal_send_t)(const struct iovec *iov, int n, void *userdata);
void kb_journal_set_sender(struct kb_journal *j, kb_journal_send_t send, void *userdata);
/* While nothing is queued, kb_journal_submit() sends the record itself, in
 * journald's native protocol without blocking, to KB_JOURNAL_SOCKET; what
 * it cannot send at once goes to the writer as above. For tests: send the
 * direct path to path instead (NULL: off); call after set_sender, which
 * turns the direct path off when it installs a sender. */
void kb_journal_set_native_socket(struct kb_journal *j, const char *path);

/* A record under construction: "FIELD=value" items. SYSLOG_IDENTIFIER is
 * added by the writer. Values may hold any bytes but NUL. */
struct kb_record *kb_record_new(void);
void kb_record_free(struct kb_record *r);
/* Field names are [A-Z0-9_], at most KB_RECORD_MAX_FIELD_NAME long, not
 * starting with '_' (journald's trusted fields) or a digit: else -EINVAL.
 * A value longer than KB_RECORD_MAX_VALUE, or a record already holding
 * KB_RECORD_MAX_FIELDS items: -E2BIG. */
int kb_record_add(struct kb_record *r, const char *field, const char *value);
int kb_record_addf(struct kb_record *r, const char *field, const char *fmt, ...) _printf_(3, 4);
/* The same without printf (the request record is built on every call):
 * value of length vlen (no NUL inside: -EINVAL), a value cut at
 * KB_RECORD_MAX_VALUE (NULL: empty), and integers in decimal. */
int kb_record_add_n(struct kb_record *r, const char *field, const char *value, size_t vlen);
int kb_record_add_capped(struct kb_record *r, const char *field, const char *value);
int kb_record_add_u64(struct kb_record *r, const char *field, uint64_t value);
int kb_record_add_i64(struct kb_record *r, const char *field, int64_t value);
/* For tests: how many items, and the i-th as "FIELD=value" (NULL past the end). */
size_t kb_record_n_fields(const struct kb_record *r);
const char *kb_record_item(const struct kb_record *r, size_t i);

/* Hand a record to the writer; takes ownership in every case. -EAGAIN when
 * the queue is full (the record is counted as dropped). */
int kb_journal_submit(struct kb_journal *j, struct kb_record *r);
uint64_t kb_journal_n_dropped(const struct kb_journal *j);
uint64_t kb_journal_n_written(const struct kb_journal *j);
/* Block until every record submitted so far was handed to journald, or,
 * with a spool, is in the spool while journald is away (tests, shutdown). */
void kb_journal_flush(struct kb_journal *j, uint64_t timeout_usec);

/* Keep what journald cannot take in a spool in STATE_DIR/journal-spool
 * (spool.h; created 0700), re-sent in order, before newer records, once
 * journald takes records again; records a previous run spooled go out
 * first. Call once, at start. Without it, a record journald refuses is
 * retried briefly, then dropped. -EBUSY when already set; -errno when the
 * spool cannot be opened (records are then dropped as without one). */
int kb_journal_set_spool_dir(struct kb_journal *j, const char *state_dir);
/* Records written to the spool since start (each is also counted in
 * n_written once re-sent), and records waiting in the spool now. */
uint64_t kb_journal_n_spooled(const struct kb_journal *j);
uint64_t kb_journal_n_spool_pending(struct kb_journal *j);

/* The per-request record (MESSAGE_ID KB_MID_REQUEST) with every field of
 * DESIGN. Nothing (0) when the request's config says [agent] journal = no. */
int kb_journal_request(struct kb_journal *j, const struct kb_request *r);
/* Lifecycle (KB_MID_LIFECYCLE): event is "started" or "stopping"; in_flight counts requests cut or pending. */
int kb_journal_lifecycle(struct kb_journal *j, const char *event, const char *message, uint64_t in_flight);
/* A team hit a limit (KB_MID_QUOTA), once per limit per window: limit is
 * the config key's name; amounts in its unit (requests, tokens, micro-USD). */
int kb_journal_quota(struct kb_journal *j, const char *team, const char *limit, uint64_t used, uint64_t max,
                     uint64_t reset_usec);
/* Quota store (KB_MID_STORE): event "connected", "offline" (with the
 * reason) or "back" (with the brokers seen); url as configured. */
int kb_journal_store(struct kb_journal *j, const char *event, const char *url, const char *reason, uint64_t brokers);
/* The same MESSAGE_ID: "epoch" (the store has a new epoch; this broker's
 * counters of n teams, their month's tokens and micro-USD, pushed into it)
 * or "resent" (n settles the store never acknowledged, sent again from the
 * journal, with their tokens and micro-USD). */
int kb_journal_store_push(struct kb_journal *j, const char *event, const char *url, const char *epoch, uint64_t n,
                          uint64_t tokens, uint64_t cost);
/* Config (KB_MID_CONFIG): event "loaded", "reloaded", "rejected"; path; error may be NULL. */
int kb_journal_config(struct kb_journal *j, const char *event, const char *path, const char *error);
/* Key change (KB_MID_KEY): action "set", "rotated", "rolled_back" or
 * "deleted"; version is the number as text, or "all" for a delete of every
 * version; fingerprint may be NULL (nothing left to fingerprint). */
int kb_journal_key(struct kb_journal *j, const char *action, const char *name, const char *version,
                   const char *fingerprint, uid_t admin_uid);
/* Preflight (KB_MID_PREFLIGHT): one record per check of a route (check:
 * "model", "endpoint", …) and a summary (check "summary": result is the
 * overall one, latency_ms the whole run, evidence the saved file or NULL).
 * result: 1 passed, 0 failed, < 0 skipped (KEYBROKER_CHECK_RESULT says
 * which; KEYBROKER_CHECK_OK only for a check that ran). model and detail
 * may be NULL. */
int kb_journal_preflight(struct kb_journal *j, const char *route, const char *model, const char *check, int result,
                         const char *detail, uint64_t latency_ms, const char *evidence);
/* Route state (KB_MID_ROUTE): a circuit opened, went half-open or closed, a
 * canary was rolled back, a split changed (router.h's event). Fields:
 * KEYBROKER_EVENT, KEYBROKER_ROUTE (not for split_changed), KEYBROKER_MODEL
 * and KEYBROKER_WEIGHTS ("ROUTE=N,...") where relevant, KEYBROKER_REASON,
 * KEYBROKER_ERROR_RATIO and KEYBROKER_REQUESTS (circuit_opened,
 * canary_rolled_back), KEYBROKER_CONSECUTIVE_FAILURES (circuit events),
 * KEYBROKER_ADMIN_UID (a split set by an admin). */
int kb_journal_route(struct kb_journal *j, const struct kb_route_event *ev);
/* Shadow comparison (KB_MID_SHADOW, shadow.h's record): a pair of a live
 * request and its shadow call (event "pair"), a model's shadow that
 * reached its daily cap ("budget_reached") or found the broker's shadow
 * calls at their cap ("skipped_busy"). Never a key nor any text of the
 * request or the answers. */
int kb_journal_shadow(struct kb_journal *j, const struct kb_shadow_record *s);
/* Staged promotion (KB_MID_PROMOTE, promote.h's event): started,
 * step_reached, gate (a step's gates passed or one failed), rolled_back,
 * completed, aborted; with the step, the step's figures, the baseline
 * comparison and the split before and after. */
int kb_journal_promotion(struct kb_journal *j, const struct kb_promote_event *ev);
