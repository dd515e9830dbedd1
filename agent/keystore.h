/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 11 of 12, keys: calls layer 12. */

/* Provider keys: a sealed, versioned store on disk (keystore =) and plain
 * credential files (credentials_dir =), both held in sodium_malloc'd memory
 * kept PROT_NONE except while requests use them (kb_key_release() and
 * kb_keys_reseal_idle(): resealed about a second after the last use).
 *
 * The sealed store holds one record per key version, each sealed with
 * XChaCha20-Poly1305-IETF under a subkey derived with crypto_kdf from the
 * 32-byte master key, with "name\0version" as associated data (a record
 * cannot be moved to another name or version). The file as a whole carries a
 * keyed BLAKE2b MAC (versions cannot be dropped or the active one switched
 * behind our back) and a check value that tells a wrong master key from
 * tampering. Writes are atomic: temp file, fsync, rename, fsync of the
 * directory; mode 0600.
 *
 * Library-like: never logs. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"

#define KB_KEY_MAX_BYTES 4096
#define KB_KEY_MAX_VERSIONS 64          /* versions kept per name */
#define KB_KEY_MAX_NAMES 1024
#define KB_KEY_FINGERPRINT_HEX 17       /* 8 bytes as hex, NUL */
#define KB_KEY_NAME_MAX 128

struct kb_keystore;
/* One version of one key; refcounted so a request keeps the version it
 * started with across a rotation. Version 0 = a plain credential file. */
struct kb_key;

/* An empty store: no sealed file, no credentials. */
int kb_keystore_new(struct kb_keystore **ret);
struct kb_keystore *kb_keystore_free(struct kb_keystore *ks);

/* Open the sealed store at path (NULL: none) with the master key from
 * master_key_path (32 raw bytes, or 64 hex characters with an optional
 * trailing newline). A missing store file is an empty store, created on the
 * first change; a missing master key file is fine while the store file does
 * not exist (then changes fail with -ENOKEY). Errors, each with a malloc'd
 * *ret_error saying which and what to do:
 *   -ENOKEY       store exists but the master key is missing/unreadable/malformed
 *   -EKEYREJECTED the master key is not the one the store was sealed with
 *   -EBADMSG      tampered (MAC or a record fails to authenticate)
 *   -ENODATA      truncated or empty file
 *   -EINVAL       not a keystore file (unparsable, wrong format version)
 *   other -errno  I/O */
int kb_keystore_open(const char *path, const char *master_key_path, struct kb_keystore **ret, char **ret_error);

/* Add every key named by a route of c from c->agent.credentials_dir that the
 * sealed store does not hold. Missing keys are skipped (the route answers
 * 503); an invalid file (empty, too long, control characters) is an error,
 * with the key name in *ret_bad_name (storage of c). */
int kb_keystore_load_credentials(struct kb_keystore *ks, const struct kb_config *c, const char **ret_bad_name);

/* Read and validate one secret file: trailing newline stripped, 1..4096
 * bytes, no control characters (they would let a key inject headers). */
int kb_key_read_file(int dir_fd, const char *name, struct kb_key **ret);

/* Validate a secret given through the admin API the same way. */
int kb_key_secret_valid(const char *secret, size_t len);

/* The active version of NAME (sealed store first, then credentials), with a
 * reference taken; -ENOENT if none. */
int kb_keystore_get(struct kb_keystore *ks, const char *name, struct kb_key **ret);

/* Changes to the sealed store. Each writes the file atomically before
 * returning; if the write fails nothing changes in memory. -ENOKEY when
 * there is no master key or no keystore path. Secrets are validated as for
 * files (-EINVAL). */
/* A new name at version 1; -EEXIST if the store already has the name. */
/* That version of the key, active or not (an object made with it is used
 * with it); -ENOENT when the keystore no longer has it. */
int kb_keystore_get_version(struct kb_keystore *ks, const char *name, unsigned version, struct kb_key **ret);
int kb_keystore_set(struct kb_keystore *ks, const char *name, const char *secret, size_t len, unsigned *ret_version);
/* Version N+1 of an existing name, made active (a credentials-only name
 * becomes a sealed one at version 1); the previous versions are kept (the
 * oldest beyond KB_KEY_MAX_VERSIONS are dropped). */
