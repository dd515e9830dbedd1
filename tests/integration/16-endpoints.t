#!/usr/bin/perl
# The endpoints beyond chat, responses, embeddings and messages: legacy
# completions, moderations, images (JSON and multipart edits), speech
# (binary answer), transcriptions and translations (multipart uploads; JSON,
# text, SRT and SSE answers). Each through the real broker to the mock:
# status and body as the provider sent them, the model rewritten (in the
# form too, every other byte of every part unchanged), usage journaled in
# the endpoint's unit and priced with its price.
use v5.36;
use utf8;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Digest::SHA qw(sha256_hex);
use KB;

ensure_journald();
my $oai_key = fixture_secret('oai');
my $mock = start_mock(require_key => [$oai_key]);
my $cfg = standard_config(mock => $mock, );
delete $cfg->{'route:anth'};
delete $cfg->{'model:claude-haiku'};
$cfg->{'team:search'}{models} = 'gpt-mini';
$cfg->{'route:oai'}{price} = [
        'gpt-4o-mini-2024-07-18 input=1 output=2',
        'gpt-3.5-turbo-instruct input=1.5 output=2',
        'gpt-image-1 input=5 output=40 image=0.04',
        'tts-1 character=15',
        'whisper-1 second=0.0001',
        'gpt-4o-transcribe input=2.5 output=10',
];
$cfg->{'model:instruct'} = { target => 'oai gpt-3.5-turbo-instruct' };
$cfg->{'model:moderation'} = { target => 'oai omni-moderation-latest' };
$cfg->{'model:image'} = { target => 'oai gpt-image-1' };
$cfg->{'model:tts'} = { target => 'oai tts-1' };
$cfg->{'model:whisper'} = { target => 'oai whisper-1' };
$cfg->{'model:transcribe'} = { target => 'oai gpt-4o-transcribe' };
my $broker = start_broker(config => $cfg, keys => { 'oai-key' => $oai_key });
my $tmp = tmpdir('endpoints');

sub record($res) {
        my $rid = $res->{headers}{'x-keybroker-request-id'};
        ok($rid, 'the answer names its request id') or return undef;
        return journal_request($rid);
}

