/* SPDX-License-Identifier: MIT */
/* Usage from a JSON answer's text. A whole answer (its text, its choices,
 * tool calls) costs several times more to parse into a document than the
 * request did; only the usage counts, the model and the id are needed. The
 * answer's top-level members are found with json-scan; the counts are read
 * straight from the usage object's text; model and id (short) are parsed
 * by jansson. What is read follows jansson's reading exactly (integers in
 * [0, INT64_MAX] count, other values are ignored, an integer beyond int64 or
 * a real that overflows makes the answer malformed, the last of a repeated
 * key wins); what the other members hold is not judged, so an answer whose
 * text is not valid UTF-8 still has its usage counted. */

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json-scan.h"
#include "usage-internal.h"
#include "util.h"

#define MAX_COUNTS 8

/* A count's text: 1 and *ret set when it is an integer in [0, INT64_MAX];
 * 0 when it is anything else jansson accepts (ignored, as get_count does);
 * -EINVAL when jansson would refuse the document over it. */
static int count_value(const char *v, size_t n, uint64_t *ret) {
        if (n == 0 || (v[0] != '-' && (v[0] < '0' || v[0] > '9')))
                return 0; /* string, object, array, true, false, null */
        bool negative = v[0] == '-', real = false;
        for (size_t i = 0; i < n; i++)
                if (v[i] == '.' || v[i] == 'e' || v[i] == 'E')
                        real = true;
        if (real) {
                _cleanup_free_ char *buf = strndup(v, n);
                if (!buf)
                        return -ENOMEM;
                errno = 0;
                double d = strtod(buf, NULL);
                /* jansson: "real number overflow" refuses the document */
                return isinf(d) || (errno == ERANGE && d != 0) ? -EINVAL : 0;
        }
        uint64_t x = 0;
        for (size_t i = negative; i < n; i++) {
                unsigned digit = (unsigned) (v[i] - '0');
                /* jansson refuses integers beyond json_int_t (int64) */
                if (x > (UINT64_C(9223372036854775808) - digit) / 10)
                        return -EINVAL;
                x = x * 10 + digit;
        }
        if (negative)
                return 0;
        if (x > INT64_MAX)
                return -EINVAL;
        *ret = x;
        return 1;
}

struct spans {
        const struct kb_usage_count *counts;
        const char *outer;              /* scanning usage[outer], or NULL: usage itself */
        const char *value[MAX_COUNTS];  /* last text of each count */
        size_t len[MAX_COUNTS];
        const char *outer_value[MAX_COUNTS];
        size_t outer_len[MAX_COUNTS];
};

static int on_usage_member(const char *key, size_t key_len, const char *value, size_t value_len, void *userdata) {
        struct spans *s = userdata;

        for (size_t i = 0; s->counts[i].key; i++) {
                const struct kb_usage_count *c = &s->counts[i];
                if (!s->outer && !c->outer && kb_json_key_is(key, key_len, c->key)) {
                        s->value[i] = value;
                        s->len[i] = value_len;
                } else if (!s->outer && c->outer && kb_json_key_is(key, key_len, c->outer)) {
                        s->outer_value[i] = value;
                        s->outer_len[i] = value_len;
                } else if (s->outer && streq_ptr(c->outer, s->outer) && kb_json_key_is(key, key_len, c->key)) {
                        s->value[i] = value;
                        s->len[i] = value_len;
                }
        }
        return 0;
}

/* Reads the counts of the usage object text into a copy of *u, committed
 * only when the whole of it reads as jansson would read it. */
