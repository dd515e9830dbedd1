/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "broker.h"
#include "config.h"
#include "helper.h"
#include "router.h"
#include "routing.h"
#include "util.h"

#define S USEC_PER_SEC

static const char base_config[] =
        "[route:a]\n"
        "family = openai\n"
        "base_url = http://127.0.0.1:1/v1\n"
        "breaker_failures = 3\n"
        "breaker_error_ratio = 0.5\n"
        "breaker_window = 10s\n"
        "breaker_min_requests = 10\n"
        "breaker_cooldown = 5s\n"
        "timeout = 1s\n"
        "connect_timeout = 1s\n"
        "[route:b]\n"
        "family = openai\n"
        "base_url = http://127.0.0.1:2/v1\n"
        "breaker_failures = 0\n"
        "breaker_error_ratio = 0.5\n"
        "breaker_window = 10s\n"
        "breaker_min_requests = 10\n"
        "[route:c]\n"
        "family = openai\n"
        "base_url = http://127.0.0.1:3/v1\n"
        "[route:d]\n"
        "family = anthropic\n"
        "base_url = http://127.0.0.1:4/v1\n"
        "[model:m]\n"
        "target = a up-a weight=90\n"
        "target = b up-b weight=10 rollback_on_error_ratio=0.2 min_requests=10\n"
        "fallback = c up-c\n"
        "fallback = a up-a\n"
        "fallback = d up-d\n"
        "[model:solo]\n"
        "target = b up-b rollback_on_error_ratio=0.1 min_requests=2\n"
        "[model:zero]\n"
        "target = a up-a weight=0\n"
        "[model:twice]\n"
        "target = a x weight=1\n"
        "target = a y weight=1\n";

struct fixture {
        struct kb_config *c;
        struct kb_router *r;
        struct kb_route_event events[32];
        char *weights[32];
        char *routes[32];
        size_t n_events;
};

static void on_event(void *userdata, const struct kb_route_event *ev) {
        struct fixture *f = userdata;
        assert_true(f->n_events < ELEMENTSOF(f->events));
        f->events[f->n_events] = *ev;
        f->weights[f->n_events] = ev->weights ? strdup(ev->weights) : NULL;
        f->routes[f->n_events] = ev->route ? strdup(ev->route) : NULL;
        f->events[f->n_events].weights = f->weights[f->n_events];
        f->events[f->n_events].route = f->routes[f->n_events];
        f->events[f->n_events].reason = NULL;
        f->events[f->n_events].model = NULL;
        f->n_events++;
}

static int setup(void **state) {
        struct fixture *f = calloc(1, sizeof(*f));
        assert_non_null(f);
        f->c = kbt_config("t.conf", base_config);
        assert_int_equal(kb_router_new(&f->r), 0);
        assert_int_equal(kb_router_configure(f->r, f->c, 0), 0);
        kb_router_set_event_handler(f->r, on_event, f);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        struct fixture *f = *state;
        for (size_t i = 0; i < f->n_events; i++) {
                free(f->weights[i]);
                free(f->routes[i]);
        }
        kb_router_free(f->r);
        kb_config_unref(f->c);
        free(f);
        return 0;
}

static void feed(struct kb_router *r, const char *route, kb_verdict v, bool probe, uint64_t now) {
        struct kb_attempt_result a = { .route = route, .verdict = v, .probe = probe };
        kb_router_feedback(r, &a, now);
}

static void feed_target(struct kb_router *r, const char *model, const char *route, const char *up, kb_verdict v,
                        bool fallback) {
        struct kb_attempt_result a = {
                .route = route, .model = model, .upstream_model = up, .verdict = v, .fallback = fallback,
        };
        kb_router_feedback(r, &a, 1);
}

static kb_circuit circuit(struct kb_router *r, const char *route, uint64_t now) {
        struct kb_route_view v;
        assert_int_equal(kb_router_route_view(r, route, now, &v), 0);
        return v.circuit;
}

