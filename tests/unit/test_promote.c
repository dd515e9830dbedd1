/* SPDX-License-Identifier: MIT */
/* The promoter (agent/promote*.c) without a daemon: plans, the weights of
 * each step, gates on a step's own traffic, the decisions, promotions.json
 * and baselines. Time is passed in, so holds are exact. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <sys/stat.h>

#include "config.h"
#include "helper.h"
#include "promote.h"
#include "router.h"
#include "util.h"

#define S USEC_PER_SEC

static const char config_text[] =
        "[route:a]\nfamily = openai\nbase_url = http://127.0.0.1:1/v1\n"
        "[route:b]\nfamily = openai\nbase_url = http://127.0.0.1:2/v1\n"
        "[route:c]\nfamily = openai\nbase_url = http://127.0.0.1:3/v1\n"
        "[route:z]\nfamily = anthropic\nbase_url = http://127.0.0.1:4/v1\n"
        "[model:m]\ntarget = a up-a weight=90\ntarget = b up-b weight=10\ntarget = c up-c weight=0\n"
        "[model:solo]\ntarget = c up-c weight=5\n"
        "[model:fam]\ntarget = a up-a weight=1\ntarget = z up-z weight=0\n";

struct fixture {
        struct kb_config *c;
        struct kb_router *r;
        struct kb_promoter *p;
        char events[64][160];
        size_t n;
};

static void on_event(void *userdata, const struct kb_promote_event *ev) {
        struct fixture *f = userdata;
        assert_true(f->n < ELEMENTSOF(f->events));
        snprintf(f->events[f->n++], sizeof(f->events[0]), "%s %u %s", kb_promote_event_to_string(ev->kind),
                 ev->view->percent, ev->gate ?: ev->weights_after ?: "-");
}

static int setup(void **state) {
        struct fixture *f = calloc(1, sizeof(*f));
        assert_non_null(f);
        f->c = kbt_config("t.conf", config_text);
        assert_int_equal(kb_router_new(&f->r), 0);
        assert_int_equal(kb_router_configure(f->r, f->c, 0), 0);
        assert_int_equal(kb_promoter_new(f->r, &f->p), 0);
        kb_promoter_configure(f->p, f->c, 0, 1000);
        kb_promoter_set_event_handler(f->p, on_event, f);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        struct fixture *f = *state;
        kb_promoter_free(f->p);
        kb_router_free(f->r);
        kb_config_unref(f->c);
        free(f);
        return 0;
}

static struct kb_promote_plan plan(const char *route, uint64_t hold, unsigned min) {
        struct kb_promote_plan p;
        kb_promote_plan_init(&p);
        p.route = route;
        p.steps[0] = 10;
        p.steps[1] = 50;
        p.steps[2] = 100;
        p.n_steps = 3;
        p.hold_usec = hold;
        p.min_requests = min;
        return p;
}

static char *weights(struct fixture *f, const char *model) {
        return kb_router_weights_string(f->r, kb_config_find_model(f->c, model));
}

static void obs(struct fixture *f, const char *route, kb_outcome o, long upstream, uint64_t ms, uint64_t in,
                uint64_t now) {
        struct kb_promote_obs ob = {
                .model = "m", .route = route, .upstream_model = streq(route, "c") ? "up-c" : "up-a", .outcome = o,
                .status = o == KB_OUTCOME_OK ? 200 : 502, .upstream_status = upstream, .latency_usec = ms * 1000,
                .input_tokens = in, .output_tokens = 3,
        };
        kb_promoter_observe(f->p, &ob, now, 1000);
}

static void test_plan_check(void **state) {
        struct kb_promote_plan p = plan("c", S, 1);
        const char *why = NULL;
        assert_int_equal(kb_promote_plan_check(&p, &why), 0);
        p.steps[1] = 5;
        assert_int_equal(kb_promote_plan_check(&p, &why), -EINVAL);
        assert_string_equal(why, "steps must be strictly increasing");
        p = plan("c", S, 1);
        p.steps[2] = 90;
        assert_int_equal(kb_promote_plan_check(&p, &why), -EINVAL);
        assert_string_equal(why, "the last step must be 100");
        p = plan("c", S, 1);
        p.steps[0] = 0;
        assert_int_equal(kb_promote_plan_check(&p, &why), -EINVAL);
        p = plan("c", S, 1);
        p.steps[2] = 101;
        assert_int_equal(kb_promote_plan_check(&p, &why), -EINVAL);
        p = plan("c", 0, 1);
        assert_int_equal(kb_promote_plan_check(&p, &why), -EINVAL);
        assert_string_equal(why, "the hold must be longer than 0");
        p = plan("c", S, 1);
        p.max_error_ratio = 1.01;
        assert_int_equal(kb_promote_plan_check(&p, &why), -EINVAL);
        p.max_error_ratio = -0.0001;
        assert_int_equal(kb_promote_plan_check(&p, &why), -EINVAL);
        p = plan("c", S, 0);
        assert_int_equal(kb_promote_plan_check(&p, &why), -EINVAL);
        p = plan("c", S, 1);
        p.n_steps = 0;
        assert_int_equal(kb_promote_plan_check(&p, &why), -EINVAL);
        assert_string_equal(why, "give at least one step");
        (void) state;
}

static void test_start_errors(void **state) {
        struct fixture *f = *state;
        struct kb_promote_plan p = plan("c", S, 1);
        char *err = NULL;

        assert_int_equal(kb_promoter_start(f->p, "nosuch", &p, 0, 0, 1000, &err), -ENOENT);
        free(err);
        p.route = "nosuch";
        assert_int_equal(kb_promoter_start(f->p, "m", &p, 0, 0, 1000, &err), -ENXIO);
        free(err);
        p.route = "z";
        assert_int_equal(kb_promoter_start(f->p, "m", &p, 0, 0, 1000, &err), -ESRCH);
        assert_non_null(strstr(err, "target = z UPSTREAM_MODEL weight=0"));
        free(err);
        assert_int_equal(kb_promoter_start(f->p, "fam", &p, 0, 0, 1000, &err), -EPROTOTYPE);
        free(err);
        p.route = "c";
        assert_int_equal(kb_promoter_start(f->p, "solo", &p, 0, 0, 1000, &err), -EDOM);
        free(err);
        assert_int_equal(f->n, 0);
        assert_int_equal(kb_promoter_start(f->p, "m", &p, 0, 0, 1000, NULL), 0);
        assert_int_equal(kb_promoter_start(f->p, "m", &p, 0, 0, 1000, &err), -EEXIST);
        free(err);
        assert_int_equal(kb_promoter_abort(f->p, "m", 0, 1, 1000), 0);
        assert_int_equal(kb_promoter_abort(f->p, "m", 0, 1, 1000), -ENOENT);
}

static void test_steps_to_completion(void **state) {
        struct fixture *f = *state;
        struct kb_promote_plan p = plan("c", 10 * S, 2);
        _cleanup_free_ char *w0 = NULL, *w1 = NULL, *w2 = NULL, *w3 = NULL;

        assert_int_equal(kb_promoter_start(f->p, "m", &p, 0, 0, 1000, NULL), 0);
        /* 90/10 from before: 10% keeps their 9:1, in tenths of a percent */
        w0 = weights(f, "m");
        assert_string_equal(w0, "a=810,b=90,c=100");
        assert_string_equal(f->events[0], "started 10 a=810,b=90,c=100");
        assert_string_equal(f->events[1], "step_reached 10 a=810,b=90,c=100");
        /* enough requests, the hold not over: stays */
        obs(f, "c", KB_OUTCOME_OK, 200, 10, 5, 1 * S);
        obs(f, "c", KB_OUTCOME_OK, 200, 10, 5, 2 * S);
        obs(f, "a", KB_OUTCOME_UPSTREAM_ERROR, 500, 10, 0, 2 * S); /* not the candidate */
        kb_promoter_tick(f->p, 9 * S, 1000);
        assert_int_equal(f->n, 2);
        kb_promoter_tick(f->p, 10 * S, 1000);
        assert_int_equal(f->n, 4);
        assert_string_equal(f->events[2], "gate 10 all");
        w1 = weights(f, "m");
        assert_string_equal(w1, "a=450,b=50,c=500");
        /* the new step counts from zero: its hold is over, not its requests */
        kb_promoter_tick(f->p, 25 * S, 1000);
        assert_int_equal(f->n, 4);
        obs(f, "c", KB_OUTCOME_OK, 200, 10, 5, 25 * S);
        obs(f, "c", KB_OUTCOME_OK, 200, 10, 5, 25 * S);
        /* a request judges the counting gates only: a step ends at a tick */
        assert_int_equal(f->n, 4);
        kb_promoter_tick(f->p, 25 * S, 1000);
        assert_string_equal(f->events[f->n - 1], "step_reached 100 a=0,b=0,c=1000");
        w2 = weights(f, "m");
        assert_string_equal(w2, "a=0,b=0,c=1000");
        obs(f, "c", KB_OUTCOME_OK, 200, 10, 5, 40 * S);
        obs(f, "c", KB_OUTCOME_OK, 200, 10, 5, 40 * S);
        kb_promoter_tick(f->p, 40 * S, 1000);
        assert_string_equal(f->events[f->n - 1], "completed 100 a=0,b=0,c=1000");
        struct kb_promote_view v;
        assert_int_equal(kb_promoter_view(f->p, "m", 41 * S, &v), 0);
        assert_int_equal(v.state, KB_PROMOTE_COMPLETED);
        assert_false(kb_promoter_running(f->p));
        w3 = weights(f, "m");
        assert_string_equal(w3, "a=0,b=0,c=1000");
}

