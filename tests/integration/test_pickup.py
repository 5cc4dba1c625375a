"""Pickup treats incoming/ as hostile (DESIGN.md "Privilege model").

Every test plants real filesystem objects in a real spool's incoming/ (a
symlink, a FIFO, a hard link, wrong modes, malformed and forged spool
files, a foreign name, a directory, unready files) next to messages
submitted with the real ``sendmail``, then runs the real ``sendmail -q``
with a timeout (a FIFO opened without O_NONBLOCK would hang it).  The
outcome is read from the filesystem and from the run's stderr: each bad
entry is quarantined (or removed, when it is an empty directory) with
one log line, nothing a link pointed to is delivered or touched, and the
good messages reach the Maildir.  Once on a private spool, once on a
shared (3733) spool as root with the entries owned by an ordinary user.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pysendmail.core import log, spoolfile
from pysendmail.core.qid import is_qid
from tests.conftest import Env, ensure_user, needs_root, stop_process, wait_until

FLUSH_TIMEOUT = 60  # a hung pickup (a FIFO opened blocking) fails the test instead of hanging it

SECRET = b"SECRET-VICTIM-CONTENT"


def good_message(n: int) -> bytes:
    return b"To: someone@example.net\nSubject: good %d\n\nlegitimate message %d\n" % (n, n)


def spool_bytes(uid: int, subject: str, body: bytes = b"planted\r\n") -> bytes:
    env = spoolfile.Envelope("attacker@example.org", ["attacker@example.net"], uid=uid, time=time.time())
    return spoolfile.encode(env, f"Subject: {subject}\r\n\r\n".encode() + body)


def qid(n: int) -> str:
    """A name pickup takes for a queue id, sorting before real ones (time-based)."""
    name = "00000000000%07X" % n
    assert is_qid(name)
    return name


@dataclass
class Planted:
    """What was planted, and what the test expects of each entry."""

    quarantined: dict[str, str] = field(default_factory=dict)  # name -> what it was
    removed: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)  # cannot be moved: left, logged once, skipped
    left: list[str] = field(default_factory=list)
    victims: dict[Path, tuple[bytes, int, int]] = field(default_factory=dict)  # path -> (sha256, mode, mtime_ns)


def _own(path: Path, uid: int, gid: int) -> None:
    os.lchown(path, uid, gid)


def plant(incoming: Path, outside: Path, uid: int, gid: int, other_uid: int | None, shared: bool = False) -> Planted:
    """Plant every hostile entry in ``incoming``, owned by ``uid``:``gid`` like a user's own files.

    ``outside`` is a directory on the same filesystem for the targets of the
    links.  ``other_uid``: a uid to chown the forged file to (root only).
    ``shared``: the daemon runs as another user than the entries' owner.
    """
    p = Planted()
    outside.mkdir(exist_ok=True)

    def victim(name: str, subject: str) -> Path:
        # A complete, ready spool file that the daemon's group could read:
        # were a link followed, it would be mailed.
        path = outside / name
        path.write_bytes(spool_bytes(uid, subject, SECRET + b"\r\n"))
        os.chown(path, uid, gid)
        path.chmod(0o640)
        st = path.stat()
        p.victims[path] = (hashlib.sha256(path.read_bytes()).digest(), st.st_mode, st.st_mtime_ns)
        return path

    # Symlink named like a queue id: following it would read (and mail)
    # whatever it names.
    link_target = victim("symlink-target", "via symlink")
    (incoming / qid(1)).symlink_to(link_target)
    _own(incoming / qid(1), uid, gid)
    p.quarantined[qid(1)] = "symlink"

    # FIFO: a blocking open would wait for a writer forever.
    os.mkfifo(incoming / qid(2), 0o640)
    _own(incoming / qid(2), uid, gid)
    p.quarantined[qid(2)] = "fifo"

    # Hard link to another ready spool file: st_nlink == 2.
    hard_target = victim("hardlink-target", "via hard link")
    os.link(hard_target, incoming / qid(3))
    p.quarantined[qid(3)] = "hard link"

    # Mode 0644: neither "not ready" (0600) nor "ready" (0640).
    wrong_mode = incoming / qid(4)
    wrong_mode.write_bytes(spool_bytes(uid, "mode 0644"))
    _own(wrong_mode, uid, gid)
    wrong_mode.chmod(0o644)
    p.quarantined[qid(4)] = "mode 0644"

    # Ready, but garbage from the first byte.
    garbage = incoming / qid(5)
    garbage.write_bytes(os.urandom(4096))
    _own(garbage, uid, gid)
    garbage.chmod(0o640)
    p.quarantined[qid(5)] = "garbage"

    # Ready, but the end record is missing: a submitter that lied about readiness.
    cut = incoming / qid(6)
    data = spool_bytes(uid, "no end record")
    cut.write_bytes(data[: data.rindex(b"\nend ")])
    _own(cut, uid, gid)
    cut.chmod(0o640)
    p.quarantined[qid(6)] = "no end record"

    # Envelope uid is not the owner's: forged origin.
    forged = incoming / qid(7)
    if other_uid is not None:
        forged.write_bytes(spool_bytes(uid, "forged uid"))
        _own(forged, other_uid, gid)
    else:
        forged.write_bytes(spool_bytes(uid + 4242, "forged uid"))
        _own(forged, uid, gid)
    forged.chmod(0o640)
    p.quarantined[qid(7)] = "forged uid"

    # A name we never create; with a line break, so a careless log line would split.
    odd = "not-a-queue-id\nstatus=sent"
    (incoming / odd).write_bytes(spool_bytes(uid, "odd name"))
    _own(incoming / odd, uid, gid)
    (incoming / odd).chmod(0o640)
    p.quarantined[odd] = "foreign name"

    # A directory named like a queue id, holding a spool file: never descended into.
    directory = incoming / qid(9)
    directory.mkdir(mode=0o750)
    (directory / "inside").write_bytes(spool_bytes(uid, "inside a directory"))
    _own(directory / "inside", uid, gid)
    _own(directory, uid, gid)
    if shared:
        # Moving a directory to another parent needs write permission on it
        # (its ".." changes): the daemon user cannot move the user's own.
        p.stuck.append(qid(9))
    else:
        p.quarantined[qid(9)] = "directory"
    # An empty directory: moved to quarantine, or (when it cannot be) removed.
    empty = incoming / qid(12)
    empty.mkdir(mode=0o755)
    _own(empty, uid, gid)
    if shared:
        p.removed.append(qid(12))
    else:
        p.quarantined[qid(12)] = "empty directory"

    # Unready and fresh: a submitter still writing. Left alone.
    fresh = incoming / qid(10)
    fresh.write_bytes(spool_bytes(uid, "still being written"))
    _own(fresh, uid, gid)
    fresh.chmod(0o600)
    p.left.append(qid(10))

    # Unready, dated two hours back with utime: the date is the owner's to
    # set, so it proves nothing; staleness is judged by st_ctime (now) and
    # the time pickup first saw it (test_spool_tamper.py). Left alone.
    stale = incoming / qid(11)
    stale.write_bytes(spool_bytes(uid, "died while writing"))
    _own(stale, uid, gid)
    stale.chmod(0o600)
    old = time.time() - 7200
    os.utime(stale, (old, old))
    p.left.append(qid(11))
    return p


def flush(e: Env) -> str:
    proc = e.run("sendmail", "-q", timeout=FLUSH_TIMEOUT)
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    return stderr


def check_outcome(e: Env, p: Planted, stderr: str, good: int) -> None:
    lines = stderr.splitlines()
    quarantine = os.listdir(e.spool / "quarantine")
    for name, what in p.quarantined.items():
        moved = [q for q in quarantine if q.rsplit(".", 1)[0] == name]
        assert len(moved) == 1, f"{what} {name!r} not in quarantine/ {quarantine}; stderr:\n{stderr}"
        # Names are logged through log.safe: a planted name cannot add fields to the line.
        mentions = [line for line in lines if f"incoming/{log.safe(name)} " in line or (name in line and is_qid(name))]
        assert len(mentions) == 1, f"{what}: expected one log line, got {mentions}"
        assert "quarantined" in mentions[0], mentions[0]
    for name in p.removed:
        assert name not in e.incoming()
        mentions = [line for line in lines if name in line]
        assert len(mentions) == 1 and "removed" in mentions[0], mentions
    for name in p.stuck:
        mentions = [line for line in lines if name in line]
        assert len(mentions) == 1 and "cannot quarantine" in mentions[0], mentions
    assert sorted(e.incoming()) == sorted(p.left + p.stuck)
    for name in p.left:
        assert not any(name in line for line in lines), f"unready {name} was logged: {stderr}"
    assert len(quarantine) == len(p.quarantined), quarantine

    delivered = e.delivered()
    subjects = sorted(m.split(b"Subject: ", 1)[1].split(b"\n", 1)[0] for m in delivered)
    assert subjects == sorted(b"good %d" % n for n in range(good))
    assert not any(SECRET in m or b"attacker@" in m for m in delivered)
    assert e.queued() == []

    # Nothing a link pointed to was read into the queue, moved or changed.
    for path, (digest, mode, mtime_ns) in p.victims.items():
        st = os.lstat(path)
        assert stat.S_ISREG(st.st_mode) and st.st_mode == mode and st.st_mtime_ns == mtime_ns, path
        assert hashlib.sha256(path.read_bytes()).digest() == digest, path


def submit_good(e: Env, count: int, user: str | None = None) -> None:
    for n in range(count):
        proc = e.sendmail("-t", "-i", input=good_message(n), user=user)
        assert proc.returncode == 0, proc.stderr.decode()


# ------------------------------------------------------------------ private spool
def test_hostile_entries_in_private_spool_are_quarantined_and_good_mail_delivered(env: Env, tmp_path: Path) -> None:
    submit_good(env, 3)
    other = None
    if os.geteuid() == 0:
        other = ensure_user("psm-bob")
    planted = plant(env.spool / "incoming", tmp_path / "outside", os.getuid(), os.getgid(), other)

    stderr = flush(env)

    check_outcome(env, planted, stderr, good=3)


def test_second_flush_after_quarantine_is_quiet(env: Env, tmp_path: Path) -> None:
    planted = plant(env.spool / "incoming", tmp_path / "outside", os.getuid(), os.getgid(), None)
    flush(env)

    stderr = flush(env)

    assert stderr == ""
    assert sorted(env.incoming()) == sorted(planted.left)


def test_fifo_alone_does_not_hang_flush(env: Env) -> None:
    fifo = env.spool / "incoming" / qid(2)
    os.mkfifo(fifo, 0o640)

    stderr = flush(env)

    assert not fifo.exists()
    assert "quarantined" in stderr


def test_crash_between_queue_write_and_incoming_unlink_delivers_once(env: Env) -> None:
    """Both incoming/<qid> and queue/<qid> present: the state a crash leaves
    after pickup's durable queue write, before its unlink."""
    from pysendmail.core import config, layout
    from pysendmail.daemon import pickup
    from pysendmail.daemon.qmgr import make_context

    submit_good(env, 1)
    (name,) = env.incoming()
    incoming_bytes = (env.spool / "incoming" / name).read_bytes()
    cfg = config.load(str(env.config))
    spool = layout.Spool(str(env.spool))
    # The real pickup (cleanup, durable queue write, unlink), then the
    # incoming file put back: as if the unlink had never happened.
    assert pickup.pickup_one(spool, name, make_context(cfg), cfg.max_message_size) == name
    (env.spool / "incoming" / name).write_bytes(incoming_bytes)
    (env.spool / "incoming" / name).chmod(0o640)
    assert env.queued() == [name] and env.incoming() == [name]

    flush(env)
    flush(env)

    assert len(env.delivered()) == 1
    assert env.incoming() == [] and env.queued() == []
    assert os.listdir(env.spool / "quarantine") == []