static void test_breaker_consecutive(void **state) {
        struct fixture *f = *state;
        struct kb_router *r = f->r;

        assert_int_equal(kb_router_acquire(r, "a", 1 * S), 0);
        feed(r, "a", KB_VERDICT_FAILURE, false, 1 * S);
        feed(r, "a", KB_VERDICT_FAILURE, false, 1 * S);
        /* a success in between resets the run */
        feed(r, "a", KB_VERDICT_SUCCESS, false, 1 * S);
        feed(r, "a", KB_VERDICT_FAILURE, false, 1 * S);
        feed(r, "a", KB_VERDICT_FAILURE, false, 1 * S);
        assert_int_equal(f->n_events, 0);
        assert_int_equal(circuit(r, "a", 1 * S), KB_CIRCUIT_CLOSED);
        feed(r, "a", KB_VERDICT_FAILURE, false, 2 * S);
        assert_int_equal(f->n_events, 1);
        assert_int_equal(f->events[0].kind, KB_ROUTE_CIRCUIT_OPENED);
        assert_string_equal(f->events[0].route, "a");
        assert_int_equal(f->events[0].consecutive_failures, 3);

        /* open: skipped at once, until the cooldown (5 s) is over */
        assert_false(kb_router_allows(r, "a", 2 * S));
        assert_int_equal(kb_router_acquire(r, "a", 2 * S), -EAGAIN);
        assert_int_equal(kb_router_acquire(r, "a", 7 * S - 1), -EAGAIN);
        assert_int_equal(circuit(r, "a", 7 * S - 1), KB_CIRCUIT_OPEN);
        assert_int_equal(circuit(r, "a", 7 * S), KB_CIRCUIT_HALF_OPEN);
        /* results of attempts begun before it opened change nothing */
        feed(r, "a", KB_VERDICT_SUCCESS, false, 3 * S);
        assert_int_equal(circuit(r, "a", 3 * S), KB_CIRCUIT_OPEN);

        /* half-open: exactly one probe */
        assert_true(kb_router_allows(r, "a", 7 * S));
        assert_int_equal(kb_router_acquire(r, "a", 7 * S), 1);
        assert_int_equal(f->n_events, 2);
        assert_int_equal(f->events[1].kind, KB_ROUTE_CIRCUIT_HALF_OPEN);
        assert_false(kb_router_allows(r, "a", 7 * S));
        assert_int_equal(kb_router_acquire(r, "a", 7 * S), -EAGAIN);
        /* a non-probe result does not decide */
        feed(r, "a", KB_VERDICT_SUCCESS, false, 7 * S);
        assert_int_equal(kb_router_acquire(r, "a", 7 * S), -EAGAIN);

        /* probe fails: open again, for a new cooldown */
        feed(r, "a", KB_VERDICT_FAILURE, true, 8 * S);
        assert_int_equal(f->n_events, 3);
        assert_int_equal(f->events[2].kind, KB_ROUTE_CIRCUIT_OPENED);
        assert_int_equal(kb_router_acquire(r, "a", 12 * S), -EAGAIN);
        assert_int_equal(kb_router_acquire(r, "a", 13 * S), 1);

        /* a probe that ends without a verdict hands the slot back */
        feed(r, "a", KB_VERDICT_NONE, true, 13 * S);
        assert_int_equal(kb_router_acquire(r, "a", 13 * S), 1);

        /* probe succeeds: closed, counters reset */
        feed(r, "a", KB_VERDICT_SUCCESS, true, 14 * S);
        assert_int_equal(f->events[f->n_events - 1].kind, KB_ROUTE_CIRCUIT_CLOSED);
        assert_int_equal(circuit(r, "a", 14 * S), KB_CIRCUIT_CLOSED);
        assert_int_equal(kb_router_acquire(r, "a", 14 * S), 0);
        assert_int_equal(kb_router_acquire(r, "a", 14 * S), 0);
        feed(r, "a", KB_VERDICT_FAILURE, false, 14 * S);
        assert_int_equal(circuit(r, "a", 14 * S), KB_CIRCUIT_CLOSED);

        /* an unknown route is never in the way */
        assert_true(kb_router_allows(r, "nosuch", 0));
        assert_int_equal(kb_router_acquire(r, "nosuch", 0), 0);
        feed(r, "nosuch", KB_VERDICT_FAILURE, false, 0);
}

