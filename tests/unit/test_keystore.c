/* SPDX-License-Identifier: MIT */
/* The sealed keystore: round trips, tamper/truncation/wrong-key refusal,
 * atomic writes, refcounted versions, secret validation, credential files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <ctype.h>
#include <inttypes.h>
#include <jansson.h>
#include <sodium.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helper.h"
#include "keyfile.h"
#include "keystore.h"
#include "util.h"

struct fx {
        char dir[64];
        char store[128];
        char master[128];
        unsigned char key[32];
};

static void write_master(struct fx *f, const unsigned char key[32], bool hex) {
        if (hex) {
                char h[66];
                sodium_bin2hex(h, 65, key, 32);
                strcat(h, "\n");
                kbt_write_file(f->master, h, 65);
        } else
                kbt_write_file(f->master, key, 32);
}

static int setup(void **state) {
        assert_true(sodium_init() >= 0);
        struct fx *f = calloc(1, sizeof(*f));
        kbt_mkdtemp(f->dir, sizeof(f->dir), "keystore");
        snprintf(f->store, sizeof(f->store), "%s/keys.sealed", f->dir);
        snprintf(f->master, sizeof(f->master), "%s/master", f->dir);
        randombytes_buf(f->key, sizeof(f->key));
        write_master(f, f->key, false);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        struct fx *f = *state;
        (void) kbt_rm_rf(f->dir);
        free(f);
        return 0;
}

static struct kb_keystore *open_ok(struct fx *f) {
        struct kb_keystore *ks = NULL;
        char *error = NULL;
        int r = kb_keystore_open(f->store, f->master, &ks, &error);
        if (r < 0)
                fail_msg("open: %s (%s)", strerror(-r), error ?: "-");
        assert_null(error);
        return ks;
}

/* Open expecting failure r; the message must name the store and contain want. */
static void open_fails(struct fx *f, int want_r, const char *want) {
        struct kb_keystore *ks = NULL;
        char *error = NULL;
        int r = kb_keystore_open(f->store, f->master, &ks, &error);
        if (r != want_r)
                fail_msg("open: got %d (%s), want %d; %s", r, strerror(-r), want_r, error ?: "-");
        assert_null(ks);
        assert_non_null(error);
        assert_non_null(strstr(error, f->store));
        if (want && !strstr(error, want))
                fail_msg("message '%s' lacks '%s'", error, want);
        free(error);
}

/* The secret of the active version, and its version. */
static void expect_secret(struct kb_keystore *ks, const char *name, const char *secret, unsigned version) {
        struct kb_key *k = NULL;
        assert_int_equal(kb_keystore_get(ks, name, &k), 0);
        size_t len;
        const char *s = kb_key_open(k, &len);
        assert_int_equal(len, strlen(secret));
        assert_memory_equal(s, secret, len);
        kb_key_close(k);
        assert_int_equal(kb_key_version(k), version);
        assert_string_equal(kb_key_name(k), name);
        kb_key_unref(k);
}

static void set_ok(struct kb_keystore *ks, const char *name, const char *secret, unsigned want) {
        unsigned v = 0;
        assert_int_equal(kb_keystore_set(ks, name, secret, strlen(secret), &v), 0);
        assert_int_equal(v, want);
}

static void rotate_ok(struct kb_keystore *ks, const char *name, const char *secret, unsigned want) {
        unsigned v = 0;
        assert_int_equal(kb_keystore_rotate(ks, name, secret, strlen(secret), &v), 0);
        assert_int_equal(v, want);
}

/* All of describe() as text, to compare whole states. */
static char *describe_all(struct kb_keystore *ks) {
        struct kb_buf b = {};
        for (size_t i = 0; i < kb_keystore_n_versions(ks); i++) {
                struct kb_key_info in;
                assert_int_equal(kb_keystore_describe(ks, i, &in), 0);
                assert_int_equal(strlen(in.fingerprint), 16);
                assert_int_equal(kb_buf_appendf(&b, "%s@%u %s %s %s %" PRIu64 "\n", in.name, in.version,
                                                in.active ? "active" : "-", in.sealed ? "sealed" : "file",
                                                in.fingerprint, in.created_usec),
                                 0);
        }
        struct kb_key_info in;
        assert_int_equal(kb_keystore_describe(ks, kb_keystore_n_versions(ks), &in), -ENOENT);
        if (!b.data)
                return strdup("");
        return b.data;
}

