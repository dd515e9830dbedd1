/* SPDX-License-Identifier: MIT */
/* keybrokerctl: reading a secret. Only from stdin: typed at a prompt with
 * echo off when stdin is a terminal, else piped in. Never from argv or the
 * environment, where other users (ps, /proc/PID/environ) or shell history
 * would see it. The buffer is sodium_malloc'd (locked, guarded) and zeroed
 * when freed. */

#include <fcntl.h>
#include <signal.h>
#include <sodium.h>
#include <termios.h>

#include "ctl.h"
#include "util.h"

/* The terminal state to put back if a signal ends us mid-prompt. Only
 * written before the handlers are installed and read in them. */
static volatile sig_atomic_t tty_saved_valid;
static struct termios tty_saved;
static int tty_fd = -1;

static const int restore_signals[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP, SIGTTIN, SIGTTOU };

static void restore_and_reraise(int sig) {
        int saved = errno;

        /* tcsetattr() is async-signal-safe. */
        if (tty_saved_valid)
                (void) tcsetattr(tty_fd, TCSAFLUSH, &tty_saved);
        (void) write(tty_fd, "\n", 1);
        signal(sig, SIG_DFL);
        raise(sig);
        errno = saved;
}

void ctl_secret_free(char *secret) {
        /* sodium_free() zeroes the region before unmapping it. */
        if (secret)
                sodium_free(secret);
}

/* Read up to max bytes from fd until EOF (pipe) or, with line set, the first
 * newline (terminal). Returns the length, or -E2BIG / -errno. */
static ssize_t read_bounded(int fd, char *buf, size_t max, bool line) {
        size_t n = 0;

        for (;;) {
                if (n >= max) {
                        /* One more byte tells "exactly max" from "longer". */
                        char c;
                        ssize_t k = read(fd, &c, 1);
                        if (k < 0 && errno == EINTR)
                                continue;
                        if (k < 0)
                                return -errno;
                        return k == 0 ? (ssize_t) n : -E2BIG;
                }
                ssize_t k = read(fd, buf + n, line ? 1 : max - n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return -errno;
                if (k == 0)
                        return n;
                n += k;
                if (line && buf[n - 1] == '\n')
                        return n;
        }
}

static ssize_t read_from_tty(const char *name, char *buf, size_t max) {
        _cleanup_close_ int out = open("/dev/tty", O_WRONLY | O_CLOEXEC | O_NOCTTY);
        struct sigaction sa = { .sa_handler = restore_and_reraise }, old[ELEMENTSOF(restore_signals)];
        struct termios noecho;
        int fd = STDIN_FILENO;
        ssize_t n;

        if (tcgetattr(fd, &tty_saved) < 0)
                return -errno;
        tty_fd = fd;
        tty_saved_valid = 1;
        sigemptyset(&sa.sa_mask);
        for (size_t i = 0; i < ELEMENTSOF(restore_signals); i++)
                sigaction(restore_signals[i], &sa, &old[i]);

        noecho = tty_saved;
        noecho.c_lflag &= ~(tcflag_t) (ECHO | ECHOE | ECHOK);
        noecho.c_lflag |= ECHONL | ICANON;
        dprintf(out >= 0 ? out : STDERR_FILENO, "Secret for %s: ", name);
        if (tcsetattr(fd, TCSAFLUSH, &noecho) < 0) {
                n = -errno;
                goto restore;
        }

        n = read_bounded(fd, buf, max, true);
        if (n == -E2BIG) {
                /* Swallow the rest of the line so it does not reach the shell. */
                (void) tcflush(fd, TCIFLUSH);
        }

restore:
        (void) tcsetattr(fd, TCSAFLUSH, &tty_saved);
        tty_saved_valid = 0;
        for (size_t i = 0; i < ELEMENTSOF(restore_signals); i++)
                sigaction(restore_signals[i], &old[i], NULL);
        /* ECHONL already moved to a new line when a newline was typed. */
        if (n >= 0 && (n == 0 || buf[n - 1] != '\n'))
                dprintf(out >= 0 ? out : STDERR_FILENO, "\n");
        return n;
}

int ctl_secret_read(const char *name, char **ret, size_t *ret_len) {
        char *buf;
        ssize_t n;
        size_t len;

        if (sodium_init() < 0) {
                fprintf(stderr, "keybrokerctl: libsodium failed to initialise\n");
                return -1;
        }
        buf = sodium_malloc(CTL_SECRET_READ_MAX + 1);
        if (!buf) {
                fprintf(stderr, "keybrokerctl: cannot allocate locked memory for the secret: %m\n");
                return -1;
        }

        if (isatty(STDIN_FILENO))
                n = read_from_tty(name, buf, CTL_SECRET_READ_MAX);
        else
                n = read_bounded(STDIN_FILENO, buf, CTL_SECRET_READ_MAX, false);
        if (n == -E2BIG) {
                fprintf(stderr, "keybrokerctl: secret longer than %d bytes\n", CTL_SECRET_MAX);
                goto fail;
        }
        if (n < 0) {
                fprintf(stderr, "keybrokerctl: cannot read the secret from stdin: %s\n", strerror((int) -n));
                goto fail;
        }
        len = (size_t) n;
        if (len > 0 && buf[len - 1] == '\n')
                len--;
        if (len > 0 && buf[len - 1] == '\r')
                len--;
        buf[len] = 0;

        if (len == 0) {
                fprintf(stderr, "keybrokerctl: empty secret; pipe it on stdin or type it at the prompt\n");
                goto fail;
        }
        if (len > CTL_SECRET_MAX) {
                fprintf(stderr, "keybrokerctl: secret longer than %d bytes\n", CTL_SECRET_MAX);
                goto fail;
        }
        /* The daemon refuses these too (they could inject headers); saying
         * so here keeps such a secret off the socket. */
        for (size_t i = 0; i < len; i++)
                if ((unsigned char) buf[i] < 0x20 || buf[i] == 0x7f) {
                        fprintf(stderr, "keybrokerctl: the secret contains a control character (byte %zu)\n",
                                i + 1);
                        goto fail;
                }

        *ret = buf;
        *ret_len = len;
        return 0;
fail:
        ctl_secret_free(buf);
        return -1;
}
