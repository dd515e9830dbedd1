/* SPDX-License-Identifier: MIT */
/* Keys in memory: the sealed store's versions plus credential files, one
 * refcounted struct kb_key per version. Changes are made on a copy of the
 * entry array, written to disk, and only then swapped in, so a failed write
 * leaves everything as it was and requests holding a key keep it. */

#include <fcntl.h>
#include <sodium.h>
#include <stdarg.h>
#include <sys/stat.h>

#include "config-internal.h"
#include "keyfile.h"
#include "keystore.h"
#include "util.h"

struct kb_keystore {
        char *path;                     /* NULL: no sealed store configured */
        unsigned char *sk;              /* subkeys of the master key; NULL: none */
        /* Sorted by name, then version; a credential file is version 0, so it
         * sorts just before the sealed versions of the same name. */
        struct kb_keyfile_entry *e;
        size_t n;
};

/* Hosts without a master key still list fingerprints: keyed with a random
 * key made once per process, so they are comparable within one run only. */
static unsigned char *process_fp_key;

static unsigned char *fp_key(const struct kb_keystore *ks) {
        if (ks && ks->sk)
                return ks->sk;
        if (!process_fp_key && kb_subkeys_random(&process_fp_key) < 0)
                return NULL;
        return process_fp_key;
}

/* ---------------------------------------------------------------- keys */

/* Keys whose secret is readable now. Only the loop thread opens keys, so
 * a plain list does. */
static struct kb_key *readable_keys;
static size_t n_readable_keys;

static void make_readable(struct kb_key *k) {
        if (k->readable)
                return;
        sodium_mprotect_readonly(k->secret);
        k->readable = true;
        k->readable_prev = NULL;
        k->readable_next = readable_keys;
        if (readable_keys)
                readable_keys->readable_prev = k;
        readable_keys = k;
        n_readable_keys++;
}

static void forget_readable(struct kb_key *k) {
        if (!k->readable)
                return;
        if (k->readable_prev)
                k->readable_prev->readable_next = k->readable_next;
        else
                readable_keys = k->readable_next;
        if (k->readable_next)
                k->readable_next->readable_prev = k->readable_prev;
        k->readable_prev = k->readable_next = NULL;
        k->readable = false;
        n_readable_keys--;
}

struct kb_key *kb_key_ref(struct kb_key *k) {
        if (k)
                k->n_ref++;
        return k;
}

struct kb_key *kb_key_unref(struct kb_key *k) {
        if (!k || --k->n_ref > 0)
                return NULL;
        forget_readable(k);
        sodium_free(k->secret); /* zeroes before unmapping */
        free(k->name);
        free(k->nonce_hex);
        free(k->sealed_hex);
        free(k);
        return NULL;
}

const char *kb_key_name(const struct kb_key *k) {
        return k->name;
}

unsigned kb_key_version(const struct kb_key *k) {
        return k->version;
}

static void reseal(struct kb_key *k) {
        forget_readable(k);
        sodium_mprotect_noaccess(k->secret);
}

const char *kb_key_open(struct kb_key *k, size_t *ret_len) {
        make_readable(k);
        k->n_open++;
        *ret_len = k->len;
        return k->secret;
}

void kb_key_close(struct kb_key *k) {
        if (k->n_open > 0 && --k->n_open == 0)
                reseal(k);
}

void kb_key_release(struct kb_key *k) {
        if (k->n_open > 0)
                k->n_open--;
}

size_t kb_keys_reseal_idle(void) {
        for (struct kb_key *k = readable_keys, *next; k; k = next) {
                next = k->readable_next;
                if (k->n_open == 0)
                        reseal(k);
        }
        return n_readable_keys;
}

size_t kb_keys_n_readable(void) {
        return n_readable_keys;
}

void kb_key_mark_used(struct kb_key *k, uint64_t now_usec) {
        if (!k)
                return;
        k->uses++;
        k->last_used_usec = MAX(k->last_used_usec, now_usec);
}

bool kb_key_name_valid(const char *name) {
        return name && kb_cfg_valid_name(name, KB_KEY_NAME_MAX);
}

/* Files and the admin API both may end a secret with a newline. */
static size_t strip_newline(const char *s, size_t len) {
        if (len > 0 && s[len - 1] == '\n')
                len--;
        if (len > 0 && s[len - 1] == '\r')
                len--;
        return len;
}

