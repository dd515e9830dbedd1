/* SPDX-License-Identifier: MIT */
#pragma once

/* Provider keys held in sodium_malloc'd memory kept PROT_NONE except while a
 * request's credential header is being built. In this version keys come
 * from credentials_dir (one file per key name, as systemd's LoadCredential=
 * lays them out) and carry version 0; the sealed, rotatable keystore builds
 * on the same objects. Library-like: never logs. */

#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define KB_KEY_MAX_BYTES 4096

struct kb_keystore;
/* One version of one key; refcounted so a request keeps the version it
 * started with across a rotation. */
struct kb_key;

int kb_keystore_new(struct kb_keystore **ret);
struct kb_keystore *kb_keystore_free(struct kb_keystore *ks);

/* Load every key named by a route of c from c->agent.credentials_dir.
 * Missing keys are skipped (the route answers 503); an unreadable or invalid
 * file (empty, too long, control characters) is an error, with the key name
 * in *ret_bad_name (static storage of c). */
int kb_keystore_load_credentials(struct kb_keystore *ks, const struct kb_config *c, const char **ret_bad_name);

/* Read and validate one secret file: trailing newline stripped, 1..4096
 * bytes, no control characters (they would let a key inject headers). */
int kb_key_read_file(int dir_fd, const char *name, struct kb_key **ret);

/* The active version of NAME, with a reference taken; -ENOENT if none. */
int kb_keystore_get(struct kb_keystore *ks, const char *name, struct kb_key **ret);

struct kb_key *kb_key_ref(struct kb_key *k);
struct kb_key *kb_key_unref(struct kb_key *k);
const char *kb_key_name(const struct kb_key *k);
unsigned kb_key_version(const struct kb_key *k);

/* Make the secret readable and return it; kb_key_close() makes it
 * inaccessible again. Calls nest. */
const char *kb_key_open(struct kb_key *k, size_t *ret_len);
void kb_key_close(struct kb_key *k);
