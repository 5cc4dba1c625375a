"""DKIM end to end: keys from ``pysendmail dkim keygen``, mail from PHP and ``-bs``,
signatures checked on the exact bytes the relay received by verifiers that are
not dkimpy (tests/fakes/verifiers.py), keys served by a real DNS server on
loopback (tests/fakes/dns.py)."""

from __future__ import annotations

import binascii
import email
import email.policy
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Env, program, relay_env
from tests.fakes.dns import DnsServer
from tests.fakes.verifiers import mail_dkim, opendkim
from tests.integration.test_php import assert_submitted, php_mail

HTML = "<html><body>" + "".join(f"<p>Zeile {n}: Grüße, naïve café</p>" for n in range(150)) + "</body></html>"
assert len(HTML) >= 5000
UTF8_BODY = "Здравствуйте!\nВаш заказ №42 отправлен.\nС уважением, магазин\n"


@pytest.fixture
def dns():
    with DnsServer() as server:
        yield server


def keygen(e: Env, dns: DnsServer, domain: str, selector: str, *extra: str) -> tuple[Path, list[str]]:
    """Make a key with the real command; publish the record it printed in the fake DNS."""
    path = e.root / f"{domain}.{selector}.key"
    proc = e.run("pysendmail", "dkim", "keygen", "--domain", domain, "--selector", selector,
                 "--output", str(path), *extra, check=True)
    line = next(x for x in proc.stdout.decode().splitlines() if " IN TXT " in x)
    assert line.startswith(f"{selector}._domainkey.{domain}. IN TXT ( ")
    strings = re.findall(r'"([^"]*)"', line)
    dns.set_txt(f"{selector}._domainkey.{domain}", [strings])
    return path, strings


def dkim_table(domain: str, selector: str, path: Path, algorithm: str = "rsa-sha256", extra: str = "") -> str:
    return (f'\n[[dkim]]\ndomain = "{domain}"\nselector = "{selector}"\nkey_file = "{path}"\n'
            f'algorithm = "{algorithm}"\n{extra}')


def signing_env(tmp_path: Path, relay: object, dns: DnsServer, ed25519: bool = True) -> Env:
    e = relay_env(tmp_path, relay)
    rsa, _ = keygen(e, dns, "example.org", "rsa")
    tables = dkim_table("example.org", "rsa", rsa)
    if ed25519:
        ed, _ = keygen(e, dns, "example.org", "ed", "--algorithm", "ed25519")
        tables += dkim_table("example.org", "ed", ed, "ed25519-sha256")
    with open(e.config, "a") as fh:
        fh.write(tables)
    return e


def verify_all(data: bytes, dns: DnsServer, tmp_path: Path, ed25519: bool = True) -> None:
    """Mail::DKIM passes the RSA signature; OpenDKIM passes every signature."""
    perl = mail_dkim(data, dns.port)
    assert ("pass", "example.org", "rsa", "rsa-sha256") in perl, perl
    odk = opendkim(data, dns.port, tmp_path / "opendkim")
    assert ("pass", "example.org", "rsa", "rsa-sha256") in odk, odk
    if ed25519:
        # Debian 12's Mail::DKIM cannot check Ed25519 (see verifiers.py); OpenDKIM can.
        assert ("pass", "example.org", "ed", "ed25519-sha256") in odk, odk
    assert len(odk) == (2 if ed25519 else 1)


def wire_safe(data: bytes) -> None:
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")


def decoded_text(data: bytes) -> bytes:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    raw = data.split(b"\r\n\r\n", 1)[1]
    cte = (msg["Content-Transfer-Encoding"] or "7bit").lower()
    out = binascii.a2b_qp(raw) if cte == "quoted-printable" else raw
    return out.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("eightbitmime", [True, False], ids=["8bitmime", "7bit-relay"])
def test_php_html_mail_with_5000_character_line_is_reencoded_and_both_signatures_verify(
        tmp_path: Path, relay_factory, dns: DnsServer, eightbitmime: bool) -> None:
    relay = relay_factory(eightbitmime=eightbitmime)
    e = signing_env(tmp_path, relay, dns)
    headers = "From: Shop <shop@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=UTF-8"
    assert_submitted(php_mail(e, "client@example.net", "Your order", HTML, headers))
    e.flush()
    [got] = relay.wait_for(1)
    wire_safe(got.data)
    assert got.data.isascii()
    assert b"Content-Transfer-Encoding: quoted-printable\r\n" in got.data
    assert "BODY=8BITMIME" not in got.mail_options  # quoted-printable made it 7-bit
    assert decoded_text(got.data) == HTML.encode() + b"\n"
    verify_all(got.data, dns, tmp_path)


