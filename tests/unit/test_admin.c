/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "journal.h"
#include "keystore.h"
#include "keybroker/keybroker.h"
#include "util.h"

/* ---- request targets ---- */

static void parses(const char *method, const char *url, kb_admin_endpoint want, const char *name, unsigned version) {
        struct kb_admin_target t = {};
        int r = kb_admin_parse_target(method, url, &t);
        if (r != 0)
                fail_msg("%s %s: %s", method, url, strerror(-r));
        assert_int_equal(t.endpoint, want);
        assert_string_equal(t.name, name ?: "");
        assert_int_equal(t.version, version);
}

static void rejects(const char *method, const char *url, int want) {
        struct kb_admin_target t = { .endpoint = KB_ADMIN_RELOAD, .name = "untouched" };
        int r = kb_admin_parse_target(method, url, &t);
        if (r != want)
                fail_msg("%s %s: got %d, want %d", method, url, r, want);
}

static void test_targets(void **state) {
        parses("GET", "/status", KB_ADMIN_STATUS, NULL, 0);
        parses("GET", "/keys", KB_ADMIN_KEYS, NULL, 0);
        parses("GET", "/teams", KB_ADMIN_TEAMS, NULL, 0);
        parses("GET", "/routes", KB_ADMIN_ROUTES, NULL, 0);
        parses("POST", "/reload", KB_ADMIN_RELOAD, NULL, 0);
        parses("PUT", "/keys/openai-prod", KB_ADMIN_KEY_SET, "openai-prod", 0);
        parses("DELETE", "/keys/openai-prod", KB_ADMIN_KEY_DELETE, "openai-prod", 0);
        parses("DELETE", "/keys/a.b_c-D9?version=3", KB_ADMIN_KEY_DELETE, "a.b_c-D9", 3);
        parses("DELETE", "/keys/k?version=4294967295", KB_ADMIN_KEY_DELETE, "k", 4294967295u);
        parses("POST", "/keys/k/rollback", KB_ADMIN_KEY_ROLLBACK, "k", 0);

        char name[KB_ADMIN_KEY_NAME_MAX + 1], url[256];
        memset(name, 'x', KB_ADMIN_KEY_NAME_MAX);
        name[KB_ADMIN_KEY_NAME_MAX] = 0;
        snprintf(url, sizeof(url), "/keys/%s", name);
        parses("PUT", url, KB_ADMIN_KEY_SET, name, 0);
}

static void test_targets_not_found(void **state) {
        rejects("GET", "/", -ENOENT);
        rejects("GET", "/nope", -ENOENT);
        rejects("GET", "/status/", -ENOENT);
        rejects("GET", "/keys/", -ENOENT);
        rejects("GET", "/statusx", -ENOENT);
        rejects("GET", "/STATUS", -ENOENT);
        rejects("POST", "/keys/k/rollback/", -ENOENT);
        rejects("POST", "/keys/k/other", -ENOENT);
        rejects("POST", "/keys/k/rollbackx", -ENOENT);
        rejects("GET", "//status", -ENOENT);
}

static void test_targets_method(void **state) {
        rejects("POST", "/status", -EPERM);
        rejects("PUT", "/keys", -EPERM);
        rejects("GET", "/reload", -EPERM);
        rejects("GET", "/keys/k", -EPERM);
        rejects("POST", "/keys/k", -EPERM);
        rejects("GET", "/keys/k/rollback", -EPERM);
        rejects("get", "/status", -EPERM);
        rejects("HEAD", "/status", -EPERM);
        rejects("DELETE", "/teams", -EPERM);
}

static void test_targets_bad(void **state) {
        /* names */
        rejects("PUT", "/keys/a..b", -EBADMSG);
        rejects("PUT", "/keys/..", -EBADMSG);
        rejects("PUT", "/keys/.", -EBADMSG);
        rejects("PUT", "/keys/a b", -EBADMSG);
        rejects("PUT", "/keys/a:b", -EBADMSG);
        rejects("PUT", "/keys/a\x01", -EBADMSG);
        rejects("PUT", "/keys/caf\xc3\xa9", -EBADMSG);
        rejects("POST", "/keys/a..b/rollback", -EBADMSG);
        rejects("GET", "/keys//rollback", -EBADMSG);
        char name[KB_ADMIN_KEY_NAME_MAX + 2], url[256];
        memset(name, 'x', KB_ADMIN_KEY_NAME_MAX + 1);
        name[KB_ADMIN_KEY_NAME_MAX + 1] = 0;
        snprintf(url, sizeof(url), "/keys/%s", name);
        rejects("PUT", url, -EBADMSG);

        /* percent-encoding, anywhere */
        rejects("PUT", "/keys/a%2e%2eb", -EINVAL);
        rejects("GET", "/st%61tus", -EINVAL);
        rejects("DELETE", "/keys/k?version=%31", -EINVAL);

        /* versions */
        rejects("DELETE", "/keys/k?version=0", -ERANGE);
        rejects("DELETE", "/keys/k?version=", -ERANGE);
        rejects("DELETE", "/keys/k?version=-1", -ERANGE);
        rejects("DELETE", "/keys/k?version=+1", -ERANGE);
        rejects("DELETE", "/keys/k?version=01", -ERANGE);
        rejects("DELETE", "/keys/k?version=1a", -ERANGE);
        rejects("DELETE", "/keys/k?version= 1", -ERANGE);
        rejects("DELETE", "/keys/k?version=4294967296", -ERANGE);
        rejects("DELETE", "/keys/k?version=99999999999999999999", -ERANGE);

        /* queries elsewhere, other parameters, fragments, malformed */
        rejects("DELETE", "/keys/k?v=1", -EINVAL);
        rejects("DELETE", "/keys/k?version=1&x=2", -ERANGE);
        rejects("GET", "/status?x=1", -EINVAL);
        rejects("PUT", "/keys/k?version=1", -EINVAL);
        rejects("GET", "/status#x", -EINVAL);
        rejects("GET", "status", -EINVAL);
        rejects("GET", "", -EINVAL);
        rejects(NULL, "/status", -EINVAL);
        rejects("GET", NULL, -EINVAL);
}

