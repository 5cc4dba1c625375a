"""Requests to the running daemon, and who may make them: real users against the real daemon.

The pickup FIFO is writable by every local user (any user must be able to
say "new mail").  Root sets up a shared spool for psm-daemon and starts
``pysendmail daemon`` (which becomes psm-daemon); psm-alice is an ordinary
local user.  The relay (tests/fakes/relay.py) refuses every login and
counts the attempts: providers lock an account after a few of them, so no
request from psm-alice may cause one, while ``route resume`` by root does.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import Env, needs_root, program, wait_until
from tests.fakes.relay import Relay

pytestmark = needs_root
REFUSED = "535 5.7.8 Authentication credentials invalid"
MESSAGE = b"To: someone@example.net\nSubject: from alice\n\nbody\n"




class SystemDaemon:
    """``pysendmail daemon`` started by root (it becomes the spool's user), with sd_notify readiness."""

    def __init__(self, e: Env, workdir: Path) -> None:
        self.log_path = workdir / "daemon.log"
        self.sockdir = tempfile.mkdtemp(prefix="psn-")
        os.chmod(self.sockdir, 0o755)  # the daemon notifies after dropping to psm-daemon
        path = os.path.join(self.sockdir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        os.chmod(path, 0o666)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([program("pysendmail"), "daemon"], env=dict(e.environ, NOTIFY_SOCKET=path),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.sock.settimeout(20)
        notes = ""
        while "READY=1" not in notes.split("\n"):
            try:
                notes += self.sock.recv(4096).decode() + "\n"
            except socket.timeout:
                raise AssertionError(f"daemon not ready; log:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.sock.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)


@pytest.fixture
def system(shared_env: Env, world_dir: Path) -> Iterator[tuple[Env, Relay, Callable[[], SystemDaemon]]]:
    """shared_env relaying through a loopback relay whose files psm-daemon can read; a daemon starter."""
    relay = Relay("implicit", world_dir).start()
    os.chmod(relay.ca_file, 0o644)
    daemon_user = pwd.getpwnam("psm-daemon")
    pw = world_dir / "relay-password"
    pw.write_text(relay.password + "\n")
    pw.chmod(0o600)
    os.chown(pw, daemon_user.pw_uid, daemon_user.pw_gid)
    shared_env.config.write_text(shared_env.config.read_text() + relay.config(pw))
    started: list[SystemDaemon] = []

    def start() -> SystemDaemon:
        d = SystemDaemon(shared_env, world_dir)
        started.append(d)
        return d

    try:
        yield shared_env, relay, start
    finally:
        for d in started:
            d.close()
        relay.stop()


def as_alice(e: Env, *cmd: str, input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["runuser", "-u", "psm-alice", "--", "env", f"PYSENDMAIL_CONFIG={e.config}", *cmd],
                          input=input, capture_output=True, timeout=60)


def poke_as_alice(e: Env, data: str) -> None:
    """What any local user can do: write bytes into the world-writable pickup FIFO."""
    fifo = e.spool / "pickup"
    proc = as_alice(e, "/bin/sh", "-c", f"printf '{data}' > '{fifo}'")
    assert proc.returncode == 0, proc.stderr


def queued(e: Env) -> list[str]:
    return sorted(n for n in os.listdir(e.spool / "queue") if not n.startswith("."))


def test_fifo_bytes_from_unprivileged_user_do_not_retry_a_refused_login(system) -> None:
    e, relay, start = system
    relay.auth_reply = REFUSED
    d = start()
    sent = as_alice(e, program("sendmail"), "-t", "-i", input=MESSAGE)
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: relay.failed_logins == 1 and "AUTHENTICATION FAILED" in d.log(), "the refused login")

    # The attack of the issue: 10 'F' bytes, one write each; then every
    # other request byte, and the commands alice may run.
    for _ in range(10):
        poke_as_alice(e, "F")
    for data in ("R", "I", "FRIW" * 5):
        poke_as_alice(e, data)
    for cmd in (("sendmail", "-q"), ("pysendmail", "flush"), ("pysendmail", "route", "resume", "default")):
        proc = as_alice(e, program(cmd[0]), *cmd[1:])
        assert proc.returncode == 77, (cmd, proc.returncode, proc.stderr)
        assert b"Traceback" not in proc.stderr and proc.stderr.count(b"\n") == 1, proc.stderr
    # A request file that is not root's or the daemon's (as if alice could
    # write state/) is not obeyed either.
    planted = e.spool / "state" / ("resume." + "default".encode().hex())
    planted.write_text("0\n")
    os.chown(planted, pwd.getpwnam("psm-alice").pw_uid, -1)
    poke_as_alice(e, "R")
    # Root's flush: the daemon has read every byte above before it answers.
    assert e.run("pysendmail", "flush", timeout=60).returncode == 0

    assert relay.failed_logins == 1, "a request from an unprivileged user retried the refused login"
    assert len(queued(e)) == 1 and relay.messages == []
    assert not planted.exists() and f"request {planted} ignored and removed" in d.log()
    assert d.log().count("AUTHENTICATION FAILED") == 1

    # Root lifts the hold: one more login (still refused), then none again.
    resumed = e.run("pysendmail", "route", "resume", "default", timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    wait_until(lambda: relay.failed_logins == 2, "the login after route resume")
    relay.auth_reply = None
    assert e.run("pysendmail", "route", "resume", "default", timeout=60).returncode == 0
    [got] = relay.wait_for(1)
    assert b"Subject: from alice" in got.data
    wait_until(lambda: queued(e) == [], "the queue to empty")


def test_fifo_bytes_from_unprivileged_user_do_not_run_the_queue(system) -> None:
    e, relay, start = system
    relay.rcpt_replies["someone@example.net"] = "451 4.3.0 try later"
    d = start()
    sent = as_alice(e, program("sendmail"), "-t", "-i", input=MESSAGE)
    assert sent.returncode == 0, sent.stderr
    wait_until(lambda: len(relay.mail_commands) == 1 and "status=deferred" in d.log(), "the first attempt")

    for _ in range(10):
        poke_as_alice(e, "F")
    poke_as_alice(e, "I")
    # Root's 'queue retry' (a reindex request) and flush (a flush request)
    # are obeyed: each makes exactly one more attempt.
    assert e.run("pysendmail", "flush", timeout=60).returncode == 0
    assert len(relay.mail_commands) == 2, "alice's bytes ran the queue, ignoring its backoff"
    assert e.run("pysendmail", "flush", timeout=60).returncode == 0
    assert len(relay.mail_commands) == 3
    assert [n for n in os.listdir(e.spool / "state") if n.startswith(("flush.", "reindex."))] == []