int kb_keystore_rotate(struct kb_keystore *ks, const char *name, const char *secret, size_t len,
                       unsigned *ret_version);
/* Make the newest version older than the active one active again. -ENOENT no
 * such name, -ESRCH no older version. */
int kb_keystore_rollback(struct kb_keystore *ks, const char *name, unsigned *ret_version);
/* Delete one version (-EBUSY if it is the active one), or with version 0
 * every version of the name. -ENOENT if absent. */
int kb_keystore_delete(struct kb_keystore *ks, const char *name, unsigned version);

/* Carry use counters over from the store being replaced (reload). */
void kb_keystore_carry_stats(struct kb_keystore *to, const struct kb_keystore *from);

struct kb_key *kb_key_ref(struct kb_key *k);
struct kb_key *kb_key_unref(struct kb_key *k);
const char *kb_key_name(const struct kb_key *k);
unsigned kb_key_version(const struct kb_key *k);

/* Make the secret readable and return it; kb_key_close() makes it
 * inaccessible again at once. Calls nest. */
const char *kb_key_open(struct kb_key *k, size_t *ret_len);
void kb_key_close(struct kb_key *k);
/* Like kb_key_close(), but the secret stays readable until the next
 * kb_keys_reseal_idle(): the request path uses this, so that a busy broker
 * pays two mprotect() calls (and the TLB shootdowns they cause on every
 * CPU) per sweep rather than per request. */
void kb_key_release(struct kb_key *k);
/* Make every released key that nobody has open inaccessible again.
 * Returns how many keys are still readable (open right now). The loop
 * calls it about once a second while any key is readable. */
size_t kb_keys_reseal_idle(void);
/* How many keys are readable now (tests). */
size_t kb_keys_n_readable(void);
/* Count a use (a request was sent with it), at realtime now_usec. */
void kb_key_mark_used(struct kb_key *k, uint64_t now_usec);

/* For listings: one entry per key version. */
struct kb_key_info {
        const char *name;
        unsigned version;
        bool active;
        bool sealed;                    /* from the keystore, else credentials_dir */
        char fingerprint[KB_KEY_FINGERPRINT_HEX]; /* keyed BLAKE2b, 8 bytes */
        uint64_t created_usec;          /* realtime; 0 unknown (credential files) */
        uint64_t last_used_usec;        /* realtime; 0 never (since the daemon started) */
        uint64_t uses;
};
size_t kb_keystore_n_versions(const struct kb_keystore *ks);
/* i in [0, n_versions): sorted by name, then version. */
int kb_keystore_describe(const struct kb_keystore *ks, size_t i, struct kb_key_info *ret);
/* Fingerprint of one key version (as in kb_key_info). */
void kb_keystore_fingerprint(const struct kb_keystore *ks, struct kb_key *k, char ret[KB_KEY_FINGERPRINT_HEX]);

/* Added with the sealed store (keystore.c):
 *
 * Key names as in the config: [A-Za-z0-9._-]+, at most KB_KEY_NAME_MAX, no "..". */
bool kb_key_name_valid(const char *name);
/* Return values in detail:
 *  kb_key_secret_valid: 1 if valid (one trailing "\n" or "\r\n" is allowed and
 *    is not part of the secret, as in files), else -ENODATA (empty), -EFBIG
 *    (longer than KB_KEY_MAX_BYTES), -EBADMSG (control characters).
 *  kb_keystore_set/rotate store the secret without that trailing newline; they
 *    return -EINVAL for a bad name or secret, -E2BIG when the store already
 *    holds KB_KEY_MAX_NAMES names, -ENOENT (rotate) if the name is neither
 *    sealed nor a loaded credential file, -ENOKEY without master key/path,
 *    other -errno from writing the file (then nothing changed in memory).
 *  kb_keystore_rollback: -ENOENT unknown name, -ESRCH no older sealed version
 *    (also for a credentials-only name).
 *  kb_keystore_delete: only sealed versions can be deleted; deleting every
 *    version of a name that also has a credential file falls back to that file.
 *  Fingerprints: keyed with a subkey of the master key, so stable across
 *    restarts; on a host without a master key (credentials only) the key is
 *    random per process and fingerprints are only comparable within one run.
 *  kb_keystore_describe: credential files are version 0, sealed=false,
 *    created 0; active=false when a sealed version of the name shadows it.
 *    Entry strings belong to ks. */
