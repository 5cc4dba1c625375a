"""wire.prepare: what the relay sees is wire-safe and decodes to exactly what was sent."""

from __future__ import annotations

import email
import email.header
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pysendmail.daemon import wire

HTML = ("<html><body>" + "<p>caf\u00e9 \u00fcber na\u00efve</p>" * 250 + "</body></html>").encode()
assert len(HTML) > 5000


def lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")


def assert_wire_safe(data: bytes, eightbit: bool) -> None:
    assert all(len(line) <= wire.MAX_LINE for line in lines(data)), "a line over 998 octets"
    assert data.count(b"\r") == data.count(b"\r\n") == data.count(b"\n"), "a bare CR or LF"
    if not eightbit:
        assert data.isascii()


def payload(data: bytes) -> bytes:
    """The decoded body of a single-part message, by the transfer encoding it declares."""
    import binascii

    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    raw = data.split(b"\r\n\r\n", 1)[1]
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    return binascii.a2b_qp(raw)


def php_message(body: bytes, extra: bytes = b"") -> bytes:
    return (b"To: a@example.net\r\nSubject: test\r\nFrom: www@example.org\r\n" + extra + b"\r\n" + body)


@pytest.mark.parametrize("eightbit", [True, False])
def test_html_line_of_5000_characters_is_quoted_printable_and_decodes_to_the_same_octets(eightbit: bool) -> None:
    msg = php_message(HTML + b"\r\n", b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n")
    out = wire.prepare(msg, eightbit=eightbit, utf8=False)
    assert_wire_safe(out.data, eightbit=False)
    assert b"Content-Transfer-Encoding: quoted-printable" in out.data
    assert payload(out.data) == HTML + b"\r\n"
    assert not out.body_8bitmime  # QP made it ASCII
    assert "long lines" in out.changes


def test_utf8_body_without_mime_headers_gets_them_and_goes_8bitmime_when_offered() -> None:
    body = "Привет, мир\r\n".encode()
    out = wire.prepare(php_message(body), eightbit=True, utf8=False)
    assert b"MIME-Version: 1.0\r\n" in out.data
    assert b"Content-Type: text/plain; charset=utf-8\r\n" in out.data
    assert b"Content-Transfer-Encoding: 8bit\r\n" in out.data
    assert out.data.endswith(b"\r\n\r\n" + body)  # body sent as it is
    assert out.body_8bitmime


def test_utf8_body_without_8bitmime_is_converted_to_quoted_printable() -> None:
    body = "Привет, мир\r\nвторая строка\r\n".encode()
    out = wire.prepare(php_message(body), eightbit=False, utf8=False)
    assert_wire_safe(out.data, eightbit=False)
    assert b"Content-Type: text/plain; charset=utf-8\r\n" in out.data
    assert payload(out.data) == body
    assert not out.body_8bitmime


def test_body_that_is_not_utf8_is_labelled_unknown_8bit() -> None:
    body = "Привет\r\n".encode("cp1251")
    out = wire.prepare(php_message(body), eightbit=False, utf8=False)
    assert b"charset=unknown-8bit" in out.data
    assert payload(out.data) == body


def test_ascii_message_that_fits_is_left_byte_for_byte() -> None:
    msg = php_message(b"hello\r\n")
    out = wire.prepare(msg, eightbit=False, utf8=False)
    assert out.data == msg and out.changes == []


def test_long_line_in_non_text_part_becomes_base64_and_other_parts_stay() -> None:
    blob = bytes(range(256)) * 8  # NUL, bare CR and LF, 8-bit, one 2048-octet "line"
    text = b"plain part\r\n"
    msg = php_message(
        b"preamble\r\n--XX\r\nContent-Type: text/plain\r\n\r\n" + text
        + b"\r\n--XX\r\nContent-Type: application/octet-stream\r\n\r\n" + blob + b"\r\n--XX--\r\nepilogue\r\n",
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n",
    )
    out = wire.prepare(msg, eightbit=True, utf8=False)
    assert_wire_safe(out.data, eightbit=False)
    parsed = email.message_from_bytes(out.data, policy=email.policy.compat32)
    first, second = parsed.get_payload()
    assert b"--XX\r\nContent-Type: text/plain\r\n\r\n" + text + b"\r\n--XX\r\n" in out.data  # untouched
    assert first.get_payload() == "plain part\r\n"
    assert second["Content-Transfer-Encoding"] == "base64"
    assert second.get_payload(decode=True) == blob
    assert b"\r\n--XX--\r\nepilogue\r\n" in out.data


def test_long_header_is_folded_at_white_space() -> None:
    to = ", ".join(f"user{n}@example.net" for n in range(100)).encode()
    msg = b"To: " + to + b"\r\nFrom: a@example.org\r\n\r\nx\r\n"
    out = wire.prepare(msg, eightbit=True, utf8=False)
    assert_wire_safe(out.data, eightbit=False)
    head = out.data.split(b"\r\n\r\n")[0]
    unfolded = head.replace(b"\r\n ", b" ").split(b"\r\n")[0]
    assert unfolded == b"To: " + to


def test_subject_that_cannot_be_folded_or_is_raw_utf8_becomes_encoded_words() -> None:
    subject = "ü" + "x" * 1200
    msg = b"From: a@example.org\r\nSubject: " + subject.encode() + b"\r\n\r\nx\r\n"
    out = wire.prepare(msg, eightbit=True, utf8=False)
    assert_wire_safe(out.data, eightbit=False)
    parsed = email.message_from_bytes(out.data, policy=email.policy.default)
    assert parsed["Subject"] == subject


def test_raw_utf8_header_is_kept_in_an_smtputf8_session() -> None:
    msg = "From: Jürgen <j@example.org>\r\nSubject: Grüße\r\n\r\nx\r\n".encode()
    out = wire.prepare(msg, eightbit=True, utf8=True)
    assert out.data == msg


def test_non_ascii_display_name_is_encoded_without_smtputf8() -> None:
    msg = "From: Jürgen Müller <j@example.org>\r\n\r\nx\r\n".encode()
    out = wire.prepare(msg, eightbit=True, utf8=False)
    parsed = email.message_from_bytes(out.data, policy=email.policy.default)
    assert out.data.split(b"\r\n\r\n")[0].isascii()
    assert parsed["From"].addresses[0].display_name == "Jürgen Müller"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.booleans(), st.sampled_from([b"text/plain", b"image/png"]))
