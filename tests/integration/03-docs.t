#!/usr/bin/perl
# The repository documents itself: README's Layout names every top-level
# folder, every tests/ folder and every source file of the daemon and of
# keybrokerctl (a file added without a word there fails here); nothing in
# the repository sends the reader outside it; every man page is installed
# and named by the README.
use v5.36;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use KB;

my $root = $KB::ROOT;
my $readme = slurp("$root/README.md") // die "README.md: $!";
my ($layout) = $readme =~ /^## Layout\n(.*?)^## /ms;
ok($layout, 'README has a Layout section') or BAIL_OUT('no Layout section');

my @tracked = split /\n/, `git -C $root ls-files 2>/dev/null`;
plan skip_all => 'not a git checkout' unless @tracked;

sub named($path) {
        my $base = $path =~ s{.*/}{}r;
        return 1 if $layout =~ /`\Q$path\E`/ || $layout =~ /`\Q$base\E`/;
        # A group named by pattern, as `ctl-*.c`.
        for my $glob ($layout =~ /`([^`]*\*[^`]*)`/g) {
                my $re = quotemeta($glob) =~ s/\\\*/.*/gr;
                return 1 if $base =~ /^$re$/;
        }
        return 0;
}

my %dirs;
for (@tracked) {
        my ($top) = m{^([^/]+)/} or next;
        next if $top =~ /^\./ && $top ne '.ci';
        $dirs{$top} = 1;
        $dirs{"tests/$1"} = 1 if m{^tests/([^/]+)/};
}
my @undocumented_dirs = grep { $layout !~ /`\Q$_\E\/?`/ && $layout !~ /`\Q$_\E\// } sort keys %dirs;
is_deeply(\@undocumented_dirs, [], 'every folder is in the Layout table') or diag("not named: @undocumented_dirs");

my @sources = grep { m{^(agent|client)/[^/]+\.c$} } @tracked;
cmp_ok(scalar(@sources), '>', 50, 'the daemon and keybrokerctl sources are found');
my @unnamed = grep { !named($_) } @sources;
is_deeply(\@unnamed, [], 'every agent/ and client/ source file is named in the Layout table')
        or diag("not named: @unnamed");

# Transcripts are read at test time from where KB_TRANSCRIPTS says (by
# default beside the checkout); that is the one reference allowed.
my @outside;
for my $f (@tracked) {
        next if $f =~ m{^tests/integration/(89-transcripts|03-docs)\.t$} || $f =~ m{/package-lock\.json$};
        my $text = slurp("$root/$f") // next;
        push @outside, $f if $text =~ m{\.\./shared\b|shared/DESIGN\.md};
}
is_deeply(\@outside, [], 'nothing in the repository points to ../shared') or diag("points outside: @outside");

my $makefile = slurp("$root/Makefile");
for my $man (grep { m{^man/[^/]+\.\d$} } @tracked) {
        my ($name, $sec) = $man =~ m{^man/(.+)\.(\d)$};
        like($makefile, qr/install .*\Q$man\E .*man$sec\/\Q$name.$sec\E/, "make install installs $man");
        like($readme, qr/\Q$name($sec)\E/, "README names $name($sec)");
}

done_testing();
