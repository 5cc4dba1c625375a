"""The one header and address scanner (pysendmail.core.rfc5322), on the forms RFC 5322 allows.

Addresses are written the way real mailers write them: display names,
quoted strings holding commas, comments (nested too), groups, obsolete
route-addrs, folded fields and UTF-8 (RFC 6532); and the refusals name the
value they refuse, because that sentence is all a PHP developer sees.
"""

from __future__ import annotations

import re

import pytest

from pysendmail.core.rfc5322 import (
    AddressError,
    ascii_address,
    check_addr_spec,
    header_fields,
    is_field_line,
    parse_address_list,
    parse_recipient_arg,
    parse_sender,
    qualify_address_list,
    split_message,
    unfold,
)


# ------------------------------------------------------------ address lists
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("john@example.org", ["john@example.org"]),
        ("John Doe <john@example.org>", ["john@example.org"]),
        ('"Doe, Jane" <jane@example.org>', ["jane@example.org"]),
        ('"Doe, Jane" <jane@example.org>, "Roe, Rick" <rick@example.net>', ["jane@example.org", "rick@example.net"]),
        ('"say \\"hi\\", then" <q@example.org>', ["q@example.org"]),
        ("Mary Smith <mary@x.test>, jdoe@example.org, Who? <one@y.test>", ["mary@x.test", "jdoe@example.org", "one@y.test"]),
        ("<boss@nil.test>", ["boss@nil.test"]),
        ("Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>", ["pete@silly.test"]),
        ("  a@x.test  ,  b@y.test  ", ["a@x.test", "b@y.test"]),
        ("a . b @ c . d", ["a.b@c.d"]),  # obs-local-part/obs-domain: CFWS around dots (RFC 5322 4.4)
        (", , a@x.test,,", ["a@x.test"]),  # empty list elements (RFC 5322 4.4)
        ("a@[192.0.2.1]", ["a@[192.0.2.1]"]),
        ('"quoted local"@example.org', ['"quoted local"@example.org']),
        ('"a,b"@example.org, c@example.org', ['"a,b"@example.org', "c@example.org"]),
        ("root", ["root"]),  # a bare local name (cron's "To: root")
        ("", []),
    ],
)
def test_parse_address_list_returns_addr_specs_when_written_in_rfc5322_forms(value: str, expected: list[str]) -> None:
    assert parse_address_list(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("John (a (nested) comment) <john@example.org>", ["john@example.org"]),
        ("john@example.org (John (the (deep) one))", ["john@example.org"]),
        ("(leading) a@x.test (trailing)", ["a@x.test"]),
        ("a@x.test (a comment, with a comma), b@y.test", ["a@x.test", "b@y.test"]),
        ("a@x.test (a comment with \\( an escaped paren)", ["a@x.test"]),
    ],
)
def test_parse_address_list_drops_comments_when_nested_or_holding_specials(value: str, expected: list[str]) -> None:
    assert parse_address_list(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("undisclosed-recipients:;", []),
        ("Undisclosed recipients: ;", []),
        ("friends: a@x.test, B <b@y.test>;, c@z.test", ["a@x.test", "b@y.test", "c@z.test"]),
        ("A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;", ["c@a.test", "joe@where.test", "jdoe@one.test"]),
        ("one: a@x.test;, two: b@y.test;", ["a@x.test", "b@y.test"]),
        ('"odd, name": a@x.test;', ["a@x.test"]),
    ],
)
def test_parse_address_list_returns_group_members_when_groups_are_used(value: str, expected: list[str]) -> None:
    assert parse_address_list(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<@relay1.test:user@host.test>", ["user@host.test"]),
        ("<@relay1.test,@relay2.test:user@host.test>", ["user@host.test"]),
        ("Joe <@relay.test:joe@host.test>, x@y.test", ["joe@host.test", "x@y.test"]),
    ],
)
def test_parse_address_list_drops_the_route_when_given_an_obsolete_route_addr(value: str, expected: list[str]) -> None:
    assert parse_address_list(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("jörg@bücher.example", ["jörg@bücher.example"]),
        ("Jörg Müller <jörg@bücher.example>", ["jörg@bücher.example"]),
        ("用户@例子.广告", ["用户@例子.广告"]),
        ('"Ünïcödé, Name" <u@example.org>', ["u@example.org"]),
    ],
)
def test_parse_address_list_keeps_utf8_when_addresses_are_internationalised(value: str, expected: list[str]) -> None:
    assert parse_address_list(value) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ('"unterminated <a@x.test>', "unterminated quoted string"),
        ("John Smith", "is not an address"),
        ("a b@c.test", "is not an address"),
        ("a..b@c", "is not an address"),
        (".a@x.test", "is not an address"),
        ("a.@x.test", "is not an address"),
        ("@x.test", "is not an address"),
        ("a@b@c.test", "is not an address"),
        ("a@x.test.", "invalid domain"),
        ("a@", "invalid domain"),
        ("a@ex!ample.test", "invalid domain"),
        ("(unclosed a@x.test", "unbalanced comment"),
        ("<a@x.test", "missing '>'"),
        ("<a@<b@x.test>>", "nested angle brackets"),
        ("<a@x.test> trailing words", "text after '>'"),
        ("a@x.test;", "';' outside a group"),
        ("team: a@x.test", "group without its closing ';'"),
        ("a@[192.0.2.1", "unterminated domain literal"),
        ("a\x01b@x.test", "is not allowed"),
        ("a@x.test\x00", "is not allowed"),
    ],
)
def test_parse_address_list_raises_address_error_naming_the_value_when_malformed(value: str, fragment: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address_list(value)
    text = str(info.value)
    assert fragment in text
    assert repr(value.strip())[1:-1][:20] in text  # the value itself is shown


def test_address_error_is_a_value_error_when_caught_generically() -> None:
    with pytest.raises(ValueError):
        parse_address_list("John Smith")


def test_parse_address_list_refuses_a_line_break_when_it_hides_inside_a_quoted_local_part() -> None:
    # Unfolding removes CRLF before parsing, so a CR or LF that survives to
    # the addr-spec can only be an injection attempt.
    with pytest.raises(AddressError, match="line break or NUL"):
        parse_address_list('"evil\rBcc: x"@example.org')


def test_parse_address_list_refuses_undecodable_bytes_when_in_the_address() -> None:
    with pytest.raises(AddressError, match="not valid UTF-8"):
        parse_address_list(b"caf\xe9@example.org".decode("utf-8", "surrogateescape"))


def test_parse_address_list_keeps_undecodable_bytes_when_only_in_a_display_name() -> None:
    name = b"Caf\xe9".decode("utf-8", "surrogateescape")
    assert parse_address_list(f"{name} <cafe@example.org>") == ["cafe@example.org"]


def test_parse_address_list_refuses_addresses_when_longer_than_254_octets() -> None:
    local = "a" * 64
    domain = ".".join(["b" * 60] * 4)  # 243 octets
    with pytest.raises(AddressError, match="longer than an address may be"):
        parse_address_list(f"{local}@{domain}")


@pytest.mark.parametrize("value", ["a@x.test", '"a b"@x.test', "root", "a@[IPv6:2001:db8::1]", "ü@ü.test"])
def test_check_addr_spec_accepts_the_value_when_it_is_an_addr_spec(value: str) -> None:
    check_addr_spec(value)


@pytest.mark.parametrize("value", ["", "a\nb@x.test", "a@x\r.test", "a\0@x.test", '"a"b@x.test', "a@x..test"])
def test_check_addr_spec_raises_when_the_value_is_not_an_addr_spec(value: str) -> None:
    with pytest.raises(AddressError):
        check_addr_spec(value)


# ------------------------------------------------------------ sender / argv
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ""),
        ("<>", ""),
        ("  <>  ", ""),
        ("bounce@example.org", "bounce@example.org"),
        ("<bounce@example.org>", "bounce@example.org"),
        ("Robot <robot@example.org>", "robot@example.org"),
        ("www-data", "www-data"),
    ],
)
def test_parse_sender_returns_the_address_when_given_a_sendmail_f_value(value: str, expected: str) -> None:
    assert parse_sender(value) == expected


