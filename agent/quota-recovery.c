/* SPDX-License-Identifier: MIT */
/* Quota counters across restarts: snapshots tied to the settle sequence,
 * replay of this instance's newer request records at start. See
 * quota-recovery.h for the invariant that makes the two add up exactly. */

#include <limits.h>
#include <stdio.h>
#include <unistd.h>
#include <time.h>

#include "broker.h"
#include "keybroker/keybroker.h"
#include "quota-recovery.h"
#include "usage.h"

/* How long start-up waits for journald to have written everything sent to
 * it before (by a predecessor that was just killed). */
#define JOURNAL_CATCH_UP_USEC (3 * USEC_PER_SEC)
/* Request records are small; a bigger value is cut, which only MESSAGE and
 * fields replay does not read can be. */
#define REPLAY_DATA_THRESHOLD 4096
#define MARK_FIELD "KEYBROKER_RECOVERY_MARK"

/* ---- cursor ---- */

/* A decimal number, digits only, no sign, no leading garbage, in range. */
static int parse_u64(const char *s, size_t n, uint64_t *ret) {
        uint64_t v = 0;

        if (n == 0 || n > 20)
                return -EINVAL;
        for (size_t i = 0; i < n; i++) {
                unsigned d = (unsigned char) s[i] - '0';
                if (d > 9 || v > (UINT64_MAX - d) / 10)
                        return -EINVAL;
                v = v * 10 + d;
        }
        *ret = v;
        return 0;
}

static int parse_i64(const char *s, size_t n, int64_t *ret) {
        bool neg = n > 0 && s[0] == '-';
        uint64_t v;

        if (parse_u64(s + neg, n - neg, &v) < 0 || v > (uint64_t) INT64_MAX + neg)
                return -EINVAL;
        *ret = neg ? (int64_t) (0 - v) : (int64_t) v;
        return 0;
}

int kb_quota_mark_format(const struct kb_quota_mark *m, char *buf, size_t size) {
        char boot[SD_ID128_STRING_MAX];
        int n;

        if (m->has_time)
                n = snprintf(buf, size, "seq=%" PRIu64 " boot=%s mono=%" PRIu64 " realtime=%" PRIu64, m->seq,
                             sd_id128_to_string(m->boot_id, boot), m->mono_usec, m->realtime_usec);
        else
                n = snprintf(buf, size, "seq=%" PRIu64, m->seq);
        if (n < 0 || (size_t) n >= size)
                return -ENOBUFS;
        if (m->journal_cursor[0]) {
                int k = snprintf(buf + n, size - (size_t) n, " journal=%s", m->journal_cursor);
                if (k < 0 || (size_t) k >= size - (size_t) n)
                        return -ENOBUFS;
                n += k;
        }
        return n;
}

int kb_quota_mark_parse(const char *s, struct kb_quota_mark *ret) {
        struct kb_quota_mark m = {};
        bool have_seq = false, have_boot = false, have_mono = false, have_rt = false, have_journal = false;

        if (!s)
                return -EINVAL;
        for (;;) {
                size_t n = strcspn(s, " ");
                const char *eq = memchr(s, '=', n);
                if (!eq || eq == s)
                        return -EINVAL;
                size_t klen = (size_t) (eq - s), vlen = n - klen - 1;
                const char *v = eq + 1;
                bool *have = NULL;
                int r = 0;

#define KEY(k) (klen == strlen(k) && memcmp(s, k, klen) == 0)
                if (KEY("seq")) {
                        have = &have_seq;
                        r = parse_u64(v, vlen, &m.seq);
                } else if (KEY("mono")) {
                        have = &have_mono;
                        r = parse_u64(v, vlen, &m.mono_usec);
                } else if (KEY("realtime")) {
                        have = &have_rt;
                        r = parse_u64(v, vlen, &m.realtime_usec);
                } else if (KEY("boot")) {
                        char id[SD_ID128_STRING_MAX];
                        have = &have_boot;
                        if (vlen != SD_ID128_STRING_MAX - 1)
                                return -EINVAL;
                        memcpy(id, v, vlen);
                        id[vlen] = 0;
                        r = sd_id128_from_string(id, &m.boot_id);
                } else if (KEY("journal")) {
                        have = &have_journal;
                        if (vlen == 0 || vlen > KB_QUOTA_JOURNAL_CURSOR_MAX)
                                return -EINVAL;
                        memcpy(m.journal_cursor, v, vlen);
                        m.journal_cursor[vlen] = 0;
                }
#undef KEY
                if (r < 0 || (have && *have))
                        return -EINVAL;
                if (have)
                        *have = true;
                if (!s[n])
                        break;
                s += n + 1;
        }
        if (!have_seq || !(have_boot == have_mono && have_mono == have_rt))
                return -EINVAL;
        m.has_time = have_boot;
        *ret = m;
        return 0;
}

