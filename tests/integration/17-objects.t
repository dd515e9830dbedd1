#!/usr/bin/perl
# Provider objects and who may use them. Two teams share one provider
# account; each uploads files, makes batches, videos, stored responses and
# message batches through the broker. Another team's object (or one never
# seen) is answered 404 as the provider would, without reaching it; lists
# show the team's own objects only; a batch's tokens and a video's seconds
# are journaled once, priced with the batch and video prices; the table
# survives a restart; uploads stream (a 200 MB file moves the broker's RSS
# by less than 2 MB), oversize and stalled uploads are refused.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Digest::SHA qw(sha256_hex);
use KB;

ensure_journald();
my $oai_key = fixture_secret('oai');
my $anth_key = fixture_secret('anth');
my $mock = start_mock(require_key => [$oai_key, $anth_key]);
my $cfg = standard_config(mock => $mock);
$cfg->{'route:oai'}{price} = [
        'gpt-4o-mini-2024-07-18 input=1 output=2 batch_input=0.5 batch_output=1',
        'sora-2 video_second=0.1',
];
$cfg->{'model:sora'} = { target => 'oai sora-2' };
$cfg->{'team:search'}{default_route} = ['oai', 'anth'];
$cfg->{'team:tiny'} = { users => '1002', models => 'gpt-mini', tokens_per_minute => 100 };
my $broker = start_broker(config => $cfg, keys => { 'oai-key' => $oai_key, 'anth-key' => $anth_key });
my $tmp = tmpdir('objects');
my @SEARCH = (uid => 1001, gid => 2001);

sub record($res) {
        my $rid = $res->{headers}{'x-keybroker-request-id'};
        ok($rid, 'the answer names its request id') or return undef;
        return journal_request($rid);
}

# 404 as Anthropic says an id it does not know.
sub anthropic_not_found($res, $name) {
        subtest $name => sub {
                is($res->{status}, 404, 'status 404') or diag(KB::show_res($res));
                is($res->{json}{type}, 'error', 'type error');
                is($res->{json}{error}{type}, 'not_found_error', 'error.type not_found_error');
        };
}

