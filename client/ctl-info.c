/* SPDX-License-Identifier: MIT */
/* keybrokerctl status, team list, route list, reload */

#include <time.h>

#include "ctl.h"
#include "util.h"

#define OOM()                                                           \
        ({                                                              \
                fprintf(stderr, "keybrokerctl: out of memory\n");       \
                CTL_EXIT_ERROR;                                         \
        })

static void help_status(void) {
        printf("Usage: keybrokerctl [--admin-socket PATH] [--json] status\n"
               "\n"
               "keybrokerd's version, pid, start time and uptime, config file, requests\n"
               "served and in flight, open connections, connections refused (by reason:\n"
               "max_connections, max_connections_per_uid, out_of_fds, identity) and those\n"
               "still being refused, upstream calls and connections (pending should be 0),\n"
               "file descriptors open and the limit, journal records written and dropped,\n"
               "and whether the process is dumpable / may write a core.\n");
}

static void help_team(void) {
        printf("Usage: keybrokerctl [OPTIONS] team list\n"
               "\n"
               "Commands:\n"
               "  list    teams: members (users, groups, units), models, limits, owner\n");
}

static void help_team_list(void) {
        printf("Usage: keybrokerctl [--admin-socket PATH] [--json] team list\n"
               "\n"
               "Teams of the running config: NAME, MEMBERS (uid:, gid:, unit:), MODELS,\n"
               "LIMITS (rpm, tpm, tpd, usd/day, usd/month, concurrent) and OWNER.\n"
               "\n"
               "Then their usage now, as USED/LIMIT (just USED without a limit; \"(+N)\"\n"
               "is held by calls in flight): RPM and TPM (sliding minute), TOKENS TODAY,\n"
               "USD TODAY (UTC day), USD MONTH (UTC month), IN FLIGHT (/max_concurrent)\n"
               "and MINUTE RESET (when the minute windows are empty again), followed by\n"
               "when the day and month windows reset.\n"
               "\n"
               "COUNTED says whose usage that is: \"fleet\" for a team counted in the\n"
               "quota store (every broker sharing it, as read at the last heartbeat),\n"
               "with THIS HOST's part of it (rpm, tokens today, USD this month); \"host\"\n"
               "for a team counted on this host only (quota_scope = host, no store, or\n"
               "the store offline).\n");
}

static void help_route(void) {
        printf("Usage: keybrokerctl [OPTIONS] route list\n"
               "       keybrokerctl [OPTIONS] route check NAME [--model M] [--only|--skip CHECK...]\n"
               "\n"
               "Commands:\n"
               "  list    routes: family, base URL, key, auth, circuit, error ratio, p50\n"
               "          latency, targets and their weights\n"
               "  check   run the ten-point preflight against a live route (model, endpoint,\n"
               "          features, usage, pricing, status, failures, fallback, owner, rollback)\n");
}

static void help_route_list(void) {
        printf("Usage: keybrokerctl [--admin-socket PATH] [--json] route list\n"
               "\n"
               "Routes of the running config: NAME, FAMILY, BASE URL, KEY (name@version,\n"
               "or \"name (missing)\" when no version of it is held), AUTH, CIRCUIT\n"
               "(closed, open, half_open), ERRORS (error ratio of the attempts in the\n"
               "breaker window, \"-\" without any), P50 (median time to response headers\n"
               "of recent attempts) and TARGETS (model->upstream model, \"wN\" for a\n"
               "weight other than 1, \"wN (config M)\" when a split or a canary rollback\n"
               "overrides the config, \"fallback\").\n");
}

static void help_reload(void) {
        printf("Usage: keybrokerctl [--admin-socket PATH] [--json] reload\n"
               "\n"
               "Re-read the config file and the keystore. Requests in flight keep the\n"
               "config they started with. A bad config is rejected with its FILE:LINE\n"
               "reason and the running config stays.\n");
}

/* "3d 4h 5m 6s", leading zero units dropped. */
/* "what=N, what=N, …" for the members of a JSON object of counts, in
 * the order the daemon sent them; "-" when absent. */
