/* SPDX-License-Identifier: MIT */
/* The admin socket's key endpoints: list, set/rotate, rollback, delete.
 * Every change is made by the keystore (which writes its file before
 * returning) and then journaled with the admin's uid. No secret is ever
 * copied out of the request body, and the body is zeroed once used. */

#include <sodium.h>

#include "admin.h"
#include "broker.h"

void kb_admin_body_wipe(struct kb_http_request *req) {
        if (req && req->body.data && req->body.len > 0)
                sodium_memzero(req->body.data, req->body.len);
}

int kb_admin_secret_from_body(const char *body, size_t len, size_t *ret_len, const char **ret_why) {
        const char *why = NULL;

        if (!body)
                len = 0;
        if (len > 0 && body[len - 1] == '\n') {
                len--;
                if (len > 0 && body[len - 1] == '\r')
                        len--;
        }
        if (len == 0)
                why = "the secret is empty";
        else if (len > KB_KEY_MAX_BYTES)
                why = "the secret is longer than 4096 bytes";
        for (size_t i = 0; !why && i < len; i++) {
                unsigned char ch = (unsigned char) body[i];
                /* A control byte in a key would end up inside an HTTP
                 * header upstream. */
                if (ch < 0x20 || ch == 0x7f)
                        why = "the secret contains control characters (only one trailing newline is stripped)";
        }
        if (why) {
                if (ret_why)
                        *ret_why = why;
                return -EINVAL;
        }
        *ret_len = len;
        return 0;
}

/* The listing entry of one sealed version (or the credentials entry when
 * version is 0). */
static int find_info(const struct kb_keystore *ks, const char *name, unsigned version, struct kb_key_info *ret) {
        size_t n = kb_keystore_n_versions(ks);

        for (size_t i = 0; i < n; i++) {
                struct kb_key_info info;
                if (kb_keystore_describe(ks, i, &info) < 0)
                        continue;
                if (streq(info.name, name) && info.version == version && info.sealed == (version > 0)) {
                        *ret = info;
                        return 0;
                }
        }
        return -ENOENT;
}

/* ---- GET /keys ---- */

static json_t *version_json(const struct kb_key_info *v) {
        return json_pack("{s:I, s:b, s:s, s:o, s:o, s:I}", "version", (json_int_t) v->version, "active", v->active,
                         "fingerprint", v->fingerprint, "created", kb_admin_time_json(v->created_usec), "last_used",
                         kb_admin_time_json(v->last_used_usec), "uses", (json_int_t) MIN(v->uses, (uint64_t) INT64_MAX));
}

void kb_admin_serve_keys(struct kb_conn *c, struct kb_broker *b) {
        size_t n = b->keys ? kb_keystore_n_versions(b->keys) : 0;
        json_t *keys = json_array();

        /* describe() is sorted by name, then version: one group per name. */
        for (size_t i = 0; keys && i < n;) {
                struct kb_key_info first;
                if (kb_keystore_describe(b->keys, i, &first) < 0) {
                        i++;
                        continue;
                }
                size_t end = i;
                bool sealed = false;
                for (; end < n; end++) {
                        struct kb_key_info v;
                        if (kb_keystore_describe(b->keys, end, &v) < 0 || !streq(v.name, first.name))
                                break;
                        sealed = sealed || v.sealed;
                }

                /* A credential file shadowed by a sealed key is not in use. */
                json_t *versions = json_array(), *active = json_null();
                for (size_t k = i; versions && k < end; k++) {
                        struct kb_key_info v;
                        if (kb_keystore_describe(b->keys, k, &v) < 0 || v.sealed != sealed)
                                continue;
                        if (v.active) {
                                json_decref(active);
                                active = json_integer(v.version);
                        }
                        json_t *o = version_json(&v);
                        if (!o || json_array_append_new(versions, o) < 0) {
                                json_decref(versions);
                                versions = NULL;
                        }
                }
                json_t *o = json_pack("{s:s, s:o, s:s, s:o}", "name", first.name, "active_version", active, "source",
                                      sealed ? "keystore" : "credentials", "versions", versions);
                if (!o || json_array_append_new(keys, o) < 0) {
                        json_decref(keys);
                        keys = NULL;
                }
                i = end;
        }
        kb_admin_respond(c, 200, keys ? json_pack("{s:o}", "keys", keys) : NULL);
}

