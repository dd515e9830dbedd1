/* SPDX-License-Identifier: MIT */
/* One function per journal record kind (journal.h): the fields of DESIGN's
 * Journal section, built on the loop and handed to the writer (journal.c). */
#include "journal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keybroker/keybroker.h"
#include "request.h"
#include "promote.h"
#include "router.h"
#include "shadow.h"
#include "broker.h"
#include "usage.h"

/* Field names of DESIGN's Journal section. Kept here until they move to
 * include/keybroker/keybroker.h. */
#define F_MESSAGE_ID "MESSAGE_ID"
#define F_MESSAGE "MESSAGE"
#define F_PRIORITY "PRIORITY"
#define F_REQUEST_ID "KEYBROKER_REQUEST_ID"
#define F_TEAM "KEYBROKER_TEAM"
#define F_PEER_UID "KEYBROKER_PEER_UID"
#define F_PEER_GID "KEYBROKER_PEER_GID"
#define F_PEER_PID "KEYBROKER_PEER_PID"
#define F_PEER_UNIT "KEYBROKER_PEER_UNIT"
#define F_PEER_EXE "KEYBROKER_PEER_EXE"
#define F_ENDPOINT "KEYBROKER_ENDPOINT"
#define F_MODEL "KEYBROKER_MODEL"
#define F_UPSTREAM_MODEL "KEYBROKER_UPSTREAM_MODEL"
#define F_ROUTE "KEYBROKER_ROUTE"
#define F_FAMILY "KEYBROKER_FAMILY"
#define F_KEY "KEYBROKER_KEY"
#define F_STREAM "KEYBROKER_STREAM"
#define F_STATUS "KEYBROKER_STATUS"
#define F_UPSTREAM_STATUS "KEYBROKER_UPSTREAM_STATUS"
#define F_OUTCOME "KEYBROKER_OUTCOME"
#define F_INPUT_TOKENS "KEYBROKER_INPUT_TOKENS"
#define F_INSTANCE "KEYBROKER_INSTANCE"
#define F_TEST_TRAFFIC "KEYBROKER_TEST"
#define F_REALTIME_USEC "KEYBROKER_REALTIME_USEC"
#define F_HOST "KEYBROKER_HOST"
#define F_SEQ "KEYBROKER_SEQ"
#define F_OUTPUT_TOKENS "KEYBROKER_OUTPUT_TOKENS"
#define F_CACHED_TOKENS "KEYBROKER_CACHED_TOKENS"
#define F_CACHE_WRITE_TOKENS "KEYBROKER_CACHE_WRITE_TOKENS"
#define F_REASONING_TOKENS "KEYBROKER_REASONING_TOKENS"
#define F_IMAGES "KEYBROKER_IMAGES"
#define F_AUDIO_SECONDS "KEYBROKER_AUDIO_SECONDS"
#define F_VIDEO_SECONDS "KEYBROKER_VIDEO_SECONDS"
#define F_CHARACTERS "KEYBROKER_CHARACTERS"
#define F_OBJECT_ID "KEYBROKER_OBJECT_ID"
#define F_BATCH "KEYBROKER_BATCH"
#define F_COST_MICROUSD "KEYBROKER_COST_MICROUSD"
#define F_LATENCY_MS "KEYBROKER_LATENCY_MS"
#define F_TTFB_MS "KEYBROKER_TTFB_MS"
#define F_UPSTREAM_REQUEST_ID "KEYBROKER_UPSTREAM_REQUEST_ID"
#define F_ATTEMPTS "KEYBROKER_ATTEMPTS"
#define F_FALLBACK_FROM "KEYBROKER_FALLBACK_FROM"
#define F_EVENT "KEYBROKER_EVENT"
#define F_IN_FLIGHT "KEYBROKER_IN_FLIGHT"
#define F_VERSION "KEYBROKER_VERSION"
#define F_CONFIG_PATH "KEYBROKER_CONFIG_PATH"
#define F_ERROR "KEYBROKER_ERROR"
#define F_KEY_NAME "KEYBROKER_KEY_NAME"
#define F_KEY_VERSION "KEYBROKER_KEY_VERSION"
#define F_KEY_FINGERPRINT "KEYBROKER_KEY_FINGERPRINT"
#define F_KEY_ACTION "KEYBROKER_KEY_ACTION"
#define F_ADMIN_UID "KEYBROKER_ADMIN_UID"

static void kb_record_freep(struct kb_record **r) {
        kb_record_free(*r);
}
#define _cleanup_record_ _cleanup_(kb_record_freep)

/* ---- record kinds ---- */

/* Every adder returns 0 or -errno; a record that cannot be built whole is
 * not sent. */
#define TRY(expr)                               \
        do {                                    \
                int _r = (expr);                \
                if (_r < 0)                     \
                        return _r;              \
        } while (0)
#define ADD(rec, f, v) TRY(kb_record_add(rec, f, v))
#define ADDF(rec, f, ...) TRY(kb_record_addf(rec, f, __VA_ARGS__))
/* Values a caller controls (the model as asked, provider ids, the config
 * error) are cut at the value limit rather than losing the whole record. */
