"""``sendmail -bs`` driven the way Symfony Mailer and Laravel drive it.

Symfony's SendmailTransport starts ``sendmail -bs`` (Laravel's default
command line is ``sendmail -bs -i``) and speaks SMTP over the child's
stdin and stdout.  Here the client is Python's own smtplib, given the pipe
through a small socket-like adapter, so the dialogue is a real SMTP
client's, replies are parsed by a real SMTP client, and the wire bytes are
ours only where a test says so.  A watchdog kills the child if a reply
never comes: the test then fails on the closed pipe instead of hanging.
"""

from __future__ import annotations

import contextlib
import smtplib
import subprocess
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import Env, program, write_config

MAX_SIZE = 1_000_000
WATCHDOG_SECONDS = 60


class PipeSocket:
    """Just enough of a socket for smtplib: sendall, makefile, close."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin = proc.stdin
        self.stdout = proc.stdout

    def sendall(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()

    def makefile(self, mode: str) -> object:
        return self.stdout

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # the child may be gone already
            self.stdin.close()


class BsSession:
    """One ``sendmail -bs`` child and the smtplib client speaking to it."""

    def __init__(self, e: Env, args: list[str], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen([program("sendmail"), *args], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, env=e.environ)
        self.watchdog = threading.Timer(WATCHDOG_SECONDS, self.proc.kill)
        self.watchdog.start()
        self.pipe = PipeSocket(self.proc)
        self.smtp = smtplib.SMTP()
        self.smtp.sock = self.pipe  # type: ignore[assignment]
        self.greeting = self.smtp.getreply()  # what connect() would have read

    def send_raw(self, data: bytes) -> None:
        self.smtp.send(data)

    def replies(self, n: int) -> list[tuple[int, bytes]]:
        return [self.smtp.getreply() for _ in range(n)]

    def stderr(self) -> bytes:
        return self.stderr_path.read_bytes()

    def close(self) -> int:
        """Close our end; the child must exit by itself."""
        self.pipe.close()  # smtplib's quit() may have closed it already
        try:
            return self.proc.wait(WATCHDOG_SECONDS)
        finally:
            self.watchdog.cancel()
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            assert self.proc.stdout is not None
            self.proc.stdout.close()


Start = Callable[..., BsSession]


@pytest.fixture
def bs_env(tmp_path: Path) -> Env:
    e = write_config(tmp_path)
    e.config.write_text(e.config.read_text().replace("[spool]\n", f"[spool]\nmax_message_size = {MAX_SIZE}\n", 1))
    e.run("pysendmail", "spool", "init", check=True)
    return e


@pytest.fixture
def session(bs_env: Env, tmp_path: Path) -> Iterator[Start]:
    started: list[BsSession] = []

    def start(*args: str) -> BsSession:
        s = BsSession(bs_env, list(args) or ["-bs"], tmp_path / f"bs-{len(started)}.stderr")
        started.append(s)
        return s

    yield start
    for s in started:  # a test that failed half-way leaves its child running
        s.watchdog.cancel()
        if s.proc.poll() is None:
            s.proc.kill()
        s.proc.wait()
        s.pipe.close()
        assert s.proc.stdout is not None
        s.proc.stdout.close()


def by_recipient(e: Env) -> dict[str, tuple[bytes, bytes]]:
    """Delivered-To -> (header section, body) of each Maildir file."""
    out = {}
    for data in e.delivered():
        head, _, body = data.partition(b"\n\n")
        lines = head.split(b"\n")
        assert lines[1].startswith(b"Delivered-To: "), lines[:2]
        out[lines[1].split(b" ", 1)[1].decode()] = (head, body)
    return out


FIRST = (
    "From: App <app@example.org>\r\n"
    "To: one@example.net, two@example.net\r\n"
    "Subject: Bestellbestätigung\r\n"
    "\r\n"
    "Grüße,\r\n"
    ".leading dot\r\n"
    ".\r\n"
    "end of first\r\n"
).encode()


@pytest.mark.parametrize("args", [["-bs"], ["-bs", "-i"]], ids=["bs", "bs-i"])
def test_bs_session_queues_two_messages_with_their_envelopes(session: Start, bs_env: Env, args: list[str]) -> None:
    s = session(*args)
    smtp = s.smtp
    assert s.greeting[0] == 220

    code, _ = smtp.ehlo("[127.0.0.1]")  # Symfony's default local_domain
    assert code == 250
    assert smtp.has_extn("pipelining")
    assert smtp.has_extn("8bitmime")
    assert smtp.esmtp_features["size"] == str(MAX_SIZE)
    assert smtp.noop()[0] == 250

    # Mistakes a client can make; the session must stay usable after each.
    assert smtp.docmd("RCPT", "TO:<one@example.net>")[0] == 503
    assert smtp.docmd("DATA")[0] == 503
    assert smtp.docmd("MAIL", "FROM:<not an address>")[0] in (501, 553)
    assert smtp.docmd("MAIL", f"FROM:<app@example.org> SIZE={MAX_SIZE + 1}")[0] == 552
    smtp.send("MAIL FROM:<app@example.org> SIZE=\u00b2\r\n".encode())  # a digit to isdigit(), not to int()
    assert smtp.getreply()[0] == 501

    # First message: smtplib's own MAIL/RCPT/DATA (it dot-stuffs the body).
    assert smtp.mail("app@example.org", ["BODY=8BITMIME", f"SIZE={len(FIRST)}"])[0] == 250
    assert smtp.rcpt("one@example.net")[0] == 250
    assert smtp.docmd("RCPT", "TO:<not an address>")[0] in (501, 553)
    assert smtp.rcpt("two@example.net")[0] == 250
    code, reply = smtp.data(FIRST)
    assert code == 250 and b"queued as " in reply
    first_qid = reply.rsplit(b" ", 1)[1].decode()

    assert smtp.rset()[0] == 250

    # Second message: the wire bytes written by hand, dot-stuffed as RFC 5321 4.5.2 says.
    assert smtp.docmd("MAIL", "FROM:<list@example.org>")[0] == 250
    assert smtp.docmd("RCPT", "TO:<three@example.net>")[0] == 250
    assert smtp.docmd("DATA")[0] == 354
    s.send_raw(b"Subject: second\r\n\r\n..leading dot\r\n...two dots\r\n..\r\nend of second\r\n.\r\n")
    code, reply = smtp.getreply()
    assert code == 250 and b"queued as " in reply
    second_qid = reply.rsplit(b" ", 1)[1].decode()
    assert second_qid != first_qid

    assert smtp.quit()[0] == 221
    assert s.close() == 0
    assert s.stderr() == b""
    assert len(bs_env.incoming()) == 2

    bs_env.flush()

    got = by_recipient(bs_env)
    assert set(got) == {"one@example.net", "two@example.net", "three@example.net"}
    for rcpt in ("one@example.net", "two@example.net"):
        head, body = got[rcpt]
        assert head.startswith(b"Return-Path: <app@example.org>\n")
        assert f" id {first_qid};".encode() in head
        assert "Subject: Bestellbestätigung\n".encode() in head
        assert body == "Grüße,\n.leading dot\n.\nend of first\n".encode()
    head, body = got["three@example.net"]
    assert head.startswith(b"Return-Path: <list@example.org>\n")
    assert f" id {second_qid};".encode() in head
    assert body == b".leading dot\n..two dots\n.\nend of second\n"
    assert bs_env.queued() == [] and bs_env.incoming() == []


def test_bs_pipelined_commands_get_replies_in_order(session: Start, bs_env: Env) -> None:
    s = session("-bs")
    s.smtp.ehlo("app.example.org")

    s.send_raw(b"MAIL FROM:<app@example.org>\r\nRCPT TO:<x@example.net>\r\nRCPT TO:<not an address>\r\nDATA\r\n")
    codes = [code for code, _ in s.replies(4)]
    s.send_raw(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    codes += [code for code, _ in s.replies(2)]

    assert codes[:2] == [250, 250] and codes[2] in (501, 553) and codes[3:] == [354, 250, 221]
    assert s.close() == 0
    bs_env.flush()
    got = by_recipient(bs_env)
    assert list(got) == ["x@example.net"]
    assert got["x@example.net"][1] == b"body\n"


def test_bs_message_over_size_limit_in_data_is_refused_and_session_goes_on(session: Start, bs_env: Env) -> None:
    s = session("-bs")
    smtp = s.smtp
    smtp.ehlo("app.example.org")
    # No SIZE= given, so only DATA can tell: the whole body is read, then refused.
    big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * (MAX_SIZE // 1000 + 10)

    smtp.docmd("MAIL", "FROM:<app@example.org>")
    smtp.docmd("RCPT", "TO:<x@example.net>")
    code, _ = smtp.data(big)
    assert code == 552
    smtp.docmd("MAIL", "FROM:<app@example.org>")
    smtp.docmd("RCPT", "TO:<x@example.net>")
    assert smtp.data(b"Subject: small\r\n\r\nsmall\r\n")[0] == 250
    assert smtp.quit()[0] == 221
    assert s.close() == 0

    bs_env.flush()
    (data,) = bs_env.delivered()
    assert data.endswith(b"\n\nsmall\n")


def test_bs_eof_inside_data_queues_nothing_but_keeps_acknowledged_message(session: Start, bs_env: Env) -> None:
    s = session("-bs")
    smtp = s.smtp
    smtp.ehlo("app.example.org")
    smtp.docmd("MAIL", "FROM:<app@example.org>")
    smtp.docmd("RCPT", "TO:<kept@example.net>")
    assert smtp.data(b"Subject: kept\r\n\r\nacknowledged\r\n")[0] == 250
    smtp.docmd("MAIL", "FROM:<app@example.org>")
    smtp.docmd("RCPT", "TO:<lost@example.net>")
    assert smtp.docmd("DATA")[0] == 354
    s.send_raw(b"Subject: cut\r\n\r\nthe client dies here")

    # The client vanishes without the final dot and without QUIT.
    assert s.close() == 0

    bs_env.flush()
    got = by_recipient(bs_env)
    assert list(got) == ["kept@example.net"]
    assert got["kept@example.net"][1] == b"acknowledged\n"


def test_bs_smtputf8_addresses_as_symfony_sends_them(session: Start, bs_env: Env) -> None:
    # Symfony adds SMTPUTF8 to MAIL when an address is not ASCII (RFC 6531).
    s = session("-bs")
    smtp = s.smtp
    assert smtp.ehlo("[127.0.0.1]")[0] == 250
    assert smtp.has_extn("smtputf8")

    smtp.command_encoding = "utf-8"  # what smtplib itself does once SMTPUTF8 is in use
    assert smtp.docmd("MAIL", "FROM:<jürgen@example.org> SMTPUTF8")[0] == 250
    assert smtp.docmd("RCPT", "TO:<müller@example.net>")[0] == 250
    assert smtp.data("Subject: utf8\r\n\r\nhallo\r\n".encode())[0] == 250
    assert smtp.quit()[0] == 221
    assert s.close() == 0

    bs_env.flush()
    got = by_recipient(bs_env)
    assert list(got) == ["müller@example.net"]
    assert got["müller@example.net"][0].startswith("Return-Path: <jürgen@example.org>\n".encode())


# ------------------------------------------------------------------ a client that goes silent
def timed_session(bs_env: Env, session: Start, timeout: int, limit: int = 3600) -> BsSession:
    """A session under [submit] smtp_timeout/smtp_session_limit, shortened so no test waits minutes."""
    bs_env.config.write_text(bs_env.config.read_text() +
                             f"\n[submit]\nsmtp_timeout = {timeout}\nsmtp_session_limit = {limit}\n")
    return session("-bs")


def test_bs_silent_client_with_open_stdin_gets_421_and_accepted_mail_stays(session: Start, bs_env: Env) -> None:
    s = timed_session(bs_env, session, timeout=1)
    smtp = s.smtp
    smtp.ehlo("app.example.org")
    smtp.docmd("MAIL", "FROM:<app@example.org>")
    smtp.docmd("RCPT", "TO:<kept@example.net>")
    assert smtp.data(b"Subject: kept\r\n\r\nacknowledged\r\n")[0] == 250

    # The client keeps its end of the pipe open and says nothing more:
    # before, sendmail waited for ever (here: until the watchdog killed it).
    code, text = smtp.getreply()

    assert code == 421 and text.startswith(b"4.4.2 ") and text.endswith(b"Error: timeout exceeded")
    assert s.proc.wait(WATCHDOG_SECONDS) == 0  # as Postfix's sendmail -bs, with our end still open
    assert s.stderr() == b""
    assert len(bs_env.incoming()) == 1
    bs_env.flush()
    assert list(by_recipient(bs_env)) == ["kept@example.net"]


def test_bs_client_silent_inside_data_gets_421_and_that_message_is_not_queued(session: Start,
                                                                               bs_env: Env) -> None:
    s = timed_session(bs_env, session, timeout=1)
    smtp = s.smtp
    smtp.ehlo("app.example.org")
    smtp.docmd("MAIL", "FROM:<app@example.org>")
    smtp.docmd("RCPT", "TO:<never@example.net>")
    assert smtp.docmd("DATA")[0] == 354
    s.send_raw(b"Subject: stalled\r\n\r\nhalf a line without its end")

    code, text = smtp.getreply()

    assert code == 421 and b"timeout exceeded" in text
    assert s.proc.wait(WATCHDOG_SECONDS) == 0
    assert bs_env.incoming() == []  # never answered 250: the client still holds it


def test_bs_partial_command_line_does_not_hold_the_session(session: Start, bs_env: Env) -> None:
    s = timed_session(bs_env, session, timeout=1)
    s.smtp.ehlo("app.example.org")
    s.send_raw(b"NOO")  # the deadline is for the whole line, not for each byte

    code, text = s.smtp.getreply()

    assert code == 421 and b"timeout exceeded" in text
    assert s.proc.wait(WATCHDOG_SECONDS) == 0


def test_bs_session_longer_than_its_limit_is_ended(session: Start, bs_env: Env) -> None:
    s = timed_session(bs_env, session, timeout=60, limit=1)
    assert s.smtp.ehlo("app.example.org")[0] == 250

    code, text = s.smtp.getreply()  # the idle timeout (60 s) is far; the session bound ends it

    assert code == 421 and text.endswith(b"Error: session time limit exceeded")
    assert s.proc.wait(WATCHDOG_SECONDS) == 0


@pytest.mark.parametrize("key", ["smtp_timeout", "smtp_session_limit"])
def test_bs_timeout_of_zero_is_a_configuration_error(bs_env: Env, key: str) -> None:
    bs_env.config.write_text(bs_env.config.read_text() + f"\n[submit]\n{key} = 0\n")

    proc = bs_env.sendmail("-bs", input=b"QUIT\r\n")

    assert proc.returncode == 78 and f"submit.{key}".encode() in proc.stderr and proc.stdout == b""