@pytest.mark.parametrize("eightbitmime", [True, False], ids=["8bitmime", "7bit-relay"])
def test_php_utf8_body_without_mime_headers_gets_charset_and_verifies(
        tmp_path: Path, relay_factory, dns: DnsServer, eightbitmime: bool) -> None:
    relay = relay_factory(eightbitmime=eightbitmime)
    e = signing_env(tmp_path, relay, dns)
    assert_submitted(php_mail(e, "client@example.net", "Заказ", UTF8_BODY, "From: shop@example.org"))
    e.flush()
    [got] = relay.wait_for(1)
    wire_safe(got.data)
    msg = email.message_from_bytes(got.data, policy=email.policy.default)
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "text/plain" and msg.get_content_charset() == "utf-8"
    assert msg.get_content().replace("\r\n", "\n") == UTF8_BODY + "\n"  # PHP ends the body with a newline
    if eightbitmime:
        assert "BODY=8BITMIME" in got.mail_options
        assert msg["Content-Transfer-Encoding"] == "8bit"
        assert UTF8_BODY.replace("\n", "\r\n").encode() in got.data  # sent as it is
    else:
        assert got.data.isascii() and "BODY=8BITMIME" not in got.mail_options
        assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    verify_all(got.data, dns, tmp_path)


def test_bs_input_is_signed_and_verifies(tmp_path: Path, relay_factory, dns: DnsServer) -> None:
    relay = relay_factory()
    e = signing_env(tmp_path, relay, dns)
    message = (b"From: App <app@example.org>\r\nTo: user@example.net\r\nSubject: via -bs\r\n"
               b"List-Unsubscribe: <mailto:unsub@example.org>\r\n\r\nHello from Symfony.\r\n..dot line\r\n")
    dialogue = (b"EHLO app.example.org\r\nMAIL FROM:<app@example.org>\r\nRCPT TO:<user@example.net>\r\nDATA\r\n"
                + message + b".\r\nQUIT\r\n")
    proc = subprocess.run([program("sendmail"), "-bs"], input=dialogue, capture_output=True, env=e.environ, timeout=60)
    assert proc.returncode == 0 and b"\r\n250 " in proc.stdout, proc.stdout
    e.flush()
    [got] = relay.wait_for(1)
    assert b"\r\n.dot line\r\n" in got.data
    sigs = [v for n, v in email.message_from_bytes(got.data, policy=email.policy.compat32).items()
            if n.lower() == "dkim-signature"]
    assert len(sigs) == 2
    for sig in sigs:
        h = re.search(r"h=([^;]+)", re.sub(r"\s+", "", sig)).group(1).split(":")
        # each present header once, From/To/Subject once more (oversigned)
        assert sorted(h) == sorted(["from", "from", "to", "to", "subject", "subject", "date", "message-id",
                                    "list-unsubscribe"])
        assert "c=relaxed/relaxed" in re.sub(r"\s+", "", sig)
    verify_all(got.data, dns, tmp_path)


def test_a_second_from_added_after_signing_breaks_the_signature(tmp_path: Path, relay_factory, dns: DnsServer) -> None:
    relay = relay_factory()
    e = signing_env(tmp_path, relay, dns, ed25519=False)
    e.sendmail("-t", "-i", input=b"From: a@example.org\nTo: b@example.net\nSubject: s\n\nbody\n", check=True)
    e.flush()
    [got] = relay.wait_for(1)
    assert mail_dkim(got.data, dns.port) == [("pass", "example.org", "rsa", "rsa-sha256")]
    head, body = got.data.split(b"\r\n\r\n", 1)
    forged = head + b"\r\nFrom: ceo@example.org\r\n\r\n" + body
    assert mail_dkim(forged, dns.port)[0][0] == "fail"


