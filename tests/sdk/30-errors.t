#!/usr/bin/perl
# The broker's own errors as each official SDK surfaces them: a quota 429
# becomes RateLimitError (status 429, the broker's error shape, retry-after
# on err.headers); the SDK's built-in retry honours the broker's retry-after
# for max_concurrent and then succeeds (the journal shows the refused attempt,
# then the ok one); an unknown model becomes NotFoundError. Last, the same
# SDK script run as another uid lands in that uid's team.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/../integration/lib", "$FindBin::Bin/lib";
use Test::More;
use KB;
use SDK;

my ($mock, $broker, $keys) = sdk_setup(config => sub ($cfg) {
        # Named after "ops" so ops stays the default team of uid 0.
        $cfg->{"team:$_"} = { users => '0', models => '*', requests_per_minute => 1 } for qw(rl rlanth);
        $cfg->{"team:$_"} = { users => '0', models => '*', max_concurrent => 1 } for qw(single singleanth);
        $cfg->{"team:$_"} = { users => '0', models => '*', tokens_per_day => 120 } for qw(tpd tpdanth);
});
my %keys = %$keys;

my %SDK = (
        openai => { family => 'openai', model => 'gpt-mini', up => 'gpt-4o-mini-2024-07-18', route => 'oai',
                    path => '/v1/chat/completions', key => $keys{'oai-key'} },
        anthropic => { family => 'anthropic', model => 'claude-haiku', up => 'claude-3-5-haiku-20241022',
                       route => 'anth', path => '/v1/messages', key => $keys{'anth-key'} },
);

