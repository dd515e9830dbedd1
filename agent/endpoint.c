/* SPDX-License-Identifier: MIT */
/* The endpoint table: every path an app may call, and what it is. A path
 * not here is answered 404 in the family's shape; WebSocket Realtime is not
 * here on purpose (keybrokerd(8), ENDPOINTS, says why). */

#include <errno.h>
#include <string.h>

#include "endpoint.h"
#include "util.h"

#define OPENAI KB_FAMILY_OPENAI
#define ANTHROPIC KB_FAMILY_ANTHROPIC
#define CALL(m, p, e, f, at) { m, p, e, f, false, at, KB_OBJECT_NONE, KB_OP_CALL, KB_LOCAL_NONE }
#define OBJ(m, p, e, f, anth, at, kind, op) { m, p, e, f, anth, at, kind, op, KB_LOCAL_NONE }

static const struct kb_endpoint_def table[] = {
        CALL("POST", "/v1/chat/completions", KB_ENDPOINT_CHAT, OPENAI, KB_MODEL_BODY),
        OBJ("POST", "/v1/responses", KB_ENDPOINT_RESPONSES, OPENAI, false, KB_MODEL_BODY, KB_OBJECT_RESPONSE,
            KB_OP_CREATE),
        OBJ("GET", "/v1/responses/{id}", KB_ENDPOINT_RESPONSES_GET, OPENAI, false, KB_MODEL_NONE,
            KB_OBJECT_RESPONSE, KB_OP_GET),
        OBJ("DELETE", "/v1/responses/{id}", KB_ENDPOINT_RESPONSES_GET, OPENAI, false, KB_MODEL_NONE,
            KB_OBJECT_RESPONSE, KB_OP_DELETE),
        OBJ("GET", "/v1/responses/{id}/input_items", KB_ENDPOINT_RESPONSES_GET, OPENAI, false, KB_MODEL_NONE,
            KB_OBJECT_RESPONSE, KB_OP_GET),
        OBJ("POST", "/v1/responses/{id}/cancel", KB_ENDPOINT_RESPONSES_GET, OPENAI, false, KB_MODEL_NONE,
            KB_OBJECT_RESPONSE, KB_OP_GET),
        CALL("POST", "/v1/embeddings", KB_ENDPOINT_EMBEDDINGS, OPENAI, KB_MODEL_BODY),
        CALL("POST", "/v1/completions", KB_ENDPOINT_COMPLETIONS, OPENAI, KB_MODEL_BODY),
        CALL("POST", "/v1/moderations", KB_ENDPOINT_MODERATIONS, OPENAI, KB_MODEL_OPTIONAL),
        CALL("POST", "/v1/images/generations", KB_ENDPOINT_IMAGES, OPENAI, KB_MODEL_BODY),
        CALL("POST", "/v1/images/edits", KB_ENDPOINT_IMAGES, OPENAI, KB_MODEL_BODY),
        CALL("POST", "/v1/images/variations", KB_ENDPOINT_IMAGES, OPENAI, KB_MODEL_BODY),
        CALL("POST", "/v1/audio/speech", KB_ENDPOINT_AUDIO_SPEECH, OPENAI, KB_MODEL_BODY),
        CALL("POST", "/v1/audio/transcriptions", KB_ENDPOINT_AUDIO_TRANSCRIPTIONS, OPENAI, KB_MODEL_BODY),
        CALL("POST", "/v1/audio/translations", KB_ENDPOINT_AUDIO_TRANSLATIONS, OPENAI, KB_MODEL_BODY),

        /* Anthropic's files share OpenAI's paths: anthropic-version decides. */
        OBJ("POST", "/v1/files", KB_ENDPOINT_FILES, ANTHROPIC, true, KB_MODEL_NONE, KB_OBJECT_FILE, KB_OP_CREATE),
        OBJ("GET", "/v1/files", KB_ENDPOINT_FILES, ANTHROPIC, true, KB_MODEL_NONE, KB_OBJECT_FILE, KB_OP_LIST),
        OBJ("GET", "/v1/files/{id}", KB_ENDPOINT_FILES, ANTHROPIC, true, KB_MODEL_NONE, KB_OBJECT_FILE, KB_OP_GET),
        OBJ("DELETE", "/v1/files/{id}", KB_ENDPOINT_FILES, ANTHROPIC, true, KB_MODEL_NONE, KB_OBJECT_FILE,
            KB_OP_DELETE),
        OBJ("GET", "/v1/files/{id}/content", KB_ENDPOINT_FILES, ANTHROPIC, true, KB_MODEL_NONE, KB_OBJECT_FILE,
            KB_OP_DOWNLOAD),
        OBJ("POST", "/v1/files", KB_ENDPOINT_FILES, OPENAI, false, KB_MODEL_NONE, KB_OBJECT_FILE, KB_OP_CREATE),
        OBJ("GET", "/v1/files", KB_ENDPOINT_FILES, OPENAI, false, KB_MODEL_NONE, KB_OBJECT_FILE, KB_OP_LIST),
        OBJ("GET", "/v1/files/{id}", KB_ENDPOINT_FILES, OPENAI, false, KB_MODEL_NONE, KB_OBJECT_FILE, KB_OP_GET),
        OBJ("DELETE", "/v1/files/{id}", KB_ENDPOINT_FILES, OPENAI, false, KB_MODEL_NONE, KB_OBJECT_FILE,
            KB_OP_DELETE),
        OBJ("GET", "/v1/files/{id}/content", KB_ENDPOINT_FILES, OPENAI, false, KB_MODEL_NONE, KB_OBJECT_FILE,
            KB_OP_DOWNLOAD),

        OBJ("POST", "/v1/batches", KB_ENDPOINT_BATCHES, OPENAI, false, KB_MODEL_NONE, KB_OBJECT_BATCH, KB_OP_CREATE),
        OBJ("GET", "/v1/batches", KB_ENDPOINT_BATCHES, OPENAI, false, KB_MODEL_NONE, KB_OBJECT_BATCH, KB_OP_LIST),
        OBJ("GET", "/v1/batches/{id}", KB_ENDPOINT_BATCHES, OPENAI, false, KB_MODEL_NONE, KB_OBJECT_BATCH,
            KB_OP_GET),
        OBJ("POST", "/v1/batches/{id}/cancel", KB_ENDPOINT_BATCHES, OPENAI, false, KB_MODEL_NONE, KB_OBJECT_BATCH,
            KB_OP_GET),

        OBJ("POST", "/v1/videos", KB_ENDPOINT_VIDEOS, OPENAI, false, KB_MODEL_OPTIONAL, KB_OBJECT_VIDEO,
            KB_OP_CREATE),
        OBJ("GET", "/v1/videos", KB_ENDPOINT_VIDEOS, OPENAI, false, KB_MODEL_NONE, KB_OBJECT_VIDEO, KB_OP_LIST),
        OBJ("GET", "/v1/videos/{id}", KB_ENDPOINT_VIDEOS, OPENAI, false, KB_MODEL_NONE, KB_OBJECT_VIDEO, KB_OP_GET),
        OBJ("DELETE", "/v1/videos/{id}", KB_ENDPOINT_VIDEOS, OPENAI, false, KB_MODEL_NONE, KB_OBJECT_VIDEO,
            KB_OP_DELETE),
        OBJ("GET", "/v1/videos/{id}/content", KB_ENDPOINT_VIDEOS, OPENAI, false, KB_MODEL_NONE, KB_OBJECT_VIDEO,
            KB_OP_DOWNLOAD),

        CALL("POST", "/v1/messages", KB_ENDPOINT_MESSAGES, ANTHROPIC, KB_MODEL_BODY),
        CALL("POST", "/v1/messages/count_tokens", KB_ENDPOINT_COUNT_TOKENS, ANTHROPIC, KB_MODEL_BODY),
        OBJ("POST", "/v1/messages/batches", KB_ENDPOINT_MESSAGE_BATCHES, ANTHROPIC, false, KB_MODEL_NONE,
            KB_OBJECT_MESSAGE_BATCH, KB_OP_CREATE),
        OBJ("GET", "/v1/messages/batches", KB_ENDPOINT_MESSAGE_BATCHES, ANTHROPIC, false, KB_MODEL_NONE,
            KB_OBJECT_MESSAGE_BATCH, KB_OP_LIST),
        OBJ("GET", "/v1/messages/batches/{id}", KB_ENDPOINT_MESSAGE_BATCHES, ANTHROPIC, false, KB_MODEL_NONE,
            KB_OBJECT_MESSAGE_BATCH, KB_OP_GET),
        OBJ("DELETE", "/v1/messages/batches/{id}", KB_ENDPOINT_MESSAGE_BATCHES, ANTHROPIC, false, KB_MODEL_NONE,
            KB_OBJECT_MESSAGE_BATCH, KB_OP_DELETE),
        OBJ("POST", "/v1/messages/batches/{id}/cancel", KB_ENDPOINT_MESSAGE_BATCHES, ANTHROPIC, false,
            KB_MODEL_NONE, KB_OBJECT_MESSAGE_BATCH, KB_OP_GET),
        OBJ("GET", "/v1/messages/batches/{id}/results", KB_ENDPOINT_MESSAGE_BATCHES, ANTHROPIC, false,
            KB_MODEL_NONE, KB_OBJECT_MESSAGE_BATCH, KB_OP_DOWNLOAD),

        { "GET", "/v1/models", KB_ENDPOINT_MODELS, OPENAI, false, KB_MODEL_NONE, KB_OBJECT_NONE, KB_OP_CALL,
          KB_LOCAL_MODELS },
        { "GET", "/v1/keybroker/whoami", KB_ENDPOINT_WHOAMI, OPENAI, false, KB_MODEL_NONE, KB_OBJECT_NONE,
          KB_OP_CALL, KB_LOCAL_WHOAMI },
};