static void test_breaker_ratio(void **state) {
        struct fixture *f = *state;
        struct kb_router *r = f->r;
        struct kb_route_view v;

        /* b: no consecutive limit; ratio 0.5 over 10 s with at least 10 attempts */
        for (int i = 0; i < 5; i++)
                feed(r, "b", KB_VERDICT_SUCCESS, false, 100 * S);
        for (int i = 0; i < 4; i++)
                feed(r, "b", KB_VERDICT_FAILURE, false, 100 * S);
        assert_int_equal(f->n_events, 0);
        assert_int_equal(kb_router_route_view(r, "b", 100 * S, &v), 0);
        assert_int_equal(v.window_requests, 9);
        assert_int_equal(v.window_failures, 4);
        assert_int_equal(v.consecutive_failures, 4);
        feed(r, "b", KB_VERDICT_FAILURE, false, 101 * S);
        assert_int_equal(f->n_events, 1);
        assert_int_equal(f->events[0].kind, KB_ROUTE_CIRCUIT_OPENED);
        assert_int_equal(f->events[0].requests, 10);
        assert_true(f->events[0].error_ratio > 0.49 && f->events[0].error_ratio < 0.51);
}

static void test_breaker_window_slides(void **state) {
        struct fixture *f = *state;
        struct kb_router *r = f->r;
        struct kb_route_view v;

        /* 9 failures, then they age out of the 10 s window */
        for (int i = 0; i < 9; i++)
                feed(r, "b", KB_VERDICT_FAILURE, false, 50 * S);
        assert_int_equal(kb_router_route_view(r, "b", 55 * S, &v), 0);
        assert_int_equal(v.window_requests, 9);
        assert_true(v.error_ratio > 0.99);
        assert_int_equal(kb_router_route_view(r, "b", 61 * S, &v), 0);
        assert_int_equal(v.window_requests, 0);
        assert_true(v.error_ratio == 0);
        /* so 9 successes and 1 failure later the ratio is 0.1: still closed */
        for (int i = 0; i < 9; i++)
                feed(r, "b", KB_VERDICT_SUCCESS, false, 61 * S);
        feed(r, "b", KB_VERDICT_FAILURE, false, 61 * S);
        assert_int_equal(f->n_events, 0);
        assert_int_equal(circuit(r, "b", 61 * S), KB_CIRCUIT_CLOSED);
}

static void test_latency(void **state) {
        struct fixture *f = *state;
        struct kb_route_view v;

        assert_int_equal(kb_router_route_view(f->r, "c", 0, &v), 0);
        assert_false(v.has_p50);
        uint64_t lat[] = { 30, 10, 20, 1000, 40 };
        for (size_t i = 0; i < ELEMENTSOF(lat); i++) {
                struct kb_attempt_result a = { .route = "c", .verdict = KB_VERDICT_SUCCESS, .has_latency = true,
                                               .latency_usec = lat[i] * USEC_PER_MSEC };
                kb_router_feedback(f->r, &a, 1);
        }
        assert_int_equal(kb_router_route_view(f->r, "c", 1, &v), 0);
        assert_true(v.has_p50);
        assert_int_equal(v.p50_usec, 30 * USEC_PER_MSEC);
        /* the ring keeps the most recent ones */
        for (size_t i = 0; i < KB_ROUTER_LATENCY_RING; i++) {
                struct kb_attempt_result a = { .route = "c", .verdict = KB_VERDICT_SUCCESS, .has_latency = true,
                                               .latency_usec = 7 };
                kb_router_feedback(f->r, &a, 1);
        }
        assert_int_equal(kb_router_route_view(f->r, "c", 1, &v), 0);
        assert_int_equal(v.p50_usec, 7);
        assert_int_equal(kb_router_route_view(f->r, "nosuch", 1, &v), -ENOENT);
}

