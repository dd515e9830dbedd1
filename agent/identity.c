/* SPDX-License-Identifier: MIT */
#include "identity.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <systemd/sd-login.h>
#include <unistd.h>

#include "util.h"

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

/* The kernel's own ceiling on supplementary groups (NGROUPS_MAX); a peer
 * can't have more, so a reported size beyond this is nonsense. */
#define KB_IDENTITY_GROUPS_CEILING 65536

/* /proc/PID/stat and /proc/PID/status are a few KiB at most. */
#define KB_PROC_FILE_MAX 16384

static int read_small_file(const char *path, char *buf, size_t size) {
        _cleanup_close_ int fd = -1;
        size_t n = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        while (n < size - 1) {
                ssize_t k = read(fd, buf + n, size - 1 - n);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        break;
                n += (size_t) k;
        }
        if (n == size - 1)
                return -EFBIG;
        buf[n] = 0;
        return 0;
}

int kb_identity_parse_stat_starttime(const char *stat, uint64_t *ret) {
        const char *p;
        char *end;

        if (!stat || !ret)
                return -EINVAL;
        /* comm (field 2) may hold spaces and ')' itself; only the last ')'
         * ends it. */
        p = strrchr(stat, ')');
        if (!p)
                return -EINVAL;
        p++;
        /* Fields 3..21 come before starttime: skip 19 of them. */
        for (unsigned i = 0; i < 19; i++) {
                if (*p != ' ')
                        return -EINVAL;
                p++;
                if (*p == ' ' || *p == 0)
                        return -EINVAL;
                p += strcspn(p, " ");
        }
        if (*p != ' ')
                return -EINVAL;
        p++;
        if (*p < '0' || *p > '9')
                return -EINVAL;
        errno = 0;
        unsigned long long v = strtoull(p, &end, 10);
        if (errno != 0)
                return -EINVAL;
        if (*end != ' ' && *end != '\n' && *end != 0)
                return -EINVAL;
        *ret = (uint64_t) v;
        return 0;
}

int kb_identity_parse_status_uids(const char *status, uid_t *ret_real, uid_t *ret_effective) {
        const char *p;
        uid_t v[2];

        if (!status || !ret_real || !ret_effective)
                return -EINVAL;
        if (strncmp(status, "Uid:", 4) == 0)
                p = status;
        else {
                p = strstr(status, "\nUid:");
                if (!p)
                        return -ENOENT;
                p++;
        }
        p += 4;
        for (unsigned i = 0; i < 2; i++) {
                char *end;

                p += strspn(p, " \t");
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                errno = 0;
                unsigned long u = strtoul(p, &end, 10);
                if (errno != 0 || u >= (unsigned long) UINT32_MAX)
                        return -EINVAL;
                if (*end != ' ' && *end != '\t' && *end != '\n' && *end != 0)
                        return -EINVAL;
                v[i] = (uid_t) u;
                p = end;
        }
        *ret_real = v[0];
        *ret_effective = v[1];
        return 0;
}

static int proc_starttime(pid_t pid, uint64_t *ret) {
        char path[64], buf[KB_PROC_FILE_MAX];
        int r;

        snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
        r = read_small_file(path, buf, sizeof(buf));
        if (r < 0)
                return r;
        return kb_identity_parse_stat_starttime(buf, ret);
}

static int proc_euid(pid_t pid, uid_t *ret) {
        char path[64], buf[KB_PROC_FILE_MAX];
        uid_t real, effective;
        int r;

        snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
        r = read_small_file(path, buf, sizeof(buf));
        if (r < 0)
                return r;
        r = kb_identity_parse_status_uids(buf, &real, &effective);
        if (r < 0)
                return r;
        *ret = effective;
        return 0;
}