@pytest.mark.parametrize("value", ["a@x.test\r\nBcc: evil@y.test", "a@x.test\n", "a@x.test\0"])
def test_parse_sender_raises_naming_the_value_when_it_holds_a_line_break(value: str) -> None:
    with pytest.raises(AddressError, match="line break or NUL") as info:
        parse_sender(value)
    assert repr(value) in str(info.value)


def test_parse_sender_raises_when_given_two_addresses() -> None:
    with pytest.raises(AddressError, match="not one address"):
        parse_sender("a@x.test, b@y.test")


def test_parse_recipient_arg_splits_the_value_when_given_a_comma_list() -> None:
    assert parse_recipient_arg("a@x.test, Bob <b@y.test>") == ["a@x.test", "b@y.test"]


@pytest.mark.parametrize("value", ["a@x.test\nb@y.test", "a@x.test\r", "a\0@x.test"])
def test_parse_recipient_arg_raises_naming_the_value_when_it_holds_cr_lf_or_nul(value: str) -> None:
    with pytest.raises(AddressError, match="line break or NUL") as info:
        parse_recipient_arg(value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", ["undisclosed-recipients:;", "", " , "])
def test_parse_recipient_arg_raises_when_the_value_holds_no_address(value: str) -> None:
    with pytest.raises(AddressError, match="is not an address"):
        parse_recipient_arg(value)


# ------------------------------------------------------------ qualification
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("root (Cron Daemon)", "root@example.org (Cron Daemon)"),
        ("Cron Daemon <root>", "Cron Daemon <root@example.org>"),
        ("root, a@x.test, www-data", "root@example.org, a@x.test, www-data@example.org"),
        ('"a@b" <c>', '"a@b" <c@example.org>'),
    ],
)
def test_qualify_address_list_adds_the_domain_when_names_are_bare(value: str, expected: str) -> None:
    assert qualify_address_list(value, "example.org") == expected


