/* SPDX-License-Identifier: MIT */
/* kb-bench: closed-loop HTTP load for keybroker and its mock provider.
 *
 *   kb-bench --url URL [--unix-socket PATH] --connections N
 *            (--duration SECONDS | --requests M) [--stream] [--body JSON]
 *            [--header "Name: value"]... [--timeout SECONDS] [--json]
 *   kb-bench idle    --unix-socket PATH --connections N --hold SECONDS [--path P]
 *   kb-bench streams --unix-socket PATH --connections N --hold SECONDS --body JSON
 *                    [--header H]... [--path P]
 *   kb-bench burst   --unix-socket PATH --connections N [--body JSON] [--header H]...
 *                    [--path P] [--setup-timeout SECONDS] [--dump FILE]
 *
 * The load mode drives N keep-alive connections from one thread with curl's
 * multi interface: each connection sends its next POST as soon as the
 * previous answer is complete, so the rate measured is what the server
 * sustains at that concurrency. See tests/bench/README.md. */

#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "util.h"

#define MAX_CONNECTIONS 20000u

struct load_opts {
        const char *url;
        const char *unix_socket;
        const char *body;
        const char *headers[BENCH_MAX_HEADERS];
        size_t n_headers;
        unsigned connections;
        double duration_sec;
        uint64_t requests;
        double timeout_sec;
        bool stream;
        bool json;
};

struct load;

struct lconn {
        struct load *load;
        CURL *easy;
        uint64_t t_start;
        uint64_t t_first;
        char tail[32];          /* last bytes of the previous chunk: markers may straddle */
        size_t tail_len;
        bool end_seen;          /* the stream's own terminator arrived */
        bool interrupted;       /* the broker reported stream_interrupted */
};

struct load {
        const struct load_opts *o;
        CURLM *multi;
        struct curl_slist *hdrs;
        struct lconn *conns;
        struct bench_hist lat;
        struct bench_hist ttfb;
        uint64_t started;
        uint64_t ok;
        uint64_t http_errors;
        uint64_t transport_errors;
        uint64_t incomplete;
        uint64_t bytes;
        long first_bad_status;
        char first_transport_error[CURL_ERROR_SIZE];
        uint64_t t_begin;
        uint64_t t_deadline;
        uint64_t t_last_done;
};

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) {
        stop_requested = 1;
}

/* The stream terminators of the three streaming shapes (OpenAI chat,
 * OpenAI responses, Anthropic messages); a stream without one did not
 * complete even when the HTTP framing did. */
static const char *const stream_end_markers[] = {
        "data: [DONE]",
        "\"message_stop\"",
        "\"response.completed\"",
};

static void scan_stream(struct lconn *c, const char *p, size_t n) {
        char win[64 + 32];
        size_t take;

        /* Look at the tail glued to the head of this chunk (for markers that
         * straddle), then at the chunk itself. */
        take = MIN(n, sizeof(win) - c->tail_len);
        memcpy(win, c->tail, c->tail_len);
        memcpy(win + c->tail_len, p, take);
        for (size_t pass = 0; pass < 2; pass++) {
                const char *s = pass == 0 ? win : p;
                size_t len = pass == 0 ? c->tail_len + take : n;

                for (size_t i = 0; i < ELEMENTSOF(stream_end_markers); i++)
                        if (memmem(s, len, stream_end_markers[i], strlen(stream_end_markers[i])))
                                c->end_seen = true;
                if (memmem(s, len, "stream_interrupted", strlen("stream_interrupted")))
                        c->interrupted = true;
        }
        if (n >= sizeof(c->tail)) {
                memcpy(c->tail, p + n - sizeof(c->tail), sizeof(c->tail));
                c->tail_len = sizeof(c->tail);
        } else {
                size_t keep = MIN(c->tail_len, sizeof(c->tail) - n);

                memmove(c->tail, c->tail + c->tail_len - keep, keep);
                memcpy(c->tail + keep, p, n);
                c->tail_len = keep + n;
        }
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *userdata) {
        struct lconn *c = userdata;
        size_t n = size * nmemb;

        if (c->t_first == 0)
                c->t_first = kb_now_usec();
        c->load->bytes += n;
        if (c->load->o->stream)
                scan_stream(c, p, n);
        return n;
}

