"""Properties of the address scanner and of ``sendmail -t -i``, checked with Hypothesis.

(a) However a list of valid addresses is written in a To field (bare,
    angle brackets, display names quoted or not, comments, groups,
    folding), the scanner returns exactly those addresses, in order.
(b) Whatever text a caller puts in the header section, the real
    ``sendmail -t -i`` either queues the message with the recipients the
    scanner reads (and nothing that could inject a line), or exits 64/65
    with one line on stderr and nothing queued; never a traceback, never
    a temporary failure that would make PHP retry a poison message.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pysendmail.core import rfc5322, spoolfile
from pysendmail.submit import intake
from tests.conftest import Env

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
UNICODE = "äöüßéçñøåжяλπ中文日本한국"

# ------------------------------------------------------------ addr-specs
atom = st.text(alphabet=ATEXT + UNICODE, min_size=1, max_size=8)
dot_atom_local = st.lists(atom, min_size=1, max_size=3).map(".".join)

# qcontent: printable ASCII but '"' and '\', which appear escaped; spaces and
# specials (comma, @, <, >, ;, :) are what quoting is for.
_QTEXT = "".join(chr(c) for c in range(33, 127) if chr(c) not in '"\\') + " "
qpiece = st.one_of(st.text(alphabet=_QTEXT, min_size=1, max_size=4), st.sampled_from(['\\"', "\\\\", " ", ",", "@", ";"]))
quoted_local = st.lists(qpiece, min_size=1, max_size=5).map(lambda parts: '"' + "".join(parts) + '"')

# RFC 5321 4.1.2 Domain: a label neither starts nor ends with a hyphen.
label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10).filter(
    lambda s: s[0] != "-" and s[-1] != "-")
uni_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz" + UNICODE, min_size=1, max_size=6)
domain = st.one_of(
    st.lists(st.one_of(label, uni_label), min_size=1, max_size=3).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: "[%d.%d.%d.%d]" % t),
)
addr_spec = st.builds(lambda local, dom: f"{local}@{dom}", st.one_of(dot_atom_local, dot_atom_local, quoted_local), domain)

# ------------------------------------------------------------ renderings
word = st.text(alphabet=ATEXT + UNICODE, min_size=1, max_size=8)
phrase = st.lists(st.one_of(word, st.just("Q.")), min_size=1, max_size=3).map(" ".join)
_NAME_TEXT = "".join(chr(c) for c in range(32, 127) if chr(c) not in '"\\') + UNICODE
quoted_name = st.text(alphabet=_NAME_TEXT, max_size=15).map(lambda s: '"' + s + '"')
_CTEXT = "".join(chr(c) for c in range(32, 127) if chr(c) not in "()\\") + UNICODE
comment_text = st.text(alphabet=_CTEXT, max_size=12)
comment = st.one_of(
    comment_text.map(lambda s: f"({s})"),
    st.tuples(comment_text, comment_text).map(lambda t: f"({t[0]} ({t[1]}) \\) more)"),  # nested, escaped paren
)


@st.composite
def mailbox(draw: st.DrawFn) -> tuple[str, str]:
    """(rendered mailbox, its addr-spec)."""
    addr = draw(addr_spec)
    style = draw(st.sampled_from(["bare", "angle", "name", "quoted-name", "comment-after", "comment-before", "name-comment"]))
    if style == "bare":
        text = addr
    elif style == "angle":
        text = f"<{addr}>"
    elif style == "name":
        text = f"{draw(phrase)} <{addr}>"
    elif style == "quoted-name":
        text = f"{draw(quoted_name)} <{addr}>"
    elif style == "comment-after":
        text = f"{addr} {draw(comment)}"
    elif style == "comment-before":
        text = f"{draw(comment)} {addr}"
    else:
        text = f"{draw(phrase)} {draw(comment)} <{addr}>"
    return text, addr


@st.composite
def address_list(draw: st.DrawFn) -> tuple[str, list[str]]:
    """(rendered To value, its addr-specs in order): mailboxes and groups."""
    items: list[str] = []
    expected: list[str] = []
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.integers(0, 4)) == 0:
            members = draw(st.lists(mailbox(), max_size=3))
            name = draw(st.one_of(phrase, quoted_name.filter(lambda q: q != '""')))
            items.append(f"{name}: " + ", ".join(m for m, _ in members) + ";")
            expected += [a for _, a in members]
        else:
            text, addr = draw(mailbox())
            items.append(text)
            expected.append(addr)
    separators = draw(st.lists(st.sampled_from([", ", ",", " , ", ",\r\n ", ",\r\n\t", "\r\n , "]),
                               min_size=len(items), max_size=len(items)))
    value = items[0]
    for sep, item in zip(separators, items[1:]):
        value += sep + item
    return value, expected


def to_field_value(message: bytes) -> list[str]:
    """The recipients sendmail -t reads from a message, through the library."""
    head, _ = rfc5322.split_message(rfc5322.normalise_newlines(message))
    intake.check_header_section(head)
    return intake.recipients_from_headers(rfc5322.header_fields(head))


@settings(max_examples=300, deadline=None)
@given(address_list())
def test_parse_address_list_returns_exactly_the_addresses_when_rendered_in_any_rfc5322_style(case: tuple[str, list[str]]) -> None:
    value, expected = case
    assert rfc5322.parse_address_list(rfc5322.unfold(value.encode())) == expected


@settings(max_examples=300, deadline=None)
@given(address_list())
def test_header_parsing_returns_exactly_the_addresses_when_the_to_field_is_folded(case: tuple[str, list[str]]) -> None:
    value, expected = case
    message = b"Subject: x\r\nTo: " + value.encode() + b"\r\n\r\nbody\r\n"
    assert to_field_value(message) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(addr_spec, min_size=1, max_size=5))
def test_parse_recipient_arg_returns_the_addresses_when_given_a_comma_list(addrs: list[str]) -> None:
    assert rfc5322.parse_recipient_arg(", ".join(addrs)) == addrs


@settings(max_examples=300, deadline=None)
@given(addr_spec)
def test_check_addr_spec_accepts_the_address_when_generated_valid(addr: str) -> None:
    rfc5322.check_addr_spec(addr)


# ------------------------------------------------------------ end to end
HOSTILE = list(':;<>"()[]@,.\\ \t\r\n\0') + ["\r\n ", "\n\n", "\r", "a@x.test", "Bcc: ", "<b@y.test>", "(", ")", '"']
hostile_text = st.lists(
    st.one_of(st.sampled_from(HOSTILE), st.characters(exclude_categories=("Cs",)), st.text(alphabet=ATEXT, min_size=1, max_size=5)),
    max_size=30,
).map("".join)
header_text = st.one_of(
    hostile_text.map(str.encode),
    st.tuples(hostile_text, st.binary(max_size=4)).map(lambda t: t[0].encode() + t[1]),
    address_list().map(lambda case: case[0].encode()),
)

E2E = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def clear_incoming(env: Env) -> None:
    for name in env.incoming():
        os.unlink(env.spool / "incoming" / name)


def queued(env: Env) -> list[tuple[spoolfile.Envelope, bytes]]:
    out = []
    for name in env.incoming():
        envelope, message, _ = spoolfile.decode((env.spool / "incoming" / name).read_bytes())
        out.append((envelope, message))
    return out


def check_outcome(env: Env, message: bytes) -> tuple[int, list[str]]:
    """Run sendmail -t -i on ``message``; assert the invariants; return (code, recipients)."""
    clear_incoming(env)
    proc = env.sendmail("-t", "-i", input=message)
    err = proc.stderr.decode("utf-8", "replace")
    if proc.returncode == 0:
        [(envelope, stored)] = queued(env)
        assert err == ""
        assert rfc5322.normalise_newlines(message).endswith(stored)  # an mbox "From " line is dropped
        for rcpt in envelope.recipients:
            rfc5322.check_addr_spec(rcpt)  # nothing that could inject a line into SMTP
        assert envelope.recipients == to_field_value(stored)
        return 0, envelope.recipients
    assert proc.returncode in (64, 65), err
    assert "Traceback" not in err
    assert err.startswith("sendmail: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert env.incoming() == []
    return proc.returncode, []


@pytest.mark.slow
@E2E
@given(header_text)
def test_sendmail_t_queues_the_parsed_recipients_or_exits_64_65_when_given_any_to_text(env: Env, text: bytes) -> None:
    check_outcome(env, b"Subject: property\nTo: " + text + b"\n\nbody\n")


@pytest.mark.slow
@E2E
@given(header_text, header_text)
def test_sendmail_t_queues_the_parsed_recipients_or_exits_64_65_when_any_text_fills_the_header_section(
    env: Env, first: bytes, second: bytes
) -> None:
    check_outcome(env, first + b"\nCc: " + second + b"\n\nbody\n")


@pytest.mark.slow
@E2E
@given(address_list())
def test_sendmail_t_queues_exactly_the_addresses_when_the_to_field_is_valid(env: Env, case: tuple[str, list[str]]) -> None:
    value, expected = case
    code, recipients = check_outcome(env, b"To: " + value.encode() + b"\nSubject: x\n\nbody\n")
    if expected:
        assert (code, recipients) == (0, expected)
    else:
        assert code == 64  # only empty groups: no recipient at all