def test_qualify_address_list_returns_none_when_every_address_is_qualified() -> None:
    assert qualify_address_list("A <a@x.test>, b@y.test", "example.org") is None


# ------------------------------------------------------------ header fields
def test_header_fields_keeps_folding_and_unfold_joins_it_when_a_field_is_folded() -> None:
    head, body = split_message(b"To: a@x.test,\r\n b@y.test,\r\n\tc@z.test\r\nSubject: hi\r\n\r\nbody\r\n")
    fields = header_fields(head)
    assert fields == [("To", b" a@x.test,\r\n b@y.test,\r\n\tc@z.test"), ("Subject", b" hi")]
    assert unfold(fields[0][1]) == "a@x.test, b@y.test,\tc@z.test"
    assert parse_address_list(unfold(fields[0][1])) == ["a@x.test", "b@y.test", "c@z.test"]
    assert body == b"body\r\n"


def test_unfold_keeps_8bit_text_when_the_value_is_not_utf8() -> None:
    text = unfold(b" Caf\xe9 \r\n  au lait ")
    assert text.encode("utf-8", "surrogateescape") == b"Caf\xe9   au lait"


def test_header_fields_folds_a_display_name_split_inside_quotes_when_parsed() -> None:
    head, _ = split_message(b'To: "Doe,\r\n Jane" <jane@example.org>\r\n\r\n')
    [(name, value)] = header_fields(head)
    assert name == "To"
    assert parse_address_list(unfold(value)) == ["jane@example.org"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"Subject: x", True),
        (b"Subject : x", True),  # obs-optional (RFC 5322 4.5)
        (b"X-Weird-Name!#: x", True),
        (b"Subject:", True),
        (b": x", False),
        (b"Not a header", False),
        (b"Two words: x", False),
        (b"Caf\xc3\xa9: x", False),
        (b" Subject: x", False),
    ],
)
def test_is_field_line_accepts_only_printable_ascii_names_when_given_a_line(line: bytes, expected: bool) -> None:
    assert is_field_line(line) is expected