subtest 'legacy completions: JSON and a stream, usage hidden as asked' => sub {
        my $res = req($broker, path => '/v1/completions', json => { model => 'instruct', prompt => 'Say hi' });
        is($res->{status}, 200, 'answered 200') or return diag(KB::show_res($res));
        is($res->{json}{object}, 'text_completion', 'the provider\'s text_completion');
        my $e = $mock->entry_for($res);
        is(KB::Mock::body_json($e)->{model}, 'gpt-3.5-turbo-instruct', 'model rewritten to the upstream model');
        my $rec = record($res) or return;
        check_fields($rec, { KEYBROKER_ENDPOINT => 'completions', KEYBROKER_INPUT_TOKENS => 11,
                             KEYBROKER_OUTPUT_TOKENS => 7, KEYBROKER_COST_MICROUSD => 31 }, 'record');

        $res = req($broker, path => '/v1/completions', json => { model => 'instruct', prompt => 'x', stream => JSON::PP::true },
                   headers => ['x-mock-output-tokens' => 3]);
        is($res->{status}, 200, 'stream 200');
        my @ev = KB::sse_events($res->{body});
        ok(!grep({ ($_->{data} // '') =~ /"usage"/ && ($_->{data} // '') !~ /null/ } @ev),
           'the usage chunk the broker asked for is not shown to an app that did not');
        is($ev[-1]{data}, '[DONE]', 'ends with [DONE]');
        $e = $mock->entry_for($res) // $mock->last_entry;
        is(KB::Mock::body_json($e)->{stream_options}{include_usage}, JSON::PP::true, 'the broker asked for usage');
        $rec = record($res) or return;
        check_fields($rec, { KEYBROKER_ENDPOINT => 'completions', KEYBROKER_STREAM => 1,
                             KEYBROKER_OUTPUT_TOKENS => 3 }, 'stream record');
};

subtest 'moderations, with a model and without one' => sub {
        my $res = req($broker, path => '/v1/moderations', json => { model => 'moderation', input => ['a', 'b'] });
        is($res->{status}, 200, 'answered 200') or return diag(KB::show_res($res));
        is(scalar @{$res->{json}{results} // []}, 2, 'one result per input');
        is(KB::Mock::body_json($mock->entry_for($res))->{model}, 'omni-moderation-latest', 'model rewritten');
        my $rec = record($res);
        check_fields($rec, { KEYBROKER_ENDPOINT => 'moderations', KEYBROKER_MODEL => 'moderation' }, 'record');

        $res = req($broker, path => '/v1/moderations', json => { input => 'no model named' });
        is($res->{status}, 200, 'without a model: the team\'s default route takes it');
        ok(!exists KB::Mock::body_json($mock->entry_for($res))->{model}, 'the body is sent as the app wrote it');
};

subtest 'images: generations counted and priced per image, edits as a multipart form' => sub {
        my $res = req($broker, path => '/v1/images/generations',
                      json => { model => 'image', prompt => 'a red square', n => 2 });
        is($res->{status}, 200, 'answered 200') or return diag(KB::show_res($res));
        is(scalar @{$res->{json}{data} // []}, 2, 'two images');
        my $rec = record($res) or return;
        # 11 in * 5 + 7 out * 40 = 335 micro-USD of tokens, plus 2 images * 0.04
        check_fields($rec, { KEYBROKER_ENDPOINT => 'images', KEYBROKER_IMAGES => 2,
                             KEYBROKER_COST_MICROUSD => 80335 }, 'record');

        my $png = "$tmp/in.png";
        KB::spew($png, join('', map { chr(($_ * 7) % 256) } 0 .. 4095));
        $res = req($broker, method => 'POST', path => '/v1/images/edits',
                   curl => ['-F', "image=\@$png;type=image/png", '-F', 'prompt=make it blue', '-F', 'model=image']);
        is($res->{status}, 200, 'edit 200') or return diag(KB::show_res($res));
        my $e = $mock->entry_for($res);
        my %parts = map { $_->{name} => $_ } @{$e->{parts} // []};
        is($parts{model}{value}, 'gpt-image-1', 'the form\'s model field rewritten to the upstream model');
        is($parts{image}{sha256}, sha256_hex(KB::slurp($png)), 'the file part arrived byte for byte');
        is($parts{prompt}{value}, 'make it blue', 'the other fields unchanged');
        $rec = record($res);
        check_fields($rec, { KEYBROKER_ENDPOINT => 'images', KEYBROKER_IMAGES => 1 }, 'edit record');
};

subtest 'speech: the audio is relayed as it streams, characters journaled and priced' => sub {
        my $input = "Grüße aus dem Broker";   # 20 characters, 22 bytes
        my $res = req($broker, path => '/v1/audio/speech', json => { model => 'tts', input => $input, voice => 'alloy' });
        is($res->{status}, 200, 'answered 200') or return diag(KB::show_res($res));
        like($res->{headers}{'content-type'} // '', qr{^audio/mpeg}, 'audio/mpeg');
        is(substr($res->{body}, 0, 4), 'MOCK', 'the provider\'s bytes');
        my $rec = record($res) or return;
        # 20 characters at $15 per 1M: 300 micro-USD
        check_fields($rec, { KEYBROKER_ENDPOINT => 'audio_speech', KEYBROKER_CHARACTERS => 20,
                             KEYBROKER_COST_MICROUSD => 300 }, 'record');
};

my $wav = "$tmp/speech.wav";
KB::spew($wav, 'RIFF' . join('', map { chr($_ % 251) } 1 .. 64000));

subtest 'transcriptions: the file first, the model after it (as the Node SDK sends it)' => sub {
        my $res = req($broker, method => 'POST', path => '/v1/audio/transcriptions',
                      curl => ['-F', "file=\@$wav;type=audio/wav", '-F', 'model=transcribe'],
                      headers => ['x-mock-input-tokens' => 40, 'x-mock-output-tokens' => 5]);
        is($res->{status}, 200, 'answered 200') or return diag(KB::show_res($res));
        is($res->{json}{text}, 'tok0 tok1 tok2 tok3 tok4', 'the transcript');
        my $e = $mock->entry_for($res);
        my %parts = map { $_->{name} => $_ } @{$e->{parts} // []};
        is($parts{model}{value}, 'gpt-4o-transcribe', 'model rewritten in the form');
        is($parts{file}{sha256}, sha256_hex(KB::slurp($wav)), 'the audio arrived byte for byte');
        my $rec = record($res) or return;
        check_fields($rec, { KEYBROKER_ENDPOINT => 'audio_transcriptions', KEYBROKER_INPUT_TOKENS => 40,
                             KEYBROKER_OUTPUT_TOKENS => 5, KEYBROKER_COST_MICROUSD => 150 }, 'record');

        $res = req($broker, method => 'POST', path => '/v1/audio/transcriptions',
                   curl => ['-F', 'model=whisper', '-F', "file=\@$wav", '-F', 'response_format=verbose_json'],
                   headers => ['x-mock-audio-seconds' => '12.5']);
        is($res->{status}, 200, 'whisper verbose_json 200') or return diag(KB::show_res($res));
        $rec = record($res) or return;
        # usage.seconds (13, rounded up by the provider) at $0.0001/s
        check_fields($rec, { KEYBROKER_AUDIO_SECONDS => '13.000', KEYBROKER_COST_MICROUSD => 1300 },
                     'billed by the provider\'s seconds');

        # SRT and VTT say where the last cue ends; plain text says nothing
        # (keybrokerd(8) says so).
        for my $fmt (qw(text srt vtt)) {
                $res = req($broker, method => 'POST', path => '/v1/audio/transcriptions',
                           headers => ['x-mock-audio-seconds' => '12.5'],
                           curl => ['-F', 'model=whisper', '-F', "file=\@$wav", '-F', "response_format=$fmt"]);
                is($res->{status}, 200, "$fmt answered");
                like($res->{headers}{'content-type'} // '', qr{^text/}, "$fmt is text");
                like($res->{body}, qr/tok0/, "$fmt body relayed");
                $rec = record($res) or next;
                check_fields($rec, $fmt eq 'text' ? { KEYBROKER_AUDIO_SECONDS => '0.000' }
                                                  : { KEYBROKER_AUDIO_SECONDS => '12.500', KEYBROKER_COST_MICROUSD => 1250 },
                             "$fmt: seconds from the transcript");
        }

        $res = req($broker, method => 'POST', path => '/v1/audio/transcriptions', stream => 1,
                   curl => ['-F', 'model=transcribe', '-F', "file=\@$wav", '-F', 'stream=true']);
        is($res->{status}, 200, 'stream 200');
        my @ev = KB::sse_events($res->{body});
        like($ev[-1]{data} // '', qr/transcript\.text\.done/, 'the stream ends with transcript.text.done');
        $rec = record($res) or return;
        check_fields($rec, { KEYBROKER_STREAM => 1, KEYBROKER_INPUT_TOKENS => 11, KEYBROKER_OUTPUT_TOKENS => 7 },
                     'stream usage from its done event');
};

subtest 'translations' => sub {
        my $res = req($broker, method => 'POST', path => '/v1/audio/translations',
                      curl => ['-F', 'model=whisper', '-F', "file=\@$wav"]);
        is($res->{status}, 200, 'answered 200') or return diag(KB::show_res($res));
        my $rec = record($res);
        check_fields($rec, { KEYBROKER_ENDPOINT => 'audio_translations' }, 'record');
};

subtest 'bad input: each a clear error in the family\'s shape' => sub {
        my $res = req($broker, path => '/v1/realtime', json => { model => 'gpt-mini' });
        check_openai_error($res, 404, 'not_found', 'Realtime (WebSocket) is not forwarded: 404');
        $res = req($broker, method => 'PUT', path => '/v1/files', body => 'x');
        check_openai_error($res, 405, 'invalid_request', 'a wrong method: 405');
        $res = req($broker, method => 'GET', path => '/v1/images/generations');
        check_openai_error($res, 405, 'invalid_request', 'GET on a POST endpoint: 405');

        my $n = $mock->count;
        $res = req($broker, method => 'POST', path => '/v1/audio/transcriptions',
                   curl => ['-F', "file=\@$wav", '-F', 'model=transcribe', '-F', 'model=whisper']);
        check_openai_error($res, 400, 'invalid_request', 'two model fields: 400');
        like($res->{json}{error}{message} // '', qr/two "model" fields/, 'says so');
        $res = req($broker, method => 'POST', path => '/v1/audio/transcriptions', curl => ['-F', "file=\@$wav"]);
        check_openai_error($res, 400, 'invalid_request', 'no model field: 400');

        my $b = 'B' x 71;
        $res = req($broker, path => '/v1/audio/transcriptions',
                   headers => ['Content-Type' => "multipart/form-data; boundary=$b"],
                   body => "--$b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--$b--\r\n");
        check_openai_error($res, 400, 'invalid_request', 'a boundary longer than RFC 2046 allows: 400');
        $res = req($broker, path => '/v1/audio/transcriptions',
                   headers => ['Content-Type' => 'multipart/form-data; boundary=xx'],
                   body => "--xx\r\n\r\nwhisper\r\n--xx--\r\n");
        check_openai_error($res, 400, 'invalid_request', 'a part without headers: 400');
        $res = req($broker, path => '/v1/audio/transcriptions',
                   headers => ['Content-Type' => 'multipart/form-data; boundary=xx'],
                   body => "--yy\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--yy--\r\n");
        check_openai_error($res, 400, 'invalid_request', 'a body that lies about its boundary: 400');
        $res = req($broker, path => '/v1/audio/speech', json => { model => 'gpt-4o', input => 'x' });
        check_openai_error($res, 404, 'model_not_found', 'an unknown model: 404');
        is($mock->count, $n, 'none of them reached the provider');
};

done_testing;
