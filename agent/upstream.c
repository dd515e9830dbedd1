/* SPDX-License-Identifier: MIT */
/* Calls to providers over libcurl's multi interface, driven by sd-event.
 *
 * curl never runs a loop of its own here: its sockets go into an ioset
 * (CURLMOPT_SOCKETFUNCTION, the registration kept with curl_multi_assign),
 * one loop source for all of them (ioset.h says why); its one timer is a
 * CLOCK_MONOTONIC loop timer (CURLMOPT_TIMERFUNCTION). Whenever a socket is
 * ready or the timer fires we call curl_multi_socket_action() and then
 * collect finished transfers with curl_multi_info_read().
 *
 * Re-entrancy: user callbacks (on_response, on_data) run inside curl, where
 * curl refuses curl_multi_add_handle()/curl_multi_remove_handle() and where
 * freeing an easy handle would pull the floor away under curl. While u->busy
 * is non-zero, cancelled calls therefore only become "zombies" (no further
 * callbacks, reaped later) and new calls wait in the list un-added; both are
 * settled as soon as the outermost curl entry returns. on_done runs outside
 * curl (from the info_read drain or the defer source), so it may do anything
 * except free the upstream. */

#include <curl/curl.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <sys/epoll.h>

#include "upstream-internal.h"
#include "util.h"

#define KB_UPSTREAM_MAXCONNECTS 64L

#ifndef CURL_WRITEFUNC_ERROR
#define CURL_WRITEFUNC_ERROR 0
#endif

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_FAILED_INIT;

