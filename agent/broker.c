/* SPDX-License-Identifier: MIT */
/* Loading and swapping what the broker runs on: config plus keys, at start
 * and on reload (SIGHUP, POST /reload). */

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>

#include "broker.h"
#include "routing.h"
#include "api.h"
#include "promote.h"
#include "fleet-objects.h"
#include "batch-poll.h"
#include "fleet-quota.h"
#include "fleet-store.h"
#include "quota-recovery.h"
#include "keywatch.h"

static const char *key_file_problem(int r) {
        switch (r) {
        case -ENODATA: return "file is empty";
        case -EFBIG: return "longer than 4096 bytes";
        case -EBADMSG: return "contains control characters";
        default: return strerror(-r);
        }
}

int kb_broker_load_keys(const struct kb_config *c, struct kb_keystore **ret, char **ret_error) {
        struct kb_keystore *ks = NULL;
        const char *bad = NULL;
        char *error = NULL;
        int r;

        r = kb_keystore_open(c->agent.keystore, c->agent.master_key, &ks, &error);
        if (r < 0) {
                if (!error && asprintf(&error, "%s: %s", strempty(c->agent.keystore), strerror(-r)) < 0)
                        error = NULL;
                *ret_error = error;
                return r;
        }
        r = kb_keystore_load_credentials(ks, c, &bad);
        if (r < 0) {
                if (asprintf(&error, "%s: cannot load key '%s' from credentials_dir %s: %s", c->path,
                             strempty(bad), strempty(c->agent.credentials_dir), key_file_problem(r)) < 0)
                        error = NULL;
                kb_keystore_free(ks);
                *ret_error = error;
                return r;
        }
        *ret = ks;
        return 0;
}

int kb_broker_reload(struct kb_broker *b, char **ret_error) {
        struct kb_config *c = NULL;
        struct kb_keystore *ks = NULL;
        char *error = NULL;

        (void) sd_notify(false, "RELOADING=1");
        int r = kb_config_load(b->config_path, false, &c, &error);
        if (r >= 0)
                r = kb_broker_load_keys(c, &ks, &error);
        /* Counters of teams that stay are kept; requests in flight settle
         * against the team they were admitted under. */
        if (r >= 0 && b->quota && (r = kb_quota_configure(b->quota, c)) < 0)
                kb_keystore_free(ks);
        if (r < 0) {
                if (!error && asprintf(&error, "%s: %s", b->config_path, strerror(-r)) < 0)
                        error = NULL;
                fprintf(stderr, "<3>reload rejected, keeping the running configuration: %s\n",
                        error ?: strerror(-r));
                (void) kb_journal_config(b->journal, "rejected", b->config_path, error ?: strerror(-r));
                kb_config_unref(c);
                (void) sd_notify(false, "READY=1");
                if (ret_error)
                        *ret_error = error;
                else
                        free(error);
                return r;
        }

        /* Requests in flight keep their own references to the old config
         * and to the key versions they started with. */
        kb_keystore_carry_stats(ks, b->keys);
        struct kb_config *old = b->config;
        b->config = c;
        (void) kb_broker_connect_store(b, old);
        kb_config_unref(old);
        kb_keystore_free(b->keys);
        b->keys = ks;
        kb_routing_reconfigure(b);
        /* A promotion whose model or candidate left with the reload ends here. */
        kb_promote_reconfigure(b);
        kb_batch_poll_reconfigure(b->batch_poll);
        (void) kb_broker_watch_keys(b);
        struct kb_http_limits lim = kb_api_limits(c);
        if (b->api)
                kb_http_server_set_limits(b->api, &lim);
        fprintf(stderr, "<6>configuration reloaded from %s\n", b->config_path);
        (void) kb_journal_config(b->journal, "reloaded", b->config_path, NULL);
        (void) sd_notify(false, "READY=1");
        return 0;
}

static void on_store_event(void *userdata, const struct kb_store_event *ev) {
        struct kb_broker *b = userdata;
        const char *url = b->config->agent.quota_store;

        if (ev->reason)
                fprintf(stderr, "<4>quota store %s %s: %s\n", strempty(url), ev->event, ev->reason);
        else
                fprintf(stderr, "<6>quota store %s %s, %" PRIu64 " broker(s) seen\n", strempty(url), ev->event,
                        ev->brokers);
        (void) kb_journal_store(b->journal, ev->event, url, ev->reason, ev->brokers);
        kb_broker_offline_share(b);
        if (!ev->reason)
                kb_fleet_store_up(b->fleet);
}

void kb_broker_offline_share(struct kb_broker *b) {
        uint32_t ppm = b->config->agent.offline_share_ppm;

        /* by default an equal share among the brokers last seen */
        if (ppm == 0)
                ppm = KB_QUOTA_SHARE_ALL / (uint32_t) MAX(MIN(kb_store_brokers(b->store), (uint64_t) 1000000), (uint64_t) 1);
        kb_quota_set_fleet_share(b->quota, ppm);
}

