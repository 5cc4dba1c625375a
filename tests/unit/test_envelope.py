"""Envelope.replace: the one way an envelope is derived from another (core/spoolfile.py)."""

from __future__ import annotations

from pysendmail.core import spoolfile


def full_envelope() -> spoolfile.Envelope:
    return spoolfile.Envelope("a@example.org", ["b@example.org", "c@example.org"], uid=1000, time=12.5,
                              fullname="A. Person", login="alice", envid="ID1", notify="FAILURE", ret="HDRS",
                              body="8BITMIME")


def fields(env: spoolfile.Envelope) -> dict[str, object]:
    return {slot: getattr(env, slot) for slot in spoolfile.Envelope.__slots__}


def test_replace_keeps_every_field_not_given_when_changing_one() -> None:
    env = full_envelope()
    changed = env.replace(sender="d@example.org")
    assert fields(changed) == {**fields(env), "sender": "d@example.org"}
    assert fields(env)["sender"] == "a@example.org"  # the original is untouched


def test_replace_copies_the_recipients_when_not_given() -> None:
    env = full_envelope()
    copy = env.replace()
    copy.recipients.append("e@example.org")
    assert env.recipients == ["b@example.org", "c@example.org"]


def test_replace_changes_every_field_it_is_given() -> None:
    changed = full_envelope().replace(sender="", recipients=["x@example.net"], uid=0, login="root", body="7BIT")
    assert (changed.sender, changed.recipients, changed.uid, changed.login, changed.body) == (
        "", ["x@example.net"], 0, "root", "7BIT")
    assert (changed.envid, changed.notify, changed.ret, changed.fullname, changed.time) == (
        "ID1", "FAILURE", "HDRS", "A. Person", 12.5)
