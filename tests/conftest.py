"""Shared fixtures: a real spool with its config, and the real console scripts.

Tests drive pysendmail as users do: the installed ``sendmail``, ``mailq``,
``newaliases`` and ``pysendmail`` programs, run as subprocesses, against a
spool in a temporary directory chosen by a TOML config.

No test depends on the host's /etc/pysendmail (a .deb install or a
``pysendmail setup`` puts a system config there, which comes before the
user's own in the search order): in-process, ``private_system_config``
(autouse) points config.SYSTEM_CONFIG at a private path; a subprocess
either gets PYSENDMAIL_CONFIG (Env.environ) or, when it tests the search
for a config, runs through ``hide_system_config``.  tests/qa/test_isolation.py
runs tests with a hostile /etc/pysendmail to keep it so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SYSTEM_CONFIG_DIR = "/etc/pysendmail"


@pytest.fixture(autouse=True)
def private_system_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system config path for this test: private, absent unless the test writes it.

    Every in-process config search (config.find_config, load(None),
    submit_settings(None)) looks at config.SYSTEM_CONFIG after -C and
    PYSENDMAIL_CONFIG; a test that unsets PYSENDMAIL_CONFIG would otherwise
    read whatever the host has in /etc/pysendmail.
    """
    from pysendmail.core import config

    path = tmp_path_factory.mktemp("etc-pysendmail") / "pysendmail.toml"
    monkeypatch.setattr(config, "SYSTEM_CONFIG", str(path))
    return path


def hide_system_config(cmd: list[str]) -> list[str]:
    """``cmd`` run where /etc/pysendmail is empty, for a program that must find no system config.

    A subprocess does not see private_system_config.  When the host has
    /etc/pysendmail, the command runs in a private mount namespace with an
    empty tmpfs over it: the host's /etc is neither read nor changed, and
    other processes (other test runs, the host's own mail) still see it.
    Needs root (as unshare and mount do).
    """
    if not os.path.lexists(SYSTEM_CONFIG_DIR):
        return cmd
    if os.geteuid() != 0:
        pytest.skip(f"{SYSTEM_CONFIG_DIR} exists on this host: hiding it from a program needs root")
    script = f'mount -t tmpfs -o mode=0755,size=64k tmpfs {SYSTEM_CONFIG_DIR} && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *cmd]


