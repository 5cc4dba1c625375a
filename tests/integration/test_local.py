"""Local addresses never reach the provider (issue 11, part 2), and -C reaches pysendmail (part 4).

Submissions are made as fail2ban, cron and scripts make them, with the
installed ``sendmail``; ``sendmail -q`` runs the queue against the real
loopback relay (tests/fakes/relay.py), which records every MAIL and RCPT
command it is sent.  The relay must see the aliased address, never
``@localhost`` or ``@<short host name>``, and MAIL FROM qualified to the
FQDN; a local address with nowhere to go bounces with a reason that says
which alias to add, and is never relayed.

The configs here leave host.default_domain unset, as a real host does:
unqualified names then get the FQDN (host.name = host.example.org), which
is local.
"""

from __future__ import annotations

import email
import email.policy
import os
import socket
import time
from pathlib import Path


from tests.conftest import Env, write_config
from tests.fakes.relay import PASSWORD, Relay

FQDN = "host.example.org"  # host.name in write_config
SHORT = socket.gethostname().split(".")[0]  # what fail2ban, mutt and mailutils put after root@
ADMIN = "admin@example.net"


def local_env(tmp_path: Path, relay: Relay | None, extra: str = "", host: str = "") -> Env:
    """A config as on a real host: no default_domain; a relay unless ``relay`` is None."""
    text = ""
    if relay is not None:
        pw = tmp_path / "relay-password"
        pw.write_text(PASSWORD + "\n")
        pw.chmod(0o600)
        text = relay.config(pw)
    e = write_config(tmp_path, text + extra)
    config = e.config.read_text().replace('default_domain = "example.org"\n', host)
    e.config.write_text(config)
    e.run("pysendmail", "spool", "init", check=True)
    return e


