/* SPDX-License-Identifier: MIT */
/* Tool calling, so the SDKs' tool helpers (OpenAI's runTools and stream
 * tool_calls events, Anthropic's tool_use blocks and inputJson) have a
 * provider to talk to: with tools on offer the assistant calls the first
 * one; once the app answers with a tool result, the assistant echoes it. */

#include "mock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define MOCK_DEFAULT_TOOL_ARGS "{\"location\":\"Paris\"}"

/* content: a string, or an array of blocks whose "text" strings are joined
 * (OpenAI's content parts, Anthropic's tool_result text blocks). */
static int set_result(struct mock_script *s, json_t *content) {
        _cleanup_(kb_buf_free) struct kb_buf b = {};
        int k = kb_buf_appendf(&b, "tool result: ");
        if (k < 0)
                return k;
        if (json_is_string(content))
                k = kb_buf_append(&b, json_string_value(content), json_string_length(content));
        else if (json_is_array(content)) {
                size_t i;
                json_t *part;
                json_array_foreach(content, i, part) {
                        json_t *text = json_object_get(part, "text");
                        if (json_is_string(text))
                                k = kb_buf_append(&b, json_string_value(text), json_string_length(text));
                        if (k < 0)
                                return k;
                }
        }
        if (k < 0)
                return k;
        s->tool_result = TAKE_PTR(b.data);
        s->turn = MOCK_TURN_TOOL_RESULT;
        return 0;
}

/* The first tool_result block of an Anthropic user message, if any. */
static json_t *anthropic_tool_result(json_t *message) {
        size_t i;
        json_t *block;

        if (!streq_ptr(json_string_value(json_object_get(message, "role")), "user"))
                return NULL;
        json_array_foreach(json_object_get(message, "content"), i, block)
                if (streq_ptr(json_string_value(json_object_get(block, "type")), "tool_result"))
                        return block;
        return NULL;
}

#define SCHEMA_MAX_DEPTH 16

static json_t *schema_value(const json_t *schema, int depth) {
        const json_t *type = json_object_get(schema, "type"), *en = json_object_get(schema, "enum");
        const char *t = json_string_value(json_is_array(type) ? json_array_get(type, 0) : type);

        if (depth > SCHEMA_MAX_DEPTH)
                return json_null();
        if (json_array_size(en) > 0)
                return json_deep_copy(json_array_get(en, 0));
        if (!t && json_is_object(json_object_get(schema, "properties")))
                t = "object";
        if (streq_ptr(t, "object")) {
                json_t *o = json_object();
                const char *k;
                json_t *v;
                json_object_foreach(json_object_get(schema, "properties"), k, v)
                        if (!o || json_object_set_new(o, k, schema_value(v, depth + 1)) < 0) {
                                json_decref(o);
                                return NULL;
                        }
                return o;
        }
        if (streq_ptr(t, "array"))
                return json_pack("[o]", schema_value(json_object_get(schema, "items"), depth + 1));
        if (streq_ptr(t, "integer"))
                return json_integer(1);
        if (streq_ptr(t, "number"))
                return json_real(1.5);
        if (streq_ptr(t, "boolean"))
                return json_true();
        if (streq_ptr(t, "null"))
                return json_null();
        return json_string("x");
}

json_t *mock_schema_document(const json_t *schema, bool break_it) {
        json_t *doc = schema_value(schema, 0);
        if (!doc || !break_it)
                return doc;
        /* the first required property gets the wrong type; else the
         * whole document does */
        const char *k = json_string_value(json_array_get(json_object_get(schema, "required"), 0));
        json_t *v = k ? json_object_get(doc, k) : NULL;
        if (v) {
                if (json_object_set_new(doc, k, json_is_string(v) ? json_integer(1) : json_string("x")) < 0) {
                        json_decref(doc);
                        return NULL;
                }
                return doc;
        }
        json_decref(doc);
        return json_is_object(schema) && streq_ptr(json_string_value(json_object_get(schema, "type")), "array")
                       ? json_pack("{sb}", "x-mock-schema-break", 1)
                       : json_pack("[s]", "x-mock-schema-break");
}

/* The tool tool_choice forces (OpenAI {"type":"function","function":
 * {"name"}}, Anthropic {"type":"tool","name"}), if it is among tools. */
static json_t *forced_tool(json_t *root, json_t *tools, bool anthropic) {
        json_t *choice = json_object_get(root, "tool_choice");
        const char *type = json_string_value(json_object_get(choice, "type"));
        const char *name = anthropic ? (streq_ptr(type, "tool") ? json_string_value(json_object_get(choice, "name")) : NULL)
                                     : (streq_ptr(type, "function") ?
                                        json_string_value(json_object_get(json_object_get(choice, "function"), "name")) :
                                        NULL);
        size_t i;
        json_t *tool;

        json_array_foreach(tools, i, tool) {
                json_t *def = anthropic ? tool : json_object_get(tool, "function");
                if (name && streq_ptr(json_string_value(json_object_get(def, "name")), name))
                        return tool;
        }
        return NULL;
}

