/* SPDX-License-Identifier: MIT */
/* multipart/form-data read as a stream, the endpoint table and the object
 * table: what decides where an upload or an object call goes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <unistd.h>

#include "batch-file.h"
#include "endpoint.h"
#include "helper.h"
#include "multipart.h"
#include "objects.h"

#define CT "multipart/form-data; boundary=XyZ"
#define FORM                                                                                                 \
        "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"                     \
        "Content-Type: audio/wav\r\n\r\nRIFF\r\n--X not yet\r\n--XyY\r\n--XyZ\r\n"                          \
        "Content-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XyZ\r\n"                         \
        "Content-Disposition: form-data; name=\"stream\"\r\n\r\ntrue\r\n--XyZ--\r\n"
#define FORM_OUT                                                                                             \
        "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"                     \
        "Content-Type: audio/wav\r\n\r\nRIFF\r\n--X not yet\r\n--XyY\r\n--XyZ\r\n"                          \
        "Content-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ\r\n"                       \
        "Content-Disposition: form-data; name=\"stream\"\r\n\r\ntrue\r\n--XyZ--\r\n"

/* Fed in pieces of `step` bytes: the output is the same whatever the cut. */
static int run(const char *ct, const char *in, size_t len, const char *model, size_t step, struct kb_buf *out,
               const char **ret_model, const char **ret_error) {
        struct kb_multipart *m = NULL;
        const char *why = NULL;
        int r = kb_multipart_new(ct, model, &m, &why);
        if (r < 0) {
                *ret_error = why;
                return r;
        }
        for (size_t i = 0; r >= 0 && i < len; i += step)
                r = kb_multipart_feed(m, in + i, MIN(step, len - i), out);
        if (r >= 0)
                r = kb_multipart_finish(m, out);
        static char model_copy[300];
        snprintf(model_copy, sizeof(model_copy), "%s", kb_multipart_model(m) ?: "");
        *ret_model = model_copy;
        *ret_error = r < 0 ? kb_multipart_error(m) : NULL;
        kb_multipart_free(m);
        return r;
}

static void test_rewrite_every_cut(void **state) {
        for (size_t step = 1; step <= sizeof(FORM); step++) {
                struct kb_buf out = {};
                const char *model, *err;
                assert_int_equal(run(CT, FORM, strlen(FORM), "whisper-1", step, &out, &model, &err), 0);
                assert_int_equal(out.len, strlen(FORM_OUT));
                assert_memory_equal(out.data, FORM_OUT, out.len);
                assert_string_equal(model, "whisper");
                kb_buf_free(&out);
        }
        /* Without a rewrite the body passes byte for byte. */
        struct kb_buf out = {};
        const char *model, *err;
        assert_int_equal(run("multipart/form-data; boundary=\"XyZ\"", FORM, strlen(FORM), NULL, 7, &out, &model, &err), 0);
        assert_int_equal(out.len, strlen(FORM));
        assert_memory_equal(out.data, FORM, out.len);
        kb_buf_free(&out);
}

static void bad(const char *ct, const char *in, const char *expect) {
        struct kb_buf out = {};
        const char *model, *err = NULL;
        int r = run(ct, in, strlen(in), "m", 3, &out, &model, &err);
        assert_true(r < 0);
        assert_non_null(err);
        if (!strstr(err, expect))
                fail_msg("error '%s' does not say '%s'", err, expect);
        kb_buf_free(&out);
}

static void test_malformed(void **state) {
        bad("application/json", "{}", "not multipart/form-data");
        bad("multipart/form-data", "x", "without a boundary");
        bad("multipart/form-data; boundary=0123456789012345678901234567890123456789012345678901234567890123456789X",
            "x", "longer than 70");
        bad("multipart/form-data; boundary=a<b", "x", "does not allow");
        bad(CT, "--XyZ\r\n\r\nbody\r\n--XyZ--", "no headers");
        bad(CT, "--XyZ\r\nContent-Type: text/plain\r\n\r\nbody\r\n--XyZ--", "no Content-Disposition");
        bad(CT, "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\na\r\n--XyZ\r\n"
                "Content-Disposition: form-data; name=\"model\"\r\n\r\nb\r\n--XyZ--",
            "two \"model\" fields");
        bad(CT, "--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nbody", "no closing delimiter");
        bad(CT, "--Other\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb\r\n--Other--", "no delimiter");
        bad(CT, "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb\r\n--XyZjunk", "something else");
}

