/* SPDX-License-Identifier: MIT */
/* See harness.h. */

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sodium.h>
#include <strings.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <llhttp.h>

#include "api.h"
#include "routing.h"
#include "admin.h"
#include "harness.h"
#include "keystore.h"
#include "objects.h"
#include "fleet-store.h"
#include "keywatch.h"
#include "router.h"

/* A stall: the broker took longer than this to answer and close. Every
 * timeout in the fuzz config is longer than anything an input can cause
 * before the client half-closes, and shorter than this. */
#define EXCHANGE_DEADLINE_USEC (20 * USEC_PER_SEC)
#define UPSTREAM_MAX_REQUEST (4u << 20)

struct up_conn {
        struct fuzz_broker *fb;
        int fd;
        sd_event_source *io;
        struct kb_buf in;
        struct kb_buf out;
        size_t out_off;
        bool answered;
        bool shut;
        struct up_conn *next;
};

struct fuzz_broker {
        struct kb_broker b;
        char dir[64];
        char api_path[128];
        char admin_path[128];
        char config_path[128];
        char keystore_path[128];
        char pristine_path[128];
        char splits_path[128];
        int up_fd;
        sd_event_source *up_src;
        uint16_t port;
        struct up_conn *up_conns;
        const char *canned;
        size_t canned_len;
        ino_t keystore_ino;
};

uint32_t fuzz_next(uint32_t *s) {
        uint32_t x = *s ?: 0x9e3779b9u;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        return *s = x;
}

static void die(const char *what, int r) {
        fprintf(stderr, "fuzz harness: %s: %s\n", what, strerror(r < 0 ? -r : r));
        abort();
}

struct kb_broker *fuzz_broker_broker(struct fuzz_broker *fb) {
        return &fb->b;
}

/* ---- the fake provider ---- */

static const char json_head[] = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: req_fuzz\r\n"
                                "request-id: req_fuzz\r\nconnection: close\r\ncontent-length: %zu\r\n\r\n";
static const char sse_head[] = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-request-id: req_fuzz\r\n"
                               "connection: close\r\n\r\n";

static const char chat_json[] =
        "{\"id\":\"chatcmpl-fuzz\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"up-gpt-2024\","
        "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"tok0 tok1 \"},\"finish_reason\":"
        "\"stop\"}],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2,\"total_tokens\":13,"
        "\"prompt_tokens_details\":{\"cached_tokens\":3},\"completion_tokens_details\":{\"reasoning_tokens\":1}}}";
static const char chat_sse[] =
        "data: {\"id\":\"chatcmpl-fuzz\",\"object\":\"chat.completion.chunk\",\"model\":\"up-gpt\",\"choices\":[{"
        "\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n"
        "data: {\"id\":\"chatcmpl-fuzz\",\"object\":\"chat.completion.chunk\",\"model\":\"up-gpt\",\"choices\":[{"
        "\"index\":0,\"delta\":{\"content\":\"tok0 \"},\"finish_reason\":null}],\"usage\":null}\n\n"
        "data: {\"id\":\"chatcmpl-fuzz\",\"object\":\"chat.completion.chunk\",\"model\":\"up-gpt\",\"choices\":[{"
        "\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n"
        "data: {\"id\":\"chatcmpl-fuzz\",\"object\":\"chat.completion.chunk\",\"model\":\"up-gpt\",\"choices\":[],"
        "\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":1,\"total_tokens\":12}}\n\n"
        "data: [DONE]\n\n";
static const char responses_json[] =
        "{\"id\":\"resp_fuzz\",\"object\":\"response\",\"model\":\"up-gpt\",\"status\":\"completed\",\"output\":[],"
        "\"usage\":{\"input_tokens\":5,\"input_tokens_details\":{\"cached_tokens\":1},\"output_tokens\":2,"
        "\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":7}}";
static const char responses_sse[] =
        "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_fuzz\","
        "\"model\":\"up-gpt\",\"status\":\"in_progress\",\"usage\":null}}\n\n"
        "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"tok0 \"}\n\n"
        "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_fuzz\","
        "\"model\":\"up-gpt\",\"status\":\"completed\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1,"
        "\"total_tokens\":6}}}\n\n";
static const char embeddings_json[] =
        "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":0,\"embedding\":[0.1,0.2]}],"
        "\"model\":\"up-embed\",\"usage\":{\"prompt_tokens\":4,\"total_tokens\":4}}";