static void format_counts(const json_t *o, char *buf, size_t size) {
        const char *k;
        json_t *v;
        size_t n = 0;

        buf[0] = 0;
        json_object_foreach((json_t *) o, k, v) {
                char val[32];
                ctl_json_scalar(v, val, sizeof(val));
                int w = snprintf(buf + n, size - n, "%s%s %s", n ? ", " : "", k, val);
                if (w < 0 || (size_t) w >= size - n)
                        break;
                n += (size_t) w;
        }
        if (n == 0)
                snprintf(buf, size, "-");
}

/* "none (limits per host)", "connected to URL since T, N brokers, rtt p50 X
 * ms p99 Y ms" or "offline since T: REASON". */
static void format_store(const json_t *o, char *buf, size_t size) {
        char since[64], url[256], reason[200];

        if (!json_is_object(o)) {
                snprintf(buf, size, "none (limits counted per host)");
                return;
        }
        const char *state = json_string_value(json_object_get(o, "state"));
        ctl_format_time(json_string_value(json_object_get(o, "since")), since, sizeof(since));
        ctl_json_scalar(json_object_get(o, "url"), url, sizeof(url));
        json_int_t queued = json_integer_value(json_object_get(o, "settles_queued"));
        char q[64] = "";
        if (queued > 0)
                snprintf(q, sizeof(q), ", %" JSON_INTEGER_FORMAT " settle(s) to send", queued);
        if (state && streq(state, "connected"))
                snprintf(buf, size, "connected to %s since %s, %" JSON_INTEGER_FORMAT " broker(s), rtt p50 %.2f ms, p99 %.2f ms%s",
                         url, since, json_integer_value(json_object_get(o, "brokers")),
                         json_number_value(json_object_get(o, "rtt_p50_ms")),
                         json_number_value(json_object_get(o, "rtt_p99_ms")), q);
        else {
                ctl_json_scalar(json_object_get(o, "reason"), reason, sizeof(reason));
                snprintf(buf, size, "%s %s since %s: %.150s%s", state ? state : "?", url, since, reason, q);
        }
}

static void format_uptime(json_int_t s, char *buf, size_t size) {
        if (s < 0) {
                snprintf(buf, size, "-");
                return;
        }
        json_int_t d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60, sec = s % 60;
        if (d)
                snprintf(buf, size, "%" JSON_INTEGER_FORMAT "d %" JSON_INTEGER_FORMAT "h %" JSON_INTEGER_FORMAT
                         "m %" JSON_INTEGER_FORMAT "s", d, h, m, sec);
        else if (h)
                snprintf(buf, size, "%" JSON_INTEGER_FORMAT "h %" JSON_INTEGER_FORMAT "m %" JSON_INTEGER_FORMAT "s",
                         h, m, sec);
        else if (m)
                snprintf(buf, size, "%" JSON_INTEGER_FORMAT "m %" JSON_INTEGER_FORMAT "s", m, sec);
        else
                snprintf(buf, size, "%" JSON_INTEGER_FORMAT "s", sec);
}

