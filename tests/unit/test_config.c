/* SPDX-License-Identifier: MIT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <sys/stat.h>

#include "config.h"
#include "config-internal.h"
#include "helper.h"
#include "keybroker/keybroker.h"
#include "util.h"

/* The DESIGN example, adapted to accounts that exist on any test host. */
static const char full_config[] =
        "# keybroker test config\n"
        "[agent]\n"
        "listen = /run/keybroker/api.sock        # ignored when socket-activated (fd name \"api\")\n"
        "listen_mode = 0660                      ; who may connect is decided by identity\n"
        "admin = /run/kb/admin.sock              # fd name \"admin\"\n"
        "admin_users = root 4242\n"
        "admin_users = 4243\n"
        "admin_groups = 0\n"
        "credentials_dir = $CREDENTIALS_DIRECTORY\n"
        "keystore = /var/lib/keybroker/other.sealed\n"
        "master_key = $CREDENTIALS_DIRECTORY/keybroker.master\n"
        "state_dir = /var/lib/kb\n"
        "max_request_body = 16M\n"
        "header_timeout = 5s\n"
        "drain_timeout = 2min\n"
        "idle_timeout = 90s\n"
        "max_connections = 100\n"
        "max_connections_per_uid = 10\n"
        "\n"
        "[team:search]\n"
        "users = root 1001                 # (+) user names or uids\n"
        "users = 1002\n"
        "groups = 0 1003                   # (+) group names or gids\n"
        "units = search-api.service        # (+) systemd units of the calling process\n"
        "units = foo@bar.service other.scope\n"
        "models = gpt-4o-mini chat-default # (+) models this team may call; * = all\n"
        "requests_per_minute = 600\n"
        "tokens_per_minute = 200000\n"
        "tokens_per_day = 5000000\n"
        "budget_usd_per_day = 50\n"
        "budget_usd_per_month = 800.25\n"
        "max_concurrent = 32\n"
        "owner = search-platform@example.com\n"
        "unpriced = zero\n"
        "\n"
        "[team:all]\n"
        "units = batch.service\n"
        "models = *\n"
        "\n"
        "[model:chat-default]\n"
        "target = openai gpt-4o-mini weight=90   # (+) ROUTE UPSTREAM_MODEL [weight=N]\n"
        "target = flatkey openai/gpt-4o-mini weight=10\n"
        "target = openai gpt-4o weight=0\n"
        "fallback = anthropic claude-3-5-haiku-latest   # (+) tried in order when targets fail\n"
        "\n"
        "[model:gpt-4o-mini]\n"
        "target = openai gpt-4o-mini\n"
        "\n"
        "[route:openai]\n"
        "family = openai                         # openai | anthropic\n"
        "base_url = https://api.openai.com/v1/\n"
        "key = openai-prod                       # key name\n"
        "auth = bearer                           # bearer | x-api-key | header:NAME\n"
        "header = OpenAI-Organization: org-123   # (+) static headers\n"
        "header = X-Two:value with spaces\n"
        "timeout = 300s\n"
        "connect_timeout = 500ms\n"
        "ca_file = /etc/ssl/certs/ca-certificates.crt\n"
        "price = gpt-4o-mini input=0.15 output=0.60 cached_input=0.075 cache_write=0.30\n"
        "price = text-embedding-3-small request=0.002\n"
        "price = gpt-4o input=2.5 output=10\n"
        "\n"
        "[route:anthropic]\n"
        "family = anthropic\n"
        "base_url = https://api.anthropic.com\n"
        "key = anthropic-prod\n"
        "\n"
        "[route:flatkey]\n"
        "  family = openai\n"
        "\tbase_url = http://127.0.0.1:8080/v1\n"
        "auth = header:X-Flatkey-Key\n";