# The broker's error body as the SDK exposes it: err.error is the "error"
# object for openai, the whole body for anthropic.
sub check_sdk_error($sdk, $err, $code, $type) {
        my $t = $type->{$sdk};
        if ($sdk eq 'openai') {
                is($err->{code}, $code, "err.code $code");
                is($err->{type}, $t, "err.type $t");
                like($err->{error}{message} // '', qr/\S/, 'err.error.message');
        } else {
                is($err->{error}{type}, 'error', 'err.error.type "error"');
                is($err->{type}, $t, "err.type $t");
                like($err->{error}{error}{message} // '', qr/^\Q$code\E: \S/, "message starts '$code: '");
        }
        like($err->{headers}{'x-keybroker-request-id'} // '', qr/^[0-9a-f]{32}$/,
             'x-keybroker-request-id on err.headers');
}

for my $sdk (qw(openai anthropic)) {
        my $s = $SDK{$sdk};
        my $team = $sdk eq 'openai' ? 'rl' : 'rlanth';

        subtest "$sdk: quota 429 is RateLimitError (maxRetries 0)" => sub {
                my $before = $mock->count;
                my $j = sdk_run($broker, $sdk, 'rate_limited', team => $team);
                sdk_ok($j, 'first call ok, second refused') or return;
                my $r = $j->{result};
                my $e = $r->{error};
                is($e->{name}, 'RateLimitError', 'error class RateLimitError');
                ok($r->{is_rate_limit_error}, "instanceof the SDK's RateLimitError");
                ok($r->{is_api_error}, 'instanceof APIError');
                is($e->{status}, 429, 'err.status 429');
                check_sdk_error($sdk, $e, 'quota_exceeded', { openai => 'rate_limit_error', anthropic => 'rate_limit_error' });
                my $msg = $sdk eq 'openai' ? $e->{error}{message} : $e->{error}{error}{message};
                like($msg // '', qr/team '\Q$team\E' is over its requests_per_minute limit: 1 used of 1/,
                     "the broker's message names team and limit");
                my $ra = $e->{headers}{'retry-after'};
                like($ra // '', qr/^\d+$/, 'retry-after on err.headers, whole seconds');
                ok(defined $ra && $ra >= 1 && $ra <= 61, 'retry-after within the minute window') or diag("retry-after: " . ($ra // 'absent'));
                is($e->{headers}{'x-keybroker-team'}, $team, 'x-keybroker-team on err.headers');
                is($e->{headers}{'x-ratelimit-remaining-requests'}, '0', 'x-ratelimit-remaining-requests 0');
                my @calls = @{$j->{calls}};
                is(scalar @calls, 2, 'two HTTP calls: no retry with maxRetries 0');
                is($calls[1]{status}, 429, 'second HTTP call 429');
                is($mock->count - $before, 1, 'the provider got only the first');
                check_call_record($calls[0], { KEYBROKER_TEAM => $team, KEYBROKER_OUTCOME => 'ok', KEYBROKER_STATUS => 200 },
                                  'journal: the first call ok');
                check_call_record($calls[1], { KEYBROKER_TEAM => $team, KEYBROKER_OUTCOME => 'quota_rejected',
                                               KEYBROKER_STATUS => 429, KEYBROKER_MODEL => $s->{model},
                                               KEYBROKER_PEER_PID => "$j->{pid}", KEYBROKER_OUTPUT_TOKENS => qr/^0?$/ },
                                  'journal: the second quota_rejected');
        };

        subtest "$sdk: the SDK's retry honours retry-after (max_concurrent 1)" => sub {
                my $team1 = $sdk eq 'openai' ? 'single' : 'singleanth';
                my $before = $mock->count;
                my $j = sdk_run($broker, $sdk, 'retry_after', team => $team1, env => { KB_HOLD_MS => 800 });
                sdk_ok($j, 'the retried call succeeded') or return;
                my $r = $j->{result};
                is($r->{hold}{ok}, JSON::PP::true, 'the call holding the slot succeeded') or diag(explain($r->{hold}));
                is($r->{attempts}, 2, 'two attempts: 429, then 200');
                my @c = @{$j->{calls}};
                is(scalar @c, 3, 'three HTTP calls in all (hold, refused, retried)') or return diag(explain(\@c));
                my ($hold, $no, $yes) = @c;
                is($hold->{status}, 200, 'hold: 200');
                is($no->{status}, 429, 'first attempt: 429');
                is($yes->{status}, 200, 'retry: 200');
                my $ra = $no->{headers}{'retry-after'};
                is($ra, '1', 'the broker says retry-after: 1 for max_concurrent');
                my $waited = $yes->{sent_ms} - $no->{head_ms};
                cmp_ok($waited, '>=', 1000 * ($ra // 1) - 5, "the SDK waited retry-after before retrying (${waited} ms)");
                cmp_ok($waited, '<', 1000 * ($ra // 1) + 1500, '... and not much longer');
                cmp_ok($r->{hold}{at_ms}, '>', $no->{head_ms}, 'the slot was still held when the 429 came');
                cmp_ok($r->{hold}{at_ms}, '<', $yes->{sent_ms}, '... and free when the retry went out');
                is($no->{request_headers}{'x-stainless-retry-count'}, '0', 'first attempt: x-stainless-retry-count 0');
                is($yes->{request_headers}{'x-stainless-retry-count'}, '1', 'retry: x-stainless-retry-count 1');
                is($mock->count - $before, 2, 'the provider got the hold and the retry, not the refused attempt');
                check_provider($mock, $yes, family => $s->{family}, key => $s->{key}, path => $s->{path},
                               upstream_model => $s->{up}, more => sub ($e, $b) {
                        is($e->{headers}{'x-stainless-retry-count'}, '1', 'the provider saw the retry count');
                });
                my $rej = check_call_record($no, { KEYBROKER_TEAM => $team1, KEYBROKER_OUTCOME => 'quota_rejected',
                                                   KEYBROKER_STATUS => 429, KEYBROKER_PEER_PID => "$j->{pid}" },
                                            'journal: the refused attempt');
                my $ok = check_call_record($yes, { KEYBROKER_TEAM => $team1, KEYBROKER_OUTCOME => 'ok',
                                                   KEYBROKER_STATUS => 200, KEYBROKER_ROUTE => $s->{route},
                                                   KEYBROKER_INPUT_TOKENS => 11, KEYBROKER_OUTPUT_TOKENS => 7,
                                                   KEYBROKER_PEER_PID => "$j->{pid}" },
                                           'journal: the retried call');
                ok($rej && $ok && $rej->{__REALTIME_TIMESTAMP} < $ok->{__REALTIME_TIMESTAMP},
                   'journal: quota_rejected before ok');
                my $usec = $rej && $ok ? $ok->{__REALTIME_TIMESTAMP} - $rej->{__REALTIME_TIMESTAMP} : 0;
                cmp_ok($usec, '>=', 1_000_000 - 50_000, 'about retry-after apart in the journal');
        };

        # Most apps keep the SDKs' default maxRetries (2), and both SDKs sleep
        # for whatever retry-after says (openai 6.x: no cap; anthropic 1.x: up
        # to 2^31 ms) unless the answer says x-should-retry: false.
        subtest "$sdk: a spent tokens_per_day fails fast with default retries" => sub {
                my $team = $sdk eq 'openai' ? 'tpd' : 'tpdanth';
                my $j = sdk_run($broker, $sdk, 'quota_exhausted', team => $team, env => { KB_WATCH_MS => 5000 });
                sdk_ok($j, 'the case ran') or return;
                my $r = $j->{result};
                cmp_ok($r->{oks}, '>=', 3, "$r->{oks} calls fitted before the limit");
                my @c = @{$j->{calls}};
                my ($first) = grep { ($c[$_]{status} // 0) == 429 } 0 .. $#c;
                ok(defined $first, 'a call was refused') or return;
                my $no = $c[$first];
                check_call_record($no, { KEYBROKER_TEAM => $team, KEYBROKER_OUTCOME => 'quota_rejected',
                                         KEYBROKER_STATUS => 429 }, 'journal: quota_rejected');
                note("the broker's 429: retry-after " . ($no->{headers}{'retry-after'} // 'none')
                     . ', x-should-retry ' . ($no->{headers}{'x-should-retry'} // 'none'));
                is($no->{headers}{'x-should-retry'}, 'false', 'the 429 says x-should-retry: false');
                ok(!$r->{hung}, 'the SDK call returned within 5 s') or diag("still waiting after $r->{waited_ms} ms");
                is($r->{error} && $r->{error}{name}, 'RateLimitError', 'as RateLimitError');
                is(scalar(@c) - $first, 1, 'the SDK did not retry the refused call');
        };

        subtest "$sdk: unknown model is NotFoundError" => sub {
                my $before = $mock->count;
                my $j = sdk_run($broker, $sdk, 'not_found');
                sdk_ok($j, 'refused as expected') or return;
                my $e = $j->{result}{error};
                is($e->{name}, 'NotFoundError', 'error class NotFoundError');
                ok($j->{result}{is_not_found_error}, "instanceof the SDK's NotFoundError");
                is($e->{status}, 404, 'err.status 404');
                # As OpenAI itself: invalid_request_error with code model_not_found.
                check_sdk_error($sdk, $e, 'model_not_found',
                                { openai => 'invalid_request_error', anthropic => 'not_found_error' });
                is(scalar @{$j->{calls}}, 1, 'one HTTP call (a 404 is not retried)');
                is($mock->count, $before, 'the provider was not called');
                check_call_record($j->{calls}[0], { KEYBROKER_OUTCOME => 'model_not_found', KEYBROKER_STATUS => 404,
                                                    KEYBROKER_MODEL => 'no-such-model', KEYBROKER_TEAM => 'ops' },
                                  'journal: model_not_found');
        };
}

subtest 'the same SDK script as another uid (setpriv) lands in that uid\'s team' => sub {
        for my $sdk (qw(openai anthropic)) {
                my $s = $SDK{$sdk};
                my $j = sdk_run($broker, $sdk, $sdk eq 'openai' ? 'chat' : 'messages', uid => 1001, gid => 1001);
                sdk_ok($j, "$sdk as uid 1001") or next;
                my $c = $j->{calls}[0];
                is($c->{headers}{'x-keybroker-team'}, 'search', "$sdk: x-keybroker-team search");
                check_call_record($c, { KEYBROKER_TEAM => 'search', KEYBROKER_PEER_UID => 1001, KEYBROKER_PEER_GID => 1001,
                                        KEYBROKER_PEER_PID => "$j->{pid}", KEYBROKER_OUTCOME => 'ok',
                                        KEYBROKER_ROUTE => $s->{route} }, "$sdk: journal record of uid 1001");
                check_provider($mock, $c, family => $s->{family}, key => $s->{key}, path => $s->{path},
                               upstream_model => $s->{up});
        }
        my $j = sdk_run($broker, 'openai', 'embeddings', uid => 1001, gid => 1001);
        is($j && $j->{error} && $j->{error}{status}, 403, "team search may not use model emb: the SDK gets 403")
                or diag(explain($j && $j->{error}));
        is($j && $j->{error}{name}, 'PermissionDeniedError', 'as PermissionDeniedError');
        is($j && $j->{error}{code}, 'model_not_allowed', 'code model_not_allowed');
};

done_testing;
