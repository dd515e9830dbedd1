/* SPDX-License-Identifier: MIT */
/* The broker's side of staged promotion: the promoter's life across
 * restarts and reloads, its decisions into the journal, promotions.json and
 * splits.json in state_dir kept in step with them, and the one-second look
 * at holds and stop conditions. The decisions themselves are promote.c's. */

#include <inttypes.h>

#include "broker.h"
#include "routing.h"
#include "promote.h"

#define PROMOTIONS_FILE "promotions.json"

static char *state_path(const struct kb_broker *b) {
        char *p;
        if (!b->config->agent.state_dir || asprintf(&p, "%s/%s", b->config->agent.state_dir, PROMOTIONS_FILE) < 0)
                return NULL;
        return p;
}

int kb_promote_save(struct kb_broker *b) {
        _cleanup_free_ char *path = state_path(b);
        json_t *doc = b->promoter ? kb_promoter_to_json(b->promoter) : NULL;

        if (!path || !doc) {
                json_decref(doc);
                return -ENOMEM;
        }
        int r = kb_promote_write_file(path, doc);
        json_decref(doc);
        /* The step's weights are overrides like any split: kept with it. */
        int q = kb_routing_save(b);
        return r < 0 ? r : q;
}

static void on_event(void *userdata, const struct kb_promote_event *ev) {
        struct kb_broker *b = userdata;
        const struct kb_promote_view *v = ev->view;
        bool bad = ev->kind == KB_PROMOTE_EV_ROLLED_BACK || (ev->kind == KB_PROMOTE_EV_GATE && !ev->gate_passed);

        fprintf(stderr, "<%d>model %s: promotion of route %s: %s at step %zu/%zu (%u%%): %s\n", bad ? 4 : 5, v->model,
                v->route, kb_promote_event_to_string(ev->kind), v->step + 1, v->n_steps, v->percent,
                strempty(ev->reason));
        int q = kb_journal_promotion(b->journal, ev);
        if (q < 0 && q != -EAGAIN)
                fprintf(stderr, "<4>cannot queue promotion record: %s\n", strerror(-q));
        if (ev->kind == KB_PROMOTE_EV_GATE)
                return;
        /* Every step and decision is on disk before the next request. */
        q = kb_promote_save(b);
        if (q < 0)
                fprintf(stderr, "<4>cannot save %s: %s\n", PROMOTIONS_FILE, strerror(-q));
}

static int on_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        struct kb_broker *b = userdata;

        kb_promoter_tick(b->promoter, kb_now_usec(), kb_realtime_usec());
        (void) sd_event_source_set_time(s, usec + KB_PROMOTE_TICK_USEC);
        return sd_event_source_set_enabled(s, SD_EVENT_ON);
}

int kb_promote_setup(struct kb_broker *b) {
        json_t *doc = NULL;
        uint64_t now = kb_now_usec();

        int r = kb_promoter_new(b->router, &b->promoter);
        if (r < 0)
                return r;
        kb_promoter_configure(b->promoter, b->config, now, kb_realtime_usec());
        kb_promoter_set_event_handler(b->promoter, on_event, b);
        _cleanup_free_ char *path = state_path(b);
        if (!path)
                return -ENOMEM;
        r = kb_promote_read_file(path, &doc);
        if (r >= 0 && doc) {
                r = kb_promoter_load_json(b->promoter, doc, now, kb_realtime_usec());
                json_decref(doc);
        }
        if (r < 0)
                /* Nothing is promoted then; the file is left for an operator to look at. */
                fprintf(stderr, "<4>ignoring %s: %s\n", path, r == -EBADMSG ? "not a promotions file" : strerror(-r));
        else if (r > 0)
                fprintf(stderr, "<6>%d promotion(s) from %s\n", r, path);
        /* Floating: the loop owns it and frees it with itself. */
        return sd_event_add_time(b->event, NULL, CLOCK_MONOTONIC, now + KB_PROMOTE_TICK_USEC, 100 * USEC_PER_MSEC,
                                 on_tick, b);
}

void kb_promote_reconfigure(struct kb_broker *b) {
        if (!b->promoter)
                return;
        kb_promoter_configure(b->promoter, b->config, kb_now_usec(), kb_realtime_usec());
}

void kb_promote_teardown(struct kb_broker *b) {
        b->promoter = kb_promoter_free(b->promoter);
}

void kb_promote_observe(struct kb_broker *b, const struct kb_request *r) {
        if (!b->promoter || !r->model_cfg || !kb_promoter_running(b->promoter))
                return;
        const struct kb_usage *u = r->billed_set ? &r->billed : r->tap ? kb_usage_tap_get(r->tap) : NULL;
        struct kb_promote_obs o = {
                .model = r->model_cfg->name,
                .route = r->route ? r->route->name : NULL,
                .upstream_model = r->target ? r->target->upstream_model : NULL,
                .fallback_from = r->fallback_from,
                .outcome = r->outcome,
                .status = r->status,
                .upstream_status = r->upstream_status,
                .latency_usec = r->latency_usec,
                .input_tokens = u ? u->input_tokens : 0,
                .output_tokens = u ? u->output_tokens : 0,
                .cost_microusd = r->cost_microusd,
        };
        kb_promoter_observe(b->promoter, &o, kb_now_usec(), kb_realtime_usec());
}