static void curl_init_once(void) {
        curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- lists ---- */

#define LIST_PREPEND(head, item)                                        \
        do {                                                            \
                (item)->prev = NULL;                                    \
                (item)->next = (head);                                  \
                if (head)                                               \
                        (head)->prev = (item);                          \
                (head) = (item);                                        \
        } while (0)

#define LIST_REMOVE(head, item)                                         \
        do {                                                            \
                if ((item)->next)                                       \
                        (item)->next->prev = (item)->prev;              \
                if ((item)->prev)                                       \
                        (item)->prev->next = (item)->next;              \
                else                                                    \
                        (head) = (item)->next;                          \
                (item)->prev = (item)->next = NULL;                     \
        } while (0)

/* ---- error mapping ---- */

static int curlcode_to_errno(CURLcode code) {
        switch (code) {
        case CURLE_OK:
                return 0;
        case CURLE_OPERATION_TIMEDOUT:
                return -ETIMEDOUT;
        case CURLE_COULDNT_CONNECT:
                return -ECONNREFUSED;
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
                return -EHOSTUNREACH;
        case CURLE_RECV_ERROR:
        case CURLE_SEND_ERROR:
        case CURLE_PARTIAL_FILE:
        case CURLE_GOT_NOTHING:
        case CURLE_HTTP2:
        case CURLE_HTTP2_STREAM:
                return -ECONNRESET;
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_CIPHER:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_ENGINE_NOTFOUND:
        case CURLE_SSL_ENGINE_SETFAILED:
        case CURLE_SSL_ENGINE_INITFAILED:
        case CURLE_SSL_SHUTDOWN_FAILED:
        case CURLE_SSL_CRL_BADFILE:
        case CURLE_SSL_ISSUER_ERROR:
        case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        case CURLE_SSL_INVALIDCERTSTATUS:
        case CURLE_SSL_CLIENTCERT:
        case CURLE_USE_SSL_FAILED:
        case CURLE_WEIRD_SERVER_REPLY:
        case CURLE_BAD_CONTENT_ENCODING:
                return -EPROTO;
        default:
                return -EIO;
        }
}

/* ---- call teardown ---- */

/* Only outside curl (u->busy == 0). */
static void call_destroy(struct kb_upstream_call *c) {
        struct kb_upstream *u = c->u;

        LIST_REMOVE(u->calls, c);
        if (!c->cancelled && !c->in_done)
                u->n_calls--;

        if (c->easy) {
                if (c->added)
                        (void) curl_multi_remove_handle(u->multi, c->easy);
                curl_easy_cleanup(c->easy);
        }
        /* after the easy handle: curl may still point at the list until then */
        c->slist = kb_upstream_slist_wipe_free(c->slist);
        kb_buf_free(&c->hdrs);
        free(c);
}

static void upstream_schedule_defer(struct kb_upstream *u) {
        (void) sd_event_source_set_enabled(u->defer, SD_EVENT_ONESHOT);
}

/* ---- response delivery ---- */

static size_t on_curl_header(char *buf, size_t size, size_t nitems, void *userdata) {
        struct kb_upstream_call *c = userdata;
        size_t n = size * nitems;

        if (c->cancelled)
                return CURL_WRITEFUNC_ERROR;
        /* trailers after the body are not surfaced */
        if (c->response_sent)
                return n;

        c->header_bytes += n;
        if (c->header_bytes > KB_UPSTREAM_MAX_RESPONSE_HEADER_BYTES) {
                c->abort_error = -EPROTO;
                return CURL_WRITEFUNC_ERROR;
        }
        if (kb_upstream_head_line(c, buf, n) < 0) {
                c->abort_error = -EIO;
                return CURL_WRITEFUNC_ERROR;
        }
        return n;
}

static size_t on_curl_write(char *buf, size_t size, size_t nmemb, void *userdata) {
        struct kb_upstream_call *c = userdata;
        size_t n = size * nmemb;
        int r;

        if (c->cancelled || c->abort_error < 0 || c->fail_error < 0)
                return CURL_WRITEFUNC_ERROR;
        /* curl holds on to these bytes and hands them over again on resume */
        if (c->paused)
                return CURL_WRITEFUNC_PAUSE;

        if (!c->response_sent) {
                r = kb_upstream_deliver_response(c);
                if (r < 0) {
                        c->abort_error = r == -ENOMEM ? -EIO : -ECANCELED;
                        return CURL_WRITEFUNC_ERROR;
                }
                if (c->cancelled)
                        return CURL_WRITEFUNC_ERROR;
                if (c->paused)
                        return CURL_WRITEFUNC_PAUSE;
        }

        if (n == 0 || !c->ops.on_data)
                return n;

        r = c->ops.on_data(c->userdata, buf, n);
        if (r < 0) {
                c->abort_error = -ECANCELED;
                return CURL_WRITEFUNC_ERROR;
        }
        if (c->cancelled)
                return CURL_WRITEFUNC_ERROR;
        /* the bytes were consumed even if on_data paused us: curl_easy_pause()
         * from inside this callback already stopped further reads */
        return n;
}

static size_t on_curl_read(char *buf, size_t size, size_t nitems, void *userdata) {
        struct kb_upstream_call *c = userdata;

        if (c->cancelled || c->abort_error < 0 || c->fail_error < 0 || !c->ops.read_body)
                return CURL_READFUNC_ABORT;
        ssize_t r = c->ops.read_body(c->userdata, buf, size * nitems);
        if (r == -EAGAIN) {
                c->send_paused = true;
                return CURL_READFUNC_PAUSE;
        }
        if (r < 0) {
                c->abort_error = (int) r;
                return CURL_READFUNC_ABORT;
        }
        return (size_t) r;
}

/* What curl must keep paused: receiving while the app is slow, sending
 * while the app's body has not come. */
static int pause_mask(const struct kb_upstream_call *c) {
        return (c->paused ? CURLPAUSE_RECV : 0) | (c->send_paused ? CURLPAUSE_SEND : 0);
}

/* ---- finishing calls ---- */

/* Outside curl only. Removes c from the multi, runs on_done, frees c. */
static void call_finish(struct kb_upstream_call *c, int error, const char *message) {
        struct kb_upstream *u = c->u;

        if (c->added) {
                /* first, so that its connection is back in the cache for
                 * whatever on_done starts */
                (void) curl_multi_remove_handle(u->multi, c->easy);
                c->added = false;
        }
        c->in_done = true;
        u->n_calls--;
        if (c->ops.on_done)
                c->ops.on_done(c->userdata, error, message);
        call_destroy(c);
}

static void upstream_drain(struct kb_upstream *u) {
        CURLMsg *msg;
        int left;

        while ((msg = curl_multi_info_read(u->multi, &left))) {
                struct kb_upstream_call *c;
                char *priv = NULL;
                CURLcode result;
                const char *message = NULL;
                int error;

                if (msg->msg != CURLMSG_DONE)
                        continue;
                result = msg->data.result;
                if (curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv) != CURLE_OK || !priv)
                        continue;
                c = (struct kb_upstream_call *) priv;
                if (c->cancelled || c->in_done || c->finishing)
                        continue;
                c->finishing = true;

                if (c->fail_error < 0)
                        error = c->fail_error;
                else if (result != CURLE_OK && c->abort_error < 0)
                        error = c->abort_error;
                else
                        error = curlcode_to_errno(result);
                if ((error == -ECONNREFUSED || error == -EHOSTUNREACH || error == -EPROTO || error == -EIO) &&
                    !c->response_sent)
                        error = upstream_own_fault(c, error);

                if (error == 0 && !c->response_sent) {
                        /* a response without body */
                        int r = kb_upstream_deliver_response(c);
                        if (r < 0)
                                error = r == -ENOMEM ? -EIO : -ECANCELED;
                        if (c->cancelled) {
                                /* cancelled itself from on_response: no on_done */
                                call_destroy(c);
                                continue;
                        }
                }
                if (error != 0)
                        message = c->errbuf[0] ? c->errbuf : curl_easy_strerror(result);

                call_finish(c, error, message);
        }
}

