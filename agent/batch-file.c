/* SPDX-License-Identifier: MIT */
/* Each complete line is parsed alone; what is held is at most one line. */

#include <jansson.h>

#include "batch-file.h"

static void model_of(struct kb_batch_file *f, const char *p, size_t n) {
        json_t *root = json_loadb(p, n, 0, NULL);
        if (!json_is_object(root)) {
                f->unreadable = true;
                json_decref(root);
                return;
        }
        f->lines++;
        const char *m = json_string_value(json_object_get(json_object_get(root, "body"), "model"));
        bool known = false;
        for (size_t i = 0; m && i < f->n_models; i++)
                known = known || streq(f->models[i], m);
        if (m && !known) {
                if (f->n_models == KB_BATCH_FILE_MODELS || strlen(m) > 256 || strchr(m, ','))
                        f->unreadable = true;
                else if (!(f->models[f->n_models] = strdup(m)))
                        f->unreadable = true;
                else
                        f->n_models++;
        }
        json_decref(root);
}

static void line_end(struct kb_batch_file *f) {
        size_t n = f->line.len;
        while (n > 0 && (f->line.data[n - 1] == '\r' || f->line.data[n - 1] == ' '))
                n--;
        if (n > 0)
                model_of(f, f->line.data, n);
        kb_buf_clear(&f->line);
}

void kb_batch_file_feed(struct kb_batch_file *f, const char *buf, size_t len) {
        f->bytes += len;
        while (len > 0 && !f->unreadable) {
                const char *nl = memchr(buf, '\n', len);
                size_t n = nl ? (size_t) (nl - buf) : len;
                if (f->line.len + n > KB_BATCH_FILE_LINE_MAX || kb_buf_append(&f->line, buf, n) < 0) {
                        f->unreadable = true;
                        break;
                }
                if (!nl)
                        return;
                line_end(f);
                buf += n + 1;
                len -= n + 1;
        }
        if (f->unreadable)
                kb_buf_free(&f->line);
}

void kb_batch_file_end(struct kb_batch_file *f) {
        if (!f->unreadable)
                line_end(f);
        kb_buf_free(&f->line);
}

void kb_batch_file_done(struct kb_batch_file *f) {
        for (size_t i = 0; i < f->n_models; i++)
                free(f->models[i]);
        f->n_models = 0;
        kb_buf_free(&f->line);
}

char *kb_batch_file_models(const struct kb_batch_file *f) {
        if (f->unreadable || f->lines == 0)
                return NULL;
        struct kb_buf b = {};
        for (size_t i = 0; i < f->n_models; i++)
                if (kb_buf_appendf(&b, "%s%s", i ? "," : "", f->models[i]) < 0) {
                        kb_buf_free(&b);
                        return NULL;
                }
        if (!b.data && kb_buf_append(&b, "", 1) < 0)
                return NULL;
        return b.data;
}