static bool may_start(const struct load *l) {
        if (stop_requested)
                return false;
        if (l->o->requests > 0)
                return l->started < l->o->requests;
        return kb_now_usec() < l->t_deadline;
}

static int start_request(struct load *l, struct lconn *c) {
        c->t_first = 0;
        c->tail_len = 0;
        c->end_seen = c->interrupted = false;
        c->t_start = kb_now_usec();
        if (curl_multi_add_handle(l->multi, c->easy) != CURLM_OK)
                return -EIO;
        l->started++;
        return 0;
}

static void finish_request(struct load *l, struct lconn *c, CURLcode res, const char *errbuf) {
        uint64_t now = kb_now_usec();
        long status = 0;

        l->t_last_done = now;
        if (res != CURLE_OK) {
                l->transport_errors++;
                if (!l->first_transport_error[0])
                        snprintf(l->first_transport_error, sizeof(l->first_transport_error), "%s",
                                 errbuf[0] ? errbuf : curl_easy_strerror(res));
                return;
        }
        (void) curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status < 200 || status > 299) {
                l->http_errors++;
                if (!l->first_bad_status)
                        l->first_bad_status = status;
                return;
        }
        if (l->o->stream && (!c->end_seen || c->interrupted)) {
                l->incomplete++;
                return;
        }
        l->ok++;
        bench_hist_add(&l->lat, now - c->t_start);
        if (c->t_first)
                bench_hist_add(&l->ttfb, c->t_first - c->t_start);
}

static int setup_easy(struct load *l, struct lconn *c, char *errbuf) {
        const struct load_opts *o = l->o;
        long timeout_ms = (long) (o->timeout_sec * 1000.0);

        c->load = l;
        c->easy = curl_easy_init();
        if (!c->easy)
                return -ENOMEM;
        if (curl_easy_setopt(c->easy, CURLOPT_URL, o->url) != CURLE_OK ||
            (o->unix_socket && curl_easy_setopt(c->easy, CURLOPT_UNIX_SOCKET_PATH, o->unix_socket) != CURLE_OK) ||
            curl_easy_setopt(c->easy, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_1) != CURLE_OK ||
            curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, o->body) != CURLE_OK ||
            curl_easy_setopt(c->easy, CURLOPT_POSTFIELDSIZE, (long) strlen(o->body)) != CURLE_OK ||
            curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, l->hdrs) != CURLE_OK ||
            curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK ||
            curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, c) != CURLE_OK ||
            curl_easy_setopt(c->easy, CURLOPT_PRIVATE, c) != CURLE_OK ||
            curl_easy_setopt(c->easy, CURLOPT_NOSIGNAL, 1L) != CURLE_OK ||
            curl_easy_setopt(c->easy, CURLOPT_TCP_NODELAY, 1L) != CURLE_OK ||
            curl_easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, timeout_ms) != CURLE_OK ||
            curl_easy_setopt(c->easy, CURLOPT_ERRORBUFFER, errbuf) != CURLE_OK ||
            /* Never leave loopback, whatever the environment says. */
            curl_easy_setopt(c->easy, CURLOPT_NOPROXY, "*") != CURLE_OK)
                return -EINVAL;
        return 0;
}

