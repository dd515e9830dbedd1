// SPDX-License-Identifier: MIT
//
// The `openai` SDK's other endpoints, used as any app would, through
// keybrokerd: audio transcriptions (a file streamed from disk), image
// generation, speech, a file upload made into a batch that is polled until
// it completes, and file contents read back. `node tests/sdk/endpoints.mjs
// CASE` with KEYBROKER_SOCKET (and optionally KB_TEAM, KB_HEADERS, KB_MODEL,
// KB_FILE, KB_FILE_IDS) in the environment; prints one JSON line (see lib/broker.mjs). The driver
// (50-endpoints.t) judges the result.
import fs from 'node:fs';
import { createHash } from 'node:crypto';
import OpenAI from 'openai';
import { main, openaiOptions, describeError, calls } from './lib/broker.mjs';

const client = new OpenAI(openaiOptions({ maxRetries: 0 }));

// The file the case uploads (a WAV for audio, a JSONL for batches).
function file() {
        const path = process.env.KB_FILE;
        if (!path)
                throw new Error('KB_FILE names no file to upload');
        return fs.createReadStream(path);
}

const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');

// The index of the HTTP call made next, for the driver to find it in `calls`.
const nextCall = () => calls.length;

const cases = {
        // The SDK sends the file part first, then the model.
        async transcription() {
                const t = await client.audio.transcriptions.create({
                        file: file(), model: process.env.KB_MODEL ?? 'transcribe' });
                return { type: typeof t, text: t.text, usage: t.usage ?? null };
        },

        // response_format 'text': the SDK gives the plain text back.
        async transcription_text() {
                const t = await client.audio.transcriptions.create({
                        file: file(), model: process.env.KB_MODEL ?? 'whisper', response_format: 'text' });
                return { type: typeof t, text: t };
        },

        async images() {
                const r = await client.images.generate({ model: process.env.KB_MODEL ?? 'image',
                                                         prompt: 'a red square', n: 2 });
                const image = (d) => {
                        const png = d.b64_json ? Buffer.from(d.b64_json, 'base64') : null;
                        return { b64_bytes: png?.length ?? null, png: png?.subarray(1, 4).toString('latin1') ?? null,
                                 url: d.url ?? null };
                };
                return { created: r.created, size: r.size, output_format: r.output_format ?? null,
                         images: r.data.map(image), usage: r.usage ?? null };
        },

        // Binary audio: the SDK hands back the fetch Response.
        async speech() {
                const res = await client.audio.speech.create({ model: process.env.KB_MODEL ?? 'tts', voice: 'alloy',
                                                               input: 'Hello from the broker' });
                const buf = Buffer.from(await res.arrayBuffer());
                return { content_type: res.headers.get('content-type'), bytes: buf.length,
                         head: buf.subarray(0, 4).toString('latin1'), sha256: sha256(buf) };
        },

        // Upload a JSONL, make a batch of it, retrieve it until it completes
        // (and once more), then read the input and output files back.
        async batch() {
                const at = {};
                at.upload = nextCall();
                const f = await client.files.create({ file: file(), purpose: 'batch' });
                at.input_content = nextCall();
                const input = await (await client.files.content(f.id)).text();
                at.create = nextCall();
                const created = await client.batches.create({ input_file_id: f.id, endpoint: '/v1/chat/completions',
                                                              completion_window: '24h' });
                at.retrieves = [];
                const statuses = [];
                let b = created;
                for (let i = 0; i < 6; i++) {
                        at.retrieves.push(nextCall());
                        b = await client.batches.retrieve(created.id);
                        statuses.push(b.status);
                        // One retrieve more once completed: it must not bill again.
                        if (statuses.filter((s) => s === 'completed').length === 2)
                                break;
                }
                at.output_content = nextCall();
                let output;
                try {
                        const res = await client.files.content(b.output_file_id);
                        output = { text: await res.text() };
                } catch (e) {
                        output = { error: describeError(e), is_not_found_error: e instanceof OpenAI.NotFoundError };
                }
                return { file: { id: f.id, object: f.object, bytes: f.bytes, filename: f.filename, purpose: f.purpose },
                         input_sha256: sha256(input),
                         created: { id: created.id, status: created.status, input_file_id: created.input_file_id,
                                    endpoint: created.endpoint },
                         statuses, final: { status: b.status, output_file_id: b.output_file_id,
                                            request_counts: b.request_counts, usage: b.usage ?? null },
                         output, at };
        },

        // files.content of each id in KB_FILE_IDS (comma-separated): the
        // text, or the error the SDK threw.
        async file_content() {
                const out = [];
                for (const id of (process.env.KB_FILE_IDS ?? '').split(',').filter((x) => x)) {
                        try {
                                const res = await client.files.content(id);
                                out.push({ id, text: await res.text() });
                        } catch (e) {
                                out.push({ id, error: describeError(e), is_not_found_error: e instanceof OpenAI.NotFoundError });
                        }
                }
                return { files: out };
        },
};

await main(cases);
