/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 6 of 12, policy at work: calls layers 8, 9, 12. */

/* Quota counters that survive restarts and kill -9: a periodic atomic
 * snapshot of the counters in state_dir/quota.json, and at start the replay
 * of this broker's own request records that the journal holds beyond it.
 *
 * The link between the two is the settle sequence (broker->seq, journaled as
 * KEYBROKER_SEQ): a snapshot stores the sequence S it covers, and holds
 * exactly the usage of the requests settled with seq <= S. Because a request
 * is settled and its record queued in the same loop callback, and a snapshot
 * is only written after the journal writer has handed every queued record to
 * journald, every request counted by a snapshot has its record in the
 * journal (except records the writer dropped, which it counts and the
 * daemon warns about: their usage stays counted, spend is never
 * under-counted). Replay counts the records with KEYBROKER_SEQ > S, so
 * nothing is counted twice and nothing journaled is lost.
 *
 * The pure parts (cursor, record parsing, replay, snapshot round) are
 * library-like and never log; kb_quota_recover() and the saver are the
 * daemon's glue and log to stderr. */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>
#include <systemd/sd-id128.h>
#include <systemd/sd-journal.h>

#include "config.h"
#include "journal.h"
#include "quota.h"

#define KB_QUOTA_SNAPSHOT_NAME "quota.json"                     /* in state_dir */
#define KB_QUOTA_SNAPSHOT_INTERVAL_USEC (5 * USEC_PER_SEC)
/* A busy broker snapshots sooner: once this many calls settled since the
 * last one (checked every KB_QUOTA_SNAPSHOT_CHECK_USEC). A restart then
 * replays at most about this many records plus a second's worth, a few
 * hundred ms, whatever the traffic. */
#define KB_QUOTA_SNAPSHOT_SETTLES 8192u
#define KB_QUOTA_SNAPSHOT_CHECK_USEC (1 * USEC_PER_SEC)
/* How long a periodic snapshot may block the loop waiting for the journal
 * writer to catch up; a round that would need longer is skipped. */
#define KB_QUOTA_SNAPSHOT_FLUSH_USEC (100 * USEC_PER_MSEC)
/* The same at clean stop, after the drain. */
#define KB_QUOTA_FINAL_FLUSH_USEC (5 * USEC_PER_SEC)
/* Replay after a snapshot starts this long before the snapshot's realtime,
 * so that a clock stepped back by less does not hide records. */
#define KB_QUOTA_REPLAY_MARGIN_USEC (10 * 60 * USEC_PER_SEC)
/* Longest team name a record may carry (the config's name limit). */
#define KB_REPLAY_TEAM_MAX 128U

/* A journald cursor kept in a snapshot's mark ("s=…;i=…;…", ~130 bytes). */
#define KB_QUOTA_JOURNAL_CURSOR_MAX 512U

/* What a snapshot's cursor says: "seq=S boot=B mono=M realtime=R
 * journal=CURSOR" (journal= optional). */
struct kb_quota_mark {
        uint64_t seq;           /* every request settled with seq <= this is counted */
        /* When the snapshot was taken (every record with a larger seq reached
         * journald later): boot, CLOCK_MONOTONIC and CLOCK_REALTIME µs.
         * has_time false for a cursor holding only seq. */
        bool has_time;
        sd_id128_t boot_id;
        uint64_t mono_usec;
        uint64_t realtime_usec;
        /* journald's newest entry when the snapshot was taken (after the
         * flush, with the loop still blocked): every record with a larger
         * seq comes after it, so replay starts there and reads only what
         * came since. "" when the journal could not be read. */
        char journal_cursor[KB_QUOTA_JOURNAL_CURSOR_MAX + 1];
};

/* Returns the length written, or -ENOBUFS when size is too small (buf is
 * then unspecified). 128 bytes suffice without a journal cursor, 128 +
 * KB_QUOTA_JOURNAL_CURSOR_MAX with one. */
int kb_quota_mark_format(const struct kb_quota_mark *m, char *buf, size_t size);
/* Parse a cursor: "seq=S" with optional "boot=", "mono=", "realtime=" (all
 * three or none) and "journal=" (1 to KB_QUOTA_JOURNAL_CURSOR_MAX bytes)
 * separated by single spaces; unknown "key=value" words are ignored (a
 * later version may add some). -EINVAL for anything else. */
int kb_quota_mark_parse(const char *s, struct kb_quota_mark *ret);

/* Realtime µs of the first of now_usec's UTC month, 00:00. */
uint64_t kb_quota_month_start_usec(uint64_t now_usec);

/* Where replay after the snapshot m starts, now_rt being the realtime:
 * shortly before the snapshot was taken, allowing for the clock having been
 * stepped back since: by the net step measured against CLOCK_MONOTONIC when
 * still in m's boot, plus KB_QUOTA_REPLAY_MARGIN_USEC for steps that were
 * undone or happened across a reboot. From the start of the month (no
 * window is longer) when m has no time or the clock is behind m now. Never
 * before the start of the month. */
uint64_t kb_quota_replay_since(const struct kb_quota_mark *m, uint64_t now_rt);

