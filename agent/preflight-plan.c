/* SPDX-License-Identifier: MIT */
/* The plan of a preflight: every call it makes, in order, with the checks
 * that read each, built from the config (the route, the models using it,
 * their fallbacks and features), the router's current split and the checks
 * asked for. A call no selected check reads is marked skip, not dropped, so
 * the evidence can say what was left out. */

#include <inttypes.h>

#include "broker.h"
#include "preflight-internal.h"

#define CHECK(c) KB_CHECK_BIT(KB_CHECK_##c)

/* 1x1 PNG: the smallest image every vision model takes. */
#define TINY_PNG_BASE64 \
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
#define TOOL_NAME "get_weather"
#define STRUCTURED_NAME "keybroker_preflight"

void pf_call_clear(struct pf_call *c) {
        free(c->name);
        kb_key_unref(c->key);
        free(c->model);
        free(c->path);
        free(c->url);
        free(c->body);
        free(c->content_type);
        kb_buf_free(&c->in);
        kb_usage_tap_free(c->tap);
        free(c->message);
        *c = (struct pf_call) {};
}

struct pf_call *pf_find(struct kb_preflight *p, pf_kind kind, const struct kb_route *route, const char *model) {
        for (size_t i = 0; i < p->n_calls; i++) {
                struct pf_call *c = &p->calls[i];
                if (c->kind == kind && (!route || c->route == route) && (!model || streq_ptr(c->model, model)))
                        return c;
        }
        return NULL;
}

json_t *pf_structured_schema(void) {
        /* strict mode (OpenAI) wants every property required and no others */
        return json_pack("{s:s, s:{s:{s:s}, s:{s:s}, s:{s:s}, s:{s:s, s:{s:s}}, s:{s:s, s:[s, s, s]}}, "
                         "s:[s, s, s, s, s], s:b}",
                         "type", "object", "properties", "city", "type", "string", "population", "type", "integer",
                         "capital", "type", "boolean", "tags", "type", "array", "items", "type", "string", "size",
                         "type", "string", "enum", "small", "medium", "large", "required", "city", "population",
                         "capital", "tags", "size", "additionalProperties", false);
}

/* ---- request bodies ---- */

static json_t *user_text(const char *text) {
        return json_pack("[{s:s, s:s}]", "role", "user", "content", text);
}

static json_t *tool_def(bool anthropic, const char *name, const char *description, json_t *schema) {
        if (anthropic)
                return json_pack("{s:s, s:s, s:o}", "name", name, "description", description, "input_schema", schema);
        return json_pack("{s:s, s:{s:s, s:s, s:o}}", "type", "function", "function", "name", name, "description",
                         description, "parameters", schema);
}

static json_t *forced_tool(bool anthropic, const char *name) {
        if (anthropic)
                return json_pack("{s:s, s:s}", "type", "tool", "name", name);
        return json_pack("{s:s, s:{s:s}}", "type", "function", "function", "name", name);
}