static void test_full(void **state) {
        _cleanup_config_ struct kb_config *c = NULL;
        _cleanup_free_ char *err = NULL;

        assert_int_equal(setenv("CREDENTIALS_DIRECTORY", "/run/credentials/keybrokerd.service", 1), 0);
        int r = kb_config_load_string("full.conf", full_config, false, &c, &err);
        if (r < 0)
                fail_msg("%s", strempty(err));
        assert_non_null(c);
        assert_string_equal(c->path, "full.conf");

        const struct kb_agent_config *a = &c->agent;
        assert_string_equal(a->listen, "/run/keybroker/api.sock");
        assert_int_equal(a->listen_mode, 0660);
        assert_string_equal(a->admin, "/run/kb/admin.sock");
        assert_int_equal(a->n_admin_uids, 3);
        assert_int_equal(a->admin_uids[0], 0);
        assert_int_equal(a->admin_uids[1], 4242);
        assert_int_equal(a->admin_uids[2], 4243);
        assert_int_equal(a->n_admin_gids, 1);
        assert_int_equal(a->admin_gids[0], 0);
        assert_string_equal(a->credentials_dir, "/run/credentials/keybrokerd.service");
        assert_string_equal(a->keystore, "/var/lib/keybroker/other.sealed");
        assert_string_equal(a->master_key, "/run/credentials/keybrokerd.service/keybroker.master");
        assert_string_equal(a->state_dir, "/var/lib/kb");
        assert_int_equal(a->max_request_body, 16 << 20);
        assert_int_equal(a->header_timeout_usec, 5 * USEC_PER_SEC);
        assert_int_equal(a->drain_timeout_usec, 120 * USEC_PER_SEC);
        assert_int_equal(a->idle_timeout_usec, 90 * USEC_PER_SEC);
        assert_int_equal(a->max_connections, 100);
        assert_int_equal(a->max_connections_per_uid, 10);

        assert_int_equal(c->n_teams, 2);
        const struct kb_team *t = kb_config_find_team(c, "search");
        assert_ptr_equal(t, &c->teams[0]);
        assert_int_equal(t->line, 20);
        assert_int_equal(t->n_uids, 3);
        assert_int_equal(t->uids[0], 0);
        assert_int_equal(t->uids[1], 1001);
        assert_int_equal(t->uids[2], 1002);
        assert_int_equal(t->n_gids, 2);
        assert_int_equal(t->gids[0], 0);
        assert_int_equal(t->gids[1], 1003);
        assert_int_equal(t->n_units, 3);
        assert_string_equal(t->units[0], "search-api.service");
        assert_string_equal(t->units[1], "foo@bar.service");
        assert_string_equal(t->units[2], "other.scope");
        assert_int_equal(t->n_models, 2);
        assert_false(t->models_all);
        assert_string_equal(t->models[0], "gpt-4o-mini");
        assert_string_equal(t->models[1], "chat-default");
        assert_int_equal(t->requests_per_minute, 600);
        assert_int_equal(t->tokens_per_minute, 200000);
        assert_int_equal(t->tokens_per_day, 5000000);
        assert_int_equal(t->budget_microusd_per_day, 50000000);
        assert_int_equal(t->budget_microusd_per_month, 800250000);
        assert_int_equal(t->max_concurrent, 32);
        assert_string_equal(t->owner, "search-platform@example.com");
        assert_int_equal(t->unpriced, 1);
        assert_true(kb_team_allows_model(t, "chat-default"));
        assert_false(kb_team_allows_model(t, "other"));
        assert_false(kb_team_allows_model(t, NULL));

        t = kb_config_find_team(c, "all");
        assert_non_null(t);
        assert_true(t->models_all);
        assert_int_equal(t->n_models, 0);
        assert_int_equal(t->unpriced, -1);
        assert_int_equal(t->budget_microusd_per_day, 0);
        assert_int_equal(t->requests_per_minute, 0);
        assert_null(t->owner);
        assert_true(kb_team_allows_model(t, "anything"));
        assert_null(kb_config_find_team(c, "nope"));

        assert_int_equal(c->n_routes, 3);
        const struct kb_route *o = kb_config_find_route(c, "openai");
        assert_non_null(o);
        assert_int_equal(o->family, KB_FAMILY_OPENAI);
        assert_string_equal(o->base_url, "https://api.openai.com/v1");
        assert_string_equal(o->key, "openai-prod");
        assert_int_equal(o->auth, KB_AUTH_BEARER);
        assert_null(o->auth_header);
        assert_int_equal(o->n_headers, 2);
        assert_string_equal(o->headers[0], "OpenAI-Organization: org-123");
        assert_string_equal(o->headers[1], "X-Two: value with spaces");
        assert_int_equal(o->timeout_usec, 300 * USEC_PER_SEC);
        assert_int_equal(o->connect_timeout_usec, 500 * USEC_PER_MSEC);
        assert_string_equal(o->ca_file, "/etc/ssl/certs/ca-certificates.crt");
        assert_int_equal(o->n_prices, 3);
        assert_string_equal(o->prices[0].model, "gpt-4o-mini");
        assert_int_equal(o->prices[0].input, 150000);
        assert_int_equal(o->prices[0].output, 600000);
        assert_int_equal(o->prices[0].cached_input, 75000);
        assert_int_equal(o->prices[0].cache_write, 300000);
        assert_int_equal(o->prices[0].request, -1);
        assert_string_equal(o->prices[1].model, "text-embedding-3-small");
        assert_int_equal(o->prices[1].request, 2000);
        assert_int_equal(o->prices[1].input, -1);
        assert_int_equal(o->prices[1].output, -1);
        assert_int_equal(o->prices[2].input, 2500000);
        assert_int_equal(o->prices[2].output, 10000000);
        assert_int_equal(o->prices[2].cached_input, -1);
        assert_int_equal(o->prices[2].cache_write, -1);

        const struct kb_route *an = kb_config_find_route(c, "anthropic");
        assert_non_null(an);
        assert_int_equal(an->family, KB_FAMILY_ANTHROPIC);
        assert_int_equal(an->auth, KB_AUTH_X_API_KEY); /* default for the family */
        assert_int_equal(an->timeout_usec, 600 * USEC_PER_SEC);
        assert_int_equal(an->connect_timeout_usec, 10 * USEC_PER_SEC);
        assert_null(an->ca_file);
        assert_int_equal(an->n_headers, 0);
        assert_int_equal(an->n_prices, 0);

        const struct kb_route *fk = kb_config_find_route(c, "flatkey");
        assert_non_null(fk);
        assert_string_equal(fk->base_url, "http://127.0.0.1:8080/v1");
        assert_null(fk->key);
        assert_int_equal(fk->auth, KB_AUTH_HEADER);
        assert_string_equal(fk->auth_header, "X-Flatkey-Key");

        assert_int_equal(c->n_models, 2);
        const struct kb_model *m = kb_config_find_model(c, "chat-default");
        assert_non_null(m);
        assert_int_equal(m->n_targets, 3);
        assert_ptr_equal(m->targets[0].route, o);
        assert_string_equal(m->targets[0].upstream_model, "gpt-4o-mini");
        assert_int_equal(m->targets[0].weight, 90);
        assert_int_equal(m->targets[0].line, 41);
        assert_ptr_equal(m->targets[1].route, fk); /* route defined after the model */
        assert_string_equal(m->targets[1].upstream_model, "openai/gpt-4o-mini");
        assert_int_equal(m->targets[1].weight, 10);
        assert_int_equal(m->targets[2].weight, 0);
        assert_int_equal(m->n_fallbacks, 1);
        assert_ptr_equal(m->fallbacks[0].route, an);
        assert_string_equal(m->fallbacks[0].upstream_model, "claude-3-5-haiku-latest");
        m = kb_config_find_model(c, "gpt-4o-mini");
        assert_non_null(m);
        assert_int_equal(m->targets[0].weight, 1);
        assert_int_equal(m->n_fallbacks, 0);
        assert_null(kb_config_find_model(c, "gpt-5"));

        /* Refcounting: a second ref keeps the config alive. */
        struct kb_config *c2 = kb_config_ref(c);
        assert_ptr_equal(c2, c);
        assert_int_equal(c->n_ref, 2);
        assert_null(kb_config_unref(c2));
        assert_int_equal(c->n_ref, 1);
        assert_null(err);
}

static void test_defaults(void **state) {
        _cleanup_config_ struct kb_config *c = NULL;
        _cleanup_free_ char *err = NULL;

        assert_int_equal(unsetenv("CREDENTIALS_DIRECTORY"), 0);
        int r = kb_config_load_string("d.conf", "[team:t]\nusers = 0\n", true, &c, &err);
        if (r < 0)
                fail_msg("%s", strempty(err));
        const struct kb_agent_config *a = &c->agent;
        assert_string_equal(a->listen, KB_DEFAULT_LISTEN);
        assert_int_equal(a->listen_mode, 0666);
        assert_string_equal(a->admin, KB_DEFAULT_ADMIN);
        assert_int_equal(a->n_admin_uids, 0);
        assert_int_equal(a->n_admin_gids, 0);
        assert_null(a->credentials_dir);
        assert_null(a->master_key);
        assert_string_equal(a->keystore, KB_DEFAULT_KEYSTORE);
        assert_string_equal(a->state_dir, KB_DEFAULT_STATE_DIR);
        assert_int_equal(a->max_request_body, 32 << 20);
        assert_int_equal(a->header_timeout_usec, 10 * USEC_PER_SEC);
        assert_int_equal(a->drain_timeout_usec, 30 * USEC_PER_SEC);
        assert_int_equal(a->idle_timeout_usec, 60 * USEC_PER_SEC);
        assert_int_equal(a->max_connections, 1024);
        assert_int_equal(a->max_connections_per_uid, 256);
        assert_int_equal(c->n_teams, 1);
        assert_false(c->teams[0].models_all);
        assert_false(kb_team_allows_model(&c->teams[0], "x"));
        assert_int_equal(c->n_routes, 0);
        assert_int_equal(c->n_models, 0);

        /* Without $CREDENTIALS_DIRECTORY an explicit other path still counts;
         * the variable alone yields no directory. */
        kb_config_unref(TAKE_PTR(c));
        r = kb_config_load_string("d.conf",
                                  "[agent]\ncredentials_dir = /etc/kb/keys\nmaster_key = ${CREDENTIALS_DIRECTORY}/m\n",
                                  false, &c, &err);
        assert_int_equal(r, 0);
        assert_string_equal(c->agent.credentials_dir, "/etc/kb/keys");
        assert_null(c->agent.master_key);

        kb_config_unref(TAKE_PTR(c));
        assert_int_equal(setenv("CREDENTIALS_DIRECTORY", "/run/cred", 1), 0);
        r = kb_config_load_string("d.conf", "", false, &c, &err);
        assert_int_equal(r, 0);
        assert_string_equal(c->agent.credentials_dir, "/run/cred");
        assert_string_equal(c->agent.master_key, "/run/cred/keybroker.master");
        assert_int_equal(unsetenv("CREDENTIALS_DIRECTORY"), 0);
        assert_null(err);
}