def test_same_file_copied_into_incoming_and_queue_delivers_once(env: Env) -> None:
    """The same state made by copying the submission into queue/ under its qid."""
    submit_good(env, 1)
    (name,) = env.incoming()
    data = (env.spool / "incoming" / name).read_bytes()
    queued = env.spool / "queue" / name
    queued.write_bytes(data)
    queued.chmod(0o600)

    flush(env)

    assert len(env.delivered()) == 1
    assert env.incoming() == [] and env.queued() == []


# ------------------------------------------------------------------ shared spool, as root


@needs_root
def test_hostile_entries_in_shared_spool_are_quarantined_and_good_mail_delivered(shared_env: Env,
                                                                                  world_dir: Path) -> None:
    alice = pwd.getpwnam("psm-alice")
    bob = pwd.getpwnam("psm-bob")
    daemon_gid = pwd.getpwnam("psm-daemon").pw_gid
    submit_good(shared_env, 2, user="psm-alice")
    # Planted as alice would: her uid, the daemon's group (incoming/ is setgid).
    planted = plant(shared_env.spool / "incoming", world_dir / "outside", alice.pw_uid, daemon_gid, bob.pw_uid,
                    shared=True)

    stderr = flush(shared_env)  # as root: the flush drops to psm-daemon

    check_outcome(shared_env, planted, stderr, good=2)


