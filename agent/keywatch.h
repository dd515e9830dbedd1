/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 11 of 12, keys: calls no other layer. */

/* Watching where keys live on disk: credentials_dir (one file per key, as
 * systemd's LoadCredential=, Vault Agent or config management write them) and
 * the sealed keystore file. A change — a write closed, a file renamed into
 * place, a symlink swapped, a file deleted — is told to the owner once the
 * directory has been quiet for KB_KEYWATCH_SETTLE_USEC, so that a writer's
 * temp-file-then-rename is seen as one change. Calls only sd-event; its one
 * callback is the owner's. Never logs. */

#include <systemd/sd-event.h>

#define KB_KEYWATCH_SETTLE_USEC (100 * 1000)

struct kb_keywatch;

typedef void (*kb_keywatch_handler_t)(void *userdata);

int kb_keywatch_new(sd_event *e, kb_keywatch_handler_t on_change, void *userdata, struct kb_keywatch **ret);
struct kb_keywatch *kb_keywatch_free(struct kb_keywatch *w);

/* Watch these (either may be NULL); replaces what was watched before. A path
 * that cannot be watched (its directory missing) is skipped: the return is
 * then the first -errno, with the other path still watched. */
int kb_keywatch_set_paths(struct kb_keywatch *w, const char *credentials_dir, const char *keystore);