def program(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is not installed: install pysendmail into the test venv (pip install '.[test]')")
    return str(path)


@dataclass
class Env:
    """One pysendmail installation: config, spool, Maildir, aliases file."""

    root: Path
    config: Path
    spool: Path
    maildir: Path
    aliases_file: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYSENDMAIL_CONFIG"] = str(self.config)
        env.update(self.extra_env)
        return env

    def run(self, name: str, *args: str, input: bytes | None = b"", user: str | None = None,
            timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[bytes]:
        cmd = [program(name), *args]
        if user is not None:
            cmd = ["runuser", "-u", user, "--", "env", f"PYSENDMAIL_CONFIG={self.config}", *cmd]
        proc = subprocess.run(cmd, input=input, capture_output=True, env=self.environ, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{name} {args} exited {proc.returncode}: {proc.stderr.decode(errors='replace')}")
        return proc

    def sendmail(self, *args: str, input: bytes = b"", **kw: object) -> subprocess.CompletedProcess[bytes]:
        return self.run("sendmail", *args, input=input, **kw)  # type: ignore[arg-type]

    def flush(self) -> subprocess.CompletedProcess[bytes]:
        return self.run("sendmail", "-q", check=True)

    def delivered(self) -> list[bytes]:
        """Every message in the Maildir's new/, oldest first."""
        new = self.maildir / "new"
        if not new.is_dir():
            return []
        files = sorted(new.iterdir(), key=lambda p: p.name)
        return [p.read_bytes() for p in files]

    def incoming(self) -> list[str]:
        return sorted(os.listdir(self.spool / "incoming"))

    def queued(self) -> list[str]:
        return sorted(n for n in os.listdir(self.spool / "queue") if not n.startswith("."))


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll ``predicate`` until true; only for states nothing announces (a log line, mailq, a file)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 20 s: a test's daemon never outlives it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def write_config(root: Path, extra: str = "", spool: Path | None = None) -> Env:
    spool = spool or root / "spool"
    maildir = root / "Maildir"
    aliases_file = root / "aliases"
    config = root / "pysendmail.toml"
    # deliver_without_daemon = false: a test's sendmail starts no detached
    # delivery run, so what a test queues stays where the test looks for
    # it until the test flushes or starts the daemon (tests/integration/
    # test_nodaemon.py turns it on).
    config.write_text(
        f'[spool]\npath = "{spool}"\ndeliver_without_daemon = false\n\n'
        f'[maildir]\npath = "{maildir}"\n\n'
        f'[host]\nname = "host.example.org"\ndefault_domain = "example.org"\naliases_file = "{aliases_file}"\n\n'
        + extra
    )
    return Env(root, config, spool, maildir, aliases_file)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    """A private (user-mode style) spool owned by the test's user, set up."""
    e = write_config(tmp_path)
    e.run("pysendmail", "spool", "init", check=True)
    return e


@pytest.fixture
def world_dir() -> Path:
    """A directory that unprivileged test users can traverse (tmp_path cannot be)."""
    path = Path("/var/tmp") / f"pysendmail-test-{uuid.uuid4().hex[:10]}"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def ensure_user(name: str) -> int:
    """Create a real system user for the test (idempotent); return its uid."""
    import pwd

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name).pw_uid


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create users and tmpfs mounts")


@pytest.fixture
def shared_env(world_dir: Path) -> Env:
    """A shared (3733) spool under world_dir, set up by root for the daemon user psm-daemon.

    psm-alice and psm-bob exist as ordinary local users who submit.
    """
    import pwd
    import stat

    ensure_user("psm-daemon")
    ensure_user("psm-alice")
    ensure_user("psm-bob")
    e = write_config(world_dir, spool=world_dir / "spool")
    e.config.write_text(e.config.read_text().replace("[spool]\n", '[spool]\nuser = "psm-daemon"\n', 1))
    e.config.chmod(0o644)
    # The Maildir transport runs as psm-daemon, which cannot create
    # directories in the root-owned world_dir.
    daemon = pwd.getpwnam("psm-daemon")
    e.maildir.mkdir(mode=0o700)
    os.chown(e.maildir, daemon.pw_uid, daemon.pw_gid)
    e.run("pysendmail", "spool", "init", check=True)
    assert stat.S_IMODE(os.lstat(e.spool / "incoming").st_mode) == 0o3733
    return e

SIMPLE = b"To: someone@example.net\nSubject: test\n\nhello\n"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "relay_reply(command, shape): relays of the test reshape their reply to "
                            "command (tests/fakes/relay.py REPLY_SHAPES)")


@pytest.fixture
def relay_factory(tmp_path: Path, request: pytest.FixtureRequest):
    """Start loopback relays (tests/fakes/relay.py); all stopped at the end.

    ``@pytest.mark.relay_reply(COMMAND, SHAPE)`` on the test reshapes each
    relay's reply to COMMAND (several markers, several commands).
    """
    from tests.fakes.relay import REPLY_COMMANDS, REPLY_SHAPES, Relay

    started: list[Relay] = []
    shapes: dict[str, str] = {}
    for mark in request.node.iter_markers("relay_reply"):
        command, shape = mark.args
        assert command in REPLY_COMMANDS and shape in REPLY_SHAPES, mark.args
        shapes.setdefault(command, shape)

    def make(mode: str = "implicit", **kw: object) -> Relay:
        r = Relay(mode, tmp_path, **kw).start()  # type: ignore[arg-type]
        r.reply_shapes.update(shapes)
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


def relay_env(tmp_path: Path, relay: object, password: str | None = None, extra: str = "") -> Env:
    """A pysendmail config pointed at ``relay``, with a 0600 password file."""
    from tests.fakes.relay import PASSWORD

    pw = tmp_path / "relay-password"
    pw.write_text((password or PASSWORD) + "\n")
    pw.chmod(0o600)
    e = write_config(tmp_path, relay.config(pw) + extra)  # type: ignore[attr-defined]
    e.run("pysendmail", "spool", "init", check=True)
    return e
