/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-login.h>
#include <unistd.h>

#include "config.h"
#include "helper.h"
#include "identity.h"
#include "util.h"

#define NOBODY 65534

static void identity_freep(struct kb_identity **id) {
        kb_identity_free(*id);
}
#define _cleanup_identity_ _cleanup_(identity_freep)

/* A listening socket in a fresh /tmp directory any uid may reach. */
struct listener {
        char dir[64];
        char path[128];
        int fd;
};

static void listener_open(struct listener *l) {
        kbt_mkdtemp(l->dir, sizeof(l->dir), "identity");
        assert_int_equal(chmod(l->dir, 0755), 0);
        snprintf(l->path, sizeof(l->path), "%s/s", l->dir);
        l->fd = kbt_unix_bind(l->path, SOCK_STREAM, 8);
        assert_true(l->fd >= 0);
        assert_int_equal(chmod(l->path, 0777), 0);
}

static void listener_close(struct listener *l) {
        close(l->fd);
        (void) kbt_rm_rf(l->dir);
}

static char *own_unit(void) {
        char *u = NULL;

        if (sd_pid_get_unit(getpid(), &u) < 0)
                return NULL;
        return u;
}

static void test_socketpair_self(void **state) {
        _cleanup_identity_ struct kb_identity *id = NULL;
        _cleanup_free_ char *unit = NULL;
        gid_t groups[KB_IDENTITY_MAX_GROUPS];
        char exe[PATH_MAX];
        int sv[2], n;
        ssize_t k;

        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        assert_int_equal(kb_identity_from_socket(sv[0], &id), 0);
        assert_non_null(id);
        assert_int_equal(id->uid, getuid());
        assert_int_equal(id->gid, getgid());
        assert_int_equal(id->pid, getpid());

        n = getgroups(ELEMENTSOF(groups), groups);
        assert_true(n >= 0);
        assert_int_equal(id->n_groups, (size_t) n);
        /* The kernel reports them sorted; compare as sets. */
        for (int i = 0; i < n; i++) {
                bool found = false;
                for (size_t m = 0; m < id->n_groups; m++)
                        if (id->groups[m] == groups[i])
                                found = true;
                assert_true(found);
        }

        unit = own_unit();
        if (unit) {
                assert_non_null(id->unit);
                assert_string_equal(id->unit, unit);
        } else
                assert_null(id->unit);

        k = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        assert_true(k > 0);
        exe[k] = 0;
        assert_non_null(id->exe);
        assert_string_equal(id->exe, exe);

        close(sv[0]);
        close(sv[1]);
}

static void test_supplementary_groups(void **state) {
        _cleanup_identity_ struct kb_identity *id = NULL;
        struct listener l;
        int p[2], cfd;
        pid_t pid;
        char c;

        if (geteuid() != 0) {
                skip();
                return;
        }
        listener_open(&l);
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                close(p[1]);
                gid_t g[] = { 4242, 4343 };
                if (setgroups(ELEMENTSOF(g), g) < 0)
                        _exit(2);
                if (kbt_unix_connect(l.path, SOCK_STREAM) < 0)
                        _exit(3);
                (void) !read(p[0], &c, 1); /* stay alive until the parent has looked */
                _exit(0);
        }
        cfd = accept4(l.fd, NULL, NULL, SOCK_CLOEXEC);
        assert_true(cfd >= 0);
        assert_int_equal(kb_identity_from_socket(cfd, &id), 0);
        assert_int_equal(id->pid, pid);
        assert_int_equal(id->n_groups, 2);
        assert_int_equal(id->groups[0], 4242);
        assert_int_equal(id->groups[1], 4343);
        assert_non_null(id->exe); /* alive: exe known */
        close(p[1]);
        close(p[0]);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        close(cfd);
        listener_close(&l);
}

static void test_peer_gone(void **state) {
        _cleanup_identity_ struct kb_identity *id = NULL;
        struct listener l;
        int cfd, status;
        pid_t pid;

        listener_open(&l);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
                _exit(kbt_unix_connect(l.path, SOCK_STREAM) < 0 ? 3 : 0);
        /* Reaped before we look: the pid may even be reused by now. */
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

        cfd = accept4(l.fd, NULL, NULL, SOCK_CLOEXEC);
        assert_true(cfd >= 0);
        assert_int_equal(kb_identity_from_socket(cfd, &id), 0);
        assert_int_equal(id->uid, getuid());
        assert_int_equal(id->gid, getgid());
        assert_null(id->unit);
        assert_null(id->exe);
        close(cfd);
        listener_close(&l);
}

