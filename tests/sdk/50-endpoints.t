#!/usr/bin/perl
# The official `openai` SDK (tests/sdk/endpoints.mjs), unchanged, on the
# endpoints beyond chat: audio transcriptions with a file streamed from disk
# (the SDK puts the file part before the model), JSON and response_format
# 'text'; image generation priced per image; speech as binary; a file upload
# made into a batch, retrieved until it completes and billed once, its
# output file read back (the team's, not another team's). Each case checks
# what the SDK returned, the call's journal record (the endpoint's unit:
# tokens, audio seconds, images, characters, the batch) and what the
# provider received (the model rewritten in the JSON body or in the form,
# every uploaded byte unchanged).
use v5.36;
use FindBin;
use lib "$FindBin::Bin/../integration/lib", "$FindBin::Bin/lib";
use Test::More;
use Digest::SHA qw(sha256_hex);
use KB;
use SDK;

my ($mock, $broker, $keys) = sdk_setup(config => sub ($cfg) {
        $cfg->{'route:oai'}{price} = [
                'gpt-4o-mini-2024-07-18 input=1 output=2 batch_input=0.5 batch_output=1',
                'gpt-image-1 input=5 output=40 image=0.04',
                'tts-1 character=15',
                'whisper-1 second=0.0001',
                'gpt-4o-transcribe input=2.5 output=10',
        ];
        $cfg->{'model:image'} = { target => 'oai gpt-image-1' };
        $cfg->{'model:tts'} = { target => 'oai tts-1' };
        $cfg->{'model:whisper'} = { target => 'oai whisper-1' };
        $cfg->{'model:transcribe'} = { target => 'oai gpt-4o-transcribe' };
});
my %keys = %$keys;
my $tmp = KB::tmpdir('sdk-endpoints');

# 3 MiB: more than the 1 MiB the broker holds in memory while the file part
# waits for the model field after it (keybrokerd(8): "Uploads stream").
my $wav = "$tmp/speech.wav";
KB::spew($wav, 'RIFF' . join('', map { chr(($_ * 131 + 7) % 256) } 0 .. 65535) x 48);
my $jsonl = "$tmp/input.jsonl";
KB::spew($jsonl, join('', map { KB::json_encode({ custom_id => "r$_", method => 'POST', url => '/v1/chat/completions',
                                                  body => { model => 'gpt-4o-mini-2024-07-18', messages => [] } }) . "\n" } 1 .. 2));

sub run($case, %o) { return sdk_run($broker, 'endpoints', $case, %o) }

# The journal record of a call of team ops made by this node process.
sub record($j, $call, $endpoint, %want) {
        return check_call_record($call, {
                KEYBROKER_TEAM => 'ops', KEYBROKER_PEER_PID => "$j->{pid}", KEYBROKER_PEER_UID => 0,
                KEYBROKER_PEER_EXE => qr{/node(js)?$}, KEYBROKER_ENDPOINT => $endpoint, KEYBROKER_ROUTE => 'oai',
                KEYBROKER_FAMILY => 'openai', KEYBROKER_KEY => qr/^oai-key\@\d+$/, KEYBROKER_STATUS => 200,
                KEYBROKER_UPSTREAM_STATUS => 200, KEYBROKER_OUTCOME => 'ok', KEYBROKER_STREAM => 0,
                KEYBROKER_UPSTREAM_REQUEST_ID => $call->{headers}{'x-request-id'}, %want,
        }, "journal: $call->{method} $call->{path}");
}

sub provider($call, $path, %o) {
        return check_provider($mock, $call, family => 'openai', key => $keys{'oai-key'}, path => $path, %o);
}

