/* SPDX-License-Identifier: MIT */
/* kb-mock: a fake OpenAI/Anthropic provider for keybroker's tests and
 * benchmarks. Listens on 127.0.0.1 only; never talks to the network. */

#include "mock.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util.h"

/* Deeply nested request bodies recurse in jansson's parser; 256 KiB covers
 * its 2048-level limit while 2000 idle connections stay cheap (the stack is
 * only virtual until touched). */
#define MOCK_THREAD_STACK (256 * 1024)

static void usage(FILE *f) {
        fputs("Usage: kb-mock [OPTIONS]\n"
              "A mock OpenAI/Anthropic provider on 127.0.0.1 for keybroker's tests.\n\n"
              "  --port N            listen on TCP port N (0 or absent: any free port)\n"
              "  --port-file FILE    write the chosen port + newline to FILE (atomically)\n"
              "  --log FILE          append one JSON line per request received\n"
              "  --require-key KEY   demand this key (Authorization: Bearer or x-api-key);\n"
              "                      repeatable, any one of them is accepted\n"
              "  --models A,B,...    list these ids on GET /v1/models and answer any other\n"
              "                      model in a POST with 404 model_not_found\n"
              "  --replay-dir DIR    x-mock-replay: NAME answers with DIR/NAME.json, a captured\n"
              "                      provider response (status, headers, body)\n"
              "  --alias NAME=SNAPSHOT  answer a request for NAME with \"model\": SNAPSHOT\n"
              "  --no-vision MODEL   image input to MODEL is a 400 (repeatable)\n"
              "  --reasoning MODEL   MODEL's usage reports 3 reasoning tokens (repeatable)\n"
              "  --min-latency-ms N  wait at least N ms before the first byte of every answer\n"
              "  --status-indicator none|minor|major|critical\n"
              "                      what GET /api/v2/status.json says (default none)\n"
              "  -h, --help          show this help\n\n"
              "The port is also printed on stdout. SIGTERM/SIGINT: exit 0.\n"
              "Request headers script the answer: x-mock-input-tokens, x-mock-output-tokens,\n"
              "x-mock-cached-tokens, x-mock-cache-write-tokens, x-mock-reasoning-tokens,\n"
              "x-mock-status, x-mock-retry-after, x-mock-delay-ms, x-mock-event-delay-ms,\n"
              "x-mock-cut-after, x-mock-hang, x-mock-body-bytes, x-mock-replay,\n"
              "x-mock-audio-seconds, x-mock-batch-status.\n"
              "See tests/mock/README.md.\n", f);
}

static int write_port_file(const char *path, unsigned port) {
        _cleanup_free_ char *tmp = NULL;
        if (asprintf(&tmp, "%s.tmp.%d", path, (int) getpid()) < 0)
                return -ENOMEM;
        _cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                return -errno;
        char line[16];
        int n = snprintf(line, sizeof line, "%u\n", port);
        if (write(fd, line, (size_t) n) != n) {
                int r = errno ? -errno : -EIO;
                unlink(tmp);
                return r;
        }
        if (rename(tmp, path) < 0) {
                int r = -errno;
                unlink(tmp);
                return r;
        }
        return 0;
}

static int listen_on(unsigned port, unsigned *ret_port) {
        _cleanup_close_ int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        int one = 1;
        (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in sa = {
                .sin_family = AF_INET,
                .sin_port = htons((uint16_t) port),
                .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
        };
        if (bind(fd, (struct sockaddr *) &sa, sizeof sa) < 0)
                return -errno;
        if (listen(fd, 4096) < 0)
                return -errno;
        socklen_t len = sizeof sa;
        if (getsockname(fd, (struct sockaddr *) &sa, &len) < 0)
                return -errno;
        *ret_port = ntohs(sa.sin_port);
        return TAKE_FD(fd);
}

static void raise_fd_limit(void) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void) setrlimit(RLIMIT_NOFILE, &rl);
        }
}

static void accept_all(int lfd, const pthread_attr_t *attr) {
        for (;;) {
                int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
                if (fd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED)
                                continue;
                        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                                /* let some connections finish rather than spin */
                                (void) poll(NULL, 0, 10);
                        return;
                }
                int one = 1;
                (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                pthread_t t;
                if (pthread_create(&t, attr, mock_conn_thread, (void *) (intptr_t) fd) != 0)
                        close(fd);
        }
}

