// SPDX-License-Identifier: MIT
//
// The official `@anthropic-ai/sdk`, used as any app would, through
// keybrokerd. `node tests/sdk/anthropic.mjs CASE` with KEYBROKER_SOCKET (and
// optionally KB_TEAM, KB_HEADERS, KB_MODEL); prints one JSON line (see
// lib/broker.mjs). The drivers (*.t) judge the result.
import Anthropic from '@anthropic-ai/sdk';
import { main, anthropicOptions, describeError, elapsed, calls, callUntilRefused } from './lib/broker.mjs';

const MODEL = process.env.KB_MODEL ?? 'claude-haiku';
const client = new Anthropic(anthropicOptions({ maxRetries: 0 }));
const messages = [{ role: 'user', content: 'Say hi' }];

const weatherTool = {
        name: 'get_weather',
        description: 'Current weather for a city',
        input_schema: { type: 'object', properties: { location: { type: 'string' } }, required: ['location'] },
};

function msgSummary(m) {
        return { id: m.id, type: m.type, role: m.role, model: m.model, content: m.content,
                 text: m.content.filter((b) => b.type === 'text').map((b) => b.text).join(''),
                 stop_reason: m.stop_reason, usage: m.usage };
}

const cases = {
        async messages() {
                return msgSummary(await client.messages.create({ model: MODEL, max_tokens: 64, messages }));
        },

        // Raw events of messages.create({stream: true}).
        async messages_stream_raw() {
                const stream = await client.messages.create({ model: MODEL, max_tokens: 64, messages, stream: true });
                const types = [];
                let text = '', usage = {};
                for await (const ev of stream) {
                        types.push(ev.type);
                        if (ev.type === 'content_block_delta' && ev.delta.type === 'text_delta')
                                text += ev.delta.text;
                        if (ev.type === 'message_start')
                                usage.input_tokens = ev.message.usage.input_tokens;
                        if (ev.type === 'message_delta')
                                usage.output_tokens = ev.usage.output_tokens;
                }
                return { types, text, usage };
        },

        // The stream helper: text events and the assembled message.
        async messages_stream() {
                const texts = [];
                const stream = client.messages.stream({ model: MODEL, max_tokens: 64, messages });
                stream.on('text', (delta) => texts.push(delta));
                const final = await stream.finalMessage();
                return { texts, final: msgSummary(final), request_id: stream.request_id ?? null };
        },

        // tool_use -> tool_result -> text.
        async tools() {
                const first = await client.messages.create({ model: MODEL, max_tokens: 64, messages,
                                                             tools: [weatherTool] });
                const use = first.content.find((b) => b.type === 'tool_use');
                const second = await client.messages.create({
                        model: MODEL, max_tokens: 64, tools: [weatherTool],
                        messages: [...messages, { role: 'assistant', content: first.content },
                                   { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id,
                                                               content: `sunny in ${use.input.location}` }] }] });
                return { first: msgSummary(first), second: msgSummary(second) };
        },

        async models() {
                const page = await client.models.list();
                const ids = [];
                for await (const m of client.models.list())
                        ids.push({ id: m.id, type: m.type, display_name: m.display_name, created_at: m.created_at });
                return { models: ids, has_more: page.has_more, first_id: page.first_id, last_id: page.last_id };
        },

        // One call that fits, then one over the team's limit, no retries.
        async rate_limited() {
                const first = await client.messages.create({ model: MODEL, max_tokens: 64, messages });
                try {
                        await client.messages.create({ model: MODEL, max_tokens: 64, messages });
                } catch (e) {
                        return { first: msgSummary(first), error: describeError(e),
                                 is_rate_limit_error: e instanceof Anthropic.RateLimitError,
                                 is_api_error: e instanceof Anthropic.APIError };
                }
                throw new Error('second call was not refused');
        },

        // As openai.mjs retry_after: a held slot, then a call that retries.
        async retry_after() {
                const holdMs = Number(process.env.KB_HOLD_MS ?? 800);
                const hold = client.messages.create({ model: MODEL, max_tokens: 64, messages },
                                                    { headers: { 'x-mock-delay-ms': String(holdMs) } })
                        .then(() => ({ ok: true, at_ms: elapsed() }), (e) => describeError(e));
                await new Promise((r) => setTimeout(r, 200));
                const start = elapsed();
                const m = await client.messages.create({ model: MODEL, max_tokens: 64, messages }, { maxRetries: 2 });
                const end = elapsed();
                return { hold: await hold, start_ms: start, end_ms: end, result: msgSummary(m),
                         attempts: calls.filter((x) => x.sent_ms >= start).length };
        },

        // Calls with the SDK's default retries until one is refused: a
        // budget that resets hours later should fail fast, not sleep.
        async quota_exhausted() {
                const client = new Anthropic(anthropicOptions({}));
                return callUntilRefused(() => client.messages.create({ model: MODEL, max_tokens: 5, messages }), Anthropic.RateLimitError);
        },

        async not_found() {
                try {
                        await client.messages.create({ model: 'no-such-model', max_tokens: 64, messages });
                } catch (e) {
                        return { error: describeError(e), is_not_found_error: e instanceof Anthropic.NotFoundError };
                }
                throw new Error('an unknown model was not refused');
        },
};

await main(cases);
