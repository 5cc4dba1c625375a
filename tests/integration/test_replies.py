"""Every shape of relay reply, to every command, against the real transport.

The relay (tests/fakes/relay.py) reshapes its own reply to one command per
test (``@pytest.mark.relay_reply``): multi-line (RFC 5321 4.2.1), huge,
dripping one byte at a time, malformed, codes outside 2xx-5xx, mismatched
codes across lines, an empty text, bytes that are not UTF-8.  Whatever the
shape, ``sendmail -q`` must record each outcome once: no duplicate, no
"internal error", nothing lost, one printable log line per event.
"""

from __future__ import annotations

import pytest

from tests.conftest import Env
from tests.fakes.relay import REPLY_COMMANDS, Relay
from tests.integration.test_relay import (
    SENDER, failed_ids, mailq, make_env, parse, password_file, relay_table, run_queue, submit,
)

# Shapes a correct client reads as the reply the relay meant.
READABLE = ("multiline", "mismatched", "huge", "drip", "empty-text", "non-utf8")
# Shapes no client can read: the session is out of step and is closed.
UNREADABLE = ("oversized", "malformed", "code-199", "code-600")


def clean_log(stderr: str) -> None:
    assert "internal error" not in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert "\x1b" not in stderr and "\x00" not in stderr, "a relay's control bytes reached the log"


def copies(relay: Relay, subject: str) -> int:
    return sum(1 for m in relay.messages if parse(m.data)["Subject"] == subject)


@pytest.mark.relay_reply("EOD", "multiline")
def test_multiline_250_to_end_of_data_delivers_once_and_bounces_refused_recipient(tmp_path, relay_factory) -> None:
    # The bug: the 250's line breaks reached the done/failed records, which
    # refuse them; the per-message boundary logged "internal error", the
    # outcome was never recorded, and every run sent the message again.
    relay = relay_factory("implicit")
    relay.rcpt_replies["nobody@example.net"] = "550 5.1.1 No such user"
    e = make_env(tmp_path, relay_table(relay, password_file(tmp_path)))
    qid = submit(e, "someone@example.net", "nobody@example.net", subject="once")

    logs = [run_queue(e) for _ in range(3)]

    for stderr in logs:
        clean_log(stderr)
    assert copies(relay, "once") == 1
    assert qid in failed_ids(e) and mailq(e) == []
    bounces = [m for m in relay.messages if m.rcpt_tos == [SENDER]]
    assert len(bounces) == 1 and b"nobody@example.net" in bounces[0].data
    # The joined reply, on one line, with the enhanced code once.
    assert "status=sent (250 2.0.0 Ok: queued as R1 and the relay has more to say Ok: queued as R1)" in logs[0]


@pytest.mark.relay_reply("EOD", "multiline")
def test_multiline_250_to_end_of_data_sends_once_through_the_daemon_across_flushes(tmp_path, relay_factory) -> None:
    relay = relay_factory("implicit")
    relay.rcpt_replies["nobody@example.net"] = "550 5.1.1 No such user"
    e = make_env(tmp_path, relay_table(relay, password_file(tmp_path)))
    submit(e, "someone@example.net", "nobody@example.net", subject="daemon once")
    from tests.integration.test_daemon import Daemon

    d = Daemon(e, tmp_path, "daemon").ready()
    try:
        relay.wait_for(2)  # the message and its bounce
        for _ in range(3):
            assert e.run("pysendmail", "flush", timeout=60).returncode == 0
        log = d.log()
    finally:
        d.stop()
        d.close()
    clean_log(log)
    assert copies(relay, "daemon once") == 1
    assert len([m for m in relay.messages if m.rcpt_tos == [SENDER]]) == 1
    assert mailq(e) == []


def _shaped(tmp_path, relay_factory, command: str, shape: str, rcpts: tuple[str, ...]) -> tuple[Relay, Env, str]:
    relay = relay_factory("implicit")
    relay.reply_shapes[command] = shape
    relay.rcpt_replies["nobody@example.net"] = "550 5.1.1 No such user"
    e = make_env(tmp_path, relay_table(relay, password_file(tmp_path)))
    qid = submit(e, *rcpts, subject="shaped")
    return relay, e, qid


