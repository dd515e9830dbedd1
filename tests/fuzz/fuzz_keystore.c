/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the sealed keystore file (agent/keyfile.c) opened from
 * bytes with a fixed master key (32 × 0x42, as the seeds were sealed).
 * A fuzzer cannot forge a keyed MAC, so the first byte picks how far the
 * harness helps it in:
 *   0: the bytes as they are;
 *   1: the file's "check" and "mac" made right (reaches the records);
 *   2: as 1, and records that carry a plaintext "secret" instead of
 *      "nonce"/"sealed" are sealed for their name and version first
 *      (reaches the checks on versions, active flags and limits).
 * A store that opens is written back (kb_keyfile_write), read again and
 * must give the same keys.
 *
 * KB_FUZZ_WRITE_SEEDS=DIR: write seed files into DIR and exit. */

#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sodium.h>

#include "keyfile.h"
#include "keystore.h"
#include "util.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned char *sk;
static char *check;             /* the right "check" for the fixed master key */
static char dir[64];

static void die(const char *what) {
        fprintf(stderr, "fuzz_keystore: %s\n", what);
        abort();
}

static char *slurp(const char *path) {
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        struct kb_buf b = {};
        char buf[4096];
        size_t n;
        if (!f)
                return NULL;
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
                if (kb_buf_append(&b, buf, n) < 0)
                        return NULL;
        if (!b.data)
                (void) kb_buf_append(&b, "", 0);
        return b.data;
}

static void cleanup(void) {
        char path[128];
        snprintf(path, sizeof(path), "%s/store", dir);
        (void) unlink(path);
        (void) rmdir(dir);
        kb_subkeys_free(sk);
        free(check);
}