static void test_comments(void **state) {
        _cleanup_config_ struct kb_config *c = NULL;
        _cleanup_free_ char *err = NULL;
        static const char text[] =
                "\xEF\xBB\xBF# full-line comment\n"
                "; another\n"
                "   # indented comment\n"
                "[agent] # trailing on a header\n"
                "listen = /a/b.sock#not-a-comment   # but this is\n"
                "admin = /c/d.sock ; and this\n"
                "state_dir = /var/lib/x;y\n"
                "[team:t]\r\n"
                "models = a\r\n"
                "    b       # indented: its own line, never a continuation\n"
                "users = 0\n";
        int r = kb_config_load_string("c.conf", text, false, &c, &err);
        /* "b" on its own line is a syntax error, not a continuation of models */
        assert_int_equal(r, -EINVAL);
        assert_string_equal(err, "c.conf:10: expected 'key = value' or '[section]'");
        free(TAKE_PTR(err));

        static const char text2[] =
                "# full-line comment\n"
                "[agent] # trailing on a header\n"
                "listen = /a/b.sock#not-a-comment   # but this is\n"
                "admin = /c/d.sock ; and this\n"
                "state_dir = /var/lib/x;y\n"
                "[team:t]\r\n"
                "\tusers = 0\r\n"
                "models = *     # all\n";
        r = kb_config_load_string("c.conf", text2, false, &c, &err);
        if (r < 0)
                fail_msg("%s", strempty(err));
        assert_string_equal(c->agent.listen, "/a/b.sock#not-a-comment");
        assert_string_equal(c->agent.admin, "/c/d.sock");
        assert_string_equal(c->agent.state_dir, "/var/lib/x;y");
        assert_true(c->teams[0].models_all);
        assert_int_equal(c->teams[0].uids[0], 0);
}

struct bad_case {
        const char *text;
        const char *error;
};

#define ROUTE "[route:r]\nfamily = openai\nbase_url = https://x\n"
#define TEAM "[team:t]\nusers = 0\n"