static void on_fleet_event(void *userdata, const struct kb_fleet_event *ev) {
        struct kb_broker *b = userdata;
        const char *url = b->config->agent.quota_store;

        if (streq(ev->event, "epoch"))
                fprintf(stderr, "<5>quota store %s has a new epoch %s: this broker's counters of %" PRIu64
                        " team(s) pushed into it\n", strempty(url), strempty(ev->epoch), ev->n);
        else
                fprintf(stderr, "<6>quota store %s: %" PRIu64 " settle(s) it never acknowledged sent again from the "
                        "journal\n", strempty(url), ev->n);
        (void) kb_journal_store_push(b->journal, ev->event, url, ev->epoch, ev->n, ev->tokens, ev->cost);
}

static void backfill_visit(void *userdata, const struct kb_replay_record *rec, uint64_t when_usec) {
        struct kb_broker *b = userdata;

        kb_fleet_backfill_settle(b->fleet, rec->team, rec->seq, when_usec, kb_replay_record_tokens(rec),
                                 (uint64_t) MAX(rec->cost_microusd, (int64_t) 0));
}

/* The fleet asks for settles the store has not acknowledged: this
 * instance's records in the journal since the start of the month (older
 * ones count in no open window). Blocks the loop while it reads, once per
 * connect after a restart or a reload that reconnected. */
static void backfill(void *userdata, uint64_t after_seq, uint64_t upto_seq) {
        struct kb_broker *b = userdata;
        uint64_t since = kb_quota_month_start_usec(kb_realtime_usec());
        int r = kb_quota_records(b->instance, after_seq, upto_seq, since, backfill_visit, b);

        if (r < 0)
                fprintf(stderr, "<4>cannot read the journal for settles the quota store misses (after %" PRIu64
                        ", up to %" PRIu64 "): %s\n", after_seq, upto_seq, strerror(-r));

}

void kb_broker_drop_store(struct kb_broker *b) {
        /* the store first: what waits on it is answered (no reply) while the
         * fleet that asked is still there */
        b->store = kb_store_free(b->store);
        b->fleet = kb_fleet_free(b->fleet);
        b->fleet_objects = kb_fleet_objects_free(b->fleet_objects);
}

static void mirror_put(void *userdata, const struct kb_object *o) {
        struct kb_broker *b = userdata;
        kb_fleet_objects_put(b->fleet_objects, o);
}

static void mirror_forget(void *userdata, const char *id) {
        struct kb_broker *b = userdata;
        kb_fleet_objects_forget(b->fleet_objects, id);
}

const struct kb_objects_mirror kb_broker_objects_mirror = {
        .put = mirror_put,
        .forget = mirror_forget,
};

static bool store_settings_equal(const struct kb_agent_config *a, const struct kb_agent_config *o) {
        return streq_ptr(a->quota_store, o->quota_store) && streq_ptr(a->quota_store_password, o->quota_store_password) &&
               streq_ptr(a->quota_store_prefix, o->quota_store_prefix) &&
               a->quota_store_timeout_usec == o->quota_store_timeout_usec;
}

int kb_broker_connect_store(struct kb_broker *b, const struct kb_config *old) {
        const struct kb_agent_config *a = &b->config->agent;
        int r;

        kb_broker_offline_share(b);
        if (old && store_settings_equal(a, &old->agent))
                return 0;
        kb_broker_drop_store(b);
        if (!a->quota_store)
                return 0;
        struct kb_store_options o = {
                .addr = &a->store,
                .password_file = a->quota_store_password,
                .prefix = a->quota_store_prefix,
                .timeout_usec = a->quota_store_timeout_usec,
                .instance = b->instance,
                .hostname = b->hostname,
        };
        r = kb_store_new(b->event, &o, on_store_event, b, &b->store);
        if (r >= 0)
                r = kb_fleet_new(b->store, b->quota, b->instance, &b->seq, &b->fleet);
        if (r >= 0)
                r = kb_fleet_objects_new(b->store, &b->fleet_objects);
        if (r >= 0) {
                kb_fleet_set_backfill(b->fleet, backfill, b);
                kb_fleet_set_handler(b->fleet, on_fleet_event, b);
        }
        if (r < 0) {
                fprintf(stderr, "<3>cannot set up the quota store %s: %s\n", a->quota_store, strerror(-r));
                kb_broker_drop_store(b);
        }
        return r;
}

