// SPDX-License-Identifier: MIT
//
// The official `openai` SDK, used as any app would, through keybrokerd.
// `node tests/sdk/openai.mjs CASE` with KEYBROKER_SOCKET (and optionally
// KB_TEAM, KB_HEADERS, KB_MODEL) in the environment; prints one JSON line
// (see lib/broker.mjs). The drivers (*.t) judge the result.
import OpenAI from 'openai';
import { main, openaiOptions, describeError, elapsed, calls, callUntilRefused } from './lib/broker.mjs';

const MODEL = process.env.KB_MODEL ?? 'gpt-mini';
const client = new OpenAI(openaiOptions({ maxRetries: 0 }));
const messages = [{ role: 'user', content: 'Say hi' }];

const weatherTool = {
        type: 'function',
        function: {
                name: 'get_weather',
                description: 'Current weather for a city',
                parameters: { type: 'object', properties: { location: { type: 'string' } }, required: ['location'] },
        },
};

function chatSummary(c) {
        const ch = c.choices?.[0];
        return { id: c.id, object: c.object, model: c.model, content: ch?.message?.content ?? null,
                 role: ch?.message?.role ?? null, tool_calls: ch?.message?.tool_calls ?? null,
                 finish_reason: ch?.finish_reason ?? null, usage: c.usage ?? null };
}