int kb_usage_read_text(struct kb_usage *u, const char *v, size_t n, const struct kb_usage_count *counts) {
        struct spans s = { .counts = counts };
        struct kb_usage next = *u;

        if (n == 0 || v[0] != '{')
                return 0; /* not an object: ignored, the answer still reads */
        int r = kb_json_scan_object(v, n, on_usage_member, &s);
        if (r < 0)
                return r;
        /* Nested *_details objects: each read once, for all its counts. */
        for (size_t i = 0; counts[i].key; i++) {
                if (!counts[i].outer || !s.outer_value[i] || s.outer_len[i] == 0 || s.outer_value[i][0] != '{')
                        continue;
                bool done = false;
                for (size_t k = 0; k < i; k++)
                        if (streq_ptr(counts[k].outer, counts[i].outer))
                                done = true;
                if (done)
                        continue;
                struct spans inner = { .counts = counts, .outer = counts[i].outer };
                r = kb_json_scan_object(s.outer_value[i], s.outer_len[i], on_usage_member, &inner);
                if (r < 0)
                        return r;
                for (size_t k = 0; counts[k].key; k++)
                        if (streq_ptr(counts[k].outer, counts[i].outer)) {
                                s.value[k] = inner.value[k];
                                s.len[k] = inner.len[k];
                        }
        }
        for (size_t i = 0; counts[i].key; i++) {
                if (!s.value[i])
                        continue;
                r = count_value(s.value[i], s.len[i], (uint64_t *) ((char *) &next + counts[i].offset));
                if (r < 0)
                        return r;
        }
        next.seen = true;
        *u = next;
        return 0;
}

struct pick {
        json_t *root;                   /* the picked members, as jansson reads them */
        const char *const *keys;
        size_t n_keys;
        bool usage_as_text;             /* "usage" is not parsed: its text goes to usage/usage_len */
        const char *usage;
        size_t usage_len;
};

static int on_member(const char *key, size_t key_len, const char *value, size_t value_len, void *userdata) {
        struct pick *p = userdata;

        if (p->usage_as_text && kb_json_key_is(key, key_len, "usage")) {
                p->usage = value;
                p->usage_len = value_len;
                return 0;
        }
        for (size_t i = 0; i < p->n_keys; i++) {
                if (!kb_json_key_is(key, key_len, p->keys[i]))
                        continue;
                json_t *v = json_loadb(value, value_len, JSON_DECODE_ANY, NULL);
                if (!v)
                        return -EINVAL;
                return json_object_set_new_nocheck(p->root, p->keys[i], v) < 0 ? -ENOMEM : 0;
        }
        return 0;
}

/* 0, or -EINVAL (not a well-formed object, or a picked member does not
 * parse), -EILSEQ (escapes in a key, a NUL byte: the caller parses it
 * whole), -ENOMEM. */
static int pick_scan(const char *s, size_t n, struct pick *p) {
        /* jansson has its own ideas about NUL bytes: it decides. */
        if (memchr(s, 0, n))
                return -EILSEQ;
        p->root = json_object();
        if (!p->root)
                return -ENOMEM;
        return kb_json_scan_object(s, n, on_member, p);
}

json_t *kb_usage_pick(const char *s, size_t n, const char *const *keys, size_t n_keys) {
        struct pick p = { .keys = keys, .n_keys = n_keys };
        int r = pick_scan(s, n, &p);

        if (r >= 0)
                return p.root;
        json_decref(p.root);
        if (r != -EILSEQ)
                return NULL;
        /* The whole document, then, as jansson reads it. */
        json_t *all = json_loadb(s, n, 0, NULL);
        if (!json_is_object(all)) {
                json_decref(all);
                return NULL;
        }
        json_t *root = json_object();
        for (size_t i = 0; root && i < n_keys; i++) {
                json_t *v = json_object_get(all, keys[i]);
                if (v && json_object_set_nocheck(root, keys[i], v) < 0) {
                        json_decref(root);
                        root = NULL;
                }
        }
        json_decref(all);
        return root;
}

static const struct kb_usage_count *counts_of(kb_endpoint endpoint) {
        switch (endpoint) {
        case KB_ENDPOINT_CHAT:
        case KB_ENDPOINT_EMBEDDINGS:
                return kb_usage_counts_openai_chat;
        case KB_ENDPOINT_RESPONSES:
                return kb_usage_counts_openai_responses;
        case KB_ENDPOINT_MESSAGES:
                return kb_usage_counts_anthropic;
        default:
                return NULL;
        }
}