# ------------------------------------------------------------ split_message
def test_split_message_has_no_header_section_when_the_first_line_is_not_a_field() -> None:
    assert split_message(b"hello world\r\nTo: a@x.test\r\n") == (b"", b"hello world\r\nTo: a@x.test\r\n")


def test_split_message_has_no_header_section_when_the_message_starts_with_a_blank_line() -> None:
    assert split_message(b"\r\nTo: a@x.test\r\n") == (b"", b"To: a@x.test\r\n")


def test_split_message_returns_an_empty_body_when_there_are_only_headers() -> None:
    assert split_message(b"To: a@x.test\r\nSubject: hi\r\n") == (b"To: a@x.test\r\nSubject: hi\r\n", b"")


def test_split_message_ends_the_last_header_with_crlf_when_input_lacks_it() -> None:
    assert split_message(b"To: a@x.test\r\nSubject: hi") == (b"To: a@x.test\r\nSubject: hi\r\n", b"")


def test_split_message_reads_the_obsolete_space_before_colon_when_present() -> None:
    head, body = split_message(b"Subject : obsolete\r\nTo : a@x.test\r\n\r\nbody\r\n")
    assert header_fields(head) == [("Subject", b" obsolete"), ("To", b" a@x.test")]
    assert body == b"body\r\n"


def test_split_message_ends_the_header_section_when_a_line_is_not_a_field() -> None:
    head, body = split_message(b"To: a@x.test\r\nnot a header\r\n\r\nbody\r\n")
    assert head == b"To: a@x.test\r\n"
    assert body == b"not a header\r\n\r\nbody\r\n"


def test_split_message_ends_the_header_section_at_a_non_field_line_when_there_is_no_blank_line() -> None:
    # Regression: without a blank line the whole message was taken as
    # headers, so -t extracted a "Bcc:" line written in the body.
    head, body = split_message(b"To: a@x.test\r\nthis is body text\r\nBcc: evil@y.test\r\n")
    assert head == b"To: a@x.test\r\n"
    assert body == b"this is body text\r\nBcc: evil@y.test\r\n"
    assert header_fields(head) == [("To", b" a@x.test")]


def test_split_message_keeps_the_blank_line_in_the_body_when_the_body_has_more_blank_lines() -> None:
    assert split_message(b"A: 1\r\n\r\n\r\nx\r\n") == (b"A: 1\r\n", b"\r\nx\r\n")


def test_split_message_returns_nothing_when_the_message_is_empty() -> None:
    assert split_message(b"") == (b"", b"")


@pytest.mark.parametrize("addr, expected", [
    ("user@example.org", "user@example.org"),
    ("orders@пример.рф", "orders@xn--e1afmkfd.xn--p1ai"),
    ("orders@ПРИМЕР.РФ", "orders@xn--e1afmkfd.xn--p1ai"),  # nameprep folds case
    ("kontakt@bücher.de", "kontakt@xn--bcher-kva.de"),
    ("jürgen@example.net", None),  # a non-ASCII local part has no ASCII form
    ("x@" + "ä" * 70 + ".de", None),  # a label over 63 octets
    ("no-at-sign-ü", None),
])
def test_ascii_address_uses_a_labels_for_domains_only(addr: str, expected: str | None) -> None:
    assert ascii_address(addr) == expected


# ------------------------------------------------------------ issue 10: linear scanning, header limits
def test_header_fields_keeps_every_continuation_line_when_a_field_has_400000() -> None:
    head = b"Subject: start\r\n" + b" x\r\n" * 400_000 + b"To: a@example.org\r\n"
    fields = header_fields(head)
    assert [n for n, _ in fields] == ["Subject", "To"]
    assert fields[0][1] == b" start" + b"\r\n x" * 400_000


