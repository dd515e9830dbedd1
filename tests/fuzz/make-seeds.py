#!/usr/bin/env python3
# Writes the seed corpora in tests/fuzz/corpus/ (committed; re-run after
# changing a shape). The keystore seeds come from the fuzz_keystore binary
# itself (KB_FUZZ_WRITE_SEEDS=DIR), sealed with the harness's master key.
import json, os, subprocess, sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.normpath(os.path.join(here, '..', '..'))
corpus = os.path.join(here, 'corpus')
MARK = b'@@UPSTREAM@@\n'


def put(target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)


def req(method, path, body=None, headers=(), chunked=False):
    h = [f'{method} {path} HTTP/1.1', 'Host: localhost']
    h += list(headers)
    b = b''
    if body is not None:
        b = body if isinstance(body, bytes) else json.dumps(body, separators=(',', ':')).encode()
        h.append('Content-Type: application/json')
        if chunked:
            h.append('Transfer-Encoding: chunked')
            half = len(b) // 2
            b = b'%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n' % (half, b[:half], len(b) - half, b[half:])
        else:
            h.append(f'Content-Length: {len(b)}')
    return ('\r\n'.join(h) + '\r\n\r\n').encode() + b


msgs = [{'role': 'user', 'content': 'hi'}]


def resp(status, body, headers=('content-type: application/json',)):
    body = body.encode() if isinstance(body, str) else body
    return ('\r\n'.join([f'HTTP/1.1 {status}'] + list(headers) + [f'content-length: {len(body)}']) + '\r\n\r\n').encode() + body