uint64_t kb_quota_month_start_usec(uint64_t now_usec) {
        time_t t = (time_t) (now_usec / USEC_PER_SEC);
        struct tm tm;

        if (!gmtime_r(&t, &tm))
                return 0;
        tm.tm_mday = 1;
        tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
        t = timegm(&tm);
        return t < 0 ? 0 : (uint64_t) t * USEC_PER_SEC;
}

/* ---- records ---- */

enum {
        F_SEQ, F_TEAM, F_FAMILY, F_INPUT, F_OUTPUT, F_CACHED, F_CACHE_WRITE, F_COST, _F_MAX,
};

static const char *const field_names[_F_MAX] = {
        [F_SEQ] = "SEQ",
        [F_TEAM] = "TEAM",
        [F_FAMILY] = "FAMILY",
        [F_INPUT] = "INPUT_TOKENS",
        [F_OUTPUT] = "OUTPUT_TOKENS",
        [F_CACHED] = "CACHED_TOKENS",
        [F_CACHE_WRITE] = "CACHE_WRITE_TOKENS",
        [F_COST] = "COST_MICROUSD",
};

void kb_replay_record_init(struct kb_replay_record *rec) {
        *rec = (struct kb_replay_record) { .family = _KB_FAMILY_MAX };
}

int kb_replay_record_add(struct kb_replay_record *rec, const void *data, size_t len) {
        static const char prefix[] = "KEYBROKER_";
        const char *d = data, *eq = memchr(d, '=', len);
        size_t plen = sizeof(prefix) - 1, klen, vlen;
        const char *v;
        int f = -1, r;

        if (!eq || (size_t) (eq - d) <= plen || memcmp(d, prefix, plen) != 0)
                return 0;
        klen = (size_t) (eq - d) - plen;
        if (klen == strlen("REALTIME_USEC") && memcmp(d + plen, "REALTIME_USEC", klen) == 0) {
                /* optional (older records lack it): a bad one is ignored */
                v = eq + 1;
                if (parse_u64(v, len - (size_t) (v - d), &rec->realtime_usec) < 0)
                        rec->realtime_usec = 0;
                return 0;
        }
        for (int i = 0; i < _F_MAX; i++)
                if (strlen(field_names[i]) == klen && memcmp(d + plen, field_names[i], klen) == 0)
                        f = i;
        if (f < 0)
                return 0;
        if (rec->seen & (1U << f))
                return -EINVAL;
        v = eq + 1;
        vlen = len - (size_t) (v - d);

        switch (f) {
        case F_SEQ: r = parse_u64(v, vlen, &rec->seq); break;
        case F_INPUT: r = parse_u64(v, vlen, &rec->input_tokens); break;
        case F_OUTPUT: r = parse_u64(v, vlen, &rec->output_tokens); break;
        case F_CACHED: r = parse_u64(v, vlen, &rec->cached_tokens); break;
        case F_CACHE_WRITE: r = parse_u64(v, vlen, &rec->cache_write_tokens); break;
        case F_COST: r = parse_i64(v, vlen, &rec->cost_microusd); break;
        case F_TEAM:
                if (vlen == 0 || vlen > KB_REPLAY_TEAM_MAX || memchr(v, 0, vlen))
                        return -EINVAL;
                memcpy(rec->team, v, vlen);
                rec->team[vlen] = 0;
                r = 0;
                break;
        case F_FAMILY: {
                char fam[32];
                if (vlen >= sizeof(fam))
                        return -EINVAL;
                memcpy(fam, v, vlen);
                fam[vlen] = 0;
                r = kb_family_from_string(fam);
                if (r >= 0) {
                        rec->family = (kb_family) r;
                        r = 0;
                }
                break;
        }
        default:
                return -EINVAL;
        }
        if (r < 0)
                return -EINVAL;
        rec->seen |= 1U << f;
        return 0;
}

