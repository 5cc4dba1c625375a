"""What the spool's owner and local users plant in the spool, against root and the daemon (issue 10).

Real users (conftest.ensure_user) driven by runuser, a real shared spool
(shared_env), the real console scripts.  Root's set-up steps must never
follow a link the daemon's user controls; pickup must judge unready
files by what their owner cannot set, keep quarantine/ bounded, and
deliver a submission once even when another user hard-links it.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pysendmail.core import errors, layout
from tests.conftest import Env, needs_root

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
    stop = e.root / f"stop-{name}"
    stop.unlink(missing_ok=True)
    flipper = _as("psm-daemon", "/usr/bin/python3", "-c", FLIPPER, str(directory), name, str(target), str(stop))
    spool = layout.Spool(str(e.spool))
    refused = 0
    try:
        assert flipper.stdout is not None
        assert flipper.stdout.readline() == b"ready\n", "the flipper did not start"
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
    finally:
        stop.touch()
        out, err = flipper.communicate(timeout=90)
    assert flipper.returncode == 0, err
    assert int(out) > 10, "the flipper hardly ran"
    return refused


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
