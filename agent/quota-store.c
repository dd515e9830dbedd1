/* SPDX-License-Identifier: MIT */
/* The quota snapshot file: every team's day/month counters and minute
 * buckets plus the journal cursor they are current up to, written atomically.
 *
 * {"version": 1, "cursor": "s=…" | null,
 *  "teams": {"NAME": {"day": D, "day_tokens": N, "day_cost_microusd": N,
 *                     "month": M, "month_tokens": N, "month_cost_microusd": N,
 *                     "minute": [[K, REQUESTS, TOKENS], …]}, …}}
 *
 * D is days since the epoch (UTC), M is year * 12 + month - 1, K is the
 * bucket key (ceil of the usage time in seconds); a missing day/month is
 * null. Requests still in flight are left out of the buckets: their journal
 * record, newer than the cursor, brings them back at replay. */

#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <sys/stat.h>

#include "quota-internal.h"

#define SNAPSHOT_VERSION 1
#define MAX_KEY (QUOTA_MAX_TIME / QUOTA_SEC)

/* jansson's own json_decrefp() accepts NULL */
#define _cleanup_json_ _cleanup_(json_decrefp)

static json_t *json_u64(uint64_t v) {
        return json_integer((json_int_t) MIN(v, (uint64_t) INT64_MAX));
}

static json_t *json_index(uint64_t v) {
        return v == QUOTA_NONE ? json_null() : json_u64(v);
}

static int set_new(json_t *o, const char *key, json_t *v) {
        if (!v || json_object_set_new(o, key, v) < 0)
                return -ENOMEM;
        return 0;
}

static int team_to_json(const struct quota_team *t, json_t **ret) {
        _cleanup_json_ json_t *o = json_object(), *minute = json_array();

        if (!o || !minute)
                return -ENOMEM;
        if (set_new(o, "day", json_index(t->day)) < 0 || set_new(o, "day_tokens", json_u64(t->day_tokens)) < 0 ||
            set_new(o, "day_cost_microusd", json_u64(t->day_cost)) < 0 ||
            set_new(o, "month", json_index(t->month)) < 0 ||
            set_new(o, "month_tokens", json_u64(t->month_tokens)) < 0 ||
            set_new(o, "month_cost_microusd", json_u64(t->month_cost)) < 0)
                return -ENOMEM;

        for (size_t i = 0; i < QUOTA_BUCKETS; i++) {
                const struct quota_bucket *b = &t->minute[i];
                uint64_t requests = b->requests > b->in_flight ? b->requests - b->in_flight : 0;

                if (b->k == QUOTA_NONE || (requests == 0 && b->tokens == 0))
                        continue;
                if (json_array_append_new(minute, json_pack("[IIo]", (json_int_t) b->k,
                                                            (json_int_t) MIN(requests, (uint64_t) INT64_MAX),
                                                            json_u64(b->tokens))) < 0)
                        return -ENOMEM;
        }
        if (json_object_set(o, "minute", minute) < 0)
                return -ENOMEM;

        *ret = TAKE_PTR(o);
        return 0;
}

static int fsync_parent(const char *path) {
        _cleanup_free_ char *dir = strdup(path);
        _cleanup_close_ int fd = -1;
        char *slash;

        if (!dir)
                return -ENOMEM;
        slash = strrchr(dir, '/');
        if (!slash)
                strcpy(dir, ".");
        else if (slash == dir)
                dir[1] = 0;
        else
                *slash = 0;

        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fsync(fd) < 0)
                return -errno;
        return 0;
}

