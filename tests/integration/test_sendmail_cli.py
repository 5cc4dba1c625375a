"""The submission commands as callers run them: ``sendmail``, ``mailq``, ``newaliases``.

Every test runs the installed programs as subprocesses against a private
spool (the ``env`` fixture) and reads what they queued with the real
spool-file decoder.  Texts a human reads (--help, mailq) are compared with
golden files in tests/data/; set PYSENDMAIL_UPDATE_GOLDEN=1 to rewrite
them, then review the diff.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from pysendmail.core import queue, spoolfile
from tests.conftest import BIN, SIMPLE, Env, program, write_config

DATA = Path(__file__).resolve().parent.parent / "data"


# ------------------------------------------------------------ helpers
def stored(e: Env) -> list[tuple[spoolfile.Envelope, bytes]]:
    """(envelope, message) of every file in incoming/, oldest first."""
    out = []
    for name in e.incoming():
        envelope, message, records = spoolfile.decode((e.spool / "incoming" / name).read_bytes())
        assert records == []
        out.append((envelope, message))
    return out


def only(e: Env) -> tuple[spoolfile.Envelope, bytes]:
    items = stored(e)
    assert len(items) == 1, f"expected one queued message, found {len(items)}"
    return items[0]


def submit(e: Env, *args: str, input: bytes) -> tuple[spoolfile.Envelope, bytes]:
    proc = e.sendmail(*args, input=input)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout == b"" and proc.stderr == b""
    return only(e)


def refused(e: Env, code: int, *args: str, input: bytes = SIMPLE) -> str:
    """Run sendmail expecting ``code``; check one line on stderr and nothing queued; return stderr."""
    proc = e.sendmail(*args, input=input)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == code, (proc.returncode, err)
    assert err.startswith("sendmail: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert e.incoming() == []
    return err


def golden(name: str, text: str) -> None:
    path = DATA / name
    if os.environ.get("PYSENDMAIL_UPDATE_GOLDEN"):
        path.write_text(text)
    expected = path.read_text()
    assert text == expected, f"output differs from {path}; if the change is intended, rerun with PYSENDMAIL_UPDATE_GOLDEN=1"


QID_RE = re.compile(r"\b[0-9A-F]{18}\b")
TIME_RE = re.compile(r"\b(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d\d:\d\d:\d\d\b")


def normalise_mailq(text: str, keep: frozenset[str] = frozenset()) -> str:
    """Queue ids and arrival times replaced by same-width placeholders, in order of appearance.

    Lines of the ids in ``keep`` (written by the test, with fixed times) stay as they are.
    """
    ids: dict[str, str] = {}
    out = []
    for line in text.split("\n"):
        found = QID_RE.match(line)
        if found and found.group(0) not in keep:
            placeholder = ids.setdefault(found.group(0), f"QUEUEID{len(ids) + 1:011d}")
            line = TIME_RE.sub("Www Mmm dd hh:mm:ss", placeholder + line[len(placeholder):])
        out.append(line)
    return "\n".join(out)


# ------------------------------------------------------------ dot rule
def test_sendmail_ends_the_message_at_a_lone_dot_when_i_is_not_given(env: Env) -> None:
    _, message = submit(env, "a@example.net", input=b"Subject: dots\n\nline one\n.\nnot part of it\n")
    assert message == b"Subject: dots\r\n\r\nline one\r\n"


def test_sendmail_ends_the_message_at_a_dot_crlf_line_when_i_is_not_given(env: Env) -> None:
    _, message = submit(env, "a@example.net", input=b"Subject: dots\r\n\r\nline one\r\n.\r\nnot part of it\r\n")
    assert message == b"Subject: dots\r\n\r\nline one\r\n"


def test_sendmail_drops_a_final_dot_without_newline_when_i_is_not_given(env: Env) -> None:
    _, message = submit(env, "a@example.net", input=b"Subject: dots\n\nline one\n.")
    assert message == b"Subject: dots\r\n\r\nline one\r\n"


@pytest.mark.parametrize("flag", ["-i", "-oi"])
def test_sendmail_keeps_a_lone_dot_when_i_or_oi_is_given(env: Env, flag: str) -> None:
    _, message = submit(env, flag, "a@example.net", input=b"Subject: dots\n\nline one\n.\nstill part of it\n")
    assert message == b"Subject: dots\r\n\r\nline one\r\n.\r\nstill part of it\r\n"


def test_sendmail_keeps_a_final_dot_without_newline_when_i_is_given(env: Env) -> None:
    _, message = submit(env, "-i", "a@example.net", input=b"Subject: dots\n\nline one\n.")
    assert message == b"Subject: dots\r\n\r\nline one\r\n.\r\n"


@pytest.mark.parametrize("line", [b"..", b". ", b".x", b" ."])
def test_sendmail_keeps_dot_lines_as_written_when_they_are_not_a_lone_dot(env: Env, line: bytes) -> None:
    # No SMTP dot-stuffing outside -bs: ".." stays "..".
    _, message = submit(env, "a@example.net", input=b"Subject: dots\n\n" + line + b"\nafter\n")
    assert message == b"Subject: dots\r\n\r\n" + line + b"\r\nafter\r\n"


def test_sendmail_returns_at_the_dot_line_when_stdin_stays_open(env: Env) -> None:
    # An interactive caller types "." and expects sendmail to finish
    # without closing its end of the pipe.
    proc = subprocess.Popen([program("sendmail"), "a@example.net"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env.environ)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.stdin.write(b"Subject: interactive\n\nhello\n.\n")
        proc.stdin.flush()
        code = proc.wait(timeout=30)  # TimeoutExpired: it waited for end of file
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert code == 0, err
    assert only(env)[1] == b"Subject: interactive\r\n\r\nhello\r\n"


# ------------------------------------------------------------ line endings
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Subject: lf\nX-A: 1\n\nl1\nl2\n", b"Subject: lf\r\nX-A: 1\r\n\r\nl1\r\nl2\r\n"),
        (b"Subject: crlf\r\n\r\nl1\r\nl2\r\n", b"Subject: crlf\r\n\r\nl1\r\nl2\r\n"),
        # A bare CR ends no line (as in Postfix and sendmail): it stays inside its line.
        (b"Subject: mixed\r\nX-A: 1\n\r\nl1\nl2\r\nl3\rl4\n", b"Subject: mixed\r\nX-A: 1\r\n\r\nl1\r\nl2\r\nl3\rl4\r\n"),
        (b"Subject: cr\r\rl1\rl2\r", b"Subject: cr\r\rl1\rl2\r\r\n"),
        (b"Subject: eof\n\nno newline at the end", b"Subject: eof\r\n\r\nno newline at the end\r\n"),
        (b"Subject: cr-crlf\n\nl1\r\r\nl2\n", b"Subject: cr-crlf\r\n\r\nl1\r\r\nl2\r\n"),
    ],
)
@pytest.mark.parametrize("flag", ["-i", None])
def test_sendmail_queues_only_crlf_line_endings_when_input_uses_any_mix(env: Env, raw: bytes, expected: bytes, flag: str | None) -> None:
    _, message = submit(env, *([flag] if flag else []), "a@example.net", input=raw)
    assert message == expected
    assert b"\n" not in message.replace(b"\r\n", b""), "a bare LF was queued"


def test_sendmail_drops_an_mbox_from_line_when_the_message_starts_with_one(env: Env) -> None:
    _, message = submit(env, "a@example.net", input=b"From someone@example.org Mon Jan  1 00:00:00 2024\nSubject: x\n\nbody\n")
    assert message == b"Subject: x\r\n\r\nbody\r\n"


# ------------------------------------------------------------ body type
def test_sendmail_marks_the_body_8bitmime_when_the_message_has_8bit_bytes(env: Env) -> None:
    envelope, message = submit(env, "a@example.net", input="Subject: café\n\nnaïve body\n".encode())
    assert envelope.body == "8BITMIME"
    assert "naïve".encode() in message


def test_sendmail_marks_the_body_7bit_when_the_message_is_ascii(env: Env) -> None:
    assert submit(env, "a@example.net", input=SIMPLE)[0].body == "7BIT"


def test_sendmail_keeps_the_body_type_given_with_b_when_present(env: Env) -> None:
    assert submit(env, "-B", "8BITMIME", "a@example.net", input=SIMPLE)[0].body == "8BITMIME"


# ------------------------------------------------------------ -t
def test_sendmail_t_takes_to_cc_and_bcc_when_the_message_has_them(env: Env) -> None:
    envelope, message = submit(env, "-t", input=(
        b"From: app@example.org\nTo: Ann <ann@example.net>, bob@example.net\nCc: \"Doe, Carl\" <carl@example.net>\n"
        b"Bcc: hidden@example.net\nSubject: t\n\nbody\n"
    ))
    assert envelope.recipients == ["ann@example.net", "bob@example.net", "carl@example.net", "hidden@example.net"]
    assert b"Bcc: hidden@example.net\r\n" in message  # removed later by the daemon's cleanup, not here


def test_sendmail_t_reads_folded_and_repeated_fields_when_present(env: Env) -> None:
    envelope, _ = submit(env, "-t", input=b"To: a@example.net,\n  b@example.net\nTo: c@example.net\ncc: d@example.net\n\nbody\n")
    assert envelope.recipients == ["a@example.net", "b@example.net", "c@example.net", "d@example.net"]


def test_sendmail_t_takes_only_resent_fields_when_resent_fields_exist(env: Env) -> None:
    envelope, _ = submit(env, "-t", input=(
        b"To: original@example.net\nCc: original-cc@example.net\nResent-From: fw@example.org\n"
        b"Resent-To: r1@example.net\nResent-Cc: r2@example.net\nResent-Bcc: r3@example.net\n\nbody\n"
    ))
    assert envelope.recipients == ["r1@example.net", "r2@example.net", "r3@example.net"]


def test_sendmail_t_exits_64_explaining_resent_when_resent_fields_name_nobody(env: Env) -> None:
    err = refused(env, 64, "-t", input=b"To: original@example.net\nResent-From: fw@example.org\n\nbody\n")
    assert "no recipients" in err and "Resent-To" in err


def test_sendmail_t_adds_command_line_recipients_when_both_are_given(env: Env) -> None:
    envelope, _ = submit(env, "-t", "extra@example.net", input=b"To: a@example.net\n\nbody\n")
    assert envelope.recipients == ["a@example.net", "extra@example.net"]


def test_sendmail_t_ignores_address_lines_in_the_body_when_no_blank_line_precedes_them(env: Env) -> None:
    # Regression: "To: a\nbody text\nBcc: b" (no blank line) mailed b too.
    envelope, message = submit(env, "-t", input=b"To: a@example.net\nthis is the body\nBcc: evil@example.net\n")
    assert envelope.recipients == ["a@example.net"]
    assert message.endswith(b"this is the body\r\nBcc: evil@example.net\r\n")


def test_sendmail_ignores_to_fields_when_t_is_not_given(env: Env) -> None:
    envelope, _ = submit(env, "only@example.net", input=b"To: header@example.net\n\nbody\n")
    assert envelope.recipients == ["only@example.net"]


def test_sendmail_splits_a_comma_list_when_given_as_one_argument(env: Env) -> None:
    envelope, _ = submit(env, "a@example.net, Bob <b@example.net>", "c@example.net", input=SIMPLE)
    assert envelope.recipients == ["a@example.net", "b@example.net", "c@example.net"]


# ------------------------------------------------------------ sender, name
@pytest.mark.parametrize(
    ("args", "sender"),
    [
        (["-f", "bounce@example.org"], "bounce@example.org"),
        (["-fbounce@example.org"], "bounce@example.org"),
        (["-r", "<bounce@example.org>"], "bounce@example.org"),
        (["-f", "Robot <robot@example.org>"], "robot@example.org"),
        (["-f", ""], ""),
        (["-f", "<>"], ""),
        (["-f<>"], ""),
    ],
)
def test_sendmail_stores_the_envelope_sender_when_given_f_or_r(env: Env, args: list[str], sender: str) -> None:
    assert submit(env, *args, "a@example.net", input=SIMPLE)[0].sender == sender


def test_sendmail_uses_the_login_as_sender_when_f_is_not_given(env: Env) -> None:
    import pwd

    envelope, _ = submit(env, "a@example.net", input=SIMPLE)
    login = pwd.getpwuid(os.getuid()).pw_name
    assert (envelope.sender, envelope.login, envelope.uid) == (login, login, os.getuid())


def test_sendmail_stores_the_full_name_when_given_capital_f(env: Env) -> None:
    envelope, _ = submit(env, "-F", "Jörg the Cron Daemon", "a@example.net", input=SIMPLE)
    assert envelope.fullname == "Jörg the Cron Daemon"


def test_sendmail_stores_dsn_options_when_given_v_n_r(env: Env) -> None:
    envelope, _ = submit(env, "-V", "env-42", "-N", "failure,delay", "-R", "hdrs", "a@example.net", input=SIMPLE)
    assert (envelope.envid, envelope.notify, envelope.ret) == ("env-42", "delay,failure", "HDRS")


def test_sendmail_says_what_it_queued_when_given_v(env: Env) -> None:
    proc = env.sendmail("-v", "a@example.net", input=SIMPLE)
    assert proc.returncode == 0
    [name] = env.incoming()
    assert proc.stderr.decode() == f"sendmail: queued as {name} for a@example.net\n"


def test_sendmail_accepts_ignored_flags_when_callers_pass_them(env: Env) -> None:
    envelope, _ = submit(env, "-oem", "-odb", "-Am", "-L", "label", "-h", "5", "-U", "-G", "-m", "-n", "-bm",
                         "a@example.net", input=SIMPLE)
    assert envelope.recipients == ["a@example.net"]


# ------------------------------------------------------------ refusals
def test_sendmail_exits_64_with_no_recipients_when_none_is_given(env: Env) -> None:
    assert "no recipients" in refused(env, 64)


def test_sendmail_exits_64_with_no_recipients_when_t_finds_none(env: Env) -> None:
    assert "no recipients" in refused(env, 64, "-t", input=b"Subject: nobody\n\nbody\n")


def test_sendmail_exits_64_with_no_recipients_when_t_finds_only_an_empty_group(env: Env) -> None:
    assert "no recipients" in refused(env, 64, "-t", input=b"To: undisclosed-recipients:;\n\nbody\n")


@pytest.mark.parametrize("rcpt", ["John Smith", "a..b@example.net", "a@", "<a@example.net", "a@exa mple.net"])
def test_sendmail_exits_65_naming_the_recipient_when_it_is_malformed(env: Env, rcpt: str) -> None:
    assert repr(rcpt)[1:-1] in refused(env, 65, rcpt)


def test_sendmail_exits_65_naming_the_field_when_t_finds_a_malformed_address(env: Env) -> None:
    err = refused(env, 65, "-t", input=b"To: good@example.net\nCc: John Smith\n\nbody\n")
    assert "Cc header" in err and "'John Smith' is not an address" in err


@pytest.mark.parametrize(
    "raw",
    [
        b"To: a@example.net\nX-Bad: nul\0here\n\nbody\n",
        b"To: a@example.net\0\n\nbody\n",
        b"Subject: x\n  folded \0 nul\nTo: a@example.net\n\nbody\n",
    ],
)
def test_sendmail_exits_65_when_the_headers_hold_a_nul(env: Env, raw: bytes) -> None:
    assert "NUL" in refused(env, 65, "-t", input=raw)


@pytest.mark.parametrize("args", [["-f", "a@example.org\nBcc: evil@example.net"], ["-F", "Name\r\nBcc: evil@example.net"],
                                  ["ok@example.net", "b@example.net\nBcc: evil@example.net"]])
def test_sendmail_exits_65_when_an_argument_would_inject_a_header(env: Env, args: list[str]) -> None:
    assert "line break or NUL" in refused(env, 65, *args)


@pytest.mark.parametrize("args", [["-Z", "a@example.net"], ["-bt"], ["-ti"]])
def test_sendmail_exits_64_naming_the_flag_when_it_is_unknown(env: Env, args: list[str]) -> None:
    assert args[0] in refused(env, 64, *args)


def test_sendmail_exits_64_when_a_flag_lacks_its_value(env: Env) -> None:
    assert "option -f needs a value" in refused(env, 64, "-f")


def test_sendmail_exits_65_when_f_is_not_one_address(env: Env) -> None:
    assert "not one address" in refused(env, 65, "-f", "a@example.org, b@example.org", "c@example.net")


# ------------------------------------------------------------ size limit
def small_limit(tmp_path: Path, limit: int) -> Env:
    """An env whose config sets spool.max_message_size (write_config's [spool] cannot be extended)."""
    root = tmp_path / f"small-{limit}"
    root.mkdir()
    e = write_config(root)
    text = e.config.read_text().replace(f'path = "{e.spool}"\n', f'path = "{e.spool}"\nmax_message_size = {limit}\n', 1)
    assert f"max_message_size = {limit}" in text
    e.config.write_text(text)
    e.run("pysendmail", "spool", "init", check=True)
    return e


@pytest.mark.parametrize("flag", ["-i", None])
def test_sendmail_exits_65_naming_the_limit_when_the_message_is_too_big(tmp_path: Path, flag: str | None) -> None:
    e = small_limit(tmp_path, 2048)
    big = b"Subject: big\n\n" + (b"x" * 70 + b"\n") * 40
    err = refused(e, 65, *([flag] if flag else []), "a@example.net", input=big)
    assert "limit of 2048 bytes" in err and "max_message_size" in err


def test_sendmail_accepts_the_message_when_it_is_exactly_at_the_limit(tmp_path: Path) -> None:
    e = small_limit(tmp_path, 2048)
    head = b"Subject: fits\r\n\r\n"
    body = b"y" * (2048 - len(head) - 2) + b"\r\n"
    _, message = submit(e, "a@example.net", input=head + body)
    assert len(message) == 2048


def test_sendmail_exits_65_when_lf_lines_exceed_the_limit_once_stored_as_crlf(tmp_path: Path) -> None:
    # Regression: the cap counted the caller's bytes, so 1,900 bytes of
    # short LF lines were accepted and stored as 2,800 bytes, over the
    # limit that pickup enforces on the file (quarantine after exit 0).
    e = small_limit(tmp_path, 2048)
    raw = b"Subject: short lines\n\n" + b"x\n" * 940
    assert len(raw) <= 2048
    for flag in ("-i", None):
        assert "limit of 2048 bytes" in refused(e, 65, *([flag] if flag else []), "a@example.net", input=raw)


# ------------------------------------------------------------ mailq
def test_mailq_prints_mail_queue_is_empty_when_nothing_is_queued(env: Env) -> None:
    proc = env.run("mailq", check=True)
    assert proc.stdout.decode() == "Mail queue is empty\n"
    golden("mailq-empty.txt", proc.stdout.decode())


def test_mailq_prints_empty_when_the_spool_does_not_exist_yet(tmp_path: Path) -> None:
    e = write_config(tmp_path)
    assert e.run("mailq", check=True).stdout == b"Mail queue is empty\n"


HEADER = "-Queue ID-          --Size-- ----Arrival Time---- -Sender/Recipient-------"
ENTRY_RE = re.compile(r"^(?P<id>[0-9A-F]{18})(?P<flag>[ *!]) +(?P<size>\d+) (?P<time>\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d)  (?P<sender>\S+)$")


def test_mailq_prints_postfix_layout_when_messages_are_queued(env: Env) -> None:
    env.sendmail("-f", "app@example.org", "a@example.net", "b@example.net", input=SIMPLE, check=True)
    env.sendmail("-f", "", "c@example.net", input=b"Subject: big\n\n" + b"z" * 3000 + b"\n", check=True)
    sizes = sorted(len(m) for _, m in stored(env))
    text = env.run("mailq", check=True).stdout.decode()
    lines = text.split("\n")
    assert lines[0] == HEADER
    entries = [ENTRY_RE.match(line) for line in lines if ENTRY_RE.match(line)]
    assert [m.group("id") for m in entries] == env.incoming()  # sorted by id: arrival order
    assert sorted(int(m.group("size")) for m in entries) == sizes
    assert [m.group("sender") for m in entries] == ["app@example.org", "MAILER-DAEMON"]
    indent = " " * 50
    assert f"{indent}a@example.net" in lines and f"{indent}b@example.net" in lines and f"{indent}c@example.net" in lines
    kbytes = (sum(sizes) + 1023) // 1024
    assert text.endswith(f"\n\n-- {kbytes} Kbytes in 2 Requests.\n")


def test_mailq_says_one_request_when_one_message_is_queued(env: Env) -> None:
    submit(env, "a@example.net", input=SIMPLE)
    assert env.run("mailq", check=True).stdout.decode().endswith("\n-- 1 Kbytes in 1 Request.\n")


def test_mailq_json_lists_each_message_when_messages_are_queued(env: Env) -> None:
    envelope, message = submit(env, "-f", "app@example.org", "a@example.net", "b@example.net", input=SIMPLE)
    data = json.loads(env.run("mailq", "--json", check=True).stdout)
    assert data == [{
        "queue_id": env.incoming()[0],
        "state": "incoming",
        "size": len(message),
        "arrival_time": pytest.approx(envelope.time),
        "sender": "app@example.org",
        "recipients": ["a@example.net", "b@example.net"],
        "reason": "",
        "next_attempt": None,
        "failed": {},
    }]


def test_mailq_json_prints_an_empty_list_when_nothing_is_queued(env: Env) -> None:
    assert json.loads(env.run("mailq", "--json", check=True).stdout) == []


def test_sendmail_bp_prints_what_mailq_prints_when_messages_are_queued(env: Env) -> None:
    env.sendmail("a@example.net", input=SIMPLE, check=True)
    env.sendmail("-f", "x@example.org", "b@example.net", input=SIMPLE, check=True)
    mailq = env.run("mailq", check=True).stdout
    assert env.sendmail("-bp", check=True).stdout == mailq
    assert env.run("pysendmail", "mailq", check=True).stdout == mailq
    assert b"2 Requests" in mailq


def test_sendmail_bp_prints_mail_queue_is_empty_when_nothing_is_queued(env: Env) -> None:
    assert env.sendmail("-bp", check=True).stdout == b"Mail queue is empty\n"


def write_queue_file(e: Env, qid: str, sender: str, recipients: list[str], arrival: float, message: bytes,
                     records: tuple[bytes, ...] = ()) -> None:
    envelope = spoolfile.Envelope(sender, recipients, uid=0, login="root", time=arrival, body="7BIT")
    queue.write_new(str(e.spool / "queue"), qid, spoolfile.encode(envelope, message) + b"".join(records))


def test_mailq_matches_the_golden_listing_when_the_queue_holds_every_state(env: Env) -> None:
    """Queue files in each state (as the daemon writes them) plus one fresh submission."""
    env.extra_env["TZ"] = "UTC"
    t0 = 1699190000.0  # Sun Nov  5 13:13:20 2023 UTC: a one-digit day shows the padding
    body = b"Subject: queued\r\n\r\n" + b"0123456789" * 150 + b"\r\n"
    rec = spoolfile.encode_record
    write_queue_file(env, "65000000000000000A", "app@example.org", ["a@example.net", "b@example.net"], t0, body)
    write_queue_file(env, "65000000000000000B", "app@example.org", ["done@example.net", "c@example.net", "d@example.net"],
                     t0 + 61, body * 3, (rec("done", 0, t0 + 70, "250 2.0.0 Ok"),
                                         rec("deferred", t0 + 70, t0 + 370,
                                             "connect to smtp.example.org[192.0.2.1]:465: Connection refused")))
    write_queue_file(env, "65000000000000000C", "cron@example.org", ["ops@example.net"], t0 + 3600, body,
                     (rec("hold", t0 + 3700, "held by the administrator"),))
    write_queue_file(env, "65000000000000000D", "app@example.org", ["gone@example.net"], t0 + 7200, body,
                     (rec("done", 0, t0 + 7201, "250 2.0.0 Ok"),))  # finished: not listed
    write_queue_file(env, "65000000000000000E", "", ["bounced@example.net", "later@example.net"], t0 + 86400, body,
                     (rec("failed", 0, t0 + 86401, "550 5.1.1 No such user"),
                      rec("deferred", t0 + 86401, t0 + 90000, "451 4.7.1 Try again later")))
    env.sendmail("-f", "www-data@example.org", "fresh@example.net", input=b"Subject: fresh\n\nhello\n", check=True)
    text = env.run("mailq", check=True).stdout.decode()
    assert env.sendmail("-bp", check=True).stdout.decode() == text
    crafted = frozenset(f"65000000000000000{c}" for c in "ABCDE")
    golden("mailq-queue.txt", normalise_mailq(text, crafted))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mailq_shows_the_reason_when_the_daemon_deferred_a_message(tmp_path: Path) -> None:
    e = write_config(tmp_path, f'[relay]\nhost = "127.0.0.1"\nport = {closed_port()}\ntls = "none"\n')
    e.run("pysendmail", "spool", "init", check=True)
    e.sendmail("-f", "app@example.org", "a@example.net", input=SIMPLE, check=True)
    e.flush()
    lines = e.run("mailq", check=True).stdout.decode().split("\n")
    [entry] = [ENTRY_RE.match(line) for line in lines if ENTRY_RE.match(line)]
    assert entry.group("flag") == " " and entry.group("sender") == "app@example.org"
    reason = lines[lines.index(entry.group(0)) + 1]
    assert reason.startswith(" " * 48 + "(") and reason.endswith(")") and "127.0.0.1" in reason
    assert lines[lines.index(entry.group(0)) + 2] == " " * 50 + "a@example.net"
    [item] = json.loads(e.run("mailq", "--json", check=True).stdout)
    assert item["state"] == "deferred" and item["next_attempt"] > item["arrival_time"]


# ------------------------------------------------------------ newaliases, -bv
def test_newaliases_exits_0_and_counts_when_the_aliases_are_valid(env: Env) -> None:
    env.aliases_file.write_text("# aliases\npostmaster: root\nroot: admin@example.net\n")
    proc = env.run("newaliases", check=True)
    assert proc.stdout.decode() == f"newaliases: 2 aliases checked ({env.aliases_file} and [aliases]): ok\n"


@pytest.mark.parametrize("how", [("newaliases",), ("sendmail", "-bi"), ("sendmail", "-I"), ("pysendmail", "newaliases")])
def test_newaliases_exits_nonzero_naming_file_and_line_when_a_line_is_bad(env: Env, how: tuple[str, ...]) -> None:
    env.aliases_file.write_text("postmaster: root\n# comment\nthis line is wrong\n")
    proc = env.run(*how)
    err = proc.stderr.decode()
    assert proc.returncode == 65
    assert f"{env.aliases_file}:3: expected 'name: address, ...'" in err
    assert err.count("\n") == 1


def test_newaliases_exits_nonzero_naming_the_pipe_when_an_alias_runs_a_command(env: Env) -> None:
    env.aliases_file.write_text("root: admin@example.net\nspam: |/usr/bin/spamassassin\n")
    proc = env.run("newaliases")
    assert proc.returncode == 65
    assert f"{env.aliases_file}:2: '|/usr/bin/spamassassin' is a pipe to a command" in proc.stderr.decode()


def test_newaliases_exits_nonzero_naming_the_cycle_when_aliases_loop(env: Env) -> None:
    env.aliases_file.write_text("a: b\nb: a\n")
    proc = env.run("newaliases")
    assert proc.returncode == 65
    assert "alias loop: a -> b -> a" in proc.stderr.decode()


def test_sendmail_bv_shows_the_alias_target_when_root_is_aliased(env: Env) -> None:
    env.aliases_file.write_text("root: admin@example.net\npostmaster: root\n")
    proc = env.sendmail("-bv", "root", "postmaster", "someone@example.net", check=True)
    assert proc.stdout.decode() == (
        "root... deliverable: admin@example.net\n"
        "postmaster... deliverable: admin@example.net\n"
        "someone@example.net... deliverable: someone@example.net\n"
    )
    assert env.incoming() == []


def test_sendmail_bv_qualifies_the_name_when_root_is_not_aliased(env: Env) -> None:
    assert env.sendmail("-bv", "root", check=True).stdout == b"root... deliverable: root@example.org\n"


def test_sendmail_bv_uses_config_aliases_when_they_override_the_file(tmp_path: Path) -> None:
    e = write_config(tmp_path, '[aliases]\nroot = ["ops@example.net", "boss@example.net"]\n')
    e.aliases_file.write_text("root: file@example.net\n")
    e.run("pysendmail", "spool", "init", check=True)
    assert e.sendmail("-bv", "root", check=True).stdout == b"root... deliverable: ops@example.net, boss@example.net\n"


def test_sendmail_bv_exits_64_when_given_no_address(env: Env) -> None:
    proc = env.sendmail("-bv")
    assert proc.returncode == 64 and "no recipients" in proc.stderr.decode()


# ------------------------------------------------------------ argv[0], --help
def test_installed_mailq_lists_the_queue_when_run_by_its_name(env: Env) -> None:
    assert env.run("mailq", check=True).stdout == b"Mail queue is empty\n"
    env.sendmail("a@example.net", input=SIMPLE, check=True)
    assert env.run("mailq", check=True).stdout.endswith(b"-- 1 Kbytes in 1 Request.\n")


def test_installed_newaliases_checks_the_aliases_when_run_by_its_name(env: Env) -> None:
    env.aliases_file.write_text("root: admin@example.net\n")
    assert env.run("newaliases", check=True).stdout.startswith(b"newaliases: 1 aliases checked")


@pytest.mark.parametrize(("name", "expected"), [("mailq", b"Mail queue is empty\n"), ("newaliases", b"newaliases: 0 aliases checked")])
def test_sendmail_acts_by_its_name_when_invoked_through_a_symlink(env: Env, tmp_path: Path, name: str, expected: bytes) -> None:
    # Regression: Postfix's layout makes /usr/bin/mailq and newaliases
    # symlinks to sendmail; the launcher overwrote argv[0], so "mailq"
    # waited for a message on stdin and exited 64.
    link = tmp_path / name
    link.symlink_to(BIN / "sendmail")
    proc = subprocess.run([str(link)], input=b"", capture_output=True, env=env.environ, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(expected)


def test_sendmail_help_matches_the_golden_text_when_printed(env: Env) -> None:
    proc = env.sendmail("--help", check=True)
    assert proc.stderr == b""
    golden("sendmail-help.txt", proc.stdout.decode())


def test_sendmail_prints_the_version_when_asked(env: Env) -> None:
    from pysendmail import __version__

    assert env.sendmail("--version", check=True).stdout.decode() == f"pysendmail {__version__}\n"
