/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 8 of 12, decisions: calls no other layer. */

/* What each app path is: one table maps method + path pattern to the family,
 * the journal's endpoint name, where the model is, which provider object it
 * acts on and how its answer is read. Pure data and matching; calls nothing
 * but util. Never logs. */

#include <stdbool.h>
#include <stddef.h>

#include "usage.h"

typedef enum kb_model_at {
        KB_MODEL_NONE,          /* no model: the object's route, or the team's default route */
        KB_MODEL_BODY,          /* "model" of the JSON body, or the multipart form's model field */
        KB_MODEL_OPTIONAL,      /* as BODY; without one, as NONE (moderations) */
} kb_model_at;

typedef enum kb_object_kind {
        KB_OBJECT_NONE,
        KB_OBJECT_FILE,
        KB_OBJECT_BATCH,
        KB_OBJECT_VIDEO,
        KB_OBJECT_RESPONSE,
        KB_OBJECT_MESSAGE_BATCH,
        _KB_OBJECT_MAX,
} kb_object_kind;

typedef enum kb_object_op {
        KB_OP_CALL,             /* no object: a model call */
        KB_OP_CREATE,           /* the answer's "id" is a new object of the team */
        KB_OP_LIST,             /* the answer's "data" is filtered to the team's objects */
        KB_OP_GET,              /* on {id}: retrieve, cancel; the answer is the object */
        KB_OP_DELETE,
        KB_OP_DOWNLOAD,         /* on {id}: content, results; bytes relayed unread */
        KB_OP_SUBLIST,          /* on {id}: a list that belongs to it (input_items) */
} kb_object_op;

typedef enum kb_local {
        KB_LOCAL_NONE,          /* forwarded */
        KB_LOCAL_MODELS,
        KB_LOCAL_WHOAMI,
} kb_local;

struct kb_endpoint_def {
        const char *method;
        const char *pattern;    /* "/v1/files/{id}/content": {id} is one path segment */
        kb_endpoint endpoint;
        kb_family family;
        bool anthropic_only;    /* the row applies only when the request carries anthropic-version */
        kb_model_at model_at;
        kb_object_kind object;
        kb_object_op op;
        kb_local local;
};

#define KB_OBJECT_ID_MAX 128

/* 0 and *ret (and the {id} segment in ret_id, "" when the pattern has
 * none); -ENOENT: no such path; -EBADRQC: the path exists but not with
 * this method (405). The query string must already be cut off. */
int kb_endpoint_match(const char *method, const char *path, bool anthropic_version,
                      const struct kb_endpoint_def **ret, char ret_id[KB_OBJECT_ID_MAX + 1]);

/* Family of a path for errors before (or without) a match. */
kb_family kb_endpoint_family_of_path(const char *path, bool anthropic_version);

const char *kb_object_kind_to_string(kb_object_kind k);
kb_object_kind kb_object_kind_from_string(const char *s);
