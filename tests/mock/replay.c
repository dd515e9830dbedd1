/* SPDX-License-Identifier: MIT */
/* x-mock-replay: NAME answers with a captured provider response, NAME.json
 * in --replay-dir (a capture kept outside the repository: KB_TRANSCRIPTS,
 * tests/integration/89-transcripts.t; "status", "headers" and "body", the
 * body sent byte for byte). The name is a plain file name:
 * nothing outside the directory can be read. */

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <inttypes.h>
#include <string.h>
#include <strings.h>

#include "mock.h"
#include "util.h"

static bool plain_name(const char *s) {
        if (!s || !*s || strlen(s) > 200)
                return false;
        for (const char *p = s; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                      *p == '-' || *p == '_' || *p == '.'))
                        return false;
        return s[0] != '.';
}

int mock_replay(int fd, const struct mock_request *req, const char *name) {
        _cleanup_free_ char *path = NULL;
        _cleanup_(json_decrefp) json_t *t = NULL;
        struct kb_buf out = {};
        int r;

        if (!mock_cfg->replay_dir || !plain_name(name))
                return mock_send_error(fd, false, 400, "x-mock-replay needs --replay-dir and a plain file name",
                                       true);
        if (asprintf(&path, "%s/%s.json", mock_cfg->replay_dir, name) < 0)
                return -ENOMEM;
        t = json_load_file(path, 0, NULL);
        const char *body = json_string_value(json_object_get(t, "body"));
        json_int_t status = json_integer_value(json_object_get(t, "status"));
        if (!body || status < 100 || status > 599)
                return mock_send_error(fd, false, 404, "no such transcript", true);
        const char *ctype = NULL, *key;
        json_t *v;
        json_object_foreach(json_object_get(t, "headers"), key, v)
                if (strcasecmp(key, "content-type") == 0)
                        ctype = json_string_value(v);
        if (!ctype)
                ctype = strstr(body, "data: ") == body || strstr(body, "event: ") == body ? "text/event-stream" :
                                                                                          "application/json";
        size_t len = json_string_length(json_object_get(t, "body"));
        r = kb_buf_appendf(&out,
                           "HTTP/1.1 %d Replayed\r\ncontent-type: %s\r\nx-mock-n: %" PRIu64 "\r\n"
                           "x-request-id: req_replay%" PRIu64 "\r\ncontent-length: %zu\r\nconnection: close\r\n\r\n",
                           (int) status, ctype, req->n, req->n, len);
        if (r >= 0)
                r = kb_buf_append(&out, body, len);
        if (r >= 0)
                r = mock_send_all(fd, out.data, out.len);
        kb_buf_free(&out);
        return r < 0 ? r : MOCK_CLOSE;
}