int main(int argc, char **argv) {
        static const struct option options[] = {
                { "port", required_argument, NULL, 'p' },
                { "port-file", required_argument, NULL, 'f' },
                { "log", required_argument, NULL, 'l' },
                { "require-key", required_argument, NULL, 'k' },
                { "models", required_argument, NULL, 'm' },
                { "replay-dir", required_argument, NULL, 'r' },
                { "alias", required_argument, NULL, 'a' },
                { "no-vision", required_argument, NULL, 'V' },
                { "reasoning", required_argument, NULL, 'R' },
                { "min-latency-ms", required_argument, NULL, 'L' },
                { "status-indicator", required_argument, NULL, 'S' },
                { "help", no_argument, NULL, 'h' },
                {}
        };
        static struct mock_config cfg = { .log_fd = -1 };
        const char *port_file = NULL, *log_path = NULL;
        unsigned port = 0;
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case 'p': {
                        char *end;
                        errno = 0;
                        unsigned long v = strtoul(optarg, &end, 10);
                        if (errno || *end || end == optarg || v > 65535) {
                                fprintf(stderr, "kb-mock: invalid port '%s'\n", optarg);
                                return 2;
                        }
                        port = (unsigned) v;
                        break;
                }
                case 'f':
                        port_file = optarg;
                        break;
                case 'r':
                        cfg.replay_dir = optarg;
                        break;
                case 'l':
                        log_path = optarg;
                        break;
                case 'k':
                        if (cfg.n_keys >= MOCK_MAX_KEYS || !*optarg) {
                                fprintf(stderr, "kb-mock: too many or empty --require-key\n");
                                return 2;
                        }
                        cfg.keys[cfg.n_keys++] = optarg;
                        break;
                case 'm':
                        for (char *save = NULL, *tok = strtok_r(optarg, ",", &save); tok;
                             tok = strtok_r(NULL, ",", &save)) {
                                if (cfg.n_models >= MOCK_MAX_MODELS) {
                                        fprintf(stderr, "kb-mock: more than %d --models\n", MOCK_MAX_MODELS);
                                        return 2;
                                }
                                cfg.models[cfg.n_models++] = tok;
                        }
                        if (cfg.n_models == 0) {
                                fprintf(stderr, "kb-mock: --models needs at least one id\n");
                                return 2;
                        }
                        break;
                case 'a': {
                        char *eq = strchr(optarg, '=');
                        if (!eq || eq == optarg || !eq[1] || cfg.n_aliases >= MOCK_MAX_MODELS) {
                                fprintf(stderr, "kb-mock: --alias takes NAME=SNAPSHOT (at most %d)\n", MOCK_MAX_MODELS);
                                return 2;
                        }
                        *eq = 0;
                        cfg.alias_names[cfg.n_aliases] = optarg;
                        cfg.alias_snapshots[cfg.n_aliases++] = eq + 1;
                        break;
                }
                case 'V':
                case 'R': {
                        const char **list = c == 'V' ? cfg.no_vision : cfg.reasoning;
                        size_t *n = c == 'V' ? &cfg.n_no_vision : &cfg.n_reasoning;
                        if (!*optarg || *n >= MOCK_MAX_MODELS) {
                                fprintf(stderr, "kb-mock: too many or empty --%s\n", c == 'V' ? "no-vision" : "reasoning");
                                return 2;
                        }
                        list[(*n)++] = optarg;
                        break;
                }
                case 'L': {
                        char *end;
                        errno = 0;
                        unsigned long long v = strtoull(optarg, &end, 10);
                        if (errno || *end || end == optarg || v > MOCK_MAX_DELAY_MS) {
                                fprintf(stderr, "kb-mock: invalid --min-latency-ms '%s'\n", optarg);
                                return 2;
                        }
                        cfg.min_latency_ms = v;
                        break;
                }
                case 'S':
                        if (!streq(optarg, "none") && !streq(optarg, "minor") && !streq(optarg, "major") &&
                            !streq(optarg, "critical")) {
                                fprintf(stderr, "kb-mock: --status-indicator is none, minor, major or critical\n");
                                return 2;
                        }
                        cfg.status_indicator = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "kb-mock: unexpected argument '%s'\n", argv[optind]);
                return 2;
        }

        if (log_path) {
                cfg.log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
                if (cfg.log_fd < 0) {
                        fprintf(stderr, "kb-mock: cannot open log %s: %m\n", log_path);
                        return 1;
                }
        }
        mock_cfg = &cfg;
        raise_fd_limit();

        /* Workers inherit this mask, so only the signalfd sees the signals. */
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        if (pthread_sigmask(SIG_BLOCK, &mask, NULL) != 0)
                return 1;
        signal(SIGPIPE, SIG_IGN);
        _cleanup_close_ int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
        if (sfd < 0) {
                fprintf(stderr, "kb-mock: signalfd: %m\n");
                return 1;
        }

        unsigned bound = 0;
        _cleanup_close_ int lfd = listen_on(port, &bound);
        if (lfd < 0) {
                fprintf(stderr, "kb-mock: cannot listen on 127.0.0.1:%u: %s\n", port, strerror(-lfd));
                return 1;
        }
        if (port_file) {
                int r = write_port_file(port_file, bound);
                if (r < 0) {
                        fprintf(stderr, "kb-mock: cannot write %s: %s\n", port_file, strerror(-r));
                        return 1;
                }
        }
        printf("%u\n", bound);
        fflush(stdout);

        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, MOCK_THREAD_STACK);

        for (;;) {
                struct pollfd p[2] = {
                        { .fd = lfd, .events = POLLIN },
                        { .fd = sfd, .events = POLLIN },
                };
                if (poll(p, 2, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        fprintf(stderr, "kb-mock: poll: %m\n");
                        return 1;
                }
                if (p[1].revents)
                        break;
                if (p[0].revents)
                        accept_all(lfd, &attr);
        }
        /* Connections still running are simply dropped: don't wait for a
         * hanging one, and skip destructors that would race with them. */
        _exit(0);
}
