"""The fake DNS server (tests/fakes/dns.py) answers as a real one would."""

from __future__ import annotations

import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest

from tests.fakes.dns import DnsServer

LONG = "v=DKIM1; k=rsa; p=" + "A" * 400


@pytest.fixture
def server():
    with DnsServer({"mail._domainkey.example.org": LONG, "two.example.org": ["a=1", "b=2"]}) as s:
        yield s


def test_long_txt_value_is_split_in_255_octet_strings_and_joins_back(server: DnsServer) -> None:
    answer = server.resolver().resolve("mail._domainkey.example.org", "TXT")
    strings = answer[0].strings
    assert [len(s) for s in strings] == [255, len(LONG) - 255]
    assert b"".join(strings).decode() == LONG


def test_unknown_name_is_nxdomain_and_known_name_without_type_is_nodata(server: DnsServer) -> None:
    with pytest.raises(dns.resolver.NXDOMAIN):
        server.resolver().resolve("nothing.example.org", "TXT")
    with pytest.raises(dns.resolver.NoAnswer):
        server.resolver().resolve("two.example.org", "MX")


def test_large_answer_is_truncated_over_udp_and_complete_over_tcp(server: DnsServer) -> None:
    server.set_txt("big.example.org", [str(n) * 200 for n in range(5)])
    q = dns.message.make_query("big.example.org", "TXT")  # no EDNS: 512-octet limit
    udp = dns.query.udp(q, server.host, port=server.port, timeout=5)
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = dns.query.tcp(q, server.host, port=server.port, timeout=5)
    assert len(tcp.answer[0]) == 5
    assert sorted(r[2] for r in server.queries) == ["tcp", "udp"]


def test_servfail_and_removal(server: DnsServer) -> None:
    server.servfail.add("two.example.org")
    q = dns.message.make_query("two.example.org", "TXT")
    assert dns.query.udp(q, server.host, port=server.port, timeout=5).rcode() == dns.rcode.SERVFAIL
    server.remove("mail._domainkey.example.org")
    with pytest.raises(dns.resolver.NXDOMAIN):
        server.resolver().resolve("mail._domainkey.example.org", "TXT")
