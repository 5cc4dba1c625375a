"""PipeliningProtocol's reply reader: every reply paired with its command, whatever the segmentation.

The protocol sits on a real socket (a socketpair: what it writes really
goes out and is read back here); the relay's bytes are handed to its
``data_received`` in pieces cut where hypothesis chooses, which no real
network would let a test choose.  tests/integration/test_pipelining.py
drives the same code against a real relay.
"""

from __future__ import annotations

import asyncio
import socket

import aiosmtplib
import pytest
from aiosmtplib.protocol import MAX_LINE_LENGTH
from hypothesis import given, settings
from hypothesis import strategies as st

from pysendmail.daemon.transport.pipelining import (
    MAX_RESPONSE_LENGTH,
    PipeliningProtocol,
    normalize_message_line_endings,
)

TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
REPLY = st.tuples(st.sampled_from([211, 250, 251, 354, 421, 451, 503, 550, 554]), st.lists(TEXT, min_size=1, max_size=4))


def wire(code: int, lines: list[str]) -> bytes:
    """RFC 5321 4.2.1: continuation lines 'code-text', the last 'code text'."""
    out = [f"{code}-{text}" for text in lines[:-1]] + [f"{code} {lines[-1]}"]
    return "".join(line + "\r\n" for line in out).encode()


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


async def connected() -> tuple[PipeliningProtocol, socket.socket]:
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    proto = PipeliningProtocol(loop=loop)
    await loop.create_connection(lambda: proto, sock=ours)
    proto.data_received(b"220 ready\r\n")
    assert (await proto.read_response(1)).code == 220
    return proto, theirs