int kb_replay_record_complete(const struct kb_replay_record *rec) {
        return rec->seen == (1U << _F_MAX) - 1 ? 0 : -ENODATA;
}

uint64_t kb_replay_record_tokens(const struct kb_replay_record *rec) {
        struct kb_usage u = {
                .input_tokens = rec->input_tokens,
                .output_tokens = rec->output_tokens,
                .cached_tokens = rec->cached_tokens,
                .cache_write_tokens = rec->cache_write_tokens,
        };
        return kb_usage_quota_tokens(&u, rec->family);
}

/* ---- replay ---- */

static void replay_entry(struct kb_quota *q, sd_journal *j, uint64_t after_seq, struct kb_quota_replay_stats *st) {
        struct kb_replay_record rec;
        const void *data;
        size_t len;
        uint64_t when;
        bool bad = false;
        int r;

        st->n_read++;
        kb_replay_record_init(&rec);
        sd_journal_restart_data(j);
        while ((r = sd_journal_enumerate_available_data(j, &data, &len)) > 0)
                if (kb_replay_record_add(&rec, data, len) < 0)
                        bad = true;
        if (rec.seen & (1U << F_SEQ))
                st->max_seq = MAX(st->max_seq, rec.seq);
        if (r < 0 || bad || kb_replay_record_complete(&rec) < 0 || sd_journal_get_realtime_usec(j, &when) < 0) {
                st->n_bad++;
                return;
        }
        if (rec.seq == 0) {
                st->n_unadmitted++;
                return;
        }
        if (rec.seq <= after_seq) {
                st->n_covered++;
                return;
        }
        if (rec.realtime_usec > 0)
                when = rec.realtime_usec;
        /* Settle counts a negative cost as 0; so does replay. */
        r = kb_quota_account(q, rec.team, when, kb_replay_record_tokens(&rec), MAX(rec.cost_microusd, 0));
        if (r == -ENOENT)
                st->n_unknown_team++;
        else if (r < 0)
                st->n_bad++;
        else
                st->n_replayed++;
}

int kb_quota_replay(struct kb_quota *q, sd_journal *j, uint64_t after_seq, const char *journal_cursor,
                    uint64_t since_usec, struct kb_quota_replay_stats *ret) {
        struct kb_quota_replay_stats st = {};
        uint64_t t0 = kb_now_usec();
        int r = -ENOENT;

        /* The snapshot's own position: only what came after it is read,
         * however much traffic came before. */
        if (journal_cursor && journal_cursor[0])
                r = sd_journal_seek_cursor(j, journal_cursor);
        st.from_cursor = r >= 0;
        if (r < 0)
                r = sd_journal_seek_realtime_usec(j, since_usec);
        while (r >= 0) {
                r = sd_journal_next(j);
                if (r <= 0)
                        break;
                replay_entry(q, j, after_seq, &st);
        }
        st.usec = kb_now_usec() - t0;
        *ret = st;
        return r < 0 ? r : 0;
}

/* ---- snapshots ---- */