def run_queue(e: Env, *args: str) -> str:
    proc = e.run("sendmail", *args, "-q", timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stderr.decode(errors="replace")


def assert_nothing_local_relayed(relay: Relay) -> None:
    for addr in relay.rcpt_commands + relay.mail_commands:
        domain = addr.rpartition("@")[2].lower()
        assert domain not in ("localhost", SHORT.lower(), "[127.0.0.1]"), f"{addr} reached the relay"
        assert "@" in addr or addr == "<>", f"unqualified {addr!r} reached the relay"


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def dsn_of(relay: Relay) -> tuple[list[str], dict[str, str]]:
    """(RCPT TO of the one bounce, its per-recipient delivery-status fields)."""
    (bounce,) = [m for m in relay.messages if m.mail_from == "<>"]
    msg = parse(bounce.data)
    (status,) = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    (block,) = [b for b in blocks if b["Final-Recipient"]]
    return bounce.rcpt_tos, {k: str(v) for k, v in block.items()}


FAIL2BAN = (
    f"Subject: [Fail2Ban] sshd: banned 192.0.2.7 from {SHORT}\n"
    f"From: fail2ban <root@{SHORT}>\n"
    "To: root@localhost\n\n"
    "Hi,\n\nThe IP 192.0.2.7 has just been banned by Fail2Ban after 5 attempts against sshd.\n"
).encode()

CRON = (
    b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@" + SHORT.encode() + b"> /usr/local/bin/backup\n"
    b"Content-Type: text/plain; charset=UTF-8\n\nbackup: 3 files copied\n"
)


# ------------------------------------------------------------ through the relay
def test_fail2ban_mail_to_root_at_localhost_reaches_the_root_alias_when_sent_with_t(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = local_env(tmp_path, relay, f'[aliases]\nroot = "{ADMIN}"\n')
    proc = e.sendmail("-t", input=FAIL2BAN)
    assert proc.returncode == 0, proc.stderr.decode()

    run_queue(e)

    (m,) = relay.messages
    assert relay.rcpt_commands == [ADMIN]
    assert relay.mail_commands == [f"root@{FQDN}"]  # the submitting login (root), qualified
    assert b"\r\nTo: root@localhost\r\n" in m.data  # headers stay as written (as Postfix leaves them)
    assert_nothing_local_relayed(relay)


def test_fail2ban_mail_from_root_at_short_name_leaves_from_the_fqdn_when_given_with_f(tmp_path: Path, relay_factory) -> None:
    # fail2ban's action.d/sendmail-common.conf: sendmail -f "<sender>" "<dest>".
    relay = relay_factory("implicit")
    e = local_env(tmp_path, relay, f'[aliases]\nroot = "{ADMIN}"\n')
    proc = e.sendmail("-f", f"root@{SHORT}", "root@localhost", input=FAIL2BAN)
    assert proc.returncode == 0, proc.stderr.decode()

    run_queue(e)

    assert relay.mail_commands == [f"root@{FQDN}"]
    assert relay.rcpt_commands == [ADMIN]
    assert_nothing_local_relayed(relay)


def test_cron_mail_to_root_reaches_the_root_alias_from_root_at_the_fqdn(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("starttls")
    e = local_env(tmp_path, relay, f'[aliases]\nroot = "{ADMIN}"\n')
    proc = e.sendmail("-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root", input=CRON)
    assert proc.returncode == 0, proc.stderr.decode()

    run_queue(e)

    (m,) = relay.messages
    assert relay.mail_commands == [f"root@{FQDN}"]
    assert relay.rcpt_commands == [ADMIN]
    assert f"\r\nFrom: root@{FQDN} (Cron Daemon)\r\n".encode() in m.data
    assert_nothing_local_relayed(relay)


def test_unaliased_local_names_go_to_the_root_alias_once_when_several_are_given(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = local_env(tmp_path, relay, f'[aliases]\nroot = "{ADMIN}"\nwebmaster = "web@example.net"\n')
    proc = e.sendmail("-f", "www-data", "www-data@localhost", f"nobody@{SHORT}", "root@[127.0.0.1]",
                      f"WEBMASTER@{SHORT.upper()}", "someone@example.net", input=b"Subject: x\n\nx\n")
    assert proc.returncode == 0, proc.stderr.decode()

    run_queue(e)

    assert relay.mail_commands == [f"www-data@{FQDN}"]
    assert sorted(relay.rcpt_commands) == [ADMIN, "someone@example.net", "web@example.net"]
    assert_nothing_local_relayed(relay)


def test_local_domains_resolve_through_the_aliases_when_listed_in_host(tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = local_env(tmp_path, relay, f'[aliases]\nroot = "{ADMIN}"\nops = "ops@example.net"\n',
                  host='local_domains = ["example.internal"]\n')
    proc = e.sendmail("-f", "backup@example.internal", "ops@example.internal", "backup@EXAMPLE.INTERNAL",
                      input=b"Subject: x\n\nx\n")
    assert proc.returncode == 0, proc.stderr.decode()

    run_queue(e)

    assert sorted(relay.rcpt_commands) == [ADMIN, "ops@example.net"]
    assert relay.mail_commands == ["backup@example.internal"]  # fully qualified: kept as written


def test_root_at_localhost_bounces_with_the_alias_hint_and_is_never_relayed_when_root_has_no_alias(
        tmp_path: Path, relay_factory) -> None:
    relay = relay_factory("implicit")
    e = local_env(tmp_path, relay)
    proc = e.sendmail("-f", "alice@example.org", "root@localhost", "someone@example.net",
                      input=b"Subject: disk full\n\nsda1 at 99%\n")
    assert proc.returncode == 0, proc.stderr.decode()
    (qid,) = e.incoming()

    stderr = run_queue(e)

    original = [m for m in relay.messages if m.mail_from == "alice@example.org"]
    assert [m.rcpt_tos for m in original] == [["someone@example.net"]]
    rcpts, block = dsn_of(relay)
    assert rcpts == ["alice@example.org"]
    assert block["Final-Recipient"] == "rfc822; root@localhost"
    assert block["Status"] == "5.1.1"
    assert "root has no alias" in block["Diagnostic-Code"]
    assert f'set [aliases] root = "you@example.org" in {e.config}' in " ".join(block["Diagnostic-Code"].split())
    assert relay.rcpt_commands == ["someone@example.net", "alice@example.org"]
    assert f"{qid}: to=<root@localhost>, relay=local," in stderr and "dsn=5.1.1, status=bounced (root has no alias" in stderr
    assert sorted(os.listdir(e.spool / "failed")) == [qid]
    assert_nothing_local_relayed(relay)


def test_cron_mail_to_unaliased_root_is_kept_in_failed_and_nothing_is_relayed_when_a_relay_is_configured(
        tmp_path: Path, relay_factory) -> None:
    # The sender (root) is local too, so the bounce has nowhere to go either.
    relay = relay_factory("implicit")
    e = local_env(tmp_path, relay)
    proc = e.sendmail("-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root", input=CRON)
    assert proc.returncode == 0, proc.stderr.decode()
    (qid,) = e.incoming()

    stderr = run_queue(e)

    assert relay.mail_commands == [] and relay.rcpt_commands == []
    assert sorted(os.listdir(e.spool / "failed")) == [qid]
    assert f"no bounce: the sender <root@{FQDN}> is this host's own address" in stderr
    assert e.run("mailq", check=True).stdout == b"Mail queue is empty\n"


def test_fail2ban_default_destination_bounces_to_the_sender_alias_when_only_postmaster_is_aliased(
        tmp_path: Path, relay_factory) -> None:
    # queue.postmaster takes bounces for local senders, even with no root alias.
    relay = relay_factory("implicit")
    e = local_env(tmp_path, relay, f'[queue]\npostmaster = "{ADMIN}"\n')
    assert e.sendmail("-t", input=FAIL2BAN).returncode == 0

    run_queue(e)

    rcpts, block = dsn_of(relay)
    assert rcpts == [ADMIN]
    assert block["Final-Recipient"] == "rfc822; root@localhost"
    assert_nothing_local_relayed(relay)


# ------------------------------------------------------------ Maildir mode (no relay)
def test_unaliased_root_at_localhost_is_delivered_to_the_maildir_when_no_relay_is_configured(tmp_path: Path) -> None:
    e = local_env(tmp_path, None)
    assert e.sendmail("-t", input=FAIL2BAN).returncode == 0
    assert e.sendmail("-FCronDaemon", "-i", "-oem", "root", input=CRON).returncode == 0

    run_queue(e)

    first, second = e.delivered()
    assert first.startswith(b"Return-Path: <root@" + FQDN.encode() + b">\nDelivered-To: root@localhost\n")
    assert second.startswith(b"Return-Path: <root@" + FQDN.encode() + b">\nDelivered-To: root@" + FQDN.encode() + b"\n")
    assert os.listdir(e.spool / "failed") == []


# ------------------------------------------------------------ -bv and newaliases
def test_sendmail_bv_says_undeliverable_and_exits_65_when_a_local_address_has_nowhere_to_go(
        tmp_path: Path, relay_factory) -> None:
    e = local_env(tmp_path, relay_factory("implicit"))
    proc = e.sendmail("-bv", "root@localhost", "someone@example.net")
    assert proc.returncode == 65
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("root@localhost... undeliverable: root@localhost: 5.1.1 root has no alias")
    assert lines[1] == "someone@example.net... deliverable: someone@example.net"


def test_sendmail_bv_shows_the_root_alias_when_a_local_name_has_no_alias_of_its_own(
        tmp_path: Path, relay_factory) -> None:
    e = local_env(tmp_path, relay_factory("implicit"), f'[aliases]\nroot = "{ADMIN}"\n')
    proc = e.sendmail("-bv", f"www-data@{SHORT}", "root@localhost", check=True)
    assert proc.stdout.decode() == (
        f"www-data@{SHORT}... deliverable: {ADMIN}\nroot@localhost... deliverable: {ADMIN}\n"
    )


def test_newaliases_warns_that_mail_bounces_when_a_relay_is_configured_and_root_has_no_alias(
        tmp_path: Path, relay_factory) -> None:
    e = local_env(tmp_path, relay_factory("implicit"))
    e.aliases_file.write_text("postmaster: root\n")
    proc = e.run("newaliases")
    assert proc.returncode == 0
    assert "warning: root has no alias" in proc.stderr.decode()
    e.aliases_file.write_text(f"postmaster: root\nroot: {ADMIN}\n")
    proc = e.run("newaliases", check=True)
    assert proc.stderr == b""


def test_queued_root_at_localhost_fails_instead_of_being_relayed_when_queued_unresolved(
        tmp_path: Path, relay_factory) -> None:
    # A queue file as an older pysendmail wrote it (or as Maildir mode did
    # before a relay was configured): root@localhost unresolved in queue/.
    from pysendmail.core import queue, spoolfile
    from pysendmail.core.qid import new_qid

    relay = relay_factory("implicit")
    e = local_env(tmp_path, relay, f'[aliases]\nroot = "{ADMIN}"\n')
    env = spoolfile.Envelope("alice@example.org", ["root@localhost", "someone@example.net", f"ops@{SHORT}"],
                             uid=os.getuid(), time=time.time(), login="root")
    qid = new_qid()
    queue.write_new(str(e.spool / "queue"), qid, spoolfile.encode(env, b"Subject: old\r\n\r\nx\r\n"))

    stderr = run_queue(e)

    original = [m for m in relay.messages if m.mail_from == "alice@example.org"]
    assert [m.rcpt_tos for m in original] == [["someone@example.net"]]
    (bounce,) = [m for m in relay.messages if m.mail_from == "<>"]
    assert bounce.rcpt_tos == ["alice@example.org"]
    assert b"Final-Recipient: rfc822; root@localhost" in bounce.data
    assert f"Final-Recipient: rfc822; ops@{SHORT}".encode() in bounce.data
    assert f"{qid}: to=<root@localhost>" in stderr and "a local address is never relayed" in stderr
    assert_nothing_local_relayed(relay)