/* An object id as providers write them: letters, digits, '-', '_', '.'. */
static size_t id_segment(const char *p) {
        size_t n = 0;
        while (p[n] && p[n] != '/') {
                char ch = p[n];
                if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                      ch == '-' || ch == '_' || ch == '.'))
                        return 0;
                n++;
        }
        return n;
}

/* Whether path fits pattern; the {id} segment is copied out. An id segment
 * that is too long or holds other characters makes the path unknown. */
static bool matches(const char *pattern, const char *path, char id[KB_OBJECT_ID_MAX + 1]) {
        const char *hole = strstr(pattern, "{id}");
        if (!hole)
                return streq(pattern, path);
        size_t pre = (size_t) (hole - pattern);
        if (strncmp(pattern, path, pre) != 0)
                return false;
        size_t n = id_segment(path + pre);
        if (n == 0 || n > KB_OBJECT_ID_MAX || !streq(hole + 4, path + pre + n))
                return false;
        memcpy(id, path + pre, n);
        id[n] = 0;
        return true;
}

int kb_endpoint_match(const char *method, const char *path, bool anthropic_version,
                      const struct kb_endpoint_def **ret, char ret_id[KB_OBJECT_ID_MAX + 1]) {
        bool path_known = false;
        char id[KB_OBJECT_ID_MAX + 1];

        if (!method || !path)
                return -ENOENT;
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                const struct kb_endpoint_def *d = &table[i];
                if (d->anthropic_only && !anthropic_version)
                        continue;
                id[0] = 0;
                if (!matches(d->pattern, path, id))
                        continue;
                path_known = true;
                if (!streq(d->method, method))
                        continue;
                *ret = d;
                if (ret_id)
                        memcpy(ret_id, id, strlen(id) + 1);
                return 0;
        }
        return path_known ? -EBADRQC : -ENOENT;
}