int kb_key_secret_valid(const char *secret, size_t len) {
        if (!secret)
                return -ENODATA;
        int r = kb_secret_check(secret, strip_newline(secret, len));
        return r < 0 ? r : 1;
}

static int key_new(const char *name, unsigned version, const char *secret, size_t len, struct kb_key **ret) {
        struct kb_key *k;
        int r = kb_key_alloc(name, version, len, &k);
        if (r < 0)
                return r;
        memcpy(k->secret, secret, len);
        kb_key_seal_memory(k);
        *ret = k;
        return 0;
}

int kb_key_read_file(int dir_fd, const char *name, struct kb_key **ret) {
        _cleanup_close_ int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
        if (fd < 0)
                return -errno;
        struct stat st;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EBADF;

        /* Read into locked memory so the secret never sits in ordinary heap. */
        char *buf = sodium_malloc(KB_KEY_MAX_BYTES + 3);
        if (!buf)
                return -ENOMEM;
        size_t len = 0;
        int r = 0;
        while (len < KB_KEY_MAX_BYTES + 3) {
                ssize_t n = read(fd, buf + len, KB_KEY_MAX_BYTES + 3 - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = -errno;
                        break;
                }
                if (n == 0)
                        break;
                len += (size_t) n;
        }
        if (r == 0)
                r = kb_secret_check(buf, strip_newline(buf, len));
        if (r == 0)
                r = key_new(name, 0, buf, strip_newline(buf, len), ret);
        sodium_free(buf);
        return r;
}

/* ---------------------------------------------------------------- store */

int kb_keystore_new(struct kb_keystore **ret) {
        if (sodium_init() < 0)
                return -EIO;
        struct kb_keystore *ks = calloc(1, sizeof(*ks));
        if (!ks)
                return -ENOMEM;
        *ret = ks;
        return 0;
}

struct kb_keystore *kb_keystore_free(struct kb_keystore *ks) {
        if (!ks)
                return NULL;
        /* Only our references: a request holding a version keeps it. */
        kb_keyfile_entries_free(ks->e, ks->n);
        kb_subkeys_free(ks->sk);
        free(ks->path);
        free(ks);
        return NULL;
}

static int read_store(const char *path, char **ret_data, size_t *ret_len) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return -errno;
        struct stat st;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EISDIR;
        if (st.st_size > (off_t) KB_KEYFILE_MAX_BYTES)
                return -EFBIG;
        /* One byte more than allowed shows a file that grew meanwhile. */
        size_t cap = (size_t) st.st_size + 1, len = 0;
        _cleanup_free_ char *data = malloc(cap);
        if (!data)
                return -ENOMEM;
        for (;;) {
                ssize_t n = read(fd, data + len, cap - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                if (n == 0)
                        break;
                len += (size_t) n;
                if (len == cap) {
                        if (cap > KB_KEYFILE_MAX_BYTES)
                                return -EFBIG;
                        char *d = realloc(data, cap = MIN(cap * 2, (size_t) KB_KEYFILE_MAX_BYTES + 1));
                        if (!d)
                                return -ENOMEM;
                        data = d;
                }
        }
        *ret_data = TAKE_PTR(data);
        *ret_len = len;
        return 0;
}

static void set_error(char **ret_error, const char *fmt, ...) _printf_(2, 3);
static void set_error(char **ret_error, const char *fmt, ...) {
        if (!ret_error)
                return;
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(ret_error, fmt, ap) < 0)
                *ret_error = NULL;
        va_end(ap);
}