/* Called whenever the outermost entry into curl returned. Runs no user
 * callback, so pause/resume never run another call's on_done. */
static void upstream_settle(struct kb_upstream *u) {
        struct kb_upstream_call *c, *next;

        for (c = u->calls; c; c = next) {
                next = c->next;
                if (c->cancelled)
                        call_destroy(c);
        }

        for (c = u->calls; c; c = c->next) {
                if (c->added || c->cancelled || c->in_done || c->fail_error < 0)
                        continue;
                if (curl_multi_add_handle(u->multi, c->easy) == CURLM_OK)
                        c->added = true;
                else {
                        c->fail_error = -EIO;
                        upstream_schedule_defer(u);
                }
        }
}

static void upstream_enter(struct kb_upstream *u) {
        u->busy++;
}

static void upstream_leave(struct kb_upstream *u) {
        if (--u->busy == 0)
                upstream_settle(u);
}

static void upstream_socket_action(struct kb_upstream *u, curl_socket_t fd, int ev_bitmask) {
        int running = 0;

        upstream_enter(u);
        (void) curl_multi_socket_action(u->multi, fd, ev_bitmask, &running);
        upstream_leave(u);
        /* only socket_action finishes transfers; drained right away, the
         * message queue is empty at any other time */
        upstream_drain(u);
}

static void call_resume_now(struct kb_upstream_call *c) {
        struct kb_upstream *u = c->u;
        CURLcode cr;

        upstream_enter(u);
        /* may hand held-back bytes to on_data right here */
        cr = curl_easy_pause(c->easy, pause_mask(c));
        /* BAD_FUNCTION_ARGUMENT: no connection yet, so curl had nothing paused */
        if (cr != CURLE_OK && cr != CURLE_BAD_FUNCTION_ARGUMENT && !c->cancelled && c->fail_error == 0) {
                c->fail_error = c->abort_error < 0 ? c->abort_error : curlcode_to_errno(cr);
                if (c->fail_error == 0)
                        c->fail_error = -EIO;
                upstream_schedule_defer(u);
        }
        /* curl re-arms its timer on unpause; kick it too, since a paused
         * HTTP/1 transfer may have nothing left to wake it but that */
        u->need_kick = true;
        upstream_schedule_defer(u);
        upstream_leave(u);
}

/* ---- event callbacks ---- */

static int on_defer(sd_event_source *s, void *userdata) {
        struct kb_upstream *u = userdata;
        struct kb_upstream_call *c;

        /* restart from the head after each user callback: it may have
         * changed the list in any way */
        for (;;) {
                for (c = u->calls; c; c = c->next)
                        if (!c->cancelled && !c->in_done && (c->fail_error < 0 || c->resume_pending))
                                break;
                if (!c)
                        break;
                if (c->fail_error < 0) {
                        int error = c->fail_error;
                        call_finish(c, error, c->errbuf[0] ? c->errbuf : NULL);
                } else {
                        c->resume_pending = false;
                        call_resume_now(c);
                }
        }

        if (u->need_kick) {
                u->need_kick = false;
                upstream_socket_action(u, CURL_SOCKET_TIMEOUT, 0);
        }
        return 0;
}

void kb_upstream_run_deferred(struct kb_upstream *u) {
        /* off first: what the work schedules anew turns it on again */
        if (!u || u->busy || sd_event_source_get_enabled(u->defer, NULL) <= 0 ||
            sd_event_source_set_enabled(u->defer, SD_EVENT_OFF) < 0)
                return;
        (void) on_defer(u->defer, u);
}

static void on_socket(struct kb_io *io, int fd, uint32_t revents, void *userdata) {
        int mask = 0;

        if (revents & (EPOLLIN | EPOLLHUP))
                mask |= CURL_CSELECT_IN;
        if (revents & EPOLLOUT)
                mask |= CURL_CSELECT_OUT;
        if (revents & EPOLLERR)
                mask |= CURL_CSELECT_ERR;
        upstream_socket_action(userdata, fd, mask);
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        upstream_socket_action(userdata, CURL_SOCKET_TIMEOUT, 0);
        return 0;
}