static void print_results(const struct load *l) {
        const struct load_opts *o = l->o;
        uint64_t end = l->t_last_done ? l->t_last_done : kb_now_usec();
        double elapsed = (double) (end - l->t_begin) / 1e6;
        double rps = elapsed > 0 ? (double) l->ok / elapsed : 0;
        uint64_t errors = l->http_errors + l->transport_errors + l->incomplete;
        double mean = l->lat.n ? (double) l->lat.sum / (double) l->lat.n : 0;
        FILE *text = o->json ? stderr : stdout;

        fprintf(text,
                "kb-bench: %s%s%s conns=%u stream=%d ok=%" PRIu64 " errors=%" PRIu64
                " (http=%" PRIu64 " transport=%" PRIu64 " incomplete=%" PRIu64 ") elapsed=%.3fs"
                " rps=%.1f p50=%" PRIu64 "us p90=%" PRIu64 "us p99=%" PRIu64 "us max=%" PRIu64 "us",
                o->url, o->unix_socket ? " via " : "", strempty(o->unix_socket), o->connections,
                o->stream, l->ok, errors, l->http_errors, l->transport_errors, l->incomplete,
                elapsed, rps, bench_hist_percentile(&l->lat, 50), bench_hist_percentile(&l->lat, 90),
                bench_hist_percentile(&l->lat, 99), l->lat.n ? l->lat.max : 0);
        if (o->stream)
                fprintf(text, " ttfb_p50=%" PRIu64 "us", bench_hist_percentile(&l->ttfb, 50));
        fputc('\n', text);
        if (l->first_bad_status)
                fprintf(stderr, "kb-bench: first non-2xx status: %ld\n", l->first_bad_status);
        if (l->first_transport_error[0])
                fprintf(stderr, "kb-bench: first transport error: %s\n", l->first_transport_error);

        if (o->json) {
                json_t *j = json_pack(
                        "{s:s, s:s?, s:I, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f,"
                        " s:I, s:I, s:I, s:I, s:I, s:f, s:I, s:I, s:I}",
                        "url", o->url, "unix_socket", o->unix_socket,
                        "connections", (json_int_t) o->connections, "stream", o->stream,
                        "requests", (json_int_t) (l->ok + errors), "ok", (json_int_t) l->ok,
                        "errors", (json_int_t) errors, "http_errors", (json_int_t) l->http_errors,
                        "transport_errors", (json_int_t) l->transport_errors,
                        "incomplete", (json_int_t) l->incomplete, "bytes", (json_int_t) l->bytes,
                        "elapsed_s", elapsed, "rps", rps,
                        "p50_us", (json_int_t) bench_hist_percentile(&l->lat, 50),
                        "p90_us", (json_int_t) bench_hist_percentile(&l->lat, 90),
                        "p99_us", (json_int_t) bench_hist_percentile(&l->lat, 99),
                        "max_us", (json_int_t) (l->lat.n ? l->lat.max : 0),
                        "min_us", (json_int_t) (l->lat.n ? l->lat.min : 0), "mean_us", mean,
                        "ttfb_p50_us", (json_int_t) bench_hist_percentile(&l->ttfb, 50),
                        "ttfb_p99_us", (json_int_t) bench_hist_percentile(&l->ttfb, 99),
                        "first_bad_status", (json_int_t) l->first_bad_status);
                char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;

                if (s)
                        printf("%s\n", s);
                free(s);
                json_decref(j);
        }
        fflush(stdout);
}