#define ADD_CAPPED(rec, f, v) TRY(kb_record_add_capped(rec, f, v))
#define ADD_U64(rec, f, v) TRY(kb_record_add_u64(rec, f, v))
#define ADD_I64(rec, f, v) TRY(kb_record_add_i64(rec, f, v))
/* In MESSAGE, a short human summary, names are cut much shorter. */
#define MSG_NAME_MAX 256
#define MSG_ERROR_MAX 4096

static const char *const outcome_table[_KB_OUTCOME_MAX] = {
        [KB_OUTCOME_OK] = "ok",
        [KB_OUTCOME_QUOTA_REJECTED] = "quota_rejected",
        [KB_OUTCOME_FORBIDDEN] = "forbidden",
        [KB_OUTCOME_MODEL_NOT_FOUND] = "model_not_found",
        [KB_OUTCOME_INVALID_REQUEST] = "invalid_request",
        [KB_OUTCOME_UPSTREAM_ERROR] = "upstream_error",
        [KB_OUTCOME_UPSTREAM_TIMEOUT] = "upstream_timeout",
        [KB_OUTCOME_STREAM_INTERRUPTED] = "stream_interrupted",
        [KB_OUTCOME_CLIENT_ABORT] = "client_abort",
        [KB_OUTCOME_BROKER_OVERLOADED] = "broker_overloaded",
};

const char *kb_outcome_to_string(kb_outcome o) {
        if ((unsigned) o >= _KB_OUTCOME_MAX)
                return NULL;
        return outcome_table[o];
}

static const char *dash_if_empty(const char *s) {
        return s && *s ? s : "-";
}

/* A new record built by build(rec, ...) and queued; -ENOMEM without one. */
#define SUBMIT_NEW(j, build, ...)                                                       \
        ({                                                                              \
                struct kb_record *_rec = kb_record_new();                               \
                _rec ? submit_built(j, _rec, build(_rec, __VA_ARGS__)) : -ENOMEM;       \
        })

/* Queue rec once its builder succeeded; rec is the journal's or freed either way. */
static int submit_built(struct kb_journal *j, struct kb_record *rec, int built) {
        if (built < 0) {
                kb_record_free(rec);
                return built;
        }
        return kb_journal_submit(j, rec);
}

