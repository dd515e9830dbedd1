/* SPDX-License-Identifier: MIT */
/* The unit tests' shared set-up (helper.h says what each helper is for). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "helper.h"

void kbt_mkdtemp(char *buf, size_t size, const char *name) {
        int n = snprintf(buf, size, "/tmp/kb-test-%s-XXXXXX", name);

        assert_true(n > 0 && (size_t) n < size);
        assert_non_null(mkdtemp(buf));
}

/* nftw() passes no userdata: the first error of the walk in progress. */
static int rm_rf_error;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        /* a test may have taken the write bit away to make a write fail */
        (void) chmod(path, 0700);
        if (remove(path) < 0 && rm_rf_error == 0)
                rm_rf_error = -errno;
        return 0;
}

int kbt_rm_rf(const char *path) {
        rm_rf_error = 0;
        if (nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) < 0)
                return -errno;
        return rm_rf_error;
}

int kbt_rmdir_files(const char *dir, const char *const *names) {
        for (const char *const *n = names; n && *n; n++) {
                _cleanup_free_ char *p = NULL;

                if (asprintf(&p, "%s/%s", dir, *n) < 0)
                        return -ENOMEM;
                (void) unlink(p);
        }
        return rmdir(dir) < 0 ? -errno : 0;
}

void kbt_write_file(const char *path, const void *data, size_t len) {
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        if (fd < 0)
                fail_msg("cannot create %s: %s", path, strerror(errno));
        assert_int_equal(kb_write_all(fd, data, len), 0);
}

char *kbt_read_file(const char *path, size_t *ret_len) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        char *s;

        if (fd < 0)
                fail_msg("cannot open %s: %s", path, strerror(errno));
        assert_int_equal(fstat(fd, &st), 0);
        s = malloc((size_t) st.st_size + 1);
        assert_non_null(s);
        assert_int_equal(read(fd, s, (size_t) st.st_size), st.st_size);
        s[st.st_size] = 0;
        if (ret_len)
                *ret_len = (size_t) st.st_size;
        return s;
}

/* A socket of type, and path's address for bind() or connect(). */
static int unix_socket(const char *path, int type, struct sockaddr_un *ret_sa) {
        int fd;

        *ret_sa = (struct sockaddr_un) { .sun_family = AF_UNIX };
        if (strlen(path) >= sizeof(ret_sa->sun_path))
                return -ENAMETOOLONG;
        strcpy(ret_sa->sun_path, path);
        fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
        return fd < 0 ? -errno : fd;
}

int kbt_unix_bind(const char *path, int type, int backlog) {
        struct sockaddr_un sa;
        _cleanup_close_ int fd = unix_socket(path, type, &sa);

        if (fd < 0)
                return fd;
        if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 || (backlog >= 0 && listen(fd, backlog) < 0))
                return -errno;
        return TAKE_FD(fd);
}

int kbt_unix_connect(const char *path, int type) {
        struct sockaddr_un sa;
        _cleanup_close_ int fd = unix_socket(path, type, &sa);

        if (fd < 0)
                return fd;
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return -errno;
        return TAKE_FD(fd);
}

int kbt_tcp_loopback(int backlog, uint16_t *ret_port) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t sl = sizeof(sa);
        _cleanup_close_ int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd < 0)
                return -errno;
        if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 || (backlog >= 0 && listen(fd, backlog) < 0) ||
            getsockname(fd, (struct sockaddr *) &sa, &sl) < 0)
                return -errno;
        *ret_port = ntohs(sa.sin_port);
        return TAKE_FD(fd);
}

void kbt_run_for(sd_event *e, uint64_t usec, uint64_t step_usec) {
        uint64_t end = kb_now_usec() + usec;

        while (kb_now_usec() < end)
                assert_true(sd_event_run(e, step_usec) >= 0);
}

struct kb_config *kbt_config(const char *name, const char *text) {
        _cleanup_free_ char *err = NULL;
        struct kb_config *c = NULL;
        int r;

        r = kb_config_load_string(name, text, false, &c, &err);
        if (r != 0)
                fail_msg("%s: %s (%d)", name, strempty(err), r);
        return c;
}

struct kb_team kbt_team(const char *name) {
        return (struct kb_team) { .name = (char *) name, .unpriced = -1 };
}

struct kb_quota *kbt_quota(struct kb_team *teams, size_t n) {
        struct kb_config c = { .teams = teams, .n_teams = n };
        struct kb_quota *q = NULL;

        assert_int_equal(kb_quota_new(&q), 0);
        assert_int_equal(kb_quota_configure(q, &c), 0);
        return q;
}

struct kb_quota_window kbt_window(struct kb_quota *q, const char *team, uint64_t now, kb_quota_limit l) {
        struct kb_quota_view v;

        assert_int_equal(kb_quota_view(q, team, now, &v), 0);
        return v.windows[l];
}

struct kb_record *kbt_record(const char *fmt, ...) {
        _cleanup_free_ char *msg = NULL;
        struct kb_record *r;
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vasprintf(&msg, fmt, ap);
        va_end(ap);
        assert_true(n >= 0);
        r = kb_record_new();
        assert_non_null(r);
        assert_int_equal(kb_record_add(r, "MESSAGE", msg), 0);
        return r;
}