static void sock_free(struct kb_upstream *u, struct kb_sock *k) {
        LIST_REMOVE(u->socks, k);
        /* curl says so before it closes the socket */
        kb_io_free(k->io);
        free(k);
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
        struct kb_upstream *u = userp;
        struct kb_sock *k = socketp;
        uint32_t events = 0;

        if (what == CURL_POLL_REMOVE) {
                if (k)
                        sock_free(u, k);
                return 0;
        }

        if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
                events |= EPOLLIN;
        if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
                events |= EPOLLOUT;

        if (k)
                return kb_io_set_events(k->io, events) < 0 ? -1 : 0;

        k = calloc(1, sizeof(*k));
        if (!k)
                return -1;
        if (kb_ioset_add(u->sockets, fd, events, on_socket, u, &k->io) < 0) {
                free(k);
                return -1;
        }
        LIST_PREPEND(u->socks, k);
        if (curl_multi_assign(u->multi, fd, k) != CURLM_OK) {
                sock_free(u, k);
                return -1;
        }
        return 0;
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp) {
        struct kb_upstream *u = userp;

        /* never drive curl from here: curl forbids it inside this callback */
        if (timeout_ms < 0)
                return sd_event_source_set_enabled(u->timer, SD_EVENT_OFF) < 0 ? -1 : 0;

        /* "0 ms" comes with every new transfer: run curl on the next loop
         * pass through the defer source instead of reprogramming a timerfd
         * (and waiting out the timer's coalescing window). */
        if (timeout_ms == 0) {
                u->need_kick = true;
                return sd_event_source_set_enabled(u->defer, SD_EVENT_ONESHOT) < 0 ||
                                       sd_event_source_set_enabled(u->timer, SD_EVENT_OFF) < 0
                               ? -1
                               : 0;
        }
        if (sd_event_source_set_time(u->timer, kb_now_usec() + (uint64_t) timeout_ms * USEC_PER_MSEC) < 0 ||
            sd_event_source_set_enabled(u->timer, SD_EVENT_ONESHOT) < 0)
                return -1;
        return 0;
}

/* ---- public ---- */

int kb_upstream_new(sd_event *e, struct kb_upstream **ret) {
        struct kb_upstream *u;
        int r;

        if (!e || !ret)
                return -EINVAL;

        (void) pthread_once(&curl_once, curl_init_once);
        if (curl_init_result != CURLE_OK)
                return -EIO;
        if (sodium_init() < 0)
                return -EIO;

        u = calloc(1, sizeof(*u));
        if (!u)
                return -ENOMEM;
        u->event = sd_event_ref(e);
        r = kb_ioset_new(e, "upstream-sockets", &u->sockets);
        if (r < 0)
                goto fail;

        /* curl's timeouts are in whole milliseconds; "0 ms" goes through the
         * defer source (on_curl_timer), so coalescing never delays a call. */
        r = sd_event_add_time(e, &u->timer, CLOCK_MONOTONIC, 0, USEC_PER_MSEC, on_timer, u);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_enabled(u->timer, SD_EVENT_OFF);
        (void) sd_event_source_set_description(u->timer, "upstream-timer");

        r = sd_event_add_defer(e, &u->defer, on_defer, u);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_enabled(u->defer, SD_EVENT_OFF);
        (void) sd_event_source_set_description(u->defer, "upstream-defer");

        r = -ENOMEM;
        u->multi = curl_multi_init();
        if (!u->multi)
                goto fail;

        r = -EIO;
        if (curl_multi_setopt(u->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket) != CURLM_OK ||
            curl_multi_setopt(u->multi, CURLMOPT_SOCKETDATA, u) != CURLM_OK ||
            curl_multi_setopt(u->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer) != CURLM_OK ||
            curl_multi_setopt(u->multi, CURLMOPT_TIMERDATA, u) != CURLM_OK ||
            curl_multi_setopt(u->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L) != CURLM_OK ||
            curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, KB_UPSTREAM_MAXCONNECTS) != CURLM_OK ||
            curl_multi_setopt(u->multi, CURLMOPT_PIPELINING, (long) CURLPIPE_MULTIPLEX) != CURLM_OK)
                goto fail;

        *ret = u;
        return 0;

fail:
        kb_upstream_free(u);
        return r;
}

struct kb_upstream *kb_upstream_free(struct kb_upstream *u) {
        if (!u)
                return NULL;

        while (u->calls) {
                u->calls->cancelled = true;
                call_destroy(u->calls);
        }
        u->n_calls = 0;

        /* may call back into on_curl_socket/on_curl_timer: keep u whole until then */
        if (u->multi)
                curl_multi_cleanup(u->multi);
        while (u->socks)
                sock_free(u, u->socks);