static void test_canary(void **state) {
        struct fixture *f = *state;
        const struct kb_model *m = kb_config_find_model(f->c, "m");

        /* 2 of 10 = 0.2: not above the stop condition */
        for (int i = 0; i < 8; i++)
                feed_target(f->r, "m", "b", "up-b", KB_VERDICT_SUCCESS, false);
        for (int i = 0; i < 2; i++)
                feed_target(f->r, "m", "b", "up-b", KB_VERDICT_FAILURE, false);
        /* attempts as a fallback or without a verdict are not the canary's */
        feed_target(f->r, "m", "b", "up-b", KB_VERDICT_NONE, false);
        feed_target(f->r, "m", "c", "up-c", KB_VERDICT_FAILURE, true);
        assert_int_equal(f->n_events, 0);
        assert_int_equal(kb_router_weight(f->r, m, &m->targets[1], NULL), 10);
        /* the oldest success leaves the window of 10: 3 of 10 */
        feed_target(f->r, "m", "b", "up-b", KB_VERDICT_FAILURE, false);
        assert_int_equal(f->n_events, 1);
        assert_int_equal(f->events[0].kind, KB_ROUTE_CANARY_ROLLED_BACK);
        assert_string_equal(f->events[0].route, "b");
        assert_string_equal(f->events[0].weights, "a=90,b=0");
        assert_int_equal(f->events[0].requests, 10);
        bool over = false;
        assert_int_equal(kb_router_weight(f->r, m, &m->targets[1], &over), 0);
        assert_true(over);
        /* once: more failures change nothing */
        feed_target(f->r, "m", "b", "up-b", KB_VERDICT_FAILURE, false);
        assert_int_equal(f->n_events, 1);
        /* no plan sends it traffic any more */
        for (uint32_t rnd = 0; rnd < 64; rnd++) {
                struct kb_candidate c[8];
                int n = kb_router_plan(f->r, m, KB_FAMILY_OPENAI, rnd << 26, 1, c, ELEMENTSOF(c));
                assert_int_equal(n, 2);
                assert_string_equal(c[0].target->route->name, "a");
                assert_string_equal(c[1].target->route->name, "c");
        }

        /* a canary that is the only target is never rolled back to nothing */
        const struct kb_model *solo = kb_config_find_model(f->c, "solo");
        for (int i = 0; i < 4; i++)
                feed_target(f->r, "solo", "b", "up-b", KB_VERDICT_FAILURE, false);
        /* (route b's own circuit may open meanwhile: that is the breaker's business) */
        for (size_t i = 1; i < f->n_events; i++)
                assert_int_not_equal(f->events[i].kind, KB_ROUTE_CANARY_ROLLED_BACK);
        assert_int_equal(kb_router_weight(f->r, solo, &solo->targets[0], NULL), 1);
}

static const char *route_of(const struct kb_candidate *c) {
        return c->target->route->name;
}

static void test_plan(void **state) {
        struct fixture *f = *state;
        const struct kb_model *m = kb_config_find_model(f->c, "m");
        struct kb_candidate c[KB_ROUTER_MAX_CANDIDATES];

        /* rnd 0 falls on a (weight 90), the top of the range on b (10) */
        assert_int_equal(kb_router_plan(f->r, m, KB_FAMILY_OPENAI, 0, 1, c, ELEMENTSOF(c)), 3);
        assert_string_equal(route_of(&c[0]), "a");
        assert_false(c[0].fallback);
        assert_string_equal(route_of(&c[1]), "b");
        assert_string_equal(route_of(&c[2]), "c");
        assert_true(c[2].fallback); /* "fallback = a up-a" repeats a target; "d" is anthropic */
        assert_int_equal(kb_router_plan(f->r, m, KB_FAMILY_OPENAI, UINT32_MAX, 1, c, ELEMENTSOF(c)), 3);
        assert_string_equal(route_of(&c[0]), "b");
        assert_string_equal(route_of(&c[1]), "a");
        assert_string_equal(route_of(&c[2]), "c");
        /* max bounds what is stored */
        assert_int_equal(kb_router_plan(f->r, m, KB_FAMILY_OPENAI, 0, 1, c, 1), 1);

        /* the other family: only its fallback */
        assert_int_equal(kb_router_plan(f->r, m, KB_FAMILY_ANTHROPIC, 0, 1, c, ELEMENTSOF(c)), 1);
        assert_string_equal(route_of(&c[0]), "d");
        assert_int_equal(kb_router_plan(f->r, kb_config_find_model(f->c, "solo"), KB_FAMILY_ANTHROPIC, 0, 1, c,
                                        ELEMENTSOF(c)), -ENOENT);
        /* weight 0 everywhere and no fallback */
        assert_int_equal(kb_router_plan(f->r, kb_config_find_model(f->c, "zero"), KB_FAMILY_OPENAI, 0, 1, c,
                                        ELEMENTSOF(c)), -ENXIO);
        assert_int_equal(kb_router_plan(f->r, m, KB_FAMILY_OPENAI, 0, 1, c, 0), -EINVAL);

        /* a's circuit open: the weighted choice is among the healthy (b),
         * a stays in the list (skipped when tried) */
        for (int i = 0; i < 3; i++)
                feed(f->r, "a", KB_VERDICT_FAILURE, false, 1);
        for (uint32_t rnd = 0; rnd < 16; rnd++) {
                assert_int_equal(kb_router_plan(f->r, m, KB_FAMILY_OPENAI, rnd << 28, 2, c, ELEMENTSOF(c)), 3);
                assert_string_equal(route_of(&c[0]), "b");
                assert_string_equal(route_of(&c[1]), "a");
        }

        /* without a router: config weights, every circuit closed */
        assert_int_equal(kb_router_plan(NULL, m, KB_FAMILY_OPENAI, 0, 1, c, ELEMENTSOF(c)), 3);
        assert_string_equal(route_of(&c[0]), "a");
}

