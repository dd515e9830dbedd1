/* SPDX-License-Identifier: MIT */
/* The sealed keystore file: master key, subkeys, sealing, MAC, parse and
 * atomic write. See keyfile.h for the format. */

#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <stdarg.h>
#include <limits.h>
#include <sodium.h>
#include <sys/stat.h>

#include "keyfile.h"
#include "keystore.h"
#include "util.h"

#define NONCE_BYTES crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define TAG_BYTES crypto_aead_xchacha20poly1305_ietf_ABYTES
#define CHECK_BYTES 32U
#define MAC_BYTES 32U
#define SUBKEYS_SIZE ((_KB_SUBKEY_MAX - 1) * KB_SUBKEY_BYTES)
/* Raw (32), hex (64) plus "\n" or "\r\n"; read one more to see longer files. */
#define MASTER_READ_MAX 67U
#define AD_MAX (KB_KEY_NAME_MAX + 1 + 10)

static void jsonp_unref(json_t **j) {
        json_decref(*j);
}
#define _cleanup_json_ _cleanup_(jsonp_unref)

int kb_key_alloc(const char *name, unsigned version, size_t len, struct kb_key **ret) {
        struct kb_key *k = calloc(1, sizeof(*k));
        if (!k)
                return -ENOMEM;
        k->name = strdup(name);
        k->secret = sodium_malloc(len + 1);
        if (!k->name || !k->secret) {
                free(k->name);
                sodium_free(k->secret);
                free(k);
                return -ENOMEM;
        }
        k->secret[len] = 0;
        k->len = len;
        k->version = version;
        k->n_ref = 1;
        *ret = k;
        return 0;
}

void kb_key_seal_memory(struct kb_key *k) {
        sodium_mprotect_noaccess(k->secret);
}

int kb_secret_check(const char *secret, size_t len) {
        if (len == 0)
                return -ENODATA;
        if (len > KB_KEY_MAX_BYTES)
                return -EFBIG;
        /* Control characters would let a key inject header lines. */
        for (size_t i = 0; i < len; i++)
                if ((unsigned char) secret[i] < 0x20 || secret[i] == 0x7f)
                        return -EBADMSG;
        return 0;
}

static const unsigned char *subkey(unsigned char *sk, int id) {
        /* One region for all subkeys: a single mprotect toggles them. */
        sodium_mprotect_readonly(sk);
        return sk + (size_t) (id - 1) * KB_SUBKEY_BYTES;
}

static void subkeys_close(unsigned char *sk) {
        sodium_mprotect_noaccess(sk);
}

unsigned char *kb_subkeys_free(unsigned char *sk) {
        sodium_free(sk); /* zeroes first; NULL is fine */
        return NULL;
}

int kb_subkeys_derive(const unsigned char master[KB_MASTER_KEY_BYTES], unsigned char **ret) {
        unsigned char *sk = sodium_malloc(SUBKEYS_SIZE);
        if (!sk)
                return -ENOMEM;
        for (int id = 1; id < _KB_SUBKEY_MAX; id++)
                if (crypto_kdf_derive_from_key(sk + (size_t) (id - 1) * KB_SUBKEY_BYTES, KB_SUBKEY_BYTES,
                                               (uint64_t) id, KB_KDF_CONTEXT, master) != 0) {
                        sodium_free(sk);
                        return -EIO;
                }
        subkeys_close(sk);
        *ret = sk;
        return 0;
}

int kb_subkeys_random(unsigned char **ret) {
        unsigned char *sk = sodium_malloc(SUBKEYS_SIZE);
        if (!sk)
                return -ENOMEM;
        randombytes_buf(sk, SUBKEYS_SIZE);
        subkeys_close(sk);
        *ret = sk;
        return 0;
}

static int master_fail(char **ret_error, int r, const char *fmt, ...) _printf_(3, 4);
static int master_fail(char **ret_error, int r, const char *fmt, ...) {
        if (ret_error) {
                va_list ap;
                va_start(ap, fmt);
                if (vasprintf(ret_error, fmt, ap) < 0)
                        *ret_error = NULL;
                va_end(ap);
        }
        return r;
}