static const struct bad_case bad_cases[] = {
        /* structure */
        { "[agent]\nlisten = /x\n[bogus]\n", "b.conf:3: unknown section [bogus]" },
        { "[foo:bar]\n", "b.conf:1: unknown section [foo:bar]" },
        { "[agent]\nlisten = /x\nlisen = /y\n", "b.conf:3: unknown key 'lisen' in [agent]" },
        { TEAM "budget = 5\n", "b.conf:3: unknown key 'budget' in [team:t]" },
        { TEAM "default_route = nowhere\n", "b.conf:3: team 't': default_route: unknown route 'nowhere'" },
        { "[route:a]\nfamily = openai\nbase_url = https://a\n[route:b]\nfamily = openai\nbase_url = https://b\n"
          "[team:t]\nusers = 0\ndefault_route = a\ndefault_route = b\n",
          "b.conf:10: team 't': a second default_route for the openai API ('a', then 'b'): give one per family" },
        { "[route:a]\nfamily = openai\nbase_url = https://a\nprice = m image=0.04 pixels=2\n",
          "b.conf:4: invalid value for 'price': unknown price field 'pixels'" },
        { ROUTE "weight = 5\n", "b.conf:4: unknown key 'weight' in [route:r]" },
        { "listen = /x\n", "b.conf:1: 'listen' outside of a section" },
        { "[agent\n", "b.conf:1: missing ']' in section header" },
        { "[agent] x\n", "b.conf:1: unexpected text after section header" },
        { "[agent]\nlisten\n", "b.conf:2: expected 'key = value' or '[section]'" },
        { "[agent]\nlisten: /x\n", "b.conf:2: expected 'key = value' or '[section]'" },
        { "[agent]\n= /x\n", "b.conf:2: expected 'key = value' or '[section]'" },
        { "[agent]\n[agent]\n", "b.conf:2: duplicate section [agent], first on line 1" },
        { TEAM "\n" TEAM, "b.conf:4: duplicate section [team:t], first on line 1" },
        { ROUTE ROUTE, "b.conf:4: duplicate section [route:r], first on line 1" },
        { "[team:]\n", "b.conf:1: empty name in section [team:]" },
        { "[route:]\n", "b.conf:1: empty name in section [route:]" },
        { "[model:]\n", "b.conf:1: empty name in section [model:]" },
        { "[team:a/b]\nusers = 0\n", "b.conf:1: invalid name in section [team:a/b]" },
        { "[agent]\nlisten = /x\nlisten = /y\n", "b.conf:3: 'listen' given twice, first on line 2" },
        { ROUTE "family = openai\n", "b.conf:4: 'family' given twice, first on line 2" },
        { "[agent]\nlisten =\n", "b.conf:2: invalid value for 'listen': empty" },
        /* numbers, sizes, durations, modes */
        { "[agent]\nmax_connections = 12x\n", "b.conf:2: invalid value for 'max_connections': '12x' is not a positive number" },
        { "[agent]\nmax_connections = 0\n", "b.conf:2: invalid value for 'max_connections': '0' is not a positive number" },
        { TEAM "requests_per_minute = -1\n", "b.conf:3: invalid value for 'requests_per_minute': '-1' is not a number" },
        { TEAM "tokens_per_day = 99999999999999999999\n", "b.conf:3: invalid value for 'tokens_per_day'" },
        { "[agent]\nmax_request_body = 32X\n", "b.conf:2: invalid value for 'max_request_body': '32X' is not a size like 32M" },
        { "[agent]\nmax_request_body = M\n", "b.conf:2: invalid value for 'max_request_body'" },
        { "[agent]\nheader_timeout = 10 parsecs\n", "b.conf:2: invalid value for 'header_timeout': '10 parsecs' is not a duration like 10s" },
        { "[agent]\nheader_timeout = 0\n", "b.conf:2: invalid value for 'header_timeout'" },
        { ROUTE "timeout = soon\n", "b.conf:4: invalid value for 'timeout'" },
        { "[agent]\nlisten_mode = 0999\n", "b.conf:2: invalid value for 'listen_mode': '0999' is not an octal mode like 0660" },
        { "[agent]\nlisten_mode = 1777\n", "b.conf:2: invalid value for 'listen_mode': '1777' is more than 0777" },
        { "[agent]\nlisten_mode = rw\n", "b.conf:2: invalid value for 'listen_mode'" },
        /* money */
        { TEAM "budget_usd_per_day = 1.1234567\n", "b.conf:3: invalid value for 'budget_usd_per_day': '1.1234567' has more than 6 decimals" },
        { TEAM "budget_usd_per_day = -5\n", "b.conf:3: invalid value for 'budget_usd_per_day': '-5' is not a USD amount like 0.15" },
        { TEAM "budget_usd_per_day = 1.\n", "b.conf:3: invalid value for 'budget_usd_per_day'" },
        { TEAM "budget_usd_per_day = 1e3\n", "b.conf:3: invalid value for 'budget_usd_per_day'" },
        { TEAM "budget_usd_per_month = 99999999999999999\n", "b.conf:3: invalid value for 'budget_usd_per_month'" },
        { ROUTE "price = m input=0.1234567\n", "b.conf:4: invalid value for 'price': '0.1234567' has more than 6 decimals" },
        { ROUTE "price = m input=abc\n", "b.conf:4: invalid value for 'price': 'abc' is not a USD amount like 0.15" },
        { ROUTE "price = m inptu=0.1\n", "b.conf:4: invalid value for 'price': unknown price field 'inptu'" },
        { ROUTE "price = m input\n", "b.conf:4: invalid value for 'price': unknown price field 'input'" },
        { ROUTE "price = m\n", "b.conf:4: invalid value for 'price': expected" },
        { ROUTE "price = input=1\n", "b.conf:4: invalid value for 'price': expected" },
        { ROUTE "price = m input=1 input=2\n", "b.conf:4: invalid value for 'price': 'input' given twice" },
        { ROUTE "price = m input=1\nprice = m output=2\n", "b.conf:5: invalid value for 'price': price for 'm' given twice, first on line 4" },
        /* routes */
        { "[route:r]\nfamily = gemini\n", "b.conf:2: invalid value for 'family': 'gemini' is not openai or anthropic" },
        { "[route:r]\nbase_url = https://x\n", "b.conf:1: route 'r': 'family' is required" },
        { "[route:r]\nfamily = openai\n", "b.conf:1: route 'r': 'base_url' is required" },
        { "[route:r]\nfamily = openai\nbase_url = ftp://x\n", "b.conf:3: invalid value for 'base_url': 'ftp://x' is not an http:// or https:// URL" },
        { "[route:r]\nfamily = openai\nbase_url = https://\n", "b.conf:3: invalid value for 'base_url'" },
        { ROUTE "auth = basic\n", "b.conf:4: invalid value for 'auth': 'basic' is not bearer, x-api-key or header:NAME" },
        { ROUTE "auth = header:\n", "b.conf:4: invalid value for 'auth'" },
        { ROUTE "auth = header:Bad(Name)\n", "b.conf:4: invalid value for 'auth'" },
        { ROUTE "header = NoColon\n", "b.conf:4: invalid value for 'header': expected 'Name: value' with a valid header name" },
        { ROUTE "header = Bad Name: x\n", "b.conf:4: invalid value for 'header': expected 'Name: value'" },
        { ROUTE "header = : x\n", "b.conf:4: invalid value for 'header': expected 'Name: value'" },
        { ROUTE "header = X-Empty:\n", "b.conf:4: invalid value for 'header': header value is empty" },
        { ROUTE "header = Host: evil\n", "b.conf:4: invalid value for 'header': header 'Host' is managed by keybroker" },
        { ROUTE "key = ../etc/passwd\n", "b.conf:4: invalid value for 'key': '../etc/passwd' is not a key name" },
        { ROUTE "key = a/b\n", "b.conf:4: invalid value for 'key'" },
        { ROUTE "key = ..\n", "b.conf:4: invalid value for 'key'" },
        /* models */
        { ROUTE "[model:m]\ntarget = nope gpt-4o\n", "b.conf:5: model 'm': unknown route 'nope'" },
        { "[model:m]\ntarget = r a\nfallback = r2 b\n" ROUTE, "b.conf:3: model 'm': unknown route 'r2'" },
        { ROUTE "[model:m]\n", "b.conf:4: model 'm' has no target" },
        { "[model:m]\nfallback = r x\n" ROUTE, "b.conf:1: model 'm' has no target" },
        { ROUTE "[model:m]\ntarget = r\n", "b.conf:5: invalid value for 'target': expected 'ROUTE UPSTREAM_MODEL [weight=N]'" },
        { ROUTE "[model:m]\ntarget = r x weight=1000001\n", "b.conf:5: invalid value for 'target': 'weight=1000001' is not weight=N" },
        { ROUTE "[model:m]\ntarget = r x weight=-1\n", "b.conf:5: invalid value for 'target'" },
        { ROUTE "[model:m]\ntarget = r x w=1\n", "b.conf:5: invalid value for 'target'" },
        { ROUTE "[model:m]\ntarget = r x weight=1 extra\n", "b.conf:5: invalid value for 'target'" },
        { ROUTE "[model:m]\ntarget = r x\nfallback = r y weight=2\n", "b.conf:6: invalid value for 'fallback': expected 'ROUTE UPSTREAM_MODEL'" },
        /* fallback, breakers, canaries */
        { ROUTE "retry_on = 399\n", "b.conf:4: invalid value for 'retry_on': '399' is not a status from 400 to 599, connect, timeout or none" },
        { ROUTE "retry_on = 503 600\n", "b.conf:4: invalid value for 'retry_on': '600' is not a status" },
        { ROUTE "retry_on = 503 connectt\n", "b.conf:4: invalid value for 'retry_on': 'connectt' is not a status" },
        { ROUTE "retry_on = none 503\n", "b.conf:4: invalid value for 'retry_on': 'none' is not a status" },
        { ROUTE "retry_on = 5xx\n", "b.conf:4: invalid value for 'retry_on'" },
        { ROUTE "retry_on = 503\nretry_on = 429\n", "b.conf:5: 'retry_on' given twice, first on line 4" },
        { ROUTE "breaker_failures = -1\n", "b.conf:4: invalid value for 'breaker_failures': '-1' is not a number from 0 to 1000000" },
        { ROUTE "breaker_failures = 1000001\n", "b.conf:4: invalid value for 'breaker_failures'" },
        { ROUTE "breaker_error_ratio = 1.5\n", "b.conf:4: invalid value for 'breaker_error_ratio': '1.5' is not a ratio from 0 to 1 like 0.5" },
        { ROUTE "breaker_error_ratio = -0.1\n", "b.conf:4: invalid value for 'breaker_error_ratio'" },
        { ROUTE "breaker_error_ratio = 50%\n", "b.conf:4: invalid value for 'breaker_error_ratio'" },
        { ROUTE "breaker_window = 0\n", "b.conf:4: invalid value for 'breaker_window': '0' is not a duration" },
        { ROUTE "breaker_window = forever\n", "b.conf:4: invalid value for 'breaker_window'" },
        { ROUTE "breaker_min_requests = 0\n", "b.conf:4: invalid value for 'breaker_min_requests': '0' is not a number from 1 to 1000000" },
        { ROUTE "breaker_cooldown = 0\n", "b.conf:4: invalid value for 'breaker_cooldown'" },
        { ROUTE "[model:m]\ntarget = r x\nmax_attempts = 0\n", "b.conf:6: invalid value for 'max_attempts': '0' is not a number from 1 to 20" },
        { ROUTE "[model:m]\ntarget = r x\nmax_attempts = 21\n", "b.conf:6: invalid value for 'max_attempts'" },
        { ROUTE "[model:m]\ntarget = r x\nretry_after_max = a while\n", "b.conf:6: invalid value for 'retry_after_max'" },
        { ROUTE "[model:m]\ntarget = r x\nretry_on = 503\n", "b.conf:6: unknown key 'retry_on' in [model:m]" },
        { ROUTE "[model:m]\ntarget = r x weight=1 rollback_on_error_ratio=2\n", "b.conf:5: invalid value for 'target': 'rollback_on_error_ratio=2' is not rollback_on_error_ratio=R with R from 0 to 1" },
        { ROUTE "[model:m]\ntarget = r x min_requests=5\n", "b.conf:5: invalid value for 'target': min_requests= needs rollback_on_error_ratio=" },
        { ROUTE "[model:m]\ntarget = r x rollback_on_error_ratio=0.1 min_requests=0\n", "b.conf:5: invalid value for 'target': 'min_requests=0' is not min_requests=N with N from 1 to 10000" },
        { ROUTE "[model:m]\ntarget = r x rollback_on_error_ratio=0.1 min_requests=10001\n", "b.conf:5: invalid value for 'target'" },
        { ROUTE "[model:m]\ntarget = r x weight=1 weight=2\n", "b.conf:5: invalid value for 'target': 'weight=2' is not weight=N, rollback_on_error_ratio=R or min_requests=N (each at most once)" },
        { ROUTE "[model:m]\ntarget = r x canary=1\n", "b.conf:5: invalid value for 'target': 'canary=1' is not weight=N" },
        { ROUTE "[model:m]\ntarget = r x\nfallback = r y rollback_on_error_ratio=0.1\n", "b.conf:6: invalid value for 'fallback': expected 'ROUTE UPSTREAM_MODEL'" },
        /* shadow = (test_playbook_keys has the route checks): sample and budget values, form */
        { ROUTE "[model:m]\ntarget = r x\nshadow = s y sample=1.01 budget_usd_per_day=1\n",
          "b.conf:6: invalid value for 'shadow': 'sample=1.01' is not sample=R" },
        { ROUTE "[model:m]\ntarget = r x\nshadow = s y sample=-0.5 budget_usd_per_day=1\n",
          "b.conf:6: invalid value for 'shadow': 'sample=-0.5' is not sample=R" },
        { ROUTE "[model:m]\ntarget = r x\nshadow = s y sample=half budget_usd_per_day=1\n",
          "b.conf:6: invalid value for 'shadow': 'sample=half' is not sample=R" },
        { ROUTE "[model:m]\ntarget = r x\nshadow = s y sample=0.5 budget_usd_per_day=-1\n",
          "b.conf:6: invalid value for 'shadow': 'budget_usd_per_day=-1' is not budget_usd_per_day=USD" },
        { ROUTE "[model:m]\ntarget = r x\nshadow = s y sample=0.5 budget_usd_per_day=0.0000001\n",
          "b.conf:6: invalid value for 'shadow': 'budget_usd_per_day=0.0000001' is not budget_usd_per_day=USD" },
        { ROUTE "[model:m]\ntarget = r x\nshadow = s y budget_usd_per_day=1 sample=1 extra\n",
          "b.conf:6: invalid value for 'shadow': expected 'ROUTE UPSTREAM_MODEL sample=R budget_usd_per_day=USD'" },
        { ROUTE "[model:m]\ntarget = r x\nshadow = s y sample=1\n",
          "b.conf:6: invalid value for 'shadow': expected 'ROUTE UPSTREAM_MODEL sample=R budget_usd_per_day=USD'" },
        { ROUTE "[model:m]\ntarget = r x\nshadow = s y sample=1 sample=1\n",
          "b.conf:6: invalid value for 'shadow': 'sample=1' is not sample=R or budget_usd_per_day=USD (each once)" },
        { ROUTE "[model:m]\ntarget = r x\nshadow = s y sample=1 rate=1\n",
          "b.conf:6: invalid value for 'shadow': 'rate=1' is not sample=R or budget_usd_per_day=USD (each once)" },
        { ROUTE "[model:m]\ntarget = r x\nshadow = s/x y sample=1 budget_usd_per_day=1\n",
          "b.conf:6: invalid value for 'shadow': 's/x' is not a route name" },
        { ROUTE "[route:s]\nfamily = openai\nbase_url = https://s\n[model:m]\ntarget = r x\n"
          "shadow = s y sample=1 budget_usd_per_day=1\nshadow = s z sample=1 budget_usd_per_day=1\n",
          "b.conf:10: 'shadow' given twice, first on line 9" },
        /* teams */
        { "[team:t]\nowner = x\n", "b.conf:1: team 't' matches nobody: give users, groups or units" },
        { "[team:t]\nmodels = *\n[agent]\n", "b.conf:1: team 't' matches nobody" },
        { "[team:t]\nusers = kb-no-such-user-xyz\n", "b.conf:2: invalid value for 'users': unknown user 'kb-no-such-user-xyz'" },
        { "[team:t]\ngroups = kb-no-such-group-xyz\n", "b.conf:2: invalid value for 'groups': unknown group 'kb-no-such-group-xyz'" },
        { "[team:t]\nusers = 4294967295\n", "b.conf:2: invalid value for 'users': unknown user '4294967295'" },
        { "[agent]\nadmin_users = kb-no-such-user-xyz\n", "b.conf:2: invalid value for 'admin_users': unknown user" },
        { "[team:t]\nunits = not a unit\n", "b.conf:2: invalid value for 'units': 'not' is not a unit name" },
        { TEAM "models = gpt-4o\n", "b.conf:3: team 't': unknown model 'gpt-4o'" },
        { TEAM "unpriced = free\n", "b.conf:3: invalid value for 'unpriced': 'free' is not deny or zero" },
};

