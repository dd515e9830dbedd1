/* SPDX-License-Identifier: MIT */
/* keybrokerd: arguments, start-up order, signals, drain, sd_notify. */

#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <sodium.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "admin.h"
#include "routing.h"
#include "api.h"
#include "broker.h"
#include "batch-poll.h"
#include "objects.h"
#include "fleet-store.h"
#include "keywatch.h"
#include "metrics.h"
#include "router.h"
#include "promote.h"
#include "quota-recovery.h"
#include "shadow.h"
#include "keybroker/keybroker.h"

#define JOURNAL_QUEUE 65536

struct listener {
        bool activated;
        char *path;     /* socket file we created, removed at exit */
};

/* req/s in STATUS= is the average over this many one-second samples. */
#define RATE_SAMPLES 6
#define STATUS_TICK_USEC (1 * USEC_PER_SEC)
/* After the drain deadline cut the rest, then give their last bytes (an
 * error event, the end of a chunked body) this long to reach the apps. */
#define CUT_GRACE_USEC (500 * USEC_PER_MSEC)

struct rate_sample {
        uint64_t usec;
        uint64_t n;
};

struct daemon {
        struct kb_broker b;
        struct listener api, admin;
        bool draining;
        bool cut_done;
        bool stopped;                   /* "stopped" journaled, the loop is exiting */
        uint64_t drain_deadline;
        uint64_t n_cut;
        sd_event_source *drain_timer;
        sd_event_source *status_timer;
        sd_event_source *watchdog_timer;
        uint64_t watchdog_usec;         /* 0: the service manager watches nothing */
        struct rate_sample rate[RATE_SAMPLES];
        unsigned rate_pos;
        char status[160];               /* last STATUS= sent */
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
               "Every configuration key: keybroker.conf(5). See also keybrokerd(8).\n",
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

/* A streaming request holds two fds (the app's connection and the
 * provider's); the rest is the loop, sockets, journal and state files. */
#define FDS_PER_CONNECTION 2u
#define FDS_BASE 64u

/* The soft limit is often 1024 while the hard one is far higher: take all
 * of it (we use epoll and poll, never select), and say whether it fits. */
static void raise_nofile(const struct kb_config *c) {
        struct rlimit rl;
        uint64_t was, want = c->agent.max_connections * FDS_PER_CONNECTION + FDS_BASE;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return;
        was = rl.rlim_cur;
        if (rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                        rl.rlim_cur = was;
        }
        if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want)
                fprintf(stderr, "<6>file descriptor limit %" PRIu64 " (soft limit was %" PRIu64 ")\n",
                        (uint64_t) rl.rlim_cur, was);
        else
                fprintf(stderr,
                        "<4>file descriptor limit %" PRIu64 " is below the %" PRIu64
                        " that max_connections = %" PRIu64 " can use; past it, calls get 503 broker_overloaded "
                        "(raise LimitNOFILE=)\n",
                        (uint64_t) rl.rlim_cur, want, c->agent.max_connections);
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

/* STATUS= for systemctl status: what the broker is doing right now. Sent
 * only when the text changed; the tick makes it at most a second late. */
static void update_status(struct daemon *d, uint64_t now) {
        struct kb_broker *b = &d->b;
        char text[sizeof(d->status)];

        if (d->draining) {
                uint64_t left = d->drain_deadline > now ? d->drain_deadline - now : 0;
                snprintf(text, sizeof(text), "Stopping: %" PRIu64 " request(s) in flight, cut in %" PRIu64 " s",
                         b->n_in_flight, (left + USEC_PER_SEC - 1) / USEC_PER_SEC);
        } else {
                /* The oldest sample of the window is the next slot. */
                const struct rate_sample *old = &d->rate[(d->rate_pos + 1) % RATE_SAMPLES];
                double rate = 0;

                if (old->usec > 0 && now > old->usec)
                        rate = (double) (b->n_requests - old->n) * USEC_PER_SEC / (double) (now - old->usec);
                snprintf(text, sizeof(text), "Serving: %" PRIu64 " request(s) in flight, %.1f req/s, %" PRIu64
                         " served since start", b->n_in_flight, rate, b->n_requests);
        }
        if (streq(text, d->status))
                return;
        memcpy(d->status, text, sizeof(text));
        (void) sd_notifyf(false, "STATUS=%s", text);
}

static int on_status_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        struct daemon *d = userdata;