static json_t *body_json(const struct kb_preflight *p, pf_kind kind, const struct kb_route *route, const char *model) {
        bool anthropic = route->family == KB_FAMILY_ANTHROPIC;

        switch (kind) {
        case PF_MAIN:
        case PF_WRONG_KEY:
        case PF_BOGUS:
        case PF_TIMEOUT:
                return json_pack("{s:s, s:o, s:i}", "model", kind == PF_BOGUS ? p->bogus_model : model, "messages",
                                 user_text("ping"), "max_tokens", KB_PREFLIGHT_MAX_TOKENS);
        case PF_STREAM:
                /* usage in an OpenAI stream only when asked for */
                if (anthropic)
                        return json_pack("{s:s, s:o, s:i, s:b}", "model", model, "messages", user_text("ping"),
                                         "max_tokens", KB_PREFLIGHT_MAX_TOKENS, "stream", true);
                return json_pack("{s:s, s:o, s:i, s:b, s:{s:b}}", "model", model, "messages", user_text("ping"),
                                 "max_tokens", KB_PREFLIGHT_MAX_TOKENS, "stream", true, "stream_options",
                                 "include_usage", true);
        case PF_RESPONSES:
                /* 16 is the least max_output_tokens the Responses API takes */
                return json_pack("{s:s, s:s, s:i}", "model", model, "input", "ping", "max_output_tokens", 16);
        case PF_EMBEDDINGS:
                return json_pack("{s:s, s:s}", "model", model, "input", "ping");
        case PF_SMOKE:
                if (!anthropic && kb_preflight_is_embedding_model(model))
                        return json_pack("{s:s, s:s}", "model", model, "input", "ping");
                return json_pack("{s:s, s:o, s:i}", "model", model, "messages", user_text("ping"), "max_tokens",
                                 KB_PREFLIGHT_MAX_TOKENS);
        case PF_TOOLS: {
                json_t *schema = json_pack("{s:s, s:{s:{s:s}}, s:[s]}", "type", "object", "properties", "location",
                                           "type", "string", "required", "location");
                return json_pack("{s:s, s:o, s:[o], s:o, s:i}", "model", model, "messages",
                                 user_text("What is the weather in Paris? Use the tool."), "tools",
                                 tool_def(anthropic, TOOL_NAME, "The weather at a place.", schema), "tool_choice",
                                 forced_tool(anthropic, TOOL_NAME), "max_tokens", 64);
        }
        case PF_STRUCTURED:
                if (anthropic)
                        /* Anthropic's structured output: a forced tool whose input is the document */
                        return json_pack("{s:s, s:o, s:[o], s:o, s:i}", "model", model, "messages",
                                         user_text("Describe Paris with the tool."), "tools",
                                         tool_def(true, STRUCTURED_NAME, "Record the description.",
                                                  pf_structured_schema()),
                                         "tool_choice", forced_tool(true, STRUCTURED_NAME), "max_tokens", 128);
                return json_pack("{s:s, s:o, s:{s:s, s:{s:s, s:b, s:o}}, s:i}", "model", model, "messages",
                                 user_text("Describe Paris as JSON."), "response_format", "type", "json_schema",
                                 "json_schema", "name", STRUCTURED_NAME, "strict", true, "schema",
                                 pf_structured_schema(), "max_tokens", 128);
        case PF_VISION:
                if (anthropic)
                        return json_pack("{s:s, s:[{s:s, s:[{s:s, s:{s:s, s:s, s:s}}, {s:s, s:s}]}], s:i}", "model",
                                         model, "messages", "role", "user", "content", "type", "image", "source",
                                         "type", "base64", "media_type", "image/png", "data", TINY_PNG_BASE64, "type",
                                         "text", "text", "What color is this image? One word.", "max_tokens",
                                         KB_PREFLIGHT_MAX_TOKENS);
                return json_pack("{s:s, s:[{s:s, s:[{s:s, s:s}, {s:s, s:{s:s}}]}], s:i}", "model", model, "messages",
                                 "role", "user", "content", "type", "text", "text",
                                 "What color is this image? One word.", "type", "image_url", "image_url", "url",
                                 "data:image/png;base64," TINY_PNG_BASE64, "max_tokens", KB_PREFLIGHT_MAX_TOKENS);
        case PF_REASONING:
                /* reasoning needs room: the least budget Anthropic takes, a low effort for OpenAI */
                if (anthropic)
                        return json_pack("{s:s, s:o, s:{s:s, s:i}, s:i}", "model", model, "messages",
                                         user_text("What is 2+2? Answer with the number."), "thinking", "type",
                                         "enabled", "budget_tokens", 1024, "max_tokens", 1100);
                return json_pack("{s:s, s:o, s:s, s:i}", "model", model, "messages",
                                 user_text("What is 2+2? Answer with the number."), "reasoning_effort", "low",
                                 "max_completion_tokens", 256);
        default:
                return NULL;
        }
}

/* ---- the calls ---- */

static const char *family_path(const struct kb_route *route) {
        return route->family == KB_FAMILY_ANTHROPIC ? "/messages" : "/chat/completions";
}

static int route_key(struct kb_preflight *p, const struct kb_route *route, struct pf_call *c) {
        struct kb_keystore *ks = p->broker->keys;

        if (!route->key)
                return 0;
        if (!ks || kb_keystore_get(ks, route->key, &c->key) < 0) {
                c->key = NULL;
                c->key_missing = true;
        }
        return 0;
}

static int add_call(struct kb_preflight *p, pf_kind kind, const struct kb_route *route, const char *model,
                    unsigned checks, const char *name_fmt, ...) _printf_(6, 7);