#define MASTER_HINT "master_key = must name a file with the 32-byte master key, raw or as 64 hex characters"

int kb_subkeys_load(const char *path, unsigned char **ret, char **ret_error) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) {
                if (errno == ENOENT)
                        return -ENOENT;
                return master_fail(ret_error, -ENOKEY, "cannot read the master key %s: %m: " MASTER_HINT, path);
        }
        struct stat st;
        if (fstat(fd, &st) < 0)
                return master_fail(ret_error, -ENOKEY, "cannot read the master key %s: %m: " MASTER_HINT, path);
        if (!S_ISREG(st.st_mode))
                return master_fail(ret_error, -ENOKEY, "the master key %s is not a regular file: " MASTER_HINT,
                                   path);

        unsigned char *buf = sodium_malloc(MASTER_READ_MAX);
        unsigned char *master = sodium_malloc(KB_MASTER_KEY_BYTES);
        int r = 0;
        size_t len = 0;
        if (!buf || !master)
                r = -ENOMEM;
        while (r == 0 && len < MASTER_READ_MAX) {
                ssize_t n = read(fd, buf + len, MASTER_READ_MAX - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        r = master_fail(ret_error, -ENOKEY, "cannot read the master key %s: %m: " MASTER_HINT,
                                        path);
                else if (n == 0)
                        break;
                else
                        len += (size_t) n;
        }
        if (r == 0) {
                size_t hexlen = len;
                if (hexlen > 0 && buf[hexlen - 1] == '\n')
                        hexlen--;
                if (hexlen > 0 && buf[hexlen - 1] == '\r')
                        hexlen--;
                size_t bin_len = 0;
                const char *end = NULL;
                if (len == KB_MASTER_KEY_BYTES)
                        memcpy(master, buf, KB_MASTER_KEY_BYTES);
                else if (hexlen != 2 * KB_MASTER_KEY_BYTES ||
                         sodium_hex2bin(master, KB_MASTER_KEY_BYTES, (const char *) buf, hexlen, NULL, &bin_len,
                                        &end) != 0 ||
                         bin_len != KB_MASTER_KEY_BYTES || end != (const char *) buf + hexlen)
                        r = master_fail(ret_error, -ENOKEY,
                                        "the master key %s is malformed (%zu bytes): " MASTER_HINT, path, len);
                if (r == 0 && sodium_is_zero(master, KB_MASTER_KEY_BYTES))
                        r = master_fail(ret_error, -ENOKEY, "the master key %s is all zeros: " MASTER_HINT, path);
        }
        if (r == 0)
                r = kb_subkeys_derive(master, ret);
        sodium_free(buf);
        sodium_free(master);
        return r;
}

static int make_ad(const char *name, unsigned version, unsigned char ad[AD_MAX + 1], size_t *ret_len) {
        size_t l = strlen(name);
        if (l > KB_KEY_NAME_MAX)
                return -EINVAL;
        memcpy(ad, name, l);
        ad[l] = 0;
        int n = snprintf((char *) ad + l + 1, AD_MAX - l, "%u", version);
        if (n < 0 || (size_t) n >= AD_MAX - l)
                return -EINVAL;
        *ret_len = l + 1 + (size_t) n;
        return 0;
}

static char *hex_of(const unsigned char *p, size_t n) {
        char *s = malloc(2 * n + 1);
        if (s)
                sodium_bin2hex(s, 2 * n + 1, p, n);
        return s;
}