static void test_other_uid(void **state) {
        _cleanup_identity_ struct kb_identity *id = NULL;
        _cleanup_free_ char *unit = NULL;
        struct listener l;
        int p[2], cfd, status;
        pid_t pid;
        char c;

        if (geteuid() != 0) {
                skip();
                return;
        }
        listener_open(&l);
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                close(p[1]);
                if (setgroups(0, NULL) < 0 || setresgid(NOBODY, NOBODY, NOBODY) < 0 ||
                    setresuid(NOBODY, NOBODY, NOBODY) < 0)
                        _exit(2);
                if (kbt_unix_connect(l.path, SOCK_STREAM) < 0)
                        _exit(3);
                (void) !read(p[0], &c, 1);
                _exit(0);
        }
        cfd = accept4(l.fd, NULL, NULL, SOCK_CLOEXEC);
        assert_true(cfd >= 0);
        assert_int_equal(kb_identity_from_socket(cfd, &id), 0);
        assert_int_equal(id->uid, NOBODY);
        assert_int_equal(id->gid, NOBODY);
        assert_int_equal(id->pid, pid);
        assert_int_equal(id->n_groups, 0);
        /* Same cgroup as ours: the unit, when we have one, is inherited. */
        unit = own_unit();
        if (unit) {
                assert_non_null(id->unit);
                assert_string_equal(id->unit, unit);
        } else
                assert_null(id->unit);
        assert_non_null(id->exe);
        close(p[1]);
        close(p[0]);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        close(cfd);
        listener_close(&l);
}

static void test_bad_fds(void **state) {
        struct kb_identity *id = (struct kb_identity *) 0x1;
        int fd;

        assert_int_equal(kb_identity_from_socket(-1, &id), -EINVAL);
        assert_int_equal(kb_identity_from_socket(0, NULL), -EINVAL);

        /* Not a socket. */
        fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(kb_identity_from_socket(fd, &id), -ENOTSOCK);
        close(fd);

        /* A closed fd. */
        assert_int_equal(kb_identity_from_socket(fd, &id), -EBADF);

        /* A socket that isn't connected: no peer. */
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        int r = kb_identity_from_socket(fd, &id);
        if (r == 0) {
                /* Linux reports pid 0 / uid -1 for an unconnected stream
                 * socket rather than failing; nothing may be attributed. */
                assert_int_equal(id->pid, 0);
                assert_null(id->unit);
                assert_null(id->exe);
                kb_identity_free(id);
                id = (struct kb_identity *) 0x1;
        } else
                assert_true(r < 0);
        close(fd);

        /* ret untouched on failure. */
        assert_ptr_equal(id, (struct kb_identity *) 0x1);

        kb_identity_free(NULL);
}

static void test_parse_stat(void **state) {
        uint64_t v = 7;
        const char *good = "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 200 "
                           "18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";

        assert_int_equal(kb_identity_parse_stat_starttime(good, &v), 0);
        assert_int_equal(v, 987654);
        assert_int_equal(kb_identity_parse_stat_starttime("1 (x) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42", &v), 0);
        assert_int_equal(v, 42);

        v = 7;
        assert_int_equal(kb_identity_parse_stat_starttime(NULL, &v), -EINVAL);
        assert_int_equal(kb_identity_parse_stat_starttime(good, NULL), -EINVAL);
        assert_int_equal(kb_identity_parse_stat_starttime("", &v), -EINVAL);
        assert_int_equal(kb_identity_parse_stat_starttime("1 (x S 0 1", &v), -EINVAL);
        /* Too few fields. */
        assert_int_equal(kb_identity_parse_stat_starttime("1 (x) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0", &v), -EINVAL);
        assert_int_equal(kb_identity_parse_stat_starttime("1 (x) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 ", &v), -EINVAL);
        /* Not a number, negative, overflow, double space. */
        assert_int_equal(kb_identity_parse_stat_starttime("1 (x) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 x1", &v), -EINVAL);
        assert_int_equal(kb_identity_parse_stat_starttime("1 (x) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 -1", &v), -EINVAL);
        assert_int_equal(kb_identity_parse_stat_starttime("1 (x) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 4x", &v), -EINVAL);
        assert_int_equal(kb_identity_parse_stat_starttime(
                                 "1 (x) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99999999999999999999999", &v),
                         -EINVAL);
        assert_int_equal(kb_identity_parse_stat_starttime("1 (x) S 0 1  1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42", &v),
                         -EINVAL);
        assert_int_equal(kb_identity_parse_stat_starttime("1 (x)S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42", &v),
                         -EINVAL);
        assert_int_equal(v, 7);

        /* Our own, for real: must parse. */
        char buf[4096];
        FILE *f = fopen("/proc/self/stat", "re");
        assert_non_null(f);
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        assert_int_equal(kb_identity_parse_stat_starttime(buf, &v), 0);
        assert_true(v > 0);
}