@pytest.mark.parametrize("command", [c for c in REPLY_COMMANDS if c != "RSET"])
@pytest.mark.parametrize("shape", READABLE)
def test_readable_reply_shape_delivers_exactly_once(tmp_path, relay_factory, command: str, shape: str) -> None:
    relay, e, qid = _shaped(tmp_path, relay_factory, command, shape, ("someone@example.net",))

    logs = [run_queue(e), run_queue(e)]

    for stderr in logs:
        clean_log(stderr)
    assert copies(relay, "shaped") == 1
    assert mailq(e) == [] and failed_ids(e) == []


@pytest.mark.parametrize("shape", READABLE + UNREADABLE)
def test_reply_shape_to_rset_still_bounces_the_refused_recipient_once(tmp_path, relay_factory, shape: str) -> None:
    # RSET follows a refusal; whatever comes back, the refusal is recorded.
    relay, e, qid = _shaped(tmp_path, relay_factory, "RSET", shape, ("nobody@example.net",))

    logs = [run_queue(e), run_queue(e)]

    for stderr in logs:
        clean_log(stderr)
    assert qid in failed_ids(e) and mailq(e) == []
    assert copies(relay, "shaped") == 0
    assert len([m for m in relay.messages if m.rcpt_tos == [SENDER]]) == 1


@pytest.mark.parametrize("command", ["EHLO", "AUTH", "MAIL", "RCPT", "DATA"])
@pytest.mark.parametrize("shape", UNREADABLE)
def test_unreadable_reply_before_end_of_data_defers_and_sends_nothing(tmp_path, relay_factory, command: str,
                                                                     shape: str) -> None:
    relay, e, qid = _shaped(tmp_path, relay_factory, command, shape, ("someone@example.net",))

    stderr = run_queue(e)

    clean_log(stderr)
    assert relay.messages == []
    (entry,) = mailq(e)
    assert entry["queue_id"] == qid and entry["state"] == "deferred"
    assert failed_ids(e) == []
    # Fixed: the relay speaks properly again, and the message goes, once.
    relay.reply_shapes.clear()
    e.run("pysendmail", "route", "resume", "default")  # a malformed EHLO marked the route down
    clean_log(run_queue(e))
    assert copies(relay, "shaped") == 1 and mailq(e) == []


@pytest.mark.parametrize("shape", UNREADABLE)
def test_unreadable_reply_to_end_of_data_defers_without_bounce_or_internal_error(tmp_path, relay_factory,
                                                                                shape: str) -> None:
    # No client can tell whether such a relay took the message: it is
    # deferred (never bounced, never taken as sent); the retry may send it
    # again, the at-least-once window of DESIGN.md.
    relay, e, qid = _shaped(tmp_path, relay_factory, "EOD", shape, ("someone@example.net",))

    stderr = run_queue(e)

    clean_log(stderr)
    (entry,) = mailq(e)
    assert entry["queue_id"] == qid and entry["state"] == "deferred"
    assert "cannot use" in str(entry.get("reason", "")) or "cannot use" in stderr
    assert failed_ids(e) == []
    assert len(stderr.splitlines()) == len([ln for ln in stderr.splitlines() if ln.strip()])


@pytest.mark.parametrize("shape", UNREADABLE)
def test_unreadable_reply_to_quit_changes_nothing(tmp_path, relay_factory, shape: str) -> None:
    relay, e, qid = _shaped(tmp_path, relay_factory, "QUIT", shape, ("someone@example.net",))

    logs = [run_queue(e), run_queue(e)]

    for stderr in logs:
        clean_log(stderr)
    assert copies(relay, "shaped") == 1 and mailq(e) == []


@pytest.mark.parametrize("size", ["\u00b2", "9" * 5000, "-1", "10 20"])
def test_ehlo_size_no_number_can_read_is_ignored_and_the_message_goes(tmp_path, relay_factory, size: str) -> None:
    # "²" is a digit to str.isdigit() but not to int(); 5000 digits are over
    # int()'s conversion limit: either used to escape the session as ValueError.
    relay = relay_factory("implicit")
    relay.size_param = size
    e = make_env(tmp_path, relay_table(relay, password_file(tmp_path)))
    submit(e, "someone@example.net", subject="size")

    stderr = run_queue(e)

    clean_log(stderr)
    assert copies(relay, "size") == 1 and mailq(e) == []
