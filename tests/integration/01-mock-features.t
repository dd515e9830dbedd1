#!/usr/bin/perl
# kb-mock's options and scripts for the routing playbook's preflight
# (tests/mock/README.md): --alias answers a name as its dated snapshot
# (chat, responses, messages, embeddings; JSON and SSE) and lists it;
# json_schema response formats and forced tools get a document of their
# schema (x-mock-schema-break: one that is not); image input is taken
# unless --no-vision; --reasoning reports reasoning tokens;
# --min-latency-ms delays every answer; /api/v2/status.json speaks
# Statuspage (--status-indicator), /api/v2/not-statuspage.json does not.
# Bad option values exit 2.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use KB;

plan skip_all => 'curl not installed' unless grep { -x "$_/curl" } split(/:/, $ENV{PATH});

my $KEY = 'sk-mock-features';
my $m = start_mock(args => ['--alias', 'gpt-4o=gpt-4o-2024-08-06', '--alias', 'claude-x=claude-x-20250101',
                         '--no-vision', 'blind', '--reasoning', 'thinker', '--min-latency-ms', 150,
                         '--status-indicator', 'major'], require_key => [$KEY], models => ['gpt-4o-2024-08-06', 'claude-x-20250101', 'blind', 'thinker',
                                                           'text-embedding-3-small']);
my $plain = start_mock();