static void test_plan_weights(void **state) {
        struct fixture *f = *state;
        const struct kb_model *m = kb_config_find_model(f->c, "m");
        struct kb_candidate c[8];
        unsigned a = 0;

        /* evenly spread rnd values: exactly 90 % on a */
        for (uint64_t i = 0; i < 1000; i++) {
                assert_int_equal(kb_router_plan(f->r, m, KB_FAMILY_OPENAI, (uint32_t) (((i << 32) + 999) / 1000), 1,
                                                c, ELEMENTSOF(c)), 3);
                a += streq(route_of(&c[0]), "a");
        }
        assert_int_equal(a, 900);
}

static void test_split(void **state) {
        struct fixture *f = *state;
        const struct kb_model *m = kb_config_find_model(f->c, "m");
        const char *why = NULL;

        struct kb_split_entry bad_name[] = { { "nosuch", 1 } };
        assert_int_equal(kb_router_set_split(f->r, m, bad_name, 1, 0, &why), -ENOENT);
        assert_non_null(why);
        struct kb_split_entry fallback_only[] = { { "c", 1 } };
        assert_int_equal(kb_router_set_split(f->r, m, fallback_only, 1, 0, NULL), -ENOENT);
        struct kb_split_entry twice[] = { { "a", 1 }, { "a", 2 } };
        assert_int_equal(kb_router_set_split(f->r, m, twice, 2, 0, NULL), -EINVAL);
        struct kb_split_entry big[] = { { "a", 1000001 } };
        assert_int_equal(kb_router_set_split(f->r, m, big, 1, 0, NULL), -EINVAL);
        struct kb_split_entry zero[] = { { "a", 0 }, { "b", 0 } };
        assert_int_equal(kb_router_set_split(f->r, m, zero, 2, 0, NULL), -EDOM);
        assert_int_equal(kb_router_set_split(f->r, m, zero, 0, 0, NULL), -EINVAL);
        assert_int_equal(f->n_events, 0);

        struct kb_split_entry half[] = { { "b", 90 } };
        assert_int_equal(kb_router_set_split(f->r, m, half, 1, 1000, &why), 0);
        assert_int_equal(f->n_events, 1);
        assert_int_equal(f->events[0].kind, KB_ROUTE_SPLIT_CHANGED);
        assert_string_equal(f->events[0].weights, "a=90,b=90");
        assert_int_equal(f->events[0].admin_uid, 1000);
        _cleanup_free_ char *w = kb_router_weights_string(f->r, m);
        assert_string_equal(w, "a=90,b=90");
        /* the same again: no change, no event */
        assert_int_equal(kb_router_set_split(f->r, m, half, 1, 1000, NULL), 0);
        assert_int_equal(f->n_events, 1);

        /* a route that is a target twice needs ROUTE/UPSTREAM_MODEL */
        const struct kb_model *tw = kb_config_find_model(f->c, "twice");
        struct kb_split_entry amb[] = { { "a", 5 } };
        assert_int_equal(kb_router_set_split(f->r, tw, amb, 1, -1, NULL), -ENOENT);
        struct kb_split_entry exact[] = { { "a/y", 5 } };
        assert_int_equal(kb_router_set_split(f->r, tw, exact, 1, -1, NULL), 0);
        _cleanup_free_ char *w2 = kb_router_weights_string(f->r, tw);
        assert_string_equal(w2, "a/x=1,a/y=5");

        /* persisted, and back after a restart */
        char dir[64];
        _cleanup_free_ char *path = NULL;
        kbt_mkdtemp(dir, sizeof(dir), "router");
        assert_true(asprintf(&path, "%s/splits.json", dir) > 0);
        assert_int_equal(kb_router_load_splits(f->r, path), 0); /* missing: fine */
        assert_int_equal(kb_router_save_splits(f->r, path), 0);
        struct kb_router *r2 = NULL;
        assert_int_equal(kb_router_new(&r2), 0);
        assert_int_equal(kb_router_configure(r2, f->c, 0), 0);
        assert_int_equal(kb_router_load_splits(r2, path), 2);
        bool over = false;
        assert_int_equal(kb_router_weight(r2, m, &m->targets[1], &over), 90);
        assert_true(over);
        assert_int_equal(kb_router_weight(r2, tw, &tw->targets[1], NULL), 5);

        /* set back to the config's weight: the override is gone */
        struct kb_split_entry back[] = { { "b", 10 } };
        assert_int_equal(kb_router_set_split(r2, m, back, 1, 0, NULL), 0);
        assert_int_equal(kb_router_weight(r2, m, &m->targets[1], &over), 10);
        assert_false(over);
        struct kb_split_entry back2[] = { { "a/y", 1 } };
        assert_int_equal(kb_router_set_split(r2, tw, back2, 1, 0, NULL), 0);
        assert_int_equal(kb_router_save_splits(r2, path), 0);
        size_t len;
        _cleanup_free_ char *text = kbt_read_file(path, &len);
        assert_true(len > 0);
        assert_null(strstr(text, "\"model\""));
        struct kb_router *r3 = NULL;
        assert_int_equal(kb_router_new(&r3), 0);
        assert_int_equal(kb_router_configure(r3, f->c, 0), 0);
        assert_int_equal(kb_router_load_splits(r3, path), 0);

        /* a file that is not ours: nothing is taken */
        static const char *const bad[] = {
                "not json", "{\"version\":2,\"splits\":[]}", "{\"version\":1}",
                "{\"version\":1,\"splits\":[{\"model\":\"m\",\"route\":\"b\",\"upstream_model\":\"up-b\",\"weight\":-1}]}",
                "{\"version\":1,\"splits\":[{\"model\":\"m\",\"route\":\"b\",\"upstream_model\":\"up-b\",\"weight\":5},"
                "{\"model\":\"m\",\"route\":\"a\"}]}",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                kbt_write_text(path, bad[i]);
                assert_int_equal(kb_router_load_splits(r3, path), -EBADMSG);
                assert_int_equal(kb_router_weight(r3, m, &m->targets[1], NULL), 10);
        }
        /* entries for targets no longer configured are ignored */
        kbt_write_text(path, "{\"version\":1,\"splits\":[{\"model\":\"gone\",\"route\":\"b\",\"upstream_model\":\"x\","
                             "\"weight\":5}]}");
        assert_int_equal(kb_router_load_splits(r3, path), 0);
        kb_router_free(r2);
        kb_router_free(r3);
        assert_int_equal(kbt_rmdir_files(dir, (const char *const[]) { "splits.json", "splits.json.tmp", NULL }), 0);
}