/* ---- changes ---- */

static void change_failed(struct kb_conn *c, int r, const char *name, unsigned version) {
        switch (r) {
        case -ENOKEY:
                kb_admin_error(c, 409, "no_keystore", "no keystore: set [agent] keystore and master_key");
                break;
        case -EINVAL:
                kb_admin_error(c, 400, "invalid_request", "invalid secret for key '%s'", name);
                break;
        case -EEXIST:
                kb_admin_error(c, 409, "conflict", "key '%s' already exists", name);
                break;
        case -ENOENT:
                if (version > 0)
                        kb_admin_error(c, 404, "not_found", "key '%s' has no version %u", name, version);
                else
                        kb_admin_error(c, 404, "not_found", "no key '%s'", name);
                break;
        case -ESRCH:
                kb_admin_error(c, 409, "conflict", "key '%s' has no version older than the active one", name);
                break;
        case -EBUSY:
                kb_admin_error(c, 409, "conflict", "version %u of key '%s' is the active one", version, name);
                break;
        case -E2BIG:
        case -EUSERS:
                kb_admin_error(c, 409, "conflict", "the keystore holds too many keys to add '%s'", name);
                break;
        default:
                kb_admin_error(c, 500, "internal_error", "cannot change key '%s': %s", name, strerror(-r));
        }
}

static void journal_change(struct kb_broker *b, const char *action, const char *name, const char *version,
                           const char *fingerprint, uid_t uid) {
        fprintf(stderr, "<5>key %s %s (version %s) by uid %u\n", name, action, version, (unsigned) uid);
        int r = kb_journal_key(b->journal, action, name, version, fingerprint, uid);
        if (r < 0 && r != -EAGAIN)
                fprintf(stderr, "<4>key %s %s: cannot queue journal record: %s\n", name, action, strerror(-r));
}

/* Answer {"name","version","fingerprint","action"} for the now active version
 * and journal it. */
static void changed(struct kb_conn *c, struct kb_broker *b, const char *action, const char *name, unsigned version,
                    uid_t uid) {
        struct kb_key_info info = {};
        char v[16];

        (void) find_info(b->keys, name, version, &info);
        snprintf(v, sizeof(v), "%u", version);
        journal_change(b, action, name, v, info.fingerprint[0] ? info.fingerprint : NULL, uid);
        kb_admin_respond(c, 200, json_pack("{s:s, s:I, s:s, s:s}", "name", name, "version", (json_int_t) version,
                                           "fingerprint", info.fingerprint, "action", action));
}

/* The body holds the secret: it is zeroed before any answer, since the
 * request (and its body) may be released as soon as the answer is queued. */
static void serve_set(struct kb_conn *c, struct kb_broker *b, struct kb_http_request *req, const char *name,
                      uid_t uid) {
        const char *inm = kb_http_request_header(req, "If-None-Match");
        const char *im = kb_http_request_header(req, "If-Match");
        const char *why = NULL, *action = "set";
        unsigned version = 0;
        size_t len = 0;
        int r;

        if ((inm && !streq(inm, "*")) || (im && !streq(im, "*")) || (inm && im)) {
                kb_admin_body_wipe(req);
                kb_admin_error(c, 400, "invalid_request",
                               "only one of If-None-Match: * (create) or If-Match: * (rotate) may be given");
                return;
        }
        if (kb_admin_secret_from_body(req->body.data, req->body.len, &len, &why) < 0 ||
            kb_key_secret_valid(req->body.data, len) < 0) {
                kb_admin_body_wipe(req);
                kb_admin_error(c, 400, "invalid_request", "%s", why ?: "invalid secret");
                return;
        }

        if (im) {
                struct kb_key *k = NULL;
                r = kb_keystore_get(b->keys, name, &k);
                kb_key_unref(k);
                if (r >= 0) {
                        action = "rotated";
                        r = kb_keystore_rotate(b->keys, name, req->body.data, len, &version);
                }
        } else {
                r = kb_keystore_set(b->keys, name, req->body.data, len, &version);
                if (r == -EEXIST && !inm) {
                        action = "rotated";
                        r = kb_keystore_rotate(b->keys, name, req->body.data, len, &version);
                }
        }
        kb_admin_body_wipe(req);
        if (r == -ENOENT && im)
                kb_admin_error(c, 404, "not_found", "no key '%s' to rotate", name);
        else if (r < 0)
                change_failed(c, r, name, 0);
        else
                changed(c, b, action, name, version, uid);
}

