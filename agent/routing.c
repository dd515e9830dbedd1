/* SPDX-License-Identifier: MIT */
/* The broker's side of routing: the router's life across reloads, its
 * state changes into the journal, split overrides on disk, and reading a
 * provider's Retry-After. The decisions themselves are router.c's. */

#include <strings.h>
#include <time.h>

#include "broker.h"
#include "routing.h"
#include "router.h"

#define SPLITS_FILE "splits.json"
/* Longest Retry-After we parse at all (the cap applies after). */
#define RETRY_AFTER_MAX_SECONDS (24 * 3600)

static char *splits_path(const struct kb_broker *b) {
        char *p;
        if (!b->config->agent.state_dir || asprintf(&p, "%s/%s", b->config->agent.state_dir, SPLITS_FILE) < 0)
                return NULL;
        return p;
}

int kb_routing_save(struct kb_broker *b) {
        _cleanup_free_ char *path = splits_path(b);
        if (!path)
                return -ENOMEM;
        return kb_router_save_splits(b->router, path);
}

static void on_route_event(void *userdata, const struct kb_route_event *ev) {
        struct kb_broker *b = userdata;
        const char *event = kb_route_event_to_string(ev->kind);

        if (ev->route)
                fprintf(stderr, "<%d>route %s: %s (%s)\n", ev->kind == KB_ROUTE_CIRCUIT_OPENED ? 4 : 5, ev->route,
                        event, strempty(ev->reason));
        else
                fprintf(stderr, "<5>model %s: %s: %s\n", strempty(ev->model), event, strempty(ev->weights));
        int q = kb_journal_route(b->journal, ev);
        if (q < 0 && q != -EAGAIN)
                fprintf(stderr, "<4>cannot queue route-state record: %s\n", strerror(-q));
        /* A rolled-back canary stays rolled back across restarts, like a split. */
        if (ev->kind == KB_ROUTE_CANARY_ROLLED_BACK && (q = kb_routing_save(b)) < 0)
                fprintf(stderr, "<4>cannot save %s: %s\n", SPLITS_FILE, strerror(-q));
}

int kb_routing_setup(struct kb_broker *b) {
        int q = kb_router_new(&b->router);
        if (q < 0)
                return q;
        q = kb_router_configure(b->router, b->config, kb_now_usec());
        if (q < 0)
                return q;
        _cleanup_free_ char *path = splits_path(b);
        if (!path)
                return -ENOMEM;
        q = kb_router_load_splits(b->router, path);
        if (q < 0)
                /* Config weights are a safe start; the file is left for an operator to look at. */
                fprintf(stderr, "<4>ignoring %s: %s\n", path, q == -EBADMSG ? "not a splits file" : strerror(-q));
        else if (q > 0)
                fprintf(stderr, "<6>%d weight override(s) from %s\n", q, path);
        /* Loading is not a change: events start now. */
        kb_router_set_event_handler(b->router, on_route_event, b);
        return 0;
}

void kb_routing_reconfigure(struct kb_broker *b) {
        if (!b->router)
                return;
        int q = kb_router_configure(b->router, b->config, kb_now_usec());
        if (q < 0)
                fprintf(stderr, "<4>routing state kept from the previous configuration: %s\n", strerror(-q));
}

static bool all_digits(const char *s) {
        return *s && strspn(s, "0123456789") == strlen(s);
}

uint64_t kb_retry_after_usec(const struct kb_http_header *h, size_t n, uint64_t now_realtime, uint64_t cap) {
        uint64_t usec = 0;
        bool found = false;

        /* OpenAI's retry-after-ms is the finer of the two. */
        for (size_t i = 0; i < n && !found; i++)
                if (strcasecmp(h[i].name, "retry-after-ms") == 0 && all_digits(h[i].value) &&
                    strlen(h[i].value) <= 9) {
                        usec = strtoull(h[i].value, NULL, 10) * USEC_PER_MSEC;
                        found = true;
                }
        for (size_t i = 0; i < n && !found; i++) {
                if (strcasecmp(h[i].name, "retry-after") != 0)
                        continue;
                const char *v = h[i].value;
                if (all_digits(v)) {
                        unsigned long long s = strlen(v) <= 6 ? strtoull(v, NULL, 10) : RETRY_AFTER_MAX_SECONDS;
                        usec = MIN(s, (unsigned long long) RETRY_AFTER_MAX_SECONDS) * USEC_PER_SEC;
                        found = true;
                        continue;
                }
                /* IMF-fixdate, the one form RFC 9110 says to send. */
                struct tm tm = {};
                const char *end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
                if (!end || *end)
                        continue;
                time_t t = timegm(&tm);
                if (t == (time_t) -1)
                        continue;
                uint64_t at = (uint64_t) t * USEC_PER_SEC;
                usec = at > now_realtime ? MIN(at - now_realtime, RETRY_AFTER_MAX_SECONDS * USEC_PER_SEC) : 0;
                found = true;
        }
        return MIN(usec, cap);
}