static const char messages_json[] =
        "{\"id\":\"msg_fuzz\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"up-claude\",\"content\":[{"
        "\"type\":\"text\",\"text\":\"tok0 \"}],\"stop_reason\":\"end_turn\",\"usage\":{\"input_tokens\":9,"
        "\"output_tokens\":1,\"cache_creation_input_tokens\":2,\"cache_read_input_tokens\":3}}";
static const char messages_sse[] =
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_fuzz\",\"type\":"
        "\"message\",\"role\":\"assistant\",\"model\":\"up-claude\",\"content\":[],\"usage\":{\"input_tokens\":9,"
        "\"output_tokens\":1,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0}}}\n\n"
        "event: ping\ndata: {\"type\":\"ping\"}\n\n"
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
        "\"text_delta\",\"text\":\"tok0 \"}}\n\n"
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},"
        "\"usage\":{\"output_tokens\":2}}\n\n"
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
static const char count_json[] = "{\"input_tokens\":12}";
static const char models_json[] = "{\"object\":\"list\",\"data\":[{\"id\":\"up-gpt\",\"object\":\"model\"}]}";

/* The default answer: what a provider says to this request line. */
static void default_answer(struct up_conn *u) {
        const char *req = u->in.data ?: "";
        const char *eol = strstr(req, "\r\n") ?: req + strlen(req);
        _cleanup_free_ char *line = strndup(req, (size_t) (eol - req));
        bool stream = strstr(req, "\"stream\":true") || strstr(req, "\"stream\": true");
        const char *body = NULL;

        if (!line)
                return;
        if (strstr(line, "/chat/completions"))
                body = stream ? chat_sse : chat_json;
        else if (strstr(line, "/responses"))
                body = stream ? responses_sse : responses_json;
        else if (strstr(line, "/embeddings"))
                body = embeddings_json;
        else if (strstr(line, "/messages/count_tokens"))
                body = count_json;
        else if (strstr(line, "/messages"))
                body = stream ? messages_sse : messages_json;
        else
                body = models_json;

        if (body == chat_sse || body == responses_sse || body == messages_sse) {
                (void) kb_buf_append(&u->out, sse_head, strlen(sse_head));
                (void) kb_buf_append(&u->out, body, strlen(body));
        } else {
                (void) kb_buf_appendf(&u->out, json_head, strlen(body));
                (void) kb_buf_append(&u->out, body, strlen(body));
        }
}

/* Whether u->in holds a whole request: headers, then Content-Length bytes
 * or a chunked body's last chunk. */
static bool request_complete(const struct up_conn *u) {
        const char *d = u->in.data;
        if (!d)
                return false;
        const char *end = strstr(d, "\r\n\r\n");
        if (!end)
                return false;
        size_t head = (size_t) (end - d) + 4;
        for (const char *p = d; p < end; p++) {
                if (*p != '\n')
                        continue;
                if (strncasecmp(p + 1, "content-length:", 15) == 0) {
                        unsigned long long n = strtoull(p + 16, NULL, 10);
                        return u->in.len >= head + n;
                }
                if (strncasecmp(p + 1, "transfer-encoding:", 18) == 0)
                        return memmem(d + head, u->in.len - head, "0\r\n\r\n", 5) != NULL;
        }
        return true;
}

static void up_conn_free(struct up_conn *u) {
        struct fuzz_broker *fb = u->fb;
        for (struct up_conn **p = &fb->up_conns; *p; p = &(*p)->next)
                if (*p == u) {
                        *p = u->next;
                        break;
                }
        sd_event_source_disable_unref(u->io);
        close(u->fd);
        kb_buf_free(&u->in);
        kb_buf_free(&u->out);
        free(u);
}

static int up_conn_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        struct up_conn *u = userdata;
        char buf[16384];

        if (revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                        up_conn_free(u);
                        return 0;
                }
                if (n > 0 && !u->answered && u->in.len < UPSTREAM_MAX_REQUEST)
                        (void) kb_buf_append(&u->in, buf, (size_t) n);
        }
        if (!u->answered && (request_complete(u) || u->in.len >= UPSTREAM_MAX_REQUEST)) {
                u->answered = true;
                if (u->fb->canned)
                        (void) kb_buf_append(&u->out, u->fb->canned, u->fb->canned_len);
                else
                        default_answer(u);
        }
        while (u->answered && u->out_off < u->out.len) {
                ssize_t n = send(fd, u->out.data + u->out_off, u->out.len - u->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EAGAIN)
                                break;
                        up_conn_free(u);
                        return 0;
                }
                u->out_off += (size_t) n;
        }
        if (u->answered && u->out_off >= u->out.len && !u->shut) {
                u->shut = true;
                (void) shutdown(fd, SHUT_WR);
        }
        (void) sd_event_source_set_io_events(u->io, u->answered && !u->shut ? EPOLLIN | EPOLLOUT : EPOLLIN);
        return 0;
}