static int add_call(struct kb_preflight *p, pf_kind kind, const struct kb_route *route, const char *model,
                    unsigned checks, const char *name_fmt, ...) {
        if (p->n_calls >= KB_PREFLIGHT_MAX_CALLS)
                return -E2BIG;
        struct pf_call *c = &p->calls[p->n_calls];
        *c = (struct pf_call) { .kind = kind, .route = route, .checks = checks, .endpoint = KB_ENDPOINT_CHAT };
        va_list ap;
        va_start(ap, name_fmt);
        int r = vasprintf(&c->name, name_fmt, ap);
        va_end(ap);
        if (r < 0) {
                c->name = NULL;
                return -ENOMEM;
        }
        p->n_calls++; /* from here pf_call_clear() frees what is set */

        const char *path = family_path(route);
        switch (kind) {
        case PF_MODELS:
        case PF_FALLBACK_MODELS:
                path = "/models";
                c->endpoint = KB_ENDPOINT_MODELS;
                break;
        case PF_RESPONSES:
                path = "/responses";
                c->endpoint = KB_ENDPOINT_RESPONSES;
                break;
        case PF_EMBEDDINGS:
                path = "/embeddings";
                c->endpoint = KB_ENDPOINT_EMBEDDINGS;
                break;
        case PF_STATUS:
                path = NULL;
                break;
        case PF_SMOKE:
                /* an embedding model answers on its own endpoint only */
                if (route->family == KB_FAMILY_OPENAI && kb_preflight_is_embedding_model(model)) {
                        path = "/embeddings";
                        c->endpoint = KB_ENDPOINT_EMBEDDINGS;
                        break;
                }
                __attribute__((fallthrough));
        default:
                if (route->family == KB_FAMILY_ANTHROPIC)
                        c->endpoint = KB_ENDPOINT_MESSAGES;
        }
        c->stream = kind == PF_STREAM;
        if (path && !(c->path = strdup(path)))
                return -ENOMEM;
        if (model && !(c->model = strdup(model)))
                return -ENOMEM;
        if (kind != PF_MODELS && kind != PF_FALLBACK_MODELS && kind != PF_STATUS) {
                json_t *j = body_json(p, kind, route, model);
                c->body = j ? json_dumps(j, JSON_COMPACT) : NULL;
                json_decref(j);
                if (!c->body)
                        return -ENOMEM;
        }
        if (kind == PF_STATUS)
                return 0; /* a third party's page: never the route's key */
        return route_key(p, route, c);
}

/* A small call to (route, model), shared by whatever reads one. */
static int add_smoke(struct kb_preflight *p, const struct kb_route *route, const char *model, unsigned check,
                     const char *what) {
        struct pf_call *c = pf_find(p, PF_SMOKE, route, model);
        /* the route's own calls serve too */
        if (!c && route == p->route)
                c = streq(model, p->model) ? pf_find(p, PF_MAIN, NULL, NULL) : pf_find(p, PF_EMBEDDINGS, route, model);
        if (c) {
                c->checks |= check;
                return 0;
        }
        return add_call(p, PF_SMOKE, route, model, check, "%s %s/%s", what, route->name, model);
}

static bool model_uses(const struct kb_model *m, const struct kb_route *route) {
        for (size_t i = 0; i < m->n_targets; i++)
                if (m->targets[i].route == route)
                        return true;
        for (size_t i = 0; i < m->n_fallbacks; i++)
                if (m->fallbacks[i].route == route)
                        return true;
        return false;
}

/* The first upstream model the route is configured with that is an
 * embedding model, or NULL. */
static const char *embedding_model(const struct kb_config *c, const struct kb_route *route) {
        for (size_t m = 0; m < c->n_models; m++)
                for (int fb = 0; fb < 2; fb++) {
                        const struct kb_model *model = &c->models[m];
                        const struct kb_target *ts = fb ? model->fallbacks : model->targets;
                        size_t n = fb ? model->n_fallbacks : model->n_targets;
                        for (size_t i = 0; i < n; i++)
                                if (ts[i].route == route && kb_preflight_is_embedding_model(ts[i].upstream_model))
                                        return ts[i].upstream_model;
                }
        return NULL;
}

char *kb_preflight_split_command(const struct kb_model *m, const unsigned *weights) {
        _cleanup_(kb_buf_free) struct kb_buf b = {};

        if (!m || !weights || kb_buf_appendf(&b, "keybrokerctl model split %s", m->name) < 0)
                return NULL;
        for (size_t i = 0; i < m->n_targets; i++) {
                const struct kb_target *t = &m->targets[i];
                bool twice = false;
                for (size_t k = 0; k < m->n_targets; k++)
                        twice |= k != i && m->targets[k].route == t->route;
                int r = twice ? kb_buf_appendf(&b, " %s/%s=%u", t->route->name, t->upstream_model, weights[i])
                              : kb_buf_appendf(&b, " %s=%u", t->route->name, weights[i]);
                if (r < 0)
                        return NULL;
        }
        return TAKE_PTR(b.data);
}

/* The split of each model using the route as it is now, live overrides
 * included, and a smoke call to every target that takes traffic. */