def test_mail_from_a_subdomain_is_signed_by_the_parent_only_when_configured(
        tmp_path: Path, relay_factory, dns: DnsServer) -> None:
    relay = relay_factory()
    e = relay_env(tmp_path, relay)
    rsa, _ = keygen(e, dns, "example.org", "rsa")
    with open(e.config, "a") as fh:
        fh.write(dkim_table("example.org", "rsa", rsa, extra="subdomains = true\n"))
    e.sendmail("-t", "-i", input=b"From: news@mail.example.org\nTo: b@example.net\nSubject: s\n\nx\n", check=True)
    e.sendmail("-t", "-i", input=b"From: a@example.com\nTo: b@example.net\nSubject: s\n\nx\n", check=True)
    e.flush()
    got = {email.message_from_bytes(m.data)["From"]: m.data for m in relay.wait_for(2)}
    assert mail_dkim(got["news@mail.example.org"], dns.port) == [("pass", "example.org", "rsa", "rsa-sha256")]
    assert b"DKIM-Signature" not in got["a@example.com"]


def test_maildir_delivery_is_signed_too(env: Env, dns: DnsServer) -> None:
    path, _ = keygen(env, dns, "example.org", "rsa")
    with open(env.config, "a") as fh:
        fh.write(dkim_table("example.org", "rsa", path))
    env.sendmail("-t", "-i", input=b"From: dev@example.org\nTo: b@example.net\nSubject: local\n\nx\n", check=True)
    env.flush()
    [data] = env.delivered()
    assert data.startswith(b"Return-Path: ")
    assert mail_dkim(data.replace(b"\n", b"\r\n"), dns.port) == [("pass", "example.org", "rsa", "rsa-sha256")]


@pytest.mark.parametrize("smtputf8", [True, False], ids=["smtputf8", "no-smtputf8"])
def test_non_ascii_recipient_needs_smtputf8_else_fails_permanently_saying_why(
        tmp_path: Path, relay_factory, dns: DnsServer, smtputf8: bool) -> None:
    relay = relay_factory(smtputf8=smtputf8)
    e = signing_env(tmp_path, relay, dns, ed25519=False)
    message = "From: Jürgen <shop@example.org>\nTo: jürgen@example.net\nSubject: Grüße\n\nHallo\n".encode()
    e.sendmail("-i", "jürgen@example.net", input=message, check=True)
    flush = e.sendmail("-q")
    if smtputf8:
        assert relay.messages, flush.stderr
        [got] = relay.wait_for(1)
        assert "SMTPUTF8" in got.mail_options and got.rcpt_tos == ["jürgen@example.net"]
        assert "Subject: Grüße".encode() in got.data  # raw UTF-8 headers are fine in an SMTPUTF8 session
        assert ("pass", "example.org", "rsa", "rsa-sha256") in mail_dkim(got.data, dns.port)
    else:
        assert [m.rcpt_tos for m in relay.messages] == [["root@example.org"]]  # only the bounce
        failed = list((e.spool / "failed").iterdir())
        assert len(failed) == 1
        assert b"does not offer SMTPUTF8 (RFC 6531)" in failed[0].read_bytes()


def test_non_ascii_domain_goes_as_its_a_label_to_a_relay_without_smtputf8(
        tmp_path: Path, relay_factory, dns: DnsServer) -> None:
    relay = relay_factory(smtputf8=False)
    e = signing_env(tmp_path, relay, dns, ed25519=False)
    message = "From: Магазин <shop@example.org>\nTo: Заказы <orders@пример.рф>\nSubject: Заказ\n\nok\n".encode()
    e.sendmail("-t", "-i", input=message, check=True)

    flush = e.sendmail("-q")

    [got] = relay.wait_for(1)
    assert got.rcpt_tos == ["orders@xn--e1afmkfd.xn--p1ai"], flush.stderr
    assert "SMTPUTF8" not in got.mail_options
    assert got.data.isascii(), "headers encoded for a 7-bit, non-SMTPUTF8 session"
    head = email.message_from_bytes(got.data, policy=email.policy.default)
    assert head["To"].addresses[0].addr_spec == "orders@xn--e1afmkfd.xn--p1ai"
    assert head["To"].addresses[0].display_name == "Заказы"
    assert ("pass", "example.org", "rsa", "rsa-sha256") in mail_dkim(got.data, dns.port)
    assert b"IDNA A-labels" in flush.stderr