static void write_seeds(const char *to) {
        static const struct {
                const char *name;
                const char *secrets[3];
                unsigned active;
        } keys[] = {
                { "openai-prod", { "sk-proj-aaaaaaaaaaaaaaaaaaaa", "sk-proj-bbbbbbbbbbbbbbbbbbbb", NULL }, 1 },
                { "anthropic", { "sk-ant-api03-cccccccccccc", NULL, NULL }, 0 },
                { "flatkey.gw", { "fk_1", "fk_2", "fk_3" }, 0 },
        };
        struct kb_keyfile_entry e[8];
        size_t n = 0;
        char path[256];

        for (size_t i = 0; i < ELEMENTSOF(keys); i++)
                for (unsigned v = 0; v < 3 && keys[i].secrets[v]; v++) {
                        const char *s = keys[i].secrets[v];
                        struct kb_key *k;
                        if (kb_key_alloc(keys[i].name, v + 1, strlen(s), &k) < 0)
                                die("alloc");
                        memcpy(k->secret, s, strlen(s) + 1);
                        kb_key_seal_memory(k);
                        if (kb_keyfile_seal(sk, k, s, strlen(s)) < 0)
                                die("seal");
                        e[n++] = (struct kb_keyfile_entry) { .key = k, .active = v == keys[i].active };
                }
        for (size_t m = 0; m <= n; m += n) { /* the empty store and the full one */
                snprintf(path, sizeof(path), "%s/seed-%zu-keys", to, m);
                if (kb_keyfile_write(path, sk, e, m) < 0)
                        die("write");
                _cleanup_free_ char *text = slurp(path);
                char out[300];
                /* mode 0 and mode 1 copies */
                for (int mode = 0; mode < 2; mode++) {
                        snprintf(out, sizeof(out), "%s/seed-%zu-keys-mode%d", to, m, mode);
                        _cleanup_fclose_ FILE *f = fopen(out, "we");
                        if (!f || fputc(mode, f) == EOF || fputs(text, f) == EOF)
                                die("seed");
                }
                (void) unlink(path);
        }
        /* mode 2: plaintext records sealed by the harness */
        snprintf(path, sizeof(path), "%s/seed-plain-mode2", to);
        _cleanup_fclose_ FILE *f = fopen(path, "we");
        if (!f ||
            fprintf(f, "%c{\"format\":\"keybroker-keystore-1\",\"check\":\"\",\"mac\":\"\",\"keys\":["
                       "{\"name\":\"a\",\"version\":1,\"active\":false,\"created\":1,\"secret\":\"s1\"},"
                       "{\"name\":\"a\",\"version\":2,\"active\":true,\"created\":2,\"secret\":\"s2\"},"
                       "{\"name\":\"b.c\",\"version\":7,\"active\":true,\"created\":0,\"secret\":\"x\"}]}",
                    2) < 0)
                die("seed");
        for (size_t i = 0; i < n; i++)
                kb_key_unref(e[i].key);
        exit(0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        unsigned char master[KB_MASTER_KEY_BYTES];
        char path[128];

        if (sodium_init() < 0)
                die("sodium_init");
        memset(master, 0x42, sizeof(master));
        if (kb_subkeys_derive(master, &sk) < 0)
                die("subkeys");
        snprintf(dir, sizeof(dir), "%s/kb-fuzz-ks-XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
        if (!mkdtemp(dir))
                die("mkdtemp");
        atexit(cleanup);
        if (getenv("KB_FUZZ_WRITE_SEEDS"))
                write_seeds(getenv("KB_FUZZ_WRITE_SEEDS"));

        /* The check value of an empty store written with this master key. */
        snprintf(path, sizeof(path), "%s/store", dir);
        if (kb_keyfile_write(path, sk, NULL, 0) < 0)
                die("write");
        _cleanup_free_ char *text = slurp(path);
        json_t *j = text ? json_loads(text, 0, NULL) : NULL;
        const char *c = json_string_value(json_object_get(j, "check"));
        if (!c || !(check = strdup(c)))
                die("check");
        json_decref(j);
        return 0;
}

/* Records with "secret": sealed here for their name and version. */
static void seal_plain(json_t *o) {
        json_t *keys = json_object_get(o, "keys"), *rec;
        size_t i;
        json_array_foreach(keys, i, rec) {
                const char *secret = json_string_value(json_object_get(rec, "secret"));
                const char *name = json_string_value(json_object_get(rec, "name"));
                json_t *jv = json_object_get(rec, "version");
                if (!secret || !name || !json_is_integer(jv))
                        continue;
                json_int_t v = json_integer_value(jv);
                size_t len = strlen(secret);
                struct kb_key *k;
                if (v < 1 || v > UINT32_MAX || len == 0 || len > KB_KEY_MAX_BYTES ||
                    kb_key_alloc(name, (unsigned) v, len, &k) < 0)
                        continue;
                memcpy(k->secret, secret, len + 1);
                kb_key_seal_memory(k);
                if (kb_keyfile_seal(sk, k, secret, len) >= 0) {
                        (void) json_object_del(rec, "secret");
                        (void) json_object_set_new(rec, "nonce", json_string(k->nonce_hex));
                        (void) json_object_set_new(rec, "sealed", json_string(k->sealed_hex));
                }
                kb_key_unref(k);
        }
}

static char *help_in(const uint8_t *data, size_t size, int mode) {
        json_t *o = json_loadb((const char *) data, size, JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_object(o)) {
                json_decref(o);
                return NULL;
        }
        if (mode == 2)
                seal_plain(o);
        _cleanup_free_ char *mac = NULL;
        (void) json_object_set_new(o, "check", json_string(check));
        (void) json_object_set_new(o, "mac", json_string(""));
        if (kb_keyfile_mac(sk, o, &mac) >= 0)
                (void) json_object_set_new(o, "mac", json_string(mac));
        char *s = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        return s;
}

static bool same_secret(struct kb_key *a, struct kb_key *b) {
        size_t la, lb;
        const char *sa = kb_key_open(a, &la), *sb = kb_key_open(b, &lb);
        bool same = sa && sb && la == lb && memcmp(sa, sb, la) == 0;
        kb_key_close(a);
        kb_key_close(b);
        return same;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1 || size > KB_KEYFILE_MAX_BYTES)
                return -1;
        int mode = data[0] % 3;
        _cleanup_free_ char *helped = mode ? help_in(data + 1, size - 1, mode) : NULL;
        const char *text = helped ?: (const char *) data + 1;
        size_t len = helped ? strlen(helped) : size - 1;

        struct kb_keyfile_entry *e = NULL;
        size_t n = 0;
        _cleanup_free_ char *error = NULL;
        int r = kb_keyfile_parse("fuzz.sealed", text, len, sk, &e, &n, &error);
        if (r < 0) {
                /* Every refusal says which and what to do. */
                if (r != -ENOMEM && !error)
                        abort();
                if (e)
                        abort();
                return 0;
        }
        for (size_t i = 1; i < n; i++) {
                int c = strcmp(e[i - 1].key->name, e[i].key->name);
                if (c > 0 || (c == 0 && e[i - 1].key->version >= e[i].key->version))
                        abort(); /* sorted by name, then version, no duplicates */
        }

        /* Round trip: what we write we read back the same. */
        char path[128];
        snprintf(path, sizeof(path), "%s/store", dir);
        if (kb_keyfile_write(path, sk, e, n) < 0)
                abort();
        _cleanup_free_ char *again = slurp(path);
        struct kb_keyfile_entry *e2 = NULL;
        size_t n2 = 0;
        _cleanup_free_ char *error2 = NULL;
        if (!again || kb_keyfile_parse(path, again, strlen(again), sk, &e2, &n2, &error2) < 0 || n2 != n) {
                fprintf(stderr, "round trip failed: %s\n", strempty(error2));
                abort();
        }
        for (size_t i = 0; i < n; i++)
                if (!streq(e[i].key->name, e2[i].key->name) || e[i].key->version != e2[i].key->version ||
                    e[i].active != e2[i].active || e[i].key->created_usec != e2[i].key->created_usec ||
                    !same_secret(e[i].key, e2[i].key))
                        abort();
        kb_keyfile_entries_free(e2, n2);
        kb_keyfile_entries_free(e, n);
        return 0;
}
