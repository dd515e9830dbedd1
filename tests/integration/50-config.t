#!/usr/bin/perl
# keybrokerd's command line and config validation: --check-config accepts a
# good file and rejects each kind of bad one with "FILE:LINE: problem" and
# exit 1; the daemon refuses to start on a bad file the same way.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

my $D = tmpdir('config');
mkdir "$D/creds" or die;
spew("$D/creds/oai-key", fixture_secret('oai') . "\n", 0600);

my $GOOD = <<"EOF";
# keybroker test config
[agent]
listen = $D/api.sock
listen_mode = 0666
admin = $D/admin.sock
credentials_dir = $D/creds
keystore = $D/keys.sealed
state_dir = $D/state
max_request_body = 1M
header_timeout = 5s

[team:search]
users = 1001
groups = 2001
models = gpt-mini
requests_per_minute = 60

[route:oai]
family = openai
base_url = http://127.0.0.1:9/v1
key = oai-key
auth = bearer
timeout = 30s

[model:gpt-mini]
target = oai gpt-4o-mini weight=3
EOF

my $n = 0;
sub check_config($text) {
        my $f = "$D/case" . ++$n . '.conf';
        spew($f, $text);
        return ($f, run_cmd([$KB::KEYBROKERD, '--check-config', '--config', $f], timeout => 10));
}