/* The fields replay needs from one request record. */
struct kb_replay_record {
        char team[KB_REPLAY_TEAM_MAX + 1];
        kb_family family;
        uint64_t seq;
        uint64_t input_tokens, output_tokens, cached_tokens, cache_write_tokens;
        int64_t cost_microusd;
        uint64_t realtime_usec; /* KEYBROKER_REALTIME_USEC, optional: 0 when absent */
        unsigned seen;          /* bit per field */
};

void kb_replay_record_init(struct kb_replay_record *rec);
/* Feed one "FIELD=value" item of a journal entry (as sd_journal_enumerate_data
 * returns it, not NUL-terminated). Fields replay does not need are ignored.
 * -EINVAL for a malformed value of a needed field (not a decimal number in
 * range, unknown family, a team name too long or empty) or a needed field
 * given twice. */
int kb_replay_record_add(struct kb_replay_record *rec, const void *data, size_t len);
/* 0 when every needed field was fed, else -ENODATA. */
int kb_replay_record_complete(const struct kb_replay_record *rec);
/* The quota's token count of the record (kb_usage_quota_tokens()). */
uint64_t kb_replay_record_tokens(const struct kb_replay_record *rec);

struct kb_quota_replay_stats {
        uint64_t n_read;        /* request records of this instance read */
        uint64_t n_replayed;    /* counted into the quota */
        uint64_t n_covered;     /* seq <= the snapshot's: already counted */
        uint64_t n_unadmitted;  /* seq 0: never reached the quota */
        uint64_t n_unknown_team;
        uint64_t n_bad;         /* malformed or incomplete */
        uint64_t max_seq;       /* largest seq read */
        uint64_t usec;          /* time spent (CLOCK_MONOTONIC) */
        bool from_cursor;       /* started at the snapshot's journal cursor */
};

/* Replay into q the records j yields from journal_cursor on (when given
 * and journald can seek to it), else from realtime since_usec on (the
 * caller has added the matches selecting this instance's request records):
 * each well-formed record with seq > after_seq is counted with
 * kb_quota_account() at its own time (KEYBROKER_REALTIME_USEC, which a record
 * that waited in the spool keeps), else at its journal realtime. Fills *ret (always, also on
 * failure: what was done so far). Returns 0, or the -errno of a journal read
 * error (records before it were replayed). */
int kb_quota_replay(struct kb_quota *q, sd_journal *j, uint64_t after_seq, const char *journal_cursor,
                    uint64_t since_usec, struct kb_quota_replay_stats *ret);

/* Visit this instance's request records in the system journal from realtime
 * since_usec on whose seq is in (after_seq, upto_seq], in journal order,
 * each with its time (KEYBROKER_REALTIME_USEC when it has one). Returns 0 or
 * -errno (-EACCES: no journal file readable). Blocks while it reads. */
typedef void (*kb_record_visit_t)(void *userdata, const struct kb_replay_record *rec, uint64_t when_usec);
int kb_quota_records(const char *instance, uint64_t after_seq, uint64_t upto_seq, uint64_t since_usec,
                     kb_record_visit_t visit, void *userdata);

/* One snapshot round: wait up to flush_timeout_usec for the journal writer
 * to hand every queued record to journald, then save q to path with a cursor
 * covering seq (and, when tail names journal files, NULL-terminated, the
 * position of their newest entry, where replay will start). *dropped is kb_journal_n_dropped() at the previous round and
 * is updated. Returns 0 when saved; -ETIMEDOUT when the writer did not catch
 * up in time, -EBADMSG when records were dropped since the previous round
 * (both: nothing written, try again next round); else kb_quota_save()'s
 * error. The loop is blocked for up to flush_timeout_usec. */
int kb_quota_snapshot(const struct kb_quota *q, struct kb_journal *j, const char *const *tail, const char *path,
                      uint64_t seq, uint64_t flush_timeout_usec, uint64_t *dropped);

/* Daemon start-up, after kb_quota_configure() and before serving: load
 * state_dir/quota.json into a fresh quota configured from c (a corrupt file
 * is moved to quota.json.corrupt and counters start from zero), then replay
 * this instance's newer records from the system journal, and swap the result
 * into *q. *ret_seq is where the settle sequence continues. Problems with
 * the snapshot or the journal are warned about on stderr and do not stop the
 * start (the counters are then as complete as what could be read). Returns
 * 0 or -ENOMEM / -EINVAL (no state_dir). */
int kb_quota_recover(struct kb_quota **q, const struct kb_config *c, const char *instance, uint64_t *ret_seq);

struct kb_broker;
struct kb_quota_saver;

/* Snapshot b's counters to state_dir/quota.json every
 * KB_QUOTA_SNAPSHOT_INTERVAL_USEC on e (skipping rounds with nothing new),
 * or sooner once KB_QUOTA_SNAPSHOT_SETTLES calls settled.
 * b must outlive the saver. */
int kb_quota_saver_new(sd_event *e, struct kb_broker *b, struct kb_quota_saver **ret);
/* Final snapshot at clean stop (after the drain): waits up to
 * KB_QUOTA_FINAL_FLUSH_USEC for the journal writer. Returns 0 or -errno
 * (logged). */
int kb_quota_saver_final(struct kb_quota_saver *s);
struct kb_quota_saver *kb_quota_saver_free(struct kb_quota_saver *s); /* NULL; accepts NULL */