# ---------------------------------------------------------------- fuzz_http
http = {
    'chat': req('POST', '/v1/chat/completions', {'model': 'chat', 'messages': msgs, 'max_tokens': 16}),
    'chat-stream': req('POST', '/v1/chat/completions', {'model': 'chat', 'messages': msgs, 'stream': True}),
    'chat-stream-usage': req('POST', '/v1/chat/completions',
                             {'model': 'chat', 'messages': msgs, 'stream': True,
                              'stream_options': {'include_usage': True}}),
    'chat-chunked': req('POST', '/v1/chat/completions', {'model': 'chat', 'messages': msgs}, chunked=True),
    'responses': req('POST', '/v1/responses', {'model': 'chat', 'input': 'hi', 'max_output_tokens': 5}),
    'responses-stream': req('POST', '/v1/responses', {'model': 'chat', 'input': 'hi', 'stream': True}),
    'embeddings': req('POST', '/v1/embeddings', {'model': 'embed', 'input': ['a', 'b']}),
    'messages': req('POST', '/v1/messages', {'model': 'claude', 'max_tokens': 10, 'messages': msgs},
                    headers=['anthropic-version: 2023-06-01', 'x-api-key: app-placeholder']),
    'messages-stream': req('POST', '/v1/messages', {'model': 'claude', 'max_tokens': 10, 'messages': msgs,
                                                    'stream': True}, headers=['anthropic-version: 2023-06-01']),
    'count-tokens': req('POST', '/v1/messages/count_tokens', {'model': 'claude', 'messages': msgs}),
    'models': req('GET', '/v1/models'),
    'whoami': req('GET', '/v1/keybroker/whoami'),
    'team-narrow': req('POST', '/v1/chat/completions', {'model': 'embed', 'input': 'x'},
                       headers=['X-Keybroker-Team: narrow']),
    'team-unknown': req('GET', '/v1/models', headers=['X-Keybroker-Team: nobody']),
    'fallback': req('POST', '/v1/chat/completions', {'model': 'both', 'messages': msgs}),
    'no-key': req('POST', '/v1/chat/completions', {'model': 'gone', 'messages': msgs}),
    'unknown-model': req('POST', '/v1/chat/completions', {'model': 'nope', 'messages': msgs}),
    'dup-model': req('POST', '/v1/chat/completions', b'{"model":"chat","model":"claude"}'),
    'deep': req('POST', '/v1/chat/completions', b'{"model":"chat","x":' + b'[' * 200 + b']' * 200 + b'}'),
    'huge-number': req('POST', '/v1/chat/completions', b'{"model":"chat","max_tokens":99999999999999999999999}'),
    'bad-utf8': req('POST', '/v1/chat/completions', b'{"model":"ch\xffat","messages":[]}'),
    'wrong-method': req('GET', '/v1/chat/completions'),
    'not-found': req('POST', '/v2/whatever', {}),
    'pipelined': req('GET', '/v1/models') + req('POST', '/v1/embeddings', {'model': 'embed', 'input': 'a'})
    + req('GET', '/v1/keybroker/whoami'),
    'http10': b'GET /v1/models HTTP/1.0\r\n\r\n',
    'expect-continue': req('POST', '/v1/embeddings', {'model': 'embed', 'input': 'a'},
                           headers=['Expect: 100-continue']),
    'smuggle-cl-te': b'POST /v1/embeddings HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
    'smuggle-dup-cl': b'POST /v1/embeddings HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x',
    'obs-fold': b'GET /v1/models HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n',
    'space-colon': b'GET /v1/models HTTP/1.1\r\nHost : x\r\n\r\n',
    'garbage': b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03',
    'half-headers': b'POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 100\r\n',
    'stream-upstream-chunked': req('POST', '/v1/chat/completions', {'model': 'chat', 'messages': msgs, 'stream': True})
    + MARK + b'HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n'
    b'1f\r\ndata: {"choices":[],"usage":{\r\n'
    b'2c\r\n"prompt_tokens":3,"completion_tokens":-5}}\n\n\r\n'
    b'e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n',
    'upstream-429': req('POST', '/v1/chat/completions', {'model': 'chat', 'messages': msgs})
    + MARK + resp('429 Too Many Requests', '{"error":{"message":"slow down","type":"rate_limit_error"}}',
                  ('retry-after: 1', 'content-type: application/json')),
    'upstream-cut': req('POST', '/v1/messages', {'model': 'claude', 'stream': True, 'messages': msgs})
    + MARK + b'HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\nevent: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":5}}}\n\nevent: content_block_delta\ndata: {"ty',
    'upstream-garbage': req('POST', '/v1/embeddings', {'model': 'embed', 'input': 'a'}) + MARK + b'SSH-2.0-OpenSSH\r\n',
    'upstream-bad-usage': req('POST', '/v1/chat/completions', {'model': 'chat', 'messages': msgs})
    + MARK + resp('200 OK', '{"usage":{"prompt_tokens":1e999999,"completion_tokens":"7","total_tokens":-1.5},"x":1}'),
    'upstream-negative-usage': req('POST', '/v1/messages', {'model': 'claude', 'messages': msgs})
    + MARK + resp('200 OK', '{"id":"msg_1","usage":{"input_tokens":-9,"output_tokens":2.5,"cache_read_input_tokens":"3"}}'),
    'upstream-empty': req('POST', '/v1/responses', {'model': 'chat', 'input': 'x'}) + MARK,
}
for name, data in http.items():
    put('fuzz_http', name, b'0' + data)

# ---------------------------------------------------------------- fuzz_admin
admin = {
    'status': req('GET', '/status'),
    'keys': req('GET', '/keys'),
    'key-set': req('PUT', '/keys/new-key', b'sk-new-secret\n', headers=['If-None-Match: *']),
    'key-rotate': req('PUT', '/keys/fuzz-key', b'sk-rotated\r\n', headers=['If-Match: *']),
    'key-rollback': req('POST', '/keys/fuzz-key/rollback'),
    'key-delete': req('DELETE', '/keys/fuzz-key?version=1'),
    'key-delete-all': req('DELETE', '/keys/fuzz-key'),
    'teams': req('GET', '/teams'),
    'routes': req('GET', '/routes'),
    'split': req('PUT', '/models/both/split', {'weights': {'oa': 3}}),
    'split-bad': req('PUT', '/models/chat/split', {'weights': {'oa': -1, 'an': 1.5}}),
    'route-check': req('POST', '/routes/oa/check'),
    'route-check-model': req('POST', '/routes/an/check?model=up-claude'),
    'reload': req('POST', '/reload'),
    'metrics': req('GET', '/metrics'),
    'bad-name': req('PUT', '/keys/..%2f', b'x'),
    'bad-version': req('DELETE', '/keys/fuzz-key?version=99999999999999'),
    'pipelined': req('GET', '/status') + req('GET', '/keys') + req('GET', '/routes'),
}
for name, data in admin.items():
    put('fuzz_admin', name, b'0' + data)

