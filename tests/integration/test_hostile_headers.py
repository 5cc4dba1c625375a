"""Hostile bytes in headers and addresses, end to end (issues 10 and 11).

Each attack is reproduced as the audit described it, through the real
``sendmail`` (argv, -t, -bs), files planted straight into incoming/ (which
bypass sendmail), the real flush, a real relay and, for the log, a real
unprivileged user.  No test times anything: the header limits are checked
by their refusals, linearity by construction in tests/unit (bench/headers
prints the speed).
"""

from __future__ import annotations

import email
import email.header
import email.policy
import os
import pwd
import re
import subprocess
import time
from pathlib import Path

import pytest

from pysendmail.core import rfc5322, spoolfile
from tests.conftest import Env, needs_root, program, relay_env
from tests.fakes.dns import DnsServer
from tests.integration.test_dkim import dkim_table, keygen, verify_all

FOLDED_400K = b"From: a@example.org\nTo: b@example.net\nSubject: start\n" + b" x\n" * 400_000 + b"\nbody\n"
HUGE_LINE = b"From: a@example.org\nTo: b@example.net\nX-Long: " + b"a " * (6 * 1024 * 1024) + b"\n\nbody\n"


def refused(e: Env, code: int, *args: str, input: bytes) -> str:
    """Run sendmail expecting ``code``: one sentence on stderr, nothing queued."""
    proc = e.sendmail(*args, input=input, timeout=120)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == code, (proc.returncode, err)
    assert err.startswith("sendmail: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and "internal error" not in err
    assert e.incoming() == []
    return err


def bs(e: Env, dialogue: bytes) -> list[str]:
    proc = subprocess.run([program("sendmail"), "-bs"], input=dialogue, capture_output=True, env=e.environ,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    # Final reply lines only (EHLO's "250-" continuation lines dropped).
    return [r for r in proc.stdout.decode(errors="replace").split("\r\n") if r and r[3:4] != "-"]


def plant(e: Env, name: str, env: spoolfile.Envelope, message: bytes) -> None:
    """A ready spool file written straight into incoming/, as a user who bypasses sendmail could."""
    path = e.spool / "incoming" / name
    path.write_bytes(spoolfile.encode(env, message))
    path.chmod(0o640)


def flush_log(e: Env) -> str:
    proc = e.run("sendmail", "-q", timeout=300)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "internal error" not in err, err
    return err


def quarantined(e: Env, name: str) -> list[str]:
    return [q for q in os.listdir(e.spool / "quarantine") if q.rsplit(".", 1)[0] == name]


# ------------------------------------------------------------ 1. header limits
@pytest.mark.parametrize("flags", [("b@example.net",), ("-t",), ("-t", "-i")])
def test_sendmail_refuses_400000_folded_lines_when_submitted_with_exit_65(env: Env, flags: tuple[str, ...]) -> None:
    err = refused(env, 65, *flags, input=FOLDED_400K)
    assert "header section" in err and f"{rfc5322.MAX_HEADER_BYTES}" in err


def test_sendmail_refuses_one_12_mb_header_line_when_submitted_with_exit_65(env: Env) -> None:
    err = refused(env, 65, "-t", input=HUGE_LINE)
    assert "header section" in err


@pytest.mark.parametrize(
    ("head", "fragment"),
    [
        (b"".join(b"X-F%d: v\n" % i for i in range(rfc5322.MAX_FIELDS + 1)), "header fields"),
        (b"Subject: s\n" + b" x\n" * rfc5322.MAX_FIELD_LINES, "header field Subject has more than"),
        (b"X-Big: " + b"y" * 500 + b"\n" + (b" " + b"z" * 900 + b"\n") * 114, "header field X-Big is over the limit"),
    ],
    ids=["fields", "lines-per-field", "bytes-per-field"],
)
def test_sendmail_refuses_a_header_section_when_over_a_limit(env: Env, head: bytes, fragment: str) -> None:
    message = b"To: b@example.net\n" + head + b"\nbody\n"
    err = refused(env, 65, "-t", input=message)
    assert fragment in err, err


def test_sendmail_accepts_a_header_section_when_just_under_every_limit(env: Env) -> None:
    fields = b"".join(b"X-F%d: v\n" % i for i in range(rfc5322.MAX_FIELDS - 3))
    folded = b"Subject: s\n" + b" x\n" * (rfc5322.MAX_FIELD_LINES - 1)
    message = b"To: b@example.net\nFrom: a@example.org\n" + fields + folded + b"\nbody\n"
    proc = env.sendmail("-t", input=message)
    assert proc.returncode == 0, proc.stderr
    assert len(env.incoming()) == 1


def test_bs_refuses_an_oversized_header_section_with_552_and_the_session_goes_on(env: Env) -> None:
    data = FOLDED_400K.replace(b"\n", b"\r\n")
    good = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: fine\r\n\r\nok\r\n"
    replies = bs(env, b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n" + data
                 + b".\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n" + good + b".\r\nQUIT\r\n")
    after_data = [r for r in replies if r[:3] in ("552", "250") and ("queued" in r or r.startswith("552"))]
    assert after_data[0].startswith("552 5.3.4 the header section is"), replies
    assert after_data[1].startswith("250 2.0.0 Ok: queued as"), replies
    assert len(env.incoming()) == 1


def test_pickup_quarantines_a_planted_file_when_its_headers_are_over_the_limits(env: Env) -> None:
    uid = os.getuid()
    bad = "0000000000000000A1"
    message = FOLDED_400K.replace(b"\n", b"\r\n")
    plant(env, bad, spoolfile.Envelope("a@example.org", ["b@example.net"], uid=uid, time=time.time()), message)
    proc = env.sendmail("b@example.net", input=b"Subject: good\n\nafter the planted one\n")
    assert proc.returncode == 0

    log = flush_log(env)

    assert len(quarantined(env, bad)) == 1
    lines = [line for line in log.splitlines() if bad in line]
    assert len(lines) == 1 and "quarantined: the header section is" in lines[0], log
    [delivered] = env.delivered()
    assert b"after the planted one" in delivered


# ------------------------------------------------------------ 2. bare CR
def test_bare_cr_in_subject_never_adds_a_bcc_when_sent_with_t(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory()
    e = relay_env(tmp_path, relay)
    # The application stripped "\n" from the user's Subject, not "\r".
    message = b"From: app@example.org\nTo: user@example.net\nSubject: hello\rBcc: evil@example.com\n\nbody\n"
    proc = e.sendmail("-t", "-i", input=message)
    assert proc.returncode == 0, proc.stderr
    [name] = e.incoming()
    envelope, stored, _ = spoolfile.decode((e.spool / "incoming" / name).read_bytes())
    assert envelope.recipients == ["user@example.net"]
    assert b"Subject: hello\rBcc: evil@example.com\r\n" in stored  # kept inside its line, as Postfix does

    e.flush()
    [got] = relay.wait_for(1)
    assert got.rcpt_tos == ["user@example.net"]
    assert b"\r" not in got.data.replace(b"\r\n", b""), "a bare CR reached the relay"
    msg = email.message_from_bytes(got.data, policy=email.policy.compat32)
    assert msg.get_all("Bcc") is None
    assert msg["Subject"] == "hello Bcc: evil@example.com"


def test_bare_cr_in_a_planted_header_never_starts_a_field_when_picked_up(env: Env) -> None:
    name = "0000000000000000B1"
    message = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: x\rX-Injected: yes\r\n\r\nbody\r\n"
    plant(env, name, spoolfile.Envelope("a@example.org", ["b@example.net"], uid=os.getuid(), time=time.time()),
          message)
    flush_log(env)
    [delivered] = env.delivered()
    head = delivered.split(b"\n\n", 1)[0]
    assert not any(line.lower().startswith(b"x-injected:") for line in head.split(b"\n")), head
    assert b"Subject: x X-Injected: yes\n" in head  # kept in its line; the wire stage made the CR a space


# ------------------------------------------------------------ 3. malformed addresses
BAD_ADDRESSES = [
    "user@[1.2.3.4 junk]",
    "user@[300.1.2.3]",
    "user@[IPv6:1:2:3]",
    "user@-bad.example.org",
    "user@bad_label.example.org",
    "l" * 65 + "@example.org",
    "user@" + ".".join(["d" * 60] * 5) + ".org",  # domain over 255 octets
    "u" * 64 + "@" + ".".join(["d" * 60] * 3) + ".example.org",  # path over 256
    "user@example..org",
]


@pytest.mark.parametrize("addr", BAD_ADDRESSES)
def test_sendmail_refuses_a_malformed_address_when_given_as_argument_or_sender_or_header(env: Env, addr: str) -> None:
    err = refused(env, 65, addr, input=b"Subject: x\n\nbody\n")
    assert addr[:40] in err
    refused(env, 65, "-f", addr, "b@example.net", input=b"Subject: x\n\nbody\n")
    refused(env, 65, "-r", addr, "b@example.net", input=b"Subject: x\n\nbody\n")
    for field in ("To", "Cc", "Bcc"):
        refused(env, 65, "-t", input=f"{field}: Someone <{addr}>\nSubject: x\n\nbody\n".encode())


@pytest.mark.parametrize("addr", BAD_ADDRESSES[:4])
def test_bs_refuses_a_malformed_address_in_mail_and_rcpt_with_5xx(env: Env, addr: str) -> None:
    replies = bs(env, f"EHLO x\r\nMAIL FROM:<{addr}>\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<{addr}>\r\n"
                      "QUIT\r\n".encode())
    assert replies[2].startswith("553 5.1.7 "), replies
    assert replies[3].startswith("250 "), replies
    assert replies[4].startswith("553 5.1.3 "), replies


def test_sendmail_accepts_valid_literals_and_idn_when_given_as_arguments(env: Env) -> None:
    good = ["a@[192.0.2.1]", "a@[IPv6:2001:db8::1]", "a@[IPv6:::ffff:192.0.2.1]", '"x y"@example.org',
            "a@пример.рф", "l" * 64 + "@example.org"]
    proc = env.sendmail(*good, input=b"Subject: x\n\nbody\n")
    assert proc.returncode == 0, proc.stderr
    [name] = env.incoming()
    envelope, _, _ = spoolfile.decode((env.spool / "incoming" / name).read_bytes())
    assert envelope.recipients == good


@pytest.mark.parametrize("where", ["rcpt", "sender"])
def test_pickup_quarantines_a_planted_file_when_an_envelope_address_is_malformed(env: Env, where: str) -> None:
    name = "0000000000000000C1"
    bad = "user@[1.2.3.4 junk]"
    envelope = spoolfile.Envelope(bad if where == "sender" else "a@example.org",
                                  [bad if where == "rcpt" else "b@example.net"], uid=os.getuid(), time=time.time())
    plant(env, name, envelope, b"Subject: x\r\n\r\nbody\r\n")
    log = flush_log(env)
    assert len(quarantined(env, name)) == 1
    [line] = [x for x in log.splitlines() if name in x]
    assert "quarantined: bad address" in line
    assert env.delivered() == [] and env.queued() == []


# ------------------------------------------------------------ 4. log injection
FORGED_SENDER = '"x>, uid=0 (root), from=<boss"@example.org'


@needs_root
def test_quoted_sender_cannot_forge_log_fields_when_submitted_by_an_unprivileged_user(shared_env: Env) -> None:
    alice = pwd.getpwnam("psm-alice")
    proc = shared_env.sendmail("-f", FORGED_SENDER, "b@example.net", input=b"Subject: x\n\nbody\n", user="psm-alice")
    assert proc.returncode == 0, proc.stderr  # a valid (if odd) address: accepted
    [name] = shared_env.incoming()

    log = flush_log(shared_env)

    [line] = [x for x in log.splitlines() if x.startswith(f"{name}: uid=")]
    fields = line.split(": ", 1)[1].split(", ")
    keys = [f.split("=", 1)[0] for f in fields]
    assert keys.count("uid") == 1 and keys.count("from") == 1, line
    assert f"uid={alice.pw_uid} (psm-alice)" in fields, line
    (sender_field,) = [f for f in fields if f.startswith("from=")]
    assert sender_field.startswith("from=<") and sender_field.endswith(">") and sender_field.count(">") == 1
    # The escaped form reads back to the address exactly.
    inner = sender_field[len("from=<"):-1]
    assert re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), inner) == FORGED_SENDER


# ------------------------------------------------------------ 5. RFC 2047 for every unstructured field
@pytest.fixture
def dns():  # type: ignore[no-untyped-def]
    with DnsServer() as server:
        yield server


def test_x_note_in_utf8_reaches_a_relay_without_smtputf8_encoded_and_dkim_verifies(
        tmp_path: Path, relay_factory, dns: DnsServer) -> None:
    relay = relay_factory(smtputf8=False)
    e = relay_env(tmp_path, relay)
    rsa, _ = keygen(e, dns, "example.org", "rsa")
    with open(e.config, "a") as fh:
        fh.write(dkim_table("example.org", "rsa", rsa))
    message = ("From: app@example.org\nTo: user@example.net\nSubject: Заказ\nX-Note: значение\n"
               "Comments: коммент\nKeywords: alpha, бета, \"гамма, дельта\"\n\nbody\n").encode()
    proc = e.sendmail("-t", input=message)
    assert proc.returncode == 0, proc.stderr
    e.flush()
    [got] = relay.wait_for(1)
    head = got.data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii(), head  # RFC 6532 needs SMTPUTF8 for raw UTF-8 headers

    msg = email.message_from_bytes(got.data, policy=email.policy.compat32)

    def decoded(name: str) -> str:
        return str(email.header.make_header(email.header.decode_header(msg[name])))

    assert decoded("X-Note") == "значение"
    assert decoded("Comments") == "коммент"
    assert decoded("Subject") == "Заказ"
    keywords = [str(email.header.make_header(email.header.decode_header(k.strip())))
                for k in msg["Keywords"].replace("\r\n", "").split(",")]
    assert keywords == ["alpha", "бета", "гамма, дельта"]  # a quoted phrase stays one keyword
    verify_all(got.data, dns, tmp_path, ed25519=False)