static int build_request(struct kb_record *rec, const struct kb_request *r) {
        const struct kb_identity *id = r->identity;
        const struct kb_usage *u = r->billed_set ? &r->billed : r->tap ? kb_usage_tap_get(r->tap) : NULL;
        const char *outcome = strempty(kb_outcome_to_string(r->outcome));
        const char *team = r->team ? r->team->name : NULL;
        const char *route = r->route ? r->route->name : NULL;
        const char *upstream_rid = r->upstream_request_id;
        uint64_t in = u ? u->input_tokens : 0, out = u ? u->output_tokens : 0;
        uint64_t cost_mag;
        bool ok = r->outcome == KB_OUTCOME_OK;

        if (!upstream_rid && u)
                upstream_rid = u->upstream_request_id;
        /* Negation through uint64_t so INT64_MIN can't overflow. */
        cost_mag = r->cost_microusd < 0 ? -(uint64_t) r->cost_microusd : (uint64_t) r->cost_microusd;

        ADD(rec, F_MESSAGE_ID, KB_MID_REQUEST);
        ADDF(rec, F_MESSAGE, "%.*s %.*s via %.*s: %d%s%s, %" PRIu64 " in / %" PRIu64 " out tokens, %s$%" PRIu64 ".%06u, %" PRIu64 " ms",
             MSG_NAME_MAX, dash_if_empty(team), MSG_NAME_MAX, dash_if_empty(r->model), MSG_NAME_MAX,
             dash_if_empty(route), r->status,
             ok ? "" : " ", ok ? "" : outcome, in, out, r->cost_microusd < 0 ? "-" : "",
             cost_mag / 1000000, (unsigned) (cost_mag % 1000000), r->latency_usec / USEC_PER_MSEC);
        ADD(rec, F_PRIORITY, ok ? "6" : "4");
        ADD(rec, F_REQUEST_ID, r->id);
        ADD(rec, F_TEAM, strempty(team));
        if (id) {
                ADD_U64(rec, F_PEER_UID, id->uid);
                ADD_U64(rec, F_PEER_GID, id->gid);
                ADD_I64(rec, F_PEER_PID, id->pid);
        } else {
                ADD(rec, F_PEER_UID, "");
                ADD(rec, F_PEER_GID, "");
                ADD(rec, F_PEER_PID, "");
        }
        ADD(rec, F_PEER_UNIT, strempty(id ? id->unit : NULL));
        ADD(rec, F_PEER_EXE, strempty(id ? id->exe : NULL));
        ADD(rec, F_ENDPOINT, strempty(kb_endpoint_to_string(r->endpoint)));
        ADD_CAPPED(rec, F_MODEL, r->model);
        ADD_CAPPED(rec, F_UPSTREAM_MODEL, u ? u->upstream_model : NULL);
        ADD(rec, F_ROUTE, strempty(route));
        ADD(rec, F_FAMILY, strempty(kb_family_to_string(r->family)));
        ADD_CAPPED(rec, F_KEY, r->key_label);
        ADD(rec, F_STREAM, r->stream ? "1" : "0");
        ADD_I64(rec, F_STATUS, r->status);
        ADD_I64(rec, F_UPSTREAM_STATUS, r->upstream_status);
        ADD(rec, F_OUTCOME, outcome);
        ADD_U64(rec, F_INPUT_TOKENS, in);
        ADD_U64(rec, F_OUTPUT_TOKENS, out);
        ADD_U64(rec, F_CACHED_TOKENS, u ? u->cached_tokens : 0);
        ADD_U64(rec, F_CACHE_WRITE_TOKENS, u ? u->cache_write_tokens : 0);
        ADD_U64(rec, F_REASONING_TOKENS, u ? u->reasoning_tokens : 0);
        /* The other billing units only on the records of the endpoints that
         * bill by them (or when a count came anyway): a chat record stays
         * as short as it was. */
        kb_endpoint e = r->endpoint;
        if (e == KB_ENDPOINT_IMAGES || (u && u->images))
                ADD_U64(rec, F_IMAGES, u ? u->images : 0);
        if (e == KB_ENDPOINT_AUDIO_TRANSCRIPTIONS || e == KB_ENDPOINT_AUDIO_TRANSLATIONS || (u && u->audio_msec))
                ADDF(rec, F_AUDIO_SECONDS, "%" PRIu64 ".%03u", (u ? u->audio_msec : 0) / 1000,
                     (unsigned) ((u ? u->audio_msec : 0) % 1000));
        if (e == KB_ENDPOINT_VIDEOS || (u && u->video_seconds))
                ADD_U64(rec, F_VIDEO_SECONDS, u ? u->video_seconds : 0);
        if (e == KB_ENDPOINT_AUDIO_SPEECH || r->characters)
                ADD_U64(rec, F_CHARACTERS, r->characters);
        if (r->object_id[0])
                ADD(rec, F_OBJECT_ID, r->object_id);
        if (e == KB_ENDPOINT_BATCHES || e == KB_ENDPOINT_MESSAGE_BATCHES)
                ADD(rec, F_BATCH, u && u->batch ? "1" : "0");
        ADD_I64(rec, F_COST_MICROUSD, r->cost_microusd);
        ADD_U64(rec, F_LATENCY_MS, r->latency_usec / USEC_PER_MSEC);
        ADD_U64(rec, F_TTFB_MS, r->ttfb_usec / USEC_PER_MSEC);
        ADD_CAPPED(rec, F_UPSTREAM_REQUEST_ID, upstream_rid);
        ADD_U64(rec, F_ATTEMPTS, r->attempts);
        ADD_CAPPED(rec, F_FALLBACK_FROM, r->fallback_from);
        /* Beyond DESIGN's list: which broker instance settled this call, and
         * in which order, so quota recovery replays exactly what a crash
         * lost (keybrokerd(8), JOURNAL). */
        ADD(rec, F_INSTANCE, r->broker ? r->broker->instance : "");
        /* When the call finished (the quota counted it then): a record that
         * waited in the spool is still placed at its own time, not at
         * journald's receive time. And the host, for fleet reports over
         * journals collected from many hosts. */
        ADD_U64(rec, F_REALTIME_USEC, r->settled_usec ?: kb_realtime_usec());
        ADD(rec, F_HOST, r->broker ? r->broker->hostname : "");
        if (r->config && r->config->agent.test_traffic)
                ADD(rec, F_TEST_TRAFFIC, "1");
        ADD_U64(rec, F_SEQ, r->seq);
        return 0;
}

int kb_journal_request(struct kb_journal *j, const struct kb_request *r) {
        if (!j || !r)
                return -EINVAL;
        if (r->config && !r->config->agent.journal)
                return 0;
        return SUBMIT_NEW(j, build_request, r);
}

static int build_lifecycle(struct kb_record *rec, const char *event, const char *message, uint64_t in_flight) {
        ADD(rec, F_MESSAGE_ID, KB_MID_LIFECYCLE);
        if (message)
                ADD(rec, F_MESSAGE, message);
        else
                ADDF(rec, F_MESSAGE, "keybrokerd %s (%" PRIu64 " requests in flight)", event, in_flight);
        ADD(rec, F_PRIORITY, streq(event, "stopping") ? "5" : "6");
        ADD(rec, F_EVENT, event);
        ADDF(rec, F_IN_FLIGHT, "%" PRIu64, in_flight);
        ADD(rec, F_VERSION, KB_VERSION);
        return 0;
}

