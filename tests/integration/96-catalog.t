#!/usr/bin/perl
# systemd/keybroker.catalog: journalctl compiles it (in a scratch root, not
# the system's catalog), it has an entry for every MESSAGE_ID of DESIGN's
# Journal section with a Subject, Defined-By: keybroker and documentation,
# and each entry explains the KEYBROKER_* fields its record carries.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

my $CATALOG = "$KB::ROOT/systemd/keybroker.catalog";
plan skip_all => 'journalctl not installed' unless grep { -x "$_/journalctl" } split(/:/, $ENV{PATH});

# The contract: DESIGN's MESSAGE_IDs (include/keybroker/keybroker.h) and the
# fields agent/journal.c writes for each.
my %FIELDS = (
        '65ab453e95ed4c0e99aea91870cea75c' => [@REQUEST_FIELDS, 'KEYBROKER_INSTANCE', 'KEYBROKER_SEQ', 'KEYBROKER_TEST',
                                               'KEYBROKER_REALTIME_USEC', 'KEYBROKER_HOST', 'KEYBROKER_IMAGES',
                                               'KEYBROKER_AUDIO_SECONDS', 'KEYBROKER_VIDEO_SECONDS',
                                               'KEYBROKER_CHARACTERS', 'KEYBROKER_OBJECT_ID', 'KEYBROKER_BATCH'],
        '06f9068c76c44d218e62b7f8f75da06d' => [qw(KEYBROKER_KEY_NAME KEYBROKER_KEY_VERSION KEYBROKER_KEY_FINGERPRINT
                                               KEYBROKER_KEY_ACTION KEYBROKER_ADMIN_UID)],
        'd3d1e6b438f94b958707dfc486f2e5f9' => [qw(KEYBROKER_TEAM KEYBROKER_LIMIT KEYBROKER_USED KEYBROKER_LIMIT_VALUE
                                               KEYBROKER_RESET_USEC)],
        'da52a66de9f14751b27d771e64ef1e05' => [qw(KEYBROKER_EVENT KEYBROKER_ROUTE KEYBROKER_MODEL KEYBROKER_WEIGHTS
                                               KEYBROKER_REASON KEYBROKER_ERROR_RATIO KEYBROKER_REQUESTS
                                               KEYBROKER_CONSECUTIVE_FAILURES KEYBROKER_ADMIN_UID)],
        '52fd69280afb4330966571bb5772f62f' => [qw(KEYBROKER_EVENT KEYBROKER_CONFIG_PATH KEYBROKER_ERROR)],
        'ed744d6e5d9d4128b630050956cdab33' => [qw(KEYBROKER_ROUTE KEYBROKER_MODEL KEYBROKER_CHECK KEYBROKER_CHECK_OK
                                               KEYBROKER_CHECK_DETAIL KEYBROKER_LATENCY_MS KEYBROKER_EVIDENCE)],
        'e43fe4197ddd4b8a9f47d92e5be5ccce' => [qw(KEYBROKER_EVENT KEYBROKER_IN_FLIGHT KEYBROKER_VERSION)],
        'cfe4b02a7d4b41c5a0bb51ebad71f6d3' => [qw(KEYBROKER_EVENT KEYBROKER_STORE KEYBROKER_REASON KEYBROKER_BROKERS)],
        '478e1a1c28a541779bf26af7cfdf2f90' => [qw(KEYBROKER_EVENT KEYBROKER_MODEL KEYBROKER_SHADOW_ROUTE
                                               KEYBROKER_SHADOW_UPSTREAM_MODEL KEYBROKER_HOST KEYBROKER_REALTIME_USEC
                                               KEYBROKER_TEST KEYBROKER_REQUEST_ID KEYBROKER_TEAM KEYBROKER_ENDPOINT
                                               KEYBROKER_STREAM KEYBROKER_ROUTE KEYBROKER_UPSTREAM_MODEL
                                               KEYBROKER_STATUS KEYBROKER_STATUS_CLASS KEYBROKER_SHADOW_KEY
                                               KEYBROKER_SHADOW_STATUS KEYBROKER_SHADOW_ERROR KEYBROKER_SHAPE_MATCH
                                               KEYBROKER_SHAPE_DIFF KEYBROKER_INPUT_TOKENS KEYBROKER_OUTPUT_TOKENS
                                               KEYBROKER_SHADOW_INPUT_TOKENS KEYBROKER_SHADOW_OUTPUT_TOKENS
                                               KEYBROKER_OUTPUT_RATIO KEYBROKER_LATENCY_MS KEYBROKER_SHADOW_LATENCY_MS
                                               KEYBROKER_COST_MICROUSD KEYBROKER_SHADOW_COST_MICROUSD
                                               KEYBROKER_SHADOW_PRICED KEYBROKER_SHADOW_SKIPPED
                                               KEYBROKER_SHADOW_SPENT_MICROUSD KEYBROKER_SHADOW_BUDGET_MICROUSD)],
        '5ec076b4fc194e50a600372c4a6b303b' => [qw(KEYBROKER_EVENT KEYBROKER_MODEL KEYBROKER_ROUTE KEYBROKER_UPSTREAM_MODEL
                                               KEYBROKER_STEP KEYBROKER_PERCENT KEYBROKER_STEPS KEYBROKER_REASON
                                               KEYBROKER_GATE KEYBROKER_GATE_RESULT KEYBROKER_WEIGHTS_BEFORE
                                               KEYBROKER_WEIGHTS_AFTER KEYBROKER_ADMIN_UID KEYBROKER_REQUESTS
                                               KEYBROKER_ERRORS KEYBROKER_ERROR_RATIO KEYBROKER_P95_MS
                                               KEYBROKER_UPSTREAM_429 KEYBROKER_TIMEOUTS KEYBROKER_MODEL_NOT_FOUND
                                               KEYBROKER_MISSING_USAGE KEYBROKER_INPUT_TOKENS_PER_REQUEST
                                               KEYBROKER_OUTPUT_TOKENS_PER_REQUEST KEYBROKER_BASELINE
                                               KEYBROKER_BASELINE_ERROR_RATIO KEYBROKER_BASELINE_P95_MS
                                               KEYBROKER_BASELINE_INPUT_TOKENS_PER_REQUEST
                                               KEYBROKER_BASELINE_OUTPUT_TOKENS_PER_REQUEST)],
);