static void test_bad(void **state) {
        for (size_t i = 0; i < ELEMENTSOF(bad_cases); i++) {
                struct kb_config *c = NULL;
                _cleanup_free_ char *err = NULL;
                int r = kb_config_load_string("b.conf", bad_cases[i].text, false, &c, &err);
                if (r != -EINVAL || !err || strncmp(err, bad_cases[i].error, strlen(bad_cases[i].error)) != 0)
                        fail_msg("case %zu: r=%d err='%s', want '%s'", i, r, strempty(err), bad_cases[i].error);
                assert_null(c);
        }
}

static void test_routing_keys(void **state) {
        struct kb_config *c = NULL;
        _cleanup_free_ char *err = NULL;
        static const char text[] =
                "[route:d]\nfamily = openai\nbase_url = https://d\n"
                "[route:r]\nfamily = openai\nbase_url = https://r\n"
                "retry_on = 500 connect 599 400\n"
                "breaker_failures = 0\n"
                "breaker_error_ratio = 0.25\n"
                "breaker_window = 1min\n"
                "breaker_min_requests = 7\n"
                "breaker_cooldown = 250ms\n"
                "[route:n]\nfamily = openai\nbase_url = https://n\nretry_on = none\n"
                "[model:m]\n"
                "target = d a\n"
                "target = r b weight=0 rollback_on_error_ratio=0.05 min_requests=50\n"
                "target = n c rollback_on_error_ratio=1 weight=3\n"
                "fallback = d z\n"
                "max_attempts = 20\n"
                "retry_after_max = 0\n"
                "[model:x]\ntarget = d a\n";

        if (kb_config_load_string("k.conf", text, false, &c, &err) < 0)
                fail_msg("%s", strempty(err));
        const struct kb_route *d = kb_config_find_route(c, "d"), *r = kb_config_find_route(c, "r"),
                              *n = kb_config_find_route(c, "n");
        /* defaults: 429 500 502 503 504 529 connect timeout */
        for (long st = 300; st < 700; st++)
                assert_int_equal(kb_route_retry_status(d, st),
                                 st == 429 || st == 500 || st == 502 || st == 503 || st == 504 || st == 529);
        assert_true(d->retry_connect && d->retry_timeout);
        assert_int_equal(d->breaker_failures, 5);
        assert_true(d->breaker_error_ratio == 0.5);
        assert_int_equal(d->breaker_window_usec, 30 * USEC_PER_SEC);
        assert_int_equal(d->breaker_min_requests, 20);
        assert_int_equal(d->breaker_cooldown_usec, 30 * USEC_PER_SEC);
        /* given */
        for (long st = 300; st < 700; st++)
                assert_int_equal(kb_route_retry_status(r, st), st == 400 || st == 500 || st == 599);
        assert_true(r->retry_connect);
        assert_false(r->retry_timeout);
        assert_int_equal(r->breaker_failures, 0);
        assert_true(r->breaker_error_ratio == 0.25);
        assert_int_equal(r->breaker_window_usec, 60 * USEC_PER_SEC);
        assert_int_equal(r->breaker_min_requests, 7);
        assert_int_equal(r->breaker_cooldown_usec, 250 * USEC_PER_MSEC);
        for (long st = 400; st < 600; st++)
                assert_false(kb_route_retry_status(n, st));
        assert_false(n->retry_connect || n->retry_timeout);
        assert_false(kb_route_retry_status(NULL, 503));

        const struct kb_model *m = kb_config_find_model(c, "m"), *x = kb_config_find_model(c, "x");
        assert_int_equal(m->max_attempts, 20);
        assert_int_equal(m->retry_after_max_usec, 0);
        assert_int_equal(x->max_attempts, 3);
        assert_int_equal(x->retry_after_max_usec, 5 * USEC_PER_SEC);
        assert_true(m->targets[0].rollback_on_error_ratio < 0);
        assert_int_equal(m->targets[0].weight, 1);
        assert_int_equal(m->targets[1].weight, 0);
        assert_true(m->targets[1].rollback_on_error_ratio == 0.05);
        assert_int_equal(m->targets[1].min_requests, 50);
        assert_int_equal(m->targets[2].weight, 3);
        assert_true(m->targets[2].rollback_on_error_ratio == 1.0);
        assert_int_equal(m->targets[2].min_requests, 20);
        assert_true(m->fallbacks[0].rollback_on_error_ratio < 0);
        kb_config_unref(c);
}