static void test_rollbacks(void **state) {
        struct fixture *f = *state;
        struct kb_promote_plan p = plan("c", 3600 * S, 4);
        struct kb_promote_view v;

        /* error ratio: only once the minimum is in */
        assert_int_equal(kb_promoter_start(f->p, "m", &p, 0, 0, 1000, NULL), 0);
        obs(f, "c", KB_OUTCOME_UPSTREAM_ERROR, 429, 10, 0, S);
        obs(f, "c", KB_OUTCOME_UPSTREAM_TIMEOUT, 0, 10, 0, S);
        obs(f, "c", KB_OUTCOME_CLIENT_ABORT, 0, 10, 0, S); /* says nothing of the route */
        assert_int_equal(kb_promoter_view(f->p, "m", S, &v), 0);
        assert_int_equal(v.state, KB_PROMOTE_RUNNING);
        assert_int_equal(v.fig.requests, 2);
        assert_int_equal(v.fig.upstream_429, 1);
        assert_int_equal(v.fig.timeouts, 1);
        assert_int_equal(v.gates[0].state, KB_GATE_PENDING);
        obs(f, "c", KB_OUTCOME_OK, 200, 10, 5, S);
        obs(f, "c", KB_OUTCOME_OK, 200, 10, 5, S);
        assert_int_equal(kb_promoter_view(f->p, "m", S, &v), 0);
        assert_int_equal(v.state, KB_PROMOTE_ROLLED_BACK);
        assert_string_equal(f->events[f->n - 2], "gate 10 error_ratio");
        assert_string_equal(f->events[f->n - 1], "rolled_back 10 a=90,b=10,c=0");
        _cleanup_free_ char *w = weights(f, "m");
        assert_string_equal(w, "a=90,b=10,c=0");

        /* model not found: at once */
        assert_int_equal(kb_promoter_start(f->p, "m", &p, 0, 2 * S, 1000, NULL), 0);
        obs(f, "c", KB_OUTCOME_UPSTREAM_ERROR, 404, 10, 0, 2 * S);
        assert_int_equal(kb_promoter_view(f->p, "m", 2 * S, &v), 0);
        assert_int_equal(v.state, KB_PROMOTE_ROLLED_BACK);

        /* missing usage with require_usage: at once */
        p.require_usage = true;
        assert_int_equal(kb_promoter_start(f->p, "m", &p, 0, 3 * S, 1000, NULL), 0);
        obs(f, "c", KB_OUTCOME_OK, 200, 10, 0, 3 * S);
        assert_string_equal(f->events[f->n - 2], "gate 10 usage");

        /* p95 */
        p.require_usage = false;
        p.max_p95_ms = 100;
        assert_int_equal(kb_promoter_start(f->p, "m", &p, 0, 4 * S, 1000, NULL), 0);
        for (unsigned i = 0; i < 3; i++)
                obs(f, "c", KB_OUTCOME_OK, 200, 50, 5, 4 * S);
        assert_true(kb_promoter_running(f->p));
        obs(f, "c", KB_OUTCOME_OK, 200, 500, 5, 4 * S);
        /* the p95 is taken at the next tick, within a second */
        assert_true(kb_promoter_running(f->p));
        kb_promoter_tick(f->p, 4 * S, 1000);
        assert_string_equal(f->events[f->n - 2], "gate 10 p95_ms");
        assert_false(kb_promoter_running(f->p));

        /* a fall-over from the candidate is its failure */
        p.max_p95_ms = 0;
        p.min_requests = 1;
        assert_int_equal(kb_promoter_start(f->p, "m", &p, 0, 5 * S, 1000, NULL), 0);
        struct kb_promote_obs ob = { .model = "m", .route = "a", .upstream_model = "up-a", .fallback_from = "b,c",
                                     .outcome = KB_OUTCOME_OK, .status = 200, .input_tokens = 3 };
        kb_promoter_observe(f->p, &ob, 5 * S, 1000);
        assert_false(kb_promoter_running(f->p));
}

