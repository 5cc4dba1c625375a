#!/usr/bin/perl
# Verify every DKIM signature of the message on stdin with Mail::DKIM (an
# implementation independent of dkimpy), asking the DNS server on
# 127.0.0.1:PORT for keys.  One line per signature:
#   <result> d=<domain> s=<selector> a=<algorithm> (<details>)
# then "overall <result>".  Exit 0 whatever the results: the caller judges.
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Net::DNS::Resolver;

my $port = shift @ARGV or die "usage: dkimverify.pl PORT < message\n";
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $port, recurse => 0, tcp_timeout => 5, udp_timeout => 5,
    retry => 1));
my $dkim = Mail::DKIM::Verifier->new();
binmode STDIN;
local $/;
my $msg = <STDIN>;
$dkim->PRINT($msg);
$dkim->CLOSE;
foreach my $sig ($dkim->signatures) {
    printf "%s d=%s s=%s a=%s (%s)\n", $sig->result, $sig->domain // '', $sig->selector // '',
        $sig->algorithm // '', $sig->result_detail // '';
}
printf "overall %s\n", $dkim->result;
