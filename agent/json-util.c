/* SPDX-License-Identifier: MIT */
#include "json-util.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "util.h"

int kb_json_write_file(const char *path, const json_t *doc, mode_t mode, unsigned flags) {
        _cleanup_free_ char *text = NULL;

        if (!path || !doc)
                return -EINVAL;
        /* The final newline goes into the same buffer, so that the file is
         * written in one piece (kb_write_file_atomic takes one buffer). */
        text = json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS);
        size_t len = text ? strlen(text) : 0;
        char *t = text ? realloc(text, len + 2) : NULL;
        if (!t)
                return -ENOMEM;
        text = t;
        text[len++] = '\n';
        text[len] = 0;
        return kb_write_file_atomic(path, text, len, mode, flags);
}

int kb_json_read_file(const char *path, size_t max, json_t **ret) {
        struct stat st;

        if (!path || !ret)
                return -EINVAL;
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
                if (errno != ENOENT)
                        return -errno;
                *ret = NULL;
                return 0;
        }
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode) || (uint64_t) st.st_size > (uint64_t) max)
                return -EBADMSG;
        json_t *doc = json_loadfd(fd, JSON_REJECT_DUPLICATES, NULL);
        if (!doc)
                return -EBADMSG;
        *ret = doc;
        return 0;
}

bool kb_json_only_members(const json_t *o, const char *const *known, size_t n) {
        const char *k;
        json_t *v;

        json_object_foreach((json_t *) o, k, v) {
                bool ok = false;
                for (size_t i = 0; i < n; i++)
                        ok |= streq(k, known[i]);
                if (!ok)
                        return false;
        }
        return true;
}