static void test_reconfigure(void **state) {
        struct fixture *f = *state;
        const struct kb_model *m = kb_config_find_model(f->c, "m");
        struct kb_split_entry e[] = { { "b", 50 } };

        for (int i = 0; i < 3; i++)
                feed(f->r, "a", KB_VERDICT_FAILURE, false, 1 * S);
        assert_int_equal(circuit(f->r, "a", 1 * S), KB_CIRCUIT_OPEN);
        assert_int_equal(kb_router_set_split(f->r, m, e, 1, -1, NULL), 0);

        /* a reload: a and b stay, c goes */
        static const char next[] =
                "[route:a]\nfamily = openai\nbase_url = http://127.0.0.1:1/v1\nbreaker_cooldown = 5s\n"
                "[route:b]\nfamily = openai\nbase_url = http://127.0.0.1:2/v1\n"
                "[model:m]\ntarget = a up-a weight=90\ntarget = b up-b weight=10\n";
        struct kb_config *c2 = kbt_config("t2.conf", next);
        assert_int_equal(kb_router_configure(f->r, c2, 2 * S), 0);
        const struct kb_model *m2 = kb_config_find_model(c2, "m");
        assert_int_equal(circuit(f->r, "a", 2 * S), KB_CIRCUIT_OPEN);
        assert_int_equal(kb_router_weight(f->r, m2, &m2->targets[1], NULL), 50);
        struct kb_route_view v;
        assert_int_equal(kb_router_route_view(f->r, "c", 2 * S, &v), -ENOENT);
        /* the old config's model is unknown to the router now: config weights */
        assert_int_equal(kb_router_weight(f->r, kb_config_find_model(f->c, "solo"),
                                          &kb_config_find_model(f->c, "solo")->targets[0], NULL), 1);
        kb_config_unref(c2);
}