int kb_journal_lifecycle(struct kb_journal *j, const char *event, const char *message, uint64_t in_flight) {
        if (!j || !event)
                return -EINVAL;
        return SUBMIT_NEW(j, build_lifecycle, event, message, in_flight);
}

static int build_config(struct kb_record *rec, const char *event, const char *path, const char *error) {
        bool rejected = streq(event, "rejected");

        ADD(rec, F_MESSAGE_ID, KB_MID_CONFIG);
        if (error)
                ADDF(rec, F_MESSAGE, "Configuration %s: %.*s", event, MSG_ERROR_MAX, error);
        else
                ADDF(rec, F_MESSAGE, "Configuration %s from %s", event, path ? path : "-");
        ADD(rec, F_PRIORITY, rejected ? "3" : "6");
        ADD(rec, F_EVENT, event);
        ADD(rec, F_CONFIG_PATH, strempty(path));
        if (error)
                ADD_CAPPED(rec, F_ERROR, error);
        return 0;
}

static int build_store(struct kb_record *rec, const char *event, const char *url, const char *reason,
                       uint64_t brokers) {
        bool offline = streq(event, "offline");

        ADD(rec, F_MESSAGE_ID, KB_MID_STORE);
        if (offline)
                ADDF(rec, F_MESSAGE, "Quota store %.*s offline: %.*s", MSG_NAME_MAX, strempty(url), MSG_ERROR_MAX,
                     strempty(reason));
        else
                ADDF(rec, F_MESSAGE, "Quota store %.*s %s, %" PRIu64 " broker(s) seen", MSG_NAME_MAX, strempty(url),
                     event, brokers);
        ADD(rec, F_PRIORITY, offline ? "4" : "6");
        ADD(rec, F_EVENT, event);
        ADD(rec, "KEYBROKER_STORE", strempty(url));
        if (reason)
                ADD_CAPPED(rec, "KEYBROKER_REASON", reason);
        else
                ADD_U64(rec, "KEYBROKER_BROKERS", brokers);
        return 0;
}

int kb_journal_store(struct kb_journal *j, const char *event, const char *url, const char *reason, uint64_t brokers) {
        if (!j || !event)
                return -EINVAL;
        return SUBMIT_NEW(j, build_store, event, url, reason, brokers);
}

static int build_store_push(struct kb_record *rec, const char *event, const char *url, const char *epoch,
                            uint64_t n, uint64_t tokens, uint64_t cost) {
        bool resent = streq(event, "resent");

        ADD(rec, F_MESSAGE_ID, KB_MID_STORE);
        if (resent)
                ADDF(rec, F_MESSAGE, "Quota store %.*s: %" PRIu64 " settle(s) it never acknowledged sent again from "
                     "the journal", MSG_NAME_MAX, strempty(url), n);
        else
                ADDF(rec, F_MESSAGE, "Quota store %.*s has a new epoch %.*s (it lost its data, or is new): this "
                     "broker's counters of %" PRIu64 " team(s) pushed into it", MSG_NAME_MAX, strempty(url),
                     MSG_NAME_MAX, strempty(epoch), n);
        ADD(rec, F_PRIORITY, resent ? "6" : "5");
        ADD(rec, F_EVENT, event);
        ADD(rec, "KEYBROKER_STORE", strempty(url));
        ADD_CAPPED(rec, "KEYBROKER_EPOCH", strempty(epoch));
        ADD_U64(rec, "KEYBROKER_PUSHED", n);
        ADD_U64(rec, "KEYBROKER_PUSHED_TOKENS", tokens);
        ADD_U64(rec, "KEYBROKER_PUSHED_COST_MICROUSD", cost);
        return 0;
}

int kb_journal_store_push(struct kb_journal *j, const char *event, const char *url, const char *epoch, uint64_t n,
                          uint64_t tokens, uint64_t cost) {
        if (!j || !event)
                return -EINVAL;
        return SUBMIT_NEW(j, build_store_push, event, url, epoch, n, tokens, cost);
}

int kb_journal_config(struct kb_journal *j, const char *event, const char *path, const char *error) {
        if (!j || !event)
                return -EINVAL;
        return SUBMIT_NEW(j, build_config, event, path, error);
}

static int build_key(struct kb_record *rec, const char *action, const char *name, const char *version,
                     const char *fingerprint, uid_t admin_uid) {
        ADD(rec, F_MESSAGE_ID, KB_MID_KEY);
        if (streq(action, "deleted")) {
                if (streq(version, "all"))
                        ADDF(rec, F_MESSAGE, "key %.*s deleted (all versions) by uid %u", MSG_NAME_MAX, name,
                             (unsigned) admin_uid);
                else
                        ADDF(rec, F_MESSAGE, "key %.*s version %s deleted by uid %u", MSG_NAME_MAX, name, version,
                             (unsigned) admin_uid);
        } else {
                const char *verb = streq(action, "rolled_back") ? "rolled back" : action;
                ADDF(rec, F_MESSAGE, "key %.*s %s to version %s (fingerprint %s) by uid %u", MSG_NAME_MAX, name,
                     verb, version, fingerprint ? fingerprint : "-", (unsigned) admin_uid);
        }
        ADD(rec, F_PRIORITY, "5");
        ADD_CAPPED(rec, F_KEY_NAME, name);
        ADD_CAPPED(rec, F_KEY_VERSION, version);
        if (fingerprint)
                ADD_CAPPED(rec, F_KEY_FINGERPRINT, fingerprint);
        ADD_CAPPED(rec, F_KEY_ACTION, action);
        ADDF(rec, F_ADMIN_UID, "%u", (unsigned) admin_uid);
        return 0;
}