sub one_call($j) {
        is(scalar @{$j->{calls} // []}, 1, 'the SDK made exactly one HTTP call') or diag(explain($j->{calls}));
        return $j->{calls}[0];
}

# The form the provider received: its parts in order, and by name.
sub form_parts($e) {
        my @p = @{$e->{parts} // []};
        return ([map { $_->{name} } @p], { map { $_->{name} => $_ } @p });
}

# A file part that arrived whole: its name, size and SHA-256 as on disk.
sub check_file_part($part, $path) {
        my $base = $path =~ s{.*/}{}r;
        is($part->{filename}, $base, "the file part is named $base");
        is($part->{bytes}, -s $path, 'every byte of it arrived');
        is($part->{sha256}, sha256_hex(KB::slurp($path)), '... unchanged (sha256 as the local file)');
}

subtest 'audio.transcriptions.create: a file stream, then the model' => sub {
        my $j = run('transcription', env => { KB_FILE => $wav },
                    headers => { 'x-mock-input-tokens' => 40, 'x-mock-output-tokens' => 5 }, timeout => 60);
        sdk_ok($j, 'the SDK call succeeded') or return;
        my $r = $j->{result};
        is($r->{text}, 'tok0 tok1 tok2 tok3 tok4', 'the transcript text');
        is($r->{usage}{type}, 'tokens', 'usage in tokens (gpt-4o-transcribe)');
        is_deeply([@{$r->{usage}}{qw(input_tokens output_tokens)}], [40, 5], 'usage numbers');
        my $c = one_call($j);
        is($c->{headers}{'x-keybroker-route'}, 'oai', 'x-keybroker-route oai');
        like($c->{request_headers}{'content-type'} // '', qr{^multipart/form-data; boundary=}, 'the SDK sent a form');
        # 40 in * 2.5 + 5 out * 10 per 1M: 150 micro-USD
        record($j, $c, 'audio_transcriptions', KEYBROKER_MODEL => 'transcribe', KEYBROKER_INPUT_TOKENS => 40,
               KEYBROKER_OUTPUT_TOKENS => 5, KEYBROKER_AUDIO_SECONDS => '0.000', KEYBROKER_COST_MICROUSD => 150);
        provider($c, '/v1/audio/transcriptions', more => sub ($e, $b) {
                my ($order, $parts) = form_parts($e);
                is_deeply($order, [qw(file model)], 'the parts in the order the SDK sent them: file, then model');
                is($parts->{model}{value}, 'gpt-4o-transcribe', 'the form\'s model rewritten to the upstream model');
                check_file_part($parts->{file}, $wav);
                like($e->{headers}{'user-agent'} // '', qr{^OpenAI/JS 6\.49\.0}, "the SDK's User-Agent passed");
        });
};

subtest 'audio.transcriptions.create with whisper: billed by the provider\'s seconds' => sub {
        my $j = run('transcription', env => { KB_FILE => $wav, KB_MODEL => 'whisper' },
                    headers => { 'x-mock-audio-seconds' => '12.5' });
        sdk_ok($j, 'the SDK call succeeded') or return;
        is($j->{result}{text}, 'tok0 tok1 tok2 tok3 tok4 tok5 tok6', 'the transcript text');
        is_deeply($j->{result}{usage}, { type => 'duration', seconds => 13 }, 'usage in seconds, rounded up');
        my $c = one_call($j);
        # 13 s at $0.0001/s: 1300 micro-USD
        record($j, $c, 'audio_transcriptions', KEYBROKER_MODEL => 'whisper', KEYBROKER_AUDIO_SECONDS => '13.000',
               KEYBROKER_COST_MICROUSD => 1300);
        provider($c, '/v1/audio/transcriptions', more => sub ($e, $b) {
                my ($order, $parts) = form_parts($e);
                is($parts->{model}{value}, 'whisper-1', 'model rewritten to whisper-1');
                check_file_part($parts->{file}, $wav);
        });
};

subtest "audio.transcriptions.create({response_format: 'text'}): a string" => sub {
        my $j = run('transcription_text', env => { KB_FILE => $wav }, headers => { 'x-mock-audio-seconds' => '12.5' });
        sdk_ok($j, 'the SDK call succeeded') or return;
        is($j->{result}{type}, 'string', 'the SDK returned a string');
        is($j->{result}{text}, "tok0 tok1 tok2 tok3 tok4 tok5 tok6\n", 'the provider\'s text, as it sent it');
        my $c = one_call($j);
        like($c->{headers}{'content-type'} // '', qr{^text/plain}, 'text/plain relayed');
        # As keybrokerd(8)'s endpoint list says: text, SRT and VTT answers carry
        # neither tokens nor seconds (OpenAI's text answer has no usage), so
        # even a model priced per second is journaled with 0 s and $0.
        record($j, $c, 'audio_transcriptions', KEYBROKER_MODEL => 'whisper', KEYBROKER_AUDIO_SECONDS => '0.000',
               KEYBROKER_INPUT_TOKENS => 0, KEYBROKER_OUTPUT_TOKENS => 0, KEYBROKER_COST_MICROUSD => 0);
        provider($c, '/v1/audio/transcriptions', more => sub ($e, $b) {
                my ($order, $parts) = form_parts($e);
                is_deeply($order, [qw(file model response_format)], 'file, model, response_format');
                is($parts->{model}{value}, 'whisper-1', 'model rewritten');
                is($parts->{response_format}{value}, 'text', 'response_format unchanged');
                check_file_part($parts->{file}, $wav);
        });
};

subtest 'images.generate: two images, priced per image' => sub {
        my $j = run('images');
        sdk_ok($j, 'the SDK call succeeded') or return;
        my $r = $j->{result};
        is(scalar @{$r->{images} // []}, 2, 'two images');
        is_deeply([map { $_->{png} } @{$r->{images}}], ['PNG', 'PNG'], 'each b64_json decodes to a PNG');
        is_deeply([map { $_->{url} } @{$r->{images}}], [undef, undef], 'no urls (gpt-image-1 answers b64_json)');
        is($r->{usage}{input_tokens}, 11, 'usage');
        my $c = one_call($j);
        # 11 in * 5 + 7 out * 40 = 335 micro-USD of tokens, plus 2 images * $0.04
        record($j, $c, 'images', KEYBROKER_MODEL => 'image', KEYBROKER_IMAGES => 2, KEYBROKER_INPUT_TOKENS => 11,
               KEYBROKER_OUTPUT_TOKENS => 7, KEYBROKER_COST_MICROUSD => 80335);
        provider($c, '/v1/images/generations', upstream_model => 'gpt-image-1', more => sub ($e, $b) {
                is($b->{n}, 2, 'n passed');
                is($b->{prompt}, 'a red square', 'prompt passed');
        });
};

subtest 'audio.speech.create: binary audio, characters priced' => sub {
        my $j = run('speech');
        sdk_ok($j, 'the SDK call succeeded') or return;
        my $r = $j->{result};
        my $input = 'Hello from the broker';          # 21 characters
        my $want = 'MOCK' . join('', map { chr(($_ * 31 + 7) & 0xff) } 0 .. 100 * length($input) - 1);
        is($r->{head}, 'MOCK', 'arrayBuffer() starts with the provider\'s MOCK');
        is($r->{bytes}, length $want, 'every byte');
        is($r->{sha256}, sha256_hex($want), '... the provider\'s, unchanged');
        like($r->{content_type} // '', qr{^audio/mpeg}, 'audio/mpeg');
        my $c = one_call($j);
        # 21 characters at $15 per 1M: 315 micro-USD
        record($j, $c, 'audio_speech', KEYBROKER_MODEL => 'tts', KEYBROKER_CHARACTERS => 21,
               KEYBROKER_COST_MICROUSD => 315);
        provider($c, '/v1/audio/speech', upstream_model => 'tts-1', more => sub ($e, $b) {
                is($b->{input}, $input, 'input passed');
                is($b->{voice}, 'alloy', 'voice passed');
        });
};

my @ops_files;          # team ops: the uploaded file, the batch's output file
subtest 'files.create -> batches.create -> batches.retrieve until completed -> files.content' => sub {
        my $j = run('batch', env => { KB_FILE => $jsonl },
                    headers => { 'x-mock-input-tokens' => 1000, 'x-mock-output-tokens' => 500 });
        sdk_ok($j, 'the SDK calls succeeded') or return;
        my $r = $j->{result};
        my %at = %{$r->{at}};
        my @calls = @{$j->{calls}};
        is(scalar @calls, 4 + @{$at{retrieves}}, 'upload, input content, create, the retrieves, output content');

        # The upload names no model: the team's default route takes it.
        my $file = $r->{file}{id};
        like($file // '', qr/^file-/, 'files.create: the provider\'s file id');
        is($r->{file}{bytes}, -s $jsonl, '... all the bytes');
        is($r->{file}{purpose}, 'batch', '... purpose batch');
        is($r->{file}{filename}, 'input.jsonl', '... the file\'s name');
        my $c = $calls[$at{upload}];
        record($j, $c, 'files', KEYBROKER_MODEL => undef, KEYBROKER_OBJECT_ID => $file, KEYBROKER_COST_MICROUSD => 0);
        provider($c, '/v1/files', more => sub ($e, $b) {
                my ($order, $parts) = form_parts($e);
                is_deeply($order, [qw(file purpose)], 'file, then purpose');
                is($parts->{purpose}{value}, 'batch', 'purpose batch');
                check_file_part($parts->{file}, $jsonl);
        });

        is($r->{input_sha256}, sha256_hex(KB::slurp($jsonl)), 'files.content of the uploaded file: the same bytes');
        $c = $calls[$at{input_content}];
        record($j, $c, 'files', KEYBROKER_OBJECT_ID => $file);
        provider($c, "/v1/files/$file/content");

        my $batch = $r->{created}{id};
        like($batch // '', qr/^batch_/, 'batches.create: the batch id');
        is($r->{created}{status}, 'validating', '... validating');
        is($r->{created}{input_file_id}, $file, '... of the uploaded file');
        $c = $calls[$at{create}];
        record($j, $c, 'batches', KEYBROKER_MODEL => undef, KEYBROKER_OBJECT_ID => $batch, KEYBROKER_BATCH => 0,
               KEYBROKER_INPUT_TOKENS => 0, KEYBROKER_OUTPUT_TOKENS => 0, KEYBROKER_COST_MICROUSD => 0);
        provider($c, '/v1/batches', more => sub ($e, $b) {
                is_deeply($b, { input_file_id => $file, endpoint => '/v1/chat/completions', completion_window => '24h' },
                          'the body as the SDK wrote it (no model to rewrite)');
        });

        is_deeply($r->{statuses}, [qw(in_progress finalizing completed completed)],
                  'one step per retrieve, then completed again') or diag(explain($r->{statuses}));
        is_deeply($r->{final}{request_counts}, { total => 2, completed => 2, failed => 0 }, 'request_counts');
        is_deeply([@{$r->{final}{usage} // {}}{qw(input_tokens output_tokens)}], [2000, 1000],
                  'the batch\'s usage: 2 requests * 1000 in / 500 out');
        my $first_done = 0;
        for my $i (0 .. $#{$at{retrieves}}) {
                my $st = $r->{statuses}[$i];
                my %want = (KEYBROKER_BATCH => 0, KEYBROKER_INPUT_TOKENS => 0, KEYBROKER_OUTPUT_TOKENS => 0,
                            KEYBROKER_COST_MICROUSD => 0);
                if ($st eq 'completed' && !$first_done++) {
                        # 2000 in * 0.5 + 1000 out * 1 per 1M (batch prices): 2000 micro-USD
                        %want = (KEYBROKER_BATCH => 1, KEYBROKER_INPUT_TOKENS => 2000, KEYBROKER_OUTPUT_TOKENS => 1000,
                                 KEYBROKER_COST_MICROUSD => 2000, KEYBROKER_UPSTREAM_MODEL => 'gpt-4o-mini-2024-07-18');
                }
                $c = $calls[$at{retrieves}[$i]];
                is($c->{path}, "/v1/batches/$batch", 'GET /v1/batches/ID');
                record($j, $c, 'batches', KEYBROKER_OBJECT_ID => $batch, %want);
        }
        provider($calls[$at{retrieves}[0]], "/v1/batches/$batch");
        my @billed = $broker->journal({ KEYBROKER_OBJECT_ID => $batch, KEYBROKER_BATCH => 1 });
        is(scalar @billed, 1, 'the batch billed exactly once (no background poll record either)');

        # The output file: made by the provider, named by the batch the
        # broker saw completed, so the team's (keybrokerd(8): "Objects belong to
        # the team that made them").
        my $out = $r->{final}{output_file_id};
        like($out // '', qr/^file-/, 'the completed batch names its output file');
        ok(!$r->{output}{error}, 'files.content(output_file_id) succeeded') or diag(explain($r->{output}));
        my @lines = map { KB::json_decode($_) } grep { /\S/ } split /\n/, $r->{output}{text} // '';
        is_deeply([map { $_->{custom_id} } @lines], [qw(r1 r2)], 'one result line per request, in order');
        is_deeply([map { $_->{response}{status_code} } @lines], [200, 200], '... each a 200');
        is($lines[0]{response}{body}{usage}{prompt_tokens}, 1000, '... with its usage');
        $c = $calls[$at{output_content}];
        is($c->{status}, 200, 'HTTP 200');
        record($j, $c, 'files', KEYBROKER_MODEL => undef, KEYBROKER_OBJECT_ID => $out, KEYBROKER_COST_MICROUSD => 0);
        provider($c, "/v1/files/$out/content");
        @ops_files = ($file, $out);
};

subtest 'another team may read neither the uploaded file nor the batch output' => sub {
        ok(@ops_files == 2, 'ops uploaded a file and made a batch of it') or return;
        my $n = $mock->count;
        my $j = run('file_content', uid => 1001, gid => 2001, env => { KB_FILE_IDS => join(',', @ops_files) });
        sdk_ok($j, 'the script ran as uid 1001') or return;
        my @f = @{$j->{result}{files} // []};
        is(scalar @f, 2, 'two answers');
        is(scalar @{$j->{calls}}, 2, 'two HTTP calls');
        for my $f (@f) {
                subtest "files.content($f->{id}) as team search" => sub {
                        ok($f->{is_not_found_error}, 'NotFoundError') or diag(explain($f));
                        my $e = $f->{error} // {};
                        is($e->{status}, 404, 'status 404');
                        is($e->{error}{param}, 'id', 'as the provider says an unknown id: param id');
                        like($e->{error}{message} // '', qr/\Q$f->{id}\E/, '... naming the id');
                        is($e->{headers}{'x-keybroker-team'}, 'search', 'answered for team search');
                };
        }
        for my $c (@{$j->{calls}}) {
                check_call_record($c, { KEYBROKER_TEAM => 'search', KEYBROKER_PEER_UID => 1001,
                                        KEYBROKER_PEER_PID => "$j->{pid}", KEYBROKER_ENDPOINT => 'files',
                                        KEYBROKER_STATUS => 404, KEYBROKER_KEY => undef,
                                        KEYBROKER_UPSTREAM_REQUEST_ID => undef,
                                        KEYBROKER_OBJECT_ID => ($c->{path} =~ m{^/v1/files/([^/]+)/content$})[0] },
                                  "journal: $c->{path} refused by the broker");
        }
        is($mock->count, $n, 'neither request reached the provider');
};

done_testing;