def test_header_limit_error_is_none_when_every_limit_is_just_met() -> None:
    from pysendmail.core import rfc5322

    at_lines = b"S: s\r\n" + b" x\r\n" * (rfc5322.MAX_FIELD_LINES - 1)
    at_fields = b"".join(b"X%d: v\r\n" % i for i in range(rfc5322.MAX_FIELDS - 1))
    assert rfc5322.header_limit_error(at_lines + at_fields) is None
    field = b"B: " + b"y" * (rfc5322.MAX_FIELD_BYTES - 5) + b"\r\n"  # exactly MAX_FIELD_BYTES with its CRLF
    assert rfc5322.header_limit_error(field) is None
    assert "over the limit" in (rfc5322.header_limit_error(field.replace(b"B: ", b"B: y")) or "")


@pytest.mark.parametrize(
    ("head", "fragment"),
    [
        (b"S: s\r\n" + b" x\r\n" * 4096, "header field S has more than 4096 lines"),
        (b"".join(b"X%d: v\r\n" % i for i in range(1001)), "more than 1000 header fields"),
        (b"B: " + b"y" * 102400 + b"\r\n", "header field B is over the limit of 102400 bytes"),
        (b"".join(b"X%d: " % i + b"y" * 100_000 + b"\r\n" for i in range(11)), "over the limit of 1048576"),
    ],
)
def test_header_limit_error_names_the_limit_when_a_header_section_is_over_it(head: bytes, fragment: str) -> None:
    from pysendmail.core import rfc5322

    assert fragment in (rfc5322.header_limit_error(head) or "")


def test_qualify_address_list_qualifies_every_name_when_a_field_holds_thousands() -> None:
    value = ", ".join(f"u{i}" for i in range(20_000))
    assert qualify_address_list(value, "example.org") == ", ".join(f"u{i}@example.org" for i in range(20_000))


# ------------------------------------------------------------ issue 10: RFC 5321 4.1.2 syntax
@pytest.mark.parametrize(
    "value",
    ["a@[192.0.2.1]", "a@[IPv6:2001:db8::1]", "a@[IPv6:::1]", "a@[IPv6:1:2:3:4:5:6:7:8]", "a@[IPv6:::ffff:1.2.3.4]",
     "a@[IPv6:1:2:3:4:5:6:1.2.3.4]", "a@[x-tag:abc]", '"a b"@x.org', '"a\\"b"@x.org', '""@x.org', "a@пример.рф",
     "l" * 64 + "@x.org", "a@" + "d" * 63 + ".org", "a@a-b.example"],
)
def test_check_addr_spec_accepts_rfc5321_mailboxes_when_syntax_is_right(value: str) -> None:
    check_addr_spec(value)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("user@[1.2.3.4 junk]", "is not an address literal"),
        ("a@[256.1.1.1]", "is not an address literal"),
        ("a@[1.2.3]", "is not an address literal"),
        ("a@[IPv6:1:2:3:4:5:6:7::]", "is not an IPv6 address"),  # RFC 5321: "::" stands for 2 groups or more
        ("a@[IPv6:1::2::3]", "is not an IPv6 address"),
        ("a@[IPv6:12345::]", "is not an IPv6 address"),
        ("a@[tag:a b]", "is not an address literal"),
        ("a@-x.org", "starts or ends with a hyphen"),
        ("a@x-.org", "starts or ends with a hyphen"),
        ("a@x_y.org", "other than a letter, digit or hyphen"),
        ("a@x.org.", "an empty label"),
        ("a@" + "d" * 64 + ".org", "longer than 63"),
        ("a@" + ".".join(["d" * 60] * 5), "longer than 255"),
        ("l" * 65 + "@x.org", "longer than 64"),
        ("l" * 64 + "@" + ".".join(["d" * 60] * 3) + ".example.org", "longer than an address may be"),
        ('"a\x01b"@x.org', "control or invisible character"),
        ('"ab@x.org', "invalid quoted local part"),
        ("a\u009b31m@x.org", "control or invisible character"),
        ("a@x\u200b.org", "control or invisible character"),
        ("a@x\u202e.org", "control or invisible character"),
    ],
)
def test_check_addr_spec_refuses_what_a_relay_would_when_syntax_is_wrong(value: str, fragment: str) -> None:
    with pytest.raises(AddressError, match=re.escape(fragment)):
        check_addr_spec(value)
