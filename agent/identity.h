/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 8 of 12, decisions: calls no other layer. */

/* Who is on the other end of an app connection, as the kernel says, and
 * which teams that makes them a member of. Taken once at accept. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"

#define KB_IDENTITY_MAX_GROUPS 256

struct kb_identity {
        uid_t uid;
        gid_t gid;
        pid_t pid;
        gid_t *groups;  /* supplementary, from SO_PEERGROUPS (at most KB_IDENTITY_MAX_GROUPS) */
        size_t n_groups;
        char *unit;     /* systemd unit, or NULL when unknown or not provably the caller's */
        char *exe;      /* /proc/PID/exe target, or NULL */
};

/* Read the peer of a connected AF_UNIX socket: SO_PEERCRED, SO_PEERGROUPS,
 * and the unit via a pinned pidfd (SO_PEERPIDFD, else pidfd_open) with the
 * re-check that the pinned process is still the caller. Only a failure of
 * SO_PEERCRED itself is an error; unit/exe/groups degrade to unknown. */
int kb_identity_from_socket(int fd, struct kb_identity **ret);
void kb_identity_free(struct kb_identity *id);

/* True when the identity matches the team's users, groups (primary or
 * supplementary) or units. */
bool kb_identity_in_team(const struct kb_identity *id, const struct kb_team *t);

/* Pick the caller's team. requested is the X-Keybroker-Team value or NULL.
 * Without a request: the first matching team in config order. With one: that
 * team if the identity is a member, else -EPERM. No team at all: -ENOENT. */
int kb_identity_pick_team(const struct kb_config *c, const struct kb_identity *id, const char *requested,
                          const struct kb_team **ret);

/* Parsers for /proc/PID/stat (starttime, field 22; comm may hold spaces and
 * parentheses) and /proc/PID/status (the "Uid:" line: real and effective).
 * Exposed for tests. -EINVAL on malformed text, -ENOENT without a Uid: line. */
int kb_identity_parse_stat_starttime(const char *stat, uint64_t *ret);
int kb_identity_parse_status_uids(const char *status, uid_t *ret_real, uid_t *ret_effective);