/* A key spelt with escapes (anywhere this reader matches keys): jansson
 * reads the whole answer instead. */
static int answer_parsed(struct kb_usage *u, kb_endpoint endpoint, const char *s, size_t n) {
        json_t *root = json_loadb(s, n, 0, NULL);
        int r = root ? kb_usage_from_json(u, endpoint, root) : 0;

        json_decref(root);
        return r;
}

/* "HH:MM:SS,mmm" (SRT) or "[HH:]MM:SS.mmm" (VTT) at p, as milliseconds. */
static bool cue_time(const char *p, const char *end, uint64_t *ret) {
        uint64_t part[3] = {}, ms = 0;
        size_t n = 0;
        while (p < end && *p == ' ')
                p++;
        for (;;) {
                if (p >= end || *p < '0' || *p > '9' || n == 3)
                        return false;
                while (p < end && *p >= '0' && *p <= '9' && part[n] < 100000)
                        part[n] = part[n] * 10 + (uint64_t) (*p++ - '0');
                n++;
                if (p < end && *p == ':') {
                        p++;
                        continue;
                }
                break;
        }
        if (n < 2 || p >= end || (*p != ',' && *p != '.'))
                return false;
        p++;
        for (int d = 0; d < 3; d++) {
                if (p >= end || *p < '0' || *p > '9')
                        return false;
                ms = ms * 10 + (uint64_t) (*p++ - '0');
        }
        uint64_t h = n == 3 ? part[0] : 0, m = part[n - 2], sec = part[n - 1];
        *ret = ((h * 60 + m) * 60 + sec) * 1000 + ms;
        return true;
}

/* An SRT or VTT transcript says how long the audio was: where its last cue
 * ends. (A plain-text one says nothing.) */
static void subtitles_duration(struct kb_usage *u, const char *s, size_t n) {
        const char *last = NULL;
        for (const char *p = s; (p = memmem(p, (size_t) (s + n - p), "-->", 3)); p += 3)
                last = p;
        uint64_t ms;
        if (last && cue_time(last + 3, s + n, &ms)) {
                u->audio_msec = ms;
                u->seen = true;
        }
}

int kb_usage_answer(struct kb_usage *u, kb_endpoint endpoint, const char *s, size_t n) {
        static const char *const keys[] = { "model", "id", "input_tokens" };
        struct pick p = { .keys = keys, .n_keys = ELEMENTSOF(keys), .usage_as_text = true };
        const struct kb_usage_count *counts = counts_of(endpoint);
        struct kb_usage before = *u;
        int r;

        /* The endpoints beyond the hot five answer small objects and read
         * more than usage: jansson reads them whole. */
        if ((endpoint == KB_ENDPOINT_AUDIO_TRANSCRIPTIONS || endpoint == KB_ENDPOINT_AUDIO_TRANSLATIONS) &&
            (n == 0 || s[0] != '{')) {
                subtitles_duration(u, s, n);
                return 0;
        }
        if (!counts && endpoint != KB_ENDPOINT_COUNT_TOKENS)
                return answer_parsed(u, endpoint, s, n) == -ENOMEM ? -ENOMEM : 0;
        r = pick_scan(s, n, &p);
        if (r >= 0 && counts && p.usage)
                r = kb_usage_read_text(u, p.usage, p.usage_len, counts);
        if (r == -EILSEQ) {
                *u = before;
                json_decref(p.root);
                return answer_parsed(u, endpoint, s, n);
        }
        if (r < 0)
                *u = before;
        if (r >= 0)
                /* With the usage read above, this takes model and id (and
                 * count_tokens' input_tokens): root holds no "usage". */
                r = kb_usage_from_json(u, endpoint, p.root);
        json_decref(p.root);
        return r == -ENOMEM ? r : 0;
}