/* Where journald's newest entry is, into m (left "" when it cannot be
 * read): the loop is blocked, so nothing settled after the snapshot's seq
 * can be before it. Only the files journald writes to now are opened, for
 * this moment: a handle on the whole journal would hold an fd and a mapping
 * per journal file for good. journald numbers entries across all its files,
 * so the newest of these is at or before every later record. */
static void mark_journal_tail(const char *const *files, struct kb_quota_mark *m) {
        sd_journal *j = NULL;
        char *c = NULL;

        if (!files || !files[0] || sd_journal_open_files(&j, (const char **) files, 0) < 0)
                return;
        if (sd_journal_seek_tail(j) >= 0 && sd_journal_previous(j) > 0 && sd_journal_get_cursor(j, &c) >= 0 &&
            strlen(c) <= KB_QUOTA_JOURNAL_CURSOR_MAX && !strchr(c, ' '))
                strcpy(m->journal_cursor, c);
        free(c);
        sd_journal_close(j);
}

/* The files journald writes to now (system.journal and this uid's
 * user-UID.journal, persistent or volatile), NULL-terminated into files
 * (up to 2; paths in buf). */
static void active_journal_files(char buf[2][PATH_MAX], const char *files[3]) {
        static const char *const dirs[] = { "/var/log/journal", "/run/log/journal" };
        char id[SD_ID128_STRING_MAX];
        sd_id128_t machine;
        size_t n = 0;

        files[0] = NULL;
        if (sd_id128_get_machine(&machine) < 0)
                return;
        sd_id128_to_string(machine, id);
        for (size_t d = 0; d < ELEMENTSOF(dirs) && n == 0; d++)
                for (int user = 0; user < 2; user++) {
                        if (user)
                                snprintf(buf[n], PATH_MAX, "%s/%s/user-%u.journal", dirs[d], id, (unsigned) geteuid());
                        else
                                snprintf(buf[n], PATH_MAX, "%s/%s/system.journal", dirs[d], id);
                        if (access(buf[n], R_OK) == 0) {
                                files[n] = buf[n];
                                n++;
                        }
                }
        files[n] = NULL;
}

int kb_quota_snapshot(const struct kb_quota *q, struct kb_journal *j, const char *const *tail, const char *path,
                      uint64_t seq, uint64_t flush_timeout_usec, uint64_t *dropped) {
        struct kb_quota_mark m = { .seq = seq };
        char cursor[128 + KB_QUOTA_JOURNAL_CURSOR_MAX];
        uint64_t t0, n;
        int r;

        /* Taken before anything can settle after seq: every record with a
         * larger seq reaches journald after this instant. */
        t0 = kb_now_usec();
        m.mono_usec = t0;
        m.realtime_usec = kb_realtime_usec();
        m.has_time = sd_id128_get_boot(&m.boot_id) >= 0;

        /* kb_journal_flush() does not say whether it caught up: it returns
         * early only when the writer is idle, so returning within the
         * timeout means every record submitted so far went to journald. */
        kb_journal_flush(j, flush_timeout_usec);
        if (kb_now_usec() - t0 >= flush_timeout_usec)
                return -ETIMEDOUT;
        n = kb_journal_n_dropped(j);
        if (n != *dropped) {
                *dropped = n;
                return -EBADMSG;
        }
        mark_journal_tail(tail, &m);
        r = kb_quota_mark_format(&m, cursor, sizeof(cursor));
        if (r < 0)
                return r;
        return kb_quota_save(q, path, cursor);
}

/* ---- start-up ---- */

static int fresh_quota(const struct kb_config *c, struct kb_quota **ret) {
        struct kb_quota *q = NULL;
        int r = kb_quota_new(&q);

        if (r >= 0)
                r = kb_quota_configure(q, c);
        if (r < 0) {
                kb_quota_free(q);
                return r;
        }
        *ret = q;
        return 0;
}