const cases = {
        async chat() {
                return chatSummary(await client.chat.completions.create({ model: MODEL, messages }));
        },

        // for await over the raw stream.
        async chat_stream() {
                const stream = await client.chat.completions.create({ model: MODEL, messages, stream: true });
                let text = '', finish = null, n = 0, role = null;
                const usage = [];
                for await (const chunk of stream) {
                        n++;
                        if (chunk.usage)
                                usage.push(chunk.usage);
                        const c = chunk.choices[0];
                        if (!c)
                                continue;
                        role ??= c.delta?.role ?? null;
                        text += c.delta?.content ?? '';
                        finish = c.finish_reason ?? finish;
                }
                return { chunks: n, text, role, finish_reason: finish, usage_chunks: usage };
        },

        // The SDK's stream helper: events plus the assembled completion.
        async chat_stream_helper() {
                const deltas = [];
                const stream = client.chat.completions.stream({ model: MODEL, messages });
                stream.on('content', (delta) => deltas.push(delta));
                const final = await stream.finalChatCompletion();
                return { deltas, final: chatSummary(final) };
        },

        async chat_stream_usage() {
                const stream = await client.chat.completions.create({
                        model: MODEL, messages, stream: true, stream_options: { include_usage: true } });
                let text = '', n = 0, usageChunk = null, afterUsage = 0;
                for await (const chunk of stream) {
                        n++;
                        if (usageChunk)
                                afterUsage++;
                        if (chunk.usage)
                                usageChunk = { usage: chunk.usage, choices: chunk.choices, index: n };
                        text += chunk.choices[0]?.delta?.content ?? '';
                }
                return { chunks: n, text, usage_chunk: usageChunk, chunks_after_usage: afterUsage };
        },

        async responses() {
                const r = await client.responses.create({ model: MODEL, input: 'Say hi' });
                return { id: r.id, status: r.status, output_text: r.output_text, usage: r.usage };
        },

        // Raw Responses events, in order.
        async responses_stream() {
                const stream = await client.responses.create({ model: MODEL, input: 'Say hi', stream: true });
                const types = [];
                let text = '', completed = null;
                for await (const ev of stream) {
                        types.push(ev.type);
                        if (ev.type === 'response.output_text.delta')
                                text += ev.delta;
                        if (ev.type === 'response.completed')
                                completed = { id: ev.response.id, status: ev.response.status,
                                              output_text: ev.response.output_text ?? null, usage: ev.response.usage };
                }
                return { types, text, completed };
        },

        // The Responses stream helper: it rebuilds the response from the events.
        async responses_stream_helper() {
                const deltas = [];
                const stream = client.responses.stream({ model: MODEL, input: 'Say hi' });
                stream.on('response.output_text.delta', (ev) => deltas.push(ev.delta));
                const r = await stream.finalResponse();
                return { deltas, id: r.id, status: r.status, output_text: r.output_text, usage: r.usage };
        },

        // As apps call it: the SDK asks for base64 and decodes the float32s.
        async embeddings() {
                const e = await client.embeddings.create({ model: process.env.KB_MODEL ?? 'emb', input: 'hello' });
                return { object: e.object, model: e.model, embedding: e.data[0]?.embedding, usage: e.usage };
        },

        // tools -> tool_calls -> a tool message -> the final text.
        async tools() {
                const first = await client.chat.completions.create({ model: MODEL, messages, tools: [weatherTool] });
                const msg = first.choices[0].message;
                const call = msg.tool_calls?.[0];
                const args = JSON.parse(call.function.arguments);
                const second = await client.chat.completions.create({
                        model: MODEL, tools: [weatherTool],
                        messages: [...messages, msg,
                                   { role: 'tool', tool_call_id: call.id, content: `sunny in ${args.location}` }] });
                return { first: chatSummary(first), args, second: chatSummary(second) };
        },

        // The stream helper assembles tool_calls from their deltas.
        async tools_stream() {
                const stream = client.chat.completions.stream({ model: MODEL, messages, tools: [weatherTool] });
                const done = [];
                stream.on('tool_calls.function.arguments.done', (ev) => done.push({ name: ev.name, args: ev.parsed_arguments ?? ev.arguments }));
                const final = await stream.finalChatCompletion();
                return { final: chatSummary(final), done };
        },

        async models() {
                const ids = [];
                for await (const m of client.models.list())
                        ids.push({ id: m.id, object: m.object });
                return { models: ids };
        },

        // One call that fits, then one over the team's limit, no retries.
        async rate_limited() {
                const first = await client.chat.completions.create({ model: MODEL, messages });
                try {
                        await client.chat.completions.create({ model: MODEL, messages });
                } catch (e) {
                        return { first: chatSummary(first), error: describeError(e),
                                 is_rate_limit_error: e instanceof OpenAI.RateLimitError,
                                 is_api_error: e instanceof OpenAI.APIError };
                }
                throw new Error('second call was not refused');
        },

        // A team with max_concurrent = 1: hold its slot with a slow call,
        // then a call with retries enabled gets 429 + retry-after, waits and
        // succeeds once the slot is free.
        async retry_after() {
                const holdMs = Number(process.env.KB_HOLD_MS ?? 800);
                const hold = client.chat.completions.create({ model: MODEL, messages },
                                                            { headers: { 'x-mock-delay-ms': String(holdMs) } })
                        .then(() => ({ ok: true, at_ms: elapsed() }), (e) => describeError(e));
                // The broker has the held call in flight well before this.
                await new Promise((r) => setTimeout(r, 200));
                const start = elapsed();
                const c = await client.chat.completions.create({ model: MODEL, messages }, { maxRetries: 2 });
                const end = elapsed();
                return { hold: await hold, start_ms: start, end_ms: end, result: chatSummary(c),
                         attempts: calls.filter((x) => x.sent_ms >= start).length };
        },

        // Calls with the SDK's default retries until one is refused: a
        // budget that resets hours later should fail fast, not sleep.
        async quota_exhausted() {
                const client = new OpenAI(openaiOptions({}));
                return callUntilRefused(() => client.chat.completions.create({ model: MODEL, messages, max_tokens: 5 }), OpenAI.RateLimitError);
        },

        async not_found() {
                try {
                        await client.chat.completions.create({ model: 'no-such-model', messages });
                } catch (e) {
                        return { error: describeError(e), is_not_found_error: e instanceof OpenAI.NotFoundError };
                }
                throw new Error('an unknown model was not refused');
        },
};

await main(cases);