int kb_keystore_open(const char *path, const char *master_key_path, struct kb_keystore **ret, char **ret_error) {
        struct kb_keystore *ks = NULL;
        char *error = NULL;
        int r = kb_keystore_new(&ks);
        if (r < 0)
                return r;
        if (path && !(ks->path = strdup(path))) {
                kb_keystore_free(ks);
                return -ENOMEM;
        }

        /* A master key that exists but cannot be used is an error even
         * without a store: the admin meant to configure one. */
        if (master_key_path) {
                r = kb_subkeys_load(master_key_path, &ks->sk, &error);
                if (r == -ENOENT)
                        r = 0;
                else if (r < 0 && path && error) {
                        char *e = NULL;
                        if (asprintf(&e, "%s: %s", path, error) >= 0) {
                                free(error);
                                error = e;
                        }
                }
        }
        if (r >= 0 && path) {
                _cleanup_free_ char *data = NULL;
                size_t len = 0;
                r = read_store(path, &data, &len);
                if (r == -ENOENT)
                        r = 0;
                else if (r == -EFBIG)
                        set_error(&error, "%s: the keystore is larger than 8 MiB: not a keybroker keystore", path);
                else if (r < 0)
                        set_error(&error, "%s: cannot read the keystore: %s", path, strerror(-r));
                else {
                        r = kb_keyfile_parse(path, data, len, ks->sk, &ks->e, &ks->n, &error);
                        if (r == -ENOKEY || r == -EKEYREJECTED) {
                                free(error);
                                error = NULL;
                        }
                        if (r == -ENOKEY && master_key_path)
                                set_error(&error,
                                          "%s: the keystore exists but the master key file %s does not: provide "
                                          "the master key it was sealed with there",
                                          path, master_key_path);
                        else if (r == -ENOKEY)
                                set_error(&error,
                                          "%s: the keystore exists but no master key is configured: provide the "
                                          "master key it was sealed with (master_key =, or "
                                          "$CREDENTIALS_DIRECTORY/keybroker.master)",
                                          path);
                        else if (r == -EKEYREJECTED)
                                set_error(&error,
                                          "%s: the master key does not match this keystore: %s is not the key it "
                                          "was sealed with; start with that master key, or move the keystore "
                                          "aside and set the keys again",
                                          path, master_key_path);
                }
        }
        if (r < 0) {
                kb_keystore_free(ks);
                if (ret_error)
                        *ret_error = error;
                else
                        free(error);
                return r;
        }
        *ret = ks;
        return 0;
}