static int plan_rollback(struct kb_preflight *p) {
        const struct kb_config *c = p->config;

        for (size_t i = 0; i < c->n_models && p->n_rollback < KB_PREFLIGHT_MAX_TARGETS; i++) {
                const struct kb_model *m = &c->models[i];
                if (!model_uses(m, p->route) || m->n_targets == 0)
                        continue;
                struct pf_rollback *rb = &p->rollback[p->n_rollback];
                rb->model = m;
                rb->weights = calloc(m->n_targets, sizeof(*rb->weights));
                if (!rb->weights)
                        return -ENOMEM;
                p->n_rollback++;
                for (size_t t = 0; t < m->n_targets; t++)
                        rb->weights[t] = p->broker->router ? kb_router_weight(p->broker->router, m, &m->targets[t], NULL)
                                                           : m->targets[t].weight;
                if (!(rb->command = kb_preflight_split_command(m, rb->weights)))
                        return -ENOMEM;
                for (size_t t = 0; t < m->n_targets; t++) {
                        if (rb->weights[t] == 0)
                                continue;
                        int r = add_smoke(p, m->targets[t].route, m->targets[t].upstream_model, CHECK(ROLLBACK),
                                          "rollback");
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static int plan_fallbacks(struct kb_preflight *p) {
        const struct kb_config *c = p->config;
        size_t n = 0;

        for (size_t i = 0; i < c->n_models; i++) {
                const struct kb_model *m = &c->models[i];
                if (!model_uses(m, p->route))
                        continue;
                for (size_t f = 0; f < m->n_fallbacks && n < KB_PREFLIGHT_MAX_TARGETS; f++) {
                        const struct kb_target *t = &m->fallbacks[f];
                        int r = 0;
                        if (!pf_find(p, PF_FALLBACK_MODELS, t->route, NULL))
                                r = add_call(p, PF_FALLBACK_MODELS, t->route, NULL, CHECK(FALLBACK),
                                             "fallback %s models", t->route->name);
                        if (r >= 0) {
                                n++;
                                r = add_smoke(p, t->route, t->upstream_model, CHECK(FALLBACK), "fallback");
                        }
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

int pf_plan(struct kb_preflight *p) {
        static const struct {
                unsigned feature;
                pf_kind kind;
                const char *name;
        } features[] = {
                { KB_FEATURE_TOOLS, PF_TOOLS, "tools" },
                { KB_FEATURE_STRUCTURED_OUTPUT, PF_STRUCTURED, "structured_output" },
                { KB_FEATURE_VISION, PF_VISION, "vision" },
                { KB_FEATURE_REASONING, PF_REASONING, "reasoning" },
        };
        const struct kb_route *rt = p->route;
        const char *m = p->model;
        bool openai = rt->family == KB_FAMILY_OPENAI;
        const char *family_ep = openai ? "chat" : "messages";
        int r;

        p->features = rt->features;
        for (size_t i = 0; i < p->config->n_models; i++)
                if (model_uses(&p->config->models[i], rt))
                        p->features |= p->config->models[i].features;

        r = add_call(p, PF_MODELS, rt, NULL, CHECK(MODEL), "models");
        if (r >= 0)
                r = add_call(p, PF_MAIN, rt, m, CHECK(MODEL) | CHECK(ENDPOINT) | CHECK(USAGE) | CHECK(PRICING), "%s",
                             family_ep);
        if (r >= 0)
                r = add_call(p, PF_STREAM, rt, m,
                             CHECK(USAGE) | CHECK(PRICING) |
                                     (p->features & KB_FEATURE_STREAMING ? CHECK(FEATURES) : 0),
                             "%s stream", family_ep);
        if (r >= 0 && openai)
                r = add_call(p, PF_RESPONSES, rt, m, CHECK(ENDPOINT) | CHECK(PRICING), "responses");
        const char *emb = openai ? embedding_model(p->config, rt) : NULL;
        if (r >= 0 && emb)
                r = add_call(p, PF_EMBEDDINGS, rt, emb, CHECK(ENDPOINT) | CHECK(PRICING), "embeddings");
        for (size_t i = 0; r >= 0 && i < ELEMENTSOF(features); i++)
                if (p->features & features[i].feature)
                        r = add_call(p, features[i].kind, rt, m, CHECK(FEATURES) | CHECK(PRICING), "%s",
                                     features[i].name);
        if (r >= 0)
                r = add_call(p, PF_WRONG_KEY, rt, m, CHECK(FAILURES), "wrong key");
        if (r >= 0)
                r = add_call(p, PF_BOGUS, rt, p->bogus_model, CHECK(FAILURES), "bogus model");
        if (r >= 0)
                r = add_call(p, PF_TIMEOUT, rt, m, CHECK(FAILURES), "timeout");
        if (r >= 0)
                r = plan_fallbacks(p);
        if (r >= 0)
                r = plan_rollback(p);
        if (r >= 0 && rt->status_url)
                r = add_call(p, PF_STATUS, rt, NULL, CHECK(STATUS), "status");
        if (r < 0)
                return r;
        for (size_t i = 0; i < p->n_calls; i++) {
                struct pf_call *c = &p->calls[i];
                c->skip = (c->checks & p->checks) == 0;
                /* the absolute URL now: a bad one fails its call, not the run */
                int k = c->path ? asprintf(&c->url, "%s%s", c->route->base_url, c->path)
                                : asprintf(&c->url, "%s", c->route->status_url);
                if (k < 0) {
                        c->url = NULL;
                        return -ENOMEM;
                }
        }
        return 0;
}