kb_family kb_endpoint_family_of_path(const char *path, bool anthropic_version) {
        if (!path)
                return OPENAI;
        if (strncmp(path, "/v1/messages", 12) == 0 && (path[12] == 0 || path[12] == '/' || path[12] == '?'))
                return ANTHROPIC;
        if (anthropic_version && (strncmp(path, "/v1/files", 9) == 0 || strncmp(path, "/v1/models", 10) == 0))
                return ANTHROPIC;
        return OPENAI;
}

static const char *const kind_table[_KB_OBJECT_MAX] = {
        [KB_OBJECT_NONE] = "none",
        [KB_OBJECT_FILE] = "file",
        [KB_OBJECT_BATCH] = "batch",
        [KB_OBJECT_VIDEO] = "video",
        [KB_OBJECT_RESPONSE] = "response",
        [KB_OBJECT_MESSAGE_BATCH] = "message_batch",
};

const char *kb_object_kind_to_string(kb_object_kind k) {
        return (unsigned) k < _KB_OBJECT_MAX ? kind_table[k] : NULL;
}

kb_object_kind kb_object_kind_from_string(const char *s) {
        for (size_t i = 0; i < _KB_OBJECT_MAX; i++)
                if (streq_ptr(s, kind_table[i]))
                        return (kb_object_kind) i;
        return KB_OBJECT_NONE;
}