# ------------------------------------------------------------------ the running daemon
@pytest.fixture
def daemon(env: Env, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start ``pysendmail daemon`` on ``env``; SIGTERM (then SIGKILL) at the end."""
    import subprocess

    from tests.conftest import program

    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"daemon-{len(procs)}.log", "wb")
        proc = subprocess.Popen([program("pysendmail"), "daemon"], env=env.environ, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_process(proc)




def test_many_unready_files_sorting_first_do_not_starve_daemon_pickup(env: Env, daemon, tmp_path: Path) -> None:
    """Regression: the daemon picked up the first 200 names of incoming/ per
    batch, counting unready files it leaves alone; a user who created 201
    unready files with low names kept every later submission from being
    picked up for an hour, and the daemon spun on "more incoming"."""
    from pysendmail.daemon.main import PICKUP_BATCH

    incoming = env.spool / "incoming"
    for n in range(PICKUP_BATCH + 50):
        path = incoming / qid(n)
        path.write_bytes(b"")
        path.chmod(0o600)
    proc = daemon()
    submit_good(env, 1)

    wait_until(lambda: len(env.delivered()) == 1, "the good message in the Maildir")
    assert proc.poll() is None
    assert len(env.incoming()) == PICKUP_BATCH + 50


def test_daemon_keeps_picking_up_when_nobody_reads_its_notify_socket(env: Env, daemon, tmp_path: Path) -> None:
    """Regression: sd_notify's sendto() blocked the event loop once 10
    STATUS= datagrams (net.unix.max_dgram_qlen) waited unread, so the daemon
    stopped picking up submissions until someone read the socket."""
    import socket
    import tempfile

    sockdir = tempfile.mkdtemp(prefix="psn-")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.path.join(sockdir, "notify"))  # bound, never read
    env.extra_env["NOTIFY_SOCKET"] = os.path.join(sockdir, "notify")
    try:
        proc = daemon()
        for n in range(25):
            submit_good(env, 1)
            wait_until(lambda: len(env.delivered()) == n + 1, f"message {n + 1} in the Maildir")
        assert proc.poll() is None
        proc.terminate()
        assert proc.wait(20) == 0
    finally:
        sock.close()
        import shutil

        shutil.rmtree(sockdir, ignore_errors=True)


def test_wakeups_with_junk_in_incoming_do_not_look_at_the_junk_again(env: Env, monkeypatch) -> None:
    """Regression (issue 10): every wake-up listed and lstat'ed all of
    incoming/, so 200,000 unready files and a flood of wake-up bytes slowed
    each real message to seconds.  Now the junk is looked at once; later
    passes cost an lstat of incoming/ until something changes there."""
    from pysendmail.core import config, layout
    from pysendmail.daemon import pickup
    from pysendmail.daemon.qmgr import make_context

    # Files older than "young" (their submitter still writing) from the
    # start: the test cannot age a ctime, so the window is closed instead.
    monkeypatch.setattr(pickup, "YOUNG_SECONDS", 0.0)
    incoming = env.spool / "incoming"
    for n in range(2000):
        path = incoming / qid(n)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    cfg = config.load(str(env.config))
    spool = layout.Spool(str(env.spool))
    ctx = make_context(cfg)
    scanner = pickup.Scanner.from_config(cfg)
    assert pickup.pickup_all(spool, ctx, cfg.max_message_size, 100, scanner) == ([], False)
    assert scanner.looked == 2000

    for _ in range(200):  # a flood of wake-ups, nothing new
        assert pickup.pickup_all(spool, ctx, cfg.max_message_size, 100, scanner) == ([], False)

    assert scanner.looked == 2000  # listings (while incoming/'s mtime is too recent to trust) find nothing new
    submit_good(env, 1)
    queued: list[str] = []
    wait_until(lambda: queued.extend(pickup.pickup_all(spool, ctx, cfg.max_message_size, 100, scanner)[0])
               or queued, "the real message to be picked up")
    assert scanner.looked <= 2000 + 5, "the junk was looked at again"
    assert len(queued) == 1 and len(env.incoming()) == 2000


def test_daemon_picks_up_a_submission_that_never_poked_it(env: Env, daemon, tmp_path: Path) -> None:
    """inotify names the file made ready (its fchmod) and wakes the daemon:
    no FIFO byte is needed, and incoming/ is not listed for it."""
    from pysendmail.core import layout

    proc = daemon()
    wait_until(lambda: b"daemon: started" in (tmp_path / "daemon-0.log").read_bytes(), "the daemon to start")
    spool = layout.Spool(str(env.spool))
    fifo = spool.pickup
    spool.pickup = str(tmp_path / "no-such-fifo")  # enqueue's poke goes nowhere
    envelope = spoolfile.Envelope("someone@example.org", ["someone@example.net"], uid=os.getuid(), time=time.time())
    layout.enqueue(spool, envelope, good_message(0).replace(b"\n", b"\r\n"))
    assert os.path.exists(fifo)

    wait_until(lambda: len(env.delivered()) == 1, "the message in the Maildir")
    assert proc.poll() is None
    assert b"inotify unavailable" not in (tmp_path / "daemon-0.log").read_bytes()