static void test_fields(void **state) {
        struct kb_multipart *m = NULL;
        struct kb_buf out = {};
        assert_int_equal(kb_multipart_new(CT, NULL, &m, NULL), 0);
        assert_int_equal(kb_multipart_feed(m, FORM, strlen(FORM), &out), 0);
        assert_int_equal(kb_multipart_finish(m, &out), 0);
        assert_string_equal(kb_multipart_field(m, "stream"), "true");
        assert_null(kb_multipart_field(m, "file"));
        assert_int_equal(kb_multipart_file_bytes(m), strlen("RIFF\r\n--X not yet\r\n--XyY"));
        kb_multipart_free(m);
        kb_buf_free(&out);
}

/* The model is only known at its field's end; the target it picks decides
 * what is written there: the stream waits, whatever the cut. */
static void test_deferred_model(void **state) {
        for (size_t step = 1; step <= sizeof(FORM); step += 5) {
                struct kb_multipart *m = NULL;
                struct kb_buf out = {};
                assert_int_equal(kb_multipart_new(CT, NULL, &m, NULL), 0);
                kb_multipart_defer_model(m);
                bool set = false;
                for (size_t i = 0; i < strlen(FORM); i += step) {
                        assert_int_equal(kb_multipart_feed(m, FORM + i, MIN(step, strlen(FORM) - i), &out), 0);
                        if (kb_multipart_waiting(m)) {
                                assert_false(set);
                                assert_string_equal(kb_multipart_model(m), "whisper");
                                assert_int_equal(kb_multipart_finish(m, &out), -EAGAIN);
                                assert_int_equal(kb_multipart_set_model(m, "whisper-1", &out), 0);
                                set = true;
                        }
                }
                assert_true(set);
                assert_int_equal(kb_multipart_finish(m, &out), 0);
                assert_int_equal(out.len, strlen(FORM_OUT));
                assert_memory_equal(out.data, FORM_OUT, out.len);
                kb_multipart_free(m);
                kb_buf_free(&out);
        }
}

/* A batch input file read in pieces: lines, bytes, models; anything that is
 * not one JSON object per line makes it unreadable. */
static void test_batch_file(void **state) {
        static const char jsonl[] =
                "{\"custom_id\":\"a\",\"body\":{\"model\":\"gpt-4o\"}}\n"
                "{\"custom_id\":\"b\",\"body\":{\"model\":\"o3\"}}\r\n"
                "{\"custom_id\":\"c\",\"body\":{\"model\":\"gpt-4o\"}}";
        for (size_t step = 1; step < sizeof(jsonl); step += 3) {
                struct kb_batch_file f = {};
                for (size_t i = 0; i < strlen(jsonl); i += step)
                        kb_batch_file_feed(&f, jsonl + i, MIN(step, strlen(jsonl) - i));
                kb_batch_file_end(&f);
                _cleanup_free_ char *m = kb_batch_file_models(&f);
                assert_string_equal(m, "gpt-4o,o3");
                assert_int_equal(f.lines, 3);
                assert_int_equal(f.bytes, strlen(jsonl));
                kb_batch_file_done(&f);
        }
        struct kb_batch_file g = {};
        kb_batch_file_feed(&g, "{}\nnot json\n", 12);
        kb_batch_file_end(&g);
        assert_null(kb_batch_file_models(&g));
        kb_batch_file_done(&g);
        (void) state;
}