static void test_playbook_keys(void **state) {
        struct kb_config *c = NULL;
        _cleanup_free_ char *err = NULL;
        static const char text[] =
                "[route:d]\nfamily = openai\nbase_url = https://d\n"
                "owner = platform-llm\nkey_owner = secops\n"
                "status_url = https://status.example/api/v2/status.json\nstatus_ok = minor\n"
                "features = streaming tools\n"
                "[route:g]\nfamily = openai\nbase_url = https://g\n"
                "[route:a]\nfamily = anthropic\nbase_url = https://a\n"
                "[model:m]\n"
                "shadow = g gw/m-2 budget_usd_per_day=2.5 sample=0.05\n"
                "features = vision structured_output reasoning\n"
                "target = d m-1\n"
                "target = g gw/m-2 weight=0\n" /* the staged candidate may be the shadow */
                "[model:x]\ntarget = d a\n";

        if (kb_config_load_string("p.conf", text, false, &c, &err) < 0)
                fail_msg("%s", strempty(err));
        const struct kb_route *d = kb_config_find_route(c, "d"), *g = kb_config_find_route(c, "g");
        assert_string_equal(d->owner, "platform-llm");
        assert_string_equal(d->key_owner, "secops");
        assert_string_equal(d->status_url, "https://status.example/api/v2/status.json");
        assert_true(d->status_ok_minor);
        assert_int_equal(d->features, KB_FEATURE_STREAMING | KB_FEATURE_TOOLS);
        assert_null(g->owner);
        assert_null(g->status_url);
        assert_false(g->status_ok_minor);
        assert_int_equal(g->features, 0);
        const struct kb_model *m = kb_config_find_model(c, "m"), *x = kb_config_find_model(c, "x");
        assert_int_equal(m->features, KB_FEATURE_VISION | KB_FEATURE_STRUCTURED_OUTPUT | KB_FEATURE_REASONING);
        assert_non_null(m->shadow);
        assert_ptr_equal(m->shadow->route, g);
        assert_string_equal(m->shadow->upstream_model, "gw/m-2");
        assert_int_equal(m->shadow->sample_ppm, 50000);
        assert_int_equal(m->shadow->budget_microusd_per_day, 2500000);
        assert_null(x->shadow);
        for (unsigned i = 0; i < 5; i++)
                assert_non_null(kb_feature_to_string(i));
        assert_null(kb_feature_to_string(5));
        kb_config_unref(c);

        static const struct {
                const char *text, *error;
        } bad[] = {
                { "[route:r]\nfamily = openai\nbase_url = https://r\nstatus_ok = major\n",
                  "q.conf:4: invalid value for 'status_ok': 'major' is not none or minor" },
                { "[route:r]\nfamily = openai\nbase_url = https://r\nstatus_url = ftp://x\n",
                  "q.conf:4: invalid value for 'status_url': 'ftp://x' is not an http:// or https:// URL" },
                { "[route:r]\nfamily = openai\nbase_url = https://r\nfeatures = tools telepathy\n",
                  "q.conf:4: invalid value for 'features': 'telepathy' is not a feature" },
                { "[route:r]\nfamily = openai\nbase_url = https://r\nowner = \x01\n",
                  "q.conf:4: invalid value for 'owner'" },
                { "[route:r]\nfamily = openai\nbase_url = https://r\n[model:m]\ntarget = r a\nshadow = r b sample=0.1 budget_usd_per_day=1\n",
                  "q.conf:6: model 'm': shadow: route 'r' is already a target with a weight of the model" },
                { "[route:r]\nfamily = openai\nbase_url = https://r\n[route:s]\nfamily = openai\nbase_url = https://s\n"
                  "[model:m]\nshadow = s b sample=0.1 budget_usd_per_day=1\ntarget = r a\nfallback = s c\n",
                  "q.conf:8: model 'm': shadow: route 's' is already a fallback of the model" },
                { "[route:r]\nfamily = openai\nbase_url = https://r\n[route:s]\nfamily = anthropic\nbase_url = https://s\n"
                  "[model:m]\ntarget = r a\nshadow = s b sample=0.1 budget_usd_per_day=1\n",
                  "q.conf:9: model 'm': shadow: route 's' speaks the anthropic API, the model's route 'r' the openai API" },
                { "[route:r]\nfamily = openai\nbase_url = https://r\n[model:m]\ntarget = r a\nshadow = nope b sample=0.1 budget_usd_per_day=1\n",
                  "q.conf:6: model 'm': shadow: unknown route 'nope'" },
                { "[route:r]\nfamily = openai\nbase_url = https://r\n[model:m]\ntarget = r a\nshadow = r b sample=0 budget_usd_per_day=1\n",
                  "q.conf:6: invalid value for 'shadow': 'sample=0' is not sample=R with R above 0, at most 1" },
                { "[route:r]\nfamily = openai\nbase_url = https://r\n[model:m]\ntarget = r a\nshadow = r b sample=1.5 budget_usd_per_day=1\n",
                  "q.conf:6: invalid value for 'shadow': 'sample=1.5' is not sample=R" },
                { "[route:r]\nfamily = openai\nbase_url = https://r\n[model:m]\ntarget = r a\nshadow = r b sample=0.5 budget_usd_per_day=0\n",
                  "q.conf:6: invalid value for 'shadow': 'budget_usd_per_day=0' is not budget_usd_per_day=USD with USD above 0" },
                { "[route:r]\nfamily = openai\nbase_url = https://r\n[model:m]\ntarget = r a\nshadow = r b sample=0.5\n",
                  "q.conf:6: invalid value for 'shadow': expected 'ROUTE UPSTREAM_MODEL sample=R budget_usd_per_day=USD'" },
                { "[route:r]\nfamily = openai\nbase_url = https://r\n[model:m]\ntarget = r a\nshadow = r b sample=0.5 sample=0.4\n",
                  "q.conf:6: invalid value for 'shadow': 'sample=0.4' is not sample=R or budget_usd_per_day=USD (each once)" },
                { "[route:r]\nfamily = openai\nbase_url = https://r\n[model:m]\ntarget = r a\n"
                  "shadow = r b sample=0.5 budget_usd_per_day=1\nshadow = r b sample=0.5 budget_usd_per_day=1\n",
                  "q.conf:7: 'shadow' given twice, first on line 6" },
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                struct kb_config *b = NULL;
                _cleanup_free_ char *e = NULL;
                int r = kb_config_load_string("q.conf", bad[i].text, false, &b, &e);
                if (r != -EINVAL || !e || strncmp(e, bad[i].error, strlen(bad[i].error)) != 0)
                        fail_msg("case %zu: r=%d err='%s', want '%s'", i, r, strempty(e), bad[i].error);
                assert_null(b);
        }
}