static int run_load(const struct load_opts *o) {
        struct load l = { .o = o };
        char (*errbufs)[CURL_ERROR_SIZE] = NULL;
        uint64_t active = 0, hard_stop;
        int r;

        bench_raise_nofile(o->connections);
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
                return -EIO;
        r = bench_hist_init(&l.lat);
        if (r < 0)
                return r;
        r = bench_hist_init(&l.ttfb);
        if (r < 0)
                goto out;

        l.multi = curl_multi_init();
        l.conns = calloc(o->connections, sizeof(*l.conns));
        errbufs = calloc(o->connections, sizeof(*errbufs));
        if (!l.multi || !l.conns || !errbufs) {
                r = -ENOMEM;
                goto out;
        }
        /* Keep exactly one connection per handle alive between requests. */
        (void) curl_multi_setopt(l.multi, CURLMOPT_MAXCONNECTS, (long) o->connections);

        /* curl adds Expect: 100-continue to larger POSTs: a round trip real
         * clients of an LLM API don't pay either. */
        l.hdrs = curl_slist_append(NULL, "Content-Type: application/json");
        l.hdrs = l.hdrs ? curl_slist_append(l.hdrs, "Expect:") : NULL;
        for (size_t i = 0; l.hdrs && i < o->n_headers; i++)
                l.hdrs = curl_slist_append(l.hdrs, o->headers[i]);
        if (!l.hdrs) {
                r = -ENOMEM;
                goto out;
        }

        for (unsigned i = 0; i < o->connections; i++) {
                r = setup_easy(&l, &l.conns[i], errbufs[i]);
                if (r < 0)
                        goto out;
        }

        l.t_begin = kb_now_usec();
        l.t_deadline = l.t_begin + (uint64_t) (o->duration_sec * 1e6);
        /* In-flight requests get one timeout past the deadline to finish. */
        hard_stop = l.t_deadline + (uint64_t) (o->timeout_sec * 1e6) + USEC_PER_SEC;
        for (unsigned i = 0; i < o->connections && may_start(&l); i++) {
                r = start_request(&l, &l.conns[i]);
                if (r < 0)
                        goto out;
                active++;
        }

        while (active > 0) {
                bool restarted = false;
                CURLMsg *msg;
                int running, left;

                if (curl_multi_perform(l.multi, &running) != CURLM_OK) {
                        r = -EIO;
                        goto out;
                }
                while ((msg = curl_multi_info_read(l.multi, &left))) {
                        struct lconn *c = NULL;

                        if (msg->msg != CURLMSG_DONE)
                                continue;
                        (void) curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &c);
                        CURLcode res = msg->data.result;

                        finish_request(&l, c, res, errbufs[c - l.conns]);
                        curl_multi_remove_handle(l.multi, c->easy);
                        active--;
                        errbufs[c - l.conns][0] = 0;
                        if (may_start(&l)) {
                                r = start_request(&l, c);
                                if (r < 0)
                                        goto out;
                                active++;
                                restarted = true;
                        }
                }
                if (active == 0)
                        break;
                if (o->requests == 0 && kb_now_usec() > hard_stop) {
                        fprintf(stderr, "kb-bench: %" PRIu64 " requests still in flight at the hard stop\n",
                                active);
                        break;
                }
                if (!restarted)
                        (void) curl_multi_poll(l.multi, NULL, 0, 100, NULL);
        }

        print_results(&l);
        r = 0;
out:
        if (l.conns) {
                for (unsigned i = 0; i < o->connections; i++)
                        if (l.conns[i].easy) {
                                if (l.multi)
                                        curl_multi_remove_handle(l.multi, l.conns[i].easy);
                                curl_easy_cleanup(l.conns[i].easy);
                        }
                free(l.conns);
        }
        if (l.multi)
                curl_multi_cleanup(l.multi);
        curl_slist_free_all(l.hdrs);
        free(errbufs);
        bench_hist_done(&l.lat);
        bench_hist_done(&l.ttfb);
        curl_global_cleanup();
        return r;
}

static void usage(FILE *f) {
        fputs("usage: kb-bench --url URL [--unix-socket PATH] --connections N\n"
              "                (--duration SECONDS | --requests M) [--stream] [--body JSON]\n"
              "                [--header 'Name: value']... [--timeout SECONDS] [--json]\n"
              "       kb-bench idle --unix-socket PATH --connections N --hold SECONDS\n"
              "                [--path PATH] [--setup-timeout SECONDS]\n"
              "       kb-bench streams --unix-socket PATH --connections N --hold SECONDS\n"
              "                --body JSON [--header H]... [--path PATH] [--setup-timeout SECONDS]\n"
              "       kb-bench burst --unix-socket PATH --connections N [--body JSON]\n"
              "                [--header H]... [--path PATH] [--setup-timeout SECONDS] [--dump FILE]\n"
              "       kb-bench selftest\n",
              f);
}

static int parse_uint(const char *s, uint64_t max, uint64_t *ret) {
        char *end;
        unsigned long long v;

        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno || end == s || *end || s[0] == '-' || v > max)
                return -EINVAL;
        *ret = v;
        return 0;
}

static int parse_seconds(const char *s, double *ret) {
        char *end;
        double v;

        errno = 0;
        v = strtod(s, &end);
        if (errno || end == s || *end || !(v > 0) || v > 86400)
                return -EINVAL;
        *ret = v;
        return 0;
}