int kb_quota_save(const struct kb_quota *q, const char *path, const char *cursor) {
        _cleanup_json_ json_t *root = NULL, *teams = NULL;
        _cleanup_free_ char *text = NULL, *tmp = NULL;
        _cleanup_close_ int fd = -1;
        int r;

        if (!q || !path || !*path || strlen(path) >= PATH_MAX - 16)
                return -EINVAL;
        if (cursor && strnlen(cursor, KB_QUOTA_CURSOR_MAX + 1) > KB_QUOTA_CURSOR_MAX)
                return -EINVAL;

        root = json_object();
        teams = json_object();
        if (!root || !teams)
                return -ENOMEM;
        for (size_t i = 0; i < q->n_teams; i++) {
                json_t *t = NULL;

                r = team_to_json(q->teams[i], &t);
                if (r < 0)
                        return r;
                if (json_object_set_new(teams, q->teams[i]->name, t) < 0)
                        return -ENOMEM;
        }
        if (set_new(root, "version", json_integer(SNAPSHOT_VERSION)) < 0 ||
            set_new(root, "cursor", cursor ? json_string(cursor) : json_null()) < 0 ||
            json_object_set(root, "teams", teams) < 0)
                return -ENOMEM;

        text = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
        if (!text)
                return -ENOMEM;

        /* A fixed temp name: a crash in the middle leaves one stale file that
         * the next save reuses, not one per crash. Only one daemon writes. */
        if (asprintf(&tmp, "%s.tmp", path) < 0) {
                tmp = NULL;
                return -ENOMEM;
        }
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
        if (fd < 0)
                return -errno;
        /* an old temp file may have been created with another mode */
        if (fchmod(fd, 0600) < 0) {
                r = -errno;
                (void) unlink(tmp);
                return r;
        }

        r = kb_write_all(fd, text, strlen(text));
        if (r >= 0)
                r = kb_write_all(fd, "\n", 1);
        if (r >= 0 && fsync(fd) < 0)
                r = -errno;
        if (r >= 0 && close(TAKE_FD(fd)) < 0)
                r = -errno;
        if (r >= 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0) {
                (void) unlink(tmp);
                return r;
        }
        /* The new name is in place; a failure to sync the directory only
         * risks the old snapshot after a power loss. Still report it. */
        return fsync_parent(path);
}

static int read_file(const char *path, char **ret, size_t *ret_size) {
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *buf = NULL;
        struct stat st;
        size_t n = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EINVAL;
        if (st.st_size > (off_t) KB_QUOTA_SNAPSHOT_MAX)
                return -EINVAL;

        buf = malloc((size_t) st.st_size + 1);
        if (!buf)
                return -ENOMEM;
        /* Read up to one byte past the size seen, to catch a file that grew. */
        while (n <= (size_t) st.st_size) {
                ssize_t k = read(fd, buf + n, (size_t) st.st_size + 1 - n);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                n += (size_t) k;
        }
        if (n > (size_t) st.st_size)
                return -EINVAL;

        *ret = TAKE_PTR(buf);
        *ret_size = n;
        return 0;
}

static int get_u64(json_t *o, const char *key, uint64_t max, uint64_t *ret) {
        json_t *v = json_object_get(o, key);

        if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t) json_integer_value(v) > max)
                return -EINVAL;
        *ret = (uint64_t) json_integer_value(v);
        return 0;
}

static int get_index(json_t *o, const char *key, uint64_t max, uint64_t *ret) {
        json_t *v = json_object_get(o, key);

        if (json_is_null(v)) {
                *ret = QUOTA_NONE;
                return 0;
        }
        return get_u64(o, key, max, ret);
}