int ctl_cmd_status(const struct ctl *ctl, int argc, char **argv) {
        _cleanup_json_ json_t *j = NULL;
        int optind_, r;

        r = ctl_parse_help_only(argc, argv, "status", help_status, &optind_);
        if (r >= 0)
                return r;
        if (optind_ < argc)
                return ctl_extra_argument("status");
        if (ctl_request(ctl, "GET", "/status", NULL, NULL, &j) < 0)
                return CTL_EXIT_ERROR;
        if (ctl->json)
                return ctl_print_json(j) < 0 ? CTL_EXIT_ERROR : CTL_EXIT_OK;

        const json_t *journal = json_object_get(j, "journal");
        char version[64], pid[32], started[64], uptime[64], config[4096], served[32], in_flight[32], conns[32],
                written[32], dropped[32], dumpable[8], core[32];
        json_t *up = json_object_get(j, "uptime_s");

        ctl_json_scalar(json_object_get(j, "version"), version, sizeof(version));
        ctl_json_scalar(json_object_get(j, "pid"), pid, sizeof(pid));
        ctl_format_time(json_string_value(json_object_get(j, "started")), started, sizeof(started));
        if (json_is_integer(up))
                format_uptime(json_integer_value(up), uptime, sizeof(uptime));
        else
                snprintf(uptime, sizeof(uptime), "-");
        ctl_json_scalar(json_object_get(j, "config"), config, sizeof(config));
        ctl_json_scalar(json_object_get(j, "requests_served"), served, sizeof(served));
        ctl_json_scalar(json_object_get(j, "in_flight"), in_flight, sizeof(in_flight));
        ctl_json_scalar(json_object_get(j, "connections"), conns, sizeof(conns));
        ctl_json_scalar(json_object_get(journal, "written"), written, sizeof(written));
        ctl_json_scalar(json_object_get(journal, "dropped"), dropped, sizeof(dropped));
        ctl_json_scalar(json_object_get(j, "dumpable"), dumpable, sizeof(dumpable));
        ctl_json_scalar(json_object_get(j, "core_limit"), core, sizeof(core));

        char refusing[32], refused[256], upstream[256], fds[128], store[1024];
        format_store(json_object_get(j, "quota_store"), store, sizeof(store));
        ctl_json_scalar(json_object_get(j, "refusing"), refusing, sizeof(refusing));
        format_counts(json_object_get(j, "refused"), refused, sizeof(refused));
        format_counts(json_object_get(j, "upstream"), upstream, sizeof(upstream));
        format_counts(json_object_get(j, "fds"), fds, sizeof(fds));

        const char *const keys[] = {
                "version", "pid", "started", "uptime", "config", "requests served", "in flight",
                "connections", "refusing now", "refused", "upstream", "file descriptors", "quota store",
                "journal written", "journal dropped", "dumpable", "core limit",
        };
        const char *const values[] = {
                version, pid, started, uptime, config, served, in_flight,
                conns, refusing, refused, upstream, fds, store,
                written, dropped, dumpable, core,
        };
        ctl_print_kv(stdout, keys, values, ELEMENTSOF(keys));
        return CTL_EXIT_OK;
}

/* Append "sep" + s to b. */
static int append_item(struct kb_buf *b, const char *sep, const char *s) {
        if (b->len && kb_buf_append(b, sep, strlen(sep)) < 0)
                return -ENOMEM;
        return kb_buf_append(b, s, strlen(s));
}

/* "uid:0,1001" — at most show items, then "+N". */
static int append_list(struct kb_buf *b, const char *label, const json_t *arr, size_t show) {
        const json_t *v;
        size_t i;
        char item[256];

        if (json_array_size(arr) == 0)
                return 0;
        if (append_item(b, " ", label) < 0)
                return -ENOMEM;
        json_array_foreach(arr, i, v) {
                if (i == show)
                        return kb_buf_appendf(b, ",+%zu", json_array_size(arr) - show);
                ctl_json_scalar(v, item, sizeof(item));
                if ((i && kb_buf_append(b, ",", 1) < 0) || kb_buf_append(b, item, strlen(item)) < 0)
                        return -ENOMEM;
        }
        return 0;
}

/* "50.000000" → "50", "0.250000" → "0.25" */
static void trim_decimal(const char *s, char *buf, size_t size) {
        snprintf(buf, size, "%s", s);
        if (!strchr(buf, '.'))
                return;
        size_t n = strlen(buf);
        while (n > 0 && buf[n - 1] == '0')
                buf[--n] = 0;
        if (n > 0 && buf[n - 1] == '.')
                buf[--n] = 0;
}

