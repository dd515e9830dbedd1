/* SPDX-License-Identifier: MIT */
/* keybrokerd: arguments, start-up order, signals, drain, sd_notify. */

#include <getopt.h>
#include <signal.h>
#include <sodium.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "admin.h"
#include "broker.h"
#include "router.h"
#include "quota-recovery.h"
#include "keybroker/keybroker.h"

#define JOURNAL_QUEUE 65536

struct listener {
        bool activated;
        char *path;     /* socket file we created, removed at exit */
};

struct daemon {
        struct kb_broker b;
        struct listener api, admin;
        bool draining;
        uint64_t drain_deadline;
        sd_event_source *drain_timer;
        struct kb_quota_saver *saver;
};

static void help(void) {
        printf("Usage: keybrokerd [OPTIONS]\n"
               "\n"
               "Per-host broker for LLM provider calls: apps speak the OpenAI or Anthropic\n"
               "API to a Unix socket and never hold a key.\n"
               "\n"
               "  -c, --config FILE   configuration file (default %s)\n"
               "      --check-config  parse and validate the configuration, then exit 0 or 1\n"
               "      --version       print the version and exit\n"
               "  -h, --help          show this help and exit\n"
               "\n"
               "Signals: SIGTERM/SIGINT drain in-flight requests (drain_timeout) and exit;\n"
               "SIGHUP reloads the configuration and keys.\n"
               "See keybrokerd(8) and README.md.\n",
               KB_DEFAULT_CONFIG);
}