sub upload($who, $path, %o) {
        return req($broker, method => 'POST', path => '/v1/files', @$who,
                   curl => ['-F', "purpose=" . ($o{purpose} // 'batch'), '-F', "file=\@$path"],
                   headers => $o{headers} // []);
}

my $jsonl = "$tmp/input.jsonl";
KB::spew($jsonl, join('', map { KB::json_encode({ custom_id => "r$_", method => 'POST', url => '/v1/chat/completions',
                                                  body => { model => 'gpt-4o-mini-2024-07-18', messages => [] } }) . "\n" } 1 .. 2));
my ($ops_file, $search_file);

subtest 'files: made by one team, invisible to the other' => sub {
        my $res = upload([], $jsonl);
        is($res->{status}, 200, 'ops uploads a file') or return diag(KB::show_res($res));
        $ops_file = $res->{json}{id};
        like($ops_file // '', qr/^file-/, 'the provider\'s file id');
        is($res->{json}{bytes}, -s $jsonl, 'the provider got every byte');
        my $rec = record($res);
        check_fields($rec, { KEYBROKER_ENDPOINT => 'files', KEYBROKER_TEAM => 'ops', KEYBROKER_OBJECT_ID => $ops_file,
                             KEYBROKER_ROUTE => 'oai' }, 'the record names the object');

        $res = upload(\@SEARCH, $jsonl);
        is($res->{status}, 200, 'search uploads its own') or return diag(KB::show_res($res));
        $search_file = $res->{json}{id};

        $res = req($broker, path => "/v1/files/$ops_file");
        is($res->{status}, 200, 'ops retrieves its file');
        is($res->{json}{id}, $ops_file, 'the object');
        $res = req($broker, path => "/v1/files/$ops_file/content");
        is($res->{status}, 200, 'ops downloads its content');
        is($res->{body}, KB::slurp($jsonl), 'byte for byte');

        my $n = $mock->count;
        for my $p ("/v1/files/$ops_file", "/v1/files/$ops_file/content") {
                $res = req($broker, path => $p, @SEARCH);
                check_openai_error($res, 404, undef, "search may not read $p: 404");
                is($res->{json}{error}{param}, 'id', 'as the provider says an unknown id');
                like($res->{json}{error}{message} // '', qr/\Q$ops_file\E/, 'naming the id');
        }
        $res = req($broker, method => 'DELETE', path => "/v1/files/$ops_file", @SEARCH);
        is($res->{status}, 404, 'nor delete it');
        $res = req($broker, path => '/v1/files/file-neverseen', @SEARCH);
        is($res->{status}, 404, 'an id never seen: 404');
        is($mock->count, $n, 'none of these reached the provider');
        $rec = record($res);
        check_fields($rec, { KEYBROKER_STATUS => 404, KEYBROKER_OBJECT_ID => 'file-neverseen' }, 'journaled');

        $res = req($broker, path => '/v1/files');
        is($res->{status}, 200, 'ops lists files');
        is_deeply([map { $_->{id} } @{$res->{json}{data}}], [$ops_file], 'ops sees its own file only');
        is($res->{json}{first_id}, $ops_file, 'first_id follows the filter');
        $res = req($broker, path => '/v1/files?limit=100', @SEARCH);
        is_deeply([map { $_->{id} } @{$res->{json}{data}}], [$search_file], 'search sees its own only');
        is($mock->last_entry->{query}, 'limit=100', 'the query string reaches the provider');
};

subtest 'batches: from the team\'s own file, usage journaled once at completion' => sub {
        my $res = req($broker, path => '/v1/batches', @SEARCH,
                      json => { input_file_id => $ops_file, endpoint => '/v1/chat/completions', completion_window => '24h' });
        check_openai_error($res, 404, undef, 'a batch from another team\'s file: 404');

        $res = req($broker, path => '/v1/batches', headers => ['x-mock-input-tokens' => 1000, 'x-mock-output-tokens' => 500],
                   json => { input_file_id => $ops_file, endpoint => '/v1/chat/completions', completion_window => '24h' });
        is($res->{status}, 200, 'ops makes a batch') or return diag(KB::show_res($res));
        my $batch = $res->{json}{id};
        like($batch // '', qr/^batch_/, 'batch id');
        my $rec = record($res);
        check_fields($rec, { KEYBROKER_ENDPOINT => 'batches', KEYBROKER_OBJECT_ID => $batch, KEYBROKER_BATCH => 0,
                             KEYBROKER_INPUT_TOKENS => 0 }, 'create: nothing billed yet');

        $res = req($broker, path => "/v1/batches/$batch", @SEARCH);
        is($res->{status}, 404, 'search cannot see it');
        my ($done, $billed);
        for my $i (1 .. 5) {
                $res = req($broker, path => "/v1/batches/$batch");
                is($res->{status}, 200, "retrieve $i");
                $rec = record($res);
                if (($res->{json}{status} // '') eq 'completed' && !$done) {
                        $done = $i;
                        # 2 requests * 1000 in / 500 out at 0.5 / 1 per 1M = 2000 micro-USD
                        check_fields($rec, { KEYBROKER_BATCH => 1, KEYBROKER_INPUT_TOKENS => 2000,
                                             KEYBROKER_OUTPUT_TOKENS => 1000, KEYBROKER_COST_MICROUSD => 2000,
                                             KEYBROKER_UPSTREAM_MODEL => 'gpt-4o-mini-2024-07-18' },
                                     'the retrieve that first sees it completed carries its usage');
                } elsif ($done) {
                        check_fields($rec, { KEYBROKER_BATCH => 0, KEYBROKER_INPUT_TOKENS => 0,
                                             KEYBROKER_COST_MICROUSD => 0 }, "retrieve $i after: nothing again");
                        $billed++;
                }
        }
        ok($done && $billed, 'completed, and retrieved again after');
        my $out = $res->{json}{output_file_id};
        like($out // '', qr/^file-/, 'the batch names its output file');
        $res = req($broker, path => "/v1/files/$out/content");
        is($res->{status}, 200, 'the output file is the batch\'s team\'s');
        like($res->{body}, qr/"custom_id":"r1"/, 'its results');
        is(req($broker, path => "/v1/files/$out/content", @SEARCH)->{status}, 404, 'and no other team\'s');
        $res = req($broker, path => '/v1/batches');
        is_deeply([map { $_->{id} } @{$res->{json}{data}}], [$batch], 'ops lists its batch');
        $res = req($broker, path => '/v1/batches', @SEARCH);
        is_deeply($res->{json}{data}, [], 'search lists none');
};

subtest 'a batch file is read as it is uploaded: its models and size are checked at create' => sub {
        my $big = "$tmp/big-model.jsonl";
        KB::spew($big, KB::json_encode({ custom_id => 'x', method => 'POST', url => '/v1/chat/completions',
                                         body => { model => 'gpt-4o-2024-08-06', messages => [] } }) . "\n");
        my $res = upload(\@SEARCH, $big);
        is($res->{status}, 200, 'search uploads a file asking for gpt-4o') or return diag(KB::show_res($res));
        my $f = $res->{json}{id};
        my $n = $mock->count;
        $res = req($broker, path => '/v1/batches', @SEARCH,
                   json => { input_file_id => $f, endpoint => '/v1/chat/completions', completion_window => '24h' });
        check_openai_error($res, 403, 'model_not_allowed', 'a batch asking for a model the team may not use: 403');
        like($res->{json}{error}{message} // '', qr/gpt-4o-2024-08-06/, 'naming the model');
        is($mock->count, $n, 'the provider never saw the batch');

        # The upstream name of a model the team may use is fine (gpt-mini -> gpt-4o-mini-2024-07-18).
        $res = req($broker, path => '/v1/batches', @SEARCH,
                   json => { input_file_id => $search_file, endpoint => '/v1/chat/completions', completion_window => '24h' });
        is($res->{status}, 200, 'a batch asking for the upstream model of an allowed one');

        my $lines = "$tmp/many.jsonl";
        KB::spew($lines, join('', map { KB::json_encode({ custom_id => "l$_", method => 'POST', url => '/v1/chat/completions',
                                        body => { model => 'gpt-4o-mini-2024-07-18', messages => [{ role => 'user', content => 'x' x 40 }] } }) . "\n" } 1 .. 10));
        my @TINY = (uid => 1002, gid => 1002);
        $res = upload(\@TINY, $lines);
        is($res->{status}, 200, 'a team with tokens_per_minute = 100 uploads a 1.5 KB batch file');
        $res = req($broker, path => '/v1/batches', @TINY,
                   json => { input_file_id => $res->{json}{id}, endpoint => '/v1/chat/completions', completion_window => '24h' });
        check_openai_error($res, 429, 'quota_exceeded', 'what the file asks is more than the team\'s whole limit: 429 at create');

        my $junk = "$tmp/junk.bin";
        KB::spew($junk, "not json\n\x00\x01");
        $res = upload(\@SEARCH, $junk);
        $res = req($broker, path => '/v1/batches', @SEARCH,
                   json => { input_file_id => $res->{json}{id}, endpoint => '/v1/chat/completions', completion_window => '24h' });
        is($res->{status}, 200, 'a file the broker cannot read is not judged (the provider is)');
};

subtest 'videos: billed per second once, when first seen completed' => sub {
        my $res = req($broker, path => '/v1/videos', json => { model => 'sora', prompt => 'a cat', seconds => '8' });
        is($res->{status}, 200, 'create') or return diag(KB::show_res($res));
        my $video = $res->{json}{id};
        is(KB::Mock::body_json($mock->entry_for($res))->{model}, 'sora-2', 'model rewritten');
        my @secs;
        for (1 .. 4) {
                $res = req($broker, path => "/v1/videos/$video");
                push @secs, record($res)->{KEYBROKER_VIDEO_SECONDS};
        }
        is_deeply([grep { $_ } @secs], [8], 'eight seconds journaled once') or diag("@secs");
        $res = req($broker, path => "/v1/videos/$video/content");
        is($res->{status}, 200, 'content');
        like($res->{headers}{'content-type'} // '', qr{^video/mp4}, 'video/mp4 relayed');
        $res = req($broker, path => "/v1/videos/$video/content", @SEARCH);
        is($res->{status}, 404, 'not for another team');
        $res = req($broker, method => 'DELETE', path => "/v1/videos/$video");
        is($res->{status}, 200, 'deleted');
        $res = req($broker, path => "/v1/videos/$video");
        is($res->{status}, 404, 'gone from the table too');
};

subtest 'stored responses' => sub {
        my $res = req($broker, path => '/v1/responses', json => { model => 'gpt-mini', input => 'hello' });
        is($res->{status}, 200, 'made') or return diag(KB::show_res($res));
        my $id = $res->{json}{id};
        $res = req($broker, path => "/v1/responses/$id", @SEARCH);
        check_openai_error($res, 404, undef, 'another team: 404');
        $res = req($broker, path => "/v1/responses/$id");
        is($res->{status}, 200, 'the owner reads it');
        my $rec = record($res);
        check_fields($rec, { KEYBROKER_ENDPOINT => 'responses_get', KEYBROKER_INPUT_TOKENS => 0,
                             KEYBROKER_COST_MICROUSD => 0 }, 'reading it again is not billed again');
        $res = req($broker, path => "/v1/responses/$id/input_items");
        is($res->{status}, 200, 'input items');
        $res = req($broker, method => 'DELETE', path => "/v1/responses/$id");
        is($res->{status}, 200, 'deleted');
        $res = req($broker, path => "/v1/responses/$id");
        is($res->{status}, 404, 'then unknown');
};

subtest 'Anthropic: message batches and files' => sub {
        my $body = { requests => [{ custom_id => 'a', params => { model => 'claude-3-opus', max_tokens => 5,
                                                                  messages => [{ role => 'user', content => 'x' }] } }] };
        my $res = req($broker, path => '/v1/messages/batches', @SEARCH, json => $body,
                      headers => ['anthropic-version' => '2023-06-01']);
        check_anthropic_error($res, 403, 'model_not_allowed', 'a batch asking for a model the team may not use: 403');
        $body->{requests}[0]{params}{model} = 'claude-haiku';
        $res = req($broker, path => '/v1/messages/batches', @SEARCH, json => $body,
                   headers => ['anthropic-version' => '2023-06-01']);
        is($res->{status}, 200, 'made') or return diag(KB::show_res($res));
        my $id = $res->{json}{id};
        $res = req($broker, path => "/v1/messages/batches/$id", headers => ['anthropic-version' => '2023-06-01']);
        anthropic_not_found($res, 'another team: 404 in the Anthropic shape');
        my $st = '';
        for (1 .. 3) {
                $res = req($broker, path => "/v1/messages/batches/$id", @SEARCH,
                           headers => ['anthropic-version' => '2023-06-01']);
                $st = $res->{json}{processing_status} // '';
                last if $st eq 'ended';
        }
        is($st, 'ended', 'ended');
        $res = req($broker, path => "/v1/messages/batches/$id/results", @SEARCH,
                   headers => ['anthropic-version' => '2023-06-01']);
        is($res->{status}, 200, 'results');
        like($res->{body}, qr/"custom_id":"a"/, 'the results lines');
        my $rec = record($res);
        check_fields($rec, { KEYBROKER_ENDPOINT => 'message_batches', KEYBROKER_BATCH => 1, KEYBROKER_INPUT_TOKENS => 11,
                             KEYBROKER_OUTPUT_TOKENS => 7, KEYBROKER_OBJECT_ID => $id },
                     'the results carry the batch\'s usage, summed from its lines');
        $res = req($broker, path => "/v1/messages/batches/$id/results", @SEARCH,
                   headers => ['anthropic-version' => '2023-06-01']);
        check_fields(record($res), { KEYBROKER_BATCH => 0, KEYBROKER_INPUT_TOKENS => 0 }, 'billed once');

        my $txt = "$tmp/notes.txt";
        KB::spew($txt, "notes\n");
        $res = upload(\@SEARCH, $txt, headers => ['anthropic-version' => '2023-06-01', 'anthropic-beta' => 'files-api-2025-04-14']);
        is($res->{status}, 200, 'an Anthropic file') or return diag(KB::show_res($res));
        my $f = $res->{json}{id};
        is($mock->entry_for($res)->{headers}{'x-api-key'}, $anth_key, 'through the Anthropic route and its key');
        $res = req($broker, path => "/v1/files/$f", headers => ['anthropic-version' => '2023-06-01']);
        anthropic_not_found($res, 'another team: 404');
        $res = req($broker, path => '/v1/files', @SEARCH, headers => ['anthropic-version' => '2023-06-01']);
        is_deeply([map { $_->{id} } @{$res->{json}{data}}], [$f], 'its own Anthropic files listed');
};

subtest 'a batch no app retrieves is billed by the background poll' => sub {
        my $c2 = { %$cfg, agent => { batch_poll => '1s' } };
        my $poller = start_broker(config => $c2, keys => { 'oai-key' => $oai_key, 'anth-key' => $anth_key });
        my $res = upload([], $jsonl);
        $res = req($poller, method => 'POST', path => '/v1/files', curl => ['-F', 'purpose=batch', '-F', "file=\@$jsonl"]);
        my $file = $res->{json}{id};
        $res = req($poller, path => '/v1/batches', headers => ['x-mock-input-tokens' => 100, 'x-mock-output-tokens' => 50],
                   json => { input_file_id => $file, endpoint => '/v1/chat/completions', completion_window => '24h' });
        is($res->{status}, 200, 'a batch made') or return diag(KB::show_res($res));
        my $batch = $res->{json}{id};
        my ($rec) = $poller->journal_wait({ KEYBROKER_OBJECT_ID => $batch, KEYBROKER_BATCH => 1 }, 20);
        ok($rec, 'its usage record came without any app asking') or return;
        check_fields($rec, { KEYBROKER_TEAM => 'ops', KEYBROKER_INPUT_TOKENS => 200, KEYBROKER_OUTPUT_TOKENS => 100,
                             KEYBROKER_COST_MICROUSD => 200, KEYBROKER_PEER_UID => '', KEYBROKER_ENDPOINT => 'batches',
                             KEYBROKER_KEY => qr/^oai-key\@\d+$/ }, 'billed once, as the broker\'s own call');
        sleep 2.5;
        my @all = $poller->journal({ KEYBROKER_OBJECT_ID => $batch, KEYBROKER_BATCH => 1 });
        is(scalar @all, 1, 'and only once');
        $res = req($poller, path => "/v1/batches/$batch");
        is(record($res)->{KEYBROKER_BATCH}, 0, 'an app\'s retrieve after it bills nothing');

        # An Anthropic message batch: ended, its results fetched and summed by the poll.
        my $body = { requests => [map { { custom_id => "m$_", params => { model => 'claude-haiku', max_tokens => 5,
                                                                          messages => [{ role => 'user', content => 'x' }] } } } 1 .. 3] };
        $res = req($poller, path => '/v1/messages/batches', @SEARCH, json => $body,
                   headers => ['anthropic-version' => '2023-06-01']);
        is($res->{status}, 200, 'a message batch made') or return diag(KB::show_res($res));
        my $mb = $res->{json}{id};
        ($rec) = $poller->journal_wait({ KEYBROKER_OBJECT_ID => $mb, KEYBROKER_BATCH => 1 }, 20);
        ok($rec, 'its usage record came from the poll') or return;
        check_fields($rec, { KEYBROKER_TEAM => 'search', KEYBROKER_ENDPOINT => 'message_batches',
                             KEYBROKER_INPUT_TOKENS => 33, KEYBROKER_OUTPUT_TOKENS => 21, KEYBROKER_PEER_UID => '' },
                     'the three requests\' usage, summed from the results');
        $res = req($poller, path => "/v1/messages/batches/$mb/results", @SEARCH,
                   headers => ['anthropic-version' => '2023-06-01']);
        is(record($res)->{KEYBROKER_BATCH}, 0, 'an app downloading the results after it bills nothing');
        $poller->stop;
};

subtest 'the table survives a restart' => sub {
        $broker->stop;
        $broker->respawn;
        my $res = req($broker, path => "/v1/files/$ops_file");
        is($res->{status}, 200, 'ops still reaches its file');
        $res = req($broker, path => "/v1/files/$ops_file", @SEARCH);
        is($res->{status}, 404, 'search still does not');
};

subtest 'a 200 MB upload streams: the broker\'s memory barely moves' => sub {
        my $big = "$tmp/big.bin";
        open(my $fh, '>', $big) or die;
        my $block = join('', map { chr(($_ * 131 + 7) % 256) } 0 .. 65535);
        print $fh $block for 1 .. 3052;
        close $fh;
        my $size = -s $big;
        my $rss0 = KB::proc_rss_kb($broker->pid);
        KB::reset_hwm($broker->pid);
        my $res = upload([], $big, purpose => 'user_data');
        is($res->{status}, 200, '200') or return diag(KB::show_res($res));
        is($res->{json}{bytes}, $size, 'the provider got all of it');
        my %parts = map { $_->{name} => $_ } @{$mock->entry_for($res)->{parts} // []};
        my $sha = Digest::SHA->new(256);
        $sha->addfile($big);
        is($parts{file}{sha256}, $sha->hexdigest, 'byte for byte');
        my $hwm = KB::proc_hwm_kb($broker->pid);
        my $grew = $hwm - $rss0;
        ok($grew < 2048, "RSS high-water mark grew by $grew KiB (< 2 MiB)") unless KB::under_memory_tool($broker->pid);
        unlink $big;
};

subtest 'oversize and stalled uploads' => sub {
        my $c2 = { %$cfg, agent => { max_upload_body => '64K', header_timeout => '1s' } };
        my $small = start_broker(config => $c2, keys => { 'oai-key' => $oai_key, 'anth-key' => $anth_key });
        my $f = "$tmp/100k.bin";
        KB::spew($f, 'z' x 100000);
        my $n = $mock->count;
        my $res = req($small, method => 'POST', path => '/v1/files', curl => ['-F', 'purpose=batch', '-F', "file=\@$f"]);
        check_openai_error($res, 413, 'request_too_large', 'over max_upload_body: 413');

        my $raw = KB::raw_connect($small);
        my $form = "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\nsome bytes";
        $raw->send("POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                   . "Content-Length: 60000\r\n\r\n$form");
        my $r = $raw->read_response(timeout => 10);
        ok($r, 'an answer to the stalled upload') or return;
        is($r->{status}, 408, 'a stalled upload: 408');
        like($r->{body}, qr/stalled/, 'says why');
        is($mock->count, $n, 'neither reached the provider');
        $small->stop;
};

done_testing;