int mock_tool_plan(struct mock_script *s, json_t *root, bool anthropic, const char *args_header) {
        json_t *messages = json_object_get(root, "messages");
        size_t n = json_array_size(messages);
        json_t *last = n > 0 ? json_array_get(messages, n - 1) : NULL;

        s->turn = MOCK_TURN_TEXT;
        if (anthropic) {
                json_t *result = anthropic_tool_result(last);
                if (result)
                        return set_result(s, json_object_get(result, "content"));
        } else if (streq_ptr(json_string_value(json_object_get(last, "role")), "tool"))
                return set_result(s, json_object_get(last, "content"));

        json_t *tools = json_object_get(root, "tools");
        if (!json_is_array(tools) || json_array_size(tools) == 0)
                return 0;
        json_t *tool = json_array_get(tools, 0);
        const char *name = json_string_value(json_object_get(anthropic ? tool : json_object_get(tool, "function"),
                                                             "name"));
        s->tool_name = name ?: "tool";

        /* x-mock-tool-arguments is the model's output verbatim, so it must
         * at least be what a model is asked for: a JSON object. */
        s->tool_args = MOCK_DEFAULT_TOOL_ARGS;
        if (args_header) {
                _cleanup_(json_decrefp) json_t *args = json_loads(args_header, 0, NULL);
                if (json_is_object(args))
                        s->tool_args = args_header;
        }
        s->turn = MOCK_TURN_TOOL_CALL;
        return 0;
}

int mock_tool_force(struct mock_script *s, json_t *root, bool anthropic, bool break_it) {
        json_t *tool = s->turn == MOCK_TURN_TOOL_CALL ? forced_tool(root, json_object_get(root, "tools"), anthropic)
                                                      : NULL;
        if (!tool)
                return 0;
        json_t *def = anthropic ? tool : json_object_get(tool, "function");
        _cleanup_(json_decrefp) json_t *args =
                mock_schema_document(json_object_get(def, anthropic ? "input_schema" : "parameters"), break_it);
        if (!args || !json_is_object(args) || !(s->tool_result = json_dumps(args, JSON_COMPACT)))
                return args && !json_is_object(args) ? 0 : -ENOMEM;
        s->tool_name = json_string_value(json_object_get(def, "name"));
        s->tool_args = s->tool_result;
        return 0;
}

/* Where the arguments text is cut in two stream fragments: the middle,
 * moved back to a UTF-8 character boundary. */
size_t mock_tool_args_split(const struct mock_script *s) {
        size_t len = strlen(s->tool_args), cut = len / 2;
        while (cut > 0 && ((unsigned char) s->tool_args[cut] & 0xC0) == 0x80)
                cut--;
        return cut;
}

/* head: the first stream delta's entry ("index", empty arguments);
 * otherwise the complete call of a JSON answer. */
json_t *mock_chat_tool_calls(const struct mock_script *s, bool head) {
        _cleanup_free_ char *id = mock_id("call_mock", s->n);
        if (!id)
                return NULL;
        if (head)
                return json_pack("[{si ss ss s{ss ss}}]",
                                 "index", 0, "id", id, "type", "function",
                                 "function", "name", s->tool_name, "arguments", "");
        return json_pack("[{ss ss s{ss ss}}]",
                         "id", id, "type", "function",
                         "function", "name", s->tool_name, "arguments", s->tool_args);
}

json_t *mock_chat_tool_json(const struct mock_script *s) {
        json_t *body = mock_chat_json(s, "");
        json_t *choice = json_array_get(json_object_get(body, "choices"), 0);
        json_t *message = json_object_get(choice, "message");
        if (!message ||
            json_object_set_new(message, "content", json_null()) < 0 ||
            json_object_set_new(message, "tool_calls", mock_chat_tool_calls(s, false)) < 0 ||
            json_object_set_new(choice, "finish_reason", json_string("tool_calls")) < 0) {
                json_decref(body);
                return NULL;
        }
        return body;
}

/* streaming: the content_block_start block, whose input arrives as
 * input_json_delta fragments. */
json_t *mock_messages_tool_use(const struct mock_script *s, bool streaming) {
        _cleanup_free_ char *id = mock_id("toolu_mock", s->n);
        if (!id)
                return NULL;
        json_t *input = streaming ? json_object() : json_loads(s->tool_args, 0, NULL);
        return json_pack("{ss ss ss so}", "type", "tool_use", "id", id, "name", s->tool_name, "input", input);
}

json_t *mock_messages_tool_json(const struct mock_script *s) {
        json_t *body = mock_messages_json(s, "");
        if (!body ||
            json_object_set_new(body, "content", json_pack("[o]", mock_messages_tool_use(s, false))) < 0 ||
            json_object_set_new(body, "stop_reason", json_string("tool_use")) < 0) {
                json_decref(body);
                return NULL;
        }
        return body;
}