static void test_parse_status(void **state) {
        uid_t r = 1, e = 1;

        assert_int_equal(kb_identity_parse_status_uids("Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t5\n", &r, &e), 0);
        assert_int_equal(r, 1000);
        assert_int_equal(e, 0);
        assert_int_equal(kb_identity_parse_status_uids("Uid: 7 8 9 10", &r, &e), 0);
        assert_int_equal(r, 7);
        assert_int_equal(e, 8);

        r = e = 1;
        assert_int_equal(kb_identity_parse_status_uids("Name:\tx\nGid:\t5\n", &r, &e), -ENOENT);
        /* "Uid:" inside another line's value doesn't count. */
        assert_int_equal(kb_identity_parse_status_uids("Name:\tUid: 3 3\n", &r, &e), -ENOENT);
        assert_int_equal(kb_identity_parse_status_uids("Uid:\t1000\n", &r, &e), -EINVAL);
        assert_int_equal(kb_identity_parse_status_uids("Uid:\t-1\t0\n", &r, &e), -EINVAL);
        assert_int_equal(kb_identity_parse_status_uids("Uid:\t1x\t0\n", &r, &e), -EINVAL);
        assert_int_equal(kb_identity_parse_status_uids("Uid:\t4294967295\t0\n", &r, &e), -EINVAL);
        assert_int_equal(kb_identity_parse_status_uids("Uid:\t99999999999999999999\t0\n", &r, &e), -EINVAL);
        assert_int_equal(kb_identity_parse_status_uids(NULL, &r, &e), -EINVAL);
        assert_int_equal(kb_identity_parse_status_uids("Uid: 1 1", NULL, &e), -EINVAL);
        assert_int_equal(kb_identity_parse_status_uids("Uid: 1 1", &r, NULL), -EINVAL);
        assert_int_equal(r, 1);
        assert_int_equal(e, 1);
}

/* Team mapping, with teams built by hand. */

static uid_t t_uids_a[] = { 1001 };
static gid_t t_gids_b[] = { 2002 };
static gid_t t_gids_c[] = { 3003 };
static char *t_units_d[] = { (char *) "search-api.service" };
static uid_t t_uids_e[] = { 1001, 5 };

static struct kb_team teams[] = {
        { .name = (char *) "a", .uids = t_uids_a, .n_uids = 1 },
        { .name = (char *) "b", .gids = t_gids_b, .n_gids = 1 },
        { .name = (char *) "c", .gids = t_gids_c, .n_gids = 1 },
        { .name = (char *) "d", .units = t_units_d, .n_units = 1 },
        { .name = (char *) "e", .uids = t_uids_e, .n_uids = 2 },
};

static struct kb_config config = {
        .n_ref = 1,
        .teams = teams,
        .n_teams = ELEMENTSOF(teams),
};

static struct kb_identity *mkid(uid_t uid, gid_t gid, gid_t sup, const char *unit) {
        struct kb_identity *id = calloc(1, sizeof(*id));
        assert_non_null(id);
        id->uid = uid;
        id->gid = gid;
        id->pid = 1;
        if (sup) {
                id->groups = calloc(2, sizeof(gid_t));
                assert_non_null(id->groups);
                id->groups[0] = 1;
                id->groups[1] = sup;
                id->n_groups = 2;
        }
        if (unit)
                id->unit = strdup(unit);
        return id;
}

static const char *pick(const struct kb_identity *id, const char *requested, int *ret_r) {
        const struct kb_team *t = (const struct kb_team *) 0x1;
        *ret_r = kb_identity_pick_team(&config, id, requested, &t);
        if (*ret_r < 0) {
                assert_ptr_equal(t, (const struct kb_team *) 0x1); /* untouched */
                return NULL;
        }
        assert_non_null(t);
        return t->name;
}

