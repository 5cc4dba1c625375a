"""sendmail's command line (pysendmail.submit.flags): the table, the scanner, --help.

Every flag in the table must be accepted, because callers (PHP, cron,
git send-email, monitoring agents) pass them blindly; an unknown one must
be refused by name, and a value that would inject a header must be
refused before it reaches an envelope.
"""

from __future__ import annotations

import pytest

from pysendmail.core.errors import DataError, UsageError
from pysendmail.submit import flags
from pysendmail.core.config import parse_interval
from pysendmail.submit.flags import FLAGS, help_text, parse

# A valid value for each flag that takes one.
VALUES = {
    "-f": "sender@example.org",
    "-r": "sender@example.org",
    "-F": "Robot",
    "-C": "/nonexistent/pysendmail.toml",  # parse() only records it
    "-V": "envid-1",
    "-N": "success,failure",
    "-R": "hdrs",
    "-B": "8BITMIME",
    "-O": "DeliveryMode=b",
    "-L": "label",
    "-h": "17",
    "-X": "/dev/null",
}
# What a flag without a value looks like when used (some need a letter).
SPELLING = {"-o": "-oem", "-A": "-Am"}


def valued_flags() -> list[str]:
    return [flag for flag, valued, _ in FLAGS if valued]


def plain_flags() -> list[str]:
    return [flag for flag, valued, _ in FLAGS if not valued and flag != "--"]


def test_value_table_covers_every_valued_flag_when_the_flag_table_grows() -> None:
    assert sorted(VALUES) == sorted(valued_flags())


@pytest.mark.parametrize("flag", valued_flags())
def test_parse_accepts_the_flag_when_its_value_is_a_separate_word(flag: str) -> None:
    opts = parse([flag, VALUES[flag], "rcpt@example.net"])
    assert opts.recipients == ["rcpt@example.net"]


@pytest.mark.parametrize("flag", valued_flags())
def test_parse_accepts_the_flag_when_its_value_is_attached(flag: str) -> None:
    opts = parse([flag + VALUES[flag], "rcpt@example.net"])
    assert opts.recipients == ["rcpt@example.net"]


@pytest.mark.parametrize("flag", valued_flags())
def test_parse_raises_usage_error_naming_the_flag_when_its_value_is_missing(flag: str) -> None:
    with pytest.raises(UsageError, match=f"option {flag} needs a value"):
        parse([flag])


@pytest.mark.parametrize("flag", plain_flags())
def test_parse_accepts_the_flag_when_given_alone(flag: str) -> None:
    parse([SPELLING.get(flag, flag), "rcpt@example.net"])


def test_parse_records_every_value_when_all_valued_flags_are_given() -> None:
    opts = parse(["-f", "s@example.org", "-F", "Robot Name", "-C", "/x.toml", "-V", "id1",
                  "-N", "failure,delay", "-R", "full", "-B", "7bit", "a@example.net"])
    assert opts.sender == "s@example.org"
    assert opts.fullname == "Robot Name"
    assert opts.config == "/x.toml"
    assert opts.envid == "id1"
    assert opts.notify == "delay,failure"
    assert opts.ret == "FULL"
    assert opts.body == "7BIT"
    assert opts.recipients == ["a@example.net"]


def test_parse_defaults_when_given_no_flags() -> None:
    opts = parse([])
    assert (opts.mode, opts.extract, opts.ignore_dots, opts.sender, opts.recipients) == ("deliver", False, False, None, [])


# ------------------------------------------------------------ sender, name
def test_parse_reads_the_sender_when_attached_to_f() -> None:
    assert parse(["-fbounce@example.org"]).sender == "bounce@example.org"


def test_parse_reads_the_sender_when_given_with_r() -> None:
    assert parse(["-r", "bounce@example.org"]).sender == "bounce@example.org"


@pytest.mark.parametrize("argv", [["-f", ""], ["-f", "<>"], ["-f<>"], ["-r", "<>"]])
def test_parse_keeps_the_null_sender_when_f_is_empty_or_angle_brackets(argv: list[str]) -> None:
    from pysendmail.core.rfc5322 import parse_sender

    opts = parse(argv)
    assert opts.sender is not None
    assert parse_sender(opts.sender) == ""


def test_parse_leaves_the_sender_unset_when_f_is_not_given() -> None:
    assert parse(["a@example.net"]).sender is None


def test_parse_reads_the_full_name_when_given_with_capital_f() -> None:
    assert parse(["-F", "Cron Daemon"]).fullname == "Cron Daemon"
    assert parse(["-FCron"]).fullname == "Cron"


# ------------------------------------------------------------ -i, -o
@pytest.mark.parametrize("argv", [["-i"], ["-oi"]])
def test_parse_ignores_dots_when_given_i_or_oi(argv: list[str]) -> None:
    assert parse(argv).ignore_dots is True


@pytest.mark.parametrize("flag", ["-oem", "-odb", "-om", "-oee", "-odi"])
def test_parse_ignores_other_o_options_when_given(flag: str) -> None:
    opts = parse([flag, "a@example.net"])
    assert opts.ignore_dots is False
    assert opts.mode == "deliver"
    assert opts.recipients == ["a@example.net"]


