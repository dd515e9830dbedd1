/* SPDX-License-Identifier: MIT */
/* The evidence of a preflight: the document answered to keybrokerctl and
 * saved under state_dir/evidence (what was checked, each check with its
 * parts, each call with its status and latency; never a key and never a
 * provider's body, which might quote more of a key than it should), and
 * the file it is saved to. */

#include <fcntl.h>
#include <inttypes.h>
#include <sys/stat.h>
#include <time.h>

#include "preflight-internal.h"

json_t *pf_iso_json(uint64_t realtime_usec) {
        time_t t = (time_t) (realtime_usec / USEC_PER_SEC);
        struct tm tm;
        char buf[40];

        if (!gmtime_r(&t, &tm) || strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm) == 0)
                return json_null();
        size_t l = strlen(buf);
        snprintf(buf + l, sizeof(buf) - l, ".%03uZ", (unsigned) (realtime_usec % USEC_PER_SEC / USEC_PER_MSEC));
        return json_string(buf);
}

static json_t *calls_json(const struct kb_preflight *p) {
        json_t *a = json_array();

        for (size_t i = 0; a && i < p->n_calls; i++) {
                const struct pf_call *c = &p->calls[i];
                if (!c->ran)
                        continue;
                json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s?, s:b, s:o, s:o, s:I, s:I, s:o, s:o}", "call", c->name,
                                      "route", c->route->name, "method", c->body ? "POST" : "GET", "url", c->url,
                                      "model", c->model, "stream", c->stream, "status",
                                      c->answered ? json_integer(c->status) : json_null(), "content_type",
                                      c->content_type ? json_string(c->content_type) : json_null(), "bytes",
                                      (json_int_t) c->in.len, "latency_ms",
                                      (json_int_t) (c->latency_usec / USEC_PER_MSEC), "error",
                                      c->error == 0 ? json_null() : json_string(c->message ?: strerror(-c->error)),
                                      "checks", kb_preflight_checks_json(c->checks));
                if (!o || json_array_append_new(a, o) < 0) {
                        json_decref(a);
                        a = NULL;
                }
        }
        return a;
}

static json_t *check_json(const struct kb_preflight *p, kb_preflight_check i) {
        const struct pf_result *res = &p->results[i];
        static const char *const states[] = { [PF_SKIPPED] = "skipped", [PF_PASSED] = "passed",
                                              [PF_FAILED] = "failed" };
        json_t *o = json_pack("{s:s, s:s, s:s, s:o, s:s, s:I}", "name", kb_preflight_check_to_string(i), "title",
                              kb_preflight_check_title(i), "result", states[res->state], "ok",
                              res->state == PF_SKIPPED ? json_null() : json_boolean(res->state == PF_PASSED),
                              "detail", strempty(res->detail), "latency_ms", (json_int_t) res->latency_ms);

        if (o && res->parts && json_object_set(o, "parts", res->parts) < 0) {
                json_decref(o);
                return NULL;
        }
        /* the check's own evidence, beside the common members */
        if (o && res->extra && json_object_update_missing(o, res->extra) < 0) {
                json_decref(o);
                return NULL;
        }
        return o;
}

static json_t *latency_json(const struct kb_preflight *p) {
        uint64_t lat[KB_PREFLIGHT_MAX_CALLS], p50, max;
        size_t n = 0;

        for (size_t i = 0; i < p->n_calls; i++)
                if (p->calls[i].answered)
                        lat[n++] = p->calls[i].latency_usec;
        kb_preflight_latency_stats(lat, n, &p50, &max);
        return json_pack("{s:I, s:I, s:I}", "answered_calls", (json_int_t) n, "p50_ms",
                         (json_int_t) (p50 / USEC_PER_MSEC), "max_ms", (json_int_t) (max / USEC_PER_MSEC));
}