def test_any_part_content_survives_exactly(content: bytes, eightbit: bool, ctype: bytes) -> None:
    content = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # the queue holds CRLF lines
    msg = php_message(content, b"MIME-Version: 1.0\r\nContent-Type: " + ctype + b"\r\n")
    out = wire.prepare(msg, eightbit=eightbit, utf8=False)
    assert all(len(line) <= wire.MAX_LINE for line in lines(out.data))
    parsed = email.message_from_bytes(out.data, policy=email.policy.compat32)
    cte = (parsed["Content-Transfer-Encoding"] or "7bit").lower()
    raw = out.data.split(b"\r\n\r\n", 1)[1]
    if cte == "quoted-printable":
        import binascii

        assert binascii.a2b_qp(raw) == content
    elif cte == "base64":
        import base64

        assert base64.b64decode(raw) == content
    else:
        assert raw == content


# ------------------------------------------------------------ pathological headers (issue 10), by construction
def assert_folded_exactly(line: bytes, folded: bytes) -> None:
    """Folding only inserted CRLF before white space: every line fits, none is only white space."""
    out = folded.split(b"\r\n")
    assert all(len(x) <= wire.MAX_LINE for x in out)
    assert all(x.strip(b" \t") for x in out), "a line of only white space"
    assert all(x[:1] in (b" ", b"\t") for x in out[1:])
    assert folded.replace(b"\r\n", b"") == line