static void test_key_names(void **state) {
        assert_true(kb_admin_key_name_valid("a", 1));
        assert_true(kb_admin_key_name_valid("a.b", 3));
        assert_true(kb_admin_key_name_valid(".hidden", 7));
        assert_false(kb_admin_key_name_valid("", 0));
        assert_false(kb_admin_key_name_valid("a..", 3));
        assert_false(kb_admin_key_name_valid("a/b", 3));
        /* n bounds the check: the byte after is not looked at */
        assert_true(kb_admin_key_name_valid("ab/", 2));
}

/* ---- peers ---- */

static void test_peers(void **state) {
        struct kb_agent_config a = {};
        struct kb_identity id = { .uid = 0, .gid = 0 };

        /* both lists empty: root only */
        assert_true(kb_admin_peer_allowed(&a, &id));
        id.uid = 1001;
        id.gid = 1001;
        assert_false(kb_admin_peer_allowed(&a, &id));
        assert_false(kb_admin_peer_allowed(&a, NULL));

        uid_t uids[] = { 1001 };
        gid_t gids[] = { 3000 };
        a.admin_uids = uids;
        a.n_admin_uids = 1;
        assert_true(kb_admin_peer_allowed(&a, &id));
        id.uid = 0;
        id.gid = 0;
        /* root is not implicitly an admin once a list is given */
        assert_false(kb_admin_peer_allowed(&a, &id));

        a.n_admin_uids = 0;
        a.admin_gids = gids;
        a.n_admin_gids = 1;
        id.uid = 1002;
        id.gid = 1002;
        assert_false(kb_admin_peer_allowed(&a, &id));
        gid_t sup[] = { 5, 3000 };
        id.groups = sup;
        id.n_groups = 2;
        assert_true(kb_admin_peer_allowed(&a, &id));
        id.n_groups = 1;
        assert_false(kb_admin_peer_allowed(&a, &id));
        id.gid = 3000;
        assert_true(kb_admin_peer_allowed(&a, &id));
}

/* ---- secrets ---- */

static void secret_ok(const char *body, size_t len, size_t want) {
        size_t got = 12345;
        assert_int_equal(kb_admin_secret_from_body(body, len, &got, NULL), 0);
        assert_int_equal(got, want);
}

static void secret_bad(const char *body, size_t len) {
        size_t got = 12345;
        const char *why = NULL;
        assert_int_equal(kb_admin_secret_from_body(body, len, &got, &why), -EINVAL);
        assert_int_equal(got, 12345);
        assert_non_null(why);
}

static void test_secrets(void **state) {
        secret_ok("sk-abc", 6, 6);
        secret_ok("sk-abc\n", 7, 6);
        secret_ok("sk-abc\r\n", 8, 6);
        secret_ok("sk abc", 6, 6);
        secret_ok("sk-\xc3\xa9", 5, 5);

        secret_bad("", 0);
        secret_bad(NULL, 0);
        secret_bad("\n", 1);
        secret_bad("\r\n", 2);
        secret_bad("sk-abc\n\n", 8);
        secret_bad("sk-abc\r", 7);
        secret_bad("sk\x01" "abc", 6);
        secret_bad("sk\tabc", 6);
        secret_bad("sk\x7f", 3);
        secret_bad("sk-abc\r\nX-Evil: 1", 17);
        secret_bad("sk\0abc", 6);

        char *big = malloc(KB_KEY_MAX_BYTES + 3);
        assert_non_null(big);
        memset(big, 'a', KB_KEY_MAX_BYTES + 2);
        secret_ok(big, KB_KEY_MAX_BYTES, KB_KEY_MAX_BYTES);
        big[KB_KEY_MAX_BYTES] = '\n';
        secret_ok(big, KB_KEY_MAX_BYTES + 1, KB_KEY_MAX_BYTES);
        big[KB_KEY_MAX_BYTES] = 'a';
        secret_bad(big, KB_KEY_MAX_BYTES + 1);
        secret_bad(big, KB_KEY_MAX_BYTES + 2);
        free(big);
}

/* ---- time ---- */