static void test_team_mapping(void **state) {
        _cleanup_identity_ struct kb_identity *by_uid = mkid(1001, 100, 0, NULL);
        _cleanup_identity_ struct kb_identity *by_gid = mkid(7, 2002, 0, NULL);
        _cleanup_identity_ struct kb_identity *by_sup = mkid(7, 100, 3003, NULL);
        _cleanup_identity_ struct kb_identity *by_unit = mkid(7, 100, 0, "search-api.service");
        _cleanup_identity_ struct kb_identity *nobody = mkid(7, 100, 0, "other.service");
        _cleanup_identity_ struct kb_identity *unit_prefix = mkid(7, 100, 0, "search-api.service.x");
        _cleanup_identity_ struct kb_identity *many = mkid(1001, 2002, 3003, "search-api.service");
        const struct kb_team *t = NULL;
        int r;

        assert_true(kb_identity_in_team(by_uid, &teams[0]));
        assert_false(kb_identity_in_team(by_uid, &teams[1]));
        assert_true(kb_identity_in_team(by_gid, &teams[1]));
        assert_true(kb_identity_in_team(by_sup, &teams[2]));
        assert_false(kb_identity_in_team(by_sup, &teams[1]));
        assert_true(kb_identity_in_team(by_unit, &teams[3]));
        assert_false(kb_identity_in_team(nobody, &teams[3]));
        assert_false(kb_identity_in_team(unit_prefix, &teams[3]));
        assert_false(kb_identity_in_team(NULL, &teams[0]));
        assert_false(kb_identity_in_team(by_uid, NULL));
        /* A uid isn't a gid: gid 1001 doesn't match users=1001. */
        {
                _cleanup_identity_ struct kb_identity *g = mkid(9, 1001, 1001, NULL);
                assert_false(kb_identity_in_team(g, &teams[0]));
        }
        /* No unit known: never matches a units= team. */
        {
                _cleanup_identity_ struct kb_identity *nu = mkid(7, 100, 0, NULL);
                assert_false(kb_identity_in_team(nu, &teams[3]));
        }

        assert_string_equal(pick(by_uid, NULL, &r), "a");
        assert_string_equal(pick(by_gid, NULL, &r), "b");
        assert_string_equal(pick(by_sup, NULL, &r), "c");
        assert_string_equal(pick(by_unit, NULL, &r), "d");
        assert_null(pick(nobody, NULL, &r));
        assert_int_equal(r, -ENOENT);
        assert_null(pick(nobody, "a", &r));
        assert_int_equal(r, -ENOENT);

        /* First match in config order. */
        assert_string_equal(pick(many, NULL, &r), "a");
        /* Asking for a team the caller is in. */
        assert_string_equal(pick(many, "c", &r), "c");
        assert_string_equal(pick(many, "d", &r), "d");
        assert_string_equal(pick(by_uid, "e", &r), "e");
        assert_string_equal(pick(by_uid, "a", &r), "a");
        /* Asking for one they're not in, or that doesn't exist. */
        assert_null(pick(by_uid, "b", &r));
        assert_int_equal(r, -EPERM);
        assert_null(pick(by_uid, "nope", &r));
        assert_int_equal(r, -EPERM);
        assert_null(pick(by_uid, "", &r));
        assert_int_equal(r, -EPERM);
        assert_null(pick(by_uid, "A", &r));
        assert_int_equal(r, -EPERM);

        assert_int_equal(kb_identity_pick_team(NULL, by_uid, NULL, &t), -EINVAL);
        assert_int_equal(kb_identity_pick_team(&config, NULL, NULL, &t), -EINVAL);
        assert_int_equal(kb_identity_pick_team(&config, by_uid, NULL, NULL), -EINVAL);
        assert_null(t);

        /* An empty config has no teams. */
        struct kb_config empty = { .n_ref = 1 };
        assert_int_equal(kb_identity_pick_team(&empty, by_uid, NULL, &t), -ENOENT);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_socketpair_self),
                cmocka_unit_test(test_supplementary_groups),
                cmocka_unit_test(test_peer_gone),
                cmocka_unit_test(test_other_uid),
                cmocka_unit_test(test_bad_fds),
                cmocka_unit_test(test_parse_stat),
                cmocka_unit_test(test_parse_status),
                cmocka_unit_test(test_team_mapping),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