static int limits_text(const json_t *limits, struct kb_buf *b) {
        static const struct {
                const char *field, *label;
        } map[] = {
                { "requests_per_minute", "rpm" },
                { "tokens_per_minute", "tpm" },
                { "tokens_per_day", "tpd" },
                { "budget_usd_per_day", "usd/day" },
                { "budget_usd_per_month", "usd/month" },
                { "max_concurrent", "concurrent" },
        };

        for (size_t i = 0; i < ELEMENTSOF(map); i++) {
                const json_t *v = json_object_get(limits, map[i].field);
                char val[64], trimmed[64];

                if (!v || json_is_null(v))
                        continue;
                ctl_json_scalar(v, val, sizeof(val));
                trim_decimal(val, trimmed, sizeof(trimmed));
                if (b->len && kb_buf_append(b, " ", 1) < 0)
                        return -ENOMEM;
                if (kb_buf_appendf(b, "%s=%s", map[i].label, json_is_string(v) ? trimmed : val) < 0)
                        return -ENOMEM;
        }
        return 0;
}

/* ---- usage ---- */

static bool iso_to_time(const char *iso, time_t *ret) {
        struct tm tm = {};
        const char *end;

        if (!iso || !(end = strptime(iso, "%Y-%m-%dT%H:%M:%S", &tm)) || !streq(end, "Z"))
                return false;
        time_t t = timegm(&tm);
        if (t == (time_t) -1)
                return false;
        *ret = t;
        return true;
}

/* A window's "used" or "limit" as text: budgets trimmed ("0.25"), "-" when
 * absent. */
static void amount_text(const json_t *v, char *buf, size_t size) {
        char raw[64];

        ctl_json_scalar(v, raw, sizeof(raw));
        if (json_is_string(v))
                trim_decimal(raw, buf, size);
        else
                snprintf(buf, size, "%s", raw);
}

/* "USED/LIMIT", "USED" without a limit, " (+RESERVED)" when calls in flight
 * hold some; "-" when the daemon did not say. */