        kb_ioset_free(u->sockets);
        sd_event_source_disable_unref(u->timer);
        sd_event_source_disable_unref(u->defer);
        sd_event_unref(u->event);
        free(u);
        return NULL;
}

static int call_setup_easy(struct kb_upstream_call *c, const struct kb_upstream_request *req) {
        CURL *e = c->easy;
        bool ok;

        ok = curl_easy_setopt(e, CURLOPT_PRIVATE, c) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->slist) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_curl_header) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_HEADERDATA, c) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_curl_write) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_WRITEDATA, c) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, upstream_on_open_socket) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, c) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, upstream_on_close_socket) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, c->u) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, upstream_on_prereq) == CURLE_OK &&
                curl_easy_setopt(e, CURLOPT_PREREQDATA, c) == CURLE_OK;
        if (ok && req->body_streamed)
                ok = curl_easy_setopt(e, CURLOPT_READFUNCTION, on_curl_read) == CURLE_OK &&
                     curl_easy_setopt(e, CURLOPT_READDATA, c) == CURLE_OK;
        return ok ? kb_upstream_easy_options(e, req) : -EIO;
}

int kb_upstream_start(struct kb_upstream *u, const struct kb_upstream_request *req,
                      const struct kb_upstream_ops *ops, void *userdata, struct kb_upstream_call **ret) {
        struct kb_upstream_call *c;
        int r;

        if (!u || !req || !ops || !ret)
                return -EINVAL;
        r = kb_upstream_request_validate(req);
        if (r < 0)
                return r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->u = u;
        c->ops = *ops;
        c->userdata = userdata;
        c->start_usec = kb_now_usec();

        /* A new handle per call, never a reset one: libcurl before 8.1.0
         * (Debian 12 has 7.88.1) keeps a pointer to the previous
         * transfer's last response header across curl_easy_reset(), and a
         * response whose first header line is a folded continuation is
         * unfolded into that freed header (curl #11101, fixed by #11103).
         * fuzz_http found it under ASan when handles were pooled. */
        c->easy = curl_easy_init();
        if (!c->easy) {
                r = -ENOMEM;
                goto fail;
        }
        r = kb_upstream_request_headers(req, &c->slist);
        if (r < 0)
                goto fail;
        r = call_setup_easy(c, req);
        if (r < 0)
                goto fail;

        LIST_PREPEND(u->calls, c);
        u->n_calls++;

        /* inside curl the add waits for upstream_settle() */
        if (u->busy == 0) {
                if (curl_multi_add_handle(u->multi, c->easy) == CURLM_OK)
                        c->added = true;
                else {
                        /* on_done never runs from in here: report via the loop */
                        c->fail_error = -EIO;
                        upstream_schedule_defer(u);
                }
        }

        *ret = c;
        return 0;

fail:
        if (c->easy)
                curl_easy_cleanup(c->easy);
        c->slist = kb_upstream_slist_wipe_free(c->slist);
        free(c);
        return r;
}

void kb_upstream_call_pause(struct kb_upstream_call *c) {
        if (!c || c->cancelled || c->finishing || c->paused)
                return;
        c->paused = true;
        c->resume_pending = false;

        upstream_enter(c->u);
        (void) curl_easy_pause(c->easy, pause_mask(c));
        upstream_leave(c->u);
}

void kb_upstream_call_body_ready(struct kb_upstream_call *c) {
        if (!c || c->cancelled || c->finishing || !c->send_paused)
                return;
        c->send_paused = false;
        if (c->u->busy > 0) {
                c->resume_pending = true;
                upstream_schedule_defer(c->u);
                return;
        }
        call_resume_now(c);
}

void kb_upstream_call_resume(struct kb_upstream_call *c) {
        if (!c || c->cancelled || c->finishing || !c->paused)
                return;
        c->paused = false;

        if (c->u->busy > 0) {
                /* unpausing delivers data: not while curl is inside another transfer */
                c->resume_pending = true;
                upstream_schedule_defer(c->u);
                return;
        }
        call_resume_now(c);
}

void kb_upstream_call_cancel(struct kb_upstream_call *c) {
        if (!c || c->cancelled || c->in_done)
                return;
        c->cancelled = true;
        c->u->n_calls--;
        /* inside curl, or inside the drain's on_response for c: the caller
         * up the stack frees it */
        if (c->u->busy == 0 && !c->finishing)
                call_destroy(c);
}

uint64_t kb_upstream_call_ttfb_usec(const struct kb_upstream_call *c) {
        return c ? c->ttfb_usec : 0;
}

size_t kb_upstream_n_calls(const struct kb_upstream *u) {
        return u ? u->n_calls : 0;
}