/* The snapshot's counters into *q and what it covers into *ret_mark; on
 * any problem *q is left with zero counters and *ret_mark at seq 0, so the
 * whole month is replayed from the journal. Returns 0 or -ENOMEM. */
static int load_snapshot(const struct kb_config *c, const char *path, struct kb_quota **q,
                         struct kb_quota_mark *ret_mark, bool *ret_loaded) {
        _cleanup_free_ char *cursor = NULL;
        int r;

        *ret_mark = (struct kb_quota_mark) {};
        *ret_loaded = false;
        r = kb_quota_load(*q, path, &cursor);
        if (r == -ENOMEM)
                return r;
        if (r == -EINVAL) {
                _cleanup_free_ char *aside = NULL;
                if (asprintf(&aside, "%s.corrupt", path) < 0)
                        return -ENOMEM;
                bool moved = rename(path, aside) >= 0;
                fprintf(stderr,
                        "<4>quota snapshot %s is corrupt%s%s: rebuilding every team's counters from this "
                        "month's journal records\n",
                        path, moved ? ", moved to " : "", moved ? aside : "");
                return 0;
        }
        if (r < 0) {
                fprintf(stderr, "<4>cannot read quota snapshot %s: %s: rebuilding every team's counters from "
                        "this month's journal records\n", path, strerror(-r));
                return 0;
        }
        if (!cursor) {
                if (access(path, F_OK) < 0)
                        return 0; /* first start */
                fprintf(stderr, "<4>quota snapshot %s names no sequence: ignoring it, rebuilding from the "
                        "journal\n", path);
        } else if (kb_quota_mark_parse(cursor, ret_mark) < 0) {
                fprintf(stderr, "<4>quota snapshot %s has an unknown cursor \"%.64s\": ignoring it, rebuilding "
                        "from the journal\n", path, cursor);
        } else {
                *ret_loaded = true;
                return 0;
        }
        /* Its counters were applied: start over from zero. */
        struct kb_quota *fresh = NULL;
        r = fresh_quota(c, &fresh);
        if (r < 0)
                return r;
        kb_quota_free(*q);
        *q = fresh;
        *ret_mark = (struct kb_quota_mark) {};
        return 0;
}

/* Every record after the snapshot reached journald later, so its realtime
 * stamp is later too, unless the clock was stepped back in between. */
uint64_t kb_quota_replay_since(const struct kb_quota_mark *m, uint64_t now_rt) {
        uint64_t since = kb_quota_month_start_usec(now_rt), back = KB_QUOTA_REPLAY_MARGIN_USEC;
        sd_id128_t boot;

        if (!m->has_time || now_rt < m->realtime_usec)
                return since;
        if (sd_id128_get_boot(&boot) >= 0 && sd_id128_equal(boot, m->boot_id)) {
                uint64_t now_mono = kb_now_usec();
                uint64_t mono_elapsed = now_mono > m->mono_usec ? now_mono - m->mono_usec : 0;
                uint64_t rt_elapsed = now_rt - m->realtime_usec;
                if (mono_elapsed > rt_elapsed)
                        back += mono_elapsed - rt_elapsed;
        }
        if (m->realtime_usec > back)
                since = MAX(since, m->realtime_usec - back);
        return since;
}

/* A predecessor killed a moment ago may have records still queued in
 * journald's socket: send a record of our own and wait until the journal
 * shows it — journald handles its socket in order, so everything sent
 * before is then readable too. */