static int up_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        struct fuzz_broker *fb = userdata;
        for (;;) {
                int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (cfd < 0)
                        return 0;
                struct up_conn *u = calloc(1, sizeof(*u));
                if (!u) {
                        close(cfd);
                        continue;
                }
                u->fb = fb;
                u->fd = cfd;
                if (sd_event_add_io(fb->b.event, &u->io, cfd, EPOLLIN, up_conn_io, u) < 0) {
                        close(cfd);
                        free(u);
                        continue;
                }
                u->next = fb->up_conns;
                fb->up_conns = u;
        }
}

static void upstream_listen(struct fuzz_broker *fb) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t sl = sizeof(sa);

        fb->up_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fb->up_fd < 0 || bind(fb->up_fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 || listen(fb->up_fd, 128) < 0 ||
            getsockname(fb->up_fd, (struct sockaddr *) &sa, &sl) < 0)
                die("upstream listener", errno);
        fb->port = ntohs(sa.sin_port);
        int r = sd_event_add_io(fb->b.event, &fb->up_src, fb->up_fd, EPOLLIN, up_accept, fb);
        if (r < 0)
                die("upstream listener source", r);
}

void fuzz_broker_set_upstream(struct fuzz_broker *fb, const char *canned, size_t len) {
        fb->canned = canned;
        fb->canned_len = len;
}

/* ---- the broker ---- */

/* Records are built for real; the sender checks their shape instead of
 * writing them: "FIELD=value" with a valid field name. */