@pytest.mark.parametrize(
    "line",
    [
        b"X-Long: " + b"a " * 1_000_000,  # issue 10's space-separated line, 2 MB here
        b"X-Long: " + b"abc\t" * 300_000,
        b"X-Runs: " + b"x" * 10 + b" " * 900 + b"y" + b" z" * 2000,  # a long run of spaces kept on one line
        b"X-Wide: " + (b"w" * 900 + b" ") * 500,  # no white space before column 78: the first one after it
        b"X-Tail: " + b"t " * 1000 + b" " * 3000,  # trailing white space is never a line of its own
    ],
    ids=["spaces", "tabs", "space-run", "wide-words", "trailing-space"],
)
def test_fold_line_folds_exactly_when_the_line_is_pathological(line: bytes) -> None:
    folded = wire.fold_line(line)
    if line.startswith(b"X-Tail"):
        assert folded is None or folded.replace(b"\r\n", b"") == line
        return
    assert folded is not None
    assert_folded_exactly(line, folded)


def test_fold_line_gives_up_when_a_word_is_longer_than_a_line() -> None:
    assert wire.fold_line(b"X-Word: " + b"w" * 2000 + b" tail") is None


def test_prepare_folds_a_huge_header_and_keeps_its_text_when_it_has_400000_continuation_lines() -> None:
    msg = b"From: a@example.org\r\nSubject: start\r\n" + b" x\r\n" * 400_000 + b"\r\nbody\r\n"
    out = wire.prepare(msg, eightbit=True, utf8=False)
    assert out.data == msg  # every line fits already: nothing to change, nothing copied per line


def test_bare_cr_in_a_header_becomes_a_space_and_never_starts_a_field() -> None:
    msg = b"From: a@example.org\r\nSubject: hi\rBcc: evil@example.com\r\n\r\nx\r\n"
    out = wire.prepare(msg, eightbit=True, utf8=False)
    assert b"\r\nSubject: hi Bcc: evil@example.com\r\n" in out.data
    assert out.data.count(b"\r") == out.data.count(b"\r\n")


@pytest.mark.parametrize("name", ["X-Note", "Comments", "Keywords", "Thread-Topic", "Organization", "X-Mailer"])
def test_unstructured_field_in_utf8_is_encoded_without_smtputf8(name: str) -> None:
    msg = f"From: a@example.org\r\n{name}: значение\r\n\r\nx\r\n".encode()
    out = wire.prepare(msg, eightbit=True, utf8=False)
    head = out.data.split(b"\r\n\r\n")[0]
    assert head.isascii()
    parsed = email.message_from_bytes(out.data, policy=email.policy.default)
    assert str(parsed[name]) == "значение"
    assert wire.prepare(msg, eightbit=True, utf8=True).data == msg  # SMTPUTF8: left as written


def test_keywords_are_encoded_phrase_by_phrase_when_some_are_utf8() -> None:
    msg = 'From: a@example.org\r\nKeywords: alpha, бета, "гамма, дельта"\r\n\r\nx\r\n'.encode()
    out = wire.prepare(msg, eightbit=True, utf8=False)
    value = out.data.split(b"Keywords:", 1)[1].split(b"\r\n\r\n")[0].replace(b"\r\n", b"")
    words = [str(email.header.make_header(email.header.decode_header(p.strip().decode())))
             for p in value.split(b",")]
    assert words == ["alpha", "бета", "гамма, дельта"]


def test_structured_field_in_utf8_is_left_for_the_relay_when_encoded_words_are_not_allowed() -> None:
    msg = "From: a@example.org\r\nMessage-ID: <ид@example.org>\r\n\r\nx\r\n".encode()
    out = wire.prepare(msg, eightbit=True, utf8=False)
    assert "Message-ID: <ид@example.org>\r\n".encode() in out.data


def test_one_rfc2047_encoder_serves_cleanup_display_names_too() -> None:
    from pysendmail.daemon import cleanup

    name = "Jürgen " * 20
    assert cleanup.display_name(name) == " ".join(wire.encoded_words(name))
    assert all(len(w) <= 75 for w in wire.encoded_words(name))
    decoded = email.header.make_header(email.header.decode_header(cleanup.display_name(name)))
    assert str(decoded) == name



def test_fold_line_gives_up_when_a_run_of_white_space_cannot_fit_a_line() -> None:
    # 5000 spaces cannot be split into lines of at most 998 octets that each hold a non-space.
    assert wire.fold_line(b"X-Runs: x" + b" " * 5000 + b"y") is None