static void test_retry_after(void **state) {
        struct kb_http_header h[2];
        uint64_t now = UINT64_C(1700000000) * S;

        h[0] = (struct kb_http_header) { "Retry-After", "2" };
        assert_int_equal(kb_retry_after_usec(h, 1, now, 5 * S), 2 * S);
        assert_int_equal(kb_retry_after_usec(h, 1, now, 1 * S), 1 * S);
        assert_int_equal(kb_retry_after_usec(h, 1, now, 0), 0);
        h[0].value = "99999999999999";
        assert_int_equal(kb_retry_after_usec(h, 1, now, 5 * S), 5 * S);
        h[0].value = "-1";
        assert_int_equal(kb_retry_after_usec(h, 1, now, 5 * S), 0);
        h[0].value = "soon";
        assert_int_equal(kb_retry_after_usec(h, 1, now, 5 * S), 0);
        /* 1700000003 = Tue, 14 Nov 2023 22:13:23 GMT */
        h[0].value = "Tue, 14 Nov 2023 22:13:23 GMT";
        assert_int_equal(kb_retry_after_usec(h, 1, now, 5 * S), 3 * S);
        assert_int_equal(kb_retry_after_usec(h, 1, now + 10 * S, 5 * S), 0);
        h[0].value = "Tue, 14 Nov 2023 22:13:23 GMT trailing";
        assert_int_equal(kb_retry_after_usec(h, 1, now, 5 * S), 0);
        h[0].value = "3";
        h[1] = (struct kb_http_header) { "retry-after-ms", "1500" };
        assert_int_equal(kb_retry_after_usec(h, 2, now, 5 * S), 1500 * USEC_PER_MSEC);
        assert_int_equal(kb_retry_after_usec(h, 0, now, 5 * S), 0);
}

/* Every record the journal writer would send, as one "F=v\n..." text each. */
static char *sent[8];
static size_t n_sent;

static int capture(const struct iovec *iov, int n, void *userdata) {
        struct kb_buf b = {};
        for (int i = 0; i < n; i++) {
                assert_int_equal(kb_buf_append(&b, iov[i].iov_base, iov[i].iov_len), 0);
                assert_int_equal(kb_buf_append(&b, "\n", 1), 0);
        }
        if (n_sent < ELEMENTSOF(sent))
                sent[n_sent++] = b.data;
        else
                kb_buf_free(&b);
        return 0;
}

