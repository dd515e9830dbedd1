/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 11 of 12, keys: calls layer 12. */

/* The keystore's file format and its cryptography; internal to keystore.c
 * (and its unit test, which needs the constants to forge files).
 *
 *   {"format":"keybroker-keystore-1",
 *    "check":"<hex: keyed BLAKE2b-256 of KB_KEYFILE_CHECK_TEXT>",
 *    "keys":[{"name":"N","version":V,"active":true|false,"created":USEC,
 *             "nonce":"<24 bytes hex>","sealed":"<ciphertext+tag hex>"}, ...],
 *    "mac":"<hex: keyed BLAKE2b-256>"}
 *
 * Subkeys come from the 32-byte master key with crypto_kdf, context
 * KB_KDF_CONTEXT. "sealed" is XChaCha20-Poly1305-IETF of the secret, with
 * "name\0version" (version in decimal) as associated data. "mac" covers
 * json_dumps(JSON_SORT_KEYS|JSON_COMPACT) of the object without "mac", so
 * layout and key order on disk do not matter but every value does. "check"
 * depends only on the master key: a mismatch means a wrong master key, not
 * tampering. Library-like: never logs. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kb_key {
        unsigned n_ref;
        unsigned n_open;
        char *name;
        unsigned version;               /* 0: a plain credential file */
        size_t len;
        char *secret;                   /* sodium_malloc'd, noaccess unless readable */
        /* Readable: opened, or released and not yet resealed (keystore.c's
         * list of such keys, swept by kb_keys_reseal_idle()). */
        bool readable;
        struct kb_key *readable_prev, *readable_next;
        uint64_t created_usec;
        uint64_t last_used_usec;
        uint64_t uses;
        /* Sealed form as stored (not secret), so unchanged versions are
         * rewritten as they were, without decrypting them again. */
        char *nonce_hex;
        char *sealed_hex;
};

#define KB_KEYFILE_FORMAT "keybroker-keystore-1"
#define KB_KEYFILE_MAX_BYTES (UINT32_C(8) << 20)
#define KB_KEYFILE_CHECK_TEXT "keybroker keystore master key check"
#define KB_KDF_CONTEXT "kbkeystr"
enum {
        KB_SUBKEY_SEAL = 1,
        KB_SUBKEY_MAC = 2,
        KB_SUBKEY_CHECK = 3,
        KB_SUBKEY_FINGERPRINT = 4,
        _KB_SUBKEY_MAX,
};
#define KB_SUBKEY_BYTES 32U
#define KB_MASTER_KEY_BYTES 32U

/* One version in the store, as held in memory. */
struct kb_keyfile_entry {
        struct kb_key *key;
        bool active;
};

/* A key with an uninitialised, writable secret buffer of len bytes (+NUL);
 * the caller fills it and calls kb_key_seal_memory(). */
int kb_key_alloc(const char *name, unsigned version, size_t len, struct kb_key **ret);
void kb_key_seal_memory(struct kb_key *k);

/* A secret exactly as stored: 1..KB_KEY_MAX_BYTES bytes, no control
 * characters. 0, or -ENODATA (empty), -EFBIG (too long), -EBADMSG. */
int kb_secret_check(const char *secret, size_t len);

/* Subkeys: one sodium_malloc'd region of (_KB_SUBKEY_MAX-1)*32 bytes,
 * noaccess except inside the functions below. The master key is read into
 * locked memory, used once to derive them, and wiped.
 * -ENOENT the file does not exist; -ENOKEY unreadable or malformed (with
 * *ret_error); other -errno. */
int kb_subkeys_load(const char *master_key_path, unsigned char **ret, char **ret_error);
/* From master key bytes (tests; and the no-file path). */
int kb_subkeys_derive(const unsigned char master[KB_MASTER_KEY_BYTES], unsigned char **ret);
/* A random key for fingerprints only, for hosts without a master key. */
int kb_subkeys_random(unsigned char **ret);
unsigned char *kb_subkeys_free(unsigned char *sk);

/* Seal secret for k (its name and version), filling k->nonce_hex/sealed_hex. */
int kb_keyfile_seal(unsigned char *sk, struct kb_key *k, const char *secret, size_t len);

/* 8-byte fingerprint (the first half of a 16-byte keyed BLAKE2b: libsodium's
 * minimum output) as hex. */
void kb_keyfile_fingerprint(unsigned char *sk, const char *secret, size_t len, char ret[17]);

/* Verify and decrypt a whole file. Entries sorted by name, then version.
 * Errors as kb_keystore_open(), with *ret_error naming path. */
int kb_keyfile_parse(const char *path, const char *data, size_t len, unsigned char *sk,
                     struct kb_keyfile_entry **ret, size_t *ret_n, char **ret_error);

/* Serialise entries (sealed ones only: version > 0) and replace path
 * atomically: PATH.tmp-XXXXXX (0600), fsync, rename, fsync of the directory.
 * On failure the temp file is gone and path untouched. */
int kb_keyfile_write(const char *path, unsigned char *sk, const struct kb_keyfile_entry *e, size_t n);

/* The MAC as the file carries it (hex), over obj without "mac". */
int kb_keyfile_mac(unsigned char *sk, void *json_obj, char **ret_hex);

void kb_keyfile_entries_free(struct kb_keyfile_entry *e, size_t n);
