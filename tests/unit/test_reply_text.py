"""Relay replies as recorded and logged: one bounded printable line (outcome.reply_text, base.one_line)."""

from __future__ import annotations

from pysendmail.core import spoolfile
from pysendmail.daemon import outcome
from pysendmail.daemon.transport.base import SENT, TEXT_LIMIT, Result, one_line


def test_multiline_reply_joins_lines_and_keeps_the_enhanced_code_once() -> None:
    # What aiosmtplib gives for "550-5.4.5 Daily ...\r\n550-5.4.5 sending ...\r\n550 5.4.5 https://..."
    message = "5.4.5 Daily user sending limit exceeded.\n5.4.5 sending limits go to\n5.4.5 https://support.example"

    text = outcome.reply_text(550, message)

    assert text == "550 5.4.5 Daily user sending limit exceeded. sending limits go to https://support.example"
    assert outcome.enhanced(550, text.split(" ", 1)[1]) == "5.4.5"


def test_reply_text_of_any_shape_fits_a_state_record() -> None:
    shapes = [
        "Ok\nqueued as 1",
        "",
        "\udcff\udcfe bytes that are not UTF-8 \x00 \x1b[2J",
        "x" * 40000,
        "\ud800 a lone surrogate",
        "line\r\nbreaks\rand\ttabs\x7f\x85",
    ]
    for message in shapes:
        text = outcome.reply_text(250, message)
        assert len(text) <= TEXT_LIMIT
        assert text.isprintable(), text
        # The record that once refused a multi-line 250 ("internal error"):
        spoolfile.encode_record("done", 0, "1.000", text)
        spoolfile.encode_record("failed", 0, "1.000", text)


def test_result_text_is_always_one_line_whatever_the_transport_gives() -> None:
    r = Result(0, SENT, "2.0.0", "250 first\nsecond\x00third")

    assert r.text == "250 first second third"
    assert one_line("a\n\n b") == "a b"
