/* SPDX-License-Identifier: MIT */
/* Named failure onsets for tests that need a route to go bad after a
 * while: PUT /mock/scripts/NAME {"after":N, "status":S, "delay_ms":D,
 * "delay_step_ms":X, "no_usage":true}; requests with x-mock-script: NAME
 * count toward it, and the k-th with k > N gets status S (the family's
 * error shape), a delay of D + X·(k − N) ms, or its usage numbers nulled.
 * One table under a mutex: the mock runs a thread per connection. */

#include "script.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <string.h>

#include "util.h"

#define PREFIX "/mock/scripts/"

struct script {
        bool used;
        char name[MOCK_SCRIPT_NAME_MAX + 1];
        uint64_t after, status, delay_ms, delay_step_ms;
        bool no_usage;
        uint64_t seen;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct script scripts[MOCK_SCRIPTS_MAX];

static bool name_valid(const char *s) {
        size_t n = strlen(s);
        return n > 0 && n <= MOCK_SCRIPT_NAME_MAX &&
                strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

/* Under the lock. */
static struct script *find(const char *name) {
        for (size_t i = 0; i < MOCK_SCRIPTS_MAX; i++)
                if (scripts[i].used && streq(scripts[i].name, name))
                        return &scripts[i];
        return NULL;
}

static json_t *script_json(const struct script *s) {
        return json_pack("{s:s, s:I, s:I, s:I, s:I, s:b, s:I}", "name", s->name, "after", (json_int_t) s->after,
                         "status", (json_int_t) s->status, "delay_ms", (json_int_t) s->delay_ms, "delay_step_ms",
                         (json_int_t) s->delay_step_ms, "no_usage", s->no_usage, "seen", (json_int_t) s->seen);
}

static bool knob(const json_t *body, const char *k, uint64_t max, uint64_t *ret) {
        json_t *v = json_object_get(body, k);
        if (!v)
                return true;
        if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t) json_integer_value(v) > max)
                return false;
        *ret = (uint64_t) json_integer_value(v);
        return true;
}

/* The script a PUT body describes; NULL *ret_why when it is one. */
static void parse(const struct mock_request *req, struct script *s, const char **ret_why) {
        json_t *body = req->body_len ? json_loadb(req->body, req->body_len, 0, NULL) : json_object();
        const char *k;
        json_t *v;

        *ret_why = NULL;
        if (!json_is_object(body))
                *ret_why = "the body is a JSON object: {\"after\":N, \"status\":S, \"delay_ms\":D, "
                           "\"delay_step_ms\":X, \"no_usage\":true}";
        json_object_foreach(body, k, v)
                if (!*ret_why && !streq(k, "after") && !streq(k, "status") && !streq(k, "delay_ms") &&
                    !streq(k, "delay_step_ms") && !streq(k, "no_usage"))
                        *ret_why = "unknown member (after, status, delay_ms, delay_step_ms, no_usage)";
        if (!*ret_why && (!knob(body, "after", UINT32_MAX, &s->after) ||
                          !knob(body, "delay_ms", MOCK_MAX_DELAY_MS, &s->delay_ms) ||
                          !knob(body, "delay_step_ms", MOCK_MAX_DELAY_MS, &s->delay_step_ms)))
                *ret_why = "after, delay_ms and delay_step_ms are integers (delays up to 600000 ms)";
        if (!*ret_why && (!knob(body, "status", 599, &s->status) || (s->status && s->status < 400)))
                *ret_why = "status is from 400 to 599";
        v = json_object_get(body, "no_usage");
        if (!*ret_why && v && !json_is_boolean(v))
                *ret_why = "no_usage is true or false";
        s->no_usage = json_is_true(v);
        json_decref(body);
}

static int control(struct mock_reply *r) {
        const char *name = r->req->path + strlen(PREFIX), *method = r->req->method, *why = NULL;
        struct script s = {};
        json_t *answer = NULL;
        int status = 200;

        if (!name_valid(name))
                return mock_fail(r, 400, NULL, "a script name is 1 to %d of A-Z a-z 0-9 . _ -", MOCK_SCRIPT_NAME_MAX);
        if (streq(method, "PUT")) {
                parse(r->req, &s, &why);
                if (why)
                        return mock_fail(r, 400, NULL, "%s", why);
        } else if (!streq(method, "DELETE") && !streq(method, "GET"))
                return mock_fail(r, 405, NULL, "PUT, GET or DELETE /mock/scripts/NAME");

        pthread_mutex_lock(&lock);
        struct script *cur = find(name);
        if (streq(method, "PUT")) {
                for (size_t i = 0; !cur && i < MOCK_SCRIPTS_MAX; i++)
                        if (!scripts[i].used)
                                cur = &scripts[i];
                if (cur) {
                        /* A script set again starts counting again. */
                        *cur = s;
                        cur->used = true;
                        snprintf(cur->name, sizeof(cur->name), "%s", name);
                        answer = script_json(cur);
                } else
                        why = "at most 64 scripts";
        } else if (!cur) {
                status = 404;
                why = "no such script";
        } else {
                answer = script_json(cur);
                if (streq(method, "DELETE")) {
                        json_object_set_new(answer, "deleted", json_true());
                        *cur = (struct script) {};
                }
        }
        pthread_mutex_unlock(&lock);
        if (why)
                return mock_fail(r, status == 200 ? 400 : status, NULL, "%s", why);
        return mock_send_json(r, 200, answer);
}

int mock_script_hook(struct mock_reply *r, uint64_t *delay_ms, uint64_t *ret_status) {
        if (strncmp(r->req->path, PREFIX, strlen(PREFIX)) == 0)
                return control(r);
        const char *name = mock_header(r->req, "x-mock-script");
        if (!name)
                return MOCK_SCRIPT_PASS;

        pthread_mutex_lock(&lock);
        struct script *s = find(name);
        if (s) {
                uint64_t k = ++s->seen;
                if (k > s->after) {
                        uint64_t extra = s->delay_step_ms * (k - s->after);
                        *delay_ms = MIN(*delay_ms + s->delay_ms + MIN(extra, MOCK_MAX_DELAY_MS), MOCK_MAX_DELAY_MS);
                        if (s->status)
                                *ret_status = s->status;
                        /* As x-mock-bad-usage: null: no number a broker could bill by. */
                        if (s->no_usage)
                                r->bad_usage = "null";
                }
        }
        pthread_mutex_unlock(&lock);
        return MOCK_SCRIPT_PASS;
}