int kb_keyfile_seal(unsigned char *sk, struct kb_key *k, const char *secret, size_t len) {
        unsigned char nonce[NONCE_BYTES], ad[AD_MAX + 1];
        size_t ad_len;
        if (len == 0 || len > KB_KEY_MAX_BYTES || make_ad(k->name, k->version, ad, &ad_len) < 0)
                return -EINVAL;
        _cleanup_free_ unsigned char *ct = malloc(len + TAG_BYTES);
        if (!ct)
                return -ENOMEM;
        randombytes_buf(nonce, sizeof(nonce));
        unsigned long long ct_len = 0;
        crypto_aead_xchacha20poly1305_ietf_encrypt(ct, &ct_len, (const unsigned char *) secret, len, ad, ad_len,
                                                   NULL, nonce, subkey(sk, KB_SUBKEY_SEAL));
        subkeys_close(sk);
        char *nh = hex_of(nonce, sizeof(nonce)), *sh = hex_of(ct, (size_t) ct_len);
        if (!nh || !sh) {
                free(nh);
                free(sh);
                return -ENOMEM;
        }
        free(k->nonce_hex);
        free(k->sealed_hex);
        k->nonce_hex = nh;
        k->sealed_hex = sh;
        return 0;
}

void kb_keyfile_fingerprint(unsigned char *sk, const char *secret, size_t len, char ret[17]) {
        unsigned char h[crypto_generichash_BYTES_MIN];
        crypto_generichash(h, sizeof(h), (const unsigned char *) secret, len, subkey(sk, KB_SUBKEY_FINGERPRINT),
                           KB_SUBKEY_BYTES);
        subkeys_close(sk);
        sodium_bin2hex(ret, 17, h, 8);
        sodium_memzero(h, sizeof(h));
}

static char *check_hex(unsigned char *sk) {
        unsigned char h[CHECK_BYTES];
        crypto_generichash(h, sizeof(h), (const unsigned char *) KB_KEYFILE_CHECK_TEXT,
                           strlen(KB_KEYFILE_CHECK_TEXT), subkey(sk, KB_SUBKEY_CHECK), KB_SUBKEY_BYTES);
        subkeys_close(sk);
        return hex_of(h, sizeof(h));
}

int kb_keyfile_mac(unsigned char *sk, void *json_obj, char **ret_hex) {
        _cleanup_json_ json_t *copy = json_copy(json_obj); /* shallow: values shared */
        if (!copy)
                return -ENOMEM;
        (void) json_object_del(copy, "mac");
        _cleanup_free_ char *canon = json_dumps(copy, JSON_SORT_KEYS | JSON_COMPACT);
        if (!canon)
                return -ENOMEM;
        unsigned char h[MAC_BYTES];
        crypto_generichash(h, sizeof(h), (const unsigned char *) canon, strlen(canon), subkey(sk, KB_SUBKEY_MAC),
                           KB_SUBKEY_BYTES);
        subkeys_close(sk);
        char *s = hex_of(h, sizeof(h));
        if (!s)
                return -ENOMEM;
        *ret_hex = s;
        return 0;
}

void kb_keyfile_entries_free(struct kb_keyfile_entry *e, size_t n) {
        for (size_t i = 0; i < n; i++)
                kb_key_unref(e[i].key);
        free(e);
}

/* ---------------------------------------------------------------- parse */

struct parse {
        const char *path;
        char **ret_error;
};

static int fail(struct parse *p, int r, const char *detail) {
        if (!p->ret_error)
                return r;
        int k = -1;
        switch (r) {
        case -ENODATA:
                k = asprintf(p->ret_error,
                             "%s: keystore is truncated (%s): restore it from backup, or move it aside and set the "
                             "keys again",
                             p->path, detail);
                break;
        case -EINVAL:
                k = asprintf(p->ret_error,
                             "%s: not a keybroker keystore (%s): check keystore = in the configuration, or move the "
                             "file aside",
                             p->path, detail);
                break;
        case -EKEYREJECTED:
                k = asprintf(p->ret_error,
                             "%s: the master key does not match this keystore: start with the master key it was "
                             "sealed with, or move the keystore aside and set the keys again",
                             p->path);
                break;
        case -ENOKEY:
                k = asprintf(p->ret_error,
                             "%s: the keystore exists but there is no master key (%s): provide the master key it "
                             "was sealed with (master_key =)",
                             p->path, detail);
                break;
        case -EBADMSG:
                k = asprintf(p->ret_error,
                             "%s: keystore is damaged or was tampered with (%s): restore it from backup or "
                             "re-create it and set the keys again",
                             p->path, detail);
                break;
        default:
                k = asprintf(p->ret_error, "%s: cannot read the keystore: %s", p->path, strerror(-r));
        }
        if (k < 0)
                *p->ret_error = NULL;
        return r;
}

