"""The daemon and flush on a full spool file system: a real small tmpfs, real processes.

A local user can fill the file system the spool lives on.  Whatever write
meets the full disk (pickup's copy into queue/, the outcome records after
a delivery, the bounce, the move to failed/, routes.json, the Maildir), the
daemon must live on, say so in one log line, wait without spinning, and
carry on when space returns; ``pysendmail flush`` / ``sendmail -q`` must exit
75 (EX_TEMPFAIL) with one sentence.  Nothing accepted may be lost, nothing
half-written may stay, nothing may be sent twice.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import Env, needs_root, write_config
from tests.fakes.relay import PASSWORD
from tests.integration.test_daemon import Daemon, wait_until
from tests.integration.test_durability import small_fs  # noqa: F401  (the 2 MiB tmpfs fixture)
from tests.integration.test_relay import failed_ids, parse, run_queue

pytestmark = needs_root
SENDER = "alice@example.org"


def message(size: int, subject: str, to: str = "someone@example.net") -> bytes:
    line = b"y" * 75 + b"\n"
    return f"To: {to}\nSubject: {subject}\n\n".encode() + line * (size // len(line))


def free(fs: Path) -> int:
    st = os.statvfs(fs)
    return st.f_bavail * st.f_frsize


def fill(fs: Path, leave: int) -> None:
    """Fill ``fs`` up to ``leave`` free bytes with a file a user might have written."""
    filler = fs / "filler"
    filler.write_bytes(b"\0" * max(0, free(fs) - leave))


def leftovers(e: Env) -> list[str]:
    """Temporary files a failed write could have left in the spool."""
    return [str(p) for p in e.spool.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


def one_sentence(stderr: bytes, prog: str, after_log: bool = False) -> str:
    """The error sentence; ``after_log``: behind the run's own log lines (one per delivery)."""
    text = stderr.decode()
    assert "Traceback" not in text and "internal error" not in text, text
    if after_log:
        text = text.splitlines(keepends=True)[-1]
    assert text.count("\n") == 1 and text.endswith("\n"), text
    assert text.startswith(f"{prog}: "), text
    return text


@pytest.fixture
def full_env(tmp_path: Path, small_fs: Path) -> Env:  # noqa: F811
    """A spool and a Maildir on the 2 MiB tmpfs."""
    e = write_config(tmp_path, spool=small_fs / "spool")
    e.maildir = small_fs / "Maildir"
    e.config.write_text(e.config.read_text().replace(str(tmp_path / "Maildir"), str(e.maildir)))
    e.run("pysendmail", "spool", "init", check=True)
    return e


@pytest.mark.parametrize("command", [("pysendmail", "flush"), ("sendmail", "-q")])
def test_flush_on_full_disk_exits_75_with_one_sentence_and_keeps_the_submission(full_env: Env, small_fs: Path,
                                                                               command: tuple[str, str]) -> None:
    assert full_env.sendmail("-t", "-i", input=message(200 * 1024, "big")).returncode == 0
    fill(small_fs, 64 * 1024)  # the submission fits; its copy into queue/ does not

    proc = full_env.run(*command)

    assert proc.returncode == 75, proc.stderr
    text = one_sentence(proc.stderr, "pysendmail")  # sendmail -q runs pysendmail flush
    assert "No space left on device" in text and "flush" in text
    assert len(full_env.incoming()) == 1 and full_env.queued() == []
    assert leftovers(full_env) == []
    # Space returns: the same command delivers it, once.
    (small_fs / "filler").unlink()
    assert full_env.run(*command).returncode == 0
    assert len(full_env.delivered()) == 1 and full_env.incoming() == [] and full_env.queued() == []


def test_daemon_survives_enospc_in_pickup_and_delivers_when_space_returns(full_env: Env, small_fs: Path,
                                                                         tmp_path: Path) -> None:
    d = Daemon(full_env, tmp_path, "daemon").ready()
    try:
        fill(small_fs, 300 * 1024)
        started = time.monotonic()
        # The attack: a 200 KB submission on a nearly full disk; the
        # daemon's copy of it into queue/ meets ENOSPC.
        assert full_env.sendmail("-t", "-i", input=message(200 * 1024, "first")).returncode == 0
        wait_until(lambda: "cannot pick up new mail" in d.log(), "the daemon to meet the full disk")
        # More mail while full: accepted by sendmail, kept in incoming/.
        assert full_env.sendmail("-t", "-i", input=message(2 * 1024, "second")).returncode == 0
        # It backs off rather than retrying in a loop: it tells systemd so.
        d.wait_notify("STATUS=queue: 0 messages, spool disk refuses writes", prefix=True)
        assert d.proc.poll() is None, d.log()
        # One round per wake-up (the failure, the second submission) and one
        # per 5 s backoff on a slow machine, not a loop: a spinning daemon
        # would have filled the notify queue (10).
        d._drain()
        rounds = 4 + int((time.monotonic() - started) / 5)
        assert sum("spool disk refuses writes" in n for n in d.notes) <= rounds, d.notes
        assert len(full_env.incoming()) == 2 and full_env.queued() == [] and full_env.delivered() == []
        assert leftovers(full_env) == []

        (small_fs / "filler").unlink()
        full_env.sendmail("-t", "-i", input=message(1024, "third"))  # a wake-up finds space again
        wait_until(lambda: len(full_env.delivered()) == 3, "delivery after space returned", timeout=90)
        assert full_env.incoming() == [] and full_env.queued() == []
        # Logged at the end of the round that wrote again, which may be just
        # after its deliveries reached the Maildir.
        wait_until(lambda: "writes work again, resuming" in d.log(), "the recovery to be logged")
        log = d.log()
        assert log.count("cannot pick up new mail") == 1, log
        assert "Traceback" not in log and "internal error" not in log
        assert d.stop() == 0
    finally:
        d.close()
    subjects = sorted(parse(m)["Subject"] for m in full_env.delivered())
    assert subjects == ["first", "second", "third"]