def test_parse_raises_usage_error_when_o_has_no_letter() -> None:
    with pytest.raises(UsageError, match="-o needs a letter"):
        parse(["-o"])


def test_parse_extracts_recipients_when_given_t() -> None:
    assert parse(["-t"]).extract is True


# ------------------------------------------------------------ modes
@pytest.mark.parametrize(
    ("argv", "mode"),
    [
        (["-bm"], "deliver"),
        (["-bs"], "smtp"),
        (["-bp"], "mailq"),
        (["-bi"], "newaliases"),
        (["-I"], "newaliases"),
        (["-bv", "root"], "verify"),
        (["-bd"], "daemon"),
        (["-bD"], "daemon"),
        (["-q"], "flush"),
    ],
)
def test_parse_selects_the_mode_when_given_a_mode_flag(argv: list[str], mode: str) -> None:
    assert parse(argv).mode == mode


def test_parse_runs_the_daemon_with_an_interval_when_given_q15m() -> None:
    opts = parse(["-q15m"])
    assert opts.mode == "daemon"
    assert opts.queue_interval == 900


def test_parse_flushes_without_interval_when_given_q_alone() -> None:
    assert parse(["-q"]).queue_interval is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("1d", 86400), ("1w", 604800), ("1h30m", 5400), ("30", 1800)],
)
def test_parse_interval_returns_seconds_when_given_sendmail_units(text: str, seconds: int) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["0", "0m", "15x", "m", "1.5h", "-5m", "\u00b2m", "9" * 5000 + "s"])
def test_parse_interval_raises_usage_error_when_not_an_interval(text: str) -> None:
    with pytest.raises(UsageError, match=f"-q{text}"):
        parse_interval(text)


# ------------------------------------------------------------ end of flags
def test_parse_takes_everything_after_double_dash_as_recipients_when_it_looks_like_a_flag() -> None:
    opts = parse(["-t", "--", "-oddname@example.org", "b@example.net"])
    assert opts.extract is True
    assert opts.recipients == ["-oddname@example.org", "b@example.net"]


def test_parse_stops_at_the_first_non_flag_when_flags_follow_it() -> None:
    opts = parse(["a@example.net", "-t"])
    assert opts.extract is False
    assert opts.recipients == ["a@example.net", "-t"]


# ------------------------------------------------------------ DSN values
@pytest.mark.parametrize("value", ["bogus", "never,success", "", "success,,"])
def test_parse_raises_usage_error_when_n_value_is_invalid(value: str) -> None:
    with pytest.raises(UsageError, match="-N"):
        parse(["-N", value])


def test_parse_raises_usage_error_when_r_value_is_invalid() -> None:
    with pytest.raises(UsageError, match="-R bogus"):
        parse(["-R", "bogus"])


def test_parse_raises_usage_error_when_b_value_is_invalid() -> None:
    with pytest.raises(UsageError, match="-B 9BIT"):
        parse(["-B", "9BIT"])


# ------------------------------------------------------------ refusals
@pytest.mark.parametrize("arg", ["-Z", "-bt", "-ti", "-it", "-b", "-bx", "-vv", "-Gx", "--help-me", "-é"])
def test_parse_raises_usage_error_naming_the_flag_when_unknown(arg: str) -> None:
    with pytest.raises(UsageError) as info:
        parse([arg, "a@example.net"])
    assert arg in str(info.value)
    assert info.value.exit_code == 64


@pytest.mark.parametrize("flag", ["-f", "-r", "-F", "-V"])
@pytest.mark.parametrize("bad", ["a@x.test\nBcc: evil@y.test", "a@x.test\r", "a\0b"])
def test_parse_raises_data_error_when_a_value_holds_cr_lf_or_nul(flag: str, bad: str) -> None:
    with pytest.raises(DataError, match="line break or NUL") as info:
        parse([flag, bad])
    assert info.value.exit_code == 65
    assert flag in str(info.value)


@pytest.mark.parametrize("bad", ["a@x.test\nBcc: evil@y.test", "a@x.test\r", "a\0b"])
def test_parse_raises_data_error_when_a_recipient_holds_cr_lf_or_nul(bad: str) -> None:
    with pytest.raises(DataError, match="line break or NUL"):
        parse(["ok@example.net", bad])


def test_parse_raises_data_error_when_an_attached_sender_holds_a_newline() -> None:
    with pytest.raises(DataError):
        parse(["-fa@x.test\nBcc: evil@y.test"])


# ------------------------------------------------------------ --help
def test_help_text_mentions_every_flag_when_printed() -> None:
    text = help_text("sendmail")
    for flag, _, description in FLAGS:
        assert f"  {flag} " in text, flag
        assert description in text


def test_help_text_names_the_program_and_the_exit_codes_when_printed() -> None:
    text = help_text("sendmail")
    assert text.startswith("usage: sendmail ")
    for code in ("64", "65", "75", "77", "78"):
        assert code in text


def test_flag_table_has_no_duplicates_when_read() -> None:
    names = [flag for flag, _, _ in flags.FLAGS]
    assert len(names) == len(set(names))