static int journal_catch_up(sd_journal *j, const char *instance, uint64_t after_seq) {
        char match[sizeof(MARK_FIELD) + SD_ID128_STRING_MAX], hex[SD_ID128_STRING_MAX];
        sd_id128_t nonce;
        int r;

        r = sd_id128_randomize(&nonce);
        if (r < 0)
                return r;
        snprintf(match, sizeof(match), MARK_FIELD "=%s", sd_id128_to_string(nonce, hex));
        r = sd_journal_send("MESSAGE=quota recovery: snapshot covers settle sequence %" PRIu64
                            ", replaying newer request records of instance %s",
                            after_seq, instance, "PRIORITY=6", "SYSLOG_IDENTIFIER=" KB_SYSLOG_IDENTIFIER,
                            "KEYBROKER_INSTANCE=%s", instance, "%s", match, NULL);
        if (r < 0)
                return r;
        r = sd_journal_add_match(j, match, 0);
        if (r < 0)
                return r;
        uint64_t deadline = kb_now_usec() + JOURNAL_CATCH_UP_USEC;
        for (;;) {
                r = sd_journal_next(j);
                if (r != 0)
                        break;
                uint64_t now = kb_now_usec();
                if (now >= deadline) {
                        r = -ETIMEDOUT;
                        break;
                }
                r = sd_journal_wait(j, deadline - now);
                if (r < 0)
                        break;
        }
        sd_journal_flush_matches(j);
        return r < 0 ? r : 0;
}

static int open_journal(sd_journal **ret) {
        sd_journal *j = NULL;
        int r = sd_journal_open(&j, SD_JOURNAL_LOCAL_ONLY);

        if (r < 0)
                return r;
        if (sd_journal_has_runtime_files(j) <= 0 && sd_journal_has_persistent_files(j) <= 0) {
                sd_journal_close(j);
                return -EACCES;
        }
        *ret = j;
        return 0;
}

/* Match this instance's own request records only. */
static int match_own_records(sd_journal *j, const char *instance) {
        char m_instance[64], m_uid[32];
        int r;

        /* Only our own records: a record naming this instance but sent by
         * another uid is a forgery (journald sets _UID, clients cannot). */
        snprintf(m_instance, sizeof(m_instance), "KEYBROKER_INSTANCE=%s", instance);
        snprintf(m_uid, sizeof(m_uid), "_UID=%u", (unsigned) geteuid());
        r = sd_journal_add_match(j, "MESSAGE_ID=" KB_MID_REQUEST, 0);
        if (r >= 0)
                r = sd_journal_add_match(j, m_instance, 0);
        if (r >= 0)
                r = sd_journal_add_match(j, m_uid, 0);
        if (r >= 0)
                r = sd_journal_set_data_threshold(j, REPLAY_DATA_THRESHOLD);
        return r;
}

static int replay_journal(struct kb_quota *q, const char *instance, uint64_t after_seq, const char *journal_cursor,
                          uint64_t since, struct kb_quota_replay_stats *st) {
        sd_journal *j = NULL;
        int r;

        r = open_journal(&j);
        if (r == -EACCES) {
                fprintf(stderr, "<4>no journal file is readable (does the service user lack the systemd-journal "
                        "group?): quota counters are only what the snapshot holds\n");
                return r;
        }
        if (r < 0) {
                fprintf(stderr, "<4>cannot open the journal to recover quota counters: %s\n", strerror(-r));
                return r;
        }
        r = journal_catch_up(j, instance, after_seq);
        if (r < 0)
                fprintf(stderr, "<4>journald did not show a record within %" PRIu64 " s (%s): records a "
                        "crashed predecessor sent last may be missed\n",
                        JOURNAL_CATCH_UP_USEC / USEC_PER_SEC, strerror(-r));
        r = match_own_records(j, instance);
        if (r >= 0)
                r = kb_quota_replay(q, j, after_seq, journal_cursor, since, st);
        if (r < 0)
                fprintf(stderr, "<4>reading the journal to recover quota counters failed after %" PRIu64
                        " record(s): %s\n", st->n_read, strerror(-r));
        sd_journal_close(j);
        return r;
}