static void serve_rollback(struct kb_conn *c, struct kb_broker *b, const char *name, uid_t uid) {
        unsigned version = 0;

        int r = kb_keystore_rollback(b->keys, name, &version);
        if (r < 0) {
                change_failed(c, r, name, 0);
                return;
        }
        changed(c, b, "rolled_back", name, version, uid);
}

static void serve_delete(struct kb_conn *c, struct kb_broker *b, const char *name, unsigned version, uid_t uid) {
        size_t n = kb_keystore_n_versions(b->keys);
        char fingerprint[KB_KEY_FINGERPRINT_HEX] = "";
        bool found = false, credentials = false;
        json_t *deleted = json_array();

        if (!deleted) {
                kb_admin_respond(c, 500, NULL);
                return;
        }
        for (size_t i = 0; i < n; i++) {
                struct kb_key_info info;
                if (kb_keystore_describe(b->keys, i, &info) < 0 || !streq(info.name, name))
                        continue;
                if (!info.sealed) {
                        credentials = true;
                        continue;
                }
                if (version > 0 && info.version != version)
                        continue;
                if (version > 0 && info.active) {
                        json_decref(deleted);
                        change_failed(c, -EBUSY, name, version);
                        return;
                }
                /* For a whole-key delete the record names the active version's fingerprint. */
                if (version > 0 || info.active)
                        memcpy(fingerprint, info.fingerprint, sizeof(fingerprint));
                found = true;
                json_array_append_new(deleted, json_integer(info.version));
        }
        if (!found) {
                json_decref(deleted);
                if (version == 0 && credentials)
                        kb_admin_error(c, 409, "conflict",
                                       "key '%s' comes from credentials_dir, not the keystore: remove its file there",
                                       name);
                else
                        change_failed(c, -ENOENT, name, version);
                return;
        }
        if (version == 0)
                for (size_t i = 0; i < b->config->n_routes; i++) {
                        const struct kb_route *route = &b->config->routes[i];
                        if (route->key && streq(route->key, name)) {
                                json_decref(deleted);
                                kb_admin_error(c, 409, "conflict", "key '%s' is used by route '%s'", name,
                                               route->name);
                                return;
                        }
                }

        int r = kb_keystore_delete(b->keys, name, version);
        if (r < 0) {
                json_decref(deleted);
                change_failed(c, r, name, version);
                return;
        }

        char v[16];
        if (version > 0)
                snprintf(v, sizeof(v), "%u", version);
        else
                snprintf(v, sizeof(v), "all");
        journal_change(b, "deleted", name, v, fingerprint[0] ? fingerprint : NULL, uid);
        kb_admin_respond(c, 200, json_pack("{s:s, s:o, s:s}", "name", name, "deleted", deleted, "action", "deleted"));
}

void kb_admin_serve_key_change(struct kb_conn *c, struct kb_broker *b, struct kb_http_request *req,
                               const struct kb_admin_target *t, uid_t admin_uid) {
        /* Only PUT has a use for a body; anything sent to the others is
         * dropped (it might be a misdirected secret). */
        if (t->endpoint != KB_ADMIN_KEY_SET)
                kb_admin_body_wipe(req);
        if (!b->keys) {
                kb_admin_body_wipe(req);
                change_failed(c, -ENOKEY, t->name, 0);
                return;
        }
        switch (t->endpoint) {
        case KB_ADMIN_KEY_SET:
                serve_set(c, b, req, t->name, admin_uid);
                break;
        case KB_ADMIN_KEY_ROLLBACK:
                serve_rollback(c, b, t->name, admin_uid);
                break;
        case KB_ADMIN_KEY_DELETE:
                serve_delete(c, b, t->name, t->version, admin_uid);
                break;
        default:
                kb_admin_error(c, 500, "internal_error", "not a key change");
        }
}