int kb_journal_key(struct kb_journal *j, const char *action, const char *name, const char *version,
                   const char *fingerprint, uid_t admin_uid) {
        if (!j || !action || !name || !version)
                return -EINVAL;
        return SUBMIT_NEW(j, build_key, action, name, version, fingerprint, admin_uid);
}

int kb_journal_quota(struct kb_journal *j, const char *team, const char *limit, uint64_t used, uint64_t max,
                     uint64_t reset_usec) {
        _cleanup_record_ struct kb_record *rec = NULL;

        if (!j || !team || !limit)
                return -EINVAL;
        rec = kb_record_new();
        if (!rec)
                return -ENOMEM;
        ADD(rec, F_MESSAGE_ID, KB_MID_QUOTA);
        ADDF(rec, F_MESSAGE, "team %.*s hit its %s limit (%" PRIu64 " used of %" PRIu64 ")", MSG_NAME_MAX, team,
             limit, used, max);
        ADD(rec, F_PRIORITY, "4");
        ADD(rec, F_TEAM, team);
        ADD(rec, "KEYBROKER_LIMIT", limit);
        ADDF(rec, "KEYBROKER_USED", "%" PRIu64, used);
        ADDF(rec, "KEYBROKER_LIMIT_VALUE", "%" PRIu64, max);
        ADDF(rec, "KEYBROKER_RESET_USEC", "%" PRIu64, reset_usec);
        return kb_journal_submit(j, TAKE_PTR(rec));
}

int kb_journal_preflight(struct kb_journal *j, const char *route, const char *model, const char *check, int result,
                         const char *detail, uint64_t latency_ms, const char *evidence) {
        _cleanup_record_ struct kb_record *rec = NULL;
        const char *word = result < 0 ? "skipped" : result ? "passed" : "FAILED";
        bool summary;

        if (!j || !route || !check)
                return -EINVAL;
        summary = streq(check, "summary");
        rec = kb_record_new();
        if (!rec)
                return -ENOMEM;
        ADD(rec, F_MESSAGE_ID, KB_MID_PREFLIGHT);
        if (summary)
                ADDF(rec, F_MESSAGE, "preflight of route %.*s (model %.*s): %s: %.*s, %" PRIu64 " ms", MSG_NAME_MAX,
                     route, MSG_NAME_MAX, dash_if_empty(model), word, MSG_ERROR_MAX, dash_if_empty(detail), latency_ms);
        else
                ADDF(rec, F_MESSAGE, "preflight of route %.*s: %.*s %s: %.*s (%" PRIu64 " ms)", MSG_NAME_MAX, route,
                     MSG_NAME_MAX, check, result < 0 ? "skipped" : result ? "ok" : "FAILED", MSG_ERROR_MAX,
                     dash_if_empty(detail), latency_ms);
        ADD(rec, F_PRIORITY, result == 0 ? "4" : "6");
        ADD_CAPPED(rec, F_ROUTE, route);
        if (model)
                ADD_CAPPED(rec, F_MODEL, model);
        ADD_CAPPED(rec, "KEYBROKER_CHECK", check);
        if (result >= 0)
                ADD(rec, "KEYBROKER_CHECK_OK", result ? "1" : "0");
        ADD(rec, "KEYBROKER_CHECK_RESULT", result < 0 ? "skipped" : result ? "passed" : "failed");
        ADD_CAPPED(rec, "KEYBROKER_CHECK_DETAIL", detail);
        ADDF(rec, F_LATENCY_MS, "%" PRIu64, latency_ms);
        if (evidence)
                ADD_CAPPED(rec, "KEYBROKER_EVIDENCE", evidence);
        return kb_journal_submit(j, TAKE_PTR(rec));
}

