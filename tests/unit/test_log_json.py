"""core/log.py's JSON format: one object per line, the same fields as the Postfix-shaped line, exact values."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from pysendmail.core import log

HOSTILE = '"x>, status=sent, to=<boss"@example.org\r\nQID2: forged'


@pytest.fixture(autouse=True)
def json_format() -> Iterator[None]:
    log.set_format("json")
    yield
    log.set_format("text")


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    err = capsys.readouterr().err
    assert err.endswith("\n")
    return [json.loads(line) for line in err.splitlines()]


def delivery_event(rcpt: str, reply: str) -> None:
    log.event("5F2A1B3C4D5E6F708", f"to=<{log.safe(rcpt)}>", status=f"sent ({log.safe(reply)})", route="yandex",
              relay="smtp.yandex.ru[77.88.21.158]:465", tls="TLSv1.3", delay="0.42", tries=1, dsn="2.0.0")


def test_json_line_has_the_fields_of_the_text_line(capsys: pytest.CaptureFixture[str]) -> None:
    delivery_event("a@example.net", "250 2.0.0 Ok: queued on mx1 1712345678-abc")
    (record,) = lines(capsys)
    log.set_format("text")
    delivery_event("a@example.net", "250 2.0.0 Ok: queued on mx1 1712345678-abc")
    text = capsys.readouterr().err
    keys = [part.split("=", 1)[0] for part in text.split(": ", 1)[1].rstrip("\n").split(", ")]
    assert keys == ["to", "route", "relay", "tls", "delay", "tries", "dsn", "status"]
    assert set(keys) <= set(record)
    assert record["qid"] == "5F2A1B3C4D5E6F708" and record["to"] == "a@example.net"
    assert record["status"] == "sent" and record["reply"] == "250 2.0.0 Ok: queued on mx1 1712345678-abc"
    assert record["delay"] == 0.42 and record["tries"] == 1 and record["dsn"] == "2.0.0"
    assert isinstance(record["time"], str) and record["time"].endswith("Z")


def test_json_keeps_a_hostile_address_whole_in_one_field_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    delivery_event(HOSTILE, "550 5.1.1 <x>, status=sent\nforged")
    (record,) = lines(capsys)  # one line: the CRLF inside is JSON-escaped
    assert record["to"] == HOSTILE
    assert record["status"] == "sent" and record["reply"] == "550 5.1.1 <x>, status=sent\nforged"


def test_json_shows_undecodable_bytes_as_the_text_format_does(capsys: pytest.CaptureFixture[str]) -> None:
    rcpt = b"caf\xe9@example.net".decode("utf-8", "surrogateescape")
    delivery_event(rcpt, "250 ok")
    err = capsys.readouterr().err
    assert json.loads(err)["to"] == "caf\\xe9@example.net"
    err.encode("utf-8")  # valid UTF-8: no lone surrogate reached the stream


def test_json_pickup_line_splits_uid_and_login(capsys: pytest.CaptureFixture[str]) -> None:
    log.event("QID", "uid=1000 (alice)", f"from=<{log.safe('www@example.org')}>", size=512, nrcpt=3)
    (record,) = lines(capsys)
    assert record["uid"] == 1000 and record["login"] == "alice" and record["from"] == "www@example.org"
    assert record["size"] == 512 and record["nrcpt"] == 3


def test_json_plain_lines_carry_text_and_warning_level(capsys: pytest.CaptureFixture[str]) -> None:
    log.log("warning: cannot write spool/state: No space left on device")
    log.event("QID", "removed")
    first, second = lines(capsys)
    assert first["level"] == "warning" and first["text"].startswith("warning: cannot write")  # type: ignore[union-attr]
    assert second == {"time": second["time"], "qid": "QID", "text": "removed"}


@pytest.mark.parametrize("value", ["plain", "a,b", "x<y>z", "k=v", "back\\slash", "tab\there", "é ü", "\u202e",
                                   "\\x41 literal"])
def test_unsafe_reverses_safe(value: str) -> None:
    assert log.unsafe(log.safe(value)) == value


def test_observer_sees_the_fields_in_text_format_too(capsys: pytest.CaptureFixture[str]) -> None:
    log.set_format("text")
    seen: list[dict[str, object]] = []
    log.add_observer(seen.append)
    try:
        delivery_event("a@example.net", "250 ok")
    finally:
        log.remove_observer(seen.append)
    assert capsys.readouterr().err.startswith("5F2A1B3C4D5E6F708: to=<a@example.net>, route=yandex")
    assert seen[0]["status"] == "sent" and seen[0]["route"] == "yandex"