        d->rate_pos = (d->rate_pos + 1) % RATE_SAMPLES;
        d->rate[d->rate_pos] = (struct rate_sample) { .usec = usec, .n = d->b.n_requests };
        update_status(d, usec);
        (void) sd_event_source_set_time(s, usec + STATUS_TICK_USEC);
        return sd_event_source_set_enabled(s, SD_EVENT_ON);
}

/* Pinged from the loop itself, so a wedged loop is what gets us restarted. */
static int on_watchdog_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        struct daemon *d = userdata;

        (void) sd_notify(false, "WATCHDOG=1");
        (void) sd_event_source_set_time(s, usec + d->watchdog_usec / 2);
        return sd_event_source_set_enabled(s, SD_EVENT_ON);
}

static int setup_notify_timers(struct daemon *d) {
        uint64_t now, wd = 0;
        int r;

        /* Nobody to tell: no service manager, no timers. */
        if (!getenv("NOTIFY_SOCKET"))
                return 0;
        (void) sd_event_now(d->b.event, CLOCK_MONOTONIC, &now);
        /* Until the window filled, the rate is over the time since start. */
        for (size_t i = 0; i < RATE_SAMPLES; i++)
                d->rate[i] = (struct rate_sample) { .usec = now, .n = d->b.n_requests };
        r = sd_event_add_time(d->b.event, &d->status_timer, CLOCK_MONOTONIC, now + STATUS_TICK_USEC,
                              100 * USEC_PER_MSEC, on_status_tick, d);
        if (r < 0)
                return r;

        /* WATCHDOG_PID names another process (we were exec'ed by a wrapper
         * that was watched): then this is not ours to answer. */
        r = sd_watchdog_enabled(false, &wd);
        if (r <= 0 || wd == 0)
                return 0;
        d->watchdog_usec = wd;
        return sd_event_add_time(d->b.event, &d->watchdog_timer, CLOCK_MONOTONIC, now + wd / 2, wd / 20,
                                 on_watchdog_tick, d);
}

/* An fd passed under another name (a .socket unit without
 * FileDescriptorName=, or one of ours misspelt) would be silently unused. */
static void warn_unknown_fds(void) {
        char **names = NULL;
        int n = sd_listen_fds_with_names(false, &names);

        for (int i = 0; i < n; i++) {
                const char *name = names ? names[i] : NULL;
                if (!streq_ptr(name, KB_FDNAME_API) && !streq_ptr(name, KB_FDNAME_ADMIN))
                        fprintf(stderr, "<4>ignoring socket-activated fd %d named \"%s\": only \"%s\" and "
                                "\"%s\" are served (FileDescriptorName=)\n", SD_LISTEN_FDS_START + i,
                                strempty(name), KB_FDNAME_API, KB_FDNAME_ADMIN);
                free(names ? names[i] : NULL);
        }
        free(names);
}

static int on_reload(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        struct daemon *d = userdata;

        if (d->draining) { /* the configuration of a broker on its way out no longer matters */
                fprintf(stderr, "<5>reload ignored: stopping\n");
                return 0;
        }
        /* kb_broker_reload() sends RELOADING=1 and READY=1 around it. */
        (void) kb_broker_reload(&d->b, NULL);
        return 0;
}

static size_t n_busy(struct daemon *d) {
        return MAX((size_t) d->b.n_in_flight, kb_http_server_n_busy(d->b.api)) + kb_http_server_n_busy(d->b.admin);
}

/* End every request still in flight: each gets its answer cut and its
 * journal record (stream_interrupted, or 503 before the answer began). */
static void cut_rest(struct daemon *d) {
        if (d->cut_done)
                return;
        d->cut_done = true;
        d->n_cut = d->b.n_in_flight;
        if (d->n_cut > 0) {
                fprintf(stderr, "<4>drain timeout: cutting %" PRIu64 " request(s) still in flight\n", d->n_cut);
                kb_api_cut_all(&d->b);
        }
}

static int stop_now(struct daemon *d) {
        if (d->stopped) /* a second SIGTERM racing the end of the drain */
                return 0;
        d->stopped = true;
        (void) kb_journal_lifecycle(d->b.journal, "stopped",
                                    d->n_cut ? "keybrokerd stopped, cutting requests still in flight"
                                             : "keybrokerd stopped after draining",
                                    d->n_cut);
        fprintf(stderr, "<6>stopped: %" PRIu64 " request(s) cut\n", d->n_cut);
        return sd_event_exit(d->b.event, 0);
}

/* Draining ends when no request runs and every answer left the socket, or
 * at drain_timeout, when the rest are cut. */