int kb_quota_records(const char *instance, uint64_t after_seq, uint64_t upto_seq, uint64_t since_usec,
                     kb_record_visit_t visit, void *userdata) {
        sd_journal *j = NULL;
        int r;

        r = open_journal(&j);
        if (r < 0)
                return r;
        r = match_own_records(j, instance);
        if (r >= 0)
                r = sd_journal_seek_realtime_usec(j, since_usec);
        while (r >= 0 && (r = sd_journal_next(j)) > 0) {
                struct kb_replay_record rec;
                const void *data;
                size_t len;
                uint64_t when;
                bool bad = false;
                int k;

                kb_replay_record_init(&rec);
                sd_journal_restart_data(j);
                while ((k = sd_journal_enumerate_available_data(j, &data, &len)) > 0)
                        if (kb_replay_record_add(&rec, data, len) < 0)
                                bad = true;
                if (k < 0 || bad || kb_replay_record_complete(&rec) < 0 ||
                    sd_journal_get_realtime_usec(j, &when) < 0 || rec.seq <= after_seq || rec.seq > upto_seq)
                        continue;
                visit(userdata, &rec, rec.realtime_usec > 0 ? rec.realtime_usec : when);
        }
        sd_journal_close(j);
        return r < 0 ? r : 0;
}

int kb_quota_recover(struct kb_quota **q, const struct kb_config *c, const char *instance, uint64_t *ret_seq) {
        _cleanup_free_ char *path = NULL;
        struct kb_quota *fresh = NULL;
        struct kb_quota_replay_stats st = {};
        struct kb_quota_mark mark;
        bool loaded;
        int r;

        if (!c->agent.state_dir || !instance)
                return -EINVAL;
        if (asprintf(&path, "%s/" KB_QUOTA_SNAPSHOT_NAME, c->agent.state_dir) < 0)
                return -ENOMEM;
        r = fresh_quota(c, &fresh);
        if (r < 0)
                return r;
        r = load_snapshot(c, path, &fresh, &mark, &loaded);
        if (r < 0) {
                kb_quota_free(fresh);
                return r;
        }

        uint64_t now = kb_realtime_usec(), since = kb_quota_replay_since(&mark, now);
        r = replay_journal(fresh, instance, mark.seq, loaded ? mark.journal_cursor : NULL, since, &st);
        if (r == -ENOMEM) {
                kb_quota_free(fresh);
                return r;
        }
        fprintf(stderr,
                "<6>quota counters recovered: %s (seq %" PRIu64 "), then %" PRIu64 " journal record(s) replayed "
                "of %" PRIu64 " read since %s%" PRIu64 " s ago%s in %" PRIu64 " ms (%" PRIu64 " already counted, %"
                PRIu64 " of teams no longer configured, %" PRIu64 " malformed)\n",
                loaded ? "snapshot" : "no snapshot", mark.seq, st.n_replayed, st.n_read,
                st.from_cursor ? "the snapshot's journal position, " :
                since == kb_quota_month_start_usec(now) ? "the month's start, " : "",
                (now - (st.from_cursor ? mark.realtime_usec : since)) / USEC_PER_SEC,
                st.from_cursor ? "" : " (no journal position in the snapshot)", st.usec / USEC_PER_MSEC,
                st.n_covered, st.n_unknown_team, st.n_bad);

        kb_quota_free(*q);
        *q = fresh;
        *ret_seq = MAX(mark.seq, st.max_seq);
        return 0;
}

/* ---- the periodic saver ---- */

struct kb_quota_saver {
        struct kb_broker *b;
        sd_event_source *timer;
        char *path;
        uint64_t dropped;       /* kb_journal_n_dropped() at the last round */
        uint64_t saved_seq;
        uint64_t round_usec;    /* when the last round ran (monotonic) */
        bool saved;
        int last;               /* the last round's result: log changes, not every round */
};

