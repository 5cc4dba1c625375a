"""Real PHP ``mail()`` into the real ``sendmail -t -i``, delivered into the Maildir.

PHP runs ``sendmail_path`` through popen(3) with its own environment, so
PYSENDMAIL_CONFIG reaches the submitter exactly as it would from php-fpm.
The arguments of mail() travel through PHP's argv (``-r`` code plus ``--``),
so a subject, a body or headers with CR, LF or 8-bit bytes reach PHP
unchanged instead of being quoted into PHP source.  PHP runs with ``-n``
(no php.ini): the test must not depend on what a distribution's ini adds
(mail.add_x_header, a sendmail_from, ...).
"""

from __future__ import annotations

import email.utils
import os
import pwd
import shutil
import subprocess

import pytest

from tests.conftest import Env, program

PHP_CALL = "var_dump(mail(...array_slice($argv, 1)));"


def php_mail(e: Env, *args: str, sendmail_flags: str = "-t -i") -> subprocess.CompletedProcess[bytes]:
    """Call PHP's mail() with ``args`` (to, subject, message[, headers[, params]])."""
    php = shutil.which("php")
    if php is None:
        pytest.fail("php is not installed: apt-get install php-cli (the README's test command does)")
    cmd = [php, "-n", "-d", f"sendmail_path={program('sendmail')} {sendmail_flags}", "-r", PHP_CALL, "--", *args]
    return subprocess.run(cmd, capture_output=True, env=e.environ, timeout=60)


def split(data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(header fields as (lower-case name, unfolded value), body) of a Maildir file (LF)."""
    head, sep, body = data.partition(b"\n\n")
    assert sep, f"no blank line between header and body in {data[:400]!r}"
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            name, value = fields[-1]
            fields[-1] = (name, value + b" " + line.strip())
        else:
            name, _, value = line.partition(b":")
            fields.append((name.strip().lower(), value.strip()))
    return fields, body


def values(fields: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in fields if n == name]


def assert_submitted(proc: subprocess.CompletedProcess[bytes]) -> None:
    assert proc.stdout == b"bool(true)\n", (proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr


def test_php_mail_delivers_one_copy_per_recipient_with_bcc_removed(env: Env) -> None:
    subject = "Grüße aus Köln — Привет ☃"
    message = "Hello,\nthis is the body.\nUmlaut: äöü\n\n-- \nsignature"
    headers = "From: Web Shop <shop@example.org>\r\nCc: Carol <carol@example.net>\r\nBcc: secret@example.net"

    assert_submitted(php_mail(env, "dave@example.net", subject, message, headers, "-fbounce@example.org"))
    env.flush()

    got = env.delivered()
    assert len(got) == 3
    by_rcpt = {}
    for data in got:
        assert b"\r" not in data  # Maildir files end lines with LF
        fields, body = split(data)
        # local(8)'s two lines come first, then Received, then PHP's headers.
        assert [n for n, _ in fields[:3]] == [b"return-path", b"delivered-to", b"received"]
        assert values(fields, b"return-path") == [b"<bounce@example.org>"]
        (rcpt,) = values(fields, b"delivered-to")
        by_rcpt[rcpt] = (fields, body)
    assert set(by_rcpt) == {b"dave@example.net", b"carol@example.net", b"secret@example.net"}

    bodies = {body for _, body in by_rcpt.values()}
    # PHP ends the message with its own newline after the body it was given.
    assert bodies == {message.encode() + b"\n"}
    for fields, _ in by_rcpt.values():
        assert values(fields, b"bcc") == [], "the Bcc header must not reach any recipient, not even the Bcc one"
        assert b"secret@example.net" not in b"".join(v for n, v in fields if n != b"delivered-to")
        assert values(fields, b"subject") == [subject.encode()]  # raw 8-bit, as PHP gave it
        assert values(fields, b"from") == [b"Web Shop <shop@example.org>"]
        assert values(fields, b"to") == [b"dave@example.net"]
        assert values(fields, b"cc") == [b"Carol <carol@example.net>"]
        (date,) = values(fields, b"date")
        assert email.utils.parsedate_to_datetime(date.decode()).tzinfo is not None
        (msgid,) = values(fields, b"message-id")
        assert msgid.startswith(b"<") and msgid.endswith(b"@host.example.org>")
        (received,) = values(fields, b"received")
        login = pwd.getpwuid(os.getuid()).pw_name
        assert received.startswith(f"from {login} (uid {os.getuid()}) by host.example.org (pysendmail) id ".encode())
    # One message, three copies: the same Message-ID in each.
    assert len({tuple(values(f, b"message-id")) for f, _ in by_rcpt.values()}) == 1
    assert env.queued() == [] and env.incoming() == []


def test_php_mail_keeps_lone_dot_line_with_i(env: Env) -> None:
    message = "before the dot\n.\nafter the dot\n..two dots stay two\n.\n"

    assert_submitted(php_mail(env, "dave@example.net", "dots", message))
    env.flush()

    (data,) = env.delivered()
    _, body = split(data)
    assert body == message.encode() + b"\n"


def test_php_mail_without_i_ends_message_at_lone_dot(env: Env) -> None:
    # sendmail's rule without -i (and why php.ini needs "-t -i"): the
    # lone dot ends the message; this is what the -i test above guards.
    message = "before the dot\n.\nafter the dot\n"

    assert_submitted(php_mail(env, "dave@example.net", "dots", message, sendmail_flags="-t"))
    env.flush()

    (data,) = env.delivered()
    _, body = split(data)
    assert body == b"before the dot\n"


def test_php_mail_without_f_uses_qualified_login_as_sender(env: Env) -> None:
    assert_submitted(php_mail(env, "dave@example.net", "no -f", "body"))
    env.flush()

    (data,) = env.delivered()
    fields, body = split(data)
    login = pwd.getpwuid(os.getuid()).pw_name
    assert values(fields, b"return-path") == [f"<{login}@example.org>".encode()]
    # No From given: the MTA adds one, as sendmail and Postfix do.
    assert values(fields, b"from") == [f"{login}@example.org".encode()]
    assert body == b"body\n"