static int on_drain_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        struct daemon *d = userdata;

        if (usec >= d->drain_deadline)
                cut_rest(d);
        if (n_busy(d) == 0 && kb_http_server_n_connections(d->b.api) == 0)
                return stop_now(d);
        if (d->cut_done && usec >= d->drain_deadline + CUT_GRACE_USEC)
                return stop_now(d);
        update_status(d, usec);
        (void) sd_event_source_set_time(s, usec + 50 * USEC_PER_MSEC);
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

static void unlink_own_socket(struct listener *l) {
        if (!l->path)
                return;
        (void) unlink(l->path);
        free(l->path);
        l->path = NULL;
}

static int on_terminate(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        struct daemon *d = userdata;
        uint64_t now;

        if (d->draining) { /* a second signal: stop now, still journaling what is cut */
                cut_rest(d);
                return stop_now(d);
        }
        d->draining = true;
        /* Shadows in flight run on (cancelled at exit); none starts now. */
        kb_shadows_stop(d->b.shadows);
        (void) sd_notify(false, "STOPPING=1");
        (void) sd_event_now(d->b.event, CLOCK_MONOTONIC, &now);
        d->drain_deadline = now + d->b.config->agent.drain_timeout_usec;
        fprintf(stderr, "<6>stopping: draining %" PRIu64 " request(s) in flight\n", d->b.n_in_flight);
        (void) kb_journal_lifecycle(d->b.journal, "stopping", "keybrokerd stopping", d->b.n_in_flight);
        /* With socket activation the service manager keeps its copy of the
         * listening sockets: connections made from now on wait in the
         * backlog for the next start instead of being refused. */
        kb_http_server_stop_accepting(d->b.api);
        kb_http_server_stop_accepting(d->b.admin);
        /* A socket we made ourselves goes now, so new apps are refused at
         * once rather than left waiting in a backlog nobody accepts. */
        unlink_own_socket(&d->api);
        unlink_own_socket(&d->admin);
        update_status(d, now);
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
        /* Not sd_event_default(): the default loop checks it runs in its
         * thread with a gettid() on every pass, a system call per request. */
        r = sd_event_new(&b->event);
        if (r < 0)
                return r;
        b->keyseal.event = b->heaptrim.event = b->event;
        b->heaptrim.in_flight = &b->n_in_flight;
        r = setup_signals(d);
        if (r < 0)
                return r;
        r = kb_journal_new(JOURNAL_QUEUE, &b->journal);
        if (r < 0) {
                fprintf(stderr, "<3>cannot start the journal writer: %s\n", strerror(-r));
                return r;
        }
        /* Before any record: a previous run's spool goes out first. */
        r = kb_journal_set_spool_dir(b->journal, b->config->agent.state_dir);
        if (r < 0)
                fprintf(stderr, "<4>no journal spool in %s: records journald refuses will be lost: %s\n",
                        strempty(b->config->agent.state_dir), strerror(-r));
        r = kb_metrics_new(&b->metrics);
        if (r < 0)
                return r;
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
        r = kb_shadows_new(b, &b->shadows);
        if (r < 0) {
                fprintf(stderr, "<3>cannot set up shadow calls: %s\n", strerror(-r));
                return r;
        }
        /* The day's shadow spend survives a restart; a damaged file only
         * costs that day's cap, never the start. */
        r = kb_shadows_load(b->shadows, NULL);
        if (r < 0)
                fprintf(stderr, "<4>ignoring the shadows' spend in %s/shadow.json: %s\n",
                        strempty(b->config->agent.state_dir), r == -EBADMSG ? "not a shadow spend file" : strerror(-r));
        /* Once the loop and the journal exist: a promotion resumed, or
         * aborted because the config changed while we were down, is
         * journaled and goes on ticking. */
        r = kb_promote_setup(b);
        if (r < 0) {
                fprintf(stderr, "<3>cannot set up promotions: %s\n", strerror(-r));
                return r;
        }
        r = kb_batch_poll_new(b, &b->batch_poll);
        if (r < 0) {
                fprintf(stderr, "<3>cannot set up the batch poll: %s\n", strerror(-r));
                return r;
        }
        /* a key replaced on disk is taken without a reload; failing to
         * watch is logged and not fatal */
        (void) kb_broker_watch_keys(b);
        (void) kb_broker_connect_store(b, NULL);

        warn_unknown_fds();
        raise_nofile(b->config);
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
        /* Only now: listening, configuration and keys loaded, quotas
         * recovered. Connections made before were queued by the kernel. */
        (void) sd_notify(false, "READY=1");
        r = setup_notify_timers(d);
        if (r < 0) {
                fprintf(stderr, "<3>cannot schedule status and watchdog timers: %s\n", strerror(-r));
                return r;
        }
        update_status(d, kb_now_usec());

        r = sd_event_loop(b->event);

        kb_http_server_free(b->api);
        b->api = NULL;
        kb_http_server_free(b->admin);
        b->admin = NULL;
        /* Only sockets we created are ours to remove. */
        unlink_own_socket(&d->api);
        unlink_own_socket(&d->admin);
        /* Every request has settled and queued its record by now. */
        (void) kb_quota_saver_final(d->saver);
        return r;
}