static int parse_args(int argc, char **argv, struct daemon *d, bool *ret_check) {
        enum { ARG_CHECK = 0x100, ARG_VERSION };
        static const struct option options[] = {
                { "config", required_argument, NULL, 'c' },
                { "check-config", no_argument, NULL, ARG_CHECK },
                { "version", no_argument, NULL, ARG_VERSION },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        int c;

        while ((c = getopt_long(argc, argv, "c:h", options, NULL)) >= 0)
                switch (c) {
                case 'c':
                        d->b.config_path = optarg;
                        break;
                case ARG_CHECK:
                        *ret_check = true;
                        break;
                case ARG_VERSION:
                        printf("keybrokerd %s\n", KB_VERSION);
                        return 0;
                case 'h':
                        help();
                        return 0;
                default:
                        fprintf(stderr, "Try 'keybrokerd --help'.\n");
                        return -EINVAL;
                }
        if (optind < argc) {
                fprintf(stderr, "keybrokerd: unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        return 1;
}

/* A dump of this process would hold every key. */
static void harden_process(void) {
        struct rlimit rl = { 0, 0 };
        (void) prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
        (void) setrlimit(RLIMIT_CORE, &rl);
}

static int find_activated_fd(const char *name);

/* Serve one socket: the activated fd called fdname if the service manager
 * passed one, else a socket we create at path with its final mode. */
static int serve_socket(struct kb_broker *b, struct listener *l, const char *fdname, const char *path, mode_t mode,
                        const struct kb_http_ops *ops, struct kb_http_limits lim, struct kb_http_server **ret) {
        int fd = find_activated_fd(fdname);
        int r;

        l->activated = fd >= 0;
        if (!l->activated) {
                fd = kb_http_listen_unix(path, mode);
                if (fd < 0) {
                        fprintf(stderr, "<3>cannot listen on %s: %s\n", path, strerror(-fd));
                        return fd;
                }
                l->path = strdup(path);
        }
        r = kb_http_server_new(b->event, fd, &lim, ops, b, ret);
        if (r < 0) {
                close(fd);
                fprintf(stderr, "<3>cannot serve %s: %s\n", l->activated ? fdname : path, strerror(-r));
        }
        return r;
}

static int find_activated_fd(const char *name) {
        char **names = NULL;
        int n = sd_listen_fds_with_names(false, &names);
        int fd = -ENOENT;

        for (int i = 0; i < n; i++) {
                if (fd < 0 && names && streq_ptr(names[i], name))
                        fd = SD_LISTEN_FDS_START + i;
                free(names ? names[i] : NULL);
        }
        free(names);
        return fd;
}

static int on_reload(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        struct daemon *d = userdata;

        (void) kb_broker_reload(&d->b, NULL);
        return 0;
}

static int on_drain_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        struct daemon *d = userdata;
        size_t busy = kb_http_server_n_busy(d->b.api);

        if (busy == 0 || usec >= d->drain_deadline) {
                if (busy > 0) {
                        fprintf(stderr, "<4>drain timeout: cutting %zu request(s) still in flight\n", busy);
                        kb_api_cut_all(&d->b);
                }
                (void) kb_journal_lifecycle(d->b.journal, "stopped",
                                            busy ? "keybrokerd stopped, cutting requests still in flight"
                                                 : "keybrokerd stopped after draining",
                                            busy);
                return sd_event_exit(d->b.event, 0);
        }
        (void) sd_event_source_set_time(s, usec + 100 * USEC_PER_MSEC);
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

static int on_terminate(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        struct daemon *d = userdata;
        uint64_t now;

        if (d->draining) { /* a second signal: stop now, still journaling what is cut */
                kb_api_cut_all(&d->b);
                return sd_event_exit(d->b.event, 0);
        }
        d->draining = true;
        (void) sd_notify(false, "STOPPING=1");
        size_t busy = kb_http_server_n_busy(d->b.api);
        fprintf(stderr, "<6>stopping: draining %zu request(s) in flight\n", busy);
        (void) kb_journal_lifecycle(d->b.journal, "stopping", "keybrokerd stopping", busy);
        kb_http_server_stop_accepting(d->b.api);

        (void) sd_event_now(d->b.event, CLOCK_MONOTONIC, &now);
        d->drain_deadline = now + d->b.config->agent.drain_timeout_usec;
        return sd_event_add_time(d->b.event, &d->drain_timer, CLOCK_MONOTONIC, now, 10 * USEC_PER_MSEC,
                                 on_drain_tick, d);
}

static int setup_signals(struct daemon *d) {
        sigset_t ss;
        int r;

        sigemptyset(&ss);
        sigaddset(&ss, SIGTERM);
        sigaddset(&ss, SIGINT);
        sigaddset(&ss, SIGHUP);
        if (sigprocmask(SIG_BLOCK, &ss, NULL) < 0)
                return -errno;
        signal(SIGPIPE, SIG_IGN);
        r = sd_event_add_signal(d->b.event, NULL, SIGTERM, on_terminate, d);
        if (r >= 0)
                r = sd_event_add_signal(d->b.event, NULL, SIGINT, on_terminate, d);
        if (r >= 0)
                r = sd_event_add_signal(d->b.event, NULL, SIGHUP, on_reload, d);
        return r;
}

static int run(struct daemon *d) {
        struct kb_broker *b = &d->b;
        int r;

        b->started_usec = kb_realtime_usec();
        r = sd_event_default(&b->event);
        if (r < 0)
                return r;
        r = setup_signals(d);
        if (r < 0)
                return r;
        r = kb_journal_new(JOURNAL_QUEUE, &b->journal);
        if (r < 0) {
                fprintf(stderr, "<3>cannot start the journal writer: %s\n", strerror(-r));
                return r;
        }
        r = kb_quota_saver_new(b->event, b, &d->saver);
        if (r < 0) {
                fprintf(stderr, "<3>cannot schedule quota snapshots: %s\n", strerror(-r));
                return r;
        }
        r = kb_upstream_new(b->event, &b->upstream);
        if (r < 0) {
                fprintf(stderr, "<3>cannot set up libcurl: %s\n", strerror(-r));
                return r;
        }

        r = serve_socket(b, &d->api, KB_FDNAME_API, b->config->agent.listen, b->config->agent.listen_mode,
                         &kb_api_ops, kb_api_limits(b->config), &b->api);
        if (r < 0)
                return r;
        /* The admin socket's mode is only a first fence: every request is
         * checked against admin_users/admin_groups by peer credentials. */
        r = serve_socket(b, &d->admin, KB_FDNAME_ADMIN, b->config->agent.admin, 0660, &kb_admin_ops,
                         kb_admin_limits(), &b->admin);
        if (r < 0)
                return r;
        if (!d->admin.activated && b->config->agent.n_admin_gids > 0 &&
            chown(b->config->agent.admin, (uid_t) -1, b->config->agent.admin_gids[0]) < 0)
                fprintf(stderr, "<4>cannot give %s to group %u: %m\n", b->config->agent.admin,
                        (unsigned) b->config->agent.admin_gids[0]);

        fprintf(stderr, "<6>keybrokerd %s listening on %s, admin on %s\n", KB_VERSION,
                d->api.activated ? "the socket-activated fd \"api\"" : b->config->agent.listen,
                d->admin.activated ? "the socket-activated fd \"admin\"" : b->config->agent.admin);
        (void) kb_journal_config(b->journal, "loaded", d->b.config_path, NULL);
        (void) kb_journal_lifecycle(b->journal, "started", "keybrokerd started", 0);
        (void) sd_notify(false, "READY=1\nSTATUS=serving");

        r = sd_event_loop(b->event);

        kb_http_server_free(b->api);
        b->api = NULL;
        kb_http_server_free(b->admin);
        b->admin = NULL;
        /* Only sockets we created are ours to remove. */
        if (d->api.path)
                (void) unlink(d->api.path);
        if (d->admin.path)
                (void) unlink(d->admin.path);
        /* Every request has settled and queued its record by now. */
        (void) kb_quota_saver_final(d->saver);
        return r;
}

int main(int argc, char **argv) {
        struct daemon d = { .b.config_path = KB_DEFAULT_CONFIG };
        _cleanup_free_ char *error = NULL;
        bool check = false;
        int r;

        r = parse_args(argc, argv, &d, &check);
        if (r <= 0)
                return r < 0 ? 2 : 0;

        harden_process();
        if (sodium_init() < 0) {
                fprintf(stderr, "<3>libsodium failed to initialise\n");
                return 1;
        }

        r = kb_config_load(d.b.config_path, check, &d.b.config, &error);
        if (r < 0) {
                fprintf(stderr, "%s\n", error ?: strerror(-r));
                return 1;
        }
        if (check) {
                printf("%s: ok\n", d.b.config_path);
                kb_config_unref(d.b.config);
                return 0;
        }
        free(error);
        error = NULL;
        r = kb_broker_load_keys(d.b.config, &d.b.keys, &error);
        if (r < 0) {
                fprintf(stderr, "<3>%s\n", error ?: strerror(-r));
                kb_config_unref(d.b.config);
                return 1;
        }

        r = kb_quota_new(&d.b.quota);
        if (r >= 0)
                r = kb_quota_configure(d.b.quota, d.b.config);
        if (r < 0) {
                fprintf(stderr, "<3>cannot set up quotas: %s\n", strerror(-r));
                return 1;
        }
        r = kb_routing_setup(&d.b);
        if (r < 0) {
                fprintf(stderr, "<3>cannot set up routing: %s\n", strerror(-r));
                return 1;
        }
        r = kb_broker_instance_id(d.b.config->agent.state_dir, d.b.instance);
        if (r < 0) {
                fprintf(stderr, "<3>cannot keep the instance id in state_dir %s: %s\n",
                        strempty(d.b.config->agent.state_dir), strerror(-r));
                return 1;
        }
        /* Before serving: counters as they were, kill -9 included. */
        r = kb_quota_recover(&d.b.quota, d.b.config, d.b.instance, &d.b.seq);
        if (r < 0) {
                fprintf(stderr, "<3>cannot recover quota counters: %s\n", strerror(-r));
                return 1;
        }

        r = run(&d);
        if (r < 0)
                fprintf(stderr, "<3>keybrokerd: %s\n", strerror(-r));

        kb_upstream_free(d.b.upstream);
        kb_journal_free(d.b.journal, 5 * USEC_PER_SEC);
        sd_event_source_unref(d.drain_timer);
        kb_quota_saver_free(d.saver);
        sd_event_unref(d.b.event);
        kb_keystore_free(d.b.keys);
        kb_quota_free(d.b.quota);
        kb_router_free(d.b.router);
        kb_config_unref(d.b.config);
        free(d.b.uid_conns);
        free(d.api.path);
        free(d.admin.path);
        return r < 0 ? 1 : 0;
}