int kb_broker_watch_keys(struct kb_broker *b) {
        const struct kb_agent_config *a = &b->config->agent;
        int r;

        if (!b->keywatch) {
                r = kb_keywatch_new(b->event, kb_broker_keys_changed, b, &b->keywatch);
                if (r < 0) {
                        fprintf(stderr, "<4>cannot watch key files: %s; a replaced key needs a reload\n", strerror(-r));
                        return r;
                }
        }
        r = kb_keywatch_set_paths(b->keywatch, a->credentials_dir, a->keystore);
        if (r < 0)
                fprintf(stderr, "<4>cannot watch all key files (credentials_dir %s, keystore %s): %s; "
                        "a key replaced there needs a reload\n", strempty(a->credentials_dir), strempty(a->keystore),
                        strerror(-r));
        return r;
}

/* The active version of name in ks: its description, or false. */
static bool active_key(const struct kb_keystore *ks, const char *name, struct kb_key_info *ret) {
        for (size_t i = 0; i < kb_keystore_n_versions(ks); i++)
                if (kb_keystore_describe(ks, i, ret) >= 0 && ret->active && streq(ret->name, name))
                        return true;
        return false;
}

/* Who put the file there: its owner now. */
static uid_t key_file_owner(const struct kb_agent_config *a, const struct kb_key_info *k) {
        _cleanup_free_ char *p = NULL;
        struct stat st;

        if (k->sealed)
                return a->keystore && stat(a->keystore, &st) == 0 ? st.st_uid : (uid_t) -1;
        if (!a->credentials_dir || asprintf(&p, "%s/%s", a->credentials_dir, k->name) < 0)
                return (uid_t) -1;
        return stat(p, &st) == 0 ? st.st_uid : (uid_t) -1;
}

void kb_broker_keys_changed(void *userdata) {
        struct kb_broker *b = userdata;
        const struct kb_agent_config *a = &b->config->agent;
        struct kb_keystore *ks = NULL;
        struct kb_key_info old, now;
        char *error = NULL, v[16];
        unsigned n = 0;

        int r = kb_broker_load_keys(b->config, &ks, &error);
        if (r < 0) {
                /* a half-written or bad file: keep serving with what we have */
                fprintf(stderr, "<4>key files changed but cannot be read, keeping the keys in use: %s\n",
                        error ?: strerror(-r));
                free(error);
                return;
        }
        for (size_t i = 0; i < kb_keystore_n_versions(ks); i++) {
                if (kb_keystore_describe(ks, i, &now) < 0 || !now.active)
                        continue;
                if (active_key(b->keys, now.name, &old) && old.version == now.version && old.sealed == now.sealed &&
                    streq(old.fingerprint, now.fingerprint))
                        continue;
                snprintf(v, sizeof(v), "%u", now.version);
                fprintf(stderr, "<5>key %s replaced on disk (version %s, fingerprint %s)\n", now.name, v,
                        now.fingerprint);
                (void) kb_journal_key(b->journal, "replaced", now.name, v, now.fingerprint, key_file_owner(a, &now));
                n++;
        }
        for (size_t i = 0; i < kb_keystore_n_versions(b->keys); i++) {
                if (kb_keystore_describe(b->keys, i, &old) < 0 || !old.active || active_key(ks, old.name, &now))
                        continue;
                fprintf(stderr, "<5>key %s removed on disk\n", old.name);
                (void) kb_journal_key(b->journal, "removed", old.name, "all", NULL, (uid_t) -1);
                n++;
        }
        if (n == 0) {
                /* our own keystore write, or a file rewritten unchanged */
                kb_keystore_free(ks);
                return;
        }
        /* As a reload does: requests in flight keep their key versions. */
        kb_keystore_carry_stats(ks, b->keys);
        kb_keystore_free(b->keys);
        b->keys = ks;
}

int kb_broker_instance_id(const char *state_dir, char ret[33]) {
        _cleanup_free_ char *path = NULL;
        char buf[64];

        if (!state_dir || asprintf(&path, "%s/instance", state_dir) < 0)
                return -ENOMEM;
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        if (f && fgets(buf, sizeof(buf), f) && strspn(buf, "0123456789abcdef") == 32) {
                memcpy(ret, buf, 32);
                ret[32] = 0;
                return 0;
        }
        /* First start with this state_dir: a new identity, kept from now on. */
        unsigned char raw[16];
        randombytes_buf(raw, sizeof(raw));
        sodium_bin2hex(ret, 33, raw, sizeof(raw));
        _cleanup_free_ char *tmp = NULL;
        if (asprintf(&tmp, "%s.tmp", path) < 0)
                return -ENOMEM;
        _cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                return -errno;
        if (dprintf(fd, "%s\n", ret) < 0 || fsync(fd) < 0 || rename(tmp, path) < 0) {
                int k = -errno;
                (void) unlink(tmp);
                return k;
        }
        return 0;
}
