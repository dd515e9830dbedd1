// SPDX-License-Identifier: MIT
//
// How an app points the official SDKs at keybrokerd, exactly as README.md
// tells users to: an undici Agent dialling the broker's Unix socket, undici's
// own fetch (the dispatcher option only works with the matching fetch), a
// base URL on "localhost" (the host part is ignored on a Unix socket) and a
// dummy key (the broker drops it and injects the route's).
//
// The rest of this file is test scaffolding: it watches undici's diagnostics
// channels — without wrapping fetch or touching the SDKs — to record every
// HTTP exchange (status, headers, timing), so the Perl drivers can find each
// call's journal record and what the provider received.
import diagnostics_channel from 'node:diagnostics_channel';
import { Agent, fetch } from 'undici';

export const SOCKET = process.env.KEYBROKER_SOCKET ?? '/run/keybroker/api.sock';

// Obviously not a credential: the broker must drop it before the provider.
export const DUMMY_KEY = 'sdk-dummy-key-not-a-secret';

export const dispatcher = new Agent({ connect: { socketPath: SOCKET } });

// Extra headers for every call: the team to act as, x-mock-* scripting.
function defaultHeaders() {
        const h = JSON.parse(process.env.KB_HEADERS ?? '{}');
        if (process.env.KB_TEAM)
                h['X-Keybroker-Team'] = process.env.KB_TEAM;
        return h;
}

// Options for `new OpenAI(...)`: what README shows, plus test knobs.
export function openaiOptions(extra = {}) {
        return {
                baseURL: 'http://localhost/v1',
                apiKey: DUMMY_KEY,
                fetch,
                fetchOptions: { dispatcher },
                defaultHeaders: defaultHeaders(),
                ...extra,
        };
}

// Options for `new Anthropic(...)`.
export function anthropicOptions(extra = {}) {
        return {
                baseURL: 'http://localhost',
                apiKey: DUMMY_KEY,
                fetch,
                fetchOptions: { dispatcher },
                defaultHeaders: defaultHeaders(),
                ...extra,
        };
}

// ---------------------------------------------------------------- recording

const t0 = performance.now();
const ms = () => Math.round((performance.now() - t0) * 10) / 10;
const live = new WeakMap();
export const calls = [];

function pairs(list) {
        const out = {};
        for (let i = 0; i + 1 < list.length; i += 2) {
                const k = String(list[i]).toLowerCase();
                const v = String(list[i + 1]);
                out[k] = k in out ? `${out[k]}, ${v}` : v;
        }
        return out;
}

diagnostics_channel.subscribe('undici:request:create', ({ request }) => {
        const c = { method: request.method, path: request.path, request_headers: pairs(request.headers),
                    sent_ms: ms() };
        live.set(request, c);
        calls.push(c);
});
diagnostics_channel.subscribe('undici:request:headers', ({ request, response }) => {
        const c = live.get(request);
        if (!c)
                return;
        c.status = response.statusCode;
        c.headers = pairs(response.headers);
        c.head_ms = ms();
});
diagnostics_channel.subscribe('undici:request:error', ({ request, error }) => {
        const c = live.get(request);
        if (c)
                c.transport_error = String(error?.message ?? error);
});

// What a caught SDK error looks like from the app's side.
export function describeError(e) {
        const headers = {};
        if (e?.headers && typeof e.headers.forEach === 'function')
                e.headers.forEach((v, k) => { headers[k] = v; });
        return {
                name: e?.constructor?.name ?? typeof e,
                message: String(e?.message ?? e),
                status: e?.status ?? null,
                error: e?.error ?? null,
                code: e?.code ?? null,
                type: e?.type ?? null,
                request_id: e?.requestID ?? null,
                headers,
                at_ms: ms(),
        };
}

export const elapsed = ms;

// Calls call() until one is refused, each watched for KB_WATCH_MS (an SDK
// sleeping on a long retry-after shows up as "hung"). Returns how many
// succeeded first and what the refused one looked like.
export async function callUntilRefused(call, RateLimitError) {
        const watch = Number(process.env.KB_WATCH_MS ?? 5000);
        let oks = 0;
        for (let i = 0; i < 50; i++) {
                const t = ms();
                let timer;
                const r = await Promise.race([
                        call().then(() => null, (e) => e),
                        new Promise((res) => { timer = setTimeout(res, watch, 'hung'); }),
                ]);
                clearTimeout(timer);
                if (r === null) {
                        oks++;
                        continue;
                }
                if (r === 'hung')
                        return { oks, hung: true, waited_ms: ms() - t };
                return { oks, error: describeError(r), waited_ms: ms() - t,
                         is_rate_limit_error: r instanceof RateLimitError };
        }
        throw new Error('50 calls and none refused');
}

// Runs cases[process.argv[2]] and prints one JSON line on stdout:
// {case, pid, result | error, calls}. Exit 0 when the case ran (even if it
// threw: the driver judges the error), 2 for an unknown case.
export async function main(cases) {
        const name = process.argv[2];
        const fn = cases[name];
        if (!fn) {
                console.error(`unknown case '${name}'; cases: ${Object.keys(cases).join(' ')}`);
                process.exit(2);
        }
        const out = { case: name, pid: process.pid, node: process.version };
        try {
                out.result = await fn();
        } catch (e) {
                out.error = describeError(e);
                if (!e?.status)
                        console.error(e?.stack ?? e);
        }
        out.calls = calls;
        process.stdout.write(JSON.stringify(out) + '\n');
        // A case may leave an SDK sleeping before a retry: do not wait for it.
        await Promise.race([dispatcher.close().catch(() => {}),
                            new Promise((r) => setTimeout(r, 1000).unref())]);
        process.exit(0);
}
