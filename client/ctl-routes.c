/* SPDX-License-Identifier: MIT */
/* keybrokerctl model split NAME ROUTE=WEIGHT... */

#include "ctl.h"
#include "util.h"

#define SPLIT_MAX_WEIGHTS 64
#define WEIGHT_MAX 1000000

static void help_model(void) {
        printf("Usage: keybrokerctl [OPTIONS] model COMMAND NAME ...\n"
               "\n"
               "Commands:\n"
               "  split NAME ROUTE=WEIGHT...   change the weights of a model's targets live\n"
               "  compare NAME [--since T]     shadow pairs: agreement, errors, latency, tokens, cost\n"
               "  baseline NAME [--since T]    save the current route's figures as evidence\n"
               "  promote NAME ROUTE --steps A,B,... --hold D [gates]   staged promotion\n"
               "  promote NAME --abort         stop a promotion, put the split back\n"
               "  status NAME                  a promotion's step, gates and time left\n"
               "\n"
               "Each command has --help.\n");
}

static void help_model_split(void) {
        printf("Usage: keybrokerctl [--admin-socket PATH] [--json] model split NAME ROUTE=WEIGHT...\n"
               "\n"
               "Set the weights of the named targets of model NAME (0 to 1000000; the\n"
               "targets not named keep theirs). The change is live, journaled\n"
               "(split_changed) and kept in state_dir/splits.json across restarts until\n"
               "changed back: a weight equal to the config's removes that override. A\n"
               "route that is a target of the model twice is named ROUTE/UPSTREAM_MODEL.\n"
               "Prints the model's weights after the change.\n"
               "\n"
               "Example: keybrokerctl model split chat-default openai=90 flatkey=10\n");
}

bool ctl_model_path_safe(const char *s) {
        if (!*s || strlen(s) > 256)
                return false;
        for (; *s; s++)
                if (*s <= ' ' || *s >= 0x7f || strchr("[]*\"\\%?#", *s))
                        return false;
        return true;
}

static int parse_weight(const char *s, json_int_t *ret) {
        json_int_t v = 0;

        if (!*s || strlen(s) > 7)
                return -EINVAL;
        for (; *s; s++) {
                if (*s < '0' || *s > '9')
                        return -EINVAL;
                v = v * 10 + (*s - '0');
        }
        if (v > WEIGHT_MAX)
                return -ERANGE;
        *ret = v;
        return 0;
}

static int cmd_split(const struct ctl *ctl, int argc, char **argv) {
        _cleanup_json_ json_t *weights = json_object(), *ans = NULL;
        _cleanup_free_ char *path = NULL, *body = NULL;
        int optind_, r;

        r = ctl_parse_help_only(argc, argv, "model split", help_model_split, &optind_);
        if (r >= 0)
                return r;
        if (optind_ >= argc)
                return ctl_usage_error("model split", "missing NAME; see keybrokerctl model split --help");
        const char *model = argv[optind_++];
        if (!ctl_model_path_safe(model))
                return ctl_usage_error("model split", "'%s' is not a model name the admin API can address", model);
        if (optind_ >= argc)
                return ctl_usage_error("model split", "missing ROUTE=WEIGHT; see keybrokerctl model split --help");
        if (argc - optind_ > SPLIT_MAX_WEIGHTS)
                return ctl_usage_error("model split", "at most %d weights", SPLIT_MAX_WEIGHTS);
        if (!weights) {
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return CTL_EXIT_ERROR;
        }
        for (int i = optind_; i < argc; i++) {
                /* The weight follows the last '=': upstream model names may hold one. */
                const char *eq = strrchr(argv[i], '=');
                json_int_t w;
                if (!eq || eq == argv[i])
                        return ctl_usage_error("model split", "'%s' is not ROUTE=WEIGHT", argv[i]);
                if (parse_weight(eq + 1, &w) < 0)
                        return ctl_usage_error("model split", "'%s': the weight is an integer from 0 to %d", argv[i],
                                               WEIGHT_MAX);
                _cleanup_free_ char *name = strndup(argv[i], (size_t) (eq - argv[i]));
                if (!name) {
                        fprintf(stderr, "keybrokerctl: out of memory\n");
                        return CTL_EXIT_ERROR;
                }
                if (json_object_get(weights, name))
                        return ctl_usage_error("model split", "'%s' is named twice", name);
                if (json_object_set_new(weights, name, json_integer(w)) < 0) {
                        fprintf(stderr, "keybrokerctl: out of memory\n");
                        return CTL_EXIT_ERROR;
                }
        }
        json_t *doc = json_pack("{s:O}", "weights", weights);
        body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
        json_decref(doc);
        if (!body || asprintf(&path, "/models/%s/split", model) < 0) {
                path = NULL;
                fprintf(stderr, "keybrokerctl: out of memory\n");
                return CTL_EXIT_ERROR;
        }
        struct ctl_body b = { .data = body, .len = strlen(body), .content_type = "application/json" };
        if (ctl_request(ctl, "PUT", path, NULL, &b, &ans) < 0)
                return CTL_EXIT_ERROR;
        if (ctl->json)
                return ctl_print_json(ans) < 0 ? CTL_EXIT_ERROR : CTL_EXIT_OK;

        const char *name;
        json_t *v;
        printf("%s:", json_string_value(json_object_get(ans, "model")) ?: model);
        json_object_foreach(json_object_get(ans, "weights"), name, v)
                printf(" %s=%" JSON_INTEGER_FORMAT, name, json_integer_value(v));
        printf("\n");
        if (!json_is_true(json_object_get(ans, "persisted")))
                fprintf(stderr, "keybrokerctl: warning: the split is live but was not saved (%s); it will not "
                        "survive a restart\n", json_string_value(json_object_get(ans, "warning")) ?: "unknown error");
        return CTL_EXIT_OK;
}

int ctl_cmd_model(const struct ctl *ctl, int argc, char **argv) {
        if (argc < 2)
                return ctl_usage_error("model", "missing command (split); see keybrokerctl model --help");
        if (streq(argv[1], "-h") || streq(argv[1], "--help") || streq(argv[1], "help")) {
                help_model();
                return CTL_EXIT_OK;
        }
        if (streq(argv[1], "split"))
                return cmd_split(ctl, argc - 1, argv + 1);
        if (streq(argv[1], "compare"))
                return ctl_cmd_model_compare(ctl, argc - 1, argv + 1);
        if (streq(argv[1], "baseline"))
                return ctl_cmd_model_baseline(ctl, argc - 1, argv + 1);
        if (streq(argv[1], "promote"))
                return ctl_cmd_model_promote(ctl, argc - 1, argv + 1);
        if (streq(argv[1], "status"))
                return ctl_cmd_model_status(ctl, argc - 1, argv + 1);
        return ctl_usage_error("model", "unknown command '%s'; see keybrokerctl model --help", argv[1]);
}