subtest 'the IDs are the ones keybroker.h defines' => sub {
        my $h = slurp("$KB::ROOT/include/keybroker/keybroker.h") // '';
        my @ids = $h =~ /#define KB_MID_\w+ "([0-9a-f]{32})"/g;
        is(scalar(@ids), scalar(keys %FIELDS), 'keybroker.h defines ' . scalar(keys %FIELDS) . ' MESSAGE_IDs');
        is_deeply([sort @ids], [sort keys %FIELDS], 'and this test knows each of them');
};

ok(-r $CATALOG, 'systemd/keybroker.catalog exists') or BAIL_OUT('no catalog');

my $root = tmpdir('catalog');
system('mkdir', '-p', "$root/usr/lib/systemd/catalog", "$root/var/lib/systemd/catalog") == 0 or die;
spew("$root/usr/lib/systemd/catalog/keybroker.catalog", slurp($CATALOG));

my $r = run_cmd(['journalctl', "--root=$root", '--update-catalog']);
is($r->{exit}, 0, 'journalctl --update-catalog accepts it') or diag($r->{stderr});
is($r->{stderr}, '', 'without a warning') or diag($r->{stderr});
ok(-s "$root/var/lib/systemd/catalog/database", 'the catalog database was written');

$r = run_cmd(['journalctl', "--root=$root", '--list-catalog']);
is($r->{exit}, 0, 'journalctl --list-catalog') or diag($r->{stderr});
my %listed = map { /^([0-9a-f]{32}) (.*)$/ ? ($1 => $2) : () } split /\n/, $r->{stdout};
is(scalar(keys(%listed)), scalar(keys %FIELDS), 'an entry per MESSAGE_ID') or diag($r->{stdout});

for my $id (sort keys %FIELDS) {
        subtest "entry $id" => sub {
                like($listed{$id} // '', qr/^keybroker: \S.*\@KEYBROKER_/, 'listed as Defined-By keybroker with a Subject naming a field')
                        or return;
                my $d = run_cmd(['journalctl', "--root=$root", '--dump-catalog', $id]);
                is($d->{exit}, 0, '--dump-catalog') or return diag($d->{stderr});
                my $text = $d->{stdout};
                like($text, qr/^-- $id$/m, 'header');
                like($text, qr/^Subject: /m, 'Subject');
                like($text, qr/^Defined-By: keybroker$/m, 'Defined-By');
                like($text, qr/^Documentation: man:keybroker(?:d\(8\)|ctl\(1\))$/m, 'Documentation');
                my ($body) = $text =~ /\n\n(.*)\z/s;
                ok(length($body // '') > 200, 'a body that explains the record');
                my @missing = grep { $body !~ /\b\Q$_\E\b/ } @{$FIELDS{$id}};
                is_deeply(\@missing, [], 'the body names every field of the record');
                # Placeholders must name real fields, or journalctl -x prints them raw.
                my %known = map { $_ => 1 } map { @$_ } values %FIELDS;
                my @unknown = grep { !$known{$_} } $text =~ /\@(\w+)\@/g;
                is_deeply(\@unknown, [], 'placeholders are fields of a keybroker record');
        };
}

# A broken copy is refused: the check above can fail.
spew("$root/usr/lib/systemd/catalog/keybroker.catalog", "Subject: x\n-- 65ab453e95ed4c0e99aea91870cea75c\nSubject: y\n");
unlink("$root/var/lib/systemd/catalog/database");
$r = run_cmd(['journalctl', "--root=$root", '--update-catalog']);
ok($r->{exit} != 0 || $r->{stderr} ne '', 'a malformed catalog is reported') or diag(explain($r));

diag('install path: ' . (`pkg-config --variable=catalogdir systemd 2>/dev/null` =~ s/\s+$//r || '/usr/lib/systemd/catalog'))
        if $ENV{KB_VERBOSE};

done_testing;