static int window_text(const json_t *w, char **ret) {
        const json_t *limit = json_object_get(w, "limit"), *reserved = json_object_get(w, "reserved");
        char used[64], max[64], held[64];
        bool has_limit = limit && !json_is_null(limit), has_held;
        char *s;

        if (!json_is_object(w))
                s = strdup("-");
        else {
                amount_text(json_object_get(w, "used"), used, sizeof(used));
                amount_text(limit, max, sizeof(max));
                amount_text(reserved, held, sizeof(held));
                has_held = (json_is_integer(reserved) && json_integer_value(reserved) > 0) ||
                           (json_is_string(reserved) && !streq(held, "0"));
                if (asprintf(&s, "%s%s%s%s%s%s", used, has_limit ? "/" : "", has_limit ? max : "",
                             has_held ? " (+" : "", has_held ? held : "", has_held ? ")" : "") < 0)
                        s = NULL;
        }
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

/* Seconds until the later of the two minute windows is empty, "-" when
 * nothing is counted in them. */
static void minute_reset_text(const json_t *usage, time_t now, char *buf, size_t size) {
        static const char *const windows[] = { "requests_per_minute", "tokens_per_minute" };
        time_t latest = 0;

        for (size_t i = 0; i < ELEMENTSOF(windows); i++) {
                time_t t;
                if (iso_to_time(json_string_value(json_object_get(json_object_get(usage, windows[i]), "reset")),
                                &t) && t > latest)
                        latest = t;
        }
        if (latest == 0)
                snprintf(buf, size, "-");
        else
                snprintf(buf, size, "%llds", (long long) (latest > now ? latest - now : 0));
}

static int usage_row(struct ctl_table *t, const json_t *team, time_t now) {
        static const char *const windows[] = {
                "requests_per_minute", "tokens_per_minute", "tokens_per_day", "budget_usd_per_day",
                "budget_usd_per_month",
        };
        const json_t *usage = json_object_get(team, "usage");
        const json_t *conc = json_object_get(json_object_get(usage, "max_concurrent"), "limit");
        char *cells[ELEMENTSOF(windows)] = {};
        char in_flight[64], max[64], reset[64];
        _cleanup_free_ char *flight = NULL;
        int r = 0;

        for (size_t i = 0; r >= 0 && i < ELEMENTSOF(windows); i++)
                r = window_text(json_object_get(usage, windows[i]), &cells[i]);
        ctl_json_scalar(json_object_get(team, "in_flight"), in_flight, sizeof(in_flight));
        ctl_json_scalar(conc, max, sizeof(max));
        if (r >= 0 && asprintf(&flight, "%s%s%s", in_flight, json_is_integer(conc) ? "/" : "",
                               json_is_integer(conc) ? max : "") < 0) {
                flight = NULL;
                r = -ENOMEM;
        }
        minute_reset_text(usage, now, reset, sizeof(reset));
        /* A fleet team's usage is the fleet's; what this host did of it: */
        const char *scope = json_string_value(json_object_get(team, "usage_scope")) ?: "host";
        const json_t *host = json_object_get(team, "host_usage");
        char share[256] = "-", rpm[64], tok[64], usd[64];
        if (streq(scope, "fleet") && json_is_object(host)) {
                amount_text(json_object_get(json_object_get(host, "requests_per_minute"), "used"), rpm, sizeof(rpm));
                amount_text(json_object_get(json_object_get(host, "tokens_per_day"), "used"), tok, sizeof(tok));
                amount_text(json_object_get(json_object_get(host, "budget_usd_per_month"), "used"), usd, sizeof(usd));
                snprintf(share, sizeof(share), "%s rpm, %s tok today, $%s month", rpm, tok, usd);
        }
        if (r >= 0) {
                const char *row[] = {
                        json_string_value(json_object_get(team, "name")), scope, cells[0], cells[1], cells[2],
                        cells[3], cells[4], flight, reset, share,
                };
                r = ctl_table_add_row(t, row);
        }
        for (size_t i = 0; i < ELEMENTSOF(cells); i++)
                free(cells[i]);
        return r;
}

/* The usage table, then the day/month reset times (the same for every team:
 * the windows are calendar UTC). */
static int print_usage(const json_t *teams) {
        static const char *const headers[] = {
                "TEAM", "COUNTED", "RPM", "TPM", "TOKENS TODAY", "USD TODAY", "USD MONTH", "IN FLIGHT", "MINUTE RESET",
                "THIS HOST",
        };
        _cleanup_table_ struct ctl_table *t = ctl_table_new(headers, ELEMENTSOF(headers));
        const char *day = NULL, *month = NULL;
        const json_t *team;
        time_t now = time(NULL);
        size_t i;

        if (!t)
                return -ENOMEM;
        json_array_foreach(teams, i, team) {
                const json_t *usage = json_object_get(team, "usage");
                if (!json_is_object(usage))
                        continue;
                if (usage_row(t, team, now) < 0)
                        return -ENOMEM;
                day = day ?: json_string_value(json_object_get(json_object_get(usage, "tokens_per_day"), "reset"));
                month = month ?: json_string_value(
                                         json_object_get(json_object_get(usage, "budget_usd_per_month"), "reset"));
        }
        if (ctl_table_rows(t) == 0)
                return 0;
        printf("\n");
        ctl_table_print(t, stdout);
        if (day || month) {
                char d[64], m[64];
                printf("\nDay windows reset at %s, month windows at %s.\n", ctl_format_time(day, d, sizeof(d)),
                       ctl_format_time(month, m, sizeof(m)));
        }
        return 0;
}

/* "NOUN list", whose only option is --help: returns an exit code when done
 * (help, usage error, --json printed, request failed), or -1 with the
 * daemon's answer in *ret for the caller's table. */
static int list_command(const struct ctl *ctl, int argc, char **argv, const char *noun, void (*help)(void),
                        void (*help_list)(void), const char *path, json_t **ret) {
        char cmd[32];
        int optind_, r;

        snprintf(cmd, sizeof(cmd), "%s list", noun);
        if (argc < 2)
                return ctl_usage_error(noun, "missing command; see keybrokerctl %s --help", noun);
        if (streq(argv[1], "-h") || streq(argv[1], "--help") || streq(argv[1], "help")) {
                help();
                return CTL_EXIT_OK;
        }
        if (!streq(argv[1], "list"))
                return ctl_usage_error(noun, "unknown command '%s'; see keybrokerctl %s --help", argv[1], noun);
        r = ctl_parse_help_only(argc - 1, argv + 1, cmd, help_list, &optind_);
        if (r >= 0)
                return r;
        if (optind_ < argc - 1)
                return ctl_extra_argument(cmd);

        if (ctl_request(ctl, "GET", path, NULL, NULL, ret) < 0)
                return CTL_EXIT_ERROR;
        if (ctl->json)
                return ctl_print_json(*ret) < 0 ? CTL_EXIT_ERROR : CTL_EXIT_OK;
        return -1;
}

int ctl_cmd_team(const struct ctl *ctl, int argc, char **argv) {
        static const char *const headers[] = { "NAME", "MEMBERS", "MODELS", "LIMITS", "OWNER" };
        _cleanup_json_ json_t *j = NULL;
        _cleanup_table_ struct ctl_table *t = NULL;
        const json_t *team;
        size_t i;
        int r;

        r = list_command(ctl, argc, argv, "team", help_team, help_team_list, "/teams", &j);
        if (r >= 0)
                return r;

        t = ctl_table_new(headers, ELEMENTSOF(headers));
        if (!t)
                return OOM();
        json_array_foreach(json_object_get(j, "teams"), i, team) {
                struct kb_buf members = {}, models = {}, limits = {};
                const json_t *m;
                size_t k;

                r = append_list(&members, "uid:", json_object_get(team, "users"), 4);
                if (r >= 0)
                        r = append_list(&members, "gid:", json_object_get(team, "groups"), 4);
                if (r >= 0)
                        r = append_list(&members, "unit:", json_object_get(team, "units"), 2);
                json_array_foreach(json_object_get(team, "models"), k, m) {
                        if (r < 0)
                                break;
                        if (k == 6) {
                                r = kb_buf_appendf(&models, ",+%zu",
                                                   json_array_size(json_object_get(team, "models")) - 6);
                                break;
                        }
                        r = append_item(&models, ",", json_string_value(m) ?: "?");
                }
                if (r >= 0)
                        r = limits_text(json_object_get(team, "limits"), &limits);
                if (r >= 0) {
                        const char *row[] = {
                                json_string_value(json_object_get(team, "name")), members.data, models.data,
                                limits.data, json_string_value(json_object_get(team, "owner")),
                        };
                        r = ctl_table_add_row(t, row);
                }
                kb_buf_free(&members);
                kb_buf_free(&models);
                kb_buf_free(&limits);
                if (r < 0)
                        return OOM();
        }
        if (ctl_table_rows(t) == 0) {
                printf("No teams configured.\n");
                return CTL_EXIT_OK;
        }
        ctl_table_print(t, stdout);
        if (print_usage(json_object_get(j, "teams")) < 0)
                return OOM();
        return CTL_EXIT_OK;
}

/* "gpt-mini->gpt-4o-mini w90, gpt-mini->gpt-4o fallback"; weight 1 (the
 * default) is not shown. */
static int targets_text(const json_t *targets, struct kb_buf *b) {
        const json_t *tg;
        size_t i;

        json_array_foreach(targets, i, tg) {
                const char *model = json_string_value(json_object_get(tg, "model")) ?: "?";
                const char *up = json_string_value(json_object_get(tg, "upstream_model")) ?: "?";
                const char *role = json_string_value(json_object_get(tg, "role"));
                const json_t *w = json_object_get(tg, "weight");

                if (i == 8)
                        return kb_buf_appendf(b, ", +%zu", json_array_size(targets) - 8);
                if (kb_buf_appendf(b, "%s%s->%s", i ? ", " : "", model, up) < 0)
                        return -ENOMEM;
                const json_t *eff = json_object_get(tg, "effective_weight");
                if (streq_ptr(role, "fallback")) {
                        if (kb_buf_appendf(b, " fallback") < 0)
                                return -ENOMEM;
                } else if (json_is_true(json_object_get(tg, "overridden")) && json_is_integer(eff)) {
                        if (kb_buf_appendf(b, " w%" JSON_INTEGER_FORMAT " (config %" JSON_INTEGER_FORMAT ")",
                                           json_integer_value(eff), json_integer_value(w)) < 0)
                                return -ENOMEM;
                } else if (json_is_integer(w) && json_integer_value(w) != 1 &&
                           kb_buf_appendf(b, " w%" JSON_INTEGER_FORMAT, json_integer_value(w)) < 0)
                        return -ENOMEM;
        }
        return 0;
}

int ctl_cmd_route(const struct ctl *ctl, int argc, char **argv) {
        static const char *const headers[] = { "NAME", "FAMILY", "BASE URL", "KEY", "AUTH", "CIRCUIT", "ERRORS",
                                               "P50", "TARGETS" };
        _cleanup_json_ json_t *j = NULL;
        _cleanup_table_ struct ctl_table *t = NULL;
        const json_t *route;
        size_t i;
        int r;

        r = list_command(ctl, argc, argv, "route", help_route, help_route_list, "/routes", &j);
        if (r >= 0)
                return r;

        t = ctl_table_new(headers, ELEMENTSOF(headers));
        if (!t)
                return OOM();
        json_array_foreach(json_object_get(j, "routes"), i, route) {
                const char *key = json_string_value(json_object_get(route, "key"));
                const json_t *kv = json_object_get(route, "key_version");
                _cleanup_free_ char *keytext = NULL;
                struct kb_buf targets = {};

                if (key && json_is_integer(kv))
                        r = asprintf(&keytext, "%s@%" JSON_INTEGER_FORMAT, key, json_integer_value(kv));
                else if (key)
                        r = asprintf(&keytext, "%s (missing)", key);
                else
                        r = asprintf(&keytext, "-");
                if (r < 0) {
                        keytext = NULL;
                        return OOM();
                }
                r = targets_text(json_object_get(route, "targets"), &targets);
                char errors[32] = "-", p50[32] = "-";
                const json_t *ratio = json_object_get(route, "error_ratio"), *lat = json_object_get(route, "p50_latency_ms");
                if (json_is_number(ratio))
                        snprintf(errors, sizeof(errors), "%.2f", json_number_value(ratio));
                if (json_is_integer(lat))
                        snprintf(p50, sizeof(p50), "%" JSON_INTEGER_FORMAT "ms", json_integer_value(lat));
                if (r >= 0) {
                        const char *row[] = {
                                json_string_value(json_object_get(route, "name")),
                                json_string_value(json_object_get(route, "family")),
                                json_string_value(json_object_get(route, "base_url")),
                                keytext,
                                json_string_value(json_object_get(route, "auth")),
                                json_string_value(json_object_get(route, "circuit")),
                                errors,
                                p50,
                                targets.data,
                        };
                        r = ctl_table_add_row(t, row);
                }
                kb_buf_free(&targets);
                if (r < 0)
                        return OOM();
        }
        if (ctl_table_rows(t) == 0) {
                printf("No routes configured.\n");
                return CTL_EXIT_OK;
        }
        ctl_table_print(t, stdout);
        return CTL_EXIT_OK;
}

int ctl_cmd_reload(const struct ctl *ctl, int argc, char **argv) {
        _cleanup_json_ json_t *j = NULL;
        int optind_, r;

        r = ctl_parse_help_only(argc, argv, "reload", help_reload, &optind_);
        if (r >= 0)
                return r;
        if (optind_ < argc)
                return ctl_extra_argument("reload");
        if (ctl_request(ctl, "POST", "/reload", NULL, NULL, &j) < 0)
                return CTL_EXIT_ERROR;
        if (ctl->json)
                return ctl_print_json(j) < 0 ? CTL_EXIT_ERROR : CTL_EXIT_OK;
        printf("reloaded %s\n", json_string_value(json_object_get(j, "config")) ?: "the config");
        return CTL_EXIT_OK;
}