/* Parse one team into a scratch copy holding only counters. */
static int team_from_json(json_t *o, struct quota_team *ret) {
        struct quota_team t = {};
        json_t *minute, *e;
        size_t i;

        if (!json_is_object(o))
                return -EINVAL;
        quota_team_reset_counters(&t);
        if (get_index(o, "day", QUOTA_MAX_DAY, &t.day) < 0 || get_u64(o, "day_tokens", UINT64_MAX, &t.day_tokens) < 0 ||
            get_u64(o, "day_cost_microusd", UINT64_MAX, &t.day_cost) < 0 ||
            get_index(o, "month", QUOTA_MAX_MONTH, &t.month) < 0 ||
            get_u64(o, "month_tokens", UINT64_MAX, &t.month_tokens) < 0 ||
            get_u64(o, "month_cost_microusd", UINT64_MAX, &t.month_cost) < 0)
                return -EINVAL;
        if ((t.day == QUOTA_NONE && (t.day_tokens || t.day_cost)) ||
            (t.month == QUOTA_NONE && (t.month_tokens || t.month_cost)))
                return -EINVAL;

        minute = json_object_get(o, "minute");
        if (!json_is_array(minute) || json_array_size(minute) > QUOTA_BUCKETS)
                return -EINVAL;
        json_array_foreach(minute, i, e) {
                json_int_t k, requests, tokens;
                struct quota_bucket *b;

                if (json_unpack(e, "[III!]", &k, &requests, &tokens) < 0 || k < 0 || (uint64_t) k > MAX_KEY ||
                    requests < 0 || tokens < 0)
                        return -EINVAL;
                b = &t.minute[(uint64_t) k % QUOTA_BUCKETS];
                if (b->k != QUOTA_NONE) /* two buckets in one slot: not ours */
                        return -EINVAL;
                *b = (struct quota_bucket) { .k = (uint64_t) k, .requests = (uint64_t) requests,
                                             .tokens = (uint64_t) tokens };
        }

        *ret = t;
        return 0;
}

struct loaded_team {
        struct quota_team *team;
        struct quota_team counters;
};

int kb_quota_load(struct kb_quota *q, const char *path, char **ret_cursor) {
        _cleanup_free_ char *buf = NULL, *cursor = NULL;
        _cleanup_free_ struct loaded_team *loaded = NULL;
        _cleanup_json_ json_t *root = NULL;
        json_t *teams, *v, *c;
        const char *name;
        size_t size = 0, n = 0;
        int r;

        if (!q || !path || !ret_cursor)
                return -EINVAL;

        r = read_file(path, &buf, &size);
        if (r == -ENOENT) {
                *ret_cursor = NULL;
                return 0;
        }
        if (r < 0)
                return r;

        root = json_loadb(buf, size, JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_object(root))
                return -EINVAL;
        v = json_object_get(root, "version");
        if (!json_is_integer(v) || json_integer_value(v) != SNAPSHOT_VERSION)
                return -EINVAL;

        c = json_object_get(root, "cursor");
        if (json_is_string(c)) {
                if (json_string_length(c) > KB_QUOTA_CURSOR_MAX || strlen(json_string_value(c)) != json_string_length(c))
                        return -EINVAL;
                cursor = strdup(json_string_value(c));
                if (!cursor)
                        return -ENOMEM;
        } else if (!json_is_null(c))
                return -EINVAL;

        teams = json_object_get(root, "teams");
        if (!json_is_object(teams))
                return -EINVAL;
        loaded = calloc(MAX(q->n_teams, 1U), sizeof(*loaded));
        if (!loaded)
                return -ENOMEM;

        /* Validate everything, unknown teams included, before touching anything. */
        json_object_foreach(teams, name, v) {
                struct quota_team scratch;
                struct quota_team *t;

                r = team_from_json(v, &scratch);
                if (r < 0)
                        return r;
                t = quota_find_team(q, name);
                if (!t)
                        continue;
                loaded[n++] = (struct loaded_team) { .team = t, .counters = scratch };
        }

        for (size_t i = 0; i < n; i++) {
                struct quota_team *t = loaded[i].team, *s = &loaded[i].counters;

                memcpy(t->minute, s->minute, sizeof(t->minute));
                t->day = s->day;
                t->day_tokens = s->day_tokens;
                t->day_cost = s->day_cost;
                t->month = s->month;
                t->month_tokens = s->month_tokens;
                t->month_cost = s->month_cost;
        }

        *ret_cursor = TAKE_PTR(cursor);
        return 0;
}
