"""core/log.py: one line per call, and no value a user or relay controls can end a field (issue 10)."""

from __future__ import annotations

import pytest

from pysendmail.core import log

ATTACK = '"x>, uid=0 (root), from=<boss"@example.org'


def fields_of(line: str) -> list[str]:
    return line.split(": ", 1)[1].rstrip("\n").split(", ")


def test_event_keeps_one_uid_field_when_a_quoted_sender_forges_fields(capsys: pytest.CaptureFixture[str]) -> None:
    log.event("QID1", "uid=1000 (alice)", f"from=<{log.safe(ATTACK)}>", size=10)
    line = capsys.readouterr().err
    assert line.count("\n") == 1
    keys = [f.split("=", 1)[0] for f in fields_of(line)]
    assert keys == ["uid", "from", "size"]
    assert "uid=1000 (alice)" in fields_of(line)


@pytest.mark.parametrize("value", [", x=1", "a<b", "a>b", "k=v", "line\nbreak", "cr\rhere", "nul\0", "esc\x1b[31m",
                                   "del\x7f", "bidi\u202eoverride", "bad\udcff byte", "back\\slash"])
def test_safe_escapes_the_value_when_it_could_end_or_fake_a_field(value: str) -> None:
    out = log.safe(value)
    assert not any(c in out for c in ",<>=\r\n\0")
    assert out.isprintable()
    assert "\\x" in out or "\\u" in out


def test_safe_keeps_printable_utf8_and_plain_addresses_readable() -> None:
    assert log.safe("jürgen@пример.рф") == "jürgen@пример.рф"
    assert log.safe('"john smith"@example.org') == '"john smith"@example.org'


def test_event_escapes_keyword_field_values_when_they_come_from_outside(capsys: pytest.CaptureFixture[str]) -> None:
    log.event("QID2", relay="evil, status=sent")
    assert capsys.readouterr().err == "QID2: relay=evil\\x2c status\\x3dsent\n"


def test_log_writes_one_line_when_the_text_holds_line_breaks_and_controls(capsys: pytest.CaptureFixture[str]) -> None:
    log.log("a\r\nb\nc\rd\x00e\x1bf")
    assert capsys.readouterr().err == "a b c d\\x00e\\x1bf\n"