# One call to a mock over TCP: {status, body, json, seconds}.
sub call($mock, $method, $path, $body = undef, @headers) {
        my @cmd = ('curl', '-q', '-s', '-S', '-X', $method, '-H', "Authorization: Bearer $KEY", '-H', 'Expect:',
                   map({ ('-H', $_) } @headers), '-w', "\n%{http_code}");
        push @cmd, '-H', 'Content-Type: application/json', '--data-binary', ref $body ? json_encode($body) : $body
                if defined $body;
        push @cmd, 'http://127.0.0.1:' . $mock->port . $path;
        my $t0 = time;
        my $r = run_cmd(\@cmd);
        my ($out, $status) = $r->{stdout} =~ /^(.*)\n(\d{3})$/s;
        return { status => $status, body => $out // '', json => json_decode($out // ''), seconds => time - $t0 };
}

sub chat($model, %extra) { return { model => $model, messages => [{ role => 'user', content => 'hi' }], %extra } }
sub last_data($body) { my @ev = grep { $_->{json} } sse_events($body); return @ev }

my $SCHEMA = { type => 'object', additionalProperties => JSON::PP::false,
               required => [qw(city population ratio capital tags size nested)],
               properties => { city => { type => 'string' }, population => { type => 'integer' },
                               ratio => { type => 'number' }, capital => { type => 'boolean' },
                               tags => { type => 'array', items => { type => 'string' } },
                               size => { type => 'string', enum => [qw(small large)] },
                               nested => { type => 'object', properties => { n => { type => 'integer' } } } } };
my $DOC = { city => 'x', population => 1, ratio => 1.5, capital => JSON::PP::true, tags => ['x'], size => 'small',
            nested => { n => 1 } };

subtest '--alias: the snapshot is reported, everywhere' => sub {
        my $r = call($m, 'POST', '/v1/chat/completions', chat('gpt-4o'));
        is($r->{status}, 200, 'chat: 200');
        is($r->{json}{model}, 'gpt-4o-2024-08-06', 'chat JSON: the snapshot');
        $r = call($m, 'POST', '/v1/chat/completions', chat('gpt-4o', stream => JSON::PP::true,
                                                           stream_options => { include_usage => JSON::PP::true }));
        my @ev = last_data($r->{body});
        ok(@ev && !grep({ $_->{json}{model} ne 'gpt-4o-2024-08-06' } @ev), 'chat SSE: every chunk names the snapshot');
        $r = call($m, 'POST', '/v1/responses', { model => 'gpt-4o', input => 'hi' });
        is($r->{json}{model}, 'gpt-4o-2024-08-06', 'responses JSON');
        $r = call($m, 'POST', '/v1/responses', { model => 'gpt-4o', input => 'hi', stream => JSON::PP::true });
        my ($done) = grep { ($_->{event} // '') eq 'response.completed' } sse_events($r->{body});
        is($done->{json}{response}{model}, 'gpt-4o-2024-08-06', 'responses SSE');
        $r = call($m, 'POST', '/v1/messages', { %{chat('claude-x')}, max_tokens => 5 }, 'anthropic-version: 2023-06-01');
        is($r->{json}{model}, 'claude-x-20250101', 'messages JSON');
        $r = call($m, 'POST', '/v1/messages', { %{chat('claude-x')}, max_tokens => 5, stream => JSON::PP::true });
        my ($start) = grep { ($_->{event} // '') eq 'message_start' } sse_events($r->{body});
        is($start->{json}{message}{model}, 'claude-x-20250101', 'messages SSE');
        $r = call($m, 'POST', '/v1/embeddings', { model => 'gpt-4o', input => 'hi' });
        is($r->{json}{model}, 'gpt-4o-2024-08-06', 'embeddings');
        $r = call($m, 'GET', '/v1/models');
        is_deeply([map { $_->{id} } @{$r->{json}{data}}],
                  ['gpt-4o-2024-08-06', 'claude-x-20250101', 'blind', 'thinker', 'text-embedding-3-small', 'gpt-4o',
                   'claude-x'], 'the aliases are listed after the models');
        $r = call($m, 'POST', '/v1/chat/completions', chat('gpt-5'));
        is($r->{status}, 404, 'a name neither served nor aliased: still 404');
};

subtest 'structured output: a document of the schema, or one that breaks it' => sub {
        my $rf = { type => 'json_schema', json_schema => { name => 't', strict => JSON::PP::true, schema => $SCHEMA } };
        my $r = call($m, 'POST', '/v1/chat/completions', chat('gpt-4o', response_format => $rf));
        is($r->{status}, 200, 'chat: 200');
        is_deeply(json_decode($r->{json}{choices}[0]{message}{content}), $DOC, 'chat: the content is the document');
        is($r->{json}{choices}[0]{finish_reason}, 'stop', 'finish_reason stop');
        $r = call($m, 'POST', '/v1/chat/completions', chat('gpt-4o', response_format => $rf, stream => JSON::PP::true));
        my $text = join '', map { $_->{json}{choices}[0]{delta}{content} // '' } last_data($r->{body});
        is_deeply(json_decode($text), $DOC, 'chat SSE: the same document, streamed');
        $r = call($m, 'POST', '/v1/chat/completions', chat('gpt-4o', response_format => $rf), 'x-mock-schema-break: 1');
        my $broken = json_decode($r->{json}{choices}[0]{message}{content});
        is($broken->{city}, 1, 'x-mock-schema-break: the first required property has the wrong type');
        $r = call($m, 'POST', '/v1/responses', { model => 'gpt-4o', input => 'hi',
                                                 text => { format => { type => 'json_schema', name => 't',
                                                                       schema => $SCHEMA } } });
        is_deeply(json_decode($r->{json}{output}[0]{content}[0]{text}), $DOC, 'responses: text.format json_schema');
        $r = call($m, 'POST', '/v1/chat/completions',
                  chat('gpt-4o', response_format => { type => 'json_schema', json_schema => { name => 't',
                                                      schema => { type => 'array', items => { type => 'integer' } } } }));
        is_deeply(json_decode($r->{json}{choices}[0]{message}{content}), [1], 'an array schema');
        $r = call($m, 'POST', '/v1/chat/completions', chat('gpt-4o', response_format => { type => 'json_object' }));
        like($r->{json}{choices}[0]{message}{content}, qr/^tok0 /, 'json_object: the usual text');

        # Anthropic's way: a forced tool whose input is the document.
        my $tool = { name => 'rec', input_schema => $SCHEMA };
        $r = call($m, 'POST', '/v1/messages', { %{chat('claude-x')}, max_tokens => 50,
                                                tools => [{ name => 'other', input_schema => { type => 'object' } }, $tool],
                                                tool_choice => { type => 'tool', name => 'rec' } });
        is($r->{json}{content}[0]{name}, 'rec', 'messages: the forced tool is called');
        is_deeply($r->{json}{content}[0]{input}, $DOC, 'its input is a document of its schema');
        $r = call($m, 'POST', '/v1/messages', { %{chat('claude-x')}, max_tokens => 50, tools => [$tool],
                                                tool_choice => { type => 'tool', name => 'rec' } }, 'x-mock-schema-break: 1');
        is($r->{json}{content}[0]{input}{city}, 1, 'x-mock-schema-break breaks it');
        $r = call($m, 'POST', '/v1/chat/completions',
                  chat('gpt-4o', tools => [{ type => 'function', function => { name => 'f', parameters => $SCHEMA } }],
                       tool_choice => { type => 'function', function => { name => 'f' } }));
        is_deeply(json_decode($r->{json}{choices}[0]{message}{tool_calls}[0]{function}{arguments}), $DOC,
                  'chat: a forced function gets arguments of its parameters');
        $r = call($m, 'POST', '/v1/messages', { %{chat('claude-x')}, max_tokens => 50, tools => [$tool] });
        is_deeply($r->{json}{content}[0]{input}, { location => 'Paris' }, 'a tool not forced: the usual arguments');
};

subtest 'vision: images are taken, unless --no-vision' => sub {
        my $png = 'data:image/png;base64,iVBORw0KGgo=';
        my $img_chat = [{ role => 'user', content => [{ type => 'text', text => 'what?' },
                                                      { type => 'image_url', image_url => { url => $png } }] }];
        my $r = call($m, 'POST', '/v1/chat/completions', { model => 'gpt-4o', messages => $img_chat });
        is($r->{status}, 200, 'chat image_url: 200');
        $r = call($m, 'POST', '/v1/chat/completions', { model => 'blind', messages => $img_chat });
        is($r->{status}, 400, 'chat image_url to a --no-vision model: 400');
        is($r->{json}{error}{type}, 'invalid_request_error', 'invalid_request_error');
        is($r->{json}{error}{message}, 'The model `blind` does not support image input.', 'says why');
        $r = call($m, 'POST', '/v1/chat/completions', chat('blind'));
        is($r->{status}, 200, 'the same model without an image: 200');
        my $img_resp = [{ role => 'user', content => [{ type => 'input_image', image_url => $png }] }];
        is(call($m, 'POST', '/v1/responses', { model => 'gpt-4o', input => $img_resp })->{status}, 200, 'responses input_image: 200');
        is(call($m, 'POST', '/v1/responses', { model => 'blind', input => $img_resp })->{status}, 400,
           'responses input_image to blind: 400');
        my $img_msg = [{ role => 'user', content => [{ type => 'image', source => { type => 'base64',
                                                       media_type => 'image/png', data => 'iVBORw0KGgo=' } }] }];
        is(call($m, 'POST', '/v1/messages', { model => 'claude-x', max_tokens => 5, messages => $img_msg })->{status}, 200,
           'messages image block: 200');
        $r = call($m, 'POST', '/v1/messages', { model => 'blind', max_tokens => 5, messages => $img_msg });
        is($r->{status}, 400, 'messages image block to blind: 400');
        is($r->{json}{type}, 'error', 'Anthropic error shape');
        is($r->{json}{error}{type}, 'invalid_request_error', 'invalid_request_error');
};

subtest '--reasoning: reasoning tokens without the header' => sub {
        my $r = call($m, 'POST', '/v1/chat/completions', chat('thinker'));
        is($r->{json}{usage}{completion_tokens_details}{reasoning_tokens}, 3, 'chat: 3');
        $r = call($m, 'POST', '/v1/responses', { model => 'thinker', input => 'hi' });
        is($r->{json}{usage}{output_tokens_details}{reasoning_tokens}, 3, 'responses: 3');
        $r = call($m, 'POST', '/v1/messages', { %{chat('thinker')}, max_tokens => 5 });
        is($r->{json}{usage}{output_tokens_details}{thinking_tokens}, 3, 'messages: 3 thinking tokens');
        $r = call($m, 'POST', '/v1/messages', { %{chat('thinker')}, max_tokens => 5, stream => JSON::PP::true });
        my ($delta) = grep { ($_->{event} // '') eq 'message_delta' } sse_events($r->{body});
        is($delta->{json}{usage}{output_tokens_details}{thinking_tokens}, 3, 'messages SSE: in message_delta');
        $r = call($m, 'POST', '/v1/chat/completions', chat('thinker'), 'x-mock-reasoning-tokens: 9');
        is($r->{json}{usage}{completion_tokens_details}{reasoning_tokens}, 9, 'the header still wins');
        $r = call($m, 'POST', '/v1/chat/completions', chat('gpt-4o'));
        is($r->{json}{usage}{completion_tokens_details}{reasoning_tokens}, 0, 'another model: 0');
        $r = call($m, 'POST', '/v1/messages', { %{chat('claude-x')}, max_tokens => 5 });
        ok(!exists $r->{json}{usage}{output_tokens_details}, 'Anthropic without reasoning: no details');
};

subtest '--min-latency-ms: every answer waits' => sub {
        my $r = call($m, 'GET', '/v1/models');
        ok($r->{seconds} >= 0.15, sprintf('models after %.3f s', $r->{seconds}));
        $r = call($m, 'GET', '/api/v2/status.json');
        ok($r->{seconds} >= 0.15, sprintf('the status page too (%.3f s)', $r->{seconds}));
        $r = run_cmd(['curl', '-q', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '0.05',
                      'http://127.0.0.1:' . $m->port . '/v1/models']);
        is($r->{exit}, 28, 'a 50 ms client timeout fires (curl exit 28)');
};

subtest 'Statuspage: status.json and a page that is not one' => sub {
        my $r = call($m, 'GET', '/api/v2/status.json');
        is($r->{status}, 200, 'status.json: 200');
        is_deeply($r->{json}, { page => { id => 'mock', name => 'kb-mock', url => 'http://127.0.0.1' },
                                status => { indicator => 'major', description => 'Partial System Outage' } },
                  '--status-indicator major');
        $r = run_cmd(['curl', '-q', '-s', 'http://127.0.0.1:' . $m->port . '/api/v2/status.json']);
        like($r->{stdout}, qr/"indicator":"major"/, 'no key needed: a status page is public');
        $r = call($plain, 'GET', '/api/v2/status.json');
        is($r->{json}{status}{indicator}, 'none', 'default: none');
        is($r->{json}{status}{description}, 'All Systems Operational', 'with its description');
        $r = call($plain, 'GET', '/api/v2/not-statuspage.json');
        is_deeply($r->{json}, { hello => 'world' }, 'not-statuspage.json');
        is(call($plain, 'POST', '/api/v2/status.json', '{}')->{status}, 404, 'POST: 404 like any unknown path');
        my ($e) = grep { $_->{path} eq '/api/v2/status.json' } $plain->log_entries;
        ok($e, 'status requests are logged');
};

subtest 'bad option values: exit 2' => sub {
        for my $args (['--alias', 'nameonly'], ['--alias', '=x'], ['--alias', 'x='], ['--no-vision', ''],
                      ['--reasoning', ''], ['--min-latency-ms', 'x'], ['--min-latency-ms', '600001'],
                      ['--status-indicator', 'bad']) {
                my $r = run_cmd([$KB::KB_MOCK, '--port', 0, @$args], timeout => 5);
                is($r->{exit}, 2, "@$args: exit 2");
        }
        my $r = run_cmd([$KB::KB_MOCK, '--help']);
        like($r->{stdout}, qr/--$_/, "--help names --$_") for qw(alias no-vision reasoning min-latency-ms status-indicator);
};

done_testing;