static void test_journal_route(void **state) {
        struct kb_journal *j = NULL;

        assert_int_equal(kb_journal_new(16, &j), 0);
        kb_journal_set_sender(j, capture, NULL);
        struct kb_route_event open = {
                .kind = KB_ROUTE_CIRCUIT_OPENED, .route = "oai", .reason = "5 consecutive failures",
                .error_ratio = 0.625, .requests = 8, .consecutive_failures = 5, .admin_uid = -1,
        };
        struct kb_route_event canary = {
                .kind = KB_ROUTE_CANARY_ROLLED_BACK, .route = "flat", .model = "chat", .weights = "oai=90,flat=0",
                .reason = "r", .error_ratio = 0.3, .requests = 20, .admin_uid = -1,
        };
        struct kb_route_event split = {
                .kind = KB_ROUTE_SPLIT_CHANGED, .model = "chat", .weights = "oai=50,flat=50", .admin_uid = 1000,
        };
        assert_int_equal(kb_journal_route(j, &open), 0);
        assert_int_equal(kb_journal_route(j, &canary), 0);
        assert_int_equal(kb_journal_route(j, &split), 0);
        struct kb_route_event bad = { .kind = _KB_ROUTE_EVENT_MAX };
        assert_int_equal(kb_journal_route(j, &bad), -EINVAL);
        assert_int_equal(kb_journal_route(j, NULL), -EINVAL);
        assert_int_equal(kb_journal_route(NULL, &open), -EINVAL);
        kb_journal_flush(j, 10 * USEC_PER_SEC);
        kb_journal_free(j, USEC_PER_SEC);
        assert_int_equal(n_sent, 3);

        assert_non_null(strstr(sent[0], "MESSAGE_ID=da52a66de9f14751b27d771e64ef1e05\n"));
        assert_non_null(strstr(sent[0], "\nKEYBROKER_EVENT=circuit_opened\n"));
        assert_non_null(strstr(sent[0], "\nKEYBROKER_ROUTE=oai\n"));
        assert_non_null(strstr(sent[0], "\nKEYBROKER_ERROR_RATIO=0.625\n"));
        assert_non_null(strstr(sent[0], "\nKEYBROKER_REQUESTS=8\n"));
        assert_non_null(strstr(sent[0], "\nKEYBROKER_CONSECUTIVE_FAILURES=5\n"));
        assert_non_null(strstr(sent[0], "\nPRIORITY=4\n"));
        assert_null(strstr(sent[0], "KEYBROKER_MODEL="));
        assert_null(strstr(sent[0], "KEYBROKER_ADMIN_UID="));
        assert_non_null(strstr(sent[0], "\nSYSLOG_IDENTIFIER=keybrokerd\n"));

        assert_non_null(strstr(sent[1], "\nKEYBROKER_EVENT=canary_rolled_back\n"));
        assert_non_null(strstr(sent[1], "\nKEYBROKER_MODEL=chat\n"));
        assert_non_null(strstr(sent[1], "\nKEYBROKER_WEIGHTS=oai=90,flat=0\n"));
        assert_non_null(strstr(sent[1], "\nKEYBROKER_ROUTE=flat\n"));
        assert_null(strstr(sent[1], "KEYBROKER_CONSECUTIVE_FAILURES="));

        assert_non_null(strstr(sent[2], "\nKEYBROKER_EVENT=split_changed\n"));
        assert_non_null(strstr(sent[2], "\nKEYBROKER_ADMIN_UID=1000\n"));
        assert_non_null(strstr(sent[2], "\nPRIORITY=5\n"));
        assert_null(strstr(sent[2], "KEYBROKER_ROUTE="));
        assert_null(strstr(sent[2], "KEYBROKER_ERROR_RATIO="));
        for (size_t i = 0; i < n_sent; i++)
                free(sent[i]);
}

static void test_names(void **state) {
        assert_string_equal(kb_circuit_to_string(KB_CIRCUIT_HALF_OPEN), "half_open");
        assert_null(kb_circuit_to_string(_KB_CIRCUIT_MAX));
        assert_string_equal(kb_route_event_to_string(KB_ROUTE_CANARY_ROLLED_BACK), "canary_rolled_back");
        assert_string_equal(kb_route_event_to_string(KB_ROUTE_SPLIT_CHANGED), "split_changed");
        assert_null(kb_route_event_to_string(_KB_ROUTE_EVENT_MAX));
        assert_null(kb_router_free(NULL));
        assert_int_equal(kb_router_new(NULL), -EINVAL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_breaker_consecutive, setup, teardown),
                cmocka_unit_test_setup_teardown(test_breaker_ratio, setup, teardown),
                cmocka_unit_test_setup_teardown(test_breaker_window_slides, setup, teardown),
                cmocka_unit_test_setup_teardown(test_latency, setup, teardown),
                cmocka_unit_test_setup_teardown(test_canary, setup, teardown),
                cmocka_unit_test_setup_teardown(test_plan, setup, teardown),
                cmocka_unit_test_setup_teardown(test_plan_weights, setup, teardown),
                cmocka_unit_test_setup_teardown(test_split, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reconfigure, setup, teardown),
                cmocka_unit_test(test_retry_after),
                cmocka_unit_test(test_journal_route),
                cmocka_unit_test(test_names),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