static int proc_exe(pid_t pid, char **ret) {
        char path[64], buf[PATH_MAX + 1];
        ssize_t n;

        snprintf(path, sizeof(path), "/proc/%d/exe", (int) pid);
        n = readlink(path, buf, sizeof(buf));
        if (n < 0)
                return -errno;
        if ((size_t) n >= sizeof(buf))
                return -ENAMETOOLONG;
        buf[n] = 0;
        char *s = strdup(buf);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

/* The pid the pidfd refers to, from /proc/self/fdinfo ("Pid:"); -1 when the
 * process is gone, -ENODATA when the kernel doesn't say. */
static int pidfd_get_pid(int pidfd, pid_t *ret) {
        char path[64], buf[KB_PROC_FILE_MAX];
        const char *p;
        char *end;
        int r;

        snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", pidfd);
        r = read_small_file(path, buf, sizeof(buf));
        if (r < 0)
                return r;
        p = strncmp(buf, "Pid:", 4) == 0 ? buf : strstr(buf, "\nPid:");
        if (!p)
                return -ENODATA;
        if (*p == '\n')
                p++;
        p += 4;
        p += strspn(p, " \t");
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno != 0 || end == p || v < INT_MIN || v > INT_MAX)
                return -EINVAL;
        *ret = (pid_t) v;
        return 0;
}

static int pin_peer(int fd, pid_t pid) {
        int pidfd = -1;
        socklen_t len = sizeof(pidfd);

        if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0 && len == sizeof(pidfd) && pidfd >= 0)
                return pidfd;
        /* Only a kernel without SO_PEERPIDFD falls back to pidfd_open(): a
         * pidfd opened from a pid number may already pin a recycled pid,
         * which the start-time and uid checks below only partly catch. Any
         * other error (ESRCH: the peer is gone) means unknown. */
        if (errno != ENOPROTOOPT)
                return -errno;
        pidfd = (int) syscall(SYS_pidfd_open, pid, 0);
        if (pidfd < 0)
                return -errno;
        return pidfd;
}

/* Find the unit and exe of the peer, proven to belong to the very process
 * that connected; on any doubt leave both NULL. */
static void identify_process(int fd, struct kb_identity *id) {
        _cleanup_close_ int pidfd = -1;
        _cleanup_free_ char *unit = NULL, *exe = NULL;
        uint64_t start_before, start_after;
        uid_t uid_before, uid_after;
        pid_t pinned;
        int r;

        /* pid 0: the peer isn't visible in our pid namespace; /proc/0 and
         * sd_pid_get_unit(0) would mean ourselves. */
        if (id->pid <= 0)
                return;

        pidfd = pin_peer(fd, id->pid);
        if (pidfd < 0)
                return;

        /* The pidfd names the pinned process; it must be the pid we look up. */
        r = pidfd_get_pid(pidfd, &pinned);
        if (r >= 0 && pinned != id->pid)
                return;
        if (r < 0 && r != -ENODATA)
                return;

        if (proc_starttime(id->pid, &start_before) < 0)
                return;
        if (proc_euid(id->pid, &uid_before) < 0)
                return;

        if (sd_pid_get_unit(id->pid, &unit) < 0)
                unit = NULL;
        if (proc_exe(id->pid, &exe) < 0)
                exe = NULL;

        /* Still alive through the lookups means the pid number was still
         * held by the pinned process, so /proc/PID was that process. The
         * start time and uid checks catch a pidfd_open() that pinned a
         * recycled pid, and a reuse between our reads. SO_PEERCRED's uid is
         * the effective uid at connect, so it is compared with the
         * effective uid. */
        /* ESRCH is "gone"; EPERM only says we may not signal it (the daemon
         * runs unprivileged, callers are other users) — it is still there. */
        if (syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) < 0 && errno != EPERM) {
                /* ENOSYS where a seccomp filter or valgrind hides the call:
                 * a pidfd polls readable once its process has exited. */
                struct pollfd p = { .fd = pidfd, .events = POLLIN };
                if (errno != ENOSYS || poll(&p, 1, 0) != 0)
                        return;
        }
        if (proc_starttime(id->pid, &start_after) < 0 || start_after != start_before)
                return;
        if (proc_euid(id->pid, &uid_after) < 0 || uid_after != uid_before || uid_after != id->uid)
                return;

        id->unit = TAKE_PTR(unit);
        id->exe = TAKE_PTR(exe);
}