# ---------------------------------------------------------------- fuzz_usage
# header: [family | endpoint << 1] [flags: 1 stream, 2 hide, 4 gate, 8 small limit, 0xf0 piece exponent] [seed] [gate/limit]
EP = {'chat': 0, 'responses': 1, 'embeddings': 2, 'messages': 3, 'count_tokens': 4}
def sse(events):
    out = ''
    for ev, data in events:
        if ev:
            out += f'event: {ev}\n'
        out += 'data: ' + (data if isinstance(data, str) else json.dumps(data, separators=(',', ':'))) + '\n\n'
    return out

chat_chunk = lambda d, fin=None, usage='null': {'id': 'chatcmpl-1', 'object': 'chat.completion.chunk', 'model': 'gpt-4o-mini-2024-07-18',
                                                'choices': [{'index': 0, 'delta': d, 'finish_reason': fin}], 'usage': None}
usage_full = {'prompt_tokens': 11, 'completion_tokens': 7, 'total_tokens': 18,
              'prompt_tokens_details': {'cached_tokens': 3}, 'completion_tokens_details': {'reasoning_tokens': 2}}
usage_cases = {
    'chat-json': (0, 0, 0, {'id': 'chatcmpl-1', 'object': 'chat.completion', 'model': 'gpt-4o-mini',
                            'choices': [{'index': 0, 'message': {'role': 'assistant', 'content': 'tok0 '}}],
                            'usage': usage_full}),
    'chat-sse-hide': (0, 0, 1 | 2, sse([(None, chat_chunk({'role': 'assistant', 'content': ''})),
                                        (None, chat_chunk({'content': 'tok0 '})),
                                        (None, chat_chunk({}, 'stop')),
                                        (None, {'id': 'chatcmpl-1', 'choices': [], 'usage': usage_full}),
                                        (None, '[DONE]')])),
    'chat-sse-gate': (0, 0, 1 | 4 | 0x30, sse([(None, chat_chunk({'content': f'tok{i} '})) for i in range(6)] + [(None, '[DONE]')])),
    'responses-json': (0, 1, 0, {'id': 'resp_1', 'object': 'response', 'model': 'gpt-4o', 'usage': {
        'input_tokens': 5, 'input_tokens_details': {'cached_tokens': 1}, 'output_tokens': 9,
        'output_tokens_details': {'reasoning_tokens': 4}, 'total_tokens': 14}}),
    'responses-sse': (0, 1, 1, sse([('response.created', {'type': 'response.created', 'response': {'id': 'resp_1', 'model': 'gpt-4o', 'usage': None}}),
                                    ('response.output_text.delta', {'type': 'response.output_text.delta', 'delta': 'tok0 '}),
                                    ('response.completed', {'type': 'response.completed', 'response': {'id': 'resp_1', 'usage': {'input_tokens': 5, 'output_tokens': 1}}})])),
    'embeddings': (0, 2, 0, {'object': 'list', 'data': [{'embedding': [0.1]}], 'model': 'text-embedding-3-small',
                             'usage': {'prompt_tokens': 4, 'total_tokens': 4}}),
    'messages-json': (1, 3, 0, {'id': 'msg_1', 'type': 'message', 'model': 'claude-3-5-haiku', 'usage': {
        'input_tokens': 9, 'output_tokens': 3, 'cache_creation_input_tokens': 2, 'cache_read_input_tokens': 5}}),
    'messages-sse': (1, 3, 1 | 0x20, sse([('message_start', {'type': 'message_start', 'message': {'id': 'msg_1', 'model': 'claude', 'usage': {'input_tokens': 9, 'output_tokens': 1, 'cache_read_input_tokens': 4}}}),
                                          ('ping', {'type': 'ping'}),
                                          ('content_block_delta', {'type': 'content_block_delta', 'index': 0, 'delta': {'type': 'text_delta', 'text': 'tok0 '}}),
                                          ('message_delta', {'type': 'message_delta', 'delta': {'stop_reason': 'end_turn'}, 'usage': {'output_tokens': 7}}),
                                          ('message_stop', {'type': 'message_stop'})])),
    'messages-sse-gate-small': (1, 3, 1 | 4 | 8, sse([('message_start', {'type': 'message_start', 'message': {'usage': {'input_tokens': 9}}})]
                                                     + [('content_block_delta', {'type': 'content_block_delta', 'delta': {'text': 'x' * 40}})] * 5)),
    'count-tokens': (1, 4, 0, {'input_tokens': 12}),
    'bad-usage': (0, 0, 0, '{"usage":{"prompt_tokens":-4,"completion_tokens":2.5,"total_tokens":"x","prompt_tokens_details":null},"model":' + '"' + 'm' * 300 + '"}'),
    'crlf-sse': (0, 0, 1 | 2, 'data: {"choices":[],"usage":{"prompt_tokens":1}}\r\n\r\ndata: [DONE]\r\r'),
}
for name, (fam, ep, flags, body) in usage_cases.items():
    b = body if isinstance(body, str) else json.dumps(body, separators=(',', ':'))
    put('fuzz_usage', name, bytes([fam | ep << 1, flags, 0x5a, 3]) + b.encode())