static ssize_t find_entry(const struct kb_keystore *ks, const char *name, unsigned version) {
        size_t lo = 0, hi = ks->n;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                const struct kb_key *k = ks->e[mid].key;
                int c = strcmp(k->name, name);
                if (c == 0)
                        c = k->version < version ? -1 : k->version > version;
                if (c == 0)
                        return (ssize_t) mid;
                if (c < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return -1;
}

/* The sealed versions of name: [*ret_from, *ret_to). */
static size_t sealed_range(const struct kb_keyfile_entry *e, size_t n, const char *name, size_t *ret_from) {
        size_t i = 0;
        while (i < n && (strcmp(e[i].key->name, name) < 0 || (streq(e[i].key->name, name) && e[i].key->version == 0)))
                i++;
        size_t j = i;
        while (j < n && streq(e[j].key->name, name))
                j++;
        *ret_from = i;
        return j - i;
}

static size_t count_sealed_names(const struct kb_keyfile_entry *e, size_t n) {
        size_t c = 0;
        for (size_t i = 0; i < n; i++)
                if (e[i].key->version > 0 && (i == 0 || !streq(e[i - 1].key->name, e[i].key->name) ||
                                              e[i - 1].key->version == 0))
                        c++;
        return c;
}

static int entry_cmp(const void *a, const void *b) {
        const struct kb_keyfile_entry *x = a, *y = b;
        int c = strcmp(x->key->name, y->key->name);
        if (c)
                return c;
        return x->key->version < y->key->version ? -1 : x->key->version > y->key->version;
}

/* A copy of the entries with room for one more, each key referenced. */
static int entries_copy(const struct kb_keystore *ks, struct kb_keyfile_entry **ret) {
        struct kb_keyfile_entry *e = calloc(ks->n + 1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        for (size_t i = 0; i < ks->n; i++)
                e[i] = (struct kb_keyfile_entry) { .key = kb_key_ref(ks->e[i].key), .active = ks->e[i].active };
        *ret = e;
        return 0;
}

/* Write the new state; swap it in only once it is on disk. Takes e. */
static int commit(struct kb_keystore *ks, struct kb_keyfile_entry *e, size_t n) {
        qsort(e, n, sizeof(*e), entry_cmp);
        int r = kb_keyfile_write(ks->path, ks->sk, e, n);
        if (r < 0) {
                kb_keyfile_entries_free(e, n);
                return r;
        }
        kb_keyfile_entries_free(ks->e, ks->n);
        ks->e = e;
        ks->n = n;
        return 0;
}

static int new_version(struct kb_keystore *ks, const char *name, unsigned version, const char *secret, size_t len,
                       struct kb_key **ret) {
        struct kb_key *k;
        int r = key_new(name, version, secret, len, &k);
        if (r < 0)
                return r;
        k->created_usec = kb_realtime_usec();
        r = kb_keyfile_seal(ks->sk, k, secret, len);
        if (r < 0) {
                kb_key_unref(k);
                return r;
        }
        *ret = k;
        return 0;
}

static int check_change(struct kb_keystore *ks, const char *name) {
        if (!kb_key_name_valid(name))
                return -EINVAL;
        if (!ks->path || !ks->sk)
                return -ENOKEY;
        return 0;
}

/* set and rotate: a new version, active, older ones kept (up to the limit). */
static int add_version(struct kb_keystore *ks, const char *name, const char *secret, size_t len, bool must_be_new,
                       unsigned *ret_version) {
        int r = check_change(ks, name);
        if (r < 0)
                return r;
        if (!secret || kb_key_secret_valid(secret, len) < 0)
                return -EINVAL;
        len = strip_newline(secret, len);

        size_t from, cnt = sealed_range(ks->e, ks->n, name, &from);
        if (must_be_new && cnt > 0)
                return -EEXIST;
        if (!must_be_new && cnt == 0 && find_entry(ks, name, 0) < 0)
                return -ENOENT;
        if (cnt == 0 && count_sealed_names(ks->e, ks->n) >= KB_KEY_MAX_NAMES)
                return -E2BIG;
        unsigned version = cnt == 0 ? 1 : ks->e[from + cnt - 1].key->version + 1;
        if (version == 0 || version > INT32_MAX)
                return -EOVERFLOW;

        struct kb_keyfile_entry *e;
        r = entries_copy(ks, &e);
        if (r < 0)
                return r;
        size_t n = ks->n;
        r = new_version(ks, name, version, secret, len, &e[n].key);
        if (r < 0) {
                kb_keyfile_entries_free(e, n);
                return r;
        }
        for (size_t i = from; i < from + cnt; i++)
                e[i].active = false;
        e[n++].active = true;

        /* Beyond the limit the oldest go; the active one is the newest. */
        for (; cnt + 1 > KB_KEY_MAX_VERSIONS; cnt--) {
                kb_key_unref(e[from].key);
                memmove(&e[from], &e[from + 1], (n - from - 1) * sizeof(*e));
                n--;
        }
        r = commit(ks, e, n);
        if (r < 0)
                return r;
        if (ret_version)
                *ret_version = version;
        return 0;
}

int kb_keystore_set(struct kb_keystore *ks, const char *name, const char *secret, size_t len, unsigned *ret_version) {
        return add_version(ks, name, secret, len, true, ret_version);
}

int kb_keystore_rotate(struct kb_keystore *ks, const char *name, const char *secret, size_t len,
                       unsigned *ret_version) {
        return add_version(ks, name, secret, len, false, ret_version);
}

int kb_keystore_rollback(struct kb_keystore *ks, const char *name, unsigned *ret_version) {
        int r = check_change(ks, name);
        if (r < 0)
                return r;
        size_t from, cnt = sealed_range(ks->e, ks->n, name, &from);
        if (cnt == 0)
                return find_entry(ks, name, 0) >= 0 ? -ESRCH : -ENOENT;
        size_t act = from;
        while (act < from + cnt && !ks->e[act].active)
                act++;
        if (act == from || act == from + cnt)
                return -ESRCH;

        struct kb_keyfile_entry *e;
        r = entries_copy(ks, &e);
        if (r < 0)
                return r;
        unsigned version = e[act - 1].key->version;
        e[act].active = false;
        e[act - 1].active = true;
        r = commit(ks, e, ks->n);
        if (r < 0)
                return r;
        if (ret_version)
                *ret_version = version;
        return 0;
}

int kb_keystore_delete(struct kb_keystore *ks, const char *name, unsigned version) {
        int r = check_change(ks, name);
        if (r < 0)
                return r;
        size_t from, cnt = sealed_range(ks->e, ks->n, name, &from);
        if (version > 0) {
                ssize_t i = find_entry(ks, name, version);
                if (i < 0)
                        return -ENOENT;
                if (ks->e[i].active)
                        return -EBUSY;
                from = (size_t) i;
                cnt = 1;
        } else if (cnt == 0)
                return -ENOENT;

        struct kb_keyfile_entry *e;
        r = entries_copy(ks, &e);
        if (r < 0)
                return r;
        for (size_t i = from; i < from + cnt; i++)
                kb_key_unref(e[i].key);
        memmove(&e[from], &e[from + cnt], (ks->n - from - cnt) * sizeof(*e));
        return commit(ks, e, ks->n - cnt);
}

int kb_keystore_load_credentials(struct kb_keystore *ks, const struct kb_config *c, const char **ret_bad_name) {
        if (!c->agent.credentials_dir)
                return 0;
        _cleanup_close_ int dfd = open(c->agent.credentials_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return errno == ENOENT ? 0 : -errno;

        for (size_t i = 0; i < c->n_routes; i++) {
                const char *name = c->routes[i].key;
                size_t from;
                if (!name || sealed_range(ks->e, ks->n, name, &from) > 0 || find_entry(ks, name, 0) >= 0)
                        continue;
                struct kb_key *k;
                int r = kb_key_read_file(dfd, name, &k);
                if (r == -ENOENT)
                        continue;
                if (r < 0) {
                        if (ret_bad_name)
                                *ret_bad_name = name;
                        return r;
                }
                struct kb_keyfile_entry *n = realloc(ks->e, (ks->n + 1) * sizeof(*n));
                if (!n) {
                        kb_key_unref(k);
                        return -ENOMEM;
                }
                ks->e = n;
                ks->e[ks->n++] = (struct kb_keyfile_entry) { .key = k, .active = true };
                qsort(ks->e, ks->n, sizeof(*ks->e), entry_cmp);
        }
        return 0;
}

int kb_keystore_get(struct kb_keystore *ks, const char *name, struct kb_key **ret) {
        if (!ks || !name)
                return -ENOENT;
        size_t from, cnt = sealed_range(ks->e, ks->n, name, &from);
        for (size_t i = from; i < from + cnt; i++)
                if (ks->e[i].active) {
                        *ret = kb_key_ref(ks->e[i].key);
                        return 0;
                }
        ssize_t i = find_entry(ks, name, 0);
        if (i < 0)
                return -ENOENT;
        *ret = kb_key_ref(ks->e[i].key);
        return 0;
}

int kb_keystore_get_version(struct kb_keystore *ks, const char *name, unsigned version, struct kb_key **ret) {
        if (!ks || !name)
                return -ENOENT;
        ssize_t i = find_entry(ks, name, version);
        if (i < 0)
                return -ENOENT;
        *ret = kb_key_ref(ks->e[i].key);
        return 0;
}

void kb_keystore_carry_stats(struct kb_keystore *to, const struct kb_keystore *from) {
        if (!to || !from)
                return;
        for (size_t i = 0; i < to->n; i++) {
                struct kb_key *k = to->e[i].key;
                ssize_t j = find_entry(from, k->name, k->version);
                if (j < 0 || from->e[j].key == k)
                        continue;
                k->uses = MAX(k->uses, from->e[j].key->uses);
                k->last_used_usec = MAX(k->last_used_usec, from->e[j].key->last_used_usec);
        }
}

size_t kb_keystore_n_versions(const struct kb_keystore *ks) {
        return ks ? ks->n : 0;
}

void kb_keystore_fingerprint(const struct kb_keystore *ks, struct kb_key *k, char ret[KB_KEY_FINGERPRINT_HEX]) {
        unsigned char *key = fp_key(ks);
        if (!key) {
                strcpy(ret, "????????????????");
                return;
        }
        size_t len;
        const char *s = kb_key_open(k, &len);
        kb_keyfile_fingerprint(key, s, len, ret);
        kb_key_close(k);
}

int kb_keystore_describe(const struct kb_keystore *ks, size_t i, struct kb_key_info *ret) {
        if (!ks || i >= ks->n)
                return -ENOENT;
        struct kb_key *k = ks->e[i].key;
        struct kb_key_info info = {
                .name = k->name,
                .version = k->version,
                .active = ks->e[i].active,
                .sealed = k->version > 0,
                .created_usec = k->created_usec,
                .last_used_usec = k->last_used_usec,
                .uses = k->uses,
        };
        /* A credential file is shadowed once the name has sealed versions. */
        if (k->version == 0 && i + 1 < ks->n && streq(ks->e[i + 1].key->name, k->name))
                info.active = false;
        kb_keystore_fingerprint(ks, k, info.fingerprint);
        *ret = info;
        return 0;
}