json_t *pf_evidence(struct kb_preflight *p, uint64_t finished_realtime, bool *ret_ok) {
        const struct kb_route *route = p->route;
        json_t *checks = json_array();
        const char *reported = NULL;
        bool all = true;

        for (kb_preflight_check i = 0; checks && i < _KB_CHECK_MAX; i++) {
                all = all && p->results[i].state != PF_FAILED;
                if (json_array_append_new(checks, check_json(p, i)) < 0) {
                        json_decref(checks);
                        checks = NULL;
                }
        }
        struct pf_call *main_call = pf_find(p, PF_MAIN, NULL, NULL);
        const struct kb_usage *u = pf_good_usage(main_call);
        if (u)
                reported = u->upstream_model;
        *ret_ok = all;
        return json_pack("{s:s, s:s, s:s, s:s, s:s?, s:o, s:s, s:o, s:o, s:I, s:b, s:o, s:o, s:o, s:o, s:o}", "route",
                         route->name, "base_url", route->base_url, "family",
                         strempty(kb_family_to_string(route->family)), "model", p->model, "model_reported", reported,
                         "key", p->key_label ? json_string(p->key_label) : json_null(), "bogus_model", p->bogus_model,
                         "started", pf_iso_json(p->started_realtime), "finished", pf_iso_json(finished_realtime),
                         "duration_ms", (json_int_t) ((kb_now_usec() - p->start_usec) / USEC_PER_MSEC), "ok", all,
                         "checked", kb_preflight_checks_json(p->checks), "skipped", kb_preflight_checks_json(KB_CHECK_ALL & ~p->checks), "checks",
                         checks, "calls", calls_json(p), "latency", latency_json(p));
}

/* ---- the file ---- */

int kb_preflight_save_evidence(const char *state_dir, const char *route, uint64_t realtime_usec, const json_t *doc,
                               char **ret_path) {
        _cleanup_free_ char *dir = NULL, *tmp = NULL, *text = NULL;
        char stamp[32];
        struct tm tm;
        time_t t = (time_t) (realtime_usec / USEC_PER_SEC);

        if (!state_dir || !route || !*route || strchr(route, '/') || route[0] == '.' || !doc)
                return -EINVAL;
        if (!gmtime_r(&t, &tm) || strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm) == 0)
                return -EOVERFLOW;
        if (asprintf(&dir, "%s/evidence", state_dir) < 0) {
                dir = NULL;
                return -ENOMEM;
        }
        if (mkdir(state_dir, 0700) < 0 && errno != EEXIST)
                return -errno;
        if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                return -errno;
        _cleanup_free_ char *dumped = json_dumps(doc, JSON_INDENT(2));
        if (!dumped || asprintf(&text, "%s\n", dumped) < 0) {
                text = NULL;
                return -ENOMEM;
        }
        if (asprintf(&tmp, "%s/.%s-%s.XXXXXX", dir, route, stamp) < 0) {
                tmp = NULL;
                return -ENOMEM;
        }
        _cleanup_close_ int fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
                return -errno;
        size_t len = strlen(text), off = 0;
        int r = 0;
        /* mkostemp makes it 0600 already; say so rather than rely on it. */
        if (fchmod(fd, 0600) < 0)
                r = -errno;
        while (r == 0 && off < len) {
                ssize_t w = write(fd, text + off, len - off);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0)
                        r = -errno;
                else
                        off += (size_t) w;
        }
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        /* link() never replaces a file: two runs in one second keep both. */
        for (unsigned n = 1; r == 0 && n <= 100; n++) {
                _cleanup_free_ char *path = NULL;
                int k = n == 1 ? asprintf(&path, "%s/%s-%s.json", dir, route, stamp)
                               : asprintf(&path, "%s/%s-%s-%u.json", dir, route, stamp, n);
                if (k < 0) {
                        path = NULL;
                        r = -ENOMEM;
                        break;
                }
                if (link(tmp, path) == 0) {
                        (void) unlink(tmp);
                        _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                        if (dfd >= 0)
                                (void) fsync(dfd);
                        *ret_path = TAKE_PTR(path);
                        return 0;
                }
                if (errno != EEXIST)
                        r = -errno;
                else if (n == 100)
                        r = -EEXIST;
        }
        (void) unlink(tmp);
        return r;
}
