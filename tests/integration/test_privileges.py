"""The system spool's privilege model with real users (DESIGN.md "Privilege model").

Root sets up a shared spool owned by psm-daemon; psm-alice and psm-bob are
ordinary local users who submit with the real ``sendmail`` run through
runuser(1).  Every check is made with the kernel's own answer: the modes and
owners that stat(2) reports, and commands (ls, cat, rm, mailq) that the users
run and that must fail.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Env, ensure_user, needs_root, program, write_config

pytestmark = needs_root

MESSAGE = b"To: someone@example.net\nSubject: from alice\n\nalice's private words\n"




def as_user(user: str, *cmd: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["runuser", "-u", user, "--", *cmd], capture_output=True, timeout=60)


def submit_as(e: Env, user: str, message: bytes = MESSAGE) -> str:
    """Submit as ``user``; return the name of the new file in incoming/."""
    before = set(e.incoming())
    proc = e.sendmail("-t", "-i", input=message, user=user)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    (name,) = set(e.incoming()) - before
    return name


def test_spool_init_as_root_creates_shared_layout_owned_by_daemon_user(shared_env: Env) -> None:
    daemon = pwd.getpwnam("psm-daemon")
    spool = shared_env.spool

    incoming = os.lstat(spool / "incoming")
    assert stat.S_ISDIR(incoming.st_mode)
    assert stat.S_IMODE(incoming.st_mode) == 0o3733
    assert (incoming.st_uid, incoming.st_gid) == (daemon.pw_uid, daemon.pw_gid)
    for name in ("queue", "failed", "quarantine", "state"):
        st = os.lstat(spool / name)
        assert stat.S_ISDIR(st.st_mode), name
        assert stat.S_IMODE(st.st_mode) == 0o700, name
        assert (st.st_uid, st.st_gid) == (daemon.pw_uid, daemon.pw_gid), name
    assert os.lstat(spool).st_uid == daemon.pw_uid


def test_submission_by_user_is_owned_by_user_and_readable_by_daemon_group_only(shared_env: Env) -> None:
    alice = pwd.getpwnam("psm-alice")
    daemon_gid = grp.getgrnam("psm-daemon").gr_gid

    name = submit_as(shared_env, "psm-alice")

    st = os.lstat(shared_env.spool / "incoming" / name)
    assert stat.S_ISREG(st.st_mode)
    assert st.st_uid == alice.pw_uid  # the unforgeable record of who sent it
    assert st.st_gid == daemon_gid  # from the setgid directory, not alice's group
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_nlink == 1


def test_submitter_cannot_list_incoming(shared_env: Env) -> None:
    submit_as(shared_env, "psm-alice")

    proc = as_user("psm-alice", "ls", str(shared_env.spool / "incoming"))

    assert proc.returncode != 0
    assert b"Permission denied" in proc.stderr
    assert proc.stdout == b""


def test_other_user_cannot_read_submission(shared_env: Env) -> None:
    name = submit_as(shared_env, "psm-alice")
    path = shared_env.spool / "incoming" / name

    proc = as_user("psm-bob", "cat", str(path))

    assert proc.returncode != 0
    assert b"Permission denied" in proc.stderr
    assert b"private words" not in proc.stdout


def test_other_user_cannot_remove_or_replace_submission(shared_env: Env) -> None:
    name = submit_as(shared_env, "psm-alice")
    path = shared_env.spool / "incoming" / name
    before = os.lstat(path)

    removed = as_user("psm-bob", "rm", "-f", str(path))
    renamed = as_user("psm-bob", "mv", "-f", str(path), str(path) + "x")

    # The sticky bit: bob may create files here but not unlink or rename alice's.
    assert removed.returncode != 0 and b"Operation not permitted" in removed.stderr
    assert renamed.returncode != 0
    after = os.lstat(path)
    assert (after.st_ino, after.st_uid, after.st_size) == (before.st_ino, before.st_uid, before.st_size)


def test_flush_by_other_user_exits_77_with_one_sentence(shared_env: Env) -> None:
    submit_as(shared_env, "psm-alice")

    proc = shared_env.run("sendmail", "-q", user="psm-bob")

    assert proc.returncode == 77
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert len(shared_env.incoming()) == 1  # still there for the daemon


def test_php_mail_run_by_unprivileged_user_is_queued_under_that_uid(shared_env: Env) -> None:
    # php-fpm runs as www-data: PHP's popen passes its environment on to
    # sendmail, which runs with that user's rights and nothing more.
    php = shutil.which("php")
    if php is None:
        pytest.fail("php is not installed: apt-get install php-cli (the README's test command does)")
    alice = pwd.getpwnam("psm-alice")
    before = set(shared_env.incoming())

    proc = subprocess.run(
        ["runuser", "-u", "psm-alice", "--", "env", f"PYSENDMAIL_CONFIG={shared_env.config}", php, "-n",
         "-d", f"sendmail_path={program('sendmail')} -t -i", "-r",
         'var_dump(mail("someone@example.net", "from php", "sent by php-fpm"));'],
        capture_output=True, timeout=60,
    )

    assert proc.stdout == b"bool(true)\n", proc
    (name,) = set(shared_env.incoming()) - before
    assert os.lstat(shared_env.spool / "incoming" / name).st_uid == alice.pw_uid
    shared_env.flush()
    (data,) = shared_env.delivered()
    assert b"Return-Path: <psm-alice@example.org>\n" in data
    assert f"Received: from psm-alice (uid {alice.pw_uid})\n".encode() in data


def test_submission_into_incoming_with_foreign_group_exits_78_and_nobody_can_read_it(shared_env: Env) -> None:
    # Regression: incoming/ with the right mode but another group (a
    # mistaken chgrp) accepted mail with exit 0: each file took that group
    # (setgid), so its members could read it while the daemon could not,
    # and pickup quarantined the message: accepted, then never delivered.
    incoming = shared_env.spool / "incoming"
    os.chown(incoming, -1, pwd.getpwnam("psm-bob").pw_gid)
    os.chmod(incoming, 0o3733)  # chown may clear setgid; keep the mode right, only the group wrong

    proc = shared_env.sendmail("-t", "-i", input=MESSAGE, user="psm-alice")

    assert proc.returncode == 78, proc.stderr.decode()
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and str(incoming) in err and "gid" in err, err
    assert shared_env.incoming() == []
    # The repair the sentence names works.
    shared_env.run("pysendmail", "spool", "init", check=True)
    submit_as(shared_env, "psm-alice")
    shared_env.flush()
    assert len(shared_env.delivered()) == 1


def test_root_flush_delivers_user_submission_as_daemon_user_with_received_naming_user(shared_env: Env) -> None:
    alice = pwd.getpwnam("psm-alice")
    daemon = pwd.getpwnam("psm-daemon")
    submit_as(shared_env, "psm-alice")

    shared_env.flush()

    (data,) = shared_env.delivered()
    (path,) = (shared_env.maildir / "new").iterdir()
    # sendmail -q run by root dropped to the daemon user before delivering.
    assert path.stat().st_uid == daemon.pw_uid
    head, _, body = data.partition(b"\n\n")
    assert f"Received: from psm-alice (uid {alice.pw_uid})\n".encode() in head
    assert b"Delivered-To: someone@example.net\n" in head
    assert body == b"alice's private words\n"
    assert shared_env.incoming() == [] and shared_env.queued() == []
    for entry in (shared_env.spool / "queue").iterdir():
        assert entry.stat().st_uid == daemon.pw_uid


def test_received_names_each_submitter_when_two_users_submit(shared_env: Env) -> None:
    alice = pwd.getpwnam("psm-alice")
    bob = pwd.getpwnam("psm-bob")
    submit_as(shared_env, "psm-alice")
    submit_as(shared_env, "psm-bob", MESSAGE.replace(b"from alice", b"from bob").replace(b"alice's", b"bob's"))

    shared_env.flush()

    got = {}
    for data in shared_env.delivered():
        head, _, body = data.partition(b"\n\n")
        got[body] = head
    assert set(got) == {b"alice's private words\n", b"bob's private words\n"}
    assert f"from psm-alice (uid {alice.pw_uid})".encode() in got[b"alice's private words\n"]
    assert f"from psm-bob (uid {bob.pw_uid})".encode() in got[b"bob's private words\n"]


FORGE = r"""
import os, sys, time
from pysendmail.core import spoolfile
env = spoolfile.Envelope("alice@example.org", ["someone@example.net"], uid=int(sys.argv[2]), time=time.time())
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, spoolfile.encode(env, b"Subject: forged\r\n\r\nforged by bob\r\n"))
os.fchmod(fd, 0o640)
os.close(fd)
"""


def test_envelope_claiming_another_users_uid_is_quarantined(shared_env: Env) -> None:
    # Bob writes a well-formed spool file by hand whose envelope says it
    # came from alice; the file's owner (bob) is what pickup believes.
    alice = pwd.getpwnam("psm-alice")
    forged = shared_env.spool / "incoming" / "0000000000000ABCDE"

    proc = as_user("psm-bob", sys.executable, "-c", FORGE, str(forged), str(alice.pw_uid))
    assert proc.returncode == 0, proc.stderr.decode()
    assert os.lstat(forged).st_uid == pwd.getpwnam("psm-bob").pw_uid

    shared_env.flush()

    assert shared_env.delivered() == []
    assert shared_env.incoming() == [] and shared_env.queued() == []
    (quarantined,) = os.listdir(shared_env.spool / "quarantine")
    assert quarantined.startswith(forged.name)


def test_spool_init_by_root_keeps_a_private_spool_root_s_even_when_a_pysendmail_user_exists(
        tmp_path: Path) -> None:
    """Regression: with the package's user present, root's spool under its
    own private tmp was handed to "pysendmail", which could not reach it,
    and every later sendmail -q failed with a permission error."""
    ensure_user("pysendmail")
    e = write_config(tmp_path)
    e.run("pysendmail", "spool", "init", check=True)

    assert os.stat(e.spool).st_uid == 0
    proc = e.sendmail("someone@example.net", input=b"Subject: mine\n\nhello\n")
    assert proc.returncode == 0, proc.stderr.decode()
    e.flush()
    assert len(e.delivered()) == 1