static void test_iso8601(void **state) {
        char buf[KB_ADMIN_ISO8601_MAX];

        assert_int_equal(kb_admin_iso8601(0, buf), 0);
        assert_string_equal(buf, "1970-01-01T00:00:00Z");
        assert_int_equal(kb_admin_iso8601(UINT64_C(1795590000) * USEC_PER_SEC + 999999, buf), 0);
        assert_string_equal(buf, "2026-11-25T07:00:00Z");

        json_t *j = kb_admin_time_json(0);
        assert_true(json_is_null(j));
        json_decref(j);
        j = kb_admin_time_json(USEC_PER_SEC);
        assert_string_equal(json_string_value(j), "1970-01-01T00:00:01Z");
        json_decref(j);
}

/* ---- the key-change record ---- */

struct capture {
        pthread_mutex_t lock;
        char *items[64];
        size_t n;
        unsigned records;
};
static struct capture cap = { .lock = PTHREAD_MUTEX_INITIALIZER };

static int capture_send(const struct iovec *iov, int n, void *userdata) {
        pthread_mutex_lock(&cap.lock);
        for (size_t i = 0; i < cap.n; i++)
                free(cap.items[i]);
        cap.n = 0;
        for (int i = 0; i < n && cap.n < ELEMENTSOF(cap.items); i++)
                cap.items[cap.n++] = strndup(iov[i].iov_base, iov[i].iov_len);
        cap.records++;
        pthread_mutex_unlock(&cap.lock);
        return 0;
}

static const char *field(const char *name) {
        size_t l = strlen(name);
        for (size_t i = 0; i < cap.n; i++)
                if (strncmp(cap.items[i], name, l) == 0 && cap.items[i][l] == '=')
                        return cap.items[i] + l + 1;
        return NULL;
}

static void test_journal_key(void **state) {
        struct kb_journal *j = NULL;

        assert_int_equal(kb_journal_new(16, &j), 0);
        kb_journal_set_sender(j, capture_send, NULL);

        assert_int_equal(kb_journal_key(j, "rotated", "openai-prod", "3", "0123456789abcdef", 0), 0);
        kb_journal_flush(j, 5 * USEC_PER_SEC);
        assert_int_equal(cap.records, 1);
        assert_string_equal(field("MESSAGE_ID"), KB_MID_KEY);
        assert_string_equal(field("MESSAGE"), "key openai-prod rotated to version 3 (fingerprint 0123456789abcdef) by uid 0");
        assert_string_equal(field("PRIORITY"), "5");
        assert_string_equal(field("KEYBROKER_KEY_NAME"), "openai-prod");
        assert_string_equal(field("KEYBROKER_KEY_VERSION"), "3");
        assert_string_equal(field("KEYBROKER_KEY_FINGERPRINT"), "0123456789abcdef");
        assert_string_equal(field("KEYBROKER_KEY_ACTION"), "rotated");
        assert_string_equal(field("KEYBROKER_ADMIN_UID"), "0");

        assert_int_equal(kb_journal_key(j, "rolled_back", "k", "2", "aaaaaaaaaaaaaaaa", 1001), 0);
        kb_journal_flush(j, 5 * USEC_PER_SEC);
        assert_string_equal(field("MESSAGE"), "key k rolled back to version 2 (fingerprint aaaaaaaaaaaaaaaa) by uid 1001");
        assert_string_equal(field("KEYBROKER_ADMIN_UID"), "1001");

        assert_int_equal(kb_journal_key(j, "deleted", "k", "all", NULL, 7), 0);
        kb_journal_flush(j, 5 * USEC_PER_SEC);
        assert_string_equal(field("MESSAGE"), "key k deleted (all versions) by uid 7");
        assert_string_equal(field("KEYBROKER_KEY_VERSION"), "all");
        assert_null(field("KEYBROKER_KEY_FINGERPRINT"));

        assert_int_equal(kb_journal_key(j, "deleted", "k", "1", "bbbbbbbbbbbbbbbb", 7), 0);
        kb_journal_flush(j, 5 * USEC_PER_SEC);
        assert_string_equal(field("MESSAGE"), "key k version 1 deleted by uid 7");
        assert_int_equal(cap.records, 4);

        assert_int_equal(kb_journal_key(NULL, "set", "k", "1", NULL, 0), -EINVAL);
        assert_int_equal(kb_journal_key(j, NULL, "k", "1", NULL, 0), -EINVAL);
        assert_int_equal(kb_journal_key(j, "set", NULL, "1", NULL, 0), -EINVAL);
        assert_int_equal(kb_journal_key(j, "set", "k", NULL, NULL, 0), -EINVAL);

        kb_journal_free(j, 5 * USEC_PER_SEC);
        for (size_t i = 0; i < cap.n; i++)
                free(cap.items[i]);
        cap.n = 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_targets),
                cmocka_unit_test(test_targets_not_found),
                cmocka_unit_test(test_targets_method),
                cmocka_unit_test(test_targets_bad),
                cmocka_unit_test(test_key_names),
                cmocka_unit_test(test_peers),
                cmocka_unit_test(test_secrets),
                cmocka_unit_test(test_iso8601),
                cmocka_unit_test(test_journal_key),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