static int check_record(const struct iovec *iov, int n, void *userdata) {
        for (int i = 0; i < n; i++) {
                const char *p = iov[i].iov_base, *eq = memchr(p, '=', iov[i].iov_len);
                if (!eq || eq == p)
                        abort();
                for (const char *q = p; q < eq; q++)
                        if (!((*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') || *q == '_'))
                                abort();
        }
        return 0;
}

static void spew(const char *path, const void *data, size_t len) {
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0 || write(fd, data, len) != (ssize_t) len)
                die(path, errno);
}

static void copy_file(const char *from, const char *to) {
        char buf[65536];
        _cleanup_close_ int in = open(from, O_RDONLY | O_CLOEXEC);
        if (in < 0)
                die(from, errno);
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0 || n == (ssize_t) sizeof(buf))
                die(from, EFBIG);
        char tmp[160];
        snprintf(tmp, sizeof(tmp), "%s.restore", to);
        spew(tmp, buf, (size_t) n);
        if (rename(tmp, to) < 0)
                die(to, errno);
}

static ino_t inode_of(const char *path) {
        struct stat st;
        return stat(path, &st) < 0 ? 0 : st.st_ino;
}

static void write_config(struct fuzz_broker *fb) {
        _cleanup_free_ char *text = NULL;
        unsigned uid = (unsigned) getuid();
        /* No breakers, no fallback delays, no random weights and limits far
         * away: an input's answer must not depend on the inputs before it. */
        if (asprintf(&text,
                     "[agent]\n"
                     "listen = %1$s/api.sock\n"
                     "admin = %1$s/admin.sock\n"
                     "admin_users = %2$u\n"
                     "keystore = %1$s/keys.sealed\n"
                     "master_key = %1$s/master\n"
                     "state_dir = %1$s/state\n"
                     "max_request_body = 1M\n"
                     "header_timeout = 5s\n"
                     "idle_timeout = 5s\n"
                     "max_connections = 64\n"
                     "\n[team:fuzz]\nusers = %2$u\nmodels = *\n"
                     "tokens_per_day = 1000000000000\nbudget_usd_per_day = 1000000\n"
                     "\n[team:narrow]\nusers = %2$u\nmodels = chat\nunpriced = deny\nbudget_usd_per_month = 1000000\n"
                     "\n[route:oa]\nfamily = openai\nbase_url = http://127.0.0.1:%3$u/v1\n"
                     "timeout = 10s\nconnect_timeout = 5s\nretry_on = none\nbreaker_failures = 0\n"
                     "header = OpenAI-Organization: org-fuzz\n"
                     "price = up-gpt input=0.15 output=0.60 cached_input=0.075\nprice = up-embed input=0.02\n"
                     "\n[route:an]\nfamily = anthropic\nbase_url = http://127.0.0.1:%3$u/v1\n"
                     "key = fuzz-key\nauth = x-api-key\n"
                     "timeout = 10s\nconnect_timeout = 5s\nretry_on = none\nbreaker_failures = 0\n"
                     "price = up-claude input=0.80 output=4.00 cache_write=1.0\n"
                     "\n[route:nokey]\nfamily = openai\nbase_url = http://127.0.0.1:%3$u/v1\nkey = missing-key\n"
                     "retry_on = none\nbreaker_failures = 0\n"
                     "\n[model:chat]\ntarget = oa up-gpt\n"
                     "\n[model:claude]\ntarget = an up-claude\n"
                     "\n[model:embed]\ntarget = oa up-embed\n"
                     "\n[model:both]\ntarget = oa up-gpt\nfallback = an up-claude\n"
                     "\n[model:gone]\ntarget = nokey up-gpt\n",
                     fb->dir, uid, (unsigned) fb->port) < 0)
                die("config", ENOMEM);
        spew(fb->config_path, text, strlen(text));
}

static struct fuzz_broker *fuzz_broker_new(void) {
        struct fuzz_broker *fb = calloc(1, sizeof(*fb));
        char path[160];
        int r;

        if (!fb)
                die("calloc", ENOMEM);
        if (sodium_init() < 0)
                die("sodium_init", EIO);
        signal(SIGPIPE, SIG_IGN);
        /* tmpfs when there is one: the keystore fsyncs every change */
        snprintf(fb->dir, sizeof(fb->dir), "%s/kb-fuzz-XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
        if (!mkdtemp(fb->dir))
                die("mkdtemp", errno);
        snprintf(fb->api_path, sizeof(fb->api_path), "%s/api.sock", fb->dir);
        snprintf(fb->admin_path, sizeof(fb->admin_path), "%s/admin.sock", fb->dir);
        snprintf(fb->config_path, sizeof(fb->config_path), "%s/keybroker.conf", fb->dir);
        snprintf(fb->keystore_path, sizeof(fb->keystore_path), "%s/keys.sealed", fb->dir);
        snprintf(fb->pristine_path, sizeof(fb->pristine_path), "%s/keys.pristine", fb->dir);
        snprintf(fb->splits_path, sizeof(fb->splits_path), "%s/state/splits.json", fb->dir);
        snprintf(path, sizeof(path), "%s/state", fb->dir);
        if (mkdir(path, 0700) < 0)
                die(path, errno);
        unsigned char master[32];
        memset(master, 0x42, sizeof(master));
        snprintf(path, sizeof(path), "%s/master", fb->dir);
        spew(path, master, sizeof(master));

        struct kb_broker *b = &fb->b;
        r = sd_event_new(&b->event);
        if (r < 0)
                die("sd_event_new", r);
        b->keyseal.event = b->heaptrim.event = b->event;
        b->heaptrim.in_flight = &b->n_in_flight;
        upstream_listen(fb);
        write_config(fb);
        b->config_path = fb->config_path;
        b->started_usec = kb_realtime_usec();
        memcpy(b->instance, "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0", 33);

        _cleanup_free_ char *error = NULL;
        r = kb_config_load(fb->config_path, false, &b->config, &error);
        if (r < 0) {
                fprintf(stderr, "%s\n", strempty(error));
                die("config", r);
        }
        r = kb_broker_load_keys(b->config, &b->keys, &error);
        if (r < 0)
                die("keys", r);
        unsigned version;
        r = kb_keystore_set(b->keys, "fuzz-key", "sk-fuzz-secret", 14, &version);
        if (r < 0)
                die("keystore set", r);
        copy_file(fb->keystore_path, fb->pristine_path);
        fb->keystore_ino = inode_of(fb->keystore_path);

        if ((r = kb_quota_new(&b->quota)) < 0 || (r = kb_quota_configure(b->quota, b->config)) < 0)
                die("quota", r);
        if ((r = kb_routing_setup(b)) < 0)
                die("routing", r);
        if ((r = kb_journal_new(4096, &b->journal)) < 0)
                die("journal", r);
        kb_journal_set_sender(b->journal, check_record, NULL);
        if ((r = kb_upstream_new(b->event, &b->upstream)) < 0)
                die("upstream", r);
        /* the object table in memory: fuzzed answers make and use objects */
        if ((r = kb_objects_open(NULL, &b->objects)) < 0)
                die("objects", r);

        int fd = kb_http_listen_unix(fb->api_path, 0600);
        if (fd < 0)
                die("api listen", fd);
        r = kb_http_server_new(b->event, fd, (struct kb_http_limits[]) { kb_api_limits(b->config) }, &kb_api_ops, b,
                               &b->api);
        if (r < 0)
                die("api server", r);
        fd = kb_http_listen_unix(fb->admin_path, 0600);
        if (fd < 0)
                die("admin listen", fd);
        r = kb_http_server_new(b->event, fd, (struct kb_http_limits[]) { kb_admin_limits() }, &kb_admin_ops, b,
                               &b->admin);
        if (r < 0)
                die("admin server", r);
        return fb;
}

static struct fuzz_broker *the_broker;

static void fuzz_broker_cleanup(void) {
        struct fuzz_broker *fb = the_broker;
        if (!fb)
                return;
        struct kb_broker *b = &fb->b;
        kb_http_server_free(b->api);
        kb_http_server_free(b->admin);
        while (fb->up_conns)
                up_conn_free(fb->up_conns);
        sd_event_source_disable_unref(fb->up_src);
        close(fb->up_fd);
        kb_upstream_free(b->upstream);
        kb_journal_free(b->journal, USEC_PER_SEC);
        kb_keystore_free(b->keys);
        kb_quota_free(b->quota);
        kb_router_free(b->router);
        kb_objects_free(b->objects);
        kb_config_unref(b->config);
        free(b->uid_conns);
        kb_keyseal_done(&b->keyseal);
        kb_heaptrim_done(&b->heaptrim);
        kb_keywatch_free(b->keywatch); /* a fuzzed POST /reload sets it up */
        kb_store_free(b->store);
        sd_event_unref(b->event);
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fb->dir);
        if (system(cmd) != 0)
                fprintf(stderr, "fuzz harness: cannot remove %s\n", fb->dir);
        free(fb);
        the_broker = NULL;
}

struct fuzz_broker *fuzz_broker_get(void) {
        if (!the_broker) {
                the_broker = fuzz_broker_new();
                atexit(fuzz_broker_cleanup);
        }
        return the_broker;
}

void fuzz_broker_reset(struct fuzz_broker *fb) {
        struct kb_broker *b = &fb->b;
        char path[160];
        int r;

        if (inode_of(fb->keystore_path) != fb->keystore_ino) {
                copy_file(fb->pristine_path, fb->keystore_path);
                fb->keystore_ino = inode_of(fb->keystore_path);
                struct kb_keystore *ks = NULL;
                _cleanup_free_ char *error = NULL;
                r = kb_broker_load_keys(b->config, &ks, &error);
                if (r < 0)
                        die("keystore reset", r);
                kb_keystore_free(b->keys);
                b->keys = ks;
        }
        if (access(fb->splits_path, F_OK) == 0) {
                (void) unlink(fb->splits_path);
                kb_router_free(b->router);
                b->router = NULL;
                if ((r = kb_routing_setup(b)) < 0)
                        die("routing reset", r);
        }
        /* Preflight evidence files. */
        snprintf(path, sizeof(path), "%s/state", fb->dir);
        DIR *d = opendir(path);
        struct dirent *de;
        while (d && (de = readdir(d)))
                if (de->d_name[0] != '.' && !streq(de->d_name, "instance")) {
                        char p[400];
                        snprintf(p, sizeof(p), "%s/%s", path, de->d_name);
                        char cmd[480];
                        struct stat st;
                        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
                                snprintf(cmd, sizeof(cmd), "rm -rf '%s'", p);
                                if (system(cmd) != 0)
                                        die(p, EIO);
                        } else
                                (void) unlink(p);
                }
        if (d)
                closedir(d);
}

