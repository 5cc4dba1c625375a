"""What the spool's owner and local users plant in the spool, against root and the daemon (issue 10).

Real users (conftest.ensure_user) driven by runuser, a real shared spool
(shared_env), the real console scripts.  Root's set-up steps must never
follow a link the daemon's user controls; pickup must judge unready
files by what their owner cannot set, keep quarantine/ bounded, and
deliver a submission once even when another user hard-links it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pysendmail.core import errors, layout
from tests.conftest import Env, needs_root, stop_process, wait_until as _wait

pytestmark = needs_root

# Run as the daemon's user: flips ``name`` inside ``directory`` between the
# real thing and a symbolic link to ``target`` until ``stop`` exists (at
# most 60 s), leaving the real thing with a wrong mode each time round so
# that root's set-up wants to repair it.  Prints how many flips it made.
FLIPPER = r"""
import os, stat, sys, time
directory, name, target, stop = sys.argv[1:5]
os.chdir(directory)
aside = name + ".aside"
flips = 0
print("ready", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(stop) and time.monotonic() < deadline:
    for step in ("aside", "link", "unlink", "back"):
        try:
            if step == "aside":
                os.rename(name, aside)
            elif step == "link":
                os.symlink(target, name)
            elif step == "unlink":
                if os.path.islink(name):
                    os.unlink(name)
            else:
                os.rename(aside, name)
                os.chmod(name, 0o777 if stat.S_ISDIR(os.lstat(name).st_mode) else 0o666)
        except OSError:
            pass
    flips += 1
print(flips)
"""


def _as(user: str, *cmd: str, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["runuser", "-u", user, "--", *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]


def _identity(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, st.st_mode


def _race(e: Env, directory: Path, name: str, target: Path, rounds: int = 4000) -> int:
    """Flip ``directory/name`` as psm-daemon while root sets up the spool again and again."""
    daemon = pwd.getpwnam("psm-daemon")
    spool = layout.Spool(str(e.spool))
    refused = 0
    with _flipping(e, directory, name, target):
        for n in range(rounds):
            # The function 'pysendmail spool init' runs, called in-process
            # so that thousands of rounds fit in a second or two ...
            try:
                layout.ensure_layout(spool, shared=True, owner=(daemon.pw_uid, daemon.pw_gid))
            except errors.PysendmailError:
                refused += 1
            if n % 1000 == 0:
                # ... and the real command now and then.
                proc = e.run("pysendmail", "spool", "init")
                assert proc.returncode in (0, 73, 78), proc.stderr
                assert b"Traceback" not in proc.stderr, proc.stderr
    return refused


@contextlib.contextmanager
def _flipping(e: Env, directory: Path, name: str, target: Path) -> Iterator[None]:
    """FLIPPER running as psm-daemon on ``directory/name`` for the body of the with; checked that it really ran."""
    stop = e.root / f"stop-{name.replace('/', '-')}"
    stop.unlink(missing_ok=True)
    flipper = _as("psm-daemon", "/usr/bin/python3", "-c", FLIPPER, str(directory), name, str(target), str(stop))
    try:
        assert flipper.stdout is not None
        assert flipper.stdout.readline() == b"ready\n", "the flipper did not start"
        yield
    finally:
        stop.touch()
        out, err = flipper.communicate(timeout=90)
    assert flipper.returncode == 0, err
    assert int(out) > 10, "the flipper hardly ran"


def _root_target(world_dir: Path, kind: str) -> Path:
    target = world_dir / f"root-{kind}"
    if kind == "dir":
        target.mkdir(mode=0o755)
    else:
        target.write_text("root's file\n")
        target.chmod(0o644)
    os.chown(target, 0, 0)
    return target


@pytest.mark.parametrize("name", ["incoming", "queue", "failed", "quarantine", "state", "pickup"])
def test_spool_init_never_chowns_root_file_when_daemon_user_swaps_entry_for_symlink(
        shared_env: Env, world_dir: Path, name: str) -> None:
    """Regression (issue 10): while root ran 'spool init', the daemon's user
    swapped a spool subdirectory for a symlink, and root chowned a root-owned
    target to the daemon user and set it to 0700."""
    for kind in ("dir", "file"):
        target = _root_target(world_dir, kind)
        before = _identity(target)

        _race(shared_env, shared_env.spool, name, target)

        assert _identity(target) == before, f"root changed {target} through the link planted as {name}"


def test_spool_init_never_chowns_root_dir_when_daemon_user_swaps_the_spool_itself(
        shared_env: Env, world_dir: Path) -> None:
    """The spool's parent belongs to the daemon's user (its home, say): it can
    rename the spool itself away and plant a link to a root-owned directory."""
    daemon = pwd.getpwnam("psm-daemon")
    home = world_dir / "daemon-home"
    home.mkdir(mode=0o755)
    os.chown(home, daemon.pw_uid, daemon.pw_gid)
    spool = home / "spool"
    shared_env.config.write_text(shared_env.config.read_text().replace(f'"{shared_env.spool}"', f'"{spool}"'))
    shared_env.spool = spool
    target = _root_target(world_dir, "dir")
    before = _identity(target)

    _race(shared_env, home, "spool", target)

    assert _identity(target) == before, "root changed the directory the planted spool link named"


@pytest.mark.parametrize("name", ["public", "public/incoming"])
def test_spool_init_never_writes_or_removes_through_a_public_link_the_daemon_user_swaps(
        shared_env: Env, world_dir: Path, name: str) -> None:
    """Regression: 'spool init' as root published the mailq summary through
    public/ and cleaned stubs in public/incoming/ by path, so the daemon's
    user, flipping either for a link to a root-owned directory between
    root's set-up and its publish, could make root write a file there or
    remove root's files (public/incoming linked to /etc: every file in it)."""
    target = world_dir / "root-dir"
    target.mkdir(mode=0o755)
    (target / "victim").write_text("root's file\n")
    os.chown(target, 0, 0)
    os.chown(target / "victim", 0, 0)
    planted = shared_env.spool / name
    with _flipping(shared_env, planted.parent, planted.name, target):
        for _ in range(40):
            proc = shared_env.run("pysendmail", "spool", "init")
            assert proc.returncode in (0, 73, 78), proc.stderr
            assert b"Traceback" not in proc.stderr, proc.stderr
    assert sorted(os.listdir(target)) == ["victim"], "root wrote or removed files through the link"
    assert _identity(target / "victim")[:2] == (0, 0)


@pytest.mark.parametrize("name", ["public", "public/incoming"])
def test_root_submission_creates_no_stub_through_a_public_link_the_daemon_user_planted(
        shared_env: Env, world_dir: Path, name: str) -> None:
    """cron submits as root: a stub written by path would land wherever the
    daemon's user pointed public/ or public/incoming/; the message itself
    is still queued."""
    target = world_dir / "root-dir"
    target.mkdir(mode=0o755)
    os.chown(target, 0, 0)
    planted = shared_env.spool / name
    subprocess.run(["runuser", "-u", "psm-daemon", "--", "/usr/bin/python3", "-c",
                    "import os, sys; os.rename(sys.argv[1], sys.argv[1] + '.aside'); os.symlink(sys.argv[2], sys.argv[1])",
                    str(planted), str(target)], check=True)

    proc = shared_env.sendmail("-t", input=b"To: someone@example.net\nSubject: cron\n\nbody\n")

    assert proc.returncode == 0, proc.stderr
    assert os.listdir(target) == [], "root created a stub through the link"
    assert len(shared_env.incoming()) == 1


def test_root_submission_creates_no_file_through_an_incoming_link_the_daemon_user_swaps(
        shared_env: Env, world_dir: Path) -> None:
    """cron submits as root: check_incoming saw a directory, but the daemon's
    user may swap incoming/ for a link before the message file is created;
    made by path, root's message (owned by root) landed in the directory the
    link named.  Flipped as psm-daemon while root enqueues again and again."""
    from pysendmail.core import spoolfile

    target = _root_target(world_dir, "dir")
    spool = layout.Spool(str(shared_env.spool))
    env = spoolfile.Envelope("root@localhost", ["someone@example.net"], uid=0, time=time.time())
    queued = refused = 0
    with _flipping(shared_env, shared_env.spool, "incoming", target):
        for _ in range(3000):
            try:
                layout.enqueue(spool, env, b"Subject: cron\r\n\r\nbody\r\n")
                queued += 1
            except errors.PysendmailError:
                refused += 1
    assert os.listdir(target) == [], "root created a message file through the link"
    assert queued > 0 and refused > 0, (queued, refused)


@pytest.mark.parametrize("command", [("sendmail", "-t"), ("pysendmail", "config", "check")])
def test_root_command_does_not_hang_on_a_fifo_the_daemon_user_planted_as_the_lock(
        shared_env: Env, command: tuple[str, ...]) -> None:
    """Root looks at spool/lock before dropping privileges (sendmail's
    start_run, lock_holder in config check): opened for reading without
    O_NONBLOCK, a FIFO planted there by the daemon's user blocked root's cron
    job forever."""
    # sendmail looks at the lock only to start a delivery run.
    shared_env.config.write_text(shared_env.config.read_text().replace("deliver_without_daemon = false",
                                                                       "deliver_without_daemon = true"))
    lock = shared_env.spool / "lock"
    subprocess.run(["runuser", "-u", "psm-daemon", "--", "/usr/bin/python3", "-c",
                    "import os, sys; p = sys.argv[1]; os.path.lexists(p) and os.unlink(p); os.mkfifo(p, 0o600)",
                    str(lock)], check=True)

    try:
        proc = shared_env.run(*command, input=b"To: someone@example.net\nSubject: cron\n\nbody\n", timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(command)} as root hung on the FIFO planted as spool/lock")

    assert b"Traceback" not in proc.stderr, proc.stderr
    if command[0] == "sendmail":
        assert proc.returncode == 0, proc.stderr
        assert len(shared_env.incoming()) == 1


@pytest.mark.parametrize("name", ["queue", "pickup"])
def test_spool_init_refuses_planted_symlink_with_one_sentence_and_exit_78(
        shared_env: Env, world_dir: Path, name: str) -> None:
    target = _root_target(world_dir, "file")
    before = _identity(target)
    entry = shared_env.spool / name
    entry.rename(shared_env.spool / f"{name}.aside")
    entry.symlink_to(target)

    proc = shared_env.run("pysendmail", "spool", "init")

    assert proc.returncode == 78, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "symlink" in lines[0] and str(entry) in lines[0], lines
    assert _identity(target) == before


def test_spool_init_refuses_path_through_link_the_daemon_user_owns(shared_env: Env, world_dir: Path) -> None:
    """A link on the way to the spool, in a directory the daemon's user owns,
    would let that user point root's set-up at any directory."""
    daemon = pwd.getpwnam("psm-daemon")
    home = world_dir / "daemon-home"
    home.mkdir(mode=0o755)
    os.chown(home, daemon.pw_uid, daemon.pw_gid)
    etc = _root_target(world_dir, "dir")
    link = home / "area"
    subprocess.run(["runuser", "-u", "psm-daemon", "--", "ln", "-s", str(etc), str(link)], check=True)
    shared_env.config.write_text(shared_env.config.read_text().replace(f'"{shared_env.spool}"', f'"{link}/spool"'))

    proc = shared_env.run("pysendmail", "spool", "init")

    assert proc.returncode == 78, proc.stderr
    assert b"symbolic link" in proc.stderr and proc.stderr.count(b"\n") == 1, proc.stderr
    assert os.listdir(etc) == [], "root created the spool inside the directory the link named"


def test_spool_init_follows_root_owned_link_in_root_owned_directory(shared_env: Env, world_dir: Path) -> None:
    """An administrator's own link (/var/spool/pysendmail -> /srv/...) is still followed."""
    real = world_dir / "real"
    real.mkdir(mode=0o755)
    (world_dir / "via").symlink_to(real)
    shared_env.config.write_text(
        shared_env.config.read_text().replace(f'"{shared_env.spool}"', f'"{world_dir}/via/spool"'))

    shared_env.run("pysendmail", "spool", "init", check=True)

    assert stat.S_IMODE(os.lstat(real / "spool" / "incoming").st_mode) == 0o3733
    assert os.lstat(real / "spool").st_uid == pwd.getpwnam("psm-daemon").pw_uid


# ------------------------------------------------------------------ helpers for what users plant
def _spool_keys(e: Env, keys: str) -> None:
    e.config.write_text(e.config.read_text().replace("[spool]\n", f"[spool]\n{keys}\n", 1))


def _as_user(user: str, code: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["runuser", "-u", user, "--", "/usr/bin/python3", "-c", code, *args],
                          capture_output=True, timeout=90)  # the scripts stop by themselves within 60 s


def _flush(e: Env) -> str:
    proc = e.run("sendmail", "-q", timeout=120)  # as root: drops to psm-daemon
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    return stderr




@pytest.fixture
def daemon(shared_env: Env, tmp_path: Path):  # type: ignore[no-untyped-def]
    """``pysendmail daemon`` on the shared spool (started as root: it drops to psm-daemon)."""
    from tests.conftest import program

    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([program("pysendmail"), "daemon"], env=shared_env.environ, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    _wait(lambda: b"daemon: started" in (tmp_path / "daemon.log").read_bytes(), "the daemon to start")
    yield proc
    stop_process(proc)


UNREADY_IN_THE_FUTURE = r"""
import os, sys, time
path = sys.argv[1]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, b"pysendmail-spool 1\n")
os.close(fd)
future = time.time() + 10 * 365 * 86400
os.utime(path, (future, future))
"""

# Keeps an unready file "fresh" every way its owner can: chmod and utime
# both set its ctime to now, and the mtime goes ten years ahead.  Stops when
# the file is gone (or after 60 s).
TOUCHER = r"""
import os, sys, time
path = sys.argv[1]
future = time.time() + 10 * 365 * 86400
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.chmod(path, 0o600)
        os.utime(path, (future, future))
    except FileNotFoundError:
        print("gone")
        break
    time.sleep(0.05)
"""


def test_unready_file_dated_into_the_future_is_removed_once_stale(shared_env: Env) -> None:
    """Regression (issue 10): the stale rule for unready (0600) files trusted
    the mtime, which the owner sets with utime: such files stayed forever."""
    _spool_keys(shared_env, "unready_lifetime = 1")
    path = shared_env.spool / "incoming" / "0000000000000000AA"
    planted = _as_user("psm-alice", UNREADY_IN_THE_FUTURE, str(path))
    assert planted.returncode == 0, planted.stderr
    assert os.lstat(path).st_mtime > time.time() + 365 * 86400
    _wait(lambda: time.time() > os.lstat(path).st_ctime + 1.5, "the file's ctime to age past the lifetime")

    stderr = _flush(shared_env)

    assert not path.exists(), stderr
    alice = pwd.getpwnam("psm-alice").pw_uid
    assert f"removed unfinished submission (uid {alice}" in stderr, stderr


def test_unready_file_its_owner_keeps_touching_is_removed_by_the_daemon(shared_env: Env, daemon) -> None:
    """ctime alone is not enough: the owner can refresh it (chmod, utime) for
    ever; the daemon also counts from when it first saw the file."""
    _spool_keys(shared_env, "unready_lifetime = 1")
    daemon.send_signal(1)  # SIGHUP: the new lifetime
    path = shared_env.spool / "incoming" / "0000000000000000AB"
    planted = _as_user("psm-alice", UNREADY_IN_THE_FUTURE, str(path))
    assert planted.returncode == 0, planted.stderr
    shared_env.sendmail("-t", "-i", input=b"To: someone@example.net\nSubject: wake\n\nwake up\n", user="psm-bob")

    toucher = _as_user("psm-alice", TOUCHER, str(path))

    assert toucher.stdout == b"gone\n", "the daemon never removed the file its owner kept touching"
    assert not path.exists()


# ------------------------------------------------------------------ quarantine bounds
JUNK = r"""
import os, sys
directory, prefix, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for n in range(count):
    with open(os.path.join(directory, f"{prefix}-{n:04d}"), "wb") as fh:
        fh.write(b"x" * size)
"""


def _junk(e: Env, user: str, prefix: str, count: int, size: int = 100) -> None:
    proc = _as_user(user, JUNK, str(e.spool / "incoming"), prefix, str(count), str(size))
    assert proc.returncode == 0, proc.stderr


def _quarantined(e: Env) -> list[str]:
    return sorted(os.listdir(e.spool / "quarantine"))


def test_quarantine_flood_by_one_user_stays_within_count_and_spares_another_users_entry(shared_env: Env) -> None:
    """Regression (issue 10): quarantine/ grew without limit (2,003 entries,
    90 MiB from one user, no expiry).  The flooder's own oldest entries go
    first, so its flood cannot evict the evidence another user left."""
    _spool_keys(shared_env, "quarantine_max_entries = 5")
    _junk(shared_env, "psm-alice", "alice", 1)
    _flush(shared_env)
    _junk(shared_env, "psm-bob", "bob", 30)

    stderr = _flush(shared_env)

    kept = _quarantined(shared_env)
    assert len(kept) == 5, kept
    assert [n for n in kept if n.startswith("alice-0000.")], kept
    assert sum(n.startswith("bob-") for n in kept) == 4
    assert {n.split(".")[0] for n in kept if n.startswith("bob-")} == {f"bob-{n:04d}" for n in range(26, 30)}
    assert stderr.count("over spool.quarantine_max_entries (5)") == 26, stderr


def test_quarantine_flood_by_one_user_stays_within_size(shared_env: Env) -> None:
    _spool_keys(shared_env, "quarantine_max_size = 100000")
    _junk(shared_env, "psm-alice", "alice", 1, 1000)
    _flush(shared_env)
    _junk(shared_env, "psm-bob", "bob", 10, 30000)

    stderr = _flush(shared_env)

    kept = _quarantined(shared_env)
    assert sum(os.lstat(shared_env.spool / "quarantine" / n).st_size for n in kept) <= 100000
    assert [n for n in kept if n.startswith("alice-")] and len(kept) == 4, kept
    assert "over spool.quarantine_max_size (100000 bytes)" in stderr


def test_quarantine_entries_expire_after_their_lifetime(shared_env: Env) -> None:
    _spool_keys(shared_env, "quarantine_lifetime = 1")
    _junk(shared_env, "psm-alice", "alice", 1)
    _flush(shared_env)
    (old,) = _quarantined(shared_env)
    _wait(lambda: time.time() > os.lstat(shared_env.spool / "quarantine" / old).st_ctime + 1.5, "one second")
    _junk(shared_env, "psm-bob", "bob", 1)

    stderr = _flush(shared_env)

    assert [n.split(".")[0] for n in _quarantined(shared_env)] == ["bob-0000"]
    assert "older than spool.quarantine_lifetime" in stderr


def test_status_says_how_much_quarantine_holds(shared_env: Env) -> None:
    _junk(shared_env, "psm-bob", "bob", 3, 2048)
    _flush(shared_env)

    shown = shared_env.run("pysendmail", "status", check=True).stdout.decode()

    (line,) = [x for x in shown.splitlines() if x.startswith("quarantine:")]
    assert line.startswith("quarantine: 3 entries, 6.0 KiB, oldest 20"), line
    assert "kept 30 days, at most 1000 entries and 100.0 MiB" in line


# ------------------------------------------------------------------ hard links to a victim's submission
@pytest.fixture
def hardlinks_allowed():  # type: ignore[no-untyped-def]
    """fs.protected_hardlinks=0 for the test, as on hosts that turned it off; restored after."""
    old = Path("/proc/sys/fs/protected_hardlinks").read_text().strip()
    subprocess.run(["sysctl", "-q", "fs.protected_hardlinks=0"], check=True)
    try:
        yield
    finally:
        subprocess.run(["sysctl", "-q", f"fs.protected_hardlinks={old}"], check=True)


def test_root_submission_writes_nothing_into_a_root_file_the_daemon_user_hard_linked_as_the_fifo(
        shared_env: Env, world_dir: Path, hardlinks_allowed) -> None:  # type: ignore[no-untyped-def]
    """After queueing, sendmail pokes spool/pickup.  O_NOFOLLOW stops a
    symlink, not a hard link: on a host without protected_hardlinks the
    daemon's user links a root file there, and root's poke wrote its 'W'
    over the file's first byte."""
    target = _root_target(world_dir, "file")
    before = target.read_bytes()
    pickup = shared_env.spool / "pickup"
    subprocess.run(["runuser", "-u", "psm-daemon", "--", "/usr/bin/python3", "-c",
                    "import os, sys; os.unlink(sys.argv[1]); os.link(sys.argv[2], sys.argv[1])",
                    str(pickup), str(target)], check=True)

    proc = shared_env.sendmail("-t", input=b"To: someone@example.net\nSubject: cron\n\nbody\n")

    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes() == before, "root wrote through the hard link"
    assert len(shared_env.incoming()) == 1


VICTIM = b"To: friend@example.net\nSubject: alice's own\n\nonly alice's words\n"


def _alice_submits(e: Env) -> str:
    before = set(e.incoming())
    proc = e.sendmail("-t", "-i", input=VICTIM, user="psm-alice")
    assert proc.returncode == 0, proc.stderr
    (name,) = set(e.incoming()) - before
    return name


@pytest.mark.parametrize("link_name", ["FFFFFFFFFFFFFFFFFF", "000000000000000001", "not-a-queue-id"],
                         ids=["picked-up-after", "picked-up-first", "foreign-name"])
def test_hard_link_to_victims_submission_delivers_it_once_and_drops_only_the_link(
        shared_env: Env, hardlinks_allowed: None, link_name: str) -> None:
    """Regression (issue 10): with protected_hardlinks=0 another user hard-linked
    a victim's submission in incoming/, and pickup quarantined both names:
    the victim's message was lost to the victim."""
    real = _alice_submits(shared_env)
    incoming = shared_env.spool / "incoming"
    linked = subprocess.run(["runuser", "-u", "psm-bob", "--", "ln", str(incoming / real), str(incoming / link_name)],
                            capture_output=True)
    assert linked.returncode == 0, linked.stderr
    assert os.lstat(incoming / real).st_nlink == 2

    stderr = _flush(shared_env)

    delivered = shared_env.delivered()
    assert len(delivered) == 1 and b"only alice's words" in delivered[0], stderr
    assert b"psm-alice" in delivered[0].split(b"\r\n\r\n")[0]
    assert _quarantined(shared_env) == [], stderr
    assert shared_env.incoming() == [] and shared_env.queued() == []
    assert f"{real}: uid=" in stderr, "queued under another name than the submitter's"
    assert f"incoming/{link_name} removed" in stderr, stderr


def test_hard_link_from_outside_incoming_is_quarantined_not_delivered(
        shared_env: Env, world_dir: Path, hardlinks_allowed: None) -> None:
    """A name outside incoming/ cannot be removed by pickup: whoever holds it
    could link the file in again after pickup and have it sent twice."""
    real = _alice_submits(shared_env)
    bob = pwd.getpwnam("psm-bob")
    mine = world_dir / "bob"
    mine.mkdir()
    os.chown(mine, bob.pw_uid, bob.pw_gid)
    linked = subprocess.run(["runuser", "-u", "psm-bob", "--", "ln", str(shared_env.spool / "incoming" / real),
                             str(mine / "kept")], capture_output=True)
    assert linked.returncode == 0, linked.stderr

    stderr = _flush(shared_env)

    assert shared_env.delivered() == []
    assert [n.split(".")[0] for n in _quarantined(shared_env)] == [real]
    assert "not all of them in incoming/" in stderr


def test_root_flush_refuses_a_spool_the_daemon_user_replaced_by_a_link(shared_env: Env, world_dir: Path) -> None:
    """Root's commands drop to the spool's owner found by a stat: a link planted
    in the daemon user's directory chose whom root became (here: nobody, root
    stayed root and worked in a root-owned spool the daemon user picked)."""
    daemon = pwd.getpwnam("psm-daemon")
    home = world_dir / "daemon-home"
    home.mkdir(mode=0o755)
    os.chown(home, daemon.pw_uid, daemon.pw_gid)
    roots = world_dir / "roots-spool"
    layout.ensure_layout(layout.Spool(str(roots)), shared=False)  # root's own private spool
    before = sorted(os.listdir(roots))
    subprocess.run(["runuser", "-u", "psm-daemon", "--", "ln", "-s", str(roots), str(home / "spool")], check=True)
    shared_env.config.write_text(shared_env.config.read_text().replace(f'"{shared_env.spool}"', f'"{home}/spool"'))

    proc = shared_env.run("sendmail", "-q")

    assert proc.returncode == 78, proc.stderr
    assert proc.stderr.decode().count("\n") == 1 and "symlink is refused" in proc.stderr.decode(), proc.stderr
    assert sorted(os.listdir(roots)) == before, "root worked in the spool the link named"
