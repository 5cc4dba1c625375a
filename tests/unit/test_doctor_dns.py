"""doctor's line between "DNS is unreachable" and "this name's lookup failed", on real exceptions.

Each exception comes from dnspython asking a real socket: a closed TCP
port on loopback (connection refused, the usual answer of a host without
a resolver; UDP refusals are not reported the same way everywhere), a
loopback DNS server that answers SERVFAIL for one name (tests/fakes/dns.py),
and one that never answers (a timeout).
"""

from __future__ import annotations

import socket

import dns.exception
import dns.resolver
import pytest

from pysendmail.admin import doctor
from pysendmail.core.errors import TempFailure
from tests.fakes.dns import DnsServer


def failure(res: dns.resolver.Resolver, name: str, tcp: bool = False) -> dns.exception.DNSException:
    try:
        res.resolve(name, "TXT", tcp=tcp)
    except dns.exception.DNSException as exc:
        return exc
    raise AssertionError(f"{name} resolved")


def resolver_at(port: int, lifetime: float = 2.0) -> dns.resolver.Resolver:
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = ["127.0.0.1"]
    res.port = port
    res.timeout = res.lifetime = lifetime
    return res


def test_a_refused_connection_is_unreachable_dns() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    exc = failure(resolver_at(port), "example.org", tcp=True)
    assert isinstance(exc, (dns.resolver.NoNameservers, dns.exception.Timeout)), exc
    assert doctor.unreachable(exc)


def test_a_server_that_never_answers_is_unreachable_dns() -> None:
    with DnsServer() as server:
        server.drop.add("example.org")
        exc = failure(resolver_at(server.port, lifetime=0.5), "example.org")
    assert isinstance(exc, dns.exception.Timeout)
    assert doctor.unreachable(exc)


def test_a_servfail_for_one_name_comes_from_a_reachable_server() -> None:
    with DnsServer() as server:
        server.servfail.add("_dmarc.example.org")
        exc = failure(resolver_at(server.port), "_dmarc.example.org")
    assert isinstance(exc, dns.resolver.NoNameservers)
    assert not doctor.unreachable(exc)


def test_an_unanswered_lookup_ends_the_check_with_one_sentence() -> None:
    with DnsServer() as server:
        server.drop.add("example.org")
        with pytest.raises(TempFailure, match=r"^DNS is unreachable: no answer from 127\.0\.0\.1 port \d+ "
                                              r"\(asked for MX example\.org\)"):
            doctor._resolve(resolver_at(server.port, lifetime=0.5), "example.org", "MX")