# Line (1-based) of the first line matching $re.
sub line_of($text, $re) {
        my @l = split /\n/, $text;
        for my $i (0 .. $#l) { return $i + 1 if $l[$i] =~ $re }
        die "no line matches $re";
}

sub replace_line($text, $re, $new) {
        my @l = split /\n/, $text;
        my $i = line_of($text, $re) - 1;
        $l[$i] = $new;
        return join("\n", @l) . "\n";
}

sub insert_after($text, $re, $new) {
        my @l = split /\n/, $text;
        my $i = line_of($text, $re);
        splice(@l, $i, 0, $new);
        return join("\n", @l) . "\n";
}

# A bad config: exit 1, "FILE:LINE: " on stderr with the line of $mark
# (a regexp for the offending line, or a list of acceptable line numbers),
# and the message matching $msg.
sub rejects($name, $text, $mark, $msg) {
        subtest $name => sub {
                my ($f, $r) = check_config($text);
                is($r->{exit}, 1, 'exit 1') or diag("stdout: $r->{stdout}\nstderr: $r->{stderr}");
                my @lines = ref $mark eq 'ARRAY' ? @$mark : (line_of($text, $mark));
                my $alt = join('|', @lines);
                like($r->{stderr}, qr/^\Q$f\E:(?:$alt): \S/m, "stderr has $f:" . join(' or ', @lines) . ': …')
                        or KB::diag_lines('config', $text);
                like($r->{stderr}, $msg, 'message says what is wrong');
                unlike($r->{stdout} . $r->{stderr}, qr/: ok$/m, 'no "ok"');
        };
}

subtest 'a good config passes --check-config' => sub {
        my ($f, $r) = check_config($GOOD);
        is($r->{exit}, 0, 'exit 0') or diag("stderr: $r->{stderr}");
        like($r->{stdout} . $r->{stderr}, qr/^\Q$f\E: ok$/m, '"FILE: ok"');
        ok(!-e "$D/api.sock", '--check-config does not create the socket');
};

rejects('unknown section', insert_after($GOOD, qr/^timeout = 30s/, "\n[bogus]\nx = 1"),
        qr/^\[bogus\]/, qr/bogus/);
rejects('unknown section kind with a name', insert_after($GOOD, qr/^timeout = 30s/, "\n[widget:foo]"),
        qr/^\[widget:foo\]/, qr/widget/);
rejects('unknown key in [agent]', insert_after($GOOD, qr/^header_timeout/, 'listn = /tmp/x.sock'),
        qr/^listn/, qr/listn/);
rejects('unknown key in a route', insert_after($GOOD, qr/^auth = bearer/, 'basee_url = http://x/v1'),
        qr/^basee_url/, qr/basee_url/);
rejects('unknown key in a team', insert_after($GOOD, qr/^users = 1001/, 'tokens_per_hour = 5'),
        qr/^tokens_per_hour/, qr/tokens_per_hour/);
rejects('bad size', replace_line($GOOD, qr/^max_request_body/, 'max_request_body = 12Q'),
        qr/^max_request_body/, qr/max_request_body|12Q/);
rejects('bad duration', replace_line($GOOD, qr/^header_timeout/, 'header_timeout = 10 parsecs'),
        qr/^header_timeout/, qr/header_timeout|parsecs/);
rejects('bad mode', replace_line($GOOD, qr/^listen_mode/, 'listen_mode = 0999'),
        qr/^listen_mode/, qr/listen_mode|0999/);
rejects('bad family', replace_line($GOOD, qr/^family = openai/, 'family = cobol'),
        qr/^family = cobol/, qr/cobol|family/);
rejects('bad auth', replace_line($GOOD, qr/^auth = bearer/, 'auth = magic'),
        qr/^auth = magic/, qr/magic|auth/);
rejects('bad number', replace_line($GOOD, qr/^requests_per_minute/, 'requests_per_minute = lots'),
        qr/^requests_per_minute/, qr/requests_per_minute|lots/);
rejects('negative number', replace_line($GOOD, qr/^requests_per_minute/, 'requests_per_minute = -5'),
        qr/^requests_per_minute/, qr/requests_per_minute|-5/);
rejects('bad weight', replace_line($GOOD, qr/^target = /, 'target = oai gpt-4o-mini weight=abc'),
        qr/^target = /, qr/weight|abc/);
rejects('target names an unknown route', replace_line($GOOD, qr/^target = /, 'target = nosuch gpt-4o-mini'),
        qr/^target = /, qr/nosuch/);
rejects('fallback names an unknown route', insert_after($GOOD, qr/^target = /, 'fallback = ghost claude-x'),
        qr/^fallback = /, qr/ghost/);
rejects('team allows an unknown model', replace_line($GOOD, qr/^models = gpt-mini/, 'models = gpt-mini gpt-unicorn'),
        qr/^models = /, qr/gpt-unicorn/);
rejects('route key file missing', replace_line($GOOD, qr/^key = oai-key/, 'key = missing-key'),
        qr/^key = missing-key/, qr/missing-key/);
rejects('a line that is not key = value', insert_after($GOOD, qr/^\[team:search\]/, 'just some words'),
        qr/^just some words/, qr/\S/);
rejects('a key before any section', "listen = /tmp/x.sock\n$GOOD", [1], qr/listen|section/);
rejects('a single-valued key given twice', insert_after($GOOD, qr/^family = openai/, 'family = anthropic'),
        qr/^family = anthropic/, qr/family|twice/);
rejects('duplicate section', "$GOOD\n[route:oai]\nfamily = openai\nbase_url = http://127.0.0.1:9/v1\n",
        [scalar(split /\n/, $GOOD) + 2], qr/oai|duplicate/);
rejects('model without a target', "$GOOD\n[model:empty]\n", [scalar(split /\n/, $GOOD) + 2], qr/empty|target/);
rejects('team that matches nobody', "$GOOD\n[team:ghosts]\nmodels = gpt-mini\n",
        [scalar(split /\n/, $GOOD) + 2, scalar(split /\n/, $GOOD) + 3], qr/ghosts/);
rejects('route without base_url', replace_line($GOOD, qr/^base_url/, '# no base_url'),
        [line_of($GOOD, qr/^\[route:oai\]/), line_of($GOOD, qr/^base_url/)], qr/base_url/);

subtest 'a missing config file' => sub {
        my $r = run_cmd([$KB::KEYBROKERD, '--check-config', '--config', "$D/nope.conf"], timeout => 10);
        is($r->{exit}, 1, 'exit 1');
        like($r->{stderr}, qr/\Q$D\E\/nope\.conf/, 'names the file');
};

subtest '--version, --help, bad options' => sub {
        my $r = run_cmd([$KB::KEYBROKERD, '--version'], timeout => 10);
        is($r->{exit}, 0, '--version exits 0');
        like($r->{stdout}, qr/\b0\.\d+\.\d+\b/, '--version prints a version');
        $r = run_cmd([$KB::KEYBROKERD, '--help'], timeout => 10);
        is($r->{exit}, 0, '--help exits 0');
        like($r->{stdout}, qr/--config/, '--help mentions --config');
        like($r->{stdout}, qr/--check-config/, '--help mentions --check-config');
        $r = run_cmd([$KB::KEYBROKERD, '--no-such-option'], timeout => 10);
        ok(defined $r->{exit} && $r->{exit} != 0, 'unknown option: non-zero exit') or diag(explain($r));
        like($r->{stderr}, qr/\S/, 'and says something on stderr');
        $r = run_cmd([$KB::KEYBROKERD, '--config'], timeout => 10);
        ok(defined $r->{exit} && $r->{exit} != 0, '--config without a value: non-zero exit');
};

subtest 'the daemon refuses to start on a bad config' => sub {
        my $bad = replace_line($GOOD, qr/^family = openai/, 'family = cobol');
        my $f = "$D/startup.conf";
        spew($f, $bad);
        my $r = run_cmd([$KB::KEYBROKERD, '--config', $f], timeout => 15);
        is($r->{exit}, 1, 'exit 1 (and promptly)') or diag(explain($r));
        my $line = line_of($bad, qr/^family = cobol/);
        like($r->{stderr}, qr/\Q$f\E:$line: /, "stderr has $f:$line:");
        ok(!-S "$D/api.sock", 'no socket left behind');

        # Missing key file: --check-config is strict about it (above); the
        # daemon itself is checked in 60-upstream-errors.t.
};

done_testing;