static void test_state_roundtrip(void **state) {
        struct fixture *f = *state;
        struct kb_promote_plan p = plan("c", 3600 * S, 50);
        struct kb_promote_view v;
        struct kb_baseline b;
        const char *why = NULL;

        assert_int_equal(kb_promoter_start(f->p, "m", &p, 7, 0, 1000, NULL), 0);
        obs(f, "c", KB_OUTCOME_OK, 200, 10, 5, S);
        kb_promoter_tick(f->p, 3700 * S, 1000); /* the hold is over, the requests are not in */
        obs(f, "c", KB_OUTCOME_OK, 200, 10, 5, 3700 * S);
        json_t *body = json_pack("{s:[s], s:i, s:{s:i}, s:f, s:i, s:i, s:f, s:f, s:f}", "routes", "a", "requests", 10,
                                 "errors", "upstream_error", 1, "error_ratio", 0.1, "p50_ms", 10, "p95_ms", 20,
                                 "input_tokens_per_request", 5.0, "output_tokens_per_request", 3.0,
                                 "cost_microusd_per_request", 1.5);
        assert_int_equal(kb_baseline_from_json(body, &b, &why), 0);
        json_decref(body);
        assert_int_equal(kb_promoter_set_baseline(f->p, "m", &b), 0);
        json_t *doc = kb_promoter_to_json(f->p);
        assert_non_null(doc);

        /* a new router and promoter, as after a restart */
        struct fixture g = {};
        g.c = f->c;
        assert_int_equal(kb_router_new(&g.r), 0);
        assert_int_equal(kb_router_configure(g.r, g.c, 0), 0);
        assert_int_equal(kb_promoter_new(g.r, &g.p), 0);
        kb_promoter_configure(g.p, g.c, 0, 2000);
        kb_promoter_set_event_handler(g.p, on_event, &g);
        assert_int_equal(kb_promoter_load_json(g.p, doc, 10 * S, 2000), 1);
        json_decref(doc);
        assert_string_equal(g.events[0], "step_reached 10 a=810,b=90,c=100");
        assert_int_equal(kb_promoter_view(g.p, "m", 10 * S, &v), 0);
        assert_int_equal(v.state, KB_PROMOTE_RUNNING);
        assert_int_equal(v.fig.requests, 0);    /* counters start again */
        assert_int_equal(v.hold_left_usec, 3600 * S);
        assert_int_equal(v.admin_uid, 7);
        assert_int_equal(v.n_before, 3);
        const struct kb_baseline *bl = kb_promoter_baseline(g.p, "m");
        assert_non_null(bl);
        assert_int_equal(bl->p95_ms, 20);
        _cleanup_free_ char *cmp = kb_promote_compare_text(&v.fig, bl);
        assert_string_equal(cmp, "error ratio 0.000 (baseline 0.100, lower); p95 - (baseline 20 ms); input "
                                 "tokens/request 0.0 (baseline 5.0), output 0.0 (baseline 3.0)");
        assert_int_equal(kb_promoter_abort(g.p, "m", 0, 11 * S, 2000), 0);
        _cleanup_free_ char *w = kb_router_weights_string(g.r, kb_config_find_model(g.c, "m"));
        assert_string_equal(w, "a=90,b=10,c=0");
        kb_promoter_free(g.p);
        kb_router_free(g.r);

        json_t *bad = json_pack("{s:i, s:[], s:[]}", "version", 2, "promotions", "baselines");
        assert_int_equal(kb_promoter_load_json(f->p, bad, 0, 0), -EBADMSG);
        json_decref(bad);
}