@settings(max_examples=300, deadline=None)
@given(replies=st.lists(REPLY, min_size=1, max_size=12), cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_replies_split_and_merged_anywhere_each_reach_their_own_command(replies, cuts) -> None:
    async def go() -> None:
        proto, theirs = await connected()
        waiters = proto.send(b"NOOP\r\n" * len(replies), len(replies))
        for piece in pieces(b"".join(wire(c, lines) for c, lines in replies), cuts):
            proto.data_received(piece)
        got = [await asyncio.wait_for(w, 1) for w in waiters]
        assert [(r.code, r.message) for r in got] == [(c, "\n".join(t.strip(" \t") for t in lines))
                                                       for c, lines in replies]
        assert theirs.recv(65536) == b"NOOP\r\n" * len(replies)  # one write, really sent
        assert proto.is_connected and proto.outstanding == 0
        theirs.close()

    asyncio.run(go())


@settings(max_examples=100, deadline=None)
@given(first=REPLY, extra=REPLY, cuts=st.lists(st.integers(0, 1000), max_size=10))
def test_reply_nobody_asked_for_closes_connection_and_fails_what_follows(first, extra, cuts) -> None:
    # An extra reply would otherwise be taken as the answer to the next
    # command (the mis-pairing aiosmtplib avoids by dropping such bytes).
    async def go() -> None:
        proto, theirs = await connected()
        (waiter,) = proto.send(b"NOOP\r\n", 1)
        for piece in pieces(wire(*first) + wire(*extra), cuts):
            proto.data_received(piece)
        assert (await waiter).code == first[0]
        assert not proto.is_connected
        with pytest.raises(aiosmtplib.SMTPResponseException) as raised:
            proto.send(b"NOOP\r\n", 1)
        assert raised.value.code == -1 and "no command outstanding" in raised.value.message
        theirs.close()

    asyncio.run(go())


@pytest.mark.parametrize("junk, why", [
    (b"2x0 not a code\r\n", "Malformed"),
    (b"250" + b"x" * (MAX_LINE_LENGTH + 10), "too long"),  # no line end ever comes
    ((b"250-" + b"y" * 1000 + b"\r\n") * (MAX_RESPONSE_LENGTH // 1000 + 2), "too long"),
])
def test_unreadable_reply_fails_every_outstanding_command_and_closes(junk: bytes, why: str) -> None:
    async def go() -> None:
        proto, theirs = await connected()
        waiters = proto.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", 3)
        held = 0
        for i in range(0, len(junk), 7):  # a relay dripping bytes
            proto.data_received(junk[i : i + 7])
            held = max(held, len(proto._pending))
        assert held <= MAX_RESPONSE_LENGTH + 7  # bounded whatever the relay sends
        for w in waiters:
            with pytest.raises(aiosmtplib.SMTPResponseException) as raised:
                await w
            assert raised.value.code == -1 and why in raised.value.message
        assert not proto.is_connected
        theirs.close()

    asyncio.run(go())


def test_connection_lost_mid_group_fails_every_outstanding_command() -> None:
    async def go() -> None:
        proto, theirs = await connected()
        waiters = proto.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", 3)
        proto.data_received(b"250 ok\r\n250 o")
        theirs.close()
        assert (await waiters[0]).code == 250
        for w in waiters[1:]:
            with pytest.raises(aiosmtplib.SMTPServerDisconnected):
                await asyncio.wait_for(w, 5)

    asyncio.run(go())


def test_one_command_calls_queue_behind_pipelined_replies() -> None:
    # aiosmtplib's own execute_command on the same protocol takes the
    # reply after those of the group written before it.
    async def go() -> None:
        proto, theirs = await connected()
        waiters = proto.send(b"RSET\r\nNOOP\r\n", 2)
        quit_ = asyncio.ensure_future(proto.execute_command(b"QUIT", timeout=1))
        await asyncio.sleep(0)
        proto.data_received(b"250 reset\r\n250 noop\r\n221 bye\r\n")
        assert [(await w).message for w in waiters] == ["reset", "noop"]
        assert (await quit_).code == 221
        assert theirs.recv(100) == b"RSET\r\nNOOP\r\nQUIT\r\n"
        theirs.close()

    asyncio.run(go())


# ---------------------------------------------------------------- Pipeline against a scripted server
class Scripted:
    """A plain-TCP SMTP server on loopback answering each command line as ``answer`` says; records what it read."""

    def __init__(self, answer) -> None:  # type: ignore[no-untyped-def]
        self.answer = answer
        self.received = bytearray()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        in_data = False
        while line := await reader.readline():
            self.received += line
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    writer.write(self.answer("EOD"))
                continue
            verb = line.split(b" ", 1)[0].strip().upper().decode()
            reply = self.answer(verb)
            in_data = verb == "DATA" and reply.startswith(b"354")
            writer.write(reply)
            if verb == "QUIT":
                break
        writer.close()


async def scripted_session(answer):  # type: ignore[no-untyped-def]
    from pysendmail.daemon.transport.pipelining import Pipeline, PipeliningSMTP

    server = Scripted(answer)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    smtp = PipeliningSMTP(hostname="127.0.0.1", port=port, use_tls=False, start_tls=False, timeout=5)
    await smtp.connect()
    await smtp.ehlo()
    assert smtp.pipelining
    return server, srv, smtp, Pipeline(smtp, timeout=5)


def test_354_after_every_rcpt_refused_gets_a_lone_dot_and_is_not_the_outcome() -> None:
    # RFC 2920 3.1: a server may accept DATA with no recipient; the client
    # then sends a single dot, never the message, and the reply to it is
    # about an empty transaction.
    from pysendmail.daemon.transport.pipelining import Transaction

    def answer(verb: str) -> bytes:
        return {"EHLO": b"250-scripted\r\n250 PIPELINING\r\n", "MAIL": b"250 ok\r\n",
                "RCPT": b"550 5.1.1 no such user\r\n", "DATA": b"354 go ahead anyway\r\n",
                "EOD": b"554 5.5.1 no valid recipients\r\n", "QUIT": b"221 bye\r\n"}.get(verb, b"250 ok\r\n")

    async def go() -> None:
        server, srv, smtp, pipeline = await scripted_session(answer)
        replies = await pipeline.send(Transaction("a@example.org", ("b@example.net",), b"Subject: secret\r\n\r\nbody\r\n"))
        assert replies.mail.code == 250 and [r.code for r in replies.rcpt] == [550] and replies.data is None
        await smtp.quit()
        srv.close()
        assert b"secret" not in server.received
        assert server.received.endswith(b"DATA\r\n.\r\nQUIT\r\n")

    asyncio.run(go())


def test_421_mid_group_fails_its_transaction_and_the_rest_were_never_answered() -> None:
    from pysendmail.daemon.transport.pipelining import NotSent, ReplyError, Transaction

    seen: list[str] = []

    def answer(verb: str) -> bytes:
        seen.append(verb)
        if verb == "EHLO":
            return b"250-scripted\r\n250 PIPELINING\r\n"
        if verb == "RCPT" and seen.count("RCPT") == 2:
            return b"421 4.3.2 shutting down\r\n"
        return {"DATA": b"354 go\r\n", "EOD": b"250 queued\r\n"}.get(verb, b"250 ok\r\n")

    async def go() -> None:
        server, srv, smtp, pipeline = await scripted_session(answer)
        first = asyncio.ensure_future(pipeline.send(Transaction("a@x.org", ("one@x.net",), b"one\r\n")))
        second = asyncio.ensure_future(pipeline.send(Transaction("a@x.org", ("two@x.net",), b"two\r\n")))
        third = asyncio.ensure_future(pipeline.send(Transaction("a@x.org", ("three@x.net",), b"three\r\n")))
        assert (await first).data is not None and (await first).data.code == 250  # type: ignore[union-attr]
        with pytest.raises(ReplyError) as raised:
            await second
        assert raised.value.code == 421 and raised.value.command == "RCPT"
        with pytest.raises(NotSent):
            await third
        assert pipeline.broken and not smtp.is_connected
        srv.close()

    asyncio.run(go())


@pytest.mark.parametrize(("content", "sent"), [
    (b"a\r\nb\r\n", b"a\r\nb\r\n"),  # what the daemon queues: unchanged
    (b"a\nb", b"a\r\nb\r\n"),
    (b"a\rb\r\n", b"a\r\nb\r\n"),  # a lone CR ends a line, as aiosmtplib's DATA has it
    (b"a\r\r\nb\n\r", b"a\r\n\r\nb\r\n\r\n"),
    (b"", b"\r\n"),
])
def test_message_line_endings_become_crlf_with_one_at_the_end(content: bytes, sent: bytes) -> None:
    assert normalize_message_line_endings(content) == sent
