/* SPDX-License-Identifier: MIT */
/* The broker's capacity figures; see capacity.h. */

#include <dirent.h>
#include <sys/resource.h>

#include "broker.h"
#include "capacity.h"

static uint64_t count_open_fds(void) {
        DIR *d = opendir("/proc/self/fd");
        uint64_t n = 0;

        if (!d)
                return 0;
        for (struct dirent *de; (de = readdir(d));)
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        return n > 0 ? n - 1 : 0; /* not the directory's own fd */
}

void kb_capacity_get(const struct kb_broker *b, struct kb_capacity *ret) {
        struct kb_http_server_stats hs;
        struct rlimit rl = {};

        kb_http_server_get_stats(b->api, &hs);
        *ret = (struct kb_capacity) {
                .connections = hs.connections,
                .refusing = hs.refusing,
                .refused_cap = hs.refused[KB_HTTP_REFUSED_CAP],
                .refused_per_uid = b->n_refused_per_uid,
                .refused_fds = hs.refused[KB_HTTP_REFUSED_FDS] + b->n_refused_fds,
                .refused_identity = b->n_refused_identity,
                .fds_open = count_open_fds(),
        };
        kb_upstream_get_stats(b->upstream, &ret->upstream);
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
                ret->fds_limit = rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t) rl.rlim_cur;
}