static int build_route(struct kb_record *rec, const struct kb_route_event *ev) {
        const char *event = kb_route_event_to_string(ev->kind);
        bool circuit = ev->kind == KB_ROUTE_CIRCUIT_OPENED || ev->kind == KB_ROUTE_CIRCUIT_HALF_OPEN ||
                ev->kind == KB_ROUTE_CIRCUIT_CLOSED;

        ADD(rec, F_MESSAGE_ID, KB_MID_ROUTE);
        switch (ev->kind) {
        case KB_ROUTE_CIRCUIT_OPENED:
        case KB_ROUTE_CIRCUIT_HALF_OPEN:
        case KB_ROUTE_CIRCUIT_CLOSED:
                ADDF(rec, F_MESSAGE, "route %.*s: circuit %s (%s)", MSG_NAME_MAX, strempty(ev->route),
                     ev->kind == KB_ROUTE_CIRCUIT_OPENED ? "opened"
                     : ev->kind == KB_ROUTE_CIRCUIT_CLOSED ? "closed" : "half-open",
                     strempty(ev->reason));
                break;
        case KB_ROUTE_CANARY_ROLLED_BACK:
                ADDF(rec, F_MESSAGE, "model %.*s: canary route %.*s rolled back to weight 0 (%s); weights now %.*s",
                     MSG_NAME_MAX, strempty(ev->model), MSG_NAME_MAX, strempty(ev->route), strempty(ev->reason),
                     MSG_ERROR_MAX, strempty(ev->weights));
                break;
        default:
                ADDF(rec, F_MESSAGE, "model %.*s: split changed to %.*s%s", MSG_NAME_MAX, strempty(ev->model),
                     MSG_ERROR_MAX, strempty(ev->weights), ev->admin_uid >= 0 ? " by an admin" : "");
                break;
        }
        ADD(rec, F_PRIORITY, ev->kind == KB_ROUTE_CIRCUIT_OPENED || ev->kind == KB_ROUTE_CANARY_ROLLED_BACK ? "4"
                             : ev->kind == KB_ROUTE_SPLIT_CHANGED ? "5" : "6");
        ADD(rec, F_EVENT, strempty(event));
        if (ev->route)
                ADD_CAPPED(rec, F_ROUTE, ev->route);
        if (ev->model)
                ADD_CAPPED(rec, F_MODEL, ev->model);
        if (ev->weights)
                ADD_CAPPED(rec, "KEYBROKER_WEIGHTS", ev->weights);
        if (ev->reason)
                ADD_CAPPED(rec, "KEYBROKER_REASON", ev->reason);
        if (ev->kind == KB_ROUTE_CIRCUIT_OPENED || ev->kind == KB_ROUTE_CANARY_ROLLED_BACK) {
                ADDF(rec, "KEYBROKER_ERROR_RATIO", "%.3f", ev->error_ratio);
                ADDF(rec, "KEYBROKER_REQUESTS", "%" PRIu64, ev->requests);
        }
        if (circuit)
                ADDF(rec, "KEYBROKER_CONSECUTIVE_FAILURES", "%u", ev->consecutive_failures);
        if (ev->admin_uid >= 0)
                ADDF(rec, F_ADMIN_UID, "%" PRId64, ev->admin_uid);
        return 0;
}

int kb_journal_route(struct kb_journal *j, const struct kb_route_event *ev) {
        if (!j || !ev || !kb_route_event_to_string(ev->kind))
                return -EINVAL;
        return SUBMIT_NEW(j, build_route, ev);
}

/* "$1.000021" (micro-USD) for a MESSAGE. */
static const char *usd(int64_t v, char buf[static 32]) {
        uint64_t m = v < 0 ? 0 - (uint64_t) v : (uint64_t) v;
        snprintf(buf, 32, "%s$%" PRIu64 ".%06u", v < 0 ? "-" : "", m / 1000000, (unsigned) (m % 1000000));
        return buf;
}

static int build_shadow_common(struct kb_record *rec, const struct kb_shadow_record *s) {
        ADD(rec, F_EVENT, s->event);
        ADD_CAPPED(rec, F_MODEL, s->model);
        ADD_CAPPED(rec, "KEYBROKER_SHADOW_ROUTE", s->shadow_route);
        ADD_CAPPED(rec, "KEYBROKER_SHADOW_UPSTREAM_MODEL", s->shadow_upstream_model);
        ADD_U64(rec, F_REALTIME_USEC, s->realtime_usec);
        ADD(rec, F_HOST, strempty(s->host));
        if (s->test)
                ADD(rec, F_TEST_TRAFFIC, "1");
        return 0;
}