/* Our files start with '{' and end with '}': a parse error at the very
 * end, or a missing final brace, means the file was cut short. */
static bool looks_cut_off(const char *data, size_t len, const json_error_t *err) {
        size_t i = 0;
        while (i < len && strchr(" \t\r\n", data[i]))
                i++;
        while (len > i && strchr(" \t\r\n", data[len - 1]))
                len--;
        if (i == len || data[i] != '{')
                return false;
        return json_error_code(err) == json_error_premature_end_of_input || (size_t) err->position >= len ||
               data[len - 1] != '}';
}

static bool hex_field(json_t *o, const char *field, size_t min_bytes, size_t max_bytes) {
        const char *s = json_string_value(json_object_get(o, field));
        if (!s)
                return false;
        size_t l = strlen(s);
        if (l % 2 || l < 2 * min_bytes || l > 2 * max_bytes)
                return false;
        return strspn(s, "0123456789abcdef") == l;
}

static int entry_cmp(const void *a, const void *b) {
        const struct kb_keyfile_entry *x = a, *y = b;
        int c = strcmp(x->key->name, y->key->name);
        if (c)
                return c;
        return x->key->version < y->key->version ? -1 : x->key->version > y->key->version;
}

static int open_record(struct parse *p, unsigned char *sk, json_t *rec, struct kb_keyfile_entry *ret) {
        json_t *jn = json_object_get(rec, "name"), *jv = json_object_get(rec, "version"),
               *ja = json_object_get(rec, "active"), *jc = json_object_get(rec, "created");
        const char *name = json_string_value(jn);
        if (!json_is_object(rec) || json_object_size(rec) != 6 || !name || !kb_key_name_valid(name) ||
            !json_is_integer(jv) || json_integer_value(jv) < 1 || json_integer_value(jv) > UINT_MAX ||
            !json_is_boolean(ja) || !json_is_integer(jc) || json_integer_value(jc) < 0 ||
            !hex_field(rec, "nonce", NONCE_BYTES, NONCE_BYTES) ||
            !hex_field(rec, "sealed", TAG_BYTES + 1, TAG_BYTES + KB_KEY_MAX_BYTES))
                return fail(p, -EBADMSG, "a key record is malformed");
        unsigned version = (unsigned) json_integer_value(jv);

        unsigned char nonce[NONCE_BYTES], ad[AD_MAX + 1];
        size_t ad_len, ct_len;
        const char *nh = json_string_value(json_object_get(rec, "nonce"));
        const char *sh = json_string_value(json_object_get(rec, "sealed"));
        _cleanup_free_ unsigned char *ct = malloc(strlen(sh) / 2);
        if (!ct)
                return -ENOMEM;
        if (sodium_hex2bin(nonce, sizeof(nonce), nh, strlen(nh), NULL, NULL, NULL) != 0 ||
            sodium_hex2bin(ct, strlen(sh) / 2, sh, strlen(sh), NULL, &ct_len, NULL) != 0 ||
            make_ad(name, version, ad, &ad_len) < 0)
                return fail(p, -EBADMSG, "a key record is malformed");

        struct kb_key *k;
        int r = kb_key_alloc(name, version, ct_len - TAG_BYTES, &k);
        if (r < 0)
                return r;
        unsigned long long m_len = 0;
        if (crypto_aead_xchacha20poly1305_ietf_decrypt((unsigned char *) k->secret, &m_len, NULL, ct, ct_len, ad,
                                                       ad_len, nonce, subkey(sk, KB_SUBKEY_SEAL)) != 0) {
                subkeys_close(sk);
                kb_key_seal_memory(k);
                kb_key_unref(k);
                return fail(p, -EBADMSG, "a key record does not authenticate");
        }
        subkeys_close(sk);
        bool valid = kb_secret_check(k->secret, k->len) == 0;
        kb_key_seal_memory(k);
        k->created_usec = (uint64_t) json_integer_value(jc);
        k->nonce_hex = strdup(nh);
        k->sealed_hex = strdup(sh);
        if (!valid || !k->nonce_hex || !k->sealed_hex) {
                kb_key_unref(k);
                return valid ? -ENOMEM : fail(p, -EBADMSG, "a stored secret is invalid");
        }
        *ret = (struct kb_keyfile_entry) { .key = k, .active = json_is_true(ja) };
        return 0;
}

