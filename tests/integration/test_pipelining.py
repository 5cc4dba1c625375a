"""PIPELINING and CHUNKING against a relay that really pipelines (tests/fakes/relay.py).

The relay processes pipelined commands in order and writes its replies
together only when no complete command is left in its input, as a
pipelining server does; ``split_replies`` cuts what it writes at chosen
byte offsets, so replies reach the client merged and split.  Each test runs
the daemon's SmtpTransport in this process with several ``deliver`` calls
at once on a pool of one connection unless said otherwise, and checks each
message's own Results against what the relay recorded.  The daemon itself
is killed with SIGKILL mid-group at the end.
"""

from __future__ import annotations

import asyncio
import collections
import random
import signal
import time
from pathlib import Path

import pytest

from pysendmail.core import spoolfile
from pysendmail.core.queue import QueuedMessage
from pysendmail.daemon.transport.base import DEFERRED, FAILED, SENT, Result
from pysendmail.daemon.transport.smtp import SmtpTransport
from tests.conftest import relay_env
from tests.fakes.relay import PASSWORD, USER, Relay
from tests.integration.test_daemon import Daemon, subject, submit

VERBS = {"EHLO", "AUTH", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT"}


def transport(relay: Relay, **extra: object) -> SmtpTransport:
    settings: dict[str, object] = {"host": "localhost", "port": relay.port, "tls": "implicit", "username": USER,
                                   "password": PASSWORD, "ca_file": str(relay.ca_file), "timeout": 10,
                                   "pool_size": 1, **extra}
    return SmtpTransport(settings, "client.example.org")


def message(n: int, rcpts: list[str], sender: str | None = None) -> QueuedMessage:
    sender = sender or f"sender{n}@example.org"
    env = spoolfile.Envelope(sender, rcpts, uid=0, time=time.time())
    # A line that starts with a dot: dot-stuffed for DATA, sent as is with BDAT.
    body = (f"From: <{sender}>\r\nTo: <{rcpts[0]}>\r\nSubject: message {n}\r\nMessage-ID: <m{n}@example.org>\r\n\r\n"
            f".a line with a leading dot\r\nbody of {n}\r\n").encode()
    return QueuedMessage(f"Q{n:04d}", "", spoolfile.encode(env, body))


def deliver_all(t: SmtpTransport, msgs: list[QueuedMessage], warm: QueuedMessage | None = None,
                before: object = None) -> list[list[Result]]:
    """Deliver ``msgs`` concurrently (after ``warm`` alone, then ``before()``), then close the transport."""
    async def go() -> list[list[Result]]:
        try:
            if warm is not None:
                await t.deliver(warm, list(range(len(warm.envelope.recipients))))
            if callable(before):
                before()
            return list(await asyncio.gather(*(t.deliver(m, list(range(len(m.envelope.recipients)))) for m in msgs)))
        finally:
            await t.close()

    return asyncio.run(go())


def by_index(results: list[Result]) -> dict[int, Result]:
    out = {r.index: r for r in results}
    assert len(out) == len(results), "one Result per recipient"
    return out


def recorded(relay: Relay) -> dict[str, list[str]]:
    """Subject -> recipients of each message the relay accepted (asserting no duplicate)."""
    got: dict[str, list[str]] = {}
    for m in relay.messages:
        subj = m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
        assert subj not in got, f"{subj} accepted twice"
        got[subj] = m.rcpt_tos
    return got


def assert_in_step(relay: Relay) -> None:
    """Nothing but commands reached the relay's command reader (no content sent where none was due)."""
    assert set(relay.commands) <= VERBS, collections.Counter(relay.commands)


@pytest.fixture(params=[False, True], ids=["data", "bdat"])
def chunking(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def mixed_batch(relay: Relay, count: int) -> tuple[list[QueuedMessage], dict[str, dict[int, str]]]:
    """Messages whose recipients are accepted, refused (550) or deferred (451), and each one's expected outcome."""
    msgs, expected = [], {}
    for n in range(count):
        rcpts = [f"ok{n}@example.net"]
        want = {0: SENT}
        if n % 3 == 1:
            rcpts += [f"refused{n}@example.net", f"later{n}@example.net", f"also{n}@example.net"]
            relay.rcpt_replies[rcpts[1]] = f"550 5.1.1 <{rcpts[1]}> no such user"
            relay.rcpt_replies[rcpts[2]] = f"451 4.3.0 <{rcpts[2]}> try later"
            want.update({1: FAILED, 2: DEFERRED, 3: SENT})
        msgs.append(message(n, rcpts))
        expected[f"message {n}"] = want
    return msgs, expected


def check_batch(relay: Relay, msgs: list[QueuedMessage], results: list[list[Result]],
                expected: dict[str, dict[int, str]]) -> None:
    got = recorded(relay)
    for msg, res in zip(msgs, results):
        subj = msg.message.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
        statuses = {i: r.status for i, r in by_index(res).items()}
        assert statuses == expected[subj], (subj, res)
        for i, r in by_index(res).items():
            rcpt = msg.envelope.recipients[i]
            if r.status != SENT:
                assert rcpt in r.text, (subj, r)  # its own RCPT reply, never another's
        sent = [msg.envelope.recipients[i] for i, s in sorted(statuses.items()) if s == SENT]
        assert got[subj] == sent
    for m in relay.messages:
        assert b"\r\n.a line with a leading dot\r\n" in m.data and b"\r\n..a line" not in m.data
    assert_in_step(relay)


def test_concurrent_deliveries_share_one_connection_and_each_gets_its_own_results(relay_factory,
                                                                                  chunking: bool) -> None:
    relay = relay_factory("implicit", chunking=chunking)
    msgs, expected = mixed_batch(relay, 14)

    results = deliver_all(transport(relay), msgs)

    check_batch(relay, msgs, results, expected)
    assert relay.logins == 1
    assert ("BDAT" in relay.commands) == chunking and ("DATA" in relay.commands) != chunking


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replies_split_and_merged_at_random_boundaries_keep_every_outcome(relay_factory, chunking: bool,
                                                                          seed: int) -> None:
    relay = relay_factory("implicit", chunking=chunking)
    rng = random.Random(seed)
    relay.split_replies = lambda n: [rng.randrange(1, n + 1) for _ in range(rng.randrange(0, 6))]
    msgs, expected = mixed_batch(relay, 9)

    results = deliver_all(transport(relay), msgs)

    check_batch(relay, msgs, results, expected)


def test_warm_connection_costs_one_round_trip_per_message(relay_factory, chunking: bool) -> None:
    relay = relay_factory("implicit", chunking=chunking)
    msgs = [message(n, [f"to{n}@example.net", f"cc{n}@example.net"]) for n in range(1, 11)]
    before = {}

    deliver_all(transport(relay), msgs, warm=message(0, ["warm@example.net"]),
                before=lambda: before.setdefault("flushes", relay.flushes))

    assert len(relay.messages) == 11 and relay.logins == 1
    # MAIL, 2 RCPT and DATA (or BDAT) of each message answered in one
    # flush with the previous message's end of data: one round trip each,
    # plus the last end of data and QUIT (one command at a time: 5 each).
    assert relay.flushes - before["flushes"] <= len(msgs) + 2
    assert relay.held >= 3 * len(msgs)  # at least MAIL and both RCPTs of each waited for its DATA


def test_relay_without_pipelining_gets_one_command_per_round_trip(relay_factory) -> None:
    relay = relay_factory("implicit", pipelining=False)
    msgs = [message(n, [f"to{n}@example.net", f"cc{n}@example.net"]) for n in range(1, 6)]
    before = {}

    results = deliver_all(transport(relay), msgs, warm=message(0, ["warm@example.net"]),
                          before=lambda: before.setdefault("flushes", relay.flushes))

    assert all(r.status == SENT for res in results for r in res) and len(relay.messages) == 6
    assert relay.flushes - before["flushes"] >= 5 * len(msgs)  # MAIL, RCPT, RCPT, DATA, end of data
    assert "RSET" not in relay.commands


def test_all_recipients_refused_sends_no_content_and_next_message_goes_through(relay_factory,
                                                                              chunking: bool) -> None:
    # RFC 2920 3.1: the pipelined DATA gets 503 (BDAT: 554, and RFC 3030's
    # indeterminate state until RSET); neither is the message's outcome.
    relay = relay_factory("implicit", chunking=chunking)
    relay.rcpt_replies["gone@example.net"] = "550 5.1.1 <gone@example.net> no such user"
    relay.rcpt_replies["busy@example.net"] = "452 4.2.2 <busy@example.net> mailbox full"
    refused = message(1, ["gone@example.net", "busy@example.net"])
    after = [message(n, [f"to{n}@example.net"]) for n in range(2, 6)]

    results = deliver_all(transport(relay), [refused, *after])

    first = by_index(results[0])
    assert (first[0].status, first[0].dsn) == (FAILED, "5.1.1") and "no such user" in first[0].text
    assert (first[1].status, first[1].dsn) == (DEFERRED, "4.2.2") and "mailbox full" in first[1].text
    assert all(r.status == SENT for res in results[1:] for r in res)
    assert sorted(recorded(relay)) == [f"message {n}" for n in range(2, 6)]
    assert_in_step(relay)  # the content never reached the command reader
    assert "RSET" in relay.commands


def test_mail_or_data_refusal_applies_only_to_its_message(relay_factory, chunking: bool) -> None:
    relay = relay_factory("implicit", chunking=chunking)
    relay.mail_replies["sender1@example.org"] = "550 5.7.1 sender1 is not allowed here"
    relay.data_replies["sender2@example.org"] = "554 5.6.0 the content of message 2 is refused"
    relay.data_replies["sender3@example.org"] = "451 4.3.0 message 3 could not be stored now"
    msgs = [message(n, [f"a{n}@example.net", f"b{n}@example.net"]) for n in range(6)]

    results = deliver_all(transport(relay), msgs)

    want = {0: SENT, 1: FAILED, 2: FAILED, 3: DEFERRED, 4: SENT, 5: SENT}
    texts = {1: "sender1 is not allowed", 2: "content of message 2", 3: "message 3 could not"}
    for n, res in enumerate(results):
        assert [r.status for r in res] == [want[n]] * 2, (n, res)
        if n in texts:
            assert all(texts[n] in r.text for r in res)
    assert sorted(recorded(relay)) == ["message 0", "message 4", "message 5"]
    assert_in_step(relay)


@pytest.mark.parametrize("command, shape", [("MAIL", "code-199"), ("RCPT", "code-600"), ("DATA", "code-199"),
                                            ("EOD", "malformed"), ("RCPT", "oversized")])
def test_out_of_step_reply_closes_connection_and_defers_without_loss(relay_factory, command: str,
                                                                     shape: str) -> None:
    relay = relay_factory("implicit")
    relay.reply_shapes[command] = shape
    msgs = [message(n, [f"to{n}@example.net"]) for n in range(5)]

    results = deliver_all(transport(relay, pool_size=2), msgs)

    flat = [r for res in results for r in res]
    assert all(r.status == DEFERRED for r in flat), flat
    assert any("cannot use" in r.text for r in flat)
    # The relay may have taken a message whose reply was unreadable (EOD):
    # a retry sends it again, never a loss.
    assert set(recorded(relay)) <= {f"message {n}" for n in range(5)}


def test_reply_to_no_command_closes_connection_and_next_message_goes_on_a_new_one(relay_factory) -> None:
    # The extra reply would otherwise answer the next message's MAIL.
    relay = relay_factory("implicit")
    relay.extra_after_eod = b"250 2.1.0 a reply to no command\r\n"
    msgs = [message(n, [f"to{n}@example.net"]) for n in range(1, 4)]

    results = deliver_all(transport(relay), msgs, warm=message(0, ["warm@example.net"]))

    assert all(r.status in (SENT, DEFERRED) for res in results for r in res)
    sent = {f"message {n}" for n, res in enumerate(results, 1) if res[0].status == SENT}
    # Sent exactly when the relay has it (DATA's content goes only after a
    # true 354): the extra reply never stood in for another's.
    assert sent == set(recorded(relay)) - {"message 0"}
    assert relay.logins >= 2  # the connection that heard it was closed, never reused


def test_bytes_injected_after_starttls_220_close_the_connection_and_nothing_is_sent(relay_factory) -> None:
    # RFC 3207 4.2: read inside TLS, they would answer the first command
    # (here a forged 250 to EHLO, then to MAIL).
    relay = relay_factory("starttls")
    relay.inject_after_starttls = b"250 forged.example\r\n250 2.1.0 forged\r\n"
    t = transport(relay, tls="starttls")

    results = deliver_all(t, [message(1, ["to1@example.net"])])

    (r,) = results[0]
    assert r.status == DEFERRED
    assert relay.logins == 0 and relay.mail_commands == [] and relay.messages == []
    assert not relay.saw_plaintext_mail


def test_connection_lost_mid_group_defers_everything_in_flight(relay_factory, chunking: bool) -> None:
    relay = relay_factory("implicit", chunking=chunking)
    relay.drop_in_data = True
    relay.fault_after = 3
    msgs = [message(n, [f"to{n}@example.net"]) for n in range(8)]

    results = deliver_all(transport(relay), msgs)

    got = recorded(relay)
    assert len(got) == 3
    sent = set()
    for msg, res in zip(msgs, results):
        (r,) = res
        subj = f"message {int(msg.qid[1:])}"
        assert r.status in (SENT, DEFERRED), (subj, r)  # never failed, never lost
        if r.status == SENT:
            sent.add(subj)
    # Sent means the relay has it; the relay may have one whose 250 was
    # still held in its output when it dropped (the final reply lost: sent
    # again later, the one duplicate allowed).
    assert sent <= set(got)


def test_stalled_relay_times_out_and_defers_every_transaction_in_flight(relay_factory, chunking: bool) -> None:
    relay = relay_factory("implicit", chunking=chunking)
    relay.stall_data = 4
    msgs = [message(n, [f"to{n}@example.net"]) for n in range(4)]

    results = deliver_all(transport(relay, timeout=1), msgs)

    assert all(r.status == DEFERRED and "timed out" in r.text.lower() for res in results for r in res), results
    assert relay.messages == []


def test_pool_opens_at_most_pool_size_connections_with_one_login_each(relay_factory) -> None:
    relay = relay_factory("implicit")
    msgs = [message(n, [f"to{n}@example.net"]) for n in range(40)]

    results = deliver_all(transport(relay, pool_size=3), msgs)

    assert all(r.status == SENT for res in results for r in res)
    assert len(recorded(relay)) == 40
    assert relay.logins == 3  # each connection logged in once, and all three were used


def test_sigkill_of_daemon_mid_group_loses_nothing(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = relay_env(tmp_path, relay)
    total = 40
    for n in range(total):
        submit(e, f"group {n:02d}")
    # The 11th message's end of data stalls at the relay while later
    # transactions of the same pipelines are in flight: kill -9 then.
    relay.stall_data = 30
    relay.fault_after = 10
    first = Daemon(e, tmp_path, "first")
    try:
        first.ready()
        assert relay.stalling.wait(60), "the relay never saw the stalled transaction"
        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(10) == -signal.SIGKILL
    finally:
        first.close()
    taken_before = len(relay.messages)
    relay.stall_data = 0

    second = Daemon(e, tmp_path, "second")
    try:
        second.ready()
        second.wait_notify("STATUS=queue: 0 messages, next attempt", timeout=120, prefix=True)
        assert second.stop() == 0
    finally:
        second.close()

    counts = collections.Counter(subject(m) for m in relay.messages)
    assert set(counts) == {f"group {n:02d}" for n in range(total)}, "every message delivered"
    # Only a message whose final reply was lost may come twice: those the
    # relay had accepted when the daemon died, at most.
    assert sum(n - 1 for n in counts.values()) <= taken_before
    assert e.queued() == [] and e.incoming() == []


def test_pool_size_is_capped_by_the_providers_published_connection_limit(relay_factory) -> None:
    # Microsoft 365 takes three connections per mailbox and answers a
    # fourth with "432 4.3.2 Concurrent connections limit exceeded".
    relay = relay_factory("implicit")
    settings = {"host": "localhost", "port": relay.port, "tls": "implicit", "username": USER, "password": PASSWORD,
                "ca_file": str(relay.ca_file), "timeout": 10, "pool_size": 10}
    t = SmtpTransport(settings, "client.example.org", provider="outlook")
    msgs = [message(n, [f"to{n}@example.net"]) for n in range(60)]

    results = deliver_all(t, msgs)

    assert all(r.status == SENT for res in results for r in res)
    assert t.pool_size == 3 and relay.logins == 3