static void test_round_trip(void **state) {
        struct fx *f = *state;
        struct kb_keystore *ks = open_ok(f);
        assert_int_equal(kb_keystore_n_versions(ks), 0);

        set_ok(ks, "oai", "sk-one", 1);
        rotate_ok(ks, "oai", "sk-two", 2);
        rotate_ok(ks, "oai", "sk-three", 3);
        expect_secret(ks, "oai", "sk-three", 3);
        unsigned v = 0;
        assert_int_equal(kb_keystore_rollback(ks, "oai", &v), 0);
        assert_int_equal(v, 2);
        expect_secret(ks, "oai", "sk-two", 2);
        set_ok(ks, "anth", "ant-1", 1);
        set_ok(ks, "zz.key_1-x", "z", 1);

        /* Refusals. */
        assert_int_equal(kb_keystore_set(ks, "oai", "x", 1, &v), -EEXIST);
        assert_int_equal(kb_keystore_rotate(ks, "nope", "x", 1, &v), -ENOENT);
        assert_int_equal(kb_keystore_rollback(ks, "anth", &v), -ESRCH);
        assert_int_equal(kb_keystore_rollback(ks, "nope", &v), -ENOENT);
        assert_int_equal(kb_keystore_delete(ks, "oai", 2), -EBUSY);
        assert_int_equal(kb_keystore_delete(ks, "oai", 9), -ENOENT);
        assert_int_equal(kb_keystore_delete(ks, "nope", 0), -ENOENT);
        const char *bad_names[] = { "", ".", "a..b", "a/b", "a b", "ä", "x\n" };
        for (size_t i = 0; i < ELEMENTSOF(bad_names); i++) {
                assert_int_equal(kb_keystore_set(ks, bad_names[i], "x", 1, &v), -EINVAL);
                assert_int_equal(kb_keystore_rotate(ks, bad_names[i], "x", 1, &v), -EINVAL);
                assert_false(kb_key_name_valid(bad_names[i]));
        }
        char longname[130];
        memset(longname, 'n', 129);
        longname[129] = 0;
        assert_int_equal(kb_keystore_set(ks, longname, "x", 1, &v), -EINVAL);
        longname[128] = 0;
        assert_true(kb_key_name_valid(longname));

        /* Delete an inactive version, then a whole name. */
        assert_int_equal(kb_keystore_delete(ks, "oai", 3), 0);
        assert_int_equal(kb_keystore_delete(ks, "zz.key_1-x", 0), 0);
        struct kb_key *k = NULL;
        assert_int_equal(kb_keystore_get(ks, "zz.key_1-x", &k), -ENOENT);
        assert_null(k);
        /* Rotation numbers after the newest there ever was left, not the active. */
        assert_int_equal(kb_keystore_rollback(ks, "oai", &v), 0);
        assert_int_equal(v, 1);
        rotate_ok(ks, "oai", "sk-four", 3);

        _cleanup_free_ char *before = describe_all(ks);
        kb_keystore_free(ks);

        ks = open_ok(f);
        _cleanup_free_ char *after = describe_all(ks);
        assert_string_equal(before, after);
        /* Sorted by name, then version; exactly one active per name. */
        assert_non_null(strstr(after, "anth@1 active sealed"));
        assert_non_null(strstr(after, "oai@1 - sealed"));
        assert_non_null(strstr(after, "oai@2 - sealed"));
        assert_non_null(strstr(after, "oai@3 active sealed"));
        assert_true(strstr(after, "anth@1") < strstr(after, "oai@1"));
        assert_true(strstr(after, "oai@1") < strstr(after, "oai@2"));
        assert_int_equal(kb_keystore_n_versions(ks), 4);
        expect_secret(ks, "oai", "sk-four", 3);
        expect_secret(ks, "anth", "ant-1", 1);
        kb_keystore_free(ks);
}