static void test_endpoint_table(void **state) {
        const struct kb_endpoint_def *d;
        char id[KB_OBJECT_ID_MAX + 1];

        assert_int_equal(kb_endpoint_match("GET", "/v1/files/file-abc/content", false, &d, id), 0);
        assert_int_equal(d->endpoint, KB_ENDPOINT_FILES);
        assert_int_equal(d->op, KB_OP_DOWNLOAD);
        assert_int_equal(d->family, KB_FAMILY_OPENAI);
        assert_string_equal(id, "file-abc");
        assert_int_equal(kb_endpoint_match("GET", "/v1/files/file_011/content", true, &d, id), 0);
        assert_int_equal(d->family, KB_FAMILY_ANTHROPIC);
        assert_int_equal(kb_endpoint_match("POST", "/v1/messages/batches/msgbatch_1/cancel", false, &d, id), 0);
        assert_int_equal(d->endpoint, KB_ENDPOINT_MESSAGE_BATCHES);
        assert_string_equal(id, "msgbatch_1");
        assert_int_equal(kb_endpoint_match("POST", "/v1/responses", false, &d, id), 0);
        assert_string_equal(id, "");
        assert_int_equal(kb_endpoint_match("PUT", "/v1/files", false, &d, id), -EBADRQC);
        assert_int_equal(kb_endpoint_match("GET", "/v1/files/a%2Fb", false, &d, id), -ENOENT);
        assert_int_equal(kb_endpoint_match("GET", "/v1/files/x/y/content", false, &d, id), -ENOENT);
        assert_int_equal(kb_endpoint_match("GET", "/v1/realtime", false, &d, id), -ENOENT);
        assert_string_equal(kb_endpoint_to_string(KB_ENDPOINT_AUDIO_TRANSCRIPTIONS), "audio_transcriptions");
}

static void test_objects_persist(void **state) {
        char dir[64], path[96];
        kbt_mkdtemp(dir, sizeof(dir), "objects");
        snprintf(path, sizeof(path), "%s/objects", dir);
        struct kb_objects *o = NULL;
        assert_int_equal(kb_objects_open(path, &o), 0);
        struct kb_object a = { .id = "file-1", .kind = KB_OBJECT_FILE, .team = "ml", .route = "openai",
                               .key = "k", .key_version = 2, .created_usec = 5 };
        struct kb_object b = { .id = "batch_1", .kind = KB_OBJECT_BATCH, .team = "web", .route = "openai" };
        struct kb_object in = { .id = "file-in", .kind = KB_OBJECT_FILE, .team = "web", .route = "openai",
                                .models = "gpt-4o,o3", .lines = 7, .bytes = 900 };
        struct kb_object nomodel = { .id = "file-nm", .kind = KB_OBJECT_FILE, .team = "web", .route = "openai",
                                     .models = "", .lines = 2, .bytes = 10 };
        assert_int_equal(kb_objects_add(o, &in), 0);
        assert_int_equal(kb_objects_add(o, &nomodel), 0);
        assert_int_equal(kb_objects_add(o, &a), 0);
        assert_int_equal(kb_objects_add(o, &b), 0);
        assert_int_equal(kb_objects_set_billed(o, "batch_1"), 0);
        assert_int_equal(kb_objects_forget(o, "file-1"), 0);
        assert_int_equal(kb_objects_add(o, &a), 0);
        struct kb_object bad = { .id = "x\ty", .team = "ml", .route = "r" };
        assert_int_equal(kb_objects_add(o, &bad), -EINVAL);
        o = kb_objects_free(o);

        assert_int_equal(kb_objects_open(path, &o), 0);
        assert_int_equal(kb_objects_count(o), 4);
        const struct kb_object *fi = kb_objects_find(o, "file-in");
        assert_string_equal(fi->models, "gpt-4o,o3");
        assert_int_equal(fi->lines, 7);
        assert_int_equal(fi->bytes, 900);
        assert_string_equal(kb_objects_find(o, "file-nm")->models, "");
        assert_null(kb_objects_find(o, "batch_1")->models);
        const struct kb_object *f = kb_objects_find(o, "file-1");
        assert_non_null(f);
        assert_string_equal(f->team, "ml");
        assert_string_equal(f->key, "k");
        assert_int_equal(f->key_version, 2);
        assert_true(kb_objects_find(o, "batch_1")->billed);
        assert_null(kb_objects_find(o, "nope"));
        kb_objects_free(o);
        (void) kbt_rm_rf(dir);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_rewrite_every_cut),
                cmocka_unit_test(test_malformed),
                cmocka_unit_test(test_fields),
                cmocka_unit_test(test_deferred_model),
                cmocka_unit_test(test_batch_file),
                cmocka_unit_test(test_endpoint_table),
                cmocka_unit_test(test_objects_persist),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