/* The groups are kept in an array of their own size: most callers have a
 * handful, and a connection holds its identity for its whole life. */
static void keep_groups(struct kb_identity *id, const gid_t *groups, size_t n) {
        n = MIN(n, (size_t) KB_IDENTITY_MAX_GROUPS);
        if (n == 0)
                return;
        id->groups = malloc(n * sizeof(gid_t));
        if (!id->groups)
                return;
        memcpy(id->groups, groups, n * sizeof(gid_t));
        id->n_groups = n;
}

static void read_groups(int fd, struct kb_identity *id) {
        gid_t small[KB_IDENTITY_MAX_GROUPS];
        socklen_t len = sizeof(small);
        _cleanup_free_ gid_t *big = NULL;

        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, small, &len) == 0) {
                keep_groups(id, small, (size_t) len / sizeof(gid_t));
                return;
        }
        if (errno != ERANGE)
                return; /* old kernel or no groups known: primary gid only */

        /* More groups than we hold: the kernel reported the size it needs.
         * Fetch them all and keep the first KB_IDENTITY_MAX_GROUPS (in the
         * kernel's sorted order); a team granted only through a group beyond
         * that is not matched. */
        if (len == 0 || len / sizeof(gid_t) > KB_IDENTITY_GROUPS_CEILING)
                return;
        big = malloc(len);
        if (!big)
                return;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, big, &len) < 0)
                return;
        keep_groups(id, big, (size_t) len / sizeof(gid_t));
}

int kb_identity_from_socket(int fd, struct kb_identity **ret) {
        struct ucred cred;
        socklen_t len = sizeof(cred);
        struct kb_identity *id;

        if (fd < 0 || !ret)
                return -EINVAL;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
                return -errno;
        if (len != sizeof(cred))
                return -EIO;

        id = calloc(1, sizeof(*id));
        if (!id)
                return -ENOMEM;
        id->uid = cred.uid;
        id->gid = cred.gid;
        id->pid = cred.pid;

        read_groups(fd, id);
        identify_process(fd, id);

        *ret = id;
        return 0;
}

void kb_identity_free(struct kb_identity *id) {
        if (!id)
                return;
        free(id->unit);
        free(id->exe);
        free(id->groups);
        free(id);
}

bool kb_identity_in_team(const struct kb_identity *id, const struct kb_team *t) {
        if (!id || !t)
                return false;
        for (size_t i = 0; i < t->n_uids; i++)
                if (t->uids[i] == id->uid)
                        return true;
        for (size_t i = 0; i < t->n_gids; i++) {
                if (t->gids[i] == id->gid)
                        return true;
                for (size_t k = 0; k < id->n_groups; k++)
                        if (t->gids[i] == id->groups[k])
                                return true;
        }
        if (id->unit)
                for (size_t i = 0; i < t->n_units; i++)
                        if (t->units[i] && streq(t->units[i], id->unit))
                                return true;
        return false;
}

int kb_identity_pick_team(const struct kb_config *c, const struct kb_identity *id, const char *requested,
                          const struct kb_team **ret) {
        const struct kb_team *first = NULL;

        if (!c || !id || !ret)
                return -EINVAL;

        for (size_t i = 0; i < c->n_teams; i++) {
                const struct kb_team *t = &c->teams[i];

                if (!kb_identity_in_team(id, t))
                        continue;
                if (!first)
                        first = t;
                if (!requested) {
                        *ret = t;
                        return 0;
                }
                if (t->name && streq(t->name, requested)) {
                        *ret = t;
                        return 0;
                }
        }
        /* A caller in no team at all is unknown whatever it asks for; a
         * request for a team it isn't in (or that doesn't exist) is refused
         * the same way, so team names aren't probed. */
        return first ? -EPERM : -ENOENT;
}