/* One active version per name, no duplicates, within the limits. */
static int check_entries(struct parse *p, const struct kb_keyfile_entry *e, size_t n) {
        size_t names = 0;
        for (size_t i = 0; i < n;) {
                size_t j = i, active = 0;
                for (; j < n && streq(e[j].key->name, e[i].key->name); j++) {
                        active += e[j].active;
                        if (j > i && e[j].key->version == e[j - 1].key->version)
                                return fail(p, -EBADMSG, "a key version appears twice");
                }
                if (active != 1)
                        return fail(p, -EBADMSG, "a key has no single active version");
                if (j - i > KB_KEY_MAX_VERSIONS)
                        return fail(p, -EBADMSG, "too many versions of a key");
                if (++names > KB_KEY_MAX_NAMES)
                        return fail(p, -EBADMSG, "too many keys");
                i = j;
        }
        return 0;
}

int kb_keyfile_parse(const char *path, const char *data, size_t len, unsigned char *sk,
                     struct kb_keyfile_entry **ret, size_t *ret_n, char **ret_error) {
        struct parse p = { .path = path, .ret_error = ret_error };
        size_t i = 0;
        while (i < len && strchr(" \t\r\n", data[i]))
                i++;
        if (i == len)
                return fail(&p, -ENODATA, "the file is empty");
        if (len > KB_KEYFILE_MAX_BYTES)
                return fail(&p, -EINVAL, "larger than 8 MiB");

        json_error_t err;
        _cleanup_json_ json_t *o = json_loadb(data, len, JSON_REJECT_DUPLICATES, &err);
        if (!o) {
                char detail[200];
                snprintf(detail, sizeof(detail), "%zu bytes; JSON error at byte %d: %s", len, err.position,
                         err.text);
                return fail(&p, looks_cut_off(data, len, &err) ? -ENODATA : -EINVAL, detail);
        }
        const char *format = json_string_value(json_object_get(o, "format"));
        if (!json_is_object(o) || !format)
                return fail(&p, -EINVAL, "no \"format\"");
        if (!streq(format, KB_KEYFILE_FORMAT)) {
                char detail[200];
                snprintf(detail, sizeof(detail), "format \"%.64s\", this version reads \"%s\"", format,
                         KB_KEYFILE_FORMAT);
                return fail(&p, -EINVAL, detail);
        }
        if (!sk)
                return fail(&p, -ENOKEY, "no master key file");

        json_t *keys = json_object_get(o, "keys");
        if (json_object_size(o) != 4 || !hex_field(o, "check", CHECK_BYTES, CHECK_BYTES) ||
            !hex_field(o, "mac", MAC_BYTES, MAC_BYTES) || !json_is_array(keys))
                return fail(&p, -EBADMSG, "fields missing or malformed");

        /* The check value first: with the wrong master key the MAC fails
         * too, and that must not read as tampering. */
        _cleanup_free_ char *check = check_hex(sk);
        _cleanup_free_ char *mac = NULL;
        if (!check || kb_keyfile_mac(sk, o, &mac) < 0)
                return -ENOMEM;
        if (sodium_memcmp(check, json_string_value(json_object_get(o, "check")), 2 * CHECK_BYTES) != 0)
                return fail(&p, -EKEYREJECTED, NULL);
        if (sodium_memcmp(mac, json_string_value(json_object_get(o, "mac")), 2 * MAC_BYTES) != 0)
                return fail(&p, -EBADMSG, "the file MAC does not match");

        size_t n = json_array_size(keys);
        if (n > (size_t) KB_KEY_MAX_NAMES * KB_KEY_MAX_VERSIONS)
                return fail(&p, -EBADMSG, "too many key records");
        struct kb_keyfile_entry *e = calloc(n ?: 1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        for (size_t k = 0; k < n; k++) {
                int r = open_record(&p, sk, json_array_get(keys, k), &e[k]);
                if (r < 0) {
                        kb_keyfile_entries_free(e, k);
                        return r;
                }
        }
        qsort(e, n, sizeof(*e), entry_cmp);
        int r = check_entries(&p, e, n);
        if (r < 0) {
                kb_keyfile_entries_free(e, n);
                return r;
        }
        *ret = e;
        *ret_n = n;
        return 0;
}

/* ---------------------------------------------------------------- write */

static char *serialise(unsigned char *sk, const struct kb_keyfile_entry *e, size_t n) {
        _cleanup_json_ json_t *keys = json_array();
        _cleanup_json_ json_t *o = json_object();
        _cleanup_free_ char *check = check_hex(sk);
        if (!keys || !o || !check)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                const struct kb_key *k = e[i].key;
                if (k->version == 0)
                        continue;
                if (!k->nonce_hex || !k->sealed_hex)
                        return NULL;
                json_t *rec = json_pack("{s:s, s:I, s:b, s:I, s:s, s:s}", "name", k->name, "version",
                                        (json_int_t) k->version, "active", (int) e[i].active, "created",
                                        (json_int_t) k->created_usec, "nonce", k->nonce_hex, "sealed",
                                        k->sealed_hex);
                if (!rec || json_array_append_new(keys, rec) < 0)
                        return NULL;
        }
        if (json_object_set_new(o, "format", json_string(KB_KEYFILE_FORMAT)) < 0 ||
            json_object_set_new(o, "check", json_string(check)) < 0 || json_object_set(o, "keys", keys) < 0)
                return NULL;
        _cleanup_free_ char *mac = NULL;
        if (kb_keyfile_mac(sk, o, &mac) < 0 || json_object_set_new(o, "mac", json_string(mac)) < 0)
                return NULL;
        return json_dumps(o, JSON_SORT_KEYS | JSON_INDENT(1));
}

int kb_keyfile_write(const char *path, unsigned char *sk, const struct kb_keyfile_entry *e, size_t n) {
        _cleanup_free_ char *text = serialise(sk, e, n);
        if (!text)
                return -ENOMEM;
        _cleanup_free_ char *dir = strdup(path);
        _cleanup_free_ char *tmp = NULL;
        if (!dir || asprintf(&tmp, "%s.tmp-XXXXXX", path) < 0)
                return -ENOMEM;
        _cleanup_close_ int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return -errno;

        /* mkostemp opens with O_CREAT|O_EXCL and mode 0600; fchmod makes
         * that hold whatever the umask. */
        _cleanup_close_ int fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
                return -errno;
        int r = fchmod(fd, 0600) < 0 ? -errno : 0;
        if (r == 0)
                r = kb_write_all(fd, text, strlen(text));
        if (r == 0)
                r = kb_write_all(fd, "\n", 1);
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        if (r == 0 && close(TAKE_FD(fd)) < 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0) {
                (void) unlink(tmp);
                return r;
        }
        /* The new file is in place: from here on the change has happened,
         * so a failing directory fsync cannot be reported as "unchanged". */
        (void) fsync(dfd);
        return 0;
}