static void test_file_mode_and_no_plaintext(void **state) {
        struct fx *f = *state;
        mode_t old = umask(0);
        struct kb_keystore *ks = open_ok(f);
        const char *secret = "sk-proj-VERYSECRETvalue0123456789";
        set_ok(ks, "oai", secret, 1);
        rotate_ok(ks, "oai", "sk-second-SECRET-abcdef", 2);
        umask(old);

        struct stat st;
        assert_int_equal(stat(f->store, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0600);
        size_t len;
        _cleanup_free_ char *text = kbt_read_file(f->store, &len);
        assert_null(memmem(text, len, secret, strlen(secret)));
        assert_null(memmem(text, len, "VERYSECRET", 10));
        assert_null(memmem(text, len, "sk-second", 9));
        /* Nor the master key, raw or hex. */
        char hex[65];
        sodium_bin2hex(hex, sizeof(hex), f->key, 32);
        assert_null(memmem(text, len, hex, 64));
        assert_null(memmem(text, len, f->key, 32));
        assert_non_null(strstr(text, "\"format\": \"keybroker-keystore-1\""));

        /* No temp file left behind. */
        _cleanup_free_ char *cmd = NULL;
        assert_true(asprintf(&cmd, "ls -a %s | grep -q tmp-", f->dir) > 0);
        assert_int_not_equal(system(cmd), 0);
        kb_keystore_free(ks);
}

static json_t *load_json(const char *path) {
        json_error_t e;
        json_t *j = json_load_file(path, 0, &e);
        assert_non_null(j);
        return j;
}

/* Write j back; with remac, with a MAC made with the right master key, so
 * that only the AEAD stands between the edit and success. */
static void save_json(struct fx *f, json_t *j, bool remac) {
        if (remac) {
                unsigned char *sk = NULL;
                char *mac = NULL;
                assert_int_equal(kb_subkeys_derive(f->key, &sk), 0);
                assert_int_equal(kb_keyfile_mac(sk, j, &mac), 0);
                assert_int_equal(json_object_set_new(j, "mac", json_string(mac)), 0);
                free(mac);
                kb_subkeys_free(sk);
        }
        assert_int_equal(json_dump_file(j, f->store, JSON_INDENT(2)), 0);
}

static json_t *record(json_t *j, const char *name, unsigned version) {
        size_t i;
        json_t *r;
        json_array_foreach(json_object_get(j, "keys"), i, r)
                if (streq(json_string_value(json_object_get(r, "name")), name) &&
                    json_integer_value(json_object_get(r, "version")) == version)
                        return r;
        fail_msg("no record %s@%u", name, version);
        return NULL;
}

static void swap_field(json_t *a, json_t *b, const char *field) {
        json_t *x = json_incref(json_object_get(a, field));
        json_object_set(a, field, json_object_get(b, field));
        json_object_set_new(b, field, x);
}

static void make_store(struct fx *f) {
        struct kb_keystore *ks = open_ok(f);
        set_ok(ks, "a", "secret-a1", 1);
        rotate_ok(ks, "a", "secret-a2", 2);
        set_ok(ks, "b", "secret-b1", 1);
        kb_keystore_free(ks);
}

static void test_ad_binding(void **state) {
        struct fx *f = *state;
        make_store(f);
        _cleanup_free_ char *orig = kbt_read_file(f->store, NULL);

        /* Control: re-MACed but unchanged opens, so the failures below come
         * from what was changed, not from how the test rewrites the file. */
        json_t *j = load_json(f->store);
        save_json(f, j, true);
        json_decref(j);
        kb_keystore_free(open_ok(f));

        const struct { const char *n1; unsigned v1; const char *n2; unsigned v2; } swaps[] = {
                { "a", 1, "b", 1 },     /* across names */
                { "a", 1, "a", 2 },     /* across versions */
        };
        for (size_t i = 0; i < ELEMENTSOF(swaps); i++)
                for (int remac = 0; remac <= 1; remac++) {
                        kbt_write_file(f->store, orig, strlen(orig));
                        j = load_json(f->store);
                        json_t *x = record(j, swaps[i].n1, swaps[i].v1), *y = record(j, swaps[i].n2, swaps[i].v2);
                        swap_field(x, y, "sealed");
                        swap_field(x, y, "nonce");
                        save_json(f, j, remac);
                        json_decref(j);
                        open_fails(f, -EBADMSG, "tampered");
                }

        /* A record renamed/renumbered as a whole is just as unreadable. */
        kbt_write_file(f->store, orig, strlen(orig));
        j = load_json(f->store);
        json_object_set_new(record(j, "b", 1), "name", json_string("c"));
        save_json(f, j, true);
        json_decref(j);
        open_fails(f, -EBADMSG, "tampered");
}

static void test_tamper(void **state) {
        struct fx *f = *state;
        make_store(f);
        _cleanup_free_ char *orig = kbt_read_file(f->store, NULL);

        /* A flipped byte in a sealed blob, with and without a fresh MAC. */
        for (int remac = 0; remac <= 1; remac++) {
                json_t *j = load_json(f->store);
                json_t *r = record(j, "a", 2);
                char *s = strdup(json_string_value(json_object_get(r, "sealed")));
                s[4] = s[4] == '0' ? '1' : '0';
                json_object_set_new(r, "sealed", json_string(s));
                free(s);
                save_json(f, j, remac);
                json_decref(j);
                open_fails(f, -EBADMSG, "restore it from backup");
                kbt_write_file(f->store, orig, strlen(orig));
        }

        /* Dropped version, toggled active, changed date, added field: the MAC. */
        json_t *j = load_json(f->store);
        size_t i;
        json_t *r;
        json_array_foreach(json_object_get(j, "keys"), i, r)
                if (json_integer_value(json_object_get(r, "version")) == 2)
                        break;
        json_array_remove(json_object_get(j, "keys"), i);
        save_json(f, j, false);
        json_decref(j);
        open_fails(f, -EBADMSG, "tampered");

        kbt_write_file(f->store, orig, strlen(orig));
        j = load_json(f->store);
        json_object_set_new(record(j, "a", 1), "active", json_true());
        json_object_set_new(record(j, "a", 2), "active", json_false());
        save_json(f, j, false);
        json_decref(j);
        open_fails(f, -EBADMSG, "tampered");

        kbt_write_file(f->store, orig, strlen(orig));
        j = load_json(f->store);
        json_object_set_new(record(j, "b", 1), "created", json_integer(1));
        save_json(f, j, false);
        json_decref(j);
        open_fails(f, -EBADMSG, "tampered");

        /* Even with a valid MAC, two active versions are refused. */
        kbt_write_file(f->store, orig, strlen(orig));
        j = load_json(f->store);
        json_object_set_new(record(j, "a", 1), "active", json_true());
        save_json(f, j, true);
        json_decref(j);
        open_fails(f, -EBADMSG, "tampered");

        /* A missing mac. */
        kbt_write_file(f->store, orig, strlen(orig));
        j = load_json(f->store);
        json_object_del(j, "mac");
        save_json(f, j, false);
        json_decref(j);
        open_fails(f, -EBADMSG, "tampered");

        /* Layout does not matter: re-indented but identical content opens. */
        kbt_write_file(f->store, orig, strlen(orig));
        j = load_json(f->store);
        assert_int_equal(json_dump_file(j, f->store, JSON_COMPACT), 0);
        json_decref(j);
        struct kb_keystore *ks = open_ok(f);
        expect_secret(ks, "a", "secret-a2", 2);
        kb_keystore_free(ks);
}

static void test_wrong_master(void **state) {
        struct fx *f = *state;
        make_store(f);
        unsigned char other[32];
        randombytes_buf(other, sizeof(other));
        write_master(f, other, false);
        open_fails(f, -EKEYREJECTED, "the master key does not match this keystore");
        write_master(f, other, true);
        open_fails(f, -EKEYREJECTED, "master key does not match");
        /* The right key, in hex this time, opens it. */
        write_master(f, f->key, true);
        struct kb_keystore *ks = open_ok(f);
        expect_secret(ks, "b", "secret-b1", 1);
        kb_keystore_free(ks);
}

static void test_truncated(void **state) {
        struct fx *f = *state;
        make_store(f);
        size_t len;
        _cleanup_free_ char *orig = kbt_read_file(f->store, &len);
        /* Every cut: never success; in the middle of the file it reads as cut off. */
        for (size_t cut = 0; cut < len - 1; cut++) {
                kbt_write_file(f->store, orig, cut);
                struct kb_keystore *ks = NULL;
                char *error = NULL;
                int r = kb_keystore_open(f->store, f->master, &ks, &error);
                if (r != -ENODATA && r != -EINVAL)
                        fail_msg("cut at %zu: %d %s", cut, r, error ?: "-");
                assert_null(ks);
                assert_non_null(strstr(error, f->store));
                free(error);
        }
        kbt_write_file(f->store, orig, len / 2);
        open_fails(f, -ENODATA, "truncated");
        kbt_write_file(f->store, orig, len - 3);
        open_fails(f, -ENODATA, "truncated");
        kbt_write_file(f->store, "", 0);
        open_fails(f, -ENODATA, "truncated");
        kbt_write_file(f->store, " \n\n", 3);
        open_fails(f, -ENODATA, "empty");

        /* Not a keystore at all. */
        kbt_write_file(f->store, "hello", 5);
        open_fails(f, -EINVAL, "not a keybroker keystore");
        kbt_write_file(f->store, "[1,2]", 5);
        open_fails(f, -EINVAL, "not a keybroker keystore");
        json_t *j = json_loads(orig, 0, NULL);
        json_object_set_new(j, "format", json_string("keybroker-keystore-9"));
        save_json(f, j, true);
        json_decref(j);
        open_fails(f, -EINVAL, "keybroker-keystore-9");
        /* Duplicate member names are not silently resolved. */
        kbt_write_file(f->store, "{\"format\":\"keybroker-keystore-1\",\"format\":\"x\"}", 46);
        open_fails(f, -EINVAL, NULL);
}

static void test_missing_files(void **state) {
        struct fx *f = *state;
        struct kb_keystore *ks = NULL;
        char *error = NULL;
        unsigned v;

        /* No store file: an empty store, created on the first change. */
        ks = open_ok(f);
        assert_int_equal(kb_keystore_n_versions(ks), 0);
        assert_int_equal(access(f->store, F_OK), -1);
        set_ok(ks, "a", "x", 1);
        assert_int_equal(access(f->store, F_OK), 0);
        kb_keystore_free(ks);

        /* Store there, master key gone. */
        unlink(f->master);
        open_fails(f, -ENOKEY, f->master);
        assert_int_equal(kb_keystore_open(f->store, NULL, &ks, &error), -ENOKEY);
        assert_non_null(strstr(error, "master key"));
        free(error);
        error = NULL;

        /* Neither there: fine, but changes need a key. */
        unlink(f->store);
        ks = open_ok(f);
        assert_int_equal(kb_keystore_set(ks, "a", "x", 1, &v), -ENOKEY);
        assert_int_equal(access(f->store, F_OK), -1);
        kb_keystore_free(ks);

        /* No keystore configured at all. */
        assert_int_equal(kb_keystore_open(NULL, f->master, &ks, &error), 0);
        assert_int_equal(kb_keystore_set(ks, "a", "x", 1, &v), -ENOKEY);
        assert_int_equal(kb_keystore_rotate(ks, "a", "x", 1, &v), -ENOKEY);
        assert_int_equal(kb_keystore_rollback(ks, "a", &v), -ENOKEY);
        assert_int_equal(kb_keystore_delete(ks, "a", 0), -ENOKEY);
        kb_keystore_free(ks);
        assert_int_equal(kb_keystore_new(&ks), 0);
        assert_int_equal(kb_keystore_set(ks, "a", "x", 1, &v), -ENOKEY);
        assert_int_equal(kb_keystore_get(ks, "a", &(struct kb_key *) { NULL }), -ENOENT);
        kb_keystore_free(ks);
        kb_keystore_free(NULL);
}

static void test_master_formats(void **state) {
        struct fx *f = *state;
        make_store(f);
        char hex[70];
        sodium_bin2hex(hex, 65, f->key, 32);

        /* Hex without newline, with CRLF, upper case. */
        kbt_write_file(f->master, hex, 64);
        kb_keystore_free(open_ok(f));
        strcpy(hex + 64, "\r\n");
        kbt_write_file(f->master, hex, 66);
        kb_keystore_free(open_ok(f));
        for (char *c = hex; *c; c++)
                *c = (char) toupper((unsigned char) *c);
        kbt_write_file(f->master, hex, 65);
        kb_keystore_free(open_ok(f));
        write_master(f, f->key, false);
        kb_keystore_free(open_ok(f));

        /* Malformed: refused, even before any store exists. */
        const struct { const char *data; size_t len; } bad[] = {
                { "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde", 63 },
                { "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg", 64 },
                { "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0", 65 },
                { "0123456789abcdef0123456789abcde", 31 },
                { "0123456789abcdef0123456789abcdef0", 33 },
                { "", 0 },
                { "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 32 },
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                kbt_write_file(f->master, bad[i].data, bad[i].len);
                open_fails(f, -ENOKEY, f->master);
                struct kb_keystore *ks = NULL;
                char *error = NULL;
                assert_int_equal(kb_keystore_open(NULL, f->master, &ks, &error), -ENOKEY);
                assert_non_null(strstr(error, f->master));
                free(error);
        }
        /* A directory is no key file either. */
        unlink(f->master);
        assert_int_equal(mkdir(f->master, 0700), 0);
        open_fails(f, -ENOKEY, f->master);
}

static void test_failed_write_leaves_memory(void **state) {
        struct fx *f = *state;
        char sub[160], moved[160], store[200];
        snprintf(sub, sizeof(sub), "%s/sub", f->dir);
        snprintf(moved, sizeof(moved), "%s/moved", f->dir);
        snprintf(store, sizeof(store), "%s/keys.sealed", sub);
        assert_int_equal(mkdir(sub, 0700), 0);

        struct kb_keystore *ks = NULL;
        char *error = NULL;
        assert_int_equal(kb_keystore_open(store, f->master, &ks, &error), 0);
        set_ok(ks, "a", "one", 1);
        rotate_ok(ks, "a", "two", 2);
        set_ok(ks, "b", "bee", 1);
        _cleanup_free_ char *before = describe_all(ks);

        /* The directory vanishes: every change fails and nothing moves. */
        assert_int_equal(rename(sub, moved), 0);
        unsigned v = 77;
        assert_int_equal(kb_keystore_rotate(ks, "a", "three", 5, &v), -ENOENT);
        assert_int_equal(kb_keystore_set(ks, "c", "sea", 3, &v), -ENOENT);
        assert_int_equal(kb_keystore_rollback(ks, "a", &v), -ENOENT);
        assert_int_equal(kb_keystore_delete(ks, "a", 1), -ENOENT);
        assert_int_equal(kb_keystore_delete(ks, "b", 0), -ENOENT);
        assert_int_equal(v, 77);
        _cleanup_free_ char *after = describe_all(ks);
        assert_string_equal(before, after);
        expect_secret(ks, "a", "two", 2);
        expect_secret(ks, "b", "bee", 1);

        /* The rename itself fails (the store path became a directory): the
         * temp file is removed, memory unchanged. */
        assert_int_equal(rename(moved, sub), 0);
        assert_int_equal(unlink(store), 0);
        assert_int_equal(mkdir(store, 0700), 0);
        char inner[260];
        snprintf(inner, sizeof(inner), "%s/x", store);
        kbt_write_file(inner, "x", 1);
        assert_true(kb_keystore_rotate(ks, "a", "three", 5, &v) < 0);
        _cleanup_free_ char *after2 = describe_all(ks);
        assert_string_equal(before, after2);
        expect_secret(ks, "a", "two", 2);
        _cleanup_free_ char *cmd = NULL;
        assert_true(asprintf(&cmd, "ls -a %s | grep -q tmp-", sub) > 0);
        assert_int_not_equal(system(cmd), 0);
        kb_keystore_free(ks);
}

static void test_refcount(void **state) {
        struct fx *f = *state;
        struct kb_keystore *ks = open_ok(f);
        set_ok(ks, "a", "old-secret", 1);
        struct kb_key *k1 = NULL, *k2 = NULL;
        assert_int_equal(kb_keystore_get(ks, "a", &k1), 0);
        rotate_ok(ks, "a", "new-secret", 2);
        assert_int_equal(kb_keystore_get(ks, "a", &k2), 0);
        /* Deleting the old version does not pull it from under a request. */
        assert_int_equal(kb_keystore_delete(ks, "a", 1), 0);
        kb_keystore_free(ks);

        size_t len;
        const char *s = kb_key_open(k1, &len);
        /* Nested opens keep it readable until the last close. */
        const char *s2 = kb_key_open(k1, &len);
        kb_key_close(k1);
        assert_int_equal(len, 10);
        assert_memory_equal(s, "old-secret", 10);
        assert_ptr_equal(s, s2);
        kb_key_close(k1);
        assert_int_equal(kb_key_version(k1), 1);
        s = kb_key_open(k2, &len);
        assert_memory_equal(s, "new-secret", 10);
        kb_key_close(k2);
        assert_int_equal(kb_key_version(k2), 2);
        assert_ptr_equal(kb_key_ref(k2), k2);
        assert_null(kb_key_unref(k2));
        assert_null(kb_key_unref(k2));
        assert_null(kb_key_unref(k1));
        assert_null(kb_key_unref(NULL));
}

/* Reading s in a child: true when the read faulted (the page is PROT_NONE). */
static bool read_faults(const char *s) {
        pid_t pid = fork();
        int status;

        assert_true(pid >= 0);
        if (pid == 0) {
                /* cmocka catches SIGSEGV to report a failed test: the child
                 * must die of it instead. */
                signal(SIGSEGV, SIG_DFL);
                signal(SIGBUS, SIG_DFL);
                volatile char c = s[0];
                (void) c;
                _exit(0);
        }
        assert_int_equal(waitpid(pid, &status, 0), pid);
        return WIFSIGNALED(status) && (WTERMSIG(status) == SIGSEGV || WTERMSIG(status) == SIGBUS);
}

/* The request path releases keys instead of closing them: readable until
 * the next sweep, and only while nobody holds them open after it. */
static void test_release_and_reseal(void **state) {
        struct fx *f = *state;
        struct kb_keystore *ks = open_ok(f);
        struct kb_key *k = NULL, *k2 = NULL;
        size_t len;

        set_ok(ks, "a", "a-secret", 1);
        set_ok(ks, "b", "b-secret", 1);
        assert_int_equal(kb_keystore_get(ks, "a", &k), 0);
        assert_int_equal(kb_keystore_get(ks, "b", &k2), 0);
        assert_int_equal(kb_keys_n_readable(), 0);

        const char *s = kb_key_open(k, &len);
        assert_false(read_faults(s));
        assert_int_equal(kb_keys_n_readable(), 1);
        kb_key_release(k);
        /* Released: still readable until swept. */
        assert_int_equal(kb_keys_n_readable(), 1);
        assert_memory_equal(s, "a-secret", 8);

        /* Open again while readable: no change; a sweep while open keeps it. */
        s = kb_key_open(k, &len);
        const char *s2 = kb_key_open(k2, &len);
        kb_key_release(k2);
        assert_int_equal(kb_keys_reseal_idle(), 1);
        assert_false(read_faults(s));
        assert_true(read_faults(s2));
        kb_key_release(k);
        assert_int_equal(kb_keys_reseal_idle(), 0);
        assert_true(read_faults(s));

        /* Close is still immediate. */
        s = kb_key_open(k, &len);
        kb_key_close(k);
        assert_int_equal(kb_keys_n_readable(), 0);
        assert_true(read_faults(s));

        /* A released key freed before the sweep leaves the list. */
        (void) kb_key_open(k2, &len);
        kb_key_release(k2);
        assert_int_equal(kb_keys_n_readable(), 1);
        kb_keystore_free(ks);
        assert_null(kb_key_unref(k2));
        assert_int_equal(kb_keys_n_readable(), 0);
        assert_int_equal(kb_keys_reseal_idle(), 0);
        assert_null(kb_key_unref(k));
}

static void test_secret_validation(void **state) {
        struct fx *f = *state;
        char big[4100];
        memset(big, 'k', sizeof(big));
        assert_int_equal(kb_key_secret_valid("sk-abc", 6), 1);
        assert_int_equal(kb_key_secret_valid("sk-abc\n", 7), 1);
        assert_int_equal(kb_key_secret_valid("sk-abc\r\n", 8), 1);
        assert_int_equal(kb_key_secret_valid("\xc3\xa4x", 3), 1);
        assert_int_equal(kb_key_secret_valid(big, 4096), 1);
        big[4096] = '\n';
        assert_int_equal(kb_key_secret_valid(big, 4097), 1);
        big[4096] = 'k';
        assert_int_equal(kb_key_secret_valid(big, 4097), -EFBIG);
        assert_int_equal(kb_key_secret_valid("", 0), -ENODATA);
        assert_int_equal(kb_key_secret_valid("\n", 1), -ENODATA);
        assert_int_equal(kb_key_secret_valid("\r\n", 2), -ENODATA);
        assert_int_equal(kb_key_secret_valid("a\nb", 3), -EBADMSG);
        assert_int_equal(kb_key_secret_valid("a\rb", 3), -EBADMSG);
        assert_int_equal(kb_key_secret_valid("a\n\n", 3), -EBADMSG);
        assert_int_equal(kb_key_secret_valid("a\0b", 3), -EBADMSG);
        assert_int_equal(kb_key_secret_valid("a\tb", 3), -EBADMSG);
        assert_int_equal(kb_key_secret_valid("a\x7f", 2), -EBADMSG);
        assert_int_equal(kb_key_secret_valid("a\x01", 2), -EBADMSG);
        assert_int_equal(kb_key_secret_valid(NULL, 0), -ENODATA);

        struct kb_keystore *ks = open_ok(f);
        unsigned v = 9;
        assert_int_equal(kb_keystore_set(ks, "a", "", 0, &v), -EINVAL);
        assert_int_equal(kb_keystore_set(ks, "a", "x\001y", 3, &v), -EINVAL);
        assert_int_equal(kb_keystore_set(ks, "a", big, 4097, &v), -EINVAL);
        assert_int_equal(v, 9);
        assert_int_equal(kb_keystore_n_versions(ks), 0);
        assert_int_equal(access(f->store, F_OK), -1);
        /* A trailing newline is not part of the secret. */
        set_ok(ks, "a", "with-newline\n", 1);
        expect_secret(ks, "a", "with-newline", 1);
        assert_int_equal(kb_keystore_rotate(ks, "a", "x\ny", 3, &v), -EINVAL);
        assert_int_equal(kb_keystore_rotate(ks, "a", big, 4096, &v), 0);
        kb_keystore_free(ks);
        ks = open_ok(f);
        struct kb_key *k;
        assert_int_equal(kb_keystore_get(ks, "a", &k), 0);
        size_t len;
        kb_key_open(k, &len);
        assert_int_equal(len, 4096);
        kb_key_close(k);
        kb_key_unref(k);
        kb_keystore_free(ks);
}

static void fingerprint_of(struct kb_keystore *ks, const char *name, char ret[KB_KEY_FINGERPRINT_HEX]) {
        struct kb_key *k;
        assert_int_equal(kb_keystore_get(ks, name, &k), 0);
        kb_keystore_fingerprint(ks, k, ret);
        kb_key_unref(k);
        assert_int_equal(strlen(ret), 16);
        assert_int_equal(strspn(ret, "0123456789abcdef"), 16);
}

static void test_fingerprint(void **state) {
        struct fx *f = *state;
        char fa[17], fb[17], fc[17], fa2[17], fz[17];
        struct kb_keystore *ks = open_ok(f);
        set_ok(ks, "a", "secret-one", 1);
        set_ok(ks, "b", "secret-two", 1);
        set_ok(ks, "c", "secret-one", 1);
        fingerprint_of(ks, "a", fa);
        fingerprint_of(ks, "b", fb);
        fingerprint_of(ks, "c", fc);
        assert_string_not_equal(fa, fb);
        assert_string_equal(fa, fc); /* of the secret, not the name */
        struct kb_key_info in;
        assert_int_equal(kb_keystore_describe(ks, 0, &in), 0);
        assert_string_equal(in.name, "a");
        assert_string_equal(in.fingerprint, fa);
        kb_keystore_free(ks);

        ks = open_ok(f);
        fingerprint_of(ks, "a", fa2);
        assert_string_equal(fa, fa2);
        /* Not a bare hash of the secret: keyed with the master key. */
        unsigned char h[16];
        char plain[17];
        crypto_generichash(h, 16, (const unsigned char *) "secret-one", 10, NULL, 0);
        sodium_bin2hex(plain, 17, h, 8);
        assert_string_not_equal(fa, plain);
        kb_keystore_free(ks);

        /* Another master key, another fingerprint for the same secret. */
        unlink(f->store);
        unsigned char other[32];
        randombytes_buf(other, 32);
        write_master(f, other, false);
        ks = open_ok(f);
        set_ok(ks, "a", "secret-one", 1);
        fingerprint_of(ks, "a", fz);
        assert_string_not_equal(fa, fz);
        kb_keystore_free(ks);

        /* Without a master key: stable within the process. */
        struct kb_keystore *n1, *n2;
        assert_int_equal(kb_keystore_new(&n1), 0);
        assert_int_equal(kb_keystore_new(&n2), 0);
        struct kb_key *k = NULL;
        assert_int_equal(kb_keystore_open(f->store, f->master, &ks, NULL), 0);
        assert_int_equal(kb_keystore_get(ks, "a", &k), 0);
        char p1[17], p2[17];
        kb_keystore_fingerprint(n1, k, p1);
        kb_keystore_fingerprint(n2, k, p2);
        assert_string_equal(p1, p2);
        assert_string_not_equal(p1, fz);
        kb_key_unref(k);
        kb_keystore_free(ks);
        kb_keystore_free(n1);
        kb_keystore_free(n2);
}

static void test_credentials(void **state) {
        struct fx *f = *state;
        char cdir[160], p[200];
        snprintf(cdir, sizeof(cdir), "%s/creds", f->dir);
        assert_int_equal(mkdir(cdir, 0700), 0);
#define CRED(n, s, l) (snprintf(p, sizeof(p), "%s/%s", cdir, n), kbt_write_file(p, s, l))
        CRED("lf", "sk-lf\n", 6);
        CRED("crlf", "sk-crlf\r\n", 9);
        CRED("plain", "sk-plain", 8);
        struct kb_route routes[] = { { .key = "lf" }, { .key = "crlf" }, { .key = "plain" }, { .key = "missing" },
                                     { .key = NULL }, { .key = "lf" }, { .key = "bad" } };
        struct kb_config c = { .routes = routes, .n_routes = 6 };
        c.agent.credentials_dir = cdir;

        struct kb_keystore *ks = open_ok(f);
        const char *bad = NULL;
        assert_int_equal(kb_keystore_load_credentials(ks, &c, &bad), 0);
        assert_null(bad);
        expect_secret(ks, "lf", "sk-lf", 0);
        expect_secret(ks, "crlf", "sk-crlf", 0);
        expect_secret(ks, "plain", "sk-plain", 0);
        struct kb_key *k = NULL;
        assert_int_equal(kb_keystore_get(ks, "missing", &k), -ENOENT);
        assert_int_equal(kb_keystore_n_versions(ks), 3);
        struct kb_key_info in;
        assert_int_equal(kb_keystore_describe(ks, 0, &in), 0);
        assert_string_equal(in.name, "crlf");
        assert_false(in.sealed);
        assert_true(in.active);
        assert_int_equal(in.version, 0);
        assert_int_equal(in.created_usec, 0);

        /* Rotating a file-only key seals version 1, which wins over the file;
         * deleting it falls back to the file. */
        unsigned v;
        assert_int_equal(kb_keystore_rollback(ks, "plain", &v), -ESRCH);
        assert_int_equal(kb_keystore_delete(ks, "plain", 0), -ENOENT);
        rotate_ok(ks, "plain", "sk-sealed", 1);
        expect_secret(ks, "plain", "sk-sealed", 1);
        _cleanup_free_ char *d = describe_all(ks);
        assert_non_null(strstr(d, "plain@0 - file"));
        assert_non_null(strstr(d, "plain@1 active sealed"));
        assert_int_equal(kb_keystore_delete(ks, "plain", 0), 0);
        expect_secret(ks, "plain", "sk-plain", 0);
        rotate_ok(ks, "plain", "sk-sealed-again", 1);
        kb_keystore_free(ks);

        /* After a restart the sealed name is not read from the file at all,
         * even if that file is now invalid. */
        CRED("plain", "bad\001", 4);
        ks = open_ok(f);
        assert_int_equal(kb_keystore_load_credentials(ks, &c, &bad), 0);
        expect_secret(ks, "plain", "sk-sealed-again", 1);
        assert_int_equal(kb_keystore_n_versions(ks), 3);
        kb_keystore_free(ks);

        /* Invalid files name the key. */
        const struct { const char *data; size_t len; int r; } invalid[] = {
                { "", 0, -ENODATA },     { "\n", 1, -ENODATA },   { "a\x01z", 3, -EBADMSG },
                { "a\nb\n", 4, -EBADMSG }, { "a\tb", 3, -EBADMSG }, { "a\0b", 3, -EBADMSG },
        };
        CRED("plain", "sk-plain", 8);
        c.n_routes = 7;
        for (size_t i = 0; i < ELEMENTSOF(invalid); i++) {
                CRED("bad", invalid[i].data, invalid[i].len);
                assert_int_equal(kb_keystore_new(&ks), 0);
                bad = NULL;
                assert_int_equal(kb_keystore_load_credentials(ks, &c, &bad), invalid[i].r);
                assert_string_equal(bad, "bad");
                kb_keystore_free(ks);
        }
        char big[4098];
        memset(big, 'x', sizeof(big));
        CRED("bad", big, 4097);
        assert_int_equal(kb_keystore_new(&ks), 0);
        assert_int_equal(kb_keystore_load_credentials(ks, &c, &bad), -EFBIG);
        kb_keystore_free(ks);
        big[4096] = '\n';
        CRED("bad", big, 4097);
        assert_int_equal(kb_keystore_new(&ks), 0);
        assert_int_equal(kb_keystore_load_credentials(ks, &c, &bad), 0);
        kb_keystore_free(ks);

        /* A symlink is not followed; no credentials_dir is fine. */
        snprintf(p, sizeof(p), "%s/bad", cdir);
        unlink(p);
        assert_int_equal(symlink("/etc/hostname", p), 0);
        assert_int_equal(kb_keystore_new(&ks), 0);
        assert_true(kb_keystore_load_credentials(ks, &c, &bad) < 0);
        kb_keystore_free(ks);
        c.agent.credentials_dir = NULL;
        assert_int_equal(kb_keystore_new(&ks), 0);
        assert_int_equal(kb_keystore_load_credentials(ks, &c, &bad), 0);
        kb_keystore_free(ks);
#undef CRED
}

static void test_max_versions(void **state) {
        struct fx *f = *state;
        struct kb_keystore *ks = open_ok(f);
        set_ok(ks, "a", "v1", 1);
        set_ok(ks, "b", "b1", 1);
        char s[32];
        for (unsigned i = 2; i <= KB_KEY_MAX_VERSIONS + 6; i++) {
                snprintf(s, sizeof(s), "v%u", i);
                rotate_ok(ks, "a", s, i);
        }
        assert_int_equal(kb_keystore_n_versions(ks), KB_KEY_MAX_VERSIONS + 1);
        struct kb_key_info in;
        assert_int_equal(kb_keystore_describe(ks, 0, &in), 0);
        assert_int_equal(in.version, 7); /* 1..6 pruned */
        assert_int_equal(kb_keystore_describe(ks, KB_KEY_MAX_VERSIONS - 1, &in), 0);
        assert_int_equal(in.version, KB_KEY_MAX_VERSIONS + 6);
        assert_true(in.active);
        kb_keystore_free(ks);
        ks = open_ok(f);
        assert_int_equal(kb_keystore_n_versions(ks), KB_KEY_MAX_VERSIONS + 1);
        snprintf(s, sizeof(s), "v%u", KB_KEY_MAX_VERSIONS + 6);
        expect_secret(ks, "a", s, KB_KEY_MAX_VERSIONS + 6);
        expect_secret(ks, "b", "b1", 1);
        kb_keystore_free(ks);
}

static void test_usage_stats(void **state) {
        struct fx *f = *state;
        struct kb_keystore *ks = open_ok(f);
        set_ok(ks, "a", "one", 1);
        struct kb_key *k;
        assert_int_equal(kb_keystore_get(ks, "a", &k), 0);
        kb_key_mark_used(k, 1000);
        kb_key_mark_used(k, 2000);
        kb_key_unref(k);
        /* Counters belong to the version and survive a rotation. */
        rotate_ok(ks, "a", "two", 2);
        struct kb_key_info in;
        assert_int_equal(kb_keystore_describe(ks, 0, &in), 0);
        assert_int_equal(in.uses, 2);
        assert_int_equal(in.last_used_usec, 2000);
        assert_int_equal(kb_keystore_describe(ks, 1, &in), 0);
        assert_int_equal(in.uses, 0);
        assert_int_equal(in.last_used_usec, 0);
        assert_true(in.created_usec > 0);

        /* A reload opens fresh versions; the counters carry over by version. */
        struct kb_keystore *ks2 = open_ok(f);
        assert_int_equal(kb_keystore_describe(ks2, 0, &in), 0);
        assert_int_equal(in.uses, 0);
        kb_keystore_carry_stats(ks2, ks);
        kb_keystore_free(ks);
        assert_int_equal(kb_keystore_describe(ks2, 0, &in), 0);
        assert_int_equal(in.uses, 2);
        assert_int_equal(in.last_used_usec, 2000);
        assert_int_equal(kb_keystore_describe(ks2, 1, &in), 0);
        assert_int_equal(in.uses, 0);
        kb_keystore_carry_stats(ks2, NULL);
        kb_keystore_free(ks2);
}

/* Forge stores with the file layer directly (fast: one write). */
static void test_limits(void **state) {
        struct fx *f = *state;
        unsigned char *sk = NULL;
        assert_int_equal(kb_subkeys_derive(f->key, &sk), 0);
        size_t n = KB_KEY_MAX_NAMES + 1;
        struct kb_keyfile_entry *e = calloc(n + 1, sizeof(*e));
        assert_non_null(e);
        for (size_t i = 0; i < n; i++) {
                char name[16];
                snprintf(name, sizeof(name), "k%04zu", i);
                assert_int_equal(kb_key_alloc(name, 1, 1, &e[i].key), 0);
                e[i].key->secret[0] = 'x';
                kb_key_seal_memory(e[i].key);
                assert_int_equal(kb_keyfile_seal(sk, e[i].key, "x", 1), 0);
                e[i].active = true;
        }
        assert_int_equal(kb_keyfile_write(f->store, sk, e, n), 0);
        open_fails(f, -EBADMSG, "too many keys");

        /* At the limit: it opens, and a new name is refused. */
        assert_int_equal(kb_keyfile_write(f->store, sk, e, n - 1), 0);
        struct kb_keystore *ks = open_ok(f);
        unsigned v;
        assert_int_equal(kb_keystore_set(ks, "new", "y", 1, &v), -E2BIG);
        rotate_ok(ks, "k0000", "z", 2);
        kb_keystore_free(ks);

        /* The same version twice, even properly MACed. */
        kb_key_unref(e[1].key);
        e[1] = e[0];
        kb_key_ref(e[0].key);
        assert_int_equal(kb_keyfile_write(f->store, sk, e, 2), 0);
        open_fails(f, -EBADMSG, "twice");

        kb_keyfile_entries_free(e, n);
        kb_subkeys_free(sk);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
                cmocka_unit_test_setup_teardown(test_file_mode_and_no_plaintext, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ad_binding, setup, teardown),
                cmocka_unit_test_setup_teardown(test_tamper, setup, teardown),
                cmocka_unit_test_setup_teardown(test_wrong_master, setup, teardown),
                cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
                cmocka_unit_test_setup_teardown(test_missing_files, setup, teardown),
                cmocka_unit_test_setup_teardown(test_master_formats, setup, teardown),
                cmocka_unit_test_setup_teardown(test_failed_write_leaves_memory, setup, teardown),
                cmocka_unit_test_setup_teardown(test_refcount, setup, teardown),
                cmocka_unit_test_setup_teardown(test_release_and_reseal, setup, teardown),
                cmocka_unit_test_setup_teardown(test_secret_validation, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fingerprint, setup, teardown),
                cmocka_unit_test_setup_teardown(test_credentials, setup, teardown),
                cmocka_unit_test_setup_teardown(test_max_versions, setup, teardown),
                cmocka_unit_test_setup_teardown(test_usage_stats, setup, teardown),
                cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