static void test_reconfigure_aborts(void **state) {
        struct fixture *f = *state;
        struct kb_promote_plan p = plan("c", 3600 * S, 50);
        struct kb_config *c2 = NULL;
        struct kb_promote_view v;

        assert_int_equal(kb_promoter_start(f->p, "m", &p, 0, 0, 1000, NULL), 0);
        c2 = kbt_config("t2.conf", "[route:a]\nfamily = openai\nbase_url = http://127.0.0.1:1/v1\n"
                                   "[route:b]\nfamily = openai\nbase_url = http://127.0.0.1:2/v1\n"
                                   "[model:m]\ntarget = a up-a weight=90\ntarget = b up-b weight=10\n");
        assert_int_equal(kb_router_configure(f->r, c2, 0), 0);
        kb_promoter_configure(f->p, c2, S, 1000);
        assert_int_equal(kb_promoter_view(f->p, "m", S, &v), 0);
        assert_int_equal(v.state, KB_PROMOTE_ABORTED);
        assert_non_null(strstr(v.reason, "route 'c' is no longer configured"));
        _cleanup_free_ char *w = kb_router_weights_string(f->r, kb_config_find_model(c2, "m"));
        assert_string_equal(w, "a=90,b=10");
        kb_config_unref(c2);
}

static void test_baseline_checks(void **state) {
        static const char *const bad[] = {
                "{}",
                "{\"routes\":[\"a\"],\"requests\":0,\"errors\":{},\"error_ratio\":0,\"input_tokens_per_request\":1,"
                "\"output_tokens_per_request\":1,\"cost_microusd_per_request\":0}",
                "{\"routes\":[],\"requests\":1,\"errors\":{},\"error_ratio\":0,\"input_tokens_per_request\":1,"
                "\"output_tokens_per_request\":1,\"cost_microusd_per_request\":0}",
                "{\"routes\":[\"a\"],\"requests\":1,\"errors\":{},\"error_ratio\":2,\"input_tokens_per_request\":1,"
                "\"output_tokens_per_request\":1,\"cost_microusd_per_request\":0}",
                "{\"routes\":[\"a\"],\"requests\":1,\"errors\":{},\"error_ratio\":0,\"input_tokens_per_request\":1,"
                "\"output_tokens_per_request\":1,\"cost_microusd_per_request\":0,\"x\":1}",
                "[]",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                struct kb_baseline b;
                const char *why = NULL;
                json_t *j = json_loads(bad[i], 0, NULL);
                assert_int_equal(kb_baseline_from_json(j, &b, &why), -EINVAL);
                assert_non_null(why);
                json_decref(j);
        }
        (void) state;
}

static void test_state_file(void **state) {
        char dir[64], path[96];
        struct stat st;
        json_t *doc = json_pack("{s:i}", "version", 1), *back = NULL;

        kbt_mkdtemp(dir, sizeof(dir), "promote");
        snprintf(path, sizeof(path), "%s/promotions.json", dir);
        assert_int_equal(kb_promote_read_file(path, &back), 0);
        assert_null(back);
        assert_int_equal(kb_promote_write_file(path, doc), 0);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0600);
        assert_int_equal(kb_promote_read_file(path, &back), 0);
        assert_true(json_equal(doc, back));
        json_decref(back);
        json_decref(doc);
        (void) kbt_rm_rf(dir);
        (void) state;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_plan_check),
                cmocka_unit_test_setup_teardown(test_start_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_steps_to_completion, setup, teardown),
                cmocka_unit_test_setup_teardown(test_rollbacks, setup, teardown),
                cmocka_unit_test_setup_teardown(test_state_roundtrip, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reconfigure_aborts, setup, teardown),
                cmocka_unit_test(test_baseline_checks),
                cmocka_unit_test(test_state_file),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