static void test_line_too_long(void **state) {
        struct kb_buf b = {};
        _cleanup_free_ char *err = NULL;
        struct kb_config *c = NULL;

        assert_int_equal(kb_buf_appendf(&b, "[agent]\nlisten = /"), 0);
        for (int i = 0; i < 300; i++)
                assert_int_equal(kb_buf_append(&b, "x", 1), 0);
        assert_int_equal(kb_buf_appendf(&b, "\nadmin = /y\n"), 0);
        assert_int_equal(kb_config_load_string("l.conf", b.data, false, &c, &err), -EINVAL);
        assert_non_null(strstr(err, "l.conf:2: line too long"));
        assert_null(c);
        free(TAKE_PTR(err));

        /* A long comment does not count against the limit. */
        kb_buf_clear(&b);
        assert_int_equal(kb_buf_appendf(&b, "[agent]\nlisten = /x   # "), 0);
        for (int i = 0; i < 300; i++)
                assert_int_equal(kb_buf_append(&b, "c", 1), 0);
        assert_int_equal(kb_buf_appendf(&b, "\n"), 0);
        assert_int_equal(kb_config_load_string("l.conf", b.data, false, &c, &err), 0);
        assert_string_equal(c->agent.listen, "/x");
        kb_config_unref(c);
        kb_buf_free(&b);
}

/* made by test_check_keys, used and removed by test_load_file */
static char tmpdir[64];

static void test_check_keys(void **state) {
        _cleanup_free_ char *cfg = NULL, *keypath = NULL, *err = NULL;
        struct kb_config *c = NULL;

        kbt_mkdtemp(tmpdir, sizeof(tmpdir), "config");
        assert_true(asprintf(&keypath, "%s/openai-prod", tmpdir) > 0);
        assert_true(asprintf(&cfg,
                             "[agent]\ncredentials_dir = %s\n"
                             "[route:r]\nfamily = openai\nbase_url = https://x\nkey = openai-prod\n"
                             "[route:s]\nfamily = anthropic\nbase_url = https://y\nkey = anthropic-prod\n",
                             tmpdir) > 0);
        kbt_write_text(keypath, "sk-test\n");

        /* Without the check, a missing key is the daemon's business (503). */
        assert_int_equal(kb_config_load_string("k.conf", cfg, false, &c, &err), 0);
        c = kb_config_unref(c);

        assert_int_equal(kb_config_load_string("k.conf", cfg, true, &c, &err), -EINVAL);
        _cleanup_free_ char *want = NULL;
        assert_true(asprintf(&want, "k.conf:10: route 's': key 'anthropic-prod' not found in credentials_dir (%s)",
                             tmpdir) > 0);
        assert_string_equal(err, want);
        free(TAKE_PTR(err));

        _cleanup_free_ char *keypath2 = NULL;
        assert_true(asprintf(&keypath2, "%s/anthropic-prod", tmpdir) > 0);
        assert_int_equal(mkdir(keypath2, 0700), 0); /* a directory is no key */
        assert_int_equal(kb_config_load_string("k.conf", cfg, true, &c, &err), -EINVAL);
        free(TAKE_PTR(err));
        assert_int_equal(rmdir(keypath2), 0);

        kbt_write_text(keypath2, "sk-ant\n");
        assert_int_equal(kb_config_load_string("k.conf", cfg, true, &c, &err), 0);
        assert_string_equal(c->routes[1].key, "anthropic-prod");
        c = kb_config_unref(c);

        /* No credentials_dir at all. */
        assert_int_equal(unsetenv("CREDENTIALS_DIRECTORY"), 0);
        assert_int_equal(kb_config_load_string("k.conf", ROUTE "key = k\n", true, &c, &err), -EINVAL);
        assert_string_equal(err, "k.conf:4: route 'r': key 'k' not found in credentials_dir (unset)");

        unlink(keypath);
        unlink(keypath2);
}