/* ---- one exchange ---- */

static bool settled(struct fuzz_broker *fb) {
        struct kb_broker *b = &fb->b;
        return kb_http_server_n_connections(b->api) == 0 && kb_http_server_n_connections(b->admin) == 0 &&
               b->n_in_flight == 0 && kb_upstream_n_calls(b->upstream) == 0;
}

void fuzz_exchange(struct fuzz_broker *fb, bool admin, const uint8_t *data, size_t len, uint32_t seed,
                   struct kb_buf *reply, size_t max_reply) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct kb_broker *b = &fb->b;
        uint64_t deadline = kb_now_usec() + EXCHANGE_DEADLINE_USEC;
        size_t off = 0;
        bool shut = false, eof = false;
        char buf[65536];

        strncpy(sa.sun_path, admin ? fb->admin_path : fb->api_path, sizeof(sa.sun_path) - 1);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                die("connect", errno);

        while (!eof || !settled(fb)) {
                if (!shut && off < len) {
                        /* MIN() evaluates twice: draw first */
                        size_t piece = 1 + fuzz_next(&seed) % (seed & 0x100 ? 64 : 4096);
                        piece = MIN(piece, len - off);
                        ssize_t n = send(fd, data + off, piece, MSG_NOSIGNAL | MSG_DONTWAIT);
                        if (n > 0)
                                off += (size_t) n;
                        else if (n < 0 && errno != EAGAIN)
                                shut = true; /* the broker closed on us: fine */
                }
                if (!shut && off >= len) {
                        (void) shutdown(fd, SHUT_WR);
                        shut = true;
                }
                int r = sd_event_run(b->event, shut ? 20 * 1000 : 0);
                if (r < 0)
                        die("sd_event_run", r);
                while (!eof) {
                        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
                        if (n < 0 && errno == EAGAIN)
                                break;
                        if (n <= 0) {
                                eof = true;
                                break;
                        }
                        if (reply && reply->len < max_reply)
                                (void) kb_buf_append(reply, buf, MIN((size_t) n, max_reply - reply->len));
                }
                if (eof && fd >= 0) {
                        close(fd);
                        fd = -1;
                }
                if (kb_now_usec() > deadline) {
                        fprintf(stderr,
                                "fuzz harness: stall: sent %zu/%zu bytes, eof=%d, api conns %zu, admin conns %zu, "
                                "in flight %llu, upstream calls %zu\n",
                                off, len, eof, kb_http_server_n_connections(b->api),
                                kb_http_server_n_connections(b->admin), (unsigned long long) b->n_in_flight,
                                kb_upstream_n_calls(b->upstream));
                        abort();
                }
        }
        if (fd >= 0)
                close(fd);
        if (getenv("KB_FUZZ_SLOW") && kb_now_usec() + EXCHANGE_DEADLINE_USEC - deadline > 50 * USEC_PER_MSEC)
                fprintf(stderr, "fuzz harness: slow exchange: %llu ms for %zu bytes: %.*s\n",
                        (unsigned long long) ((kb_now_usec() + EXCHANGE_DEADLINE_USEC - deadline) / USEC_PER_MSEC),
                        len, (int) MIN(len, (size_t) 200), (const char *) data);
        /* No call is running: whatever the provider side still holds was
         * read by curl or will never be. Closing it here keeps curl from
         * reusing a connection the next input's answer would not fit. */
        while (fb->up_conns)
                up_conn_free(fb->up_conns);
}

/* ---- what came back ---- */

static int on_message_complete(llhttp_t *p) {
        (*(unsigned *) p->data)++;
        return 0;
}

unsigned fuzz_check_reply(const struct kb_buf *reply) {
        llhttp_settings_t settings;
        llhttp_t parser;
        unsigned n = 0;

        if (!reply->len)
                return 0;
        llhttp_settings_init(&settings);
        settings.on_message_complete = on_message_complete;
        llhttp_init(&parser, HTTP_RESPONSE, &settings);
        parser.data = &n;
        /* Every byte the broker writes is HTTP/1.x framing a client can
         * follow; only the end may be cut (a killed stream, a closed
         * connection). */
        llhttp_errno_t e = llhttp_execute(&parser, reply->data, reply->len);
        if (e != HPE_OK && e != HPE_PAUSED_UPGRADE) {
                fprintf(stderr, "fuzz harness: the broker wrote unparsable HTTP: %s (%s) at byte %zu\n",
                        llhttp_errno_name(e), strempty(llhttp_get_error_reason(&parser)),
                        (size_t) (llhttp_get_error_pos(&parser) - reply->data));
                abort();
        }
        (void) llhttp_finish(&parser);
        return n;
}