static int build_shadow_pair(struct kb_record *rec, const struct kb_shadow_record *s) {
        char c1[32], c2[32];

        ADD(rec, F_MESSAGE_ID, KB_MID_SHADOW);
        ADDF(rec, F_MESSAGE, "shadow of %.*s via %.*s/%.*s: %s%s%s, %ld vs %ld, %" PRIu64 " vs %" PRIu64
             " out tokens, %" PRIu64 " vs %" PRIu64 " ms, %s vs %s%s",
             MSG_NAME_MAX, dash_if_empty(s->model), MSG_NAME_MAX, dash_if_empty(s->shadow_route), MSG_NAME_MAX,
             dash_if_empty(s->shadow_upstream_model), s->shape_match ? "same shape" : "differs (",
             s->shape_match ? "" : dash_if_empty(s->shape_diff), s->shape_match ? "" : ")", s->status,
             s->shadow_status, s->output_tokens, s->shadow_output_tokens, s->latency_ms, s->shadow_latency_ms,
             usd(s->cost_microusd, c1), usd(s->shadow_cost_microusd, c2),
             s->shadow_priced ? "" : " (shadow model unpriced: counted $0)");
        ADD(rec, F_PRIORITY, "6");
        TRY(build_shadow_common(rec, s));
        ADD(rec, F_REQUEST_ID, strempty(s->request_id));
        ADD_CAPPED(rec, F_TEAM, s->team);
        ADD(rec, F_ENDPOINT, strempty(s->endpoint));
        ADD(rec, F_STREAM, s->stream ? "1" : "0");
        ADD_CAPPED(rec, F_ROUTE, s->route);
        ADD_CAPPED(rec, F_UPSTREAM_MODEL, s->upstream_model);
        ADD_CAPPED(rec, "KEYBROKER_SHADOW_KEY", s->shadow_key);
        ADD_I64(rec, F_STATUS, s->status);
        ADD(rec, "KEYBROKER_STATUS_CLASS", strempty(s->status_class));
        ADD_I64(rec, "KEYBROKER_SHADOW_STATUS", s->shadow_status);
        ADD(rec, "KEYBROKER_SHADOW_ERROR", strempty(s->shadow_error));
        ADD(rec, "KEYBROKER_SHAPE_MATCH", s->shape_match ? "1" : "0");
        ADD_CAPPED(rec, "KEYBROKER_SHAPE_DIFF", s->shape_diff);
        ADD_U64(rec, F_INPUT_TOKENS, s->input_tokens);
        ADD_U64(rec, F_OUTPUT_TOKENS, s->output_tokens);
        ADD_U64(rec, "KEYBROKER_SHADOW_INPUT_TOKENS", s->shadow_input_tokens);
        ADD_U64(rec, "KEYBROKER_SHADOW_OUTPUT_TOKENS", s->shadow_output_tokens);
        if (s->output_tokens > 0)
                ADDF(rec, "KEYBROKER_OUTPUT_RATIO", "%.3f", (double) s->shadow_output_tokens / (double) s->output_tokens);
        else
                ADD(rec, "KEYBROKER_OUTPUT_RATIO", "");
        ADD_U64(rec, F_LATENCY_MS, s->latency_ms);
        ADD_U64(rec, "KEYBROKER_SHADOW_LATENCY_MS", s->shadow_latency_ms);
        ADD_I64(rec, F_COST_MICROUSD, s->cost_microusd);
        ADD_I64(rec, "KEYBROKER_SHADOW_COST_MICROUSD", s->shadow_cost_microusd);
        ADD(rec, "KEYBROKER_SHADOW_PRICED", s->shadow_priced ? "1" : "0");
        return 0;
}

static int build_shadow_event(struct kb_record *rec, const struct kb_shadow_record *s) {
        char c1[32], c2[32];
        bool budget = streq(s->event, "budget_reached");

        ADD(rec, F_MESSAGE_ID, KB_MID_SHADOW);
        if (budget)
                ADDF(rec, F_MESSAGE, "shadow of %.*s via %.*s reached its budget_usd_per_day: %s of %s spent today; "
                     "no more shadow calls until 00:00 UTC", MSG_NAME_MAX, dash_if_empty(s->model), MSG_NAME_MAX,
                     dash_if_empty(s->shadow_route), usd(s->spent_microusd, c1), usd(s->budget_microusd, c2));
        else
                ADDF(rec, F_MESSAGE, "shadow of %.*s via %.*s: %" PRIu64 " sampled request(s) not mirrored: "
                     "%u shadow calls already in flight", MSG_NAME_MAX, dash_if_empty(s->model), MSG_NAME_MAX,
                     dash_if_empty(s->shadow_route), s->skipped, (unsigned) KB_SHADOW_MAX_IN_FLIGHT);
        ADD(rec, F_PRIORITY, budget ? "5" : "4");
        TRY(build_shadow_common(rec, s));
        if (budget) {
                ADD_I64(rec, "KEYBROKER_SHADOW_SPENT_MICROUSD", s->spent_microusd);
                ADD_I64(rec, "KEYBROKER_SHADOW_BUDGET_MICROUSD", s->budget_microusd);
        } else
                ADD_U64(rec, "KEYBROKER_SHADOW_SKIPPED", s->skipped);
        return 0;
}

int kb_journal_shadow(struct kb_journal *j, const struct kb_shadow_record *s) {
        if (!j || !s || !s->event)
                return -EINVAL;
        if (streq(s->event, "pair"))
                return SUBMIT_NEW(j, build_shadow_pair, s);
        return SUBMIT_NEW(j, build_shadow_event, s);
}