# ---------------------------------------------------------------- fuzz_config
demo = open(os.path.join(root, 'etc', 'demo.conf.in')).read()
demo = demo.replace('@RUN@', '/run/kb-demo').replace('@UID@', '1000').replace('@PORT@', '8080')
put('fuzz_config', 'demo.conf', demo)
put('fuzz_config', 'full.conf', '''[agent]
listen = /run/keybroker/api.sock
listen_mode = 0666
admin = /run/keybroker/admin.sock
admin_users = root 0
admin_groups = 0
keystore = /var/lib/keybroker/keys.sealed
master_key = /etc/keybroker/master
state_dir = /var/lib/keybroker
max_request_body = 32M
header_timeout = 10s
drain_timeout = 30s
idle_timeout = 1min
max_connections = 1024
max_connections_per_uid = 256

[team:search]
users = 0 1001
groups = 0
units = search-api.service
models = chat-default gpt-4o-mini
requests_per_minute = 600
tokens_per_minute = 200000
tokens_per_day = 5000000
budget_usd_per_day = 50
budget_usd_per_month = 800.5
max_concurrent = 32
unpriced = zero
owner = search-platform@example.com

[route:openai]
family = openai
base_url = https://api.openai.com/v1
key = openai-prod
auth = bearer
header = OpenAI-Organization: org-123
timeout = 600s
connect_timeout = 10s
ca_file = /etc/ssl/certs/ca-certificates.crt
price = gpt-4o-mini input=0.15 output=0.60 cached_input=0.075
price = gpt-4o request=0.002
retry_on = 429 500 502 503 504 529 connect timeout
breaker_failures = 5
breaker_error_ratio = 0.5
breaker_window = 60s
breaker_min_requests = 20
breaker_cooldown = 30s

[route:flatkey]
family = openai
base_url = https://gw.example.com/v1
key = flatkey
auth = header:X-Gateway-Key
retry_on = none

[route:anthropic]
family = anthropic
base_url = https://api.anthropic.com/v1
key = anthropic-prod
auth = x-api-key
price = claude-3-5-haiku-latest input=0.80 output=4.00 cache_write=1.0 cached_input=0.08

[model:chat-default]
target = openai gpt-4o-mini weight=90
target = flatkey openai/gpt-4o-mini weight=10 rollback_on_error_ratio=0.2 min_requests=50
fallback = anthropic claude-3-5-haiku-latest
max_attempts = 3
retry_after_max = 5s

[model:gpt-4o-mini]
target = openai gpt-4o-mini
''')
put('fuzz_config', 'errors.conf', '[agent]\nlisten = \n[team:x]\nusers = nosuchuser\nmodels = ghost\n[route:r]\nfamily = gopher\n[model:m]\ntarget = nowhere x weight=-1\n[bogus]\nkey\n')

# ---------------------------------------------------------------- fuzz_keystore
ks = os.path.join(corpus, 'fuzz_keystore')
os.makedirs(ks, exist_ok=True)
binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, 'build', 'fuzz', 'fuzzers', 'fuzz_keystore')
if os.path.exists(binary):
    subprocess.run([binary], env=dict(os.environ, KB_FUZZ_WRITE_SEEDS=ks), check=True)
else:
    print(f'{binary} not built: keystore seeds not written (make fuzz-build)', file=sys.stderr)