def test_daemon_survives_full_disk_in_maildir_delivery_and_delivers_each_recipient_once(full_env: Env,
                                                                                       small_fs: Path,
                                                                                       tmp_path: Path) -> None:
    d = Daemon(full_env, tmp_path, "daemon").ready()
    try:
        # Room for the submission and its queue copy, and for the first
        # recipient's Maildir copy; not for the second's.
        fill(small_fs, 450 * 1024)
        big = message(200 * 1024, "maildir", to="someone@example.net, other@example.net")
        assert full_env.sendmail("-t", "-i", input=big).returncode == 0
        wait_until(lambda: "cannot write to maildir" in d.log(), "the Maildir write to fail")
        assert d.proc.poll() is None, d.log()
        assert len(full_env.queued()) == 1 and len(full_env.delivered()) == 1
        assert list((full_env.maildir / "tmp").iterdir()) == []  # nothing half-written left in tmp/
        (small_fs / "filler").unlink()
        assert full_env.run("pysendmail", "flush", timeout=60).returncode == 0
        wait_until(lambda: full_env.queued() == [], "the second delivery after space returned")
        assert "Traceback" not in d.log() and "internal error" not in d.log()
    finally:
        d.close()
    delivered = full_env.delivered()
    assert sorted(m.split(b"\n", 2)[1] for m in delivered) == [b"Delivered-To: other@example.net",
                                                               b"Delivered-To: someone@example.net"]


def test_bounce_on_full_disk_exits_75_and_is_made_once_when_space_returns(tmp_path: Path, small_fs: Path,  # noqa: F811
                                                                         relay_factory) -> None:
    relay = relay_factory("implicit")
    relay.rcpt_replies["nobody@example.net"] = "451 4.3.0 try later"
    pw = tmp_path / "relay-password"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    e = write_config(tmp_path, relay.config(pw), spool=small_fs / "spool")
    e.run("pysendmail", "spool", "init", check=True)
    proc = e.sendmail("-i", "-f", SENDER, "nobody@example.net", input=message(100 * 1024, "refused", "nobody@example.net"))
    assert proc.returncode == 0
    run_queue(e)  # picked up, deferred: now in queue/
    (qid,) = e.queued()
    relay.rcpt_replies["nobody@example.net"] = "550 5.1.1 No such user"
    fill(small_fs, 0)  # full: the bounce (with the message attached) cannot be written

    proc = e.run("pysendmail", "flush")

    assert proc.returncode == 75, proc.stderr
    assert "finish" in one_sentence(proc.stderr, "pysendmail", after_log=True)
    assert e.queued() == [qid] and failed_ids(e) == [] and leftovers(e) == []
    (small_fs / "filler").unlink()
    run_queue(e)
    run_queue(e)
    assert failed_ids(e) == [qid] and e.queued() == []
    bounces = [m for m in relay.messages if m.rcpt_tos == [SENDER]]
    assert len(bounces) == 1 and b"nobody@example.net" in bounces[0].data
    assert relay.mail_commands.count("<>") == 1


def test_outcome_append_refused_by_full_disk_is_kept_and_written_later_without_resending(
        tmp_path: Path, small_fs: Path, relay_factory) -> None:  # noqa: F811
    # 1 recipient accepted, 100 refused: their records (over 4 KiB) need a
    # new page of the queue file, and the test fills the disk while the
    # relay holds the end of data, so the append after its 250 must fail.
    relay = relay_factory("implicit")
    bad = [f"nobody{n}@example.net" for n in range(100)]
    for addr in bad:
        relay.rcpt_replies[addr] = "550 5.1.1 No such user"
    relay.stall_data = 3.0
    pw = tmp_path / "relay-password"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    e = write_config(tmp_path, relay.config(pw), spool=small_fs / "spool")
    e.run("pysendmail", "spool", "init", check=True)
    d = Daemon(e, tmp_path, "daemon").ready()
    try:
        proc = e.sendmail("-i", "-f", SENDER, "someone@example.net", *bad,
                          input=b"Subject: many\n\nto many\n")
        assert proc.returncode == 0
        assert relay.stalling.wait(20)
        relay.stall_data = 0.0
        fill(small_fs, 0)
        relay.wait_for(1)
        wait_until(lambda: "cannot record the outcome of" in d.log(), "the refused append")
        assert d.proc.poll() is None, d.log()
        (qid,) = e.queued()
        assert b"\nfailed " not in (e.spool / "queue" / qid).read_bytes()  # not on disk, only in memory

        (small_fs / "filler").unlink()
        assert e.run("pysendmail", "flush", timeout=60).returncode == 0
        relay.wait_for(2)  # the bounce
        wait_until(lambda: e.queued() == [], "the message to be finished")
        log = d.log()
    finally:
        d.close()
    assert "Traceback" not in log and "internal error" not in log
    assert log.count("cannot record the outcome of") == 1
    originals = [m for m in relay.messages if m.rcpt_tos == ["someone@example.net"]]
    assert len(originals) == 1, "sent again although the relay had accepted it"
    bounces = [m for m in relay.messages if m.rcpt_tos == [SENDER]]
    assert len(bounces) == 1 and b"nobody99@example.net" in bounces[0].data
    assert failed_ids(e) == [qid]