static int build_promotion(struct kb_record *rec, const struct kb_promote_event *ev) {
        const struct kb_promote_view *v = ev->view;
        const struct kb_promote_figures *f = &v->fig;
        const char *event = kb_promote_event_to_string(ev->kind);
        bool bad = ev->kind == KB_PROMOTE_EV_ROLLED_BACK || (ev->kind == KB_PROMOTE_EV_GATE && !ev->gate_passed);
        bool figures = ev->kind == KB_PROMOTE_EV_GATE || ev->kind == KB_PROMOTE_EV_ROLLED_BACK ||
                ev->kind == KB_PROMOTE_EV_COMPLETED || ev->kind == KB_PROMOTE_EV_ABORTED;
        const struct kb_baseline *b = ev->baseline;

        ADD(rec, F_MESSAGE_ID, KB_MID_PROMOTE);
        ADDF(rec, F_MESSAGE, "model %.*s: promotion of route %.*s %s at step %zu of %zu (%u%%): %.*s", MSG_NAME_MAX,
             v->model, MSG_NAME_MAX, v->route, ev->kind == KB_PROMOTE_EV_GATE ? ev->gate_passed ? "gate passed" : "gate FAILED"
             : ev->kind == KB_PROMOTE_EV_STEP_REACHED ? "reached a step" : strempty(event), v->step + 1, v->n_steps,
             v->percent, MSG_ERROR_MAX, strempty(ev->reason));
        ADD(rec, F_PRIORITY, bad ? "4" : ev->kind == KB_PROMOTE_EV_GATE ? "6" : "5");
        ADD(rec, F_EVENT, strempty(event));
        ADD_CAPPED(rec, F_MODEL, v->model);
        ADD_CAPPED(rec, F_ROUTE, v->route);
        ADD_CAPPED(rec, F_UPSTREAM_MODEL, v->upstream_model);
        ADD_U64(rec, "KEYBROKER_STEP", v->step + 1);
        ADD_U64(rec, "KEYBROKER_PERCENT", v->percent);
        struct kb_buf steps = {};
        for (size_t i = 0; i < v->n_steps; i++)
                if (kb_buf_appendf(&steps, "%s%u", i ? "," : "", v->steps[i]) < 0) {
                        kb_buf_free(&steps);
                        return -ENOMEM;
                }
        int r = kb_record_add(rec, "KEYBROKER_STEPS", strempty(steps.data));
        kb_buf_free(&steps);
        TRY(r);
        if (ev->reason)
                ADD_CAPPED(rec, "KEYBROKER_REASON", ev->reason);
        if (ev->gate) {
                ADD_CAPPED(rec, "KEYBROKER_GATE", ev->gate);
                ADD(rec, "KEYBROKER_GATE_RESULT", ev->gate_passed ? "pass" : "fail");
        }
        if (ev->weights_before)
                ADD_CAPPED(rec, "KEYBROKER_WEIGHTS_BEFORE", ev->weights_before);
        if (ev->weights_after)
                ADD_CAPPED(rec, "KEYBROKER_WEIGHTS_AFTER", ev->weights_after);
        if (figures) {
                ADD_U64(rec, "KEYBROKER_REQUESTS", f->requests);
                ADD_U64(rec, "KEYBROKER_ERRORS", f->errors);
                ADDF(rec, "KEYBROKER_ERROR_RATIO", "%.3f", f->error_ratio);
                if (f->has_latency)
                        ADD_U64(rec, "KEYBROKER_P95_MS", f->p95_ms);
                ADD_U64(rec, "KEYBROKER_UPSTREAM_429", f->upstream_429);
                ADD_U64(rec, "KEYBROKER_TIMEOUTS", f->timeouts);
                ADD_U64(rec, "KEYBROKER_MODEL_NOT_FOUND", f->model_not_found);
                ADD_U64(rec, "KEYBROKER_MISSING_USAGE", f->missing_usage);
                ADDF(rec, "KEYBROKER_INPUT_TOKENS_PER_REQUEST", "%.1f", f->input_per_request);
                ADDF(rec, "KEYBROKER_OUTPUT_TOKENS_PER_REQUEST", "%.1f", f->output_per_request);
                ADD_CAPPED(rec, "KEYBROKER_BASELINE", ev->comparison ?: "no baseline");
                if (b) {
                        ADDF(rec, "KEYBROKER_BASELINE_ERROR_RATIO", "%.3f", b->error_ratio);
                        if (b->has_latency)
                                ADD_U64(rec, "KEYBROKER_BASELINE_P95_MS", b->p95_ms);
                        ADDF(rec, "KEYBROKER_BASELINE_INPUT_TOKENS_PER_REQUEST", "%.1f", b->input_per_request);
                        ADDF(rec, "KEYBROKER_BASELINE_OUTPUT_TOKENS_PER_REQUEST", "%.1f", b->output_per_request);
                }
        }
        if (ev->admin_uid >= 0)
                ADDF(rec, F_ADMIN_UID, "%" PRId64, ev->admin_uid);
        return 0;
}

int kb_journal_promotion(struct kb_journal *j, const struct kb_promote_event *ev) {
        if (!j || !ev || !ev->view || !kb_promote_event_to_string(ev->kind))
                return -EINVAL;
        return SUBMIT_NEW(j, build_promotion, ev);
}