/* Checks the histogram against exact values; run by the README's smoke step. */
static int selftest(void) {
        struct bench_hist h;
        int bad = 0;

        for (uint64_t v = 0; v < (UINT64_C(1) << 36); v = v * 3 / 2 + 1) {
                size_t i = bench_hist_index(v);
                uint64_t back = bench_hist_value(i);
                uint64_t err = back > v ? back - v : v - back;

                if (i >= BENCH_HIST_BUCKETS || err * 1000 > v + 1000) {
                        fprintf(stderr, "selftest: %" PRIu64 " -> bucket %zu -> %" PRIu64 "\n", v, i, back);
                        bad = 1;
                }
        }
        if (bench_hist_init(&h) < 0)
                return 1;
        for (uint64_t v = 1; v <= 100000; v++)
                bench_hist_add(&h, v);
        uint64_t p50 = bench_hist_percentile(&h, 50), p99 = bench_hist_percentile(&h, 99);
        if (p50 < 49950 || p50 > 50050 || p99 < 98900 || p99 > 99100 || h.max != 100000 ||
            bench_hist_percentile(&h, 100) != 100000 || bench_hist_percentile(&h, 0) != 1) {
                fprintf(stderr, "selftest: p50=%" PRIu64 " p99=%" PRIu64 "\n", p50, p99);
                bad = 1;
        }
        bench_hist_done(&h);
        printf("selftest: %s\n", bad ? "FAILED" : "ok");
        return bad;
}

enum {
        OPT_URL = 0x100, OPT_UNIX, OPT_CONNS, OPT_DURATION, OPT_REQUESTS, OPT_STREAM, OPT_BODY,
        OPT_HEADER, OPT_JSON, OPT_TIMEOUT, OPT_HOLD, OPT_PATH, OPT_SETUP, OPT_DUMP, OPT_HELP,
};

