#!/usr/bin/perl
# Real provider answers, replayed: every capture in ../shared/transcripts
# (responses recorded from the real OpenAI and Anthropic APIs, JSON and SSE,
# errors included; see its README) is served by the mock as it was captured,
# through the real keybrokerd; what the broker journals for the call must be
# exactly what the provider reported (its "expect": input, output, cached,
# cache-write and reasoning tokens), and the app must get the provider's
# status and bytes. The captures are read at run time, never copied here.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

my $dir = $ENV{KB_TRANSCRIPTS} // "$FindBin::Bin/../../../shared/transcripts";
my @files = sort glob("$dir/*.json");
plan skip_all => "no transcripts in $dir (set KB_TRANSCRIPTS)" unless @files;

ensure_journald();
my %keys = ('oai-key' => fixture_secret('oai'), 'anth-key' => fixture_secret('anth'));
my $mock = start_mock(require_key => [values %keys], replay_dir => $dir);
my $cfg = standard_config(mock => $mock);
# No fail-over on a captured error: the app must see it as the provider sent it.
$cfg->{"route:$_"}{retry_on} = 'none' for qw(oai anth);
$cfg->{'team:ops'}{models} = '*';
my $broker = start_broker(config => $cfg, keys => \%keys);

my %path = (chat => '/v1/chat/completions', responses => '/v1/responses', embeddings => '/v1/embeddings',
            messages => '/v1/messages');
my %model = (chat => 'gpt-mini', responses => 'gpt-mini', embeddings => 'emb', messages => 'claude-haiku');

for my $file (@files) {
        my $t = json_decode(slurp($file)) or next;
        my ($name) = $file =~ m{([^/]+)\.json$};
        subtest $name => sub {
                my $ep = $t->{endpoint};
                plan skip_all => "endpoint $ep is not forwarded yet" unless $path{$ep};
                my $body = { model => $model{$ep} };
                $body->{stream} = JSON::PP::true if $t->{stream};
                # asked by the app itself, so the broker hides no usage chunk
                $body->{stream_options} = { include_usage => JSON::PP::true } if $t->{stream} && $ep eq 'chat';
                if ($ep eq 'embeddings') {
                        $body->{input} = 'hi';
                } elsif ($ep eq 'responses') {
                        $body->{input} = 'hi';
                } else {
                        $body->{messages} = [{ role => 'user', content => 'hi' }];
                        $body->{max_tokens} = 1000 if $ep eq 'messages';
                }
                my @h = ('x-mock-replay' => $name);
                push @h, 'anthropic-version' => '2023-06-01' if $t->{family} eq 'anthropic';
                my $res = req($broker, path => $path{$ep}, json => $body, headers => \@h);
                is($res->{status}, $t->{status}, "the app gets the provider's status $t->{status}")
                        or diag(KB::show_res($res));
                if ($t->{status} == 200) {
                        my $got = $res->{body} // '';
                        my $want = $t->{body};
                        utf8::encode($want) if utf8::is_utf8($want);
                        if ($t->{stream}) {
                                # The broker may end a cut event; every event the
                                # provider sent reaches the app unchanged.
                                my @want = grep { /\S/ } split /\r?\n\r?\n/, $want;
                                my @gotev = grep { /\S/ } split /\r?\n\r?\n/, $got;
                                is(scalar(@gotev), scalar(@want), 'every event reached the app');
                        } else {
                                is($got, $want, 'the body, byte for byte');
                        }
                }
                my $rec = journal_request($res->{headers}{'x-keybroker-request-id'});
                my $e = $t->{expect};
                is($rec->{KEYBROKER_INPUT_TOKENS} // 0, $e->{input}, "input tokens: $e->{input}");
                is($rec->{KEYBROKER_OUTPUT_TOKENS} // 0, $e->{output}, "output tokens: $e->{output}");
                is($rec->{KEYBROKER_CACHED_TOKENS} // 0, $e->{cached}, "cached tokens: $e->{cached}");
                is($rec->{KEYBROKER_CACHE_WRITE_TOKENS} // 0, $e->{cache_write}, "cache-write tokens: $e->{cache_write}");
                is($rec->{KEYBROKER_REASONING_TOKENS} // 0, $e->{reasoning}, "reasoning tokens: $e->{reasoning}");
                is($rec->{KEYBROKER_UPSTREAM_STATUS}, $t->{status}, 'journaled with the upstream status')
                        if exists $rec->{KEYBROKER_UPSTREAM_STATUS};
        };
}

done_testing;
