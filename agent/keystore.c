/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>

#include "keystore.h"
#include "util.h"

struct kb_key {
        unsigned n_ref;
        unsigned n_open;
        char *name;
        unsigned version;
        size_t len;
        char *secret; /* sodium_malloc'd, PROT_NONE unless n_open > 0 */
};

struct kb_keystore {
        struct kb_key **keys; /* the active version per name */
        size_t n_keys;
};

static struct kb_key *key_new(const char *name, unsigned version, const char *secret, size_t len) {
        struct kb_key *k = calloc(1, sizeof(*k));
        if (!k)
                return NULL;
        k->name = strdup(name);
        k->secret = sodium_malloc(len + 1);
        if (!k->name || !k->secret) {
                free(k->name);
                sodium_free(k->secret);
                free(k);
                return NULL;
        }
        memcpy(k->secret, secret, len);
        k->secret[len] = 0;
        k->len = len;
        k->version = version;
        k->n_ref = 1;
        sodium_mprotect_noaccess(k->secret);
        return k;
}

struct kb_key *kb_key_ref(struct kb_key *k) {
        if (k)
                k->n_ref++;
        return k;
}

struct kb_key *kb_key_unref(struct kb_key *k) {
        if (!k || --k->n_ref > 0)
                return NULL;
        sodium_free(k->secret); /* zeroes before unmapping */
        free(k->name);
        free(k);
        return NULL;
}

const char *kb_key_name(const struct kb_key *k) {
        return k->name;
}

unsigned kb_key_version(const struct kb_key *k) {
        return k->version;
}

const char *kb_key_open(struct kb_key *k, size_t *ret_len) {
        if (k->n_open++ == 0)
                sodium_mprotect_readonly(k->secret);
        *ret_len = k->len;
        return k->secret;
}

void kb_key_close(struct kb_key *k) {
        if (k->n_open > 0 && --k->n_open == 0)
                sodium_mprotect_noaccess(k->secret);
}

int kb_keystore_new(struct kb_keystore **ret) {
        struct kb_keystore *ks = calloc(1, sizeof(*ks));
        if (!ks)
                return -ENOMEM;
        *ret = ks;
        return 0;
}

struct kb_keystore *kb_keystore_free(struct kb_keystore *ks) {
        if (!ks)
                return NULL;
        for (size_t i = 0; i < ks->n_keys; i++)
                kb_key_unref(ks->keys[i]);
        free(ks->keys);
        free(ks);
        return NULL;
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
        char *buf = sodium_malloc(KB_KEY_MAX_BYTES + 2);
        if (!buf)
                return -ENOMEM;
        size_t len = 0;
        for (;;) {
                ssize_t n = read(fd, buf + len, KB_KEY_MAX_BYTES + 2 - len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        int r = -errno;
                        sodium_free(buf);
                        return r;
                }
                if (n == 0)
                        break;
                len += (size_t) n;
                if (len >= KB_KEY_MAX_BYTES + 2)
                        break;
        }
        if (len > 0 && buf[len - 1] == '\n')
                len--;
        if (len > 0 && buf[len - 1] == '\r')
                len--;
        int r = 0;
        if (len == 0)
                r = -ENODATA;
        else if (len > KB_KEY_MAX_BYTES)
                r = -EFBIG;
        else
                for (size_t i = 0; i < len; i++)
                        if ((unsigned char) buf[i] < 0x20 || buf[i] == 0x7f) {
                                r = -EBADMSG;
                                break;
                        }
        struct kb_key *k = NULL;
        if (r == 0) {
                k = key_new(name, 0, buf, len);
                if (!k)
                        r = -ENOMEM;
        }
        sodium_free(buf);
        if (r < 0)
                return r;
        *ret = k;
        return 0;
}

static struct kb_key **find(struct kb_keystore *ks, const char *name) {
        for (size_t i = 0; i < ks->n_keys; i++)
                if (streq(ks->keys[i]->name, name))
                        return &ks->keys[i];
        return NULL;
}

int kb_keystore_load_credentials(struct kb_keystore *ks, const struct kb_config *c, const char **ret_bad_name) {
        if (!c->agent.credentials_dir)
                return 0;
        _cleanup_close_ int dfd = open(c->agent.credentials_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return errno == ENOENT ? 0 : -errno;

        for (size_t i = 0; i < c->n_routes; i++) {
                const char *name = c->routes[i].key;
                if (!name || find(ks, name))
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
                struct kb_key **n = realloc(ks->keys, (ks->n_keys + 1) * sizeof(*n));
                if (!n) {
                        kb_key_unref(k);
                        return -ENOMEM;
                }
                ks->keys = n;
                ks->keys[ks->n_keys++] = k;
        }
        return 0;
}

int kb_keystore_get(struct kb_keystore *ks, const char *name, struct kb_key **ret) {
        struct kb_key **k = find(ks, name);
        if (!k)
                return -ENOENT;
        *ret = kb_key_ref(*k);
        return 0;
}