static void test_load_file(void **state) {
        _cleanup_free_ char *path = NULL, *err = NULL;
        struct kb_config *c = NULL;

        assert_true(asprintf(&path, "%s/kb.conf", tmpdir) > 0);
        assert_int_equal(kb_config_load(path, false, &c, &err), -ENOENT);
        assert_non_null(err);
        _cleanup_free_ char *want = NULL;
        assert_true(asprintf(&want, "%s: cannot open: %s", path, strerror(ENOENT)) > 0);
        assert_string_equal(err, want);
        free(TAKE_PTR(err));

        kbt_write_text(path, "[team:x]\nusers = 0\nmodels = m\n");
        assert_int_equal(kb_config_load(path, false, &c, &err), -EINVAL);
        free(TAKE_PTR(want));
        assert_true(asprintf(&want, "%s:3: team 'x': unknown model 'm'", path) > 0);
        assert_string_equal(err, want);
        free(TAKE_PTR(err));

        kbt_write_text(path, full_config);
        assert_int_equal(kb_config_load(path, false, &c, &err), 0);
        assert_string_equal(c->path, path);
        assert_int_equal(c->n_routes, 3);
        c = kb_config_unref(c);

        /* A directory, and a file that is too large. */
        assert_int_equal(kb_config_load(tmpdir, false, &c, &err), -EINVAL);
        assert_non_null(strstr(err, "not a regular file"));
        free(TAKE_PTR(err));
        int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, 5 * 1024 * 1024), 0);
        close(fd);
        assert_int_equal(kb_config_load(path, false, &c, &err), -EFBIG);
        assert_non_null(strstr(err, "too large"));
        free(TAKE_PTR(err));

        /* NUL bytes in the file. */
        kbt_write_file(path, "[agent]\n\0x", 10);
        assert_int_equal(kb_config_load(path, false, &c, &err), -EINVAL);
        assert_non_null(strstr(err, "NUL"));
        assert_null(c);
        (void) kbt_rm_rf(tmpdir);
}

static void test_family(void **state) {
        assert_string_equal(kb_family_to_string(KB_FAMILY_OPENAI), "openai");
        assert_string_equal(kb_family_to_string(KB_FAMILY_ANTHROPIC), "anthropic");
        assert_null(kb_family_to_string(_KB_FAMILY_MAX));
        assert_int_equal(kb_family_from_string("openai"), KB_FAMILY_OPENAI);
        assert_int_equal(kb_family_from_string("anthropic"), KB_FAMILY_ANTHROPIC);
        assert_int_equal(kb_family_from_string("OpenAI"), -EINVAL);
        assert_int_equal(kb_family_from_string(""), -EINVAL);
        assert_int_equal(kb_family_from_string(NULL), -EINVAL);
        assert_null(kb_config_unref(NULL));
        assert_null(kb_config_ref(NULL));
        assert_null(kb_config_find_team(NULL, "x"));
        assert_false(kb_team_allows_model(NULL, "x"));
}

/* Many sections and list items: exercises array growth. */
static void test_many(void **state) {
        struct kb_buf b = {};
        struct kb_config *c = NULL;
        _cleanup_free_ char *err = NULL;

        assert_int_equal(kb_buf_appendf(&b, ROUTE "[team:t]\n"), 0);
        for (int i = 0; i < 1000; i++)
                assert_int_equal(kb_buf_appendf(&b, "users = %d %d\n", 2 * i, 2 * i + 1), 0);
        for (int i = 0; i < 300; i++)
                assert_int_equal(kb_buf_appendf(&b, "models = m%d\n", i), 0);
        for (int i = 0; i < 300; i++)
                assert_int_equal(kb_buf_appendf(&b, "[model:m%d]\ntarget = r up%d weight=%d\n", i, i, i), 0);
        int r = kb_config_load_string("many.conf", b.data, false, &c, &err);
        if (r < 0)
                fail_msg("%s", strempty(err));
        assert_int_equal(c->teams[0].n_uids, 2000);
        for (unsigned i = 0; i < 2000; i++)
                assert_int_equal(c->teams[0].uids[i], i);
        assert_int_equal(c->n_models, 300);
        assert_int_equal(c->models[299].targets[0].weight, 299);
        assert_ptr_equal(c->models[299].targets[0].route, &c->routes[0]);
        assert_string_equal(c->teams[0].models[150], "m150");
        kb_config_unref(c);
        kb_buf_free(&b);
}

static void test_store_url(void **state) {
        struct kb_store_addr a;
        const char *why;

        assert_int_equal(kb_cfg_parse_store_url("redis://127.0.0.1:6379", &a, &why), 0);
        assert_string_equal(a.host, "127.0.0.1");
        assert_int_equal(a.port, 6379);
        assert_int_equal(a.db, 0);
        assert_null(a.path);
        free(a.host);
        assert_int_equal(kb_cfg_parse_store_url("redis://[::1]:7000/12", &a, &why), 0);
        assert_string_equal(a.host, "::1");
        assert_int_equal(a.port, 7000);
        assert_int_equal(a.db, 12);
        free(a.host);
        assert_int_equal(kb_cfg_parse_store_url("redis://localhost:1", &a, &why), 0);
        assert_string_equal(a.host, "127.0.0.1");
        free(a.host);
        assert_int_equal(kb_cfg_parse_store_url("unix:/run/redis.sock?db=3", &a, &why), 0);
        assert_string_equal(a.path, "/run/redis.sock");
        assert_null(a.host);
        assert_int_equal(a.db, 3);
        free(a.path);
        assert_int_equal(kb_cfg_parse_store_url("unix:/run/redis.sock", &a, &why), 0);
        assert_int_equal(a.db, 0);
        free(a.path);

        static const char *const bad[] = {
                "", "redis://", "redis://127.0.0.1", "redis://127.0.0.1:", "redis://127.0.0.1:0",
                "redis://127.0.0.1:65536", "redis://127.0.0.1:-1", "redis://127.0.0.1:+1", "redis://127.0.0.1:6379/",
                "redis://127.0.0.1:6379/x", "redis://127.0.0.1:6379/-1", "redis://127.0.0.1:6379?x", "redis://h:6379",
                "redis://[::1]6379", "redis://::1:6379", "redis://user:pw@127.0.0.1:6379", "rediss://127.0.0.1:6379",
                "http://127.0.0.1:6379", "unix:", "unix:run/x", "unix:/x?db=", "unix:/x?db=a", "unix:/x?pw=1",
                "tcp://127.0.0.1:6379",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                why = NULL;
                if (kb_cfg_parse_store_url(bad[i], &a, &why) != -EINVAL)
                        fail_msg("quota_store '%s' should be refused", bad[i]);
                assert_non_null(why);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_full),
                cmocka_unit_test(test_defaults),
                cmocka_unit_test(test_comments),
                cmocka_unit_test(test_bad),
                cmocka_unit_test(test_routing_keys),
                cmocka_unit_test(test_playbook_keys),
                cmocka_unit_test(test_line_too_long),
                cmocka_unit_test(test_check_keys),
                cmocka_unit_test(test_load_file),
                cmocka_unit_test(test_family),
                cmocka_unit_test(test_many),
                cmocka_unit_test(test_store_url),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