/* Tell the service manager why start-up failed (systemctl status shows
 * STATUS=; ERRNO= becomes the unit's error number). Returns the exit code. */
static int notify_failure(int r, const char *why) {
        (void) sd_notifyf(false, "STATUS=Failed to start: %s\nERRNO=%i", why ?: strerror(-r), -r);
        return 1;
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
                return check ? 1 : notify_failure(r, error);
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
                return notify_failure(r, error);
        }

        r = kb_quota_new(&d.b.quota);
        if (r >= 0)
                r = kb_quota_configure(d.b.quota, d.b.config);
        if (r < 0) {
                fprintf(stderr, "<3>cannot set up quotas: %s\n", strerror(-r));
                return notify_failure(r, "cannot set up quotas");
        }
        r = kb_routing_setup(&d.b);
        if (r < 0) {
                fprintf(stderr, "<3>cannot set up routing: %s\n", strerror(-r));
                return notify_failure(r, "cannot set up routing");
        }
        if (gethostname(d.b.hostname, sizeof(d.b.hostname) - 1) < 0)
                d.b.hostname[0] = 0;
        r = kb_broker_instance_id(d.b.config->agent.state_dir, d.b.instance);
        if (r < 0) {
                fprintf(stderr, "<3>cannot keep the instance id in state_dir %s: %s\n",
                        strempty(d.b.config->agent.state_dir), strerror(-r));
                return notify_failure(r, "cannot keep the instance id in state_dir");
        }
        {
                _cleanup_free_ char *path = NULL;
                if (asprintf(&path, "%s/objects", d.b.config->agent.state_dir) < 0)
                        return notify_failure(-ENOMEM, "out of memory");
                r = kb_objects_open(path, &d.b.objects);
                if (r < 0) {
                        fprintf(stderr, "<3>cannot open the object table %s: %s\n", path, strerror(-r));
                        return notify_failure(r, "cannot open the object table in state_dir");
                }
                kb_objects_set_mirror(d.b.objects, &kb_broker_objects_mirror, &d.b);
        }
        /* Before serving: counters as they were, kill -9 included. */
        r = kb_quota_recover(&d.b.quota, d.b.config, d.b.instance, &d.b.seq);
        if (r < 0) {
                fprintf(stderr, "<3>cannot recover quota counters: %s\n", strerror(-r));
                return notify_failure(r, "cannot recover quota counters");
        }

        r = run(&d);
        if (r < 0) {
                fprintf(stderr, "<3>keybrokerd: %s\n", strerror(-r));
                (void) notify_failure(r, NULL);
        }

        /* its calls are the upstream's: gone first */
        kb_batch_poll_free(d.b.batch_poll);
        kb_shadows_free(d.b.shadows);
        kb_upstream_free(d.b.upstream);
        kb_journal_free(d.b.journal, 5 * USEC_PER_SEC);
        kb_metrics_free(d.b.metrics);
        sd_event_source_unref(d.drain_timer);
        sd_event_source_unref(d.status_timer);
        sd_event_source_unref(d.watchdog_timer);
        kb_keyseal_done(&d.b.keyseal);
        kb_heaptrim_done(&d.b.heaptrim);
        kb_quota_saver_free(d.saver);
        sd_event_unref(d.b.event);
        kb_keywatch_free(d.b.keywatch);
        kb_broker_drop_store(&d.b);
        kb_keystore_free(d.b.keys);
        kb_quota_free(d.b.quota);
        kb_promote_teardown(&d.b);
        kb_router_free(d.b.router);
        kb_objects_free(d.b.objects);
        kb_config_unref(d.b.config);
        free(d.b.uid_conns);
        free(d.api.path);
        free(d.admin.path);
        return r < 0 ? 1 : 0;
}