static int saver_round(struct kb_quota_saver *s, uint64_t flush_timeout_usec) {
        uint64_t seq = s->b->seq, dropped = s->dropped;
        char buf[2][PATH_MAX];
        const char *files[3];

        s->round_usec = kb_now_usec();
        active_journal_files(buf, files);
        int r = kb_quota_snapshot(s->b->quota, s->b->journal, files, s->path, seq, flush_timeout_usec,
                                  &s->dropped);

        if (r >= 0) {
                if (s->last < 0)
                        fprintf(stderr, "<6>quota snapshots written again\n");
                s->saved = true;
                s->saved_seq = seq;
        } else if (r == -EBADMSG)
                /* Their usage stays counted (it was spent); the journal
                 * lacks it. The next round saves again. */
                fprintf(stderr, "<4>%" PRIu64 " journal record(s) dropped: their usage stays in the quota "
                        "counters but not in the journal; quota snapshot skipped this round\n",
                        s->dropped - dropped);
        else if (r != s->last) {
                if (r == -ETIMEDOUT)
                        fprintf(stderr, "<4>quota snapshot skipped: the journal writer did not catch up within "
                                "%" PRIu64 " ms; retrying every %" PRIu64 " s\n",
                                flush_timeout_usec / USEC_PER_MSEC, KB_QUOTA_SNAPSHOT_INTERVAL_USEC / USEC_PER_SEC);
                else
                        fprintf(stderr, "<3>cannot write quota snapshot %s: %s\n", s->path, strerror(-r));
        }
        s->last = r;
        return r;
}

static int on_snapshot_timer(sd_event_source *src, uint64_t usec, void *userdata) {
        struct kb_quota_saver *s = userdata;

        uint64_t settled = s->saved ? s->b->seq - s->saved_seq : s->b->seq;

        /* Nothing settled since the last snapshot: it is still exact. A
         * round is due after the interval, or sooner when so many settled
         * that a restart would replay too much. */
        if ((!s->saved || settled > 0) &&
            (settled >= KB_QUOTA_SNAPSHOT_SETTLES ||
             kb_now_usec() - s->round_usec >= KB_QUOTA_SNAPSHOT_INTERVAL_USEC - KB_QUOTA_SNAPSHOT_CHECK_USEC / 2))
                (void) saver_round(s, KB_QUOTA_SNAPSHOT_FLUSH_USEC);
        (void) sd_event_source_set_time_relative(src, KB_QUOTA_SNAPSHOT_CHECK_USEC);
        return sd_event_source_set_enabled(src, SD_EVENT_ONESHOT);
}

int kb_quota_saver_new(sd_event *e, struct kb_broker *b, struct kb_quota_saver **ret) {
        struct kb_quota_saver *s;
        int r;

        if (!e || !b || !b->config || !b->config->agent.state_dir || !ret)
                return -EINVAL;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->b = b;
        s->dropped = kb_journal_n_dropped(b->journal);
        if (asprintf(&s->path, "%s/" KB_QUOTA_SNAPSHOT_NAME, b->config->agent.state_dir) < 0) {
                s->path = NULL;
                kb_quota_saver_free(s);
                return -ENOMEM;
        }
        s->round_usec = kb_now_usec();
        r = sd_event_add_time_relative(e, &s->timer, CLOCK_MONOTONIC, KB_QUOTA_SNAPSHOT_CHECK_USEC,
                                       100 * USEC_PER_MSEC, on_snapshot_timer, s);
        if (r < 0) {
                kb_quota_saver_free(s);
                return r;
        }
        *ret = s;
        return 0;
}

int kb_quota_saver_final(struct kb_quota_saver *s) {
        int r;

        if (!s)
                return -EINVAL;
        r = saver_round(s, KB_QUOTA_FINAL_FLUSH_USEC);
        /* Drops were reported; what they cost stays counted. */
        if (r == -EBADMSG)
                r = saver_round(s, KB_QUOTA_FINAL_FLUSH_USEC);
        return r;
}

struct kb_quota_saver *kb_quota_saver_free(struct kb_quota_saver *s) {
        if (!s)
                return NULL;
        sd_event_source_disable_unref(s->timer);
        free(s->path);
        free(s);
        return NULL;
}