int main(int argc, char *argv[]) {
        static const struct option longopts[] = {
                { "url", required_argument, NULL, OPT_URL },
                { "unix-socket", required_argument, NULL, OPT_UNIX },
                { "connections", required_argument, NULL, OPT_CONNS },
                { "duration", required_argument, NULL, OPT_DURATION },
                { "requests", required_argument, NULL, OPT_REQUESTS },
                { "stream", no_argument, NULL, OPT_STREAM },
                { "body", required_argument, NULL, OPT_BODY },
                { "header", required_argument, NULL, OPT_HEADER },
                { "json", no_argument, NULL, OPT_JSON },
                { "timeout", required_argument, NULL, OPT_TIMEOUT },
                { "hold", required_argument, NULL, OPT_HOLD },
                { "path", required_argument, NULL, OPT_PATH },
                { "setup-timeout", required_argument, NULL, OPT_SETUP },
                { "dump", required_argument, NULL, OPT_DUMP },
                { "help", no_argument, NULL, OPT_HELP },
                {}
        };
        struct load_opts lo = { .connections = 1, .timeout_sec = 30 };
        struct bench_hold_opts ho = { .connections = 1000, .hold_sec = 30, .setup_sec = 30 };
        const char *mode = "load";
        bool have_hold = false;
        uint64_t v;
        int c, r;

        if (argc > 1 && argv[1][0] != '-') {
                mode = argv[1];
                argv++;
                argc--;
        }
        if (streq(mode, "selftest"))
                return selftest();
        if (!streq(mode, "load") && !streq(mode, "idle") && !streq(mode, "streams") && !streq(mode, "burst")) {
                fprintf(stderr, "kb-bench: unknown mode '%s'\n", mode);
                usage(stderr);
                return 2;
        }

        while ((c = getopt_long(argc, argv, "", longopts, NULL)) >= 0) {
                switch (c) {
                case OPT_URL:
                        lo.url = optarg;
                        break;
                case OPT_UNIX:
                        lo.unix_socket = ho.unix_socket = optarg;
                        break;
                case OPT_CONNS:
                        if (parse_uint(optarg, MAX_CONNECTIONS, &v) < 0 || v == 0) {
                                fprintf(stderr, "kb-bench: --connections must be 1..%u\n", MAX_CONNECTIONS);
                                return 2;
                        }
                        lo.connections = ho.connections = (unsigned) v;
                        break;
                case OPT_DURATION:
                        if (parse_seconds(optarg, &lo.duration_sec) < 0) {
                                fprintf(stderr, "kb-bench: bad --duration '%s'\n", optarg);
                                return 2;
                        }
                        break;
                case OPT_REQUESTS:
                        if (parse_uint(optarg, UINT64_C(1) << 40, &lo.requests) < 0 || lo.requests == 0) {
                                fprintf(stderr, "kb-bench: bad --requests '%s'\n", optarg);
                                return 2;
                        }
                        break;
                case OPT_STREAM:
                        lo.stream = true;
                        break;
                case OPT_BODY:
                        lo.body = ho.body = optarg;
                        break;
                case OPT_HEADER:
                        if (lo.n_headers >= BENCH_MAX_HEADERS || !strchr(optarg, ':')) {
                                fprintf(stderr, "kb-bench: bad or too many --header '%s'\n", optarg);
                                return 2;
                        }
                        lo.headers[lo.n_headers++] = optarg;
                        ho.headers[ho.n_headers++] = optarg;
                        break;
                case OPT_JSON:
                        lo.json = true;
                        break;
                case OPT_TIMEOUT:
                        if (parse_seconds(optarg, &lo.timeout_sec) < 0) {
                                fprintf(stderr, "kb-bench: bad --timeout '%s'\n", optarg);
                                return 2;
                        }
                        break;
                case OPT_HOLD:
                        if (parse_seconds(optarg, &ho.hold_sec) < 0) {
                                fprintf(stderr, "kb-bench: bad --hold '%s'\n", optarg);
                                return 2;
                        }
                        have_hold = true;
                        break;
                case OPT_PATH:
                        if (optarg[0] != '/' || strpbrk(optarg, " \r\n")) {
                                fprintf(stderr, "kb-bench: bad --path '%s'\n", optarg);
                                return 2;
                        }
                        ho.path = optarg;
                        break;
                case OPT_SETUP:
                        if (parse_seconds(optarg, &ho.setup_sec) < 0) {
                                fprintf(stderr, "kb-bench: bad --setup-timeout '%s'\n", optarg);
                                return 2;
                        }
                        break;
                case OPT_DUMP:
                        ho.dump = optarg;
                        break;
                case OPT_HELP:
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "kb-bench: unexpected argument '%s'\n", argv[optind]);
                return 2;
        }

        /* SIGINT/SIGTERM end a run early but still print what was measured. */
        struct sigaction sa = { .sa_handler = on_signal };
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);

        if (streq(mode, "burst")) {
                ho.burst = true;
                ho.stream = ho.body != NULL;
                if (!ho.unix_socket) {
                        fprintf(stderr, "kb-bench burst: needs --unix-socket\n");
                        return 2;
                }
                r = bench_burst(&ho);
                if (r < 0)
                        fprintf(stderr, "kb-bench burst: %s\n", strerror(-r));
                return r < 0 ? 1 : 0;
        }
        if (!streq(mode, "load")) {
                ho.stream = streq(mode, "streams");
                if (!ho.unix_socket || !have_hold || (ho.stream && !ho.body)) {
                        fprintf(stderr, "kb-bench %s: needs --unix-socket, --hold%s\n", mode,
                                ho.stream ? " and --body" : "");
                        return 2;
                }
                r = bench_hold(&ho);
                return r < 0 ? 1 : 0;
        }

        if (!lo.url || (lo.duration_sec > 0) == (lo.requests > 0)) {
                fprintf(stderr, "kb-bench: needs --url and exactly one of --duration / --requests\n");
                usage(stderr);
                return 2;
        }
        if (!lo.body)
                lo.body = lo.stream
                        ? "{\"model\":\"bench\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"
                        : "{\"model\":\"bench\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
        r = run_load(&lo);
        if (r < 0) {
                fprintf(stderr, "kb-bench: %s\n", strerror(-r));
                return 1;
        }
        return 0;
}

/* The hold modes check this flag too. */
bool bench_stop_requested(void) {
        return stop_requested;
}
